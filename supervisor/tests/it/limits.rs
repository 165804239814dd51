//! Resource limits with misbehaving plugins: each hurts only itself. These machines offer the
//! cgroup v1 memory, cpu and pids controllers, which the tests rely on where the kernel is the
//! one to enforce (tasks, CPU quota).

use crate::harness::{PluginDef, TestSupervisor};
use futures_util::future::join_all;

const FAST_MONITOR: &[&str] = &["--monitor-interval", "100ms"];

#[tokio::test]
async fn a_memory_hog_is_killed_with_the_reason_and_restarted() {
    let sup = TestSupervisor::start(
        &[
            PluginDef::echo("hog", "[limits]\nmemory = \"64MiB\"\n"),
            PluginDef::echo("calm", ""),
        ],
        FAST_MONITOR,
    )
    .await;
    let pid = sup.plugin_status("hog").await["pid"].clone();
    // The kernel (cgroup) kills it during the request, or the monitor right after it.
    let r = sup.get("/plugins/hog/alloc?mb=200").await.expect("alloc");
    assert!(matches!(r.status().as_u16(), 200 | 502), "{}", r.status());
    sup.wait_until("the hog is restarted", || async {
        let s = sup.plugin_status("hog").await;
        s["state"] == "ready" && s["pid"] != pid
    })
    .await;
    assert!(
        sup.logged(&["hog", "memory limit 64.0 MiB exceeded"]),
        "the kill is logged with its reason"
    );
    assert_eq!(
        sup.get("/plugins/calm/echo/1")
            .await
            .expect("calm")
            .status(),
        200
    );
}

#[tokio::test]
async fn a_fork_bomb_is_contained_by_the_task_limit() {
    let sup = TestSupervisor::start(
        &[
            PluginDef::echo("bomb", "[limits]\ntasks = 16\n"),
            PluginDef::echo("calm", ""),
        ],
        &[],
    )
    .await;
    let body = sup.get_json("/plugins/bomb/fork?n=200", 200).await;
    let started = body["started"].as_u64().expect("started");
    assert!(started < 16, "only up to the task limit: {body}");
    assert!(!body["error"].as_str().expect("error").is_empty(), "{body}");
    // The supervisor and the other plugins are untouched.
    assert_eq!(
        sup.get("/plugins/calm/echo/1")
            .await
            .expect("calm")
            .status(),
        200
    );
    let calm = sup.get_json("/plugins/calm/fork?n=20", 200).await;
    assert_eq!(calm["started"], 20, "{calm}");
}

#[tokio::test]
async fn a_cpu_spinner_is_held_to_its_quota() {
    let sup = TestSupervisor::start(
        &[PluginDef::echo("spinner", "[limits]\ncpu = 0.2\n")],
        FAST_MONITOR,
    )
    .await;
    let r = sup.get("/plugins/spinner/spin?ms=300").await.expect("spin");
    assert_eq!(r.status(), 200);
    sup.wait_until("the quota is seen holding it back", || async {
        let usage = &sup.plugin_status("spinner").await["usage"];
        usage["cpu_throttled"].as_u64().is_some_and(|n| n > 0)
    })
    .await;
    let limits = &sup.plugin_status("spinner").await["limits"];
    assert_eq!(limits["cpu"], 0.2);
}

#[tokio::test]
async fn a_descriptor_leak_hits_its_own_limit_only() {
    let sup = TestSupervisor::start(
        &[
            PluginDef::echo("leaky", "[limits]\nopen_files = 64\n"),
            PluginDef::echo("calm", ""),
        ],
        &[],
    )
    .await;
    let leaky = sup.get_json("/plugins/leaky/fds?n=500", 200).await;
    assert!(leaky["held"].as_u64().expect("held") < 64, "{leaky}");
    assert!(
        leaky["error"]
            .as_str()
            .expect("error")
            .contains("Too many open files"),
        "{leaky}"
    );
    let calm = sup.get_json("/plugins/calm/fds?n=300", 200).await;
    assert_eq!(calm["held"], 300, "{calm}");
    // The leaky plugin still answers what needs no new descriptor.
    assert_eq!(
        sup.get("/plugins/leaky/echo/1")
            .await
            .expect("leaky")
            .status(),
        200
    );
}

#[tokio::test]
async fn a_flood_over_the_in_flight_limit_gets_503_at_once_without_growing_plugd() {
    let sup = TestSupervisor::start(
        &[PluginDef::echo("narrow", "[limits]\nmax_in_flight = 4\n")],
        &[],
    )
    .await;
    let flood = |n: usize| {
        let requests = (0..n).map(|_| {
            let client = sup.client.clone();
            let url = sup.url("/plugins/narrow/slow?ms=200");
            tokio::spawn(async move {
                let r = client.get(url).send().await.expect("request");
                let retry = r.headers().get("retry-after").is_some();
                (r.status().as_u16(), retry)
            })
        });
        join_all(requests)
    };
    let results: Vec<(u16, bool)> = flood(40)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert!(ok >= 4, "the first four are served: {results:?}");
    assert!(!busy.is_empty(), "the rest are refused: {results:?}");
    assert!(
        busy.iter().all(|(_, retry)| *retry),
        "503s carry Retry-After"
    );
    assert_eq!(ok + busy.len(), 40);

    let rss = || {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", sup.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .expect("VmRSS")
    };
    // One flood at full concurrency sets the high-water mark of buffers; five more floods of
    // the same size must not add to it: refused requests are not queued or remembered.
    flood(400).await;
    let before = rss();
    for _ in 0..5 {
        flood(400).await;
    }
    let after = rss();
    assert!(
        after < before + 4 * 1024,
        "plugd grew from {before} KiB to {after} KiB over 2000 more refused requests"
    );
}

#[tokio::test]
async fn limits_and_usage_are_visible() {
    let sup = TestSupervisor::start(
        &[PluginDef::echo(
            "seen",
            "[limits]\nmemory = \"128MiB\"\ntasks = 64\n",
        )],
        FAST_MONITOR,
    )
    .await;
    sup.wait_until("a usage sample", || async {
        sup.plugin_status("seen").await["usage"]["memory_bytes"]
            .as_u64()
            .is_some_and(|m| m > 0)
    })
    .await;
    let status = sup.plugin_status("seen").await;
    assert_eq!(status["limits"]["memory"], 128 * 1024 * 1024);
    assert_eq!(status["limits"]["tasks"], 64);
    assert!(status["usage"]["tasks"].as_u64().expect("tasks") >= 1);
    assert!(status["usage"]["open_files"].as_u64().expect("fds") >= 3);

    for _ in 0..3 {
        sup.get("/plugins/seen/echo/1").await.expect("request");
    }
    sup.get("/plugins/seen/missing").await.expect("404");
    sup.get("/plugins/nobody/x").await.expect("unknown plugin");
    let r = sup.get("/metrics").await.expect("metrics");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("type")
        .starts_with("text/plain"));
    let text = r.text().await.expect("text");
    for line in [
        "plugd_plugin_state{plugin=\"seen\",state=\"ready\"} 1",
        "plugd_plugin_memory_limit_bytes{plugin=\"seen\"} 134217728",
        "plugd_plugin_tasks_limit{plugin=\"seen\"} 64",
        "plugd_plugin_restarts_total{plugin=\"seen\"} 0",
        "# TYPE plugd_plugin_memory_bytes gauge",
        "plugd_http_requests_total{plugin=\"seen\",route=\"/echo/{id}\",status=\"200\"} 3",
        "plugd_http_requests_total{plugin=\"seen\",route=\"(none)\",status=\"404\"} 1",
        "plugd_http_request_duration_seconds_count{plugin=\"seen\",route=\"/echo/{id}\"} 3",
        "# TYPE plugd_http_request_duration_seconds histogram",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let memory = text
        .lines()
        .find_map(|l| l.strip_prefix("plugd_plugin_memory_bytes{plugin=\"seen\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("memory sample");
    assert!(memory > 0.0);
    assert!(
        !text.contains("nobody"),
        "unknown plugin names are not metrics labels"
    );
    // A Prometheus text parser reads all of it; every state has its sample, `disabled` too,
    // and CPU time is a counter.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text");
    let sample = |metric: &str, state: Option<&str>| {
        scrape.samples.iter().find(|s| {
            s.metric == metric
                && s.labels.get("plugin") == Some("seen")
                && state.is_none_or(|st| s.labels.get("state") == Some(st))
        })
    };
    for state in ["disabled", "starting", "ready", "backoff", "failed"] {
        assert!(
            sample("plugd_plugin_state", Some(state)).is_some(),
            "no {state} sample"
        );
    }
    let cpu = sample("plugd_plugin_cpu_seconds_total", None).expect("cpu counter");
    assert!(
        matches!(cpu.value, prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) if v >= 0.0),
        "{:?}",
        cpu.value
    );
    assert!(
        text.contains("# TYPE plugd_plugin_cpu_seconds counter"),
        "cpu seconds are typed as a counter"
    );
}

#[tokio::test]
async fn a_low_open_files_limit_does_not_keep_the_plugin_out_of_its_cgroup() {
    // Until exec the child holds every descriptor plugd has open; joining the cgroup must not
    // need a descriptor under the plugin's own open-files limit.
    let sup = TestSupervisor::start(
        &[PluginDef::echo("few", "[limits]\nopen_files = 16\n")],
        &[],
    )
    .await;
    let held = std::fs::read_dir(format!("/proc/{}/fd", sup.pid()))
        .expect("plugd's descriptors")
        .count();
    assert!(held > 16, "plugd holds {held} descriptors");
    let status = sup.plugin_status("few").await;
    assert_eq!(status["state"], "ready", "{status}");
    assert_eq!(status["limits"]["open_files"], 16, "{status}");
    assert_eq!(
        sup.get("/plugins/few/echo/1").await.expect("echo").status(),
        200
    );
}
