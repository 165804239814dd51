//! Fuzz target `bundle`: see `plugd_fuzz::supervisor_targets::bundle`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = plugd_fuzz::supervisor_targets::bundle(data);
});
