//! The behaviours where the emulator once differed from Ollama, each checked against the source
//! it follows (github.com/ollama/ollama at v0.30.6; unchanged in v0.33.0-rc2 unless said). Each
//! test fails on the emulator's old behaviour.

use fake_ollama::{spawn, Config, Handle};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SCALE: f64 = 0.01;

async fn start(c: Config) -> Handle {
    spawn(c, "127.0.0.1:0".parse().expect("addr")).await.expect("binds")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).no_proxy().build().expect("client")
}

async fn post(h: &Handle, path: &str, body: Value) -> (u16, Value) {
    let r = http().post(format!("{}{path}", h.url())).json(&body).send().await.expect("sends");
    let s = r.status().as_u16();
    let t = r.text().await.expect("body");
    (s, t.lines().last().map(|l| serde_json::from_str(l).expect("json line")).unwrap_or(Value::Null))
}

async fn ps(h: &Handle) -> Vec<Value> {
    let v: Value = http().get(format!("{}/api/ps", h.url())).send().await.expect("ps").json().await.expect("json");
    v["models"].as_array().cloned().unwrap_or_default()
}

fn names(m: &[Value]) -> Vec<String> {
    m.iter().map(|x| x["name"].as_str().unwrap_or("").to_string()).collect()
}

/// A generation that streams for about `secs` (num_predict tokens at the profile's speed).
fn slow_generate(h: &Handle, model: &str, tokens: u64, keep: Option<Value>) -> tokio::task::JoinHandle<(u16, Value)> {
    let url = format!("{}/api/generate", h.url());
    let mut body = json!({"model": model, "prompt": "hello", "options": {"num_predict": tokens}});
    if let Some(k) = keep {
        body["keep_alive"] = k;
    }
    tokio::spawn(async move {
        let r = http().post(url).json(&body).send().await.expect("sends");
        let s = r.status().as_u16();
        let t = r.text().await.expect("body");
        (s, t.lines().last().map(|l| serde_json::from_str(l).expect("json")).unwrap_or(Value::Null))
    })
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < Duration::from_secs(20), "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// server/routes.go Serve: "Listening" is logged, GPU discovery runs, and only then is HTTP
/// served; a connection made meanwhile is accepted but not answered.
#[tokio::test]
async fn http_is_served_only_after_gpu_discovery() {
    let h = start(Config::orin_nano(0.5)).await; // discovery takes 0.75 s here
    let tcp = tokio::net::TcpStream::connect(h.addr).await;
    assert!(tcp.is_ok(), "the listener exists from the start");
    let quick = reqwest::Client::builder().timeout(Duration::from_millis(300)).no_proxy().build().expect("c");
    let e = quick.get(format!("{}/api/version", h.url())).send().await.expect_err("no answer during discovery");
    assert!(e.is_timeout(), "accepted, not refused: {e}");
    let logs = h.emu.logs();
    assert!(logs.iter().any(|l| l.contains("Listening on")) && !logs.iter().any(|l| l.contains("inference compute")), "{logs:?}");
    let v: Value = http().get(format!("{}/api/version", h.url())).send().await.expect("answers").json().await.expect("json");
    assert_eq!(v["version"], "0.30.6");
    let logs = h.emu.logs();
    let listening = logs.iter().position(|l| l.contains("Listening on")).expect("listening");
    let discovery = logs.iter().position(|l| l.contains("inference compute")).expect("discovery");
    assert!(listening < discovery);
}

/// discover/types.go LogDetails: filter_id right after id, `filter_id=""` when empty; since
/// v0.30 the id is the device index. The CPU line has no filter_id.
#[tokio::test]
async fn discovery_line_prints_filter_id_and_the_device_index() {
    let h = start(Config::orin_nano(SCALE)).await;
    until("discovery", async || h.emu.logs().iter().any(|l| l.contains("inference compute"))).await;
    let line = h.emu.logs().into_iter().find(|l| l.contains("inference compute")).expect("line");
    assert!(line.contains("msg=\"inference compute\" id=0 filter_id=\"\" library=CUDA compute=8.7"), "{line}");
    let mut c = Config::orin_nano(SCALE);
    c.profile.version = "0.29.1".into();
    let h = start(c).await;
    until("discovery", async || h.emu.logs().iter().any(|l| l.contains("inference compute"))).await;
    let line = h.emu.logs().into_iter().find(|l| l.contains("inference compute")).expect("line");
    assert!(line.contains("id=GPU-2f6a8c1e") && line.contains("filter_id=\"\""), "{line}");
}

/// server/routes.go PsHandler: a runner that has not gone idle yet has the zero expiresAt and is
/// shown as now + sessionDuration (not "forever": that would hide a missing pin).
#[tokio::test]
async fn ps_during_the_first_request_shows_now_plus_keep_alive() {
    let h = start(Config::orin_nano(SCALE)).await;
    let g = slow_generate(&h, "gemma3:4b", 400, None); // OLLAMA_KEEP_ALIVE default 5m
    until("loaded", async || !ps(&h).await.is_empty()).await;
    let m = ps(&h).await;
    let exp = time::OffsetDateTime::parse(m[0]["expires_at"].as_str().expect("s"), &time::format_description::well_known::Rfc3339).expect("time");
    let left = exp - time::OffsetDateTime::now_utc();
    assert!(left > time::Duration::seconds(290) && left < time::Duration::seconds(301), "now + 5m while busy: {left}");
    g.abort();
}

/// server/sched.go expireRunner (from GenerateHandler on an empty prompt with keep_alive 0): the
/// duration becomes 0; a busy model unloads when its request ends, not never.
#[tokio::test]
async fn keep_alive_zero_while_busy_unloads_when_the_request_ends() {
    let h = start(Config::orin_nano(SCALE)).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    let g = slow_generate(&h, "gemma3:4b", 40, None);
    until("busy", async || h.emu.runner("gemma3:4b").is_some_and(|r| r.refcount > 0)).await;
    let (s, v) = post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": 0})).await;
    assert_eq!((s, v["done_reason"].as_str()), (200, Some("unload")));
    assert_eq!(names(&ps(&h).await), ["gemma3:4b"], "still serving the in-flight request");
    let (s, _) = g.await.expect("join");
    assert_eq!(s, 200);
    until("unloaded after the request", async || ps(&h).await.is_empty()).await;
}

/// server/sched.go processPending + findRunnerToUnload: at OLLAMA_MAX_LOADED_MODELS=1 another
/// model's request picks the pinned runner as the victim (pins sort last, but are chosen), waits
/// while it is busy, then it is unloaded. Never both at once.
#[tokio::test]
async fn a_busy_pinned_model_is_still_the_victim_at_max_loaded_one() {
    let mut c = Config::orin_nano(SCALE);
    c.max_loaded = 1;
    let h = start(c).await;
    post(&h, "/api/generate", json!({"model": "gemma4:e2b-it-qat", "keep_alive": -1})).await;
    let g = slow_generate(&h, "gemma4:e2b-it-qat", 60, None);
    until("busy", async || h.emu.runner("gemma4:e2b-it-qat").is_some_and(|r| r.refcount > 0)).await;
    let other = tokio::spawn({
        let url = format!("{}/api/generate", h.url());
        async move { http().post(url).json(&json!({"model": "gemma3:4b"})).send().await.expect("s").status().as_u16() }
    });
    let mut seen_both = false;
    while !other.is_finished() {
        seen_both |= ps(&h).await.len() > 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(g.is_finished(), "the new request waited for the busy one to finish");
    assert_eq!(other.await.expect("join"), 200);
    assert!(!seen_both, "never two runners at OLLAMA_MAX_LOADED_MODELS=1");
    assert_eq!(names(&ps(&h).await), ["gemma3:4b"], "the pinned model was unloaded");
}

/// server/sched.go ByDurationAndName: victims by session duration (uint64, so a pin is last),
/// then by model path, not by which expires soonest.
#[tokio::test]
async fn victims_go_by_duration_then_model_path() {
    let mut c = Config::orin_nano(SCALE);
    c.max_loaded = 3;
    c.profile.system_available = 64 << 30;
    c.profile.gpu_available = 64 << 30;
    let h = start(c).await;
    post(&h, "/api/pull", json!({"model": "qwen3.5:2b"})).await;
    post(&h, "/api/generate", json!({"model": "llama3.1:8b", "keep_alive": -1})).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": "10m"})).await;
    post(&h, "/api/generate", json!({"model": "gemma4:e2b-it-qat", "keep_alive": "10m"})).await;
    let blob = |m: &str| h.emu.runner(m).expect("loaded").spec.blob;
    let (low, high) = if blob("gemma3:4b") < blob("gemma4:e2b-it-qat") { ("gemma3:4b", "gemma4:e2b-it-qat") } else { ("gemma4:e2b-it-qat", "gemma3:4b") };
    // Touch the one with the lower path last: the other now expires sooner.
    tokio::time::sleep(Duration::from_millis(50)).await;
    post(&h, "/api/generate", json!({"model": low, "keep_alive": "10m"})).await;
    post(&h, "/api/generate", json!({"model": "qwen3.5:2b", "keep_alive": "1h"})).await;
    let n = names(&ps(&h).await);
    assert!(!n.contains(&low.to_string()), "same duration: the lower model path goes, not the sooner expiry: {n:?}");
    assert!(n.contains(&high.to_string()) && n.contains(&"llama3.1:8b".to_string()), "the pin sorts last: {n:?}");
}

/// v0.30 removed the "model requires more system memory" pre-check (llama-server runner): the
/// first model is tried, llama-server fits what it can on the GPU, the rest runs from the CPU.
#[tokio::test]
async fn a_model_too_large_for_the_board_loads_partly() {
    let h = start(Config::orin_nano(SCALE)).await;
    let (s, v) = post(&h, "/api/generate", json!({"model": "llama3.1:8b", "keep_alive": -1})).await;
    assert_eq!(s, 200, "{v}");
    let m = ps(&h).await;
    let (size, vram) = (m[0]["size"].as_u64().expect("n"), m[0]["size_vram"].as_u64().expect("n"));
    assert!(vram > 0 && vram < size, "partial offload {vram}/{size}");
    assert!(!h.emu.logs().iter().any(|l| l.contains("requires more system memory")));
    assert!(h.emu.logs().iter().any(|l| l.contains("msg=\"starting llama-server\" cmd=")));
    // Before v0.30 it was refused up front, with that text.
    let mut c = Config::orin_nano(SCALE);
    c.profile.version = "0.29.1".into();
    let h = start(c).await;
    let (s, v) = post(&h, "/api/generate", json!({"model": "llama3.1:8b", "keep_alive": -1})).await;
    assert_eq!(s, 500);
    assert!(v["error"].as_str().expect("e").starts_with("model requires more system memory"), "{v}");
}

/// server/sched.go load: a failed load is logged `msg="Load failed"` (INFO) and the error carries
/// llama-server's exit status and captured lines (llm/llama_server.go WaitUntilRunning,
/// llm/status.go StatusWriter). The one retry: a smaller automatic context only from above 4096
/// (nextLowerAutoNumCtx: to 32768 or to 4096), else evicting every other model when there are
/// any, else none. On the Orin the automatic context is 4096: never stepped down.
#[tokio::test]
async fn an_out_of_memory_load_is_retried_once_and_reported_with_exit_status() {
    let mut c = Config::orin_nano(SCALE);
    c.fragile_memory = true;
    let h = start(c).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    h.emu.evict(None);
    // The automatic 4096 alone: one attempt, no retry.
    let (s, v) = post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    assert_eq!(s, 500);
    let e = v["error"].as_str().expect("e");
    assert!(e.starts_with("llama-server process has terminated: exit status 1: cudaMalloc failed: out of memory"), "{e}");
    let logs = h.emu.logs();
    assert_eq!(logs.iter().filter(|l| l.contains("level=INFO") && l.contains("msg=\"Load failed\"")).count(), 1, "{logs:?}");
    assert_eq!(logs.iter().filter(|l| l.contains("retrying once")).count(), 0, "4096 is not stepped down: {logs:?}");
    // An explicit num_ctx is not automatic: no step-down either, whatever its size.
    let (s, _) = post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1, "options": {"num_ctx": 8192}})).await;
    assert_eq!(s, 500);
    let logs = h.emu.logs();
    assert_eq!(logs.iter().filter(|l| l.contains("msg=\"Load failed\"")).count(), 2, "{logs:?}");
    assert_eq!(logs.iter().filter(|l| l.contains("retrying once")).count(), 0);
}

/// nextLowerAutoNumCtx with an automatic context above 4096 (OLLAMA_CONTEXT_LENGTH on a board
/// with more memory): 8192 steps down to 4096, once.
#[tokio::test]
async fn an_automatic_context_above_4096_steps_down_to_4096_once() {
    let mut c = Config::orin_nano(SCALE);
    c.fragile_memory = true;
    c.context_length = 8192;
    let h = start(c).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    h.emu.evict(None);
    let (s, _) = post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    assert_eq!(s, 500);
    let logs = h.emu.logs();
    let step: Vec<&String> = logs.iter().filter(|l| l.contains("level=WARN") && l.contains("reducing automatic context and retrying once")).collect();
    assert_eq!(step.len(), 1, "{logs:?}");
    assert!(step[0].contains("old_num_ctx=8192 new_num_ctx=4096"), "{}", step[0]);
    assert_eq!(logs.iter().filter(|l| l.contains("msg=\"Load failed\"")).count(), 2);
}

/// server/sched.go expireRunnersForRuntimeOOM (GenerateHandler on an OOM error): every runner's
/// duration becomes 0, pinned or not; all unload once idle.
#[tokio::test]
async fn a_runtime_out_of_memory_expires_every_runner_pinned_or_not() {
    let h = start(Config::orin_nano(SCALE)).await;
    post(&h, "/api/generate", json!({"model": "gemma4:e2b-it-qat", "keep_alive": -1})).await;
    post(&h, "/_fake/fault", json!({"kind": "runtime-oom"})).await;
    let (s, v) = post(&h, "/api/generate", json!({"model": "gemma4:e2b-it-qat", "prompt": "hi", "stream": false})).await;
    assert_eq!(s, 500);
    assert!(v["error"].as_str().expect("e").contains("out of memory"), "{v}");
    until("every runner gone", async || ps(&h).await.is_empty()).await;
    assert!(h.emu.logs().iter().any(|l| l.contains("runtime OOM detected")));
}

/// server/sched.go schedulerModelKey: runners are keyed by the weights file. A model created FROM
/// another shares it: the same runner serves both while options match (ps keeps the name it was
/// loaded under, routes.go PsHandler), and a request with other options reloads it under the
/// requester's name.
#[tokio::test]
async fn a_derived_model_and_its_base_share_one_runner() {
    let h = start(Config::orin_nano(SCALE)).await;
    let (s, _) = post(&h, "/api/create", json!({"model": "gemma4:e2b-8k", "from": "gemma4:e2b-it-qat", "parameters": {"num_ctx": 8192}})).await;
    assert_eq!(s, 200);
    post(&h, "/api/generate", json!({"model": "gemma4:e2b-8k", "keep_alive": -1})).await;
    let loads = h.emu.counters().loads;
    // The base at the same context: the same runner, no load, still listed as gemma4:e2b-8k.
    post(&h, "/api/generate", json!({"model": "gemma4:e2b-it-qat", "options": {"num_ctx": 8192}})).await;
    assert_eq!(h.emu.counters().loads, loads);
    assert_eq!(names(&ps(&h).await), ["gemma4:e2b-8k"]);
    // The base at its default context: a reload, now listed under the base's name only.
    post(&h, "/api/generate", json!({"model": "gemma4:e2b-it-qat"})).await;
    assert_eq!(h.emu.counters().loads, loads + 1);
    assert_eq!(h.emu.counters().reloads_for_options, 1);
    assert_eq!(names(&ps(&h).await), ["gemma4:e2b-it-qat"]);
}

/// server/sched.go needsReload: a negative or absent num_gpu is no difference, automatic num_ctx
/// and num_batch on both sides are none either, and num_ctx is capped at the trained context.
#[tokio::test]
async fn needs_reload_ignores_what_ollama_ignores() {
    let h = start(Config::orin_nano(SCALE)).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "options": {"num_gpu": -1}})).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "options": {"num_gpu": -5}})).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b"})).await;
    assert_eq!(h.emu.counters().reloads_for_options, 0);
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "options": {"num_ctx": 500000}})).await;
    assert_eq!(h.emu.counters().reloads_for_options, 1, "4096 -> capped 131072");
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "options": {"num_ctx": 900000}})).await;
    assert_eq!(h.emu.counters().reloads_for_options, 1, "both capped at the trained 131072");
    assert_eq!(ps(&h).await[0]["context_length"], 131072);
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "options": {"num_ctx": 131072, "num_gpu": 10}})).await;
    assert_eq!(h.emu.counters().reloads_for_options, 2, "a positive num_gpu is a difference");
}

/// Fields real Ollama sends: /api/tags capabilities and details.context_length (api/types.go
/// ListModelResponse), /api/show model_info with architecture keys, the final /api/generate
/// chunk's context, /api/embed, OLLAMA_CONTEXT_LENGTH:0 in the config dump.
#[tokio::test]
async fn fields_real_ollama_sends() {
    let h = start(Config::orin_nano(SCALE)).await;
    let t: Value = http().get(format!("{}/api/tags", h.url())).send().await.expect("tags").json().await.expect("json");
    assert_eq!(t["models"][0]["capabilities"][0], "completion");
    assert_eq!(t["models"][0]["details"]["context_length"], 131072);
    let (_, show) = post(&h, "/api/show", json!({"model": "gemma3:4b"})).await;
    let mi = &show["model_info"];
    assert_eq!(mi["general.architecture"], "gemma3");
    assert_eq!(mi["gemma3.context_length"], 131072);
    assert_eq!(mi["gemma3.block_count"], 36);
    assert!(mi["gemma3.attention.head_count_kv"].as_u64().is_some() && mi["general.parameter_count"].as_u64().unwrap_or(0) > 1_000_000_000, "{mi}");
    let (_, fin) = post(&h, "/api/generate", json!({"model": "gemma3:4b", "prompt": "hi", "options": {"num_predict": 3}})).await;
    assert!(fin["context"].as_array().is_some_and(|c| !c.is_empty()), "{fin}");
    let (s, e) = post(&h, "/api/embed", json!({"model": "gemma3:4b", "input": ["a", "b c"]})).await;
    assert_eq!(s, 200);
    assert_eq!(e["embeddings"].as_array().map(Vec::len), Some(2));
    assert!(h.emu.logs().iter().any(|l| l.contains("OLLAMA_CONTEXT_LENGTH:0 ")));
}
