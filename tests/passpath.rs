//! The pass fast path (`proxy::fast::relay`) forwards known passes (a bypass cookie, a predicted
//! uncacheable key) with crossfade's own HTTP/1 client: the client and the origin must not be
//! able to tell it from pingora's path, an origin's framing must reach the client re-framed,
//! and a pooled connection the origin closed must cost a retry, not an error.

mod common;
use common::*;
use http::Method;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RULES: &str = r#"
[defaults]
bypass_cookies = ["session"]
"#;

const PRIVATE: &[(&str, &str)] = &[
    ("cache-control", "private, max-age=60"),
    ("content-type", "text/html"),
    ("surrogate-key", "page user-42"),
    ("x-app", "accounts"),
    ("set-cookie", "seen=1; Path=/"),
];

/// Header names and values, sorted, without those that differ between any two requests.
fn sorted(headers: &http::HeaderMap, skip: &[&str]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| !skip.contains(&n.as_str()))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn passes_on_the_fast_path_are_the_passes_of_the_proxy_path() {
    let origin = Origin::start(|_| async { reply(200, PRIVATE, "hello, member") }).await;
    let fast = Proxy::single(&origin, RULES, "").await;
    let slow = Proxy::single(&origin, RULES, "[proxy]\npass_fast_path = false\n").await;
    let untrusted = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.test"),
        ("x-original-url", "/admin"),
        ("x-request-id", "req-1"),
        ("accept-language", "de"),
    ];
    let mut seen = Vec::new();
    let mut answers = Vec::new();
    for proxy in [&fast, &slow] {
        let c = proxy.client(&["www.shop.test"]);
        // The first request for a private page learns it is uncacheable (pingora's path).
        let first = get(&c, &proxy.url("/account?b=2&a=1"), &[]).await;
        assert!(
            first.cache().contains("detail=set-cookie"),
            "{}",
            first.cache()
        );
        let mut headers = untrusted.to_vec();
        headers.push(("cookie", "theme=dark"));
        let predicted = get(&c, &proxy.url("/account?b=2&a=1"), &headers).await;
        let predicted_seen = origin.last();
        headers.push(("cookie", "session=42"));
        let bypass = get(&c, &proxy.url("/account?b=2&a=1"), &headers).await;
        let bypass_seen = origin.last();
        let head = send(&c, Method::HEAD, &proxy.url("/account"), &headers).await;
        for (got, what) in [
            (&predicted, "predicted"),
            (&bypass, "bypass"),
            (&head, "head"),
        ] {
            answers.push((
                what,
                got.status,
                got.body.clone(),
                sorted(&got.headers, &["date"]),
            ));
        }
        for s in [predicted_seen, bypass_seen] {
            // The host the key was built from: no port, whichever the client named.
            assert_eq!(s.header("host"), Some("www.shop.test"));
            seen.push((s.method, s.uri.to_string(), sorted(&s.headers, &["host"])));
        }
    }
    let (fast_answers, slow_answers) = answers.split_at(3);
    assert_eq!(
        fast_answers, slow_answers,
        "the client got different answers from the two paths"
    );
    let (f, s) = seen.split_at(2);
    assert_eq!(f, s, "the origin got different requests from the two paths");
    // What both gave: the normalised query and no cookie for the cacheable route's pass, the
    // session cookie kept on the bypass, forwarding headers set by the edge, internal headers
    // kept inside.
    assert_eq!(f[0].1, "/account?a=1&b=2");
    assert!(!f[0].2.iter().any(|(n, _)| n == "cookie"), "{:?}", f[0].2);
    assert_eq!(f[1].1, "/account?b=2&a=1");
    // (The client's two Cookie fields in one, as an HTTP/2 client's must be: RFC 9113 §8.2.3.)
    assert!(
        f[1].2
            .contains(&("cookie".into(), "theme=dark; session=42".into())),
        "{:?}",
        f[1].2
    );
    for (_, _, h) in f {
        assert!(
            h.contains(&("x-forwarded-for".into(), "127.0.0.1".into())),
            "{h:?}"
        );
        assert!(
            h.contains(&("x-forwarded-host".into(), "www.shop.test".into())),
            "{h:?}"
        );
        assert!(
            h.contains(&("x-request-id".into(), "req-1".into())),
            "{h:?}"
        );
        assert!(!h.iter().any(|(n, _)| n == "x-original-url"), "{h:?}");
    }
    let predicted = &fast_answers[0].3;
    assert!(predicted.contains(&(
        "cache-status".into(),
        "crossfade; fwd=miss; fwd-status=200; detail=set-cookie".into()
    )));
    assert!(!predicted.iter().any(|(n, _)| n == "surrogate-key"));
    assert_eq!(
        counter_reaches(&fast, "crossfade_fast_path_passes_total", fast_count("3")).await,
        fast_count("3")
    );
    assert_eq!(
        proxy_counter(&slow, "crossfade_fast_path_passes_total").await,
        "0"
    );
}

/// A keep-alive origin speaking raw bytes: request `n` (counted over all connections, from 0)
/// gets `answer(n)`; `None` closes the connection without an answer, and so does an answer
/// that says `Connection: close`.
async fn raw_origin(
    answer: fn(usize) -> Option<Vec<u8>>,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let count = counted.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        match answer(n) {
                            Some(bytes) => {
                                let close = bytes.windows(17).any(|w| w == b"Connection: close");
                                if sock.write_all(&bytes).await.is_err() || close {
                                    return;
                                }
                            }
                            None => return,
                        }
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
            });
        }
    });
    (addr, count)
}

/// One raw request on a fresh connection; everything the proxy sent until it closed or went
/// quiet for a second after its first bytes (which may take longer on a loaded machine: a
/// whole suite's run once missed them within a second).
async fn raw_exchange(proxy: &Proxy, requests: &str) -> String {
    let mut sock = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    sock.write_all(requests.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let mut quiet = Duration::from_secs(10);
    while let Ok(Ok(n)) = tokio::time::timeout(quiet, sock.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        quiet = Duration::from_secs(1);
    }
    String::from_utf8_lossy(&out).into_owned()
}

const BYPASS: &str = "GET /me HTTP/1.1\r\nHost: www.shop.test\r\nCookie: session=1\r\n\r\n";

#[tokio::test]
async fn an_origin_closing_a_pooled_connection_costs_a_retry_not_an_error() {
    // Every connection answers its first request, then closes when the second arrives (the
    // race of an origin's keep-alive timeout with a request on its way).
    let (addr, count) = raw_origin(|n| {
        let body = format!("answer {n}");
        (n % 2 == 0).then(|| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
    })
    .await;
    // Only even requests are answered: the origin counts the dropped ones too.
    let proxy = Proxy::single_addr(addr, RULES, "").await;
    for i in 0..4 {
        let got = raw_exchange(&proxy, BYPASS).await;
        assert!(got.starts_with("HTTP/1.1 200 OK"), "request {i}: {got}");
        assert!(
            got.ends_with(&format!("answer {}", 2 * i)),
            "request {i}: {got}"
        );
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        7,
        "three requests were sent twice"
    );
}

/// A 200 KB answer in 200 chunks of 1,000 bytes, with chunk extensions and a trailer.
fn chunked_answer() -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for i in 0..200 {
        r.extend_from_slice(format!("{:x};i={i}\r\n", 1000).as_bytes());
        r.extend_from_slice(&[b'a' + (i % 26) as u8; 1000]);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\nx-checksum: 1\r\n\r\n");
    r
}

/// The body of [`chunked_answer`].
fn chunked_body() -> String {
    (0..200)
        .map(|i| String::from_utf8(vec![b'a' + (i % 26) as u8; 1000]).unwrap())
        .collect()
}

#[tokio::test]
async fn origin_bodies_reach_the_client_in_framing_this_proxy_wrote() {
    let (addr, _) = raw_origin(|n| {
        Some(match n {
            0 => chunked_answer(),
            // Both framings: chunked wins, and the length must not reach the client.
            1 => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            // No length: the body ends when the origin closes.
            _ => b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec(),
        })
    })
    .await;
    let proxy = Proxy::single_addr(addr, RULES, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let big = get(&c, &proxy.url("/me"), &[("cookie", "session=1")]).await;
    assert_eq!(big.status, 200);
    let expected = chunked_body();
    assert!(
        big.body == expected,
        "a 200 KB chunked body arrived changed"
    );
    // Two answers on one client connection: both complete, the first without a length.
    let both = raw_exchange(&proxy, &format!("{BYPASS}{BYPASS}")).await;
    let (first, second) = both.split_once("\r\n0\r\n\r\n").expect(&both);
    assert!(
        !first.to_ascii_lowercase().contains("content-length"),
        "{first}"
    );
    assert!(first.contains("5\r\nhello"), "{first}");
    assert!(second.contains("Transfer-Encoding: chunked"), "{second}");
    assert!(second.contains("until the end\r\n"), "{second}");
    assert!(both.ends_with("0\r\n\r\n"), "{both}");
}

#[tokio::test]
async fn origin_failures_on_the_fast_pass_are_clean_answers() {
    let (addr, _) = raw_origin(|n| {
        Some(match n {
            0 => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            1 => b"NOT HTTP AT ALL\r\n\r\n".to_vec(),
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfine!".to_vec(),
        })
    })
    .await;
    let proxy = Proxy::single_addr(addr, RULES, "").await;
    for what in ["conflicting lengths", "garbage"] {
        let got = raw_exchange(&proxy, &format!("{BYPASS}{BYPASS}")).await;
        assert!(
            got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
            "{what}: {got}"
        );
        assert_eq!(
            got.matches("HTTP/1.1").count(),
            1,
            "{what}: closed after: {got}"
        );
        assert!(!got.contains("abcd"), "{what}: {got}");
    }
    let c = proxy.client(&["www.shop.test"]);
    let fine = get(&c, &proxy.url("/me"), &[("cookie", "session=1")]).await;
    assert_eq!((fine.status, fine.body.as_str()), (200, "fine!"));

    // A body cut short: the client sees the connection end, never a complete-looking answer.
    let (addr, _) =
        raw_origin(|_| Some(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..".to_vec()))
            .await;
    let cut = Proxy::single_addr(addr, RULES, "[origin]\nread_timeout = \"1s\"\n").await;
    // Read until the proxy closes: pingora's path sends the piece with the close (after the
    // read timeout), the fast path at once.
    let mut sock = tokio::net::TcpStream::connect(cut.addr).await.unwrap();
    sock.write_all(BYPASS.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut got))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200 OK") && got.ends_with("only ten.."),
        "{got}"
    );

    // An origin that is down: pingora's path answers (a server marked down: its 503 page).
    let origin = Origin::start(|_| async { reply(200, &[], "up") }).await;
    let down = Proxy::single(&origin, RULES, "").await;
    origin.kill().await;
    let c = down.client(&["www.shop.test"]);
    let got = get(&c, &down.url("/me"), &[("cookie", "session=1")]).await;
    assert!(
        matches!(got.status, 502 | 503),
        "{} {}",
        got.status,
        got.body
    );
    assert_eq!(
        proxy_counter(&down, "crossfade_fast_path_passes_total").await,
        "0"
    );
}

#[tokio::test]
async fn http2_passes_get_whole_bodies_clean_errors_and_resets_for_cut_bodies() {
    let (addr, _) = raw_origin(|n| {
        Some(match n {
            0 => chunked_answer(),
            // No length: the body ends when the origin closes.
            1 => b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec(),
            2 => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            // Cut short: the origin closes after ten of a hundred bytes.
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly ten.."
                .to_vec(),
        })
    })
    .await;
    let proxy = Proxy::single_addr(addr, RULES, "").await;
    let c = proxy.h2_client(&["www.shop.test"]);
    let cookie = [("cookie", "session=1")];
    let big = get(&c, &proxy.url("/me"), &cookie).await;
    let expected = chunked_body();
    assert_eq!(big.status, 200);
    assert!(
        big.body == expected,
        "a 200 KB chunked body arrived changed"
    );
    assert!(big.headers.get("transfer-encoding").is_none());
    let closed = get(&c, &proxy.url("/me"), &cookie).await;
    assert_eq!(
        (closed.status, closed.body.as_str()),
        (200, "until the end")
    );
    let bad = get(&c, &proxy.url("/me"), &cookie).await;
    assert_eq!(bad.status, 502, "{}", bad.body);
    assert!(!bad.body.contains("abcd"));
    // The client must not take a body cut short for a whole one: the stream is reset (before
    // or after the head reached it, as the connection's writes fell).
    let cut = c.get(proxy.url("/me")).header("cookie", "session=1").send();
    let body = match cut.await {
        Ok(answer) => answer.text().await,
        Err(e) => Err(e),
    };
    assert!(body.is_err(), "a cut body arrived as a whole one: {body:?}");
    // The connection still carries streams.
    let after = send(&c, Method::HEAD, &proxy.url("/me"), &cookie).await;
    assert_eq!(after.status, 200);
    assert_eq!(
        counter_reaches(&proxy, "crossfade_fast_path_passes_total", fast_count("5")).await,
        fast_count("5")
    );
}

#[tokio::test]
async fn a_predicted_uncacheable_page_that_turns_cacheable_is_stored_again() {
    let public = Arc::new(AtomicBool::new(false));
    let flag = public.clone();
    let origin = Origin::start(move |_| {
        let cc = if flag.load(Ordering::SeqCst) {
            "public, max-age=60"
        } else {
            "private"
        };
        async move { reply(200, &[("cache-control", cc)], "page") }
    })
    .await;
    let proxy = Proxy::single(&origin, RULES, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let url = proxy.url("/news");
    assert!(get(&c, &url, &[]).await.cache().contains("detail=private"));
    assert!(get(&c, &url, &[]).await.cache().contains("detail=private"));
    public.store(true, Ordering::SeqCst);
    // Forwarded on the prediction, the answer turned storable: stored at once (a GET answered
    // 200), on either transport, and then a hit.
    let turned = get(&c, &url, &[]).await;
    assert_eq!((turned.status, turned.body.as_str()), (200, "page"));
    assert!(
        turned.cache().contains("fwd=miss") && turned.cache().contains("; stored"),
        "{}",
        turned.cache()
    );
    let hit = get(&c, &url, &[]).await;
    assert!(hit.is_hit() && hit.body == "page", "{}", hit.cache());
    assert_eq!(origin.hits(), 3);
    // Counted alike: two not stored as private, one stored.
    let (_, m) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/metrics", "")
        .await;
    let mut store: Vec<&str> = m
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("crossfade_cache_store_total{"))
        .collect();
    store.sort();
    let expected = [
        r#"crossfade_cache_store_total{outcome="not_stored",reason="private",route="default",site="shop"} 2"#,
        r#"crossfade_cache_store_total{outcome="stored",reason="",route="default",site="shop"} 1"#,
    ];
    assert_eq!(store, expected);
    // A HEAD that finds the page storable again is left to the next GET, as pingora defers it.
    let head_url = proxy.url("/news-head");
    public.store(false, Ordering::SeqCst);
    assert!(get(&c, &head_url, &[])
        .await
        .cache()
        .contains("detail=private"));
    public.store(true, Ordering::SeqCst);
    let head = send(&c, Method::HEAD, &head_url, &[]).await;
    assert!(head.cache().contains("detail=deferred"), "{}", head.cache());
    let stored = get(&c, &head_url, &[]).await;
    assert!(stored.cache().contains("; stored"), "{}", stored.cache());
}
