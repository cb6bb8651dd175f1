//! `supervise --launcher systemd` (the default on a Jetson): drives the boot order through
//! systemd's D-Bus API. ollama.service -> API ready -> GPU found (journal) ->
//! ollama-preload.service -> ollama-keepalive.service -> READY=1. Then watches ollama.service and
//! re-runs the GPU check and the preload as soon as Ollama is active again after a restart.
//! No fixed sleeps: each step waits on a D-Bus signal or a readiness poll under a deadline.

use crate::api::OllamaApi;
use crate::config::Settings;
use crate::gpu::{self, GpuReport};
use crate::notify::Notifier;
use crate::outcome::{code, Failure};
use crate::state::StateFile;
use crate::systemd::{self, SdError, Systemd, Verb, KEEPALIVE, OLLAMA, PRELOAD};
use crate::warm;
use futures_util::StreamExt;
use ollama_client::KeepAlive;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

pub struct SystemdSupervisor<'a, A: OllamaApi, N: Notifier> {
    pub api: &'a A,
    pub sd: Systemd,
    pub settings: &'a Settings,
    pub model_conf: PathBuf,
    pub cmdline: Option<String>,
    pub notify: N,
    pub state: StateFile,
    pub conf_poll: Duration,
    /// Longest a preload may take (pulls of a 4 GB model included).
    pub preload_deadline: Duration,
}

/// How a boot sequence ended.
enum Boot {
    /// Model warm, keepalive running.
    Warm,
    /// The preload failed in a way a retry may fix.
    PreloadFailed,
}

impl<'a, A: OllamaApi, N: Notifier> SystemdSupervisor<'a, A, N> {
    fn stage(&mut self, stage: &str, status: &str) {
        tracing::info!(stage, "{status}");
        self.notify.status(status);
        self.state.stage(stage, &crate::notify::one_line(status));
    }

    /// Starts ollama.service; a failed start is retried once after ResetFailedUnit, which also
    /// clears systemd's start rate limit ("Start request repeated too quickly"). systemd 252
    /// keeps Result=exit-code in that case rather than start-limit-hit, so we do not rely on it.
    async fn start_ollama(&mut self, attempt: u32) -> Result<(), SdError> {
        match self.sd.run_job(OLLAMA, Verb::Start, self.settings.startup_timeout).await {
            Err(SdError::Job { result, message, .. }) if result != "refused" => {
                tracing::warn!("{OLLAMA} did not start ({message}); resetting its failed state and start limit (attempt {attempt})");
                self.sd.reset_failed(OLLAMA).await?;
                self.sd.run_job(OLLAMA, Verb::Start, self.settings.startup_timeout).await
            }
            other => other,
        }
    }

    /// Polls ollama.service's journal since its main process started for the discovery line.
    /// Err when not a single line could be read (the verdict would be a guess).
    async fn gpu_from_journal(&self, cancel: &CancellationToken) -> Result<GpuReport, String> {
        let since = self.sd.main_start_usec(OLLAMA).await;
        let deadline = Instant::now() + self.settings.gpu_discovery_timeout;
        loop {
            let lines = systemd::journal_since(OLLAMA, since);
            let r = gpu::analyze(&lines, &self.settings.expected_compute, self.cmdline.as_deref());
            if r.discovered {
                return Ok(r);
            }
            if Instant::now() >= deadline || cancel.is_cancelled() {
                if lines.is_empty() {
                    return Err(format!("could not read a single line of {OLLAMA}'s journal since it started; check that `journalctl -u {OLLAMA}` shows its log"));
                }
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One boot sequence from "ollama.service start" to "keepalive running".
    async fn boot(&mut self, cancel: &CancellationToken, attempt: u32) -> Result<Boot, Failure> {
        self.state.restart_timeline();
        self.stage("starting-ollama", &format!("starting {OLLAMA}"));
        if let Err(e) = self.start_ollama(attempt).await {
            return Err(Failure::Systemd(e.to_string()));
        }
        self.state.event("ollama active");
        self.stage("waiting-for-api", &format!("{OLLAMA} is active; waiting for its API at {}", self.api.url()));
        // Stop waiting at once if Ollama crashes meanwhile (a crash loop ends in "failed").
        let failed = async {
            match self.sd.active_states(OLLAMA).await {
                Ok(mut s) => {
                    while let Some(state) = s.next().await {
                        if state == "failed" {
                            return;
                        }
                    }
                    std::future::pending::<()>().await
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        let version = tokio::select! {
            v = warm::wait_for_api(self.api, self.settings.startup_timeout, cancel) => v?,
            _ = failed => {
                let tail = systemd::journal_tail(OLLAMA, 3);
                return Err(Failure::Systemd(format!("{OLLAMA} failed before its API answered; last log lines: {}", tail.join(" | "))));
            }
        };
        self.state.state.ollama_version = Some(version.clone());
        self.state.event("API ready");
        self.stage("checking-gpu", &format!("Ollama {version} is up; reading GPU discovery from its journal"));
        let report = self.gpu_from_journal(cancel).await.map_err(Failure::Systemd)?;
        self.state.gpu(&report);
        if !report.gpu {
            let why = if report.discovered { report.cpu_fallback_reason.clone().unwrap_or_else(|| "no CUDA GPU was discovered".into()) } else { format!("no GPU discovery line in {OLLAMA}'s journal within {}", humantime::format_duration(self.settings.gpu_discovery_timeout)) };
            return Err(Failure::GpuMissing { reason: why });
        }
        self.state.event("GPU found");
        self.preload().await
    }

    async fn preload(&mut self) -> Result<Boot, Failure> {
        let model = crate::modelconf::read(&self.model_conf).map_err(Failure::Config)?.model;
        self.stage("preloading", &format!("{PRELOAD}: loading {model} onto the GPU (a cold load takes 30-70 s on an Orin Nano)"));
        // Restart, not start: a RemainAfterExit oneshot that already ran would be a no-op.
        match self.sd.run_job(PRELOAD, Verb::Restart, self.preload_deadline).await {
            Ok(()) => {}
            Err(e) => {
                let status = self.sd.info(PRELOAD).await.ok().and_then(|i| i.exec_main_status);
                let detail = preload_error(&e);
                if status == Some(code::REBOOT_REQUIRED) {
                    return Err(Failure::RebootRequired { detail });
                }
                let wait = warm::backoff(1, self.settings.retry_max_backoff.min(self.settings.keepalive_interval));
                self.stage("preload-failed", &format!("NOT READY: {PRELOAD} failed: {detail}; retrying in {} or when model.conf changes", humantime::format_duration(wait)));
                return Ok(Boot::PreloadFailed);
            }
        }
        if let Ok(ps) = self.api.ps().await {
            if let Some(m) = ps.models.iter().find(|m| model.matches(&m.name)) {
                self.state.state.warm = Some(serde_json::json!({ "model": model, "gpu_percent": m.gpu_percent(), "size": m.size, "size_vram": m.size_vram, "expires_at": m.expires_at, "pinned": m.pinned_forever() }));
            }
        }
        self.state.state.model = Some(model.to_string());
        self.state.event("model warm");
        self.stage("starting-keepalive", &format!("{model} is warm; starting {KEEPALIVE}"));
        if let Err(e) = self.sd.run_job(KEEPALIVE, Verb::Start, Duration::from_secs(120)).await {
            // The model is warm; without keepalive it stays pinned (keep_alive -1) but unwatched.
            tracing::error!("{e}");
            self.state.state.warnings = vec![format!("{KEEPALIVE} did not start: {e}")];
        }
        self.state.event("keepalive running");
        self.stage("ready", &format!("ready: {model} warm on the GPU, pinned; {KEEPALIVE} pings every {}", humantime::format_duration(self.settings.keepalive_interval)));
        Ok(Boot::Warm)
    }

    /// A failure only a human (or a reboot) fixes: say why, and stop the keepalive so it does not
    /// re-load the model onto the CPU or into unallocatable memory behind our back.
    async fn terminal(&mut self, f: Failure) -> Failure {
        self.stage(f.stage(), &format!("NOT READY: {f}"));
        if let Err(e) = self.sd.run_job(KEEPALIVE, Verb::Stop, Duration::from_secs(30)).await {
            tracing::warn!("stopping {KEEPALIVE}: {e}");
        }
        f
    }

    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), Failure> {
        self.sd.subscribe().await.map_err(|e| Failure::Systemd(e.to_string()))?;
        let mut states = self.sd.active_states(OLLAMA).await.map_err(|e| Failure::Systemd(e.to_string()))?;
        let watchdog = crate::notify::watchdog_period();
        let mut ready_sent = false;
        let mut attempt: u32 = 0;
        let mut conf_text = std::fs::read(&self.model_conf).ok();
        'boot: loop {
            attempt += 1;
            let booted = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                b = crate::notify::pet_while(self.boot(&cancel, attempt), watchdog) => b,
            };
            let mut retry_at: Option<Instant> = None;
            match booted {
                Ok(Boot::Warm) => {
                    attempt = 0;
                    if !ready_sent {
                        self.notify.ready();
                        ready_sent = true;
                    }
                }
                Ok(Boot::PreloadFailed) => retry_at = Some(Instant::now() + warm::backoff(1, self.settings.retry_max_backoff.min(self.settings.keepalive_interval))),
                Err(f @ (Failure::GpuMissing { .. } | Failure::RebootRequired { .. } | Failure::Config(_))) => {
                    // Nothing a restart fixes: say why and stop (RestartPreventExitStatus= lists these codes).
                    return Err(self.terminal(f).await);
                }
                Err(f) => {
                    let wait = warm::backoff(attempt, self.settings.retry_max_backoff);
                    self.stage(f.stage(), &format!("NOT READY: {f}; trying again in {}", humantime::format_duration(wait)));
                    tokio::select! { _ = cancel.cancelled() => return Ok(()), _ = tokio::time::sleep(wait) => continue 'boot }
                }
            }
            let mut ollama_down = false;
            let mut next_watchdog = Instant::now() + watchdog.unwrap_or(Duration::from_secs(3600));
            let mut next_conf = Instant::now() + self.conf_poll;
            loop {
                let retry = retry_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(86400));
                tokio::select! {
                    _ = cancel.cancelled() => {
                        self.stage("stopping", "stopping; ollama.service and the loaded model stay up");
                        return Ok(());
                    }
                    s = states.next() => {
                        let Some(s) = s else { continue 'boot };
                        match s.as_str() {
                            "active" if ollama_down => {
                                self.state.state.ollama_restarts += 1;
                                tracing::warn!("{OLLAMA} is active again after a restart; re-checking the GPU and re-warming now");
                                continue 'boot;
                            }
                            "failed" => {
                                self.stage("ollama-failed", &format!("{OLLAMA} failed; starting it again"));
                                self.state.state.ollama_restarts += 1;
                                continue 'boot;
                            }
                            "inactive" | "deactivating" | "activating" | "reloading" if !ollama_down => {
                                ollama_down = true;
                                self.stage("ollama-down", &format!("{OLLAMA} is {s}; waiting for it to come back (Restart=always)"));
                            }
                            _ => {}
                        }
                    }
                    _ = sleep_until(next_watchdog), if watchdog.is_some() => {
                        self.notify.watchdog();
                        next_watchdog = Instant::now() + watchdog.unwrap_or(Duration::from_secs(3600));
                    }
                    _ = sleep_until(retry), if retry_at.is_some() => {
                        retry_at = None;
                        match crate::notify::pet_while(self.preload(), watchdog).await {
                            Ok(Boot::Warm) => if !ready_sent { self.notify.ready(); ready_sent = true; },
                            Ok(Boot::PreloadFailed) => retry_at = Some(Instant::now() + self.settings.retry_max_backoff.min(self.settings.keepalive_interval)),
                            Err(f) => return Err(self.terminal(f).await),
                        }
                    }
                    _ = sleep_until(next_conf) => {
                        next_conf = Instant::now() + self.conf_poll;
                        let now = std::fs::read(&self.model_conf).ok();
                        if now == conf_text {
                            continue;
                        }
                        conf_text = now;
                        match crate::modelconf::read(&self.model_conf) {
                            Err(e) => {
                                let keep = self.state.state.model.clone().unwrap_or_else(|| "the current model".into());
                                tracing::error!("{e}");
                                self.state.state.warnings = vec![format!("model.conf invalid (keeping {keep} loaded): {e}")];
                                self.notify.status(&format!("model.conf is invalid, keeping {keep} loaded: {}", e.lines().next().unwrap_or("")));
                                self.state.save();
                            }
                            Ok(c) => {
                                self.state.state.warnings.clear();
                                let old = self.state.state.model.clone();
                                if old.as_deref().map(|o| c.model.matches(o)) != Some(true) || retry_at.is_some() {
                                    tracing::info!("model.conf now names {}", c.model);
                                    retry_at = None;
                                    // The old model stays loaded until the new one is warm: if the new
                                    // one cannot be pulled or loaded, the endpoint keeps working.
                                    match crate::notify::pet_while(self.preload(), watchdog).await {
                                        Ok(Boot::Warm) => {
                                            if let Some(o) = old.filter(|o| !c.model.matches(o)) {
                                                unload_if_loaded(self.api, &o).await;
                                            }
                                            if !ready_sent { self.notify.ready(); ready_sent = true; }
                                        }
                                        Ok(Boot::PreloadFailed) => retry_at = Some(Instant::now() + warm::backoff(1, self.settings.retry_max_backoff.min(self.settings.keepalive_interval))),
                                        Err(f) => return Err(self.terminal(f).await),
                                    }
                                } else {
                                    self.state.save();
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Unloads a model that is no longer configured (with OLLAMA_MAX_LOADED_MODELS=1 Ollama has
/// usually evicted it already when the new one loaded).
pub(crate) async fn unload_if_loaded<A: OllamaApi>(api: &A, name: &str) {
    let loaded = api.ps().await.map(|p| p.models.iter().any(|m| m.name == name)).unwrap_or(false);
    if loaded {
        tracing::info!("unloading {name}: model.conf names another model now");
        if let Err(e) = api.load(name, KeepAlive::Unload).await {
            tracing::warn!("unloading {name} failed: {e}");
        }
    }
}

/// The preload unit's own error line (jetson-llmd prints `error: ...` and ` -> cause` lines).
fn preload_error(e: &SdError) -> String {
    let tail = systemd::journal_tail(PRELOAD, 8);
    let err: Vec<&str> = tail.iter().map(String::as_str).filter(|l| l.starts_with("error:") || l.starts_with(" -> ") || l.starts_with("->")).collect();
    if err.is_empty() {
        e.to_string()
    } else {
        err.join(" ")
    }
}
