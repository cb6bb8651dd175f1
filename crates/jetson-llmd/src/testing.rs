//! Test doubles shared by the unit tests (one place, not a copy per test file): an in-memory
//! Ollama, a recording notifier, a drop_caches that counts, and a scriptable backend. All of
//! them run under `tokio::time::pause` (no sockets).

use crate::conf::{ModelName, Settings};
use crate::failure::Failure;
use crate::host::memory::MemoryRelief;
use crate::host::notify::Notifier;
use crate::ollama::warm::{self, WarmReport};
use crate::ollama::OllamaApi;
use crate::records::state::LauncherKind;
use crate::supervisor::backend::{Backend, OllamaEvent};
use ollama_client::{CreateRequest, Error, KeepAlive, ProgressLine, PsResponse, RunningModel, ShowResponse, TagsResponse, VersionResponse};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;
use tokio::time::Instant;

pub fn model(s: &str) -> ModelName {
    ModelName::parse(s).expect("valid model name")
}

/// How the fake answers a call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Up,
    Down,
    /// Loads fail with cudaMalloc out of memory.
    Oom,
}

/// An in-memory Ollama with one loaded model at most (OLLAMA_MAX_LOADED_MODELS=1).
pub struct FakeApi {
    /// One entry is used per /api/ps and /api/version call; the last one sticks.
    pub modes: RefCell<VecDeque<Mode>>,
    pub loaded: RefCell<Option<String>>,
    /// Share of the loaded model on the GPU (100, or 0 for the CPU).
    pub gpu_percent: Cell<u8>,
    /// context_length /api/ps reports for the loaded model.
    pub context: Cell<Option<u64>>,
    /// expires_at /api/ps reports (pinned: year 2318).
    pub expires: RefCell<String>,
    pub load_delay: Cell<Duration>,
    /// How long a pull takes.
    pub pull_delay: Cell<Duration>,
    /// Pulls begun.
    pub pulls: Cell<u32>,
    /// (time since creation, model, keep_alive) of every load request.
    pub loads: RefCell<Vec<(Duration, String, KeepAlive)>>,
    /// Loads that fail with this message (one per load), before any mode applies.
    pub load_errors: RefCell<VecDeque<String>>,
    /// Pulls that fail with this message (one per pull), as the registry answers a name it
    /// does not have.
    pub pull_errors: RefCell<VecDeque<String>>,
    t0: Instant,
}

impl Default for FakeApi {
    fn default() -> Self {
        FakeApi::new(&[Mode::Up])
    }
}

impl FakeApi {
    pub fn new(modes: &[Mode]) -> FakeApi {
        FakeApi {
            modes: RefCell::new(modes.iter().copied().collect()),
            loaded: RefCell::new(None),
            gpu_percent: Cell::new(100),
            context: Cell::new(Some(8192)),
            expires: RefCell::new("2318-01-01T00:00:00Z".into()),
            load_delay: Cell::new(Duration::ZERO),
            pull_delay: Cell::new(Duration::ZERO),
            pulls: Cell::new(0),
            loads: RefCell::new(Vec::new()),
            load_errors: RefCell::new(VecDeque::new()),
            pull_errors: RefCell::new(VecDeque::new()),
            t0: Instant::now(),
        }
    }

    pub fn with_loaded(self, m: &str) -> FakeApi {
        *self.loaded.borrow_mut() = Some(m.to_string());
        self
    }

    fn mode(&self) -> Mode {
        let mut m = self.modes.borrow_mut();
        if m.len() > 1 {
            m.pop_front().unwrap_or(Mode::Up)
        } else {
            m.front().copied().unwrap_or(Mode::Up)
        }
    }

    fn down(path: &str) -> Error {
        Error::Unreachable { url: format!("http://127.0.0.1:11434/{path}"), detail: "connection refused".into() }
    }

    /// Load requests as (model, keep_alive) in order.
    pub fn load_log(&self) -> Vec<(String, KeepAlive)> {
        self.loads.borrow().iter().map(|(_, m, k)| (m.clone(), *k)).collect()
    }
}

impl OllamaApi for FakeApi {
    fn url(&self) -> String {
        "http://127.0.0.1:11434/".into()
    }
    async fn version(&self) -> Result<VersionResponse, Error> {
        match self.mode() {
            Mode::Down => Err(FakeApi::down("api/version")),
            _ => Ok(VersionResponse { version: "0.30.6".into() }),
        }
    }
    async fn tags(&self) -> Result<TagsResponse, Error> {
        Ok(serde_json::from_str(r#"{"models":[{"name":"gemma4:e2b-8k"},{"name":"llama3.2:3b"},{"name":"gemma4:e2b-it-qat"}]}"#).expect("json"))
    }
    async fn ps(&self) -> Result<PsResponse, Error> {
        if self.mode() == Mode::Down {
            return Err(FakeApi::down("api/ps"));
        }
        let Some(name) = self.loaded.borrow().clone() else {
            return Ok(PsResponse::default());
        };
        let vram = u64::from(self.gpu_percent.get());
        let ctx = self.context.get().map_or(String::new(), |c| format!(r#","context_length":{c}"#));
        let exp = self.expires.borrow().clone();
        let json = format!(r#"{{"name":"{name}","size":100,"size_vram":{vram},"expires_at":"{exp}"{ctx}}}"#);
        Ok(PsResponse { models: vec![serde_json::from_str::<RunningModel>(&json).expect("json")] })
    }
    async fn show(&self, model: &str) -> Result<ShowResponse, Error> {
        // A 3.2 GB model, 36 layers, 2 KV heads of 80: 22.5 MiB of KV cache per 1k tokens.
        let size_gb = if model.starts_with("llama3.1") { 7.0 } else { 3.2 };
        let json = format!(
            r#"{{"parameters":"","model_info":{{"general.architecture":"llama","general.parameter_count":{},"llama.block_count":36,"llama.context_length":131072,"llama.attention.head_count_kv":2,"llama.attention.key_length":80,"llama.attention.value_length":80}}}}"#,
            (size_gb * 1e9) as u64 / 2
        );
        let _ = model;
        Ok(serde_json::from_str(&json).expect("json"))
    }
    async fn load(&self, model: &str, k: KeepAlive) -> Result<(), Error> {
        self.loads.borrow_mut().push((self.t0.elapsed(), model.to_string(), k));
        if k == KeepAlive::Unload {
            self.loaded.borrow_mut().take_if(|m| m == model);
            return Ok(());
        }
        tokio::time::sleep(self.load_delay.get()).await;
        if let Some(message) = self.load_errors.borrow_mut().pop_front() {
            return Err(Error::Api { url: "http://127.0.0.1:11434/api/generate".into(), status: 500, message });
        }
        if self.modes.borrow().front() == Some(&Mode::Oom) {
            *self.loaded.borrow_mut() = None;
            return Err(Error::Api { url: "http://127.0.0.1:11434/api/generate".into(), status: 500, message: "llama-server process has terminated: cudaMalloc failed: out of memory".into() });
        }
        *self.loaded.borrow_mut() = Some(model.to_string());
        if k == KeepAlive::Forever {
            *self.expires.borrow_mut() = "2318-01-01T00:00:00Z".into();
        }
        Ok(())
    }
    async fn pull(&self, _m: &str, _p: &mut dyn FnMut(&ProgressLine)) -> Result<(), Error> {
        self.pulls.set(self.pulls.get() + 1);
        tokio::time::sleep(self.pull_delay.get()).await;
        match self.pull_errors.borrow_mut().pop_front() {
            Some(message) => Err(Error::Api { url: "http://127.0.0.1:11434/api/pull".into(), status: 500, message }),
            None => Ok(()),
        }
    }
    async fn create(&self, _r: &CreateRequest, _p: &mut dyn FnMut(&ProgressLine)) -> Result<(), Error> {
        Ok(())
    }
}

/// Counts drop_caches calls.
#[derive(Default, Clone)]
pub struct FakeRelief(pub Rc<Cell<u32>>);

impl MemoryRelief for FakeRelief {
    async fn drop_caches(&self) -> std::io::Result<()> {
        self.0.set(self.0.get() + 1);
        Ok(())
    }
}

/// Records what would go to sd_notify.
#[derive(Default, Clone)]
pub struct FakeNotify {
    pub ready: Rc<Cell<u32>>,
    pub pets: Rc<RefCell<Vec<Duration>>>,
    pub statuses: Rc<RefCell<Vec<String>>>,
    t0: Rc<Cell<Option<Instant>>>,
}

impl Notifier for FakeNotify {
    fn ready(&self) {
        self.ready.set(self.ready.get() + 1);
    }
    fn status(&self, text: &str) {
        self.statuses.borrow_mut().push(text.to_string());
    }
    fn watchdog(&self) {
        let t0 = self.t0.get().unwrap_or_else(|| {
            let n = Instant::now();
            self.t0.set(Some(n));
            n
        });
        self.pets.borrow_mut().push(t0.elapsed());
    }
}

impl FakeNotify {
    pub fn starting_now() -> FakeNotify {
        let n = FakeNotify::default();
        n.t0.set(Some(Instant::now()));
        n
    }
}

pub const GPU_LOG: &str = r#"time=2026-05-01T10:00:02.100+02:00 level=INFO source=types.go:60 msg="inference compute" id=0 filter_id="" library=CUDA compute=8.7 name=CUDA0 description=Orin libdirs=ollama,cuda_jetpack6 driver=12.6 pci_id=0000:00:00.0 type=iGPU total="7.4 GiB" available="5.1 GiB""#;
pub const CPU_LOG: &str =
    r#"time=2026-05-01T10:00:02.100+02:00 level=INFO source=types.go:60 msg="inference compute" id=cpu library=cpu compute="" name=cpu description=cpu libdirs=ollama driver="" pci_id="" type="" total="7.4 GiB" available="5.6 GiB""#;

/// A backend whose Ollama is the [`FakeApi`]; every call is recorded.
pub struct FakeBackend {
    pub kind: LauncherKind,
    pub calls: Rc<RefCell<Vec<String>>>,
    pub events: tokio::sync::mpsc::UnboundedReceiver<OllamaEvent>,
    pub log: Rc<RefCell<Vec<String>>>,
    pub start_errors: RefCell<VecDeque<Failure>>,
    pub relief: FakeRelief,
    /// What the separate keepalive reported (systemd): handed out one per [`Backend::last_tick`].
    pub reports: Rc<RefCell<VecDeque<warm::TickRecord>>>,
    /// Like the process backend: each start makes a new "child" whose end a test announces
    /// with [`FakeBackend::kill`] ([`Backend::gone`]). Off: no `gone`, as under systemd.
    pub track_gone: bool,
    pub gone: Rc<RefCell<Option<tokio::sync::watch::Sender<bool>>>>,
}

impl FakeBackend {
    pub fn new(kind: LauncherKind) -> (FakeBackend, tokio::sync::mpsc::UnboundedSender<OllamaEvent>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let b = FakeBackend {
            kind,
            calls: Rc::default(),
            events: rx,
            log: Rc::new(RefCell::new(vec![GPU_LOG.to_string()])),
            start_errors: RefCell::default(),
            relief: FakeRelief::default(),
            reports: Rc::default(),
            track_gone: false,
            gone: Rc::default(),
        };
        (b, tx)
    }

    fn call(&self, c: String) {
        self.calls.borrow_mut().push(c);
    }

    /// The "child" is gone: its exit in the events, then `gone` (the process backend's order).
    pub fn kill(gone: &RefCell<Option<tokio::sync::watch::Sender<bool>>>, events: &tokio::sync::mpsc::UnboundedSender<OllamaEvent>, how: &str) {
        events.send(OllamaEvent::Down(how.to_string())).expect("send");
        if let Some(g) = gone.borrow().as_ref() {
            g.send_replace(true);
        }
    }
}

impl Backend for FakeBackend {
    fn kind(&self) -> LauncherKind {
        self.kind
    }
    fn describe(&self) -> String {
        "fake ollama".into()
    }
    async fn start_ollama(&mut self) -> Result<(), Failure> {
        self.call("start".into());
        if self.track_gone {
            *self.gone.borrow_mut() = Some(tokio::sync::watch::channel(false).0);
        }
        match self.start_errors.borrow_mut().pop_front() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
    fn gone(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.gone.borrow().as_ref().map(|g| g.subscribe())
    }
    async fn next_event(&mut self) -> OllamaEvent {
        match self.events.recv().await {
            Some(e) => {
                if matches!(e, OllamaEvent::Down(_)) {
                    self.gone.borrow_mut().take();
                }
                e
            }
            None => std::future::pending().await,
        }
    }
    async fn ollama_log(&mut self) -> Result<Vec<String>, Failure> {
        Ok(self.log.borrow().clone())
    }
    async fn warm<A: OllamaApi>(&mut self, api: &A, settings: &Settings, model: &ModelName) -> Result<(), Failure> {
        self.call(format!("warm {model}"));
        warm::preload(api, settings, model, &self.relief).await.map(|_| ())
    }
    async fn tick<A: OllamaApi>(&mut self, api: &A, settings: &Settings, model: &ModelName) -> Option<Result<WarmReport, Failure>> {
        match self.kind {
            LauncherKind::Process => {
                self.call(format!("tick {model}"));
                Some(warm::tick(api, settings, model, &self.relief).await)
            }
            LauncherKind::Systemd => None,
        }
    }
    async fn last_tick(&mut self) -> Option<warm::TickRecord> {
        self.reports.borrow_mut().pop_front()
    }
    async fn keepalive_now(&mut self) -> bool {
        self.call("keepalive_now".into());
        self.kind == LauncherKind::Systemd
    }
    async fn start_keepalive(&mut self) -> Result<(), Failure> {
        self.call("start_keepalive".into());
        Ok(())
    }
    async fn stop_keepalive(&mut self) {
        self.call("stop_keepalive".into());
    }
    async fn shutdown(&mut self) {
        self.call("shutdown".into());
        self.gone.borrow_mut().take();
    }
    async fn request_reboot(&mut self) -> Result<(), Failure> {
        self.call("reboot".into());
        Ok(())
    }
}
