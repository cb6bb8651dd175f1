//! Everything that touches the host: files under `--root`, the journal, sd_notify, systemd over
//! D-Bus, signals, process liveness and the kernel's memory knobs. Every read from outside is
//! bounded (size, time) and never blocks the async runtime.

pub mod accounts;
pub mod bench_mark;
pub mod fs;
pub mod journal;
pub mod memory;
pub mod notify;
pub mod probe;
pub mod signals;
pub mod systemd;
pub mod watch;

use std::path::{Path, PathBuf};

/// `path` as seen under `--root` (absolute paths are re-anchored at root).
pub fn rooted(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(rel) => root.join(rel),
        Err(_) => root.join(path),
    }
}

/// Whether a process still runs, as far as an unprivileged caller can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    Running,
    NotRunning,
    /// The check itself failed (not the usual "another user's process").
    Unknown,
}

/// kill(pid, 0): ESRCH means gone; EPERM means it exists but belongs to someone else (a root
/// supervisor seen by an unprivileged `status`), which is still "running".
pub fn liveness(pid: u32) -> Liveness {
    let Ok(p) = i32::try_from(pid) else { return Liveness::Unknown };
    if p <= 0 {
        return Liveness::Unknown;
    }
    liveness_of(nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None))
}

fn liveness_of(r: nix::Result<()>) -> Liveness {
    match r {
        Ok(()) | Err(nix::errno::Errno::EPERM) => Liveness::Running,
        Err(nix::errno::Errno::ESRCH) => Liveness::NotRunning,
        Err(_) => Liveness::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    #[test]
    fn another_users_process_is_running() {
        assert_eq!(liveness_of(Ok(())), Liveness::Running);
        assert_eq!(liveness_of(Err(Errno::EPERM)), Liveness::Running);
        assert_eq!(liveness_of(Err(Errno::ESRCH)), Liveness::NotRunning);
        assert_eq!(liveness_of(Err(Errno::EINVAL)), Liveness::Unknown);
        assert_eq!(liveness(std::process::id()), Liveness::Running);
        assert_eq!(liveness(0), Liveness::Unknown);
    }

    #[test]
    fn rooted_reanchors() {
        assert_eq!(rooted(Path::new("/tmp/r"), Path::new("/etc/x")), PathBuf::from("/tmp/r/etc/x"));
        assert_eq!(rooted(Path::new("/"), Path::new("/etc/x")), PathBuf::from("/etc/x"));
    }
}
