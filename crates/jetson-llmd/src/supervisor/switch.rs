//! Switching models (docs/model-switching.md): make the new model present, admit it by memory,
//! unload the old one, load the new one, fall back to the old one; and tell a model that does not
//! fit from memory that cannot be allocated.

use super::backend::Backend;
use super::Supervisor;
use crate::conf::ModelName;
use crate::failure::Failure;
use crate::host::notify::Notifier;
use crate::ollama::{fit, warm, OllamaApi};
use crate::records::state;
use crate::records::{Warning, WarningKind};
use tokio::time::Instant;

use super::machine::Block;

impl<A: OllamaApi, B: Backend, N: Notifier> Supervisor<A, B, N> {
    /// The footprint this model really has here, for the next admission.
    pub(super) async fn record_fit(&self, model: &ModelName, r: &warm::WarmReport, mem_before: Option<u64>) {
        let dir = self.state_dir();
        let mut table = fit::FitTable::load(&dir).await;
        let num_ctx = self.settings.derived(model).and_then(|d| d.num_ctx).map(|n| n.get());
        let mem_after = match mem_before {
            Some(_) => crate::host::memory::mem_available(&self.paths.root).await,
            None => None,
        };
        table.record(fit::Fit { model: model.full(), num_ctx, size: r.size, size_vram: r.size_vram, load_ms: r.load_ms, mem_available_before: mem_before, mem_available_after: mem_after, measured_at: state::now() });
        table.save(&dir).await;
    }

    /// Before `current` is touched: `new` is made present (pull, or create when derived) while
    /// `current` stays warm, then admitted by memory. Err says why the switch must not start.
    pub(super) async fn prepare_switch(&mut self, current: &ModelName, new: &ModelName) -> Result<(), Block> {
        // The pull's progress into state.json as it goes (`switch` and `status` show it); the
        // old model keeps serving meanwhile, so the stage stays what it is.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let present = warm::PROGRESS.scope(tx, warm::ensure_present(&self.api, &self.settings, new));
        tokio::pin!(present);
        let state = &mut self.state;
        let r = loop {
            tokio::select! {
                biased;
                r = &mut present => break r,
                Some(p) = rx.recv() => {
                    state.state.switching = Some(format!("getting {new} ready while {current} serves: {}", crate::text::clip(&crate::text::one_line(&p), 200)));
                    state.save().await;
                }
            }
        };
        if self.state.state.switching.take().is_some() {
            self.state.save().await;
        }
        r.map_err(Block::Failed)?;
        match fit::admission(&self.api, &self.settings, &self.paths.root, current, new).await {
            Some(why) => Err(Block::Refused(why)),
            None => Ok(()),
        }
    }

    /// Too big is not fragmented: an out-of-memory that survived drop_caches means reboot
    /// required only for a model that loaded here before (fit table) or fits its estimate; a
    /// model that never loaded here and does not fit by the estimate simply does not fit.
    pub(super) async fn too_big_or(&self, f: Failure, model: &ModelName) -> Failure {
        let Failure::RebootRequired { detail } = f else { return f };
        let ctx = self.settings.derived(model).and_then(|d| d.num_ctx).map(|n| n.get());
        if fit::FitTable::load(&self.state_dir()).await.get(&model.full(), ctx).is_some() {
            return Failure::RebootRequired { detail };
        }
        let estimate = fit::estimated_need(&self.api, &self.settings, model).await.map(|(need, _)| need);
        let (Some(need), Some(avail)) = (estimate, crate::host::memory::mem_available(&self.paths.root).await) else {
            return Failure::RebootRequired { detail };
        };
        // Whatever else is loaded would be evicted for it: count it as free.
        let others: u64 = self.api.ps().await.map(|p| p.models.iter().map(|m| m.size).sum()).unwrap_or(0);
        match fit::admit(need, Some(avail), others, self.settings.memory_reserve_mib << 20) {
            fit::Verdict::DoesNotFit { missing } => Failure::DoesNotFit { model: model.to_string(), detail: format!("it never loaded on this board, needs ~{} by its estimate and {} are missing ({detail})", fit::gib(need), fit::gib(missing)) },
            _ => Failure::RebootRequired { detail },
        }
    }

    /// The switch protocol, once the new model is present and admitted: the keepalive pauses
    /// (it must not re-warm the old model midway), the old model is unloaded and gone from
    /// /api/ps, the new one loads pinned (out of memory: drop caches once and retry once, in the
    /// preload), and is verified. If it cannot be loaded, the old one is loaded back (the user's
    /// last working state); if that fails too, reboot required. One journal line with the steps.
    pub(super) async fn switch(&mut self, old: &ModelName, new: &ModelName) -> Result<ModelName, Failure> {
        let t0 = Instant::now();
        tracing::info!("switching {old} -> {new}: unloading {old} first (both do not fit in 8 GB)");
        self.backend.stop_keepalive().await;
        warm::unload_and_wait(&self.api, &old.full()).await?;
        let unloaded = t0.elapsed();
        // The model that was made present and admitted, not model.conf read again: an edit made
        // meanwhile (invalid, or a third model) is the next poll's business, after this switch.
        match self.warm_this(new.clone()).await {
            Ok(m) => {
                tracing::info!("switched {old} -> {m} in {:.1} s (unload {:.1} s, load and verify {:.1} s)", t0.elapsed().as_secs_f64(), unloaded.as_secs_f64(), (t0.elapsed() - unloaded).as_secs_f64());
                Ok(m)
            }
            Err(f @ (Failure::Unreachable(_) | Failure::OllamaDown(_) | Failure::Cancelled | Failure::GpuMissing { .. } | Failure::OnCpu { .. } | Failure::Config(_))) => Err(f),
            Err(f) => {
                tracing::error!("{new} could not be loaded ({f}); loading {old} back");
                let _ = warm::unload_and_wait(&self.api, &new.full()).await;
                // Caches were dropped once already for the new model: no second try of that.
                match warm::preload(&self.api, &self.settings, old, &crate::host::memory::NoRelief).await {
                    Ok(r) => {
                        self.record_fit(old, &r, None).await;
                        self.state.state.model = Some(old.to_string());
                        self.state.state.warm = Some(r);
                        if let Err(e) = self.backend.start_keepalive().await {
                            tracing::error!("{e}");
                        }
                        self.conf_warning(Some(Warning::about(WarningKind::ModelRefused, new.as_str(), format!("model.conf names {new}, which could not be loaded ({f}); {old} is loaded again; edit model.conf to try again"))));
                        tracing::info!("switch {old} -> {new} failed after {:.1} s; back on {old}", t0.elapsed().as_secs_f64());
                        Ok(old.clone())
                    }
                    Err(back) if back.is_out_of_memory() || matches!(f, Failure::RebootRequired { .. }) => {
                        Err(Failure::RebootRequired { detail: format!("{new} ran out of memory after drop_caches, and {old} could not be loaded back: {}", oom_detail(&back)) })
                    }
                    Err(back) => Err(back),
                }
            }
        }
    }
}

/// The allocator's own words inside an out-of-memory failure (not our wrapping of them).
fn oom_detail(f: &Failure) -> String {
    match f {
        Failure::RebootRequired { detail } | Failure::DoesNotFit { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}
