//! `jetson-llmd uninstall`: stop and disable the units, remove what install put there. Models
//! (the ollama user's home) and /etc files the user edited stay unless `--purge`.

use super::install::{connect, need_root};
use super::{print_json, Global};
use jetson_llmd::failure::code;
use jetson_llmd::host::{accounts, rooted};
use jetson_llmd::install::apply::{unedited, CACHE};
use jetson_llmd::install::plan::{JETSON_LLMD_BIN, OLLAMA_HOME, UNIT_DIR};

/// Where Ollama keeps models for the ollama user (OLLAMA_MODELS' default under its home).
const MODELS: &str = "/usr/share/ollama/.ollama/models";
use jetson_llmd::install::services::Services;
use jetson_llmd::install::state::{self, InstallState};
use jetson_llmd::install::tree::Store;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, serde::Serialize)]
struct Step {
    action: &'static str,
    path: String,
}

pub async fn run(g: &Global, purge: bool, dry_run: bool, no_systemd: bool) -> anyhow::Result<i32> {
    let facts = jetson_llmd::install::detect::gather(&g.root).await;
    if !dry_run {
        need_root(&facts, "uninstall")?;
    }
    let st = InstallState::load(&g.root).await?;
    let store = Store::new(&g.root);
    let mut steps = Vec::new();
    let mut step = |action, path: &str| steps.push(Step { action, path: path.to_string() });
    let units = ["jetson-llmd.service", "ollama-keepalive.service", "ollama-preload.service"];
    let ours_ollama_unit = st.files.contains_key(&format!("{UNIT_DIR}/ollama.service"));
    for (path, _) in st.files.iter().filter(|(p, _)| p.starts_with(UNIT_DIR) || p.as_str() == JETSON_LLMD_BIN) {
        step("remove", path);
    }
    for path in st.files.keys().filter(|p| p.starts_with("/etc/") && !p.starts_with(UNIT_DIR)) {
        if purge || unedited(&g.root, path, &st).await {
            step("remove", path);
        } else {
            step("keep (edited)", path);
        }
    }
    if store.dir().exists() {
        step("remove", &format!("{} ({} and {})", jetson_llmd::install::tree::STORE, jetson_llmd::install::tree::BIN, jetson_llmd::install::tree::LIB));
    }
    if purge {
        // Only what is there, as for the models below.
        for p in [CACHE, "/var/lib/jetson-llmd"].into_iter().filter(|p| rooted(&g.root, Path::new(p)).exists()) {
            step("remove", p);
        }
        if st.created_user && rooted(&g.root, Path::new(OLLAMA_HOME)).exists() {
            step("remove user ollama and its models in", OLLAMA_HOME);
        }
    } else if rooted(&g.root, Path::new(MODELS)).exists() {
        // Only what is there: a plan that lists a path the machine lacks reads as a mistake.
        step("keep (models)", MODELS);
    }
    if dry_run {
        if g.json {
            print_json(&steps)?;
        } else {
            if steps.is_empty() {
                println!("nothing to uninstall on {}: no install record ({}), no Ollama in {}", g.root.display(), state::PATH, jetson_llmd::install::tree::STORE);
                return Ok(code::OK);
            }
            println!("uninstall plan for {}:", g.root.display());
            for s in &steps {
                println!("  {:<14} {}", s.action, s.path);
            }
            println!("(dry run: nothing was changed)");
        }
        return Ok(code::OK);
    }
    if st.current.is_none() && !store.dir().exists() && !steps.iter().any(|s| s.action == "remove" && !s.path.starts_with("/var")) {
        println!("nothing to uninstall: jetson-llmd's install record ({}) is absent", state::PATH);
        return Ok(code::OK);
    }

    let sd = connect(no_systemd, false).await?;
    // From here a signal no longer kills: the removal stops between two steps, and install.json
    // (rewritten only at the end) still lists what is left, so running uninstall again finishes.
    let signals = jetson_llmd::host::signals::Signals::install();
    let interrupted = || {
        let stop = signals.shutdown.is_cancelled();
        if stop {
            eprintln!("error: interrupted by a signal; what is left is still recorded: run `sudo jetson-llmd uninstall{}` again to finish", if purge { " --purge" } else { "" });
        }
        stop
    };
    if let Some(sd) = &sd {
        let mut stop: Vec<&str> = units.to_vec();
        if ours_ollama_unit {
            stop.push("ollama.service");
        }
        for u in &stop {
            if let Err(e) = sd.stop(u, Duration::from_secs(60)).await {
                eprintln!("warning: stopping {u}: {e}");
            }
        }
        let _ = sd.disable(&stop).await;
    }
    for s in &steps {
        if s.action != "remove" {
            continue;
        }
        if interrupted() {
            return Ok(code::FAILED);
        }
        let p = rooted(&g.root, Path::new(&s.path));
        if s.path.starts_with('/') && !s.path.contains(' ') {
            let r = if p.is_dir() { tokio::fs::remove_dir_all(&p).await } else { tokio::fs::remove_file(&p).await };
            match r {
                Ok(()) => println!("removed {}", s.path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("warning: {}: {e}", s.path),
            }
        }
    }
    let _ = tokio::fs::remove_dir(rooted(&g.root, Path::new(&format!("{UNIT_DIR}/ollama.service.d")))).await;
    if interrupted() {
        return Ok(code::FAILED);
    }
    if store.dir().exists() {
        store.remove_all().map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("removed Ollama ({})", jetson_llmd::install::tree::STORE);
    }
    if interrupted() {
        return Ok(code::FAILED);
    }
    if purge && st.created_user {
        match accounts::delete_user(&g.root, "ollama").await {
            Ok(()) => println!("removed user ollama"),
            Err(e) => eprintln!("warning: {e}"),
        }
        let home = rooted(&g.root, Path::new(OLLAMA_HOME));
        if tokio::fs::remove_dir_all(&home).await.is_ok() {
            println!("removed {OLLAMA_HOME} (models)");
        }
    }
    if let Some(sd) = &sd {
        let _ = sd.daemon_reload().await;
    }
    if !purge {
        // Remember only what stays: whether install made the ollama user (a later --purge
        // removes it) and the hashes of the kept files (a re-install still knows they are yours).
        let kept = InstallState {
            created_user: st.created_user,
            files: st.files.iter().filter(|(p, _)| rooted(&g.root, Path::new(p.as_str())).exists() && !p.starts_with(UNIT_DIR) && p.as_str() != JETSON_LLMD_BIN).map(|(p, h)| (p.clone(), h.clone())).collect(),
            ..Default::default()
        };
        if let Err(e) = kept.save(&g.root).await {
            eprintln!("warning: {}: {e}", state::path(&g.root).display());
        }
        if rooted(&g.root, Path::new(MODELS)).exists() {
            println!("kept: models in {MODELS} and the /etc files you edited (--purge removes them)");
        } else {
            println!("kept: the /etc files you edited (--purge removes them)");
        }
    }
    Ok(code::OK)
}
