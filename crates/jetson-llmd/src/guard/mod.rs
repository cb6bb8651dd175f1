//! The guard: a front door where clients expect Ollama (`[guard] listen`), forwarding to Ollama
//! on its private address, that keeps the pinned model pinned whatever clients send. Stock
//! Ollama cannot refuse to evict a model, ignore a client's keep_alive, or refuse a num_ctx
//! that forces a reload (server/sched.go needsReload); on an 8 GB Jetson each reload risks GPU
//! memory that cannot be allocated again until a reboot. Decisions are in [`policy`]; this file
//! moves bytes: request bodies of the endpoints that name a model are read (capped) and maybe
//! rewritten, everything else streams through untouched, responses stream back frame by frame
//! (hyper's own body, no re-wrapping), and a client that goes away cancels the upstream request
//! (its body is dropped, which closes that upstream connection).
//!
//! hyper is used directly on both sides rather than axum::serve and a pooled client: each
//! connection's buffers are then bounded, which keeps 100 concurrent streams within a few MiB,
//! and the upstream connection is driven by the response body itself ([`relay`]).

pub mod admission;
pub mod gobody;
pub mod keys;
pub mod policy;
mod relay;
pub mod routes;

use crate::conf::config::GuardSettings;
use crate::conf::ModelName;
use crate::records::state::State;
use crate::records::Stage;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use policy::{Decision, Rule};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

type Request = axum::http::Request<Body>;

/// Request bodies the guard reads to apply its policy (chat histories with images can be large).
pub const MAX_REQUEST: usize = 64 << 20;
const GUARD_HEADER: &str = "x-jetson-llmd-guard";
const STAGE_HEADER: &str = "x-jetson-llmd-stage";
/// Seconds an admitted request waited for its turn (`[[guard.class]]`), and its class.
const QUEUED_HEADER: &str = "x-jetson-llmd-queued";
const CLASS_HEADER: &str = "x-jetson-llmd-class";
/// Most a client connection's read buffer grows to (it starts at 8 KiB); also the largest
/// request head accepted.
const CLIENT_BUF: usize = 64 << 10;
/// How many client connections the guard serves, and from whom. A connection costs the two
/// buffers (`CLIENT_BUF`, relay's) plus a request being inspected. One host must not be able to
/// take them all (issue 30: 520 idle connections from one client held every request and
/// /healthz for 30 s a wave), so each address off this machine has its own cap, and this
/// machine (loopback, the guard's own address, `admin_from`) and the rest of the network each
/// have a share the other cannot take. A connection past its caps still gets /healthz and the
/// board endpoint answered (and everything else a 503 naming the cap) on one of the `overflow`
/// connections; past those it is closed at once, never left waiting in the backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// All connections served fully.
    pub total: usize,
    /// Of them, from one address off this machine.
    pub per_client: usize,
    /// Of them, from this machine and `admin_from` together; and from everyone else together.
    pub share: usize,
    /// Connections past the caps that still get /healthz and the board answered.
    pub overflow: usize,
    /// A request head must arrive within this, and an idle keep-alive connection is closed
    /// after it (hyper's header read timeout runs while a connection waits for its next request).
    pub head_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits { total: 512, per_client: 64, share: 384, overflow: 32, head_timeout: Duration::from_secs(10) }
    }
}

/// How many connections the guard serves at once (see [`ConnLimits`]).
pub const MAX_CONNECTIONS: usize = 512;
/// On stop, requests in flight get this long to finish before their connections are closed.
const DRAIN: Duration = Duration::from_secs(5);

/// Decisions by rule, for /metrics and `status`.
#[derive(Default)]
pub struct Stats {
    counts: Mutex<BTreeMap<Rule, u64>>,
    /// The admission queue of the guard these are the stats of (set by [`Guard::new`]).
    admission: Mutex<Option<Arc<admission::Admission>>>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").field("counts", &self.counts).finish_non_exhaustive()
    }
}

impl Stats {
    fn count(&self, r: Rule) {
        if let Ok(mut c) = self.counts.lock() {
            *c.entry(r).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let c = self.counts.lock().map(|c| c.clone()).unwrap_or_default();
        Rule::ALL.iter().map(|r| (r.as_str(), c.get(r).copied().unwrap_or(0))).collect()
    }

    /// Admission per class; empty when no classes are written.
    pub fn queues(&self) -> Vec<admission::ClassStats> {
        self.admission.lock().ok().and_then(|a| a.clone()).map(|a| a.snapshot()).unwrap_or_default()
    }
}

pub struct Guard {
    /// Ollama's own (private) address, e.g. http://127.0.0.1:11435/.
    pub upstream: url::Url,
    /// The policy in force; SIGHUP sends a new one ([`Guard::follow`]).
    settings: watch::Receiver<GuardSettings>,
    pub state: watch::Receiver<State>,
    pub stats: Arc<Stats>,
    /// host:port of `upstream`: where to connect, and the Host header.
    authority: String,
    /// Bytes of request bodies held for inspection, across all connections ([guard]
    /// body_budget_mib): a permit per byte, taken as the bytes arrive.
    budget: Arc<tokio::sync::Semaphore>,
    /// The budget's size (permits), fixed at start.
    budget_bytes: usize,
    /// `[guard] keys_file`, as last read.
    keys: keys::KeyCache,
    /// Which request reaches Ollama next (`[[guard.class]]`); off without classes.
    admission: Arc<admission::Admission>,
    /// OLLAMA_NUM_PARALLEL as this process was started with (ollama.env), read once.
    env_parallel: Option<String>,
    /// The supervisor's metrics_listen, said by the board endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Connections served, per client and in all.
    pub limits: ConnLimits,
}

impl Guard {
    pub fn new(upstream: url::Url, settings: GuardSettings, state: watch::Receiver<State>, stats: Arc<Stats>) -> Guard {
        let host = match upstream.host() {
            Some(url::Host::Ipv6(a)) => format!("[{a}]"),
            Some(h) => h.to_string(),
            None => "127.0.0.1".into(),
        };
        let authority = format!("{host}:{}", upstream.port_or_known_default().unwrap_or(11434));
        let budget_bytes = usize::try_from(settings.body_budget_mib << 20).unwrap_or(16 << 20);
        let budget = Arc::new(tokio::sync::Semaphore::new(budget_bytes));
        // Waiting requests may hold half of the body budget; the other half stays for requests
        // that go on at once (a chat is never refused for bodies queued behind it).
        let env_parallel = std::env::var("OLLAMA_NUM_PARALLEL").ok();
        let admission = admission::Admission::new(&settings, env_parallel.as_deref(), budget_bytes / 2);
        if let Ok(mut a) = stats.admission.lock() {
            *a = Some(admission.clone());
        }
        // The sender is dropped: the policy stays as given unless `follow` connects a new one.
        let (_, settings) = watch::channel(settings);
        Guard { upstream, settings, state, stats, authority, budget, budget_bytes, keys: keys::KeyCache::default(), admission, env_parallel, metrics_listen: None, limits: ConnLimits::default() }
    }

    /// Takes its policy from `rx` from now on: the supervisor sends config.toml's `[guard]`
    /// after each SIGHUP. The body budget keeps the size it started with (a restart changes it);
    /// classes change in place, requests waiting keep their place.
    pub fn follow(&mut self, rx: watch::Receiver<GuardSettings>) {
        self.settings = rx.clone();
        let (adm, env) = (self.admission.clone(), self.env_parallel.clone());
        let mut rx = rx;
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let s = rx.borrow_and_update().clone();
                adm.configure(&s, env.as_deref());
            }
        });
    }

    /// The policy in force for one request.
    pub fn settings(&self) -> GuardSettings {
        self.settings.borrow().clone()
    }

    fn pinned(&self) -> Option<ModelName> {
        self.state.borrow().model.as_deref().and_then(|m| ModelName::parse(m).ok())
    }
}

/// Why an inspected body was not read whole.
enum BodyRefusal {
    TooLarge,
    Busy,
    Slow,
    Broken(String),
}

/// Reads an inspected request body within the per-request cap, the shared budget and the
/// deadline. The permits come back with the bytes: held until the request has been forwarded.
async fn read_body(g: &Guard, settings: &GuardSettings, body: Body) -> Result<(bytes::Bytes, tokio::sync::OwnedSemaphorePermit), BodyRefusal> {
    use http_body_util::BodyExt;
    let max = MAX_REQUEST.min(g.budget_bytes);
    if http_body::Body::size_hint(&body).lower() > max as u64 {
        return Err(BodyRefusal::TooLarge);
    }
    let mut held = g.budget.clone().try_acquire_many_owned(0).map_err(|_| BodyRefusal::Busy)?;
    let mut buf = bytes::BytesMut::new();
    let mut body = body;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyRefusal::Broken(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            if buf.len() + data.len() > max {
                return Err(BodyRefusal::TooLarge);
            }
            let n = u32::try_from(data.len()).map_err(|_| BodyRefusal::TooLarge)?;
            // Never waits: a full budget is an answer now (503), not a queue of held bodies.
            let more = g.budget.clone().try_acquire_many_owned(n).map_err(|_| BodyRefusal::Busy)?;
            held.merge(more);
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout(settings.body_timeout, read).await {
        Ok(Ok(())) => Ok((buf.freeze(), held)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BodyRefusal::Slow),
    }
}

/// The guard's `listen` is where Ollama itself listens (same port, same or wildcard address):
/// the two would fight over the port, and clients would reach Ollama unguarded.
pub fn clashes_with_ollama(listen: SocketAddr, ollama: &url::Url) -> bool {
    let Some(o) = ollama.socket_addrs(|| Some(11434)).ok().and_then(|a| a.into_iter().next()) else { return false };
    o.port() == listen.port() && (o.ip() == listen.ip() || listen.ip().is_unspecified() || o.ip().is_unspecified())
}

/// `[guard] keys_file`: a client off this machine presents a key, an admin call an admin key.
/// Ok lets the request go on, with the name of the valid key it presented (a loopback client
/// needs none, but the one it sends still places it in its class). Refusals are 401 (403 for a
/// client key on an admin route) in the error shape the client's API uses; a keys file that
/// cannot be read refuses (503).
async fn check_key(g: &Guard, settings: &GuardSettings, client: SocketAddr, method: &str, path: &str, headers: &HeaderMap) -> Result<Option<String>, Response> {
    let Some(file) = settings.keys_file.as_ref() else { return Ok(None) };
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if policy::from_this_machine(client.ip(), settings.listen) {
        let Some(presented) = keys::presented(auth) else { return Ok(None) };
        let Ok(keys) = g.keys.keys(file).await else { return Ok(None) };
        return Ok(keys::find(&keys, presented).map(|k| k.name.clone()));
    }
    let refuse = |status: StatusCode, message: String| {
        g.stats.count(Rule::KeyRefused);
        let mut r = if path.starts_with("/v1/") {
            let code = if status == StatusCode::UNAUTHORIZED { "invalid_api_key" } else { "insufficient_permissions" };
            (status, axum::Json(serde_json::json!({ "error": { "message": message, "type": "invalid_request_error", "param": null, "code": code } }))).into_response()
        } else {
            ollama_error(status, &message, &[])
        };
        r.headers_mut().insert(GUARD_HEADER, HeaderValue::from_static("refused: key"));
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        r
    };
    let keys = match g.keys.keys(file).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("guard: keys file: {e}; refusing clients off this machine");
            return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, format!("jetson-llmd guard cannot read its keys file ({}); requests from other machines are refused until it can", crate::text::one_line(&e))));
        }
    };
    let Some(key) = keys::presented(auth).and_then(|k| keys::find(&keys, k)) else {
        return Err(refuse(StatusCode::UNAUTHORIZED, "jetson-llmd guard: send a valid API key (Authorization: Bearer KEY); ask whoever runs this Jetson for one".into()));
    };
    if routes::classify(method, path) == routes::Route::Admin && key.role != keys::Role::Admin {
        return Err(refuse(StatusCode::FORBIDDEN, format!("jetson-llmd guard: the key {:?} may run the model but not change models; an admin key may", key.name)));
    }
    Ok(Some(key.name.clone()))
}

/// A request the queue did not admit: 429 (its class's queue is full) or 503 (it waited its
/// class's max_wait), with Retry-After, in the error shape of the client's API (Ollama's,
/// OpenAI's for /v1/, Anthropic's for /v1/messages) so that official clients show the words and
/// their retry logic applies.
fn queue_refusal(path: &str, refusal: &admission::Refusal) -> Response {
    let (status, message, retry) = match refusal {
        admission::Refusal::QueueFull { class, max } => (StatusCode::TOO_MANY_REQUESTS, format!("jetson-llmd guard: {max} requests of class {class:?} are already waiting for the model; retry later"), "5"),
        admission::Refusal::Waited { class, waited } => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("jetson-llmd guard: no turn for class {class:?} within {}; the board is busy, retry later", humantime::format_duration(Duration::from_secs(waited.as_secs()))), "10")
        }
        admission::Refusal::BodiesFull { class, max_mib } => (StatusCode::TOO_MANY_REQUESTS, format!("jetson-llmd guard: waiting requests already hold {max_mib} MiB of bodies (class {class:?}); retry later"), "5"),
    };
    let mut r = if path == "/v1/messages" {
        let kind = if status == StatusCode::TOO_MANY_REQUESTS { "rate_limit_error" } else { "overloaded_error" };
        (status, axum::Json(serde_json::json!({ "type": "error", "error": { "type": kind, "message": message } }))).into_response()
    } else if path.starts_with("/v1/") {
        let code = if status == StatusCode::TOO_MANY_REQUESTS { "rate_limit_exceeded" } else { "server_busy" };
        (status, axum::Json(serde_json::json!({ "error": { "message": message, "type": "rate_limit_error", "param": null, "code": code } }))).into_response()
    } else {
        ollama_error(status, &message, &[])
    };
    r.headers_mut().insert("retry-after", HeaderValue::from_static(retry));
    r.headers_mut().insert(GUARD_HEADER, HeaderValue::from_static("refused: queue"));
    r
}

/// A response body that holds the request's slot in Ollama until the stream ends or the
/// client goes away (then the next request is admitted). It passes frames on untouched.
struct Holding<B> {
    body: B,
    slot: Option<admission::Slot>,
}

impl<B: http_body::Body + Unpin> http_body::Body for Holding<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let r = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(None | Some(Err(_))) = r {
            // Ended: the slot is free now, not when hyper drops the body.
            self.slot = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn ollama_error(status: StatusCode, message: &str, headers: &[(&'static str, String)]) -> Response {
    // Ollama's error shape, so official clients show the message.
    let mut r = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&crate::text::clip(&crate::text::clean(v), 500)) {
            r.headers_mut().insert(*k, v);
        }
    }
    r
}

fn warm(s: &State, pinned: &Option<ModelName>) -> bool {
    s.stage == Stage::Ready && s.model.is_some() && s.model.as_deref().and_then(|m| ModelName::parse(m).ok()) == *pinned
}

/// A request for the pinned model may go on: it is warm, or it was evicted again and the
/// supervisor is backing off (not-resident) — no preload is running then to race, and the
/// client's own request loads it (its keep_alive removed, so pinned).
fn may_go_on(s: &State, pinned: &Option<ModelName>) -> bool {
    warm(s, pinned) || (s.stage == Stage::NotResident && s.model.as_deref().and_then(|m| ModelName::parse(m).ok()) == *pinned)
}

/// Waits (up to `ready_wait`) until a request for the pinned model may go on; Err carries the
/// stage.
async fn wait_warm(g: &Guard) -> Result<bool, State> {
    let mut rx = g.state.clone();
    let pinned = g.pinned();
    if may_go_on(&rx.borrow(), &pinned) {
        return Ok(false);
    }
    let deadline = tokio::time::Instant::now() + g.settings().ready_wait;
    loop {
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {
                if may_go_on(&rx.borrow(), &pinned) {
                    return Ok(true);
                }
            }
            _ => return Err(rx.borrow().clone()),
        }
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1) and the ones the HTTP stacks set themselves.
fn forwardable(name: &HeaderName) -> bool {
    !matches!(name.as_str(), "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "te" | "trailer" | "upgrade" | "host" | "content-length")
}

async fn healthz(g: &Guard) -> Response {
    let s = g.state.borrow().clone();
    if warm(&s, &g.pinned()) {
        (StatusCode::OK, format!("ok: {}\n", crate::text::one_line(&s.status))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{}: {}\n", s.stage, crate::text::one_line(&s.status))).into_response()
    }
}

/// The board as the guard sees it: `GET /jetson-llmd/board` (read-only; with keys_file set, a
/// client off this machine presents a key, as for every other route). For fleet tools (which
/// model a board pins, whether it is ready) and for `jetson-llmd status` (the queues).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Board {
    /// jetson-llmd's version.
    pub version: String,
    /// The pinned model, once known.
    pub model: Option<String>,
    /// Warm and pinned: what /healthz answers 200 for.
    pub ready: bool,
    pub stage: String,
    pub status: String,
    /// Ollama's parallel slots admission fills (OLLAMA_NUM_PARALLEL).
    pub slots: usize,
    /// Per class, when `[[guard.class]]` is written.
    pub queues: Vec<admission::ClassStats>,
    /// Where the supervisor serves /metrics (config.toml metrics_listen), for scrape configs.
    pub metrics: Option<String>,
}

/// Where the board endpoint is served.
pub const BOARD_PATH: &str = "/jetson-llmd/board";

fn board(g: &Guard) -> Board {
    let s = g.state.borrow().clone();
    Board {
        version: env!("CARGO_PKG_VERSION").into(),
        ready: warm(&s, &g.pinned()),
        model: s.model.clone(),
        stage: s.stage.to_string(),
        status: crate::text::one_line(&s.status),
        slots: g.admission.slot_count(),
        queues: g.admission.snapshot(),
        metrics: g.metrics_listen.map(|a| a.to_string()),
    }
}

async fn handle(g: Arc<Guard>, client: SocketAddr, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let method = parts.method.as_str().to_string();
    if path == "/healthz" && method == "GET" {
        return healthz(&g).await;
    }
    let settings = g.settings();
    let key = match check_key(&g, &settings, client, &method, &path, &parts.headers).await {
        Ok(k) => k,
        Err(refused) => return refused,
    };
    // After the key check: with keys_file set, a client off this machine needs a key to read
    // what the board pins and its traffic, as it does for /api/ps.
    if path == BOARD_PATH && method == "GET" {
        return axum::Json(board(&g)).into_response();
    }
    // The bodies of the endpoints that run a model are read (capped) and decoded as Ollama will;
    // everything else streams through untouched.
    let (bytes, decoded, stream_body, _held) = if policy::needs_body(&method, &path) {
        match read_body(&g, &settings, body).await {
            Ok((b, held)) => {
                let decoded = gobody::decode(&b);
                (Some(b), Some(decoded), None, Some(held))
            }
            Err(refusal) => {
                g.stats.count(Rule::BodyRefused);
                let max = MAX_REQUEST.min(g.budget_bytes);
                let (status, msg, retry) = match refusal {
                    BodyRefusal::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {} MiB (jetson-llmd guard)", max >> 20), false),
                    BodyRefusal::Busy => (StatusCode::SERVICE_UNAVAILABLE, format!("jetson-llmd guard: {} MiB of request bodies are already being read; retry shortly", g.budget_bytes >> 20), true),
                    BodyRefusal::Slow => (StatusCode::REQUEST_TIMEOUT, format!("jetson-llmd guard: the request body did not arrive within {}", humantime::format_duration(settings.body_timeout)), false),
                    BodyRefusal::Broken(e) => (StatusCode::BAD_REQUEST, format!("jetson-llmd guard: reading the request body failed: {}", crate::text::one_line(&e)), false),
                };
                let mut r = ollama_error(status, &msg, &[(GUARD_HEADER, "refused: body".into())]);
                if retry {
                    r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
                }
                return r;
            }
        }
    } else {
        (None, None, Some(body), None)
    };
    let pinned = g.pinned();
    let decision = policy::decide(&method, &path, decoded.as_ref(), client.ip(), pinned.as_ref(), &settings);
    let runs_model = matches!(decision, Decision::Forward { .. }) && decoded.is_some();
    let (new_body, notes, for_pinned) = match decision {
        Decision::Refuse { status, message, rule } => {
            g.stats.count(rule);
            tracing::debug!(client = %client, rule = rule.as_str(), "guard: refused {method} {path}");
            // In the client's API's shape: the OpenAI SDK and LiteLLM read error.message.
            let mut r = refusal(&path, StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT), &message);
            if let Ok(v) = HeaderValue::from_str(&format!("refused: {}", rule.as_str())) {
                r.headers_mut().insert(GUARD_HEADER, v);
            }
            if rule == Rule::PinUnknown {
                r.headers_mut().insert("retry-after", HeaderValue::from_static("5"));
            }
            return r;
        }
        Decision::Forward { body, notes, rules, for_pinned } => {
            for r in &rules {
                g.stats.count(*r);
            }
            tracing::debug!(client = %client, rules = ?rules, "guard: {method} {path}");
            (body, notes, for_pinned)
        }
    };
    let mut stage_note = None;
    if for_pinned {
        match wait_warm(&g).await {
            Ok(waited) => {
                if waited {
                    g.stats.count(Rule::WaitedForWarm);
                    stage_note = Some("waited for warm".to_string());
                }
            }
            Err(s) => {
                g.stats.count(Rule::NotWarm);
                let msg = format!("{} is not warm yet ({}: {}); retry shortly", pinned.map(|p| p.to_string()).unwrap_or_default(), s.stage, crate::text::one_line(&s.status));
                return ollama_error(StatusCode::SERVICE_UNAVAILABLE, &msg, &[(STAGE_HEADER, s.stage.to_string())]);
            }
        }
    }

    // Admission (`[[guard.class]]`): a request that runs a model waits here for its turn.
    let mut slot = None;
    if runs_model && g.admission.enabled() {
        let header = settings.class_header.as_deref().and_then(|h| parts.headers.get(h)).and_then(|v| v.to_str().ok());
        let class = admission::classify(&settings, &admission::Who { client: client.ip(), key: key.as_deref(), header }).to_string();
        let bytes = bytes.as_ref().map_or(0, |b| b.len());
        match g.admission.admit(&class, bytes).await {
            Ok(s) => slot = Some(s),
            Err(refusal) => {
                tracing::debug!(client = %client, class = %class, "guard: not admitted: {refusal:?}");
                return queue_refusal(&path, &refusal);
            }
        }
    }

    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut up = axum::http::Request::builder().method(parts.method.clone()).uri(pq).header("host", &g.authority);
    // A key is ours to check, not Ollama's to see.
    let strip_auth = settings.keys_file.is_some();
    for (k, v) in parts.headers.iter().filter(|(k, _)| forwardable(k) && !(strip_auth && k.as_str() == "authorization")) {
        up = up.header(k, v);
    }
    let body = match (new_body, bytes, stream_body) {
        (Some(b), ..) => {
            up = up.header("content-type", "application/json");
            Body::from(b)
        }
        (None, Some(b), _) => Body::from(b),
        // hyper frames it from the body's own size: a request without one (a GET) sends none,
        // one with a length keeps it, anything else is chunked.
        (None, None, Some(body)) => body,
        (None, None, None) => Body::empty(),
    };
    let up = match up.body(body) {
        Ok(r) => r,
        Err(e) => return ollama_error(StatusCode::BAD_REQUEST, &format!("jetson-llmd guard: cannot forward this request: {e}"), &[]),
    };
    let resp = match relay::exchange(&g.authority, up).await {
        Ok(r) => r,
        Err(e) => {
            return ollama_error(StatusCode::BAD_GATEWAY, &format!("jetson-llmd guard: Ollama at {} did not answer: {}", g.upstream, crate::text::one_line(&e.to_string())), &[]);
        }
    };
    let mut headers = HeaderMap::new();
    for (k, v) in resp.headers().iter().filter(|(k, _)| forwardable(k) || k.as_str() == "content-length") {
        headers.append(k.clone(), v.clone());
    }
    if !notes.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&notes.join("; ")) {
            headers.insert(GUARD_HEADER, v);
        }
    }
    if let Some(n) = stage_note {
        if let Ok(v) = HeaderValue::from_str(&n) {
            headers.insert(STAGE_HEADER, v);
        }
    }
    if let Some(s) = &slot {
        if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", s.waited.as_secs_f64())) {
            headers.insert(QUEUED_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(s.class()) {
            headers.insert(CLASS_HEADER, v);
        }
    }
    let (up_parts, up_body) = resp.into_parts();
    // Frame by frame: nothing is buffered, and dropping this body (the client left) drops the
    // upstream response, which closes that connection and cancels Ollama's request.
    let body = match slot {
        Some(slot) => Body::new(Holding { body: up_body, slot: Some(slot) }),
        None => Body::new(up_body),
    };
    let mut r = Response::new(body);
    *r.status_mut() = up_parts.status;
    *r.headers_mut() = headers;
    r
}

/// Which connections are open, by whom (see [`ConnLimits`]).
#[derive(Default)]
struct Open {
    total: usize,
    /// From this machine and `admin_from`; from everyone else.
    local: usize,
    remote: usize,
    per_client: std::collections::HashMap<std::net::IpAddr, usize>,
    overflow: usize,
}

/// What a new connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Full {
        local: bool,
    },
    /// /healthz and the board only; everything else 503, then the connection closes.
    Overflow,
}

/// An open connection's place in [`Open`], given back when it closes.
struct Ticket {
    open: Arc<Mutex<Open>>,
    ip: std::net::IpAddr,
    service: Service,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match self.service {
            Service::Overflow => o.overflow -= 1,
            Service::Full { local } => {
                o.total -= 1;
                if local {
                    o.local -= 1;
                } else {
                    o.remote -= 1;
                    if let Some(n) = o.per_client.get_mut(&self.ip) {
                        *n -= 1;
                        if *n == 0 {
                            o.per_client.remove(&self.ip);
                        }
                    }
                }
            }
        }
    }
}

/// A place for a connection from `ip`, or None: close it at once.
fn admit_connection(open: &Arc<Mutex<Open>>, limits: &ConnLimits, ip: std::net::IpAddr, local: bool) -> Option<Ticket> {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    let mut o = open.lock().unwrap_or_else(|p| p.into_inner());
    let mine = o.per_client.get(&ip).copied().unwrap_or(0);
    let fits = o.total < limits.total && if local { o.local < limits.share } else { o.remote < limits.share && mine < limits.per_client };
    let service = if fits {
        o.total += 1;
        if local {
            o.local += 1;
        } else {
            o.remote += 1;
            *o.per_client.entry(ip).or_default() += 1;
        }
        Service::Full { local }
    } else if o.overflow < limits.overflow {
        o.overflow += 1;
        Service::Overflow
    } else {
        return None;
    };
    Some(Ticket { open: open.clone(), ip, service })
}

/// A request on an overflow connection: /healthz and the board answered as always (a health
/// probe must not fail because one client holds the connections), everything else refused.
async fn overflow(g: Arc<Guard>, client: SocketAddr, req: Request) -> Response {
    let path = req.uri().path();
    if req.method() == axum::http::Method::GET && (path == "/healthz" || path == BOARD_PATH) {
        return handle(g, client, req).await;
    }
    let message = format!("jetson-llmd guard: too many connections are open (from {} or in all); close idle ones and retry", client.ip());
    let mut r = refusal(path, StatusCode::SERVICE_UNAVAILABLE, &message);
    r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
    r.headers_mut().insert(GUARD_HEADER, HeaderValue::from_static("refused: connections"));
    r
}

/// An error in the shape of the client's API: Anthropic's for /v1/messages, OpenAI's for the
/// other /v1/ routes, Ollama's elsewhere, so official clients show the words.
fn refusal(path: &str, status: StatusCode, message: &str) -> Response {
    if path == "/v1/messages" {
        let kind = if status == StatusCode::SERVICE_UNAVAILABLE { "overloaded_error" } else { "invalid_request_error" };
        (status, axum::Json(serde_json::json!({ "type": "error", "error": { "type": kind, "message": message } }))).into_response()
    } else if path.starts_with("/v1/") {
        (status, axum::Json(serde_json::json!({ "error": { "message": message, "type": "server_error", "param": null, "code": null } }))).into_response()
    } else {
        ollama_error(status, message, &[])
    }
}

/// Serves until `stop`. The listener is bound by the caller (so a port in use is its error).
pub async fn serve(listener: tokio::net::TcpListener, guard: Arc<Guard>, stop: tokio_util::sync::CancellationToken) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(Mutex::new(Open::default()));
    let limits = guard.limits;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: pass, without spinning on it.
                    tracing::warn!("guard: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let local = {
            let settings = guard.settings.borrow();
            policy::may_administer(peer.ip(), &settings)
        };
        // Past every cap: closed now, an answer the client sees at once.
        let Some(ticket) = admit_connection(&open, &limits, peer.ip(), local) else { continue };
        // TCP_NODELAY both ways: streamed lines are small, and Nagle's algorithm with delayed
        // ACKs would hold each one for up to 40 ms.
        let _ = tcp.set_nodelay(true);
        let g = guard.clone();
        let limited = ticket.service == Service::Overflow;
        let svc = hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
            let g = g.clone();
            async move {
                let req = req.map(Body::new);
                Ok::<_, std::convert::Infallible>(if limited { overflow(g, peer, req).await } else { handle(g, peer, req).await })
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(if limited { limits.head_timeout.min(Duration::from_secs(5)) } else { limits.head_timeout }).max_buf_size(CLIENT_BUF).max_header_size(CLIENT_BUF).keep_alive(!limited);
        // max_header_size: the buffer alone let a 100 KB head through (its reads overshoot);
        // the head's own limit is what docs/guard.md promises, 431 past it.
        // No half_close: a read EOF means the client left, which cancels the request
        // upstream, as Go's net/http cancels Ollama's request context on it (a client that
        // half-closes after its request gets no answer from Ollama either).
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(client = %peer, "guard: connection: {e}");
            }
            drop(ticket);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::debug!("guard: streams still open after {DRAIN:?} are closed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 30: one address off the machine gets `per_client` connections, everyone off it
    /// together `share`, and this machine its own `share` that they cannot take (and the other
    /// way round); past that, `overflow` connections (health and board only), then none.
    #[test]
    fn connections_are_capped_per_client_and_per_side() {
        let limits = ConnLimits { total: 10, per_client: 2, share: 6, overflow: 2, head_timeout: Duration::from_secs(1) };
        let open = Arc::new(Mutex::new(Open::default()));
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        let take = |who: &str, local: bool| admit_connection(&open, &limits, ip(who), local);
        let mut held = Vec::new();
        // One LAN host: two, then overflow.
        held.extend((0..2).map(|_| take("192.168.1.9", false).expect("served")));
        assert!(held.iter().all(|t| t.service == Service::Full { local: false }));
        let over = [take("192.168.1.9", false).expect("overflow"), take("192.168.1.9", false).expect("overflow")];
        assert!(over.iter().all(|t| t.service == Service::Overflow));
        // The same host as ::ffff:a.b.c.d is the same host.
        assert_eq!(take("::ffff:192.168.1.9", false).map(|t| t.service), None, "overflow full too: closed at once");
        drop(over);
        // Other LAN hosts fill the remote share (6), then the local side still has its own.
        for h in 10..14 {
            held.push(take(&format!("192.168.1.{h}"), false).expect("served"));
        }
        assert_eq!(take("192.168.1.30", false).map(|t| t.service), Some(Service::Overflow), "remote share full");
        held.extend((0..4).map(|_| take("127.0.0.1", true).expect("local share")));
        assert!(held.iter().rev().take(4).all(|t| t.service == Service::Full { local: true }));
        // The total (10) is reached: even local is overflow now.
        assert_eq!(take("127.0.0.1", true).map(|t| t.service), Some(Service::Overflow));
        // Closing gives the places back, exactly.
        held.clear();
        let o = open.lock().expect("lock");
        assert_eq!((o.total, o.local, o.remote, o.per_client.len()), (0, 0, 0, 0));
    }

    async fn status(r: Option<Response>) -> Option<(u16, String)> {
        let r = r?;
        let s = r.status().as_u16();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.map(|b| String::from_utf8_lossy(&b).to_string()).unwrap_or_default();
        Some((s, body))
    }

    #[test]
    fn requests_go_on_when_warm_or_backed_off_and_wait_otherwise() {
        let pinned = ModelName::parse("gemma4:e2b-8k").ok();
        let at = |stage| State { stage, model: Some("gemma4:e2b-8k".into()), ..Default::default() };
        assert!(may_go_on(&at(Stage::Ready), &pinned) && warm(&at(Stage::Ready), &pinned));
        // Evicted again while the supervisor backs off: the client's request may load it, but
        // /healthz does not call that warm.
        assert!(may_go_on(&at(Stage::NotResident), &pinned) && !warm(&at(Stage::NotResident), &pinned));
        for stage in [Stage::Preloading, Stage::OllamaUnreachable, Stage::OllamaDown] {
            assert!(!may_go_on(&at(stage), &pinned), "{stage}");
        }
    }

    #[tokio::test]
    async fn keys_for_clients_off_this_machine() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("keys");
        // sha256("test") and sha256("root")
        std::fs::write(&file, "laptop client sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\nops admin sha256:4813494d137e1631bba301d5acab6e7bb7aa74ce1185d456565ef51d737677b2\n").expect("w");
        let settings = GuardSettings { keys_file: Some(file.clone()), ..GuardSettings::default() };
        let (_tx, rx) = watch::channel(State::default());
        let g = Guard::new(url::Url::parse("http://127.0.0.1:1/").expect("url"), settings.clone(), rx, Arc::new(Stats::default()));
        let lan: SocketAddr = "192.168.1.20:40000".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let h = |v: Option<&str>| {
            let mut m = HeaderMap::new();
            if let Some(v) = v {
                m.insert("authorization", HeaderValue::from_str(v).expect("hv"));
            }
            m
        };
        let check = |client, method: &'static str, path: &'static str, auth: Option<&'static str>| {
            let (g, settings) = (&g, &settings);
            async move { status(check_key(g, settings, client, method, path, &h(auth)).await.err()).await }
        };
        assert_eq!(check(local, "POST", "/api/pull", None).await, None, "loopback needs no key");
        let (s, body) = check(lan, "POST", "/api/generate", None).await.expect("refused");
        assert_eq!(s, 401);
        assert!(body.contains("\"error\":\"jetson-llmd guard: send a valid API key"), "Ollama's shape: {body}");
        let (s, body) = check(lan, "POST", "/v1/chat/completions", Some("Bearer nope")).await.expect("refused");
        assert_eq!(s, 401);
        assert!(body.contains("\"code\":\"invalid_api_key\""), "OpenAI's shape: {body}");
        assert_eq!(check(lan, "POST", "/api/generate", Some("Bearer test")).await, None);
        let (s, _) = check(lan, "POST", "/api/pull", Some("Bearer test")).await.expect("client key, admin route");
        assert_eq!(s, 403);
        assert_eq!(check(lan, "DELETE", "/api/delete", Some("Bearer root")).await, None);
        // The file changes: the next request sees it.
        std::fs::write(&file, "ops admin sha256:4813494d137e1631bba301d5acab6e7bb7aa74ce1185d456565ef51d737677b2\n# laptop removed\n").expect("w");
        let t = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&file).and_then(|f| f.set_modified(t)).expect("touch");
        assert_eq!(check(lan, "POST", "/api/generate", Some("Bearer test")).await.map(|r| r.0), Some(401));
        // Unreadable or broken: everyone off the machine is refused, loopback is not.
        std::fs::write(&file, "garbage\n").expect("w");
        std::fs::File::options().write(true).open(&file).and_then(|f| f.set_modified(t + Duration::from_secs(5))).expect("touch");
        assert_eq!(check(lan, "POST", "/api/generate", Some("Bearer root")).await.map(|r| r.0), Some(503));
        assert_eq!(check(local, "POST", "/api/generate", None).await, None);
    }
}
