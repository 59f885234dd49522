//! Writes an edge answer ([`crate::proxy::decide::Answer`]) on pingora's session. Each carries
//! `Cache-Status` with its fixed `detail` label and the request's `X-Request-Id` (the id the
//! origin saw, when it saw the request: what a client quotes to support).

use crate::proxy::decide::headers::CacheStatus;
use crate::proxy::decide::Answer;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Sends `answer` as the whole response.
pub async fn send(session: &mut Session, answer: &Answer, request_id: &str) -> Result<()> {
    let resp = head(answer, request_id)?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(answer.body.clone()), true)
        .await
}

/// The response head of `answer` (also what the fast transport's HTTP/2 passes send).
pub fn head(answer: &Answer, request_id: &str) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(answer.status, Some(7))?;
    resp.insert_header("cache-status", CacheStatus::edge(answer.detail).to_value())?;
    if !request_id.is_empty() {
        resp.insert_header("x-request-id", request_id)?;
    }
    if !answer.body.is_empty() {
        resp.insert_header(header::CONTENT_TYPE, answer.content_type)?;
    }
    resp.insert_header(header::CONTENT_LENGTH, answer.body.len())?;
    resp.insert_header(header::CACHE_CONTROL, answer.cache_control)?;
    if let Some(location) = &answer.location {
        resp.insert_header(header::LOCATION, location.as_str())?;
    }
    if let Some(after) = answer.retry_after {
        resp.insert_header(header::RETRY_AFTER, after.as_secs())?;
    }
    Ok(resp)
}
