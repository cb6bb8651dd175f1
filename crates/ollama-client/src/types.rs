//! Request and response shapes of the Ollama API (api/types.go in ollama/ollama, docs/api.md).
//!
//! Responses are decoded leniently (unknown fields ignored, most fields defaulted) because Ollama
//! adds fields often; requests carry only what we mean to send.

use serde::{Deserialize, Serialize, Serializer};
use std::time::Duration;

/// How long Ollama keeps a model after a request.
///
/// Ollama's `api.Duration` accepts a JSON number of seconds (negative = forever, 0 = unload) or a
/// Go duration string. The bare string "-1" has no unit and is rejected, so `Forever` is always sent
/// as the number -1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    Forever,
    Unload,
    For(Duration),
}

impl Serialize for KeepAlive {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KeepAlive::Forever => s.serialize_i64(-1),
            KeepAlive::Unload => s.serialize_i64(0),
            KeepAlive::For(d) if d.is_zero() => s.serialize_i64(0),
            KeepAlive::For(d) if d.subsec_nanos() == 0 => s.serialize_u64(d.as_secs()),
            KeepAlive::For(d) => s.serialize_f64(d.as_secs_f64()),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct VersionResponse {
    pub version: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ModelDetails {
    #[serde(default)]
    pub parent_model: String,
    #[serde(default)]
    pub format: String,
    #[serde(default)]
    pub family: String,
    #[serde(default)]
    pub families: Option<Vec<String>>,
    #[serde(default)]
    pub parameter_size: String,
    #[serde(default)]
    pub quantization_level: String,
}

/// One entry of GET /api/tags.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct LocalModel {
    pub name: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub modified_at: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub details: ModelDetails,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
pub struct TagsResponse {
    #[serde(default)]
    pub models: Vec<LocalModel>,
}

/// One entry of GET /api/ps: a model loaded in memory.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RunningModel {
    pub name: String,
    #[serde(default)]
    pub model: String,
    /// Bytes the loaded model takes in total (weights, KV cache, graph).
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub details: ModelDetails,
    /// RFC 3339; around year 2318 for keep_alive -1.
    #[serde(default)]
    pub expires_at: String,
    /// Bytes of `size` placed on the GPU.
    #[serde(default)]
    pub size_vram: u64,
    #[serde(default)]
    pub context_length: Option<u64>,
}

impl RunningModel {
    /// Share of the model on the GPU, in percent, rounded as `ollama ps` rounds it.
    pub fn gpu_percent(&self) -> u8 {
        if self.size == 0 {
            return 0;
        }
        let pct = (self.size_vram.min(self.size) as f64 / self.size as f64) * 100.0;
        pct.round() as u8
    }

    /// The expiry, parsed. `None` when Ollama sent something that is not RFC 3339.
    pub fn expires(&self) -> Option<time::OffsetDateTime> {
        time::OffsetDateTime::parse(&self.expires_at, &time::format_description::well_known::Rfc3339).ok()
    }

    /// True when the expiry is so far out that it can only come from keep_alive < 0.
    /// (Ollama stores math.MaxInt64 ns, ~292 years from the load.)
    pub fn pinned_forever(&self) -> bool {
        match self.expires() {
            Some(t) => t.year() >= 2200,
            None => false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
pub struct PsResponse {
    #[serde(default)]
    pub models: Vec<RunningModel>,
}

/// POST /api/generate. `prompt: None` with no options is a load-only request.
#[derive(Debug, Clone, Serialize, Default)]
pub struct GenerateRequest {
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<KeepAlive>,
    /// Runner options. Anything here that differs from the loaded runner makes Ollama reload the
    /// model (server/sched.go needsReload), so keepalive pings never set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A line of a /api/generate response (the only line when not streaming).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
pub struct GenerateResponse {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub response: String,
    #[serde(default)]
    pub done: bool,
    #[serde(default)]
    pub done_reason: Option<String>,
    #[serde(default)]
    pub total_duration: Option<u64>,
    #[serde(default)]
    pub load_duration: Option<u64>,
    #[serde(default)]
    pub prompt_eval_count: Option<u64>,
    #[serde(default)]
    pub prompt_eval_duration: Option<u64>,
    #[serde(default)]
    pub eval_count: Option<u64>,
    #[serde(default)]
    pub eval_duration: Option<u64>,
}

impl GenerateResponse {
    /// Generation speed as Ollama's `--verbose` computes it: eval_count / eval_duration.
    pub fn tokens_per_second(&self) -> Option<f64> {
        match (self.eval_count, self.eval_duration) {
            (Some(n), Some(d)) if d > 0 => Some(n as f64 / d as f64 * 1e9),
            _ => None,
        }
    }
}

/// POST /api/create with `from` + `parameters` (the `modelfile` field is gone since 0.5.5).
#[derive(Debug, Clone, Serialize)]
pub struct CreateRequest {
    pub model: String,
    pub from: String,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

/// A status line of /api/pull or /api/create.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
pub struct ProgressLine {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub completed: Option<u64>,
}

/// POST /api/show, the parts we read.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
pub struct ShowResponse {
    #[serde(default)]
    pub modelfile: String,
    #[serde(default)]
    pub parameters: String,
    #[serde(default)]
    pub details: ModelDetails,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// GGUF metadata (`general.architecture`, `<arch>.block_count`, ...). Token tables come
    /// back as null without `verbose`.
    #[serde(default)]
    pub model_info: std::collections::BTreeMap<String, MetaValue>,
}

/// One GGUF metadata value: numbers and strings are read; anything else is kept opaque.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum MetaValue {
    Int(u64),
    Float(f64),
    Text(String),
    Other(serde_json::Value),
}

impl ShowResponse {
    /// `general.architecture` (e.g. `gemma3`, `llama`).
    pub fn architecture(&self) -> Option<&str> {
        match self.model_info.get("general.architecture") {
            Some(MetaValue::Text(a)) => Some(a),
            _ => None,
        }
    }

    /// An architecture key as a number: `arch_u64("block_count")` reads `<arch>.block_count`.
    pub fn arch_u64(&self, key: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.u64(&format!("{arch}.{key}"))
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        match self.model_info.get(key)? {
            MetaValue::Int(n) => Some(*n),
            MetaValue::Float(f) if *f >= 0.0 => Some(*f as u64),
            _ => None,
        }
    }

    /// Reads one PARAMETER (e.g. `num_ctx`) from the `parameters` text block.
    pub fn parameter(&self, key: &str) -> Option<&str> {
        self.parameters.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == key).then(|| it.next()).flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_serializes_as_ollama_accepts() {
        let j = |k: KeepAlive| serde_json::to_string(&k).expect("serializes");
        assert_eq!(j(KeepAlive::Forever), "-1");
        assert_eq!(j(KeepAlive::Unload), "0");
        assert_eq!(j(KeepAlive::For(Duration::from_secs(240))), "240");
        assert_eq!(j(KeepAlive::For(Duration::from_millis(1500))), "1.5");
        assert_eq!(j(KeepAlive::For(Duration::ZERO)), "0");
    }

    #[test]
    fn load_only_request_has_no_prompt_and_no_options() {
        let r = GenerateRequest { model: "gemma4:e2b-8k".into(), keep_alive: Some(KeepAlive::Forever), ..Default::default() };
        assert_eq!(serde_json::to_string(&r).expect("serializes"), r#"{"model":"gemma4:e2b-8k","keep_alive":-1}"#);
    }

    #[test]
    fn ps_percent_and_pin() {
        let mut m: RunningModel = serde_json::from_str(r#"{"name":"a","size":1000,"size_vram":730,"expires_at":"2318-02-01T10:00:00.123456789+01:00"}"#).expect("decodes");
        assert_eq!(m.gpu_percent(), 73);
        assert!(m.pinned_forever());
        m.expires_at = "2026-11-23T21:45:00Z".into();
        assert!(!m.pinned_forever());
        m.expires_at = "garbage".into();
        assert!(!m.pinned_forever());
        m.size_vram = 0;
        assert_eq!(m.gpu_percent(), 0);
    }

    #[test]
    fn show_parameter_lookup() {
        let s = ShowResponse { parameters: "num_ctx                        8192\nstop \"<eos>\"".into(), ..Default::default() };
        assert_eq!(s.parameter("num_ctx"), Some("8192"));
        assert_eq!(s.parameter("num_batch"), None);
    }
}
