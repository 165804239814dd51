"""The example Python plugins in plugins/, as shipped, beside the Rust Markdown preview."""

from __future__ import annotations

import os
import shutil
import signal
import sys

from conftest import REPO, TARGET, Plugd, wait_for


def copy_example(plugd: Plugd, name: str) -> None:
    """The example's directory, with its command pointed at this interpreter (which has the
    SDK) instead of target/py-venv."""
    d = plugd.plugins / name
    shutil.copytree(REPO / "plugins" / name, d)
    manifest = (d / "plugin.toml").read_text()
    assert 'command = "../../target/py-venv/bin/python"' in manifest
    (d / "plugin.toml").write_text(
        manifest.replace("../../target/py-venv/bin/python", sys.executable)
    )


def test_notes_py_keeps_its_notes_in_the_store_across_a_crash(plugd: Plugd) -> None:
    copy_example(plugd, "notes-py")
    plugd.start()
    base = "/plugins/notes-py/notes"
    first = plugd.post(base, {"title": "first", "body": "one"})
    assert (first.status, first.json()) == (201, {"id": 1, "title": "first", "body": "one"})
    assert plugd.post(base, {"title": "second"}).json()["id"] == 2
    r = plugd.post(base, {"title": 5})
    assert (r.status, r.json()) == (400, {"error": 'a note is {"title": string, "body": string}'})
    r = plugd.post(base, {"title": "x", "colour": "red"})
    assert (r.status, r.json()["error"]) == (400, "unknown fields: colour")
    assert plugd.request("PUT", f"{base}/2", {"title": "2nd"}).json()["title"] == "2nd"
    assert plugd.get(f"{base}/abc").status == 400
    assert plugd.request("DELETE", f"{base}/1").status == 204
    assert plugd.get(f"{base}/1").status == 404

    pid = plugd.plugin("notes-py")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for("a new instance", lambda: plugd.plugin("notes-py").get("pid") not in (None, pid))
    plugd.wait_ready("notes-py")
    assert plugd.get(base).json() == [{"id": 2, "title": "2nd", "body": ""}]


def test_preview_py_answers_csv_and_leaves_markdown_to_the_rust_preview(plugd: Plugd) -> None:
    copy_example(plugd, "preview-py")
    rust = plugd.plugins / "preview"
    rust.mkdir()
    manifest = (REPO / "plugins" / "preview" / "plugin.toml").read_text()
    program = TARGET / "plugd-example-preview"
    assert program.exists(), f"{program} is missing: run `cargo build --workspace --bins`"
    (rust / "plugin.toml").write_text(
        manifest.replace("../../target/release/plugd-example-preview", str(program))
    )
    plugd.start()

    csv = plugd.fire("file.preview", {"mime": "text/csv", "content": "a,b\n1,<2>"})
    assert csv["plugin"] == "preview-py"
    assert csv["value"]["html"] == (
        "<table><thead><tr><th>a</th><th>b</th></tr></thead>"
        "<tbody><tr><td>1</td><td>&lt;2&gt;</td></tr></tbody></table>"
    )
    md = plugd.fire("file.preview", {"mime": "text/markdown", "content": "# hi"})
    assert (md["plugin"], md["value"]) == ("preview", {"html": "<h1>hi</h1>\n"})
    assert plugd.fire("file.preview", {"mime": "image/png"})["value"] is None
