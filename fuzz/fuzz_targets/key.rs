//! Cache keys: the query normalisation is a fixed point, and a primary key reads back as the
//! parts it was built from, whatever bytes they hold (no two requests share a key by framing).
#![no_main]
use crossfade::cache::key::{decode_primary, normalize_query, primary};
use crossfade::rules::{NameSet, QueryFilter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (String, String, String, String, String, bool)| {
    let (site, host, path, query, pool, sort) = input;
    let filter = QueryFilter::Drop(NameSet::new(["utm_*".to_string(), "fbclid".to_string()]));
    let q = normalize_query(Some(&query), &filter, sort);
    if sort {
        assert_eq!(normalize_query(Some(&q), &filter, sort), q, "{query:?}");
    }
    let key = primary(&site, &host, &path, &q, &pool);
    let back = decode_primary(&key).expect("a key built here decodes");
    assert_eq!(
        (back.site, back.host, back.path, back.query, back.pool),
        (&*site, &*host, &*path, &*q, &*pool)
    );
});
