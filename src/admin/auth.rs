//! Bearer-token authentication for the admin API, compared in constant time.

use crate::config::admin::{Scope, Token};

/// Compares two secrets without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// Why a request is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer …`, or a token nobody has: 401.
    Unauthenticated,
    /// A valid token without the scope the endpoint needs: 403.
    Forbidden(Scope),
}

/// Finds the token presented in `authorization` and checks that it allows `scope`.
pub fn authorize<'a>(
    tokens: &'a [Token],
    authorization: Option<&[u8]>,
    scope: Scope,
) -> Result<&'a Token, Denied> {
    let presented = authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .ok_or(Denied::Unauthenticated)?;
    // Check every token so timing does not reveal which one (or how much of one) matched.
    let mut found = None;
    for t in tokens {
        if ct_eq(t.secret.as_bytes(), presented) && found.is_none() {
            found = Some(t);
        }
    }
    let token = found.ok_or(Denied::Unauthenticated)?;
    if token.allows(scope) {
        Ok(token)
    } else {
        Err(Denied::Forbidden(scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_scopes() {
        let tokens = vec![
            Token {
                name: "ops".into(),
                secret: "purge-secret-0123456".into(),
                scopes: vec![Scope::Purge],
            },
            Token {
                name: "root".into(),
                secret: "admin-secret-0123456".into(),
                scopes: vec![Scope::Admin],
            },
        ];
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd") && !ct_eq(b"abc", b"abcd") && !ct_eq(b"", b"a"));
        let ok = authorize(&tokens, Some(b"Bearer purge-secret-0123456"), Scope::Purge);
        assert_eq!(ok.unwrap().name, "ops");
        assert_eq!(
            authorize(
                &tokens,
                Some(b"Bearer purge-secret-0123456"),
                Scope::Release
            )
            .unwrap_err(),
            Denied::Forbidden(Scope::Release)
        );
        assert!(authorize(
            &tokens,
            Some(b"Bearer admin-secret-0123456"),
            Scope::Release
        )
        .is_ok());
        assert_eq!(
            authorize(&tokens, Some(b"Bearer wrong"), Scope::Read).unwrap_err(),
            Denied::Unauthenticated
        );
        assert_eq!(
            authorize(&tokens, None, Scope::Read).unwrap_err(),
            Denied::Unauthenticated
        );
        assert_eq!(
            authorize(&tokens, Some(b"purge-secret-0123456"), Scope::Read).unwrap_err(),
            Denied::Unauthenticated
        );
    }
}
