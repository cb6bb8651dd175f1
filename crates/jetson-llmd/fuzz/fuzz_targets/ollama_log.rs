//! Ollama's log as the journal or its stderr gives it (logfmt, journal short and JSON framing):
//! never a panic, and what reaches a verdict is cleaned and bounded.
#![no_main]
use jetson_llmd::conf::ExpectedCompute;
use jetson_llmd::ollama::discovery::{analyze_on, HostFacts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').collect();
    for expected in [ExpectedCompute::ORIN, ExpectedCompute::Cpu] {
        let r = analyze_on(&lines, &expected, &HostFacts { cmdline: Some("cma=64M"), jetpack6_libs: Some(false) });
        for s in [r.cpu_fallback_reason, r.libdirs, r.description, r.evidence, r.warning].into_iter().flatten() {
            // text::clean keeps tabs (harmless on a terminal, in the journal and STATUS=).
            assert!(!s.chars().any(|c| c.is_control() && c != '\t'), "control characters reach a verdict: {s:?}");
            assert!(s.chars().count() < 2048, "unbounded: {}", s.len());
        }
    }
});
