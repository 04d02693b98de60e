//! Ingest endpoints: messages in any registered format, and canonical seal events.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::Utc;

use super::AppState;
use super::body::read_limited;
use super::error::ApiError;
use super::viewer::Viewer;
use crate::answers::AnswerFormat;
use crate::formats::{Decoded, Format, FormatInfo, Inbound};
use crate::ingest::{Answer, IngestResponse, Scope, Source};
use crate::problem::{DocumentError, Located, Problem};
use actix_web::FromRequest;
use actix_web::web::Bytes;
use std::sync::Arc;

fn answer(a: Answer) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(a.status)
        .unwrap_or(actix_web::http::StatusCode::ACCEPTED);
    let mut response = HttpResponse::build(status);
    response.content_type("application/json");
    if a.replayed {
        // As with idempotency keys elsewhere: the body is the one first given.
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    response.body(a.body)
}

/// The sender is the partner whose credential came with the request, else the principal
/// as the audit trail names it (`user:<token name>/<role>`). A single window's filings
/// are recorded as its own (`filer:token:<name>`).
fn source_of<'a>(
    req: &'a HttpRequest,
    viewer: &'a Viewer,
    actor: &'a str,
    scope: &'a Option<Scope>,
) -> Source<'a> {
    Source {
        transport: "http",
        sender: viewer.partner_id().unwrap_or(actor),
        content_type: req
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        message_id: None,
        partner: viewer.filer_id(),
        authority: match viewer {
            Viewer::Partner(p) => Some(&p.authority),
            Viewer::User(_) => None,
        },
        scope: scope.as_ref(),
        // A device platform posts only for its registered devices, each event marked as its.
        platform: viewer.device_platform(),
    }
}

/// What the sender may reach: a partner by its sharing rules, a single window what it
/// filed; `None` for the rest (admin; a device platform is bound by its devices).
fn scope_of(viewer: &Viewer) -> Option<Scope> {
    match viewer {
        Viewer::Partner(p) => Some(Scope::of_partner(p)),
        Viewer::User(u) if u.role == crate::auth::Role::SingleWindow => Some(Scope {
            id: viewer.filer_id().unwrap_or_default().to_owned(),
            country: u.authority.as_ref().map(|a| a.chars().take(2).collect()),
            parties: viewer.parties().unwrap_or_default(),
            posts_events: false,
            what: "single window",
        }),
        Viewer::User(_) => None,
    }
}

async fn ingest_with(
    state: &AppState,
    req: &HttpRequest,
    format: Arc<dyn Format>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let viewer = Viewer::extract(req).await?;
    let actor = viewer.actor();
    let scope = scope_of(&viewer);
    let format_id = format.id().to_owned();
    let result = state
        .ingest
        .ingest(
            format,
            body,
            source_of(req, &viewer, &actor, &scope),
            Utc::now(),
        )
        .await;
    state.metrics.message_in(&format_id, &result);
    Ok(answer(result?))
}

/// A partner's answer to a message the outbox sent it (`crate::answers`).
async fn answer_with(
    state: &AppState,
    req: &HttpRequest,
    format: AnswerFormat,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    let viewer = Viewer::extract(req).await?;
    let actor = viewer.actor();
    let scope = scope_of(&viewer);
    let result = state
        .ingest
        .answer(
            format,
            body,
            source_of(req, &viewer, &actor, &scope),
            Utc::now(),
        )
        .await;
    state.metrics.message_in(format.id(), &result);
    Ok(answer(result?))
}

/// Ingest a message in the named format. `icegate-ack` and `wco-dms` name a partner's
/// answer to a message the gateway sent it (see `GET /v1/outbox`).
#[utoipa::path(
    tag = "messages",
    params(("format" = String, Path, description = "Format id, e.g. ects-json; icegate-ack or wco-dms for an answer")),
    request_body(content = String, description = "The document, as the partner sends it"),
    responses(
        (status = 202, description = "Stored and applied; the trips it touched (an answer: the outbox message it answers)", body = IngestResponse),
        (status = 400, description = "Not well-formed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A partner's declaration under another country's issuing authority; an amendment or deletion of a declaration the sender did not file and is not the issuing authority of", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown format", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Conflicts with a stored declaration (a conflicting seal event is kept as evidence and listed in the 202 answer instead)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not valid; each problem with its location", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/messages/{format}")]
pub async fn post_message(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let format_id = path.into_inner();
    if let Some(kind) = AnswerFormat::from_id(&format_id) {
        let body = read_limited(&req, payload, state.settings.max_body_bytes).await?;
        return answer_with(&state, &req, kind, &body).await;
    }
    let format = state
        .formats
        .get(&format_id)
        .ok_or_else(|| ApiError::UnknownFormat {
            format: format_id.clone(),
            known: state.formats.ids(),
        })?
        .clone();
    let body = read_limited(&req, payload, state.settings.max_body_bytes).await?;
    ingest_with(&state, &req, format, body).await
}

/// Ingest a message, its format detected from the document. A partner's answer to a
/// message the gateway sent it (an ICEGATE ACK, a WCO DMS notification DMSACC/DMSREJ) is
/// recognised and stored with that message (`GET /v1/outbox` shows it).
#[utoipa::path(
    tag = "messages",
    request_body(content = String, description = "The document"),
    responses(
        (status = 202, description = "Stored and applied", body = IngestResponse),
        (status = 202, description = "A partner's answer, stored with the outbox message it answers", body = crate::ingest::AnswerReceipt),
        (status = 403, description = "An amendment or deletion of a declaration the sender did not file and is not the issuing authority of; an answer sent without a partner's credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "An answer naming no message the gateway sent to this partner (kept as a rejected message)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No format recognises the document, or it is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/messages")]
pub async fn post_message_detect(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_limited(&req, payload, state.settings.max_body_bytes).await?;
    // A partner's answer is told apart first (an ACK shares the ICEGATE envelope with
    // a filing), on the decode pool: recognising an XML answer reads its root's children.
    let kind = {
        let job_body = body.clone();
        state
            .ingest
            .decode_pool()
            .run(move || crate::answers::detect(&job_body))
            .await
            .map_err(|e| ApiError::Internal(Box::new(e)))?
    };
    if let Some(kind) = kind {
        return answer_with(&state, &req, kind, &body).await;
    }
    let viewer = Viewer::extract(&req).await?;
    let actor = viewer.actor();
    let scope = scope_of(&viewer);
    // Detection and decoding in one job on the decode pool, off the async workers.
    let (format_id, result) = state
        .ingest
        .ingest_detected(
            &state.formats,
            body,
            source_of(&req, &viewer, &actor, &scope),
            Utc::now(),
        )
        .await;
    state.metrics.message_in(&format_id, &result);
    Ok(answer(result?))
}

/// Canonical seal events: one event, an array, or `{"events": [...]}`.
#[utoipa::path(
    tag = "messages",
    request_body(content = Vec<ects_core::SealEvent>, description = "One seal event, an array of them, or {\"events\": [...]}"),
    responses(
        (status = 202, description = "Stored; counts of accepted, duplicate and unmatched events", body = IngestResponse),
        (status = 400, description = "Not well-formed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not valid seal events", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/seal-events")]
pub async fn post_seal_events(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_limited(&req, payload, state.settings.max_body_bytes).await?;
    let format =
        state
            .formats
            .get("ects-json")
            .cloned()
            .ok_or_else(|| ApiError::UnknownFormat {
                format: "ects-json".into(),
                known: state.formats.ids(),
            })?;
    ingest_with(&state, &req, Arc::new(EventsOnly(format)), body).await
}

/// A format restricted to seal events: a declaration sent to the events endpoint by
/// mistake is refused (and recorded as rejected), not registered.
struct EventsOnly(Arc<dyn Format>);

impl Format for EventsOnly {
    fn id(&self) -> &str {
        self.0.id()
    }

    fn version(&self) -> &str {
        self.0.version()
    }

    fn description(&self) -> &str {
        self.0.description()
    }

    fn messages(&self) -> Vec<(crate::mapping::MessageKind, &'static str)> {
        self.0.messages()
    }

    fn detect(&self, body: &[u8]) -> bool {
        self.0.detect(body)
    }

    fn decode(&self, body: &[u8]) -> Result<Decoded, DocumentError> {
        let decoded = self.0.decode(body)?;
        match decoded.inbound {
            Inbound::Declaration(_) => Err(DocumentError::Invalid(vec![Located::pointer(
                "/declaration_id",
                "this endpoint takes seal events; send declarations to /v1/messages/ects-json",
            )])),
            _ => Ok(decoded),
        }
    }

    fn encode(
        &self,
        out: &crate::formats::Outbound<'_>,
    ) -> Result<crate::formats::Encoded, DocumentError> {
        self.0.encode(out)
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct FormatList {
    pub formats: Vec<FormatInfo>,
}

/// The formats this gateway reads and writes.
#[utoipa::path(tag = "messages", responses((status = 200, body = FormatList)))]
#[get("/v1/formats")]
pub async fn get_formats(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(FormatList {
        formats: state.formats.list(),
    })
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TranslateQuery {
    /// The format of the document sent.
    pub from: String,
    /// The format to translate it into.
    pub to: String,
}

/// Translate a document between formats, through the canonical form; nothing is stored.
/// The answer holds the output, the canonical form, the parts of the input no binding
/// read (`unmapped`), and notes.
#[utoipa::path(
    tag = "messages",
    params(TranslateQuery),
    request_body(content = String, description = "The document in the `from` format"),
    responses(
        (status = 200, body = crate::translate::Translation),
        (status = 404, description = "Unknown format", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The document cannot be read, or not written in the target format", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/translate")]
pub async fn post_translate(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<TranslateQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    use crate::translate::{TranslateError, translate};
    let body = read_limited(&req, payload, state.settings.max_body_bytes).await?;
    // Decoding and writing run on the decode pool, off the async workers.
    let formats = state.formats.clone();
    let query = query.into_inner();
    let (from, to) = (query.from.clone(), query.to.clone());
    let translated = state
        .ingest
        .decode_pool()
        .run(move || translate(&formats, &from, &to, &body))
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    match translated {
        Ok(t) => Ok(HttpResponse::Ok().json(t)),
        Err(TranslateError::UnknownFormat(format)) => Err(ApiError::UnknownFormat {
            format,
            known: state.formats.ids(),
        }),
        Err(TranslateError::Decode { error, .. }) => Err(ApiError::Document(error)),
        Err(TranslateError::Encode { error, .. }) => Err(ApiError::Document(match error {
            DocumentError::Malformed(l) => DocumentError::Invalid(vec![*l]),
            other => other,
        })),
    }
}
