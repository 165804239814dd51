"""The plugin builder: routes, hooks, services, permissions and lifecycle callbacks."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, TypeVar

from ._host import Host

HookMode = Literal["collect", "filter", "first", "veto"]
_MODES = ("collect", "filter", "first", "veto")

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("plugd")


class Reject:
    """A ``veto`` hook handler's refusal: ``return Reject("a document needs a title")``."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Reject({self.reason!r})"


class ServiceError(Exception):
    """Raise it from a service handler to fail the call with this message."""


@dataclass
class HookEvent:
    """One call of a hook handler."""

    #: The hook's name.
    hook: str
    #: The payload: the host's value, or for ``filter`` hooks the previous handler's output.
    payload: Any
    #: How many hook or service calls led here.
    depth: int
    #: plugd, for calls made while handling this hook.
    host: Host


@dataclass
class ServiceEvent:
    """One call of a service this plugin provides."""

    #: The service's name.
    service: str
    #: The caller's argument.
    payload: Any
    #: How many hook or service calls led here.
    depth: int
    #: plugd, for calls made while serving this call.
    host: Host


@dataclass(frozen=True)
class SettingsChanged:
    """New settings offered to the plugin: every effective value, and the changed names."""

    settings: dict[str, Any]
    changed: list[str]


@dataclass
class _Handler:
    fn: Callable[..., Any]
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.fn)


def _unset(*_: Any) -> Any:
    raise RuntimeError("a route without a handler")


@dataclass
class _Route(_Handler):
    method: str = ""
    path: str = ""
    permission: str | None = None
    stream: bool = False
    websocket: bool = False
    max_body: int | None = None

    def decl(self) -> dict[str, Any]:
        """The route as the handshake declares it (1.2 fields only when set)."""
        decl: dict[str, Any] = {"method": self.method, "path": self.path}
        decl["permission"] = self.permission
        if self.stream:
            decl["stream"] = True
        if self.websocket:
            decl["websocket"] = True
        if self.max_body is not None:
            decl["max_body"] = self.max_body
        return decl


@dataclass
class _Hook(_Handler):
    name: str = ""
    mode: str = "collect"
    priority: int = 0
    fail_closed: bool = False


class Plugin:
    """A plugin: declare its routes, hooks and services with the decorators, then
    :meth:`run` it. ``name`` must be the ``name`` in its ``plugin.toml``.

    Handlers may be ``async def`` (run on the event loop, many at once) or plain ``def`` (run in
    a thread pool, so they never block the loop)."""

    def __init__(self, name: str, version: str = "0.0.0", *, max_workers: int | None = None):
        self.name = name
        self.version = version
        #: Threads for sync handlers (default: Python's default for a thread pool).
        self.max_workers = max_workers
        self.routes: dict[tuple[str, str], _Route] = {}
        self.hooks: dict[str, _Hook] = {}
        self.services: dict[str, _Handler] = {}
        self.permissions: dict[str, str] = {}
        self._on_load: list[_Handler] = []
        self._on_unload: list[_Handler] = []
        self._on_settings: list[_Handler] = []

    # Routes ---------------------------------------------------------------------------------

    def route(
        self,
        method: str,
        path: str,
        *,
        permission: str | None = None,
        stream: bool = False,
        max_body: int | None = None,
    ) -> Callable[[F], F]:
        """Declares a route: ``method`` such as ``GET``; ``path`` such as ``/items/{id}``,
        where ``{id}`` captures one segment (``req.params["id"]``) and ``{*rest}`` the rest of
        the path. With ``permission``, plugd answers 401/403 to callers whose token lacks it
        before the request reaches the plugin. With ``stream``, the request body arrives as it
        is sent (``req.body_stream()``), may be of any size, and the handler may answer with
        :meth:`Response.stream` or :meth:`Response.sse`. ``max_body`` bounds this route's
        request body in bytes."""
        return self._register(
            _Route(_unset, method.upper(), path, permission, stream, False, max_body)
        )

    def websocket(self, path: str, *, permission: str | None = None) -> Callable[[F], F]:
        """Declares a ``GET`` route that takes WebSocket upgrades: plugd accepts the client's
        upgrade and runs ``async def handler(ws: WebSocket)`` for it."""

        def register(fn: F) -> F:
            if not inspect.iscoroutinefunction(fn):
                raise ValueError(f"WebSocket route {path}: the handler must be `async def`")
            return self._register(_Route(_unset, "GET", path, permission, False, True))(fn)

        return register

    def _register(self, route: _Route) -> Callable[[F], F]:
        method, path = route.method, route.path
        if not path.startswith("/"):
            raise ValueError(f"invalid route {method} {path}: a path must start with '/'")
        if (method, path) in self.routes:
            raise ValueError(f"invalid route {method} {path}: declared twice")
        if route.max_body is not None and route.max_body < 0:
            raise ValueError(f"invalid route {method} {path}: max_body must not be negative")

        def register(fn: F) -> F:
            route.fn = fn
            route.is_async = inspect.iscoroutinefunction(fn)
            self.routes[(method, path)] = route
            return fn

        return register

    def get(
        self, path: str, *, permission: str | None = None, stream: bool = False
    ) -> Callable[[F], F]:
        """Declares a ``GET`` route."""
        return self.route("GET", path, permission=permission, stream=stream)

    def post(
        self,
        path: str,
        *,
        permission: str | None = None,
        stream: bool = False,
        max_body: int | None = None,
    ) -> Callable[[F], F]:
        """Declares a ``POST`` route."""
        return self.route("POST", path, permission=permission, stream=stream, max_body=max_body)

    def put(
        self,
        path: str,
        *,
        permission: str | None = None,
        stream: bool = False,
        max_body: int | None = None,
    ) -> Callable[[F], F]:
        """Declares a ``PUT`` route."""
        return self.route("PUT", path, permission=permission, stream=stream, max_body=max_body)

    def patch(
        self,
        path: str,
        *,
        permission: str | None = None,
        stream: bool = False,
        max_body: int | None = None,
    ) -> Callable[[F], F]:
        """Declares a ``PATCH`` route."""
        return self.route("PATCH", path, permission=permission, stream=stream, max_body=max_body)

    def delete(self, path: str, *, permission: str | None = None) -> Callable[[F], F]:
        """Declares a ``DELETE`` route."""
        return self.route("DELETE", path, permission=permission)

    # Hooks, services, permissions -----------------------------------------------------------

    def hook(
        self,
        name: str,
        mode: HookMode = "collect",
        priority: int = 0,
        *,
        fail_closed: bool = False,
    ) -> Callable[[F], F]:
        """Handles hook ``name`` in ``mode``; lower ``priority`` runs first. The handler takes
        a :class:`HookEvent` and returns a value (``collect``: this plugin's result;
        ``filter``: the transformed payload; ``first``: the answer), ``None`` to pass (filter:
        payload unchanged; first: let the next handler answer; veto: allow) or
        :class:`Reject` (veto). ``fail_closed`` makes a failing ``veto`` handler reject."""
        if mode not in _MODES:
            raise ValueError(f"hook {name}: mode {mode!r} is not one of {', '.join(_MODES)}")
        if name in self.hooks:
            raise ValueError(f"hook {name}: declared twice")

        def register(fn: F) -> F:
            self.hooks[name] = _Hook(fn, name, mode, priority, fail_closed)
            return fn

        return register

    def service(self, name: str) -> Callable[[F], F]:
        """Provides service ``name`` (such as ``markdown.render``) to other plugins. The
        handler takes a :class:`ServiceEvent` and returns the result; raising fails the call
        (:class:`ServiceError` for a message of your own)."""
        if name in self.services:
            raise ValueError(f"service {name}: declared twice")

        def register(fn: F) -> F:
            self.services[name] = _Handler(fn)
            return fn

        return register

    def permission(self, key: str, description: str) -> None:
        """Defines a permission (such as ``notes.write``) that tokens can be granted and
        routes can require."""
        self.permissions[key] = description

    # Lifecycle ------------------------------------------------------------------------------

    def on_load(self, fn: F) -> F:
        """Runs ``fn()`` before the handshake, so before the first request; an exception
        stops the plugin (during a reload, the running version keeps serving)."""
        self._on_load.append(_Handler(fn))
        return fn

    def on_settings_changed(self, fn: F) -> F:
        """Runs ``fn(change)`` with a :class:`SettingsChanged` when an admin changes the
        plugin's settings, before handlers see them (``async def`` or plain ``def``). Returning
        takes them; raising refuses them: the plugin keeps its settings, and the admin is told
        the exception's message. Without such a callback every change is taken."""
        self._on_settings.append(_Handler(fn))
        return fn

    def on_unload(self, fn: F) -> F:
        """Runs ``fn()`` once when the plugin stops, after the requests in flight finished."""
        self._on_unload.append(_Handler(fn))
        return fn

    # Running --------------------------------------------------------------------------------

    def hello(self, token: str, epoch: int, max_frame: int) -> dict[str, Any]:
        """The handshake's ``Hello``: what this plugin declares."""
        from . import protocol

        hooks = []
        for h in self.hooks.values():
            decl: dict[str, Any] = {"name": h.name, "mode": h.mode, "priority": h.priority}
            if h.fail_closed:
                decl["fail_closed"] = True
            hooks.append(decl)
        return {
            "protocol": {"major": protocol.PROTOCOL_MAJOR, "minor": protocol.PROTOCOL_MINOR},
            "name": self.name,
            "version": self.version,
            "epoch": epoch,
            "token": token,
            "max_frame": max_frame,
            "routes": [r.decl() for r in self.routes.values()],
            "hooks": hooks,
            "services": list(self.services),
            "permissions": [{"key": k, "description": d} for k, d in self.permissions.items()],
        }

    async def serve(self) -> None:
        """Connects to plugd (named by the environment it set), handshakes and serves until
        plugd asks the plugin to stop or closes the connection. Raises
        :class:`~plugd.PluginError` on a failure."""
        from ._connection import serve

        await serve(self)

    def run(self) -> None:
        """Sets up logging to stderr and runs :meth:`serve` until the plugin is asked to stop;
        exits the process with status 1 (after logging why) if it fails."""
        from ._connection import PluginError, exit_now_if_threads_busy

        init_logging()
        try:
            asyncio.run(self.serve())
        except PluginError as e:
            log.error("plugin stopped: %s", e)
            exit_now_if_threads_busy(1)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            pass
        exit_now_if_threads_busy(0)


def init_logging() -> None:
    """Sends ``logging`` to stderr as plain lines (plugd adds the time and the plugin's name),
    at the level of ``PLUGD_LOG_LEVEL`` (``INFO`` by default), unless logging is already
    configured; makes ``print`` line-buffered so its lines reach plugd's log at once."""
    if not logging.getLogger().handlers:
        level = os.environ.get("PLUGD_LOG_LEVEL", "INFO").upper()
        logging.basicConfig(
            stream=sys.stderr,
            level=level if isinstance(logging.getLevelName(level), int) else "INFO",
            format="%(levelname)s %(name)s: %(message)s",
        )
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True)
