//! The daemon: one control loop for both launchers. It starts Ollama, waits for its API, checks
//! GPU discovery in its log, warms the model, then keeps it warm, follows model.conf and recovers
//! when Ollama goes down. Every decision is the pure state machine's ([`machine::Machine`]);
//! this file is its driver: it turns what happens into events, performs the effects, and runs the
//! long steps (boot, warm, tick, prepare, switch) whose results are events again. What differs
//! between a child process and systemd units is behind [`backend::Backend`]; what a failure
//! means is [`stage::policy`].
//!
//! ```text
//!            +-------- select! (each arm yields at most one machine Event) --------+
//!  shutdown  | reload (SIGHUP) | Ollama event | due timer | model.conf | residency | watchdog
//!            +-----------------------------------+-----------------------------------+
//!                                                v
//!          Machine::on(Event) -> [Effect] -> driver: stage / schedule / Run(step) -> Event ...
//! ```

pub mod backend;
pub mod machine;
pub mod process;
pub mod runner;
pub mod stage;
mod switch;
pub mod systemd;
#[cfg(test)]
mod tests;

use crate::conf::{config, modelconf, ModelName, Settings};
use crate::failure::Failure;
use crate::host::notify::{guarded, Notifier};
use crate::host::signals::Signals;
use crate::ollama::discovery::{self, GpuReport};
use crate::ollama::warm::{self, TickRecord};
use crate::ollama::OllamaApi;
use crate::records::state::{LauncherKind, StateFile};
use crate::records::{Warning, WarningKind, Warnings};
use crate::report::monitor;
use backend::{Backend, OllamaEvent};
use machine::{Due, Effect, Event, Machine, Rules, Step};
use stage::Stage;
use std::collections::VecDeque;
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

/// What woke the loop (each becomes at most one machine event).
enum Input {
    Shutdown,
    Reload,
    Ollama(OllamaEvent),
    Due,
    ConfNotified(std::io::Result<()>),
    ConfPoll,
    Residency,
    Monitor,
    Watchdog,
    Runner(runner::RunnerEvent),
    RunnerCheck,
}

/// After the pinned model's runner exits, how long before deciding whether Ollama is reloading
/// it (a new runner for the same file by then) or it died: Ollama kills the old runner and
/// starts the new one in the same scheduling pass (server/sched.go processPending), within
/// milliseconds on a CPU and after its VRAM-recovery wait on a GPU.
pub const RUNNER_GRACE: Duration = Duration::from_secs(2);

/// Edits closer together than this are one change (an editor's write + rename, a burst of saves):
/// the file is read once they stop, and the last value wins.
pub const DEBOUNCE: Duration = Duration::from_secs(1);
/// With inotify, model.conf is still read this often, in case an event was missed.
pub const SAFETY_POLL: Duration = Duration::from_secs(30);

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

const FAR: Duration = Duration::from_secs(86400 * 365);

impl<A: OllamaApi, B: Backend, N: Notifier> Supervisor<A, B, N> {
    /// Runs until shutdown (Ok) or a terminal failure (its exit code is the process's).
    pub async fn run(mut self, signals: Signals) -> Result<(), Failure> {
        self.state.state.launcher = self.backend.kind();
        let now = Instant::now();
        let (mut m, first) = Machine::new(self.rules(), modelconf::read_bytes(&self.paths.model_conf).await.ok());
        let mut due: Option<(Instant, Due)> = None;
        let mut tick: Option<TickRecord> = None;
        if let Some(r) = self.perform(&mut m, first, &mut due, &mut tick, &signals).await {
            return r;
        }
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
        let mut bench_said = false;
        // Ollama's runner processes, watched through pidfds (supervisor/runner.rs), and the
        // blob the pinned model's runner serves (the model whose name it was looked up for).
        let mut runners = runner::RunnerWatch::start();
        let mut pinned_blob: Option<(ModelName, Option<String>)> = None;
        // A pinned runner's exit waiting for its verdict (when, and the file it served), and
        // when the last one was lost: a keepalive record older than that confirms nothing.
        let mut runner_check: Option<(Instant, Option<String>)> = None;
        let mut runner_lost_at: Option<crate::records::Timestamp> = None;
        if let Some(pid) = self.backend.ollama_pid().await {
            runners.set_serve(Some(pid));
        }
        loop {
            let due_at = due.map_or(now + FAR, |d| d.0);
            let input = tokio::select! {
                biased;
                _ = signals.shutdown.cancelled() => Input::Shutdown,
                _ = signals.reloaded() => Input::Reload,
                e = self.backend.next_event() => Input::Ollama(e),
                r = runners.next() => Input::Runner(r),
                r = async { match watch.as_mut() { Some(w) => w.changed().await, None => std::future::pending().await } } => Input::ConfNotified(r),
                _ = sleep_until(due_at), if due.is_some() => Input::Due,
                _ = sleep_until(next_pet), if self.watchdog.is_some() => Input::Watchdog,
                _ = sleep_until(next_residency) => Input::Residency,
                _ = sleep_until(next_monitor) => Input::Monitor,
                _ = sleep_until(next_conf) => Input::ConfPoll,
                _ = sleep_until(runner_check.as_ref().map_or(now + FAR, |c| c.0)), if runner_check.is_some() => Input::RunnerCheck,
            };
            let event = match input {
                Input::Shutdown => Some(Event::Shutdown),
                Input::Reload => {
                    self.reload_config().await;
                    m.rules = self.rules();
                    Some(self.read_conf(true).await)
                }
                Input::Ollama(e) => Some(ollama_event(e)),
                Input::Due => due.take().map(|(_, d)| Event::Due(d)),
                Input::ConfNotified(Ok(())) => {
                    next_conf = Instant::now() + DEBOUNCE;
                    None
                }
                Input::ConfNotified(Err(e)) => {
                    tracing::warn!("{e}; reading {} every {} instead", self.paths.model_conf.display(), humantime::format_duration(self.conf_poll));
                    watch = None;
                    poll_every = self.conf_poll;
                    next_conf = next_conf.min(Instant::now() + poll_every);
                    None
                }
                Input::ConfPoll => {
                    next_conf = Instant::now() + poll_every;
                    Some(self.read_conf(false).await)
                }
                Input::Watchdog => {
                    self.notify.watchdog();
                    next_pet = Instant::now() + self.watchdog.unwrap_or(FAR);
                    None
                }
                Input::Residency if crate::host::bench_mark::running(&self.state_dir()).await.is_some() => {
                    // `jetson-llmd bench` of another model unloaded ours on purpose and loads
                    // it back itself: reloading it now would fight it.
                    next_residency = Instant::now() + self.settings.residency_check;
                    if !bench_said {
                        bench_said = true;
                        tracing::info!("a benchmark of other models is running: residency checks and ticks stand aside until it ends");
                    }
                    None
                }
                Input::Residency => {
                    bench_said = false;
                    next_residency = Instant::now() + self.settings.residency_check;
                    // A separate keepalive's re-warms count in the machine's one back-off, so
                    // a re-warm it did is not asked for again at once. Taken only while warm: a
                    // record read during a switch's preparation would be lost, and with it the
                    // confirmation that a lost runner was replaced.
                    if let Some(rec) = if m.warm_model().is_some() { self.backend.last_tick().await } else { None } {
                        // A ping from before the runner was lost confirms nothing about now.
                        let current = runner_lost_at.as_ref().is_none_or(|t| rec.at.0 > t.0);
                        if rec.ok && current && m.warm_model().is_some_and(|w| w.as_str() == rec.model) {
                            let effects = m.on(Event::Ticked(Some(rec.rewarmed)));
                            if let Some(r) = self.perform(&mut m, effects, &mut due, &mut tick, &signals).await {
                                return r;
                            }
                        }
                    }
                    match m.warm_model().cloned() {
                        Some(model) => Some(Event::Residency(warm::residency(&self.api, &self.settings, &model).await.map_err(|e| format!("Ollama at {} did not answer the residency check: {e}", self.api.url())))),
                        None => None,
                    }
                }
                Input::Runner(r) => match self.runner_event(r, &m, &mut pinned_blob).await {
                    Some((event, blob)) => {
                        runner_check = Some((Instant::now() + RUNNER_GRACE, blob));
                        runner_lost_at = Some(crate::records::Timestamp::now());
                        Some(event)
                    }
                    None => None,
                },
                Input::RunnerCheck => match runner_check.take() {
                    Some((_, blob)) => {
                        let serve = self.backend.ollama_pid().await;
                        let replaced = blob.is_some() && serve.is_some_and(|p| runner::runners_of(std::path::Path::new("/proc"), p).iter().any(|r| r.blob == blob));
                        Some(Event::RunnerChecked { replaced })
                    }
                    None => None,
                },
                Input::Monitor => {
                    next_monitor = Instant::now() + self.settings.monitor_interval;
                    // A write that failed (the disk full during a switch) is made again once it
                    // can be: `status` reads the file, and nothing else may change for hours.
                    if self.state.behind() {
                        self.state.save().await;
                    }
                    self.monitor(&mut board).await;
                    None
                }
            };
            if let Some(event) = event {
                let effects = m.on(event);
                if let Some(r) = self.perform(&mut m, effects, &mut due, &mut tick, &signals).await {
                    return r;
                }
                // A step may have started Ollama or loaded a model: the watch looks again. A
                // lookup that fails (D-Bus busy) keeps the runners it knows.
                if let Some(pid) = self.backend.ollama_pid().await {
                    runners.set_serve(Some(pid));
                }
                runners.look();
            }
        }
    }

    /// What the runner watch saw, as the machine's event with the file the runner served (None:
    /// not news for the pinned model). Fail closed: a runner whose model cannot be told counts
    /// as the pinned model's.
    async fn runner_event(&mut self, r: runner::RunnerEvent, m: &Machine, pinned: &mut Option<(ModelName, Option<String>)>) -> Option<(Event, Option<String>)> {
        let model = m.warm_model()?.clone();
        let (pid, program, blob, how) = match r {
            runner::RunnerEvent::Unavailable(why) => {
                tracing::warn!("{why}");
                return None;
            }
            // A runner that starts says nothing about a load that ended: readiness comes back
            // with a confirmed load (the tick's, the keepalive's), not with a process.
            runner::RunnerEvent::Up { .. } => return None,
            runner::RunnerEvent::Gone { pid, program, blob, how } => (pid, program, blob, how),
        };
        // Ollama itself exited (or is exiting: systemctl kill takes the whole cgroup, and the
        // runner's exit can arrive before the unit's): its exit is the news.
        if self.backend.gone().is_some_and(|g| *g.borrow()) {
            return None;
        }
        if let Some(serve) = self.backend.ollama_pid().await {
            if !runner::alive(std::path::Path::new("/proc"), serve) {
                return None;
            }
        }
        if crate::host::bench_mark::running(&self.state_dir()).await.is_some() {
            tracing::info!("Ollama's runner {program} (pid {pid}) {how}, while a benchmark of other models runs: left to it");
            return None;
        }
        let mut ours = self.pinned_blob(&model, pinned, false).await;
        if ours.is_some() && blob.is_some() && ours != blob {
            // Maybe the pinned model was created again since it was looked up.
            ours = self.pinned_blob(&model, pinned, true).await;
        }
        if ours.is_some() && blob.is_some() && ours != blob {
            tracing::info!("Ollama's runner {program} (pid {pid}) of another model {how}");
            return None;
        }
        Some((Event::RunnerGone(format!("({program}, pid {pid}) {how}")), blob))
    }

    /// The blob the pinned model's weights are (from its Modelfile's FROM line), looked up once
    /// per model (or again when `again`). None: not known (Ollama did not say).
    async fn pinned_blob(&self, model: &ModelName, pinned: &mut Option<(ModelName, Option<String>)>, again: bool) -> Option<String> {
        // A lookup that failed is not remembered: the next runner event asks again.
        if again || pinned.as_ref().is_none_or(|(m, b)| m != model || b.is_none()) {
            let blob = self.api.show(model.as_str()).await.ok().and_then(|s| s.modelfile.lines().find(|l| l.starts_with("FROM ")).and_then(runner::blob_of));
            *pinned = Some((model.clone(), blob));
        }
        pinned.as_ref().and_then(|(_, b)| b.clone())
    }

    /// The settings the machine decides with.
    fn rules(&self) -> Rules {
        Rules { launcher: self.backend.kind(), retry_max_backoff: self.settings.retry_max_backoff, keepalive_interval: self.settings.keepalive_interval, on_reboot_required: self.settings.on_reboot_required }
    }

    /// model.conf as it is now, for the machine (which tells an edit from the same bytes).
    async fn read_conf(&self, force: bool) -> Event {
        let path = &self.paths.model_conf;
        let (bytes, parsed) = match modelconf::read_bytes(path).await {
            Ok(b) => {
                let parsed = modelconf::from_bytes(path, &b).map(|c| c.model).map_err(|e| e.to_string());
                (Some(b), parsed)
            }
            Err(e) => (None, Err(e.to_string())),
        };
        Event::Conf { bytes, parsed, force }
    }

    /// Carries out the machine's effects in order; a step's result goes back to the machine and
    /// its effects run next. Some(result) ends the loop.
    async fn perform(&mut self, m: &mut Machine, effects: Vec<Effect>, due: &mut Option<(Instant, Due)>, tick: &mut Option<TickRecord>, signals: &Signals) -> Option<Result<(), Failure>> {
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            let mut then = Vec::new();
            match effect {
                Effect::Stage(stage, text) => self.set_stage(stage, &text).await,
                Effect::Ready(model) => {
                    let text = self.ready_text(&model);
                    self.set_stage(Stage::Ready, &text).await;
                }
                Effect::NotifyReady => self.notify.ready(),
                Effect::Status(text) => {
                    tracing::error!("{text}");
                    self.notify.status(&text);
                }
                Effect::ConfWarning(w) => {
                    self.conf_warning(w);
                    self.state.save().await;
                }
                Effect::EvictionNote(note) => {
                    if let Some(n) = &note {
                        tracing::warn!("{n}");
                    }
                    self.state.state.warnings.set_kind(WarningKind::Eviction, note.iter().map(|n| Warning::new(WarningKind::Eviction, n)));
                    if let Some(mut rec) = tick.take() {
                        rec.note = note;
                        self.state.state.last_ping = Some(rec);
                    }
                    self.state.save().await;
                }
                Effect::Warn(text) => tracing::warn!("{text}"),
                Effect::Info(text) => tracing::info!("{text}"),
                Effect::Schedule(next) => *due = next.map(|(wait, what)| (Instant::now() + wait, what)),
                Effect::Run(step) => {
                    for event in self.run_step(step, tick, signals).await {
                        then.extend(m.on(event));
                    }
                }
                Effect::KeepaliveNow => {
                    if !self.backend.keepalive_now().await {
                        then = m.on(Event::NoKeepalive);
                    }
                }
                Effect::StopKeepalive => self.backend.stop_keepalive().await,
                Effect::StopOllama => self.backend.shutdown().await,
                Effect::RequestReboot => {
                    tracing::error!("on_reboot_required = \"reboot\": asking systemd to reboot the machine");
                    if let Err(e) = self.backend.request_reboot().await {
                        tracing::error!("the reboot request failed: {e}; reboot by hand (sudo reboot)");
                    }
                }
                Effect::CountOllamaRestart => self.state.state.ollama_restarts += 1,
                Effect::CountRepin => {
                    self.state.state.repin_count += 1;
                    self.state.save().await;
                }
                Effect::CountRewarm => self.state.state.rewarm_count += 1,
                Effect::Shutdown => return Some(self.shutdown().await),
                Effect::Exit(f) => return Some(Err(f)),
            }
            for e in then.into_iter().rev() {
                queue.push_front(e);
            }
        }
        None
    }

    /// Runs one long step (cancelled by shutdown, feeding the watchdog) and reports its result
    /// as events; a step during which Ollama went away reports that instead (the machine then
    /// starts Ollama again at once, rather than after a load retried against nothing until its
    /// deadline). The step reports; the machine decides.
    async fn run_step(&mut self, s: Step, tick: &mut Option<TickRecord>, signals: &Signals) -> Vec<Event> {
        let what = format!("{s:?}");
        match or_gone(self.backend.gone(), self.run_step_inner(s, tick, signals)).await {
            Some(events) => events,
            None => {
                tracing::warn!("Ollama went away during a step ({}); abandoning it", crate::text::clip(&what, 120));
                // Its exit is already waiting there (the backend says gone only after); the
                // bound is for a backend that breaks that promise, never a wait in practice.
                match tokio::time::timeout(Duration::from_secs(5), self.backend.next_event()).await {
                    Ok(e) => vec![ollama_event(e)],
                    Err(_) => vec![Event::OllamaDown("Ollama went away".into())],
                }
            }
        }
    }

    async fn run_step_inner(&mut self, s: Step, tick: &mut Option<TickRecord>, signals: &Signals) -> Vec<Event> {
        let (n, wd) = self.pet();
        let done = |r: Option<Result<ModelName, Failure>>| match r {
            None => vec![Event::Shutdown],
            Some(Ok(m)) => vec![Event::Warmed(m)],
            Some(Err(f)) => vec![Event::Failed(f)],
        };
        match s {
            Step::Boot { last_good, keep } => {
                // Said every 15 s while it lasts: most of a boot is the model's cold load.
                let what = format!("bringing up {} and loading the model", self.backend.describe());
                done(step(&n, wd, signals, &what, self.boot(signals, last_good, keep)).await)
            }
            Step::Warm { last_good, keep } => done(step(&n, wd, signals, "loading the model", self.warm_model(last_good, keep)).await),
            Step::Prepare { from, to } => match step(&n, wd, signals, "getting the new model ready", self.prepare_switch(&from, &to)).await {
                None => vec![Event::Shutdown],
                Some(r) => vec![Event::Prepared(r)],
            },
            Step::Switch { from, to } => match step(&n, wd, signals, "switching models", self.switch(&from, &to)).await {
                None => vec![Event::Shutdown],
                Some(r) => vec![Event::Switched(r)],
            },
            Step::Tick(model) => {
                let dir = self.state_dir();
                let ticking = async {
                    crate::host::bench_mark::until_done(&dir, crate::host::bench_mark::AT_MOST).await;
                    self.backend.tick(&self.api, &self.settings, &model).await
                };
                let Some(result) = step(&n, wd, signals, "keeping the model warm", ticking).await else {
                    return vec![Event::Shutdown];
                };
                // None: a separate keepalive does this; no more ticks are scheduled.
                let Some(result) = result else {
                    return Vec::new();
                };
                let rewarms = self.state.state.rewarm_count + u64::from(matches!(&result, Ok(r) if r.rewarmed));
                *tick = Some(TickRecord::new(&model, &result, rewarms, u32::from(result.is_err())));
                match result {
                    Ok(r) => {
                        let rewarmed = r.rewarmed;
                        self.state.state.warm = Some(r);
                        vec![Event::Ticked(Some(rewarmed))]
                    }
                    Err(f) => vec![Event::Ticked(None), Event::Failed(f)],
                }
            }
        }
    }

    async fn set_stage(&mut self, stage: Stage, status: &str) {
        let status = crate::text::one_line(status);
        match stage {
            Stage::CpuFallback | Stage::RebootRequired | Stage::ConfigInvalid => {
                tracing::error!(stage = stage.as_str(), "{status}")
            }
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
        // A switch's preparation cancelled by the shutdown leaves nothing "switching" behind.
        self.state.state.switching = None;
        self.set_stage(Stage::Stopping, what).await;
        self.backend.shutdown().await;
        Ok(())
    }

    /// What a long step needs to feed the watchdog without borrowing the supervisor.
    fn pet(&self) -> (N, Option<Duration>) {
        (self.notify.clone(), self.watchdog)
    }

    async fn boot(&mut self, signals: &Signals, last_good: Option<ModelName>, keep: Option<ModelName>) -> Result<ModelName, Failure> {
        self.state.restart_timeline();
        let what = self.backend.describe();
        self.set_stage(Stage::StartingOllama, &format!("starting {what}")).await;
        self.backend.start_ollama().await?;
        // From here on, Ollama going away ends the boot at once, wherever it is (the wait for
        // its API, the GPU check, a 70-s load).
        match or_gone(self.backend.gone(), self.boot_started(signals, last_good, keep)).await {
            Some(r) => r,
            None => Err(match self.backend.next_event().await {
                OllamaEvent::Down(how) => Failure::OllamaDown(format!("{how} while it was being brought up")),
                OllamaEvent::Failed(f) => f,
                OllamaEvent::Up => Failure::OllamaDown("Ollama went away while it was being brought up".into()),
            }),
        }
    }

    /// The boot once Ollama is started.
    async fn boot_started(&mut self, signals: &Signals, last_good: Option<ModelName>, keep: Option<ModelName>) -> Result<ModelName, Failure> {
        self.state
            .event(match self.backend.kind() {
                LauncherKind::Process => "ollama started",
                LauncherKind::Systemd => "ollama active",
            })
            .await;
        let timeout = self.settings.startup_timeout;
        self.set_stage(Stage::WaitingForApi, &format!("waiting for Ollama's API at {} (up to {})", self.api.url(), humantime::format_duration(timeout))).await;
        let version = {
            let activity = self.backend.activity();
            let wait = warm::wait_for_api_or(&self.api, timeout, &signals.shutdown, activity.as_deref());
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
        if let Some(w) = &report.warning {
            tracing::warn!("{w}");
        }
        self.state.state.warnings.set_kind(WarningKind::Gpu, report.warning.iter().map(|w| Warning::new(WarningKind::Gpu, format!("gpu: {w}"))));
        if !report.as_expected {
            let why = if report.discovered { report.cpu_fallback_reason.clone().unwrap_or_else(|| "no CUDA GPU was discovered".into()) } else { format!("no GPU discovery line in Ollama's log within {}", humantime::format_duration(within)) };
            return Err(Failure::GpuMissing { reason: why });
        }
        self.state.event(if report.gpu || !self.settings.expected_compute.is_cpu() { "GPU found" } else { "CPU as expected" }).await;
        // First load wins: nothing else may take the memory before ours.
        let ours = self.configured_model(last_good.clone(), keep.clone()).await?;
        let unloaded = warm::unload_others(&self.api, &self.settings, &ours).await?;
        self.state.state.warnings.drop_kinds(&[WarningKind::AtBoot]);
        if !unloaded.is_empty() {
            let names: Vec<String> = unloaded.iter().map(|n| crate::text::clip(n, 100)).collect();
            self.state.state.warnings.push(Warning::new(WarningKind::AtBoot, format!("at boot, {} was loaded before {ours}; unloaded it so {ours} loads first (check what loads it: another client or unit)", names.join(", "))));
        }
        self.warm_model(last_good, keep).await
    }

    /// Polls Ollama's log for the discovery line until it appears or the deadline passes.
    async fn gpu_check(&mut self) -> Result<GpuReport, Failure> {
        let deadline = Instant::now() + self.settings.gpu_discovery_timeout;
        // Looked at once per boot, not at every poll of the log.
        let libs = discovery::jetpack6_libs(&self.paths.root, &self.settings.ollama_bin);
        loop {
            let lines = self.backend.ollama_log().await;
            let r = match &lines {
                Ok(l) => discovery::analyze_on(l, &self.settings.expected_compute, &discovery::HostFacts { cmdline: self.cmdline.as_deref(), jetpack6_libs: libs }),
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
            // The next line Ollama writes may be the discovery line: look then, or in 200 ms.
            match self.backend.activity() {
                Some(n) => {
                    let _ = tokio::time::timeout(Duration::from_millis(200), n.notified()).await;
                }
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
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
                    self.conf_warning(Some(Warning::new(WarningKind::ModelConf, format!("model.conf is invalid (keeping {m}): {e}"))));
                    Ok(m)
                }
                None => Err(Failure::Config(format!("{e}; fix the file and start again"))),
            },
        }
    }

    /// model.conf's one warning: invalid, or naming a model that is not the one kept.
    fn conf_warning(&mut self, w: Option<Warning>) {
        self.state.state.warnings.drop_kinds(&[WarningKind::ModelConf, WarningKind::ModelRefused]);
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
        let onto = if self.settings.expected_compute.is_cpu() { "on the CPU, as expected_compute asks" } else { "onto the GPU" };
        self.set_stage(Stage::Preloading, &format!("loading {model} {onto} (a cold load takes 30-70 s on an Orin Nano; up to {})", humantime::format_duration(self.settings.load_timeout))).await;
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
            Ok(()) => self.state.state.warnings.drop_kinds(&[WarningKind::Keepalive]),
            Err(e) => {
                // The model is warm and pinned (keep_alive -1), just unwatched: say so, carry on.
                tracing::error!("{e}");
                self.state.state.warnings.set_kind(WarningKind::Keepalive, [Warning::new(WarningKind::Keepalive, format!("keepalive did not start: {e}"))]);
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

    /// One sample of the board; warnings start and clear once per episode.
    async fn monitor(&mut self, board: &mut Board) {
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
            return;
        }
        for w in &started {
            tracing::warn!("board: {w}");
        }
        for c in &cleared {
            tracing::info!("board: {c} is back to normal");
        }
        self.state.state.warnings.set_kind(WarningKind::Board, board.episodes.current().map(|w| Warning::new(WarningKind::Board, format!("board: {w}"))));
        self.state.save().await;
    }

    /// SIGHUP / `systemctl reload`: config.toml is read again (model.conf follows, forced).
    async fn reload_config(&mut self) {
        match config::load(&self.paths.config).await {
            Ok(s) => {
                self.state.state.warnings.drop_kinds(&[WarningKind::ConfigToml]);
                if let Some(tx) = &self.guard {
                    let (old, new) = (&self.settings.guard, &s.guard);
                    let fixed: Vec<&str> =
                        [("enabled", old.enabled != new.enabled), ("listen", old.listen != new.listen), ("body_budget_mib", old.body_budget_mib != new.body_budget_mib)].into_iter().filter_map(|(k, changed)| changed.then_some(k)).collect();
                    if !fixed.is_empty() {
                        let w = format!("config.toml: [guard] {} changed; that takes a restart (systemctl restart jetson-llmd); the rest of [guard] applies now", fixed.join(", "));
                        tracing::warn!("{w}");
                        self.state.state.warnings.push(Warning::new(WarningKind::ConfigToml, w));
                    }
                    tx.send_replace(new.clone());
                }
                self.settings = s;
                tracing::info!("{} re-read", self.paths.config.display());
            }
            Err(e) => {
                tracing::error!("{e}; keeping the settings in use");
                self.state.state.warnings.set_kind(WarningKind::ConfigToml, [Warning::new(WarningKind::ConfigToml, format!("config.toml is invalid (the settings in use stay): {e}"))]);
            }
        }
    }
}

/// What the backend heard, as the machine's event.
fn ollama_event(e: OllamaEvent) -> Event {
    match e {
        OllamaEvent::Down(how) => Event::OllamaDown(how),
        OllamaEvent::Up => Event::OllamaUp,
        OllamaEvent::Failed(f) => Event::Failed(f),
    }
}

/// `fut`, unless Ollama is gone first (None). The step is polled first: a step that saw the exit
/// itself (the boot's wait for the API) ends with its own result.
async fn or_gone<T>(gone: Option<tokio::sync::watch::Receiver<bool>>, fut: impl std::future::Future<Output = T>) -> Option<T> {
    let Some(mut gone) = gone else {
        return Some(fut.await);
    };
    tokio::select! {
        biased;
        r = fut => Some(r),
        // A sender dropped without saying gone (its task ended with the runtime): not gone.
        Ok(_) = gone.wait_for(|g| *g) => None,
    }
}

/// Runs a long step: cancelled by shutdown (None), feeding the watchdog, saying what it waits for.
async fn step<T, N: Notifier>(n: &N, watchdog: Option<Duration>, signals: &Signals, what: &str, fut: impl std::future::Future<Output = T>) -> Option<T> {
    guarded(fut, n, watchdog, &signals.shutdown, Some((warm::STILL_WAITING, what))).await
}
