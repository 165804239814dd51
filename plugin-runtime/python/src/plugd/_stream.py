"""Streams (protocol 1.2): request bodies read as they arrive, response bodies sent as they are
made, Server-Sent Events and WebSockets, all within plugd's credit.

Each stream has a window of credit per direction (``stream_window`` in the handshake's answer).
A message costs its data plus 64 bytes; a sender waits for a ``stream.credit`` before spending
more than it has, and the receiver grants credit back as the handler consumes what arrived, at
the latest when half the window has been consumed. So a slow client makes the handler's
``write``/``send`` wait, and a slow handler makes plugd stop reading the client's upload.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Callable, Union

from . import protocol
from ._errors import BodyError

log = logging.getLogger("plugd")

#: Each side's credit per stream and direction when plugd announces none.
DEFAULT_WINDOW = 256 * 1024
#: The largest chunk of data one message carries.
MAX_CHUNK = 64 * 1024
#: What a ``stream.data`` or ``ws.message`` costs beyond its data.
CHUNK_OVERHEAD = 64
#: Room a data frame needs beyond its data (envelope, method, keys, id).
_FRAME_OVERHEAD = 64


def cost(length: int) -> int:
    """The credit a message carrying ``length`` bytes of data costs."""
    return length + CHUNK_OVERHEAD


def chunk_limit(window: int, max_frame: int) -> int:
    """The largest chunk of data to put in one message on a stream with ``window`` bytes of
    credit, over a connection whose frames are at most ``max_frame`` bytes."""
    return max(1, min(MAX_CHUNK, window - CHUNK_OVERHEAD, max_frame - _FRAME_OVERHEAD))


class StreamClosed(Exception):
    """The stream ended (the client went away, or the connection closed) before a send."""

    def __init__(self) -> None:
        super().__init__("the stream has ended")


Send = Callable[[bytes], Awaitable[None]]
#: Writes a frame at once, without waiting for the socket to drain (for small frames).
WriteNow = Callable[[bytes], None]


class Stream:
    """One open stream: what plugd sent on it, and the credit for what the plugin sends."""

    def __init__(
        self, id: int, window: int, max_frame: int, send: Send, write_now: WriteNow
    ) -> None:
        self.id = id
        self.window = window
        self.max_frame = max_frame
        self._send = send
        self._write_now = write_now
        #: Credit for what this side sends.
        self.credit = window
        #: Credit plugd still has for what it sends here.
        self.outstanding = window
        self._consumed = 0
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._arrived: asyncio.Future[None] | None = None
        self._granted: asyncio.Future[None] | None = None
        #: The stream is over: a cancel, the connection closed, or this side closed it.
        self.closed = False

    # From plugd (called by the connection as messages arrive) -------------------------------

    def push(self, item: tuple[Any, ...], charge: int = 0) -> None:
        """Queues what plugd sent; a message past plugd's credit ends the body instead."""
        if charge:
            if charge > self.outstanding:
                log.error(
                    "plugd sent %d bytes on stream %d with %d bytes of credit left; ending it",
                    charge,
                    self.id,
                    self.outstanding,
                )
                item = ("abort", "plugd sent past the stream's credit")
            else:
                self.outstanding -= charge
        self._inbox.append(item)
        _wake(self._arrived)

    def grant(self, bytes: int) -> None:
        """plugd's ``stream.credit``."""
        self.credit += bytes
        _wake(self._granted)

    def close(self) -> None:
        """Ends the stream: sends fail with :class:`StreamClosed`, reads see the end."""
        if not self.closed:
            self.closed = True
            self._inbox.append(("gone",))
            _wake(self._arrived)
            _wake(self._granted)

    # For the handler ------------------------------------------------------------------------

    async def next(self) -> tuple[Any, ...]:
        """The next thing plugd sent, waiting for it."""
        while not self._inbox:
            self._arrived = asyncio.get_running_loop().create_future()
            await self._arrived
        return self._inbox.popleft()

    def consumed(self, charge: int) -> None:
        """Counts what the handler took; gives plugd credit back past half the window. It
        does not wait, so a read cancelled right after taking a chunk cannot lose it."""
        self._consumed += charge
        if self._consumed * 2 >= self.window and not self.closed:
            bytes, self._consumed = self._consumed, 0
            self.outstanding += bytes
            params = {"id": self.id, "bytes": bytes}
            self._write_now(protocol.encode_notification("stream.credit", params, self.max_frame))

    async def take(self, charge: int) -> None:
        """Takes credit for a message, waiting until plugd grants enough."""
        while True:
            if self.closed:
                raise StreamClosed
            if self.credit >= charge:
                self.credit -= charge
                return
            self._granted = asyncio.get_running_loop().create_future()
            await self._granted

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self._send(protocol.encode_notification(method, params, self.max_frame))

    async def data(self, data: bytes) -> None:
        """Sends ``data`` as ``stream.data`` chunks within the credit."""
        if data:
            await self._pieces("stream.data", data, {})

    async def ws(self, kind: str, data: bytes) -> None:
        """Sends one WebSocket message, in pieces when it is bigger than a chunk."""
        await self._pieces("ws.message", data, {"kind": kind})

    async def _pieces(self, method: str, data: bytes, extra: dict[str, Any]) -> None:
        """Sends ``data`` in pieces of at most a chunk (at least one), each within credit;
        all but the last carry ``more`` (which a ``stream.data`` receiver ignores)."""
        limit = chunk_limit(self.window, self.max_frame)
        start = 0
        while True:
            piece = data[start : start + limit]
            start += len(piece)
            await self.take(cost(len(piece)))
            params: dict[str, Any] = {"id": self.id, **extra, "data": piece}
            if start < len(data) and method == "ws.message":
                params["more"] = True
            await self.notify(method, params)
            if start >= len(data):
                return


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


# Request bodies -----------------------------------------------------------------------------


class BodyStream:
    """A request body read as it arrives: ``async for chunk in req.body_stream(): …``, or
    ``await body.read()`` for one chunk at a time (``None`` at the end). Raises
    :class:`BodyError` when plugd aborts the body. Reading is what gives plugd credit for more,
    so a handler that reads slowly slows the client's upload down instead of filling memory."""

    def __init__(self, stream: Stream | None, whole: bytes = b"") -> None:
        self._stream = stream
        self._whole: bytes | None = whole or None
        self._done = False

    async def read(self) -> bytes | None:
        """The next chunk, or ``None`` once the body is complete."""
        if self._done:
            return None
        if self._stream is None:
            chunk, self._whole = self._whole, None
            self._done = chunk is None
            return chunk
        item = await self._stream.next()
        kind = item[0]
        if kind == "data":
            data: bytes = item[1]
            self._stream.consumed(cost(len(data)))
            return data
        self._done = True
        if kind == "end":
            return None
        if kind == "abort":
            raise BodyError(400, f"the request body was aborted: {item[1]}")
        raise BodyError(400, "the request ended before its body was complete")

    async def read_all(self, limit: int) -> bytes:
        """The whole body; :class:`BodyError` if it is longer than ``limit`` bytes."""
        parts = bytearray()
        while (chunk := await self.read()) is not None:
            if len(parts) + len(chunk) > limit:
                raise BodyError(413, f"the request body is longer than {limit} bytes")
            parts += chunk
        return bytes(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


# Response bodies ----------------------------------------------------------------------------


class BodyWriter:
    """Writes a streamed response body: each ``write`` goes to the client as it is made,
    waiting while the client is behind. Raises :class:`StreamClosed` once the client has
    gone."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._lock = asyncio.Lock()
        self._last = asyncio.get_running_loop().time()

    async def write(self, data: bytes | bytearray | memoryview | str) -> None:
        """Sends ``data`` (a ``str`` as UTF-8); waits while plugd has no credit for it."""
        chunk = data.encode() if isinstance(data, str) else bytes(data)
        if not chunk:
            return
        async with self._lock:
            await self._stream.data(chunk)
            self._last = asyncio.get_running_loop().time()

    @property
    def closed(self) -> bool:
        """Whether the client has gone."""
        return self._stream.closed

    def idle_for(self) -> float:
        """Seconds since the last write."""
        return asyncio.get_running_loop().time() - self._last


@dataclass
class SseEvent:
    """One Server-Sent Event: ``data`` (split on newlines into ``data:`` lines), ``event``
    (the client's ``addEventListener`` type), ``id`` (the client's ``Last-Event-ID`` on
    reconnect), ``retry`` (ms before the client reconnects), or a ``comment`` line, which clients
    ignore (a keep-alive)."""

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    def to_bytes(self) -> bytes:
        """The event as it goes on the wire, blank line included. Newlines in a field other
        than ``data`` would end it early, so they are dropped there."""

        def clean(text: str) -> str:
            return text.replace("\r", "").replace("\n", "")

        out: list[str] = []
        if self.comment is not None:
            lines = self.comment.split("\n")
            if lines and lines[-1] == "" and len(lines) > 1:
                lines.pop()
            out.extend(f": {line.rstrip(chr(13))}\n" if line else ":\n" for line in lines)
        if self.event is not None:
            out.append(f"event: {clean(self.event)}\n")
        if self.id is not None:
            out.append(f"id: {clean(self.id)}\n")
        if self.retry is not None:
            out.append(f"retry: {int(self.retry)}\n")
        if self.data is not None:
            out.extend(f"data: {line.removesuffix(chr(13))}\n" for line in self.data.split("\n"))
        out.append("\n")
        return "".join(out).encode()


class SseWriter:
    """Sends Server-Sent Events, each flushed to the client at once."""

    def __init__(self, body: BodyWriter) -> None:
        self._body = body

    async def send(self, event: SseEvent | str) -> None:
        """Sends one event (a ``str`` is its ``data``)."""
        if isinstance(event, str):
            event = SseEvent(data=event)
        await self._body.write(event.to_bytes())

    async def comment(self, text: str = "") -> None:
        """Sends a comment line, which clients ignore (a keep-alive)."""
        await self._body.write(SseEvent(comment=text).to_bytes())

    @property
    def closed(self) -> bool:
        """Whether the client has gone."""
        return self._body.closed


Chunk = Union[bytes, bytearray, memoryview, str]
#: What a streamed response's body may be: an async iterable of chunks, a plain iterable of
#: them (iterated in the handlers' thread pool, so it may block), or an ``async def`` taking a
#: :class:`BodyWriter`.
BodySource = Union[AsyncIterable[Chunk], Iterable[Chunk], Callable[[BodyWriter], Awaitable[None]]]
#: What a Server-Sent Events response's events may be: an async or plain iterable of
#: :class:`SseEvent` (or ``str`` data), or an ``async def`` taking an :class:`SseWriter`.
EventSource = Union[
    AsyncIterable[Union[SseEvent, str]],
    Iterable[Union[SseEvent, str]],
    Callable[[SseWriter], Awaitable[None]],
]

_END = object()


async def pump(
    body: BodyWriter,
    source: Any,
    sse: bool,
    keep_alive: float | None,
    in_thread: Callable[[Callable[[], Any]], Awaitable[Any]],
) -> None:
    """Writes a response body from its source, with a keep-alive comment whenever
    ``keep_alive`` seconds pass without a write."""
    writer: Any = SseWriter(body) if sse else body
    put: Callable[[Any], Awaitable[None]] = writer.send if sse else writer.write
    keeper = None
    if keep_alive is not None and keep_alive > 0:
        keeper = asyncio.ensure_future(_keep_alive(body, keep_alive))
    try:
        if (
            callable(source)
            and not hasattr(source, "__aiter__")
            and not hasattr(source, "__iter__")
        ):
            await source(writer)
        elif hasattr(source, "__aiter__"):
            async for item in source:
                await put(item)
        else:
            items = iter(source)
            while (item := await in_thread(lambda: next(items, _END))) is not _END:
                await put(item)
    finally:
        if keeper is not None:
            keeper.cancel()


async def _keep_alive(body: BodyWriter, every: float) -> None:
    while not body.closed:
        await asyncio.sleep(max(0.0, every - body.idle_for()))
        if body.idle_for() >= every:
            await body.write(b":\n\n")


# WebSockets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WsMessage:
    """One WebSocket message: ``kind`` is ``"text"``, ``"binary"``, ``"ping"``, ``"pong"`` or
    ``"close"`` (with ``code`` and ``reason``)."""

    kind: str
    data: bytes = b""
    code: int | None = None
    reason: str = ""

    @property
    def text(self) -> str:
        """The data as text."""
        return self.data.decode(errors="replace")


class WebSocket:
    """A WebSocket bridged by plugd to one client. ``async for message in ws`` yields text,
    binary, ping and pong messages until the socket closes; ``send_text``/``send_bytes`` wait
    while the client is behind; ``close`` closes it. Returning from the handler closes it with
    1000, and an exception with 1011."""

    def __init__(self, stream: Stream, request: Any) -> None:
        self._stream = stream
        #: The upgrade request (path, query, headers, caller).
        self.request = request
        #: The client's close code and reason, once it closed.
        self.close_code: int | None = None
        self.close_reason = ""
        self._closed = False
        # A message arriving in pieces, kept across receives (one may be cancelled halfway).
        self._partial = bytearray()

    async def receive(self) -> WsMessage | None:
        """The next message; a close from the client arrives as ``kind == "close"``, then
        ``None``."""
        if self._closed:
            return None
        while True:
            item = await self._stream.next()
            if item[0] != "ws":
                break
            _, kind, data, more = item
            self._stream.consumed(cost(len(data)))
            if more:
                self._partial += data
                continue
            if self._partial:
                self._partial += data
                data, self._partial = bytes(self._partial), bytearray()
            return WsMessage(kind, data)
        self._closed = True
        if item[0] == "close":
            self.close_code, self.close_reason = item[1], item[2]
            self._stream.close()
            return WsMessage("close", b"", item[1], item[2])
        if item[0] == "abort":
            return WsMessage("close", b"", 1011, str(item[1]))
        return None

    def __aiter__(self) -> AsyncIterator[WsMessage]:
        return self

    async def __anext__(self) -> WsMessage:
        message = await self.receive()
        if message is None or message.kind == "close":
            raise StopAsyncIteration
        return message

    async def send_text(self, text: str) -> None:
        """Sends a text message."""
        await self._send("text", text.encode())

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Sends a binary message."""
        await self._send("binary", bytes(data))

    async def ping(self, data: bytes = b"") -> None:
        """Sends a ping (at most 125 bytes)."""
        await self._send("ping", bytes(data[:125]))

    async def send(self, message: WsMessage | str | bytes) -> None:
        """Sends a message: a ``str`` as text, ``bytes`` as binary, or a :class:`WsMessage`
        (a ``close`` one closes the socket)."""
        if isinstance(message, str):
            await self.send_text(message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            await self.send_bytes(message)
        elif message.kind == "close":
            await self.close(message.code or 1000, message.reason)
        else:
            await self._send(message.kind, message.data)

    async def _send(self, kind: str, data: bytes) -> None:
        if self._closed or self._stream.closed:
            raise StreamClosed
        await self._stream.ws(kind, data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Closes the socket with ``code`` and ``reason`` (cut to 123 bytes)."""
        if self._stream.closed:
            self._closed = True
            return
        self._closed = True
        cut = reason.encode()[:123].decode(errors="ignore")
        await self._stream.notify("ws.close", {"id": self._stream.id, "code": code, "reason": cut})
        self._stream.close()

    @property
    def closed(self) -> bool:
        """Whether the socket is closed (either side closed it)."""
        return self._closed or self._stream.closed
