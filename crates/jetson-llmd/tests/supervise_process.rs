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
        Rig::custom(extra_env, &fake_ollama_bin(), "127.0.0.1")
    }

    /// A rig in `root`, with environment that depends on where the root is.
    fn start_in(root: tempfile::TempDir, extra_env: &[(&str, &str)], more: impl Fn(&Path) -> Vec<(String, String)>) -> Rig {
        let extra: Vec<(String, String)> = extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).chain(more(root.path())).collect();
        let refs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Rig::build(root, &refs, &fake_ollama_bin(), "127.0.0.1")
    }

    /// `bind_host` is what OLLAMA_HOST names (e.g. 0.0.0.0); `ollama` the binary run as Ollama.
    fn custom(extra_env: &[(&str, &str)], ollama: &Path, bind_host: &str) -> Rig {
        Rig::build(tempfile::tempdir().expect("tmp"), extra_env, ollama, bind_host)
    }

    fn build(root: tempfile::TempDir, extra_env: &[(&str, &str)], ollama: &Path, bind_host: &str) -> Rig {
        std::fs::create_dir_all(root.path().join("etc/ollama")).expect("mkdir");
        std::fs::create_dir_all(root.path().join("proc/sys/vm")).expect("mkdir");
        std::fs::write(root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
        std::fs::write(root.path().join("proc/sys/vm/drop_caches"), "").expect("w");
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jetson-llmd"));
        cmd.args(["--root"]).arg(root.path()).args(["supervise", "--launcher", "process", "--ollama-bin"]).arg(ollama);
        cmd.env("OLLAMA_HOST", format!("{bind_host}:{port}")).env("FAKE_OLLAMA_TIME_SCALE", "0.01").env_remove("NOTIFY_SOCKET").env_remove("JOURNAL_STREAM");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        // A file, not a pipe: a pipe nobody reads would block the supervisor once full.
        let log = std::fs::File::create(root.path().join("supervise.log")).expect("log");
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().expect("spawn");
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
        let o = Command::new(env!("CARGO_BIN_EXE_jetson-llmd")).args(["--root"]).arg(self.root.path()).args(["--json", "status"]).env("OLLAMA_HOST", format!("127.0.0.1:{}", self.port)).output().expect("status");
        (o.status.code().unwrap_or(-1), serde_json::from_slice(&o.stdout).unwrap_or(Value::Null))
    }

    fn stop(&mut self) -> (i32, String) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().expect("wait");
        (status.code().unwrap_or(-1), self.log())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("supervise.log")).unwrap_or_default()
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).expect("kill");
    }

    /// Pids of the supervisor's children (the Ollama it started).
    fn children(&self) -> Vec<i32> {
        let o = Command::new("pgrep").args(["-P", &self.child.id().to_string()]).output().expect("pgrep");
        String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }

    fn wait_for(&self, what: &str, secs: u64, mut f: impl FnMut(&Rig) -> bool) {
        let t = Instant::now();
        while !f(self) {
            assert!(t.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}; state: {:#}\nlog:\n{}", self.state(), self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
            assert!(s["warnings"][0]["text"].as_str().expect("w").contains("keeping gemma4:e2b-8k loaded"), "{s:#}");
            assert_eq!(s["warnings"][0]["kind"], "model-conf", "{s:#}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "invalid model.conf not reported: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, st) = rig.status_json();
    assert_eq!(st["model"]["config_error"].as_str().map(|e| e.contains("model.conf:1:")), Some(true), "{st:#}");
    // The kept model is the one loaded, not "also loaded": status stays truthful and healthy.
    assert_eq!(st["model"]["loaded"], true, "{st:#}");
    assert_eq!(st["model"]["expiry"], "forever", "{st:#}");
    assert!(!st["warnings"].to_string().contains("is also loaded"), "{st:#}");
    assert_eq!((code, st["health"].as_str()), (0, Some("healthy")), "{st:#}");

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

/// The supervisor against more than one Ollama: the emulator's behaviours per version
/// (FAKE_OLLAMA_VERSION, each citing Ollama's source). 0.32.15 on the GPU is ready; without the
/// JetPack 6 libraries it tries the generic CUDA build, which skips compute 8.7 at INFO, and
/// that line is the cause; 0.30.6 with CUDA failing to start hides discovery's output at its
/// default level, so the cause says the log does not tell and how to see it, and with
/// OLLAMA_DEBUG=2 the CUDA line is there and is the cause.
#[test]
fn gpu_verdicts_across_ollama_versions() {
    let run = |env: &[(&str, &str)]| {
        let mut rig = Rig::start(env);
        let t = Instant::now();
        loop {
            if let Some(st) = rig.child.try_wait().expect("wait") {
                return (st.code(), rig.state());
            }
            if rig.state()["stage"] == "ready" {
                return (None, rig.state());
            }
            assert!(t.elapsed() < Duration::from_secs(30), "no verdict: {:#}", rig.state());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (code, s) = run(&[("FAKE_OLLAMA_VERSION", "0.32.15")]);
    assert_eq!((code, s["stage"].as_str(), s["ollama_version"].as_str()), (None, Some("ready"), Some("0.32.15")), "{s:#}");
    let (code, s) = run(&[("FAKE_OLLAMA_VERSION", "0.32.15"), ("FAKE_OLLAMA_NO_GPU", "missing-libs")]);
    assert_eq!(code, Some(5), "{s:#}");
    assert!(s["gpu"]["cpu_fallback_reason"].as_str().is_some_and(|r| r.contains("compute 8.7 is not among cuda_v12") && r.contains("JetPack 6 tarball")), "{s:#}");
    assert!(s["gpu"]["evidence"].as_str().is_some_and(|e| e.starts_with("log: skipping CUDA device")), "{s:#}");
    let (code, s) = run(&[("FAKE_OLLAMA_VERSION", "0.30.6"), ("FAKE_OLLAMA_NO_GPU", "cuda-init")]);
    assert_eq!(code, Some(5), "{s:#}");
    assert!(s["gpu"]["cpu_fallback_reason"].as_str().is_some_and(|r| r.contains("does not say why") && r.contains("OLLAMA_DEBUG=2")), "{s:#}");
    let (code, s) = run(&[("FAKE_OLLAMA_VERSION", "0.30.6"), ("FAKE_OLLAMA_NO_GPU", "cuda-init"), ("OLLAMA_DEBUG", "2")]);
    assert_eq!(code, Some(5), "{s:#}");
    assert!(s["gpu"]["cpu_fallback_reason"].as_str().is_some_and(|r| r.starts_with("CUDA failed to initialise")), "{s:#}");
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
    let err = rig.log();
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
    let o = Command::new(env!("CARGO_BIN_EXE_jetson-llmd")).arg("--root").arg(root.path()).args(["supervise", "--launcher", "systemd"]).env("DBUS_SYSTEM_BUS_ADDRESS", format!("unix:path={}/no-bus", root.path().display())).output().expect("runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: supervise needs systemd's D-Bus API (use --launcher process"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); /proc/PID/stat's state says what it is.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

#[test]
fn sighup_rereads_instead_of_killing_and_sigkill_takes_ollama_along() {
    let mut rig = Rig::start(&[]);
    rig.wait_stage("ready", 30);
    rig.signal(nix::sys::signal::Signal::SIGHUP);
    rig.wait_for("the SIGHUP log line", 10, |r| r.log().contains("SIGHUP: re-reading the configuration"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(rig.child.try_wait().expect("wait").is_none(), "SIGHUP must not end the supervisor: {}", rig.log());
    assert_eq!(rig.state()["stage"], "ready");

    let ollama = rig.children();
    assert_eq!(ollama.len(), 1, "one Ollama child: {ollama:?}");
    rig.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = rig.child.wait();
    let t = Instant::now();
    while alive(ollama[0]) {
        assert!(t.elapsed() < Duration::from_secs(10), "ollama serve (pid {}) outlived a SIGKILLed supervisor and holds the port", ollama[0]);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", rig.port)).is_err(), "the port is free again");
}

#[test]
fn a_child_that_writes_invalid_utf8_keeps_running() {
    // Ollama's runner can print raw bytes; a reader that gives up closes the pipe and the child
    // dies of SIGPIPE on its next write, a restart loop.
    let dir = tempfile::tempdir().expect("tmp");
    let wrapper = dir.path().join("ollama");
    std::fs::write(&wrapper, format!("#!/bin/sh\nprintf 'bad \\377\\376 bytes\\n' >&2\nexec {} \"$@\"\n", fake_ollama_bin().display())).expect("w");
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let rig = Rig::custom(&[], &wrapper, "127.0.0.1");
    rig.wait_stage("ready", 30);
    std::thread::sleep(Duration::from_secs(2));
    let s = rig.state();
    assert_eq!((s["stage"].as_str(), s["ollama_restarts"].as_u64()), (Some("ready"), Some(0)), "{s:#}\n{}", rig.log());
}

#[test]
fn ollama_host_0000_serves_the_lan_and_is_reached_on_loopback() {
    let rig = Rig::custom(&[], &fake_ollama_bin(), "0.0.0.0");
    rig.wait_stage("ready", 30);
    let o = Command::new(env!("CARGO_BIN_EXE_jetson-llmd")).arg("--root").arg(rig.root.path()).args(["--json", "status"]).env("OLLAMA_HOST", format!("0.0.0.0:{}", rig.port)).output().expect("status");
    let st: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(o.status.code(), Some(0), "{st:#} {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(st["ollama"]["url"], format!("http://127.0.0.1:{}/", rig.port));
}

#[test]
fn a_port_already_served_is_named_and_nothing_is_started() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = squatter.local_addr().expect("addr").port();
    let root = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(root.path().join("etc/ollama")).expect("mkdir");
    std::fs::write(root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
    let log = std::fs::File::create(root.path().join("log")).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_jetson-llmd"))
        .arg("--root")
        .arg(root.path())
        .args(["supervise", "--launcher", "process", "--ollama-bin"])
        .arg(fake_ollama_bin())
        .env("OLLAMA_HOST", format!("127.0.0.1:{port}"))
        .stderr(log)
        .spawn()
        .expect("spawn");
    let state = || std::fs::read_to_string(root.path().join("run/jetson-llmd/state.json")).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()).unwrap_or(Value::Null);
    let t = Instant::now();
    while state()["stage"] != "port-in-use" {
        assert!(t.elapsed() < Duration::from_secs(10), "{:#}", state());
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = state();
    assert!(s["status"].as_str().unwrap_or("").contains(&format!("something else already serves 127.0.0.1:{port}")), "{s:#}");
    let kids = Command::new("pgrep").args(["-P", &child.id().to_string()]).output().expect("pgrep");
    assert!(kids.stdout.is_empty(), "no second Ollama started");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).expect("term");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    drop(squatter);
}

fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jetson-llmd"));
    c.args(args).env_remove("OLLAMA_HOST").env_remove("NOTIFY_SOCKET");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("runs");
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn bad_addresses_and_bounds_are_configuration_errors() {
    let d = tempfile::tempdir().expect("tmp");
    let conf = d.path().join("model.conf");
    std::fs::write(&conf, "OLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
    let mc = conf.to_str().expect("utf8");
    for host in ["127.0.0.1:99999", "127.0.0.1:-1", "http://127.0.0.1:11434?x=1"] {
        let (code, _, err) = run_cli(&["--model-conf", mc, "keepalive", "--once"], &[("OLLAMA_HOST", host)]);
        assert_eq!(code, 2, "{host}: {err}");
        assert!(err.starts_with("error: OLLAMA_HOST value") && err.lines().count() == 1, "{host}: {err}");
    }
    let (code, _, err) = run_cli(&["--model-conf", mc, "keepalive", "--interval", "1ns"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("out of bounds: use 10s to 1h"), "{err}");
    let cfg = d.path().join("config.toml");
    std::fs::write(&cfg, "keepalive_interval = \"1ns\"\n").expect("w");
    let (code, out, _) = run_cli(&["--config", cfg.to_str().expect("p"), "--model-conf", mc, "check"], &[]);
    assert_eq!(code, 2);
    assert!(out.contains("config.toml:1: keepalive_interval = \"1ns\" is out of bounds"), "{out}");
}

#[test]
fn hostile_model_conf_files_fail_fast_with_one_line() {
    let d = tempfile::tempdir().expect("tmp");
    let fifo = d.path().join("fifo.conf");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let zero = d.path().join("zero.conf");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
    let big = d.path().join("big.conf");
    std::fs::write(&big, "#".repeat(1 << 20)).expect("w");
    for (path, says) in [(&fifo, "is a FIFO, not a regular file"), (&zero, "is a character device, not a regular file"), (&big, "larger than 64 KiB")] {
        let t = Instant::now();
        let (code, out, _) = run_cli(&["--model-conf", path.to_str().expect("p"), "--config", "/nonexistent/config.toml", "check"], &[]);
        assert!(t.elapsed() < Duration::from_secs(10), "must not hang on {}", path.display());
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(says), "{}: {out}", path.display());
    }
}

#[test]
fn status_tells_another_users_supervisor_from_a_dead_one() {
    // As root (CI): run status as nobody against a state file whose pid is root's (ours).
    if std::fs::read_to_string("/proc/self/status").map_or(true, |s| !s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))) {
        eprintln!("skipped: needs root to drop to nobody");
        return;
    }
    let root = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let dir = root.path().join("run/jetson-llmd");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let st = |pid: u32| format!(r#"{{"pid": {pid}, "stage": "ready", "status": "ready: x"}}"#);
    let status = || {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_jetson-llmd"))
            .arg("--root")
            .arg(root.path())
            .args(["--model-conf", "/nonexistent", "--json", "status"])
            .env("OLLAMA_HOST", format!("127.0.0.1:{}", free_port()))
            .output()
            .expect("setpriv");
        serde_json::from_slice::<Value>(&o.stdout).unwrap_or(Value::Null)
    };
    std::fs::write(dir.join("state.json"), st(std::process::id())).expect("w");
    assert_eq!(status()["supervisor_running"], "running", "EPERM from kill(0) is a live process");
    std::fs::write(dir.join("state.json"), st(u32::MAX / 2)).expect("w");
    assert_eq!(status()["supervisor_running"], "not-running");
}

fn fake_state(rig: &Rig) -> Value {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", rig.port)).expect("connect");
    use std::io::{Read, Write};
    s.write_all(b"GET /_fake/state HTTP/1.0\r\nHost: x\r\n\r\n").expect("w");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("r");
    serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap_or("null")).unwrap_or(Value::Null)
}

#[test]
fn model_conf_edits_are_seen_at_once_and_a_burst_is_one_switch_to_the_last_value() {
    let rig = Rig::start(&[]);
    rig.wait_stage("ready", 30);
    let conf = rig.root.path().join("etc/ollama/model.conf");
    let loads = || fake_state(&rig)["counters"]["loads"].as_u64().unwrap_or(0);
    let before = loads();
    // A burst within the debounce window: only the last value is loaded.
    for m in ["gemma3:4b", "gemma4:e2b-it-qat", "llama3.1:8b", "gemma3:4b"] {
        std::fs::write(&conf, format!("OLLAMA_MODEL={m}\n")).expect("w");
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = Instant::now();
    rig.wait_for("the switch", 15, |r| r.state()["model"] == "gemma3:4b" && r.state()["stage"] == "ready");
    assert!(t.elapsed() < Duration::from_secs(10), "inotify, not the 30 s safety poll");
    assert_eq!(loads(), before + 1, "one load: the last value, nothing in between");
    assert_eq!(rig.log().matches("switching gemma4:e2b-8k -> ").count(), 1, "{}", rig.log());
    // An editor's save: a new file renamed over the old one, after a moment without the file.
    std::fs::remove_file(&conf).expect("rm");
    std::thread::sleep(Duration::from_millis(200));
    let tmp = rig.root.path().join("etc/ollama/.model.conf.swp");
    std::fs::write(&tmp, "# switched back\nOLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
    std::fs::rename(&tmp, &conf).expect("mv");
    let t = Instant::now();
    rig.wait_for("the switch back", 15, |r| r.state()["model"] == "gemma4:e2b-8k" && r.state()["stage"] == "ready");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(rig.state()["warnings"].as_array().is_some_and(|w| w.is_empty()), "the brief absence left no warning: {:#}", rig.state());
}

#[test]
fn switch_writes_model_conf_keeping_comments_and_waits_for_the_outcome() {
    let rig = Rig::start(&[]);
    rig.wait_stage("ready", 30);
    let conf = rig.root.path().join("etc/ollama/model.conf");
    std::fs::write(&conf, "# the one model this board keeps warm\nOLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
    let sw = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_jetson-llmd")).arg("--root").arg(rig.root.path()).args(args).env("OLLAMA_HOST", format!("127.0.0.1:{}", rig.port)).output().expect("runs");
    let o = sw(&["switch", "gemma3:4b"]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.starts_with("switched to gemma3:4b in "), "{out}");
    assert_eq!(std::fs::read_to_string(&conf).expect("r"), "# the one model this board keeps warm\nOLLAMA_MODEL=gemma3:4b\n");
    assert_eq!(rig.state()["model"], "gemma3:4b");
    // Again: nothing to write, said as such; scripts (Ansible's changed_when) read "changed".
    let o = sw(&["--json", "switch", "gemma3:4b"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!((v["switched"].as_bool(), v["changed"].as_bool()), (Some(true), Some(false)), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| m.starts_with("gemma3:4b is already the model kept warm; nothing to do")), "{v}");
    let o = sw(&["switch", "no such; model"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("error: "), "one clear line");
    // A name the registry does not have: said within seconds (not after the 8-minute wait),
    // model.conf back to the model still loaded, which stays the model and stays ready.
    let t = Instant::now();
    let o = sw(&["switch", "typo:model"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(err.contains("model.conf names typo:model, which could not be made ready") && err.contains("gemma3:4b stays loaded") && err.contains("is back as it was"), "{err}");
    assert_eq!(std::fs::read_to_string(&conf).expect("r"), "# the one model this board keeps warm\nOLLAMA_MODEL=gemma3:4b\n");
    rig.wait_for("the warning cleared with model.conf back", 10, |r| r.state()["stage"] == "ready" && r.state()["warnings"].as_array().is_some_and(|w| w.is_empty()));
    assert_eq!(rig.state()["model"], "gemma3:4b");
    // And the next switch is not refused because of the typo.
    let o = sw(&["switch", "gemma4:e2b-8k"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_switch_on_fragile_memory_drops_caches_once_and_never_loops() {
    // The emulator's "unallocatable after unload" memory: the switch's own unload fragments it.
    // 1. drop_caches reaches the emulator (its stand-in file is the one the supervisor writes):
    //    the one retry after it loads the new model.
    let rig = Rig::start_in(tempfile::tempdir().expect("tmp"), &[("FAKE_OLLAMA_FRAGILE_MEMORY", "true")], |root| vec![("FAKE_OLLAMA_DROP_CACHES_FILE".into(), root.join("proc/sys/vm/drop_caches").display().to_string())]);
    rig.wait_stage("ready", 30);
    std::thread::sleep(Duration::from_millis(50)); // a distinct mtime for the drop_caches write
    std::fs::write(rig.root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=gemma3:4b\n").expect("w");
    rig.wait_for("switched after one drop_caches", 30, |r| r.state()["model"] == "gemma3:4b" && r.state()["stage"] == "ready");
    assert_eq!(rig.log().matches("dropping caches and trying once more").count(), 1, "{}", rig.log());

    // 2. drop_caches does not help: the new model fails, the old one cannot come back either,
    //    and the supervisor stops with reboot required (4) instead of looping.
    let mut rig = Rig::start(&[("FAKE_OLLAMA_FRAGILE_MEMORY", "true")]);
    rig.wait_stage("ready", 30);
    std::fs::write(rig.root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=gemma3:4b\n").expect("w");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = rig.child.try_wait().expect("wait") {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no outcome: {:#}\n{}", rig.state(), rig.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(4), "{}", rig.log());
    assert!(rig.log().contains("could not be loaded back"), "{}", rig.log());
    assert_eq!(rig.log().matches("dropping caches and trying once more").count(), 1, "one drop_caches, no loop:\n{}", rig.log());
}

#[test]
fn doctor_on_a_fixture_root_names_each_problem_and_exits_1() {
    let root = tempfile::tempdir().expect("tmp");
    let w = |p: &str, t: &str| {
        let path = root.path().join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, t).expect("w");
    };
    w("proc/cmdline", "root=/dev/mmcblk0p1 cma=800M\n");
    w("etc/nv_tegra_release", "# R36 (release), REVISION: 4.7\n");
    w("etc/jetson-llmd/ollama.env", "OLLAMA_HOST=0.0.0.0:11434\n");
    let o = Command::new(env!("CARGO_BIN_EXE_jetson-llmd")).arg("--root").arg(root.path()).args(["--json", "doctor"]).env("OLLAMA_HOST", format!("127.0.0.1:{}", free_port())).output().expect("runs");
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let verdict = |name: &str| v["checks"].as_array().expect("checks").iter().find(|c| c["name"] == name).map(|c| c["verdict"].as_str().unwrap_or("").to_string());
    assert_eq!(verdict("cma").as_deref(), Some("FAIL"));
    assert_eq!(verdict("jetpack").as_deref(), Some("PASS"));
    assert_eq!(verdict("ollama-host").as_deref(), Some("WARN"), "0.0.0.0 in ollama.env serves the LAN");
    assert_eq!(verdict("ollama-version").as_deref(), Some("WARN"), "nothing answers");
}

#[test]
fn bench_prints_the_seed_table_and_asks_before_unloading_the_model() {
    let rig = Rig::start(&[]);
    rig.wait_stage("ready", 30);
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_jetson-llmd")).arg("--root").arg(rig.root.path()).args(args).env("OLLAMA_HOST", format!("127.0.0.1:{}", rig.port)).stdin(Stdio::null()).output().expect("runs");
    let o = run(&["bench", "--runs", "2", "--tokens", "16"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.starts_with("| Model | tok/s") && out.contains("| gemma4:e2b-8k | 25.7"), "{out}");
    let st = String::from_utf8_lossy(&run(&["status"]).stdout).to_string();
    assert!(st.contains("last bench    gemma4:e2b-8k 25.7 tok/s (2 runs), 100% GPU"), "{st}");
    let o = run(&["bench", "--model", "gemma3:4b"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("pass --yes to go ahead"));
    assert_eq!(rig.state()["stage"], "ready", "nothing was unloaded");
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).expect("w");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("r");
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

#[test]
fn metrics_and_healthz_follow_the_supervisor() {
    let root = tempfile::tempdir().expect("tmp");
    let port = free_port();
    std::fs::create_dir_all(root.path().join("etc/jetson-llmd")).expect("mkdir");
    std::fs::write(root.path().join("etc/jetson-llmd/config.toml"), format!("metrics_listen = \"127.0.0.1:{port}\"\n")).expect("w");
    let rig = Rig::start_in(root, &[], |_| vec![]);
    rig.wait_stage("ready", 30);
    let (code, body) = http_get(port, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ready: gemma4:e2b-8k"), "{body}");
    let (code, m) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(m.contains("jetson_llmd_ready 1.0") && m.contains("jetson_llmd_model_gpu_fraction 1.0") && m.ends_with("# EOF\n"), "{m}");
    // An invalid edit keeps it healthy; the model going away does not (until it is re-warmed).
    std::fs::write(rig.root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=\n").expect("w");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(http_get(port, "/healthz").0, 200);
}

fn http_post(port: u16, path: &str, body: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(format!("POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes()).expect("w");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("r");
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (code, head.to_string(), body.to_string())
}

/// The guard inside `supervise`: clients on the guard's port, Ollama on its private one.
#[test]
fn the_guard_runs_inside_supervise_and_keeps_the_model_pinned() {
    let root = tempfile::tempdir().expect("tmp");
    let (guard, metrics) = (free_port(), free_port());
    std::fs::create_dir_all(root.path().join("etc/jetson-llmd")).expect("mkdir");
    std::fs::write(root.path().join("etc/jetson-llmd/config.toml"), format!("metrics_listen = \"127.0.0.1:{metrics}\"\n[guard]\nenabled = true\nlisten = \"127.0.0.1:{guard}\"\n")).expect("w");
    let rig = Rig::start_in(root, &[], |_| vec![]);
    rig.wait_stage("ready", 30);
    assert_eq!(http_get(guard, "/healthz").0, 200);
    let (code, head, body) = http_post(guard, "/api/chat", r#"{"model":"gemma4:e2b-8k","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_ctx":2048},"keep_alive":0}"#);
    assert_eq!(code, 200, "{body}");
    assert!(head.to_ascii_lowercase().contains("x-jetson-llmd-guard: dropped options num_ctx"), "{head}");
    let (code, _, body) = http_post(guard, "/api/generate", r#"{"model":"llama3.2:3b","prompt":"hi"}"#);
    assert_eq!(code, 409, "{body}");
    std::thread::sleep(Duration::from_millis(500));
    let s = rig.state();
    assert_eq!(s["stage"], "ready");
    assert_eq!(s["rewarm_count"], 0, "the model never left: {s:#}");
    let (_, m) = http_get(metrics, "/metrics");
    assert!(m.contains("jetson_llmd_guard_decisions{rule=\"other-model\"} 1.0") && m.contains("jetson_llmd_guard_decisions{rule=\"reload-option-dropped\"} 1.0"), "{m}");
}

#[test]
fn a_guard_on_ollamas_own_address_is_a_configuration_error() {
    let root = tempfile::tempdir().expect("tmp");
    let port = free_port();
    std::fs::create_dir_all(root.path().join("etc/jetson-llmd")).expect("mkdir");
    std::fs::write(root.path().join("etc/jetson-llmd/config.toml"), format!("[guard]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n")).expect("w");
    let (code, _, err) = run_cli(&["--root", root.path().to_str().expect("utf8"), "supervise", "--launcher", "process"], &[("OLLAMA_HOST", &format!("127.0.0.1:{port}"))]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is where Ollama itself listens") && err.contains("11435"), "{err}");
    // `check` says so before a start does, with Ollama's address from ollama.env too.
    std::fs::write(root.path().join("etc/jetson-llmd/ollama.env"), format!("OLLAMA_HOST=0.0.0.0:{port}\n")).expect("w");
    let (code, out, err) = run_cli(&["--root", root.path().to_str().expect("utf8"), "check"], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("[guard] listen") && out.contains("is where Ollama itself listens"), "{out}");
}

/// SIGHUP applies `[guard]` at once (here options "drop" -> "strict"), and says plainly that
/// `listen` takes a restart.
#[test]
fn sighup_applies_the_guard_policy_at_once() {
    let root = tempfile::tempdir().expect("tmp");
    let guard = free_port();
    std::fs::create_dir_all(root.path().join("etc/jetson-llmd")).expect("mkdir");
    let config = |extra: &str| format!("metrics_listen = \"off\"\n[guard]\nenabled = true\nlisten = \"127.0.0.1:{guard}\"\n{extra}");
    std::fs::write(root.path().join("etc/jetson-llmd/config.toml"), config("options = \"drop\"\n")).expect("w");
    let rig = Rig::start_in(root, &[], |_| vec![]);
    rig.wait_stage("ready", 30);
    let chat = r#"{"model":"gemma4:e2b-8k","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_ctx":2048}}"#;
    let (code, head, _) = http_post(guard, "/api/chat", chat);
    assert_eq!(code, 200);
    assert!(head.to_ascii_lowercase().contains("dropped options num_ctx"), "{head}");
    let other = free_port();
    std::fs::write(rig.root.path().join("etc/jetson-llmd/config.toml"), config("options = \"strict\"\n").replace(&guard.to_string(), &other.to_string())).expect("w");
    // listen changed too: reported as needing a restart; the guard stays where it is.
    rig.signal(nix::sys::signal::Signal::SIGHUP);
    rig.wait_for("the reload", 10, |r| r.state()["warnings"].as_array().is_some_and(|w| w.iter().any(|x| x["kind"] == "config-toml" && x["text"].as_str().is_some_and(|x| x.contains("[guard] listen changed; that takes a restart")))));
    let (code, _, body) = http_post(guard, "/api/chat", chat);
    assert_eq!(code, 409, "strict applies without a restart: {body}");
    assert!(body.contains("would make Ollama reload"), "{body}");
}

/// On a guarded install the CLI reaches Ollama itself, at ollama.env's OLLAMA_HOST, not the
/// guard that listens on Ollama's usual 127.0.0.1:11434.
#[test]
fn the_cli_reaches_ollama_at_ollama_env_not_the_guard() {
    let root = tempfile::tempdir().expect("tmp");
    let guard = free_port();
    std::fs::create_dir_all(root.path().join("etc/jetson-llmd")).expect("mkdir");
    std::fs::write(root.path().join("etc/jetson-llmd/config.toml"), format!("metrics_listen = \"off\"\n[guard]\nenabled = true\nlisten = \"127.0.0.1:{guard}\"\n")).expect("w");
    let rig = Rig::start_in(root, &[], |_| vec![]);
    rig.wait_stage("ready", 30);
    std::fs::write(rig.root.path().join("etc/jetson-llmd/ollama.env"), format!("OLLAMA_KEEP_ALIVE=-1\nOLLAMA_HOST=127.0.0.1:{}\n", rig.port)).expect("w");
    let root = rig.root.path().to_str().expect("utf8");
    let (code, out, err) = run_cli(&["--root", root, "--json", "status"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let st: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(st["ollama"]["url"], format!("http://127.0.0.1:{}/", rig.port), "{st:#}");
    // --ollama (or OLLAMA_HOST) still wins.
    let (_, out, _) = run_cli(&["--root", root, "--ollama", &format!("127.0.0.1:{guard}"), "--json", "status"], &[]);
    let st: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(st["ollama"]["url"], format!("http://127.0.0.1:{guard}/"));
}

/// Output piped into a reader that has gone (`jetson-llmd units | head -1`): the command ends
/// quietly, as Unix tools do, instead of panicking with "failed printing to stdout".
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [&["units"][..], &["completions", "zsh"], &["--help"]] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_jetson-llmd")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        // The reader goes before a byte is written: every write fails with EPIPE.
        drop(c.stdout.take());
        let o = c.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
        assert!(o.status.success() || o.status.signal() == Some(13), "{args:?}: {:?}", o.status);
    }
}

/// `check` on a machine without config.toml says the defaults apply, not "ok"; `gpu-check`
/// uses the exit codes every command uses: 5 for the CPU, 2 for a log it cannot read.
#[test]
fn check_and_gpu_check_say_what_they_found() {
    let d = tempfile::tempdir().expect("tmp");
    let conf = d.path().join("model.conf");
    std::fs::write(&conf, "OLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
    let mc = conf.to_str().expect("utf8");
    let (code, out, _) = run_cli(&["--config", "/nonexistent/config.toml", "--model-conf", mc, "check"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("/nonexistent/config.toml: not present: every setting has its default"), "{out}");
    let log = d.path().join("ollama.log");
    std::fs::write(
        &log,
        "time=2026-05-01T10:00:02.100+02:00 level=INFO source=types.go:60 msg=\"inference compute\" id=cpu library=cpu compute=\"\" name=cpu description=cpu libdirs=ollama driver=\"\" pci_id=\"\" type=\"\" total=\"7.4 GiB\" available=\"5.6 GiB\"\n",
    )
    .expect("w");
    let cfg = d.path().join("config.toml");
    std::fs::write(&cfg, "").expect("w");
    let (code, out, err) = run_cli(&["--config", cfg.to_str().expect("p"), "gpu-check", "--log", log.to_str().expect("p")], &[]);
    assert_eq!(code, 5, "CPU fallback on an Orin: {out}{err}");
    std::fs::write(&cfg, "expected_compute = \"cpu\"\n").expect("w");
    let (code, out, err) = run_cli(&["--config", cfg.to_str().expect("p"), "gpu-check", "--log", log.to_str().expect("p")], &[]);
    assert_eq!(code, 0, "the CPU is expected here: {out}{err}");
    assert!(out.contains("as expected_compute = \"cpu\" asks"), "{out}");
    let (code, _, err) = run_cli(&["--config", cfg.to_str().expect("p"), "gpu-check", "--log", "/nonexistent/ollama.log"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: ") && err.contains("journalctl -u ollama"), "{err}");
}

/// Every command's --help names its exit codes.
#[test]
fn every_help_page_names_its_exit_codes() {
    for cmd in ["supervise", "preload", "keepalive", "status", "switch", "bench", "doctor", "gpu-check", "check", "units", "install", "upgrade", "uninstall", "completions"] {
        let (code, out, _) = run_cli(&[cmd, "--help"], &[]);
        assert_eq!(code, 0, "{cmd}");
        assert!(out.contains("Exit codes: 0"), "{cmd} --help: {out}");
    }
}

/// A 10,000-character model.conf line is quoted clipped, never whole.
#[test]
fn a_huge_model_conf_line_is_clipped_in_messages() {
    let d = tempfile::tempdir().expect("tmp");
    let conf = d.path().join("model.conf");
    std::fs::write(&conf, format!("OLLAMA_MODEL={} x\n", "a".repeat(10_000))).expect("w");
    let (code, out, _) = run_cli(&["--config", "/nonexistent/config.toml", "--model-conf", conf.to_str().expect("p"), "check"], &[]);
    assert_eq!(code, 2);
    assert!(out.lines().all(|l| l.chars().count() <= 320), "{}", out.len());
}

/// doctor reads where Ollama really listens: a drop-in's OLLAMA_HOST=0.0.0.0 is the LAN
/// (unless ollama.env, which overrides it, moves Ollama to loopback).
#[test]
fn doctor_sees_a_lan_ollama_host_in_a_drop_in() {
    let d = tempfile::tempdir().expect("tmp");
    let dropin = d.path().join("etc/systemd/system/ollama.service.d/override.conf");
    std::fs::create_dir_all(dropin.parent().expect("p")).expect("mkdir");
    std::fs::write(&dropin, "[Service]\nEnvironment=\"OLLAMA_HOST=0.0.0.0:11434\"\n").expect("w");
    let root = d.path().to_str().expect("utf8");
    let (_, out, _) = run_cli(&["--root", root, "doctor"], &[]);
    assert!(out.contains("WARN  ollama-host") && out.contains("serves the LAN"), "{out}");
    std::fs::create_dir_all(d.path().join("etc/jetson-llmd")).expect("mkdir");
    std::fs::write(d.path().join("etc/jetson-llmd/ollama.env"), "OLLAMA_HOST=127.0.0.1:11435\n").expect("w");
    let (_, out, _) = run_cli(&["--root", root, "doctor"], &[]);
    assert!(out.contains("PASS  ollama-host"), "{out}");
}

/// `keepalive --once` records its ping in keepalive.json like the loop does, for `status`.
#[test]
fn keepalive_once_records_its_ping() {
    let rig = Rig::start(&[]);
    rig.wait_stage("ready", 30);
    let file = rig.root.path().join("run/jetson-llmd/keepalive.json");
    assert!(!file.exists(), "the process launcher pings without the keepalive unit's file");
    let root = rig.root.path().to_str().expect("utf8");
    let (code, out, err) = run_cli(&["--root", root, "keepalive", "--once"], &[("OLLAMA_HOST", &format!("127.0.0.1:{}", rig.port))]);
    assert_eq!(code, 0, "{out}{err}");
    let rec: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("keepalive.json written")).expect("json");
    assert_eq!(rec["ok"], true, "{rec:#}");
    assert_eq!(rec["model"], "gemma4:e2b-8k", "{rec:#}");
}

/// Under the process launcher Ollama's output is the supervisor's: gpu-check gives the
/// verdict the supervisor holds instead of "no discovery line yet".
#[test]
fn gpu_check_uses_the_supervisors_verdict_without_a_journal() {
    let rig = Rig::start(&[]);
    rig.wait_stage("ready", 30);
    let root = rig.root.path().to_str().expect("utf8");
    let (code, out, err) = run_cli(&["--root", root, "gpu-check"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("CUDA GPU found") && out.contains("state.json"), "{out}");
}

/// A second supervisor with the same state directory says the first runs and leaves its
/// state.json alone (status keeps following the first).
#[test]
fn a_second_supervisor_leaves_the_first_ones_state_alone() {
    let rig = Rig::start(&[]);
    let s = rig.wait_stage("ready", 30);
    let root = rig.root.path().to_str().expect("utf8");
    let other = free_port();
    let (code, _, err) = run_cli(&["--root", root, "supervise", "--launcher", "process", "--ollama-bin", fake_ollama_bin().to_str().expect("p")], &[("OLLAMA_HOST", &format!("127.0.0.1:{other}"))]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another jetson-llmd supervise") && err.contains(&format!("pid {}", s["pid"])), "{err}");
    assert_eq!(rig.state()["pid"], s["pid"], "state.json untouched");
    let (code, st) = rig.status_json();
    assert_eq!((code, st["supervisor_running"].as_str()), (0, Some("running")), "{st:#}");
}

/// Issue 30: `ollama serve` SIGKILLed in the middle of a long cold load, at boot and in a
/// switch, with the board monitor's timer (1 s) long overdue when the load fails: a new Ollama
/// is started within seconds and the model model.conf names ends up warm. Before, the exit was
/// lost in the loop's `select!` and the supervisor retried the load against nothing, forever.
#[test]
fn ollama_killed_during_a_long_load_is_started_again() {
    let root = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(root.path().join("etc/jetson-llmd")).expect("mkdir");
    std::fs::write(root.path().join("etc/jetson-llmd/config.toml"), "metrics_listen = \"off\"\nmonitor_interval = \"1s\"\nresidency_check = \"5s\"\n").expect("w");
    // Cold loads of ~9 s (60 s on the board at time scale 1).
    let rig = Rig::start_in(root, &[("FAKE_OLLAMA_TIME_SCALE", "0.15")], |_| vec![]);
    let kill_during_load = |model: &str| {
        rig.wait_for(&format!("{model} loading"), 60, |r| {
            let s = r.state();
            s["stage"] == "preloading" && s["model"] == model
        });
        std::thread::sleep(Duration::from_secs(4));
        let before = rig.children();
        assert_eq!(before.len(), 1, "{before:?}");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(before[0]), nix::sys::signal::Signal::SIGKILL).expect("kill");
        let t = Instant::now();
        rig.wait_for("a new ollama serve", 10, |r| r.children().first().is_some_and(|p| *p != before[0]));
        assert!(t.elapsed() < Duration::from_secs(8), "started again after {:?}", t.elapsed());
        rig.wait_for(&format!("{model} warm again"), 60, |r| {
            let s = r.state();
            s["stage"] == "ready" && s["model"] == model
        });
    };
    kill_during_load("gemma4:e2b-8k");
    assert!(rig.log().contains("ollama serve exited (signal: 9"), "{}", rig.log());
    std::fs::write(rig.root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=gemma3:4b\n").expect("w");
    kill_during_load("gemma3:4b");
    // One Ollama, one model: nothing of the killed one left beside the new.
    assert_eq!(rig.children().len(), 1);
    let ps = http_get(rig.port, "/api/ps").1;
    assert!(ps.contains("gemma3:4b") && !ps.contains("gemma4"), "{ps}");
}

/// Issue 30: the guard knows the pinned model (model.conf's) before its first connection, so an
/// Ollama that is already up (here one the supervisor refuses to start beside: port in use)
/// gets no other model through it. Before, the pin was known only once a preload began, and
/// gemma3:4b loaded through the guard.
#[test]
fn the_guard_knows_the_pin_before_anything_is_loaded() {
    let port = free_port();
    let log = std::fs::File::create(std::env::temp_dir().join(format!("squatter-{port}.log"))).expect("log");
    let _ollama = Reaped(Command::new(fake_ollama_bin()).arg("serve").env("OLLAMA_HOST", format!("127.0.0.1:{port}")).env("FAKE_OLLAMA_TIME_SCALE", "0.01").stderr(log).spawn().expect("fake-ollama"));
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "the emulator did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let root = tempfile::tempdir().expect("tmp");
    let guard = free_port();
    std::fs::create_dir_all(root.path().join("etc/jetson-llmd")).expect("mkdir");
    std::fs::write(root.path().join("etc/jetson-llmd/config.toml"), format!("metrics_listen = \"off\"\n[guard]\nenabled = true\nlisten = \"127.0.0.1:{guard}\"\n")).expect("w");
    std::fs::create_dir_all(root.path().join("etc/ollama")).expect("mkdir");
    std::fs::write(root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
    let slog = std::fs::File::create(root.path().join("supervise.log")).expect("log");
    let _sup = Reaped(
        Command::new(env!("CARGO_BIN_EXE_jetson-llmd"))
            .arg("--root")
            .arg(root.path())
            .args(["supervise", "--launcher", "process", "--ollama-bin"])
            .arg(fake_ollama_bin())
            .env("OLLAMA_HOST", format!("127.0.0.1:{port}"))
            .env_remove("NOTIFY_SOCKET")
            .stderr(slog)
            .spawn()
            .expect("spawn"),
    );
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", guard)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "the guard did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _, body) = http_post(guard, "/api/generate", r#"{"model":"gemma3:4b","prompt":"hi","stream":false}"#);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("gemma4:e2b-8k"), "names the pinned model: {body}");
    let (_, ps) = http_get(port, "/api/ps");
    assert!(!ps.contains("gemma3"), "{ps}");
}

/// A process killed and reaped when the test ends, passed or not.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 30: `bench --model OTHER --yes` on a supervised board: the supervisor's residency check
/// (every 5 s here) stands aside while the other model is measured, so the pinned model is
/// loaded once, by the benchmark putting it back, not again and again under it; and the table
/// reports the other model on the GPU.
#[test]
fn bench_of_another_model_is_not_fought_by_the_supervisor() {
    let root = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(root.path().join("etc/jetson-llmd")).expect("mkdir");
    std::fs::write(root.path().join("etc/jetson-llmd/config.toml"), "metrics_listen = \"off\"\nresidency_check = \"5s\"\n").expect("w");
    // Cold loads of ~12 s, generations slow enough that the benchmark spans several checks.
    let rig = Rig::start_in(root, &[("FAKE_OLLAMA_TIME_SCALE", "0.2")], |_| vec![]);
    rig.wait_stage("ready", 60);
    let loads = || -> u64 {
        let (_, body) = http_get(rig.port, "/_fake/state");
        serde_json::from_str::<Value>(&body).ok().and_then(|v| v["counters"]["loads_by_model"]["gemma4:e2b-8k"].as_u64()).unwrap_or(0)
    };
    let before = loads();
    let o = Command::new(env!("CARGO_BIN_EXE_jetson-llmd"))
        .arg("--root")
        .arg(rig.root.path())
        .args(["bench", "--model", "gemma3:4b", "--yes", "--runs", "3", "--tokens", "64"])
        .env("OLLAMA_HOST", format!("127.0.0.1:{}", rig.port))
        .stdin(Stdio::null())
        .output()
        .expect("bench");
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(err.contains("stand aside"), "said on screen: {err}");
    let row = out.lines().find(|l| l.starts_with("| gemma3:4b")).unwrap_or_default().to_string();
    assert!(row.contains("100%"), "the other model measured on the GPU: {out}");
    assert_eq!(loads() - before, 1, "the pinned model loaded once, by the benchmark; log:\n{}", rig.log());
    assert!(!rig.root.path().join("run/jetson-llmd/bench.pid").exists(), "the marker is gone");
    rig.wait_stage("ready", 30);
}

/// Issue 30.9: a switch to a model that must be pulled says how far the pull is, in state.json
/// (which `switch` and `status` show) while the old model serves; nothing is left there after.
#[test]
fn a_switchs_pull_shows_its_progress_while_the_old_model_serves() {
    // Pulls take 8 s at scale 1: slow enough to be seen; the first boot's load is 0.3 * 60 s.
    let rig = Rig::start(&[("FAKE_OLLAMA_TIME_SCALE", "0.3")]);
    rig.wait_stage("ready", 60);
    std::fs::write(rig.root.path().join("etc/ollama/model.conf"), "OLLAMA_MODEL=llama3.2:3b\n").expect("w");
    let mut seen = Vec::new();
    rig.wait_for("the pull's progress in state.json", 30, |r| {
        if let Some(p) = r.state()["switching"].as_str() {
            seen.push(p.to_string());
        }
        seen.iter().any(|p| p.contains("pull llama3.2:3b") && p.ends_with('%'))
    });
    assert!(seen.iter().all(|p| p.starts_with("getting llama3.2:3b ready while gemma4:e2b-8k serves: ")), "{seen:?}");
    assert_eq!(rig.state()["stage"], "ready", "the old model serves meanwhile");
    rig.wait_for("llama3.2:3b warm", 60, |r| r.state()["model"] == "llama3.2:3b" && r.state()["stage"] == "ready");
    assert!(rig.state().get("switching").is_none_or(Value::is_null), "{:#}", rig.state());
}

/// Issue 32 in the process tier: the emulator's runner is a real `llama-server` process (as
/// v0.34.4's is), listed by /api/ps after it was SIGKILLed until a request touches it. The
/// supervisor must not say ready meanwhile, must name the runner, and must bring a new one.
#[test]
fn the_emulators_runner_killed_is_seen_at_once_and_replaced() {
    let rig = Rig::start(&[("FAKE_OLLAMA_VERSION", "0.34.4")]);
    rig.wait_stage("ready", 30);
    let ollama = rig.children();
    assert_eq!(ollama.len(), 1, "{ollama:?}");
    let runners = || {
        let o = Command::new("pgrep").args(["-P", &ollama[0].to_string(), "-x", "llama-server"]).output().expect("pgrep");
        String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()).collect::<Vec<_>>()
    };
    let old = runners();
    assert_eq!(old.len(), 1, "one llama-server under the emulator: {old:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old[0]), nix::sys::signal::Signal::SIGKILL).expect("kill");
    rig.wait_for("not ready after the runner's death", 5, |r| r.state()["stage"] != "ready");
    let status = rig.state()["status"].as_str().unwrap_or_default().to_string();
    assert!(status.contains("the runner serving gemma4:e2b-8k (llama-server, pid ") && status.contains("re-warming"), "{status}");
    rig.wait_for("ready again on a new runner", 30, |r| r.state()["stage"] == "ready" && runners().len() == 1 && runners() != old);
    // The boot's load and the one the re-warm's request made the emulator do, as Ollama does
    // on the request after a runner's death: no more.
    assert_eq!(fake_state(&rig)["counters"]["loads"], 2, "{:#}", fake_state(&rig));
}
