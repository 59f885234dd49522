//! One decision, two readings: a request head as the fast transport reads it and as pingora's
//! path reads it must lead to the same plan whenever the fast transport takes the request.
#![no_main]
use crossfade::pools::switch::{Release, States};
use crossfade::pools::Registry;
use crossfade::proxy::fast::probe;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const CONFIG: &str = r#"
[proxy]
listen = ["127.0.0.1:1"]
[admin]
listen = "127.0.0.1:2"
[[admin.tokens]]
name = "ops"
token = "fuzz-token-0123456789abcdef"
scopes = ["purge"]
[[sites]]
name = "shop"
hosts = ["www.shop.test", "*.shop.test"]
rules = "shop.toml"
assets = "/static/{hash}/"
[sites.pools.blue]
servers = ["127.0.0.1:3"]
"#;

const RULES: &str = r#"
[defaults]
bypass_cookies = ["session"]
query_drop = ["utm_*"]
[[routes]]
name = "account"
prefix = "/account/"
mode = "pass"
[[routes]]
name = "pages"
prefix = "/p/"
mode = "override"
edge_ttl = "1m"
"#;

type Fixture = (crossfade::config::Runtime, Registry, States);

fn runtime() -> &'static Fixture {
    static RT: OnceLock<Fixture> = OnceLock::new();
    RT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("crossfade-fuzz-transports-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("shop.toml"), RULES).unwrap();
        std::fs::write(dir.join("crossfade.toml"), CONFIG).unwrap();
        let rt = crossfade::config::load(&dir.join("crossfade.toml")).unwrap();
        let states = (*Release::load(&rt, None).all()).clone();
        let pools = Registry::new(&rt);
        (rt, pools, states)
    })
}

fuzz_target!(|data: &[u8]| {
    let (rt, pools, states) = runtime();
    let mut head = data.to_vec();
    let len = match crossfade::proxy::conn::framing::head_len(&head) {
        Some(len) => len,
        None => {
            head.extend_from_slice(b"\r\n\r\n");
            match crossfade::proxy::conn::framing::head_len(&head) {
                Some(len) => len,
                None => return,
            }
        }
    };
    let head = &head[..len];
    if let Some(fast) = probe::fast_plan(rt, pools, states, head) {
        let slow = probe::pingora_plan(rt, pools, states, head);
        assert_eq!(
            Some(&fast),
            slow.as_ref(),
            "the transports decide differently on {:?}",
            String::from_utf8_lossy(head)
        );
    }
});
