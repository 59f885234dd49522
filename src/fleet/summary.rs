//! The fleet view: every node publishes a small summary of its last minute (per site and
//! pool: requests, rate, hit ratio, the pools' errors, the edge's own 5xx, p99; its cache) on
//! `<channel>:summary` every [`EVERY`], and keeps the others' for [`KEEP`], so the dashboard
//! of any node shows every node and the fleet's total on one page.

use super::redis::RedisLink;
use super::Purger;
use crate::stats::{Filter, Summary};
use serde_json::{json, Value};
use std::sync::Weak;
use std::time::Duration;

/// How often a node publishes its summary.
pub const EVERY: Duration = Duration::from_secs(2);
/// A node not heard from for this long is not shown.
const KEEP_MS: u64 = 15_000;
/// The window each summary covers.
const WINDOW: Duration = Duration::from_secs(60);

fn summary_json(s: &Summary) -> Value {
    json!({
        "requests": s.requests,
        "rate_per_second": s.rate_per_second,
        "hit_ratio": s.hit_ratio,
        "origin_error_rate": s.origin_error_rate,
        "edge_error_rate": s.edge_error_rate,
        "p99_ms": s.p99_ms,
    })
}

impl Purger {
    /// This node's summary of its last minute.
    pub fn node_summary(&self) -> Value {
        let rt = self.runtime.load();
        let stats = &self.metrics.stats;
        let sites: serde_json::Map<String, Value> = rt
            .sites
            .list
            .iter()
            .map(|site| {
                let pools: serde_json::Map<String, Value> = site
                    .pools
                    .iter()
                    .map(|p| {
                        let f = Filter {
                            site: Some(&site.name),
                            route: None,
                            pool: Some(&p.name),
                        };
                        (
                            p.name.clone(),
                            summary_json(&stats.summary(f, WINDOW, None)),
                        )
                    })
                    .collect();
                let f = Filter {
                    site: Some(&site.name),
                    ..Filter::default()
                };
                let all = summary_json(&stats.summary(f, WINDOW, None));
                (site.name.to_string(), json!({ "all": all, "pools": pools }))
            })
            .collect();
        json!({
            "node": self.node,
            "at_ms": crate::stats::now_secs() * 1000,
            "window_seconds": WINDOW.as_secs(),
            "all": summary_json(&stats.summary(Filter::default(), WINDOW, None)),
            "sites": sites,
            "cache": { "objects": self.storage.object_count(), "bytes": self.storage.weighted_bytes() },
        })
    }

    /// Every node's latest summary, this one's fresh, and the fleet's total; `None` for a
    /// node alone.
    pub fn fleet_view(&self) -> Option<Value> {
        let link = self.link.as_ref()?;
        let mut nodes = vec![self.node_summary()];
        nodes.extend(link.summaries());
        nodes.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
        let sum = |key: &str| -> f64 {
            nodes
                .iter()
                .map(|n| n["all"][key].as_f64().unwrap_or(0.0))
                .sum()
        };
        let requests = sum("requests");
        let weighted = |key: &str| -> f64 {
            if requests == 0.0 {
                return 0.0;
            }
            nodes
                .iter()
                .map(|n| {
                    n["all"][key].as_f64().unwrap_or(0.0)
                        * n["all"]["requests"].as_f64().unwrap_or(0.0)
                })
                .sum::<f64>()
                / requests
        };
        let total = json!({
            "requests": requests,
            "rate_per_second": sum("rate_per_second"),
            "hit_ratio": weighted("hit_ratio"),
            "edge_error_rate": weighted("edge_error_rate"),
            // Over all requests, as the others: the pools' own share is each node's business.
            "origin_error_rate": weighted("origin_error_rate"),
            "p99_ms": nodes.iter().map(|n| n["all"]["p99_ms"].as_f64().unwrap_or(0.0)).fold(0.0, f64::max),
        });
        Some(json!({ "nodes": nodes, "total": total }))
    }
}

impl RedisLink {
    /// Publishes this node's summary every [`EVERY`] while the purger lives.
    pub(super) async fn publish_summaries(&self, purger: Weak<Purger>) {
        loop {
            tokio::time::sleep(EVERY).await;
            let Some(p) = purger.upgrade() else { return };
            let mut summary = p.node_summary();
            drop(p);
            summary["instance"] = json!(self.id);
            if let Err(e) = self
                .publish(&self.summary_channel, summary.to_string())
                .await
            {
                tracing::debug!(error = %e, "fleet: summary not published");
            }
        }
    }

    /// A summary another node published.
    pub(super) fn on_summary(&self, payload: &str) {
        let Ok(summary) = serde_json::from_str::<Value>(payload) else {
            return;
        };
        let Some(instance) = summary["instance"].as_str().map(str::to_string) else {
            return;
        };
        if instance == self.id {
            return;
        }
        let now = crate::stats::now_secs() * 1000;
        let mut all = self.summaries.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, (_, at)| now.saturating_sub(*at) < KEEP_MS);
        all.insert(instance, (summary, now));
    }

    /// The other nodes' summaries heard in the last [`KEEP_MS`].
    pub(super) fn summaries(&self) -> Vec<Value> {
        let now = crate::stats::now_secs() * 1000;
        self.summaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|(_, at)| now.saturating_sub(*at) < KEEP_MS)
            .map(|(s, _)| s.clone())
            .collect()
    }
}
