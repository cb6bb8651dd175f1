//! `jetson-llmd completions SHELL` and the hidden `dist-assets --out DIR`: what the .deb ships
//! besides the binary, generated from this binary so the package and `install` cannot drift:
//! man pages and completions from the clap definitions, the units rendered for the packaged
//! path (/usr/bin/jetson-llmd), and the /etc files exactly as `install` writes them.

use super::Cli;
use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use jetson_llmd::failure::code;
use std::path::Path;

/// Where the .deb puts the binary (Debian policy keeps packages out of /usr/local).
pub const PACKAGED_BIN: &str = jetson_llmd::install::plan::PACKAGED_BIN;

pub fn completions(shell: Shell) -> anyhow::Result<i32> {
    let mut cmd = visible(Cli::command());
    clap_complete::generate(shell, &mut cmd, "jetson-llmd", &mut std::io::stdout());
    Ok(code::OK)
}

/// The command line without its hidden commands (`exec-child`, `dist-assets`: internal), which
/// clap_complete would otherwise offer at every TAB.
fn visible(full: clap::Command) -> clap::Command {
    let mut c = clap::Command::new("jetson-llmd").version(env!("CARGO_PKG_VERSION")).args(full.get_arguments().cloned());
    for sub in full.get_subcommands().filter(|s| !s.is_hide_set()) {
        c = c.subcommand(sub.clone());
    }
    c
}

async fn put(out: &Path, rel: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    let path = out.join(rel);
    jetson_llmd::host::fs::write_atomic(&path, bytes, 0o644).await.with_context(|| format!("cannot write {}", path.display()))
}

pub async fn assets(out: &Path) -> anyhow::Result<i32> {
    let cmd = Cli::command();
    // Man pages: jetson-llmd(1) and one per visible command, as git and cargo ship theirs.
    let mut pages = vec![("jetson-llmd".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("jetson-llmd-{}", sub.get_name());
        let c = sub.clone().display_name(name.clone()).bin_name(format!("jetson-llmd {}", sub.get_name()));
        pages.push((name, c));
    }
    for (name, c) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).title(name.to_uppercase()).source(format!("jetson-llmd {}", env!("CARGO_PKG_VERSION"))).date("").render(&mut buf).context("cannot render a man page")?;
        put(out, &format!("man/{name}.1"), buf).await?;
    }
    for (shell, file) in [(Shell::Bash, "completions/jetson-llmd"), (Shell::Zsh, "completions/_jetson-llmd"), (Shell::Fish, "completions/jetson-llmd.fish")] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "jetson-llmd", &mut buf);
        put(out, file, buf).await?;
    }
    let units = jetson_llmd::install::units::render(Path::new(PACKAGED_BIN), Path::new(jetson_llmd::install::tree::BIN))?;
    for (name, text) in units {
        put(out, &format!("units/{name}"), text.into_bytes()).await?;
    }
    for (path, bytes) in jetson_llmd::install::plan::default_etc_files() {
        put(out, path.trim_start_matches('/'), bytes).await?;
    }
    println!("{}", out.display());
    Ok(code::OK)
}

#[cfg(test)]
mod tests {
    /// Issue 30: completions offered the internal commands.
    #[test]
    fn completions_offer_no_hidden_command() {
        use clap::CommandFactory;
        let mut cmd = super::visible(super::Cli::command());
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "jetson-llmd", &mut out);
            let text = String::from_utf8_lossy(&out);
            assert!(!text.contains("exec-child") && !text.contains("dist-assets"), "{shell:?}");
            assert!(text.contains("switch") && text.contains("--json"), "{shell:?}: the visible commands stay");
        }
    }
}
