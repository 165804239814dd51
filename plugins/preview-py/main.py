"""Example plugin `preview-py`: a `first`-mode hook that previews CSV files.

A host fires `file.preview` with {"mime": ..., "content": ...}; this plugin answers for
`text/csv` with an HTML table and passes anything else on, so the Markdown preview (the Rust
`preview` plugin) or another provider can answer. It also offers `csv.render` as a service.
"""

import csv
import html
import io

from plugd import HookEvent, Plugin, ServiceError, ServiceEvent

plugin = Plugin("preview-py", "0.1.0")


def render(text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return "<table></table>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@plugin.hook("file.preview", "first", priority=20)
def preview(event: HookEvent) -> object:
    payload = event.payload if isinstance(event.payload, dict) else {}
    content = payload.get("content")
    if payload.get("mime") != "text/csv" or not isinstance(content, str):
        return None  # not ours: let the next provider answer
    return {"html": render(content)}


@plugin.service("csv.render")
def render_service(event: ServiceEvent) -> str:
    if not isinstance(event.payload, str):
        raise ServiceError("csv.render takes a string")
    return render(event.payload)


if __name__ == "__main__":
    plugin.run()
