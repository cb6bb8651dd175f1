//! The one remediation for unallocatable GPU memory short of a reboot:
//! `sync; echo 3 > /proc/sys/vm/drop_caches`.

use std::path::PathBuf;

#[allow(async_fn_in_trait)]
pub trait MemoryRelief {
    async fn drop_caches(&self) -> std::io::Result<()>;
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
