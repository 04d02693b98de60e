//! The outbox as operators see it: what waits, what went, what is parked; and a retry.

use actix_web::{HttpResponse, get, post, web};
use chrono::Utc;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::viewer::Viewer;
use crate::store::outbox::{self, OutboxEntry, OutboxFilter};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OutboxQuery {
    /// `pending`, `sent`, `failed` (parked) or `superseded` (a status notification a newer
    /// one of its stream replaced before it was tried; `superseded_by` names that one).
    pub status: Option<String>,
    /// Only this partner's messages.
    pub partner: Option<String>,
    /// Only this trip's messages.
    pub trip: Option<String>,
    /// By the partner's latest answer: `accepted`, `rejected`, or `none` (no answer yet).
    pub answer: Option<String>,
    /// The `next` of the page before (a bare sequence number is taken too: the messages
    /// after it).
    pub after: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OutboxList {
    pub messages: Vec<OutboxEntry>,
    /// The `after` of the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Outbound messages, oldest first, each with the partner's latest answer to it (`answer`:
/// an ICEGATE ACK or a WCO DMS notification posted back, `null` when none came).
#[utoipa::path(
    tag = "outbox",
    params(OutboxQuery),
    responses(
        (status = 200, body = OutboxList),
        (status = 400, description = "A bad filter", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/outbox")]
pub async fn list_outbox(
    state: web::Data<AppState>,
    viewer: Viewer,
    query: web::Query<OutboxQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut q = query.into_inner();
    // A partner sees its own messages only.
    if let Some(id) = viewer.partner_id() {
        if q.partner.as_deref().is_some_and(|p| p != id) {
            return Ok(HttpResponse::Ok().json(OutboxList {
                messages: vec![],
                next: None,
            }));
        }
        q.partner = Some(id.to_owned());
    }
    if let Some(s) = &q.status
        && !matches!(s.as_str(), "pending" | "sent" | "failed" | "superseded")
    {
        return Err(ApiError::BadParameter {
            name: "status",
            detail: format!("{s:?} is not one of pending, sent, failed, superseded"),
        });
    }
    if let Some(a) = &q.answer
        && !matches!(a.as_str(), "accepted" | "rejected" | "none")
    {
        return Err(ApiError::BadParameter {
            name: "answer",
            detail: format!("{a:?} is not one of accepted, rejected, none"),
        });
    }
    let limit = super::trips::limit_within(q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = match q.after.as_deref() {
        None => None,
        // A sequence number, as the messages show it.
        Some(seq) if !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) => {
            Some(seq.parse::<i64>().map_err(|_| ApiError::BadParameter {
                name: "after",
                detail: format!("{seq} is not a sequence number"),
            })?)
        }
        Some(_) => Some(
            super::trips::cursor_keys(q.after.as_deref(), 1)?
                .and_then(|k| k.first().and_then(|seq| seq.parse::<i64>().ok()))
                .ok_or_else(|| ApiError::BadParameter {
                    name: "after",
                    detail: "not a cursor of this list".into(),
                })?,
        ),
    };
    let mut messages = outbox::list(
        &state.store,
        &OutboxFilter {
            status: q.status,
            partner_id: q.partner,
            trip_id: q.trip,
            after,
            answer: q.answer,
            limit: limit.saturating_add(1),
        },
    )
    .await?;
    let more = messages.len() as i64 > limit;
    messages.truncate(usize::try_from(limit).unwrap_or(0));
    let next = more
        .then(|| {
            messages
                .last()
                .map(|m| crate::cursor::encode(&[m.seq.to_string()]))
        })
        .flatten();
    Ok(HttpResponse::Ok().json(OutboxList { messages, next }))
}

/// Puts a parked message back in line, with a fresh set of attempts; its stream resumes.
#[utoipa::path(
    tag = "outbox",
    params(("seq" = i64, Path, description = "The message's sequence number")),
    responses(
        (status = 202, description = "Back in line", body = OutboxList),
        (status = 404, description = "No such message", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The message is not parked", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/outbox/{seq}/retry")]
pub async fn retry_outbox(
    state: web::Data<AppState>,
    viewer: Viewer,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let seq = path.into_inner();
    viewer.operator_only("retry deliveries")?;
    match outbox::retry(&state.store, seq, Utc::now()).await? {
        None => Err(ApiError::NotFound(format!("outbox message {seq}"))),
        Some(false) => Err(ApiError::Conflict(Box::new(
            crate::problem::Located::pointer(
                "/status",
                format!(
                    "outbox message {seq} is not parked (failed): only a parked message is retried"
                ),
            ),
        ))),
        Some(true) => {
            let messages = outbox::list(
                &state.store,
                &OutboxFilter {
                    after: Some(seq - 1),
                    limit: 1,
                    ..Default::default()
                },
            )
            .await?;
            Ok(HttpResponse::Accepted().json(OutboxList {
                messages,
                next: None,
            }))
        }
    }
}
