//! Origin faults and abuse: a broken origin gives the client a clean error and stores nothing;
//! a flood of cache-busting URLs does not flush the hot set.

mod common;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw origin: connection `n` (from 0) is answered with `answer(n)` and then closed.
async fn raw_origin(answer: fn(usize) -> &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(answer(n)).await;
                if n == 1 {
                    // Reset instead of a clean close: a zero linger makes the drop send RST
                    // (blocking on drop is what the deprecation warns of, and what we want).
                    #[allow(deprecated)]
                    let _ = sock.set_linger(Some(std::time::Duration::ZERO));
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn malformed_or_cut_origin_answers_become_clean_502s_and_are_not_stored() {
    // 0: not HTTP at all; 1: a head cut off by a reset; 2: an invalid status line;
    // 3 and later: a good, cacheable answer.
    let addr = raw_origin(|n| match n {
        0 => b"HELLO THERE\r\n\r\n",
        1 => b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-le",
        2 => b"HTTP/1.1 2000 WHAT\r\ncache-control: max-age=600\r\ncontent-length: 3\r\n\r\nbad",
        _ => b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 4\r\nconnection: close\r\n\r\ngood",
    })
    .await;
    let proxy = Proxy::single_addr(addr, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for attempt in 0..3 {
        let got = get(&c, &proxy.url("/p"), &[]).await;
        assert_eq!(got.status, 502, "attempt {attempt}: {}", got.body);
        assert!(!got.body.contains("bad"), "{}", got.body);
    }
    let good = get(&c, &proxy.url("/p"), &[]).await;
    assert_eq!((good.status, good.body.as_str()), (200, "good"));
    assert!(
        !good.is_hit(),
        "nothing broken was stored: {}",
        good.cache()
    );
    assert!(get(&c, &proxy.url("/p"), &[]).await.is_hit());
}

#[tokio::test]
async fn a_flood_of_cache_busting_urls_does_not_flush_the_hot_set() {
    let origin = Origin::start(|_| async {
        reply(
            200,
            &[("cache-control", "public, max-age=600")],
            vec![b'x'; 16 << 10],
        )
    })
    .await;
    // Room for about 60 objects of 16 KiB.
    let proxy = Proxy::single(
        &origin,
        HONOR_ALL,
        "[cache]\ncapacity = \"1MiB\"\nmax_object_size = \"64KiB\"\n",
    )
    .await;
    let c = proxy.client(&["www.shop.test"]);
    let hot: Vec<String> = (0..10).map(|i| proxy.url(&format!("/hot/{i}"))).collect();
    for _ in 0..5 {
        for url in &hot {
            get(&c, url, &[]).await;
        }
    }
    // An attacker asks for 2,000 distinct URLs (32 MiB, 32 times the cache), each once, while
    // visitors keep reading the hot pages (one request in eleven). Each burst between two
    // visits is larger than the cache: under plain LRU no hot page would survive it.
    use futures::StreamExt;
    for batch in 0..20 {
        let flood: Vec<_> = (0..100)
            .map(|i| {
                let c = c.clone();
                let url = proxy.url(&format!("/hot/0?bust={batch}-{i}"));
                async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
            })
            .collect();
        let mut statuses = futures::stream::iter(flood).buffer_unordered(16);
        while let Some(s) = statuses.next().await {
            assert_eq!(s.unwrap(), 200, "the flood itself is served");
        }
        for url in &hot {
            get(&c, url, &[]).await;
        }
    }
    let mut hits = 0;
    for url in &hot {
        hits += get(&c, url, &[]).await.is_hit() as usize;
    }
    assert!(
        hits >= 8,
        "only {hits} of 10 hot objects survived the flood"
    );
}

#[tokio::test]
async fn a_listener_that_cannot_bind_stops_crossfade_with_the_address() {
    // Held for the whole test: crossfade must not get it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), HONOR_ALL).unwrap();
    let d = dir.path().display();
    let config = format!(
        "[server]\npid_file = \"{d}/pid\"\nupgrade_sock = \"{d}/upgrade.sock\"\n\
         [proxy]\nlisten = [\"{addr}\"]\n\
         [admin]\nlisten = \"127.0.0.1:{}\"\n\
         [[admin.tokens]]\nname = \"ops\"\ntoken = \"{PURGE_TOKEN}\"\nscopes = [\"purge\"]\n\
         [[sites]]\nname = \"shop\"\nhosts = [\"www.shop.test\"]\nrules = \"rules.toml\"\n\
         [sites.pools.blue]\nservers = [\"127.0.0.1:9\"]\n",
        free_port()
    );
    std::fs::write(dir.path().join("crossfade.toml"), config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .args(["run", "--config"])
        .arg(dir.path().join("crossfade.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(std::time::Duration::from_secs(10), || {
        let done = matches!(child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        exited,
        "still running 10 s after it could not bind: {stderr}"
    );
    assert!(!out.status.success(), "exited {:?}: {stderr}", out.status);
    let said = format!(
        "crossfade: cannot listen on {addr} (proxy.listen): Address already in use (os error 98); \
         another process may hold it, or the address is not this machine's\n"
    );
    assert!(
        stderr.ends_with(&said) && stderr.matches("already in use").count() == 1,
        "the address, its key and the reason, once: {stderr}"
    );
    drop(taken);
}
