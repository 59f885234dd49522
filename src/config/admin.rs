//! Admin, fleet and access-control settings: tokens with scopes, the node's fleet identity,
//! and client networks (CIDR) for the `PURGE` method.

use super::file::{AdminFile, FleetFile};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// What a token may do. `Admin` may do everything; every valid token may read status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Purge,
    Release,
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "purge" => Some(Scope::Purge),
            "release" => Some(Scope::Release),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Purge => "purge",
            Scope::Release => "release",
            Scope::Admin => "admin",
        }
    }
}

/// A bearer token. Its secret is never printed.
#[derive(Clone)]
pub struct Token {
    pub name: String,
    pub secret: String,
    pub scopes: Vec<Scope>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl Token {
    pub fn allows(&self, scope: Scope) -> bool {
        scope == Scope::Read
            || self
                .scopes
                .iter()
                .any(|s| *s == scope || *s == Scope::Admin)
    }
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub tokens: Vec<Token>,
}

#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// This node's name in purge reports.
    pub node: String,
    /// `redis://host:port`; `None` for a single node.
    pub redis: Option<String>,
    pub channel: String,
    /// How long a purge waits for the other nodes to confirm.
    pub confirm_timeout: Duration,
}

/// A client network like `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, b.parse::<u8>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Cidr { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.bits as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.bits as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A secret given as `token` or, better, by the environment variable `token_env` (exactly
/// one), for the table at `at`.
pub(super) fn secret(
    token: Option<String>,
    token_env: Option<&str>,
    at: &str,
    push: &mut dyn FnMut(String, String),
) -> Option<String> {
    match (token, token_env) {
        (Some(s), None) => Some(s),
        (None, Some(var)) => std::env::var(var).ok().or_else(|| {
            push(
                format!("{at}.token_env"),
                format!("environment variable {var} is not set"),
            );
            None
        }),
        _ => {
            push(
                at.to_string(),
                "needs exactly one of token, token_env".into(),
            );
            None
        }
    }
}

/// The environment variable that overrides `admin.listen` (containers).
pub const ADMIN_LISTEN_ENV: &str = "CROSSFADE_ADMIN_LISTEN";

/// Tokens shorter than this are refused: they could be guessed.
const MIN_TOKEN_LEN: usize = 16;

pub(super) fn admin(
    f: Option<AdminFile>,
    push: &mut dyn FnMut(String, String),
) -> Option<AdminSettings> {
    let f = f?;
    // A container's loopback is its own: an image sets CROSSFADE_ADMIN_LISTEN (e.g.
    // 0.0.0.0:9901) so Prometheus outside can scrape, while the same config file keeps
    // loopback on a host. The tokens still guard every call.
    let (raw, key) = match std::env::var(ADMIN_LISTEN_ENV) {
        Ok(v) => (v, format!("admin.listen (from ${ADMIN_LISTEN_ENV})")),
        Err(_) => (
            f.listen.unwrap_or_else(|| "127.0.0.1:9901".into()),
            "admin.listen".to_string(),
        ),
    };
    let listen = raw.parse::<SocketAddr>().map_err(|_| {
        push(
            key,
            format!("{raw:?} is not an address like \"127.0.0.1:9901\""),
        )
    });
    if f.tokens.is_empty() {
        push(
            "admin.tokens".into(),
            "the admin API needs at least one token".into(),
        );
    }
    let mut tokens = Vec::new();
    for (i, t) in f.tokens.into_iter().enumerate() {
        let at = format!("admin.tokens[{i}]");
        let secret = secret(t.token.clone(), t.token_env.as_deref(), &at, push);
        if secret.as_ref().is_some_and(|s| s.len() < MIN_TOKEN_LEN) {
            push(
                format!("{at}.token"),
                format!("must be at least {MIN_TOKEN_LEN} characters"),
            );
        }
        let scopes: Vec<Scope> = t
            .scopes
            .iter()
            .filter_map(|s| {
                Scope::parse(s).or_else(|| {
                    push(
                        format!("{at}.scopes"),
                        format!("{s:?} is not one of read, purge, release, admin"),
                    );
                    None
                })
            })
            .collect();
        if let Some(secret) = secret {
            tokens.push(Token {
                name: t.name,
                secret,
                scopes,
            });
        }
    }
    Some(AdminSettings {
        listen: listen.ok()?,
        tokens,
    })
}

pub(super) fn fleet(f: FleetFile, push: &mut dyn FnMut(String, String)) -> FleetSettings {
    let node = f.node.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "crossfade".into())
    });
    if let Some(url) = &f.redis {
        if let Err(why) = redis_target(url) {
            push("fleet.redis".into(), why);
        }
    }
    let confirm_timeout = match &f.confirm_timeout {
        Some(s) => super::units::parse_duration(s).unwrap_or_else(|| {
            push(
                "fleet.confirm_timeout".into(),
                format!("{s:?} is not a duration"),
            );
            Duration::from_secs(2)
        }),
        None => Duration::from_secs(2),
    };
    FleetSettings {
        node,
        redis: f.redis,
        channel: f.channel.unwrap_or_else(|| "crossfade".into()),
        confirm_timeout,
    }
}

/// Where a fleet's Redis is, as `fleet.redis` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `redis://host:port[/db]` (or `rediss://`).
    Direct(String),
    /// The primary that Redis Sentinel names, asked again on every reconnection so a failover
    /// is followed: `redis+sentinel://host:port[,host:port…]/<primary name>`.
    Sentinel {
        sentinels: Vec<String>,
        primary: String,
    },
}

/// Reads `fleet.redis`.
pub fn redis_target(url: &str) -> Result<RedisTarget, String> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(RedisTarget::Direct(url.to_string()));
    }
    let Some(rest) = url.strip_prefix("redis+sentinel://") else {
        return Err(format!(
            "{url:?} is not a redis:// URL or a redis+sentinel://host:port,…/<primary> URL"
        ));
    };
    let (hosts, primary) = rest.split_once('/').unwrap_or((rest, ""));
    let sentinels: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{h}"))
        .collect();
    if sentinels.is_empty() || primary.is_empty() || primary.contains('/') {
        return Err(format!(
            "{url:?}: a Sentinel URL names its sentinels and the primary, e.g. \
             \"redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/crossfade\""
        ));
    }
    Ok(RedisTarget::Sentinel {
        sentinels,
        primary: primary.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls() {
        assert_eq!(
            redis_target("redis://127.0.0.1:6379"),
            Ok(RedisTarget::Direct("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            redis_target("redis+sentinel://a:26379, b:26379/fleet"),
            Ok(RedisTarget::Sentinel {
                sentinels: vec!["redis://a:26379".into(), "redis://b:26379".into()],
                primary: "fleet".into()
            })
        );
        for bad in [
            "http://x",
            "redis+sentinel://a:1",
            "redis+sentinel:///p",
            "a:1",
        ] {
            assert!(redis_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
    }
}
