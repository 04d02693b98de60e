//! The one place where errors become HTTP answers: RFC 9457 problem documents that say
//! where the problem is. Internal errors are logged with their cause chain and answered
//! with a plain 500.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::ingest::IngestError;
use crate::problem::{DocumentError, Located, PROBLEM_BASE, Problem};
use crate::store::StoreError;
use crate::telemetry::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error("conflict: {0}")]
    Conflict(Box<Located>),
    #[error("{0} not found")]
    NotFound(String),
    /// Not found, said where the document names it.
    #[error("{0}")]
    NotFoundAt(Box<Located>),
    #[error("unknown format {format:?}")]
    UnknownFormat { format: String, known: Vec<String> },
    /// The answer cannot be given in the format asked for (`formats`: those it can be).
    #[error("{detail}")]
    NotAcceptable {
        detail: String,
        formats: Vec<String>,
    },
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    BodyTimeout(String),
    #[error("parameter {name}: {detail}")]
    BadParameter { name: &'static str, detail: String },
    #[error("the gateway is busy; try again shortly")]
    Busy,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// Not allowed, said where the document asks for it.
    #[error("{}", .0.detail)]
    ForbiddenAt(Box<Located>),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // Contention that outlasted the retries (or SQLite's busy timeout): try again.
            StoreError::Contention => ApiError::Busy,
            StoreError::OverLimit { pointer, detail } => {
                ApiError::Document(crate::problem::DocumentError::Invalid(vec![
                    crate::problem::Located::pointer(pointer, detail),
                ]))
            }
            e if e.is_retryable() => ApiError::Busy,
            e => ApiError::Internal(Box::new(e)),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Document(d) => ApiError::Document(d),
            IngestError::Conflict(l) => ApiError::Conflict(Box::new(l)),
            IngestError::Forbidden(l) => ApiError::ForbiddenAt(Box::new(l)),
            IngestError::NotFound(l) => ApiError::NotFoundAt(Box::new(l)),
            IngestError::Store(s) => s.into(),
            IngestError::Pool(e) => ApiError::Internal(Box::new(e)),
        }
    }
}

impl ApiError {
    fn slug(&self) -> &'static str {
        match self {
            ApiError::Document(DocumentError::Malformed(_)) => "malformed-document",
            ApiError::Document(DocumentError::Invalid(_)) => "invalid-document",
            ApiError::Conflict(_) => "conflict",
            ApiError::NotFound(_) | ApiError::NotFoundAt(_) => "not-found",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) | ApiError::ForbiddenAt(_) => "forbidden",
            ApiError::UnknownFormat { .. } => "unknown-format",
            ApiError::NotAcceptable { .. } => "not-acceptable",
            ApiError::TooLarge { .. } => "payload-too-large",
            ApiError::BodyTimeout(_) => "request-timeout",
            ApiError::BadParameter { .. } => "bad-parameter",
            ApiError::Busy => "busy",
            ApiError::Internal(_) => "internal-error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::Document(DocumentError::Malformed(_)) => "The document is not well-formed",
            ApiError::Document(DocumentError::Invalid(_)) => "The document is not valid",
            ApiError::Conflict(_) => "Conflicts with what is already stored",
            ApiError::NotFound(_) | ApiError::NotFoundAt(_) => "Not found",
            ApiError::Unauthorized(_) => "Not authenticated",
            ApiError::Forbidden(_) | ApiError::ForbiddenAt(_) => "Not allowed",
            ApiError::UnknownFormat { .. } => "Unknown format",
            ApiError::NotAcceptable { .. } => "Not available in that format",
            ApiError::TooLarge { .. } => "Request body too large",
            ApiError::BodyTimeout(_) => "Request body too slow",
            ApiError::BadParameter { .. } => "Bad parameter",
            ApiError::Busy => "Busy",
            ApiError::Internal(_) => "Internal error",
        }
    }

    pub fn problem(&self) -> Problem {
        let (detail, errors) = match self {
            ApiError::Document(DocumentError::Malformed(l)) => (l.to_string(), vec![(**l).clone()]),
            ApiError::Document(DocumentError::Invalid(list)) => (
                match list.as_slice() {
                    [one] => one.to_string(),
                    [first, ..] => format!("{first} (and {} more)", list.len() - 1),
                    [] => "invalid document".into(),
                },
                list.clone(),
            ),
            ApiError::Conflict(l) | ApiError::NotFoundAt(l) => (l.to_string(), vec![(**l).clone()]),
            ApiError::ForbiddenAt(l) => (l.detail.clone(), vec![(**l).clone()]),
            ApiError::UnknownFormat { format, known } => (
                format!("no format {format:?}; known formats: {}", known.join(", ")),
                vec![],
            ),
            ApiError::Internal(_) => (
                "the gateway could not complete the request; it has been logged".into(),
                vec![],
            ),
            other => (other.to_string(), vec![]),
        };
        Problem {
            type_uri: format!("{PROBLEM_BASE}{}", self.slug()),
            title: self.title().into(),
            status: self.status_code().as_u16(),
            detail,
            errors,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Document(DocumentError::Malformed(_)) => StatusCode::BAD_REQUEST,
            ApiError::Document(DocumentError::Invalid(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotFound(_) | ApiError::NotFoundAt(_) | ApiError::UnknownFormat { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::NotAcceptable { .. } => StatusCode::NOT_ACCEPTABLE,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::ForbiddenAt(_) => StatusCode::FORBIDDEN,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(e) = self {
            tracing::error!(error.cause_chain = %error_chain(e.as_ref()), "request failed");
        }
        let mut response = match self {
            // The problem lists the formats that can answer (an extension member).
            ApiError::NotAcceptable { formats, .. } => {
                let mut value = serde_json::to_value(self.problem()).unwrap_or_default();
                value["formats"] = serde_json::json!(formats);
                HttpResponse::build(StatusCode::NOT_ACCEPTABLE)
                    .content_type("application/problem+json")
                    .body(value.to_string())
            }
            _ => problem_response(&self.problem()),
        };
        if matches!(self, ApiError::TooLarge { .. } | ApiError::BodyTimeout(_)) {
            // The rest of the body is not read: the connection cannot carry another request.
            response
                .head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static("Bearer"),
            );
        }
        if matches!(self, ApiError::Busy) {
            response.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

pub fn problem_response(problem: &Problem) -> HttpResponse {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .body(serde_json::to_string(problem).unwrap_or_default())
}
