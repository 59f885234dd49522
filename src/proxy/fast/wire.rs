//! HTTP/1.1 heads written byte by byte by the fast paths ([`super`], [`super::relay`]):
//! a start line, header lines in the order given, and the end as pingora's writer frames a
//! response (`Date` and `Connection` last).

use crate::proxy::decide::headers::CacheStatus;
use crate::proxy::decide::Answer;
use bytes::{BufMut, BytesMut};
use http::StatusCode;

/// A message head being written.
pub struct HeadWriter(BytesMut);

impl HeadWriter {
    /// A response head: `HTTP/1.1 <code> <reason>`.
    pub fn response(status: StatusCode, capacity: usize) -> HeadWriter {
        Self::response_in(BytesMut::with_capacity(capacity), status)
    }

    /// [`Self::response`] written into `out` (empty; its room is kept).
    pub fn response_in(mut out: BytesMut, status: StatusCode) -> HeadWriter {
        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(status.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.put_slice(b"\r\n");
        HeadWriter(out)
    }

    /// A request head: `<method> <target> HTTP/1.1`.
    pub fn request(method: &http::Method, target: &str) -> HeadWriter {
        let mut out = BytesMut::with_capacity(512);
        out.put_slice(method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(target.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        HeadWriter(out)
    }

    pub fn line(&mut self, name: &[u8], value: &[u8]) {
        self.line_with(name, |out| out.put_slice(value));
    }

    /// A header line whose value `value` writes (no `format!` per request).
    pub fn line_with(&mut self, name: &[u8], value: impl FnOnce(&mut BytesMut)) {
        self.0.put_slice(name);
        self.0.put_slice(b": ");
        value(&mut self.0);
        self.0.put_slice(b"\r\n");
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Appends `; value` to the field value that ends at `at` (as [`Self::len`] gave it before
    /// that line's CRLF), moving what was written after it; returns the bytes added. (A rare
    /// case: a second `Cookie` field.)
    pub fn join_value_at(&mut self, at: usize, value: &[u8]) -> usize {
        let tail = self.0[at..].to_vec();
        self.0.truncate(at);
        self.0.put_slice(b"; ");
        self.0.put_slice(value);
        self.0.put_slice(&tail);
        value.len() + 2
    }

    /// Ends a response head as pingora's writer would: the response's own `Date` (a stored
    /// or forwarded one, which a cache must not change) or else the current one, a kept-alive
    /// connection.
    pub fn finish_response(mut self, date: Option<&[u8]>) -> BytesMut {
        match date {
            Some(date) => self.line(b"Date", date),
            // Only then: the cached date reads the clock to see whether it is still current.
            None => self.line(
                b"Date",
                pingora::protocols::http::date::get_cached_date().as_bytes(),
            ),
        }
        self.line(b"Connection", b"keep-alive");
        self.finish()
    }

    /// Ends a response head after which the connection closes: the current `Date`,
    /// `Connection: close`.
    pub fn finish_closing(mut self) -> BytesMut {
        self.line(
            b"Date",
            pingora::protocols::http::date::get_cached_date().as_bytes(),
        );
        self.line(b"Connection", b"close");
        self.finish()
    }

    /// Ends the head as it is.
    pub fn finish(mut self) -> BytesMut {
        self.0.put_slice(b"\r\n");
        self.0
    }
}

/// An edge answer as bytes, head and body, with the headers pingora's path writes for it
/// (`hooks::edge::send`); the connection closes after it.
pub fn answer(a: &Answer, request_id: &str) -> BytesMut {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = HeadWriter::response(status, 256 + a.body.len());
    out.line_with(b"cache-status", |v| CacheStatus::edge(a.detail).write(v));
    if !request_id.is_empty() {
        out.line(b"x-request-id", request_id.as_bytes());
    }
    if !a.body.is_empty() {
        out.line(b"content-type", a.content_type.as_bytes());
    }
    out.line(b"content-length", a.body.len().to_string().as_bytes());
    out.line(b"cache-control", a.cache_control.as_bytes());
    if let Some(location) = &a.location {
        out.line(b"location", location.as_bytes());
    }
    if let Some(after) = a.retry_after {
        out.line(b"retry-after", after.as_secs().to_string().as_bytes());
    }
    let mut bytes = out.finish_closing();
    bytes.extend_from_slice(&a.body);
    bytes
}
