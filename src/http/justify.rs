//! Justifying a tamper alert after the fact: a release never covers an opening that had
//! already happened when it arrived; a supervisor who knows the opening was lawful says so
//! here, as an act of its own (the alert stays, marked, with the reason and the actor).

use actix_web::{FromRequest, HttpRequest, HttpResponse, post, web};
use chrono::Utc;
use ects_core::{AlertId, TripId};
use sqlx::Row;

use super::AppState;
use super::body::read_limited;
use super::error::ApiError;
use super::viewer::Viewer;
use crate::problem::{DocumentError, Located, Problem};
use crate::tracking::CommandFailure;

/// Longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 2_000;

/// Why the alert's opening (or tampering) was lawful.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JustifyRequest {
    /// 1 to 2000 characters (not only blanks).
    pub reason: String,
}

fn invalid(pointer: &str, detail: impl Into<String>) -> ApiError {
    ApiError::Document(DocumentError::Invalid(vec![Located::pointer(
        pointer, detail,
    )]))
}

/// Mark a `seal_opened` or `seal_tamper` alert justified: it is closed with the reason and
/// the actor, kept (never withdrawn), written to the trip's audit chain
/// (`input.alert_justified`), and told to the partners that take alerts (an `alert`
/// notification whose alert carries `justified`). A partner may justify only on a trip in
/// its country's custody; the rest answer as if the alert did not exist.
#[utoipa::path(
    tag = "alerts",
    params(("id" = String, Path, description = "Alert id (UUID)")),
    request_body = JustifyRequest,
    responses(
        (status = 200, description = "The alert, justified", body = Object),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not a tamper alert, or justified already", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason, or one over 2000 characters", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/alerts/{id}/justify")]
pub async fn post_justify(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::NotFound(format!("alert {}", path.as_str()));
    let alert_id = AlertId::parse(path.as_str()).map_err(|e| ApiError::BadParameter {
        name: "id",
        detail: format!(
            "{:?} is not an alert id (a UUID): {}",
            path.as_str(),
            e.reason
        ),
    })?;
    let viewer = Viewer::extract(&req).await?;
    let body = read_limited(&req, payload, state.settings.max_body_bytes).await?;
    let request: JustifyRequest = serde_json::from_slice(&body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::Document(DocumentError::malformed(Located::line_column(
                e.line(),
                e.column(),
                e.to_string(),
            )))
        } else {
            invalid("/reason", e.to_string())
        }
    })?;
    let chars = request.reason.chars().count();
    if request.reason.trim().is_empty() || chars > MAX_REASON_CHARS {
        return Err(invalid(
            "/reason",
            format!(
                "a reason has 1 to {MAX_REASON_CHARS} characters, not only blanks ({chars} given)"
            ),
        ));
    }
    let trip: Option<String> =
        sqlx::query("select trip_id from alerts where alert_id = $1 and withdrawn_at is null")
            .bind(alert_id.to_string())
            .fetch_optional(state.store.pool())
            .await
            .map_err(crate::store::StoreError::from)?
            .map(|r| r.try_get("trip_id"))
            .transpose()
            .map_err(crate::store::StoreError::from)?;
    let Some(trip) = trip else {
        return Err(not_found());
    };
    // An alert of a trip the caller may not see is one that does not exist.
    if !viewer.sees(&state.store, &trip).await? {
        return Err(not_found());
    }
    let trip_id = TripId::parse(&trip).map_err(|_| {
        ApiError::from(crate::store::StoreError::Corrupt(format!("trip id {trip}")))
    })?;
    // An act of the custodian authority: its officers (or its partner system), never a
    // single window.
    let status = state
        .store
        .trip_status(trip_id)
        .await?
        .ok_or_else(not_found)?;
    let single_window =
        matches!(&viewer, Viewer::Partner(p) if p.sees == crate::partners::Sees::Filed);
    if single_window || !viewer.may_act_as(status.custodian.as_str()) {
        return Err(ApiError::Forbidden(format!(
            "{} may justify alerts only on trips in its own authority's custody",
            viewer.actor()
        )));
    }
    let actor = viewer.actor();
    let alert = state
        .tracking
        .justify(trip_id, alert_id, request.reason, actor, Utc::now())
        .await
        .map_err(|f| match f {
            CommandFailure::NoTrip(_) => not_found(),
            CommandFailure::Refused(e) => {
                ApiError::Conflict(Box::new(Located::pointer("", e.reason)))
            }
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok().json(alert))
}
