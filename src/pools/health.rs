//! Active health checks: each pool with a `health_path` has its servers asked
//! `GET <health_path>` every `health_interval`; a 2xx answer within `health_timeout` passes.
//! The answer's `X-Release` and `X-Asset-Hash` headers, when present, update what the pool
//! announces (so a deploy can change them without a config change).

use super::{Pool, Registry, Server};
use crate::config::pools::HealthCheck;
use crate::events::{Event, Kind};
use crate::metrics::Metrics;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest health-check answer head we read.
const MAX_HEAD: usize = 8 * 1024;

/// What one check found.
#[derive(Debug, Default, PartialEq, Eq)]
struct HealthAnswer {
    ok: bool,
    release: Option<String>,
    asset_hash: Option<String>,
}

fn parse_head(head: &str) -> HealthAnswer {
    let mut lines = head.split("\r\n");
    let ok = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .is_some_and(|s| (200..300).contains(&s));
    let mut answer = HealthAnswer {
        ok,
        ..HealthAnswer::default()
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_string();
        match name.trim().to_ascii_lowercase().as_str() {
            "x-release" if !value.is_empty() => answer.release = Some(value),
            "x-asset-hash" if !value.is_empty() => answer.asset_hash = Some(value),
            _ => {}
        }
    }
    answer
}

async fn check(server: &Server, hc: &HealthCheck) -> HealthAnswer {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.ok()?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: crossfade-health\r\nConnection: close\r\n\r\n",
            hc.path, server.addr
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; MAX_HEAD];
        let mut len = 0;
        loop {
            let n = stream.read(&mut buf[len..]).await.ok()?;
            len += n;
            let text = String::from_utf8_lossy(&buf[..len]);
            if let Some(end) = text.find("\r\n\r\n") {
                return Some(parse_head(&text[..end]));
            }
            if n == 0 || len == MAX_HEAD {
                return Some(parse_head(&text));
            }
        }
    };
    tokio::time::timeout(hc.timeout, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

async fn check_pool(site: &str, pool: &Pool, hc: &HealthCheck, metrics: &Metrics) {
    for server in &pool.servers {
        let answer = check(server, hc).await;
        let event = |kind, what: String| {
            Event::new(kind, "health", what)
                .site(site)
                .pool(pool.name())
                .detail(serde_json::json!({ "server": server.addr.to_string() }))
        };
        if let Some(up) = server.record_check(answer.ok, hc.rise, hc.fall) {
            let (kind, state) = if up {
                (Kind::ServerUp, "up: passes its health check again")
            } else {
                (Kind::ServerDown, "down: fails its health check")
            };
            metrics.event(event(kind, format!("server {} {state}", server.addr)));
        }
        if answer.ok {
            let announced = &pool.announced;
            let mut changed = Vec::new();
            for (what, slot, new) in [
                ("release", &announced.release, answer.release),
                ("asset hash", &announced.asset_hash, answer.asset_hash),
            ] {
                let Some(new) = new else { continue };
                let mut slot = slot.write().unwrap_or_else(|e| e.into_inner());
                if slot.as_deref() != Some(new.as_str()) {
                    changed.push(match slot.as_deref() {
                        Some(old) => format!("{what} {old} → {new}"),
                        None => format!("{what} {new}"),
                    });
                    *slot = Some(new);
                }
            }
            if !changed.is_empty() {
                let what = format!("pool {} now serves {}", pool.name(), changed.join(", "));
                metrics.event(event(Kind::ReleaseSeen, what));
            }
        }
    }
}

/// The pingora background service running every pool's checks. It follows the registry, so
/// pools added or changed by a reload are checked too.
pub struct HealthService {
    pub pools: Arc<Registry>,
    /// Where server state and announced releases that change become timeline events.
    pub metrics: Arc<Metrics>,
}

/// How often the service looks for checks that are due.
const TICK: std::time::Duration = std::time::Duration::from_millis(100);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for HealthService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use std::collections::HashMap;
        use std::time::Instant;
        let mut due: HashMap<(String, String), Instant> = HashMap::new();
        let mut running = tokio::task::JoinSet::new();
        loop {
            let now = Instant::now();
            let all = self.pools.all();
            // Pools a reload removed are forgotten.
            due.retain(|(site, pool), _| {
                all.get(site.as_str())
                    .is_some_and(|s| s.get(pool).is_some())
            });
            for (site, pools) in all.iter() {
                for pool in &pools.list {
                    let Some(hc) = pool.spec.health.clone() else {
                        continue;
                    };
                    let key = (site.to_string(), pool.name().to_string());
                    if due.get(&key).is_some_and(|t| *t > now) {
                        continue;
                    }
                    due.insert(key, now + hc.interval);
                    let pool = pool.clone();
                    let (site, metrics) = (site.to_string(), self.metrics.clone());
                    running.spawn(async move { check_pool(&site, &pool, &hc, &metrics).await });
                }
            }
            while running.try_join_next().is_some() {}
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => {
                    running.abort_all();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let a = parse_head("HTTP/1.1 200 OK\r\nX-Release: 2026.11.2\r\nx-asset-hash: abc123");
        assert_eq!(
            a,
            HealthAnswer {
                ok: true,
                release: Some("2026.11.2".into()),
                asset_hash: Some("abc123".into())
            }
        );
        assert!(!parse_head("HTTP/1.1 503 Service Unavailable").ok);
        assert!(!parse_head("garbage").ok);
    }
}
