//! `/var/lib/jetson-llmd/install.json`: what install put where, so that a re-run can skip what
//! is already right, uninstall can tell our files from the user's edits, and upgrade knows the
//! version to roll back to and the last figures the GPU proved.

use crate::host::{fs, rooted};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const PATH: &str = "/var/lib/jetson-llmd/install.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Release {
    /// Directory name in the store (`<version>-<hash>` or `adopted-<time>`).
    pub dir: String,
    pub version: String,
    /// URL or local path of the base tarball.
    pub origin: String,
    pub base_sha256: String,
    pub jetpack_sha256: String,
    pub installed_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LastGood {
    pub dir: String,
    pub version: String,
    /// Generation speed the canary measured (tokens/s).
    pub tok_s: f64,
    pub model: String,
    pub at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InstallState {
    pub current: Option<Release>,
    pub previous: Option<Release>,
    pub last_good: Option<LastGood>,
    /// sha256 of every file install wrote, by absolute path (as seen inside the root).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The ollama user was created by install (uninstall --purge removes it).
    #[serde(default)]
    pub created_user: bool,
}

pub fn path(root: &Path) -> PathBuf {
    rooted(root, Path::new(PATH))
}

/// install.json cannot be used: install, upgrade and uninstall stop (exit 2) rather than guess
/// which files are theirs.
#[derive(Debug, thiserror::Error)]
pub enum InstallStateError {
    #[error(transparent)]
    Read(#[from] fs::ReadError),
    #[error("{}: {source}; move it away to start over", .path.display())]
    Parse { path: std::path::PathBuf, source: serde_json::Error },
}

impl InstallState {
    /// A missing file is a fresh machine; an unreadable one is reported, not ignored: it would
    /// make install treat the user's edited files as its own.
    pub async fn load(root: &Path) -> Result<InstallState, InstallStateError> {
        let p = path(root);
        match fs::read_capped(&p, fs::cap::STATE).await {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| InstallStateError::Parse { path: p, source }),
            Err(e) if e.is_not_found() => Ok(InstallState::default()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn save(&self, root: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        fs::write_atomic(&path(root), bytes, 0o644).await
    }
}
