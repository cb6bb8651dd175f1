//! `jetson-llmd switch MODEL`: model.conf edited for you (comments kept, written atomically),
//! memory admission up front, then the supervisor's outcome awaited.

use super::{context, print_json, Global};
use jetson_llmd::conf::{modelconf, ModelName};
use jetson_llmd::failure::{code, Failure};
use jetson_llmd::host::{fs, liveness, rooted, Liveness};
use jetson_llmd::ollama::fit;
use jetson_llmd::records::state::{chosen_model, StateFile};
use jetson_llmd::records::Stage;
use jetson_llmd::records::WarningKind;
use std::time::Duration;
use tokio::time::Instant;

#[derive(serde::Serialize)]
struct Outcome {
    model: String,
    switched: bool,
    /// This run wrote model.conf (false when it already named the model): for scripts and
    /// Ansible's changed_when.
    changed: bool,
    stage: Option<Stage>,
    message: String,
}

pub async fn run(g: &Global, model: &str, no_wait: bool, timeout: Option<Duration>) -> anyhow::Result<i32> {
    let ctx = context(g).await?;
    let new = ModelName::parse(model).map_err(|e| Failure::Config(e.to_string()))?;
    let state_dir = rooted(&ctx.root, &ctx.settings.state_dir);
    let path = &ctx.paths.model_conf;
    let current = match chosen_model(&state_dir).await {
        Some(m) => Some(m),
        None => modelconf::read(path).await.ok().map(|c| c.model),
    };
    if let Some(cur) = &current {
        if *cur != new {
            // Refuse before touching the file: the supervisor would refuse too, later and quieter.
            if let Some(why) = fit::admission(&ctx.client, &ctx.settings, &ctx.root, cur, &new).await {
                return finish(&ctx, Outcome { model: new.to_string(), switched: false, changed: false, stage: None, message: why }, code::FAILED);
            }
        }
    }
    let before = match fs::read_capped(path, fs::cap::MODEL_CONF).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(Failure::Config(e.to_string()).into()),
    };
    let after = modelconf::with_model(&before, &new);
    let changed = after != before;
    if changed {
        if let Err(e) = fs::write_atomic(path, after.clone(), 0o644).await {
            // The hint fits the cause: sudo only helps a permission problem (a full disk or a
            // read-only /etc is not one).
            let hint = write_hint(e.kind());
            return Err(anyhow::Error::new(e).context(format!("cannot write {}{hint}", path.display())));
        }
        eprintln!("{}: OLLAMA_MODEL={new}", path.display());
    }
    if no_wait {
        return finish(&ctx, Outcome { model: new.to_string(), switched: false, changed, stage: None, message: if changed { "model.conf written; not waiting".into() } else { format!("model.conf already names {new}; not waiting") } }, code::OK);
    }
    let limit = timeout.unwrap_or(ctx.settings.load_timeout + Duration::from_secs(120));
    let t0 = Instant::now();
    let mut said = t0;
    // The system bus, connected the first time the unit's state is asked (None: not tried yet).
    let mut bus = None;
    loop {
        let state = StateFile::read(&state_dir).await.ok().flatten();
        let Some(s) = state.filter(|s| liveness(s.pid) == Liveness::Running) else {
            // Just started (install queues the start and returns): the supervisor writes its
            // state within a second or two of systemd starting it. Not a unit waiting to be
            // restarted after a crash: that is said now, not after the whole timeout.
            if t0.elapsed() < limit.min(Duration::from_secs(60)) && starting(&mut bus).await {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            let msg = if changed {
                "model.conf is written, but no jetson-llmd supervisor is running to switch (sudo systemctl start jetson-llmd)".to_string()
            } else {
                format!("model.conf names {new}, but no jetson-llmd supervisor is running to keep it warm (sudo systemctl start jetson-llmd; journalctl -u jetson-llmd says why it stopped)")
            };
            return finish(&ctx, Outcome { model: new.to_string(), switched: false, changed, stage: None, message: msg }, code::FAILED);
        };
        if s.model.as_deref() == Some(new.as_str()) && s.stage == Stage::Ready {
            let msg = if changed || current.as_ref() != Some(&new) {
                format!("switched to {new} in {:.1} s: {}", t0.elapsed().as_secs_f64(), jetson_llmd::text::clean(&s.status))
            } else {
                format!("{new} is already the model kept warm; nothing to do: {}", jetson_llmd::text::clean(&s.status))
            };
            return finish(&ctx, Outcome { model: new.to_string(), switched: true, changed, stage: Some(s.stage), message: msg }, code::OK);
        }
        if let Some(w) = s.warnings.iter().find(|w| w.kind == WarningKind::ModelRefused && w.model.as_deref() == Some(new.as_str())) {
            // The supervisor kept (or went back to) the model it has loaded: model.conf goes back
            // with it, so the file names what runs and no edit is left pending. Only the line we
            // wrote is undone: a file someone edited since is theirs.
            let mut message = jetson_llmd::text::clean(&w.text);
            if after != before && !before.is_empty() {
                match fs::read_capped(path, fs::cap::MODEL_CONF).await {
                    Ok(now) if now == after => match fs::write_atomic(path, before.clone(), 0o644).await {
                        Ok(()) => message = format!("{message}; {} is back as it was", path.display()),
                        Err(e) => message = format!("{message}; putting {} back failed too ({e}): edit it by hand", path.display()),
                    },
                    _ => message = format!("{message}; {} changed since this command wrote it, so it is left as it is", path.display()),
                }
            }
            return finish(&ctx, Outcome { model: new.to_string(), switched: false, changed, stage: Some(s.stage), message }, code::FAILED);
        }
        if matches!(s.stage, Stage::RebootRequired | Stage::CpuFallback | Stage::DoesNotFit | Stage::PartlyOnGpu) {
            let c = match s.stage {
                Stage::RebootRequired => code::REBOOT_REQUIRED,
                Stage::CpuFallback => code::ON_CPU,
                _ => code::FAILED,
            };
            return finish(&ctx, Outcome { model: new.to_string(), switched: false, changed, stage: Some(s.stage), message: jetson_llmd::text::clean(&s.status) }, c);
        }
        if t0.elapsed() > limit {
            let msg = format!("no outcome within {}; the supervisor says: {}", humantime::format_duration(limit), jetson_llmd::text::clean(&s.status));
            return finish(&ctx, Outcome { model: new.to_string(), switched: false, changed, stage: Some(s.stage), message: msg }, code::FAILED);
        }
        if said.elapsed() >= Duration::from_secs(15) {
            said = Instant::now();
            match &s.switching {
                Some(p) => eprintln!("still switching ({}s): {}", t0.elapsed().as_secs(), jetson_llmd::text::clean(p)),
                None => eprintln!("still switching ({}s): {} {}", t0.elapsed().as_secs(), s.stage, jetson_llmd::text::clean(&s.status)),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// jetson-llmd.service is being started (activating, not in auto-restart after a crash); false
/// without a system bus. `bus` keeps the connection between calls.
async fn starting(bus: &mut Option<Option<jetson_llmd::host::systemd::Systemd>>) -> bool {
    if bus.is_none() {
        *bus = Some(jetson_llmd::host::systemd::Systemd::system().await.ok());
    }
    match bus.as_ref().and_then(Option::as_ref) {
        Some(sd) => sd.info("jetson-llmd.service").await.is_ok_and(|i| i.active_state == "activating" && i.sub_state != "auto-restart"),
        None => false,
    }
}

fn finish(ctx: &super::Ctx, o: Outcome, c: i32) -> anyhow::Result<i32> {
    if ctx.json {
        print_json(&o)?;
    } else if c == code::OK {
        println!("{}", o.message);
    } else {
        eprintln!("error: {}", o.message);
    }
    Ok(c)
}

/// What to do about a model.conf that cannot be written: sudo only for a permission problem.
fn write_hint(kind: std::io::ErrorKind) -> &'static str {
    match kind {
        std::io::ErrorKind::PermissionDenied => " (run with sudo)",
        std::io::ErrorKind::StorageFull => " (the disk is full: free some space; model.conf is unchanged)",
        std::io::ErrorKind::ReadOnlyFilesystem => " (the filesystem is read-only)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    /// Issue 30: a full disk was answered with "run with sudo?".
    #[test]
    fn sudo_is_suggested_only_for_permissions() {
        use std::io::ErrorKind;
        assert_eq!(super::write_hint(ErrorKind::PermissionDenied), " (run with sudo)");
        for k in [ErrorKind::StorageFull, ErrorKind::ReadOnlyFilesystem, ErrorKind::NotFound] {
            assert!(!super::write_hint(k).contains("sudo"), "{k:?}");
        }
        assert!(super::write_hint(ErrorKind::StorageFull).contains("disk is full"));
    }
}
