"""plugd-runtime: write plugd plugins in Python.

A plugin declares its routes, hooks and services and calls :meth:`Plugin.run`; the runtime
connects to the socket plugd gave it, handshakes, and serves every request as its own task::

    from plugd import Plugin, Request

    plugin = Plugin("greeter", "1.0.0")

    @plugin.get("/hello/{name}")
    async def hello(req: Request) -> str:
        return f"hello, {req.params['name']}!"

    if __name__ == "__main__":
        plugin.run()

The wire format is in ``protocol/PROTOCOL.md``; :mod:`plugd.protocol` implements it.
"""

from ._connection import PluginError
from ._errors import BodyError, HttpError
from ._host import CALL_TIMEOUT, Host, HostError, Kv, KvEntry
from ._http import Request, Response
from ._plugin import (
    HookEvent,
    HookMode,
    Plugin,
    Reject,
    ServiceError,
    ServiceEvent,
    SettingsChanged,
    init_logging,
)
from ._stream import (
    BodyStream,
    BodyWriter,
    SseEvent,
    SseWriter,
    StreamClosed,
    WebSocket,
    WsMessage,
)

__all__ = [
    "CALL_TIMEOUT",
    "BodyError",
    "BodyStream",
    "BodyWriter",
    "HookEvent",
    "HookMode",
    "Host",
    "HostError",
    "HttpError",
    "Kv",
    "KvEntry",
    "Plugin",
    "PluginError",
    "Reject",
    "Request",
    "Response",
    "ServiceError",
    "ServiceEvent",
    "SettingsChanged",
    "SseEvent",
    "SseWriter",
    "StreamClosed",
    "WebSocket",
    "WsMessage",
    "init_logging",
]
