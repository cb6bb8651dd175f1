//! A client's request body as the guard reads it, the way Go's encoding/json does (first value,
//! folded keys, last one wins): never a panic, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = jetson_llmd::guard::gobody::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = jetson_llmd::guard::keys::parse(text);
    }
});
