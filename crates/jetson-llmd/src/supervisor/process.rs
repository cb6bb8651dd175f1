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
use tokio::sync::{mpsc, watch};

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
    /// The `ollama serve` we started, while it runs.
    running: Option<Running>,
    /// Each child's exit, sent by the task that waits for it. Kept here rather than in the
    /// future that waits: `next_event` is dropped by the loop's `select!` whenever another arm
    /// wins, and an exit must survive that (issue 30: one lost exit left the supervisor
    /// retrying a load against an Ollama that no longer existed, forever).
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits: mpsc::UnboundedReceiver<Exit>,
    /// Children started so far: an exit is matched to the child it is about.
    started: u64,
    log: Arc<Mutex<VecDeque<String>>>,
    /// Woken at every line Ollama writes: waits for its API and its discovery line look again
    /// at once instead of at their next poll.
    activity: Arc<tokio::sync::Notify>,
}

/// The child that runs.
struct Running {
    /// Its pid, which leads its process group (None: it exited before we asked).
    pid: Option<i32>,
    generation: u64,
    /// Turns true once it exited and its exit is in `exits` (see [`Backend::gone`]).
    gone: watch::Receiver<bool>,
}

/// A child's exit, in words, with its last output.
struct Exit {
    generation: u64,
    how: String,
}

fn tail(log: &Mutex<VecDeque<String>>, n: usize) -> String {
    let l = log.lock().unwrap_or_else(|p| p.into_inner());
    l.iter().rev().take(n).rev().cloned().collect::<Vec<_>>().join(" | ")
}

fn killpg(pid: Option<i32>, sig: nix::sys::signal::Signal) {
    if let Some(p) = pid {
        // The child leads its own process group: this reaches Ollama's runners too.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p), sig);
    }
}

impl<R: MemoryRelief> ProcessBackend<R> {
    pub fn new(bin: PathBuf, env: Vec<(String, String)>, shim: Option<PathBuf>, connect: (String, u16), relief: R) -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        ProcessBackend { bin, env, shim, connect, relief, running: None, exits_tx, exits, started: 0, log: Arc::new(Mutex::new(VecDeque::new())), activity: Arc::default() }
    }

    fn drain<S: tokio::io::AsyncRead + Unpin + Send + 'static>(&self, s: S) -> tokio::task::JoinHandle<()> {
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
        })
    }

    /// Something already answers where Ollama is to listen: a second `ollama serve` would fail to
    /// bind and we would supervise a server we did not start.
    async fn port_taken(&self) -> bool {
        let addr = (self.connect.0.trim_start_matches('[').trim_end_matches(']'), self.connect.1);
        matches!(tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
    }

    /// Waits for `child` in a task of its own, which reports its exit through `exits` and then
    /// turns `gone` true.
    fn watch_exit(&self, mut child: Child, generation: u64, drains: Vec<tokio::task::JoinHandle<()>>) -> watch::Receiver<bool> {
        let (gone_tx, gone) = watch::channel(false);
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        let (tx, log) = (self.exits_tx.clone(), self.log.clone());
        tokio::spawn(async move {
            let how = match child.wait().await {
                Ok(s) => format!("ollama serve exited ({s})"),
                Err(e) => format!("cannot wait for ollama serve: {e}"),
            };
            // Its runners are its children, in its process group, and outlive a killed `ollama
            // serve` (seen with the real Ollama 0.24: the runner kept the model loaded): take
            // them along, or the next Ollama loads a second copy into the same 8 GB.
            killpg(pid, nix::sys::signal::Signal::SIGKILL);
            // The pipes close when the last process of the group is gone: then the drains have
            // the last lines, where the reason usually is. Bounded, for a runner that left the
            // group and keeps a pipe open.
            for d in drains {
                let _ = tokio::time::timeout(Duration::from_secs(2), d).await;
            }
            let last = tail(&log, 3);
            let how = if last.is_empty() { how } else { format!("{how}; last output: {last}") };
            let _ = tx.send(Exit { generation, how });
            let _ = gone_tx.send(true);
        });
        gone
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
        if self.running.is_some() {
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
        let mut drains = Vec::new();
        if let Some(e) = child.stderr.take() {
            drains.push(self.drain(e));
        }
        if let Some(o) = child.stdout.take() {
            drains.push(self.drain(o));
        }
        self.started += 1;
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        let gone = self.watch_exit(child, self.started, drains);
        self.running = Some(Running { pid, generation: self.started, gone });
        Ok(())
    }

    async fn next_event(&mut self) -> OllamaEvent {
        loop {
            let Some(generation) = self.running.as_ref().map(|r| r.generation) else {
                return std::future::pending().await;
            };
            // Cancel-safe: a message is taken out of the channel only in the poll that returns it.
            match self.exits.recv().await {
                Some(e) if e.generation == generation => {
                    self.running = None;
                    return OllamaEvent::Down(e.how);
                }
                // A child stopped by `shutdown`, reported after it.
                Some(_) => continue,
                None => return std::future::pending().await,
            }
        }
    }

    fn gone(&self) -> Option<watch::Receiver<bool>> {
        self.running.as_ref().map(|r| r.gone.clone())
    }

    async fn ollama_pid(&mut self) -> Option<u32> {
        let r = self.running.as_ref()?;
        // Not once it exited: its runners are the restart's business.
        (!*r.gone.borrow()).then_some(r.pid? as u32)
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
        let Some(r) = self.running.take() else { return };
        killpg(r.pid, nix::sys::signal::Signal::SIGTERM);
        let mut gone = r.gone;
        if tokio::time::timeout(Duration::from_secs(10), gone.wait_for(|g| *g)).await.is_err() {
            tracing::warn!("ollama serve did not stop within 10 s of SIGTERM; killing it");
            killpg(r.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = gone.wait_for(|g| *g).await;
        }
    }

    async fn request_reboot(&mut self) -> Result<(), Failure> {
        let sd = crate::host::systemd::Systemd::system().await.map_err(|e| Failure::Systemd(e.to_string()))?;
        sd.request_reboot().await.map_err(|e| Failure::Systemd(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::NoRelief;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for `ollama serve` that says why and exits 3 after `secs`.
    fn script(dir: &std::path::Path, secs: &str) -> PathBuf {
        let p = dir.join("ollama");
        std::fs::write(&p, format!("#!/bin/sh\nsleep {secs}\necho 'cudaMalloc failed' >&2\nexit 3\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
    }

    /// Issue 30: the loop's `select!` drops `next_event` whenever another arm is ready in the
    /// same poll (a timer due after a long step). The exit must still be reported, once.
    #[tokio::test]
    async fn an_exit_survives_a_dropped_next_event() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut b = ProcessBackend::new(script(dir.path(), "0.2"), Vec::new(), None, ("127.0.0.1".into(), free_port()), NoRelief);
        b.start_ollama().await.expect("start");
        // Polled and dropped over and over while the child exits, as a busy loop would: each
        // round another arm is ready 1 ms in.
        let t0 = std::time::Instant::now();
        let mut got = None;
        while got.is_none() && t0.elapsed() < Duration::from_secs(5) {
            tokio::select! {
                biased;
                e = b.next_event() => got = Some(e),
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        match got {
            Some(OllamaEvent::Down(how)) => {
                assert!(how.contains("exit status: 3"), "{how}");
                assert!(how.contains("cudaMalloc failed"), "its last words: {how}");
            }
            Some(other) => panic!("{other:?}"),
            None => panic!("the exit was lost"),
        }
        assert!(b.gone().is_none(), "reported once, and nothing runs");
        assert!(tokio::time::timeout(Duration::from_millis(200), b.next_event()).await.is_err(), "no second report");
    }

    /// A child stopped by `shutdown` is not reported as a crash afterwards.
    #[tokio::test]
    async fn a_child_we_stopped_is_not_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut b = ProcessBackend::new(script(dir.path(), "30"), Vec::new(), None, ("127.0.0.1".into(), free_port()), NoRelief);
        b.start_ollama().await.expect("start");
        b.shutdown().await;
        assert!(b.gone().is_none());
        b.start_ollama().await.expect("start again");
        assert!(tokio::time::timeout(Duration::from_millis(300), b.next_event()).await.is_err(), "the first child's exit is not the second's");
        b.shutdown().await;
    }
}
