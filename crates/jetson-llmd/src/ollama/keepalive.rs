//! `jetson-llmd keepalive` (ollama-keepalive.service): one tick every interval, following
//! model.conf, re-warming an evicted model, feeding the watchdog while it waits or works.

use super::warm::{self, TickRecord};
use super::OllamaApi;
use crate::conf::{modelconf, ModelName, Settings};
use crate::failure::Failure;
use crate::host::memory::MemoryRelief;
use crate::host::notify::{guarded, Notifier};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where the loop reports.
pub struct Reporting<'a, N: Notifier> {
    pub notify: &'a N,
    /// WATCHDOG=1 period (half of WatchdogSec=), if any.
    pub watchdog: Option<Duration>,
    /// Where keepalive.json (the last ping, for `status`) goes.
    pub state_dir: Option<&'a Path>,
}

/// Runs until cancelled (Ok) or a terminal failure (reboot required, model on the CPU).
/// model.conf is re-read before every tick; an invalid file keeps the last good model.
#[allow(clippy::too_many_arguments)]
pub async fn run<A, R, N>(api: &A, settings: &Settings, model_conf: &Path, mut model: ModelName, relief: &R, report: Reporting<'_, N>, cancel: &CancellationToken, mut on_tick: impl FnMut(&TickRecord)) -> Result<(), Failure>
where
    A: OllamaApi,
    R: MemoryRelief,
    N: Notifier,
{
    let mut failures = 0u32;
    let mut rewarms = 0u64;
    // A keepalive restarted (by the supervisor, to re-warm now, or by systemd) goes on with
    // the back-off its predecessor recorded: a restart must not reset the count of re-warms.
    let mut evictions = match report.state_dir {
        Some(dir) => match crate::records::state::read_keepalive(dir).await {
            Ok(Some(last)) if last.model == model.as_str() => {
                rewarms = last.rewarm_count;
                warm::EvictionBackoff::from_history(&last.recent_rewarms)
            }
            _ => warm::EvictionBackoff::default(),
        },
        None => warm::EvictionBackoff::default(),
    };
    loop {
        let chosen = match report.state_dir {
            Some(dir) => crate::records::state::chosen_model(dir).await,
            None => None,
        };
        match chosen {
            // The supervisor decides (a switch in progress or fallen back); follow it.
            Some(m) if m != model => {
                tracing::info!("the supervisor keeps {m} now; following it");
                model = m;
            }
            Some(_) => {}
            None => match modelconf::read(model_conf).await {
                Ok(c) if c.model != model => {
                    tracing::info!("model.conf now names {}; following it", c.model);
                    model = c.model;
                }
                Ok(_) => {}
                Err(e) => tracing::error!("{e}; keeping {model}"),
            },
        }
        let what = format!("keeping {model} warm");
        let tick = async {
            if let Some(dir) = report.state_dir {
                crate::host::bench_mark::until_done(dir, crate::host::bench_mark::AT_MOST).await;
            }
            warm::tick(api, settings, &model, relief).await
        };
        let Some(result) = guarded(tick, report.notify, report.watchdog, cancel, Some((warm::STILL_WAITING, &what))).await else {
            return Ok(());
        };
        match &result {
            Ok(r) => {
                failures = 0;
                if r.rewarmed {
                    rewarms += 1;
                }
                evictions.record(r.rewarmed);
            }
            Err(_) => failures += 1,
        }
        let mut rec = TickRecord::new(&model, &result, rewarms, failures);
        rec.note = evictions.describe(settings.keepalive_interval);
        rec.recent_rewarms = evictions.history();
        if let Some(n) = &rec.note {
            tracing::warn!("keepalive: {n}");
        }
        on_tick(&rec);
        if let Some(dir) = report.state_dir {
            crate::records::state::write_keepalive(dir, &rec).await;
        }
        if let Err(f @ (Failure::RebootRequired { .. } | Failure::OnCpu { .. })) = result {
            return Err(f);
        }
        let wait = if failures == 0 { evictions.wait(settings.keepalive_interval) } else { warm::backoff(failures, settings.retry_max_backoff.min(settings.keepalive_interval)) };
        if !rec.ok {
            tracing::warn!("keepalive: {} (failure {failures} in a row; next try in {})", rec.detail, humantime::format_duration(wait));
        }
        let until = Instant::now() + wait;
        if guarded(tokio::time::sleep_until(until), report.notify, report.watchdog, cancel, None).await.is_none() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{model, FakeApi, FakeNotify, FakeRelief, Mode};
    use ollama_client::KeepAlive;

    struct Rig {
        dir: tempfile::TempDir,
        notify: FakeNotify,
        cancel: CancellationToken,
    }

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().expect("tmp");
            std::fs::write(dir.path().join("model.conf"), "OLLAMA_MODEL=gemma4:e2b-8k\n").expect("w");
            Rig { dir, notify: FakeNotify::starting_now(), cancel: CancellationToken::new() }
        }

        async fn run(&self, api: &FakeApi, watchdog: Option<Duration>, on_tick: impl FnMut(&TickRecord)) -> Result<(), Failure> {
            let report = Reporting { notify: &self.notify, watchdog, state_dir: Some(self.dir.path()) };
            run(api, &Settings::default(), &self.dir.path().join("model.conf"), model("gemma4:e2b-8k"), &FakeRelief::default(), report, &self.cancel, on_tick).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_every_four_minutes_with_keep_alive_forever() {
        let rig = Rig::new();
        let api = FakeApi::default().with_loaded("gemma4:e2b-8k");
        let mut ticks = 0;
        rig.run(&api, None, |t| {
            assert!(t.ok, "{}", t.detail);
            ticks += 1;
            if ticks == 4 {
                rig.cancel.cancel();
            }
        })
        .await
        .expect("cancelled cleanly");
        let at: Vec<u64> = api.loads.borrow().iter().map(|(d, ..)| d.as_secs()).collect();
        assert_eq!(at, vec![0, 240, 480, 720]);
        assert!(api.load_log().iter().all(|(_, k)| *k == KeepAlive::Forever));
        let last: TickRecord = serde_json::from_slice(&std::fs::read(rig.dir.path().join("keepalive.json")).expect("keepalive.json")).expect("typed");
        assert!(last.ok);
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_ollama_is_retried_with_capped_backoff_and_never_crashes() {
        // One entry per /api/ps call: a good tick asks twice (before and after the load), a tick
        // against a dead server once.
        let mut modes = vec![Mode::Up, Mode::Up];
        modes.extend(std::iter::repeat_n(Mode::Down, 7));
        modes.extend([Mode::Up, Mode::Up]);
        let api = FakeApi::new(&modes).with_loaded("gemma4:e2b-8k");
        let rig = Rig::new();
        let t0 = Instant::now();
        let (mut at, mut failures) = (Vec::new(), Vec::new());
        rig.run(&api, None, |t| {
            at.push(t0.elapsed().as_secs());
            failures.push(t.consecutive_failures);
            if t.ok && at.len() > 1 {
                rig.cancel.cancel();
            }
        })
        .await
        .expect("ok");
        // 0: ok; then 240: down, +5, +10, +20, +40, +80, +160 (capped at the 240 s interval), then up.
        assert_eq!(at, vec![0, 240, 245, 255, 275, 315, 395, 555, 795]);
        assert_eq!(failures, vec![0, 1, 2, 3, 4, 5, 6, 7, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_memory_ends_the_loop_with_reboot_required_instead_of_looping() {
        let rig = Rig::new();
        let api = FakeApi::new(&[Mode::Oom]);
        let mut ticks = 0;
        let r = rig.run(&api, None, |_| ticks += 1).await;
        assert!(matches!(r, Err(Failure::RebootRequired { .. })), "{r:?}");
        assert_eq!(ticks, 1);
        assert_eq!(api.loads.borrow().len(), 2, "one load, one retry after drop_caches, then stop");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_fed_between_pings_and_during_a_long_rewarm() {
        let rig = Rig::new();
        // A cold re-warm on the board takes 30-70 s; WatchdogSec=120 must not kill it midway.
        let api = FakeApi::default();
        api.load_delay.set(Duration::from_secs(100));
        let mut ticks = 0;
        rig.run(&api, Some(Duration::from_secs(30)), |_| {
            ticks += 1;
            if ticks == 2 {
                rig.cancel.cancel();
            }
        })
        .await
        .expect("ok");
        let pets: Vec<u64> = rig.notify.pets.borrow().iter().map(|d| d.as_secs()).collect();
        // 30, 60, 90 during the first 100 s load; every 30 s of the 240 s wait (100 to 340 s);
        // 370, 400, 430 during the second tick (the fake takes 100 s for every load).
        assert_eq!(pets, vec![30, 60, 90, 130, 160, 190, 220, 250, 280, 310, 370, 400, 430]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_evicting_the_model_is_not_fought_every_interval() {
        let rig = Rig::new();
        let api = FakeApi::default().with_loaded("gemma4:e2b-8k");
        let t0 = Instant::now();
        let mut at = Vec::new();
        let mut notes = Vec::new();
        rig.run(&api, None, |t| {
            at.push(t0.elapsed().as_secs());
            notes.push(t.note.is_some());
            // Another client takes the memory after every ping.
            *api.loaded.borrow_mut() = Some("llama3.2:3b".into());
            if at.len() == 7 {
                rig.cancel.cancel();
            }
        })
        .await
        .expect("ok");
        // 0 (warm), then re-warms at 240, 480, 720 (the third in an hour: wait 480 s), 1200
        // (wait 960 s), 2160 (wait 1920 s), 4080: never a reload every 4 minutes for ever.
        assert_eq!(at, [0, 240, 480, 720, 1200, 2160, 4080]);
        assert_eq!(notes, [false, false, false, true, true, true, true]);
    }

    /// Under systemd the supervisor restarts the keepalive to re-warm at once; the restarted
    /// one must go on with its predecessor's count, or every eviction would be a reload.
    #[tokio::test(start_paused = true)]
    async fn a_restarted_keepalive_goes_on_with_the_recorded_backoff() {
        let rig = Rig::new();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        let before = TickRecord { recent_rewarms: vec![now - 100, now - 50, now - 7200], rewarm_count: 2, ..TickRecord::new(&model("gemma4:e2b-8k"), &Err(Failure::Cancelled), 2, 0) };
        crate::records::state::write_keepalive(rig.dir.path(), &before).await;
        // Evicted again: the first tick of the new process re-warms (the third in the hour).
        let api = FakeApi::default();
        let t0 = Instant::now();
        let mut seen = Vec::new();
        rig.run(&api, None, |t| {
            seen.push((t0.elapsed().as_secs(), t.rewarmed, t.note.is_some(), t.rewarm_count, t.recent_rewarms.len()));
            *api.loaded.borrow_mut() = None;
            if seen.len() == 2 {
                rig.cancel.cancel();
            }
        })
        .await
        .expect("ok");
        assert_eq!(seen, [(0, true, true, 3, 3), (480, true, true, 4, 4)], "backed off at once, the hour-old re-warm forgotten");
        let last: TickRecord = serde_json::from_slice(&std::fs::read(rig.dir.path().join("keepalive.json")).expect("r")).expect("typed");
        assert_eq!(last.recent_rewarms.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_terminal_failure_is_recorded_typed_for_the_supervisor() {
        let rig = Rig::new();
        let api = FakeApi::new(&[Mode::Oom]);
        let r = rig.run(&api, None, |_| {}).await;
        assert!(matches!(r, Err(Failure::RebootRequired { .. })), "{r:?}");
        let last: TickRecord = serde_json::from_slice(&std::fs::read(rig.dir.path().join("keepalive.json")).expect("r")).expect("typed");
        assert!(matches!(last.failure, Some(crate::failure::Reported::RebootRequired { .. })), "{last:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn follows_model_conf_and_keeps_the_last_good_model_on_a_bad_edit() {
        let rig = Rig::new();
        let api = FakeApi::default().with_loaded("gemma4:e2b-8k");
        let conf = rig.dir.path().join("model.conf");
        let mut seen = Vec::new();
        rig.run(&api, None, |t| {
            seen.push(t.model.clone());
            match seen.len() {
                1 => std::fs::write(&conf, "OLLAMA_MODEL=llama3.2:3b\n").expect("w"),
                2 => std::fs::write(&conf, "OLLAMA_MODEL=\n").expect("w"),
                _ => rig.cancel.cancel(),
            }
        })
        .await
        .expect("ok");
        assert_eq!(seen, ["gemma4:e2b-8k", "llama3.2:3b", "llama3.2:3b"]);
    }
}
