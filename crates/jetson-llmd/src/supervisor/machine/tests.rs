//! The decider without I/O: every row of the transition table, and the decisions that matter
//! most (back-off, terminal failures, a switch that cannot start), as events in, effects out.

use super::*;
use crate::testing::model;

fn rules(launcher: LauncherKind) -> Rules {
    Rules { launcher, retry_max_backoff: Duration::from_secs(300), keepalive_interval: Duration::from_secs(240), on_reboot_required: OnRebootRequired::Report }
}

fn a() -> ModelName {
    model("gemma4:e2b-8k")
}

fn b() -> ModelName {
    model("llama3.2:3b")
}

const CONF_A: &[u8] = b"OLLAMA_MODEL=gemma4:e2b-8k\n";

fn machine(launcher: LauncherKind) -> Machine {
    Machine::new(rules(launcher), Some(CONF_A.to_vec())).0
}

/// A machine in the named phase, as the events that lead there would leave it.
fn machine_in(phase: &str) -> Machine {
    let mut m = machine(LauncherKind::Systemd);
    m.phase = match phase {
        "Down" => Phase::Down,
        "Booting" => Phase::Booting,
        "Waiting" => Phase::Waiting(Action::RetryWarm),
        "WaitingForConfig" => Phase::Waiting(Action::WaitForConfig),
        "Warming" => Phase::Warming,
        "Warm" => Phase::Warm(a()),
        "Preparing" => Phase::Preparing { from: a(), to: b() },
        "Switching" => Phase::Switching { from: a(), to: b() },
        "Stopped" => Phase::Stopped,
        other => panic!("no phase {other}"),
    };
    if matches!(m.phase, Phase::Warm(_) | Phase::Preparing { .. } | Phase::Switching { .. }) {
        m.shown = Stage::Ready;
        m.last_good = Some(a());
    }
    m
}

fn conf(text: &str) -> Event {
    let parsed = match text.strip_prefix("OLLAMA_MODEL=").map(str::trim) {
        Some(name) if !name.is_empty() => Ok(model(name)),
        _ => Err("model.conf: line 1: OLLAMA_MODEL is empty".to_string()),
    };
    Event::Conf { bytes: Some(text.as_bytes().to_vec()), parsed, force: false }
}

fn event(label: &str) -> Event {
    let s = || "x".to_string();
    match label {
        "Due(Boot)" => Event::Due(Due::Boot),
        "Due(Warm)" => Event::Due(Due::Warm),
        "Due(Tick)" => Event::Due(Due::Tick),
        "OllamaUp" => Event::OllamaUp,
        "OllamaDown" => Event::OllamaDown("ollama serve exited".into()),
        "Shutdown" => Event::Shutdown,
        "Warmed" => Event::Warmed(a()),
        "Failed(restart)" => Event::Failed(Failure::OllamaStart(s())),
        "Failed(retry)" => Event::Failed(Failure::LoadFailed { model: s(), detail: s() }),
        "Failed(wait-for-config)" => Event::Failed(Failure::DoesNotFit { model: s(), detail: s() }),
        "Failed(terminal)" => Event::Failed(Failure::GpuMissing { reason: s() }),
        "Residency" => Event::Residency(Ok(Residency::Pinned)),
        "RunnerGone" => Event::RunnerGone("(llama-server, pid 4242) was killed by signal 9 (SIGKILL)".into()),
        "RunnerChecked" => Event::RunnerChecked { replaced: false },
        "Conf(valid)" | "Conf(new model)" => conf("OLLAMA_MODEL=llama3.2:3b\n"),
        "Conf(same model)" => conf("# edited\nOLLAMA_MODEL=gemma4:e2b-8k\n".strip_prefix("# edited\n").unwrap_or_default()),
        "Conf(invalid)" => conf("OLLAMA_MODEL=\n"),
        "Prepared(ok)" => Event::Prepared(Ok(())),
        "Prepared(refused)" => Event::Prepared(Err(Block::Refused("does not fit".into()))),
        "Prepared(not present)" => Event::Prepared(Err(Block::Failed(Failure::Missing { model: "llama3.2:3b".into(), detail: "pull model manifest: file does not exist".into() }))),
        "Prepared(unreachable)" => Event::Prepared(Err(Block::Failed(Failure::Unreachable(ollama_client::Error::Unreachable { url: "u".into(), detail: "refused".into() })))),
        "Switched(new or old)" => Event::Switched(Ok(b())),
        other => panic!("no event {other}"),
    }
}

const PHASES: &[&str] = &["Down", "Booting", "Waiting", "WaitingForConfig", "Warming", "Warm", "Preparing", "Switching"];

#[test]
fn the_table_is_what_the_machine_does() {
    for (from, label, to) in TRANSITIONS {
        let froms: Vec<&str> = if *from == "*" { PHASES.to_vec() } else { vec![from] };
        for from in froms {
            let mut m = machine_in(from);
            let effects = m.on(event(label));
            assert_eq!(m.phase.name(), *to, "{from} --{label}--> {to}; effects {effects:?}");
        }
    }
}

#[test]
fn every_phase_answers_shutdown_and_stopped_ignores_everything() {
    for p in PHASES {
        let mut m = machine_in(p);
        let e = m.on(Event::Shutdown);
        assert!(matches!(e.as_slice(), [Effect::Shutdown]), "{p}: {e:?}");
        for label in ["OllamaDown", "Due(Boot)", "Conf(new model)", "Failed(terminal)"] {
            assert!(m.on(event(label)).is_empty(), "{p} then {label}");
        }
    }
}

#[test]
fn the_diagram_in_docs_is_generated_from_the_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/architecture.md");
    let doc = std::fs::read_to_string(path).expect("docs/architecture.md");
    assert!(doc.contains(&mermaid()), "docs/architecture.md lacks the current diagram; paste this between its markers:\n{}", mermaid());
}

fn schedules(e: &[Effect]) -> Vec<(u64, Due)> {
    e.iter().filter_map(|x| if let Effect::Schedule(Some((d, w))) = x { Some((d.as_secs(), *w)) } else { None }).collect()
}

#[test]
fn start_up_boots_at_once_and_a_dead_child_comes_back_at_once_then_with_backoff() {
    let (mut m, first) = Machine::new(rules(LauncherKind::Process), None);
    assert_eq!(schedules(&first), [(0, Due::Boot)]);
    assert!(matches!(m.on(Event::Due(Due::Boot)).as_slice(), [Effect::Run(Step::Boot { last_good: None, keep: None })]));
    m.on(Event::Warmed(a()));
    let mut waits = Vec::new();
    for _ in 0..4 {
        let e = m.on(event("OllamaDown"));
        waits.push(schedules(&e)[0].0);
        assert!(e.iter().any(|x| matches!(x, Effect::Stage(Stage::OllamaDown, t) if t.starts_with("NOT READY: ollama serve exited"))), "{e:?}");
    }
    assert_eq!(waits, [0, 5, 10, 20], "first restart at once, then 5 s doubling");
    let e = m.on(Event::Warmed(a()));
    assert!(!e.iter().any(|x| matches!(x, Effect::NotifyReady)), "READY=1 once per run: {e:?}");
    assert_eq!(schedules(&m.on(event("OllamaDown"))), [(0, Due::Boot)], "warm again resets the backoff");
}

#[test]
fn under_systemd_a_unit_back_up_is_rechecked_at_once_and_restarts_are_counted_once() {
    let mut m = machine_in("Warm");
    let e = m.on(event("OllamaDown"));
    assert!(e.iter().any(|x| matches!(x, Effect::CountOllamaRestart)));
    assert_eq!(schedules(&e), [(5, Due::Boot)]);
    let e = m.on(event("OllamaDown"));
    assert!(!e.iter().any(|x| matches!(x, Effect::CountOllamaRestart)), "already down: {e:?}");
    assert_eq!(schedules(&m.on(Event::OllamaUp)), [(0, Due::Boot)]);
}

#[test]
fn terminal_failures_stop_the_keepalive_then_ollama_then_exit_with_the_failures_code() {
    for (f, stage) in [(Failure::GpuMissing { reason: "x".into() }, Stage::CpuFallback), (Failure::RebootRequired { detail: "x".into() }, Stage::RebootRequired), (Failure::Config("x".into()), Stage::ConfigInvalid)] {
        let mut m = machine_in("Booting");
        let code = f.exit_code();
        let e = m.on(Event::Failed(f));
        match e.as_slice() {
            [Effect::Stage(s, t), Effect::StopKeepalive, Effect::StopOllama, Effect::Exit(f)] => {
                assert_eq!((*s, f.exit_code()), (stage, code));
                assert!(t.starts_with("NOT READY: "), "{t}");
            }
            other => panic!("{other:?}"),
        }
    }
    let mut m = machine_in("Warm");
    m.rules.on_reboot_required = OnRebootRequired::Reboot;
    let e = m.on(Event::Failed(Failure::RebootRequired { detail: "x".into() }));
    assert!(matches!(e.as_slice(), [Effect::Stage(..), Effect::StopKeepalive, Effect::RequestReboot, Effect::StopOllama, Effect::Exit(_)]), "{e:?}");
}

#[test]
fn failed_warms_back_off_capped_by_the_keepalive_interval_and_an_edit_retries_at_once() {
    let mut m = machine_in("Warming");
    let mut waits = Vec::new();
    for _ in 0..8 {
        let e = m.on(event("Failed(retry)"));
        waits.push(schedules(&e)[0].0);
        m.on(Event::Due(Due::Warm));
    }
    assert_eq!(waits, [5, 10, 20, 40, 80, 160, 240, 240]);
    m.on(event("Failed(retry)"));
    assert_eq!(schedules(&m.on(conf("OLLAMA_MODEL=llama3.2:3b\n"))), [(0, Due::Warm)]);
    let mut m = machine_in("Booting");
    let e = m.on(event("Failed(wait-for-config)"));
    assert!(e.iter().any(|x| matches!(x, Effect::Schedule(None))), "no timer: only an edit retries: {e:?}");
}

#[test]
fn a_warm_that_failed_because_ollama_did_not_answer_is_retried_within_seconds() {
    // An Ollama still starting (or restarting) refuses connections; polling it costs nothing,
    // while a long back-off keeps the model cold after it is back.
    let mut m = machine_in("Warming");
    let mut waits = Vec::new();
    for _ in 0..6 {
        let e = m.on(Event::Failed(Failure::Unreachable(ollama_client::Error::Unreachable { url: "u".into(), detail: "refused".into() })));
        waits.push(schedules(&e)[0].0);
        m.on(Event::Due(Due::Warm));
    }
    assert_eq!(waits, [5, 10, 10, 10, 10, 10]);
}

#[test]
fn a_timer_left_over_from_a_phase_since_left_does_nothing() {
    for (p, due) in [("Waiting", Due::Tick), ("Warm", Due::Warm), ("Down", Due::Tick), ("Preparing", Due::Tick)] {
        let mut m = machine_in(p);
        assert!(m.on(Event::Due(due)).is_empty(), "{p} {due:?}");
        assert_eq!(m.phase.name(), p);
    }
}

#[test]
fn an_invalid_edit_keeps_the_running_model_and_the_same_bytes_are_no_news() {
    let mut m = machine_in("Warm");
    let e = m.on(event("Conf(invalid)"));
    match e.as_slice() {
        [Effect::Status(s), Effect::ConfWarning(Some(w))] => {
            assert!(w.text.starts_with("model.conf is invalid (keeping gemma4:e2b-8k loaded)"), "{w}");
            assert!(s.contains("keeping gemma4:e2b-8k loaded"), "{s}");
        }
        other => panic!("{other:?}"),
    }
    assert!(m.on(event("Conf(invalid)")).is_empty(), "same bytes again");
    let e = m.on(Event::Conf { bytes: Some(b"OLLAMA_MODEL=\n".to_vec()), parsed: Err("x".into()), force: true });
    assert!(!e.is_empty(), "SIGHUP looks again");
    assert_eq!(m.warm_model(), Some(&a()));
}

#[test]
fn a_switch_prepares_while_the_old_model_stays_then_switches_what_it_admitted() {
    let mut m = machine_in("Warm");
    let e = m.on(conf("OLLAMA_MODEL=llama3.2:3b\n"));
    assert!(matches!(e.last(), Some(Effect::Run(Step::Prepare { from, to })) if *from == a() && *to == b()), "{e:?}");
    // An edit while the step runs is not decided mid-step: the step goes on with what it
    // admitted, and the edit is a new decision once the step is over.
    assert!(m.on(conf("OLLAMA_MODEL=qwen3:4b\n")).is_empty());
    let e = m.on(Event::Prepared(Ok(())));
    assert!(matches!(e.as_slice(), [Effect::Run(Step::Switch { from, to })] if *from == a() && *to == b()), "{e:?}");
    let e = m.on(Event::Switched(Ok(b())));
    assert!(e.iter().any(|x| matches!(x, Effect::Ready(x) if *x == b())), "{e:?}");
    assert_eq!(m.keep(), None, "the switch went through: model.conf decides again");
    let e = m.on(conf("OLLAMA_MODEL=qwen3:4b\n"));
    assert!(matches!(e.last(), Some(Effect::Run(Step::Prepare { from, to })) if *from == b() && to.as_str() == "qwen3:4b"), "the edit made during the switch: {e:?}");
}

#[test]
fn a_name_that_cannot_be_pulled_keeps_the_old_model_until_model_conf_changes() {
    let mut m = machine_in("Warm");
    m.on(conf("OLLAMA_MODEL=typo:model\n"));
    let e = m.on(Event::Prepared(Err(Block::Failed(Failure::Missing { model: "typo:model".into(), detail: "pull model manifest: file does not exist".into() }))));
    match e.as_slice() {
        [Effect::Status(_), Effect::ConfWarning(Some(w))] => {
            assert!(w.text.starts_with("model.conf names typo:model, which could not be made ready (") && w.text.contains("gemma4:e2b-8k stays loaded"), "{w}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.warm_model(), Some(&a()));
    // Ollama restarts meanwhile: the boot keeps the loaded model, not the typo.
    m.on(event("OllamaDown"));
    assert!(matches!(m.on(Event::Due(Due::Boot)).as_slice(), [Effect::Run(Step::Boot { keep: Some(k), .. })] if *k == a()));
    m.on(Event::Warmed(a()));
    // The same file again is no news; a corrected one is a switch.
    assert!(m.on(conf("OLLAMA_MODEL=typo:model\n")).is_empty());
    assert!(matches!(m.on(conf("OLLAMA_MODEL=llama3.2:3b\n")).last(), Some(Effect::Run(Step::Prepare { .. }))));
}

#[test]
fn an_unanswering_ollama_during_a_prepare_retries_the_edit_at_the_next_look() {
    let mut m = machine_in("Warm");
    m.on(conf("OLLAMA_MODEL=llama3.2:3b\n"));
    m.on(event("Prepared(unreachable)"));
    assert_eq!(m.keep(), None);
    assert!(matches!(m.on(conf("OLLAMA_MODEL=llama3.2:3b\n")).last(), Some(Effect::Run(Step::Prepare { .. }))), "the same bytes are new again");
}

#[test]
fn a_switch_that_fell_back_keeps_the_old_model_across_restarts() {
    let mut m = machine_in("Warm");
    m.on(conf("OLLAMA_MODEL=llama3.2:3b\n"));
    m.on(Event::Prepared(Ok(())));
    m.on(Event::Switched(Ok(a())));
    assert_eq!(m.keep(), Some(a()));
    m.on(event("OllamaDown"));
    assert!(matches!(m.on(Event::Due(Due::Boot)).as_slice(), [Effect::Run(Step::Boot { keep: Some(k), .. })] if *k == a()));
}

#[tokio::test(start_paused = true)]
async fn residency_repairs_at_once_twice_then_says_not_resident_and_waits_for_the_backoff() {
    let mut m = machine_in("Warm");
    let gone = || Event::Residency(Ok(Residency::Missing("llama3.2:3b is loaded instead".into())));
    for _ in 0..2 {
        assert!(matches!(m.on(gone()).last(), Some(Effect::KeepaliveNow)));
        let e = m.on(Event::Ticked(Some(true)));
        assert!(e.iter().any(|x| matches!(x, Effect::CountRewarm)));
        tokio::time::advance(Duration::from_secs(8)).await;
    }
    let e = m.on(gone());
    match e.as_slice() {
        [Effect::Stage(Stage::NotResident, t)] => assert!(t.starts_with("NOT READY: gemma4:e2b-8k is gone again") && t.contains("after 2 re-warms"), "{t}"),
        other => panic!("{other:?}"),
    }
    assert!(m.on(gone()).is_empty(), "said once");
    // A model still loaded but unpinned is re-pinned at once whatever the back-off says.
    let e = m.on(Event::Residency(Ok(Residency::Unpinned { expires_at: "soon".into() })));
    assert!(e.iter().any(|x| matches!(x, Effect::Ready(_))) && matches!(e.last(), Some(Effect::KeepaliveNow)), "{e:?}");
    // The process launcher has no separate keepalive: the loop ticks now.
    assert_eq!(schedules(&m.on(Event::NoKeepalive)), [(0, Due::Tick)]);
}

/// Issue 30: the pinned model found running with another context than config.toml's is said
/// and repaired by the keepalive (which creates it again and reloads it).
#[test]
fn a_drifted_context_is_said_and_repaired() {
    let mut m = machine_in("Warm");
    let e = m.on(Event::Residency(Ok(Residency::Drifted { want: 8192, got: 2048 })));
    match e.as_slice() {
        [Effect::Warn(t), Effect::KeepaliveNow] => assert!(t.contains("context 2048") && t.contains("8192"), "{t}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.phase.name(), "Warm");
}

#[test]
fn an_unanswering_ollama_is_not_ready_from_the_second_check_in_a_row_until_it_answers() {
    let mut m = machine_in("Warm");
    let miss = |m: &mut Machine, e: &str| m.on(Event::Residency(Err(e.into())));
    // One unanswered check is a blip: said, still ready.
    let e = miss(&mut m, "Ollama at u did not answer");
    assert!(matches!(e.as_slice(), [Effect::Warn(t)] if t.starts_with("Ollama at u did not answer; still ready")), "{e:?}");
    // An answer in between starts the count again.
    assert!(m.on(Event::Residency(Ok(Residency::Pinned))).is_empty(), "nothing to say: it was still ready");
    assert!(matches!(miss(&mut m, "once more").as_slice(), [Effect::Warn(_)]));
    // Two in a row: not ready.
    let e = miss(&mut m, "Ollama at u did not answer");
    assert!(matches!(e.as_slice(), [Effect::Stage(Stage::OllamaUnreachable, t)] if t == "NOT READY: Ollama at u did not answer"), "{e:?}");
    assert!(miss(&mut m, "again").is_empty(), "said once");
    assert!(matches!(m.on(Event::Residency(Ok(Residency::Pinned))).as_slice(), [Effect::Info(_), Effect::Ready(_)]));
    assert_eq!(m.phase, Phase::Warm(a()), "nothing reloaded");
    // And after a re-warm the count starts from nothing.
    assert!(matches!(miss(&mut m, "x").as_slice(), [Effect::Warn(_)]));
    m.on(Event::Warmed(a()));
    assert!(matches!(miss(&mut m, "y").as_slice(), [Effect::Warn(_)]), "one miss after a warm is a blip again");
}

#[tokio::test(start_paused = true)]
async fn ticks_back_off_when_reloads_keep_happening() {
    let mut m = machine_in("Warm");
    let mut waits = Vec::new();
    for _ in 0..5 {
        let e = m.on(Event::Ticked(Some(true)));
        waits.push(schedules(&e)[0].0);
        tokio::time::advance(Duration::from_secs(60)).await;
    }
    assert_eq!(waits, [240, 240, 480, 960, 1920]);
    let e = m.on(Event::Ticked(None));
    assert!(schedules(&e).is_empty(), "a failed tick's schedule is the failure's: {e:?}");
}

/// Issue 32: Ollama 0.34 lists a model whose runner was killed until a request touches it. The
/// runner watch's word is believed over /api/ps: not ready at once with the cause; after the
/// grace, no runner for the model means a re-warm now, counted once; a residency check saying
/// "pinned" meanwhile does not bring readiness back; a tick whose load went through does.
#[test]
fn a_dead_runner_is_not_ready_at_once_and_api_ps_is_not_believed_until_a_load_ends() {
    let mut m = machine_in("Warm");
    let e = m.on(event("RunnerGone"));
    assert!(e.iter().any(|x| matches!(x, Effect::Stage(Stage::NotResident, t) if t.starts_with("NOT READY: the runner serving gemma4:e2b-8k (llama-server, pid 4242) was killed by signal 9 (SIGKILL)"))), "{e:?}");
    assert!(!e.iter().any(|x| matches!(x, Effect::KeepaliveNow)), "nothing done before the grace: {e:?}");
    assert!(m.on(Event::Residency(Ok(Residency::Pinned))).is_empty(), "/api/ps still lists it: not believed");
    let e = m.on(Event::RunnerChecked { replaced: false });
    assert!(e.iter().any(|x| matches!(x, Effect::KeepaliveNow)) && e.iter().any(|x| matches!(x, Effect::CountRewarm)), "{e:?}");
    assert!(m.on(Event::Residency(Ok(Residency::Pinned))).is_empty(), "still not believed until a load ends");
    let e = m.on(Event::Ticked(Some(false)));
    assert!(e.iter().any(|x| matches!(x, Effect::Ready(_))) && !e.iter().any(|x| matches!(x, Effect::CountRewarm)), "ready again, counted once: {e:?}");
    assert!(m.on(Event::RunnerChecked { replaced: false }).is_empty(), "a stale verdict changes nothing");
}

/// Ollama reloading the model itself (a client's num_ctx straight to it, a re-create) also ends
/// a runner, and a new one for the same file follows: not ready while it loads, not counted as
/// our re-warm, no fight; the next confirmed load says ready.
#[test]
fn a_reload_by_ollama_is_not_counted_or_fought() {
    let mut m = machine_in("Warm");
    m.on(event("RunnerGone"));
    let e = m.on(Event::RunnerChecked { replaced: true });
    assert!(!e.iter().any(|x| matches!(x, Effect::CountRewarm)), "{e:?}");
    assert!(e.iter().any(|x| matches!(x, Effect::KeepaliveNow)), "a confirming ping, which waits for Ollama's load: {e:?}");
    let e = m.on(Event::Ticked(Some(false)));
    assert!(e.iter().any(|x| matches!(x, Effect::Ready(_))), "{e:?}");
}

#[test]
fn runner_deaths_that_keep_coming_back_off_and_are_ignored_outside_warm() {
    let mut m = machine_in("Warm");
    for _ in 0..2 {
        m.on(event("RunnerGone"));
        let e = m.on(Event::RunnerChecked { replaced: false });
        assert!(e.iter().any(|x| matches!(x, Effect::KeepaliveNow)), "{e:?}");
        m.on(Event::Ticked(Some(false)));
    }
    // The third within the hour: said, not ready, and the backed-off tick will reload it.
    m.on(event("RunnerGone"));
    let e = m.on(Event::RunnerChecked { replaced: false });
    assert!(!e.iter().any(|x| matches!(x, Effect::KeepaliveNow)), "{e:?}");
    assert!(e.iter().any(|x| matches!(x, Effect::Stage(Stage::NotResident, t) if t.contains("3 re-warms within the hour"))), "{e:?}");
    assert!(schedules(&e).iter().any(|(s, d)| *d == Due::Tick && *s > 240), "{e:?}");
    for p in ["Down", "Booting", "Warming", "Preparing", "Switching", "Waiting"] {
        assert!(machine_in(p).on(event("RunnerGone")).is_empty(), "{p}: a step or a restart owns the runner then");
    }
}

/// The hostile trial (issue 30.9): model.conf deleted, then replaced by a FIFO. Neither has bytes
/// to compare; the second reason must replace the first, not sit beside a stale one.
#[test]
fn an_unreadable_model_conf_with_a_new_reason_is_a_change() {
    let mut m = machine_in("Warm");
    let gone = |why: &str| Event::Conf { bytes: None, parsed: Err(why.to_string()), force: false };
    let e = m.on(gone("DIR/model.conf: not found"));
    assert!(e.iter().any(|x| matches!(x, Effect::ConfWarning(Some(w)) if w.text.contains("not found"))), "{e:?}");
    assert!(m.on(gone("DIR/model.conf: not found")).is_empty(), "the same reason again: nothing new");
    let e = m.on(gone("DIR/model.conf: is a FIFO, not a regular file"));
    assert!(e.iter().any(|x| matches!(x, Effect::ConfWarning(Some(w)) if w.text.contains("FIFO"))), "{e:?}");
}
