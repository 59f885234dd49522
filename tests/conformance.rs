//! RFC 9111 / RFC 9110 conformance where the rules say nothing (issue 19), as exchanges: a
//! scripted origin, a client sequence, and what reaches the client and the origin.

mod common;
use common::*;
use http::Method;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw origin answering every request with `answer` (exact bytes), counting requests.
async fn raw_origin(answer: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        seen.fetch_add(1, Ordering::SeqCst);
                        if sock.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match sock.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    (addr, count)
}

/// RFC 9110 §7.6.1: fields about the origin's connection, and those its `Connection` lists.
const HOP_BY_HOP: [&str; 6] = [
    "x-secret",
    "keep-alive",
    "proxy-connection",
    "trailer",
    "upgrade",
    "te",
];

#[tokio::test]
async fn connection_listed_fields_are_neither_forwarded_nor_stored() {
    let (addr, count) = raw_origin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nCache-Control: max-age=60\r\n\
          Connection: X-Secret, keep-alive\r\nX-Secret: s3cr3t\r\nKeep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\nTrailer: X-Checksum\r\nUpgrade: h2c\r\nTE: trailers\r\n\
          X-Kept: yes\r\n\r\nbody",
    )
    .await;
    let rules = "[defaults]\nbypass_cookies = [\"session\"]\n";
    let proxy = Proxy::single_addr(addr, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let miss = get(&c, &proxy.url("/page"), &[]).await;
    let hit = get(&c, &proxy.url("/page"), &[]).await;
    let pass = get(&c, &proxy.url("/page"), &[("cookie", "session=1")]).await;
    assert!(hit.is_hit(), "{}", hit.cache());
    assert_eq!(count.load(Ordering::SeqCst), 2);
    for (what, got) in [("miss", &miss), ("hit", &hit), ("pass", &pass)] {
        assert_eq!((got.status, got.body.as_str()), (200, "body"), "{what}");
        assert_eq!(got.header("x-kept"), "yes", "{what}");
        for name in HOP_BY_HOP {
            assert!(
                got.headers.get(name).is_none(),
                "{what}: {name} reached the client: {:?}",
                got.headers
            );
        }
    }
}

#[tokio::test]
async fn an_unknown_unsafe_method_invalidates_what_it_targets() {
    let origin = Origin::start(|seen| async move {
        match seen.method.as_str() {
            "GET" => reply(200, &[("cache-control", "max-age=60")], "page"),
            _ => reply(200, &[], "done"),
        }
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for method in ["M-SEARCH", "FOO"] {
        let path = format!("/inv/{method}");
        get(&c, &proxy.url(&path), &[]).await;
        assert!(get(&c, &proxy.url(&path), &[]).await.is_hit());
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let done = send(&c, m, &proxy.url(&path), &[]).await;
        assert_eq!((done.status, done.body.as_str()), (200, "done"));
        let after = get(&c, &proxy.url(&path), &[]).await;
        assert!(
            !after.is_hit(),
            "after {method} answered 200 the next GET reaches the origin: {}",
            after.cache()
        );
    }
}
