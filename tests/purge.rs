//! Purges on one node: by URL (every variant), prefix, surrogate key, everything; soft and
//! hard; the admin API's auth and bad input; RFC 9111 §4.4 invalidation; the PURGE method;
//! the CLI.

mod common;
use common::*;
use http::Method;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An origin whose body names the path and a version that goes up with every request; tags
/// each response `tag-<first path segment>` and `all`.
async fn counting_origin(cache_control: &'static str) -> Origin {
    let n = Arc::new(AtomicUsize::new(0));
    Origin::start(move |seen| {
        let v = n.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let path = seen.uri.path().to_string();
            let first = path
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or("")
                .to_string();
            let enc = seen.header("accept-encoding").unwrap_or("-").to_string();
            let tags = format!("tag-{first} all");
            reply(
                200,
                &[
                    ("cache-control", cache_control),
                    ("vary", "accept-encoding"),
                    ("surrogate-key", &tags),
                ],
                format!("{path} v{v} {enc}"),
            )
        }
    })
    .await
}

fn removed(report: &serde_json::Value) -> u64 {
    report["nodes"][0]["removed"].as_u64().unwrap()
}

#[tokio::test]
async fn purge_by_url_removes_every_variant() {
    let origin = counting_origin("max-age=600").await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let url = proxy.url("/track/1?b=2&a=1");
    for enc in ["gzip", "br"] {
        get(&c, &url, &[("accept-encoding", enc)]).await;
        assert!(get(&c, &url, &[("accept-encoding", enc)]).await.is_hit());
    }
    assert!(send(&c, Method::HEAD, &url, &[("accept-encoding", "br")])
        .await
        .is_hit());
    // The query is normalised like the cache key: a=1&b=2 names the same entry.
    let report = proxy
        .purge(json!({"kind": "url", "url": "http://www.shop.test/track/1?a=1&b=2"}))
        .await;
    assert_eq!(removed(&report), 2, "{report}");
    assert_eq!(report["complete"], true);
    for enc in ["gzip", "br"] {
        let got = get(&c, &url, &[("accept-encoding", enc)]).await;
        assert!(got.cache().contains("fwd=miss"), "{enc}: {}", got.cache());
    }
    assert_eq!(origin.hits(), 4);
}

#[tokio::test]
async fn purge_by_prefix_and_by_surrogate_key() {
    let origin = counting_origin("max-age=600").await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let paths = [
        "/release/1",
        "/release/2?x=1",
        "/releases",
        "/track/1",
        "/track/2",
    ];
    for p in paths {
        get(&c, &proxy.url(p), &[]).await;
    }
    let report = proxy
        .purge(json!({"kind": "prefix", "prefix": "www.shop.test/release/"}))
        .await;
    assert_eq!(removed(&report), 2, "{report}");
    assert!(!get(&c, &proxy.url("/release/1"), &[]).await.is_hit());
    assert!(get(&c, &proxy.url("/releases"), &[]).await.is_hit());

    let report = proxy
        .purge(json!({"kind": "key", "key": "tag-track"}))
        .await;
    assert_eq!(removed(&report), 2, "{report}");
    assert!(!get(&c, &proxy.url("/track/1"), &[]).await.is_hit());
    assert!(get(&c, &proxy.url("/releases"), &[]).await.is_hit());
    // The surrogate key never reaches clients.
    assert_eq!(
        get(&c, &proxy.url("/releases"), &[])
            .await
            .header("surrogate-key"),
        ""
    );

    // Left: /releases, and /release/1 and /track/1 fetched again above.
    let report = proxy
        .purge(json!({"kind": "key", "key": "all", "site": "shop"}))
        .await;
    assert_eq!(removed(&report), 3, "{report}");
}

#[tokio::test]
async fn surrogate_key_index_follows_replaced_objects() {
    // v1 is tagged "old"; after it expires the refetched v2 is tagged "new".
    let n = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start(move |_| {
        let v = n.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let tag = if v == 1 { "old" } else { "new" };
            reply(
                200,
                &[("cache-control", "max-age=1"), ("surrogate-key", tag)],
                format!("v{v}"),
            )
        }
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    assert_eq!(get(&c, &proxy.url("/a"), &[]).await.body, "v1");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Refetched (v2; on a starved CI box once v3, the origin asked twice): tagged "new".
    let refetched = get(&c, &proxy.url("/a"), &[]).await.body;
    assert_ne!(refetched, "v1", "the expired v1 was replaced");
    assert_eq!(
        removed(&proxy.purge(json!({"kind": "key", "key": "old"})).await),
        0
    );
    assert_eq!(
        removed(&proxy.purge(json!({"kind": "key", "key": "new"})).await),
        1
    );
    let (_, status) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/status", "")
        .await;
    assert_eq!(
        status["cache"]["index"]["surrogate_keys"], 0,
        "no stale index entries: {status}"
    );
}

#[tokio::test]
async fn purge_everything_or_one_site_at_once() {
    let origin = counting_origin("max-age=600").await;
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
                hosts: &["b.test"],
                origin: origin.addr,
                rules: HONOR_ALL,
            },
        ],
        "",
    )
    .await;
    let c = proxy.client(&["a.test", "b.test"]);
    for host in ["a.test", "b.test"] {
        for p in ["/1", "/2"] {
            get(&c, &proxy.url_for(host, p), &[]).await;
        }
    }
    let report = proxy.purge(json!({"kind": "all", "site": "a"})).await;
    assert_eq!(removed(&report), 2, "{report}");
    assert!(!get(&c, &proxy.url_for("a.test", "/1"), &[]).await.is_hit());
    assert!(get(&c, &proxy.url_for("b.test", "/1"), &[]).await.is_hit());
    proxy.purge(json!({"kind": "all"})).await;
    assert!(!get(&c, &proxy.url_for("b.test", "/2"), &[]).await.is_hit());
    assert!(
        get(&c, &proxy.url_for("b.test", "/2"), &[]).await.is_hit(),
        "new objects live after a purge"
    );
}

#[tokio::test]
async fn soft_purge_serves_stale_once_and_refreshes_with_one_request() {
    let n = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start(move |_| {
        let v = n.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if v > 1 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            reply(
                200,
                &[
                    ("cache-control", "max-age=600, stale-while-revalidate=60"),
                    ("surrogate-key", "k"),
                ],
                format!("v{v}"),
            )
        }
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let url = proxy.url("/soft");
    assert_eq!(get(&c, &url, &[]).await.body, "v1");
    let report = proxy
        .purge(json!({"kind": "key", "key": "k", "soft": true}))
        .await;
    assert_eq!(report["nodes"][0]["stale"], 1, "{report}");
    let all = futures::future::join_all((0..50).map(|_| get(&c, &url, &[]))).await;
    assert!(
        all.iter().all(|g| g.status == 200 && g.body == "v1"),
        "stale copy served at once"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&c, &url, &[]).await.body == "v2"
        })
        .await
    );
    assert_eq!(origin.hits(), 2, "one background refresh for 50 requests");
}

#[tokio::test]
async fn soft_purge_outside_the_stale_window_refetches() {
    let origin = counting_origin("max-age=600").await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let url = proxy.url("/nostale");
    assert!(get(&c, &url, &[]).await.body.contains("v1"));
    proxy
        .purge(json!({"kind": "url", "url": "www.shop.test/nostale", "soft": true}))
        .await;
    assert!(
        get(&c, &url, &[]).await.body.contains("v2"),
        "no stale window: refetched"
    );
}

#[tokio::test]
async fn admin_api_refuses_bad_requests_and_purges_nothing() {
    let origin = counting_origin("max-age=600").await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    get(&c, &proxy.url("/keep"), &[]).await;
    let good = r#"{"kind":"all"}"#;
    let cases: Vec<(Option<&str>, Method, &str, String, u16)> = vec![
        (None, Method::POST, "/purge", good.into(), 401),
        (
            Some("wrong-token-wrong-token"),
            Method::POST,
            "/purge",
            good.into(),
            401,
        ),
        (Some(READ_TOKEN), Method::POST, "/purge", good.into(), 403),
        (
            Some(PURGE_TOKEN),
            Method::POST,
            "/purge",
            "{not json".into(),
            400,
        ),
        (
            Some(PURGE_TOKEN),
            Method::POST,
            "/purge",
            r#"{"kind":"all","force":true}"#.into(),
            400,
        ),
        (
            Some(PURGE_TOKEN),
            Method::POST,
            "/purge",
            r#"{"kind":"url","url":42}"#.into(),
            400,
        ),
        (
            Some(PURGE_TOKEN),
            Method::POST,
            "/purge",
            r#"{"kind":"url","url":"nowhere.test/x"}"#.into(),
            400,
        ),
        (
            Some(PURGE_TOKEN),
            Method::POST,
            "/purge",
            r#"{"kind":"all","site":"nope"}"#.into(),
            400,
        ),
        (
            Some(PURGE_TOKEN),
            Method::POST,
            "/purge",
            format!(r#"{{"kind":"key","key":"{}"}}"#, "x".repeat(70_000)),
            413,
        ),
        (Some(PURGE_TOKEN), Method::GET, "/purge", String::new(), 405),
        (Some(PURGE_TOKEN), Method::POST, "/nope", String::new(), 404),
    ];
    for (token, method, path, body, expected) in cases {
        let (status, answer) = proxy.admin_call(token, method.clone(), path, &body).await;
        assert_eq!(status, expected, "{method} {path} {:.60}: {answer}", body);
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "a reason: {answer}"
        );
    }
    assert!(
        get(&c, &proxy.url("/keep"), &[]).await.is_hit(),
        "nothing was purged"
    );
    let (status, answer) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/status", "")
        .await;
    assert_eq!(status, 200);
    assert!(answer["cache"]["objects"].as_u64().unwrap() >= 1);
    assert!(
        !proxy.stderr().contains(PURGE_TOKEN) && !proxy.stdout().contains(PURGE_TOKEN),
        "tokens are never logged"
    );
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_target_and_location() {
    let origin = Origin::start(|seen| async move {
        match (seen.method.as_str(), seen.uri.path()) {
            ("GET", p) => reply(200, &[("cache-control", "max-age=600")], format!("get {p}")),
            ("POST", "/fail") => reply(500, &[], "failed"),
            ("POST", _) => reply(
                201,
                &[
                    ("location", "/item/2"),
                    ("content-location", "http://www.shop.test/item/3"),
                ],
                "created",
            ),
            _ => reply(204, &[], ""),
        }
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let warm = |p: &'static str| {
        let (c, url) = (c.clone(), proxy.url(p));
        async move {
            get(&c, &url, &[]).await;
            get(&c, &url, &[]).await.is_hit()
        }
    };
    for p in ["/item/1", "/item/2", "/item/3", "/fail"] {
        assert!(warm(p).await);
    }
    send(&c, Method::POST, &proxy.url("/item/1"), &[]).await;
    for p in ["/item/1", "/item/2", "/item/3"] {
        assert!(
            !get(&c, &proxy.url(p), &[]).await.is_hit(),
            "{p} invalidated"
        );
    }
    for method in [Method::PUT, Method::DELETE, Method::PATCH] {
        assert!(warm("/item/1").await);
        send(&c, method.clone(), &proxy.url("/item/1"), &[]).await;
        assert!(
            !get(&c, &proxy.url("/item/1"), &[]).await.is_hit(),
            "{method} invalidates"
        );
    }
    send(&c, Method::POST, &proxy.url("/fail"), &[]).await;
    assert!(
        get(&c, &proxy.url("/fail"), &[]).await.is_hit(),
        "an error response invalidates nothing"
    );
}

#[tokio::test]
async fn purge_method_is_off_by_default_and_acl_controlled() {
    let origin = counting_origin("max-age=600").await;
    let purge = Method::from_bytes(b"PURGE").unwrap();
    for (extra, expected) in [
        ("", 405),
        ("[proxy]\npurge_from = [\"10.0.0.0/8\"]\n", 403),
        ("[proxy]\npurge_from = [\"127.0.0.1/32\", \"::1\"]\n", 200),
    ] {
        let proxy = Proxy::single(&origin, HONOR_ALL, extra).await;
        let c = proxy.client(&["www.shop.test"]);
        get(&c, &proxy.url("/p"), &[]).await;
        let before = origin.hits();
        let got = send(&c, purge.clone(), &proxy.url("/p"), &[]).await;
        assert_eq!(got.status, expected, "{extra}: {}", got.body);
        assert_eq!(origin.hits(), before, "PURGE is never forwarded");
        assert_eq!(
            get(&c, &proxy.url("/p"), &[]).await.is_hit(),
            expected != 200,
            "{extra}"
        );
    }
}

#[tokio::test]
async fn cli_purge_prints_the_report_and_fails_on_errors() {
    let origin = counting_origin("max-age=600").await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    get(&c, &proxy.url("/track/9"), &[]).await;
    let admin = proxy.admin.to_string();
    let run = |token: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_crossfade"))
            .arg("purge")
            .args(args)
            .args([
                "--admin",
                &admin,
                "--token",
                token,
                "--config",
                "/nonexistent.toml",
            ])
            .output()
            .unwrap()
    };
    // For people: one line, what was purged, each node's count, complete or not.
    let out = run(PURGE_TOKEN, &["key", "tag-track"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("purged key tag-track (hard): ")
            && text.ends_with(" 1 removed; complete\n")
            && text.lines().count() == 1,
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).is_empty());
    // For scripts: the API's report as it is.
    get(&c, &proxy.url("/track/9"), &[]).await;
    let out = run(PURGE_TOKEN, &["key", "tag-track", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(removed(&report), 1);
    // A purge that matches nothing (a typo) succeeds, with a warning on stderr.
    let typo = run(PURGE_TOKEN, &["key", "tag-trakc"]);
    assert!(typo.status.success());
    let warning = String::from_utf8_lossy(&typo.stderr);
    assert!(warning.contains("matched no cached object"), "{warning}");
    let refused = run(READ_TOKEN, &["all"]);
    assert_eq!(refused.status.code(), Some(1), "a 403 fails the command");
    assert!(refused.stdout.is_empty(), "errors are not output");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.starts_with("crossfade: ") && stderr.trim_end().ends_with("(HTTP 403)"),
        "{stderr}"
    );
    assert!(!run(PURGE_TOKEN, &["url", "nowhere.test/x"])
        .status
        .success());
}

#[tokio::test]
async fn surrogate_key_index_stays_true_under_eviction() {
    let origin = Origin::start(|_| async {
        reply(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("surrogate-key", "shared"),
            ],
            vec![b'x'; 16 * 1024],
        )
    })
    .await;
    let proxy = Proxy::single(
        &origin,
        HONOR_ALL,
        "[cache]\ncapacity = \"512KiB\"\nmax_object_size = \"64KiB\"\n",
    )
    .await;
    let c = proxy.client(&["www.shop.test"]);
    // 200 objects of 16 KiB, each asked twice: far more than fits.
    for i in 0..200 {
        for _ in 0..2 {
            get(&c, &proxy.url(&format!("/o/{i}")), &[]).await;
        }
    }
    let (_, s) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/status", "")
        .await;
    let objects = s["cache"]["objects"].as_u64().unwrap();
    assert!(objects > 0 && objects < 200, "{s}");
    assert_eq!(
        s["cache"]["index"]["urls"], objects,
        "one index entry per stored object: {s}"
    );
    assert_eq!(s["cache"]["index"]["tag_memberships"], objects, "{s}");
    let report = proxy.purge(json!({"kind": "key", "key": "shared"})).await;
    assert_eq!(removed(&report), objects, "{report}");
    let (_, s) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/status", "")
        .await;
    assert_eq!(s["cache"]["index"]["tag_memberships"], 0, "{s}");
}

#[tokio::test]
async fn every_purge_kind_can_be_soft() {
    // Objects with a stale-while-revalidate window: after a soft purge the next request gets
    // the stale copy at once (and one refresh goes to the origin).
    let origin = counting_origin("max-age=600, stale-while-revalidate=60").await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let cases = [
        (
            "/u/1",
            json!({"kind": "url", "url": "www.shop.test/u/1", "soft": true}),
        ),
        (
            "/p/1",
            json!({"kind": "prefix", "prefix": "www.shop.test/p/", "soft": true}),
        ),
        ("/k/1", json!({"kind": "key", "key": "tag-k", "soft": true})),
        ("/a/1", json!({"kind": "all", "site": "shop", "soft": true})),
    ];
    for (path, purge) in cases {
        let url = proxy.url(path);
        let first = get(&c, &url, &[]).await.body;
        assert!(get(&c, &url, &[]).await.is_hit());
        let report = proxy.purge(purge.clone()).await;
        assert!(
            report["nodes"][0]["stale"].as_u64().unwrap() >= 1,
            "{report}"
        );
        assert_eq!(report["nodes"][0]["removed"], 0, "{report}");
        let stale = get(&c, &url, &[]).await;
        assert_eq!(stale.body, first, "{purge}: the stale copy is served");
        assert!(
            stale.cache().contains("stale-while-revalidate"),
            "{purge}: {}",
            stale.cache()
        );
        let refreshed = eventually(Duration::from_secs(5), || async {
            get(&c, &url, &[]).await.body != first
        })
        .await;
        assert!(refreshed, "{purge}: refreshed in the background");
    }
}
