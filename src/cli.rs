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
