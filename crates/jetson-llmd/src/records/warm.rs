//! What a preload or a keepalive tick saw (state.json's `warm` and `last_ping`, keepalive.json).

use crate::conf::ModelName;
use crate::failure::Failure;
use serde::{Deserialize, Serialize};

/// What a successful preload or keepalive tick saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WarmReport {
    pub model: String,
    pub gpu_percent: u8,
    pub size: u64,
    pub size_vram: u64,
    pub expires_at: String,
    pub pinned: bool,
    /// Wall time of the load request when it had to load (cold), in ms.
    pub load_ms: Option<u64>,
    /// The model was not in memory and had to be loaded again.
    pub rewarmed: bool,
    /// Caches were dropped to get the load through.
    pub dropped_caches: bool,
    /// What had happened to the model when it had to be re-warmed.
    #[serde(default)]
    pub evicted: Option<String>,
}

/// Everything the keepalive loop reports after each tick.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TickRecord {
    pub at: super::Timestamp,
    pub model: String,
    pub ok: bool,
    pub detail: String,
    pub rewarmed: bool,
    pub rewarm_count: u64,
    pub consecutive_failures: u32,
    pub report: Option<WarmReport>,
    /// Set while repeated evictions make the keepalive hold back ([`EvictionBackoff`]).
    #[serde(default)]
    pub note: Option<String>,
    /// The failure, typed, for the supervisor (the words are in `detail`).
    #[serde(default)]
    pub failure: Option<crate::failure::Reported>,
    /// When the re-warms of the last hour happened (Unix seconds): the eviction back-off's
    /// memory, so that a restarted keepalive (the supervisor restarts it to re-warm now) and
    /// the supervisor count the same re-warms.
    #[serde(default)]
    pub recent_rewarms: Vec<u64>,
}

impl TickRecord {
    /// The record of one tick; `rewarm_count` already includes this tick's re-warm.
    pub fn new(model: &ModelName, result: &Result<WarmReport, Failure>, rewarm_count: u64, consecutive_failures: u32) -> TickRecord {
        let (ok, detail, report) = match result {
            Ok(r) => (true, format!("{model} warm, {}% GPU{}", r.gpu_percent, r.evicted.as_deref().map(|e| format!(", re-warmed ({e})")).unwrap_or_else(|| if r.rewarmed { ", re-warmed".into() } else { String::new() })), Some(r.clone())),
            Err(f) => (false, f.to_string(), None),
        };
        let failure = result.as_ref().err().map(Failure::reported);
        TickRecord { at: super::Timestamp::now(), model: model.to_string(), ok, detail, rewarmed: report.as_ref().is_some_and(|r| r.rewarmed), rewarm_count, consecutive_failures, report, note: None, failure, recent_rewarms: Vec::new() }
    }
}
