//! Typed failures and the exit codes they mean (docs/usage.md lists them per command).

/// Exit codes shared by every command.
pub mod code {
    pub const OK: i32 = 0;
    /// Not warm, degraded, or another failure.
    pub const FAILED: i32 = 1;
    /// Bad command line or configuration.
    pub const USAGE: i32 = 2;
    /// Ollama's API did not answer.
    pub const UNREACHABLE: i32 = 3;
    /// GPU memory is unallocatable; only a reboot helps. Listed in RestartPreventExitStatus=.
    pub const REBOOT_REQUIRED: i32 = 4;
    /// Ollama runs on the CPU (no usable CUDA GPU, or the model placed on the CPU).
    /// Listed in RestartPreventExitStatus=.
    pub const ON_CPU: i32 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("Ollama is unreachable: {0}")]
    Unreachable(ollama_client::Error),
    #[error("model {model} is on the CPU (0% GPU): {hint}")]
    OnCpu { model: String, hint: String },
    #[error("model {model} is only {percent}% on the GPU (at least {min}% wanted): the model plus its context do not fit; use a smaller model or a smaller num_ctx")]
    PartlyOnGpu { model: String, percent: u8, min: u8 },
    #[error("model {model} is not available: {detail}")]
    Missing { model: String, detail: String },
    #[error("GPU memory cannot be allocated even after dropping caches ({detail}); reboot the Jetson (sudo reboot)")]
    RebootRequired { detail: String },
    #[error("model {model} does not fit: {detail}; use a smaller num_ctx or a smaller (QAT) tag")]
    DoesNotFit { model: String, detail: String },
    #[error("Ollama failed to load {model}: {detail}")]
    LoadFailed { model: String, detail: String },
    #[error("model {model} loaded but does not appear in /api/ps; something unloaded it at once")]
    NotResident { model: String },
    #[error("{0}")]
    Config(String),
    #[error("Ollama runs on the CPU: {reason}")]
    GpuMissing { reason: String },
    #[error("cannot start Ollama: {0}")]
    OllamaStart(String),
    #[error("something else already serves {addr} (another `ollama serve`, or ollama.service?); stop it (sudo systemctl stop ollama) or set another OLLAMA_HOST")]
    PortInUse { addr: String },
    #[error("Ollama stopped: {0}")]
    OllamaDown(String),
    #[error("cannot read Ollama's log: {0}")]
    LogUnreadable(String),
    #[error("{0}")]
    Preload(String),
    #[error("{0}")]
    Systemd(String),
    #[error("stopped by a signal before the work was done")]
    Cancelled,
}

impl Failure {
    /// An allocation failure (a load that ran out of memory, even after drop_caches).
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            Failure::RebootRequired { .. } | Failure::DoesNotFit { .. } => true,
            Failure::LoadFailed { detail, .. } => ollama_client::looks_like_oom(detail),
            _ => false,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Unreachable(_) => code::UNREACHABLE,
            Failure::RebootRequired { .. } => code::REBOOT_REQUIRED,
            Failure::Config(_) => code::USAGE,
            Failure::GpuMissing { .. } | Failure::OnCpu { .. } => code::ON_CPU,
            _ => code::FAILED,
        }
    }
}

/// A failure as a worker (ollama-preload.service, ollama-keepalive.service) reports it to the
/// supervisor, in preload.json and keepalive.json: typed, with the model and the words, so the
/// supervisor decides from what happened and not from an exit code or a journal line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reported {
    RebootRequired {
        detail: String,
    },
    OnCpu {
        model: String,
        hint: String,
    },
    PartlyOnGpu {
        model: String,
        percent: u8,
        min: u8,
    },
    DoesNotFit {
        model: String,
        detail: String,
    },
    Missing {
        model: String,
        detail: String,
    },
    LoadFailed {
        model: String,
        detail: String,
    },
    NotResident {
        model: String,
    },
    Unreachable {
        url: String,
        detail: String,
    },
    Config {
        detail: String,
    },
    /// Anything else, in words (it is retried like a failed preload).
    Other {
        detail: String,
    },
}

impl Failure {
    /// What a worker writes for the supervisor.
    pub fn reported(&self) -> Reported {
        match self {
            Failure::RebootRequired { detail } => Reported::RebootRequired { detail: detail.clone() },
            Failure::OnCpu { model, hint } => Reported::OnCpu { model: model.clone(), hint: hint.clone() },
            Failure::PartlyOnGpu { model, percent, min } => Reported::PartlyOnGpu { model: model.clone(), percent: *percent, min: *min },
            Failure::DoesNotFit { model, detail } => Reported::DoesNotFit { model: model.clone(), detail: detail.clone() },
            Failure::Missing { model, detail } => Reported::Missing { model: model.clone(), detail: detail.clone() },
            Failure::LoadFailed { model, detail } => Reported::LoadFailed { model: model.clone(), detail: detail.clone() },
            Failure::NotResident { model } => Reported::NotResident { model: model.clone() },
            Failure::Unreachable(ollama_client::Error::Unreachable { url, detail }) => Reported::Unreachable { url: url.clone(), detail: detail.clone() },
            Failure::Config(detail) => Reported::Config { detail: detail.clone() },
            other => Reported::Other { detail: other.to_string() },
        }
    }
}

impl From<Reported> for Failure {
    fn from(r: Reported) -> Failure {
        match r {
            Reported::RebootRequired { detail } => Failure::RebootRequired { detail },
            Reported::OnCpu { model, hint } => Failure::OnCpu { model, hint },
            Reported::PartlyOnGpu { model, percent, min } => Failure::PartlyOnGpu { model, percent, min },
            Reported::DoesNotFit { model, detail } => Failure::DoesNotFit { model, detail },
            Reported::Missing { model, detail } => Failure::Missing { model, detail },
            Reported::LoadFailed { model, detail } => Failure::LoadFailed { model, detail },
            Reported::NotResident { model } => Failure::NotResident { model },
            Reported::Unreachable { url, detail } => Failure::Unreachable(ollama_client::Error::Unreachable { url, detail }),
            // The worker read model.conf itself and found it invalid: the supervisor checked it
            // just before, so it changed meanwhile; retried like a failed preload (the next
            // attempt reads it again), never a reason to exit 2 while a model may run.
            Reported::Config { detail } => Failure::Preload(detail),
            Reported::Other { detail } => Failure::Preload(detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_failures_come_back_as_the_same_failure() {
        let s = || "x".to_string();
        let all = [
            Failure::RebootRequired { detail: s() },
            Failure::OnCpu { model: "m".into(), hint: s() },
            Failure::PartlyOnGpu { model: "m".into(), percent: 40, min: 100 },
            Failure::DoesNotFit { model: "m".into(), detail: s() },
            Failure::Missing { model: "m".into(), detail: s() },
            Failure::LoadFailed { model: "m".into(), detail: s() },
            Failure::NotResident { model: "m".into() },
            Failure::Unreachable(ollama_client::Error::Unreachable { url: "u".into(), detail: s() }),
        ];
        for f in all {
            let json = serde_json::to_string(&f.reported()).expect("json");
            let back: Failure = serde_json::from_str::<Reported>(&json).expect("typed").into();
            assert_eq!((back.to_string(), back.exit_code()), (f.to_string(), f.exit_code()), "{json}");
        }
        assert!(serde_json::to_string(&Failure::RebootRequired { detail: s() }.reported()).expect("j").contains(r#""kind":"reboot-required""#));
        let other: Failure = Failure::Cancelled.reported().into();
        assert!(matches!(other, Failure::Preload(_)));
    }
}
