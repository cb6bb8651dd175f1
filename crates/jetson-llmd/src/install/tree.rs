//! Where Ollama lives and how a version becomes the live one.
//!
//! Each installed release is a directory `/usr/local/lib/jetson-llmd/ollama/<version>-<hash>/`
//! holding `bin/ollama` and `lib/ollama/...` exactly as the tarballs lay them out. The paths
//! everyone knows are symlinks into the live one:
//!
//! ```text
//! /usr/local/bin/ollama  -> ../lib/jetson-llmd/ollama/current/bin/ollama
//! /usr/local/lib/ollama  -> jetson-llmd/ollama/current/lib/ollama
//! /usr/local/lib/jetson-llmd/ollama/current -> 0.30.6-1a2b3c4d5e6f
//! ```
//!
//! Ollama finds its libraries next to the resolved executable (ml/path.go LibOllamaPath
//! follows symlinks, then tries `<exe>/../lib/ollama`), so a switch is one atomic rename of
//! `current`, and the previous version stays whole beside it for a rollback. A release Ollama's
//! own install.sh put in /usr/local is adopted into the store the first time, so it too can be
//! rolled back to.

use super::archive::{self, Limits, Part};
use super::fetch::Verified;
use crate::host::rooted;
use std::path::{Path, PathBuf};

pub const STORE: &str = "/usr/local/lib/jetson-llmd/ollama";
pub const BIN: &str = "/usr/local/bin/ollama";
pub const LIB: &str = "/usr/local/lib/ollama";
const BIN_TARGET: &str = "../lib/jetson-llmd/ollama/current/bin/ollama";
const LIB_TARGET: &str = "jetson-llmd/ollama/current/lib/ollama";

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} and {} are on different filesystems; jetson-llmd keeps Ollama's releases under /usr/local/lib so that switching is one rename", .from.display(), .to.display())]
    CrossDevice { from: PathBuf, to: PathBuf },
    #[error("only {free_mib} MiB free under {}; unpacking needs about {need_mib} MiB: free some space (old models? /var/cache/jetson-llmd?) and run again", .path.display())]
    Space { path: PathBuf, free_mib: u64, need_mib: u64 },
    #[error("{} exists and is not something jetson-llmd or Ollama's installer made; move it away and run again", .path.display())]
    Foreign { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| {
        if source.raw_os_error() == Some(nix::libc::EXDEV) {
            TreeError::CrossDevice { from: path.to_path_buf(), to: PathBuf::from(STORE) }
        } else {
            TreeError::Io { path: path.to_path_buf(), source }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What [`Store::activate`] changed, so that it can be undone.
#[derive(Debug, Clone, Default)]
pub struct Activation {
    pub before: Option<String>,
    pub adopted: Option<String>,
    links_created: bool,
}

/// Free bytes on the filesystem holding `path` (or its nearest existing ancestor).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path.to_path_buf();
    loop {
        if p.exists() {
            let s = nix::sys::statvfs::statvfs(&p).ok()?;
            return Some(s.blocks_available() as u64 * s.fragment_size() as u64);
        }
        if !p.pop() {
            return None;
        }
    }
}

impl Store {
    pub fn new(root: &Path) -> Store {
        Store { root: root.to_path_buf() }
    }

    pub fn dir(&self) -> PathBuf {
        rooted(&self.root, Path::new(STORE))
    }

    pub fn bin(&self) -> PathBuf {
        rooted(&self.root, Path::new(BIN))
    }

    pub fn lib(&self) -> PathBuf {
        rooted(&self.root, Path::new(LIB))
    }

    pub fn version_dir(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// The live version's directory name.
    pub fn current(&self) -> Option<String> {
        std::fs::read_link(self.dir().join("current")).ok().and_then(|t| t.to_str().map(str::to_string)).filter(|s| !s.contains('/'))
    }

    /// Both well-known paths are our symlinks.
    pub fn links_ok(&self) -> bool {
        std::fs::read_link(self.bin()).is_ok_and(|t| t == Path::new(BIN_TARGET)) && std::fs::read_link(self.lib()).is_ok_and(|t| t == Path::new(LIB_TARGET))
    }

    /// The version's binary and its JetPack 6 libraries are in place.
    pub fn intact(&self, name: &str) -> bool {
        let d = self.version_dir(name);
        std::fs::symlink_metadata(d.join("bin/ollama")).is_ok_and(|m| m.is_file()) && std::fs::read_dir(d.join("lib/ollama/cuda_jetpack6")).is_ok_and(|mut r| r.next().is_some())
    }

    /// The live layout is whole: links, `current`, binary and JetPack libraries.
    pub fn live_ok(&self) -> bool {
        self.links_ok() && self.current().is_some_and(|c| self.intact(&c))
    }

    pub fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir()).map(|r| r.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).filter(|n| !n.starts_with('.') && n != "current").collect()).unwrap_or_default();
        v.sort();
        v
    }

    /// Leftovers of a killed run: staging and trash directories.
    pub fn clean_stale(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        if let Ok(r) = std::fs::read_dir(self.dir()) {
            for e in r.filter_map(|e| e.ok()) {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(".staging-") || n.starts_with(".trash-") || n.starts_with(".current.") {
                    let p = e.path();
                    let gone = if p.is_dir() && !p.is_symlink() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                    if gone.is_ok() {
                        removed.push(p);
                    }
                }
            }
        }
        removed
    }

    /// Unpacks both tarballs into a staging directory beside the store and moves it into place
    /// as `name`. Blocking; the live version is not touched. On any error the staging directory
    /// is removed.
    pub fn stage(&self, name: &str, base: &Verified, jetpack: &Verified, limits: Limits) -> Result<(), TreeError> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        self.clean_stale();
        let compressed = std::fs::metadata(&base.path).map(|m| m.len()).unwrap_or(0) + std::fs::metadata(&jetpack.path).map(|m| m.len()).unwrap_or(0);
        // A rough guess (3x the compressed size, not measured on real tarballs): it only says
        // "no space" before minutes of work; ENOSPC during the unpack is handled anyway.
        let need = compressed.saturating_mul(3) + (8 << 20);
        if let Some(free) = free_bytes(&dir).filter(|f| *f < need) {
            return Err(TreeError::Space { path: dir, free_mib: free >> 20, need_mib: need >> 20 });
        }
        let staging = dir.join(format!(".staging-{name}"));
        std::fs::create_dir(&staging).map_err(io(&staging))?;
        let res = (|| {
            archive::extract(&base.path, base.compression, Part::Base, &staging, limits)?;
            archive::extract(&jetpack.path, jetpack.compression, Part::JetPack6, &staging, limits)?;
            // One syncfs instead of an fsync per file: the rename below must not become
            // visible before the data it names.
            let f = std::fs::File::open(&staging).map_err(io(&staging))?;
            nix::unistd::syncfs(&f).map_err(|e| TreeError::Io { path: staging.clone(), source: e.into() })?;
            let target = self.version_dir(name);
            if target.exists() {
                let trash = dir.join(format!(".trash-{name}-{}", std::process::id()));
                std::fs::rename(&target, &trash).map_err(io(&target))?;
                let _ = std::fs::remove_dir_all(&trash);
            }
            std::fs::rename(&staging, &target).map_err(io(&target))?;
            std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))
        })();
        if res.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        res
    }

    fn set_current(&self, name: Option<&str>) -> Result<(), TreeError> {
        let dir = self.dir();
        let cur = dir.join("current");
        match name {
            None => match std::fs::remove_file(&cur) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&cur)(e)),
                _ => Ok(()),
            },
            Some(name) => {
                let tmp = dir.join(format!(".current.{}", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(name, &tmp).map_err(io(&tmp))?;
                // rename(2) over the old symlink: readers see the old version or the new one.
                std::fs::rename(&tmp, &cur).map_err(io(&cur))?;
                std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))
            }
        }
    }

    fn place_link(path: &Path, target: &str) -> Result<(), TreeError> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let tmp = parent.join(format!(".{}.jetson-llmd.{}", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// Makes `name` the live version. The first time, an Ollama that install.sh put in
    /// /usr/local is moved into the store as `adopted-<time>` (same filesystem: renames only).
    pub fn activate(&self, name: &str) -> Result<Activation, TreeError> {
        let mut act = Activation { before: self.current(), ..Default::default() };
        if !self.links_ok() {
            let (bin, lib) = (self.bin(), self.lib());
            let bin_m = std::fs::symlink_metadata(&bin).ok();
            let lib_m = std::fs::symlink_metadata(&lib).ok();
            if bin_m.as_ref().is_some_and(|m| !m.is_file() && !m.file_type().is_symlink()) {
                return Err(TreeError::Foreign { path: bin });
            }
            if lib_m.as_ref().is_some_and(|m| !m.is_dir() && !m.file_type().is_symlink()) {
                return Err(TreeError::Foreign { path: lib });
            }
            let real_bin = bin_m.as_ref().is_some_and(|m| m.is_file());
            let real_lib = lib_m.as_ref().is_some_and(|m| m.is_dir());
            if real_bin || real_lib {
                let a = format!("adopted-{}", time::OffsetDateTime::now_utc().unix_timestamp());
                let ad = self.version_dir(&a);
                std::fs::create_dir_all(ad.join("bin")).map_err(io(&ad))?;
                std::fs::create_dir_all(ad.join("lib")).map_err(io(&ad))?;
                if real_lib {
                    std::fs::rename(&lib, ad.join("lib/ollama")).map_err(io(&lib))?;
                }
                if real_bin {
                    if let Err(e) = std::fs::rename(&bin, ad.join("bin/ollama")) {
                        if real_lib {
                            let _ = std::fs::rename(ad.join("lib/ollama"), &lib);
                        }
                        return Err(io(&bin)(e));
                    }
                }
                act.adopted = Some(a);
            }
            self.set_current(Some(name))?;
            Self::place_link(&self.lib(), LIB_TARGET)?;
            Self::place_link(&self.bin(), BIN_TARGET)?;
            act.links_created = true;
        } else {
            self.set_current(Some(name))?;
        }
        Ok(act)
    }

    /// Points `current` back where it was; puts an adopted install back in /usr/local.
    pub fn undo(&self, act: &Activation) -> Result<(), TreeError> {
        if act.links_created {
            let _ = std::fs::remove_file(self.bin());
            let _ = std::fs::remove_file(self.lib());
        }
        if let Some(a) = &act.adopted {
            let ad = self.version_dir(a);
            if ad.join("lib/ollama").exists() {
                std::fs::rename(ad.join("lib/ollama"), self.lib()).map_err(io(&ad))?;
            }
            if ad.join("bin/ollama").exists() {
                std::fs::rename(ad.join("bin/ollama"), self.bin()).map_err(io(&ad))?;
            }
            let _ = std::fs::remove_dir_all(&ad);
        }
        self.set_current(act.before.as_deref())
    }

    /// Removes every version but those in `keep`.
    pub fn prune(&self, keep: &[&str]) -> Vec<String> {
        let mut gone = Vec::new();
        for v in self.versions() {
            if !keep.contains(&v.as_str()) && std::fs::remove_dir_all(self.version_dir(&v)).is_ok() {
                gone.push(v);
            }
        }
        gone
    }

    /// Removes the links and the whole store (uninstall). An adopted install is put back first
    /// when it is the live one.
    pub fn remove_all(&self) -> Result<(), TreeError> {
        if self.links_ok() {
            std::fs::remove_file(self.bin()).map_err(io(&self.bin()))?;
            std::fs::remove_file(self.lib()).map_err(io(&self.lib()))?;
        }
        let d = self.dir();
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(io(&d))?;
        }
        let parent = rooted(&self.root, Path::new("/usr/local/lib/jetson-llmd"));
        let _ = std::fs::remove_dir(parent);
        Ok(())
    }
}
