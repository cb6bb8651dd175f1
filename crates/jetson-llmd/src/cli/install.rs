//! `jetson-llmd install`: detect, plan, (dry run: print and stop), apply, start, wait for warm.

use super::{print_json, settings, Global};
use jetson_llmd::conf::ModelName;
use jetson_llmd::failure::{code, Failure};
use jetson_llmd::host::rooted;
use jetson_llmd::host::systemd::Systemd;
use jetson_llmd::install::apply::{self, Options};
use jetson_llmd::install::canary;
use jetson_llmd::install::detect::{self, Finding};
use jetson_llmd::install::fetch::Source;
use jetson_llmd::install::plan::{self, Request, Wanted};
use jetson_llmd::install::release::{self, Version};
use jetson_llmd::install::services::Services;
use jetson_llmd::install::state::InstallState;
use jetson_llmd::records::state::StateFile;
use jetson_llmd::records::Stage;
use std::path::PathBuf;
use std::time::Duration;

/// Where Ollama comes from (shared by install and upgrade).
#[derive(clap::Args, Clone)]
pub struct SourceArgs {
    /// Ollama release to install (default: the pinned, tested one). With local tarballs: only a label.
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    /// Offline: Ollama's ollama-linux-arm64.tar.zst (or .tgz before 0.14).
    #[arg(long, value_name = "FILE", requires_all = ["jetpack_tarball", "sha256sums"])]
    pub tarball: Option<PathBuf>,
    /// Offline: ollama-linux-arm64-jetpack6.tar.zst of the same release.
    #[arg(long, value_name = "FILE", requires = "tarball")]
    pub jetpack_tarball: Option<PathBuf>,
    /// Offline: the release's sha256sum.txt; both tarballs must match it.
    #[arg(long, value_name = "FILE", requires = "tarball")]
    pub sha256sums: Option<PathBuf>,
    /// Where releases are downloaded from: <URL>/v<VERSION>/<asset> (a mirror of GitHub's layout).
    #[arg(long, value_name = "URL", default_value = release::RELEASES)]
    pub mirror: String,
}

impl SourceArgs {
    pub fn wanted(&self) -> Result<Wanted, Failure> {
        let bad = |v: &str| Failure::Config(format!("--version {v:?} is not a release number like {}", release::DEFAULT_VERSION));
        match (&self.tarball, &self.jetpack_tarball, &self.sha256sums) {
            (Some(b), Some(j), Some(s)) => {
                let label = match &self.version {
                    Some(v) => Version::parse(v).ok_or_else(|| bad(v))?.to_string(),
                    None => "local".into(),
                };
                Ok(Wanted { source: Source::Local { base: b.clone(), jetpack: j.clone(), sums: s.clone() }, version: label })
            }
            _ => {
                let v = self.version.as_deref().unwrap_or(release::DEFAULT_VERSION);
                let version = Version::parse(v).ok_or_else(|| bad(v))?;
                if !self.mirror.starts_with("https://") && !self.mirror.starts_with("http://") {
                    return Err(Failure::Config(format!("--mirror {:?} must be an http(s) URL", self.mirror)));
                }
                Ok(Wanted { version: version.to_string(), source: Source::Release { base: self.mirror.clone(), version } })
            }
        }
    }
}

pub struct Args {
    pub source: SourceArgs,
    pub model: Option<String>,
    pub dry_run: bool,
    pub no_start: bool,
    pub no_systemd: bool,
    pub force: bool,
    pub wait: Duration,
}

/// Board, JetPack, architecture: refusals stop the run unless --force.
pub async fn preflight(g: &Global, force: bool) -> anyhow::Result<detect::Facts> {
    let (facts, refused) = assess(g, force).await;
    if let Some(why) = refusal(&refused) {
        anyhow::bail!("{why}");
    }
    Ok(facts)
}

/// The facts, with warnings printed and refusals (none with --force) returned.
async fn assess(g: &Global, force: bool) -> (detect::Facts, Vec<String>) {
    let facts = detect::gather(&g.root).await;
    let mut refused = Vec::new();
    for f in detect::assess(&facts) {
        match f {
            Finding::Warn(w) => eprintln!("warning: {w}"),
            Finding::Refuse(r) if force => eprintln!("warning: {r} (continuing: --force)"),
            Finding::Refuse(r) => refused.push(r),
        }
    }
    (facts, refused)
}

fn refusal(refused: &[String]) -> Option<String> {
    let first = refused.first()?;
    let more = if refused.len() > 1 { format!(" (and {} more: {})", refused.len() - 1, refused[1..].join("; ")) } else { String::new() };
    Some(format!("refused: {first}{more}; --force installs anyway (image builders, tests)"))
}

pub fn need_root(facts: &detect::Facts, what: &str) -> anyhow::Result<()> {
    if !facts.root_user {
        anyhow::bail!("{what} changes /usr/local, /etc and systemd: run it with sudo (or --dry-run to see the plan)");
    }
    Ok(())
}

pub async fn connect(no_systemd: bool, dry_run: bool) -> anyhow::Result<Option<Systemd>> {
    if no_systemd {
        return Ok(None);
    }
    match Systemd::system().await {
        Ok(sd) => Ok(Some(sd)),
        Err(e) if dry_run => {
            eprintln!("warning: cannot reach systemd ({e}); the plan assumes jetson-llmd is not running");
            Ok(None)
        }
        Err(e) => anyhow::bail!("cannot reach systemd over D-Bus ({e}); --no-systemd writes the files only"),
    }
}

pub async fn is_active<S: Services>(sd: Option<&S>, unit: &str) -> Option<bool> {
    let s = sd?.active_state(unit).await?;
    Some(matches!(s.as_str(), "active" | "activating" | "reloading"))
}

pub async fn run(g: &Global, a: Args) -> anyhow::Result<i32> {
    // A dry run shows the plan even where a real install would be refused, and the refusal.
    let (facts, refused) = assess(g, a.force).await;
    if !a.dry_run {
        if let Some(why) = refusal(&refused) {
            anyhow::bail!("{why}");
        }
    }
    let wanted = a.source.wanted()?;
    let model = a.model.as_deref().map(ModelName::parse).transpose().map_err(|e| Failure::Config(e.to_string()))?;
    if !a.dry_run {
        need_root(&facts, "install")?;
    }
    // Models live in the ollama user's home; the seed's model alone is about 5 GB on disk.
    let models = rooted(&g.root, std::path::Path::new(plan::OLLAMA_HOME));
    if let Some(free) = jetson_llmd::install::tree::free_bytes(&models).filter(|f| *f < 8 << 30) {
        eprintln!("warning: only {:.1} GiB free for models under {}; gemma4:e2b-it-qat alone needs about 5 GiB", free as f64 / (1u64 << 30) as f64, plan::OLLAMA_HOME);
    }
    let state = InstallState::load(&g.root).await?;
    let sd = connect(a.no_systemd, a.dry_run).await?;
    let active = is_active(sd.as_ref(), "jetson-llmd.service").await;
    let req = Request { root: g.root.clone(), ollama: Some(wanted), model, self_exe: std::env::current_exe().ok(), systemd: !a.no_systemd && (sd.is_some() || a.dry_run), start: !a.no_start };
    let plan = plan::compute(&req, &state, active).await?;
    if a.dry_run || !plan.changes_anything() {
        // The refusal first: a plan read before it looks like what will happen.
        let refused = refusal(&refused);
        if let (Some(why), false) = (&refused, g.json) {
            eprintln!("error: {why}");
            if plan.changes_anything() {
                eprintln!("what --force would do:");
            }
        }
        if g.json {
            print_json(&plan)?;
        } else {
            print!("{}", plan.render());
            if a.dry_run && plan.changes_anything() {
                println!("(dry run: nothing was changed)");
            }
        }
        if let Some(why) = refused {
            if g.json {
                eprintln!("error: {why}");
            }
            return Ok(code::FAILED);
        }
        return Ok(code::OK);
    }
    if !g.quiet && !g.json {
        eprint!("{}", plan.render());
    }
    let mut state = state;
    // From here a signal no longer kills: the install stops between two changes and puts back
    // what it changed (apply), and the wait for the model ends with a word.
    let signals = jetson_llmd::host::signals::Signals::install();
    let opts = Options { quiet: g.quiet || g.json, limits: Default::default(), cancel: signals.shutdown.clone() };
    // Which supervisor state is there before the start: its outcome is not this start's.
    let state_dir = rooted(&g.root, &settings(g).await.unwrap_or_default().state_dir);
    let old = StateFile::read(&state_dir).await.ok().flatten().map(|s| canary::identity(&s));
    let t0 = std::time::Instant::now();
    let outcome = match apply::apply(&plan, &req, &mut state, sd.as_ref(), &opts).await {
        Ok(o) => o,
        Err(f) => {
            for line in &f.rollback {
                eprintln!("rollback: {line}");
            }
            return Err(anyhow::Error::new(f.error).context(if f.start_only { "installed, but starting jetson-llmd failed" } else { "install failed; nothing of it remains" }));
        }
    };
    let mut exit = code::OK;
    let mut warm = None;
    if outcome.started.is_some() && !a.wait.is_zero() {
        let dir = &state_dir;
        if !opts.quiet {
            eprintln!("waiting for the model to be warm on the GPU (up to {}; a first start may pull several GB)", humantime::format_duration(a.wait));
        }
        // A state left by an earlier run is not this start's outcome.
        let s = tokio::select! {
            s = canary::wait_for_outcome(dir, old, sd.as_ref(), a.wait, opts.quiet) => s,
            _ = signals.shutdown.cancelled() => {
                eprintln!("interrupted while waiting: the install is complete and jetson-llmd runs; see `jetson-llmd status`");
                return Ok(code::FAILED);
            }
        };
        exit = match s.as_ref().map(|s| s.stage) {
            Some(Stage::Ready) => code::OK,
            Some(Stage::CpuFallback) => code::ON_CPU,
            Some(Stage::RebootRequired) => code::REBOOT_REQUIRED,
            _ => code::FAILED,
        };
        warm = s;
    }
    if g.json {
        print_json(&serde_json::json!({ "outcome": outcome, "stage": warm.as_ref().map(|s| s.stage), "status": warm.as_ref().map(|s| jetson_llmd::text::clean(&s.status)) }))?;
        return Ok(exit);
    }
    println!("jetson-llmd install: done in {:.1} s", t0.elapsed().as_secs_f64());
    for c in &outcome.changed {
        println!("  {c}");
    }
    for n in &outcome.new_files {
        println!("  kept your {}; the shipped version is in {n} (compare: diff {} {n})", n.trim_end_matches(".new"), n.trim_end_matches(".new"));
    }
    if let Some(s) = &outcome.started {
        println!("  {s}");
    }
    match &warm {
        Some(s) if s.stage == Stage::Ready => println!("  ready: {}", jetson_llmd::text::clean(&s.status)),
        Some(s) => println!("  NOT READY: {} ({})", s.stage, jetson_llmd::text::clean(&s.status)),
        None if outcome.started.is_some() && !a.wait.is_zero() => println!("  no word from the supervisor yet: see `jetson-llmd status`"),
        None => {}
    }
    println!("next: jetson-llmd status    (switch models: sudo jetson-llmd switch NAME; docs: docs/install.md)");
    if a.no_systemd {
        println!("      systemctl daemon-reload && systemctl enable --now jetson-llmd   (systemd was not told: --no-systemd)");
    } else if a.no_start {
        println!("      sudo systemctl start jetson-llmd   (not started: --no-start)");
    }
    Ok(exit)
}
