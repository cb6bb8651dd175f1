//! Noticing edits of one file through its directory (inotify): editors save by writing a new file
//! and renaming it over the old one, and may remove the file for a moment, so the directory is
//! watched, not the file. A small thread blocks on the inotify descriptor (tokio's safe AsyncFd
//! constructors are deprecated and `unsafe` is forbidden here) and wakes the runtime through a
//! channel; nothing polls while nothing happens.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::ffi::OsString;
use std::path::Path;
use tokio::sync::mpsc;

/// Watches one file name in its directory.
pub struct FileWatch {
    rx: mpsc::UnboundedReceiver<()>,
}

impl FileWatch {
    pub fn new(path: &Path) -> std::io::Result<FileWatch> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name: OsString = path.file_name().map(OsString::from).ok_or_else(|| std::io::Error::other(format!("{}: no file name", path.display())))?;
        let ino = Inotify::init(InitFlags::IN_CLOEXEC).map_err(std::io::Error::from)?;
        let flags = AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_DELETE | AddWatchFlags::IN_ATTRIB;
        ino.add_watch(dir, flags).map_err(|e| std::io::Error::other(format!("cannot watch {}: {e}", dir.display())))?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new().name("conf-watch".into()).spawn(move || {
            // Ends at the first event after the receiver is gone, or when inotify fails.
            while let Ok(events) = ino.read_events() {
                let ours = events.iter().any(|e| e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) || e.name.as_deref() == Some(name.as_os_str()));
                if ours && tx.send(()).is_err() {
                    return;
                }
            }
        })?;
        Ok(FileWatch { rx })
    }

    /// Resolves at the next event about the file (or a queue overflow, which may hide one).
    /// Cancel-safe.
    pub async fn changed(&mut self) -> std::io::Result<()> {
        match self.rx.recv().await {
            Some(()) => Ok(()),
            None => Err(std::io::Error::other("the inotify watch ended")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sees_in_place_writes_renames_and_removal_but_not_other_files() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("model.conf");
        std::fs::write(&p, "a").expect("w");
        let mut w = FileWatch::new(&p).expect("watch");
        std::fs::write(d.path().join("other"), "x").expect("w");
        assert!(tokio::time::timeout(Duration::from_millis(300), w.changed()).await.is_err(), "another file is not news");
        std::fs::write(&p, "b").expect("w");
        assert!(tokio::time::timeout(Duration::from_secs(5), w.changed()).await.is_ok(), "in-place write");
        std::fs::write(d.path().join(".model.conf.swp"), "c").expect("w");
        std::fs::rename(d.path().join(".model.conf.swp"), &p).expect("mv");
        assert!(tokio::time::timeout(Duration::from_secs(5), w.changed()).await.is_ok(), "rename over it");
        std::fs::remove_file(&p).expect("rm");
        assert!(tokio::time::timeout(Duration::from_secs(5), w.changed()).await.is_ok(), "removed");
    }
}
