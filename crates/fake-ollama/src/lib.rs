//! fake-ollama: an emulator of the Ollama server, for jetson-llmd's tests, demo and benchmarks.
//!
//! It speaks the HTTP API and writes the server log the way Ollama does, and models the behaviour
//! jetson-llmd depends on. It shares no code or types with jetson-llmd's client on purpose: a
//! mistake in one is then caught by the other. Each behaviour cites the Ollama source or doc it
//! copies (paths are in github.com/ollama/ollama).
//!
//! It never runs a model. "Generation" emits placeholder tokens at the profile's tokens/s.

pub mod gohttp;
pub mod gojson;
pub mod golang;
pub mod profile;
mod server;

pub use golang::Keep;
pub use profile::{ModelSpec, Profile, GIB, MIB};
pub use server::{spawn, Handle};

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::Instant;

/// Why a machine without a usable GPU fell back to the CPU (selects the log lines written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuReason {
    /// lib/ollama/cuda_jetpack6 missing: discovery silently finds nothing.
    MissingLibs,
    /// The CUDA driver failed to initialise (e.g. after `cma=` on the kernel command line).
    CudaInit,
}

/// Log line format of GPU discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// v0.12.4 and later (discover/types.go LogDetails).
    Current,
    /// Before v0.12.4 (gpu/types.go, `library=cuda variant=jetpack6`).
    Legacy,
}

/// Everything that shapes one emulator instance.
#[derive(Debug, Clone)]
pub struct Config {
    pub profile: Profile,
    /// None: the GPU is found. Some: discovery falls back to CPU for that reason.
    pub cpu_only: Option<CpuReason>,
    pub log_format: LogFormat,
    /// OLLAMA_KEEP_ALIVE (envconfig.KeepAlive, default 5m).
    pub default_keep_alive: Keep,
    /// OLLAMA_MAX_LOADED_MODELS; 0 = auto, which is 3 per GPU (server/sched.go defaultModelsPerGPU).
    pub max_loaded: usize,
    /// The context a model gets when nothing sets num_ctx (OLLAMA_CONTEXT_LENGTH, or 4096 picked
    /// for under 24 GiB of VRAM).
    pub context_length: u64,
    /// OLLAMA_CONTEXT_LENGTH as set in the environment; 0 when unset (the config dump shows it).
    pub context_length_env: u64,
    /// Multiplies every emulated delay (load, pull, token generation, GPU discovery).
    pub time_scale: f64,
    /// Model memory becomes unallocatable once a model has been unloaded (the seed's lesson).
    pub fragile_memory: bool,
    /// Where the fragile-memory state survives restarts of the emulator.
    pub state_dir: Option<PathBuf>,
    /// Start with clean memory (stands in for a reboot).
    pub reset_memory: bool,
    /// Writing to this file clears unallocatable memory (stands in for /proc/sys/vm/drop_caches).
    pub drop_caches_file: Option<PathBuf>,
    /// Echo log lines to stderr (the binary does; tests read them from the handle).
    pub log_to_stderr: bool,
    /// OLLAMA_DEBUG as envconfig.LogLevel reads it: 1 debug, 2 trace (discovery's own output
    /// reaches the log only at 2, v0.30+).
    pub debug_level: u8,
    /// OLLAMA_NUM_PARALLEL (envconfig NumParallel, default 1): generations a runner serves at
    /// once; the rest wait for a slot (llm/llama_server.go Completion, s.sem.Acquire).
    pub num_parallel: usize,
    /// How often idle runners past their keep_alive are expired (the emulator's own resolution;
    /// Ollama arms a timer per runner). Simulated weeks use seconds, not 20 ms.
    pub sweep_every: Duration,
    /// Run each loaded model's runner as a real process: this program under the runner's name
    /// (`llama-server` from v0.30, `ollama runner` before), a child that exits on unload and can
    /// be killed, so that process-level faults (a runner SIGKILLed by the OOM killer) are real.
    /// None (in-process tests under paused time): runners are entries in a table only.
    pub runner_exe: Option<std::path::PathBuf>,
}

impl Config {
    pub fn new(profile: Profile) -> Config {
        Config {
            profile,
            cpu_only: None,
            log_format: LogFormat::Current,
            default_keep_alive: Keep::For(Duration::from_secs(300)),
            max_loaded: 0,
            context_length: 4096,
            context_length_env: 0,
            time_scale: 1.0,
            fragile_memory: false,
            state_dir: None,
            reset_memory: false,
            drop_caches_file: None,
            log_to_stderr: false,
            debug_level: 0,
            num_parallel: 1,
            sweep_every: Duration::from_millis(20),
            runner_exe: None,
        }
    }

    /// The Orin Nano profile with every delay scaled by `scale` (tests use ~0.01).
    pub fn orin_nano(scale: f64) -> Config {
        let mut c = Config::new(Profile::orin_nano_8gb());
        c.time_scale = scale;
        c
    }

    pub(crate) fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.time_scale.max(0.0))
    }

    pub(crate) fn effective_max_loaded(&self) -> usize {
        if self.max_loaded == 0 {
            3
        } else {
            self.max_loaded
        }
    }
}

/// A fault armed through the control API, applied to the next API requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// HTTP 500 with an Ollama-shaped error body.
    Status500,
    /// HTTP 503, the scheduler's queue-full answer.
    Busy503,
    /// Accept the request and never answer.
    Hang,
    /// Send headers, then drop the connection mid-body.
    Reset,
    /// Answer after an extra delay.
    Slow(Duration),
    /// The next pull fails mid-stream.
    PullFailure,
    /// The next generation runs out of memory mid-way; Ollama then expires every runner, pinned
    /// or not (server/sched.go expireRunnersForRuntimeOOM, called from routes.go GenerateHandler).
    RuntimeOom,
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    /// Only requests whose path starts with this are affected (None: every /api request).
    pub path_prefix: Option<String>,
}

/// One model on disk.
#[derive(Debug, Clone)]
pub struct LocalModel {
    pub spec: ModelSpec,
    pub modified_at: OffsetDateTime,
}

/// Runner options that force a reload when they differ (server/sched.go needsReload compares
/// the runner-level api.Runner options: num_ctx, num_batch, num_gpu, main_gpu, use_mmap, num_thread).
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerOptions {
    pub num_ctx: u64,
    pub num_batch: u64,
    pub num_gpu: i64,
    /// None: not set. From v0.30 api.Runner's MainGPU is a *int (api/types.go), so a request
    /// that sets it where the loaded runner had none (or the other way round) differs; before,
    /// an int defaulting to 0.
    pub main_gpu: Option<i64>,
    pub use_mmap: Option<bool>,
    pub num_thread: i64,
    /// Neither the request nor the model set num_ctx (the scheduler picked it).
    pub num_ctx_auto: bool,
    /// The request did not set num_batch.
    pub num_batch_auto: bool,
}

impl RunnerOptions {
    /// server/sched.go (*runnerRef).needsReload, v0.30.6: the new request's num_ctx is capped at
    /// the model's trained context (effectiveContext); automatic num_ctx or num_batch on both
    /// sides is no difference; a negative num_gpu ("as many layers as fit") on the new request
    /// is no difference either.
    pub fn needs_reload(&self, new: &RunnerOptions, trained_ctx: u64) -> bool {
        let mut old = self.clone();
        let mut new = new.clone();
        new.num_ctx = new.num_ctx.min(trained_ctx.max(1));
        if old.num_ctx_auto && new.num_ctx_auto {
            new.num_ctx = old.num_ctx;
        }
        if old.num_batch_auto && new.num_batch_auto {
            new.num_batch = old.num_batch;
        }
        if new.num_gpu < 0 {
            old.num_gpu = -1;
            new.num_gpu = -1;
        }
        let strip = |o: &RunnerOptions| (o.num_ctx, o.num_batch, o.num_gpu, o.main_gpu, o.use_mmap, o.num_thread);
        strip(&old) != strip(&new)
    }
}

/// A loaded model. Runners are keyed by the model's weights file (server/sched.go
/// schedulerModelKey: ModelPath), so a model created FROM another shares its base's runner.
#[derive(Debug, Clone)]
pub struct Runner {
    /// The name of the model that loaded it (what /api/ps shows: PsHandler uses the runner's
    /// model, model.ParseName(m.ShortName).DisplayShortest()).
    pub name: String,
    pub spec: ModelSpec,
    pub size: u64,
    pub size_vram: u64,
    pub options: RunnerOptions,
    /// sessionDuration: the last keep_alive a request carried (or OLLAMA_KEEP_ALIVE).
    pub keep: Keep,
    /// runnerRef.expiresAt: None until the runner first goes idle (the zero time; PsHandler then
    /// shows now + sessionDuration), then now + sessionDuration each time it goes idle.
    pub expires_at: Option<OffsetDateTime>,
    /// The expiry timer, running only while idle with a finite duration.
    pub timer: Option<Instant>,
    pub refcount: u32,
    /// The runner's process, when the emulator runs them ([`Config::runner_exe`]); killed when
    /// the last reference goes (the runner unloaded).
    pub process: Option<Arc<RunnerProcess>>,
}

/// A runner process (llm/llama_server.go startLlamaServer: a child of `ollama serve`).
#[derive(Debug)]
pub struct RunnerProcess {
    child: Mutex<std::process::Child>,
}

impl RunnerProcess {
    /// Starts `exe` with the runner's command line (`args`).
    pub fn start(exe: &std::path::Path, args: &[String]) -> std::io::Result<RunnerProcess> {
        let child = std::process::Command::new(exe).args(args).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?;
        Ok(RunnerProcess { child: Mutex::new(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).id()
    }

    /// Its wait status once it exited on its own (None: it runs): what Ollama notices only when
    /// the next request touches the model (llm/llama_server.go "llama-server process no longer
    /// running").
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).try_wait().ok().flatten()
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        let c = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The runner's process when this program was started as one (its name is `llama-server`, or
/// `ollama` with `runner`): it holds nothing and waits to be killed, dying with its parent.
/// Returns false when this is not a runner's start.
pub fn run_as_runner_if_named() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let name = args.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string()).unwrap_or_default();
    if !(name == "llama-server" || (name == "ollama" && args.get(1).is_some_and(|a| a == "runner"))) {
        return false;
    }
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    loop {
        std::thread::park();
    }
}

/// Counters the tests read to prove what happened.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counters {
    pub loads: u64,
    /// Loads by the name that asked for them.
    pub loads_by_model: BTreeMap<String, u64>,
    pub unloads: u64,
    pub expirations: u64,
    pub reloads_for_options: u64,
    pub oom_failures: u64,
    pub restarts: u64,
    /// Streamed generations whose client went away before the last line (the request context
    /// is cancelled and the runner stops: server/routes.go GenerateHandler/ChatHandler pass
    /// c.Request.Context() to llm/server.go Completion, which returns on ctx.Done()).
    pub cancelled: u64,
    pub requests: BTreeMap<String, u64>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub local: BTreeMap<String, LocalModel>,
    /// Keyed by the weights file (schedulerModelKey), not the name.
    pub loaded: BTreeMap<String, Runner>,
    pub faults: VecDeque<Fault>,
    pub counters: Counters,
    /// Fragile memory: a model was loaded and later unloaded; the next load fails.
    pub fragmented: bool,
    pub drop_caches_seen: Option<std::time::SystemTime>,
}

impl State {
    /// The scheduler key of a local model: its weights file (server/sched.go schedulerModelKey).
    pub(crate) fn key_of(&self, name: &str) -> Option<String> {
        self.local.get(name).map(|m| m.spec.blob.clone())
    }

    /// The local model a request's `model` names, as Ollama finds it: spaces trimmed and a
    /// `:local` source suffix dropped (internal/modelref ParseRef, parseSourceSuffix), the tag
    /// defaulted to `latest` (types/model ParseName), then matched case-insensitively against
    /// the models on disk (server/routes.go getExistingName). None: not found.
    pub(crate) fn resolve(&self, raw: &str) -> Option<String> {
        let name = requested_name(raw)?;
        if self.local.contains_key(&name) {
            return Some(name);
        }
        self.local.keys().find(|k| k.eq_ignore_ascii_case(&name)).cloned()
    }
}

/// The emulator: state plus configuration, shared by the HTTP handlers and the control API.
pub struct Emulator {
    pub(crate) config: Config,
    pub(crate) state: Mutex<State>,
    /// Ollama's scheduler performs one load at a time (server/sched.go processPending).
    pub(crate) load_lock: tokio::sync::Mutex<()>,
    /// The runner's parallel slots (Config::num_parallel).
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    logs: Mutex<Vec<String>>,
}

impl Emulator {
    pub fn new(config: Config) -> Arc<Emulator> {
        let mut local = BTreeMap::new();
        for name in &config.profile.local {
            if let Some(spec) = config.profile.registry_model(name) {
                local.insert(name.clone(), LocalModel { spec: spec.clone(), modified_at: OffsetDateTime::now_utc() });
            }
        }
        let fragmented = config.fragile_memory && !config.reset_memory && read_memory_state(&config) != MemState::Clean;
        let drop_caches_seen = config.drop_caches_file.as_ref().and_then(|p| std::fs::metadata(p).ok()).and_then(|m| m.modified().ok());
        let emu = Emulator {
            state: Mutex::new(State { local, loaded: BTreeMap::new(), faults: VecDeque::new(), counters: Counters::default(), fragmented, drop_caches_seen }),
            load_lock: tokio::sync::Mutex::new(()),
            slots: Arc::new(tokio::sync::Semaphore::new(config.num_parallel.max(1))),
            logs: Mutex::new(Vec::new()),
            config,
        };
        if emu.config.fragile_memory {
            emu.write_memory_state(if fragmented { MemState::Fragmented } else { MemState::Clean });
        }
        Arc::new(emu)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a server log line (slog text format, as `ollama serve` writes to stderr).
    pub fn log(&self, level: &str, source: &str, msg: &str, attrs: &str) {
        let now = OffsetDateTime::now_utc();
        let ts = format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", now.year(), now.month() as u8, now.day(), now.hour(), now.minute(), now.second(), now.millisecond());
        let msg = if msg.contains(' ') || msg.contains('"') || msg.is_empty() { format!("{msg:?}") } else { msg.to_string() };
        let mut line = format!("time={ts} level={level} source={source} msg={msg}");
        if !attrs.is_empty() {
            line.push(' ');
            line.push_str(attrs);
        }
        self.raw_log(line);
    }

    /// Appends a line as the runner (llama.cpp) prints it, without slog framing.
    pub fn raw_log(&self, line: String) {
        if self.config.log_to_stderr {
            eprintln!("{line}");
        }
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded like a journal: a simulated month must not grow the test process.
        if logs.len() >= 20_000 {
            logs.drain(..10_000);
        }
        logs.push(line);
    }

    /// Every log line written so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// Names of loaded models (as /api/ps shows them).
    pub fn loaded(&self) -> Vec<String> {
        self.lock().loaded.values().map(|r| r.name.clone()).collect()
    }

    /// The runner serving `name`: the one loaded from the same weights file.
    pub fn runner(&self, name: &str) -> Option<Runner> {
        let st = self.lock();
        let key = st.key_of(&normalize(name))?;
        st.loaded.get(&key).cloned()
    }

    pub fn is_fragmented(&self) -> bool {
        self.lock().fragmented
    }

    /// Arms a fault for the next matching API request.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    /// Unloads a model as another client's `keep_alive: 0` would (or all models with None).
    pub fn evict(&self, name: Option<&str>) -> Vec<String> {
        let mut st = self.lock();
        let keys: Vec<String> = match name {
            Some(n) => st.key_of(&normalize(n)).into_iter().collect(),
            None => st.loaded.keys().cloned().collect(),
        };
        let mut out = Vec::new();
        for k in keys {
            if let Some(r) = st.loaded.remove(&k) {
                out.push(r.name.clone());
                self.note_unload(&mut st, &r.name, "evicted");
            }
        }
        out
    }

    /// A runtime out-of-memory: every runner's duration becomes 0, so idle ones unload now and
    /// busy ones when their requests end (server/sched.go expireRunnersForRuntimeOOM).
    pub fn expire_all_for_runtime_oom(&self, model: &str, error: &str) {
        let mut st = self.lock();
        if st.loaded.is_empty() {
            return;
        }
        self.log("WARN", "sched.go:1658", "runtime OOM detected; expiring loaded models to clear memory before next request", &format!("model={model} error={error:?}"));
        let keys: Vec<String> = st.loaded.keys().cloned().collect();
        for k in keys {
            self.expire(&mut st, &k, "runtime out of memory");
        }
    }

    /// Ollama's one way to get rid of a runner: its duration becomes 0 and its timer stops; idle,
    /// it unloads now, busy, when its last request ends (sched.go expireRunner / processPending /
    /// expireRunnersForRuntimeOOM all set sessionDuration = 0 and send it to expiredCh).
    /// True when it unloaded now.
    pub(crate) fn expire(&self, st: &mut State, key: &str, why: &str) -> bool {
        let idle = st.loaded.get_mut(key).map(|r| {
            r.keep = Keep::For(Duration::ZERO);
            r.timer = None;
            r.refcount == 0
        });
        if idle != Some(true) {
            return false;
        }
        match st.loaded.remove(key) {
            Some(r) => {
                self.note_unload(st, &r.name, why);
                true
            }
            None => false,
        }
    }

    /// Clears unallocatable memory, as `drop_caches` or a reboot does on the board.
    pub fn reset_memory(&self) {
        let mut st = self.lock();
        st.fragmented = false;
        drop(st);
        self.write_memory_state(MemState::Clean);
    }

    pub(crate) fn note_unload(&self, st: &mut State, name: &str, why: &str) {
        st.counters.unloads += 1;
        if self.config.fragile_memory {
            st.fragmented = true;
            self.write_memory_state(MemState::Fragmented);
        }
        self.log("INFO", "sched.go:591", "unloading model", &format!("model={name} reason={why}"));
    }

    /// Drops runners whose keep-alive ran out (server/sched.go expireTimer -> unload).
    pub fn sweep(&self, now: Instant) {
        let mut st = self.lock();
        let expired: Vec<String> = st.loaded.iter().filter(|(_, r)| r.refcount == 0 && r.timer.is_some_and(|t| t <= now)).map(|(k, _)| k.clone()).collect();
        for k in expired {
            if let Some(r) = st.loaded.remove(&k) {
                st.counters.expirations += 1;
                self.note_unload(&mut st, &r.name, "expired");
            }
        }
    }

    /// Forgets every runner, as a restart of `ollama serve` does (the runners die with it).
    pub(crate) fn drop_all_runners(&self) {
        let mut st = self.lock();
        let names: Vec<String> = st.loaded.values().map(|r| r.name.clone()).collect();
        st.loaded.clear();
        st.counters.restarts += 1;
        for n in names {
            self.note_unload(&mut st, &n, "server restart");
        }
    }

    /// A drop_caches write since we last looked clears fragmentation.
    pub(crate) fn check_drop_caches(&self, st: &mut State) {
        let Some(path) = &self.config.drop_caches_file else { return };
        let m = std::fs::metadata(path).ok().and_then(|m| m.modified().ok());
        if m.is_some() && m != st.drop_caches_seen {
            st.drop_caches_seen = m;
            if st.fragmented {
                st.fragmented = false;
                self.write_memory_state(MemState::Clean);
                self.log("INFO", "fake.go:1", "drop_caches observed: memory is allocatable again", "");
            }
        }
    }

    pub(crate) fn write_memory_state(&self, s: MemState) {
        if let Some(dir) = &self.config.state_dir {
            let _ = std::fs::create_dir_all(dir);
            let text = match s {
                MemState::Clean => "clean",
                MemState::Loaded => "loaded",
                MemState::Fragmented => "fragmented",
            };
            let _ = std::fs::write(dir.join("memory-state"), text);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemState {
    Clean,
    Loaded,
    Fragmented,
}

/// A process that died with a model loaded leaves the memory as fragmented as an unload does.
fn read_memory_state(c: &Config) -> MemState {
    let Some(dir) = &c.state_dir else { return MemState::Clean };
    match std::fs::read_to_string(dir.join("memory-state")).as_deref().map(str::trim) {
        Ok("loaded") | Ok("fragmented") => MemState::Fragmented,
        _ => MemState::Clean,
    }
}

/// The name a request's `model` asks for, before it is looked up: spaces trimmed, a `:local`
/// source suffix dropped (internal/modelref ParseRef, parseSourceSuffix), the tag defaulted
/// (types/model ParseName). None: no name at all.
pub fn requested_name(raw: &str) -> Option<String> {
    let mut s = raw.trim();
    if let Some((base, suffix)) = s.rsplit_once(':') {
        if suffix.trim().eq_ignore_ascii_case("local") {
            s = base;
        }
    }
    (!s.is_empty()).then(|| normalize(s))
}

/// Model names get the default tag `latest` (types/model/name.go).
pub fn normalize(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}
