//! The supervisor's state file (`<state_dir>/state.json`): what `status` shows about the boot
//! timeline, the GPU verdict and the last keepalive ping. Written atomically (temp + rename) so a
//! reader never sees half a file.

use crate::gpu::GpuReport;
use crate::warm::{TickRecord, WarmReport};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimelineEvent {
    pub event: String,
    pub at: String,
    /// Milliseconds since the supervisor started this boot sequence.
    pub after_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub pid: u32,
    pub started_at: String,
    /// Machine-readable stage: starting, waiting-for-api, checking-gpu, preloading, ready,
    /// cpu-fallback, reboot-required, ollama-unreachable, ...
    pub stage: String,
    /// The same in words (also sent as STATUS=).
    pub status: String,
    pub model: Option<String>,
    pub ollama_version: Option<String>,
    pub gpu: Option<serde_json::Value>,
    pub warm: Option<serde_json::Value>,
    pub last_ping: Option<serde_json::Value>,
    pub rewarm_count: u64,
    pub ollama_restarts: u64,
    pub timeline: Vec<TimelineEvent>,
    pub warnings: Vec<String>,
}

/// Holds the state and writes it on every change.
pub struct StateFile {
    path: Option<PathBuf>,
    pub state: State,
    t0: std::time::Instant,
}

impl StateFile {
    pub fn new(dir: Option<&Path>) -> StateFile {
        let path = dir.map(|d| d.join("state.json"));
        let state = State { pid: std::process::id(), started_at: now(), stage: "starting".into(), ..Default::default() };
        StateFile { path, state, t0: std::time::Instant::now() }
    }

    pub fn read(dir: &Path) -> Option<State> {
        let text = std::fs::read_to_string(dir.join("state.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Starts a new timeline (a new boot sequence after an Ollama restart).
    pub fn restart_timeline(&mut self) {
        self.state.timeline.clear();
        self.t0 = std::time::Instant::now();
    }

    pub fn event(&mut self, event: &str) {
        let after_ms = self.t0.elapsed().as_millis() as u64;
        tracing::info!("timeline: {event} (+{after_ms} ms)");
        self.state.timeline.push(TimelineEvent { event: event.to_string(), at: now(), after_ms });
        self.save();
    }

    pub fn stage(&mut self, stage: &str, status: &str) {
        self.state.stage = stage.into();
        self.state.status = status.into();
        self.save();
    }

    pub fn gpu(&mut self, r: &GpuReport) {
        self.state.gpu = serde_json::to_value(r).ok();
        self.save();
    }

    pub fn warm(&mut self, r: &WarmReport) {
        self.state.warm = serde_json::to_value(r).ok();
        self.save();
    }

    pub fn ping(&mut self, t: &TickRecord) {
        self.state.rewarm_count = t.rewarm_count;
        if let Some(r) = &t.report {
            self.state.warm = serde_json::to_value(r).ok();
        }
        self.state.last_ping = serde_json::to_value(t).ok();
        self.save();
    }

    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        let Ok(text) = serde_json::to_vec_pretty(&self.state) else { return };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("json.tmp");
        let res = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = res {
            tracing::debug!("cannot write {}: {e}", path.display());
        }
    }
}

/// The standalone keepalive's last ping (`<state_dir>/keepalive.json`), for `status`.
pub fn write_keepalive(dir: &Path, t: &TickRecord) {
    let path = dir.join("keepalive.json");
    let Ok(text) = serde_json::to_vec_pretty(t) else { return };
    let tmp = path.with_extension("json.tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
        tracing::debug!("cannot write {}: {e}", path.display());
    }
}

pub fn read_keepalive(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("keepalive.json")).ok()?).ok()
}
