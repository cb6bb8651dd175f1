//! What the guard does with one request: a pure function from (method, path, body, client,
//! pinned model, settings) to a decision, table-tested. Everything about sockets is in mod.rs.

use super::gobody::{BodyError, GoBody};
use super::routes::{self, Route};
use crate::conf::config::{GuardSettings, ModelsPolicy, OptionsPolicy};
use crate::conf::ModelName;
use serde_json::Value;
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
    /// A path, body, model name or field the guard cannot read exactly as Ollama will.
    Unreadable,
    /// A state-changing method on an endpoint the guard does not know.
    UnknownEndpoint,
    /// A body too large, too slow, or over the budget of bodies in flight.
    BodyRefused,
    /// A client off this machine without a valid key (or an admin call without an admin key).
    KeyRefused,
    /// Deleting, overwriting, re-creating, pulling or pushing the pinned model or its base.
    PinnedProtected,
    /// A request that runs or changes a model before the guard knows which model is pinned.
    PinUnknown,
}

impl Rule {
    pub const ALL: [Rule; 15] = [
        Rule::Passed,
        Rule::OtherModel,
        Rule::ReloadOptionDropped,
        Rule::ReloadOptionRefused,
        Rule::KeepAliveRemoved,
        Rule::KeepAliveCapped,
        Rule::AdminRefused,
        Rule::WaitedForWarm,
        Rule::NotWarm,
        Rule::Unreadable,
        Rule::UnknownEndpoint,
        Rule::BodyRefused,
        Rule::KeyRefused,
        Rule::PinnedProtected,
        Rule::PinUnknown,
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
            Rule::Unreadable => "unreadable",
            Rule::UnknownEndpoint => "unknown-endpoint",
            Rule::BodyRefused => "body-refused",
            Rule::KeyRefused => "key-refused",
            Rule::PinnedProtected => "pinned-protected",
            Rule::PinUnknown => "pin-unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Forward; `body` is the JSON to send instead of the client's bytes.
    Forward {
        body: Option<Vec<u8>>,
        /// Said to the client in X-Jetson-Llmd-Guard.
        notes: Vec<String>,
        rules: Vec<Rule>,
        /// The request is for the pinned model: wait while it is not warm.
        for_pinned: bool,
    },
    Refuse {
        status: u16,
        message: String,
        rule: Rule,
    },
}

/// Whether the request's body must be read (and decoded as Ollama will) before deciding: the
/// routes that run a model, and those that delete or replace one.
pub fn needs_body(method: &str, path: &str) -> bool {
    routes::unplain(path).is_none() && (routes::classify(method, path) == Route::Inference || routes::model_fields(method, path).is_some())
}

fn in_net(ip: IpAddr, net: &ipnet::IpNet) -> bool {
    // A v4 client on a dual-stack socket arrives as ::ffff:a.b.c.d; the networks are written v4.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    net.contains(&ip)
}

pub fn may_administer(client: IpAddr, g: &GuardSettings) -> bool {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    from_this_machine(client, g.listen) || g.admin_from.iter().any(|n| in_net(client, n))
}

/// A client on this machine: loopback, or (with `listen` on one address of the LAN) that very
/// address, which is where a local `jetson-llmd status` or `curl` to the listen address comes
/// from. No other host can complete a TCP handshake from our own address: the answers to it
/// never leave the machine.
pub fn from_this_machine(client: IpAddr, listen: std::net::SocketAddr) -> bool {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    client.is_loopback() || (!listen.ip().is_unspecified() && client == listen.ip())
}

/// Go's time.ParseDuration, in seconds (negative allowed); None where Go says no.
fn go_duration(s: &str) -> Option<f64> {
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, after) = rest.split_at(n);
        if num.is_empty() || num == "." {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let u = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(u);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = next;
    }
    Some(if neg { -total } else { total })
}

/// A keep_alive value as Ollama reads it (api/types.go Duration.UnmarshalJSON): a JSON number
/// of seconds, or a Go duration string; negative is forever. Some(None): null, as if absent.
/// None: Ollama refuses it (400).
fn keep_alive_secs(v: &Value) -> Option<Option<f64>> {
    match v {
        Value::Null => Some(None),
        Value::Number(n) => n.as_f64().map(Some),
        Value::String(s) => go_duration(s).map(Some),
        _ => None,
    }
}

/// How Ollama tells a model name from another: default host, namespace and tag filled in
/// (types/model/name.go ParseName, Merge with DefaultName), compared without regard to case
/// (server/routes.go getExistingName matches every part with strings.EqualFold).
fn model_key(m: &ModelName) -> String {
    let full = m.full();
    let parts: Vec<&str> = full.split('/').collect();
    let key = match parts.as_slice() {
        [model] => format!("registry.ollama.ai/library/{model}"),
        [ns, model] => format!("registry.ollama.ai/{ns}/{model}"),
        _ => full.clone(),
    };
    key.to_lowercase()
}

/// The model a request's `model` field names, read as Ollama reads it (internal/modelref
/// ParseRef: spaces trimmed; a `:local` suffix dropped; `:cloud` or a `-cloud` tag is a model
/// run on ollama.com, never this one). Ok(None): no name, which loads nothing (Ollama answers
/// 404 or 400). Err: what Ollama would refuse, or what the guard cannot read.
fn requested(v: Option<&Value>) -> Result<Option<(ModelName, bool)>, String> {
    let raw = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("\"model\" must be a string".into()),
    };
    let mut name = raw.trim();
    if name.is_empty() {
        return Ok(None);
    }
    let mut cloud = false;
    if let Some((base, suffix)) = name.rsplit_once(':') {
        let suffix = suffix.trim().to_ascii_lowercase();
        if suffix == "local" {
            name = base;
        } else if suffix == "cloud" {
            name = base;
            cloud = true;
        } else if !suffix.contains('/') && suffix.ends_with("-cloud") {
            cloud = true;
        }
    }
    ModelName::parse(name).map(|m| Some((m, cloud))).map_err(|e| e.to_string())
}

fn err(status: u16, rule: Rule, message: String) -> Decision {
    Decision::Refuse { status, message, rule }
}

fn pin_unknown() -> Decision {
    err(
        503,
        Rule::PinUnknown,
        "jetson-llmd's guard does not know yet which model this Jetson pins (model.conf is unreadable or invalid and nothing was loaded); requests that load or change a model are refused until it does: fix /etc/ollama/model.conf (`jetson-llmd check`)".into(),
    )
}

/// An admin request that deletes, overwrites (copy onto, create), pulls over or pushes a model:
/// refused for the pinned model and its base, from every address but `replace_pinned_from`.
/// One `DELETE /api/delete` from any local program would otherwise leave every client a 404
/// and a re-pull of gigabytes, and a `create` of the pinned name would reload it with another
/// context at the next request. jetson-llmd itself talks to Ollama directly, not through here.
fn replaces(path: &str, fields: &[&str], body: Option<&Result<GoBody, BodyError>>, client: IpAddr, pinned: Option<&ModelName>, g: &GuardSettings) -> Decision {
    if g.replace_pinned_from.iter().any(|n| in_net(client, n)) {
        return Decision::Forward { body: None, notes: Vec::new(), rules: vec![Rule::Passed], for_pinned: false };
    }
    let unreadable = |what: String| err(400, Rule::Unreadable, format!("{what} (jetson-llmd's guard passes on only what it can read as Ollama will)"));
    let body = match body {
        Some(Ok(b)) => b,
        Some(Err(e)) => return unreadable(e.to_string()),
        None => return unreadable("missing request body".into()),
    };
    let Some(pinned) = pinned else { return pin_unknown() };
    let base = g.bases.get(&pinned.full());
    for f in fields {
        let (named, cloud) = match requested(body.fields.get(*f)) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => return unreadable(e),
        };
        if cloud {
            continue;
        }
        let what = if model_key(&named) == model_key(pinned) {
            format!("{named} is the model this Jetson keeps loaded")
        } else if base.is_some_and(|b| model_key(b) == model_key(&named)) {
            format!("{named} is the base {pinned} is created from")
        } else {
            continue;
        };
        let verb = match path {
            "/api/delete" => "deleting",
            "/api/copy" => "copying onto",
            "/api/create" => "creating",
            "/api/pull" => "pulling over",
            _ => "pushing",
        };
        return err(
            403,
            Rule::PinnedProtected,
            format!("jetson-llmd's guard refuses {verb} {named}: {what}, and changing it under Ollama would leave clients a missing or different model; switch models with `sudo jetson-llmd switch NAME`, or list this address in [guard] replace_pinned_from"),
        );
    }
    // What Ollama reads is what was decided on.
    Decision::Forward { body: (!body.plain).then(|| serde_json::to_vec(&body.fields).unwrap_or_default()), notes: Vec::new(), rules: vec![Rule::Passed], for_pinned: false }
}

/// One request. `body` is the decoded body of an inference request ([`needs_body`]), or why
/// it could not be decoded; None for every other request.
pub fn decide(method: &str, path: &str, body: Option<&Result<GoBody, BodyError>>, client: IpAddr, pinned: Option<&ModelName>, g: &GuardSettings) -> Decision {
    let pass = Decision::Forward { body: None, notes: Vec::new(), rules: vec![Rule::Passed], for_pinned: false };
    let route = routes::classify(method, path);
    // GET, HEAD and OPTIONS load nothing on any path (a client that escapes the `:` in
    // /v1/models/name:tag is only reading); every other method needs a plain path.
    if let Some(what) = routes::unplain(path).filter(|_| !matches!(method, "GET" | "HEAD" | "OPTIONS")) {
        return err(400, Rule::Unreadable, format!("jetson-llmd's guard refuses request paths with {what}: Ollama would read them differently; send the plain path"));
    }
    match route {
        Route::Read => return pass,
        Route::Unknown => return err(404, Rule::UnknownEndpoint, format!("{method} {path} is not an Ollama endpoint jetson-llmd's guard knows; it is refused rather than passed on")),
        Route::Admin if !may_administer(client, g) => return err(403, Rule::AdminRefused, format!("{path} from {client} is refused by jetson-llmd's guard: only this machine (or [guard] admin_from) may change models")),
        Route::Admin => {
            return match routes::model_fields(method, path) {
                Some(fields) => replaces(path, fields, body, client, pinned, g),
                None => pass,
            }
        }
        Route::Inference => {}
    }
    let body = match body {
        Some(Ok(b)) => b,
        Some(Err(e)) => return err(400, Rule::Unreadable, format!("{e} (jetson-llmd's guard passes on only what it can read as Ollama will)")),
        None => return err(400, Rule::Unreadable, "missing request body".into()),
    };
    let unreadable = |what: String| err(400, Rule::Unreadable, format!("{what} (jetson-llmd's guard passes on only what it can read as Ollama will)"));
    let (model, cloud) = match requested(body.fields.get("model")) {
        Ok(Some(m)) => m,
        // No model: Ollama loads nothing and answers with its own error.
        Ok(None) => return Decision::Forward { body: (!body.plain).then(|| serde_json::to_vec(&body.fields).unwrap_or_default()), notes: Vec::new(), rules: vec![Rule::Passed], for_pinned: false },
        Err(e) => return unreadable(e),
    };
    let name = model.to_string();
    // Until the guard knows the pinned model, any model it lets through could be the first to
    // load and take the memory (issue 30: with Ollama already up, gemma3:4b loaded this way).
    let Some(pinned) = pinned else { return pin_unknown() };
    let pinned = Some(pinned);
    let is_pinned = !cloud && pinned.is_some_and(|p| model_key(p) == model_key(&model));
    if !is_pinned {
        let allowed = match g.models {
            ModelsPolicy::Any => true,
            ModelsPolicy::Allow => !cloud && g.allow.iter().any(|a| model_key(a) == model_key(&model)),
            ModelsPolicy::Pinned => false,
        };
        if !allowed && pinned.is_some() {
            let p = pinned.map(ModelName::to_string).unwrap_or_default();
            return err(409, Rule::OtherModel, format!("model {name:?} is not served here: this Jetson keeps {p} loaded on the GPU (loading another would evict it); use {p}, or switch with `sudo jetson-llmd switch {name}`"));
        }
    }
    let mut out = body.fields.clone();
    let mut notes = Vec::new();
    let mut rules = Vec::new();
    match out.get("options") {
        None | Some(Value::Null | Value::Object(_)) => {}
        Some(_) => return unreadable("\"options\" must be an object".into()),
    }
    if is_pinned && !path.starts_with("/v1/") {
        // Exact keys: Options.FromMap matches them so (and ignores any other spelling).
        let mut hit: Vec<&str> = Vec::new();
        if let Some(Value::Object(opts)) = out.get_mut("options") {
            hit = RELOAD_OPTIONS.iter().copied().filter(|k| opts.contains_key(*k)).collect();
            for k in &hit {
                opts.remove(*k);
            }
        }
        // Since v0.30 needsReload also compares the context shift a request asks for (the
        // top-level `shift`, server/sched.go resolveContextShift).
        if out.remove("shift").is_some() {
            hit.push("shift");
        }
        if !hit.is_empty() {
            if g.options == OptionsPolicy::Strict {
                return err(409, Rule::ReloadOptionRefused, format!("options {} would make Ollama reload {name} on this Jetson; leave them out (the model runs with the context it was loaded with)", hit.join(", ")));
            }
            notes.push(format!("dropped options {}", hit.join(",")));
            rules.push(Rule::ReloadOptionDropped);
        }
    }
    if let Some(ka) = out.get("keep_alive").cloned() {
        let secs = match keep_alive_secs(&ka) {
            Some(s) => s,
            None if is_pinned => None,
            None => return unreadable(format!("keep_alive {ka} is not a duration Ollama reads")),
        };
        if is_pinned {
            out.remove("keep_alive");
            notes.push("removed keep_alive (the model stays pinned)".into());
            rules.push(Rule::KeepAliveRemoved);
        } else if let Some(s) = secs {
            if s < 0.0 || s > g.keep_alive_max.as_secs_f64() {
                out.insert("keep_alive".into(), Value::String(format!("{}s", g.keep_alive_max.as_secs())));
                notes.push(format!("capped keep_alive at {}s", g.keep_alive_max.as_secs()));
                rules.push(Rule::KeepAliveCapped);
            }
        }
    }
    if rules.is_empty() {
        rules.push(Rule::Passed);
    }
    // What Ollama will read is what was decided on: the decoded fields, unless the client's
    // bytes already say exactly that and nothing changed.
    let body = (!notes.is_empty() || !body.plain).then(|| serde_json::to_vec(&out).unwrap_or_default());
    Decision::Forward { body, notes, rules, for_pinned: is_pinned }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::Settings;
    use serde_json::json;

    /// A body as the guard sees it: decoded from the bytes a client would send.
    fn body(v: Value) -> Result<GoBody, BodyError> {
        super::super::gobody::decode(&serde_json::to_vec(&v).expect("json"))
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
            assert!(matches!(d(m, path, json!({"model": "qwen3:4b", "source": "gemma4:e2b-8k", "destination": "mine"}), local(), &g), Decision::Forward { .. }), "{path}");
        }
        let admins = GuardSettings { admin_from: vec!["192.168.1.0/24".parse().expect("net")], ..GuardSettings::default() };
        assert!(matches!(d("POST", "/api/pull", json!({"model": "x"}), lan(), &admins), Decision::Forward { .. }));
        assert!(!may_administer("192.168.2.1".parse().expect("ip"), &admins));
        assert!(may_administer("::ffff:127.0.0.1".parse().expect("ip"), &g), "v4-mapped loopback");
        // The guard's own LAN address is this machine; its neighbours are not.
        let on_lan = GuardSettings { listen: "192.168.2.20:11434".parse().expect("addr"), ..g.clone() };
        assert!(may_administer("192.168.2.20".parse().expect("ip"), &on_lan));
        assert!(!may_administer("192.168.2.21".parse().expect("ip"), &on_lan));
        let any = GuardSettings { listen: "0.0.0.0:11434".parse().expect("addr"), ..g.clone() };
        assert!(!may_administer("192.168.2.20".parse().expect("ip"), &any), "listening on every address: loopback only");
        // Reads pass.
        for (m, path) in [("GET", "/api/tags"), ("GET", "/api/ps"), ("GET", "/api/version"), ("POST", "/api/show"), ("GET", "/v1/models")] {
            assert!(matches!(d(m, path, json!({"model": "llama3.2"}), lan(), &g), Decision::Forward { body: None, .. }), "{path}");
        }
    }

    /// Issue 30: the pinned model and its base cannot be deleted, overwritten, re-created, pulled
    /// over or pushed through the guard, from this machine either, under any spelling Ollama
    /// folds into them; `replace_pinned_from` may; other models are untouched.
    #[test]
    fn the_pinned_model_and_its_base_are_not_replaced() {
        let g = Settings::default().guard;
        let p = pinned();
        let raw = |m: &str, path: &str, b: &[u8], ip: IpAddr, g: &GuardSettings| decide(m, path, Some(&super::super::gobody::decode(b)), ip, Some(&p), g);
        let refused = |d: Decision| match d {
            Decision::Refuse { status, rule, message } => (status, rule, message),
            o => panic!("forwarded: {o:?}"),
        };
        let cases: [(&str, &str, &[u8]); 12] = [
            ("DELETE", "/api/delete", br#"{"model":"gemma4:e2b-8k"}"#),
            ("DELETE", "/api/delete", br#"{"model":"gemma4:e2b-it-qat"}"#),
            ("DELETE", "/api/delete", br#"{"name":"GEMMA4:E2B-8K"}"#),
            ("DELETE", "/api/delete", br#"{"Model":"registry.ollama.ai/library/gemma4:e2b-8k"}"#),
            ("DELETE", "/api/delete", br#"{"model":"gemma4:e2b-8k:local"}"#),
            ("POST", "/api/copy", br#"{"source":"llama3.2","destination":"gemma4:e2b-8k"}"#),
            ("POST", "/api/copy", br#"{"source":"llama3.2","Destination":"gemma4:e2b-it-qat"}"#),
            ("POST", "/api/create", br#"{"model":"gemma4:e2b-8k","from":"gemma4:e2b-it-qat","parameters":{"num_ctx":2048}}"#),
            ("POST", "/api/create", br#"{"model":"x","MODEL":"gemma4:e2b-8k","from":"gemma4:e2b-it-qat"}"#),
            ("POST", "/api/pull", br#"{"model":"gemma4:e2b-it-qat"}"#),
            ("POST", "/api/pull", br#"{"name":"gemma4:e2b-8k"}"#),
            ("POST", "/api/push", br#"{"model":"gemma4:e2b-8k"}"#),
        ];
        for (m, path, b) in cases {
            let (status, rule, message) = refused(raw(m, path, b, local(), &g));
            assert_eq!((status, rule), (403, Rule::PinnedProtected), "{m} {path} {}", String::from_utf8_lossy(b));
            assert!(message.contains("jetson-llmd switch") && message.contains("replace_pinned_from"), "{message}");
        }
        // Unreadable bodies and names are refused, never passed on.
        for b in [&b"model=gemma4"[..], br#"{"model":5}"#, br#"{"model":"bad name!"}"#] {
            assert_eq!(refused(raw("DELETE", "/api/delete", b, local(), &g)).0, 400, "{}", String::from_utf8_lossy(b));
        }
        // Other models, copying *from* the pinned one, a cloud model of the same name: passed.
        for (m, path, b) in [
            ("DELETE", "/api/delete", &br#"{"model":"llama3.2"}"#[..]),
            ("POST", "/api/copy", br#"{"source":"gemma4:e2b-8k","destination":"backup"}"#),
            ("POST", "/api/create", br#"{"model":"gemma4:e2b-4k","from":"gemma4:e2b-it-qat"}"#),
            ("POST", "/api/pull", br#"{"model":"qwen3:4b"}"#),
            ("POST", "/api/push", br#"{"model":"gemma4:e2b-8k:cloud"}"#),
        ] {
            assert!(matches!(raw(m, path, b, local(), &g), Decision::Forward { .. }), "{m} {path}");
        }
        // The override, for the addresses it names only.
        let admin = GuardSettings { replace_pinned_from: vec!["127.0.0.1/32".parse().expect("net")], ..g.clone() };
        assert!(matches!(raw("DELETE", "/api/delete", br#"{"model":"gemma4:e2b-8k"}"#, local(), &admin), Decision::Forward { .. }));
        assert!(matches!(raw("DELETE", "/api/delete", br#"{"model":"gemma4:e2b-8k"}"#, "127.0.0.2".parse().expect("ip"), &admin), Decision::Refuse { status: 403, .. }));
        // Decoded as Ollama will: a second spelling of the key is what Go keeps, and what is forwarded.
        match raw("DELETE", "/api/delete", br#"{"model":"llama3.2"} {"model":"gemma4:e2b-8k"}"#, local(), &g) {
            Decision::Forward { body: Some(b), .. } => assert_eq!(serde_json::from_slice::<Value>(&b).expect("json"), json!({"model": "llama3.2"})),
            o => panic!("{o:?}"),
        }
    }

    /// Issue 30: before the guard knows the pinned model, nothing that loads or changes a model
    /// goes through (Ollama may already be up, and the first load takes the memory).
    #[test]
    fn nothing_loads_before_the_pin_is_known() {
        let g = GuardSettings { models: ModelsPolicy::Any, ..GuardSettings::default() };
        for (m, path, b) in [("POST", "/api/generate", json!({"model": "gemma3:4b"})), ("POST", "/v1/chat/completions", json!({"model": "llama3.1:8b", "messages": []})), ("DELETE", "/api/delete", json!({"model": "x"}))] {
            match decide(m, path, Some(&body(b)), local(), None, &g) {
                Decision::Refuse { status: 503, rule: Rule::PinUnknown, message } => assert!(message.contains("model.conf"), "{message}"),
                o => panic!("{path}: {o:?}"),
            }
        }
        // Reads, and a request that names no model (Ollama answers it itself), still go on.
        assert!(matches!(decide("GET", "/api/tags", None, local(), None, &g), Decision::Forward { .. }));
        assert!(matches!(decide("POST", "/api/generate", Some(&body(json!({"prompt": "hi"}))), local(), None, &g), Decision::Forward { .. }));
    }

    #[test]
    fn keep_alive_forms() {
        assert_eq!(keep_alive_secs(&json!(300)), Some(Some(300.0)));
        assert_eq!(keep_alive_secs(&json!(-1)), Some(Some(-1.0)));
        assert_eq!(keep_alive_secs(&json!("5m")), Some(Some(300.0)));
        assert_eq!(keep_alive_secs(&json!("1.5h")), Some(Some(5400.0)));
        assert_eq!(keep_alive_secs(&json!("1h30m")), Some(Some(5400.0)));
        assert_eq!(keep_alive_secs(&json!("-1m")), Some(Some(-60.0)));
        assert_eq!(keep_alive_secs(&json!("300ms")), Some(Some(0.3)));
        assert_eq!(keep_alive_secs(&json!("0")), Some(Some(0.0)));
        assert_eq!(keep_alive_secs(&json!(null)), Some(None));
        // What Go's time.ParseDuration refuses, Ollama answers 400 for.
        for bad in [json!("-1"), json!("5 minutes"), json!("forever"), json!(""), json!("1d"), json!({}), json!(true)] {
            assert_eq!(keep_alive_secs(&bad), None, "{bad}");
        }
    }

    /// Read as Go reads the body: the guard decides on what Ollama will see, and forwards that.
    #[test]
    fn go_readings_are_decided_on() {
        let g = GuardSettings::default();
        let p = pinned();
        let raw = |path: &str, b: &[u8]| decide("POST", path, Some(&super::super::gobody::decode(b)), lan(), Some(&p), &g);
        let refused = |d: Decision| match d {
            Decision::Refuse { status, rule, .. } => (status, rule),
            o => panic!("forwarded: {o:?}"),
        };
        // Another model under a spelling serde would not see.
        assert_eq!(refused(raw("/api/generate", br#"{"Model":"llama3.2"}"#)), (409, Rule::OtherModel));
        assert_eq!(refused(raw("/api/generate", br#"{"model":"gemma4:e2b-8k","MODEL":"llama3.2"}"#)), (409, Rule::OtherModel));
        assert_eq!(refused(raw("/api/generate", br#"{"model":"llama3.2"} {"model":"gemma4:e2b-8k"}"#)), (409, Rule::OtherModel));
        // The pinned model under names Ollama folds into it: still the pinned model.
        for name in ["GEMMA4:E2B-8K", " gemma4:e2b-8k ", "gemma4:e2b-8k:local", "library/gemma4:e2b-8k", "registry.ollama.ai/library/gemma4:e2b-8k"] {
            let b = serde_json::to_vec(&json!({"model": name, "keep_alive": 0})).expect("json");
            match raw("/api/generate", &b) {
                Decision::Forward { for_pinned: true, body: Some(out), .. } => {
                    assert_eq!(serde_json::from_slice::<Value>(&out).expect("json"), json!({"model": name}), "{name}");
                }
                o => panic!("{name}: {o:?}"),
            }
        }
        // keep_alive and options under Go-folded keys are removed like the plain ones.
        let out = |d: Decision| match d {
            Decision::Forward { body: Some(b), .. } => serde_json::from_slice::<Value>(&b).expect("json"),
            o => panic!("{o:?}"),
        };
        assert_eq!(out(raw("/api/chat", br#"{"model":"gemma4:e2b-8k","KEEP_ALIVE":0,"Options":{"num_ctx":2048,"top_k":5},"Shift":false}"#)), json!({"model": "gemma4:e2b-8k", "options": {"top_k": 5}}));
        assert_eq!(out(raw("/api/chat", "{\"model\":\"gemma4:e2b-8k\",\"\u{212A}eep_alive\":0}".as_bytes())), json!({"model": "gemma4:e2b-8k"}));
        // Trailing data is never forwarded: Ollama gets exactly what was decided on.
        assert_eq!(out(raw("/api/generate", br#"{"model":"gemma4:e2b-8k","prompt":"hi"} {"keep_alive":0}"#)), json!({"model": "gemma4:e2b-8k", "prompt": "hi"}));
        // What cannot be read as Ollama will is refused, not passed on.
        for b in [&b"model=x"[..], b"[1]", b"{\"model\":", b"{\"model\":5}", b"{\"model\":\"bad name!\"}", b"{\"model\":\"gemma4:e2b-8k\",\"options\":[1]}"] {
            assert_eq!(refused(raw("/api/generate", b)), (400, Rule::Unreadable), "{}", String::from_utf8_lossy(b));
        }
        assert_eq!(refused(decide("POST", "/api/generate", None, lan(), Some(&p), &g)), (400, Rule::Unreadable));
        // Paths gin would decode or net/http would clean, and endpoints the guard does not know.
        for path in ["/api/%67enerate", "/api/%64elete", "//api/generate", "/api/./chat", "/v1/../api/chat"] {
            assert_eq!(refused(decide("POST", path, None, lan(), Some(&p), &g)), (400, Rule::Unreadable), "{path}");
        }
        assert_eq!(refused(decide("DELETE", "/api/%64elete", None, local(), Some(&p), &g)), (400, Rule::Unreadable));
        // Reads load nothing wherever they go.
        assert!(matches!(decide("GET", "/v1/models/gemma4%3Ae2b-8k", None, lan(), Some(&p), &g), Decision::Forward { .. }));
        for (m, path) in [("POST", "/api/generate/"), ("PUT", "/api/generate"), ("POST", "/api/something-new"), ("PATCH", "/api/chat")] {
            assert_eq!(refused(decide(m, path, None, lan(), Some(&p), &g)), (404, Rule::UnknownEndpoint), "{m} {path}");
        }
        // Another model's keep_alive that Go reads but a looser parser would not: still capped.
        let allow = GuardSettings { models: ModelsPolicy::Any, ..GuardSettings::default() };
        let d = decide("POST", "/api/generate", Some(&body(json!({"model": "llama3.2", "keep_alive": "1.5h"}))), lan(), Some(&p), &allow);
        assert_eq!(out(d), json!({"model": "llama3.2", "keep_alive": "300s"}));
        // A cloud model is never the pinned one.
        assert_eq!(refused(raw("/api/generate", br#"{"model":"gemma4:e2b-8k:cloud"}"#)), (409, Rule::OtherModel));
        // No model: nothing loads, Ollama answers itself.
        assert!(matches!(raw("/api/generate", br#"{"prompt":"hi"}"#), Decision::Forward { for_pinned: false, .. }));
    }
}
