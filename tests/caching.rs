//! Caching behaviour against a real origin: hits, HEAD, bypass, what is never stored, query
//! normalisation, Vary, hosts over HTTP/1.1 and HTTP/2, RFC 9111 defaults, Cache-Status.

mod common;
use common::*;
use http::Method;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An origin answering `body` with the given headers for every path.
async fn fixed(headers: &'static [(&'static str, &'static str)], body: &'static str) -> Origin {
    Origin::start(move |_| async move { reply(200, headers, body) }).await
}

#[tokio::test]
async fn miss_then_hit_and_head_is_answered_from_get() {
    let origin = fixed(
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
        ],
        "hello",
    )
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);

    let first = get(&c, &proxy.url("/a"), &[]).await;
    assert_eq!((first.status, first.body.as_str()), (200, "hello"));
    assert!(
        first.cache().contains("fwd=miss") && first.cache().contains("stored"),
        "{}",
        first.cache()
    );
    let second = get(&c, &proxy.url("/a"), &[]).await;
    assert_eq!(second.body, "hello");
    assert!(second.is_hit(), "{}", second.cache());
    assert!(!second.header("age").is_empty(), "hits carry Age");
    let head = send(&c, Method::HEAD, &proxy.url("/a"), &[]).await;
    assert!(head.is_hit(), "{}", head.cache());
    assert_eq!(head.body, "");
    assert_eq!(origin.hits(), 1, "the origin sees one request");

    // A HEAD miss fetches (and stores) the full GET; the following GET is a hit.
    let head = send(&c, Method::HEAD, &proxy.url("/b"), &[]).await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(origin.last().method, Method::GET);
    let got = get(&c, &proxy.url("/b"), &[]).await;
    assert!(got.is_hit(), "{}", got.cache());
    assert_eq!(got.body, "hello");
    assert_eq!(origin.hits(), 2);
}

/// An origin that wrongly marks a personalised page public: only the edge protects users.
async fn personalising_origin() -> Origin {
    Origin::start(|seen| async move {
        let cookie = seen.header("cookie").unwrap_or("").to_string();
        let auth = seen.header("authorization").unwrap_or("").to_string();
        let user = cookie
            .split(';')
            .filter_map(|c| {
                c.trim()
                    .strip_prefix("session")
                    .map(|v| v.trim_start_matches([' ', '\t', '=']).to_string())
            })
            .next()
            .unwrap_or_else(|| {
                if auth.is_empty() {
                    "anonymous".into()
                } else {
                    auth
                }
            });
        reply(
            200,
            &[("cache-control", "public, max-age=60")],
            format!("user={user}"),
        )
    })
    .await
}

#[tokio::test]
async fn logged_in_and_authorized_requests_bypass_and_are_never_shared() {
    let origin = personalising_origin().await;
    let proxy = Proxy::single(&origin, OVERRIDE_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let url = proxy.url("/page");

    for cookie in [
        "session=alice",
        "theme=dark; session=alice",
        "theme=dark;session=alice",
        "\tsession = alice",
    ] {
        let got = get(&c, &url, &[("cookie", cookie)]).await;
        assert_eq!(got.body, "user=alice", "cookie {cookie:?}");
        assert!(
            got.cache().contains("fwd=bypass; detail=logged-in"),
            "{}",
            got.cache()
        );
        // Leading whitespace of a header value is optional whitespace (RFC 9110 §5.5).
        assert_eq!(
            origin.last().header("cookie"),
            Some(cookie.trim()),
            "bypass forwards cookies as sent"
        );
    }
    let got = get(&c, &url, &[("authorization", "Bearer bob")]).await;
    assert_eq!(got.body, "user=Bearer bob");
    assert!(
        got.cache().contains("detail=authorization"),
        "{}",
        got.cache()
    );

    let anon = get(&c, &url, &[("cookie", "theme=dark")]).await;
    assert_eq!(anon.body, "user=anonymous");
    assert_eq!(
        origin.last().header("cookie"),
        None,
        "non-key cookies are not forwarded on cacheable requests"
    );
    let anon = get(&c, &url, &[]).await;
    assert_eq!(anon.body, "user=anonymous");
    assert!(anon.is_hit());
    let again = get(&c, &url, &[("cookie", "session=carol")]).await;
    assert_eq!(
        again.body, "user=carol",
        "a logged-in user never gets the cached anonymous page"
    );
}

#[tokio::test]
async fn responses_with_set_cookie_private_or_no_store_are_never_stored() {
    let origin = Origin::start(|seen| async move {
        let headers: &[(&str, &str)] = match seen.uri.path() {
            "/cookie" | "/strip/cookie" => &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "session=new"),
            ],
            "/private" => &[("cache-control", "private, max-age=60")],
            _ => &[("cache-control", "no-store, max-age=60")],
        };
        reply(200, headers, "x")
    })
    .await;
    let rules = r#"
[[routes]]
name = "strip"
prefix = "/strip/"
mode = "override"
edge_ttl = "1m"
unsafe_strip_set_cookie = true
[[routes]]
name = "rest"
prefix = "/"
mode = "override"
edge_ttl = "1m"
"#;
    let proxy = Proxy::single(&origin, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for (path, reason) in [
        ("/cookie", "set-cookie"),
        ("/private", "private"),
        ("/nostore", "no-store"),
    ] {
        for _ in 0..2 {
            let got = get(&c, &proxy.url(path), &[]).await;
            assert!(
                got.cache().contains(&format!("detail={reason}")),
                "{path}: {}",
                got.cache()
            );
        }
    }
    assert_eq!(origin.hits(), 6, "every request reached the origin");

    let first = get(&c, &proxy.url("/strip/cookie"), &[]).await;
    assert_eq!(
        first.header("set-cookie"),
        "session=new",
        "the requester still gets its cookie"
    );
    let second = get(&c, &proxy.url("/strip/cookie"), &[]).await;
    assert!(second.is_hit(), "{}", second.cache());
    assert_eq!(
        second.header("set-cookie"),
        "",
        "the stored copy carries no Set-Cookie"
    );
}

#[tokio::test]
async fn query_is_normalised_into_one_entry() {
    let origin = Origin::start(|seen| async move {
        reply(
            200,
            &[("cache-control", "max-age=60")],
            format!("q={}", seen.uri.query().unwrap_or("")),
        )
    })
    .await;
    let rules = r#"
[defaults]
query_drop = ["utm_*", "fbclid"]
[[routes]]
name = "search"
path = "/search"
mode = "override"
edge_ttl = "1m"
query_keep = ["q"]
"#;
    let proxy = Proxy::single(&origin, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let a = get(&c, &proxy.url("/list?b=2&a=1&utm_source=x"), &[]).await;
    assert_eq!(a.body, "q=a=1&b=2", "the origin sees the normalised query");
    let b = get(&c, &proxy.url("/list?a=1&b=2"), &[]).await;
    assert!(b.is_hit(), "{}", b.cache());
    let b = get(&c, &proxy.url("/list?fbclid=1&b=2&a=1"), &[]).await;
    assert!(b.is_hit(), "{}", b.cache());
    let s = get(&c, &proxy.url("/search?page=3&q=abba&ref=x"), &[]).await;
    assert_eq!(s.body, "q=q=abba");
    let s = get(&c, &proxy.url("/search?q=abba"), &[]).await;
    assert!(s.is_hit());
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn vary_keeps_variants_apart_and_vary_star_is_never_served() {
    let origin = Origin::start(|seen| async move {
        let enc = seen.header("accept-encoding").unwrap_or("none").to_string();
        if seen.uri.path() == "/star" {
            return reply(
                200,
                &[("cache-control", "max-age=60"), ("vary", "*")],
                "star",
            );
        }
        reply(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
            format!("enc={enc}"),
        )
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let url = proxy.url("/v");
    for enc in ["gzip", "br", "gzip", "br"] {
        let got = get(&c, &url, &[("accept-encoding", enc)]).await;
        assert_eq!(
            got.body,
            format!("enc={enc}"),
            "{} {} (origin hits {})",
            got.status,
            got.cache(),
            origin.hits()
        );
    }
    assert_eq!(origin.hits(), 2, "one fetch per variant");
    let again = get(&c, &url, &[("accept-encoding", "br")]).await;
    assert!(again.is_hit());
    for _ in 0..2 {
        let got = get(&c, &proxy.url("/star"), &[]).await;
        assert!(got.cache().contains("detail=vary-star"), "{}", got.cache());
    }
    assert_eq!(origin.hits(), 4);
}

#[tokio::test]
async fn hosts_never_share_entries_over_http1_and_http2() {
    let origin = Origin::start(|seen| async move {
        let host = seen.header("host").unwrap_or("?").to_string();
        reply(
            200,
            &[("cache-control", "max-age=60")],
            format!("host={host}"),
        )
    })
    .await;
    let proxy = Proxy::start(
        &[
            SiteSpec {
                name: "a",
                hosts: &["a.test"],
                origin: origin.addr,
                rules: HONOR_ALL,
            },
            SiteSpec {
                name: "b",
                hosts: &["b.test", "c.test"],
                origin: origin.addr,
                rules: HONOR_ALL,
            },
        ],
        "",
    )
    .await;
    let hosts = ["a.test", "b.test", "c.test"];
    let h1 = proxy.client(&hosts);
    let h2 = proxy.h2_client(&hosts);
    for (client, path) in [(&h1, "/one"), (&h2, "/two")] {
        for round in 0..2 {
            for host in hosts {
                let got = get(client, &proxy.url_for(host, path), &[]).await;
                assert!(
                    got.body.starts_with(&format!("host={host}")),
                    "{host}{path}: {}",
                    got.body
                );
                assert_eq!(
                    got.is_hit(),
                    round == 1,
                    "{host}{path} round {round}: {}",
                    got.cache()
                );
                // A stored object keeps no Date of its own; every answer gets one.
                assert!(!got.header("date").is_empty(), "{host}{path}");
            }
        }
    }
    assert_eq!(origin.hits(), 6);
}

#[tokio::test]
async fn honor_route_does_not_cache_without_freshness_or_validators() {
    let origin = fixed(&[("content-type", "text/plain")], "plain").await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for _ in 0..2 {
        let got = get(&c, &proxy.url("/x"), &[]).await;
        assert_eq!(got.body, "plain");
        assert!(
            got.cache().contains("detail=no-freshness"),
            "{}",
            got.cache()
        );
    }
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn cache_status_on_every_response_and_internal_headers_stay_inside() {
    let n = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start(move |_| {
        let n = n.fetch_add(1, Ordering::SeqCst);
        async move {
            reply(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("surrogate-key", "track-1 tracks"),
                    ("cache-tag", "t1"),
                ],
                format!("n={n}"),
            )
        }
    })
    .await;
    let proxy = Proxy::single(&origin, OVERRIDE_ALL, "[log]\nformat = \"json\"\n").await;
    let c = proxy.client(&["www.shop.test", "nobody.test"]);
    for _ in 0..3 {
        let got = get(&c, &proxy.url("/t"), &[]).await;
        assert!(got.cache().starts_with("crossfade; "), "{}", got.cache());
        assert_eq!(got.header("surrogate-key"), "");
        assert_eq!(got.header("cache-tag"), "");
    }
    let bypass = get(&c, &proxy.url("/t"), &[("cookie", "session=x")]).await;
    assert!(bypass.cache().contains("fwd=bypass"));
    let post = send(&c, Method::POST, &proxy.url("/t"), &[]).await;
    assert!(post.cache().contains("fwd=method"), "{}", post.cache());

    let unknown = get(&c, &proxy.url_for("nobody.test", "/t"), &[]).await;
    assert_eq!(
        unknown.status, 421,
        "unknown hosts are answered at the edge"
    );
    assert_eq!(origin.hits(), 3, "and never forwarded");

    // One JSON access-log line per request.
    let ok = eventually(std::time::Duration::from_secs(5), || async {
        proxy
            .stdout()
            .lines()
            .filter(|l| l.contains("\"request\""))
            .count()
            == 6
    })
    .await;
    assert!(ok, "access log: {}", proxy.stdout());
    let line = proxy.stdout().lines().next().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["site"], "shop");
    assert_eq!(v["route"], "all");
    assert_eq!(v["status"], 200);
    assert_eq!(v["cache"], "miss");
}

#[tokio::test]
async fn key_cookies_split_the_cache_and_other_cookies_do_not() {
    let origin = Origin::start(|seen| async move {
        let cookie = seen.header("cookie").unwrap_or("").to_string();
        reply(
            200,
            &[("cache-control", "max-age=60")],
            format!("cookie={cookie}"),
        )
    })
    .await;
    let rules = r#"
[defaults]
bypass_cookies = ["session"]
key_cookies = ["currency"]
"#;
    let proxy = Proxy::single(&origin, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let url = proxy.url("/price");
    let eur = get(&c, &url, &[("cookie", "currency=EUR; theme=dark")]).await;
    assert_eq!(
        eur.body, "cookie=currency=EUR",
        "only key cookies reach the origin"
    );
    let usd = get(&c, &url, &[("cookie", "currency=USD")]).await;
    assert_eq!(usd.body, "cookie=currency=USD");
    let eur = get(&c, &url, &[("cookie", "theme=light;currency=EUR")]).await;
    assert!(eur.is_hit(), "{}", eur.cache());
    assert_eq!(eur.body, "cookie=currency=EUR");
    let none = get(&c, &url, &[]).await;
    assert_eq!(none.body, "cookie=");
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn a_declared_default_site_serves_unknown_hosts() {
    let origin = fixed(&[("cache-control", "max-age=60")], "fallback").await;
    // Without a default site the unknown host is refused; with one, it is served.
    for (extra, status) in [("", 421), ("#default", 200)] {
        let site = SiteSpec {
            name: "main",
            hosts: &["main.test"],
            origin: origin.addr,
            rules: HONOR_ALL,
        };
        let proxy = Proxy::start(&[site], extra).await;
        let c = proxy.client(&["other.test"]);
        let got = get(&c, &proxy.url_for("other.test", "/"), &[]).await;
        assert_eq!(got.status, status, "extra config {extra:?}");
        if status == 200 {
            assert_eq!(got.body, "fallback");
        }
    }
}
