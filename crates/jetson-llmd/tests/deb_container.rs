//! The arm64 .deb: its control data and contents (dpkg-deb -I/-c), then installed and purged
//! with dpkg in a copy of the tier-2 Debian rootfs, booted with the same harness as the other
//! container tiers (common/container.rs):
//!   1. as an image build does: dpkg in a chroot, no systemd running -> nothing may be started
//!      or enabled, the files land where `jetson-llmd install` expects them;
//!   2. with Debian's systemd as PID 1, driven over D-Bus: systemd sees the package's units
//!      (loaded, not enabled), a reinstall (upgrade path) succeeds, and a purge removes the
//!      units, the conffiles, the enablement install made and install's state.
//!
//! The rootfs is x86_64, so dpkg runs with --force-architecture: the binary itself is not run
//! here (tier 3 runs the aarch64 build under qemu-user). Run by scripts/test-deb DEB
//! (JETSON_LLMD_DEB).

mod common;

use common::container::{fresh_copy, Nspawn};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{cmd:?}: {text}");
    text
}

fn gone(root: &Path, p: &str) -> bool {
    std::fs::symlink_metadata(root.join(p)).is_err()
}

/// A unit property as systemd in the container says it.
fn unit_prop(n: &Nspawn, unit: &str, prop: &str) -> String {
    let bus = |args: &[&str]| run(Command::new("busctl").args(args).env("DBUS_SYSTEM_BUS_ADDRESS", n.address()));
    let path = bus(&["call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "LoadUnit", "s", unit]);
    let path = path.split_whitespace().nth(1).expect("object path").trim_matches('"').to_string();
    let v = bus(&["get-property", "org.freedesktop.systemd1", &path, "org.freedesktop.systemd1.Unit", prop]);
    v.split_whitespace().nth(1).unwrap_or_default().trim_matches('"').to_string()
}

/// A shell command inside the container, as a transient service; its output and status land
/// in /root.
fn inside(n: &Nspawn, root: &Path, name: &str, cmd: &str) {
    let rc = root.join(format!("root/{name}.rc"));
    let _ = std::fs::remove_file(&rc);
    let script = format!("{cmd} >/root/{name}.log 2>&1; echo $? >/root/{name}.rc");
    let unit = format!("deb-{name}.service");
    run(Command::new("busctl")
        .args(["--", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))", &unit, "fail", "2", "Type", "s", "oneshot"])
        .args(["ExecStart", "a(sasb)", "1", "/bin/sh", "3", "/bin/sh", "-c", &script, "false", "0"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", n.address()));
    let t = Instant::now();
    while std::fs::read_to_string(&rc).map_or(true, |s| s.trim().is_empty()) {
        assert!(t.elapsed() < Duration::from_secs(60), "{cmd}: no result");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(root.join(format!("root/{name}.log"))).unwrap_or_default();
    assert_eq!(std::fs::read_to_string(&rc).expect("rc").trim(), "0", "{cmd}: {log}");
}

#[test]
#[ignore = "needs root, dpkg, systemd-nspawn, scripts/container-rootfs and a built .deb: run by scripts/test-deb"]
fn the_deb_installs_and_purges_under_dpkg_and_real_systemd() {
    let deb = PathBuf::from(std::env::var_os("JETSON_LLMD_DEB").expect("JETSON_LLMD_DEB: the .deb to check (scripts/test-deb DEB)"));
    let deb = deb.canonicalize().expect("the .deb exists");

    // The package itself.
    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for want in ["Package: jetson-llmd", "Architecture: arm64", "Depends: dbus, systemd"] {
        assert!(info.contains(want), "control lacks {want:?}: {info}");
    }
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let contents: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().nth(5)).collect();
    for f in [
        "./usr/bin/jetson-llmd",
        "./lib/systemd/system/jetson-llmd.service",
        "./lib/systemd/system/ollama-preload.service",
        "./lib/systemd/system/ollama-keepalive.service",
        "./lib/systemd/system/ollama.service",
        "./lib/systemd/system/ollama.service.d/50-jetson-llmd.conf",
        "./etc/jetson-llmd/config.toml",
        "./etc/jetson-llmd/ollama.env",
        "./etc/ollama/model.conf",
        "./usr/share/man/man1/jetson-llmd.1.gz",
        "./usr/share/man/man1/jetson-llmd-install.1.gz",
        "./usr/share/bash-completion/completions/jetson-llmd",
        "./usr/share/zsh/vendor-completions/_jetson-llmd",
        "./usr/share/fish/vendor_completions.d/jetson-llmd.fish",
        "./usr/share/doc/jetson-llmd/copyright",
        "./usr/share/doc/jetson-llmd/examples/prometheus/jetson-llmd.yml",
        "./usr/share/doc/jetson-llmd/examples/prometheus/jetson-llmd-rules.yml",
        "./usr/share/doc/jetson-llmd/examples/grafana/jetson-llmd-dashboard.json",
    ] {
        assert!(contents.contains(&f), "the .deb lacks {f}");
    }
    assert!(!contents.iter().any(|f| f.starts_with("./usr/local")), "the .deb puts files in /usr/local");
    let ctl = tempfile::tempdir().expect("tmp");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(ctl.path()));
    let mut conffiles: Vec<String> = std::fs::read_to_string(ctl.path().join("conffiles")).expect("conffiles").lines().map(String::from).collect();
    conffiles.sort();
    assert_eq!(conffiles, ["/etc/jetson-llmd/config.toml", "/etc/jetson-llmd/ollama.env", "/etc/ollama/model.conf"]);
    let unit = run(Command::new("sh").arg("-c").arg(format!("dpkg-deb --fsys-tarfile '{}' | tar -xO ./lib/systemd/system/jetson-llmd.service", deb.display())));
    assert!(unit.lines().any(|l| l == "ExecStart=/usr/bin/jetson-llmd supervise"), "jetson-llmd.service does not run /usr/bin/jetson-llmd: {unit}");

    // 1. An image build: dpkg in a chroot, no systemd.
    let root = fresh_copy("deb-test");
    for p in ["etc/jetson-llmd", "etc/ollama", "var/lib/jetson-llmd", "etc/systemd/system/jetson-llmd.service", "etc/systemd/system/multi-user.target.wants/jetson-llmd.service"] {
        let _ = Command::new("rm").arg("-rf").arg(root.join(p)).status();
    }
    run(Command::new("sh").arg("-c").arg(format!("rm -rf {}/etc/systemd/system/ollama*", root.display())));
    std::fs::copy(&deb, root.join("root/jetson-llmd.deb")).expect("copy the .deb");
    assert!(gone(&root, "run/systemd/system"), "the rootfs has /run/systemd/system on disk");
    let out = run(Command::new("chroot").arg(&root).args(["dpkg", "--force-architecture", "-i", "/root/jetson-llmd.deb"]));
    assert!(out.contains("sudo jetson-llmd install"), "no next step printed: {out}");
    assert!(root.join("usr/bin/jetson-llmd").is_file() && root.join("lib/systemd/system/jetson-llmd.service").is_file(), "files missing after dpkg -i");
    assert!(gone(&root, "etc/systemd/system/multi-user.target.wants/jetson-llmd.service"), "the package enabled jetson-llmd.service");
    assert!(root.join("var/lib/dpkg/info/jetson-llmd.list").is_file(), "dpkg's list file (install's sign of the package) is missing");

    // 2. Real systemd as PID 1.
    let n = Nspawn::boot(&root, "llmddeb", "nspawn-deb.log");
    n.wait_for_systemd(Duration::from_secs(60));
    assert_eq!(unit_prop(&n, "jetson-llmd.service", "LoadState"), "loaded");
    assert_eq!(unit_prop(&n, "jetson-llmd.service", "UnitFileState"), "disabled");
    assert_eq!(unit_prop(&n, "jetson-llmd.service", "ActiveState"), "inactive", "jetson-llmd.service was started");
    // The upgrade path (postinst configure with the old version: daemon-reload, try-restart).
    inside(&n, &root, "reinstall", "dpkg --force-architecture -i /root/jetson-llmd.deb");
    // What `jetson-llmd install` leaves behind: the enablement and its state.
    std::fs::create_dir_all(root.join("etc/systemd/system/multi-user.target.wants")).expect("mkdir");
    std::fs::create_dir_all(root.join("var/lib/jetson-llmd")).expect("mkdir");
    let _ = std::fs::remove_file(root.join("etc/systemd/system/multi-user.target.wants/jetson-llmd.service"));
    std::os::unix::fs::symlink("/lib/systemd/system/jetson-llmd.service", root.join("etc/systemd/system/multi-user.target.wants/jetson-llmd.service")).expect("ln");
    std::fs::write(root.join("var/lib/jetson-llmd/install.json"), "{}").expect("w");
    inside(&n, &root, "purge", "dpkg --purge jetson-llmd");
    for f in ["usr/bin/jetson-llmd", "lib/systemd/system/jetson-llmd.service", "etc/jetson-llmd/config.toml", "etc/ollama/model.conf", "var/lib/jetson-llmd", "etc/systemd/system/multi-user.target.wants/jetson-llmd.service"] {
        assert!(gone(&root, f), "/{f} is still there after purge");
    }
    assert_eq!(unit_prop(&n, "jetson-llmd.service", "LoadState"), "not-found", "systemd still knows jetson-llmd.service after purge");
}
