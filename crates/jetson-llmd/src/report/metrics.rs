//! Prometheus text exposition and /healthz, served by the supervisor (metrics_listen, default
//! 127.0.0.1:9464; "off" turns it off). Figures come from the supervisor's state as it saves it
//! and from the host probes read at scrape time, so a scrape costs a few small file reads.

use crate::guard::admission::ClassStats;
use crate::host::probe::{self, Probes};
use crate::records::state::State;
use crate::records::Stage;
use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use tokio::sync::watch;

type F64 = Gauge<f64, AtomicU64>;

fn gauge(r: &mut Registry, name: &str, help: &str, v: f64) {
    let g = F64::default();
    g.set(v);
    r.register(name, help, g);
}

fn labelled(r: &mut Registry, name: &str, help: &str, rows: Vec<(Vec<(String, String)>, f64)>) {
    let f = Family::<Vec<(String, String)>, F64>::default();
    for (labels, v) in rows {
        f.get_or_create(&labels).set(v);
    }
    r.register(name, help, f);
}

/// The exposition text for one scrape.
/// `guard`: the guard's decisions by rule, when the guard runs; `queues`: its admission per
/// class, when `[[guard.class]]` is written.
pub fn render(s: &State, host: Option<&Probes>, guard: Option<&[(&'static str, u64)]>, queues: &[ClassStats]) -> String {
    let mut r = Registry::with_prefix("jetson_llmd");
    let warm = s.warm.as_ref();
    gauge(&mut r, "ready", "1 when the configured model is warm on the GPU and pinned", f64::from(u8::from(s.stage == Stage::Ready)));
    labelled(&mut r, "stage", "The supervisor's stage (1 for the current one)", vec![(vec![("stage".into(), s.stage.as_str().into())], 1.0)]);
    gauge(&mut r, "model_gpu_fraction", "Share of the model on the GPU (0-1)", warm.map_or(0.0, |w| f64::from(w.gpu_percent) / 100.0));
    gauge(&mut r, "model_size_bytes", "Bytes the loaded model takes (/api/ps size)", warm.map_or(0.0, |w| w.size as f64));
    gauge(&mut r, "reboot_required", "1 when GPU memory cannot be allocated even after drop_caches", f64::from(u8::from(s.stage == Stage::RebootRequired)));
    gauge(&mut r, "cpu_fallback", "1 when Ollama runs on the CPU", f64::from(u8::from(s.stage == Stage::CpuFallback)));
    gauge(&mut r, "rewarms", "Re-warms after the model was evicted or unloaded, since the supervisor started", s.rewarm_count as f64);
    gauge(&mut r, "repins", "Times another client's keep_alive was overridden", s.repin_count as f64);
    gauge(&mut r, "ollama_restarts", "Ollama restarts seen", s.ollama_restarts as f64);
    // The loop retries a failed ping as a warm, so it knows "the last ping failed", not a streak.
    gauge(&mut r, "keepalive_failing", "1 when the supervisor's last keepalive ping failed (process launcher)", f64::from(u8::from(s.last_ping.as_ref().is_some_and(|p| !p.ok))));
    if let Some(load) = warm.and_then(|w| w.load_ms) {
        gauge(&mut r, "last_cold_load_seconds", "Duration of the last cold load", load as f64 / 1000.0);
    }
    if let Some(g) = guard {
        let rows = g.iter().map(|(rule, n)| (vec![("rule".to_string(), (*rule).to_string())], *n as f64)).collect();
        labelled(&mut r, "guard_decisions", "Requests the guard decided, by rule (passed, other-model, reload-option-dropped, keep-alive-removed...)", rows);
    }
    if !queues.is_empty() {
        let by = |f: &dyn Fn(&ClassStats) -> f64| queues.iter().map(|q| (vec![("class".to_string(), q.class.clone())], f(q))).collect::<Vec<_>>();
        labelled(&mut r, "guard_queue_depth", "Requests waiting for a turn in Ollama, by class ([[guard.class]])", by(&|q| q.queued as f64));
        labelled(&mut r, "guard_running", "Requests of the class in Ollama now", by(&|q| q.running as f64));
        labelled(&mut r, "guard_admitted", "Requests admitted to Ollama, by class, since the supervisor started", by(&|q| q.admitted as f64));
        labelled(&mut r, "guard_wait_seconds_sum", "Seconds admitted requests waited for their turn, summed (divide by guard_admitted for the mean)", by(&|q| q.wait_seconds));
        labelled(&mut r, "guard_wait_seconds_max", "The longest wait of an admitted request of the class", by(&|q| q.max_wait_seconds));
        let mut rows = Vec::new();
        for q in queues {
            for (reason, n) in [("queue-full", q.refused_full), ("waited", q.refused_wait), ("left", q.left)] {
                rows.push((vec![("class".to_string(), q.class.clone()), ("reason".to_string(), reason.to_string())], n as f64));
            }
        }
        labelled(&mut r, "guard_not_admitted", "Requests that never reached Ollama, by class and reason: queue-full (429), waited past max_wait (503), left (the client went away while waiting)", rows);
    }
    if let Some(h) = host {
        let m = &h.memory;
        if let Some(a) = m.mem_available_kb {
            gauge(&mut r, "memory_available_bytes", "MemAvailable", (a * 1024) as f64);
        }
        if let (Some(t), Some(f)) = (m.swap_total_kb, m.swap_free_kb) {
            gauge(&mut r, "swap_used_bytes", "Swap in use", (t.saturating_sub(f) * 1024) as f64);
        }
        if let Some(n) = h.pswpin {
            gauge(&mut r, "swap_in_pages", "Pages swapped in since boot (/proc/vmstat pswpin; rate() it)", n as f64);
        }
        if let Some(f) = m.cma_free_kb {
            gauge(&mut r, "cma_free_bytes", "CmaFree", (f * 1024) as f64);
        }
        let temps: Vec<_> = h.thermal.iter().filter_map(|(z, t)| t.map(|t| (vec![("zone".to_string(), z.clone())], t))).collect();
        labelled(&mut r, "temperature_celsius", "Thermal zones with a reading", temps);
        if let Some(l) = h.gpu_load_permille {
            gauge(&mut r, "gpu_load_ratio", "GPU load (0-1)", f64::from(l) / 1000.0);
        }
        if let Some(f) = h.gpu_cur_freq_hz {
            gauge(&mut r, "gpu_frequency_hertz", "Current GPU clock", f as f64);
        }
    }
    let mut out = String::new();
    if encode(&mut out, &r).is_err() {
        out.clear();
    }
    out
}

#[derive(Clone)]
struct App {
    state: watch::Receiver<State>,
    root: PathBuf,
    guard: Option<std::sync::Arc<crate::guard::Stats>>,
}

async fn metrics(Extract(app): Extract<App>) -> impl IntoResponse {
    let s = app.state.borrow().clone();
    let host = probe::gather(&app.root).await;
    let guard = app.guard.as_ref().map(|g| g.snapshot());
    let queues = app.guard.as_ref().map(|g| g.queues()).unwrap_or_default();
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], render(&s, Some(&host), guard.as_deref(), &queues))
}

/// 200 only when the model is warm on the GPU; 503 with the reason otherwise.
async fn healthz(Extract(app): Extract<App>) -> impl IntoResponse {
    let s = app.state.borrow().clone();
    if s.stage == Stage::Ready {
        (StatusCode::OK, format!("{}\n", crate::text::one_line(&s.status)))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{}: {}\n", s.stage, crate::text::one_line(&s.status)))
    }
}

/// Serves /metrics and /healthz until `stop`; a port already in use is a warning, not a failure.
pub async fn serve(listen: std::net::SocketAddr, state: watch::Receiver<State>, root: PathBuf, guard: Option<std::sync::Arc<crate::guard::Stats>>, stop: tokio_util::sync::CancellationToken) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("metrics: cannot listen on {listen} ({e}); no /metrics this time (metrics_listen in config.toml)");
            return;
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(metrics)).route("/healthz", axum::routing::get(healthz)).with_state(App { state, root, guard });
    tracing::info!("metrics on http://{listen}/metrics, health on /healthz");
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await {
        tracing::warn!("metrics: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_parses_and_says_what_matters() {
        let s = State { stage: Stage::Ready, rewarm_count: 2, ..Default::default() };
        let host = Probes { thermal: vec![("gpu-thermal".into(), Some(51.5)), ("cpu-thermal".into(), None)], pswpin: Some(7), ..Default::default() };
        let queues = [ClassStats { class: "chat".into(), queued: 2, admitted: 5, refused_full: 1, ..Default::default() }];
        let text = render(&s, Some(&host), Some(&[("passed", 3), ("other-model", 1)]), &queues);
        assert!(text.ends_with("# EOF\n"), "{text}");
        for want in [
            "jetson_llmd_ready 1.0",
            "jetson_llmd_stage{stage=\"ready\"} 1.0",
            "jetson_llmd_rewarms 2.0",
            "jetson_llmd_temperature_celsius{zone=\"gpu-thermal\"} 51.5",
            "jetson_llmd_swap_in_pages 7.0",
            "jetson_llmd_reboot_required 0.0",
            "jetson_llmd_guard_decisions{rule=\"other-model\"} 1.0",
            "jetson_llmd_guard_queue_depth{class=\"chat\"} 2.0",
            "jetson_llmd_guard_admitted{class=\"chat\"} 5.0",
            "jetson_llmd_guard_not_admitted{class=\"chat\",reason=\"queue-full\"} 1.0",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        assert!(!text.contains("cpu-thermal"), "no reading, no sample");
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            assert!(value.parse::<f64>().is_ok(), "{l}");
            assert!(name.starts_with("jetson_llmd_"), "{l}");
        }
    }
}
