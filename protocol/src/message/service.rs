//! Services: named functions a plugin provides to other plugins (`markdown.render`). A plugin
//! calls one through the supervisor, which forwards the call to the provider.

use super::Method;
use crate::depth::{value_depth, MAX_PAYLOAD_DEPTH};
use crate::envelope::{decode_payload, encode_request_packed};
use crate::pack::{self, Cursor};
use crate::{DecodeError, EncodeError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// `service.call`: plugin → supervisor (call a service), and supervisor → provider (serve it).
#[derive(Debug)]
pub struct ServiceCall;

/// Parameters of [`ServiceCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInput {
    /// The service's name.
    pub service: String,
    /// The argument.
    pub payload: rmpv::Value,
    /// How many hook or service calls led to this one; the supervisor refuses chains deeper
    /// than its limit, so loops between plugins end with an error.
    pub depth: u32,
}

/// The service's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceOutput {
    /// The result.
    pub value: rmpv::Value,
}

impl Method for ServiceCall {
    const NAME: &'static str = "service.call";
    type Params = ServiceInput;
    type Result = ServiceOutput;
}

/// A `service.call`'s parameters with the argument left as raw MessagePack: all the supervisor
/// needs to find the provider and forward the call, without taking the argument apart and
/// packing it again.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceCallRaw {
    /// The service's name.
    pub service: String,
    /// The argument: exactly one well-formed MessagePack value, nested at most
    /// [`MAX_PAYLOAD_DEPTH`] levels.
    pub payload: Bytes,
    /// As [`ServiceInput::depth`].
    pub depth: u32,
}

impl ServiceCallRaw {
    /// Reads a `service.call` request's raw parameters. The usual shape (a map of the three
    /// fields) is read in place, the argument kept as a slice of `params`; any other form
    /// `serde` accepts is decoded and its argument packed again. An argument nested deeper than
    /// [`MAX_PAYLOAD_DEPTH`] is refused. An error names what is wrong.
    pub fn decode(params: &Bytes) -> Result<ServiceCallRaw, DecodeError> {
        if let Some(call) = Self::read_in_place(params) {
            return Ok(call);
        }
        let input: ServiceInput = decode_payload(params, ServiceCall::NAME)?;
        too_deep("argument", &input.payload)?;
        let payload = rmp_serde::to_vec_named(&input.payload).map_err(|e| {
            DecodeError::Malformed(format!("cannot pack the service's argument again: {e}"))
        })?;
        Ok(ServiceCallRaw {
            service: input.service,
            payload: payload.into(),
            depth: input.depth,
        })
    }

    fn read_in_place(params: &Bytes) -> Option<ServiceCallRaw> {
        let mut c = Cursor::new(params);
        let (mut service, mut payload, mut depth) = (None, None, None);
        for _ in 0..c.map_len()? {
            // A repeated or unknown field is left to serde, which names it.
            match c.str_bytes()? {
                b"service" if service.is_none() => service = Some(c.str()?),
                b"payload" if payload.is_none() => {
                    payload = Some(c.value_range(MAX_PAYLOAD_DEPTH)?)
                }
                b"depth" if depth.is_none() => depth = Some(u32::try_from(c.uint()?).ok()?),
                _ => return None,
            }
        }
        let (start, end) = payload?;
        if !c.at_end() {
            return None;
        }
        Some(ServiceCallRaw {
            service: service?.to_owned(),
            payload: params.slice(start..end),
            depth: depth?,
        })
    }

    /// The request frame carrying this call, at most `max_len` bytes: byte for byte what
    /// encoding the same [`ServiceInput`] writes.
    pub fn encode(&self, id: u64, max_len: usize) -> Result<Bytes, EncodeError> {
        let capacity = 40 + self.service.len() + self.payload.len();
        encode_request_packed::<ServiceCall>(id, capacity, max_len, |buf| {
            pack::map_len(buf, 3);
            pack::key(buf, "service");
            pack::str(buf, &self.service);
            pack::key(buf, "payload");
            buf.extend_from_slice(&self.payload);
            pack::key(buf, "depth");
            pack::uint(buf, u64::from(self.depth));
        })
    }
}

/// Checks a provider's raw `service.call` result and gives the bytes to pass on as the
/// caller's result: `raw` itself in the usual shape (a map with the one field `value`), else
/// the result decoded and packed again in that shape. A value nested deeper than
/// [`MAX_PAYLOAD_DEPTH`] is refused. An error names what is wrong.
pub fn check_output(raw: &Bytes) -> Result<Bytes, DecodeError> {
    let mut c = Cursor::new(raw);
    let usual = c.map_len() == Some(1)
        && c.str_bytes() == Some(b"value".as_slice())
        && c.value_range(MAX_PAYLOAD_DEPTH).is_some()
        && c.at_end();
    if usual {
        return Ok(raw.clone());
    }
    let output: ServiceOutput = decode_payload(raw, "service.call result")?;
    too_deep("result", &output.value)?;
    rmp_serde::to_vec_named(&output)
        .map(Bytes::from)
        .map_err(|e| DecodeError::Malformed(format!("cannot pack the service's result again: {e}")))
}

/// Refuses a service's `what` (argument, result) nested deeper than [`MAX_PAYLOAD_DEPTH`].
fn too_deep(what: &str, value: &rmpv::Value) -> Result<(), DecodeError> {
    let depth = value_depth(value);
    if depth > MAX_PAYLOAD_DEPTH {
        return Err(DecodeError::Malformed(format!(
            "the service's {what} nests {depth} levels deep; at most {MAX_PAYLOAD_DEPTH} are allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::depth::MAX_DEPTH;
    use crate::envelope::encode_request;
    use crate::{Message, Request};

    fn input(payload: rmpv::Value) -> ServiceInput {
        ServiceInput {
            service: "text.upper".into(),
            payload,
            depth: 3,
        }
    }

    /// The params of a `service.call` request frame as they arrive.
    fn arrived(frame: Bytes) -> Request {
        match Message::decode(frame.slice(4..)).expect("a frame") {
            Message::Request(r) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn sample() -> rmpv::Value {
        rmpv::Value::Map(vec![
            ("text".into(), "hello".into()),
            (
                "n".into(),
                rmpv::Value::Array(vec![1.into(), (-2).into(), 2.5.into()]),
            ),
        ])
    }

    #[test]
    fn the_usual_params_are_read_in_place_and_packed_again_byte_for_byte() {
        let frame = encode_request::<ServiceCall>(7, &input(sample()), 1 << 20).unwrap();
        let request = arrived(frame.clone());
        let raw = ServiceCallRaw::read_in_place(&request.params).expect("the usual shape");
        assert_eq!(raw.service, "text.upper");
        assert_eq!(raw.depth, 3);
        assert_eq!(
            rmpv::decode::read_value(&mut &raw.payload[..]).unwrap(),
            sample()
        );
        assert_eq!(raw.encode(7, 1 << 20).unwrap(), frame);
    }

    #[test]
    fn other_forms_serde_accepts_are_decoded_and_packed_in_the_usual_shape() {
        // Fields in another order, and the struct as an array.
        let mut reordered = Vec::new();
        rmp::encode::write_map_len(&mut reordered, 3).unwrap();
        rmp::encode::write_str(&mut reordered, "depth").unwrap();
        rmp::encode::write_uint(&mut reordered, 3).unwrap();
        rmp::encode::write_str(&mut reordered, "service").unwrap();
        rmp::encode::write_str(&mut reordered, "text.upper").unwrap();
        rmp::encode::write_str(&mut reordered, "payload").unwrap();
        rmpv::encode::write_value(&mut reordered, &sample()).unwrap();
        let as_array = rmp_serde::to_vec(&input(sample())).unwrap();
        let usual = encode_request::<ServiceCall>(9, &input(sample()), 1 << 20).unwrap();
        for params in [reordered, as_array] {
            let params = Bytes::from(params);
            let raw = ServiceCallRaw::decode(&params).expect("serde accepts it");
            assert_eq!(raw.encode(9, 1 << 20).unwrap(), usual);
        }
    }

    #[test]
    fn bad_params_are_refused_with_what_is_wrong() {
        let cases: [(&[u8], &str); 4] = [
            // A map missing `depth`.
            (b"\x82\xa7service\xa1x\xa7payload\xc0", "depth"),
            // `service` not a string.
            (
                b"\x83\xa7service\x01\xa7payload\xc0\xa5depth\x00",
                "service.call",
            ),
            // A truncated argument.
            (b"\x83\xa7service\xa1x\xa7payload\x92\x01", "remain"),
            // The same field twice.
            (
                b"\x84\xa7service\xa1x\xa7service\xa1y\xa7payload\xc0\xa5depth\x00",
                "service",
            ),
        ];
        for (params, named) in cases {
            let err = ServiceCallRaw::decode(&Bytes::from_static(params))
                .expect_err("refused")
                .to_string();
            assert!(err.contains(named), "{err:?} should name {named:?}");
        }
    }

    /// `levels` arrays one inside the other around a nil.
    fn nested(levels: usize) -> Vec<u8> {
        let mut v = vec![0x91; levels];
        v.push(0xc0);
        v
    }

    #[test]
    fn an_argument_nested_deeper_than_a_payload_may_be_is_refused_in_every_form() {
        for levels in [MAX_PAYLOAD_DEPTH, MAX_PAYLOAD_DEPTH + 1, MAX_DEPTH] {
            let mut as_map = b"\x83\xa7service\xa1x\xa7payload".to_vec();
            as_map.extend(nested(levels));
            as_map.extend(b"\xa5depth\x00");
            let mut as_array = b"\x93\xa1x".to_vec();
            as_array.extend(nested(levels));
            as_array.push(0x00);
            for params in [as_map, as_array] {
                let read = ServiceCallRaw::decode(&Bytes::from(params));
                if levels <= MAX_PAYLOAD_DEPTH {
                    assert!(read.is_ok(), "{levels} levels: {read:?}");
                } else {
                    let err = read.expect_err("too deep").to_string();
                    assert!(err.contains("levels"), "{levels} levels: {err}");
                }
            }
        }
    }

    #[test]
    fn a_result_in_the_usual_shape_passes_as_it_is_and_others_are_packed_again() {
        let usual =
            Bytes::from(rmp_serde::to_vec_named(&ServiceOutput { value: sample() }).unwrap());
        assert_eq!(check_output(&usual).unwrap(), usual);
        let as_array = Bytes::from(rmp_serde::to_vec(&ServiceOutput { value: sample() }).unwrap());
        assert_eq!(check_output(&as_array).unwrap(), usual);
        let mut deep = b"\x81\xa5value".to_vec();
        deep.extend(nested(MAX_PAYLOAD_DEPTH + 1));
        let mut deepest = b"\x81\xa5value".to_vec();
        deepest.extend(nested(MAX_DEPTH));
        for bad in [
            &b"\x81\xa5other\x01"[..],
            b"\x81\xa5value",
            b"\x01",
            &deep,
            &deepest,
        ] {
            let err = check_output(&Bytes::copy_from_slice(bad)).expect_err("refused");
            assert!(!err.to_string().is_empty());
        }
    }
}
