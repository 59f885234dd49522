//! The command line: `run` (the default), `check`, `demo`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// crossfade: a caching reverse proxy and edge layer.
#[derive(Debug, Parser)]
#[command(name = "crossfade", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve traffic (the default).
    Run(RunArgs),
    /// Validate config files and every rules file they name; print every error.
    Check(CheckArgs),
    /// Start the embedded demo store and crossfade in front of it.
    Demo(DemoArgs),
    /// Purge the cache on every node (through the admin API).
    Purge(PurgeArgs),
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(subcommand)]
    pub what: PurgeWhat,
    /// Mark stale (served within its stale window while one request refreshes it) instead of removing.
    #[arg(long, global = true)]
    pub soft: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
pub enum PurgeWhat {
    /// Every variant of one URL, e.g. www.store.test/track/1?page=2
    Url { url: String },
    /// Every URL starting with a prefix, e.g. www.store.test/release/
    Prefix { prefix: String },
    /// Every object tagged with a surrogate key.
    Key {
        key: String,
        #[arg(long)]
        site: Option<String>,
    },
    /// Everything, or everything of one site.
    All {
        #[arg(long)]
        site: Option<String>,
    },
}

/// Where the admin API is and how to authenticate.
#[derive(Debug, Args, Clone)]
pub struct AdminArgs {
    /// Admin API address (default: `[admin] listen` of --config, else 127.0.0.1:9901).
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// Bearer token (default: $CROSSFADE_TOKEN, else the first purge/admin token in --config).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Config file to read the admin address and token from.
    #[arg(long, global = true, default_value = "config/crossfade.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// The config file.
    #[arg(long, short, default_value = "config/crossfade.toml")]
    pub config: PathBuf,
    /// Take over the listening sockets of a running crossfade (graceful binary upgrade).
    #[arg(long, short)]
    pub upgrade: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config files to validate (default: config/crossfade.toml).
    #[arg(long = "config", short = 'c')]
    pub configs: Vec<PathBuf>,
    /// More config files to validate.
    pub more: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The demo config; its site's pool addresses are where the demo store listens.
    #[arg(long, short, default_value = "config/demo.toml")]
    pub config: PathBuf,
}
