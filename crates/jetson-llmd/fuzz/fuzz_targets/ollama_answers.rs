//! What Ollama (or anything on its port) answers: JSON bodies and NDJSON stream lines into the
//! client's types, OLLAMA_HOST values, sha256sum.txt files: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<ollama_client::PsResponse>(data);
    let _ = serde_json::from_slice::<ollama_client::TagsResponse>(data);
    let _ = serde_json::from_slice::<ollama_client::ShowResponse>(data);
    let _ = serde_json::from_slice::<ollama_client::VersionResponse>(data);
    for line in data.split(|b| *b == b'\n') {
        let _ = serde_json::from_slice::<ollama_client::ProgressLine>(line);
        let _ = serde_json::from_slice::<ollama_client::GenerateResponse>(line);
    }
    let text = String::from_utf8_lossy(data);
    let _ = ollama_client::parse_host(&text);
    let _ = jetson_llmd::install::release::parse_sums(&text);
});
