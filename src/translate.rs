//! Translation without any state change: a document in one format, through the canonical
//! form, into another. For integrators (HTTP `/v1/translate`, CLI `translate`) and the
//! mapping test harness.

use serde::Serialize;

use crate::formats::Formats;
use crate::problem::{DocumentError, Located};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Translation {
    pub from: String,
    pub to: String,
    /// The canonical message kind that crossed: `declaration`, `seal_events`.
    pub message: String,
    /// The translated document (as text).
    pub output: String,
    pub content_type: String,
    /// The canonical form in between.
    #[schema(value_type = Object)]
    pub canonical: serde_json::Value,
    /// Parts of the input no mapping binding read.
    pub unmapped: Vec<String>,
    /// Notes that did not stop the output (e.g. a value flagged too long for its field).
    pub problems: Vec<Located>,
}

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("unknown format {0:?}")]
    UnknownFormat(String),
    #[error("reading {format}: {error}")]
    Decode {
        format: String,
        error: DocumentError,
    },
    #[error("writing {format}: {error}")]
    Encode {
        format: String,
        error: DocumentError,
    },
}

pub fn translate(
    formats: &Formats,
    from: &str,
    to: &str,
    body: &[u8],
) -> Result<Translation, TranslateError> {
    let reader = formats
        .get(from)
        .ok_or_else(|| TranslateError::UnknownFormat(from.to_owned()))?;
    let writer = formats
        .get(to)
        .ok_or_else(|| TranslateError::UnknownFormat(to.to_owned()))?;
    let decoded = reader
        .decode(body)
        .map_err(|error| TranslateError::Decode {
            format: from.to_owned(),
            error,
        })?;
    let canonical = serde_json::Value::from(&decoded.inbound);
    let outbound = decoded.inbound.as_outbound();
    let encoded = writer
        .encode_unsigned(&outbound)
        .map_err(|error| TranslateError::Encode {
            format: to.to_owned(),
            error,
        })?;
    Ok(Translation {
        from: from.to_owned(),
        to: to.to_owned(),
        message: decoded.inbound.kind().as_str().to_owned(),
        output: String::from_utf8_lossy(&encoded.body).into_owned(),
        content_type: encoded.content_type.to_owned(),
        canonical,
        unmapped: decoded.unmapped,
        problems: decoded.notes.into_iter().chain(encoded.flags).collect(),
    })
}
