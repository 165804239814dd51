//! The connection's own tests.

use super::*;

/// A caller waiting on a connection that closes may take its request elsewhere (a warm
/// standby); it runs before the tasks that watch for the close do their bookkeeping.
#[tokio::test(flavor = "current_thread")]
async fn a_close_wakes_the_callers_before_those_watching_for_it() {
    let (conn, _peer) = Connection::with_peer("p");
    let order = Arc::new(Mutex::new(Vec::new()));
    let watcher = tokio::spawn({
        let (conn, order) = (conn.clone(), order.clone());
        async move {
            conn.closed().await;
            order.lock().unwrap().push("watcher");
        }
    });
    let caller = tokio::spawn({
        let (conn, order) = (conn.clone(), order.clone());
        async move {
            let answer = conn.ping(Duration::from_secs(30)).await;
            assert!(matches!(answer, Err(CallError::Closed(_))), "{answer:?}");
            order.lock().unwrap().push("caller");
        }
    });
    // Both wait: the call is in flight (the watcher was polled before it, in spawn order).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while conn.in_flight() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the ping was never sent"
        );
        tokio::task::yield_now().await;
    }
    conn.close("the plugin went away");
    caller.await.unwrap();
    watcher.await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["caller", "watcher"]);
}
