//! Reading a request body with a hard limit, answering 413 before buffering more.

use actix_web::HttpRequest;
use actix_web::web::{Bytes, BytesMut, Payload};
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
    while let Some(chunk) = payload.next().await {
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
