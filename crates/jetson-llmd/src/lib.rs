//! jetson-llmd: keeps one Ollama model warm on a Jetson's GPU and explains itself when it cannot.
//!
//! Subsystems, each owning one thing: `conf` (what the user configures), `ollama` (talking to
//! Ollama), `supervisor` (the control loop and its backends), `host` (files, journal, systemd,
//! signals), `report` (status), `install` (units). The command line lives in the binary (cli/).

pub mod conf;
pub mod failure;
pub mod guard;
pub mod host;
pub mod install;
pub mod ollama;
pub mod report;
pub mod supervisor;
pub mod text;
#[cfg(test)]
mod testing;
