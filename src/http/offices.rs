//! The office registry over HTTP: list, read, register one, import many.

use actix_web::{HttpRequest, HttpResponse, get, post, put, web};
use chrono::Utc;
use ects_core::OfficeCode;
use serde::Deserialize;

use super::AppState;
use super::body::read_limited;
use super::error::ApiError;
use super::viewer::Viewer;
use crate::offices::{self, Office, OfficeRole};
use crate::problem::{DocumentError, Located};
use crate::store::{ImportCounts, RegistryChange};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct OfficeQuery {
    /// ISO 3166-1 alpha-2 country.
    pub country: Option<String>,
    /// `departure`, `transit`, `destination` or `border_post`.
    pub role: Option<String>,
    /// Offices per page, 1 to 1000 (default 100).
    pub limit: Option<i64>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OfficeList {
    pub offices: Vec<Office>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OfficeImported {
    pub created: usize,
    pub replaced: usize,
    /// How many offices the registry holds now.
    pub total: usize,
}

fn bad(name: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::BadParameter {
        name,
        detail: detail.into(),
    }
}

fn invalid(problems: Vec<Located>) -> ApiError {
    ApiError::Document(DocumentError::Invalid(problems))
}

fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    offices::json_body(body).map_err(ApiError::Document)
}

/// The registry the formats check against, read again after a change.
async fn reload(state: &AppState) -> Result<usize, ApiError> {
    // An office's location is a zone: re-indexed here, not in the next write.
    state.tracking.refresh_geography().await?;
    let all = state.store.all_offices().await?;
    let n = all.len();
    state.offices.replace(all);
    Ok(n)
}

/// Offices in code order, by country and role, a page at a time.
#[utoipa::path(tag = "offices", params(OfficeQuery), responses((status = 200, body = OfficeList), (status = 400, body = crate::problem::Problem, content_type = "application/problem+json")))]
#[get("/v1/offices")]
pub async fn list_offices(
    state: web::Data<AppState>,
    q: web::Query<OfficeQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| bad("limit", format!("{n} is outside 1..={MAX_LIMIT}")))?,
    };
    let country = match q.country.as_deref() {
        Some(c) if !offices::is_iso_country(c) => {
            return Err(bad(
                "country",
                format!("{c:?} is not an ISO 3166-1 alpha-2 country code"),
            ));
        }
        c => c,
    };
    let role = match q.role.as_deref() {
        None => None,
        Some(r) => Some(
            serde_json::from_value::<OfficeRole>(serde_json::Value::String(r.to_owned())).map_err(
                |_| {
                    bad(
                        "role",
                        format!("{r:?}: roles are departure, transit, destination, border_post"),
                    )
                },
            )?,
        ),
    };
    // The opaque cursor of every list: the last code shown.
    let after = match super::trips::cursor_keys(q.after.as_deref(), 1)? {
        None => None,
        Some(keys) => Some(
            keys.first()
                .and_then(|code| OfficeCode::parse(code).ok())
                .ok_or_else(|| bad("after", "not a cursor of this list"))?
                .as_str()
                .to_owned(),
        ),
    };
    let mut page = state
        .store
        .offices_page(country, role, after.as_deref(), limit + 1)
        .await?;
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last()
            .map(|o| crate::cursor::encode(&[o.code.as_str().to_owned()]))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(OfficeList {
        offices: page,
        next,
    }))
}

/// One office, with the zones registered for it.
#[utoipa::path(tag = "offices", params(("code" = String, Path)), responses((status = 200, body = Office), (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
#[get("/v1/offices/{code}")]
pub async fn get_office(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let code = OfficeCode::parse(path.as_str()).map_err(|e| bad("code", e.to_string()))?;
    let office = state
        .store
        .office(code.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("office {code}")))?;
    let zones = state.store.zones_of_office(code.as_str()).await?;
    let mut body = serde_json::to_value(&office).unwrap_or_default();
    body["zones"] = serde_json::json!(zones);
    Ok(HttpResponse::Ok().json(body))
}

/// Registers or replaces one office. A location makes its zone, `office:<code>`.
#[utoipa::path(
    tag = "offices",
    params(("code" = String, Path)),
    request_body(content = Office, description = "An office; `code` may be left out (the path's)"),
    responses(
        (status = 201, body = Office), (status = 200, body = Office),
        (status = 422, description = "Not a valid office", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[put("/v1/offices/{code}")]
pub async fn put_office(
    state: web::Data<AppState>,
    viewer: Viewer,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    viewer.operator_only("register offices")?;
    let code = OfficeCode::parse(path.as_str()).map_err(|e| bad("code", e.to_string()))?;
    let body = read_limited(&req, payload, state.settings.max_body_bytes).await?;
    let mut value = parse_json(&body)?;
    match value.get("code") {
        None => {
            if let Some(map) = value.as_object_mut() {
                map.insert("code".into(), serde_json::json!(code.as_str()));
            }
        }
        Some(c) if c.as_str() == Some(code.as_str()) => {}
        Some(_) => {
            return Err(invalid(vec![Located::pointer(
                "/code",
                format!("differs from the code in the path, {code}"),
            )]));
        }
    }
    let office = Office::from_json(&value, "").map_err(invalid)?;
    let created = state
        .store
        .put_office(&office, Utc::now(), &viewer.actor())
        .await?;
    reload(&state).await?;
    let mut response = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(office))
}

/// Registers or replaces many offices at once, all or none: a JSON array of offices (or
/// `{"offices": [...]}`), or CSV (`Content-Type: text/csv`, the columns of
/// `mappings/offices/*.csv`).
#[utoipa::path(
    tag = "offices",
    request_body(content = String, description = "JSON list of offices, or CSV with a header line"),
    responses(
        (status = 200, body = OfficeImported),
        (status = 422, description = "An office is not valid (each with its pointer or line)", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/offices/import")]
pub async fn import_offices(
    state: web::Data<AppState>,
    viewer: Viewer,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    viewer.operator_only("import offices")?;
    let body = read_limited(&req, payload, state.settings.max_body_bytes).await?;
    let csv = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv"));
    let list = offices::parse_import(&body, csv)?;
    let counts = state
        .store
        .import_offices(&list, Utc::now(), &viewer.actor())
        .await?;
    let total = reload(&state).await?;
    Ok(HttpResponse::Ok().json(imported(counts, total)))
}

fn imported(counts: ImportCounts, total: usize) -> OfficeImported {
    OfficeImported {
        created: counts.created,
        replaced: counts.replaced,
        total,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ChangeQuery {
    /// `office`, `zone` or `corridor`.
    pub subject: Option<String>,
    /// The office code, zone id or corridor id.
    pub id: Option<String>,
    /// Changes per page, 1 to 1000 (default 100).
    pub limit: Option<i64>,
    /// The `next` cursor of the previous page (a change's `seq`).
    pub after: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ChangeList {
    pub changes: Vec<RegistryChange>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

/// Who changed the office registry and the geometry, and when: every office, zone and
/// corridor written (by the operator, a partner, `ects-gateway offices import` or the
/// shipped data at start), oldest first, with what was stored. Operator only.
#[utoipa::path(tag = "offices", params(ChangeQuery), responses((status = 200, body = ChangeList), (status = 400, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 403, body = crate::problem::Problem, content_type = "application/problem+json")))]
#[get("/v1/registry/changes")]
pub async fn list_registry_changes(
    state: web::Data<AppState>,
    viewer: Viewer,
    q: web::Query<ChangeQuery>,
) -> Result<HttpResponse, ApiError> {
    viewer.operator_only("read the registry's changes")?;
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| bad("limit", format!("{n} is outside 1..={MAX_LIMIT}")))?,
    };
    let subject = match q.subject.as_deref() {
        None => None,
        Some(s @ ("office" | "zone" | "corridor")) => Some(s),
        Some(s) => {
            return Err(bad(
                "subject",
                format!("{s:?}: subjects are office, zone, corridor"),
            ));
        }
    };
    let id = match q.id.as_deref() {
        Some(id) if id.is_empty() || id.len() > 64 => {
            return Err(bad("id", "1 to 64 characters"));
        }
        id => id,
    };
    let after = match q.after {
        Some(a) if a < 0 => return Err(bad("after", format!("{a} is negative"))),
        a => a.unwrap_or(0),
    };
    let mut changes = state
        .store
        .registry_changes(subject, id, after, limit + 1)
        .await?;
    let next = if changes.len() > limit {
        changes.truncate(limit);
        changes.last().map(|c| c.seq)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(ChangeList { changes, next }))
}
