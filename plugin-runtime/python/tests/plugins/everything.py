"""A Python plugin that uses every feature of the SDK, for the integration tests."""

import asyncio
import logging
import os
import threading
from typing import Any

from plugd import (
    HookEvent,
    HttpError,
    Plugin,
    Reject,
    Request,
    Response,
    ServiceError,
    ServiceEvent,
)

NAME = os.environ["PLUGD_PLUGIN_NAME"]
VERSION = "1.0.0"
log = logging.getLogger(NAME)
plugin = Plugin(NAME, VERSION)
plugin.permission("py.secret", "read the secret")

counters = {"started": 0, "cancelled": 0, "finished": 0}
barrier = threading.Barrier(4, timeout=10)
arrived: list[asyncio.Event] = []


@plugin.on_load
async def loaded() -> None:
    log.info("loaded %s %s", NAME, VERSION)


@plugin.on_unload
def unloading() -> None:
    log.info("unloading after %d finished requests", counters["finished"])


@plugin.get("/echo/{id}")
@plugin.post("/echo/{id}")
async def echo(req: Request) -> dict[str, Any]:
    return {
        "method": req.method,
        "path": req.path,
        "route": req.route,
        "id": req.params["id"],
        "q": req.query("q"),
        "query": req.query_string,
        "headers": req.headers,
        "text": req.text(),
        "request_id": req.request_id,
        "time_left": req.time_left(),
    }


@plugin.post("/json")
async def json_body(req: Request) -> Any:
    return (201, {"got": req.json()})


@plugin.get("/files/{*rest}")
def files(req: Request) -> str:
    return f"file {req.params['rest']}"


@plugin.get("/answer/{kind}")
async def answer(req: Request) -> Any:
    kind = req.params["kind"]
    if kind == "bytes":
        return b"\x00\x01\xff"
    if kind == "list":
        return [1, "two", None]
    if kind == "none":
        return None
    if kind == "response":
        return Response(202, [("x-custom", "yes")], b"custom")
    if kind == "http-error":
        raise HttpError(418, "I am a teapot")
    if kind == "raise":
        raise RuntimeError("this handler fails on purpose")
    if kind == "bad-type":
        return {1, 2}
    return "text"


@plugin.get("/pid")
async def pid(req: Request) -> dict[str, int]:
    return {"pid": os.getpid()}


@plugin.get("/version")
async def version(req: Request) -> str:
    return VERSION


@plugin.get("/wait/{n}")
async def wait(req: Request) -> dict[str, int]:
    # Answers only once n requests are waiting here at once: proof they run concurrently.
    n = int(req.params["n"])
    me = asyncio.Event()
    arrived.append(me)
    if len(arrived) >= n:
        for e in arrived:
            e.set()
        arrived.clear()
    await asyncio.wait_for(me.wait(), 10)
    return {"n": n}


@plugin.get("/barrier")
def sync_barrier(req: Request) -> dict[str, str]:
    # Four sync handlers must be inside this at once (in four threads) for any to pass.
    barrier.wait()
    return {"thread": threading.current_thread().name}


@plugin.get("/hang")
async def hang(req: Request) -> str:
    counters["started"] += 1
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        counters["cancelled"] += 1
        raise
    return "never"


@plugin.get("/hang-sync")
def hang_sync(req: Request) -> str:
    counters["started"] += 1
    while not req.cancelled():
        threading.Event().wait(0.01)
    counters["cancelled"] += 1
    return "cancelled"


@plugin.get("/slow")
async def slow(req: Request) -> str:
    counters["started"] += 1
    await asyncio.sleep(float(req.query("s") or "0.5"))
    counters["finished"] += 1
    return "slow done"


@plugin.get("/counters")
async def get_counters(req: Request) -> dict[str, int]:
    return counters


@plugin.get("/secret", permission="py.secret")
async def secret(req: Request) -> dict[str, Any]:
    return {"caller": req.caller, "permissions": req.caller_permissions}


@plugin.get("/log")
async def write_log(req: Request) -> str:
    log.warning("a line from the handler: %s", req.query("text"))
    print("printed:", req.query("text"))
    return "logged"


# Key-value store.
@plugin.route("PUT", "/kv/{key}")
async def kv_set(req: Request) -> dict[str, int]:
    ttl = req.query("ttl")
    return {"version": await req.kv.set(req.params["key"], req.body, float(ttl) if ttl else None)}


@plugin.get("/kv/{key}")
async def kv_get(req: Request) -> Any:
    entry = await req.kv.get_entry(req.params["key"])
    if entry is None:
        raise HttpError.not_found(f"no key {req.params['key']}")
    return {"value": entry.value.decode(), "version": entry.version}


@plugin.delete("/kv/{key}")
async def kv_delete(req: Request) -> dict[str, bool]:
    return {"deleted": await req.kv.delete(req.params["key"])}


@plugin.get("/kvlist")
async def kv_list(req: Request) -> list[list[Any]]:
    limit = req.query("limit")
    entries = await req.kv.list(req.query("prefix") or "", int(limit) if limit else None)
    return [[e.key, e.value.decode(), e.version] for e in entries]


@plugin.post("/kvcas/{key}")
async def kv_cas(req: Request) -> dict[str, Any]:
    expected = req.query("expected")
    ok, version = await req.kv.compare_and_set(
        req.params["key"], int(expected) if expected else None, req.body
    )
    return {"ok": ok, "version": version}


@plugin.get("/kv-sync/{key}")
def kv_sync(req: Request) -> Any:
    # A sync handler reaches plugd through Host.blocking.
    value = req.host.blocking(req.kv.get(req.params["key"]))
    return {"value": None if value is None else value.decode()}


# Services and hooks, both directions.
@plugin.service("py.upper")
async def upper(event: ServiceEvent) -> str:
    if not isinstance(event.payload, str):
        raise ServiceError("py.upper takes a string")
    return event.payload.upper()


@plugin.service("py.depth")
def depth(event: ServiceEvent) -> int:
    return event.depth


@plugin.post("/call/{service}")
async def call(req: Request) -> Any:
    try:
        return {"value": await req.host.call_service(req.params["service"], req.json())}
    except Exception as e:
        return (502, {"error": str(e)})


@plugin.post("/fire/{hook}")
async def fire(req: Request) -> Any:
    return await req.host.fire_hook(req.params["hook"], req.json())


@plugin.hook("t.collect", "collect")
async def collect(event: HookEvent) -> Any:
    return {"python": event.payload}


@plugin.hook("t.filter", "filter", priority=20)
def filter_(event: HookEvent) -> Any:
    return f"{event.payload}-py"


@plugin.hook("t.first", "first", priority=5)
async def first(event: HookEvent) -> Any:
    if event.payload.get("mime") != "text/csv":
        return None
    return {"python": "csv"}


@plugin.hook("t.veto", "veto", priority=1)
async def veto(event: HookEvent) -> Any:
    if event.payload.get("title") == "":
        return Reject("a document needs a title")
    return None


@plugin.hook("t.closed", "veto", priority=1, fail_closed=True)
async def closed(event: HookEvent) -> Any:
    raise RuntimeError("this veto handler fails on purpose")


if __name__ == "__main__":
    plugin.run()
