//! `jetson-llmd gpu-check`: the GPU verdict from Ollama's log.

use super::{cmdline, print_json, settings, Global};
use anyhow::Context;
use jetson_llmd::failure::{code, Failure};
use jetson_llmd::host::{fs, journal, systemd::OLLAMA};
use jetson_llmd::ollama::discovery;
use std::path::PathBuf;

/// The GPU verdict a running supervisor holds (state.json), for when the journal has none.
async fn supervisor_verdict(g: &Global, settings: &jetson_llmd::conf::Settings) -> Option<discovery::GpuReport> {
    let dir = jetson_llmd::host::rooted(&g.root, &settings.state_dir);
    let s = jetson_llmd::records::state::StateFile::read(&dir).await.ok().flatten()?;
    s.gpu.filter(|r| r.discovered)
}

pub async fn run(g: &Global, log: Option<PathBuf>) -> anyhow::Result<i32> {
    let settings = settings(g).await?;
    let lines: Vec<String> = match &log {
        // A log that cannot be read is a usage problem (exit 2), not a verdict on the GPU.
        Some(p) => match fs::read_text(p, fs::cap::LOG).await {
            Ok(t) => t.lines().map(str::to_string).collect(),
            Err(e) => return Err(Failure::Config(format!("{e}; pass a saved log of Ollama (journalctl -u ollama -b > ollama.log)")).into()),
        },
        None => match journal::this_boot(OLLAMA).await {
            Ok(l) => l,
            // Under the process launcher Ollama's output goes to the supervisor, not the
            // journal: its last verdict (below) is what there is.
            Err(e) if supervisor_verdict(g, &settings).await.is_some() => {
                tracing::debug!("ollama.service's journal: {e}");
                Vec::new()
            }
            Err(e) => return Err(e).context("cannot read ollama.service's journal; pass a saved log with --log FILE"),
        },
    };
    let cl = cmdline(&g.root).await;
    let host = discovery::HostFacts { cmdline: cl.as_deref(), jetpack6_libs: discovery::jetpack6_libs(&g.root, &settings.ollama_bin) };
    let mut r = discovery::analyze_on(&lines, &settings.expected_compute, &host);
    let mut from_state = false;
    if !r.discovered && log.is_none() {
        if let Some(v) = supervisor_verdict(g, &settings).await {
            r = v;
            from_state = true;
        }
    }
    if g.json {
        print_json(&r)?;
    } else {
        println!("{}", jetson_llmd::text::clean(&r.summary()));
        if from_state {
            println!("(the supervisor's last verdict from Ollama's output, state.json: ollama.service's journal has no discovery line)");
        }
        if let Some(e) = &r.evidence {
            println!("evidence: {}", jetson_llmd::text::clean(e));
        }
        if r.oom {
            println!("out of memory seen: {}", jetson_llmd::text::clean(r.oom_line.as_deref().unwrap_or("")));
        }
    }
    // The codes every command uses: 5 for Ollama on the CPU, 1 when discovery has not been
    // logged (nothing to judge yet).
    Ok(if r.as_expected {
        code::OK
    } else if r.discovered {
        code::ON_CPU
    } else {
        code::FAILED
    })
}
