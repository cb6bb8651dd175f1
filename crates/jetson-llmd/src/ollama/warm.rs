//! Preload and keepalive: get the configured model onto the GPU, pinned with keep_alive -1, and
//! keep it there. Never sends runner options (they would make Ollama reload the model, the very
//! unload/reload cycle that leaves Jetson GPU memory unallocatable).

use super::OllamaApi;
use crate::conf::{ModelName, Settings};
use crate::failure::Failure;
use crate::host::memory::MemoryRelief;
use ollama_client::{CreateRequest, KeepAlive, ProgressLine, RunningModel};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a successful preload or keepalive tick saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
}

/// How often a long wait says it is still waiting.
pub const STILL_WAITING: Duration = Duration::from_secs(15);

/// Polls /api/version until it answers or `timeout` passes (Ollama has no readiness signal).
/// The caller says at once what is awaited; this says it again every [`STILL_WAITING`].
pub async fn wait_for_api<A: OllamaApi>(api: &A, timeout: Duration, cancel: &CancellationToken) -> Result<String, Failure> {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let mut delay = Duration::from_millis(100);
    let mut next_word = t0 + STILL_WAITING;
    loop {
        match api.version().await {
            Ok(v) => return Ok(v.version),
            Err(e) if Instant::now() + delay >= deadline => return Err(Failure::Unreachable(e)),
            Err(e) if !e.is_transient() => return Err(Failure::Unreachable(e)),
            Err(e) if Instant::now() >= next_word => {
                next_word = Instant::now() + STILL_WAITING;
                tracing::warn!("still waiting for Ollama's API at {} ({}s of {}): {}", api.url(), t0.elapsed().as_secs(), humantime::format_duration(timeout), e);
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Failure::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

fn progress_logger(what: String) -> impl FnMut(&ProgressLine) {
    let mut last_decile = None;
    let mut last_status = String::new();
    move |p: &ProgressLine| {
        let status = crate::text::clip(&p.status, 200);
        if let (Some(t), Some(c)) = (p.total, p.completed) {
            let d = c.saturating_mul(10).checked_div(t).unwrap_or(10).min(10);
            if last_decile != Some(d) {
                last_decile = Some(d);
                tracing::info!("{what}: {status} {}%", d * 10);
            }
        } else if status != last_status {
            tracing::info!("{what}: {status}");
        }
        last_status = status;
    }
}

/// Makes sure the model exists locally: pull it, or create it from its base when config.toml
/// declares it derived (the seed's Modelfile, through /api/create).
pub async fn ensure_present<A: OllamaApi>(api: &A, settings: &Settings, model: &ModelName) -> Result<bool, Failure> {
    let tags = api.tags().await.map_err(Failure::Unreachable)?;
    if tags.models.iter().any(|m| model.matches(&m.name)) {
        return Ok(false);
    }
    let missing = |e: ollama_client::Error| {
        if e.is_unreachable() {
            Failure::Unreachable(e)
        } else {
            Failure::Missing { model: model.to_string(), detail: e.message() }
        }
    };
    if let Some(d) = settings.derived(model) {
        if !tags.models.iter().any(|m| d.from.matches(&m.name)) {
            tracing::info!("pulling {} (base of {model})", d.from);
            api.pull(d.from.as_str(), &mut progress_logger(format!("pull {}", d.from))).await.map_err(missing)?;
        }
        let mut parameters = serde_json::Map::new();
        if let Some(n) = d.num_ctx {
            parameters.insert("num_ctx".into(), n.get().into());
        }
        tracing::info!("creating {model} from {} (num_ctx {})", d.from, d.num_ctx.map_or("default".into(), |n| n.to_string()));
        let req = CreateRequest { model: model.to_string(), from: d.from.to_string(), parameters };
        api.create(&req, &mut progress_logger(format!("create {model}"))).await.map_err(missing)?;
    } else {
        tracing::info!("pulling {model}");
        api.pull(model.as_str(), &mut progress_logger(format!("pull {model}"))).await.map_err(missing)?;
    }
    Ok(true)
}

/// Loads with keep_alive -1; on an out-of-memory failure drops caches once and retries once,
/// then gives up with [`Failure::RebootRequired`] instead of looping.
async fn load_pinned<A: OllamaApi, R: MemoryRelief>(api: &A, model: &ModelName, relief: &R) -> Result<(Duration, bool), Failure> {
    let t0 = Instant::now();
    match api.load(model.as_str(), KeepAlive::Forever).await {
        Ok(()) => return Ok((t0.elapsed(), false)),
        Err(e) if e.is_out_of_memory() => {
            tracing::warn!("loading {model} ran out of GPU memory ({}); dropping caches and trying once more", e.message());
            if let Err(io) = relief.drop_caches().await {
                return Err(Failure::RebootRequired { detail: format!("{}; dropping caches failed too: {io}", e.message()) });
            }
        }
        Err(e) => return Err(load_failure(model, e)),
    }
    let t1 = Instant::now();
    match api.load(model.as_str(), KeepAlive::Forever).await {
        Ok(()) => Ok((t1.elapsed(), true)),
        Err(e) if e.is_out_of_memory() => Err(Failure::RebootRequired { detail: e.message() }),
        Err(e) => Err(load_failure(model, e)),
    }
}

fn load_failure(model: &ModelName, e: ollama_client::Error) -> Failure {
    if e.is_unreachable() {
        Failure::Unreachable(e)
    } else if e.is_model_not_found() {
        Failure::Missing { model: model.to_string(), detail: e.message() }
    } else {
        Failure::LoadFailed { model: model.to_string(), detail: e.message() }
    }
}

fn find<'a>(ps: &'a [RunningModel], model: &ModelName) -> Option<&'a RunningModel> {
    ps.iter().find(|m| model.matches(&m.name))
}

/// Checks placement and pin in /api/ps.
pub async fn verify<A: OllamaApi>(api: &A, settings: &Settings, model: &ModelName) -> Result<WarmReport, Failure> {
    let ps = api.ps().await.map_err(Failure::Unreachable)?;
    let m = find(&ps.models, model).ok_or_else(|| Failure::NotResident { model: model.to_string() })?;
    let pct = m.gpu_percent();
    if m.size_vram == 0 {
        return Err(Failure::OnCpu { model: model.to_string(), hint: "Ollama placed it on the CPU; run `jetson-llmd gpu-check` to see why".into() });
    }
    if pct < settings.min_gpu_percent {
        return Err(Failure::PartlyOnGpu { model: model.to_string(), percent: pct, min: settings.min_gpu_percent });
    }
    Ok(WarmReport {
        model: model.to_string(),
        gpu_percent: pct,
        size: m.size,
        size_vram: m.size_vram,
        expires_at: m.expires_at.clone(),
        pinned: m.pinned_forever(),
        load_ms: None,
        rewarmed: false,
        dropped_caches: false,
    })
}

/// `jetson-llmd preload`: model present, loaded pinned, verified on the GPU.
pub async fn preload<A: OllamaApi, R: MemoryRelief>(api: &A, settings: &Settings, model: &ModelName, relief: &R) -> Result<WarmReport, Failure> {
    ensure_present(api, settings, model).await?;
    let already = api.ps().await.map_err(Failure::Unreachable)?.models.iter().any(|m| model.matches(&m.name));
    let (took, dropped) = load_pinned(api, model, relief).await?;
    let mut r = verify(api, settings, model).await?;
    r.load_ms = (!already).then_some(took.as_millis() as u64);
    r.dropped_caches = dropped;
    if !r.pinned {
        // Some other client replaced the pin between our load and the check; say it, do not fail.
        tracing::warn!("{model} is loaded but expires at {} (not pinned); the next keepalive tick re-pins it", r.expires_at);
    }
    Ok(r)
}

/// One keepalive tick: re-assert keep_alive -1 with a load-only request (cheap when loaded),
/// re-warm if the model had gone, and check placement and pin.
pub async fn tick<A: OllamaApi, R: MemoryRelief>(api: &A, settings: &Settings, model: &ModelName, relief: &R) -> Result<WarmReport, Failure> {
    let ps = api.ps().await.map_err(Failure::Unreachable)?;
    let before = find(&ps.models, model).cloned();
    if before.is_none() {
        tracing::warn!("{model} is not loaded (evicted, unloaded by another client, or Ollama restarted); re-warming");
        ensure_present(api, settings, model).await?;
    } else if let Some(b) = &before {
        if !b.pinned_forever() {
            tracing::warn!("{model} had a finite expiry ({}); another client changed its keep_alive; pinning it again", b.expires_at);
        }
    }
    let (took, dropped) = load_pinned(api, model, relief).await?;
    let mut r = verify(api, settings, model).await?;
    r.rewarmed = before.is_none();
    r.load_ms = r.rewarmed.then_some(took.as_millis() as u64);
    r.dropped_caches = dropped;
    Ok(r)
}

/// Capped exponential backoff: 5 s doubling up to `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_secs(5);
    let f = failures.saturating_sub(1).min(16);
    base.saturating_mul(1u32 << f).min(max)
}

/// Everything the keepalive loop reports after each tick.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TickRecord {
    pub at: String,
    pub model: String,
    pub ok: bool,
    pub detail: String,
    pub rewarmed: bool,
    pub rewarm_count: u64,
    pub consecutive_failures: u32,
    pub report: Option<WarmReport>,
}

impl TickRecord {
    /// The record of one tick; `rewarm_count` already includes this tick's re-warm.
    pub fn new(model: &ModelName, result: &Result<WarmReport, Failure>, rewarm_count: u64, consecutive_failures: u32) -> TickRecord {
        let (ok, detail, report) = match result {
            Ok(r) => (true, format!("{model} warm, {}% GPU{}", r.gpu_percent, if r.rewarmed { ", re-warmed" } else { "" }), Some(r.clone())),
            Err(f) => (false, f.to_string(), None),
        };
        TickRecord {
            at: crate::supervisor::state::now(),
            model: model.to_string(),
            ok,
            detail,
            rewarmed: report.as_ref().is_some_and(|r| r.rewarmed),
            rewarm_count,
            consecutive_failures,
            report,
        }
    }
}

/// Unloads a model that is no longer configured (with OLLAMA_MAX_LOADED_MODELS=1 Ollama has
/// usually evicted it already when the new one loaded).
pub async fn unload_if_loaded<A: OllamaApi>(api: &A, name: &str) {
    let loaded = api.ps().await.map(|p| p.models.iter().any(|m| m.name == name)).unwrap_or(false);
    if loaded {
        tracing::info!("unloading {name}: model.conf names another model now");
        if let Err(e) = api.load(name, KeepAlive::Unload).await {
            tracing::warn!("unloading {name} failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let max = Duration::from_secs(240);
        assert_eq!(backoff(1, max), Duration::from_secs(5));
        assert_eq!(backoff(2, max), Duration::from_secs(10));
        assert_eq!(backoff(6, max), Duration::from_secs(160));
        assert_eq!(backoff(7, max), max);
        assert_eq!(backoff(40, max), max);
    }
}
