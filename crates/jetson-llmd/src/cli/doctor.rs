//! `jetson-llmd doctor`: the host checks, PASS/WARN/FAIL with the fix.

use super::{paths, print_json, settings, Global};
use jetson_llmd::conf::modelconf;
use jetson_llmd::failure::code;
use jetson_llmd::host::{fs, probe, rooted};
use jetson_llmd::ollama::fit::FitTable;
use jetson_llmd::report::doctor::{self, Verdict};
use std::path::Path;
use std::time::Duration;

#[derive(serde::Serialize)]
struct Report {
    checks: Vec<doctor::Check>,
    host: probe::Probes,
}

pub async fn run(g: &Global) -> anyhow::Result<i32> {
    let settings = settings(g).await?;
    let p = paths(g);
    let host = probe::gather(&g.root).await;
    // The address Ollama serves: ollama.env's OLLAMA_HOST (what ollama.service gets), else ours.
    let env_host =
        fs::read_capped(&rooted(&g.root, Path::new("/etc/jetson-llmd/ollama.env")), fs::cap::MODEL_CONF).await.ok().and_then(|b| modelconf::parse_env(&b).ok()).and_then(|e| e.into_iter().rev().find(|e| e.key == "OLLAMA_HOST").map(|e| e.value));
    let address = super::ollama_address(g).await;
    // Without ollama.env, an OLLAMA_HOST in ollama.service or a drop-in (the seed's
    // `Environment="OLLAMA_HOST=0.0.0.0:11434"`) is what Ollama serves; ollama.env, an
    // EnvironmentFile=, overrides it.
    let unit_host = match &env_host {
        Some(_) => None,
        None => jetson_llmd::install::plan::lan_ollama_host(&g.root).await.map(|(a, _)| a),
    };
    let served = ollama_client::parse_host(env_host.as_deref().or(unit_host.as_deref()).unwrap_or(&address)).ok();
    let bound_to_lan = served.as_ref().is_some_and(|h| {
        let bind = h.bind.rsplit_once(':').map_or(h.bind.as_str(), |(a, _)| a).trim_start_matches('[').trim_end_matches(']');
        !matches!(bind.parse::<std::net::IpAddr>(), Ok(ip) if ip.is_loopback()) && bind != "localhost"
    });
    let ollama_version = match ollama_client::parse_host(&address) {
        Ok(h) => {
            let t = ollama_client::Timeouts { connect: Duration::from_secs(1), request: Duration::from_secs(2), ..Default::default() };
            ollama_client::Client::new(h.url, t).version().await.ok().map(|v| v.version)
        }
        Err(_) => None,
    };
    let model = modelconf::read(&p.model_conf).await.ok().map(|c| c.model);
    let footprint = match &model {
        Some(m) => {
            let ctx = settings.derived(m).and_then(|d| d.num_ctx).map(|n| n.get());
            FitTable::load(&rooted(&g.root, &settings.state_dir)).await.get(&m.full(), ctx).map(|f| f.size)
        }
        None => None,
    };
    let c = doctor::Context { ollama_version, ollama_bound_to_lan: bound_to_lan, model_footprint: footprint, model: model.map(|m| m.to_string()), temperature_warn_c: Some(settings.temperature_warn_c) };
    let checks = doctor::checks(&host, &c);
    let failed = checks.iter().any(|c| c.verdict == Verdict::Fail);
    if g.json {
        print_json(&Report { checks, host })?;
    } else {
        print!("{}", doctor::render(&checks));
    }
    Ok(if failed { code::FAILED } else { code::OK })
}
