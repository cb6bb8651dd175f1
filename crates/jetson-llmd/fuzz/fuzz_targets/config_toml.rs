//! /etc/jetson-llmd/config.toml: never a panic; every problem has a line inside the file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = jetson_llmd::conf::config::from_text(Path::new("config.toml"), text) {
        let lines = text.matches('\n').count() + 1;
        assert!(!e.problems.is_empty());
        assert!(e.problems.iter().all(|p| p.line <= lines), "{e}");
    }
});
