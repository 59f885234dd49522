//! Cache keys: the normalised request identity (site, host, path, filtered and sorted query)
//! and the cookie reading that both the key and the logged-in check rely on.
//!
//! The primary key is length-framed so that no choice of host, path or query can collide with
//! another's encoding. Method is not part of the key: HEAD is answered from a stored GET.

use crate::rules::QueryFilter;
use http::HeaderMap;

/// The 128-bit hash a stored object is found by: two SipHash-1-3 runs under secret keys drawn
/// once per process.
///
/// pingora hashes keys with blake2b, which was about 5% of a small cache hit. Collisions
/// matter here (two URLs sharing an object would be cache poisoning), but an attacker who
/// does not know the keys cannot search for one, which is the same argument that protects
/// Rust's `HashMap`; 128 bits leaves accidental collisions out of reach. Keys do not need to
/// agree between processes: the cache is in memory and each node has its own.
pub fn hash(primary: &[u8]) -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: std::sync::LazyLock<[std::collections::hash_map::RandomState; 2]> =
        std::sync::LazyLock::new(Default::default);
    let [a, b] = &*KEYS;
    let run = |state: &std::collections::hash_map::RandomState| {
        let mut h = state.build_hasher();
        h.write(primary);
        h.finish()
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&run(a).to_le_bytes());
    out[8..].copy_from_slice(&run(b).to_le_bytes());
    out
}

/// Every `name=value` pair of every Cookie header, names and values trimmed of spaces and tabs.
///
/// Browsers send one Cookie header with `; ` separators, but HTTP/2 clients may send several
/// and applications accept missing spaces or tabs, so all of those forms are read the same way.
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    cookie_pairs(
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes()),
    )
}

/// [`cookies`] over the raw values of the Cookie fields (the fast transport's parsed head).
pub fn cookie_pairs<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = name.trim_matches(|c| c == ' ' || c == '\t');
            (!name.is_empty()).then(|| (name, value.trim_matches(|c| c == ' ' || c == '\t')))
        })
}

/// The variance of a stored response for a request (pingora keys variants by it): the request's
/// values of the headers the response's `Vary` names, and of the rule's key headers and key
/// cookies. `None` when nothing varies.
pub fn variance(
    stored: &HeaderMap,
    rule: &crate::rules::Rule,
    req: &HeaderMap,
) -> Option<pingora::cache::key::HashBinary> {
    let mut variance = pingora::cache::VarianceBuilder::new();
    let vary = stored
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty());
    for name in vary {
        let value = super::vary::value(req, &name);
        variance.add_owned_name_value(name, value);
    }
    for name in &rule.key_headers {
        variance.add_owned_name_value(format!("header:{name}"), super::vary::value(req, name));
    }
    for name in &rule.key_cookies {
        let value = cookies(req)
            .find(|(n, _)| n == name)
            .map_or(Vec::new(), |(_, v)| v.as_bytes().to_vec());
        // The prefix cannot collide with a header name: header names have no ':'.
        variance.add_owned_name_value(format!("cookie:{name}"), value);
    }
    variance.finalize()
}

/// The `Cookie` a cacheable request's origin gets: only the rule's key cookies, in the
/// client's order (a cookie must not shape a shared page unless it is part of the key).
/// `None`: no Cookie field at all.
pub fn kept_cookies(req: &HeaderMap, rule: &crate::rules::Rule) -> Option<String> {
    let values = req.get_all(http::header::COOKIE);
    kept_cookie_values(values.iter().map(|v| v.as_bytes()), rule)
}

/// [`kept_cookies`] over the raw values of the Cookie fields.
pub fn kept_cookie_values<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    rule: &crate::rules::Rule,
) -> Option<String> {
    if rule.key_cookies.is_empty() {
        return None;
    }
    let mut kept = String::new();
    for (n, v) in cookie_pairs(values).filter(|(n, _)| rule.key_cookies.iter().any(|k| k == n)) {
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(n);
        kept.push('=');
        kept.push_str(v);
    }
    (!kept.is_empty()).then_some(kept)
}

/// The query as it is keyed (and forwarded on cacheable requests): parameters the rule does
/// not keep are removed, empty pairs dropped, and the rest sorted when the rule says so.
pub fn normalize_query(query: Option<&str>, filter: &QueryFilter, sort: bool) -> String {
    let Some(query) = query else {
        return String::new();
    };
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| filter.keeps(&param_name(p)))
        .collect();
    if sort {
        pairs.sort_unstable();
    }
    pairs.join("&")
}

/// The decoded name of one `name=value` pair: the filter matches `utm%5Fsource` as it matches
/// `utm_source`.
fn param_name(pair: &str) -> String {
    let raw_name = pair.split_once('=').map_or(pair, |(n, _)| n);
    form_urlencoded::parse(raw_name.as_bytes())
        .next()
        .map(|(n, _)| n.into_owned())
        .unwrap_or_default()
}

/// The names of the parameters an allow-list (`query_keep`) removes from `query`, each once,
/// in the order they came: what [`normalize_query`] drops that the rule did not say to drop
/// by name. Empty for a `query_drop` rule (its names are dropped on purpose).
pub fn dropped_by_allow_list(query: &str, filter: &QueryFilter) -> Vec<String> {
    let QueryFilter::Keep(_) = filter else {
        return Vec::new();
    };
    let mut dropped: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = param_name(pair);
        if !filter.keeps(&name) && !dropped.contains(&name) {
            dropped.push(name);
        }
    }
    dropped
}

/// The primary key: site, host, path, normalised query and the pool (release) whose pages it
/// holds (empty for versioned assets, which are the same whichever pool serves them), each
/// length-prefixed. Keying pages by pool keeps a canary's pages away from the stable cohort.
pub fn primary(site: &str, host: &str, path: &str, query: &str, pool: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(site.len() + host.len() + path.len() + query.len() + 24);
    for part in [site, host, path, query, pool] {
        key.extend_from_slice(&(part.len() as u32).to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

/// The parts of a primary key built by [`primary`].
#[derive(Debug, PartialEq, Eq)]
pub struct Primary<'a> {
    pub site: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub pool: &'a str,
}

/// Reads back a primary key built by [`primary`].
pub fn decode_primary(mut key: &[u8]) -> Option<Primary<'_>> {
    let mut parts = [""; 5];
    for part in &mut parts {
        let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
        *part = std::str::from_utf8(key.get(4..4 + len)?).ok()?;
        key = &key[4 + len..];
    }
    let [site, host, path, query, pool] = parts;
    Some(Primary {
        site,
        host,
        path,
        query,
        pool,
    })
}

/// The URL form used by purges and the purge index: `host/path?query`.
pub fn url(host: &str, path: &str, query: &str) -> String {
    if query.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{host}{path}?{query}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::NameSet;

    #[test]
    fn query_is_filtered_and_sorted() {
        let drop = QueryFilter::Drop(NameSet::new(["utm_*".to_string(), "fbclid".to_string()]));
        assert_eq!(
            normalize_query(Some("b=2&a=1&utm_source=x"), &drop, true),
            normalize_query(Some("a=1&b=2"), &drop, true)
        );
        assert_eq!(
            normalize_query(Some("utm%5Fsource=x&&a=1"), &drop, true),
            "a=1"
        );
        assert_eq!(normalize_query(Some("b=2&a=1"), &drop, false), "b=2&a=1");
        let keep = QueryFilter::Keep(NameSet::new(["q".to_string()]));
        assert_eq!(
            normalize_query(Some("page=2&q=abba"), &keep, true),
            "q=abba"
        );
        assert_eq!(normalize_query(None, &keep, true), "");
        assert_eq!(
            dropped_by_allow_list("q=abba&type=mix&type=dj&page=2&x%79z=1", &keep),
            vec!["type", "page", "xyz"]
        );
        assert!(dropped_by_allow_list("utm_source=x", &drop).is_empty());
    }

    #[test]
    fn kept_cookies_read_alike_from_a_header_map_and_from_raw_fields() {
        let mut rule = crate::rules::honor_rule("r", None);
        rule.key_cookies = vec!["currency".into(), "lang".into()];
        let fields = ["a=1; lang=de", "\tcurrency = EUR ;theme=dark"];
        let mut h = HeaderMap::new();
        for f in fields {
            h.append("cookie", f.parse().unwrap());
        }
        let raw = kept_cookie_values(fields.iter().map(|f| f.as_bytes()), &rule);
        assert_eq!(raw.as_deref(), Some("lang=de; currency=EUR"));
        assert_eq!(kept_cookies(&h, &rule), raw);
        assert_eq!(
            kept_cookie_values(["a=1"].map(str::as_bytes).into_iter(), &rule),
            None
        );
        rule.key_cookies.clear();
        assert_eq!(
            kept_cookie_values(fields.map(str::as_bytes).into_iter(), &rule),
            None
        );
    }

    #[test]
    fn cookies_in_every_form() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1;session=abc".parse().unwrap());
        h.append("cookie", "\tcurrency = EUR ; theme=dark".parse().unwrap());
        let all: Vec<_> = cookies(&h).collect();
        assert_eq!(
            all,
            vec![
                ("a", "1"),
                ("session", "abc"),
                ("currency", "EUR"),
                ("theme", "dark")
            ]
        );
    }

    #[test]
    fn primary_keys_are_framed() {
        assert_ne!(
            primary("s", "ab", "/c", "", ""),
            primary("s", "a", "b/c", "", "")
        );
        let p = primary("shop", "a.test", "/x", "q=1", "blue");
        let d = decode_primary(&p).unwrap();
        assert_eq!(
            (d.site, d.host, d.path, d.query),
            ("shop", "a.test", "/x", "q=1")
        );
        assert_eq!(url(d.host, d.path, d.query), "a.test/x?q=1");
        assert!(decode_primary(b"junk").is_none());
    }
}
