//! Carrying out a [`Plan`]: everything slow or likely to fail (download, checksum, unpack)
//! happens before the live system is touched; then files, user, the version switch and systemd's
//! reload, each recorded so that a failure puts back what was there. Starting the service is
//! last and not rolled back: a unit that fails to start is better debugged in place.

use super::archive::Limits;
use super::fetch::{self, FetchError};
use super::plan::{Change, FileKind, OllamaStep, Plan, Request, Start};
use super::services::Services;
use super::state::{InstallState, Release};
use super::tree::{Activation, Store, TreeError};
use crate::host::accounts::{self, AccountError};
use crate::host::{fs, rooted};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CACHE: &str = "/var/cache/jetson-llmd";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("{}: cannot write: {source}", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("systemd: {0}")]
    Systemd(String),
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    /// What changed, one line each.
    pub changed: Vec<String>,
    /// Our versions of files the user edited, written beside them.
    pub new_files: Vec<String>,
    pub installed: Option<Release>,
    pub started: Option<String>,
}

#[derive(Debug)]
pub struct Failed {
    pub error: InstallError,
    /// What the rollback restored (or could not).
    pub rollback: Vec<String>,
    /// Set when the files are in place and only starting failed (nothing was rolled back).
    pub start_only: bool,
}

enum Undo {
    File { path: PathBuf, old: Option<(Vec<u8>, u32)> },
    Activation(Activation),
    Dir(PathBuf),
}

pub struct Options {
    pub quiet: bool,
    pub limits: Limits,
}

async fn read_old(path: &Path) -> Option<(Vec<u8>, u32)> {
    let meta = tokio::fs::symlink_metadata(path).await.ok()?;
    let bytes = fs::read_capped(path, 512 << 20).await.ok()?;
    Some((bytes, meta.permissions().mode() & 0o7777))
}

async fn rollback(journal: Vec<Undo>, store: &Store) -> Vec<String> {
    let mut said = Vec::new();
    for u in journal.into_iter().rev() {
        match u {
            Undo::File { path, old: Some((bytes, mode)) } => match fs::write_atomic(&path, bytes, mode).await {
                Ok(()) => said.push(format!("restored {}", path.display())),
                Err(e) => said.push(format!("could not restore {}: {e}", path.display())),
            },
            Undo::File { path, old: None } => {
                let _ = tokio::fs::remove_file(&path).await;
                said.push(format!("removed {}", path.display()));
            }
            Undo::Activation(a) => match store.undo(&a) {
                Ok(()) => said.push(format!("Ollama is back to {}", a.before.as_deref().unwrap_or("what was there before"))),
                Err(e) => said.push(format!("could not switch Ollama back: {e}")),
            },
            Undo::Dir(d) => {
                let _ = tokio::fs::remove_dir_all(&d).await;
            }
        }
    }
    said
}

/// Downloads (or takes), verifies and unpacks the wanted release beside the live one.
/// Returns the release record; the live version is not switched.
pub async fn stage_release(req: &Request, state: &InstallState, opts: &Options) -> Result<(Release, bool), InstallError> {
    let w = req.ollama.as_ref().ok_or_else(|| InstallError::Other("no Ollama release was asked for".into()))?;
    let store = Store::new(&req.root);
    let cache = rooted(&req.root, Path::new(CACHE));
    let (base, jetpack) = fetch::obtain(&w.source, &cache, opts.quiet).await?;
    let dir = format!("{}-{}", w.version, &base.sha256[..12]);
    let rec = Release {
        dir: dir.clone(),
        version: w.version.clone(),
        origin: base.origin.clone(),
        base_sha256: base.sha256.clone(),
        jetpack_sha256: jetpack.sha256.clone(),
        installed_at: crate::supervisor::state::now(),
    };
    let known = [&state.current, &state.previous].into_iter().flatten().any(|r| r.dir == dir && r.jetpack_sha256 == jetpack.sha256);
    if known && store.intact(&dir) {
        return Ok((rec, false));
    }
    if !opts.quiet {
        eprintln!("unpacking {} and {} into {}", base.asset, jetpack.asset, store.version_dir(&dir).display());
    }
    let (s, limits) = (store.clone(), opts.limits);
    let d = dir.clone();
    tokio::task::spawn_blocking(move || s.stage(&d, &base, &jetpack, limits)).await.map_err(|e| InstallError::Other(e.to_string()))??;
    Ok((rec, true))
}

pub async fn apply<S: Services>(plan: &Plan, req: &Request, state: &mut InstallState, services: Option<&S>, opts: &Options) -> Result<Outcome, Failed> {
    let store = Store::new(&req.root);
    let fail = |error: InstallError, rollback: Vec<String>| Failed { error, rollback, start_only: false };
    let mut out = Outcome::default();
    let mut journal: Vec<Undo> = Vec::new();

    // 1. Everything that can fail without touching the live system.
    let mut release = None;
    if let OllamaStep::Install { .. } = &plan.ollama {
        let (rec, unpacked) = stage_release(req, state, opts).await.map_err(|e| fail(e, vec!["nothing was changed".into()]))?;
        if unpacked && state.current.as_ref().map(|c| &c.dir) != Some(&rec.dir) {
            journal.push(Undo::Dir(store.version_dir(&rec.dir)));
        }
        release = Some(rec);
    }

    let result: Result<(), InstallError> = async {
        // 2. The ollama user (not undone: an unused system user harms nothing, and removing
        // one that files already belong to would).
        if plan.user.create {
            accounts::create_system_user(&req.root, "ollama", super::plan::OLLAMA_HOME).await?;
            state.created_user = true;
            out.changed.push("created system user ollama".into());
        }
        for g in &plan.user.add_to {
            accounts::add_to_group(&req.root, "ollama", g).await?;
            out.changed.push(format!("added ollama to group {g}"));
        }
        // 3. Files.
        for f in &plan.files {
            let path = rooted(&req.root, Path::new(&f.path));
            match f.change {
                Change::Unchanged if f.kind == FileKind::Binary => {}
                Change::Kept => out.new_files.push(format!("{}.new", f.path)),
                // dpkg keeps the packaged conffiles: recorded, uninstall would delete them, and
                // dpkg does not restore a conffile the admin deleted.
                Change::Unchanged if plan.packaged && f.kind == FileKind::Config => {}
                Change::Unchanged => {
                    state.files.insert(f.path.clone(), fetch::sha256_bytes(&f.bytes));
                }
                Change::Create | Change::Update => {
                    journal.push(Undo::File { old: read_old(&path).await, path: path.clone() });
                    fs::write_atomic(&path, f.bytes.clone(), f.mode).await.map_err(|e| InstallError::Write { path: path.clone(), source: e })?;
                    // Binaries are ours whatever their hash; only /etc files need one.
                    if !(plan.packaged && f.kind == FileKind::Config) {
                        state.files.insert(f.path.clone(), if f.kind == FileKind::Binary { String::new() } else { fetch::sha256_bytes(&f.bytes) });
                    }
                    out.changed.push(format!("{} {}", if f.change == Change::Create { "created" } else { "updated" }, f.path));
                }
                Change::KeepYours => {
                    let new = PathBuf::from(format!("{}.new", path.display()));
                    let same = fs::read_capped(&new, 1 << 20).await.map(|b| b == f.bytes).unwrap_or(false);
                    if !same {
                        journal.push(Undo::File { old: read_old(&new).await, path: new.clone() });
                        fs::write_atomic(&new, f.bytes.clone(), f.mode).await.map_err(|e| InstallError::Write { path: new.clone(), source: e })?;
                    }
                    out.new_files.push(format!("{}.new", f.path));
                }
            }
        }
        // 4. The version switch: one rename of `current`.
        if let Some(rec) = &release {
            if store.current().as_deref() != Some(rec.dir.as_str()) || !store.live_ok() {
                let act = store.activate(&rec.dir)?;
                if let Some(a) = &act.adopted {
                    out.changed.push(format!("kept the Ollama that was in /usr/local as {a} (for upgrade --rollback)"));
                    state.previous = Some(Release { dir: a.clone(), version: "adopted".into(), origin: "/usr/local (before jetson-llmd)".into(), ..Default::default() });
                }
                journal.push(Undo::Activation(act));
            }
            out.changed.push(format!("Ollama {} is live ({})", rec.version, rec.dir));
        }
        // 5. systemd reads the new units.
        if let (Some(sd), Some(step)) = (services, &plan.systemd) {
            if step.daemon_reload {
                sd.daemon_reload().await.map_err(InstallError::Systemd)?;
            }
            if !step.enable.is_empty() {
                let u: Vec<&str> = step.enable.iter().map(String::as_str).collect();
                sd.enable(&u).await.map_err(InstallError::Systemd)?;
                out.changed.push(format!("enabled {}", step.enable.join(" ")));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let mut said = rollback(journal, &store).await;
        if let (Some(sd), Some(step)) = (services, &plan.systemd) {
            if step.daemon_reload {
                let _ = sd.daemon_reload().await;
            }
        }
        said.push("the previous install is in place".into());
        return Err(fail(e, said));
    }

    // 6. Remember what is installed (then nothing above can be undone any more).
    if let Some(rec) = release {
        if state.current.as_ref().map(|c| &c.dir) != Some(&rec.dir) {
            if let Some(old) = state.current.take() {
                state.previous = Some(old);
            }
        }
        state.current = Some(rec.clone());
        out.installed = Some(rec);
    }
    let keep: Vec<String> = [&state.current, &state.previous].into_iter().flatten().map(|r| r.dir.clone()).collect();
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    if state.current.is_some() {
        for gone in store.prune(&keep) {
            out.changed.push(format!("removed the old Ollama release {gone}"));
        }
    }
    state.save(&req.root).await.map_err(|e| fail(InstallError::Write { path: super::state::path(&req.root), source: e }, vec![]))?;

    // 7. Start or restart what changed.
    if let (Some(sd), Some(step)) = (services, &plan.systemd) {
        let r = match step.start {
            Start::Nothing => Ok(None),
            Start::Start => sd.queue_start("jetson-llmd.service").await.map(|()| Some("started jetson-llmd.service".to_string())),
            Start::Restart { ollama } => async {
                if ollama {
                    // Stop the supervisor first so it does not race to re-warm the old binary.
                    sd.stop("jetson-llmd.service", Duration::from_secs(60)).await?;
                    sd.restart("ollama.service", Duration::from_secs(90)).await?;
                    sd.queue_start("jetson-llmd.service").await?;
                    Ok(Some("restarted ollama.service and jetson-llmd.service".to_string()))
                } else {
                    sd.stop("jetson-llmd.service", Duration::from_secs(60)).await?;
                    sd.queue_start("jetson-llmd.service").await?;
                    Ok(Some("restarted jetson-llmd.service".to_string()))
                }
            }
            .await,
        };
        match r {
            Ok(s) => out.started = s,
            Err(e) => return Err(Failed { error: InstallError::Systemd(e), rollback: vec!["the install itself is complete; only the start failed".into()], start_only: true }),
        }
    }
    Ok(out)
}

/// For uninstall: is this file still what install wrote?
pub async fn unedited(root: &Path, path: &str, state: &InstallState) -> bool {
    match fs::read_capped(&rooted(root, Path::new(path)), 512 << 20).await {
        Ok(b) => state.files.get(path).is_some_and(|h| *h == fetch::sha256_bytes(&b)),
        Err(_) => false,
    }
}
