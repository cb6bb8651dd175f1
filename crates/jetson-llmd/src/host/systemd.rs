//! The boundary to systemd: the Manager and Unit objects over the system bus (zbus_systemd
//! proxies generated from systemd's own interface XML; only methods systemd 249 has). The
//! journal is read in [`super::journal`].

use futures_util::StreamExt;
use std::time::Duration;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

pub const OLLAMA: &str = "ollama.service";
pub const PRELOAD: &str = "ollama-preload.service";
pub const KEEPALIVE: &str = "ollama-keepalive.service";
pub const SUPERVISOR: &str = "jetson-llmd.service";

#[derive(Debug, thiserror::Error)]
pub enum SdError {
    #[error("cannot talk to systemd over the system bus: {0}; is D-Bus running (systemctl status dbus)?")]
    Bus(String),
    #[error("{unit}: {message}")]
    Job { unit: String, result: String, message: String },
    #[error("{unit}: no answer from systemd within {}s", .after.as_secs())]
    Deadline { unit: String, after: Duration },
}

impl SdError {
    pub fn job_result(&self) -> Option<&str> {
        match self {
            SdError::Job { result, .. } => Some(result),
            _ => None,
        }
    }
}

fn bus(e: impl std::fmt::Display) -> SdError {
    SdError::Bus(e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Restart,
    Stop,
}

/// What `status` shows for a unit.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct UnitInfo {
    pub unit: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// When the unit last changed state (RFC 3339), if ever.
    pub since: Option<String>,
    /// Service Result= (success, exit-code, start-limit-hit, ...).
    pub result: Option<String>,
    pub exec_main_status: Option<i32>,
    pub status_text: Option<String>,
}

pub struct Systemd {
    pub conn: zbus::Connection,
    manager: ManagerProxy<'static>,
}

/// Realtime microseconds (systemd's timestamps) to RFC 3339.
pub fn usec_to_rfc3339(us: u64) -> Option<String> {
    if us == 0 {
        return None;
    }
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).ok()?;
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

impl Systemd {
    /// The system bus (zbus honours DBUS_SYSTEM_BUS_ADDRESS).
    pub async fn system() -> Result<Systemd, SdError> {
        let conn = zbus::Connection::system().await.map_err(bus)?;
        Systemd::on(conn).await
    }

    /// A bus at an explicit address, e.g. `unix:path=/tmp/x/system_bus_socket` (tests).
    pub async fn at(address: &str) -> Result<Systemd, SdError> {
        let conn = zbus::connection::Builder::address(address).build().await.map_err(bus)?;
        Systemd::on(conn).await
    }

    async fn on(conn: zbus::Connection) -> Result<Systemd, SdError> {
        let manager = ManagerProxy::new(&conn).await.map_err(bus)?;
        Ok(Systemd { conn, manager })
    }

    pub fn manager(&self) -> &ManagerProxy<'static> {
        &self.manager
    }

    /// Subscribe so systemd emits job and unit signals to us (needed before waiting on them).
    pub async fn subscribe(&self) -> Result<(), SdError> {
        self.manager.subscribe().await.map_err(bus)
    }

    pub async fn unit(&self, name: &str) -> Result<UnitProxy<'static>, SdError> {
        // LoadUnit, not GetUnit: GetUnit fails for units systemd has not loaded (or dropped).
        let path = self.manager.load_unit(name.to_string()).await.map_err(bus)?;
        UnitProxy::builder(&self.conn).path(path).build().await.map_err(bus)
    }

    async fn service(&self, name: &str) -> Result<ServiceProxy<'static>, SdError> {
        let path = self.manager.load_unit(name.to_string()).await.map_err(bus)?;
        ServiceProxy::builder(&self.conn).path(path).build().await.map_err(bus)
    }

    /// Queues a job (mode "replace") and waits for its JobRemoved, under a deadline.
    /// Returns Ok on "done"; every other result becomes a message with the unit's last log lines.
    pub async fn run_job(&self, unit: &str, verb: Verb, deadline: Duration) -> Result<(), SdError> {
        // The signal stream must exist before the job is queued, or a fast job is missed.
        let mut removed = self.manager.receive_job_removed().await.map_err(bus)?;
        let job = match verb {
            Verb::Start => self.manager.start_unit(unit.to_string(), "replace".into()).await,
            Verb::Restart => self.manager.restart_unit(unit.to_string(), "replace".into()).await,
            Verb::Stop => self.manager.stop_unit(unit.to_string(), "replace".into()).await,
        }
        .map_err(|e| SdError::Job { unit: unit.into(), result: "refused".into(), message: format!("systemd refused the job: {e}") })?;
        let wait = async {
            while let Some(sig) = removed.next().await {
                let Ok(args) = sig.args() else { continue };
                if args.job.as_str() == job.as_str() {
                    return Some(args.result.to_string());
                }
            }
            None
        };
        let result = tokio::time::timeout(deadline, wait).await.map_err(|_| SdError::Deadline { unit: unit.into(), after: deadline })?.ok_or_else(|| SdError::Bus("the signal stream ended".into()))?;
        if result == "done" {
            return Ok(());
        }
        let svc_result = match self.service(unit).await {
            Ok(s) => s.result().await.ok(),
            Err(_) => None,
        };
        let what = describe_job_result(&result, svc_result.as_deref());
        let tail = super::journal::tail(unit, 5).await;
        let message = if tail.is_empty() { what } else { format!("{what}; last log lines: {}", tail.join(" | ")) };
        Err(SdError::Job { unit: unit.into(), result: svc_result.unwrap_or(result), message })
    }

    /// Queues a job (mode "replace") without waiting for it.
    pub async fn queue_job(&self, unit: &str, verb: Verb) -> Result<(), SdError> {
        let r = match verb {
            Verb::Start => self.manager.start_unit(unit.to_string(), "replace".into()).await,
            Verb::Restart => self.manager.restart_unit(unit.to_string(), "replace".into()).await,
            Verb::Stop => self.manager.stop_unit(unit.to_string(), "replace".into()).await,
        };
        r.map(|_| ()).map_err(|e| SdError::Job { unit: unit.into(), result: "refused".into(), message: format!("systemd refused the job: {e}") })
    }

    pub async fn reset_failed(&self, unit: &str) -> Result<(), SdError> {
        self.manager.reset_failed_unit(unit.to_string()).await.map_err(bus)
    }

    pub async fn info(&self, unit: &str) -> Result<UnitInfo, SdError> {
        let u = self.unit(unit).await?;
        let svc = self.service(unit).await.ok();
        let (result, exec_main_status, status_text) = match &svc {
            Some(s) => (s.result().await.ok(), s.exec_main_status().await.ok(), s.status_text().await.ok().filter(|t| !t.is_empty())),
            None => (None, None, None),
        };
        Ok(UnitInfo {
            unit: unit.to_string(),
            load_state: u.load_state().await.map_err(bus)?,
            active_state: u.active_state().await.map_err(bus)?,
            sub_state: u.sub_state().await.map_err(bus)?,
            since: u.state_change_timestamp().await.ok().and_then(usec_to_rfc3339),
            result,
            exec_main_status,
            status_text,
        })
    }

    /// When the unit's main process last started (realtime µs), for reading its log since then.
    pub async fn main_start_usec(&self, unit: &str) -> Option<u64> {
        self.service(unit).await.ok()?.exec_main_start_timestamp().await.ok().filter(|&t| t > 0)
    }

    /// The unit's main process (None: not running), for the runner watch.
    pub async fn main_pid(&self, unit: &str) -> Option<u32> {
        self.service(unit).await.ok()?.main_pid().await.ok().filter(|&p| p > 0)
    }

    /// What `systemctl reboot` does: start reboot.target, replacing every other job.
    pub async fn request_reboot(&self) -> Result<(), SdError> {
        self.manager.start_unit("reboot.target".into(), "replace-irreversibly".into()).await.map(|_| ()).map_err(|e| SdError::Job { unit: "reboot.target".into(), result: "refused".into(), message: format!("systemd refused the reboot: {e}") })
    }

    /// The unit's ActiveState as last seen by this connection (fresh after each signal).
    pub async fn active_state(&self, unit: &str) -> Result<String, SdError> {
        self.unit(unit).await?.active_state().await.map_err(bus)
    }

    /// A stream of ActiveState values of `unit`, starting with the current one.
    pub async fn active_states(&self, unit: &str) -> Result<impl futures_util::Stream<Item = String> + Unpin + 'static, SdError> {
        let u = self.unit(unit).await?;
        let changes = u.receive_active_state_changed().await;
        let s = changes.then(|c| async move { c.get().await.unwrap_or_default() });
        Ok(Box::pin(s))
    }
}

/// Words for a JobRemoved result (systemd's org.freedesktop.systemd1(5): done, canceled,
/// timeout, failed, dependency, skipped) plus the service's Result= when it failed.
pub fn describe_job_result(result: &str, service_result: Option<&str>) -> String {
    match result {
        "done" => "done".into(),
        "failed" => match service_result {
            Some("start-limit-hit") => "failed: started too often in a short time (start limit hit)".into(),
            Some(r) => format!("failed (Result={r})"),
            None => "failed".into(),
        },
        "timeout" => "did not finish within its timeout (TimeoutStartSec=)".into(),
        "dependency" => "a unit it depends on failed".into(),
        "canceled" => "the job was canceled (another start or stop replaced it)".into(),
        "skipped" => "was skipped (a condition was not met)".into(),
        other => format!("job ended with {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_result_has_words() {
        assert_eq!(describe_job_result("failed", Some("exit-code")), "failed (Result=exit-code)");
        assert!(describe_job_result("failed", Some("start-limit-hit")).contains("start limit"));
        assert!(describe_job_result("timeout", None).contains("TimeoutStartSec="));
        assert_eq!(describe_job_result("dependency", None), "a unit it depends on failed");
        assert!(describe_job_result("canceled", None).contains("replaced"));
        assert!(describe_job_result("skipped", None).contains("condition"));
        assert_eq!(describe_job_result("weird", None), "job ended with \"weird\"");
        assert_eq!(usec_to_rfc3339(0), None);
        assert_eq!(usec_to_rfc3339(1_700_000_000_000_000).as_deref(), Some("2023-11-14T22:13:20Z"));
    }
}
