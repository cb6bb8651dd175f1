//! jetson-llmd command line: parse, set up logging, dispatch, print the error chain, exit code.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use jetson_llmd::api::OllamaApi;
use jetson_llmd::config::{self, Settings};
use jetson_llmd::launcher::ProcessLauncher;
use jetson_llmd::model_name::ModelName;
use jetson_llmd::outcome::{code, Failure};
use jetson_llmd::state::StateFile;
use jetson_llmd::warm::{self, DropCaches};
use jetson_llmd::{gpu, modelconf, rooted, status};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "jetson-llmd",
    version,
    about = "Keeps one Ollama model warm on the GPU of a Jetson Orin Nano, and says why when it cannot",
    long_about = "Keeps one Ollama model warm on the GPU of a Jetson Orin Nano (8 GB unified memory, JetPack 6).\n\n\
The model named in /etc/ollama/model.conf (OLLAMA_MODEL=gemma4:e2b-8k) is loaded first at boot with\n\
keep_alive -1 and pinned there: every unload/reload cycle risks GPU memory that cannot be allocated\n\
again until a reboot. `supervise` runs the whole chain; `preload` and `keepalive` are its steps;\n\
`status` and `gpu-check` explain what is going on.",
    after_help = "Exit codes: 0 ok, 1 failed or degraded (e.g. model on CPU), 2 bad usage or configuration,\n3 Ollama unreachable, 4 reboot required (GPU memory unallocatable), 5 Ollama runs on the CPU (supervise)."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Global {
    /// Supervisor settings (every key optional).
    #[arg(long, global = true, value_name = "PATH", default_value = config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// The file naming the model to keep warm (one line: OLLAMA_MODEL=<name>).
    #[arg(long, global = true, value_name = "PATH", default_value = modelconf_default())]
    model_conf: PathBuf,
    /// Treat DIR as / for host files (/etc, /proc, /run...); explicit paths are taken as given.
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Ollama's address, read like Ollama's CLI reads OLLAMA_HOST (scheme and port optional).
    #[arg(long = "ollama", global = true, env = "OLLAMA_HOST", value_name = "URL", default_value = ollama_client::DEFAULT_HOST)]
    ollama: String,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
}

fn modelconf_default() -> &'static str {
    config::DEFAULT_MODEL_CONF
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum LauncherKind {
    /// Drive ollama.service, ollama-preload.service and ollama-keepalive.service over D-Bus.
    Systemd,
    /// Run `ollama serve` as a child process (containers, the demo).
    Process,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: start Ollama, check its GPU, preload the model, keep it warm, recover.
    Supervise {
        /// How Ollama is started.
        #[arg(long, value_enum, default_value = "systemd")]
        launcher: LauncherKind,
        /// The `ollama` binary (overrides config.toml's ollama_bin).
        #[arg(long, value_name = "PATH")]
        ollama_bin: Option<PathBuf>,
    },
    /// Load the model.conf model pinned (keep_alive -1), check it is on the GPU, exit when warm.
    Preload,
    /// Re-assert the pin every interval (default 4m) and re-warm the model if it was unloaded.
    Keepalive {
        /// Interval between pings (overrides config.toml), e.g. 4m, 90s.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        interval: Option<Duration>,
        /// One ping, then exit.
        #[arg(long)]
        once: bool,
    },
    /// One screen: Ollama, GPU, model placement and expiry, last ping, boot timeline, memory.
    Status,
    /// GPU verdict from Ollama's log (the journal of ollama.service, or --log FILE).
    GpuCheck {
        /// A saved log: plain `ollama serve` output or journalctl output (short, cat or json).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
    /// Validate config.toml and model.conf; print each problem as file:line.
    Check,
    /// Print the systemd units rendered for the installed binaries, or write them to --output.
    Units {
        /// The jetson-llmd binary the units run.
        #[arg(long, value_name = "PATH", default_value = jetson_llmd::units::DEFAULT_JETSON_LLMD)]
        jetson_llmd: PathBuf,
        /// The ollama binary ollama.service runs (default: config.toml's ollama_bin).
        #[arg(long, value_name = "PATH")]
        ollama_bin: Option<PathBuf>,
        /// Write the units under this directory (e.g. /etc/systemd/system) instead of printing.
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
}

fn init_tracing(g: &Global) {
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
    // Under systemd with a journal stream, log structured to journald; otherwise plain stderr.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(j) = tracing_journald::layer() {
            tracing_subscriber::registry().with(filter).with(j).init();
            return;
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_target(false).without_time())
        .init();
}

fn main() {
    let cli = Cli::parse();
    init_tracing(&cli.global);
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(code::FAILED);
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!(" -> {cause}");
            }
            e.chain().find_map(|c| c.downcast_ref::<Failure>()).map_or(code::FAILED, Failure::exit_code)
        }
    };
    std::process::exit(code);
}

struct Ctx {
    settings: Settings,
    client: ollama_client::Client,
    model_conf: PathBuf,
    root: PathBuf,
    json: bool,
}

/// config.toml and model.conf: explicit paths are taken as given; the defaults live under --root.
fn paths(g: &Global) -> (PathBuf, PathBuf) {
    let cfg = if g.config.as_os_str() == config::DEFAULT_CONFIG { rooted(&g.root, &g.config) } else { g.config.clone() };
    let mc = if g.model_conf.as_os_str() == config::DEFAULT_MODEL_CONF { rooted(&g.root, &g.model_conf) } else { g.model_conf.clone() };
    (cfg, mc)
}

fn context(g: &Global) -> anyhow::Result<Ctx> {
    let (cfg_path, model_conf) = paths(g);
    let settings = config::load(&cfg_path).map_err(|e| Failure::Config(e.to_string()))?;
    let url = ollama_client::parse_host(&g.ollama).map_err(|e| Failure::Config(e.to_string()))?;
    if !ollama_client::is_loopback(&url) && !settings.allow_remote_ollama {
        return Err(Failure::Config(format!(
            "Ollama address {url} is not on this machine; jetson-llmd supervises a local Ollama (set allow_remote_ollama = true in config.toml to override)"
        ))
        .into());
    }
    let timeouts = ollama_client::Timeouts { request: settings.request_timeout, load: settings.load_timeout, ..Default::default() };
    Ok(Ctx { client: ollama_client::Client::new(url, timeouts), settings, model_conf, root: g.root.clone(), json: g.json })
}

/// The one remediation for unallocatable GPU memory, under --root.
fn drop_caches(ctx: &Ctx) -> DropCaches {
    DropCaches { path: rooted(&ctx.root, Path::new("/proc/sys/vm/drop_caches")) }
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn model_from_conf(ctx: &Ctx) -> anyhow::Result<ModelName> {
    let c = modelconf::read(&ctx.model_conf).map_err(Failure::Config)?;
    for w in &c.warnings {
        tracing::warn!("{}: {w}", ctx.model_conf.display());
    }
    Ok(c.model)
}

fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else { return };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("signal received; shutting down");
        t.cancel();
    });
    token
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let g = &cli.global;
    match cli.cmd {
        Cmd::Check => check(g),
        Cmd::Units { jetson_llmd, ollama_bin, output } => {
            let ollama = match ollama_bin {
                Some(p) => p,
                None => config::load(&paths(g).0).map_err(|e| Failure::Config(e.to_string()))?.ollama_bin,
            };
            let units = jetson_llmd::units::render(&jetson_llmd, &ollama).map_err(|e| Failure::Config(e.to_string()))?;
            match output {
                None => {
                    for (name, text) in units {
                        println!("# --- {name}\n{text}");
                    }
                }
                Some(dir) => {
                    for (name, text) in units {
                        let path = dir.join(name);
                        if let Some(p) = path.parent() {
                            std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
                        }
                        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
                        println!("{}", path.display());
                    }
                }
            }
            Ok(code::OK)
        }
        Cmd::GpuCheck { log } => gpu_check(g, log),
        Cmd::Status => {
            let ctx = context(g)?;
            let mut r = status::gather(&ctx.client, &ctx.settings, &ctx.model_conf, &ctx.root).await;
            // Units are read only for the real host: under --root they would describe another system.
            if ctx.root == Path::new("/") {
                r.units = status::units().await;
            }
            if ctx.json {
                print_json(&r)?;
            } else {
                print!("{}", status::render(&r));
            }
            Ok(r.exit_code())
        }
        Cmd::Preload => {
            let ctx = context(g)?;
            let model = model_from_conf(&ctx)?;
            let relief = drop_caches(&ctx);
            let cancel = shutdown_token();
            let version = warm::wait_for_api(&ctx.client, ctx.settings.startup_timeout, &cancel).await?;
            tracing::info!("Ollama {version} at {}; preloading {model}", ctx.client.url());
            let r = warm::preload(&ctx.client, &ctx.settings, &model, &relief).await.with_context(|| format!("preloading {model} through {}", ctx.client.url()))?;
            if ctx.json {
                print_json(&r)?;
            } else {
                println!(
                    "{} warm: {}% on the GPU, {}{}",
                    r.model,
                    r.gpu_percent,
                    if r.pinned { "pinned (keep_alive -1)" } else { "NOT pinned" },
                    r.load_ms.map(|ms| format!(", cold load {:.1} s", ms as f64 / 1000.0)).unwrap_or_else(|| ", was already loaded".into())
                );
            }
            Ok(code::OK)
        }
        Cmd::Keepalive { interval, once } => {
            let mut ctx = context(g)?;
            if let Some(i) = interval {
                if i.is_zero() {
                    return Err(Failure::Config("--interval must be longer than zero".into()).into());
                }
                ctx.settings.keepalive_interval = i;
            }
            let relief = drop_caches(&ctx);
            let mut model = model_from_conf(&ctx)?;
            if once {
                let r = warm::tick(&ctx.client, &ctx.settings, &model, &relief).await.with_context(|| format!("keepalive ping of {model} through {}", ctx.client.url()))?;
                if ctx.json {
                    print_json(&r)?;
                } else {
                    println!("{} warm: {}% on the GPU{}", r.model, r.gpu_percent, if r.rewarmed { " (re-warmed: it had been unloaded)" } else { "" });
                }
                return Ok(code::OK);
            }
            let cancel = shutdown_token();
            let notify = jetson_llmd::notify::SdNotify;
            use jetson_llmd::notify::Notifier;
            let mut ready = false;
            let conf = ctx.model_conf.clone();
            let json = ctx.json;
            let state_dir = rooted(&ctx.root, &ctx.settings.state_dir);
            let model_of = move || {
                match modelconf::read(&conf) {
                    Ok(c) if c.model != model => {
                        tracing::info!("model.conf now names {}; following it", c.model);
                        model = c.model;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!("{e}; keeping {model}"),
                }
                model.clone()
            };
            let pet = || notify.watchdog();
            let watchdog = jetson_llmd::notify::watchdog_period().map(|p| (p, &pet as &dyn Fn()));
            warm::keepalive_loop(&ctx.client, &ctx.settings, model_of, &relief, &cancel, |t| {
                // Ready once the first ping has run (whatever its result: the loop is working).
                if !ready {
                    notify.ready();
                    ready = true;
                }
                notify.status(&t.detail);
                jetson_llmd::state::write_keepalive(&state_dir, t);
                if json {
                    if let Ok(s) = serde_json::to_string(t) {
                        println!("{s}");
                    }
                } else if t.ok {
                    tracing::info!("keepalive: {}", t.detail);
                }
            }, watchdog)
            .await?;
            Ok(code::OK)
        }
        Cmd::Supervise { launcher: LauncherKind::Systemd, .. } => {
            let ctx = context(g)?;
            let sd = jetson_llmd::systemd::Systemd::system().await.context("supervise --launcher systemd needs systemd's D-Bus API (use --launcher process in a container without systemd)")?;
            let sup = jetson_llmd::systemd_supervise::SystemdSupervisor {
                api: &ctx.client,
                sd,
                settings: &ctx.settings,
                model_conf: ctx.model_conf.clone(),
                cmdline: std::fs::read_to_string(rooted(&ctx.root, Path::new("/proc/cmdline"))).ok(),
                notify: jetson_llmd::notify::SdNotify,
                state: StateFile::new(Some(&rooted(&ctx.root, &ctx.settings.state_dir))),
                conf_poll: Duration::from_secs(2),
                preload_deadline: ctx.settings.load_timeout + Duration::from_secs(3600),
            };
            sup.run(shutdown_token()).await?;
            Ok(code::OK)
        }
        Cmd::Supervise { launcher: LauncherKind::Process, ollama_bin } => {
            let ctx = context(g)?;
            let bin = ollama_bin.unwrap_or_else(|| ctx.settings.ollama_bin.clone());
            let host = ctx.client.base_url().host_str().unwrap_or("127.0.0.1").to_string();
            let port = ctx.client.base_url().port_or_known_default().unwrap_or(11434);
            let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
            let env = vec![
                ("OLLAMA_HOST".to_string(), format!("{host}:{port}")),
                // The seed's rules: pinned by default, one model at a time on 8 GB.
                ("OLLAMA_KEEP_ALIVE".to_string(), "-1".to_string()),
                ("OLLAMA_MAX_LOADED_MODELS".to_string(), "1".to_string()),
            ];
            let relief = drop_caches(&ctx);
            let state_dir = rooted(&ctx.root, &ctx.settings.state_dir);
            let cmdline = std::fs::read_to_string(rooted(&ctx.root, Path::new("/proc/cmdline"))).ok();
            let sup = jetson_llmd::supervise::Supervisor {
                api: &ctx.client,
                launcher: ProcessLauncher::new(bin, env),
                settings: &ctx.settings,
                model_conf: ctx.model_conf.clone(),
                cmdline,
                relief: &relief,
                notify: jetson_llmd::notify::SdNotify,
                state: StateFile::new(Some(&state_dir)),
                conf_poll: Duration::from_secs(2),
            };
            sup.run(shutdown_token()).await?;
            Ok(code::OK)
        }
    }
}

fn check(g: &Global) -> anyhow::Result<i32> {
    let (cfg_path, model_conf) = paths(g);
    let mut problems = Vec::new();
    let mut report = serde_json::json!({});
    match config::load(&cfg_path) {
        Ok(s) => report["config"] = serde_json::json!({ "path": cfg_path, "ok": true, "exists": cfg_path.exists(), "settings": s }),
        Err(e) => {
            problems.push(e.to_string());
            report["config"] = serde_json::json!({ "path": cfg_path, "ok": false, "error": e.to_string() });
        }
    }
    match modelconf::read(&model_conf) {
        Ok(c) => report["model_conf"] = serde_json::json!({ "path": model_conf, "ok": true, "model": c.model, "warnings": c.warnings }),
        Err(e) => {
            problems.extend(e.lines().map(str::to_string));
            report["model_conf"] = serde_json::json!({ "path": model_conf, "ok": false, "error": e });
        }
    }
    if g.json {
        print_json(&report)?;
    } else if problems.is_empty() {
        println!("{}: ok", cfg_path.display());
        println!("{}: ok ({})", model_conf.display(), report["model_conf"]["model"].as_str().unwrap_or(""));
    } else {
        for p in &problems {
            println!("{p}");
        }
    }
    Ok(if problems.is_empty() { code::OK } else { code::USAGE })
}

fn gpu_check(g: &Global, log: Option<PathBuf>) -> anyhow::Result<i32> {
    let (cfg_path, _) = paths(g);
    let settings = config::load(&cfg_path).map_err(|e| Failure::Config(e.to_string()))?;
    let text = match &log {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        None => {
            let out = std::process::Command::new("journalctl")
                .args(["-u", "ollama.service", "-b", "--no-pager", "-o", "cat"])
                .output()
                .context("cannot run journalctl to read ollama.service's log; pass a saved log with --log FILE")?;
            if !out.status.success() {
                anyhow::bail!("journalctl failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    let cmdline = std::fs::read_to_string(rooted(&g.root, Path::new("/proc/cmdline"))).ok();
    let r = gpu::analyze(&lines, &settings.expected_compute, cmdline.as_deref());
    if g.json {
        print_json(&r)?;
    } else {
        println!("{}", r.summary());
        if r.oom {
            println!("out of memory seen: {}", r.oom_line.as_deref().unwrap_or(""));
        }
    }
    Ok(if r.gpu { code::OK } else { code::FAILED })
}
