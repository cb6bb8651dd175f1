//! The runner watch: knows the process that holds the model (the child of `ollama serve` run
//! with `--model`: llama.cpp's `llama-server` from Ollama 0.30, `ollama runner` before) and
//! reports the moment it exits, through a pidfd. It reports; the machine decides.
//!
//! Why not /api/ps: Ollama 0.34 keeps listing a model whose runner was SIGKILLed (the kernel's
//! OOM killer on an 8 GB board, ollama#18396) until the next request touches it
//! (llm/llama_server.go notices the dead process only then), so a timer asking /api/ps says
//! "ready" for as long as nobody asks; the first client then pays the cold load.
//!
//! Under both launchers the runner is a child of Ollama's main process (its pid comes from the
//! backend: our child, or ollama.service's MainPID). Evidence for the exit, where the machine
//! lets us read it: the wait status while the process is still a zombie (`/proc/PID/stat`
//! field 52, before Ollama reaps it) and the OOM killer's count in the runner's cgroup
//! (`memory.events` oom_kill, cgroup v2). Without pidfd_open (a kernel before 5.3, a seccomp
//! filter) the watch says so once and the residency check's timer is all there is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, watch, Notify};

/// What the watch saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerEvent {
    /// A runner is there that was not before (a load by us or by anyone); `blob` is the
    /// model file it serves (`sha256-...`, from its --model argument).
    Up { pid: u32, program: String, blob: Option<String> },
    /// A runner exited; `how` is the evidence in words ("was killed by signal 9 (SIGKILL)").
    Gone { pid: u32, program: String, blob: Option<String>, how: String },
    /// The watch cannot work on this machine; said once.
    Unavailable(String),
}

/// Most runners one Ollama has at once (OLLAMA_MAX_LOADED_MODELS is 1 here; a few more are
/// loads in flight): a bound on what one scan takes on, not a limit anyone meets.
const MAX_RUNNERS: usize = 16;
/// Bytes read of one /proc file: a cmdline or stat line is far shorter.
const PROC_CAP: u64 = 64 * 1024;

pub struct RunnerWatch {
    events: mpsc::UnboundedReceiver<RunnerEvent>,
    serve: watch::Sender<Option<u32>>,
    look: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunnerWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RunnerWatch {
    /// The watch over `/proc` and `/sys/fs/cgroup` (other roots: tests).
    pub fn start() -> RunnerWatch {
        RunnerWatch::start_at(PathBuf::from("/proc"), PathBuf::from("/sys/fs/cgroup"))
    }

    pub fn start_at(proc_root: PathBuf, cgroup_root: PathBuf) -> RunnerWatch {
        let (tx, events) = mpsc::unbounded_channel();
        let (serve, serve_rx) = watch::channel(None);
        let look = Arc::new(Notify::new());
        let task = tokio::spawn(watch_task(serve_rx, look.clone(), tx, proc_root, cgroup_root));
        RunnerWatch { events, serve, look, task }
    }

    /// Ollama's main process now (None: not running). A new one forgets the old one's runners:
    /// their exits are the restart's business, not a death to report.
    pub fn set_serve(&self, pid: Option<u32>) {
        // A change wakes the watch by itself; the same pid costs nothing.
        self.serve.send_if_modified(|p| {
            let changed = *p != pid;
            *p = pid;
            changed
        });
    }

    /// Look for new runners now (a load just ended, a residency check is due).
    pub fn look(&self) {
        self.look.notify_one();
    }

    /// The next thing seen. Cancel-safe: events wait in a channel.
    pub async fn next(&mut self) -> RunnerEvent {
        match self.events.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }
}

struct Known {
    program: String,
    blob: Option<String>,
    /// The runner's cgroup memory.events and its oom_kill count when the runner was found.
    oom: Option<(PathBuf, u64)>,
}

async fn watch_task(mut serve: watch::Receiver<Option<u32>>, look: Arc<Notify>, tx: mpsc::UnboundedSender<RunnerEvent>, proc_root: PathBuf, cgroup_root: PathBuf) {
    let (exit_tx, mut exits) = mpsc::unbounded_channel::<(u32, Option<String>)>();
    let mut known: HashMap<u32, Known> = HashMap::new();
    let mut current: Option<u32> = None;
    let mut said = false;
    loop {
        tokio::select! {
            r = serve.changed() => if r.is_err() { return },
            _ = look.notified() => {}
            Some((pid, status)) = exits.recv() => {
                if let Some(k) = known.remove(&pid) {
                    let how = evidence(status, k.oom.as_ref());
                    let _ = tx.send(RunnerEvent::Gone { pid, program: k.program.clone(), blob: k.blob.clone(), how });
                }
                continue;
            }
        }
        let now = *serve.borrow_and_update();
        if now != current {
            known.clear();
            current = now;
        }
        let Some(serve_pid) = current else { continue };
        if !said && !proc_root.join(serve_pid.to_string()).join("task").join(serve_pid.to_string()).join("children").exists() && proc_root.join(serve_pid.to_string()).exists() {
            said = true;
            let _ = tx.send(RunnerEvent::Unavailable("cannot list Ollama's runners (no /proc/PID/task/TID/children: a kernel without CONFIG_PROC_CHILDREN); a dead runner is seen only at the next residency check".into()));
        }
        for Runner { pid, program, blob } in runners_of(&proc_root, serve_pid) {
            if known.contains_key(&pid) || known.len() >= MAX_RUNNERS {
                continue;
            }
            let fd = match rustix::process::Pid::from_raw(pid as i32).map(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())) {
                Some(Ok(fd)) => fd,
                // Gone between the scan and the open: nothing to watch.
                Some(Err(rustix::io::Errno::SRCH)) | None => continue,
                Some(Err(e)) => {
                    if !said {
                        said = true;
                        let _ = tx.send(RunnerEvent::Unavailable(format!("cannot watch Ollama's runner (pidfd_open: {e}); a dead runner is seen only at the next residency check")));
                    }
                    continue;
                }
            };
            let oom = cgroup_events(&proc_root, &cgroup_root, pid).and_then(|p| oom_kills(&p).map(|n| (p, n)));
            let exit_tx = exit_tx.clone();
            let root = proc_root.clone();
            // A small thread blocks in poll(2) on the pidfd, which turns readable when the
            // process exits (pidfd_open(2)): tokio's safe AsyncFd constructors are deprecated and
            // `unsafe` is forbidden here, as for host/watch.rs. It ends with the runner.
            let spawned = std::thread::Builder::new().name("runner-watch".into()).spawn(move || {
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                use std::os::fd::AsFd;
                loop {
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::NONE) {
                        Err(nix::errno::Errno::EINTR) => continue,
                        _ => break,
                    }
                }
                let _ = exit_tx.send((pid, zombie_status(&root, pid)));
            });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a thread to watch Ollama's runner {pid}: {e}");
                continue;
            }
            known.insert(pid, Known { program: program.clone(), blob: blob.clone(), oom });
            let _ = tx.send(RunnerEvent::Up { pid, program, blob });
        }
    }
}

/// One runner process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runner {
    pub pid: u32,
    pub program: String,
    pub blob: Option<String>,
}

/// Ollama's runners: the children of `serve` run with `--model` (Ollama's discovery runs
/// llama-server too, briefly, without one: discover/llama_server.go).
pub fn runners_of(proc_root: &Path, serve: u32) -> Vec<Runner> {
    let mut kids = Vec::new();
    // Children are listed per thread (Go forks from any of them).
    if let Ok(tasks) = std::fs::read_dir(proc_root.join(serve.to_string()).join("task")) {
        for t in tasks.flatten().take(4096) {
            if let Some(text) = read_capped(&t.path().join("children")) {
                kids.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    kids.sort_unstable();
    kids.dedup();
    kids.into_iter()
        .filter_map(|pid| {
            let raw = read_capped(&proc_root.join(pid.to_string()).join("cmdline"))?;
            let args: Vec<String> = raw.split('\0').filter(|a| !a.is_empty()).map(str::to_string).collect();
            let at = args.iter().position(|a| a == "--model")?;
            Some(Runner { pid, program: program(&args), blob: args.get(at + 1).and_then(|m| blob_of(m)) })
        })
        .collect()
}

/// The `sha256-<hex>` blob a path or Modelfile line names (Ollama stores models as
/// blobs/sha256-<hex>; `ollama show --modelfile` names the same file in its FROM line).
pub fn blob_of(text: &str) -> Option<String> {
    let i = text.rfind("sha256-")?;
    let hex: String = text[i + 7..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    (hex.len() == 64).then(|| format!("sha256-{hex}"))
}

/// "llama-server" or "ollama runner", from a runner's arguments (a wrapper script shows as the
/// script's name, which is llama-server's).
fn program(args: &[String]) -> String {
    let base = |a: &String| a.rsplit('/').next().unwrap_or(a).to_string();
    let mut it = args.iter();
    let mut first = it.next().map(base).unwrap_or_default();
    if matches!(first.as_str(), "sh" | "bash" | "dash") {
        first = it.next().map(base).unwrap_or(first);
    }
    if first == "ollama" && args.get(1).is_some_and(|a| a == "runner") {
        return "ollama runner".into();
    }
    crate::text::clip(&crate::text::one_line(&first), 40)
}

fn read_capped(p: &Path) -> Option<String> {
    use std::io::Read;
    let mut b = Vec::new();
    std::fs::File::open(p).ok()?.take(PROC_CAP).read_to_end(&mut b).ok()?;
    Some(String::from_utf8_lossy(&b).into_owned())
}

/// Whether `pid` runs (exists and is not a zombie or dead).
pub fn alive(proc_root: &Path, pid: u32) -> bool {
    let Some(stat) = read_capped(&proc_root.join(pid.to_string()).join("stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("");
    !matches!(state, "Z" | "X" | "x" | "")
}

/// The wait status of `pid` while it is a zombie (field 52 of /proc/PID/stat, Linux 3.5+), in
/// words; None once its parent reaped it.
fn zombie_status(proc_root: &Path, pid: u32) -> Option<String> {
    let stat = read_capped(&proc_root.join(pid.to_string()).join("stat"))?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // rest[0] is field 3 (the state), so field 52 is rest[49].
    if rest.first() != Some(&"Z") {
        return None;
    }
    let status: i32 = rest.get(49)?.parse().ok()?;
    // Without ptrace access to the process (it runs as another user, and the hardened unit
    // keeps no capabilities) the kernel shows 0 here: unknown, not "exited with status 0".
    (status != 0).then(|| describe_status(status))
}

/// A wait(2) status in words.
pub fn describe_status(status: i32) -> String {
    let sig = status & 0x7f;
    if sig == 0 {
        return format!("exited with status {}", (status >> 8) & 0xff);
    }
    let name = nix::sys::signal::Signal::try_from(sig).map(|s| format!(" ({})", s.as_str())).unwrap_or_default();
    format!("was killed by signal {sig}{name}")
}

/// The runner's cgroup v2 memory.events (the `0::` line of /proc/PID/cgroup).
fn cgroup_events(proc_root: &Path, cgroup_root: &Path, pid: u32) -> Option<PathBuf> {
    let text = read_capped(&proc_root.join(pid.to_string()).join("cgroup"))?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    [cgroup_root.join(rel), cgroup_root.join("unified").join(rel)].into_iter().map(|d| d.join("memory.events")).find(|p| p.is_file())
}

fn oom_kills(events: &Path) -> Option<u64> {
    read_capped(events)?.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}

/// The exit in words, with the OOM killer's count when it moved.
fn evidence(status: Option<String>, oom: Option<&(PathBuf, u64)>) -> String {
    let mut how = status.unwrap_or_else(|| "exited".to_string());
    if let Some((file, before)) = oom {
        if let Some(after) = oom_kills(file).filter(|a| a > before) {
            how = format!("{how}: the kernel's OOM killer (oom_kill {before} -> {after} in {})", file.display());
        }
    }
    how
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A stand-in for `ollama serve` with one runner (a child run with --model) and one
    /// discovery-like child (without): python keeps its arguments in /proc/PID/cmdline.
    fn serve() -> std::process::Child {
        std::process::Command::new("python3")
            .args(["-c", "import subprocess,time\nr=subprocess.Popen(['python3','-c','import time; time.sleep(60)','--model','/m/blobs/sha256-abababababababababababababababababababababababababababababababab'])\nd=subprocess.Popen(['python3','-c','import time; time.sleep(60)','--verbose'])\nprint(r.pid, d.pid, flush=True)\nr.wait()\ntime.sleep(60)"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3")
    }

    fn kill(pid: u32) -> nix::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
    }

    fn pids(c: &mut std::process::Child) -> (u32, u32) {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
        let mut it = line.split_whitespace().map(|p| p.parse::<u32>().expect("pid"));
        (it.next().expect("runner"), it.next().expect("discovery"))
    }

    #[tokio::test]
    async fn a_runner_is_found_and_its_death_reported_at_once_with_its_signal() {
        let mut s = serve();
        let (runner, discovery) = pids(&mut s);
        let mut w = RunnerWatch::start();
        w.set_serve(Some(s.id()));
        let up = tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("up");
        assert_eq!(up, RunnerEvent::Up { pid: runner, program: "python3".into(), blob: Some(format!("sha256-{}", "ab".repeat(32))) });
        // The discovery-like child (no --model) is not a runner.
        assert!(runners_of(Path::new("/proc"), s.id()).iter().all(|r| r.pid != discovery));
        kill(runner).expect("kill");
        let t = std::time::Instant::now();
        let gone = tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("gone");
        let RunnerEvent::Gone { pid, how, .. } = gone else { panic!("{gone:?}") };
        assert_eq!(pid, runner);
        // The parent reaps it at once (r.wait()), so the zombie's status is a race we may lose.
        assert!(how == "exited" || how.contains("SIGKILL"), "{how}");
        assert!(t.elapsed() < Duration::from_secs(2), "seen after {:?}", t.elapsed());
        let _ = kill(discovery);
        let _ = s.kill();
        let _ = s.wait();
    }

    #[tokio::test]
    async fn a_new_serve_forgets_the_old_ones_runners() {
        let mut s = serve();
        let (runner, discovery) = pids(&mut s);
        let mut w = RunnerWatch::start();
        w.set_serve(Some(s.id()));
        assert!(matches!(tokio::time::timeout(Duration::from_secs(10), w.next()).await, Ok(RunnerEvent::Up { .. })));
        w.set_serve(None);
        // Let the watch take the change before the runner dies.
        tokio::time::sleep(Duration::from_millis(200)).await;
        kill(runner).expect("kill");
        assert!(tokio::time::timeout(Duration::from_millis(500), w.next()).await.is_err(), "no Gone for a forgotten Ollama's runner");
        let _ = kill(discovery);
        let _ = s.kill();
        let _ = s.wait();
    }

    #[test]
    fn statuses_and_programs_in_words() {
        assert_eq!(describe_status(9), "was killed by signal 9 (SIGKILL)");
        assert_eq!(describe_status(1 << 8), "exited with status 1");
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(program(&a(&["/usr/local/bin/ollama", "runner", "--model", "x"])), "ollama runner");
        assert_eq!(program(&a(&["/bin/sh", "/usr/local/lib/ollama/llama-server", "--model", "x"])), "llama-server");
        assert_eq!(program(&a(&["/opt/x/llama-server", "--model", "x"])), "llama-server");
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(blob_of(&format!("FROM /usr/share/ollama/.ollama/models/blobs/sha256-{hex}\n")), Some(format!("sha256-{hex}")));
        assert_eq!(blob_of("FROM gemma4:e2b-it-qat"), None);
        assert_eq!(blob_of("sha256-abc"), None);
    }

    #[test]
    fn the_oom_killers_count_is_evidence() {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("memory.events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").expect("w");
        assert_eq!(oom_kills(&f), Some(1));
        std::fs::write(&f, "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n").expect("w");
        let how = evidence(Some("was killed by signal 9 (SIGKILL)".into()), Some(&(f.clone(), 1)));
        assert!(how.starts_with("was killed by signal 9 (SIGKILL): the kernel's OOM killer (oom_kill 1 -> 2"), "{how}");
        assert_eq!(evidence(None, Some(&(f, 2))), "exited");
    }
}
