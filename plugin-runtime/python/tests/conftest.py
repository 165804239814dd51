"""Fixtures: a real plugd (the workspace's debug build) with plugins written into a temporary
directory, and helpers to reach it over HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
ADMIN = "admin-token-0123456789"
HOST = "host-token-0123456789"
READER = "reader-token-0123456789"
NOBODY = "nobody-token-0123456789"
DEADLINE = 20.0


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Polls ``check`` until it returns something truthy; fails naming ``what`` after
    ``timeout`` seconds."""
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
        except (OSError, http.client.HTTPException) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Answer:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:300]!r})"


class Plugd:
    """One plugd process over a plugins directory of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.plugins = root / "plugins"
        self.plugins.mkdir()
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "plugd.log"

    # Plugins --------------------------------------------------------------------------------

    def python_plugin(
        self, name: str, source: str, manifest: str = "", files: dict[str, str] | None = None
    ) -> Path:
        """A Python plugin: ``main.py`` run by this interpreter (which has the SDK)."""
        d = self.plugins / name
        d.mkdir()
        (d / "main.py").write_text(textwrap.dedent(source))
        for file, text in (files or {}).items():
            (d / file).write_text(textwrap.dedent(text))
        (d / "plugin.toml").write_text(
            f'name = "{name}"\nversion = "0.1.0"\ndescription = "test"\nauthor = "tests"\n'
            f'command = "{sys.executable}"\nargs = ["main.py"]\n' + textwrap.dedent(manifest)
        )
        return d

    def rust_plugin(self, name: str, env: dict[str, str] | None = None) -> Path:
        """The Rust test plugin ``plugd-testkit-echo`` under ``name``."""
        d = self.plugins / name
        d.mkdir()
        program = TARGET / "plugd-testkit-echo"
        assert program.exists(), f"{program} is missing: run `cargo build --workspace --bins`"
        lines = [f"{k} = {json.dumps(v)}" for k, v in (env or {}).items()]
        (d / "plugin.toml").write_text(
            f'name = "{name}"\nversion = "0.0.1"\ndescription = "test"\nauthor = "tests"\n'
            f'command = "{program}"\n[env]\n' + "\n".join(lines) + "\n"
        )
        return d

    # Process --------------------------------------------------------------------------------

    def start(self, *flags: str) -> Plugd:
        binary = TARGET / "plugd"
        assert binary.exists(), f"{binary} is missing: run `cargo build --workspace --bins`"
        config = self.root / "plugd.toml"
        config.write_text(
            textwrap.dedent(f"""
            [[admin_tokens]]
            name = "admin"
            token = "{ADMIN}"
            role = "admin"
            [[admin_tokens]]
            name = "hosts"
            token = "{HOST}"
            role = "host"
            [[admin_tokens]]
            name = "reader"
            token = "{READER}"
            role = "viewer"
            permissions = ["py.secret"]
            [[admin_tokens]]
            name = "nobody"
            token = "{NOBODY}"
            role = "viewer"
            """)
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGD_")}
        env["PLUGD_LOG"] = "info"
        self.proc = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--plugins-dir",
                str(self.plugins),
                "--data-dir",
                str(self.root / "data"),
                "--runtime-dir",
                str(self.root / "run"),
                "--cgroups",
                "false",
                *flags,
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        wait_for("plugd to be ready", lambda: self.request("GET", "/readyz").status == 200)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # HTTP -----------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return Answer(r.status, r.getheaders(), r.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return self.request("POST", path, body, **kw)

    def fire(self, hook: str, payload: Any) -> Any:
        r = self.post(f"/hooks/{hook}", json.dumps(payload), token=HOST)
        assert r.status == 200, r
        return r.json()

    def admin(self, method: str, path: str, body: Any = None) -> Answer:
        return self.request(method, f"/admin{path}", body, token=ADMIN)

    def plugin(self, name: str) -> Any:
        return self.admin("GET", f"/plugins/{name}").json()

    def wait_ready(self, name: str) -> Any:
        return wait_for(f"{name} to be ready", lambda: self.plugin(name).get("state") == "ready")

    def logs(self, name: str) -> str:
        lines = self.admin("GET", f"/plugins/{name}/logs?lines=1000").json()["lines"]
        return "\n".join(line["line"] for line in lines)

    def plugd_log(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def plugd(tmp_path: Path) -> Iterator[Plugd]:
    p = Plugd(tmp_path)
    try:
        yield p
    finally:
        p.stop()
