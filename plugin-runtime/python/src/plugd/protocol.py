"""The wire protocol: frames, the three message shapes, error codes (``protocol/PROTOCOL.md``).

A frame is a 4-byte big-endian length followed by that many bytes holding one MessagePack value.
The value is an array: ``[0, id, method, params]`` (request), ``[1, id, error, result]``
(response) or ``[2, method, params]`` (notification). This module encodes and decodes them
exactly as the Rust reference does, byte for byte (the tests check it against the golden frames
in ``protocol/tests/vectors``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Union

import msgpack

#: The protocol version this package speaks.
PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 2

#: Largest frame body accepted before the handshake settles the limit (16 MiB).
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: The smallest frame limit a plugin may announce.
MIN_MAX_FRAME = 64 * 1024

REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2

# Error codes (PROTOCOL.md §3).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL = -32603
CANCELLED = 1
DEADLINE_EXCEEDED = 2
HANDLER_PANICKED = 3
SHUTTING_DOWN = 4
NO_ROUTE = 5
NOT_AVAILABLE = 6
DEPTH_EXCEEDED = 7
BUSY = 8
QUOTA_EXCEEDED = 9
HANDSHAKE_REFUSED = 10
UNAUTHORIZED = 11

_LENGTH = struct.Struct(">I")


class ProtocolError(Exception):
    """Bytes from the other side that are not a valid frame or message: the connection cannot
    be trusted any more and is closed."""


class FrameTooLarge(ProtocolError):
    """A frame announced a body longer than the limit; it was refused before being read."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


@dataclass(frozen=True)
class ErrorObject:
    """The ``error`` of a response: ``{code, message, data}``."""

    code: int
    message: str
    data: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": self.data}

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"


@dataclass(frozen=True)
class Request:
    """``[0, id, method, params]``."""

    id: int
    method: str
    params: Any


@dataclass(frozen=True)
class Response:
    """``[1, id, error, result]``: exactly one of ``error`` and ``result`` is set."""

    id: int
    error: ErrorObject | None
    result: Any


@dataclass(frozen=True)
class Notification:
    """``[2, method, params]``."""

    method: str
    params: Any


Message = Union[Request, Response, Notification]

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def pack(value: Any) -> bytes:
    """One MessagePack value, in the smallest encodings (as the Rust side writes them)."""
    data: bytes = _packer.pack(value)
    return data


def frame(value: Any, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """``value`` as a frame: length prefix and MessagePack body. Raises :class:`FrameTooLarge`
    when the body is over ``max_frame``."""
    body = pack(value)
    if len(body) > max_frame:
        raise FrameTooLarge(len(body), max_frame)
    return _LENGTH.pack(len(body)) + body


def encode_request(id: int, method: str, params: Any, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """A request frame."""
    return frame([REQUEST, id, method, params], max_frame)


def encode_response(id: int, result: Any, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """A successful response frame."""
    return frame([RESPONSE, id, None, result], max_frame)


def encode_error(id: int, error: ErrorObject, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """An error response frame."""
    return frame([RESPONSE, id, error.to_wire(), None], max_frame)


def encode_notification(method: str, params: Any, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """A notification frame."""
    return frame([NOTIFICATION, method, params], max_frame)


def encode_message(message: Message, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Any message as a frame."""
    if isinstance(message, Request):
        return encode_request(message.id, message.method, message.params, max_frame)
    if isinstance(message, Notification):
        return encode_notification(message.method, message.params, max_frame)
    if message.error is not None:
        return encode_error(message.id, message.error, max_frame)
    return encode_response(message.id, message.result, max_frame)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64


def decode_error(value: Any) -> ErrorObject:
    """The ``error`` map of a response."""
    if not isinstance(value, dict):
        raise ProtocolError(f"a response error must be a map, not {type(value).__name__}")
    code, message = value.get("code"), value.get("message")
    if not isinstance(code, int) or isinstance(code, bool):
        raise ProtocolError("a response error needs an integer `code`")
    if not isinstance(message, str):
        raise ProtocolError("a response error needs a string `message`")
    return ErrorObject(code, message, value.get("data"))


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple((_frozen(k), _frozen(v)) for k, v in value.items())
    return value


def _hashable_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return {_frozen(k): v for k, v in pairs}


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays and maps more than ``limit`` levels deep (plugd refuses
    a payload nested deeper than 48 levels, and a frame deeper than 64)."""
    level: list[Any] = [value]
    for _ in range(limit + 1):
        below: list[Any] = []
        for v in level:
            if isinstance(v, (list, tuple)):
                below.extend(v)
            elif isinstance(v, dict):
                below.extend(v.values())
        if not below:
            return False
        level = below
    return True


#: How deep a hook's or a service's value may nest (PROTOCOL.md §3).
MAX_PAYLOAD_DEPTH = 48


def decode_message(body: bytes) -> Message:
    """One frame body as a message. Raises :class:`ProtocolError` naming what is wrong."""
    try:
        try:
            value = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except TypeError:
            # A map key that is an array or a map (legal MessagePack, as a hook's payload may
            # carry): decode again with such keys made hashable, as tuples.
            value = msgpack.unpackb(
                body, raw=False, strict_map_key=False, object_pairs_hook=_hashable_keys
            )
    except msgpack.ExtraData as e:
        raise ProtocolError(f"{len(e.extra)} trailing bytes after the message") from None
    except (ValueError, msgpack.UnpackException) as e:
        raise ProtocolError(f"the frame is not valid MessagePack: {e}") from None
    if not isinstance(value, list) or not value:
        raise ProtocolError(f"a message must be a non-empty array, not {type(value).__name__}")
    kind = value[0]
    if kind == REQUEST and len(value) == 4:
        _, id, method, params = value
        if not _is_id(id) or not isinstance(method, str):
            raise ProtocolError("a request is [0, id: u64, method: str, params]")
        return Request(id, method, params)
    if kind == RESPONSE and len(value) == 4:
        _, id, error, result = value
        if not _is_id(id):
            raise ProtocolError("a response is [1, id: u64, error, result]")
        if error is not None and result is not None:
            raise ProtocolError(f"response {id} has both an error and a result")
        return Response(id, None if error is None else decode_error(error), result)
    if kind == NOTIFICATION and len(value) == 3:
        _, method, params = value
        if not isinstance(method, str):
            raise ProtocolError("a notification is [2, method: str, params]")
        return Notification(method, params)
    raise ProtocolError(f"not a request, response or notification: an array of {len(value)}")


class FrameDecoder:
    """Splits a byte stream into frame bodies. The length is checked as soon as its 4 bytes
    arrive, so an oversized frame is refused before its body is buffered."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Adds bytes; answers the frame bodies now complete, in order."""
        self.push(data)
        bodies = []
        while (body := self.next_frame()) is not None:
            bodies.append(body)
        return bodies

    def push(self, data: bytes) -> None:
        """Adds bytes without parsing them yet."""
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or ``None`` until more bytes arrive. The limit in
        force when it is called applies, so a handshake that changes it takes effect at once."""
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        (length,) = _LENGTH.unpack_from(buffer, 0)
        if length == 0:
            raise ProtocolError("a frame of length 0 is invalid")
        if length > self.max_frame:
            raise FrameTooLarge(length, self.max_frame)
        if len(buffer) - 4 < length:
            return None
        body = bytes(buffer[4 : 4 + length])
        del buffer[: 4 + length]
        return body

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)
