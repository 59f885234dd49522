//! Rules files (`rules/<site>.toml`) → a site's compiled [`RouteTable`]: every route and the
//! fallback, each setting inherited from `[defaults]` where the route is silent, every problem
//! reported with its key.

use super::file::{RouteDefaultsFile, RouteFile, RulesFile};
use super::validate::{read_table, section, valid_name, Issues, DEFAULT_MAX_BODY};
use super::Issue;
use crate::rules::{
    Authorization, Mode, NameSet, PathMatch, QueryFilter, RouteTable, Rule, StatusMatch,
    DEFAULT_HEURISTIC_MAX,
};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn compile_rules(path: &Path, all: &mut Vec<Issue>) -> Option<RouteTable> {
    let mut issues = Issues {
        file: path.to_path_buf(),
        out: all,
    };
    let mut table = read_table(path, &mut issues)?;
    let defaults: RouteDefaultsFile = section(&mut table, "defaults", &mut issues);
    let mut routes = Vec::new();
    let mut names = HashSet::new();
    match table.remove("routes") {
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                let at = format!("routes[{i}]");
                let Some(rf) = issues.de::<RouteFile>(item, &at) else {
                    continue;
                };
                if !names.insert(rf.name.clone()) {
                    issues.push(
                        format!("{at}.name"),
                        format!("{:?} is used by another route", rf.name),
                    );
                }
                if let Some(rule) = route(&rf, &defaults, &at, &mut issues) {
                    routes.push(Arc::new(rule));
                }
            }
        }
        Some(_) => issues.push("routes", "must be an array of tables ([[routes]])"),
        None => {}
    }
    for key in table.keys() {
        let _ = issues.de::<RulesFile>(
            toml::Value::Table(toml::Table::from_iter([(
                key.clone(),
                toml::Value::Boolean(true),
            )])),
            "",
        );
    }
    let fallback = Arc::new(fallback_rule(&defaults, &mut issues));
    Some(RouteTable { routes, fallback })
}

fn parse_mode(s: Option<&str>, key: &str, issues: &mut Issues) -> Mode {
    match s {
        None | Some("honor") => Mode::Honor,
        Some("override") => Mode::Override,
        Some("pass") => Mode::Pass,
        Some(other) => {
            issues.push(
                key,
                format!("{other:?} is not one of honor, override, pass"),
            );
            Mode::Honor
        }
    }
}

fn query_filter(
    drop: &Option<Vec<String>>,
    keep: &Option<Vec<String>>,
    at: &str,
    issues: &mut Issues,
) -> QueryFilter {
    match (drop, keep) {
        (Some(_), Some(_)) => {
            issues.push(
                format!("{at}query_keep"),
                "query_drop and query_keep cannot both be set",
            );
            QueryFilter::Drop(NameSet::default())
        }
        (_, Some(keep)) => QueryFilter::Keep(NameSet::new(keep.iter().cloned())),
        (drop, None) => QueryFilter::Drop(NameSet::new(drop.iter().flatten().cloned())),
    }
}

/// The rule for requests no route claims: the site defaults, honouring the origin unless the
/// defaults say otherwise.
pub(super) fn fallback_rule(d: &RouteDefaultsFile, issues: &mut Issues) -> Rule {
    let mode = parse_mode(d.mode.as_deref(), "defaults.mode", issues);
    if mode == Mode::Override {
        issues.push(
            "defaults.mode",
            "\"override\" needs an edge_ttl, which only a route can set",
        );
    }
    Rule {
        name: "default".into(),
        matcher: None,
        methods: None,
        mode,
        edge_ttl: None,
        ttl_by_status: vec![],
        browser_ttl: None,
        browser_immutable: false,
        stale_while_revalidate: issues
            .opt_duration("defaults.stale_while_revalidate", &d.stale_while_revalidate),
        stale_if_error: issues.opt_duration("defaults.stale_if_error", &d.stale_if_error),
        bypass_cookies: NameSet::new(d.bypass_cookies.iter().flatten().cloned()),
        key_cookies: d.key_cookies.clone().unwrap_or_default(),
        key_headers: header_names(&d.key_headers, "defaults.key_headers", issues),
        strip_headers: header_names(&d.strip_headers, "defaults.strip_headers", issues),
        query: query_filter(&d.query_drop, &d.query_keep, "defaults.", issues),
        query_sort: d.query_sort.unwrap_or(true),
        unsafe_strip_set_cookie: false,
        max_body: issues.size("defaults.max_body", &d.max_body, DEFAULT_MAX_BODY),
        targeted: targeted(&d.targeted_cache_control, "defaults", issues),
        heuristic_max: heuristic_max(d.heuristic_freshness, &d.heuristic_max, "defaults", issues),
        authorization: authorization(&d.authorization, "defaults", issues),
    }
}

/// `heuristic_freshness` and `heuristic_max`: the cap, or `None` when heuristics are off.
fn heuristic_max(
    on: Option<bool>,
    max: &Option<String>,
    at: &str,
    issues: &mut Issues,
) -> Option<Duration> {
    let max = issues.duration(&format!("{at}.heuristic_max"), max, DEFAULT_HEURISTIC_MAX);
    on.unwrap_or(true).then_some(max)
}

/// `authorization`: what a request with `Authorization` does.
fn authorization(v: &Option<String>, at: &str, issues: &mut Issues) -> Authorization {
    match v.as_deref() {
        None | Some("bypass") => Authorization::Bypass,
        Some("rfc9111") => Authorization::Rfc9111,
        Some(other) => {
            issues.push(
                format!("{at}.authorization"),
                format!("{other:?} is not one of bypass, rfc9111"),
            );
            Authorization::Bypass
        }
    }
}

/// `targeted_cache_control`: the RFC 9213 fields obeyed, `CDN-Cache-Control` when unset.
fn targeted(v: &Option<Vec<String>>, at: &str, issues: &mut Issues) -> Vec<String> {
    match v {
        None => vec![crate::rules::DEFAULT_TARGETED.into()],
        Some(_) => header_names(v, &format!("{at}.targeted_cache_control"), issues),
    }
}

/// Lowercased header names, each checked.
fn header_names(v: &Option<Vec<String>>, key: &str, issues: &mut Issues) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in v.iter().flatten().enumerate() {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => out.push(h.as_str().to_string()),
            Err(_) => issues.push(
                format!("{key}[{i}]"),
                format!("{name:?} is not a header name"),
            ),
        }
    }
    out
}

fn path_match(rf: &RouteFile, at: &str, issues: &mut Issues) -> Option<PathMatch> {
    let given = [&rf.path, &rf.prefix, &rf.glob, &rf.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given != 1 {
        issues.push(at, "needs exactly one of path, prefix, glob, regex");
        return None;
    }
    let slash = |key: &str, v: &str, issues: &mut Issues| {
        if !v.starts_with('/') {
            issues.push(format!("{at}.{key}"), format!("{v:?} must start with '/'"));
        }
    };
    if let Some(p) = &rf.path {
        slash("path", p, issues);
        return Some(PathMatch::Exact(p.clone()));
    }
    if let Some(p) = &rf.prefix {
        slash("prefix", p, issues);
        return Some(PathMatch::Prefix(p.clone()));
    }
    if let Some(g) = &rf.glob {
        slash("glob", g, issues);
        return match globset::GlobBuilder::new(g).literal_separator(true).build() {
            Ok(glob) => Some(PathMatch::Glob(glob.compile_matcher())),
            Err(e) => {
                issues.push(format!("{at}.glob"), format!("invalid glob: {}", e.kind()));
                None
            }
        };
    }
    let r = rf.regex.as_ref()?;
    match regex::Regex::new(r) {
        Ok(re) => Some(PathMatch::Regex(re)),
        Err(e) => {
            issues.push(format!("{at}.regex"), format!("invalid regex: {e}"));
            None
        }
    }
}

fn route(rf: &RouteFile, d: &RouteDefaultsFile, at: &str, issues: &mut Issues) -> Option<Rule> {
    if !valid_name(&rf.name) {
        issues.push(
            format!("{at}.name"),
            format!("{:?} must be 1-64 characters of a-z, 0-9, _ or -", rf.name),
        );
    }
    let matcher = path_match(rf, at, issues);
    let methods = rf.methods.as_ref().map(|ms| {
        ms.iter()
            .enumerate()
            .filter_map(|(j, m)| {
                let upper = m.to_ascii_uppercase();
                match http::Method::from_bytes(upper.as_bytes()) {
                    Ok(method) if upper == *m => Some(method),
                    _ => {
                        issues.push(
                            format!("{at}.methods[{j}]"),
                            format!("{m:?} is not an upper-case HTTP method"),
                        );
                        None
                    }
                }
            })
            .collect::<Vec<_>>()
    });
    let mode = parse_mode(
        rf.mode.as_deref().or(d.mode.as_deref()),
        &format!("{at}.mode"),
        issues,
    );
    let edge_ttl = issues.opt_duration(&format!("{at}.edge_ttl"), &rf.edge_ttl);
    let mut ttl_by_status = Vec::new();
    for (status, ttl) in rf.ttl_by_status.iter().flatten() {
        let key = format!("{at}.ttl_by_status.{status}");
        let m = StatusMatch::parse(status);
        if m.is_none() {
            issues.push(
                key.clone(),
                format!("{status:?} is not a status like \"404\" or a class like \"4xx\""),
            );
        }
        let d = issues.opt_duration(&key, &Some(ttl.clone()));
        if let (Some(m), Some(d)) = (m, d) {
            ttl_by_status.push((m, d));
        }
    }
    match mode {
        // An edge_ttl that is there but invalid has its own message already.
        Mode::Override
            if edge_ttl.is_none() && rf.edge_ttl.is_none() && rf.ttl_by_status.is_none() =>
        {
            issues.push(format!("{at}.edge_ttl"), "mode = \"override\" needs edge_ttl (or ttl_by_status)");
        }
        Mode::Honor if rf.edge_ttl.is_some() || rf.ttl_by_status.is_some() => issues.push(
            format!("{at}.edge_ttl"),
            "edge_ttl and ttl_by_status need mode = \"override\"; mode \"honor\" takes freshness from the origin",
        ),
        Mode::Pass
            if rf.edge_ttl.is_some()
                || rf.browser_ttl.is_some()
                || rf.stale_while_revalidate.is_some()
                || rf.stale_if_error.is_some()
                || rf.unsafe_strip_set_cookie =>
        {
            issues.push(format!("{at}.mode"), "a \"pass\" route never caches; remove its TTL and cache options");
        }
        _ => {}
    }
    let swr = rf
        .stale_while_revalidate
        .as_ref()
        .or(d.stale_while_revalidate.as_ref())
        .cloned();
    let sie = rf
        .stale_if_error
        .as_ref()
        .or(d.stale_if_error.as_ref())
        .cloned();
    let (drop, keep) = if rf.query_drop.is_some() || rf.query_keep.is_some() {
        (&rf.query_drop, &rf.query_keep)
    } else {
        (&d.query_drop, &d.query_keep)
    };
    let rule = Rule {
        name: rf.name.as_str().into(),
        matcher: None,
        methods,
        mode,
        edge_ttl,
        ttl_by_status,
        browser_ttl: issues.opt_duration(&format!("{at}.browser_ttl"), &rf.browser_ttl),
        browser_immutable: rf.browser_immutable,
        stale_while_revalidate: issues.opt_duration(&format!("{at}.stale_while_revalidate"), &swr),
        stale_if_error: issues.opt_duration(&format!("{at}.stale_if_error"), &sie),
        bypass_cookies: NameSet::new(
            rf.bypass_cookies
                .as_ref()
                .or(d.bypass_cookies.as_ref())
                .into_iter()
                .flatten()
                .cloned(),
        ),
        key_cookies: rf
            .key_cookies
            .clone()
            .or_else(|| d.key_cookies.clone())
            .unwrap_or_default(),
        key_headers: header_names(
            &rf.key_headers.clone().or_else(|| d.key_headers.clone()),
            &format!("{at}.key_headers"),
            issues,
        ),
        strip_headers: header_names(
            &rf.strip_headers.clone().or_else(|| d.strip_headers.clone()),
            &format!("{at}.strip_headers"),
            issues,
        ),
        query: query_filter(drop, keep, &format!("{at}."), issues),
        query_sort: rf.query_sort.or(d.query_sort).unwrap_or(true),
        unsafe_strip_set_cookie: rf.unsafe_strip_set_cookie,
        max_body: issues.size(
            &format!("{at}.max_body"),
            &rf.max_body.clone().or_else(|| d.max_body.clone()),
            DEFAULT_MAX_BODY,
        ),
        targeted: targeted(
            &rf.targeted_cache_control
                .clone()
                .or_else(|| d.targeted_cache_control.clone()),
            at,
            issues,
        ),
        heuristic_max: heuristic_max(
            rf.heuristic_freshness.or(d.heuristic_freshness),
            &rf.heuristic_max.clone().or_else(|| d.heuristic_max.clone()),
            at,
            issues,
        ),
        authorization: authorization(
            &rf.authorization.clone().or_else(|| d.authorization.clone()),
            at,
            issues,
        ),
    };
    matcher.map(|m| Rule {
        matcher: Some(m),
        ..rule
    })
}
