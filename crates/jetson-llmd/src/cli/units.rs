//! `jetson-llmd units`: the systemd units rendered for the installed binaries.

use super::{settings, Global};
use anyhow::Context;
use jetson_llmd::failure::{code, Failure};
use std::path::{Path, PathBuf};

pub async fn run(g: &Global, jetson_llmd: &Path, ollama_bin: Option<PathBuf>, output: Option<PathBuf>) -> anyhow::Result<i32> {
    let ollama = match ollama_bin {
        Some(p) => p,
        None => settings(g).await?.ollama_bin,
    };
    let units = jetson_llmd::install::units::render(jetson_llmd, &ollama).map_err(|e| Failure::Config(e.to_string()))?;
    match output {
        None => {
            for (name, text) in units {
                println!("# --- {name}\n{text}");
            }
        }
        Some(dir) => {
            for (name, text) in units {
                let path = dir.join(name);
                jetson_llmd::host::fs::write_atomic(&path, text.into_bytes(), 0o644).await.with_context(|| format!("cannot write {}", path.display()))?;
                println!("{}", path.display());
            }
        }
    }
    Ok(code::OK)
}
