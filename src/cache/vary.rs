//! Vary matching: the request values a stored variant is keyed by, normalised so that two
//! spellings of one preference share one copy (RFC 9111 §4.1 lets a cache normalise them).
//!
//! List members are trimmed and rejoined, the `Accept` family is compared without case, and
//! `Accept-Encoding` is reduced to the one coding crossfade asks the origin for, so
//! `gzip, deflate, br` and `br, gzip` are one variant. The origin of a cacheable request is
//! asked with that same reduced value ([`accept_encoding`]), so what is stored under it is
//! what every client with that value can decode.

use http::HeaderMap;

/// Codings an origin is asked for on a cacheable request, in crossfade's order of preference
/// when a client accepts several equally.
const CODINGS: [&str; 4] = ["br", "zstd", "gzip", "deflate"];

/// Varied fields whose values are case-insensitive tokens (RFC 9110 §12.5).
const CASELESS: [&str; 3] = ["accept", "accept-charset", "accept-language"];

/// The variance input for the request field `name` (lowercase).
pub fn value(req: &HeaderMap, name: &str) -> Vec<u8> {
    if name == "accept-encoding" {
        return accept_encoding(req).unwrap_or_default().as_bytes().to_vec();
    }
    let caseless = CASELESS.contains(&name);
    let mut out = Vec::new();
    for member in req
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|m| !m.is_empty())
    {
        if !out.is_empty() {
            out.push(b',');
        }
        if caseless {
            out.extend(member.iter().map(u8::to_ascii_lowercase));
        } else {
            out.extend_from_slice(member);
        }
    }
    out
}

/// The one coding a cacheable request asks the origin for: the client's most preferred of
/// [`CODINGS`] (by q-value, then crossfade's order); `None` for identity.
pub fn accept_encoding(req: &HeaderMap) -> Option<&'static str> {
    preferred(
        req.get_all(http::header::ACCEPT_ENCODING)
            .iter()
            .map(|v| v.as_bytes()),
    )
}

/// [`accept_encoding`] over raw field values.
pub fn preferred<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<&'static str> {
    // q-values in thousandths; `None`: not named.
    let mut named: [Option<u16>; 4] = [None; 4];
    let mut wildcard: Option<u16> = None;
    for member in values.flat_map(|v| v.split(|&b| b == b',')) {
        let mut parts = member.split(|&b| b == b';');
        let coding = parts.next().unwrap_or_default().trim_ascii();
        let q = parts
            .filter_map(|p| {
                let p = p.trim_ascii();
                let v = p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q="))?;
                qvalue(v)
            })
            .next()
            .unwrap_or(1000);
        if coding == b"*" {
            wildcard = Some(q);
        } else if let Some(i) = CODINGS.iter().position(|c| {
            coding.eq_ignore_ascii_case(c.as_bytes())
                || (*c == "gzip" && coding.eq_ignore_ascii_case(b"x-gzip"))
        }) {
            named[i] = Some(named[i].map_or(q, |had| had.max(q)));
        }
    }
    let mut best: Option<(usize, u16)> = None;
    for (i, q) in named.iter().enumerate() {
        let q = q.or(wildcard).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((i, q));
        }
    }
    best.map(|(i, _)| CODINGS[i])
}

/// A qvalue (`0`, `0.5`, `1.000`) in thousandths; `None` when malformed.
fn qvalue(v: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(v).ok()?;
    let q: f32 = text.parse().ok()?;
    (0.0..=1.0)
        .contains(&q)
        .then(|| (q * 1000.0).round() as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(v: &str) -> Option<&'static str> {
        preferred(std::iter::once(v.as_bytes()))
    }

    #[test]
    fn spellings_of_one_preference_ask_for_one_coding() {
        assert_eq!(ae("gzip, deflate, br"), Some("br"));
        assert_eq!(ae("br, gzip"), Some("br"));
        assert_eq!(ae("BR;q=1.0 ,GZIP"), Some("br"));
        assert_eq!(ae("gzip, deflate"), Some("gzip"));
        assert_eq!(ae("x-gzip"), Some("gzip"));
        assert_eq!(ae("gzip;q=1, br;q=0.5"), Some("gzip"));
        assert_eq!(ae("br;q=0, gzip"), Some("gzip"));
        assert_eq!(ae("*"), Some("br"));
        assert_eq!(ae("*, br;q=0"), Some("zstd"));
        assert_eq!(ae("identity"), None);
        assert_eq!(ae(""), None);
        assert_eq!(ae("gzip;q=0"), None);
    }

    #[test]
    fn list_members_are_trimmed_and_accept_fields_compared_without_case() {
        let mut a = HeaderMap::new();
        a.append("accept-language", "en-GB , fr;q=0.5".parse().unwrap());
        let mut b = HeaderMap::new();
        b.append("accept-language", "EN-gb".parse().unwrap());
        b.append("accept-language", "fr;q=0.5".parse().unwrap());
        assert_eq!(value(&a, "accept-language"), value(&b, "accept-language"));
        let mut c = HeaderMap::new();
        c.append("x-device", "Mobile".parse().unwrap());
        assert_eq!(value(&c, "x-device"), b"Mobile");
    }
}
