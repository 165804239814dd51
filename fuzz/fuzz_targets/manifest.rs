//! Fuzz target `manifest`: see `plugd_fuzz::supervisor_targets::manifest`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = plugd_fuzz::supervisor_targets::manifest(data);
});
