//! The systemd units, embedded from units/ and rendered with the install paths.
//! The files in units/ are written for the default layout (/usr/local/bin/jetson-llmd and
//! /usr/local/bin/ollama); rendering only moves those two paths, so what `systemd-analyze verify`
//! checked in the container tier is what gets installed.

use std::path::Path;

pub const DEFAULT_JETSON_LLMD: &str = "/usr/local/bin/jetson-llmd";
pub const DEFAULT_OLLAMA: &str = "/usr/local/bin/ollama";

/// (path relative to /etc/systemd/system, template)
pub const TEMPLATES: [(&str, &str); 5] = [
    ("jetson-llmd.service", include_str!("../../../../units/jetson-llmd.service")),
    ("ollama.service", include_str!("../../../../units/ollama.service")),
    ("ollama.service.d/50-jetson-llmd.conf", include_str!("../../../../units/ollama.service.d/50-jetson-llmd.conf")),
    ("ollama-preload.service", include_str!("../../../../units/ollama-preload.service")),
    ("ollama-keepalive.service", include_str!("../../../../units/ollama-keepalive.service")),
];

#[derive(Debug, thiserror::Error)]
#[error("binary path {0:?} must be absolute, without spaces, quotes, % or backslashes")]
pub struct BadPath(String);

fn checked(p: &Path) -> Result<&str, BadPath> {
    let s = p.to_str().ok_or_else(|| BadPath(p.display().to_string()))?;
    // ExecStart= paths are not quoted in the templates; refuse what would need quoting or
    // systemd specifier escaping rather than produce a unit that means something else.
    if !p.is_absolute() || s.ends_with('/') || s.contains([' ', '"', '\'', '%', '\\', '\n']) {
        return Err(BadPath(p.display().to_string()));
    }
    Ok(s)
}

/// Renders every unit for the given binaries.
pub fn render(jetson_llmd: &Path, ollama: &Path) -> Result<Vec<(&'static str, String)>, BadPath> {
    let (j, o) = (checked(jetson_llmd)?, checked(ollama)?);
    Ok(TEMPLATES.iter().map(|(name, t)| (*name, t.replace(&format!("{DEFAULT_JETSON_LLMD} "), &format!("{j} ")).replace(&format!("{DEFAULT_OLLAMA} "), &format!("{o} ")))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths_render_the_files_unchanged() {
        for (name, text) in render(Path::new(DEFAULT_JETSON_LLMD), Path::new(DEFAULT_OLLAMA)).expect("renders") {
            let t = TEMPLATES.iter().find(|(n, _)| *n == name).expect("template").1;
            assert_eq!(text, t, "{name}");
        }
    }

    #[test]
    fn other_bindir_snapshots() {
        for (name, text) in render(Path::new("/usr/bin/jetson-llmd"), Path::new("/opt/ollama/bin/ollama")).expect("renders") {
            assert!(!text.contains("/usr/local/bin/"), "{name}");
            insta::assert_snapshot!(name.replace(['/', '.'], "_"), text);
        }
    }

    #[test]
    fn refuses_paths_that_need_quoting() {
        for b in ["relative/bin/ollama", "/opt/my bin/ollama", "/opt/%h/ollama", "/opt/\"x\"", "/opt/bin/"] {
            assert!(render(Path::new("/usr/bin/jetson-llmd"), Path::new(b)).is_err(), "{b}");
        }
    }
}
