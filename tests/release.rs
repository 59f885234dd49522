//! Blue/green releases: flips under load with zero failed requests, sticky canaries, versioned
//! assets during a canary, health checks, whole-pool failure, maintenance, persistence across a
//! restart, fleet-wide flips, and refused flips.

mod common;
use common::*;
use http::Method;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RULES: &str = r#"
[defaults]
bypass_cookies = ["session"]
stale_if_error = "1h"
[[routes]]
name = "assets"
glob = "/static/*/**"
mode = "override"
edge_ttl = "365d"
browser_ttl = "365d"
browser_immutable = true
[[routes]]
name = "live"
prefix = "/live/"
mode = "pass"
[[routes]]
name = "checkout"
prefix = "/checkout"
mode = "pass"
"#;

/// A release's origin: pages name the release and link its assets; `/health` announces the
/// release and asset hash; assets exist only under the release's own hash.
async fn release_origin(name: &'static str, hash: &'static str) -> Origin {
    Origin::start(move |seen| async move {
        let path = seen.uri.path().to_string();
        if path == "/health" {
            return reply(200, &[("x-release", name), ("x-asset-hash", hash)], "ok");
        }
        if let Some(rest) = path.strip_prefix("/static/") {
            return match rest.split_once('/') {
                Some((h, "app.js")) if h == hash => reply(
                    200,
                    &[("cache-control", "public, max-age=31536000, immutable")],
                    format!("js of {name}"),
                ),
                _ => reply(404, &[], "no such asset"),
            };
        }
        let page = format!("pool={name} <script src=\"/static/{hash}/app.js\"></script>");
        reply(200, &[("cache-control", "max-age=60")], page)
    })
    .await
}

fn servers(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `shop` site with a blue and a green pool, health-checked every 200 ms.
fn site(blue: &[SocketAddr], green: &[SocketAddr]) -> String {
    let pool = |name: &str, addrs: &[SocketAddr]| {
        format!(
            "[sites.pools.{name}]\nservers = [{}]\nhealth_path = \"/health\"\nhealth_interval = \"200ms\"\n\
             health_timeout = \"500ms\"\nrise = 1\nfall = 1\n",
            servers(addrs)
        )
    };
    format!(
        "[[sites]]\nname = \"shop\"\nhosts = [\"www.shop.test\"]\nrules = \"shop.rules.toml\"\n\
         active_pool = \"blue\"\nassets = \"/static/{{hash}}/\"\n{}{}",
        pool("blue", blue),
        pool("green", green)
    )
}

async fn start(blue: &[&Origin], green: &[&Origin], extra: &str) -> Proxy {
    let b: Vec<_> = blue.iter().map(|o| o.addr).collect();
    let g: Vec<_> = green.iter().map(|o| o.addr).collect();
    let proxy = Proxy::start_toml(&site(&b, &g), &[("shop", RULES)], extra).await;
    // Wait for the first health checks to report the asset hashes.
    let ready = eventually(Duration::from_secs(5), || async {
        let (_, pools) = proxy
            .admin_call(Some(READ_TOKEN), Method::GET, "/pools", "")
            .await;
        pools["sites"][0]["pools"]
            .as_array()
            .is_some_and(|ps| ps.iter().all(|p| p["asset_hash"].is_string()))
    })
    .await;
    assert!(ready, "health checks did not run");
    proxy
}

async fn release(proxy: &Proxy, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    proxy
        .admin_call(Some(RELEASE_TOKEN), Method::POST, path, &body.to_string())
        .await
}

async fn flip(proxy: &Proxy, pool: &str) {
    let (status, answer) =
        release(proxy, "/pools/flip", json!({"site": "shop", "pool": pool})).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn flips_under_load_fail_no_request_and_leave_the_old_pool_alone() {
    let (blue, green) = (
        release_origin("blue", "b1").await,
        release_origin("green", "g1").await,
    );
    let proxy = start(&[&blue], &[&green], "").await;
    let c = proxy.client(&["www.shop.test"]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (c, url, stop) = (
            c.clone(),
            proxy.url(&format!("/live/{worker}")),
            stop.clone(),
        );
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let good = match c.get(&url).send().await {
                    Ok(r) => r.status() == 200 && r.text().await.is_ok(),
                    Err(_) => false,
                };
                if good {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        }));
    }
    let pools = [
        (&green, &blue, "green"),
        (&blue, &green, "blue"),
        (&green, &blue, "green"),
    ];
    for (new, old, name) in pools {
        tokio::time::sleep(Duration::from_millis(400)).await;
        flip(&proxy, name).await;
        // Requests already in flight on the old pool may finish; then it gets nothing new.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (old_hits, new_hits) = (old.hits(), new.hits());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            old.hits() - old_hits <= 4,
            "no new request reaches the old pool after a flip"
        );
        assert!(new.hits() > new_hits, "the new pool takes the traffic");
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for l in load {
        let (o, f) = l.await.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(failed, 0, "zero failed requests ({ok} succeeded)");
    assert!(ok > 100);
}

#[tokio::test]
async fn canary_sends_a_sticky_tenth_of_visitors_to_green_and_assets_of_both_load() {
    let (blue, green) = (
        release_origin("blue", "b1").await,
        release_origin("green", "g1").await,
    );
    let proxy = start(&[&blue], &[&green], "").await;
    let (status, answer) = release(
        &proxy,
        "/pools/canary",
        json!({"site": "shop", "pool": "green", "percent": 10}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let mut on_green = 0;
    for visitor in 0..300 {
        // Each visitor is a new cookie jar: the first answer sets the cohort cookie.
        let c = reqwest::Client::builder()
            .no_proxy()
            .cookie_store(true)
            .resolve("www.shop.test", proxy.addr)
            .build()
            .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for page in 0..3 {
            let body = get(
                &c,
                &proxy.url(&format!("/page/{}", (visitor + page) % 7)),
                &[],
            )
            .await
            .body;
            let pool = if body.starts_with("pool=green") {
                "green"
            } else {
                "blue"
            };
            seen.insert(pool);
            let hash = if pool == "green" { "g1" } else { "b1" };
            let asset = get(&c, &proxy.url(&format!("/static/{hash}/app.js")), &[]).await;
            assert_eq!(
                (asset.status, asset.body.as_str()),
                (200, format!("js of {pool}").as_str()),
                "assets of the page's release load"
            );
        }
        assert_eq!(
            seen.len(),
            1,
            "visitor {visitor} saw one release only: {seen:?}"
        );
        if seen.contains("green") {
            on_green += 1;
        }
    }
    assert!(
        (12..=50).contains(&on_green),
        "about 10% of 300 visitors on green, got {on_green}"
    );

    let unknown = get(
        &proxy.client(&["www.shop.test"]),
        &proxy.url("/static/deadbeef/app.js"),
        &[],
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.header("cache-control"),
        "public, max-age=10",
        "short negative TTL"
    );
    assert!(unknown.cache().contains("unknown-asset-version"));
}

#[tokio::test]
async fn health_checks_take_dead_servers_out_and_a_dead_pool_gets_a_503_page() {
    let (b1, b2, green) = (
        release_origin("blue", "b1").await,
        release_origin("blue", "b1").await,
        release_origin("green", "g1").await,
    );
    let proxy = start(&[&b1, &b2], &[&green], "").await;
    let c = proxy.client(&["www.shop.test"]);
    assert_eq!(get(&c, &proxy.url("/page/cached"), &[]).await.status, 200);
    b1.kill().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = b2.hits();
    for i in 0..20 {
        let got = get(&c, &proxy.url(&format!("/live/{i}")), &[]).await;
        assert_eq!(got.status, 200, "the live server takes every request");
    }
    assert_eq!(b2.hits() - before, 20);

    b2.kill().await;
    let down = eventually(Duration::from_secs(3), || async {
        let (_, pools) = proxy
            .admin_call(Some(READ_TOKEN), Method::GET, "/pools", "")
            .await;
        pools["sites"][0]["pools"][0]["healthy_servers"] == 0
    })
    .await;
    assert!(down, "the pool is marked down");
    let cached = get(&c, &proxy.url("/page/cached"), &[]).await;
    assert_eq!(cached.status, 200, "cached pages are still served");
    let uncached = get(&c, &proxy.url("/page/never-seen"), &[]).await;
    assert_eq!(uncached.status, 503);
    assert!(uncached.body.contains("right back") && !uncached.header("retry-after").is_empty());

    let (status, answer) = release(
        &proxy,
        "/pools/flip",
        json!({"site": "shop", "pool": "purple"}),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    green.kill().await;
    let green_down = eventually(Duration::from_secs(3), || async {
        release(
            &proxy,
            "/pools/flip",
            json!({"site": "shop", "pool": "green"}),
        )
        .await
        .0 == 409
    })
    .await;
    assert!(
        green_down,
        "a flip to a pool without a healthy server is refused"
    );
}

#[tokio::test]
async fn maintenance_and_state_survive_a_restart() {
    let (blue, green) = (
        release_origin("blue", "b1").await,
        release_origin("green", "g1").await,
    );
    let proxy = start(&[&blue], &[&green], "").await;
    let c = proxy.client(&["www.shop.test"]);
    get(&c, &proxy.url("/page/cached"), &[]).await;

    let (status, _) = release(
        &proxy,
        "/maintenance",
        json!({"site": "shop", "route": "checkout", "on": true}),
    )
    .await;
    assert_eq!(status, 200);
    let hits = blue.hits();
    let page = get(&c, &proxy.url("/checkout/pay"), &[]).await;
    assert_eq!((page.status, page.header("retry-after")), (503, "120"));
    assert_eq!(
        get(&c, &proxy.url("/page/x"), &[]).await.status,
        200,
        "other routes are unaffected"
    );
    release(
        &proxy,
        "/maintenance",
        json!({"site": "shop", "on": true, "serve_cached": true}),
    )
    .await;
    assert_eq!(
        get(&c, &proxy.url("/page/cached"), &[]).await.status,
        200,
        "cached copies may be served"
    );
    assert_eq!(get(&c, &proxy.url("/page/new"), &[]).await.status, 503);
    assert_eq!(
        blue.hits(),
        hits + 1,
        "maintenance never touches the origin"
    );
    release(&proxy, "/maintenance", json!({"site": "shop", "on": false})).await;
    assert_eq!(get(&c, &proxy.url("/checkout/pay"), &[]).await.status, 200);

    flip(&proxy, "green").await;
    let proxy = proxy.restart().await;
    let c = proxy.client(&["www.shop.test"]);
    assert!(
        get(&c, &proxy.url("/live/1"), &[])
            .await
            .body
            .starts_with("pool=green"),
        "the flip survived a restart"
    );
    let log = proxy.stderr();
    assert!(
        log.contains("release state restored from the state file")
            && log.contains("active=green configured=blue"),
        "a restored flip is said at start: {log}"
    );
    let (status, answer) = release(&proxy, "/pools/rollback", json!({"site": "shop"})).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        get(&c, &proxy.url("/live/2"), &[])
            .await
            .body
            .starts_with("pool=blue"),
        "rolled back"
    );
    assert_eq!(
        release(&proxy, "/pools/rollback", json!({"site": "shop"}))
            .await
            .0,
        409,
        "nothing left to roll back"
    );
}

/// Rollback is not one undo step: each rollback returns to the choice before, as far back as
/// the history goes, and the history survives a restart.
#[tokio::test]
async fn rollbacks_walk_back_through_the_release_history() {
    let (blue, green) = (
        release_origin("blue", "b1").await,
        release_origin("green", "g1").await,
    );
    let proxy = start(&[&blue], &[&green], "").await;
    let (status, answer) = release(
        &proxy,
        "/pools/canary",
        json!({"site": "shop", "pool": "green", "percent": 10}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    flip(&proxy, "green").await;
    let proxy = proxy.restart().await;
    let (_, pools) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/pools", "")
        .await;
    let history = &pools["sites"][0]["state"]["history"];
    assert_eq!(
        (
            history[0]["active"].as_str(),
            history[1]["active"].as_str(),
            history[1]["canary"]["percent"].as_u64()
        ),
        (Some("blue"), Some("blue"), Some(10)),
        "oldest first: blue, then blue with a 10% canary: {pools}"
    );
    // For people: the state, a table of pools, where rollbacks go.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .args(["pools", "status", "--admin", &proxy.admin.to_string()])
        .args(["--token", READ_TOKEN])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "shop: active green", "{text}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["pool", "role", "healthy", "release", "asset", "hash", "servers"],
        "{text}"
    );
    let blue_row = format!("blue - 1/1 blue b1 {} up", blue.addr);
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>().join(" "),
        blue_row
    );
    assert!(lines[3].starts_with("  green  active  1/1"), "{text}");
    assert!(
        lines[4].starts_with("  rollback returns to: blue + canary green 10% (left ")
            && lines[4].contains("), then blue (left "),
        "{text}"
    );
    let (status, back) = release(&proxy, "/pools/rollback", json!({"site": "shop"})).await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(
        (
            back["state"]["active"].as_str(),
            back["state"]["canary"]["percent"].as_u64()
        ),
        (Some("blue"), Some(10)),
        "the first rollback returns to the canary: {back}"
    );
    let (status, back) = release(&proxy, "/pools/rollback", json!({"site": "shop"})).await;
    assert_eq!(
        status, 200,
        "a second rollback goes one step further: {back}"
    );
    assert_eq!(
        (
            back["state"]["active"].as_str(),
            back["state"]["canary"].is_null()
        ),
        (Some("blue"), true),
        "{back}"
    );
    let c = proxy.client(&["www.shop.test"]);
    for i in 0..5 {
        let page = get(&c, &proxy.url(&format!("/after/{i}")), &[]).await;
        assert!(page.body.starts_with("pool=blue"), "{}", page.body);
    }
    assert_eq!(
        release(&proxy, "/pools/rollback", json!({"site": "shop"}))
            .await
            .0,
        409,
        "the history is used up"
    );
}

#[tokio::test]
async fn two_nodes_on_one_redis_flip_together() {
    let (blue, green) = (
        release_origin("blue", "b1").await,
        release_origin("green", "g1").await,
    );
    let redis = Redis::start().await;
    let n1 = start(&[&blue], &[&green], &redis.fleet("n1")).await;
    let n2 = start(&[&blue], &[&green], &redis.fleet("n2")).await;
    for n in [&n1, &n2] {
        let subscribed = eventually(Duration::from_secs(10), || async {
            n.admin_call(Some(READ_TOKEN), Method::GET, "/status", "")
                .await
                .1["fleet"]["subscribed"]
                == true
        })
        .await;
        assert!(subscribed);
    }
    flip(&n1, "green").await;
    let c2 = n2.client(&["www.shop.test"]);
    let together = eventually(Duration::from_secs(3), || async {
        get(&c2, &n2.url("/live/x"), &[])
            .await
            .body
            .starts_with("pool=green")
    })
    .await;
    assert!(together, "node 2 flipped with node 1");
    let shared = eventually(Duration::from_secs(3), || async {
        events(&n2)
            .await
            .iter()
            .any(|e| e["kind"] == "flip" && e["node"] == "n1" && e["by"] == "release")
    })
    .await;
    assert!(
        shared,
        "node 2's timeline shows node 1's flip: {:?}",
        events(&n2).await
    );
}

/// The release timeline (`GET /events`), oldest first.
async fn events(proxy: &Proxy) -> Vec<serde_json::Value> {
    let (status, answer) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/events?since=1h", "")
        .await;
    assert_eq!(status, 200, "{answer}");
    answer["events"].as_array().cloned().unwrap_or_default()
}

/// Every release action is an event: what, by whom (the token's name, the health check),
/// on which node; in the log and in Prometheus; kept across a restart; read by the CLI.
#[tokio::test]
async fn every_release_action_is_on_the_timeline_by_whom_and_survives_a_restart() {
    let (blue, green) = (
        release_origin("blue", "b1").await,
        release_origin("green", "g1").await,
    );
    let admin = "[[admin.tokens]]\nname = \"root\"\ntoken = \"test-admin-token-0123456789\"\nscopes = [\"admin\"]\n";
    let proxy = start(&[&blue], &[&green], admin).await;
    for (path, body) in [
        (
            "/pools/canary",
            json!({"site": "shop", "pool": "green", "percent": 10}),
        ),
        (
            "/pools/canary",
            json!({"site": "shop", "pool": "green", "percent": 30}),
        ),
        ("/pools/flip", json!({"site": "shop", "pool": "green"})),
        (
            "/maintenance",
            json!({"site": "shop", "route": "checkout", "on": true}),
        ),
        (
            "/maintenance",
            json!({"site": "shop", "route": "checkout", "on": false}),
        ),
        ("/pools/rollback", json!({"site": "shop"})),
    ] {
        let (status, answer) = release(&proxy, path, body).await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    proxy
        .purge(json!({"kind": "key", "key": "nothing-tagged"}))
        .await;
    let reload = || {
        proxy.admin_call(
            Some("test-admin-token-0123456789"),
            Method::POST,
            "/reload",
            "",
        )
    };
    assert_eq!(reload().await.0, 200);
    let rules = proxy.dir.path().join("shop.rules.toml");
    let good = std::fs::read_to_string(&rules).unwrap();
    std::fs::write(&rules, "[[routes]]\nname = \"x\"\nglob = \"/[\"\n").unwrap();
    assert_eq!(reload().await.0, 422);
    std::fs::write(&rules, good).unwrap();
    green.kill().await;
    let down = eventually(Duration::from_secs(5), || async {
        events(&proxy)
            .await
            .iter()
            .any(|e| e["kind"] == "server_down")
    })
    .await;
    assert!(down, "a server failing its health check is an event");

    let seen: Vec<(String, String, String)> = events(&proxy)
        .await
        .iter()
        .filter(|e| !matches!(e["kind"].as_str(), Some("start" | "release_seen")))
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("kind"), s("by"), s("what"))
        })
        .collect();
    let expected = [
        ("canary_start", "release", "canary green 10%"),
        ("canary_change", "release", "canary green 10% → 30%"),
        ("flip", "release", "flip blue + canary green 30% → green"),
        (
            "maintenance_on",
            "release",
            "maintenance on for route checkout",
        ),
        (
            "maintenance_off",
            "release",
            "maintenance off for route checkout",
        ),
        (
            "rollback",
            "release",
            "rollback green → blue + canary green 30%",
        ),
    ];
    for (i, (kind, by, what)) in expected.iter().enumerate() {
        assert_eq!(
            (seen[i].0.as_str(), seen[i].1.as_str(), seen[i].2.as_str()),
            (*kind, *by, *what),
            "{seen:#?}"
        );
    }
    let rest: Vec<&str> = seen[expected.len()..]
        .iter()
        .map(|e| e.0.as_str())
        .collect();
    assert_eq!(
        rest,
        ["purge", "reload", "reload_rejected", "server_down"],
        "{seen:#?}"
    );
    assert_eq!(seen[6].1, "ops", "a purge is by the purge token's name");
    assert!(
        seen[6].2.starts_with("purge key nothing-tagged (hard): "),
        "{seen:#?}"
    );
    assert_eq!((seen[7].1.as_str(), seen[8].1.as_str()), ("root", "root"));
    assert!(
        seen[8]
            .2
            .starts_with("config reload rejected (1 problem): "),
        "{seen:#?}"
    );
    assert!(seen[9].2.contains(&green.addr.to_string()), "{seen:#?}");
    let log = proxy.stderr();
    assert!(
        log.contains("crossfade::events: flip blue + canary green 30% → green"),
        "one log line per event: {log}"
    );
    let (_, metrics) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/metrics", "")
        .await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("crossfade_events_total{kind=\"flip\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("crossfade_event_last_timestamp_seconds{kind=\"flip\"} "));

    // A restart keeps the timeline (beside the release state) and adds its own start.
    let proxy = proxy.restart().await;
    let after = events(&proxy).await;
    assert!(after.iter().any(|e| e["kind"] == "flip"), "{after:?}");
    assert_eq!(
        after.iter().filter(|e| e["kind"] == "start").count(),
        2,
        "{after:?}"
    );
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .args([
            "events",
            "--since",
            "1h",
            "--admin",
            &proxy.admin.to_string(),
        ])
        .args(["--token", READ_TOKEN])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(text.starts_with("when (UTC)"), "{text}");
    let flip_line = text
        .lines()
        .find(|l| l.ends_with("flip blue + canary green 30% → green"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        flip_line.contains(" release ") && flip_line.contains(" shop "),
        "{flip_line}"
    );
}

/// Many new visitors (own cookie jars), each one request to a pass route.
async fn visitors(proxy: &Proxy, n: usize) {
    for i in 0..n {
        let c = reqwest::Client::builder()
            .no_proxy()
            .cookie_store(true)
            .resolve("www.shop.test", proxy.addr)
            .build()
            .unwrap();
        get(&c, &proxy.url(&format!("/live/v{i}")), &[]).await;
    }
}

const JUDGE: &str = "[release.judge]\nwindow = \"30s\"\ninterval = \"200ms\"\nmin_requests = 15\nmax_error_rate_increase = 0.05\n";

#[tokio::test]
async fn a_failing_canary_is_rolled_back_automatically_and_a_healthy_one_is_not() {
    let blue = release_origin("blue", "b1").await;
    let failing = Origin::start(|seen| async move {
        match seen.uri.path() {
            "/health" => reply(200, &[("x-release", "green"), ("x-asset-hash", "g1")], "ok"),
            _ => reply(500, &[], "green is broken"),
        }
    })
    .await;
    let proxy = start(&[&blue], &[&failing], JUDGE).await;
    let (status, _) = release(
        &proxy,
        "/pools/canary",
        json!({"site": "shop", "pool": "green", "percent": 50}),
    )
    .await;
    assert_eq!(status, 200);
    visitors(&proxy, 80).await;
    let rolled_back = eventually(Duration::from_secs(5), || async {
        let (_, pools) = proxy
            .admin_call(Some(READ_TOKEN), Method::GET, "/pools", "")
            .await;
        pools["sites"][0]["state"]["canary"].is_null()
    })
    .await;
    assert!(rolled_back, "the failing canary was rolled back");
    let (_, pools) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/pools", "")
        .await;
    let judgement = &pools["sites"][0]["canary_judgement"];
    assert_eq!(judgement["reason"], "error-rate", "{judgement}");
    assert_eq!(pools["sites"][0]["state"]["active"], "blue");
    // The metric and the log line follow the state change by a moment.
    let recorded = eventually(Duration::from_secs(3), || async {
        let (_, m) = proxy
            .admin_call(Some(READ_TOKEN), Method::GET, "/metrics", "")
            .await;
        m.as_str()
            .unwrap_or_default()
            .contains(r#"crossfade_canary_rollbacks_total{reason="error-rate",site="shop"} 1"#)
            && proxy.stderr().contains("rolled back")
    })
    .await;
    assert!(recorded, "the rollback is counted and logged");
    let judged = events(&proxy)
        .await
        .into_iter()
        .find(|e| e["kind"] == "rollback")
        .unwrap_or_default();
    assert_eq!(judged["by"], "judge", "{judged}");
    assert!(
        judged["what"]
            .as_str()
            .unwrap_or_default()
            .starts_with("rollback blue + canary green 50% → blue (canary green error-rate: errors 100.0% vs 0.0%"),
        "the judge's rollback says why: {judged}"
    );

    let (blue, green) = (
        release_origin("blue", "b1").await,
        release_origin("green", "g1").await,
    );
    let proxy = start(&[&blue], &[&green], JUDGE).await;
    release(
        &proxy,
        "/pools/canary",
        json!({"site": "shop", "pool": "green", "percent": 50}),
    )
    .await;
    visitors(&proxy, 80).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, pools) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/pools", "")
        .await;
    assert_eq!(
        pools["sites"][0]["state"]["canary"]["pool"], "green",
        "a healthy canary stays: {pools}"
    );
    assert_eq!(pools["sites"][0]["canary_judgement"]["rolled_back"], false);
}
