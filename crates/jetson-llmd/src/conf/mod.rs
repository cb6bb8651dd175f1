//! What the user configures: config.toml (supervisor settings) and model.conf (the one model),
//! each in three steps: parse text (line numbers) -> merge defaults -> validate into types.

pub mod config;
pub mod model_name;
pub mod modelconf;

pub use config::{ExpectedCompute, OnRebootRequired, Settings};
pub use model_name::ModelName;
