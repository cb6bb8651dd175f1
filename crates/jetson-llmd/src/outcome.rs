//! Typed failures that decide the exit code (see docs/usage.md).

/// Exit codes shared by preload, keepalive and supervise.
pub mod code {
    pub const OK: i32 = 0;
    /// Not warm, on the CPU, or another failure.
    pub const FAILED: i32 = 1;
    /// Bad command line or configuration.
    pub const USAGE: i32 = 2;
    pub const UNREACHABLE: i32 = 3;
    /// GPU memory is unallocatable; only a reboot helps. Listed in RestartPreventExitStatus=.
    pub const REBOOT_REQUIRED: i32 = 4;
    /// Ollama discovered no usable CUDA GPU (supervise under systemd). Listed in RestartPreventExitStatus=.
    pub const GPU_MISSING: i32 = 5;
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
    #[error("Ollama failed to load {model}: {detail}")]
    LoadFailed { model: String, detail: String },
    #[error("model {model} loaded but does not appear in /api/ps; something unloaded it at once")]
    NotResident { model: String },
    #[error("{0}")]
    Config(String),
    #[error("Ollama runs on the CPU: {reason}")]
    GpuMissing { reason: String },
    #[error("{0}")]
    Systemd(String),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Unreachable(_) => code::UNREACHABLE,
            Failure::RebootRequired { .. } => code::REBOOT_REQUIRED,
            Failure::Config(_) => code::USAGE,
            Failure::GpuMissing { .. } => code::GPU_MISSING,
            _ => code::FAILED,
        }
    }

    /// Short words for STATUS= and `status`.
    pub fn stage(&self) -> &'static str {
        match self {
            Failure::Unreachable(_) => "ollama-unreachable",
            Failure::OnCpu { .. } => "cpu-fallback",
            Failure::PartlyOnGpu { .. } => "partly-on-gpu",
            Failure::Missing { .. } => "model-missing",
            Failure::RebootRequired { .. } => "reboot-required",
            Failure::LoadFailed { .. } => "load-failed",
            Failure::NotResident { .. } => "not-resident",
            Failure::Config(_) => "config-invalid",
            Failure::GpuMissing { .. } => "cpu-fallback",
            Failure::Systemd(_) => "systemd-error",
        }
    }
}
