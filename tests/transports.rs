//! One proxy, two transports: requests whose framing, target or host the HTTP/1.1 fast
//! transport and pingora's path once read differently. Each runs in the transport this run
//! uses (`CROSSFADE_TEST_TRANSPORT`; CI runs both), over raw sockets, and asserts on what the
//! client and the origin received.

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RULES: &str = r#"
[defaults]
bypass_cookies = ["session"]
[[routes]]
name = "account"
prefix = "/account/"
mode = "pass"
"#;

/// An origin whose pages are public for a minute and say which path and host they were
/// built for.
async fn echo_origin() -> Origin {
    Origin::start(|s| async move {
        let body = format!("path={} host={}", s.uri, s.header("host").unwrap_or("-"));
        reply(200, &[("cache-control", "public, max-age=60")], body)
    })
    .await
}

/// Reads answers until `count` complete ones (Content-Length framed) arrived, the proxy
/// closed, or `within` passed; (status, body) of each.
async fn answers(sock: &mut TcpStream, count: usize, within: Duration) -> Vec<(u16, String)> {
    let deadline = Instant::now() + within;
    let mut raw = Vec::new();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if raw.len() < end + 4 + length {
                break;
            }
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + length]).to_string();
            raw.drain(..end + 4 + length);
            out.push((status, body));
        }
        if out.len() >= count {
            return out;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&buf[..n]),
            _ => return out,
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: www.shop.test\r\n{extra}\r\n")
}

#[tokio::test]
async fn the_origin_gets_the_host_the_cache_key_was_built_from() {
    let origin = echo_origin().await;
    let proxy = Proxy::single(&origin, RULES, "").await;
    // A port, a trailing dot and capitals are not part of the key, so they must not reach the
    // origin either: otherwise this page, built for `:6666`, is everyone's page.
    for (i, host) in ["www.shop.test:6666", "WWW.SHOP.TEST.", "www.shop.test"]
        .iter()
        .enumerate()
    {
        let mut sock = connect(proxy.addr).await;
        let req = format!("GET /page HTTP/1.1\r\nHost: {host}\r\n\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let got = answers(&mut sock, 1, Duration::from_secs(5)).await;
        assert_eq!(
            got[0],
            (200, "path=/page host=www.shop.test".into()),
            "{i}: {host}"
        );
    }
    assert_eq!(
        origin.hits(),
        1,
        "one page, stored once, served to all three"
    );
    // A pass (logged in) and an absolute-form target name the host the same way; a Host that
    // contradicts the target's authority is refused.
    let mut sock = connect(proxy.addr).await;
    let passes = [
        "GET /account/me HTTP/1.1\r\nHost: www.shop.test:6666\r\nCookie: session=1\r\n\r\n",
        "GET http://WWW.shop.test:80/account/you HTTP/1.1\r\nHost: WWW.shop.test:80\r\n\r\n",
        "GET http://www.shop.test/account/x HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    ];
    sock.write_all(passes.concat().as_bytes()).await.unwrap();
    let got = answers(&mut sock, 3, Duration::from_secs(5)).await;
    let statuses: Vec<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(statuses, [200, 200, 400], "{got:?}");
    assert_eq!(got[0].1, "path=/account/me host=www.shop.test");
    assert_eq!(got[1].1, "path=/account/you host=www.shop.test");
}

#[tokio::test]
async fn targets_that_are_not_origin_or_absolute_form_are_refused_before_routing() {
    let origin = echo_origin().await;
    let proxy = Proxy::single(&origin, RULES, "").await;
    for (what, head) in [
        ("no leading slash", "GET account/x HTTP/1.1\r\n"),
        (
            "no leading slash, POST",
            "POST account/mv HTTP/1.1\r\nContent-Length: 0\r\n",
        ),
        ("authority-form", "GET www.shop.test:80 HTTP/1.1\r\n"),
        ("asterisk on GET", "GET * HTTP/1.1\r\n"),
        ("DEL in the target", "GET /a\x7fb HTTP/1.1\r\n"),
        ("raw UTF-8 in the target", "GET /caf\u{e9} HTTP/1.1\r\n"),
        (
            "a dot segment after a fragment-free path",
            "GET /static/../account/x HTTP/1.1\r\n",
        ),
    ] {
        let mut sock = connect(proxy.addr).await;
        let req = format!("{head}Host: www.shop.test\r\nCookie: session=1\r\n\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let got = answers(&mut sock, 1, Duration::from_secs(5)).await;
        assert_eq!(got.first().map(|g| g.0), Some(400), "{what}: {got:?}");
    }
    assert_eq!(origin.hits(), 0, "nothing refused reached the origin");
    // `OPTIONS *` is a question for the server: answered by the edge.
    let mut sock = connect(proxy.addr).await;
    let req = "OPTIONS * HTTP/1.1\r\nHost: www.shop.test\r\n\r\n";
    sock.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(
        answers(&mut sock, 1, Duration::from_secs(5)).await[0].0,
        200
    );
    // Fragments are not part of a target: the origin never sees one.
    let mut sock = connect(proxy.addr).await;
    let req = get("/account/x#frag", "Cookie: session=1\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let got = answers(&mut sock, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0], (200, "path=/account/x host=www.shop.test".into()));
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn a_request_without_exactly_one_host_is_refused() {
    let origin = echo_origin().await;
    let proxy = Proxy::single(&origin, RULES, "").await;
    for (what, req, status) in [
        ("HTTP/1.1 without Host", "GET /page HTTP/1.1\r\n\r\n", 400),
        (
            "two Host headers",
            "GET /page HTTP/1.1\r\nHost: www.shop.test\r\nHost: other.test\r\n\r\n",
            400,
        ),
        (
            "HTTP/1.0 without Host names no site",
            "GET /page HTTP/1.0\r\n\r\n",
            421,
        ),
    ] {
        let mut sock = connect(proxy.addr).await;
        sock.write_all(req.as_bytes()).await.unwrap();
        let got = answers(&mut sock, 1, Duration::from_secs(5)).await;
        assert_eq!(got.first().map(|g| g.0), Some(status), "{what}: {got:?}");
    }
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn heads_ending_in_bare_lf_are_answered_at_once_and_in_order() {
    let origin = echo_origin().await;
    let proxy = Proxy::single(&origin, RULES, "").await;
    let started = Instant::now();
    let mut sock = connect(proxy.addr).await;
    sock.write_all(b"GET /lf HTTP/1.1\nHost: www.shop.test\n\n")
        .await
        .unwrap();
    let got = answers(&mut sock, 1, Duration::from_secs(5)).await;
    assert_eq!(got.first().map(|g| g.0), Some(200), "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once"
    );
    // A head ending `\r\n\n`, then a pipelined request: both answered, in order.
    let mut sock = connect(proxy.addr).await;
    let two = "GET /one HTTP/1.1\r\nHost: www.shop.test\r\n\nGET /two HTTP/1.1\r\nHost: www.shop.test\r\n\r\n";
    sock.write_all(two.as_bytes()).await.unwrap();
    let got = answers(&mut sock, 2, Duration::from_secs(5)).await;
    let bodies: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(
        bodies,
        [
            "path=/one host=www.shop.test",
            "path=/two host=www.shop.test"
        ]
    );
    // Empty lines before a head, and a head split across writes: served as sent, in order.
    let mut sock = connect(proxy.addr).await;
    sock.write_all(b"\r\n\r\nGET /first HTTP/1.1\r\nHost: www.shop.test\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sock.write_all(b"\r\nGET /second HTTP/1.1\r\nHost: www.shop.test\r\n\r\n")
        .await
        .unwrap();
    let got = answers(&mut sock, 2, Duration::from_secs(5)).await;
    let bodies: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(
        bodies,
        [
            "path=/first host=www.shop.test",
            "path=/second host=www.shop.test"
        ]
    );
}

#[tokio::test]
async fn empty_lines_cannot_stop_the_header_clock() {
    let origin = echo_origin().await;
    let extra = "[proxy]\nheader_timeout = \"2s\"\nkeepalive_timeout = \"30s\"\n";
    let proxy = Proxy::single(&origin, RULES, extra).await;
    let mut sock = connect(proxy.addr).await;
    // `\r\n\r\n` first (parsers skip it), then a head trickled a byte at a time.
    sock.write_all(b"\r\n\r\nGET /slow HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(8) {
        if sock.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(500), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
            }
            Err(_) => {}
        }
    }
    assert!(closed, "a trickled head outlived header_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn a_hundred_pipelined_misses_are_all_answered_in_order() {
    let origin = echo_origin().await;
    let proxy = Proxy::single(&origin, RULES, "").await;
    let mut sock = connect(proxy.addr).await;
    // ~25 KB in one write: more than one read of the connection loop, so the origin is asked
    // while later requests still wait in the socket.
    let pad = format!("X-Pad: {}\r\n", "p".repeat(200));
    let all: String = (0..100).map(|i| get(&format!("/p/{i}"), &pad)).collect();
    sock.write_all(all.as_bytes()).await.unwrap();
    let got = answers(&mut sock, 100, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 100, "answers: {:?}", got.last());
    for (i, (status, body)) in got.iter().enumerate() {
        assert_eq!(
            (*status, body.as_str()),
            (200, format!("path=/p/{i} host=www.shop.test").as_str())
        );
    }
    // And again, now as hits.
    sock.write_all(all.as_bytes()).await.unwrap();
    let got = answers(&mut sock, 100, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 100);
    assert_eq!(origin.hits(), 100);
}

/// An origin speaking raw bytes: `answer(path)` is the whole response to a request for `path`;
/// `None` holds the connection without a word.
async fn raw_origin(answer: fn(&str) -> Option<Vec<u8>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                        let Some(bytes) = answer(&path) else {
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            return;
                        };
                        if sock.write_all(&bytes).await.is_err() {
                            return;
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
    addr
}

#[tokio::test]
async fn origin_heads_have_the_same_limits_on_both_transports() {
    let addr = raw_origin(|path| {
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
        let lines = match path {
            "/account/many" => 200,
            "/account/too-many" => 300,
            _ => 0,
        };
        for i in 0..lines {
            head.extend_from_slice(format!("x-line-{i}: {i}\r\n").as_bytes());
        }
        if path == "/account/large" {
            head.extend_from_slice(format!("x-large: {}\r\n", "l".repeat(300_000)).as_bytes());
        }
        head.extend_from_slice(b"\r\nok");
        Some(head)
    })
    .await;
    let proxy = Proxy::single_addr(addr, RULES, "").await;
    // pingora allows 256 header lines and a head of up to 1 MiB from an origin; so does the
    // fast transport.
    for (path, status) in [
        ("/account/many", 200),
        ("/account/large", 200),
        ("/account/too-many", 502),
    ] {
        let mut sock = connect(proxy.addr).await;
        let req = get(path, "Cookie: session=1\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let got = answers(&mut sock, 1, Duration::from_secs(5)).await;
        assert_eq!(got.first().map(|g| g.0), Some(status), "{path}");
        if status == 200 {
            assert_eq!(got[0].1, "ok");
        }
    }
}

#[tokio::test]
async fn empty_ranges_and_if_none_match_star_follow_rfc_9110() {
    let origin = Origin::start(|_| async {
        reply(
            200,
            &[("cache-control", "public, max-age=60"), ("etag", "\"v1\"")],
            "x".repeat(265),
        )
    })
    .await;
    let proxy = Proxy::single(&origin, RULES, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let url = proxy.url("/page");
    assert_eq!(common::get(&c, &url, &[]).await.status, 200);
    // A zero-length suffix has no bytes to send: 416, not a 206 of `bytes 265-264/265`.
    let empty = common::get(&c, &url, &[("range", "bytes=-0")]).await;
    assert_eq!(empty.status, 416, "{:?}", empty.headers);
    assert_eq!(empty.header("content-range"), "bytes */265");
    let tail = common::get(&c, &url, &[("range", "bytes=-5")]).await;
    assert_eq!((tail.status, tail.body.as_str()), (206, "xxxxx"));
    // `If-None-Match: *` matches the stored representation: 304.
    let star = common::get(&c, &url, &[("if-none-match", "*")]).await;
    assert_eq!(star.status, 304);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn origin_failures_get_crossfade_pages_that_close_the_connection() {
    // Garbage for `/…/broken`, silence for `/…/silent` (the origin holds the connection).
    let addr = raw_origin(|path| {
        path.ends_with("/broken")
            .then(|| b"NOT HTTP AT ALL\r\n\r\n".to_vec())
    })
    .await;
    let extra = "[origin]\nread_timeout = \"1s\"\n";
    let proxy = Proxy::single_addr(addr, RULES, extra).await;
    for (path, cookie, status, detail) in [
        (
            "/account/broken",
            "Cookie: session=1\r\n",
            502,
            "bad-gateway",
        ),
        ("/page/broken", "", 502, "bad-gateway"),
        (
            "/account/silent",
            "Cookie: session=1\r\n",
            504,
            "gateway-timeout",
        ),
        ("/page/silent", "", 504, "gateway-timeout"),
    ] {
        let mut sock = connect(proxy.addr).await;
        sock.write_all(get(path, cookie).as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut raw))
            .await
            .expect("the connection is closed after the answer")
            .unwrap();
        let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        assert!(
            text.starts_with(&format!("http/1.1 {status} ")),
            "{path}: {text}"
        );
        assert!(
            text.contains(&format!("cache-status: crossfade; detail={detail}\r\n")),
            "{path}: {text}"
        );
        assert!(text.contains("connection: close\r\n"), "{path}: {text}");
        assert!(!text.contains("server: pingora"), "{path}: {text}");
        assert!(text.contains("crossfade: the origin"), "{path}: {text}");
    }
}

/// A stored variant is served to the visitors it is for even after another variant of the
/// same page turned out private. The private answer makes pingora's predictor remember the
/// primary key as uncacheable; pingora's path asked it before looking in the cache, so the
/// stored USD page went to the origin again there while the fast transport served it.
#[tokio::test]
async fn a_private_variant_does_not_hide_a_stored_one() {
    let origin = Origin::start(|seen| async move {
        let cookie = seen.header("cookie").unwrap_or("").to_string();
        let cc = if cookie == "currency=USD" {
            "public, max-age=60"
        } else {
            "private"
        };
        reply(200, &[("cache-control", cc)], format!("cookie={cookie}"))
    })
    .await;
    let rules = "[defaults]\nkey_cookies = [\"currency\"]\n";
    let proxy = Proxy::single(&origin, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let url = proxy.url("/price");
    let usd = [("cookie", "currency=USD")];
    let first = common::get(&c, &url, &usd).await;
    assert!(!first.is_hit(), "{}", first.cache());
    assert!(common::get(&c, &url, &usd).await.is_hit());
    for _ in 0..2 {
        let gbp = common::get(&c, &url, &[("cookie", "currency=GBP")]).await;
        assert_eq!(gbp.body, "cookie=currency=GBP");
        assert!(!gbp.is_hit(), "{}", gbp.cache());
    }
    let asked = origin.hits();
    let again = common::get(&c, &url, &usd).await;
    assert_eq!(again.body, "cookie=currency=USD");
    assert!(again.is_hit(), "the stored USD page: {}", again.cache());
    assert_eq!(
        origin.hits(),
        asked,
        "a fresh stored page is not fetched again"
    );
}

/// The origin read timer of a kept-alive client connection is kept from one pass to the next
/// (the fast transport resets it): passes answered in time on the connection, an idle gap
/// longer than the limit, then a pass the origin never answers gets its 504 after the limit,
/// neither at once nor never.
#[tokio::test]
async fn a_kept_alive_connection_times_its_later_passes_as_its_first() {
    let addr = raw_origin(|path| {
        path.ends_with("/ok")
            .then(|| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let extra = "[origin]\nread_timeout = \"1s\"\n";
    let proxy = Proxy::single_addr(addr, RULES, extra).await;
    let mut sock = connect(proxy.addr).await;
    let cookie = "Cookie: session=1\r\n";
    for _ in 0..3 {
        sock.write_all(get("/account/ok", cookie).as_bytes())
            .await
            .unwrap();
        let got = answers(&mut sock, 1, Duration::from_secs(5)).await;
        assert_eq!(got, [(200, "ok".to_string())]);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sock.write_all(get("/account/ok", cookie).as_bytes())
        .await
        .unwrap();
    let got = answers(&mut sock, 1, Duration::from_secs(5)).await;
    assert_eq!(got, [(200, "ok".to_string())], "after an idle gap");
    let asked = Instant::now();
    sock.write_all(get("/account/silent", cookie).as_bytes())
        .await
        .unwrap();
    let got = answers(&mut sock, 1, Duration::from_secs(10)).await;
    let waited = asked.elapsed();
    assert_eq!(got.first().map(|g| g.0), Some(504), "{got:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "answered after {waited:?}"
    );
}

/// Answers written by pingora's path (misses, through its buffered stream) and by the fast
/// transport (hits and passes, sent on the socket itself when nothing waits in that buffer)
/// interleave on one pipelined connection and still arrive whole and in order.
#[tokio::test]
async fn pipelined_misses_hits_and_passes_arrive_in_order() {
    let origin = echo_origin().await;
    let proxy = Proxy::single(&origin, RULES, "").await;
    let mut sock = connect(proxy.addr).await;
    let warm: String = (0..10).map(|i| get(&format!("/h/{i}"), "")).collect();
    sock.write_all(warm.as_bytes()).await.unwrap();
    assert_eq!(
        answers(&mut sock, 10, Duration::from_secs(10)).await.len(),
        10
    );
    let mut all = String::new();
    let mut want = Vec::new();
    for i in 0..60 {
        let (path, extra) = match i % 3 {
            0 => (format!("/m/{i}"), ""),
            1 => (format!("/h/{}", i % 10), ""),
            _ => (format!("/account/{i}"), "Cookie: session=1\r\n"),
        };
        want.push(format!("path={path} host=www.shop.test"));
        all.push_str(&get(&path, extra));
    }
    sock.write_all(all.as_bytes()).await.unwrap();
    let got = answers(&mut sock, 60, Duration::from_secs(20)).await;
    let bodies: Vec<&str> = got.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, want);
}
