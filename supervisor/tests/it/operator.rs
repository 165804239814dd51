//! The operator's surface: the OpenAPI document (validated by an OpenAPI validator, and
//! schemathesis run against a live plugd), the `plugd` client verbs and their exit codes, the
//! live stream (filters, a slow client told what it missed, its bound, its end at shutdown),
//! and the dashboard in a real Chromium.
//!
//! The Python tools live in `target/test-venv` and the browser test's npm packages in
//! `supervisor/tests/ui/node_modules`; `scripts/test` installs both.

use crate::admin::{admin_sup as operator_sup, bundle, ADMIN, VIEWER};
use crate::harness::{PluginDef, TestSupervisor, DEADLINE};
use plugd_api::{Installed, PluginList, StreamEvent, ToggleAnswer};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// A tool of the test virtual environment, which `scripts/test` creates.
fn venv_tool(name: &str) -> PathBuf {
    let path = workspace().join("target/test-venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test, which creates target/test-venv from scripts/test-requirements.txt",
        path.display()
    );
    path
}

/// Runs the `plugd` binary as a client of `sup` with `args`, token `token`.
pub fn cli(sup: &TestSupervisor, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plugd"));
    cmd.args(args)
        .env("PLUGD_URL", format!("http://{}", sup.addr()))
        .env_remove("PLUGD_TOKEN")
        .env_remove("PLUGD_LISTEN");
    if let Some(token) = token {
        cmd.env("PLUGD_TOKEN", token);
    }
    cmd.output().expect("run plugd")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_openapi_document_is_public_valid_and_describes_every_admin_route() {
    let sup = operator_sup(&[PluginDef::echo("echo", "")]).await;
    // No token needed to read it.
    let r = sup.get("/admin/openapi.json").await.expect("get");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let expected = [
        ("get", "/admin/plugins"),
        ("get", "/admin/plugins/{name}"),
        ("delete", "/admin/plugins/{name}"),
        ("post", "/admin/plugins/install"),
        ("post", "/admin/plugins/{name}/enable"),
        ("post", "/admin/plugins/{name}/disable"),
        ("post", "/admin/plugins/{name}/reload"),
        ("post", "/admin/plugins/{name}/restart"),
        ("get", "/admin/plugins/{name}/logs"),
        ("get", "/admin/plugins/{name}/versions"),
        ("get", "/admin/plugins/{name}/bundle"),
        ("post", "/admin/plugins/{name}/rollback"),
        ("post", "/admin/plugins/{name}/promote"),
        ("get", "/admin/plugins/{name}/canary"),
        ("get", "/admin/plugins/{name}/settings"),
        ("put", "/admin/plugins/{name}/settings"),
        ("patch", "/admin/plugins/{name}/settings"),
        ("delete", "/admin/plugins/{name}/settings/{key}"),
        ("get", "/admin/events"),
        ("get", "/admin/permissions"),
        ("get", "/admin/workers"),
        ("get", "/admin/stats"),
        ("get", "/admin/whoami"),
        ("get", "/admin/stream"),
    ];
    let paths = doc["paths"].as_object().expect("paths");
    let documented: usize = paths
        .values()
        .map(|p| p.as_object().map_or(0, |m| m.len()))
        .sum();
    assert_eq!(
        documented,
        expected.len(),
        "every operation, no more: {:?}",
        paths.keys()
    );
    for (method, path) in expected {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is documented");
        for status in ["200", "401", "403", "503"] {
            let has = op["responses"][status].is_object()
                || (status == "200" && op["responses"]["201"].is_object())
                || (status == "200" && op["responses"]["202"].is_object());
            assert!(has, "{method} {path} documents {status}");
        }
        assert!(
            op["operationId"].is_string(),
            "{method} {path} has an operation id"
        );
    }
    // Every route the document names answers as documented, not 404 (a live route check).
    for (method, path) in expected.iter().filter(|(m, _)| *m == "get") {
        if path.contains("stream") {
            continue;
        }
        let url = sup.url(&path.replace("{name}", "echo"));
        let r = sup
            .client
            .request(method.to_uppercase().parse().expect("method"), url)
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("request");
        // A plugin not installed from a bundle has no bundle and no canary: the route
        // answers its documented 404 with the reason.
        if path.ends_with("/bundle") || path.ends_with("/canary") {
            let status = r.status();
            let body: serde_json::Value = r.json().await.expect("json");
            assert!(
                status == 404
                    && ["no bundle", "no canary"]
                        .contains(&body["error"].as_str().unwrap_or_default()),
                "{method} {path}: {status} {body}"
            );
            continue;
        }
        assert_eq!(r.status(), 200, "{method} {path}");
    }
    // An OpenAPI validator agrees.
    let file = sup.dir().join("openapi.json");
    std::fs::write(&file, &text).expect("write");
    let out = Command::new(venv_tool("openapi-spec-validator"))
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_schema() {
    let sup = operator_sup(&[PluginDef::echo("echo", ""), PluginDef::echo("other", "")]).await;
    let out = Command::new(venv_tool("schemathesis"))
        .args(["run", &sup.url("/admin/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {ADMIN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
        ])
        // The stream never ends; it is tested below.
        .args(["--exclude-path", "/admin/stream"])
        .args(["--max-examples", "25", "--workers", "1", "--seed", "1"])
        .args(["--request-timeout", "20"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(sup.dir())
        .output()
        .expect("run schemathesis");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "schemathesis failed:\n{report}");
    assert!(report.contains("passed"), "{report}");
}

#[tokio::test]
async fn the_cli_reads_steers_and_exits_with_codes_scripts_can_rely_on() {
    let sup = operator_sup(&[PluginDef::echo("echo", "")]).await;
    // The workers column comes from heartbeats, written within 50 ms of a change of state.
    sup.wait_until("the heartbeat counts echo ready on its worker", || async {
        let out = cli(&sup, Some(ADMIN), &["plugins"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("echo") && l.contains("1/1"))
    })
    .await;

    // A table for people, the server's JSON for scripts.
    let out = cli(&sup, Some(ADMIN), &["plugins"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("echo") && l.contains("ready") && l.contains("1/1")),
        "{table}"
    );
    let out = cli(&sup, Some(VIEWER), &["plugins", "--json"]);
    assert!(out.status.success(), "a viewer reads: {}", stderr(&out));
    let list: PluginList = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list.plugins[0].record.name, "echo");
    for read in [
        vec!["plugin", "echo", "--json"],
        vec!["workers", "--json"],
        vec!["stats", "--json"],
        vec!["logs", "echo", "--json"],
        vec!["events", "--json"],
    ] {
        let out = cli(&sup, Some(ADMIN), &read);
        assert!(out.status.success(), "{read:?}: {}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{read:?} prints JSON: {e}"));
    }

    // 3: not found; one line naming what failed.
    let out = cli(&sup, Some(ADMIN), &["plugin", "nope"]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("nope") && err.contains("unknown plugin"),
        "{err}"
    );

    // 4: conflict (a generation another change moved past).
    let out = cli(
        &sup,
        Some(ADMIN),
        &["disable", "echo", "--generation", "999"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("409 conflict"), "{}", stderr(&out));

    // 2: usage.
    let out = cli(&sup, Some(ADMIN), &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&sup, Some(ADMIN), &["enable", "echo", "--wait", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // 1: a wrong token says 401 and what to set; a viewer may not write.
    let out = cli(&sup, Some("wrong-token"), &["plugins"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("401") && stderr(&out).contains("PLUGD_TOKEN"),
        "{}",
        stderr(&out)
    );
    let out = cli(&sup, Some(VIEWER), &["restart", "echo"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));

    // 1: nobody listening, said at once.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_plugd"))
        .args(["--url", &dead_url, "--token", ADMIN, "plugins"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        stderr(&out).contains("cannot reach plugd") && stderr(&out).contains("PLUGD_URL"),
        "{}",
        stderr(&out)
    );

    // Steering: disable and wait for every worker, then enable again.
    let out = cli(
        &sup,
        Some(ADMIN),
        &["disable", "echo", "--wait", "10s", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: ToggleAnswer = serde_json::from_slice(&out.stdout).expect("json");
    assert!(answer.changed && answer.convergence.is_some_and(|c| c.converged));
    assert_eq!(sup.plugin_status("echo").await["state"], "disabled");
    let out = cli(&sup, Some(ADMIN), &["enable", "echo", "--wait", "10s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&sup, Some(ADMIN), &["restart", "echo"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Install and uninstall a bundle.
    let file = sup.dir().join("bundle.tar.gz");
    std::fs::write(&file, bundle("shipped", "1.0.0")).expect("bundle");
    let out = cli(
        &sup,
        Some(ADMIN),
        &["install", file.to_str().expect("path"), "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let installed: Installed = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (installed.name.as_str(), installed.upgraded),
        ("shipped", false)
    );
    sup.wait_until("the installed plugin is ready", || async {
        sup.plugin_status("shipped").await["state"] == "ready"
    })
    .await;
    let out = cli(&sup, Some(ADMIN), &["uninstall", "shipped"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&sup, Some(ADMIN), &["install", "/no/such/bundle.zip"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/no/such/bundle.zip"),
        "{}",
        stderr(&out)
    );
}

/// A `plugd … -f` child whose stdout lines arrive on a channel.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(sup: &TestSupervisor, args: &[&str]) -> Follower {
        let mut child = Command::new(env!("CARGO_BIN_EXE_plugd"))
            .args(args)
            .env("PLUGD_URL", format!("http://{}", sup.addr()))
            .env("PLUGD_TOKEN", ADMIN)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// Waits for a line that `wanted` accepts.
    fn wait_for(&self, what: &str, wanted: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        let mut other = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return,
                Ok(line) => other.push(line),
                Err(_) => {
                    panic!("no line with {what} within {DEADLINE:?}; other lines: {other:#?}")
                }
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the plugd has `n` live streams open (its hello was sent).
async fn wait_streams(sup: &TestSupervisor, n: usize) {
    sup.wait_until("the followers' streams are open", || async {
        let text = sup
            .get("/metrics")
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .any(|l| l == format!("plugd_admin_streams {n}"))
    })
    .await;
}

#[tokio::test]
async fn logs_and_events_follow_the_live_stream() {
    let sup = operator_sup(&[PluginDef::echo("echo", "")]).await;
    let logs = Follower::start(&sup, &["logs", "echo", "-f", "--json"]);
    let events = Follower::start(&sup, &["events", "-f", "--json"]);
    wait_streams(&sup, 2).await;
    // A line the plugin writes, and an audit entry, reach the followers.
    let _ = sup.get("/plugins/echo/crash").await;
    logs.wait_for("the plugin's line", |l| {
        serde_json::from_str::<StreamEvent>(l).is_ok_and(|e| {
            matches!(e, StreamEvent::Log { ref line, .. } if line.contains("crashing on purpose"))
        })
    });
    let out = cli(&sup, Some(ADMIN), &["disable", "echo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    events.wait_for("the disable entry", |l| {
        serde_json::from_str::<StreamEvent>(l).is_ok_and(|e| {
            matches!(e, StreamEvent::Audit { ref event } if event.action == "disable" && event.actor == "env")
        })
    });
}

/// Opens `GET /admin/stream?{query}` on a raw socket and reads only the response head.
pub async fn raw_stream(sup: &TestSupervisor, query: &str) -> tokio::net::TcpStream {
    // A small receive buffer, so a client that stops reading is behind soon.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(8 * 1024).expect("rcvbuf");
    let mut s = socket.connect(sup.addr()).await.expect("connect");
    let request = format!(
        "GET /admin/stream?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.expect("write");
    s
}

/// Reads from `s` until `needle` appears, failing after the deadline; answers all this call
/// read (of a long read, the last MiB).
pub async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
    let needle = needle.as_bytes();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => panic!(
                "no {:?} in the stream; last bytes read: {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&seen[seen.len().saturating_sub(300)..])
            ),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("read: {e}"),
        };
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(needle.len()).any(|w| w == needle) {
            return String::from_utf8_lossy(&seen).into_owned();
        }
        // Keep memory flat: only the tail can still hold a needle that started earlier.
        if seen.len() > 2 << 20 {
            seen.drain(..seen.len() - (1 << 20));
        }
    }
}

#[tokio::test]
async fn the_stream_filters_and_tells_a_slow_client_what_it_missed() {
    let sup = operator_sup(&[PluginDef::echo("echo", ""), PluginDef::echo("quiet", "")]).await;
    // Filtered: only the quiet plugin's state changes.
    let mut filtered = raw_stream(&sup, "plugin=quiet&kinds=state").await;
    read_until(&mut filtered, "event: hello").await;
    // A slow client: asks for everything, then reads nothing while a plugin floods its output.
    let mut slow = raw_stream(&sup, "").await;
    read_until(&mut slow, "event: hello").await;
    // Unknown kinds are refused by name.
    let r = sup
        .client
        .get(sup.url("/admin/stream?kinds=state,gossip"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap_or_default().contains("gossip"));

    // Four plugins flood their output with 4 KiB lines: each gets a burst of 1000 lines into
    // the feed (the log budget holds back the rest), far more than the feed keeps for a client
    // whose socket is full.
    let spewers = ["spew1", "spew2", "spew3", "spew4"];
    for name in spewers {
        PluginDef::bin(
            name,
            "plugd-testkit-raw",
            &["spew"],
            "[env]\nRAW_SPEW_MB = \"8\"\nRAW_SPEW_LINE = \"4000\"\n",
        )
        .install(&sup.dir().join("plugins"));
    }
    for name in spewers {
        sup.wait_until("the flood is over", || async {
            let r = sup
                .client
                .get(sup.url(&format!("/admin/plugins/{name}/logs?lines=1")))
                .bearer_auth(ADMIN)
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => r
                    .json::<plugd_api::Logs>()
                    .await
                    .is_ok_and(|l| l.lines.last().is_some_and(|l| l.line.starts_with("spewed"))),
                _ => false,
            }
        })
        .await;
    }
    // plugd went on serving while the slow client read nothing.
    assert_eq!(
        sup.get("/plugins/echo/echo/1")
            .await
            .expect("echo")
            .status(),
        200
    );
    let read = read_until(&mut slow, "event: lagged").await;
    let lag = &read[read.find("event: lagged").expect("lagged")..];
    let data = lag
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("data: "))
        .expect("data line");
    match serde_json::from_str::<StreamEvent>(data).expect("lagged event") {
        StreamEvent::Lagged { missed } => assert!(missed > 0),
        other => panic!("expected lagged, got {other:?}"),
    }
    // The filtered stream saw the quiet plugin's restart and nothing of the flood.
    let out = cli(&sup, Some(ADMIN), &["restart", "quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = read_until(&mut filtered, "\"state\":\"ready\"").await;
    assert!(!seen.contains("spew"), "{seen}");
}

#[tokio::test]
async fn streams_are_bounded_and_end_when_plugd_stops() {
    let mut sup = operator_sup(&[PluginDef::echo("echo", "")]).await;
    let max = 64;
    let mut open = Vec::new();
    for _ in 0..max {
        let mut s = raw_stream(&sup, "kinds=state").await;
        read_until(&mut s, "event: hello").await;
        open.push(s);
    }
    let r = sup
        .client
        .get(sup.url("/admin/stream"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 503);
    assert!(r
        .text()
        .await
        .unwrap_or_default()
        .contains("too many streams"));
    // Closing one makes room for another.
    drop(open.pop());
    sup.wait_until("a stream slot is free again", || async {
        let r = sup
            .client
            .get(sup.url("/admin/stream?kinds=state"))
            .bearer_auth(ADMIN)
            .send()
            .await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    // SIGTERM: the open streams end, and plugd stops well within its shutdown timeout.
    let started = Instant::now();
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(sup.wait_exit().await.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let mut buf = [0u8; 4096];
    let s = &mut open[0];
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended with plugd");
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser() {
    let schema = "[settings.greeting]\ntype = \"string\"\ndefault = \"hello\"\ndescription = \"what it says\"\n\
        [settings.retries]\ntype = \"integer\"\nmax = 10\n\
        [settings.api_key]\ntype = \"string\"\nsecret = true\n";
    let sup = operator_sup(&[
        PluginDef::echo("alpha", schema),
        PluginDef::echo("beta", ""),
    ])
    .await;
    // The dashboard's files come from the binary, under a strict policy.
    let r = sup.get("/ui/").await.expect("ui");
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let ui = workspace().join("supervisor/tests/ui");
    assert!(
        ui.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run scripts/test, which installs it and Debian's chromium"
    );
    let bundle_file = sup.dir().join("bundle.tar.gz");
    std::fs::write(&bundle_file, bundle("gamma", "1.0.0")).expect("bundle");
    let shots = ui.join("screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let out = tokio::process::Command::new("node")
        .arg(ui.join("dashboard.mjs"))
        .env("PLUGD_URL", format!("http://{}", sup.addr()))
        .env("ADMIN_TOKEN", ADMIN)
        .env("VIEWER_TOKEN", VIEWER)
        .env("BUNDLE", &bundle_file)
        .env("BUNDLE_PLUGIN", "gamma")
        .env("SCREENSHOTS", &shots)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .expect("the browser test finished within 3 minutes")
        .expect("run node");
    assert!(
        out.status.success(),
        "browser test failed:\n{}{}\nplugd log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out.stderr),
        sup.log_tail()
    );
    for page in ["plugins", "plugin", "workers", "events", "phone"] {
        let shot = shots.join(format!("{page}.png"));
        let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "screenshot {} saved", shot.display());
    }
}

fn stderr_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
