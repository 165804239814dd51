//! Stopping: SIGTERM drains requests in flight and exits 0; SIGKILL leaves no plugin behind.

use crate::harness::{process_gone, PluginDef, TestSupervisor};
use nix::sys::signal::Signal;

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_then_exits_zero() {
    let mut sup = TestSupervisor::start(&[PluginDef::echo("echo", "")], &[]).await;
    let pid = sup.plugin_status("echo").await["pid"]
        .as_u64()
        .expect("pid") as u32;

    let client = sup.client.clone();
    let url = sup.url("/plugins/echo/slow?ms=1500");
    let slow = tokio::spawn(async move {
        let r = client.get(url).send().await.expect("slow request");
        (r.status().as_u16(), r.text().await.expect("body"))
    });
    sup.wait_until("the slow request is in the plugin", || async {
        sup.get_json("/plugins/echo/counters", 200).await["in_flight"] == 1
    })
    .await;

    sup.signal(Signal::SIGTERM);
    let (status, body) = slow.await.expect("task");
    assert_eq!(status, 200, "the request in flight finished");
    assert_eq!(body, "slept 1500 ms");
    let exit = sup.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "clean exit");
    assert!(process_gone(pid), "the plugin was stopped");
    let log = sup.log_tail();
    assert!(
        log.contains("supervisor shutting down (exited with code 0)"),
        "{log}"
    );
}

#[tokio::test]
async fn no_plugin_outlives_a_supervisor_killed_with_sigkill() {
    let mut sup = TestSupervisor::start(
        &[
            PluginDef::echo("one", ""),
            PluginDef::echo("two", ""),
            PluginDef::bin("hello", "plugd-example-hello", &[], ""),
        ],
        &[],
    )
    .await;
    let mut pids = Vec::new();
    for name in ["one", "two", "hello"] {
        pids.push(sup.plugin_status(name).await["pid"].as_u64().expect("pid") as u32);
    }
    assert!(pids.iter().all(|&p| !process_gone(p)));
    sup.signal(Signal::SIGKILL);
    sup.wait_exit().await;
    sup.wait_until("every plugin process is gone", || async {
        pids.iter().all(|&p| process_gone(p))
    })
    .await;
}
