//! What the guard costs, measured side by side with talking to Ollama directly, in one run:
//! `jetson-llmd supervise --launcher process` with the guard on, fake-ollama as its child with
//! every emulated delay at 0 (so the figures are the HTTP path, not the emulated model), and
//! this program as the client. Run by scripts/bench; `--quick` only checks the harness works.
//!
//! Usage: guard-bench --bin DIR [--quick] [--markdown FILE]

mod common;

use common::{free_port, stats, vm, Supervisor};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PINNED: &str = "gemma4:e2b-8k";

/// One streamed generation: (time to the first line, lines, total time).
async fn stream(http: &reqwest::Client, port: u16, tokens: u64) -> (Duration, u64, Duration) {
    let t0 = Instant::now();
    let mut resp = http.post(format!("http://127.0.0.1:{port}/api/generate")).json(&serde_json::json!({"model": PINNED, "prompt": "bench", "options": {"num_predict": tokens}})).send().await.expect("send");
    assert!(resp.status().is_success(), "HTTP {}", resp.status());
    let mut first = None;
    let mut lines = 0;
    while let Some(c) = resp.chunk().await.expect("chunk") {
        if first.is_none() {
            first = Some(t0.elapsed());
        }
        lines += c.iter().filter(|b| **b == b'\n').count() as u64;
    }
    (first.unwrap_or_default(), lines, t0.elapsed())
}

fn start(bin: &Path, ollama: u16, guard: u16) -> Supervisor {
    let root = tempfile::tempdir().expect("tmp");
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/ollama")).expect("mkdir");
    std::fs::create_dir_all(r.join("etc/jetson-llmd")).expect("mkdir");
    std::fs::create_dir_all(r.join("proc/sys/vm")).expect("mkdir");
    std::fs::write(r.join("etc/ollama/model.conf"), format!("OLLAMA_MODEL={PINNED}\n")).expect("w");
    std::fs::write(r.join("proc/sys/vm/drop_caches"), "").expect("w");
    std::fs::write(r.join("etc/jetson-llmd/config.toml"), format!("metrics_listen = \"off\"\n[guard]\nenabled = true\nlisten = \"127.0.0.1:{guard}\"\n")).expect("w");
    let child = Command::new(bin.join("jetson-llmd"))
        .arg("--root")
        .arg(r)
        .args(["supervise", "--launcher", "process", "--ollama-bin"])
        .arg(bin.join("fake-ollama"))
        .env("OLLAMA_HOST", format!("127.0.0.1:{ollama}"))
        .env("FAKE_OLLAMA_TIME_SCALE", "0")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start jetson-llmd supervise");
    Supervisor { child, root }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let bin = args.iter().position(|a| a == "--bin").and_then(|i| args.get(i + 1)).map(PathBuf::from).expect("--bin DIR (where jetson-llmd and fake-ollama are)");
    let out = args.iter().position(|a| a == "--markdown").and_then(|i| args.get(i + 1)).map(PathBuf::from);
    let (ollama, guard) = (free_port(), free_port());
    let sup = start(&bin, ollama, guard);
    let http = reqwest::Client::new();
    let t = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("http://127.0.0.1:{guard}/healthz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the supervisor did not get warm");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (n_ttfb, n_stream, stream_tokens, big, conc) = if quick { (20, 3, 500, 1_000, 10) } else { (300, 15, 2_000, 10_000, 100) };

    // 1. Time to the first byte of a one-token generation.
    let (mut d1, mut g1) = (Vec::new(), Vec::new());
    for i in 0..n_ttfb {
        // Alternate, so drift on the machine hits both sides alike.
        let order = if i % 2 == 0 { [ollama, guard] } else { [guard, ollama] };
        for p in order {
            let (first, ..) = stream(&http, p, 1).await;
            if p == ollama {
                d1.push(first.as_secs_f64() * 1e3)
            } else {
                g1.push(first.as_secs_f64() * 1e3)
            }
        }
    }
    // 2. Per streamed line: total time of a stream over its lines.
    let (mut d2, mut g2) = (Vec::new(), Vec::new());
    for i in 0..n_stream {
        let order = if i % 2 == 0 { [ollama, guard] } else { [guard, ollama] };
        for p in order {
            let (_, lines, total) = stream(&http, p, stream_tokens).await;
            let per = total.as_secs_f64() * 1e6 / lines.max(1) as f64;
            if p == ollama {
                d2.push(per)
            } else {
                g2.push(per)
            }
        }
    }
    // 3. Throughput of one long stream.
    let (mut d3, mut g3) = (Vec::new(), Vec::new());
    let n_big = if quick { 2 } else { 21 };
    for i in 0..n_big {
        let order = if i % 2 == 0 { [ollama, guard] } else { [guard, ollama] };
        for p in order {
            let (_, lines, total) = stream(&http, p, big).await;
            let rate = lines as f64 / total.as_secs_f64();
            if p == ollama {
                d3.push(rate)
            } else {
                g3.push(rate)
            }
        }
    }
    // 4. The supervisor's memory with `conc` streams through the guard at once.
    let pid = sup.child.id();
    let rss_idle = vm(pid, "VmRSS:");
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let http = http.clone();
            tokio::spawn(async move { stream(&http, guard, stream_tokens).await })
        })
        .collect();
    let mut peak_during = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        peak_during = peak_during.max(vm(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        let (_, lines, _) = t.await.expect("stream");
        assert_eq!(lines, stream_tokens + 1, "every stream complete");
    }
    let hwm = vm(pid, "VmHWM:");

    // 5. Hostile uploads: `hostile` connections each declare a 15 MiB body to /api/generate
    //    (under the per-request cap, so the declared size alone is no reason to refuse), send
    //    256 KiB of it and stall. Once the guard's body budget (16 MiB by default) is taken,
    //    the rest are answered 503 at once; the RSS of the process keeping the model warm is
    //    what matters.
    let hostile = if quick { 50 } else { 500 };
    let before_hostile = vm(pid, "VmRSS:");
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..hostile {
        use tokio::io::AsyncWriteExt;
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", guard)).await else { continue };
        let head = format!("POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 15 << 20);
        if s.write_all(head.as_bytes()).await.is_err() || s.write_all(&vec![b' '; 256 << 10]).await.is_err() {
            refused += 1;
            continue;
        }
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hostile_peak = vm(pid, "VmRSS:").max(before_hostile);
    // What answered already (503 with Retry-After) versus what is still held.
    let mut answered = 0;
    for s in &mut held {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(2), s.read(&mut b)).await {
            if n > 0 && b.starts_with(b"HTTP/1.1 503") {
                answered += 1;
            }
        }
    }
    drop(held);
    let hwm_hostile = vm(pid, "VmHWM:");

    let (a, b) = (stats(d1), stats(g1));
    let (c, d) = (stats(d2), stats(g2));
    let (e, f) = (stats(d3), stats(g3));
    let mut md = String::new();
    md.push_str(&format!(
        "Machine: {} cores, {}; release build; fake-ollama with every emulated delay at 0; {} mode.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::env::consts::ARCH,
        if quick { "quick (harness check only)" } else { "full" }
    ));
    md.push_str("| figure | direct to Ollama (median, min-max) | through the guard (median, min-max) | guard adds (median) | goal |\n|---|---|---|---|---|\n");
    md.push_str(&format!("| time to first byte, 1-token generation ({n_ttfb} runs) | {:.3} ms ({:.3}-{:.3}) | {:.3} ms ({:.3}-{:.3}) | {:+.3} ms | < 1 ms |\n", a.median, a.min, a.max, b.median, b.min, b.max, b.median - a.median));
    md.push_str(&format!("| time per streamed line, {stream_tokens}-token streams ({n_stream} runs) | {:.1} µs ({:.1}-{:.1}) | {:.1} µs ({:.1}-{:.1}) | {:+.1} µs | < 100 µs |\n", c.median, c.min, c.max, d.median, d.min, d.max, d.median - c.median));
    md.push_str(&format!(
        "| throughput, one {big}-line stream ({n_big} runs) | {:.0} lines/s ({:.0}-{:.0}) | {:.0} lines/s ({:.0}-{:.0}) | {:.1}% of direct | within 5% |\n",
        e.median,
        e.min,
        e.max,
        f.median,
        f.min,
        f.max,
        f.median / e.median.max(1.0) * 100.0
    ));
    md.push_str(&format!(
        "| supervisor + guard RSS, {conc} concurrent streams | - | idle {:.1} MiB, peak {:.1} MiB (VmHWM {:.1} MiB) | {:+.1} MiB | < 30 MiB |\n",
        rss_idle as f64 / 1024.0,
        peak_during as f64 / 1024.0,
        hwm as f64 / 1024.0,
        (peak_during as f64 - rss_idle as f64) / 1024.0
    ));
    md.push_str(&format!(
        "| supervisor RSS, {hostile} connections each stalling in a declared 15 MiB body | - | before {:.1} MiB, with them {:.1} MiB (VmHWM {:.1} MiB); {answered} answered 503 at once, {refused} cut off | {:+.1} MiB | < 64 MiB |\n",
        before_hostile as f64 / 1024.0,
        hostile_peak as f64 / 1024.0,
        hwm_hostile as f64 / 1024.0,
        (hostile_peak as f64 - before_hostile as f64) / 1024.0
    ));
    print!("{md}");
    if let Some(p) = out {
        std::fs::write(&p, md).expect("write the table");
    }
}
