//! sd_notify: READY=1, STATUS=, WATCHDOG=1. A no-op when NOTIFY_SOCKET is unset.

pub trait Notifier {
    fn ready(&self);
    fn status(&self, text: &str);
    fn watchdog(&self);
}

pub struct SdNotify;

/// STATUS= is one line of a newline-separated protocol: never let text break out of it.
pub fn one_line(s: &str) -> String {
    crate::gpu::sanitize(&s.replace(['\n', '\r'], " ")).chars().take(400).collect()
}

impl Notifier for SdNotify {
    fn ready(&self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
    fn status(&self, text: &str) {
        let t = one_line(text);
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

/// Awaits `fut`, sending WATCHDOG=1 every `period` meanwhile. For the long steps inside the main
/// loop (a cold load takes 30-70 s, a pull much longer): each has its own deadline, so a hang is
/// still caught, just not by the watchdog.
pub async fn pet_while<F: std::future::Future>(fut: F, period: Option<std::time::Duration>) -> F::Output {
    let Some(period) = period else { return fut.await };
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => { let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]); }
        }
    }
}
