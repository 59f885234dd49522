//! Serving threads: with work stealing off (the default), each thread is its own runtime with
//! its own reactor, like an nginx worker, and a connection is watched by the reactor of the
//! thread that serves it. Read from outside through `/proc` (Linux): which epoll instance of
//! the process holds each client connection's socket.

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

#[tokio::test]
async fn each_connection_is_watched_by_the_reactor_of_the_thread_that_serves_it() {
    let origin = Origin::start(|req| async move {
        let private = req.uri.path().starts_with("/p");
        let cc = if private { "private" } else { "max-age=60" };
        reply(200, &[("cache-control", cc)], "0123456789")
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "[server]\nthreads = 2\n").await;
    // Twenty kept-alive connections, each with a hit, a miss and a pass answered right.
    let mut conns = Vec::new();
    for i in 0..20 {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        for path in ["/c".to_string(), format!("/c{i}"), format!("/p{i}")] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: www.shop.test\r\n\r\n");
            c.write_all(req.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(b"0123456789") {
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection {i} closed before {path} was answered");
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got.starts_with(b"HTTP/1.1 200 "), "{path}");
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
    // Connections are handed to the two threads at random: all twenty in one reactor (the
    // accepting thread's, as before, or tokio's one shared reactor with work stealing) would
    // happen by chance once in a million.
    assert_eq!(
        holders.len(),
        2,
        "client connections are watched by both threads' reactors: {holders:?}"
    );
    drop(conns);
}
