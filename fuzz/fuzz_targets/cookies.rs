//! Cookie parsing (the logged-in check): never panics on any header bytes, names are never
//! empty or padded, and a `session` cookie in any accepted spelling is found.
#![no_main]
use crossfade::cache::key::cookies;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|values: Vec<Vec<u8>>| {
    let mut headers = HeaderMap::new();
    for v in &values {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(http::header::COOKIE, v);
        }
    }
    let found: Vec<(&str, &str)> = cookies(&headers).collect();
    for (name, value) in &found {
        assert!(!name.is_empty());
        for s in [name, value] {
            assert_eq!(s.trim_matches(|c| c == ' ' || c == '\t'), *s);
        }
    }
    // The same cookies with a session cookie added in a browser's spelling are seen logged in.
    let mut with = headers.clone();
    with.append(http::header::COOKIE, HeaderValue::from_static("session=1"));
    assert!(cookies(&with).any(|(n, _)| n == "session"));
});
