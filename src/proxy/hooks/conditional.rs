//! Conditional and range answers from stored responses: pingora's filters, corrected where they
//! differ from RFC 9110. Only pingora's path serves these (the fast transport declines any request
//! with a condition or a range), so the corrections live in its hooks.

use http::{header, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::RangeType;

/// Whether a stored `resp` answers `req` with 304. pingora's filter compares entity tags only;
/// `If-None-Match: *` matches any current representation (RFC 9110 §13.1.2), so a GET or HEAD
/// for a stored 200 gets 304.
pub fn not_modified(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    let star = req
        .headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == "*");
    if star {
        return resp.status == StatusCode::OK
            && matches!(req.method, http::Method::GET | http::Method::HEAD);
    }
    pingora::protocols::http::conditional_filter::not_modified_filter(req, resp)
}

/// Most ranges in one request before pingora answers with the whole body (its default).
const MAX_RANGES: Option<usize> = Some(200);

/// pingora's range filter, but a range with no bytes in it (`bytes=-0`, a zero-length suffix) is
/// unsatisfiable (RFC 9110 §14.1.2): 416 with `Content-Range: bytes */length`, where pingora
/// answered 206 with `bytes 265-264/265`.
pub fn range(req: &RequestHeader, resp: &mut ResponseHeader) -> RangeType {
    let length = resp
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
    match pingora::proxy::range_header_filter(req, resp, MAX_RANGES) {
        RangeType::Single(r) if r.is_empty() => {
            let _ = resp.set_status(StatusCode::RANGE_NOT_SATISFIABLE);
            for name in [
                header::ACCEPT_RANGES,
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                header::TRANSFER_ENCODING,
            ] {
                resp.remove_header(&name);
            }
            let _ = resp.insert_header(header::CONTENT_LENGTH, "0");
            let total = length.map_or("*".to_string(), |l| l.to_string());
            let _ = resp.insert_header(header::CONTENT_RANGE, format!("bytes */{total}"));
            RangeType::Invalid
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/a", None).unwrap();
        for (n, v) in headers {
            r.insert_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn stored() -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-length", "265").unwrap();
        r.insert_header("etag", "\"v1\"").unwrap();
        r
    }

    #[test]
    fn if_none_match_star_matches_any_stored_representation() {
        assert!(not_modified(&req(&[("if-none-match", "*")]), &stored()));
        assert!(not_modified(
            &req(&[("if-none-match", "\"x\", *")]),
            &stored()
        ));
        assert!(not_modified(
            &req(&[("if-none-match", "\"v1\"")]),
            &stored()
        ));
        assert!(!not_modified(
            &req(&[("if-none-match", "\"v2\"")]),
            &stored()
        ));
    }

    #[test]
    fn an_empty_suffix_range_is_unsatisfiable() {
        let mut resp = stored();
        let t = range(&req(&[("range", "bytes=-0")]), &mut resp);
        assert!(matches!(t, RangeType::Invalid));
        assert_eq!(resp.status, 416);
        assert_eq!(resp.headers["content-range"], "bytes */265");
        let mut resp = stored();
        assert!(matches!(
            range(&req(&[("range", "bytes=-5")]), &mut resp),
            RangeType::Single(r) if r == (260..265)
        ));
    }
}
