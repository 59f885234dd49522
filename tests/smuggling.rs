//! Request smuggling: messages whose framing two servers could read differently are refused
//! with 400 and the connection closed; nothing after them reaches the origin.

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `bytes`, reads until the proxy closes (or 5 s); (first status, closed, all text).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (u16, bool, String) {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf))
        .await
        .is_ok();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, closed, text)
}

/// The paths the origin was asked for, in order.
fn seen_paths(origin: &Origin) -> Vec<String> {
    origin
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.path().to_string())
        .collect()
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: www.shop.test\r\n\r\n";

#[tokio::test]
async fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let origin = Origin::start(|_| async { reply(200, &[], "ok") }).await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let head = "POST /form HTTP/1.1\r\nHost: www.shop.test\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!("{head}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE.CL",
            format!("{head}Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "two lengths",
            format!("{head}Content-Length: 0\r\nContent-Length: 47\r\n\r\n{SMUGGLED}"),
        ),
        (
            "length list",
            format!("{head}Content-Length: 0, 47\r\n\r\n{SMUGGLED}"),
        ),
        (
            "obfuscated TE",
            format!("{head}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE not last",
            format!("{head}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "two TE lines",
            format!("{head}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "space before colon",
            format!("{head}Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "bad chunk size",
            format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "bare LF in chunk line",
            format!("{head}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "negative length",
            format!("{head}Content-Length: -1\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE on HTTP/1.0",
            format!("POST /form HTTP/1.0\r\nHost: www.shop.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
    ];
    for (name, bytes) in cases {
        let (status, closed, text) = exchange(proxy.addr, bytes.as_bytes()).await;
        assert_eq!(status, 400, "{name}: {text}");
        assert!(closed, "{name}: the connection stays open");
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{name}: one answer only: {text}"
        );
    }
    // Broken chunks are found while the body streams, after the head went to the origin
    // (whose connection is then dropped); the framing conflicts are refused before that.
    let seen = seen_paths(&origin);
    assert!(
        !seen.iter().any(|p| p == "/smuggled"),
        "nothing after an ambiguous message reaches the origin: {seen:?}"
    );
    assert!(seen.len() <= 2, "only the broken-chunk heads: {seen:?}");

    // A well-framed chunked request still works, and keeps its connection.
    let good = format!("{head}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let mut sock = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    sock.write_all(good.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn oversized_requests_get_414_431_413_and_nothing_reaches_the_origin() {
    let origin = Origin::start(|_| async { reply(200, &[], "ok") }).await;
    let rules = r#"
[defaults]
bypass_cookies = ["session"]
max_body = "1KiB"

[[routes]]
name = "upload"
prefix = "/upload"
max_body = "64KiB"
"#;
    let extra = "[proxy]\nmax_uri = \"1KiB\"\nmax_header_bytes = \"4KiB\"\nmax_headers = 20\n";
    let proxy = Proxy::single(&origin, rules, extra).await;
    let host = "Host: www.shop.test\r\n";
    let long_path = format!("/{}", "a".repeat(1100));
    let many: String = (0..25).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "b".repeat(5000));
    let cases = [
        ("long target", format!("GET {long_path} HTTP/1.1\r\n{host}\r\n"), 414),
        ("many headers", format!("GET / HTTP/1.1\r\n{host}{many}\r\n"), 431),
        ("big header", format!("GET / HTTP/1.1\r\n{host}{big}\r\n"), 431),
        (
            "declared body",
            format!("POST /form HTTP/1.1\r\n{host}Content-Length: 2000\r\n\r\n"),
            413,
        ),
        (
            "chunked body",
            format!(
                "POST /form HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
                "c".repeat(0x800)
            ),
            413,
        ),
    ];
    for (name, bytes, want) in cases {
        let (status, closed, text) = exchange(proxy.addr, bytes.as_bytes()).await;
        assert_eq!(status, want, "{name}: {text}");
        assert!(closed, "{name}");
    }
    let seen = seen_paths(&origin);
    // The chunked body goes out while it is counted; everything else stops at the edge.
    assert!(
        seen.iter().all(|p| p == "/form") && seen.len() <= 1,
        "{seen:?}"
    );

    // Within the limits, and a route with its own larger limit.
    let c = proxy.client(&["www.shop.test"]);
    let r = c
        .post(proxy.url("/upload/mix"))
        .body(vec![b'm'; 32 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(proxy.url("/form"))
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_stalled_body_times_out_without_holding_up_others() {
    // An origin that waits for whole request bodies (like PHP) before it answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let want = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= want {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                        got.clear();
                    }
                }
            });
        }
    });
    let proxy = Proxy::single_addr(addr, HONOR_ALL, "[proxy]\nbody_timeout = \"1s\"\n").await;
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(
        b"POST /form HTTP/1.1\r\nHost: www.shop.test\r\nContent-Length: 100\r\n\r\nhalf",
    )
    .await
    .unwrap();
    // Meanwhile other visitors are served.
    let c = proxy.client(&["www.shop.test"]);
    for _ in 0..5 {
        assert_eq!(get(&c, &proxy.url("/page"), &[]).await.status, 200);
    }
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf))
        .await
        .is_ok();
    let text = String::from_utf8_lossy(&buf);
    assert!(closed, "the stalled connection is closed");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn one_client_cannot_hold_more_than_its_share_of_connections() {
    let origin = Origin::start(|_| async { reply(200, &[], "ok") }).await;
    let extra = "[proxy]\nmax_connections_per_client = 3\n";
    let proxy = Proxy::single(&origin, HONOR_ALL, extra).await;
    // A slowloris: three connections that send half a request head and stall.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: www.sh")
            .await
            .unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fourth from the same address is closed before anything is read.
    let (status, closed, text) =
        exchange(proxy.addr, b"GET / HTTP/1.1\r\nHost: www.shop.test\r\n\r\n").await;
    assert_eq!((status, closed), (0, true), "{text}");
    let (_, metrics) = proxy
        .admin_call(Some(READ_TOKEN), http::Method::GET, "/metrics", "")
        .await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("crossfade_connections_refused_total{limit=\"per_client\"} 1"),
        "{metrics}"
    );
    // Once the stalled ones go, the client is served again.
    drop(stalled);
    let c = proxy.client(&["www.shop.test"]);
    let served = eventually(Duration::from_secs(5), || async {
        c.get(proxy.url("/"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(served);
}

/// Sends `head` a byte every 200 ms on `sock` until the proxy answers or closes; the answer and
/// how long it took from the first byte.
async fn trickle(sock: &mut tokio::net::TcpStream, head: &[u8]) -> (String, Duration) {
    let started = std::time::Instant::now();
    for b in head.iter().cycle() {
        if sock.write_all(&[*b]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => return (String::from_utf8_lossy(&buf[..n]).into(), started.elapsed()),
            Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never cut off");
    }
    (String::new(), started.elapsed())
}

#[tokio::test]
async fn a_trickled_request_head_is_cut_off_at_the_header_timeout() {
    let origin = Origin::start(|_| async { reply(200, &[], "ok") }).await;
    let extra = "[proxy]\nheader_timeout = \"2s\"\nkeepalive_timeout = \"4s\"\n";
    let proxy = Proxy::single(&origin, HONOR_ALL, extra).await;
    // Each byte comes well within pingora's per-read timeout; the head as a whole does not.
    let head = b"GET /slow HTTP/1.1\r\nHost: www.shop.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa";
    let mut first = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let slow = tokio::spawn(async move { trickle(&mut first, head).await });
    // Meanwhile other visitors are served.
    let c = proxy.client(&["www.shop.test"]);
    for _ in 0..5 {
        assert_eq!(get(&c, &proxy.url("/page"), &[]).await.status, 200);
    }
    let (answer, took) = slow.await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "{answer:?} after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // A complete head shorter than the h2c preface is answered (pingora's peek alone would
    // wait for the rest of a preface that never comes).
    // HTTP/1.0 without keep-alive: closed once answered.
    let asked = std::time::Instant::now();
    let (status, closed, text) = exchange(proxy.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(status == 421 && closed, "{text}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );

    // On a kept-alive connection the clock starts again with the next request's first byte:
    // idle time before it does not count, trickling it does.
    let mut kept = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    for sock in [&mut kept, &mut idle] {
        sock.write_all(b"GET /page HTTP/1.1\r\nHost: www.shop.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = sock.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    let idle_since = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (answer, took) = trickle(&mut kept, head).await;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "{answer:?} after {took:?}"
    );
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(seen_paths(&origin).iter().all(|p| p != "/slow"));
    // A connection left idle is closed, silently, after the keep-alive timeout.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok() && buf.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    let idle_for = idle_since.elapsed();
    assert!(idle_for >= Duration::from_millis(3500), "{idle_for:?}");
}
