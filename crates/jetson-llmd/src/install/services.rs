//! The systemd calls install, upgrade and uninstall make, behind a trait so that the plan and
//! the canary can be exercised without a system bus.

use crate::host::systemd::{Systemd, Verb};
use std::time::Duration;

#[allow(async_fn_in_trait)]
pub trait Services {
    async fn daemon_reload(&self) -> Result<(), String>;
    async fn enable(&self, units: &[&str]) -> Result<(), String>;
    async fn disable(&self, units: &[&str]) -> Result<(), String>;
    /// "active", "inactive", "failed"...; None when systemd does not know the unit.
    async fn active_state(&self, unit: &str) -> Option<String>;
    async fn start(&self, unit: &str, deadline: Duration) -> Result<(), String>;
    async fn restart(&self, unit: &str, deadline: Duration) -> Result<(), String>;
    async fn stop(&self, unit: &str, deadline: Duration) -> Result<(), String>;
    /// Starts without waiting for the job (a Type=notify unit whose start includes a model pull).
    async fn queue_start(&self, unit: &str) -> Result<(), String>;
}

impl Services for Systemd {
    async fn daemon_reload(&self) -> Result<(), String> {
        self.manager().reload().await.map_err(|e| format!("daemon-reload: {e}"))
    }

    async fn enable(&self, units: &[&str]) -> Result<(), String> {
        let files = units.iter().map(|u| u.to_string()).collect();
        self.manager().enable_unit_files(files, false, true).await.map(|_| ()).map_err(|e| format!("enable {}: {e}", units.join(" ")))
    }

    async fn disable(&self, units: &[&str]) -> Result<(), String> {
        let files = units.iter().map(|u| u.to_string()).collect();
        self.manager().disable_unit_files(files, false).await.map(|_| ()).map_err(|e| format!("disable {}: {e}", units.join(" ")))
    }

    async fn active_state(&self, unit: &str) -> Option<String> {
        let u = self.unit(unit).await.ok()?;
        if u.load_state().await.ok()? == "not-found" {
            return None;
        }
        u.active_state().await.ok()
    }

    async fn start(&self, unit: &str, deadline: Duration) -> Result<(), String> {
        let _ = self.reset_failed(unit).await;
        self.run_job(unit, Verb::Start, deadline).await.map_err(|e| e.to_string())
    }

    async fn restart(&self, unit: &str, deadline: Duration) -> Result<(), String> {
        // An install or canary restarts on purpose: its restarts must not count towards the
        // unit's start limit (StartLimitBurst), which would leave Ollama down.
        let _ = self.reset_failed(unit).await;
        self.run_job(unit, Verb::Restart, deadline).await.map_err(|e| e.to_string())
    }

    async fn stop(&self, unit: &str, deadline: Duration) -> Result<(), String> {
        self.run_job(unit, Verb::Stop, deadline).await.map_err(|e| e.to_string())
    }

    async fn queue_start(&self, unit: &str) -> Result<(), String> {
        let _ = self.reset_failed(unit).await;
        self.queue_job(unit, Verb::Start).await.map_err(|e| e.to_string())
    }
}
