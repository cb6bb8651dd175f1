//! The one container harness of the tier-2 tests: a copy of the prepared Debian rootfs
//! (scripts/container-rootfs) booted with systemd as PID 1 under systemd-nspawn, its system bus
//! reachable from the host through a bound directory. Used by systemd_container.rs and
//! install_container.rs (and by scripts/test-deb through `boot` and `wait` in the same words).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace")
}

/// The prepared rootfs (JETSON_LLMD_ROOTFS, or target/systemd-rootfs/bookworm).
pub fn base_rootfs() -> PathBuf {
    let p = std::env::var_os("JETSON_LLMD_ROOTFS").map(PathBuf::from).unwrap_or_else(|| workspace().join("target/systemd-rootfs/bookworm"));
    assert!(p.join(".jetson-llmd-ready").exists(), "{} is not prepared: run scripts/container-rootfs", p.display());
    p
}

/// A fresh copy of the prepared rootfs at target/systemd-rootfs/<name> (reflinked when it can).
pub fn fresh_copy(name: &str) -> PathBuf {
    let base = base_rootfs();
    let root = workspace().join("target/systemd-rootfs").join(name);
    let _ = Command::new("rm").arg("-rf").arg(&root).status();
    std::fs::create_dir_all(root.parent().expect("parent")).expect("mkdir");
    let ok = Command::new("cp").arg("-a").arg("--reflink=auto").arg(&base).arg(&root).status().expect("cp");
    assert!(ok.success(), "cp -a {} {}", base.display(), root.display());
    root
}

fn sh(cmd: &str) {
    let s = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(s.success(), "{cmd}");
}

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// A fresh copy (see [`fresh_copy`]) as a board before `jetson-llmd install`: no ollama user,
/// no render group, nothing earlier tests installed; a JetPack 6 nv_tegra_release.
pub fn clean_copy(name: &str) -> PathBuf {
    let root = fresh_copy(name);
    let r = root.display();
    sh(&format!("userdel --root {r} ollama 2>/dev/null || true; groupdel --root {r} render 2>/dev/null || true"));
    sh(&format!(
        "cd {r} && rm -rf usr/share/ollama usr/local/bin/* usr/local/lib/ollama usr/local/lib/jetson-llmd etc/jetson-llmd etc/ollama var/lib/jetson-llmd var/cache/jetson-llmd \
         etc/systemd/system/jetson-llmd.service* etc/systemd/system/ollama* etc/systemd/system/multi-user.target.wants/jetson-llmd.service \
         etc/systemd/system/reboot.target etc/systemd/system/llmd-test-reboot.service"
    ));
    write(&root.join("etc/nv_tegra_release"), "# R36 (release), REVISION: 4.7, GCID: 42132812, BOARD: generic, EABI: aarch64, DATE: Thu Sep 18 22:54:44 UTC 2025\n");
    root
}

/// A booted container; shut down (SIGTERM, then SIGKILL after 10 s) when dropped.
pub struct Nspawn {
    child: Child,
    bus: tempfile::TempDir,
}

impl Nspawn {
    /// Boots `root` as machine `name`; its console goes to target/<log>. Returns at once: see
    /// [`Nspawn::wait_for_systemd`].
    pub fn boot(root: &Path, name: &str, log: &str) -> Nspawn {
        use std::os::unix::process::CommandExt;
        let bus = tempfile::tempdir().expect("tmp");
        let log = std::fs::File::create(workspace().join("target").join(log)).expect("log");
        let child = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(root)
            .args(["-b", "--register=no", "--keep-unit", "--console=read-only", "-M", name])
            .arg(format!("--bind={}:/run/dbus", bus.path().display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("systemd-nspawn");
        Nspawn { child, bus }
    }

    pub fn bus_dir(&self) -> &Path {
        self.bus.path()
    }

    /// DBUS_SYSTEM_BUS_ADDRESS of the container.
    pub fn address(&self) -> String {
        format!("unix:path={}/system_bus_socket", self.bus.path().display())
    }

    /// Blocks until systemd in the container answers "running" or "degraded" on its bus.
    pub fn wait_for_systemd(&self, within: Duration) {
        let t = Instant::now();
        loop {
            let o = Command::new("busctl").args(["get-property", "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "SystemState"]).env("DBUS_SYSTEM_BUS_ADDRESS", self.address()).output();
            if o.as_ref().is_ok_and(|o| {
                let s = String::from_utf8_lossy(&o.stdout);
                s.contains("running") || s.contains("degraded")
            }) {
                return;
            }
            assert!(t.elapsed() < within, "systemd in the container did not come up within {within:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the container to end by itself (after a power-off), then kills it.
    pub fn wait_exit(&mut self, within: Duration) {
        let t = Instant::now();
        while self.child.try_wait().expect("wait").is_none() {
            if t.elapsed() > within {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Nspawn {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SIGTERM asks nspawn for a clean shutdown of the container.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let t = Instant::now();
            while self.child.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
        }
    }
}
