//! Observability: Prometheus counts after known traffic, bounded label cardinality, statsd
//! packets on a real UDP socket, and request ids.

mod common;
use common::*;
use http::Method;
use std::time::Duration;

async fn metrics(proxy: &Proxy) -> String {
    let (status, body) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/metrics", "")
        .await;
    assert_eq!(status, 200);
    body.as_str().unwrap().to_string()
}

/// `/metrics` once `n` requests have been recorded (metrics are recorded in the logging hook,
/// just after the client got its response).
async fn metrics_after(proxy: &Proxy, n: f64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(proxy).await;
        if sample(&m, "crossfade_requests_total", &[]) >= n {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} requests were not recorded: {m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample whose line starts with `name{` and contains every `label`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn counts_match_known_traffic() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=60")], "0123456789") })
            .await;
    let proxy = Proxy::single(&origin, OVERRIDE_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for _ in 0..10 {
        get(&c, &proxy.url("/x"), &[]).await;
    }
    get(&c, &proxy.url("/x"), &[("cookie", "session=alice")]).await;
    let m = metrics_after(&proxy, 11.0).await;
    let base = [r#"site="shop""#, r#"route="all""#, r#"pool="blue""#];
    assert_eq!(
        sample(
            &m,
            "crossfade_requests_total",
            &[&base[..], &[r#"cache="miss""#]].concat()
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "crossfade_requests_total",
            &[&base[..], &[r#"cache="hit""#]].concat()
        ),
        9.0
    );
    assert_eq!(
        sample(
            &m,
            "crossfade_requests_total",
            &[&base[..], &[r#"cache="bypass""#]].concat()
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "crossfade_cache_bypass_total",
            &[r#"reason="logged-in""#]
        ),
        1.0
    );
    assert_eq!(
        sample(&m, "crossfade_cache_store_total", &[r#"outcome="stored""#]),
        1.0
    );
    assert_eq!(
        sample(&m, "crossfade_response_seconds_count", &[r#"site="shop""#]),
        11.0
    );
    assert_eq!(
        sample(&m, "crossfade_upstream_seconds_count", &[r#"site="shop""#]),
        2.0
    );
    assert_eq!(
        sample(&m, "crossfade_response_bytes_sum", &[r#"site="shop""#]),
        110.0
    );
    assert!(m.contains("crossfade_cache_objects 1"), "{m}");
    assert_eq!(
        sample(&m, "crossfade_pool_server_healthy", &[r#"pool="blue""#]),
        1.0
    );
    assert_eq!(
        sample(&m, "crossfade_pool_active", &[r#"pool="blue""#]),
        1.0
    );

    proxy
        .purge(serde_json::json!({"kind": "url", "url": "www.shop.test/x"}))
        .await;
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(
            &m,
            "crossfade_purges_total",
            &[r#"kind="url""#, r#"mode="hard""#]
        ),
        1.0
    );
    let (status, _) = proxy.admin_call(None, Method::GET, "/metrics", "").await;
    assert_eq!(status, 401, "metrics need a token like every admin call");
}

/// Requests served by two threads at once are all counted: each serving thread keeps its own
/// counters and histograms (`metrics::local`), and a scrape sums them per label set.
#[tokio::test]
async fn requests_served_on_every_thread_are_summed() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=60")], "0123456789") })
            .await;
    let proxy = Proxy::single(&origin, OVERRIDE_ALL, "[server]\nthreads = 2\n").await;
    let url = proxy.url("/x");
    let clients = (0..16).map(|i| {
        let (c, url) = (proxy.client(&["www.shop.test"]), url.clone());
        tokio::spawn(async move {
            let cookie: &[(&str, &str)] = if i % 2 == 0 {
                &[]
            } else {
                &[("cookie", "session=alice")]
            };
            for _ in 0..25 {
                assert_eq!(get(&c, &url, cookie).await.status, 200);
            }
        })
    });
    for c in clients.collect::<Vec<_>>() {
        c.await.unwrap();
    }
    let m = metrics_after(&proxy, 400.0).await;
    let site = [r#"site="shop""#];
    assert_eq!(sample(&m, "crossfade_requests_total", &site), 400.0, "{m}");
    assert_eq!(
        sample(
            &m,
            "crossfade_cache_bypass_total",
            &[r#"reason="logged-in""#]
        ),
        200.0
    );
    assert_eq!(sample(&m, "crossfade_response_seconds_count", &site), 400.0);
    assert_eq!(sample(&m, "crossfade_response_bytes_sum", &site), 4000.0);
    // Each series' buckets rise to its count.
    for series in m
        .lines()
        .filter(|l| l.starts_with("crossfade_response_seconds_count{"))
    {
        let labels = &series[series.find('{').unwrap() + 1..series.find('}').unwrap()];
        let count: f64 = series.rsplit(' ').next().unwrap().parse().unwrap();
        let buckets: Vec<f64> = m
            .lines()
            .filter(|l| l.starts_with(&format!("crossfade_response_seconds_bucket{{{labels},le=")))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{m}");
        assert_eq!(buckets.last(), Some(&count), "{m}");
    }
}

#[tokio::test]
async fn label_cardinality_stays_bounded_under_random_paths_and_hosts() {
    let origin = Origin::start(|_| async { reply(200, &[], "x") }).await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let hosts: Vec<String> = (0..50).map(|i| format!("random{i}.test")).collect();
    let mut names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    names.push("www.shop.test");
    let c = proxy.client(&names);
    for (i, h) in hosts.iter().enumerate() {
        get(&c, &proxy.url_for(h, &format!("/p{i}?q={i}")), &[]).await;
        get(&c, &proxy.url(&format!("/rand/{i}/x{i}?z={i}")), &[]).await;
    }
    let m = metrics(&proxy).await;
    let series = m
        .lines()
        .filter(|l| l.starts_with("crossfade_requests_total{"))
        .count();
    assert!(
        series <= 3,
        "100 random requests made {series} series:\n{m}"
    );
    assert!(
        !m.contains("random1.test") && !m.contains("/rand/"),
        "no client input in labels"
    );
}

/// A proxy sending statsd (prefix `store`) to the returned socket, in front of an origin
/// answering `abc`, cacheable for a minute.
async fn statsd_proxy() -> (tokio::net::UdpSocket, Origin, Proxy) {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let extra = statsd_config(&udp);
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=60")], "abc") }).await;
    let proxy = Proxy::single(&origin, OVERRIDE_ALL, &extra).await;
    (udp, origin, proxy)
}

#[tokio::test]
async fn statsd_receives_timers_and_counters_and_a_dead_statsd_costs_nothing() {
    let (udp, origin, proxy) = statsd_proxy().await;
    let c = proxy.client(&["www.shop.test"]);
    for _ in 0..3 {
        get(&c, &proxy.url("/s"), &[]).await;
    }
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 65536];
    while lines
        .iter()
        .filter(|l: &&String| l.contains(".requests:1|c"))
        .count()
        < 3
    {
        let n = tokio::time::timeout(Duration::from_secs(5), udp.recv(&mut buf))
            .await
            .expect("statsd packet")
            .unwrap();
        lines.extend(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_string),
        );
    }
    let has = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(has("store.shop.all.miss:1|c"), 1, "{lines:?}");
    assert_eq!(has("store.shop.all.hit:1|c"), 2);
    assert_eq!(has("store.shop.all.upstream_time:"), 1);
    assert_eq!(has("store.shop.all.response_size:3|ms"), 3);
    for l in lines
        .iter()
        .filter(|l| l.starts_with("store.shop.all.response_time:"))
    {
        let v: f64 = l
            .trim_start_matches("store.shop.all.response_time:")
            .trim_end_matches("|ms")
            .parse()
            .unwrap();
        assert!((0.0..5000.0).contains(&v), "{l}");
    }
    // Release timeline events are counted per kind too.
    proxy
        .purge(serde_json::json!({"kind": "key", "key": "k"}))
        .await;
    assert_eq!(
        statsd_line(&udp, ".events.purge", Duration::from_secs(5))
            .await
            .as_deref(),
        Some("store.events.purge:1|c")
    );

    // Nobody listens here: requests are not slowed down or failed.
    let dead = free_port();
    let proxy = Proxy::single(
        &origin,
        OVERRIDE_ALL,
        &format!("[metrics]\nstatsd = \"127.0.0.1:{dead}\"\n"),
    )
    .await;
    let c = proxy.client(&["www.shop.test"]);
    let started = std::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(get(&c, &proxy.url("/s"), &[]).await.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// statsd lines are batched per serving thread: many requests share a datagram, no datagram
/// is larger than one Ethernet frame's payload, and nothing is lost or held back (the last
/// lines arrive without further traffic). A datagram per request was a `send(2)` per request
/// on a socket every serving thread shares.
#[tokio::test]
async fn statsd_lines_of_many_requests_share_datagrams_and_none_is_lost() {
    let (udp, _origin, proxy) = statsd_proxy().await;
    let c = proxy.client(&["www.shop.test"]);
    until_statsd_receives(&udp, &c, &proxy.url("/first")).await;
    const N: usize = 60;
    for i in 0..N {
        assert_eq!(
            get(&c, &proxy.url(&format!("/s{i}")), &[]).await.status,
            200
        );
    }
    let (mut datagrams, mut requests, mut misses) = (0, 0, 0);
    let mut buf = vec![0u8; 65536];
    while requests < N {
        let n = tokio::time::timeout(Duration::from_secs(5), udp.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{requests} of {N} requests' lines arrived"))
            .unwrap();
        assert!(n <= 1432, "a datagram of {n} bytes");
        datagrams += 1;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        for line in text.lines() {
            assert!(
                line.starts_with("store.shop.all.") && line.contains(':') && line.contains('|'),
                "{line:?} in {text:?}"
            );
            requests += (line == "store.shop.all.requests:1|c") as usize;
            misses += (line == "store.shop.all.miss:1|c") as usize;
        }
    }
    assert_eq!((requests, misses), (N, N), "every request counted once");
    assert!(
        datagrams <= N / 3,
        "{N} requests' lines came in {datagrams} datagrams"
    );
}

/// A request that finishes while the process drains after SIGTERM still reaches statsd: its
/// lines wait in the thread's batch, which the flush keeps sending until the process exits.
#[tokio::test]
async fn statsd_lines_of_a_request_finished_while_draining_are_sent() {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let origin = Origin::start(|_| async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        reply(200, &[("cache-control", "private")], "slow")
    })
    .await;
    let extra = statsd_config(&udp);
    let proxy = Proxy::single(&origin, OVERRIDE_ALL, &extra).await;
    let c = proxy.client(&["www.shop.test"]);
    until_statsd_receives(&udp, &c, &proxy.url("/warm")).await;
    let slow = {
        let (c, url) = (c.clone(), proxy.url("/draining"));
        tokio::spawn(async move { get(&c, &url, &[]).await.status })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(proxy.pid(), "TERM");
    assert_eq!(slow.await.unwrap(), 200, "the request in flight is served");
    assert!(
        statsd_line(
            &udp,
            "store.shop.all.upstream_time:",
            Duration::from_secs(3)
        )
        .await
        .is_some(),
        "its lines reach statsd"
    );
}

/// The `[metrics]` section sending statsd (prefix `store`) to `udp`.
fn statsd_config(udp: &tokio::net::UdpSocket) -> String {
    format!(
        "[metrics]\nstatsd = \"{}\"\nstatsd_prefix = \"store\"\n",
        udp.local_addr().unwrap()
    )
}

/// Requests `url` until its lines reach `udp` without more traffic (the resolver points
/// statsd at the socket in the background, soon after start).
async fn until_statsd_receives(udp: &tokio::net::UdpSocket, c: &reqwest::Client, url: &str) {
    for _ in 0..10 {
        get(c, url, &[]).await;
        if statsd_line(udp, ".requests:1|c", Duration::from_secs(1))
            .await
            .is_some()
        {
            return;
        }
    }
    panic!("no statsd line for {url}");
}

/// Receives statsd lines until one contains `want`, or `within` passes.
async fn statsd_line(udp: &tokio::net::UdpSocket, want: &str, within: Duration) -> Option<String> {
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = tokio::time::timeout_at(deadline, udp.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&buf[..n]);
        if let Some(l) = text.lines().find(|l| l.contains(want)) {
            return Some(l.to_string());
        }
    }
}

#[tokio::test]
async fn a_statsd_name_that_does_not_resolve_never_stops_the_proxy_and_a_reload_points_it_elsewhere(
) {
    let origin = Origin::start(|_| async { reply(200, &[], "abc") }).await;
    // `.invalid` never resolves (RFC 6761).
    let proxy = Proxy::single(
        &origin,
        OVERRIDE_ALL,
        "[metrics]\nstatsd = \"statsd.no-such-host.invalid:8125\"\n",
    )
    .await;
    let c = proxy.client(&["www.shop.test"]);
    assert_eq!(get(&c, &proxy.url("/a"), &[]).await.status, 200);
    let warned = eventually(Duration::from_secs(10), || async {
        proxy.stderr().contains("statsd does not resolve")
    })
    .await;
    assert!(warned, "a warning names the problem: {}", proxy.stderr());

    // A name that resolves (localhost is 127.0.0.1 here), set by a reload.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = udp.local_addr().unwrap().port();
    let config = proxy.dir.path().join("crossfade.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace(
            "statsd.no-such-host.invalid:8125",
            &format!("localhost:{port}"),
        )
        .replace("[metrics]\n", "[metrics]\nstatsd_prefix = \"moved\"\n");
    std::fs::write(&config, text).unwrap();
    proxy.hup();
    let mut line = None;
    for _ in 0..20 {
        assert_eq!(get(&c, &proxy.url("/b"), &[]).await.status, 200);
        line = statsd_line(&udp, ".requests:1|c", Duration::from_millis(500)).await;
        if line.is_some() {
            break;
        }
    }
    assert_eq!(
        line.as_deref(),
        Some("moved.shop.all.requests:1|c"),
        "after the reload, packets go to the resolved name with the new prefix: {}",
        proxy.stderr()
    );
    assert!(
        proxy.stderr().contains("restart_required=[]"),
        "statsd and its prefix apply on reload: {}",
        proxy.stderr()
    );
}

#[tokio::test]
async fn request_ids_are_propagated_or_generated() {
    let origin = Origin::start(|seen| async move {
        let id = seen.header("x-request-id").unwrap_or("none").to_string();
        reply(200, &[], id)
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "[log]\nformat = \"json\"\n").await;
    let c = proxy.client(&["www.shop.test"]);
    let got = get(&c, &proxy.url("/a"), &[("x-request-id", "abc-123")]).await;
    assert_eq!(
        (got.body.as_str(), got.header("x-request-id")),
        ("abc-123", "abc-123")
    );
    let got = get(&c, &proxy.url("/b"), &[("x-request-id", "bad id<script>")]).await;
    assert_eq!(
        got.body.len(),
        32,
        "a malformed id is replaced: {}",
        got.body
    );
    assert_eq!(got.header("x-request-id"), got.body);
    let generated = get(&c, &proxy.url("/c"), &[]).await;
    assert_eq!(generated.body.len(), 32);
    assert_ne!(generated.body, got.body);
    let logged = eventually(Duration::from_secs(5), || async {
        proxy.stdout().contains(r#""request_id":"abc-123""#)
    })
    .await;
    assert!(logged, "the access log carries the id: {}", proxy.stdout());
}

#[tokio::test]
async fn the_access_log_says_who_asked_on_every_transport() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=60")], "x") }).await;
    let proxy = Proxy::single(&origin, OVERRIDE_ALL, "[log]\nformat = \"json\"\n").await;
    let c = proxy.client(&["www.shop.test"]);
    let who = [
        ("user-agent", "crossfade-test/1"),
        ("referer", "https://ref.test/x"),
    ];
    get(&c, &proxy.url("/hit"), &who).await;
    assert!(get(&c, &proxy.url("/hit"), &who).await.is_hit());
    let pass = [who[0], who[1], ("cookie", "session=1")];
    get(&c, &proxy.url("/pass"), &pass).await;
    let h2 = proxy.h2_client(&["www.shop.test"]);
    assert!(get(&h2, &proxy.url("/hit"), &who).await.is_hit());
    let events = || -> Vec<serde_json::Value> {
        proxy
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    assert!(eventually(Duration::from_secs(5), || async { events().len() >= 4 }).await);
    let events = events();
    let of = |path: &str, cache: &str, protocol: &str| {
        events
            .iter()
            .find(|e| e["path"] == path && e["cache"] == cache && e["protocol"] == protocol)
            .unwrap_or_else(|| panic!("no {path} {cache} {protocol} in {events:#?}"))
    };
    for e in [
        of("/hit", "miss", "HTTP/1.1"),
        of("/hit", "hit", "HTTP/1.1"),
        of("/pass", "bypass", "HTTP/1.1"),
        of("/hit", "hit", "HTTP/2"),
    ] {
        assert_eq!(e["client"], "127.0.0.1", "{e}");
        assert!(
            e["host"].as_str().unwrap().starts_with("www.shop.test"),
            "{e}"
        );
        assert_eq!(e["user_agent"], "crossfade-test/1", "{e}");
        assert_eq!(e["referer"], "https://ref.test/x", "{e}");
        let ms = e["total_ms"].as_f64().unwrap();
        assert!(
            ((ms * 1000.0).round() - ms * 1000.0).abs() < 1e-6,
            "milliseconds to the microsecond: {e}"
        );
    }
}

#[tokio::test]
async fn the_grafana_dashboard_uses_only_metrics_that_exist() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=60")], "x") }).await;
    let proxy = Proxy::single(&origin, OVERRIDE_ALL, "").await;
    get(&proxy.client(&["www.shop.test"]), &proxy.url("/g"), &[]).await;
    let exposed = metrics_after(&proxy, 1.0).await;
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana-dashboard.json"
    ))
    .unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(parsed["panels"].as_array().unwrap().len() >= 10);
    let names: std::collections::BTreeSet<&str> = dashboard
        .match_indices("crossfade_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            &rest[..rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap()]
        })
        .collect();
    // A fleet is one dashboard: a node variable, and every query filtered by it.
    let variables = parsed["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "instance" && v["multi"] == true),
        "no instance (node) variable"
    );
    for panel in parsed["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains("instance=~\"$instance\""),
                "{}: {expr} ignores the node variable",
                panel["title"]
            );
        }
    }
    // The release timeline's markers, as Grafana annotations.
    let annotation = &parsed["annotations"]["list"][0];
    assert!(
        annotation["expr"]
            .as_str()
            .is_some_and(|e| e.contains("crossfade_event_last_timestamp_seconds")),
        "{annotation}"
    );
    assert!(
        exposed.contains("crossfade_event_last_timestamp_seconds{kind=\"start\"}"),
        "the start of the process is an event"
    );
    for process in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(dashboard.contains(process), "no {process} panel");
        assert!(
            exposed.contains(&format!("# TYPE {process} ")),
            "{process} is not exposed"
        );
    }
    for family in [
        "crossfade_connections_open",
        "crossfade_fast_path_hits_total",
    ] {
        assert!(dashboard.contains(family), "no panel for {family}");
    }
    let defined = crossfade::metrics::Metrics::new().families();
    assert!(exposed.contains("# TYPE crossfade_requests_total counter"));
    for name in names {
        let family = name.trim_end_matches("_bucket");
        // Families of the registry, or of the process collector (build info).
        assert!(
            defined.iter().any(|d| d == family) || exposed.contains(&format!("# TYPE {family} ")),
            "{name} is not a crossfade metric"
        );
    }
}

#[tokio::test]
async fn open_connections_are_counted() {
    let origin = Origin::start(|_| async { reply(200, &[], "x") }).await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    // Three clients, each keeping its keep-alive connection open.
    let clients: Vec<_> = (0..3).map(|_| proxy.client(&["www.shop.test"])).collect();
    for c in &clients {
        get(c, &proxy.url("/c"), &[]).await;
    }
    let open = |m: &str| {
        sample(m, "crossfade_connections_open", &[])
            + m.lines()
                .filter(|l| l.starts_with("crossfade_connections_open "))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum::<f64>()
    };
    let m = metrics(&proxy).await;
    assert!(open(&m) >= 3.0, "{m}");
    drop(clients);
    let closed = eventually(Duration::from_secs(5), || async {
        open(&metrics(&proxy).await) < 3.0
    })
    .await;
    assert!(closed, "closed connections are no longer counted");
}

#[tokio::test]
async fn parameters_an_allow_list_drops_are_counted_logged_once_and_in_the_access_log() {
    let origin = Origin::start(|seen| async move {
        let query = seen.uri.query().unwrap_or("").to_string();
        reply(200, &[("cache-control", "max-age=60")], query)
    })
    .await;
    let rules = "[defaults]\nbypass_cookies = [\"session\"]\n[[routes]]\nname = \"search\"\n\
                 prefix = \"/search\"\nquery_keep = [\"q\"]\n";
    let proxy = Proxy::single(&origin, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let mix = get(&c, &proxy.url("/search?q=a&type=mix"), &[]).await;
    let dj = get(&c, &proxy.url("/search?q=a&type=dj"), &[]).await;
    assert_eq!(mix.body, "q=a", "the origin never saw type");
    assert!(dj.is_hit(), "one page for every type: {}", dj.cache());
    // Someone sends many made-up names: the labels stay bounded.
    for i in 0..40 {
        get(&c, &proxy.url(&format!("/search?q=b&junk{i}=1")), &[]).await;
    }
    let m = metrics_after(&proxy, 42.0).await;
    let family = "crossfade_query_params_dropped_total";
    assert_eq!(
        sample(&m, family, &["route=\"search\"", "param=\"type\""]),
        2.0,
        "{m}"
    );
    assert_eq!(sample(&m, family, &["param=\"other\""]), 21.0, "{m}");
    let labels = m.lines().filter(|l| l.starts_with(family)).count();
    assert_eq!(labels, 21, "20 names of their own and other");
    let warned = |p: &Proxy| {
        p.stderr()
            .lines()
            .filter(|l| l.contains("query_keep drops") && l.contains("\"type\""))
            .count()
    };
    assert_eq!(warned(&proxy), 1, "said once: {}", proxy.stderr());
    let logged = eventually(Duration::from_secs(5), || async {
        proxy
            .stdout()
            .lines()
            .filter(|l| l.contains("query_dropped=\"type\""))
            .count()
            == 2
    })
    .await;
    assert!(logged, "access log: {}", proxy.stdout());
}

#[tokio::test]
async fn the_process_and_its_build_are_measured() {
    let origin = Origin::start(|_| async { reply(200, &[], "x") }).await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    // CPU time is counted in clock ticks (10 ms): a proxy that has just started may have
    // spent less than one. Requests until it has spent one.
    let client = proxy.client(&["www.shop.test"]);
    let busy = eventually(Duration::from_secs(10), || async {
        for _ in 0..100 {
            get(&client, &proxy.url("/busy"), &[]).await;
        }
        let m = metrics(&proxy).await;
        !m.contains("\nprocess_cpu_seconds_total 0\n")
    })
    .await;
    assert!(busy, "no CPU time counted after requests");
    let m = metrics(&proxy).await;
    let value = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{m}"))
    };
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_cpu_seconds_total") > 0.0);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(now - started < 120.0 && started <= now, "{started}");
    let build = m
        .lines()
        .find(|l| l.starts_with("crossfade_build_info{"))
        .unwrap_or_else(|| panic!("no build info in:\n{m}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("commit=\"")
            && build.ends_with(" 1"),
        "{build}"
    );
}
