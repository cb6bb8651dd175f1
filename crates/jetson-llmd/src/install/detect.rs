//! Is this a machine install should touch? Board, JetPack, architecture, systemd, root: read
//! under `--root` so that tests and image builders run it on fixture trees.

use crate::host::{fs, rooted};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Facts {
    pub l4t_release: Option<u32>,
    pub l4t_revision: Option<String>,
    pub jetpack: Option<u32>,
    pub board: Option<String>,
    pub arch: String,
    pub systemd: bool,
    pub root_user: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Stops the install unless `--force`.
    Refuse(String),
    Warn(String),
}

pub async fn gather(root: &Path) -> Facts {
    let text = |p: &'static str| async move { fs::read_text(&rooted(root, Path::new(p)), fs::cap::PROC).await.ok() };
    let (l4t_release, l4t_revision) = text("/etc/nv_tegra_release").await.as_deref().and_then(crate::host::probe::l4t).map_or((None, None), |(r, v)| (Some(r), v));
    let board = text("/proc/device-tree/model").await.map(|t| crate::text::clip(&crate::text::clean(t.trim_end_matches('\0').trim()), 200)).filter(|t| !t.is_empty());
    Facts {
        jetpack: l4t_release.and_then(jetpack_of),
        l4t_release,
        l4t_revision,
        board,
        arch: std::env::consts::ARCH.to_string(),
        // sd_booted(3): systemd is PID 1 when /run/systemd/system exists.
        systemd: rooted(root, Path::new("/run/systemd/system")).is_dir(),
        root_user: nix::unistd::geteuid().is_root(),
    }
}

/// L4T R35 -> JetPack 5, R36 -> JetPack 6 (Ollama's install.sh and discover/gpu.go map it so).
pub fn jetpack_of(l4t: u32) -> Option<u32> {
    match l4t {
        35 => Some(5),
        36 => Some(6),
        r if r >= 38 => Some(7),
        _ => None,
    }
}

/// What the facts mean for an install. Root is checked by the caller before anything else
/// (a dry run does not need it).
pub fn assess(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    match (f.l4t_release, f.jetpack) {
        (None, _) => out.push(Finding::Refuse("no /etc/nv_tegra_release: this is not a Jetson running JetPack (L4T); jetson-llmd installs Ollama's JetPack 6 build".into())),
        (Some(_), Some(6)) => {}
        (Some(r), Some(5)) => out.push(Finding::Refuse(format!("L4T R{r} is JetPack 5: Ollama's JetPack 5 libraries are not what this tool installs and tests; upgrade the board to JetPack 6"))),
        (Some(r), Some(_)) => out.push(Finding::Refuse(format!("L4T R{r} is JetPack 7 or newer: Ollama maps it to cuda_v13, not to the JetPack 6 libraries this tool installs"))),
        (Some(r), None) => out.push(Finding::Refuse(format!("L4T R{r} is not a JetPack release this tool knows (JetPack 6 is R36)"))),
    }
    match &f.board {
        Some(b) if b.contains("Orin") => {}
        Some(b) => out.push(Finding::Warn(format!("board {b:?} is not an Orin; the memory limits here are tuned for the Orin Nano 8 GB"))),
        None => out.push(Finding::Warn("no /proc/device-tree/model: cannot tell which board this is".into())),
    }
    if f.arch != "aarch64" {
        out.push(Finding::Refuse(format!("this machine is {}, Ollama's Jetson build is aarch64", f.arch)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(l4t: Option<u32>, board: Option<&str>, arch: &str) -> Facts {
        Facts { l4t_release: l4t, l4t_revision: None, jetpack: l4t.and_then(jetpack_of), board: board.map(str::to_string), arch: arch.into(), systemd: true, root_user: true }
    }

    #[test]
    fn findings_table() {
        let refuses = |f: &Facts| assess(f).iter().filter(|x| matches!(x, Finding::Refuse(_))).count();
        assert!(assess(&facts(Some(36), Some("NVIDIA Jetson Orin Nano Developer Kit"), "aarch64")).is_empty());
        assert_eq!(refuses(&facts(Some(35), Some("Orin"), "aarch64")), 1);
        let r38 = assess(&facts(Some(38), Some("Orin"), "aarch64"));
        assert!(matches!(&r38[0], Finding::Refuse(m) if m.contains("cuda_v13")), "{r38:?}");
        assert_eq!(refuses(&facts(None, None, "x86_64")), 2);
        assert_eq!(assess(&facts(Some(36), Some("Xavier NX"), "aarch64")).len(), 1);
    }
}
