//! `jetson-llmd status`: one screen (or one JSON object) of what matters, built from the live
//! API and the supervisor's state file. Works unprivileged.

use crate::conf::{modelconf, ModelName, Settings};
use crate::failure::code;
use crate::host::memory::{meminfo, MemoryInfo};
use crate::host::{fs, liveness, rooted, Liveness};
use crate::ollama::discovery::GpuReport;
use crate::ollama::warm::TickRecord;
use crate::ollama::OllamaApi;
use crate::records::state::{read_keepalive, State, StateFile};
use crate::records::Stage;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Healthy,
    Degraded,
    Unreachable,
}

#[derive(Debug, Serialize)]
pub struct OllamaInfo {
    pub url: String,
    pub reachable: bool,
    pub version: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub configured: Option<String>,
    pub config_error: Option<String>,
    pub loaded: bool,
    pub gpu_percent: Option<u8>,
    pub size: Option<u64>,
    pub size_vram: Option<u64>,
    pub expires_at: Option<String>,
    /// "forever" when pinned with keep_alive -1.
    pub expiry: Option<String>,
    pub context_length: Option<u64>,
    /// The model the running supervisor serves when it is not model.conf's (a switch under
    /// way, or the new one refused): the fields above describe this one then.
    pub serving: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub health: Health,
    pub warnings: Vec<String>,
    pub ollama: OllamaInfo,
    pub model: ModelInfo,
    pub gpu: Option<GpuReport>,
    /// The supervisor's state file, if there is one.
    pub supervisor: Option<State>,
    /// Whether the process that wrote it still runs (an unprivileged caller can tell too).
    pub supervisor_running: Option<Liveness>,
    /// The last ping of `jetson-llmd keepalive` (ollama-keepalive.service), if it wrote one.
    pub keepalive: Option<TickRecord>,
    /// The four units as systemd sees them (empty without a system bus).
    pub units: Vec<crate::host::systemd::UnitInfo>,
    pub memory: MemoryInfo,
    /// Footprints measured here (the fit table), for memory admission.
    pub fit: Vec<crate::ollama::fit::Fit>,
    /// Temperatures, GPU load and clock, power mode, swap devices, CMA (under --root).
    pub host: Option<crate::host::probe::Probes>,
    /// The last `jetson-llmd bench` (its table rows).
    pub bench: Vec<crate::report::bench::Row>,
    /// What `jetson-llmd install`/`upgrade` installed (install.json), if it did.
    pub install: Option<crate::install::state::InstallState>,
    /// Where clients connect and where Ollama listens, when the guard is on.
    pub guard: Option<String>,
    /// The guard's admission per class (`[[guard.class]]`), from its board endpoint.
    pub queues: Vec<crate::guard::admission::ClassStats>,
}

impl StatusReport {
    pub fn exit_code(&self) -> i32 {
        match self.health {
            Health::Healthy => code::OK,
            Health::Unreachable => code::UNREACHABLE,
            Health::Degraded => code::FAILED,
        }
    }
}

pub async fn gather<A: OllamaApi>(api: &A, settings: &Settings, model_conf: &Path, root: &Path) -> StatusReport {
    let mut warnings = Vec::new();
    let (configured, config_error) = match modelconf::read(model_conf).await {
        Ok(c) => (Some(c.model), None),
        Err(e) => (None, Some(e.to_string())),
    };
    if let Some(e) = &config_error {
        warnings.push(format!("model.conf: {}", e.lines().next().unwrap_or("")));
    }
    let state_dir = rooted(root, &settings.state_dir);
    let supervisor = match StateFile::read(&state_dir).await {
        Ok(s) => s,
        Err(e) => {
            warnings.push(format!("cannot read the supervisor's state: {e}"));
            None
        }
    };
    let supervisor_running = supervisor.as_ref().map(|s| liveness(s.pid));
    match (&supervisor, supervisor_running) {
        (Some(s), Some(Liveness::NotRunning)) => {
            warnings.push(format!("jetson-llmd supervise (pid {}) is not running; the state below is from its last run", s.pid));
        }
        (Some(s), Some(Liveness::Unknown)) => warnings.push(format!("cannot tell whether jetson-llmd supervise (pid {}) still runs", s.pid)),
        _ => {}
    }
    let mut ollama = OllamaInfo { url: api.url(), reachable: false, version: None, error: None };
    match api.version().await {
        Ok(v) => {
            ollama.reachable = true;
            ollama.version = Some(v.version);
        }
        Err(e) => ollama.error = Some(e.to_string()),
    }
    let mut model = ModelInfo { configured: configured.as_ref().map(ModelName::to_string), config_error, loaded: false, gpu_percent: None, size: None, size_vram: None, expires_at: None, expiry: None, context_length: None, serving: None };
    // With an invalid model.conf the supervisor keeps the model it had: that one is ours, not
    // "also loaded".
    let kept = if configured.is_none() && supervisor_running == Some(Liveness::Running) { supervisor.as_ref().and_then(|s| s.model.as_deref()).and_then(|m| ModelName::parse(m).ok()) } else { None };
    let mut ours = configured.clone().or(kept);
    // model.conf edited, the supervisor still serving the old model: while the new one is
    // pulled and admitted (or after it was refused) the old one is what clients get, not a
    // model "also loaded" beside ours.
    let serving = supervisor.as_ref().filter(|_| supervisor_running == Some(Liveness::Running)).and_then(|s| s.model.as_deref()).and_then(|m| ModelName::parse(m).ok());
    let mut incoming = None;
    if let (Some(c), Some(s)) = (&configured, &serving) {
        if !c.matches(&s.to_string()) {
            warnings.push(format!("model.conf names {c}; jetson-llmd serves {s} until {c} is pulled, admitted and loaded (or says below why it is not)"));
            model.serving = Some(s.to_string());
            incoming = Some(c.clone());
            ours = Some(s.clone());
        }
    }
    if ollama.reachable {
        match api.ps().await {
            Ok(ps) => {
                if let Some(m) = ours.as_ref().and_then(|c| ps.models.iter().find(|m| c.matches(&m.name))) {
                    model.loaded = true;
                    model.gpu_percent = Some(m.gpu_percent());
                    model.size = Some(m.size);
                    model.size_vram = Some(m.size_vram);
                    model.expires_at = Some(m.expires_at.clone());
                    model.expiry = Some(if m.pinned_forever() { "forever".into() } else { m.expires_at.clone() });
                    model.context_length = m.context_length;
                }
                for other in ps.models.iter().filter(|m| !ours.as_ref().is_some_and(|c| c.matches(&m.name)) && !incoming.as_ref().is_some_and(|c| c.matches(&m.name))) {
                    warnings.push(format!("{} is also loaded ({}% GPU): it competes for the 8 GB of unified memory", other.name, other.gpu_percent()));
                }
            }
            Err(e) => warnings.push(format!("cannot list loaded models: {e}")),
        }
    }
    let memory = fs::read_text(&root.join("proc/meminfo"), fs::cap::PROC).await.map(|t| meminfo(&t)).unwrap_or_default();
    if let (Some(t), Some(f)) = (memory.swap_total_kb, memory.swap_free_kb) {
        if t > f && t - f > 64 * 1024 {
            warnings.push(format!("{} MiB of swap in use: on eMMC that is a performance cliff; use a smaller model or context", (t - f) / 1024));
        }
    }
    let live = supervisor_running == Some(Liveness::Running);
    if let Some(s) = supervisor.as_ref().filter(|_| live) {
        warnings.extend(s.warnings.iter().map(|w| w.text.clone()));
        if s.stage != Stage::Ready && !s.status.is_empty() {
            warnings.insert(0, s.status.clone());
        }
    }
    if model.loaded && model.expiry.as_deref() != Some("forever") {
        warnings.push("the model is not pinned (finite expiry): another client changed keep_alive; keepalive re-pins it".into());
    }
    // expected_compute = "cpu" (a host without a GPU): the GPU share says nothing.
    let placed = |pct: u8| settings.expected_compute.is_cpu() || pct >= settings.min_gpu_percent.max(1);
    if model.loaded && !settings.expected_compute.is_cpu() && model.gpu_percent.unwrap_or(0) < settings.min_gpu_percent {
        warnings.push(format!("the model is only {}% on the GPU", model.gpu_percent.unwrap_or(0)));
    }
    let gpu = supervisor.as_ref().and_then(|s| s.gpu.clone());
    let supervisor_ok = supervisor.as_ref().is_none_or(|s| s.stage == Stage::Ready && live);
    let health = if !ollama.reachable {
        Health::Unreachable
    } else if model.loaded && placed(model.gpu_percent.unwrap_or(0)) && model.expiry.as_deref() == Some("forever") && supervisor_ok {
        Health::Healthy
    } else {
        Health::Degraded
    };
    let keepalive = match read_keepalive(&state_dir).await {
        Ok(k) => k,
        Err(e) => {
            warnings.push(format!("cannot read the keepalive's last ping: {e}"));
            None
        }
    };
    // ollama-keepalive.service holding back after repeated evictions says so here too.
    if let Some(n) = keepalive.as_ref().and_then(|k| k.note.clone()) {
        if !warnings.contains(&n) {
            warnings.push(n);
        }
    }
    // Everything above may carry text from files or Ollama: clean it once, here.
    let warnings = warnings.iter().map(|w| crate::text::clip(w, 500)).collect();
    let fit = crate::ollama::fit::FitTable::load(&state_dir).await.entries;
    let host = Some(crate::host::probe::gather(root).await);
    let bench = match fs::read_capped(&state_dir.join("bench.json"), fs::cap::STATE).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let install = crate::install::state::InstallState::load(root).await.ok().filter(|s| s.current.is_some());
    let guard = settings
        .guard
        .enabled
        .then(|| format!("clients on {} (policy: models {:?}, options {:?}); Ollama behind it at {}; this status talks to Ollama directly", settings.guard.listen, settings.guard.models, settings.guard.options, api.url()).to_lowercase());
    let queues = if settings.guard.enabled && !settings.guard.classes.is_empty() { guard_board(settings.guard.listen).await.map(|b| b.queues).unwrap_or_default() } else { Vec::new() };
    StatusReport { health, warnings, ollama, model, gpu, supervisor, supervisor_running, keepalive, units: Vec::new(), memory, fit, host, bench, install, guard, queues }
}

/// The guard's `GET /jetson-llmd/board` on loopback (2 s, 256 KiB at most); None when it does
/// not answer (the supervisor is not running).
async fn guard_board(listen: std::net::SocketAddr) -> Option<crate::guard::Board> {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(2)).no_proxy().build().ok()?;
    let mut resp = http.get(format!("http://{addr}{}", crate::guard::BOARD_PATH)).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut body = Vec::new();
    while let Some(c) = resp.chunk().await.ok()? {
        if body.len() + c.len() > 256 << 10 {
            return None;
        }
        body.extend_from_slice(&c);
    }
    serde_json::from_slice(&body).ok()
}

/// Reads the units over the system bus (works unprivileged); quietly empty without one.
pub async fn units() -> Vec<crate::host::systemd::UnitInfo> {
    use crate::host::systemd::{Systemd, KEEPALIVE, OLLAMA, PRELOAD, SUPERVISOR};
    let Ok(Ok(sd)) = tokio::time::timeout(std::time::Duration::from_secs(2), Systemd::system()).await else { return Vec::new() };
    let mut out = Vec::new();
    for u in [SUPERVISOR, OLLAMA, PRELOAD, KEEPALIVE] {
        if let Ok(Ok(i)) = tokio::time::timeout(std::time::Duration::from_secs(2), sd.info(u)).await {
            if i.load_state != "not-found" {
                out.push(i);
            }
        }
    }
    out
}

use crate::ollama::fit::gib;

/// The human rendering.
pub fn render(r: &StatusReport) -> String {
    let mut o = String::new();
    let mark = match r.health {
        Health::Healthy => "OK",
        Health::Unreachable => "DOWN",
        Health::Degraded => "DEGRADED",
    };
    o.push_str(&format!("jetson-llmd: {mark}\n"));
    for w in &r.warnings {
        o.push_str(&format!("  ! {}\n", crate::text::clean(w)));
    }
    o.push('\n');
    let row = |o: &mut String, k: &str, v: String| o.push_str(&format!("  {k:<13} {v}\n"));
    row(
        &mut o,
        "ollama",
        match (&r.ollama.version, &r.ollama.error) {
            (Some(v), _) => format!("{v} at {}", r.ollama.url),
            (None, Some(e)) => format!("unreachable: {e}"),
            _ => "unknown".into(),
        },
    );
    if let Some(g) = &r.guard {
        row(&mut o, "guard", g.clone());
    }
    for q in &r.queues {
        let mean = if q.admitted > 0 { q.wait_seconds / q.admitted as f64 } else { 0.0 };
        row(
            &mut o,
            "class",
            crate::text::clean(&format!(
                "{} (priority {}): {} waiting, {} in Ollama; {} admitted, mean wait {mean:.1} s, longest {:.1} s; refused {} queue full, {} waited too long; {} left while waiting",
                q.class, q.priority, q.queued, q.running, q.admitted, q.max_wait_seconds, q.refused_full, q.refused_wait, q.left
            )),
        );
    }
    if let Some(c) = r.install.as_ref().and_then(|i| i.current.as_ref()) {
        let prev = r.install.as_ref().and_then(|i| i.previous.as_ref()).map(|p| format!("; rollback to {}", p.version)).unwrap_or_default();
        row(&mut o, "installed", crate::text::clean(&format!("Ollama {} from {} on {}{prev}", c.version, c.origin, c.installed_at)));
    }
    if let Some(g) = &r.gpu {
        let text = if g.gpu {
            format!("CUDA {} compute {}{}", g.description.as_deref().or(g.name.as_deref()).unwrap_or("?"), g.compute.as_deref().unwrap_or("?"), g.libdirs.as_deref().map(|l| format!(" ({l})")).unwrap_or_default())
        } else if g.as_expected {
            "CPU (expected_compute = \"cpu\": a host without a GPU)".to_string()
        } else {
            format!("CPU fallback: {}", g.cpu_fallback_reason.as_deref().unwrap_or("no GPU discovered"))
        };
        row(&mut o, "gpu", crate::text::clean(&text));
    }
    let m = &r.model;
    row(
        &mut o,
        "model",
        match (&m.configured, &m.config_error) {
            (Some(c), _) => c.clone(),
            (None, Some(e)) => format!("(invalid model.conf) {}", e.lines().next().unwrap_or("")),
            _ => "-".into(),
        },
    );
    if m.loaded {
        row(&mut o, "loaded", format!("yes, {}% GPU, {} ({} on GPU), context {}", m.gpu_percent.unwrap_or(0), gib(m.size.unwrap_or(0)), gib(m.size_vram.unwrap_or(0)), m.context_length.map_or("?".into(), |c| c.to_string())));
        row(&mut o, "expires", m.expiry.clone().unwrap_or_default());
    } else {
        row(&mut o, "loaded", "no".into());
    }
    if let Some(s) = &r.supervisor {
        let stage = match r.supervisor_running {
            Some(crate::host::Liveness::NotRunning) => format!("not running (last stage: {})", s.stage),
            _ => format!("{} ({})", s.stage, crate::text::clean(&s.status)),
        };
        row(&mut o, "stage", stage);
        // The supervisor pings itself in process mode; under systemd the keepalive unit does.
        let newest = [s.last_ping.as_ref(), r.keepalive.as_ref()].into_iter().flatten().max_by_key(|p| p.at);
        if let Some(p) = newest {
            row(&mut o, "last ping", format!("{} {}", p.at, crate::text::clean(&p.detail)));
        }
        if let Some(p) = &s.switching {
            row(&mut o, "switching", crate::text::clean(p));
        }
        row(&mut o, "re-warms", format!("{} (re-pins: {}, Ollama restarts: {})", s.rewarm_count, s.repin_count, s.ollama_restarts));
        if !s.timeline.is_empty() {
            // The boot ends where the keepalive starts; what the timeline gained later (re-warms,
            // switches) is said apart, not as if the boot had taken that long.
            let boot = s.timeline.iter().position(|e| e.event == "keepalive running").map_or(s.timeline.len(), |i| i + 1);
            o.push_str("  boot timeline:\n");
            for (i, e) in s.timeline.iter().enumerate() {
                if i == boot {
                    o.push_str("  since then (after the boot's start):\n");
                }
                o.push_str(&format!("    +{:>7.1}s  {}\n", e.after_ms as f64 / 1000.0, crate::text::clean(&e.event)));
            }
        }
    } else {
        row(&mut o, "supervisor", "no state file (jetson-llmd supervise not running?)".into());
    }
    if !r.units.is_empty() {
        o.push_str("  units:\n");
        for u in &r.units {
            o.push_str(&format!(
                "    {:<26} {}/{}{}{}\n",
                u.unit,
                u.active_state,
                u.sub_state,
                u.since.as_deref().map(|s| format!(" since {s}")).unwrap_or_default(),
                u.result.as_deref().filter(|r| *r != "success").map(|r| format!(" (result: {r})")).unwrap_or_default()
            ));
        }
    }
    if let Some(h) = &r.host {
        if let (Some(t), Some(f)) = (h.memory.cma_total_kb, h.memory.cma_free_kb) {
            row(&mut o, "cma", format!("{} MiB free of {} MiB", f / 1024, t / 1024));
        }
        if let Some(l) = h.largest_free_block_kb {
            // tegrastats' "lfb": shrinking after reloads is the fragmentation the seed warns about.
            row(&mut o, "largest free", if l >= 1024 { format!("{} MiB block (buddyinfo)", l / 1024) } else { format!("{l} kB block (buddyinfo)") });
        }
        if !h.thermal.is_empty() {
            let t: Vec<String> = h.thermal.iter().map(|(n, c)| format!("{} {}", n.trim_end_matches("-thermal"), c.map_or("n/a".into(), |c| format!("{c:.1} C")))).collect();
            row(&mut o, "temperature", t.join(", "));
        }
        if h.gpu_load_permille.is_some() || h.gpu_cur_freq_hz.is_some() {
            row(
                &mut o,
                "gpu load",
                format!(
                    "{} at {} (max {})",
                    h.gpu_load_permille.map_or("n/a".into(), |l| format!("{:.1}%", l as f64 / 10.0)),
                    h.gpu_cur_freq_hz.map_or("n/a".into(), |f| format!("{:.0} MHz", f as f64 / 1e6)),
                    h.gpu_max_freq_hz.map_or("n/a".into(), |f| format!("{:.0} MHz", f as f64 / 1e6))
                ),
            );
        }
        if let Some(m) = &h.power_mode {
            let pinned = match h.clocks_pinned() {
                Some(true) => ", clocks pinned (jetson_clocks)",
                Some(false) => ", clocks not pinned",
                None => "",
            };
            row(&mut o, "power mode", format!("nvpmodel {m}{pinned}"));
        }
        for s in h.swaps.iter().filter(|s| s.on_emmc && s.used_kb > 0) {
            o.push_str(&format!("  ! {} MiB swapped to eMMC ({}): generation slows to a crawl\n", s.used_kb / 1024, crate::text::clean(&s.device)));
        }
    }
    for b in &r.bench {
        row(&mut o, "last bench", format!("{} {:.1} tok/s ({} runs), {}% GPU", crate::text::clean(&b.model), b.tok_s_median, b.runs, b.gpu_percent));
    }
    if let (Some(t), Some(a)) = (r.memory.mem_total_kb, r.memory.mem_available_kb) {
        let swap = match (r.memory.swap_total_kb, r.memory.swap_free_kb) {
            (Some(t), Some(f)) => format!(", swap used {} MiB", t.saturating_sub(f) / 1024),
            _ => String::new(),
        };
        row(&mut o, "memory", format!("{} MiB available of {} MiB{swap}", a / 1024, t / 1024));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        let mut state = State { pid: 1, stage: Stage::Ready, status: "ready: gemma4:e2b-8k warm on the GPU, pinned".into(), rewarm_count: 2, ollama_restarts: 1, ..Default::default() };
        for (e, ms) in [("ollama active", 16), ("API ready", 121), ("GPU found", 129), ("model warm", 41433), ("keepalive running", 41470)] {
            state.timeline.push(crate::records::state::TimelineEvent { event: e.into(), at: serde_json::from_value(serde_json::json!("2026-11-23T22:00:00Z")).expect("time"), after_ms: ms });
        }
        StatusReport {
            health: Health::Degraded,
            warnings: vec!["1200 MiB of swap in use: on eMMC that is a performance cliff; use a smaller model or context".into(), "evil \u{1b}[2Jescape".into()],
            ollama: OllamaInfo { url: "http://127.0.0.1:11434/".into(), reachable: true, version: Some("0.30.6".into()), error: None },
            model: ModelInfo {
                configured: Some("gemma4:e2b-8k".into()),
                config_error: None,
                loaded: true,
                gpu_percent: Some(100),
                size: Some(3_865_470_566),
                size_vram: Some(3_865_470_566),
                expires_at: Some("2318-03-01T00:00:00Z".into()),
                expiry: Some("forever".into()),
                context_length: Some(8192),
                serving: None,
            },
            gpu: Some(GpuReport { gpu: true, discovered: true, description: Some("Orin".into()), compute: Some("8.7".into()), ..Default::default() }),
            supervisor: Some(state),
            supervisor_running: Some(Liveness::Running),
            keepalive: Some(TickRecord {
                at: serde_json::from_value(serde_json::json!("2026-11-23T22:04:00Z")).expect("time"),
                model: "gemma4:e2b-8k".into(),
                ok: true,
                detail: "gemma4:e2b-8k warm, 100% GPU".into(),
                rewarmed: false,
                rewarm_count: 2,
                consecutive_failures: 0,
                report: None,
                note: None,
                failure: None,
                recent_rewarms: Vec::new(),
            }),
            units: vec![crate::host::systemd::UnitInfo {
                unit: "ollama.service".into(),
                load_state: "loaded".into(),
                active_state: "active".into(),
                sub_state: "running".into(),
                since: Some("2026-11-23T22:00:00Z".into()),
                result: Some("success".into()),
                exec_main_status: Some(0),
                status_text: None,
            }],
            memory: meminfo("MemTotal: 7800000 kB\nMemAvailable: 4000000 kB\nSwapTotal: 3900000 kB\nSwapFree: 2671200 kB\n"),
            fit: Vec::new(),
            host: None,
            bench: Vec::new(),
            guard: None,
            queues: Vec::new(),
            install: Some(crate::install::state::InstallState {
                current: Some(crate::install::state::Release {
                    dir: "0.30.6-1a2b3c4d5e6f".into(),
                    version: "0.30.6".into(),
                    origin: "https://github.com/ollama/ollama/releases/download/v0.30.6/ollama-linux-arm64.tar.zst".into(),
                    installed_at: "2026-11-23T21:59:00Z".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn render_puts_warnings_first_and_strips_escapes() {
        let text = render(&report());
        assert!(!text.contains('\u{1b}'));
        insta::assert_snapshot!(text);
        assert_eq!(report().exit_code(), code::FAILED);
    }

    #[test]
    fn host_lines_say_n_a_where_there_is_no_reading() {
        let mut r = report();
        r.host = Some(crate::host::probe::Probes {
            memory: meminfo("CmaTotal: 262144 kB\nCmaFree: 100000 kB\n"),
            thermal: vec![("cpu-thermal".into(), Some(51.218)), ("gpu-thermal".into(), None)],
            gpu_load_permille: Some(975),
            gpu_cur_freq_hz: Some(1_020_000_000),
            gpu_max_freq_hz: Some(1_020_000_000),
            power_mode: Some("0002".into()),
            gpu_min_freq_hz: Some(1_020_000_000),
            swaps: vec![crate::host::probe::Swap { device: "/dev/mmcblk0p15".into(), size_kb: 3_900_000, used_kb: 1_228_800, on_emmc: true }],
            ..Default::default()
        });
        let text = render(&r);
        for want in
            ["cma           97 MiB free of 256 MiB", "temperature   cpu 51.2 C, gpu n/a", "gpu load      97.5% at 1020 MHz (max 1020 MHz)", "power mode    nvpmodel 0002, clocks pinned (jetson_clocks)", "! 1200 MiB swapped to eMMC (/dev/mmcblk0p15)"]
        {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }

    #[test]
    fn queues_are_one_line_per_class() {
        let mut r = report();
        r.queues = vec![crate::guard::admission::ClassStats { class: "chat".into(), priority: 10, queued: 1, running: 1, admitted: 4, wait_seconds: 2.0, max_wait_seconds: 1.5, refused_full: 2, ..Default::default() }];
        let text = render(&r);
        let want = "class         chat (priority 10): 1 waiting, 1 in Ollama; 4 admitted, mean wait 0.5 s, longest 1.5 s; refused 2 queue full, 0 waited too long; 0 left while waiting";
        assert!(text.contains(want), "{want:?} in\n{text}");
    }

    #[test]
    fn later_re_warms_are_not_part_of_the_boot_timeline() {
        let mut r = report();
        if let Some(s) = r.supervisor.as_mut() {
            s.timeline.push(crate::records::state::TimelineEvent { event: "model warm".into(), at: serde_json::from_value(serde_json::json!("2026-11-23T23:00:00Z")).expect("time"), after_ms: 3_600_000 });
        }
        let text = render(&r);
        let (boot, later) = text.split_once("  since then (after the boot's start):\n").expect("a later part");
        assert!(boot.contains("keepalive running") && later.contains("+ 3600.0s  model warm"), "{text}");
    }

    #[test]
    fn meminfo_fields() {
        let m = meminfo("MemTotal:        7800000 kB\nMemAvailable:    5000000 kB\nSwapTotal: 3900000 kB\nSwapFree: 3900000 kB\nCmaTotal: 262144 kB\nCmaFree: 100 kB\n");
        assert_eq!(m.mem_available_kb, Some(5_000_000));
        assert_eq!(m.cma_total_kb, Some(262_144));
    }

    #[tokio::test]
    async fn a_keepalive_holding_back_is_a_warning_and_a_dead_supervisor_is_not_ready() {
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path().join("run/jetson-llmd");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(root.path().join("model.conf"), "OLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
        std::fs::write(
            dir.join("keepalive.json"),
            r#"{"at":"2026-11-24T10:00:00Z","model":"gemma4:e2b-8k","ok":true,"detail":"x","rewarmed":true,"rewarm_count":4,"consecutive_failures":0,"report":null,"note":"the model was re-warmed 4 times in the last hour"}"#,
        )
        .expect("w");
        std::fs::write(dir.join("state.json"), format!(r#"{{"pid": {}, "stage": "ready", "status": "ready: x"}}"#, u32::MAX / 2)).expect("w");
        let api = crate::testing::FakeApi::default().with_loaded("gemma4:e2b-8k");
        let r = gather(&api, &Settings::default(), &root.path().join("model.conf"), root.path()).await;
        assert!(r.warnings.iter().any(|w| w.starts_with("the model was re-warmed 4 times")), "{:?}", r.warnings);
        assert_eq!(r.supervisor_running, Some(Liveness::NotRunning));
        assert_eq!(r.health, Health::Degraded, "a dead supervisor's \"ready\" is not healthy");
    }

    #[tokio::test]
    async fn a_switch_under_way_is_said_and_the_old_model_is_not_also_loaded() {
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path().join("run/jetson-llmd");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(root.path().join("model.conf"), "OLLAMA_MODEL=gemma3:4b\n").expect("w");
        std::fs::write(dir.join("state.json"), format!(r#"{{"pid": {}, "stage": "ready", "status": "ready: x", "model": "gemma4:e2b-8k"}}"#, std::process::id())).expect("w");
        let api = crate::testing::FakeApi::default().with_loaded("gemma4:e2b-8k");
        let r = gather(&api, &Settings { expected_compute: crate::conf::config::ExpectedCompute::Cpu, ..Settings::default() }, &root.path().join("model.conf"), root.path()).await;
        assert!(r.warnings.iter().any(|w| w.starts_with("model.conf names gemma3:4b; jetson-llmd serves gemma4:e2b-8k until")), "{:?}", r.warnings);
        assert!(!r.warnings.iter().any(|w| w.contains("also loaded")), "{:?}", r.warnings);
        assert!(r.model.loaded && r.model.serving.as_deref() == Some("gemma4:e2b-8k"), "{:?}", r.model);
    }
}
