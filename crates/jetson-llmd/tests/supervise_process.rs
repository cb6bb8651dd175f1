//! `jetson-llmd supervise --launcher process` end to end: the real binary runs fake-ollama as its
//! child. Checks the boot order, recovery after Ollama dies, model.conf edits, CPU fallback and a
//! clean stop.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn fake_ollama_bin() -> PathBuf {
    // Built by `cargo build --workspace` (scripts/test does it first); next to our own binary.
    let p = Path::new(env!("CARGO_BIN_EXE_jetson-llmd")).with_file_name("fake-ollama");
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` first", p.display());
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Rig {
    root: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Rig {
    fn start(extra_env: &[(&str, &str)]) -> Rig {
        let root = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(root.path().join("etc/ollama")).expect("mkdir");
        std::fs::create_dir_all(root.path().join("proc/sys/vm")).expect("mkdir");
        std::fs::write(root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
        std::fs::write(root.path().join("proc/sys/vm/drop_caches"), "").expect("w");
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jetson-llmd"));
        cmd.args(["--root"]).arg(root.path()).args(["supervise", "--launcher", "process", "--ollama-bin"]).arg(fake_ollama_bin());
        cmd.env("OLLAMA_HOST", format!("127.0.0.1:{port}")).env("FAKE_OLLAMA_TIME_SCALE", "0.01").env_remove("NOTIFY_SOCKET").env_remove("JOURNAL_STREAM");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
        Rig { root, port, child }
    }

    fn state(&self) -> Value {
        std::fs::read_to_string(self.root.path().join("run/jetson-llmd/state.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null)
    }

    fn wait_stage(&self, stage: &str, secs: u64) -> Value {
        let t = Instant::now();
        loop {
            let s = self.state();
            if s["stage"] == stage {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(secs), "stage {stage} not reached; state: {s:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn status_json(&self) -> (i32, Value) {
        let o = Command::new(env!("CARGO_BIN_EXE_jetson-llmd"))
            .args(["--root"])
            .arg(self.root.path())
            .args(["--json", "status"])
            .env("OLLAMA_HOST", format!("127.0.0.1:{}", self.port))
            .output()
            .expect("status");
        (o.status.code().unwrap_or(-1), serde_json::from_slice(&o.stdout).unwrap_or(Value::Null))
    }

    fn stop(&mut self) -> (i32, String) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().expect("wait");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status.code().unwrap_or(-1), err)
    }
}

fn events(s: &Value) -> Vec<String> {
    s["timeline"].as_array().map(|a| a.iter().map(|e| e["event"].as_str().unwrap_or("").to_string()).collect()).unwrap_or_default()
}

#[test]
fn boots_in_order_recovers_follows_model_conf_and_stops_cleanly() {
    let mut rig = Rig::start(&[]);
    let s = rig.wait_stage("ready", 30);
    assert_eq!(events(&s), ["ollama started", "API ready", "GPU found", "model warm", "keepalive running"]);
    assert_eq!(s["gpu"]["gpu"], true);
    assert_eq!(s["warm"]["gpu_percent"], 100);
    let (code, st) = rig.status_json();
    assert_eq!(code, 0, "{st:#}");
    assert_eq!(st["model"]["expiry"], "forever");
    assert_eq!(st["health"], "healthy");

    // Ollama dies (the emulator's restart drops every runner): the supervisor re-warms at once,
    // not at the next 4-minute tick. Kill the child process itself.
    // Only our supervisor's own child: other tests run their own emulators in parallel.
    let pid = Command::new("pgrep").args(["-P", &rig.child.id().to_string()]).output().expect("pgrep");
    let pids: Vec<i32> = String::from_utf8_lossy(&pid.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect();
    assert!(!pids.is_empty());
    for p in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGKILL);
    }
    let t = Instant::now();
    loop {
        let s = rig.state();
        if s["ollama_restarts"] == 1 && s["stage"] == "ready" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no recovery: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // An invalid edit keeps the running model and says so.
    std::fs::write(rig.root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=gemma4:e2b-8k; reboot\n").expect("w");
    let t = Instant::now();
    loop {
        let s = rig.state();
        if s["warnings"].as_array().is_some_and(|w| !w.is_empty()) {
            assert!(s["warnings"][0].as_str().expect("w").contains("keeping gemma4:e2b-8k loaded"), "{s:#}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "invalid model.conf not reported: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, st) = rig.status_json();
    assert_eq!(st["model"]["config_error"].as_str().map(|e| e.contains("model.conf:1:")), Some(true), "{st:#}");

    // A valid edit switches the model.
    std::fs::write(rig.root.path().join("etc/ollama/model.conf"), "# switched\nOLLAMA_MODEL=gemma3:4b\n").expect("w");
    let t = Instant::now();
    loop {
        let s = rig.state();
        if s["stage"] == "ready" && s["model"] == "gemma3:4b" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "no switch: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, st) = rig.status_json();
    assert_eq!((code, st["model"]["configured"].as_str()), (0, Some("gemma3:4b")), "{st:#}");

    let (code, log) = rig.stop();
    assert_eq!(code, 0, "clean stop: {log}");
    assert!(log.contains("stopping"), "{log}");
    // The state file stays behind, but status must not call a dead supervisor ready.
    let (code, st) = rig.status_json();
    assert_eq!(code, 3, "its Ollama child is gone too: {st:#}");
    assert_eq!(st["supervisor_running"], "not-running", "{st:#}");
    assert_eq!(st["supervisor"]["stage"], "stopping", "the last stage it wrote: {st:#}");
}

#[test]
fn cpu_fallback_is_terminal_exit_5_and_says_why() {
    // The same decision as under systemd: never ready, never a load onto the CPU, exit 5.
    let mut rig = Rig::start(&[("FAKE_OLLAMA_NO_GPU", "missing-libs")]);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = rig.child.try_wait().expect("wait") {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "supervise did not exit on CPU fallback: {:#}", rig.state());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(5));
    let s = rig.state();
    assert_eq!(s["stage"], "cpu-fallback");
    assert!(s["status"].as_str().expect("status").contains("cuda_jetpack6"), "{s:#}");
    assert!(!events(&s).contains(&"model warm".to_string()));
    let mut err = String::new();
    if let Some(mut e) = rig.child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(err.contains("ERROR") && err.contains("NOT READY: Ollama runs on the CPU"), "at ERROR level: {err}");
    let (code, st) = rig.status_json();
    assert_eq!(code, 3, "its Ollama child stopped with it: {st:#}");
}

#[test]
fn unknown_model_is_reported_with_its_cause() {
    let mut rig = Rig::start(&[]);
    std::fs::write(rig.root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=no-such-model:1b\n").expect("w");
    let s = rig.wait_stage("model-missing", 30);
    assert!(s["status"].as_str().expect("s").contains("file does not exist"), "{s:#}");
    let (code, _) = rig.stop();
    assert_eq!(code, 0);
}

#[test]
fn systemd_launcher_without_a_bus_fails_with_one_clear_line() {
    let root = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(root.path().join("etc/ollama")).expect("mkdir");
    std::fs::write(root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
    let o = Command::new(env!("CARGO_BIN_EXE_jetson-llmd"))
        .arg("--root")
        .arg(root.path())
        .args(["supervise", "--launcher", "systemd"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", format!("unix:path={}/no-bus", root.path().display()))
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: supervise needs systemd's D-Bus API (use --launcher process"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
