//! Every error status, and plugins that crash, hang, lie or send garbage: each gets a clear
//! error and none of them disturbs the other plugins.

use crate::harness::{PluginDef, TestSupervisor};

/// A restart policy that gives up after one retry, so crash-looping test plugins settle fast.
pub const ONE_RETRY: &str = "[restart]\nmax_restarts = 1\ninitial_backoff = \"50ms\"\n";

/// The `detail` of a JSON error response, after checking its status.
async fn error_detail(sup: &TestSupervisor, path: &str, status: u16) -> String {
    let body = sup.get_json(path, status).await;
    assert!(body["error"].is_string(), "{body}");
    body["detail"].as_str().expect("detail").to_owned()
}

#[tokio::test]
async fn routing_errors_are_404_405_and_413() {
    let sup = TestSupervisor::start(
        &[PluginDef::echo("echo", "[limits]\nmax_body = \"1KiB\"\n")],
        &[],
    )
    .await;
    let detail = error_detail(&sup, "/plugins/nope/echo/1", 404).await;
    assert!(detail.contains("no plugin named \"nope\""), "{detail}");
    let detail = error_detail(&sup, "/plugins/echo/missing", 404).await;
    assert!(detail.contains("no route for /missing"), "{detail}");

    let r = sup
        .client
        .delete(sup.url("/plugins/echo/echo/1"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST");

    let r = sup
        .client
        .post(sup.url("/plugins/echo/echo/1"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("big body");
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(body["detail"]
        .as_str()
        .expect("detail")
        .contains("1024 bytes"));

    // A chunked body without Content-Length is measured as it arrives.
    let chunks =
        futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    let r = sup
        .client
        .post(sup.url("/plugins/echo/echo/1"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("chunked body");
    assert_eq!(r.status(), 413);

    let r = sup.get("/plugins/echo/echo/1").await.expect("still fine");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn plugins_that_cannot_start_are_503_with_the_reason_and_the_rest_serve() {
    let sup = TestSupervisor::start(
        &[
            PluginDef::echo("echo", ""),
            PluginDef::bin("silent", "plugd-testkit-raw", &["silent"], ONE_RETRY),
            PluginDef::bin("early", "plugd-testkit-raw", &["exit-early"], ONE_RETRY),
            PluginDef::bin("liar", "plugd-testkit-raw", &["bad-token"], ONE_RETRY),
            PluginDef::raw("future", "bad-version"),
            PluginDef::manifest(
                "missing",
                "name = \"missing\"\nversion = \"1\"\ncommand = \"./no-such-binary\"\n",
            ),
            PluginDef::manifest("broken", "name = \"broken\"\nversion = \"1\"\ncolour = 3\n"),
        ],
        &["--handshake-timeout", "1s"],
    )
    .await;

    // Start failures that a retry might cure are retried, then end in a crash loop; those no
    // retry can cure fail at once, without a restart.
    let cases = [
        ("silent", "no handshake within 1s", 1),
        (
            "early",
            "exited with code 3 before completing the handshake",
            1,
        ),
        ("liar", "wrong token", 1),
        (
            "future",
            "the plugin speaks 99.0, the supervisor speaks 1.3",
            0,
        ),
        ("missing", "command not found", 0),
    ];
    for (name, reason, restarts) in cases {
        let r = sup
            .get(&format!("/plugins/{name}/x"))
            .await
            .expect("request");
        assert_eq!(r.status(), 503, "{name}");
        assert_eq!(r.headers()["retry-after"], "1");
        let body: serde_json::Value = r.json().await.expect("json");
        let detail = body["detail"].as_str().expect("detail");
        assert!(
            detail.contains("is failed") && detail.contains(reason),
            "{name}: {detail}"
        );
        let status = sup.plugin_status(name).await;
        assert_eq!(status["state"], "failed");
        assert_eq!(status["restarts"], restarts, "{name}: {status}");
        if restarts > 0 {
            assert!(
                detail.contains("crash loop: 1 restarts within 1m"),
                "{detail}"
            );
        }
    }
    // The broken manifest is skipped (and logged with its file and field); the rest still serve.
    let detail = error_detail(&sup, "/plugins/broken/x", 404).await;
    assert!(detail.contains("broken"));
    assert!(
        sup.log_tail().contains("colour"),
        "the log names the bad field"
    );
    let r = sup.get("/plugins/echo/echo/1").await.expect("echo");
    assert_eq!(r.status(), 200);
}

/// Plugin `echo` (request timeout 500 ms): a panicking handler answers 500 for that request
/// only; a hung one 504 after the timeout, and the plugin is told to cancel it.
async fn panic_and_hang(sup: &TestSupervisor) {
    let r = sup.get("/plugins/echo/panic").await.expect("panic");
    assert_eq!(r.status(), 500);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(body["error"].as_str().expect("error").contains("boom"));
    assert_eq!(
        sup.get("/plugins/echo/echo/1")
            .await
            .expect("after")
            .status(),
        200
    );

    let detail = error_detail(sup, "/plugins/echo/hang", 504).await;
    assert!(detail.contains("did not answer within 500ms"), "{detail}");
    sup.wait_until("the plugin saw the cancel", || async {
        let counters = sup.get_json("/plugins/echo/counters", 200).await;
        counters["cancelled"] == 1 && counters["in_flight"] == 0
    })
    .await;
}

#[tokio::test]
async fn crash_panic_and_hang_during_requests() {
    let sup = TestSupervisor::start(
        &[
            PluginDef::echo("echo", "[limits]\nrequest_timeout = \"500ms\"\n"),
            PluginDef::echo("crashy", ""),
        ],
        &[],
    )
    .await;

    panic_and_hang(&sup).await;

    // A plugin that dies in the middle of a request: 502 at once, then it is restarted.
    let old_pid = sup.plugin_status("crashy").await["pid"].clone();
    let detail = error_detail(&sup, "/plugins/crashy/crash", 502).await;
    assert!(
        detail.contains("exited with code 7") || detail.contains("closed"),
        "{detail}"
    );
    sup.wait_until("crashy is restarted", || async {
        let status = sup.plugin_status("crashy").await;
        status["state"] == "ready" && status["pid"] != old_pid && status["restarts"] == 1
    })
    .await;
    assert_eq!(
        sup.get("/plugins/crashy/echo/1")
            .await
            .expect("again")
            .status(),
        200
    );
    assert_eq!(
        sup.get("/plugins/echo/echo/1")
            .await
            .expect("others")
            .status(),
        200
    );
}

#[tokio::test]
async fn a_single_threaded_plugin_answers_panics_hangs_and_bursts_alike() {
    // On a single-threaded runtime the plugin answers a handler that needs no waiting from its
    // reader, without a task, and writes the answers to a burst of requests together.
    let sup = TestSupervisor::start(
        &[PluginDef::echo(
            "echo",
            "[limits]\nrequest_timeout = \"500ms\"\n[env]\nECHO_RUNTIME = \"current_thread\"\n",
        )],
        &[],
    )
    .await;
    panic_and_hang(&sup).await;

    // A burst: every answer reaches its own request.
    let answers = futures_util::future::join_all((0..64).map(|i| {
        let sup = &sup;
        async move {
            let echoed = sup.get_json(&format!("/plugins/echo/echo/{i}"), 200).await;
            (i, echoed["id"].as_str().map(str::to_owned))
        }
    }))
    .await;
    for (i, id) in answers {
        assert_eq!(id, Some(i.to_string()));
    }
}

#[tokio::test]
async fn malformed_and_oversized_frames_cut_the_plugin_off() {
    let sup = TestSupervisor::start(
        &[
            PluginDef::echo("echo", ""),
            PluginDef::raw("garbage", "garbage"),
            PluginDef::raw("huge", "oversized"),
        ],
        &[],
    )
    .await;
    let pids: Vec<u64> = [
        sup.plugin_status("garbage").await,
        sup.plugin_status("huge").await,
    ]
    .iter()
    .map(|s| s["pid"].as_u64().expect("pid"))
    .collect();

    let detail = error_detail(&sup, "/plugins/garbage/x", 502).await;
    assert!(detail.contains("bad frame"), "{detail}");
    let detail = error_detail(&sup, "/plugins/huge/x", 502).await;
    assert!(
        detail.contains("bad frame") && detail.contains("exceeds the maximum"),
        "{detail}"
    );
    // Both were killed (they would otherwise sleep forever), then restarted.
    sup.wait_until("the cut-off plugins are gone", || async {
        pids.iter()
            .all(|&pid| crate::harness::process_gone(pid as u32))
    })
    .await;
    for name in ["garbage", "huge"] {
        sup.wait_until("the cut-off plugin is restarted", || async {
            sup.plugin_status(name).await["restarts"] == 1
        })
        .await;
    }
    assert!(sup.log_tail().contains("cut off"));
    assert_eq!(
        sup.get("/plugins/echo/echo/1")
            .await
            .expect("echo")
            .status(),
        200
    );
}
