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
