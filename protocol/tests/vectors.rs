//! Golden frames: the bytes in `tests/vectors/*.hex` are the protocol. Each must decode, match
//! the typed message it stands for, and re-encode byte for byte. `PLUGD_BLESS=1` rewrites them
//! (only ever on purpose: a change here is a change of the wire format).

mod common;

use bytes::{Bytes, BytesMut};
use plugd_protocol::envelope::{
    encode_error, encode_notification, encode_request, encode_response,
};
use plugd_protocol::message::control::{
    Cancel, CancelParams, Empty, Ping, Shutdown, ShutdownParams,
};
use plugd_protocol::message::handshake::{Handshake, Lane};
use plugd_protocol::message::http::Http;
use plugd_protocol::message::settings::Settings;
use plugd_protocol::message::stream::{
    AbortParams, CreditParams, DataParams, EndParams, StreamAbort, StreamCredit, StreamData,
    StreamEnd, WsClose, WsCloseParams, WsKind, WsMessage, WsMessageParams,
};
use plugd_protocol::message::NotificationKind;
use plugd_protocol::{FrameCodec, Message, DEFAULT_MAX_FRAME_LEN};
use std::path::PathBuf;
use tokio_util::codec::Decoder;

const MAX: usize = DEFAULT_MAX_FRAME_LEN;

struct Case {
    name: &'static str,
    frame: Bytes,
    check: fn(&Message),
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "handshake_request",
            frame: encode_request::<Handshake>(0, &common::hello(), MAX).expect("encode"),
            check: |m| match m {
                Message::Request(r) => {
                    assert_eq!((r.id, r.method.as_str()), (0, "handshake"));
                    assert_eq!(
                        r.decode_params::<Handshake>().expect("hello"),
                        common::hello()
                    );
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "handshake_welcome",
            frame: encode_response(0, &common::welcome(), MAX).expect("encode"),
            check: |m| match m {
                Message::Response(r) => {
                    let welcome = r.decode_result::<Handshake>().expect("decode").expect("ok");
                    assert_eq!(welcome, common::welcome());
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "handshake_refused",
            frame: encode_error(0, &common::refusal(), MAX).expect("encode"),
            check: |m| match m {
                Message::Response(r) => {
                    let err = r
                        .decode_result::<Handshake>()
                        .expect("decode")
                        .expect_err("error");
                    assert_eq!(err, common::refusal());
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "http_request",
            frame: encode_request::<Http>(7, &common::http_request(), MAX).expect("encode"),
            check: |m| match m {
                Message::Request(r) => {
                    assert_eq!(r.id, 7);
                    assert_eq!(
                        r.decode_params::<Http>().expect("req"),
                        common::http_request()
                    );
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "http_response",
            frame: encode_response(7, &common::http_response(), MAX).expect("encode"),
            check: |m| match m {
                Message::Response(r) => {
                    let resp = r.decode_result::<Http>().expect("decode").expect("ok");
                    assert_eq!(resp, common::http_response());
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "error_with_data",
            frame: encode_error(9, &common::error_with_data(), MAX).expect("encode"),
            check: |m| match m {
                Message::Response(r) => {
                    assert_eq!(
                        r.outcome.as_ref().expect_err("error"),
                        &common::error_with_data()
                    );
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "ping_request",
            frame: encode_request::<Ping>(8, &Empty {}, MAX).expect("encode"),
            check: |m| match m {
                Message::Request(r) => {
                    assert_eq!(r.decode_params::<Ping>().expect("ping"), Empty {})
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "ping_response",
            frame: encode_response(8, &Empty {}, MAX).expect("encode"),
            check: |m| match m {
                Message::Response(r) => {
                    assert_eq!(
                        r.decode_result::<Ping>().expect("decode").expect("ok"),
                        Empty {}
                    );
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "handshake_welcome_with_settings",
            frame: encode_response(0, &common::welcome_with_settings(), MAX).expect("encode"),
            check: |m| match m {
                Message::Response(r) => {
                    let welcome = r.decode_result::<Handshake>().expect("decode").expect("ok");
                    assert_eq!(welcome, common::welcome_with_settings());
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "handshake_request_lanes",
            frame: encode_request::<Handshake>(0, &common::hello_lanes(), MAX).expect("encode"),
            check: |m| match m {
                Message::Request(r) => {
                    let hello = r.decode_params::<Handshake>().expect("hello");
                    assert_eq!(hello, common::hello_lanes());
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "handshake_welcome_lanes",
            frame: encode_response(0, &common::welcome_lanes(), MAX).expect("encode"),
            check: |m| match m {
                Message::Response(r) => {
                    let welcome = r.decode_result::<Handshake>().expect("decode").expect("ok");
                    assert_eq!(welcome, common::welcome_lanes());
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "lane_request",
            frame: encode_request::<Lane>(0, &common::lane_hello(), MAX).expect("encode"),
            check: |m| match m {
                Message::Request(r) => {
                    assert_eq!((r.id, r.method.as_str()), (0, "lane"));
                    assert_eq!(
                        r.decode_params::<Lane>().expect("lane"),
                        common::lane_hello()
                    );
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "settings_request",
            frame: encode_request::<Settings>(12, &common::settings_params(), MAX).expect("encode"),
            check: |m| match m {
                Message::Request(r) => {
                    assert_eq!((r.id, r.method.as_str()), (12, "settings"));
                    assert_eq!(
                        r.decode_params::<Settings>().expect("params"),
                        common::settings_params()
                    );
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "shutdown_request",
            frame: encode_request::<Shutdown>(9, &ShutdownParams { grace_ms: 10_000 }, MAX)
                .expect("encode"),
            check: |m| match m {
                Message::Request(r) => {
                    assert_eq!(r.decode_params::<Shutdown>().expect("p").grace_ms, 10_000)
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "cancel_notification",
            frame: encode_notification::<Cancel>(&CancelParams { id: 7 }, MAX).expect("encode"),
            check: |m| match m {
                Message::Notification(n) => {
                    assert_eq!(n.method, "cancel");
                    assert_eq!(
                        n.decode_params::<Cancel>().expect("p"),
                        CancelParams { id: 7 }
                    );
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "handshake_request_streaming",
            frame: encode_request::<Handshake>(0, &common::hello_streaming(), MAX).expect("encode"),
            check: |m| match m {
                Message::Request(r) => assert_eq!(
                    r.decode_params::<Handshake>().expect("hello"),
                    common::hello_streaming()
                ),
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "http_request_streamed",
            frame: encode_request::<Http>(21, &streamed_request(), MAX).expect("encode"),
            check: |m| match m {
                Message::Request(r) => {
                    assert_eq!(r.decode_params::<Http>().expect("p"), streamed_request())
                }
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "http_response_streamed",
            frame: encode_response(21, &streamed_response(), MAX).expect("encode"),
            check: |m| match m {
                Message::Response(r) => assert_eq!(
                    r.decode_result::<Http>().expect("decode").expect("ok"),
                    streamed_response()
                ),
                other => panic!("{other:?}"),
            },
        },
        Case {
            name: "stream_data",
            frame: encode_notification::<StreamData>(&stream_data(), MAX).expect("encode"),
            check: |m| assert_note::<StreamData>(m, stream_data()),
        },
        Case {
            name: "stream_end",
            frame: encode_notification::<StreamEnd>(&EndParams { id: 21 }, MAX).expect("encode"),
            check: |m| assert_note::<StreamEnd>(m, EndParams { id: 21 }),
        },
        Case {
            name: "stream_abort",
            frame: encode_notification::<StreamAbort>(&stream_abort(), MAX).expect("encode"),
            check: |m| assert_note::<StreamAbort>(m, stream_abort()),
        },
        Case {
            name: "stream_credit",
            frame: encode_notification::<StreamCredit>(&stream_credit(), MAX).expect("encode"),
            check: |m| assert_note::<StreamCredit>(m, stream_credit()),
        },
        Case {
            name: "ws_message",
            frame: encode_notification::<WsMessage>(&ws_message(), MAX).expect("encode"),
            check: |m| assert_note::<WsMessage>(m, ws_message()),
        },
        Case {
            name: "ws_message_piece",
            frame: encode_notification::<WsMessage>(&ws_message_piece(), MAX).expect("encode"),
            check: |m| assert_note::<WsMessage>(m, ws_message_piece()),
        },
        Case {
            name: "ws_close",
            frame: encode_notification::<WsClose>(&ws_close(), MAX).expect("encode"),
            check: |m| assert_note::<WsClose>(m, ws_close()),
        },
    ]
}

fn streamed_request() -> plugd_protocol::message::http::HttpRequest {
    plugd_protocol::message::http::HttpRequest {
        path: "/upload".into(),
        route: "/upload".into(),
        params: Default::default(),
        body: Bytes::new(),
        stream: true,
        ..common::http_request()
    }
}

fn streamed_response() -> plugd_protocol::message::http::HttpResponse {
    plugd_protocol::message::http::HttpResponse {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        body: Bytes::new(),
        stream: true,
    }
}

fn stream_data() -> DataParams {
    DataParams {
        id: 21,
        data: Bytes::from_static(b"data: tick 1\n\n"),
    }
}

fn stream_abort() -> AbortParams {
    AbortParams {
        id: 21,
        message: "the client's body failed".into(),
    }
}

fn stream_credit() -> CreditParams {
    CreditParams {
        id: 21,
        bytes: 131_072,
    }
}

fn ws_message() -> WsMessageParams {
    WsMessageParams {
        id: 22,
        kind: WsKind::Text,
        data: Bytes::from_static(b"hello"),
        more: false,
    }
}

fn ws_message_piece() -> WsMessageParams {
    WsMessageParams {
        id: 22,
        kind: WsKind::Binary,
        data: Bytes::from_static(b"first piece"),
        more: true,
    }
}

fn ws_close() -> WsCloseParams {
    WsCloseParams {
        id: 22,
        code: 1009,
        reason: "message too big".into(),
    }
}

fn assert_note<N>(m: &Message, expected: N::Params)
where
    N: NotificationKind,
    N::Params: PartialEq + std::fmt::Debug,
{
    match m {
        Message::Notification(n) => {
            assert_eq!(n.method, N::NAME);
            assert_eq!(n.decode_params::<N>().expect("params"), expected);
        }
        other => panic!("{other:?}"),
    }
}

fn vector_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(format!("{name}.hex"))
}

fn to_hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn from_hex_lines(text: &str) -> Vec<u8> {
    let digits: String = text.split_whitespace().collect();
    hex::decode(digits).expect("vector files hold hex digits")
}

#[test]
fn golden_frames_decode_and_reencode_byte_for_byte() {
    let bless = std::env::var_os("PLUGD_BLESS").is_some();
    for case in cases() {
        let path = vector_path(case.name);
        if bless {
            std::fs::write(&path, to_hex_lines(&case.frame)).expect("write vector");
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (PLUGD_BLESS=1 creates it)", path.display()));
        let golden = from_hex_lines(&text);
        assert_eq!(
            golden,
            case.frame.to_vec(),
            "{}: today's encoder no longer produces the golden bytes",
            case.name
        );
        let mut buf = BytesMut::from(&golden[..]);
        let message = FrameCodec::default()
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name))
            .expect("a whole frame");
        assert!(
            buf.is_empty(),
            "{}: the frame was consumed whole",
            case.name
        );
        (case.check)(&message);
        assert_eq!(
            message.to_frame().to_vec(),
            golden,
            "{}: re-encoding",
            case.name
        );
    }
}
