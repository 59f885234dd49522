//! TLS termination: SNI picks the certificate (clients verify against the test CA), HTTP/2 over
//! TLS by ALPN, certificate rotation without a restart, and the HTTP→HTTPS redirect.

mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

fn dev_certs(dir: &Path, hosts: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .args(["certs", "dev", "--out"])
        .arg(dir)
        .args(hosts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn https_client(ca_dir: &Path, tls: std::net::SocketAddr) -> reqwest::Client {
    https_builder(ca_dir, tls).build().unwrap()
}

fn https_builder(ca_dir: &Path, tls: std::net::SocketAddr) -> reqwest::ClientBuilder {
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(ca_dir.join("ca.pem")).unwrap()).unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve("a.test", tls)
        .resolve("b.test", tls)
}

#[tokio::test]
async fn sni_http2_rotation_and_redirect() {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path(), &["a.test", "b.test"]);
    let origin = Origin::start(|seen| async move {
        let proto = seen.header("x-forwarded-proto").unwrap_or("-").to_string();
        reply(
            200,
            &[],
            format!("proto={proto} host={}", seen.header("host").unwrap_or("-")),
        )
    })
    .await;
    let tls_port = free_port();
    let d = certs.path().display();
    let extra = format!(
        "[tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\n\
         [[tls.certs]]\ncert = \"{d}/a.test.pem\"\nkey = \"{d}/a.test-key.pem\"\nhosts = [\"a.test\"]\n\
         [[tls.certs]]\ncert = \"{d}/b.test.pem\"\nkey = \"{d}/b.test-key.pem\"\nsite = \"b\"\n"
    );
    let sites = format!(
        "[[sites]]\nname = \"a\"\nhosts = [\"a.test\"]\nrules = \"a.rules.toml\"\n[sites.pools.blue]\nservers = [\"{0}\"]\n\
         [[sites]]\nname = \"b\"\nhosts = [\"b.test\"]\nrules = \"b.rules.toml\"\nhttps_redirect = true\n[sites.pools.blue]\nservers = [\"{0}\"]\n",
        origin.addr
    );
    let proxy = Proxy::start_toml(&sites, &[("a", HONOR_ALL), ("b", HONOR_ALL)], &extra).await;
    let tls: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let c = https_client(certs.path(), tls);
    for host in ["a.test", "b.test"] {
        let resp = c
            .get(format!("https://{host}:{tls_port}/x"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(resp.version(), http::Version::HTTP_2, "ALPN picks h2");
        let body = resp.text().await.unwrap();
        assert!(
            body.starts_with(&format!("proto=https host={host}")),
            "the certificate for {host} verified; origin told https: {body}"
        );
    }

    let (_, m) = proxy
        .admin_call(Some(READ_TOKEN), http::Method::GET, "/metrics", "")
        .await;
    assert!(
        m.as_str()
            .unwrap()
            .contains(r#"crossfade_tls_handshakes_total{result="ok"}"#),
        "handshakes are counted"
    );

    // Plain HTTP to the redirecting site.
    let plain = proxy.client(&["b.test", "a.test"]);
    let got = get(&plain, &proxy.url_for("b.test", "/p?q=1"), &[]).await;
    assert_eq!(
        (got.status, got.header("location")),
        (301, format!("https://b.test:{tls_port}/p?q=1").as_str())
    );
    assert_eq!(
        get(&plain, &proxy.url_for("a.test", "/p"), &[])
            .await
            .status,
        200,
        "site a has no redirect"
    );

    // Rotation: a certificate from a new CA replaces a.test's files; a client that trusts only
    // the new CA fails before and succeeds after, without a restart.
    let new_ca = tempfile::tempdir().unwrap();
    dev_certs(new_ca.path(), &["a.test"]);
    let c2 = https_client(new_ca.path(), tls);
    let url = format!("https://a.test:{tls_port}/rotated");
    assert!(
        c2.get(&url).send().await.is_err(),
        "the old certificate is not trusted by the new CA"
    );
    // A rules file edited on disk at the same moment is not applied by the rotation: only
    // certificates are re-read.
    let pass = format!(
        "{HONOR_ALL}\n[[routes]]\nname = \"private\"\nprefix = \"/private/\"\nmode = \"pass\"\n"
    );
    std::fs::write(proxy.dir.path().join("a.rules.toml"), pass).unwrap();
    let route_pass = || async {
        get(&plain, &proxy.url_for("a.test", "/private/x"), &[])
            .await
            .cache()
            .contains("detail=route-pass")
    };
    assert!(!route_pass().await);
    for f in ["a.test.pem", "a.test-key.pem"] {
        std::fs::copy(new_ca.path().join(f), certs.path().join(f)).unwrap();
    }
    let rotated = eventually(Duration::from_secs(10), || async {
        c2.get(&url).send().await.is_ok()
    })
    .await;
    assert!(rotated, "the new certificate is served: {}", proxy.stderr());
    assert!(
        !route_pass().await,
        "the half-edited rules file is not applied by a certificate change: {}",
        proxy.stderr()
    );
    assert!(proxy.stderr().contains("certificates reloaded"));
    assert!(
        !proxy.stderr().contains("config reloaded"),
        "{}",
        proxy.stderr()
    );
    // The next reload applies it.
    proxy.hup();
    assert!(eventually(Duration::from_secs(5), route_pass).await);
}

#[tokio::test]
async fn a_pool_can_speak_http2_to_its_servers() {
    let origin = Origin::start(|seen| async move {
        let cc = if seen.uri.path() == "/private" {
            "private"
        } else {
            "max-age=60"
        };
        reply(200, &[("cache-control", cc)], format!("{:?}", seen.version))
    })
    .await;
    let sites = format!(
        "[[sites]]\nname = \"shop\"\nhosts = [\"www.shop.test\"]\nrules = \"shop.rules.toml\"\n\
         [sites.pools.blue]\nservers = [\"{}\"]\nhttp2 = true\n",
        origin.addr
    );
    let proxy = Proxy::start_toml(&sites, &[("shop", HONOR_ALL)], "").await;
    let c = proxy.client(&["www.shop.test"]);
    // The second /private is a known pass: the pass fast path leaves h2 pools to pingora.
    for path in ["/a", "/b", "/a", "/private", "/private"] {
        let got = get(&c, &proxy.url(path), &[]).await;
        assert_eq!((got.status, got.body.as_str()), (200, "HTTP/2.0"), "{path}");
    }
}

#[tokio::test]
async fn large_cached_bodies_are_encrypted_whole_over_http1_and_http2() {
    // Bodies this large live in a memory file; plain HTTP/1 hits send them with sendfile,
    // which must never happen on a TLS connection.
    let body: String = (0..40_000).map(|i| format!("{i:08}\n")).collect();
    let served = body.clone();
    let origin = Origin::start(move |_| {
        let b = served.clone();
        async move { reply(200, &[("cache-control", "max-age=60")], b) }
    })
    .await;
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path(), &["a.test"]);
    let tls_port = free_port();
    let d = certs.path().display();
    let extra = format!(
        "[tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\n\
         [[tls.certs]]\ncert = \"{d}/a.test.pem\"\nkey = \"{d}/a.test-key.pem\"\nhosts = [\"a.test\"]\n"
    );
    let sites = format!(
        "[[sites]]\nname = \"a\"\nhosts = [\"a.test\"]\nrules = \"a.rules.toml\"\n[sites.pools.blue]\nservers = [\"{}\"]\n",
        origin.addr
    );
    let proxy = Proxy::start_toml(&sites, &[("a", HONOR_ALL)], &extra).await;
    let tls: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let h1 = https_builder(certs.path(), tls)
        .http1_only()
        .build()
        .unwrap();
    let h2 = https_client(certs.path(), tls);
    let url = format!("https://a.test:{tls_port}/big");
    for (i, c) in [&h1, &h1, &h2, &h1].into_iter().enumerate() {
        let resp = c.get(&url).send().await.unwrap();
        let cache = resp
            .headers()
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert_eq!(cache.contains("; hit"), i > 0, "request {i}: {cache}");
        let got = resp.bytes().await.unwrap();
        assert!(
            got == body.as_bytes(),
            "request {i}: the body arrives whole"
        );
    }
    assert_eq!(origin.hits(), 1);
    // The two kept-alive TLS connections are open connections too.
    let (_, m) = proxy
        .admin_call(Some(READ_TOKEN), http::Method::GET, "/metrics", "")
        .await;
    let m = m.as_str().unwrap_or_default().to_string();
    let open = m
        .lines()
        .find_map(|l| l.strip_prefix("crossfade_connections_open "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(open.is_some_and(|n| n >= 2.0), "{open:?}");
}

#[test]
fn dev_certificates_keep_their_keys_private_and_last_a_year() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    dev_certs(dir.path(), &["a.test"]);
    for key in ["ca-key.pem", "a.test-key.pem"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}: {mode:o}");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for cert in ["ca.pem", "a.test.pem"] {
        let pem = std::fs::read(dir.path().join(cert)).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let parsed = pem.parse_x509().unwrap();
        let until = parsed.validity().not_after.timestamp();
        let days = (until - now) / 86_400;
        assert!(
            (364..=366).contains(&days),
            "{cert}: valid for {days} more days"
        );
    }
}

/// One request on a new TLS connection to `a.test`; whether its handshake resumed a session.
/// The answer is read to its end, so the session tickets sent after the handshake are kept.
fn resumed(addr: std::net::SocketAddr, config: &std::sync::Arc<rustls::ClientConfig>) -> bool {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let mut conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

/// Whether a client resumes its session after 300 other clients have had theirs (600
/// tickets: more than rustls's 256-session cache holds), with `tls.session_tickets` as given.
async fn resumes_after_300_others(session_tickets: &str) -> bool {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path(), &["a.test"]);
    let origin = Origin::start(|_| async { reply(200, &[], "ok") }).await;
    let tls_port = free_port();
    let d = certs.path().display();
    let extra = format!(
        "[tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\n{session_tickets}\n\
         [[tls.certs]]\ncert = \"{d}/a.test.pem\"\nkey = \"{d}/a.test-key.pem\"\nhosts = [\"a.test\"]\n"
    );
    let sites = format!(
        "[[sites]]\nname = \"a\"\nhosts = [\"a.test\"]\nrules = \"a.rules.toml\"\n[sites.pools.blue]\nservers = [\"{}\"]\n",
        origin.addr
    );
    let _proxy = Proxy::start_toml(&sites, &[("a", HONOR_ALL)], &extra).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let ca = std::fs::read(certs.path().join("ca.pem")).unwrap();
    tokio::task::spawn_blocking(move || {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &ca[..]) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = |resume: bool| {
            let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            if !resume {
                c.resumption = rustls::client::Resumption::disabled();
            }
            std::sync::Arc::new(c)
        };
        let returning = config(true);
        assert!(
            !resumed(addr, &returning),
            "a first visit is a full handshake"
        );
        let others = config(false);
        for _ in 0..300 {
            resumed(addr, &others);
        }
        resumed(addr, &returning)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_returning_client_resumes_its_tls_session_however_many_came_between() {
    assert!(
        resumes_after_300_others("").await,
        "session tickets are on by default: the returning client resumed"
    );
    // Off: only the server's session cache is left, and 300 clients went through it.
    assert!(
        !resumes_after_300_others("session_tickets = false").await,
        "tls.session_tickets = false: no ticket to resume with"
    );
}
