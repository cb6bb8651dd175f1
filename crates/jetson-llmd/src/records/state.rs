//! The supervisor's state file (`<state_dir>/state.json`): what `status` shows about the stage,
//! the boot timeline, the GPU verdict and the last keepalive ping. Typed both ways, written
//! atomically (temp + fsync + rename) so a reader never sees half a file, read with a cap.

use super::gpu::GpuReport;
use super::stage::Stage;
use super::warm::{TickRecord, WarmReport};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Now, as the records write it (RFC 3339, UTC).
pub fn now() -> String {
    super::Timestamp::now().to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimelineEvent {
    pub event: String,
    pub at: super::Timestamp,
    /// Milliseconds since the supervisor started this boot sequence.
    pub after_ms: u64,
}

/// Which launcher wrote the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LauncherKind {
    #[default]
    Systemd,
    Process,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct State {
    pub pid: u32,
    pub started_at: super::Timestamp,
    pub launcher: LauncherKind,
    pub stage: Stage,
    /// The stage in words (also sent as STATUS=).
    pub status: String,
    pub model: Option<String>,
    pub ollama_version: Option<String>,
    pub gpu: Option<GpuReport>,
    pub warm: Option<WarmReport>,
    /// The supervisor's own last ping (process launcher; under systemd see keepalive.json).
    pub last_ping: Option<TickRecord>,
    pub rewarm_count: u64,
    /// Times another client's keep_alive had to be overridden (the model re-pinned).
    pub repin_count: u64,
    pub ollama_restarts: u64,
    pub timeline: Vec<TimelineEvent>,
    pub warnings: Vec<super::Warning>,
    /// While a switch gets its new model ready (the old one still serving): how far, in words
    /// ("pulling gemma3:4b: downloading 40%"). None otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switching: Option<String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            pid: 0,
            started_at: super::Timestamp::default(),
            launcher: LauncherKind::default(),
            stage: Stage::Starting,
            status: String::new(),
            model: None,
            ollama_version: None,
            gpu: None,
            warm: None,
            last_ping: None,
            rewarm_count: 0,
            repin_count: 0,
            ollama_restarts: 0,
            timeline: Vec::new(),
            warnings: Vec::new(),
            switching: None,
        }
    }
}

/// Holds the state and writes it on every change.
pub struct StateFile {
    path: Option<PathBuf>,
    pub state: State,
    t0: tokio::time::Instant,
    /// A write failed and that was said; say it again only once it works (one warning per episode).
    failing: bool,
    /// Every saved state, for the metrics endpoint.
    published: tokio::sync::watch::Sender<State>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Read(#[from] crate::host::fs::ReadError),
    #[error("{}: not a state file of this jetson-llmd: {source}", .path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
}

impl StateFile {
    pub fn new(dir: Option<&Path>, launcher: LauncherKind) -> StateFile {
        let path = dir.map(|d| d.join("state.json"));
        let state = State { pid: std::process::id(), started_at: super::Timestamp::now(), launcher, ..Default::default() };
        let (published, _) = tokio::sync::watch::channel(state.clone());
        StateFile { path, state, t0: tokio::time::Instant::now(), failing: false, published }
    }

    /// The state as last saved, and every save after.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<State> {
        self.published.subscribe()
    }

    /// Reads `<dir>/state.json` (at most 1 MiB); Ok(None) when there is none.
    pub async fn read(dir: &Path) -> Result<Option<State>, StateError> {
        read_json(&dir.join("state.json")).await
    }

    /// The last write failed (a full disk, a missing directory): state.json is behind what the
    /// subscribers see, and the supervisor writes it again on its next board sample.
    pub fn behind(&self) -> bool {
        self.failing
    }

    /// Hands the state as it is now to the subscribers (the guard, /metrics) without writing it.
    pub fn publish(&self) {
        self.published.send_replace(self.state.clone());
    }

    /// Publishes the model `model_conf` names as the one pinned, before anything serves: the
    /// guard then knows the pin before its first connection (issue 30), and refuses what would
    /// load another model first. Nothing when the file is invalid (the guard then refuses every
    /// model-loading request; the boot says why).
    pub async fn pin_from(&mut self, model_conf: &Path) {
        if let Ok(c) = crate::conf::modelconf::read(model_conf).await {
            self.state.model = Some(c.model.to_string());
            self.publish();
        }
    }

    /// Starts a new timeline (a new boot sequence after an Ollama restart).
    pub fn restart_timeline(&mut self) {
        self.state.timeline.clear();
        self.t0 = tokio::time::Instant::now();
    }

    pub async fn event(&mut self, event: &str) {
        let after_ms = self.t0.elapsed().as_millis() as u64;
        tracing::info!("timeline: {event} (+{after_ms} ms)");
        self.state.timeline.push(TimelineEvent { event: event.to_string(), at: super::Timestamp::now(), after_ms });
        self.save().await;
    }

    pub async fn save(&mut self) {
        self.published.send_replace(self.state.clone());
        let Some(path) = &self.path else { return };
        let text = match serde_json::to_vec_pretty(&self.state) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("cannot encode the state: {e}");
                return;
            }
        };
        // 0644: an unprivileged `jetson-llmd status` reads it.
        match crate::host::fs::write_atomic(path, text, 0o644).await {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("{} is written again", path.display());
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!("cannot write {}: {e}; `jetson-llmd status` will show stale state until it works", path.display());
            }
            Err(_) => {}
        }
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match crate::host::fs::read_capped(path, crate::host::fs::cap::STATE).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|source| StateError::Parse { path: path.to_path_buf(), source })
}

/// The model a running supervisor has chosen to keep warm (state.json), for the preload and
/// keepalive units: the supervisor is the one that resolves model.conf (an invalid edit keeps the
/// last good model, a switch that failed falls back to the old one), and the units must not
/// load something else behind its back. None when no supervisor runs (then model.conf rules).
pub async fn chosen_model(dir: &Path) -> Option<crate::conf::ModelName> {
    let s = StateFile::read(dir).await.ok()??;
    if crate::host::liveness(s.pid) != crate::host::Liveness::Running || !is_supervisor(s.pid).await {
        return None;
    }
    crate::conf::ModelName::parse(s.model.as_deref()?).ok()
}

/// A reused pid is not our supervisor: its /proc comm must be ours when it can be read.
async fn is_supervisor(pid: u32) -> bool {
    match tokio::fs::read_to_string(format!("/proc/{pid}/comm")).await {
        Ok(c) => c.trim().starts_with("jetson"),
        Err(_) => true,
    }
}

/// The standalone keepalive's last ping (`<state_dir>/keepalive.json`), for `status`.
pub async fn write_keepalive(dir: &Path, t: &TickRecord) {
    let path = dir.join("keepalive.json");
    let Ok(text) = serde_json::to_vec_pretty(t) else { return };
    if let Err(e) = crate::host::fs::write_atomic(&path, text, 0o644).await {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

pub async fn read_keepalive(dir: &Path) -> Result<Option<TickRecord>, StateError> {
    read_json(&dir.join("keepalive.json")).await
}

/// What the last `jetson-llmd preload` (ollama-preload.service) did, typed, in
/// `<state_dir>/preload.json`: the supervisor reads its result here, not from the unit's exit
/// code or its journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreloadRecord {
    pub at: super::Timestamp,
    /// The model it loaded (or tried to).
    pub model: String,
    #[serde(default)]
    pub report: Option<WarmReport>,
    #[serde(default)]
    pub failure: Option<crate::failure::Reported>,
}

const PRELOAD_JSON: &str = "preload.json";

pub async fn write_preload(dir: &Path, r: &PreloadRecord) {
    if !dir.is_dir() {
        // A preload run by hand with no supervisor (and no /run/jetson-llmd): nobody to tell.
        return;
    }
    let path = dir.join(PRELOAD_JSON);
    let Ok(text) = serde_json::to_vec_pretty(r) else { return };
    if let Err(e) = crate::host::fs::write_atomic(&path, text, 0o644).await {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

pub async fn read_preload(dir: &Path) -> Result<Option<PreloadRecord>, StateError> {
    read_json(&dir.join(PRELOAD_JSON)).await
}

/// Before a preload runs: a record left by an earlier one is not this one's result.
pub async fn clear_preload(dir: &Path) {
    let path = dir.join(PRELOAD_JSON);
    if let Err(e) = tokio::fs::remove_file(&path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_typed_and_tolerates_missing_fields() {
        let d = tempfile::tempdir().expect("tmp");
        let mut f = StateFile::new(Some(d.path()), LauncherKind::Process);
        f.state.stage = Stage::CpuFallback;
        f.event("ollama started").await;
        let back = StateFile::read(d.path()).await.expect("read").expect("some");
        assert_eq!(back, f.state);
        std::fs::write(d.path().join("state.json"), r#"{"pid": 7, "stage": "ready"}"#).expect("w");
        let s = StateFile::read(d.path()).await.expect("read").expect("some");
        assert_eq!((s.pid, s.stage), (7, Stage::Ready));
        std::fs::write(d.path().join("state.json"), "{").expect("w");
        assert!(matches!(StateFile::read(d.path()).await, Err(StateError::Parse { .. })));
        assert!(StateFile::read(&d.path().join("none")).await.expect("none").is_none());
    }
}
