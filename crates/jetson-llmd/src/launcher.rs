//! Who starts Ollama. The supervisor only needs: start it, know when it exits, read its log since
//! the start, stop it. `process` runs `ollama serve` as a child (containers, the demo); the
//! systemd launcher (D-Bus) implements the same trait.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[allow(async_fn_in_trait)]
pub trait Launcher {
    /// Starts Ollama; returns once the start was requested (not when the API answers).
    async fn start(&mut self) -> anyhow::Result<()>;
    /// Resolves when Ollama exits, with a description of how.
    async fn exited(&mut self) -> String;
    /// Ollama's log lines since the last start, oldest first.
    fn log_since_start(&self) -> Vec<String>;
    /// Stops Ollama (on our shutdown).
    async fn stop(&mut self);
    fn describe(&self) -> String;
}

const LOG_CAP: usize = 20_000;

/// Runs `<ollama_bin> serve` as a child process, capturing its stderr/stdout.
pub struct ProcessLauncher {
    pub bin: PathBuf,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl ProcessLauncher {
    pub fn new(bin: PathBuf, env: Vec<(String, String)>) -> ProcessLauncher {
        ProcessLauncher { bin, env, child: None, log: Arc::new(Mutex::new(VecDeque::new())) }
    }

    fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(&self, r: R) {
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "ollama", "{}", crate::gpu::sanitize(&line));
                let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                if l.len() >= LOG_CAP {
                    l.pop_front();
                }
                l.push_back(line);
            }
        });
    }
}

impl Launcher for ProcessLauncher {
    async fn start(&mut self) -> anyhow::Result<()> {
        use anyhow::Context;
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().with_context(|| format!("cannot start {} serve", self.bin.display()))?;
        if let Some(e) = child.stderr.take() {
            self.pump(e);
        }
        if let Some(o) = child.stdout.take() {
            self.pump(o);
        }
        self.child = Some(child);
        Ok(())
    }

    async fn exited(&mut self) -> String {
        match self.child.as_mut() {
            Some(c) => match c.wait().await {
                Ok(s) => {
                    self.child = None;
                    format!("ollama serve exited ({s})")
                }
                Err(e) => format!("cannot wait for ollama serve: {e}"),
            },
            None => std::future::pending().await,
        }
    }

    fn log_since_start(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
            if tokio::time::timeout(std::time::Duration::from_secs(10), c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
    }

    fn describe(&self) -> String {
        format!("{} serve (child process)", self.bin.display())
    }
}
