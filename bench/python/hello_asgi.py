"""The same handler as a minimal ASGI application, served by uvicorn (bench/python.sh)."""

from typing import Any, Callable

BODY = b"hello, world\n"
HEADERS = [(b"content-type", b"text/plain; charset=utf-8")]


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] != "/plugins/hello-py/hello":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
