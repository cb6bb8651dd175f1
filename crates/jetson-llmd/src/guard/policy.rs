//! What the guard does with one request: a pure function from (method, path, body, client,
//! pinned model, settings) to a decision, table-tested. Everything about sockets is in mod.rs.

use crate::conf::config::{GuardSettings, ModelsPolicy, OptionsPolicy};
use crate::conf::ModelName;
use serde_json::{Map, Value};
use std::net::IpAddr;

/// Runner options Ollama compares before reusing a loaded model (api/types.go Runner, compared
/// by server/sched.go needsReload): a request that differs in any of them unloads and reloads.
pub const RELOAD_OPTIONS: [&str; 7] = ["num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict"];

/// Which rule decided, for the counters and the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    Passed,
    OtherModel,
    ReloadOptionDropped,
    ReloadOptionRefused,
    KeepAliveRemoved,
    KeepAliveCapped,
    AdminRefused,
    WaitedForWarm,
    NotWarm,
}

impl Rule {
    pub const ALL: [Rule; 9] = [
        Rule::Passed,
        Rule::OtherModel,
        Rule::ReloadOptionDropped,
        Rule::ReloadOptionRefused,
        Rule::KeepAliveRemoved,
        Rule::KeepAliveCapped,
        Rule::AdminRefused,
        Rule::WaitedForWarm,
        Rule::NotWarm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Passed => "passed",
            Rule::OtherModel => "other-model",
            Rule::ReloadOptionDropped => "reload-option-dropped",
            Rule::ReloadOptionRefused => "reload-option-refused",
            Rule::KeepAliveRemoved => "keep-alive-removed",
            Rule::KeepAliveCapped => "keep-alive-capped",
            Rule::AdminRefused => "admin-refused",
            Rule::WaitedForWarm => "waited-for-warm",
            Rule::NotWarm => "not-warm",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Forward; `body` is the rewritten JSON when something was changed.
    Forward {
        body: Option<Vec<u8>>,
        /// Said to the client in X-Jetson-Llmd-Guard.
        notes: Vec<String>,
        rules: Vec<Rule>,
        /// The request is for the pinned model: wait while it is not warm.
        for_pinned: bool,
    },
    Refuse { status: u16, message: String, rule: Rule },
}

/// Endpoints that name a model to run (Ollama's routes.go GenerateRoutes).
fn inference(path: &str) -> bool {
    matches!(
        path,
        "/api/generate" | "/api/chat" | "/api/embed" | "/api/embeddings" | "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" | "/v1/responses" | "/v1/messages"
    )
}

/// Endpoints that change what models exist.
fn admin(method: &str, path: &str) -> bool {
    (method == "POST" && (matches!(path, "/api/pull" | "/api/push" | "/api/create" | "/api/copy") || path.starts_with("/api/blobs/"))) || (method == "DELETE" && path == "/api/delete")
}

fn in_net(ip: IpAddr, net: &str) -> bool {
    let Some((base, bits)) = crate::conf::config::parse_net(net) else { return false };
    match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => bits == 0 || (u32::from(a) >> (32 - u32::from(bits))) == (u32::from(b) >> (32 - u32::from(bits))),
        (IpAddr::V6(a), IpAddr::V6(b)) => bits == 0 || (u128::from(a) >> (128 - u32::from(bits))) == (u128::from(b) >> (128 - u32::from(bits))),
        _ => false,
    }
}

pub fn may_administer(client: IpAddr, g: &GuardSettings) -> bool {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    client.is_loopback() || g.admin_from.iter().any(|n| in_net(client, n))
}

/// A keep_alive value as Ollama reads it (api/types.go Duration.UnmarshalJSON): a number of
/// seconds, or a Go duration string; negative means forever.
fn keep_alive_secs(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<f64>() {
                return Some(n);
            }
            if let Some(rest) = s.strip_prefix('-') {
                return humantime::parse_duration(rest).ok().map(|d| -d.as_secs_f64());
            }
            humantime::parse_duration(s).ok().map(|d| d.as_secs_f64())
        }
        _ => None,
    }
}

fn err(status: u16, rule: Rule, message: String) -> Decision {
    Decision::Refuse { status, message, rule }
}

pub fn decide(method: &str, path: &str, body: Option<&Map<String, Value>>, client: IpAddr, pinned: Option<&ModelName>, g: &GuardSettings) -> Decision {
    let pass = Decision::Forward { body: None, notes: Vec::new(), rules: vec![Rule::Passed], for_pinned: false };
    if admin(method, path) {
        if may_administer(client, g) {
            return pass;
        }
        return err(403, Rule::AdminRefused, format!("{path} from {client} is refused by jetson-llmd's guard: only this machine (or [guard] admin_from) may change models"));
    }
    if method != "POST" || !inference(path) {
        return pass;
    }
    let Some(body) = body else { return pass };
    let Some(name) = body.get("model").and_then(Value::as_str) else { return pass };
    let Ok(model) = ModelName::parse(name) else { return pass };
    let is_pinned = pinned.is_some_and(|p| p.matches(&model.full()) || model.matches(&p.full()));
    if !is_pinned {
        let allowed = match g.models {
            ModelsPolicy::Any => true,
            ModelsPolicy::Allow => g.allow.iter().any(|a| a.matches(&model.full()) || model.matches(&a.full())),
            ModelsPolicy::Pinned => false,
        };
        if !allowed && pinned.is_some() {
            let p = pinned.map(ModelName::to_string).unwrap_or_default();
            return err(
                409,
                Rule::OtherModel,
                format!("model {name:?} is not served here: this Jetson keeps {p} loaded on the GPU (loading another would evict it); use {p}, or switch with `sudo jetson-llmd switch {name}`"),
            );
        }
    }
    let mut out = body.clone();
    let mut notes = Vec::new();
    let mut rules = Vec::new();
    if is_pinned && !path.starts_with("/v1/") {
        if let Some(Value::Object(opts)) = out.get_mut("options") {
            let hit: Vec<&str> = RELOAD_OPTIONS.iter().copied().filter(|k| opts.contains_key(*k)).collect();
            if !hit.is_empty() {
                if g.options == OptionsPolicy::Strict {
                    return err(409, Rule::ReloadOptionRefused, format!("options {} would make Ollama reload {name} on this Jetson; leave them out (the model runs with the context it was loaded with)", hit.join(", ")));
                }
                for k in &hit {
                    opts.remove(*k);
                }
                notes.push(format!("dropped options {}", hit.join(",")));
                rules.push(Rule::ReloadOptionDropped);
            }
        }
    }
    if let Some(ka) = out.get("keep_alive").cloned() {
        if is_pinned {
            out.remove("keep_alive");
            notes.push("removed keep_alive (the model stays pinned)".into());
            rules.push(Rule::KeepAliveRemoved);
        } else {
            let max = g.keep_alive_max.as_secs_f64();
            let capped = match keep_alive_secs(&ka) {
                Some(s) if s < 0.0 || s > max => true,
                Some(_) => false,
                None => false,
            };
            if capped {
                out.insert("keep_alive".into(), Value::String(format!("{}s", g.keep_alive_max.as_secs())));
                notes.push(format!("capped keep_alive at {}s", g.keep_alive_max.as_secs()));
                rules.push(Rule::KeepAliveCapped);
            }
        }
    }
    if rules.is_empty() {
        rules.push(Rule::Passed);
    }
    let body = (!notes.is_empty()).then(|| serde_json::to_vec(&out).unwrap_or_default());
    Decision::Forward { body, notes, rules, for_pinned: is_pinned }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    fn local() -> IpAddr {
        "127.0.0.1".parse().expect("ip")
    }

    fn lan() -> IpAddr {
        "192.168.1.20".parse().expect("ip")
    }

    fn pinned() -> ModelName {
        ModelName::parse("gemma4:e2b-8k").expect("name")
    }

    fn forwarded(d: &Decision) -> Value {
        match d {
            Decision::Forward { body: Some(b), .. } => serde_json::from_slice(b).expect("json"),
            Decision::Forward { body: None, .. } => Value::Null,
            Decision::Refuse { message, .. } => panic!("refused: {message}"),
        }
    }

    #[test]
    fn policy_table() {
        let g = GuardSettings::default();
        let p = pinned();
        let d = |m: &str, path: &str, b: Value, ip: IpAddr, g: &GuardSettings| decide(m, path, Some(&body(b)), ip, Some(&p), g);

        // The pinned model with a client's num_ctx and keep_alive: both removed, sampling kept.
        let r = d("POST", "/api/chat", json!({"model": "gemma4:e2b-8k", "options": {"num_ctx": 2048, "temperature": 0.2, "seed": 7}, "keep_alive": "5m"}), lan(), &g);
        assert_eq!(forwarded(&r), json!({"model": "gemma4:e2b-8k", "options": {"temperature": 0.2, "seed": 7}}));
        assert!(matches!(&r, Decision::Forward { rules, for_pinned: true, .. } if rules == &[Rule::ReloadOptionDropped, Rule::KeepAliveRemoved]));
        // keep_alive 0 (an unload) on the pinned model: removed too.
        assert_eq!(forwarded(&d("POST", "/api/generate", json!({"model": "gemma4:e2b-8k", "keep_alive": 0}), lan(), &g)), json!({"model": "gemma4:e2b-8k"}));
        // Untouched requests are forwarded byte for byte.
        assert!(matches!(d("POST", "/api/generate", json!({"model": "gemma4:e2b-8k", "prompt": "hi"}), lan(), &g), Decision::Forward { body: None, .. }));
        // Another model: 409 with the pinned model's name and how to switch.
        match d("POST", "/api/generate", json!({"model": "llama3.2"}), lan(), &g) {
            Decision::Refuse { status: 409, message, rule: Rule::OtherModel } => assert!(message.contains("gemma4:e2b-8k") && message.contains("jetson-llmd switch llama3.2"), "{message}"),
            o => panic!("{o:?}"),
        }
        assert!(matches!(d("POST", "/v1/chat/completions", json!({"model": "qwen3:4b", "messages": []}), lan(), &g), Decision::Refuse { status: 409, .. }));
        // Strict options.
        let strict = GuardSettings { options: OptionsPolicy::Strict, ..GuardSettings::default() };
        assert!(matches!(d("POST", "/api/chat", json!({"model": "gemma4:e2b-8k", "options": {"num_gpu": 10}}), lan(), &strict), Decision::Refuse { status: 409, rule: Rule::ReloadOptionRefused, .. }));
        // Allow list: keep_alive capped, forever too.
        let allow = GuardSettings { models: ModelsPolicy::Allow, allow: vec![ModelName::parse("nomic-embed-text").expect("n")], ..GuardSettings::default() };
        assert_eq!(forwarded(&d("POST", "/api/embed", json!({"model": "nomic-embed-text", "keep_alive": -1}), lan(), &allow)), json!({"model": "nomic-embed-text", "keep_alive": "300s"}));
        assert!(matches!(d("POST", "/api/embed", json!({"model": "nomic-embed-text", "keep_alive": "1m"}), lan(), &allow), Decision::Forward { body: None, .. }));
        assert!(matches!(d("POST", "/api/embed", json!({"model": "llama3.2"}), lan(), &allow), Decision::Refuse { .. }));
        // Any: forwarded, keep_alive still capped for others.
        let any = GuardSettings { models: ModelsPolicy::Any, ..GuardSettings::default() };
        assert_eq!(forwarded(&d("POST", "/api/generate", json!({"model": "llama3.2", "keep_alive": "24h"}), lan(), &any)), json!({"model": "llama3.2", "keep_alive": "300s"}));
        // Admin endpoints: loopback and admin_from only.
        for (m, path) in [("POST", "/api/pull"), ("POST", "/api/create"), ("POST", "/api/copy"), ("DELETE", "/api/delete"), ("POST", "/api/push"), ("POST", "/api/blobs/sha256:00")] {
            assert!(matches!(d(m, path, json!({"model": "gemma4:e2b-8k"}), lan(), &g), Decision::Refuse { status: 403, rule: Rule::AdminRefused, .. }), "{path}");
            assert!(matches!(d(m, path, json!({"model": "gemma4:e2b-8k"}), local(), &g), Decision::Forward { .. }), "{path}");
        }
        let admins = GuardSettings { admin_from: vec!["192.168.1.0/24".into()], ..GuardSettings::default() };
        assert!(matches!(d("POST", "/api/pull", json!({"model": "x"}), lan(), &admins), Decision::Forward { .. }));
        assert!(!may_administer("192.168.2.1".parse().expect("ip"), &admins));
        assert!(may_administer("::ffff:127.0.0.1".parse().expect("ip"), &g), "v4-mapped loopback");
        // Reads pass.
        for (m, path) in [("GET", "/api/tags"), ("GET", "/api/ps"), ("GET", "/api/version"), ("POST", "/api/show"), ("GET", "/v1/models")] {
            assert!(matches!(d(m, path, json!({"model": "llama3.2"}), lan(), &g), Decision::Forward { body: None, .. }), "{path}");
        }
    }

    #[test]
    fn keep_alive_forms() {
        assert_eq!(keep_alive_secs(&json!(300)), Some(300.0));
        assert_eq!(keep_alive_secs(&json!("5m")), Some(300.0));
        assert_eq!(keep_alive_secs(&json!("-1")), Some(-1.0));
        assert_eq!(keep_alive_secs(&json!("-1m")), Some(-60.0));
        assert_eq!(keep_alive_secs(&json!({})), None);
    }
}
