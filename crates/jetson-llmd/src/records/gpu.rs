//! The GPU verdict from Ollama's discovery line (state.json's `gpu`, `gpu-check --json`).

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct GpuReport {
    /// A CUDA GPU with the expected compute capability was discovered.
    pub gpu: bool,
    /// Discovery found what config.toml's `expected_compute` asks for: that GPU, or (with
    /// `expected_compute = "cpu"`, hosts without a GPU) any device at all. What the supervisor
    /// and `gpu-check` decide on.
    #[serde(default)]
    pub as_expected: bool,
    /// A discovery line was found at all (false: Ollama not started, or still discovering).
    pub discovered: bool,
    pub library: Option<String>,
    pub compute: Option<String>,
    pub expected_compute: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub libdirs: Option<String>,
    pub driver: Option<String>,
    pub total: Option<String>,
    pub available: Option<String>,
    /// "current" (0.12.4+) or "legacy".
    pub log_format: Option<String>,
    pub ollama_version: Option<String>,
    /// Why Ollama runs on the CPU (null when on the GPU).
    pub cpu_fallback_reason: Option<String>,
    /// An out-of-memory load failure was seen since the start.
    pub oom: bool,
    pub oom_line: Option<String>,
    /// Last `offloaded N/M layers to GPU`.
    pub offloaded: Option<(u32, u32)>,
    /// Something to fix although the verdict stands (e.g. the GPU runs on libraries that are
    /// not the JetPack 6 ones).
    #[serde(default)]
    pub warning: Option<String>,
    /// What the cause of a CPU fallback rests on: `log: <line>`, `disk: <path>`,
    /// `/proc/cmdline: ...`, or `none: ...` when Ollama's log at its level does not say.
    #[serde(default)]
    pub evidence: Option<String>,
}

impl GpuReport {
    /// One line for people.
    pub fn summary(&self) -> String {
        if !self.discovered {
            return "no GPU discovery line in Ollama's log yet".into();
        }
        if self.as_expected && !self.gpu {
            return format!("Ollama runs on the CPU, as expected_compute = \"cpu\" asks{}", self.available.as_deref().map(|a| format!(" ({a} available)")).unwrap_or_default());
        }
        if self.gpu {
            return format!(
                "CUDA GPU found: {} compute {}{}{}{}",
                self.description.as_deref().or(self.name.as_deref()).unwrap_or("?"),
                self.compute.as_deref().unwrap_or("?"),
                self.libdirs.as_deref().map(|l| format!(", libs {l}")).unwrap_or_default(),
                self.available.as_deref().map(|a| format!(", {a} available")).unwrap_or_default(),
                self.warning.as_deref().map(|w| format!("; warning: {w}")).unwrap_or_default()
            );
        }
        format!("Ollama runs on the CPU: {}", self.cpu_fallback_reason.as_deref().unwrap_or("no CUDA GPU was discovered"))
    }
}
