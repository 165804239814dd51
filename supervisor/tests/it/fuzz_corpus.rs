//! Replays the checked-in fuzz corpus (`fuzz/corpus/{manifest,bundle}`) through the same
//! functions the cargo-fuzz targets run, so stable `cargo test` catches a regression on any
//! seed (and on any crash input added to the corpus) without nightly or libFuzzer.
//!
//! Manifest seeds named `valid-*` must parse and `invalid-*` must be refused. Bundle seeds named
//! `valid-*` must unpack; every other bundle must be refused, and the target itself checks, for
//! every seed, that nothing was written outside the destination and that no link, device or
//! setuid file was created inside it.

#[allow(dead_code)]
#[path = "../../../fuzz/src/supervisor_targets.rs"]
mod targets;

#[path = "../../../fuzz/src/corpus.rs"]
mod corpus;

use corpus::seeds;

#[test]
fn manifest_corpus_replays() {
    let (mut valid, mut invalid) = (0, 0);
    for (name, data) in seeds("manifest") {
        let result = targets::manifest(&data);
        if name.starts_with("valid-") {
            let manifest = result
                .unwrap_or_else(|| panic!("{name} is not UTF-8"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!manifest.name.is_empty(), "{name}");
            valid += 1;
        } else if name.starts_with("invalid-") {
            if let Some(Ok(manifest)) = result {
                panic!("{name} was accepted: {manifest:?}");
            }
            invalid += 1;
        }
    }
    assert!(
        valid >= 3 && invalid >= 5,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn bundle_corpus_replays() {
    let (mut valid, mut refused) = (0, 0);
    for (name, data) in seeds("bundle") {
        let out = targets::bundle(&data);
        if name.starts_with("valid-") {
            let root = out
                .result
                .unwrap_or_else(|e| panic!("{name} was refused: {e}"));
            assert!(out.files >= 2, "{name}: {} files under {root:?}", out.files);
            valid += 1;
            continue;
        }
        let err = match out.result {
            Ok(root) => panic!("{name} was accepted (root {root:?})"),
            Err(err) => err,
        };
        refused += 1;
        let expect = |needle: &str| assert!(err.contains(needle), "{name}: {err}");
        if name.starts_with("dotdot") {
            expect("'..'");
        } else if name.starts_with("symlink") {
            expect("link");
        } else if name.starts_with("absolute") {
            expect("absolute");
        } else if name.starts_with("bomb") {
            expect("archive bomb");
        } else if name.starts_with("too-many-entries") {
            expect("entries");
        }
        // Refused at its first entry: nothing at all may have been written.
        if [
            "dotdot.zip",
            "absolute.zip",
            "backslash.zip",
            "symlink-to-parent.zip",
        ]
        .contains(&name.as_str())
        {
            assert_eq!(out.files, 0, "{name}: files written before the refusal");
        }
    }
    assert!(
        valid >= 3 && refused >= 5,
        "{valid} valid, {refused} refused"
    );
}
