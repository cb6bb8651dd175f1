//! jetson-llmd command line: parse, log, run the command, print the error chain, exit code.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    // exec-child replaces this process with Ollama: no logging, no runtime.
    if let cli::Cmd::ExecChild(a) = &args.cmd {
        std::process::exit(cli::exec_child::run(a));
    }
    // A command whose output is piped into `head` ends quietly when the reader goes, as Unix
    // tools do (Rust ignores SIGPIPE, and println! then panics). Not the daemons: a closed
    // stderr must never take down the process that keeps the model warm.
    if !matches!(args.cmd, cli::Cmd::Supervise { .. } | cli::Cmd::Keepalive { .. } | cli::Cmd::Preload) {
        sigpipe::reset();
    }
    cli::logging::init(&args.global);
    // Blocking threads (tokio::fs reads of /proc and /sys every 10-15 s) are kept for a minute:
    // with tokio's default 10 s the supervisor created and tore down a thread every cycle
    // (strace: 4 clone3 a minute while idle).
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_keep_alive(std::time::Duration::from_secs(60)).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(jetson_llmd::failure::code::FAILED);
        }
    };
    let code = match rt.block_on(cli::run(args)) {
        Ok(c) => c,
        Err(e) => cli::report_error(&e),
    };
    // Do not wait for blocking reads that may still hang (a journalctl that never ends).
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    std::process::exit(code);
}
