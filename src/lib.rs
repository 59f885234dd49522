//! crossfade: a caching reverse proxy and edge layer on Pingora.

pub mod app;
pub mod cache;
pub mod cli;
pub mod config;
pub mod demo;
pub mod pools;
pub mod proxy;
pub mod rules;
pub mod telemetry;
