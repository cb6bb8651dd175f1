//! What jetson-llmd tells people and scripts: `status` today; doctor, bench and metrics later.

pub mod doctor;
pub mod monitor;
pub mod status;
