//! A small client for the admin API, used by the CLI (`crossfade purge …`). It speaks plain
//! HTTP/1.1 to the admin listener, which is loopback by default.

use crate::cli::AdminArgs;
use crate::config::admin::Scope;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin API at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no token: pass --token, set CROSSFADE_TOKEN, or configure [[admin.tokens]]")]
    NoToken,
    #[error("the admin API answered something that is not HTTP")]
    BadResponse,
}

/// Address and token for the admin API, from flags, environment and config, in that order.
pub fn target(args: &AdminArgs, scope: Scope) -> Result<(String, String), ClientError> {
    let rt = crate::config::load(&args.config).ok();
    let admin = rt.as_ref().and_then(|rt| rt.admin.as_ref());
    let addr = args
        .admin
        .clone()
        .or_else(|| admin.map(|a| a.listen.to_string()))
        .unwrap_or_else(|| "127.0.0.1:9901".into());
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("CROSSFADE_TOKEN").ok())
        .or_else(|| {
            admin.and_then(|a| {
                a.tokens
                    .iter()
                    .find(|t| t.allows(scope))
                    .map(|t| t.secret.clone())
            })
        })
        .ok_or(ClientError::NoToken)?;
    Ok((addr, token))
}

/// Sends one request and returns (status, body).
pub fn call(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), ClientError> {
    let connect = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(addr).map_err(connect)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(connect)?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(connect)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(connect)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(ClientError::BadResponse)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ClientError::BadResponse)?;
    Ok((status, body.to_string()))
}
