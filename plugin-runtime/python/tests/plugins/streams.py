"""A Python plugin that streams: bodies both ways, Server-Sent Events and WebSockets."""

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from plugd import (
    BodyWriter,
    HttpError,
    Plugin,
    Request,
    Response,
    SseEvent,
    SseWriter,
    WebSocket,
)

plugin = Plugin(os.environ["PLUGD_PLUGIN_NAME"], "1.0.0")
CHUNK = 64 * 1024
PATTERN = bytes(i % 251 for i in range(CHUNK + 251))

state: dict[str, Any] = {"produced": 0, "cancelled": 0, "last_close": None}
releases: list[asyncio.Event] = []


def number(req: Request, name: str, default: int) -> int:
    value = req.query(name)
    if value is None:
        return default
    if not value.isdigit():
        raise HttpError.bad_request(f"{name}={value!r} is not a number")
    return int(value)


def piece(sent: int, size: int) -> bytes:
    """The generated body's bytes from ``sent``: byte ``i`` is ``i % 251``."""
    start = sent % 251
    return PATTERN[start : start + min(CHUNK, size - sent)]


@plugin.post("/sha256", stream=True)
async def sha256(req: Request) -> dict[str, Any]:
    digest = hashlib.sha256()
    n = 0
    async for chunk in req.body_stream():
        n += len(chunk)
        digest.update(chunk)
    return {"bytes": n, "sha256": digest.hexdigest()}


@plugin.post("/limited", stream=True)
async def limited(req: Request) -> dict[str, Any]:
    body = await req.body_stream().read_all(number(req, "limit", 1024))
    return {"bytes": len(body)}


@plugin.get("/download", stream=True)
async def download(req: Request) -> Response:
    size = number(req, "size", 1 << 20)
    state["produced"] = 0

    async def chunks() -> AsyncIterator[bytes]:
        sent = 0
        while sent < size:
            data = piece(sent, size)
            sent += len(data)
            state["produced"] = sent
            yield data

    return Response.stream(chunks(), headers=[("content-length", str(size))])


@plugin.get("/download-sync", stream=True)
def download_sync(req: Request) -> Response:
    size = number(req, "size", 1 << 20)

    def chunks() -> Iterator[bytes]:
        sent = 0
        while sent < size:
            data = piece(sent, size)
            sent += len(data)
            yield data

    return Response.stream(chunks())


@plugin.get("/writer", stream=True)
async def writer(req: Request) -> Response:
    async def produce(out: BodyWriter) -> None:
        for word in ("one ", "two ", "three"):
            await out.write(word)

    return Response.stream(produce, "text/plain")


@plugin.get("/fails-midway", stream=True)
async def fails_midway(req: Request) -> Response:
    release = asyncio.Event()
    releases.append(release)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"the first part, "
        await release.wait()  # until the client has the first part
        raise RuntimeError("the source broke on purpose")

    return Response.stream(chunks())


@plugin.post("/release")
async def release_all(req: Request) -> None:
    for release in releases:
        release.set()


@plugin.get("/endless", stream=True)
async def endless(req: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x" * 1024
                await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            state["cancelled"] += 1
            raise

    return Response.stream(chunks())


@plugin.get("/ticks", stream=True)
async def ticks(req: Request) -> Response:
    n, every = number(req, "n", 3), number(req, "every_ms", 300) / 1000

    async def events() -> AsyncIterator[SseEvent]:
        for i in range(1, n + 1):
            yield SseEvent(data=f'{{"tick":{i},"sent":{time.time()}}}', event="tick", id=str(i))
            if i < n:
                await asyncio.sleep(every)

    return Response.sse(events())


@plugin.get("/quiet", stream=True)
async def quiet(req: Request) -> Response:
    async def events(out: SseWriter) -> None:
        await out.send("hello")
        await asyncio.sleep(30)

    return Response.sse(events, keep_alive=0.1)


@plugin.get("/not-declared")
async def not_declared(req: Request) -> Response:
    return Response.stream([b"never sent"])


@plugin.get("/state")
async def get_state(req: Request) -> dict[str, Any]:
    return state


@plugin.websocket("/echo")
async def echo(ws: WebSocket) -> None:
    async for message in ws:
        if message.kind == "text" and message.text.startswith("close "):
            _, code, reason = message.text.split(" ", 2)
            await ws.close(int(code), reason)
            return
        if message.kind in ("text", "binary"):
            await ws.send(message)
    state["last_close"] = [ws.close_code, ws.close_reason]


if __name__ == "__main__":
    plugin.run()
