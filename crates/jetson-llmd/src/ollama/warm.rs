//! Preload and keepalive: get the configured model onto the GPU, pinned with keep_alive -1, and
//! keep it there. Never sends runner options (they would make Ollama reload the model, the very
//! unload/reload cycle that leaves Jetson GPU memory unallocatable).

use super::OllamaApi;
use crate::conf::{ModelName, Settings};
use crate::failure::Failure;
use crate::host::memory::MemoryRelief;
pub use crate::records::warm::{TickRecord, WarmReport};
use ollama_client::{CreateRequest, KeepAlive, ProgressLine, RunningModel};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a long wait says it is still waiting.
pub const STILL_WAITING: Duration = Duration::from_secs(15);

/// Polls /api/version until it answers or `timeout` passes (Ollama has no readiness signal).
/// The caller says at once what is awaited; this says it again every [`STILL_WAITING`].
pub async fn wait_for_api<A: OllamaApi>(api: &A, timeout: Duration, cancel: &CancellationToken) -> Result<String, Failure> {
    wait_for_api_or(api, timeout, cancel, None).await
}

/// The same, also looking again whenever `activity` wakes (Ollama wrote a line: its
/// "Listening on" comes the moment the API answers), so the wait ends within milliseconds of
/// readiness instead of at the next poll of a doubling back-off.
pub async fn wait_for_api_or<A: OllamaApi>(api: &A, timeout: Duration, cancel: &CancellationToken, activity: Option<&tokio::sync::Notify>) -> Result<String, Failure> {
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
            _ = async { match activity { Some(n) => n.notified().await, None => std::future::pending().await } } => {
                // A burst of lines is one look, a few milliseconds after the first.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

tokio::task_local! {
    /// Where pull and create progress goes besides the journal, in words, once per step of
    /// 10 % or status change: set by the supervisor around a switch's preparation, so that
    /// state.json (and `jetson-llmd switch`, `status`) can say how far it is.
    pub static PROGRESS: tokio::sync::mpsc::UnboundedSender<String>;
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
                let _ = PROGRESS.try_with(|tx| tx.send(format!("{what}: {status} {}%", d * 10)));
            }
        } else if status != last_status {
            tracing::info!("{what}: {status}");
            let _ = PROGRESS.try_with(|tx| tx.send(format!("{what}: {status}")));
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
        create_derived(api, d, model).await.map_err(missing)?;
    } else {
        tracing::info!("pulling {model}");
        api.pull(model.as_str(), &mut progress_logger(format!("pull {model}"))).await.map_err(missing)?;
    }
    Ok(true)
}

/// `/api/create` of a derived model as config.toml declares it (the seed's Modelfile).
async fn create_derived<A: OllamaApi>(api: &A, d: &crate::conf::config::Derived, model: &ModelName) -> Result<(), ollama_client::Error> {
    let mut parameters = serde_json::Map::new();
    if let Some(n) = d.num_ctx {
        parameters.insert("num_ctx".into(), n.get().into());
    }
    tracing::info!("creating {model} from {} (num_ctx {})", d.from, d.num_ctx.map_or("default".into(), |n| n.to_string()));
    let req = CreateRequest { model: model.to_string(), from: d.from.to_string(), parameters };
    api.create(&req, &mut progress_logger(format!("create {model}"))).await
}

/// (wanted, running) when a derived model runs with another context than config.toml gives it:
/// someone re-created it under its name (`/api/create` with another num_ctx) or loaded it with
/// other options straight at Ollama. Clients then get a model that forgets at 2048 tokens while
/// everything says 8192.
fn drift(m: &RunningModel, model: &ModelName, settings: &Settings) -> Option<(u64, u64)> {
    let want = settings.derived(model)?.num_ctx?.get();
    let got = m.context_length?;
    (got != want).then_some((want, got))
}

/// [`load_pinned`] and [`verify`], with the context checked on the way: a derived model found
/// running with another one is created again as config.toml says and loaded again (Ollama
/// reloads it: the model's options now differ from its runner's), once. Still wrong after that
/// is a failure, not a loop. Returns the report, the load's time and whether caches were dropped.
async fn load_verified<A: OllamaApi, R: MemoryRelief>(api: &A, settings: &Settings, model: &ModelName, relief: &R) -> Result<(WarmReport, Duration, bool), Failure> {
    let (took, dropped) = load_pinned(api, model, relief).await?;
    let (r, drifted) = check(api, settings, model).await?;
    let (Some(d), Some((want, got))) = (settings.derived(model), drifted) else { return Ok((r, took, dropped)) };
    tracing::warn!("{model} runs with context {got}, but config.toml creates it with num_ctx {want} (someone re-created it or loaded it with other options); creating it again from {} and reloading it", d.from);
    create_derived(api, d, model).await.map_err(|e| load_failure(model, e))?;
    let (again, dropped_again) = load_pinned(api, model, relief).await?;
    match check(api, settings, model).await? {
        (r, None) => Ok((r, took + again, dropped || dropped_again)),
        (_, Some((want, got))) => Err(Failure::LoadFailed { model: model.to_string(), detail: format!("still runs with context {got} after being created again with num_ctx {want}") }),
    }
}

/// Loads with keep_alive -1; on an out-of-memory failure drops caches once and retries once,
/// then gives up with [`Failure::RebootRequired`] instead of looping.
async fn load_pinned<A: OllamaApi, R: MemoryRelief>(api: &A, model: &ModelName, relief: &R) -> Result<(Duration, bool), Failure> {
    let t0 = Instant::now();
    match api.load(model.as_str(), KeepAlive::Forever).await {
        Ok(()) => return Ok((t0.elapsed(), false)),
        Err(e) if e.is_out_of_memory() && !relief.available() => return Err(Failure::RebootRequired { detail: e.message() }),
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

/// Our model in /api/ps. Runners are keyed by the weights file (server/sched.go
/// schedulerModelKey) and listed under the name of the model that loaded them (routes.go
/// PsHandler): when another client loaded our base at our context, that runner *is* ours
/// (requesting ours reuses it without a reload), listed under the base's name. Not accepting it
/// would make every check say "not resident" after a load that changed nothing.
fn find<'a>(ps: &'a [RunningModel], model: &ModelName, settings: &Settings) -> Option<&'a RunningModel> {
    ps.iter().find(|m| model.matches(&m.name)).or_else(|| ps.iter().find(|m| shares_runner(m, model, settings)))
}

fn shares_runner(m: &RunningModel, model: &ModelName, settings: &Settings) -> bool {
    settings.derived(model).is_some_and(|d| d.from.matches(&m.name) && d.num_ctx.is_some_and(|c| m.context_length == Some(c.get())))
}

/// The seed's boot trap: another model loaded before ours (a client that was faster, a model
/// preloaded by some other unit) takes the unified memory and ours lands partly on the CPU.
/// Unloads every model that is not ours and waits until /api/ps no longer lists them. Returns
/// what it unloaded.
pub async fn unload_others<A: OllamaApi>(api: &A, settings: &Settings, model: &ModelName) -> Result<Vec<String>, Failure> {
    let ps = api.ps().await.map_err(Failure::Unreachable)?;
    let others: Vec<String> = ps.models.iter().filter(|m| !model.matches(&m.name) && !shares_runner(m, model, settings)).map(|m| m.name.clone()).collect();
    for name in &others {
        tracing::warn!("{} was loaded before {model}: unloading it so that {model} loads first, whole, on the GPU", crate::text::clip(name, 100));
        api.load(name, KeepAlive::Unload).await.map_err(Failure::Unreachable)?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !others.is_empty() {
        let ps = api.ps().await.map_err(Failure::Unreachable)?;
        if !ps.models.iter().any(|m| others.contains(&m.name)) {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!("{} still loaded after 60 s (busy with a request?); loading {model} anyway", others.join(", "));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(others)
}

/// Why our model is gone, from what /api/ps shows instead (for the log and `status`).
fn absence(ps: &[RunningModel]) -> String {
    if ps.is_empty() {
        "nothing is loaded: another client's keep_alive 0, a runtime out-of-memory, or an Ollama restart unloaded it".into()
    } else {
        let others: Vec<String> = ps.iter().map(|m| crate::text::clip(&m.name, 100)).collect();
        format!("{} is loaded instead: another client's request evicted it", others.join(", "))
    }
}

/// Checks placement and pin in /api/ps.
pub async fn verify<A: OllamaApi>(api: &A, settings: &Settings, model: &ModelName) -> Result<WarmReport, Failure> {
    check(api, settings, model).await.map(|(r, _)| r)
}

/// [`verify`], and the context's [`drift`] seen in the same look.
async fn check<A: OllamaApi>(api: &A, settings: &Settings, model: &ModelName) -> Result<(WarmReport, Option<(u64, u64)>), Failure> {
    let ps = api.ps().await.map_err(Failure::Unreachable)?;
    let m = find(&ps.models, model, settings).ok_or_else(|| Failure::NotResident { model: model.to_string() })?;
    let drifted = drift(m, model, settings);
    let pct = m.gpu_percent();
    // expected_compute = "cpu" (a host without a GPU): the CPU is where it is meant to be.
    let cpu_host = settings.expected_compute.is_cpu();
    if m.size_vram == 0 && !cpu_host {
        return Err(Failure::OnCpu { model: model.to_string(), hint: "Ollama placed it on the CPU; run `jetson-llmd gpu-check` to see why".into() });
    }
    if pct < settings.min_gpu_percent && !cpu_host {
        return Err(Failure::PartlyOnGpu { model: model.to_string(), percent: pct, min: settings.min_gpu_percent });
    }
    let report = WarmReport { model: model.to_string(), gpu_percent: pct, size: m.size, size_vram: m.size_vram, expires_at: m.expires_at.clone(), pinned: m.pinned_forever(), load_ms: None, rewarmed: false, dropped_caches: false, evicted: None };
    Ok((report, drifted))
}

/// `jetson-llmd preload`: model present, loaded pinned, verified on the GPU.
pub async fn preload<A: OllamaApi, R: MemoryRelief>(api: &A, settings: &Settings, model: &ModelName, relief: &R) -> Result<WarmReport, Failure> {
    ensure_present(api, settings, model).await?;
    let already = api.ps().await.map_err(Failure::Unreachable)?.models.iter().any(|m| model.matches(&m.name));
    let (mut r, took, dropped) = load_verified(api, settings, model, relief).await?;
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
    let before = find(&ps.models, model, settings).cloned();
    let evicted = before.is_none().then(|| absence(&ps.models));
    if let Some(why) = &evicted {
        tracing::warn!("{model} is not loaded ({why}); re-warming");
        ensure_present(api, settings, model).await?;
    } else if let Some(b) = &before {
        if !b.pinned_forever() {
            tracing::warn!("{model} had a finite expiry ({}); another client changed its keep_alive; pinning it again", b.expires_at);
        }
    }
    let (mut r, took, dropped) = load_verified(api, settings, model, relief).await?;
    r.rewarmed = before.is_none();
    r.load_ms = r.rewarmed.then_some(took.as_millis() as u64);
    r.dropped_caches = dropped;
    r.evicted = evicted;
    Ok(r)
}

/// Re-warms that keep happening mean another client keeps taking the memory (a chat UI offering
/// every model, a library sending its own num_ctx). Every reload risks unallocatable memory on
/// this board, so instead of fighting back every interval the keepalive waits longer each time:
/// from the third re-warm within an hour, the interval doubles per further re-warm, up to 1 h.
#[derive(Debug, Default, Clone)]
pub struct EvictionBackoff {
    recent: std::collections::VecDeque<Instant>,
}

impl EvictionBackoff {
    const WINDOW: Duration = Duration::from_secs(3600);
    const CAP: Duration = Duration::from_secs(3600);

    pub fn record(&mut self, rewarmed: bool) {
        let now = Instant::now();
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > Self::WINDOW) {
            self.recent.pop_front();
        }
        if rewarmed {
            if self.recent.len() >= 16 {
                self.recent.pop_front();
            }
            self.recent.push_back(now);
        }
    }

    /// The back-off as a previous keepalive left it: re-warms at these Unix seconds.
    pub fn from_history(unix: &[u64]) -> EvictionBackoff {
        let (now, now_unix) = (Instant::now(), unix_now());
        let recent = unix.iter().filter(|t| **t <= now_unix && now_unix - **t <= Self::WINDOW.as_secs()).filter_map(|t| now.checked_sub(Duration::from_secs(now_unix - t))).collect::<std::collections::VecDeque<_>>();
        let mut b = EvictionBackoff { recent };
        b.record(false);
        b
    }

    /// The re-warms of the last hour as Unix seconds (for keepalive.json).
    pub fn history(&self) -> Vec<u64> {
        let (now, now_unix) = (Instant::now(), unix_now());
        self.recent.iter().filter(|t| now.duration_since(**t) <= Self::WINDOW).map(|t| now_unix.saturating_sub(now.duration_since(*t).as_secs())).collect()
    }

    /// Re-warms within the last hour.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        self.recent.iter().filter(|t| now.duration_since(**t) <= Self::WINDOW).count()
    }

    /// The wait before the next tick.
    pub fn wait(&self, interval: Duration) -> Duration {
        match self.count() {
            n if n >= 3 => interval.saturating_mul(1u32 << (n - 2).min(10)).min(Self::CAP.max(interval)),
            _ => interval,
        }
    }

    /// Words for `status` while it holds back.
    pub fn describe(&self, interval: Duration) -> Option<String> {
        let n = self.count();
        (n >= 3).then(|| {
            format!(
                "the model was re-warmed {n} times in the last hour (another client keeps evicting it); re-warming only every {} to avoid a reload fight that fragments GPU memory; the guard will stop this",
                humantime::format_duration(self.wait(interval))
            )
        })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Capped exponential backoff: 5 s doubling up to `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_secs(5);
    let f = failures.saturating_sub(1).min(16);
    base.saturating_mul(1u32 << f).min(max)
}

/// What a residency check found.
#[derive(Debug, Clone, PartialEq)]
pub enum Residency {
    Pinned,
    /// Loaded, but another client's keep_alive gave it an expiry.
    Unpinned {
        expires_at: String,
    },
    /// Gone; why, from what is loaded instead.
    Missing(String),
    /// Loaded with another context than config.toml gives it (re-created or reloaded by someone).
    Drifted {
        want: u64,
        got: u64,
    },
}

/// One cheap /api/ps look at our model.
pub async fn residency<A: OllamaApi>(api: &A, settings: &Settings, model: &ModelName) -> Result<Residency, Failure> {
    let ps = api.ps().await.map_err(Failure::Unreachable)?;
    Ok(match find(&ps.models, model, settings) {
        Some(m) if let Some((want, got)) = drift(m, model, settings) => Residency::Drifted { want, got },
        Some(m) if m.pinned_forever() => Residency::Pinned,
        Some(m) => Residency::Unpinned { expires_at: crate::text::clip(&m.expires_at, 40) },
        None => Residency::Missing(absence(&ps.models)),
    })
}

/// Unloads `name` (keep_alive 0) and waits until /api/ps no longer lists it (at most a minute:
/// a busy model unloads when its request ends).
pub async fn unload_and_wait<A: OllamaApi>(api: &A, name: &str) -> Result<(), Failure> {
    api.load(name, KeepAlive::Unload).await.map_err(Failure::Unreachable)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = api.ps().await.map_err(Failure::Unreachable)?;
        if !ps.models.iter().any(|m| m.name == name) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure::LoadFailed { model: name.to_string(), detail: "still loaded a minute after keep_alive 0 (busy with a request?)".into() });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn repeated_evictions_back_off_and_calm_down() {
        let i = Duration::from_secs(240);
        let mut b = EvictionBackoff::default();
        b.record(false);
        b.record(true);
        b.record(true);
        assert_eq!(b.wait(i), i, "two re-warms are not a fight");
        assert!(b.describe(i).is_none());
        b.record(true);
        assert_eq!(b.wait(i), 2 * i);
        b.record(true);
        assert_eq!(b.wait(i), 4 * i);
        for _ in 0..10 {
            b.record(true);
        }
        assert_eq!(b.wait(i), Duration::from_secs(3600), "capped at an hour");
        assert!(b.describe(i).is_some_and(|d| d.contains("1h")));
        tokio::time::advance(Duration::from_secs(3601)).await;
        b.record(false);
        assert_eq!(b.wait(i), i, "an hour of peace resets it");
    }

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
