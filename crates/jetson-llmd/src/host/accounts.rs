//! The `ollama` system user, made the way Ollama's install.sh makes it (`useradd -r -s /bin/false
//! -U -m -d /usr/share/ollama ollama`, then `usermod -a -G` for the GPU groups that exist).
//! Lookups parse /etc/passwd and /etc/group under the root (bounded reads); changes go through
//! shadow's tools with `--root` so that locking and /etc/shadow stay theirs.

use super::{fs, rooted};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{}: {source}", .path.display())]
    Read { path: PathBuf, source: fs::ReadError },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accounts {
    pub users: Vec<String>,
    /// (group, members)
    pub groups: Vec<(String, Vec<String>)>,
}

impl Accounts {
    pub fn has_user(&self, u: &str) -> bool {
        self.users.iter().any(|x| x == u)
    }

    pub fn has_group(&self, g: &str) -> bool {
        self.groups.iter().any(|(n, _)| n == g)
    }

    /// Explicit membership (a user's primary group is not listed in /etc/group).
    pub fn in_group(&self, u: &str, g: &str) -> bool {
        self.groups.iter().any(|(n, m)| n == g && m.iter().any(|x| x == u))
    }
}

pub async fn read(root: &Path) -> Result<Accounts, AccountError> {
    let get = |p: &'static str| async move {
        let path = rooted(root, Path::new(p));
        match fs::read_text(&path, 4 << 20).await {
            Ok(t) => Ok(t),
            Err(e) if e.is_not_found() => Ok(String::new()),
            Err(source) => Err(AccountError::Read { path, source }),
        }
    };
    let users = get("/etc/passwd").await?.lines().filter_map(|l| l.split(':').next()).filter(|u| !u.is_empty() && !u.starts_with('#')).map(str::to_string).collect();
    let groups = get("/etc/group")
        .await?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && !f[0].is_empty()).then(|| (f[0].to_string(), f[3].split(',').filter(|m| !m.is_empty()).map(|m| m.trim().to_string()).collect()))
        })
        .collect();
    Ok(Accounts { users, groups })
}

async fn run(root: &Path, program: &str, args: &[&str]) -> Result<(), AccountError> {
    let mut cmd = tokio::process::Command::new(program);
    if root != Path::new("/") {
        cmd.arg("--root").arg(root);
    }
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let shown = format!("{program} {}", args.join(" "));
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| AccountError::Command { command: shown.clone(), detail: "no answer within 60 s".into() })?
        .map_err(|e| AccountError::Command { command: shown.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(AccountError::Command { command: shown, detail: crate::text::clip(&crate::text::clean(err.trim()), 300) });
    }
    Ok(())
}

/// As install.sh: a system user with its own group and home (where models live).
pub async fn create_system_user(root: &Path, user: &str, home: &str) -> Result<(), AccountError> {
    run(root, "useradd", &["-r", "-s", "/bin/false", "-U", "-m", "-d", home, user]).await
}

pub async fn add_to_group(root: &Path, user: &str, group: &str) -> Result<(), AccountError> {
    run(root, "usermod", &["-a", "-G", group, user]).await
}

pub async fn delete_user(root: &Path, user: &str) -> Result<(), AccountError> {
    run(root, "userdel", &[user]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_passwd_and_group() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("etc")).expect("mkdir");
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nollama:x:999:999::/usr/share/ollama:/bin/false\n").expect("w");
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nvideo:x:44:ollama,pi\nbroken\n").expect("w");
        let a = read(d.path()).await.expect("read");
        assert!(a.has_user("ollama") && !a.has_user("pi"));
        assert!(a.in_group("ollama", "video") && a.has_group("video") && !a.has_group("render"));
        let empty = tempfile::tempdir().expect("tmp");
        assert_eq!(read(empty.path()).await.expect("missing files are empty"), Accounts::default());
    }
}
