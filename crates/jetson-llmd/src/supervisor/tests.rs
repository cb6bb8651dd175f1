//! The control loop's transitions with fakes of every boundary, under paused time: boot, warm,
//! eviction, Ollama exit, config change, CPU fallback, reboot required, SIGHUP, shutdown.

use super::stage::Stage;
use super::{Paths, Supervisor};
use crate::conf::{OnRebootRequired, Settings};
use crate::failure::{code, Failure};
use crate::host::signals::Signals;
use crate::records::state::{LauncherKind, State, StateFile};
use crate::supervisor::backend::OllamaEvent;
use crate::testing::{FakeApi, FakeBackend, FakeNotify, Mode, CPU_LOG};
use ollama_client::KeepAlive;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use tokio::time::Instant;

struct Rig {
    dir: tempfile::TempDir,
    api: FakeApi,
    notify: FakeNotify,
    signals: Signals,
    settings: Settings,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("model.conf"), "OLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
        Rig { dir, api: FakeApi::default(), notify: FakeNotify::starting_now(), signals: Signals::default(), settings: Settings::default() }
    }

    fn paths(&self) -> Paths {
        Paths { config: self.dir.path().join("config.toml"), model_conf: self.dir.path().join("model.conf"), root: self.dir.path().to_path_buf() }
    }

    fn supervisor(&self, backend: FakeBackend) -> Supervisor<&FakeApi, FakeBackend, FakeNotify> {
        let mut settings = self.settings.clone();
        settings.state_dir = "/".into();
        Supervisor {
            api: &self.api,
            state: StateFile::new(Some(self.dir.path()), backend.kind),
            backend,
            notify: self.notify.clone(),
            settings,
            paths: self.paths(),
            cmdline: None,
            conf_poll: Duration::from_secs(2),
            // Real file events and paused time do not mix: these tests poll.
            conf_watch: false,
            watchdog: None,
            guard: None,
        }
    }

    fn state(&self) -> State {
        let t = std::fs::read_to_string(self.dir.path().join("state.json")).unwrap_or_default();
        serde_json::from_str(&t).unwrap_or_default()
    }

    /// Waits (virtual time) until the state file satisfies `f`.
    async fn until(&self, what: &str, f: impl Fn(&State) -> bool) -> State {
        let t0 = Instant::now();
        loop {
            let s = self.state();
            if f(&s) {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(3600), "never reached: {what}; state: {s:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn write_conf(&self, text: &str) {
        std::fs::write(self.dir.path().join("model.conf"), text).expect("w");
    }
}

/// Whole seconds since `t`, rounded: the state file is polled every 100 ms (and a read can race
/// a write on the blocking pool), so an observation lands up to a poll or two late.
fn secs(t: Instant) -> u64 {
    t.elapsed().as_secs_f64().round() as u64
}

fn events(s: &State) -> Vec<&str> {
    s.timeline.iter().map(|e| e.event.as_str()).collect()
}

fn ready(s: &State) -> bool {
    s.stage == Stage::Ready
}

#[tokio::test(start_paused = true)]
async fn boots_in_order_sends_ready_once_and_stops_cleanly() {
    let rig = Rig::new();
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let calls = backend.calls.clone();
    let (r, s) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        let s = rig.until("ready", ready).await;
        rig.signals.shutdown.cancel();
        s
    });
    r.expect("a clean stop");
    assert_eq!(events(&s), ["ollama started", "API ready", "GPU found", "model warm", "keepalive running"]);
    assert_eq!(s.launcher, LauncherKind::Process);
    assert!(s.status.starts_with("ready: gemma4:e2b-8k warm on the GPU (100%), pinned"), "{}", s.status);
    assert_eq!(s.gpu.as_ref().map(|g| g.gpu), Some(true));
    assert_eq!(*calls.borrow(), ["start", "warm gemma4:e2b-8k", "start_keepalive", "shutdown"]);
    assert_eq!(rig.notify.ready.get(), 1);
    assert_eq!(rig.state().stage, Stage::Stopping);
    assert_eq!(rig.api.load_log(), [("gemma4:e2b-8k".to_string(), KeepAlive::Forever)]);
}

#[tokio::test(start_paused = true)]
async fn an_evicted_model_is_rewarmed_at_the_next_tick() {
    let rig = Rig::new();
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        let t = Instant::now();
        *rig.api.loaded.borrow_mut() = None;
        let s = rig.until("re-warmed", |s| s.rewarm_count == 1).await;
        assert!(secs(t) <= 15, "within the 15 s residency check, not at the 4-minute ping: {}", secs(t));
        assert_eq!(s.stage, Stage::Ready);
        assert!(s.last_ping.as_ref().is_some_and(|p| p.ok && p.rewarmed));
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
    assert_eq!(rig.api.loaded.borrow().as_deref(), Some("gemma4:e2b-8k"));
    assert_eq!(rig.notify.ready.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dead_child_is_restarted_at_once_then_after_the_backoff_it_announced() {
    let rig = Rig::new();
    let (backend, tx) = FakeBackend::new(LauncherKind::Process);
    let calls = backend.calls.clone();
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        *rig.api.loaded.borrow_mut() = None;
        let t = Instant::now();
        tx.send(OllamaEvent::Down("ollama serve exited (signal: 9)".into())).expect("send");
        let s = rig.until("ready again", |s| ready(s) && s.ollama_restarts == 1).await;
        assert_eq!(secs(t), 0, "a healthy Ollama that died is restarted at once");
        assert_eq!(events(&s).len(), 5, "a new timeline for the new boot");
        // Dying again before the model is warm: the backoff starts.
        *rig.api.loaded.borrow_mut() = None;
        let t = Instant::now();
        tx.send(OllamaEvent::Down("ollama serve exited (signal: 9)".into())).expect("send");
        tx.send(OllamaEvent::Down("ollama serve exited (signal: 6)".into())).expect("send");
        let s = rig.until("announced", |s| s.status.contains("signal: 6")).await;
        assert!(s.status.contains("starting it again in 5s"), "{}", s.status);
        rig.until("ready again", |s| ready(s) && s.ollama_restarts == 2).await;
        assert_eq!(secs(t), 5, "the delay printed is the delay used");
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
    assert!(calls.borrow().iter().filter(|c| *c == "start").count() >= 3);
    assert_eq!(rig.notify.ready.get(), 1, "READY=1 once per process");
}

#[tokio::test(start_paused = true)]
async fn under_systemd_a_unit_back_up_is_rechecked_at_once() {
    let rig = Rig::new();
    let (backend, tx) = FakeBackend::new(LauncherKind::Systemd);
    let calls = backend.calls.clone();
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        tx.send(OllamaEvent::Down("ollama.service is activating".into())).expect("send");
        rig.until("down", |s| s.stage == Stage::OllamaDown).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = Instant::now();
        tx.send(OllamaEvent::Up).expect("send");
        rig.until("ready again", |s| ready(s) && s.ollama_restarts == 1).await;
        assert!(t.elapsed() < Duration::from_secs(1), "not after the 5 s backoff: {:?}", t.elapsed());
        // No in-loop ticks under systemd: ollama-keepalive.service does that.
        tokio::time::sleep(Duration::from_secs(600)).await;
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
    assert!(!calls.borrow().iter().any(|c| c.starts_with("tick")), "{:?}", calls.borrow());
    assert_eq!(events(&rig.state()), ["ollama active", "API ready", "GPU found", "model warm", "keepalive running"]);
}

#[tokio::test(start_paused = true)]
async fn a_switch_makes_the_new_model_present_then_unloads_the_old_then_loads_the_new() {
    let rig = Rig::new();
    let (backend, _tx) = FakeBackend::new(LauncherKind::Systemd);
    let calls = backend.calls.clone();
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        rig.write_conf("OLLAMA_MODEL=llama3.2:3b\n");
        let s = rig.until("switched", |s| ready(s) && s.model.as_deref() == Some("llama3.2:3b")).await;
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
    assert_eq!(rig.api.load_log(), [("gemma4:e2b-8k".to_string(), KeepAlive::Forever), ("gemma4:e2b-8k".to_string(), KeepAlive::Unload), ("llama3.2:3b".to_string(), KeepAlive::Forever)], "both do not fit: the old one goes first");
    let c = calls.borrow();
    let stop = c.iter().position(|x| x == "stop_keepalive").expect("the keepalive paused");
    let warm = c.iter().position(|x| x == "warm llama3.2:3b").expect("warmed");
    assert!(stop < warm && c[warm + 1..].contains(&"start_keepalive".to_string()), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn a_new_model_that_runs_out_of_memory_falls_back_to_the_old_one_and_then_reboot_required() {
    let oom = || "llama-server process has terminated: exit status 1: cudaMalloc failed: out of memory".to_string();
    // 1. The new model fails twice (drop caches once in between): the old one is loaded back.
    let rig = Rig::new();
    let (backend, tx) = FakeBackend::new(LauncherKind::Process);
    let relief = backend.relief.clone();
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        rig.api.load_errors.borrow_mut().extend([oom(), oom()]);
        rig.write_conf("OLLAMA_MODEL=llama3.2:3b\n");
        let s = rig.until("fell back", |s| s.warnings.iter().any(|w| w.text.contains("could not be loaded"))).await;
        assert_eq!((s.stage, s.model.as_deref()), (Stage::Ready, Some("gemma4:e2b-8k")), "{s:#?}");
        assert!(s.warnings[0].text.starts_with("model.conf names llama3.2:3b, which could not be loaded (GPU memory cannot be allocated"), "{:?}", s.warnings);
        assert_eq!(rig.api.loaded.borrow().as_deref(), Some("gemma4:e2b-8k"));
        // Ollama restarts: the old model boots again, not the one that failed (model.conf
        // still names it, unchanged).
        *rig.api.loaded.borrow_mut() = None;
        tx.send(crate::supervisor::backend::OllamaEvent::Down("ollama serve exited (signal: 9)".into())).expect("send");
        rig.until("back up", |s| ready(s) && s.ollama_restarts == 1).await;
        assert_eq!(rig.api.loaded.borrow().as_deref(), Some("gemma4:e2b-8k"));
        assert_eq!(rig.api.load_log().iter().filter(|(m, k)| m == "llama3.2:3b" && *k == KeepAlive::Forever).count(), 2, "no new attempt at the failed model");
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
    assert_eq!(relief.0.get(), 1, "drop caches once, not a loop");
    // 2. The old one cannot come back either: reboot required, exit 4.
    let rig = Rig::new();
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        rig.api.load_errors.borrow_mut().extend([oom(), oom(), oom()]);
        rig.write_conf("OLLAMA_MODEL=llama3.2:3b\n");
    });
    let f = r.expect_err("terminal");
    assert_eq!(f.exit_code(), code::REBOOT_REQUIRED, "{f}");
    assert!(f.to_string().contains("gemma4:e2b-8k could not be loaded back"), "{f}");
    assert_eq!(rig.state().stage, Stage::RebootRequired);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_edit_keeps_the_running_model_and_says_where() {
    let rig = Rig::new();
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        rig.write_conf("OLLAMA_MODEL=gemma4:e2b-8k; reboot\n");
        let s = rig.until("warning", |s| !s.warnings.is_empty()).await;
        assert!(s.warnings[0].text.starts_with("model.conf is invalid (keeping gemma4:e2b-8k loaded):"), "{:?}", s.warnings);
        assert!(s.warnings[0].text.contains("model.conf:1:"), "file:line: {:?}", s.warnings);
        assert_eq!(s.stage, Stage::Ready);
        assert!(rig.notify.statuses.borrow().last().is_some_and(|t| t.starts_with("model.conf is invalid, keeping gemma4:e2b-8k loaded")));
        // A FIFO in its place must not freeze the loop: the eviction is still repaired.
        std::fs::remove_file(rig.dir.path().join("model.conf")).expect("rm");
        nix::unistd::mkfifo(&rig.dir.path().join("model.conf"), nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        *rig.api.loaded.borrow_mut() = None;
        let s = rig.until("re-warmed with a FIFO as model.conf", |s| s.rewarm_count == 1).await;
        assert!(s.warnings.iter().any(|w| w.text.contains("is a FIFO")), "{:?}", s.warnings);
        rig.write_conf_after_fifo();
        rig.until("fixed", |s| s.warnings.is_empty()).await;
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
    assert_eq!(rig.api.load_log().iter().filter(|(m, _)| m != "gemma4:e2b-8k").count(), 0);
}

impl Rig {
    fn write_conf_after_fifo(&self) {
        let _ = std::fs::remove_file(self.dir.path().join("model.conf"));
        self.write_conf("OLLAMA_MODEL=gemma4:e2b-8k\n");
    }
}

#[tokio::test(start_paused = true)]
async fn cpu_fallback_is_terminal_under_both_launchers() {
    for kind in [LauncherKind::Process, LauncherKind::Systemd] {
        let rig = Rig::new();
        let (backend, _tx) = FakeBackend::new(kind);
        *backend.log.borrow_mut() = vec![CPU_LOG.to_string()];
        let calls = backend.calls.clone();
        let r = rig.supervisor(backend).run(rig.signals.clone()).await;
        let f = r.expect_err("terminal");
        assert_eq!(f.exit_code(), code::ON_CPU);
        let s = rig.state();
        assert_eq!(s.stage, Stage::CpuFallback);
        assert!(s.status.starts_with("NOT READY: Ollama runs on the CPU:") && s.status.contains("cuda_jetpack6"), "{}", s.status);
        assert_eq!(*calls.borrow(), ["start", "stop_keepalive", "shutdown"], "never loads onto the CPU");
        assert_eq!(rig.notify.ready.get(), 0);
        assert!(rig.api.load_log().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn reboot_required_is_terminal_and_can_ask_for_a_reboot() {
    for (policy, wants_reboot) in [(OnRebootRequired::Report, false), (OnRebootRequired::Reboot, true)] {
        let mut rig = Rig::new();
        rig.settings.on_reboot_required = policy;
        rig.api = FakeApi::new(&[Mode::Oom]);
        let (backend, _tx) = FakeBackend::new(LauncherKind::Systemd);
        let calls = backend.calls.clone();
        let relief = backend.relief.clone();
        let f = rig.supervisor(backend).run(rig.signals.clone()).await.expect_err("terminal");
        assert!(matches!(f, Failure::RebootRequired { .. }), "{f:?}");
        assert_eq!(f.exit_code(), code::REBOOT_REQUIRED);
        assert_eq!(rig.state().stage, Stage::RebootRequired);
        assert_eq!(relief.0.get(), 1, "drop_caches once, then stop");
        assert_eq!(rig.api.load_log().len(), 2, "one load, one retry");
        assert_eq!(calls.borrow().contains(&"reboot".to_string()), wants_reboot, "{:?}", calls.borrow());
        assert!(calls.borrow().contains(&"stop_keepalive".to_string()));
    }
}

#[tokio::test(start_paused = true)]
async fn an_invalid_model_conf_at_start_exits_2_under_both_launchers() {
    for kind in [LauncherKind::Process, LauncherKind::Systemd] {
        let rig = Rig::new();
        rig.write_conf("OLLAMA_MODEL=\n");
        let (backend, _tx) = FakeBackend::new(kind);
        let f = rig.supervisor(backend).run(rig.signals.clone()).await.expect_err("terminal");
        assert_eq!(f.exit_code(), code::USAGE);
        let s = rig.state();
        assert_eq!(s.stage, Stage::ConfigInvalid);
        assert!(s.status.contains("model.conf:1: OLLAMA_MODEL is empty"), "{}", s.status);
    }
}

#[tokio::test(start_paused = true)]
async fn failed_loads_back_off_as_announced_and_a_model_that_does_not_fit_waits_for_an_edit() {
    let rig = Rig::new();
    rig.api.load_errors.borrow_mut().extend(["llama runner process has terminated: exit status 2".to_string(), "llama runner process has terminated: exit status 2".to_string()]);
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        let s = rig.until("load failed", |s| s.stage == Stage::LoadFailed).await;
        assert!(s.status.ends_with("retrying in 5s or when model.conf changes"), "{}", s.status);
        let t = Instant::now();
        let s = rig.until("second failure", |s| s.status.contains("retrying in 10s")).await;
        assert_eq!(secs(t), 5);
        let t = Instant::now();
        rig.until("ready", ready).await;
        assert_eq!(secs(t), 10);
        drop(s);
        // Now a model that lands partly on the CPU: no retry loop, wait for model.conf.
        rig.api.gpu_percent.set(60);
        rig.write_conf("OLLAMA_MODEL=llama3.2:3b\n");
        let s = rig.until("partly", |s| s.stage == Stage::PartlyOnGpu).await;
        assert!(s.status.ends_with("waiting for model.conf to change"), "{}", s.status);
        let loads = rig.api.loads.borrow().len();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(rig.api.loads.borrow().len(), loads, "no reload loop");
        rig.api.gpu_percent.set(100);
        rig.write_conf("OLLAMA_MODEL=gemma4:e2b-8k\n");
        rig.until("ready after the edit", |s| ready(s) && s.model.as_deref() == Some("gemma4:e2b-8k")).await;
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
}

#[tokio::test(start_paused = true)]
async fn sighup_rereads_config_toml_and_a_bad_one_keeps_the_settings() {
    let rig = Rig::new();
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let calls = backend.calls.clone();
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        std::fs::write(rig.paths().config, "keepalive_interval = \"1ns\"\n").expect("w");
        rig.signals.request_reload();
        let s = rig.until("warning", |s| !s.warnings.is_empty()).await;
        assert!(s.warnings[0].text.starts_with("config.toml is invalid (the settings in use stay):"), "{:?}", s.warnings);
        std::fs::write(rig.paths().config, "keepalive_interval = \"30s\"\n").expect("w");
        rig.signals.request_reload();
        rig.until("warning gone", |s| s.warnings.is_empty()).await;
        // The tick scheduled before the reload still runs at 4 min; from then on every 30 s.
        tokio::time::sleep(Duration::from_secs(240 + 61)).await;
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
    assert_eq!(calls.borrow().iter().filter(|c| c.starts_with("tick")).count(), 3, "{:?}", calls.borrow());
}

#[tokio::test(start_paused = true)]
async fn ollama_that_cannot_start_is_retried_with_growing_backoff() {
    let rig = Rig::new();
    let (backend, _tx) = FakeBackend::new(LauncherKind::Systemd);
    backend.start_errors.borrow_mut().extend([Failure::OllamaStart("ollama.service: start limit hit".into()), Failure::PortInUse { addr: "127.0.0.1:11434".into() }]);
    let calls = backend.calls.clone();
    let statuses: Rc<RefCell<Vec<(u64, String)>>> = Rc::default();
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        let t = Instant::now();
        let s = rig.until("failed", |s| s.stage == Stage::OllamaFailed).await;
        statuses.borrow_mut().push((secs(t), s.status));
        let s = rig.until("port", |s| s.stage == Stage::PortInUse).await;
        statuses.borrow_mut().push((secs(t), s.status));
        rig.until("ready", ready).await;
        statuses.borrow_mut().push((secs(t), String::new()));
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
    let st = statuses.borrow();
    assert!(st[0].1.ends_with("trying again in 5s"), "{st:?}");
    assert!(st[1].1.contains("something else already serves 127.0.0.1:11434") && st[1].1.ends_with("trying again in 10s"), "{st:?}");
    assert_eq!((st[0].0, st[1].0, st[2].0), (0, 5, 15));
    assert_eq!(calls.borrow().iter().filter(|c| *c == "start").count(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_is_fed_while_idle_and_during_a_long_load() {
    let mut rig = Rig::new();
    rig.api.load_delay.set(Duration::from_secs(100));
    rig.settings.keepalive_interval = Duration::from_secs(3600);
    let (backend, _tx) = FakeBackend::new(LauncherKind::Systemd);
    let mut sup = rig.supervisor(backend);
    sup.watchdog = Some(Duration::from_secs(30));
    let (r, ()) = tokio::join!(sup.run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        tokio::time::sleep(Duration::from_secs(95)).await;
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
    let pets: Vec<u64> = rig.notify.pets.borrow().iter().map(|d| d.as_secs()).collect();
    // 30, 60, 90 during the 100 s load, then every 30 s from the loop.
    assert!(pets.starts_with(&[30, 60, 90]), "{pets:?}");
    assert!(pets.len() >= 6, "{pets:?}");
}

#[tokio::test(start_paused = true)]
async fn another_client_evicting_ours_is_rewarmed_counted_explained_and_not_fought() {
    let rig = Rig::new();
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        let mut at = Vec::new();
        let t0 = Instant::now();
        for n in 1..=4u64 {
            // Another client's request for another model takes the memory.
            *rig.api.loaded.borrow_mut() = Some("llama3.2:3b".into());
            if n >= 3 {
                // Backed off: said at once (within the residency check), and not ready meanwhile.
                let s = rig.until("not ready while backed off", |s| s.stage == Stage::NotResident).await;
                assert!(s.status.starts_with("NOT READY: gemma4:e2b-8k is gone again") && s.status.contains("backed-off keepalive"), "{}", s.status);
            }
            let s = rig.until("re-warmed", |s| s.rewarm_count == n).await;
            at.push(secs(t0));
            let ping = s.last_ping.expect("ping");
            assert!(ping.detail.contains("re-warmed (llama3.2:3b is loaded instead: another client's request evicted it)"), "{}", ping.detail);
        }
        // The first two are repaired within the 15 s residency check; from then on the keepalive's
        // back-off rules: the next ping (240 s), then twice that after the third re-warm.
        assert_eq!(at, [15, 30, 270, 750]);
        let s = rig.state();
        assert!(s.warnings.iter().any(|w| w.text.contains("re-warmed 4 times in the last hour")), "{:?}", s.warnings);
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
}

#[tokio::test(start_paused = true)]
async fn our_base_loaded_at_our_context_by_someone_else_is_ours() {
    // gemma4:e2b-8k is gemma4:e2b-it-qat at num_ctx 8192 (config.toml [models]): Ollama keys
    // runners by weights file, so that runner serves us without a reload, listed under the
    // base's name. Counting it as "not resident" would re-warm for ever.
    let rig = Rig::new();
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let calls = backend.calls.clone();
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        *rig.api.loaded.borrow_mut() = Some("gemma4:e2b-it-qat".into());
        rig.api.context.set(Some(8192));
        tokio::time::sleep(Duration::from_secs(3 * 240 + 10)).await;
        let s = rig.state();
        assert_eq!((s.stage, s.rewarm_count), (Stage::Ready, 0), "{s:#?}");
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
    assert_eq!(calls.borrow().iter().filter(|c| c.starts_with("tick")).count(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_model_loaded_before_ours_at_boot_is_unloaded_first_and_reported() {
    let rig = Rig::new();
    *rig.api.loaded.borrow_mut() = Some("gemma3:4b".into());
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let (r, s) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        let s = rig.until("ready", ready).await;
        rig.signals.shutdown.cancel();
        s
    });
    r.expect("ok");
    let loads = rig.api.load_log();
    assert_eq!(loads[0], ("gemma3:4b".to_string(), KeepAlive::Unload), "unloaded before ours loads: {loads:?}");
    assert_eq!(loads[1], ("gemma4:e2b-8k".to_string(), KeepAlive::Forever));
    assert!(s.warnings.iter().any(|w| w.text.starts_with("at boot, gemma3:4b was loaded before gemma4:e2b-8k")), "{:?}", s.warnings);
}

#[tokio::test(start_paused = true)]
async fn a_switch_to_a_model_that_does_not_fit_is_refused_before_anything_is_unloaded() {
    let rig = Rig::new();
    std::fs::create_dir_all(rig.dir.path().join("proc")).expect("mkdir");
    std::fs::write(rig.dir.path().join("proc/meminfo"), "MemTotal: 7800000 kB\nMemAvailable: 131072 kB\n").expect("w");
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let calls = backend.calls.clone();
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        let fits: crate::ollama::fit::FitTable = serde_json::from_slice(&std::fs::read(rig.dir.path().join("fit.json")).expect("fit.json")).expect("typed");
        assert_eq!((fits.entries[0].model.as_str(), fits.entries[0].num_ctx), ("gemma4:e2b-8k", Some(8192)), "the boot load is measured: {fits:?}");
        assert_eq!((fits.entries[0].mem_available_before, fits.entries[0].mem_available_after), (Some(131072 * 1024), Some(131072 * 1024)), "MemAvailable around the cold load");
        rig.write_conf("OLLAMA_MODEL=llama3.2:3b\n");
        let s = rig.until("refused", |s| s.warnings.iter().any(|w| w.text.contains("does not fit"))).await;
        let w = s.warnings.iter().find(|w| w.text.contains("does not fit")).expect("w");
        assert!(w.text.starts_with("model.conf names llama3.2:3b, which does not fit: it needs ~0.4 GiB (estimated at num_ctx 4096)"), "{w}");
        assert!(w.text.contains("gemma4:e2b-8k stays loaded"), "{w}");
        assert_eq!(s.stage, Stage::Ready);
        assert_eq!(s.model.as_deref(), Some("gemma4:e2b-8k"));
        assert!(!rig.api.load_log().iter().any(|(m, _)| m == "llama3.2:3b"), "nothing loaded or unloaded");
        // With room, the same edit goes through.
        std::fs::write(rig.dir.path().join("proc/meminfo"), "MemTotal: 7800000 kB\nMemAvailable: 6000000 kB\n").expect("w");
        rig.write_conf("# now\nOLLAMA_MODEL=llama3.2:3b\n");
        rig.until("switched", |s| ready(s) && s.model.as_deref() == Some("llama3.2:3b")).await;
        assert!(rig.state().warnings.is_empty(), "{:?}", rig.state().warnings);
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
    assert_eq!(calls.borrow().iter().filter(|c| c.starts_with("warm")).count(), 2);
}

#[tokio::test(start_paused = true)]
async fn out_of_memory_for_a_model_that_never_fit_is_does_not_fit_not_reboot_required() {
    let rig = Rig::new();
    std::fs::create_dir_all(rig.dir.path().join("proc")).expect("mkdir");
    std::fs::write(rig.dir.path().join("proc/meminfo"), "MemAvailable: 131072 kB\n").expect("w");
    let oom = "llama-server process has terminated: exit status 1: cudaMalloc failed: out of memory".to_string();
    rig.api.load_errors.borrow_mut().extend([oom.clone(), oom]);
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        let s = rig.until("does not fit", |s| s.stage == Stage::DoesNotFit).await;
        assert!(s.status.starts_with("NOT READY: model gemma4:e2b-8k does not fit: it never loaded on this board"), "{}", s.status);
        assert!(s.status.ends_with("waiting for model.conf to change"), "{}", s.status);
        rig.signals.shutdown.cancel();
    });
    r.expect("not terminal: a smaller model fixes it");
}

#[tokio::test(start_paused = true)]
async fn another_clients_keep_alive_is_re_pinned_within_the_residency_check() {
    for kind in [LauncherKind::Process, LauncherKind::Systemd] {
        let rig = Rig::new();
        let (backend, _tx) = FakeBackend::new(kind);
        let calls = backend.calls.clone();
        let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
            rig.until("ready", ready).await;
            // A client sent keep_alive "5m".
            *rig.api.expires.borrow_mut() = "2026-11-24T10:05:00Z".into();
            tokio::time::sleep(Duration::from_secs(16)).await;
            rig.signals.shutdown.cancel();
        });
        r.expect("ok");
        match kind {
            LauncherKind::Process => {
                assert!(rig.api.expires.borrow().starts_with("2318"), "re-pinned by the loop");
                assert_eq!(rig.state().repin_count, 1, "counted");
            }
            LauncherKind::Systemd => assert!(calls.borrow().contains(&"keepalive_now".to_string()), "the keepalive unit pinged now: {:?}", calls.borrow()),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn swap_ins_are_a_warning_once_per_episode() {
    let rig = Rig::new();
    let vmstat = |n: u64| {
        std::fs::create_dir_all(rig.dir.path().join("proc")).expect("mkdir");
        std::fs::write(rig.dir.path().join("proc/vmstat"), format!("pgpgin 1\npswpin {n}\n")).expect("w");
    };
    vmstat(100);
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(rig.state().warnings.is_empty());
        vmstat(180);
        let s = rig.until("swap warning", |s| s.warnings.iter().any(|w| w.text.starts_with("board: 80 pages swapped in"))).await;
        assert_eq!(s.warnings.iter().filter(|w| w.text.starts_with("board:")).count(), 1);
        vmstat(260);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let s = rig.state();
        assert_eq!(s.warnings.iter().filter(|w| w.text.starts_with("board:")).count(), 1, "the same episode: {:?}", s.warnings);
        rig.until("cleared", |s| !s.warnings.iter().any(|w| w.text.starts_with("board:"))).await;
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_leaves_memory_more_fragmented_is_a_board_warning_until_the_next_load() {
    let rig = Rig::new();
    let buddy = |orders: &str| {
        std::fs::create_dir_all(rig.dir.path().join("proc")).expect("mkdir");
        std::fs::write(rig.dir.path().join("proc/buddyinfo"), format!("Node 0, zone   Normal {orders}\n")).expect("w");
    };
    // Right after the first load: blocks up to order 10 (4 MiB) are free.
    buddy("10 5 3 2 1 1 1 1 1 1 1");
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(rig.state().warnings.is_empty());
        // Another client unloads it; after the re-warm the largest free block is order 7.
        buddy("900 400 100 20 5 2 1 1 0 0 0");
        *rig.api.loaded.borrow_mut() = None;
        rig.until("re-warmed", |s| s.rewarm_count == 1).await;
        let s = rig.until("fragmentation warning", |s| s.warnings.iter().any(|w| w.text.starts_with("board: after reloading the model"))).await;
        let w = s.warnings.iter().find(|w| w.text.contains("largest free block")).expect("warning");
        assert!(w.text.contains("4096 to 512 kB"), "{w}");
        // Samples of the same load do not repeat or clear it.
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(rig.state().warnings.iter().filter(|w| w.text.starts_with("board: after reloading")).count(), 1);
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
}

/// An Ollama that stops answering (hung, SIGSTOPped) is not ready from the second residency
/// check in a row on, whatever the last check said, and ready again once it answers, without
/// a reload.
#[tokio::test(start_paused = true)]
async fn an_unanswering_ollama_is_not_ready_until_it_answers_again() {
    let rig = Rig::new();
    let (backend, _tx) = FakeBackend::new(LauncherKind::Systemd);
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        *rig.api.modes.borrow_mut() = [Mode::Down].into_iter().collect();
        let t = Instant::now();
        let s = rig.until("not ready", |s| s.stage != Stage::Ready).await;
        assert!(secs(t) > 16 && secs(t) <= 31, "at the second residency check in a row: {}", secs(t));
        assert_eq!(s.stage, Stage::OllamaUnreachable, "{s:#?}");
        assert!(s.status.starts_with("NOT READY: Ollama at") && s.status.contains("residency check"), "{}", s.status);
        *rig.api.modes.borrow_mut() = [Mode::Up].into_iter().collect();
        let s = rig.until("ready again", ready).await;
        assert!(s.status.starts_with("ready: gemma4:e2b-8k"), "{}", s.status);
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
    assert_eq!(rig.api.load_log().len(), 1, "no reload: {:?}", rig.api.load_log());
}

/// A switch loads the model it pulled and admitted: model.conf edited again meanwhile (here
/// made invalid during the pull) is the next poll's business, not a reason to end with
/// nothing loaded.
#[tokio::test(start_paused = true)]
async fn a_switch_loads_what_it_admitted_whatever_model_conf_says_meanwhile() {
    let rig = Rig::new();
    rig.api.pull_delay.set(Duration::from_secs(30));
    let (backend, _tx) = FakeBackend::new(LauncherKind::Systemd);
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        // qwen3:4b is not local: it is pulled first, for 30 s, while gemma4 stays warm.
        rig.write_conf("OLLAMA_MODEL=qwen3:4b\n");
        tokio::time::sleep(Duration::from_secs(10)).await;
        rig.write_conf("OLLAMA_MODEL=\n");
        let s = rig.until("switched to what was admitted", |s| ready(s) && s.model.as_deref() == Some("qwen3:4b")).await;
        assert_eq!(rig.api.loaded.borrow().as_deref(), Some("qwen3:4b"), "{s:#?}");
        let s = rig.until("the invalid edit reported", |s| s.warnings.iter().any(|w| w.text.starts_with("model.conf is invalid (keeping qwen3:4b"))).await;
        assert_eq!(s.stage, Stage::Ready);
        rig.signals.shutdown.cancel();
    });
    r.expect("no exit: the switch finished and the invalid edit kept the model");
}

/// `switch typo:model` (or a hand edit to a name the registry does not have): the pull fails
/// while the old model is still loaded and untouched. It stays the model (state, guard,
/// keepalive follow it), the failure is said at once with the name, and nothing is retried
/// until model.conf changes; no loop pulling a name that does not exist.
#[tokio::test(start_paused = true)]
async fn a_switch_to_a_name_that_cannot_be_pulled_keeps_the_loaded_model_and_says_so_at_once() {
    let rig = Rig::new();
    rig.api.pull_errors.borrow_mut().push_back("pull model manifest: file does not exist".into());
    let (backend, _tx) = FakeBackend::new(LauncherKind::Systemd);
    let calls = backend.calls.clone();
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        rig.write_conf("OLLAMA_MODEL=typo:model\n");
        let t0 = Instant::now();
        let s = rig.until("the failed pull said", |s| s.warnings.iter().any(|w| w.text.starts_with("model.conf names typo:model,"))).await;
        assert!(secs(t0) <= 3, "said within the poll, not after a backoff: {}", secs(t0));
        assert_eq!(s.stage, Stage::Ready, "{s:#?}");
        assert_eq!(s.model.as_deref(), Some("gemma4:e2b-8k"), "state names the model still loaded");
        let w = s.warnings.iter().find(|w| w.text.starts_with("model.conf names typo:model,")).expect("warning");
        assert!(w.text.contains("file does not exist") && w.text.contains("gemma4:e2b-8k stays loaded"), "{w}");
        // A minute later: still the old model, no second pull of the same name, nothing unloaded.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let s = rig.state();
        assert_eq!((s.stage, s.model.as_deref()), (Stage::Ready, Some("gemma4:e2b-8k")));
        assert_eq!(rig.api.loaded.borrow().as_deref(), Some("gemma4:e2b-8k"));
        // Fixing the name switches.
        rig.write_conf("OLLAMA_MODEL=llama3.2:3b\n");
        rig.until("switched after the fix", |s| ready(s) && s.model.as_deref() == Some("llama3.2:3b") && s.warnings.is_empty()).await;
        rig.signals.shutdown.cancel();
    });
    r.expect("no exit");
    assert!(!calls.borrow().iter().any(|c| c.contains("typo")), "typo:model never reached the preload: {:?}", calls.borrow());
    assert!(rig.api.load_log().iter().all(|(m, _)| m != "typo:model"));
}

/// Under systemd the keepalive unit does the re-warms; its reports (keepalive.json) count in
/// the supervisor's one back-off. Before, every eviction restarted the keepalive at once (the
/// supervisor never heard of the re-warms, and each restarted keepalive started counting from
/// zero): a client evicting every few seconds got a reload every residency check, for ever.
#[tokio::test(start_paused = true)]
async fn under_systemd_the_keepalives_rewarms_count_in_the_one_backoff() {
    let rig = Rig::new();
    let (backend, _tx) = FakeBackend::new(LauncherKind::Systemd);
    let (calls, reports) = (backend.calls.clone(), backend.reports.clone());
    let kicks = || calls.borrow().iter().filter(|c| *c == "keepalive_now").count();
    let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
        rig.until("ready", ready).await;
        for n in 1..=2 {
            *rig.api.loaded.borrow_mut() = Some("llama3.2:3b".into());
            let t0 = Instant::now();
            while kicks() < n {
                assert!(t0.elapsed() < Duration::from_secs(60), "eviction {n} not repaired: {:?}", calls.borrow());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // The restarted keepalive re-warms and reports it.
            *rig.api.loaded.borrow_mut() = Some("gemma4:e2b-8k".into());
            let ok: Result<crate::ollama::warm::WarmReport, Failure> = Ok(crate::ollama::warm::WarmReport { rewarmed: true, ..Default::default() });
            reports.borrow_mut().push_back(crate::ollama::warm::TickRecord::new(&crate::testing::model("gemma4:e2b-8k"), &ok, n as u64, 0));
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        let s = rig.state();
        assert_eq!(s.rewarm_count, 2, "the keepalive's re-warms are counted: {s:#?}");
        // The third eviction within the hour: said at once, and the keepalive is not kicked.
        *rig.api.loaded.borrow_mut() = Some("llama3.2:3b".into());
        let s = rig.until("not resident", |s| s.stage == Stage::NotResident).await;
        assert!(s.status.contains("after 2 re-warms within the hour"), "{}", s.status);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(kicks(), 2, "no third restart of the keepalive: {:?}", calls.borrow());
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
}

/// Issue 30: `ollama serve` killed in the middle of a long step (a 60-s cold load at boot, a
/// 60-s pull of the next model, the new model's load in a switch) is started again within
/// seconds, not after the step has retried against nothing until its deadline; and the model
/// model.conf names ends up warm.
#[tokio::test(start_paused = true)]
async fn ollama_killed_during_a_long_step_is_started_again_at_once() {
    for point in ["boot load", "pull", "switch load"] {
        let rig = Rig::new();
        let (mut backend, tx) = FakeBackend::new(LauncherKind::Process);
        backend.track_gone = true;
        let (calls, gone) = (backend.calls.clone(), backend.gone.clone());
        let starts = || calls.borrow().iter().filter(|c| *c == "start").count();
        let (r, ()) = tokio::join!(rig.supervisor(backend).run(rig.signals.clone()), async {
            let want = match point {
                "boot load" => {
                    rig.api.load_delay.set(Duration::from_secs(60));
                    rig.until("loading", |s| s.stage == Stage::Preloading).await;
                    "gemma4:e2b-8k"
                }
                "pull" => {
                    rig.until("ready", ready).await;
                    rig.api.pull_delay.set(Duration::from_secs(60));
                    rig.write_conf("OLLAMA_MODEL=qwen3:4b\n");
                    rig.until("pulling", |_| rig.api.pulls.get() == 1).await;
                    "qwen3:4b"
                }
                _ => {
                    rig.until("ready", ready).await;
                    rig.api.load_delay.set(Duration::from_secs(60));
                    rig.write_conf("OLLAMA_MODEL=llama3.2:3b\n");
                    rig.until("switch loading", |_| rig.api.load_log().iter().any(|(m, _)| m == "llama3.2:3b")).await;
                    "llama3.2:3b"
                }
            };
            tokio::time::sleep(Duration::from_secs(16)).await;
            assert_eq!(starts(), 1, "{point}: still the first Ollama");
            *rig.api.loaded.borrow_mut() = None;
            let t = Instant::now();
            FakeBackend::kill(&gone, &tx, "ollama serve exited (signal: 9)");
            // At once after a warm model's Ollama died; 5 s (the announced back-off) when it had
            // not been warm yet. Either way not the 44 s the step had left.
            rig.until(&format!("{point}: started again"), |_| starts() >= 2).await;
            assert!(secs(t) <= 6, "{point}: Ollama started again only after {}s", secs(t));
            rig.api.load_delay.set(Duration::from_secs(1));
            rig.api.pull_delay.set(Duration::from_secs(1));
            rig.until("warm again", |s| ready(s) && s.model.as_deref() == Some(want)).await;
            rig.signals.shutdown.cancel();
        });
        r.expect("ok");
    }
}

/// Issue 30: state.json could not be written during a switch (the disk full, here its directory
/// gone); once writes work again it is brought up to date within a board sample (10 s), not at
/// the next stage change (the 4-minute tick, or never).
#[tokio::test(start_paused = true)]
async fn a_state_write_that_failed_is_made_again_once_it_can_be() {
    let rig = Rig::new();
    let run = rig.dir.path().join("run");
    std::fs::create_dir(&run).expect("mkdir");
    let (backend, _tx) = FakeBackend::new(LauncherKind::Process);
    let mut sup = rig.supervisor(backend);
    sup.state = StateFile::new(Some(&run), LauncherKind::Process);
    let read = || serde_json::from_str::<State>(&std::fs::read_to_string(run.join("state.json")).unwrap_or_default()).unwrap_or_default();
    let (r, ()) = tokio::join!(sup.run(rig.signals.clone()), async {
        while !ready(&read()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A file where the directory was: every write fails, as on a full disk.
        std::fs::remove_dir_all(&run).expect("rm");
        std::fs::write(&run, "").expect("w");
        rig.write_conf("OLLAMA_MODEL=llama3.2:3b\n");
        while rig.api.loaded.borrow().as_deref() != Some("llama3.2:3b") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        std::fs::remove_file(&run).expect("rm");
        std::fs::create_dir(&run).expect("mkdir");
        let t = Instant::now();
        loop {
            let s = read();
            if ready(&s) && s.model.as_deref() == Some("llama3.2:3b") {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "state.json still stale: {s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rig.signals.shutdown.cancel();
    });
    r.expect("ok");
}
