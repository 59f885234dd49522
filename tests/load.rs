//! Behaviour under concurrency and volume: request coalescing, the bounded cache, and privacy
//! with many logged-in and anonymous clients at once.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test]
async fn fifty_concurrent_requests_for_a_cold_object_make_one_origin_request() {
    let origin = Origin::start(|_| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        reply(200, &[("cache-control", "max-age=60")], "cold")
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let url = proxy.url("/cold");
    let all = futures::future::join_all((0..50).map(|_| get(&c, &url, &[]))).await;
    assert!(all.iter().all(|g| g.status == 200 && g.body == "cold"));
    assert_eq!(origin.hits(), 1, "coalesced into one origin request");
    assert!(
        all.iter().any(|g| g.cache().contains("collapsed")),
        "waiting requests say they were collapsed"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn the_cache_stays_bounded_and_serving_and_large_objects_pass_through() {
    const OBJECT: usize = 64 * 1024;
    let origin = Origin::start(|seen| async move {
        let size = if seen.uri.path() == "/large" {
            300 * 1024
        } else {
            OBJECT
        };
        reply(200, &[("cache-control", "max-age=600")], vec![b'x'; size])
    })
    .await;
    let extra = "[cache]\ncapacity = \"4MiB\"\nmax_object_size = \"256KiB\"\n";
    let proxy = Proxy::single(&origin, HONOR_ALL, extra).await;
    let c = proxy.client(&["www.shop.test"]);

    // Warm up the process (allocator, connection pools) before the baseline.
    for i in 0..8 {
        get(&c, &proxy.url(&format!("/warm/{i}")), &[]).await;
    }
    let before = rss_kib(proxy.pid());
    // 1,000 distinct 64 KiB objects, each asked twice: 16 times the capacity.
    for batch in 0..100 {
        let urls: Vec<String> = (0..10)
            .map(|i| proxy.url(&format!("/obj/{}", batch * 10 + i)))
            .collect();
        for _ in 0..2 {
            let got = futures::future::join_all(urls.iter().map(|u| get(&c, u, &[]))).await;
            assert!(got
                .iter()
                .all(|g| g.status == 200 && g.body.len() == OBJECT));
        }
    }
    let growth_mib = (rss_kib(proxy.pid()).saturating_sub(before)) / 1024;
    assert!(
        growth_mib < 32,
        "RSS grew by {growth_mib} MiB after writing 64 MiB into a 4 MiB cache"
    );

    let hot = proxy.url("/hot");
    for _ in 0..3 {
        get(&c, &hot, &[]).await;
    }
    let got = get(&c, &hot, &[]).await;
    assert!(
        got.is_hit(),
        "the full cache still stores and serves: {}",
        got.cache()
    );

    let before = origin.hits();
    for _ in 0..2 {
        let got = get(&c, &proxy.url("/large"), &[]).await;
        assert_eq!(
            got.body.len(),
            300 * 1024,
            "large objects pass through whole"
        );
        assert!(!got.is_hit());
    }
    assert_eq!(
        origin.hits(),
        before + 2,
        "objects over max_object_size are not stored"
    );
}

#[tokio::test]
async fn no_client_ever_receives_another_users_page_under_load() {
    // The origin personalises by session cookie and (wrongly) marks every page public, as a
    // PHP app with a misconfigured cache limiter does: only the edge's bypass protects users.
    let origin = Origin::start(|seen| async move {
        let user = seen
            .header("cookie")
            .unwrap_or("")
            .split(';')
            .find_map(|c| c.trim().strip_prefix("session=").map(str::to_string))
            .unwrap_or_else(|| "anonymous".into());
        tokio::time::sleep(Duration::from_millis(2)).await;
        reply(
            200,
            &[("cache-control", "public, max-age=60")],
            format!("page for {user}"),
        )
    })
    .await;
    let proxy = Proxy::single(&origin, OVERRIDE_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let mut tasks = Vec::new();
    for client in 0..40 {
        let c = c.clone();
        let base = proxy.url("");
        tasks.push(tokio::spawn(async move {
            let logged_in = client % 2 == 0;
            let user = format!("user{client}");
            let mut wrong = Vec::new();
            for i in 0..25 {
                let url = format!("{base}/page/{}", i % 5);
                let cookie = format!("theme=dark; session={user}");
                let headers: Vec<(&str, &str)> = if logged_in {
                    vec![("cookie", &cookie)]
                } else {
                    vec![]
                };
                let got = get(&c, &url, &headers).await;
                let expected = if logged_in {
                    format!("page for {user}")
                } else {
                    "page for anonymous".into()
                };
                if got.body != expected {
                    wrong.push(format!("{user} got {:?}", got.body));
                }
            }
            wrong
        }));
    }
    let mut wrong = Vec::new();
    for t in tasks {
        wrong.extend(t.await.unwrap());
    }
    assert!(
        wrong.is_empty(),
        "private pages leaked: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    assert!(
        origin.hits() >= 500,
        "every logged-in request reached the origin"
    );
}

/// Started at a soft limit of 256 open files (a shell's or service manager's default is often
/// 1,024), crossfade raises it to the hard limit and 400 clients connected at once all get
/// their page; at the old limit every accept past it fails and those clients wait for ever.
#[tokio::test]
async fn four_hundred_clients_at_once_are_served_when_started_at_a_low_open_files_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=60")], "page") }).await;
    let site = SiteSpec {
        name: "shop",
        hosts: &["www.shop.test"],
        origin: origin.addr,
        rules: HONOR_ALL,
    };
    let proxy = Proxy::start_limited(&[site], "", Some(256)).await;
    let c = proxy.client(&["www.shop.test"]);
    assert!(get(&c, &proxy.url("/p"), &[]).await.status == 200);
    // Every connection is open before the first request is written: 400 descriptors at once.
    let mut conns = Vec::new();
    for _ in 0..400 {
        conns.push(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
    }
    // Kept-alive connections, each held until every answer is in: none frees a descriptor.
    let answers = futures::future::join_all(conns.into_iter().map(|mut conn| async move {
        let request = b"GET /p HTTP/1.1\r\nHost: www.shop.test\r\n\r\n";
        conn.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let read = async {
            let mut chunk = [0u8; 4096];
            while !answer.ends_with(b"page") {
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let text = match tokio::time::timeout(Duration::from_secs(20), read).await {
            Ok(()) => String::from_utf8_lossy(&answer).into_owned(),
            Err(_) => String::from("(no answer in 20 s)"),
        };
        (text, conn)
    }))
    .await;
    let served = answers
        .iter()
        .filter(|(a, _)| a.starts_with("HTTP/1.1 200") && a.ends_with("page"))
        .count();
    let last = answers.last().map(|(a, _)| a);
    assert_eq!(served, 400, "one of the answers: {last:?}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files"));
    let soft: u64 = open_files
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(soft > 256, "soft limit not raised: {open_files:?}");
}
