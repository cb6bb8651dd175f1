//! Each emulated Ollama behaviour, checked over real HTTP with a plain reqwest client
//! (deliberately not jetson-llmd's client).

use fake_ollama::{spawn, Config, CpuReason, Fault, FaultKind, Handle, LogFormat, ModelSpec};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SCALE: f64 = 0.01; // 60 s cold load -> 0.6 s

async fn start(c: Config) -> Handle {
    spawn(c, "127.0.0.1:0".parse().expect("addr")).await.expect("binds")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).no_proxy().build().expect("client")
}

async fn post(h: &Handle, path: &str, body: Value) -> (u16, Value) {
    let r = http().post(format!("{}{path}", h.url())).json(&body).send().await.expect("sends");
    let s = r.status().as_u16();
    let t = r.text().await.expect("body");
    let v = t.lines().last().map(|l| serde_json::from_str(l).expect("json line")).unwrap_or(Value::Null);
    (s, v)
}

async fn post_lines(h: &Handle, path: &str, body: Value) -> Vec<Value> {
    let t = http().post(format!("{}{path}", h.url())).json(&body).send().await.expect("sends").text().await.expect("body");
    t.lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
}

async fn ps(h: &Handle) -> Vec<Value> {
    let v: Value = http().get(format!("{}/api/ps", h.url())).send().await.expect("ps").json().await.expect("json");
    v["models"].as_array().cloned().unwrap_or_default()
}

fn year(expires: &Value) -> i32 {
    expires.as_str().expect("str")[..4].parse().expect("year")
}

#[tokio::test]
async fn version_root_and_tags() {
    let h = start(Config::orin_nano(SCALE)).await;
    let root = http().get(h.url()).send().await.expect("get").text().await.expect("text");
    assert_eq!(root, "Ollama is running");
    let v: Value = http().get(format!("{}/api/version", h.url())).send().await.expect("get").json().await.expect("json");
    assert_eq!(v["version"], "0.30.6");
    let t: Value = http().get(format!("{}/api/tags", h.url())).send().await.expect("get").json().await.expect("json");
    let names: Vec<&str> = t["models"].as_array().expect("arr").iter().map(|m| m["name"].as_str().expect("name")).collect();
    assert!(names.contains(&"gemma4:e2b-it-qat"));
    assert!(t["models"][0]["size"].as_u64().expect("size") > 1 << 30);
}

#[tokio::test]
async fn load_only_request_pins_forever_and_takes_load_time() {
    let h = start(Config::orin_nano(SCALE)).await;
    let t0 = Instant::now();
    let (s, v) = post(&h, "/api/generate", json!({"model": "gemma4:e2b-it-qat", "keep_alive": -1})).await;
    let took = t0.elapsed();
    assert_eq!(s, 200);
    assert_eq!(v["done_reason"], "load");
    assert_eq!(v["response"], "");
    assert!(took >= Duration::from_millis(550), "cold load must take ~0.6 s at this scale, took {took:?}");
    let m = ps(&h).await;
    assert_eq!(m.len(), 1);
    assert!(year(&m[0]["expires_at"]) >= 2300, "keep_alive -1 shows year ~2318: {}", m[0]["expires_at"]);
    assert_eq!(m[0]["size"], m[0]["size_vram"], "fits the GPU entirely");
    // A second load is warm: immediate.
    let t1 = Instant::now();
    post(&h, "/api/generate", json!({"model": "gemma4:e2b-it-qat", "keep_alive": -1})).await;
    assert!(t1.elapsed() < Duration::from_millis(300));
    assert_eq!(h.emu.counters().loads, 1);
}

#[tokio::test]
async fn default_keep_alive_applies_at_first_load_and_omitted_keep_alive_keeps_the_timer() {
    let mut c = Config::orin_nano(SCALE);
    c.default_keep_alive = fake_ollama::Keep::For(Duration::from_millis(600));
    let h = start(c).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b"})).await;
    let e = ps(&h).await[0]["expires_at"].clone();
    assert!(year(&e) < 2100, "default is finite");
    // Pin, then a request without keep_alive must not unpin.
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b"})).await;
    assert!(year(&ps(&h).await[0]["expires_at"]) >= 2300);
    // A request that carries a finite keep_alive replaces the pin, and the model then expires.
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": "300ms"})).await;
    assert!(year(&ps(&h).await[0]["expires_at"]) < 2100);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ps(&h).await.is_empty(), "expired runner is evicted");
    assert_eq!(h.emu.counters().expirations, 1);
}

#[tokio::test]
async fn keep_alive_zero_unloads_and_bad_strings_are_rejected() {
    let h = start(Config::orin_nano(SCALE)).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    let (s, v) = post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": 0})).await;
    assert_eq!((s, v["done_reason"].as_str()), (200, Some("unload")));
    assert!(ps(&h).await.is_empty());
    let (s, v) = post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": "-1"})).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().expect("err").contains("missing unit"));
    let (s, v) = post(&h, "/api/generate", json!({"model": "nope:1b"})).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"], "model 'nope:1b' not found");
}

#[tokio::test]
async fn different_runner_options_force_a_reload() {
    let h = start(Config::orin_nano(SCALE)).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1, "options": {"num_ctx": 2048}})).await;
    let c = h.emu.counters();
    assert_eq!((c.loads, c.reloads_for_options, c.unloads), (2, 1, 1));
    assert_eq!(ps(&h).await[0]["context_length"], 2048);
    // Non-runner options (temperature) do not.
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "options": {"num_ctx": 2048, "temperature": 0.1}})).await;
    assert_eq!(h.emu.counters().loads, 2);
}

#[tokio::test]
async fn max_loaded_models_evicts_the_soonest_expiring() {
    let mut c = Config::orin_nano(SCALE);
    c.max_loaded = 1;
    let h = start(c).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    post(&h, "/api/generate", json!({"model": "gemma4:e2b-it-qat", "keep_alive": -1})).await;
    let m = ps(&h).await;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["name"], "gemma4:e2b-it-qat");
}

#[tokio::test]
async fn unified_memory_budget_full_partial_and_too_large() {
    let mut c = Config::orin_nano(SCALE);
    let mut big = c.profile.registry_model("gemma3:4b").expect("spec").clone();
    big.name = "big:latest".into();
    big.loaded_size = (5.4 * (1u64 << 30) as f64) as u64; // more than the GPU's 5.1 GiB, less than 5.6 GiB RAM
    c.profile.registry.push(big);
    c.profile.local.push("big:latest".into());
    let h = start(c).await;
    // Partly on the GPU.
    post(&h, "/api/generate", json!({"model": "big", "keep_alive": -1})).await;
    let m = ps(&h).await;
    let (size, vram) = (m[0]["size"].as_u64().expect("n"), m[0]["size_vram"].as_u64().expect("n"));
    assert!(vram > 0 && vram < size, "split placement {vram}/{size}");
    assert!(h.emu.logs().iter().any(|l| l.contains("load_tensors: offloaded") && !l.contains("37/37")));
}

#[tokio::test]
async fn cpu_only_discovery_and_placement() {
    let mut c = Config::orin_nano(SCALE);
    c.cpu_only = Some(CpuReason::MissingLibs);
    let h = start(c).await;
    post(&h, "/api/generate", json!({"model": "gemma4:e2b-it-qat", "keep_alive": -1})).await;
    assert_eq!(ps(&h).await[0]["size_vram"], 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = h.emu.logs();
    assert!(logs.iter().any(|l| l.contains("msg=\"inference compute\" id=cpu library=cpu")), "{logs:?}");
    assert!(!logs.iter().any(|l| l.contains("library=CUDA")));
}

#[tokio::test]
async fn gpu_discovery_lines_in_both_formats() {
    let h = start(Config::orin_nano(SCALE)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = h.emu.logs();
    assert!(logs.iter().any(|l| l.contains("msg=\"Listening on 127.0.0.1:") && l.contains("(version 0.30.6)")));
    let line = logs.iter().find(|l| l.contains("inference compute")).expect("discovery line");
    assert!(line.contains("library=CUDA compute=8.7 name=CUDA0 description=Orin libdirs=ollama,cuda_jetpack6"), "{line}");
    assert!(line.contains("type=iGPU total=\"7.4 GiB\" available=\"5.1 GiB\""), "{line}");
    let mut c = Config::orin_nano(SCALE);
    c.log_format = LogFormat::Legacy;
    let h2 = start(c).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let l2 = h2.emu.logs().into_iter().find(|l| l.contains("inference compute")).expect("line");
    assert!(l2.contains("library=cuda variant=jetpack6 compute=8.7"), "{l2}");
}

#[tokio::test]
async fn generation_streams_at_the_profile_speed_with_timings() {
    let h = start(Config::orin_nano(SCALE)).await;
    let lines = post_lines(&h, "/api/generate", json!({"model": "gemma4:e2b-it-qat", "prompt": "Hello, how are you?", "options": {"num_predict": 50}})).await;
    assert_eq!(lines.len(), 51);
    let last = lines.last().expect("final");
    assert_eq!(last["done"], true);
    let tok_s = last["eval_count"].as_f64().expect("n") / last["eval_duration"].as_f64().expect("d") * 1e9;
    assert!((tok_s - 25.7).abs() < 0.5, "gemma4 on the GPU runs ~25.7 tok/s, got {tok_s}");
    assert!(last["load_duration"].as_u64().expect("ld") >= 30_000_000_000, "cold load reported in board time");
    assert!(lines[0]["response"].as_str().is_some_and(|s| !s.is_empty()));
    // Default keep_alive after a generation: finite expiry.
    assert!(year(&ps(&h).await[0]["expires_at"]) < 2100);
}

#[tokio::test]
async fn chat_with_no_messages_loads() {
    let h = start(Config::orin_nano(SCALE)).await;
    let (s, v) = post(&h, "/api/chat", json!({"model": "gemma3:4b", "messages": [], "keep_alive": -1})).await;
    assert_eq!((s, v["done_reason"].as_str()), (200, Some("load")));
    assert_eq!(v["message"]["role"], "assistant");
}

#[tokio::test]
async fn pull_create_show_delete() {
    let h = start(Config::orin_nano(SCALE)).await;
    let lines = post_lines(&h, "/api/pull", json!({"model": "qwen3.5:2b"})).await;
    assert_eq!(lines[0]["status"], "pulling manifest");
    assert!(lines.iter().any(|l| l["total"].as_u64().is_some() && l["completed"].as_u64().is_some()));
    assert_eq!(lines.last().expect("last")["status"], "success");
    let bad = post_lines(&h, "/api/pull", json!({"model": "no-such-model"})).await;
    assert_eq!(bad.last().expect("last")["error"], "pull model manifest: file does not exist");
    h.emu.inject(Fault { kind: FaultKind::PullFailure, path_prefix: None });
    let failed = post_lines(&h, "/api/pull", json!({"model": "llama3.2:3b"})).await;
    assert!(failed.last().expect("last")["error"].as_str().expect("e").contains("max retries exceeded"));
    // create from a base, as the seed's Modelfile does.
    let lines = post_lines(&h, "/api/create", json!({"model": "gemma4:e2b-8k", "from": "gemma4:e2b-it-qat", "parameters": {"num_ctx": 8192}})).await;
    assert_eq!(lines.last().expect("last")["status"], "success");
    let (s, show) = post(&h, "/api/show", json!({"model": "gemma4:e2b-8k"})).await;
    assert_eq!(s, 200);
    assert!(show["parameters"].as_str().expect("p").contains("num_ctx") && show["parameters"].as_str().expect("p").contains("8192"));
    post(&h, "/api/generate", json!({"model": "gemma4:e2b-8k", "keep_alive": -1})).await;
    assert_eq!(ps(&h).await[0]["context_length"], 8192);
    let r = http().delete(format!("{}/api/delete", h.url())).json(&json!({"model": "qwen3.5:2b"})).send().await.expect("del");
    assert_eq!(r.status().as_u16(), 200);
    let r = http().delete(format!("{}/api/delete", h.url())).json(&json!({"model": "qwen3.5:2b"})).send().await.expect("del");
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn fragile_memory_fails_reload_until_reset() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = Config::orin_nano(SCALE);
    c.fragile_memory = true;
    c.state_dir = Some(dir.path().to_path_buf());
    let h = start(c.clone()).await;
    let (s, _) = post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    assert_eq!(s, 200);
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": 0})).await;
    let (s, v) = post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    assert_eq!(s, 500);
    assert_eq!(v["error"], "llama-server process has terminated: exit status 1: cudaMalloc failed: out of memory\nalloc_tensor_range: failed to allocate CUDA0 buffer of size 188743680");
    assert!(h.emu.logs().iter().any(|l| l.contains("cudaMalloc failed: out of memory") && l.starts_with("ggml_backend_cuda")));
    h.shutdown().await;
    // It survives a restart of the server...
    let h = start(c.clone()).await;
    let (s, _) = post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    assert_eq!(s, 500);
    h.shutdown().await;
    // ...but not a reset (reboot).
    c.reset_memory = true;
    let h = start(c).await;
    let (s, _) = post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn drop_caches_file_clears_fragmentation() {
    let dir = tempfile::tempdir().expect("tmp");
    let dc = dir.path().join("drop_caches");
    std::fs::write(&dc, "").expect("w");
    let mut c = Config::orin_nano(SCALE);
    c.fragile_memory = true;
    c.drop_caches_file = Some(dc.clone());
    let h = start(c).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    h.emu.evict(None);
    assert!(h.emu.is_fragmented());
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&dc, "3\n").expect("w");
    let (s, _) = post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn faults_500_503_slow_reset_hang() {
    let h = start(Config::orin_nano(SCALE)).await;
    let ctl = |kind: &str| json!({"kind": kind, "path": "/api/version"});
    post(&h, "/_fake/fault", ctl("500")).await;
    let r = http().get(format!("{}/api/version", h.url())).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 500);
    post(&h, "/_fake/fault", ctl("503")).await;
    let r = http().get(format!("{}/api/version", h.url())).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 503);
    post(&h, "/_fake/fault", json!({"kind": "slow", "delay_ms": 300, "path": "/api/version"})).await;
    let t = Instant::now();
    http().get(format!("{}/api/version", h.url())).send().await.expect("send");
    assert!(t.elapsed() >= Duration::from_millis(300));
    post(&h, "/_fake/fault", ctl("reset")).await;
    // The connection drops before the answer completes: either the send or the body fails.
    let r = http().get(format!("{}/api/version", h.url())).send().await;
    let failed = match r {
        Err(e) => !e.is_timeout(),
        Ok(r) => r.text().await.is_err(),
    };
    assert!(failed, "the answer is cut off");
    post(&h, "/_fake/fault", ctl("hang")).await;
    let c = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().expect("c");
    let e = c.get(format!("{}/api/version", h.url())).send().await.expect_err("hangs");
    assert!(e.is_timeout());
    // Faults are used up: the next request is normal.
    let r = http().get(format!("{}/api/version", h.url())).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn restart_drops_models_refuses_connections_and_logs_discovery_again() {
    let h = start(Config::orin_nano(SCALE)).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    h.restart(Duration::from_millis(400));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = reqwest::Client::builder().timeout(Duration::from_millis(200)).no_proxy().build().expect("c");
    assert!(c.get(format!("{}/api/version", h.url())).send().await.is_err(), "down during restart");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(ps(&h).await.is_empty(), "the runner died with the server");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let n = h.emu.logs().iter().filter(|l| l.contains("inference compute")).count();
    assert_eq!(n, 2);
    assert_eq!(h.emu.counters().restarts, 1);
}

#[tokio::test]
async fn eviction_through_control_api() {
    let h = start(Config::orin_nano(SCALE)).await;
    post(&h, "/api/generate", json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    let (_, v) = post(&h, "/_fake/evict", json!({"model": "gemma3:4b"})).await;
    assert_eq!(v["evicted"][0], "gemma3:4b");
    assert!(ps(&h).await.is_empty());
}

#[test]
fn kv_cache_grows_with_context() {
    let c = Config::orin_nano(1.0);
    let s: &ModelSpec = c.profile.registry_model("gemma4:e2b-it-qat").expect("spec");
    assert!(s.size_at(8192) > s.size_at(4096));
}

#[tokio::test]
async fn openai_completions_and_embeddings_in_their_shapes() {
    let h = start(Config::orin_nano(SCALE)).await;
    let m = "gemma4:e2b-it-qat";
    // /v1/completions, not streamed: a text_completion with usage.
    let (s, v) = post(&h, "/v1/completions", json!({"model": m, "prompt": "hi", "max_tokens": 5})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    // Streamed with usage: chunks, then a usage chunk with no choices, then [DONE].
    let r = http().post(format!("{}/v1/completions", h.url())).json(&json!({"model": m, "prompt": "hi", "max_tokens": 3, "stream": true, "stream_options": {"include_usage": true}})).send().await.expect("send");
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let t = r.text().await.expect("sse");
    let events: Vec<&str> = t.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{t}");
    let usage: Value = serde_json::from_str(events[events.len() - 2].trim_start_matches("data: ")).expect("json");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    // An unknown model: OpenAI's error shape.
    let (s, v) = post(&h, "/v1/completions", json!({"model": "nope:1b", "prompt": "hi"})).await;
    assert_eq!(s, 404);
    assert!(v["error"]["message"].as_str().is_some_and(|e| e.contains("not found")), "{v}");

    // /v1/embeddings: float lists, or base64 of little-endian float32.
    let (s, v) = post(&h, "/v1/embeddings", json!({"model": m, "input": ["a", "bb"]})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["data"][1]["index"], 1);
    let floats = v["data"][0]["embedding"].as_array().expect("floats").len();
    let (_, b) = post(&h, "/v1/embeddings", json!({"model": m, "input": "a", "encoding_format": "base64"})).await;
    assert_eq!(b["data"][0]["embedding"].as_str().map(|s| s.len()), Some((floats * 4).div_ceil(3) * 4), "{b}");
    let (s, v) = post(&h, "/v1/embeddings", json!({"model": m, "input": "a", "encoding_format": "int8"})).await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().is_some_and(|e| e.contains("encoding_format")), "{v}");
    assert_eq!(post(&h, "/v1/embeddings", json!({"model": m, "input": []})).await.0, 400);
    assert_eq!(post(&h, "/v1/embeddings", json!({"model": m})).await.0, 400);
}

/// OLLAMA_NUM_PARALLEL slots are shared by generations and embeddings
/// (llm/llama_server.go: Completion and Embedding both s.sem.Acquire): with one slot an
/// embedding waits for the generation running; with two it does not.
#[tokio::test]
async fn embeddings_wait_for_a_parallel_slot_like_generations() {
    for parallel in [1usize, 2] {
        let h = start(Config { num_parallel: parallel, ..Config::orin_nano(SCALE) }).await;
        let m = "gemma4:e2b-it-qat";
        let (s, _) = post(&h, "/api/generate", json!({"model": m, "keep_alive": -1})).await;
        assert_eq!(s, 200);
        // ~1000 tokens at 25.7 tok/s board time x100: about 0.4 s here.
        let gen = async {
            post_lines(&h, "/api/generate", json!({"model": m, "prompt": "long", "options": {"num_predict": 1000}})).await;
            Instant::now()
        };
        let emb = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (s, v) = post(&h, "/api/embed", json!({"model": m, "input": ["a", "b"]})).await;
            assert_eq!(s, 200, "{v}");
            Instant::now()
        };
        let t0 = Instant::now();
        let (gen_end, emb_end) = tokio::join!(gen, emb);
        // The slot frees as the last line is written, a moment before the client has read it.
        let (g, e) = ((gen_end - t0).as_secs_f64(), (emb_end - t0).as_secs_f64());
        if parallel == 1 {
            assert!(e > 0.8 * g, "one slot: the embedding waited for the generation ({e:.2} s vs {g:.2} s)");
        } else {
            assert!(e < 0.5 * g, "two slots: the embedding ran beside the generation ({e:.2} s vs {g:.2} s)");
        }
    }
}
