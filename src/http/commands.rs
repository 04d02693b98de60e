//! Commands on a trip: remote release, custody handover, cancellation; and its audit trail.

use actix_web::{HttpRequest, HttpResponse, get, post, put, web};
use chrono::Utc;
use ects_core::trip::{Input, RulesOverride};
use ects_core::{Cancellation, CustodyHandover, ReleaseAuthorization, TripId};
use serde::de::DeserializeOwned;

use super::AppState;
use super::body::read_limited;
use super::error::ApiError;
use super::viewer::Viewer;
use crate::formats::{check_command_times, decode_canonical};
use crate::problem::{DocumentError, Located, Problem};
use crate::schemas::Canonical;
use crate::tracking::{AuditTrail, CommandFailure, CommandOutcome, audit_trail};
use actix_web::FromRequest;

fn path_trip_id(text: &str) -> Result<TripId, ApiError> {
    TripId::parse(text).map_err(|e| ApiError::BadParameter {
        name: "id",
        detail: format!("{text:?} is not a trip id (a UUID): {}", e.reason),
    })
}

impl From<CommandFailure> for ApiError {
    fn from(f: CommandFailure) -> Self {
        match f {
            CommandFailure::NoTrip(id) => ApiError::NotFound(format!("trip {id}")),
            CommandFailure::Conflict { field, reason } => {
                ApiError::Conflict(Box::new(Located::pointer(format!("/{field}"), reason)))
            }
            // Refusals about the trip's state or who may act conflict with what is stored;
            // the rest are wrong values in the document.
            CommandFailure::Refused(e) => match e.field {
                "trip_id" | "authority" | "from_authority" | "release_id" | "handover_id" => {
                    ApiError::Conflict(Box::new(Located::pointer(
                        format!("/{}", e.field),
                        e.reason,
                    )))
                }
                field => ApiError::Document(DocumentError::Invalid(vec![Located::pointer(
                    format!("/{field}"),
                    e.reason,
                )])),
            },
            CommandFailure::Store(s) => s.into(),
        }
    }
}

/// Reads the command, checks it names the trip of the path, applies it.
async fn run<T: DeserializeOwned>(
    state: &AppState,
    req: &HttpRequest,
    path: &str,
    payload: web::Payload,
    kind: Canonical,
    trip_of: impl Fn(&T) -> TripId,
    into_input: impl Fn(T) -> (Input, String),
) -> Result<HttpResponse, ApiError> {
    let trip_id = path_trip_id(path)?;
    // A partner acts only on the trips it may see, and only as its own country.
    let viewer = Viewer::extract(req).await?;
    viewer.check(&state.store, &trip_id.to_string()).await?;
    // Releases, handovers and cancellations are acts of customs, not of a single window.
    if let Viewer::Partner(p) = &viewer
        && p.sees == crate::partners::Sees::Filed
    {
        return Err(ApiError::Forbidden(format!(
            "partner {} is a single window: it may not issue releases, handovers or \
             cancellations",
            p.id
        )));
    }
    let body = read_limited(req, payload, state.settings.max_body_bytes).await?;
    let command: T = decode_canonical(&state.schemas, kind, &body)?;
    if trip_of(&command) != trip_id {
        return Err(ApiError::Document(DocumentError::Invalid(vec![
            Located::pointer(
                "/trip_id",
                format!(
                    "names trip {}, but the request is for trip {trip_id}",
                    trip_of(&command)
                ),
            ),
        ])));
    }
    let (mut input, _typed) = into_input(command);
    // When it was received is the gateway's to say (the schema refuses the field too).
    if let Input::Release(r) = &mut input {
        r.received_at = None;
    }
    if let Input::Release(r) = &input
        && (ects_core::trip::code_is_hashed(&r.one_time_code)
            || r.one_time_code.chars().count() > 32)
    {
        // A code in the form codes are kept in would be taken for one read back.
        return Err(ApiError::Document(DocumentError::Invalid(vec![
            Located::pointer(
                "/one_time_code",
                "must have 4 to 32 characters, and not be a kept code's form",
            ),
        ])));
    }
    let now = Utc::now();
    check_command_times(&input, now, state.settings.tracking.command_skew_s)?;
    // An officer or partner acts only as its own country's authority.
    let acting = match &input {
        Input::Release(r) => r.authority.as_str(),
        Input::Handover(h) => h.from_authority.as_str(),
        Input::Cancel(c) => c.authority.as_str(),
        _ => "",
    };
    if !viewer.may_act_as(acting) {
        return Err(ApiError::Forbidden(format!(
            "{} may not act as authority {acting:?}",
            viewer.actor()
        )));
    }
    // Custody passes only to an authority that is party to the trip (its issuing
    // authority, offices or itinerary): another could neither see it nor act on it.
    if let Input::Handover(h) = &input {
        let to = h
            .to_authority
            .as_str()
            .get(..2)
            .unwrap_or_default()
            .to_owned();
        let mut conn = state
            .store
            .pool()
            .acquire()
            .await
            .map_err(crate::store::StoreError::from)?;
        let parties = crate::store::outbox::trip_parties(&mut conn, &trip_id.to_string()).await?;
        if !parties.contains(&to) {
            return Err(ApiError::Document(DocumentError::Invalid(vec![
                Located::pointer(
                    "/to_authority",
                    format!(
                        "{} is not party to this trip (its issuing authority, offices or \
                         itinerary): custody cannot pass to it",
                        h.to_authority
                    ),
                ),
            ])));
        }
    }
    // The officer is the one authenticated, not the one typed: an officer token's name
    // replaces the body's officer id (a partner's system names its own officers).
    if let Viewer::User(u) = &viewer {
        let officer = match &mut input {
            Input::Release(r) => Some(&mut r.officer),
            Input::Handover(h) => Some(&mut h.officer),
            Input::Cancel(c) => Some(&mut c.officer),
            _ => None,
        };
        if let Some(officer) = officer {
            officer.id = u.name.clone();
        }
    }
    let actor = viewer.actor();
    let outcome = state.tracking.command(trip_id, input, actor, now).await?;
    Ok(HttpResponse::Ok().json(outcome))
}

/// Authorize remote release: the seals may open at the named place within the window. The
/// answer carries the unlock commands (one-time code) for the seals.
#[utoipa::path(
    tag = "trips",
    params(("id" = String, Path, description = "Trip id (UUID)")),
    request_body = ReleaseAuthorization,
    responses(
        (status = 200, description = "Recorded (or already recorded); the unlock commands, with the one-time code in clear: this answer is the only place it is shown (it is kept as its hash)", body = CommandOutcome),
        (status = 403, description = "A single window, or a partner acting as another country's authority", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such trip, or one the caller may not see", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not the custodian, trip closed, id reused", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Place not approved, bad window or code", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/trips/{id}/release")]
pub async fn post_release(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    run(
        &state,
        &req,
        &path,
        payload,
        Canonical::ReleaseAuthorization,
        |r: &ReleaseAuthorization| r.trip_id,
        |r| {
            let actor = format!("officer:{}/{}", r.authority, r.officer.id);
            (Input::Release(r), actor)
        },
    )
    .await
}

/// Hand custody of the trip to the next authority (at a border post).
#[utoipa::path(
    tag = "trips",
    params(("id" = String, Path, description = "Trip id (UUID)")),
    request_body = CustodyHandover,
    responses(
        (status = 200, description = "Recorded (or already recorded)", body = CommandOutcome),
        (status = 403, description = "A single window, or a partner acting as another country's authority", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such trip, or one the caller may not see", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not from the current custodian, trip closed, id reused", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/trips/{id}/handover")]
pub async fn post_handover(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    run(
        &state,
        &req,
        &path,
        payload,
        Canonical::CustodyHandover,
        |h: &CustodyHandover| h.trip_id,
        |h| {
            let actor = format!("officer:{}/{}", h.to_authority, h.officer.id);
            (Input::Handover(h), actor)
        },
    )
    .await
}

/// Cancel the transit (issuing authority only).
#[utoipa::path(
    tag = "trips",
    params(("id" = String, Path, description = "Trip id (UUID)")),
    request_body = Cancellation,
    responses(
        (status = 200, body = CommandOutcome),
        (status = 403, description = "A single window, or a partner acting as another country's authority", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such trip, or one the caller may not see", body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/trips/{id}/cancel")]
pub async fn post_cancel(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    run(
        &state,
        &req,
        &path,
        payload,
        Canonical::Cancellation,
        |c: &Cancellation| c.trip_id,
        |c| {
            let actor = format!("officer:{}/{}", c.authority, c.officer.id);
            (Input::Cancel(c), actor)
        },
    )
    .await
}

/// Paging of `GET /v1/trips/{id}/audit`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// The `next` of the page before.
    pub after: Option<String>,
    /// At most this many entries (default 1000, at most 10000).
    pub limit: Option<i64>,
}

/// The trip's audit trail, a page at a time: every input and effect, hash-chained, and
/// whether the whole chain verifies.
#[utoipa::path(
    tag = "trips",
    params(("id" = String, Path, description = "Trip id (UUID)"), AuditQuery),
    responses((status = 200, body = AuditTrail), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
#[get("/v1/trips/{id}/audit")]
pub async fn get_audit(
    state: web::Data<AppState>,
    viewer: Viewer,
    path: web::Path<String>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let trip_id = path_trip_id(&path)?;
    let limit = super::trips::limit_within(query.limit, 1_000, 10_000)?;
    let after = match &query.after {
        None => 0,
        Some(text) => crate::cursor::decode(text, 1)
            .ok()
            .and_then(|k| k.first().and_then(|s| s.parse::<i64>().ok()))
            .ok_or_else(|| ApiError::BadParameter {
                name: "after",
                detail: "not a cursor of this list (give back the `next` of the page before)"
                    .into(),
            })?,
    };
    viewer.check(&state.store, &trip_id.to_string()).await?;
    if state.store.trip_status(trip_id).await?.is_none() {
        return Err(ApiError::NotFound(format!("trip {trip_id}")));
    }
    Ok(HttpResponse::Ok().json(audit_trail(&state.store, trip_id, after, limit).await?))
}

/// Reads a trip's own thresholds: JSON with the fields of the configuration's `[rules]`,
/// each within its documented range (`Rules::RANGES`, README "Thresholds").
fn parse_rules(body: &[u8]) -> Result<RulesOverride, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::Document(DocumentError::malformed(Located::line_column(
            e.line(),
            e.column(),
            e.to_string(),
        )))
    })?;
    RulesOverride::parse(&value).map_err(|e| {
        ApiError::Document(DocumentError::Invalid(vec![Located::pointer(
            e.pointer, e.reason,
        )]))
    })
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TripRules {
    pub trip_id: TripId,
    /// The thresholds set for this trip; the others come from its corridor and the defaults.
    #[schema(value_type = Object)]
    pub rules: RulesOverride,
}

/// Set this trip's own rule thresholds (they win over its corridor's and the defaults).
#[utoipa::path(
    tag = "trips",
    params(("id" = String, Path, description = "Trip id (UUID)")),
    request_body(content = Object, description = "Thresholds, e.g. {\"max_stop_s\": 600, \"max_gap_s\": 300}"),
    responses(
        (status = 200, body = TripRules),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown threshold, or a value outside its range", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/v1/trips/{id}/rules")]
pub async fn put_rules(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let trip_id = path_trip_id(&path)?;
    let viewer = Viewer::extract(&req).await?;
    viewer.check(&state.store, &trip_id.to_string()).await?;
    viewer.operator_only("set a trip's thresholds")?;
    let body = read_limited(&req, payload, state.settings.max_body_bytes).await?;
    let rules = parse_rules(&body)?;
    state
        .tracking
        .set_trip_rules(trip_id, rules.clone(), viewer.actor(), Utc::now())
        .await?;
    Ok(HttpResponse::Ok().json(TripRules { trip_id, rules }))
}
