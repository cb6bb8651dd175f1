//! Putting Ollama and jetson-llmd on a Jetson, keeping them current, taking them off.
//!
//! rustup's shape: [`detect`] says whether to touch the machine at all, [`plan`] computes what
//! would change without changing anything (`--dry-run` prints it), [`apply`] carries it out with
//! everything slow or fallible first and a rollback for the rest. [`fetch`] and [`archive`] are
//! the untrusted-input boundary (checksums before extraction, every tar entry checked); [`tree`]
//! owns the versioned Ollama store and its atomic switch; [`canary`] proves an upgrade on the
//! GPU or takes it back.

pub mod apply;
pub mod archive;
pub mod canary;
pub mod detect;
pub mod fetch;
pub mod plan;
pub mod release;
pub mod services;
pub mod state;
pub mod tree;
pub mod units;
