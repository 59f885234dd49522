//! Answers the edge writes by itself: unknown host, unknown asset version, maintenance, no
//! healthy server. Each carries `Cache-Status` with a fixed `detail` label.

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use std::time::Duration;

/// One edge answer.
pub struct Answer<'a> {
    pub status: u16,
    /// Cache-Status detail (a fixed label, never user input).
    pub detail: &'static str,
    pub content_type: &'static str,
    pub body: Bytes,
    pub cache_control: &'a str,
    pub retry_after: Option<Duration>,
    pub location: Option<String>,
}

impl Answer<'_> {
    /// A short plain-text answer that nobody caches.
    pub fn text(status: u16, detail: &'static str, body: &'static str) -> Answer<'static> {
        Answer {
            status,
            detail,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from_static(body.as_bytes()),
            cache_control: "no-store",
            retry_after: None,
            location: None,
        }
    }

    /// The maintenance / unavailable page: 503 with Retry-After.
    pub fn unavailable(detail: &'static str, page: &str, retry_after: Duration) -> Answer<'static> {
        Answer {
            status: 503,
            detail,
            content_type: "text/html; charset=utf-8",
            body: Bytes::from(page.to_string()),
            cache_control: "no-store",
            retry_after: Some(retry_after),
            location: None,
        }
    }

    /// The configured maintenance page.
    pub fn maintenance(rt: &crate::config::Runtime) -> Answer<'static> {
        Self::unavailable(
            "maintenance",
            &rt.release.maintenance_page,
            rt.release.retry_after,
        )
    }

    pub async fn send(self, session: &mut Session) -> Result<()> {
        let mut resp = ResponseHeader::build(self.status, Some(5))?;
        resp.insert_header("cache-status", format!("crossfade; detail={}", self.detail))?;
        resp.insert_header(header::CONTENT_TYPE, self.content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, self.body.len())?;
        resp.insert_header(header::CACHE_CONTROL, self.cache_control)?;
        if let Some(location) = &self.location {
            resp.insert_header(header::LOCATION, location.as_str())?;
        }
        if let Some(after) = self.retry_after {
            resp.insert_header(header::RETRY_AFTER, after.as_secs())?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(self.body), true).await
    }
}

/// A permanent redirect of a plain-HTTP request to the same URL over HTTPS (the first TLS
/// listener's port, omitted when it is 443). `None` when no TLS listener is configured.
pub fn https_redirect(
    rt: &crate::config::Runtime,
    req: &pingora::http::RequestHeader,
    host: &str,
) -> Option<Answer<'static>> {
    let port = rt.tls.as_ref()?.listen.first()?.port();
    let authority = if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let path = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    Some(Answer {
        location: Some(format!("https://{authority}{path}")),
        cache_control: "public, max-age=3600",
        ..Answer::text(
            301,
            "https-redirect",
            "crossfade: this site is served over HTTPS\n",
        )
    })
}
