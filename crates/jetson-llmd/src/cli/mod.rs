//! The command line: one file per command; this file holds the clap definitions, the shared
//! context (settings, client, paths) and error reporting.

pub mod bench;
pub mod check;
pub mod dist;
pub mod doctor;
pub mod exec_child;
pub mod fleet;
pub mod gpu_check;
pub mod install;
pub mod keepalive;
pub mod logging;
pub mod preload;
pub mod status;
pub mod supervise;
pub mod switch;
pub mod uninstall;
pub mod units;
pub mod upgrade;

use clap::{Args, Parser, Subcommand, ValueEnum};
use jetson_llmd::conf::{config, modelconf, ModelName, Settings};
use jetson_llmd::failure::{code, Failure};
use jetson_llmd::host::rooted;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "jetson-llmd",
    version,
    about = "Keeps one Ollama model warm on the GPU of a Jetson Orin Nano, and says why when it cannot",
    long_about = "Keeps one Ollama model warm on the GPU of a Jetson Orin Nano (8 GB unified memory, JetPack 6).\n\n\
The model named in /etc/ollama/model.conf (OLLAMA_MODEL=gemma4:e2b-8k) is loaded first at boot with\n\
keep_alive -1 and pinned there: every unload/reload cycle risks GPU memory that cannot be allocated\n\
again until a reboot. `supervise` runs the whole chain; `preload` and `keepalive` are its steps;\n\
`status` and `gpu-check` explain what is going on; `check` validates the files.\n\n\
Typical use on a Jetson:\n  sudo systemctl start jetson-llmd     # runs `supervise`\n  jetson-llmd status                   # what is loaded, where, since when\n  sudoedit /etc/ollama/model.conf      # switch models by editing one line",
    after_help = "Exit codes: 0 ok; 1 failed or degraded; 2 bad usage or configuration; 3 Ollama unreachable;\n4 reboot required (GPU memory unallocatable); 5 Ollama runs on the CPU. See docs/usage.md."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args)]
pub struct Global {
    /// Supervisor settings (every key optional; see /etc/jetson-llmd/config.toml).
    #[arg(long, global = true, value_name = "PATH", default_value = config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The file naming the model to keep warm (one line: OLLAMA_MODEL=<name>).
    #[arg(long, global = true, value_name = "PATH", default_value = config::DEFAULT_MODEL_CONF)]
    pub model_conf: PathBuf,
    /// Treat DIR as / for host files (/etc, /proc, /run...); explicit paths are taken as given.
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Ollama's own address, read like Ollama's CLI reads OLLAMA_HOST (0.0.0.0 connects locally).
    /// Default: OLLAMA_HOST from /etc/jetson-llmd/ollama.env (what ollama.service gets; on a
    /// guarded install Ollama's private port, not the guard's), else 127.0.0.1:11434.
    #[arg(long = "ollama", global = true, env = "OLLAMA_HOST", value_name = "URL")]
    pub ollama: Option<String>,
    /// Machine-readable output (JSON on stdout).
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LauncherArg {
    /// Drive ollama.service, ollama-preload.service and ollama-keepalive.service over D-Bus.
    Systemd,
    /// Run `ollama serve` as a child process (containers, the demo).
    Process,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the daemon: start Ollama, check its GPU, preload the model, keep it warm, recover.
    /// SIGHUP (systemctl reload) re-reads config.toml and model.conf.
    #[command(
        after_help = "Exit codes: 0 stopped by SIGTERM/SIGINT; 1 D-Bus unavailable at start; 2 bad config.toml, OLLAMA_HOST, or model.conf with nothing loaded yet; 4 reboot required; 5 Ollama on the CPU. Everything else is retried, never an exit."
    )]
    Supervise {
        /// How Ollama is started.
        #[arg(long, value_enum, default_value = "systemd")]
        launcher: LauncherArg,
        /// The `ollama` binary (overrides config.toml's ollama_bin; process launcher).
        #[arg(long, value_name = "PATH")]
        ollama_bin: Option<PathBuf>,
    },
    /// Load the model.conf model pinned (keep_alive -1), check it is on the GPU, exit when warm.
    #[command(after_help = "Exit codes: 0 warm; 1 not warm (missing, load failed, partly on the GPU, stopped by a signal); 2 bad config; 3 Ollama unreachable; 4 reboot required; 5 on the CPU.")]
    Preload,
    /// Re-assert the pin every interval (default 4m) and re-warm the model if it was unloaded.
    #[command(after_help = "Exit codes: 0 stopped by SIGTERM (or --once: warm); 1 not warm (--once); 2 bad config; 3 Ollama unreachable (--once); 4 reboot required; 5 on the CPU. The loop itself ends only with 4 or 5.")]
    Keepalive {
        /// Interval between pings (overrides config.toml; 10s to 1h), e.g. 4m, 90s.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        interval: Option<Duration>,
        /// One ping, then exit.
        #[arg(long)]
        once: bool,
    },
    /// One screen: Ollama, GPU, model placement and expiry, last ping, boot timeline, memory.
    #[command(after_help = "Exit codes: 0 healthy; 1 degraded; 2 bad config; 3 Ollama unreachable.")]
    Status {
        /// Redraw every DURATION (in place on a terminal; with --json one document per line).
        #[arg(long, value_name = "DURATION", value_parser = parse_watch, num_args = 0..=1, default_missing_value = "2s")]
        watch: Option<Duration>,
    },
    /// Switch models: check it fits, write OLLAMA_MODEL= into model.conf (comments kept), wait
    /// for the running supervisor to report the outcome.
    #[command(after_help = "Exit codes: 0 switched; 1 refused, could not be loaded, no supervisor or timeout; 2 bad name; 4 reboot required; 5 on the CPU.")]
    Switch {
        /// The model to keep warm instead, e.g. gemma3:4b.
        model: String,
        /// Write model.conf and return at once.
        #[arg(long)]
        no_wait: bool,
        /// Longest wait for the outcome (default: load_timeout + 2m).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// The seed's benchmark table: tok/s, prompt tok/s, cold load, RAM, GPU share, swap, power
    /// mode; the configured model is warm and pinned again afterwards.
    #[command(after_help = "Exit codes: 0 done; 1 declined or a load failed; 2 usage (or other models without --yes off a terminal); 3 Ollama unreachable.")]
    Bench {
        /// Models to measure (repeatable; default: the configured one). Others mean unload/reload.
        #[arg(long = "model", value_name = "NAME")]
        models: Vec<String>,
        /// The prompt.
        #[arg(long, default_value = "Explain in three sentences why a Jetson keeps one model warm.")]
        prompt: String,
        /// Timed runs after a warm-up (median, min and max are reported).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=50))]
        runs: u16,
        /// Tokens generated per run.
        #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(8..=4096))]
        tokens: u64,
        /// A markdown table (the default; kept for scripts that ask for it).
        #[arg(long)]
        markdown: bool,
        /// Do not ask before unloading the configured model for other models.
        #[arg(long)]
        yes: bool,
    },
    /// Every host check (board, JetPack, Ollama's JetPack 6 libs, cma=, swap, headroom,
    /// OLLAMA_HOST, Ollama's version, power mode, GPU clock, units): PASS/WARN/FAIL and the fix.
    #[command(after_help = "Exit codes: 0 no check failed; 1 a check failed.")]
    Doctor,
    /// GPU verdict from Ollama's log (the journal of ollama.service, or --log FILE).
    #[command(after_help = "Exit codes: 0 the expected compute (a CUDA GPU, or the CPU with expected_compute = \"cpu\"); 1 no discovery line yet; 2 bad config or a log that cannot be read; 5 Ollama on the CPU.")]
    GpuCheck {
        /// A saved log: plain `ollama serve` output or journalctl output (short, cat or json).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
    /// Validate config.toml and model.conf; print each problem as file:line.
    #[command(after_help = "Exit codes: 0 valid; 2 invalid.")]
    Check,
    /// Print the systemd units rendered for the installed binaries, or write them to --output.
    #[command(after_help = "Exit codes: 0 done; 2 a path that would need quoting.")]
    Units {
        /// The jetson-llmd binary the units run.
        #[arg(long, value_name = "PATH", default_value = jetson_llmd::install::units::DEFAULT_JETSON_LLMD)]
        jetson_llmd: PathBuf,
        /// The ollama binary ollama.service runs (default: config.toml's ollama_bin).
        #[arg(long, value_name = "PATH")]
        ollama_bin: Option<PathBuf>,
        /// Write the units under this directory (e.g. /etc/systemd/system) instead of printing.
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Install Ollama (arm64 + JetPack 6 tarballs, sha256-verified, unpacked with every entry
    /// checked, switched in atomically), the ollama user, the units, /etc files, then start.
    /// Re-running changes only what differs; --dry-run prints the plan.
    #[command(
        after_help = "Examples:\n  sudo jetson-llmd install                      # the pinned Ollama release from GitHub\n  sudo jetson-llmd install --dry-run            # what would change\n  sudo jetson-llmd install --tarball ollama-linux-arm64.tar.zst \\\n       --jetpack-tarball ollama-linux-arm64-jetpack6.tar.zst --sha256sums sha256sum.txt   # offline\nSee docs/install.md."
    )]
    #[command(after_help = "Exit codes: 0 done or nothing to do; 1 refused or failed (rolled back); 2 usage; 4 reboot required; 5 on the CPU after start.")]
    Install {
        #[command(flatten)]
        source: install::SourceArgs,
        /// The model to keep warm, written into a new /etc/ollama/model.conf (an existing one stays).
        #[arg(long, value_name = "NAME")]
        model: Option<String>,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Install, but do not start jetson-llmd.service.
        #[arg(long)]
        no_start: bool,
        /// Write files only; do not talk to systemd (image builders, chroots).
        #[arg(long)]
        no_systemd: bool,
        /// Install on a board, JetPack or architecture this tool does not target (never skips checksums).
        #[arg(long)]
        force: bool,
        /// After starting, wait this long for the model to be warm on the GPU (0: do not wait).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30m")]
        wait: Duration,
    },
    /// Install another Ollama release beside the live one, switch, and prove it on the GPU (GPU
    /// discovery, model warm at 100%, tok/s against the last good figure); switch back if not.
    #[command(after_help = "Exit codes: 0 kept (or nothing to do); 1 failed the canary (switched back) or refused.")]
    Upgrade {
        #[command(flatten)]
        source: install::SourceArgs,
        /// Return to the previous version (no canary).
        #[arg(long, conflicts_with_all = ["tarball", "version"])]
        rollback: bool,
        /// Lowest acceptable speed, as a fraction of the last good tok/s.
        #[arg(long, value_name = "FRACTION", default_value_t = 0.8)]
        min_speed: f64,
        /// Longest wait for the supervisor's verdict on each switch.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "20m")]
        timeout: Duration,
        /// As for install.
        #[arg(long)]
        force: bool,
    },
    /// Stop and remove what install put here. Models and /etc files you edited stay unless --purge.
    #[command(after_help = "Exit codes: 0 done; 1 failed; 2 usage.")]
    Uninstall {
        /// Also remove edited /etc files, the download cache, state, and the ollama user with its models.
        #[arg(long)]
        purge: bool,
        /// Print what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not talk to systemd.
        #[arg(long)]
        no_systemd: bool,
    },
    /// Configs for engines a homelab already runs, asked from the boards' guards (which model
    /// each pins, whether it is ready): a LiteLLM proxy that routes each model to the boards
    /// pinning it, or a Prometheus scrape config. docs/fleet.md.
    #[command(
        after_help = "Examples:\n  jetson-llmd fleet litellm --board orin1=http://orin1.lan:11434 --board orin2=http://orin2.lan:11434 > litellm.yaml\n  jetson-llmd fleet prometheus --board orin1=http://orin1.lan:11434 -o /etc/prometheus/jetson-llmd.yml\nExit codes: 0 written; 1 a board answered something else; 2 usage; 3 a board did not answer (without --allow-missing)."
    )]
    Fleet {
        #[command(subcommand)]
        engine: FleetEngine,
    },
    /// Print a shell completion script, e.g.
    /// `jetson-llmd completions bash | sudo tee /usr/share/bash-completion/completions/jetson-llmd`
    /// (the .deb installs them for bash, zsh and fish).
    #[command(after_help = "Exit codes: 0.")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// (internal) Write what the .deb ships besides the binary into DIR (scripts/release).
    #[command(hide = true)]
    DistAssets {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// (internal) Start PROGRAM so that it dies with the supervisor.
    #[command(hide = true)]
    ExecChild(ExecChildArgs),
}

#[derive(Args)]
pub struct FleetBoards {
    /// A board: NAME=URL of its guard (the address clients use), e.g. orin1=http://orin1.lan:11434. Repeat for each board.
    #[arg(long = "board", value_name = "NAME=URL", required = true)]
    pub boards: Vec<String>,
    /// Leave out a board that does not answer, with a warning (and a comment in the config), instead of failing.
    #[arg(long)]
    pub allow_missing: bool,
    /// Write the config to FILE (replaced whole) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// An API key for boards whose guard asks one of clients off the machine ([guard] keys_file).
    /// With `fleet litellm` the config then has LiteLLM send the key from its own
    /// JETSON_LLMD_KEY (api_key: os.environ/JETSON_LLMD_KEY); the key is not written.
    #[arg(long, env = "JETSON_LLMD_KEY", hide_env_values = true, value_name = "KEY")]
    pub key: Option<String>,
}

#[derive(Subcommand)]
pub enum FleetEngine {
    /// A LiteLLM proxy config: one model_name per pinned model, balanced over the boards that pin it, with retries, cooldowns and fallbacks.
    Litellm {
        #[command(flatten)]
        boards: FleetBoards,
        /// Retries of a failed request (on another board of the same model).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=10))]
        retries: u32,
        /// Seconds between LiteLLM's health checks of each board (one-token chats); a board that failed its last one is left out.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=3600))]
        health_interval: u32,
        /// No fallbacks from one model to another when every board of a model failed.
        #[arg(long)]
        no_fallbacks: bool,
    },
    /// A Prometheus scrape config for the boards' /metrics.
    Prometheus {
        #[command(flatten)]
        boards: FleetBoards,
        /// Where the boards serve /metrics when a board does not say (metrics_listen's port).
        #[arg(long, default_value_t = 9464)]
        metrics_port: u16,
        /// Scrape interval in seconds.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=3600))]
        interval: u32,
    },
}

#[derive(Args)]
pub struct ExecChildArgs {
    #[arg(long)]
    pub parent: i32,
    pub program: PathBuf,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

fn parse_watch(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(500) || d > Duration::from_secs(3600) {
        return Err("between 500ms and 1h, e.g. 2s".into());
    }
    Ok(d)
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let g = &cli.global;
    match cli.cmd {
        Cmd::Check => check::run(g).await,
        Cmd::Units { jetson_llmd, ollama_bin, output } => units::run(g, &jetson_llmd, ollama_bin, output).await,
        Cmd::GpuCheck { log } => gpu_check::run(g, log).await,
        Cmd::Doctor => doctor::run(g).await,
        Cmd::Bench { models, prompt, runs, tokens, markdown: _, yes } => bench::run(g, bench::Args { models, prompt, runs: runs.into(), tokens, yes }).await,
        Cmd::Status { watch } => status::run(g, watch).await,
        Cmd::Switch { model, no_wait, timeout } => switch::run(g, &model, no_wait, timeout).await,
        Cmd::Preload => preload::run(g).await,
        Cmd::Keepalive { interval, once } => keepalive::run(g, interval, once).await,
        Cmd::Supervise { launcher, ollama_bin } => supervise::run(g, launcher, ollama_bin).await,
        Cmd::Install { source, model, dry_run, no_start, no_systemd, force, wait } => install::run(g, install::Args { source, model, dry_run, no_start, no_systemd, force, wait }).await,
        Cmd::Upgrade { source, rollback, min_speed, timeout, force } => {
            if !(0.0..=1.0).contains(&min_speed) {
                return Err(Failure::Config(format!("--min-speed {min_speed} must be between 0 and 1 (0.8 = at least 80% of the last good tok/s)")).into());
            }
            upgrade::run(g, upgrade::Args { source, rollback, min_speed, timeout, force }).await
        }
        Cmd::Uninstall { purge, dry_run, no_systemd } => uninstall::run(g, purge, dry_run, no_systemd).await,
        Cmd::Fleet { engine } => match engine {
            FleetEngine::Litellm { boards, retries, health_interval, no_fallbacks } => {
                let o = jetson_llmd::fleet::LiteLlmOptions { retries, fallbacks: !no_fallbacks, health_interval_s: health_interval, ..Default::default() };
                fleet::run(g, fleet::Engine::LiteLlm(o), &boards.boards, boards.allow_missing, boards.output, boards.key).await
            }
            FleetEngine::Prometheus { boards, metrics_port, interval } => fleet::run(g, fleet::Engine::Prometheus { port: metrics_port, interval_s: interval }, &boards.boards, boards.allow_missing, boards.output, boards.key).await,
        },
        Cmd::Completions { shell } => dist::completions(shell),
        Cmd::DistAssets { out } => dist::assets(&out).await,
        Cmd::ExecChild(_) => Ok(code::USAGE),
    }
}

/// Prints `error: ...` and ` -> cause` lines (cleaned: causes may quote files or Ollama) and
/// returns the exit code the error means.
pub fn report_error(e: &anyhow::Error) -> i32 {
    eprintln!("error: {}", jetson_llmd::text::clean(&e.to_string()));
    for cause in e.chain().skip(1) {
        eprintln!(" -> {}", jetson_llmd::text::clean(&cause.to_string()));
    }
    exit_code(e)
}

/// The one place an error becomes an exit code: by its type, the first one in the chain that
/// has a meaning (docs/usage.md lists them per command).
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| {
            if let Some(f) = c.downcast_ref::<Failure>() {
                Some(f.exit_code())
            } else if c.is::<jetson_llmd::conf::config::ConfigError>() || c.is::<jetson_llmd::conf::modelconf::ModelConfError>() || c.is::<jetson_llmd::install::state::InstallStateError>() {
                Some(code::USAGE)
            } else if let Some(f) = c.downcast_ref::<jetson_llmd::fleet::FleetError>() {
                use jetson_llmd::fleet::FleetError as E;
                Some(match f {
                    E::Shape(_) | E::Name { .. } | E::Url { .. } | E::Twice(_) => code::USAGE,
                    E::Unreachable { .. } => code::UNREACHABLE,
                    _ => code::FAILED,
                })
            } else {
                None
            }
        })
        .unwrap_or(code::FAILED)
}

/// What most commands need.
pub struct Ctx {
    pub settings: Settings,
    pub host: ollama_client::OllamaHost,
    pub client: ollama_client::Client,
    pub paths: jetson_llmd::supervisor::Paths,
    pub root: PathBuf,
    pub json: bool,
}

/// config.toml and model.conf: explicit paths are taken as given; the defaults live under --root.
pub fn paths(g: &Global) -> jetson_llmd::supervisor::Paths {
    let under = |p: &Path, default: &str| if p.as_os_str() == default { rooted(&g.root, p) } else { p.to_path_buf() };
    jetson_llmd::supervisor::Paths { config: under(&g.config, config::DEFAULT_CONFIG), model_conf: under(&g.model_conf, config::DEFAULT_MODEL_CONF), root: g.root.clone() }
}

pub async fn settings(g: &Global) -> Result<Settings, Failure> {
    config::load(&paths(g).config).await.map_err(|e| Failure::Config(e.to_string()))
}

/// Where Ollama itself answers: --ollama / OLLAMA_HOST, else ollama.env's OLLAMA_HOST (the
/// address ollama.service is given), else Ollama's default. Never the guard's address by
/// accident: on a guarded install 127.0.0.1:11434 is the guard, which refuses what `switch`
/// and `bench` must do.
pub async fn ollama_address(g: &Global) -> String {
    if let Some(a) = &g.ollama {
        return a.clone();
    }
    jetson_llmd::host::fs::read_capped(&rooted(&g.root, Path::new(jetson_llmd::install::plan::OLLAMA_ENV)), jetson_llmd::host::fs::cap::MODEL_CONF)
        .await
        .ok()
        .and_then(|b| modelconf::parse_env(&b).ok())
        .and_then(|e| e.into_iter().rev().find(|e| e.key == "OLLAMA_HOST").map(|e| e.value))
        .unwrap_or_else(|| ollama_client::DEFAULT_HOST.to_string())
}

pub async fn context(g: &Global) -> anyhow::Result<Ctx> {
    let settings = settings(g).await?;
    let address = ollama_address(g).await;
    let host = ollama_client::parse_host(&address).map_err(|e| Failure::Config(format!("{e}; set OLLAMA_HOST (or --ollama) to host:port, e.g. 127.0.0.1:11434")))?;
    if !host.is_local() && !settings.allow_remote_ollama {
        return Err(Failure::Config(format!("Ollama address {} is not on this machine; jetson-llmd supervises a local Ollama (set allow_remote_ollama = true in config.toml to override)", host.url)).into());
    }
    let timeouts = ollama_client::Timeouts { request: settings.request_timeout, load: settings.load_timeout, ..Default::default() };
    let client = ollama_client::Client::new(host.url.clone(), timeouts);
    Ok(Ctx { client, host, settings, paths: paths(g), root: g.root.clone(), json: g.json })
}

pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn model_from_conf(ctx: &Ctx) -> Result<ModelName, Failure> {
    let c = modelconf::read(&ctx.paths.model_conf).await.map_err(|e| Failure::Config(e.to_string()))?;
    for w in &c.warnings {
        tracing::warn!("{}: {w}", ctx.paths.model_conf.display());
    }
    Ok(c.model)
}

/// /proc/cmdline under --root, for the `cma=` hint (bounded; absent is fine).
pub async fn cmdline(root: &Path) -> Option<String> {
    jetson_llmd::host::fs::read_text(&rooted(root, Path::new("/proc/cmdline")), jetson_llmd::host::fs::cap::PROC).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    /// Exit codes come from the error's type, wherever it sits in the chain.
    #[test]
    fn exit_codes_are_derived_from_the_error_type() {
        let conf = jetson_llmd::conf::config::from_text(Path::new("c.toml"), "keepalive_interval = 1").expect_err("bad");
        assert_eq!(exit_code(&anyhow::Error::new(conf).context("reading the configuration")), code::USAGE);
        let mc = jetson_llmd::conf::modelconf::from_bytes(Path::new("model.conf"), b"OLLAMA_MODEL=\n").expect_err("bad");
        assert_eq!(exit_code(&anyhow::Error::new(mc)), code::USAGE);
        let f: anyhow::Result<()> = Err(Failure::RebootRequired { detail: "x".into() }).context("preloading");
        assert_eq!(exit_code(&f.expect_err("err")), code::REBOOT_REQUIRED);
        assert_eq!(exit_code(&anyhow::Error::new(Failure::OnCpu { model: "m".into(), hint: "h".into() })), code::ON_CPU);
        assert_eq!(exit_code(&anyhow::anyhow!("something else")), code::FAILED);
    }
}
