//! Memory admission before a switch, and the fit table.
//!
//! On 8 GB of unified memory a model that does not fit does not fail cleanly: it lands partly
//! on the CPU, or pushes the board into swap on eMMC (17 -> under 2 tok/s), and the unload of
//! the old model that made room may leave GPU memory unallocatable. So before the old model is
//! touched, the new one's footprint (measured here before, else estimated from its architecture)
//! is compared with what the board will have once the old one is gone.

use crate::host::fs;
use ollama_client::ShowResponse;
use serde::{Deserialize, Serialize};
use std::path::Path;

const MIB: u64 = 1 << 20;
/// llama-server's CUDA context and compute graph beyond weights and KV cache. An assumption, not
/// a measurement (no board here): the fit table replaces the whole estimate after the first load.
pub const RUNNER_OVERHEAD: u64 = 320 * MIB;
/// Most entries kept in the fit table.
const MAX_ENTRIES: usize = 64;

/// A footprint measured on this machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fit {
    pub model: String,
    pub num_ctx: Option<u64>,
    /// /api/ps `size` once loaded (bytes).
    pub size: u64,
    pub size_vram: u64,
    /// Cold load time, when the load was ours and timed.
    pub load_ms: Option<u64>,
    /// MemAvailable just before and after a cold load (bytes): what the load really took from
    /// the board, page cache and all, beside what Ollama reports.
    #[serde(default)]
    pub mem_available_before: Option<u64>,
    #[serde(default)]
    pub mem_available_after: Option<u64>,
    pub measured_at: String,
}

/// `<state_dir>/fit.json`: every model and context that loaded here, with its footprint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FitTable {
    pub entries: Vec<Fit>,
}

impl FitTable {
    /// Reads the table (at most 1 MiB); a missing or unreadable one is empty (with a warning).
    pub async fn load(dir: &Path) -> FitTable {
        let path = dir.join("fit.json");
        match fs::read_capped(&path, fs::cap::STATE).await {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!("{}: not a fit table ({e}); starting a new one", path.display());
                FitTable::default()
            }),
            Err(e) if e.is_not_found() => FitTable::default(),
            Err(e) => {
                tracing::warn!("{e}; starting a new fit table");
                FitTable::default()
            }
        }
    }

    pub async fn save(&self, dir: &Path) {
        let path = dir.join("fit.json");
        let Ok(text) = serde_json::to_vec_pretty(self) else { return };
        if let Err(e) = fs::write_atomic(&path, text, 0o644).await {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }

    pub fn get(&self, model: &str, num_ctx: Option<u64>) -> Option<&Fit> {
        self.entries.iter().find(|f| f.model == model && f.num_ctx == num_ctx)
    }

    /// Replaces the entry for the same model and context; the oldest go past the cap.
    pub fn record(&mut self, fit: Fit) {
        self.entries.retain(|f| !(f.model == fit.model && f.num_ctx == fit.num_ctx));
        self.entries.push(fit);
        if self.entries.len() > MAX_ENTRIES {
            let extra = self.entries.len() - MAX_ENTRIES;
            self.entries.drain(..extra);
        }
    }
}

/// Bytes a model needs at `num_ctx`: its file (the weights), an f16 KV cache from its
/// architecture (`block_count` x `head_count_kv` x (`key_length` + `value_length`) x 2 bytes per
/// token), and the runner's overhead. None when /api/show lacks the architecture keys.
pub fn estimate(file_size: u64, show: &ShowResponse, num_ctx: u64) -> Option<u64> {
    let layers = show.arch_u64("block_count")?;
    let kv_heads = show.arch_u64("attention.head_count_kv").or_else(|| show.arch_u64("attention.head_count"))?;
    let key = show.arch_u64("attention.key_length").or_else(|| Some(show.arch_u64("embedding_length")? / show.arch_u64("attention.head_count")?.max(1)))?;
    let value = show.arch_u64("attention.value_length").unwrap_or(key);
    let trained = show.arch_u64("context_length").unwrap_or(u64::MAX);
    let ctx = num_ctx.min(trained);
    let kv = layers.saturating_mul(kv_heads).saturating_mul(key + value).saturating_mul(2).saturating_mul(ctx);
    Some(file_size.saturating_add(kv).saturating_add(RUNNER_OVERHEAD))
}

/// The context Ollama gives a model when nothing sets num_ctx (4096 under 24 GiB of VRAM).
pub const DEFAULT_CTX: u64 = 4096;

/// What `model` needs by the estimate, and at which context: its file size from /api/tags, its
/// architecture from /api/show, the context config.toml derives it at, else its own num_ctx
/// parameter, else Ollama's default. None without the data (never a guess).
pub async fn estimated_need<A: super::OllamaApi>(api: &A, settings: &crate::conf::Settings, model: &crate::conf::ModelName) -> Option<(u64, u64)> {
    let size = api.tags().await.ok()?.models.iter().find(|m| model.matches(&m.name)).map(|m| m.size)?;
    let show = api.show(&model.full()).await.ok()?;
    let derived = settings.derived(model).and_then(|d| d.num_ctx).map(|n| n.get());
    let ctx = derived.or_else(|| show.parameter("num_ctx").and_then(|v| v.parse().ok())).unwrap_or(DEFAULT_CTX);
    Some((estimate(size, &show, ctx)?, ctx))
}

/// Memory admission of a switch from `current` to `new` (present already): None admits, Some
/// says why not, with the numbers. Without data (no MemAvailable, no architecture keys) it
/// admits and says so: it never guesses a refusal.
pub async fn admission<A: super::OllamaApi>(api: &A, settings: &crate::conf::Settings, root: &Path, current: &crate::conf::ModelName, new: &crate::conf::ModelName) -> Option<String> {
    let derived_ctx = settings.derived(new).and_then(|d| d.num_ctx).map(|n| n.get());
    let table = FitTable::load(&crate::host::rooted(root, &settings.state_dir)).await;
    let (need, source, ctx) = match table.get(&new.full(), derived_ctx) {
        Some(f) => (f.size, "measured here", derived_ctx),
        None => {
            let (need, ctx) = estimated_need(api, settings, new).await?;
            (need, "estimated", Some(ctx))
        }
    };
    let old = api.ps().await.ok()?.models.iter().find(|m| current.matches(&m.name)).map_or(0, |m| m.size);
    let avail = crate::host::memory::mem_available(root).await;
    let reserve = settings.memory_reserve_mib << 20;
    match admit(need, avail, old, reserve) {
        Verdict::Fits => None,
        Verdict::Unknown => {
            tracing::info!("no MemAvailable to check {new} against; switching without admission");
            None
        }
        Verdict::DoesNotFit { missing } => {
            let a = avail.unwrap_or(0);
            let why = format!(
                "model.conf names {new}, which does not fit: it needs ~{} ({source}{}), the board would have {} once {current} is unloaded (MemAvailable {} + {current}'s {} - reserve {}): {} missing",
                gib(need),
                ctx.map(|c| format!(" at num_ctx {c}")).unwrap_or_default(),
                gib((a + old).saturating_sub(reserve)),
                gib(a),
                gib(old),
                gib(reserve),
                gib(missing)
            );
            if settings.allow_overcommit {
                tracing::warn!("{why}; switching anyway (allow_overcommit = true): expect swap or a partial GPU load");
                None
            } else {
                Some(format!("{why}; {current} stays loaded. Use a smaller num_ctx or a smaller (QAT) tag, or set allow_overcommit = true"))
            }
        }
    }
}

/// The admission verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Fits,
    /// `missing` bytes short.
    DoesNotFit {
        missing: u64,
    },
    /// No MemAvailable to compare with (not a Linux /proc): say so, do not guess.
    Unknown,
}

/// Would `need` fit once the old model's `old_footprint` is freed, keeping `reserve` free?
pub fn admit(need: u64, mem_available: Option<u64>, old_footprint: u64, reserve: u64) -> Verdict {
    let Some(avail) = mem_available else { return Verdict::Unknown };
    let room = avail.saturating_add(old_footprint).saturating_sub(reserve);
    if need <= room {
        Verdict::Fits
    } else {
        Verdict::DoesNotFit { missing: need - room }
    }
}

pub fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(json: &str) -> ShowResponse {
        serde_json::from_str(json).expect("json")
    }

    #[test]
    fn kv_cache_from_the_architecture() {
        let s = show(r#"{"model_info":{"general.architecture":"llama","llama.block_count":32,"llama.attention.head_count_kv":8,"llama.attention.key_length":128,"llama.context_length":131072}}"#);
        // llama3.1:8b at 8k: 32 x 8 x 256 x 2 x 8192 = 1 GiB of KV cache.
        assert_eq!(estimate(0, &s, 8192), Some((1 << 30) + RUNNER_OVERHEAD));
        assert_eq!(estimate(0, &s, 1 << 30), estimate(0, &s, 131072), "capped at the trained context");
        let no_value = show(r#"{"model_info":{"general.architecture":"x","x.block_count":2,"x.attention.head_count":4,"x.embedding_length":512}}"#);
        assert_eq!(estimate(10, &no_value, 1), Some(10 + 2 * 4 * 256 * 2 + RUNNER_OVERHEAD), "key length from embedding/heads");
        assert_eq!(estimate(10, &show(r#"{"model_info":{}}"#), 1), None, "no guess without the keys");
    }

    #[test]
    fn admission_table() {
        let g = 1u64 << 30;
        let cases = [
            (3 * g, Some(2 * g), 2 * g, g / 2, Verdict::Fits),
            (4 * g, Some(2 * g), 2 * g, g / 2, Verdict::DoesNotFit { missing: g / 2 }),
            (7 * g, Some(5 * g), 0, g / 2, Verdict::DoesNotFit { missing: 5 * g / 2 }),
            (g, None, 0, 0, Verdict::Unknown),
            (g, Some(0), 0, g, Verdict::DoesNotFit { missing: g }),
        ];
        for (need, avail, old, reserve, want) in cases {
            assert_eq!(admit(need, avail, old, reserve), want, "{need} {avail:?} {old} {reserve}");
        }
    }

    #[test]
    fn the_table_keeps_one_entry_per_model_and_context() {
        let mut t = FitTable::default();
        let f = |m: &str, c: u64, size: u64| Fit { model: m.into(), num_ctx: Some(c), size, size_vram: size, load_ms: None, mem_available_before: None, mem_available_after: None, measured_at: String::new() };
        t.record(f("a", 8192, 1));
        t.record(f("a", 8192, 2));
        t.record(f("a", 4096, 3));
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.get("a", Some(8192)).map(|x| x.size), Some(2));
        for i in 0..100 {
            t.record(f("m", i, i));
        }
        assert_eq!(t.entries.len(), MAX_ENTRIES);
    }
}
