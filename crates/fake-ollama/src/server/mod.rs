//! HTTP side of the emulator: Ollama's routes (server/routes.go), a control API under /_fake/,
//! fault injection, and restarts.
//!
//! This file holds what the routes share: the server's lifecycle (server/routes.go Serve), the
//! router, the fault middleware and small helpers. The handlers live in submodules, one per
//! part of Ollama they emulate.

mod control;
mod logs;
mod models;
mod native;
mod openai;
mod sched;

use crate::golang::Keep;
use crate::{Emulator, FaultKind};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use control::{ctl_evict, ctl_fault, ctl_reset_memory, ctl_restart, ctl_state};
use logs::{discovery_log, startup_log, DISCOVERY_TIME};
use models::{create, delete, pull};
use native::{chat, embed, generate, ps, show, tags, version};
use openai::{v1_chat, v1_completions, v1_embeddings, v1_models};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct App {
    emu: Arc<Emulator>,
    ctl: Arc<Ctl>,
}

struct Ctl {
    restart: Notify,
    down: std::sync::Mutex<Duration>,
    shutdown: CancellationToken,
}

/// A running emulator.
pub struct Handle {
    pub addr: SocketAddr,
    pub emu: Arc<Emulator>,
    ctl: Arc<Ctl>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Emulates `ollama serve` being restarted: connections are refused for `down`, every loaded
    /// runner is gone, and the startup log (with GPU discovery) is written again.
    pub fn restart(&self, down: Duration) {
        *self.ctl.down.lock().unwrap_or_else(|p| p.into_inner()) = down;
        self.ctl.restart.notify_one();
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(self) {
        self.ctl.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }

    /// Resolves when the server stops (Ctrl-C in the binary, or shutdown()).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.ctl.shutdown.clone()
    }
}

/// Binds `addr` (port 0 picks one) and serves until shutdown.
pub async fn spawn(config: crate::Config, addr: SocketAddr) -> std::io::Result<Handle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let emu = Emulator::new(config);
    let ctl = Arc::new(Ctl { restart: Notify::new(), down: std::sync::Mutex::new(Duration::ZERO), shutdown: CancellationToken::new() });
    let app = App { emu: emu.clone(), ctl: ctl.clone() };
    let sweeper = {
        let emu = emu.clone();
        let stop = ctl.shutdown.clone();
        async move {
            let mut tick = tokio::time::interval(emu.config.sweep_every.max(Duration::from_millis(1)));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => emu.sweep(Instant::now()),
                }
            }
        }
    };
    tokio::spawn(sweeper);
    let task = tokio::spawn(run(listener, addr, app));
    Ok(Handle { addr, emu, ctl, task })
}

async fn run(first: TcpListener, addr: SocketAddr, app: App) {
    let mut listener = Some(first);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(_) if !app.ctl.shutdown.is_cancelled() => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(_) => return,
                }
            },
        };
        // server/routes.go Serve (v0.30.6): the listener exists and "Listening" is logged, then
        // GPU discovery runs (discover.GPUDevices + LogDetails), and only then srvr.Serve(ln):
        // meanwhile connections are accepted by the kernel but get no answer.
        startup_log(&app.emu, addr);
        tokio::select! {
            _ = tokio::time::sleep(app.emu.config.scaled(DISCOVERY_TIME)) => {}
            _ = app.ctl.shutdown.cancelled() => return,
        }
        discovery_log(&app.emu);
        let stop = CancellationToken::new();
        let server = {
            let stop = stop.clone();
            let router = router(app.clone());
            tokio::spawn(async move {
                // Go's net package sets TCP_NODELAY on every TCP connection (net/tcpsock.go newTCPConn),
                // so Ollama's small streamed lines are never held by Nagle's algorithm.
                let l = axum::serve::ListenerExt::tap_io(l, |s: &mut tokio::net::TcpStream| {
                    let _ = s.set_nodelay(true);
                });
                let _ = axum::serve(l, router).with_graceful_shutdown(async move { stop.cancelled().await }).await;
            })
        };
        let restarting = tokio::select! {
            _ = app.ctl.restart.notified() => true,
            _ = app.ctl.shutdown.cancelled() => false,
        };
        stop.cancel();
        // In-flight requests (a hang fault) must not hold the restart: give them a moment only.
        let _ = tokio::time::timeout(Duration::from_millis(200), server).await;
        if !restarting {
            return;
        }
        app.emu.drop_all_runners();
        let down = *app.ctl.down.lock().unwrap_or_else(|p| p.into_inner());
        tokio::time::sleep(down).await;
    }
}

/// Every route, for gin's trailing-slash redirect.
const ROUTES: &[&str] = &[
    "/",
    "/api/version",
    "/api/tags",
    "/api/ps",
    "/api/show",
    "/api/generate",
    "/api/chat",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/api/embed",
    "/api/pull",
    "/api/create",
    "/api/delete",
    "/_fake/fault",
    "/_fake/evict",
    "/_fake/restart",
    "/_fake/reset-memory",
    "/_fake/state",
];

fn router(app: App) -> Router {
    let inner = Router::new()
        .route("/", get(|| async { "Ollama is running" }).head(|| async { "" }))
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/show", post(show))
        .route("/api/generate", post(generate))
        .route("/api/chat", post(chat))
        .route("/v1/chat/completions", post(v1_chat))
        .route("/v1/completions", post(v1_completions))
        .route("/v1/embeddings", post(v1_embeddings))
        .route("/v1/models", get(v1_models))
        .route("/api/embed", post(embed))
        .route("/api/pull", post(pull))
        .route("/api/create", post(create))
        .route("/api/delete", any(delete))
        .route("/_fake/fault", post(ctl_fault))
        .route("/_fake/evict", post(ctl_evict))
        .route("/_fake/restart", post(ctl_restart))
        .route("/_fake/reset-memory", post(ctl_reset_memory))
        .route("/_fake/state", get(ctl_state))
        .fallback(|method: Method, uri: axum::http::Uri| async move { crate::gohttp::fallback(&method, uri.path(), ROUTES) })
        .layer(middleware::from_fn_with_state(app.clone(), faults))
        .with_state(app);
    // net/http and gin pick the handler before any of ours runs (gohttp).
    Router::new().fallback_service(inner).layer(middleware::from_fn(crate::gohttp::route_like_go))
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": msg.into() }))).into_response()
}

/// Applies armed faults and counts requests.
async fn faults(State(app): State<App>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/_fake/") {
        return next.run(req).await;
    }
    let fault = {
        let mut st = app.emu.lock();
        *st.counters.requests.entry(path.clone()).or_default() += 1;
        let idx = st.faults.iter().position(|f| !matches!(f.kind, FaultKind::PullFailure | FaultKind::RuntimeOom) && f.path_prefix.as_deref().is_none_or(|p| path.starts_with(p)));
        idx.and_then(|i| st.faults.remove(i))
    };
    match fault.map(|f| f.kind) {
        None | Some(FaultKind::PullFailure | FaultKind::RuntimeOom) => next.run(req).await,
        Some(FaultKind::Status500) => err(StatusCode::INTERNAL_SERVER_ERROR, "an error was encountered while running the model: unexpected EOF"),
        Some(FaultKind::Busy503) => err(StatusCode::SERVICE_UNAVAILABLE, "server busy, please try again.  maximum pending requests exceeded"),
        Some(FaultKind::Hang) => {
            std::future::pending::<()>().await;
            unreachable_response()
        }
        Some(FaultKind::Reset) => {
            let s = futures_util::stream::iter(vec![Err::<Bytes, std::io::Error>(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fault: reset"))]);
            Response::builder().status(200).header("content-type", "application/json").body(Body::from_stream(s)).unwrap_or_else(|_| unreachable_response())
        }
        Some(FaultKind::Slow(d)) => {
            tokio::time::sleep(d).await;
            next.run(req).await
        }
    }
}

fn unreachable_response() -> Response {
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

/// Decodes a JSON body as gin's ShouldBindJSON hands it to Ollama's handlers (gojson: first
/// value only, case-insensitive keys with the last winning, invalid UTF-8 replaced); an empty
/// body is io.EOF, "missing request body" (server/routes.go GenerateHandler and the others).
#[allow(clippy::result_large_err)] // the error is the HTTP answer itself
fn body_json(body: &Bytes, go_type: &str) -> Result<Value, Response> {
    body_json_as(body, go_type, false)
}

/// As [`body_json`]; `think_wrapped`: the handler decodes into a struct embedding
/// *api.{go_type} beside a raw `think` field (server/routes.go GenerateHandler and ChatHandler
/// at v0.34.4; not yet at v0.33.0-rc2), which is what encoding/json's messages name.
#[allow(clippy::result_large_err)] // the error is the HTTP answer itself
fn body_json_as(body: &Bytes, go_type: &str, think_wrapped: bool) -> Result<Value, Response> {
    let (whole, field_prefix) = if think_wrapped { (format!("struct {{ *api.{go_type}; Think json.RawMessage \"json:\\\"think\\\"\" }}"), format!(".{go_type}")) } else { (format!("api.{go_type}"), go_type.to_string()) };
    let v = match crate::gojson::decode_request(body) {
        Ok(v) => v,
        Err(crate::gojson::DecodeError::Empty) => return Err(err(StatusCode::BAD_REQUEST, "missing request body")),
        Err(crate::gojson::DecodeError::Invalid(m)) => return Err(err(StatusCode::BAD_REQUEST, m.replace(crate::gojson::GO_TYPE, &whole))),
    };
    let go_type = field_prefix.as_str();
    // encoding/json's UnmarshalTypeError for the fields every handler reads (api/types.go).
    for (field, want) in [("model", "string"), ("name", "string"), ("prompt", "string"), ("stream", "bool"), ("options", "map[string]interface {}"), ("messages", "[]api.Message")] {
        let ok = match (v.get(field), want) {
            (None | Some(Value::Null), _) => true,
            (Some(x), "string") => x.is_string(),
            (Some(x), "bool") => x.is_boolean(),
            (Some(x), "[]api.Message") => x.is_array(),
            (Some(x), _) => x.is_object(),
        };
        if !ok {
            return Err(err(StatusCode::BAD_REQUEST, format!("json: cannot unmarshal {} into Go struct field {go_type}.{field} of type {want}", go_kind(&v[field]))));
        }
    }
    Ok(v)
}

fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Array(_) => "array",
        _ => "object",
    }
}

fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// now + sessionDuration, Go style (a negative keep_alive is math.MaxInt64 ns).
fn after(now: OffsetDateTime, keep: Keep) -> OffsetDateTime {
    match keep {
        Keep::Forever => forever_from(now),
        Keep::For(d) => now + d,
    }
}

fn forever_from(t: OffsetDateTime) -> OffsetDateTime {
    t.checked_add(time::Duration::nanoseconds(i64::MAX)).unwrap_or(t)
}

fn version_at_least(v: &str, major: u64, minor: u64) -> bool {
    version_at_least_patch(v, major, minor, 0)
}

/// `v` (as "0.32.15" or "0.33.0-rc2") is at least major.minor.patch; a release candidate counts
/// as its release (the behaviours cited landed in the rc's of the same version).
fn version_at_least_patch(v: &str, major: u64, minor: u64, patch: u64) -> bool {
    let mut it = v.split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b, c) = (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b, c) >= (major, minor, patch)
}
