//! The embedded demo store: a small hyper application that behaves like the store's PHP apps.
//!
//! It renders HTML pages that link fingerprinted assets (`/static/<hash>/app.js`), has a login
//! that sets a `session` cookie, per-user pages marked `private`, and tags responses with
//! `Surrogate-Key`. Every response says which release served it (`X-Release`).

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// A release of the demo store: its name and the hash its static assets live under.
#[derive(Debug, Clone)]
pub struct DemoRelease {
    pub name: String,
    pub asset_hash: String,
}

impl DemoRelease {
    pub fn new(name: &str) -> Self {
        // A stable fingerprint of the release name stands in for a hash of the asset bytes.
        let digest = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        DemoRelease {
            name: name.to_string(),
            asset_hash: format!("{:08x}", digest as u32),
        }
    }
}

struct State {
    release: DemoRelease,
    requests: AtomicU64,
}

/// Serves the demo store on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, release: DemoRelease) {
    let state = Arc::new(State {
        release,
        requests: AtomicU64::new(0),
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn session_user(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix("session="))
        .find_map(|v| v.split_once('.').map(|(user, _)| user.to_string()))
}

fn html(state: &State, user: Option<&str>, title: &str, body: &str) -> String {
    let hash = &state.release.asset_hash;
    let account = match user {
        Some(u) => format!("Logged in as <b>{u}</b> · <a href=\"/account\">account</a> · <a href=\"/logout\">log out</a>"),
        None => "<a href=\"/login?user=alice\">log in</a>".to_string(),
    };
    format!(
        "<!doctype html><html><head><title>{title} · demo store</title>\
         <link rel=\"stylesheet\" href=\"/static/{hash}/app.css\"></head><body>\
         <header>demo store (release {rel}) · {account}</header><h1>{title}</h1>{body}\
         <script src=\"/static/{hash}/app.js\"></script></body></html>\n",
        rel = state.release.name
    )
}

fn respond(
    state: &State,
    status: StatusCode,
    headers: &[(&str, String)],
    body: String,
) -> Response<Full<Bytes>> {
    let mut resp = Response::builder().status(status);
    resp = resp.header("x-release", state.release.name.as_str());
    for (k, v) in headers {
        resp = resp.header(*k, v.as_str());
    }
    resp.body(Full::new(Bytes::from(body)))
        .expect("static headers are valid")
}

fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let user = session_user(&req);
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let page = |title: &str, body: &str, cache: &str, keys: &str| {
        let mut headers = vec![
            ("content-type", "text/html; charset=utf-8".to_string()),
            ("x-origin-request", n.to_string()),
        ];
        if user.is_some() {
            headers.push(("cache-control", "private, no-store".to_string()));
        } else {
            headers.push(("cache-control", cache.to_string()));
            headers.push(("surrogate-key", keys.to_string()));
        }
        respond(
            state,
            StatusCode::OK,
            &headers,
            html(state, user.as_deref(), title, body),
        )
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["health"]) => respond(state, StatusCode::OK, &[
            ("x-release", state.release.name.clone()),
            ("x-asset-hash", state.release.asset_hash.clone()),
            ("cache-control", "no-store".to_string()),
        ], "ok\n".into()),
        (&Method::GET | &Method::HEAD, [""]) => page(
            "Home",
            "<ul><li><a href=\"/track/1\">Track 1</a></li><li><a href=\"/charts/house\">House chart</a></li>\
             <li><a href=\"/search?q=disco\">Search: disco</a></li></ul>",
            "public, max-age=30",
            "home",
        ),
        (&Method::GET | &Method::HEAD, ["track", id]) => page(
            &format!("Track {id}"),
            "<p>A track page.</p>",
            "public, max-age=300",
            &format!("track-{id} tracks"),
        ),
        (&Method::GET | &Method::HEAD, ["release", id]) => page(
            &format!("Release {id}"),
            "<p>A release page.</p>",
            "public, max-age=300",
            &format!("release-{id} releases"),
        ),
        (&Method::GET | &Method::HEAD, ["charts", genre]) => page(
            &format!("{genre} chart"),
            "<ol><li>Track 1</li><li>Track 2</li></ol>",
            "public, max-age=120",
            &format!("chart-{genre} charts"),
        ),
        (&Method::GET | &Method::HEAD, ["search"]) => page(
            "Search",
            &format!("<p>Results for <code>{}</code></p>", query.replace('<', "&lt;")),
            "public, max-age=60",
            "search",
        ),
        (&Method::GET, ["login"]) => {
            let name: String = query
                .strip_prefix("user=")
                .unwrap_or("alice")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(32)
                .collect();
            respond(state, StatusCode::FOUND, &[
                ("location", "/account".to_string()),
                ("set-cookie", format!("session={name}.{n:x}; Path=/; HttpOnly")),
                ("cache-control", "no-store".to_string()),
            ], String::new())
        }
        (&Method::GET, ["logout"]) => respond(state, StatusCode::FOUND, &[
            ("location", "/".to_string()),
            ("set-cookie", "session=; Path=/; Max-Age=0".to_string()),
            ("cache-control", "no-store".to_string()),
        ], String::new()),
        (&Method::GET, ["account"] | ["cart"]) => match &user {
            Some(u) => page("Your account", &format!("<p>Private page of {u}.</p>"), "private", ""),
            None => respond(state, StatusCode::FOUND, &[("location", "/login".to_string())], String::new()),
        },
        (&Method::GET | &Method::HEAD, ["api", "tracks", id]) => respond(state, StatusCode::OK, &[
            ("content-type", "application/json".to_string()),
            ("cache-control", "public, max-age=60".to_string()),
            ("surrogate-key", format!("track-{id} api")),
        ], format!("{{\"id\":\"{id}\",\"release\":\"{}\"}}\n", state.release.name)),
        (&Method::GET | &Method::HEAD, ["static", hash, file]) if *hash == state.release.asset_hash => {
            let (ctype, body) = match *file {
                "app.css" => ("text/css", format!("/* release {} */ body {{ font-family: sans-serif; }}\n", state.release.name)),
                "app.js" => ("application/javascript", format!("console.log('release {}');\n", state.release.name)),
                _ => return respond(state, StatusCode::NOT_FOUND, &[], "not found\n".into()),
            };
            respond(state, StatusCode::OK, &[
                ("content-type", ctype.to_string()),
                ("cache-control", "public, max-age=31536000, immutable".to_string()),
                ("surrogate-key", format!("assets assets-{hash}")),
            ], body)
        }
        _ => respond(state, StatusCode::NOT_FOUND, &[
            ("content-type", "text/plain".to_string()),
            ("cache-control", "public, max-age=10".to_string()),
        ], "not found\n".into()),
    }
}
