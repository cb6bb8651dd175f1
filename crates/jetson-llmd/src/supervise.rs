//! The daemon: start Ollama, wait for its API, check GPU discovery in its log, preload the
//! model, then keep it warm, follow model.conf, and recover when Ollama restarts.
//! One `select!` loop owns timers, Ollama's exit, model.conf changes and shutdown.

use crate::api::OllamaApi;
use crate::config::{OnRebootRequired, Settings};
use crate::gpu::{self, GpuReport};
use crate::launcher::Launcher;
use crate::model_name::ModelName;
use crate::notify::Notifier;
use crate::outcome::Failure;
use crate::state::StateFile;
use crate::warm::{self, MemoryRelief};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

pub struct Supervisor<'a, A: OllamaApi, L: Launcher, N: Notifier> {
    pub api: &'a A,
    pub launcher: L,
    pub settings: &'a Settings,
    pub model_conf: PathBuf,
    /// /proc/cmdline, for the `cma=` hint.
    pub cmdline: Option<String>,
    pub relief: &'a dyn MemoryRelief,
    pub notify: N,
    pub state: StateFile,
    /// How often model.conf is looked at (editors save by rename, so we compare contents).
    pub conf_poll: Duration,
}

/// Where the current boot sequence stands.
enum Phase {
    /// Model warm and pinned.
    Warm(ModelName),
    /// Something failed that a retry may fix (model missing, load failed): retry at `retry`.
    Retry { failures: u32 },
    /// Nothing to do until Ollama restarts or model.conf changes (CPU fallback, bad model.conf).
    Stuck,
}

impl<'a, A: OllamaApi, L: Launcher, N: Notifier> Supervisor<'a, A, L, N> {
    fn stage(&mut self, stage: &str, status: &str) {
        tracing::info!(stage, "{status}");
        self.notify.status(status);
        self.state.stage(stage, &crate::notify::one_line(status));
    }

    async fn wait_gpu(&mut self, cancel: &CancellationToken) -> GpuReport {
        let deadline = Instant::now() + self.settings.gpu_discovery_timeout;
        loop {
            let r = gpu::analyze(&self.launcher.log_since_start(), &self.settings.expected_compute, self.cmdline.as_deref());
            if r.discovered || Instant::now() >= deadline || cancel.is_cancelled() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs until cancelled (Ok) or a terminal failure (reboot required).
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), Failure> {
        let mut ready_sent = false;
        let mut restarts: u32 = 0;
        let mut conf_text = std::fs::read(&self.model_conf).ok();
        let watchdog = crate::notify::watchdog_period();
        'boot: loop {
            self.state.restart_timeline();
            let what = self.launcher.describe();
            self.stage("starting-ollama", &format!("starting Ollama: {what}"));
            if let Err(e) = self.launcher.start().await {
                restarts += 1;
                let wait = warm::backoff(restarts, self.settings.retry_max_backoff);
                self.stage("ollama-failed", &format!("cannot start Ollama ({e:#}); retrying in {}", humantime::format_duration(wait)));
                tokio::select! { _ = cancel.cancelled() => return Ok(()), _ = tokio::time::sleep(wait) => continue 'boot }
            }
            self.state.event("ollama started");
            self.stage("waiting-for-api", &format!("waiting for Ollama's API at {}", self.api.url()));
            let version = tokio::select! {
                v = warm::wait_for_api(self.api, self.settings.startup_timeout, &cancel) => v.map_err(|e| e.to_string()),
                why = self.launcher.exited() => Err(why),
            };
            if cancel.is_cancelled() {
                self.launcher.stop().await;
                return Ok(());
            }
            let version = match version {
                Ok(v) => v,
                Err(why) => {
                    restarts += 1;
                    self.launcher.stop().await;
                    let wait = warm::backoff(restarts, self.settings.retry_max_backoff);
                    self.stage("ollama-unreachable", &format!("Ollama did not come up ({why}); restarting it in {}", humantime::format_duration(wait)));
                    tokio::select! { _ = cancel.cancelled() => return Ok(()), _ = tokio::time::sleep(wait) => continue 'boot }
                }
            };
            self.state.state.ollama_version = Some(version.clone());
            self.state.event("API ready");
            self.stage("checking-gpu", &format!("Ollama {version} is up; checking GPU discovery in its log"));
            let report = self.wait_gpu(&cancel).await;
            self.state.gpu(&report);
            let mut phase = if report.gpu {
                self.state.event("GPU found");
                crate::notify::pet_while(self.preload_phase(), watchdog).await?
            } else {
                let why = if report.discovered { report.summary() } else { format!("no GPU discovery line within {}", humantime::format_duration(self.settings.gpu_discovery_timeout)) };
                self.stage("cpu-fallback", &format!("NOT READY: {why}; not loading the model on the CPU (run `jetson-llmd gpu-check`)"));
                Phase::Stuck
            };
            if matches!(phase, Phase::Warm(_)) {
                restarts = 0;
            }
            let mut next_tick = Instant::now() + self.settings.keepalive_interval;
            let mut next_watchdog = Instant::now() + watchdog.unwrap_or(Duration::from_secs(3600));
            let mut next_conf = Instant::now() + self.conf_poll;
            loop {
                if matches!(phase, Phase::Warm(_)) && !ready_sent {
                    self.notify.ready();
                    ready_sent = true;
                }
                if let Phase::Retry { failures, .. } = &phase {
                    let wait = warm::backoff(*failures, self.settings.retry_max_backoff.min(self.settings.keepalive_interval));
                    next_tick = next_tick.min(Instant::now() + wait);
                }
                tokio::select! {
                    _ = cancel.cancelled() => {
                        self.stage("stopping", "stopping (the model stays loaded only while Ollama runs)");
                        self.launcher.stop().await;
                        return Ok(());
                    }
                    why = self.launcher.exited() => {
                        restarts += 1;
                        self.state.state.ollama_restarts += 1;
                        let wait = warm::backoff(restarts, self.settings.retry_max_backoff).min(Duration::from_secs(30));
                        self.stage("ollama-restarting", &format!("{why}; starting it again in {} and re-warming", humantime::format_duration(wait)));
                        tokio::select! { _ = cancel.cancelled() => return Ok(()), _ = tokio::time::sleep(wait) => continue 'boot }
                    }
                    _ = sleep_until(next_watchdog), if watchdog.is_some() => {
                        self.notify.watchdog();
                        next_watchdog = Instant::now() + watchdog.unwrap_or(Duration::from_secs(3600));
                    }
                    _ = sleep_until(next_conf) => {
                        next_conf = Instant::now() + self.conf_poll;
                        let now_text = std::fs::read(&self.model_conf).ok();
                        if now_text != conf_text {
                            conf_text = now_text;
                            phase = crate::notify::pet_while(self.conf_changed(phase), watchdog).await?;
                            next_tick = Instant::now() + self.settings.keepalive_interval;
                        }
                    }
                    _ = sleep_until(next_tick) => {
                        next_tick = Instant::now() + self.settings.keepalive_interval;
                        phase = match phase {
                            Phase::Warm(m) => crate::notify::pet_while(self.keepalive_tick(m), watchdog).await?,
                            Phase::Retry { failures } => match crate::notify::pet_while(self.preload_phase(), watchdog).await? {
                                Phase::Retry { .. } => Phase::Retry { failures: failures + 1 },
                                p => p,
                            },
                            Phase::Stuck => Phase::Stuck,
                        };
                    }
                }
            }
        }
    }

    async fn keepalive_tick(&mut self, model: ModelName) -> Result<Phase, Failure> {
        let result = warm::tick(self.api, self.settings, &model, self.relief).await;
        if result.as_ref().is_ok_and(|r| r.rewarmed) {
            self.state.state.rewarm_count += 1;
        }
        self.state.ping(&warm::TickRecord::new(&model, &result, self.state.state.rewarm_count, u32::from(result.is_err())));
        match result {
            Ok(_) => {
                self.stage("ready", &self.ready_text(&model));
                Ok(Phase::Warm(model))
            }
            Err(f) => self.failed(f, 1).await,
        }
    }

    fn ready_text(&self, model: &ModelName) -> String {
        let pct = self.state.state.warm.as_ref().and_then(|w| w.get("gpu_percent")).and_then(|v| v.as_u64()).unwrap_or(100);
        format!("ready: {model} warm on the GPU ({pct}%), pinned; keepalive every {}", humantime::format_duration(self.settings.keepalive_interval))
    }

    async fn preload_phase(&mut self) -> Result<Phase, Failure> {
        let model = match crate::modelconf::read(&self.model_conf) {
            Ok(c) => {
                for w in &c.warnings {
                    tracing::warn!("{}: {w}", self.model_conf.display());
                }
                c.model
            }
            Err(e) => {
                self.stage("config-invalid", &format!("NOT READY: {e}; fix the file, it is re-read automatically"));
                return Ok(Phase::Stuck);
            }
        };
        self.state.state.model = Some(model.to_string());
        self.stage("preloading", &format!("loading {model} onto the GPU (a cold load takes 30-70 s on an Orin Nano)"));
        match warm::preload(self.api, self.settings, &model, self.relief).await {
            Ok(r) => {
                self.state.warm(&r);
                self.state.event("model warm");
                self.stage("ready", &self.ready_text(&model));
                self.state.event("keepalive running");
                Ok(Phase::Warm(model))
            }
            Err(f) => self.failed(f, 1).await,
        }
    }

    async fn failed(&mut self, f: Failure, failures: u32) -> Result<Phase, Failure> {
        match f {
            Failure::RebootRequired { .. } => {
                self.stage("reboot-required", &format!("NOT READY: {f}"));
                if self.settings.on_reboot_required == OnRebootRequired::Reboot {
                    tracing::error!("on_reboot_required = \"reboot\": rebooting");
                    let _ = tokio::process::Command::new("systemctl").arg("reboot").status().await;
                }
                Err(f)
            }
            Failure::OnCpu { .. } => {
                self.stage("cpu-fallback", &format!("NOT READY: {f}"));
                Ok(Phase::Stuck)
            }
            Failure::Config(_) => {
                self.stage("config-invalid", &format!("NOT READY: {f}"));
                Ok(Phase::Stuck)
            }
            other => {
                let wait = warm::backoff(failures, self.settings.retry_max_backoff.min(self.settings.keepalive_interval));
                self.stage(other.stage(), &format!("NOT READY: {other}; retrying in {}", humantime::format_duration(wait)));
                Ok(Phase::Retry { failures })
            }
        }
    }

    /// model.conf changed: an invalid file keeps the running model; a new valid model replaces it.
    async fn conf_changed(&mut self, phase: Phase) -> Result<Phase, Failure> {
        let conf = match crate::modelconf::read(&self.model_conf) {
            Ok(c) => c,
            Err(e) => {
                let keep = match &phase {
                    Phase::Warm(m) => format!("keeping {m} loaded"),
                    _ => "nothing is loaded".into(),
                };
                tracing::error!("{e}");
                self.state.state.warnings = vec![format!("model.conf invalid ({keep}): {e}")];
                let status = format!("model.conf is invalid, {keep}: {}", e.lines().next().unwrap_or(""));
                self.notify.status(&status);
                self.state.save();
                return Ok(phase);
            }
        };
        self.state.state.warnings.clear();
        match phase {
            Phase::Warm(current) if conf.model.full() == current.full() => {
                self.stage("ready", &self.ready_text(&current));
                Ok(Phase::Warm(current))
            }
            Phase::Warm(current) => {
                tracing::info!("model.conf now names {}; {current} stays loaded until it is warm", conf.model);
                let next = self.preload_phase().await?;
                if let Phase::Warm(new) = &next {
                    if new.full() != current.full() {
                        crate::systemd_supervise::unload_if_loaded(self.api, &current.full()).await;
                    }
                }
                Ok(next)
            }
            Phase::Retry { .. } | Phase::Stuck => {
                // A CPU fallback stays stuck whatever the model; only a config problem is fixed here.
                if self.state.state.stage == "cpu-fallback" {
                    return Ok(Phase::Stuck);
                }
                self.preload_phase().await
            }
        }
    }
}
