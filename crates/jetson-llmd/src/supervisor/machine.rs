//! The one decider: every decision the supervisor takes, as a pure state machine (zincati's
//! update agent is the model). Events come in ([`Event`]: what Ollama did, what a step or a
//! worker reported, a timer, model.conf, a signal), effects go out ([`Effect`]: show a stage,
//! run a step, schedule a timer, stop, exit). No I/O, no clock, no async here: the driver in
//! supervisor/mod.rs performs the effects and turns their results back into events, and the
//! transition table below is tested without any of it.
//!
//! Long steps (a boot, a load, a pull, a switch) are effects ([`Effect::Run`]) whose completion
//! is an event. While one runs, the phase says so (`Booting`, `Switching { from, to }`...), and
//! the rule for what arrives meanwhile is: shutdown cancels the step at once, the watchdog is
//! fed, and everything else is queued and decided after the step, on the phase the step left
//! (an edit of model.conf during a switch is a new decision once the switch is done; Ollama
//! dying during a load fails the load, and its Down event then restarts it).

use super::stage::{policy, Action, Stage};
use crate::conf::{ModelName, OnRebootRequired};
use crate::failure::Failure;
use crate::ollama::warm::{self, EvictionBackoff, Residency};
use crate::records::state::LauncherKind;
use crate::records::{Warning, WarningKind};
use std::time::Duration;

/// Where the supervisor stands. Each phase carries what it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Ollama is not (known to be) up: a boot is due or awaited.
    Down,
    /// The boot sequence runs (Ollama, API, GPU check, first load).
    Booting,
    /// A warm failed: retried when due (RetryWarm) or when model.conf changes (WaitForConfig).
    Waiting(Action),
    /// A (re-)load of the model runs.
    Warming,
    /// The model is warm and pinned; the keepalive and residency checks follow it.
    Warm(ModelName),
    /// The new model is made present (pull or create) and admitted while `from` stays warm.
    Preparing { from: ModelName, to: ModelName },
    /// `from` is unloaded and `to` loads (or `from` comes back).
    Switching { from: ModelName, to: ModelName },
    /// Shutdown or a terminal failure: nothing more is decided.
    Stopped,
}

impl Phase {
    /// The phase's name in the transition table and docs/architecture.md.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Down => "Down",
            Phase::Booting => "Booting",
            Phase::Waiting(Action::WaitForConfig) => "WaitingForConfig",
            Phase::Waiting(_) => "Waiting",
            Phase::Warming => "Warming",
            Phase::Warm(_) => "Warm",
            Phase::Preparing { .. } => "Preparing",
            Phase::Switching { .. } => "Switching",
            Phase::Stopped => "Stopped",
        }
    }
}

/// Timers the machine asks for (one at a time: a new one replaces the old).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Boot,
    Warm,
    Tick,
}

/// Everything that can happen to the supervisor.
#[derive(Debug)]
pub enum Event {
    /// Ollama exited, crashed or its unit went down (how, in words).
    OllamaDown(String),
    /// Ollama is running again without us starting it (systemd's Restart=).
    OllamaUp,
    /// The timer the machine asked for fired.
    Due(Due),
    /// A step ended with this model warm, pinned and its keepalive started.
    Warmed(ModelName),
    /// A step, or a worker (the keepalive unit), failed.
    Failed(Failure),
    /// The new model of a switch was made present and admitted (Ok), refused by memory
    /// admission, or could not be made present.
    Prepared(Result<(), Block>),
    /// The switch ended: the model now warm (the new one, or the old one back) or a failure.
    Switched(Result<ModelName, Failure>),
    /// A keepalive tick run by the loop itself: Some(re-warmed?) when it succeeded, None when
    /// it failed (the failure follows as [`Event::Failed`]).
    Ticked(Option<bool>),
    /// A residency check between ticks: what /api/ps shows, or why Ollama did not answer.
    Residency(Result<Residency, String>),
    /// The runner watch saw the pinned model's runner exit (how, with the evidence, in words).
    /// On Ollama 0.34 /api/ps keeps listing the model until a request touches it: this is the
    /// truth, and the model is not served from now until a load ends.
    RunnerGone(String),
    /// A short grace after a [`Event::RunnerGone`]: whether a runner serving the same model file
    /// lives by then (Ollama itself reloading it: a client's num_ctx, a re-create) or none does
    /// (a death: the kernel's OOM killer, a crash, an unload).
    RunnerChecked { replaced: bool },
    /// The loop has no separate keepalive: the re-warm a residency check asked for is a tick now.
    NoKeepalive,
    /// model.conf as read now (None: unreadable) and what it says; `force` after SIGHUP.
    Conf { bytes: Option<Vec<u8>>, parsed: Result<ModelName, String>, force: bool },
    /// SIGINT/SIGTERM, or shutdown while a step waited.
    Shutdown,
}

/// Why a switch does not start.
#[derive(Debug)]
pub enum Block {
    /// Admission: it does not fit (the words say by how much).
    Refused(String),
    /// The new model cannot be made present (pull or create failed).
    Failed(Failure),
}

/// A long step the driver runs; its result comes back as an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Start Ollama, wait for its API, check GPU discovery, load the model (`keep` over
    /// model.conf; `last_good` when model.conf is invalid). Ends in Warmed or Failed.
    Boot { last_good: Option<ModelName>, keep: Option<ModelName> },
    /// Load the model again (same choice of model as Boot). Ends in Warmed or Failed.
    Warm { last_good: Option<ModelName>, keep: Option<ModelName> },
    /// One keepalive ping by the loop. Ends in Ticked (and Failed).
    Tick(ModelName),
    /// Pull or create `to` and admit it by memory while `from` stays warm. Ends in Prepared.
    Prepare { from: ModelName, to: ModelName },
    /// Unload `from`, load `to`, fall back to `from`. Ends in Switched.
    Switch { from: ModelName, to: ModelName },
}

/// What the driver does.
#[derive(Debug)]
pub enum Effect {
    /// Show this stage and text (state.json, sd_notify STATUS, the journal).
    Stage(Stage, String),
    /// The model is warm: show the ready stage for it.
    Ready(ModelName),
    /// READY=1 (once per run).
    NotifyReady,
    /// sd_notify STATUS only, the stage stays (an invalid edit while a model runs).
    Status(String),
    /// The model.conf warning in state.json (None clears it).
    ConfWarning(Option<Warning>),
    /// The eviction back-off's note for the last tick (None: not holding back).
    EvictionNote(Option<String>),
    /// A journal line at WARN or INFO (decisions that change nothing visible otherwise).
    Warn(String),
    Info(String),
    /// Replace the pending timer (None: no timer).
    Schedule(Option<(Duration, Due)>),
    Run(Step),
    /// The separate keepalive pings now (a residency check found the model gone or unpinned).
    KeepaliveNow,
    StopKeepalive,
    /// Stop a child Ollama that never answered (a unit stays up).
    StopOllama,
    RequestReboot,
    /// Counters in state.json.
    CountOllamaRestart,
    CountRepin,
    CountRewarm,
    /// Stop cleanly: stage stopping, the backend's shutdown, exit 0.
    Shutdown,
    /// Terminal: exit with this failure's code (the stage was shown before).
    Exit(Failure),
}

/// The settings the decisions depend on (updated on SIGHUP).
#[derive(Debug, Clone)]
pub struct Rules {
    pub launcher: LauncherKind,
    pub retry_max_backoff: Duration,
    pub keepalive_interval: Duration,
    pub on_reboot_required: OnRebootRequired,
}

/// Restarts of a crashed child back off to at most this (systemd paces its own restarts).
pub const RESTART_CAP: Duration = Duration::from_secs(30);
/// A warm that failed because Ollama did not answer is tried again at most this far apart: a
/// connection refused costs nothing, and every second of back-off after Ollama is back is a
/// second the model is cold (the fault matrix found 60 s lost to a 1m20s back-off).
pub const UNREACHABLE_CAP: Duration = Duration::from_secs(10);

pub struct Machine {
    pub phase: Phase,
    pub rules: Rules,
    boot_failures: u32,
    warm_failures: u32,
    ready_sent: bool,
    /// The stage last shown by this machine (steps show progress stages of their own).
    shown: Stage,
    /// model.conf as last seen (None: unreadable), to notice edits.
    conf_bytes: Option<Vec<u8>>,
    /// Why it was unreadable, when it was: a new reason is a change too.
    conf_unreadable: Option<String>,
    /// The last model that was warm: kept when model.conf turns invalid.
    last_good: Option<ModelName>,
    /// model.conf as it was when its model was refused or could not be made ready and the old
    /// model stayed: until the file changes, the old model is what boots.
    rejected_conf: Option<Vec<u8>>,
    /// Re-warms that keep happening (another client evicting ours) slow the ticks down.
    evictions: EvictionBackoff,
    /// Residency checks in a row that Ollama did not answer (a 5xx, a reset, a 10-s hang).
    unanswered: u32,
    /// A runner exited while the model was warm, and no load has ended since: /api/ps saying
    /// "loaded" is not believed until one has (Ollama 0.34 lists a dead runner's model).
    runner_lost: bool,
}

/// Residency checks in a row Ollama must leave unanswered before readiness drops: one is a
/// blip (the fault matrix showed a single 500 holding every client at the guard for up to a
/// check interval); two is an Ollama that is hung or gone. A crash is seen at once anyway,
/// from systemd or the child's exit.
pub const UNANSWERED_STRIKES: u32 = 2;

impl Machine {
    /// A machine at start-up: Ollama not known up, a boot due now.
    pub fn new(rules: Rules, conf_bytes: Option<Vec<u8>>) -> (Machine, Vec<Effect>) {
        let m = Machine {
            phase: Phase::Down,
            rules,
            boot_failures: 0,
            warm_failures: 0,
            ready_sent: false,
            shown: Stage::Starting,
            conf_bytes,
            conf_unreadable: None,
            last_good: None,
            rejected_conf: None,
            evictions: EvictionBackoff::default(),
            unanswered: 0,
            runner_lost: false,
        };
        (m, vec![Effect::Schedule(Some((Duration::ZERO, Due::Boot)))])
    }

    /// The model to keep regardless of model.conf: the last good one, while model.conf still
    /// says what was refused or failed.
    fn keep(&self) -> Option<ModelName> {
        (self.rejected_conf.is_some() && self.rejected_conf == self.conf_bytes).then(|| self.last_good.clone()).flatten()
    }

    /// The model that is warm, if the phase says one is.
    pub fn warm_model(&self) -> Option<&ModelName> {
        match &self.phase {
            Phase::Warm(m) => Some(m),
            _ => None,
        }
    }

    fn stage(&mut self, out: &mut Vec<Effect>, stage: Stage, text: String) {
        self.shown = stage;
        out.push(Effect::Stage(stage, text));
    }

    /// One event in, the effects out, in order. A [`Effect::Run`] is always last.
    pub fn on(&mut self, event: Event) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.phase == Phase::Stopped {
            return out;
        }
        match event {
            Event::Shutdown => {
                self.phase = Phase::Stopped;
                out.push(Effect::Shutdown);
            }
            Event::OllamaDown(how) => self.ollama_down(&mut out, how),
            Event::OllamaUp => {
                if self.phase == Phase::Down {
                    out.push(Effect::Info("Ollama is up again; re-checking the GPU and re-warming now".into()));
                    out.push(Effect::Schedule(Some((Duration::ZERO, Due::Boot))));
                }
            }
            Event::Due(due) => self.due(&mut out, due),
            Event::Warmed(model) => self.warmed(&mut out, model),
            Event::Failed(f) => self.failed(&mut out, f),
            Event::Prepared(r) => self.prepared(&mut out, r),
            Event::Switched(r) => {
                let Phase::Switching { to, .. } = &self.phase else { return out };
                match r {
                    Ok(m) => {
                        // Back on the old model: model.conf still names the one that failed; it
                        // is not retried until the file changes.
                        self.rejected_conf = (m != *to).then(|| self.conf_bytes.clone()).flatten();
                        self.warmed(&mut out, m);
                    }
                    Err(f) => self.failed(&mut out, f),
                }
            }
            Event::Ticked(rewarmed) => {
                // A re-warm after a runner's death was counted when no runner was found (Ollama
                // 0.34 still listed the model, so the tick itself cannot tell).
                let counted = rewarmed.is_some() && self.runner_lost;
                if let Some(r) = rewarmed.filter(|_| !counted) {
                    if r {
                        out.push(Effect::CountRewarm);
                    }
                    self.evictions.record(r);
                }
                out.push(Effect::EvictionNote(self.evictions.describe(self.rules.keepalive_interval)));
                if rewarmed.is_some() {
                    // The tick's load request went through: a dead runner was replaced by it.
                    self.runner_lost = false;
                    if let Phase::Warm(m) = &self.phase {
                        let m = m.clone();
                        out.push(Effect::Schedule(Some((self.evictions.wait(self.rules.keepalive_interval), Due::Tick))));
                        self.shown = Stage::Ready;
                        out.push(Effect::Ready(m));
                    }
                }
            }
            Event::Residency(found) => self.residency(&mut out, found),
            Event::RunnerGone(how) => self.runner_gone(&mut out, how),
            Event::RunnerChecked { replaced } => self.runner_checked(&mut out, replaced),
            Event::NoKeepalive => {
                if matches!(self.phase, Phase::Warm(_)) {
                    out.push(Effect::Schedule(Some((Duration::ZERO, Due::Tick))));
                }
            }
            Event::Conf { bytes, parsed, force } => self.conf(&mut out, bytes, parsed, force),
        }
        debug_assert!(out.iter().position(|e| matches!(e, Effect::Run(_))).is_none_or(|i| i == out.len() - 1), "Run is last: {out:?}");
        out
    }

    fn ollama_down(&mut self, out: &mut Vec<Effect>, how: String) {
        if self.phase != Phase::Down {
            out.push(Effect::CountOllamaRestart);
        }
        self.phase = Phase::Down;
        self.boot_failures += 1;
        let cap = self.rules.retry_max_backoff.min(RESTART_CAP);
        // An Ollama that was running and went away is started again at once (the model is
        // cold, every second counts); one that goes away again before the model is warm backs
        // off 5 s, 10 s... so a crash loop cannot spin. (Under systemd, ollama.service's own
        // Restart= brings it back and OllamaUp re-checks at once.)
        let wait = match self.rules.launcher {
            LauncherKind::Process if self.boot_failures <= 1 => Duration::ZERO,
            LauncherKind::Process => warm::backoff(self.boot_failures - 1, cap),
            LauncherKind::Systemd => warm::backoff(self.boot_failures, cap),
        };
        out.push(Effect::Schedule(Some((wait, Due::Boot))));
        let then = match self.rules.launcher {
            LauncherKind::Process if wait.is_zero() => "starting it again now".to_string(),
            LauncherKind::Process => format!("starting it again in {}", humantime::format_duration(wait)),
            LauncherKind::Systemd => format!("re-checking as soon as it is back, or starting it in {}", humantime::format_duration(wait)),
        };
        self.stage(out, Stage::OllamaDown, format!("NOT READY: {how}; {then}, then re-warming"));
    }

    fn due(&mut self, out: &mut Vec<Effect>, due: Due) {
        match (due, &self.phase) {
            (Due::Boot, _) => {
                self.phase = Phase::Booting;
                out.push(Effect::Run(Step::Boot { last_good: self.last_good.clone(), keep: self.keep() }));
            }
            (Due::Warm, Phase::Waiting(_)) => {
                self.phase = Phase::Warming;
                out.push(Effect::Run(Step::Warm { last_good: self.last_good.clone(), keep: self.keep() }));
            }
            (Due::Tick, Phase::Warm(m)) => out.push(Effect::Run(Step::Tick(m.clone()))),
            // A timer left over from a phase since left: nothing to do.
            _ => {}
        }
    }

    fn warmed(&mut self, out: &mut Vec<Effect>, model: ModelName) {
        self.boot_failures = 0;
        self.warm_failures = 0;
        self.last_good = Some(model.clone());
        self.phase = Phase::Warm(model.clone());
        self.unanswered = 0;
        self.runner_lost = false;
        out.push(Effect::Schedule(Some((self.rules.keepalive_interval, Due::Tick))));
        self.shown = Stage::Ready;
        out.push(Effect::Ready(model));
        if !self.ready_sent {
            self.ready_sent = true;
            out.push(Effect::NotifyReady);
        }
    }

    /// The policy's decision (stage::policy), carried out.
    fn failed(&mut self, out: &mut Vec<Effect>, f: Failure) {
        let (stage, action) = policy(&f);
        match action {
            Action::Exit(_) if matches!(f, Failure::Cancelled) => {
                self.phase = Phase::Stopped;
                out.push(Effect::Shutdown);
            }
            Action::Exit(_) => {
                self.phase = Phase::Stopped;
                self.stage(out, stage, format!("NOT READY: {f}"));
                out.push(Effect::StopKeepalive);
                if matches!(f, Failure::RebootRequired { .. }) && self.rules.on_reboot_required == OnRebootRequired::Reboot {
                    out.push(Effect::RequestReboot);
                }
                out.push(Effect::StopOllama);
                out.push(Effect::Exit(f));
            }
            Action::RestartOllama => {
                self.phase = Phase::Down;
                self.boot_failures += 1;
                // A child that never answered is stopped before the next start; a unit stays.
                out.push(Effect::StopOllama);
                let wait = warm::backoff(self.boot_failures, self.rules.retry_max_backoff);
                out.push(Effect::Schedule(Some((wait, Due::Boot))));
                self.stage(out, stage, format!("NOT READY: {f}; trying again in {}", humantime::format_duration(wait)));
            }
            Action::RetryWarm => {
                self.phase = Phase::Waiting(action);
                self.warm_failures += 1;
                let mut cap = self.rules.retry_max_backoff.min(self.rules.keepalive_interval);
                // Only a refused connection: a load that timed out or stalled is the board
                // struggling, and keeps the full back-off.
                if matches!(f, Failure::Unreachable(ollama_client::Error::Unreachable { .. })) {
                    cap = cap.min(UNREACHABLE_CAP);
                }
                let wait = warm::backoff(self.warm_failures, cap);
                out.push(Effect::Schedule(Some((wait, Due::Warm))));
                self.stage(out, stage, format!("NOT READY: {f}; retrying in {} or when model.conf changes", humantime::format_duration(wait)));
            }
            Action::WaitForConfig => {
                self.phase = Phase::Waiting(action);
                out.push(Effect::Schedule(None));
                self.stage(out, stage, format!("NOT READY: {f}; waiting for model.conf to change"));
            }
        }
    }

    /// Between pings: is the model still there and pinned? Another client's eviction or
    /// keep_alive is repaired now, not at the next 4-minute ping, unless evictions keep
    /// repeating (then the back-off decides: no reload fight).
    fn residency(&mut self, out: &mut Vec<Effect>, found: Result<Residency, String>) {
        let Phase::Warm(model) = self.phase.clone() else { return };
        let found = match found {
            Ok(r) => r,
            Err(e) => {
                // Readiness tells the truth: an Ollama that does not answer twice in a row is
                // not ready, whatever the last check said. The phase stays warm: when Ollama
                // answers again nothing needs reloading.
                self.unanswered += 1;
                if self.shown == Stage::Ready {
                    if self.unanswered >= UNANSWERED_STRIKES {
                        self.stage(out, Stage::OllamaUnreachable, format!("NOT READY: {e}"));
                    } else {
                        out.push(Effect::Warn(format!("{e}; still ready unless the next check fails too")));
                    }
                }
                return;
            }
        };
        self.unanswered = 0;
        if self.runner_lost && matches!(found, Residency::Pinned) {
            // Listed, but its runner is dead (Ollama 0.34 lists it until a request touches it):
            // not ready, and the re-warm asked for at the death is what brings it back.
            return;
        }
        if matches!(self.shown, Stage::OllamaUnreachable | Stage::NotResident) && !matches!(found, Residency::Missing(_)) {
            out.push(Effect::Info(format!("{model} is loaded and Ollama answers again")));
            self.shown = Stage::Ready;
            out.push(Effect::Ready(model.clone()));
        }
        match found {
            Residency::Pinned => return,
            Residency::Drifted { want, got } => {
                out.push(Effect::Warn(format!("{model} runs with context {got}, not the {want} config.toml gives it (re-created or reloaded by another client); creating it again and reloading it now")));
            }
            Residency::Unpinned { expires_at } => {
                out.push(Effect::CountRepin);
                out.push(Effect::Warn(format!("{model} expires at {expires_at}: another client changed its keep_alive; pinning it again now")));
            }
            Residency::Missing(why) => {
                if self.evictions.count() >= 2 {
                    // The next ping (backed off) will re-warm; a third quick reload would be a
                    // fight. Said at once, and not ready meanwhile: the model is not loaded.
                    if self.shown == Stage::Ready {
                        let wait = self.evictions.wait(self.rules.keepalive_interval);
                        let text = format!(
                            "NOT READY: {model} is gone again ({why}); after {} re-warms within the hour the next waits for the backed-off keepalive (up to {}), so that jetson-llmd and a client do not take turns reloading it",
                            self.evictions.count(),
                            humantime::format_duration(wait)
                        );
                        self.stage(out, Stage::NotResident, text);
                    }
                    return;
                }
                out.push(Effect::Warn(format!("{model} is gone ({why}); re-warming now")));
            }
        }
        out.push(Effect::KeepaliveNow);
    }

    /// The pinned model's runner exited while the model was warm: not served until a load ends,
    /// whatever /api/ps says, so not ready at once, with the cause. What to do waits for
    /// [`Event::RunnerChecked`] (the driver's grace): a reload by Ollama itself must not be
    /// fought, a death must be re-warmed.
    fn runner_gone(&mut self, out: &mut Vec<Effect>, how: String) {
        let Phase::Warm(model) = self.phase.clone() else { return };
        self.runner_lost = true;
        self.stage(out, Stage::NotResident, format!("NOT READY: the runner serving {model} {how}; re-warming unless Ollama is reloading it"));
    }

    fn runner_checked(&mut self, out: &mut Vec<Effect>, replaced: bool) {
        let Phase::Warm(model) = self.phase.clone() else { return };
        if !self.runner_lost {
            return;
        }
        if replaced {
            // Someone's request made Ollama reload it: not our re-warm, and not one to fight.
            // The next confirmed load (the loop's tick now, or the keepalive's ping) says ready.
            out.push(Effect::Info(format!("a new runner is loading {model} (Ollama reloading it); ready once the load is confirmed")));
            out.push(Effect::KeepaliveNow);
            return;
        }
        out.push(Effect::CountRewarm);
        self.evictions.record(true);
        if self.evictions.count() > 2 {
            let wait = self.evictions.wait(self.rules.keepalive_interval);
            let text = format!("NOT READY: {model} lost its runner again; after {} re-warms within the hour the next waits for the backed-off keepalive (up to {})", self.evictions.count(), humantime::format_duration(wait));
            self.stage(out, Stage::NotResident, text);
            out.push(Effect::Schedule(Some((wait, Due::Tick))));
            return;
        }
        out.push(Effect::Warn(format!("no runner serves {model} any more; re-warming now")));
        out.push(Effect::KeepaliveNow);
    }

    /// model.conf read again: an invalid file keeps the running model; a new valid model is
    /// made present and admitted while the old one stays warm, and only then replaces it.
    fn conf(&mut self, out: &mut Vec<Effect>, bytes: Option<Vec<u8>>, parsed: Result<ModelName, String>, force: bool) {
        // An unreadable file has no bytes to compare: its error is what changed (deleted, then
        // replaced by a FIFO: the new reason replaces the old one).
        let unreadable = if bytes.is_none() { parsed.as_ref().err().cloned() } else { None };
        if bytes == self.conf_bytes && unreadable == self.conf_unreadable && !force {
            return;
        }
        if matches!(self.phase, Phase::Booting | Phase::Warming | Phase::Preparing { .. } | Phase::Switching { .. }) {
            // Mid-step (an edit queued while a step ran): not taken as seen, so the next look
            // after the step decides on it, on the phase the step left.
            return;
        }
        self.conf_bytes = bytes;
        self.conf_unreadable = unreadable;
        let wanted = match parsed {
            Ok(m) => m,
            Err(e) => {
                let keep = match self.warm_model() {
                    Some(m) => format!("keeping {m} loaded"),
                    None => "nothing is loaded".into(),
                };
                // STATUS= before the state file: whoever sees the warning there sees it sent.
                out.push(Effect::Status(format!("model.conf is invalid, {keep}: {}", e.lines().next().unwrap_or(""))));
                out.push(Effect::ConfWarning(Some(Warning::new(WarningKind::ModelConf, format!("model.conf is invalid ({keep}): {e}")))));
                return;
            }
        };
        out.push(Effect::ConfWarning(None));
        match self.phase.clone() {
            Phase::Warm(current) if current == wanted => {
                self.shown = Stage::Ready;
                out.push(Effect::Ready(current));
            }
            Phase::Warm(current) => {
                self.phase = Phase::Preparing { from: current.clone(), to: wanted.clone() };
                out.push(Effect::Run(Step::Prepare { from: current, to: wanted }));
            }
            Phase::Waiting(_) => {
                self.warm_failures = 0;
                out.push(Effect::Schedule(Some((Duration::ZERO, Due::Warm))));
            }
            // Down or mid-step: the boot or the step reads model.conf itself.
            _ => {}
        }
    }

    fn prepared(&mut self, out: &mut Vec<Effect>, r: Result<(), Block>) {
        let Phase::Preparing { from, to } = self.phase.clone() else { return };
        match r {
            Ok(()) => {
                self.phase = Phase::Switching { from: from.clone(), to: to.clone() };
                out.push(Effect::Run(Step::Switch { from, to }));
            }
            Err(Block::Refused(why)) => {
                self.phase = Phase::Warm(from);
                self.rejected_conf = self.conf_bytes.clone();
                out.push(Effect::Status(why.clone()));
                out.push(Effect::ConfWarning(Some(Warning::about(WarningKind::ModelRefused, to.as_str(), why))));
            }
            // Ollama did not answer: nothing was touched and nothing is decided about the
            // name; the edit is looked at again at the next poll (forgetting the bytes makes
            // it new), and the residency check says what Ollama is doing meanwhile.
            Err(Block::Failed(f @ (Failure::Unreachable(_) | Failure::OllamaDown(_)))) => {
                self.phase = Phase::Warm(from);
                self.conf_bytes = None;
                out.push(Effect::Warn(format!("getting {to} ready: {f}; trying again at the next look at model.conf")));
            }
            // The name cannot be made present (the registry does not have it, the pull or
            // create failed): the old model was never touched, so it stays the model (state,
            // guard and keepalive follow it) and the edit is refused like a model that does not
            // fit, until model.conf changes or SIGHUP tries it again. Retrying on a timer would
            // only pull a name that does not exist, forever.
            Err(Block::Failed(f)) => {
                self.phase = Phase::Warm(from.clone());
                self.rejected_conf = self.conf_bytes.clone();
                let why = format!("model.conf names {to}, which could not be made ready ({f}); {from} stays loaded; correct the name in model.conf, or `systemctl reload jetson-llmd` to try it again");
                out.push(Effect::Status(why.clone()));
                out.push(Effect::ConfWarning(Some(Warning::about(WarningKind::ModelRefused, to.as_str(), why))));
            }
        }
    }
}

/// The transition table: (phase, event, phase after). docs/architecture.md's diagram is
/// generated from it, and `the_table_is_what_the_machine_does` checks every row against
/// [`Machine::on`].
pub const TRANSITIONS: &[(&str, &str, &str)] = &[
    ("Down", "Due(Boot)", "Booting"),
    ("Down", "OllamaUp", "Down"),
    ("Booting", "Warmed", "Warm"),
    ("Booting", "Failed(restart)", "Down"),
    ("Booting", "Failed(retry)", "Waiting"),
    ("Booting", "Failed(wait-for-config)", "WaitingForConfig"),
    ("Booting", "Failed(terminal)", "Stopped"),
    ("Waiting", "Due(Warm)", "Warming"),
    ("Waiting", "Conf(valid)", "Waiting"),
    ("WaitingForConfig", "Conf(valid)", "WaitingForConfig"),
    ("Warming", "Warmed", "Warm"),
    ("Warming", "Failed(retry)", "Waiting"),
    ("Warming", "Failed(terminal)", "Stopped"),
    ("Warm", "Due(Tick)", "Warm"),
    ("Warm", "Residency", "Warm"),
    ("Warm", "RunnerGone", "Warm"),
    ("Warm", "RunnerChecked", "Warm"),
    ("Warm", "Conf(same model)", "Warm"),
    ("Warm", "Conf(invalid)", "Warm"),
    ("Warm", "Conf(new model)", "Preparing"),
    ("Warm", "Failed(retry)", "Waiting"),
    ("Warm", "Failed(terminal)", "Stopped"),
    ("Warm", "OllamaDown", "Down"),
    ("Preparing", "Conf(new model)", "Preparing"),
    ("Preparing", "Prepared(ok)", "Switching"),
    ("Preparing", "Prepared(refused)", "Warm"),
    ("Preparing", "Prepared(not present)", "Warm"),
    ("Preparing", "Prepared(unreachable)", "Warm"),
    ("Switching", "Switched(new or old)", "Warm"),
    ("Switching", "Failed(terminal)", "Stopped"),
    ("Switching", "Failed(retry)", "Waiting"),
    ("*", "OllamaDown", "Down"),
    ("*", "Shutdown", "Stopped"),
];

/// docs/architecture.md's state diagram (mermaid), generated from [`TRANSITIONS`]; the rows
/// that hold from any phase follow it as a list.
pub fn mermaid() -> String {
    let mut s = String::from("```mermaid\nstateDiagram-v2\n    [*] --> Down\n");
    for (from, event, to) in TRANSITIONS.iter().filter(|r| r.0 != "*") {
        s.push_str(&format!("    {from} --> {to}: {event}\n"));
    }
    s.push_str("    Stopped --> [*]\n```\n\nFrom any phase but Stopped:\n");
    for (_, event, to) in TRANSITIONS.iter().filter(|r| r.0 == "*") {
        s.push_str(&format!("- {event} -> {to}\n"));
    }
    s
}

#[cfg(test)]
mod tests;
