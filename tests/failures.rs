//! Failure modes (issue 18): a broken origin or pool never makes the edge worse than the origin.
//! An application's 5xx is passed through and never ejects a server; passive marks never empty
//! a pool; a canary without a healthy server sends its visitors to the stable pool; answers
//! after failures keep the connection usable or say `Connection: close`; cached assets outlive
//! their pool; at most one retry; idle origin connections close on time; errors are neither
//! stored without freshness nor served as stale copies; the canary judge counts origin answers;
//! a release change that cannot be saved is refused.

mod common;
use common::*;
use http::Method;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RULES: &str = r#"
[defaults]
bypass_cookies = ["session"]
stale_if_error = "1h"
[[routes]]
name = "assets"
glob = "/static/*/**"
mode = "override"
edge_ttl = "365d"
[[routes]]
name = "live"
prefix = "/live/"
mode = "pass"
"#;

/// One pool per name, each with its servers, health-checked every 200 ms when `checked`.
fn site(pools: &[(&str, &[SocketAddr])], checked: bool, extra_pool: &str) -> String {
    let mut out = String::from(
        "[[sites]]\nname = \"shop\"\nhosts = [\"www.shop.test\"]\nrules = \"shop.rules.toml\"\n\
         active_pool = \"blue\"\nassets = \"/static/{hash}/\"\n",
    );
    for (name, addrs) in pools {
        let servers: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        out.push_str(&format!(
            "[sites.pools.{name}]\nservers = [{}]\n{extra_pool}",
            servers.join(", ")
        ));
        if checked {
            out.push_str(
                "health_path = \"/health\"\nhealth_interval = \"200ms\"\n\
                 health_timeout = \"500ms\"\nrise = 1\nfall = 1\n",
            );
        }
    }
    out
}

/// A release's origin: `/health` announces `hash`; `/api/x` is an application error; assets
/// of its hash are served; pages name the release.
async fn app(name: &'static str, hash: &'static str) -> Origin {
    Origin::start(move |seen| async move {
        let path = seen.uri.path().to_string();
        match path.as_str() {
            "/health" => reply(200, &[("x-release", name), ("x-asset-hash", hash)], "ok"),
            "/api/x" => reply(500, &[], format!("app error in {name}")),
            p if p.starts_with(&format!("/static/{hash}/")) => reply(
                200,
                &[("content-type", "text/javascript")],
                format!("asset of {name}"),
            ),
            p if p.starts_with("/static/") => reply(404, &[], "no such asset"),
            _ => reply(
                200,
                &[("cache-control", "max-age=60")],
                format!("pool={name}"),
            ),
        }
    })
    .await
}

async fn release(proxy: &Proxy, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    proxy
        .admin_call(Some(RELEASE_TOKEN), Method::POST, path, &body.to_string())
        .await
}

async fn pools(proxy: &Proxy) -> serde_json::Value {
    proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/pools", "")
        .await
        .1
}

/// A client that keeps cookies (a visitor keeps their canary cohort).
fn visitor(proxy: &Proxy) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .resolve("www.shop.test", proxy.addr)
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_application_error_is_passed_through_and_never_takes_a_pool_down() {
    let (blue, green) = (app("blue", "b1").await, app("green", "g1").await);
    let sites = site(
        &[("blue", &[blue.addr]), ("green", &[green.addr])],
        true,
        "",
    );
    let proxy = Proxy::start_toml(&sites, &[("shop", RULES)], "").await;
    let c = proxy.client(&["www.shop.test"]);
    for _ in 0..10 {
        let got = get(&c, &proxy.url("/api/x"), &[]).await;
        assert_eq!((got.status, got.body.as_str()), (500, "app error in blue"));
    }
    let page = get(&c, &proxy.url("/live/after-errors"), &[]).await;
    assert_eq!(
        (page.status, page.body.as_str()),
        (200, "pool=blue"),
        "ten 500s on one endpoint leave the site up"
    );

    // A canary's visitors: its 500s are its answers; without a healthy server they go to blue.
    let (status, answer) = release(
        &proxy,
        "/pools/canary",
        json!({"site": "shop", "pool": "green", "percent": 100}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let v = visitor(&proxy);
    for _ in 0..6 {
        assert_eq!(
            get(&v, &proxy.url("/api/x"), &[]).await.body,
            "app error in green"
        );
    }
    let page = get(&v, &proxy.url("/live/canary"), &[]).await;
    assert_eq!((page.status, page.body.as_str()), (200, "pool=green"));
    green.kill().await;
    let stable = eventually(Duration::from_secs(3), || async {
        let page = get(&v, &proxy.url("/live/canary-down"), &[]).await;
        (page.status, page.body.as_str()) == (200, "pool=blue")
    })
    .await;
    assert!(
        stable,
        "canary visitors go to the stable pool while the canary has no server"
    );
}

/// A raw origin: each request (a head without a body) is answered `200 ok` (private), or,
/// while `drop` is set, read and then the connection closed unanswered. Counts requests and
/// open connections.
struct RawOrigin {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    drop: Arc<AtomicBool>,
}

async fn raw_origin() -> RawOrigin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (requests, open, drop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (r, o, d) = (requests.clone(), open.clone(), drop.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let (r, o, d) = (r.clone(), o.clone(), d.clone());
            o.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                'conn: loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        r.fetch_add(1, Ordering::SeqCst);
                        if d.load(Ordering::SeqCst) {
                            break 'conn;
                        }
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: private\r\n\r\nok";
                        if sock.write_all(answer).await.is_err() {
                            break 'conn;
                        }
                    }
                    match sock.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => break,
                    }
                }
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    RawOrigin {
        addr,
        requests,
        open,
        drop,
    }
}

/// Sends `count` requests for `path` at once, each on its own connection.
async fn concurrent(proxy: &Proxy, path: &str, count: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let c = proxy.client(&["www.shop.test"]);
            let url = proxy.url(path);
            tokio::spawn(async move { get(&c, &url, &[]).await.status })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn an_origin_that_drops_requests_gets_at_most_one_retry_and_stays_in_use() {
    let origin = raw_origin().await;
    let proxy = Proxy::single_addr(origin.addr, RULES, "").await;
    // Twenty idle pooled connections to the origin.
    let statuses = concurrent(&proxy, "/live/warm", 20).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    origin.drop.store(true, Ordering::SeqCst);
    let before = origin.requests.load(Ordering::SeqCst);
    let c = proxy.client(&["www.shop.test"]);
    let got = get(&c, &proxy.url("/live/dropped"), &[]).await;
    assert_eq!(got.status, 502);
    let sent = origin.requests.load(Ordering::SeqCst) - before;
    assert!(
        (1..=2).contains(&sent),
        "one GET reached the origin {sent} times"
    );
    let retries = proxy_counter(&proxy, "crossfade_origin_retries_total").await;
    assert_ne!(retries, "0", "the retry is counted");

    // Dropped exchanges mark the only server down; it is used anyway (a passive mark never
    // empties a pool), so the origin's recovery is seen at once.
    for i in 0..4 {
        get(&c, &proxy.url(&format!("/live/dropped-{i}")), &[]).await;
    }
    origin.drop.store(false, Ordering::SeqCst);
    let got = get(&c, &proxy.url("/live/recovered"), &[]).await;
    assert_eq!((got.status, got.body.as_str()), (200, "ok"));
    let (_, pools) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/pools", "")
        .await;
    let pool = &pools["sites"][0]["pools"][0];
    assert_eq!(pool["panic"], true, "{pool}");
}

#[tokio::test]
async fn idle_origin_connections_close_on_time() {
    let origin = raw_origin().await;
    let extra = "[origin]\nidle_timeout = \"1s\"\n";
    let proxy = Proxy::single_addr(origin.addr, RULES, extra).await;
    let statuses = concurrent(&proxy, "/live/idle", 10).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(origin.open.load(Ordering::SeqCst) > 0);
    let closed = eventually(Duration::from_secs(4), || async {
        origin.open.load(Ordering::SeqCst) == 0
    })
    .await;
    assert!(
        closed,
        "{} idle connections still open 4 s after a 1 s idle timeout",
        origin.open.load(Ordering::SeqCst)
    );
}

/// Reads one Content-Length-framed answer: (lowercased head, body); `None` when the
/// connection closed (or nothing came within 5 s) before a whole answer.
async fn read_answer(sock: &mut TcpStream) -> Option<(String, String)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + length]).to_string();
                return Some((head, body));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// Sends `path` on a fresh connection and checks the answer keeps its word: after
/// `Connection: close` the connection ends; otherwise a second request on it is answered.
async fn keeps_its_word(proxy: &Proxy, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: www.shop.test\r\n\r\n");
    let mut sock = TcpStream::connect(proxy.addr).await.unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let (head, body) = read_answer(&mut sock).await.expect("an answer");
    if head.contains("\r\nconnection: close") {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "{path}: said close and kept the connection open"
        );
    } else {
        sock.write_all(request.as_bytes()).await.unwrap();
        assert!(
            read_answer(&mut sock).await.is_some(),
            "{path}: said keep-alive, then the next request on the connection got no answer:\n{head}"
        );
    }
    (head, body)
}

#[tokio::test]
async fn answers_after_origin_failures_keep_the_connection_usable_or_say_close() {
    let blue = app("blue", "b1").await;
    let sites = site(&[("blue", &[blue.addr])], true, "");
    let proxy = Proxy::start_toml(&sites, &[("shop", RULES)], "").await;
    blue.kill().await;
    let down = eventually(Duration::from_secs(3), || async {
        pools(&proxy).await["sites"][0]["pools"][0]["healthy_servers"] == 0
    })
    .await;
    assert!(down);
    let (head, _) = keeps_its_word(&proxy, "/page/never-seen").await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    let (head, body) = keeps_its_word(&proxy, "/live/x").await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(body.contains("right back"));
}

#[tokio::test]
async fn a_stale_copy_served_for_an_error_keeps_the_connection_usable_or_says_close() {
    let origin = Origin::start(|_| async {
        reply(
            200,
            &[("cache-control", "max-age=1, stale-if-error=3600")],
            "page",
        )
    })
    .await;
    let proxy = Proxy::single(&origin, RULES, "").await;
    let c = proxy.client(&["www.shop.test"]);
    assert_eq!(get(&c, &proxy.url("/page/s"), &[]).await.status, 200);
    origin.kill().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (head, body) = keeps_its_word(&proxy, "/page/s").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("stale-if-error"), "{head}");
    assert_eq!(body, "page");
}

#[tokio::test]
async fn cached_assets_are_served_while_their_pool_is_down() {
    let blue = app("blue", "b1").await;
    let sites = site(&[("blue", &[blue.addr])], true, "");
    let proxy = Proxy::start_toml(&sites, &[("shop", RULES)], "").await;
    let announced = eventually(Duration::from_secs(3), || async {
        pools(&proxy).await["sites"][0]["pools"][0]["asset_hash"] == "b1"
    })
    .await;
    assert!(announced);
    let c = proxy.client(&["www.shop.test"]);
    assert_eq!(
        get(&c, &proxy.url("/static/b1/app.js"), &[]).await.status,
        200
    );
    blue.kill().await;
    let down = eventually(Duration::from_secs(3), || async {
        pools(&proxy).await["sites"][0]["pools"][0]["healthy_servers"] == 0
    })
    .await;
    assert!(down);
    let cached = get(&c, &proxy.url("/static/b1/app.js"), &[]).await;
    assert_eq!(
        (cached.status, cached.body.as_str()),
        (200, "asset of blue")
    );
    assert!(cached.is_hit(), "{}", cached.cache());
    let uncached = get(&c, &proxy.url("/static/b1/other.js"), &[]).await;
    assert_eq!(
        uncached.status, 503,
        "an asset of a known hash is not a 404"
    );
    assert!(!uncached.header("retry-after").is_empty());
    let unknown = get(&c, &proxy.url("/static/zz9/app.js"), &[]).await;
    assert_eq!(unknown.status, 404, "an unknown hash still is");
}

#[tokio::test]
async fn errors_are_not_stored_without_freshness_nor_served_as_stale_copies() {
    let origin = Origin::start(|seen| async move {
        match seen.uri.path() {
            // A validator and no freshness: RFC 9111 §3 stores no 500 for that.
            "/err/etag" => reply(500, &[("etag", "\"e1\"")], "broken"),
            // Explicit freshness: stored, but never the copy served for a later error.
            _ => reply(503, &[("cache-control", "max-age=1")], "busy"),
        }
    })
    .await;
    let proxy = Proxy::single(&origin, RULES, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let first = get(&c, &proxy.url("/err/etag"), &[]).await;
    assert_eq!(first.status, 500);
    assert!(!first.cache().contains("stored"), "{}", first.cache());
    let stored = get(&c, &proxy.url("/err/fresh"), &[]).await;
    assert_eq!(stored.status, 503);
    origin.kill().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for path in ["/err/etag", "/err/fresh"] {
        let got = get(&c, &proxy.url(path), &[]).await;
        assert!(
            !got.cache().contains("stale-if-error"),
            "{path}: an error served as the stale copy for an error: {} {}",
            got.status,
            got.cache()
        );
        assert_eq!(got.status, 502, "{path}");
    }
}

#[tokio::test]
async fn the_canary_judge_counts_what_the_pools_answered() {
    let blue = app("blue", "b1").await;
    // Green fails one origin request in three; its pages are cached, so most canary requests
    // are hits that say nothing of green.
    let n = Arc::new(AtomicUsize::new(0));
    let green = Origin::start(move |seen| {
        let n = n.clone();
        async move {
            match seen.uri.path() {
                "/health" => reply(200, &[("x-release", "green"), ("x-asset-hash", "g1")], "ok"),
                p if p.starts_with("/live/")
                    && n.fetch_add(1, Ordering::SeqCst).is_multiple_of(3) =>
                {
                    reply(500, &[], "green failed")
                }
                _ => reply(200, &[("cache-control", "max-age=60")], "pool=green"),
            }
        }
    })
    .await;
    let sites = site(
        &[("blue", &[blue.addr]), ("green", &[green.addr])],
        true,
        "",
    );
    let judge = "[release.judge]\nwindow = \"30s\"\ninterval = \"200ms\"\nmin_requests = 15\n\
                 max_error_rate_increase = 0.10\n";
    let proxy = Proxy::start_toml(&sites, &[("shop", RULES)], judge).await;
    let (status, _) = release(
        &proxy,
        "/pools/canary",
        json!({"site": "shop", "pool": "green", "percent": 100}),
    )
    .await;
    assert_eq!(status, 200);
    let v = visitor(&proxy);
    // 30 origin requests (10 failed) among 330: 3% of all answers, 33% of green's.
    for i in 0..30 {
        get(&v, &proxy.url(&format!("/live/{i}")), &[]).await;
        for _ in 0..10 {
            get(&v, &proxy.url("/page/home"), &[]).await;
        }
    }
    let rolled_back = eventually(Duration::from_secs(5), || async {
        pools(&proxy).await["sites"][0]["state"]["canary"].is_null()
    })
    .await;
    let judgement = &pools(&proxy).await["sites"][0]["canary_judgement"];
    assert!(
        rolled_back,
        "the canary failing 1 in 3 origin requests stays: {judgement}"
    );
    assert_eq!(judgement["reason"], "error-rate", "{judgement}");
}

#[tokio::test]
async fn a_release_change_that_cannot_be_saved_is_refused() {
    let (blue, green) = (app("blue", "b1").await, app("green", "g1").await);
    let sites = site(
        &[("blue", &[blue.addr]), ("green", &[green.addr])],
        false,
        "",
    );
    // A directory that is a file: no one, root included, can write the state there.
    let extra = "[release]\nstate_file = \"crossfade.toml/state.json\"\n";
    let proxy = Proxy::start_toml(&sites, &[("shop", RULES)], extra).await;
    let (status, answer) = release(
        &proxy,
        "/pools/flip",
        json!({"site": "shop", "pool": "green"}),
    )
    .await;
    assert_eq!(status, 500, "{answer}");
    let reason = answer["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cannot be saved") && reason.contains("state.json"),
        "{answer}"
    );
    assert_eq!(pools(&proxy).await["sites"][0]["state"]["active"], "blue");
    let c = proxy.client(&["www.shop.test"]);
    assert_eq!(get(&c, &proxy.url("/live/x"), &[]).await.body, "pool=blue");
}

#[tokio::test]
async fn a_pool_at_max_inflight_protects_the_origin_and_hits_never_wait() {
    // `/slow…` takes 5 s; the origin records how many requests it held at once.
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, p) = (now.clone(), peak.clone());
    let origin = Origin::start(move |seen| {
        let (n, p) = (n.clone(), p.clone());
        async move {
            if !seen.uri.path().starts_with("/slow") {
                return reply(200, &[("cache-control", "max-age=60")], "fast page");
            }
            p.fetch_max(n.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(5)).await;
            n.fetch_sub(1, Ordering::SeqCst);
            reply(200, &[("cache-control", "max-age=1")], "slow page")
        }
    })
    .await;
    let sites = site(
        &[("blue", &[origin.addr])],
        false,
        "max_inflight = 8\nmax_wait = \"500ms\"\n",
    );
    let proxy = Proxy::start_toml(&sites, &[("shop", RULES)], "").await;
    let c = proxy.client(&["www.shop.test"]);
    assert_eq!(get(&c, &proxy.url("/page/home"), &[]).await.status, 200);
    // A stored page that is stale by the time the pool is full (stale_if_error = 1h).
    assert_eq!(
        get(&c, &proxy.url("/slow/stored"), &[]).await.body,
        "slow page"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let started = Instant::now();
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let c = proxy.client(&["www.shop.test"]);
            // Logged in: each request goes to the origin (no coalescing, no cache).
            let url = proxy.url(&format!("/slow/live/{i}"));
            tokio::spawn(async move {
                let t = Instant::now();
                let got = send(&c, Method::GET, &url, &[("cookie", "session=1")]).await;
                (
                    got.status,
                    got.header("retry-after").to_string(),
                    t.elapsed(),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut hit_times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let got = get(&c, &proxy.url("/page/home"), &[]).await;
        hit_times.push(t.elapsed());
        assert!(got.is_hit(), "{}", got.cache());
    }
    let stale = get(&c, &proxy.url("/slow/stored"), &[]).await;
    assert_eq!((stale.status, stale.body.as_str()), (200, "slow page"));
    assert!(stale.cache().contains("fwd=stale"), "{}", stale.cache());
    let mut served = 0;
    let mut shed = 0;
    for task in flood {
        let (status, retry_after, took) = task.await.unwrap();
        match status {
            200 => served += 1,
            503 => {
                assert!(!retry_after.is_empty(), "a shed request says when to retry");
                assert!(took < Duration::from_secs(3), "shed after {took:?}");
                shed += 1;
            }
            other => panic!("a /slow client got {other}"),
        }
    }
    hit_times.sort();
    assert!(
        hit_times[10] < Duration::from_millis(100),
        "hits waited behind the full pool: median {:?}",
        hit_times[10]
    );
    assert!(
        peak.load(Ordering::SeqCst) <= 8,
        "origin held {} at once",
        peak.load(Ordering::SeqCst)
    );
    assert!(served >= 8 && shed > 100, "served {served}, shed {shed}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "no client hung"
    );
    let counted = proxy_counter(&proxy, "crossfade_pool_shed_total").await;
    assert_ne!(counted, "0");
}
