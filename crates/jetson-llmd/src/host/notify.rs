//! sd_notify: READY=1, STATUS=, WATCHDOG=1, RELOADING=1. A no-op when NOTIFY_SOCKET is unset.

/// Where the supervisor reports readiness and status (a fake records it in tests).
pub trait Notifier: Clone {
    fn ready(&self);
    fn status(&self, text: &str);
    fn watchdog(&self);
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SdNotify;

impl Notifier for SdNotify {
    fn ready(&self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
    fn status(&self, text: &str) {
        let t = crate::text::one_line(text);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&t)]);
    }
    fn watchdog(&self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
    }
}

/// Half the watchdog interval systemd gave us, if any.
pub fn watchdog_period() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Awaits `fut` unless `cancel` fires first (None), sending WATCHDOG=1 every `period` meanwhile.
/// For long steps (a cold load takes 30-70 s, a pull much longer): each has its own deadline,
/// so a hang is still caught, just not by the watchdog. Says every `still.0` what it is still
/// doing (`still.1`), so a long wait is never silent.
pub async fn guarded<F: std::future::Future, N: Notifier>(fut: F, notify: &N, period: Option<std::time::Duration>, cancel: &tokio_util::sync::CancellationToken, still: Option<(std::time::Duration, &str)>) -> Option<F::Output> {
    use tokio::time::{sleep_until, Instant};
    tokio::pin!(fut);
    let t0 = Instant::now();
    let far = std::time::Duration::from_secs(86400 * 365);
    let mut next_pet = t0 + period.unwrap_or(far);
    let mut next_word = t0 + still.map_or(far, |s| s.0);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            _ = cancel.cancelled() => return None,
            _ = sleep_until(next_pet) => {
                notify.watchdog();
                next_pet = Instant::now() + period.unwrap_or(far);
            }
            _ = sleep_until(next_word) => {
                if let Some((every, what)) = still {
                    tracing::info!("still {what} ({}s so far)", t0.elapsed().as_secs());
                    next_word = Instant::now() + every;
                }
            }
        }
    }
}
