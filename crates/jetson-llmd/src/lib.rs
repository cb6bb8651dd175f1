//! jetson-llmd: keeps one Ollama model warm on a Jetson's GPU and explains itself when it cannot.
//!
//! Subsystems, each owning one thing: `conf` (what the user configures), `ollama` (talking to
//! Ollama), `supervisor` (the one decider and its driver), `host` (files, journal, systemd,
//! signals), `report` (status), `install` (units), `guard` (the front door), `fleet` (configs for
//! LiteLLM and Prometheus from several boards), and the leaf
//! `records` (what they share on disk: state.json, keepalive.json, preload.json). The command line lives in the binary (cli/).

pub mod conf;
pub mod failure;
pub mod fleet;
pub mod guard;
pub mod host;
pub mod install;
pub mod ollama;
pub mod records;
pub mod report;
pub mod supervisor;
#[cfg(test)]
mod testing;
pub mod text;
