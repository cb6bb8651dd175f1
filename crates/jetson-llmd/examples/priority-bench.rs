//! Priorities between clients (docs/guard.md "Classes"), measured: a batch client keeping 50
//! requests in flight (an indexer) and an interactive client sending one chat every few
//! seconds (a person). The interactive client's time to first token, direct to Ollama, through
//! the guard without classes, and through the guard with the interactive class first; and the
//! batch client's throughput. `jetson-llmd supervise --launcher process` with the guard on and
//! fake-ollama as its child, OLLAMA_NUM_PARALLEL=1 (the Orin Nano default), generation at the
//! Orin profile's speed for gemma4 (25.7 tokens/s) with every delay scaled by TIME_SCALE so
//! the run takes minutes, not hours. The classes are turned on by a SIGHUP, as a user would.
//!
//! Usage: priority-bench --bin DIR [--quick] [--markdown FILE]

mod common;

use common::{free_port, Supervisor};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PINNED: &str = "gemma4:e2b-8k";
/// Emulated delays are multiplied by this: a 128-token batch generation (5 s on the board)
/// takes 100 ms here.
const TIME_SCALE: f64 = 0.02;
const BATCH_TOKENS: u64 = 128;
const CHAT_TOKENS: u64 = 48;
const IN_FLIGHT: usize = 50;
/// "One chat every few seconds": 3 s on the board.
const CHAT_GAP: Duration = Duration::from_millis(60);

fn config(guard: u16, metrics: u16, classes: bool) -> String {
    let mut c = format!("metrics_listen = \"127.0.0.1:{metrics}\"\n[guard]\nenabled = true\nlisten = \"127.0.0.1:{guard}\"\n");
    if classes {
        c.push_str("class_header = \"X-Client-Class\"\n[[guard.class]]\nname = \"chat\"\npriority = 10\n[[guard.class]]\nname = \"batch\"\npriority = -10\nmax_wait = \"1h\"\n");
    }
    c
}

fn start(bin: &Path, ollama: u16, guard: u16, metrics: u16) -> Supervisor {
    let root = tempfile::tempdir().expect("tmp");
    let r = root.path();
    for d in ["etc/ollama", "etc/jetson-llmd", "proc/sys/vm"] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    std::fs::write(r.join("etc/ollama/model.conf"), format!("OLLAMA_MODEL={PINNED}\n")).expect("w");
    std::fs::write(r.join("proc/sys/vm/drop_caches"), "").expect("w");
    std::fs::write(r.join("etc/jetson-llmd/config.toml"), config(guard, metrics, false)).expect("w");
    let child = Command::new(bin.join("jetson-llmd"))
        .arg("--root")
        .arg(r)
        .args(["supervise", "--launcher", "process", "--ollama-bin"])
        .arg(bin.join("fake-ollama"))
        .env("OLLAMA_HOST", format!("127.0.0.1:{ollama}"))
        .env("OLLAMA_NUM_PARALLEL", "1")
        .env("FAKE_OLLAMA_TIME_SCALE", TIME_SCALE.to_string())
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start jetson-llmd supervise");
    Supervisor { child, root }
}

/// A streamed chat: time to its first token.
async fn chat(http: &reqwest::Client, port: u16) -> Duration {
    let t0 = Instant::now();
    let mut resp = http
        .post(format!("http://127.0.0.1:{port}/api/chat"))
        .header("x-client-class", "chat")
        .json(&serde_json::json!({"model": PINNED, "messages": [{"role": "user", "content": "what is on my calendar today?"}], "options": {"num_predict": CHAT_TOKENS}}))
        .send()
        .await
        .expect("send");
    assert!(resp.status().is_success(), "chat: HTTP {}", resp.status());
    let mut first = None;
    while let Some(c) = resp.chunk().await.expect("chunk") {
        if first.is_none() && !c.is_empty() {
            first = Some(t0.elapsed());
        }
    }
    first.unwrap_or_else(|| t0.elapsed())
}

/// The indexer: `IN_FLIGHT` requests always outstanding until `stop`; counts completions.
fn batch(http: &reqwest::Client, port: u16, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..IN_FLIGHT)
        .map(|i| {
            let (http, stop, done) = (http.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = http
                        .post(format!("http://127.0.0.1:{port}/api/generate"))
                        .header("x-client-class", "batch")
                        .json(&serde_json::json!({"model": PINNED, "prompt": format!("summarise document {i}"), "stream": false, "options": {"num_predict": BATCH_TOKENS}}))
                        .send()
                        .await;
                    if let Ok(r) = r {
                        if r.status().is_success() && r.bytes().await.is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}

struct Run {
    ttft_ms: Vec<f64>,
    /// Batch requests completed per second during the interactive samples.
    batch_per_s: f64,
}

/// `chats` interactive requests against `port` (no batch load when `with_batch` is false).
async fn run(http: &reqwest::Client, port: u16, chats: usize, with_batch: bool) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks = if with_batch { batch(http, port, stop.clone(), done.clone()) } else { Vec::new() };
    if with_batch {
        // Let the backlog build up: every batch request in the queue.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (t0, d0) = (Instant::now(), done.load(Ordering::Relaxed));
    let mut ttft_ms = Vec::new();
    for _ in 0..chats {
        tokio::time::sleep(CHAT_GAP).await;
        ttft_ms.push(chat(http, port).await.as_secs_f64() * 1e3);
    }
    let batch_per_s = (done.load(Ordering::Relaxed) - d0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    drain(http).await;
    Run { ttft_ms, batch_per_s }
}

/// Batch alone for `window`: completions per second.
async fn batch_alone(http: &reqwest::Client, port: u16, window: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks = batch(http, port, stop.clone(), done.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (t0, d0) = (Instant::now(), done.load(Ordering::Relaxed));
    tokio::time::sleep(window).await;
    let rate = (done.load(Ordering::Relaxed) - d0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    drain(http).await;
    rate
}

static OLLAMA: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

/// Waits until Ollama's queue is empty: a one-token request sent straight to it is served
/// after whatever the aborted clients left there (its semaphore is first come, first served).
async fn drain(http: &reqwest::Client) {
    let port = OLLAMA.get().copied().expect("port");
    let r = http.post(format!("http://127.0.0.1:{port}/api/generate")).json(&serde_json::json!({"model": PINNED, "prompt": "x", "stream": false, "options": {"num_predict": 1}})).send().await;
    if let Ok(r) = r {
        let _ = r.bytes().await;
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn wait_for(http: &reqwest::Client, url: &str, want: &str) {
    let t = Instant::now();
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status() == 200 && r.text().await.is_ok_and(|t| t.contains(want)) {
                return;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{url} never showed {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let bin = args.iter().position(|a| a == "--bin").and_then(|i| args.get(i + 1)).map(PathBuf::from).expect("--bin DIR (where jetson-llmd and fake-ollama are)");
    let out = args.iter().position(|a| a == "--markdown").and_then(|i| args.get(i + 1)).map(PathBuf::from);
    let (ollama, guard, metrics) = (free_port(), free_port(), free_port());
    let _ = OLLAMA.set(ollama);
    let sup = start(&bin, ollama, guard, metrics);
    let http = reqwest::Client::builder().pool_max_idle_per_host(IN_FLIGHT * 2).build().expect("client");
    wait_for(&http, &format!("http://127.0.0.1:{guard}/healthz"), "ok").await;
    // (slow backlogs: few samples; fast ones: more)
    let (n_slow, n_fast, window) = if quick { (1, 3, Duration::from_secs(1)) } else { (12, 40, Duration::from_secs(10)) };

    let idle = run(&http, ollama, n_fast, false).await;
    let direct = run(&http, ollama, n_slow, true).await;
    let no_classes = run(&http, guard, n_slow, true).await;
    let batch_direct = batch_alone(&http, ollama, window).await;

    // `systemctl reload jetson-llmd`: the classes apply to the running guard.
    std::fs::write(sup.root.path().join("etc/jetson-llmd/config.toml"), config(guard, metrics, true)).expect("w");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup.child.id() as i32), nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    wait_for(&http, &format!("http://127.0.0.1:{metrics}/metrics"), "jetson_llmd_guard_queue_depth{class=\"chat\"}").await;
    let classes = run(&http, guard, n_fast, true).await;
    let batch_classes = batch_alone(&http, guard, window).await;
    let idle_guard = run(&http, guard, n_fast, false).await;

    // One generation's time on this scale: a batch request alone, end to end.
    let t = Instant::now();
    let r = http.post(format!("http://127.0.0.1:{ollama}/api/generate")).json(&serde_json::json!({"model": PINNED, "prompt": "summarise document 0", "stream": false, "options": {"num_predict": BATCH_TOKENS}})).send().await.expect("send");
    let _ = r.bytes().await;
    let generation_ms = t.elapsed().as_secs_f64() * 1e3;

    let board = |ms: f64| ms / TIME_SCALE / 1e3;
    let row = |name: &str, r: &Run, n: usize| {
        format!(
            "| {name} | {n} | {:.0} ms ({:.1} s) | {:.0} ms ({:.1} s) | {} |\n",
            pct(&r.ttft_ms, 50.0),
            board(pct(&r.ttft_ms, 50.0)),
            pct(&r.ttft_ms, 95.0),
            board(pct(&r.ttft_ms, 95.0)),
            if r.batch_per_s > 0.0 { format!("{:.2}/s", r.batch_per_s) } else { "-".into() }
        )
    };
    let mut md = String::new();
    md.push_str(&format!(
        "Machine: {} cores, {}; release build; fake-ollama with OLLAMA_NUM_PARALLEL=1 and the Orin profile's gemma4 speed, every delay x{TIME_SCALE} (the board's seconds in brackets); batch: {IN_FLIGHT} requests of {BATCH_TOKENS} tokens always in flight; interactive: a {CHAT_TOKENS}-token streamed chat every {:.0} s (board); {} mode.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::env::consts::ARCH,
        CHAT_GAP.as_secs_f64() / TIME_SCALE,
        if quick { "quick (harness check only)" } else { "full" }
    ));
    md.push_str("| interactive client | chats | time to first token, median (board) | p95 (board) | batch completions meanwhile |\n|---|---|---|---|---|\n");
    md.push_str(&row("idle board, direct to Ollama", &idle, n_fast));
    md.push_str(&row("idle board, through the guard with classes", &idle_guard, n_fast));
    md.push_str(&row("batch backlog, direct to Ollama", &direct, n_slow));
    md.push_str(&row("batch backlog, through the guard without classes", &no_classes, n_slow));
    md.push_str(&row("batch backlog, through the guard, interactive class first", &classes, n_fast));
    let goal_ttft = pct(&idle.ttft_ms, 95.0) + generation_ms;
    let p95 = pct(&classes.ttft_ms, 95.0);
    md.push_str(&format!(
        "\nOne batch generation takes {generation_ms:.0} ms here ({:.1} s on the board). Goal: with classes, the interactive p95 within one generation of the idle board's: {p95:.0} ms against {goal_ttft:.0} ms: **{}**.\n",
        board(generation_ms),
        if p95 <= goal_ttft { "met" } else { "not met" }
    ));
    let drop = (1.0 - batch_classes / batch_direct.max(1e-9)) * 100.0;
    md.push_str(&format!(
        "Batch throughput alone over {} s: direct {batch_direct:.2}/s, through the guard in its class {batch_classes:.2}/s ({drop:.1}% lower; goal: less than 5%): **{}**.\n",
        window.as_secs(),
        if drop < 5.0 { "met" } else { "not met" }
    ));
    print!("{md}");
    if let Some(p) = out {
        std::fs::write(&p, md).expect("write the table");
    }
}
