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
