//! The hardware and model catalogue the emulator pretends to have.
//!
//! Figures for the Orin Nano 8 GB come from the seed write-up (tok/s, RAM under load, cold load)
//! and from Ollama's discovery line on JetPack 6 (total 7.4 GiB, iGPU, compute 8.7).

use std::time::Duration;

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct GpuSpec {
    pub id: String,
    pub compute: String,
    pub name: String,
    pub description: String,
    pub libdirs: String,
    pub driver: String,
    pub pci_id: String,
    pub kind: String,
}

#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Full name with tag, e.g. `gemma4:e2b-it-qat`.
    pub name: String,
    pub family: String,
    pub parameter_size: String,
    pub quantization: String,
    /// Bytes on disk (what /api/tags reports).
    pub disk_size: u64,
    /// Bytes in memory once loaded at `num_ctx` (weights + KV cache + graph; /api/ps `size`).
    pub loaded_size: u64,
    /// Extra bytes per 1024 tokens of context beyond 4096.
    pub kv_per_1k: u64,
    /// Layers the model has (for `offloaded N/M layers to GPU`; GGUF `<arch>.block_count`).
    pub layers: u32,
    /// GGUF `<arch>.attention.head_count_kv` and `.key_length` (for a KV-cache estimate).
    pub kv_heads: u32,
    pub head_dim: u32,
    /// Cold load time on the real board, before `time_scale`.
    pub load_time: Duration,
    pub gpu_tok_s: f64,
    pub cpu_tok_s: f64,
    /// PARAMETER num_ctx baked into the model, if any.
    pub num_ctx: Option<u64>,
    pub context_length: u64,
    /// Manifest digest (what /api/tags and /api/ps show); differs for a model created FROM another.
    pub digest: String,
    /// The weights file (sha256 of the GGUF blob); shared by a model created FROM another. The
    /// scheduler keys runners by it (server/sched.go schedulerModelKey: ModelPath).
    pub blob: String,
}

impl ModelSpec {
    /// Memory a runner needs at a given context size.
    pub fn size_at(&self, num_ctx: u64) -> u64 {
        let base_ctx = self.num_ctx.unwrap_or(4096);
        if num_ctx >= base_ctx {
            self.loaded_size + (num_ctx - base_ctx) / 1024 * self.kv_per_1k
        } else {
            self.loaded_size.saturating_sub((base_ctx - num_ctx) / 1024 * self.kv_per_1k)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub version: String,
    pub gpu: Option<GpuSpec>,
    /// Physical memory reported as `total` in the discovery line.
    pub total_memory: u64,
    /// Memory the GPU may use (`available` in the discovery line). On a Jetson this is the same
    /// pool as system RAM.
    pub gpu_available: u64,
    /// System memory available to runners (MemAvailable at boot).
    pub system_available: u64,
    /// Models the "registry" knows (pullable).
    pub registry: Vec<ModelSpec>,
    /// Models present on disk at start.
    pub local: Vec<String>,
}

#[allow(clippy::too_many_arguments)] // one row of the catalogue table below
fn model(name: &str, family: &str, params: &str, disk_gb: f64, loaded_gb: f64, load_s: u64, gpu: f64, cpu: f64, ctx: Option<u64>) -> ModelSpec {
    let digest = digest_of(name);
    ModelSpec {
        name: name.into(),
        family: family.into(),
        parameter_size: params.into(),
        quantization: "Q4_0".into(),
        disk_size: (disk_gb * GIB as f64) as u64,
        loaded_size: (loaded_gb * GIB as f64) as u64,
        // 36 layers x 2 KV heads x (80 + 80) x 2 bytes x 1024 tokens: 22.5 MiB per 1k of context,
        // so /api/show's architecture keys and the footprint agree.
        kv_per_1k: 36 * 2 * 160 * 2 * 1024,
        layers: 36,
        kv_heads: 2,
        head_dim: 80,
        load_time: Duration::from_secs(load_s),
        gpu_tok_s: gpu,
        cpu_tok_s: cpu,
        num_ctx: ctx,
        context_length: 131072,
        blob: digest_of(&format!("{name}#blob")),
        digest,
    }
}

/// A stable 64-hex-digit pseudo sha256 for a name.
pub fn digest_of(s: &str) -> String {
    format!("{:032x}{:032x}", fnv(s), fnv(&format!("{s}#")))
}

/// Stable pseudo-digest so the same model always shows the same digest.
pub fn fnv(s: &str) -> u128 {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in s.bytes() {
        h ^= b as u128;
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    h
}

impl Profile {
    /// The seed's board: Jetson Orin Nano 8 GB on JetPack 6 with Ollama 0.30.6.
    pub fn orin_nano_8gb() -> Profile {
        Profile {
            name: "orin-nano-8gb".into(),
            version: "0.30.6".into(),
            gpu: Some(GpuSpec {
                id: "GPU-2f6a8c1e-0b7d-5e3f-9a41-7c2d8e6b5a90".into(),
                compute: "8.7".into(),
                name: "CUDA0".into(),
                description: "Orin".into(),
                libdirs: "ollama,cuda_jetpack6".into(),
                driver: "12.6".into(),
                pci_id: "0000:00:00.0".into(),
                kind: "iGPU".into(),
            }),
            total_memory: (7.4 * GIB as f64) as u64,
            gpu_available: (5.1 * GIB as f64) as u64,
            system_available: (5.6 * GIB as f64) as u64,
            registry: vec![
                // Seed: 4.3 GB QAT download; 3.6 GB in memory at 8k on the GPU; cold load 30-70 s.
                model("gemma4:e2b-it-qat", "gemma4", "5.1B", 4.3, 3.5, 60, 25.7, 12.4, None),
                model("gemma3:4b", "gemma3", "4.3B", 3.3, 4.2, 20, 17.5, 17.5, None),
                // Seed: 4.9 GB on disk and "too large": more than the board can hold at once.
                model("llama3.1:8b", "llama", "8.0B", 4.9, 6.3, 40, 9.0, 8.0, None),
                model("llama3.2:3b", "llama", "3.2B", 2.0, 2.8, 12, 18.0, 15.0, None),
                model("qwen3.5:2b", "qwen3", "2.0B", 2.7, 2.9, 12, 22.0, 18.0, None),
            ],
            local: vec!["gemma4:e2b-it-qat".into(), "gemma3:4b".into(), "llama3.1:8b".into()],
        }
    }

    /// The real peer's host: Ollama v0.24.0 on an x86 machine without a GPU, with the two tiny
    /// models `scripts/real-ollama seed` creates (random weights; 64x2 and 128x3 llama blocks).
    /// The differential scenarios run the same requests against both and compare.
    pub fn cpu_host() -> Profile {
        let tiny = |name: &str, disk: u64, loaded: u64| ModelSpec {
            quantization: "F32".into(),
            disk_size: disk,
            loaded_size: loaded,
            kv_per_1k: 256 * 1024,
            layers: 2,
            kv_heads: 4,
            head_dim: 16,
            load_time: Duration::from_millis(300),
            context_length: 2048,
            ..model(name, "llama", "0.04M", 0.0, 0.0, 0, 0.0, 2000.0, None)
        };
        Profile {
            name: "cpu-host".into(),
            version: "0.24.0".into(),
            gpu: None,
            total_memory: 23 * GIB,
            gpu_available: 0,
            system_available: 20 * GIB,
            registry: vec![tiny("tiny-a:latest", 488_416, 40 * MIB), tiny("tiny-b:latest", 2_280_704, 60 * MIB)],
            local: vec!["tiny-a:latest".into(), "tiny-b:latest".into()],
        }
    }

    pub fn by_name(name: &str) -> Option<Profile> {
        match name {
            "orin-nano-8gb" | "orin-nano" | "default" => Some(Profile::orin_nano_8gb()),
            "cpu-host" => Some(Profile::cpu_host()),
            _ => None,
        }
    }

    pub fn registry_model(&self, name: &str) -> Option<&ModelSpec> {
        self.registry.iter().find(|m| m.name == name)
    }
}
