//! The keepalive loop's timing under paused time, against an in-memory fake of the Ollama API
//! (no sockets: paused time and real sockets do not mix).

use jetson_llmd::api::OllamaApi;
use jetson_llmd::config::Settings;
use jetson_llmd::model_name::ModelName;
use jetson_llmd::outcome::Failure;
use jetson_llmd::warm::{self, MemoryRelief};
use ollama_client::{CreateRequest, Error, KeepAlive, ProgressLine, PsResponse, RunningModel, TagsResponse, VersionResponse};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Up,
    Down,
    Oom,
}

struct Fake {
    load_delay: Duration,
    modes: RefCell<VecDeque<Mode>>,
    loaded: RefCell<bool>,
    loads: RefCell<Vec<(Duration, KeepAlive)>>,
    t0: Instant,
}

impl Fake {
    fn new(modes: &[Mode]) -> Fake {
        Fake { load_delay: Duration::ZERO, modes: RefCell::new(modes.iter().copied().collect()), loaded: RefCell::new(true), loads: RefCell::new(vec![]), t0: Instant::now() }
    }
    fn mode(&self) -> Mode {
        let mut m = self.modes.borrow_mut();
        if m.len() > 1 {
            m.pop_front().unwrap_or(Mode::Up)
        } else {
            m.front().copied().unwrap_or(Mode::Up)
        }
    }
    fn down() -> Error {
        Error::Unreachable { url: "http://127.0.0.1:11434/api/ps".into(), detail: "connection refused".into() }
    }
}

impl OllamaApi for Fake {
    fn url(&self) -> String {
        "http://127.0.0.1:11434/".into()
    }
    async fn version(&self) -> Result<VersionResponse, Error> {
        Ok(VersionResponse { version: "0.30.6".into() })
    }
    async fn tags(&self) -> Result<TagsResponse, Error> {
        Ok(serde_json::from_str(r#"{"models":[{"name":"gemma4:e2b-8k"}]}"#).expect("json"))
    }
    async fn ps(&self) -> Result<PsResponse, Error> {
        match self.mode() {
            Mode::Down => Err(Fake::down()),
            _ if *self.loaded.borrow() => Ok(PsResponse {
                models: vec![serde_json::from_str::<RunningModel>(r#"{"name":"gemma4:e2b-8k","size":100,"size_vram":100,"expires_at":"2318-01-01T00:00:00Z"}"#).expect("json")],
            }),
            _ => Ok(PsResponse::default()),
        }
    }
    async fn load(&self, _model: &str, k: KeepAlive) -> Result<(), Error> {
        self.loads.borrow_mut().push((self.t0.elapsed(), k));
        tokio::time::sleep(self.load_delay).await;
        if self.modes.borrow().front() == Some(&Mode::Oom) {
            *self.loaded.borrow_mut() = false;
            return Err(Error::Api { url: "u".into(), status: 500, message: "llama-server process has terminated: cudaMalloc failed: out of memory".into() });
        }
        *self.loaded.borrow_mut() = true;
        Ok(())
    }
    async fn pull(&self, _m: &str, _p: &mut dyn FnMut(&ProgressLine)) -> Result<(), Error> {
        Ok(())
    }
    async fn create(&self, _r: &CreateRequest, _p: &mut dyn FnMut(&ProgressLine)) -> Result<(), Error> {
        Ok(())
    }
}

struct NoRelief;
impl MemoryRelief for NoRelief {
    fn drop_caches(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn model() -> ModelName {
    ModelName::parse("gemma4:e2b-8k").expect("valid")
}

#[tokio::test(start_paused = true)]
async fn pings_every_four_minutes_with_keep_alive_forever() {
    let fake = Fake::new(&[Mode::Up]);
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let mut ticks = 0;
    let s = Settings::default();
    warm::keepalive_loop(&fake, &s, model, &NoRelief, &cancel, |t| {
        assert!(t.ok, "{}", t.detail);
        ticks += 1;
        if ticks == 4 {
            c2.cancel();
        }
    }, None)
    .await
    .expect("cancelled cleanly");
    let loads = fake.loads.borrow();
    let at: Vec<u64> = loads.iter().map(|(d, _)| d.as_secs()).collect();
    assert_eq!(at, vec![0, 240, 480, 720]);
    assert!(loads.iter().all(|(_, k)| *k == KeepAlive::Forever));
}

#[tokio::test(start_paused = true)]
async fn unreachable_ollama_is_retried_with_capped_backoff_and_never_crashes() {
    // One entry per /api/ps call: a good tick asks twice (before and after the load), a tick
    // against a dead server once.
    let mut modes = vec![Mode::Up, Mode::Up];
    modes.extend(std::iter::repeat_n(Mode::Down, 7));
    modes.extend([Mode::Up, Mode::Up]);
    let fake = Fake::new(&modes);
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let t0 = Instant::now();
    let mut at = Vec::new();
    let mut failures = Vec::new();
    warm::keepalive_loop(&fake, &Settings::default(), model, &NoRelief, &cancel, |t| {
        at.push(t0.elapsed().as_secs());
        failures.push(t.consecutive_failures);
        if t.ok && at.len() > 1 {
            c2.cancel();
        }
    }, None)
    .await
    .expect("ok");
    // 0: ok; then 240: down, +5, +10, +20, +40, +80, +160 (capped at the 240 s interval), then up.
    assert_eq!(at, vec![0, 240, 245, 255, 275, 315, 395, 555, 795]);
    assert_eq!(failures, vec![0, 1, 2, 3, 4, 5, 6, 7, 0]);
}

#[tokio::test(start_paused = true)]
async fn out_of_memory_ends_the_loop_with_reboot_required_instead_of_looping() {
    let fake = Fake::new(&[Mode::Oom]);
    *fake.loaded.borrow_mut() = false;
    let cancel = CancellationToken::new();
    let mut ticks = 0;
    let r = warm::keepalive_loop(&fake, &Settings::default(), model, &NoRelief, &cancel, |_| ticks += 1, None).await;
    assert!(matches!(r, Err(Failure::RebootRequired { .. })), "{r:?}");
    assert_eq!(ticks, 1);
    assert_eq!(fake.loads.borrow().len(), 2, "one load, one retry after drop_caches, then stop");
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_is_fed_between_pings() {
    let fake = Fake::new(&[Mode::Up]);
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let pets = std::cell::Cell::new(0u32);
    let pet = || pets.set(pets.get() + 1);
    let mut ticks = 0;
    warm::keepalive_loop(&fake, &Settings::default(), model, &NoRelief, &cancel, |_| {
        ticks += 1;
        if ticks == 2 {
            c2.cancel();
        }
    }, Some((Duration::from_secs(30), &pet as &dyn Fn())))
    .await
    .expect("ok");
    // One 240 s wait between the two pings, fed every 30 s.
    assert_eq!(pets.get(), 8);
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_is_fed_during_a_long_rewarm() {
    // A cold re-warm on the board takes 30-70 s; WatchdogSec=120 must not kill it midway.
    let mut fake = Fake::new(&[Mode::Up]);
    fake.load_delay = Duration::from_secs(100);
    *fake.loaded.borrow_mut() = false;
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let pet_times = RefCell::new(Vec::new());
    let t0 = Instant::now();
    let pet = || pet_times.borrow_mut().push(t0.elapsed().as_secs());
    warm::keepalive_loop(&fake, &Settings::default(), model, &NoRelief, &cancel, |_| c2.cancel(), Some((Duration::from_secs(30), &pet as &dyn Fn())))
        .await
        .expect("ok");
    assert_eq!(*pet_times.borrow(), vec![30, 60, 90], "fed every 30 s while the 100 s load ran");
}
