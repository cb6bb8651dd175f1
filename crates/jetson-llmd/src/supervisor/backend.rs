//! What differs between running Ollama as our child and driving it through systemd: how it is
//! started, how we hear that it went down or came back, where its log comes from, how the model
//! is preloaded and kept warm, and what is stopped on a terminal failure. The supervisor's loop
//! (supervisor/mod.rs) is the same for both.

use crate::conf::{ModelName, Settings};
use crate::failure::Failure;
use crate::ollama::warm::WarmReport;
use crate::ollama::OllamaApi;

/// What the backend noticed about Ollama on its own.
#[derive(Debug)]
pub enum OllamaEvent {
    /// Ollama exited, crashed or its unit went down (how, in words).
    Down(String),
    /// Ollama is running again without us starting it (systemd's Restart=).
    Up,
    /// A separate part failed in a way that needs the supervisor (ollama-keepalive.service
    /// reporting reboot required or the model on the CPU in keepalive.json).
    Failed(Failure),
}

#[allow(async_fn_in_trait)]
pub trait Backend {
    /// Which launcher this is (for state.json and messages).
    fn kind(&self) -> crate::records::state::LauncherKind;

    /// What is started, in words ("/usr/local/bin/ollama serve (child process)").
    fn describe(&self) -> String;

    /// Starts Ollama, or makes sure it runs; returns once it is started (not when the API answers).
    async fn start_ollama(&mut self) -> Result<(), Failure>;

    /// The next thing that happened to Ollama; pending while nothing does. Cancel-safe.
    async fn next_event(&mut self) -> OllamaEvent;

    /// Turns true the moment the Ollama running now is gone, its exit then waiting in
    /// [`Backend::next_event`]: a long step (a load, a pull, a switch) is abandoned on it instead
    /// of retrying against an Ollama that no longer exists until its deadline. None: not running,
    /// or this backend hears of Ollama only through `next_event` (systemd restarts its unit, and
    /// the step's retries reach the new one).
    fn gone(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }

    /// The pid of `ollama serve` now (our child, or ollama.service's MainPID), whose children
    /// are the runners the runner watch follows. None: not running or not known.
    async fn ollama_pid(&mut self) -> Option<u32> {
        None
    }

    /// Woken whenever Ollama writes a line (process launcher): a wait for its API or its
    /// discovery line looks again at once. None: those waits poll (the journal has no cheap
    /// wake-up).
    fn activity(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// Ollama's log lines since its last start, oldest first (bounded).
    async fn ollama_log(&mut self) -> Result<Vec<String>, Failure>;

    /// Loads `model` pinned onto the GPU (in-process, or by running ollama-preload.service).
    async fn warm<A: OllamaApi>(&mut self, api: &A, settings: &Settings, model: &ModelName) -> Result<(), Failure>;

    /// One keepalive tick when the loop itself keeps the model warm; None when a separate
    /// keepalive (ollama-keepalive.service) does.
    async fn tick<A: OllamaApi>(&mut self, api: &A, settings: &Settings, model: &ModelName) -> Option<Result<WarmReport, Failure>>;

    /// A report of the separate keepalive written since the last call (None: nothing new, or
    /// no separate keepalive): its re-warms count in the one eviction back-off.
    async fn last_tick(&mut self) -> Option<crate::ollama::warm::TickRecord> {
        None
    }

    /// Makes the separate keepalive ping now (a residency check found the model gone or
    /// unpinned). False when there is none: the loop ticks itself.
    async fn keepalive_now(&mut self) -> bool;

    /// Starts the separate keepalive, if there is one.
    async fn start_keepalive(&mut self) -> Result<(), Failure>;

    /// Stops the separate keepalive so it does not reload the model behind our back after a
    /// terminal failure (onto the CPU, or into unallocatable memory).
    async fn stop_keepalive(&mut self);

    /// Our shutdown: the child process stops with us; ollama.service stays up.
    async fn shutdown(&mut self);

    /// Asks the machine to reboot (on_reboot_required = "reboot").
    async fn request_reboot(&mut self) -> Result<(), Failure>;
}
