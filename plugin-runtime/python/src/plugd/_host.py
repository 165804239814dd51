"""Calls from the plugin to plugd: other plugins' services, hooks, and the key-value store."""

from __future__ import annotations

import asyncio
import builtins
import itertools
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, Union, overload

from . import protocol

#: How long a call to plugd may take before it fails with :class:`HostError`.
CALL_TIMEOUT = 10.0

T = TypeVar("T")
Value = Union[bytes, bytearray, str]


class HostError(Exception):
    """A call to plugd failed: refused (``code`` and ``message`` from plugd), timed out, or the
    connection is gone (``code`` is ``None`` then)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class KvEntry:
    """One key of the store: its value and version (every write makes a new version)."""

    key: str
    value: bytes
    version: int


class Caller:
    """Sends requests to plugd and matches their answers by id."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]], max_frame: int) -> None:
        self._send = send
        self.max_frame = max_frame
        self._ids = itertools.count(1)  # id 0 was the handshake
        self._pending: dict[int, asyncio.Future[protocol.Response]] = {}
        self._closed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        #: The plugin's settings as plugd last delivered them (replaced whole, never mutated).
        self.settings: dict[str, Any] = {}

    def answer(self, response: protocol.Response) -> bool:
        """Delivers an answer; false for an id nobody waits for."""
        waiter = self._pending.pop(response.id, None)
        if waiter is None or waiter.done():
            return False
        waiter.set_result(response)
        return True

    def close(self) -> None:
        """Fails every waiting call: the connection is gone."""
        self._closed = True
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            if not waiter.done():
                waiter.set_exception(HostError("the connection to plugd is closed"))

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        if self._closed:
            raise HostError("the connection to plugd is closed")
        id = next(self._ids)
        try:
            frame = protocol.encode_request(id, method, params, self.max_frame)
        except (protocol.ProtocolError, TypeError, ValueError) as e:
            raise HostError(f"cannot send {method}: {e}") from None
        waiter: asyncio.Future[protocol.Response] = asyncio.get_running_loop().create_future()
        self._pending[id] = waiter
        try:
            await self._send(frame)
            response = await asyncio.wait_for(waiter, CALL_TIMEOUT)
        except asyncio.TimeoutError:
            raise HostError(f"plugd did not answer {method} within {CALL_TIMEOUT:g} s") from None
        finally:
            self._pending.pop(id, None)
        if response.error is not None:
            raise HostError(f"plugd refused {method}: {response.error}", response.error.code)
        return response.result


def _bytes(value: Value) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _ttl_ms(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    if ttl <= 0:
        raise ValueError(f"a ttl must be positive, not {ttl}")
    return max(1, round(ttl * 1000))


class Kv:
    """The plugin's own key-value store, kept by plugd in its database and shared by every
    instance and worker of this plugin. Keys are strings of 1 to 512 bytes, values bytes (a
    ``str`` is stored as UTF-8). Every method is a coroutine."""

    def __init__(self, caller: Caller) -> None:
        self._caller = caller

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None``."""
        entry = await self.get_entry(key)
        return None if entry is None else entry.value

    async def get_entry(self, key: str) -> KvEntry | None:
        """The value of ``key`` with its version (for :meth:`compare_and_set`), or ``None``."""
        r = await self._caller.call("kv.get", {"key": key})
        if r.get("value") is None or r.get("version") is None:
            return None
        return KvEntry(key, r["value"], r["version"])

    async def set(self, key: str, value: Value, ttl: float | None = None) -> int:
        """Sets ``key`` (until ``ttl`` seconds have passed, if given); answers its version."""
        params = {"key": key, "value": _bytes(value), "ttl_ms": _ttl_ms(ttl)}
        r = await self._caller.call("kv.set", params)
        return int(r["version"])

    async def delete(self, key: str) -> bool:
        """Deletes ``key``; true if it was set."""
        r = await self._caller.call("kv.delete", {"key": key})
        return bool(r["deleted"])

    async def list(self, prefix: str = "", limit: int | None = None) -> list[KvEntry]:
        """Every key starting with ``prefix`` in key order (at most ``limit``), fetched page
        by page."""
        entries: builtins.list[KvEntry] = []
        after: str | None = None
        while limit is None or len(entries) < limit:
            want = None if limit is None else limit - len(entries)
            page, more = await self.list_page(prefix, after=after, limit=want)
            entries.extend(page)
            if not more or not page:
                break
            after = page[-1].key
        return entries

    async def list_page(
        self, prefix: str = "", after: str | None = None, limit: int | None = None
    ) -> tuple[builtins.list[KvEntry], bool]:
        """One page of the keys starting with ``prefix`` that sort after ``after``, and
        whether more follow."""
        params: dict[str, Any] = {"prefix": prefix, "limit": limit}
        if after is not None:
            params["after"] = after
        r = await self._caller.call("kv.list", params)
        entries = [KvEntry(e["key"], e["value"], e["version"]) for e in r.get("entries", ())]
        return entries, bool(r.get("more", False))

    async def compare_and_set(
        self, key: str, expected: int | None, value: Value, ttl: float | None = None
    ) -> tuple[bool, int | None]:
        """Writes ``value`` only if ``key`` is at version ``expected`` (``None``: only if it is
        absent). Answers ``(written, version now)``."""
        params = {"key": key, "expected": expected, "value": _bytes(value), "ttl_ms": _ttl_ms(ttl)}
        r = await self._caller.call("kv.cas", params)
        return bool(r["ok"]), r.get("version")


class Host:
    """plugd, seen from a handler. Calls carry the depth of the call being handled, so loops
    between plugins end at plugd's limit."""

    def __init__(self, caller: Caller, depth: int = 0) -> None:
        self._caller = caller
        self.depth = depth
        self.kv = Kv(caller)

    @overload
    def settings(self) -> dict[str, Any]: ...

    @overload
    def settings(self, into: Callable[..., T]) -> T: ...

    def settings(self, into: Callable[..., Any] | None = None) -> Any:
        """The plugin's settings as they are now: a dict by name (durations in milliseconds,
        sizes in bytes), or ``into(**settings)`` — a dataclass, a ``TypedDict``, any class
        taking the settings as keyword arguments. A change arrives without a restart (see
        :meth:`Plugin.on_settings_changed`)."""
        values = dict(self._caller.settings)
        return values if into is None else into(**values)

    async def call_service(self, name: str, payload: Any = None) -> Any:
        """Calls service ``name`` of another plugin; answers its result."""
        params = {"service": name, "payload": payload, "depth": self.depth}
        r = await self._caller.call("service.call", params)
        return r.get("value")

    async def fire_hook(self, name: str, payload: Any = None) -> Any:
        """Fires hook ``name`` at every plugin that handles it; answers the combined result,
        as ``POST /hooks/{name}`` would."""
        params = {"hook": name, "payload": payload, "depth": self.depth}
        return await self._caller.call("hook.fire", params)

    def blocking(self, awaitable: Awaitable[T]) -> T:
        """Runs a call on the plugin's event loop from a sync handler's thread and waits for
        it: ``req.host.blocking(req.kv.get("k"))``. Never call it on the event loop itself."""
        loop = self._caller.loop
        if loop is None:
            raise HostError("the plugin is not connected")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("Host.blocking() called on the event loop; use await instead")

        async def run() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(run(), loop).result()
