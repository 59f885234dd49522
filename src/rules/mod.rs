//! Route rules: the compiled, typed form of `rules/<site>.toml` and the matcher that picks the
//! rule for a request.
//!
//! Rules are compiled once per config load (globs and regexes included), so matching a request
//! allocates nothing. Routes are tried in file order and the first match wins; a request no route
//! claims gets the site's fallback rule, which honours the origin (RFC 9111).

use http::{Method, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// How a route caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Freshness comes from the origin's headers (RFC 9111); nothing without freshness
    /// information is stored.
    Honor,
    /// Freshness comes from the rule (`edge_ttl`, `ttl_by_status`); the origin's max-age,
    /// Expires and no-cache are ignored, but `private`, `no-store` and `Set-Cookie` still are not.
    Override,
    /// Never cached: every request goes to the origin as it came.
    Pass,
}

/// How a route matches the request path.
#[derive(Debug)]
pub enum PathMatch {
    /// The path equals this string (the query is not part of the path).
    Exact(String),
    /// The path starts with this string.
    Prefix(String),
    /// A glob where `*` stays within one segment and `**` crosses segments.
    Glob(globset::GlobMatcher),
    /// A regular expression, anchored by the author as needed.
    Regex(regex::Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Glob(g) => g.is_match(path),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// A list of names where an entry ending in `*` matches by prefix (`utm_*`, `wp_logged_in_*`).
#[derive(Debug, Clone, Default)]
pub struct NameSet {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl NameSet {
    pub fn new<I: IntoIterator<Item = String>>(names: I) -> Self {
        let mut set = NameSet::default();
        for name in names {
            match name.strip_suffix('*') {
                Some(prefix) => set.prefixes.push(prefix.to_string()),
                None => set.exact.push(name),
            }
        }
        set
    }

    pub fn contains(&self, name: &str) -> bool {
        self.exact.iter().any(|n| n == name) || self.prefixes.iter().any(|p| name.starts_with(p))
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

/// Which query parameters are part of the cache key (and forwarded on cacheable requests).
#[derive(Debug, Clone)]
pub enum QueryFilter {
    /// Every parameter except these.
    Drop(NameSet),
    /// Only these parameters.
    Keep(NameSet),
}

impl QueryFilter {
    pub fn keeps(&self, name: &str) -> bool {
        match self {
            QueryFilter::Drop(set) => !set.contains(name),
            QueryFilter::Keep(set) => set.contains(name),
        }
    }
}

/// A status or a status class in `ttl_by_status` (`"404"`, `"4xx"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Exact(u16),
    Class(u16),
}

impl StatusMatch {
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(class) = s.strip_suffix("xx") {
            let c: u16 = class.parse().ok()?;
            return (1..=5).contains(&c).then_some(StatusMatch::Class(c));
        }
        let code: u16 = s.parse().ok()?;
        (100..=599)
            .contains(&code)
            .then_some(StatusMatch::Exact(code))
    }

    fn matches(self, status: StatusCode) -> bool {
        match self {
            StatusMatch::Exact(c) => status.as_u16() == c,
            StatusMatch::Class(c) => status.as_u16() / 100 == c,
        }
    }
}

/// One compiled route: how to match it and how it caches.
#[derive(Debug)]
pub struct Rule {
    /// The route's name; it labels logs and metrics, so it comes from config, never a request.
    pub name: Arc<str>,
    pub matcher: Option<PathMatch>,
    pub methods: Option<Vec<Method>>,
    pub mode: Mode,
    /// Override mode: the TTL for statuses that are cacheable by default.
    pub edge_ttl: Option<Duration>,
    /// Override mode: TTLs per status or class, checked (exact before class) before `edge_ttl`.
    pub ttl_by_status: Vec<(StatusMatch, Duration)>,
    /// Rewrites the Cache-Control the client sees on cached responses.
    pub browser_ttl: Option<Duration>,
    pub browser_immutable: bool,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    /// Cookies that mean "logged in": their presence bypasses the cache.
    pub bypass_cookies: NameSet,
    /// Cookies whose value is part of the cache key (currency, locale).
    pub key_cookies: Vec<String>,
    /// Request headers whose value is part of the cache key (lowercase names).
    pub key_headers: Vec<String>,
    /// Request headers removed before the origin sees them (lowercase names).
    pub strip_headers: Vec<String>,
    pub query: QueryFilter,
    pub query_sort: bool,
    /// Store responses that carry Set-Cookie, with the Set-Cookie removed from the stored copy.
    pub unsafe_strip_set_cookie: bool,
    /// Largest request body accepted on this route; larger: 413.
    pub max_body: u64,
    /// RFC 9213 targeted cache-control fields for this edge (lowercase), in order of precedence:
    /// the first one a response carries replaces its `Cache-Control` for the edge's storage and
    /// freshness, and none of them reaches a client.
    pub targeted: Vec<String>,
    /// Honour mode: the longest heuristic freshness (RFC 9111 §4.2.2) given to a response with
    /// `Last-Modified` and no explicit lifetime; `None` when the route turns heuristics off.
    pub heuristic_max: Option<Duration>,
    /// What a request with `Authorization` does on this route.
    pub authorization: Authorization,
}

/// How a route treats requests that carry `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// They bypass the cache (the default: a store's authorised pages are personal).
    Bypass,
    /// RFC 9111 §3.5: they may be answered from the cache, and their response is stored
    /// only when it says `public`, `s-maxage` or `must-revalidate`.
    Rfc9111,
}

/// The heuristic freshness cap of a route that sets none: a day, the point after which
/// RFC 7234 wanted a warning on the response.
pub const DEFAULT_HEURISTIC_MAX: Duration = Duration::from_secs(86_400);

/// The targeted field every route obeys unless its rules name others (RFC 9213's own).
pub const DEFAULT_TARGETED: &str = "cdn-cache-control";

/// Statuses cacheable by default (RFC 9110 §15.1 "heuristically cacheable"), which an
/// override route stores with its `edge_ttl` unless `ttl_by_status` says otherwise.
const DEFAULT_CACHEABLE: [u16; 9] = [200, 203, 204, 300, 301, 308, 404, 405, 410];

impl Rule {
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return false;
            }
        }
        self.matcher.as_ref().is_some_and(|m| m.matches(path))
    }

    /// Override mode: the TTL for a response status, or `None` when it must not be stored.
    pub fn override_ttl(&self, status: StatusCode) -> Option<Duration> {
        let exact = self
            .ttl_by_status
            .iter()
            .find(|(m, _)| matches!(m, StatusMatch::Exact(_)) && m.matches(status));
        let class = || {
            self.ttl_by_status
                .iter()
                .find(|(m, _)| matches!(m, StatusMatch::Class(_)) && m.matches(status))
        };
        if let Some((_, ttl)) = exact.or_else(class) {
            return Some(*ttl);
        }
        if DEFAULT_CACHEABLE.contains(&status.as_u16()) {
            self.edge_ttl
        } else {
            None
        }
    }
}

/// A site's ordered routes plus the fallback for requests no route claims.
#[derive(Debug)]
pub struct RouteTable {
    pub routes: Vec<Arc<Rule>>,
    pub fallback: Arc<Rule>,
}

impl RouteTable {
    /// First matching route in file order, else the fallback.
    pub fn find(&self, method: &Method, path: &str) -> &Arc<Rule> {
        self.routes
            .iter()
            .find(|r| r.matches(method, path))
            .unwrap_or(&self.fallback)
    }
}

/// A route with every setting at its default: honour the origin (unit tests' starting point).
#[cfg(test)]
pub(crate) fn honor_rule(name: &str, matcher: Option<PathMatch>) -> Rule {
    Rule {
        name: name.into(),
        matcher,
        methods: None,
        mode: Mode::Honor,
        edge_ttl: None,
        ttl_by_status: vec![],
        browser_ttl: None,
        browser_immutable: false,
        stale_while_revalidate: None,
        stale_if_error: None,
        bypass_cookies: NameSet::default(),
        key_cookies: vec![],
        key_headers: vec![],
        strip_headers: vec![],
        query: QueryFilter::Drop(NameSet::default()),
        query_sort: true,
        unsafe_strip_set_cookie: false,
        targeted: vec![DEFAULT_TARGETED.into()],
        max_body: 1 << 20,
        heuristic_max: Some(DEFAULT_HEURISTIC_MAX),
        authorization: Authorization::Bypass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, matcher: PathMatch) -> Arc<Rule> {
        Arc::new(honor_rule(name, Some(matcher)))
    }

    #[test]
    fn first_match_wins_and_fallback() {
        let glob = globset::GlobBuilder::new("/static/*/**")
            .literal_separator(true)
            .build()
            .unwrap()
            .compile_matcher();
        let table = RouteTable {
            routes: vec![
                rule("home", PathMatch::Exact("/".into())),
                rule("assets", PathMatch::Glob(glob)),
                rule("tracks", PathMatch::Prefix("/track/".into())),
                rule("any", PathMatch::Regex(regex::Regex::new("^/").unwrap())),
            ],
            fallback: rule("default", PathMatch::Exact(String::new())),
        };
        let get = Method::GET;
        assert_eq!(&*table.find(&get, "/").name, "home");
        assert_eq!(&*table.find(&get, "/static/abc/app.js").name, "assets");
        assert_eq!(&*table.find(&get, "/static/app.js").name, "any");
        assert_eq!(&*table.find(&get, "/track/1").name, "tracks");
        assert_eq!(&*table.find(&get, "x").name, "default");
    }

    #[test]
    fn name_sets_and_status() {
        let set = NameSet::new(["utm_*".to_string(), "fbclid".to_string()]);
        assert!(set.contains("utm_source"));
        assert!(set.contains("fbclid"));
        assert!(!set.contains("q"));
        assert_eq!(StatusMatch::parse("4xx"), Some(StatusMatch::Class(4)));
        assert_eq!(StatusMatch::parse("404"), Some(StatusMatch::Exact(404)));
        assert_eq!(StatusMatch::parse("9xx"), None);
        let mut r = Arc::try_unwrap(rule("r", PathMatch::Exact("/".into()))).unwrap();
        r.mode = Mode::Override;
        r.edge_ttl = Some(Duration::from_secs(60));
        r.ttl_by_status = vec![
            (StatusMatch::Class(4), Duration::from_secs(5)),
            (StatusMatch::Exact(404), Duration::from_secs(10)),
        ];
        assert_eq!(
            r.override_ttl(StatusCode::OK),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            r.override_ttl(StatusCode::NOT_FOUND),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            r.override_ttl(StatusCode::GONE),
            Some(Duration::from_secs(5))
        );
        assert_eq!(r.override_ttl(StatusCode::BAD_GATEWAY), None);
    }
}
