//! Where the supervisor stands ([`Stage`]), and the one policy that maps a failure to the stage
//! it shows and what happens next ([`policy`]). Both launchers go through it, so the same
//! failure means the same stage, exit code and action under either.

use crate::failure::{code, Failure};
pub use crate::records::Stage;

/// What the supervisor does after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start Ollama again (or wait for systemd to bring it back) and run the whole boot
    /// sequence, after a capped backoff.
    RestartOllama,
    /// Ollama is fine; warm the model again after a capped backoff (old model stays loaded).
    RetryWarm,
    /// Nothing a retry fixes; wait until model.conf changes (or SIGHUP).
    WaitForConfig,
    /// Terminal: say why, stop the keepalive, exit with this code (RestartPreventExitStatus=).
    Exit(i32),
}

/// The one mapping from a failure to (stage, next action).
///
/// Decisions (docs/architecture.md): CPU fallback and reboot-required are terminal under both
/// launchers (retrying only loads onto the CPU or fragments GPU memory further); an invalid
/// model.conf with no model running exits 2 at once (`systemctl start` fails with the reason),
/// while an invalid edit later keeps the running model (handled before the policy); a model
/// that does not fit waits for model.conf to change; everything about Ollama's process is
/// retried with backoff.
pub fn policy(f: &Failure) -> (Stage, Action) {
    match f {
        // A request that got no answer: retried as a warm; if Ollama died, its Down event restarts it.
        Failure::Unreachable(_) => (Stage::OllamaUnreachable, Action::RetryWarm),
        Failure::OllamaStart(_) => (Stage::OllamaFailed, Action::RestartOllama),
        Failure::PortInUse { .. } => (Stage::PortInUse, Action::RestartOllama),
        Failure::OllamaDown(_) => (Stage::OllamaDown, Action::RestartOllama),
        Failure::LogUnreadable(_) => (Stage::SystemdError, Action::RestartOllama),
        Failure::Systemd(_) => (Stage::SystemdError, Action::RestartOllama),
        // Shutdown while waiting: the loop stops cleanly; a one-shot command exits 1 (not warm).
        Failure::Cancelled => (Stage::Stopping, Action::Exit(code::FAILED)),
        Failure::Missing { .. } => (Stage::ModelMissing, Action::RetryWarm),
        Failure::LoadFailed { .. } => (Stage::LoadFailed, Action::RetryWarm),
        Failure::NotResident { .. } => (Stage::NotResident, Action::RetryWarm),
        Failure::Preload(_) => (Stage::PreloadFailed, Action::RetryWarm),
        Failure::PartlyOnGpu { .. } => (Stage::PartlyOnGpu, Action::WaitForConfig),
        // Too big is not fragmented: no reboot helps a model that does not fit.
        Failure::DoesNotFit { .. } => (Stage::DoesNotFit, Action::WaitForConfig),
        // Reaches the policy only when there is no last good model to keep (at start-up).
        Failure::Config(_) => (Stage::ConfigInvalid, Action::Exit(code::USAGE)),
        Failure::GpuMissing { .. } | Failure::OnCpu { .. } => (Stage::CpuFallback, Action::Exit(code::ON_CPU)),
        Failure::RebootRequired { .. } => (Stage::RebootRequired, Action::Exit(code::REBOOT_REQUIRED)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure a worker reported (preload.json, keepalive.json) means what the failure itself
    /// means: same stage, same action.
    #[test]
    fn reported_failures_get_the_same_policy() {
        let s = || "x".to_string();
        for f in [
            Failure::RebootRequired { detail: s() },
            Failure::OnCpu { model: s(), hint: s() },
            Failure::PartlyOnGpu { model: s(), percent: 40, min: 100 },
            Failure::DoesNotFit { model: s(), detail: s() },
            Failure::Missing { model: s(), detail: s() },
            Failure::LoadFailed { model: s(), detail: s() },
            Failure::NotResident { model: s() },
            Failure::Unreachable(ollama_client::Error::Unreachable { url: s(), detail: s() }),
        ] {
            let back: Failure = f.reported().into();
            assert_eq!(policy(&back), policy(&f), "{f:?}");
        }
    }

    #[test]
    fn policy_table() {
        let oe = || ollama_client::Error::Unreachable { url: "u".into(), detail: "refused".into() };
        let s = String::new;
        let table: Vec<(Failure, Stage, Action)> = vec![
            (Failure::Unreachable(oe()), Stage::OllamaUnreachable, Action::RetryWarm),
            (Failure::OllamaStart(s()), Stage::OllamaFailed, Action::RestartOllama),
            (Failure::PortInUse { addr: s() }, Stage::PortInUse, Action::RestartOllama),
            (Failure::OllamaDown(s()), Stage::OllamaDown, Action::RestartOllama),
            (Failure::LogUnreadable(s()), Stage::SystemdError, Action::RestartOllama),
            (Failure::Systemd(s()), Stage::SystemdError, Action::RestartOllama),
            (Failure::Cancelled, Stage::Stopping, Action::Exit(1)),
            (Failure::Missing { model: s(), detail: s() }, Stage::ModelMissing, Action::RetryWarm),
            (Failure::LoadFailed { model: s(), detail: s() }, Stage::LoadFailed, Action::RetryWarm),
            (Failure::NotResident { model: s() }, Stage::NotResident, Action::RetryWarm),
            (Failure::Preload(s()), Stage::PreloadFailed, Action::RetryWarm),
            (Failure::PartlyOnGpu { model: s(), percent: 40, min: 100 }, Stage::PartlyOnGpu, Action::WaitForConfig),
            (Failure::DoesNotFit { model: s(), detail: s() }, Stage::DoesNotFit, Action::WaitForConfig),
            (Failure::Config(s()), Stage::ConfigInvalid, Action::Exit(2)),
            (Failure::GpuMissing { reason: s() }, Stage::CpuFallback, Action::Exit(5)),
            (Failure::OnCpu { model: s(), hint: s() }, Stage::CpuFallback, Action::Exit(5)),
            (Failure::RebootRequired { detail: s() }, Stage::RebootRequired, Action::Exit(4)),
        ];
        for (f, stage, action) in table {
            assert_eq!(policy(&f), (stage, action), "{f:?}");
            if let Action::Exit(c) = action {
                assert_eq!(f.exit_code(), c, "{f:?}: the exit code is the failure's own");
            }
        }
    }
}
