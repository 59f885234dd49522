//! Rule matching on the demo store's routes: any method and path (normalised first, as the
//! proxy does) finds exactly one rule without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static RUNTIME: LazyLock<crossfade::config::Runtime> = LazyLock::new(|| {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/demo.toml");
    crossfade::config::load(path.as_ref()).expect("the demo config loads")
});

fuzz_target!(|input: (&str, &str)| {
    let (method, raw) = input;
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(path) = crossfade::proxy::decide::path::normalize(raw) else {
        return;
    };
    for site in &RUNTIME.sites.list {
        let rule = site.routes.find(&method, &path);
        assert!(!rule.name.is_empty());
    }
});
