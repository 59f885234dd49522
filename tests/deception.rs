//! Cache deception and path confusion: a logged-in page reached under a static-looking path is
//! never stored or served to someone else, and ambiguous path encodings are normalised or
//! refused, never matched in one form and forwarded in another.
//!
//! Requests go over raw TCP: HTTP client libraries resolve `..` and `%2e%2e` before sending,
//! which is exactly what an attacker does not do.

mod common;
use common::*;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A careless but common rule set: everything ending in .css or .png is cached for everyone,
/// even for logged-in visitors (asset rules often drop the cookie check).
const CARELESS_RULES: &str = r#"
[defaults]
bypass_cookies = ["session"]

[[routes]]
name = "styles"
glob = "/**/*.{css,png}"
mode = "override"
edge_ttl = "1d"
bypass_cookies = []

[[routes]]
name = "account"
prefix = "/account"
mode = "pass"
"#;

/// An origin as naive as a PHP application: it decodes the path itself, ignores anything after
/// the script (`/account/<anything>`, `/account;<anything>`) and renders the logged-in page.
async fn naive_origin() -> Origin {
    Origin::start(|seen| async move {
        let raw = seen.uri.path().to_string();
        let path = percent_encoding::percent_decode_str(&raw)
            .decode_utf8_lossy()
            .to_string();
        if path.starts_with("/account") {
            let user = seen
                .header("cookie")
                .and_then(|c| c.split("session=").nth(1))
                .unwrap_or("anonymous")
                .to_string();
            return reply(
                200,
                &[("content-type", "text/html; charset=utf-8")],
                format!("<h1>account of {user}</h1>"),
            );
        }
        if path.ends_with(".css") {
            return reply(200, &[("content-type", "text/css")], "body{}");
        }
        reply(200, &[("content-type", "text/html")], "page")
    })
    .await
}

/// One HTTP/1.1 request written byte for byte; (status, Cache-Status, body).
async fn raw_get(addr: SocketAddr, target: &str, cookie: Option<&str>) -> (u16, String, String) {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: www.shop.test\r\n{cookie}Connection: close\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sock.read_to_end(&mut buf),
    )
    .await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let cache_status = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("cache-status:")
                .then(|| l[13..].trim().to_string())
        })
        .unwrap_or_default();
    (status, cache_status, body.to_string())
}

#[tokio::test]
async fn a_logged_in_page_under_a_static_name_is_never_served_to_others() {
    let origin = naive_origin().await;
    let proxy = Proxy::single(&origin, CARELESS_RULES, "").await;
    for target in [
        "/account/profile/x.css",
        "/account;.css",
        "/account/avatar.png",
        "/%61ccount/profile/y.css",
        "/account%3B.css",
    ] {
        // The victim's request matches the careless rule. Being cacheable, it reaches the origin
        // without cookies, so what could be stored is never the victim's own page …
        let (status, cache, body) = raw_get(proxy.addr, target, Some("session=alice")).await;
        assert_eq!(status, 200, "{target}");
        assert!(!body.contains("alice"), "{target}: {cache}");
        // … and an HTML page under a static name is not stored at all (type mismatch).
        assert!(cache.contains("detail=type-mismatch"), "{target}: {cache}");
        for _ in 0..2 {
            let (_, cache, body) = raw_get(proxy.addr, target, None).await;
            assert!(!body.contains("alice"), "{target}: {cache}");
            assert!(!cache.contains("; hit"), "{target}: stored: {cache}");
        }
    }
    // Real stylesheets under the same rule are still cached.
    raw_get(proxy.addr, "/static/site.css", None).await;
    let (_, cache, body) = raw_get(proxy.addr, "/static/site.css", None).await;
    assert_eq!(body, "body{}");
    assert!(cache.contains("; hit"), "{cache}");
}

#[tokio::test]
async fn ambiguous_paths_are_refused_and_the_rest_forwarded_in_the_routed_form() {
    let origin = naive_origin().await;
    let proxy = Proxy::single(&origin, CARELESS_RULES, "").await;
    for target in [
        "/static%2f..%2faccount.css",
        "/static/..%2Faccount",
        "/static/%2e%2e/account",
        "/static/.%2e/account/x.css",
        "/static/../account/x.css",
        "/./account",
        "/account%5cx.css",
        "/a%00.css",
        "/a%zz.css",
    ] {
        let before = origin.hits();
        let (status, cache, _) = raw_get(proxy.addr, target, Some("session=alice")).await;
        assert_eq!(status, 400, "{target}: {cache}");
        assert!(cache.contains("bad-path"), "{target}: {cache}");
        assert_eq!(origin.hits(), before, "{target} never reaches the origin");
    }
    // An encoded letter is decoded before routing, so the account rule (pass) applies and the
    // origin sees the same path the route matched.
    let (status, cache, _) = raw_get(proxy.addr, "/%61ccount/settings", None).await;
    assert_eq!(status, 200);
    assert!(cache.contains("fwd=bypass"), "{cache}");
    assert_eq!(origin.last().uri.path(), "/account/settings");
    // Other escapes are kept (upper-cased), so the key and the origin agree on them too.
    raw_get(proxy.addr, "/a%2cb", None).await;
    assert_eq!(origin.last().uri.path(), "/a%2Cb");
}
