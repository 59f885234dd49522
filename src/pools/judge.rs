//! Canary judgement: during a canary, compare the canary pool with the stable pool over a
//! sliding window (5xx rate and p99 response time); when the canary is worse beyond the
//! configured thresholds, with enough requests to judge, roll the site back, record why, and
//! say so in metrics, logs and `/pools`. Off unless `[release.judge]` is configured.

use super::switch::{Change, Release, Save};
use crate::config::Runtime;
use crate::fleet::Purger;
use crate::metrics::Metrics;
use crate::stats::Filter;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The last judgement per site, for `/pools`.
#[derive(Default)]
pub struct Verdicts(Mutex<HashMap<String, serde_json::Value>>);

impl Verdicts {
    pub fn get(&self, site: &str) -> Option<serde_json::Value> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(site)
            .cloned()
    }

    fn set(&self, site: &str, v: serde_json::Value) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(site.to_string(), v);
    }
}

/// The background service that judges canaries.
pub struct Judge {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub release: Arc<Release>,
    pub pools: Arc<super::Registry>,
    pub metrics: Arc<Metrics>,
    pub purger: Arc<Purger>,
    pub verdicts: Arc<Verdicts>,
}

impl Judge {
    async fn judge_once(&self) {
        let rt = self.runtime.load_full();
        let Some(cfg) = rt.release.judge.clone() else {
            return;
        };
        for site in &rt.sites.list {
            let Some(state) = self.release.get(&site.name) else {
                continue;
            };
            let Some(canary) = &state.canary else {
                continue;
            };
            let summary = |pool: &str| {
                let f = Filter {
                    site: Some(&site.name),
                    route: None,
                    pool: Some(pool),
                };
                self.metrics.stats.summary(f, cfg.window, None)
            };
            let (c, s) = (summary(&canary.pool), summary(&state.active));
            let reason = judge(&c, &s, &cfg);
            let verdict = serde_json::json!({
                "canary": { "pool": canary.pool, "summary": c },
                "stable": { "pool": state.active, "summary": s },
                "rolled_back": reason.is_some(),
                "reason": reason,
            });
            self.verdicts.set(&site.name, verdict);
            let Some(reason) = reason else { continue };
            let rollback = Change::Rollback {
                site: site.name.to_string(),
            };
            match self
                .release
                .apply(&rt, &self.pools, &rollback, Save::BestEffort)
            {
                Ok(new_state) => {
                    let mut event =
                        crate::events::of_change(&rollback, Some(&state), &new_state, "judge");
                    event.what = format!(
                        "{} (canary {} {reason}: errors {:.1}% vs {:.1}%, p99 {:.0} ms vs {:.0} ms)",
                        event.what,
                        canary.pool,
                        c.origin_error_rate * 100.0,
                        s.origin_error_rate * 100.0,
                        c.p99_ms,
                        s.p99_ms
                    );
                    event.detail["reason"] = serde_json::json!(reason);
                    self.metrics.event(event);
                    tracing::error!(
                        site = %site.name, canary = %canary.pool, reason,
                        canary_error_rate = c.origin_error_rate, stable_error_rate = s.origin_error_rate,
                        canary_p99_ms = c.p99_ms, stable_p99_ms = s.p99_ms,
                        "canary judged worse than the stable pool: rolled back"
                    );
                    self.metrics
                        .canary_rollbacks
                        .with_label_values(&[&site.name, reason])
                        .inc();
                    self.purger.share_release(&site.name, &new_state).await;
                }
                Err(e) => tracing::error!(site = %site.name, error = %e, "canary rollback failed"),
            }
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Judge {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            // Read each round: a reload may add, change or remove `[release.judge]`.
            let interval = self
                .runtime
                .load()
                .release
                .judge
                .as_ref()
                .map_or(std::time::Duration::from_secs(5), |j| j.interval);
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.judge_once().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Why the canary (`c`) should be rolled back against the stable pool (`s`), if it should.
fn judge(
    c: &crate::stats::Summary,
    s: &crate::stats::Summary,
    cfg: &crate::config::pools::JudgeSettings,
) -> Option<&'static str> {
    // Errors are judged on what the pools' servers answered: hits and the edge's own answers
    // (maintenance, no healthy server) say nothing of a release, and diluted a canary that
    // failed 30% of its origin requests to 5.5%.
    if c.requests < cfg.min_requests {
        None
    } else if c.origin_requests >= cfg.min_requests
        && c.origin_error_rate - s.origin_error_rate > cfg.max_error_rate_increase
    {
        Some("error-rate")
    } else if s.requests >= cfg.min_requests
        && s.p99_ms > 0.0
        && c.p99_ms > s.p99_ms * cfg.max_p99_ratio
        && c.p99_ms - s.p99_ms > cfg.max_p99_increase.as_secs_f64() * 1000.0
    {
        Some("p99")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Summary;
    use std::time::Duration;

    fn summary(requests: u64, origin_error_rate: f64, p99_ms: f64) -> Summary {
        Summary {
            requests,
            origin_requests: requests,
            origin_error_rate,
            p99_ms,
            ..Summary::default()
        }
    }

    #[test]
    fn rollback_needs_a_real_regression() {
        let cfg = crate::config::pools::JudgeSettings {
            window: Duration::from_secs(60),
            interval: Duration::from_secs(5),
            min_requests: 15,
            max_error_rate_increase: 0.05,
            max_p99_ratio: 2.0,
            max_p99_increase: Duration::from_millis(50),
        };
        let stable = summary(40, 0.0, 2.7);
        // Seen in CI: one slow request among 41 made a healthy canary's p99 6.6 ms.
        assert_eq!(judge(&summary(41, 0.0, 6.6), &stable, &cfg), None);
        assert_eq!(judge(&summary(41, 0.0, 80.0), &stable, &cfg), Some("p99"));
        assert_eq!(
            judge(&summary(41, 0.5, 2.0), &stable, &cfg),
            Some("error-rate")
        );
        assert_eq!(
            judge(&summary(10, 0.5, 80.0), &stable, &cfg),
            None,
            "too few requests"
        );
    }
}
