//! What jetson-llmd tells people and scripts: status, doctor, bench, the board monitor; metrics later.

pub mod bench;
pub mod doctor;
pub mod metrics;
pub mod monitor;
pub mod status;
