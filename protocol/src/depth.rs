//! How deep values may nest.
//!
//! The decoder refuses any value nested deeper than [`MAX_DEPTH`] (a protection against stack
//! exhaustion), counting from a message's `params` or `result`. An application payload (a hook's
//! or a service's) travels wrapped inside such a value, so it may nest at most
//! [`MAX_PAYLOAD_DEPTH`]: the levels in between are left for the wrappers. A sender checks a
//! payload it did not build itself with [`value_depth`] or [`json_depth`] before forwarding it,
//! so the receiver never has to cut the connection for a payload the sender chose to pass on.

/// Deepest nesting the decoder accepts, counted from a message's `params` or `result`.
pub const MAX_DEPTH: usize = 64;

/// Deepest nesting of an application payload (a hook's or a service's), leaving room for the
/// message that carries it.
pub const MAX_PAYLOAD_DEPTH: usize = 48;

/// How deeply `value` nests: 0 for a scalar, 1 for a flat array or map, and so on. Walks the
/// value without recursion, so a hostile value cannot exhaust the stack.
pub fn value_depth(value: &rmpv::Value) -> usize {
    if !matches!(value, rmpv::Value::Array(_) | rmpv::Value::Map(_)) {
        // A scalar, the usual hook answer: no stack to allocate.
        return 0;
    }
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match v {
            rmpv::Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            rmpv::Value::Map(pairs) => {
                for (k, v) in pairs {
                    stack.push((k, depth + 1));
                    stack.push((v, depth + 1));
                }
            }
            _ => {}
        }
    }
    deepest
}

/// How deeply the JSON text `text` nests its arrays and objects, read without parsing (brackets
/// inside strings do not count). Meant to run before a parser, so a deeply nested body is
/// refused before any parser recurses into it.
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> rmpv::Value {
        let mut v = rmpv::Value::from(1);
        for _ in 0..levels {
            v = rmpv::Value::Array(vec![v]);
        }
        v
    }

    #[test]
    fn value_depth_counts_containers() {
        assert_eq!(value_depth(&rmpv::Value::Nil), 0);
        assert_eq!(value_depth(&nested(1)), 1);
        assert_eq!(value_depth(&nested(70)), 70);
        let map = rmpv::Value::Map(vec![(rmpv::Value::from("k"), nested(5))]);
        assert_eq!(value_depth(&map), 6);
    }

    #[test]
    fn json_depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(br#"{"a": [1, {"b": "[[[{{{"}]}"#), 3);
        assert_eq!(json_depth(br#"["\"[", []]"#), 2);
        let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
        assert_eq!(json_depth(deep.as_bytes()), 70);
    }

    #[test]
    fn a_payload_at_the_limit_fits_in_a_message() {
        use crate::envelope::{encode_request, Message};
        use crate::message::hook::{HookCall, HookInput};
        let input = HookInput {
            hook: "h".into(),
            payload: nested(MAX_PAYLOAD_DEPTH),
            depth: 0,
            deadline_unix_ms: 0,
        };
        let frame = encode_request::<HookCall>(1, &input, 1 << 20).expect("encode");
        let message = Message::decode(frame.slice(4..)).expect("decodes within MAX_DEPTH");
        let Message::Request(request) = message else {
            panic!("not a request")
        };
        let back = request.decode_params::<HookCall>().expect("params");
        assert_eq!(back.payload, input.payload);
    }
}
