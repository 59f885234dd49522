//! A small client for the admin API, used by the CLI (`crossfade purge …`). It speaks plain
//! HTTP/1.1 to the admin listener, which is loopback by default.

use super::human;
use crate::cli::AdminArgs;
use crate::config::admin::Scope;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin API at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no token: pass --token, set CROSSFADE_TOKEN, or configure [[admin.tokens]] ({why})")]
    NoToken { why: String },
    #[error("the admin API answered something that is not HTTP")]
    BadResponse,
    /// The API refused the call; its reason, as it said it.
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
}

/// Address and token for the admin API, from flags, environment and config, in that order.
pub fn target(args: &AdminArgs, scope: Scope) -> Result<(String, String), ClientError> {
    let loaded = crate::config::load(&args.config);
    let config = args.config.display();
    // Why the config gave no token, for the error: a token that comes from an unset
    // environment variable is the usual reason, and it is named.
    let why = match &loaded {
        Err(crate::config::LoadError::Invalid(issues)) => {
            let first: Vec<String> = issues.iter().take(3).map(|i| i.to_string()).collect();
            format!("{config} could not be used: {}", first.join("; "))
        }
        Ok(rt) if rt.admin.is_none() => format!("{config} has no [admin] section"),
        Ok(_) => format!("no token in {config} has the {scope:?} scope"),
    };
    let rt = loaded.ok();
    let admin = rt.as_ref().and_then(|rt| rt.admin.as_ref());
    let addr = args
        .admin
        .clone()
        .or_else(|| admin.map(|a| a.listen.to_string()))
        .unwrap_or_else(|| "127.0.0.1:9901".into());
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("CROSSFADE_TOKEN").ok())
        .or_else(|| {
            admin.and_then(|a| {
                a.tokens
                    .iter()
                    .find(|t| t.allows(scope))
                    .map(|t| t.secret.clone())
            })
        })
        .ok_or(ClientError::NoToken { why })?;
    Ok((addr, token))
}

/// `crossfade health`: true when the admin listener answers `/healthz` (no token needed), for
/// a container HEALTHCHECK or a service manager's probe. The address: `--admin`, else
/// `$CROSSFADE_ADMIN_LISTEN`, else `[admin] listen` of `--config`, else 127.0.0.1:9901.
pub fn health(args: &AdminArgs) -> Result<bool, ClientError> {
    let addr = args
        .admin
        .clone()
        .or_else(|| std::env::var(crate::config::admin::ADMIN_LISTEN_ENV).ok())
        .or_else(|| {
            let rt = crate::config::load(&args.config).ok()?;
            Some(rt.admin?.listen.to_string())
        })
        .unwrap_or_else(|| "127.0.0.1:9901".into());
    let (status, _) = call(&addr, "", "GET", "/healthz", "")?;
    if status != 200 {
        return Err(ClientError::Refused {
            status,
            message: format!("{addr} is not healthy"),
        });
    }
    println!("ok");
    Ok(true)
}

/// Sends one request and returns (status, body).
pub fn call(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), ClientError> {
    let connect = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(addr).map_err(connect)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(connect)?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(connect)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(connect)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(ClientError::BadResponse)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ClientError::BadResponse)?;
    Ok((status, body.to_string()))
}

/// Runs one admin call for the CLI and prints the answer — `render`ed for people, or as the
/// API's JSON with `--json` — and returns it. A refusal (any status but 200) is an error: its
/// reason goes to stderr (with `--json`, the JSON body also to stdout) and the exit code is 1.
fn run(
    args: &AdminArgs,
    scope: Scope,
    method: &str,
    path: &str,
    body: &serde_json::Value,
    render: impl FnOnce(&serde_json::Value) -> String,
) -> Result<serde_json::Value, ClientError> {
    let (addr, token) = target(args, scope)?;
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, answer) = call(&addr, &token, method, path, &body)?;
    let parsed = serde_json::from_str::<serde_json::Value>(&answer).ok();
    if args.json {
        println!("{}", answer.trim_end());
    }
    if status != 200 {
        let message = parsed
            .as_ref()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| answer.trim().to_string());
        return Err(ClientError::Refused { status, message });
    }
    let parsed = parsed.ok_or(ClientError::BadResponse)?;
    if !args.json {
        println!("{}", render(&parsed).trim_end());
    }
    Ok(parsed)
}

/// `crossfade pools …`.
pub fn pools(args: crate::cli::PoolsArgs) -> Result<bool, ClientError> {
    use crate::cli::PoolsWhat;
    use serde_json::json;
    let (path, body) = match args.what {
        PoolsWhat::Status => {
            let null = serde_json::Value::Null;
            run(
                &args.admin,
                Scope::Read,
                "GET",
                "/pools",
                &null,
                human::pools,
            )?;
            return Ok(true);
        }
        PoolsWhat::Flip { site, pool } => ("/pools/flip", json!({ "site": site, "pool": pool })),
        PoolsWhat::Canary {
            site,
            pool,
            percent,
        } => (
            "/pools/canary",
            json!({ "site": site, "pool": pool, "percent": percent }),
        ),
        PoolsWhat::Rollback { site } => ("/pools/rollback", json!({ "site": site })),
    };
    run(
        &args.admin,
        Scope::Release,
        "POST",
        path,
        &body,
        human::change,
    )?;
    Ok(true)
}

/// `crossfade reload [--check]`. Settings that need a restart are repeated on stderr.
pub fn reload(args: crate::cli::ReloadArgs) -> Result<bool, ClientError> {
    let path = if args.check {
        "/reload?check"
    } else {
        "/reload"
    };
    let answer = run(
        &args.admin,
        Scope::Admin,
        "POST",
        path,
        &serde_json::Value::Null,
        |a| human::reload(a, args.check),
    )?;
    {
        let report = answer.get("report").unwrap_or(&answer);
        let fixed: Vec<&str> = report["restart_required"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if !fixed.is_empty() {
            eprintln!(
                "crossfade: warning: {} changed but keep{} the running value until crossfade is restarted or upgraded",
                fixed.join(", "),
                if fixed.len() == 1 { "s" } else { "" }
            );
        }
    }
    Ok(true)
}

/// `crossfade events [--since 2h]`.
pub fn events(args: crate::cli::EventsArgs) -> Result<bool, ClientError> {
    let since: String = form_urlencoded::byte_serialize(args.since.as_bytes()).collect();
    let path = format!("/events?since={since}");
    let null = serde_json::Value::Null;
    run(&args.admin, Scope::Read, "GET", &path, &null, human::events)?;
    Ok(true)
}

/// `crossfade maintenance on|off …`.
pub fn maintenance(args: crate::cli::MaintenanceArgs) -> Result<bool, ClientError> {
    let body = serde_json::json!({
        "site": args.site,
        "route": args.route,
        "on": matches!(args.state, crate::cli::OnOff::On),
        "serve_cached": args.serve_cached,
    });
    run(
        &args.admin,
        Scope::Release,
        "POST",
        "/maintenance",
        &body,
        human::change,
    )?;
    Ok(true)
}

/// `crossfade purge …`.
pub fn purge(args: crate::cli::PurgeArgs) -> Result<bool, ClientError> {
    use crate::cache::purge::Purge;
    use crate::cli::PurgeWhat;
    let soft = args.soft;
    let purge = match args.what {
        PurgeWhat::Url { url } => Purge::Url { url, soft },
        PurgeWhat::Prefix { prefix } => Purge::Prefix { prefix, soft },
        PurgeWhat::Key { key, site } => Purge::Key { key, site, soft },
        PurgeWhat::All { site } => Purge::All { site, soft },
    };
    let body = serde_json::to_value(&purge).unwrap_or_default();
    let report = run(
        &args.admin,
        Scope::Purge,
        "POST",
        "/purge",
        &body,
        human::purge,
    )?;
    // A purge that matched nothing anywhere is usually a typo; it still succeeded (exit 0).
    {
        let nodes = report["nodes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let matched = nodes
            .iter()
            .any(|n| n["removed"].as_u64().unwrap_or(0) + n["stale"].as_u64().unwrap_or(0) > 0);
        if !nodes.is_empty() && !matched {
            eprintln!(
                "crossfade: warning: the purge matched no cached object on any node (check the \
                 URL, prefix, key or site)"
            );
        }
    }
    // Exit 1 when a node did not confirm: the purge may not be everywhere.
    Ok(report["complete"].as_bool() == Some(true))
}
