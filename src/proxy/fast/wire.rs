//! HTTP/1.1 heads written byte by byte by the fast paths ([`super`], [`super::relay`]):
//! a start line, header lines in the order given, and the end as pingora's writer frames a
//! response (`Date` and `Connection` last).

use bytes::{BufMut, BytesMut};
use http::StatusCode;

/// A message head being written.
pub struct HeadWriter(BytesMut);

impl HeadWriter {
    /// A response head: `HTTP/1.1 <code> <reason>`.
    pub fn response(status: StatusCode, capacity: usize) -> HeadWriter {
        let mut out = BytesMut::with_capacity(capacity);
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

    /// Ends a response head as pingora's writer would: the current `Date`, a kept-alive
    /// connection.
    pub fn finish_response(mut self) -> BytesMut {
        self.line(
            b"Date",
            pingora::protocols::http::date::get_cached_date().as_bytes(),
        );
        self.line(b"Connection", b"keep-alive");
        self.finish()
    }

    /// Ends the head as it is.
    pub fn finish(mut self) -> BytesMut {
        self.0.put_slice(b"\r\n");
        self.0
    }
}
