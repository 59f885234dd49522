//! Freshness over time: stale-while-revalidate, stale-if-error (origin 5xx, timeout, down),
//! errors passing through without it, and revalidation with validators (304).

mod common;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An origin whose response carries a version number that goes up with each request, and
/// which can be switched to fail (503) or hang.
struct Versioned {
    origin: Origin,
    mode: Arc<AtomicUsize>,
}

const OK: usize = 0;
const FAIL: usize = 1;
const HANG: usize = 2;

async fn versioned(cache_control: &'static str) -> Versioned {
    let mode = Arc::new(AtomicUsize::new(OK));
    let version = Arc::new(AtomicUsize::new(0));
    let m = mode.clone();
    let origin = Origin::start(move |_| {
        let (mode, v) = (
            m.load(Ordering::SeqCst),
            version.fetch_add(1, Ordering::SeqCst) + 1,
        );
        async move {
            match mode {
                FAIL => reply(503, &[], "origin broken"),
                HANG => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    reply(200, &[("cache-control", cache_control)], "too late")
                }
                _ => reply(200, &[("cache-control", cache_control)], format!("v{v}")),
            }
        }
    })
    .await;
    Versioned { origin, mode }
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_at_once_and_refreshes_once() {
    // The refresh takes a second, so stale answers that arrive before it ends were not
    // waiting for the origin.
    let version = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start(move |_| {
        let v = version.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if v > 1 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            reply(
                200,
                &[("cache-control", "max-age=1, stale-while-revalidate=30")],
                format!("v{v}"),
            )
        }
    })
    .await;
    let o = Versioned {
        origin,
        mode: Arc::new(AtomicUsize::new(OK)),
    };
    let proxy = Proxy::single(&o.origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    assert_eq!(get(&c, &proxy.url("/p"), &[]).await.body, "v1");
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let url = proxy.url("/p");
    let started = std::time::Instant::now();
    let stale = futures::future::join_all((0..10).map(|_| get(&c, &url, &[]))).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stale answers did not wait for the refresh"
    );
    for got in &stale {
        assert_eq!(got.body, "v1", "stale copy served at once");
        assert!(
            got.cache().contains("stale-while-revalidate"),
            "{}",
            got.cache()
        );
    }
    let refreshed = eventually(Duration::from_secs(5), || async {
        get(&c, &proxy.url("/p"), &[]).await.body == "v2"
    })
    .await;
    assert!(refreshed, "the background refresh stored v2");
    assert_eq!(
        o.origin.hits(),
        2,
        "one background request refreshed the object"
    );
}

async fn stale_if_error_case(failure: usize, extra: &str) {
    let o = versioned("max-age=1").await;
    let rules = r#"
[defaults]
stale_if_error = "1h"
"#;
    let proxy = Proxy::single(&o.origin, rules, extra).await;
    let c = proxy.client(&["www.shop.test"]);
    // Usually "v1"; on a loaded box the first answer can miss a short `read_timeout` and be
    // fetched again ("v2"). What matters is that the copy stored is the one served stale.
    let stored = get(&c, &proxy.url("/p"), &[]).await.body;
    assert!(stored.starts_with('v'), "{stored}");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    match failure {
        usize::MAX => o.origin.kill().await,
        m => o.mode.store(m, Ordering::SeqCst),
    }
    let got = get(&c, &proxy.url("/p"), &[]).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (200, stored.as_str()),
        "stale copy while the origin fails"
    );
    assert!(got.cache().contains("stale-if-error"), "{}", got.cache());
}

#[tokio::test]
async fn stale_if_error_when_origin_answers_5xx() {
    stale_if_error_case(FAIL, "").await;
}

#[tokio::test]
async fn stale_if_error_when_origin_times_out() {
    stale_if_error_case(HANG, "[origin]\nread_timeout = \"500ms\"\n").await;
}

#[tokio::test]
async fn stale_if_error_when_origin_is_down() {
    stale_if_error_case(usize::MAX, "").await;
}

#[tokio::test]
async fn without_stale_if_error_errors_pass_through() {
    let o = versioned("max-age=1").await;
    let proxy = Proxy::single(&o.origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    assert_eq!(get(&c, &proxy.url("/p"), &[]).await.body, "v1");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    o.mode.store(FAIL, Ordering::SeqCst);
    let got = get(&c, &proxy.url("/p"), &[]).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.body, "origin broken");
}

#[tokio::test]
async fn expired_objects_are_revalidated_with_validators() {
    let revalidations = Arc::new(AtomicUsize::new(0));
    let r = revalidations.clone();
    let origin = Origin::start(move |seen| {
        let conditional = seen.header("if-none-match") == Some("\"v1\"");
        let n = if conditional {
            r.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            0
        };
        async move {
            if conditional {
                let rev = format!("{n}");
                return reply(
                    304,
                    &[
                        ("cache-control", "max-age=60"),
                        ("etag", "\"v1\""),
                        ("x-rev", &rev),
                    ],
                    "",
                );
            }
            reply(
                200,
                &[
                    ("cache-control", "max-age=1"),
                    ("etag", "\"v1\""),
                    ("x-rev", "0"),
                ],
                "full body",
            )
        }
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let first = get(&c, &proxy.url("/r"), &[]).await;
    assert_eq!(
        (first.body.as_str(), first.header("x-rev")),
        ("full body", "0")
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let revalidated = get(&c, &proxy.url("/r"), &[]).await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(
        revalidated.body, "full body",
        "the client gets the stored body"
    );
    assert_eq!(
        revalidated.header("x-rev"),
        "1",
        "headers refreshed from the 304"
    );
    assert!(
        revalidated.cache().contains("fwd-status=304"),
        "{}",
        revalidated.cache()
    );
    assert_eq!(origin.last().header("if-none-match"), Some("\"v1\""));

    let hit = get(&c, &proxy.url("/r"), &[]).await;
    assert!(hit.is_hit(), "{}", hit.cache());
    assert_eq!(
        hit.header("x-rev"),
        "1",
        "the refreshed headers were stored"
    );
    let own = get(&c, &proxy.url("/r"), &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(
        own.status, 304,
        "a client with a matching validator gets its own 304"
    );
    assert_eq!(origin.hits(), 2);
}
