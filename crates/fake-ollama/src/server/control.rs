//! The emulator's own control API under /_fake/ (fault injection, eviction, restarts, memory
//! state): not part of Ollama, so it follows no Ollama source.

use super::{err, App};
use crate::{Fault, FaultKind};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::time::Duration;

// ---- control API (not part of Ollama) ----

pub(super) async fn ctl_fault(State(app): State<App>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let kind = match v.get("kind").and_then(Value::as_str).unwrap_or("") {
        "500" | "status500" => FaultKind::Status500,
        "503" | "busy" => FaultKind::Busy503,
        "hang" => FaultKind::Hang,
        "reset" => FaultKind::Reset,
        "slow" => FaultKind::Slow(Duration::from_millis(v.get("delay_ms").and_then(Value::as_u64).unwrap_or(1000))),
        "pull-failure" => FaultKind::PullFailure,
        "runtime-oom" => FaultKind::RuntimeOom,
        other => return err(StatusCode::BAD_REQUEST, format!("unknown fault kind {other:?}: use 500, 503, hang, reset, slow, pull-failure, runtime-oom")),
    };
    let count = v.get("count").and_then(Value::as_u64).unwrap_or(1);
    let path_prefix = v.get("path").and_then(Value::as_str).map(str::to_string);
    for _ in 0..count {
        app.emu.inject(Fault { kind, path_prefix: path_prefix.clone() });
    }
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn ctl_evict(State(app): State<App>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let evicted = app.emu.evict(v.get("model").and_then(Value::as_str));
    axum::Json(json!({ "evicted": evicted })).into_response()
}

pub(super) async fn ctl_restart(State(app): State<App>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    *app.ctl.down.lock().unwrap_or_else(|p| p.into_inner()) = Duration::from_millis(v.get("down_ms").and_then(Value::as_u64).unwrap_or(500));
    app.ctl.restart.notify_one();
    StatusCode::ACCEPTED.into_response()
}

pub(super) async fn ctl_reset_memory(State(app): State<App>) -> Response {
    app.emu.reset_memory();
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn ctl_state(State(app): State<App>) -> Response {
    let c = app.emu.counters();
    let st = app.emu.lock();
    axum::Json(json!({
        "counters": c, "fragmented": st.fragmented,
        "loaded": st.loaded.keys().collect::<Vec<_>>(), "local": st.local.keys().collect::<Vec<_>>(),
    }))
    .into_response()
}
