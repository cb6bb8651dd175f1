//! `jetson-llmd status`: works unprivileged.

use super::{context, print_json, Global};
use jetson_llmd::report::status;
use std::path::Path;

pub async fn run(g: &Global) -> anyhow::Result<i32> {
    let ctx = context(g).await?;
    let mut r = status::gather(&ctx.client, &ctx.settings, &ctx.paths.model_conf, &ctx.root).await;
    // Units are read only for the real host: under --root they would describe another system.
    if ctx.root == Path::new("/") {
        r.units = status::units().await;
    }
    if ctx.json {
        print_json(&r)?;
    } else {
        print!("{}", status::render(&r));
    }
    Ok(r.exit_code())
}
