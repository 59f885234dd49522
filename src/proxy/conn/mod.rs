//! The client connection: what every HTTP/1 or HTTP/2 connection goes through before either
//! transport sees a request. [`limit`] admits it (connection limits), [`headclock`] times each
//! request head, [`framing`] says where a head ends, and [`serve_connection`] frames HTTP/1
//! requests one by one, offering each to the fast transport ([`super::fast`]) and handing the
//! rest to pingora's proxy ([`super::hooks`]) one request at a time; [`h2`] does the same for
//! the streams of an HTTP/2 connection, and [`cork`] coalesces what it writes. [`drain`] makes
//! answers close their connections when the process is told to quit.

mod cork;
pub mod drain;
pub mod framing;
pub mod h2;
pub mod headclock;
pub mod limit;

use super::fast::{Conn, FastPath, Outcome};
use headclock::TimedHead;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Peek, Ssl, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::Arc;

/// The two transports of a listener: pingora's proxy app `A` and the fast transport.
pub struct Transports<A> {
    pub proxy: Arc<A>,
    pub fast: FastPath,
}

/// Serves one client connection: HTTP/2 goes to [`h2::serve`]; HTTP/1 requests are
/// framed here one by one (whether or not the fast paths are on, so both transports see the
/// same requests), tried on the fast path, and the others handed to pingora one request at a
/// time (what pingora's own connection loop does, with the same keep-alive settings carried
/// between requests).
pub async fn serve_connection<A: HttpServerApp + Send + Sync + 'static>(
    transports: &Arc<Transports<A>>,
    mut stream: Box<TimedHead>,
    shutdown: &ShutdownWatch,
) {
    let (fast, app) = (&transports.fast, &transports.proxy);
    let h2c = app.server_options().is_some_and(|o| o.h2c);
    let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
    let mut http1 = !h2;
    if http1 && h2c && !stream.is_tls() {
        let mut preface = [0u8; 24];
        match stream.try_peek(&mut preface).await {
            Ok(_) => http1 = &preface != b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            Err(_) => return,
        }
    }
    if !http1 {
        return h2::serve(transports, stream, shutdown).await;
    }
    let mut settings: Option<HttpPersistentSettings> = None;
    let mut conn = Conn::default();
    loop {
        let quitting = *shutdown.borrow();
        match fast.serve(&mut stream, &mut conn, quitting).await {
            Outcome::Served => continue,
            Outcome::Closed => return,
            Outcome::ToPingora => {}
        }
        let mut session = ServerSession::new_http1(stream);
        match settings.take() {
            Some(s) => s.apply_to_session(&mut session),
            None => {
                // What pingora's loop sets on a connection's first session.
                session.set_keepalive(if *shutdown.borrow() {
                    None
                } else {
                    Some(super::fast::as_pingora::FIRST_KEEPALIVE_SECS)
                });
                session.set_keepalive_reuses_remaining(
                    app.server_options().and_then(|o| o.keepalive_request_limit),
                );
            }
        }
        let Some(reused) = app.process_new_http(session, shutdown).await else {
            return;
        };
        let (next, persistent) = reused.consume();
        settings = persistent;
        match next.into_any().downcast::<TimedHead>() {
            Ok(s) => stream = s,
            Err(_) => return,
        }
    }
}
