//! RFC 9111 behaviours a store may rely on without writing a rule (issue 19, second part), as
//! exchanges: heuristic freshness (§4.2.2), the three date forms (RFC 9110 §5.6.7), Vary
//! matching that normalises (§4.1), requests with Authorization (§3.5) and `must-understand`
//! (§5.2.2.3).

mod common;
use common::*;
use std::time::Duration;

/// Ten days before the `Date` of [`dated`]: a tenth of that is a day of heuristic freshness.
const TEN_DAYS_EARLIER: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

/// `fields` plus a `Date` of now.
fn dated<'a>(fields: &[(&'a str, &'a str)], now: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut all = fields.to_vec();
    all.push(("date", now));
    all
}

#[tokio::test]
async fn a_response_with_only_last_modified_is_fresh_for_a_tenth_of_its_unchanged_time() {
    let origin = Origin::start(|_| async move {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        reply(
            200,
            &dated(&[("last-modified", TEN_DAYS_EARLIER)], &now),
            "page",
        )
    })
    .await;
    let rules = "[defaults]\nbypass_cookies = [\"session\"]\n\
                 [[routes]]\nname = \"off\"\nprefix = \"/off\"\nheuristic_freshness = false\n\
                 [[routes]]\nname = \"capped\"\nprefix = \"/capped\"\nheuristic_max = \"1s\"\n";
    let proxy = Proxy::single(&origin, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for path in ["/page", "/off", "/capped"] {
        get(&c, &proxy.url(path), &[]).await;
    }
    let page = get(&c, &proxy.url("/page"), &[]).await;
    assert!(page.is_hit(), "heuristically fresh: {}", page.cache());
    assert_eq!(origin.hits(), 3);
    let off = get(&c, &proxy.url("/off"), &[]).await;
    assert!(
        !off.is_hit(),
        "heuristics off: revalidated, {}",
        off.cache()
    );
    assert_eq!(origin.hits(), 4);
    assert!(get(&c, &proxy.url("/capped"), &[]).await.is_hit());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let capped = get(&c, &proxy.url("/capped"), &[]).await;
    assert!(!capped.is_hit(), "past the 1 s cap: {}", capped.cache());
    assert!(get(&c, &proxy.url("/page"), &[]).await.is_hit());
}

#[tokio::test]
async fn dates_in_every_form_and_case_are_read_and_a_bad_expires_is_expired() {
    let origin = Origin::start(|seen| async move {
        let expires = match seen.uri.path() {
            "/imf" => "thu, 01 jan 2099 00:00:00 gmt",
            "/rfc850" => "THURSDAY, 01-JAN-60 00:00:00 GMT",
            "/asctime" => "thu jan  1 00:00:00 2099",
            _ => "0",
        };
        reply(200, &[("expires", expires)], "page")
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for (path, fresh) in [
        ("/imf", true),
        ("/asctime", true),
        ("/rfc850", true),
        ("/zero", false),
    ] {
        get(&c, &proxy.url(path), &[]).await;
        let again = get(&c, &proxy.url(path), &[]).await;
        assert_eq!(again.is_hit(), fresh, "{path}: {}", again.cache());
    }
}

#[tokio::test]
async fn spellings_of_one_accept_encoding_share_a_variant_and_the_origin_is_asked_for_it() {
    let origin = Origin::start(|seen| async move {
        let asked = seen
            .header("accept-encoding")
            .unwrap_or("identity")
            .to_string();
        let lang = seen.header("accept-language").unwrap_or("-").to_string();
        let fields = [
            ("cache-control", "max-age=60"),
            ("vary", "Accept-Encoding, Accept-Language"),
        ];
        reply(200, &fields, format!("{asked} {lang}"))
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let ask = |ae: &'static str, lang: &'static str| {
        let c = c.clone();
        let url = proxy.url("/v");
        async move {
            get(
                &c,
                &url,
                &[("accept-encoding", ae), ("accept-language", lang)],
            )
            .await
        }
    };
    let first = ask("gzip, deflate, br", "en-GB, fr").await;
    assert_eq!(
        first.body, "br en-GB, fr",
        "the origin is asked for one coding"
    );
    for (ae, lang) in [("br, gzip", "en-gb,fr"), ("BR;q=1", "EN-GB ,  FR")] {
        let got = ask(ae, lang).await;
        assert!(got.is_hit(), "{ae} / {lang}: {}", got.cache());
        assert_eq!(got.body, "br en-GB, fr");
    }
    let gzip = ask("gzip, deflate", "en-GB, fr").await;
    assert_eq!(gzip.body, "gzip en-GB, fr");
    assert!(ask("x-gzip", "en-GB, fr").await.is_hit());
    let plain = ask("identity", "en-GB, fr").await;
    assert_eq!(plain.body, "identity en-GB, fr");
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn requests_with_authorization_share_only_what_the_origin_says_is_public() {
    let origin = Origin::start(|seen| async move {
        let cc = match seen.uri.path() {
            "/api/plain" | "/account/public" => "public, max-age=60",
            "/api/private" => "max-age=60",
            _ => "s-maxage=60",
        };
        let who = seen.header("authorization").unwrap_or("nobody").to_string();
        reply(200, &[("cache-control", cc)], format!("for {who}"))
    })
    .await;
    let rules = "[defaults]\nbypass_cookies = [\"session\"]\n\
                 [[routes]]\nname = \"api\"\nprefix = \"/api\"\nauthorization = \"rfc9111\"\n";
    let proxy = Proxy::single(&origin, rules, "").await;
    let c = proxy.client(&["www.shop.test"]);
    let alice = [("authorization", "Bearer alice")];
    let bob = [("authorization", "Bearer bob")];
    for path in ["/api/plain", "/api/shared"] {
        get(&c, &proxy.url(path), &alice).await;
        for (who, headers) in [("bob", &bob[..]), ("anonymous", &[][..])] {
            let got = get(&c, &proxy.url(path), headers).await;
            assert!(got.is_hit(), "{path} for {who}: {}", got.cache());
            assert_eq!(got.body, "for Bearer alice");
        }
    }
    let before = origin.hits();
    get(&c, &proxy.url("/api/private"), &alice).await;
    let bobs = get(&c, &proxy.url("/api/private"), &bob).await;
    assert_eq!(bobs.body, "for Bearer bob", "not public: never shared");
    // The default keeps the bypass: a store's authorised pages are personal.
    get(&c, &proxy.url("/account/public"), &alice).await;
    let other = get(&c, &proxy.url("/account/public"), &bob).await;
    assert_eq!(other.body, "for Bearer bob");
    assert_eq!(origin.hits(), before + 4);
}

#[tokio::test]
async fn must_understand_stores_the_statuses_crossfade_understands_despite_no_store() {
    let origin = Origin::start(|seen| async move {
        let status = if seen.uri.path() == "/unknown" {
            226
        } else {
            200
        };
        let cc = "no-store, must-understand, max-age=60";
        reply(status, &[("cache-control", cc)], "page")
    })
    .await;
    let proxy = Proxy::single(&origin, HONOR_ALL, "").await;
    let c = proxy.client(&["www.shop.test"]);
    for (path, stored) in [("/known", true), ("/unknown", false)] {
        get(&c, &proxy.url(path), &[]).await;
        let again = get(&c, &proxy.url(path), &[]).await;
        assert_eq!(again.is_hit(), stored, "{path}: {}", again.cache());
    }
}
