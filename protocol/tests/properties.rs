//! Property tests: every message round-trips, and no byte string makes the decoder panic or
//! allocate past its limit.

mod common;

use bytes::{Bytes, BytesMut};
use plugd_protocol::envelope::{
    encode_error, encode_notification, encode_request, encode_response,
};
use plugd_protocol::message::control::{Cancel, CancelParams, Shutdown, ShutdownParams};
use plugd_protocol::message::handshake::{Handshake, Hello, HookDecl, HookMode, RouteDecl};
use plugd_protocol::message::http::{Http, HttpRequest, HttpResponse};
use plugd_protocol::{ErrorObject, FrameCodec, Message, ProtocolVersion};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

const MAX: usize = 1 << 20;

fn decode_one(frame: &[u8]) -> Message {
    let mut buf = BytesMut::from(frame);
    let message = FrameCodec::new(MAX)
        .decode(&mut buf)
        .expect("valid frame")
        .expect("whole frame");
    assert!(buf.is_empty());
    assert_eq!(
        message.to_frame().as_ref(),
        frame,
        "raw re-encoding is exact"
    );
    message
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((".{0,12}", ".{0,24}"), 0..6)
}

fn http_request() -> impl Strategy<Value = HttpRequest> {
    (
        ".{0,16}",
        "[A-Z]{1,7}",
        "/.{0,40}",
        prop::collection::btree_map(".{0,8}", ".{0,16}", 0..4),
        ".{0,30}",
        pairs(),
        prop::collection::vec(any::<u8>(), 0..512),
        any::<u64>(),
    )
        .prop_map(
            |(request_id, method, path, params, query, headers, body, deadline)| HttpRequest {
                request_id,
                method,
                route: path.clone(),
                path,
                params,
                query,
                headers,
                body: Bytes::from(body),
                deadline_unix_ms: deadline,
                stream: deadline % 2 == 0,
                websocket: deadline % 3 == 0,
            },
        )
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<(u16, u16)>(),
        ".{0,16}",
        any::<u64>(),
        "[0-9a-f]{0,64}",
        any::<u32>(),
        prop::collection::vec(("[A-Z]{1,6}", "/.{0,20}", any::<i32>()), 0..5),
    )
        .prop_map(
            |((major, minor), name, epoch, token, max_frame, routes)| Hello {
                protocol: ProtocolVersion { major, minor },
                version: name.clone(),
                name,
                epoch,
                token,
                max_frame,
                hooks: routes
                    .iter()
                    .map(|(_, p, prio)| HookDecl {
                        name: p.clone(),
                        mode: HookMode::Filter,
                        priority: *prio,
                        fail_closed: *prio % 2 == 0,
                    })
                    .collect(),
                routes: routes
                    .into_iter()
                    .map(|(method, path, _)| RouteDecl {
                        stream: path.len() % 2 == 0,
                        max_body: (path.len() % 3 == 0).then_some(path.len() as u64),
                        method,
                        path,
                        ..RouteDecl::default()
                    })
                    .collect(),
                services: vec![],
                permissions: vec![],
                lanes: max_frame % 5,
            },
        )
}

proptest! {
    #[test]
    fn http_requests_round_trip(id in any::<u64>(), req in http_request()) {
        let frame = encode_request::<Http>(id, &req, MAX).expect("encode");
        match decode_one(&frame) {
            Message::Request(r) => {
                prop_assert_eq!(r.id, id);
                prop_assert_eq!(r.decode_params::<Http>().expect("decode"), req);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn http_responses_round_trip(id in any::<u64>(), status in any::<u16>(), headers in pairs(),
                                 body in prop::collection::vec(any::<u8>(), 0..512)) {
        let resp = HttpResponse { status, headers, stream: body.len() % 2 == 0, body: Bytes::from(body) };
        let frame = encode_response(id, &resp, MAX).expect("encode");
        match decode_one(&frame) {
            Message::Response(r) => {
                prop_assert_eq!(r.id, id);
                prop_assert_eq!(r.decode_result::<Http>().expect("decode").expect("ok"), resp);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn handshakes_round_trip(id in any::<u64>(), h in hello()) {
        let frame = encode_request::<Handshake>(id, &h, MAX).expect("encode");
        match decode_one(&frame) {
            Message::Request(r) => prop_assert_eq!(r.decode_params::<Handshake>().expect("decode"), h),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn errors_and_control_messages_round_trip(id in any::<u64>(), code in any::<i32>(),
                                              message in ".{0,40}", grace in any::<u64>()) {
        let error = ErrorObject::new(code, message);
        match decode_one(&encode_error(id, &error, MAX).expect("encode")) {
            Message::Response(r) => prop_assert_eq!(r.outcome, Err(error)),
            other => prop_assert!(false, "{:?}", other),
        }
        let params = ShutdownParams { grace_ms: grace };
        match decode_one(&encode_request::<Shutdown>(id, &params, MAX).expect("encode")) {
            Message::Request(r) => prop_assert_eq!(r.decode_params::<Shutdown>().expect("p"), params),
            other => prop_assert!(false, "{:?}", other),
        }
        let cancel = CancelParams { id };
        match decode_one(&encode_notification::<Cancel>(&cancel, MAX).expect("encode")) {
            Message::Notification(n) => prop_assert_eq!(n.decode_params::<Cancel>().expect("p"), cancel),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// Arbitrary input, with or without a plausible length prefix: an error or a message,
    /// never a panic, and never a buffer grown past the frame limit.
    #[test]
    fn no_input_panics_or_allocates_past_the_limit(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        prefix in prop::option::of(any::<u32>()),
    ) {
        const LIMIT: usize = 1024;
        let mut input = Vec::new();
        if let Some(len) = prefix {
            input.extend_from_slice(&len.to_be_bytes());
        }
        input.extend_from_slice(&bytes);
        let mut buf = BytesMut::from(&input[..]);
        let mut codec = FrameCodec::new(LIMIT);
        while let Ok(Some(message)) = codec.decode(&mut buf) {
            // Typed decoding of whatever arrived must not panic either.
            if let Message::Request(r) = &message {
                let _ = r.decode_params::<Http>();
                let _ = r.decode_params::<Handshake>();
            }
        }
        let bound = input.len().max(2 * (LIMIT + 4));
        prop_assert!(buf.capacity() <= bound, "capacity {} > {}", buf.capacity(), bound);
        let _ = Message::decode(Bytes::from(bytes));
    }

    /// Any single corrupted byte in a valid frame gives an error or a message, never a panic.
    #[test]
    fn corrupted_frames_never_panic(pos in any::<prop::sample::Index>(), value in any::<u8>()) {
        let mut frame = encode_request::<Http>(3, &common::http_request(), MAX).expect("encode").to_vec();
        let i = pos.index(frame.len());
        frame[i] = value;
        let mut buf = BytesMut::from(&frame[..]);
        if let Ok(Some(Message::Request(r))) = FrameCodec::new(MAX).decode(&mut buf) {
            let _ = r.decode_params::<Http>();
        }
    }
}

#[test]
fn a_huge_length_prefix_is_refused_without_allocating() {
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0x94][..]);
    let err = FrameCodec::new(MAX).decode(&mut buf).expect_err("refused");
    assert!(err.to_string().contains("exceeds the maximum"), "{err}");
    assert!(buf.capacity() < 64);
}

#[test]
fn trailing_bytes_and_wrong_shapes_are_malformed() {
    let mut frame = encode_response(1, &common::welcome(), MAX)
        .expect("encode")
        .to_vec();
    frame.push(0xc0);
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    // The envelope reads (its id is there to answer); the result, once decoded, is refused.
    let Some(Message::Response(response)) = FrameCodec::new(MAX)
        .decode(&mut BytesMut::from(&frame[..]))
        .expect("the envelope decodes")
    else {
        panic!("not a response");
    };
    assert_eq!(response.id, 1);
    let err = response.decode_result::<Handshake>().expect_err("trailing");
    assert!(err.to_string().contains("trailing"), "{err}");

    for (body, expect) in [
        (&[0x93, 0x07, 0x01, 0x02][..], "unknown message type 7"),
        (&[0x92, 0x00, 0x01][..], "needs 4 elements"),
        (&[0x81, 0x00, 0x00][..], "must be a MessagePack array"),
        (&[0x94, 0x00, 0xa1, 0x61, 0xa1][..], "request id"),
    ] {
        let err = Message::decode(Bytes::copy_from_slice(body)).expect_err("malformed");
        assert!(
            err.to_string().contains(expect),
            "{err} should mention {expect}"
        );
    }
}
