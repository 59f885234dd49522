//! Validation: `crossfade.toml` and every rules file it names → one [`Runtime`], or every
//! problem found, each with its file and key path.
//!
//! Each section, site and route is deserialised on its own so that one typo does not hide the
//! problems after it; values with units are parsed here for the same reason.

use super::file::{
    CacheFile, ConfigFile, LogFile, OriginFile, ProxyFile, RouteDefaultsFile, ServerFile, SiteFile,
};
use super::units::{parse_duration, parse_size};
use super::*;
use serde::de::DeserializeOwned;
use std::collections::HashSet;

/// Request body limit of a route that sets none (nginx `client_max_body_size` is 1m; shops
/// take uploads such as avatars and mixes on named routes with their own `max_body`).
pub(super) const DEFAULT_MAX_BODY: u64 = 16 << 20;

/// Collects issues for one file.
pub(super) struct Issues<'a> {
    pub(super) file: PathBuf,
    pub(super) out: &'a mut Vec<Issue>,
}

impl Issues<'_> {
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.out.push(Issue {
            file: self.file.clone(),
            line: None,
            key: key.into(),
            message: message.into(),
        });
    }

    /// An issue at a line of the file rather than at a key (a syntax error).
    fn push_at(&mut self, line: usize, message: String) {
        self.out.push(Issue {
            file: self.file.clone(),
            line: Some(line),
            key: String::new(),
            message,
        });
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Duration {
        self.opt_duration(key, v).unwrap_or(default)
    }

    /// A duration that must not be zero (a zero timeout would fail every request).
    pub(super) fn positive_duration(
        &mut self,
        key: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(key, v, default);
        if d.is_zero() {
            self.push(key, "must be more than 0s");
        }
        d
    }

    pub(super) fn opt_duration(&mut self, key: &str, v: &Option<String>) -> Option<Duration> {
        let s = v.as_ref()?;
        let d = parse_duration(s);
        if d.is_none() {
            self.push(
                key,
                format!("{s:?} is not a duration (use e.g. \"90s\", \"5m\", \"1h\")"),
            );
        }
        d
    }

    pub(super) fn size(&mut self, key: &str, v: &Option<String>, default: u64) -> u64 {
        let Some(s) = v else { return default };
        parse_size(s).unwrap_or_else(|| {
            self.push(
                key,
                format!("{s:?} is not a size (use e.g. \"512MiB\", \"8MB\")"),
            );
            default
        })
    }

    /// Deserialises one value, reporting a failure at `path` plus the path inside the value.
    pub(super) fn de<T: DeserializeOwned>(&mut self, value: toml::Value, path: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let key = match (path.is_empty(), inner == ".") {
                    (true, _) => inner,
                    (false, true) => path.to_string(),
                    (false, false) => format!("{path}.{inner}"),
                };
                // toml appends "in `key`" and blank lines; the key path is already reported.
                let message = e.into_inner().to_string();
                let first = message.lines().next().unwrap_or_default().trim();
                self.push(key, in_words(first));
                None
            }
        }
    }
}

/// serde's message in an operator's words: an unknown key names the nearest known one, and
/// type names say what to write.
fn in_words(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((unknown, expected)) = rest.split_once("`, expected ") {
            let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let nearest = known
                .iter()
                .map(|k| (edit_distance(unknown, k), *k))
                .filter(|(d, k)| *d <= 2.max(k.len() / 4))
                .min();
            return match nearest {
                Some((_, k)) => format!("unknown key `{unknown}`; did you mean `{k}`?"),
                None => format!(
                    "unknown key `{unknown}`; known keys here: {}",
                    known.join(", ")
                ),
            };
        }
    }
    let mut out = message.to_string();
    for (serde, words) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
        ("expected a string", "expected a quoted string"),
        ("expected a sequence", "expected a list like [\"a\", \"b\"]"),
    ] {
        out = out.replace(serde, words);
    }
    out
}

/// Levenshtein distance (keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

pub(super) fn read_table(path: &Path, issues: &mut Issues) -> Option<toml::Table> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            issues.push("", format!("cannot read file: {e}"));
            return None;
        }
    };
    match text.parse::<toml::Table>() {
        Ok(t) => Some(t),
        Err(e) => {
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    issues.push_at(line, format!("not valid TOML (column {column}): {message}"));
                }
                None => issues.push("", format!("not valid TOML: {message}")),
            }
            None
        }
    }
}

/// Takes a section out of a table and deserialises it, defaulting when absent.
pub(super) fn section<T: DeserializeOwned + Default>(
    table: &mut toml::Table,
    key: &str,
    issues: &mut Issues,
) -> T {
    match table.remove(key) {
        Some(v) => issues.de(v, key).unwrap_or_default(),
        None => T::default(),
    }
}

/// Loads and validates `path` and every rules file it names.
pub fn load(path: &Path) -> Result<Runtime, LoadError> {
    let mut all = Vec::new();
    let runtime = build(path, &mut all);
    match runtime {
        Some(rt) if all.is_empty() => Ok(rt),
        _ => {
            locate(&mut all);
            Err(LoadError::Invalid(all))
        }
    }
}

/// Gives each issue the line of its key, reading each file named once.
fn locate(all: &mut [Issue]) {
    let mut texts: std::collections::HashMap<PathBuf, Option<String>> = Default::default();
    for issue in all.iter_mut() {
        if issue.line.is_some() || issue.key.is_empty() {
            continue;
        }
        let text = texts
            .entry(issue.file.clone())
            .or_insert_with(|| std::fs::read_to_string(&issue.file).ok());
        issue.line = text
            .as_deref()
            .and_then(|t| super::lines::line_of(t, &issue.key));
    }
}

fn build(path: &Path, all: &mut Vec<Issue>) -> Option<Runtime> {
    let mut issues = Issues {
        file: path.to_path_buf(),
        out: all,
    };
    let mut table = read_table(path, &mut issues)?;
    let server: ServerFile = section(&mut table, "server", &mut issues);
    let proxy: ProxyFile = section(&mut table, "proxy", &mut issues);
    let cache: CacheFile = section(&mut table, "cache", &mut issues);
    let origin: OriginFile = section(&mut table, "origin", &mut issues);
    let log: LogFile = section(&mut table, "log", &mut issues);
    let admin_file: Option<super::file::AdminFile> =
        table.remove("admin").and_then(|v| issues.de(v, "admin"));
    let fleet_file: super::file::FleetFile = section(&mut table, "fleet", &mut issues);
    let release_file: super::file::ReleaseFile = section(&mut table, "release", &mut issues);
    let metrics_file: super::file::MetricsFile = section(&mut table, "metrics", &mut issues);
    let dashboard_file: super::file::DashboardFile = section(&mut table, "dashboard", &mut issues);
    let tls_file: Option<super::file::TlsFile> =
        table.remove("tls").and_then(|v| issues.de(v, "tls"));
    let mut site_files = Vec::new();
    match table.remove("sites") {
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                if let Some(s) = issues.de::<SiteFile>(item, &format!("sites[{i}]")) {
                    site_files.push((i, s));
                }
            }
        }
        Some(_) => issues.push("sites", "must be an array of tables ([[sites]])"),
        None => {}
    }
    for key in table.keys() {
        // Route the unknown key through serde so the message lists the valid ones.
        let _ = issues.de::<ConfigFile>(
            toml::Value::Table(toml::Table::from_iter([(
                key.clone(),
                toml::Value::Boolean(true),
            )])),
            "",
        );
    }

    let server = server_settings(server, &mut issues);
    let proxy = super::proxy::settings(proxy, &mut issues);
    let cache = cache_settings(cache, &mut issues);
    let origin = origin_settings(origin, &mut issues);
    let log = log_settings(log, &mut issues);
    let mut push = |key: String, message: String| issues.push(key, message);
    let admin = super::admin::admin(admin_file, &mut push);
    let fleet = super::admin::fleet(fleet_file, &mut push);
    let release = super::pools::release(path, release_file, &mut push);
    let metrics = metrics_settings(metrics_file, &mut push);
    let dashboard = dashboard_settings(dashboard_file, &mut push);
    let sites = sites(path, site_files, &mut *issues.out);
    let mut push = |key: String, message: String| issues.push(key, message);
    let tls = super::tls::tls(path, tls_file, &sites, &mut push);
    let proxy_listen = proxy.listen.iter().enumerate();
    let listeners = proxy_listen
        .map(|(i, a)| (format!("proxy.listen[{i}]"), *a))
        .chain(tls.iter().flat_map(|t| {
            let listen = t.listen.iter().enumerate();
            listen.map(|(i, a)| (format!("tls.listen[{i}]"), *a))
        }))
        .chain(admin.iter().map(|a| ("admin.listen".to_string(), a.listen)));
    overlapping_listeners(&listeners.collect::<Vec<_>>(), &mut push);
    Some(Runtime {
        source: path.to_path_buf(),
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
    })
}

/// Two listeners on one port where one address covers the other (the same address, or a
/// wildcard): the second cannot bind, and the config check is where that should show, not a
/// panic of the server after the config was accepted.
fn overlapping_listeners(
    listeners: &[(String, std::net::SocketAddr)],
    push: &mut dyn FnMut(String, String),
) {
    for (i, (key, addr)) in listeners.iter().enumerate() {
        let earlier = listeners[..i].iter().find(|(_, other)| {
            other.port() == addr.port()
                && (other.ip() == addr.ip()
                    || other.ip().is_unspecified()
                    || addr.ip().is_unspecified())
        });
        if let Some((other_key, other)) = earlier {
            push(
                key.clone(),
                format!("{addr} overlaps {other_key} ({other}): one port, one listener"),
            );
        }
    }
}

fn dashboard_settings(
    f: super::file::DashboardFile,
    push: &mut dyn FnMut(String, String),
) -> super::DashboardSettings {
    let mut environments: Vec<super::Environment> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, e) in f.environments.into_iter().enumerate() {
        let at = format!("dashboard.environments[{i}]");
        if e.name.is_empty() || names.contains(&e.name) {
            push(
                format!("{at}.name"),
                format!("{:?} must be a name no other environment has", e.name),
            );
        }
        names.push(e.name.clone());
        let addr = e.url.strip_prefix("http://").unwrap_or(&e.url);
        let addr = addr.trim_end_matches('/').to_string();
        let valid = !e.url.starts_with("https://")
            && addr.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
            });
        if !valid {
            push(
                format!("{at}.url"),
                format!(
                    "{:?} is not the admin API of a crossfade as http://host:port (its admin \
                     listener speaks plain HTTP)",
                    e.url
                ),
            );
        }
        let token = super::admin::secret(e.token, e.token_env.as_deref(), &at, push);
        if let Some(token) = token.filter(|_| valid) {
            environments.push(super::Environment {
                name: e.name,
                addr,
                token,
            });
        }
    }
    super::DashboardSettings { environments }
}

fn metrics_settings(
    f: super::file::MetricsFile,
    push: &mut dyn FnMut(String, String),
) -> MetricsSettings {
    let statsd = f.statsd.as_ref().and_then(|a| {
        let target = super::StatsdTarget::parse(a);
        if target.is_none() {
            push(
                "metrics.statsd".into(),
                format!("{a:?} is not host:port (a name or an address, and a port: \"statsd.internal:8125\", \"127.0.0.1:8125\")"),
            );
        }
        target
    });
    let prefix = f.statsd_prefix.unwrap_or_else(|| "crossfade".into());
    if prefix.is_empty() || prefix.contains([':', '|', '\n', ' ']) {
        push(
            "metrics.statsd_prefix".into(),
            format!("{prefix:?} must be a non-empty statsd name"),
        );
    }
    MetricsSettings {
        statsd,
        statsd_prefix: prefix,
    }
}

fn server_settings(f: ServerFile, issues: &mut Issues) -> ServerSettings {
    let threads = f.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    if threads == 0 {
        issues.push("server.threads", "must be at least 1");
    }
    let work_stealing = f.work_stealing.unwrap_or(false);
    let connection_balance = match f.connection_balance.as_deref() {
        None | Some("fewest") => ConnectionBalance::Fewest,
        Some("random") => ConnectionBalance::Random,
        Some(other) => {
            issues.push(
                "server.connection_balance",
                format!("{other:?} is not one of \"fewest\", \"random\""),
            );
            ConnectionBalance::Fewest
        }
    };
    if work_stealing && f.connection_balance.is_some() {
        // With stealing on, tokio moves connections between threads itself: the setting
        // would be silently ignored.
        issues.push(
            "server.connection_balance",
            "has no effect with server.work_stealing = true (idle threads take connections \
             from busy ones); remove one of them",
        );
    }
    ServerSettings {
        threads: threads.max(1),
        work_stealing,
        connection_balance,
        grace_period: issues.duration(
            "server.grace_period",
            &f.grace_period,
            Duration::from_secs(5),
        ),
        graceful_shutdown_timeout: issues.duration(
            "server.graceful_shutdown_timeout",
            &f.graceful_shutdown_timeout,
            Duration::from_secs(30),
        ),
        pid_file: f.pid_file.unwrap_or_else(|| "/tmp/crossfade.pid".into()),
        upgrade_sock: f
            .upgrade_sock
            .unwrap_or_else(|| "/tmp/crossfade_upgrade.sock".into()),
    }
}

fn cache_settings(f: CacheFile, issues: &mut Issues) -> CacheSettings {
    let capacity = issues.size("cache.capacity", &f.capacity, 256 << 20);
    let max_object_size = issues.size("cache.max_object_size", &f.max_object_size, 8 << 20);
    if capacity == 0 {
        issues.push("cache.capacity", "must be more than 0 bytes");
    }
    if max_object_size > capacity {
        issues.push(
            "cache.max_object_size",
            format!("{max_object_size} bytes is larger than cache.capacity ({capacity} bytes)"),
        );
    }
    let lock_timeout = issues.positive_duration(
        "cache.lock_timeout",
        &f.lock_timeout,
        Duration::from_secs(10),
    );
    let tag_headers: Vec<String> = f
        .tag_headers
        .unwrap_or_else(|| vec!["surrogate-key".into(), "cache-tag".into()])
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    for (i, h) in tag_headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            issues.push(
                format!("cache.tag_headers[{i}]"),
                format!("{h:?} is not a header name"),
            );
        }
    }
    CacheSettings {
        capacity,
        max_object_size: max_object_size as usize,
        lock_timeout,
        tag_headers,
    }
}

fn origin_settings(f: OriginFile, issues: &mut Issues) -> OriginSettings {
    let mut positive = |key: &str, v: &Option<String>, default: u64| {
        issues.positive_duration(key, v, Duration::from_secs(default))
    };
    OriginSettings {
        connect_timeout: positive("origin.connect_timeout", &f.connect_timeout, 2),
        read_timeout: positive("origin.read_timeout", &f.read_timeout, 30),
        write_timeout: positive("origin.write_timeout", &f.write_timeout, 30),
        idle_timeout: positive("origin.idle_timeout", &f.idle_timeout, 60),
    }
}

fn log_settings(f: LogFile, issues: &mut Issues) -> LogSettings {
    let level = f.level.unwrap_or_else(|| "info".into());
    if !matches!(
        level.as_str(),
        "error" | "warn" | "info" | "debug" | "trace"
    ) {
        issues.push(
            "log.level",
            format!("{level:?} is not one of error, warn, info, debug, trace"),
        );
    }
    let format = match f.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            issues.push(
                "log.format",
                format!("{other:?} is not \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    LogSettings {
        level,
        format,
        access_log: f.access_log.unwrap_or(true),
    }
}

/// Site and route names label logs and metrics, so they are restricted to a safe alphabet.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn sites(config: &Path, files: Vec<(usize, SiteFile)>, all: &mut Vec<Issue>) -> Sites {
    let mut sites = Sites::default();
    let mut names = HashSet::new();
    // Host → the site that claimed it first.
    let mut claimed: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, f) in files {
        let mut issues = Issues {
            file: config.to_path_buf(),
            out: all,
        };
        let at = format!("sites[{i}]");
        if !valid_name(&f.name) {
            issues.push(
                format!("{at}.name"),
                format!("{:?} must be 1-64 characters of a-z, 0-9, _ or -", f.name),
            );
        }
        if !names.insert(f.name.clone()) {
            issues.push(
                format!("{at}.name"),
                format!("{:?} is used by another site", f.name),
            );
        }
        if f.hosts.is_empty() {
            issues.push(format!("{at}.hosts"), "needs at least one host name");
        }
        let hosts: Vec<String> = f.hosts.iter().map(|h| normalize_host(h)).collect();
        // Checked for every site, also one with other problems: "every problem" means all.
        for (j, host) in hosts.iter().enumerate() {
            if let Some(other) = claimed.insert(host.clone(), i) {
                issues.push(
                    format!("{at}.hosts[{j}]"),
                    format!("{host:?} is claimed by sites[{other}] too"),
                );
            }
        }
        let mut push = |key: String, message: String| issues.push(key, message);
        let pools = super::pools::pools(&f, &at, valid_name, &mut push);
        let assets = super::pools::assets(&f, &at, &mut push);
        let active_pool = match (&f.active_pool, pools.len()) {
            (Some(name), _) => pools
                .iter()
                .position(|p| &p.name == name)
                .unwrap_or_else(|| {
                    // A pool that is configured but invalid has its own message already.
                    if !f.pools.contains_key(name) {
                        issues.push(
                            format!("{at}.active_pool"),
                            format!("{name:?} is not one of this site's pools"),
                        );
                    }
                    0
                }),
            (None, 0 | 1) => 0,
            (None, _) => {
                issues.push(
                    format!("{at}.active_pool"),
                    "is required when a site has more than one pool",
                );
                0
            }
        };
        let routes = match &f.rules {
            Some(rules) => {
                let rules_path = relative_to(config, rules);
                if rules_path.is_file() {
                    super::routes::compile_rules(&rules_path, all)
                } else {
                    issues.push(
                        format!("{at}.rules"),
                        format!(
                            "{} does not exist (a rules path is relative to this file's directory)",
                            rules_path.display()
                        ),
                    );
                    None
                }
            }
            None => Some(crate::rules::RouteTable {
                routes: vec![],
                fallback: Arc::new(super::routes::fallback_rule(
                    &RouteDefaultsFile::default(),
                    &mut issues,
                )),
            }),
        };
        let (Some(routes), false) = (routes, pools.is_empty()) else {
            continue;
        };
        let site = Arc::new(Site {
            name: f.name.as_str().into(),
            hosts: hosts.clone(),
            routes,
            pools,
            active_pool,
            assets,
            https_redirect: f.https_redirect,
        });
        let mut issues = Issues {
            file: config.to_path_buf(),
            out: all,
        };
        for host in &hosts {
            // A host claimed twice was reported above.
            if let Some(suffix) = host.strip_prefix('*') {
                if !sites.wildcards.iter().any(|(s, _)| s == suffix) {
                    sites.wildcards.push((suffix.to_string(), site.clone()));
                }
            } else {
                sites
                    .by_host
                    .entry(host.clone())
                    .or_insert_with(|| site.clone());
            }
        }
        if f.default {
            if sites.default.is_some() {
                issues.push(
                    format!("{at}.default"),
                    "only one site may be the default for unknown hosts",
                );
            }
            sites.default = Some(site.clone());
        }
        sites.list.push(site);
    }
    if sites.list.is_empty() && all.is_empty() {
        all.push(Issue {
            file: config.to_path_buf(),
            line: None,
            key: "sites".into(),
            message: "no site is configured; add a [[sites]] table".into(),
        });
    }
    sites
}
