"""The request a route handler receives and the answers it may give."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ._errors import HttpError
from ._stream import BodySource, BodyStream, EventSource, Stream

if TYPE_CHECKING:
    from ._host import Host, Kv

HeaderList = list[tuple[str, str]]


class Response:
    """An HTTP response: status, headers (name, value pairs) and body bytes, or a body
    streamed as it is made (:meth:`stream`, :meth:`sse`)."""

    __slots__ = ("body", "headers", "keep_alive", "source", "sse_events", "status")

    def __init__(
        self,
        status: int = 200,
        headers: Sequence[tuple[str, str]] | None = None,
        body: bytes | bytearray | memoryview | str = b"",
    ) -> None:
        self.status = status
        self.headers: HeaderList = list(headers) if headers else []
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        #: A streamed body's source (:meth:`stream`, :meth:`sse`), or ``None``.
        self.source: Any = None
        self.sse_events = False
        self.keep_alive: float | None = None

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        """A ``text/plain`` response."""
        return cls(status, [("content-type", "text/plain; charset=utf-8")], text.encode())

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        """An ``application/json`` response."""
        body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(status, [("content-type", "application/json")], body)

    @classmethod
    def bytes(cls, body: bytes, status: int = 200) -> Response:
        """An ``application/octet-stream`` response."""
        return cls(status, [("content-type", "application/octet-stream")], body)

    @classmethod
    def stream(
        cls,
        body: BodySource,
        content_type: str = "application/octet-stream",
        status: int = 200,
        headers: Sequence[tuple[str, str]] | None = None,
    ) -> Response:
        """A body streamed to the client as it is made, on a route declared with
        ``stream=True``. ``body`` is an async iterable of chunks (``bytes`` or ``str``), a plain
        iterable of them (iterated in the handlers' thread pool, so it may block), or an
        ``async def`` taking a :class:`BodyWriter`. Each chunk waits for credit, so a client
        that reads slowly makes the producer wait. A ``content-length`` header is kept;
        without one the body is chunked. An exception in the source aborts the client's
        response (no final chunk)."""
        response = cls(status, [("content-type", content_type), *(headers or [])])
        response.source = body
        return response

    @classmethod
    def sse(
        cls,
        events: EventSource,
        keep_alive: float | None = None,
        status: int = 200,
        headers: Sequence[tuple[str, str]] | None = None,
    ) -> Response:
        """A ``text/event-stream`` of Server-Sent Events, each flushed to the client at once.
        ``events`` is an async or plain iterable of :class:`SseEvent` (or ``str`` data), or an
        ``async def`` taking an :class:`SseWriter`. With ``keep_alive``, a comment line goes
        out whenever that many seconds pass without an event."""
        response = cls(
            status, [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        )
        response.headers.extend(headers or [])
        response.source = events
        response.sse_events = True
        response.keep_alive = keep_alive
        return response

    def with_header(self, name: str, value: str) -> Response:
        """Adds a header; answers the same response."""
        self.headers.append((name, value))
        return self

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def to_wire(self) -> dict[str, Any]:
        wire = {"status": self.status, "headers": self.headers, "body": self.body}
        if self.source is not None:
            wire["stream"] = True
        return wire

    def __repr__(self) -> str:
        return f"Response(status={self.status}, headers={self.headers!r}, body={self.body!r})"


def to_response(value: Any) -> Response:
    """What a handler returned, as a response: ``str`` (text), ``bytes`` (octet-stream),
    ``dict``/``list`` (JSON), ``None`` (204), a :class:`Response`, or ``(status, any of
    these)``."""
    if isinstance(value, Response):
        return value
    if isinstance(value, str):
        return Response.text(value)
    if isinstance(value, (dict, list)):
        return Response.json(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Response.bytes(bytes(value))
    if value is None:
        return Response(204)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int):
        if value[1] is None:
            return Response(value[0])
        response = to_response(value[1])
        response.status = value[0]
        return response
    raise TypeError(
        f"a handler returned {type(value).__name__}; return str, bytes, dict, list, None, "
        "a Response or (status, one of these)"
    )


class Request:
    """An HTTP request forwarded by plugd to one of this plugin's routes."""

    __slots__ = ("_body_stream", "_cancelled", "_wire", "host", "params")

    def __init__(self, wire: dict[str, Any], host: Host, stream: Stream | None = None) -> None:
        self._wire = wire
        self._body_stream: BodyStream | None = BodyStream(stream) if stream is not None else None
        #: The values captured by ``{name}`` in the route pattern, percent-decoded.
        self.params: dict[str, str] = wire.get("params") or {}
        #: plugd: other plugins' services, hooks, and this plugin's key-value store.
        self.host = host
        self._cancelled = threading.Event()

    @property
    def kv(self) -> Kv:
        """The plugin's key-value store, kept by plugd."""
        return self.host.kv

    @property
    def method(self) -> str:
        """The HTTP method, in upper case."""
        return str(self._wire["method"])

    @property
    def path(self) -> str:
        """The path below the plugin's mount point, such as ``/items/42``."""
        return str(self._wire["path"])

    @property
    def route(self) -> str:
        """The route pattern that matched, such as ``/items/{id}``."""
        return str(self._wire["route"])

    def param(self, name: str) -> str | None:
        """The value captured by ``{name}`` in the route pattern."""
        return self.params.get(name)

    @property
    def query_string(self) -> str:
        """The raw query string, without ``?``."""
        return str(self._wire.get("query", ""))

    def query(self, name: str) -> str | None:
        """The first value of query parameter ``name``, percent-decoded."""
        return next((v for k, v in self.query_items() if k == name), None)

    def query_items(self) -> list[tuple[str, str]]:
        """Every query parameter, percent-decoded, in order."""
        return parse_qsl(self.query_string, keep_blank_values=True)

    @property
    def headers(self) -> HeaderList:
        """Every header, names in lower case, in the order received."""
        return [(str(k), str(v)) for k, v in self._wire.get("headers", ())]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        name = name.lower()
        return next((str(v) for k, v in self._wire.get("headers", ()) if k == name), None)

    @property
    def body(self) -> bytes:
        """The body bytes (empty on a streaming route: read :meth:`body_stream` there)."""
        body: bytes = self._wire.get("body", b"")
        return body

    @property
    def streaming(self) -> bool:
        """Whether the body arrives as a stream (a route declared with ``stream=True``)."""
        return bool(self._wire.get("stream"))

    def body_stream(self) -> BodyStream:
        """The body as it arrives, chunk by chunk (``async for chunk in
        req.body_stream()``); on a route that does not stream, the whole body as one chunk.
        It can be taken once."""
        if self.streaming:
            stream, self._body_stream = self._body_stream, None
            if stream is None:
                raise RuntimeError("the request's body stream was already taken")
            return stream
        return BodyStream(None, self.body)

    def text(self) -> str:
        """The body as UTF-8 text; a 400 :class:`HttpError` if it is not."""
        try:
            return self.body.decode()
        except UnicodeDecodeError as e:
            raise HttpError.bad_request(f"request body is not UTF-8: {e}") from None

    def json(self) -> Any:
        """The body parsed as JSON; a 400 :class:`HttpError` naming what was wrong."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise HttpError.bad_request(f"request body is not valid JSON: {e}") from None

    @property
    def caller(self) -> str | None:
        """The name of the token the caller presented, when the route requires a permission
        (set by plugd from a verified token; a client cannot forge it)."""
        return self.header("x-plugd-caller")

    @property
    def caller_permissions(self) -> list[str]:
        """The permissions of the caller's token, when the route requires one."""
        value = self.header("x-plugd-permissions") or ""
        return [p for p in value.split(",") if p]

    @property
    def request_id(self) -> str:
        """The request id: the client's ``x-request-id`` if it sent one, else plugd's."""
        return str(self._wire.get("request_id", ""))

    @property
    def deadline(self) -> float:
        """When plugd stops waiting for the answer, in seconds since the Unix epoch."""
        return float(self._wire.get("deadline_unix_ms", 0)) / 1000.0

    def time_left(self) -> float:
        """Seconds left before plugd stops waiting for the answer."""
        return max(0.0, self.deadline - time.time())

    def cancelled(self) -> bool:
        """Whether plugd gave up on this request (the client left, or the deadline passed).
        An ``async`` handler is cancelled for you; a sync one, running in a thread, may poll
        this to stop early."""
        return self._cancelled.is_set()

    def __repr__(self) -> str:
        return f"Request({self.method} {self.path}, id={self.request_id})"
