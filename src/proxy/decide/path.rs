//! One form of the request path for routing, the cache key and the origin (issue 8: cache
//! deception and path confusion).
//!
//! A path that the edge matches in one form and the application reads in another is how a
//! logged-in page ends up cached under a public rule: `/%61ccount` is not under `/account/` for
//! a prefix match, but PHP decodes it to `/account`. So the path is normalised once, before
//! routing, and the normalised form is what the origin receives:
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, and the hex
//!   digits of the remaining escapes upper-cased (RFC 3986 §6.2.2);
//! - forms whose meaning differs between servers are refused with 400: an encoded `/` or `\`,
//!   a raw `\`, NUL, a broken escape, and `.`/`..` segments (raw or encoded). Browsers resolve
//!   dot segments before sending, so only crafted requests carry them.
//!
//! Case is kept: paths are case-sensitive for the origins crossfade fronts.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    EncodedSeparator,
    Backslash,
    Nul,
    BrokenEscape,
    DotSegment,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::EncodedSeparator => "encoded-separator",
            Refused::Backslash => "backslash",
            Refused::Nul => "nul",
            Refused::BrokenEscape => "broken-escape",
            Refused::DotSegment => "dot-segment",
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The normalised path, borrowed when nothing changed (the common case).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Refused> {
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return Err(Refused::Backslash);
    }
    if bytes.contains(&0) {
        return Err(Refused::Nul);
    }
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            if let Some(o) = out.as_mut() {
                o.push(b);
            }
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(Refused::BrokenEscape);
        };
        let decoded = h * 16 + l;
        match decoded {
            b'/' | b'\\' => return Err(Refused::EncodedSeparator),
            0 => return Err(Refused::Nul),
            _ => {}
        }
        let o = out.get_or_insert_with(|| bytes[..i].to_vec());
        if unreserved(decoded) {
            o.push(decoded);
        } else {
            o.push(b'%');
            o.push(bytes[i + 1].to_ascii_uppercase());
            o.push(bytes[i + 2].to_ascii_uppercase());
        }
        i += 3;
    }
    let result = match out {
        // Only ASCII was pushed for escapes, and other bytes were copied from a `str`.
        Some(o) => Cow::Owned(String::from_utf8(o).map_err(|_| Refused::BrokenEscape)?),
        None => Cow::Borrowed(path),
    };
    if result.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(Refused::DotSegment);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/account/profile",
            "/static/abc123/app.css",
            "/a;b=c",
            "/x%20y",
        ] {
            let n = normalize(p).unwrap();
            assert_eq!(n, p);
        }
        assert!(matches!(normalize("/account").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(normalize("/%61ccount/profile").unwrap(), "/account/profile");
        assert_eq!(normalize("/%41%7e%2D%5f").unwrap(), "/A~-_");
        assert_eq!(normalize("/a%2cb%3Bc").unwrap(), "/a%2Cb%3Bc");
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        use Refused::*;
        for (p, why) in [
            ("/account%2fprofile", EncodedSeparator),
            ("/account%2Fprofile", EncodedSeparator),
            ("/account%5cprofile", EncodedSeparator),
            ("/account\\profile", Backslash),
            ("/a%00.css", Nul),
            ("/a%zz", BrokenEscape),
            ("/a%4", BrokenEscape),
            ("/static/../account", DotSegment),
            ("/static/%2e%2e/account", DotSegment),
            ("/static/.%2E/account", DotSegment),
            ("/./account", DotSegment),
            ("/account/..", DotSegment),
        ] {
            assert_eq!(normalize(p), Err(why), "{p}");
        }
    }

    #[test]
    fn dots_inside_names_are_fine() {
        assert_eq!(
            normalize("/a..b/.well-known/x.css").unwrap(),
            "/a..b/.well-known/x.css"
        );
    }
}
