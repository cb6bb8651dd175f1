//! The one remediation for unallocatable GPU memory short of a reboot:
//! `sync; echo 3 > /proc/sys/vm/drop_caches`.

use std::path::PathBuf;

#[allow(async_fn_in_trait)]
pub trait MemoryRelief {
    async fn drop_caches(&self) -> std::io::Result<()>;
    /// False when there is nothing left to try (then an out-of-memory load is final at once).
    fn available(&self) -> bool {
        true
    }
}

/// No remediation left (caches were already dropped once for this attempt).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRelief;

impl MemoryRelief for NoRelief {
    async fn drop_caches(&self) -> std::io::Result<()> {
        Err(std::io::Error::other("caches were already dropped once for this switch"))
    }
    fn available(&self) -> bool {
        false
    }
}

/// Writes to `<root>/proc/sys/vm/drop_caches` after a sync, on the blocking pool.
#[derive(Debug, Clone)]
pub struct DropCaches {
    pub path: PathBuf,
}

impl DropCaches {
    pub fn under(root: &std::path::Path) -> DropCaches {
        DropCaches { path: super::rooted(root, std::path::Path::new("/proc/sys/vm/drop_caches")) }
    }
}

impl MemoryRelief for DropCaches {
    async fn drop_caches(&self) -> std::io::Result<()> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            nix::unistd::sync();
            // Not write_atomic: this is a kernel knob, written in place.
            std::fs::write(&path, "3\n")
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// The /proc/meminfo fields jetson-llmd reads (kB, as the kernel writes them).
#[derive(Debug, serde::Serialize, Default, Clone, PartialEq)]
pub struct MemoryInfo {
    pub mem_total_kb: Option<u64>,
    pub mem_available_kb: Option<u64>,
    pub swap_total_kb: Option<u64>,
    pub swap_free_kb: Option<u64>,
    pub cma_total_kb: Option<u64>,
    pub cma_free_kb: Option<u64>,
}

/// Parses /proc/meminfo text; a missing or unparsable field is None ("n/a"), never a guess.
pub fn meminfo(text: &str) -> MemoryInfo {
    let get = |k: &str| {
        text.lines().find_map(|l| {
            let (key, rest) = l.split_once(':')?;
            (key.trim() == k).then(|| rest.split_whitespace().next()?.parse().ok()).flatten()
        })
    };
    MemoryInfo { mem_total_kb: get("MemTotal"), mem_available_kb: get("MemAvailable"), swap_total_kb: get("SwapTotal"), swap_free_kb: get("SwapFree"), cma_total_kb: get("CmaTotal"), cma_free_kb: get("CmaFree") }
}

/// MemAvailable in bytes from `<root>/proc/meminfo` (bounded read), if the kernel says.
pub async fn mem_available(root: &std::path::Path) -> Option<u64> {
    let text = super::fs::read_text(&super::rooted(root, std::path::Path::new("/proc/meminfo")), super::fs::cap::PROC).await.ok()?;
    meminfo(&text).mem_available_kb.map(|kb| kb * 1024)
}
