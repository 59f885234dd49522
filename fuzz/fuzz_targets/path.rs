//! Path normalisation: never panics; what it accepts is a fixed point with no dot segments
//! and no encoded separators, so routing and the origin cannot read it two ways.
#![no_main]
use crossfade::proxy::decide::path::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Ok(p) = normalize(data) {
        let again = normalize(&p).expect("a normalised path is accepted again");
        assert_eq!(again, p, "normalising twice changes nothing");
        assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p}");
        let lower = p.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c") && !p.contains('\\'));
    }
});
