//! The systemd calls install, upgrade and uninstall make, behind a trait so that the plan and
//! the canary can be exercised without a system bus.

use crate::host::systemd::{Systemd, Verb};
use std::time::Duration;

/// A systemd call that failed: what was asked of which unit, and systemd's (or D-Bus's) answer.
#[derive(Debug, thiserror::Error)]
#[error("{action} {unit}: {source}")]
pub struct ServiceError {
    pub action: &'static str,
    pub unit: String,
    #[source]
    pub source: crate::host::systemd::SdError,
}

fn failed<'a>(action: &'static str, unit: &'a str) -> impl FnOnce(crate::host::systemd::SdError) -> ServiceError + 'a {
    move |source| ServiceError { action, unit: unit.to_string(), source }
}

#[allow(async_fn_in_trait)]
pub trait Services {
    async fn daemon_reload(&self) -> Result<(), ServiceError>;
    async fn enable(&self, units: &[&str]) -> Result<(), ServiceError>;
    async fn disable(&self, units: &[&str]) -> Result<(), ServiceError>;
    /// "active", "inactive", "failed"...; None when systemd does not know the unit.
    async fn active_state(&self, unit: &str) -> Option<String>;
    async fn start(&self, unit: &str, deadline: Duration) -> Result<(), ServiceError>;
    async fn restart(&self, unit: &str, deadline: Duration) -> Result<(), ServiceError>;
    async fn stop(&self, unit: &str, deadline: Duration) -> Result<(), ServiceError>;
    /// Starts without waiting for the job (a Type=notify unit whose start includes a model pull).
    async fn queue_start(&self, unit: &str) -> Result<(), ServiceError>;
}

impl Services for Systemd {
    async fn daemon_reload(&self) -> Result<(), ServiceError> {
        self.manager().reload().await.map_err(|e| ServiceError { action: "daemon-reload", unit: "systemd".into(), source: crate::host::systemd::SdError::Bus(e.to_string()) })
    }

    async fn enable(&self, units: &[&str]) -> Result<(), ServiceError> {
        let files = units.iter().map(|u| u.to_string()).collect();
        self.manager().enable_unit_files(files, false, true).await.map(|_| ()).map_err(|e| ServiceError { action: "enable", unit: units.join(" "), source: crate::host::systemd::SdError::Bus(e.to_string()) })
    }

    async fn disable(&self, units: &[&str]) -> Result<(), ServiceError> {
        let files = units.iter().map(|u| u.to_string()).collect();
        self.manager().disable_unit_files(files, false).await.map(|_| ()).map_err(|e| ServiceError { action: "disable", unit: units.join(" "), source: crate::host::systemd::SdError::Bus(e.to_string()) })
    }

    async fn active_state(&self, unit: &str) -> Option<String> {
        let u = self.unit(unit).await.ok()?;
        if u.load_state().await.ok()? == "not-found" {
            return None;
        }
        u.active_state().await.ok()
    }

    async fn start(&self, unit: &str, deadline: Duration) -> Result<(), ServiceError> {
        let _ = self.reset_failed(unit).await;
        self.run_job(unit, Verb::Start, deadline).await.map_err(failed("start", unit))
    }

    async fn restart(&self, unit: &str, deadline: Duration) -> Result<(), ServiceError> {
        // An install or canary restarts on purpose: its restarts must not count towards the
        // unit's start limit (StartLimitBurst), which would leave Ollama down.
        let _ = self.reset_failed(unit).await;
        self.run_job(unit, Verb::Restart, deadline).await.map_err(failed("restart", unit))
    }

    async fn stop(&self, unit: &str, deadline: Duration) -> Result<(), ServiceError> {
        self.run_job(unit, Verb::Stop, deadline).await.map_err(failed("stop", unit))
    }

    async fn queue_start(&self, unit: &str) -> Result<(), ServiceError> {
        let _ = self.reset_failed(unit).await;
        self.queue_job(unit, Verb::Start).await.map_err(failed("start", unit))
    }
}
