//! One request to Ollama on a connection of its own, driven inside the client's task.
//!
//! Why not a pooled client (hyper-util, reqwest): their connection runs as a separate task and
//! hands the response body over one frame at a time, each a wake-up of the other task; Ollama
//! streams one ~100-byte line per frame, so under load the guard spent most of its time passing
//! lines between tasks and writing them one syscall each (36% of direct throughput). Here the
//! connection is polled by the response body itself, which takes every line already read from
//! the socket and sends them on as one frame. Nothing waits for more: a frame goes as soon as
//! the socket has nothing further, so a line still leaves the guard the moment it arrives.
//! A connection per request costs one loopback connect (scripts/bench: +0.2-0.3 ms to the first byte); dropping the body closes it,
//! which is how Ollama learns that a client went away and cancels the generation.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Read buffer of each upstream connection (fixed). A streamed line of Ollama is ~100 bytes, so
/// a read of this size still carries a hundred or more; hyper's adaptive default grows to
/// 400 KiB per connection, which 100 streams turned into ~27 MiB.
const READ_BUF: usize = 16 << 10;
/// Largest frame made of lines that arrived together.
const MAX_FRAME: usize = 64 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Conn = Connection<TokioIo<tokio::net::TcpStream>, Body>;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connecting took over {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("the connection closed before a response")]
    Closed,
}

/// Sends `req` (origin-form target, Host set by the caller) to `addr` and returns the response
/// with its body still streaming.
pub async fn exchange(addr: &str, req: axum::http::Request<Body>) -> Result<axum::http::Response<Relay>, RelayError> {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(RelayError::Connect(e)),
        Err(_) => return Err(RelayError::ConnectTimeout(CONNECT_TIMEOUT)),
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn): (SendRequest<Body>, Conn) = hyper::client::conn::http1::Builder::new().read_buf_exact_size(Some(READ_BUF)).handshake(TokioIo::new(tcp)).await?;
    let mut conn = Some(Box::pin(conn));
    let mut response = std::pin::pin!(sender.send_request(req));
    let resp = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = response.as_mut().poll(cx) {
            return Poll::Ready(r.map_err(RelayError::from));
        }
        if let Some(c) = conn.as_mut() {
            match c.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(())) => conn = None,
            }
        }
        // The connection is over: the response is there or never will be.
        match response.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(r.map_err(RelayError::from)),
            Poll::Pending => Poll::Ready(Err(RelayError::Closed)),
        }
    })
    .await?;
    Ok(resp.map(|body| Relay { conn, body, held: None, ended: false }))
}

/// The response body: Ollama's frames, those that arrived together joined into one.
pub struct Relay {
    conn: Option<Pin<Box<Conn>>>,
    body: Incoming,
    /// A frame (trailers, an error) met while lines were being joined: it goes next.
    held: Option<Result<Frame<Bytes>, hyper::Error>>,
    ended: bool,
}

fn join(acc: &mut Option<BytesMut>, first: &mut Option<Bytes>, d: Bytes) {
    match (first.take(), acc.as_mut()) {
        (None, None) => *first = Some(d),
        (Some(f), _) => {
            let mut b = BytesMut::with_capacity((f.len() + d.len()).max(4096));
            b.extend_from_slice(&f);
            b.extend_from_slice(&d);
            *acc = Some(b);
        }
        (None, Some(b)) => b.extend_from_slice(&d),
    }
}

impl http_body::Body for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(h) = this.held.take() {
            return Poll::Ready(Some(h));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let (mut first, mut acc): (Option<Bytes>, Option<BytesMut>) = (None, None);
        let out = |first: Option<Bytes>, acc: Option<BytesMut>| acc.map(BytesMut::freeze).or(first).map(|d| Ok(Frame::data(d)));
        loop {
            // The connection reads the socket and hands the body one frame per call.
            if let Some(c) = this.conn.as_mut() {
                if let Poll::Ready(r) = c.as_mut().poll(cx) {
                    this.conn = None;
                    if let Err(e) = r {
                        // The body reports the same failure below; this is only for the log.
                        tracing::debug!("guard: upstream connection: {e}");
                    }
                }
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => {
                        join(&mut acc, &mut first, d);
                        let len = acc.as_ref().map(|b| b.len()).or(first.as_ref().map(|b| b.len())).unwrap_or(0);
                        if len >= MAX_FRAME {
                            return Poll::Ready(out(first, acc));
                        }
                    }
                    Err(other) => {
                        if first.is_none() && acc.is_none() {
                            return Poll::Ready(Some(Ok(other)));
                        }
                        this.held = Some(Ok(other));
                        return Poll::Ready(out(first, acc));
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    if first.is_none() && acc.is_none() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    this.held = Some(Err(e));
                    return Poll::Ready(out(first, acc));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(out(first, acc));
                }
                Poll::Pending => {
                    return match out(first, acc) {
                        Some(f) => Poll::Ready(Some(f)),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && (self.ended || self.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.held.is_some() {
            return SizeHint::default();
        }
        self.body.size_hint()
    }
}
