//! /etc/jetson-llmd/config.toml: parse (toml, line numbers) -> merge with compiled-in defaults ->
//! validate into [`Settings`]. Every key is optional; the defaults below are documented again in
//! etc/jetson-llmd/config.toml.

use super::model_name::ModelName;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG: &str = "/etc/jetson-llmd/config.toml";
pub const DEFAULT_MODEL_CONF: &str = "/etc/ollama/model.conf";

/// The file as written, before defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub keepalive_interval: Option<String>,
    pub residency_check: Option<String>,
    pub monitor_interval: Option<String>,
    pub temperature_warn_c: Option<u32>,
    pub metrics_listen: Option<String>,
    pub expected_compute: Option<String>,
    pub min_gpu_percent: Option<u8>,
    pub ollama_bin: Option<PathBuf>,
    pub startup_timeout: Option<String>,
    pub gpu_discovery_timeout: Option<String>,
    pub load_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub retry_max_backoff: Option<String>,
    pub on_reboot_required: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub allow_remote_ollama: Option<bool>,
    pub memory_reserve_mib: Option<u64>,
    pub allow_overcommit: Option<bool>,
    #[serde(default)]
    pub models: BTreeMap<String, RawDerived>,
    #[serde(default)]
    pub guard: RawGuard,
}

/// `[guard]`: the front door in front of Ollama (docs/guard.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub models: Option<String>,
    pub allow: Option<Vec<String>>,
    pub options: Option<String>,
    pub keep_alive_max: Option<String>,
    pub admin_from: Option<Vec<String>>,
    pub ready_wait: Option<String>,
    pub body_budget_mib: Option<u64>,
    pub body_timeout: Option<String>,
    pub keys_file: Option<PathBuf>,
}

/// Which models clients may name through the guard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelsPolicy {
    /// Only the pinned model; others get 409.
    Pinned,
    /// The pinned model and the `allow` list.
    Allow,
    /// Everything is forwarded (only options and keep_alive are policed).
    Any,
}

/// What happens to runner options that would make Ollama reload the pinned model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptionsPolicy {
    /// Removed from the request, said in a response header.
    Drop,
    /// The request is refused with 409.
    Strict,
}

/// What GPU discovery must find before a model is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedCompute {
    /// A CUDA device of this compute capability (major, minor): the Orin's 8.7 by default.
    Cuda { major: u8, minor: u8 },
    /// Ollama on the CPU is the expected verdict, and a model 0 % on the GPU is warm. For hosts
    /// without a GPU: CI, tests, x86 machines running the real Ollama (`expected_compute = "cpu"`).
    Cpu,
}

impl ExpectedCompute {
    /// The Jetson Orin's compute capability.
    pub const ORIN: ExpectedCompute = ExpectedCompute::Cuda { major: 8, minor: 7 };

    /// `"8.7"` or `"cpu"`; the message says what to write instead.
    pub fn parse(s: &str) -> Result<ExpectedCompute, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("cpu") {
            return Ok(ExpectedCompute::Cpu);
        }
        let num = |x: &str| (!x.is_empty() && x.len() <= 3 && x.bytes().all(|c| c.is_ascii_digit())).then(|| x.parse::<u8>().ok()).flatten();
        match t.split_once('.').map(|(a, b)| (num(a), num(b))) {
            Some((Some(major), Some(minor))) => Ok(ExpectedCompute::Cuda { major, minor }),
            _ => Err(format!("expected_compute = {s:?}: write a CUDA compute capability like \"8.7\" (Orin), or \"cpu\" on a host without a GPU (CI, tests)")),
        }
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self, ExpectedCompute::Cpu)
    }
}

impl std::fmt::Display for ExpectedCompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedCompute::Cuda { major, minor } => write!(f, "{major}.{minor}"),
            ExpectedCompute::Cpu => f.write_str("cpu"),
        }
    }
}

impl serde::Serialize for ExpectedCompute {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GuardSettings {
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
    pub models: ModelsPolicy,
    pub allow: Vec<ModelName>,
    pub options: OptionsPolicy,
    /// The longest keep_alive a client may ask for a model other than the pinned one.
    #[serde(with = "humantime_serde_like")]
    pub keep_alive_max: Duration,
    /// Networks (besides loopback) allowed to pull, create, copy, push and delete models.
    pub admin_from: Vec<String>,
    /// How long a request for the pinned model waits while it is being (re)loaded.
    #[serde(with = "humantime_serde_like")]
    pub ready_wait: Duration,
    /// Request bodies the guard holds to inspect, all connections together (MiB): past it a
    /// request gets 503 with Retry-After instead of growing the supervisor's memory.
    pub body_budget_mib: u64,
    /// How long a client may take to send an inspected request's body (then 408).
    #[serde(with = "humantime_serde_like")]
    pub body_timeout: Duration,
    /// API keys (hashed) that clients off this machine must present (guard/keys.rs); None:
    /// no keys asked.
    pub keys_file: Option<PathBuf>,
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            enabled: false,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 11434)),
            models: ModelsPolicy::Pinned,
            allow: Vec::new(),
            options: OptionsPolicy::Drop,
            keep_alive_max: Duration::from_secs(300),
            admin_from: Vec::new(),
            ready_wait: Duration::from_secs(120),
            body_budget_mib: 16,
            body_timeout: Duration::from_secs(30),
            keys_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDerived {
    pub from: String,
    pub num_ctx: Option<u64>,
}

/// A model created from a base with parameters (the seed's Modelfile).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Derived {
    pub from: ModelName,
    pub num_ctx: Option<NonZeroU64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRebootRequired {
    /// Say so (status, STATUS=, exit code 4) and wait for a human.
    Report,
    /// Reboot the machine through systemd.
    Reboot,
}

/// Validated settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    #[serde(with = "humantime_serde_like")]
    pub keepalive_interval: Duration,
    /// How often the supervisor checks /api/ps that the model is still there and pinned.
    #[serde(with = "humantime_serde_like")]
    pub residency_check: Duration,
    /// How often the supervisor samples the board (swap-ins, memory, temperatures).
    #[serde(with = "humantime_serde_like")]
    pub monitor_interval: Duration,
    /// A temperature at or above this (C) is a warning.
    pub temperature_warn_c: u32,
    /// Where /metrics and /healthz are served; None is off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub expected_compute: ExpectedCompute,
    pub min_gpu_percent: u8,
    pub ollama_bin: PathBuf,
    #[serde(with = "humantime_serde_like")]
    pub startup_timeout: Duration,
    #[serde(with = "humantime_serde_like")]
    pub gpu_discovery_timeout: Duration,
    #[serde(with = "humantime_serde_like")]
    pub load_timeout: Duration,
    #[serde(with = "humantime_serde_like")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde_like")]
    pub retry_max_backoff: Duration,
    pub on_reboot_required: OnRebootRequired,
    pub state_dir: PathBuf,
    pub allow_remote_ollama: bool,
    /// Memory kept free when admitting a model (MiB).
    pub memory_reserve_mib: u64,
    /// Switch to a model even when admission says it does not fit (with a warning).
    pub allow_overcommit: bool,
    pub models: BTreeMap<String, Derived>,
    pub guard: GuardSettings,
}

mod humantime_serde_like {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

impl Default for Settings {
    fn default() -> Self {
        let mut models = BTreeMap::new();
        // The seed's Modelfile: FROM gemma4:e2b-it-qat, PARAMETER num_ctx 8192.
        if let (Ok(name), Ok(from)) = (ModelName::parse("gemma4:e2b-8k"), ModelName::parse("gemma4:e2b-it-qat")) {
            models.insert(name.full(), Derived { from, num_ctx: NonZeroU64::new(8192) });
        }
        Settings {
            keepalive_interval: Duration::from_secs(240),
            residency_check: Duration::from_secs(15),
            monitor_interval: Duration::from_secs(10),
            temperature_warn_c: 85,
            metrics_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464))),
            expected_compute: ExpectedCompute::ORIN,
            min_gpu_percent: 100,
            ollama_bin: PathBuf::from("/usr/local/bin/ollama"),
            startup_timeout: Duration::from_secs(120),
            gpu_discovery_timeout: Duration::from_secs(30),
            load_timeout: Duration::from_secs(360),
            request_timeout: Duration::from_secs(10),
            retry_max_backoff: Duration::from_secs(300),
            on_reboot_required: OnRebootRequired::Report,
            state_dir: PathBuf::from("/run/jetson-llmd"),
            allow_remote_ollama: false,
            memory_reserve_mib: 512,
            allow_overcommit: false,
            models,
            guard: GuardSettings::default(),
        }
    }
}

/// A config.toml problem; `line` 0 means the file as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}{}: {message}", if *.line > 0 { format!(":{}", .line) } else { String::new() })]
pub struct ConfigError {
    pub path: String,
    pub line: usize,
    pub message: String,
}

/// Step 1: text -> RawConfig. Pure; errors carry the line.
pub fn parse(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1).unwrap_or(1);
        ConfigError { path: path.display().to_string(), line, message: e.message().trim().to_string() }
    })
}

/// Sane bounds for every duration key: (key, least, most). Outside them a value is a typo or a
/// misunderstanding (a 1 ns keepalive would hammer Ollama thousands of times a second).
pub const DURATION_BOUNDS: [(&str, Duration, Duration); 11] = [
    ("body_timeout", Duration::from_secs(1), Duration::from_secs(600)),
    ("keep_alive_max", Duration::from_secs(0), Duration::from_secs(86400)),
    ("ready_wait", Duration::from_secs(0), Duration::from_secs(1800)),
    ("keepalive_interval", Duration::from_secs(10), Duration::from_secs(3600)),
    ("residency_check", Duration::from_secs(5), Duration::from_secs(600)),
    ("monitor_interval", Duration::from_secs(1), Duration::from_secs(600)),
    ("startup_timeout", Duration::from_secs(1), Duration::from_secs(3600)),
    ("gpu_discovery_timeout", Duration::from_secs(1), Duration::from_secs(600)),
    ("load_timeout", Duration::from_secs(10), Duration::from_secs(7200)),
    ("request_timeout", Duration::from_secs(1), Duration::from_secs(600)),
    ("retry_max_backoff", Duration::from_secs(1), Duration::from_secs(3600)),
];

/// Checks `d` against [`DURATION_BOUNDS`] for `key`; the message names the bounds.
pub fn check_bounds(key: &str, d: Duration) -> Result<Duration, String> {
    let Some((_, lo, hi)) = DURATION_BOUNDS.iter().find(|(k, ..)| *k == key) else { return Ok(d) };
    if d < *lo || d > *hi {
        return Err(format!(
            "{key} = {:?} is out of bounds: use {} to {}",
            humantime::format_duration(d).to_string(),
            humantime::format_duration(*lo),
            humantime::format_duration(*hi)
        ));
    }
    Ok(d)
}

fn duration(path: &Path, text: &str, key: &str, v: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let err = |message| ConfigError { path: path.display().to_string(), line: line_of(text, key), message };
    let Some(s) = v else { return Ok(default) };
    let d = humantime::parse_duration(s.trim()).map_err(|e| err(format!("{key} = {s:?}: {e}; write a duration like \"4m\", \"30s\" or \"1h 30m\"")))?;
    check_bounds(key, d).map_err(err)
}

fn line_of(text: &str, key: &str) -> usize {
    text.lines().position(|l| l.trim_start().starts_with(key)).map_or(1, |i| i + 1)
}

/// Steps 2 and 3: defaults merged in, values validated.
pub fn settle(path: &Path, text: &str, raw: RawConfig) -> Result<Settings, ConfigError> {
    let d = Settings::default();
    let err = |key: &str, message: String| ConfigError { path: path.display().to_string(), line: line_of(text, key), message };
    let expected_compute = match raw.expected_compute.as_deref() {
        None => d.expected_compute,
        Some(s) => ExpectedCompute::parse(s).map_err(|m| err("expected_compute", m))?,
    };
    let min_gpu_percent = raw.min_gpu_percent.unwrap_or(d.min_gpu_percent);
    if min_gpu_percent > 100 {
        return Err(err("min_gpu_percent", format!("min_gpu_percent = {min_gpu_percent}: must be 0 to 100")));
    }
    let on_reboot_required = match raw.on_reboot_required.as_deref() {
        None | Some("report") => OnRebootRequired::Report,
        Some("reboot") => OnRebootRequired::Reboot,
        Some(o) => return Err(err("on_reboot_required", format!("on_reboot_required = {o:?}: use \"report\" or \"reboot\""))),
    };
    let temperature_warn_c = raw.temperature_warn_c.unwrap_or(d.temperature_warn_c);
    if !(50..=110).contains(&temperature_warn_c) {
        return Err(err("temperature_warn_c", format!("temperature_warn_c = {temperature_warn_c}: use 50 to 110 (C)")));
    }
    let metrics_listen = match raw.metrics_listen.as_deref().map(str::trim) {
        None => d.metrics_listen,
        Some("off" | "") => None,
        Some(a) => Some(a.parse().map_err(|_| err("metrics_listen", format!("metrics_listen = {a:?}: write an address and port like \"127.0.0.1:9464\", or \"off\"")))?),
    };
    let memory_reserve_mib = raw.memory_reserve_mib.unwrap_or(d.memory_reserve_mib);
    if memory_reserve_mib > 4096 {
        return Err(err("memory_reserve_mib", format!("memory_reserve_mib = {memory_reserve_mib}: use 0 to 4096 (MiB)")));
    }
    let mut models = d.models;
    for (name, m) in raw.models {
        let key = format!("[models.\"{name}\"]");
        let n = ModelName::parse(&name).map_err(|e| err(&key, e.to_string()))?;
        let from = ModelName::parse(&m.from).map_err(|e| err(&key, format!("from: {e}")))?;
        let num_ctx = match m.num_ctx {
            None => None,
            Some(0) => return Err(err(&key, "num_ctx must be at least 1".into())),
            Some(c) => NonZeroU64::new(c),
        };
        if n.full() == from.full() {
            return Err(err(&key, format!("{name} cannot be derived from itself")));
        }
        models.insert(n.full(), Derived { from, num_ctx });
    }
    let guard = settle_guard(path, text, raw.guard, &err)?;
    Ok(Settings {
        keepalive_interval: duration(path, text, "keepalive_interval", &raw.keepalive_interval, d.keepalive_interval)?,
        residency_check: duration(path, text, "residency_check", &raw.residency_check, d.residency_check)?,
        monitor_interval: duration(path, text, "monitor_interval", &raw.monitor_interval, d.monitor_interval)?,
        temperature_warn_c,
        metrics_listen,
        expected_compute,
        min_gpu_percent,
        ollama_bin: raw.ollama_bin.unwrap_or(d.ollama_bin),
        startup_timeout: duration(path, text, "startup_timeout", &raw.startup_timeout, d.startup_timeout)?,
        gpu_discovery_timeout: duration(path, text, "gpu_discovery_timeout", &raw.gpu_discovery_timeout, d.gpu_discovery_timeout)?,
        load_timeout: duration(path, text, "load_timeout", &raw.load_timeout, d.load_timeout)?,
        request_timeout: duration(path, text, "request_timeout", &raw.request_timeout, d.request_timeout)?,
        retry_max_backoff: duration(path, text, "retry_max_backoff", &raw.retry_max_backoff, d.retry_max_backoff)?,
        on_reboot_required,
        state_dir: raw.state_dir.unwrap_or(d.state_dir),
        allow_remote_ollama: raw.allow_remote_ollama.unwrap_or(false),
        memory_reserve_mib,
        allow_overcommit: raw.allow_overcommit.unwrap_or(d.allow_overcommit),
        models,
        guard,
    })
}

/// An `admin_from` entry: an IP address or a CIDR network.
pub fn parse_net(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, b)) => (ip.trim().parse::<std::net::IpAddr>().ok()?, b.trim().parse::<u8>().ok()?),
        None => {
            let ip: std::net::IpAddr = s.trim().parse().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    ((ip.is_ipv4() && bits <= 32) || (ip.is_ipv6() && bits <= 128)).then_some((ip, bits))
}

fn settle_guard(path: &Path, text: &str, g: RawGuard, err: &dyn Fn(&str, String) -> ConfigError) -> Result<GuardSettings, ConfigError> {
    let d = GuardSettings::default();
    let listen = match g.listen.as_deref().map(str::trim) {
        None => d.listen,
        Some(a) => a.parse().map_err(|_| err("listen", format!("[guard] listen = {a:?}: write an address and port like \"127.0.0.1:11434\" or \"0.0.0.0:11434\"")))?,
    };
    let models = match g.models.as_deref() {
        None | Some("pinned") => ModelsPolicy::Pinned,
        Some("allow") => ModelsPolicy::Allow,
        Some("any") => ModelsPolicy::Any,
        Some(o) => return Err(err("models", format!("[guard] models = {o:?}: use \"pinned\", \"allow\" or \"any\""))),
    };
    let allow = g.allow.unwrap_or_default().iter().map(|m| ModelName::parse(m).map_err(|e| err("allow", format!("[guard] allow: {e}")))).collect::<Result<Vec<_>, _>>()?;
    let options = match g.options.as_deref() {
        None | Some("drop") => OptionsPolicy::Drop,
        Some("strict") => OptionsPolicy::Strict,
        Some(o) => return Err(err("options", format!("[guard] options = {o:?}: use \"drop\" or \"strict\""))),
    };
    let admin_from = g.admin_from.unwrap_or_default();
    for a in &admin_from {
        if parse_net(a).is_none() {
            return Err(err("admin_from", format!("[guard] admin_from: {a:?} is not an address or network like \"192.168.1.0/24\"")));
        }
    }
    Ok(GuardSettings {
        enabled: g.enabled.unwrap_or(d.enabled),
        listen,
        models,
        allow,
        options,
        keep_alive_max: duration(path, text, "keep_alive_max", &g.keep_alive_max, d.keep_alive_max)?,
        admin_from,
        ready_wait: duration(path, text, "ready_wait", &g.ready_wait, d.ready_wait)?,
        body_budget_mib: match g.body_budget_mib {
            None => d.body_budget_mib,
            Some(n @ 1..=1024) => n,
            Some(n) => return Err(err("body_budget_mib", format!("[guard] body_budget_mib = {n}: use 1 to 1024 (MiB)"))),
        },
        body_timeout: duration(path, text, "body_timeout", &g.body_timeout, d.body_timeout)?,
        keys_file: match g.keys_file {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) if !p.is_absolute() => return Err(err("keys_file", format!("[guard] keys_file = {:?}: write an absolute path, e.g. \"/etc/jetson-llmd/guard-keys\"", p.display()))),
            k => k,
        },
    })
}

/// Reads config.toml (a regular file, at most 256 KiB); a missing file means all defaults.
pub async fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = match crate::host::fs::read_capped(path, crate::host::fs::cap::CONFIG).await {
        Ok(b) => String::from_utf8(b).map_err(|e| ConfigError { path: path.display().to_string(), line: 1, message: format!("not valid UTF-8: {e}") })?,
        Err(e) if e.is_not_found() => return Ok(Settings::default()),
        Err(e) => {
            let message = e.to_string();
            let message = message.strip_prefix(&format!("{}: ", path.display())).unwrap_or(&message).to_string();
            return Err(ConfigError { path: path.display().to_string(), line: 0, message });
        }
    };
    let raw = parse(path, &text)?;
    settle(path, &text, raw)
}

impl Settings {
    pub fn derived(&self, model: &ModelName) -> Option<&Derived> {
        self.models.get(&model.full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Settings, ConfigError> {
        let path = Path::new("/etc/jetson-llmd/config.toml");
        settle(path, text, parse(path, text)?)
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let s = p("").expect("ok");
        assert_eq!(s.keepalive_interval, Duration::from_secs(240));
        assert_eq!(s.expected_compute, ExpectedCompute::ORIN);
        assert_eq!(s.expected_compute.to_string(), "8.7");
        let g = ModelName::parse("gemma4:e2b-8k").expect("valid");
        assert_eq!(s.derived(&g).expect("seed model").num_ctx.map(|n| n.get()), Some(8192));
    }

    #[test]
    fn values_override_and_models_merge() {
        let s = p("keepalive_interval = \"90s\"\nmin_gpu_percent = 90\n[models.\"llama3.2:3b-12k\"]\nfrom = \"llama3.2:3b\"\nnum_ctx = 12288\n").expect("ok");
        assert_eq!(s.keepalive_interval, Duration::from_secs(90));
        assert_eq!(s.min_gpu_percent, 90);
        assert_eq!(s.models.len(), 2);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = p("\n\nkeepalive_interval = \"soon\"\n").expect_err("bad");
        assert_eq!(e.line, 3);
        assert!(e.to_string().starts_with("/etc/jetson-llmd/config.toml:3: keepalive_interval"), "{e}");
        let e = p("keepalive_interval = \"0s\"").expect_err("zero");
        assert!(e.message.contains("out of bounds: use 10s to 1h"), "{}", e.message);
        let e = p("keepalive_interval = \"1ns\"").expect_err("1ns");
        assert!(e.message.contains("out of bounds"), "{}", e.message);
        let e = p("load_timeout = \"100d\"").expect_err("huge");
        assert!(e.message.contains("10s to 2h"), "{}", e.message);
        assert!(p("keepalive_interval = \"10s\"\nretry_max_backoff = \"1h\"").is_ok());
        let e = p("\nkeep_alive = \"4m\"\n").expect_err("unknown key");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("unknown field"), "{}", e.message);
        let e = p("expected_compute = \"sm87\"").expect_err("bad compute");
        assert!(e.message.contains("8.7") && e.message.contains("cpu"), "{e}");
        for bad in ["8", "8.", ".7", "8.7.1", "999.1", "gpu", ""] {
            assert!(p(&format!("expected_compute = {bad:?}")).is_err(), "{bad:?} accepted");
        }
        let s = p("expected_compute = \"CPU\"").expect("valid");
        assert_eq!(s.expected_compute, ExpectedCompute::Cpu);
        assert_eq!(serde_json::to_value(&s).expect("json")["expected_compute"], "cpu");
        let e = p("on_reboot_required = \"panic\"").expect_err("bad");
        assert!(e.message.contains("report"));
        let e = p("[models.\"x; rm\"]\nfrom = \"a\"\n").expect_err("bad name");
        assert!(e.message.contains("not a valid Ollama model name"));
        assert_eq!(p("metrics_listen = \"off\"").expect("off").metrics_listen, None);
        let e = p("metrics_listen = \"localhost\"").expect_err("no port");
        assert!(e.message.contains("127.0.0.1:9464"), "{}", e.message);
        let e = p("min_gpu_percent = 300").expect_err("out of range for u8");
        assert_eq!(e.line, 1);
    }

    #[test]
    fn the_documented_example_states_the_compiled_defaults() {
        // etc/jetson-llmd/config.toml shows every key commented out with its default: uncommented,
        // it must parse and mean exactly the defaults, and name every key RawConfig knows.
        let example = include_str!("../../../../etc/jetson-llmd/config.toml");
        let text: String = example
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.split_once(" = ").is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')))
            .map(|l| format!("{l}\n"))
            .collect();
        let s = p(&text).expect("the example parses");
        let d = Settings::default();
        assert_eq!(serde_json::to_value(&s).expect("json"), serde_json::to_value(&d).expect("json"), "{text}");
        for (key, ..) in DURATION_BOUNDS {
            assert!(text.contains(&format!("{key} = ")), "{key} is not documented in etc/");
        }
        let keys = text.lines().filter(|l| !l.starts_with('[')).filter_map(|l| l.split_once(" = ")).count();
        assert_eq!(keys, 18 + 2 + 11, "every top-level key, the seed model's from/num_ctx and the 11 [guard] keys: {text}");
    }
}
