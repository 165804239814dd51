//! Test plugin that speaks the protocol by hand (blocking I/O, no runtime) to misbehave in ways
//! the runtime never would. The first argument picks the misbehaviour:
//!
//! - `silent`: never connects, so the handshake deadline passes;
//! - `exit-early`: exits with code 3 before connecting;
//! - `bad-token`: handshakes with a wrong token;
//! - `bad-version`: handshakes with protocol major 99;
//! - `garbage`: handshakes, then answers any request with a malformed frame;
//! - `oversized`: handshakes, then answers any request with a frame header announcing 2 GiB;
//! - `deaf`: handshakes, then never reads again (a hung event loop: pings go unanswered);
//! - `flood`: handshakes, then sends requests (an unknown method and `kv.get`, alternately) as
//!   fast as it can and never reads an answer;
//! - `stray-ids`: handshakes, then sends answers to calls plugd never made;
//! - `routes`: declares `RAW_ROUTES` routes (default 100,000) `/r{i}/{a}/x` in its handshake;
//! - `max-frame-zero`: announces a frame limit of 0 in its handshake;
//! - `deep`: handshakes, then sends a request whose params nest 70 levels deep, writes plugd's
//!   answer to stderr and exits with code 1;
//! - `overrun`: declares the streaming route `/x`, answers each request to it with a streamed
//!   head and then one 2 MiB chunk of body, past the credit plugd gave (answering pings all
//!   the while);
//! - `spew`: handshakes, then writes `RAW_SPEW_MB` MiB (default 256) of lines to stderr as fast
//!   as it can, answering pings all the while;
//! - `lanes`: offers lanes (protocol 1.3), opens three bad ones (a wrong token, lane 99, a
//!   1 GiB first frame) and then lane 1, and answers each `http` request with the name of the
//!   connection it came on (`first` or `lane 1`).

use plugd_protocol::envelope::{encode_request, encode_response};
use plugd_protocol::message::control::{Empty, Ping};
use plugd_protocol::message::handshake::{Handshake, Hello, RouteDecl};
use plugd_protocol::message::kv::{KvGet, KvKey};
use plugd_protocol::{Message, Method, ProtocolVersion, DEFAULT_MAX_FRAME_LEN};
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
        "bad-token" | "bad-version" | "garbage" | "oversized" | "deaf" | "flood" | "stray-ids"
        | "routes" | "max-frame-zero" | "deep" | "spew" | "overrun" | "lanes" => {}
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
        max_frame: if mode == "max-frame-zero" {
            0
        } else {
            DEFAULT_MAX_FRAME_LEN as u32
        },
        routes: if mode == "routes" {
            let n: usize = std::env::var("RAW_ROUTES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(100_000);
            (0..n)
                .map(|i| RouteDecl {
                    method: "GET".into(),
                    path: format!("/r{i}/{{a}}/x"),
                    ..RouteDecl::default()
                })
                .collect()
        } else {
            vec![RouteDecl {
                method: "GET".into(),
                path: "/x".into(),
                stream: mode == "overrun",
                ..RouteDecl::default()
            }]
        },
        hooks: vec![],
        services: vec![],
        permissions: vec![],
        lanes: if mode == "lanes" { 16 } else { 0 },
    };
    let frame = encode_request::<Handshake>(0, &hello, 64 << 20).expect("encode");
    if stream.write_all(&frame).is_err() {
        eprintln!("the supervisor closed the connection during the handshake");
        std::process::exit(4);
    }
    let Ok(answer) = read_frame(&mut stream) else {
        eprintln!("no answer to the handshake");
        std::process::exit(4);
    };
    eprintln!("handshake answer: {} bytes", answer.len());
    match mode.as_str() {
        "flood" => flood(&mut stream),
        "stray-ids" => {
            for id in 1_000_000u64.. {
                let frame = encode_response(id, &Empty {}, 1024).expect("encode");
                if stream.write_all(&frame).is_err() {
                    break;
                }
            }
        }
        "deep" => {
            let mut v = rmpv::Value::from(1);
            for _ in 0..70 {
                v = rmpv::Value::Array(vec![v]);
            }
            let mut body = Vec::new();
            rmpv::encode::write_value(
                &mut body,
                &rmpv::Value::Array(vec![0.into(), 7.into(), "kv.get".into(), v]),
            )
            .expect("encode");
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend(body);
            let _ = stream.write_all(&frame);
            // The call is refused, not the connection: the answer names the bound, and this
            // plugin says what it got and exits (a failure with the answer in its log).
            while let Ok(body) = read_frame(&mut stream) {
                match Message::decode(body.into()) {
                    Ok(Message::Response(response)) if response.id == 7 => {
                        match response.outcome {
                            Err(error) => eprintln!("plugd refused the deep call: {error}"),
                            Ok(_) => eprintln!("plugd answered the deep call with a result"),
                        }
                        std::process::exit(1);
                    }
                    Ok(Message::Request(request)) if request.method == Ping::NAME => {
                        let frame = encode_response(request.id, &Empty {}, 1024).expect("encode");
                        let _ = stream.write_all(&frame);
                    }
                    _ => {}
                }
            }
        }
        "overrun" => overrun(&mut stream),
        "lanes" => lanes(stream.try_clone().expect("clone"), &answer),
        "spew" => {
            let reader = stream.try_clone().expect("clone");
            std::thread::spawn(move || answer_pings(reader));
            spew();
        }
        _ => {}
    }
    // Wait for a request, then misbehave (the deaf plugin never reads again).
    let reads = !matches!(mode.as_str(), "deaf" | "flood" | "spew");
    while let Some(Ok(request)) = reads.then(|| read_frame(&mut stream)) {
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

/// Answers pings, and each `http` request with a streamed head and 1 MiB of body sent without
/// waiting for credit.
fn overrun(stream: &mut UnixStream) {
    use plugd_protocol::envelope::encode_notification;
    use plugd_protocol::message::http::{Http, HttpResponse};
    use plugd_protocol::message::stream::{DataParams, StreamData};
    while let Ok(body) = read_frame(stream) {
        let Ok(Message::Request(request)) = Message::decode(body.into()) else {
            continue;
        };
        let mut frames = Vec::new();
        if request.method == Ping::NAME {
            frames.push(encode_response(request.id, &Empty {}, 1024).expect("encode"));
        } else if request.method == Http::NAME {
            let head = HttpResponse {
                status: 200,
                headers: vec![],
                body: Default::default(),
                stream: true,
            };
            frames.push(encode_response(request.id, &head, 1024).expect("encode"));
            // One chunk costing more than a whole default window: past the credit however
            // fast the client reads (chunks within the window could be covered by credit
            // plugd grants back meanwhile).
            let data = DataParams {
                id: request.id,
                data: vec![b'o'; 2 << 20].into(),
            };
            frames.push(encode_notification::<StreamData>(&data, 4 << 20).expect("encode"));
        }
        for frame in frames {
            if stream.write_all(&frame).is_err() {
                return;
            }
        }
    }
}

/// Sends requests as fast as the socket takes them and never reads an answer.
fn flood(stream: &mut UnixStream) {
    let key = KvKey { key: "k".into() };
    for id in 1u64.. {
        let frame = if id % 2 == 0 {
            encode_request::<KvGet>(id, &key, 1024).expect("encode")
        } else {
            let mut body = Vec::new();
            rmpv::encode::write_value(
                &mut body,
                &rmpv::Value::Array(vec![
                    0.into(),
                    id.into(),
                    "no.such.method".into(),
                    rmpv::Value::Nil,
                ]),
            )
            .expect("encode");
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend(body);
            frame.into()
        };
        if stream.write_all(&frame).is_err() {
            return;
        }
    }
}

/// Answers every ping from the supervisor (and ignores everything else) until the socket closes.
fn answer_pings(mut stream: UnixStream) {
    while let Ok(body) = read_frame(&mut stream) {
        if let Ok(Message::Request(request)) = Message::decode(body.into()) {
            if request.method == Ping::NAME {
                let frame = encode_response(request.id, &Empty {}, 1024).expect("encode");
                if stream.write_all(&frame).is_err() {
                    return;
                }
            }
        }
    }
    std::process::exit(0);
}

/// Writes lines to stderr as fast as it can, `RAW_SPEW_MB` MiB in all, each `RAW_SPEW_LINE`
/// bytes long (default 100).
fn spew() {
    let mb: usize = std::env::var("RAW_SPEW_MB")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    let width: usize = std::env::var("RAW_SPEW_LINE")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let line = format!("{}\n", "spew ".repeat(width.div_ceil(5)));
    let block = line.repeat((64 * 1024) / line.len());
    let mut err = std::io::stderr().lock();
    let mut written = 0;
    while written < mb << 20 {
        if err.write_all(block.as_bytes()).is_err() {
            return;
        }
        written += block.len();
    }
    drop(err);
    // After a pause, so the line is not lost among the suppressed ones.
    std::thread::sleep(Duration::from_millis(1500));
    eprintln!("spewed {mb} MiB");
}

/// Offers lanes, then opens them badly (a wrong token, a lane not asked for, a first frame
/// over the bound) before opening lane 1 properly; answers each `http` request with its
/// connection's name ("first" or "lane 1") and pings on the first connection.
fn lanes(first: UnixStream, welcome: &[u8]) {
    use plugd_protocol::message::handshake::{Lane, LaneHello};
    use plugd_protocol::message::http::{Http, HttpResponse};
    let asked = match Message::decode(welcome.to_vec().into()) {
        Ok(Message::Response(r)) => r
            .decode_result::<Handshake>()
            .ok()
            .and_then(Result::ok)
            .map_or(0, |w| w.lanes),
        _ => 0,
    };
    eprintln!("welcome asks for {asked} lanes");
    let open = |token: String, lane: u32| -> (UnixStream, Result<(), String>) {
        let mut stream = UnixStream::connect(env("PLUGD_SOCKET")).expect("connect a lane");
        let hello = LaneHello {
            epoch: env("PLUGD_EPOCH").parse().expect("epoch"),
            token,
            lane,
        };
        let frame = encode_request::<Lane>(0, &hello, 1024).expect("encode");
        stream.write_all(&frame).expect("send the lane request");
        let answer = read_frame(&mut stream).expect("the lane's answer");
        let outcome = match Message::decode(answer.into()) {
            Ok(Message::Response(r)) => match r.decode_result::<Lane>() {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.message),
                Err(e) => Err(e.to_string()),
            },
            other => Err(format!("{other:?}")),
        };
        (stream, outcome)
    };
    let (_, wrong_token) = open("wrong".into(), 1);
    eprintln!("lane with a wrong token: {wrong_token:?}");
    let (_, not_asked) = open(env("PLUGD_TOKEN"), 99);
    eprintln!("lane 99: {not_asked:?}");
    let mut huge = UnixStream::connect(env("PLUGD_SOCKET")).expect("connect");
    huge.write_all(&(1u32 << 30).to_be_bytes()).expect("header");
    let mut rest = Vec::new();
    let cut = huge.read_to_end(&mut rest);
    eprintln!("lane with a 1 GiB first frame: closed after {cut:?} bytes");
    let mut connections = vec![("first".to_owned(), first.try_clone().expect("clone"))];
    if asked > 0 {
        let (lane, ok) = open(env("PLUGD_TOKEN"), 1);
        eprintln!("lane 1: {ok:?}");
        connections.push(("lane 1".to_owned(), lane));
    }
    let serve = |name: String, mut stream: UnixStream| {
        std::thread::spawn(move || {
            while let Ok(body) = read_frame(&mut stream) {
                let Ok(Message::Request(request)) = Message::decode(body.into()) else {
                    continue;
                };
                let frame = if request.method == Http::NAME {
                    let answer = HttpResponse {
                        status: 200,
                        headers: Vec::new(),
                        body: name.clone().into_bytes().into(),
                        stream: false,
                    };
                    encode_response(request.id, &answer, 1 << 20).expect("encode")
                } else {
                    encode_response(request.id, &Empty {}, 1024).expect("encode")
                };
                if stream.write_all(&frame).is_err() {
                    break;
                }
            }
            std::process::exit(0);
        })
    };
    let threads: Vec<_> = connections
        .into_iter()
        .map(|(name, stream)| serve(name, stream))
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}
