"""Streams with a Python plugin under the real plugd: bodies both ways, Server-Sent Events and
WebSockets, within credit."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Plugd, wait_for
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

PLUGINS = Path(__file__).parent / "plugins"
MIB = 1024 * 1024


def pattern(size: int) -> bytes:
    whole = bytes(i % 251 for i in range(251)) * (size // 251 + 1)
    return whole[:size]


@pytest.fixture
def st(plugd: Plugd) -> Plugd:
    source = (PLUGINS / "streams.py").read_text()
    plugd.python_plugin("st", source, '[limits]\nmax_ws_message = "1MiB"\n')
    plugd.python_plugin("tight", source, '[limits]\nmax_ws_message = "1KiB"\n')
    return plugd.start()


def state(plugd: Plugd) -> Any:
    return plugd.get("/plugins/st/state").json()


def open_get(plugd: Plugd, path: str) -> tuple[http.client.HTTPConnection, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", plugd.port, timeout=20)
    conn.request("GET", path)
    return conn, conn.getresponse()


def test_an_upload_is_hashed_as_it_streams_and_a_download_streams_with_its_length(
    st: Plugd,
) -> None:
    body = pattern(48 * MIB)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), MIB):
            yield body[start : start + MIB]

    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=60)
    conn.request("POST", "/plugins/st/sha256", body=chunks(), encode_chunked=True)
    answer = json.loads(conn.getresponse().read())
    conn.close()
    assert answer == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    conn, r = open_get(st, f"/plugins/st/download?size={48 * MIB + 7}")
    assert r.status == 200
    assert r.getheader("content-length") == str(48 * MIB + 7)
    got = r.read()
    conn.close()
    assert len(got) == 48 * MIB + 7
    assert got == pattern(48 * MIB + 7)


def test_a_plain_iterable_and_a_writer_stream_too(st: Plugd) -> None:
    r = st.get(f"/plugins/st/download-sync?size={3 * MIB + 5}")
    assert r.status == 200, r
    assert r.header("transfer-encoding") == "chunked"
    assert r.body == pattern(3 * MIB + 5)
    r = st.get("/plugins/st/writer")
    assert (r.status, r.text) == (200, "one two three")


def test_a_body_over_the_handlers_limit_is_a_clear_error(st: Plugd) -> None:
    r = st.post("/plugins/st/limited?limit=1000", b"x" * 5000)
    assert r.status == 413, r
    assert r.json() == {"error": "the request body is longer than 1000 bytes"}
    assert st.post("/plugins/st/limited?limit=1000", b"x" * 999).json() == {"bytes": 999}


def test_a_slow_client_makes_the_source_wait(st: Plugd) -> None:
    size = 256 * MIB
    conn, r = open_get(st, f"/plugins/st/download?size={size}")
    first = r.read(MIB)
    assert first == pattern(MIB)
    wait_for("the source to produce", lambda: state(st)["produced"] >= MIB)
    # The client reads no more: the source stops within the window plus what the sockets
    # between it and the client hold, far from the whole body.
    end = time.monotonic() + 1.0
    most = 0
    while time.monotonic() < end:
        most = max(most, state(st)["produced"])
    assert most < 64 * MIB, f"the source produced {most} bytes for a client that read 1 MiB"
    conn.close()


def test_a_client_that_hangs_up_cancels_the_source(st: Plugd) -> None:
    conn, r = open_get(st, "/plugins/st/endless")
    assert len(r.read(4096)) == 4096
    conn.close()
    r.close()
    wait_for("the source to be cancelled", lambda: state(st)["cancelled"] == 1)


def test_a_source_that_fails_aborts_the_response(st: Plugd) -> None:
    conn, r = open_get(st, "/plugins/st/fails-midway")
    assert r.status == 200
    assert r.read(16) == b"the first part, "
    assert st.post("/plugins/st/release").status == 204
    with pytest.raises(http.client.IncompleteRead) as cut:
        r.read()
    assert cut.value.partial == b""
    conn.close()
    assert "the source broke on purpose" in wait_for(
        "the failure in the log", lambda: "the source broke" in st.logs("st") and st.logs("st")
    )


def test_a_streamed_answer_on_a_route_that_does_not_stream_is_a_500(st: Plugd) -> None:
    r = st.get("/plugins/st/not-declared")
    assert r.status == 500, r
    assert "not declared with stream=True" in r.text


def read_event(r: Any) -> dict[str, str]:
    fields: dict[str, str] = {}
    while (line := r.readline().decode()) not in ("\n", ""):
        name, _, value = line.rstrip("\n").partition(": ")
        fields[name] = value
    return fields


def test_server_sent_events_arrive_one_by_one(st: Plugd) -> None:
    conn, r = open_get(st, "/plugins/st/ticks?n=3&every_ms=400")
    assert r.getheader("content-type") == "text/event-stream"
    first = read_event(r)
    got_first = time.time()
    assert (first["event"], first["id"]) == ("tick", "1")
    rest = [read_event(r), read_event(r)]
    conn.close()
    assert [e["id"] for e in rest] == ["2", "3"]
    last_sent = json.loads(rest[-1]["data"])["sent"]
    assert got_first < last_sent, "the first event was held back until the last was sent"


def test_quiet_event_streams_get_keep_alive_comments(st: Plugd) -> None:
    conn, r = open_get(st, "/plugins/st/quiet")
    assert read_event(r) == {"data": "hello"}
    assert r.readline() == b":\n"
    conn.close()


def ws(st: Plugd, plugin: str = "st") -> ClientConnection:
    url = f"ws://127.0.0.1:{st.port}/plugins/{plugin}/echo"
    return connect(url, max_size=None, open_timeout=20)


def test_websockets_echo_text_and_binary_big_messages_and_close_both_ways(st: Plugd) -> None:
    with ws(st) as socket:
        socket.send("hello")
        assert socket.recv(timeout=20) == "hello"
        socket.send(b"\x00\x01\xff")
        assert socket.recv(timeout=20) == b"\x00\x01\xff"
        # Bigger than the stream window: it crosses in pieces both ways.
        big = pattern(700 * 1024)
        socket.send(big)
        assert socket.recv(timeout=20) == big
        socket.close(4001, "bye")
    wait_for("the plugin to see the close", lambda: state(st)["last_close"] == [4001, "bye"])

    with ws(st) as socket:
        socket.send("close 4002 done here")
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=20)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4002, "done here")

    st.wait_ready("tight")
    with ws(st, "tight") as socket:
        socket.send(b"x" * 2048)
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=20)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
