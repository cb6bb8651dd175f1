//! `jetson-llmd preload` (ollama-preload.service): the model warm and pinned, then exit.

use super::{context, model_from_conf, print_json, Global};
use anyhow::Context;
use jetson_llmd::failure::{code, Failure};
use jetson_llmd::host::memory::DropCaches;
use jetson_llmd::host::signals::Signals;
use jetson_llmd::ollama::warm;
use jetson_llmd::records::state::{write_preload, PreloadRecord};

pub async fn run(g: &Global) -> anyhow::Result<i32> {
    let ctx = context(g).await?;
    // Under a running supervisor, its choice (model.conf as it resolved it) is the model.
    let state_dir = jetson_llmd::host::rooted(&ctx.root, &ctx.settings.state_dir);
    let model = match jetson_llmd::records::state::chosen_model(&state_dir).await {
        Some(m) => m,
        None => match model_from_conf(&ctx).await {
            Ok(m) => m,
            Err(f) => {
                record(&state_dir, "", &Err(&f)).await;
                return Err(f.into());
            }
        },
    };
    let relief = DropCaches::under(&ctx.root);
    let signals = Signals::install();
    let work = async {
        tracing::info!("waiting for Ollama's API at {} (up to {})", ctx.client.base_url(), humantime::format_duration(ctx.settings.startup_timeout));
        let version = warm::wait_for_api(&ctx.client, ctx.settings.startup_timeout, &signals.shutdown).await?;
        tracing::info!("Ollama {version} at {}; preloading {model}", ctx.client.base_url());
        let what = format!("loading {model}");
        let n = jetson_llmd::host::notify::SdNotify;
        // SIGTERM ends a pull or load at once (Ollama finishes or drops it on its side).
        jetson_llmd::host::notify::guarded(warm::preload(&ctx.client, &ctx.settings, &model, &relief), &n, None, &signals.shutdown, Some((warm::STILL_WAITING, &what))).await.ok_or(Failure::Cancelled)?
    };
    let result = work.await;
    // The supervisor reads the outcome here, typed (preload.json), whatever the exit code says.
    record(&state_dir, model.as_str(), &result.as_ref()).await;
    let r = match result {
        // A signal is said as it is, not as a preload failure.
        Err(f @ Failure::Cancelled) => return Err(f.into()),
        r => r.with_context(|| format!("preloading {model} through {}", ctx.client.base_url()))?,
    };
    if ctx.json {
        print_json(&r)?;
    } else {
        println!(
            "{} warm: {}% on the GPU, {}{}",
            r.model,
            r.gpu_percent,
            if r.pinned { "pinned (keep_alive -1)" } else { "NOT pinned" },
            r.load_ms.map(|ms| format!(", cold load {:.1} s", ms as f64 / 1000.0)).unwrap_or_else(|| ", was already loaded".into())
        );
    }
    Ok(code::OK)
}

async fn record(state_dir: &std::path::Path, model: &str, result: &Result<&warm::WarmReport, &Failure>) {
    let r = PreloadRecord { at: jetson_llmd::records::Timestamp::now(), model: model.to_string(), report: result.ok().cloned(), failure: result.err().map(|f| f.reported()) };
    write_preload(state_dir, &r).await;
}
