//! Write coalescing for an HTTP/2 connection: what h2 writes is held, and the flushes it asks
//! for while it works are put off until it next touches the connection, so the answers of
//! every stream it handled in one turn leave in one TLS write and one `send`.
//!
//! Why: h2 flushes its output whenever it queues a DATA frame it did not copy (any body over
//! 256 bytes), and pingora's buffered socket holds 1,460 bytes, so each answer was its own TLS
//! record, `send` and loopback or network segment: 1.0 `send` per 1 KiB hit under
//! `h2load -m 10`, with the kernel's share of a hit a third of the proxy's CPU. nginx writes a
//! connection's pending frames together (its `ssl_buffer_size`, 16 KiB).
//!
//! A put-off flush is owed: [`Cork::flush`] wakes the connection's task, and the next read
//! or shutdown of the connection pays it ([`Cork::pay`]; a read goes on when the socket
//! cannot take the bytes yet, and a later turn pays). h2 ends every turn that waits for the
//! client by reading the connection (or shutting it down), so nothing is held while the
//! connection waits.

use bytes::{Buf, BytesMut};
use pingora::protocols::Stream;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;

/// Bytes held before they are written through at once (a turn's answers to one connection's
/// concurrent streams: 100 streams of 1 KiB, or four of 16 KiB).
const HOLD_MAX: usize = 128 << 10;

/// The held writes of one connection.
#[derive(Default)]
pub struct Cork {
    held: BytesMut,
    /// A flush was asked for and not done yet.
    owed: bool,
}

impl Cork {
    pub fn write(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.held.len() + len > HOLD_MAX {
            ready!(self.drain(inner, cx))?;
            if len > HOLD_MAX {
                return Pin::new(inner).poll_write_vectored(cx, bufs);
            }
        }
        if self.held.capacity() == 0 {
            // A turn's worth at once: grown write by write, the held bytes were copied again at
            // each doubling (a 16 KiB answer's bytes almost twice more).
            self.held.reserve(HOLD_MAX);
        }
        for b in bufs {
            self.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    /// A flush asked for: put off while anything is held (the task is woken to pay it).
    pub fn flush(&mut self, inner: &mut Stream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.is_empty() && !self.owed {
            return Pin::new(inner).poll_flush(cx);
        }
        if !self.owed {
            self.owed = true;
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what is held and flushes, when a flush is owed.
    pub fn pay(&mut self, inner: &mut Stream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.owed {
            return Poll::Ready(Ok(()));
        }
        ready!(self.drain(inner, cx))?;
        ready!(Pin::new(inner).poll_flush(cx))?;
        self.owed = false;
        // An idle connection keeps no buffer (one allocation per turn instead).
        self.held = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    fn drain(&mut self, inner: &mut Stream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}
