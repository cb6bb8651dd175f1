//! Model management: pull, create and delete (follows server/routes.go PullHandler,
//! CreateHandler and DeleteHandler, server/images.go and server/create.go).

use super::{body_json, err, unreachable_response, App};
use crate::{normalize, Emulator, FaultKind, LocalModel};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::time::Duration;
use time::OffsetDateTime;

/// Turns a list of progress lines into Ollama's streamed (or final-only) answer.
fn progress_response(lines: Vec<Value>, stream: bool, delay: Duration) -> Response {
    if !stream {
        let last = lines.last().cloned().unwrap_or(json!({}));
        if let Some(e) = last.get("error").and_then(Value::as_str) {
            return err(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
        return axum::Json(last).into_response();
    }
    let s = futures_util::stream::unfold(lines.into_iter(), move |mut it| async move {
        let v = it.next()?;
        tokio::time::sleep(delay).await;
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(format!("{v}\n"))), it))
    });
    Response::builder().status(200).header("content-type", "application/x-ndjson").body(Body::from_stream(s)).unwrap_or_else(|_| unreachable_response())
}

/// The lines of a pull (server/images.go PullModel), and whether it succeeds.
fn pull_lines(emu: &Emulator, name: &str, lines: &mut Vec<Value>) -> bool {
    lines.push(json!({ "status": "pulling manifest" }));
    let fail = {
        let mut st = emu.lock();
        let i = st.faults.iter().position(|f| f.kind == FaultKind::PullFailure);
        i.and_then(|i| st.faults.remove(i)).is_some()
    };
    let Some(spec) = emu.config.profile.registry_model(name).cloned() else {
        lines.push(json!({ "error": "pull model manifest: file does not exist" }));
        return false;
    };
    let digest = format!("sha256:{}", spec.digest);
    let total = spec.disk_size;
    for k in 0..=4u64 {
        if fail && k == 2 {
            lines.push(json!({ "error": format!("max retries exceeded: Get \"https://registry.ollama.ai/v2/library/{}/blobs/{digest}\": read: connection reset by peer", spec.name.split(':').next().unwrap_or("")) }));
            return false;
        }
        lines.push(json!({ "status": format!("pulling {}", &spec.digest[..12]), "digest": digest, "total": total, "completed": total / 4 * k }));
    }
    lines.push(json!({ "status": "verifying sha256 digest" }));
    lines.push(json!({ "status": "writing manifest" }));
    let mut st = emu.lock();
    st.local.insert(name.to_string(), LocalModel { spec, modified_at: OffsetDateTime::now_utc() });
    true
}

/// The common head of /api/pull and /api/create: the body, the model name (`name` is the
/// deprecated spelling Ollama still accepts) and `stream` (default true).
#[allow(clippy::result_large_err)] // the error is the HTTP answer itself
fn model_request(body: &Bytes, go_type: &str) -> Result<(Value, String, bool), Response> {
    let v = body_json(body, go_type)?;
    let model = v.get("model").or_else(|| v.get("name")).and_then(Value::as_str).unwrap_or("").to_string();
    if model.is_empty() {
        return Err(err(StatusCode::BAD_REQUEST, "model is required"));
    }
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(true);
    Ok((v, model, stream))
}

pub(super) async fn pull(State(app): State<App>, body: Bytes) -> Response {
    let (_, model, stream) = match model_request(&body, "PullRequest") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let model = model.as_str();
    let mut lines = Vec::new();
    if pull_lines(&app.emu, &normalize(model), &mut lines) {
        lines.push(json!({ "status": "success" }));
    }
    let n = lines.len().max(1) as u32;
    progress_response(lines, stream, app.emu.config.scaled(Duration::from_secs(8)) / n)
}

/// POST /api/create with `from` and `parameters` (server/create.go). A missing base is pulled.
pub(super) async fn create(State(app): State<App>, body: Bytes) -> Response {
    let (v, model, stream) = match model_request(&body, "CreateRequest") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let model = model.as_str();
    let Some(from) = v.get("from").and_then(Value::as_str) else {
        return err(StatusCode::BAD_REQUEST, "neither 'from' or 'files' was specified");
    };
    let from = normalize(from);
    let mut lines = Vec::new();
    let have = app.emu.lock().local.contains_key(&from);
    if !have && !pull_lines(&app.emu, &from, &mut lines) {
        return progress_response(lines, stream, Duration::from_millis(5));
    }
    let mut spec = match app.emu.lock().local.get(&from) {
        Some(m) => m.spec.clone(),
        None => return err(StatusCode::NOT_FOUND, format!("model '{from}' not found")),
    };
    let params = v.get("parameters").cloned().unwrap_or(json!({}));
    if let Some(n) = params.get("num_ctx") {
        match n.as_u64() {
            Some(n) => spec.num_ctx = Some(n),
            None => return err(StatusCode::BAD_REQUEST, format!("invalid int value [{n}]")),
        }
    }
    let name = normalize(model);
    lines.push(json!({ "status": format!("using existing layer sha256:{}", spec.digest) }));
    spec.name = name.clone();
    spec.digest = crate::profile::digest_of(&format!("{name}{params}"));
    lines.push(json!({ "status": format!("creating new layer sha256:{}", crate::profile::digest_of(&params.to_string())) }));
    lines.push(json!({ "status": "writing manifest" }));
    lines.push(json!({ "status": "success" }));
    app.emu.lock().local.insert(name, LocalModel { spec, modified_at: OffsetDateTime::now_utc() });
    progress_response(lines, stream, app.emu.config.scaled(Duration::from_millis(200)))
}

pub(super) async fn delete(State(app): State<App>, method: Method, body: Bytes) -> Response {
    if method != Method::DELETE {
        return (StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed").into_response();
    }
    let v = match body_json(&body, "DeleteRequest") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = v.get("model").or_else(|| v.get("name")).and_then(Value::as_str).unwrap_or("");
    let removed = app.emu.lock().local.remove(&normalize(model)).is_some();
    if removed {
        StatusCode::OK.into_response()
    } else {
        err(StatusCode::NOT_FOUND, format!("model '{model}' not found"))
    }
}
