//! deploy/ansible/playbook.yml for real (issue 21): ansible-playbook on this machine reaches a
//! board over SSH, as it would a Jetson on the LAN. The board is a copy of the tier-2 Debian
//! rootfs with Debian's systemd as PID 1 (systemd-nspawn), its sshd on a port of its own, no
//! ollama user yet. The playbook copies the shipped arm64 .deb, installs it with apt (arm64 is a
//! foreign architecture there; the binary runs under qemu-user through binfmt_misc), runs
//! `jetson-llmd install` with offline release tarballs whose bin/ollama is fake-ollama, and waits
//! for /healthz. Then: a second run changes nothing; a third with another model in the inventory
//! switches the board, and only that task changes.
//!
//! Needs root, systemd-nspawn, scripts/container-rootfs, qemu-aarch64-static, a built .deb
//! (JETSON_LLMD_DEB) and ansible-playbook (ANSIBLE_PLAYBOOK; scripts/check-deploy installs it).
//! Run by scripts/test after the release tier.

mod common;

use common::container::{clean_copy, workspace, write, Nspawn};
use common::fake_release;
use common::procs::free_port;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const QEMU: &str = "/usr/bin/qemu-aarch64-static";
const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

/// aarch64 ELF binaries run under qemu-user, in the container too: the F flag opens the
/// interpreter now, so the container needs no qemu of its own. Unregistered on drop when this
/// test registered it (a machine that had it keeps it).
struct Binfmt {
    ours: bool,
}

impl Binfmt {
    fn aarch64() -> Binfmt {
        if !Path::new(BINFMT).join("register").exists() {
            let ok = Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc", BINFMT]).status().expect("mount");
            assert!(ok.success(), "cannot mount binfmt_misc on {BINFMT}");
        }
        let entry = Path::new(BINFMT).join("qemu-aarch64");
        if entry.exists() {
            return Binfmt { ours: false };
        }
        assert!(Path::new(QEMU).exists(), "{QEMU} is missing: apt-get install qemu-user-static");
        // The ELF header of an aarch64 executable (e_machine 0xb7) and its mask, as Debian's
        // qemu-user-static registers it.
        let magic = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00";
        let mask = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";
        std::fs::write(Path::new(BINFMT).join("register"), format!(":qemu-aarch64:M::{magic}:{mask}:{QEMU}:F")).expect("register qemu-aarch64 in binfmt_misc");
        Binfmt { ours: true }
    }
}

impl Drop for Binfmt {
    fn drop(&mut self) {
        if self.ours {
            let _ = std::fs::write(Path::new(BINFMT).join("qemu-aarch64"), "-1");
        }
    }
}

/// One ansible-playbook run against the board; its output is kept in target/<log>.
fn play(inventory: &Path, extra: &[String], log: &str) -> (bool, String) {
    let bin = std::env::var_os("ANSIBLE_PLAYBOOK").map(PathBuf::from).expect("ANSIBLE_PLAYBOOK: the ansible-playbook to run (scripts/check-deploy installs one)");
    let dir = workspace().join("deploy/ansible");
    let mut c = Command::new(&bin);
    c.current_dir(&dir).arg("-i").arg(inventory).arg("playbook.yml");
    for e in extra {
        c.arg("-e").arg(e);
    }
    // ansible-playbook's own directory first: it runs ansible-* helpers from PATH.
    let path = format!("{}:{}", bin.parent().expect("dir").display(), std::env::var("PATH").unwrap_or_default());
    c.env("PATH", path).env("ANSIBLE_FORCE_COLOR", "0").env("ANSIBLE_NOCOLOR", "1").env("ANSIBLE_LOCAL_TEMP", workspace().join("target/ansible-tmp"));
    let o = c.output().expect("run ansible-playbook");
    let out = text(&o);
    std::fs::write(workspace().join("target").join(log), &out).expect("log");
    (o.status.success(), out)
}

/// The PLAY RECAP numbers for the host: (ok, changed, failed).
fn recap(out: &str, host: &str) -> (u32, u32, u32) {
    let line = out.lines().skip_while(|l| !l.starts_with("PLAY RECAP")).find(|l| l.starts_with(host)).unwrap_or_else(|| panic!("no recap for {host}: {out}"));
    let n = |k: &str| -> u32 { line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{k}="))).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{k}= in {line}")) };
    (n("ok"), n("changed"), n("failed"))
}

/// Tasks the run reported as changed, by name.
fn changed_tasks(out: &str) -> Vec<String> {
    let mut task = String::new();
    let mut v = Vec::new();
    for l in out.lines() {
        if let Some(t) = l.strip_prefix("TASK [") {
            // "jetson_llmd : Copy the package" (the role's tasks are named with the role).
            let t = t.split(']').next().unwrap_or_default();
            task = t.strip_prefix("jetson_llmd : ").unwrap_or(t).to_string();
        } else if l.starts_with("changed:") {
            v.push(task.clone());
        }
    }
    v
}

async fn get(port: u16, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

async fn warm_models(ollama: u16) -> Vec<String> {
    let (_, body) = get(ollama, "/api/ps").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["models"].as_array().map(|m| m.iter().filter(|m| m["size_vram"] == m["size"]).filter_map(|m| m["name"].as_str().map(String::from)).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, systemd-nspawn, qemu-user-static, a built .deb (JETSON_LLMD_DEB) and ansible-playbook (ANSIBLE_PLAYBOOK): run by scripts/test"]
async fn the_playbook_installs_a_board_over_ssh_and_switches_it() {
    let deb = PathBuf::from(std::env::var_os("JETSON_LLMD_DEB").expect("JETSON_LLMD_DEB: the arm64 .deb scripts/release built")).canonicalize().expect("the .deb exists");
    let _binfmt = Binfmt::aarch64();
    let root = clean_copy("ansible-test");
    let (ssh, ollama, guard) = (free_port(), free_port(), free_port());

    // The board's sshd: its own port on loopback (the container shares this machine's network),
    // keys only. The control machine's key and the board's host key, both checked.
    let keys = tempfile::tempdir().expect("tmp");
    let key = keys.path().join("id_ed25519");
    let o = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().expect("ssh-keygen");
    assert!(o.status.success(), "ssh-keygen: {}", text(&o));
    write(&root.join("root/.ssh/authorized_keys"), &std::fs::read_to_string(key.with_extension("pub")).expect("pub"));
    write(&root.join("etc/ssh/sshd_config.d/50-test.conf"), &format!("Port {ssh}\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"));
    let host_key = std::fs::read_to_string(root.join("etc/ssh/ssh_host_ed25519_key.pub")).expect("host key");
    let known = keys.path().join("known_hosts");
    std::fs::write(&known, format!("[127.0.0.1]:{ssh} {}", host_key.split_whitespace().take(2).collect::<Vec<_>>().join(" "))).expect("known_hosts");

    // What the operator templated before the play (install keeps it): the ports, the guard on,
    // the emulator's clock sped up.
    write(&root.join("etc/jetson-llmd/ollama.env"), &format!("OLLAMA_KEEP_ALIVE=-1\nOLLAMA_MAX_LOADED_MODELS=1\nOLLAMA_HOST=127.0.0.1:{ollama}\nFAKE_OLLAMA_TIME_SCALE=0.02\n"));
    write(
        &root.join("etc/jetson-llmd/config.toml"),
        &format!("keepalive_interval = \"10s\"\nstate_dir = \"/var/lib/jetson-llmd\"\ngpu_discovery_timeout = \"20s\"\nretry_max_backoff = \"3s\"\nstartup_timeout = \"60s\"\n[guard]\nenabled = true\nlisten = \"127.0.0.1:{guard}\"\n"),
    );
    // state.json where this test reads it (the default is /run, the container's own tmpfs).
    // qemu-user translates the arm64 binary with a JIT, which needs writable and executable
    // pages: MemoryDenyWriteExecute is lifted here only (a Jetson runs the binary natively).
    std::fs::create_dir_all(root.join("var/lib/jetson-llmd")).expect("mkdir");
    for unit in ["jetson-llmd.service", "ollama-keepalive.service", "ollama-preload.service"] {
        write(&root.join(format!("etc/systemd/system/{unit}.d/50-test.conf")), "[Service]\nReadWritePaths=/var/lib/jetson-llmd\nMemoryDenyWriteExecute=no\n");
    }
    // The offline release on the board, as `--tarball` takes it (a board without internet).
    let rel = fake_release(&root.join("srv/ollama"), "FAKE_OLLAMA_VERSION=0.30.6\n");
    let on_board = |p: &Path| Path::new("/").join(p.strip_prefix(&root).expect("inside the rootfs")).display().to_string();
    let install_args = format!("--force --version 0.30.6 --tarball {} --jetpack-tarball {} --sha256sums {}", on_board(&rel.base), on_board(&rel.jetpack), on_board(&rel.sums));

    let n = Nspawn::boot(&root, "llmdansible", "nspawn-ansible.log");
    n.wait_for_systemd(Duration::from_secs(60));
    let o = Command::new("busctl")
        .args(["call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "StartUnit", "ss", "ssh.service", "replace"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", n.address())
        .output()
        .expect("busctl");
    assert!(o.status.success(), "start ssh.service: {}", text(&o));
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", ssh)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "the board's sshd did not listen on {ssh}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let inventory = |model: &str| {
        let p = keys.path().join("inventory.ini");
        std::fs::write(
            &p,
            format!(
                "[jetson_boards]\nboard1 ansible_host=127.0.0.1 ansible_port={ssh} jetson_llmd_model={model}\n\n[jetson_boards:vars]\nansible_user=root\n\
                 ansible_ssh_private_key_file={}\nansible_ssh_common_args='-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes'\nansible_python_interpreter=/usr/bin/python3\n",
                key.display(),
                known.display()
            ),
        )
        .expect("inventory");
        p
    };
    let extra = vec![serde_json::json!({
        "jetson_llmd_deb": deb,
        "jetson_llmd_install_args": install_args,
        "jetson_llmd_guard": format!("http://127.0.0.1:{guard}"),
        "jetson_llmd_warm_timeout": 300,
    })
    .to_string()];

    // 1. A new board: every task does its work and the model ends warm, behind the guard.
    let (ok, out) = play(&inventory("gemma4:e2b-8k"), &extra, "ansible-run1.log");
    assert!(ok, "first run: {out}");
    let (_, changed, failed) = recap(&out, "board1");
    assert_eq!(failed, 0, "{out}");
    let ch = changed_tasks(&out);
    for t in ["Copy the package", "Install the package", "Install Ollama, the units and the model"] {
        assert!(ch.iter().any(|c| c == t), "{t:?} should have changed: {ch:?}\n{out}");
    }
    assert!(!ch.iter().any(|c| c.starts_with("Keep the host's model")), "install named the model: no switch: {ch:?}");
    assert_eq!(changed as usize, ch.len());
    assert_eq!(warm_models(ollama).await, vec!["gemma4:e2b-8k".to_string()]);
    let (code, body) = get(guard, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).expect("dpkg status");
    let pkg = status.split("\n\n").find(|p| p.starts_with("Package: jetson-llmd\n")).expect("jetson-llmd in dpkg's status");
    assert!(pkg.contains("Status: install ok installed") && pkg.contains("Architecture: arm64"), "{pkg}");
    let pid = std::fs::read_to_string(root.join("var/lib/jetson-llmd/state.json")).expect("state");
    let pid = serde_json::from_str::<serde_json::Value>(&pid).expect("json")["pid"].clone();

    // 2. Again: nothing changes, nothing is restarted.
    let (ok, out) = play(&inventory("gemma4:e2b-8k"), &extra, "ansible-run2.log");
    assert!(ok, "second run: {out}");
    assert_eq!(recap(&out, "board1").1, 0, "a second run changes nothing: {:?}\n{out}", changed_tasks(&out));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("var/lib/jetson-llmd/state.json")).expect("state")).expect("json");
    assert_eq!(state["pid"], pid, "the supervisor was not restarted");
    assert_eq!(warm_models(ollama).await, vec!["gemma4:e2b-8k".to_string()]);

    // 3. The inventory names another model: the switch task alone changes, and the board keeps
    // that model warm (model.conf names it).
    let (ok, out) = play(&inventory("gemma3:4b"), &extra, "ansible-run3.log");
    assert!(ok, "third run: {out}");
    assert_eq!(changed_tasks(&out), vec!["Keep the host's model warm (a switch when it changed)".to_string()], "{out}");
    assert_eq!(warm_models(ollama).await, vec!["gemma3:4b".to_string()]);
    let conf = std::fs::read_to_string(root.join("etc/ollama/model.conf")).expect("model.conf");
    assert!(conf.lines().any(|l| l.trim() == "OLLAMA_MODEL=gemma3:4b"), "{conf}");
    let (code, body) = get(guard, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    println!("ansible: three runs against the board over SSH passed (logs: target/ansible-run{{1,2,3}}.log)");
    drop(n);
}
