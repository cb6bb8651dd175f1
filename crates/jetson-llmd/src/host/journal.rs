//! The journal through `journalctl` (no libsystemd link, so the binary stays static for musl),
//! run with tokio::process under a deadline, its output capped in bytes and per line, every line
//! cleaned of control characters.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Most output read from one journalctl run.
pub const MAX_OUTPUT: usize = 16 << 20;
/// Longest line kept (longer lines are cut with a marker).
pub const MAX_LINE: usize = 16 << 10;
const DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot run journalctl: {0}")]
    Spawn(std::io::Error),
    #[error("journalctl did not finish within {}s", DEADLINE.as_secs())]
    Deadline,
    #[error("journalctl failed: {0}")]
    Failed(String),
}

/// Reads lines from `r` until EOF or `max_total` bytes, each line lossily decoded, cleaned and cut
/// at [`MAX_LINE`]. Also used for a child's stderr.
pub async fn read_lines<R: tokio::io::AsyncRead + Unpin>(r: R, max_total: usize, mut on_line: impl FnMut(String)) -> std::io::Result<()> {
    let mut r = BufReader::new(r);
    let mut total = 0usize;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // read_until on a bounded reader: an endless line costs at most MAX_LINE + one buffer.
        let n = (&mut r).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        total += n;
        let cut = buf.len() > MAX_LINE && buf.last() != Some(&b'\n');
        if cut {
            // Skip the rest of the overlong line.
            let mut sink = Vec::new();
            loop {
                sink.clear();
                let m = (&mut r).take(64 << 10).read_until(b'\n', &mut sink).await?;
                total += m;
                if m == 0 || sink.last() == Some(&b'\n') || total > max_total {
                    break;
                }
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let mut line = crate::text::clean(text.trim_end_matches(['\n', '\r']));
        if cut {
            line.push_str("…[truncated]");
        }
        on_line(line);
        if total > max_total {
            return Ok(());
        }
    }
}

async fn journalctl(args: &[String]) -> Result<Vec<String>, JournalError> {
    let mut child = tokio::process::Command::new("journalctl").args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn().map_err(JournalError::Spawn)?;
    let (Some(out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(JournalError::Failed("no pipes".into()));
    };
    let run = async {
        let mut lines = Vec::new();
        let mut err_text = Vec::new();
        let mut err_capped = (&mut err).take(4096);
        let (r, _) = tokio::join!(read_lines(out, MAX_OUTPUT, |l| lines.push(l)), err_capped.read_to_end(&mut err_text));
        r.map_err(JournalError::Spawn)?;
        let status = child.wait().await.map_err(JournalError::Spawn)?;
        if !status.success() && lines.is_empty() {
            return Err(JournalError::Failed(crate::text::clip(String::from_utf8_lossy(&err_text).trim(), 300)));
        }
        Ok(lines.into_iter().filter(|l| !l.is_empty()).collect())
    };
    tokio::time::timeout(DEADLINE, run).await.map_err(|_| JournalError::Deadline)?
}

/// The unit's log since `since_usec` (realtime µs); without it, its last 20000 lines (the GPU
/// verdict only looks at the latest start in them anyway).
///
/// No `-b` here or below: under ProtectKernelTunables=/ProtectControlGroups= in a container the
/// boot ID that `-b` filters on can differ from the journal's (seen under systemd-nspawn), and
/// `--since` the unit's start is the tighter bound anyway.
pub async fn since(unit: &str, since_usec: Option<u64>) -> Result<Vec<String>, JournalError> {
    let mut args: Vec<String> = ["-u", unit, "-o", "cat", "--no-pager", "-q"].map(String::from).to_vec();
    match since_usec {
        Some(u) => args.extend(["--since".to_string(), format!("@{}", u / 1_000_000)]),
        None => args.extend(["-n".to_string(), "20000".to_string()]),
    }
    journalctl(&args).await
}

/// The unit's last `n` lines, for messages; empty when unreadable.
pub async fn tail(unit: &str, n: usize) -> Vec<String> {
    let args: Vec<String> = ["-u", unit, "-n", &n.to_string(), "-o", "cat", "--no-pager", "-q"].map(String::from).to_vec();
    journalctl(&args).await.unwrap_or_default()
}

/// `journalctl -u ollama.service -b` for `gpu-check` (the whole boot, as a person would look).
pub async fn this_boot(unit: &str) -> Result<Vec<String>, JournalError> {
    journalctl(&["-u", unit, "-b", "--no-pager", "-o", "cat", "-q"].map(String::from)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_lossy_cleaned_and_capped() {
        let mut input = b"ok \xff\xfe line\n\x1b[2Jclear\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_LINE * 3));
        input.extend(b"\nafter\n");
        let mut got = Vec::new();
        read_lines(&input[..], usize::MAX, |l| got.push(l)).await.expect("read");
        assert_eq!(got[0], "ok \u{fffd}\u{fffd} line");
        assert_eq!(got[1], "clear");
        assert!(got[2].ends_with("…[truncated]") && got[2].len() < MAX_LINE + 20, "{}", got[2].len());
        assert_eq!(got[3], "after");
        assert_eq!(got.len(), 4);
        let mut n = 0;
        read_lines(&b"a\nb\nc\nd\n"[..], 3, |_| n += 1).await.expect("read");
        assert_eq!(n, 2, "stops past the total cap");
    }
}
