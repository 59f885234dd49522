//! Chaos: steady keep-alive load while the pool's two servers die, come back, hang, reset
//! mid-body and answer 500s on one route. What must hold throughout:
//! - a failed answer is one the origin itself failed (by the request id it saw), never the
//!   edge's own doing; cached pages are always answered (stale copies cover every failure);
//! - a connection is never found dead after an answer that promised keep-alive;
//! - nothing wrong is cached (every page is its own, whole, afterwards).
//!
//! The figures it prints are quoted in the README.

mod common;
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RULES: &str = r#"
[defaults]
bypass_cookies = ["session"]
stale_if_error = "1h"
[[routes]]
name = "live"
prefix = "/live/"
mode = "pass"
[[routes]]
name = "api"
prefix = "/api/"
mode = "pass"
"#;

const NORMAL: u8 = 0;
/// Reads a request and never answers it.
const HANG: u8 = 1;
/// Sends the head and part of the body of `/live/…`, then resets the connection.
const RESET_MID_BODY: u8 = 2;

/// What the origin did with each request id it saw that it failed.
type Failed = Arc<Mutex<HashMap<String, &'static str>>>;

/// One application server of the chaos pool, on a fixed port so it can die and come back.
struct Server {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    api_500: Arc<AtomicBool>,
    failed: Failed,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Server {
    async fn start(failed: Failed, api_500: Arc<AtomicBool>) -> Arc<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Arc::new(Server {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(AtomicU8::new(NORMAL)),
            api_500,
            failed,
            task: Mutex::new(None),
        });
        server.serve(listener);
        server
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                conns.spawn(me.clone().connection(sock));
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Dies: connections close, new ones are refused.
    fn kill(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }

    async fn revive(self: &Arc<Self>) {
        for _ in 0..200 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                return self.serve(listener);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the chaos server's port stayed taken");
    }

    async fn connection(self: Arc<Self>, mut sock: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                buf.drain(..end + 4);
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let id = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-request-id:"))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default();
                let fail = |what| self.failed.lock().unwrap().insert(id.clone(), what);
                let mode = self.mode.load(Ordering::SeqCst);
                if mode == HANG {
                    fail("hang");
                    std::future::pending::<()>().await;
                }
                let (status, cc, body) = if path.starts_with("/page/") {
                    let cc = "max-age=1, stale-if-error=60";
                    (200, cc, format!("page {path}"))
                } else if path.starts_with("/api/") && self.api_500.load(Ordering::SeqCst) {
                    fail("500");
                    (500, "no-store", "api failed".to_string())
                } else {
                    (200, "no-store", format!("{path} {}", "x".repeat(2000)))
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nCache-Control: {cc}\r\n\
                     Content-Type: text/html\r\n\r\n",
                    body.len()
                );
                if mode == RESET_MID_BODY && path.starts_with("/live/") {
                    fail("reset");
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body.as_bytes()[..100]).await;
                    #[allow(deprecated)]
                    let _ = sock.set_linger(Some(Duration::ZERO));
                    return;
                }
                let answer = [head.as_bytes(), body.as_bytes()].concat();
                if sock.write_all(&answer).await.is_err() {
                    return;
                }
            }
            match sock.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
    }
}

/// One answer as a client read it.
struct Answer {
    status: u16,
    head: String,
    body: String,
    /// The whole body arrived.
    whole: bool,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map_or("", str::trim)
    }
}

/// Reads one Content-Length-framed answer; `None` when nothing came before the connection
/// ended (or 10 s passed).
async fn read_answer(sock: &mut TcpStream) -> Option<Answer> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // (end of head, body length, body bytes here) once the head is in.
        let framed = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|end| {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            (end, head, length, raw.len() - end - 4)
        });
        let answer = |(end, head, length, have): (usize, String, usize, usize)| {
            let body = &raw[end + 4..end + 4 + have.min(length)];
            Answer {
                status: head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                whole: have >= length,
                body: String::from_utf8_lossy(body).to_string(),
                head,
            }
        };
        if let Some(f) = framed.clone().filter(|f| f.3 >= f.2) {
            return Some(answer(f));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&buf[..n]),
            // Cut short: the head (if any) with what came of the body.
            _ => return framed.map(answer),
        }
    }
}

/// What the load saw.
#[derive(Default, Debug)]
struct Tally {
    requests: usize,
    ok: usize,
    /// Failed answers the origin failed (by request id).
    origin_failed: usize,
    /// Everything that must not happen, described.
    violations: Vec<String>,
}

/// One client: keep-alive requests in a loop until `stop`, reconnecting only after an answer
/// that said `Connection: close` (or a failed one).
async fn client(proxy: SocketAddr, n: usize, stop: Arc<AtomicBool>, failed: Failed) -> Tally {
    let mut tally = Tally::default();
    let mut sock: Option<TcpStream> = None;
    let mut i = n * 1_000_000;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let path = match i % 4 {
            0 | 1 => format!("/page/{}", i % 20),
            2 => format!("/live/{i}"),
            _ => "/api/x".to_string(),
        };
        let kept = sock.is_some();
        let s = match sock.take() {
            Some(s) => s,
            None => TcpStream::connect(proxy).await.unwrap(),
        };
        let mut s = s;
        let request = format!("GET {path} HTTP/1.1\r\nHost: www.shop.test\r\n\r\n");
        tally.requests += 1;
        let answer = match s.write_all(request.as_bytes()).await {
            Ok(()) => read_answer(&mut s).await,
            Err(_) => None,
        };
        let Some(a) = answer else {
            let how = if kept {
                "after a keep-alive answer"
            } else {
                "on a new connection"
            };
            tally.violations.push(format!("{path}: no answer {how}"));
            continue;
        };
        if a.status == 200 && a.whole {
            tally.ok += 1;
            if path.starts_with("/page/") && a.body != format!("page {path}") {
                tally
                    .violations
                    .push(format!("{path}: another page's body {:?}", a.body));
            }
        } else {
            let id = a.header("x-request-id").to_string();
            let what = failed.lock().unwrap().get(&id).copied();
            match what {
                Some(_) if !path.starts_with("/page/") => tally.origin_failed += 1,
                _ => {
                    tally.violations.push(format!(
                    "{path} {id}: {} (whole: {}) the origin did not fail (it says {what:?}): {}",
                    a.status,
                    a.whole,
                    a.head.lines().find(|l| l.starts_with("cache-status")).unwrap_or("")
                ))
                }
            }
        }
        if a.whole && !a.head.contains("\r\nconnection: close") {
            sock = Some(s);
        }
    }
    tally
}

#[tokio::test]
async fn under_origin_chaos_every_failed_answer_is_the_origins_own() {
    let failed: Failed = Arc::default();
    let api_500 = Arc::new(AtomicBool::new(false));
    let a = Server::start(failed.clone(), api_500.clone()).await;
    let b = Server::start(failed.clone(), api_500.clone()).await;
    let sites = format!(
        "[[sites]]\nname = \"shop\"\nhosts = [\"www.shop.test\"]\nrules = \"shop.rules.toml\"\n\
         [sites.pools.blue]\nservers = [\"{}\", \"{}\"]\npassive_down = \"1s\"\n",
        a.addr, b.addr
    );
    let extra = "[origin]\nread_timeout = \"500ms\"\n";
    let proxy = Proxy::start_toml(&sites, &[("shop", RULES)], extra).await;
    let c = proxy.client(&["www.shop.test"]);
    for i in 0..20 {
        assert_eq!(
            get(&c, &proxy.url(&format!("/page/{i}")), &[]).await.status,
            200
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..12)
        .map(|n| tokio::spawn(client(proxy.addr, n, stop.clone(), failed.clone())))
        .collect();
    let phase = |d: u64| tokio::time::sleep(Duration::from_millis(d));
    let phases = AtomicUsize::new(0);
    let next = || phases.fetch_add(1, Ordering::SeqCst);
    phase(800).await;
    next();
    a.kill(); // a dies
    phase(1500).await;
    a.revive().await; // a comes back, b hangs
    b.mode.store(HANG, Ordering::SeqCst);
    phase(1500).await;
    b.mode.store(NORMAL, Ordering::SeqCst); // a resets mid-body
    a.mode.store(RESET_MID_BODY, Ordering::SeqCst);
    phase(1500).await;
    a.mode.store(NORMAL, Ordering::SeqCst); // the API answers 500s
    api_500.store(true, Ordering::SeqCst);
    phase(1500).await;
    api_500.store(false, Ordering::SeqCst); // all well again
    phase(1500).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = Tally::default();
    for t in clients {
        let t = t.await.unwrap();
        total.requests += t.requests;
        total.ok += t.ok;
        total.origin_failed += t.origin_failed;
        total.violations.extend(t.violations);
    }
    let failed_by_origin = failed.lock().unwrap().len();
    println!(
        "chaos: {} requests, {} ok, {} failed answers all failed by the origin ({} requests \
         the origin failed), {} violations",
        total.requests,
        total.ok,
        total.origin_failed,
        failed_by_origin,
        total.violations.len()
    );
    if !total.violations.is_empty() {
        let log = proxy.stdout();
        for v in &total.violations {
            let path = format!("path=\"{}\"", v.split(' ').next().unwrap_or("-"));
            for l in log
                .lines()
                .filter(|l| l.contains(&path) && !l.contains("status=200"))
            {
                println!("{l}");
            }
        }
    }
    assert!(
        total.violations.is_empty(),
        "{} of {} requests went wrong:\n{}",
        total.violations.len(),
        total.requests,
        total.violations[..total.violations.len().min(20)].join("\n")
    );
    assert!(total.requests > 500 && total.origin_failed > 0, "{total:?}");

    // Nothing wrong was kept: every page is its own and whole.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..20 {
        let path = format!("/page/{i}");
        let got = get(&c, &proxy.url(&path), &[]).await;
        assert_eq!((got.status, got.body), (200, format!("page {path}")));
    }
}
