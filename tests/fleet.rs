//! A fleet of real crossfade nodes sharing purges over a real Redis: every node applies a
//! purge sent to any one, the report names who confirmed, and a node that loses Redis keeps
//! serving and comes back.

mod common;
use common::*;
use http::Method;
use serde_json::json;
use std::time::Duration;

async fn node(origin: &Origin, redis: &Redis, name: &str) -> Proxy {
    Proxy::single(origin, HONOR_ALL, &redis.fleet(name)).await
}

async fn status(p: &Proxy) -> serde_json::Value {
    p.admin_call(Some(READ_TOKEN), Method::GET, "/status", "")
        .await
        .1
}

/// Nodes with these names on `redis`, each subscribed and seeing all the others.
async fn fleet_of<const N: usize>(origin: &Origin, redis: &Redis, names: [&str; N]) -> [Proxy; N] {
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(node(origin, redis, name).await);
    }
    for n in &nodes {
        until_meshed(n, N - 1).await;
    }
    nodes
        .try_into()
        .unwrap_or_else(|_| unreachable!("N nodes were started"))
}

/// Nodes n1 and n2 on `redis`, each subscribed and seeing the other.
async fn pair(origin: &Origin, redis: &Redis) -> (Proxy, Proxy) {
    let [n1, n2] = fleet_of(origin, redis, ["n1", "n2"]).await;
    (n1, n2)
}

/// Stores `path` on every node (a miss, then a hit on each).
async fn cached_everywhere(nodes: &[Proxy], path: &str) {
    for n in nodes {
        hit_on(n, path).await;
        assert!(hit_on(n, path).await, "{path} is cached on every node");
    }
}

/// Waits until `p` is subscribed and sees `peers` other nodes.
async fn until_meshed(p: &Proxy, peers: usize) {
    let ok = eventually(Duration::from_secs(10), || async {
        let s = status(p).await;
        s["fleet"]["subscribed"] == true
            && s["fleet"]["peers"]
                .as_array()
                .is_some_and(|a| a.len() == peers)
    })
    .await;
    assert!(ok, "fleet did not form: {}", status(p).await);
}

fn node_names(report: &serde_json::Value) -> Vec<String> {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_purge_on_one_node_reaches_every_node() {
    let origin = Origin::start(|_| async {
        reply(
            200,
            &[("cache-control", "max-age=600"), ("surrogate-key", "k")],
            "x",
        )
    })
    .await;
    let redis = Redis::start().await;
    let nodes = fleet_of(&origin, &redis, ["n1", "n2", "n3"]).await;
    let clients: Vec<_> = nodes.iter().map(|n| n.client(&["www.shop.test"])).collect();
    cached_everywhere(&nodes, "/a").await;
    let report = nodes[0]
        .purge(json!({"kind": "url", "url": "www.shop.test/a"}))
        .await;
    assert_eq!(node_names(&report), vec!["n1", "n2", "n3"], "{report}");
    assert_eq!(report["complete"], true);
    assert!(
        report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["removed"] == 1),
        "{report}"
    );
    for (n, c) in nodes.iter().zip(&clients) {
        assert!(
            !get(c, &n.url("/a"), &[]).await.is_hit(),
            "purged everywhere"
        );
    }

    // A hung node (its subscription stops answering) is reported as unconfirmed.
    signal(nodes[2].pid(), "STOP");
    let report = nodes[1].purge(json!({"kind": "key", "key": "k"})).await;
    signal(nodes[2].pid(), "CONT");
    assert_eq!(report["complete"], false, "{report}");
    assert_eq!(report["unconfirmed"], json!(["n3"]), "{report}");
    assert_eq!(node_names(&report), vec!["n1", "n2"]);
}

#[tokio::test]
async fn a_node_that_loses_redis_keeps_serving_and_reconnects() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=600")], "x") }).await;
    let redis = Redis::start().await;
    let port = redis.port;
    let (n1, n2) = pair(&origin, &redis).await;
    let c = n1.client(&["www.shop.test"]);
    get(&c, &n1.url("/a"), &[]).await;

    drop(redis);
    let down = eventually(Duration::from_secs(10), || async {
        status(&n1).await["fleet"]["subscribed"] == false
    })
    .await;
    assert!(
        down,
        "the status shows the lost subscription: {}",
        status(&n1).await
    );
    assert!(status(&n1).await["fleet"]["last_error"].is_string());
    assert!(
        get(&c, &n1.url("/a"), &[]).await.is_hit(),
        "cached pages are still served"
    );
    assert_eq!(
        get(&c, &n1.url("/b"), &[]).await.status,
        200,
        "and misses still proxied"
    );
    let report = n1
        .purge(json!({"kind": "url", "url": "www.shop.test/b"}))
        .await;
    assert_eq!(
        report["complete"], false,
        "an incomplete purge says so: {report}"
    );
    assert!(report["fleet_error"].is_string());
    assert_eq!(
        report["unconfirmed"],
        json!(["n2"]),
        "the nodes last known to be in the fleet are named: {report}"
    );
    assert_eq!(
        report["nodes"][0]["removed"], 1,
        "the local purge still happened"
    );

    let _redis = Redis::start_on(port).await;
    until_meshed(&n1, 1).await;
    until_meshed(&n2, 1).await;
    let report = n2.purge(json!({"kind": "all"})).await;
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(node_names(&report), vec!["n1", "n2"]);
}

#[tokio::test]
async fn two_processes_with_one_name_still_purge_each_other_and_say_so() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=600")], "x") }).await;
    let redis = Redis::start().await;
    // Two instances on one host with one name (a container image with a fixed hostname).
    let twins = fleet_of(&origin, &redis, ["twin", "twin"]).await;
    let clients: Vec<_> = twins.iter().map(|t| t.client(&["www.shop.test"])).collect();
    cached_everywhere(&twins, "/p").await;
    let report = twins[0]
        .purge(json!({"kind": "url", "url": "www.shop.test/p"}))
        .await;
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(node_names(&report), vec!["twin", "twin"], "{report}");
    assert!(
        !get(&clients[1], &twins[1].url("/p"), &[]).await.is_hit(),
        "the other instance applied the purge"
    );
    for t in &twins {
        let s = status(t).await;
        assert_eq!(
            s["fleet"]["name_clash"].as_array().map(Vec::len),
            Some(1),
            "{s}"
        );
        assert!(
            t.stderr().contains("uses this node's name"),
            "the clash is logged"
        );
    }
}

#[tokio::test]
async fn a_node_that_stops_announces_it_and_purges_stay_complete() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=600")], "x") }).await;
    let redis = Redis::start().await;
    let nodes = fleet_of(&origin, &redis, ["n1", "n2", "n3"]).await;
    // A rolling restart takes n3 down (SIGTERM): for the seconds after, while its heartbeat
    // would still look recent, every purge is complete (it either confirms or has left).
    signal(nodes[2].pid(), "TERM");
    let until = std::time::Instant::now() + Duration::from_secs(7);
    while std::time::Instant::now() < until {
        let report = nodes[0].purge(json!({"kind": "all", "soft": true})).await;
        assert_eq!(
            report["complete"],
            true,
            "{report}\nn3: {}\nn1: {}",
            nodes[2].stderr(),
            nodes[0].stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Whether `/a` is a hit on node `p`.
async fn hit_on(p: &Proxy, path: &str) -> bool {
    get(&p.client(&["www.shop.test"]), &p.url(path), &[])
        .await
        .is_hit()
}

#[tokio::test]
async fn a_report_is_complete_only_when_every_node_remembered_confirmed_even_after_redis_restarts()
{
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=600")], "x") }).await;
    let mut redis = Redis::start().await;
    let port = redis.port;
    let (n1, n2) = pair(&origin, &redis).await;
    for round in 0..3 {
        let path = format!("/a{round}");
        for n in [&n1, &n2] {
            hit_on(n, &path).await;
            assert!(hit_on(n, &path).await);
        }
        // Redis restarts without its data (no persistence): the heartbeat hash is empty, and
        // the purge is sent as soon as it accepts connections.
        drop(redis);
        redis = Redis::start_on(port).await;
        let report = n1
            .purge(json!({"kind": "url", "url": format!("www.shop.test{path}")}))
            .await;
        if report["complete"] == true {
            assert_eq!(
                node_names(&report),
                vec!["n1", "n2"],
                "complete without n2's confirmation: {report}"
            );
        } else {
            assert_eq!(report["unconfirmed"], json!(["n2"]), "{report}");
        }
        if node_names(&report).contains(&"n2".to_string()) {
            assert!(
                !hit_on(&n2, &path).await,
                "n2 confirmed and still serves it"
            );
        }
        until_meshed(&n1, 1).await;
        until_meshed(&n2, 1).await;
    }
}

#[tokio::test]
async fn a_hung_redis_is_seen_and_the_purges_it_may_have_lost_are_caught_up() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=600")], "x") }).await;
    let redis = Redis::start().await;
    let (n1, n2) = pair(&origin, &redis).await;
    hit_on(&n2, "/a").await;
    assert!(hit_on(&n2, "/a").await);
    let resubscribed = status(&n2).await["fleet"]["resubscriptions"].clone();

    signal(redis.pid(), "STOP");
    let seen = eventually(Duration::from_secs(10), || async {
        let s = status(&n1).await;
        s["fleet"]["subscribed"] == false && s["fleet"]["last_error"].is_string()
    })
    .await;
    assert!(seen, "the hang shows in the status: {}", status(&n1).await);
    let started = std::time::Instant::now();
    let report = n1
        .purge(json!({"kind": "url", "url": "www.shop.test/a"}))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the purge waited on the hung Redis"
    );
    assert_eq!(report["complete"], false, "{report}");
    assert_eq!(report["unconfirmed"], json!(["n2"]), "{report}");

    signal(redis.pid(), "CONT");
    let back = eventually(Duration::from_secs(15), || async {
        let s = status(&n2).await;
        s["fleet"]["subscribed"] == true && s["fleet"]["resubscriptions"] != resubscribed
    })
    .await;
    assert!(back, "n2 subscribed again: {}", status(&n2).await);
    assert!(
        !hit_on(&n2, "/a").await,
        "after the gap n2 refreshes what it holds instead of serving what may have been purged"
    );
}

/// A command's answer from the Redis (or Sentinel) on `port`, as text.
async fn redis_says(port: u16, args: &[&str]) -> String {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return String::new();
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return String::new();
    };
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let value: Result<redis::Value, _> = cmd.query_async(&mut c).await;
    format!("{value:?}")
}

#[tokio::test]
async fn a_fleet_behind_sentinel_follows_a_failover_and_purges_stay_complete() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=600")], "x") }).await;
    let primary = Redis::start().await;
    let replica = Redis::start_replica_of(primary.port).await;
    let dir = tempfile::tempdir().unwrap();
    let sentinel = Redis::start_sentinel(primary.port, "fleet", dir.path()).await;
    let knows_replica = eventually(Duration::from_secs(20), || async {
        redis_says(sentinel.port, &["SENTINEL", "REPLICAS", "fleet"])
            .await
            .contains(&replica.port.to_string())
    })
    .await;
    assert!(knows_replica, "the sentinel did not find the replica");
    let url = format!("redis+sentinel://127.0.0.1:{}/fleet", sentinel.port);
    let fleet = |name: &str| {
        format!("[fleet]\nnode = \"{name}\"\nredis = \"{url}\"\nconfirm_timeout = \"1s\"\n")
    };
    let (n1, n2) = (
        Proxy::single(&origin, HONOR_ALL, &fleet("n1")).await,
        Proxy::single(&origin, HONOR_ALL, &fleet("n2")).await,
    );
    until_meshed(&n1, 1).await;
    until_meshed(&n2, 1).await;
    let purge_everywhere = |path: &'static str| {
        let (n1, n2) = (&n1, &n2);
        async move {
            for n in [n1, n2] {
                hit_on(n, path).await;
                assert!(hit_on(n, path).await);
            }
            let report = n1
                .purge(json!({"kind": "url", "url": format!("www.shop.test{path}")}))
                .await;
            assert_eq!(report["complete"], true, "{report}");
            assert_eq!(node_names(&report), vec!["n1", "n2"]);
            assert!(!hit_on(n2, path).await);
        }
    };
    purge_everywhere("/before").await;

    // The primary dies; the sentinel promotes the replica; the nodes follow it.
    drop(primary);
    let promoted = eventually(Duration::from_secs(30), || async {
        redis_says(replica.port, &["ROLE"]).await.contains("master")
    })
    .await;
    assert!(promoted, "the sentinel did not fail over");
    until_meshed(&n1, 1).await;
    until_meshed(&n2, 1).await;
    purge_everywhere("/after").await;
    let s = status(&n1).await;
    assert!(s["fleet"]["resubscriptions"].as_u64() >= Some(1), "{s}");
}

/// The fleet view: each node's dashboard data shows every node's last minute, as that node
/// published it, and the total.
#[tokio::test]
async fn every_node_shows_the_whole_fleet_on_its_dashboard() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=60")], "x") }).await;
    let redis = Redis::start().await;
    let (n1, n2) = pair(&origin, &redis).await;
    let c = n1.client(&["www.shop.test"]);
    for i in 0..12 {
        get(&c, &n1.url(&format!("/f/{}", i % 3)), &[]).await;
    }
    let c2 = n2.client(&["www.shop.test"]);
    for _ in 0..3 {
        get(&c2, &n2.url("/f/0"), &[]).await;
    }
    let requests = |view: &serde_json::Value, name: &str| {
        view["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["node"] == name))
            .and_then(|n| n["all"]["requests"].as_u64())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let mut seen = fleet_view(&n2).await;
    let mut complete = false;
    while std::time::Instant::now() < deadline {
        seen = fleet_view(&n2).await;
        complete = requests(&seen, "n1") == Some(12) && requests(&seen, "n2") == Some(3);
        if complete {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        complete,
        "node 2 shows node 1's 12 requests and its own 3: {seen}"
    );
    assert_eq!(seen["total"]["requests"], 15.0, "{seen}");
    let hit_ratio = seen["total"]["hit_ratio"].as_f64().unwrap();
    assert!(
        (hit_ratio - 11.0 / 15.0).abs() < 1e-9,
        "9 of n1's 12 and 2 of n2's 3 were hits: {seen}"
    );
    let alone = Proxy::single(&origin, HONOR_ALL, "").await;
    assert!(
        fleet_view(&alone).await.is_null(),
        "a node alone has no fleet view"
    );
}

/// The `fleet` part of a node's dashboard data.
async fn fleet_view(p: &Proxy) -> serde_json::Value {
    p.admin_call(
        Some(READ_TOKEN),
        Method::GET,
        "/dashboard/data?window=60",
        "",
    )
    .await
    .1["fleet"]
        .clone()
}
