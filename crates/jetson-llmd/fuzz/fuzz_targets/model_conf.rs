//! /etc/ollama/model.conf (systemd EnvironmentFile rules): never a panic; what parses keeps
//! parsing after `switch` rewrites the OLLAMA_MODEL line, and names the model written.
#![no_main]
use jetson_llmd::conf::{modelconf, ModelName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = modelconf::parse_env(data);
    if modelconf::parse(data).is_ok() {
        if let Ok(m) = ModelName::parse("gemma3:4b") {
            let out = modelconf::with_model(data, &m);
            let back = modelconf::parse(&out).expect("switch's rewrite of a valid file parses");
            assert_eq!(back.model, m, "switch's rewrite names the model written");
        }
    }
});
