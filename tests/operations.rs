//! What an operator's tooling meets: the liveness endpoint a container HEALTHCHECK and a
//! service manager probe (no token, nothing disclosed), `crossfade health`, and the
//! environment variable that moves the admin listener in a container.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn healthz_answers_without_a_token_and_crossfade_health_says_so() {
    let origin = Origin::start(|_| async { reply(200, &[], "page") }).await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let (status, body) = proxy
        .admin_call(None, http::Method::GET, "/healthz", "")
        .await;
    assert_eq!((status, body.to_string()), (200, r#"{"ok":true}"#.into()));
    let (status, _) = proxy
        .admin_call(None, http::Method::GET, "/status", "")
        .await;
    assert_eq!(status, 401, "only /healthz goes without a token");

    let health = |addr: &str| {
        Command::new(env!("CARGO_BIN_EXE_crossfade"))
            .args(["health", "--admin", addr, "--config", "/nonexistent.toml"])
            .env_remove("CROSSFADE_ADMIN_LISTEN")
            .output()
            .unwrap()
    };
    let up = health(&proxy.admin.to_string());
    assert!(up.status.success(), "{up:?}");
    assert_eq!(String::from_utf8_lossy(&up.stdout), "ok\n");
    let down = health(&format!("127.0.0.1:{}", free_port()));
    assert_eq!(down.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&down.stderr).starts_with("crossfade: cannot reach the admin API"),
        "{down:?}"
    );
}

#[tokio::test]
async fn crossfade_admin_listen_in_the_environment_moves_the_admin_listener() {
    let origin = Origin::start(|_| async { reply(200, &[], "page") }).await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy_port, config_admin, env_admin) = (free_port(), free_port(), free_port());
    let d = dir.path().display();
    let config = dir.path().join("crossfade.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nthreads = 1\ngrace_period = \"1s\"\ngraceful_shutdown_timeout = \"1s\"\n\
             pid_file = \"{d}/pid\"\nupgrade_sock = \"{d}/sock\"\n\
             [proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\n\
             [admin]\nlisten = \"127.0.0.1:{config_admin}\"\n\
             [[admin.tokens]]\nname = \"ops\"\ntoken = \"{PURGE_TOKEN}\"\nscopes = [\"purge\"]\n\
             [[sites]]\nname = \"shop\"\nhosts = [\"www.shop.test\"]\n\
             [sites.pools.main]\nservers = [\"{}\"]\n",
            origin.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .args(["run", "--config"])
        .arg(&config)
        .env("CROSSFADE_ADMIN_LISTEN", format!("127.0.0.1:{env_admin}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let health = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_crossfade"))
            .args(["health", "--admin", &format!("127.0.0.1:{port}")])
            .output()
            .unwrap()
            .status
            .success()
    };
    let moved = eventually(Duration::from_secs(10), || async { health(env_admin) }).await;
    let at_config = health(config_admin);
    let _ = child.kill();
    let _ = child.wait();
    assert!(moved, "the admin API listens where the environment says");
    assert!(!at_config, "and not at the config's address");

    // A bad value is a config error naming the variable.
    let out = Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .args(["check", "--config"])
        .arg(&config)
        .env("CROSSFADE_ADMIN_LISTEN", "everywhere")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{}:10: admin.listen (from $CROSSFADE_ADMIN_LISTEN): \"everywhere\" is not an \
             address like \"127.0.0.1:9901\"\n",
            config.display()
        )
    );
}
