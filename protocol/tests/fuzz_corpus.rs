//! Replays the checked-in fuzz corpus (`fuzz/corpus/{frame,envelope,messages}`) through the
//! same functions the cargo-fuzz targets run, so stable `cargo test` catches a regression on any
//! seed (and on any crash input added to the corpus) without nightly or libFuzzer.
//!
//! Seeds whose name starts with `valid-` are well-formed and must decode; the others are broken
//! on purpose and must only be handled without a panic. A `messages` seed named
//! `valid-request-NAME`, `valid-result-NAME` or `valid-notification-NAME` must be accepted by
//! the typed decode of message `NAME`.

#[allow(dead_code)]
#[path = "../../fuzz/src/protocol_targets.rs"]
mod targets;

#[path = "../../fuzz/src/corpus.rs"]
mod corpus;

use corpus::seeds;

#[test]
fn frame_corpus_replays() {
    let mut valid = 0;
    for (name, data) in seeds("frame") {
        let out = targets::frame(&data);
        if name.starts_with("valid-") {
            assert_eq!(out.error, None, "{name}");
            assert_eq!(out.leftover, 0, "{name}");
            assert!(
                out.frames >= 1 && out.messages == out.frames,
                "{name}: {out:?}"
            );
            valid += 1;
        }
        if name.starts_with("oversize-prefix") || name.starts_with("empty-frame") {
            assert!(out.error.is_some(), "{name} must be refused: {out:?}");
        }
        if name.starts_with("truncated") {
            assert!(out.error.is_none() && out.leftover > 0, "{name}: {out:?}");
        }
        if name == "deep-nesting" {
            assert_eq!((out.frames, out.messages), (1, 0), "{name}: {out:?}");
        }
    }
    assert!(valid >= 5, "only {valid} valid frame seeds");
}

#[test]
fn envelope_corpus_replays() {
    let mut valid = 0;
    for (name, data) in seeds("envelope") {
        let result = targets::envelope(&data);
        if name.starts_with("valid-") {
            result.unwrap_or_else(|e| panic!("{name}: {e}"));
            valid += 1;
        } else {
            assert!(result.is_err(), "{name} must be refused: {result:?}");
        }
    }
    assert!(valid >= 5, "only {valid} valid envelope seeds");
}

#[test]
fn messages_corpus_replays() {
    let mut typed = 0;
    for (name, data) in seeds("messages") {
        let out = targets::messages(&data);
        if name.starts_with("valid-") {
            assert!(out.envelope, "{name}: the envelope does not decode");
        }
        let expected = ["valid-request-", "valid-result-", "valid-notification-"]
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix));
        if let Some(method) = expected {
            assert!(
                out.typed.contains(&method),
                "{name}: not accepted as {method}: {out:?}"
            );
            typed += 1;
        }
    }
    assert!(typed >= 10, "only {typed} typed message seeds");
}
