//! Bounded reads and atomic writes.
//!
//! A file we read from outside may be a symlink to /dev/zero (endless), a FIFO (a read that
//! never returns) or simply huge. [`read_capped`] opens without blocking, insists on a regular
//! file and reads at most a stated cap, all on the blocking pool.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Caps for the files we read (bytes).
pub mod cap {
    pub const MODEL_CONF: u64 = 64 << 10;
    pub const CONFIG: u64 = 256 << 10;
    pub const STATE: u64 = 1 << 20;
    pub const PROC: u64 = 256 << 10;
    /// A saved Ollama log for `gpu-check --log`.
    pub const LOG: u64 = 64 << 20;
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: not found", .path.display())]
    NotFound { path: PathBuf },
    #[error("{}: is {kind}, not a regular file; point it at a regular file", .path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: larger than {} KiB; this file should be small, check what it is", .path.display(), .cap / 1024)]
    TooLarge { path: PathBuf, cap: u64 },
    #[error("{}: cannot read: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl ReadError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::NotFound { .. })
    }
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Blocking version of [`read_capped`]; for callers already off the runtime.
pub fn read_capped_blocking(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => ReadError::NotFound { path: path.to_path_buf() },
        _ => ReadError::Io { path: path.to_path_buf(), source },
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    let flags = (nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY).bits();
    let f = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular { path: path.to_path_buf(), kind: kind_of(meta.file_type()) });
    }
    let mut out = Vec::new();
    f.take(cap + 1).read_to_end(&mut out).map_err(io)?;
    if out.len() as u64 > cap {
        return Err(ReadError::TooLarge { path: path.to_path_buf(), cap });
    }
    Ok(out)
}

/// Reads a regular file up to `cap` bytes on the blocking pool.
pub async fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let p = path.to_path_buf();
    match tokio::task::spawn_blocking(move || read_capped_blocking(&p, cap)).await {
        Ok(r) => r,
        Err(e) => Err(ReadError::Io { path: path.to_path_buf(), source: std::io::Error::other(e) }),
    }
}

/// [`read_capped`] as text; non-UTF-8 bytes become U+FFFD.
pub async fn read_text(path: &Path, cap: u64) -> Result<String, ReadError> {
    read_capped(path, cap).await.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Writes `bytes` to `path` so a reader sees the old file or the new one, never half of one:
/// a temporary file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic_blocking(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// [`write_atomic_blocking`] on the blocking pool.
pub async fn write_atomic(path: &Path, bytes: Vec<u8>, mode: u32) -> std::io::Result<()> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomic_blocking(&p, &bytes, mode)).await.map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_fifos_devices_directories_and_big_files() {
        let d = tempfile::tempdir().expect("tmp");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), read_capped(&fifo, 10)).await.expect("a FIFO must not block").expect_err("fifo");
        assert!(e.to_string().ends_with("is a FIFO, not a regular file; point it at a regular file"), "{e}");
        let zero = d.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
        assert!(matches!(read_capped(&zero, 10).await, Err(ReadError::NotRegular { kind: "a character device", .. })));
        assert!(matches!(read_capped(d.path(), 10).await, Err(ReadError::NotRegular { kind: "a directory", .. })));
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'x'; 11]).expect("w");
        assert!(matches!(read_capped(&big, 10).await, Err(ReadError::TooLarge { cap: 10, .. })));
        assert_eq!(read_capped(&big, 11).await.expect("fits").len(), 11);
        assert!(read_capped(&d.path().join("none"), 10).await.expect_err("missing").is_not_found());
    }

    #[tokio::test]
    async fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("sub/state.json");
        write_atomic(&p, b"one".to_vec(), 0o644).await.expect("w");
        write_atomic(&p, b"two".to_vec(), 0o644).await.expect("w");
        assert_eq!(std::fs::read(&p).expect("r"), b"two");
        assert_eq!(std::fs::read_dir(p.parent().expect("dir")).expect("ls").count(), 1);
    }
}
