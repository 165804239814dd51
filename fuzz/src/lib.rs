//! The bodies of plugd's fuzz targets, one function per target. The binaries in `fuzz_targets/`
//! only hand their input to these; the corpus replays in `protocol/tests/fuzz_corpus.rs` and
//! `supervisor/tests/it/fuzz_corpus.rs` include the same files with `#[path]`, so a stable
//! `cargo test` runs every checked-in seed through exactly what the fuzzer runs.

pub mod protocol_targets;
pub mod supervisor_targets;
