//! The envelope's value walk and payload checks.

use super::*;
use rmpv::Value;

/// A request frame body whose params are the raw bytes `params`.
fn request_body(params: &[u8]) -> Bytes {
    let mut body = vec![0x94, 0x00, 0x07, 0xa1, b'm'];
    body.extend_from_slice(params);
    Bytes::from(body)
}

fn packed(value: &Value) -> Vec<u8> {
    let mut buf = Vec::new();
    rmpv::encode::write_value(&mut buf, value).expect("encodes");
    buf
}

/// One value of every marker width, alone and nested.
fn every_form() -> Vec<Value> {
    let mut values: Vec<Value> = vec![
        Value::Nil,
        Value::Boolean(true),
        Value::Boolean(false),
        Value::from(5u8),
        Value::from(-3i8),
        Value::from(200u8),
        Value::from(-100i8),
        Value::from(60_000u16),
        Value::from(-30_000i16),
        Value::from(4_000_000_000u32),
        Value::from(-2_000_000_000i32),
        Value::from(u64::MAX),
        Value::from(i64::MIN),
        Value::F32(1.5),
        Value::F64(-2.25),
    ];
    for len in [0usize, 31, 32, 255, 256, 65_535, 65_536] {
        values.push(Value::from("x".repeat(len)));
        values.push(Value::Binary(vec![7; len]));
    }
    for len in [1usize, 2, 4, 8, 16, 3, 300, 70_000] {
        values.push(Value::Ext(5, vec![1; len]));
    }
    for len in [0usize, 15, 16, 65_536] {
        values.push(Value::Array(vec![Value::from(1u8); len]));
        values.push(Value::Map(
            (0..len)
                .map(|i| (Value::from(i as u64), Value::Nil))
                .collect(),
        ));
    }
    let nested = Value::Array(values.clone());
    values.push(Value::Map(vec![(nested.clone(), nested)]));
    values
}

/// The params of a request whose body carries `params`, after the envelope is read.
fn params_of(params: &[u8]) -> Bytes {
    match Message::decode(request_body(params)).expect("the envelope decodes") {
        Message::Request(request) => request.params,
        other => panic!("not a request: {other:?}"),
    }
}

#[test]
fn params_of_every_form_are_measured_exactly_and_a_cut_one_is_refused() {
    for value in every_form() {
        let raw = packed(&value);
        let params = params_of(&raw);
        assert_eq!(&params[..], &raw[..], "params of {:.60}", value.to_string());
        check_one_value(&params).expect("one value");
        // Cut short anywhere, the value is refused; one byte too many is a trailing byte.
        for cut in [raw.len() - 1, raw.len() / 2] {
            if cut == 0 {
                continue;
            }
            let error = check_one_value(&params_of(&raw[..cut])).expect_err("cut short");
            assert!(matches!(error, DecodeError::Malformed(_)), "{error}");
        }
        let mut longer = raw.clone();
        longer.push(0xc0);
        let error = check_one_value(&params_of(&longer)).expect_err("trailing byte");
        assert!(error.to_string().contains("trailing"), "{error}");
    }
}

#[test]
fn a_malformed_payload_is_refused_when_decoded_and_the_envelope_still_reads() {
    use crate::message::control::Ping;
    // A request whose params are cut short: the envelope (and so the request id, to
    // answer) reads; decoding the params names what is wrong.
    let Message::Request(request) = Message::decode(request_body(&[0x92, 0x01])).unwrap() else {
        panic!("not a request");
    };
    assert_eq!(request.id, 7);
    let error = request.decode_params::<Ping>().expect_err("cut short");
    assert!(matches!(error, DecodeError::Malformed(_)), "{error}");
    // The same for a result, and a frame with nothing after the method is still refused.
    let response = Bytes::from_static(&[0x94, 0x01, 0x07, 0xc0, 0x91]);
    let Message::Response(response) = Message::decode(response).unwrap() else {
        panic!("not a response");
    };
    let error = response.decode_result::<Ping>().expect_err("cut short");
    assert!(matches!(error, DecodeError::Malformed(_)), "{error}");
    let error = Message::decode(Bytes::from_static(&[0x94, 0x00, 0x07, 0xa1, b'm']))
        .expect_err("no params");
    assert!(error.to_string().contains("has no params"), "{error}");
}

#[test]
fn values_nest_at_most_max_depth_levels() {
    let nested = |levels: usize| {
        let mut value = Value::Nil;
        for _ in 0..levels {
            value = Value::Array(vec![value]);
        }
        packed(&value)
    };
    // MAX_DEPTH arrays put the innermost nil at depth MAX_DEPTH: the deepest allowed.
    assert!(check_one_value(&nested(MAX_DEPTH)).is_ok());
    let error = check_one_value(&nested(MAX_DEPTH + 1)).expect_err("too deep");
    assert!(error.to_string().contains("nest deeper than 64"), "{error}");
    // Maps count the same way.
    let mut map = Value::Nil;
    for _ in 0..=MAX_DEPTH {
        map = Value::Map(vec![(Value::Nil, map)]);
    }
    let error = check_one_value(&packed(&map)).expect_err("too deep");
    assert!(error.to_string().contains("nest deeper"), "{error}");
    // An error object in a response is measured by the same walk, at decode.
    let mut body = vec![0x94, 0x01, 0x07];
    body.extend(packed(&map));
    body.push(0xc0);
    let error = Message::decode(Bytes::from(body)).expect_err("too deep");
    assert!(error.to_string().contains("nest deeper"), "{error}");
}

#[test]
fn a_container_announcing_more_elements_than_bytes_is_refused() {
    let error = check_one_value(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]).expect_err("a lie");
    assert!(error.to_string().contains("announces"), "{error}");
}
