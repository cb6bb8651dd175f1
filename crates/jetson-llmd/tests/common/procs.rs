//! Processes the multi-board tests start: free ports, a board (`jetson-llmd supervise` with
//! fake-ollama as its Ollama) and a child stopped with SIGTERM (then SIGKILL after 10 s) when
//! dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while self.0.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// fake-ollama, built beside this test's jetson-llmd (scripts/test builds every binary first).
pub fn fake_ollama() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jetson-llmd")).with_file_name("fake-ollama")
}

/// A board: `jetson-llmd --root ROOT supervise --launcher process` with fake-ollama on `ollama`
/// (host:port) at 100x board speed, run inside network namespace `netns` when given.
pub fn supervise(root: &Path, ollama: &str, netns: Option<&str>) -> Proc {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(env!("CARGO_BIN_EXE_jetson-llmd"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_jetson-llmd")),
    };
    let child = cmd
        .arg("--root")
        .arg(root)
        .args(["supervise", "--launcher", "process", "--ollama-bin"])
        .arg(fake_ollama())
        .env("OLLAMA_HOST", ollama)
        .env("FAKE_OLLAMA_TIME_SCALE", "0.01")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a board");
    Proc(child)
}
