//! Test plugin that speaks the protocol by hand (blocking I/O, no runtime) to misbehave in ways
//! the runtime never would. The first argument picks the misbehaviour:
//!
//! - `silent`: never connects, so the handshake deadline passes;
//! - `exit-early`: exits with code 3 before connecting;
//! - `bad-token`: handshakes with a wrong token;
//! - `bad-version`: handshakes with protocol major 99;
//! - `garbage`: handshakes, then answers any request with a malformed frame;
//! - `oversized`: handshakes, then answers any request with a frame header announcing 2 GiB;
//! - `deaf`: handshakes, then never reads again (a hung event loop: pings go unanswered).

use plugd_protocol::envelope::encode_request;
use plugd_protocol::message::handshake::{Handshake, Hello, RouteDecl};
use plugd_protocol::{ProtocolVersion, DEFAULT_MAX_FRAME_LEN};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn read_frame(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body)?;
    Ok(body)
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "silent" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        "exit-early" => std::process::exit(3),
        "bad-token" | "bad-version" | "garbage" | "oversized" | "deaf" => {}
        other => {
            eprintln!("unknown mode {other:?}");
            std::process::exit(2);
        }
    }
    let mut stream = UnixStream::connect(env("PLUGD_SOCKET")).expect("connect");
    let hello = Hello {
        protocol: if mode == "bad-version" {
            ProtocolVersion {
                major: 99,
                minor: 0,
            }
        } else {
            ProtocolVersion::CURRENT
        },
        name: env("PLUGD_PLUGIN_NAME"),
        version: "0.0.1".into(),
        epoch: env("PLUGD_EPOCH").parse().expect("epoch"),
        token: if mode == "bad-token" {
            "wrong".into()
        } else {
            env("PLUGD_TOKEN")
        },
        max_frame: DEFAULT_MAX_FRAME_LEN as u32,
        routes: vec![RouteDecl {
            method: "GET".into(),
            path: "/x".into(),
            permission: None,
        }],
        hooks: vec![],
        services: vec![],
        permissions: vec![],
    };
    let frame = encode_request::<Handshake>(0, &hello, DEFAULT_MAX_FRAME_LEN).expect("encode");
    stream.write_all(&frame).expect("send handshake");
    let answer = read_frame(&mut stream).expect("handshake answer");
    eprintln!("handshake answer: {} bytes", answer.len());
    // Wait for a request, then misbehave (the deaf plugin never reads again).
    while let Some(Ok(request)) = (mode != "deaf").then(|| read_frame(&mut stream)) {
        eprintln!(
            "got a request of {} bytes; misbehaving ({mode})",
            request.len()
        );
        let bad: &[u8] = if mode == "garbage" {
            &[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]
        } else {
            &[0x80, 0, 0, 0]
        };
        if stream.write_all(bad).is_err() {
            break;
        }
    }
    // Stay alive: the supervisor must cut us off and kill us, not wait for us to leave.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
