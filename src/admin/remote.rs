//! The other environments on the dashboard: this admin server asks each crossfade named in
//! `[[dashboard.environments]]` for its `/dashboard/data` with that environment's read token
//! (the browser never sees the token, nor talks to the other crossfade) and passes on what a
//! comparison needs: per site, its summary and per route its summary.

use crate::config::Environment;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one environment may take; a slow one is shown as unavailable, not waited for.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read from another crossfade.
const MAX_ANSWER: usize = 4 << 20;

/// Every environment's summary over `window`, asked at once.
pub async fn environments(list: &[Environment], window: Duration) -> Vec<Value> {
    let asks = list.iter().map(|e| async move {
        match tokio::time::timeout(TIMEOUT, fetch(e, window)).await {
            Ok(Ok(data)) => json!({ "name": e.name, "ok": true, "sites": sites(&data) }),
            Ok(Err(why)) => json!({ "name": e.name, "ok": false, "error": why }),
            Err(_) => json!({ "name": e.name, "ok": false, "error": format!("no answer within {} s", TIMEOUT.as_secs()) }),
        }
    });
    futures_util::future::join_all(asks).await
}

/// Per site: its summary, and per route (all pools together) the requests and the summary of
/// its busiest pool.
fn sites(data: &Value) -> Value {
    let list = data["sites"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    Value::Array(
        list.iter()
            .map(|s| {
                json!({
                    "site": s["site"],
                    "state": s["state"],
                    "summary": s["summary"],
                    "routes": s["routes"],
                })
            })
            .collect(),
    )
}

async fn fetch(e: &Environment, window: Duration) -> Result<Value, String> {
    let mut stream = tokio::net::TcpStream::connect(&e.addr)
        .await
        .map_err(|err| format!("cannot reach {}: {err}", e.addr))?;
    let request = format!(
        "GET /dashboard/data?window={} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Connection: close\r\n\r\n",
        window.as_secs(),
        e.addr,
        e.token
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|err| err.to_string())?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER as u64)
        .read_to_end(&mut raw)
        .await
        .map_err(|err| err.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!(
            "answered {status} (is the token a token of that crossfade?)"
        ));
    }
    serde_json::from_str(body).map_err(|err| format!("not the dashboard's data: {err}"))
}
