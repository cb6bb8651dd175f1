//! The real binary against peers on Ollama's port that are not a well-behaved Ollama: endless
//! bodies, pulls that never end, escape sequences in every text. Raw TCP on 127.0.0.1:0.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Answers by path: (path prefix, head, body chunk, repeat forever).
type Route = (&'static str, &'static str, &'static [u8], bool);

fn peer(routes: &'static [Route]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let Some((_, head, body, forever)) = routes.iter().find(|r| path.starts_with(r.0)) else {
                    let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
                    return;
                };
                if s.write_all(head.as_bytes()).is_err() {
                    return;
                }
                loop {
                    if s.write_all(body).is_err() || !*forever {
                        return;
                    }
                }
            });
        }
    });
    port
}

const OK_JSON: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
const NDJSON: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n";

fn model_conf() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tmp");
    std::fs::write(d.path().join("model.conf"), "OLLAMA_MODEL=llama3.2:3b\n").expect("w");
    d
}

fn cmd(port: u16, d: &tempfile::TempDir, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jetson-llmd"));
    c.arg("--root").arg(d.path()).arg("--model-conf").arg(d.path().join("model.conf")).args(args);
    c.env("OLLAMA_HOST", format!("127.0.0.1:{port}")).env_remove("NOTIFY_SOCKET").env_remove("JOURNAL_STREAM");
    c
}

#[test]
fn sigterm_ends_a_pull_that_never_finishes() {
    static ROUTES: [Route; 3] = [("/api/version", OK_JSON, b"{\"version\":\"0.30.6\"}", false), ("/api/tags", OK_JSON, b"{\"models\":[]}", false), ("/api/pull", NDJSON, b"{\"status\":\"pulling manifest\"}\n", true)];
    let port = peer(&ROUTES);
    let d = model_conf();
    let mut child = cmd(port, &d, &["preload"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().expect("wait").is_none(), "still pulling");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).expect("term");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "SIGTERM ignored during a pull");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("SIGTERM") && err.contains("error: stopped by a signal before the work was done"), "{err}");
}

#[test]
fn an_endless_answer_is_refused_with_bounded_memory() {
    static ROUTES: [Route; 2] = [("/api/version", OK_JSON, b"{\"version\":\"0.30.6\"}", false), ("/api/ps", OK_JSON, &[b' '; 65536], true)];
    let port = peer(&ROUTES);
    let d = model_conf();
    let t = Instant::now();
    let o = cmd(port, &d, &["keepalive", "--once"]).output().expect("runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(t.elapsed() < Duration::from_secs(10), "cut by the cap: {err}");
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("larger than 8192 KiB"), "{err}");
}

#[test]
fn escape_sequences_from_ollama_never_reach_the_terminal() {
    static ROUTES: [Route; 3] = [
        ("/api/version", OK_JSON, b"{\"version\":\"0.30.6\\u001b[2J\\u001b]0;owned\\u0007\"}", false),
        ("/api/ps", OK_JSON, b"{\"models\":[]}", false),
        ("/api/tags", "HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\n\r\n", b"{\"error\":\"\\u001b[31mred\\r\\nalert\\u0007\"}", false),
    ];
    let port = peer(&ROUTES);
    let d = model_conf();
    let o = cmd(port, &d, &["status"]).output().expect("runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("0.30.6"), "{out}");
    let o2 = cmd(port, &d, &["preload"]).output().expect("runs");
    let err = String::from_utf8_lossy(&o2.stderr);
    assert!(err.contains("red alert"), "{err}");
    for text in [&out, &err, &String::from_utf8_lossy(&o.stderr)] {
        assert!(!text.chars().any(|c| c == '\u{1b}' || c == '\u{7}' || c == '\r'), "control characters leaked: {text:?}");
    }
}
