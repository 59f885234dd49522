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
        counter_reaches(&fast, "crossfade_fast_path_hits_total", fast_count("4")).await,
        fast_count("4")
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

/// A body of `lines` numbered lines: every offset holds different bytes, so a piece sent
/// twice, dropped or out of order shows.
fn numbered(lines: usize) -> String {
    (0..lines).map(|i| format!("{i:08}\n")).collect()
}

#[tokio::test]
async fn large_bodies_arrive_whole_from_every_path() {
    // 450 KiB: kept in a memory file and sent with sendfile on plain HTTP/1 hits.
    let body = numbered(50_000);
    let served = body.clone();
    let origin = Origin::start(move |_| {
        let b = served.clone();
        async move { reply(200, HEADERS, b) }
    })
    .await;
    let proxy = Proxy::single(&origin, RULES, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let url = proxy.url("/static/big.css");
    let miss = get(&c, &url, &[]).await;
    assert!(miss.cache().contains("fwd=miss"), "{}", miss.cache());
    assert!(miss.body == body, "the miss carries the origin's body");
    for _ in 0..3 {
        let hit = get(&c, &url, &[]).await;
        assert!(hit.is_hit(), "{}", hit.cache());
        assert!(hit.body == body, "a fast-path hit carries the stored body");
    }
    assert_eq!(
        counter_reaches(&proxy, "crossfade_fast_path_hits_total", fast_count("3")).await,
        fast_count("3")
    );
    // pingora's path reads the same stored body: HTTP/2, a range, a HEAD.
    let h2 = get(&proxy.h2_client(&["www.shop.test"]), &url, &[]).await;
    assert!(h2.is_hit() && h2.body == body, "{}", h2.cache());
    let range = get(&c, &url, &[("range", "bytes=300000-300017")]).await;
    assert_eq!(
        (range.status, range.body.as_str()),
        (206, &body[300_000..300_018])
    );
    let head = send(&c, Method::HEAD, &url, &[]).await;
    assert!(head.is_hit() && head.body.is_empty(), "{}", head.cache());
    assert_eq!(head.header("content-length"), body.len().to_string());

    // Ten pipelined hits on one connection: each head, then its whole body, in order.
    let mut sock = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let req = "GET /static/big.css HTTP/1.1\r\nHost: www.shop.test\r\n\r\n";
    sock.write_all(req.repeat(10).as_bytes()).await.unwrap();
    // Not reading for a while fills the socket buffers: the proxy must wait for room and
    // carry on where it stopped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = Vec::new();
    let mut start = 0;
    for i in 0..10 {
        let end = loop {
            if let Some(p) = got[start..].windows(4).position(|w| w == b"\r\n\r\n") {
                break start + p + 4;
            }
            read_more(&mut sock, &mut got).await;
        };
        let head = String::from_utf8_lossy(&got[start..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "answer {i}: {head}");
        assert!(head.contains(&format!("{}", body.len())), "{head}");
        while got.len() < end + body.len() {
            read_more(&mut sock, &mut got).await;
        }
        let answer = &got[end..end + body.len()];
        assert!(
            answer == body.as_bytes(),
            "answer {i}'s body is the stored body"
        );
        start = end + body.len();
    }
    let rest = &got[start..];
    assert!(
        rest.is_empty(),
        "{} bytes after the last answer",
        rest.len()
    );
}

/// Appends what the socket gives next to `got`; fails the test on a close or a 10 s silence.
async fn read_more(sock: &mut tokio::net::TcpStream, got: &mut Vec<u8>) {
    let mut buf = vec![0u8; 64 << 10];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
        .await
        .expect("more of the answers within 10 s")
        .unwrap();
    assert!(n > 0, "closed after {} bytes", got.len());
    got.extend_from_slice(&buf[..n]);
}

#[tokio::test]
async fn keyed_and_varied_hits_take_the_fast_path_and_never_mix() {
    // The shipped store rules key pages on the `currency` cookie; origins commonly vary on
    // Accept-Encoding.
    let origin = Origin::start(|seen| async move {
        let currency = seen
            .header("cookie")
            .and_then(|c| c.split("currency=").nth(1))
            .map_or("EUR", |v| v.split(';').next().unwrap_or("EUR"))
            .to_string();
        let encoding = seen.header("accept-encoding").unwrap_or("-").to_string();
        let fields = [
            ("cache-control", "max-age=60"),
            ("vary", "Accept-Encoding"),
            ("content-type", "text/html"),
        ];
        reply(
            200,
            &fields,
            format!("{} in {currency} for {encoding}", seen.uri.path()),
        )
    })
    .await;
    let rules = "[defaults]\nbypass_cookies = [\"session\"]\nkey_cookies = [\"currency\"]\n";
    let proxy = Proxy::single(&origin, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[], "/p in EUR for -"),
        (&[("cookie", "currency=USD")], "/p in USD for -"),
        (
            &[("cookie", "currency=USD"), ("accept-encoding", "gzip")],
            "/p in USD for gzip",
        ),
        (&[("cookie", "other=1; currency=GBP")], "/p in GBP for -"),
    ];
    for (headers, _) in cases {
        get(&c, &proxy.url("/p"), headers).await;
    }
    let misses = origin.hits();
    for _ in 0..3 {
        for (headers, body) in cases {
            let got = get(&c, &proxy.url("/p"), headers).await;
            assert_eq!(got.body, body, "{headers:?}");
            assert!(got.is_hit(), "{headers:?}: {}", got.cache());
        }
    }
    assert_eq!(origin.hits(), misses, "every variant was a hit");
    assert_eq!(
        counter_reaches(&proxy, "crossfade_fast_path_hits_total", fast_count("12")).await,
        fast_count("12"),
        "keyed and varied hits are the fast path's"
    );
}

#[tokio::test]
async fn a_keyed_route_relays_uncacheable_pages_fast_with_only_its_key_cookies() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "private")], "mine") }).await;
    let rules = "[defaults]\nbypass_cookies = [\"session\"]\nkey_cookies = [\"currency\"]\n";
    let proxy = Proxy::single(&origin, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for _ in 0..4 {
        let got = get(
            &c,
            &proxy.url("/cart"),
            &[("cookie", "tracking=1; currency=USD")],
        )
        .await;
        assert_eq!(got.body, "mine");
        assert_eq!(
            origin.last().header("cookie"),
            Some("currency=USD"),
            "the origin gets exactly the key cookies"
        );
    }
    // The first request taught the predictor; the other three were relayed fast.
    assert_eq!(
        counter_reaches(&proxy, "crossfade_fast_path_passes_total", fast_count("3")).await,
        fast_count("3")
    );
}
