//! Purges that race what the cache is doing (issue 20, items 5 and 6): a purge made while the
//! origin is still answering covers what that answer stores, and the counts a purge report or
//! `/status` gives right after a purge of everything are of live objects only.

mod common;
use common::*;
use http::Method;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn removed_here(report: &serde_json::Value) -> u64 {
    report["nodes"][0]["removed"].as_u64().unwrap() + report["nodes"][0]["stale"].as_u64().unwrap()
}

#[tokio::test]
async fn a_purge_while_the_origin_answers_covers_what_that_answer_stores() {
    let renders = Arc::new(AtomicUsize::new(0));
    let seen = renders.clone();
    let origin = Origin::start(move |req| {
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let tag = format!("race-{}", req.uri.path().trim_start_matches("/slow/"));
            reply(
                200,
                &[("cache-control", "max-age=600"), ("surrogate-key", &tag)],
                format!("render {n}"),
            )
        }
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let cases = [
        (
            "url-hard",
            json!({"kind": "url", "url": "www.shop.test/slow/url-hard"}),
        ),
        (
            "url-soft",
            json!({"kind": "url", "url": "www.shop.test/slow/url-soft", "soft": true}),
        ),
        ("key-hard", json!({"kind": "key", "key": "race-key-hard"})),
        (
            "prefix-soft",
            json!({"kind": "prefix", "prefix": "www.shop.test/slow/prefix", "soft": true}),
        ),
        ("all-hard", json!({"kind": "all"})),
        ("all-soft", json!({"kind": "all", "soft": true})),
    ];
    for (case, purge) in cases {
        let url = proxy.url(&format!("/slow/{case}"));
        let first = tokio::spawn({
            let (c, url) = (c.clone(), url.clone());
            async move { get(&c, &url, &[]).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let report = proxy.purge(purge).await;
        if !case.starts_with("all") {
            assert_eq!(
                removed_here(&report),
                0,
                "{case}: nothing stored yet: {report}"
            );
        }
        let first = first.await.unwrap();
        assert_eq!(first.status, 200, "{case}");
        let before = renders.load(Ordering::SeqCst);
        let next = get(&c, &url, &[]).await;
        assert!(
            !next.is_hit() && renders.load(Ordering::SeqCst) == before + 1,
            "{case}: the answer asked for before the purge was served after it as fresh: {} ({})",
            next.body,
            next.cache()
        );
        assert_ne!(next.body, first.body, "{case}");
    }
}

#[tokio::test]
async fn counts_right_after_a_purge_of_everything_are_of_live_objects_only() {
    let origin = Origin::start(|_| async {
        reply(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("surrogate-key", "all-of-them"),
            ],
            "x",
        )
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for i in 0..300 {
        get(&c, &proxy.url(&format!("/o/{i}")), &[]).await;
    }
    let all = proxy.purge(json!({"kind": "all"})).await;
    assert_eq!(removed_here(&all), 300, "{all}");
    let key = proxy
        .purge(json!({"kind": "key", "key": "all-of-them"}))
        .await;
    assert_eq!(
        removed_here(&key),
        0,
        "already gone with the purge of everything: {key}"
    );
    let status = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/status", "")
        .await
        .1;
    assert_eq!(status["cache"]["objects"], 0, "{status}");
    get(&c, &proxy.url("/o/new"), &[]).await;
    let key = proxy
        .purge(json!({"kind": "key", "key": "all-of-them"}))
        .await;
    assert_eq!(removed_here(&key), 1, "{key}");
}
