//! Reading a request body with a hard limit, answering 413 before buffering more, and a
//! deadline and a minimum rate, answering 408 to a body that stalls or trickles.

use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::web::{Bytes, BytesMut, Data, Payload};
use futures_util::StreamExt;

use super::error::ApiError;
use crate::problem::{DocumentError, Located};

pub async fn read_limited(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    // Reserve no more than a modest first chunk: the header is only a claim.
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(limit).min(64 * 1024));
    let pace = req
        .app_data::<Data<super::AppState>>()
        .map(|s| s.settings.http.clone())
        .unwrap_or_default();
    let started = tokio::time::Instant::now();
    // The whole body is due by the time its declared length takes at the minimum rate
    // (after the grace period), and never later than `body_timeout_s`.
    let cap = Duration::from_secs(pace.body_timeout_s.max(1));
    let rate = pace.min_body_bytes_per_s.max(1);
    let allowed = match declared {
        Some(n) => Duration::from_secs(pace.body_grace_s)
            .saturating_add(Duration::from_millis(
                (n as u64).saturating_mul(1_000).div_ceil(rate),
            ))
            .min(cap),
        None => cap,
    };
    let deadline = started.checked_add(allowed).unwrap_or(started + cap);
    let grace = Duration::from_secs(pace.body_grace_s);
    loop {
        // The next chunk must come before the body falls below the minimum rate (counted
        // after the grace period) and before the overall deadline.
        let owed = Duration::from_millis(
            (body.len() as u64).saturating_add(1).saturating_mul(1_000) / rate,
        );
        let due = started
            .checked_add(grace.saturating_add(owed))
            .map_or(deadline, |t| t.min(deadline));
        let next = match tokio::time::timeout_at(due, payload.next()).await {
            Ok(next) => next,
            Err(_) => {
                return Err(ApiError::BodyTimeout(format!(
                    "the request body did not arrive in time: {} bytes in {} ms (due within {} ms: at most {} s in all, at least {rate} bytes a second after {} s)",
                    body.len(),
                    started.elapsed().as_millis(),
                    allowed.as_millis(),
                    pace.body_timeout_s.max(1),
                    pace.body_grace_s,
                )));
            }
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| {
            ApiError::Document(DocumentError::malformed(Located::pointer(
                "",
                format!("the request body could not be read: {e}"),
            )))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    if body.is_empty() {
        return Err(ApiError::Document(DocumentError::malformed(
            Located::pointer("", "the request body is empty"),
        )));
    }
    Ok(body.freeze())
}
