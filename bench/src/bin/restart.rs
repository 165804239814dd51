//! Crash → first successful request, through plugd.
//!
//! `plugd-bench-restart BASE_URL PLUGIN PATH ROUNDS SPACING_MS [standby]`: each round reads the
//! plugin's pid from `/readyz` (with `standby`, once its warm standby is ready too), sends it
//! SIGKILL, and polls `PATH` over one keep-alive connection until it answers 2xx with the old
//! process dead (a zombie, or reaped); it prints each round's time in µs, one per line. Rounds
//! are `SPACING_MS` apart, which should be beyond the plugin's restart `window` and
//! `stable_after`, so every crash is a first one (restarted at once, no backoff).

use std::time::{Duration, Instant};

type Failure = Box<dyn std::error::Error + Send + Sync>;

async fn pid_of(
    client: &reqwest::Client,
    base: &str,
    plugin: &str,
    standby: bool,
) -> Result<u64, Failure> {
    let ready: serde_json::Value = client
        .get(format!("{base}/readyz"))
        .send()
        .await?
        .json()
        .await?;
    let status = &ready["plugins"][plugin];
    if standby && status["standby"]["state"] != "ready" {
        return Err(format!("{plugin} has no standby ready: {status}").into());
    }
    match (status["state"].as_str(), status["pid"].as_u64()) {
        (Some("ready"), Some(pid)) => Ok(pid),
        _ => Err(format!("{plugin} is not ready: {status}").into()),
    }
}

/// Whether process `pid` has died: gone, or a zombie its parent has not reaped yet.
fn dead(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

async fn round(
    client: &reqwest::Client,
    base: &str,
    plugin: &str,
    url: &str,
    standby: bool,
) -> Result<u128, Failure> {
    // The instance must be ready (and this connection warm) before the crash.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        match pid_of(client, base, plugin, standby).await {
            Ok(pid) => break pid,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    client.get(url).send().await?.error_for_status()?;
    let pid_t = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    let crashed = Instant::now();
    nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGKILL)?;
    loop {
        if crashed.elapsed() > Duration::from_secs(20) {
            return Err("no successful answer within 20 s of the crash".into());
        }
        let Ok(response) = client.get(url).send().await else {
            continue;
        };
        let ok = response.status().is_success();
        let _ = response.bytes().await;
        // The request was sent after the SIGKILL, which the old process cannot outlive to
        // answer; its death (a zombie, or reaped) is checked all the same.
        if ok && dead(pid) {
            return Ok(crashed.elapsed().as_micros());
        }
    }
}

async fn run(args: &[String]) -> Result<(), Failure> {
    let (args, standby) = match args {
        [rest @ .., last] if last == "standby" => (rest, true),
        _ => (args, false),
    };
    let [base, plugin, path, rounds, spacing] = args else {
        return Err(
            "usage: plugd-bench-restart BASE_URL PLUGIN PATH ROUNDS SPACING_MS [standby]".into(),
        );
    };
    let (rounds, spacing): (u32, u64) = (rounds.parse()?, spacing.parse()?);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let url = format!("{base}{path}");
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(spacing)).await;
        println!("{}", round(&client, base, plugin, &url, standby).await?);
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args).await {
        eprintln!("plugd-bench-restart: {e}");
        std::process::exit(1);
    }
}
