"""The connection to plugd: handshake, then dispatch every message until shutdown.

Frames are parsed as they arrive (``data_received``) and each HTTP request, hook call or service
call runs as its own task, so many are in flight at once; a ``cancel`` cancels the task, and a
``shutdown`` waits for the tasks in flight before answering. Writes go straight to the socket's
transport (one frame per ``write``, never interleaved: the event loop is one thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from . import protocol
from ._errors import HttpError
from ._host import Caller, Host
from ._http import Request, Response, to_response
from ._plugin import (
    HookEvent,
    Plugin,
    Reject,
    ServiceError,
    ServiceEvent,
    SettingsChanged,
    _Handler,
)
from ._stream import DEFAULT_WINDOW, BodyWriter, Stream, StreamClosed, WebSocket, cost, pump
from .protocol import ErrorObject

log = logging.getLogger("plugd")


class PluginError(Exception):
    """Why a plugin stopped with an error: not started by plugd, the socket unreachable, the
    handshake refused, ``on_load`` failed, or plugd sent something that is not the protocol."""


@dataclass(frozen=True)
class Env:
    """What plugd puts in the plugin's environment."""

    socket: str
    token: str
    epoch: int
    max_frame: int

    @classmethod
    def from_process(cls) -> Env:
        def var(name: str) -> str:
            value = os.environ.get(name)
            if value is None:
                raise PluginError(
                    f"environment variable {name} is missing: this program is a plugd plugin "
                    "and must be started by `plugd serve`"
                )
            return value

        def number(name: str, value: str) -> int:
            if not value.isdigit():
                raise PluginError(f"environment variable {name} is {value!r}, not a number")
            return int(value)

        max_frame = os.environ.get("PLUGD_MAX_FRAME")
        return cls(
            socket=var("PLUGD_SOCKET"),
            token=var("PLUGD_TOKEN"),
            epoch=number("PLUGD_EPOCH", var("PLUGD_EPOCH")),
            max_frame=(
                protocol.DEFAULT_MAX_FRAME
                if max_frame is None
                else number("PLUGD_MAX_FRAME", max_frame)
            ),
        )


class _Threads:
    """The thread pool of sync handlers, counting the calls still running."""

    def __init__(self, max_workers: int | None) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="plugd-handler"
        )
        self.busy = 0
        self._lock = threading.Lock()

    def run(self, fn: Any, arg: Any) -> Any:
        with self._lock:
            self.busy += 1
        try:
            return fn(arg)
        finally:
            with self._lock:
                self.busy -= 1


class Connection(asyncio.Protocol):
    """One connection to plugd, from handshake to close."""

    def __init__(self, plugin: Plugin, env: Env, loop: asyncio.AbstractEventLoop) -> None:
        self.plugin = plugin
        self.env = env
        self.loop = loop
        self.decoder = protocol.FrameDecoder(env.max_frame)
        self.max_frame = env.max_frame
        self.transport: asyncio.Transport | None = None
        self.caller = Caller(self.send, env.max_frame)
        self.caller.loop = loop
        self.host = Host(self.caller, 0)
        self.threads = _Threads(plugin.max_workers)
        self.welcome: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.stopped: asyncio.Future[None] = loop.create_future()
        self.in_flight: dict[int, tuple[asyncio.Task[None], Request | None]] = {}
        #: Open streams by the id of plugd's ``http`` request.
        self.streams: dict[int, Stream] = {}
        self.window = DEFAULT_WINDOW
        self.draining = False
        self._paused = False
        self._resume: list[asyncio.Future[None]] = []
        self._unloaded = False

    # asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        decoder = self.decoder
        try:
            decoder.push(data)
            while (body := decoder.next_frame()) is not None:
                self._dispatch(protocol.decode_message(body))
                if self.stopped.done():
                    return
        except protocol.ProtocolError as e:
            self._fail(e)
        except Exception as e:
            log.exception("cannot handle a message from plugd")
            self._fail(protocol.ProtocolError(f"{type(e).__name__}: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(
                PluginError("plugd closed the connection during the handshake")
            )
        if not self.stopped.done():
            if exc is None:
                log.info("plugd closed the connection; stopping")
                self.stopped.set_result(None)
            else:
                self.stopped.set_exception(PluginError(f"the connection to plugd failed: {exc}"))
        for stream in self.streams.values():
            stream.close()
        self._wake_writers()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        waiters, self._resume = self._resume, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # Sending --------------------------------------------------------------------------------

    async def send(self, frame: bytes) -> None:
        """Writes a frame; waits while the socket's buffer is over its high-water mark."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(frame)
        if self._paused:
            waiter = self.loop.create_future()
            self._resume.append(waiter)
            await waiter

    def _write_now(self, frame: bytes) -> None:
        """Writes a small frame without waiting for the socket to drain."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)

    async def answer(self, id: int, result: Any) -> None:
        try:
            frame = protocol.encode_response(id, result, self.max_frame)
        except (protocol.ProtocolError, TypeError, ValueError, OverflowError) as e:
            log.error("cannot send the answer to request %d: %s", id, e)
            frame = protocol.encode_error(id, ErrorObject(protocol.INTERNAL, str(e)))
        await self.send(frame)

    async def refuse(self, id: int, code: int, message: str) -> None:
        await self.send(protocol.encode_error(id, ErrorObject(code, message), self.max_frame))

    # Receiving ------------------------------------------------------------------------------

    def _fail(self, error: protocol.ProtocolError) -> None:
        log.error("closing the connection after a bad frame from plugd: %s", error)
        if not self.welcome.done():
            self.welcome.set_exception(PluginError(f"protocol error: {error}"))
        if not self.stopped.done():
            self.stopped.set_exception(PluginError(f"protocol error: {error}"))
        if self.transport is not None:
            self.transport.abort()

    def _dispatch(self, message: protocol.Message) -> None:
        if not self.welcome.done():
            if isinstance(message, protocol.Response) and message.id == 0:
                if message.error is not None:
                    self.welcome.set_exception(
                        PluginError(f"plugd refused the handshake: {message.error.message}")
                    )
                elif not isinstance(message.result, dict):
                    raise protocol.ProtocolError("the handshake answer is not a map")
                else:
                    # The agreed limit applies from the next frame on, which may be in this
                    # very read.
                    limit = message.result.get("max_frame")
                    if isinstance(limit, int) and limit > 0:
                        self.max_frame = min(limit, self.env.max_frame)
                    self.decoder.max_frame = self.max_frame
                    self.caller.max_frame = self.max_frame
                    window = message.result.get("stream_window")
                    if isinstance(window, int) and window > 0:
                        self.window = window
                    settings = message.result.get("settings")
                    self.caller.settings = dict(settings) if isinstance(settings, dict) else {}
                    self.welcome.set_result(message.result)
                return
            raise protocol.ProtocolError(f"expected the handshake answer, got {message!r}")
        if isinstance(message, protocol.Request):
            self._request(message)
        elif isinstance(message, protocol.Response):
            if not self.caller.answer(message):
                log.debug("late answer %d to a call that already ended", message.id)
        elif message.method == "cancel":
            self._cancel(message.params)
        elif message.method in _STREAM_NOTES:
            self._stream_note(message.method, message.params)
        else:
            log.debug("ignoring notification %r", message.method)

    def _request(self, req: protocol.Request) -> None:
        method, params, id = req.method, req.params, req.id
        if method == "ping":
            self._spawn_untracked(self.answer(id, {}))
            return
        if method == "shutdown":
            grace = params.get("grace_ms") if isinstance(params, dict) else None
            if not isinstance(grace, int):
                self._spawn_untracked(
                    self.refuse(id, protocol.INVALID_PARAMS, "shutdown needs grace_ms: u64")
                )
                return
            if not self.draining:
                self.draining = True
                self._spawn_untracked(self._drain_and_stop(id, grace / 1000.0))
            return
        if method == "settings":
            values = params.get("values") if isinstance(params, dict) else None
            changed = params.get("changed") if isinstance(params, dict) else None
            if not isinstance(values, dict) or not isinstance(changed, list):
                message = "settings params must be {values: map, changed: [str]}"
                self._spawn_untracked(self.refuse(id, protocol.INVALID_PARAMS, message))
                return
            change = SettingsChanged(dict(values), [str(k) for k in changed])
            self._spawn_untracked(self._take_settings(id, change))
            return
        if method not in ("http", "hook.call", "service.call"):
            message = f"this plugin does not implement method {method!r}"
            self._spawn_untracked(self.refuse(id, protocol.METHOD_NOT_FOUND, message))
            return
        if self.draining:
            refusal = self.refuse(id, protocol.SHUTTING_DOWN, "the plugin is shutting down")
            self._spawn_untracked(refusal)
            return
        if not isinstance(params, dict):
            refusal = self.refuse(id, protocol.INVALID_PARAMS, f"{method} params must be a map")
            self._spawn_untracked(refusal)
            return
        try:
            if method == "http":
                self._start_http(id, params)
            elif method == "hook.call":
                self._start_hook(id, params)
            else:
                self._start_service(id, params)
        except (KeyError, TypeError, ValueError) as e:
            message = f"bad {method} params: {type(e).__name__}: {e}"
            self._spawn_untracked(self.refuse(id, protocol.INVALID_PARAMS, message))

    def _spawn_untracked(self, work: Any) -> None:
        task = self.loop.create_task(work)
        _background.add(task)
        task.add_done_callback(_background.discard)

    def _track(self, id: int, work: Any, request: Request | None = None) -> None:
        task = self.loop.create_task(work)
        self.in_flight[id] = (task, request)

        def done(t: asyncio.Task[None]) -> None:
            entry = self.in_flight.get(id)
            if entry is not None and entry[0] is t:
                del self.in_flight[id]

        task.add_done_callback(done)

    def _cancel(self, params: Any) -> None:
        id = params.get("id") if isinstance(params, dict) else None
        entry = self.in_flight.pop(id, None) if isinstance(id, int) else None
        if entry is None:
            return
        task, request = entry
        if request is not None:
            request._cancelled.set()
        open_stream = self.streams.get(id) if isinstance(id, int) else None
        if open_stream is not None:
            open_stream.close()
        task.cancel()
        log.debug("request %d cancelled by plugd", id)

    def _stream_note(self, method: str, params: Any) -> None:
        """A ``stream.*`` or ``ws.*`` notification: to its stream (one that already ended is
        ignored, as its messages may cross a cancel)."""
        id = params.get("id") if isinstance(params, dict) else None
        stream = self.streams.get(id) if isinstance(id, int) else None
        if stream is None:
            return
        assert isinstance(params, dict)
        if method == "stream.credit":
            bytes_ = params.get("bytes")
            if not isinstance(bytes_, int) or bytes_ < 0:
                raise protocol.ProtocolError("stream.credit needs bytes: u64")
            stream.grant(bytes_)
            return
        data = params.get("data", b"")
        if method in ("stream.data", "ws.message") and not isinstance(data, bytes):
            raise protocol.ProtocolError(f"{method} needs data: bin")
        if method == "stream.data":
            stream.push(("data", data), cost(len(data)))
        elif method == "ws.message":
            kind = params.get("kind")
            if kind not in ("text", "binary", "ping", "pong"):
                raise protocol.ProtocolError(f"ws.message of unknown kind {kind!r}")
            stream.push(("ws", kind, data, bool(params.get("more"))), cost(len(data)))
        elif method == "stream.end":
            stream.push(("end",))
        elif method == "stream.abort":
            stream.push(("abort", str(params.get("message", ""))))
        else:
            code = params.get("code")
            stream.push(
                ("close", code if isinstance(code, int) else 1005, str(params.get("reason", "")))
            )

    def _open_stream(self, id: int) -> Stream:
        stream = Stream(id, self.window, self.max_frame, self.send, self._write_now)
        self.streams[id] = stream
        return stream

    def _close_stream(self, id: int) -> None:
        stream = self.streams.pop(id, None)
        if stream is not None:
            stream.close()

    # Handlers -------------------------------------------------------------------------------

    async def _invoke(self, handler: _Handler, arg: Any) -> Any:
        if handler.is_async:
            return await handler.fn(arg)
        context = contextvars.copy_context()
        result = await self.loop.run_in_executor(
            self.threads.pool, context.run, self.threads.run, handler.fn, arg
        )
        if inspect.isawaitable(result):
            result = await result
        return result

    def _start_http(self, id: int, params: dict[str, Any]) -> None:
        route = self.plugin.routes.get((params["method"], params["route"]))
        if route is None:
            message = f"no route {params['method']} {params['route']}"
            self._spawn_untracked(self.refuse(id, protocol.NO_ROUTE, message))
            return
        if route.websocket:
            if not params.get("websocket"):
                message = f"route {route.path} takes WebSocket upgrades only"
                self._spawn_untracked(self.refuse(id, protocol.NO_ROUTE, message))
                return
            # Registered now: what plugd sends next, maybe in this very read, belongs to it.
            socket = WebSocket(self._open_stream(id), Request(params, self.host))
            self._track(id, self._websocket(id, route, socket), socket.request)
            return
        streamed = bool(params.get("stream"))
        stream = self._open_stream(id) if streamed or route.stream else None
        request = Request(params, self.host, stream if streamed else None)
        self._track(id, self._http(id, route, request, stream), request)

    async def _http(
        self, id: int, route: _Handler, request: Request, stream: Stream | None
    ) -> None:
        try:
            try:
                response = to_response(await self._invoke(route, request))
            except HttpError as e:
                response = e.to_response()
            except asyncio.CancelledError:
                request._cancelled.set()
                raise
            except Exception as e:
                log.exception("handler of %s %s failed", request.method, request.route)
                response = Response.json(
                    {"error": f"handler raised {type(e).__name__}: {e}"}, status=500
                )
            if response.source is not None and stream is None:
                log.error("route %s answered with a streamed body but does not stream", route)
                response = Response.json(
                    {
                        "error": f"route {request.route} answered with a streamed body but is "
                        "not declared with stream=True"
                    },
                    status=500,
                )
            await self.answer(id, response.to_wire())
            if response.source is not None and stream is not None:
                await self._send_body(request, response, stream)
        finally:
            self._close_stream(id)

    async def _send_body(self, request: Request, response: Response, stream: Stream) -> None:
        """Sends a streamed response body within plugd's credit, then its end; an exception
        in its source aborts it, so the client cannot take a cut-off body for a whole one."""
        body = BodyWriter(stream)
        try:
            await pump(
                body, response.source, response.sse_events, response.keep_alive, self._in_thread
            )
        except StreamClosed:
            return  # The client went away; the cancel stops this task.
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("streamed response of %s %s failed", request.method, request.route)
            if not stream.closed:
                message = f"the handler's stream failed: {type(e).__name__}: {e}"
                await stream.notify("stream.abort", {"id": stream.id, "message": message})
            return
        if not stream.closed:
            await stream.notify("stream.end", {"id": stream.id})

    async def _in_thread(self, fn: Any) -> Any:
        return await self.loop.run_in_executor(self.threads.pool, fn)

    async def _websocket(self, id: int, route: _Handler, ws: WebSocket) -> None:
        """Accepts the upgrade, runs the handler, and closes the socket when it returns
        (1000) or raises (1011)."""
        try:
            await self.answer(id, {"status": 101, "headers": [], "body": b""})
            code, reason = 1000, ""
            try:
                await route.fn(ws)
            except StreamClosed:
                pass
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("WebSocket handler of %s failed", ws.request.route)
                code, reason = 1011, f"handler raised {type(e).__name__}"
            if not ws.closed:
                await ws.close(code, reason)
        finally:
            self._close_stream(id)

    def _start_hook(self, id: int, params: dict[str, Any]) -> None:
        name = params["hook"]
        hook = self.plugin.hooks.get(name)
        if hook is None:
            message = f"this plugin does not handle hook {name!r}"
            self._spawn_untracked(self.refuse(id, protocol.NO_ROUTE, message))
            return
        depth = int(params.get("depth", 0))
        event = HookEvent(name, params.get("payload"), depth, self._host(depth))
        self._track(id, self._hook(id, hook, event))

    async def _hook(self, id: int, hook: _Handler, event: HookEvent) -> None:
        try:
            value = await self._invoke(hook, event)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("handler of hook %s failed", event.hook)
            message = f"hook handler raised {type(e).__name__}: {e}"
            await self.refuse(id, protocol.HANDLER_PANICKED, message)
            return
        if isinstance(value, Reject):
            await self.answer(id, {"value": None, "reject": value.reason})
        elif not await self._too_deep(id, value):
            await self.answer(id, {"value": value, "reject": None})

    def _start_service(self, id: int, params: dict[str, Any]) -> None:
        name = params["service"]
        service = self.plugin.services.get(name)
        if service is None:
            message = f"this plugin does not provide service {name!r}"
            self._spawn_untracked(self.refuse(id, protocol.NO_ROUTE, message))
            return
        depth = int(params.get("depth", 0))
        event = ServiceEvent(name, params.get("payload"), depth, self._host(depth))
        self._track(id, self._service(id, service, event))

    async def _service(self, id: int, service: _Handler, event: ServiceEvent) -> None:
        try:
            value = await self._invoke(service, event)
        except asyncio.CancelledError:
            raise
        except ServiceError as e:
            await self.refuse(id, protocol.INTERNAL, str(e))
            return
        except Exception as e:
            log.exception("handler of service %s failed", event.service)
            message = f"service handler raised {type(e).__name__}: {e}"
            await self.refuse(id, protocol.INTERNAL, message)
            return
        if not await self._too_deep(id, value):
            await self.answer(id, {"value": value})

    async def _too_deep(self, id: int, value: Any) -> bool:
        """Refuses this one call when its value nests deeper than plugd takes (it would cut
        the whole connection off for a frame too deep)."""
        if not protocol.depth_exceeds(value, protocol.MAX_PAYLOAD_DEPTH):
            return False
        message = f"the handler's value nests deeper than {protocol.MAX_PAYLOAD_DEPTH} levels"
        log.error("%s (request %d)", message, id)
        await self.refuse(id, protocol.INTERNAL, message)
        return True

    async def _take_settings(self, id: int, change: SettingsChanged) -> None:
        """Runs the plugin's settings callbacks; takes the settings when none raised."""
        for handler in self.plugin._on_settings:
            try:
                await self._invoke(handler, change)
            except Exception as e:
                reason = str(e) or type(e).__name__
                log.warning("refused new settings: %s", reason)
                await self.refuse(id, protocol.INVALID_PARAMS, reason)
                return
        self.caller.settings = change.settings
        await self.answer(id, {})

    def _host(self, depth: int) -> Host:
        return self.host if depth == 0 else Host(self.caller, depth)

    # Lifecycle ------------------------------------------------------------------------------

    async def handshake(self) -> None:
        hello = self.plugin.hello(self.env.token, self.env.epoch, self.env.max_frame)
        await self.send(protocol.encode_request(0, "handshake", hello, self.env.max_frame))
        welcome = await self.welcome
        log.debug("handshake accepted by %s", welcome.get("supervisor", "plugd"))

    async def _drain_and_stop(self, id: int, grace: float) -> None:
        tasks = [task for task, _ in self.in_flight.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                log.warning(
                    "shutting down with %d requests still in flight after %g s",
                    len(pending),
                    grace,
                )
        await self.unload()
        await self.answer(id, {})
        if not self.stopped.done():
            self.stopped.set_result(None)

    async def unload(self) -> None:
        if self._unloaded:
            return
        self._unloaded = True
        for handler in self.plugin._on_unload:
            try:
                await _call(handler)
            except Exception:
                log.exception("on_unload failed")

    async def close(self) -> None:
        """Ends whatever is still running: calls to plugd fail, handlers are cancelled."""
        if self.stopped.done() and not self.stopped.cancelled():
            self.stopped.exception()  # seen here, whoever else awaits it
        self.caller.close()
        tasks = [task for task, _ in self.in_flight.values()]
        for task, request in self.in_flight.values():
            if request is not None:
                request._cancelled.set()
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        await self.unload()
        if self.transport is not None:
            self.transport.close()
        self.threads.pool.shutdown(wait=False, cancel_futures=True)


_background: set[asyncio.Task[Any]] = set()

_STREAM_NOTES = frozenset(
    ("stream.data", "stream.end", "stream.abort", "stream.credit", "ws.message", "ws.close")
)


async def _call(handler: _Handler) -> None:
    """Runs a lifecycle callback; a sync one in a thread of its own, never queued behind the
    handlers' pool."""
    if handler.is_async:
        await handler.fn()
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def run() -> None:
        try:
            result = handler.fn()
        except BaseException as e:
            loop.call_soon_threadsafe(_settle, done, None, e)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)

    threading.Thread(target=run, name="plugd-lifecycle", daemon=True).start()
    result = await done
    if inspect.isawaitable(result):
        await result


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def serve(plugin: Plugin) -> None:
    """Runs ``plugin`` against the plugd named by the environment until it is asked to stop or
    the connection closes."""
    env = Env.from_process()
    loop = asyncio.get_running_loop()
    for handler in plugin._on_load:
        try:
            await _call(handler)
        except Exception as e:
            raise PluginError(f"on_load failed: {type(e).__name__}: {e}") from e
    conn = Connection(plugin, env, loop)
    try:
        await loop.create_unix_connection(lambda: conn, env.socket)
    except OSError as e:
        raise PluginError(f"cannot connect to plugd at {env.socket}: {e}") from None
    try:
        await conn.handshake()
        await conn.stopped
    finally:
        await conn.close()
        _busy_threads.append(conn.threads.busy)


#: Sync handlers still running when the last connection ended (read by `Plugin.run`).
_busy_threads: list[int] = []


def exit_now_if_threads_busy(code: int) -> None:
    """Python waits for every thread-pool thread at exit, so a sync handler still running would
    keep the process alive after plugd asked it to stop: exit at once instead, saying so."""
    busy = _busy_threads[-1] if _busy_threads else 0
    if busy:
        log.warning("%d sync handlers still running at exit; not waiting for them", busy)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
