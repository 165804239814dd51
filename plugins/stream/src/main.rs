//! Example plugin `stream`: bodies of any size with bounded memory, Server-Sent Events and a
//! WebSocket chat.
//!
//! Routes (mounted at `/plugins/stream`):
//! - `GET /download?size=BYTES` — a generated body of that size (default 1 MiB), sent in
//!   64 KiB chunks as the client reads it, with its `content-length`.
//! - `POST /sha256` — hashes the request body as it arrives and answers
//!   `{"bytes": N, "sha256": "…"}`; the body may be of any size.
//! - `GET /ticks?n=N&every_ms=MS` — `n` Server-Sent Events (default 5), one every `every_ms`
//!   milliseconds (default 1000), each with an id.
//! - `GET /echo` (WebSocket) — sends every text and binary message back.
//! - `GET /chat` (WebSocket) — every text message goes to everyone connected.

use bytes::Bytes;
use futures_util::stream;
use plugd_runtime::{HttpError, Json, Plugin, Request, Response, SseEvent, WebSocket, WsMessage};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Chunk size of generated downloads.
const CHUNK: usize = 64 * 1024;

/// Chunks the upload's reader may be ahead of its hasher.
const HASH_QUEUE: usize = 8;

/// Messages the chat keeps for a reader that is behind; past that it skips ahead.
const CHAT_BACKLOG: usize = 64;

struct Chat(broadcast::Sender<String>);

fn query_u64(req: &Request, name: &str, default: u64) -> Result<u64, HttpError> {
    match req.query(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| HttpError::bad_request(format!("{name}={v:?} is not a number"))),
    }
}

/// The generated body: byte `i` is `i % 251`, so a client can check what it got.
fn download(req: Request) -> Result<Response, HttpError> {
    let size = query_u64(&req, "size", 1 << 20)?;
    let pattern: Bytes = (0..CHUNK + 251).map(|i| (i % 251) as u8).collect();
    let chunks = stream::unfold(0u64, move |sent| {
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
    Ok(Response::stream("application/octet-stream", chunks)
        .with_header("content-length", size.to_string()))
}

async fn sha256(req: Request) -> Result<Json<serde_json::Value>, HttpError> {
    let mut body = req
        .body_stream()
        .ok_or_else(|| HttpError::internal("the route streams, so its body is a stream"))?;
    // Hashing is CPU work: it runs on a thread of its own, so the plugin's one event-loop
    // thread goes on reading the next chunks meanwhile (at most HASH_QUEUE chunks ahead).
    let (chunks, mut queued) = tokio::sync::mpsc::channel::<Bytes>(HASH_QUEUE);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut hash = Sha256::new();
        while let Some(chunk) = queued.blocking_recv() {
            hash.update(&chunk);
        }
        hex::encode(hash.finalize())
    });
    let mut bytes = 0u64;
    while let Some(chunk) = body.chunk().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        if chunks.send(chunk).await.is_err() {
            break;
        }
    }
    drop(chunks);
    let sha256 = hasher
        .await
        .map_err(|e| HttpError::internal(format!("the hasher failed: {e}")))?;
    Ok(Json(
        serde_json::json!({ "bytes": bytes, "sha256": sha256 }),
    ))
}

fn ticks(req: Request) -> Result<Response, HttpError> {
    let n = query_u64(&req, "n", 5)?;
    let every = Duration::from_millis(query_u64(&req, "every_ms", 1000)?);
    let (events, response) = Response::sse_channel();
    tokio::spawn(async move {
        for i in 1..=n {
            let sent_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            let event = SseEvent::data(format!("{{\"tick\":{i},\"sent_us\":{sent_ms}}}"))
                .event("tick")
                .id(i.to_string());
            if events.send(event).await.is_err() {
                return; // The client went away.
            }
            if i < n {
                tokio::time::sleep(every).await;
            }
        }
    });
    Ok(response)
}

async fn echo(mut socket: WebSocket) {
    while let Some(message) = socket.recv().await {
        let reply = match message {
            WsMessage::Text(text) => WsMessage::Text(text),
            WsMessage::Binary(data) => WsMessage::Binary(data),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            WsMessage::Close(..) => return,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

async fn chat(mut socket: WebSocket, room: Arc<Chat>) {
    let mut heard = room.0.subscribe();
    loop {
        tokio::select! {
            message = socket.recv() => match message {
                Some(WsMessage::Text(text)) => {
                    let _ = room.0.send(text);
                }
                Some(WsMessage::Close(..)) | None => return,
                Some(_) => {}
            },
            said = heard.recv() => match said {
                Ok(text) => {
                    if socket.send(WsMessage::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = format!("(missed {n} messages)");
                    if socket.send(WsMessage::Text(note)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

// One thread: a chunk or a WebSocket message passes from the connection's reader to its
// handler and back without waking another thread (the echo's round trip halves).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), plugd_runtime::Error> {
    Plugin::new("stream", env!("CARGO_PKG_VERSION"))
        .with_state(Chat(broadcast::channel(CHAT_BACKLOG).0))
        .get("/download", |req: Request, _| async move { download(req) })
        .stream()
        .post("/sha256", |req: Request, _| sha256(req))
        .stream()
        .get("/ticks", |req: Request, _| async move { ticks(req) })
        .stream()
        .websocket("/echo", |_req, socket, _| echo(socket))
        .websocket("/chat", |_req, socket, room: Arc<Chat>| chat(socket, room))
        .run()
        .await
}
