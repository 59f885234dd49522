//! How long a response is fresh when the rule leaves it to the origin (RFC 9111 §4.2): the
//! explicit lifetime (`s-maxage`, `max-age`, `Expires` − `Date`), the heuristic one for a
//! response that has only `Last-Modified` (§4.2.2), the age it arrived with (§4.2.3), and the
//! HTTP dates they are read from (RFC 9110 §5.6.7).

use http::{header, HeaderValue, StatusCode};
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::http::ResponseHeader;
use std::time::{Duration, SystemTime};

/// The fraction of the time since `Last-Modified` a heuristic lifetime is (RFC 9111 §4.2.2
/// suggests 10%, which browsers, Squid and Traffic Server use).
const HEURISTIC_DIVISOR: u32 = 10;

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The `Age` the response came with: its first member (`Age: 7200, 0` is 7200 s); zero when
/// there is none; `None` when it is not a number.
pub fn received_age(resp: &ResponseHeader) -> Option<Duration> {
    let Some(value) = resp.headers.get(header::AGE) else {
        return Some(Duration::ZERO);
    };
    let first = value.to_str().ok()?.split(',').next()?.trim();
    first.parse::<u64>().ok().map(Duration::from_secs)
}

/// The lifetime the origin gives explicitly (RFC 9111 §4.2.1): s-maxage or max-age, else
/// Expires minus Date (an Expires that is not a date, or given twice, is already expired).
/// `None`: the origin says nothing.
pub fn explicit_lifetime(
    cc: Option<&CacheControl>,
    resp: &ResponseHeader,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(lifetime) = cc.and_then(|cc| cc.fresh_duration()) {
        return Some(lifetime);
    }
    let mut expires = resp.headers.get_all(header::EXPIRES).iter();
    let first = expires.next()?;
    if expires.next().is_some() {
        return Some(Duration::ZERO);
    }
    let Some(expires) = http_date(first) else {
        return Some(Duration::ZERO);
    };
    Some(
        expires
            .duration_since(date(resp, now))
            .unwrap_or(Duration::ZERO),
    )
}

/// The heuristic lifetime (RFC 9111 §4.2.2): a tenth of the time between `Last-Modified` and
/// the response's `Date`, at most `max`. `None` without a usable `Last-Modified`.
pub fn heuristic_lifetime(
    resp: &ResponseHeader,
    now: SystemTime,
    max: Duration,
) -> Option<Duration> {
    let modified = http_date(resp.headers.get(header::LAST_MODIFIED)?)?;
    let unchanged = date(resp, now).duration_since(modified).ok()?;
    Some((unchanged / HEURISTIC_DIVISOR).min(max))
}

/// The response's `Date`, or `now` when it has none that parses.
fn date(resp: &ResponseHeader, now: SystemTime) -> SystemTime {
    resp.headers
        .get(header::DATE)
        .and_then(http_date)
        .unwrap_or(now)
}

/// An HTTP date in any of the three forms of RFC 9110 §5.6.7 (IMF-fixdate, RFC 850, asctime),
/// whatever the case of its names (recipients must accept `thu, 01 JAN 2026 … gmt` too).
pub fn http_date(v: &HeaderValue) -> Option<SystemTime> {
    let text = v.to_str().ok()?.trim();
    if let Ok(t) = httpdate::parse_http_date(text) {
        return Some(t);
    }
    httpdate::parse_http_date(&canonical_case(text)).ok()
}

/// `text` with each word of letters in the case the date grammar spells it: `GMT` upper case,
/// day and month names capitalised.
fn canonical_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word_start = true;
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            out.push(if word_start {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            word_start = false;
        } else {
            out.push(c);
            word_start = true;
        }
    }
    if out.ends_with("Gmt") {
        out.truncate(out.len() - 3);
        out.push_str("GMT");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_date_forms_parse_in_any_case() {
        let want = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN, 06 NOV 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "SUNDAY, 06-NOV-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "sun nov  6 08:49:37 1994",
        ] {
            let got = http_date(&HeaderValue::from_static(text));
            assert_eq!(got, Some(want), "{text}");
        }
        for bad in ["0", "-1", "yesterday", "Sun, 06 Nov 1994 08:49:37"] {
            assert_eq!(http_date(&HeaderValue::from_static(bad)), None, "{bad}");
        }
    }

    #[test]
    fn a_heuristic_lifetime_is_a_tenth_of_the_unchanged_time_capped() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("date", "Thu, 11 Jan 2024 00:00:00 GMT")
            .unwrap();
        resp.insert_header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")
            .unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        assert_eq!(heuristic_lifetime(&resp, now, day * 7), Some(day));
        assert_eq!(
            heuristic_lifetime(&resp, now, Duration::from_secs(60)),
            Some(Duration::from_secs(60))
        );
        resp.insert_header("last-modified", "not a date").unwrap();
        assert_eq!(heuristic_lifetime(&resp, now, day), None);
    }
}
