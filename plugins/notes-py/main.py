"""Example plugin `notes-py`: the notes example in Python, with the notes in plugd's key-value
store, so they survive restarts and are shared by every worker.

Routes (mounted at /plugins/notes-py):
- GET /notes: every note.
- POST /notes with {"title": ..., "body": ...}: creates one, answers 201 with it.
- GET, PUT and DELETE /notes/{id}.
"""

import json
import logging
from typing import Any

from plugd import HttpError, Plugin, Request

plugin = Plugin("notes-py", "0.1.0")
log = logging.getLogger("notes-py")


def note_input(req: Request) -> dict[str, str]:
    value = req.json()
    if not isinstance(value, dict) or not isinstance(value.get("title"), str):
        raise HttpError.bad_request('a note is {"title": string, "body": string}')
    unknown = set(value) - {"title", "body"}
    if unknown:
        raise HttpError.bad_request(f"unknown fields: {', '.join(sorted(unknown))}")
    body = value.get("body", "")
    if not isinstance(body, str):
        raise HttpError.bad_request("body must be a string")
    return {"title": value["title"], "body": body}


def note_id(req: Request) -> int:
    raw = req.params["id"]
    if not raw.isdigit():
        raise HttpError.bad_request(f"note id {raw!r} is not a number")
    return int(raw)


async def next_id(req: Request) -> int:
    # A counter shared by every instance: compare-and-set until our increment wins.
    while True:
        entry = await req.kv.get_entry("next-id")
        current = int(entry.value) if entry else 0
        ok, _ = await req.kv.compare_and_set(
            "next-id", entry.version if entry else None, str(current + 1)
        )
        if ok:
            return current + 1


@plugin.on_load
def loaded() -> None:
    log.info("notes-py plugin loaded")


@plugin.get("/notes")
async def list_notes(req: Request) -> list[Any]:
    return [json.loads(e.value) for e in await req.kv.list("note/")]


@plugin.post("/notes")
async def create(req: Request) -> Any:
    note = {"id": await next_id(req), **note_input(req)}
    await req.kv.set(f"note/{note['id']:012}", json.dumps(note))
    return (201, note)


@plugin.get("/notes/{id}")
async def show(req: Request) -> Any:
    id = note_id(req)
    value = await req.kv.get(f"note/{id:012}")
    if value is None:
        raise HttpError.not_found(f"no note {id}")
    return json.loads(value)


@plugin.put("/notes/{id}")
async def update(req: Request) -> Any:
    id = note_id(req)
    note = {"id": id, **note_input(req)}
    if await req.kv.get(f"note/{id:012}") is None:
        raise HttpError.not_found(f"no note {id}")
    await req.kv.set(f"note/{id:012}", json.dumps(note))
    return note


@plugin.delete("/notes/{id}")
async def delete(req: Request) -> None:
    id = note_id(req)
    if not await req.kv.delete(f"note/{id:012}"):
        raise HttpError.not_found(f"no note {id}")


if __name__ == "__main__":
    plugin.run()
