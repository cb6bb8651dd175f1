//! `jetson-llmd fleet litellm|prometheus --board NAME=URL ...`: configs for engines a homelab
//! already runs, asked from the boards themselves (docs/fleet.md).

use super::{print_json, Global};
use anyhow::Context;
use jetson_llmd::failure::code;
use jetson_llmd::fleet::{self, BoardArg, FleetError};
use jetson_llmd::guard::Board;
use std::path::PathBuf;

pub enum Engine {
    LiteLlm(fleet::LiteLlmOptions),
    Prometheus { port: u16, interval_s: u32 },
}

/// Asks every board; a board that does not answer is an error, or with `allow_missing` a
/// warning on stderr (and a comment in the config): never left out without a word.
/// `scrapes`: the config is Prometheus's, so where each board serves /metrics matters (and is
/// warned about); LiteLLM never reads it.
async fn ask_all(boards: &[BoardArg], allow_missing: bool, key: Option<&str>, scrapes: bool) -> anyhow::Result<(Vec<(BoardArg, Board)>, Vec<String>)> {
    fleet::distinct(boards)?;
    let http = reqwest::Client::builder().no_proxy().build().context("cannot set up an HTTP client")?;
    let answers = futures_util::future::join_all(boards.iter().map(|b| fleet::ask(&http, b, key))).await;
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    for (b, a) in boards.iter().zip(answers) {
        match a {
            Ok(board) => found.push((b.clone(), board)),
            Err(e @ (FleetError::Unreachable { .. } | FleetError::Status { .. } | FleetError::NoModel { .. })) if allow_missing => {
                let line = fleet::comment(&e.to_string());
                eprintln!("warning: {line}; left out (--allow-missing)");
                missing.push(line);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if found.is_empty() {
        anyhow::bail!("no board answered; nothing to write");
    }
    for (b, board) in &found {
        if !board.ready {
            eprintln!("warning: board {} pins {} but is not ready ({}); it is in the config, and LiteLLM leaves it out while it answers 503", b.name, board.model.as_deref().unwrap_or("?"), fleet::comment(&board.stage));
        }
        if let Some(m) = board.metrics.as_deref().and_then(|m| m.parse::<std::net::SocketAddr>().ok()).filter(|_| scrapes) {
            if m.ip().is_loopback() {
                eprintln!("warning: board {} serves /metrics on {m} (loopback): set metrics_listen = \"0.0.0.0:{}\" in its config.toml for Prometheus to reach it", b.name, m.port());
            }
        }
    }
    Ok((found, missing))
}

pub async fn run(g: &Global, engine: Engine, boards: &[String], allow_missing: bool, output: Option<PathBuf>, key: Option<String>) -> anyhow::Result<i32> {
    let boards: Vec<BoardArg> = boards.iter().map(|b| BoardArg::parse(b)).collect::<Result<_, _>>()?;
    let key = key.as_deref().map(str::trim).filter(|k| !k.is_empty());
    let (found, missing) = ask_all(&boards, allow_missing, key, matches!(engine, Engine::Prometheus { .. })).await?;
    let mut text = match &engine {
        // Boards that needed a key to be asked need one from LiteLLM too: it reads it from the
        // same variable this command does.
        Engine::LiteLlm(o) if key.is_some() => fleet::litellm(&found, &fleet::LiteLlmOptions { key_env: Some("JETSON_LLMD_KEY".into()), ..o.clone() }),
        Engine::LiteLlm(o) => fleet::litellm(&found, o),
        Engine::Prometheus { port, interval_s } => fleet::prometheus(&found, *port, *interval_s),
    };
    for m in &missing {
        text.push_str(&format!("# left out (--allow-missing): {}\n", m.replace('\n', " ")));
    }
    if let Some(p) = &output {
        write_whole(p, &text)?;
        if !g.json {
            eprintln!("wrote {} ({} boards)", p.display(), found.len());
        }
    }
    if g.json {
        let boards: Vec<serde_json::Value> = found.iter().map(|(b, board)| serde_json::json!({ "name": b.name, "url": b.base(), "board": board })).collect();
        print_json(&serde_json::json!({ "boards": boards, "missing": missing, "config": text, "written": output }))?;
    } else if output.is_none() {
        print!("{text}");
    }
    Ok(code::OK)
}

/// Whole or not at all (the engine may be watching the file): a temporary file of its own in the
/// same directory, synced, then renamed over; removed if anything fails.
fn write_whole(p: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "config".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, p).with_context(|| format!("cannot replace {}", p.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
