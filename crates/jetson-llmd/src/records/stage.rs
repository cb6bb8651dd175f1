//! Where the supervisor stands, as state.json, `status --json`, /metrics and the guard read it.

use serde::{Deserialize, Serialize};

/// The supervisor's stage, as `status --json` and state.json show it (kebab-case, stable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Starting,
    StartingOllama,
    WaitingForApi,
    CheckingGpu,
    Preloading,
    StartingKeepalive,
    Ready,
    /// Ollama exited or its unit went down; it is started again (or awaited) with backoff.
    OllamaDown,
    OllamaUnreachable,
    /// Ollama could not be started (missing binary, the unit failed to start).
    OllamaFailed,
    PortInUse,
    ModelMissing,
    LoadFailed,
    NotResident,
    PartlyOnGpu,
    /// Out of memory for a model that never loaded here and does not fit by its estimate.
    DoesNotFit,
    PreloadFailed,
    CpuFallback,
    RebootRequired,
    ConfigInvalid,
    SystemdError,
    Stopping,
    /// A stage written by a newer jetson-llmd.
    #[serde(other)]
    Unknown,
}

impl Stage {
    /// Stages that mean something is wrong (logged at WARN; terminal ones at ERROR).
    pub fn is_failure(self) -> bool {
        !matches!(self, Stage::Starting | Stage::StartingOllama | Stage::WaitingForApi | Stage::CheckingGpu | Stage::Preloading | Stage::StartingKeepalive | Stage::Ready | Stage::Stopping)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Starting => "starting",
            Stage::StartingOllama => "starting-ollama",
            Stage::WaitingForApi => "waiting-for-api",
            Stage::CheckingGpu => "checking-gpu",
            Stage::Preloading => "preloading",
            Stage::StartingKeepalive => "starting-keepalive",
            Stage::Ready => "ready",
            Stage::OllamaDown => "ollama-down",
            Stage::OllamaUnreachable => "ollama-unreachable",
            Stage::OllamaFailed => "ollama-failed",
            Stage::PortInUse => "port-in-use",
            Stage::ModelMissing => "model-missing",
            Stage::LoadFailed => "load-failed",
            Stage::NotResident => "not-resident",
            Stage::PartlyOnGpu => "partly-on-gpu",
            Stage::DoesNotFit => "does-not-fit",
            Stage::PreloadFailed => "preload-failed",
            Stage::CpuFallback => "cpu-fallback",
            Stage::RebootRequired => "reboot-required",
            Stage::ConfigInvalid => "config-invalid",
            Stage::SystemdError => "systemd-error",
            Stage::Stopping => "stopping",
            Stage::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_are_stable_kebab_case() {
        for s in [Stage::Ready, Stage::CpuFallback, Stage::RebootRequired, Stage::WaitingForApi, Stage::PortInUse] {
            assert_eq!(serde_json::to_string(&s).expect("json"), format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<Stage>(&format!("\"{s}\"")).expect("back"), s);
        }
        assert_eq!(serde_json::from_str::<Stage>("\"from-the-future\"").expect("other"), Stage::Unknown);
    }
}
