//! `jetson-llmd status`: works unprivileged. `--watch` redraws it in place on a terminal
//! (the seed watched jtop, tegrastats and htop side by side for this).

use super::{context, print_json, Ctx, Global};
use jetson_llmd::report::status;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

async fn once(ctx: &Ctx) -> status::StatusReport {
    let mut r = status::gather(&ctx.client, &ctx.settings, &ctx.paths.model_conf, &ctx.root).await;
    // Units are read only for the real host: under --root they would describe another system.
    if ctx.root == Path::new("/") {
        r.units = status::units().await;
    }
    r
}

pub async fn run(g: &Global, watch: Option<Duration>) -> anyhow::Result<i32> {
    let ctx = context(g).await?;
    let Some(every) = watch else {
        let r = once(&ctx).await;
        if ctx.json {
            print_json(&r)?;
        } else {
            print!("{}", status::render(&r));
        }
        return Ok(r.exit_code());
    };
    let tty = std::io::stdout().is_terminal();
    loop {
        let r = once(&ctx).await;
        if ctx.json {
            // One JSON document per line: a stream scripts can follow.
            println!("{}", serde_json::to_string(&r)?);
        } else if tty {
            // Home + clear, then the screen: a redraw in place, no scrollback flood.
            print!("\x1b[H\x1b[2J{}\n  (every {}; Ctrl-C to stop)\n", status::render(&r), humantime::format_duration(every));
        } else {
            println!("--- {}", jetson_llmd::records::state::now());
            print!("{}", status::render(&r));
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(r.exit_code()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}
