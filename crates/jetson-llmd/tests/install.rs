//! `jetson-llmd install` and `uninstall` on fixture roots (`--root`, `--no-systemd`), from
//! tarballs built here in Ollama's release layout. Every hostile case checks that the previous
//! install is byte-for-byte intact, that nothing was written outside the root, and that the
//! message names the problem. (Upgrade and the canary need systemd: tests/systemd_container.rs.)

mod common;

use common::{release, sha, Release, E};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_jetson-llmd"))
}

fn ollama_script(tag: &str) -> Vec<u8> {
    format!("#!/bin/sh\necho 'ollama version is {tag}'\n").into_bytes()
}

fn base_entries(bin: &[u8]) -> Vec<E<'_>> {
    vec![
        E::Dir("./"),
        E::Dir("./bin/"),
        E::File("./bin/ollama", bin, 0o755),
        E::Dir("./lib/"),
        E::Dir("./lib/ollama/"),
        E::File("./lib/ollama/libggml-base.so.0.0.0", b"ggml", 0o644),
        E::Link("./lib/ollama/libggml-base.so.0", "libggml-base.so.0.0.0"),
        E::Link("./lib/ollama/libggml-base.so", "libggml-base.so.0"),
    ]
}

fn jetpack_entries() -> Vec<E<'static>> {
    vec![
        E::Dir("./"),
        E::Dir("./lib/"),
        E::Dir("./lib/ollama/"),
        E::Dir("./lib/ollama/cuda_jetpack6/"),
        E::File("./lib/ollama/cuda_jetpack6/libggml-cuda.so", b"cuda", 0o644),
        E::File("./lib/ollama/cuda_jetpack6/libcublas.so.12.6.1.4", b"cublas", 0o644),
        E::Link("./lib/ollama/cuda_jetpack6/libcublas.so.12", "libcublas.so.12.6.1.4"),
    ]
}

fn good_release(dir: &Path, tag: &str) -> Release {
    let script = ollama_script(tag);
    release(dir, &base_entries(&script), &jetpack_entries())
}

/// A JetPack 6 board's files, an /etc/passwd without ollama and /etc/group without render.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    /// The root sits alone in its own temporary directory, so "nothing beside the root" is checkable.
    fn path(&self) -> &Path {
        &self.root
    }
}

fn fixture_root() -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let d = Fixture { root: dir.path().join("root"), _dir: dir };
    let w = |p: &str, t: &str| {
        let p = d.path().join(p);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, t).expect("write");
    };
    w("etc/nv_tegra_release", "# R36 (release), REVISION: 4.7, GCID: 42132812, BOARD: generic, EABI: aarch64, DATE: Thu Sep 18 22:54:44 UTC 2025\n");
    w("proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\0");
    w("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
    w("etc/group", "root:x:0:\nvideo:x:44:\n");
    w("etc/shadow", "root:*:19000:0:99999:7:::\n");
    w("etc/gshadow", "root:*::\nvideo:*::\n");
    d
}

fn install(root: &Path, r: &Release, extra: &[&str]) -> Output {
    Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(["install", "--no-systemd", "--force", "--version", "0.30.6"])
        .arg("--tarball")
        .arg(&r.base)
        .arg("--jetpack-tarball")
        .arg(&r.jetpack)
        .arg("--sha256sums")
        .arg(&r.sums)
        .args(extra)
        .output()
        .expect("run jetson-llmd")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every path under `dir` with its type and content hash (symlinks by target).
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    fn walk(base: &Path, p: &Path, m: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            let rel = path.strip_prefix(base).expect("prefix").display().to_string();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            if meta.file_type().is_symlink() {
                m.insert(rel, format!("-> {}", std::fs::read_link(&path).expect("link").display()));
            } else if meta.is_dir() {
                m.insert(rel.clone(), "dir".into());
                walk(base, &path, m);
            } else {
                m.insert(rel, sha(&std::fs::read(&path).expect("read")));
            }
        }
    }
    walk(dir, dir, &mut m);
    m
}

fn installed_tree(root: &Path) -> BTreeMap<String, String> {
    snapshot(&root.join("usr/local"))
}

#[test]
fn clean_install_then_a_second_install_changes_nothing_then_uninstall_and_purge() {
    let root = fixture_root();
    let rel = tempfile::tempdir().expect("tmp");
    let r = good_release(rel.path(), "0.30.6");
    let o = install(root.path(), &r, &["--model", "gemma3:1b"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("Ollama 0.30.6 is live"), "{out}");
    assert!(out.contains("created system user ollama"), "{out}");
    assert!(out.contains("next: jetson-llmd status"), "{out}");
    let p = root.path();
    // The well-known paths resolve into the versioned store, inside the root.
    let live = std::fs::canonicalize(p.join("usr/local/bin/ollama")).expect("bin resolves");
    assert!(live.starts_with(std::fs::canonicalize(p.join("usr/local/lib/jetson-llmd/ollama")).expect("store")), "{}", live.display());
    assert_eq!(std::fs::read(&live).expect("bin"), ollama_script("0.30.6"));
    assert!(p.join("usr/local/lib/ollama/cuda_jetpack6/libcublas.so.12").exists(), "JetPack libs through the links");
    assert!(p.join("usr/local/bin/jetson-llmd").is_file());
    // Units: ours, and no unit names a group this system lacks.
    for u in ["jetson-llmd.service", "ollama.service", "ollama-preload.service", "ollama-keepalive.service"] {
        let t = std::fs::read_to_string(p.join("etc/systemd/system").join(u)).expect(u);
        assert!(!t.lines().any(|l| l.starts_with("SupplementaryGroups=") && l.contains("render")), "{u} names the render group");
    }
    assert_eq!(std::fs::read_to_string(p.join("etc/ollama/model.conf")).expect("conf").lines().last(), Some("OLLAMA_MODEL=gemma3:1b"));
    assert!(p.join("etc/jetson-llmd/config.toml").is_file() && p.join("etc/jetson-llmd/ollama.env").is_file());
    let passwd = std::fs::read_to_string(p.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains("ollama:x:") && passwd.contains(":/usr/share/ollama:/bin/false"), "{passwd}");
    let group = std::fs::read_to_string(p.join("etc/group")).expect("group");
    assert!(group.contains("video:x:44:ollama"), "{group}");
    assert!(!group.contains("render"), "{group}");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(p.join("var/lib/jetson-llmd/install.json")).expect("install.json")).expect("json");
    assert_eq!(state["current"]["version"], "0.30.6");

    // Again: nothing to do, nothing touched.
    let before = snapshot(p);
    let o = install(p, &r, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing to do"), "{}", text(&o));
    assert_eq!(snapshot(p), before);
    // Another --model on an installed board (Ansible runs install with each host's model every
    // time): no switch behind `switch`'s back; said, nothing touched.
    let o = install(p, &r, &["--model", "llama3.2:3b"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing to do") && text(&o).contains("model.conf names gemma3:1b, which stays") && text(&o).contains("switch llama3.2:3b"), "{}", text(&o));
    assert_eq!(snapshot(p), before);

    // An edited model.conf survives a re-install with new defaults.
    std::fs::write(p.join("etc/ollama/model.conf"), "OLLAMA_MODEL=qwen3:4b\n").expect("edit");
    let o = install(p, &r, &["--model", "gemma3:1b"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(p.join("etc/ollama/model.conf")).expect("conf"), "OLLAMA_MODEL=qwen3:4b\n");
    assert!(text(&o).contains("switch gemma3:1b"), "{}", text(&o));

    // A dry run lists only what is there: no models directory yet, so none is "kept".
    let o = Command::new(bin()).arg("--root").arg(p).args(["uninstall", "--no-systemd", "--dry-run"]).output().expect("run");
    assert!(o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("keep (models)"), "{}", text(&o));
    // Uninstall keeps the edited model.conf and the models; purge removes them.
    std::fs::create_dir_all(p.join("usr/share/ollama/.ollama/models")).expect("models");
    let o = Command::new(bin()).arg("--root").arg(p).args(["uninstall", "--no-systemd", "--dry-run"]).output().expect("run");
    assert!(String::from_utf8_lossy(&o.stdout).contains("keep (models)  /usr/share/ollama/.ollama/models"), "{}", text(&o));
    let o = Command::new(bin()).arg("--root").arg(p).args(["uninstall", "--no-systemd"]).output().expect("run");
    assert!(o.status.success(), "{}", text(&o));
    assert!(!p.join("usr/local/bin/ollama").exists() && !p.join("usr/local/lib/ollama").exists() && !p.join("usr/local/lib/jetson-llmd").exists());
    assert!(!p.join("etc/systemd/system/jetson-llmd.service").exists());
    assert!(p.join("etc/ollama/model.conf").exists(), "edited: kept");
    assert!(!p.join("etc/jetson-llmd/config.toml").exists(), "unedited: removed");
    assert!(p.join("usr/share/ollama/.ollama/models").exists(), "models kept");
    let o = install(p, &r, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new(bin()).arg("--root").arg(p).args(["uninstall", "--no-systemd", "--purge"]).output().expect("run");
    assert!(o.status.success(), "{}", text(&o));
    assert!(!p.join("usr/share/ollama").exists() && !std::fs::read_to_string(p.join("etc/passwd")).expect("passwd").contains("ollama"));
}

#[test]
fn dry_run_writes_nothing_and_prints_the_plan() {
    let root = fixture_root();
    let rel = tempfile::tempdir().expect("tmp");
    let r = good_release(rel.path(), "0.30.6");
    let before = snapshot(root.path());
    let o = install(root.path(), &r, &["--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    for want in ["install ollama 0.30.6", "create  system user ollama", "add     ollama to group video", "no render group", "create  /etc/systemd/system/jetson-llmd.service", "dry run: nothing was changed"] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn refuses_what_is_not_a_jetpack6_jetson_unless_forced() {
    let root = fixture_root();
    let rel = tempfile::tempdir().expect("tmp");
    let r = good_release(rel.path(), "0.30.6");
    std::fs::write(root.path().join("etc/nv_tegra_release"), "# R38 (release), REVISION: 2.0\n").expect("w");
    let o = Command::new(bin()).arg("--root").arg(root.path()).args(["install", "--no-systemd", "--dry-run", "--tarball"]).arg(&r.base).arg("--jetpack-tarball").arg(&r.jetpack).arg("--sha256sums").arg(&r.sums).output().expect("run");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("R38") && err.contains("cuda_v13") && err.contains("--force"), "{err}");
    // The dry run still shows what an install would do.
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("install ollama") && out.contains("dry run: nothing was changed"), "{out}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
}

/// Installs a good release first; then each bad one must fail, name its problem, and leave the
/// installed tree and everything outside the root untouched.
#[test]
fn hostile_archives_and_bad_downloads_leave_the_old_install_intact() {
    let root = fixture_root();
    let rel = tempfile::tempdir().expect("tmp");
    let good = good_release(&rel.path().join("good"), "0.30.6");
    let o = install(root.path(), &good, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let tree = installed_tree(root.path());
    let outside = root.path().parent().expect("parent").to_path_buf();
    let outside_before = snapshot(&outside).len();
    let script = ollama_script("0.31.0");
    let with_base = |extra: Vec<E<'static>>| {
        let mut v = base_entries(&script);
        v.extend(extra);
        v
    };
    let cases: Vec<(&str, Vec<E>, Vec<E>, &str)> = vec![
        ("absolute", with_base(vec![E::File("/etc/cron.d/evil", b"x", 0o644)]), jetpack_entries(), "absolute path"),
        ("dotdot", with_base(vec![E::File("./lib/ollama/../../../../evil", b"x", 0o644)]), jetpack_entries(), "`..` in the path"),
        ("outside the allow-list", with_base(vec![E::File("./etc/systemd/system/evil.service", b"x", 0o644)]), jetpack_entries(), "outside what this tarball may install"),
        ("symlink out", with_base(vec![E::Link("./lib/ollama/evil", "../../../../etc/passwd")]), jetpack_entries(), "points outside the install"),
        ("absolute symlink", with_base(vec![E::Link("./lib/ollama/evil", "/etc/shadow")]), jetpack_entries(), "absolute path"),
        ("write through a symlink", with_base(vec![E::Link("./lib/ollama/d", "libggml-base.so.0.0.0"), E::File("./lib/ollama/d/x", b"x", 0o644)]), jetpack_entries(), "through the symlink"),
        ("symlink then directory", with_base(vec![E::Link("./lib/ollama/sub", "."), E::Dir("./lib/ollama/sub/")]), jetpack_entries(), "a directory where"),
        ("hard link", with_base(vec![E::Hard("./lib/ollama/h", "/etc/shadow")]), jetpack_entries(), "a hard link"),
        ("fifo", with_base(vec![E::Fifo("./lib/ollama/f")]), jetpack_entries(), "a FIFO"),
        ("device", with_base(vec![E::Char("./lib/ollama/c")]), jetpack_entries(), "a device node"),
        ("setuid", with_base(vec![E::File("./lib/ollama/suid", b"x", 0o4755)]), jetpack_entries(), "setuid"),
        ("jetpack tarball writes bin", base_entries(&script), vec![E::File("./bin/ollama", b"evil", 0o755)], "outside what this tarball may install"),
        ("no JetPack libs", base_entries(&script), vec![E::Dir("./lib/ollama/cuda_jetpack6/")], "cuda_jetpack6"),
        ("no binary", vec![E::Dir("./lib/ollama/")], jetpack_entries(), "bin/ollama"),
        ("duplicate", with_base(vec![E::File("./bin/ollama", b"again", 0o755)]), jetpack_entries(), "appears twice"),
    ];
    for (i, (what, base, jp, want)) in cases.iter().enumerate() {
        let r = release(&rel.path().join(format!("bad{i}")), base, jp);
        let o = install(root.path(), &r, &[]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {out}");
        assert!(out.contains(want), "{what}: want {want:?} in {out}");
        assert!(!out.contains("panicked"), "{what}: {out}");
        assert_eq!(installed_tree(root.path()), tree, "{what}: the installed tree changed");
        let beside: Vec<_> = std::fs::read_dir(&outside).expect("ls").flatten().map(|e| e.file_name()).collect();
        assert_eq!(beside, vec![std::ffi::OsString::from("root")], "{what}: something was written beside the root");
        assert_eq!(snapshot(&outside).len(), outside_before, "{what}: files appeared in the root");
        assert!(!root.path().join("etc/cron.d/evil").exists() && !root.path().join("evil").exists(), "{what}");
        let stale: Vec<_> = std::fs::read_dir(root.path().join("usr/local/lib/jetson-llmd/ollama")).expect("ls").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with('.')).collect();
        assert!(stale.is_empty(), "{what}: staging left behind: {stale:?}");
    }

    // Bad checksum: a tarball that does not match sha256sum.txt.
    let r = good_release(&rel.path().join("sum"), "0.31.0");
    std::fs::write(&r.sums, format!("{}  ./ollama-linux-arm64.tar.zst\n{}  ./ollama-linux-arm64-jetpack6.tar.zst\n", "1".repeat(64), "2".repeat(64))).expect("w");
    let o = install(root.path(), &r, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("does not match") && text(&o).contains("sha256"), "{}", text(&o));
    assert_eq!(installed_tree(root.path()), tree);

    // Truncated and corrupt zstd whose (lying) checksums match: caught while unpacking.
    for (what, mangle) in [("truncated", 0usize), ("corrupt", 1)] {
        let r = good_release(&rel.path().join(what), "0.31.0");
        let mut b = std::fs::read(&r.base).expect("r");
        if mangle == 0 {
            b.truncate(b.len() / 2);
        } else {
            let n = b.len();
            for x in &mut b[n / 3..n / 2] {
                *x ^= 0x5a;
            }
        }
        std::fs::write(&r.base, &b).expect("w");
        std::fs::write(&r.sums, format!("{}  ./ollama-linux-arm64.tar.zst\n{}  ./ollama-linux-arm64-jetpack6.tar.zst\n", sha(&b), sha(&std::fs::read(&r.jetpack).expect("r")))).expect("w");
        let o = install(root.path(), &r, &[]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        assert!(text(&o).contains("corrupt or truncated") || text(&o).contains("does not contain"), "{what}: {}", text(&o));
        assert_eq!(installed_tree(root.path()), tree, "{what}");
    }

    // Not an archive at all.
    let r = good_release(&rel.path().join("html"), "0.31.0");
    std::fs::write(&r.base, b"<html>rate limited</html>").expect("w");
    std::fs::write(&r.sums, format!("{}  ./ollama-linux-arm64.tar.zst\n{}  ./ollama-linux-arm64-jetpack6.tar.zst\n", sha(b"<html>rate limited</html>"), sha(&std::fs::read(&r.jetpack).expect("r")))).expect("w");
    let o = install(root.path(), &r, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("neither zstd nor gzip"), "{}", text(&o));
    assert_eq!(installed_tree(root.path()), tree);
}

/// On a machine never installed to, a refused archive leaves the machine as it was: not even
/// the empty directories the unpack created (it used to say "nothing of it remains" and leave
/// usr/local/lib/jetson-llmd/ollama behind).
#[test]
fn a_refused_first_install_leaves_no_directory_behind() {
    let root = fixture_root();
    let before = snapshot(root.path());
    let rel = tempfile::tempdir().expect("tmp");
    let script = ollama_script("0.30.6");
    let mut base = base_entries(&script);
    base.push(E::File("/etc/cron.d/evil", b"x", 0o644));
    let r = release(&rel.path().join("bad"), &base, &jetpack_entries());
    let o = install(root.path(), &r, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("nothing of it remains"), "{}", text(&o));
    let after: BTreeMap<String, String> = snapshot(root.path()).into_iter().filter(|(k, _)| !k.starts_with("var/cache/jetson-llmd")).collect();
    assert_eq!(after, before, "only the verified download cache may stay (for a retry)");
}

/// A run killed mid-extraction leaves a staging directory; the next run removes it and finishes.
#[test]
fn a_rerun_after_a_kill_cleans_stale_staging_and_finishes() {
    let root = fixture_root();
    let rel = tempfile::tempdir().expect("tmp");
    let store = root.path().join("usr/local/lib/jetson-llmd/ollama");
    std::fs::create_dir_all(store.join(".staging-0.30.6-0123456789ab/lib/ollama")).expect("mkdir");
    std::fs::write(store.join(".staging-0.30.6-0123456789ab/lib/ollama/half.so"), b"half").expect("w");
    let r = good_release(rel.path(), "0.30.6");
    let o = install(root.path(), &r, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let left: Vec<_> = std::fs::read_dir(&store).expect("ls").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with('.')).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// An Ollama that install.sh put in /usr/local is adopted into the store (restorable), and a
/// new local release then becomes live.
#[test]
fn an_existing_ollama_is_adopted_not_destroyed() {
    let root = fixture_root();
    let p = root.path();
    std::fs::create_dir_all(p.join("usr/local/bin")).expect("mkdir");
    std::fs::create_dir_all(p.join("usr/local/lib/ollama/cuda_jetpack6")).expect("mkdir");
    std::fs::write(p.join("usr/local/bin/ollama"), b"old ollama").expect("w");
    std::fs::write(p.join("usr/local/lib/ollama/cuda_jetpack6/libold.so"), b"old").expect("w");
    let rel = tempfile::tempdir().expect("tmp");
    let r = good_release(rel.path(), "0.30.6");
    let o = install(p, &r, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("kept the Ollama that was in /usr/local as adopted-"), "{}", text(&o));
    let store = p.join("usr/local/lib/jetson-llmd/ollama");
    let adopted = std::fs::read_dir(&store).expect("ls").flatten().find(|e| e.file_name().to_string_lossy().starts_with("adopted-")).expect("adopted dir").path();
    assert_eq!(std::fs::read(adopted.join("bin/ollama")).expect("old bin"), b"old ollama");
    assert!(adopted.join("lib/ollama/cuda_jetpack6/libold.so").exists());
    assert_eq!(std::fs::read(p.join("usr/local/bin/ollama")).expect("bin"), ollama_script("0.30.6"));
}

/// A disk that fills up while unpacking: the message says so, the old install stays.
#[test]
fn disk_full_during_extraction_leaves_the_old_install() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let root = fixture_root();
    let p = root.path();
    let rel = tempfile::tempdir().expect("tmp");
    let good = good_release(&rel.path().join("good"), "0.30.6");
    let o = install(p, &good, &[]);
    assert!(o.status.success(), "{}", text(&o));
    // The store on a 16 MiB tmpfs; the new release unpacks to 64 MiB of zeros (tiny compressed,
    // so the free-space estimate lets it start).
    let store = p.join("usr/local/lib/jetson-llmd/ollama");
    let keep = tempfile::tempdir().expect("tmp");
    let status = Command::new("cp").arg("-a").arg(&store).arg(keep.path()).status().expect("cp");
    assert!(status.success());
    let m = Command::new("mount").args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"]).arg(&store).status().expect("mount");
    assert!(m.success(), "mount tmpfs");
    let _umount = Umount(store.clone());
    let status = Command::new("sh").arg("-c").arg(format!("cp -a {}/ollama/. {}/", keep.path().display(), store.display())).status().expect("cp");
    assert!(status.success());
    let tree = installed_tree(p);
    let zeros = vec![0u8; 64 << 20];
    let script = ollama_script("0.31.0");
    let mut base = base_entries(&script);
    base.push(E::File("./lib/ollama/libhuge.so", &zeros, 0o644));
    let r = release(&rel.path().join("huge"), &base, &jetpack_entries());
    let o = install(p, &r, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no space left"), "{}", text(&o));
    assert_eq!(installed_tree(p), tree);
    let left: Vec<_> = std::fs::read_dir(&store).expect("ls").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with('.')).collect();
    assert!(left.is_empty(), "{left:?}");
}

struct Umount(PathBuf);

impl Drop for Umount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A release mirror on 127.0.0.1 that honours `Range: bytes=N-`, counting what it sends.
async fn mirror(dir: PathBuf) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{HeaderMap, StatusCode};
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let app = axum::Router::new()
        .route(
            "/{tag}/{file}",
            axum::routing::get(|State((dir, sent)): State<(PathBuf, std::sync::Arc<std::sync::atomic::AtomicU64>)>, UrlPath((tag, file)): UrlPath<(String, String)>, headers: HeaderMap| async move {
                let Ok(body) = std::fs::read(dir.join(&tag).join(&file)) else { return (StatusCode::NOT_FOUND, HeaderMap::new(), Vec::new()) };
                let from = headers.get("range").and_then(|v| v.to_str().ok()).and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
                let mut h = HeaderMap::new();
                match from {
                    Some(n) if n < body.len() => {
                        h.insert("content-range", format!("bytes {n}-{}/{}", body.len() - 1, body.len()).parse().expect("header"));
                        sent.fetch_add((body.len() - n) as u64, std::sync::atomic::Ordering::SeqCst);
                        (StatusCode::PARTIAL_CONTENT, h, body[n..].to_vec())
                    }
                    Some(_) => (StatusCode::RANGE_NOT_SATISFIABLE, h, Vec::new()),
                    None => {
                        sent.fetch_add(body.len() as u64, std::sync::atomic::Ordering::SeqCst);
                        (StatusCode::OK, h, body)
                    }
                }
            }),
        )
        .with_state((dir, sent.clone()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_resume_a_partial_file_and_refuse_a_tampered_one() {
    let root = fixture_root();
    let rel = tempfile::tempdir().expect("tmp");
    let r = good_release(&rel.path().join("v0.30.6"), "0.30.6");
    let base = std::fs::read(&r.base).expect("r");
    let jp = std::fs::read(&r.jetpack).expect("r");
    // A download cut in the middle by an earlier run.
    let cache = root.path().join("var/cache/jetson-llmd");
    std::fs::create_dir_all(&cache).expect("mkdir");
    std::fs::write(cache.join(format!("{}.partial", sha(&base))), &base[..base.len() / 2]).expect("w");
    let (url, sent) = mirror(rel.path().to_path_buf()).await;
    let run = |version: &'static str| {
        let (root, url) = (root.path().to_path_buf(), url.clone());
        async move { tokio::process::Command::new(bin()).arg("--root").arg(&root).args(["install", "--no-systemd", "--force", "--version", version, "--mirror", &url]).output().await.expect("run") }
    };
    let o = run("0.30.6").await;
    assert!(o.status.success(), "{}", text(&o));
    let expected = (base.len() - base.len() / 2 + jp.len()) as u64 + std::fs::metadata(&r.sums).expect("m").len();
    assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), expected, "only the missing half of the base tarball was fetched");
    assert!(cache.join(format!("{}-ollama-linux-arm64.tar.zst", sha(&base))).is_file());
    assert!(root.path().join("usr/local/lib/ollama/cuda_jetpack6/libggml-cuda.so").exists());
    let tree = installed_tree(root.path());

    // A mirror serving a tampered base tarball: refused, the download deleted, nothing changed.
    // (The JetPack tarball is the same as 0.30.6's: it comes verified from the cache.)
    let bad = good_release(&rel.path().join("v0.31.0"), "0.31.0");
    std::fs::write(&bad.base, b"tampered").expect("w");
    let o = run("0.31.0").await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("does not match"), "{}", text(&o));
    assert_eq!(installed_tree(root.path()), tree);
    assert!(!std::fs::read_dir(&cache).expect("ls").flatten().any(|e| e.file_name().to_string_lossy().ends_with(".partial")), "the bad download is gone");

    // No such release: one clear line.
    let o = run("0.99.0").await;
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("404") && err.contains("sha256sum.txt"), "{err}");
}

/// Ctrl-C during a download that does not move (a mirror that accepts and never answers): the
/// install ends at once with one line, and the machine is as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_stuck_download_ends_at_once_and_changes_nothing() {
    let root = fixture_root();
    let before = snapshot(root.path());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = l.accept().await {
            conns.push(c);
        }
    });
    let child = tokio::process::Command::new(bin())
        .arg("--root")
        .arg(root.path())
        .args(["install", "--no-systemd", "--force", "--version", "0.30.6", "--mirror", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().expect("pid") as i32), nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let t = std::time::Instant::now();
    let o = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await.expect("ended within 10 s of Ctrl-C").expect("output");
    held.abort();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("interrupted by a signal") && !text(&o).contains("panicked"), "{}", text(&o));
    let after: BTreeMap<String, String> = snapshot(root.path()).into_iter().filter(|(k, _)| !k.starts_with("var/cache/jetson-llmd")).collect();
    assert_eq!(after, before);
}

/// After `apt install ./jetson-llmd_*.deb`: dpkg owns /usr/bin/jetson-llmd, the units in
/// /lib/systemd/system and the /etc conffiles (the bytes `dist-assets` makes). Install then
/// writes no binary and no unit, finds the conffiles unchanged and leaves them out of
/// install.json, so uninstall cannot delete what dpkg keeps.
#[test]
fn from_the_deb_install_leaves_the_packages_files_to_dpkg() {
    let root = fixture_root();
    let p = root.path();
    let assets = tempfile::tempdir().expect("tmp");
    let o = Command::new(bin()).args(["dist-assets", "--out"]).arg(assets.path()).output().expect("dist-assets");
    assert!(o.status.success(), "{}", text(&o));
    let copy = |from: &str, to: &str| {
        let to = p.join(to);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(assets.path().join(from), to).expect("copy");
    };
    for f in ["etc/jetson-llmd/config.toml", "etc/jetson-llmd/ollama.env", "etc/ollama/model.conf"] {
        copy(f, f);
    }
    for u in ["jetson-llmd.service", "ollama.service", "ollama-preload.service", "ollama-keepalive.service"] {
        copy(&format!("units/{u}"), &format!("lib/systemd/system/{u}"));
        assert!(std::fs::read_to_string(p.join("lib/systemd/system").join(u)).expect("unit").contains("ExecStart=/usr/"));
    }
    assert!(std::fs::read_to_string(p.join("lib/systemd/system/jetson-llmd.service")).expect("unit").contains("ExecStart=/usr/bin/jetson-llmd supervise"));
    std::fs::create_dir_all(p.join("var/lib/dpkg/info")).expect("mkdir");
    std::fs::write(p.join("var/lib/dpkg/info/jetson-llmd.list"), "/usr/bin/jetson-llmd\n").expect("list");
    let etc_before = snapshot(&p.join("etc/jetson-llmd"));

    let rel = tempfile::tempdir().expect("tmp");
    let r = good_release(rel.path(), "0.30.6");
    let o = install(p, &r, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("came from its .deb"), "{out}");
    assert!(!p.join("usr/local/bin/jetson-llmd").exists(), "no second copy of the binary");
    assert!(!p.join("etc/systemd/system/jetson-llmd.service").exists() && !p.join("etc/systemd/system/ollama.service").exists(), "no unit shadows the package's");
    assert_eq!(snapshot(&p.join("etc/jetson-llmd")), etc_before, "the conffiles are exactly what install would write");
    assert!(!p.join("etc/jetson-llmd/config.toml.new").exists());
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(p.join("var/lib/jetson-llmd/install.json")).expect("install.json")).expect("json");
    let files = state["files"].as_object().expect("files");
    assert!(files.keys().all(|k| !k.starts_with("/etc/jetson-llmd") && !k.starts_with("/etc/ollama") && !k.starts_with("/etc/systemd")), "{files:?}");
    // Ollama itself is install's, as without the package.
    assert!(p.join("usr/local/bin/ollama").exists());
    let o = Command::new(bin()).arg("--root").arg(p).args(["uninstall", "--no-systemd"]).output().expect("uninstall");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(snapshot(&p.join("etc/jetson-llmd")), etc_before, "uninstall leaves dpkg's conffiles");
    assert!(p.join("lib/systemd/system/jetson-llmd.service").exists());
}

/// A board from the seed's setup serves the LAN through a drop-in's OLLAMA_HOST=0.0.0.0:11434:
/// install puts the guard on that address (Ollama moves behind it), and the plan says where
/// clients connect before and after. Without one, the plan says so for loopback.
#[test]
fn install_keeps_a_lan_endpoint_reachable_through_the_guard() {
    let root = fixture_root();
    let rel = tempfile::tempdir().expect("tmp");
    let r = good_release(rel.path(), "0.30.6");
    let o = install(root.path(), &r, &["--dry-run"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("clients connect to 127.0.0.1:11434 as before"), "{}", text(&o));
    let dropin = root.path().join("etc/systemd/system/ollama.service.d/override.conf");
    std::fs::create_dir_all(dropin.parent().expect("parent")).expect("mkdir");
    std::fs::write(&dropin, "[Service]\nEnvironment=\"OLLAMA_HOST=0.0.0.0:11434\"\nEnvironment=\"OLLAMA_KEEP_ALIVE=-1\"\n").expect("w");
    let o = install(root.path(), &r, &["--dry-run"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("clients keep connecting to 0.0.0.0:11434") && out.contains("override.conf") && out.contains("127.0.0.1:11435"), "{out}");
    let o = install(root.path(), &r, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let cfg = std::fs::read_to_string(root.path().join("etc/jetson-llmd/config.toml")).expect("config");
    assert!(cfg.contains("[guard]\nenabled = true\nlisten = \"0.0.0.0:11434\"\n"), "{cfg}");
    let (code, out, _) = {
        let o = Command::new(bin()).arg("--root").arg(root.path()).args(["--json", "check"]).env_remove("OLLAMA_HOST").output().expect("check");
        (o.status.code(), String::from_utf8_lossy(&o.stdout).to_string(), ())
    };
    assert_eq!(code, Some(0), "the installed config is valid and does not clash with ollama.env's address: {out}");
    assert!(out.contains("\"listen\": \"0.0.0.0:11434\""), "{out}");
}

/// A config.toml of the user's without the guard, and no ollama.env yet: the new ollama.env
/// keeps Ollama on 127.0.0.1:11434 (moving it to 11435 would leave nothing on 11434).
#[test]
fn without_the_guard_a_new_ollama_env_keeps_ollama_on_its_port() {
    let root = fixture_root();
    let rel = tempfile::tempdir().expect("tmp");
    let r = good_release(rel.path(), "0.30.6");
    let cfg = root.path().join("etc/jetson-llmd/config.toml");
    std::fs::create_dir_all(cfg.parent().expect("p")).expect("mkdir");
    std::fs::write(&cfg, "keepalive_interval = \"2m\"\n").expect("w");
    let o = install(root.path(), &r, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ollama.env keeps Ollama on 127.0.0.1:11434"), "{}", text(&o));
    let env = std::fs::read_to_string(root.path().join("etc/jetson-llmd/ollama.env")).expect("env");
    assert!(env.contains("OLLAMA_HOST=127.0.0.1:11434\n") && !env.contains("11435\n"), "{env}");
    assert_eq!(std::fs::read_to_string(&cfg).expect("cfg"), "keepalive_interval = \"2m\"\n", "the user's config.toml is kept");
}
