//! The dashboard end to end in real headless Chromium, driven through ChromeDriver (Debian's
//! `chromium` and `chromium-driver`; `.ci/run` installs them): the login form (a wrong token
//! is refused, no token in any URL or cookie), then, with traffic running and a canary, a flip
//! and a maintenance window performed meanwhile, the rates on the page against the requests
//! sent, the markers of those events on the charts, the pool's errors apart from the edge's own
//! 503s, and the request count against `/metrics`.
//!
//! `CROSSFADE_SCREENSHOTS=<dir>` saves what the browser showed (the README's pictures).

mod common;
use common::*;
use http::Method;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A ChromeDriver with one headless Chromium session, ended (and killed) on drop.
struct Browser {
    http: reqwest::Client,
    base: String,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
    /// Chromium's scratch directories (`TMPDIR`): left in /tmp, one or two per session.
    _scratch: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        use std::os::unix::process::CommandExt;
        let scratch = tempfile::tempdir().unwrap();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", scratch.path())
            // Its own process group, so that drop ends the Chromium it starts too.
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect(
                "chromedriver must be installed (apt-get install chromium-driver; .ci/run does it)",
            );
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let ready = eventually(Duration::from_secs(10), || async {
            http.get(format!("{root}/status"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(ready, "chromedriver did not start");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-background-networking", "--disable-sync",
                         "--window-size=1400,1600",
                         format!("--user-data-dir={}", profile.path().display())],
            }
        }}});
        let answer = post_json(&http, &format!("{root}/session"), &caps).await;
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"))
            .to_string();
        Browser {
            http,
            base: format!("{root}/session/{id}"),
            driver,
            _profile: profile,
            _scratch: scratch,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let answer = match method {
            Method::GET => {
                let text = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                serde_json::from_str(&text).unwrap()
            }
            _ => post_json(&self.http, &url, &body).await,
        };
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(Method::POST, "/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    async fn js(&self, script: &str) -> Value {
        self.call(
            Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                Method::POST,
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.call(
            Method::POST,
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.call(Method::POST, &format!("/element/{e}/click"), json!({}))
            .await;
    }

    /// Waits until `script` returns true in the page.
    async fn until(&self, script: &str, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.js(script).await == Value::Bool(true) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Opens `proxy`'s dashboard and logs in with `token` through its form.
    async fn log_in(&self, proxy: &Proxy, token: &str) {
        self.open(&format!("http://{}/dashboard", proxy.admin))
            .await;
        let form = self
            .until(
                "return document.querySelector('#token') !== null",
                Duration::from_secs(10),
            )
            .await;
        assert!(form, "the dashboard's login form");
        self.type_into("#token", token).await;
        self.click("#login button").await;
    }

    async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("CROSSFADE_SCREENSHOTS") else {
            return;
        };
        use base64::Engine;
        let png = self.call(Method::GET, "/screenshot", Value::Null).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), bytes).unwrap();
    }
}

/// WebDriver speaks JSON over HTTP.
async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Value {
    let text = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: killing chromedriver alone left its Chromium processes running
        // (about forty per suite run, to the end of CI).
        // SAFETY: kill(2) on the process group this test started; no memory is involved.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

const RULES: &str = r#"
[[routes]]
name = "pages"
prefix = "/p/"
mode = "override"
edge_ttl = "60s"
[[routes]]
name = "checkout"
prefix = "/checkout"
mode = "pass"
"#;

async fn release_origin(name: &'static str, hash: &'static str) -> Origin {
    Origin::start(move |seen| async move {
        if seen.uri.path() == "/health" {
            return reply(200, &[("x-release", name), ("x-asset-hash", hash)], "ok");
        }
        reply(200, &[], format!("page of {name}"))
    })
    .await
}

/// The `shop` site: pools blue and green, health-checked every 200 ms.
fn shop(blue: &Origin, green: &Origin) -> String {
    let pool = |name: &str, o: &Origin| {
        format!(
            "[sites.pools.{name}]\nservers = [\"{}\"]\nhealth_path = \"/health\"\n\
             health_interval = \"200ms\"\nrise = 1\nfall = 1\n",
            o.addr
        )
    };
    format!(
        "[[sites]]\nname = \"shop\"\nhosts = [\"www.shop.test\"]\nrules = \"shop.rules.toml\"\n\
         active_pool = \"blue\"\n{}{}",
        pool("blue", blue),
        pool("green", green)
    )
}

/// The text of the first element matching `css`.
fn text_of(css: &str) -> String {
    format!("const e = document.querySelector('{css}'); return e ? e.textContent : null;")
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
async fn the_dashboard_logs_in_with_a_form_and_shows_rates_markers_and_whose_errors() {
    let (blue, green) = (
        release_origin("blue", "b1").await,
        release_origin("green", "g1").await,
    );
    let proxy = Proxy::start_toml(&shop(&blue, &green), &[("shop", RULES)], "").await;

    // Traffic at a steady pace for the whole test, counted as it is sent.
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (c, sent, stop) = (proxy.client(&["www.shop.test"]), sent.clone(), stop.clone());
        let urls: Vec<String> = (0..5).map(|i| proxy.url(&format!("/p/{i}"))).collect();
        let checkout = proxy.url("/checkout/pay");
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let url = if i % 4 == 3 { &checkout } else { &urls[i % 5] };
                get(&c, url, &[]).await;
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    let browser = Browser::start().await;
    let page = format!("http://{}/dashboard", proxy.admin);
    browser.open(&page).await;
    assert!(
        browser
            .until(
                "return !document.getElementById('login').classList.contains('hidden')",
                Duration::from_secs(10)
            )
            .await,
        "without a session the page shows its login form"
    );
    browser.type_into("#token", "wrong-token-wrong-token").await;
    browser.click("#login button").await;
    assert!(
        browser
            .until(
                "const e = document.querySelector('#login-error'); return e !== null && e.textContent === 'wrong token';",
                Duration::from_secs(5)
            )
            .await,
        "a wrong token is refused"
    );
    let cookies = browser.call(Method::GET, "/cookie", Value::Null).await;
    assert_eq!(cookies, json!([]), "a refused login sets no cookie");
    browser.type_into("#token", READ_TOKEN).await;
    browser.click("#login button").await;
    assert!(
        browser
            .until(
                "return !document.getElementById('board').classList.contains('hidden') && document.querySelector('td[data-metric]') !== null",
                Duration::from_secs(10)
            )
            .await,
        "the right token opens the dashboard"
    );

    // A release during the traffic: a canary, a flip, a maintenance window.
    let change = |path: &'static str, body: Value| {
        let proxy = &proxy;
        async move {
            let (status, answer) = proxy
                .admin_call(Some(RELEASE_TOKEN), Method::POST, path, &body.to_string())
                .await;
            assert_eq!(status, 200, "{path}: {answer}");
        }
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    change(
        "/pools/canary",
        json!({"site": "shop", "pool": "green", "percent": 10}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    browser.screenshot("dashboard-canary.png").await;
    change("/pools/flip", json!({"site": "shop", "pool": "green"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    change(
        "/maintenance",
        json!({"site": "shop", "route": "checkout", "on": true}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3000)).await;

    // The markers of the three events, on the charts, with the event on hover.
    let marked = browser
        .until(
            "return ['canary_start', 'flip', 'maintenance_on'].every(k => document.querySelectorAll('.marker[data-kind=' + k + ']').length >= 5)",
            Duration::from_secs(6),
        )
        .await;
    assert!(
        marked,
        "markers on every chart: {}",
        browser
            .js("return [...document.querySelectorAll('.marker')].map(m => m.dataset.kind).join(',')")
            .await
    );
    let flip_title = browser
        .js("return document.querySelector('.marker[data-kind=flip]').title")
        .await;
    assert!(
        flip_title
            .as_str()
            .is_some_and(|t| t.ends_with("release: flip blue + canary green 10% → green")),
        "{flip_title}"
    );
    browser.screenshot("dashboard-release.png").await;

    // A table cell opens the charts of its route and pool. (Clicked from the page itself: the
    // tables are redrawn every 2 s, so an element WebDriver found may be gone when it clicks.)
    browser
        .js("document.querySelector('td[data-metric=requests][data-site=shop][data-route=pages][data-pool=green]').click()")
        .await;
    let focused = browser
        .until(
            "const h = document.querySelector('.focus:not(.hidden) h3'); return h !== null && h.textContent === 'focus: shop · pages · green' && document.querySelectorAll('.focus .u-over').length === 5;",
            Duration::from_secs(6),
        )
        .await;
    assert!(
        focused,
        "clicking a cell opens that route's and pool's charts"
    );

    // The rate on the page against the requests sent (the page polls every 2 s).
    let shown = browser
        .js(&text_of(
            "td[data-metric=rate_per_second][data-site=shop][data-pool=all]",
        ))
        .await;
    let shown: f64 = shown.as_str().unwrap_or("0").parse().unwrap();
    // Sent since the process started (its statistics say when, to the millisecond).
    let (_, data) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/dashboard/data", "")
        .await;
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - data["started_ms"].as_u64().unwrap();
    let expected = sent.load(Ordering::Relaxed) as f64 / (since_ms as f64 / 1000.0);
    assert!(
        (shown - expected).abs() <= expected * 0.10,
        "the page says {shown} req/s; {expected:.2} were sent per second"
    );

    // Maintenance 503s are the edge's (the site's row), not green's.
    let green_errors = browser
        .js(&text_of(
            "td[data-metric=origin_error_rate][data-site=shop][data-pool=green]",
        ))
        .await;
    assert_eq!(green_errors, json!("0.0%"), "the pool failed nothing");
    let edge = browser
        .js(&text_of(
            "td[data-metric=edge_error_rate][data-site=shop][data-pool=all]",
        ))
        .await;
    let edge: f64 = edge
        .as_str()
        .unwrap_or("0%")
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(
        edge > 0.0,
        "the maintenance pages are the edge's 5xx: {edge}"
    );

    // No token anywhere a browser keeps things: not in the URL, not in a cookie.
    let url = browser.call(Method::GET, "/url", Value::Null).await;
    assert!(!url.to_string().contains(READ_TOKEN), "{url}");
    let cookies = browser.call(Method::GET, "/cookie", Value::Null).await;
    let session = cookies
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "crossfade_session"))
        .unwrap_or_else(|| panic!("no session cookie: {cookies}"));
    assert!(!cookies.to_string().contains(READ_TOKEN), "{cookies}");
    assert_eq!(session["value"].as_str().map(str::len), Some(64));
    assert_eq!(
        (session["httpOnly"].as_bool(), session["sameSite"].as_str()),
        (Some(true), Some("Strict"))
    );

    // Traffic stopped: the count on the page is the count in /metrics.
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let total = metric_requests(&proxy).await;
    let matches = browser
        .until(
            &format!(
                "const e = document.querySelector('td[data-metric=requests][data-site=shop][data-pool=all]'); return e !== null && Number(e.textContent) === {total};"
            ),
            Duration::from_secs(6),
        )
        .await;
    assert!(matches, "the page's count is /metrics' {total}");

    // Old ways in are closed: a token in a URL, and the dashboard's data without a session.
    let (status, _) = proxy
        .admin_call(
            None,
            Method::GET,
            &format!("/dashboard/login?token={READ_TOKEN}"),
            "",
        )
        .await;
    assert_eq!(status, 405);
    let (status, _) = proxy
        .admin_call(None, Method::GET, "/dashboard/data", "")
        .await;
    assert_eq!(status, 401);
}

/// A canary the judge rolls back is on the page: the rollback's marker and timeline line say
/// it was the judge, and why.
#[tokio::test]
async fn a_rollback_by_the_judge_is_on_the_charts_and_the_timeline() {
    let blue = release_origin("blue", "b1").await;
    let failing = Origin::start(|seen| async move {
        match seen.uri.path() {
            "/health" => reply(200, &[("x-release", "green"), ("x-asset-hash", "g1")], "ok"),
            _ => reply(500, &[], "green is broken"),
        }
    })
    .await;
    let sites = shop(&blue, &failing);
    let judge = "[release.judge]\nwindow = \"30s\"\ninterval = \"200ms\"\nmin_requests = 15\n\
                 max_error_rate_increase = 0.05\n";
    let proxy = Proxy::start_toml(&sites, &[("shop", RULES)], judge).await;
    let browser = Browser::start().await;
    browser.log_in(&proxy, READ_TOKEN).await;
    let (status, _) = proxy
        .admin_call(
            Some(RELEASE_TOKEN),
            Method::POST,
            "/pools/canary",
            &json!({"site": "shop", "pool": "green", "percent": 50}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    // New visitors (each its own cookie jar) on the pass route: half of them reach green.
    for i in 0..80 {
        let c = reqwest::Client::builder()
            .no_proxy()
            .cookie_store(true)
            .resolve("www.shop.test", proxy.addr)
            .build()
            .unwrap();
        get(&c, &proxy.url(&format!("/checkout/v{i}")), &[]).await;
    }
    let shown = browser
        .until(
            "const m = document.querySelector('.marker[data-kind=rollback]'); return m !== null && m.title.includes('judge: rollback');",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        shown,
        "the judge's rollback is marked: {}",
        browser
            .js("return [...document.querySelectorAll('.marker')].map(m => m.title).join(' | ')")
            .await
    );
    let line = browser
        .js("return document.querySelector('#events li[data-kind=rollback]').textContent")
        .await;
    assert!(
        line.as_str()
            .is_some_and(|l| l.contains("judge") && l.contains("error-rate")),
        "{line}"
    );
    // Its pool errors are green's, shown as such.
    let green_errors = browser
        .js(&text_of(
            "td[data-metric=origin_error_rate][data-site=shop][data-pool=green]",
        ))
        .await;
    assert_eq!(green_errors, json!("100.0%"));
    browser.screenshot("dashboard-judge-rollback.png").await;
}

/// With `[fleet]`, one page shows every node and the fleet's total.
#[tokio::test]
async fn a_fleet_is_one_page() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=60")], "x") }).await;
    let redis = Redis::start().await;
    let n1 = Proxy::single(&origin, OVERRIDE_ALL, &redis.fleet("edge-1")).await;
    let n2 = Proxy::single(&origin, OVERRIDE_ALL, &redis.fleet("edge-2")).await;
    let c = n1.client(&["www.shop.test"]);
    for i in 0..7 {
        get(&c, &n1.url(&format!("/f/{i}")), &[]).await;
    }
    let browser = Browser::start().await;
    browser.log_in(&n2, READ_TOKEN).await;
    let find = |node: &str| {
        format!("const e = document.querySelector('#fleet td[data-node=\"{node}\"][data-metric=requests]');")
    };
    let shown = browser
        .until(
            &format!(
                "{} return e !== null && e.textContent === '7';",
                find("edge-1")
            ),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        shown,
        "node 2's page shows node 1's 7 requests: {}",
        browser
            .js("return document.getElementById('fleet').innerText")
            .await
    );
    // Node 2's own row and the total, read in one go (the table is redrawn every 2 s). Node 2
    // had no traffic of this test's; its count is read rather than assumed, since a port it
    // holds may have been another test's moments before.
    let rows = browser
        .js(&format!(
            "{} const own = e ? Number(e.textContent) : null; \
             const total = Number([...document.querySelectorAll('#fleet tr')].pop().querySelector('td[data-metric=requests]').textContent); \
             const one = Number(document.querySelector('#fleet td[data-node=\"edge-1\"][data-metric=requests]').textContent); \
             return [one, own, total];",
            find("edge-2")
        ))
        .await;
    let [one, own, total] = [0, 1, 2].map(|i| rows[i].as_f64().unwrap_or(-1.0));
    assert!(own >= 0.0, "node 2 has its row: {rows}");
    assert_eq!(total, one + own, "the fleet total: {rows}");
}

/// Another environment (staging) beside this edge: its summary fetched by this admin server
/// with staging's read token, shown route by route; an environment that does not answer is
/// named, not waited for.
#[tokio::test]
async fn another_environment_is_shown_beside_this_edge_and_its_token_stays_on_the_server() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=60")], "x") }).await;
    let staging = Proxy::single(&origin, OVERRIDE_ALL, "").await;
    let sc = staging.client(&["www.shop.test"]);
    for i in 0..4 {
        get(&sc, &staging.url(&format!("/s/{i}")), &[]).await;
    }
    let environments = format!(
        "[[dashboard.environments]]\nname = \"staging\"\nurl = \"http://{}\"\ntoken = \"{READ_TOKEN}\"\n\
         [[dashboard.environments]]\nname = \"gone\"\nurl = \"http://127.0.0.1:{}\"\ntoken = \"{READ_TOKEN}\"\n",
        staging.admin,
        free_port()
    );
    let prod = Proxy::single(&origin, OVERRIDE_ALL, &environments).await;
    let pc = prod.client(&["www.shop.test"]);
    for i in 0..6 {
        get(&pc, &prod.url(&format!("/p/{i}")), &[]).await;
    }
    let (_, data) = prod
        .admin_call(
            Some(READ_TOKEN),
            Method::GET,
            "/dashboard/data?window=60",
            "",
        )
        .await;
    let envs = &data["environments"];
    assert_eq!(envs[0]["name"], "staging");
    assert_eq!(envs[0]["sites"][0]["summary"]["requests"], 4, "{envs}");
    assert_eq!(envs[1]["ok"], false);
    assert!(
        envs[1]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("cannot reach")),
        "{envs}"
    );

    let browser = Browser::start().await;
    browser.log_in(&prod, READ_TOKEN).await;
    let find = |env: &str| {
        format!("const e = document.querySelector('table.environments td[data-env=\"{env}\"][data-route=all][data-key=rate_per_second]');")
    };
    let cell = |env: &str| format!("{} return e ? e.textContent : null;", find(env));
    assert!(
        browser
            .until(
                &format!("{} return e !== null;", find("staging")),
                Duration::from_secs(10)
            )
            .await,
        "the comparison table is drawn"
    );
    let staging_rate: f64 = browser
        .js(&cell("staging"))
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let prod_rate: f64 = browser
        .js(&cell("this edge"))
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        staging_rate > 0.0 && prod_rate > 0.0,
        "{staging_rate} {prod_rate}"
    );
    let header = browser
        .js("return document.querySelector('table.environments').rows[0].textContent")
        .await;
    assert!(
        header
            .as_str()
            .is_some_and(|h| h.contains("gone (unavailable: cannot reach")),
        "{header}"
    );
    // The page (and everything it fetched) never held staging's token: only a session.
    let html = browser
        .js("return document.documentElement.outerHTML")
        .await;
    assert!(!html.to_string().contains(READ_TOKEN));
}
