//! SIGTERM/SIGINT end the process promptly; SIGHUP re-reads the configuration (what
//! `systemctl reload` sends with ExecReload=kill -HUP $MAINPID), it never kills.

use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Shutdown and reload requests, from signals or from tests.
#[derive(Clone, Default)]
pub struct Signals {
    pub shutdown: CancellationToken,
    reload: Arc<Notify>,
}

impl Signals {
    /// Installs the handlers (call once, inside the runtime).
    pub fn install() -> Signals {
        let s = Signals::default();
        let t = s.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup())) else {
                tracing::error!("cannot install signal handlers; SIGTERM will kill without cleanup");
                return;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
                    _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break }
                    _ = hup.recv() => { tracing::info!("SIGHUP: re-reading the configuration"); t.reload.notify_one(); }
                }
            }
            t.shutdown.cancel();
        });
        s
    }

    /// Resolves at the next reload request (one stored if it came while nobody waited).
    pub async fn reloaded(&self) {
        self.reload.notified().await
    }

    pub fn request_reload(&self) {
        self.reload.notify_one();
    }
}
