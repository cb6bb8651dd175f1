//! Putting jetson-llmd on a machine: the systemd units today; install/upgrade later.

pub mod units;
