//! Corridors and zones: GeoJSON features registered by customs, stored and returned as sent.

use actix_web::{HttpRequest, HttpResponse, get, put, web};
use chrono::Utc;
use ects_core::geo::{Corridor, Zone};
use ects_core::{CorridorId, ZoneId};

use super::AppState;
use super::body::read_limited;
use super::error::ApiError;
use super::viewer::Viewer;
use crate::problem::{DocumentError, Located};

fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::Document(DocumentError::malformed(Located::line_column(
            e.line(),
            e.column(),
            e.to_string(),
        )))
    })
}

fn geo_problem(e: ects_core::geo::GeoError) -> ApiError {
    ApiError::Document(DocumentError::Invalid(vec![Located::pointer(
        e.pointer, e.reason,
    )]))
}

fn stored(created: bool, feature: serde_json::Value) -> HttpResponse {
    if created {
        HttpResponse::Created().json(feature)
    } else {
        HttpResponse::Ok().json(feature)
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CorridorList {
    #[schema(value_type = Vec<Object>)]
    pub corridors: Vec<serde_json::Value>,
    /// The `after` of the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ZoneList {
    #[schema(value_type = Vec<Object>)]
    pub zones: Vec<serde_json::Value>,
    /// The `after` of the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Features per page of `GET /v1/corridors` and `GET /v1/zones`: by default, and at most.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;

/// Paging of the corridor and zone lists.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GeoPageQuery {
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
    /// The `next` of the page before.
    pub after: Option<String>,
}

/// The page `query` asks for: its limit and the id it starts after.
fn page_of(query: &GeoPageQuery) -> Result<(i64, Option<String>), ApiError> {
    let limit = super::trips::limit_within(query.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let after =
        super::trips::cursor_keys(query.after.as_deref(), 1)?.and_then(|k| k.into_iter().next());
    Ok((limit, after))
}

/// The features of a page (one more than `limit` was asked for) and its `next`.
fn paged(
    mut rows: Vec<(String, serde_json::Value)>,
    limit: i64,
) -> (Vec<serde_json::Value>, Option<String>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next = more
        .then(|| {
            rows.last()
                .map(|(id, _)| crate::cursor::encode(std::slice::from_ref(id)))
        })
        .flatten();
    (rows.into_iter().map(|(_, f)| f).collect(), next)
}

/// Register or replace a corridor: a GeoJSON Feature with a LineString and `properties.width_m`.
#[utoipa::path(
    tag = "geometry",
    params(("id" = String, Path, description = "Corridor id")),
    request_body(content = Object, description = "GeoJSON Feature (LineString, properties.width_m)"),
    responses(
        (status = 201, description = "Registered", body = Object),
        (status = 200, description = "Replaced", body = Object),
        (status = 422, description = "Not a valid corridor", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[put("/v1/corridors/{id}")]
pub async fn put_corridor(
    state: web::Data<AppState>,
    viewer: Viewer,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    viewer.operator_only("define corridors")?;
    let id = CorridorId::parse(path.into_inner()).map_err(|e| ApiError::BadParameter {
        name: "id",
        detail: e.to_string(),
    })?;
    let body = read_limited(&req, payload, state.settings.max_body_bytes).await?;
    let feature = parse_json(&body)?;
    let corridor = Corridor::from_geojson(id, &feature).map_err(geo_problem)?;
    let created = state
        .store
        .put_corridor(&corridor, &feature, Utc::now(), &viewer.actor())
        .await?;
    state.tracking.refresh_geography().await?;
    Ok(stored(created, feature))
}

/// A registered corridor, as sent.
#[utoipa::path(tag = "geometry", params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
#[get("/v1/corridors/{id}")]
pub async fn get_corridor(
    state: web::Data<AppState>,
    viewer: Viewer,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    // A partner sees the corridors its trips name; another is answered as one that does
    // not exist.
    if let Some(parties) = viewer.geometry_parties()
        && !state.store.corridor_seen(&path, &parties).await?
    {
        return Err(ApiError::NotFound(format!("corridor {}", path.as_str())));
    }
    let row = state
        .store
        .corridor(&path)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("corridor {}", path.as_str())))?;
    Ok(HttpResponse::Ok().json(row.feature))
}

/// The registered corridors in id order, a page at a time.
#[utoipa::path(
    tag = "geometry",
    params(GeoPageQuery),
    responses(
        (status = 200, body = CorridorList),
        (status = 400, description = "`limit` outside 1..=1000, or `after` not a cursor of this list", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/corridors")]
pub async fn list_corridors(
    state: web::Data<AppState>,
    viewer: Viewer,
    query: web::Query<GeoPageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = page_of(&query)?;
    // A partner lists the corridors its trips name.
    let rows = match viewer.geometry_parties() {
        None => {
            state
                .store
                .corridors_page(after.as_deref(), limit.saturating_add(1))
                .await?
        }
        Some(parties) => {
            state
                .store
                .corridors_page_seen(after.as_deref(), limit.saturating_add(1), &parties)
                .await?
        }
    };
    let (corridors, next) = paged(rows, limit);
    Ok(HttpResponse::Ok().json(CorridorList { corridors, next }))
}

/// Register or replace a zone (at most 10,000 zones, offices' locations included: one more
/// is refused with 422): a Feature with a Polygon (or a Point and `properties.radius_m`)
/// and `properties.kind`.
#[utoipa::path(
    tag = "geometry",
    params(("id" = String, Path, description = "Zone id")),
    request_body(content = Object, description = "GeoJSON Feature (Polygon, or Point with properties.radius_m; properties.kind)"),
    responses(
        (status = 201, description = "Registered", body = Object),
        (status = 200, description = "Replaced", body = Object),
        (status = 422, description = "Not a valid zone", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[put("/v1/zones/{id}")]
pub async fn put_zone(
    state: web::Data<AppState>,
    viewer: Viewer,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    viewer.operator_only("define zones")?;
    let id = ZoneId::parse(path.into_inner()).map_err(|e| ApiError::BadParameter {
        name: "id",
        detail: e.to_string(),
    })?;
    let body = read_limited(&req, payload, state.settings.max_body_bytes).await?;
    let feature = parse_json(&body)?;
    let zone = Zone::from_geojson(id, &feature).map_err(geo_problem)?;
    if let Some(code) = &zone.office_code {
        // The office a zone is linked to is one the registry accepts, as in a declaration.
        let mut found = crate::offices::Findings::default();
        state.offices.check_code(
            code,
            None,
            None,
            Utc::now().date_naive(),
            "/properties/office_code",
            &mut found,
        );
        if !found.problems.is_empty() {
            return Err(ApiError::Document(DocumentError::Invalid(found.problems)));
        }
    }
    let created = state
        .store
        .put_zone(&zone, &feature, Utc::now(), &viewer.actor())
        .await?;
    state.tracking.refresh_geography().await?;
    Ok(stored(created, feature))
}

/// The zones a scoped viewer (an officer, a partner) sees: a zone linked to an office is
/// reference data, as the office registry is; any other (a release place, a rest area, a
/// border post of its own) only when it lies on or by a corridor that trips of its
/// country name (`Viewer::geometry_parties`).
struct ZoneScope {
    geography: std::sync::Arc<ects_core::spatial::Geography>,
    corridors: Vec<std::sync::Arc<ects_core::spatial::CorridorIndex>>,
}

impl ZoneScope {
    /// `None`: the viewer sees every zone.
    async fn of(state: &AppState, viewer: &Viewer) -> Result<Option<Self>, ApiError> {
        let Some(parties) = viewer.geometry_parties() else {
            return Ok(None);
        };
        let ids = state.store.corridor_ids_seen(&parties).await?;
        let mut conn = state
            .store
            .pool()
            .acquire()
            .await
            .map_err(crate::store::StoreError::from)?;
        let geography = state.tracking.geography(&mut conn).await?;
        let corridors = ids
            .iter()
            .filter_map(|id| CorridorId::parse(id.clone()).ok())
            .filter_map(|id| geography.corridor(&id).cloned())
            .collect();
        Ok(Some(Self {
            geography,
            corridors,
        }))
    }

    fn sees(&self, id: &str) -> bool {
        let Ok(id) = ZoneId::parse(id.to_owned()) else {
            return false;
        };
        self.geography
            .zones
            .get(&id)
            .is_some_and(|zone| self.sees_zone(zone))
    }

    fn sees_zone(&self, zone: &Zone) -> bool {
        zone.office_code.is_some() || self.corridors.iter().any(|c| c.reaches(&zone.shape))
    }

    /// The ids of every zone it sees: zones × corridors measured once, on a blocking
    /// thread (10,000 zones by a few hundred corridors is CPU work, not an await).
    async fn visible(self) -> Result<std::collections::HashSet<String>, ApiError> {
        web::block(move || {
            self.geography
                .zones
                .iter()
                .filter(|z| self.sees_zone(z))
                .map(|z| z.id.as_str().to_owned())
                .collect()
        })
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))
    }
}

/// A registered zone, as sent.
#[utoipa::path(tag = "geometry", params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
#[get("/v1/zones/{id}")]
pub async fn get_zone(
    state: web::Data<AppState>,
    viewer: Viewer,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    // A zone the viewer may not see is answered as one that does not exist.
    if let Some(scope) = ZoneScope::of(&state, &viewer).await?
        && !scope.sees(&path)
    {
        return Err(ApiError::NotFound(format!("zone {}", path.as_str())));
    }
    let row = state
        .store
        .zone(&path)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("zone {}", path.as_str())))?;
    Ok(HttpResponse::Ok().json(row.feature))
}

/// The registered zones in id order, a page at a time.
#[utoipa::path(
    tag = "geometry",
    params(GeoPageQuery),
    responses(
        (status = 200, body = ZoneList),
        (status = 400, description = "`limit` outside 1..=1000, or `after` not a cursor of this list", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/zones")]
pub async fn list_zones(
    state: web::Data<AppState>,
    viewer: Viewer,
    query: web::Query<GeoPageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = page_of(&query)?;
    let want = limit.saturating_add(1);
    let rows = match ZoneScope::of(&state, &viewer).await? {
        None => state.store.zones_page(after.as_deref(), want).await?,
        Some(scope) => {
            let visible = scope.visible().await?;
            // Filtered a store page at a time: at most 10,000 zones, so a few pages.
            let mut seen = Vec::new();
            let mut cursor = after.clone();
            loop {
                let page = state.store.zones_page(cursor.as_deref(), 1000).await?;
                let last = page.last().map(|(id, _)| id.clone());
                let full = page.len() == 1000;
                seen.extend(page.into_iter().filter(|(id, _)| visible.contains(id)));
                if seen.len() as i64 >= want || !full {
                    break;
                }
                cursor = last;
            }
            seen.truncate(usize::try_from(want).unwrap_or(usize::MAX));
            seen
        }
    };
    let (zones, next) = paged(rows, limit);
    Ok(HttpResponse::Ok().json(ZoneList { zones, next }))
}
