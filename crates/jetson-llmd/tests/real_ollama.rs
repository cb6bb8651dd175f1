//! The real Ollama as the peer (`--ignored`; `scripts/test` runs these when `scripts/real-ollama`
//! could build it). The supervisor under the process launcher runs a real `ollama serve`
//! (v0.24.0 on the CPU, `expected_compute = "cpu"`) with the tiny test models that
//! `scripts/real-ollama seed` created in REAL_OLLAMA_MODELS. What the emulator cannot prove,
//! this does: Ollama's own scheduler, keep_alive, eviction, reload rules, JSON decoding and
//! routing. A reload shows as a new runner process under `ollama serve`.
//!
//! Environment: REAL_OLLAMA_BIN (the binary), REAL_OLLAMA_MODELS (OLLAMA_MODELS with tiny-a and
//! tiny-b). Without them each test fails with a line saying how to get them.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn need(var: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_default();
    assert!(p.exists(), "{var} is not set or missing: run ./scripts/test, or scripts/real-ollama and scripts/real-ollama seed (see tests/README.md)");
    p
}

/// The peer's version as its binary says it ("0.24.0", "0.34.4"): the suite runs every scenario
/// against each peer scripts/test built, and a few facts differ between them.
fn peer_version() -> String {
    let o = Command::new(need("REAL_OLLAMA_BIN")).arg("--version").env("OLLAMA_HOST", "127.0.0.1:1").output().expect("ollama --version");
    let t = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    t.split_whitespace().last().unwrap_or_default().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).no_proxy().build().expect("client")
}

async fn get(port: u16, path: &str) -> (u16, Value) {
    match http().get(format!("http://127.0.0.1:{port}{path}")).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// POSTs raw bytes; the last JSON line of the answer.
async fn post(port: u16, path: &str, body: &str) -> (u16, Value) {
    let r = http().post(format!("http://127.0.0.1:{port}{path}")).header("content-type", "application/json").body(body.to_string()).send().await.expect("post");
    let s = r.status().as_u16();
    let t = r.text().await.unwrap_or_default();
    (s, t.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null))
}

/// Pids of the direct children of `pid` (Ollama's runners under `ollama serve`).
fn children(pid: u32) -> Vec<u32> {
    let o = Command::new("pgrep").args(["-P", &pid.to_string()]).output().expect("pgrep");
    String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// `extra` with the short checks the suite uses where it does not set them.
fn defaults(extra: &str) -> String {
    let mut t = extra.to_string();
    for (k, v) in [("keepalive_interval", "10s"), ("residency_check", "5s")] {
        if !extra.contains(k) {
            t.push_str(&format!("{k} = \"{v}\"\n"));
        }
    }
    t
}

struct Rig {
    root: tempfile::TempDir,
    port: u16,
    guard: u16,
    child: Child,
}

impl Rig {
    /// The supervisor with the guard on `guard`, Ollama on `port`, model.conf naming `model`.
    fn start(model: &str) -> Rig {
        Rig::start_with(model, "")
    }

    /// As [`Rig::start`], with more config.toml lines (top-level keys, before the tables).
    fn start_with(model: &str, extra: &str) -> Rig {
        let (bin, models) = (need("REAL_OLLAMA_BIN"), need("REAL_OLLAMA_MODELS"));
        let root = tempfile::tempdir().expect("tmp");
        let (port, guard) = (free_port(), free_port());
        for d in ["etc/ollama", "etc/jetson-llmd", "proc/sys/vm"] {
            std::fs::create_dir_all(root.path().join(d)).expect("mkdir");
        }
        std::fs::write(root.path().join("etc/ollama/model.conf"), format!("OLLAMA_MODEL={model}\n")).expect("w");
        std::fs::write(root.path().join("proc/sys/vm/drop_caches"), "").expect("w");
        // The shortest checks config.toml allows, so that repairs happen within seconds.
        std::fs::write(
            root.path().join("etc/jetson-llmd/config.toml"),
            format!("expected_compute = \"cpu\"\n{}metrics_listen = \"off\"\nload_timeout = \"2m\"\n[guard]\nenabled = true\nlisten = \"127.0.0.1:{guard}\"\nready_wait = \"30s\"\n", defaults(extra)),
        )
        .expect("w");
        let log = std::fs::File::create(root.path().join("supervise.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_jetson-llmd"))
            .arg("--root")
            .arg(root.path())
            .args(["supervise", "--launcher", "process", "--ollama-bin"])
            .arg(&bin)
            .env("OLLAMA_HOST", format!("127.0.0.1:{port}"))
            .env("OLLAMA_MODELS", &models)
            // v0.34 reaches out at start-up otherwise (server/model_recommendations.go).
            .env("OLLAMA_NO_CLOUD", "1")
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn");
        Rig { root, port, guard, child }
    }

    fn state(&self) -> Value {
        std::fs::read_to_string(self.root.path().join("run/jetson-llmd/state.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("supervise.log")).unwrap_or_default()
    }

    fn ollama_pid(&self) -> Option<u32> {
        children(self.child.id()).into_iter().next()
    }

    fn runners(&self) -> Vec<u32> {
        self.ollama_pid().map(children).unwrap_or_default()
    }

    async fn until(&self, what: &str, secs: u64, mut f: impl AsyncFnMut(&Rig) -> bool) {
        let t = Instant::now();
        while !f(self).await {
            assert!(t.elapsed() < Duration::from_secs(secs), "timed out after {secs} s waiting for {what}\nstate: {:#}\nlog:\n{}", self.state(), self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The model Ollama lists, and whether it is pinned (keep_alive -1 shows an expiry centuries
    /// away: server/sched.go sets expiresAt from math.MaxInt64 nanoseconds).
    async fn ps(&self) -> Vec<(String, bool)> {
        let (_, v) = get(self.port, "/api/ps").await;
        let year = |m: &Value| m["expires_at"].as_str().and_then(|e| e.get(..4)).and_then(|y| y.parse::<u32>().ok()).unwrap_or(0);
        v["models"].as_array().map(|a| a.iter().map(|m| (m["name"].as_str().unwrap_or("").to_string(), year(m) > 2200)).collect()).unwrap_or_default()
    }

    async fn warm_pinned(&self, model: &str, secs: u64) {
        let want = vec![(format!("{model}:latest"), true)];
        self.until(&format!("{model} alone, loaded and pinned"), secs, async |r| r.state()["stage"] == "ready" && r.ps().await == want).await;
    }

    fn signal(&self, pid: u32, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let t = Instant::now();
            while self.child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(15) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn events(s: &Value) -> Vec<String> {
    s["timeline"].as_array().map(|a| a.iter().map(|e| e["event"].as_str().unwrap_or("").to_string()).collect()).unwrap_or_default()
}

/// Boot to warm and pinned; a client's keep_alive 0 and an eviction by another model (both
/// straight to Ollama, past the guard) repaired; Ollama killed and warm again; a model.conf edit
/// switching tiny-a to tiny-b; SIGTERM taking Ollama and its runner along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real Ollama: REAL_OLLAMA_BIN and REAL_OLLAMA_MODELS (scripts/test)"]
async fn the_supervisor_keeps_a_real_ollama_warm() {
    let mut rig = Rig::start("tiny-a");
    rig.warm_pinned("tiny-a", 120).await;
    let s = rig.state();
    assert_eq!(events(&s), ["ollama started", "API ready", "CPU as expected", "model warm", "keepalive running"], "{s:#}");
    assert_eq!(s["gpu"]["library"], "cpu");
    assert_eq!(s["gpu"]["as_expected"], true);
    assert_eq!(s["gpu"]["ollama_version"].as_str(), Some(peer_version().as_str()), "{s:#}");
    let runner = rig.runners();
    assert_eq!(runner.len(), 1, "one runner for tiny-a: {runner:?}");

    // Another client unloads it (keep_alive 0, straight to Ollama): the residency check re-warms.
    let (code, _) = post(rig.port, "/api/generate", r#"{"model":"tiny-a","keep_alive":0}"#).await;
    assert_eq!(code, 200);
    rig.until("tiny-a unloaded by the client", 30, async |r| r.ps().await.is_empty()).await;
    rig.until("tiny-a re-warmed", 60, async |r| r.state()["rewarm_count"].as_u64() >= Some(1) && r.ps().await == [("tiny-a:latest".to_string(), true)]).await;

    // Another model straight to Ollama: OLLAMA_MAX_LOADED_MODELS=1 evicts the pinned one
    // (server/sched.go: keep_alive -1 does not protect a runner from eviction).
    let (code, _) = post(rig.port, "/api/generate", r#"{"model":"tiny-b","prompt":"hi","options":{"num_predict":2}}"#).await;
    assert_eq!(code, 200);
    rig.until("tiny-a back after the eviction", 60, async |r| r.state()["rewarm_count"].as_u64() >= Some(2) && r.ps().await == [("tiny-a:latest".to_string(), true)]).await;

    // Ollama killed: restarted and warm again, and the killed one's runner (which outlives
    // `ollama serve` and holds the model's memory) is gone.
    let ollama = rig.ollama_pid().expect("ollama serve runs");
    let old_runners = rig.runners();
    assert!(!old_runners.is_empty());
    rig.signal(ollama, nix::sys::signal::Signal::SIGKILL);
    rig.until("a new ollama serve", 30, async |r| r.ollama_pid().is_some_and(|p| p != ollama)).await;
    rig.warm_pinned("tiny-a", 120).await;
    for p in old_runners {
        assert!(!alive(p), "the killed Ollama's runner {p} still runs beside the new one");
    }

    // model.conf edited: tiny-b replaces tiny-a.
    std::fs::write(rig.root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=tiny-b\n").expect("w");
    rig.until("tiny-b named in the state", 60, async |r| r.state()["model"] == "tiny-b").await;
    rig.warm_pinned("tiny-b", 120).await;

    // SIGTERM: we stop, and take Ollama and its runner along.
    let (ollama, runners) = (rig.ollama_pid().expect("ollama"), rig.runners());
    assert!(!runners.is_empty());
    rig.signal(rig.child.id(), nix::sys::signal::Signal::SIGTERM);
    let t = Instant::now();
    let code = loop {
        if let Some(s) = rig.child.try_wait().expect("wait") {
            break s.code();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no exit within 30 s of SIGTERM\n{}", rig.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(0), "{}", rig.log());
    std::thread::sleep(Duration::from_millis(300));
    for p in std::iter::once(ollama).chain(runners) {
        assert!(!alive(p), "pid {p} outlived the supervisor");
    }
}

/// The guard in front of the real Ollama with raw requests shaped as Go decodes them. Each would
/// make Ollama reload, unload or evict the pinned model if it reached it unchecked; the
/// runner process of the pinned model must be the same one at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real Ollama: REAL_OLLAMA_BIN and REAL_OLLAMA_MODELS (scripts/test)"]
async fn the_guard_keeps_the_real_runner() {
    let rig = Rig::start("tiny-a");
    rig.warm_pinned("tiny-a", 120).await;
    let runner = rig.runners();
    assert_eq!(runner.len(), 1);
    let g = rig.guard;
    // What real clients send: options that force a reload are dropped, keep_alive is removed.
    let (code, v) = post(g, "/api/generate", r#"{"model":"tiny-a","prompt":"hi","options":{"num_ctx":1024,"num_predict":2},"keep_alive":0}"#).await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = post(g, "/api/chat", r#"{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_predict":2},"keep_alive":"5m"}"#).await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = post(g, "/api/generate", r#"{"model":"tiny-b","prompt":"hi"}"#).await;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("tiny-a")), "Ollama's error shape, naming the pinned model: {v}");
    // The hostile corpus: shapes Go's decoder and gin's router read differently from a naive
    // JSON parser. Each would load tiny-b, unload tiny-a or reload it if it reached Ollama as sent.
    let raw = |method: &'static str, path: &'static str, body: &'static str| async move {
        let r = http().request(method.parse().expect("method"), format!("http://127.0.0.1:{g}{path}")).body(body.as_bytes().to_vec()).send().await.expect("send");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    let corpus: &[(&str, &str, &str)] = &[
        ("POST", "/api/generate", r#"{"Model":"tiny-b"}"#),
        ("POST", "/api/generate", r#"{"model":"tiny-a","MODEL":"tiny-b"}"#),
        ("POST", "/api/generate", r#"{"model":"tiny-b"} {"model":"tiny-a"}"#),
        ("POST", "/api/generate", r#"{"model":"TINY-B"}"#),
        ("POST", "/api/generate", r#"{"model":" tiny-b "}"#),
        ("POST", "/api/generate", r#"{"model":"tiny-b:local"}"#),
        ("POST", "/api/generate", r#"{"model":"tiny-a","KEEP_ALIVE":0}"#),
        ("POST", "/api/generate", "{\"model\":\"tiny-a\",\"\u{212A}eep_alive\":0}"),
        ("POST", "/api/generate", r#"{"model":"tiny-a","keep_alive":"0s"}"#),
        ("POST", "/api/generate", r#"{"model":"TINY-A","keep_alive":0}"#),
        ("POST", "/api/generate", r#"{"model":"tiny-a","Options":{"num_ctx":1024}}"#),
        ("POST", "/api/generate", r#"{"model":"tiny-a","options":{"num_thread":1,"use_mmap":false,"num_batch":64}}"#),
        ("POST", "/api/%67enerate", r#"{"model":"tiny-b"}"#),
        ("POST", "/api%2Fgenerate", r#"{"model":"tiny-b"}"#),
        ("DELETE", "/api/%64elete", r#"{"model":"tiny-a"}"#),
        ("POST", "//api/generate", r#"{"model":"tiny-b"}"#),
        ("POST", "/api/chat", r#"{"Model":"tiny-b","messages":[{"role":"user","content":"hi"}]}"#),
        ("POST", "/v1/chat/completions", r#"{"MODEL":"tiny-b","messages":[{"role":"user","content":"hi"}]}"#),
        ("POST", "/api/embed", r#"{"model":"tiny-b","input":"hi"}"#),
    ];
    for (m, path, body) in corpus {
        let (code, text) = raw(m, path, body).await;
        assert!(code == 200 || (400..500).contains(&code), "{m} {path} {body}: {code} {text}");
        assert_eq!(rig.runners(), runner, "{m} {path} {body} ({code} {text}) replaced the pinned runner\n{}", rig.log());
        assert_eq!(rig.ps().await, [("tiny-a:latest".to_string(), true)], "{m} {path} {body} ({code} {text})");
    }
    // The official Python client and the OpenAI SDK, when Python has them.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/official_clients.py");
    let o = Command::new("python3").arg(&script).arg(format!("http://127.0.0.1:{g}")).args(["tiny-a", "tiny-b"]).output().expect("python3");
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("official clients: ok"), "{out}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.runners(), runner, "the pinned model's runner was replaced (a reload)\n{}", rig.log());
    assert_eq!(rig.ps().await, [("tiny-a:latest".to_string(), true)]);
    assert_eq!(rig.state()["rewarm_count"], 0, "{:#}", rig.state());
    // Straight to Ollama, a num_ctx does reload: the check above can fail.
    let (code, _) = post(rig.port, "/api/generate", r#"{"model":"tiny-a","prompt":"hi","options":{"num_ctx":1024,"num_predict":1}}"#).await;
    assert_eq!(code, 200);
    assert_ne!(rig.runners(), runner, "Ollama reloads for a new num_ctx (server/sched.go needsReload)");
}

/// The north star compressed into real time against the real Ollama (issue 20): the same kinds
/// of client through the guard, every few seconds instead of every few minutes, and `ollama
/// serve` killed every 30 s. What is measured is what Ollama reports: the pinned model in
/// /api/ps with an expiry centuries away, sampled every 200 ms; and every replacement of its
/// runner process, each of which must follow a kill. REAL_NORTH_STAR_SECS sets the span
/// (60 s in the suite; 3600 for the hour, opt-in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real Ollama: REAL_OLLAMA_BIN and REAL_OLLAMA_MODELS (scripts/test)"]
async fn a_compressed_north_star_against_the_real_ollama() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let secs: u64 = std::env::var("REAL_NORTH_STAR_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let rig = Rig::start("tiny-a");
    rig.warm_pinned("tiny-a", 120).await;
    let g = rig.guard;
    let end = Instant::now() + Duration::from_secs(secs);
    let (sent, ok, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let shapes: [(&str, &str, u64); 6] = [
        ("/api/chat", r#"{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_ctx":NUMCTX,"num_predict":2}}"#, 3),
        ("/api/generate", r#"{"model":"tiny-a","prompt":"summarise","stream":false,"options":{"num_ctx":NUMCTX,"num_predict":2}}"#, 2),
        ("/api/chat", r#"{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false,"keep_alive":"5m","options":{"num_predict":2}}"#, 4),
        ("/api/generate", r#"{"model":"tiny-a","prompt":"hi","stream":false,"keep_alive":0,"options":{"num_predict":2}}"#, 6),
        ("/v1/chat/completions", r#"{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#, 3),
        ("/api/generate", r#"{"model":"tiny-b","prompt":"hi","stream":false}"#, 8),
    ];
    let mut tasks = Vec::new();
    for (i, (path, body, every)) in shapes.into_iter().enumerate() {
        let (sent, ok, refused) = (sent.clone(), ok.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut turn = 0u64;
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(every * 1000 + (i as u64 * 137) % 500)).await;
                turn += 1;
                let body = body.replace("NUMCTX", &(512 + 256 * (turn % 8)).to_string());
                sent.fetch_add(1, Ordering::Relaxed);
                let (code, _) = post(g, path, &body).await;
                match code {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    409 => refused.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
            }
        }));
    }
    // Sample warmth and runners; kill `ollama serve` every 30 s.
    let (mut samples, mut warm, mut kills) = (0u64, 0u64, 0u64);
    let (mut longest, mut run) = (Duration::ZERO, None::<Instant>);
    let mut runner = rig.runners();
    let mut replaced_after_kill = 0u64;
    let mut unexplained = Vec::new();
    let mut next_kill = Instant::now() + Duration::from_secs(30);
    let mut killed_since = false;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        samples += 1;
        if rig.ps().await == [("tiny-a:latest".to_string(), true)] {
            warm += 1;
            if let Some(t) = run.take() {
                longest = longest.max(t.elapsed());
            }
        } else if run.is_none() {
            run = Some(Instant::now());
        }
        let now = rig.runners();
        if !now.is_empty() && now != runner {
            if killed_since {
                replaced_after_kill += 1;
                killed_since = false;
            } else {
                unexplained.push(format!("runner {runner:?} -> {now:?}"));
            }
            runner = now;
        }
        if Instant::now() >= next_kill {
            if let Some(pid) = rig.ollama_pid() {
                rig.signal(pid, nix::sys::signal::Signal::SIGKILL);
                kills += 1;
                killed_since = true;
            }
            next_kill = Instant::now() + Duration::from_secs(30);
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let share = warm as f64 / samples.max(1) as f64;
    let (sent, ok, refused) = (sent.load(Ordering::Relaxed), ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    assert!(unexplained.is_empty(), "the runner was replaced without a kill (a client caused a reload): {unexplained:?}\n{}", rig.log());
    assert!(sent > 0 && ok > 0, "traffic: {sent} sent, {ok} answered");
    let md = format!(
        "Written by `RELIABILITY_DOCS=1 REAL_NORTH_STAR_SECS={secs} cargo test -p jetson-llmd --test real_ollama -- --ignored a_compressed_north_star` (the real Ollama {peer} on this machine's CPU with the tiny test model; the supervisor with the process launcher and the guard; `ollama serve` killed every 30 s).\n\n\
| figure | result |\n|---|---|\n\
| span | {secs} s, {kills} kills of `ollama serve` |\n\
| time warm (the model pinned in /api/ps, sampled every 200 ms) | {:.2}% |\n\
| longest stretch not warm | {:.1} s |\n\
| runner replaced | {replaced_after_kill} times, each after a kill; 0 otherwise (no reload caused by a client) |\n\
| client requests through the guard | {sent}: {ok} answered, {refused} refused as another model |\n",
        share * 100.0,
        longest.as_secs_f64(),
        peer = peer_version(),
    );
    print!("{md}");
    if std::env::var_os("RELIABILITY_DOCS").is_some() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/reliability.md");
        let doc = std::fs::read_to_string(&path).expect("docs/reliability.md");
        let (b, e) = ("<!-- north-star-real:begin -->", "<!-- north-star-real:end -->");
        if let (Some(i), Some(j)) = (doc.find(b), doc.find(e)) {
            std::fs::write(&path, format!("{}{b}\n{md}{}", &doc[..i], &doc[j..])).expect("write");
        }
    }
}

/// The pinned model's runner SIGKILLed (what the kernel's OOM killer does to llama-server on an
/// 8 GB board, ollama#18396) with nobody asking. Ollama 0.34 keeps listing the model in /api/ps
/// until a request touches it: readiness must drop at once anyway, name the cause, and a new
/// runner must serve the model without a client paying for it (issue 32).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real Ollama: REAL_OLLAMA_BIN and REAL_OLLAMA_MODELS (scripts/test)"]
async fn a_killed_runner_is_seen_at_once_and_replaced() {
    let rig = Rig::start("tiny-a");
    rig.warm_pinned("tiny-a", 120).await;
    let (code, _) = get(rig.guard, "/healthz").await;
    assert_eq!(code, 200);
    let runner = rig.runners();
    assert_eq!(runner.len(), 1, "{runner:?}");
    let t = Instant::now();
    rig.signal(runner[0], nix::sys::signal::Signal::SIGKILL);
    rig.until("not ready after the runner's death", 5, async |r| r.state()["stage"] != "ready").await;
    let seen = t.elapsed();
    let status = rig.state()["status"].as_str().unwrap_or_default().to_string();
    assert!(status.contains("runner") && status.contains(&runner[0].to_string()), "the cause is named: {status}");
    // A new runner, by the supervisor's own doing: no client has asked anything.
    rig.until("a new runner serving tiny-a, ready again", 60, async |r| {
        let now = r.runners();
        r.state()["stage"] == "ready" && now.len() == 1 && now != runner
    })
    .await;
    let back = t.elapsed();
    assert_eq!(rig.ps().await, [("tiny-a:latest".to_string(), true)]);
    let (code, _) = get(rig.guard, "/healthz").await;
    assert_eq!(code, 200);
    assert!(rig.log().contains("SIGKILL") || rig.log().contains("exited"), "{}", rig.log());
    println!("runner killed: not ready after {} ms, a new runner ready after {} ms ({})", seen.as_millis(), back.as_millis(), peer_version());
}

/// A client's keep_alive 0 straight to Ollama ends the runner process (0.34: the runner exits
/// on unload): the supervisor sees the exit and re-warms at once, not at its next residency
/// check (docs/performance.md measured +5 s before the runner watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real Ollama: REAL_OLLAMA_BIN and REAL_OLLAMA_MODELS (scripts/test)"]
async fn an_unload_behind_the_guards_back_is_repaired_at_once() {
    // Both checks 5 minutes apart: only the runner watch can see the unload in time.
    let rig = Rig::start_with("tiny-a", "residency_check = \"5m\"\nkeepalive_interval = \"5m\"\n");
    rig.warm_pinned("tiny-a", 120).await;
    let runner = rig.runners();
    assert_eq!(runner.len(), 1, "{runner:?}");
    let t = Instant::now();
    let (code, _) = post(rig.port, "/api/generate", r#"{"model":"tiny-a","keep_alive":0}"#).await;
    assert_eq!(code, 200);
    rig.until("the unloaded runner's process ended", 30, async |_| !alive(runner[0])).await;
    // Within a fraction of the 5-minute residency check: only the watch can have seen it.
    rig.until("tiny-a pinned again by a new runner", 20, async |r| r.ps().await == [("tiny-a:latest".to_string(), true)] && r.runners().len() == 1 && r.runners() != runner).await;
    println!("unload repaired after {} ms ({})", t.elapsed().as_millis(), peer_version());
    assert!(rig.state()["rewarm_count"].as_u64() >= Some(1), "{:#}", rig.state());
}

/// A stuck runner: alive but answering nothing (SIGSTOP: a hung llama-server). /api/ps stays
/// green. The keepalive's load request makes Ollama ping the runner before it reuses it
/// (server/sched.go needsReload: `runner.llama.Ping` with a 10-s deadline), so the tick, which
/// costs no token, is the check: within one keepalive interval and the ping's deadline the
/// stopped runner is replaced and the model served again, no client having paid for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real Ollama: REAL_OLLAMA_BIN and REAL_OLLAMA_MODELS (scripts/test)"]
async fn a_stopped_runner_is_replaced_within_a_keepalive_interval() {
    let rig = Rig::start_with("tiny-a", "keepalive_interval = \"10s\"\nresidency_check = \"5m\"\n");
    rig.warm_pinned("tiny-a", 120).await;
    let runner = rig.runners();
    assert_eq!(runner.len(), 1, "{runner:?}");
    let t = Instant::now();
    rig.signal(runner[0], nix::sys::signal::Signal::SIGSTOP);
    // 10 s to the tick, Ollama's 10-s ping, the reload, and slack for a busy machine.
    rig.until("a new runner in place of the stopped one, ready", 60, async |r| {
        let now = r.runners();
        r.state()["stage"] == "ready" && now.len() == 1 && now != runner && !alive(runner[0])
    })
    .await;
    println!("stopped runner replaced after {} ms ({})", t.elapsed().as_millis(), peer_version());
    let (code, v) = post(rig.guard, "/api/generate", r#"{"model":"tiny-a","prompt":"hi","stream":false,"options":{"num_predict":2}}"#).await;
    assert_eq!(code, 200, "{v}");
}
