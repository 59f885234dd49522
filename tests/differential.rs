//! The differential corpus: the same raw requests, in the same order, to a crossfade with the
//! fast transport on and one with it off (every request through pingora's proxy path), in front
//! of one recording origin. What each client received and what the origin received must be the
//! same, and so must each one's access log (and so its metrics, made from the same record).
//! Over HTTP/2 the same holds for what each client received (header order aside, which HTTP/2
//! does not keep a meaning for), with many streams in flight on one connection.

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RULES: &str = r#"
[defaults]
bypass_cookies = ["session"]
query_drop = ["utm_*"]
[[routes]]
name = "account"
prefix = "/account/"
mode = "pass"
"#;

/// The two proxies compared: the fast transport on, and every request through pingora's path.
const TRANSPORTS: [&str; 2] = [
    "[proxy]\nhit_fast_path = true\npass_fast_path = true\n",
    "[proxy]\nhit_fast_path = false\npass_fast_path = false\n",
];

/// Each entry: a name, and the raw bytes sent on one new connection.
fn corpus() -> Vec<(&'static str, String)> {
    let h = "Host: www.shop.test\r\n";
    let get = |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\n{h}{extra}\r\n");
    let big_head: String = (0..60)
        .map(|i| format!("x-big-{i}: {}\r\n", "b".repeat(400)))
        .collect();
    vec![
        ("miss", get("/page/1?utm_source=x&b=2&a=1", "")),
        ("hit", get("/page/1?a=1&b=2", "")),
        ("head hit", format!("HEAD /page/1?a=1&b=2 HTTP/1.1\r\n{h}\r\n")),
        ("bypass", get("/page/1", "Cookie: session=42; theme=dark\r\n")),
        ("pass route", get("/account/me?b=2&a=1", "Cookie: theme=dark\r\n")),
        ("pass route again (predicted)", get("/account/me?b=2&a=1", "Cookie: theme=dark\r\n")),
        ("private page", get("/private/1?b=2&a=1", "Cookie: theme=dark\r\n")),
        ("private page again (predicted)", get("/private/1?b=2&a=1", "Cookie: theme=dark\r\n")),
        ("private page, HEAD (predicted)", format!("HEAD /private/1 HTTP/1.1\r\n{h}\r\n")),
        ("untrusted headers", get("/account/x", "X-Forwarded-Host: evil.test\r\nX-Original-URL: /admin\r\nForwarded: for=1.2.3.4\r\n")),
        ("hop-by-hop", get("/account/x", "TE: trailers\r\nKeep-Alive: 5\r\nProxy-Connection: keep-alive\r\n")),
        ("host with port and case", "GET /page/2 HTTP/1.1\r\nHost: WWW.Shop.Test:6666\r\n\r\n".into()),
        ("absolute-form", "GET http://www.shop.test/page/3 HTTP/1.1\r\nHost: www.shop.test\r\n\r\n".into()),
        ("absolute-form, other Host", "GET http://www.shop.test/page/3 HTTP/1.1\r\nHost: evil.test\r\n\r\n".into()),
        ("duplicate Host", format!("GET /page/4 HTTP/1.1\r\n{h}Host: other.test\r\n\r\n")),
        ("no Host", "GET /page/4 HTTP/1.1\r\n\r\n".into()),
        ("HTTP/1.0", format!("GET /page/5 HTTP/1.0\r\n{h}\r\n")),
        ("HTTP/1.0 keep-alive", format!("GET /page/5 HTTP/1.0\r\n{h}Connection: keep-alive\r\n\r\n")),
        ("unknown host", "GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n".into()),
        ("not origin-form", format!("GET account/x HTTP/1.1\r\n{h}\r\n")),
        ("control byte", format!("GET /a\x7fb HTTP/1.1\r\n{h}Cookie: session=1\r\n\r\n")),
        ("fragment", get("/account/frag#x", "Cookie: session=1\r\n")),
        ("backtick", get("/page/`x?q=%6s", "Cookie: session=1\r\n")),
        ("angle brackets and quotes", get("/page/x?q=<\"a\">", "Cookie: session=1\r\n")),
        ("braces and bars", get("/page/{a}|b?q={}", "")),
        ("dot segment", get("/page/../account/x", "")),
        ("encoded path", get("/%61ccount/enc", "")),
        ("bare LF", "GET /page/6 HTTP/1.1\nHost: www.shop.test\n\n".into()),
        ("leading empty lines", format!("\r\n\r\nGET /page/6 HTTP/1.1\r\n{h}\r\n")),
        ("pipelined", format!("{}{}{}", get("/page/7", ""), get("/account/p", "Cookie: session=1\r\n"), get("/page/7", ""))),
        ("chunked POST", format!("POST /account/form HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        ("expect 100-continue", format!("POST /account/form HTTP/1.1\r\n{h}Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")),
        ("large request head", get("/account/big", &big_head)),
        ("large response head", get("/account/big-answer", "Cookie: session=1\r\n")),
        ("range", get("/page/1?a=1&b=2", "Range: bytes=2-4\r\n")),
        ("empty range", get("/page/1?a=1&b=2", "Range: bytes=-0\r\n")),
        ("if-none-match star", get("/page/1?a=1&b=2", "If-None-Match: *\r\n")),
        ("OPTIONS *", format!("OPTIONS * HTTP/1.1\r\n{h}\r\n")),
        ("PURGE refused", format!("PURGE /page/1 HTTP/1.1\r\n{h}\r\n")),
    ]
}

/// An origin whose pages are public, whose account pages are private, and one answer with a
/// large head; every answer says what it was asked.
async fn origin() -> Origin {
    Origin::start(|s| async move {
        let path = s.uri.path().to_string();
        let body = format!("{} {}", s.method, s.uri);
        if path == "/account/big-answer" {
            let lines: Vec<(String, String)> = (0..200)
                .map(|i| (format!("x-answer-{i}"), "a".repeat(100)))
                .collect();
            let refs: Vec<(&str, &str)> = lines
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            return reply(200, &refs, body);
        }
        if path.starts_with("/big/") {
            // Larger than an HTTP/2 stream's first flow-control window (64 KiB).
            let body = format!("{body}\n").repeat(300_000 / body.len());
            return reply(200, &[("cache-control", "public, max-age=60")], body);
        }
        let cc = if path.starts_with("/account") || path.starts_with("/private") {
            "private"
        } else {
            "public, max-age=60"
        };
        reply(
            200,
            &[
                ("cache-control", cc),
                ("etag", "\"e1\""),
                ("surrogate-key", "page"),
                ("content-type", "text/plain"),
            ],
            body,
        )
    })
    .await
}

/// Everything the proxy sent on one connection until it closed or went quiet for 300 ms.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(300), sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    out
}

/// The answers in `raw`, each as its status line, sorted header lines (names lowercased; the
/// values that differ between any two runs masked) and body.
fn normalise(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while let Some(end) = rest.find("\r\n\r\n") {
        let head = &rest[..end];
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default().to_string();
        let mut fields: Vec<String> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or((l, ""));
                let n = n.trim().to_ascii_lowercase();
                let v = match n.as_str() {
                    "date" | "x-request-id" | "age" => "*".to_string(),
                    "cache-status" => mask_ttl(v.trim()),
                    _ => v.trim().to_string(),
                };
                format!("{n}: {v}")
            })
            .collect();
        fields.sort();
        let after = &rest[end + 4..];
        let length = fields
            .iter()
            .find_map(|f| f.strip_prefix("content-length: ")?.parse::<usize>().ok());
        let chunked = fields.iter().any(|f| f == "transfer-encoding: chunked");
        let no_body = status.contains(" 100 ") || status.contains(" 304 ");
        let (body, next) = if no_body {
            (String::new(), after)
        } else if let Some(n) = length {
            // A HEAD answer has a length and no body.
            let n = n.min(after.len());
            (after[..n].to_string(), &after[n..])
        } else if chunked {
            let end = after.find("\r\n0\r\n\r\n").map_or(after.len(), |i| i + 7);
            (unchunk(&after[..end]), &after[end..])
        } else {
            (after.to_string(), "")
        };
        out.push(format!("{status}\n{}\n\n{body}", fields.join("\n")));
        rest = next;
    }
    out
}

fn mask_ttl(v: &str) -> String {
    v.split("; ")
        .map(|p| if p.starts_with("ttl=") { "ttl=*" } else { p })
        .collect::<Vec<_>>()
        .join("; ")
}

fn unchunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or("");
    }
    out
}

/// What the origin received for each request, sorted header lines without the per-request id.
fn seen(origin: &Origin) -> Vec<String> {
    origin
        .seen
        .lock()
        .unwrap()
        .drain(..)
        .map(|s| {
            let mut fields: Vec<String> = s
                .headers
                .iter()
                .filter(|(n, _)| *n != "x-request-id")
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
                .collect();
            fields.sort();
            format!(
                "{} {} {:?}\n{}",
                s.method,
                s.uri,
                s.version,
                fields.join("\n")
            )
        })
        .collect()
}

/// The access-log events on `stdout`, without the fields that differ between any two runs
/// (timings, the request id).
fn access_log(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once("crossfade::access: request ").map(|(_, f)| f))
        .map(|fields| {
            fields
                .split(' ')
                .filter(|f| {
                    !["upstream_ms=", "total_ms=", "request_id="]
                        .iter()
                        .any(|p| f.starts_with(p))
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[tokio::test]
async fn both_transports_send_the_same_bytes_to_the_client_and_the_origin() {
    let origin = origin().await;
    let mut runs = Vec::new();
    for extra in TRANSPORTS {
        let proxy = Proxy::single(&origin, RULES, extra).await;
        origin.seen.lock().unwrap().clear();
        let mut client = Vec::new();
        let mut upstream = Vec::new();
        for (name, request) in corpus() {
            let answers = normalise(&exchange(proxy.addr, request.as_bytes()).await);
            client.push((name, answers));
            upstream.push((name, seen(&origin)));
        }
        let fast =
            counter_reaches(&proxy, "crossfade_fast_path_hits_total", fast_count("203")).await;
        runs.push((client, upstream, fast, access_log(&proxy.stdout())));
    }
    let (fast, slow) = (&runs[0], &runs[1]);
    assert_ne!(fast.2, "0", "the fast transport served hits");
    assert_eq!(slow.2, "0", "the other proxy served none");
    // (A head pingora's parser refuses is answered 400 before any hook, and logs no event.)
    assert!(fast.3.len() > 30, "access log: {:?}", fast.3);
    let mut differences = Vec::new();
    for (i, (name, _)) in corpus().iter().enumerate() {
        if fast.0[i].1 != slow.0[i].1 {
            differences.push(format!(
                "client, {name}:\n--- fast\n{:#?}\n--- pingora\n{:#?}",
                fast.0[i].1, slow.0[i].1
            ));
        }
        if fast.1[i].1 != slow.1[i].1 {
            differences.push(format!(
                "origin, {name}:\n--- fast\n{:#?}\n--- pingora\n{:#?}",
                fast.1[i].1, slow.1[i].1
            ));
        }
    }
    if fast.3 != slow.3 {
        differences.push(format!(
            "access log:\n--- fast\n{}\n--- pingora\n{}",
            fast.3.join("\n"),
            slow.3.join("\n")
        ));
    }
    assert!(differences.is_empty(), "{}", differences.join("\n\n"));
}

/// An HTTP/2 request: name, method, path, request headers.
type H2Request = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// HTTP/2 requests in order on one connection.
const H2_CORPUS: [H2Request; 17] = [
    ("miss", "GET", "/page/h2?utm_source=x&b=2&a=1", &[]),
    ("hit", "GET", "/page/h2?a=1&b=2", &[]),
    ("head hit", "HEAD", "/page/h2?a=1&b=2", &[]),
    ("large miss", "GET", "/big/1", &[]),
    ("large hit", "GET", "/big/1", &[]),
    (
        "bypass",
        "GET",
        "/page/h2?a=1&b=2",
        &[("cookie", "session=42")],
    ),
    (
        "range",
        "GET",
        "/page/h2?a=1&b=2",
        &[("range", "bytes=2-4")],
    ),
    (
        "conditional",
        "GET",
        "/page/h2?a=1&b=2",
        &[("if-none-match", "\"e1\"")],
    ),
    ("pass route", "GET", "/account/me", &[]),
    ("unknown host", "GET", "http://nobody.test/page/h2", &[]),
    // Passes, which the fast transport relays with its own origin client.
    (
        "bypass, cookies in two fields",
        "GET",
        "/page/h2?b=2&a=1",
        &[("cookie", "theme=dark"), ("cookie", "session=42")],
    ),
    ("private page", "GET", "/private/h2?b=2&a=1", &[]),
    (
        "private page again (predicted)",
        "GET",
        "/private/h2?b=2&a=1",
        &[],
    ),
    (
        "private page, HEAD (predicted)",
        "HEAD",
        "/private/h2?b=2&a=1",
        &[],
    ),
    // A HEAD that misses a cacheable route: pingora asks the origin with GET.
    ("head miss", "HEAD", "/page/h2-head", &[]),
    (
        "untrusted and hop-by-hop headers",
        "GET",
        "/account/x",
        &[
            ("x-forwarded-host", "evil.test"),
            ("forwarded", "for=1.2.3.4"),
            ("te", "trailers"),
        ],
    ),
    // Larger than the stream's first flow-control window.
    ("large pass", "GET", "/big/2", &[("cookie", "session=42")]),
];

/// Fast passes in [`H2_CORPUS`]: the bypasses, the pass routes and the predicted private pages.
const H2_PASSES: &str = "7";

/// An answer as status, sorted header lines (the values that differ between runs masked) and
/// body.
fn h2_answer(got: &Got) -> String {
    let mut fields: Vec<String> = got
        .headers
        .iter()
        .map(|(n, v)| {
            let v = v.to_str().unwrap_or("?");
            let v = match n.as_str() {
                "date" | "x-request-id" | "age" => "*".to_string(),
                "cache-status" => mask_ttl(v),
                _ => v.to_string(),
            };
            format!("{n}: {v}")
        })
        .collect();
    fields.sort();
    format!("{}\n{}\n\n{}", got.status, fields.join("\n"), got.body)
}

#[tokio::test]
async fn http2_answers_are_the_same_on_both_transports() {
    let origin = origin().await;
    let mut runs = Vec::new();
    for extra in TRANSPORTS {
        let proxy = Proxy::single(&origin, RULES, extra).await;
        let c = proxy.h2_client(&["www.shop.test", "nobody.test"]);
        origin.seen.lock().unwrap().clear();
        let mut answers = Vec::new();
        for (name, method, path, headers) in H2_CORPUS {
            let url = match path.strip_prefix("http://nobody.test") {
                Some(p) => proxy.url_for("nobody.test", p),
                None => proxy.url(path),
            };
            let got = send(&c, method.parse().unwrap(), &url, headers).await;
            answers.push((name, h2_answer(&got), seen(&origin)));
        }
        // Many streams in flight on the connection at once, each answered with its own object
        // (stored first, so that every one is a hit).
        for i in 0..7 {
            get(&c, &proxy.url(&format!("/page/c{i}")), &[]).await;
        }
        let streams = (0..200).map(|i| {
            let c = c.clone();
            let path = if i % 20 == 0 {
                "/big/1".to_string()
            } else {
                format!("/page/c{}", i % 7)
            };
            let url = proxy.url(&path);
            async move { (path, get(&c, &url, &[]).await) }
        });
        for (path, got) in futures_util::future::join_all(streams).await {
            assert_eq!(got.status, 200, "{path}");
            if path.starts_with("/page/") {
                assert_eq!(got.body, format!("GET {path}"), "{path}");
            } else {
                assert!(got.body.starts_with("GET /big/1\n"), "{path}");
                assert_eq!(
                    got.body.len(),
                    answers[4].1.split("\n\n").nth(1).unwrap().len()
                );
            }
        }
        let fast =
            counter_reaches(&proxy, "crossfade_fast_path_hits_total", fast_count("203")).await;
        // Every pass in the corpus on the fast proxy, none on the other (both set explicitly).
        let want = if runs.is_empty() { H2_PASSES } else { "0" };
        let passes = counter_reaches(&proxy, "crossfade_fast_path_passes_total", want).await;
        assert_eq!(passes, want, "HTTP/2 passes relayed by the fast transport");
        // (`:authority` names the proxy's port, which differs between the two.)
        let port = format!(":{}\"", proxy.addr.port());
        let log = access_log(&proxy.stdout());
        let log: Vec<String> = log.iter().map(|l| l.replace(&port, "\"")).collect();
        runs.push((answers, fast, log));
    }
    let (fast, slow) = (&runs[0], &runs[1]);
    // The sequence's three hits and the 200 streams.
    assert_eq!(fast.1, "203", "HTTP/2 hits were the fast transport's");
    assert_eq!(slow.1, "0", "the other proxy served none");
    let mut differences = Vec::new();
    for ((name, f, fo), (_, p, po)) in fast.0.iter().zip(&slow.0) {
        if f != p {
            differences.push(format!("{name}:\n--- fast\n{f}\n--- pingora\n{p}"));
        }
        if fo != po {
            differences.push(format!(
                "origin, {name}:\n--- fast\n{fo:#?}\n--- pingora\n{po:#?}"
            ));
        }
    }
    // An HTTP/2 client's cookie fields reach an HTTP/1.1 origin as one (RFC 9113 §8.2.3).
    for (name, _, origin_saw) in &fast.0 {
        if *name == "bypass, cookies in two fields" {
            let fields = &origin_saw[0];
            assert!(
                fields.contains("\ncookie: theme=dark; session=42\n")
                    || fields.ends_with("\ncookie: theme=dark; session=42"),
                "{fields}"
            );
            assert_eq!(fields.matches("cookie:").count(), 1, "{fields}");
        }
    }
    // The sequence's events come first (the concurrent streams finish in any order).
    let n = H2_CORPUS.len();
    if fast.2[..n] != slow.2[..n] {
        differences.push(format!(
            "access log:\n--- fast\n{}\n--- pingora\n{}",
            fast.2[..n].join("\n"),
            slow.2[..n].join("\n")
        ));
    }
    assert!(differences.is_empty(), "{}", differences.join("\n\n"));
}
