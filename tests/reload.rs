//! Hot reload and binary upgrade: a valid change takes effect without a restart and keeps the
//! cache, a broken config is rejected with every error and the old one keeps serving, and
//! neither a reload nor a binary upgrade fails a request under continuous load.

mod common;
use common::*;
use http::Method;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

fn rules_file(proxy: &Proxy) -> std::path::PathBuf {
    proxy.dir.path().join("shop.rules.toml")
}

#[tokio::test]
async fn sighup_applies_a_valid_change_and_keeps_the_cache() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=600")], "page") }).await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    get(&c, &proxy.url("/kept"), &[]).await;
    get(&c, &proxy.url("/private/x"), &[]).await;
    assert!(get(&c, &proxy.url("/private/x"), &[]).await.is_hit());

    let new_rules = format!(
        "{HONOR_ALL}\n[[routes]]\nname = \"private\"\nprefix = \"/private/\"\nmode = \"pass\"\n"
    );
    std::fs::write(rules_file(&proxy), new_rules).unwrap();
    proxy.hup();
    let applied = eventually(Duration::from_secs(5), || async {
        get(&c, &proxy.url("/private/x"), &[])
            .await
            .cache()
            .contains("detail=route-pass")
    })
    .await;
    assert!(applied, "the new route is in force after SIGHUP");
    assert!(
        get(&c, &proxy.url("/kept"), &[]).await.is_hit(),
        "cached objects survive a reload"
    );
    let (_, m) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/metrics", "")
        .await;
    assert!(m
        .as_str()
        .unwrap()
        .contains(r#"crossfade_config_reloads_total{result="ok"} 1"#));
}

#[tokio::test]
async fn a_broken_config_is_rejected_with_every_error_and_the_old_one_serves() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=600")], "page") }).await;
    let extra = format!(
        "[[admin.tokens]]\nname = \"root\"\ntoken = \"{ADMIN_TOKEN}\"\nscopes = [\"admin\"]\n"
    );
    let proxy = Proxy::single(&origin, OVERRIDE_ALL, &extra).await;
    let c = proxy.client(&["www.shop.test"]);
    get(&c, &proxy.url("/a"), &[]).await;
    std::fs::write(rules_file(&proxy), "[[routes]]\nname = \"x\"\nprefix = \"/\"\nmode = \"override\"\nedge_ttl = \"soon\"\n[[routes]]\nname = \"y\"\nglob = \"/[\"\n").unwrap();
    let (status, answer) = proxy
        .admin_call(Some(ADMIN_TOKEN), Method::POST, "/reload", "")
        .await;
    assert_eq!(status, 422, "{answer}");
    let issues: Vec<String> = answer["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect();
    assert!(
        issues
            .iter()
            .any(|i| i.contains("shop.rules.toml:5: routes[0].edge_ttl")),
        "{issues:?}"
    );
    assert!(
        issues
            .iter()
            .any(|i| i.contains("shop.rules.toml:8: routes[1].glob")),
        "{issues:?}"
    );
    assert!(
        get(&c, &proxy.url("/a"), &[]).await.is_hit(),
        "the running config and cache keep serving"
    );
    let (status, _) = proxy
        .admin_call(Some(PURGE_TOKEN), Method::POST, "/reload", "")
        .await;
    assert_eq!(status, 403, "reload needs the admin scope");
    let (_, m) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/metrics", "")
        .await;
    assert!(m
        .as_str()
        .unwrap()
        .contains(r#"crossfade_config_reloads_total{result="rejected"} 1"#));
    assert!(proxy.stderr().contains("config reload rejected"));
}

/// Runs `workers` clients in a loop until `stop`; returns (ok, failed).
fn load(
    proxy: &Proxy,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, Vec<String>)>> {
    (0..workers)
        .map(|w| {
            let (c, url, stop) = (
                proxy.client(&["www.shop.test"]),
                proxy.url(&format!("/live/{w}")),
                stop.clone(),
            );
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match c.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.text().await {
                            Ok(_) => ok += 1,
                            Err(e) => failed.push(format!("body: {e}")),
                        },
                        Ok(r) => failed.push(format!("status {}", r.status())),
                        Err(e) => failed.push(format!("{e:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

async fn finish(handles: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>) -> (u64, Vec<String>) {
    let (mut ok, mut failed) = (0, Vec::new());
    for h in handles {
        let (o, f) = h.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    (ok, failed)
}

#[tokio::test]
async fn reloads_and_a_binary_upgrade_under_load_fail_no_request() {
    let origin = Origin::start(|_| async { reply(200, &[], "live") }).await;
    let rules = "[[routes]]\nname = \"live\"\nprefix = \"/live/\"\nmode = \"pass\"\n";
    let mut proxy = Proxy::single(&origin, rules, "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let handles = load(&proxy, 4, stop.clone());
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.hup();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.upgrade().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = finish(handles).await;
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 200, "only {ok} requests");
    let c = proxy.client(&["www.shop.test"]);
    assert_eq!(
        get(&c, &proxy.url("/live/after"), &[]).await.status,
        200,
        "the new process serves"
    );
    // The timeline (read by the new process from the file the old one wrote): the reloads,
    // and the upgrade from the old process's version to this one.
    let (_, answer) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/events", "")
        .await;
    let kinds: Vec<(&str, &str)> = answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["what"].as_str().unwrap()))
        .collect();
    let version = format!("{} (", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        kinds.iter().filter(|(k, _)| *k == "reload").count(),
        3,
        "{kinds:?}"
    );
    // (The old process's own "stop" is in its log and, usually, in the file before the new one
    // reads it; both follow one signal and race, so it is not asserted here.)
    let upgrade = kinds.iter().any(|(k, w)| {
        *k == "upgrade" && w.starts_with(&format!("binary upgrade: {version}")) && w.contains(" → ")
    });
    assert!(
        upgrade,
        "the upgrade names the version it replaced: {kinds:?}"
    );
}

#[tokio::test]
async fn a_reload_keeps_what_the_edge_learned_of_its_pools() {
    // `/slow` holds its answer for 8 s (room for a reload on a loaded machine); `/health`
    // announces the release.
    let origin = Origin::start(|seen| async move {
        match seen.uri.path() {
            "/health" => reply(200, &[("x-release", "r7")], "ok"),
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(8)).await;
                reply(200, &[], "slow")
            }
            _ => reply(200, &[("cache-control", "max-age=600")], "page"),
        }
    })
    .await;
    let site = |rules: &str| {
        format!(
            "[[sites]]\nname = \"shop\"\nhosts = [\"www.shop.test\"]\nrules = \"{rules}\"\n\
             [sites.pools.blue]\nservers = [\"{}\"]\nmax_inflight = 2\nmax_wait = \"200ms\"\n\
             health_path = \"/health\"\nhealth_interval = \"100ms\"\n",
            origin.addr
        )
    };
    let other_rules =
        format!("{HONOR_ALL}\n[[routes]]\nname = \"x\"\nprefix = \"/x/\"\nmode = \"pass\"\n");
    let proxy = Proxy::start_toml(
        &site("shop.rules.toml"),
        &[("shop", HONOR_ALL), ("other", &other_rules)],
        "",
    )
    .await;
    let announced = eventually(Duration::from_secs(3), || async {
        let (_, pools) = proxy
            .admin_call(Some(READ_TOKEN), Method::GET, "/pools", "")
            .await;
        pools["sites"][0]["pools"][0]["release"] == "r7"
    })
    .await;
    assert!(announced);
    // Both slots taken, then a reload (another rules file) while they are held.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let c = proxy.client(&["www.shop.test"]);
            let url = proxy.url("/slow");
            tokio::spawn(async move { get(&c, &url, &[("cookie", "session=1")]).await.status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let config = proxy.dir.path().join("crossfade.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("shop.rules.toml", "other.rules.toml")).unwrap();
    proxy.hup();
    let c = proxy.client(&["www.shop.test"]);
    let reloaded = eventually(Duration::from_secs(6), || async {
        proxy.stderr().contains("config reloaded")
    })
    .await;
    assert!(reloaded);
    let third = get(&c, &proxy.url("/slow"), &[("cookie", "session=1")]).await;
    assert_eq!(
        (third.status, third.header("cache-status")),
        (503, "crossfade; detail=origin-busy"),
        "the slots held before the reload still count after it"
    );
    let (_, pools) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/pools", "")
        .await;
    let pool = &pools["sites"][0]["pools"][0];
    assert_eq!(
        pool["release"], "r7",
        "the announced release is kept: {pool}"
    );
    assert_eq!(pool["slots_in_use"], 2, "{pool}");
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn a_kept_alive_connection_passes_to_the_servers_a_reload_gave_its_pool() {
    // A connection's passes borrow their pool from the registry as the connection last saw
    // it (`Registry::held`): a reload that rebuilds the pools must reach its next pass.
    let a =
        Origin::start(|_| async { reply(200, &[("cache-control", "private")], "from a") }).await;
    let b =
        Origin::start(|_| async { reply(200, &[("cache-control", "private")], "from b") }).await;
    let site = |server: std::net::SocketAddr| {
        format!(
            "[[sites]]\nname = \"shop\"\nhosts = [\"www.shop.test\"]\nrules = \"shop.rules.toml\"\n\
             [sites.pools.blue]\nservers = [\"{server}\"]\n"
        )
    };
    let rules = "[defaults]\nbypass_cookies = [\"session\"]\n";
    let proxy = Proxy::start_toml(&site(a.addr), &[("shop", rules)], "").await;
    let c = proxy.client(&["www.shop.test"]);
    let member = [("cookie", "session=1")];
    for _ in 0..3 {
        assert_eq!(
            get(&c, &proxy.url("/account"), &member).await.body,
            "from a"
        );
    }
    let config = proxy.dir.path().join("crossfade.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let moved = text.replace(&a.addr.to_string(), &b.addr.to_string());
    assert_ne!(text, moved);
    std::fs::write(&config, moved).unwrap();
    proxy.hup();
    let reloaded = eventually(Duration::from_secs(6), || async {
        proxy.stderr().contains("config reloaded")
    })
    .await;
    assert!(reloaded);
    // The same client, so the same kept-alive connection.
    for _ in 0..3 {
        assert_eq!(
            get(&c, &proxy.url("/account"), &member).await.body,
            "from b"
        );
    }
    assert_eq!(
        b.hits(),
        3,
        "every pass after the reload reached the new server"
    );
}

/// Runs `crossfade reload` against `proxy`'s admin API; (success, stdout, stderr).
fn cli_reload(proxy: &Proxy, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .arg("reload")
        .args(args)
        .args(["--admin", &proxy.admin.to_string(), "--token", ADMIN_TOKEN])
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_reload_says_what_took_effect_and_what_needs_a_restart_and_check_changes_nothing() {
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=600")], "page") }).await;
    let extra = format!(
        "[[admin.tokens]]\nname = \"root\"\ntoken = \"{ADMIN_TOKEN}\"\nscopes = [\"admin\"]\n"
    );
    let proxy = Proxy::single(&origin, HONOR_ALL, &extra).await;
    let c = proxy.client(&["www.shop.test"]);
    get(&c, &proxy.url("/private/x"), &[]).await;
    assert!(get(&c, &proxy.url("/private/x"), &[]).await.is_hit());

    // Three settings fixed at start, two applied on reload, and a new route.
    let config = proxy.dir.path().join("crossfade.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("grace_period = \"1s\"", "grace_period = \"2s\"")
        + "[cache]\ncapacity = \"32MiB\"\n[log]\nformat = \"json\"\n[release]\nretry_after = \"7s\"\n\
           [metrics]\nstatsd_prefix = \"edge\"\n";
    std::fs::write(&config, text).unwrap();
    let new_rules = format!(
        "{HONOR_ALL}\n[[routes]]\nname = \"private\"\nprefix = \"/private/\"\nmode = \"pass\"\n"
    );
    std::fs::write(rules_file(&proxy), new_rules).unwrap();
    let fixed = ["server.grace_period", "cache.capacity", "log.format"];
    let applied = [
        "release.retry_after",
        "metrics.statsd_prefix",
        "sites[shop]",
    ];

    // --check: the same lists, and nothing changes.
    let (ok, answer, stderr) = cli_reload(&proxy, &["--check"]);
    assert!(ok, "{answer}");
    assert_eq!(answer["valid"], true);
    assert_eq!(strings(&answer["restart_required"]), fixed, "{answer}");
    assert_eq!(strings(&answer["applied"]), applied, "{answer}");
    assert!(
        stderr.contains(
            "server.grace_period, cache.capacity, log.format changed but keep the running value"
        ),
        "{stderr}"
    );
    // For people: what would apply, what would wait.
    let human = std::process::Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .args(["reload", "--check", "--admin", &proxy.admin.to_string()])
        .args(["--token", ADMIN_TOKEN])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&human.stdout),
        "would apply: release.retry_after, metrics.statsd_prefix, sites[shop]\n\
         needs a restart: server.grace_period, cache.capacity, log.format\n"
    );
    assert!(
        get(&c, &proxy.url("/private/x"), &[]).await.is_hit(),
        "a check applies nothing"
    );

    // The reload: the same lists in the answer and the log, and the route is in force.
    let (ok, answer, _) = cli_reload(&proxy, &[]);
    assert!(ok, "{answer}");
    assert_eq!(answer["reloaded"], true);
    assert_eq!(strings(&answer["report"]["restart_required"]), fixed);
    assert_eq!(strings(&answer["report"]["applied"]), applied);
    let got = get(&c, &proxy.url("/private/x"), &[]).await;
    assert!(
        got.cache().contains("detail=route-pass"),
        "{} {}",
        got.cache(),
        proxy.stderr()
    );
    let log = proxy.stderr();
    assert!(
        log.contains(r#"restart_required=["server.grace_period", "cache.capacity", "log.format"]"#),
        "{log}"
    );
    assert!(log.contains("keep their running values until crossfade is restarted or upgraded"));

    // Nothing else changed since: nothing more to apply, and the fixed settings are still
    // pending (the process still runs with the old ones).
    let (_, answer, stderr) = cli_reload(&proxy, &["--check"]);
    assert!(strings(&answer["applied"]).is_empty(), "{answer}");
    assert_eq!(strings(&answer["restart_required"]), fixed, "{answer}");
    assert!(stderr.contains("keep the running value"), "{stderr}");

    // A route removed by a reload leaves no series behind on the dashboard.
    get(&c, &proxy.url("/private/y"), &[]).await;
    let routes = || async {
        let (_, data) = proxy
            .admin_call(
                Some(READ_TOKEN),
                Method::GET,
                "/dashboard/data?window=300",
                "",
            )
            .await;
        data["sites"][0]["routes"]
            .as_array()
            .unwrap_or_else(|| panic!("{data}"))
            .iter()
            .map(|r| r["route"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(routes().await.contains(&"private".to_string()));
    std::fs::write(rules_file(&proxy), HONOR_ALL).unwrap();
    let (ok, answer, _) = cli_reload(&proxy, &[]);
    assert!(
        ok && strings(&answer["report"]["applied"]) == ["sites[shop]"],
        "{answer}"
    );
    let left = routes().await;
    assert!(!left.contains(&"private".to_string()), "{left:?}");
}
