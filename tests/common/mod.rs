//! Test harness: real origins (hyper on 127.0.0.1:0) and the real crossfade binary on a
//! reserved port with a generated config. Assertions are on what a client receives.
#![allow(dead_code)]

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What an origin handler sees of a request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type Handler = Arc<dyn Fn(Seen) -> BoxFuture<'static, Response<Full<Bytes>>> + Send + Sync>;

/// Builds a response from a status, headers and a body.
pub fn reply(
    status: u16,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// A real HTTP/1.1 origin on an ephemeral loopback port that records every request.
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    count: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    /// After `kill`: the port, bound but not listening, so connections to it are refused and
    /// no other test's listener can be given it while this test still points a proxy there.
    tombstone: Mutex<Option<tokio::net::TcpSocket>>,
}

impl Origin {
    pub async fn start<F, Fut>(f: F) -> Origin
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |s| Box::pin(f(s)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let (seen2, count2) = (seen.clone(), count.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set, so aborting the task closes them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, seen, count) = (handler.clone(), seen2.clone(), count2.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let s = Seen {
                            version: req.version(),
                            method: req.method().clone(),
                            uri: req.uri().clone(),
                            headers: req.headers().clone(),
                        };
                        seen.lock().unwrap().push(s.clone());
                        count.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(s);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    // HTTP/1.1, or HTTP/2 with prior knowledge (h2c), whichever the client speaks.
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        Origin {
            addr,
            seen,
            count,
            task,
            tombstone: Mutex::new(None),
        }
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection: the origin is down (connections to its
    /// address are refused from now on).
    pub async fn kill(&self) {
        self.task.abort();
        // The listener is dropped when the runtime gets to the aborted task.
        for _ in 0..200 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            if socket.bind(self.addr).is_ok() {
                *self.tombstone.lock().unwrap() = Some(socket);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the killed origin's port {} stayed in use", self.addr);
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("origin saw a request")
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The environment variable that picks the transport every test proxy uses: unset (or `fast`)
/// for crossfade's defaults (the HTTP/1.1 fast transport on), `pingora` for every request
/// through pingora's proxy path (`hit_fast_path = false`, `pass_fast_path = false`). CI runs the
/// whole suite both ways: one behaviour, two transports.
pub const TRANSPORT_VAR: &str = "CROSSFADE_TEST_TRANSPORT";

/// Whether this run's proxies use the fast transport (see [`TRANSPORT_VAR`]).
pub fn fast_transport() -> bool {
    match std::env::var(TRANSPORT_VAR).as_deref() {
        Err(_) | Ok("") | Ok("fast") => true,
        Ok("pingora") => false,
        Ok(other) => panic!("{TRANSPORT_VAR}={other:?}: expected \"fast\" or \"pingora\""),
    }
}

/// `n` when this run uses the fast transport, else "0": what a fast-path counter reads.
pub fn fast_count(n: &str) -> &str {
    if fast_transport() {
        n
    } else {
        "0"
    }
}

/// The `[proxy]` keys this run's transport adds; a key the test sets itself is left to it.
fn transport_keys(extra: &str) -> String {
    if fast_transport() {
        return String::new();
    }
    ["hit_fast_path", "pass_fast_path"]
        .iter()
        .filter(|k| !extra.contains(*k))
        .map(|k| format!("{k} = false\n"))
        .collect()
}

/// A free loopback port for a listener a test starts later (crossfade's, Redis's) or for a
/// server that is meant to be down.
///
/// It comes from below the kernel's ephemeral range: a port `bind(:0)` hands out is released
/// here and bound later, and in between the kernel may give it to another test's origin or to
/// an outgoing connection; a client of this test then talks to that (a TLS handshake answered
/// by a plain HTTP origin ends in "tls handshake eof"). Ports below the range are never handed
/// out by the kernel, and this process hands out each one once, so only another process picking
/// its own ports can take one, and the bind check here skips those already taken.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // 20000 and up: clear of well-known services and of the benchmarks' 19000-19006.
    let (first, span) = (20_000, low.saturating_sub(20_000));
    if span < 1000 {
        // An unusual range leaves no room below it: fall back to the kernel's choice.
        return StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    // Test binaries of one run start apart, so two processes rarely walk the same ports.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (first + (start + n) % span) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {first} and {}", first + span);
}

/// Admin token with the `purge` scope in every test proxy.
pub const PURGE_TOKEN: &str = "test-purge-token-0123456789";
/// Admin token with the `release` scope.
pub const RELEASE_TOKEN: &str = "test-release-token-0123456789";
/// Admin token with only the `read` scope.
pub const READ_TOKEN: &str = "test-read-token-0123456789";

/// The real crossfade binary, started with a generated config.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// One site for [`Proxy::start`].
pub struct SiteSpec<'a> {
    pub name: &'a str,
    pub hosts: &'a [&'a str],
    pub origin: SocketAddr,
    pub rules: &'a str,
}

impl Proxy {
    /// Starts crossfade with `sites` and extra top-level TOML (`[cache]`, `[origin]`, …), then
    /// waits until it accepts connections.
    /// `extra` = `"#default"` makes the first site the default for unknown hosts.
    pub async fn start(sites: &[SiteSpec<'_>], extra: &str) -> Proxy {
        Self::start_limited(sites, extra, None).await
    }

    /// [`Proxy::start`], the process started with a soft limit of `nofile` open files (when
    /// given) and its hard limit unchanged.
    pub async fn start_limited(sites: &[SiteSpec<'_>], extra: &str, nofile: Option<u64>) -> Proxy {
        let default_site = extra == "#default";
        let mut tables = String::new();
        let mut rules = Vec::new();
        for (i, s) in sites.iter().enumerate() {
            let hosts: Vec<String> = s.hosts.iter().map(|h| format!("{h:?}")).collect();
            tables.push_str(&format!(
                "[[sites]]\nname = \"{}\"\nhosts = [{}]\nrules = \"{}.rules.toml\"\ndefault = {}\n\
                 [sites.pools.blue]\nservers = [\"{}\"]\n",
                s.name,
                hosts.join(", "),
                s.name,
                default_site && i == 0,
                s.origin
            ));
            rules.push((s.name, s.rules));
        }
        Self::start_toml_limited(&tables, &rules, extra, nofile).await
    }

    /// Starts crossfade with `[[sites]]` tables written out, and rules files `<name>.rules.toml`.
    /// Ports come from [`free_port`]; when another process took one first, crossfade cannot
    /// bind, and the start is retried on new ports.
    pub async fn start_toml(sites: &str, rules: &[(&str, &str)], extra: &str) -> Proxy {
        Self::start_toml_limited(sites, rules, extra, None).await
    }

    async fn start_toml_limited(
        sites: &str,
        rules: &[(&str, &str)],
        extra: &str,
        nofile: Option<u64>,
    ) -> Proxy {
        // `extra` may open with `[server]` keys of its own (`threads = 2`): they go into the
        // server table, and replace the one thread tests otherwise run on.
        let (server, extra) = match extra.strip_prefix("[server]\n") {
            Some(rest) => rest.split_at(rest.find("\n[").map_or(rest.len(), |i| i + 1)),
            None => ("", extra),
        };
        let threads = if server.contains("threads") {
            ""
        } else {
            "threads = 1\n"
        };
        let mut dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            let d = dir.path().display();
            let mut config = format!(
                "[server]\n{threads}{server}grace_period = \"1s\"\ngraceful_shutdown_timeout = \"1s\"\n\
                 pid_file = \"{d}/crossfade.pid\"\nupgrade_sock = \"{d}/upgrade.sock\"\n\
                 [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
                 [[admin.tokens]]\nname = \"ops\"\ntoken = \"{PURGE_TOKEN}\"\nscopes = [\"purge\"]\n\
                 [[admin.tokens]]\nname = \"viewer\"\ntoken = \"{READ_TOKEN}\"\nscopes = [\"read\"]\n\
                 [[admin.tokens]]\nname = \"release\"\ntoken = \"{RELEASE_TOKEN}\"\nscopes = [\"release\"]\n\
                 {extra}\n"
            );
            let proxy_keys = format!(
                "[proxy]\nlisten = [\"127.0.0.1:{port}\"]\nh2c = true\n{}",
                transport_keys(extra)
            );
            if !extra.contains("[proxy]") {
                config.push_str(&proxy_keys);
            } else {
                config = config.replace("[proxy]\n", &proxy_keys);
            }
            config.push_str(sites);
            for (name, text) in rules {
                std::fs::write(dir.path().join(format!("{name}.rules.toml")), text).unwrap();
            }
            std::fs::write(dir.path().join("crossfade.toml"), config).unwrap();
            match Self::launch(dir, port, admin_port, nofile).await {
                Ok(proxy) => return proxy,
                Err(d) => dir = d,
            }
        }
        panic!("crossfade could not get free ports in 5 attempts");
    }

    /// Starts the binary on the config in `dir` (at a soft limit of `nofile` open files when
    /// given); `Err` (giving the directory back) when it could not bind its ports.
    async fn launch(
        dir: tempfile::TempDir,
        port: u16,
        admin_port: u16,
        nofile: Option<u64>,
    ) -> Result<Proxy, tempfile::TempDir> {
        let log = |name: &str| {
            Stdio::from(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(dir.path().join(name))
                    .unwrap(),
            )
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_crossfade"));
        command
            .args(["run", "--config"])
            .arg(dir.path().join("crossfade.toml"))
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"));
        if let Some(soft) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the forked child before exec and only calls getrlimit and
            // setrlimit, which are async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = soft;
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let mut proxy = Proxy {
            addr,
            admin,
            dir,
            child,
        };
        let config = proxy
            .dir
            .path()
            .join("crossfade.toml")
            .display()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = proxy.child.try_wait() {
                let stderr = proxy.stderr();
                // Only a port someone else took is worth a retry; anything else is the test's
                // config or a bug, and the message says which.
                assert!(
                    stderr.contains("in use") || stderr.contains("bind"),
                    "crossfade exited: {stderr}"
                );
                let dir = std::mem::replace(&mut proxy.dir, tempfile::tempdir().unwrap());
                return Err(dir);
            }
            // Both ports answer, and they are ours (not another test's crossfade).
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let (status, body) = proxy.admin_call_quiet(Method::GET, "/status").await;
                if status == 200 && body["config"] == config.as_str() {
                    return Ok(proxy);
                }
            }
            assert!(
                Instant::now() < deadline,
                "crossfade did not start: {}",
                proxy.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET` on the admin API with the read token; (0, null) when it does not answer.
    async fn admin_call_quiet(&self, method: Method, path: &str) -> (u16, serde_json::Value) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let req = client
            .request(method, format!("http://{}{path}", self.admin))
            .bearer_auth(READ_TOKEN);
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or_default())
            }
            Err(_) => (0, serde_json::Value::Null),
        }
    }

    /// Stops this crossfade (SIGKILL) and starts it again with the same config, files and ports.
    pub async fn restart(mut self) -> Proxy {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let (port, admin_port) = (self.addr.port(), self.admin.port());
        drop(self);
        match Self::launch(dir, port, admin_port, None).await {
            Ok(p) => p,
            Err(_) => panic!("crossfade could not bind its ports again after a restart"),
        }
    }

    /// A single site `shop` for `www.shop.test` in front of `origin`.
    pub async fn single(origin: &Origin, rules: &str, extra: &str) -> Proxy {
        Self::single_addr(origin.addr, rules, extra).await
    }

    /// [`Proxy::single`] in front of any origin address (a raw TCP origin, say).
    pub async fn single_addr(origin: SocketAddr, rules: &str, extra: &str) -> Proxy {
        Self::start(
            &[SiteSpec {
                name: "shop",
                hosts: &["www.shop.test"],
                origin,
                rules,
            }],
            extra,
        )
        .await
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An HTTP/1.1 client that resolves every test host name to this proxy.
    pub fn client(&self, hosts: &[&str]) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        for h in hosts {
            b = b.resolve(h, self.addr);
        }
        b.build().unwrap()
    }

    /// An HTTP/2 (h2c, prior knowledge) client resolving the test host names to this proxy.
    pub fn h2_client(&self, hosts: &[&str]) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge();
        for h in hosts {
            b = b.resolve(h, self.addr);
        }
        b.build().unwrap()
    }

    /// Sends a JSON body to the admin API with `token`; returns (status, parsed body).
    pub async fn admin_call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut req = client
            .request(method, format!("http://{}{path}", self.admin))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// `POST /purge` with the purge token; panics unless it answers 200.
    pub async fn purge(&self, body: serde_json::Value) -> serde_json::Value {
        let (status, report) = self
            .admin_call(Some(PURGE_TOKEN), Method::POST, "/purge", &body.to_string())
            .await;
        assert_eq!(status, 200, "purge {body}: {report}");
        report
    }

    /// `http://www.shop.test:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        self.url_for("www.shop.test", path)
    }

    pub fn url_for(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the proxy said (its last lines), which is most often why.
        if std::thread::panicking() {
            let log = self.stderr();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "--- crossfade stderr (last 40 lines) ---\n{}",
                tail.join("\n")
            );
        }
    }
}

/// A response as the client received it.
/// The value of the first sample of a counter family on the proxy's `/metrics` ("0" when the
/// family has no sample yet).
/// A counter the proxy may still be adding to when the answer that it counts has arrived (the
/// fast transports count after they write): read until it shows `want`, or for two seconds.
pub async fn counter_reaches(proxy: &Proxy, family: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let seen = proxy_counter(proxy, family).await;
        if seen == want || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn proxy_counter(proxy: &Proxy, family: &str) -> String {
    let (_, metrics) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/metrics", "")
        .await;
    let text = metrics.as_str().unwrap_or_default().to_string();
    let prefix = format!("{family}{{");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .map_or("0".into(), |l| {
            l.rsplit(' ').next().unwrap_or("0").to_string()
        })
}

pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `Cache-Status` value.
    pub fn cache(&self) -> &str {
        self.header("cache-status")
    }

    pub fn is_hit(&self) -> bool {
        let c = self.cache();
        c.contains("; hit") && !c.contains("fwd=")
    }
}

pub async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Got {
    send(client, Method::GET, url, headers).await
}

pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut req = client.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap();
    Got {
        status,
        headers,
        body,
    }
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rules with one override route for everything under `/`.
pub const OVERRIDE_ALL: &str = r#"
[defaults]
bypass_cookies = ["session", "PHPSESSID"]
[[routes]]
name = "all"
prefix = "/"
mode = "override"
edge_ttl = "5m"
"#;

/// Rules where every request honours the origin.
pub const HONOR_ALL: &str = r#"
[defaults]
bypass_cookies = ["session"]
"#;

/// A real redis-server on a free loopback port, without persistence; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub async fn start() -> Redis {
        for _ in 0..5 {
            if let Some(r) = Self::try_start(free_port()).await {
                return r;
            }
        }
        panic!("redis-server could not get a free port in 5 attempts");
    }

    /// Starts redis-server on `port`; panics if it cannot (use [`Redis::start`] for any port).
    pub async fn start_on(port: u16) -> Redis {
        Self::try_start_on(port)
            .await
            .expect("redis-server could not bind its port")
    }

    async fn try_start(port: u16) -> Option<Redis> {
        Self::try_start_on(port).await
    }

    /// A replica of the Redis on `primary`, on a free port.
    pub async fn start_replica_of(primary: u16) -> Redis {
        let of = format!("127.0.0.1 {primary}");
        for _ in 0..5 {
            if let Some(r) = Self::try_start_with(free_port(), &["--replicaof", &of]).await {
                return r;
            }
        }
        panic!("redis-server could not get a free port in 5 attempts");
    }

    /// A Redis Sentinel on a free port watching the primary on `primary` under `name`
    /// (down after 1 s, one sentinel's vote is a quorum).
    pub async fn start_sentinel(primary: u16, name: &str, dir: &std::path::Path) -> Redis {
        for attempt in 0..5 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{attempt}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {primary} 1\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 5000\n"
                ),
            )
            .unwrap();
            let conf = conf.to_string_lossy().to_string();
            if let Some(r) = Self::spawn_checked(port, &[&conf, "--sentinel"]).await {
                return r;
            }
        }
        panic!("redis-sentinel could not get a free port in 5 attempts");
    }

    /// Starts redis-server and waits until the server on `port` is this process (another
    /// test's Redis may have taken the port first).
    async fn try_start_on(port: u16) -> Option<Redis> {
        Self::try_start_with(port, &[]).await
    }

    async fn try_start_with(port: u16, extra: &[&str]) -> Option<Redis> {
        let port_arg = port.to_string();
        let mut args = vec![
            "--port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        args.extend_from_slice(extra);
        Self::spawn_checked(port, &args).await
    }

    /// Spawns redis-server with `args` and waits until the server on `port` is that process.
    async fn spawn_checked(port: u16, args: &[&str]) -> Option<Redis> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server must be installed (apt-get install redis-server; .ci/run does it)",
            );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let mut buf = vec![0u8; 16384];
                if s.write_all(b"INFO server\r\n").await.is_ok() {
                    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                        .unwrap_or(0);
                    let info = String::from_utf8_lossy(&buf[..n]);
                    if info.contains(&format!("process_id:{}\r", child.id())) {
                        return Some(Redis { port, child });
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The redis-server process (to stop and continue it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `[fleet]` config for a node called `node` on this Redis.
    pub fn fleet(&self, node: &str) -> String {
        format!(
            "[fleet]\nnode = \"{node}\"\nredis = \"{}\"\nconfirm_timeout = \"1s\"\n",
            self.url()
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal (`STOP`, `CONT`, …) to a process.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
    if sig == "STOP" {
        // kill(2) returns before every thread has stopped; wait until the process is.
        let stopped = || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .all(|t| {
                    std::fs::read_to_string(t.path().join("stat"))
                        .ok()
                        .and_then(|s| {
                            s.rsplit(')')
                                .next()
                                .map(|r| r.trim_start().starts_with('T'))
                        })
                        .unwrap_or(true)
                })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !stopped() {
            assert!(Instant::now() < deadline, "process {pid} did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Proxy {
    /// Graceful binary upgrade: a new process started with `--upgrade` takes the listening
    /// sockets from this one, which is then told to quit (SIGQUIT) and drains.
    pub async fn upgrade(&mut self) {
        let log = |name: &str| {
            Stdio::from(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join(name))
                    .unwrap(),
            )
        };
        let new = Command::new(env!("CARGO_BIN_EXE_crossfade"))
            .args(["run", "--upgrade", "--config"])
            .arg(self.dir.path().join("crossfade.toml"))
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .unwrap();
        // The new process waits on the upgrade socket; give it a moment to listen there.
        let sock = self.dir.path().join("upgrade.sock");
        assert!(
            eventually(Duration::from_secs(10), || async { sock.exists() }).await,
            "new process not waiting for sockets"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let old_pid = self.child.id();
        let mut old = std::mem::replace(&mut self.child, new);
        signal(old_pid, "QUIT");
        let exited = eventually(Duration::from_secs(30), || {
            let done = matches!(old.try_wait(), Ok(Some(_)));
            async move { done }
        })
        .await;
        assert!(exited, "the old process did not finish draining");
    }

    /// Sends SIGHUP (reload).
    pub fn hup(&self) {
        signal(self.child.id(), "HUP");
    }
}
