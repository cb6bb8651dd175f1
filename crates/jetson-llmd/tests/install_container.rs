//! `jetson-llmd install` and `upgrade` against real systemd: a copy of the container rootfs with
//! no ollama user and no render group, Debian's systemd as its PID 1, jetson-llmd run from the
//! host with `--root` and the container's system bus. The "releases" are tarballs in Ollama's
//! layout with fake-ollama as bin/ollama; knobs in lib/ollama/fake-ollama.env make a release
//! report another version, fall back to the CPU, or generate slower. Needs root and
//! `scripts/container-rootfs`; `scripts/test` runs it with `--ignored`.

mod common;

use common::container::{clean_copy, write, Nspawn};
use common::{fake_release, Release};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_jetson-llmd"))
}

/// A fresh copy of the prepared rootfs, stripped of the ollama user and the render group.
fn rootfs() -> PathBuf {
    let root = clean_copy("install-test");
    assert!(!std::fs::read_to_string(root.join("etc/group")).expect("group").contains("render:"));
    root
}

fn boot(root: &Path) -> Nspawn {
    let n = Nspawn::boot(root, "llmdinstall", "nspawn-install.log");
    n.wait_for_systemd(Duration::from_secs(60));
    n
}

struct Host<'a> {
    root: &'a Path,
    bus: String,
    port: u16,
}

impl Host<'_> {
    fn run(&self, args: &[&str], r: Option<&Release>) -> (Output, Duration) {
        let mut c = Command::new(bin());
        c.arg("--root").arg(self.root).args(args);
        if let Some(r) = r {
            c.arg("--tarball").arg(&r.base).arg("--jetpack-tarball").arg(&r.jetpack).arg("--sha256sums").arg(&r.sums);
        }
        c.env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus).env("OLLAMA_HOST", format!("127.0.0.1:{}", self.port));
        let t = Instant::now();
        let o = c.output().expect("run jetson-llmd");
        (o, t.elapsed())
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        let r = reqwest::get(format!("http://127.0.0.1:{}{path}", self.port)).await;
        match r {
            Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        }
    }

    async fn warm(&self, model: &str) -> bool {
        self.get("/api/ps").await["models"].as_array().is_some_and(|m| m.iter().any(|m| m["name"] == model && m["size_vram"] == m["size"]))
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, systemd-nspawn and scripts/container-rootfs (run by scripts/test)"]
async fn install_upgrade_canary_and_rollback_under_real_systemd() {
    let root = rootfs();
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("b").local_addr().expect("a").port();
    // Clients use the guard's port; Ollama listens on its own (private) one behind it.
    let gport = std::net::TcpListener::bind("127.0.0.1:0").expect("b").local_addr().expect("a").port();
    // The user's own settings, there before install: kept (install writes *.new beside them).
    write(&root.join("etc/jetson-llmd/ollama.env"), &format!("OLLAMA_KEEP_ALIVE=-1\nOLLAMA_MAX_LOADED_MODELS=1\nOLLAMA_HOST=127.0.0.1:{port}\nFAKE_OLLAMA_TIME_SCALE=0.02\n"));
    write(
        &root.join("etc/jetson-llmd/config.toml"),
        &format!("keepalive_interval = \"10s\"\nstate_dir = \"/var/lib/jetson-llmd\"\ngpu_discovery_timeout = \"10s\"\nretry_max_backoff = \"3s\"\nstartup_timeout = \"20s\"\n[guard]\nenabled = true\nlisten = \"127.0.0.1:{gport}\"\n"),
    );
    std::fs::create_dir_all(root.join("var/lib/jetson-llmd")).expect("mkdir");
    write(&root.join("etc/systemd/system/jetson-llmd.service.d/50-test.conf"), "[Service]\nReadWritePaths=/var/lib/jetson-llmd\n");
    write(&root.join("etc/systemd/system/ollama-keepalive.service.d/50-test.conf"), "[Service]\nReadWritePaths=/var/lib/jetson-llmd\n");
    let rel = tempfile::tempdir().expect("tmp");
    let v0 = fake_release(&rel.path().join("v0"), "FAKE_OLLAMA_VERSION=0.30.6\n");
    let v1 = fake_release(&rel.path().join("v1"), "FAKE_OLLAMA_VERSION=0.31.0\n");
    let cpu = fake_release(&rel.path().join("cpu"), "FAKE_OLLAMA_VERSION=0.32.0\nFAKE_OLLAMA_NO_GPU=cuda-init\n");
    let slow = fake_release(&rel.path().join("slow"), "FAKE_OLLAMA_VERSION=0.32.1\nFAKE_OLLAMA_SPEED=0.3\n");

    let booted = boot(&root);
    let h = Host { root: &root, bus: booted.address(), port };

    // 1. Install: the ollama user is created in the groups that exist, the units go in, the
    // supervisor starts and the model gets warm.
    let (o, t_install) = h.run(&["install", "--force", "--version", "0.30.6", "--model", "gemma4:e2b-8k", "--wait", "3m"], Some(&v0));
    assert!(o.status.success(), "install: {}", text(&o));
    let out = text(&o);
    assert!(out.contains("created system user ollama") && out.contains("added ollama to group video"), "{out}");
    assert!(out.contains("kept your /etc/jetson-llmd/ollama.env"), "{out}");
    assert!(out.contains("ready: gemma4:e2b-8k warm on the GPU"), "{out}");
    assert!(h.warm("gemma4:e2b-8k").await);
    assert_eq!(h.get("/api/version").await["version"], "0.30.6");
    assert!(std::fs::symlink_metadata(root.join("etc/systemd/system/multi-user.target.wants/jetson-llmd.service")).is_ok(), "enabled");
    // The guard, inside jetson-llmd.service: clients on its port reach Ollama only through it.
    let via = Host { root: &root, bus: h.bus.clone(), port: gport };
    assert_eq!(via.get("/api/version").await["version"], "0.30.6");
    let r = reqwest::Client::new().post(format!("http://127.0.0.1:{gport}/api/generate")).json(&serde_json::json!({"model": "llama3.2:3b", "prompt": "hi"})).send().await.expect("guard");
    assert_eq!(r.status(), 409, "another model is refused at the door");
    assert!(h.warm("gemma4:e2b-8k").await);

    // 2. Again: nothing to do; still warm, nothing restarted.
    let pid = std::fs::read_to_string(root.join("var/lib/jetson-llmd/state.json")).expect("state");
    let (o, t_noop) = h.run(&["install", "--force", "--version", "0.30.6"], Some(&v0));
    assert!(o.status.success() && text(&o).contains("nothing to do"), "{}", text(&o));
    assert!(h.warm("gemma4:e2b-8k").await);
    let after: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("var/lib/jetson-llmd/state.json")).expect("state")).expect("json");
    let before: serde_json::Value = serde_json::from_str(&pid).expect("json");
    assert_eq!(after["pid"], before["pid"], "the supervisor was not restarted");

    // 3. Upgrade to a good release: the canary passes, the new version stays.
    let (o, t_upgrade) = h.run(&["upgrade", "--force", "--version", "0.31.0", "--timeout", "3m"], Some(&v1));
    assert!(o.status.success(), "upgrade: {}", text(&o));
    assert!(text(&o).contains("passed the canary"), "{}", text(&o));
    assert_eq!(h.get("/api/version").await["version"], "0.31.0");
    assert!(h.warm("gemma4:e2b-8k").await);

    // 4. A release that falls back to the CPU: refused, switched back, warm again.
    let (o, _) = h.run(&["upgrade", "--force", "--version", "0.32.0", "--timeout", "3m"], Some(&cpu));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("0.32.0 failed the canary") && out.contains("no CUDA GPU"), "{out}");
    assert!(out.contains("0.31.0 is live and warm again"), "{out}");
    assert_eq!(h.get("/api/version").await["version"], "0.31.0");
    assert!(h.warm("gemma4:e2b-8k").await);

    // 5. A release that is slower than the last good figure: refused too.
    let (o, _) = h.run(&["upgrade", "--force", "--version", "0.32.1", "--timeout", "3m"], Some(&slow));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("below 80% of the last good"), "{}", text(&o));
    assert_eq!(h.get("/api/version").await["version"], "0.31.0");

    // 6. By hand: back to the version before.
    let (o, _) = h.run(&["upgrade", "--rollback", "--force", "--timeout", "3m"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(h.get("/api/version").await["version"], "0.30.6");
    assert!(h.warm("gemma4:e2b-8k").await);

    println!("install wall times in the container: install {:.1} s (includes warm-up), no-op re-install {:.1} s, upgrade with canary {:.1} s", t_install.as_secs_f64(), t_noop.as_secs_f64(), t_upgrade.as_secs_f64());
    drop(booted);
}
