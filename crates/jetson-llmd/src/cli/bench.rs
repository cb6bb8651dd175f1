//! `jetson-llmd bench`: the seed's table, leaving the configured model warm.

use super::{context, model_from_conf, print_json, Global};
use jetson_llmd::conf::ModelName;
use jetson_llmd::failure::{code, Failure};
use jetson_llmd::host::memory::DropCaches;
use jetson_llmd::host::rooted;
use jetson_llmd::ollama::warm;
use jetson_llmd::report::bench;
use std::io::IsTerminal;

pub struct Args {
    pub models: Vec<String>,
    pub prompt: String,
    pub runs: usize,
    pub tokens: u64,
    pub yes: bool,
}

pub async fn run(g: &Global, a: Args) -> anyhow::Result<i32> {
    let ctx = context(g).await?;
    let state_dir = rooted(&ctx.root, &ctx.settings.state_dir);
    let configured = match jetson_llmd::records::state::chosen_model(&state_dir).await {
        Some(m) => m,
        None => model_from_conf(&ctx).await?,
    };
    let mut models = Vec::new();
    for m in &a.models {
        models.push(ModelName::parse(m).map_err(|e| Failure::Config(e.to_string()))?);
    }
    if models.is_empty() {
        models.push(configured.clone());
    }
    let others: Vec<String> = models.iter().filter(|m| **m != configured).map(ToString::to_string).collect();
    if !others.is_empty() && !a.yes {
        let question = format!("benchmarking {} unloads {configured} and loads it again afterwards: on this board every unload/reload risks GPU memory that cannot be allocated until a reboot", others.join(", "));
        if !std::io::stdin().is_terminal() {
            return Err(Failure::Config(format!("{question}; pass --yes to go ahead")).into());
        }
        eprint!("{question}. Continue? [y/N] ");
        let answer = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            std::io::stdin().read_line(&mut s).map(|_| s)
        })
        .await??;
        if !answer.trim().eq_ignore_ascii_case("y") {
            eprintln!("not benchmarking");
            return Ok(code::FAILED);
        }
    }
    // The supervisor and the keepalive stand aside while other models are measured (they would
    // reload the pinned model under the benchmark); the marker goes when this ends.
    let _mark = if others.is_empty() {
        None
    } else {
        match jetson_llmd::host::bench_mark::BenchMark::take(&state_dir).await {
            Ok(m) => {
                eprintln!("the supervisor's residency check and keepalive stand aside until this benchmark ends; {configured} is loaded back afterwards");
                Some(m)
            }
            Err(e) => {
                eprintln!("warning: cannot write {} ({e}): the supervisor may reload {configured} during the benchmark (run with sudo)", state_dir.join("bench.pid").display());
                None
            }
        }
    };
    let mut rows = Vec::new();
    for m in &models {
        eprintln!("benchmarking {m}: a warm-up, then {} runs of {} tokens", a.runs, a.tokens);
        rows.push(bench::model(&ctx.client, &ctx.root, m.as_str(), &a.prompt, a.runs, a.tokens).await?);
    }
    // The configured model stays warm, pinned: the point of this board.
    let loaded = ctx.client.ps().await.map(|p| p.models.iter().any(|x| configured.matches(&x.name))).unwrap_or(false);
    if !loaded {
        eprintln!("loading {configured} back");
    }
    warm::preload(&ctx.client, &ctx.settings, &configured, &DropCaches::under(&ctx.root)).await?;
    if let Ok(text) = serde_json::to_vec_pretty(&rows) {
        if let Err(e) = jetson_llmd::host::fs::write_atomic(&state_dir.join("bench.json"), text, 0o644).await {
            tracing::warn!("cannot keep the result in {}: {e}", state_dir.display());
        }
    }
    if ctx.json {
        print_json(&rows)?;
    } else {
        // Markdown either way: readable on a terminal, pastable into the seed's write-up.
        print!("{}", bench::markdown(&rows));
    }
    Ok(code::OK)
}
