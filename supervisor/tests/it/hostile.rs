//! Hostile peers: plugins and HTTP clients that attack plugd on purpose. For each attack the
//! tests check that plugd's memory (its RSS, read from `/proc`) stays under a stated bound, that
//! `/healthz` and a well-behaved plugin keep answering, that the hostile plugin alone ends in a
//! state whose reason names what it did, and that SIGTERM still stops plugd within its budget.

use crate::harness::{process_gone, PluginDef, TestSupervisor, DEADLINE, HOST_TOKEN};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// plugd's resident memory, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib / 1024
}

/// Checks `/healthz` and the `echo` plugin each answer within 100 ms (the best of three tries,
/// as a shared machine may stall any single one; every try must answer, none may hang).
async fn still_responsive(sup: &TestSupervisor, during: &str) {
    for path in ["/healthz", "/plugins/echo/echo/1"] {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(5), sup.get(path))
                .await
                .unwrap_or_else(|_| panic!("{path} hung during {during}"))
                .unwrap_or_else(|e| panic!("{path} failed during {during}: {e}"));
            assert_eq!(r.status(), 200, "{path} during {during}");
            best = best.min(start.elapsed());
        }
        assert!(
            best < Duration::from_millis(100),
            "{path} took {best:?} during {during}"
        );
    }
}

/// Sends SIGTERM and checks plugd exits cleanly within its shutdown budget (10 s by default),
/// with a little room for the process to be reaped.
async fn stops_within_budget(mut sup: TestSupervisor) {
    let start = Instant::now();
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    let status = sup.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", sup.log_tail());
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "SIGTERM took {:?}",
        start.elapsed()
    );
}

/// Waits until `name` is failed and returns its reason.
async fn failed_reason(sup: &TestSupervisor, name: &str) -> String {
    sup.wait_until(&format!("{name} is failed"), || async {
        sup.plugin_status(name).await["state"] == "failed"
    })
    .await;
    let status = sup.plugin_status(name).await;
    status["reason"].as_str().unwrap_or_default().to_owned()
}

const ONCE: &str = "[restart]\nmax_restarts = 0\n";

fn raw(name: &str, mode: &str, extra: &str) -> PluginDef {
    PluginDef::bin(name, "plugd-testkit-raw", &[mode], extra)
}

#[tokio::test]
async fn a_plugin_flooding_requests_gets_bounded_answers_and_alone_fails() {
    // Health pings would catch it only after a minute: the flood itself must end it.
    let slow_health =
        "[health]\ninterval = \"60s\"\ntimeout = \"30s\"\n[restart]\nmax_restarts = 0\n";
    let sup = TestSupervisor::start(
        &[
            PluginDef::echo("echo", ""),
            raw("flood", "flood", slow_health),
        ],
        &[],
    )
    .await;
    let pid = sup.pid();
    let mut peak = 0;
    while sup.plugin_status("flood").await["state"] == "ready" {
        peak = peak.max(rss_mib(pid));
        still_responsive(&sup, "a request flood").await;
    }
    let reason = failed_reason(&sup, "flood").await;
    assert!(reason.contains("does not read the answers"), "{reason}");
    peak = peak.max(rss_mib(pid));
    assert!(peak < 150, "plugd reached {peak} MiB during the flood");
    eprintln!("request flood: plugd peak RSS {peak} MiB");
    assert_eq!(sup.plugin_status("echo").await["state"], "ready");
    stops_within_budget(sup).await;

    // SIGTERM while the flooder is cut off and restarted, again and again, still stops plugd in
    // time.
    let sup = TestSupervisor::start(&[raw("flood", "flood", "")], &[]).await;
    sup.wait_until("the flood is on", || async {
        sup.logged(&["flood", "does not read the answers"])
    })
    .await;
    stops_within_budget(sup).await;
}

#[tokio::test]
async fn hostile_handshakes_and_frames_are_refused_naming_the_bound() {
    let few = "[env]\nRAW_ROUTES = \"2000\"\n[restart]\nmax_restarts = 0\n";
    let sup = TestSupervisor::start(
        &[
            PluginDef::echo("echo", ""),
            raw("huge", "routes", ONCE),
            raw("many", "routes", few),
            raw("zero", "max-frame-zero", ONCE),
            raw("stray", "stray-ids", ONCE),
            raw("deep", "deep", ONCE),
        ],
        &[],
    )
    .await;
    let pid = sup.pid();
    let cases = [
        ("huge", "at most 1048576 are allowed"),
        ("many", "2000 routes declared, at most 1024 are allowed"),
        ("zero", "max_frame 0 is below the smallest allowed"),
        ("stray", "answers to calls plugd never made"),
    ];
    for (name, expected) in cases {
        let reason = failed_reason(&sup, name).await;
        assert!(reason.contains(expected), "{name}: {reason}");
        still_responsive(&sup, name).await;
    }
    // Params nested too deep cost their call, not the connection: plugd answers with an error
    // that names the bound (the plugin writes it to its log, then exits).
    sup.wait_until("the deep call is refused", || async {
        sup.logged(&["deep", "plugd refused the deep call", "nest deeper than 64"])
    })
    .await;
    still_responsive(&sup, "deep").await;
    // Refused handshakes are never retried: sending the same again cannot succeed.
    for name in ["huge", "many", "zero"] {
        assert_eq!(sup.plugin_status(name).await["restarts"], 0, "{name}");
    }
    let rss = rss_mib(pid);
    assert!(
        rss < 100,
        "plugd holds {rss} MiB after the hostile handshakes"
    );
    eprintln!("hostile handshakes and frames: plugd RSS {rss} MiB");
    stops_within_budget(sup).await;
}

#[tokio::test]
async fn the_key_value_store_is_bounded_by_value_size_quota_and_listing_bytes() {
    let sup = TestSupervisor::start(&[PluginDef::echo("echo", "")], &[]).await;
    let pid = sup.pid();
    let put = |key: String, len: usize| {
        let request = sup
            .client
            .put(sup.url(&format!("/plugins/echo/kv/{key}")))
            .body(vec![b'x'; len]);
        async move {
            let r = request.send().await.expect("put");
            (r.status().as_u16(), r.text().await.expect("body"))
        }
    };
    let (status, body) = put("big".into(), 2 << 20).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("a value may be at most 1048576 bytes"),
        "{body}"
    );

    // 64 values of 1 MiB fill the 64 MiB quota; the next is refused with the quota named.
    for i in 0..64 {
        let (status, body) = put(format!("k{i:02}"), 1 << 20).await;
        assert_eq!(status, 200, "value {i}: {body}");
    }
    let (status, body) = put("k64".into(), 1 << 20).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("key-value store is full"), "{body}");

    // Eight listings at once: each answer stops at the 4 MiB budget.
    let lists = (0..8).map(|_| async {
        let r = sup
            .get("/plugins/echo/kvlist?prefix=k")
            .await
            .expect("list");
        assert_eq!(r.status(), 200);
        r.json::<Vec<String>>().await.expect("keys")
    });
    for keys in futures_util::future::join_all(lists).await {
        assert_eq!(
            keys,
            vec!["k00", "k01", "k02"],
            "three 1 MiB values fit in 4 MiB"
        );
    }
    let rss = rss_mib(pid);
    assert!(rss < 200, "plugd holds {rss} MiB after the listings");
    eprintln!("KV abuse: plugd RSS {rss} MiB");
    still_responsive(&sup, "KV abuse").await;
    stops_within_budget(sup).await;
}

#[tokio::test]
async fn a_flood_on_stderr_is_summarised_not_logged_line_by_line() {
    let sup = TestSupervisor::start(
        &[
            PluginDef::echo("echo", ""),
            raw("spew", "spew", "[env]\nRAW_SPEW_MB = \"64\"\n"),
        ],
        &[],
    )
    .await;
    let started = Instant::now();
    sup.wait_until("the plugin has spewed", || async {
        sup.logged(&["spew", "spewed 64 MiB"])
    })
    .await;
    let elapsed = started.elapsed().as_secs() + 1;
    // 64 MiB is about 660,000 lines; the log keeps the burst, the rate and the summaries.
    let logged = sup.logged_count(&["spew spew spew"]);
    let allowed = 1000 + 200 * elapsed as usize;
    assert!(
        logged <= allowed,
        "{logged} lines logged, at most {allowed}"
    );
    assert!(sup.logged(&["lines suppressed"]), "{}", sup.log_tail());
    assert_eq!(sup.plugin_status("spew").await["state"], "ready");
    still_responsive(&sup, "a stderr flood").await;
    eprintln!("stderr flood: {logged} of about 660,000 lines logged in {elapsed} s");
    stops_within_budget(sup).await;
}

/// Asks the echo plugin to start a `setsid` daemon and returns its pid.
async fn start_daemon(sup: &TestSupervisor) -> u32 {
    let r = sup.get("/plugins/echo/daemon").await.expect("daemon");
    assert_eq!(r.status(), 200);
    let pid: u32 = r.text().await.expect("pid").parse().expect("a pid");
    assert!(!process_gone(pid), "the daemon runs");
    pid
}

#[tokio::test]
async fn a_setsid_daemon_does_not_outlive_its_instance_or_plugd() {
    // Without cgroups: the subreaper finds it.
    let sup = TestSupervisor::start(&[PluginDef::echo("echo", "")], &["--cgroups", "false"]).await;
    let daemon = start_daemon(&sup).await;
    let pid = sup.plugin_status("echo").await["pid"].clone();
    let _ = sup.get("/plugins/echo/crash").await;
    sup.wait_until("the daemon is killed with its instance", || async {
        process_gone(daemon)
    })
    .await;
    // The daemon can be gone before plugd has seen the crash: wait for the next instance.
    sup.wait_until("echo is back", || async {
        let s = sup.plugin_status("echo").await;
        s["state"] == "ready" && s["pid"] != pid
    })
    .await;
    let daemon = start_daemon(&sup).await;
    stops_within_budget(sup).await;
    assert!(process_gone(daemon), "the daemon ends with plugd");

    // With cgroups (where the machine has them): plugd killed with SIGKILL cannot clean up;
    // the next plugd empties the cgroups and the socket directory it left.
    let mut sup = TestSupervisor::start(&[PluginDef::echo("echo", "")], &[]).await;
    let daemon = start_daemon(&sup).await;
    let old_sockets = sup.dir().join("run").join(format!("p{}", sup.pid()));
    assert!(old_sockets.exists());
    sup.kill_and_restart().await;
    assert!(
        !old_sockets.exists(),
        "the stale socket directory is removed"
    );
    if sup.logged(&["cgroups unavailable"]) {
        eprintln!(
            "no writable cgroups here: a daemon outliving a SIGKILLed plugd is not reachable"
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the daemon");
    } else {
        sup.wait_until("the next plugd killed the daemon", || async {
            process_gone(daemon)
        })
        .await;
    }
    stops_within_budget(sup).await;
}

/// Sends `request` on a fresh connection and returns everything plugd answers before closing.
fn raw_http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[tokio::test]
async fn hooks_need_a_token_and_refuse_reserved_names_and_deep_payloads() {
    let sup = TestSupervisor::start(
        &[PluginDef::echo(
            "echo",
            "[env]\nECHO_HOOKS = \"doc.save:filter:0:echo\"\n",
        )],
        &[],
    )
    .await;
    let fire = |hook: &str, token: Option<&str>| {
        let mut request = sup.client.post(sup.url(&format!("/hooks/{hook}")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
    };
    let r = fire("doc.save", None)
        .json(&json!(1))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401, "anonymous");
    let r = fire("doc.save", Some("not-a-token-at-all"))
        .json(&json!(1))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401, "a wrong token");
    let r = fire("doc.save", Some(HOST_TOKEN))
        .json(&json!(1))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200, "the host token fires hooks");
    let r = fire("plugd.plugin.loaded", Some(HOST_TOKEN))
        .json(&json!({"plugin": "echo"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400, "reserved");
    let body: Value = r.json().await.expect("json");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("reserved"),
        "{body}"
    );

    // 70 levels of JSON, then of MessagePack: refused by plugd, never sent to the plugin.
    let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
    for _ in 0..8 {
        let r = fire("doc.save", Some(HOST_TOKEN))
            .header("content-type", "application/json")
            .body(deep.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.expect("json");
        assert!(
            body["detail"].as_str().expect("detail").contains("nests"),
            "{body}"
        );
    }
    let mut value = rmpv::Value::from(1);
    for _ in 0..70 {
        value = rmpv::Value::Array(vec![value]);
    }
    let mut packed = Vec::new();
    rmpv::encode::write_value(&mut packed, &value).expect("encode");
    let r = fire("doc.save", Some(HOST_TOKEN))
        .header("content-type", "application/msgpack")
        .body(packed)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    let r = fire("doc.save", Some(HOST_TOKEN))
        .header("content-type", "application/json")
        .body(format!("\"{}\"", "x".repeat(2 << 20)))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
    let status = sup.plugin_status("echo").await;
    assert_eq!(
        (status["state"].as_str(), status["restarts"].as_u64()),
        (Some("ready"), Some(0)),
        "the plugin never saw the bad payloads: {status}"
    );

    // A plugin cannot fire plugd's own hooks either.
    let r = sup
        .client
        .post(sup.url("/plugins/echo/fire/plugd.plugin.unloaded"))
        .json(&json!({}))
        .send()
        .await
        .expect("fire");
    assert_eq!(r.status(), 500);
    assert!(r.text().await.expect("body").contains("reserved"));

    // The host token opens nothing else.
    let r = sup
        .client
        .get(sup.url("/admin/plugins"))
        .bearer_auth(HOST_TOKEN)
        .send()
        .await
        .expect("admin");
    assert!(matches!(r.status().as_u16(), 403), "{}", r.status());

    // Paths: dot segments resolved or refused, NUL and invalid UTF-8 refused (sent raw, as
    // an HTTP client library would normalise them first).
    let addr = sup.addr();
    let get = |path: &str| {
        raw_http(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    };
    assert!(get("/plugins/echo/x/../echo/1").starts_with("HTTP/1.1 200"));
    let climbing = get("/plugins/echo/../../admin/plugins");
    assert!(climbing.starts_with("HTTP/1.1 400"), "{climbing}");
    assert!(climbing.contains("climbs above"), "{climbing}");
    assert!(get("/plugins/echo/%2e%2e/%2e%2e/x").starts_with("HTTP/1.1 400"));
    let nul = get("/plugins/echo/echo/a%00b");
    assert!(
        nul.starts_with("HTTP/1.1 400") && nul.contains("NUL"),
        "{nul}"
    );
    assert!(get("/plugins/echo/echo/%ff").starts_with("HTTP/1.1 400"));
    stops_within_budget(sup).await;
}

#[tokio::test]
async fn slow_and_flooding_clients_are_cut_off_or_refused_fast() {
    let sup = TestSupervisor::start(
        &[PluginDef::echo("echo", "")],
        &["--header-read-timeout", "1s"],
    )
    .await;
    let addr = sup.addr();

    // Slowloris: half-sent request heads are closed after the header-read timeout.
    let slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .expect("half a head");
            s.set_read_timeout(Some(DEADLINE)).expect("timeout");
            s
        })
        .collect();
    let started = Instant::now();
    for mut s in slow {
        let mut buf = [0u8; 1024];
        // Closed (0 bytes, or a 408 then close), not left hanging until the read timeout.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "half-sent heads were held {:?}",
        started.elapsed()
    );

    stops_within_budget(sup).await;

    // Connection flood past the cap: the extra connections get a 503 at once.
    let sup =
        TestSupervisor::start(&[PluginDef::echo("echo", "")], &["--max-connections", "40"]).await;
    let addr = sup.addr();
    // Connections are held until the cap refuses one (the harness's own client may hold one
    // too). Each is served once, so it is known to be accepted, by whichever HTTP thread the
    // kernel gave it to, before the next one is made.
    let mut held: Vec<TcpStream> = Vec::new();
    let refused = loop {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"ok\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        if !answer.starts_with(b"HTTP/1.1 200") {
            break String::from_utf8_lossy(&answer).into_owned();
        }
        held.push(s);
        assert!(held.len() <= 40, "more than 40 connections were served");
    };
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        held.len() >= 38,
        "only {} connections were served",
        held.len()
    );
    sup.wait_until("the cap is reached", || async {
        sup.logged(&["connection limit reached"])
            || raw_http(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .starts_with("HTTP/1.1 503")
    })
    .await;
    let start = Instant::now();
    let answer = raw_http(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    drop(held);
    // Once they are gone (or timed out idle), plugd serves again.
    sup.wait_until("plugd serves again", || async {
        sup.get("/healthz").await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    still_responsive(&sup, "after a connection flood").await;
    stops_within_budget(sup).await;
}

#[tokio::test]
async fn each_http_thread_takes_its_lane_and_bad_lanes_are_refused() {
    let sup = TestSupervisor::start(
        &[PluginDef::echo("echo", ""), raw("lanes", "lanes", ONCE)],
        &["--http-threads", "2"],
    )
    .await;
    // The hand-written plugin opens three bad lanes before its good one; each is refused with
    // its reason and costs the instance nothing.
    for reason in [
        "lane refused: wrong token",
        "lane refused: lane 99 was not asked for (lanes 1 to 1 were)",
        "opening frame of 1073741824 bytes, at most 4096 are allowed",
    ] {
        sup.wait_until(reason, || async { sup.logged(&["lanes", reason]) })
            .await;
    }
    // plugd-runtime's plugin and the hand-written one each have their lane open.
    sup.wait_until("both lanes open", || async {
        let metrics = sup.metrics().await;
        ["echo", "lanes"]
            .iter()
            .all(|p| metrics.contains(&format!("plugd_plugin_lanes_open{{plugin=\"{p}\"}} 1")))
    })
    .await;
    // Fresh connections are spread over both threads by the kernel: the main thread's requests
    // come on the first connection, the other's on lane 1 (40 connections all on one thread
    // would happen once in 2^39 runs).
    let addr = sup.addr();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let answer = raw_http(
            addr,
            "GET /plugins/lanes/x HTTP/1.1\r\nhost: plugd\r\nconnection: close\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        seen.insert(body.to_owned());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["first", "lane 1"],
        "which connection answered"
    );
    assert_eq!(sup.plugin_status("lanes").await["state"], "ready");
    still_responsive(&sup, "bad lanes").await;
    stops_within_budget(sup).await;
}
