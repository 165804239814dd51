//! Streaming through plugd: bodies of any size in bounded memory, backpressure from a slow
//! client, cancels, aborts, reloads, Server-Sent Events and WebSockets, with real plugins.

use crate::harness::{PluginDef, TestSupervisor, DEADLINE};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const GIB: u64 = 1 << 30;

fn stream_plugin(extra: &str) -> PluginDef {
    PluginDef::bin("stream", "plugd-example-stream", &[], extra)
}

/// Peak resident memory of a process so far, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmHWM")
        / 1024
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as u64
}

/// The example's generated body: byte `i` is `i % 251`.
fn pattern(from: u64, len: usize) -> Vec<u8> {
    (from..from + len as u64).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_gibibyte_streams_up_and_down_in_bounded_memory() {
    let sup = TestSupervisor::start(&[stream_plugin("")], &[]).await;
    let plugin_pid = sup.plugin_status("stream").await["pid"]
        .as_u64()
        .expect("pid") as u32;
    let client = reqwest::Client::new();
    let idle = peak_rss_mib(sup.pid());

    // Down: the length is announced and every byte is the pattern's.
    let started = Instant::now();
    let mut response = client
        .get(sup.url(&format!("/plugins/stream/download?size={GIB}")))
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(GIB));
    let mut got: u64 = 0;
    while let Some(chunk) = response.chunk().await.expect("a chunk") {
        // Checking every byte would make the test slow; the first and last of each chunk
        // catch a lost, repeated or reordered chunk.
        assert_eq!(chunk[0], (got % 251) as u8, "chunk at {got}");
        let last = got + chunk.len() as u64 - 1;
        assert_eq!(
            chunk[chunk.len() - 1],
            (last % 251) as u8,
            "chunk end at {last}"
        );
        got += chunk.len() as u64;
    }
    assert_eq!(got, GIB);
    let down = started.elapsed();

    // Up: generated as it is sent, hashed by the plugin as it arrives.
    let mut expected = Sha256::new();
    let piece = pattern(0, 251 * 256);
    let pieces = GIB / piece.len() as u64;
    for _ in 0..pieces {
        expected.update(&piece);
    }
    let expected = hex::encode(expected.finalize());
    let piece = Bytes::from(piece);
    let body = futures_util::stream::iter(
        (0..pieces).map(move |_| Ok::<_, std::io::Error>(piece.clone())),
    );
    let started = Instant::now();
    let answer: serde_json::Value = client
        .post(sup.url("/plugins/stream/sha256"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let up = started.elapsed();
    assert_eq!(answer["bytes"], pieces * 251 * 256);
    assert_eq!(answer["sha256"], expected.as_str());

    let (plugd, plugin) = (peak_rss_mib(sup.pid()), peak_rss_mib(plugin_pid));
    eprintln!("1 GiB down in {down:?}, up in {up:?}; peak RSS plugd {plugd} MiB ({idle} MiB before), plugin {plugin} MiB");
    assert!(
        plugd < 64,
        "plugd peaked at {plugd} MiB ({idle} MiB before the transfers)"
    );
    assert!(plugin < 64, "the plugin peaked at {plugin} MiB");
}

#[tokio::test]
async fn a_slow_client_makes_the_plugin_wait() {
    let sup = TestSupervisor::start(&[PluginDef::echo("echo", "")], &[]).await;
    let mut response = sup
        .get("/plugins/echo/stream/endless?chunks=1024")
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    // Read 1 MiB a second for three seconds; the plugin could produce 64 MiB meanwhile.
    let started = Instant::now();
    let mut read: u64 = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let chunk = response.chunk().await.expect("chunk").expect("more");
        read += chunk.len() as u64;
        let due = Duration::from_secs_f64(read as f64 / (1 << 20) as f64);
        tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
    }
    let produced = sup.get_json("/plugins/echo/stream/produced", 200).await["produced"]
        .as_u64()
        .expect("produced");
    eprintln!("slow client: read {read} bytes, the plugin produced {produced}");
    // What is neither read nor produced-but-waiting is in the kernel's socket buffers and the
    // two stream windows; it does not grow with time.
    assert!(
        produced < read + (16 << 20),
        "the plugin produced {produced} bytes while the client read {read}"
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_the_stream_in_the_plugin() {
    let sup = TestSupervisor::start(&[PluginDef::echo("echo", "")], &[]).await;
    let mut response = sup
        .get("/plugins/echo/stream/endless?every_ms=5")
        .await
        .expect("stream");
    for _ in 0..3 {
        response.chunk().await.expect("chunk").expect("more");
    }
    let hung_up = now_ms();
    drop(response);
    sup.wait_until("the plugin sees its stream end", || async {
        sup.get_json("/plugins/echo/stream/produced", 200).await["cancelled_ms"] != 0
    })
    .await;
    let seen = sup.get_json("/plugins/echo/stream/produced", 200).await["cancelled_ms"]
        .as_u64()
        .expect("ms");
    eprintln!(
        "the cancel reached the plugin {} ms after the hang-up",
        seen.saturating_sub(hung_up)
    );
    assert!(
        seen.saturating_sub(hung_up) <= 100,
        "the plugin saw the hang-up {} ms later",
        seen - hung_up
    );
}

#[tokio::test]
async fn a_plugin_killed_mid_stream_aborts_the_response() {
    let sup = TestSupervisor::start(&[PluginDef::echo("echo", "")], &[]).await;
    let pid = sup.plugin_status("echo").await["pid"]
        .as_u64()
        .expect("pid") as i32;
    let mut response = sup
        .get("/plugins/echo/stream/endless?every_ms=5")
        .await
        .expect("stream");
    response.chunk().await.expect("chunk").expect("more");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match response.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the response ends");
    assert!(
        ended.is_err(),
        "a cut-off body must not end like a complete one"
    );
}

#[tokio::test]
async fn a_reload_lets_an_open_stream_finish() {
    let sup = TestSupervisor::start(&[PluginDef::echo("echo", "")], &[]).await;
    let pid = sup.plugin_status("echo").await["pid"].clone();
    let mut response = sup
        .get("/plugins/echo/stream/endless?chunks=60&every_ms=25")
        .await
        .expect("stream");
    let mut read = response.chunk().await.expect("chunk").expect("more").len();
    // Change the manifest and reload while the stream runs.
    let changed = PluginDef::echo("echo", "[limits]\nrequest_timeout = \"9s\"\n");
    std::fs::write(
        sup.dir().join("plugins/echo/plugin.toml"),
        &changed.manifest,
    )
    .expect("write");
    sup.signal(nix::sys::signal::Signal::SIGHUP);
    sup.wait_until("the new instance serves", || async {
        let s = sup.plugin_status("echo").await;
        s["state"] == "ready" && s["pid"] != pid
    })
    .await;
    assert_eq!(
        sup.get("/plugins/echo/echo/1").await.expect("get").status(),
        200
    );
    while let Some(chunk) = response.chunk().await.expect("the old stream goes on") {
        read += chunk.len();
    }
    assert_eq!(read, 60 * 64 * 1024, "the old instance finished its stream");
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let sup = TestSupervisor::start(&[stream_plugin("")], &[]).await;
    let mut response = sup
        .get("/plugins/stream/ticks?n=4&every_ms=200")
        .await
        .expect("ticks");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "{:?}",
        response.headers()
    );
    let mut text = String::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            arrivals.push((Instant::now(), event));
        }
    }
    assert_eq!(arrivals.len(), 4, "{arrivals:?}");
    for (i, (_, event)) in arrivals.iter().enumerate() {
        assert!(
            event.starts_with(&format!("event: tick\nid: {}\n", i + 1)),
            "{event}"
        );
    }
    let spread = arrivals[3].0 - arrivals[0].0;
    assert!(
        spread >= Duration::from_millis(500),
        "the events arrived together ({spread:?}), not as they were sent"
    );
}

/// A WebSocket to `path` on plugd.
async fn ws(
    sup: &TestSupervisor,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{}{path}", sup.addr());
    tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket handshake")
        .0
}

/// The next message that is not a ping or pong.
async fn next_message(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Message {
    tokio::time::timeout(DEADLINE, socket.next())
        .await
        .expect("a message in time")
        .expect("the socket is open")
        .expect("a message")
}

#[tokio::test]
async fn websockets_echo_ping_close_both_ways_and_refuse_big_messages() {
    let sup = TestSupervisor::start(
        &[PluginDef::echo(
            "echo",
            "[limits]\nmax_ws_message = \"1KiB\"\n",
        )],
        &[],
    )
    .await;
    let mut socket = ws(&sup, "/plugins/echo/ws").await;
    socket.send(Message::text("hello")).await.expect("send");
    assert_eq!(next_message(&mut socket).await, Message::text("hello"));
    socket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    assert_eq!(
        next_message(&mut socket).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
    socket
        .send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(DEADLINE, socket.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("pong");
    assert_eq!(pong, Message::Pong(Bytes::from_static(b"are you there")));

    // The client closes: the plugin gets its code and reason.
    socket
        .close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "bye".into(),
        }))
        .await
        .expect("close");
    sup.wait_until("the plugin saw the close", || async {
        sup.get_json("/plugins/echo/ws/last_close", 200).await == serde_json::json!([4001, "bye"])
    })
    .await;

    // The plugin closes: the client gets its code and reason.
    let mut socket = ws(&sup, "/plugins/echo/ws").await;
    socket
        .send(Message::text("close 4002 done here"))
        .await
        .expect("send");
    match next_message(&mut socket).await {
        Message::Close(Some(frame)) => {
            assert_eq!(
                (u16::from(frame.code), frame.reason.as_str()),
                (4002, "done here")
            );
        }
        other => panic!("expected a close, got {other:?}"),
    }

    // A message over max_ws_message closes the socket with 1009.
    let mut socket = ws(&sup, "/plugins/echo/ws").await;
    let _ = socket.send(Message::binary(vec![7u8; 2048])).await;
    match next_message(&mut socket).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected a close with 1009, got {other:?}"),
    }

    // A plain GET on a WebSocket route is told what the route takes.
    let r = sup.get("/plugins/echo/ws").await.expect("get");
    assert!(r.status().is_client_error(), "{}", r.status());
    let body = r.text().await.expect("body");
    assert!(body.contains("WebSocket connections only"), "{body}");
}

#[tokio::test]
async fn a_websocket_message_bigger_than_the_window_goes_in_pieces() {
    // 200 KiB messages on a 16 KiB window: each crosses in pieces both ways, within credit.
    let sup = TestSupervisor::start(
        &[PluginDef::echo(
            "echo",
            "[limits]\nstream_window = \"16KiB\"\nmax_ws_message = \"256KiB\"\n",
        )],
        &[],
    )
    .await;
    let mut socket = ws(&sup, "/plugins/echo/ws").await;
    let big = pattern(3, 200 * 1024);
    socket
        .send(Message::binary(big.clone()))
        .await
        .expect("send");
    assert_eq!(next_message(&mut socket).await, Message::binary(big));
    let text = "plugd ".repeat(30_000);
    socket
        .send(Message::text(text.clone()))
        .await
        .expect("send");
    assert_eq!(next_message(&mut socket).await, Message::text(text));
}

#[tokio::test]
async fn streams_past_max_streams_are_refused_with_503() {
    let sup = TestSupervisor::start(
        &[PluginDef::echo("echo", "[limits]\nmax_streams = 1\n")],
        &[],
    )
    .await;
    let mut open = sup
        .get("/plugins/echo/stream/endless?every_ms=5")
        .await
        .expect("stream");
    open.chunk().await.expect("chunk").expect("more");
    let refused = sup
        .get("/plugins/echo/stream/endless?every_ms=5")
        .await
        .expect("answer");
    assert_eq!(refused.status(), 503);
    let body = refused.text().await.expect("body");
    assert!(body.contains("max_streams"), "{body}");
    // Plain routes are not streams: they still pass.
    let plain = sup.get("/plugins/echo/echo/1").await.expect("plain");
    assert_eq!(plain.status(), 200);
    // The permit comes back when the stream ends.
    drop(open);
    sup.wait_until("a stream may open again", || async {
        let r = sup
            .get("/plugins/echo/stream/endless?every_ms=5")
            .await
            .expect("answer");
        r.status() == 200
    })
    .await;
}

#[tokio::test]
async fn the_chat_relays_every_message_to_everyone() {
    let sup = TestSupervisor::start(&[stream_plugin("")], &[]).await;
    let mut alice = ws(&sup, "/plugins/stream/chat").await;
    let mut bob = ws(&sup, "/plugins/stream/chat").await;
    // Both are subscribed once an earlier message has reached both.
    let mut n = 0;
    loop {
        n += 1;
        alice
            .send(Message::text(format!("hi {n}")))
            .await
            .expect("send");
        let heard = next_message(&mut bob).await;
        if heard == Message::text(format!("hi {n}")) {
            break;
        }
        assert!(n < 50, "bob never heard alice");
    }
    bob.send(Message::text("hello alice")).await.expect("send");
    loop {
        let heard = next_message(&mut alice).await;
        if heard == Message::text("hello alice") {
            break;
        }
    }
}

#[tokio::test]
async fn a_streaming_route_takes_the_plugins_body_limit() {
    let sup = TestSupervisor::start(
        &[stream_plugin("[limits]\nmax_stream_body = \"1MiB\"\n")],
        &[],
    )
    .await;
    let client = reqwest::Client::new();
    // Announced: refused before anything reaches the plugin, the body not even sent (a client
    // still writing a body plugd will not read can see its write fail before the answer).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(sup.addr())
            .await
            .expect("connect");
        let head = format!(
            "POST /plugins/stream/sha256 HTTP/1.1\r\nHost: plugd\r\nContent-Length: {}\r\n\r\n",
            2 << 20
        );
        raw.write_all(head.as_bytes()).await.expect("head");
        let mut answer = vec![0u8; 12];
        tokio::time::timeout(DEADLINE, raw.read_exact(&mut answer))
            .await
            .expect("answered without the body")
            .expect("read");
        assert_eq!(
            &answer,
            b"HTTP/1.1 413",
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Not announced (chunked): cut off when it passes the limit.
    let chunk = Bytes::from(vec![1u8; 64 * 1024]);
    let body =
        futures_util::stream::iter((0..32).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r = client
        .post(sup.url("/plugins/stream/sha256"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    // Within the limit: hashed.
    let r = client
        .post(sup.url("/plugins/stream/sha256"))
        .body(vec![1u8; 1000])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.expect("json");
    assert_eq!(answer["bytes"], 1000);
}

#[tokio::test]
async fn a_plugin_past_its_credit_is_cut_off_and_others_keep_serving() {
    let sup = TestSupervisor::start(
        &[
            PluginDef::echo("echo", ""),
            PluginDef::raw("ovr", "overrun"),
        ],
        &[],
    )
    .await;
    let outcome = async {
        let mut r = sup.get("/plugins/ovr/x").await?;
        while r.chunk().await?.is_some() {}
        Ok::<_, reqwest::Error>(())
    };
    let outcome = tokio::time::timeout(DEADLINE, outcome).await.expect("ends");
    assert!(outcome.is_err(), "the overrun stream must end aborted");
    sup.wait_until("plugd says why", || async {
        sup.logged(&["ovr", "overran its credit"])
    })
    .await;
    assert_eq!(
        sup.get("/plugins/echo/echo/1").await.expect("get").status(),
        200
    );
    assert_eq!(sup.plugin_status("ovr").await["state"], "ready");
}
