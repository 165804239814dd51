"""The runtime against a scripted plugd on a real Unix socket: handshake, dispatch, cancel,
shutdown, and what it does with bad frames."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from plugd import HttpError, Plugin, PluginError, Request, Response, ServiceEvent, protocol
from plugd._http import to_response


class FakePlugd:
    """The supervisor's side of one connection, driven by the test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )
        self.decoder = protocol.FrameDecoder()
        self.messages: list[protocol.Message] = []

    async def start(self) -> None:
        async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connected.set_result((r, w))

        self.server = await asyncio.start_unix_server(accept, str(self.path))

    async def next(self) -> protocol.Message:
        reader, _ = await self.connected
        while not self.messages:
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "the plugin closed the connection"
            self.messages += [protocol.decode_message(b) for b in self.decoder.feed(data)]
        return self.messages.pop(0)

    async def send(self, data: bytes) -> None:
        _, writer = await self.connected
        writer.write(data)
        await writer.drain()

    async def handshake(self, welcome: Any = None) -> dict[str, Any]:
        hello = await self.next()
        assert isinstance(hello, protocol.Request)
        assert hello.method == "handshake"
        answer = welcome or {
            "protocol": {"major": 1, "minor": 0},
            "supervisor": "fake",
            "max_frame": 1 << 20,
        }
        await self.send(protocol.encode_response(hello.id, answer))
        params: dict[str, Any] = hello.params
        return params

    async def closed(self) -> bool:
        reader, _ = await self.connected
        return await asyncio.wait_for(reader.read(), 10) == b""


def http(route: str, path: str = "", method: str = "GET", **extra: Any) -> dict[str, Any]:
    return {
        "request_id": "r1",
        "method": method,
        "path": path or route,
        "route": route,
        "params": extra.pop("params", {}),
        "query": "",
        "headers": [],
        "body": b"",
        "deadline_unix_ms": 2**40,
        **extra,
    }


@pytest.fixture
async def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakePlugd]:
    f = FakePlugd(tmp_path / "plugd.sock")
    await f.start()
    monkeypatch.setenv("PLUGD_SOCKET", str(f.path))
    monkeypatch.setenv("PLUGD_TOKEN", "tok")
    monkeypatch.setenv("PLUGD_EPOCH", "7")
    monkeypatch.delenv("PLUGD_MAX_FRAME", raising=False)
    yield f
    f.server.close()


def sample_plugin(events: list[str]) -> Plugin:
    plugin = Plugin("sample", "1.0.0")
    started = asyncio.Event()

    @plugin.get("/hi/{name}")
    async def hi(req: Request) -> str:
        return f"hi {req.params['name']}"

    @plugin.get("/hang")
    async def hang(req: Request) -> str:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        return "never"

    @plugin.get("/slow")
    async def slow(req: Request) -> str:
        await asyncio.sleep(0.2)
        events.append("slow finished")
        return "done"

    @plugin.on_unload
    async def unload() -> None:
        events.append("unloaded")

    return plugin


async def test_handshake_requests_cancel_and_graceful_shutdown(fake: FakePlugd) -> None:
    events: list[str] = []
    serving = asyncio.ensure_future(sample_plugin(events).serve())
    hello = await fake.handshake()
    assert (hello["name"], hello["token"], hello["epoch"]) == ("sample", "tok", 7)
    assert {"method": "GET", "path": "/hi/{name}", "permission": None} in hello["routes"]

    await fake.send(protocol.encode_request(1, "http", http("/hi/{name}", params={"name": "x"})))
    answer = await fake.next()
    assert isinstance(answer, protocol.Response)
    assert answer.id == 1
    assert (answer.result["status"], answer.result["body"]) == (200, b"hi x")

    await fake.send(protocol.encode_request(2, "ping", {}))
    assert await fake.next() == protocol.Response(2, None, {})

    # An unknown route and an unknown method are refused with their codes.
    await fake.send(protocol.encode_request(3, "http", http("/nope")))
    refused = await fake.next()
    assert isinstance(refused, protocol.Response)
    assert refused.error is not None
    assert refused.error.code == protocol.NO_ROUTE
    await fake.send(protocol.encode_request(4, "frobnicate", {}))
    refused = await fake.next()
    assert isinstance(refused, protocol.Response)
    assert refused.error is not None
    assert refused.error.code == protocol.METHOD_NOT_FOUND

    # A cancel reaches the handler's task.
    await fake.send(protocol.encode_request(5, "http", http("/hang")))
    await fake.send(protocol.encode_request(6, "ping", {}))
    assert await fake.next() == protocol.Response(6, None, {})
    await fake.send(protocol.encode_notification("cancel", {"id": 5}))
    await fake.send(protocol.encode_notification("cancel", {"id": 12345}))  # unknown: ignored

    # Shutdown waits for the request in flight, then answers; new work is refused meanwhile.
    await fake.send(protocol.encode_request(7, "http", http("/slow")))
    await fake.send(protocol.encode_request(8, "shutdown", {"grace_ms": 5000}))
    await fake.send(protocol.encode_request(9, "http", http("/hi/{name}", params={"name": "y"})))
    late = await fake.next()
    assert isinstance(late, protocol.Response)
    assert late.error is not None
    assert (late.id, late.error.code) == (9, protocol.SHUTTING_DOWN)
    slow = await fake.next()
    assert isinstance(slow, protocol.Response)
    assert slow.id == 7
    assert await fake.next() == protocol.Response(8, None, {})
    await asyncio.wait_for(serving, 10)
    assert events == ["cancelled", "slow finished", "unloaded"]
    assert await fake.closed()


async def test_a_value_nested_too_deep_fails_only_that_call(fake: FakePlugd) -> None:
    plugin = Plugin("deep")

    @plugin.service("deep")
    async def deep(event: ServiceEvent) -> object:
        value: object = 1
        for _ in range(60):
            value = [value]
        return value

    serving = asyncio.ensure_future(plugin.serve())
    await fake.handshake()
    call = {"service": "deep", "payload": None, "depth": 1}
    await fake.send(protocol.encode_request(1, "service.call", call))
    refused = await fake.next()
    assert isinstance(refused, protocol.Response) and refused.error is not None
    assert refused.error.code == protocol.INTERNAL
    assert "nests deeper than 48 levels" in refused.error.message
    await fake.send(protocol.encode_request(2, "ping", {}))
    assert await fake.next() == protocol.Response(2, None, {})
    await fake.send(protocol.encode_request(3, "shutdown", {"grace_ms": 1000}))
    assert await fake.next() == protocol.Response(3, None, {})
    await asyncio.wait_for(serving, 10)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x00\x00\x03\x93\x00\x01", "not valid MessagePack"),
        (struct.pack(">I", 1 << 30), "frame of 1073741824 bytes exceeds the limit of 1048576"),
        (b"\x00\x00\x00\x00", "a frame of length 0 is invalid"),
    ],
)
async def test_a_bad_frame_from_plugd_ends_the_connection_with_a_logged_reason(
    fake: FakePlugd, caplog: pytest.LogCaptureFixture, data: bytes, reason: str
) -> None:
    events: list[str] = []
    serving = asyncio.ensure_future(sample_plugin(events).serve())
    await fake.handshake()
    await fake.send(data)
    with pytest.raises(PluginError, match="protocol error"):
        await asyncio.wait_for(serving, 10)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("closing the connection after a bad frame from plugd" in m for m in logged)
    assert any(reason in m for m in logged), logged
    assert events == ["unloaded"]
    assert await fake.closed()


async def test_a_refused_handshake_is_an_error_with_plugds_reason(fake: FakePlugd) -> None:
    serving = asyncio.ensure_future(sample_plugin([]).serve())
    hello = await fake.next()
    assert isinstance(hello, protocol.Request)
    error = protocol.ErrorObject(protocol.UNAUTHORIZED, "wrong token")
    await fake.send(protocol.encode_error(hello.id, error))
    with pytest.raises(PluginError, match="plugd refused the handshake: wrong token"):
        await asyncio.wait_for(serving, 10)


async def test_the_socket_closing_stops_the_plugin_and_runs_on_unload(fake: FakePlugd) -> None:
    events: list[str] = []
    serving = asyncio.ensure_future(sample_plugin(events).serve())
    await fake.handshake()
    await fake.send(protocol.encode_request(1, "http", http("/hang")))
    await fake.send(protocol.encode_request(2, "ping", {}))
    await fake.next()
    _, writer = await fake.connected
    writer.close()
    await asyncio.wait_for(serving, 10)
    assert events == ["cancelled", "unloaded"]


def test_outside_plugd_the_error_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLUGD_SOCKET", raising=False)
    with pytest.raises(PluginError, match=r"PLUGD_SOCKET is missing.*must be started by"):
        asyncio.run(Plugin("x").serve())


def test_declarations_are_checked() -> None:
    plugin = Plugin("x")
    plugin.get("/a")(lambda req: "a")
    with pytest.raises(ValueError, match="GET /a: declared twice"):
        plugin.get("/a")
    with pytest.raises(ValueError, match="must start with '/'"):
        plugin.get("a")
    with pytest.raises(ValueError, match="mode 'sometimes' is not one of"):
        plugin.hook("h", "sometimes")  # type: ignore[arg-type]


def test_what_handlers_return_becomes_a_response() -> None:
    assert to_response("hi").to_wire() == {
        "status": 200,
        "headers": [("content-type", "text/plain; charset=utf-8")],
        "body": b"hi",
    }
    assert to_response({"a": "é"}).body == '{"a":"é"}'.encode()
    assert to_response([1]).header("content-type") == "application/json"
    assert to_response(b"\x00").header("content-type") == "application/octet-stream"
    assert to_response(None).status == 204
    assert to_response((201, {"id": 1})).status == 201
    assert to_response((202, None)).body == b""
    r = Response(200, body="x").with_header("x-a", "1")
    assert to_response(r) is r
    assert r.header("X-A") == "1"
    assert HttpError.not_found("gone").to_response().body == b'{"error":"gone"}'
    with pytest.raises(TypeError, match="a handler returned float"):
        to_response(1.5)


def test_sse_events_are_framed_line_by_line_as_the_rust_runtime_does() -> None:
    from plugd import SseEvent

    event = SseEvent(data="a\nb", event="tick", id="7", retry=500)
    assert event.to_bytes() == b"event: tick\nid: 7\nretry: 500\ndata: a\ndata: b\n\n"
    assert SseEvent(data="x", event="bad\nname").to_bytes() == b"event: badname\ndata: x\n\n"
    assert SseEvent(comment="").to_bytes() == b":\n\n"
    assert SseEvent(comment="one\ntwo").to_bytes() == b": one\n: two\n\n"


def test_chunks_fit_the_window_and_the_frame_limit() -> None:
    from plugd._stream import chunk_limit, cost

    assert chunk_limit(256 * 1024, 16 << 20) == 64 * 1024
    assert chunk_limit(4096, 16 << 20) == 4096 - 64
    assert chunk_limit(1 << 20, 65536) == 65536 - 64
    assert cost(100) == 164


def test_streaming_declarations_reach_the_handshake_and_bad_ones_are_refused() -> None:
    plugin = Plugin("p")

    @plugin.post("/up", stream=True, max_body=10)
    async def up(req: Request) -> None: ...

    @plugin.websocket("/ws")
    async def ws(socket: Any) -> None: ...

    routes = plugin.hello("t", 1, 1 << 20)["routes"]
    assert routes == [
        {"method": "POST", "path": "/up", "permission": None, "stream": True, "max_body": 10},
        {"method": "GET", "path": "/ws", "permission": None, "websocket": True},
    ]
    with pytest.raises(ValueError, match="must be `async def`"):
        plugin.websocket("/sync")(lambda socket: None)
    with pytest.raises(ValueError, match="declared twice"):
        plugin.websocket("/ws")(ws)
