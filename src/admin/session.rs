//! Dashboard sessions. A browser logs in through the dashboard's login form (a POST with the
//! token in its body) and gets a random session id in an `HttpOnly`, `SameSite=Strict` cookie
//! (`Secure` when the request came over TLS); the id maps, here only, to the token's name and
//! an expiry. The token never travels in a URL or a cookie, and a session gives read access
//! only, whatever the token's scopes. Sessions live in memory: a restart logs everyone out,
//! and a token removed by a reload ends its sessions at their next use.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie carrying a dashboard session's id.
pub const COOKIE: &str = "crossfade_session";
/// How long a session lasts from its login.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions at once; the oldest go first.
const MAX: usize = 10_000;

#[derive(Default)]
pub struct Sessions {
    /// Session id → (token name, expiry).
    map: Mutex<HashMap<String, (String, Instant)>>,
}

impl Sessions {
    /// A new session for the token named `token`; its id.
    pub fn create(&self, token: &str) -> std::io::Result<String> {
        let id = random_id()?;
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (_, expires)| *expires > now);
        if map.len() >= MAX {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), (token.to_string(), now + LIFETIME));
        Ok(id)
    }

    /// The token name of a live session.
    pub fn token_of(&self, id: &str) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(name, _)| name.clone())
    }

    pub fn end(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// 32 bytes from the kernel's random source, in hex.
fn random_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `Set-Cookie` value for a session (`None`: the cookie that ends one).
pub fn cookie(id: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_random_and_end() {
        let s = Sessions::default();
        let a = s.create("viewer").unwrap();
        let b = s.create("viewer").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(s.token_of(&a).as_deref(), Some("viewer"));
        s.end(&a);
        assert_eq!(s.token_of(&a), None);
        assert_eq!(s.token_of("made-up"), None);
        assert!(cookie(Some(&b), true).ends_with("; Secure"));
        assert!(cookie(None, false).contains("Max-Age=0"));
    }
}
