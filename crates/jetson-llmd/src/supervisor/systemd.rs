//! The systemd backend (`supervise`, the default on a Jetson): ollama.service is started and
//! watched over D-Bus, its log comes from the journal, the model is warmed by
//! ollama-preload.service and kept warm by ollama-keepalive.service. No fixed sleeps: each step
//! waits on a D-Bus signal (JobRemoved, PropertiesChanged) under a deadline.

use super::backend::{Backend, OllamaEvent};
use crate::conf::{ModelName, Settings};
use crate::failure::Failure;
use crate::failure::Reported;
use crate::host::journal;
use crate::host::systemd::{SdError, Systemd, Verb, KEEPALIVE, OLLAMA, PRELOAD};
use crate::ollama::warm::{TickRecord, WarmReport};
use crate::ollama::OllamaApi;
use crate::records::state::LauncherKind;
use crate::records::state::{clear_preload, read_keepalive, read_preload, PreloadRecord};
use futures_util::{Stream, StreamExt};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

type States = Pin<Box<dyn Stream<Item = String>>>;

pub struct SystemdBackend {
    sd: Systemd,
    states: Option<States>,
    /// ActiveState of ollama-keepalive.service: its terminal exits (4, 5) are ours to act on.
    keepalive: Option<States>,
    /// We started the keepalive and it has not been stopped: its failures are news (a stale
    /// "failed" from before this boot is not).
    keepalive_started: bool,
    /// Whether we believe ollama.service is up (set by a successful start, cleared by Down).
    up: bool,
    startup_timeout: Duration,
    /// Longest a preload may take (pulls of a 4 GB model included).
    preload_deadline: Duration,
    /// Where the workers report (preload.json, keepalive.json).
    state_dir: PathBuf,
    /// When we last started the keepalive: its reports from before are not news.
    keepalive_since: Option<time::OffsetDateTime>,
    /// The `at` of the last keepalive report passed on.
    last_report: Option<crate::records::Timestamp>,
    /// A signal was taken off a stream and its unit not yet looked at: the look comes first in
    /// the next `next_event`, so a call dropped mid-look (the loop's `select!`) loses nothing.
    pending: Option<bool>,
}

fn sd_failure(e: SdError) -> Failure {
    Failure::Systemd(e.to_string())
}

impl SystemdBackend {
    pub async fn new(sd: Systemd, startup_timeout: Duration, preload_deadline: Duration, state_dir: PathBuf) -> Result<SystemdBackend, Failure> {
        sd.subscribe().await.map_err(sd_failure)?;
        Ok(SystemdBackend { sd, states: None, keepalive: None, keepalive_started: false, up: false, startup_timeout, preload_deadline, state_dir, keepalive_since: None, last_report: None, pending: None })
    }

    /// The keepalive's last report, if it was written since we started it.
    async fn keepalive_report(&self) -> Option<TickRecord> {
        let rec = read_keepalive(&self.state_dir).await.ok()??;
        (rec.at.0 >= self.keepalive_since?).then_some(rec)
    }

    async fn start_job(&self) -> Result<(), SdError> {
        match self.sd.run_job(OLLAMA, Verb::Start, self.startup_timeout).await {
            Err(SdError::Job { result, message, .. }) if result != "refused" => {
                // A crash loop ends in the start limit; resetting it once is what a person would do.
                tracing::warn!("{OLLAMA} did not start ({message}); resetting its failed state and start limit");
                self.sd.reset_failed(OLLAMA).await?;
                self.sd.run_job(OLLAMA, Verb::Start, self.startup_timeout).await
            }
            other => other,
        }
    }

    /// ollama-keepalive.service failed: what it reported (keepalive.json, typed) decides, not its
    /// exit code. Only what a restart cannot fix is the supervisor's to act on (reboot required,
    /// the model on the CPU); anything else systemd's Restart= retries.
    async fn keepalive_failure(&self) -> Option<Failure> {
        let info = self.sd.info(KEEPALIVE).await.ok()?;
        if info.active_state != "failed" {
            return None;
        }
        let failure = self.keepalive_report().await?.failure?;
        matches!(failure, Reported::RebootRequired { .. } | Reported::OnCpu { .. }).then(|| failure.into())
    }

    /// What one signal means: the keepalive's (its terminal failure) or ollama.service's (down or
    /// up again); None when it changes nothing.
    async fn look(&mut self, ollama_changed: bool) -> Option<OllamaEvent> {
        if !ollama_changed {
            if !self.keepalive_started {
                return None;
            }
            let f = self.keepalive_failure().await?;
            self.keepalive_started = false;
            return Some(OllamaEvent::Failed(f));
        }
        // Decide on the latest state, not the (possibly stale, queued) one in the signal: a
        // restart that already finished must not read as a new crash.
        let now = self.sd.active_state(OLLAMA).await.unwrap_or_default();
        match (self.up, now.as_str()) {
            (true, "active" | "reloading") | (false, "activating" | "deactivating" | "inactive") => None,
            (true, s) => {
                self.up = false;
                let how = if s == "failed" { format!("{OLLAMA} failed") } else { format!("{OLLAMA} is {s} (Restart=always brings it back)") };
                Some(OllamaEvent::Down(how))
            }
            (false, "active") => {
                self.up = true;
                Some(OllamaEvent::Up)
            }
            (false, _) => None,
        }
    }
}

impl Backend for SystemdBackend {
    fn kind(&self) -> LauncherKind {
        LauncherKind::Systemd
    }

    fn describe(&self) -> String {
        OLLAMA.to_string()
    }

    async fn start_ollama(&mut self) -> Result<(), Failure> {
        if self.states.is_none() {
            self.states = Some(Box::pin(self.sd.active_states(OLLAMA).await.map_err(sd_failure)?));
        }
        if self.keepalive.is_none() {
            self.keepalive = Some(Box::pin(self.sd.active_states(KEEPALIVE).await.map_err(sd_failure)?));
        }
        self.start_job().await.map_err(|e| match e {
            SdError::Bus(_) => sd_failure(e),
            other => Failure::OllamaStart(other.to_string()),
        })?;
        self.up = true;
        Ok(())
    }

    async fn next_event(&mut self) -> OllamaEvent {
        loop {
            let ollama_changed = match self.pending {
                Some(c) => c,
                None => {
                    let (Some(states), Some(keepalive)) = (self.states.as_mut(), self.keepalive.as_mut()) else {
                        return std::future::pending().await;
                    };
                    // Stream::next is cancel-safe: a signal is taken only in the poll that returns it.
                    let changed = tokio::select! {
                        s = states.next() => s.map(|_| true),
                        k = keepalive.next() => k.map(|_| false),
                    };
                    let Some(c) = changed else {
                        self.states = None;
                        self.keepalive = None;
                        self.up = false;
                        return OllamaEvent::Down("lost the D-Bus signal streams of the units".into());
                    };
                    self.pending = Some(c);
                    c
                }
            };
            let event = self.look(ollama_changed).await;
            self.pending = None;
            if let Some(e) = event {
                return e;
            }
        }
    }

    async fn ollama_pid(&mut self) -> Option<u32> {
        self.sd.main_pid("ollama.service").await
    }

    async fn ollama_log(&mut self) -> Result<Vec<String>, Failure> {
        let since = self.sd.main_start_usec(OLLAMA).await;
        journal::since(OLLAMA, since).await.map_err(|e| Failure::LogUnreadable(format!("{e}; check that `journalctl -u {OLLAMA}` shows its log")))
    }

    async fn warm<A: OllamaApi>(&mut self, _api: &A, _settings: &Settings, model: &ModelName) -> Result<(), Failure> {
        // Restart, not start: a RemainAfterExit oneshot that already ran would be a no-op.
        // Each run is this loop's decision, paced by its own backoff: systemd's start limit
        // must not veto it (a canary or a few quick Ollama restarts would trip it).
        let _ = self.sd.reset_failed(PRELOAD).await;
        clear_preload(&self.state_dir).await;
        let job = self.sd.run_job(PRELOAD, Verb::Restart, self.preload_deadline).await;
        // The preload's own typed report (preload.json) says what happened; the job's result
        // only says whether it ran.
        let report = read_preload(&self.state_dir).await.ok().flatten();
        match (job, report) {
            (_, Some(PreloadRecord { failure: Some(f), .. })) => Err(f.into()),
            (Ok(()), Some(r)) if r.model != model.as_str() => Err(Failure::Preload(format!("{PRELOAD} loaded {}, not {model}", crate::text::clip(&r.model, 200)))),
            // Warm: the supervisor verifies it in /api/ps next, whatever was written.
            (Ok(()), _) => Ok(()),
            (Err(e), _) => Err(Failure::Preload(format!("{PRELOAD} failed without reporting a result ({e}); see journalctl -u {PRELOAD}"))),
        }
    }

    async fn last_tick(&mut self) -> Option<TickRecord> {
        let rec = self.keepalive_report().await?;
        if self.last_report == Some(rec.at) {
            return None;
        }
        self.last_report = Some(rec.at);
        Some(rec)
    }

    async fn tick<A: OllamaApi>(&mut self, _api: &A, _settings: &Settings, _model: &ModelName) -> Option<Result<WarmReport, Failure>> {
        None
    }

    async fn keepalive_now(&mut self) -> bool {
        // Its first ping runs at start: a restart is a ping now. Queued, not awaited: a cold
        // re-warm takes a minute and the loop must keep feeding the watchdog meanwhile.
        if let Err(e) = self.sd.queue_job(KEEPALIVE, Verb::Restart).await {
            tracing::warn!("restarting {KEEPALIVE}: {e}");
        }
        true
    }

    async fn start_keepalive(&mut self) -> Result<(), Failure> {
        self.keepalive_since = Some(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
        self.sd.run_job(KEEPALIVE, Verb::Start, Duration::from_secs(120)).await.map_err(sd_failure)?;
        self.keepalive_started = true;
        Ok(())
    }

    async fn stop_keepalive(&mut self) {
        self.keepalive_started = false;
        if let Err(e) = self.sd.run_job(KEEPALIVE, Verb::Stop, Duration::from_secs(30)).await {
            tracing::warn!("stopping {KEEPALIVE}: {e}");
        }
    }

    async fn shutdown(&mut self) {
        // ollama.service and the loaded model stay up; the keepalive is PartOf= us.
    }

    async fn request_reboot(&mut self) -> Result<(), Failure> {
        self.sd.request_reboot().await.map_err(sd_failure)
    }
}
