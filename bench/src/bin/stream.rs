//! The streaming benchmark's two halves.
//!
//! `plugd-bench-stream serve --tcp ADDR | --unix PATH` serves, in-process with axum, the same
//! streaming handlers as the `stream` example plugin at the same paths (the baseline, direct or
//! behind nginx): `GET /plugins/stream/download?size=N`, `POST /plugins/stream/sha256`,
//! `GET /plugins/stream/ticks?n=N&every_ms=MS` (events carry the microsecond they were made)
//! and the WebSocket echo `GET /plugins/stream/echo`.
//!
//! `plugd-bench-stream measure http://HOST:PORT SIZE` runs every measure against one server and
//! prints one line: download and upload MB/s of a SIZE-byte body, SSE latency p50 and p99 (µs,
//! from the handler making an event to the client parsing it), WebSocket echo round trip p50
//! and p99 (µs) and WebSocket messages/s with 64 in flight.

use axum::body::Body;
use axum::extract::ws::{Message as AxumMessage, WebSocket, WebSocketUpgrade};
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

const CHUNK: usize = 64 * 1024;

type Params = Query<HashMap<String, String>>;

fn number(params: &HashMap<String, String>, name: &str, default: u64) -> u64 {
    params
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

fn pattern() -> bytes::Bytes {
    (0..CHUNK + 251).map(|i| (i % 251) as u8).collect()
}

async fn download(Query(params): Params) -> Response {
    let size = number(&params, "size", 1 << 20);
    let pattern = pattern();
    let chunks = futures_util::stream::unfold(0u64, move |sent| {
        let pattern = pattern.clone();
        async move {
            if sent >= size {
                return None;
            }
            let len = (size - sent).min(CHUNK as u64) as usize;
            let start = (sent % 251) as usize;
            let chunk = pattern.slice(start..start + len);
            Some((Ok::<_, std::convert::Infallible>(chunk), sent + len as u64))
        }
    });
    (
        [
            ("content-type", "application/octet-stream".to_owned()),
            ("content-length", size.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

async fn sha256(body: Body) -> Response {
    let mut stream = body.into_data_stream();
    let (mut hash, mut bytes) = (Sha256::new(), 0u64);
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return (axum::http::StatusCode::BAD_REQUEST, "body failed").into_response();
        };
        bytes += chunk.len() as u64;
        hash.update(&chunk);
    }
    axum::Json(serde_json::json!({"bytes": bytes, "sha256": hex::encode(hash.finalize())}))
        .into_response()
}

async fn ticks(Query(params): Params) -> Response {
    let n = number(&params, "n", 5);
    let every = Duration::from_millis(number(&params, "every_ms", 1000));
    let events = futures_util::stream::unfold(1u64, move |i| async move {
        if i > n {
            return None;
        }
        if i > 1 {
            tokio::time::sleep(every).await;
        }
        let event = format!(
            "event: tick\nid: {i}\ndata: {{\"tick\":{i},\"sent_us\":{}}}\n\n",
            now_us()
        );
        Some((Ok::<_, std::convert::Infallible>(event), i + 1))
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(events),
    )
        .into_response()
}

async fn echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            let reply = match message {
                AxumMessage::Text(_) | AxumMessage::Binary(_) => message,
                AxumMessage::Close(_) => return,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                return;
            }
        }
    })
}

fn app() -> Router {
    Router::new()
        .route("/plugins/stream/download", get(download))
        .route("/plugins/stream/sha256", post(sha256))
        .route("/plugins/stream/ticks", get(ticks))
        .route("/plugins/stream/echo", get(echo))
}

async fn serve(args: &[&str]) -> std::io::Result<()> {
    match args {
        ["--tcp", addr] => {
            // No Nagle delay on small writes (SSE events, WebSocket echoes), as plugd's
            // listener and nginx's Unix socket have none.
            let listener = tokio::net::TcpListener::bind(addr).await?.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app()).await
        }
        ["--unix", path] => {
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path)?;
            axum::serve(listener, app()).await
        }
        _ => usage(),
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// MB/s (10⁶ bytes) of downloading `size` bytes, checking the length.
async fn measure_download(client: &reqwest::Client, base: &str, size: u64) -> Result<f64, Failure> {
    let started = Instant::now();
    let response = client
        .get(format!("{base}/plugins/stream/download?size={size}"))
        .send()
        .await?
        .error_for_status()?;
    let mut body = response.bytes_stream();
    let mut got = 0u64;
    while let Some(chunk) = body.next().await {
        got += chunk?.len() as u64;
    }
    if got != size {
        return Err(format!("downloaded {got} bytes of {size}").into());
    }
    Ok(size as f64 / 1e6 / started.elapsed().as_secs_f64())
}

/// MB/s of uploading `size` bytes (chunked) to the hashing handler, checking its count.
async fn measure_upload(client: &reqwest::Client, base: &str, size: u64) -> Result<f64, Failure> {
    let chunk = bytes::Bytes::from(vec![7u8; CHUNK]);
    let pieces = size.div_ceil(CHUNK as u64);
    let body = futures_util::stream::iter((0..pieces).map(move |i| {
        let len = (size - i * CHUNK as u64).min(CHUNK as u64) as usize;
        Ok::<_, std::io::Error>(chunk.slice(..len))
    }));
    let started = Instant::now();
    let answer: serde_json::Value = client
        .post(format!("{base}/plugins/stream/sha256"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let elapsed = started.elapsed();
    if answer["bytes"] != size {
        return Err(format!("the server hashed {} bytes of {size}", answer["bytes"]).into());
    }
    Ok(size as f64 / 1e6 / elapsed.as_secs_f64())
}

/// The `q` quantile of `values` (sorted here).
fn quantile(values: &mut [u128], q: f64) -> u128 {
    values.sort_unstable();
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[i]
}

/// SSE latencies in µs: from the handler making each event to the client parsing it.
async fn measure_sse(client: &reqwest::Client, base: &str) -> Result<Vec<u128>, Failure> {
    let n = 400;
    let response = client
        .get(format!("{base}/plugins/stream/ticks?n={n}&every_ms=2"))
        .send()
        .await?
        .error_for_status()?;
    let mut body = response.bytes_stream();
    let mut pending = Vec::new();
    let mut latencies = Vec::with_capacity(n);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let arrived = now_us();
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let sent = text
                .split("\"sent_us\":")
                .nth(1)
                .and_then(|rest| rest.trim_end_matches(['}', '\n']).parse::<u128>().ok())
                .ok_or_else(|| format!("an event without its time: {text:?}"))?;
            latencies.push(arrived.saturating_sub(sent));
        }
    }
    if latencies.len() != n {
        return Err(format!("{} events of {n}", latencies.len()).into());
    }
    Ok(latencies)
}

/// WebSocket echo round trips in µs (one at a time), then messages/s with 64 in flight.
async fn measure_ws(base: &str) -> Result<(Vec<u128>, f64), Failure> {
    let url = format!("{}/plugins/stream/echo", base.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
    let mut rtts = Vec::new();
    for i in 0..2000 {
        let started = Instant::now();
        socket.send(Message::text(format!("ping {i:>24}"))).await?;
        match socket.next().await {
            Some(Ok(Message::Text(_))) => rtts.push(started.elapsed().as_micros()),
            other => return Err(format!("expected the echo, got {other:?}").into()),
        }
    }
    let (total, window) = (40_000, 64);
    let started = Instant::now();
    let (mut sent, mut received) = (0, 0);
    while received < total {
        while sent < total && sent - received < window {
            socket
                .feed(Message::text(format!("msg {sent:>28}")))
                .await?;
            sent += 1;
        }
        socket.flush().await?;
        match socket.next().await {
            Some(Ok(Message::Text(_))) => received += 1,
            other => return Err(format!("expected an echo, got {other:?}").into()),
        }
    }
    let rate = f64::from(total) / started.elapsed().as_secs_f64();
    let _ = socket.close(None).await;
    Ok((rtts, rate))
}

async fn measure(base: &str, size: u64) -> Result<(), Failure> {
    let client = reqwest::Client::new();
    let down = measure_download(&client, base, size).await?;
    let up = measure_upload(&client, base, size).await?;
    let mut sse = measure_sse(&client, base).await?;
    let (mut rtt, rate) = measure_ws(base).await?;
    println!(
        "{down:.0} {up:.0} {} {} {} {} {rate:.0}",
        quantile(&mut sse, 0.5),
        quantile(&mut sse, 0.99),
        quantile(&mut rtt, 0.5),
        quantile(&mut rtt, 0.99),
    );
    Ok(())
}

fn usage() -> ! {
    eprintln!(
        "usage: plugd-bench-stream serve --tcp ADDR | serve --unix PATH | measure BASE_URL SIZE"
    );
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        ["serve", ref rest @ ..] => {
            if let Err(e) = serve(rest).await {
                eprintln!("plugd-bench-stream: {e}");
                std::process::exit(1);
            }
        }
        ["measure", base, size] => {
            let Ok(size) = size.parse() else { usage() };
            if let Err(e) = measure(base, size).await {
                eprintln!("plugd-bench-stream: {base}: {e}");
                std::process::exit(1);
            }
        }
        _ => usage(),
    }
}
