//! Wires the Pingora server: the proxy listener(s) over the shared cache, and the process
//! settings (threads, graceful shutdown, upgrade socket) from the config.

use crate::admin::AdminApp;
use crate::cache::CacheCore;
use crate::config::{ConnectionBalance, Runtime};
use crate::fleet::Purger;
use crate::metrics::Metrics;
use crate::pools::health::HealthService;
use crate::pools::judge::{Judge, Verdicts};
use crate::pools::switch::Release;
use crate::proxy::conn::drain::DrainOnSignal;
use crate::proxy::EdgeProxy;
use crate::reload::{Reloader, SighupService};
use crate::tls::{CertWatcher, HandshakeCounter, SniResolver};
use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use std::sync::Arc;

/// A listening address crossfade cannot bind.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({key}): {error}; another process may hold it, or the address is not this machine's")]
pub struct BindError {
    /// The config key that names the address.
    pub key: &'static str,
    pub addr: std::net::SocketAddr,
    /// In the message, not a `source`: the one line printed would repeat it.
    pub error: std::io::Error,
}

/// Binds (and releases) every address the config listens on, before anything starts: pingora
/// retries a listener it cannot bind, then panics that thread and leaves the rest of the process
/// (the admin API included) up and looking healthy. Not for an upgrade, which takes the sockets
/// over from the running process.
pub fn check_listeners(runtime: &Runtime) -> Result<(), BindError> {
    let proxy = runtime.proxy.listen.iter().map(|a| ("proxy.listen", a));
    let tls = runtime
        .tls
        .iter()
        .flat_map(|t| t.listen.iter().map(|a| ("tls.listen", a)));
    let admin = runtime.admin.iter().map(|a| ("admin.listen", &a.listen));
    for (key, addr) in proxy.chain(tls).chain(admin) {
        std::net::TcpListener::bind(addr).map_err(|error| BindError {
            key,
            addr: *addr,
            error,
        })?;
    }
    Ok(())
}

/// Attempts pingora may make at one request. `EdgeProxy` decides which failures are retried:
/// a request that may have reached a server is sent again at most once, a failed connect (the
/// request went nowhere) is tried on another server, each server at most once.
pub const MAX_TRIES: usize = 8;

/// Opens the release timeline beside the release state and says this process started (or
/// took over in an upgrade, naming the version it replaced, read from the timeline).
fn start_timeline(rt: &Runtime, metrics: &Metrics, upgrade: bool) {
    use crate::events::{Event, Kind};
    let timeline = &metrics.timeline;
    timeline.attach(
        &rt.fleet.node,
        rt.release
            .state_file
            .as_deref()
            .map(crate::events::file_beside),
    );
    let version = format!(
        "{} ({})",
        env!("CARGO_PKG_VERSION"),
        env!("CROSSFADE_COMMIT")
    );
    let event = if upgrade {
        let before = timeline
            .since(0)
            .into_iter()
            .rev()
            .find(|e| e.node == rt.fleet.node && matches!(e.kind, Kind::Start | Kind::Upgrade))
            .and_then(|e| e.detail["version"].as_str().map(str::to_string))
            .unwrap_or_else(|| "an unknown version".into());
        Event::new(
            Kind::Upgrade,
            "crossfade",
            format!("binary upgrade: {before} → {version}"),
        )
        .detail(serde_json::json!({ "version": version, "from": before }))
    } else {
        Event::new(
            Kind::Start,
            "crossfade",
            format!("started, version {version}"),
        )
        .detail(serde_json::json!({ "version": version }))
    };
    metrics.event(event);
}

/// Starts serving with `runtime`; never returns (Pingora owns the process from here).
pub fn run(runtime: Runtime, upgrade: bool) -> ! {
    raise_nofile(runtime.proxy.limits.max_connections);
    let conf = ServerConf {
        threads: runtime.server.threads,
        grace_period_seconds: Some(runtime.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(runtime.server.graceful_shutdown_timeout.as_secs()),
        pid_file: runtime.server.pid_file.clone(),
        upgrade_sock: runtime.server.upgrade_sock.clone(),
        // Off by default (`ServerSettings::work_stealing`): each thread is a runtime of its own.
        work_stealing: runtime.server.work_stealing,
        // Pingora's 16, with its own policy, let one GET become 16 origin requests when an
        // origin closed connections without answering: a retry storm on an origin already in
        // trouble. See `MAX_TRIES`.
        max_retries: MAX_TRIES,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let cache = CacheCore::new(&runtime.cache);
    let listen = runtime.proxy.listen.clone();
    let mut options = HttpServerOptions::default();
    options.h2c = runtime.proxy.h2c;
    tracing::info!(
        sites = runtime.sites.list.len(),
        listen = ?listen,
        capacity = runtime.cache.capacity,
        "crossfade starting"
    );
    let admin = runtime.admin.clone();
    let tls = runtime.tls.clone();
    let random_placement = runtime.server.connection_balance == ConnectionBalance::Random;
    let runtime = Arc::new(ArcSwap::from_pointee(runtime));
    let pools = Arc::new(crate::pools::Registry::new(&runtime.load()));
    let release = Arc::new(Release::load(
        &runtime.load(),
        runtime.load().release.state_file.clone(),
    ));
    let metrics = Arc::new(Metrics::new());
    server.add_service(pingora::services::background::background_service(
        "statsd resolver",
        crate::metrics::statsd::Resolver {
            runtime: runtime.clone(),
            metrics: metrics.clone(),
        },
    ));
    let purger = Arc::new(Purger::new(
        runtime.clone(),
        cache.storage,
        release.clone(),
        metrics.clone(),
    ));
    // After the purger: with a fleet, it has given the timeline its way to the other nodes.
    start_timeline(&runtime.load(), &metrics, upgrade);
    if let Some(fleet) = purger.service() {
        server.add_service(pingora::services::background::background_service(
            "fleet", fleet,
        ));
    }
    let verdicts = Arc::new(Verdicts::default());
    let reloader = Arc::new(Reloader::new(
        runtime.clone(),
        release.clone(),
        pools.clone(),
        metrics.clone(),
    ));
    server.add_service(pingora::services::background::background_service(
        "reload on SIGHUP",
        SighupService(reloader.clone()),
    ));
    if let Some(admin) = admin {
        let app = AdminApp::new(
            runtime.clone(),
            cache.storage,
            purger.clone(),
            release.clone(),
            metrics.clone(),
            verdicts.clone(),
            reloader.clone(),
        );
        let mut service = pingora::services::listening::Service::new("crossfade admin".into(), app);
        service.add_tcp(&admin.listen.to_string());
        tracing::info!(listen = %admin.listen, tokens = admin.tokens.len(), "admin API");
        server.add_service(service);
    }
    // Always running: without `[release.judge]` it does nothing, and a reload may add one.
    {
        let judge = Judge {
            runtime: runtime.clone(),
            release: release.clone(),
            pools: pools.clone(),
            metrics: metrics.clone(),
            purger: purger.clone(),
            verdicts: verdicts.clone(),
        };
        server.add_service(pingora::services::background::background_service(
            "canary judge",
            judge,
        ));
    }
    let storage = cache.storage;
    let proxy = EdgeProxy::new(
        runtime.clone(),
        cache,
        purger,
        release.clone(),
        pools.clone(),
        metrics.clone(),
    );
    let fast = crate::proxy::fast::FastPath {
        runtime: runtime.clone(),
        storage,
        max_object_size: cache.max_object_size,
        predictor: cache.predictor,
        release,
        pools: pools.clone(),
        metrics: metrics.clone(),
        draining: proxy.draining(),
    };
    server.add_service(pingora::services::background::background_service(
        "drain on quit",
        DrainOnSignal(proxy.draining(), metrics.clone()),
    ));
    server.add_service(pingora::services::background::background_service(
        "idle origin connections",
        crate::proxy::fast::origin::IdleSweep {
            runtime: runtime.clone(),
        },
    ));
    server.add_service(pingora::services::background::background_service(
        "health checks",
        HealthService {
            pools,
            metrics: metrics.clone(),
        },
    ));
    let mut app = pingora::proxy::http_proxy(&server.configuration, proxy);
    app.server_options = Some(options);
    let mut service = pingora::services::listening::Service::new(
        "crossfade proxy".into(),
        crate::proxy::conn::limit::ConnectionLimit::new(
            app,
            fast,
            runtime.clone(),
            metrics.clone(),
        ),
    );
    service.set_random_placement(random_placement);
    for addr in listen {
        service.add_tcp(&addr.to_string());
    }
    if let Some(tls) = tls {
        // One ticket key for every HTTPS listener: a ticket from one is good on the others.
        let ticketer = crate::tls::ticketer();
        for addr in &tls.listen {
            // The resolver picks certificates by SNI from the running config, so the paths
            // given here are never read.
            let counter = Box::new(HandshakeCounter(metrics.clone()));
            let mut settings = pingora::listeners::tls::TlsSettings::with_callbacks(counter)
                .expect("TLS settings with callbacks");
            settings.set_cert_resolver(Arc::new(SniResolver {
                runtime: runtime.clone(),
            }));
            settings.enable_h2();
            if tls.session_tickets {
                let ticketer = ticketer.clone();
                settings
                    .set_server_config_hook(Box::new(move |c| crate::tls::resumption(c, ticketer)));
            }
            service.add_tls_with_settings(&addr.to_string(), None, settings);
        }
        server.add_service(pingora::services::background::background_service(
            "certificate watcher",
            CertWatcher {
                runtime: runtime.clone(),
                reloader: reloader.clone(),
            },
        ));
    }
    server.add_service(service);
    server.run_forever()
}

/// Raises the soft limit on open descriptors to the hard limit, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: shells and many service managers start
/// processes at a soft limit of 1,024, far below `proxy.max_connections`, and past it every
/// accept fails. Each connection may hold two descriptors (the client and an origin), and
/// large cached bodies hold one each (`cache::body`), so a hard limit below twice
/// `max_connections` is worth a warning at start; it is not an error, as a small site runs well
/// below its configured maximum.
fn raise_nofile(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let before = lim.rlim_cur;
    // An unlimited hard limit still cannot pass the kernel's `fs.nr_open`.
    let most = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .map_or(lim.rlim_max, |n| n.min(lim.rlim_max));
    if lim.rlim_cur < most {
        lim.rlim_cur = most;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            lim.rlim_cur = before;
        }
    }
    let wanted = 2 * max_connections as u64 + 256;
    if lim.rlim_cur < wanted {
        tracing::warn!(
            limit = lim.rlim_cur,
            max_connections,
            wanted,
            "the open-files limit is below what proxy.max_connections may need (two descriptors \
             per connection); raise the hard limit (systemd LimitNOFILE, ulimit -Hn) or lower \
             proxy.max_connections"
        );
    } else if before < lim.rlim_cur {
        tracing::info!(from = before, to = lim.rlim_cur, "open-files limit raised");
    }
}
