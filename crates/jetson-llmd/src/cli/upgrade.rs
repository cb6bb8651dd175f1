//! `jetson-llmd upgrade`: a new Ollama beside the current one, switched to, proved on the GPU
//! (the canary), kept or switched back. `--rollback` returns to the previous version by hand.

use super::install::{connect, is_active, need_root, preflight, SourceArgs};
use super::{context, print_json, Global};
use jetson_llmd::failure::code;
use jetson_llmd::host::rooted;
use jetson_llmd::host::systemd::Systemd;
use jetson_llmd::install::apply::{stage_release, Options};
use jetson_llmd::install::canary::{self, Evidence};
use jetson_llmd::install::plan::Request;
use jetson_llmd::install::services::Services;
use jetson_llmd::install::state::{InstallState, LastGood, Release};
use jetson_llmd::install::tree::Store;
use jetson_llmd::records::state::{State, StateFile};
use jetson_llmd::records::Stage;
use std::path::Path;
use std::time::Duration;

pub struct Args {
    pub source: SourceArgs,
    pub rollback: bool,
    pub min_speed: f64,
    pub timeout: Duration,
    pub force: bool,
}

#[derive(serde::Serialize)]
struct Report {
    from: String,
    to: String,
    kept: bool,
    evidence: Option<Evidence>,
    failed: Vec<String>,
    message: String,
}

/// Stops the supervisor, makes `dir` live, restarts Ollama, starts the supervisor again and
/// waits for its verdict.
async fn switch_to(sd: &Systemd, store: &Store, dir: &str, state_dir: &Path, timeout: Duration, quiet: bool) -> anyhow::Result<Option<State>> {
    let old = StateFile::read(state_dir).await.ok().flatten().map(|s| canary::identity(&s));
    sd.stop("jetson-llmd.service", Duration::from_secs(60)).await?;
    store.activate(dir)?;
    for u in ["ollama-preload.service", "ollama-keepalive.service"] {
        let _ = sd.reset_failed(u).await;
    }
    sd.restart("ollama.service", Duration::from_secs(120)).await?;
    sd.queue_start("jetson-llmd.service").await?;
    Ok(canary::wait_for_outcome(state_dir, old, Some(sd), timeout, quiet).await)
}

/// One short generation on the warm model: tok/s from Ollama's own eval counters.
async fn speed(client: &ollama_client::Client, model: &str) -> Option<f64> {
    let mut options = serde_json::Map::new();
    // num_predict is per request: no reload.
    options.insert("num_predict".into(), 64.into());
    let req = ollama_client::GenerateRequest { model: model.into(), prompt: Some("Say hello from the Jetson.".into()), stream: Some(true), keep_alive: None, options: Some(options) };
    client.generate(&req, |_| {}).await.ok()?.tokens_per_second()
}

pub async fn run(g: &Global, a: Args) -> anyhow::Result<i32> {
    let facts = preflight(g, a.force).await?;
    need_root(&facts, "upgrade")?;
    let ctx = context(g).await?;
    let mut st = InstallState::load(&g.root).await?;
    let store = Store::new(&g.root);
    let Some(current) = st.current.clone() else {
        anyhow::bail!("no Ollama installed by jetson-llmd here ({}): run `sudo jetson-llmd install` first", jetson_llmd::install::state::PATH);
    };
    let sd = connect(false, false).await?.ok_or_else(|| anyhow::anyhow!("upgrade needs systemd"))?;
    if is_active(Some(&sd), "jetson-llmd.service").await != Some(true) {
        eprintln!("warning: jetson-llmd.service is not running; the canary starts it");
    }
    let state_dir = rooted(&g.root, &ctx.settings.state_dir);
    let quiet = g.quiet || g.json;

    if a.rollback {
        let Some(prev) = st.previous.clone().filter(|p| store.intact(&p.dir)) else {
            anyhow::bail!("no previous Ollama version to roll back to (kept: {})", store.versions().join(", "));
        };
        if !quiet {
            eprintln!("rolling back: Ollama {} -> {}", current.version, prev.version);
        }
        let s = switch_to(&sd, &store, &prev.dir, &state_dir, a.timeout, quiet).await?;
        st.previous = Some(current.clone());
        st.current = Some(prev.clone());
        st.save(&g.root).await?;
        let stage = s.as_ref().map(|s| s.stage);
        let message = format!("Ollama {} is live again; {}", prev.version, s.as_ref().map(|s| format!("{}: {}", s.stage, jetson_llmd::text::clean(&s.status))).unwrap_or_else(|| "no word from the supervisor yet".into()));
        return finish(g, Report { from: current.version, to: prev.version, kept: true, evidence: None, failed: vec![], message }, if stage == Some(Stage::Ready) { code::OK } else { code::FAILED });
    }

    let wanted = a.source.wanted()?;
    let req = Request { root: g.root.clone(), ollama: Some(wanted), model: None, self_exe: None, systemd: true, start: true };
    // From here a signal no longer kills: a download stops at once, and a canary interrupted
    // midway switches back to the version that was live (never a half-proven Ollama left live).
    let signals = jetson_llmd::host::signals::Signals::install();
    let (new, _) = stage_release(&req, &st, &Options { quiet, limits: Default::default(), cancel: signals.shutdown.clone() }).await?;
    if new.dir == current.dir && store.live_ok() {
        return finish(g, Report { from: current.version.clone(), to: new.version, kept: true, evidence: None, failed: vec![], message: format!("Ollama {} is already installed; nothing to do", current.version) }, code::OK);
    }
    if !quiet {
        eprintln!("canary: switching Ollama {} -> {} and proving it on the GPU (up to {})", current.version, new.version, humantime::format_duration(a.timeout));
    }
    let t0 = std::time::Instant::now();
    let s = tokio::select! {
        s = switch_to(&sd, &store, &new.dir, &state_dir, a.timeout, quiet) => s,
        _ = signals.shutdown.cancelled() => {
            eprintln!("interrupted: switching back to Ollama {}", current.version);
            let back = switch_to(&sd, &store, &current.dir, &state_dir, a.timeout, quiet).await;
            let message = match back {
                Ok(_) => format!("upgrade interrupted; Ollama {} is live again (the new version stays unpacked; run the upgrade again to prove it)", current.version),
                Err(e) => format!("upgrade interrupted, and switching back to Ollama {} failed: {e}; run `sudo jetson-llmd upgrade --rollback`", current.version),
            };
            return finish(g, Report { from: current.version, to: new.version, kept: false, evidence: None, failed: vec!["interrupted".into()], message }, code::FAILED);
        }
    };
    let mut evidence = match &s {
        Ok(Some(s)) => Evidence::from_state(s, &ctx.settings.expected_compute),
        Ok(None) => {
            Evidence { stage: Stage::Unknown, status: "no word from the supervisor".into(), gpu: false, compute: None, expected_compute: ctx.settings.expected_compute, libdirs: None, gpu_percent: None, tok_s: None, model: None, cpu_reason: None }
        }
        Err(e) => Evidence { stage: Stage::SystemdError, status: e.to_string(), gpu: false, compute: None, expected_compute: ctx.settings.expected_compute, libdirs: None, gpu_percent: None, tok_s: None, model: None, cpu_reason: None },
    };
    if evidence.stage == Stage::Ready {
        if let Some(m) = &evidence.model {
            evidence.tok_s = speed(&ctx.client, m).await;
        }
    }
    // The last good figure: the last canary's, else the last `jetson-llmd bench` of this model
    // (measured on the version that is live now).
    let from_bench = || async {
        let b = jetson_llmd::host::fs::read_capped(&state_dir.join("bench.json"), jetson_llmd::host::fs::cap::STATE).await.ok()?;
        let rows: Vec<jetson_llmd::report::bench::Row> = serde_json::from_slice(&b).ok()?;
        let m = evidence.model.as_ref()?;
        let r = rows.into_iter().find(|r| &r.model == m && r.tok_s_median > 0.0)?;
        Some(LastGood { dir: current.dir.clone(), version: current.version.clone(), tok_s: r.tok_s_median, model: r.model, at: "jetson-llmd bench".into() })
    };
    let baseline = match st.last_good.clone() {
        Some(l) => Some(l),
        None => from_bench().await,
    };
    let failed = canary::judge(&evidence, baseline.as_ref(), a.min_speed);
    if failed.is_empty() {
        st.previous = Some(current.clone());
        st.current = Some(new.clone());
        if let (Some(t), Some(m)) = (evidence.tok_s, &evidence.model) {
            st.last_good = Some(LastGood { dir: new.dir.clone(), version: new.version.clone(), tok_s: t, model: m.clone(), at: jetson_llmd::records::state::now() });
        }
        let keep = [new.dir.as_str(), current.dir.as_str()];
        store.prune(&keep);
        st.save(&g.root).await?;
        let message = format!(
            "Ollama {} passed the canary in {:.0} s and is live ({}, {:.1} tok/s); `sudo jetson-llmd upgrade --rollback` returns to {}",
            new.version,
            t0.elapsed().as_secs_f64(),
            evidence.status,
            evidence.tok_s.unwrap_or(0.0),
            current.version
        );
        return finish(g, Report { from: current.version, to: new.version, kept: true, evidence: Some(evidence), failed, message }, code::OK);
    }
    // Back to the version that worked; the new one is removed (it failed on this board).
    if !quiet {
        for f in &failed {
            eprintln!("canary failed: {f}");
        }
        eprintln!("switching back to Ollama {}", current.version);
    }
    let back = switch_to(&sd, &store, &current.dir, &state_dir, a.timeout, quiet).await;
    if store.current().as_deref() == Some(current.dir.as_str()) && new.dir != current.dir && Some(&new.dir) != st.previous.as_ref().map(|p: &Release| &p.dir) {
        let _ = tokio::fs::remove_dir_all(store.version_dir(&new.dir)).await;
    }
    let back_msg = match &back {
        Ok(Some(s)) if s.stage == Stage::Ready => format!("Ollama {} is live and warm again", current.version),
        Ok(Some(s)) => format!("Ollama {} is live again, but {}: {}", current.version, s.stage, jetson_llmd::text::clean(&s.status)),
        Ok(None) => format!("Ollama {} is live again; the supervisor has not reported yet", current.version),
        Err(e) => format!("switching back to Ollama {} failed: {e}; run `sudo jetson-llmd upgrade --rollback`", current.version),
    };
    let message = format!("Ollama {} failed the canary ({}); {back_msg}", new.version, failed.join("; "));
    finish(g, Report { from: current.version, to: new.version, kept: false, evidence: Some(evidence), failed, message }, code::FAILED)
}

fn finish(g: &Global, r: Report, c: i32) -> anyhow::Result<i32> {
    if g.json {
        print_json(&r)?;
    } else if c == code::OK {
        println!("{}", r.message);
    } else {
        eprintln!("error: {}", r.message);
    }
    Ok(c)
}
