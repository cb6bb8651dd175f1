//! `jetson-llmd check`: config.toml and model.conf validated, each problem as file:line.

use super::{paths, print_json, Global};
use jetson_llmd::conf::{config, modelconf};
use jetson_llmd::failure::code;
use serde::Serialize;

#[derive(Serialize)]
struct FileReport<T: Serialize> {
    path: std::path::PathBuf,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct ModelConfValue {
    model: String,
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    config: FileReport<config::Settings>,
    model_conf: FileReport<ModelConfValue>,
}

pub async fn run(g: &Global) -> anyhow::Result<i32> {
    let p = paths(g);
    let ollama = ollama_client::parse_host(&super::ollama_address(g).await).ok();
    let config = match config::load(&p.config).await {
        // What `supervise` would refuse at start is a configuration error here too.
        Ok(s) if s.guard.enabled && ollama.as_ref().is_some_and(|o| jetson_llmd::guard::clashes_with_ollama(s.guard.listen, &o.url)) => {
            let at = ollama.as_ref().map(|o| o.url.to_string()).unwrap_or_default();
            let error = format!("{}: [guard] listen = {} is where Ollama itself listens ({at}): give Ollama a private address, e.g. OLLAMA_HOST=127.0.0.1:11435 in /etc/jetson-llmd/ollama.env", p.config.display(), s.guard.listen);
            FileReport { path: p.config.clone(), ok: false, value: None, error: Some(error) }
        }
        Ok(s) => FileReport { path: p.config.clone(), ok: true, value: Some(s), error: None },
        Err(e) => FileReport { path: p.config.clone(), ok: false, value: None, error: Some(e.to_string()) },
    };
    let model_conf = match modelconf::read(&p.model_conf).await {
        Ok(c) => FileReport { path: p.model_conf.clone(), ok: true, value: Some(ModelConfValue { model: c.model.to_string(), warnings: c.warnings }), error: None },
        Err(e) => FileReport { path: p.model_conf.clone(), ok: false, value: None, error: Some(e.to_string()) },
    };
    let ok = config.ok && model_conf.ok;
    if g.json {
        print_json(&Report { config, model_conf })?;
    } else {
        match &config.error {
            // config.toml is optional: say so rather than "ok" for a file that is not there.
            None if !config.path.exists() => println!("{}: not present: every setting has its default", config.path.display()),
            None => println!("{}: ok", config.path.display()),
            Some(e) => println!("{}", jetson_llmd::text::clean(e)),
        }
        match (&model_conf.value, &model_conf.error) {
            (Some(v), _) => {
                println!("{}: ok ({})", model_conf.path.display(), v.model);
                for w in &v.warnings {
                    println!("{}: warning: {}", model_conf.path.display(), jetson_llmd::text::clean(w));
                }
            }
            (None, Some(e)) => {
                for l in e.lines() {
                    println!("{}", jetson_llmd::text::clean(l));
                }
            }
            _ => {}
        }
    }
    Ok(if ok { code::OK } else { code::USAGE })
}
