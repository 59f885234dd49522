//! Answers the edge gives by itself (unknown host, a bad request, maintenance, an unknown asset
//! version, no healthy server, an HTTPS redirect, `OPTIONS *`), as data: what to send, not how.
//! Each carries a fixed `Cache-Status` detail (a label, never user input); a transport writes it.

use bytes::Bytes;
use pingora::ErrorType;
use std::time::Duration;

/// What a shed request's Retry-After says: a full pool frees its slots in seconds, and
/// clients told to wait minutes (as for maintenance) would leave it idle.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// One edge answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Cache-Status detail and log label.
    pub detail: &'static str,
    pub content_type: &'static str,
    pub body: Bytes,
    pub cache_control: &'static str,
    pub retry_after: Option<Duration>,
    pub location: Option<String>,
    /// The site and route the answer is for, when the decision got that far (maintenance,
    /// an unknown asset): the log and the statistics count it there, as the edge's own
    /// answer, not a pool's.
    pub site: Option<std::sync::Arc<str>>,
    pub route: Option<std::sync::Arc<str>>,
}

impl Answer {
    /// This answer, for `site`'s route `route`.
    pub fn at(self, site: &std::sync::Arc<str>, route: &std::sync::Arc<str>) -> Answer {
        Answer {
            site: Some(site.clone()),
            route: Some(route.clone()),
            ..self
        }
    }

    /// A short plain-text answer that nobody caches.
    pub fn text(status: u16, detail: &'static str, body: &'static str) -> Answer {
        Answer {
            status,
            detail,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from_static(body.as_bytes()),
            cache_control: "no-store",
            retry_after: None,
            location: None,
            site: None,
            route: None,
        }
    }

    /// The maintenance / unavailable page: 503 with Retry-After.
    pub fn unavailable(detail: &'static str, page: &str, retry_after: Duration) -> Answer {
        Answer {
            status: 503,
            detail,
            content_type: "text/html; charset=utf-8",
            body: Bytes::from(page.to_string()),
            cache_control: "no-store",
            retry_after: Some(retry_after),
            location: None,
            site: None,
            route: None,
        }
    }

    /// The pool is at its `max_inflight` and no slot came free within `max_wait` (and no stale
    /// copy exists): the origin is protected, the client told to come back shortly.
    pub fn busy() -> Answer {
        Answer {
            retry_after: Some(BUSY_RETRY_AFTER),
            ..Self::text(
                503,
                "origin-busy",
                "crossfade: the application is busy; please try again in a few seconds\n",
            )
        }
    }

    /// The configured maintenance page.
    pub fn maintenance(rt: &crate::config::Runtime) -> Answer {
        Self::unavailable(
            "maintenance",
            &rt.release.maintenance_page,
            rt.release.retry_after,
        )
    }

    /// No site is configured for the request's host.
    pub fn unknown_host(status: u16) -> Answer {
        Self::text(
            status,
            "unknown-host",
            "crossfade: no site is configured for this host\n",
        )
    }

    /// A versioned asset whose hash no healthy pool serves. Short negative TTL: a release that
    /// is about to go live must not stay 404.
    pub fn unknown_asset() -> Answer {
        Answer {
            cache_control: "public, max-age=10",
            ..Self::text(
                404,
                "unknown-asset-version",
                "crossfade: no release serves this asset version\n",
            )
        }
    }

    /// A path whose meaning differs between servers (see `decide::path`).
    pub fn bad_path(refused: super::path::Refused) -> Answer {
        let body = format!("crossfade: ambiguous request path ({})\n", refused.as_str());
        Answer {
            body: body.into(),
            ..Self::text(400, "bad-path", "")
        }
    }

    /// A target or host crossfade does not read one way only.
    pub fn bad_request(why: super::target::BadRequest) -> Answer {
        Self::text(400, why.as_str(), why.message())
    }

    /// A request crossfade could not carry to the end: crossfade's own page, never pingora's
    /// (`Server: Pingora`, no `Cache-Status`).
    pub fn error(status: u16) -> Answer {
        let (detail, body) = match status {
            400 => ("bad-request", "crossfade: bad request\n"),
            408 => (
                "request-timeout",
                "crossfade: the request did not arrive in time\n",
            ),
            413 => ("body-too-large", "crossfade: request body too large\n"),
            502 => (
                "bad-gateway",
                "crossfade: the origin's answer could not be used\n",
            ),
            504 => (
                "gateway-timeout",
                "crossfade: the origin did not answer in time\n",
            ),
            _ => ("internal-error", "crossfade: internal error\n"),
        };
        let status = if detail == "internal-error" {
            500
        } else {
            status
        };
        Answer {
            cache_control: "private, no-store",
            ..Self::text(status, detail, body)
        }
    }

    /// `OPTIONS *`: a question about the server, not a resource; nothing to forward.
    pub fn server_options() -> Answer {
        Answer {
            body: Bytes::new(),
            ..Self::text(200, "server-options", "")
        }
    }

    /// A permanent redirect of a plain-HTTP request to the same URL over HTTPS (the first TLS
    /// listener's port, omitted when it is 443). `None` when no TLS listener is configured.
    pub fn https_redirect(rt: &crate::config::Runtime, host: &str, target: &str) -> Option<Answer> {
        let port = rt.tls.as_ref()?.listen.first()?.port();
        let authority = if port == 443 {
            host.to_string()
        } else {
            format!("{host}:{port}")
        };
        Some(Answer {
            location: Some(format!("https://{authority}{target}")),
            site: None,
            route: None,
            cache_control: "public, max-age=3600",
            ..Self::text(
                301,
                "https-redirect",
                "crossfade: this site is served over HTTPS\n",
            )
        })
    }
}

/// The status for an origin that failed before its answer began: 504 when it ran out of time
/// (connect, write or read), else 502.
pub fn origin_failure_status(e: &ErrorType) -> u16 {
    match e {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        _ => 502,
    }
}
