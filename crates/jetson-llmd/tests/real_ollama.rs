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

struct Rig {
    root: tempfile::TempDir,
    port: u16,
    guard: u16,
    child: Child,
}

impl Rig {
    /// The supervisor with the guard on `guard`, Ollama on `port`, model.conf naming `model`.
    fn start(model: &str) -> Rig {
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
            format!("expected_compute = \"cpu\"\nkeepalive_interval = \"10s\"\nresidency_check = \"5s\"\nmetrics_listen = \"off\"\nload_timeout = \"2m\"\n[guard]\nenabled = true\nlisten = \"127.0.0.1:{guard}\"\nready_wait = \"30s\"\n"),
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
    assert!(s["gpu"]["ollama_version"].as_str().is_some_and(|v| v.starts_with("0.24")), "{s:#}");
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
