//! The dashboard end to end in headless Chromium (Debian's `chromium`): log in with a token,
//! load the page, generate traffic, and check that the numbers on the page move and match
//! `/metrics`.

mod common;
use common::*;
use http::Method;
use std::process::Command;

/// The page's DOM after its scripts ran (`--dump-dom` with a virtual time budget).
fn render(proxy: &Proxy) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/dashboard/login?token={READ_TOKEN}", proxy.admin);
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium must be installed (apt-get install chromium; .ci/run does it)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The number in the first element carrying all `attrs`.
fn number(dom: &str, attrs: &[&str]) -> f64 {
    let start = dom
        .match_indices("<td ")
        .map(|(i, _)| i)
        .find(|&i| {
            let tag = &dom[i..i + dom[i..].find('>').unwrap()];
            attrs.iter().all(|a| tag.contains(a))
        })
        .unwrap_or_else(|| panic!("no cell with {attrs:?} in:\n{dom}"));
    let text = &dom[start + dom[start..].find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()]
        .trim_end_matches('%')
        .parse()
        .unwrap()
}

async fn metric_requests(proxy: &Proxy) -> f64 {
    let (_, m) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/metrics", "")
        .await;
    m.as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("crossfade_requests_total{") && l.contains(r#"site="shop""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn the_dashboard_shows_live_numbers_that_match_metrics() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=60")], "x") }).await;
    let proxy = Proxy::single(&origin, OVERRIDE_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for i in 0..10 {
        get(&c, &proxy.url(&format!("/p/{}", i % 3)), &[]).await;
    }
    let dom = render(&proxy);
    assert!(
        dom.contains("uplot"),
        "charts were drawn by the locally served uPlot"
    );
    let shown = number(
        &dom,
        &[
            r#"data-metric="requests""#,
            r#"data-site="shop""#,
            r#"data-pool="blue""#,
        ],
    );
    assert_eq!(shown, 10.0);
    assert_eq!(
        shown,
        metric_requests(&proxy).await,
        "the page matches /metrics"
    );
    let hit_ratio = number(
        &dom,
        &[
            r#"data-metric="hit_ratio""#,
            r#"data-site="shop""#,
            r#"data-pool="blue""#,
        ],
    );
    assert_eq!(hit_ratio, 70.0, "7 hits of 10");

    for _ in 0..5 {
        get(&c, &proxy.url("/p/0"), &[]).await;
    }
    let dom = render(&proxy);
    let moved = number(
        &dom,
        &[
            r#"data-metric="requests""#,
            r#"data-site="shop""#,
            r#"data-pool="blue""#,
        ],
    );
    assert_eq!(moved, 15.0, "the numbers move with traffic");
    assert_eq!(moved, metric_requests(&proxy).await);

    // Before/after a moment: everything so far is "before" a moment one second from now.
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let (_, data) = proxy
        .admin_call(
            Some(READ_TOKEN),
            Method::GET,
            &format!("/dashboard/data?window=300&compare_at={at}"),
            "",
        )
        .await;
    let blue = &data["sites"][0]["compare"]["pools"][0];
    assert_eq!(
        (blue["pool"].as_str(), blue["before"]["requests"].as_u64()),
        (Some("blue"), Some(15)),
        "{data}"
    );
    assert_eq!(blue["after"]["requests"], 0);

    let (status, _) = proxy.admin_call(None, Method::GET, "/dashboard", "").await;
    assert_eq!(status, 401, "the dashboard needs a token");
    let (status, _) = proxy
        .admin_call(
            None,
            Method::GET,
            "/dashboard/login?token=wrong-wrong-wrong",
            "",
        )
        .await;
    assert_eq!(status, 401);
}
