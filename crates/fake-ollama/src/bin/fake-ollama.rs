//! `fake-ollama serve`: a drop-in for `ollama serve` that emulates the Jetson Orin Nano profile.

use clap::{Parser, Subcommand, ValueEnum};
use fake_ollama::{Config, CpuReason, Keep, LogFormat, Profile};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "fake-ollama", version, about = "Ollama emulator for jetson-llmd tests and demos (runs no model)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the Ollama API on OLLAMA_HOST (default 127.0.0.1:11434), like `ollama serve`.
    Serve(ServeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum NoGpu {
    /// lib/ollama/cuda_jetpack6 missing: discovery quietly finds only the CPU.
    MissingLibs,
    /// CUDA fails to initialise (as after `cma=` on the kernel command line).
    CudaInit,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Current,
    Legacy,
}

#[derive(Parser)]
struct ServeArgs {
    /// Hardware/model profile.
    #[arg(long, env = "FAKE_OLLAMA_PROFILE", default_value = "orin-nano-8gb")]
    profile: String,
    /// Multiply every emulated delay (loads take 30-70 s on the real board at 1.0).
    #[arg(long, env = "FAKE_OLLAMA_TIME_SCALE", default_value_t = 1.0)]
    time_scale: f64,
    /// Start without a usable GPU, for this reason.
    #[arg(long, env = "FAKE_OLLAMA_NO_GPU", value_enum)]
    no_gpu: Option<NoGpu>,
    /// Log format of GPU discovery.
    #[arg(long, env = "FAKE_OLLAMA_LOG_FORMAT", value_enum, default_value = "current")]
    log_format: Format,
    /// Report this Ollama version.
    #[arg(long, env = "FAKE_OLLAMA_VERSION")]
    version_string: Option<String>,
    /// After any unload, the next load fails with cudaMalloc out of memory.
    #[arg(long, env = "FAKE_OLLAMA_FRAGILE_MEMORY")]
    fragile_memory: bool,
    /// Keeps the fragile-memory state across restarts.
    #[arg(long, env = "FAKE_OLLAMA_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Start with clean memory (a reboot).
    #[arg(long)]
    reset_memory: bool,
    /// A write to this file clears unallocatable memory (stands in for /proc/sys/vm/drop_caches).
    #[arg(long, env = "FAKE_OLLAMA_DROP_CACHES_FILE")]
    drop_caches_file: Option<PathBuf>,
    /// Wait this long before listening (a slow start).
    #[arg(long, env = "FAKE_OLLAMA_START_DELAY_MS", default_value_t = 0)]
    start_delay_ms: u64,
    /// Multiply every model's tok/s (a release that generates slower).
    #[arg(long, env = "FAKE_OLLAMA_SPEED", default_value_t = 1.0)]
    speed: f64,
}

/// Where Ollama looks for its libraries: next to the executable with symlinks resolved
/// (ml/path.go LibOllamaPath: os.Executable, filepath.EvalSymlinks, then `<dir>/../lib/ollama`).
fn lib_ollama() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    let lib = exe.parent()?.join("../lib/ollama");
    lib.is_dir().then_some(lib)
}

/// Test knobs that travel inside a release tarball (`lib/ollama/fake-ollama.env`, FAKE_OLLAMA_*
/// lines only), so that two installed "releases" can behave differently under one unit file.
/// Read before the runtime starts: setting the environment is only sound single-threaded.
fn knobs_from_install() {
    let Some(lib) = lib_ollama() else { return };
    let Ok(text) = std::fs::read_to_string(lib.join("fake-ollama.env")) else { return };
    for line in text.lines().take(50) {
        if let Some((k, v)) = line.trim().split_once('=') {
            if k.starts_with("FAKE_OLLAMA_") && std::env::var_os(k).is_none() {
                std::env::set_var(k, v);
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    // Started as a runner (see runner_exe below): hold nothing, wait to be killed.
    if fake_ollama::run_as_runner_if_named() {
        return Ok(());
    }
    knobs_from_install();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve())
}

fn bind_addr() -> anyhow::Result<SocketAddr> {
    // Same reading as Ollama's envconfig.Host(): optional scheme, default port 11434.
    let raw = std::env::var("OLLAMA_HOST").unwrap_or_default();
    let s = raw.trim().trim_matches(|c| c == '"' || c == '\'');
    let s = s.split_once("://").map_or(s, |(_, r)| r);
    let s = s.split('/').next().unwrap_or("");
    let hostport = if s.is_empty() {
        "127.0.0.1:11434".to_string()
    } else if s.starts_with('[') && s.contains("]:") || (!s.starts_with('[') && s.matches(':').count() == 1) {
        if s.starts_with(':') {
            format!("127.0.0.1{s}")
        } else {
            s.to_string()
        }
    } else {
        format!("{}:11434", if s.contains(':') && !s.starts_with('[') { format!("[{s}]") } else { s.to_string() })
    };
    hostport.to_socket_addrs()?.next().ok_or_else(|| anyhow::anyhow!("OLLAMA_HOST {raw:?} resolves to no address"))
}

async fn serve() -> anyhow::Result<()> {
    let Cmd::Serve(a) = Cli::parse().cmd;
    let mut profile = Profile::by_name(&a.profile).ok_or_else(|| anyhow::anyhow!("unknown profile {:?} (try orin-nano-8gb)", a.profile))?;
    if a.speed > 0.0 && a.speed != 1.0 {
        for m in profile.registry.iter_mut() {
            m.gpu_tok_s *= a.speed;
            m.cpu_tok_s *= a.speed;
        }
    }
    if let Some(v) = a.version_string {
        profile.version = v;
    }
    let mut c = Config::new(profile);
    c.time_scale = a.time_scale;
    c.cpu_only = a.no_gpu.map(|n| match n {
        NoGpu::MissingLibs => CpuReason::MissingLibs,
        NoGpu::CudaInit => CpuReason::CudaInit,
    });
    // An installed release without its JetPack 6 libraries: discovery quietly finds only the
    // CPU (the seed's lesson). Only judged when a lib/ollama exists beside the binary at all.
    if c.cpu_only.is_none() && lib_ollama().is_some_and(|l| !l.join("cuda_jetpack6").is_dir()) {
        c.cpu_only = Some(CpuReason::MissingLibs);
    }
    c.log_format = match a.log_format {
        Format::Current => LogFormat::Current,
        Format::Legacy => LogFormat::Legacy,
    };
    // envconfig.LogLevel: OLLAMA_DEBUG=1 (or true) is debug, 2 is trace.
    c.debug_level = match std::env::var("OLLAMA_DEBUG").unwrap_or_default().trim() {
        "2" => 2,
        "1" | "true" | "TRUE" | "True" => 1,
        _ => 0,
    };
    if let Ok(v) = std::env::var("OLLAMA_KEEP_ALIVE") {
        if let Some(k) = Keep::from_env(&v) {
            c.default_keep_alive = k;
        }
    }
    if let Ok(v) = std::env::var("OLLAMA_MAX_LOADED_MODELS") {
        c.max_loaded = v.trim().parse().unwrap_or(0);
    }
    if let Ok(v) = std::env::var("OLLAMA_NUM_PARALLEL") {
        c.num_parallel = v.trim().parse().ok().filter(|n| *n > 0).unwrap_or(1);
    }
    if let Ok(v) = std::env::var("OLLAMA_CONTEXT_LENGTH") {
        c.context_length = v.trim().parse().unwrap_or(4096);
        c.context_length_env = c.context_length;
    }
    c.fragile_memory = a.fragile_memory;
    c.state_dir = a.state_dir;
    c.reset_memory = a.reset_memory;
    c.drop_caches_file = a.drop_caches_file;
    c.log_to_stderr = true;
    // Runners as real processes under their real names (FAKE_OLLAMA_RUNNER_PROCESS=0: none): a
    // link named llama-server (or ollama) to this program, in a directory of this process's.
    if std::env::var("FAKE_OLLAMA_RUNNER_PROCESS").map_or(true, |v| v.trim() != "0") {
        c.runner_exe = runner_link(&c.profile.version);
    }
    tokio::time::sleep(Duration::from_millis(a.start_delay_ms)).await;
    let addr = bind_addr()?;
    let runner_dir = c.runner_exe.clone();
    let handle = fake_ollama::spawn(c, addr).await.map_err(|e| anyhow::anyhow!("Error: listen tcp {addr}: bind: {e}"))?;
    let token = handle.shutdown_token();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
        token.cancel();
    });
    handle.wait().await;
    if let Some(dir) = runner_dir.and_then(|l| l.parent().map(PathBuf::from)) {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// A link to this program under the runner's name (a process's name is its file's): from v0.30
/// llama-server, before it Ollama itself (`ollama runner`). None when it cannot be made: the
/// runners then stay in-process.
fn runner_link(version: &str) -> Option<PathBuf> {
    let minor: u64 = version.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0);
    let name = if version.starts_with("0.") && minor < 30 { "ollama" } else { "llama-server" };
    let dir = std::env::temp_dir().join(format!("fake-ollama-runner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let link = dir.join(name);
    std::os::unix::fs::symlink(std::env::current_exe().ok()?, &link).ok()?;
    Some(link)
}
