//! The decision as a table: request in, plan out, no sockets.

use super::*;
use crate::pools::switch::Release;
use crate::pools::Registry;

const CONFIG: &str = r#"
[proxy]
listen = ["127.0.0.1:1"]
[admin]
listen = "127.0.0.1:2"
[[admin.tokens]]
name = "ops"
token = "decide-test-token-0123456789"
scopes = ["purge"]
[[sites]]
name = "shop"
hosts = ["www.shop.test"]
rules = "shop.toml"
assets = "/static/{hash}/"
[sites.pools.blue]
servers = ["127.0.0.1:3"]
"#;

const RULES: &str = r#"
[defaults]
bypass_cookies = ["session"]
query_keep = ["page"]
[[routes]]
name = "account"
prefix = "/account/"
mode = "pass"
[[routes]]
name = "pages"
prefix = "/"
mode = "override"
edge_ttl = "1m"
"#;

fn runtime() -> (Runtime, Registry, States) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.toml"), RULES).unwrap();
    let path = dir.path().join("crossfade.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let rt = crate::config::load(&path).unwrap();
    let states = (*Release::load(&rt, None).all()).clone();
    let pools = Registry::new(&rt);
    (rt, pools, states)
}

fn decide(
    (rt, pools): (&Runtime, &Registry),
    states: &States,
    method: &str,
    target: &str,
    version: http::Version,
    headers: &[(&str, &str)],
) -> String {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    plan(
        rt,
        pools,
        states,
        &RequestView {
            method: &method,
            version,
            target: target.as_bytes(),
            authority: None,
            headers: &map,
            tls: false,
        },
    )
    .summary()
}

/// Method, target, version, headers, and the plan wanted.
type Case<'a> = (
    &'a str,
    &'a str,
    http::Version,
    &'a [(&'a str, &'a str)],
    &'a str,
);

#[test]
fn every_request_gets_one_plan() {
    use http::Version as V;
    let (rt, pools, states) = runtime();
    let host = [("host", "www.shop.test")];
    let cases: &[Case] = &[
        (
            "GET",
            "/a?page=2&utm=x",
            V::HTTP_11,
            &host,
            "cache pages www.shop.test /a?page=2 via blue",
        ),
        (
            "GET",
            "/a?page=2#frag",
            V::HTTP_11,
            &host,
            "cache pages www.shop.test /a?page=2 via blue",
        ),
        (
            "GET",
            "/%61ccount/x?b=1",
            V::HTTP_11,
            &host,
            "bypass route-pass account www.shop.test /account/x?b=1 via blue",
        ),
        (
            "GET",
            "/a",
            V::HTTP_11,
            &[("host", "www.shop.test"), ("cookie", "session=1")],
            "bypass logged-in pages www.shop.test /a via blue",
        ),
        (
            "POST",
            "/a",
            V::HTTP_11,
            &host,
            "bypass method pages www.shop.test /a via blue",
        ),
        // The origin gets the host the key was built from, never the client's spelling.
        (
            "GET",
            "/a",
            V::HTTP_11,
            &[("host", "WWW.Shop.Test.:6666")],
            "cache pages www.shop.test /a via blue",
        ),
        (
            "GET",
            "http://www.shop.test:80/a?page=1",
            V::HTTP_11,
            &[("host", "evil.test")],
            "answer 400 host-mismatch",
        ),
        (
            "GET",
            "http://www.shop.test:80/a?page=1",
            V::HTTP_11,
            &[("host", "www.shop.test:80")],
            "cache pages www.shop.test /a?page=1 via blue",
        ),
        (
            "GET",
            "account/x",
            V::HTTP_11,
            &host,
            "answer 400 bad-target-form",
        ),
        (
            "POST",
            "account/mv",
            V::HTTP_11,
            &host,
            "answer 400 bad-target-form",
        ),
        ("GET", "/a\x01", V::HTTP_11, &host, "answer 400 bad-target"),
        (
            "OPTIONS",
            "*",
            V::HTTP_11,
            &host,
            "answer 200 server-options",
        ),
        ("GET", "/a", V::HTTP_11, &[], "answer 400 no-host"),
        ("GET", "/a", V::HTTP_10, &[], "answer 421 unknown-host"),
        (
            "GET",
            "/a",
            V::HTTP_11,
            &[("host", "www.shop.test"), ("host", "x.test")],
            "answer 400 duplicate-host",
        ),
        (
            "GET",
            "/a",
            V::HTTP_11,
            &[("host", "other.test")],
            "answer 421 unknown-host",
        ),
        (
            "GET",
            "/static/../account/x",
            V::HTTP_11,
            &host,
            "answer 400 bad-path",
        ),
        (
            "GET",
            "/static/abc123/app.css",
            V::HTTP_11,
            &host,
            "answer 404 unknown-asset-version",
        ),
        (
            "PURGE",
            "/a",
            V::HTTP_11,
            &[("host", "WWW.shop.test")],
            "purge www.shop.test",
        ),
    ];
    for (method, target, version, headers, want) in cases {
        let got = decide((&rt, &pools), &states, method, target, *version, headers);
        assert_eq!(&got, want, "{method} {target} {headers:?}");
    }
}

#[test]
fn maintenance_answers_unless_cached_copies_may_serve() {
    let (rt, pools, mut states) = runtime();
    let host = [("host", "www.shop.test")];
    let state = states.get_mut("shop").unwrap();
    state.maintenance.routes.insert("pages".into());
    let v = http::Version::HTTP_11;
    assert_eq!(
        decide((&rt, &pools), &states, "GET", "/a", v, &host),
        "answer 503 maintenance"
    );
    // A target the parser would file under `/` cannot slip past a route's maintenance.
    assert_eq!(
        decide((&rt, &pools), &states, "GET", "account/x", v, &host),
        "answer 400 bad-target-form"
    );
    states.get_mut("shop").unwrap().maintenance.serve_cached = true;
    assert_eq!(
        decide((&rt, &pools), &states, "GET", "/a", v, &host),
        "cache pages www.shop.test /a via blue"
    );
    let logged_in = [("host", "www.shop.test"), ("cookie", "session=1")];
    assert_eq!(
        decide((&rt, &pools), &states, "GET", "/a", v, &logged_in),
        "answer 503 maintenance"
    );
    assert_eq!(
        decide((&rt, &pools), &states, "POST", "/a", v, &host),
        "answer 503 maintenance"
    );
}
