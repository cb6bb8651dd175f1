//! What an install would change, computed without changing anything: `--dry-run` prints it,
//! apply carries it out. Files follow dpkg's conffile rule: ours and unedited -> updated; edited
//! by the user -> kept, with our version written beside it as `*.new`.

use super::fetch::{self, Source};
use super::state::InstallState;
use super::tree::Store;
use super::units;
use crate::conf::{config, modelconf, ModelName};
use crate::host::{accounts, fs, rooted};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const JETSON_LLMD_BIN: &str = "/usr/local/bin/jetson-llmd";
pub const UNIT_DIR: &str = "/etc/systemd/system";
/// Where the .deb puts the binary and the units (Debian policy keeps packages out of
/// /usr/local, and packaged units belong in /lib/systemd/system).
pub const PACKAGED_BIN: &str = "/usr/bin/jetson-llmd";
pub const PACKAGED_UNIT_DIR: &str = "/lib/systemd/system";
/// dpkg's file list of the installed package: present when jetson-llmd came from the .deb.
pub const DPKG_LIST: &str = "/var/lib/dpkg/info/jetson-llmd.list";

/// jetson-llmd was installed from its .deb: dpkg owns the binary and the units.
pub fn packaged(root: &Path) -> bool {
    rooted(root, Path::new(DPKG_LIST)).is_file()
}
pub const OLLAMA_ENV: &str = "/etc/jetson-llmd/ollama.env";
pub const OLLAMA_HOME: &str = "/usr/share/ollama";
pub const GPU_GROUPS: [&str; 2] = ["video", "render"];
/// Only the supervisor is enabled: it starts ollama.service, the preload and the keepalive
/// itself, in order.
pub const ENABLE: [&str; 1] = ["jetson-llmd.service"];

const DEFAULT_ENV: &str = include_str!("../../../../etc/jetson-llmd/ollama.env");
const DEFAULT_CONFIG_TEMPLATE: &str = include_str!("../../../../etc/jetson-llmd/config.toml");
/// New installs are guarded: the documented template (every default commented out) plus the
/// guard switched on, matching ollama.env's private OLLAMA_HOST.
fn default_config() -> String {
    format!("{DEFAULT_CONFIG_TEMPLATE}\n# Set by `jetson-llmd install`: clients reach Ollama through the guard (docs/guard.md).\n[guard]\nenabled = true\n")
}

/// ollama.env for a config.toml without the guard: Ollama stays where clients expect it.
fn unguarded_env() -> String {
    DEFAULT_ENV.lines().map(|l| if l.starts_with("OLLAMA_HOST=") { "OLLAMA_HOST=127.0.0.1:11434".to_string() } else { l.to_string() }).collect::<Vec<_>>().join("\n") + "\n"
}

/// The same, with the guard on the address clients already used (see [`lan_ollama_host`]).
fn config_listening_on(listen: &str) -> String {
    format!(
        "{DEFAULT_CONFIG_TEMPLATE}\n# Set by `jetson-llmd install`: clients reach Ollama through the guard (docs/guard.md), on the\n# address ollama.service served before ({listen}); Ollama itself moved to ollama.env's.\n[guard]\nenabled = true\nlisten = {listen:?}\n"
    )
}

/// An OLLAMA_HOST beyond loopback that the user gave ollama.service (in the unit or a drop-in
/// other than ours, as the seed's setup does with `Environment="OLLAMA_HOST=0.0.0.0:11434"`), as
/// the address and port clients use. ollama.env (an EnvironmentFile=, which overrides
/// Environment=) moves Ollama to a private port: the guard must take this address over, or LAN
/// clients lose the endpoint.
pub async fn lan_ollama_host(root: &Path) -> Option<(String, String)> {
    let mut files = vec![format!("{UNIT_DIR}/ollama.service")];
    if let Ok(mut dir) = tokio::fs::read_dir(rooted(root, Path::new(&format!("{UNIT_DIR}/ollama.service.d")))).await {
        let mut names = Vec::new();
        while let Ok(Some(e)) = dir.next_entry().await {
            let n = e.file_name().to_string_lossy().to_string();
            if n.ends_with(".conf") && n != "50-jetson-llmd.conf" {
                names.push(n);
            }
        }
        // systemd applies drop-ins in name order: the last assignment wins.
        names.sort();
        files.extend(names.into_iter().map(|n| format!("{UNIT_DIR}/ollama.service.d/{n}")));
    }
    let mut found = None;
    for f in files {
        let Ok(Some(bytes)) = existing(root, &f, 1 << 20).await else { continue };
        for line in String::from_utf8_lossy(&bytes).lines() {
            let Some(rest) = line.trim().strip_prefix("Environment=") else { continue };
            for word in rest.split_whitespace() {
                if let Some(v) = word.trim_matches('"').strip_prefix("OLLAMA_HOST=") {
                    found = Some((v.trim_matches(['"', '\'']).to_string(), f.clone()));
                }
            }
        }
    }
    let (value, file) = found?;
    let host = ollama_client::parse_host(&value).ok()?;
    let (addr, port) = host.bind.rsplit_once(':')?;
    let ip: std::net::IpAddr = addr.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    let port: u16 = port.parse().ok()?;
    (!ip.is_loopback()).then(|| (std::net::SocketAddr::new(ip, port).to_string(), file))
}
const DEFAULT_MODEL_CONF: &str = include_str!("../../../../etc/ollama/model.conf");

/// The /etc files a new install writes, as (path, bytes): the .deb ships these same bytes as
/// its conffiles, so an install after the package finds them unchanged.
pub fn default_etc_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![(OLLAMA_ENV, DEFAULT_ENV.as_bytes().to_vec()), (config::DEFAULT_CONFIG, default_config().into_bytes()), (config::DEFAULT_MODEL_CONF, model_conf_text(None))]
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub root: PathBuf,
    /// The Ollama release to have; None keeps whatever is installed (and installs nothing new).
    pub ollama: Option<Wanted>,
    pub model: Option<ModelName>,
    /// This binary, copied to /usr/local/bin/jetson-llmd unless it already is that file.
    pub self_exe: Option<PathBuf>,
    pub systemd: bool,
    pub start: bool,
}

#[derive(Debug, Clone)]
pub struct Wanted {
    pub source: Source,
    /// "0.30.6", or the label of local tarballs.
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Create,
    Update,
    Unchanged,
    /// The user edited it: kept; ours goes to `<path>.new`.
    KeepYours,
    /// As KeepYours, and `<path>.new` already holds ours: nothing to write.
    Kept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    Binary,
    Unit,
    /// /etc files the user may edit.
    Config,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileStep {
    /// As on the target (without the root).
    pub path: String,
    pub kind: FileKind,
    pub change: Change,
    #[serde(skip)]
    pub bytes: Vec<u8>,
    #[serde(skip)]
    pub mode: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum OllamaStep {
    Keep {
        dir: String,
        version: String,
    },
    Install {
        version: String,
        from: String,
    },
    /// Nothing installed and nothing asked for.
    Absent,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct UserStep {
    pub create: bool,
    pub add_to: Vec<String>,
    /// GPU groups this system does not have (not named anywhere, so no unit fails on them).
    pub missing_groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    Nothing,
    Start,
    /// Restart the supervisor; and ollama.service first when its binary or environment changed.
    Restart {
        ollama: bool,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct SystemdStep {
    pub daemon_reload: bool,
    pub enable: Vec<String>,
    pub start: Start,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub root: PathBuf,
    pub ollama: OllamaStep,
    pub files: Vec<FileStep>,
    pub user: UserStep,
    pub systemd: Option<SystemdStep>,
    pub notes: Vec<String>,
    /// From the .deb: dpkg owns the binary, the units and the /etc conffiles' records.
    pub packaged: bool,
}

impl Plan {
    pub fn changes_anything(&self) -> bool {
        matches!(self.ollama, OllamaStep::Install { .. })
            || self.files.iter().any(|f| !matches!(f.change, Change::Unchanged | Change::Kept))
            || self.user.create
            || !self.user.add_to.is_empty()
            || self.systemd.as_ref().is_some_and(|s| s.daemon_reload || !s.enable.is_empty() || s.start != Start::Nothing)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "plan for {}:", self.root.display());
        match &self.ollama {
            OllamaStep::Keep { version, dir } => {
                let _ = writeln!(s, "  ok      ollama {version} ({dir}) is installed and whole");
            }
            OllamaStep::Install { version, from } => {
                let _ = writeln!(s, "  install ollama {version} + JetPack 6 libraries from {from} (sha256 checked first)");
            }
            OllamaStep::Absent => {
                let _ = writeln!(s, "  skip    ollama: none installed and none asked for");
            }
        }
        if self.user.create {
            let _ = writeln!(s, "  create  system user ollama (home {OLLAMA_HOME})");
        }
        for g in &self.user.add_to {
            let _ = writeln!(s, "  add     ollama to group {g}");
        }
        for g in &self.user.missing_groups {
            let _ = writeln!(s, "  note    no {g} group on this system; not used");
        }
        for f in &self.files {
            let what = match f.change {
                Change::Create => "create ",
                Change::Update => "update ",
                Change::Unchanged => "ok     ",
                Change::KeepYours | Change::Kept => "keep   ",
            };
            let extra = if matches!(f.change, Change::KeepYours | Change::Kept) { format!(" (edited by you; ours goes to {}.new)", f.path) } else { String::new() };
            let _ = writeln!(s, "  {what} {}{extra}", f.path);
        }
        if let Some(sd) = &self.systemd {
            if sd.daemon_reload {
                let _ = writeln!(s, "  systemd daemon-reload");
            }
            if !sd.enable.is_empty() {
                let _ = writeln!(s, "  systemd enable {}", sd.enable.join(" "));
            }
            match sd.start {
                Start::Nothing => {}
                Start::Start => {
                    let _ = writeln!(s, "  systemd start jetson-llmd.service (ollama, GPU check, preload, keepalive)");
                }
                Start::Restart { ollama } => {
                    let _ = writeln!(s, "  systemd restart {}jetson-llmd.service", if ollama { "ollama.service, " } else { "" });
                }
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note    {n}");
        }
        if !self.changes_anything() {
            let _ = writeln!(s, "nothing to do: everything is installed and up to date");
        }
        s
    }
}

/// dpkg's conffile rule.
pub fn conffile_change(existing: Option<&[u8]>, ours: &[u8], recorded: Option<&str>) -> Change {
    match existing {
        None => Change::Create,
        Some(e) if e == ours => Change::Unchanged,
        Some(e) if recorded == Some(fetch::sha256_bytes(e).as_str()) => Change::Update,
        Some(_) => Change::KeepYours,
    }
}

pub fn owned_change(existing: Option<&[u8]>, ours: &[u8]) -> Change {
    match existing {
        None => Change::Create,
        Some(e) if e == ours => Change::Unchanged,
        Some(_) => Change::Update,
    }
}

/// Why a plan cannot be made (nothing has been changed yet).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A local tarball could not be hashed.
    #[error(transparent)]
    Hash(#[from] super::fetch::FetchError),
    /// A file the plan compares against could not be read.
    #[error(transparent)]
    Read(#[from] fs::ReadError),
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Units(#[from] super::units::BadPath),
    #[error(transparent)]
    Accounts(#[from] crate::host::accounts::AccountError),
}

async fn existing(root: &Path, path: &str, cap: u64) -> Result<Option<Vec<u8>>, PlanError> {
    match fs::read_capped(&rooted(root, Path::new(path)), cap).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The model.conf install writes: the shipped file, with `--model` if given.
pub fn model_conf_text(model: Option<&ModelName>) -> Vec<u8> {
    match model {
        Some(m) => modelconf::with_model(DEFAULT_MODEL_CONF.as_bytes(), m),
        None => DEFAULT_MODEL_CONF.as_bytes().to_vec(),
    }
}

/// Which version is live and whether it is the one wanted. Local tarballs are hashed here (a
/// few seconds for 2 GB) so that re-running the same offline install does nothing.
pub async fn ollama_step(req: &Request, state: &InstallState) -> Result<OllamaStep, PlanError> {
    let store = Store::new(&req.root);
    let live = store.live_ok();
    let current = state.current.as_ref().filter(|c| live && store.current().as_deref() == Some(c.dir.as_str()));
    let Some(w) = &req.ollama else {
        return Ok(match (current, store.current()) {
            (Some(c), _) => OllamaStep::Keep { dir: c.dir.clone(), version: c.version.clone() },
            (None, Some(d)) if live => OllamaStep::Keep { dir: d.clone(), version: "unknown".into() },
            _ => OllamaStep::Absent,
        });
    };
    let same = match (&w.source, current) {
        (_, None) => false,
        (Source::Release { version, .. }, Some(c)) => c.version == version.to_string() && !c.origin.starts_with('/'),
        (Source::Local { base, jetpack, .. }, Some(c)) => fetch::sha256_file(base).await? == c.base_sha256 && fetch::sha256_file(jetpack).await? == c.jetpack_sha256,
    };
    Ok(match current {
        Some(c) if same => OllamaStep::Keep { dir: c.dir.clone(), version: c.version.clone() },
        _ => OllamaStep::Install {
            version: w.version.clone(),
            from: match &w.source {
                Source::Release { base, version } => version.url(base, &version.base_asset()).rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default(),
                Source::Local { base, .. } => base.parent().map(|p| p.display().to_string()).unwrap_or_default(),
            },
        },
    })
}

pub async fn compute(req: &Request, state: &InstallState, active: Option<bool>) -> Result<Plan, PlanError> {
    let root = &req.root;
    let ollama = ollama_step(req, state).await?;
    let mut notes = Vec::new();
    let mut files = Vec::new();

    // From the .deb, dpkg owns the binary (/usr/bin) and the units (/lib/systemd/system): only
    // Ollama, the user, the /etc files and systemd's state are install's.
    let packaged = packaged(root);
    if packaged {
        notes.push(format!("jetson-llmd came from its .deb: {PACKAGED_BIN} and the units in {PACKAGED_UNIT_DIR} are the package's"));
        // A standalone install before the package left copies that shadow the package's units.
        let shadows: Vec<String> = [JETSON_LLMD_BIN.to_string(), format!("{UNIT_DIR}/jetson-llmd.service"), format!("{UNIT_DIR}/ollama-preload.service"), format!("{UNIT_DIR}/ollama-keepalive.service")]
            .into_iter()
            .filter(|p| state.files.contains_key(p) && rooted(root, Path::new(p)).exists())
            .collect();
        if !shadows.is_empty() {
            notes.push(format!("left from an install before the package, and shadowing it: sudo rm {} && sudo systemctl daemon-reload", shadows.join(" ")));
        }
    } else {
        // This binary.
        if let Some(exe) = &req.self_exe {
            let target = rooted(root, Path::new(JETSON_LLMD_BIN));
            let same_file = match (std::fs::canonicalize(exe), std::fs::canonicalize(&target)) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            };
            if !same_file {
                let ours = tokio::fs::read(exe).await.map_err(|source| PlanError::Io { path: exe.clone(), source })?;
                // Sizes first: reading a 100 MB binary only to find it differs in length is waste.
                let same_size = tokio::fs::metadata(&target).await.is_ok_and(|m| m.is_file() && m.len() == ours.len() as u64);
                let change = if same_size {
                    owned_change(existing(root, JETSON_LLMD_BIN, 512 << 20).await?.as_deref(), &ours)
                } else if target.exists() {
                    Change::Update
                } else {
                    Change::Create
                };
                files.push(FileStep { path: JETSON_LLMD_BIN.into(), kind: FileKind::Binary, change, bytes: ours, mode: 0o755 });
            }
        }

        // Units. Ollama's installer owns /etc/systemd/system/ollama.service once it has written
        // one (it rewrites it on every run): then only a drop-in carries our settings.
        let rendered = units::render(Path::new(JETSON_LLMD_BIN), Path::new(super::tree::BIN))?;
        let ollama_unit = format!("{UNIT_DIR}/ollama.service");
        let have_unit = existing(root, &ollama_unit, 1 << 20).await?;
        let ours_unit = rendered.iter().find(|(n, _)| *n == "ollama.service").map(|(_, t)| t.as_bytes().to_vec()).unwrap_or_default();
        let foreign = match &have_unit {
            Some(h) => *h != ours_unit && state.files.get(&ollama_unit).map(String::as_str) != Some(fetch::sha256_bytes(h).as_str()),
            None => rooted(root, Path::new("/lib/systemd/system/ollama.service")).exists() || rooted(root, Path::new("/usr/lib/systemd/system/ollama.service")).exists(),
        };
        if foreign {
            notes.push("ollama.service is Ollama's own: left as it is, jetson-llmd's settings go into its drop-in".into());
        }
        for (name, text) in &rendered {
            let drop_in = name.starts_with("ollama.service.d/");
            if (foreign && *name == "ollama.service") || (!foreign && drop_in) {
                continue;
            }
            let path = format!("{UNIT_DIR}/{name}");
            let have = existing(root, &path, 1 << 20).await?;
            files.push(FileStep { change: owned_change(have.as_deref(), text.as_bytes()), path, kind: FileKind::Unit, bytes: text.as_bytes().to_vec(), mode: 0o644 });
        }
    }

    // /etc files the user owns once they exist; each is read once.
    let mut have_etc = std::collections::BTreeMap::new();
    for path in [OLLAMA_ENV, config::DEFAULT_CONFIG, config::DEFAULT_MODEL_CONF] {
        have_etc.insert(path, existing(root, path, 256 << 10).await?);
    }
    // A re-install keeps the model model.conf names: a switch is not undone, and `--model`
    // (for a new board) does not switch a board that has one: `switch` does, with admission.
    let have_model = have_etc[config::DEFAULT_MODEL_CONF].as_deref().and_then(|b| modelconf::parse(b).ok()).map(|c| c.model);
    let named = match (&req.model, have_model) {
        (Some(m), Some(h)) if *m != h => {
            notes.push(format!("model.conf names {h}, which stays (install does not switch models); to keep {m} warm instead run: sudo jetson-llmd switch {m}"));
            Some(h)
        }
        (Some(m), _) => Some(m.clone()),
        (None, h) => h,
    };
    let model_conf = model_conf_text(named.as_ref());
    let lan = lan_ollama_host(root).await;
    let config_text = match &lan {
        Some((listen, _)) => config_listening_on(listen),
        None => default_config(),
    };
    for (path, ours) in [(OLLAMA_ENV, DEFAULT_ENV.as_bytes().to_vec()), (config::DEFAULT_CONFIG, config_text.into_bytes()), (config::DEFAULT_MODEL_CONF, model_conf)] {
        let have = &have_etc[path];
        let mut change = conffile_change(have.as_deref(), &ours, state.files.get(path).map(String::as_str));
        if change == Change::KeepYours && existing(root, &format!("{path}.new"), 256 << 10).await.ok().flatten().as_deref() == Some(ours.as_slice()) {
            change = Change::Kept;
        }
        if change == Change::KeepYours && path == config::DEFAULT_MODEL_CONF {
            if let (Some(m), Some(h)) = (&req.model, have) {
                if modelconf::parse(h).is_err() {
                    notes.push(format!("model.conf is yours and stays; to keep {m} warm instead run: sudo jetson-llmd switch {m}"));
                }
            }
        }
        files.push(FileStep { path: path.into(), kind: FileKind::Config, change, bytes: ours, mode: 0o644 });
    }

    // ollama.env moves Ollama behind the guard only together with a config.toml that turns the
    // guard on: a kept config.toml without it keeps ollama.env too (else clients lose :11434).
    let cfg_kept = files.iter().any(|f| f.path == config::DEFAULT_CONFIG && matches!(f.change, Change::KeepYours | Change::Kept));
    if cfg_kept {
        let text = String::from_utf8_lossy(have_etc[config::DEFAULT_CONFIG].as_deref().unwrap_or_default()).to_string();
        let guarded = config::from_text(Path::new(config::DEFAULT_CONFIG), &text).is_ok_and(|s| s.guard.enabled);
        if !guarded {
            for f in files.iter_mut().filter(|f| f.path == OLLAMA_ENV && f.change == Change::Update) {
                f.change = Change::KeepYours;
                notes.push("ollama.env kept: your config.toml does not turn the guard on, so Ollama stays on its address (see docs/guard.md to move it behind the guard)".into());
            }
            // A new ollama.env must not move Ollama off 11434 when nothing will listen there.
            for f in files.iter_mut().filter(|f| f.path == OLLAMA_ENV && f.change == Change::Create) {
                f.bytes = unguarded_env().into_bytes();
                notes.push("ollama.env keeps Ollama on 127.0.0.1:11434: your config.toml does not turn the guard on (see docs/guard.md to put it in front)".into());
            }
        }
    }

    // Where clients connect, before and after: said in every plan that puts the guard in front.
    let env_written = files.iter().any(|f| f.path == OLLAMA_ENV && matches!(f.change, Change::Create | Change::Update));
    let cfg_written = files.iter().any(|f| f.path == config::DEFAULT_CONFIG && matches!(f.change, Change::Create | Change::Update));
    if env_written && cfg_written {
        let ollama_at = DEFAULT_ENV.lines().rev().find_map(|l| l.strip_prefix("OLLAMA_HOST=")).unwrap_or("127.0.0.1:11435");
        match &lan {
            Some((listen, file)) => notes.push(format!("clients keep connecting to {listen} (set in {file}): the guard listens there now, and Ollama moves behind it to {ollama_at} (ollama.env)")),
            None => notes.push(format!("clients connect to 127.0.0.1:11434 as before: the guard listens there now, and Ollama moves behind it to {ollama_at} (ollama.env); for the LAN set [guard] listen = \"0.0.0.0:11434\"")),
        }
    }

    // The ollama user and the GPU groups that exist here.
    let acc = accounts::read(root).await?;
    let mut user = UserStep { create: !acc.has_user("ollama"), ..Default::default() };
    for g in GPU_GROUPS {
        if !acc.has_group(g) {
            user.missing_groups.push(g.into());
        } else if user.create || !acc.in_group("ollama", g) {
            user.add_to.push(g.into());
        }
    }

    let systemd = req.systemd.then(|| {
        let units_changed = files.iter().any(|f| f.kind == FileKind::Unit && f.change != Change::Unchanged);
        let env_changed = files.iter().any(|f| f.path == OLLAMA_ENV && matches!(f.change, Change::Create | Change::Update));
        let bin_changed = matches!(ollama, OllamaStep::Install { .. });
        // symlink_metadata: the link is absolute inside the root, so following it from here would miss.
        let enable = ENABLE.iter().filter(|u| std::fs::symlink_metadata(rooted(root, Path::new(&format!("{UNIT_DIR}/multi-user.target.wants/{u}")))).is_err()).map(|u| u.to_string()).collect();
        let anything = units_changed || files.iter().any(|f| matches!(f.change, Change::Create | Change::Update)) || bin_changed || user.create || !user.add_to.is_empty();
        let start = match (req.start, active) {
            (false, _) => Start::Nothing,
            (true, Some(true)) if anything => Start::Restart { ollama: bin_changed || env_changed || units_changed || !user.add_to.is_empty() },
            (true, Some(true)) => Start::Nothing,
            (true, _) => Start::Start,
        };
        SystemdStep { daemon_reload: units_changed, enable, start }
    });
    if !req.systemd {
        notes.push("--no-systemd: units are written but systemd is not told; run `systemctl daemon-reload && systemctl enable --now jetson-llmd` yourself".into());
    }
    Ok(Plan { root: root.clone(), ollama, files, user, systemd, notes, packaged })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_config_is_valid_and_guarded() {
        let text = default_config();
        let s = config::from_text(Path::new("config.toml"), &text).expect("valid");
        assert!(s.guard.enabled);
        assert_eq!(s.guard.listen.port(), 11434);
        let env = String::from_utf8_lossy(DEFAULT_ENV.as_bytes()).to_string();
        assert!(env.lines().any(|l| l == "OLLAMA_HOST=127.0.0.1:11435"), "Ollama behind the guard: {env}");
    }

    #[test]
    fn conffile_rule_table() {
        let ours = b"new".as_slice();
        let old = b"old".as_slice();
        let old_sum = fetch::sha256_bytes(old);
        assert_eq!(conffile_change(None, ours, None), Change::Create);
        assert_eq!(conffile_change(Some(ours), ours, None), Change::Unchanged);
        assert_eq!(conffile_change(Some(old), ours, Some(&old_sum)), Change::Update, "ours and unedited: updated");
        assert_eq!(conffile_change(Some(old), ours, None), Change::KeepYours, "not ours: kept");
        assert_eq!(conffile_change(Some(old), ours, Some(&fetch::sha256_bytes(b"other"))), Change::KeepYours, "edited since: kept");
        assert_eq!(owned_change(Some(old), ours), Change::Update);
        assert_eq!(owned_change(Some(ours), ours), Change::Unchanged);
    }
}
