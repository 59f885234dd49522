//! The hit fast path (`proxy::fast`) answers plain hits before pingora's proxy path; a client
//! must not be able to tell which path answered, and everything that is not a plain hit must
//! still reach pingora's path.

mod common;
use common::*;
use http::Method;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RULES: &str = r#"
[defaults]
bypass_cookies = ["session"]
[[routes]]
name = "assets"
glob = "/static/**"
mode = "override"
edge_ttl = "1h"
browser_ttl = "365d"
browser_immutable = true
"#;

const HEADERS: &[(&str, &str)] = &[
    ("cache-control", "public, max-age=60"),
    ("content-type", "text/css"),
    ("etag", "\"v1\""),
    ("surrogate-key", "css release-1"),
    ("link", "</a.css>; rel=preload"),
    ("link", "</b.css>; rel=preload"),
    ("x-app", "store"),
];

/// The headers a client got, without the ones that differ between any two responses.
fn comparable(got: &Got) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = got
        .headers
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "date" | "age" | "x-request-id"))
        .map(|(n, v)| {
            let v = v.to_str().unwrap_or("").to_string();
            // `ttl=N` counts down between the two proxies' requests.
            let v = match v.split_once("; ttl=") {
                Some((head, _)) if n == "cache-status" => head.to_string(),
                _ => v,
            };
            (n.to_string(), v)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn hits_from_the_fast_path_are_the_hits_of_the_proxy_path() {
    let origin = Origin::start(|_| async { reply(200, HEADERS, "body { color: red }") }).await;
    let fast = Proxy::single(&origin, RULES, "").await;
    let slow = Proxy::single(&origin, RULES, "[proxy]\nhit_fast_path = false\n").await;
    let mut answers = Vec::new();
    for proxy in [&fast, &slow] {
        let c = proxy.client(&["www.shop.test"]);
        for path in ["/static/app.css", "/page"] {
            let miss = get(&c, &proxy.url(path), &[]).await;
            assert!(miss.cache().contains("fwd=miss"), "{}", miss.cache());
            let hit = get(&c, &proxy.url(path), &[("x-request-id", "abc-123")]).await;
            assert!(hit.is_hit(), "{path}: {}", hit.cache());
            assert_eq!(hit.header("x-request-id"), "abc-123");
            assert!(!hit.header("age").is_empty() && !hit.header("date").is_empty());
            let head = send(&c, Method::HEAD, &proxy.url(path), &[]).await;
            assert!(head.is_hit() && head.body.is_empty(), "{}", head.cache());
            answers.push((
                path,
                hit.status,
                hit.body.clone(),
                comparable(&hit),
                comparable(&head),
            ));
        }
    }
    let (fast_answers, slow_answers) = answers.split_at(2);
    for (f, s) in fast_answers.iter().zip(slow_answers) {
        assert_eq!(
            f, s,
            "the fast path answered differently from the proxy path"
        );
    }
    // The asset route rewrote Cache-Control; the surrogate keys stayed inside.
    let asset = &fast_answers[0].3;
    assert!(asset.contains(&(
        "cache-control".into(),
        "public, max-age=31536000, immutable".into()
    )));
    assert!(!asset.iter().any(|(n, _)| n == "surrogate-key"));
    // Which path answered: two hits and two HEADs on the fast proxy, none on the other.
    assert_eq!(
        proxy_counter(&fast, "crossfade_fast_path_hits_total").await,
        "4"
    );
    assert_eq!(
        proxy_counter(&slow, "crossfade_fast_path_hits_total").await,
        "0"
    );
    assert_eq!(origin.hits(), 4);
}

#[tokio::test]
async fn requests_that_are_not_plain_hits_still_take_the_proxy_path() {
    let origin = Origin::start(|_| async { reply(200, HEADERS, "0123456789") }).await;
    let proxy = Proxy::single(&origin, RULES, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let url = proxy.url("/static/app.css");
    get(&c, &url, &[]).await;
    // Conditional, range and logged-in requests for a stored object: pingora's answers.
    let not_modified = get(&c, &url, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(not_modified.status, 304);
    let range = get(&c, &url, &[("range", "bytes=2-4")]).await;
    assert_eq!((range.status, range.body.as_str()), (206, "234"));
    let page = proxy.url("/page");
    get(&c, &page, &[]).await;
    let logged_in = get(&c, &page, &[("cookie", "session=42")]).await;
    assert!(
        logged_in.cache().contains("detail=logged-in"),
        "{}",
        logged_in.cache()
    );
    assert_eq!(
        proxy_counter(&proxy, "crossfade_fast_path_hits_total").await,
        "0"
    );

    // Pipelined: a hit, then a pass, then a hit, in one write; three answers in order.
    let mut sock = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let hit = "GET /static/app.css HTTP/1.1\r\nHost: www.shop.test\r\n\r\n";
    let pass = "GET /page HTTP/1.1\r\nHost: www.shop.test\r\nCookie: session=1\r\n\r\n";
    sock.write_all(format!("{hit}{pass}{hit}").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while text.matches("HTTP/1.1 200").count() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
            .await
            .expect("three answers within 5 s")
            .unwrap();
        assert!(n > 0, "closed after {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let statuses: Vec<&str> = text
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("cache-status"))
        .collect();
    assert_eq!(statuses.len(), 3, "{text}");
    assert!(
        statuses[0].contains("; hit") && statuses[2].contains("; hit"),
        "{text}"
    );
    assert!(statuses[1].contains("logged-in"), "{text}");
}
