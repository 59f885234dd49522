//! Thin entry point: parse the command line, load config, hand over to the app.

use anyhow::Result;
use clap::Parser;
use crossfade::admin::client;
use crossfade::cache::purge::Purge;
use crossfade::cli::{Cli, Command, PurgeArgs, PurgeWhat};
use crossfade::config::admin::Scope;
use crossfade::{app, config, demo, telemetry};
use std::process::ExitCode;

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(args) => {
            let runtime = config::load(&args.config)?;
            telemetry::init(&runtime.log);
            app::run(runtime, args.upgrade)
        }
        Command::Check(args) => {
            let mut failed = false;
            let mut paths: Vec<_> = args.configs.into_iter().chain(args.more).collect();
            if paths.is_empty() {
                paths.push("config/crossfade.toml".into());
            }
            for path in &paths {
                match config::load(path) {
                    Ok(rt) => {
                        let routes: usize =
                            rt.sites.list.iter().map(|s| s.routes.routes.len()).sum();
                        println!(
                            "{}: ok ({} sites, {} routes)",
                            path.display(),
                            rt.sites.list.len(),
                            routes
                        );
                    }
                    Err(config::LoadError::Invalid(issues)) => {
                        failed = true;
                        for issue in issues {
                            eprintln!("{issue}");
                        }
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Purge(args) => purge(args),
        Command::Demo(args) => {
            let runtime = config::load(&args.config)?;
            telemetry::init(&runtime.log);
            demo::run(runtime)
        }
    }
}

/// `crossfade purge …`: sends the purge to the admin API and prints the report; fails when
/// the purge failed or a node did not confirm.
fn purge(args: PurgeArgs) -> Result<ExitCode> {
    let soft = args.soft;
    let purge = match args.what {
        PurgeWhat::Url { url } => Purge::Url { url, soft },
        PurgeWhat::Prefix { prefix } => Purge::Prefix { prefix, soft },
        PurgeWhat::Key { key, site } => Purge::Key { key, site, soft },
        PurgeWhat::All { site } => Purge::All { site, soft },
    };
    let (addr, token) = client::target(&args.admin, Scope::Purge)?;
    let body = serde_json::to_string(&purge)?;
    let (status, answer) = client::call(&addr, &token, "POST", "/purge", &body)?;
    println!("{}", answer.trim_end());
    let complete = serde_json::from_str::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v["complete"].as_bool())
        .unwrap_or(false);
    Ok(if status == 200 && complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
