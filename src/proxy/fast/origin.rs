//! The pass fast path's HTTP/1.1 client (see [`super::relay`]): idle origin connections,
//! reading an origin's response head, and relaying its body to the client in a framing the
//! client can trust.
//!
//! Idle connections are kept in one pool per process (a mutex held for a push or a pop): a
//! first version kept them per worker thread, but tokio moves tasks between its workers, so one
//! thread's pool filled and closed connections while the other's ran dry and connected anew
//! (168 new connections in 3 s of the pass benchmark, ~5% of the CPU in connect/close).

use super::as_pingora;
use bytes::{Buf, BytesMut};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 4096;
/// Body bytes gathered before a write to the client.
const WRITE_AT: usize = 64 << 10;

/// foldhash rather than SipHash: each pass looks its origin up here twice.
type Idle = foldhash::HashMap<SocketAddr, VecDeque<(TcpStream, Instant)>>;

/// The idle pool in shards, one per serving thread (round robin): a pass takes and returns
/// connections on its own thread's shard, so passes on different threads never wait for each
/// other's lock (one process-wide mutex was taken twice per pass), and with
/// `server.work_stealing = false` (the default) a connection stays with the runtime that opened
/// it, as nginx's per-worker keep-alive pools. A thread whose shard is empty takes from another
/// shard only when that one's lock is free, and moves what it takes to its own reactor.
use crate::shard::{Padded, SHARDS};

static IDLE: LazyLock<[Padded<Mutex<Idle>>; SHARDS]> =
    LazyLock::new(|| std::array::from_fn(|_| Padded(Mutex::new(Idle::default()))));

fn lock(shard: &Mutex<Idle>) -> std::sync::MutexGuard<'_, Idle> {
    // A panic while holding the lock leaves only a map of sockets behind: still usable.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

fn own_shard() -> &'static Mutex<Idle> {
    &IDLE[crate::shard::index()]
}

/// An idle connection to `addr`, open and idle for less than `idle` (most recently used
/// first: the one least likely to have been closed by the origin): from this thread's shard,
/// else from a shard no other thread holds.
pub fn take_idle(addr: SocketAddr, idle: Duration, now: Instant) -> Option<TcpStream> {
    let own = crate::shard::index();
    if let Some(stream) = take_from(&mut lock(&IDLE[own]), addr, idle, now) {
        return Some(stream);
    }
    (1..SHARDS)
        .map(|i| &IDLE[(own + i) % SHARDS])
        .find_map(|shard| take_from(&mut *shard.try_lock().ok()?, addr, idle, now))
        .and_then(register_here)
}

/// A connection from another thread's shard, moved to this thread's reactor when each thread
/// has its own (work stealing off): its readiness would otherwise arrive through the thread
/// that opened it and wake this one from there, for as long as it lives.
fn register_here(stream: TcpStream) -> Option<TcpStream> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::CurrentThread) => stream.into_std().and_then(TcpStream::from_std).ok(),
        _ => Some(stream),
    }
}

fn take_from(pool: &mut Idle, addr: SocketAddr, idle: Duration, now: Instant) -> Option<TcpStream> {
    loop {
        let (stream, since) = pool.get_mut(&addr)?.pop_back()?;
        if now.saturating_duration_since(since) >= idle {
            // Everything older is older still; `put_idle` drops those.
            return None;
        }
        // An origin that closed the connection (or wrote unasked) made it readable; tokio
        // answers from the readiness it already knows, without a system call, when it did not.
        let mut probe = [0u8; 1];
        if matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            return Some(stream);
        }
    }
}

/// Keeps a connection whose last exchange ended cleanly for a next request, in this thread's
/// shard (at most pingora's idle pool size per server and shard).
pub fn put_idle(addr: SocketAddr, stream: TcpStream, idle: Duration, now: Instant) {
    let mut pool = lock(own_shard());
    let conns = pool.entry(addr).or_default();
    while conns
        .front()
        .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= idle)
    {
        conns.pop_front();
    }
    if conns.len() < as_pingora::IDLE_CONNECTIONS {
        conns.push_back((stream, now));
    }
}

/// Closes every idle connection idle for `idle` or longer at `now`, and forgets origins left
/// with none (a server removed by a reload, a pool flipped away from).
fn sweep_idle(idle: Duration, now: Instant) {
    for shard in IDLE.iter() {
        lock(shard).retain(|_, conns| {
            conns.retain(|(_, since)| now.saturating_duration_since(*since) < idle);
            !conns.is_empty()
        });
    }
}

/// Closes the idle connections to every server not in `servers` (after a reload removed some:
/// nothing would take them again).
pub fn forget_idle_except(servers: &std::collections::HashSet<SocketAddr>) {
    for shard in IDLE.iter() {
        lock(shard).retain(|addr, _| servers.contains(addr));
    }
}

/// The background service that closes idle origin connections on time: `take_idle` and
/// `put_idle` only look at an origin's connections when one is taken or returned, so after a
/// flip the old pool's stayed open until the process ended.
pub struct IdleSweep {
    pub runtime: std::sync::Arc<arc_swap::ArcSwap<crate::config::Runtime>>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for IdleSweep {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            let idle = self.runtime.load().origin.idle_timeout;
            // A connection closes at most a quarter of its idle timeout (or a second) late.
            let tick = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(tick) => sweep_idle(idle, Instant::now()),
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// A new connection to `addr`.
pub async fn connect(addr: SocketAddr, limit: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What one read from the origin takes at most (the relay's buffer).
pub const READ_SIZE: usize = 16 << 10;

/// A buffer of at least [`READ_SIZE`] bytes (a pass's reads from the origin, its answer to
/// the client) that goes back to its thread's spares when dropped, for the next pass to take:
/// an allocation of that size and its release, twice on every pass, cost more than keeping a
/// few. One that is still shared (a part of it lives on) is let go instead.
pub struct SpareBuffer(BytesMut);

thread_local! {
    static SPARE_BUFFERS: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Spares kept per thread: enough for the passes one thread has in flight at once, mostly.
const SPARES: usize = 16;

impl SpareBuffer {
    /// A spare of this thread's (empty), else a new one.
    pub fn take() -> SpareBuffer {
        let spare = SPARE_BUFFERS.with(|s| s.borrow_mut().pop());
        SpareBuffer(spare.unwrap_or_else(|| BytesMut::with_capacity(READ_SIZE)))
    }

    /// `buf` (one taken with [`SpareBuffer::take`] and filled), to go back when dropped.
    pub fn from_taken(buf: BytesMut) -> SpareBuffer {
        SpareBuffer(buf)
    }

    /// The buffer itself, no longer a spare.
    pub fn into_inner(mut self) -> BytesMut {
        std::mem::take(&mut self.0)
    }
}

impl std::ops::Deref for SpareBuffer {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.0
    }
}

impl std::ops::DerefMut for SpareBuffer {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.0
    }
}

impl Drop for SpareBuffer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        // Only a buffer no `Bytes` still shares gets its whole room back.
        if buf.try_reclaim(READ_SIZE) {
            SPARE_BUFFERS.with(|s| {
                let mut spares = s.borrow_mut();
                if spares.len() < SPARES {
                    spares.push(buf);
                }
            });
        }
    }
}

/// The body bytes the client's first write may carry after the head: the buffer holding the
/// head is made with room for them, so that appending a small body does not move it.
pub fn body_room(framing: Framing) -> usize {
    match framing {
        Framing::Length(n) => n.min(READ_SIZE as u64) as usize,
        _ => 0,
    }
}

/// The timer of a client connection's reads from the origin, kept from one pass to the next.
/// A new timer per read (`tokio::time::timeout`) is inserted into the runtime's timer wheel
/// when the read waits and taken out when it ends, on every pass; moving a kept timer's
/// deadline later only marks it (the wheel looks again when the old deadline comes).
#[derive(Default)]
pub struct ReadClock(Option<Pin<Box<Sleep>>>);

impl ReadClock {
    /// This clock for reads that may each wait `limit`.
    pub fn limit(&mut self, limit: Duration) -> ReadLimit<'_> {
        ReadLimit { clock: self, limit }
    }
}

/// How long one read from the origin may wait, timed on a connection's [`ReadClock`].
pub struct ReadLimit<'c> {
    clock: &'c mut ReadClock,
    limit: Duration,
}

impl ReadLimit<'_> {
    /// The timer, due one limit from now.
    fn arm(&mut self) -> Pin<&mut Sleep> {
        let deadline = tokio::time::Instant::now() + self.limit;
        let sleep = self
            .clock
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        sleep.as_mut().reset(deadline);
        sleep.as_mut()
    }
}

/// Reads more of the response into `buf`, waiting at most the limit when nothing has arrived
/// yet; `Ok(0)` when the origin closed the connection.
pub async fn read_more(
    up: &mut TcpStream,
    buf: &mut BytesMut,
    limit: &mut ReadLimit<'_>,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(READ_SIZE);
    }
    // Bytes already there (the rest of a body, most often) are read without the timer.
    match up.try_read_buf(buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        read => return read,
    }
    let timer = limit.arm();
    tokio::select! {
        biased;
        read = up.read_buf(buf) => read,
        () = timer => Err(io::Error::new(io::ErrorKind::TimedOut, "origin read timed out")),
    }
}

/// How the origin's response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the origin closes the connection (sent on as chunked).
    Close,
}

/// A parsed response head: byte ranges into `head` for each field, so nothing is copied.
pub struct ResponseHead {
    pub status: http::StatusCode,
    pub head: bytes::Bytes,
    pub fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub reusable: bool,
}

impl ResponseHead {
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|(n, v)| (&self.head[n.clone()], &self.head[v.clone()]))
    }
}

/// Why a response head was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BadHead {
    Incomplete,
    Invalid(&'static str),
}

/// Parses a final response head at the start of `buf` (taking it out of `buf`); 1xx heads
/// before it are dropped, as a client asked for none. `Err(Incomplete)`: read more.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<ResponseHead, BadHead> {
    loop {
        // Uninitialised slots: initialised ones cost an 8 KiB memset per response.
        let mut slots = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() };
            as_pingora::MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > as_pingora::MAX_HEAD_BYTES => {
                return Err(BadHead::Invalid("response head too long"))
            }
            Ok(httparse::Status::Partial) => return Err(BadHead::Incomplete),
            Err(_) => return Err(BadHead::Invalid("malformed response head")),
        };
        let code = resp.code.unwrap_or(0);
        let status = http::StatusCode::from_u16(code)
            .map_err(|_| BadHead::Invalid("bad response status"))?;
        if status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(BadHead::Invalid("101 to a request that asked no upgrade"));
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| s.as_ptr() as usize - base;
        let mut fields = Vec::with_capacity(resp.headers.len());
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut close = resp.version != Some(1);
        for h in resp.headers.iter() {
            let (n, v) = (offset(h.name.as_bytes()), offset(h.value));
            fields.push((n..n + h.name.len(), v..v + h.value.len()));
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let value = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(BadHead::Invalid("bad content-length"))?;
                if length.is_some_and(|l| l != value) {
                    return Err(BadHead::Invalid("conflicting content-length"));
                }
                length = Some(value);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // Only plain `chunked` is taken; anything else is not a framing to guess at.
                if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(BadHead::Invalid("unsupported transfer-encoding"));
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                close |= h
                    .value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
        }
        let framing = if head_request || matches!(code, 204 | 304) {
            Framing::Empty
        } else if chunked {
            // With both, chunked wins (RFC 9112 §6.3); such a message is not trusted twice.
            close |= length.is_some();
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            close = true;
            Framing::Close
        };
        let head = buf.split_to(len).freeze();
        return Ok(ResponseHead {
            status,
            head,
            fields,
            framing,
            reusable: !close,
        });
    }
}

/// What went wrong while relaying a body.
#[derive(Debug)]
pub enum RelayError {
    /// The origin stalled, closed early or framed its body badly.
    Origin(&'static str),
    /// The client went away.
    Client,
}

/// A copy of a relayed body, up to a limit: a response the cache may keep is stored once it
/// has reached the client whole.
pub struct Capture {
    pub body: BytesMut,
    max: usize,
    /// The body grew past the limit (and the copy was dropped).
    pub over: bool,
}

impl Capture {
    pub fn new(max: usize, expected: Option<u64>) -> Capture {
        let hint = expected
            .map_or(0, |n| n.min(max as u64) as usize)
            .min(4 << 20);
        Capture {
            body: BytesMut::with_capacity(hint),
            max,
            over: false,
        }
    }

    fn take(&mut self, data: &[u8]) {
        if self.over {
            return;
        }
        if self.body.len() + data.len() > self.max {
            self.over = true;
            self.body = BytesMut::new();
            return;
        }
        self.body.extend_from_slice(data);
    }
}

/// Where a relayed body goes: an HTTP/1.1 client connection (bytes, in chunks where the origin
/// framed the body by chunks or by closing) or an HTTP/2 stream (DATA frames, no chunks).
pub(crate) trait BodySink {
    /// Whether a body without a length goes out in HTTP/1.1 chunks.
    const CHUNKS: bool;
    /// Sends what `out` holds and empties it; `end`: the response ends with it.
    async fn put(&mut self, out: &mut BytesMut, end: bool) -> io::Result<()>;
}

/// Sends `out` (what goes before the body: the HTTP/1.1 response head, or nothing) and then the
/// body read from `up` (starting with what is already in `buf`) to `client`, copying the body's data into `capture` when
/// given. Returns the body bytes sent and whether the origin connection ended its message
/// cleanly with nothing left over (so it can be reused).
pub(crate) async fn relay_body<S: BodySink>(
    (up, buf, framing): (&mut TcpStream, &mut BytesMut, Framing),
    client: &mut S,
    mut out: SpareBuffer,
    read_limit: &mut ReadLimit<'_>,
    mut capture: Option<&mut Capture>,
) -> Result<(usize, bool), RelayError> {
    let mut sent = 0usize;
    let mut chunks = Chunked {
        raw: !S::CHUNKS,
        ..Chunked::default()
    };
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        let done = match framing {
            Framing::Empty => true,
            Framing::Length(_) => {
                let take = (buf.len() as u64).min(left) as usize;
                out.extend_from_slice(&buf[..take]);
                if let Some(c) = capture.as_deref_mut() {
                    c.take(&buf[..take]);
                }
                buf.advance(take);
                sent += take;
                left -= take as u64;
                left == 0
            }
            Framing::Chunked => {
                let done = chunks
                    .decode_into(buf, &mut out, capture.as_deref_mut())
                    .map_err(RelayError::Origin)?;
                sent += chunks.data;
                done
            }
            Framing::Close => {
                if !buf.is_empty() {
                    sent += buf.len();
                    if let Some(c) = capture.as_deref_mut() {
                        c.take(buf);
                    }
                    emit(&mut out, buf, S::CHUNKS);
                    buf.clear();
                }
                false
            }
        };
        if (done || out.len() >= WRITE_AT || buf.is_empty()) && (done || !out.is_empty()) {
            // Onto the socket each time: what the origin sent so far must not wait for what
            // it has not.
            client
                .put(&mut out, done)
                .await
                .map_err(|_| RelayError::Client)?;
        }
        if done {
            return Ok((sent, buf.is_empty()));
        }
        if !buf.is_empty() {
            continue;
        }
        match read_more(up, buf, read_limit).await {
            Ok(0) if framing == Framing::Close => {
                if S::CHUNKS {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                client
                    .put(&mut out, true)
                    .await
                    .map_err(|_| RelayError::Client)?;
                return Ok((sent, false));
            }
            Ok(0) => return Err(RelayError::Origin("origin closed before the body ended")),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(RelayError::Origin("origin body read timed out"))
            }
            Err(_) => return Err(RelayError::Origin("origin body read failed")),
        }
    }
}

/// Appends `data` to `out`: as one chunk when `chunks`, else as it is.
fn emit(out: &mut BytesMut, data: &[u8], chunks: bool) {
    if chunks {
        chunk(out, data);
    } else {
        out.extend_from_slice(data);
    }
}

/// Appends `data` to `out` as one chunk.
fn chunk(out: &mut BytesMut, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A chunked-body decoder that re-encodes what it decodes: the client gets chunks this proxy
/// framed (or, on an HTTP/2 stream, the data alone), never the origin's bytes verbatim (an
/// origin's bad framing cannot reach the client as a second response).
#[derive(Default)]
pub struct Chunked {
    state: ChunkState,
    /// Data bytes appended by the last `decode` call.
    data: usize,
    /// The data is appended as it is, not re-framed (for an HTTP/2 stream).
    raw: bool,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Chunked {
    /// Data bytes (not framing) the last `decode` call appended.
    pub fn data(&self) -> usize {
        self.data
    }

    /// Decodes what `buf` holds, appending re-framed chunks (and the last chunk) to `out`;
    /// `Ok(true)` once the body's end was read.
    pub fn decode(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<bool, &'static str> {
        self.decode_into(buf, out, None)
    }

    /// [`Self::decode`], copying the data into `capture` too.
    fn decode_into(
        &mut self,
        buf: &mut BytesMut,
        out: &mut BytesMut,
        mut capture: Option<&mut Capture>,
    ) -> Result<bool, &'static str> {
        self.data = 0;
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(false);
                    };
                    let digits = line[..].split(|&b| b == b';').next().unwrap_or_default();
                    let digits =
                        std::str::from_utf8(digits.trim_ascii()).map_err(|_| "bad chunk size")?;
                    if digits.is_empty() || digits.len() > 15 {
                        return Err("bad chunk size");
                    }
                    let size = u64::from_str_radix(digits, 16).map_err(|_| "bad chunk size")?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(false);
                    }
                    let take = (buf.len() as u64).min(left) as usize;
                    emit(out, &buf[..take], !self.raw);
                    if let Some(c) = capture.as_deref_mut() {
                        c.take(&buf[..take]);
                    }
                    buf.advance(take);
                    self.data += take;
                    self.state = if take as u64 == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take as u64)
                    };
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(false);
                    };
                    // Trailers are dropped (pingora's path drops them too); an empty line ends.
                    if line.is_empty() {
                        if !self.raw {
                            out.extend_from_slice(b"0\r\n\r\n");
                        }
                        return Ok(true);
                    }
                }
            }
        }
    }
}

/// Takes one CRLF-terminated line (without its CRLF) off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, &'static str> {
    match memchr::memmem::find(buf, b"\r\n") {
        Some(i) if i <= MAX_LINE => {
            let line = buf.split_to(i);
            buf.advance(2);
            Ok(Some(line))
        }
        Some(_) => Err("chunk line too long"),
        None if buf.len() > MAX_LINE => Err("chunk line too long"),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool, usize), &'static str> {
        let mut c = Chunked::default();
        let (mut buf, mut out, mut data, mut done) = (BytesMut::new(), BytesMut::new(), 0, false);
        for p in pieces {
            buf.extend_from_slice(p);
            done = c.decode(&mut buf, &mut out)?;
            data += c.data;
        }
        Ok((out.to_vec(), done, data))
    }

    /// The data of a chunked body this decoder wrote (sizes, data, CRLF; no extensions).
    fn unframe(mut text: &str) -> String {
        let mut data = String::new();
        loop {
            let (size, rest) = text.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            if size == 0 {
                return data;
            }
            data.push_str(&rest[..size]);
            text = rest[size..].strip_prefix("\r\n").unwrap();
        }
    }

    #[test]
    fn chunked_bodies_are_reframed_whatever_the_reads_split() {
        let body: &[u8] = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 0..body.len() {
            let (out, done, data) = decode_all(&[&body[..split], &body[split..]]).unwrap();
            assert!(done, "split at {split}");
            assert_eq!(data, 11);
            let text = String::from_utf8(out).unwrap();
            // Re-framed: the same data, in chunks this decoder wrote, then the last chunk.
            let mut again = Chunked::default();
            let (mut b, mut o) = (BytesMut::from(text.as_bytes()), BytesMut::new());
            assert!(again.decode(&mut b, &mut o).unwrap());
            assert_eq!(again.data, 11, "split at {split}: {text:?}");
            assert!(text.ends_with("0\r\n\r\n"), "split at {split}: {text:?}");
            assert_eq!(unframe(&text), "hello world", "split at {split}");
        }
    }

    #[test]
    fn bad_chunk_framing_is_an_error_not_a_guess() {
        for bad in [
            &b"zz\r\nhello\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"\r\n",
            b"-1\r\n",
            b"10000000000000000\r\n",
        ] {
            assert!(
                decode_all(&[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(decode_all(&[&[b'1'; MAX_LINE + 10][..]]).is_err());
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let parse = |raw: &str, head: bool| parse_head(&mut BytesMut::from(raw), head);
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false).unwrap();
        assert_eq!((h.framing, h.reusable), (Framing::Length(3), true));
        let h = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, false));
        let h = parse("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!((h.framing, h.reusable), (Framing::Close, false));
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true).unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = parse("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", false).unwrap();
        assert!(!h.reusable);
        let h = parse("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n", false).unwrap();
        assert_eq!(
            (h.status.as_u16(), h.framing, h.reusable),
            (304, Framing::Empty, false)
        );
        assert_eq!(
            h.iter().next().unwrap(),
            (&b"Connection"[..], &b"close"[..])
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad, false), Err(BadHead::Invalid(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\n", false).err(),
            Some(BadHead::Incomplete)
        );
    }
}
