//! Property tests of the guard's policy against hostile request bodies. The oracle for "what
//! Ollama will see" is the emulator's decoder (fake-ollama's gojson, written separately from the
//! guard's and held to the real Ollama by the differential scenarios): whatever the guard
//! forwards, read that way, never names another model under `models = "pinned"` and never
//! carries a keep_alive, a reload-forcing option or a context shift for the pinned model.

use jetson_llmd::conf::config::GuardSettings;
use jetson_llmd::conf::ModelName;
use jetson_llmd::guard::gobody;
use jetson_llmd::guard::policy::{decide, Decision, RELOAD_OPTIONS};
use proptest::prelude::*;
use serde_json::Value;

const PINNED: &str = "gemma4:e2b-8k";

/// Spellings of a field name that Go's encoding/json matches to `tag`.
fn spelled(tag: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<bool>(), tag.len()).prop_map(move |upper| {
        tag.chars()
            .zip(upper)
            .map(|(c, u)| match (c, u) {
                ('k', true) => '\u{212A}'.to_string(),
                ('s', true) => '\u{017F}'.to_string(),
                (c, true) => c.to_ascii_uppercase().to_string(),
                (c, false) => c.to_string(),
            })
            .collect()
    })
}

/// Names, the pinned one in the spellings Ollama folds together and others.
fn model_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(PINNED.to_string()),
        Just(" GEMMA4:E2B-8K ".to_string()),
        Just("gemma4:e2b-8k:local".to_string()),
        Just("library/gemma4:e2b-8k".to_string()),
        Just("gemma4:e2b-it-qat".to_string()),
        Just("llama3.2".to_string()),
        Just("LLAMA3.2:latest".to_string()),
        Just("gemma4:e2b-8k:cloud".to_string()),
        Just("".to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("\"5m\"".to_string()),
        Just("\"-1m\"".to_string()),
        Just("\"1.5h\"".to_string()),
        Just("2048".to_string()),
        Just("false".to_string()),
        Just("null".to_string()),
        Just("{\"num_ctx\":1024,\"temperature\":0.5}".to_string()),
        Just("{\"NUM_CTX\":1024,\"num_gpu\":0,\"main_gpu\":0}".to_string()),
    ]
}

/// A body: fields in any order and spelling, repeated or not, with junk after it or not.
fn hostile_body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        (spelled("model"), model_value()).prop_map(|(k, v)| format!("{}:{}", serde_json::to_string(&k).unwrap_or_default(), serde_json::to_string(&v).unwrap_or_default())),
        (spelled("keep_alive"), json_value()).prop_map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap_or_default())),
        (spelled("options"), json_value()).prop_map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap_or_default())),
        (spelled("shift"), json_value()).prop_map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap_or_default())),
        Just("\"prompt\":\"hi\"".to_string()),
    ];
    let tail = prop_oneof![Just(String::new()), Just(" {\"model\":\"llama3.2\",\"keep_alive\":0}".to_string()), Just("garbage".to_string()), Just("\n".to_string())];
    (proptest::collection::vec(field, 0..7), tail).prop_map(|(fields, tail)| format!("{{{}}}{tail}", fields.join(",")).into_bytes())
}

/// What Ollama would resolve a model string to: trimmed, `:local` dropped, `:latest` added,
/// default host and namespace, case folded (the emulator's rules, see fake-ollama's lib.rs).
fn ollama_name(raw: &str) -> Option<String> {
    let full = fake_ollama::requested_name(raw)?;
    let short = full.strip_prefix("registry.ollama.ai/").unwrap_or(&full);
    Some(short.strip_prefix("library/").unwrap_or(short).to_lowercase())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn what_reaches_ollama_never_touches_the_pinned_model(bytes in hostile_body(), path in prop_oneof![Just("/api/generate"), Just("/api/chat"), Just("/api/embed")]) {
        let g = GuardSettings::default();
        let pinned = ModelName::parse(PINNED).expect("name");
        let decoded = gobody::decode(&bytes);
        let client = "192.168.1.20".parse().expect("ip");
        match decide("POST", path, Some(&decoded), client, Some(&pinned), &g) {
            Decision::Refuse { .. } => {}
            Decision::Forward { body, .. } => {
                let sent = body.unwrap_or_else(|| bytes.clone());
                // Read as the emulator (and Ollama) will read it.
                let seen = fake_ollama::gojson::decode_request(&sent);
                let Ok(seen) = seen else { return Ok(()) }; // Ollama refuses it: nothing loads
                let model = seen.get("model").and_then(Value::as_str).unwrap_or("");
                let name = ollama_name(model);
                prop_assert!(name.is_none() || name.as_deref() == Some(PINNED), "another model reaches Ollama: {model:?} from {}", String::from_utf8_lossy(&bytes));
                if name.is_some() {
                    prop_assert!(seen.get("keep_alive").is_none_or(Value::is_null), "keep_alive for the pinned model: {}", String::from_utf8_lossy(&sent));
                    prop_assert!(seen.get("shift").is_none_or(Value::is_null), "shift for the pinned model: {}", String::from_utf8_lossy(&sent));
                    if let Some(Value::Object(o)) = seen.get("options") {
                        for k in RELOAD_OPTIONS {
                            prop_assert!(!o.contains_key(k), "{k} for the pinned model: {}", String::from_utf8_lossy(&sent));
                        }
                    }
                }
            }
        }
    }
}
