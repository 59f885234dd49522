//! Serving threads: with work stealing off (the default), each thread is its own runtime with
//! its own reactor, like an nginx worker; a connection is watched by the reactor of the thread
//! that serves it, and a new one goes to the thread serving the fewest. Read from outside
//! through `/proc` (Linux): which epoll instance of the process holds each client connection's
//! socket.

mod common;
use common::*;
use std::collections::{HashMap, HashSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Socket inode → (local port, remote port) of every established TCP connection on the host.
fn tcp_connections() -> HashMap<u64, (u16, u16)> {
    let mut out = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap(), 16).unwrap();
            if f.len() > 9 && f[3] == "01" {
                out.insert(f[9].parse().unwrap(), (port(f[1]), port(f[2])));
            }
        }
    }
    out
}

/// For each epoll instance of process `pid`, the socket inodes it watches (mio keeps a
/// duplicate of each reactor's epoll fd, and both list the same sockets: one entry per set).
fn epolls(pid: u32) -> Vec<Vec<u64>> {
    let dir = format!("/proc/{pid}/fd");
    let mut socket_of_fd = HashMap::new();
    let mut epoll_fds = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let fd: u32 = entry.file_name().to_string_lossy().parse().unwrap();
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().to_string();
        if let Some(inode) = target.strip_prefix("socket:[") {
            socket_of_fd.insert(fd, inode.trim_end_matches(']').parse::<u64>().unwrap());
        } else if target == "anon_inode:[eventpoll]" {
            epoll_fds.push(fd);
        }
    }
    let sets: HashSet<Vec<u64>> = epoll_fds
        .into_iter()
        .map(|e| {
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{e}")).unwrap();
            let mut watched: Vec<u64> = info
                .lines()
                .filter_map(|l| l.strip_prefix("tfd:"))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u32>().ok())
                .filter_map(|fd| socket_of_fd.get(&fd).copied())
                .collect();
            watched.sort_unstable();
            watched
        })
        .collect();
    sets.into_iter().collect()
}

/// One request on a kept-alive connection, answered 200 with the test origin's body.
async fn ask(c: &mut TcpStream, path: &str) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: www.shop.test\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"0123456789") {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed before {path} was answered");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 "), "{path}");
}

/// For each reactor of the proxy that watches client connections, their client-side ports.
fn clients_per_reactor(proxy: &Proxy) -> Vec<Vec<u16>> {
    let tcp = tcp_connections();
    let port = proxy.addr.port();
    epolls(proxy.pid())
        .into_iter()
        .map(|inodes| {
            let mut ports: Vec<u16> = inodes
                .iter()
                .filter_map(|i| tcp.get(i))
                .filter(|(local, _)| *local == port)
                .map(|(_, remote)| *remote)
                .collect();
            ports.sort_unstable();
            ports
        })
        .filter(|ports| !ports.is_empty())
        .collect()
}

fn origin_for_threads() -> impl std::future::Future<Output = Origin> {
    Origin::start(|req| async move {
        let private = req.uri.path().starts_with("/p");
        let cc = if private { "private" } else { "max-age=60" };
        reply(200, &[("cache-control", cc)], "0123456789")
    })
}

#[tokio::test]
async fn each_connection_is_watched_by_the_reactor_of_the_thread_that_serves_it() {
    let origin = origin_for_threads().await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "[server]\nthreads = 2\n").await;
    // Twenty kept-alive connections, each with a hit, a miss and a pass answered right.
    let mut conns = Vec::new();
    for i in 0..20 {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        for path in ["/c".to_string(), format!("/c{i}"), format!("/p{i}")] {
            ask(&mut c, &path).await;
        }
        conns.push(c);
    }
    let tcp = tcp_connections();
    let proxy_port = proxy.addr.port();
    let holders: Vec<usize> = epolls(proxy.pid())
        .into_iter()
        .map(|inodes| {
            let is_client = |i: &&u64| tcp.get(i).is_some_and(|(local, _)| *local == proxy_port);
            inodes.iter().filter(is_client).count()
        })
        .filter(|clients| *clients > 0)
        .collect();
    assert_eq!(
        holders.iter().sum::<usize>(),
        20,
        "each client connection is watched exactly once: {holders:?}"
    );
    // Both threads serve connections: all twenty in one reactor would be the accepting
    // thread's (as before the socket moved to its serving thread) or tokio's one shared
    // reactor with work stealing.
    assert_eq!(
        holders.len(),
        2,
        "client connections are watched by both threads' reactors: {holders:?}"
    );
    drop(conns);
}

#[tokio::test]
async fn a_new_connection_goes_to_the_thread_serving_the_fewest() {
    let origin = origin_for_threads().await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "[server]\nthreads = 2\n").await;
    // Twenty connections opened one after another (each answered before the next opens).
    let mut conns = Vec::new();
    for i in 0..20 {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        ask(&mut c, &format!("/p{i}")).await;
        conns.push(c);
    }
    let sizes = |r: &[Vec<u16>]| r.iter().map(Vec::len).collect::<Vec<_>>();
    let reactors = clients_per_reactor(&proxy);
    // Placed at random (pingora's way) an even split would come one time in six.
    assert_eq!(sizes(&reactors), [10, 10], "{reactors:?}");
    // The clients close every connection of one thread; once the proxy has let them go, the
    // next ten connections all belong on that thread.
    let gone = reactors[0].clone();
    conns.retain(|c| !gone.contains(&c.local_addr().unwrap().port()));
    assert_eq!(conns.len(), 10);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sizes(&clients_per_reactor(&proxy)) != [10] {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy kept the closed connections: {:?}",
            clients_per_reactor(&proxy)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The socket leaves the reactor a moment before its connection's task has ended.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for i in 0..10 {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        ask(&mut c, &format!("/p{i}")).await;
        conns.push(c);
    }
    let reactors = clients_per_reactor(&proxy);
    assert_eq!(sizes(&reactors), [10, 10], "{reactors:?}");
    drop(conns);
}
