"""Python plugins run by the real plugd: every feature of the SDK, end to end."""

from __future__ import annotations

import functools
import os
import signal
import socket
import threading
from pathlib import Path

import pytest
from conftest import NOBODY, READER, Plugd, wait_for

PLUGINS = Path(__file__).parent / "plugins"


def counter(plugd: Plugd, name: str) -> int:
    value: int = plugd.get("/plugins/py/counters").json()[name]
    return value


def counted(plugd: Plugd, name: str, n: int) -> bool:
    return counter(plugd, name) == n


def install(plugd: Plugd, name: str, script: str = "everything.py", manifest: str = "") -> Path:
    return plugd.python_plugin(name, (PLUGINS / script).read_text(), manifest)


@pytest.fixture
def py(plugd: Plugd) -> Plugd:
    install(plugd, "py")
    return plugd.start()


def test_routes_parameters_bodies_and_answers(py: Plugd) -> None:
    r = py.request(
        "POST",
        "/plugins/py/echo/42?q=a%20b&x=1",
        body="héllo",
        headers={"X-Thing": "1", "X-Request-Id": "client-id-7"},
    )
    assert r.status == 200, r
    got = r.json()
    assert got["method"] == "POST"
    assert (got["path"], got["route"], got["id"]) == ("/echo/42", "/echo/{id}", "42")
    assert (got["q"], got["query"]) == ("a b", "q=a%20b&x=1")
    assert got["text"] == "héllo"
    assert ["x-thing", "1"] in got["headers"]
    assert got["request_id"] == "client-id-7"
    assert 0 < got["time_left"] <= 30

    r = py.post("/plugins/py/json", {"a": [1, 2]})
    assert (r.status, r.json()) == (201, {"got": {"a": [1, 2]}})
    r = py.request("POST", "/plugins/py/json", body="{not json")
    assert r.status == 400 and "request body is not valid JSON" in r.json()["error"], r
    assert py.get("/plugins/py/files/a/b/c.txt").text == "file a/b/c.txt"

    r = py.get("/plugins/py/answer/text")
    assert (r.status, r.header("content-type"), r.text) == (
        200,
        "text/plain; charset=utf-8",
        "text",
    )
    r = py.get("/plugins/py/answer/bytes")
    assert (r.header("content-type"), r.body) == ("application/octet-stream", b"\x00\x01\xff")
    assert py.get("/plugins/py/answer/list").json() == [1, "two", None]
    assert py.get("/plugins/py/answer/none").status == 204
    r = py.get("/plugins/py/answer/response")
    assert (r.status, r.header("x-custom"), r.body) == (202, "yes", b"custom")
    r = py.get("/plugins/py/answer/http-error")
    assert (r.status, r.json()) == (418, {"error": "I am a teapot"})


def test_a_failing_handler_answers_500_and_the_plugin_keeps_serving(py: Plugd) -> None:
    pid = py.get("/plugins/py/pid").json()["pid"]
    r = py.get("/plugins/py/answer/raise")
    assert r.status == 500
    assert r.json()["error"] == "handler raised RuntimeError: this handler fails on purpose"
    r = py.get("/plugins/py/answer/bad-type")
    assert r.status == 500 and "a handler returned set" in r.json()["error"], r
    assert py.get("/plugins/py/pid").json()["pid"] == pid
    # The traceback is in plugd's log under the plugin's name.
    wait_for("the traceback in the plugin's log", lambda: "fails on purpose" in py.logs("py"))
    assert "Traceback" in py.logs("py")


def test_hop_by_hop_headers_and_those_named_in_connection_are_not_forwarded(py: Plugd) -> None:
    r = py.request(
        "GET",
        "/plugins/py/echo/1",
        headers={"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "X-Kept": "1"},
    )
    names = [k for k, _ in r.json()["headers"]]
    assert "x-kept" in names
    assert "x-hop" not in names and "connection" not in names, names


def test_many_requests_in_flight_on_one_loop_and_sync_handlers_in_threads(py: Plugd) -> None:
    results: list[int] = []

    def get(path: str) -> None:
        results.append(py.get(path).status)

    # Eight async requests that each wait until all eight have arrived.
    threads = [threading.Thread(target=get, args=("/plugins/py/wait/8",)) for _ in range(8)]
    # Four sync handlers that each wait for the other three, in threads of their own.
    threads += [threading.Thread(target=get, args=("/plugins/py/barrier",)) for _ in range(4)]
    for t in threads:
        t.start()
    # Meanwhile the event loop is free.
    assert py.get("/plugins/py/version").text == "1.0.0"
    for t in threads:
        t.join(30)
    assert results == [200] * 12


def test_hooks_in_all_four_modes_across_a_rust_and_a_python_plugin(plugd: Plugd) -> None:
    install(plugd, "py")
    hooks = (
        "t.collect:collect:0:echo;t.filter:filter:10:tag--rs;"
        "t.first:first:10:answer-rust;t.veto:veto:5:pass"
    )
    plugd.rust_plugin("rs", {"ECHO_HOOKS": hooks})
    plugd.start()

    collect = plugd.fire("t.collect", {"n": 1})
    by_plugin = {r["plugin"]: r for r in collect["results"]}
    assert by_plugin["py"]["value"] == {"python": {"n": 1}}
    assert by_plugin["rs"]["value"] == {"n": 1}
    # Rust (priority 10) runs before Python (20).
    filtered = plugd.fire("t.filter", "x")
    assert filtered["value"] == "x-rs-py", filtered
    # Python (priority 5) answers for CSV and passes the rest on to Rust.
    assert plugd.fire("t.first", {"mime": "text/csv"})["value"] == {"python": "csv"}
    rust = plugd.fire("t.first", {"mime": "text/plain"})
    assert (rust["value"], rust["plugin"]) == ("rust", "rs"), rust
    assert plugd.fire("t.veto", {"title": "t"})["allowed"] is True
    vetoed = plugd.fire("t.veto", {"title": ""})
    assert vetoed["allowed"] is False
    assert vetoed["rejected_by"] == {"plugin": "py", "reason": "a document needs a title"}
    # A fail-closed veto handler that raises rejects.
    assert plugd.fire("t.closed", {})["allowed"] is False

    # A Python plugin fires a hook; the Rust one answers.
    r = plugd.post("/plugins/py/fire/t.first", {"mime": "text/plain"})
    assert (r.json()["value"], r.json()["plugin"]) == ("rust", "rs"), r


def test_services_from_rust_to_python_and_back(plugd: Plugd) -> None:
    install(plugd, "py")
    plugd.rust_plugin("rs", {"ECHO_SERVICES": "rs.upper:upper"})
    plugd.start()
    # Rust calls Python.
    r = plugd.post("/plugins/rs/call/py.upper", '"shout"')
    assert (r.status, r.json()) == (200, "SHOUT"), r
    r = plugd.post("/plugins/rs/call/py.upper", 42)
    assert "py.upper takes a string" in r.text, r
    # Python calls Rust, and gets a clear error for a service nobody provides.
    r = plugd.post("/plugins/py/call/rs.upper", '"quiet"')
    assert r.json() == {"value": "QUIET"}, r
    r = plugd.post("/plugins/py/call/no.such", 1)
    assert r.status == 502 and "no running plugin provides service" in r.json()["error"], r
    # The depth of a call made while handling a request is carried on: 0 + 1.
    assert plugd.post("/plugins/py/call/py.depth", "null").json() == {"value": 1}


def test_permissions_are_declared_required_and_the_caller_is_read(py: Plugd) -> None:
    perms = py.admin("GET", "/permissions").json()["permissions"]
    assert {"key": "py.secret", "description": "read the secret", "plugin": "py"} in perms, perms
    assert py.get("/plugins/py/secret").status == 401
    r = py.get("/plugins/py/secret", token=NOBODY)
    assert r.status == 403 and "py.secret" in r.text, r
    r = py.get("/plugins/py/secret", token=READER)
    assert r.json() == {"caller": "reader", "permissions": ["py.secret"]}, r


def test_the_key_value_store(py: Plugd) -> None:
    base = "/plugins/py"
    assert py.request("PUT", f"{base}/kv/a", body="one").json() == {"version": 1}
    assert py.request("PUT", f"{base}/kv/a", body="two").json() == {"version": 2}
    assert py.get(f"{base}/kv/a").json() == {"value": "two", "version": 2}
    assert py.get(f"{base}/kv-sync/a").json() == {"value": "two"}
    assert py.get(f"{base}/kv/nope").status == 404
    py.request("PUT", f"{base}/kv/b", body="bee")
    py.request("PUT", f"{base}/kv/c", body="sea")
    listed = py.get(f"{base}/kvlist?prefix=").json()
    assert [e[0] for e in listed] == ["a", "b", "c"]
    assert py.get(f"{base}/kvlist?prefix=b").json() == [["b", "bee", 1]]
    assert len(py.get(f"{base}/kvlist?limit=2").json()) == 2
    # Compare-and-set: only at the expected version, or only if absent.
    assert py.post(f"{base}/kvcas/a?expected=1", "x").json() == {"ok": False, "version": 2}
    assert py.post(f"{base}/kvcas/a?expected=2", "x").json() == {"ok": True, "version": 3}
    assert py.post(f"{base}/kvcas/new", "n").json() == {"ok": True, "version": 1}
    assert py.post(f"{base}/kvcas/new", "n").json() == {"ok": False, "version": 1}
    assert py.request("DELETE", f"{base}/kv/a").json() == {"deleted": True}
    assert py.request("DELETE", f"{base}/kv/a").json() == {"deleted": False}
    # A key with a time to live expires.
    py.request("PUT", f"{base}/kv/brief?ttl=0.2", body="soon gone")
    wait_for("the key to expire", lambda: py.get(f"{base}/kv/brief").status == 404)


def test_logging_and_print_reach_plugds_log_under_the_plugins_name(py: Plugd) -> None:
    assert "loaded py 1.0.0" in wait_for("on_load's line", lambda: py.logs("py"))
    py.get("/plugins/py/log?text=marker-51")
    logs = wait_for("the lines", lambda: "printed: marker-51" in py.logs("py") and py.logs("py"))
    assert "WARNING py: a line from the handler: marker-51" in logs


def test_cancellation_on_client_disconnect_reaches_async_and_sync_handlers(py: Plugd) -> None:
    for n, path in enumerate(["/plugins/py/hang", "/plugins/py/hang-sync"], start=1):
        with socket.create_connection(("127.0.0.1", py.port)) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            wait_for("the handler to start", functools.partial(counted, py, "started", n))
        wait_for(f"{path} to be cancelled", functools.partial(counted, py, "cancelled", n))


def test_cancellation_on_timeout(plugd: Plugd) -> None:
    install(plugd, "py", manifest='[limits]\nrequest_timeout = "1s"\n')
    plugd.start()
    r = plugd.get("/plugins/py/hang")
    assert r.status == 504, r
    wait_for(
        "the handler to be cancelled",
        lambda: counter(plugd, "cancelled") == 1,
    )


def test_kill_9_and_restart(py: Plugd) -> None:
    pid = py.get("/plugins/py/pid").json()["pid"]
    os.kill(pid, signal.SIGKILL)

    def new_pid() -> bool:
        r = py.get("/plugins/py/pid")
        return r.status == 200 and r.json()["pid"] != pid

    wait_for("a new instance to serve", new_pid)
    assert py.plugin("py")["restarts"] >= 1


def test_graceful_shutdown_finishes_requests_in_flight(py: Plugd) -> None:
    answers: list[object] = []
    t = threading.Thread(target=lambda: answers.append(py.get("/plugins/py/slow?s=1")))
    t.start()
    wait_for("the slow request to start", lambda: counter(py, "started") == 1)
    assert py.admin("POST", "/plugins/py/disable").status == 200
    t.join(30)
    assert [(a.status, a.text) for a in answers] == [(200, "slow done")]  # type: ignore[attr-defined]
    assert "unloading after 1 finished requests" in wait_for(
        "on_unload's line", lambda: "unloading" in py.logs("py") and py.logs("py")
    )


def test_an_edited_script_reloads_the_plugin(py: Plugd) -> None:
    script = py.plugins / "py" / "main.py"
    script.write_text(script.read_text().replace('VERSION = "1.0.0"', 'VERSION = "2.0.0"'))
    wait_for("the new version to serve", lambda: py.get("/plugins/py/version").text == "2.0.0")


def test_error_codes_become_http_statuses_and_a_bare_response_is_valid(plugd: Plugd) -> None:
    plugd.python_plugin("raw", (PLUGINS / "raw.py").read_text())
    plugd.start()
    expected = {5: 404, 3: 500, -32603: 500, 4: 503, 8: 503, 6: 503, 2: 504, 7: 502, 1: 502}
    for code, status in expected.items():
        r = plugd.get(f"/plugins/raw/code/{code}")
        assert r.status == status, (code, r)
        if code != 4:  # plugd says the plugin is shutting down in its own words
            assert f"error code {code} on purpose" in r.json()["detail"], r
    r = plugd.get("/plugins/raw/bare")
    assert (r.status, r.body) == (200, b""), r
    r = plugd.get("/plugins/raw/nil")
    assert (r.status, r.body) == (201, b""), r


def test_a_missing_sdk_dependency_fails_the_plugin_with_the_reason(plugd: Plugd) -> None:
    manifest = '[restart]\nmax_restarts = 1\ninitial_backoff = "10ms"\n'
    plugd.python_plugin("broken", "import no_such_module_here\n", manifest)
    plugd.start()
    wait_for("the plugin to fail", lambda: plugd.plugin("broken")["state"] == "failed")
    assert "No module named 'no_such_module_here'" in plugd.logs("broken")


SETTINGS_PLUGIN = """
    from dataclasses import dataclass
    from plugd import Plugin, Request, SettingsChanged

    plugin = Plugin("conf", "1.0.0")
    changes: list[list[str]] = []

    @dataclass
    class Config:
        greeting: str
        timeout: int
        token: str = ""

    @plugin.get("/settings")
    async def show(req: Request) -> dict:
        config = req.host.settings(Config)
        return {"raw": req.host.settings(), "greeting": config.greeting, "changes": changes}

    @plugin.on_settings_changed
    def check(change: SettingsChanged) -> None:
        if change.settings.get("greeting") == "refuse":
            raise ValueError("greeting 'refuse' is not a greeting")
        changes.append(change.changed)

    if __name__ == "__main__":
        plugin.run()
"""

SETTINGS_SCHEMA = """
    [settings.greeting]
    type = "string"
    default = "hello"
    [settings.timeout]
    type = "duration"
    default = "5s"
    [settings.token]
    type = "string"
    secret = true
"""


def test_settings_arrive_in_the_handshake_and_live_and_a_refusal_keeps_them(plugd: Plugd) -> None:
    plugd.python_plugin("conf", SETTINGS_PLUGIN, SETTINGS_SCHEMA)
    plugd.start()
    plugd.wait_ready("conf")
    seen = plugd.get("/plugins/conf/settings").json()
    assert seen["raw"] == {"greeting": "hello", "timeout": 5000}
    assert seen["greeting"] == "hello"

    r = plugd.admin("PATCH", "/plugins/conf/settings", {"greeting": "hi", "token": "tok-1"})
    assert r.status == 200, r
    assert r.json()["applied"] == "live"
    seen = plugd.get("/plugins/conf/settings").json()
    assert seen["raw"]["token"] == "tok-1"
    assert seen["greeting"] == "hi"
    assert seen["changes"] == [["greeting", "token"]]

    r = plugd.admin("PATCH", "/plugins/conf/settings", {"greeting": "refuse"})
    assert r.status == 422, r
    assert "is not a greeting" in r.json()["detail"]
    assert plugd.get("/plugins/conf/settings").json()["greeting"] == "hi"
    assert "tok-1" not in plugd.admin("GET", "/plugins/conf/settings").text
