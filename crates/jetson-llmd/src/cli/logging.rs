//! Logs to the journal (structured) under systemd, to stderr otherwise.

use super::Global;

pub fn init(g: &Global) {
    use tracing_subscriber::prelude::*;
    let level = if g.quiet {
        "error"
    } else {
        match g.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("JETSON_LLMD_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(j) = tracing_journald::layer() {
            tracing_subscriber::registry().with(filter).with(j).init();
            return;
        }
    }
    tracing_subscriber::registry().with(filter).with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_target(false).without_time()).init();
}
