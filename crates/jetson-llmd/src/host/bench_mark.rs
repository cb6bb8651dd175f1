//! `<state_dir>/bench.pid`: a `jetson-llmd bench` of another model is running. It unloads the
//! pinned model on purpose for a while; the supervisor's residency check and the keepalive
//! stand aside meanwhile instead of reloading it under the benchmark (issue 30: 6 loads instead
//! of 2, and a table that reported "GPU 0%" for the other model). The benchmark loads the pinned
//! model back itself when it ends; a marker whose process is gone (a killed bench) is ignored.

use std::path::{Path, PathBuf};

const FILE: &str = "bench.pid";

/// Held by a running benchmark; the marker is removed when it is dropped (an error, Ctrl-C's
/// unwinding, the end).
pub struct BenchMark(PathBuf);

impl BenchMark {
    /// Writes the marker with our pid. An error leaves no marker: the benchmark then simply
    /// competes with the supervisor, as before (said by the caller).
    pub async fn take(state_dir: &Path) -> std::io::Result<BenchMark> {
        let path = state_dir.join(FILE);
        crate::host::fs::write_atomic(&path, format!("{}\n", std::process::id()).into_bytes(), 0o644).await?;
        Ok(BenchMark(path))
    }
}

impl Drop for BenchMark {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The pid of a benchmark running now, if any (its marker names a live process).
pub async fn running(state_dir: &Path) -> Option<u32> {
    let bytes = crate::host::fs::read_capped(&state_dir.join(FILE), 64).await.ok()?;
    let pid: u32 = std::str::from_utf8(&bytes).ok()?.trim().parse().ok()?;
    let alive = tokio::fs::metadata(format!("/proc/{pid}")).await.is_ok();
    alive.then_some(pid)
}

/// Returns once no benchmark is running (at once when none is), or after `at_most`. The pid has
/// no cheap wake-up without pidfd; a look every 2 s is nothing beside a tick every 4 minutes.
pub async fn until_done(state_dir: &Path, at_most: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + at_most;
    let mut said = false;
    while let Some(pid) = running(state_dir).await {
        if !said {
            said = true;
            tracing::info!("a benchmark (pid {pid}) of other models is running; the keepalive waits for it to end (it loads the model back itself)");
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// Longest a tick waits for a benchmark: a hung one must not leave the model unwatched.
pub const AT_MOST: std::time::Duration = std::time::Duration::from_secs(1800);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_mark_is_seen_while_held_and_a_dead_one_is_not() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(running(dir.path()).await, None);
        let m = BenchMark::take(dir.path()).await.expect("take");
        assert_eq!(running(dir.path()).await, Some(std::process::id()));
        drop(m);
        assert_eq!(running(dir.path()).await, None, "removed when dropped");
        std::fs::write(dir.path().join(FILE), "999999999\n").expect("w");
        assert_eq!(running(dir.path()).await, None, "a benchmark that was killed does not hold the supervisor back");
    }
}
