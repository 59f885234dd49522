//! Thin entry point: parse the command line, load config, hand over to the app.

use anyhow::Result;
use clap::Parser;
use crossfade::admin::client;
use crossfade::cli::{Cli, Command};
use crossfade::{app, config, telemetry};
use std::process::ExitCode;

/// glibc malloc took about a tenth of the hit path's CPU (per-request header maps and buffers
/// freed on other threads); mimalloc's thread-local free lists make that a few percent.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Errors end the process with a one-line (or, for a config, one-line-per-problem) message on
/// stderr and exit code 1, without a backtrace even when `RUST_BACKTRACE` is set: they are the
/// operator's to read, not a crash.
fn main() -> ExitCode {
    match command() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crossfade: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn command() -> Result<ExitCode> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run(cli.run));
    #[cfg(feature = "demo")]
    let serves = matches!(command, Command::Run(_) | Command::Demo(_));
    #[cfg(not(feature = "demo"))]
    let serves = matches!(command, Command::Run(_));
    if !serves {
        // A command-line tool whose reader went away (`crossfade check | head -1`) ends
        // quietly, as `cat` does, instead of panicking on the closed pipe. Not the server:
        // a client that closes its socket must not end the process.
        // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match command {
        Command::Run(args) => {
            let runtime = config::load(&args.config)?;
            telemetry::init(&runtime.log);
            if !args.upgrade {
                app::check_listeners(&runtime)?;
            }
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
                        for site in &rt.sites.list {
                            let table = &site.routes;
                            for rule in table.routes.iter().chain([&table.fallback]) {
                                let fast = crossfade::proxy::fast::route_report(&rt, site, rule);
                                println!("  {}/{}: {fast}", site.name, rule.name);
                            }
                        }
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
        Command::Purge(args) => exit(client::purge(args)?),
        Command::Pools(args) => exit(client::pools(args)?),
        Command::Maintenance(args) => exit(client::maintenance(args)?),
        Command::Reload(args) => exit(client::reload(args)?),
        Command::Health(args) => exit(client::health(&args)?),
        Command::Events(args) => exit(client::events(args)?),
        #[cfg(feature = "dev-certs")]
        Command::Certs(args) => match args.what {
            crossfade::cli::CertsWhat::Dev { out, hosts } => {
                for path in crossfade::tls::dev::make_dev_certs(&out, &hosts)? {
                    println!("{}", path.display());
                }
                Ok(ExitCode::SUCCESS)
            }
        },
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            let runtime = config::load(&args.config)?;
            telemetry::init(&runtime.log);
            crossfade::demo::run(runtime)
        }
    }
}

/// Admin commands exit 1 when the call failed or a fleet operation was incomplete.
fn exit(ok: bool) -> Result<ExitCode> {
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
