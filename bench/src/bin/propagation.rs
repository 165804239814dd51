//! Measures how fast a change made through one plugd worker is live on the others.
//!
//! Usage: `plugd-bench-propagation TOKEN URL_A URL_B [URL_C …]` with a plugin named `echo` on
//! every worker. Prints p50 and p99 of the time from an admin change on A until every other
//! worker runs the new state, over `ROUNDS` changes (default 100), then the sustained rate of
//! changes per second with clients writing through every worker for `WRITE_SECONDS` (default 5).
//! Then p50 and p99 of the time from a change of `echo`'s `greeting` setting on A until the
//! plugin on every worker (A included) answers with the new value, which needs `echo` to
//! declare `[settings.greeting]`.

use std::time::{Duration, Instant};

async fn state(client: &reqwest::Client, base: &str) -> String {
    let Ok(r) = client.get(format!("{base}/readyz")).send().await else {
        return String::new();
    };
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    v["plugins"]["echo"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn toggle(client: &reqwest::Client, base: &str, token: &str, enable: bool) -> bool {
    let verb = if enable { "enable" } else { "disable" };
    client
        .post(format!("{base}/admin/plugins/echo/{verb}"))
        .bearer_auth(token)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// The `greeting` the plugin on `base` has now.
async fn greeting(client: &reqwest::Client, base: &str) -> String {
    let Ok(r) = client
        .get(format!("{base}/plugins/echo/settings"))
        .send()
        .await
    else {
        return String::new();
    };
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    v["greeting"].as_str().unwrap_or_default().to_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// How long after `start` every one of `workers` passed `seen`. The workers not there yet are
/// asked in turn, one request at a time, every millisecond (30 s at most), so the time ends
/// with the request that finds the last one there: asking them one after another until each
/// passes would add a request to every worker polled after the slowest.
async fn slowest<F, Fut>(
    client: &reqwest::Client,
    workers: &[String],
    start: Instant,
    seen: F,
) -> Duration
where
    F: Fn(reqwest::Client, String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = start + Duration::from_secs(30);
    let mut waiting: Vec<&String> = workers.iter().collect();
    loop {
        let mut still = Vec::with_capacity(waiting.len());
        for base in waiting {
            if !seen(client.clone(), base.clone()).await {
                still.push(base);
            }
        }
        if still.is_empty() {
            return start.elapsed();
        }
        assert!(Instant::now() < deadline, "{still:?} never got there");
        waiting = still;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn report(what: &str, rounds: usize, latencies: &mut [Duration]) {
    latencies.sort();
    println!(
        "{what} over {rounds} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(latencies, 0.5).as_secs_f64() * 1e3,
        percentile(latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: plugd-bench-propagation TOKEN URL_A URL_B [URL_C …]");
        std::process::exit(2);
    }
    let (token, a, others) = (&args[0], &args[1], &args[2..]);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seconds: u64 = std::env::var("WRITE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    let mut latencies = Vec::with_capacity(rounds);
    let (mut enables, mut disables) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let enable = round % 2 == 1;
        let want = if enable { "ready" } else { "disabled" };
        let start = Instant::now();
        assert!(
            toggle(&client, a, token, enable).await,
            "the change was refused"
        );
        let seen = |client: reqwest::Client, base: String| async move {
            state(&client, &base).await == want
        };
        let took = slowest(&client, others, start, seen).await;
        latencies.push(took);
        if enable { &mut enables } else { &mut disables }.push(took);
    }
    report(
        &format!("propagation A -> {} other workers", others.len()),
        rounds,
        &mut latencies,
    );
    report(
        "  of which enable (start on every worker)",
        enables.len(),
        &mut enables,
    );
    report(
        "  of which disable (stop on every worker)",
        disables.len(),
        &mut disables,
    );

    // Settings: an admin change on A until the plugin's handler sees it on every worker.
    let all: Vec<String> = std::iter::once(a.clone())
        .chain(others.iter().cloned())
        .collect();
    for base in &all {
        let deadline = Instant::now() + Duration::from_secs(30);
        while state(&client, base).await != "ready" {
            assert!(Instant::now() < deadline, "echo on {base} is not ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut settings = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let want = format!("greeting {round}");
        let start = Instant::now();
        let r = client
            .patch(format!("{a}/admin/plugins/echo/settings"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "greeting": want }))
            .send()
            .await
            .expect("patch");
        assert!(r.status().is_success(), "the settings change was refused");
        let seen = |client: reqwest::Client, base: String| {
            let want = want.clone();
            async move { greeting(&client, &base).await == want }
        };
        settings.push(slowest(&client, &all, start, seen).await);
    }
    report(
        &format!(
            "settings change on A -> the plugin on all {} workers",
            all.len()
        ),
        rounds,
        &mut settings,
    );

    // Sustained writes through every worker at once.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<String> = std::iter::once(a.clone())
        .chain(others.iter().cloned())
        .collect();
    let clients = workers.iter().enumerate().map(|(i, base)| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut enable = i % 2 == 0;
            while Instant::now() < deadline {
                if toggle(&client, &base, &token, enable).await {
                    n += 1;
                }
                enable = !enable;
            }
            n
        })
    });
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap_or(0);
    }
    println!(
        "sustained: {total} admin writes in {seconds} s through {} workers = {:.0} writes/s",
        workers.len(),
        total as f64 / seconds as f64
    );
}
