//! Preload and keepalive over real HTTP against the fake-ollama emulator on 127.0.0.1:0.

use fake_ollama::{spawn, Config, CpuReason, Fault, FaultKind, Handle};
use jetson_llmd::conf::{ModelName, Settings};
use jetson_llmd::failure::{code, Failure};
use jetson_llmd::host::memory::{DropCaches, MemoryRelief};
use jetson_llmd::ollama::warm;
use ollama_client::{Client, KeepAlive, Timeouts};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SCALE: f64 = 0.01;

async fn emu(c: Config) -> Handle {
    spawn(c, "127.0.0.1:0".parse().expect("addr")).await.expect("binds")
}

fn client(h: &Handle) -> Client {
    let t = Timeouts { request: Duration::from_secs(2), load: Duration::from_secs(10), ..Default::default() };
    Client::new(ollama_client::parse_host(&h.url()).expect("url").url, t)
}

fn m(s: &str) -> ModelName {
    ModelName::parse(s).expect("valid")
}

/// The emulator with memory that becomes unallocatable after an unload, and the file that
/// stands in for /proc/sys/vm/drop_caches.
async fn fragile_with_drop_caches() -> (tempfile::TempDir, std::path::PathBuf, Handle) {
    let dir = tempfile::tempdir().expect("tmp");
    let dc = dir.path().join("drop_caches");
    std::fs::write(&dc, "").expect("w");
    let mut c = Config::orin_nano(SCALE);
    c.fragile_memory = true;
    c.drop_caches_file = Some(dc.clone());
    let h = emu(c).await;
    (dir, dc, h)
}

struct NoRelief;
impl MemoryRelief for NoRelief {
    async fn drop_caches(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn preload_creates_the_seed_model_pins_it_on_the_gpu() {
    let h = emu(Config::orin_nano(SCALE)).await;
    let c = client(&h);
    let r = warm::preload(&c, &Settings::default(), &m("gemma4:e2b-8k"), &NoRelief).await.expect("warm");
    assert_eq!(r.gpu_percent, 100);
    assert!(r.pinned, "keep_alive -1 pins it: {}", r.expires_at);
    assert!(r.load_ms.expect("cold") >= 550, "cold load measured: {:?}", r.load_ms);
    let runner = h.emu.runner("gemma4:e2b-8k").expect("loaded");
    assert_eq!(runner.options.num_ctx, 8192, "created with the seed's num_ctx");
    // A second preload finds it warm: no new load, nothing reported as cold.
    let r2 = warm::preload(&c, &Settings::default(), &m("gemma4:e2b-8k"), &NoRelief).await.expect("warm");
    assert_eq!(r2.load_ms, None);
    assert_eq!(h.emu.counters().loads, 1);
}

#[tokio::test]
async fn preload_pulls_a_missing_plain_model() {
    let h = emu(Config::orin_nano(SCALE)).await;
    let r = warm::preload(&client(&h), &Settings::default(), &m("qwen3.5:2b"), &NoRelief).await.expect("warm");
    assert_eq!(r.model, "qwen3.5:2b");
    assert_eq!(h.emu.counters().requests.get("/api/pull"), Some(&1));
}

#[tokio::test]
async fn unknown_model_and_failed_pull_are_reported_with_ollamas_words() {
    let h = emu(Config::orin_nano(SCALE)).await;
    let e = warm::preload(&client(&h), &Settings::default(), &m("no-such-model:1b"), &NoRelief).await.expect_err("missing");
    assert!(matches!(&e, Failure::Missing { detail, .. } if detail.contains("file does not exist")), "{e}");
    assert_eq!(e.exit_code(), code::FAILED);
    h.emu.inject(Fault { kind: FaultKind::PullFailure, path_prefix: None });
    let e = warm::preload(&client(&h), &Settings::default(), &m("llama3.2:3b"), &NoRelief).await.expect_err("pull fails");
    assert!(e.to_string().contains("max retries exceeded"), "{e}");
}

#[tokio::test]
async fn cpu_fallback_is_not_warm() {
    let mut c = Config::orin_nano(SCALE);
    c.cpu_only = Some(CpuReason::MissingLibs);
    let h = emu(c).await;
    let e = warm::preload(&client(&h), &Settings::default(), &m("gemma3:4b"), &NoRelief).await.expect_err("cpu");
    assert!(matches!(e, Failure::OnCpu { .. }), "{e}");
}

#[tokio::test]
async fn a_model_too_large_for_the_board_is_partly_on_the_gpu_not_reboot_required() {
    // Ollama 0.30+ (llama-server) has no memory pre-check: the seed's llama3.1:8b loads partly
    // and swaps. That is a model that does not fit (wait for model.conf), not unallocatable memory.
    let h = emu(Config::orin_nano(SCALE)).await;
    let e = warm::preload(&client(&h), &Settings::default(), &m("llama3.1:8b"), &NoRelief).await.expect_err("too big");
    assert!(matches!(e, Failure::PartlyOnGpu { percent, .. } if percent > 0 && percent < 100), "{e:?}");
    assert_eq!(e.exit_code(), code::FAILED);
    assert!(e.to_string().contains("use a smaller model or a smaller num_ctx"), "{e}");
}

#[tokio::test]
async fn out_of_memory_drops_caches_once_then_succeeds() {
    let (_dir, dc, h) = fragile_with_drop_caches().await;
    let cl = client(&h);
    warm::preload(&cl, &Settings::default(), &m("gemma3:4b"), &NoRelief).await.expect("first load");
    h.emu.evict(None);
    tokio::time::sleep(Duration::from_millis(20)).await; // a distinct mtime for the drop_caches write
    let r = warm::preload(&cl, &Settings::default(), &m("gemma3:4b"), &DropCaches { path: dc.clone() }).await.expect("recovered");
    assert!(r.dropped_caches);
    assert_eq!(std::fs::read_to_string(&dc).expect("r"), "3\n");
}

#[tokio::test]
async fn out_of_memory_that_survives_drop_caches_means_reboot_required() {
    let mut c = Config::orin_nano(SCALE);
    c.fragile_memory = true;
    let h = emu(c).await;
    let cl = client(&h);
    warm::preload(&cl, &Settings::default(), &m("gemma3:4b"), &NoRelief).await.expect("first load");
    cl.load("gemma3:4b", KeepAlive::Unload).await.expect("unload");
    let e = warm::preload(&cl, &Settings::default(), &m("gemma3:4b"), &NoRelief).await.expect_err("oom");
    assert!(matches!(&e, Failure::RebootRequired { detail } if detail.contains("cudaMalloc failed: out of memory")), "{e}");
    assert_eq!(e.exit_code(), code::REBOOT_REQUIRED);
    assert_eq!(h.emu.counters().oom_failures, 2, "exactly one retry, no loop");
}

#[tokio::test]
async fn keepalive_tick_rewarms_after_eviction_and_repins_after_another_client() {
    let h = emu(Config::orin_nano(SCALE)).await;
    let cl = client(&h);
    let s = Settings::default();
    warm::preload(&cl, &s, &m("gemma3:4b"), &NoRelief).await.expect("warm");
    let t = warm::tick(&cl, &s, &m("gemma3:4b"), &NoRelief).await.expect("tick");
    assert!(!t.rewarmed);
    h.emu.evict(Some("gemma3:4b"));
    let t = warm::tick(&cl, &s, &m("gemma3:4b"), &NoRelief).await.expect("tick");
    assert!(t.rewarmed && t.pinned);
    // Another client sends keep_alive 5m: the pin is gone until the next tick restores it.
    cl.load("gemma3:4b", KeepAlive::For(Duration::from_secs(300))).await.expect("other client");
    assert!(!cl.ps().await.expect("ps").models[0].pinned_forever());
    let t = warm::tick(&cl, &s, &m("gemma3:4b"), &NoRelief).await.expect("tick");
    assert!(t.pinned && !t.rewarmed);
    // Ticks never send options, so they never cause a reload.
    assert_eq!(h.emu.counters().reloads_for_options, 0);
}

#[tokio::test]
async fn faults_give_one_clear_error_each() {
    let h = emu(Config::orin_nano(SCALE)).await;
    let cl = client(&h);
    let s = Settings::default();
    warm::preload(&cl, &s, &m("gemma3:4b"), &NoRelief).await.expect("warm");
    for (kind, needle) in [(FaultKind::Status500, "HTTP 500"), (FaultKind::Busy503, "server busy"), (FaultKind::Hang, "did not answer within 2s"), (FaultKind::Reset, "cannot reach Ollama")] {
        h.emu.inject(Fault { kind, path_prefix: Some("/api/ps".into()) });
        let e = warm::tick(&cl, &s, &m("gemma3:4b"), &NoRelief).await.expect_err("fault");
        assert!(e.to_string().contains(needle), "{kind:?}: {e}");
        assert!(e.to_string().contains("/api/ps"), "names the URL: {e}");
    }
    // And the next tick is fine again.
    warm::tick(&cl, &s, &m("gemma3:4b"), &NoRelief).await.expect("recovers");
}

#[tokio::test]
async fn waiting_for_a_slow_start_and_giving_up_on_none() {
    // Nothing listens yet: the wait gives up with Unreachable after its deadline.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("b").local_addr().expect("a").port();
    let t = Timeouts { request: Duration::from_millis(300), connect: Duration::from_millis(200), ..Default::default() };
    let cl = Client::new(ollama_client::parse_host(&format!("127.0.0.1:{port}")).expect("u").url, t);
    let cancel = CancellationToken::new();
    let e = warm::wait_for_api(&cl, Duration::from_millis(500), &cancel).await.expect_err("nobody there");
    assert_eq!(e.exit_code(), code::UNREACHABLE);
    // Ollama shows up late: the wait succeeds.
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        spawn(Config::orin_nano(SCALE), format!("127.0.0.1:{port}").parse().expect("a")).await.expect("binds")
    });
    let v = warm::wait_for_api(&cl, Duration::from_secs(5), &cancel).await.expect("comes up");
    assert_eq!(v, "0.30.6");
    drop(late);
}

#[tokio::test]
async fn restart_of_ollama_is_survived_by_the_next_tick() {
    let h = emu(Config::orin_nano(SCALE)).await;
    let cl = client(&h);
    let s = Settings::default();
    warm::preload(&cl, &s, &m("gemma3:4b"), &NoRelief).await.expect("warm");
    h.restart(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = warm::tick(&cl, &s, &m("gemma3:4b"), &NoRelief).await.expect_err("down");
    assert_eq!(e.exit_code(), code::UNREACHABLE);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = warm::tick(&cl, &s, &m("gemma3:4b"), &NoRelief).await.expect("back");
    assert!(t.rewarmed);
}

async fn other_client(h: &Handle, body: serde_json::Value) -> u16 {
    reqwest::Client::new().post(format!("{}/api/generate", h.url())).json(&body).send().await.expect("sends").status().as_u16()
}

#[tokio::test]
async fn ollama_accepting_but_not_answering_during_discovery_is_not_up_yet_not_a_failure() {
    // server/routes.go Serve answers HTTP only after GPU discovery (3 s here).
    let h = emu(Config::orin_nano(2.0)).await;
    let t = Timeouts { request: Duration::from_millis(400), ..Default::default() };
    let cl = Client::new(ollama_client::parse_host(&h.url()).expect("url").url, t);
    let v = warm::wait_for_api(&cl, Duration::from_secs(20), &CancellationToken::new()).await.expect("comes up after discovery");
    assert_eq!(v, "0.30.6");
}

#[tokio::test]
async fn another_clients_model_evicts_ours_even_pinned_and_the_tick_says_who() {
    let mut c = Config::orin_nano(SCALE);
    c.max_loaded = 1;
    let h = emu(c).await;
    let cl = client(&h);
    let s = Settings::default();
    warm::preload(&cl, &s, &m("gemma4:e2b-8k"), &NoRelief).await.expect("warm");
    assert_eq!(other_client(&h, serde_json::json!({"model": "gemma3:4b"})).await, 200);
    let t = warm::tick(&cl, &s, &m("gemma4:e2b-8k"), &NoRelief).await.expect("re-warmed");
    assert!(t.rewarmed);
    assert_eq!(t.evicted.as_deref(), Some("gemma3:4b is loaded instead: another client's request evicted it"));
}

#[tokio::test]
async fn a_runtime_out_of_memory_is_rewarmed_through_the_out_of_memory_path() {
    // expireRunnersForRuntimeOOM unloads our pinned model; on the board that leaves memory
    // unallocatable, so the re-warm must go through drop_caches, not a blind retry.
    let (_dir, dc, h) = fragile_with_drop_caches().await;
    let cl = client(&h);
    let s = Settings::default();
    warm::preload(&cl, &s, &m("gemma3:4b"), &NoRelief).await.expect("warm");
    reqwest::Client::new().post(format!("{}/_fake/fault", h.url())).json(&serde_json::json!({"kind": "runtime-oom"})).send().await.expect("fault");
    assert_eq!(other_client(&h, serde_json::json!({"model": "gemma3:4b", "prompt": "hi", "stream": false})).await, 500);
    tokio::time::sleep(Duration::from_millis(20)).await; // a distinct mtime for the drop_caches write
    let t = warm::tick(&cl, &s, &m("gemma3:4b"), &DropCaches { path: dc }).await.expect("re-warmed after drop_caches");
    assert!(t.rewarmed && t.dropped_caches, "{t:?}");
}

#[tokio::test]
async fn our_base_loaded_at_our_context_by_another_client_is_our_runner() {
    // server/sched.go schedulerModelKey: gemma4:e2b-8k (FROM gemma4:e2b-it-qat, num_ctx 8192)
    // shares the base's weights file; a runner of the base at 8192 serves us without a reload
    // and /api/ps lists it under the base's name.
    let h = emu(Config::orin_nano(SCALE)).await;
    let cl = client(&h);
    let s = Settings::default();
    let created = reqwest::Client::new().post(format!("{}/api/create", h.url())).json(&serde_json::json!({"model": "gemma4:e2b-8k", "from": "gemma4:e2b-it-qat", "parameters": {"num_ctx": 8192}, "stream": false})).send().await.expect("create");
    assert_eq!(created.status().as_u16(), 200);
    assert_eq!(other_client(&h, serde_json::json!({"model": "gemma4:e2b-it-qat", "keep_alive": -1, "options": {"num_ctx": 8192}})).await, 200);
    let loads = h.emu.counters().loads;
    let r = warm::preload(&cl, &s, &m("gemma4:e2b-8k"), &NoRelief).await.expect("ours, through the shared runner");
    assert_eq!(r.gpu_percent, 100);
    assert_eq!(h.emu.counters().loads, loads, "no reload");
    let t = warm::tick(&cl, &s, &m("gemma4:e2b-8k"), &NoRelief).await.expect("tick");
    assert!(!t.rewarmed, "never a re-warm loop over a name");
}

#[tokio::test]
async fn admission_estimates_against_the_emulators_true_footprints() {
    // Not a precision test (the emulator's weights-in-memory figures come from the seed, not from
    // a GGUF): it prints the table for the notes and bounds the error so a broken estimate shows.
    let mut c = Config::orin_nano(SCALE);
    c.profile.system_available = 64 << 30;
    c.profile.gpu_available = 64 << 30;
    c.max_loaded = 1;
    let h = emu(c.clone()).await;
    let cl = client(&h);
    let mut rows = Vec::new();
    for spec in &c.profile.registry {
        let name = spec.name.clone();
        let _ = cl.pull(&name, |_| {}).await;
        let show = cl.show(&name).await.expect("show");
        let size = cl.tags().await.expect("tags").models.iter().find(|m| m.name == name).map(|m| m.size).expect("listed");
        let est = jetson_llmd::ollama::fit::estimate(size, &show, 4096).expect("architecture keys");
        cl.load(&name, KeepAlive::Forever).await.expect("load");
        let actual = cl.ps().await.expect("ps").models.iter().find(|m| m.name == name).map(|m| m.size).expect("loaded");
        let err = (est as f64 - actual as f64) / actual as f64 * 100.0;
        rows.push(format!("{name:<20} estimate {:>6.2} GiB  actual {:>6.2} GiB  error {err:+5.1}%", est as f64 / (1u64 << 30) as f64, actual as f64 / (1u64 << 30) as f64));
        assert!(err.abs() < 45.0, "{name}: {err:.1}%");
    }
    println!("admission estimate vs emulator footprint at num_ctx 4096:\n{}", rows.join("\n"));
}

#[tokio::test]
async fn bench_reports_the_emulators_speed_within_2_percent_and_leaves_the_model_pinned() {
    let h = emu(Config::orin_nano(SCALE)).await;
    let cl = client(&h);
    warm::preload(&cl, &Settings::default(), &m("gemma4:e2b-8k"), &NoRelief).await.expect("warm");
    let root = tempfile::tempdir().expect("tmp");
    let row = jetson_llmd::report::bench::model(&cl, root.path(), "gemma4:e2b-8k", "hello there", 3, 64).await.expect("bench");
    let want = 25.7; // the Orin Nano profile's gemma4 e2b QAT speed (the seed's table)
    assert!((row.tok_s_median - want).abs() / want < 0.02, "{row:?}");
    assert_eq!((row.runs, row.gpu_percent, row.cold_load_s), (3, 100, None));
    let ps = cl.ps().await.expect("ps");
    assert!(ps.models.iter().any(|x| x.name == "gemma4:e2b-8k" && x.pinned_forever()), "still warm and pinned: {ps:?}");
}

/// `status --watch --json` is a stream: one document per refresh, until SIGINT, which ends it
/// with the health's exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_streams_one_document_per_refresh_until_interrupted() {
    let h = emu(Config::orin_nano(SCALE)).await;
    let root = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(root.path().join("etc/ollama")).expect("mkdir");
    std::fs::write(root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jetson-llmd"))
        .arg("--root")
        .arg(root.path())
        .args(["--json", "status", "--watch", "500ms"])
        .env("OLLAMA_HOST", h.url())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    tokio::time::sleep(Duration::from_millis(1700)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().expect("pid") as i32), nix::sys::signal::Signal::SIGINT).expect("kill");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await.expect("ends after SIGINT").expect("output");
    let docs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    assert!(docs.len() >= 3, "{} documents", docs.len());
    assert!(docs.iter().all(|d| d["ollama"]["reachable"] == true));
    // Reachable, model not loaded: degraded.
    assert_eq!(out.status.code(), Some(1));
}

/// Issue 30: the pinned model re-created under its name with another context (straight at
/// Ollama, where the guard cannot refuse it) and reloaded by the next chat: the residency check
/// says so, and the next tick creates it again as config.toml says and reloads it.
#[tokio::test]
async fn a_pinned_model_redefined_behind_our_back_is_noticed_and_repaired() {
    let h = emu(Config::orin_nano(SCALE)).await;
    let c = client(&h);
    let s = Settings::default();
    let pinned = m("gemma4:e2b-8k");
    warm::preload(&c, &s, &pinned, &NoRelief).await.expect("warm");
    let http = reqwest::Client::new();
    let create = http.post(format!("{}/api/create", h.url())).json(&serde_json::json!({"model": "gemma4:e2b-8k", "from": "gemma4:e2b-it-qat", "parameters": {"num_ctx": 2048}, "stream": false})).send().await.expect("create");
    assert_eq!(create.status(), 200);
    let chat = http.post(format!("{}/api/chat", h.url())).json(&serde_json::json!({"model": "gemma4:e2b-8k", "messages": [{"role": "user", "content": "hi"}], "stream": false})).send().await.expect("chat");
    assert_eq!(chat.status(), 200);
    assert_eq!(h.emu.runner("gemma4:e2b-8k").expect("loaded").options.num_ctx, 2048, "the emulator reloaded it with the new definition");
    assert_eq!(warm::residency(&c, &s, &pinned).await.expect("ps"), warm::Residency::Drifted { want: 8192, got: 2048 });
    let r = warm::tick(&c, &s, &pinned, &NoRelief).await.expect("repaired");
    assert!(r.pinned);
    assert_eq!(h.emu.runner("gemma4:e2b-8k").expect("loaded").options.num_ctx, 8192);
    assert_eq!(warm::residency(&c, &s, &pinned).await.expect("ps"), warm::Residency::Pinned);
    // The definition itself is back: the next client's chat does not reload it.
    let loads = h.emu.counters().loads;
    http.post(format!("{}/api/chat", h.url())).json(&serde_json::json!({"model": "gemma4:e2b-8k", "messages": [{"role": "user", "content": "hi"}], "stream": false})).send().await.expect("chat");
    assert_eq!(h.emu.counters().loads, loads);
}
