//! `crossfade check`: shipped configs validate; a broken config lists every error with its
//! file and key and exits non-zero.

use std::process::Command;

fn check(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .arg("check")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CROSSFADE_OPS_TOKEN", "test-placeholder-ops-token")
        .env("CROSSFADE_RELEASE_TOKEN", "test-placeholder-release-token")
        .env("CROSSFADE_METRICS_TOKEN", "test-placeholder-metrics-token")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn every_shipped_config_validates() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (ok, text) = check(&[path.to_str().unwrap()]);
            assert!(ok, "{}: {text}", path.display());
        }
    }
}

#[test]
fn a_broken_config_lists_every_error_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        r#"
[[routes]]
name = "home"
path = "/"
mode = "override"
edge_ttl = "5 minutes please"
[[routes]]
name = "typo"
prefix = "/x/"
edg_ttl = "5m"
[[routes]]
name = "bad-glob"
glob = "/[a"
"#,
    )
    .unwrap();
    let config = dir.path().join("crossfade.toml");
    std::fs::write(
        &config,
        r#"
[cache]
capacity = "lots"
[proxy]
listen = ["nowhere"]
[[sites]]
name = "shop"
hosts = ["www.shop.test"]
rules = "rules.toml"
active_pool = "purple"
[sites.pools.blue]
servers = ["127.0.0.1:9"]
"#,
    )
    .unwrap();
    let (ok, text) = check(&[config.to_str().unwrap()]);
    assert!(!ok, "a broken config must fail the check");
    for expected in [
        "crossfade.toml:3: cache.capacity: \"lots\" is not a size",
        "crossfade.toml:5: proxy.listen[0]: \"nowhere\" is not an address",
        "crossfade.toml:10: sites[0].active_pool: \"purple\" is not one of this site's pools",
        "rules.toml:6: routes[0].edge_ttl: \"5 minutes please\" is not a duration",
        "rules.toml:10: routes[1].edg_ttl: unknown key `edg_ttl`; did you mean `edge_ttl`?",
        "rules.toml:13: routes[2].glob: invalid glob",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(
        text.matches("routes[0].edge_ttl").count(),
        1,
        "an invalid edge_ttl is one problem, not also a missing one: {text}"
    );
}

#[test]
fn each_kind_of_mistake_gets_its_own_exact_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("crossfade.toml");
    let run = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let (ok, out) = check(&[config.to_str().unwrap()]);
        assert!(!ok, "{text}");
        let file = config.display().to_string();
        out.lines()
            .map(|l| l.replace(&file, "crossfade.toml"))
            .collect::<Vec<_>>()
    };
    let syntax = run("[server]\nthreads = 2\n[proxy]\nlisten = [\"127.0.0.1:8080\"\n");
    assert_eq!(
        syntax,
        vec!["crossfade.toml:5: not valid TOML (column 1): invalid array; expected `]`"]
    );
    let many = run(r#"
[server]
thredas = 2
[proxy]
listen = ["127.0.0.1:8080"]
[[sites]]
name = "a"
hosts = ["a.test"]
rules = "missing.toml"
active_pool = "blue"
[sites.pools.blue]
servers = ["127.0.0.1:9000", "127.0.0.1:9000"]
[[sites]]
name = "b"
hosts = ["a.test"]
active_pool = "blue"
[sites.pools.blue]
servers = []
health_interval = "soon"
[[sites]]
name = "c"
hosts = ["c.test"]
default = "yes"
[sites.pools.blue]
servers = ["127.0.0.1:9001"]
"#);
    let missing = dir.path().join("missing.toml").display().to_string();
    let expected = [
        "crossfade.toml:3: server.thredas: unknown key `thredas`; did you mean `threads`?".to_string(),
        "crossfade.toml:23: sites[2].default: invalid type: string \"yes\", expected true or false".into(),
        "crossfade.toml:12: sites[0].pools.blue.servers[1]: \"127.0.0.1:9000\" is listed twice (give it a weight instead)".into(),
        format!("crossfade.toml:9: sites[0].rules: {missing} does not exist (a rules path is relative to this file's directory)"),
        "crossfade.toml:15: sites[1].hosts[0]: \"a.test\" is claimed by sites[0] too".into(),
        "crossfade.toml:18: sites[1].pools.blue.servers: needs at least one server".into(),
        "crossfade.toml:17: sites[1].pools.blue.health_path: health check settings need a health_path".into(),
        "crossfade.toml:19: sites[1].pools.blue.health_interval: \"soon\" is not a duration above 0s (use e.g. \"2s\")".into(),
    ];
    for line in &expected {
        assert!(
            many.contains(line),
            "missing {line:?} in:\n{}",
            many.join("\n")
        );
    }
    assert_eq!(many.len(), expected.len(), "{}", many.join("\n"));
    let words = run("[server]\nthreads = \"two\"\n");
    assert!(
        words.contains(
            &"crossfade.toml:2: server.threads: invalid type: string \"two\", expected a whole number"
                .to_string()
        ),
        "{}",
        words.join("\n")
    );
}

#[test]
fn check_says_for_each_route_whether_the_fast_path_carries_it() {
    let (ok, text) = check(&["config/crossfade.toml"]);
    assert!(ok, "{text}");
    let store: Vec<&str> = text.lines().filter(|l| l.starts_with("  store/")).collect();
    assert!(!store.is_empty(), "{text}");
    // The shipped store rules key pages on the currency cookie: still the fast path's.
    assert!(
        store.iter().all(|l| l.contains("passes fast")),
        "{}",
        store.join("\n")
    );
    assert!(store.iter().any(|l| l.contains("hits fast")), "{text}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[routes]]\nname = \"upload\"\nprefix = \"/upload\"\nmethods = [\"POST\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("crossfade.toml"),
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\nhit_fast_path = false\n\
         [[sites]]\nname = \"s\"\nhosts = [\"s.test\"]\nrules = \"rules.toml\"\n\
         [sites.pools.blue]\nservers = [\"127.0.0.1:9\"]\nhttp2 = true\n",
    )
    .unwrap();
    let (ok, text) = check(&[dir.path().join("crossfade.toml").to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(
        text.contains("  s/upload: pingora (only GET and HEAD are carried fast)"),
        "{text}"
    );
    assert!(
        text.contains(
            "  s/default: hits through pingora (proxy.hit_fast_path = false), passes to pool \
             blue through pingora (it speaks HTTP/2)"
        ),
        "{text}"
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .args(["check", "config/demo.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `crossfade check … | head -0`: the reader is gone before the first line.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_cli_without_its_token_names_the_missing_variable_and_shows_no_backtrace() {
    let out = Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .args(["purge", "url", "www.store.test/track/1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CROSSFADE_OPS_TOKEN")
        .env_remove("CROSSFADE_RELEASE_TOKEN")
        .env_remove("CROSSFADE_METRICS_TOKEN")
        .env_remove("CROSSFADE_TOKEN")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("crossfade: no token")
            && stderr.contains(
                "admin.tokens[0].token_env: environment variable CROSSFADE_OPS_TOKEN is not set"
            ),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn another_environment_must_be_a_crossfade_admin_api_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("crossfade.toml");
    std::fs::write(
        &config,
        "[[dashboard.environments]]\nname = \"staging\"\nurl = \"https://staging.internal:9901\"\n\
         token = \"0123456789abcdef\"\n[[dashboard.environments]]\nname = \"staging\"\n\
         url = \"http://10.0.0.9:9901\"\ntoken_env = \"CROSSFADE_NO_SUCH_VARIABLE\"\n\
         [[sites]]\nname = \"s\"\nhosts = [\"s.test\"]\n[sites.pools.blue]\nservers = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let (ok, text) = check(&[config.to_str().unwrap()]);
    assert!(!ok);
    let file = config.display().to_string();
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.replace(&file, "crossfade.toml"))
        .collect();
    assert_eq!(
        lines,
        [
            "crossfade.toml:3: dashboard.environments[0].url: \"https://staging.internal:9901\" is not the admin API of a crossfade as http://host:port (its admin listener speaks plain HTTP)",
            "crossfade.toml:6: dashboard.environments[1].name: \"staging\" must be a name no other environment has",
            "crossfade.toml:8: dashboard.environments[1].token_env: environment variable CROSSFADE_NO_SUCH_VARIABLE is not set",
        ]
    );
}

#[test]
fn listeners_that_share_a_port_are_a_config_error_not_a_panic_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("crossfade.toml");
    // Nothing binds these ports: the config is refused before anything starts.
    std::fs::write(
        &config,
        r#"[proxy]
listen = ["0.0.0.0:28181", "127.0.0.1:28182", "127.0.0.1:28182"]
[admin]
listen = "127.0.0.1:28181"
[[admin.tokens]]
name = "ops"
token = "test-admin-token-0123456789"
scopes = ["admin"]
[[sites]]
name = "a"
hosts = ["a.test"]
[sites.pools.blue]
servers = ["127.0.0.1:28183"]
"#,
    )
    .unwrap();
    let (ok, out) = check(&[config.to_str().unwrap()]);
    assert!(!ok, "{out}");
    let file = config.display().to_string();
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.replace(&file, "crossfade.toml"))
        .collect();
    assert_eq!(
        lines,
        [
            "crossfade.toml:2: proxy.listen[2]: 127.0.0.1:28182 overlaps proxy.listen[1] (127.0.0.1:28182): one port, one listener",
            "crossfade.toml:4: admin.listen: 127.0.0.1:28181 overlaps proxy.listen[0] (0.0.0.0:28181): one port, one listener",
        ],
        "{out}"
    );
    // `run` says the same and stops: before, pingora's listener thread panicked at start.
    let run = Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(!run.status.success(), "{said}");
    assert!(said.contains("overlaps proxy.listen[1]"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
}

#[test]
fn a_connection_balance_that_cannot_apply_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("crossfade.toml");
    let site = "[[sites]]\nname = \"a\"\nhosts = [\"a.test\"]\n[sites.pools.blue]\nservers = [\"127.0.0.1:28183\"]\n";
    let run = |server: &str| {
        std::fs::write(&config, format!("[server]\n{server}\n{site}")).unwrap();
        let (ok, out) = check(&[config.to_str().unwrap()]);
        let file = config.display().to_string();
        (ok, out.replace(&file, "crossfade.toml"))
    };
    let (ok, out) = run("connection_balance = \"even\"");
    assert!(!ok);
    assert_eq!(
        out.trim(),
        "crossfade.toml:2: server.connection_balance: \"even\" is not one of \"fewest\", \"random\""
    );
    // With work stealing, tokio moves connections itself: the setting would mean nothing.
    let (ok, out) = run("work_stealing = true\nconnection_balance = \"fewest\"");
    assert!(!ok);
    assert_eq!(
        out.trim(),
        "crossfade.toml:3: server.connection_balance: has no effect with server.work_stealing = true \
         (idle threads take connections from busy ones); remove one of them"
    );
    for fine in [
        "connection_balance = \"random\"",
        "work_stealing = true",
        "",
    ] {
        let (ok, out) = run(fine);
        assert!(ok, "{fine}: {out}");
    }
}
