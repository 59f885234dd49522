//! Draining before a graceful upgrade or shutdown.
//!
//! On SIGQUIT (upgrade) pingora hands the listening sockets to the new process, keeps serving
//! for a few seconds, then drops every idle keep-alive connection at once. A client that sends
//! its next request on such a connection just then gets a reset — the read errors seen under
//! keep-alive load during upgrades. So on SIGQUIT or SIGTERM we start answering with
//! `Connection: close` at once: each busy connection ends cleanly after its next response and
//! the client reconnects, to the new process, long before pingora closes anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Sets the draining flag on SIGQUIT or SIGTERM, and says so in the release timeline.
pub struct DrainOnSignal(pub Arc<AtomicBool>, pub Arc<crate::metrics::Metrics>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for DrainOnSignal {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term)) =
            (signal(SignalKind::quit()), signal(SignalKind::terminate()))
        else {
            tracing::error!(
                "cannot listen for SIGQUIT/SIGTERM; connections will not be drained early"
            );
            return;
        };
        let why = tokio::select! {
            _ = quit.recv() => "stopping for a binary upgrade (SIGQUIT): the listening sockets go to the new process",
            _ = term.recv() => "stopping (SIGTERM)",
            _ = shutdown.changed() => "stopping",
        };
        self.1.event(crate::events::Event::new(
            crate::events::Kind::Stop,
            "crossfade",
            why,
        ));
        tracing::warn!("draining: answers now close their connections");
        self.0.store(true, Ordering::Relaxed);
    }
}
