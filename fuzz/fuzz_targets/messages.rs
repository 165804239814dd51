//! Fuzz target `messages`: see `plugd_fuzz::protocol_targets::messages`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = plugd_fuzz::protocol_targets::messages(data);
});
