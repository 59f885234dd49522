//! `crossfade demo`: the embedded demo store behind crossfade, in one process.
//!
//! The demo store listens on the addresses of the demo config's pools, so the config file a
//! newcomer reads is exactly what runs.

pub mod origin;

use crate::config::Runtime;
use origin::DemoRelease;

/// Starts the demo store for every pool of every site, prints what to try, and serves.
pub fn run(runtime: Runtime) -> ! {
    if let Err(e) = crate::app::check_listeners(&runtime) {
        eprintln!("crossfade demo: {e}");
        std::process::exit(1);
    }
    let mut listeners = Vec::new();
    for site in &runtime.sites.list {
        for pool in &site.pools {
            for &(addr, _) in &pool.servers {
                match std::net::TcpListener::bind(addr) {
                    Ok(l) => listeners
                        .push((l, DemoRelease::new(&format!("{}-{}", site.name, pool.name)))),
                    Err(e) => {
                        eprintln!("demo: cannot listen on {addr} for pool {}: {e}", pool.name);
                        std::process::exit(1);
                    }
                }
            }
        }
    }
    let hash = listeners
        .first()
        .map(|(_, r)| r.asset_hash.clone())
        .unwrap_or_default();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime for the demo store");
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for (l, release) in listeners {
                l.set_nonblocking(true).expect("nonblocking listener");
                let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
                tasks.push(tokio::spawn(origin::serve(l, release)));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    });
    let addr = runtime
        .proxy
        .listen
        .first()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let host = runtime
        .sites
        .list
        .first()
        .and_then(|s| s.hosts.first())
        .cloned()
        .unwrap_or_default();
    println!(
        "\ncrossfade demo: the demo store is behind crossfade on http://{addr} (site host {host})\n\n\
         Try:\n\
         \x20 curl -si -H 'Host: {host}' http://{addr}/track/1 | grep -i cache-status   # fwd=miss; stored\n\
         \x20 curl -si -H 'Host: {host}' http://{addr}/track/1 | grep -i cache-status   # hit\n\
         \x20 curl -si -H 'Host: {host}' 'http://{addr}/search?utm_source=x&q=disco' | grep -i cache-status\n\
         \x20 curl -si -H 'Host: {host}' -H 'Cookie: session=alice.1' http://{addr}/track/1 | grep -i -e cache-status -e logged\n\
         \x20 curl -si -H 'Host: {host}' http://{addr}/static/{hash}/app.js | grep -i -e cache-control -e cache-status\n\
         \x20 curl -si -H 'Host: unknown.test' http://{addr}/    # 421: unknown hosts are never proxied\n\
         \n\
         In another shell (the `crossfade` command: `cargo install --path . --locked` once, from the clone):\n\
         \x20 crossfade purge --config config/demo.toml key tracks                # purge by surrogate key\n\
         \x20 crossfade pools --config config/demo.toml status                    # pools, health, releases\n\
         \x20 crossfade pools --config config/demo.toml canary store green 50     # half the visitors on green\n\
         \x20   (pages are cached per release; curl without a cookie jar is a new visitor every time)\n\
         \x20 crossfade pools --config config/demo.toml flip store green          # everyone on green\n\
         \x20 crossfade pools --config config/demo.toml rollback store            # back, one step per rollback\n\
         \x20 crossfade maintenance --config config/demo.toml on store --route checkout\n"
    );
    crate::app::run(runtime, false)
}
