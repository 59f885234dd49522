//! Writes to a plain TCP client past pingora's stream: a stored body kept in a memory file
//! (`cache::body`) with `sendfile(2)` (the socket takes references to the file's pages instead
//! of a copy of them), and a whole answer made here ([`ClientOut`]) with one `send(2)`
//! (pingora's stream would first copy an answer shorter than its write buffer into the
//! buffer, then write the buffer on the flush).
//!
//! The client socket belongs to pingora's stream (a boxed trait object whose tokio
//! registration we cannot reach), so waiting for room in the send buffer uses a duplicate of
//! the descriptor registered with tokio for write readiness only. epoll keys registrations by
//! descriptor *and* file, so the duplicate lives beside the original's registration; it is made
//! once per connection, on the first send that finds the buffer full, and kept in the
//! fast path's per-connection state.
//!
//! Only for plain sockets: a TLS stream must encrypt the bytes itself, and gets them from the
//! same file through its mapping.

use crate::cache::body::BodyFile;
use crate::proxy::conn::headclock::TimedHead;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};

/// The per-connection waiter for write readiness (see the module doc).
#[derive(Default)]
pub struct Writable(Option<AsyncFd<OwnedFd>>);

/// Sends `head` and then the whole of `file` on the socket `sock` (non-blocking, owned by the
/// caller's stream, with nothing buffered ahead of it). The head goes with `MSG_MORE`, so that
/// it leaves in the same segment as the start of the body, as one `writev` would send it.
pub async fn send(
    sock: RawFd,
    head: &[u8],
    file: &BodyFile,
    waiter: &mut Writable,
) -> io::Result<()> {
    let mut sent = 0;
    while sent < head.len() {
        let step =
            |sent: &mut usize| send_once(sock, &head[*sent..], libc::MSG_MORE).map(|n| *sent += n);
        retry(sock, waiter, || step(&mut sent)).await?;
    }
    let len = file.len();
    let mut offset: libc::off_t = 0;
    while (offset as usize) < len {
        retry(sock, waiter, || sendfile_once(sock, file, &mut offset, len)).await?;
    }
    Ok(())
}

/// Sends all of `bytes` on the socket `sock` (non-blocking, owned by the caller's stream, with
/// nothing buffered ahead of it).
pub async fn send_all(sock: RawFd, bytes: &[u8], waiter: &mut Writable) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        let step = |sent: &mut usize| send_once(sock, &bytes[*sent..], 0).map(|n| *sent += n);
        retry(sock, waiter, || step(&mut sent)).await?;
    }
    Ok(())
}

/// Where the fast transport writes a client's answer: its stream, and the waiter for room in
/// the socket's send buffer.
pub struct ClientOut<'a> {
    pub stream: &'a mut TimedHead,
    pub waiter: &'a mut Writable,
}

impl ClientOut<'_> {
    /// Writes `bytes` and sees them onto the socket: sent on it directly when it is a plain
    /// TCP socket with nothing waiting in the stream's buffer, else through the stream and
    /// flushed.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.stream.raw_socket() {
            Some(sock) => send_all(sock, bytes, self.waiter).await,
            None => {
                self.stream.write_all(bytes).await?;
                self.stream.flush().await
            }
        }
    }
}

/// An HTTP/1.1 connection: a body without a length goes in chunks.
impl super::origin::BodySink for ClientOut<'_> {
    const CHUNKS: bool = true;

    async fn put(&mut self, out: &mut bytes::BytesMut, _end: bool) -> io::Result<()> {
        if !out.is_empty() {
            self.send(out).await?;
            out.clear();
        }
        Ok(())
    }
}

/// Runs `op` once, and again each time the socket becomes writable while it would block.
async fn retry(
    sock: RawFd,
    waiter: &mut Writable,
    mut op: impl FnMut() -> io::Result<()>,
) -> io::Result<()> {
    match op() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        done => return done,
    }
    let fd = match &mut waiter.0 {
        Some(fd) => fd,
        None => waiter.0.insert(register(sock)?),
    };
    loop {
        let mut ready = fd.writable().await?;
        // Clears the readiness tokio saw when the buffer turns out to be still full.
        if let Ok(done) = ready.try_io(|_| op()) {
            return done;
        }
    }
}

/// One `send` of `bytes` with `flags` (and `MSG_NOSIGNAL`); how many bytes it took.
fn send_once(sock: RawFd, bytes: &[u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        // SAFETY: sends from a live slice of the stated length.
        let n = unsafe {
            libc::send(
                sock,
                bytes.as_ptr().cast(),
                bytes.len(),
                flags | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One `sendfile` call from `offset` (which the kernel advances); `WouldBlock` when the send
/// buffer is full.
fn sendfile_once(
    sock: RawFd,
    file: &BodyFile,
    offset: &mut libc::off_t,
    len: usize,
) -> io::Result<()> {
    loop {
        let rest = len - *offset as usize;
        // SAFETY: both descriptors are open for the duration of the call; `offset` is a
        // live local.
        let n = unsafe { libc::sendfile(sock, file.raw_fd(), offset, rest) };
        if n > 0 {
            return Ok(());
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A duplicate of `sock` registered for write readiness.
fn register(sock: RawFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: duplicates a descriptor the caller keeps open; the result is checked and owned.
    let dup = unsafe { libc::fcntl(sock, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a descriptor we just opened.
    let owned = unsafe { OwnedFd::from_raw_fd(dup) };
    // SAFETY: the AsyncFd owns `owned`, an open descriptor that stays open (and the same)
    // until the AsyncFd is dropped.
    unsafe { AsyncFd::register_with_interest(owned, Interest::WRITABLE) }.map_err(|e| e.into())
}
