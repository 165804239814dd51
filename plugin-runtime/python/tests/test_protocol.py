"""The wire format against the golden frames of the Rust reference, and bad input."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from plugd import Plugin, Response, protocol

VECTORS = Path(__file__).resolve().parents[3] / "protocol" / "tests" / "vectors"


def vector(name: str) -> bytes:
    return bytes.fromhex((VECTORS / f"{name}.hex").read_text())


def all_vectors() -> list[str]:
    names = sorted(p.stem for p in VECTORS.glob("*.hex"))
    assert len(names) >= 10, f"golden frames missing in {VECTORS}"
    return names


@pytest.mark.parametrize("name", all_vectors())
def test_every_golden_frame_decodes_and_re_encodes_byte_for_byte(name: str) -> None:
    frame = vector(name)
    bodies = protocol.FrameDecoder().feed(frame)
    assert len(bodies) == 1
    message = protocol.decode_message(bodies[0])
    assert protocol.encode_message(message) == frame


def test_the_handshake_the_sdk_builds_is_the_golden_one() -> None:
    plugin = Plugin("notes", "1.2.3")
    plugin.permission("notes.write", "create and change notes")

    @plugin.get("/notes/{id}")
    async def show() -> None: ...

    @plugin.post("/notes", permission="notes.write")
    async def create() -> None: ...

    @plugin.hook("document.before_save", "veto", priority=10)
    async def check() -> None: ...

    @plugin.service("notes.search")
    async def search() -> None: ...

    @plugin.post("/upload", stream=True, max_body=1 << 30)
    async def upload() -> None: ...

    @plugin.websocket("/chat")
    async def chat(ws: object) -> None: ...

    hello = plugin.hello(token="3f1c9a", epoch=1763900000000001, max_frame=16 * 1024 * 1024)
    assert protocol.encode_request(0, "handshake", hello) == vector("handshake_request_streaming")


def test_messages_decode_to_what_they_say() -> None:
    request = protocol.decode_message(vector("http_request")[4:])
    assert isinstance(request, protocol.Request)
    assert (request.id, request.method) == (7, "http")
    assert request.params["body"] == b'{"title":"hi"}'
    assert request.params["headers"] == [["content-type", "application/json"]]

    refused = protocol.decode_message(vector("handshake_refused")[4:])
    assert isinstance(refused, protocol.Response)
    assert refused.error is not None
    assert refused.error.code == protocol.HANDSHAKE_REFUSED

    answer = Response.json({"id": 42}, status=201).to_wire()
    assert protocol.encode_response(7, answer) == vector("http_response")
    error = protocol.ErrorObject(protocol.INVALID_PARAMS, "bad params", {"field": "path"})
    assert protocol.encode_error(9, error) == vector("error_with_data")
    assert protocol.encode_notification("cancel", {"id": 7}) == vector("cancel_notification")


def test_frames_split_anywhere_are_reassembled() -> None:
    stream = vector("ping_request") + vector("http_request") + vector("shutdown_request")
    decoder = protocol.FrameDecoder()
    bodies = []
    for i in range(len(stream)):
        bodies += decoder.feed(stream[i : i + 1])
    assert [protocol.decode_message(b).method for b in bodies] == [  # type: ignore[union-attr]
        "ping",
        "http",
        "shutdown",
    ]
    assert decoder.buffered == 0


def test_an_oversized_frame_is_refused_before_its_body_is_read() -> None:
    decoder = protocol.FrameDecoder(max_frame=65536)
    with pytest.raises(protocol.FrameTooLarge) as e:
        decoder.feed(struct.pack(">I", 2**31) + b"\x94")
    assert str(e.value) == "frame of 2147483648 bytes exceeds the limit of 65536 bytes"
    # Only the header was looked at; nothing of the announced body was kept.
    assert decoder.buffered < 16
    with pytest.raises(protocol.FrameTooLarge):
        protocol.frame(b"x" * 70000, max_frame=65536)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "length 0"),
        (b"\xc1", "not valid MessagePack"),
        (b"\x93\x00\x01", "not valid MessagePack"),
        (b"\x81\xa1a\x01", "must be a non-empty array, not dict"),
        (b"\x93\x07\x01\x02", "not a request, response or notification"),
        (b"\x94\x00\xa1x\xa4ping\x80", "a request is [0, id: u64, method: str, params]"),
        (protocol.pack([1, 3, {"code": 1, "message": "m"}, 5]), "both an error and a result"),
        (protocol.pack([1, 3, {"code": "x"}, None]), "integer `code`"),
        (protocol.pack([2, "ping", {}]) + b"\x00", "1 trailing bytes after the message"),
        (b"\x94\x00\x01\xa4ping\xc4", "not valid MessagePack"),
        (b"\x92\xa1\xff\xc0", "not valid MessagePack"),
    ],
)
def test_a_malformed_frame_is_an_error_naming_what_is_wrong(body: bytes, reason: str) -> None:
    with pytest.raises(protocol.ProtocolError) as e:
        for b in protocol.FrameDecoder().feed(struct.pack(">I", len(body)) + body):
            protocol.decode_message(b)
    assert reason in str(e.value)


def test_a_map_key_that_is_an_array_decodes_as_a_tuple() -> None:
    body = protocol.pack([0, 1, "hook.call", {"hook": "h", "payload": {(1, 2): "x", "k": [1]}}])
    message = protocol.decode_message(body)
    assert isinstance(message, protocol.Request)
    assert message.params["payload"] == {(1, 2): "x", "k": [1]}


def test_nesting_depth_is_measured() -> None:
    def nested(levels: int) -> object:
        value: object = "leaf"
        for i in range(levels):
            value = [value] if i % 2 else {"k": value}
        return value

    assert not protocol.depth_exceeds(nested(48), 48)
    assert protocol.depth_exceeds(nested(49), 48)
    assert not protocol.depth_exceeds("flat", 0)
