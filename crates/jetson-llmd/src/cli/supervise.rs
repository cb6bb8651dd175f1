//! `jetson-llmd supervise`: the daemon, with the systemd or the process backend.

use super::{cmdline, context, Global, LauncherArg};
use anyhow::Context;
use jetson_llmd::failure::code;
use jetson_llmd::host::memory::DropCaches;
use jetson_llmd::host::notify::{watchdog_period, SdNotify};
use jetson_llmd::host::rooted;
use jetson_llmd::host::signals::Signals;
use jetson_llmd::host::systemd::Systemd;
use jetson_llmd::records::state::{LauncherKind, StateFile};
use jetson_llmd::supervisor::process::ProcessBackend;
use jetson_llmd::supervisor::systemd::SystemdBackend;
use jetson_llmd::supervisor::Supervisor;
use std::path::PathBuf;
use std::time::Duration;

/// model.conf is read this often when inotify is not available.
const CONF_POLL: Duration = Duration::from_secs(2);

async fn start_guard(ctx: &super::Ctx, state: &StateFile, signals: &Signals, policy: tokio::sync::watch::Receiver<jetson_llmd::conf::config::GuardSettings>) -> anyhow::Result<std::sync::Arc<jetson_llmd::guard::Stats>> {
    use jetson_llmd::failure::Failure;
    let listen = ctx.settings.guard.listen;
    if jetson_llmd::guard::clashes_with_ollama(listen, &ctx.host.url) {
        return Err(Failure::Config(format!("[guard] listen = {listen} is where Ollama itself listens ({}): give Ollama a private address, e.g. OLLAMA_HOST=127.0.0.1:11435 in /etc/jetson-llmd/ollama.env", ctx.host.url)).into());
    }
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| Failure::Config(format!("[guard] cannot listen on {listen}: {e}; is something (an Ollama started by hand?) already there?")))?;
    let stats = std::sync::Arc::new(jetson_llmd::guard::Stats::default());
    let mut guard = jetson_llmd::guard::Guard::new(ctx.host.url.clone(), ctx.settings.guard.clone(), state.subscribe(), stats.clone());
    // SIGHUP's re-read [guard] reaches the running guard.
    guard.follow(policy);
    guard.metrics_listen = ctx.settings.metrics_listen;
    let guard = std::sync::Arc::new(guard);
    tracing::info!("guard on {listen}, forwarding to Ollama at {}", ctx.host.url);
    let stop = signals.shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = jetson_llmd::guard::serve(listener, guard, stop).await {
            tracing::error!("guard: {e}");
        }
    });
    Ok(stats)
}

/// An exclusive lock on `<state_dir>/supervise.lock`, or why not.
fn one_supervisor(dir: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use jetson_llmd::failure::Failure;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let path = dir.join("supervise.lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(dir.join("state.json")).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()).and_then(|v| v["pid"].as_u64());
            Err(Failure::Config(format!("another jetson-llmd supervise{} already runs with the state directory {}; stop it first (sudo systemctl stop jetson-llmd)", pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), dir.display())).into())
        }
        Err((_, e)) => Err(anyhow::anyhow!("cannot lock {}: {e}", path.display())),
    }
}

pub async fn run(g: &Global, launcher: LauncherArg, ollama_bin: Option<PathBuf>) -> anyhow::Result<i32> {
    let ctx = context(g).await?;
    // Handlers first: a SIGTERM during start-up must already end us cleanly.
    let signals = Signals::install();
    let kind = match launcher {
        LauncherArg::Systemd => LauncherKind::Systemd,
        LauncherArg::Process => LauncherKind::Process,
    };
    let state_dir = rooted(&ctx.root, &ctx.settings.state_dir);
    // One supervisor per state directory: a second one must not overwrite the first one's
    // state.json (status would then follow the second, which exits at once). Held until exit.
    let _one = one_supervisor(&state_dir)?;
    let mut state = StateFile::new(Some(&state_dir), kind);
    // The guard knows the pinned model before its first connection (issue 30): model.conf's,
    // which the boot loads first. Without it the guard refuses what would load a model; an
    // invalid model.conf at start ends the supervisor anyway (exit 2).
    state.pin_from(&ctx.paths.model_conf).await;
    // The guard binds first: clients expect Ollama on its address, and a clash is a
    // configuration error to report before anything starts.
    let (policy, policy_rx) = tokio::sync::watch::channel(ctx.settings.guard.clone());
    let guard_stats = if ctx.settings.guard.enabled { Some(start_guard(&ctx, &state, &signals, policy_rx).await?) } else { None };
    let policy = guard_stats.is_some().then_some(policy);
    // Served once the backend is up: a supervisor that cannot start says only why.
    let metrics = |state: &StateFile| {
        if let Some(listen) = ctx.settings.metrics_listen {
            tokio::spawn(jetson_llmd::report::metrics::serve(listen, state.subscribe(), ctx.root.clone(), guard_stats.clone(), signals.shutdown.clone()));
        }
    };
    let cmdline = cmdline(&ctx.root).await;
    let result = match launcher {
        LauncherArg::Systemd => {
            let sd = Systemd::system().await.context("supervise needs systemd's D-Bus API (use --launcher process in a container without systemd)")?;
            let preload_deadline = ctx.settings.load_timeout + Duration::from_secs(3600);
            let backend = SystemdBackend::new(sd, ctx.settings.startup_timeout, preload_deadline, jetson_llmd::host::rooted(&ctx.root, &ctx.settings.state_dir)).await?;
            metrics(&state);
            let sup =
                Supervisor { api: ctx.client.clone(), backend, notify: SdNotify, settings: ctx.settings.clone(), paths: ctx.paths.clone(), cmdline, state, conf_poll: CONF_POLL, conf_watch: true, watchdog: watchdog_period(), guard: policy.clone() };
            sup.run(signals).await
        }
        LauncherArg::Process => {
            let bin = ollama_bin.unwrap_or_else(|| ctx.settings.ollama_bin.clone());
            let env = vec![
                // The address as given (0.0.0.0 serves the LAN); we connect on loopback.
                ("OLLAMA_HOST".to_string(), ctx.host.bind.clone()),
                // The seed's rules: pinned by default, one model at a time on 8 GB.
                ("OLLAMA_KEEP_ALIVE".to_string(), "-1".to_string()),
                ("OLLAMA_MAX_LOADED_MODELS".to_string(), "1".to_string()),
            ];
            let url = &ctx.host.url;
            let connect = (url.host_str().unwrap_or("127.0.0.1").to_string(), url.port_or_known_default().unwrap_or(11434));
            let shim = std::env::current_exe().ok();
            let backend = ProcessBackend::new(bin, env, shim, connect, DropCaches::under(&ctx.root));
            metrics(&state);
            let sup =
                Supervisor { api: ctx.client.clone(), backend, notify: SdNotify, settings: ctx.settings.clone(), paths: ctx.paths.clone(), cmdline, state, conf_poll: CONF_POLL, conf_watch: true, watchdog: watchdog_period(), guard: policy.clone() };
            sup.run(signals).await
        }
    };
    result?;
    Ok(code::OK)
}
