//! Peers on Ollama's port that are not Ollama, or an Ollama gone wrong: endless bodies, endless
//! lines, streams that repeat themselves forever, escape sequences. Raw TCP on 127.0.0.1:0.

use ollama_client::{parse_host, Client, Error, Timeouts};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves every connection with `head` and then `chunk` repeated forever (or once).
async fn peer(head: &'static str, chunk: &'static [u8], forever: bool) -> Client {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req).await;
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    if s.write_all(chunk).await.is_err() || !forever {
                        return;
                    }
                }
            });
        }
    });
    let t = Timeouts { request: Duration::from_secs(20), stream_idle: Duration::from_secs(1), ..Default::default() };
    Client::new(parse_host(&format!("127.0.0.1:{port}")).expect("host").url, t)
}

const JSON_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n";
const NDJSON_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\r\n";

#[tokio::test]
async fn an_endless_body_is_cut_at_the_cap() {
    let c = peer(JSON_HEAD, &[b' '; 65536], true).await;
    let t = Instant::now();
    let e = c.ps().await.expect_err("endless");
    assert!(matches!(e, Error::TooLarge { cap: ollama_client::MAX_BODY, .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(15), "cut by the cap, not the timeout");
}

#[tokio::test]
async fn an_endless_error_body_still_gives_an_error() {
    let c = peer("HTTP/1.1 500 Internal Server Error\r\n\r\n", b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", true).await;
    let e = c.version().await.expect_err("500");
    assert!(matches!(&e, Error::Api { status: 500, message, .. } if message.len() < 400), "{e}");
}

#[tokio::test]
async fn an_endless_stream_line_is_cut() {
    let c = peer(NDJSON_HEAD, b"{\"status\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", true).await;
    let e = c.pull("x", |_| {}).await.expect_err("endless line");
    assert!(matches!(e, Error::TooLarge { what: "a stream line", .. }), "{e}");
}

#[tokio::test]
async fn a_stream_that_repeats_itself_is_stalled() {
    let c = peer(NDJSON_HEAD, b"{\"status\":\"pulling manifest\"}\n", true).await;
    let t = Instant::now();
    let mut lines = 0u64;
    let e = c.pull("x", |_| lines += 1).await.expect_err("no progress");
    assert!(matches!(e, Error::Stalled { .. }), "{e}");
    assert!(lines > 10, "the lines did arrive ({lines})");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn escapes_from_the_peer_never_reach_our_text() {
    let c = peer(JSON_HEAD, b"{\"version\":\"0.30.6\\u001b[2J\\u001b]0;pwned\\u0007\"}", false).await;
    assert_eq!(c.version().await.expect("version").version, "0.30.6");
    let c = peer("HTTP/1.1 500 Internal Server Error\r\n\r\n", b"{\"error\":\"bad\\u001b[31m thing\\r\\nnext\"}", false).await;
    let e = c.version().await.expect_err("500");
    assert_eq!(e.message(), "bad thing next");
    let c = peer(NDJSON_HEAD, b"{\"error\":\"\\u001b[2Jmid-stream\"}\n", false).await;
    assert_eq!(c.pull("x", |_| {}).await.expect_err("err").message(), "mid-stream");
}

/// A redirect is never followed: the answer comes from the address asked, or not at all.
#[tokio::test]
async fn a_redirect_is_not_followed() {
    // The place it points to answers like an Ollama would.
    let other = peer("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 22\r\n\r\n", b"{\"version\":\"9.9.9-x\"}\n", false).await;
    let target = format!("{}api/version", other.base_url());
    let head: &'static str = Box::leak(format!("HTTP/1.1 302 Found\r\nlocation: {target}\r\ncontent-length: 0\r\n\r\n").into_boxed_str());
    let c = peer(head, b"", false).await;
    match c.version().await {
        Ok(v) => panic!("followed the redirect to {target}: {v:?}"),
        Err(e) => assert!(!e.to_string().contains("9.9.9"), "{e}"),
    }
}
