//! What the CLI prints for people: the admin API's JSON answers (`/pools`, a release change,
//! a purge report, a reload report) as short tables and one-line summaries. `--json` prints
//! the answer as the API gave it instead, for scripts. Rendering only: which call to make and
//! what exit code follows stay in `client`.

use serde_json::Value;
use std::fmt::Write;

/// `pools status`: per site, one line for its release state, then a table of its pools.
pub fn pools(answer: &Value) -> String {
    let mut out = String::new();
    for site in answer["sites"].as_array().into_iter().flatten() {
        let state = &site["state"];
        let _ = writeln!(out, "{}", site_line(str_of(&site["site"]), state));
        let mut rows = vec![[
            "pool".to_string(),
            "role".into(),
            "healthy".into(),
            "release".into(),
            "asset hash".into(),
            "servers".into(),
        ]];
        for pool in site["pools"].as_array().into_iter().flatten() {
            let name = str_of(&pool["name"]);
            let role = if name == str_of(&state["active"]) {
                "active".to_string()
            } else if name == str_of(&state["canary"]["pool"]) {
                format!("canary {}%", state["canary"]["percent"])
            } else {
                "-".into()
            };
            let servers = pool["servers"].as_array().map_or(0, Vec::len);
            let mut healthy = format!("{}/{servers}", pool["healthy_servers"]);
            if pool["panic"].as_bool() == Some(true) {
                healthy.push_str(" (panic)");
            }
            let list: Vec<String> = pool["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let health = if s["healthy"].as_bool() == Some(true) {
                        "up"
                    } else {
                        "DOWN"
                    };
                    match s["inflight"].as_u64() {
                        Some(n) if n > 0 => {
                            format!("{} {health} ({n} in flight)", str_of(&s["addr"]))
                        }
                        _ => format!("{} {health}", str_of(&s["addr"])),
                    }
                })
                .collect();
            rows.push([
                name.to_string(),
                role,
                healthy,
                or_dash(&pool["release"]),
                or_dash(&pool["asset_hash"]),
                list.join(", "),
            ]);
        }
        out.push_str(&table(&rows, "  "));
        let history: Vec<String> = state["history"]
            .as_array()
            .into_iter()
            .flatten()
            .rev()
            .map(choice)
            .collect();
        if !history.is_empty() {
            let _ = writeln!(out, "  rollback returns to: {}", history.join(", then "));
        }
        if let Some(reason) = site["canary_judgement"]["reason"].as_str() {
            let _ = writeln!(out, "  canary judge rolled back: {reason}");
        }
    }
    out
}

/// A release change (`flip`, `canary`, `rollback`, `maintenance`): the site's new state.
pub fn change(answer: &Value) -> String {
    let mut out = site_line(str_of(&answer["site"]), &answer["state"]);
    if let Some(back) = answer["state"]["history"].as_array().and_then(|h| h.last()) {
        let _ = write!(out, "; rollback returns to {}", choice(back));
    }
    if answer["fleet"]["published"].as_bool() == Some(false) {
        let _ = write!(
            out,
            "\nwarning: not published to the fleet: {}",
            str_of(&answer["fleet"]["error"])
        );
    }
    out
}

/// A purge report: one line, what it was, what each node did, and whether it is complete.
pub fn purge(report: &Value) -> String {
    let p = &report["purge"];
    let kind = str_of(&p["kind"]);
    let what = match kind {
        "url" => format!("url {}", str_of(&p["url"])),
        "prefix" => format!("prefix {}", str_of(&p["prefix"])),
        "key" => format!("key {}", str_of(&p["key"])),
        _ => "everything".to_string(),
    };
    let site = p["site"]
        .as_str()
        .map(|s| format!(" of site {s}"))
        .unwrap_or_default();
    let how = if p["soft"].as_bool() == Some(true) {
        "soft"
    } else {
        "hard"
    };
    let nodes: Vec<String> = report["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let count = if how == "soft" {
                format!("{} marked stale", n["stale"].as_u64().unwrap_or(0))
            } else {
                format!("{} removed", n["removed"].as_u64().unwrap_or(0))
            };
            format!("{} {count}", str_of(&n["node"]))
        })
        .collect();
    let unconfirmed: Vec<&str> = report["unconfirmed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let end = if report["complete"].as_bool() == Some(true) {
        "complete".to_string()
    } else if unconfirmed.is_empty() {
        "INCOMPLETE".to_string()
    } else {
        format!(
            "INCOMPLETE: no confirmation from {}",
            unconfirmed.join(", ")
        )
    };
    format!("purged {what}{site} ({how}): {}; {end}", nodes.join(", "))
}

/// A reload (or `--check`) report: what took effect, what waits for a restart.
pub fn reload(answer: &Value, check: bool) -> String {
    let report = answer.get("report").unwrap_or(answer);
    let list = |key: &str| -> Vec<&str> {
        report[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    };
    let (applied, fixed) = (list("applied"), list("restart_required"));
    let verb = if check { "would apply" } else { "applied" };
    let mut out = if applied.is_empty() && fixed.is_empty() {
        if check {
            "no change: the config on disk is what runs".to_string()
        } else {
            "reloaded; no setting changed".to_string()
        }
    } else if applied.is_empty() {
        format!("{verb}: nothing")
    } else {
        format!("{verb}: {}", applied.join(", "))
    };
    if !fixed.is_empty() {
        let _ = write!(out, "\nneeds a restart: {}", fixed.join(", "));
    }
    out
}

/// The release timeline, one line per event: when (UTC), node, who, site/route, what.
pub fn events(answer: &Value) -> String {
    let list = answer["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if list.is_empty() {
        return "no events in this time".to_string();
    }
    let mut rows = vec![[
        "when (UTC)".to_string(),
        "node".into(),
        "by".into(),
        "where".into(),
        "what".into(),
    ]];
    for e in list {
        let at = e["at_ms"].as_u64().unwrap_or(0) / 1000;
        let place = match (e["site"].as_str(), e["route"].as_str()) {
            (Some(s), Some(r)) => format!("{s}/{r}"),
            (Some(s), None) => s.to_string(),
            _ => "-".into(),
        };
        rows.push([
            crate::clock::utc(at),
            str_of(&e["node"]).to_string(),
            str_of(&e["by"]).to_string(),
            place,
            str_of(&e["what"]).to_string(),
        ]);
    }
    table(&rows, "")
}

/// `store: active blue, canary green 10%, maintenance: routes checkout`.
fn site_line(site: &str, state: &Value) -> String {
    let mut line = format!("{site}: active {}", str_of(&state["active"]));
    if let Some(pool) = state["canary"]["pool"].as_str() {
        let _ = write!(line, ", canary {pool} {}%", state["canary"]["percent"]);
    }
    let m = &state["maintenance"];
    let routes: Vec<&str> = m["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let cached = if m["serve_cached"].as_bool() == Some(true) {
        " (serving cached copies)"
    } else {
        ""
    };
    if m["site"].as_bool() == Some(true) {
        let _ = write!(line, ", MAINTENANCE (whole site){cached}");
    } else if !routes.is_empty() {
        let _ = write!(line, ", MAINTENANCE of {}{cached}", routes.join(", "));
    }
    line
}

/// One earlier pool choice: `blue + canary green 10% (left 14:02:11 UTC)`.
fn choice(c: &Value) -> String {
    let mut s = str_of(&c["active"]).to_string();
    if let Some(pool) = c["canary"]["pool"].as_str() {
        let _ = write!(s, " + canary {pool} {}%", c["canary"]["percent"]);
    }
    if let Some(until) = c["until"].as_u64().filter(|t| *t > 0) {
        let t = until % 86_400;
        let _ = write!(
            s,
            " (left {:02}:{:02}:{:02} UTC)",
            t / 3600,
            t / 60 % 60,
            t % 60
        );
    }
    s
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn or_dash(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_string()
}

/// Left-aligned columns, two spaces apart, each line indented by `indent`.
fn table<const N: usize>(rows: &[[String; N]], indent: &str) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_string();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_purge_report_is_one_line_with_every_node() {
        let report = json!({"complete": false, "purge": {"kind": "key", "key": "tracks", "site": "store", "soft": false},
            "nodes": [{"node": "edge-1", "removed": 3, "stale": 0}, {"node": "edge-2", "removed": 2, "stale": 0}],
            "unconfirmed": ["edge-3#ab12"]});
        assert_eq!(
            purge(&report),
            "purged key tracks of site store (hard): edge-1 3 removed, edge-2 2 removed; \
             INCOMPLETE: no confirmation from edge-3#ab12"
        );
    }

    #[test]
    fn reload_reports_say_what_applied_and_what_waits() {
        let answer = json!({"reloaded": true, "report": {"applied": ["proxy.max_uri"], "restart_required": ["cache.capacity"]}});
        assert_eq!(
            reload(&answer, false),
            "applied: proxy.max_uri\nneeds a restart: cache.capacity"
        );
        assert_eq!(
            reload(&json!({"applied": [], "restart_required": []}), true),
            "no change: the config on disk is what runs"
        );
    }
}
