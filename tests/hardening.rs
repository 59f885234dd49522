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
