//! Test plugin: echoes requests back and offers routes that misbehave on request (slow, hang,
//! crash, panic). It takes its name from `PLUGD_PLUGIN_NAME`, so one binary can be installed
//! under several names.

use plugd_runtime::{
    HookEvent, HookMode, HookReply, Json, Plugin, Request, Response, ServiceEvent, WsMessage,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Counters {
    /// Memory held on purpose by /alloc.
    hoard: std::sync::Mutex<Vec<Vec<u8>>>,
    /// Files held open on purpose by /fds.
    files: std::sync::Mutex<Vec<std::fs::File>>,
    /// Requests to /slow and /hang currently running.
    in_flight: AtomicU64,
    /// /hang requests whose future was dropped (cancelled by the supervisor).
    cancelled: AtomicU64,
    /// Requests to /compute currently computing.
    computing: AtomicU64,
    /// Bytes /stream/endless has handed to plugd so far.
    produced: AtomicU64,
    /// When /stream/endless last saw its stream end early, in ms since the Unix epoch.
    stream_cancelled_ms: AtomicU64,
    /// The last close code and reason a client sent to /ws.
    last_close: std::sync::Mutex<Option<(u16, String)>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Records when a streamed response ended before its writer did.
struct StreamGuard(Arc<Counters>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.stream_cancelled_ms.store(now_ms(), Ordering::SeqCst);
    }
}

/// Counts a running request and, if dropped before finishing, a cancellation.
struct Running<'a> {
    counters: &'a Counters,
    finished: bool,
}

impl<'a> Running<'a> {
    fn new(counters: &'a Counters) -> Self {
        counters.in_flight.fetch_add(1, Ordering::SeqCst);
        Running {
            counters,
            finished: false,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.counters.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn echo(req: &Request) -> Response {
    let body = serde_json::json!({
        "method": req.method(),
        "path": req.path(),
        "route": req.route(),
        "id": req.param("id"),
        "rest": req.param("rest"),
        "query": req.query_string(),
        "q": req.query("q"),
        "headers": req.headers().collect::<Vec<_>>(),
        "body": String::from_utf8_lossy(req.body()),
        "request_id": req.request_id(),
    });
    // `?status=` answers with that status; otherwise ECHO_STATUS, if set (a version that
    // fails on purpose, for canaries).
    let status = req
        .query("status")
        .or(std::env::var("ECHO_STATUS").ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let response = Response::json(&body)
        .with_status(status)
        .with_header("x-echo", "yes")
        .with_header(
            "x-echo-version",
            std::env::var("ECHO_VERSION").unwrap_or_else(|_| "0.0.1".into()),
        );
    // `?answer_id=` answers with an `x-request-id` of its own, which plugd must not pass on.
    match req.query("answer_id") {
        Some(id) => response.with_header("x-request-id", id),
        None => response,
    }
}

/// Busy-loops until this thread has used `ms` milliseconds of CPU; returns the CPU ms used.
fn spin_cpu(ms: u64) -> u64 {
    let cpu_ms = || {
        let t = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
        // Fields after the command name; utime and stime are the 12th and 13th of them.
        let f: Vec<&str> = t
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // Clock ticks are 100 per second on Linux.
        (tick(11) + tick(12)) * 10
    };
    let start = cpu_ms();
    let mut x = 0u64;
    while cpu_ms() - start < ms {
        for i in 0..100_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
    cpu_ms() - start
}

/// Hook handlers from `ECHO_HOOKS`: `name:mode:priority:behaviour[:closed]` separated by `;`.
/// Behaviours: `echo` (the payload back), `record` (keeps the payload in the KV store under
/// `hook:NAME`), `tag-TEXT` (appends TEXT to a string payload),
/// `answer-TEXT`, `pass`, `reject-REASON`, `hang`, `panic`.
fn with_hooks(mut plugin: Plugin<Counters>) -> Plugin<Counters> {
    let spec = std::env::var("ECHO_HOOKS").unwrap_or_default();
    for item in spec.split(';').filter(|s| !s.is_empty()) {
        let parts: Vec<&str> = item.split(':').collect();
        let (name, mode, priority, behaviour) = (parts[0], parts[1], parts[2], parts[3].to_owned());
        let mode = match mode {
            "collect" => HookMode::Collect,
            "filter" => HookMode::Filter,
            "first" => HookMode::First,
            _ => HookMode::Veto,
        };
        let priority = priority.parse().unwrap_or(0);
        plugin = plugin.hook(name, mode, priority, move |event: HookEvent, _| {
            let behaviour = behaviour.clone();
            async move {
                match behaviour.as_str() {
                    "echo" => HookReply::Value(event.payload),
                    "record" => {
                        let key = format!("hook:{}", event.hook);
                        match event.host.kv().set(&key, event.payload.to_string()).await {
                            Ok(_) => HookReply::Pass,
                            Err(e) => {
                                // Said out loud: a test waiting for the record shows why.
                                eprintln!("cannot record {key}: {e}");
                                HookReply::Reject(format!("cannot record {key}: {e}"))
                            }
                        }
                    }
                    "pass" => HookReply::Pass,
                    "hang" => std::future::pending().await,
                    "panic" => panic!("hook handler panicked on purpose"),
                    b if b.starts_with("tag-") => {
                        let text = event.payload.as_str().unwrap_or_default();
                        HookReply::Value(format!("{text}{}", &b[4..]).into())
                    }
                    b if b.starts_with("answer-") => HookReply::Value(b[7..].to_owned().into()),
                    b if b.starts_with("reject-") => HookReply::Reject(b[7..].to_owned()),
                    other => HookReply::Reject(format!("unknown behaviour {other}")),
                }
            }
        });
        if parts.get(4) == Some(&"closed") {
            plugin = plugin.fail_closed();
        }
    }
    plugin
}

/// Services from `ECHO_SERVICES`: `name:behaviour` separated by `;`. Behaviours: `upper`
/// (upper-cases a string), `relay` (calls the service named by `to` with `payload`), `fail`.
fn with_services(mut plugin: Plugin<Counters>) -> Plugin<Counters> {
    let spec = std::env::var("ECHO_SERVICES").unwrap_or_default();
    for item in spec.split(';').filter(|s| !s.is_empty()) {
        let (name, behaviour) = item.split_once(':').unwrap_or((item, "upper"));
        let behaviour = behaviour.to_owned();
        plugin = plugin.service(name, move |event: ServiceEvent, _| {
            let behaviour = behaviour.clone();
            async move {
                match behaviour.as_str() {
                    "upper" => Ok(event
                        .payload
                        .as_str()
                        .unwrap_or_default()
                        .to_uppercase()
                        .into()),
                    "relay" => {
                        let to = event.payload["to"].as_str().unwrap_or_default().to_owned();
                        event
                            .host
                            .call_service(&to, event.payload.clone())
                            .await
                            .map_err(|e| e.to_string())
                    }
                    _ => Err("this service fails on purpose".to_owned()),
                }
            }
        });
    }
    plugin
}

/// `ECHO_RUNTIME=current_thread` runs the plugin on a single-threaded runtime; otherwise it is
/// multi-threaded, with `ECHO_WORKERS` worker threads when set (tokio's default otherwise).
fn main() -> Result<(), plugd_runtime::Error> {
    let mut builder = match std::env::var("ECHO_RUNTIME").as_deref() {
        Ok("current_thread") => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = std::env::var("ECHO_WORKERS")
                .ok()
                .and_then(|n| n.parse().ok())
            {
                b.worker_threads(n);
            }
            b
        }
    };
    builder
        .enable_all()
        .build()
        .map_err(plugd_runtime::Error::Io)?
        .block_on(serve())
}

async fn serve() -> Result<(), plugd_runtime::Error> {
    let name = std::env::var("PLUGD_PLUGIN_NAME").unwrap_or_else(|_| "echo".into());
    let plugin = with_services(with_hooks(
        Plugin::new(
            name,
            std::env::var("ECHO_VERSION").unwrap_or_else(|_| "0.0.1".into()),
        )
        .with_state(Counters::default()),
    ));
    plugin
        .get("/echo/{id}", |req: Request, _| async move { echo(&req) })
        .post("/echo/{id}", |req: Request, _| async move { echo(&req) })
        .route("PUT", "/files/{*rest}", |req: Request, _| async move {
            echo(&req)
        })
        .post(
            "/bytes",
            |req: Request, _| async move { req.body().to_vec() },
        )
        .get("/slow", |req: Request, c: Arc<Counters>| async move {
            let mut running = Running::new(&c);
            let ms = req.query("ms").and_then(|s| s.parse().ok()).unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            running.finished = true;
            format!("slept {ms} ms")
        })
        .get("/hang", |_req: Request, c: Arc<Counters>| async move {
            let _running = Running::new(&c);
            std::future::pending::<()>().await;
            "unreachable"
        })
        .get("/counters", |_req: Request, c: Arc<Counters>| async move {
            Json(serde_json::json!({
                "in_flight": c.in_flight.load(Ordering::SeqCst),
                "cancelled": c.cancelled.load(Ordering::SeqCst),
            }))
        })
        .get("/pid", |_req: Request, _| async {
            std::process::id().to_string()
        })
        // A route guarded by a permission, answering with the caller plugd verified.
        .permission("echo.secret", "read the echo plugin's secret")
        .get("/secret", |req: Request, _| async move {
            Json(serde_json::json!({
                "caller": req.caller(),
                "permissions": req.caller_permissions(),
                "authorization_seen": req.header("authorization").is_some(),
            }))
        })
        .require("echo.secret")
        // Calls to other plugins through the supervisor.
        .post("/call/{service}", |req: Request, _| async move {
            let payload: serde_json::Value = req.json()?;
            let service = req.param("service").unwrap_or_default();
            match req.host().call_service(service, payload).await {
                Ok(value) => Ok(Json(value)),
                Err(e) => Err(plugd_runtime::HttpError::new(502, e.to_string())),
            }
        })
        .post("/fire/{hook}", |req: Request, _| async move {
            let payload: serde_json::Value = req.json()?;
            let answer = req
                .host()
                .fire_hook(req.param("hook").unwrap_or_default(), payload)
                .await?;
            Ok::<_, plugd_runtime::HttpError>(Json(answer))
        })
        // The key-value store, for the store tests.
        .route("PUT", "/kv/{key}", |req: Request, _| async move {
            let key = req.param("key").unwrap_or_default().to_owned();
            let value = req.body().to_vec();
            let version = match req.query("ttl_ms").and_then(|t| t.parse().ok()) {
                Some(ms) => {
                    req.kv()
                        .set_with_ttl(&key, value, Duration::from_millis(ms))
                        .await?
                }
                None => req.kv().set(&key, value).await?,
            };
            Ok::<_, plugd_runtime::HttpError>(version.to_string())
        })
        .get("/kv/{key}", |req: Request, _| async move {
            let key = req.param("key").unwrap_or_default();
            match req.kv().get_versioned(key).await? {
                Some((value, version)) => {
                    Ok(Response::bytes(value).with_header("x-version", version.to_string()))
                }
                None => Err(plugd_runtime::HttpError::not_found(format!("no key {key}"))),
            }
        })
        .delete("/kv/{key}", |req: Request, _| async move {
            let deleted = req
                .kv()
                .delete(req.param("key").unwrap_or_default())
                .await?;
            Ok::<_, plugd_runtime::HttpError>(deleted.to_string())
        })
        .get("/kvlist", |req: Request, _| async move {
            let prefix = req.query("prefix").unwrap_or_default();
            let entries = req.kv().list(&prefix).await?;
            let keys: Vec<String> = entries.into_iter().map(|(k, _, _)| k).collect();
            Ok::<_, plugd_runtime::HttpError>(Json(keys))
        })
        .post("/kvcas/{key}", |req: Request, _| async move {
            let key = req.param("key").unwrap_or_default();
            let expected = req.query("expected").and_then(|v| v.parse().ok());
            let result = req
                .kv()
                .compare_and_set(key, expected, req.body().to_vec())
                .await?;
            Ok::<_, plugd_runtime::HttpError>(Json(match result {
                Ok(version) => serde_json::json!({ "ok": true, "version": version }),
                Err(current) => serde_json::json!({ "ok": false, "version": current }),
            }))
        })
        // Misbehaviour for the resource-limit tests.
        .get("/alloc", |req: Request, c: Arc<Counters>| async move {
            let mb = req
                .query("mb")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1usize);
            for _ in 0..mb {
                // Touch every page so the memory is really used, not just reserved.
                c.hoard
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(vec![1u8; 1 << 20]);
            }
            format!("holding {mb} MiB more")
        })
        // Computes for `ms` milliseconds right in the handler, without ever waiting: a heavy
        // handler, as the runtime sees it. With `rounds=N`, in N rounds that each first yield
        // (so the handler waits before it computes) and then compute for ms/N.
        .get("/compute", |req: Request, c: Arc<Counters>| async move {
            let ms = req.query("ms").and_then(|s| s.parse().ok()).unwrap_or(5u64);
            let rounds = req.query("rounds").and_then(|s| s.parse().ok());
            let spin = |ms: u64| {
                c.computing.fetch_add(1, Ordering::SeqCst);
                let start = std::time::Instant::now();
                while start.elapsed() < Duration::from_millis(ms) {
                    std::hint::spin_loop();
                }
                c.computing.fetch_sub(1, Ordering::SeqCst);
            };
            match rounds {
                Some(rounds) if rounds > 0 => {
                    for _ in 0..rounds {
                        tokio::task::yield_now().await;
                        spin(ms / rounds);
                    }
                }
                _ => spin(ms),
            }
            format!("computed for {ms} ms")
        })
        // Waits once, then says whether it goes on in the task it started in (the plugin's
        // reader, which polls a handler first) or in another.
        .get("/where", |_, _| async move {
            let before = tokio::task::try_id();
            tokio::task::yield_now().await;
            if tokio::task::try_id() == before {
                "the task it started in"
            } else {
                "another task"
            }
        })
        .get("/computing", |_, c: Arc<Counters>| async move {
            c.computing.load(Ordering::SeqCst).to_string()
        })
        .get("/spin", |req: Request, _| async move {
            let ms = req
                .query("ms")
                .and_then(|s| s.parse().ok())
                .unwrap_or(100u64);
            let cpu_ms = tokio::task::spawn_blocking(move || spin_cpu(ms))
                .await
                .unwrap_or(0);
            format!("spun {cpu_ms} ms of CPU")
        })
        .get("/fork", |req: Request, _| async move {
            let n = req
                .query("n")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1usize);
            let mut started = 0;
            let mut error = String::new();
            for _ in 0..n {
                match std::process::Command::new("sleep").arg("30").spawn() {
                    Ok(_) => started += 1,
                    Err(e) => {
                        error = e.to_string();
                        break;
                    }
                }
            }
            Json(serde_json::json!({ "started": started, "error": error }))
        })
        // A daemon that leaves the plugin's process group and session: plugd must still end
        // it when this instance ends. Answers the daemon's pid.
        .get("/daemon", |_req: Request, _| async move {
            let out = tokio::process::Command::new("sh")
                .args([
                    "-c",
                    "setsid sleep 300 >/dev/null 2>&1 </dev/null & echo $!",
                ])
                .output()
                .await
                .map_err(|e| plugd_runtime::HttpError::internal(e.to_string()))?;
            Ok::<_, plugd_runtime::HttpError>(
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            )
        })
        .get("/fds", |req: Request, c: Arc<Counters>| async move {
            let n = req
                .query("n")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1usize);
            let mut files = c.files.lock().unwrap_or_else(|e| e.into_inner());
            let mut error = String::new();
            for _ in 0..n {
                match std::fs::File::open("/dev/null") {
                    Ok(f) => files.push(f),
                    Err(e) => {
                        error = e.to_string();
                        break;
                    }
                }
            }
            Json(serde_json::json!({ "held": files.len(), "error": error }))
        })
        .get("/crash", |_req: Request, _| async {
            eprintln!("crashing on purpose");
            std::process::exit(7);
            #[allow(unreachable_code)]
            ""
        })
        .get("/panic", |_req: Request, _| async {
            panic!("boom");
            #[allow(unreachable_code)]
            ""
        })
        .get("/big", |req: Request, _| async move {
            let n = req
                .query("bytes")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0usize);
            vec![b'x'; n]
        })
        // Streams 64 KiB chunks for as long as the client reads (or `chunks` of them), counting
        // what it produced; an early end is recorded with its time.
        .get(
            "/stream/endless",
            |req: Request, c: Arc<Counters>| async move {
                let chunks: u64 = req
                    .query("chunks")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX);
                let every_ms: u64 = req
                    .query("every_ms")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                c.produced.store(0, Ordering::SeqCst);
                c.stream_cancelled_ms.store(0, Ordering::SeqCst);
                let (writer, response) = Response::channel("application/octet-stream");
                tokio::spawn(async move {
                    let guard = StreamGuard(c.clone());
                    let chunk = bytes::Bytes::from(vec![b'z'; 64 * 1024]);
                    for _ in 0..chunks {
                        if writer.send(chunk.clone()).await.is_err() {
                            return; // the guard records the end
                        }
                        c.produced.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                        if every_ms > 0 {
                            tokio::time::sleep(Duration::from_millis(every_ms)).await;
                        }
                    }
                    std::mem::forget(guard);
                });
                response
            },
        )
        .stream()
        .get(
            "/stream/produced",
            |_req: Request, c: Arc<Counters>| async move {
                Json(serde_json::json!({
                    "produced": c.produced.load(Ordering::SeqCst),
                    "cancelled_ms": c.stream_cancelled_ms.load(Ordering::SeqCst),
                }))
            },
        )
        // Echoes WebSocket messages; "close CODE REASON" makes it close the socket itself.
        .websocket("/ws", |_req, mut socket, c: Arc<Counters>| async move {
            while let Some(message) = socket.recv().await {
                let reply = match message {
                    WsMessage::Text(text) => {
                        if let Some(rest) = text.strip_prefix("close ") {
                            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                            let _ = socket.close(code.parse().unwrap_or(1000), reason).await;
                            return;
                        }
                        WsMessage::Text(text)
                    }
                    WsMessage::Binary(data) => WsMessage::Binary(data),
                    WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                    WsMessage::Close(code, reason) => {
                        *c.last_close.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some((code, reason));
                        return;
                    }
                };
                if socket.send(reply).await.is_err() {
                    return;
                }
            }
        })
        .get(
            "/ws/last_close",
            |_req: Request, c: Arc<Counters>| async move {
                let last = c
                    .last_close
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                Json(serde_json::json!(last))
            },
        )
        // Its settings as it has them now, secrets included: the tests compare what arrived.
        .get("/settings", |req: Request, _| async move {
            Json(serde_json::Value::Object(
                req.host().settings().values().clone(),
            ))
        })
        // Refuses settings whose `greeting` is "refuse", as a plugin checking new values would.
        .on_settings_changed(|settings, changed, _| async move {
            eprintln!("settings changed: {}", changed.join(", "));
            match settings.get::<String>("greeting").as_deref() {
                Some("refuse") => Err("greeting \"refuse\" is not a greeting".into()),
                _ => Ok(()),
            }
        })
        .run()
        .await
}
