//! Hardened extraction of Ollama's release tarballs into a staging directory.
//!
//! `tar::Archive::unpack` is best-effort about hostile input, so every entry is checked here
//! before a byte is written: the path (relative, no `..`, inside an allow-list of prefixes), the
//! type (regular files, directories and symlinks only), the mode (no setuid/setgid), symlink
//! targets (relative and resolving inside the staging root), and nothing is ever created through
//! a symlink or on top of an existing entry. Entry count and unpacked bytes are capped. The
//! caller has verified the sha256 of the whole file first: tar treats EOF as the end of the
//! archive, so a truncated download would otherwise unpack "successfully".

use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Which tarball: each may only write below its own prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `ollama-linux-arm64.tar.zst`: bin/ollama and lib/ollama.
    Base,
    /// `ollama-linux-arm64-jetpack6.tar.zst`: lib/ollama/cuda_jetpack6 only.
    JetPack6,
}

impl Part {
    fn allowed(self) -> &'static [&'static str] {
        match self {
            Part::Base => &["bin", "lib/ollama"],
            Part::JetPack6 => &["lib/ollama/cuda_jetpack6"],
        }
    }

    /// A path is allowed when it is below an allowed prefix, or is a directory leading to one.
    fn permits(self, rel: &str, is_dir: bool) -> bool {
        self.allowed().iter().any(|p| rel == *p || rel.starts_with(&format!("{p}/")) || (is_dir && p.starts_with(&format!("{rel}/"))))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Gzip,
}

impl Compression {
    pub fn of(path: &Path) -> Option<Compression> {
        let n = path.file_name()?.to_str()?;
        if n.ends_with(".tar.zst") {
            Some(Compression::Zstd)
        } else if n.ends_with(".tgz") || n.ends_with(".tar.gz") {
            Some(Compression::Gzip)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // Generous bounds (not measured on real tarballs here): far above what two Ollama
        // release tarballs hold, far below what fills a Jetson's eMMC.
        Limits { max_entries: 20_000, max_bytes: 12 << 30 }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub entries: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}: refused entry {entry:?}: {why}; the archive is not a genuine Ollama release, nothing was installed", .archive.display())]
    Refused { archive: PathBuf, entry: String, why: String },
    #[error("{}: corrupt or truncated archive ({detail}); download it again", .archive.display())]
    Corrupt { archive: PathBuf, detail: String },
    #[error("{}: more than {limit} entries; refusing what looks like an archive bomb", .archive.display())]
    TooManyEntries { archive: PathBuf, limit: u64 },
    #[error("{}: unpacks to more than {} MiB; refusing what looks like an archive bomb", .archive.display(), .limit >> 20)]
    TooLarge { archive: PathBuf, limit: u64 },
    #[error("{}: no space left on the device while unpacking; free some space and run again", .path.display())]
    NoSpace { path: PathBuf },
    #[error("{}: cannot write: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: does not contain {what}; is this the right tarball?", .archive.display())]
    Missing { archive: PathBuf, what: &'static str },
}

fn io_err(path: &Path, source: std::io::Error) -> ArchiveError {
    if source.raw_os_error() == Some(nix::libc::ENOSPC) || source.raw_os_error() == Some(nix::libc::EDQUOT) {
        ArchiveError::NoSpace { path: path.to_path_buf() }
    } else {
        ArchiveError::Io { path: path.to_path_buf(), source }
    }
}

/// Normalises an entry name: strips `./`, refuses absolute paths and `..`. "" is the root itself.
fn clean_path(raw: &[u8]) -> Result<String, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "the name is not UTF-8".to_string())?;
    if s.contains('\0') {
        return Err("the name contains NUL".into());
    }
    let p = Path::new(s);
    let mut parts: Vec<&str> = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
            Component::ParentDir => return Err("`..` in the path".into()),
            Component::CurDir => {}
            Component::Normal(n) => parts.push(n.to_str().unwrap_or_default()),
        }
    }
    Ok(parts.join("/"))
}

/// A symlink target is allowed when it is relative, has `..` only as a leading run (so no
/// symlinked directory can make `..` climb higher than it reads), and resolves inside the root.
fn check_link(entry: &str, target: &[u8]) -> Result<(), String> {
    let t = std::str::from_utf8(target).map_err(|_| "symlink target is not UTF-8".to_string())?;
    if t.is_empty() || t.contains('\0') {
        return Err("empty symlink target".into());
    }
    if t.starts_with('/') {
        return Err(format!("symlink to the absolute path {t:?}"));
    }
    let mut depth = entry.split('/').count() as i64 - 1;
    let mut seen_normal = false;
    for c in Path::new(t).components() {
        match c {
            Component::ParentDir if seen_normal => return Err(format!("symlink target {t:?} climbs after descending")),
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            Component::Normal(_) => seen_normal = true,
            _ => return Err(format!("symlink target {t:?} is not relative")),
        }
        if depth < 0 {
            return Err(format!("symlink target {t:?} points outside the install"));
        }
    }
    Ok(())
}

/// Every existing ancestor of `rel` below `root` must be a real directory: nothing is ever
/// written through a symlink.
fn check_ancestors(root: &Path, rel: &str) -> Result<(), String> {
    let mut p = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        p.push(part);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return Err(format!("would write through the symlink {part:?}")),
            Ok(m) if !m.is_dir() => return Err(format!("{part:?} is a file, not a directory")),
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

fn mkdirs(root: &Path, rel: &str) -> Result<(), ArchiveError> {
    let mut p = root.to_path_buf();
    for part in rel.split('/').filter(|s| !s.is_empty()) {
        p.push(part);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() && !m.file_type().is_symlink() => {}
            Ok(_) => return Err(ArchiveError::Io { path: p, source: std::io::Error::other("exists and is not a directory") }),
            Err(_) => DirBuilder::new().mode(0o755).create(&p).map_err(|e| io_err(&p, e))?,
        }
    }
    Ok(())
}

/// Unpacks `archive` into `dest` (a staging directory), checking every entry. The caller
/// removes `dest` on error.
pub fn extract(archive: &Path, compression: Compression, part: Part, dest: &Path, limits: Limits) -> Result<Summary, ArchiveError> {
    let file = std::fs::File::open(archive).map_err(|e| io_err(archive, e))?;
    let reader: Box<dyn Read> = match compression {
        Compression::Zstd => Box::new(ruzstd::decoding::StreamingDecoder::new(std::io::BufReader::new(file)).map_err(|e| ArchiveError::Corrupt { archive: archive.to_path_buf(), detail: format!("zstd: {e}") })?),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file))),
    };
    let corrupt = |e: std::io::Error| ArchiveError::Corrupt { archive: archive.to_path_buf(), detail: e.to_string() };
    let refuse = |entry: &str, why: String| ArchiveError::Refused { archive: archive.to_path_buf(), entry: crate::text::clip(&crate::text::clean(entry), 200), why };
    let mut tar = tar::Archive::new(reader);
    let mut sum = Summary::default();
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        sum.entries += 1;
        if sum.entries > limits.max_entries {
            return Err(ArchiveError::TooManyEntries { archive: archive.to_path_buf(), limit: limits.max_entries });
        }
        let raw_name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();
        let rel = clean_path(&raw_name).map_err(|why| refuse(&shown, why))?;
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().map_err(corrupt)?;
        if mode & 0o6000 != 0 {
            return Err(refuse(&shown, "setuid or setgid bit".into()));
        }
        if rel.is_empty() {
            if kind.is_dir() {
                continue;
            }
            return Err(refuse(&shown, "not a directory at the archive root".into()));
        }
        if !part.permits(&rel, kind.is_dir()) {
            return Err(refuse(&shown, format!("outside what this tarball may install ({})", part.allowed().join(", "))));
        }
        check_ancestors(dest, &rel).map_err(|why| refuse(&shown, why))?;
        let target = dest.join(&rel);
        let existing = std::fs::symlink_metadata(&target).ok();
        if kind.is_dir() {
            match existing {
                Some(m) if m.is_dir() && !m.file_type().is_symlink() => continue,
                Some(_) => return Err(refuse(&shown, "a directory where the archive already put a file or symlink".into())),
                None => {
                    mkdirs(dest, &rel)?;
                    continue;
                }
            }
        }
        if existing.is_some() {
            return Err(refuse(&shown, "appears twice (or in both tarballs)".into()));
        }
        if let Some(parent) = Path::new(&rel).parent().and_then(Path::to_str) {
            mkdirs(dest, parent)?;
        }
        if kind.is_symlink() {
            let link = entry.link_name_bytes().ok_or_else(|| refuse(&shown, "symlink without a target".into()))?.into_owned();
            check_link(&rel, &link).map_err(|why| refuse(&shown, why))?;
            let link = std::ffi::OsStr::new(std::str::from_utf8(&link).unwrap_or_default());
            std::os::unix::fs::symlink(link, &target).map_err(|e| io_err(&target, e))?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let size = entry.header().size().map_err(corrupt)?;
            if sum.bytes.saturating_add(size) > limits.max_bytes {
                return Err(ArchiveError::TooLarge { archive: archive.to_path_buf(), limit: limits.max_bytes });
            }
            // O_EXCL | O_NOFOLLOW: never onto an existing file, never through a symlink.
            let mut out = OpenOptions::new().write(true).create_new(true).custom_flags(nix::libc::O_NOFOLLOW).mode(mode & 0o755).open(&target).map_err(|e| io_err(&target, e))?;
            let mut limited = (&mut entry).take(limits.max_bytes - sum.bytes + 1);
            let n = copy(&mut limited, &mut out, &target, archive)?;
            sum.bytes += n;
            if sum.bytes > limits.max_bytes {
                return Err(ArchiveError::TooLarge { archive: archive.to_path_buf(), limit: limits.max_bytes });
            }
            if n != size {
                return Err(ArchiveError::Corrupt { archive: archive.to_path_buf(), detail: format!("{shown}: {n} of {size} bytes") });
            }
        } else {
            let what = match kind {
                tar::EntryType::Link => "a hard link",
                tar::EntryType::Char | tar::EntryType::Block => "a device node",
                tar::EntryType::Fifo => "a FIFO",
                _ => "an entry type Ollama's tarballs never contain",
            };
            return Err(refuse(&shown, what.into()));
        }
    }
    let missing = |what| ArchiveError::Missing { archive: archive.to_path_buf(), what };
    match part {
        Part::Base => {
            let m = std::fs::symlink_metadata(dest.join("bin/ollama")).map_err(|_| missing("bin/ollama"))?;
            if !m.is_file() {
                return Err(missing("bin/ollama as a regular file"));
            }
        }
        Part::JetPack6 => {
            let d = dest.join("lib/ollama/cuda_jetpack6");
            if std::fs::read_dir(&d).map(|mut r| r.next().is_none()).unwrap_or(true) {
                return Err(missing("lib/ollama/cuda_jetpack6 (the JetPack 6 CUDA libraries)"));
            }
        }
    }
    Ok(sum)
}

fn copy(from: &mut impl Read, to: &mut std::fs::File, target: &Path, archive: &Path) -> Result<u64, ArchiveError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        let k = match from.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ArchiveError::Corrupt { archive: archive.to_path_buf(), detail: e.to_string() }),
        };
        to.write_all(&buf[..k]).map_err(|e| io_err(target, e))?;
        n += k as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        assert_eq!(clean_path(b"./bin/ollama"), Ok("bin/ollama".into()));
        assert_eq!(clean_path(b"./"), Ok("".into()));
        assert!(clean_path(b"/etc/passwd").is_err());
        assert!(clean_path(b"lib/../../etc").is_err());
        assert!(clean_path(b"\xff").is_err());
    }

    #[test]
    fn link_targets() {
        assert!(check_link("lib/ollama/libcudart.so.12", b"libcudart.so.12.8.90").is_ok());
        assert!(check_link("lib/ollama/cuda_jetpack6/libx.so", b"../libx.so.1").is_ok());
        assert!(check_link("lib/ollama/cuda_jetpack6/libx.so", b"../../../x").is_ok());
        assert!(check_link("lib/ollama/cuda_jetpack6/libx.so", b"../../../../etc/passwd").is_err());
        assert!(check_link("bin/ollama", b"/usr/bin/sh").is_err());
        assert!(check_link("lib/ollama/a", b"d/../../../../x").is_err());
        assert!(check_link("lib/ollama/a", b"").is_err());
    }

    #[test]
    fn allow_lists() {
        assert!(Part::Base.permits("bin/ollama", false));
        assert!(Part::Base.permits("lib", true));
        assert!(!Part::Base.permits("lib", false));
        assert!(!Part::Base.permits("etc/cron.d/x", false));
        assert!(!Part::Base.permits("binx", false));
        assert!(Part::JetPack6.permits("lib/ollama", true));
        assert!(!Part::JetPack6.permits("lib/ollama/libggml.so", false));
        assert!(!Part::JetPack6.permits("bin/ollama", false));
    }
}
