//! Trip status, a trip's seal events, and alerts.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use ects_core::{Alert, AlertKind, TripId, TripState, TripStatus};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::viewer::Viewer;
use crate::store::{AlertFilter, StoredEvent};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 10_000;

fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    limit_within(requested, DEFAULT_LIMIT, MAX_LIMIT)
}

/// A `limit` parameter: `default` when absent, refused outside `1..=max`.
pub(super) fn limit_within(
    requested: Option<i64>,
    default: i64,
    max: i64,
) -> Result<i64, ApiError> {
    match requested {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadParameter {
            name: "limit",
            detail: format!("{n} is outside 1..={max}"),
        }),
    }
}

fn trip_id(text: &str) -> Result<TripId, ApiError> {
    TripId::parse(text).map_err(|e| ApiError::BadParameter {
        name: "id",
        detail: format!("{text:?} is not a trip id (a UUID): {}", e.reason),
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TripQuery {
    /// A declaration id: the trips of that declaration.
    pub reference: Option<String>,
    /// With `reference`: only the declaration of this issuing authority.
    pub authority: Option<String>,
    /// Only trips in this state.
    #[param(value_type = Option<String>)]
    pub state: Option<TripState>,
    /// At most this many trips (default 100, at most 10000).
    pub limit: Option<i64>,
    /// With `reference`: the status of its trip in this partner format (as `GET
    /// /v1/trips/{id}?format=`).
    pub format: Option<String>,
    /// The `next` of the page before.
    pub after: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TripList {
    pub trips: Vec<TripStatus>,
    /// The `after` of the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventList {
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<StoredEvent>,
    /// The `after` of the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ConflictList {
    pub conflicts: Vec<crate::store::StoredConflict>,
    /// The `after` of the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AlertList {
    pub alerts: Vec<Alert>,
    /// The `after` of the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The keys of an `after` cursor of this list.
pub(super) fn cursor_keys(after: Option<&str>, n: usize) -> Result<Option<Vec<String>>, ApiError> {
    after
        .map(|text| {
            crate::cursor::decode(text, n).map_err(|why| ApiError::BadParameter {
                name: "after",
                detail: format!("{why} (give back the `next` of the page before)"),
            })
        })
        .transpose()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FormatQuery {
    /// A partner format to answer in (default: canonical JSON; or negotiated with
    /// `Accept: application/xml; format=G` or `application/vnd.ects.G+xml`).
    pub format: Option<String>,
}

/// The format a status is asked in: `?format=` first, else the `Accept` header.
fn wanted_format(
    query: Option<&str>,
    req: &HttpRequest,
    formats: &crate::formats::Formats,
) -> Result<String, ApiError> {
    if let Some(format) = query {
        return Ok(format.to_owned());
    }
    let accept = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    match crate::status::negotiate(accept) {
        crate::status::Wanted::Format(format) if formats.get(&format).is_none() => {
            Err(not_acceptable(
                format!("Accept names format {format:?}, which is not loaded"),
                formats,
            ))
        }
        crate::status::Wanted::Format(format) => Ok(format),
        crate::status::Wanted::Canonical => Ok(crate::status::CANONICAL.to_owned()),
        crate::status::Wanted::Unsatisfiable => Err(not_acceptable(
            format!(
                "Accept {:?} names no format a trip status is written in; ask for \
                 application/xml; format=G, application/vnd.ects.G+xml, or ?format=G",
                accept.unwrap_or_default()
            ),
            formats,
        )),
    }
}

fn not_acceptable(detail: String, formats: &crate::formats::Formats) -> ApiError {
    let capable = crate::status::capable(formats);
    ApiError::NotAcceptable {
        detail: format!("{detail}; formats that can: {}", capable.join(", ")),
        formats: capable,
    }
}

/// A trip's status answered in `format` (406 when the format cannot say it).
/// A status without alert evidence, for a trader's side (shipper, transporter) and a
/// single window: no open alerts, a seal that was opened or tampered with reads
/// `unknown` (not reported to this caller), and no custody chain (its seal checks,
/// remarks and officers are the authorities'); the custodian stays.
fn without_evidence(status: &mut TripStatus) {
    status.open_alerts.clear();
    for seal in status.equipment.iter_mut().flat_map(|e| e.seals.iter_mut()) {
        if matches!(
            seal.state,
            ects_core::SealState::Opened | ects_core::SealState::Tampered
        ) {
            seal.state = ects_core::SealState::Unknown;
        }
    }
    status.custody_chain.clear();
}

async fn status_in(
    state: &AppState,
    format: &str,
    status: &TripStatus,
) -> Result<HttpResponse, ApiError> {
    use crate::status::RenderError;
    if format != crate::status::CANONICAL && state.formats.get(format).is_none() {
        return Err(ApiError::UnknownFormat {
            format: format.to_owned(),
            known: state.formats.ids(),
        });
    }
    let rendered = crate::status::render(&state.store, &state.formats, format, status)
        .await
        .map_err(|e| match e {
            RenderError::Store(e) => e.into(),
            e => not_acceptable(e.to_string(), &state.formats),
        })?;
    Ok(HttpResponse::Ok()
        .content_type(rendered.content_type)
        .insert_header((actix_web::http::header::VARY, "Accept"))
        .body(rendered.body))
}

/// A trip's status.
#[utoipa::path(
    tag = "trips",
    params(("id" = String, Path, description = "Trip id (UUID)"), FormatQuery),
    responses(
        (status = 200, body = TripStatus),
        (status = 400, description = "Not a trip id", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such trip", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 406, description = "The format cannot express a trip status; the problem lists those that can", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/trips/{id}")]
pub async fn get_trip(
    state: web::Data<AppState>,
    viewer: Viewer,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<FormatQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = trip_id(&path)?;
    viewer.check(&state.store, &id.to_string()).await?;
    let format = wanted_format(query.format.as_deref(), &req, &state.formats)?;
    let mut status = state
        .store
        .trip_status(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("trip {id}")))?;
    if !viewer.sees_alerts() {
        without_evidence(&mut status);
    }
    if format == crate::status::CANONICAL {
        return Ok(HttpResponse::Ok()
            .insert_header((actix_web::http::header::VARY, "Accept"))
            .json(status));
    }
    status_in(&state, &format, &status).await
}

/// Trips by declaration reference, or the most recently updated.
#[utoipa::path(tag = "trips", params(TripQuery), responses((status = 200, body = TripList)))]
#[get("/v1/trips")]
pub async fn list_trips(
    state: web::Data<AppState>,
    viewer: Viewer,
    req: HttpRequest,
    query: web::Query<TripQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let format = wanted_format(q.format.as_deref(), &req, &state.formats)?;
    if format != crate::status::CANONICAL {
        return reference_status_in(&state, &viewer, &q, &format).await;
    }
    let limit = limit(q.limit)?;
    let parties = viewer.parties();
    let (trips, next) = match &q.reference {
        Some(reference) => {
            let trips = state
                .store
                .trips_by_reference(
                    reference,
                    q.authority.as_deref(),
                    q.state,
                    parties.as_deref(),
                    limit,
                )
                .await?;
            let mut visible = Vec::with_capacity(trips.len());
            for t in trips {
                if viewer.sees(&state.store, &t.trip_id.to_string()).await? {
                    visible.push(t);
                }
            }
            (visible, None)
        }
        None => {
            let after = cursor_keys(q.after.as_deref(), 2)?.map(|k| (k[0].clone(), k[1].clone()));
            let mut rows = state
                .store
                .list_trips(q.state, parties.as_deref(), after, limit.saturating_add(1))
                .await?;
            let more = rows.len() as i64 > limit;
            rows.truncate(usize::try_from(limit).unwrap_or(0));
            let next = more
                .then(|| {
                    rows.last()
                        .map(|(_, k)| crate::cursor::encode(&[k.0.clone(), k.1.clone()]))
                })
                .flatten();
            (rows.into_iter().map(|(t, _)| t).collect(), next)
        }
    };
    let mut trips = trips;
    if !viewer.sees_alerts() {
        trips.iter_mut().for_each(without_evidence);
    }
    Ok(HttpResponse::Ok().json(TripList { trips, next }))
}

/// `GET /v1/trips?reference=R&format=G`: the status of the declaration's one trip.
async fn reference_status_in(
    state: &AppState,
    viewer: &Viewer,
    q: &TripQuery,
    format: &str,
) -> Result<HttpResponse, ApiError> {
    let Some(reference) = &q.reference else {
        return Err(ApiError::BadParameter {
            name: "format",
            detail: "a trip status in a partner format is asked with reference=R (one \
                     declaration) or at /v1/trips/{id}"
                .into(),
        });
    };
    let parties = viewer.parties();
    let mut trips = Vec::new();
    // Enough to tell one trip from several.
    for t in state
        .store
        .trips_by_reference(
            reference,
            q.authority.as_deref(),
            q.state,
            parties.as_deref(),
            10,
        )
        .await?
    {
        if viewer.sees(&state.store, &t.trip_id.to_string()).await? {
            trips.push(t);
        }
    }
    match trips.as_slice() {
        [] => Err(ApiError::NotFound(format!(
            "a trip of declaration {reference:?}"
        ))),
        [one] if !viewer.sees_alerts() => {
            let mut one = one.clone();
            without_evidence(&mut one);
            status_in(state, format, &one).await
        }
        [one] => status_in(state, format, one).await,
        several => Err(ApiError::BadParameter {
            name: "reference",
            detail: format!(
                "declaration {reference:?} has {} trips ({}); narrow it with authority=, or \
                 ask /v1/trips/{{id}}?format={format}",
                several.len(),
                several
                    .iter()
                    .map(|t| format!("{} of {}", t.trip_id, t.issuing_authority))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    /// At most this many (default 100, at most 10000).
    pub limit: Option<i64>,
    /// The `next` of the page before.
    pub after: Option<String>,
}

/// A trip's seal events, in event-time order.
#[utoipa::path(
    tag = "trips",
    params(("id" = String, Path, description = "Trip id (UUID)"), LimitQuery),
    responses((status = 200, body = EventList), (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"))
)]
#[get("/v1/trips/{id}/events")]
pub async fn trip_events(
    state: web::Data<AppState>,
    viewer: Viewer,
    path: web::Path<String>,
    query: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = trip_id(&path)?;
    viewer.check(&state.store, &id.to_string()).await?;
    let limit = limit(query.limit)?;
    if state.store.trip_status(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("trip {id}")));
    }
    let after = match cursor_keys(query.after.as_deref(), 3)? {
        None => None,
        Some(k) => Some((
            k[0].clone(),
            k[1].parse::<i64>().map_err(|_| ApiError::BadParameter {
                name: "after",
                detail: "not a cursor of this list".into(),
            })?,
            k[2].clone(),
        )),
    };
    let mut rows = state
        .store
        .events_of_trip(id, after, limit.saturating_add(1))
        .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next = more
        .then(|| {
            rows.last()
                .map(|(_, k)| crate::cursor::encode(&[k.0.clone(), k.1.to_string(), k.2.clone()]))
        })
        .flatten();
    let events = rows.into_iter().map(|(e, _)| e).collect();
    Ok(HttpResponse::Ok().json(EventList { events, next }))
}

/// A trip's conflicting events kept as evidence (same event id, or same device and seq,
/// as a stored event, other content), in event-time order, with when they came and who
/// sent them. An event of `GET /v1/trips/{id}/events` that has some says how many
/// (`conflicts`, and `conflicts_dropped` past the cap).
#[utoipa::path(
    tag = "trips",
    params(("id" = String, Path, description = "Trip id (UUID)"), LimitQuery),
    responses((status = 200, body = ConflictList), (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"))
)]
#[get("/v1/trips/{id}/conflicts")]
pub async fn trip_conflicts(
    state: web::Data<AppState>,
    viewer: Viewer,
    path: web::Path<String>,
    query: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = trip_id(&path)?;
    viewer.check(&state.store, &id.to_string()).await?;
    let limit = limit(query.limit)?;
    if state.store.trip_status(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("trip {id}")));
    }
    let after = cursor_keys(query.after.as_deref(), 2)?.map(|k| (k[0].clone(), k[1].clone()));
    let mut rows = state
        .store
        .conflicts_of_trip(id, after, limit.saturating_add(1))
        .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next = more
        .then(|| {
            rows.last()
                .map(|(_, k)| crate::cursor::encode(&[k.0.clone(), k.1.clone()]))
        })
        .flatten();
    let conflicts = rows.into_iter().map(|(c, _)| c).collect();
    Ok(HttpResponse::Ok().json(ConflictList { conflicts, next }))
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Open,
    Cleared,
    All,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// Only the alerts of this trip.
    pub trip: Option<String>,
    /// `open`, `cleared` or `all` (default).
    #[param(value_type = Option<String>)]
    pub status: Option<AlertStatus>,
    /// Only alerts of this kind.
    #[param(value_type = Option<String>)]
    pub kind: Option<AlertKind>,
    /// At most this many (default 100, at most 10000).
    pub limit: Option<i64>,
    /// The `next` of the page before.
    pub after: Option<String>,
}

/// Alerts, newest first.
#[utoipa::path(tag = "alerts", params(AlertQuery), responses((status = 200, body = AlertList)))]
#[get("/v1/alerts")]
pub async fn list_alerts(
    state: web::Data<AppState>,
    viewer: Viewer,
    query: web::Query<AlertQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let filter = AlertFilter {
        trip_id: q.trip.as_deref().map(trip_id).transpose()?,
        open: match q.status {
            Some(AlertStatus::Open) => Some(true),
            Some(AlertStatus::Cleared) => Some(false),
            Some(AlertStatus::All) | None => None,
        },
        kind: q.kind.map(|k| k.as_str().to_owned()),
        parties: viewer.parties(),
        after: cursor_keys(q.after.as_deref(), 2)?.map(|k| (k[0].clone(), k[1].clone())),
        limit: limit(q.limit)?.saturating_add(1),
    };
    let wanted = filter.limit - 1;
    let mut alerts = state.store.alerts(&filter).await?;
    let more = alerts.len() as i64 > wanted;
    alerts.truncate(usize::try_from(wanted).unwrap_or(0));
    let next = more
        .then(|| {
            alerts.last().map(|a| {
                crate::cursor::encode(&[crate::store::ts(a.raised_at), a.alert_id.to_string()])
            })
        })
        .flatten();
    Ok(HttpResponse::Ok().json(AlertList { alerts, next }))
}

/// The most characters of an acknowledgement's comment.
pub const MAX_COMMENT_CHARS: usize = 1_000;

/// An acknowledgement of an alert.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Acknowledgement {
    /// What the control room did or saw; at most 1000 characters.
    pub comment: Option<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Acknowledged {
    pub alert_id: String,
    #[schema(value_type = String)]
    pub trip_id: TripId,
    /// Who acknowledged it, as the audit trail names them.
    pub actor: String,
}

/// Acknowledge an alert, optionally with a comment: recorded, with who did it, in its
/// trip's audit chain. The body may be empty.
#[utoipa::path(
    tag = "alerts",
    params(("id" = String, Path, description = "Alert id")),
    request_body(content = Acknowledgement, description = "Optional: {\"comment\": \"...\"}"),
    responses(
        (status = 200, body = Acknowledged),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Comment too long", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/alerts/{id}/acknowledge")]
pub async fn acknowledge_alert(
    state: web::Data<AppState>,
    viewer: Viewer,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    use crate::problem::{DocumentError, Located};
    let alert_id = path.into_inner();
    if alert_id.is_empty() || alert_id.len() > 128 {
        return Err(ApiError::NotFound(format!(
            "alert {}",
            alert_id.chars().take(128).collect::<String>()
        )));
    }
    let body = super::body::read_limited(&req, payload, 16 * 1024).await?;
    let ack: Acknowledgement = if body.iter().all(u8::is_ascii_whitespace) {
        Acknowledgement::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::Document(DocumentError::malformed(Located::line_column(
                e.line(),
                e.column(),
                e.to_string(),
            )))
        })?
    };
    if let Some(c) = &ack.comment
        && c.chars().count() > MAX_COMMENT_CHARS
    {
        return Err(ApiError::Document(DocumentError::Invalid(vec![
            Located::pointer(
                "/comment",
                format!("longer than {MAX_COMMENT_CHARS} characters"),
            ),
        ])));
    }
    let actor = viewer.actor();
    let not_found = || ApiError::NotFound(format!("alert {alert_id}"));
    let trip_id = state
        .tracking
        .acknowledge_alert(
            &alert_id,
            ack.comment.as_deref(),
            actor.clone(),
            chrono::Utc::now(),
        )
        .await?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(Acknowledged {
        alert_id,
        trip_id,
        actor,
    }))
}
