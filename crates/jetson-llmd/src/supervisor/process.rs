//! The process backend (`supervise --launcher process`): `ollama serve` as our child, for
//! containers without systemd and the demo. The child is in its own process group (so Ollama's
//! runners stop with it), dies with us (PR_SET_PDEATHSIG, set by `jetson-llmd exec-child` before
//! it execs Ollama: no unsafe pre_exec hook here), and its output is drained, lossily decoded,
//! for as long as it lives: a pipe we stop reading is a child that dies on its next write.

use super::backend::{Backend, OllamaEvent};
use crate::conf::{ModelName, Settings};
use crate::failure::Failure;
use crate::host::memory::MemoryRelief;
use crate::ollama::warm::{self, WarmReport};
use crate::ollama::OllamaApi;
use crate::records::state::LauncherKind;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Lines of Ollama's output kept (each at most journal::MAX_LINE): the discovery line comes in
/// the first few dozen.
const LOG_LINES: usize = 4000;

pub struct ProcessBackend<R: MemoryRelief> {
    bin: PathBuf,
    env: Vec<(String, String)>,
    /// `jetson-llmd exec-child` (our own binary), which sets the parent-death signal and execs
    /// Ollama. None runs Ollama directly (tests of this module).
    shim: Option<PathBuf>,
    /// Where Ollama will listen, as a client connects to it (host, port): checked before start.
    connect: (String, u16),
    relief: R,
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
    /// Woken at every line Ollama writes: waits for its API and its discovery line look again
    /// at once instead of at their next poll.
    activity: Arc<tokio::sync::Notify>,
}

impl<R: MemoryRelief> ProcessBackend<R> {
    pub fn new(bin: PathBuf, env: Vec<(String, String)>, shim: Option<PathBuf>, connect: (String, u16), relief: R) -> Self {
        ProcessBackend { bin, env, shim, connect, relief, child: None, log: Arc::new(Mutex::new(VecDeque::new())), activity: Arc::default() }
    }

    fn drain<S: tokio::io::AsyncRead + Unpin + Send + 'static>(&self, s: S) {
        let log = self.log.clone();
        let activity = self.activity.clone();
        tokio::spawn(async move {
            let r = crate::host::journal::read_lines(s, usize::MAX, |line| {
                tracing::debug!(target: "ollama", "{line}");
                let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                if l.len() >= LOG_LINES {
                    l.pop_front();
                }
                l.push_back(line);
                activity.notify_waiters();
            })
            .await;
            if let Err(e) = r {
                tracing::warn!("reading Ollama's output failed: {e}");
            }
        });
    }

    fn tail(&self, n: usize) -> String {
        let l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().rev().take(n).rev().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// Something already answers where Ollama is to listen: a second `ollama serve` would fail to
    /// bind and we would supervise a server we did not start.
    async fn port_taken(&self) -> bool {
        let addr = (self.connect.0.trim_start_matches('[').trim_end_matches(']'), self.connect.1);
        matches!(tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
    }

    fn signal_group(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            if let Ok(p) = i32::try_from(pid) {
                // The child leads its own process group: this reaches Ollama's runners too.
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p), sig);
            }
        }
    }
}

impl<R: MemoryRelief> Backend for ProcessBackend<R> {
    fn activity(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.activity.clone())
    }

    fn kind(&self) -> LauncherKind {
        LauncherKind::Process
    }

    fn describe(&self) -> String {
        format!("{} serve (child process)", self.bin.display())
    }

    async fn start_ollama(&mut self) -> Result<(), Failure> {
        if self.child.is_some() {
            return Ok(());
        }
        if self.port_taken().await {
            let (h, p) = &self.connect;
            return Err(Failure::PortInUse { addr: format!("{h}:{p}") });
        }
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let mut cmd = match &self.shim {
            Some(shim) => {
                let mut c = Command::new(shim);
                c.arg("exec-child").arg("--parent").arg(std::process::id().to_string()).arg("--").arg(&self.bin).arg("serve");
                c
            }
            None => {
                let mut c = Command::new(&self.bin);
                c.arg("serve");
                c
            }
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).process_group(0);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| Failure::OllamaStart(format!("{} serve: {e}", self.bin.display())))?;
        if let Some(e) = child.stderr.take() {
            self.drain(e);
        }
        if let Some(o) = child.stdout.take() {
            self.drain(o);
        }
        self.child = Some(child);
        Ok(())
    }

    async fn next_event(&mut self) -> OllamaEvent {
        let Some(c) = self.child.as_mut() else { return std::future::pending().await };
        let pid = c.id();
        let how = match c.wait().await {
            Ok(s) => format!("ollama serve exited ({s})"),
            Err(e) => format!("cannot wait for ollama serve: {e}"),
        };
        // Its runners are its children, in its process group, and outlive a killed `ollama
        // serve` (seen with the real Ollama 0.24: the runner kept the model loaded): take them
        // along, or the next Ollama loads a second copy into the same 8 GB.
        if let Some(p) = pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
        }
        self.child = None;
        // Let the drains catch the last lines (the reason is usually there).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tail = self.tail(3);
        OllamaEvent::Down(if tail.is_empty() { how } else { format!("{how}; last output: {tail}") })
    }

    async fn ollama_log(&mut self) -> Result<Vec<String>, Failure> {
        Ok(self.log.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect())
    }

    async fn warm<A: OllamaApi>(&mut self, api: &A, settings: &Settings, model: &ModelName) -> Result<(), Failure> {
        warm::preload(api, settings, model, &self.relief).await.map(|_| ())
    }

    async fn tick<A: OllamaApi>(&mut self, api: &A, settings: &Settings, model: &ModelName) -> Option<Result<WarmReport, Failure>> {
        Some(warm::tick(api, settings, model, &self.relief).await)
    }

    async fn keepalive_now(&mut self) -> bool {
        false
    }

    async fn start_keepalive(&mut self) -> Result<(), Failure> {
        Ok(())
    }

    async fn stop_keepalive(&mut self) {}

    async fn shutdown(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal_group(nix::sys::signal::Signal::SIGTERM);
        let waited = match self.child.as_mut() {
            Some(c) => tokio::time::timeout(Duration::from_secs(10), c.wait()).await.is_ok(),
            None => true,
        };
        if !waited {
            tracing::warn!("ollama serve did not stop within 10 s of SIGTERM; killing it");
            self.signal_group(nix::sys::signal::Signal::SIGKILL);
            if let Some(c) = self.child.as_mut() {
                let _ = c.wait().await;
            }
        }
        self.child = None;
    }

    async fn request_reboot(&mut self) -> Result<(), Failure> {
        let sd = crate::host::systemd::Systemd::system().await.map_err(|e| Failure::Systemd(e.to_string()))?;
        sd.request_reboot().await.map_err(|e| Failure::Systemd(e.to_string()))
    }
}
