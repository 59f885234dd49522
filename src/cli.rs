//! The command line: `run` (the default), `check`, `demo`, and the admin API's commands
//! (`purge`, `pools`, `maintenance`, `reload`, `health`, `events`).

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
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Purge the cache on every node (through the admin API).
    Purge(PurgeArgs),
    /// Blue/green release control: status, flip, canary, rollback (through the admin API).
    Pools(PoolsArgs),
    /// Reload the config and rules of a running crossfade (as SIGHUP does) and say what
    /// changed, what took effect and what needs a restart.
    Reload(ReloadArgs),
    /// Put a site or one of its routes into maintenance, or take it out.
    Maintenance(MaintenanceArgs),
    /// Exit 0 when crossfade's admin listener answers (a container HEALTHCHECK; no token).
    Health(AdminArgs),
    /// The release timeline: flips, canaries, rollbacks, maintenance, purges, reloads,
    /// upgrades, health changes, on every node (the retrospective's first draft).
    Events(EventsArgs),
    /// Certificates: `certs dev --out DIR HOST…` makes a local CA and a certificate per host.
    #[cfg(feature = "dev-certs")]
    Certs(CertsArgs),
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub what: CertsWhat,
}

#[derive(Debug, Subcommand)]
pub enum CertsWhat {
    /// A local CA (reused when DIR has one) and one certificate per host, for demos and tests.
    Dev {
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        #[arg(required = true)]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct PoolsArgs {
    #[command(subcommand)]
    pub what: PoolsWhat,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
pub enum PoolsWhat {
    /// Every site's active pool, canary, maintenance, and each pool's servers and health.
    Status,
    /// Send all new requests of a site to a pool.
    Flip { site: String, pool: String },
    /// Send a share of visitors (sticky) to a pool; 0 ends the canary.
    Canary {
        site: String,
        pool: String,
        percent: u8,
    },
    /// Return a site to its previous pool state.
    Rollback { site: String },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// From when: a duration ago (`2h`, `30m`, `7d`) or Unix seconds.
    #[arg(long, default_value = "1day")]
    pub since: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Only say what a reload would apply and what would need a restart; change nothing.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    /// `on` or `off`.
    pub state: OnOff,
    pub site: String,
    /// Only this route (by its name in the rules file).
    #[arg(long)]
    pub route: Option<String>,
    /// Serve cached copies (even stale) where there are any; the page only on a miss.
    #[arg(long)]
    pub serve_cached: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
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
    /// Print the admin API's JSON answer as it is (for scripts) instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
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
