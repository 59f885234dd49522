//! Where a relayed pass's answer goes ([`super::relay`]): the client's HTTP/1.1 connection or
//! one HTTP/2 stream. The response head has the same fields on both ([`fields`]); what differs
//! is only how it travels. On HTTP/1.1 the head is written as bytes and sent with the body's
//! first bytes, a body the origin framed by chunks or by closing goes out in chunks, and the
//! connection closes after an edge answer or a cut-short body. On HTTP/2 the head is queued
//! on the stream as pingora's HTTP/2 writer takes it (a `ResponseHeader`; it drops the fields
//! HTTP/2 cannot carry and adds `Date` when there is none), the body goes in DATA frames, and
//! a body cut short resets the stream.

use super::hit::{Head, CACHE_STATUS, X_REQUEST_ID};
use super::origin::{self, BodySink, Framing, SpareBuffer};
use super::relay::{hop_by_hop, Readmitted, Reason, Relay};
use super::sendfile::ClientOut;
use super::wire;
use crate::proxy::decide::answer::Answer;
use crate::proxy::decide::headers::{self, CacheStatus};
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::HttpSession;
use std::io;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// A client a pass answers.
pub(crate) trait Downstream: BodySink {
    /// Starts the answer with the response head for the origin's `head`; returns what goes
    /// before the body in the first [`BodySink::put`] (the HTTP/1.1 head's bytes; nothing on
    /// HTTP/2, where the head is queued on the stream at once).
    fn start(
        &mut self,
        relay: &Relay<'_>,
        head: &origin::ResponseHead,
        readmitted: Option<&Readmitted>,
    ) -> io::Result<SpareBuffer>;
    /// Answers with the edge's own `answer` as the whole response.
    async fn answer(&mut self, answer: &Answer, request_id: &str);
    /// The request's header fields (read only to store a response that may vary).
    fn request_headers(&self) -> http::HeaderMap;
    /// The answer went out whole, ending at `end`.
    fn finished(&mut self, relay: &Relay<'_>, end: Instant);
    /// The answer was cut short after its head went out.
    fn cut_short(&mut self);
}

/// A client's HTTP/1.1 connection, and its request head as it sent it.
pub struct H1<'a, 'b> {
    pub out: ClientOut<'a>,
    pub request: &'b [u8],
}

impl BodySink for H1<'_, '_> {
    const CHUNKS: bool = true;

    async fn put(&mut self, out: &mut BytesMut, end: bool) -> io::Result<()> {
        self.out.put(out, end).await
    }
}

impl Downstream for H1<'_, '_> {
    fn start(
        &mut self,
        relay: &Relay<'_>,
        head: &origin::ResponseHead,
        readmitted: Option<&Readmitted>,
    ) -> io::Result<SpareBuffer> {
        // Room for the head and a small body after it (appending does not move it then), in a
        // spare buffer of the thread's: the head writer owns it while writing, and it is a
        // spare again (back to the thread when the relay drops it) once the head is written.
        let room = head.head.len() + 256 + origin::body_room(head.framing);
        let mut spare = SpareBuffer::take().into_inner();
        spare.reserve(room);
        let mut out = wire::HeadWriter::response_in(spare, head.status);
        fields(&mut out, relay, head, readmitted, true);
        let date = head
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(b"date"))
            .map(|(_, v)| v);
        Ok(SpareBuffer::from_taken(out.finish_response(date)))
    }

    async fn answer(&mut self, answer: &Answer, request_id: &str) {
        let stream = &mut *self.out.stream;
        let _ = stream.write_all(&wire::answer(answer, request_id)).await;
        let _ = stream.flush().await;
    }

    fn request_headers(&self) -> http::HeaderMap {
        super::relay::request_headers(self.request)
    }

    fn finished(&mut self, relay: &Relay<'_>, end: Instant) {
        // The client's next head is timed from the end of this answer.
        let limits = &relay.runtime.proxy.limits;
        (self.out.stream).rearm_at(end.into(), limits.header_timeout, limits.keepalive_timeout);
    }

    /// Only closing the connection tells the client (the caller closes it).
    fn cut_short(&mut self) {}
}

/// One HTTP/2 stream.
pub struct H2<'a> {
    session: &'a mut HttpSession,
    /// The stream's end was sent.
    ended: bool,
}

impl<'a> H2<'a> {
    pub fn new(session: &'a mut HttpSession) -> Self {
        H2 {
            session,
            ended: false,
        }
    }
}

impl BodySink for H2<'_> {
    /// DATA frames carry the body; a body without a length just ends with the stream.
    const CHUNKS: bool = false;

    async fn put(&mut self, out: &mut BytesMut, end: bool) -> io::Result<()> {
        if self.ended || out.is_empty() && !end {
            return Ok(());
        }
        // A copy: the buffer is a spare the next read reuses, and h2 keeps what it is given
        // until the client's window lets it go.
        let data = Bytes::copy_from_slice(out);
        out.clear();
        self.ended = end;
        self.session
            .write_body(data, end)
            .await
            .map_err(io::Error::other)
    }
}

impl Downstream for H2<'_> {
    fn start(
        &mut self,
        relay: &Relay<'_>,
        head: &origin::ResponseHead,
        readmitted: Option<&Readmitted>,
    ) -> io::Result<SpareBuffer> {
        let mut resp = ResponseHeader::build_no_case(head.status, Some(head.fields.len() + 3))
            .map_err(io::Error::other)?;
        fields(&mut resp, relay, head, readmitted, false);
        // The origin's Date, which pingora's writer keeps; it adds the current one otherwise.
        if let Some((_, date)) = head.iter().find(|(n, _)| n.eq_ignore_ascii_case(b"date")) {
            resp.raw(b"date", date);
        }
        let end = head.framing == Framing::Empty;
        self.ended = end;
        self.session
            .write_response_header(Box::new(resp), end)
            .map_err(io::Error::other)?;
        Ok(SpareBuffer::take())
    }

    async fn answer(&mut self, answer: &Answer, request_id: &str) {
        let Ok(resp) = crate::proxy::hooks::edge::head(answer, request_id) else {
            return;
        };
        let empty = answer.body.is_empty();
        if self
            .session
            .write_response_header(Box::new(resp), empty)
            .is_ok()
            && !empty
        {
            let _ = self.session.write_body(answer.body.clone(), true).await;
        }
        self.ended = true;
    }

    fn request_headers(&self) -> http::HeaderMap {
        self.session.req_header().headers.clone()
    }

    fn finished(&mut self, _relay: &Relay<'_>, _end: Instant) {}

    /// A reset, which tells the client the response is incomplete (an ended stream would
    /// pass for a whole one).
    fn cut_short(&mut self) {
        self.session.shutdown();
    }
}

/// The response head's fields for the client, on either protocol: the origin's fields but the
/// internal ones and those pingora's writer replaces, then `X-Request-Id` and `Cache-Status`.
/// (`Date` and, on HTTP/1.1, `Connection` are the writer's.) `chunks`: the body goes in HTTP/1.1
/// chunks where the origin framed it by closing.
fn fields(
    out: &mut impl Head,
    relay: &Relay<'_>,
    head: &origin::ResponseHead,
    readmitted: Option<&Readmitted>,
    chunks: bool,
) {
    let stored = match readmitted {
        Some(Readmitted::Store(meta)) => Some(meta),
        _ => None,
    };
    // A stored object gets the route's browser TTL, as on pingora's path.
    let browser = stored.and_then(|_| headers::browser_cache_control(relay.rule));
    let tags = &relay.runtime.cache.tag_headers;
    let hop = hop_by_hop(head);
    for (name, value) in head.iter() {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        let replaced = is("connection") || is("date") || is("x-request-id") || hop.contains(name);
        // A body framed by chunks goes out framed by chunks (or frames) only.
        let reframed = head.framing == Framing::Chunked && is("content-length");
        let targeted = |t: &String| name.eq_ignore_ascii_case(t.as_bytes());
        if replaced
            || reframed
            || headers::is_internal(name, tags)
            || relay.rule.targeted.iter().any(targeted)
            || browser.is_some() && (is("cache-control") || is("expires"))
        {
            continue;
        }
        out.raw(name, value);
    }
    if let Some(cc) = &browser {
        out.set(header::CACHE_CONTROL, b"Cache-Control", cc.as_bytes());
    }
    if chunks && head.framing == Framing::Close {
        out.set(header::TRANSFER_ENCODING, b"Transfer-Encoding", b"chunked");
    }
    out.set(X_REQUEST_ID, b"x-request-id", relay.request_id.as_bytes());
    let status = match (&relay.reason, readmitted) {
        (Reason::Bypass(b), _) => CacheStatus::bypass(*b),
        (Reason::Predicted(..), Some(Readmitted::Store(meta))) => CacheStatus {
            fwd: Some("miss"),
            fwd_status: Some(head.status.as_u16()),
            stored: true,
            fresh_until: Some(meta.fresh_until()),
            ..Default::default()
        },
        (Reason::Predicted(..), Some(Readmitted::NotStored(reason))) => CacheStatus {
            fwd: Some("miss"),
            fwd_status: Some(head.status.as_u16()),
            detail: Some(reason),
            ..Default::default()
        },
        (Reason::Predicted(..), None) => unreachable!("a predicted key is always readmitted"),
    };
    out.set_with(CACHE_STATUS, b"cache-status", |v| status.write(v));
}
