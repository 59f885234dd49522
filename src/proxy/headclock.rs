//! A deadline for a whole request head (`proxy.header_timeout`): the client connection as the
//! proxy sees it, wrapped so that a request's header block must be complete within the deadline.
//! pingora times out each read of the head (60 s), not the head as a whole, so a client that
//! sends one byte a minute would otherwise hold a connection for ever (slowloris); nginx's
//! `client_header_timeout` and Apache's `mod_reqtimeout` close that gap the same way.
//!
//! The clock is armed before each HTTP/1 request on the connection (by the connection loop in
//! `connlimit`, which sees one call per request) and disarmed when the bytes read contain the
//! end of the head (`\r\n\r\n`). For the first request it runs from accept; for later requests
//! on a kept-alive connection from their first byte, so idle keep-alive time stays governed by
//! the keep-alive timeout. A head that misses the deadline is answered `408` (best effort, one
//! write) and the read fails, which closes the connection. An h2 connection disarms the clock
//! with its preface; h2 streams are bounded by h2's own flow control and idle timeout.

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::proxy::Session;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const TIMED_OUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// The clock of one connection, shared by the stream wrapper and the proxy.
struct HeadClock(Mutex<State>);

struct State {
    limit: Duration,
    armed: bool,
    /// When the head must be complete, or (before a later request's first byte) when the idle
    /// connection is closed.
    deadline: Instant,
    /// Whether the head's first byte restarts the clock (later requests on a connection).
    restart_at_first_byte: bool,
    /// The last bytes of the previous read, so a `\r\n\r\n` split across reads is seen.
    tail: [u8; 3],
    tail_len: usize,
    /// Bytes of this head seen so far (no 408 for a connection that never started a request).
    seen: usize,
}

impl TimedHead {
    /// Wraps a new client connection; its first request's head must arrive within `limit` of
    /// now.
    pub fn new(stream: Stream, limit: Duration) -> Box<TimedHead> {
        let clock = HeadClock(Mutex::new(State {
            limit,
            armed: true,
            deadline: Instant::now() + limit,
            restart_at_first_byte: false,
            tail: [0; 3],
            tail_len: 0,
            seen: 0,
        }));
        Box::new(TimedHead {
            inner: stream,
            clock,
            sleep: None,
            rewound: BytesMut::new(),
        })
    }

    /// Arms the clock for the next request on a kept-alive HTTP/1 connection: it may stay
    /// idle for `idle`, then the next head must arrive within `limit` of its first byte.
    pub fn rearm(&self, limit: Duration, idle: Duration) {
        let mut s = self.clock.state();
        s.limit = limit;
        s.armed = true;
        s.deadline = Instant::now() + idle;
        s.restart_at_first_byte = true;
        s.tail_len = 0;
        s.seen = 0;
    }

    /// Gives back bytes read from the connection, so the next reads return them first (the
    /// hit fast path hands a request it does not serve to pingora this way).
    pub fn unread(&mut self, mut bytes: BytesMut) {
        bytes.extend_from_slice(&self.rewound);
        self.rewound = bytes;
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.inner.get_ssl_digest().is_some()
    }
}

/// Re-arms the clock as `session`'s request ends (see [`TimedHead::rearm`]). h2 sessions
/// have no such clock and are left alone.
pub fn rearm(session: &Session, limit: Duration, idle: Duration) {
    let Some(stream) = session.as_downstream().stream() else {
        return;
    };
    let io: &dyn pingora::protocols::IO = &**stream;
    if let Some(timed) = io.as_any().downcast_ref::<TimedHead>() {
        timed.rearm(limit, idle);
    }
}

impl HeadClock {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Accounts freshly read bytes; disarms at the end of the head.
    fn saw(&mut self, bytes: &[u8]) {
        if !self.armed || bytes.is_empty() {
            return;
        }
        if self.restart_at_first_byte {
            self.restart_at_first_byte = false;
            self.deadline = Instant::now() + self.limit;
        }
        self.seen += bytes.len();
        // The end may straddle reads: the previous read's last 3 bytes, then this read's first 3.
        let mut edge = [0u8; 6];
        let first = bytes.len().min(3);
        let edge_len = self.tail_len + first;
        edge[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        edge[self.tail_len..edge_len].copy_from_slice(&bytes[..first]);
        let end = ends_head(&edge[..edge_len]) || ends_head(bytes);
        if end {
            self.armed = false;
            return;
        }
        // When this read is shorter than 3 bytes, `edge` holds the old tail and all of it.
        let last: &[u8] = if bytes.len() >= 3 {
            &bytes[bytes.len() - 3..]
        } else {
            &edge[edge_len.saturating_sub(3)..edge_len]
        };
        self.tail_len = last.len();
        self.tail[..last.len()].copy_from_slice(last);
    }
}

/// Whether `bytes` hold `\r\n\r\n` (a head has a few dozen `\n`; memchr finds them fast).
fn ends_head(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes).any(|i| i >= 3 && &bytes[i - 3..=i] == b"\r\n\r\n")
}

/// A client connection whose request heads are timed.
pub struct TimedHead {
    inner: Stream,
    clock: HeadClock,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes read by `try_peek`, handed out again by the next reads.
    rewound: BytesMut,
}

impl std::fmt::Debug for TimedHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedHead")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRead for TimedHead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.rewound.is_empty() {
            // Already accounted when `try_peek` read them.
            let n = this.rewound.len().min(buf.remaining());
            buf.put_slice(&this.rewound.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        let mut state = this.clock.state();
        if let Poll::Ready(Ok(())) = read {
            state.saw(&buf.filled()[before..]);
            return read;
        }
        if read.is_ready() || !state.armed {
            this.sleep = None;
            return read;
        }
        let (deadline, seen) = (state.deadline, state.seen);
        drop(state);
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if seen > 0 {
            // Best effort: a 72-byte write to a socket with an empty send buffer completes.
            let _ = Pin::new(&mut this.inner).poll_write(cx, TIMED_OUT);
        }
        Poll::Ready(Err(timed_out()))
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request head not complete within proxy.header_timeout",
    )
}

impl AsyncWrite for TimedHead {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TimedHead {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for TimedHead {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for TimedHead {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for TimedHead {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for TimedHead {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for TimedHead {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// pingora peeks for the h2c preface before every request with `read_exact` and no timeout,
/// so the peek is where a slow or idle client waits first: it runs on the same clock here, and a
/// complete HTTP/1 head shorter than the preface ends it (pingora's own peek would wait for
/// bytes that never come).
#[async_trait]
impl Peek for TimedHead {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 64];
        while self.rewound.len() < buf.len() {
            let (armed, deadline) = {
                let s = self.clock.state();
                (s.armed, s.deadline)
            };
            if !armed {
                break;
            }
            let want = (buf.len() - self.rewound.len()).min(chunk.len());
            let n = match tokio::time::timeout_at(deadline, self.inner.read(&mut chunk[..want]))
                .await
            {
                Ok(read) => read?,
                Err(_) => {
                    if self.clock.state().seen > 0 {
                        use tokio::io::AsyncWriteExt;
                        let _ = self.inner.write_all(TIMED_OUT).await;
                    }
                    return Err(timed_out());
                }
            };
            if n == 0 {
                break;
            }
            self.clock.state().saw(&chunk[..n]);
            self.rewound.extend_from_slice(&chunk[..n]);
        }
        let n = self.rewound.len().min(buf.len());
        buf[..n].copy_from_slice(&self.rewound[..n]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            limit: Duration::from_secs(1),
            armed: true,
            deadline: Instant::now(),
            restart_at_first_byte: true,
            tail: [0; 3],
            tail_len: 0,
            seen: 0,
        }
    }

    #[test]
    fn the_end_of_a_head_is_found_in_one_read_or_split_across_reads() {
        let mut s = state();
        s.saw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody");
        assert!(!s.armed);
        for split in 1..30 {
            let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
            let mut s = state();
            for chunk in head[..].chunks(split) {
                assert!(s.armed, "disarmed early at split {split}");
                s.saw(chunk);
            }
            assert!(!s.armed, "end not found at split {split}");
        }
        let mut s = state();
        for b in b"GET / HTTP/1.1\r\nHost: a\r\n" {
            s.saw(&[*b]);
        }
        assert!(s.armed && !s.restart_at_first_byte);
        assert_eq!(s.seen, 25);
    }
}
