//! Cache deception armor: a response is stored under a static-looking path only when it is
//! the kind of thing that path names.
//!
//! Web cache deception tricks a shared cache into storing a logged-in page under a URL that
//! looks like a public asset (`/account/profile/x.css`, `/account;.css`): the application
//! ignores the suffix and renders the page, and a "cache everything under *.css" rule stores
//! it. Cloudflare and others check that the response's type matches the extension; so does
//! crossfade, for every route: a path ending in a known static extension is stored only when
//! the `Content-Type` belongs to that extension's family. Unknown extensions are not judged.

use http::header;
use pingora::http::ResponseHeader;

/// Content types (or type prefixes ending in `/`) an extension may carry.
fn families(ext: &str) -> Option<&'static [&'static str]> {
    const FONT: &[&str] = &[
        "font/",
        "application/font",
        "application/x-font",
        "application/vnd.ms-fontobject",
        "application/octet-stream",
    ];
    Some(match ext {
        "css" => &["text/css"],
        "js" | "mjs" => &[
            "text/javascript",
            "application/javascript",
            "application/x-javascript",
            "application/ecmascript",
        ],
        "png" | "jpg" | "jpeg" | "gif" | "webp" | "avif" | "svg" | "ico" | "bmp" => &["image/"],
        "woff" | "woff2" | "ttf" | "otf" | "eot" => FONT,
        "mp3" | "ogg" | "oga" | "wav" | "flac" | "m4a" | "aac" | "opus" => &["audio/"],
        "mp4" | "webm" | "m4v" => &["video/"],
        "json" => &["application/json"],
        "map" => &["application/json", "application/octet-stream"],
        "txt" => &["text/plain"],
        "pdf" => &["application/pdf"],
        "wasm" => &["application/wasm"],
        "zip" => &["application/zip", "application/octet-stream"],
        _ => return None,
    })
}

/// The extension of the last path segment, lowercased; `;` parameters count as part of it
/// (`/account;.css` has the extension `css`, which is what a suffix rule would see).
fn extension(path: &str) -> Option<String> {
    let last = path.rsplit('/').next()?;
    let (_, ext) = last.rsplit_once('.')?;
    (!ext.is_empty() && ext.len() <= 8).then(|| ext.to_ascii_lowercase())
}

/// True when `path` names a static type (so [`mismatch`] can refuse a response to it).
pub fn guards(path: &str) -> bool {
    extension(path).as_deref().and_then(families).is_some()
}

/// True when `path` names a static type and `resp` is not of that type.
pub fn mismatch(path: &str, resp: &ResponseHeader) -> bool {
    let Some(allowed) = extension(path).as_deref().and_then(families) else {
        return false;
    };
    let ctype = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    !allowed.iter().any(|a| {
        if a.ends_with('/') {
            ctype.starts_with(a)
        } else {
            ctype == *a || ctype.starts_with(a)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(ctype: Option<&str>) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        if let Some(c) = ctype {
            r.insert_header("content-type", c).unwrap();
        }
        r
    }

    #[test]
    fn html_under_a_static_name_is_a_mismatch() {
        let html = resp(Some("text/html; charset=utf-8"));
        for p in [
            "/account/profile/x.css",
            "/account;.css",
            "/account/avatar.PNG",
            "/a.js",
        ] {
            assert!(mismatch(p, &html), "{p}");
        }
        assert!(
            mismatch("/static/app.css", &resp(None)),
            "no type, no trust"
        );
    }

    #[test]
    fn matching_types_and_unknown_extensions_pass() {
        assert!(!mismatch(
            "/static/app.css",
            &resp(Some("text/css; charset=utf-8"))
        ));
        assert!(!mismatch(
            "/static/app.js",
            &resp(Some("application/javascript"))
        ));
        assert!(!mismatch("/img/a.svg", &resp(Some("image/svg+xml"))));
        assert!(!mismatch("/mix/a.mp3", &resp(Some("audio/mpeg"))));
        let html = resp(Some("text/html"));
        for p in ["/", "/account", "/dj/some.name", "/page.html", "/x.php"] {
            assert!(!mismatch(p, &html), "{p}");
        }
    }
}
