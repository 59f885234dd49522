//! A deadline for a whole request head (`proxy.header_timeout`): the client connection as the
//! proxy sees it, wrapped so that a request's header block must be complete within the deadline.
//! pingora times out each read of the head (60 s), not the head as a whole, so a client that
//! sends one byte a minute would otherwise hold a connection for ever (slowloris); nginx's
//! `client_header_timeout` and Apache's `mod_reqtimeout` close that gap the same way.
//!
//! The clock is armed before each HTTP/1 request on the connection (by the connection loop,
//! [`super::serve_connection`], which sees one call per request) and disarmed when the loop has
//! a complete head, or when the bytes read hold the end of one as [`super::framing`] finds it
//! (empty lines before a head do not end it). For the first request it runs from accept; for
//! later requests on a kept-alive connection from their first byte, so idle keep-alive time stays
//! governed by the keep-alive timeout. A head that misses the deadline is answered `408` (best
//! effort, one
//! write) and the read fails, which closes the connection. An h2 connection disarms the clock
//! with its preface; h2 streams are bounded by h2's own flow control and idle timeout.

use super::cork::Cork;
use super::framing::HeadScan;
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
    /// Where the head ends, across reads (the rule every reader of a head shares).
    scan: HeadScan,
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
            scan: HeadScan::default(),
            seen: 0,
        }));
        Box::new(TimedHead {
            inner: stream,
            clock,
            sleep: None,
            rewound: BytesMut::new(),
            fenced: false,
            raw_target: None,
            held: BytesMut::new(),
            cork: None,
            unflushed: false,
        })
    }

    /// From now on, writes are coalesced as [`super::cork`] describes (HTTP/2 connections).
    pub fn cork_writes(&mut self) {
        self.cork = Some(Cork::default());
    }

    /// Arms the clock for the next request on a kept-alive HTTP/1 connection: it may stay
    /// idle for `idle`, then the next head must arrive within `limit` of its first byte.
    pub fn rearm(&self, limit: Duration, idle: Duration) {
        self.rearm_at(Instant::now(), limit, idle);
    }

    /// [`Self::rearm`] for a request that ended at `now` (read by the caller already).
    pub fn rearm_at(&self, now: Instant, limit: Duration, idle: Duration) {
        let mut s = self.clock.state();
        s.limit = limit;
        s.armed = true;
        s.deadline = now + idle;
        s.restart_at_first_byte = true;
        s.scan = HeadScan::default();
        s.seen = 0;
    }

    /// The connection loop has a complete head in hand: the clock stops for this request.
    pub fn head_complete(&self) {
        self.clock.state().armed = false;
    }

    /// Hands the request whose head was just given back ([`Self::unread`]) to a reader that must
    /// not read past it: until [`Self::unfence`], bytes arriving on the connection (the client's
    /// next, pipelined request) are held here instead of being read as this request's, and the
    /// reader sees no more data. pingora polls an idle client connection during a request and
    /// would otherwise take those bytes for an error ("Sent data after end of body") or a
    /// pipelined prefix the connection loop cannot see.
    pub fn fence(&mut self) {
        self.fenced = true;
    }

    /// Keeps the raw request target of the head about to be handed to pingora.
    pub fn set_raw_target(&mut self, target: Option<bytes::Bytes>) {
        self.raw_target = target;
    }

    /// Ends the fence; the bytes held meanwhile, in arrival order.
    pub fn unfence(&mut self) -> BytesMut {
        self.fenced = false;
        self.held.split()
    }

    /// Gives back bytes read from the connection, so the next reads return them first (the
    /// hit fast path hands a request it does not serve to pingora this way).
    pub fn unread(&mut self, mut bytes: BytesMut) {
        bytes.extend_from_slice(&self.rewound);
        self.rewound = bytes;
    }

    /// The descriptor of the client's socket when the connection is plain TCP (found by the
    /// stream's type, not assumed from its id).
    pub fn tcp_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let io: &dyn pingora::protocols::IO = &*self.inner;
        let tcp = io
            .as_any()
            .downcast_ref::<pingora::protocols::l4::stream::Stream>()?;
        Some(tcp.as_raw_fd())
    }

    /// The plain TCP socket, when nothing written through this stream waits in a buffer of
    /// it (flushed, not corked): bytes sent on the socket itself then go out in order.
    pub fn raw_socket(&self) -> Option<std::os::fd::RawFd> {
        if self.unflushed || self.cork.is_some() {
            return None;
        }
        self.tcp_fd()
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

/// The raw request target of `session`'s request, as the connection loop read it (HTTP/1).
pub fn raw_target(session: &Session) -> Option<bytes::Bytes> {
    let stream = session.as_downstream().stream()?;
    let io: &dyn pingora::protocols::IO = &**stream;
    io.as_any().downcast_ref::<TimedHead>()?.raw_target.clone()
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
        if self.scan.feed(bytes).is_some() {
            self.armed = false;
        }
    }
}

/// A client connection whose request heads are timed.
pub struct TimedHead {
    inner: Stream,
    clock: HeadClock,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes read by `try_peek`, handed out again by the next reads.
    rewound: BytesMut,
    /// See [`TimedHead::fence`].
    fenced: bool,
    /// The request target of the head handed to pingora, as the client sent it.
    raw_target: Option<bytes::Bytes>,
    /// Bytes that arrived while fenced.
    held: BytesMut,
    /// Writes held and flushes put off (an HTTP/2 connection, [`TimedHead::cork_writes`]).
    cork: Option<Cork>,
    /// Bytes were written through this stream since its last completed flush (they may wait
    /// in pingora's write buffer).
    unflushed: bool,
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
        if let Some(cork) = &mut this.cork {
            // A write the socket cannot take yet does not stop the reading (the client may be
            // sending what lets it read, and the waker is the same): it is paid on a later turn.
            if let Poll::Ready(Err(e)) = cork.pay(&mut this.inner, cx) {
                return Poll::Ready(Err(e));
            }
        }
        if !this.rewound.is_empty() {
            // Already accounted when `try_peek` read them.
            let n = this.rewound.len().min(buf.remaining());
            buf.put_slice(&this.rewound.split_to(n));
            return Poll::Ready(Ok(()));
        }
        if this.fenced {
            return this.poll_hold(cx);
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
            this.unflushed = true;
            let _ = Pin::new(&mut this.inner).poll_write(cx, TIMED_OUT);
        }
        Poll::Ready(Err(timed_out()))
    }
}

impl TimedHead {
    /// A read while fenced: what arrives is held for the connection loop, and the reader is told
    /// nothing came (`Pending`), or that the client closed (`Ready` with no bytes).
    fn poll_hold(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bounded like a head: a client that floods a fenced connection waits for the request.
        if self.held.len() >= HELD_MAX {
            return Poll::Pending;
        }
        let mut chunk = [0u8; 4096];
        let mut read = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.inner).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Ok(())),
            Poll::Ready(Ok(())) => {
                self.held.extend_from_slice(read.filled());
                // Pending without a wake-up to come: the reader is pingora polling an idle
                // client beside the request's real work, which wakes it.
                Poll::Pending
            }
            other => other,
        }
    }
}

/// Bytes held while fenced before reads stop (a pipelined window of requests).
const HELD_MAX: usize = 256 << 10;

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
        let this = &mut *self;
        this.unflushed = true;
        match &mut this.cork {
            Some(cork) => cork.write(&mut this.inner, cx, &[io::IoSlice::new(buf)]),
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.unflushed = true;
        match &mut this.cork {
            Some(cork) => cork.write(&mut this.inner, cx, bufs),
            None => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.cork.is_some() || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let flushed = match &mut this.cork {
            Some(cork) => cork.flush(&mut this.inner, cx),
            None => Pin::new(&mut this.inner).poll_flush(cx),
        };
        if let Poll::Ready(Ok(())) = flushed {
            this.unflushed = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(cork) = &mut this.cork {
            std::task::ready!(cork.pay(&mut this.inner, cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
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
                        self.unflushed = true;
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
            scan: HeadScan::default(),
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

    #[test]
    fn empty_lines_before_a_head_do_not_stop_the_clock() {
        let mut s = state();
        s.saw(b"\r\n\r\n");
        assert!(s.armed, "leading empty lines are not a head");
        s.saw(b"G");
        assert!(s.armed);
        let mut s = state();
        s.saw(b"GET / HTTP/1.1\nHost: a\n\n");
        assert!(!s.armed, "a head ending in bare LF ends the clock");
    }
}
