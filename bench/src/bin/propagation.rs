//! Measures how fast a change made through one plugd worker is live on the others.
//!
//! Usage: `plugd-bench-propagation TOKEN URL_A URL_B [URL_C …]` with a plugin named `echo` on
//! every worker. Prints p50 and p99 of the time from an admin change on A until every other
//! worker runs the new state, over `ROUNDS` changes (default 100), measured twice:
//!
//! - **observed**: each other worker's live stream (`GET /admin/stream`) reports its own state
//!   change the moment it is made, so nothing but the change itself loads the machine;
//! - **polled**: each other worker's `/readyz` is asked every millisecond until it shows the
//!   new state. The polling is load on the same cores, so this figure is the higher one.
//!
//! Then p50 and p99 of the time from a change of `echo`'s `greeting` setting on A until the
//! plugin on every worker (A included) answers with the new value, which needs `echo` to
//! declare `[settings.greeting]`, and the sustained rate of changes per second with clients
//! writing through every worker for `WRITE_SECONDS` (default 5).

use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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

/// How a round learns that every other worker applied the change.
enum Observer {
    /// From each worker's live stream.
    Streams(mpsc::Receiver<Seen>),
    /// By asking each worker's `/readyz` every millisecond.
    Polling,
}

/// Rounds of enabling and disabling `echo` through worker A.
struct Toggles<'a> {
    client: &'a reqwest::Client,
    token: &'a str,
    a: &'a str,
    others: &'a [String],
    rounds: usize,
}

impl Toggles<'_> {
    /// Runs the rounds, each until every other worker applied it, and reports the times.
    async fn run(&self, what: &str, mut observer: Observer) {
        let (mut latencies, mut enables, mut disables) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..self.rounds {
            let enable = round % 2 == 1;
            let want = if enable { "ready" } else { "disabled" };
            let start = Instant::now();
            assert!(
                toggle(self.client, self.a, self.token, enable).await,
                "the change was refused"
            );
            let took = match &mut observer {
                Observer::Streams(seen) => observed(seen, self.others.len(), want, start).await,
                Observer::Polling => {
                    let seen = |client: reqwest::Client, base: String| async move {
                        state(&client, &base).await == want
                    };
                    slowest(self.client, self.others, start, seen).await
                }
            };
            latencies.push(took);
            if enable { &mut enables } else { &mut disables }.push(took);
        }
        report(what, self.rounds, &mut latencies);
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
    }
}

/// A state change of `echo` one worker reported on its own stream: the worker's index among
/// those watched, the state, and when it arrived.
type Seen = (usize, String, Instant);

/// Opens the live stream of every worker in `workers`, keeping `echo`'s state changes each
/// reports about itself; they arrive on the returned channel.
async fn watch(client: &reqwest::Client, token: &str, workers: &[String]) -> mpsc::Receiver<Seen> {
    let (tx, rx) = mpsc::channel(1024);
    let mut opened = Vec::new();
    for (i, base) in workers.iter().enumerate() {
        let response = client
            .get(format!("{base}/admin/stream?plugin=echo&kinds=state"))
            .bearer_auth(token)
            .send()
            .await
            .expect("open the live stream");
        assert!(
            response.status().is_success(),
            "{base} refused its live stream: {}",
            response.status()
        );
        let (tx, (ready_tx, ready_rx)) = (tx.clone(), tokio::sync::oneshot::channel());
        tokio::spawn(follow(i, response, tx, ready_tx));
        opened.push(ready_rx);
    }
    // Every stream said `hello`: changes from here on reach it.
    for ready in opened {
        ready.await.expect("a live stream ended before its hello");
    }
    rx
}

/// Reads one worker's stream: its `hello` names it; then its own `state` events go to `tx`.
async fn follow(
    i: usize,
    mut response: reqwest::Response,
    tx: mpsc::Sender<Seen>,
    hello: tokio::sync::oneshot::Sender<()>,
) {
    let (mut buffer, mut me, mut hello) = (String::new(), None::<String>, Some(hello));
    while let Ok(Some(chunk)) = response.chunk().await {
        let at = Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap_or_default();
            match v["kind"].as_str() {
                Some("hello") => {
                    me = v["worker"].as_str().map(str::to_owned);
                    if let Some(hello) = hello.take() {
                        let _ = hello.send(());
                    }
                }
                Some("state") if me.is_some() && v["worker"].as_str() == me.as_deref() => {
                    let state = v["state"].as_str().unwrap_or_default().to_owned();
                    if tx.send((i, state, at)).await.is_err() {
                        return;
                    }
                }
                _ => {}
            }
        }
    }
}

/// How long after `start` each of the `workers` watched reported `want` (30 s at most).
async fn observed(
    seen: &mut mpsc::Receiver<Seen>,
    workers: usize,
    want: &str,
    start: Instant,
) -> Duration {
    let mut there = vec![false; workers];
    let mut last = start;
    let deadline = tokio::time::Instant::from_std(start + Duration::from_secs(30));
    while there.iter().any(|t| !t) {
        let next = tokio::time::timeout_at(deadline, seen.recv()).await;
        let Ok(Some((i, state, at))) = next else {
            let missing: Vec<usize> = (0..workers).filter(|&i| !there[i]).collect();
            panic!("workers {missing:?} never reported {want}");
        };
        if state == want && at >= start && !there[i] {
            there[i] = true;
            last = last.max(at);
        }
    }
    last - start
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

/// Waits until the plugin is ready on every worker of `all` (30 s at most each).
async fn ready_everywhere(client: &reqwest::Client, all: &[String]) {
    for base in all {
        let deadline = Instant::now() + Duration::from_secs(30);
        while state(client, base).await != "ready" {
            assert!(Instant::now() < deadline, "echo on {base} is not ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
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

    // The rounds begin from the plugin enabled and ready everywhere, whatever an earlier run
    // left.
    assert!(
        toggle(&client, a, token, true).await,
        "the enable was refused"
    );
    let all: Vec<String> = std::iter::once(a.clone())
        .chain(others.iter().cloned())
        .collect();
    ready_everywhere(&client, &all).await;
    let watched = watch(&client, token, others).await;
    let what = format!("propagation A -> {} other workers", others.len());
    let toggles = Toggles {
        client: &client,
        token,
        a,
        others,
        rounds,
    };
    toggles
        .run(&format!("{what}, observed"), Observer::Streams(watched))
        .await;
    toggles
        .run(&format!("{what}, polled"), Observer::Polling)
        .await;

    // Settings: an admin change on A until the plugin's handler sees it on every worker.
    ready_everywhere(&client, &all).await;
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
    let clients = all.iter().enumerate().map(|(i, base)| {
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
        all.len(),
        total as f64 / seconds as f64
    );
}
