//! crossfade: a caching reverse proxy and edge layer on Pingora.

pub mod admin;
pub mod app;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod events;
pub mod fleet;
pub mod metrics;
pub mod pools;
pub mod process;
pub mod proxy;
pub mod reload;
pub mod rules;
pub mod shard;
pub mod stats;
pub mod telemetry;
pub mod tls;
