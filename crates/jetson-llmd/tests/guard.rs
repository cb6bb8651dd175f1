//! The guard in front of the emulator, over real sockets on 127.0.0.1:0: the request shapes of
//! real clients (chat with options.num_ctx, keep_alive "5m" or 0, a second model) leave the
//! pinned model loaded with no reload (the emulator counts loads), streams pass chunk by
//! chunk, and requests wait while the model is warming.

use fake_ollama::{spawn, Config, Handle};
use jetson_llmd::conf::config::{GuardSettings, OptionsPolicy};
use jetson_llmd::guard::{self, Guard, Stats};
use jetson_llmd::records::state::State;
use jetson_llmd::records::Stage;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const PINNED: &str = "gemma4:e2b-8k";

struct Rig {
    emu: Handle,
    url: String,
    state: watch::Sender<State>,
    stats: Arc<Stats>,
    http: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
}

fn ready() -> State {
    State { stage: Stage::Ready, model: Some(PINNED.into()), status: "ready: gemma4:e2b-8k warm on the GPU (100%)".into(), ..Default::default() }
}

async fn rig(settings: GuardSettings, initial: State) -> Rig {
    rig_limited(settings, initial, guard::ConnLimits::default()).await
}

async fn rig_limited(settings: GuardSettings, initial: State, limits: guard::ConnLimits) -> Rig {
    let emu = spawn(Config::orin_nano(0.01), "127.0.0.1:0".parse().expect("addr")).await.expect("emulator");
    let http = reqwest::Client::new();
    // The supervisor's preload: the seed's model created from its base, pinned forever.
    let api = ollama_client::Client::new(ollama_client::parse_host(&emu.url()).expect("url").url, Default::default());
    let pinned = jetson_llmd::conf::ModelName::parse(PINNED).expect("name");
    jetson_llmd::ollama::warm::preload(&api, &jetson_llmd::conf::Settings::default(), &pinned, &jetson_llmd::host::memory::NoRelief).await.expect("preload");
    let (tx, rx) = watch::channel(initial);
    let stats = Arc::new(Stats::default());
    let mut g = Guard::new(url::Url::parse(&emu.url()).expect("url"), settings, rx, stats.clone());
    g.limits = limits;
    let g = Arc::new(g);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(guard::serve(listener, g, stop.clone()));
    Rig { emu, url, state: tx, stats, http, _stop: stop.drop_guard() }
}

impl Rig {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http.post(format!("{}{path}", self.url)).json(&body).send().await.expect("send")
    }

    fn loads(&self) -> u64 {
        self.emu.emu.counters().loads
    }

    async fn pinned_forever(&self) -> bool {
        let api = ollama_client::Client::new(ollama_client::parse_host(&self.emu.url()).expect("url").url, Default::default());
        let ps = api.ps().await.expect("ps");
        ps.models.len() == 1 && ps.models[0].name == PINNED && ps.models[0].pinned_forever()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_shapes_leave_the_pinned_model_loaded_without_a_reload() {
    let r = rig(GuardSettings::default(), ready()).await;
    let loads = r.loads();
    assert!(r.pinned_forever().await);

    // ollama-python / LangChain style: chat with options.num_ctx and keep_alive "5m".
    let resp = r.post("/api/chat", json!({"model": PINNED, "messages": [{"role": "user", "content": "hi"}], "stream": false, "options": {"num_ctx": 2048, "temperature": 0.1}, "keep_alive": "5m"})).await;
    assert_eq!(resp.status(), 200);
    let note = resp.headers().get("x-jetson-llmd-guard").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(note.contains("dropped options num_ctx") && note.contains("removed keep_alive"), "{note}");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["done"], true);
    // An explicit unload (keep_alive 0), as `ollama stop` sends it.
    let resp = r.post("/api/generate", json!({"model": PINNED, "keep_alive": 0})).await;
    assert_eq!(resp.status(), 200);
    // Another model: refused in Ollama's error shape, nothing evicted.
    let resp = r.post("/api/generate", json!({"model": "llama3.2:3b", "prompt": "hi"})).await;
    assert_eq!(resp.status(), 409);
    let e: Value = resp.json().await.expect("json");
    assert!(e["error"].as_str().is_some_and(|m| m.contains(PINNED) && m.contains("jetson-llmd switch")), "{e}");
    // OpenAI-compatible clients (the openai package's shapes), streamed and not.
    let resp = r.post("/v1/chat/completions", json!({"model": PINNED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    let resp = r.post("/v1/chat/completions", json!({"model": PINNED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": true})).await;
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    let sse = resp.text().await.expect("sse");
    let events: Vec<&str> = sse.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events.len() >= 9 && events.last() == Some(&"data: [DONE]"), "{sse}");
    let models: Value = r.http.get(format!("{}/v1/models", r.url)).send().await.expect("models").json().await.expect("json");
    assert!(models["data"].as_array().is_some_and(|d| d.iter().any(|m| m["id"] == PINNED)), "{models}");
    assert_eq!(r.post("/v1/chat/completions", json!({"model": "qwen3:4b", "messages": []})).await.status(), 409);
    // The legacy completions endpoint, streamed and not, and OpenAI embeddings.
    let v: Value = r.post("/v1/completions", json!({"model": PINNED, "prompt": "hi", "max_tokens": 4})).await.json().await.expect("json");
    assert_eq!(v["object"], "text_completion", "{v}");
    let sse = r.post("/v1/completions", json!({"model": PINNED, "prompt": "hi", "max_tokens": 4, "stream": true})).await.text().await.expect("sse");
    assert!(sse.trim_end().ends_with("data: [DONE]") && sse.matches("text_completion").count() == 5, "{sse}");
    let v: Value = r.post("/v1/embeddings", json!({"model": PINNED, "input": ["a", "b"]})).await.json().await.expect("json");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(r.post("/v1/completions", json!({"model": "qwen3:4b", "prompt": "hi"})).await.status(), 409);
    assert_eq!(r.post("/v1/embeddings", json!({"model": "qwen3:4b", "input": "hi"})).await.status(), 409);

    assert_eq!(r.loads(), loads, "no load and no reload happened");
    assert_eq!(r.emu.emu.counters().reloads_for_options, 0);
    assert!(r.pinned_forever().await, "still loaded, still pinned");
    let counts: std::collections::BTreeMap<_, _> = r.stats.snapshot().into_iter().collect();
    assert_eq!(counts["other-model"], 4);
    assert_eq!(counts["reload-option-dropped"], 1);
    assert_eq!(counts["keep-alive-removed"], 2);

    // The same chat sent straight to Ollama reloads the model: what the guard prevented.
    let direct = r.http.post(format!("{}/api/chat", r.emu.url())).json(&json!({"model": PINNED, "messages": [{"role": "user", "content": "hi"}], "stream": false, "options": {"num_ctx": 2048}})).send().await.expect("direct");
    assert_eq!(direct.status(), 200);
    assert!(r.loads() > loads, "without the guard, num_ctx reloads the pinned model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pass_chunk_by_chunk_and_reads_pass_unchanged() {
    let r = rig(GuardSettings::default(), ready()).await;
    for path in ["/api/version", "/api/tags", "/api/ps", "/"] {
        let direct = r.http.get(format!("{}{path}", r.emu.url())).send().await.expect("direct");
        let via = r.http.get(format!("{}{path}", r.url)).send().await.expect("via");
        assert_eq!(direct.status(), via.status(), "{path}");
        assert_eq!(direct.bytes().await.expect("b"), via.bytes().await.expect("b"), "{path}");
    }
    let mut resp = r.post("/api/generate", json!({"model": PINNED, "prompt": "count", "options": {"num_predict": 24}})).await;
    assert_eq!(resp.status(), 200);
    let mut chunks = Vec::new();
    while let Some(c) = resp.chunk().await.expect("chunk") {
        chunks.push(c);
    }
    let lines: Vec<Value> = chunks.iter().flat_map(|c| c.split(|b| *b == b'\n')).filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).expect("ndjson")).collect();
    assert!(lines.len() > 10, "{} lines", lines.len());
    assert!(chunks.len() > 1, "arrived in {} chunks", chunks.len());
    assert_eq!(lines.last().expect("last")["done"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_while_the_model_warms_and_healthz_tells() {
    let warming = State { stage: Stage::Preloading, model: Some(PINNED.into()), status: "loading gemma4:e2b-8k".into(), ..Default::default() };
    let r = rig(GuardSettings { ready_wait: Duration::from_secs(5), ..GuardSettings::default() }, warming.clone()).await;
    let h = r.http.get(format!("{}/healthz", r.url)).send().await.expect("healthz");
    assert_eq!(h.status(), 503);
    assert!(h.text().await.expect("t").starts_with("preloading: loading"));
    let url = r.url.clone();
    let http = r.http.clone();
    let pending = tokio::spawn(async move { http.post(format!("{url}/api/generate")).json(&json!({"model": PINNED, "prompt": "hi", "stream": false})).send().await.expect("send") });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "held while warming");
    r.state.send_replace(ready());
    let resp = pending.await.expect("join");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("x-jetson-llmd-stage").and_then(|v| v.to_str().ok()), Some("waited for warm"));
    assert_eq!(r.http.get(format!("{}/healthz", r.url)).send().await.expect("healthz").status(), 200);

    // Never warm within ready_wait: 503 with the stage.
    let r2 = rig(GuardSettings { ready_wait: Duration::from_millis(200), ..GuardSettings::default() }, warming).await;
    let resp = r2.post("/api/chat", json!({"model": PINNED, "messages": []})).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers().get("x-jetson-llmd-stage").and_then(|v| v.to_str().ok()), Some("preloading"));
    let e: Value = resp.json().await.expect("json");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("not warm yet")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_options_are_refused_and_admin_calls_from_loopback_pass() {
    let r = rig(GuardSettings { options: OptionsPolicy::Strict, ..GuardSettings::default() }, ready()).await;
    let loads = r.loads();
    let resp = r.post("/api/chat", json!({"model": PINNED, "messages": [], "options": {"num_ctx": 32768}})).await;
    assert_eq!(resp.status(), 409);
    assert_eq!(r.loads(), loads);
    // Loopback may administer: the delete reaches Ollama (its 404 for an unknown model, not the
    // guard's 403).
    assert_eq!(r.post("/api/show", json!({"model": PINNED})).await.status(), 200);
    let e: Value = r.post("/api/embed", json!({"model": PINNED, "input": ["a", "b"]})).await.json().await.expect("embed");
    assert_eq!(e["embeddings"].as_array().map(Vec::len), Some(2), "{e}");
    // A pull streams its progress through the guard (from loopback).
    let pull = r.post("/api/pull", json!({"model": "llama3.2:3b"})).await;
    assert_eq!(pull.status(), 200);
    let text = pull.text().await.expect("pull");
    assert!(text.lines().last().is_some_and(|l| l.contains("success")), "{text}");
    let resp = r.http.delete(format!("{}/api/delete", r.url)).json(&json!({"model": "no-such:model"})).send().await.expect("delete");
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_cancels_the_generation_upstream() {
    let r = rig(GuardSettings::default(), ready()).await;
    let mut resp = r.post("/api/generate", json!({"model": PINNED, "prompt": "long", "options": {"num_predict": 4000}})).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.chunk().await.expect("chunk").is_some(), "the stream started");
    drop(resp);
    let t = std::time::Instant::now();
    while r.emu.emu.counters().cancelled == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "Ollama never saw the client leave");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(r.pinned_forever().await, "and the model stays");
    // A stream read to the end is not a cancellation.
    let before = r.emu.emu.counters().cancelled;
    let resp = r.post("/api/generate", json!({"model": PINNED, "prompt": "short", "options": {"num_predict": 5}})).await;
    let _ = resp.bytes().await.expect("body");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.emu.emu.counters().cancelled, before);
}

/// A client that stops reading: the guard must not buffer the stream. An upstream that would
/// send without end counts what it could hand over; with backpressure that stays within the
/// socket buffers, without it the guard would read at loopback speed (gigabytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_holds_the_upstream_back_instead_of_filling_memory() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let produced = Arc::new(AtomicU64::new(0));
    let p = produced.clone();
    let app = axum::Router::new().route(
        "/api/tags",
        axum::routing::get(move || {
            let p = p.clone();
            async move {
                let chunk = axum::body::Bytes::from(vec![b'x'; 64 << 10]);
                let s = futures_util::StreamExt::map(futures_util::stream::repeat(chunk), move |c| {
                    p.fetch_add(c.len() as u64, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(c)
                });
                axum::body::Body::from_stream(s)
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    let (_tx, rx) = watch::channel(ready());
    let g = Arc::new(Guard::new(url::Url::parse(&upstream).expect("url"), GuardSettings::default(), rx, Arc::new(Stats::default())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/api/tags", listener.local_addr().expect("addr"));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(guard::serve(listener, g, stop.clone()));

    let mut resp = reqwest::get(&url).await.expect("get");
    assert!(resp.chunk().await.expect("chunk").is_some());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = produced.load(Ordering::SeqCst);
    assert!(held < 64 << 20, "{} MiB left the upstream while the client read nothing", held >> 20);
    // Reading resumes the flow.
    let mut got = 0u64;
    while got < (held + (8 << 20)) {
        got += resp.chunk().await.expect("chunk").map_or(0, |c| c.len() as u64);
    }
    assert!(produced.load(Ordering::SeqCst) > held);
    drop(resp);
    stop.cancel();
}

/// Bodies the guard holds to read are bounded across connections and in time: many unfinished
/// large uploads get 503 (with Retry-After) once the budget is taken, a trickled body 408, a
/// declared size over the cap 413, and the budget comes back when they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded_across_connections_and_in_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let settings = GuardSettings { body_budget_mib: 1, body_timeout: Duration::from_secs(2), ..GuardSettings::default() };
    let r = rig(settings, ready()).await;
    let addr = r.url.trim_start_matches("http://").to_string();
    let head = |len: usize| format!("POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n");
    // Three connections each send 400 KiB of a 900 KiB body and stop: the third is over 1 MiB.
    let mut held = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        s.write_all(head(900 << 10).as_bytes()).await.expect("head");
        s.write_all(&vec![b' '; 400 << 10]).await.expect("part");
        held.push(s);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut buf = vec![0u8; 4096];
    let third = held.last_mut().expect("third");
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await.expect("answered at once").expect("read");
    answers.push(String::from_utf8_lossy(&buf[..n]).to_string());
    assert!(answers[0].starts_with("HTTP/1.1 503") && answers[0].to_ascii_lowercase().contains("retry-after: 1"), "{}", answers[0]);
    assert!(answers[0].contains("already being read"), "{}", answers[0]);
    // The first two never finish: 408 once body_timeout passes, and their budget comes back.
    for s in held.iter_mut().take(2) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("answered").expect("read");
        let a = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(a.starts_with("HTTP/1.1 408"), "{a}");
    }
    drop(held);
    // Over the cap by its declared size: 413 before a byte of it is read.
    let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    s.write_all(head(2 << 20).as_bytes()).await.expect("head");
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("answered").expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&buf[..n]));
    // The budget is whole again: a normal request passes.
    let resp = r.post("/api/generate", json!({"model": PINNED, "prompt": "hi", "stream": false})).await;
    assert_eq!(resp.status(), 200);
    let counts: std::collections::BTreeMap<_, _> = r.stats.snapshot().into_iter().collect();
    assert_eq!(counts["body-refused"], 4);
}

/// A chunked body that is not valid chunked encoding is a bad request (400), not "too large".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_a_bad_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = rig(GuardSettings::default(), ready()).await;
    let addr = r.url.trim_start_matches("http://").to_string();
    for bad in ["zz\r\n{}\r\n0\r\n\r\n", "-1\r\n{}\r\n0\r\n\r\n"] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        s.write_all(format!("POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{bad}").as_bytes()).await.expect("w");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("answered").expect("read");
        let a = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(a.starts_with("HTTP/1.1 400"), "{bad:?}: {a}");
    }
}

/// Polls the guard's queues until `f` holds (at most 10 s).
async fn until(stats: &Stats, what: &str, f: impl Fn(&[jetson_llmd::guard::admission::ClassStats]) -> bool) {
    for _ in 0..2000 {
        if f(&stats.queues()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what}: {:?}", stats.queues());
}

fn class_of<'a>(q: &'a [jetson_llmd::guard::admission::ClassStats], name: &str) -> &'a jetson_llmd::guard::admission::ClassStats {
    q.iter().find(|c| c.class == name).expect("class")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classes_put_a_chat_before_a_batch_backlog_and_bound_the_queue() {
    use jetson_llmd::conf::config::ClassSettings;
    let settings = GuardSettings {
        parallel: 1,
        class_header: Some("x-client-class".into()),
        classes: vec![ClassSettings { priority: 10, ..ClassSettings::named("chat") }, ClassSettings { priority: -10, max_queue: 3, ..ClassSettings::named("batch") }],
        ..GuardSettings::default()
    };
    let r = Arc::new(rig(settings, ready()).await);
    let done = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let send = |label: &str, class: &'static str, num_predict: u32| {
        let (r, done, label) = (r.clone(), done.clone(), label.to_string());
        tokio::spawn(async move {
            let resp = r.http.post(format!("{}/api/generate", r.url)).header("x-client-class", class).json(&json!({"model": PINNED, "prompt": "hi", "stream": false, "options": {"num_predict": num_predict}})).send().await.expect("send");
            let status = resp.status().as_u16();
            let queued = resp.headers().get("x-jetson-llmd-queued").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<f64>().ok());
            let class = resp.headers().get("x-jetson-llmd-class").and_then(|v| v.to_str().ok()).map(str::to_string);
            let _ = resp.bytes().await;
            done.lock().expect("lock").push(label);
            (status, queued, class)
        })
    };
    // A long batch request holds Ollama's one slot; three more wait behind it.
    let first = send("batch-0", "batch", 400);
    until(&r.stats, "the first batch request runs", |q| class_of(q, "batch").running == 1).await;
    let mut queued = Vec::new();
    for i in 1..=3 {
        queued.push(send(&format!("batch-{i}"), "batch", 20));
        until(&r.stats, "one more batch request waits", |q| class_of(q, "batch").queued == i).await;
    }
    // The batch queue is full: the next one is told at once, in OpenAI's shape for /v1/.
    let full = r.http.post(format!("{}/v1/chat/completions", r.url)).header("x-client-class", "batch").json(&json!({"model": PINNED, "messages": [{"role": "user", "content": "hi"}]})).send().await.expect("send");
    assert_eq!(full.status(), 429);
    assert_eq!(full.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    let e: Value = full.json().await.expect("json");
    assert_eq!(e["error"]["code"], "rate_limit_exceeded", "{e}");
    // A person's chat arrives last and goes next.
    let chat = send("chat", "chat", 10);
    until(&r.stats, "the chat waits", |q| class_of(q, "chat").queued == 1).await;
    let (status, _, _) = first.await.expect("task");
    assert_eq!(status, 200);
    let (status, waited, class) = chat.await.expect("task");
    assert_eq!(status, 200);
    assert!(waited.is_some_and(|w| w > 0.0), "the time it waited is said: {waited:?}");
    assert_eq!(class.as_deref(), Some("chat"));
    for q in queued {
        assert_eq!(q.await.expect("task").0, 200);
    }
    assert_eq!(*done.lock().expect("lock"), ["batch-0", "chat", "batch-1", "batch-2", "batch-3"], "the chat overtook the backlog; the batch kept its order");
    let q = r.stats.queues();
    assert_eq!((class_of(&q, "batch").admitted, class_of(&q, "batch").refused_full, class_of(&q, "chat").admitted), (4, 1, 1));

    // A client that gives up while waiting leaves the queue at once.
    let long = send("long", "batch", 400);
    until(&r.stats, "a batch request runs", |q| class_of(q, "batch").running == 1).await;
    let gone = r.http.post(format!("{}/api/generate", r.url)).header("x-client-class", "batch").timeout(Duration::from_millis(100)).json(&json!({"model": PINNED, "prompt": "hi", "stream": false})).send().await;
    assert!(gone.is_err(), "gave up");
    until(&r.stats, "the queue is empty again", |q| class_of(q, "batch").queued == 0 && class_of(q, "batch").left == 1).await;
    assert_eq!(long.await.expect("task").0, 200);
    assert_eq!(r.loads(), 1, "no reload through all of it");
    // The board endpoint says the same, for `status` and fleet tools.
    let b: Value = r.http.get(format!("{}/jetson-llmd/board", r.url)).send().await.expect("board").json().await.expect("json");
    assert_eq!((&b["model"], &b["ready"], &b["slots"]), (&json!(PINNED), &json!(true), &json!(1)), "{b}");
    let names: Vec<&str> = b["queues"].as_array().expect("queues").iter().filter_map(|q| q["class"].as_str()).collect();
    assert_eq!(names, ["chat", "batch", "default"], "{b}");
    assert_eq!(b["queues"][1]["left"], 1, "{b}");
}

/// Issue 30: through the guard, from this machine, the pinned model and its base can be neither
/// deleted nor redefined; afterwards both still exist, a chat runs on the pinned model without
/// a load, and it still has its 8192 context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pinned_model_and_its_base_cannot_be_deleted_or_redefined() {
    let r = rig(jetson_llmd::conf::Settings::default().guard, ready()).await;
    let loads = r.loads();
    let attempts = [
        ("DELETE", "/api/delete", json!({"model": PINNED})),
        ("DELETE", "/api/delete", json!({"model": "gemma4:e2b-it-qat"})),
        ("POST", "/api/create", json!({"model": PINNED, "from": "gemma4:e2b-it-qat", "parameters": {"num_ctx": 2048}})),
        ("POST", "/api/copy", json!({"source": "gemma4:e2b-it-qat", "destination": PINNED})),
        ("POST", "/api/pull", json!({"model": "gemma4:e2b-it-qat"})),
    ];
    for (method, path, body) in attempts {
        let req = if method == "DELETE" { r.http.delete(format!("{}{path}", r.url)) } else { r.http.post(format!("{}{path}", r.url)) };
        let resp = req.json(&body).send().await.expect("send");
        assert_eq!(resp.status(), 403, "{method} {path} {body}");
        assert_eq!(resp.headers().get("x-jetson-llmd-guard").and_then(|v| v.to_str().ok()), Some("refused: pinned-protected"));
        let e: Value = resp.json().await.expect("json");
        assert!(e["error"].as_str().is_some_and(|m| m.contains("jetson-llmd switch")), "Ollama's error shape with what to do: {e}");
    }
    let tags: Value = r.http.get(format!("{}/api/tags", r.url)).send().await.expect("tags").json().await.expect("json");
    for m in [PINNED, "gemma4:e2b-it-qat"] {
        assert!(tags["models"].as_array().is_some_and(|a| a.iter().any(|x| x["name"] == m)), "{m} still exists: {tags}");
    }
    let chat = r.post("/api/chat", json!({"model": PINNED, "messages": [{"role": "user", "content": "hi"}], "stream": false})).await;
    assert_eq!(chat.status(), 200);
    assert_eq!(r.loads(), loads, "no reload");
    let ps: Value = r.http.get(format!("{}/api/ps", r.url)).send().await.expect("ps").json().await.expect("json");
    assert_eq!(ps["models"][0]["context_length"], 8192, "{ps}");
    assert_eq!(r.stats.snapshot().iter().find(|(k, _)| *k == "pinned-protected").map(|(_, n)| *n), Some(5));
}

/// Issue 30: a guard that does not know the pin yet lets nothing load (here another model, with
/// the models policy "any").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_loads_through_a_guard_that_does_not_know_the_pin() {
    let r = rig(GuardSettings { models: jetson_llmd::conf::config::ModelsPolicy::Any, ..GuardSettings::default() }, State::default()).await;
    let loads = r.loads();
    let resp = r.post("/api/generate", json!({"model": "gemma3:4b", "prompt": "hi", "stream": false})).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    assert_eq!(r.loads(), loads);
    // Once it knows (the supervisor publishes model.conf's model before serving), another model
    // is decided on by the policy as usual.
    r.state.send_replace(State { model: Some(PINNED.into()), ..Default::default() });
    let resp = r.post("/api/generate", json!({"model": "gemma3:4b", "prompt": "hi", "stream": false})).await;
    assert_eq!(resp.status(), 200, "models = any");
}

/// Issue 30: idle keep-alive connections from one side fill its share; a new connection still
/// gets /healthz answered, and a request a 503 at once (not a 30-s wait in the backlog); past the
/// overflow places a connection is closed at once; the idle ones are closed after the head
/// timeout, and then requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = guard::ConnLimits { total: 16, per_client: 4, share: 8, overflow: 2, head_timeout: Duration::from_secs(2) };
    let r = rig_limited(GuardSettings::default(), ready(), limits).await;
    let addr = r.url.trim_start_matches("http://").to_string();
    // Eight connections that send one request each and then idle, keep-alive.
    let mut idle = Vec::new();
    for _ in 0..8 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        c.write_all(b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("w");
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).await.expect("r");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "served while there is room");
        idle.push(c);
    }
    let t = std::time::Instant::now();
    let health = r.http.get(format!("{}/healthz", r.url)).send().await.expect("healthz");
    assert_eq!(health.status(), 200, "a health probe is answered with every place taken");
    let gen = r.post("/api/generate", json!({"model": PINNED, "prompt": "hi", "stream": false})).await;
    assert_eq!(gen.status(), 503);
    assert_eq!(gen.headers().get("x-jetson-llmd-guard").and_then(|v| v.to_str().ok()), Some("refused: connections"));
    let e: Value = gen.json().await.expect("json");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("too many connections")), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1), "answered at once: {:?}", t.elapsed());
    // The overflow places taken too: the next connection is closed, not left waiting.
    let mut over = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("w");
        over.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await.expect("closed at once, not held").unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    drop(over);
    // The idle connections end at the head timeout: each read sees the guard close it.
    for c in &mut idle {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.expect("the guard closes an idle connection").unwrap_or(0);
        assert_eq!(n, 0);
    }
    let gen = r.post("/api/generate", json!({"model": PINNED, "prompt": "hi", "stream": false})).await;
    assert_eq!(gen.status(), 200, "served again once they are gone");
}

/// Issue 30 (docs vs binary): the largest request head is 64 KiB; a 100 KB one gets 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_64_kib_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = rig(GuardSettings::default(), ready()).await;
    let addr = r.url.trim_start_matches("http://").to_string();
    for (size, want) in [(60_000, "HTTP/1.1 200"), (100_000, "HTTP/1.1 431")] {
        let mut c = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let head = format!("GET /api/version HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n", "a".repeat(size));
        let _ = c.write_all(head.as_bytes()).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
        assert!(String::from_utf8_lossy(&out).starts_with(want), "{size}: {}", String::from_utf8_lossy(&out[..out.len().min(80)]));
    }
}
