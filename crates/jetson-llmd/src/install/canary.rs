//! The upgrade canary. Ollama releases have broken Jetsons before (CPU fallback after 0.5.7,
//! garbage output in 0.11, memory after 0.32.2), so a new version only stays if it proves itself
//! on this board: the supervisor, restarted on it, must reach `ready` (GPU discovered with the
//! expected compute capability from the JetPack 6 libraries, the configured model warm at 100 %
//! on the GPU), and a short generation must be at least `min_speed` of the last good figure.
//! Otherwise the previous version is switched back and re-warmed.

use super::services::Services;
use super::state::LastGood;
use crate::conf::ExpectedCompute;
use crate::records::state::{State, StateFile};
use crate::records::Stage;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evidence {
    pub stage: Stage,
    pub status: String,
    pub gpu: bool,
    pub compute: Option<String>,
    pub expected_compute: ExpectedCompute,
    pub libdirs: Option<String>,
    pub gpu_percent: Option<u8>,
    pub tok_s: Option<f64>,
    pub model: Option<String>,
    /// Why discovery ended on the CPU, and what that rests on (the GPU verdict's cause and
    /// evidence), when it did.
    pub cpu_reason: Option<String>,
}

impl Evidence {
    pub fn from_state(s: &State, expected_compute: &ExpectedCompute) -> Evidence {
        Evidence {
            stage: s.stage,
            status: crate::text::clean(&s.status),
            gpu: s.gpu.as_ref().is_some_and(|g| g.gpu),
            compute: s.gpu.as_ref().and_then(|g| g.compute.clone()),
            expected_compute: *expected_compute,
            libdirs: s.gpu.as_ref().and_then(|g| g.libdirs.clone()),
            gpu_percent: s.warm.as_ref().map(|w| w.gpu_percent),
            tok_s: None,
            model: s.model.clone(),
            cpu_reason: s.gpu.as_ref().and_then(|g| {
                let why = g.cpu_fallback_reason.as_deref()?;
                Some(match &g.evidence {
                    Some(e) => format!("{why} [{e}]"),
                    None => why.to_string(),
                })
            }),
        }
    }
}

/// Every check that failed, in words; empty means the version passed.
pub fn judge(e: &Evidence, last_good: Option<&LastGood>, min_speed: f64) -> Vec<String> {
    let mut failed = Vec::new();
    if e.stage != Stage::Ready {
        failed.push(format!("the model did not get warm on the GPU: {} ({})", e.stage, e.status));
    }
    if e.expected_compute.is_cpu() {
        // A host without a GPU (expected_compute = "cpu"): reaching ready is the proof.
    } else if !e.gpu || e.compute.as_deref() != Some(e.expected_compute.to_string().as_str()) {
        failed.push(format!(
            "GPU discovery: {} (expected a CUDA GPU with compute {})",
            match (&e.compute, e.gpu, &e.cpu_reason) {
                (Some(c), true, _) => format!("compute {c}"),
                (_, _, Some(why)) => format!("this Ollama would run on the CPU: {why}"),
                _ => "no CUDA GPU; Ollama would run on the CPU".into(),
            },
            e.expected_compute
        ));
    } else if e.libdirs.as_deref().is_some_and(|l| !l.contains("cuda_jetpack6")) {
        failed.push(format!("GPU discovery used {:?}, not the JetPack 6 libraries (cuda_jetpack6)", e.libdirs.as_deref().unwrap_or("")));
    }
    if e.stage == Stage::Ready && e.gpu_percent != Some(100) && !e.expected_compute.is_cpu() {
        failed.push(format!("the model is {}% on the GPU, not 100%", e.gpu_percent.unwrap_or(0)));
    }
    match (e.tok_s, last_good.filter(|l| Some(&l.model) == e.model.as_ref())) {
        (None, _) if e.stage == Stage::Ready => failed.push("the test generation returned no speed figure".into()),
        (Some(t), Some(l)) if t < l.tok_s * min_speed => failed.push(format!("{t:.1} tok/s is below {:.0}% of the last good {:.1} tok/s (Ollama {})", min_speed * 100.0, l.tok_s, l.version)),
        _ => {}
    }
    failed
}

/// Which supervisor wrote a state: pid and start time (pids alone repeat, and from outside a
/// container they are another namespace's).
pub fn identity(s: &State) -> (u32, String) {
    (s.pid, s.started_at.to_string())
}

/// Waits for a supervisor other than `old` to reach a stage that decides the canary, or for
/// its unit to die. A state the unit no longer backs counts as decided.
pub async fn wait_for_outcome<S: Services>(state_dir: &Path, old: Option<(u32, String)>, sd: Option<&S>, limit: Duration, quiet: bool) -> Option<State> {
    let t0 = tokio::time::Instant::now();
    let mut said = t0;
    loop {
        if let Ok(Some(s)) = StateFile::read(state_dir).await {
            if Some(identity(&s)) != old && s.pid != 0 {
                let decided = matches!(s.stage, Stage::Ready | Stage::CpuFallback | Stage::RebootRequired | Stage::DoesNotFit | Stage::PartlyOnGpu | Stage::ConfigInvalid | Stage::PreloadFailed | Stage::OllamaFailed);
                if decided {
                    return Some(s);
                }
                if let Some(sd) = sd {
                    if matches!(sd.active_state("jetson-llmd.service").await.as_deref(), Some("failed" | "inactive")) {
                        return Some(s);
                    }
                }
                if !quiet && said.elapsed() >= Duration::from_secs(15) {
                    said = tokio::time::Instant::now();
                    eprintln!("  waiting ({}s): {} {}", t0.elapsed().as_secs(), s.stage, crate::text::clean(&s.status));
                }
            }
        }
        if t0.elapsed() > limit {
            return StateFile::read(state_dir).await.ok().flatten().filter(|s| Some(identity(s)) != old);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Evidence {
        Evidence {
            stage: Stage::Ready,
            status: "ready".into(),
            gpu: true,
            compute: Some("8.7".into()),
            expected_compute: ExpectedCompute::ORIN,
            libdirs: Some("ollama,cuda_jetpack6".into()),
            gpu_percent: Some(100),
            tok_s: Some(20.0),
            model: Some("gemma4:e2b-8k".into()),
            cpu_reason: None,
        }
    }

    fn good(tok_s: f64) -> LastGood {
        LastGood { dir: "0.30.6-x".into(), version: "0.30.6".into(), tok_s, model: "gemma4:e2b-8k".into(), at: String::new() }
    }

    #[test]
    fn canary_table() {
        assert!(judge(&ready(), None, 0.8).is_empty(), "no figure yet: the first one becomes the baseline");
        assert!(judge(&ready(), Some(&good(21.0)), 0.8).is_empty());
        let slow = judge(&Evidence { tok_s: Some(10.0), ..ready() }, Some(&good(21.0)), 0.8);
        assert!(slow.len() == 1 && slow[0].contains("below 80% of the last good 21.0"), "{slow:?}");
        let other_model = LastGood { model: "gemma3:4b".into(), ..good(90.0) };
        assert!(judge(&ready(), Some(&other_model), 0.8).is_empty(), "a figure for another model says nothing");
        let cpu = judge(&Evidence { stage: Stage::CpuFallback, gpu: false, compute: None, gpu_percent: None, tok_s: None, ..ready() }, Some(&good(21.0)), 0.8);
        assert_eq!(cpu.len(), 2, "{cpu:?}");
        assert!(cpu[1].contains("no CUDA GPU"), "{cpu:?}");
        // A new Ollama that drops the board to the CPU is refused with its cause and evidence.
        let why = "Ollama tried its generic CUDA libraries, which were not built for this GPU [log: skipping CUDA device]";
        let cpu = judge(&Evidence { stage: Stage::CpuFallback, gpu: false, compute: None, gpu_percent: None, tok_s: None, cpu_reason: Some(why.into()), ..ready() }, None, 0.8);
        assert!(cpu.iter().any(|f| f.contains("would run on the CPU: Ollama tried its generic CUDA libraries") && f.contains("[log: skipping CUDA device]")), "{cpu:?}");
        let v12 = judge(&Evidence { libdirs: Some("ollama,cuda_v12".into()), ..ready() }, None, 0.8);
        assert!(v12[0].contains("not the JetPack 6 libraries"), "{v12:?}");
        let partly = judge(&Evidence { gpu_percent: Some(72), ..ready() }, None, 0.8);
        assert!(partly[0].contains("72% on the GPU"), "{partly:?}");
        let compute = judge(&Evidence { compute: Some("7.2".into()), ..ready() }, None, 0.8);
        assert!(compute[0].contains("compute 7.2"), "{compute:?}");
    }
}
