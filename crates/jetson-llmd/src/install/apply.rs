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
    Systemd(#[from] super::services::ServiceError),
    #[error("interrupted by a signal (SIGINT or SIGTERM) before the install was complete")]
    Interrupted,
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
    File {
        path: PathBuf,
        old: Option<(Vec<u8>, u32)>,
    },
    /// Directories a file's write created (deepest first), removed again when empty.
    Dirs(Vec<PathBuf>),
    Activation(Activation),
    Dir(PathBuf),
}

pub struct Options {
    pub quiet: bool,
    pub limits: Limits,
    /// SIGINT/SIGTERM: the download stops at once, the live system is put back as it was. A
    /// token nobody cancels when no signal handling is wanted.
    pub cancel: tokio_util::sync::CancellationToken,
}

async fn read_old(path: &Path) -> Option<(Vec<u8>, u32)> {
    let meta = tokio::fs::symlink_metadata(path).await.ok()?;
    let bytes = fs::read_capped(path, 512 << 20).await.ok()?;
    Some((bytes, meta.permissions().mode() & 0o7777))
}

/// The live system's changes so far, each with what puts it back (rustup's `Transaction`).
/// Dropped without [`Journal::commit`] (a panic unwinding through `apply`), it rolls back on
/// the spot with blocking calls; errors and signals roll back through [`Journal::rollback`].
struct Journal {
    undo: Vec<Undo>,
    store: Store,
}

impl Journal {
    fn push(&mut self, u: Undo) {
        self.undo.push(u);
    }

    /// Puts back what was changed, newest first; says what it did.
    fn rollback(&mut self) -> Vec<String> {
        let mut said = Vec::new();
        for u in std::mem::take(&mut self.undo).into_iter().rev() {
            match u {
                Undo::File { path, old: Some((bytes, mode)) } => match fs::write_atomic_blocking(&path, &bytes, mode) {
                    Ok(()) => said.push(format!("restored {}", path.display())),
                    Err(e) => said.push(format!("could not restore {}: {e}", path.display())),
                },
                Undo::File { path, old: None } => {
                    let _ = std::fs::remove_file(&path);
                    said.push(format!("removed {}", path.display()));
                }
                Undo::Activation(a) => match self.store.undo(&a) {
                    Ok(()) => said.push(format!("Ollama is back to {}", a.before.as_deref().unwrap_or("what was there before"))),
                    Err(e) => said.push(format!("could not switch Ollama back: {e}")),
                },
                Undo::Dir(d) => {
                    let _ = std::fs::remove_dir_all(&d);
                }
                Undo::Dirs(dirs) => remove_empty(&dirs),
            }
        }
        said
    }

    /// Everything stays: nothing to put back any more.
    fn commit(mut self) {
        self.undo.clear();
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if !self.undo.is_empty() {
            // Only reached by a panic (errors and signals roll back before): the live system
            // must not stay half-installed because of a bug.
            for line in self.rollback() {
                eprintln!("rollback: {line}");
            }
        }
    }
}

/// The directories from `dir` up that do not exist yet, deepest first: created by a step that
/// may fail, removed again (when still empty) so that a refused install leaves nothing behind.
fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).map(Path::to_path_buf).collect()
}

fn remove_empty(dirs: &[PathBuf]) {
    for d in dirs {
        // remove_dir refuses a non-empty directory: only what this run created and left empty goes.
        let _ = std::fs::remove_dir(d);
    }
}

/// Downloads (or takes), verifies and unpacks the wanted release beside the live one.
/// Returns the release record; the live version is not switched.
pub async fn stage_release(req: &Request, state: &InstallState, opts: &Options) -> Result<(Release, bool), InstallError> {
    let w = req.ollama.as_ref().ok_or_else(|| InstallError::Other("no Ollama release was asked for".into()))?;
    let store = Store::new(&req.root);
    let cache = rooted(&req.root, Path::new(CACHE));
    let created = missing_dirs(&cache);
    // A download is dropped at once on a signal (the .partial file stays for a resume).
    let obtained = tokio::select! {
        r = fetch::obtain(&w.source, &cache, opts.quiet) => r.map_err(InstallError::from),
        _ = opts.cancel.cancelled() => Err(InstallError::Interrupted),
    };
    let (base, jetpack) = match obtained {
        Ok(x) => x,
        Err(e) => {
            remove_empty(&created);
            return Err(e);
        }
    };
    let dir = format!("{}-{}", w.version, &base.sha256[..12]);
    let rec = Release { dir: dir.clone(), version: w.version.clone(), origin: base.origin.clone(), base_sha256: base.sha256.clone(), jetpack_sha256: jetpack.sha256.clone(), installed_at: crate::records::state::now() };
    let known = [&state.current, &state.previous].into_iter().flatten().any(|r| r.dir == dir && r.jetpack_sha256 == jetpack.sha256);
    if known && store.intact(&dir) {
        return Ok((rec, false));
    }
    if !opts.quiet {
        eprintln!("unpacking {} and {} into {}", base.asset, jetpack.asset, store.version_dir(&dir).display());
    }
    let (s, limits) = (store.clone(), opts.limits);
    let d = dir.clone();
    let created = missing_dirs(&store.dir());
    // The unpack runs to its end (seconds; its staging directory is removed on failure); a
    // signal meanwhile is seen just after it.
    let staged = tokio::task::spawn_blocking(move || s.stage(&d, &base, &jetpack, limits)).await.map_err(|e| InstallError::Other(e.to_string())).and_then(|r| r.map_err(InstallError::from));
    if let Err(e) = staged {
        remove_empty(&created);
        return Err(e);
    }
    if opts.cancel.is_cancelled() {
        let _ = std::fs::remove_dir_all(store.version_dir(&dir));
        remove_empty(&created);
        return Err(InstallError::Interrupted);
    }
    Ok((rec, true))
}

pub async fn apply<S: Services>(plan: &Plan, req: &Request, state: &mut InstallState, services: Option<&S>, opts: &Options) -> Result<Outcome, Failed> {
    let store = Store::new(&req.root);
    let fail = |error: InstallError, rollback: Vec<String>| Failed { error, rollback, start_only: false };
    let mut out = Outcome::default();
    let mut journal = Journal { undo: Vec::new(), store: store.clone() };
    // Checked before each change of the live system: a signal stops the install between two
    // changes, never in the middle of one, and everything done so far is put back.
    let go_on = || if opts.cancel.is_cancelled() { Err(InstallError::Interrupted) } else { Ok(()) };

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
        go_on()?;
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
                    go_on()?;
                    journal.push(Undo::Dirs(path.parent().map(missing_dirs).unwrap_or_default()));
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
                        go_on()?;
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
                go_on()?;
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
            go_on()?;
            if step.daemon_reload {
                sd.daemon_reload().await?;
            }
            go_on()?;
            if !step.enable.is_empty() {
                let u: Vec<&str> = step.enable.iter().map(String::as_str).collect();
                sd.enable(&u).await?;
                out.changed.push(format!("enabled {}", step.enable.join(" ")));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let mut said = journal.rollback();
        if let (Some(sd), Some(step)) = (services, &plan.systemd) {
            if step.daemon_reload {
                let _ = sd.daemon_reload().await;
            }
        }
        said.push("the previous install is in place".into());
        return Err(fail(e, said));
    }

    // 6. Remember what is installed (then nothing above can be undone any more).
    journal.commit();
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
            Start::Restart { ollama } => {
                async {
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
                .await
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::plan::{FileStep, SystemdStep, UserStep};
    use tokio_util::sync::CancellationToken;

    /// systemd as the test wants it: daemon-reload is where a signal arrives or a bug panics.
    struct Sd {
        on_reload: Box<dyn Fn() + Send + Sync>,
    }

    impl Services for Sd {
        async fn daemon_reload(&self) -> Result<(), crate::install::services::ServiceError> {
            (self.on_reload)();
            Ok(())
        }
        async fn enable(&self, _: &[&str]) -> Result<(), crate::install::services::ServiceError> {
            Ok(())
        }
        async fn disable(&self, _: &[&str]) -> Result<(), crate::install::services::ServiceError> {
            Ok(())
        }
        async fn active_state(&self, _: &str) -> Option<String> {
            None
        }
        async fn start(&self, _: &str, _: Duration) -> Result<(), crate::install::services::ServiceError> {
            Ok(())
        }
        async fn restart(&self, _: &str, _: Duration) -> Result<(), crate::install::services::ServiceError> {
            Ok(())
        }
        async fn stop(&self, _: &str, _: Duration) -> Result<(), crate::install::services::ServiceError> {
            Ok(())
        }
        async fn queue_start(&self, _: &str) -> Result<(), crate::install::services::ServiceError> {
            Ok(())
        }
    }

    /// A root with one file install will update and one it will create in a new directory.
    fn fixture() -> (tempfile::TempDir, Plan, Request) {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("etc/jetson-llmd")).expect("mkdir");
        std::fs::write(d.path().join("etc/jetson-llmd/config.toml"), "# the user's\n").expect("w");
        let file = |path: &str, change| FileStep { path: path.into(), kind: FileKind::Config, change, bytes: b"ours\n".to_vec(), mode: 0o644 };
        let plan = Plan {
            root: d.path().to_path_buf(),
            ollama: OllamaStep::Absent,
            files: vec![file("/etc/jetson-llmd/config.toml", Change::Update), file("/etc/ollama/model.conf", Change::Create)],
            user: UserStep::default(),
            systemd: Some(SystemdStep { daemon_reload: true, enable: vec!["jetson-llmd.service".into()], start: Start::Nothing }),
            notes: vec![],
            packaged: false,
        };
        let req = Request { root: d.path().to_path_buf(), ollama: None, model: None, self_exe: None, systemd: true, start: false };
        (d, plan, req)
    }

    fn as_before(d: &Path) {
        assert_eq!(std::fs::read_to_string(d.join("etc/jetson-llmd/config.toml")).expect("r"), "# the user's\n");
        assert!(!d.join("etc/ollama").exists(), "the directory the install created is gone too");
    }

    #[tokio::test]
    async fn a_signal_between_two_changes_puts_back_everything_done_so_far() {
        let (d, plan, req) = fixture();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let sd = Sd { on_reload: Box::new(move || c.cancel()) };
        let opts = Options { quiet: true, limits: Default::default(), cancel };
        let r = apply(&plan, &req, &mut InstallState::default(), Some(&sd), &opts).await;
        let f = r.expect_err("interrupted");
        assert!(matches!(f.error, InstallError::Interrupted), "{:?}", f.error);
        assert!(f.rollback.iter().any(|l| l.starts_with("restored ")), "{:?}", f.rollback);
        as_before(d.path());
        // Cancelled before anything: nothing is touched at all.
        let cancel = CancellationToken::new();
        cancel.cancel();
        let sd = Sd { on_reload: Box::new(|| {}) };
        let opts = Options { quiet: true, limits: Default::default(), cancel };
        assert!(apply(&plan, &req, &mut InstallState::default(), Some(&sd), &opts).await.is_err());
        as_before(d.path());
    }

    #[tokio::test]
    async fn a_panic_midway_puts_back_everything_done_so_far() {
        let (d, plan, req) = fixture();
        let sd = Sd { on_reload: Box::new(|| panic!("a bug in a step")) };
        let opts = Options { quiet: true, limits: Default::default(), cancel: CancellationToken::new() };
        let r = tokio::spawn(async move {
            let _ = apply(&plan, &req, &mut InstallState::default(), Some(&sd), &opts).await;
        })
        .await;
        assert!(r.expect_err("it panicked").is_panic());
        as_before(d.path());
    }
}
