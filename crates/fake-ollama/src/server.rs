//! HTTP side of the emulator: Ollama's routes (server/routes.go), a control API under /_fake/,
//! fault injection, and restarts.

use crate::golang::{human_bytes2, Keep};
use crate::{normalize, CpuReason, Emulator, Fault, FaultKind, LocalModel, LogFormat, Runner, RunnerOptions};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
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
            let mut tick = tokio::time::interval(Duration::from_millis(20));
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

/// The lines `ollama serve` prints at start (server/routes.go Serve, discover/).
fn startup_log(emu: &Arc<Emulator>, addr: SocketAddr) {
    let c = &emu.config;
    emu.log(
        "INFO",
        "routes.go:1544",
        "server config",
        &format!(
            "env=\"map[OLLAMA_CONTEXT_LENGTH:{} OLLAMA_HOST:http://{} OLLAMA_KEEP_ALIVE:{} OLLAMA_MAX_LOADED_MODELS:{} OLLAMA_NUM_PARALLEL:1]\"",
            // envconfig.ContextLength: 0 (unset) means "pick by VRAM" since v0.12; the dump shows 0.
            c.context_length_env,
            addr,
            c.default_keep_alive.go_string(),
            c.max_loaded
        ),
    );
    emu.log("INFO", "routes.go:1597", &format!("Listening on {addr} (version {})", c.profile.version), "");
}

/// How long GPU discovery takes on the board before `time_scale`.
const DISCOVERY_TIME: Duration = Duration::from_millis(1500);

/// discover/types.go LogDetails (v0.30.6): one `inference compute` line per device, with
/// `filter_id` right after `id` (an empty value prints as `filter_id=""`; since v0.30 the id is
/// the device index), or one CPU line, without filter_id, when there is none.
fn discovery_log(emu: &Emulator) {
    let c = &emu.config;
    let total = human_bytes2(c.profile.total_memory);
    let gpu = c.profile.gpu.as_ref().filter(|_| c.cpu_only.is_none());
    emu.log("INFO", "runner.go:67", "discovering available GPUs...", "");
    match (gpu, c.log_format) {
        (Some(g), LogFormat::Current) => emu.log(
            "INFO",
            "types.go:60",
            "inference compute",
            &format!(
                "id={} filter_id=\"\" library=CUDA compute={} name={} description={} libdirs={} driver={} pci_id={} type={} total=\"{}\" available=\"{}\"",
                if version_at_least(&c.profile.version, 0, 30) { "0" } else { g.id.as_str() },
                g.compute, g.name, g.description, g.libdirs, g.driver, g.pci_id, g.kind, total, human_bytes2(c.profile.gpu_available)
            ),
        ),
        (Some(g), LogFormat::Legacy) => emu.log(
            "INFO",
            "types.go:107",
            "inference compute",
            &format!(
                "id={} library=cuda variant=jetpack6 compute={} driver={} name={} total=\"{}\" available=\"{}\"",
                g.id, g.compute, g.driver, g.description, total, human_bytes2(c.profile.gpu_available)
            ),
        ),
        (None, fmt) => {
            if c.cpu_only == Some(CpuReason::CudaInit) {
                emu.raw_log("ggml_cuda_init: failed to initialize CUDA: system has unsupported display driver / cuda driver combination".into());
            }
            if fmt == LogFormat::Legacy {
                emu.log("INFO", "gpu.go:377", "no compatible GPUs were discovered", "");
                emu.log(
                    "INFO",
                    "types.go:130",
                    "inference compute",
                    &format!("id=0 library=cpu variant=\"\" compute=\"\" driver=0.0 name=\"\" total=\"{total}\" available=\"{}\"", human_bytes2(c.profile.system_available)),
                );
            } else {
                emu.log(
                    "INFO",
                    "types.go:60",
                    "inference compute",
                    &format!(
                        "id=cpu library=cpu compute=\"\" name=cpu description=cpu libdirs=ollama driver=\"\" pci_id=\"\" type=\"\" total=\"{total}\" available=\"{}\"",
                        human_bytes2(c.profile.system_available)
                    ),
                );
            }
        }
    }
}

/// Every route, for gin's trailing-slash redirect.
const ROUTES: &[&str] = &["/", "/api/version", "/api/tags", "/api/ps", "/api/show", "/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/api/embed", "/api/pull", "/api/create", "/api/delete", "/_fake/fault", "/_fake/evict", "/_fake/restart", "/_fake/reset-memory", "/_fake/state"];

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
        let idx = st.faults.iter().position(|f| {
            !matches!(f.kind, FaultKind::PullFailure | FaultKind::RuntimeOom) && f.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
        });
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
fn body_json(body: &Bytes) -> Result<Value, Response> {
    let v = match crate::gojson::decode_request(body) {
        Ok(v) => v,
        Err(crate::gojson::DecodeError::Empty) => return Err(err(StatusCode::BAD_REQUEST, "missing request body")),
        Err(crate::gojson::DecodeError::Invalid(m)) => return Err(err(StatusCode::BAD_REQUEST, m)),
    };
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
            return Err(err(StatusCode::BAD_REQUEST, format!("json: cannot unmarshal {} into Go struct field .{field} of type {want}", go_type(&v[field]))));
        }
    }
    Ok(v)
}

fn go_type(v: &Value) -> &'static str {
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

async fn version(State(app): State<App>) -> Response {
    axum::Json(json!({ "version": app.emu.config.profile.version })).into_response()
}

fn details(spec: &crate::ModelSpec) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": spec.family,
        "families": [spec.family],
        "parameter_size": spec.parameter_size,
        "quantization_level": spec.quantization,
    })
}

async fn tags(State(app): State<App>) -> Response {
    let st = app.emu.lock();
    let mut models: Vec<(&String, &LocalModel)> = st.local.iter().collect();
    // server/routes.go ListHandler: most recently modified first.
    models.sort_by_key(|m| std::cmp::Reverse(m.1.modified_at));
    let list: Vec<Value> = models
        .into_iter()
        .map(|(name, m)| {
            // api/types.go ListModelResponse: details.context_length, capabilities.
            let mut d = details(&m.spec);
            d["context_length"] = json!(m.spec.context_length);
            json!({
                "name": name, "model": name, "modified_at": rfc3339(m.modified_at),
                "size": m.spec.disk_size, "digest": m.spec.digest, "details": d,
                "capabilities": ["completion"],
            })
        })
        .collect();
    axum::Json(json!({ "models": list })).into_response()
}

/// GET /api/ps (server/routes.go PsHandler): longest remaining first. A runner that has not
/// gone idle yet has the zero expiresAt, shown as now + sessionDuration; keep_alive < 0 is
/// sessionDuration math.MaxInt64 (api/types.go Duration.UnmarshalJSON), i.e. year 2318.
async fn ps(State(app): State<App>) -> Response {
    let st = app.emu.lock();
    let now = OffsetDateTime::now_utc();
    let mut rows: Vec<(OffsetDateTime, Value)> = st
        .loaded
        .values()
        .map(|r| {
            let exp = r.expires_at.unwrap_or_else(|| after(now, r.keep));
            let v = json!({
                "name": r.name, "model": r.name, "size": r.size, "digest": r.spec.digest,
                "details": details(&r.spec), "expires_at": rfc3339(exp), "size_vram": r.size_vram,
                "context_length": r.options.num_ctx,
            });
            (exp, v)
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0.unix_timestamp()));
    axum::Json(json!({ "models": rows.into_iter().map(|r| r.1).collect::<Vec<_>>() })).into_response()
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

async fn show(State(app): State<App>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = v.get("model").or_else(|| v.get("name")).and_then(Value::as_str).unwrap_or("");
    let st = app.emu.lock();
    let Some(m) = st.local.get(&normalize(model)) else {
        return err(StatusCode::NOT_FOUND, format!("model '{model}' not found"));
    };
    let params = m.spec.num_ctx.map(|n| format!("num_ctx                        {n}")).unwrap_or_default();
    let mut modelfile = format!("# Modelfile generated by \"ollama show\"\nFROM /usr/share/ollama/.ollama/models/blobs/sha256-{}\n", m.spec.digest);
    if let Some(n) = m.spec.num_ctx {
        modelfile.push_str(&format!("PARAMETER num_ctx {n}\n"));
    }
    axum::Json(json!({
        "modelfile": modelfile, "parameters": params, "template": "{{ .Prompt }}",
        "details": details(&m.spec), "model_info": model_info(&m.spec),
        "capabilities": ["completion"], "modified_at": rfc3339(m.modified_at),
    }))
    .into_response()
}

/// /api/show model_info: GGUF metadata keys, architecture-prefixed (what a memory estimate needs:
/// layers, KV heads, head size, trained context).
fn model_info(spec: &crate::ModelSpec) -> Value {
    let arch = spec.family.as_str();
    let params = spec.parameter_size.trim_end_matches('B').parse::<f64>().map_or(0, |b| (b * 1e9) as u64);
    let mut m = serde_json::Map::new();
    m.insert("general.architecture".into(), json!(arch));
    m.insert("general.parameter_count".into(), json!(params));
    m.insert("general.file_type".into(), json!(2));
    m.insert(format!("{arch}.context_length"), json!(spec.context_length));
    m.insert(format!("{arch}.block_count"), json!(spec.layers));
    m.insert(format!("{arch}.embedding_length"), json!(2048));
    m.insert(format!("{arch}.attention.head_count"), json!(8));
    m.insert(format!("{arch}.attention.head_count_kv"), json!(spec.kv_heads));
    m.insert(format!("{arch}.attention.key_length"), json!(spec.head_dim));
    m.insert(format!("{arch}.attention.value_length"), json!(spec.head_dim));
    Value::Object(m)
}

fn runner_options(v: &Value, spec: &crate::ModelSpec, cfg: &crate::Config) -> RunnerOptions {
    let o = v.get("options").cloned().unwrap_or(Value::Null);
    let u = |k: &str| o.get(k).and_then(Value::as_u64);
    let i = |k: &str| o.get(k).and_then(Value::as_i64);
    let requested_ctx = u("num_ctx").or(spec.num_ctx);
    RunnerOptions {
        // Model PARAMETER num_ctx beats OLLAMA_CONTEXT_LENGTH; a request option beats both; the
        // trained context caps it (server/sched.go effectiveContext).
        num_ctx: requested_ctx.unwrap_or(cfg.context_length).clamp(4, spec.context_length.max(4)),
        num_batch: u("num_batch").unwrap_or(512),
        num_gpu: i("num_gpu").unwrap_or(-1),
        main_gpu: i("main_gpu").unwrap_or(0),
        use_mmap: o.get("use_mmap").and_then(Value::as_bool),
        num_thread: i("num_thread").unwrap_or(0),
        num_ctx_auto: requested_ctx.is_none(),
        num_batch_auto: u("num_batch").is_none(),
    }
}

/// What a request gets from the scheduler.
struct Acquired {
    cold_load: Option<Duration>,
    size: u64,
    size_vram: u64,
}

/// Releases the runner when the request ends, even if the client went away mid-stream.
struct Busy {
    emu: Arc<Emulator>,
    key: String,
}

/// Dropped with a streamed response: before its last line means the client went away.
struct StreamEnd {
    emu: Arc<Emulator>,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        if !self.finished.load(std::sync::atomic::Ordering::SeqCst) {
            self.emu.lock().counters.cancelled += 1;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        release(&self.emu, &self.key);
    }
}

/// A request finished (server/sched.go processCompleted): at refCount 0 a duration <= 0
/// unloads now; otherwise the timer starts and expiresAt becomes now + duration.
fn release(emu: &Emulator, key: &str) {
    let mut st = emu.lock();
    let Some(r) = st.loaded.get_mut(key) else { return };
    r.refcount = r.refcount.saturating_sub(1);
    if r.refcount > 0 {
        return;
    }
    let now = OffsetDateTime::now_utc();
    match r.keep {
        Keep::For(d) if d.is_zero() => {
            if let Some(r) = st.loaded.remove(key) {
                emu.note_unload(&mut st, &r.name, "keep_alive 0");
            }
        }
        Keep::Forever => {
            r.expires_at = Some(forever_from(now));
            r.timer = None;
        }
        Keep::For(d) => {
            r.expires_at = Some(now + d);
            r.timer = Some(Instant::now() + d);
        }
    }
}

/// sessionDuration as Go compares it in ByDurationAndName: uint64 of the nanoseconds, so a
/// pinned runner (math.MaxInt64) sorts after every finite one.
fn duration_rank(k: Keep) -> u64 {
    match k {
        Keep::Forever => i64::MAX as u64,
        Keep::For(d) => d.as_nanos().min(u64::MAX as u128) as u64,
    }
}

/// server/sched.go findRunnerToUnload: sorted by duration then model path, the first idle one,
/// else the first (busy) one, whose duration is then set to 0 so it unloads when done.
fn find_runner_to_unload(st: &crate::State) -> Option<String> {
    let mut list: Vec<(&String, &Runner)> = st.loaded.iter().collect();
    list.sort_by(|a, b| duration_rank(a.1.keep).cmp(&duration_rank(b.1.keep)).then_with(|| a.0.cmp(b.0)));
    list.iter().find(|(_, r)| r.refcount == 0).or(list.first()).map(|(k, _)| (*k).clone())
}

/// One pass of processPending under the lock: reuse, load, fail, or wait for an unload.
enum Step {
    Load((String, crate::ModelSpec, u64, u64)),
    Reuse(String, Acquired),
    Fail(Response),
    Wait,
}

fn schedule(emu: &Arc<Emulator>, name: &str, opts: &RunnerOptions, keep: Option<Keep>) -> Step {
    let cfg = &emu.config;
    let mut st = emu.lock();
    emu.check_drop_caches(&mut st);
    let Some(spec) = st.local.get(name).map(|m| m.spec.clone()) else {
        return Step::Fail(err(StatusCode::NOT_FOUND, format!("model \"{name}\" not found, try pulling it first")));
    };
    let key = spec.blob.clone();
    let size = spec.size_at(opts.num_ctx);
    let victim = if let Some(r) = st.loaded.get_mut(&key) {
        if !r.options.needs_reload(opts, spec.context_length) {
            // useLoadedRunner: the timer stops; a request that carries keep_alive replaces
            // the duration. The runner keeps the name it was loaded under (PsHandler).
            r.refcount += 1;
            r.timer = None;
            if let Some(k) = keep {
                r.keep = k;
            }
            return Step::Reuse(key, Acquired { cold_load: None, size: r.size, size_vram: r.size_vram });
        }
        Some(key.clone())
    } else {
        let used_sys: u64 = st.loaded.values().map(|r| r.size).sum();
        let over_count = st.loaded.len() >= cfg.effective_max_loaded();
        // A second model must fit beside the others (load with requireFull); the first one
        // is always tried (v0.30+: llama-server fits what it can).
        let over_mem = !st.loaded.is_empty() && used_sys + size > cfg.profile.system_available;
        if over_count || over_mem { find_runner_to_unload(&st) } else { None }
    };
    let Some(victim) = victim else {
        let gpu_ok = cfg.profile.gpu.is_some() && cfg.cpu_only.is_none() && opts.num_gpu != 0;
        let gpu_used: u64 = st.loaded.values().map(|r| r.size_vram).sum();
        let gpu_free = cfg.profile.gpu_available.saturating_sub(gpu_used);
        // Layer-wise split: whole layers go to the GPU while they fit.
        let size_vram = if !gpu_ok {
            0
        } else if size <= gpu_free {
            size
        } else {
            let per_layer = size / (spec.layers as u64 + 1);
            (gpu_free / per_layer.max(1)) * per_layer
        };
        return Step::Load((key, spec, size, size_vram));
    };
    // Trigger the expiration: duration 0, unloaded now if idle, else when its request ends;
    // this request waits for the unload (processPending waits on unloadedCh).
    let why = if victim == key { "runner options changed" } else { "evicted to make room" };
    if emu.expire(&mut st, &victim, why) && victim == key {
        st.counters.reloads_for_options += 1;
    }
    Step::Wait
}

/// The scheduler's part of a request (server/sched.go processPending, load, useLoadedRunner).
async fn acquire(emu: &Arc<Emulator>, name: &str, opts: RunnerOptions, keep: Option<Keep>) -> Result<(String, Acquired), Response> {
    // One pending request at a time, and it blocks the others until it has a runner.
    let _one_load_at_a_time = emu.load_lock.lock().await;
    let cfg = &emu.config;
    let (key, spec, size, size_vram) = loop {
        match schedule(emu, name, &opts, keep) {
            Step::Load(x) => break x,
            Step::Reuse(key, acq) => return Ok((key, acq)),
            Step::Fail(r) => return Err(r),
            Step::Wait => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    // Before v0.30 the scheduler refused a model larger than system memory up front
    // (llm/memory.go + llm/server.go); v0.30's llama-server runner has no such check.
    if !version_at_least(&cfg.profile.version, 0, 30) && size > cfg.profile.system_available {
        let msg = format!("model requires more system memory ({}) than is available ({})", human_bytes2(size), human_bytes2(cfg.profile.system_available));
        emu.log("WARN", "server.go:1020", "model request too large for system", &format!("requested=\"{}\" available=\"{}\"", human_bytes2(size), human_bytes2(cfg.profile.system_available)));
        return Err(err(StatusCode::INTERNAL_SERVER_ERROR, msg));
    }
    emu.log(
        "INFO",
        "llama_server.go:412",
        "starting llama-server",
        &format!("cmd=\"/usr/local/lib/ollama/llama-server --model /usr/share/ollama/.ollama/models/blobs/sha256-{key} --ctx-size {} --batch-size {} --n-gpu-layers {} --port 40213\"", opts.num_ctx, opts.num_batch, if size_vram == 0 { 0 } else { spec.layers + 1 }),
    );
    if size > cfg.profile.system_available {
        // It loads, mmap'ed and paged: the seed's llama3.1:8b "loads, partly, and swaps".
        emu.log("INFO", "sched.go:613", "system memory", &format!("total=\"{}\" free=\"{}\" free_swap=\"3.7 GiB\"", human_bytes2(cfg.profile.total_memory), human_bytes2(cfg.profile.system_available)));
    }
    let fragmented = emu.lock().fragmented;
    if fragmented {
        return Err(load_out_of_memory(emu, name, &opts));
    }
    let load = spec.load_time;
    tokio::time::sleep(cfg.scaled(load)).await;
    let per_layer = size / (spec.layers as u64 + 1);
    let gpu_layers = if size_vram >= size { spec.layers + 1 } else { (size_vram / per_layer.max(1)) as u32 };
    emu.raw_log(format!("load_tensors: offloaded {}/{} layers to GPU", gpu_layers, spec.layers + 1));
    emu.log("INFO", "server.go:1288", &format!("{} started in {:.2} seconds", runner_word(&cfg.profile.version), load.as_secs_f64()), "");
    let mut st = emu.lock();
    st.counters.loads += 1;
    st.loaded.insert(
        key.clone(),
        Runner {
            name: name.to_string(),
            spec,
            size,
            size_vram,
            options: opts,
            keep: keep.unwrap_or(cfg.default_keep_alive),
            expires_at: None,
            timer: None,
            refcount: 1,
        },
    );
    if cfg.fragile_memory {
        emu.write_memory_state(crate::MemState::Loaded);
    }
    Ok((key, Acquired { cold_load: Some(load), size, size_vram }))
}

/// Unallocatable memory (the board, not Ollama): the allocation fails inside llama-server, which
/// exits with status 1; Ollama logs `msg="Load failed"` and retries once (server/sched.go load,
/// v0.30.6): with a smaller automatic context when num_ctx was automatic
/// (reduceAutoNumCtxForLoadOOM), else after evicting every other model when there are any, else
/// not at all. The error carries the runner's captured lines (llm/status.go StatusWriter,
/// llm/llama_server.go WaitUntilRunning: `process has terminated: exit status N: <lines>`).
fn load_out_of_memory(emu: &Emulator, name: &str, opts: &RunnerOptions) -> Response {
    let cfg = &emu.config;
    let mut st = emu.lock();
    st.counters.oom_failures += 1;
    let captured = "cudaMalloc failed: out of memory\nalloc_tensor_range: failed to allocate CUDA0 buffer of size 188743680";
    let text = if version_at_least(&cfg.profile.version, 0, 30) {
        format!("{}: exit status 1: {captured}", terminated_prefix(&cfg.profile.version))
    } else {
        format!("{}: cudaMalloc failed: out of memory", terminated_prefix(&cfg.profile.version))
    };
    let model_path = format!("/usr/share/ollama/.ollama/models/blobs/sha256-{}", st.key_of(name).unwrap_or_default());
    let others = !st.loaded.is_empty();
    let retry = if opts.num_ctx_auto && opts.num_ctx > 2048 {
        Some(("llama-server load failed; reducing automatic context and retrying once", format!("model={model_path} old_num_ctx={} new_num_ctx={}", opts.num_ctx, opts.num_ctx / 2)))
    } else if others {
        Some(("llama-server load failed; evicting all other models and retrying once", format!("model={model_path}")))
    } else {
        None
    };
    let attempts = if retry.is_some() { 2 } else { 1 };
    for attempt in 0..attempts {
        emu.raw_log("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 180.00 MiB on device 0: cudaMalloc failed: out of memory".into());
        emu.raw_log("alloc_tensor_range: failed to allocate CUDA0 buffer of size 188743680".into());
        emu.raw_log("NvMapMemAllocInternalTagged: 1075072515 error 12".into());
        emu.log("INFO", "sched.go:641", "Load failed", &format!("model={model_path} error={text:?}"));
        if attempt == 0 {
            if let Some((msg, attrs)) = &retry {
                emu.log("WARN", "sched.go:652", msg, &format!("{attrs} error={text:?}"));
                if others && !opts.num_ctx_auto {
                    let keys: Vec<String> = st.loaded.iter().filter(|(_, r)| r.refcount == 0).map(|(k, _)| k.clone()).collect();
                    for k in keys {
                        if let Some(r) = st.loaded.remove(&k) {
                            emu.note_unload(&mut st, &r.name, "evicted for OOM retry");
                        }
                    }
                }
            }
        }
    }
    err(StatusCode::INTERNAL_SERVER_ERROR, text)
}

/// Ollama 0.30 switched from its own runner to llama.cpp's llama-server; the words changed too.
fn runner_word(version: &str) -> &'static str {
    if version_at_least(version, 0, 30) {
        "llama-server"
    } else {
        "llama runner"
    }
}

fn terminated_prefix(version: &str) -> String {
    format!("{} process has terminated", runner_word(version))
}

fn version_at_least(v: &str, major: u64, minor: u64) -> bool {
    let mut it = v.split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Generate,
    Chat,
}

async fn generate(State(app): State<App>, body: Bytes) -> Response {
    complete(app, body, Shape::Generate).await
}

async fn chat(State(app): State<App>, body: Bytes) -> Response {
    complete(app, body, Shape::Chat).await
}

/// OpenAI's error shape (openai/openai.go NewError).
fn openai_err(status: StatusCode, message: &str) -> Response {
    let kind = match status {
        StatusCode::BAD_REQUEST => "invalid_request_error",
        StatusCode::NOT_FOUND => "not_found_error",
        _ => "api_error",
    };
    (status, axum::Json(json!({ "error": { "type": kind, "message": message } }))).into_response()
}

/// openai/openai.go ToChatCompletion / toChunk from one /api/chat line.
fn openai_chat_json(id: &str, line: &Value, chunk: bool) -> Value {
    let reason = line["done_reason"].as_str().filter(|r| !r.is_empty()).map(|r| json!(r)).unwrap_or(Value::Null);
    let content = line["message"]["content"].as_str().unwrap_or("");
    let created = OffsetDateTime::now_utc().unix_timestamp();
    if chunk {
        json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": line["model"], "system_fingerprint": "fp_ollama",
                "choices": [{ "index": 0, "delta": { "role": "assistant", "content": content }, "finish_reason": reason }] })
    } else {
        let (p, e) = (line["prompt_eval_count"].as_u64().unwrap_or(0), line["eval_count"].as_u64().unwrap_or(0));
        json!({ "id": id, "object": "chat.completion", "created": created, "model": line["model"], "system_fingerprint": "fp_ollama",
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": content }, "finish_reason": reason }],
                "usage": { "prompt_tokens": p, "completion_tokens": e, "total_tokens": p + e } })
    }
}

/// POST /v1/chat/completions: middleware/openai.go ChatMiddleware turns the request into an
/// /api/chat one (max_tokens -> num_predict, sampling options kept), ChatWriter turns the answer
/// into a chat.completion, or, streamed, `data: <chunk>` events ending with `data: [DONE]`.
async fn v1_chat(State(app): State<App>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else { return openai_err(StatusCode::BAD_REQUEST, "invalid request") };
    let stream = req["stream"].as_bool().unwrap_or(false);
    let mut options = serde_json::Map::new();
    if let Some(n) = req["max_tokens"].as_i64() {
        options.insert("num_predict".into(), json!(n));
    }
    for k in ["temperature", "top_p", "seed", "stop", "frequency_penalty", "presence_penalty"] {
        if !req[k].is_null() {
            options.insert(k.into(), req[k].clone());
        }
    }
    let inner = json!({ "model": req["model"], "messages": req["messages"], "stream": stream, "options": options });
    let resp = complete(app, Bytes::from(inner.to_string()), Shape::Chat).await;
    let status = resp.status();
    let id = format!("chatcmpl-{}", OffsetDateTime::now_utc().nanosecond() % 999);
    if !status.is_success() {
        return openai_from_native_err(resp).await;
    }
    if !stream {
        let b = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap_or_default();
        let line: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        return axum::Json(openai_chat_json(&id, &line, false)).into_response();
    }
    let include_usage = req["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    sse(resp, id, include_usage, openai_chat_json, |id, line, usage| {
        json!({ "id": id, "object": "chat.completion.chunk", "model": line["model"], "system_fingerprint": "fp_ollama", "choices": [], "usage": usage })
    })
}

fn openai_usage(line: &Value) -> Value {
    let (p, e) = (line["prompt_eval_count"].as_u64().unwrap_or(0), line["eval_count"].as_u64().unwrap_or(0));
    json!({ "prompt_tokens": p, "completion_tokens": e, "total_tokens": p + e })
}

/// A streamed native answer as OpenAI server-sent events: `data: <chunk>` per line, then the
/// usage chunk when asked for, then `data: [DONE]` (middleware/openai.go ChatWriter and
/// CompleteWriter writeResponse).
fn sse(resp: Response, id: String, include_usage: bool, chunk: fn(&str, &Value, bool) -> Value, usage_chunk: fn(&str, &Value, Value) -> Value) -> Response {
    let lines = futures_util::StreamExt::flat_map(resp.into_body().into_data_stream(), |c| {
        let c = c.unwrap_or_default();
        futures_util::stream::iter(c.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice::<Value>(l).unwrap_or(Value::Null)).collect::<Vec<_>>())
    });
    let events = futures_util::StreamExt::flat_map(lines, move |line| {
        let mut out = vec![format!("data: {}\n\n", chunk(&id, &line, true))];
        if line["done"] == true {
            if include_usage {
                out.push(format!("data: {}\n\n", usage_chunk(&id, &line, openai_usage(&line))));
            }
            out.push("data: [DONE]\n\n".into());
        }
        futures_util::stream::iter(out.into_iter().map(|s| Ok::<Bytes, std::io::Error>(Bytes::from(s))))
    });
    Response::builder().status(200).header("content-type", "text/event-stream").body(Body::from_stream(events)).unwrap_or_else(|_| unreachable_response())
}

/// openai/openai.go ToCompletion / ToCompleteChunk from one /api/generate line.
fn openai_completion_json(id: &str, line: &Value, chunk: bool) -> Value {
    let reason = line["done_reason"].as_str().filter(|r| !r.is_empty()).map(|r| json!(r)).unwrap_or(Value::Null);
    let mut v = json!({ "id": id, "object": "text_completion", "created": OffsetDateTime::now_utc().unix_timestamp(), "model": line["model"],
        "system_fingerprint": "fp_ollama", "choices": [{ "text": line["response"].as_str().unwrap_or(""), "index": 0, "finish_reason": reason }] });
    if !chunk {
        v["usage"] = openai_usage(line);
    }
    v
}

/// Copies the native error's message into OpenAI's error shape (middleware/openai.go
/// BaseWriter.writeError).
async fn openai_from_native_err(resp: Response) -> Response {
    let status = resp.status();
    let b = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap_or_default();
    let msg = serde_json::from_slice::<Value>(&b).ok().and_then(|v| v["error"].as_str().map(str::to_string)).unwrap_or_default();
    openai_err(status, &msg)
}

/// POST /v1/completions: middleware/openai.go CompletionsMiddleware and
/// openai.FromCompleteRequest turn it into an /api/generate request (max_tokens ->
/// num_predict; temperature and top_p default to 1.0; stop as a list), CompleteWriter turns the
/// answer into a text_completion, or streamed events ending with `data: [DONE]`.
async fn v1_completions(State(app): State<App>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else { return openai_err(StatusCode::BAD_REQUEST, "invalid request") };
    let stream = req["stream"].as_bool().unwrap_or(false);
    let mut options = serde_json::Map::new();
    match &req["stop"] {
        Value::String(s) => {
            options.insert("stop".into(), json!([s]));
        }
        Value::Array(a) => {
            if a.iter().any(|x| !x.is_string()) {
                return openai_err(StatusCode::BAD_REQUEST, "invalid type for 'stop' field");
            }
            options.insert("stop".into(), json!(a));
        }
        _ => {}
    }
    if let Some(n) = req["max_tokens"].as_i64() {
        options.insert("num_predict".into(), json!(n));
    }
    options.insert("temperature".into(), if req["temperature"].is_number() { req["temperature"].clone() } else { json!(1.0) });
    if req["seed"].is_number() {
        options.insert("seed".into(), req["seed"].clone());
    }
    options.insert("frequency_penalty".into(), if req["frequency_penalty"].is_number() { req["frequency_penalty"].clone() } else { json!(0.0) });
    options.insert("presence_penalty".into(), if req["presence_penalty"].is_number() { req["presence_penalty"].clone() } else { json!(0.0) });
    let top_p = req["top_p"].as_f64().filter(|p| *p != 0.0).unwrap_or(1.0);
    options.insert("top_p".into(), json!(top_p));
    let inner = json!({ "model": req["model"], "prompt": req["prompt"].as_str().unwrap_or(""), "stream": stream, "options": options });
    let resp = complete(app, Bytes::from(inner.to_string()), Shape::Generate).await;
    if !resp.status().is_success() {
        return openai_from_native_err(resp).await;
    }
    let id = format!("cmpl-{}", OffsetDateTime::now_utc().nanosecond() % 999);
    if !stream {
        let b = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap_or_default();
        let line: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        return axum::Json(openai_completion_json(&id, &line, false)).into_response();
    }
    let include_usage = req["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    sse(resp, id, include_usage, openai_completion_json, |id, line, usage| {
        json!({ "id": id, "object": "text_completion", "created": OffsetDateTime::now_utc().unix_timestamp(), "model": line["model"],
                "system_fingerprint": "fp_ollama", "choices": [], "usage": usage })
    })
}

/// POST /v1/embeddings: middleware/openai.go EmbeddingsMiddleware (encoding_format float or
/// base64, input "" means [""], a missing or empty input is refused) in front of EmbedHandler;
/// EmbedWriter and openai.ToEmbeddingList shape the answer (base64: little-endian float32).
async fn v1_embeddings(State(app): State<App>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else { return openai_err(StatusCode::BAD_REQUEST, "invalid request") };
    let format = req["encoding_format"].as_str().unwrap_or("").to_string();
    if !format.is_empty() && !format.eq_ignore_ascii_case("float") && !format.eq_ignore_ascii_case("base64") {
        return openai_err(StatusCode::BAD_REQUEST, &format!("Invalid value for 'encoding_format' = {format}. Supported values: ['float', 'base64']."));
    }
    let input = match &req["input"] {
        Value::String(s) if s.is_empty() => json!([""]),
        Value::Null => return openai_err(StatusCode::BAD_REQUEST, "invalid input"),
        Value::Array(a) if a.is_empty() => return openai_err(StatusCode::BAD_REQUEST, "invalid input"),
        other => other.clone(),
    };
    let inner = json!({ "model": req["model"], "input": input });
    let resp = embed(State(app), Bytes::from(inner.to_string())).await;
    if !resp.status().is_success() {
        return openai_from_native_err(resp).await;
    }
    let b = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap_or_default();
    let native: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
    let data: Vec<Value> = native["embeddings"]
        .as_array()
        .map(|es| {
            es.iter()
                .enumerate()
                .map(|(i, e)| {
                    let floats: Vec<f32> = e.as_array().map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect()).unwrap_or_default();
                    let embedding = if format.eq_ignore_ascii_case("base64") {
                        use base64::Engine;
                        json!(base64::engine::general_purpose::STANDARD.encode(floats.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>()))
                    } else {
                        json!(floats)
                    };
                    json!({ "object": "embedding", "embedding": embedding, "index": i })
                })
                .collect()
        })
        .unwrap_or_default();
    let tokens = native["prompt_eval_count"].as_u64().unwrap_or(0);
    axum::Json(json!({ "object": "list", "data": data, "model": req["model"], "usage": { "prompt_tokens": tokens, "total_tokens": tokens } })).into_response()
}

/// GET /v1/models (middleware/openai.go ListMiddleware, openai.ToListCompletion).
async fn v1_models(State(app): State<App>) -> Response {
    let st = app.emu.lock();
    let data: Vec<Value> = st.local.iter().map(|(name, m)| json!({ "id": name, "object": "model", "created": m.modified_at.unix_timestamp(), "owned_by": "library" })).collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

/// /api/generate and /api/chat (server/routes.go GenerateHandler / ChatHandler).
async fn complete(app: App, body: Bytes, shape: Shape) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = v.get("model").and_then(Value::as_str).unwrap_or("").to_string();
    if model.is_empty() {
        return err(StatusCode::BAD_REQUEST, "model is required");
    }
    let keep = match v.get("keep_alive") {
        None | Some(Value::Null) => None,
        Some(k) => match Keep::from_json(k) {
            Ok(k) => Some(k),
            Err(e) => return err(StatusCode::BAD_REQUEST, e),
        },
    };
    let prompt: String = match shape {
        Shape::Generate => v.get("prompt").and_then(Value::as_str).unwrap_or("").to_string(),
        Shape::Chat => v
            .get("messages")
            .and_then(Value::as_array)
            .map(|m| m.iter().filter_map(|x| x.get("content").and_then(Value::as_str)).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    };
    let empty = match shape {
        Shape::Generate => prompt.is_empty(),
        Shape::Chat => v.get("messages").and_then(Value::as_array).is_none_or(|m| m.is_empty()),
    };
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let name = normalize(&model);
    let emu = app.emu.clone();
    let spec = {
        let st = emu.lock();
        match st.local.get(&name) {
            Some(m) => m.spec.clone(),
            None => return err(StatusCode::NOT_FOUND, format!("model '{model}' not found")),
        }
    };
    let model_for_base = model.clone();
    let base = move |reason: &str| {
        let mut r = json!({ "model": model_for_base, "created_at": now_rfc3339(), "done": true, "done_reason": reason });
        match shape {
            Shape::Generate => r["response"] = json!(""),
            Shape::Chat => r["message"] = json!({ "role": "assistant", "content": "" }),
        }
        r
    };
    // An empty prompt with keep_alive 0 (routes.go GenerateHandler -> sched.go expireRunner):
    // the runner's duration becomes 0 and expiresAt now; idle, it unloads at once, busy, when its
    // last request ends. Never loads first.
    if empty && keep == Some(Keep::For(Duration::ZERO)) {
        let mut st = emu.lock();
        if let Some(key) = st.key_of(&name) {
            if let Some(r) = st.loaded.get_mut(&key) {
                r.expires_at = Some(OffsetDateTime::now_utc());
            }
            emu.expire(&mut st, &key, "keep_alive 0");
        }
        return axum::Json(base("unload")).into_response();
    }
    let opts = runner_options(&v, &spec, &emu.config);
    let num_predict = v.get("options").and_then(|o| o.get("num_predict")).and_then(Value::as_i64).unwrap_or(24).clamp(1, 4096) as u64;
    let (key, acq) = match acquire(&emu, &name, opts, keep).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let busy = Busy { emu: emu.clone(), key };
    if empty {
        drop(busy);
        return axum::Json(base("load")).into_response();
    }
    let runtime_oom = {
        let mut st = emu.lock();
        let i = st.faults.iter().position(|f| f.kind == FaultKind::RuntimeOom);
        i.and_then(|i| st.faults.remove(i)).is_some()
    };
    if runtime_oom {
        // The decode fails on the GPU; GenerateHandler calls expireRunnersForRuntimeOOM, which
        // sets every runner's duration to 0: all unload once idle, pinned or not.
        let e = "an error was encountered while running the model: CUDA error: out of memory";
        emu.raw_log("CUDA error: out of memory".into());
        emu.raw_log("  current device: 0, in function ggml_backend_cuda_synchronize".into());
        emu.expire_all_for_runtime_oom(&name, e);
        drop(busy);
        return if stream {
            let line = json!({ "error": e });
            Response::builder()
                .status(200)
                .header("content-type", "application/x-ndjson")
                .body(Body::from(format!("{}\n", json!({ "model": model, "created_at": now_rfc3339(), "response": "The", "done": false })) + &format!("{line}\n")))
                .unwrap_or_else(|_| unreachable_response())
        } else {
            err(StatusCode::INTERNAL_SERVER_ERROR, e)
        };
    }
    // Generation speed follows placement: GPU share of layers at GPU speed, the rest at CPU speed.
    let gpu_share = if acq.size == 0 { 0.0 } else { acq.size_vram as f64 / acq.size as f64 };
    let tok_s = if gpu_share >= 1.0 { spec.gpu_tok_s } else { spec.cpu_tok_s * (1.0 - gpu_share) + spec.gpu_tok_s * gpu_share * 0.5 };
    let per_token = Duration::from_secs_f64(1.0 / tok_s.max(0.1));
    let prompt_tokens = prompt.split_whitespace().count() as u64 + 8;
    let prompt_eval = Duration::from_secs_f64(prompt_tokens as f64 / (tok_s * 20.0));
    let load = acq.cold_load.unwrap_or(Duration::from_millis(3));
    let scale = emu.config.time_scale;
    let final_line = move |text: &str| {
        let eval = per_token * num_predict as u32;
        let mut r = base(if num_predict >= 24 { "length" } else { "stop" });
        match shape {
            Shape::Generate => r["response"] = json!(text),
            Shape::Chat => r["message"] = json!({ "role": "assistant", "content": text }),
        }
        r["total_duration"] = json!((load + prompt_eval + eval).as_nanos() as u64);
        r["load_duration"] = json!(load.as_nanos() as u64);
        r["prompt_eval_count"] = json!(prompt_tokens);
        r["prompt_eval_duration"] = json!(prompt_eval.as_nanos() as u64);
        r["eval_count"] = json!(num_predict);
        r["eval_duration"] = json!(eval.as_nanos() as u64);
        if shape == Shape::Generate {
            // api/types.go GenerateResponse.Context: the conversation's token ids (deprecated).
            r["context"] = json!((1..=prompt_tokens + num_predict).collect::<Vec<u64>>());
        }
        r
    };
    let words = ["The", " Orin", " keeps", " the", " model", " warm", "."];
    if !stream {
        tokio::time::sleep((prompt_eval + per_token * num_predict as u32).mul_f64(scale)).await;
        let text: String = (0..num_predict).map(|i| words[i as usize % words.len()]).collect();
        drop(busy);
        return axum::Json(final_line(&text)).into_response();
    }
    let model2 = model.clone();
    let end = StreamEnd { emu: emu.clone(), finished: Arc::new(std::sync::atomic::AtomicBool::new(false)) };
    let finished = end.finished.clone();
    let st = futures_util::stream::unfold(0u64, move |i| {
        let model = model2.clone();
        let final_line = final_line.clone();
        let finished = finished.clone();
        async move {
            if i > num_predict {
                return None;
            }
            if i == num_predict {
                finished.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if i == 0 {
                tokio::time::sleep(prompt_eval.mul_f64(scale)).await;
            }
            let line = if i == num_predict {
                let mut f = final_line("");
                if shape == Shape::Chat {
                    f["message"] = json!({ "role": "assistant", "content": "" });
                }
                f
            } else {
                // A zero delay (time scale 0, benchmarks) must not cost a timer tick per token.
                let d = per_token.mul_f64(scale);
                if !d.is_zero() {
                    tokio::time::sleep(d).await;
                }
                let w = words[i as usize % words.len()];
                match shape {
                    Shape::Generate => json!({ "model": model, "created_at": now_rfc3339(), "response": w, "done": false }),
                    Shape::Chat => json!({ "model": model, "created_at": now_rfc3339(), "message": { "role": "assistant", "content": w }, "done": false }),
                }
            };
            Some((Ok::<Bytes, std::io::Error>(Bytes::from(format!("{line}\n"))), i + 1))
        }
    });
    // Keep `busy` alive until the stream is dropped; `end` counts a stream dropped early.
    let st = futures_util::StreamExt::map(st, move |x| {
        let _ = (&busy, &end);
        x
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(st))
        .unwrap_or_else(|_| unreachable_response())
}

/// POST /api/embed (server/routes.go EmbedHandler): loads the model through the scheduler like a
/// generation, answers one vector per input.
async fn embed(State(app): State<App>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = v.get("model").and_then(Value::as_str).unwrap_or("").to_string();
    let inputs: Vec<String> = match v.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    let keep = match v.get("keep_alive") {
        None | Some(Value::Null) => None,
        Some(k) => match Keep::from_json(k) {
            Ok(k) => Some(k),
            Err(e) => return err(StatusCode::BAD_REQUEST, e),
        },
    };
    let name = normalize(&model);
    let Some(spec) = app.emu.lock().local.get(&name).map(|m| m.spec.clone()) else {
        return err(StatusCode::NOT_FOUND, format!("model '{model}' not found"));
    };
    let opts = runner_options(&v, &spec, &app.emu.config);
    let (key, acq) = match acquire(&app.emu, &name, opts, keep).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let _busy = Busy { emu: app.emu.clone(), key };
    let embeddings: Vec<Vec<f64>> = inputs.iter().map(|t| (0..8).map(|i| ((t.len() + i) % 7) as f64 / 7.0).collect()).collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count() + 1).sum();
    axum::Json(json!({
        "model": model, "embeddings": embeddings,
        "total_duration": acq.cold_load.unwrap_or_default().as_nanos() as u64 + 1_000_000,
        "load_duration": acq.cold_load.unwrap_or_default().as_nanos() as u64,
        "prompt_eval_count": tokens,
    }))
    .into_response()
}

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
    Response::builder()
        .status(200)
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(s))
        .unwrap_or_else(|_| unreachable_response())
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
fn model_request(body: &Bytes) -> Result<(Value, String, bool), Response> {
    let v = body_json(body)?;
    let model = v.get("model").or_else(|| v.get("name")).and_then(Value::as_str).unwrap_or("").to_string();
    if model.is_empty() {
        return Err(err(StatusCode::BAD_REQUEST, "model is required"));
    }
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(true);
    Ok((v, model, stream))
}

async fn pull(State(app): State<App>, body: Bytes) -> Response {
    let (_, model, stream) = match model_request(&body) {
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
async fn create(State(app): State<App>, body: Bytes) -> Response {
    let (v, model, stream) = match model_request(&body) {
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

async fn delete(State(app): State<App>, method: Method, body: Bytes) -> Response {
    if method != Method::DELETE {
        return (StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed").into_response();
    }
    let v = match body_json(&body) {
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

// ---- control API (not part of Ollama) ----

async fn ctl_fault(State(app): State<App>, body: Bytes) -> Response {
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

async fn ctl_evict(State(app): State<App>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let evicted = app.emu.evict(v.get("model").and_then(Value::as_str));
    axum::Json(json!({ "evicted": evicted })).into_response()
}

async fn ctl_restart(State(app): State<App>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    *app.ctl.down.lock().unwrap_or_else(|p| p.into_inner()) = Duration::from_millis(v.get("down_ms").and_then(Value::as_u64).unwrap_or(500));
    app.ctl.restart.notify_one();
    StatusCode::ACCEPTED.into_response()
}

async fn ctl_reset_memory(State(app): State<App>) -> Response {
    app.emu.reset_memory();
    StatusCode::NO_CONTENT.into_response()
}

async fn ctl_state(State(app): State<App>) -> Response {
    let c = app.emu.counters();
    let st = app.emu.lock();
    axum::Json(json!({
        "counters": c, "fragmented": st.fragmented,
        "loaded": st.loaded.keys().collect::<Vec<_>>(), "local": st.local.keys().collect::<Vec<_>>(),
    }))
    .into_response()
}
