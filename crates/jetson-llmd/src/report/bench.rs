//! `jetson-llmd bench`: the seed's benchmark table as one command: generation and prompt tok/s
//! (Ollama's own eval_count / eval_duration), cold load, RAM and swap in use, share on the GPU,
//! with the power mode and GPU clock beside every row.

use crate::failure::Failure;
use crate::host::probe;
use crate::ollama::OllamaApi;
use ollama_client::{Client, GenerateRequest, KeepAlive};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokio::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub model: String,
    pub runs: usize,
    pub tok_s_median: f64,
    pub tok_s_min: f64,
    pub tok_s_max: f64,
    pub prompt_tok_s_median: Option<f64>,
    /// Seconds of the cold load, when the model was not loaded before.
    pub cold_load_s: Option<f64>,
    pub gpu_percent: u8,
    /// MemTotal - MemAvailable after the runs (MiB).
    pub ram_used_mib: Option<u64>,
    pub swap_used_mib: Option<u64>,
    pub power_mode: Option<String>,
    pub gpu_max_mhz: Option<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn request(model: &str, prompt: &str, tokens: u64) -> GenerateRequest {
    let mut options = serde_json::Map::new();
    // num_predict is a per-request option: it never makes Ollama reload the runner.
    options.insert("num_predict".into(), tokens.into());
    GenerateRequest { model: model.into(), prompt: Some(prompt.into()), stream: Some(true), keep_alive: None, options: Some(options) }
}

/// One model: a cold load when needed (timed), a warm-up, then `runs` timed generations.
pub async fn model(api: &Client, root: &Path, name: &str, prompt: &str, runs: usize, tokens: u64) -> Result<Row, Failure> {
    let ps = api.ps().await.map_err(Failure::Unreachable)?;
    let cold = !ps.models.iter().any(|m| m.name == name);
    let cold_load_s = if cold {
        let t0 = Instant::now();
        // The model's own keep_alive is left alone: only the configured model is pinned.
        OllamaApi::load(api, name, KeepAlive::For(std::time::Duration::from_secs(300))).await.map_err(|e| Failure::LoadFailed { model: name.into(), detail: e.message() })?;
        Some(t0.elapsed().as_secs_f64())
    } else {
        None
    };
    api.generate(&request(name, prompt, 16), |_| {}).await.map_err(|e| Failure::LoadFailed { model: name.into(), detail: e.message() })?;
    let (mut gen, mut pre) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let last = api.generate(&request(name, prompt, tokens), |_| {}).await.map_err(|e| Failure::LoadFailed { model: name.into(), detail: e.message() })?;
        if let Some(t) = last.tokens_per_second() {
            gen.push(t);
        }
        if let (Some(n), Some(d)) = (last.prompt_eval_count, last.prompt_eval_duration) {
            if d > 0 {
                pre.push(n as f64 / d as f64 * 1e9);
            }
        }
    }
    let ps = api.ps().await.map_err(Failure::Unreachable)?;
    let gpu_percent = ps.models.iter().find(|m| m.name == name).map_or(0, |m| m.gpu_percent());
    let host = probe::gather(root).await;
    let m = &host.memory;
    Ok(Row {
        model: name.into(),
        runs: gen.len(),
        tok_s_min: if gen.is_empty() { 0.0 } else { gen.iter().copied().fold(f64::INFINITY, f64::min) },
        tok_s_max: gen.iter().copied().fold(0.0, f64::max),
        tok_s_median: median(&mut gen),
        prompt_tok_s_median: (!pre.is_empty()).then(|| median(&mut pre)),
        cold_load_s,
        gpu_percent,
        ram_used_mib: m.mem_total_kb.zip(m.mem_available_kb).map(|(t, a)| t.saturating_sub(a) / 1024),
        swap_used_mib: m.swap_total_kb.zip(m.swap_free_kb).map(|(t, f)| t.saturating_sub(f) / 1024),
        power_mode: host.power_mode,
        gpu_max_mhz: host.gpu_max_freq_hz.map(|f| f as f64 / 1e6),
    })
}

/// The seed's table.
pub fn markdown(rows: &[Row]) -> String {
    let na = || "n/a".to_string();
    let mut o = String::from("| Model | tok/s (median, min-max) | Prompt tok/s | Cold load | RAM used | GPU | Swap used | Power mode | GPU max |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        o.push_str(&format!(
            "| {} | {:.1} ({:.1}-{:.1}) | {} | {} | {} | {}% | {} | {} | {} |\n",
            crate::text::clean(&r.model),
            r.tok_s_median,
            r.tok_s_min,
            r.tok_s_max,
            r.prompt_tok_s_median.map_or_else(na, |p| format!("{p:.0}")),
            r.cold_load_s.map_or_else(|| "was loaded".into(), |s| format!("{s:.1} s")),
            r.ram_used_mib.map_or_else(na, |m| format!("{:.1} GB", m as f64 / 1024.0)),
            r.gpu_percent,
            r.swap_used_mib.map_or_else(na, |m| format!("{m} MB")),
            r.power_mode.clone().unwrap_or_else(na),
            r.gpu_max_mhz.map_or_else(na, |m| format!("{m:.0} MHz")),
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_table() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        let row = Row {
            model: "gemma4:e2b-8k".into(),
            runs: 3,
            tok_s_median: 25.7,
            tok_s_min: 25.1,
            tok_s_max: 26.0,
            prompt_tok_s_median: Some(514.0),
            cold_load_s: None,
            gpu_percent: 100,
            ram_used_mib: Some(5120),
            swap_used_mib: Some(0),
            power_mode: None,
            gpu_max_mhz: None,
        };
        insta::assert_snapshot!(markdown(&[row]));
    }
}
