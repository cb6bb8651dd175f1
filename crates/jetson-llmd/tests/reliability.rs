//! The north star, the soak and the fault matrix (issue 20): the real supervisor loop, the real
//! guard and the emulator in one process under paused time, with the mixed traffic of real
//! clients through the guard and Ollama's own faults injected at stated rates. Time is
//! simulated (a week runs in seconds); every figure comes from what the emulator saw (its
//! runners and load counters), not from what the supervisor thinks it did.
//!
//! `RELIABILITY_DOCS=1` writes the figures into docs/reliability.md between their markers.
//! `NORTH_STAR_DAYS` and `SOAK_DAYS` change the simulated spans (7 and 30 by default).

use fake_ollama::{spawn, Config, Fault, FaultKind, Handle, Keep};
use jetson_llmd::conf::config::GuardSettings;
use jetson_llmd::conf::Settings;
use jetson_llmd::failure::Failure;
use jetson_llmd::guard::{self, Guard, Stats};
use jetson_llmd::host::signals::Signals;
use jetson_llmd::ollama::OllamaApi;
use jetson_llmd::records::state::{LauncherKind, StateFile};
use jetson_llmd::records::Stage;
use jetson_llmd::supervisor::backend::{Backend, OllamaEvent};
use jetson_llmd::supervisor::{Paths, Supervisor};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

const PINNED: &str = "gemma4:e2b-8k";
const DAY: u64 = 86_400;

/// xorshift64*: reproducible traffic and faults without a dependency.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Exponentially distributed gap with this mean (a Poisson process).
    fn gap(&mut self, mean_s: f64) -> Duration {
        let u = ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        Duration::from_secs_f64((-u.ln() * mean_s).min(mean_s * 20.0))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Ollama as the emulator in this process: "started" by being there, "crashed" by a restart
/// that refuses connections for a few seconds and drops every runner (what the process
/// launcher sees when `ollama serve` dies and is started again).
struct EmuBackend {
    emu: Arc<Handle>,
    down: mpsc::UnboundedReceiver<String>,
    /// As the process backend: turns true when the running "child" is gone (World::crash).
    gone: Arc<std::sync::Mutex<Option<tokio::sync::watch::Sender<bool>>>>,
}

impl Backend for EmuBackend {
    fn kind(&self) -> LauncherKind {
        LauncherKind::Process
    }

    fn describe(&self) -> String {
        "fake-ollama (in process)".into()
    }

    async fn start_ollama(&mut self) -> Result<(), Failure> {
        let mut g = self.gone.lock().expect("lock");
        if g.is_none() {
            *g = Some(tokio::sync::watch::channel(false).0);
        }
        Ok(())
    }

    async fn next_event(&mut self) -> OllamaEvent {
        match self.down.recv().await {
            Some(how) => {
                self.gone.lock().expect("lock").take();
                OllamaEvent::Down(how)
            }
            None => std::future::pending().await,
        }
    }

    fn gone(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.gone.lock().expect("lock").as_ref().map(|g| g.subscribe())
    }

    async fn ollama_log(&mut self) -> Result<Vec<String>, Failure> {
        // Since its last start, as the process launcher keeps it.
        let all = self.emu.emu.logs();
        let from = all.iter().rposition(|l| l.contains("msg=\"server config\"")).unwrap_or(0);
        Ok(all[from..].to_vec())
    }

    async fn warm<A: OllamaApi>(&mut self, api: &A, settings: &Settings, model: &jetson_llmd::conf::ModelName) -> Result<(), Failure> {
        jetson_llmd::ollama::warm::preload(api, settings, model, &jetson_llmd::host::memory::NoRelief).await.map(|_| ())
    }

    async fn tick<A: OllamaApi>(&mut self, api: &A, settings: &Settings, model: &jetson_llmd::conf::ModelName) -> Option<Result<jetson_llmd::ollama::warm::WarmReport, Failure>> {
        Some(jetson_llmd::ollama::warm::tick(api, settings, model, &jetson_llmd::host::memory::NoRelief).await)
    }

    async fn keepalive_now(&mut self) -> bool {
        false
    }

    async fn start_keepalive(&mut self) -> Result<(), Failure> {
        Ok(())
    }

    async fn stop_keepalive(&mut self) {}

    async fn shutdown(&mut self) {}

    async fn request_reboot(&mut self) -> Result<(), Failure> {
        Ok(())
    }
}

/// Ollama's own faults, each with its rate per day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `ollama serve` dies (SIGKILL, a driver crash) and is started again.
    Crash,
    /// A clean restart (an upgrade, a config change).
    Restart,
    /// A decode runs out of GPU memory: Ollama expires every runner, pinned or not.
    RuntimeOom,
    /// One request never answered (the supervisor's /api/ps or a client's generation).
    Hang,
    /// One answer 30 s late.
    Slow,
    /// One 500.
    Error500,
    /// One connection reset mid-answer.
    Reset,
}

impl Kind {
    const ALL: [(Kind, f64, &'static str); 7] = [
        (Kind::Crash, 0.5, "Ollama crashes (killed, restarted 3 s later)"),
        (Kind::Restart, 0.15, "Ollama restarted cleanly (upgrade, config)"),
        (Kind::RuntimeOom, 0.3, "runtime out of memory (every runner expired)"),
        (Kind::Hang, 2.0, "a request never answered"),
        (Kind::Slow, 2.0, "an answer 30 s late"),
        (Kind::Error500, 4.0, "a 500"),
        (Kind::Reset, 2.0, "a connection reset mid-answer"),
    ];

    fn words(self) -> &'static str {
        Kind::ALL.iter().find(|k| k.0 == self).map(|k| k.2).unwrap_or("?")
    }

    /// Faults after which Ollama no longer holds the model: one cold load each is theirs.
    fn unloads(self) -> bool {
        matches!(self, Kind::Crash | Kind::Restart | Kind::RuntimeOom)
    }
}

/// Client kinds (what real homelab clients send), each with its mean gap in seconds.
const CLIENTS: [(&str, f64); 7] = [
    ("aider-like chat (num_ctx grows each turn)", 600.0),
    ("paperless-like generate (num_ctx per document)", 300.0),
    ("langchain-like chat (keep_alive \"5m\")", 900.0),
    ("comfyui-like generate (keep_alive 0)", 1800.0),
    ("openai-sdk chat completions", 600.0),
    ("another model (llama3.2:3b)", 3600.0),
    ("embeddings (RAG)", 900.0),
];

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    refused_other_model: AtomicU64,
    not_warm_503: AtomicU64,
    failed: AtomicU64,
}

fn request(kind: usize, turn: u64, rng: &mut Rng) -> (&'static str, serde_json::Value) {
    let mut chat = |extra: serde_json::Value| {
        let mut v = json!({"model": PINNED, "messages": [{"role": "user", "content": "hello"}], "stream": rng.below(2) == 0, "options": {"num_predict": 24}});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        v
    };
    match kind {
        0 => ("/api/chat", chat(json!({"options": {"num_ctx": 2048 + 1024 * (turn % 12), "num_predict": 24}}))),
        1 => {
            let num_ctx = [2048, 4096, 8192, 16384][rng.below(4) as usize];
            ("/api/generate", json!({"model": PINNED, "prompt": "summarise this invoice", "stream": false, "options": {"num_ctx": num_ctx, "num_predict": 24}}))
        }
        2 => ("/api/chat", chat(json!({"keep_alive": "5m"}))),
        3 => ("/api/generate", json!({"model": PINNED, "prompt": "describe the image", "stream": false, "keep_alive": 0, "options": {"num_predict": 24}})),
        4 => ("/v1/chat/completions", json!({"model": PINNED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24, "stream": rng.below(2) == 0})),
        5 => ("/api/generate", json!({"model": "llama3.2:3b", "prompt": "hi", "stream": false})),
        _ => ("/api/embed", json!({"model": PINNED, "input": ["a chunk of a document", "another chunk"]})),
    }
}

/// A stretch of time the pinned model was not warm.
#[derive(Debug, Clone)]
struct Stretch {
    from: u64,
    seconds: u64,
    after: Option<Kind>,
}

struct Figures {
    days: u64,
    warm_share: f64,
    not_warm_s: u64,
    longest: Option<Stretch>,
    faults: Vec<(Kind, u64)>,
    unloading_faults: u64,
    pinned_loads: u64,
    other_loads: u64,
    reloads_for_options: u64,
    reboot_required: bool,
    clients: Vec<(&'static str, u64)>,
    tally: [u64; 5],
    rewarms: u64,
    ollama_restarts: u64,
    /// (day, RSS kB, tasks, fds) sampled each day.
    footprint: Vec<(u64, u64, usize, usize)>,
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status").ok().and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|n| n.parse().ok())).unwrap_or(0)
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn warm_now(emu: &Handle) -> bool {
    warm_with(emu, PINNED)
}

fn warm_with(emu: &Handle, model: &str) -> bool {
    emu.emu.runner(model).is_some_and(|r| r.keep == Keep::Forever)
}

/// The supervisor, the guard and the emulator, running.
struct World {
    dir: tempfile::TempDir,
    emu: Arc<Handle>,
    down_tx: mpsc::UnboundedSender<String>,
    gone: Arc<std::sync::Mutex<Option<tokio::sync::watch::Sender<bool>>>>,
    guard_url: String,
    signals: Signals,
    supervisor: Option<tokio::task::JoinHandle<Result<(), Failure>>>,
    state: tokio::sync::watch::Receiver<jetson_llmd::records::state::State>,
    reboot: Arc<std::sync::atomic::AtomicBool>,
    guard_stop: tokio_util::sync::CancellationToken,
    /// The model that counts as warm (model.conf's).
    model: String,
}

impl World {
    async fn start(cfg: Config) -> World {
        let emu = Arc::new(spawn(cfg, "127.0.0.1:0".parse().expect("addr")).await.expect("emulator"));
        World::around(emu, tempfile::tempdir().expect("tmp")).await
    }

    fn settings(dir: &std::path::Path) -> Settings {
        Settings { guard: GuardSettings { enabled: true, ..GuardSettings::default() }, state_dir: dir.join("run"), ..Settings::default() }
    }

    /// A supervisor (and its guard) around a running emulator, with its files in `dir`.
    async fn around(emu: Arc<Handle>, dir: tempfile::TempDir) -> World {
        if !dir.path().join("model.conf").exists() {
            std::fs::write(dir.path().join("model.conf"), format!("OLLAMA_MODEL={PINNED}\n")).expect("w");
        }
        let settings = World::settings(dir.path());
        let mut state = StateFile::new(Some(&dir.path().join("run")), LauncherKind::Process);
        // As `supervise` does before its guard serves.
        state.pin_from(&dir.path().join("model.conf")).await;
        let (policy_tx, policy_rx) = tokio::sync::watch::channel(settings.guard.clone());
        let stats = Arc::new(Stats::default());
        let mut g = Guard::new(url::Url::parse(&emu.url()).expect("url"), settings.guard.clone(), state.subscribe(), stats.clone());
        g.follow(policy_rx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let guard_url = format!("http://{}", listener.local_addr().expect("addr"));
        let signals = Signals::default();
        let guard_stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(guard::serve(listener, Arc::new(g), guard_stop.clone()));
        let mut stage_rx = state.subscribe();
        let reboot = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let reboot = reboot.clone();
            tokio::spawn(async move {
                while stage_rx.changed().await.is_ok() {
                    if stage_rx.borrow().stage == Stage::RebootRequired {
                        reboot.store(true, Ordering::SeqCst);
                    }
                }
            });
        }
        let (down_tx, down_rx) = mpsc::unbounded_channel();
        let gone = Arc::new(std::sync::Mutex::new(None));
        let api = ollama_client::Client::new(ollama_client::parse_host(&emu.url()).expect("url").url, ollama_client::Timeouts { request: settings.request_timeout, load: settings.load_timeout, ..Default::default() });
        let watch = state.subscribe();
        let sup = Supervisor {
            api,
            backend: EmuBackend { emu: emu.clone(), down: down_rx, gone: gone.clone() },
            notify: jetson_llmd::host::notify::SdNotify,
            settings: settings.clone(),
            paths: Paths { config: dir.path().join("config.toml"), model_conf: dir.path().join("model.conf"), root: dir.path().to_path_buf() },
            cmdline: None,
            state,
            conf_poll: Duration::from_secs(2),
            conf_watch: false,
            watchdog: None,
            guard: Some(policy_tx),
        };
        let sup_signals = signals.clone();
        // The loop is not Send (it holds the API client's progress callbacks): a LocalSet runs it.
        let supervisor = Some(tokio::task::spawn_local(async move { sup.run(sup_signals).await }));
        World { dir, emu, down_tx, gone, guard_url, signals, supervisor, state: watch, reboot, guard_stop, model: PINNED.into() }
    }

    fn warm(&self) -> bool {
        warm_with(&self.emu, &self.model)
    }

    /// Simulated seconds until the pinned model is warm (None: not within `limit`).
    async fn until_warm(&self, limit: Duration) -> Option<u64> {
        let t = Instant::now();
        while !self.warm() {
            if t.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Some(t.elapsed().as_secs())
    }

    /// Ollama dies now and is back after `down` (the process launcher sees it exit).
    fn crash(&self, down: Duration, how: &str) {
        self.emu.restart(down);
        let _ = self.down_tx.send(how.into());
        if let Some(g) = self.gone.lock().expect("lock").as_ref() {
            g.send_replace(true);
        }
    }

    /// SIGTERM: the supervisor's own clean shutdown.
    async fn stop(&mut self) {
        self.signals.shutdown.cancel();
        self.guard_stop.cancel();
        if let Some(s) = self.supervisor.take() {
            let _ = tokio::time::timeout(Duration::from_secs(60), s).await;
        }
    }

    /// SIGKILL: gone between two instructions, nothing cleaned up.
    fn kill(&mut self) {
        self.guard_stop.cancel();
        if let Some(s) = self.supervisor.take() {
            s.abort();
        }
    }

    fn status(&self) -> (Stage, String) {
        let s = self.state.borrow();
        (s.stage, s.status.clone())
    }
}

async fn world(days: u64, seed: u64, traffic: bool) -> Figures {
    let mut cfg = Config::orin_nano(1.0);
    cfg.sweep_every = Duration::from_secs(1);
    let mut w = World::start(cfg).await;
    let (emu, down_tx, guard_url, reboot) = (w.emu.clone(), w.down_tx.clone(), w.guard_url.clone(), w.reboot.clone());
    let start = Instant::now();
    let end = start + Duration::from_secs(days * DAY);
    // Ollama's faults, at their rates.
    let fault_log: Arc<Mutex<Vec<(u64, Kind)>>> = Arc::default();
    {
        let (emu, log, down_tx) = (emu.clone(), fault_log.clone(), down_tx.clone());
        let mut rng = Rng(seed ^ 0xfa17);
        tokio::spawn(async move {
            let total: f64 = Kind::ALL.iter().map(|k| k.1).sum();
            loop {
                tokio::time::sleep(rng.gap(DAY as f64 / total)).await;
                if Instant::now() >= end {
                    break;
                }
                let mut pick = (rng.below(1_000_000) as f64 / 1e6) * total;
                let kind = Kind::ALL.iter().find(|k| {
                    pick -= k.1;
                    pick < 0.0
                });
                let kind = kind.map(|k| k.0).unwrap_or(Kind::Error500);
                log.lock().expect("lock").push((start.elapsed().as_secs(), kind));
                let one = |k: FaultKind, p: &str| Fault { kind: k, path_prefix: Some(p.to_string()) };
                match kind {
                    Kind::Crash => {
                        emu.restart(Duration::from_secs(3));
                        let _ = down_tx.send("ollama serve exited (signal: 9 (SIGKILL))".into());
                    }
                    Kind::Restart => {
                        emu.restart(Duration::from_secs(8));
                        let _ = down_tx.send("ollama serve exited (exit status: 0)".into());
                    }
                    Kind::RuntimeOom => emu.emu.inject(one(FaultKind::RuntimeOom, "/api/")),
                    Kind::Hang => emu.emu.inject(one(FaultKind::Hang, if rng.below(2) == 0 { "/api/ps" } else { "/api/" })),
                    Kind::Slow => emu.emu.inject(one(FaultKind::Slow(Duration::from_secs(30)), "/api/")),
                    Kind::Error500 => emu.emu.inject(one(FaultKind::Status500, "/api/")),
                    Kind::Reset => emu.emu.inject(one(FaultKind::Reset, "/api/")),
                }
            }
        });
    }
    // Clients through the guard.
    let tally = Arc::new(Tally::default());
    let sent_by: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS.len()).map(|_| AtomicU64::new(0)).collect());
    if traffic {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(600)).build().expect("client");
        for (i, (_, mean)) in CLIENTS.iter().enumerate() {
            let (http, url, tally, sent_by) = (http.clone(), guard_url.clone(), tally.clone(), sent_by.clone());
            let mut rng = Rng(seed.wrapping_add(i as u64 * 7919 + 1));
            let mean = *mean;
            tokio::spawn(async move {
                let mut turn = 0;
                loop {
                    tokio::time::sleep(rng.gap(mean)).await;
                    if Instant::now() >= end {
                        break;
                    }
                    turn += 1;
                    let (path, body) = request(i, turn, &mut rng);
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    sent_by[i].fetch_add(1, Ordering::Relaxed);
                    let r = http.post(format!("{url}{path}")).json(&body).send().await;
                    let counter = match r {
                        Ok(r) if r.status() == 409 => &tally.refused_other_model,
                        Ok(r) if r.status() == 503 && r.headers().contains_key("x-jetson-llmd-stage") => &tally.not_warm_503,
                        Ok(r) if r.status().is_success() => match r.bytes().await {
                            Ok(_) => &tally.ok,
                            Err(_) => &tally.failed,
                        },
                        _ => &tally.failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    // The clock: warm or not, each simulated second; the footprint each day.
    let mut warm_s = 0u64;
    let mut total_s = 0u64;
    let mut stretch: Option<u64> = None;
    let mut stretches: Vec<Stretch> = Vec::new();
    let mut footprint = Vec::new();
    // Boot: the first warm is not a stretch of "not warm" (it is the boot order).
    while !warm_now(&emu) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(start.elapsed() < Duration::from_secs(600), "never warm");
    }
    let booted = start.elapsed().as_secs();
    let mut t = booted;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        t += 1;
        total_s += 1;
        if warm_now(&emu) {
            warm_s += 1;
            if let Some(from) = stretch.take() {
                let faults = fault_log.lock().expect("lock");
                let after = faults.iter().rev().find(|(at, _)| *at <= from).map(|f| f.1);
                stretches.push(Stretch { from, seconds: t - from, after });
            }
        } else if stretch.is_none() {
            stretch = Some(t);
        }
        if t.is_multiple_of(DAY) || footprint.is_empty() {
            let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
            footprint.push((t / DAY, rss_kb(), tasks, fds()));
        }
    }
    w.stop().await;
    let c = emu.emu.counters();
    let faults = fault_log.lock().expect("lock").clone();
    let mut by_kind: std::collections::BTreeMap<Kind, u64> = Default::default();
    for (_, k) in &faults {
        *by_kind.entry(*k).or_default() += 1;
    }
    let state: jetson_llmd::records::state::State = std::fs::read(w.dir.path().join("run/state.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    Figures {
        days,
        warm_share: warm_s as f64 / total_s.max(1) as f64,
        not_warm_s: total_s - warm_s,
        longest: stretches.iter().max_by_key(|s| s.seconds).cloned(),
        unloading_faults: faults.iter().filter(|f| f.1.unloads()).count() as u64,
        faults: by_kind.into_iter().collect(),
        pinned_loads: c.loads_by_model.iter().filter(|(m, _)| m.as_str() == PINNED).map(|(_, n)| *n).sum(),
        other_loads: c.loads_by_model.iter().filter(|(m, _)| m.as_str() != PINNED).map(|(_, n)| *n).sum(),
        reloads_for_options: c.reloads_for_options,
        reboot_required: reboot.load(Ordering::SeqCst),
        clients: CLIENTS.iter().enumerate().map(|(i, c)| (c.0, sent_by[i].load(Ordering::Relaxed))).collect(),
        tally: [tally.sent.load(Ordering::Relaxed), tally.ok.load(Ordering::Relaxed), tally.refused_other_model.load(Ordering::Relaxed), tally.not_warm_503.load(Ordering::Relaxed), tally.failed.load(Ordering::Relaxed)],
        rewarms: state.rewarm_count,
        ollama_restarts: state.ollama_restarts,
        footprint,
    }
}

/// The simulated span: the variable, else `full` days in a release build (scripts/test runs
/// this file with --release) and `debug` days in a debug one (a quick pass of the same code).
fn days(var: &str, full: u64, debug: u64) -> u64 {
    let default = if cfg!(debug_assertions) { debug } else { full };
    std::env::var(var).ok().and_then(|v| v.parse().ok()).filter(|d| *d > 0).unwrap_or(default)
}

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in docs/reliability.md.
fn write_docs(name: &str, text: &str) {
    if std::env::var_os("RELIABILITY_DOCS").is_none() {
        return;
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/reliability.md");
    let doc = std::fs::read_to_string(&path).expect("docs/reliability.md");
    let (b, e) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
    let (Some(i), Some(j)) = (doc.find(&b), doc.find(&e)) else { panic!("docs/reliability.md has no {b} ... {e}") };
    let new = format!("{}{b}\n{text}{}", &doc[..i], &doc[j..]);
    std::fs::write(&path, new).expect("write docs/reliability.md");
}

fn hms(s: u64) -> String {
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn fault_rows(f: &Figures) -> String {
    let mut md = String::from("| fault injected | rate per day | times |\n|---|---|---|\n");
    for (k, rate, words) in Kind::ALL {
        let n = f.faults.iter().find(|x| x.0 == k).map(|x| x.1).unwrap_or(0);
        md.push_str(&format!("| {words} | {rate} | {n} |\n"));
    }
    md
}

fn longest(f: &Figures) -> String {
    match &f.longest {
        Some(s) => format!("{} (day {}, after: {})", hms(s.seconds), s.from / DAY + 1, s.after.map(Kind::words).unwrap_or("no fault: a client")),
        None => "none".into(),
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_simulated_week_of_real_clients_keeps_the_model_warm() {
    tokio::task::LocalSet::new().run_until(a_simulated_week_of_real_clients_keeps_the_model_warm_body()).await;
}

async fn a_simulated_week_of_real_clients_keeps_the_model_warm_body() {
    let n = days("NORTH_STAR_DAYS", 7, 1);
    let f = world(n, 0x5eed_2026, true).await;
    let [sent, ok, other, not_warm, failed] = f.tally;
    // The goals that are ours: no reload a client caused, no reboot, every not-warm stretch
    // follows one of Ollama's own faults and ends with one cold load.
    assert_eq!(f.other_loads, 0, "a client loaded another model");
    assert_eq!(f.reloads_for_options, 0, "a client's options reloaded the pinned model");
    assert!(f.pinned_loads <= 1 + f.unloading_faults, "loads of the pinned model: {} for {} faults that unloaded it", f.pinned_loads, f.unloading_faults);
    assert!(!f.reboot_required, "a reboot was asked for");
    assert!(sent > 100 && ok > sent / 2, "traffic: {:?}", f.tally);
    if let Some(s) = &f.longest {
        assert!(s.after.is_some_and(Kind::unloads), "the longest stretch not warm followed {:?}, not a fault that unloads", s.after);
        // One cold load (60 s on the Orin) plus the residency check (15 s) and the restart.
        assert!(s.seconds <= 120, "longest not warm: {}", hms(s.seconds));
    }
    let budget = f.unloading_faults * 120;
    assert!(f.not_warm_s <= budget, "not warm {} s, more than 120 s for each of the {} faults that unloaded the model", f.not_warm_s, f.unloading_faults);
    let own = f.not_warm_s.saturating_sub(f.unloading_faults * 60);
    let mut md = format!(
        "Written by `RELIABILITY_DOCS=1 cargo test --release -p jetson-llmd --test reliability -- --test-threads=1` ({} simulated days, paused time; the real supervisor loop and guard, the emulator with the Orin Nano profile: a cold load of gemma4 takes 60 s).\n\n",
        f.days
    );
    md.push_str("| figure | result | goal |\n|---|---|---|\n");
    md.push_str(&format!("| time the pinned model was warm | {:.4}% ({} not warm) | ≥ 99.99% |\n", f.warm_share * 100.0, hms(f.not_warm_s)));
    md.push_str(&format!("| not warm beyond the cold loads Ollama's own faults force (60 s each) | {} | - |\n", hms(own)));
    md.push_str(&format!(
        "| reloads a client caused | {} (other models loaded: {}, reloads for options: {}; the pinned model loaded {} times: at boot and once per fault that unloaded it, {}) | 0 |\n",
        f.other_loads + f.reloads_for_options + f.pinned_loads.saturating_sub(1 + f.unloading_faults),
        f.other_loads,
        f.reloads_for_options,
        f.pinned_loads,
        f.unloading_faults
    ));
    md.push_str(&format!("| reboots needed | {} | 0 |\n", u8::from(f.reboot_required)));
    md.push_str(&format!("| longest stretch not warm | {} | - |\n", longest(&f)));
    md.push_str(&format!("| re-warms by the supervisor; Ollama restarts seen | {}; {} | - |\n", f.rewarms, f.ollama_restarts));
    md.push_str(&format!("| client requests | {sent}: {ok} answered, {other} refused as another model (409), {not_warm} told not warm yet (503), {failed} failed by an injected fault | - |\n\n"));
    md.push_str("| client (through the guard) | mean gap | requests |\n|---|---|---|\n");
    for ((name, mean), (_, n)) in CLIENTS.iter().zip(&f.clients) {
        md.push_str(&format!("| {name} | {} | {n} |\n", hms(*mean as u64)));
    }
    md.push('\n');
    md.push_str(&fault_rows(&f));
    print!("{md}");
    write_docs("north-star", &md);
    let goal = f.warm_share >= 0.9999;
    println!("warm share goal (99.99%): {}", if goal { "met" } else { "not met: see the faults' cold loads" });
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn thirty_days_with_faults_stay_flat() {
    tokio::task::LocalSet::new().run_until(thirty_days_with_faults_stay_flat_body()).await;
}

async fn thirty_days_with_faults_stay_flat_body() {
    let n = days("SOAK_DAYS", 30, 2);
    let f = world(n, 0x50a4_2026, true).await;
    assert!(!f.reboot_required);
    assert_eq!((f.other_loads, f.reloads_for_options), (0, 0));
    assert!(f.pinned_loads <= 1 + f.unloading_faults);
    // Flat: day 1 against the last day (the first sample is taken once warm, before the
    // first day's traffic has grown the allocator's pools: compare from day 1).
    let day1 = f.footprint.iter().find(|x| x.0 >= 1).copied().unwrap_or(f.footprint[0]);
    let last = *f.footprint.last().expect("samples");
    assert!(last.1 <= day1.1 + 8 * 1024, "RSS grew from {} kB on day 1 to {} kB on day {}", day1.1, last.1, last.0);
    assert!(last.2 <= day1.2 + 8, "tasks grew from {} to {}", day1.2, last.2);
    assert!(last.3 <= day1.3 + 8, "file descriptors grew from {} to {}", day1.3, last.3);
    let mut md = format!(
        "Written by `RELIABILITY_DOCS=1 cargo test --release -p jetson-llmd --test reliability -- --test-threads=1` ({} simulated days, the same clients and faults as the north star, another seed). Memory, tasks and file descriptors are those of the whole test process (supervisor, guard, emulator and clients; one test at a time, so nothing else's).\n\n",
        f.days
    );
    md.push_str("| figure | day 1 | last day |\n|---|---|---|\n");
    md.push_str(&format!("| RSS | {:.1} MiB | {:.1} MiB (day {}) |\n", day1.1 as f64 / 1024.0, last.1 as f64 / 1024.0, last.0));
    md.push_str(&format!("| tokio tasks alive | {} | {} |\n", day1.2, last.2));
    md.push_str(&format!("| file descriptors | {} | {} |\n\n", day1.3, last.3));
    md.push_str("| figure | result |\n|---|---|\n");
    md.push_str(&format!("| time warm | {:.4}% ({} not warm) |\n", f.warm_share * 100.0, hms(f.not_warm_s)));
    md.push_str(&format!("| longest stretch not warm | {} |\n", longest(&f)));
    md.push_str(&format!("| re-warms; Ollama restarts seen | {}; {} |\n", f.rewarms, f.ollama_restarts));
    md.push_str(&format!("| client requests | {} ({} answered) |\n", f.tally[0], f.tally[1]));
    md.push_str(&format!("| faults that unloaded the model; loads of the pinned model | {}; {} |\n\n", f.unloading_faults, f.pinned_loads));
    md.push_str(&fault_rows(&f));
    print!("{md}");
    write_docs("soak", &md);
}

/// What one fault did, as the user and the emulator saw it.
struct Row {
    fault: &'static str,
    /// The first status other than ready that `status`, /healthz and the journal showed.
    sees: String,
    /// Longest stretch not warm after the fault (None: never warm again within the window).
    not_warm: Option<u64>,
    /// Loads of the pinned model the fault cost (the emulator's count).
    loads: u64,
    lost: &'static str,
}

/// Watches for `window` after a fault: the longest stretch not warm, what was shown (the
/// first status other than ready, and the last one when it did not end ready), and for how
/// long not ready was shown (what /healthz, `status` and the guard go by).
async fn observe(w: &World, window: Duration) -> (Option<u64>, String) {
    let t = Instant::now();
    let (mut longest, mut run, mut sees) = (0u64, 0u64, String::new());
    let (mut shown, mut shown_run) = (0u64, 0u64);
    while t.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if w.warm() {
            run = 0;
        } else {
            run += 1;
            longest = longest.max(run);
        }
        let (stage, status) = w.status();
        if stage != Stage::Ready {
            shown_run += 1;
            shown = shown.max(shown_run);
            if sees.is_empty() {
                sees = format!("{stage}: {}", jetson_llmd::text::clip(&status, 120));
            }
        } else {
            shown_run = 0;
        }
    }
    let (stage, status) = w.status();
    if sees.is_empty() {
        sees = "nothing: stays ready".into();
    } else if stage != Stage::Ready {
        sees = format!("{sees}; at the end: {stage}: {}", jetson_llmd::text::clip(&status, 120));
    } else {
        sees = format!("{sees} (shown for {})", hms(shown));
    }
    (if w.warm() { Some(longest) } else { None }, sees)
}

/// What was shown, without this run's port numbers and temporary directories (so that the
/// table in docs/reliability.md changes only when behaviour does).
fn steady(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("127.0.0.1:") {
        out.push_str(&rest[..i + 10]);
        rest = &rest[i + 10..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 {
            out.push_str("PORT");
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    let mut clean = String::new();
    let mut rest = out.as_str();
    while let Some(i) = rest.find("/tmp/.tmp") {
        clean.push_str(&rest[..i]);
        rest = &rest[i + 9..];
        let end = rest.find('/').unwrap_or(rest.len());
        clean.push_str("DIR");
        rest = &rest[end..];
    }
    clean.push_str(rest);
    clean
}

fn pinned_loads(emu: &Handle) -> u64 {
    emu.emu.counters().loads_by_model.get(PINNED).copied().unwrap_or(0)
}

async fn post(url: &str, path: &str, body: serde_json::Value) -> Option<u16> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().ok()?;
    let r = http.post(format!("{url}{path}")).json(&body).send().await.ok()?;
    let s = r.status().as_u16();
    let _ = r.bytes().await;
    Some(s)
}

fn gen(keep: Option<serde_json::Value>) -> serde_json::Value {
    let mut v = json!({"model": PINNED, "prompt": "hi", "stream": false, "options": {"num_predict": 8}});
    if let Some(k) = keep {
        v["keep_alive"] = k;
    }
    v
}

/// Config with quick sweeps, and `f` applied.
fn cfg(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::orin_nano(1.0);
    c.sweep_every = Duration::from_secs(1);
    f(&mut c);
    c
}

/// A warm world: booted and warm.
async fn warm_world(c: Config) -> World {
    let w = World::start(c).await;
    w.until_warm(Duration::from_secs(600)).await.expect("warm at boot");
    w
}

/// The model.conf and state files after a fault: nothing of the user's lost, ours readable.
fn data_kept(w: &World, model_conf: Option<&[u8]>) -> &'static str {
    let conf = std::fs::read(w.dir.path().join("model.conf")).ok();
    let expected = model_conf.map(<[u8]>::to_vec).unwrap_or_else(|| format!("OLLAMA_MODEL={PINNED}\n").into_bytes());
    assert_eq!(conf.as_deref(), Some(&expected[..]), "model.conf is the user's and must stay as they left it");
    let state = std::fs::read(w.dir.path().join("run/state.json")).expect("state.json");
    assert!(serde_json::from_slice::<serde_json::Value>(&state).is_ok(), "state.json is whole");
    "0"
}

const WINDOW: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_fault_matrix() {
    tokio::task::LocalSet::new().run_until(the_fault_matrix_body()).await;
}

async fn the_fault_matrix_body() {
    let mut rows: Vec<Row> = Vec::new();
    let one = |k: FaultKind, p: &str| Fault { kind: k, path_prefix: Some(p.to_string()) };

    // Ollama down at boot: it answers 90 s after the supervisor starts.
    {
        let emu = Arc::new(spawn(cfg(|_| {}), "127.0.0.1:0".parse().expect("addr")).await.expect("emu"));
        emu.restart(Duration::from_secs(90));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut w = World::around(emu, tempfile::tempdir().expect("tmp")).await;
        let (nw, sees) = observe(&w, WINDOW).await;
        rows.push(Row { fault: "Ollama down at boot (answers after 90 s)", sees, not_warm: nw, loads: pinned_loads(&w.emu), lost: data_kept(&w, None) });
        w.stop().await;
    }
    // Slow start past startup_timeout (2 m): answers after 5 m.
    {
        let emu = Arc::new(spawn(cfg(|_| {}), "127.0.0.1:0".parse().expect("addr")).await.expect("emu"));
        emu.restart(Duration::from_secs(300));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut w = World::around(emu, tempfile::tempdir().expect("tmp")).await;
        let (nw, sees) = observe(&w, WINDOW + Duration::from_secs(300)).await;
        rows.push(Row { fault: "Ollama slow to start, past startup_timeout (answers after 5 m)", sees, not_warm: nw, loads: pinned_loads(&w.emu), lost: data_kept(&w, None) });
        w.stop().await;
    }
    // Faults in a warm board: each measured from a warm start.
    type Inject = fn(&World, &dyn Fn(FaultKind, &str) -> Fault);
    let warm_faults: Vec<(&'static str, Inject)> = vec![
        ("5xx: 20 answers of 500", |w, one| (0..20).for_each(|_| w.emu.emu.inject(one(FaultKind::Status500, "/api/")))),
        ("/api/ps never answers (3 times in a row)", |w, one| (0..3).for_each(|_| w.emu.emu.inject(one(FaultKind::Hang, "/api/ps")))),
        ("Ollama stalled (SIGSTOP-like: the next 12 requests answer 2 min late)", |w, one| (0..12).for_each(|_| w.emu.emu.inject(one(FaultKind::Slow(Duration::from_secs(120)), "/api/")))),
        ("requests lost: the next 5 never answer at all", |w, one| (0..5).for_each(|_| w.emu.emu.inject(one(FaultKind::Hang, "/api/")))),
        ("connections reset mid-answer (10 times)", |w, one| (0..10).for_each(|_| w.emu.emu.inject(one(FaultKind::Reset, "/api/")))),
        ("answers 30 s late (10 times)", |w, one| (0..10).for_each(|_| w.emu.emu.inject(one(FaultKind::Slow(Duration::from_secs(30)), "/api/")))),
        ("Ollama crashes once (back after 3 s)", |w, _| w.crash(Duration::from_secs(3), "ollama serve exited (signal: 9 (SIGKILL))")),
        ("another client evicts the model, straight to Ollama", |w, _| {
            w.emu.emu.evict(Some(PINNED));
        }),
        ("runtime out of memory: Ollama expires every runner", |w, one| w.emu.emu.inject(one(FaultKind::RuntimeOom, "/api/"))),
        ("the clock jumps 2 h (suspend and resume)", |_, _| {}),
    ];
    for (fault, inject) in warm_faults {
        let mut w = warm_world(cfg(|_| {})).await;
        let before = pinned_loads(&w.emu);
        inject(&w, &one);
        if fault.starts_with("runtime") {
            // The next generation meets it (through the guard, as a client's would).
            let _ = post(&w.guard_url, "/api/generate", gen(None)).await;
        }
        if fault.starts_with("the clock") {
            tokio::time::advance(Duration::from_secs(7200)).await;
        }
        let (nw, sees) = observe(&w, WINDOW).await;
        rows.push(Row { fault, sees, not_warm: nw, loads: pinned_loads(&w.emu) - before, lost: data_kept(&w, None) });
        w.stop().await;
    }
    // A crash loop: five crashes ten seconds apart.
    {
        let mut w = warm_world(cfg(|_| {})).await;
        let before = pinned_loads(&w.emu);
        let (emu, down, gone) = (w.emu.clone(), w.down_tx.clone(), w.gone.clone());
        tokio::task::spawn_local(async move {
            for _ in 0..5 {
                emu.restart(Duration::from_secs(2));
                let _ = down.send("ollama serve exited (exit status: 2)".into());
                if let Some(g) = gone.lock().expect("lock").as_ref() {
                    g.send_replace(true);
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        });
        let (nw, sees) = observe(&w, WINDOW).await;
        rows.push(Row { fault: "a crash loop (5 crashes 10 s apart)", sees, not_warm: nw, loads: pinned_loads(&w.emu) - before, lost: data_kept(&w, None) });
        w.stop().await;
    }
    // Issue 30: Ollama killed 30 s into a cold load (the re-warm after a first crash), with the
    // loop's timers long due when the load fails: started again at once, warm after one load.
    {
        let mut w = warm_world(cfg(|_| {})).await;
        let before = pinned_loads(&w.emu);
        w.crash(Duration::from_secs(3), "ollama serve exited (signal: 9 (SIGKILL))");
        let t = Instant::now();
        while w.status().0 != Stage::Preloading && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        w.crash(Duration::from_secs(3), "ollama serve exited (signal: 9 (SIGKILL)) during the load");
        let (nw, sees) = observe(&w, WINDOW).await;
        assert!(nw.is_some(), "warm again after a kill during a load: {sees}");
        rows.push(Row { fault: "Ollama killed 30 s into a cold load (process launcher)", sees, not_warm: nw.map(|n| n + 30), loads: pinned_loads(&w.emu) - before, lost: data_kept(&w, None) });
        w.stop().await;
    }
    // Issue 30: a client asks for another model the moment a supervisor starts, Ollama already
    // up (a restart of jetson-llmd): the guard already knows the pin, and nothing loads first.
    {
        let emu = Arc::new(spawn(cfg(|_| {}), "127.0.0.1:0".parse().expect("addr")).await.expect("emu"));
        let mut w = World::around(emu, tempfile::tempdir().expect("tmp")).await;
        let other = post(&w.guard_url, "/api/generate", json!({"model": "gemma3:4b", "prompt": "hi", "stream": false})).await;
        let (nw, sees) = observe(&w, WINDOW).await;
        let others = w.emu.emu.counters().loads_by_model.get("gemma3:4b").copied().unwrap_or(0);
        assert_eq!((other, others), (Some(409), 0), "the other model is refused before the pinned one is loaded");
        rows.push(Row { fault: "another model asked for through the guard as the supervisor starts (Ollama already up)", sees: format!("409 for it (0 loads of it); {sees}"), not_warm: nw, loads: pinned_loads(&w.emu), lost: data_kept(&w, None) });
        w.stop().await;
    }
    // Issue 30: one local client opens 520 connections, sends one GET on each and idles.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut w = warm_world(cfg(|_| {})).await;
        let before = pinned_loads(&w.emu);
        let addr = w.guard_url.trim_start_matches("http://").to_string();
        let mut idle = Vec::new();
        for _ in 0..520 {
            let Ok(mut c) = tokio::net::TcpStream::connect(&addr).await else { break };
            let _ = c.write_all(b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n").await;
            idle.push(c);
        }
        for c in &mut idle {
            let mut buf = [0u8; 256];
            let _ = tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await;
        }
        let http = reqwest::Client::new();
        let health = http.get(format!("{}/healthz", w.guard_url)).send().await.map(|r| r.status().as_u16()).ok();
        let busy = post(&w.guard_url, "/api/generate", gen(None)).await;
        let (nw, sees) = observe(&w, Duration::from_secs(60)).await;
        let after = post(&w.guard_url, "/api/generate", gen(None)).await;
        assert_eq!((health, busy, after), (Some(200), Some(503), Some(200)), "healthz answered, a request refused at once, served once the idle ones are closed");
        drop(idle);
        rows.push(Row {
            fault: "520 idle connections from one local client",
            sees: format!("/healthz {}; a generate 503 at once (too many connections), then 200 once the guard closed the idle ones (10 s); {sees}", health.unwrap_or(0)),
            not_warm: nw,
            loads: pinned_loads(&w.emu) - before,
            lost: data_kept(&w, None),
        });
        w.stop().await;
    }
    // A client's keep_alive straight to Ollama (past the guard): re-pinned, not reloaded.
    {
        let mut w = warm_world(cfg(|_| {})).await;
        let before = pinned_loads(&w.emu);
        let _ = post(&w.emu.url(), "/api/generate", gen(Some(json!("5m")))).await;
        let (nw, sees) = observe(&w, WINDOW).await;
        rows.push(Row { fault: "a client's keep_alive \"5m\" straight to Ollama", sees, not_warm: nw, loads: pinned_loads(&w.emu) - before, lost: data_kept(&w, None) });
        // Through the guard: keep_alive 0 and a num_ctx change do nothing to the pinned model.
        let before = pinned_loads(&w.emu);
        let _ = post(&w.guard_url, "/api/generate", gen(Some(json!(0)))).await;
        let _ = post(&w.guard_url, "/api/chat", json!({"model": PINNED, "messages": [], "options": {"num_ctx": 32768}})).await;
        let (nw, sees) = observe(&w, Duration::from_secs(120)).await;
        rows.push(Row { fault: "a client's keep_alive 0 and num_ctx 32768 through the guard", sees, not_warm: nw, loads: pinned_loads(&w.emu) - before, lost: data_kept(&w, None) });
        w.stop().await;
    }
    // Out of memory on load: memory left unallocatable by an unload (the seed's lesson).
    {
        let mut w = warm_world(cfg(|c| c.fragile_memory = true)).await;
        let before = pinned_loads(&w.emu);
        w.crash(Duration::from_secs(3), "ollama serve exited (signal: 9 (SIGKILL))");
        let (nw, sees) = observe(&w, WINDOW).await;
        let oom = w.emu.emu.counters().oom_failures;
        assert!(w.reboot.load(Ordering::SeqCst), "reboot required is reported");
        assert!(oom <= 3, "an unrecoverable state is reported, not looped on: {oom} failed loads");
        rows.push(Row { fault: "out of memory on load (memory unallocatable after an unload)", sees: format!("{sees} ({oom} failed loads, then no more)"), not_warm: nw, loads: pinned_loads(&w.emu) - before, lost: data_kept(&w, None) });
        w.stop().await;
    }
    // model.conf deleted, garbage, not a regular file: the model stays, the user is told.
    for (fault, make) in [("model.conf deleted", 0u8), ("model.conf garbage (binary, no OLLAMA_MODEL)", 1), ("model.conf replaced by a FIFO (not a regular file)", 2)] {
        let mut w = warm_world(cfg(|_| {})).await;
        let before = pinned_loads(&w.emu);
        let p = w.dir.path().join("model.conf");
        let left: Option<Vec<u8>> = match make {
            0 => {
                std::fs::remove_file(&p).expect("rm");
                None
            }
            1 => {
                let g = b"\x00\x01 not a model conf \xff\n".to_vec();
                std::fs::write(&p, &g).expect("w");
                Some(g)
            }
            _ => {
                std::fs::remove_file(&p).expect("rm");
                nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
                None
            }
        };
        let (nw, sees) = observe(&w, Duration::from_secs(120)).await;
        let warned = w.state.borrow().warnings.iter().map(|x| x.text.clone()).collect::<Vec<_>>().join("; ");
        let sees = if sees.starts_with("nothing") && !warned.is_empty() { format!("stays ready, warns: {}", jetson_llmd::text::clip(&warned, 140)) } else { sees };
        let lost = match (make, &left) {
            (1, Some(g)) => data_kept(&w, Some(g)),
            _ => {
                let state = std::fs::read(w.dir.path().join("run/state.json")).expect("state.json");
                assert!(serde_json::from_slice::<serde_json::Value>(&state).is_ok());
                assert!(make != 0 || !p.exists(), "a deleted model.conf is not written back behind the user");
                "0"
            }
        };
        rows.push(Row { fault, sees, not_warm: nw, loads: pinned_loads(&w.emu) - before, lost });
        w.stop().await;
    }
    // jetson-llmd itself stopped (SIGTERM) or killed (SIGKILL), warm or mid-load, then started
    // again: the model is not loaded twice.
    for (fault, kill, mid_load) in [
        ("SIGTERM of jetson-llmd while warm, started again", false, false),
        ("SIGKILL of jetson-llmd while warm, started again", true, false),
        ("SIGTERM of jetson-llmd during the cold load, started again", false, true),
        ("SIGKILL of jetson-llmd during the cold load, started again", true, true),
    ] {
        let mut w = World::start(cfg(|_| {})).await;
        if mid_load {
            // 30 s into the 60 s cold load.
            tokio::time::sleep(Duration::from_secs(30)).await;
        } else {
            w.until_warm(Duration::from_secs(600)).await.expect("warm");
        }
        let before = pinned_loads(&w.emu);
        if kill {
            w.kill();
        } else {
            w.stop().await;
        }
        let (emu, dir) = (w.emu.clone(), std::mem::replace(&mut w.dir, tempfile::tempdir().expect("tmp")));
        let mut again = World::around(emu, dir).await;
        let (nw, sees) = observe(&again, WINDOW).await;
        let loads = pinned_loads(&again.emu) - before;
        assert!(loads <= 1, "{fault}: {loads} loads");
        if !mid_load {
            assert_eq!(loads, 0, "{fault}: a warm model is not reloaded by a new supervisor");
        }
        rows.push(Row { fault, sees, not_warm: nw, loads, lost: data_kept(&again, None) });
        again.stop().await;
    }

    // ...and during a switch (model.conf edited to gemma3:4b; stopped 10 s into it): the new
    // supervisor finishes the switch without loading anything twice.
    for (fault, kill) in [("SIGTERM of jetson-llmd during a switch, started again", false), ("SIGKILL of jetson-llmd during a switch, started again", true)] {
        const NEXT: &str = "gemma3:4b";
        let mut w = warm_world(cfg(|_| {})).await;
        std::fs::write(w.dir.path().join("model.conf"), format!("OLLAMA_MODEL={NEXT}\n")).expect("edit");
        // The switch has begun once the old model is unloaded (the new one loads next).
        let t = Instant::now();
        while w.emu.emu.runner(PINNED).is_some() && t.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(w.emu.emu.runner(PINNED).is_none(), "{fault}: the switch began");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!warm_with(&w.emu, NEXT), "{fault}: stopped mid-load");
        let before = w.emu.emu.counters().loads_by_model.get(NEXT).copied().unwrap_or(0);
        if kill {
            w.kill();
        } else {
            w.stop().await;
        }
        let (emu, dir) = (w.emu.clone(), std::mem::replace(&mut w.dir, tempfile::tempdir().expect("tmp")));
        let mut again = World::around(emu, dir).await;
        again.model = NEXT.into();
        let (nw, sees) = observe(&again, WINDOW).await;
        let loads = again.emu.emu.counters().loads_by_model.get(NEXT).copied().unwrap_or(0) - before;
        assert!(loads <= 1, "{fault}: {loads} loads of {NEXT}");
        assert!(again.emu.emu.runner(PINNED).is_none(), "{fault}: the old model is not left loaded beside the new one");
        rows.push(Row { fault, sees, not_warm: nw, loads, lost: data_kept(&again, Some(format!("OLLAMA_MODEL={NEXT}\n").as_bytes())) });
        again.stop().await;
    }

    let mut md = String::from(
        "Written by `RELIABILITY_DOCS=1 cargo test --release -p jetson-llmd --test reliability the_fault_matrix` (paused time; the real supervisor loop and guard against the emulator with the Orin Nano profile, a cold load of 60 s; each fault from a fresh board, watched for 10 simulated minutes). \"Not warm\" is what the emulator saw: the pinned model not loaded, or loaded without keep_alive forever.\n\n",
    );
    md.push_str("| fault | what the user sees | longest not warm | loads it cost | data lost |\n|---|---|---|---|---|\n");
    for r in &rows {
        let nw = match r.not_warm {
            Some(0) => "0 (stayed warm)".to_string(),
            Some(s) => hms(s),
            None => "not warm again (by design: reported, not looped on)".into(),
        };
        md.push_str(&format!("| {} | {} | {nw} | {} | {} |\n", r.fault, steady(&r.sees).replace('|', "/"), r.loads, r.lost));
    }
    print!("{md}");
    write_docs("faults", &md);
    // Every fault but the unrecoverable one ends warm, within a cold load and a back-off.
    for r in &rows {
        if r.fault.starts_with("out of memory on load") {
            assert_eq!(r.not_warm, None, "{}", r.fault);
        } else {
            assert!(r.not_warm.is_some(), "{}: never warm again", r.fault);
        }
    }
}
