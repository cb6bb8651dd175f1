//! What the subsystems share, on disk and between processes: state.json (the supervisor's
//! stage, timeline and verdicts), keepalive.json and preload.json (what the worker units
//! report), and the types they are made of. A leaf: it imports only `conf` (model names),
//! `failure` (typed failures), `host` (bounded reads, atomic writes) and `text`, and every
//! subsystem that reads or writes these files imports it, never each other for them.

pub mod gpu;
pub mod stage;
pub mod state;
pub mod time;
pub mod warm;
pub mod warning;

pub use stage::Stage;
pub use time::Timestamp;
pub use warning::{Warning, WarningKind, Warnings};
