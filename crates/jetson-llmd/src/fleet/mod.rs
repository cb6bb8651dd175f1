//! More than one board, on engines a homelab already runs (docs/fleet.md): configs for a LiteLLM
//! proxy and for Prometheus, written from what each board's guard says about itself
//! (`GET /jetson-llmd/board`: the model it pins, whether it is ready). No router, scheduler or
//! membership of our own: LiteLLM routes and retries, Prometheus scrapes.

mod render;

pub use render::{comment, litellm, prometheus, LiteLlmOptions};

use crate::guard::{Board, BOARD_PATH};
use std::time::Duration;

/// How long one board may take to say what it pins.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a board's answer read (it is a few hundred bytes).
const ASK_CAP: usize = 256 << 10;

/// `--board NAME=URL`: a board's name (for labels and ids) and its guard's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardArg {
    pub name: String,
    pub url: url::Url,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("--board {0:?}: write NAME=URL, e.g. orin1=http://orin1.lan:11434 (the board's guard)")]
    Shape(String),
    #[error("--board {name}: {why}")]
    Name { name: String, why: &'static str },
    #[error("--board {name}={url}: {why}")]
    Url { name: String, url: String, why: String },
    #[error("--board {0} is given twice")]
    Twice(String),
    #[error("board {name} ({url}) did not answer: {source}; is jetson-llmd running there with the guard on ([guard] enabled), and reachable from here?")]
    Unreachable { name: String, url: String, source: reqwest::Error },
    #[error("board {name} ({url}) answered {status} on {BOARD_PATH}: {}", if *status == 401 || *status == 403 { "it asks for an API key: give one with --key or JETSON_LLMD_KEY" } else { "is it a jetson-llmd guard (0.1+), not Ollama itself?" })]
    Status { name: String, url: String, status: u16 },
    #[error("board {name} ({url}) sent an answer that is not a board description: {why}")]
    Garbled { name: String, url: String, why: String },
    #[error("board {name} ({url}) pins no model yet ({stage}); start it, or wait until `jetson-llmd status` there shows the model")]
    NoModel { name: String, url: String, stage: String },
}

impl BoardArg {
    pub fn parse(s: &str) -> Result<BoardArg, FleetError> {
        let (name, url) = s.split_once('=').ok_or_else(|| FleetError::Shape(crate::text::clip(s, 100)))?;
        let name = name.trim();
        if name.is_empty() || name.len() > 63 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
            return Err(FleetError::Name { name: crate::text::clip(name, 63), why: "a name is 1 to 63 letters, digits, '-', '_' or '.'" });
        }
        let bad = |why: String| FleetError::Url { name: name.to_string(), url: crate::text::clip(url, 100), why };
        let u = url::Url::parse(url.trim()).map_err(|e| bad(format!("{e}; write it like http://orin1.lan:11434")))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            return Err(bad("write an http:// or https:// address with a host".into()));
        }
        if u.path() != "/" || u.query().is_some() {
            return Err(bad("write the guard's address only, without a path".into()));
        }
        Ok(BoardArg { name: name.to_string(), url: u })
    }

    /// host:port, the way Prometheus and LiteLLM are given it.
    pub fn host(&self) -> String {
        match self.url.host() {
            Some(url::Host::Ipv6(a)) => format!("[{a}]"),
            Some(h) => h.to_string(),
            None => String::new(),
        }
    }

    /// The guard's base URL without the trailing slash.
    pub fn base(&self) -> String {
        self.url.as_str().trim_end_matches('/').to_string()
    }
}

/// Checks that no board is named twice.
pub fn distinct(boards: &[BoardArg]) -> Result<(), FleetError> {
    for (i, b) in boards.iter().enumerate() {
        if boards[..i].iter().any(|o| o.name == b.name) {
            return Err(FleetError::Twice(b.name.clone()));
        }
    }
    Ok(())
}

/// Asks one board's guard what it pins (with `key` as a Bearer key when the board asks for one).
pub async fn ask(http: &reqwest::Client, b: &BoardArg, key: Option<&str>) -> Result<Board, FleetError> {
    let url = format!("{}{BOARD_PATH}", b.base());
    let shown = b.base();
    let mut req = http.get(&url).timeout(ASK_TIMEOUT);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let mut resp = req.send().await.map_err(|source| FleetError::Unreachable { name: b.name.clone(), url: shown.clone(), source })?;
    if !resp.status().is_success() {
        return Err(FleetError::Status { name: b.name.clone(), url: shown, status: resp.status().as_u16() });
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > ASK_CAP {
                    return Err(FleetError::Garbled { name: b.name.clone(), url: shown, why: format!("more than {} KiB", ASK_CAP >> 10) });
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => break,
            Err(source) => return Err(FleetError::Unreachable { name: b.name.clone(), url: shown, source }),
        }
    }
    let board: Board = serde_json::from_slice(&body).map_err(|e| FleetError::Garbled { name: b.name.clone(), url: shown.clone(), why: e.to_string() })?;
    let Some(model) = board.model.as_deref() else { return Err(FleetError::NoModel { name: b.name.clone(), url: shown, stage: crate::text::one_line(&board.stage) }) };
    if crate::conf::ModelName::parse(model).is_err() {
        return Err(FleetError::Garbled { name: b.name.clone(), url: shown, why: format!("the model name {:?} is not one Ollama accepts", crate::text::clip(model, 80)) });
    }
    Ok(board)
}

#[cfg(test)]
mod tests;
