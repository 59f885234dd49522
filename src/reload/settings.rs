//! Which settings a reload applies and which need a restart (or a binary upgrade, which starts
//! a new process on the same config): every field of [`Runtime`] is named here, once, as one
//! or the other. Each settings struct is destructured without `..`, so a new field does not
//! compile until it is classified, and nothing a reload cannot apply is silently ignored.
//!
//! A setting that needs a restart keeps its running value in the installed config too, so the
//! running config says what the process does (and code that reads it per request agrees with
//! what was built at start), and the next reload or check still reports it as pending.

use crate::config::admin::{AdminSettings, FleetSettings};
use crate::config::pools::ReleaseSettings;
use crate::config::proxy::Limits;
use crate::config::tls::TlsSettings;
use crate::config::{
    CacheSettings, LogSettings, MetricsSettings, OriginSettings, ProxySettings, Runtime,
    ServerSettings,
};
use std::fmt::Debug;

/// The settings that differ between two configs, by config key.
#[derive(Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct Changes {
    /// Changed and in effect once the new config is installed.
    pub applied: Vec<String>,
    /// Changed, but the running process keeps the old value until it is restarted or upgraded.
    pub restart_required: Vec<String>,
}

impl Changes {
    /// A setting fixed at start: reported when it differs, and `new` keeps the running value.
    fn restart<T: PartialEq + Clone>(&mut self, key: &str, old: &T, new: &mut T) {
        if old != new {
            self.restart_required.push(key.to_string());
            *new = old.clone();
        }
    }

    /// A section fixed at start that was added or removed: `new` keeps the running one.
    fn restart_present<T: Clone>(&mut self, key: &str, old: &Option<T>, new: &mut Option<T>) {
        self.restart_required.push(key.to_string());
        *new = old.clone();
    }

    fn applied<T: PartialEq + ?Sized>(&mut self, key: &str, old: &T, new: &T) {
        if old != new {
            self.applied.push(key.to_string());
        }
    }

    /// For values without `PartialEq` (compiled rules): equal when they print the same.
    fn applied_debug<T: Debug + ?Sized>(&mut self, key: &str, old: &T, new: &T) {
        if format!("{old:?}") != format!("{new:?}") {
            self.applied.push(key.to_string());
        }
    }
}

/// What changes from the running `old` to `new`, and whether a reload applies it; settings
/// that need a restart are set back to their running values in `new`.
pub fn changes(old: &Runtime, new: &mut Runtime) -> Changes {
    let Runtime {
        // The config file's path: a reload re-reads the same file.
        source: _,
        server,
        proxy,
        cache,
        origin,
        log,
        admin,
        fleet,
        release,
        metrics,
        tls,
        dashboard,
        sites,
    } = old;
    let mut c = Changes::default();
    server_settings(&mut c, server, &mut new.server);
    proxy_settings(&mut c, proxy, &mut new.proxy);
    cache_settings(&mut c, cache, &mut new.cache);
    origin_settings(&mut c, origin, &mut new.origin);
    log_settings(&mut c, log, &mut new.log);
    admin_settings(&mut c, admin, &mut new.admin);
    fleet_settings(&mut c, fleet, &mut new.fleet);
    release_settings(&mut c, release, &mut new.release);
    metrics_settings(&mut c, metrics, &mut new.metrics);
    tls_settings(&mut c, tls, &mut new.tls);
    // Read by the admin server on every dashboard request.
    c.applied("dashboard.environments", dashboard, &new.dashboard);
    // Sites, hosts, rules and pools are looked up per request in the running config.
    let by_name = |list: &[std::sync::Arc<crate::config::Site>]| {
        list.iter()
            .map(|s| (s.name.to_string(), format!("{s:?}")))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (before, after) = (by_name(&sites.list), by_name(&new.sites.list));
    for (name, site) in &after {
        if before.get(name) != Some(site) {
            c.applied.push(format!("sites[{name}]"));
        }
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        c.applied.push(format!("sites[{name}] (removed)"));
    }
    c
}

fn server_settings(c: &mut Changes, old: &ServerSettings, new: &mut ServerSettings) {
    // Pingora's server takes all of these when the process starts.
    let ServerSettings {
        threads,
        work_stealing,
        connection_balance,
        grace_period,
        graceful_shutdown_timeout,
        pid_file,
        upgrade_sock,
    } = old;
    c.restart("server.threads", threads, &mut new.threads);
    c.restart(
        "server.work_stealing",
        work_stealing,
        &mut new.work_stealing,
    );
    c.restart(
        "server.connection_balance",
        connection_balance,
        &mut new.connection_balance,
    );
    c.restart("server.grace_period", grace_period, &mut new.grace_period);
    c.restart(
        "server.graceful_shutdown_timeout",
        graceful_shutdown_timeout,
        &mut new.graceful_shutdown_timeout,
    );
    c.restart("server.pid_file", pid_file, &mut new.pid_file);
    c.restart("server.upgrade_sock", upgrade_sock, &mut new.upgrade_sock);
}

fn proxy_settings(c: &mut Changes, old: &ProxySettings, new: &mut ProxySettings) {
    let ProxySettings {
        listen,
        h2c,
        hit_fast_path,
        pass_fast_path,
        unknown_host_status,
        purge_from,
        limits,
    } = old;
    // Listening sockets and their protocol options are bound at start.
    c.restart("proxy.listen", listen, &mut new.listen);
    c.restart("proxy.h2c", h2c, &mut new.h2c);
    // Read per request.
    c.applied("proxy.hit_fast_path", hit_fast_path, &new.hit_fast_path);
    c.applied("proxy.pass_fast_path", pass_fast_path, &new.pass_fast_path);
    c.applied(
        "proxy.unknown_host_status",
        unknown_host_status,
        &new.unknown_host_status,
    );
    c.applied("proxy.purge_from", purge_from, &new.purge_from);
    // Read per connection or request (`proxy::conn`, `proxy::hooks::limits`, `proxy::fast`).
    let Limits {
        max_uri,
        max_header_bytes,
        max_headers,
        header_timeout,
        body_timeout,
        keepalive_timeout,
        max_connections,
        max_connections_per_client,
    } = limits;
    let n = &new.limits;
    c.applied("proxy.max_uri", max_uri, &n.max_uri);
    c.applied(
        "proxy.max_header_bytes",
        max_header_bytes,
        &n.max_header_bytes,
    );
    c.applied("proxy.max_headers", max_headers, &n.max_headers);
    c.applied("proxy.header_timeout", header_timeout, &n.header_timeout);
    c.applied("proxy.body_timeout", body_timeout, &n.body_timeout);
    c.applied(
        "proxy.keepalive_timeout",
        keepalive_timeout,
        &n.keepalive_timeout,
    );
    c.applied("proxy.max_connections", max_connections, &n.max_connections);
    c.applied(
        "proxy.max_connections_per_client",
        max_connections_per_client,
        &n.max_connections_per_client,
    );
}

fn cache_settings(c: &mut Changes, old: &CacheSettings, new: &mut CacheSettings) {
    // The storage, its cache lock and its tag index are built once; the cache (and what it
    // holds) outlives reloads.
    let CacheSettings {
        capacity,
        max_object_size,
        lock_timeout,
        tag_headers,
    } = old;
    c.restart("cache.capacity", capacity, &mut new.capacity);
    c.restart(
        "cache.max_object_size",
        max_object_size,
        &mut new.max_object_size,
    );
    c.restart("cache.lock_timeout", lock_timeout, &mut new.lock_timeout);
    c.restart("cache.tag_headers", tag_headers, &mut new.tag_headers);
}

fn origin_settings(c: &mut Changes, old: &OriginSettings, new: &mut OriginSettings) {
    // Read for each origin request and by the idle-connection sweep.
    let OriginSettings {
        connect_timeout,
        read_timeout,
        write_timeout,
        idle_timeout,
    } = old;
    c.applied(
        "origin.connect_timeout",
        connect_timeout,
        &new.connect_timeout,
    );
    c.applied("origin.read_timeout", read_timeout, &new.read_timeout);
    c.applied("origin.write_timeout", write_timeout, &new.write_timeout);
    c.applied("origin.idle_timeout", idle_timeout, &new.idle_timeout);
}

fn log_settings(c: &mut Changes, old: &LogSettings, new: &mut LogSettings) {
    // The subscriber is installed once, before the server starts.
    let LogSettings {
        level,
        format,
        access_log,
    } = old;
    c.restart("log.level", level, &mut new.level);
    c.restart("log.format", format, &mut new.format);
    c.restart("log.access_log", access_log, &mut new.access_log);
}

fn admin_settings(c: &mut Changes, old: &Option<AdminSettings>, new: &mut Option<AdminSettings>) {
    match (old, new.as_mut()) {
        (Some(AdminSettings { listen, tokens }), Some(n)) => {
            c.restart("admin.listen", listen, &mut n.listen);
            // Checked per admin request.
            let key = |t: &[crate::config::admin::Token]| {
                t.iter()
                    .map(|t| (t.name.clone(), t.secret.clone(), t.scopes.clone()))
                    .collect::<Vec<_>>()
            };
            c.applied("admin.tokens", &key(tokens), &key(&n.tokens));
        }
        (None, None) => {}
        // The admin listener is started (or not) with the process.
        _ => c.restart_present("admin", old, new),
    }
}

fn fleet_settings(c: &mut Changes, old: &FleetSettings, new: &mut FleetSettings) {
    // The Redis link is made once, with this node's name, channel and confirmation time.
    let FleetSettings {
        node,
        redis,
        channel,
        confirm_timeout,
    } = old;
    c.restart("fleet.node", node, &mut new.node);
    c.restart("fleet.redis", redis, &mut new.redis);
    c.restart("fleet.channel", channel, &mut new.channel);
    c.restart(
        "fleet.confirm_timeout",
        confirm_timeout,
        &mut new.confirm_timeout,
    );
}

fn release_settings(c: &mut Changes, old: &ReleaseSettings, new: &mut ReleaseSettings) {
    let ReleaseSettings {
        state_file,
        cohort_cookie,
        session_cookie,
        maintenance_page,
        retry_after,
        judge,
    } = old;
    // The release state is read from and written to the file named at start.
    c.restart("release.state_file", state_file, &mut new.state_file);
    // Read per request.
    c.applied("release.cohort_cookie", cohort_cookie, &new.cohort_cookie);
    c.applied(
        "release.session_cookie",
        session_cookie,
        &new.session_cookie,
    );
    c.applied(
        "release.maintenance_page",
        maintenance_page,
        &new.maintenance_page,
    );
    c.applied("release.retry_after", retry_after, &new.retry_after);
    // The judge reads its settings each round (and idles without them).
    c.applied_debug("release.judge", judge, &new.judge);
}

fn metrics_settings(c: &mut Changes, old: &MetricsSettings, new: &mut MetricsSettings) {
    // `metrics::statsd::Resolver` follows the running config.
    let MetricsSettings {
        statsd,
        statsd_prefix,
    } = old;
    c.applied("metrics.statsd", statsd, &new.statsd);
    c.applied("metrics.statsd_prefix", statsd_prefix, &new.statsd_prefix);
}

fn tls_settings(c: &mut Changes, old: &Option<TlsSettings>, new: &mut Option<TlsSettings>) {
    match (old, new.as_mut()) {
        (
            Some(TlsSettings {
                listen,
                certs,
                session_tickets,
            }),
            Some(n),
        ) => {
            c.restart("tls.listen", listen, &mut n.listen);
            // The ticketer is part of the listeners' TLS config, built at start.
            c.restart(
                "tls.session_tickets",
                session_tickets,
                &mut n.session_tickets,
            );
            // Chosen per handshake by `tls::SniResolver` from the running config.
            let files = |certs: &[crate::config::tls::LoadedCert]| {
                certs
                    .iter()
                    .map(|l| (l.cert.clone(), l.key.clone(), l.hosts.clone()))
                    .collect::<Vec<_>>()
            };
            c.applied("tls.certs", &files(certs), &files(&n.certs));
        }
        (None, None) => {}
        // HTTPS listeners are bound at start.
        _ => c.restart_present("tls", old, new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConnectionBalance;
    use std::time::Duration;

    fn runtime() -> Runtime {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shop.toml"), "").unwrap();
        let path = dir.path().join("crossfade.toml");
        std::fs::write(
            &path,
            "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[admin]\nlisten = \"127.0.0.1:2\"\n\
             [[admin.tokens]]\nname = \"ops\"\ntoken = \"settings-test-token-0123456789\"\nscopes = [\"purge\"]\n\
             [[sites]]\nname = \"shop\"\nhosts = [\"www.shop.test\"]\nrules = \"shop.toml\"\n\
             [sites.pools.blue]\nservers = [\"127.0.0.1:3\"]\n",
        )
        .unwrap();
        crate::config::load(&path).unwrap()
    }

    #[test]
    fn every_setting_fixed_at_start_is_reported_and_keeps_its_running_value() {
        let old = runtime();
        let mut new = old.clone();
        let later = Duration::from_secs(99);
        new.server.threads += 1;
        new.server.work_stealing = !new.server.work_stealing;
        new.server.connection_balance = ConnectionBalance::Random;
        new.server.grace_period = later;
        new.server.graceful_shutdown_timeout = later;
        new.server.pid_file = "/x.pid".into();
        new.server.upgrade_sock = "/x.sock".into();
        new.proxy.listen = vec!["127.0.0.1:9".parse().unwrap()];
        new.proxy.h2c = !new.proxy.h2c;
        new.cache.capacity += 1;
        new.cache.max_object_size += 1;
        new.cache.lock_timeout = later;
        new.cache.tag_headers.push("x-tags".into());
        new.log.level = "trace".into();
        new.log.access_log = !new.log.access_log;
        new.admin.as_mut().unwrap().listen = "127.0.0.1:8".parse().unwrap();
        new.fleet.node = "other".into();
        new.fleet.redis = Some("redis://127.0.0.1:1".into());
        new.fleet.channel = "other".into();
        new.fleet.confirm_timeout = later;
        new.release.state_file = Some("/x.json".into());
        // Applied on reload.
        new.proxy.limits.max_uri += 1;
        new.origin.read_timeout = later;
        new.release.retry_after = later;
        new.metrics.statsd_prefix = "edge".into();
        let c = changes(&old, &mut new);
        assert_eq!(
            c.restart_required,
            [
                "server.threads",
                "server.work_stealing",
                "server.connection_balance",
                "server.grace_period",
                "server.graceful_shutdown_timeout",
                "server.pid_file",
                "server.upgrade_sock",
                "proxy.listen",
                "proxy.h2c",
                "cache.capacity",
                "cache.max_object_size",
                "cache.lock_timeout",
                "cache.tag_headers",
                "log.level",
                "log.access_log",
                "admin.listen",
                "fleet.node",
                "fleet.redis",
                "fleet.channel",
                "fleet.confirm_timeout",
                "release.state_file",
            ]
        );
        assert_eq!(
            c.applied,
            [
                "proxy.max_uri",
                "origin.read_timeout",
                "release.retry_after",
                "metrics.statsd_prefix"
            ]
        );
        // The installed config says what the process runs with.
        assert_eq!(new.server.threads, old.server.threads);
        assert_eq!(new.cache.capacity, old.cache.capacity);
        assert_eq!(new.fleet.redis, old.fleet.redis);
        assert_eq!(new.proxy.limits.max_uri, old.proxy.limits.max_uri + 1);
        // Adding or removing a section bound at start.
        let mut none = old.clone();
        none.admin = None;
        let c = changes(&old, &mut none);
        assert_eq!(c.restart_required, ["admin"]);
        assert!(none.admin.is_some(), "the running admin settings stay");
        assert_eq!(changes(&old, &mut old.clone()), Changes::default());
    }
}
