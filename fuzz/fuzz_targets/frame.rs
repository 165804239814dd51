//! Fuzz target `frame`: see `plugd_fuzz::protocol_targets::frame`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = plugd_fuzz::protocol_targets::frame(data);
});
