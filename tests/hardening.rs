//! Cache poisoning through unkeyed input: headers a naive application trusts never let one
//! client change what another receives from cache; rules can strip or key more headers.

mod common;
use common::*;

const TRUSTED_BY_APPS: [&str; 9] = [
    "x-forwarded-host",
    "x-host",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "forwarded",
    "x-forwarded-for",
];

/// An origin as naive as a real application: it builds its page from whatever headers it gets.
async fn naive_origin() -> Origin {
    Origin::start(|seen| async move {
        let mut page = String::new();
        for name in TRUSTED_BY_APPS.iter().chain(["x-device", "x-debug"].iter()) {
            if let Some(v) = seen.header(name) {
                page.push_str(&format!("{name}={v}\n"));
            }
        }
        reply(200, &[("cache-control", "public, max-age=60")], page)
    })
    .await
}

#[tokio::test]
async fn headers_applications_trust_never_poison_the_cache() {
    let origin = naive_origin().await;
    let rules = r#"
[defaults]
key_headers = ["x-device"]
strip_headers = ["x-debug"]
"#;
    let proxy = Proxy::single(&origin, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let evil: Vec<(&str, &str)> = TRUSTED_BY_APPS
        .iter()
        .map(|h| (*h, "evil.example"))
        .chain([("x-debug", "evil.example")])
        .collect();
    let attacked = get(&c, &proxy.url("/home"), &evil).await;
    assert!(
        !attacked.body.contains("evil"),
        "the attacker's own answer is clean:\n{}",
        attacked.body
    );
    let seen = origin.last();
    for name in TRUSTED_BY_APPS {
        let value = seen.header(name).unwrap_or("");
        assert!(
            !value.contains("evil"),
            "{name} reached the origin: {value}"
        );
    }
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("www.shop.test"),
        "crossfade sets it itself"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));

    let victim = get(&c, &proxy.url("/home"), &[]).await;
    assert!(victim.is_hit(), "{}", victim.cache());
    assert!(
        !victim.body.contains("evil"),
        "a visitor gets a clean page:\n{}",
        victim.body
    );

    // A keyed header splits the cache instead of leaking between variants.
    let mobile = get(&c, &proxy.url("/page"), &[("x-device", "mobile")]).await;
    assert!(mobile.body.contains("x-device=mobile"));
    let desktop = get(&c, &proxy.url("/page"), &[("x-device", "desktop")]).await;
    assert!(desktop.body.contains("x-device=desktop") && !desktop.is_hit());
    let again = get(&c, &proxy.url("/page"), &[("x-device", "mobile")]).await;
    assert!(again.is_hit() && again.body.contains("x-device=mobile"));
}

#[tokio::test]
async fn bad_admin_input_on_every_endpoint_gets_a_reason_and_changes_nothing() {
    use http::Method;
    let origin =
        Origin::start(|_| async { reply(200, &[("cache-control", "max-age=60")], "x") }).await;
    let proxy = Proxy::single(&origin, OVERRIDE_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    get(&c, &proxy.url("/kept"), &[]).await;
    let huge = format!(r#"{{"site":"shop","pool":"{}"}}"#, "x".repeat(70_000));
    let cases: Vec<(&str, &str, String, u16)> = vec![
        (RELEASE_TOKEN, "/pools/flip", "{".into(), 400),
        (
            RELEASE_TOKEN,
            "/pools/flip",
            r#"{"site":"shop","pool":"blue","extra":1}"#.into(),
            400,
        ),
        (
            RELEASE_TOKEN,
            "/pools/flip",
            r#"{"site":"shop","pool":7}"#.into(),
            400,
        ),
        (
            RELEASE_TOKEN,
            "/pools/flip",
            r#"["shop","blue"]"#.into(),
            400,
        ),
        (
            RELEASE_TOKEN,
            "/pools/flip",
            r#"{"site":"shop","pool":"blue","action":"rollback"}"#.into(),
            400,
        ),
        (
            RELEASE_TOKEN,
            "/pools/flip",
            r#"{"site":"nope","pool":"blue"}"#.into(),
            400,
        ),
        (
            RELEASE_TOKEN,
            "/pools/canary",
            r#"{"site":"shop","pool":"blue","percent":300}"#.into(),
            400,
        ),
        (
            RELEASE_TOKEN,
            "/pools/canary",
            r#"{"site":"shop","pool":"blue","percent":-1}"#.into(),
            400,
        ),
        (
            RELEASE_TOKEN,
            "/maintenance",
            r#"{"site":"shop","on":"yes"}"#.into(),
            400,
        ),
        (
            RELEASE_TOKEN,
            "/maintenance",
            r#"{"site":"shop","route":"nope","on":true}"#.into(),
            400,
        ),
        (RELEASE_TOKEN, "/pools/rollback", r#"{}"#.into(), 400),
        (RELEASE_TOKEN, "/pools/flip", huge, 413),
        (
            PURGE_TOKEN,
            "/pools/flip",
            r#"{"site":"shop","pool":"blue"}"#.into(),
            403,
        ),
        (RELEASE_TOKEN, "/purge", r#"{"kind":"all"}"#.into(), 403),
        (RELEASE_TOKEN, "/reload", String::new(), 403),
    ];
    for (token, path, body, expected) in cases {
        let (status, answer) = proxy
            .admin_call(Some(token), Method::POST, path, &body)
            .await;
        assert_eq!(status, expected, "{path} {:.80}: {answer}", body);
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: a reason: {answer}"
        );
    }
    let (_, pools) = proxy
        .admin_call(Some(READ_TOKEN), Method::GET, "/pools", "")
        .await;
    let state = &pools["sites"][0]["state"];
    assert_eq!(
        (state["active"].as_str(), state["canary"].is_null()),
        (Some("blue"), true),
        "{state}"
    );
    assert_eq!(state["maintenance"]["site"], false);
    assert!(
        get(&c, &proxy.url("/kept"), &[]).await.is_hit(),
        "nothing was purged"
    );
    let logs = proxy.stderr() + &proxy.stdout();
    for token in [PURGE_TOKEN, RELEASE_TOKEN, READ_TOKEN] {
        assert!(!logs.contains(token), "tokens are never logged");
    }
}

#[tokio::test]
async fn a_truncated_origin_body_is_never_stored() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw origin: the first answer promises 1000 bytes and dies after 500; later ones are whole.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s2 = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let n = s2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n";
                let _ = sock.write_all(head.as_bytes()).await;
                let body = if n == 0 {
                    vec![b'a'; 500]
                } else {
                    vec![b'b'; 1000]
                };
                let _ = sock.write_all(&body).await;
            });
        }
    });
    let proxy = Proxy::single_addr(addr, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let first = c.get(proxy.url("/t")).send().await;
    let truncated = match first {
        Ok(r) => r.bytes().await.map_or(true, |b| b.len() < 1000),
        Err(_) => true,
    };
    assert!(truncated, "the client does not get a complete-looking body");
    let second = get(&c, &proxy.url("/t"), &[]).await;
    assert_eq!(second.body.len(), 1000);
    assert!(
        second.body.bytes().all(|b| b == b'b'),
        "the partial body was not stored"
    );
    assert!(!second.is_hit());
    assert!(
        get(&c, &proxy.url("/t"), &[]).await.is_hit(),
        "the complete body is stored"
    );
}
