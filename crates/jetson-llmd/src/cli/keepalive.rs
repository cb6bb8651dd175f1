//! `jetson-llmd keepalive` (ollama-keepalive.service).

use super::{context, model_from_conf, print_json, Global};
use anyhow::Context;
use jetson_llmd::conf::config::check_bounds;
use jetson_llmd::failure::{code, Failure};
use jetson_llmd::host::memory::DropCaches;
use jetson_llmd::host::notify::{watchdog_period, Notifier, SdNotify};
use jetson_llmd::host::rooted;
use jetson_llmd::host::signals::Signals;
use jetson_llmd::ollama::{keepalive, warm};
use std::time::Duration;

pub async fn run(g: &Global, interval: Option<Duration>, once: bool) -> anyhow::Result<i32> {
    let mut ctx = context(g).await?;
    if let Some(i) = interval {
        ctx.settings.keepalive_interval = check_bounds("keepalive_interval", i).map_err(|e| Failure::Config(format!("--interval: {e}")))?;
    }
    let relief = DropCaches::under(&ctx.root);
    let model = model_from_conf(&ctx).await?;
    if once {
        let result = warm::tick(&ctx.client, &ctx.settings, &model, &relief).await;
        // The ping is recorded like the loop's, so `status` shows it (failed ones too).
        let rec = warm::TickRecord::new(&model, &result, u64::from(result.as_ref().is_ok_and(|r| r.rewarmed)), u32::from(result.is_err()));
        jetson_llmd::records::state::write_keepalive(&rooted(&ctx.root, &ctx.settings.state_dir), &rec).await;
        let r = result.with_context(|| format!("keepalive ping of {model} through {}", ctx.client.base_url()))?;
        if ctx.json {
            print_json(&r)?;
        } else {
            println!("{} warm: {}% on the GPU{}", r.model, r.gpu_percent, if r.rewarmed { " (re-warmed: it had been unloaded)" } else { "" });
        }
        return Ok(code::OK);
    }
    let signals = Signals::install();
    let notify = SdNotify;
    let state_dir = rooted(&ctx.root, &ctx.settings.state_dir);
    let mut ready = false;
    let report = keepalive::Reporting { notify: &notify, watchdog: watchdog_period(), state_dir: Some(&state_dir) };
    keepalive::run(&ctx.client, &ctx.settings, &ctx.paths.model_conf, model, &relief, report, &signals.shutdown, |t| {
        // Ready once the first ping has run (whatever its result: the loop is working).
        if !ready {
            notify.ready();
            ready = true;
        }
        notify.status(&t.detail);
        if ctx.json {
            if let Ok(s) = serde_json::to_string(t) {
                println!("{s}");
            }
        } else if t.ok {
            tracing::info!("keepalive: {}", t.detail);
        }
    })
    .await?;
    Ok(code::OK)
}
