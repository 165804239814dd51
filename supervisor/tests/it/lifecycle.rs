//! Keeping plugins alive: restarts with backoff, crash loops, hung plugins, rescans with
//! zero-downtime reloads, and what systemd is told.

use crate::harness::{process_gone, PluginDef, TestSupervisor};
use nix::sys::signal::Signal;
use std::os::unix::net::UnixDatagram;

#[tokio::test]
async fn repeated_crashes_back_off_then_give_up_while_others_serve() {
    let policy = "[restart]\nmax_restarts = 2\ninitial_backoff = \"1s\"\nmax_backoff = \"1s\"\n";
    let sup = TestSupervisor::start(
        &[
            PluginDef::echo("crashy", policy),
            PluginDef::echo("steady", ""),
        ],
        &[],
    )
    .await;

    // First crash: restarted at once.
    sup.get("/plugins/crashy/crash").await.expect("crash 1");
    sup.wait_until("the first restart", || async {
        let s = sup.plugin_status("crashy").await;
        s["state"] == "ready" && s["restarts"] == 1
    })
    .await;

    // Second crash: restarted after the backoff (0.5 to 1 s with jitter), logged with its reason.
    sup.get("/plugins/crashy/crash").await.expect("crash 2");
    sup.wait_until("the second restart", || async {
        let s = sup.plugin_status("crashy").await;
        s["state"] == "ready" && s["restarts"] == 2
    })
    .await;

    assert!(sup.logged(&[
        "plugin=crashy",
        "to=\"backoff\"",
        "reason=exited with code 7"
    ]));

    // Third crash within the window: a crash loop, given up until an admin acts.
    sup.get("/plugins/crashy/crash").await.expect("crash 3");
    sup.wait_until("the crash loop verdict", || async {
        sup.plugin_status("crashy").await["state"] == "failed"
    })
    .await;
    let reason = sup.plugin_status("crashy").await["reason"].clone();
    let reason = reason.as_str().expect("reason");
    assert!(
        reason.contains("crash loop: 2 restarts within 1m")
            && reason.contains("exited with code 7"),
        "{reason}"
    );
    assert_eq!(
        sup.get("/plugins/steady/echo/1")
            .await
            .expect("steady")
            .status(),
        200
    );
    assert_eq!(sup.plugin_status("steady").await["restarts"], 0);
}

#[tokio::test]
async fn a_plugin_that_stops_answering_pings_is_killed_as_unresponsive() {
    let manifest = "[health]\ninterval = \"200ms\"\ntimeout = \"300ms\"\n\
                    [restart]\nmax_restarts = 1\ninitial_backoff = \"50ms\"\n";
    let sup = TestSupervisor::start(
        &[
            PluginDef::bin("deaf", "plugd-testkit-raw", &["deaf"], manifest),
            PluginDef::echo("echo", ""),
        ],
        &[],
    )
    .await;
    let first_pid = sup.plugin_status("deaf").await["pid"]
        .as_u64()
        .expect("pid") as u32;
    sup.wait_until("the hung plugin is given up on", || async {
        sup.plugin_status("deaf").await["state"] == "failed"
    })
    .await;
    let status = sup.plugin_status("deaf").await;
    let reason = status["reason"].as_str().expect("reason");
    assert!(
        reason.contains("unresponsive: no answer to a health ping within 300ms"),
        "{reason}"
    );
    assert_eq!(
        status["restarts"], 1,
        "killed, restarted once, killed again"
    );
    assert!(process_gone(first_pid));
    assert_eq!(
        sup.get("/plugins/echo/echo/1")
            .await
            .expect("echo")
            .status(),
        200
    );
}

#[tokio::test]
async fn sighup_rescans_and_reloads_without_dropping_a_request() {
    let mut sup =
        TestSupervisor::start(&[PluginDef::echo("a", ""), PluginDef::echo("b", "")], &[]).await;
    let plugins = sup.dir.path().join("plugins");
    let a_pid = sup.plugin_status("a").await["pid"].as_u64().expect("pid") as u32;
    let b_pid = sup.plugin_status("b").await["pid"].clone();

    // Keep requests flowing to b while it is reloaded: none may fail.
    let client = sup.client.clone();
    let url = sup.url("/plugins/b/slow?ms=20");
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let traffic = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        loop {
            if stop_rx.try_recv().is_ok() {
                return (ok, failed);
            }
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => ok += 1,
                Ok(r) => failed.push(r.status().as_u16()),
                Err(e) => failed.push(e.status().map_or(0, |s| s.as_u16())),
            }
        }
    });

    // Add c, remove a, change b's manifest; one SIGHUP applies all three.
    let c = PluginDef::echo("c", "");
    std::fs::create_dir_all(plugins.join("c")).expect("mkdir c");
    std::fs::write(plugins.join("c/plugin.toml"), &c.manifest).expect("write c");
    std::fs::remove_dir_all(plugins.join("a")).expect("remove a");
    let b = PluginDef::echo("b", "[env]\nRELOADED = \"yes\"\n");
    std::fs::write(plugins.join("b/plugin.toml"), &b.manifest).expect("change b");
    sup.signal(Signal::SIGHUP);

    sup.wait_until("c is added, a removed and b reloaded", || async {
        let c = sup.plugin_status("c").await;
        let a = sup.plugin_status("a").await;
        let b = sup.plugin_status("b").await;
        c["state"] == "ready" && a.is_null() && b["state"] == "ready" && b["pid"] != b_pid
    })
    .await;
    assert_eq!(sup.get("/plugins/a/echo/1").await.expect("a").status(), 404);
    sup.wait_until("a's process is gone", || async { process_gone(a_pid) })
        .await;
    let old_b = b_pid.as_u64().expect("pid") as u32;
    sup.wait_until("b's old instance drained and exited", || async {
        process_gone(old_b)
    })
    .await;

    let _ = stop_tx.send(());
    let (ok, failed) = traffic.await.expect("traffic");
    assert!(
        failed.is_empty(),
        "requests failed during the reload: {failed:?}"
    );
    assert!(ok > 0);
    assert_eq!(
        sup.plugin_status("b").await["restarts"],
        0,
        "a reload is not a restart"
    );
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn a_reload_that_fails_keeps_the_old_instance_serving() {
    let sup = TestSupervisor::start(&[PluginDef::echo("b", "")], &[]).await;
    let pid = sup.plugin_status("b").await["pid"].clone();
    let broken = PluginDef::raw("b", "bad-version");
    std::fs::write(
        sup.dir.path().join("plugins/b/plugin.toml"),
        &broken.manifest,
    )
    .expect("write");
    sup.signal(Signal::SIGHUP);
    sup.wait_until("the failed reload is reported", || async {
        sup.log_tail()
            .contains("reload failed; the running instance keeps serving")
    })
    .await;
    let status = sup.plugin_status("b").await;
    assert_eq!(
        (status["state"].as_str(), &status["pid"]),
        (Some("ready"), &pid)
    );
    assert_eq!(
        sup.get("/plugins/b/echo/1").await.expect("old").status(),
        200
    );
}

#[tokio::test]
async fn systemd_hears_ready_status_watchdog_reloading_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(crate::harness::DEADLINE))
        .expect("timeout");
    let env = [
        ("NOTIFY_SOCKET", path.display().to_string()),
        ("WATCHDOG_USEC", "200000".to_string()),
    ];
    let mut sup = TestSupervisor::start_with_env(&[PluginDef::echo("echo", "")], &[], &env).await;
    let mut seen = String::new();
    let mut expect = |what: &str| {
        let mut buf = [0u8; 4096];
        while !seen.contains(what) {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("waiting for {what}: {e}; got {seen}"));
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    };
    expect("READY=1");
    expect("STATUS=1 plugins ready, 0 failed, 0 other");
    expect("WATCHDOG=1");
    sup.signal(Signal::SIGHUP);
    expect("RELOADING=1");
    sup.signal(Signal::SIGTERM);
    expect("STOPPING=1");
    assert_eq!(sup.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn file_changes_are_picked_up_without_a_signal() {
    let sup = TestSupervisor::start(&[PluginDef::echo("a", "")], &[]).await;
    let plugins = sup.dir.path().join("plugins");
    let w = PluginDef::echo("w", "");
    std::fs::create_dir_all(plugins.join("w")).expect("mkdir");
    std::fs::write(plugins.join("w/plugin.toml"), &w.manifest).expect("write");
    sup.wait_until("the new plugin is started", || async {
        sup.plugin_status("w").await["state"] == "ready"
    })
    .await;
    let pid = sup.plugin_status("w").await["pid"].clone();
    let changed = PluginDef::echo("w", "[limits]\nrequest_timeout = \"7s\"\n");
    std::fs::write(plugins.join("w/plugin.toml"), &changed.manifest).expect("change");
    sup.wait_until("the changed plugin is reloaded", || async {
        let s = sup.plugin_status("w").await;
        s["state"] == "ready" && s["pid"] != pid
    })
    .await;
    std::fs::remove_dir_all(plugins.join("w")).expect("remove");
    sup.wait_until("the removed plugin is forgotten", || async {
        sup.plugin_status("w").await.is_null()
    })
    .await;
    assert_eq!(sup.get("/plugins/a/echo/1").await.expect("a").status(), 200);
}

#[tokio::test]
async fn a_second_worker_on_the_same_sqlite_data_directory_is_refused() {
    let sup = TestSupervisor::start(&[PluginDef::echo("echo", "")], &[]).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plugd"))
        .current_dir(sup.dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--plugins-dir",
            "plugins",
        ])
        .args(["--data-dir", "data", "--runtime-dir", "run2"])
        .env_remove("PLUGD_CONFIG")
        .output()
        .expect("second plugd");
    assert!(!out.status.success(), "the second worker must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already uses the data directory")
            && stderr.contains(&format!("pid {}", sup.pid())),
        "{stderr}"
    );
    assert_eq!(
        sup.get("/plugins/echo/echo/1")
            .await
            .expect("first")
            .status(),
        200
    );
}

/// The plugin leaf (its path in the pids hierarchy) process `pid` is in (`None` outside a
/// plugin's leaf).
fn leaf_of(pid: u32) -> Option<String> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let pids = cgroups
        .lines()
        .find_map(|l| l.split_once(":pids:").map(|(_, p)| p))
        .or_else(|| cgroups.lines().find_map(|l| l.strip_prefix("0::")))?;
    pids.contains("plugd-p").then(|| pids.to_owned())
}

/// The task limit of the plugin cgroup process `pid` is in (`None` outside a plugin's leaf).
fn task_limit(pid: u32) -> Option<String> {
    let leaf = leaf_of(pid)?;
    ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}{leaf}/pids.max")).ok())
        .map(|max| max.trim().to_owned())
}

#[tokio::test]
async fn a_disabled_plugins_cgroup_is_kept_for_its_next_start() {
    let sup = crate::admin::admin_sup(&[PluginDef::echo("echo", "[limits]\ntasks = 32\n")]).await;
    let pid = |s: serde_json::Value| s["pid"].as_u64().expect("pid") as u32;
    let first = pid(sup.plugin_status("echo").await);
    let Some(leaf) = leaf_of(first) else {
        assert!(
            sup.logged(&["cgroups unavailable"]),
            "no leaf, yet cgroups were found"
        );
        return;
    };
    // Whatever leaves the plugin has now (its instance's, maybe its prepared start's).
    let parent = leaf.rsplit_once('/').expect("a parent").0.to_owned();
    let root = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .into_iter()
        .find(|r| std::path::Path::new(&format!("{r}{leaf}")).is_dir())
        .expect("the leaf's directory");
    let leaves = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(format!("{root}{parent}"))
            .expect("plugd's cgroup")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("-echo-"))
            .collect()
    };
    let before = leaves();
    for _ in 0..3 {
        disable_echo(&sup).await;
        sup.wait_until("disabled", || async {
            sup.plugin_status("echo").await["state"] == "disabled"
        })
        .await;
        // Kept, empty, rather than removed.
        assert!(std::path::Path::new(&format!("{root}{leaf}")).is_dir());
        echo_action(&sup, "enable?wait=10s").await;
        sup.wait_until("ready again", || async {
            sup.plugin_status("echo").await["state"] == "ready"
        })
        .await;
    }
    let now = pid(sup.plugin_status("echo").await);
    assert_ne!(now, first);
    let reused = leaf_of(now).expect("in a leaf");
    let name = reused.rsplit_once('/').expect("a name").1;
    assert!(
        before.contains(name),
        "{name} is new; the plugin had {before:?}"
    );
    assert_eq!(task_limit(now).as_deref(), Some("32"));
    assert!(leaves().len() <= 2, "{:?}", leaves());
}

/// Children of `parent` running the start stub (`plugd-start-stub`).
fn stubs_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(parent)
                && String::from_utf8_lossy(&cmdline).contains("plugd-start-stub")
                && !process_gone(*pid)
        })
        .collect()
}

#[tokio::test]
async fn a_crashed_plugin_restarts_from_the_start_prepared_in_its_cgroup() {
    let sup = crate::admin::admin_sup(&[PluginDef::echo("echo", "[limits]\ntasks = 32\n")]).await;
    let first = sup.plugin_status("echo").await["pid"].clone();
    if sup.logged(&["cgroups unavailable"]) {
        eprintln!("no writable cgroups here: starts are not prepared");
        assert!(stubs_of(sup.pid()).is_empty());
        return;
    }
    sup.wait_until("the next start is prepared", || async {
        !stubs_of(sup.pid()).is_empty()
    })
    .await;
    let stub = stubs_of(sup.pid())[0];
    // It waits in a cgroup of its own, under the plugin's task limit.
    assert_eq!(task_limit(stub).as_deref(), Some("32"));

    // The crash is restarted from it: the stub's process becomes the plugin.
    let old = first.as_u64().expect("pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), Signal::SIGKILL).expect("kill");
    sup.wait_until("the stub became the plugin", || async {
        let s = sup.plugin_status("echo").await;
        s["state"] == "ready" && s["pid"] == stub
    })
    .await;
    assert_eq!(
        sup.get("/plugins/echo/echo/1")
            .await
            .expect("echo")
            .status(),
        200
    );
    sup.wait_until("another start is prepared", || async {
        stubs_of(sup.pid()).iter().any(|p| *p != stub)
    })
    .await;
    let next = stubs_of(sup.pid())[0];

    // Disabled on purpose: the prepared start goes too.
    disable_echo(&sup).await;
    sup.wait_until("the prepared start is discarded", || async {
        process_gone(next)
    })
    .await;
    assert!(stubs_of(sup.pid()).is_empty());
}

/// Starts the start stub with its control socket, as plugd does.
fn start_stub() -> (tokio::process::Child, plugd::os::stub::Control) {
    let (theirs, control) = plugd::os::stub::Control::pair().expect("socket pair");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_plugd-start-stub"))
        .stdin(std::process::Stdio::from(theirs))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the stub");
    (child, control)
}

#[tokio::test]
async fn the_start_stub_becomes_the_program_or_says_what_failed() {
    use plugd::os::stub::StubOrder;
    let order = |program: &str, args: &[&str]| StubOrder {
        program: program.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![("STUB_TEST".into(), "given".into())],
    };

    // It becomes the program, with the order's variables and /dev/null for stdin; plugd learns
    // the exec succeeded from the socket's end.
    let (mut child, mut control) = start_stub();
    let script = r#"[ "$STUB_TEST" = given ] && [ "$(readlink /proc/$$/fd/0)" = /dev/null ] && exit 7; exit 1"#;
    control
        .send(&order("/bin/sh", &["-c", script]))
        .await
        .expect("order");
    control.started().await.expect("the program runs");
    assert_eq!(child.wait().await.expect("wait").code(), Some(7));

    // A missing program: the errno comes back, as from a failed spawn.
    let (mut child, mut control) = start_stub();
    control
        .send(&order("/nonexistent/plugin", &[]))
        .await
        .expect("order");
    let e = control.started().await.expect_err("nothing to run");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    assert_eq!(child.wait().await.expect("wait").code(), Some(127));

    // A malformed order is reported, and nothing runs.
    let (mut child, mut control) = start_stub();
    control
        .send(&serde_json::json!({ "program": 3 }))
        .await
        .expect("order");
    let e = control.started().await.expect_err("malformed");
    assert!(e.to_string().contains("malformed order"), "{e}");
    assert_eq!(child.wait().await.expect("wait").code(), Some(1));

    // Discarded: the socket closes without an order, and the stub exits quietly.
    let (mut child, control) = start_stub();
    drop(control);
    assert_eq!(child.wait().await.expect("wait").code(), Some(0));
}

/// The pid of the echo plugin's process that answers a request.
async fn answering_pid(sup: &TestSupervisor) -> u64 {
    let r = sup.get("/plugins/echo/pid").await.expect("pid");
    assert_eq!(r.status(), 200);
    r.text().await.expect("text").trim().parse().expect("a pid")
}

#[tokio::test]
async fn a_warm_standby_takes_over_when_the_plugin_dies_and_another_follows() {
    use crate::admin::{admin_sup, ADMIN};
    let sup = admin_sup(&[PluginDef::echo(
        "echo",
        "[limits]\ntasks = 24\n[restart]\nstandby = true\n",
    )])
    .await;
    let standby_of = |status: serde_json::Value| {
        (status["standby"]["state"] == "ready")
            .then(|| status["standby"]["pid"].as_u64())
            .flatten()
    };
    sup.wait_until("a standby is ready", || async {
        standby_of(sup.plugin_status("echo").await).is_some()
    })
    .await;
    let status = sup.plugin_status("echo").await;
    let serving = status["pid"].as_u64().expect("pid");
    let standby = standby_of(status).expect("standby");
    assert_ne!(serving, standby);
    // The admin API shows it too, and it runs under the plugin's limits.
    let view: serde_json::Value = sup
        .client
        .get(sup.url("/admin/plugins/echo"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("plugin")
        .json()
        .await
        .expect("json");
    assert_eq!(view["standby"]["pid"], standby, "{view}");
    assert_eq!(view["pid"], serving, "{view}");
    if !sup.logged(&["cgroups unavailable"]) {
        assert_eq!(task_limit(standby as u32).as_deref(), Some("24"));
    }
    // It serves nothing while the other lives.
    assert_eq!(answering_pid(&sup).await, serving);

    // A safe request in flight when the serving instance dies is answered by the standby.
    let in_flight = tokio::spawn({
        let (client, url) = (sup.client.clone(), sup.url("/plugins/echo/slow?ms=300"));
        async move {
            let r = client.get(url).send().await.expect("slow request");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    });
    sup.wait_until("the slow request is in flight", || async {
        sup.get_json("/plugins/echo/counters", 200).await["in_flight"] == 1
    })
    .await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(serving as i32), Signal::SIGKILL)
        .expect("kill");
    let (status, text) = in_flight.await.expect("the slow request");
    assert_eq!((status, text.as_str()), (200, "slept 300 ms"));
    sup.wait_until("the standby took over", || async {
        let s = sup.plugin_status("echo").await;
        s["state"] == "ready" && s["pid"] == standby
    })
    .await;
    assert_eq!(answering_pid(&sup).await, standby);
    assert!(sup.logged(&["the standby took over"]));
    assert_eq!(sup.plugin_status("echo").await["restarts"], 1);
    sup.wait_until("another standby is ready", || async {
        standby_of(sup.plugin_status("echo").await).is_some_and(|p| p != standby && p != serving)
    })
    .await;
    let next = standby_of(sup.plugin_status("echo").await).expect("next standby");

    // A standby that dies is replaced; the serving instance is untouched.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(next as i32), Signal::SIGKILL).expect("kill");
    sup.wait_until("the dead standby is replaced", || async {
        standby_of(sup.plugin_status("echo").await).is_some_and(|p| p != next)
    })
    .await;
    assert_eq!(sup.plugin_status("echo").await["pid"], standby);
    let last = standby_of(sup.plugin_status("echo").await).expect("last standby");

    // Disabled: both go.
    disable_echo(&sup).await;
    sup.wait_until("both instances are stopped", || async {
        process_gone(standby as u32) && process_gone(last as u32)
    })
    .await;
    assert!(sup.plugin_status("echo").await.get("standby").is_none());
}

/// Disables the echo plugin through the admin API.
async fn disable_echo(sup: &TestSupervisor) {
    echo_action(sup, "disable").await;
}

/// Posts `action` (`disable`, `enable?wait=10s`, …) for the echo plugin to the admin API and
/// expects a 200.
async fn echo_action(sup: &TestSupervisor, action: &str) {
    let r = sup
        .client
        .post(sup.url(&format!("/admin/plugins/echo/{action}")))
        .bearer_auth(crate::admin::ADMIN)
        .send()
        .await
        .expect(action);
    assert_eq!(r.status(), 200, "{action}");
}
