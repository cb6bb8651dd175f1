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

/// Which models clients may name through the guard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
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

impl<'de> Deserialize<'de> for ExpectedCompute {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ExpectedCompute::parse(&s).map_err(serde::de::Error::custom)
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
    #[serde(with = "humantime_serde")]
    pub keep_alive_max: Duration,
    /// Networks (besides loopback) allowed to pull, create, copy, push and delete models.
    pub admin_from: Vec<ipnet::IpNet>,
    /// Networks allowed to delete, overwrite, re-create, pull or push the pinned model and its
    /// base through the guard (loopback is not among them unless listed): none by default.
    pub replace_pinned_from: Vec<ipnet::IpNet>,
    /// Derived model -> its base (config.toml's `[models]`), so that the guard protects the
    /// base of the pinned model too. Not a key of `[guard]`: filled from `[models]`.
    #[serde(skip)]
    pub bases: BTreeMap<String, ModelName>,
    /// How long a request for the pinned model waits while it is being (re)loaded.
    #[serde(with = "humantime_serde")]
    pub ready_wait: Duration,
    /// Request bodies the guard holds to inspect, all connections together (MiB): past it a
    /// request gets 503 with Retry-After instead of growing the supervisor's memory.
    pub body_budget_mib: u64,
    /// How long a client may take to send an inspected request's body (then 408).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// API keys (hashed) that clients off this machine must present (guard/keys.rs); None:
    /// no keys asked.
    pub keys_file: Option<PathBuf>,
    /// Ollama's parallel slots (OLLAMA_NUM_PARALLEL) that admission fills; 0: read
    /// OLLAMA_NUM_PARALLEL from the environment (ollama.env), else Ollama's default 1.
    pub parallel: u32,
    /// A request header whose value names the client's class (`[[guard.class]]` name).
    pub class_header: Option<String>,
    /// Client classes (guard/admission.rs); none: admission is off and requests go straight on.
    pub classes: Vec<ClassSettings>,
}

/// One `[[guard.class]]`: who belongs to it and how it is served.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassSettings {
    pub name: String,
    /// Higher goes first.
    pub priority: i32,
    /// Weight among classes of the same priority.
    pub share: u32,
    /// Most requests of this class in Ollama at once; 0: every slot.
    pub limit: u32,
    /// Most requests of this class waiting; past it 429.
    pub max_queue: u32,
    /// Longest a request waits for a slot; past it 503.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Key names (keys_file) whose requests belong here.
    pub keys: Vec<String>,
    /// Client networks whose requests belong here.
    pub from: Vec<ipnet::IpNet>,
}

impl ClassSettings {
    /// The class of requests no class claims ("default" unless one of that name is written).
    pub fn fallback() -> ClassSettings {
        ClassSettings::named(DEFAULT_CLASS)
    }

    pub fn named(name: &str) -> ClassSettings {
        ClassSettings { name: name.into(), priority: 0, share: 1, limit: 0, max_queue: 128, max_wait: Duration::from_secs(600), keys: Vec::new(), from: Vec::new() }
    }
}

/// The class of requests that no `[[guard.class]]` claims.
pub const DEFAULT_CLASS: &str = "default";

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
            replace_pinned_from: Vec::new(),
            bases: BTreeMap::new(),
            ready_wait: Duration::from_secs(120),
            body_budget_mib: 16,
            body_timeout: Duration::from_secs(30),
            keys_file: None,
            parallel: 0,
            class_header: None,
            classes: Vec::new(),
        }
    }
}

/// A model created from a base with parameters (the seed's Modelfile).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Derived {
    pub from: ModelName,
    pub num_ctx: Option<NonZeroU64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
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
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How often the supervisor checks /api/ps that the model is still there and pinned.
    #[serde(with = "humantime_serde")]
    pub residency_check: Duration,
    /// How often the supervisor samples the board (swap-ins, memory, temperatures).
    #[serde(with = "humantime_serde")]
    pub monitor_interval: Duration,
    /// A temperature at or above this (C) is a warning.
    pub temperature_warn_c: u32,
    /// Where /metrics and /healthz are served; None is off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub expected_compute: ExpectedCompute,
    pub min_gpu_percent: u8,
    pub ollama_bin: PathBuf,
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub gpu_discovery_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub load_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
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
            guard: GuardSettings { bases: bases(&models), ..GuardSettings::default() },
            models,
        }
    }
}

/// One problem in config.toml; `line` 0 means the file as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

/// config.toml's problems, every one of them, in line order (one per line when shown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.problems.iter().map(|p| if p.line > 0 { format!("{}:{}: {}", self.path, p.line, p.message) } else { format!("{}: {}", self.path, p.message) }).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub path: String,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    fn one(path: &Path, line: usize, message: String) -> ConfigError {
        ConfigError { path: path.display().to_string(), problems: vec![Problem { line, message }] }
    }

    /// The first problem's line (tests, and callers that show one).
    pub fn line(&self) -> usize {
        self.problems.first().map_or(0, |p| p.line)
    }

    pub fn message(&self) -> &str {
        self.problems.first().map_or("", |p| p.message.as_str())
    }
}

/// Sane bounds for every duration key: (key, least, most). Outside them a value is a typo or a
/// misunderstanding (a 1 ns keepalive would hammer Ollama thousands of times a second).
pub const DURATION_BOUNDS: [(&str, Duration, Duration); 12] = [
    ("max_wait", Duration::from_secs(0), Duration::from_secs(3600)),
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
        return Err(format!("{key} = {:?} is out of bounds: use {} to {}", humantime::format_duration(d).to_string(), humantime::format_duration(*lo), humantime::format_duration(*hi)));
    }
    Ok(d)
}

/// A duration as humantime-serde reads it ("4m", "30s", "1h 30m").
#[derive(Deserialize)]
#[serde(transparent)]
struct Human(#[serde(with = "humantime_serde")] Duration);

type Value<'t> = toml::Spanned<toml::de::DeValue<'t>>;

/// Reads the spanned document key by key, typed through serde, and keeps every problem with
/// the line its value (or its key) is on.
struct Reader<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

impl<'t> Reader<'t> {
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())].matches('\n').count() + 1
    }

    fn problem(&mut self, span: std::ops::Range<usize>, message: String) {
        let line = self.line(span);
        self.problems.push(Problem { line, message });
    }

    /// The value as written, for messages (clipped: a value can be a 200 KiB string).
    fn shown(&self, v: &Value<'t>) -> String {
        crate::text::clip(self.text.get(v.span()).unwrap_or("?").trim(), 80)
    }

    /// `key = value` typed by serde; a problem (and None) when it is not a `T`.
    fn get<T: serde::de::DeserializeOwned>(&mut self, key: &str, v: &Value<'t>, hint: &str) -> Option<T> {
        use serde::de::IntoDeserializer;
        match T::deserialize(v.clone().into_deserializer()) {
            Ok(t) => Some(t),
            Err(e) => {
                let shown = self.shown(v);
                self.problem(v.span(), format!("{key} = {shown}: {}{hint}", e.message().trim()));
                None
            }
        }
    }

    fn duration(&mut self, key: &str, v: &Value<'t>, into: &mut Duration) {
        let Some(Human(d)) = self.get(key, v, "; write a duration like \"4m\", \"30s\" or \"1h 30m\"") else { return };
        match check_bounds(key, d) {
            Ok(d) => *into = d,
            Err(m) => self.problem(v.span(), m),
        }
    }

    fn number<T: serde::de::DeserializeOwned + PartialOrd + std::fmt::Display + Copy>(&mut self, key: &str, v: &Value<'t>, range: std::ops::RangeInclusive<T>, unit: &str, into: &mut T) {
        let Some(n) = self.get::<T>(key, v, "") else { return };
        if range.contains(&n) {
            *into = n;
        } else {
            self.problem(v.span(), format!("{key} = {n}: use {} to {}{unit}", range.start(), range.end()));
        }
    }

    /// `key = value` typed by serde into `into`; left as it was (the default) on a problem.
    fn set<T: serde::de::DeserializeOwned>(&mut self, key: &str, v: &Value<'t>, into: &mut T) {
        if let Some(t) = self.get(key, v, "") {
            *into = t;
        }
    }

    fn address(&mut self, key: &str, v: &Value<'t>, example: &str) -> Option<std::net::SocketAddr> {
        let a: String = self.get(key, v, "")?;
        self.socket(key, v, &a, example)
    }

    /// An address already read as text (`a`), for the problem's line `v`.
    fn socket(&mut self, key: &str, v: &Value<'t>, a: &str, example: &str) -> Option<std::net::SocketAddr> {
        match a.trim().parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(v.span(), format!("{key} = {a:?}: write an address and port like {example}"));
                None
            }
        }
    }

    fn table(&mut self, key: &str, v: &'t Value<'t>) -> Option<&'t toml::de::DeTable<'t>> {
        match v.get_ref() {
            toml::de::DeValue::Table(t) => Some(t),
            _ => {
                self.problem(v.span(), format!("{key} must be a table ([{key}])"));
                None
            }
        }
    }

    fn unknown(&mut self, key: &toml::Spanned<toml::de::DeString<'t>>, section: &str) {
        let k = crate::text::clip(key.get_ref(), 60);
        self.problem(key.span(), format!("unknown key {section}{k:?}: the keys are listed, with their defaults, in /etc/jetson-llmd/config.toml as installed"));
    }
}

/// config.toml's text -> validated [`Settings`]: parsed with spans (toml), defaults merged in,
/// every value typed through serde and checked; every problem is listed, in line order.
pub fn from_text(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    let doc = toml::de::DeTable::parse(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1).unwrap_or(1);
        ConfigError::one(path, line, e.message().trim().to_string())
    })?;
    let mut r = Reader { text, problems: Vec::new() };
    let mut s = Settings::default();
    for (key, v) in doc.get_ref() {
        match key.get_ref().as_ref() {
            k @ ("keepalive_interval" | "residency_check" | "monitor_interval" | "startup_timeout" | "gpu_discovery_timeout" | "load_timeout" | "request_timeout" | "retry_max_backoff") => {
                let into = match k {
                    "keepalive_interval" => &mut s.keepalive_interval,
                    "residency_check" => &mut s.residency_check,
                    "monitor_interval" => &mut s.monitor_interval,
                    "startup_timeout" => &mut s.startup_timeout,
                    "gpu_discovery_timeout" => &mut s.gpu_discovery_timeout,
                    "load_timeout" => &mut s.load_timeout,
                    "request_timeout" => &mut s.request_timeout,
                    _ => &mut s.retry_max_backoff,
                };
                r.duration(k, v, into);
            }
            "temperature_warn_c" => r.number("temperature_warn_c", v, 50..=110, " (C)", &mut s.temperature_warn_c),
            "min_gpu_percent" => r.number("min_gpu_percent", v, 0..=100, "", &mut s.min_gpu_percent),
            "memory_reserve_mib" => r.number("memory_reserve_mib", v, 0..=4096, " (MiB)", &mut s.memory_reserve_mib),
            "metrics_listen" => match r.get::<String>("metrics_listen", v, "") {
                None => {}
                Some(a) if matches!(a.trim(), "off" | "") => s.metrics_listen = None,
                Some(a) => s.metrics_listen = r.socket("metrics_listen", v, &a, "\"127.0.0.1:9464\", or \"off\""),
            },
            "expected_compute" => r.set("expected_compute", v, &mut s.expected_compute),
            "on_reboot_required" => r.set("on_reboot_required", v, &mut s.on_reboot_required),
            "ollama_bin" => r.set("ollama_bin", v, &mut s.ollama_bin),
            "state_dir" => r.set("state_dir", v, &mut s.state_dir),
            "allow_remote_ollama" => r.set("allow_remote_ollama", v, &mut s.allow_remote_ollama),
            "allow_overcommit" => r.set("allow_overcommit", v, &mut s.allow_overcommit),
            "models" => {
                if let Some(t) = r.table("models", v) {
                    read_models(&mut r, t, &mut s.models);
                }
            }
            "guard" => {
                if let Some(t) = r.table("guard", v) {
                    read_guard(&mut r, t, &mut s.guard);
                }
            }
            _ => r.unknown(key, ""),
        }
    }
    if r.problems.is_empty() {
        s.guard.bases = bases(&s.models);
        return Ok(s);
    }
    r.problems.sort_by_key(|p| p.line);
    Err(ConfigError { path: path.display().to_string(), problems: r.problems })
}

/// Each derived model's base, for the guard.
pub fn bases(models: &BTreeMap<String, Derived>) -> BTreeMap<String, ModelName> {
    models.iter().map(|(k, d)| (k.clone(), d.from.clone())).collect()
}

/// `[models."name"]`: a model created from a base with parameters (the seed's Modelfile).
fn read_models<'t>(r: &mut Reader<'t>, t: &'t toml::de::DeTable<'t>, models: &mut BTreeMap<String, Derived>) {
    for (name, v) in t {
        let shown = crate::text::clip(name.get_ref(), 80);
        let n = match ModelName::parse(name.get_ref()) {
            Ok(n) => Some(n),
            Err(e) => {
                r.problem(name.span(), format!("[models.{shown:?}]: {e}"));
                None
            }
        };
        let Some(table) = r.table(&format!("models.{shown:?}"), v) else { continue };
        let (mut from, mut num_ctx, mut ok) = (None, None, n.is_some());
        for (key, v) in table {
            match key.get_ref().as_ref() {
                "from" => match r.get::<String>("from", v, "").map(|f| ModelName::parse(&f)) {
                    Some(Ok(f)) => from = Some(f),
                    Some(Err(e)) => {
                        r.problem(v.span(), format!("[models.{shown:?}] from: {e}"));
                        ok = false;
                    }
                    None => ok = false,
                },
                "num_ctx" => match r.get::<u64>("num_ctx", v, "") {
                    Some(c) if c > 0 => num_ctx = NonZeroU64::new(c),
                    Some(_) => {
                        r.problem(v.span(), format!("[models.{shown:?}] num_ctx must be at least 1"));
                        ok = false;
                    }
                    None => ok = false,
                },
                _ => {
                    r.unknown(key, &format!("[models.{shown:?}] "));
                    ok = false;
                }
            }
        }
        let (Some(n), true) = (n, ok) else { continue };
        let Some(from) = from else {
            r.problem(v.span(), format!("[models.{shown:?}] needs from = \"<the base model>\""));
            continue;
        };
        if n.full() == from.full() {
            r.problem(v.span(), format!("[models.{shown:?}]: {shown} cannot be derived from itself"));
            continue;
        }
        models.insert(n.full(), Derived { from, num_ctx });
    }
}

/// An `admin_from` entry: a CIDR network, or one address (a /32 or /128).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>().ok().or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn read_guard<'t>(r: &mut Reader<'t>, t: &'t toml::de::DeTable<'t>, g: &mut GuardSettings) {
    for (key, v) in t {
        match key.get_ref().as_ref() {
            "enabled" => r.set("[guard] enabled", v, &mut g.enabled),
            "listen" => {
                if let Some(a) = r.address("[guard] listen", v, "\"127.0.0.1:11434\" or \"0.0.0.0:11434\"") {
                    g.listen = a;
                }
            }
            "models" => r.set("[guard] models", v, &mut g.models),
            "options" => r.set("[guard] options", v, &mut g.options),
            "allow" => {
                let Some(list) = r.get::<Vec<String>>("[guard] allow", v, "; write a list of model names") else { continue };
                let mut allow = Vec::new();
                for m in list {
                    match ModelName::parse(&m) {
                        Ok(n) => allow.push(n),
                        Err(e) => r.problem(v.span(), format!("[guard] allow: {e}")),
                    }
                }
                g.allow = allow;
            }
            k @ ("admin_from" | "replace_pinned_from") => {
                let Some(list) = r.get::<Vec<String>>(&format!("[guard] {k}"), v, "; write a list of networks like [\"192.168.1.0/24\"]") else { continue };
                let mut nets = Vec::new();
                for a in list {
                    match parse_net(&a) {
                        Some(n) => nets.push(n),
                        None => r.problem(v.span(), format!("[guard] {k}: {:?} is not an address or network like \"192.168.1.0/24\"", crate::text::clip(&a, 60))),
                    }
                }
                if k == "admin_from" {
                    g.admin_from = nets;
                } else {
                    g.replace_pinned_from = nets;
                }
            }
            "keep_alive_max" => r.duration("keep_alive_max", v, &mut g.keep_alive_max),
            "ready_wait" => r.duration("ready_wait", v, &mut g.ready_wait),
            "body_timeout" => r.duration("body_timeout", v, &mut g.body_timeout),
            "body_budget_mib" => r.number("[guard] body_budget_mib", v, 1..=1024, " (MiB)", &mut g.body_budget_mib),
            "keys_file" => match r.get::<PathBuf>("[guard] keys_file", v, "") {
                Some(p) if p.as_os_str().is_empty() => g.keys_file = None,
                Some(p) if !p.is_absolute() => r.problem(v.span(), format!("[guard] keys_file = {:?}: write an absolute path, e.g. \"/etc/jetson-llmd/guard-keys\"", p.display())),
                Some(p) => g.keys_file = Some(p),
                None => {}
            },
            "parallel" => r.number("[guard] parallel", v, 0..=64, " (0: OLLAMA_NUM_PARALLEL)", &mut g.parallel),
            "class_header" => match r.get::<String>("[guard] class_header", v, "") {
                Some(h) if h.trim().is_empty() => g.class_header = None,
                Some(h) => match axum::http::HeaderName::from_bytes(h.trim().as_bytes()) {
                    Ok(n) => g.class_header = Some(n.as_str().to_string()),
                    Err(_) => r.problem(v.span(), format!("[guard] class_header = {:?}: write a header name like \"X-Client-Class\"", crate::text::clip(&h, 60))),
                },
                None => {}
            },
            "class" => {
                let toml::de::DeValue::Array(list) = v.get_ref() else {
                    r.problem(v.span(), "[guard] class must be written as [[guard.class]] tables".into());
                    continue;
                };
                let mut classes: Vec<ClassSettings> = Vec::new();
                for item in list {
                    let Some(t) = r.table("guard.class", item) else { continue };
                    if let Some(c) = read_class(r, item, t) {
                        if classes.iter().any(|o| o.name == c.name) {
                            r.problem(item.span(), format!("[[guard.class]] {:?} is written twice; give each class its own name", c.name));
                            continue;
                        }
                        classes.push(c);
                    }
                }
                g.classes = classes;
            }
            _ => r.unknown(key, "[guard] "),
        }
    }
}

/// One `[[guard.class]]` table; None (with the problems said) when it is not usable.
fn read_class<'t>(r: &mut Reader<'t>, at: &Value<'t>, t: &'t toml::de::DeTable<'t>) -> Option<ClassSettings> {
    let mut c = ClassSettings::named("");
    let before = r.problems.len();
    for (key, v) in t {
        match key.get_ref().as_ref() {
            "name" => match r.get::<String>("[[guard.class]] name", v, "") {
                Some(n) if !n.is_empty() && n.len() <= 40 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => c.name = n,
                Some(n) => r.problem(v.span(), format!("[[guard.class]] name = {:?}: use 1 to 40 letters, digits, '-' or '_'", crate::text::clip(&n, 60))),
                None => {}
            },
            "priority" => r.number("[[guard.class]] priority", v, -100..=100, " (higher goes first)", &mut c.priority),
            "share" => r.number("[[guard.class]] share", v, 1..=1000, "", &mut c.share),
            "limit" => r.number("[[guard.class]] limit", v, 0..=64, " (0: every slot)", &mut c.limit),
            "max_queue" => r.number("[[guard.class]] max_queue", v, 0..=100_000, "", &mut c.max_queue),
            "max_wait" => r.duration("max_wait", v, &mut c.max_wait),
            "keys" => {
                if let Some(k) = r.get::<Vec<String>>("[[guard.class]] keys", v, "; write a list of key names from keys_file") {
                    c.keys = k;
                }
            }
            "from" => {
                let Some(list) = r.get::<Vec<String>>("[[guard.class]] from", v, "; write a list of networks like [\"192.168.1.0/24\"]") else { continue };
                for a in list {
                    match parse_net(&a) {
                        Some(n) => c.from.push(n),
                        None => r.problem(v.span(), format!("[[guard.class]] from: {:?} is not an address or network like \"192.168.1.0/24\"", crate::text::clip(&a, 60))),
                    }
                }
            }
            _ => r.unknown(key, "[[guard.class]] "),
        }
    }
    if c.name.is_empty() && r.problems.len() == before {
        r.problem(at.span(), "[[guard.class]] needs name = \"...\"".into());
    }
    (r.problems.len() == before).then_some(c)
}

/// Reads config.toml (a regular file, at most 256 KiB); a missing file means all defaults.
pub async fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = match crate::host::fs::read_capped(path, crate::host::fs::cap::CONFIG).await {
        Ok(b) => String::from_utf8(b).map_err(|e| ConfigError::one(path, 1, format!("not valid UTF-8: {e}")))?,
        Err(e) if e.is_not_found() => return Ok(Settings::default()),
        Err(e) => {
            let message = e.to_string();
            let message = message.strip_prefix(&format!("{}: ", path.display())).unwrap_or(&message).to_string();
            return Err(ConfigError::one(path, 0, message));
        }
    };
    from_text(path, &text)
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
        from_text(Path::new("/etc/jetson-llmd/config.toml"), text)
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
        assert_eq!(e.line(), 3);
        assert!(e.to_string().starts_with("/etc/jetson-llmd/config.toml:3: keepalive_interval"), "{e}");
        let e = p("keepalive_interval = \"0s\"").expect_err("zero");
        assert!(e.message().contains("out of bounds: use 10s to 1h"), "{}", e.message());
        let e = p("keepalive_interval = \"1ns\"").expect_err("1ns");
        assert!(e.message().contains("out of bounds"), "{}", e.message());
        let e = p("load_timeout = \"100d\"").expect_err("huge");
        assert!(e.message().contains("10s to 2h"), "{}", e.message());
        assert!(p("keepalive_interval = \"10s\"\nretry_max_backoff = \"1h\"").is_ok());
        let e = p("\nkeep_alive = \"4m\"\n").expect_err("unknown key");
        assert_eq!(e.line(), 2);
        assert!(e.message().contains("unknown key \"keep_alive\""), "{}", e.message());
        let e = p("expected_compute = \"sm87\"").expect_err("bad compute");
        assert!(e.message().contains("8.7") && e.message().contains("cpu"), "{e}");
        for bad in ["8", "8.", ".7", "8.7.1", "999.1", "gpu", ""] {
            assert!(p(&format!("expected_compute = {bad:?}")).is_err(), "{bad:?} accepted");
        }
        let s = p("expected_compute = \"CPU\"").expect("valid");
        assert_eq!(s.expected_compute, ExpectedCompute::Cpu);
        assert_eq!(serde_json::to_value(&s).expect("json")["expected_compute"], "cpu");
        let e = p("on_reboot_required = \"panic\"").expect_err("bad");
        assert!(e.message().contains("report"));
        let e = p("[models.\"x; rm\"]\nfrom = \"a\"\n").expect_err("bad name");
        assert!(e.message().contains("not a valid Ollama model name"));
        assert_eq!(p("metrics_listen = \"off\"").expect("off").metrics_listen, None);
        let e = p("metrics_listen = \"localhost\"").expect_err("no port");
        assert!(e.message().contains("127.0.0.1:9464"), "{}", e.message());
        let e = p("min_gpu_percent = 300").expect_err("out of range for u8");
        assert_eq!(e.line(), 1);
    }

    /// Every problem at once, each on the line of its own value, in line order: the review
    /// found only the first reported, and an error under `[guard] allow` pointed at the line of
    /// `allow_remote_ollama` (found by key prefix).
    #[test]
    fn every_problem_is_listed_on_its_own_line() {
        let text = "allow_remote_ollama = true\nkeepalive_interval = \"soon\"\non_reboot_required = \"panic\"\nfrobnicate = 1\n[guard]\nmodels = \"some\"\nallow = [\"ok:1b\", \"bad; name\"]\nadmin_from = [\"10.0.0.0/8\", \"192.168.1.5\", \"nonsense\"]\n[models.\"x:1b\"]\nfrom = \"x:1b\"\n";
        let e = p(text).expect_err("bad");
        let lines: Vec<usize> = e.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 6, 7, 8, 9], "{e}");
        let shown = e.to_string();
        assert_eq!(shown.lines().count(), 7, "{shown}");
        assert!(shown.lines().all(|l| l.starts_with("/etc/jetson-llmd/config.toml:")), "{shown}");
        assert!(e.problems[1].message.contains("unknown variant `panic`, expected `report` or `reboot`"), "{}", e.problems[1].message);
        assert!(e.problems[4].message.starts_with("[guard] allow: "), "{}", e.problems[4].message);
        assert!(e.problems[5].message.contains("\"nonsense\""), "{}", e.problems[5].message);
        assert!(e.problems[6].message.contains("cannot be derived from itself"), "{}", e.problems[6].message);
        // A plain address is a network of one; networks are matched by ipnet.
        let s = p("[guard]\nadmin_from = [\"10.0.0.0/8\", \"192.168.1.5\", \"fd00::/8\"]\n").expect("valid");
        assert_eq!(s.guard.admin_from.iter().map(|n| n.to_string()).collect::<Vec<_>>(), ["10.0.0.0/8", "192.168.1.5/32", "fd00::/8"]);
        // Typed by serde: a string where a number goes, a number where a string goes.
        let e = p("temperature_warn_c = \"hot\"\nstate_dir = 5\n").expect_err("types");
        assert_eq!(e.problems.len(), 2, "{e}");
    }

    #[test]
    fn classes_are_checked_each_on_its_line() {
        let text = "[guard]\nparallel = 2\nclass_header = \"X-Client-Class\"\n[[guard.class]]\nname = \"chat\"\npriority = 10\nfrom = [\"192.168.1.0/24\"]\n[[guard.class]]\nname = \"batch\"\nmax_wait = \"1h\"\nlimit = 1\nkeys = [\"paperless\"]\n";
        let s = p(text).expect("valid");
        let g = &s.guard;
        assert_eq!((g.parallel, g.class_header.as_deref()), (2, Some("x-client-class")));
        assert_eq!(g.classes.len(), 2);
        assert_eq!((g.classes[0].priority, g.classes[0].from.len(), g.classes[0].max_queue), (10, 1, 128), "defaults fill what is not written");
        assert_eq!((g.classes[1].max_wait, g.classes[1].limit, g.classes[1].keys.as_slice()), (Duration::from_secs(3600), 1, &["paperless".to_string()][..]));
        let bad = "[guard]\nclass_header = \"bad header\"\n[[guard.class]]\nname = \"a b\"\n[[guard.class]]\nname = \"x\"\npriority = 1000\n[[guard.class]]\nshare = 2\n[[guard.class]]\nname = \"y\"\nfrom = [\"nonsense\"]\nmax_wait = \"2h\"\nurgent = true\n[[guard.class]]\nname = \"z\"\n[[guard.class]]\nname = \"z\"\n";
        let e = p(bad).expect_err("invalid");
        let lines: Vec<usize> = e.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 4, 7, 8, 12, 13, 14, 17], "{e}");
        assert!(e.problems[3].message.contains("needs name"), "{e}");
        assert!(e.problems[7].message.contains("written twice"), "{e}");
        let e = p("[guard]\nclass = 1\n").expect_err("not tables");
        assert!(e.problems[0].message.contains("[[guard.class]]"), "{e}");
    }

    #[test]
    fn the_documented_example_states_the_compiled_defaults() {
        // etc/jetson-llmd/config.toml shows every key commented out with its default: uncommented,
        // it must parse and mean exactly the defaults, and name every key RawConfig knows.
        let example = include_str!("../../../../etc/jetson-llmd/config.toml");
        let text: String = example.lines().filter_map(|l| l.strip_prefix("# ")).filter(|l| l.starts_with('[') || l.split_once(" = ").is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))).map(|l| format!("{l}\n")).collect();
        let s = p(&text).expect("the example parses");
        let d = Settings::default();
        assert_eq!(serde_json::to_value(&s).expect("json"), serde_json::to_value(&d).expect("json"), "{text}");
        for (key, ..) in DURATION_BOUNDS {
            assert!(example.contains(&format!("{key} = ")), "{key} is not documented in etc/");
        }
        let keys = text.lines().filter(|l| !l.starts_with('[')).filter_map(|l| l.split_once(" = ")).count();
        assert_eq!(keys, 18 + 2 + 14, "every top-level key, the seed model's from/num_ctx and the 14 [guard] keys: {text}");
        // The class example (indented, so not part of the defaults) parses as written.
        let classes: String = example.lines().filter_map(|l| l.strip_prefix("#   ")).map(|l| format!("{}\n", l.split(" #").next().unwrap_or(l))).collect();
        let s = p(&format!("[guard]\n{classes}")).expect("the class example parses");
        assert_eq!(s.guard.classes.iter().map(|c| (c.name.as_str(), c.priority)).collect::<Vec<_>>(), [("chat", 10), ("batch", -10)]);
        for key in ["name", "priority", "share", "limit", "max_queue", "max_wait", "keys", "from"] {
            assert!(classes.contains(&format!("{key} = ")), "[[guard.class]] {key} is not documented in etc/");
        }
    }
}
