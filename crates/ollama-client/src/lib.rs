//! A small, typed, async client for the parts of the Ollama HTTP API that jetson-llmd relies on.
//!
//! Every call has a timeout; every error names the URL it touched and keeps Ollama's own
//! `{"error": "..."}` text, including errors that arrive as a line in the middle of a stream.

pub mod host;
pub mod text;
pub mod types;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use url::Url;

pub use host::{is_loopback, parse_host, HostError, OllamaHost, DEFAULT_HOST};
pub use types::*;

/// What went wrong talking to Ollama.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach Ollama at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("Ollama at {url} did not answer within {}", humanize(*.timeout))]
    Timeout { url: String, timeout: Duration },
    #[error("Ollama at {url} answered HTTP {status}: {message}")]
    Api { url: String, status: u16, message: String },
    #[error("Ollama at {url} failed mid-stream: {message}")]
    Stream { url: String, message: String },
    #[error("unexpected answer from Ollama at {url}: {detail}")]
    Protocol { url: String, detail: String },
    #[error("Ollama at {url} sent {what} larger than {} KiB; refusing to read more", .cap / 1024)]
    TooLarge { url: String, what: &'static str, cap: usize },
    #[error("Ollama at {url} kept streaming without progress for {}; gave up", humanize(*.after))]
    Stalled { url: String, after: Duration },
}

/// Largest JSON answer read (a /api/tags with hundreds of models is well under 1 MiB).
pub const MAX_BODY: usize = 8 << 20;
/// Largest error body read; the rest is dropped.
pub const MAX_ERROR_BODY: usize = 64 << 10;
/// Longest line of a streamed (NDJSON) answer.
pub const MAX_LINE: usize = 1 << 20;

fn humanize(d: Duration) -> String {
    if d.as_secs() >= 1 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl Error {
    /// Connection refused/reset or a timeout: the server may come back, retrying helps.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Timeout { .. } | Error::Stalled { .. }) || matches!(self, Error::Api { status, .. } if *status == 503 || *status >= 502 && *status <= 504)
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Timeout { .. } | Error::Stalled { .. })
    }

    /// Ollama said the model does not exist locally (HTTP 404, or the scheduler's wording).
    pub fn is_model_not_found(&self) -> bool {
        match self {
            Error::Api { status: 404, .. } => true,
            Error::Api { message, .. } | Error::Stream { message, .. } => message.contains("not found") && message.contains("model"),
            _ => false,
        }
    }

    /// The load failed because memory could not be allocated (see [`looks_like_oom`]).
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            Error::Api { message, .. } | Error::Stream { message, .. } => looks_like_oom(message),
            _ => false,
        }
    }

    /// Ollama's own error text, or our description of the transport failure.
    pub fn message(&self) -> String {
        match self {
            Error::Api { message, .. } | Error::Stream { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// True for text Ollama classifies as an allocation failure: llm/status.go IsOutOfMemoryMessage
/// (v0.30.6, case-insensitive substrings), plus nvmap's own words on Jetson
/// (`NvMapMemAllocInternalTagged: ... error 12`).
pub fn looks_like_oom(text: &str) -> bool {
    const NEEDLES: [&str; 12] = [
        "out of memory",
        "out of device memory",
        "cudamalloc failed",
        "hipmalloc failed",
        "failed to allocate",
        "allocation failed",
        "not enough memory",
        "insufficient memory",
        "vk_error_out_of_device_memory",
        "erroroutofmemory",
        "nvmapmemallocinternaltagged",
        // The kernel's OOM killer ended the runner while it loaded (unified memory: host and GPU
        // are one pool): llm/llama_server.go waitUntilRunning wraps the signaled ExitError as
        // "llama-server process has terminated: signal: killed" (v0.30+; "llama runner" before).
        "process has terminated: signal: killed",
    ];
    let t = text.to_lowercase();
    NEEDLES.iter().any(|n| t.contains(n))
}

/// Timeouts for the three kinds of call.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Quick calls: version, tags, ps, show, delete.
    pub request: Duration,
    /// A load (cold load on a Jetson takes 30-70 s; Ollama's own OLLAMA_LOAD_TIMEOUT is 5 min).
    pub load: Duration,
    /// Longest silence allowed between two lines of a streamed answer (pull, create, generate).
    pub stream_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(3), request: Duration::from_secs(10), load: Duration::from_secs(360), stream_idle: Duration::from_secs(120) }
    }
}

/// A client bound to one Ollama server.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
    timeouts: Timeouts,
}

impl Client {
    pub fn new(base: Url, timeouts: Timeouts) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.stream_idle)
            // Ollama on loopback: never route through a proxy from the environment.
            .no_proxy()
            // Nor anywhere a redirect points: Ollama never redirects its API, so one means the
            // port holds something else, and following it would report another server's answers.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let mut base = base;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        Client { base, http, timeouts }
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    fn map_err(&self, url: &Url, e: reqwest::Error, timeout: Duration) -> Error {
        let url = url.to_string();
        if e.is_timeout() {
            return Error::Timeout { url, timeout };
        }
        if e.is_decode() {
            return Error::Protocol { url, detail: chain(&e) };
        }
        Error::Unreachable { url, detail: chain(&e) }
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &Url, timeout: Option<Duration>) -> Result<reqwest::Response, Error> {
        let req = match timeout {
            Some(t) => req.timeout(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| self.map_err(url, e, timeout.unwrap_or(self.timeouts.stream_idle)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = match read_capped(resp, MAX_ERROR_BODY).await {
            Ok(b) | Err(Capped::TooLarge(b)) => b,
            Err(Capped::Io(_)) => Vec::new(),
        };
        Err(Error::Api { url: url.to_string(), status: status.as_u16(), message: error_text(&String::from_utf8_lossy(&body)) })
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let url = self.url(path);
        let resp = self.send(self.http.get(url.clone()), &url, Some(self.timeouts.request)).await?;
        self.decode(resp, &url, self.timeouts.request).await
    }

    async fn post_json<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B, timeout: Duration) -> Result<T, Error> {
        let url = self.url(path);
        let resp = self.send(self.http.post(url.clone()).json(body), &url, Some(timeout)).await?;
        self.decode(resp, &url, timeout).await
    }

    async fn decode<T: DeserializeOwned>(&self, resp: reqwest::Response, url: &Url, timeout: Duration) -> Result<T, Error> {
        let bytes = match read_capped(resp, MAX_BODY).await {
            Ok(b) => b,
            Err(Capped::TooLarge(_)) => return Err(Error::TooLarge { url: url.to_string(), what: "an answer", cap: MAX_BODY }),
            Err(Capped::Io(e)) => return Err(self.map_err(url, e, timeout)),
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol { url: url.to_string(), detail: format!("{e} in {:?}", text::clip(&String::from_utf8_lossy(&bytes[..bytes.len().min(200)]), 200)) })
    }

    /// Reads an NDJSON stream, calling `on_line` for each decoded line; returns the last one.
    /// A line with an `error` key ends the stream with [`Error::Stream`]. Every line is capped
    /// ([`MAX_LINE`]); `progress` says whether a line moved things forward, and a stream that goes
    /// `stream_idle` without progress is cut ([`Error::Stalled`]): a peer that repeats itself
    /// forever is as stuck as one that says nothing.
    async fn post_stream<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B, mut progress: impl FnMut(&T) -> bool, mut on_line: impl FnMut(&T)) -> Result<T, Error> {
        let url = self.url(path);
        let resp = self.send(self.http.post(url.clone()).json(body), &url, None).await?;
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut last: Option<T> = None;
        let mut last_progress = tokio::time::Instant::now();
        loop {
            let chunk = stream.next().await;
            let eof = chunk.is_none();
            if let Some(chunk) = chunk {
                let chunk = chunk.map_err(|e| self.map_err(&url, e, self.timeouts.stream_idle))?;
                buf.extend_from_slice(&chunk);
            }
            while let Some(pos) = buf.iter().position(|&b| b == b'\n').or(if eof && !buf.is_empty() { Some(buf.len()) } else { None }) {
                if pos > MAX_LINE {
                    return Err(Error::TooLarge { url: url.to_string(), what: "a stream line", cap: MAX_LINE });
                }
                let line: Vec<u8> = buf.drain(..pos.min(buf.len())).collect();
                if !buf.is_empty() {
                    buf.remove(0);
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                let bad = |e: serde_json::Error| Error::Protocol { url: url.to_string(), detail: format!("{e} in stream line {:?}", text::clip(text, 200)) };
                let value: serde_json::Value = serde_json::from_str(text).map_err(bad)?;
                if let Some(err) = value.get("error") {
                    let message = err.as_str().map(str::to_string).unwrap_or_else(|| err.to_string());
                    return Err(Error::Stream { url: url.to_string(), message: text::clip(&message, text::MAX_TEXT) });
                }
                let item: T = serde_json::from_value(value).map_err(bad)?;
                if progress(&item) {
                    last_progress = tokio::time::Instant::now();
                } else if last_progress.elapsed() > self.timeouts.stream_idle {
                    return Err(Error::Stalled { url: url.to_string(), after: self.timeouts.stream_idle });
                }
                on_line(&item);
                last = Some(item);
            }
            if buf.len() > MAX_LINE {
                return Err(Error::TooLarge { url: url.to_string(), what: "a stream line", cap: MAX_LINE });
            }
            if eof {
                break;
            }
        }
        last.ok_or_else(|| Error::Protocol { url: url.to_string(), detail: "the stream ended before any line".into() })
    }

    /// GET /api/version.
    pub async fn version(&self) -> Result<VersionResponse, Error> {
        let mut v: VersionResponse = self.get_json("api/version").await?;
        v.version = text::clip(&v.version, 64);
        Ok(v)
    }

    /// GET /api/tags: models on disk.
    pub async fn tags(&self) -> Result<TagsResponse, Error> {
        self.get_json("api/tags").await
    }

    /// GET /api/ps: models in memory.
    pub async fn ps(&self) -> Result<PsResponse, Error> {
        self.get_json("api/ps").await
    }

    /// POST /api/show.
    pub async fn show(&self, model: &str) -> Result<ShowResponse, Error> {
        self.post_json("api/show", &serde_json::json!({ "model": model }), self.timeouts.request).await
    }

    /// Loads `model` without generating (no prompt, no options) and sets its keep-alive.
    /// Ollama answers `done_reason: "load"` (or `"unload"` for [`KeepAlive::Unload`]).
    pub async fn load(&self, model: &str, keep_alive: KeepAlive) -> Result<GenerateResponse, Error> {
        let req = GenerateRequest { model: model.to_string(), keep_alive: Some(keep_alive), ..Default::default() };
        self.post_json("api/generate", &req, self.timeouts.load).await
    }

    /// Streams a generation, calling `on_chunk` for every piece; returns the final line with timings.
    pub async fn generate(&self, req: &GenerateRequest, on_chunk: impl FnMut(&GenerateResponse)) -> Result<GenerateResponse, Error> {
        let mut req = req.clone();
        req.stream = Some(true);
        self.post_stream("api/generate", &req, |_| true, on_chunk).await
    }

    /// POST /api/create from a base model plus parameters; streams status lines until "success".
    pub async fn create(&self, req: &CreateRequest, on_progress: impl FnMut(&ProgressLine)) -> Result<ProgressLine, Error> {
        let mut p = Progress::default();
        let last: ProgressLine = self.post_stream("api/create", req, |l| p.advanced(l), on_progress).await?;
        self.expect_success(last, "api/create")
    }

    /// POST /api/pull; streams progress until "success".
    pub async fn pull(&self, model: &str, on_progress: impl FnMut(&ProgressLine)) -> Result<ProgressLine, Error> {
        let mut p = Progress::default();
        let last: ProgressLine = self.post_stream("api/pull", &serde_json::json!({ "model": model }), |l| p.advanced(l), on_progress).await?;
        self.expect_success(last, "api/pull")
    }

    fn expect_success(&self, last: ProgressLine, path: &str) -> Result<ProgressLine, Error> {
        if last.status == "success" {
            Ok(last)
        } else {
            Err(Error::Stream { url: self.url(path).to_string(), message: format!("stream ended at {:?} without \"success\"", text::clip(&last.status, 200)) })
        }
    }

    /// DELETE /api/delete.
    pub async fn delete(&self, model: &str) -> Result<(), Error> {
        let url = self.url("api/delete");
        self.send(self.http.delete(url.clone()).json(&serde_json::json!({ "model": model })), &url, Some(self.timeouts.request)).await.map(|_| ())
    }
}

/// A pull or create moves forward when a status appears for the first time or a download's
/// `completed` grows (up to its `total`). Both sets are bounded, so an endless stream of
/// ever-new statuses stops counting as progress.
#[derive(Default)]
struct Progress {
    statuses: std::collections::HashSet<String>,
    completed: std::collections::HashMap<String, u64>,
}

impl Progress {
    const MAX_KEYS: usize = 1000;

    fn advanced(&mut self, l: &ProgressLine) -> bool {
        let mut moved = false;
        if self.statuses.len() < Self::MAX_KEYS && !self.statuses.contains(&l.status) {
            self.statuses.insert(l.status.chars().take(200).collect());
            moved = true;
        }
        if let (Some(c), Some(t)) = (l.completed, l.total) {
            let key = l.digest.clone().unwrap_or_default();
            let known = self.completed.get(&key).copied();
            if c <= t && known.is_none_or(|k| c > k) && (known.is_some() || self.completed.len() < Self::MAX_KEYS) {
                self.completed.insert(key, c);
                moved = true;
            }
        }
        moved
    }
}

enum Capped {
    TooLarge(Vec<u8>),
    Io(reqwest::Error),
}

/// Reads a body up to `cap` bytes; past it, what was read so far as [`Capped::TooLarge`].
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, Capped> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Capped::Io)? {
        if out.len() + chunk.len() > cap {
            out.extend_from_slice(&chunk[..cap - out.len()]);
            return Err(Capped::TooLarge(out));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Ollama's error body is `{"error":"..."}`; anything else is passed through, shortened.
/// Either way the text is cleaned of control characters: it ends up on terminals and in the journal.
fn error_text(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        if let Some(e) = v.get("error") {
            return text::clip(&e.as_str().map(str::to_string).unwrap_or_else(|| e.to_string()), text::MAX_TEXT);
        }
    }
    let t = body.trim();
    if t.is_empty() {
        "(empty body)".to_string()
    } else {
        text::clip(t, 300)
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_reads_ollama_error_bodies() {
        assert_eq!(error_text(r#"{"error":"model 'x' not found"}"#), "model 'x' not found");
        assert_eq!(error_text("404 page not found"), "404 page not found");
        assert_eq!(error_text(""), "(empty body)");
    }

    #[test]
    fn oom_classification() {
        assert!(looks_like_oom("llama-server process has terminated: cudaMalloc failed: out of memory"));
        assert!(looks_like_oom("NvMapMemAllocInternalTagged: 1075072515 error 12"));
        assert!(!looks_like_oom("model 'x' not found"));
        assert!(looks_like_oom("llama-server reported out-of-memory during startup: CUDA error: Out Of Memory"));
        assert!(looks_like_oom("ggml_vulkan: ErrorOutOfMemory"));
        // The kernel's OOM killer (Ollama 0.34.1 on an Orin Nano 8 GB, ollama issue 18396).
        assert!(looks_like_oom("llama-server process has terminated: signal: killed"));
        assert!(looks_like_oom("llama runner process has terminated: signal: killed"));
        assert!(!looks_like_oom("llama-server process has terminated: exit status 2"));
        let e = Error::Api { url: "u".into(), status: 500, message: "llama runner process has terminated: cudaMalloc failed: out of memory".into() };
        assert!(e.is_out_of_memory());
        assert!(!e.is_model_not_found());
        let nf = Error::Api { url: "u".into(), status: 404, message: "model 'x' not found".into() };
        assert!(nf.is_model_not_found());
        let sched = Error::Api { url: "u".into(), status: 500, message: "model \"x\" not found, try pulling it first".into() };
        assert!(sched.is_model_not_found());
    }
}
