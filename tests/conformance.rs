//! RFC 9111 / RFC 9110 conformance where the rules say nothing (issue 19), as exchanges: a
//! scripted origin, a client sequence, and what reaches the client and the origin.

mod common;
use common::*;
use http::Method;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    let (addr, _, count) = scripted_origin(|_, _| {
        Some(
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nCache-Control: max-age=60\r\n\
             Connection: X-Secret, keep-alive\r\nX-Secret: s3cr3t\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\nTrailer: X-Checksum\r\nUpgrade: h2c\r\n\
             TE: trailers\r\nX-Kept: yes\r\n\r\nbody"
                .into(),
        )
    })
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

/// A raw origin: each request is answered with the exact bytes `answer(mode, path)` gives
/// (`None`: the connection is closed unanswered); `mode` is the test's to change; requests
/// are counted.
async fn scripted_origin(
    answer: fn(usize, &str) -> Option<String>,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (mode, count) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (m, seen) = (mode.clone(), count.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let (m, seen) = (m.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                        seen.fetch_add(1, Ordering::SeqCst);
                        let Some(text) = answer(m.load(Ordering::SeqCst), &path) else {
                            return;
                        };
                        if sock.write_all(text.as_bytes()).await.is_err() {
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
    (addr, mode, count)
}

#[tokio::test]
async fn a_stale_copy_answers_an_origin_failure_unless_the_response_forbids_it() {
    // Mode 0: pages, fresh for a second; 1: every connection closed unanswered; 2: 500s.
    let (addr, mode, _) = scripted_origin(|mode, path| {
        let cc = match path.rsplit('/').next().unwrap_or("") {
            "allowed" => "max-age=1",
            "origin-allows" => "max-age=1, stale-if-error=60",
            "no-exception" => "max-age=1, must-revalidate, stale-if-error=60",
            "must-revalidate" => "max-age=1, must-revalidate",
            "proxy-revalidate" => "max-age=1, proxy-revalidate",
            _ => "max-age=1, s-maxage=1",
        };
        match mode {
            0 => Some(format!(
                "HTTP/1.1 200 OK\r\nCache-Control: {cc}\r\nContent-Length: 4\r\n\r\npage"
            )),
            1 => None,
            _ => Some("HTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\noops!".into()),
        }
    })
    .await;
    // The rules allow stale copies for errors (`stale_if_error`) where a response does not
    // forbid it.
    let rules = "[defaults]\nstale_if_error = \"1h\"\n";
    let proxy = Proxy::single_addr(addr, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let names = [
        "allowed",
        "origin-allows",
        "no-exception",
        "must-revalidate",
        "proxy-revalidate",
        "s-maxage",
    ];
    for failure in [1, 2] {
        mode.store(0, Ordering::SeqCst);
        for name in names {
            let path = format!("/{failure}/{name}");
            assert_eq!(get(&c, &proxy.url(&path), &[]).await.status, 200);
        }
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        mode.store(failure, Ordering::SeqCst);
        for name in names {
            let path = format!("/{failure}/{name}");
            let got = get(&c, &proxy.url(&path), &[]).await;
            let stale = got.status == 200 && got.cache().contains("stale-if-error");
            let allowed = matches!(name, "allowed" | "origin-allows");
            assert_eq!(
                stale,
                allowed,
                "{path}: {} {} {}",
                got.status,
                got.cache(),
                got.body
            );
        }
    }
}

#[tokio::test]
async fn a_hit_says_the_corrected_age_and_a_bad_age_makes_a_response_stale() {
    let origin = Origin::start(|seen| async move {
        let age = match seen.uri.path() {
            "/aged" => "30",
            "/list" => "7200, 0",
            _ => "not-a-number",
        };
        reply(
            200,
            &[("cache-control", "max-age=3600"), ("age", age)],
            "page",
        )
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for path in ["/aged", "/list", "/bad"] {
        get(&c, &proxy.url(path), &[]).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let aged = get(&c, &proxy.url("/aged"), &[]).await;
    assert!(aged.is_hit(), "{}", aged.cache());
    let age: u64 = aged.header("age").parse().unwrap();
    assert!(
        (31..40).contains(&age),
        "Age {age}: the origin's 30 s plus the time stored here"
    );
    for path in ["/list", "/bad"] {
        let before = origin.hits();
        let got = get(&c, &proxy.url(path), &[]).await;
        assert!(
            !got.is_hit() && origin.hits() == before + 1,
            "{path}: an Age past the lifetime (or not a number) is stale: {}",
            got.cache()
        );
    }
}

#[tokio::test]
async fn targeted_cache_control_gives_the_edge_its_own_policy() {
    let origin = Origin::start(|seen| async move {
        let fields: &[(&str, &str)] = match seen.uri.path() {
            // Browsers must not keep it; the edge may, for a minute.
            "/edge-only" => &[
                ("cache-control", "private, no-store"),
                ("cdn-cache-control", "max-age=60"),
                ("other-cache-control", "max-age=5"),
            ],
            // Browsers may keep it; the edge must not.
            "/browser-only" => &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "no-store"),
            ],
            // The site's own field comes first.
            _ => &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "no-store"),
                ("crossfade-cache-control", "max-age=60"),
            ],
        };
        reply(200, fields, "page")
    })
    .await;
    let rules = "[defaults]\nbypass_cookies = [\"session\"]\n[[routes]]\nname = \"own\"\n\
                 prefix = \"/own\"\ntargeted_cache_control = [\"Crossfade-Cache-Control\", \
                 \"CDN-Cache-Control\"]\n";
    let proxy = Proxy::single(&origin, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for (path, stored) in [
        ("/edge-only", true),
        ("/browser-only", false),
        ("/own", true),
    ] {
        let first = get(&c, &proxy.url(path), &[]).await;
        let second = get(&c, &proxy.url(path), &[]).await;
        let pass = get(&c, &proxy.url(path), &[("cookie", "session=1")]).await;
        assert_eq!(second.is_hit(), stored, "{path}: {}", second.cache());
        for got in [&first, &second, &pass] {
            assert_eq!(got.body, "page");
            for name in ["cdn-cache-control", "crossfade-cache-control"] {
                assert!(
                    got.headers.get(name).is_none(),
                    "{path}: {name} reached the client"
                );
            }
        }
        if path == "/edge-only" {
            assert_eq!(second.header("cache-control"), "private, no-store");
            assert_eq!(second.header("other-cache-control"), "max-age=5");
        }
    }
}

#[tokio::test]
async fn a_no_cache_response_is_stored_and_revalidated_on_every_use() {
    let origin = Origin::start(|seen| async move {
        let fields = [("cache-control", "no-cache"), ("etag", "\"v1\"")];
        match seen.header("if-none-match") {
            Some("\"v1\"") => reply(304, &fields, ""),
            _ => reply(200, &fields, "rendered page"),
        }
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let first = get(&c, &proxy.url("/nc"), &[]).await;
    assert_eq!(first.body, "rendered page");
    for _ in 0..2 {
        let before = origin.hits();
        let again = get(&c, &proxy.url("/nc"), &[]).await;
        assert_eq!((again.status, again.body.as_str()), (200, "rendered page"));
        assert_eq!(origin.hits(), before + 1, "every use is revalidated");
        assert_eq!(
            origin.last().header("if-none-match"),
            Some("\"v1\""),
            "with the stored validator: {}",
            again.cache()
        );
    }
}

#[tokio::test]
async fn variants_that_arrive_aged_are_still_hits() {
    // Behind another cache every answer carries an Age; each variant must still be kept (an
    // aged variant looked older than its primary slot and was refetched every time).
    let origin = Origin::start(|seen| async move {
        let lang = seen.header("accept-language").unwrap_or("-").to_string();
        let fields = [
            ("cache-control", "max-age=3600"),
            ("vary", "Accept-Language"),
            ("age", "100"),
        ];
        reply(200, &fields, format!("page in {lang}"))
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for lang in ["en", "de", "fr"] {
        get(&c, &proxy.url("/v"), &[("accept-language", lang)]).await;
    }
    for lang in ["en", "de", "fr"] {
        let got = get(&c, &proxy.url("/v"), &[("accept-language", lang)]).await;
        assert_eq!(got.body, format!("page in {lang}"));
        assert!(got.is_hit(), "{lang}: {}", got.cache());
        let age: u64 = got.header("age").parse().unwrap();
        assert!(age >= 100, "{lang}: Age {age}");
    }
}

#[tokio::test]
async fn a_hit_keeps_the_stored_date_and_a_response_without_one_gets_it_once() {
    const ORIGIN_DATE: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    let (addr, _, count) = scripted_origin(|_, path| {
        let date = if path == "/dated" {
            format!("Date: {ORIGIN_DATE}\r\n")
        } else {
            String::new()
        };
        Some(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nCache-Control: max-age=60\r\n{date}\r\npage"
        ))
    })
    .await;
    let proxy = Proxy::single_addr(addr, HONOR_ALL, "").await;
    for c in [
        proxy.client(&["www.shop.test"]),
        proxy.h2_client(&["www.shop.test"]),
    ] {
        let miss = get(&c, &proxy.url("/dated"), &[]).await;
        let hit = get(&c, &proxy.url("/dated"), &[]).await;
        let pass = get(&c, &proxy.url("/dated"), &[("cookie", "session=1")]).await;
        assert!(hit.is_hit(), "{}", hit.cache());
        for (what, got) in [("miss", &miss), ("hit", &hit), ("pass", &pass)] {
            assert_eq!(got.header("date"), ORIGIN_DATE, "{what}: the origin's Date");
        }
    }
    let c = proxy.client(&["www.shop.test"]);
    let miss = get(&c, &proxy.url("/undated"), &[]).await;
    let stamped = miss.header("date").to_string();
    assert!(httpdate::parse_http_date(&stamped).is_ok(), "{stamped:?}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for c in [c, proxy.h2_client(&["www.shop.test"])] {
        let hit = get(&c, &proxy.url("/undated"), &[]).await;
        assert!(hit.is_hit(), "{}", hit.cache());
        assert_eq!(
            hit.header("date"),
            stamped,
            "the Date given when it was stored"
        );
        assert!(hit.header("age").parse::<u64>().unwrap() >= 1);
    }
    assert_eq!(count.load(Ordering::SeqCst), 4);
}
