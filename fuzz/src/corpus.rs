//! The checked-in seed corpus, read by the tests that replay it (`protocol/tests/fuzz_corpus.rs`
//! and `supervisor/tests/it/fuzz_corpus.rs` include this file). Paths are relative to the
//! including crate, which sits one level below the repository root.

use std::path::PathBuf;

/// Every file of `fuzz/corpus/<target>`, as (file name, bytes), sorted by name.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, bytes)
        })
        .collect();
    seeds.sort();
    assert!(
        seeds.len() >= 5,
        "{}: only {} seeds",
        dir.display(),
        seeds.len()
    );
    seeds
}
