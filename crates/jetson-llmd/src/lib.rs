//! jetson-llmd: keeps one Ollama model warm on a Jetson's GPU and explains itself when it cannot.

pub mod api;
pub mod config;
pub mod gpu;
pub mod launcher;
pub mod model_name;
pub mod modelconf;
pub mod notify;
pub mod outcome;
pub mod state;
pub mod status;
pub mod supervise;
pub mod systemd;
pub mod systemd_supervise;
pub mod units;
pub mod warm;

/// `path` as seen under `--root` (absolute paths are re-anchored at root).
pub fn rooted(root: &std::path::Path, path: &std::path::Path) -> std::path::PathBuf {
    match path.strip_prefix("/") {
        Ok(rel) => root.join(rel),
        Err(_) => root.join(path),
    }
}
