//! The daemon: one control loop for both launchers. It starts Ollama, waits for its API, checks
//! GPU discovery in its log, warms the model, then keeps it warm, follows model.conf and recovers
//! when Ollama goes down. What differs between a child process and systemd units is behind
//! [`backend::Backend`]; what a failure means is [`stage::policy`].
//!
//! ```text
//!            +-------- select! (each arm yields one Event) --------+
//!  shutdown  | reload (SIGHUP) | Ollama event | due timer | model.conf poll | watchdog
//!            +---------------------------+-------------------------+
//!                                        v
//!                 handle(Event) -> boot / warm / tick / switch -> policy(failure)
//! ```

pub mod backend;
pub mod process;
pub mod stage;
pub mod state;
mod switch;
pub mod systemd;
#[cfg(test)]
mod tests;

use crate::conf::{config, modelconf, ModelName, OnRebootRequired, Settings};
use crate::failure::Failure;
use crate::host::notify::{guarded, Notifier};
use crate::host::signals::Signals;
use crate::ollama::discovery::{self, GpuReport};
use crate::ollama::warm::{self, TickRecord};
use crate::report::monitor;
use crate::ollama::OllamaApi;
use backend::{Backend, OllamaEvent};
use switch::Block;
use stage::{policy, Action, Stage};
use state::{LauncherKind, StateFile};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};

/// The files the supervisor follows.
#[derive(Debug, Clone)]
pub struct Paths {
    pub config: PathBuf,
    pub model_conf: PathBuf,
    /// `--root`: /proc/meminfo and the state directory are read under it.
    pub root: PathBuf,
}

pub struct Supervisor<A: OllamaApi, B: Backend, N: Notifier> {
    pub api: A,
    pub backend: B,
    pub notify: N,
    pub settings: Settings,
    pub paths: Paths,
    /// /proc/cmdline, for the `cma=` hint.
    pub cmdline: Option<String>,
    pub state: StateFile,
    /// How often model.conf is looked at without inotify (editors save by rename, so contents
    /// are compared).
    pub conf_poll: Duration,
    /// Watch model.conf's directory with inotify (then a poll only every [`SAFETY_POLL`]).
    pub conf_watch: bool,
    /// WATCHDOG=1 period (half of WatchdogSec=), if any.
    pub watchdog: Option<Duration>,
    /// Where a re-read `[guard]` goes (the running guard follows it); None without a guard.
    pub guard: Option<tokio::sync::watch::Sender<crate::conf::config::GuardSettings>>,
}

enum Event {
    Shutdown,
    Reload,
    Ollama(OllamaEvent),
    Due,
    ConfNotified(std::io::Result<()>),
    ConfPoll,
    Residency,
    Monitor,
    Watchdog,
}

/// Edits closer together than this are one change (an editor's write + rename, a burst of saves):
/// the file is read once they stop, and the last value wins.
pub const DEBOUNCE: Duration = Duration::from_secs(1);
/// With inotify, model.conf is still read this often, in case an event was missed.
pub const SAFETY_POLL: Duration = Duration::from_secs(30);

/// Where the loop stands between events.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Ollama is not (known to be) up: a boot is due or awaited.
    Down,
    /// A warm failed: retried when due (RetryWarm) or when model.conf changes.
    Waiting(Action),
    Warm(ModelName),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Due {
    Boot,
    Warm,
    Tick,
}

/// What the loop does after handling an event.
enum Next {
    Continue,
    Exit(Result<(), Failure>),
}

struct Loop {
    phase: Phase,
    due: Option<(Instant, Due)>,
    boot_failures: u32,
    warm_failures: u32,
    ready_sent: bool,
    /// model.conf as last seen (None: unreadable), to notice edits.
    conf_bytes: Option<Vec<u8>>,
    /// The last model that was warm: kept when model.conf turns invalid.
    last_good: Option<ModelName>,
    /// model.conf as it was when its model was refused (does not fit) or could not be loaded
    /// and the old model came back: until the file changes, the old model is what boots.
    rejected_conf: Option<Vec<u8>>,
    /// Re-warms that keep happening (another client evicting ours) slow the ticks down.
    evictions: warm::EvictionBackoff,
}

/// The monitor's memory between samples.
#[derive(Default)]
struct Board {
    last: Option<crate::host::probe::Probes>,
    episodes: monitor::Episodes,
    /// The first sample after each load of the model: (model, re-warms, Ollama restarts) and it.
    after_load: Option<((String, u64, u64), crate::host::probe::Probes)>,
    /// Set when a reload left memory more fragmented than the load before; lasts until the next load.
    fragmented: Option<String>,
}

impl Loop {
    /// The model to keep regardless of model.conf: the last good one, while model.conf still says
    /// what was refused or failed.
    fn keep(&self) -> Option<ModelName> {
        (self.rejected_conf.is_some() && self.rejected_conf == self.conf_bytes).then(|| self.last_good.clone()).flatten()
    }
}

const FAR: Duration = Duration::from_secs(86400 * 365);
/// Restarts of a crashed child back off to at most this (systemd paces its own restarts).
const RESTART_CAP: Duration = Duration::from_secs(30);

impl<A: OllamaApi, B: Backend, N: Notifier> Supervisor<A, B, N> {
    /// Runs until shutdown (Ok) or a terminal failure (its exit code is the process's).
    pub async fn run(mut self, signals: Signals) -> Result<(), Failure> {
        self.state.state.launcher = self.backend.kind();
        let now = Instant::now();
        let mut lp = Loop {
            phase: Phase::Down,
            due: Some((now, Due::Boot)),
            boot_failures: 0,
            warm_failures: 0,
            ready_sent: false,
            conf_bytes: modelconf::read_bytes(&self.paths.model_conf).await.ok(),
            last_good: None,
            rejected_conf: None,
            evictions: warm::EvictionBackoff::default(),
        };
        let mut watch = if self.conf_watch {
            match crate::host::watch::FileWatch::new(&self.paths.model_conf) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("cannot watch {} ({e}); reading it every {} instead", self.paths.model_conf.display(), humantime::format_duration(self.conf_poll));
                    None
                }
            }
        } else {
            None
        };
        let mut poll_every = if watch.is_some() { SAFETY_POLL } else { self.conf_poll };
        let mut next_conf = now + poll_every;
        let mut next_pet = now + self.watchdog.unwrap_or(FAR);
        let mut next_residency = now + self.settings.residency_check;
        let mut next_monitor = now + self.settings.monitor_interval;
        let mut board = Board::default();
        loop {
            let due_at = lp.due.map_or(now + FAR, |d| d.0);
            let event = tokio::select! {
                biased;
                _ = signals.shutdown.cancelled() => Event::Shutdown,
                _ = signals.reloaded() => Event::Reload,
                e = self.backend.next_event() => Event::Ollama(e),
                r = async { match watch.as_mut() { Some(w) => w.changed().await, None => std::future::pending().await } } => Event::ConfNotified(r),
                _ = sleep_until(due_at), if lp.due.is_some() => Event::Due,
                _ = sleep_until(next_pet), if self.watchdog.is_some() => Event::Watchdog,
                _ = sleep_until(next_residency) => Event::Residency,
                _ = sleep_until(next_monitor) => Event::Monitor,
                _ = sleep_until(next_conf) => Event::ConfPoll,
            };
            let next = match event {
                Event::Shutdown => Next::Exit(self.shutdown().await),
                Event::Reload => self.reload(&mut lp, &signals).await,
                Event::Ollama(e) => self.ollama_event(&mut lp, e).await,
                Event::Due => self.due(&mut lp, &signals).await,
                Event::ConfNotified(Ok(())) => {
                    next_conf = Instant::now() + DEBOUNCE;
                    Next::Continue
                }
                Event::ConfNotified(Err(e)) => {
                    tracing::warn!("{e}; reading {} every {} instead", self.paths.model_conf.display(), humantime::format_duration(self.conf_poll));
                    watch = None;
                    poll_every = self.conf_poll;
                    next_conf = next_conf.min(Instant::now() + poll_every);
                    Next::Continue
                }
                Event::ConfPoll => {
                    next_conf = Instant::now() + poll_every;
                    self.conf_poll(&mut lp, &signals, false).await
                }
                Event::Watchdog => {
                    self.notify.watchdog();
                    next_pet = Instant::now() + self.watchdog.unwrap_or(FAR);
                    Next::Continue
                }
                Event::Residency => {
                    next_residency = Instant::now() + self.settings.residency_check;
                    self.residency(&mut lp).await
                }
                Event::Monitor => {
                    next_monitor = Instant::now() + self.settings.monitor_interval;
                    self.monitor(&mut board).await
                }
            };
            if let Next::Exit(r) = next {
                return r;
            }
        }
    }

    async fn set_stage(&mut self, stage: Stage, status: &str) {
        let status = crate::text::one_line(status);
        match stage {
            Stage::CpuFallback | Stage::RebootRequired | Stage::ConfigInvalid => tracing::error!(stage = stage.as_str(), "{status}"),
            s if s.is_failure() => tracing::warn!(stage = stage.as_str(), "{status}"),
            _ => tracing::info!(stage = stage.as_str(), "{status}"),
        }
        self.notify.status(&status);
        self.state.state.stage = stage;
        self.state.state.status = status;
        self.state.save().await;
    }

    async fn shutdown(&mut self) -> Result<(), Failure> {
        let what = match self.backend.kind() {
            LauncherKind::Process => "stopping Ollama (a child process stops with us)",
            LauncherKind::Systemd => "stopping; ollama.service and the loaded model stay up",
        };
        self.set_stage(Stage::Stopping, what).await;
        self.backend.shutdown().await;
        Ok(())
    }

    /// What a long step needs to feed the watchdog without borrowing the supervisor.
    fn pet(&self) -> (N, Option<Duration>) {
        (self.notify.clone(), self.watchdog)
    }

    async fn ollama_event(&mut self, lp: &mut Loop, e: OllamaEvent) -> Next {
        match e {
            OllamaEvent::Down(how) => {
                if lp.phase != Phase::Down {
                    self.state.state.ollama_restarts += 1;
                }
                lp.phase = Phase::Down;
                lp.boot_failures += 1;
                // An Ollama that was running and went away is started again at once (the model
                // is cold, every second counts); one that goes away again before the model is
                // warm backs off 5 s, 10 s... so a crash loop cannot spin.
                // (Under systemd, ollama.service's own Restart= brings it back and Up re-checks.)
                let wait = match self.backend.kind() {
                    LauncherKind::Process if lp.boot_failures <= 1 => Duration::ZERO,
                    LauncherKind::Process => warm::backoff(lp.boot_failures - 1, self.settings.retry_max_backoff.min(RESTART_CAP)),
                    LauncherKind::Systemd => warm::backoff(lp.boot_failures, self.settings.retry_max_backoff.min(RESTART_CAP)),
                };
                lp.due = Some((Instant::now() + wait, Due::Boot));
                let then = match self.backend.kind() {
                    LauncherKind::Process if wait.is_zero() => "starting it again now".to_string(),
                    LauncherKind::Process => format!("starting it again in {}", humantime::format_duration(wait)),
                    LauncherKind::Systemd => format!("re-checking as soon as it is back, or starting it in {}", humantime::format_duration(wait)),
                };
                self.set_stage(Stage::OllamaDown, &format!("NOT READY: {how}; {then}, then re-warming")).await;
            }
            OllamaEvent::Up if lp.phase == Phase::Down => {
                tracing::info!("Ollama is up again; re-checking the GPU and re-warming now");
                lp.due = Some((Instant::now(), Due::Boot));
            }
            OllamaEvent::Up => {}
            OllamaEvent::Failed(f) => return self.failed(lp, f).await,
        }
        Next::Continue
    }

    async fn due(&mut self, lp: &mut Loop, signals: &Signals) -> Next {
        let Some((_, what)) = lp.due.take() else { return Next::Continue };
        match what {
            Due::Boot => {
                let what = format!("bringing up {}", self.backend.describe());
                let (n, wd) = self.pet();
                match step(&n, wd, signals, &what, self.boot(signals, lp.last_good.clone(), lp.keep())).await {
                    None => Next::Exit(self.shutdown().await),
                    Some(Ok(model)) => self.warmed(lp, model).await,
                    Some(Err(f)) => self.failed(lp, f).await,
                }
            }
            Due::Warm => self.warm_now(lp, signals).await,
            Due::Tick => self.tick(lp, signals).await,
        }
    }

    /// One boot sequence: Ollama started -> API ready -> GPU found -> model warm -> keepalive.
    async fn boot(&mut self, signals: &Signals, last_good: Option<ModelName>, keep: Option<ModelName>) -> Result<ModelName, Failure> {
        self.state.restart_timeline();
        let what = self.backend.describe();
        self.set_stage(Stage::StartingOllama, &format!("starting {what}")).await;
        self.backend.start_ollama().await?;
        self.state.event(match self.backend.kind() {
            LauncherKind::Process => "ollama started",
            LauncherKind::Systemd => "ollama active",
        })
        .await;
        let timeout = self.settings.startup_timeout;
        self.set_stage(Stage::WaitingForApi, &format!("waiting for Ollama's API at {} (up to {})", self.api.url(), humantime::format_duration(timeout))).await;
        let version = {
            let wait = warm::wait_for_api(&self.api, timeout, &signals.shutdown);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    v = &mut wait => break v,
                    e = self.backend.next_event() => match e {
                        OllamaEvent::Down(how) => return Err(Failure::OllamaDown(format!("{how} before its API answered"))),
                        OllamaEvent::Failed(f) => return Err(f),
                        OllamaEvent::Up => {}
                    },
                }
            }
        };
        let version = match version {
            Ok(v) => v,
            Err(Failure::Unreachable(e)) => return Err(Failure::OllamaStart(format!("its API at {} did not answer within {}: {e}", self.api.url(), humantime::format_duration(timeout)))),
            Err(f) => return Err(f),
        };
        self.state.state.ollama_version = Some(version.clone());
        self.state.event("API ready").await;
        let within = self.settings.gpu_discovery_timeout;
        self.set_stage(Stage::CheckingGpu, &format!("Ollama {version} is up; looking for GPU discovery in its log (up to {})", humantime::format_duration(within))).await;
        let report = self.gpu_check().await?;
        self.state.state.gpu = Some(report.clone());
        self.state.state.warnings.retain(|w| !w.starts_with("gpu: "));
        if let Some(w) = &report.warning {
            tracing::warn!("{w}");
            self.state.state.warnings.push(format!("gpu: {w}"));
        }
        if !report.as_expected {
            let why = if report.discovered {
                report.cpu_fallback_reason.clone().unwrap_or_else(|| "no CUDA GPU was discovered".into())
            } else {
                format!("no GPU discovery line in Ollama's log within {}", humantime::format_duration(within))
            };
            return Err(Failure::GpuMissing { reason: why });
        }
        self.state.event(if report.gpu || !self.settings.expected_compute.is_cpu() { "GPU found" } else { "CPU as expected" }).await;
        // First load wins: nothing else may take the memory before ours.
        let ours = self.configured_model(last_good.clone(), keep.clone()).await?;
        let unloaded = warm::unload_others(&self.api, &self.settings, &ours).await?;
        self.state.state.warnings.retain(|w| !w.starts_with("at boot,"));
        if !unloaded.is_empty() {
            let names: Vec<String> = unloaded.iter().map(|n| crate::text::clip(n, 100)).collect();
            self.state.state.warnings.push(format!("at boot, {} was loaded before {ours}; unloaded it so {ours} loads first (check what loads it: another client or unit)", names.join(", ")));
        }
        self.warm_model(last_good, keep).await
    }

    /// Polls Ollama's log for the discovery line until it appears or the deadline passes.
    async fn gpu_check(&mut self) -> Result<GpuReport, Failure> {
        let deadline = Instant::now() + self.settings.gpu_discovery_timeout;
        loop {
            let lines = self.backend.ollama_log().await;
            let r = match &lines {
                Ok(l) => discovery::analyze(l, &self.settings.expected_compute, self.cmdline.as_deref()),
                Err(_) => GpuReport::default(),
            };
            if r.discovered {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                return match lines {
                    Err(f) => Err(f),
                    Ok(l) if l.is_empty() => Err(Failure::LogUnreadable(format!("not a single line of Ollama's log since it started ({})", self.backend.describe()))),
                    Ok(_) => Ok(r),
                };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The model model.conf names; the last good one when the file is invalid (with a warning).
    async fn configured_model(&mut self, last_good: Option<ModelName>, keep: Option<ModelName>) -> Result<ModelName, Failure> {
        if let Some(m) = keep {
            tracing::info!("model.conf still names the model that was refused or could not be loaded; keeping {m} until the file changes");
            return Ok(m);
        }
        match modelconf::read(&self.paths.model_conf).await {
            Ok(c) => {
                for w in &c.warnings {
                    tracing::warn!("{}: {w}", self.paths.model_conf.display());
                }
                self.conf_warning(None);
                Ok(c.model)
            }
            Err(e) => match last_good {
                Some(m) => {
                    tracing::error!("{e}; keeping {m}");
                    self.conf_warning(Some(format!("model.conf is invalid (keeping {m}): {e}")));
                    Ok(m)
                }
                None => Err(Failure::Config(format!("{e}; fix the file and start again"))),
            },
        }
    }

    fn conf_warning(&mut self, w: Option<String>) {
        self.state.state.warnings.retain(|x| !x.starts_with("model.conf"));
        self.state.state.warnings.extend(w);
    }

    /// Loads `model` (or model.conf's) pinned and checks where it landed; starts the keepalive.
    async fn warm_model(&mut self, last_good: Option<ModelName>, keep: Option<ModelName>) -> Result<ModelName, Failure> {
        let model = self.configured_model(last_good, keep).await?;
        self.warm_this(model).await
    }

    /// Loads exactly `model` (no second look at model.conf: a switch loads what it admitted).
    async fn warm_this(&mut self, model: ModelName) -> Result<ModelName, Failure> {
        self.state.state.model = Some(model.to_string());
        self.set_stage(Stage::Preloading, &format!("loading {model} onto the GPU (a cold load takes 30-70 s on an Orin Nano; up to {})", humantime::format_duration(self.settings.load_timeout))).await;
        let cold = matches!(warm::residency(&self.api, &self.settings, &model).await, Ok(warm::Residency::Missing(_)));
        let mem_before = if cold { crate::host::memory::mem_available(&self.paths.root).await } else { None };
        let t0 = Instant::now();
        if let Err(f) = self.backend.warm(&self.api, &self.settings, &model).await {
            return Err(self.too_big_or(f, &model).await);
        }
        let mut report = warm::verify(&self.api, &self.settings, &model).await?;
        // The fit table's load time: the wall time of a cold warm (pull or create included when
        // they happened, which is what a switch costs).
        report.load_ms = cold.then(|| t0.elapsed().as_millis() as u64);
        self.record_fit(&model, &report, mem_before).await;
        self.state.state.warm = Some(report);
        self.state.event("model warm").await;
        self.set_stage(Stage::StartingKeepalive, &format!("{model} is warm; starting the keepalive")).await;
        match self.backend.start_keepalive().await {
            Ok(()) => self.state.state.warnings.retain(|w| !w.starts_with("keepalive")),
            Err(e) => {
                // The model is warm and pinned (keep_alive -1), just unwatched: say so, carry on.
                tracing::error!("{e}");
                self.state.state.warnings.push(format!("keepalive did not start: {e}"));
            }
        }
        self.state.event("keepalive running").await;
        Ok(model)
    }

    fn state_dir(&self) -> PathBuf {
        crate::host::rooted(&self.paths.root, &self.settings.state_dir)
    }

    fn ready_text(&self, model: &ModelName) -> String {
        let pct = self.state.state.warm.as_ref().map_or(100, |w| w.gpu_percent);
        let place = if self.settings.expected_compute.is_cpu() && pct == 0 { "on the CPU, as expected_compute asks".to_string() } else { format!("on the GPU ({pct}%)") };
        format!("ready: {model} warm {place}, pinned; keepalive every {}", humantime::format_duration(self.settings.keepalive_interval))
    }

    async fn warmed(&mut self, lp: &mut Loop, model: ModelName) -> Next {
        lp.boot_failures = 0;
        lp.warm_failures = 0;
        lp.last_good = Some(model.clone());
        let text = self.ready_text(&model);
        lp.phase = Phase::Warm(model);
        lp.due = Some((Instant::now() + self.settings.keepalive_interval, Due::Tick));
        self.set_stage(Stage::Ready, &text).await;
        if !lp.ready_sent {
            self.notify.ready();
            lp.ready_sent = true;
        }
        Next::Continue
    }

    /// The policy's decision, carried out.
    async fn failed(&mut self, lp: &mut Loop, f: Failure) -> Next {
        let (stage, action) = policy(&f);
        match action {
            Action::Exit(_) if matches!(f, Failure::Cancelled) => Next::Exit(self.shutdown().await),
            Action::Exit(_) => {
                self.set_stage(stage, &format!("NOT READY: {f}")).await;
                self.backend.stop_keepalive().await;
                if matches!(f, Failure::RebootRequired { .. }) && self.settings.on_reboot_required == OnRebootRequired::Reboot {
                    tracing::error!("on_reboot_required = \"reboot\": asking systemd to reboot the machine");
                    if let Err(e) = self.backend.request_reboot().await {
                        tracing::error!("the reboot request failed: {e}; reboot by hand (sudo reboot)");
                    }
                }
                self.backend.shutdown().await;
                Next::Exit(Err(f))
            }
            Action::RestartOllama => {
                lp.phase = Phase::Down;
                lp.boot_failures += 1;
                // A child that never answered is stopped before the next start; a unit stays.
                self.backend.shutdown().await;
                let wait = warm::backoff(lp.boot_failures, self.settings.retry_max_backoff);
                lp.due = Some((Instant::now() + wait, Due::Boot));
                self.set_stage(stage, &format!("NOT READY: {f}; trying again in {}", humantime::format_duration(wait))).await;
                Next::Continue
            }
            Action::RetryWarm => {
                lp.phase = Phase::Waiting(action);
                lp.warm_failures += 1;
                let wait = warm::backoff(lp.warm_failures, self.settings.retry_max_backoff.min(self.settings.keepalive_interval));
                lp.due = Some((Instant::now() + wait, Due::Warm));
                self.set_stage(stage, &format!("NOT READY: {f}; retrying in {} or when model.conf changes", humantime::format_duration(wait))).await;
                Next::Continue
            }
            Action::WaitForConfig => {
                lp.phase = Phase::Waiting(action);
                lp.due = None;
                self.set_stage(stage, &format!("NOT READY: {f}; waiting for model.conf to change")).await;
                Next::Continue
            }
        }
    }

    async fn warm_now(&mut self, lp: &mut Loop, signals: &Signals) -> Next {
        let last_good = lp.last_good.clone();
        let (n, wd) = self.pet();
        match step(&n, wd, signals, "loading the model", self.warm_model(last_good, lp.keep())).await {
            None => Next::Exit(self.shutdown().await),
            Some(Ok(m)) => self.warmed(lp, m).await,
            Some(Err(f)) => self.failed(lp, f).await,
        }
    }

    async fn tick(&mut self, lp: &mut Loop, signals: &Signals) -> Next {
        let Phase::Warm(model) = lp.phase.clone() else { return Next::Continue };
        let (n, wd) = self.pet();
        let Some(result) = step(&n, wd, signals, "keeping the model warm", self.backend.tick(&self.api, &self.settings, &model)).await else {
            return Next::Exit(self.shutdown().await);
        };
        // None: a separate keepalive does this; the loop stops scheduling ticks.
        let Some(result) = result else { return Next::Continue };
        if let Ok(r) = &result {
            if r.rewarmed {
                self.state.state.rewarm_count += 1;
            }
            lp.evictions.record(r.rewarmed);
        }
        let interval = self.settings.keepalive_interval;
        let mut rec = TickRecord::new(&model, &result, self.state.state.rewarm_count, u32::from(result.is_err()));
        rec.note = lp.evictions.describe(interval);
        self.state.state.warnings.retain(|w| !w.starts_with("the model was re-warmed"));
        if let Some(n) = &rec.note {
            tracing::warn!("{n}");
            self.state.state.warnings.push(n.clone());
        }
        self.state.state.last_ping = Some(rec);
        match result {
            Ok(r) => {
                self.state.state.warm = Some(r);
                lp.due = Some((Instant::now() + lp.evictions.wait(interval), Due::Tick));
                let text = self.ready_text(&model);
                self.set_stage(Stage::Ready, &text).await;
                Next::Continue
            }
            Err(f) => self.failed(lp, f).await,
        }
    }

    /// Between pings: is the model still there and pinned? Another client's eviction or
    /// keep_alive is repaired now, not at the next 4-minute ping, unless evictions keep
    /// repeating (then the keepalive's back-off decides: no reload fight).
    async fn residency(&mut self, lp: &mut Loop) -> Next {
        let Phase::Warm(model) = lp.phase.clone() else { return Next::Continue };
        let found = match warm::residency(&self.api, &self.settings, &model).await {
            Ok(r) => r,
            Err(e) => {
                // Readiness tells the truth: an Ollama that does not answer (hung, stopped,
                // overloaded) is not ready, whatever the last check said; /healthz, the metrics
                // and the guard follow the stage. The loop's phase stays warm: when Ollama
                // answers again nothing needs reloading.
                if self.state.state.stage == Stage::Ready {
                    self.set_stage(Stage::OllamaUnreachable, &format!("NOT READY: Ollama at {} did not answer the residency check: {e}", self.api.url())).await;
                }
                return Next::Continue;
            }
        };
        if matches!(self.state.state.stage, Stage::OllamaUnreachable | Stage::NotResident) && !matches!(found, warm::Residency::Missing(_)) {
            tracing::info!("{model} is loaded and Ollama answers again");
            let text = self.ready_text(&model);
            self.set_stage(Stage::Ready, &text).await;
        }
        match found {
            warm::Residency::Pinned => return Next::Continue,
            warm::Residency::Unpinned { expires_at } => {
                self.state.state.repin_count += 1;
                self.state.save().await;
                tracing::warn!("{model} expires at {expires_at}: another client changed its keep_alive; pinning it again now");
            }
            warm::Residency::Missing(why) => {
                if lp.evictions.count() >= 2 {
                    // The next ping (backed off) will re-warm; a third quick reload would be a
                    // fight. Said at once, and not ready meanwhile: the model is not loaded.
                    if self.state.state.stage == Stage::Ready {
                        let wait = lp.evictions.wait(self.settings.keepalive_interval);
                        let text = format!(
                            "NOT READY: {model} is gone again ({why}); after {} re-warms within the hour the next waits for the backed-off keepalive (up to {}), so that jetson-llmd and a client do not take turns reloading it",
                            lp.evictions.count(),
                            humantime::format_duration(wait)
                        );
                        self.set_stage(Stage::NotResident, &text).await;
                    }
                    return Next::Continue;
                }
                tracing::warn!("{model} is gone ({why}); re-warming now");
            }
        }
        if !self.backend.keepalive_now().await {
            lp.due = Some((Instant::now(), Due::Tick));
        }
        Next::Continue
    }

    /// One sample of the board; warnings start and clear once per episode.
    async fn monitor(&mut self, board: &mut Board) -> Next {
        let now = crate::host::probe::gather(&self.paths.root).await;
        let limits = monitor::Limits { reserve_bytes: self.settings.memory_reserve_mib << 20, temperature_c: f64::from(self.settings.temperature_warn_c) };
        if self.state.state.stage == Stage::Ready {
            if let Some(model) = self.state.state.model.clone() {
                let key = (model, self.state.state.rewarm_count, self.state.state.ollama_restarts);
                let same_load = board.after_load.as_ref().is_some_and(|(k, _)| *k == key);
                if !same_load {
                    board.fragmented = match &board.after_load {
                        Some((k, before)) if k.0 == key.0 => monitor::fragmentation(before, &now),
                        _ => None,
                    };
                    board.after_load = Some((key, now.clone()));
                }
            }
        }
        let mut conditions = monitor::conditions(board.last.as_ref(), &now, &limits);
        if let Some(f) = &board.fragmented {
            conditions.insert("fragmentation", f.clone());
        }
        let (started, cleared) = board.episodes.update(conditions);
        board.last = Some(now);
        if started.is_empty() && cleared.is_empty() {
            return Next::Continue;
        }
        for w in &started {
            tracing::warn!("board: {w}");
        }
        for c in &cleared {
            tracing::info!("board: {c} is back to normal");
        }
        self.state.state.warnings.retain(|w| !w.starts_with("board: "));
        self.state.state.warnings.extend(board.episodes.current().map(|w| format!("board: {w}")));
        self.state.save().await;
        Next::Continue
    }

    /// SIGHUP / `systemctl reload`: config.toml and model.conf are read again.
    async fn reload(&mut self, lp: &mut Loop, signals: &Signals) -> Next {
        match config::load(&self.paths.config).await {
            Ok(s) => {
                self.state.state.warnings.retain(|w| !w.starts_with("config.toml"));
                if let Some(tx) = &self.guard {
                    let (old, new) = (&self.settings.guard, &s.guard);
                    let fixed: Vec<&str> = [("enabled", old.enabled != new.enabled), ("listen", old.listen != new.listen), ("body_budget_mib", old.body_budget_mib != new.body_budget_mib)]
                        .into_iter()
                        .filter_map(|(k, changed)| changed.then_some(k))
                        .collect();
                    if !fixed.is_empty() {
                        let w = format!("config.toml: [guard] {} changed; that takes a restart (systemctl restart jetson-llmd); the rest of [guard] applies now", fixed.join(", "));
                        tracing::warn!("{w}");
                        self.state.state.warnings.push(w);
                    }
                    tx.send_replace(new.clone());
                }
                self.settings = s;
                tracing::info!("{} re-read", self.paths.config.display());
            }
            Err(e) => {
                tracing::error!("{e}; keeping the settings in use");
                self.state.state.warnings.retain(|w| !w.starts_with("config.toml"));
                self.state.state.warnings.push(format!("config.toml is invalid (the settings in use stay): {e}"));
            }
        }
        self.conf_poll(lp, signals, true).await
    }

    /// model.conf changed (or `force`): an invalid file keeps the running model; a new valid
    /// model is loaded while the old one stays warm, and only then replaces it.
    async fn conf_poll(&mut self, lp: &mut Loop, signals: &Signals, force: bool) -> Next {
        let bytes = modelconf::read_bytes(&self.paths.model_conf).await.ok();
        if bytes == lp.conf_bytes && !force {
            return Next::Continue;
        }
        lp.conf_bytes = bytes;
        let conf = match modelconf::read(&self.paths.model_conf).await {
            Ok(c) => c,
            Err(e) => {
                let keep = match &lp.phase {
                    Phase::Warm(m) => format!("keeping {m} loaded"),
                    _ => "nothing is loaded".into(),
                };
                tracing::error!("{e}");
                self.conf_warning(Some(format!("model.conf is invalid ({keep}): {e}")));
                self.notify.status(&format!("model.conf is invalid, {keep}: {}", e.lines().next().unwrap_or("")));
                self.state.save().await;
                return Next::Continue;
            }
        };
        self.conf_warning(None);
        self.state.save().await;
        match lp.phase.clone() {
            Phase::Warm(current) if current == conf.model => {
                let text = self.ready_text(&current);
                self.set_stage(Stage::Ready, &text).await;
                Next::Continue
            }
            Phase::Warm(current) => {
                let (n, wd) = self.pet();
                let prepared = step(&n, wd, signals, "getting the new model ready", self.prepare_switch(&current, &conf.model)).await;
                let Some(prepared) = prepared else { return Next::Exit(self.shutdown().await) };
                match prepared {
                    Ok(()) => {}
                    Err(Block::Refused(why)) => {
                        lp.rejected_conf = lp.conf_bytes.clone();
                        tracing::error!("{why}");
                        self.notify.status(&why);
                        self.conf_warning(Some(why));
                        self.state.save().await;
                        return Next::Continue;
                    }
                    // Ollama did not answer: nothing was touched and nothing is decided about
                    // the name; the edit is looked at again at the next poll (the residency
                    // check says what Ollama is doing meanwhile).
                    Err(Block::Failed(f @ (Failure::Unreachable(_) | Failure::OllamaDown(_)))) => {
                        tracing::warn!("getting {} ready: {f}; trying again at the next look at model.conf", conf.model);
                        lp.conf_bytes = None;
                        return Next::Continue;
                    }
                    // The name cannot be made present (the registry does not have it, the pull
                    // or create failed): the old model was never touched, so it stays the model
                    // (state, guard and keepalive follow it) and the edit is refused like a model
                    // that does not fit, until model.conf changes or SIGHUP tries it again.
                    // Retrying on a timer would only pull a name that does not exist, forever.
                    Err(Block::Failed(f)) => {
                        lp.rejected_conf = lp.conf_bytes.clone();
                        let why = format!(
                            "model.conf names {}, which could not be made ready ({f}); {current} stays loaded; correct the name in model.conf, or `systemctl reload jetson-llmd` to try it again",
                            conf.model
                        );
                        tracing::error!("{why}");
                        self.notify.status(&why);
                        self.conf_warning(Some(why));
                        self.state.save().await;
                        return Next::Continue;
                    }
                }
                let (n, wd) = self.pet();
                match step(&n, wd, signals, "switching models", self.switch(&current, &conf.model)).await {
                    None => Next::Exit(self.shutdown().await),
                    Some(Ok(m)) => {
                        lp.rejected_conf = (m != conf.model).then(|| lp.conf_bytes.clone()).flatten();
                        self.warmed(lp, m).await
                    }
                    Some(Err(f)) => self.failed(lp, f).await,
                }
            }
            Phase::Waiting(_) => {
                lp.warm_failures = 0;
                lp.due = Some((Instant::now(), Due::Warm));
                Next::Continue
            }
            Phase::Down => Next::Continue,
        }
    }
}

/// Runs a long step: cancelled by shutdown (None), feeding the watchdog, saying what it waits for.
async fn step<T, N: Notifier>(n: &N, watchdog: Option<Duration>, signals: &Signals, what: &str, fut: impl std::future::Future<Output = T>) -> Option<T> {
    guarded(fut, n, watchdog, &signals.shutdown, Some((warm::STILL_WAITING, what))).await
}
