//! The HTTP API (actix-web). Each module holds its handlers; `configure` registers them
//! all and `ApiDoc` lists them for the OpenAPI document.

mod body;
mod commands;
mod devices;
pub mod error;
mod geo;
mod justify;
mod messages;
mod offices;
mod ops;
mod outbox;
pub mod policy;
mod trips;
pub mod viewer;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use utoipa::OpenApi;

use crate::config::Settings;
use crate::formats::Formats;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::schemas::Schemas;
use crate::store::Store;
use crate::tracking::Tracking;
use error::ApiError;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub formats: Formats,
    pub schemas: Arc<Schemas>,
    pub ingest: Ingest,
    pub tracking: Arc<Tracking>,
    pub metrics: Arc<Metrics>,
    /// The broker link, when AMQP is configured.
    pub broker: Option<crate::amqp::Broker>,
    /// The office registry every format checks against.
    pub offices: crate::offices::Offices,
    /// The API tokens, read on every request.
    pub tokens: crate::auth::Tokens,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ECTS Gateway",
        description = "Customs transit cargo tracking: e-seal events to trip state and alerts, \
                       exchanged with customs systems in their own formats."
    ),
    paths(
        messages::post_message,
        messages::post_message_detect,
        messages::post_seal_events,
        messages::get_formats,
        messages::post_translate,
        trips::get_trip,
        trips::list_trips,
        trips::trip_events,
        trips::trip_conflicts,
        trips::list_alerts,
        trips::acknowledge_alert,
        commands::post_release,
        commands::post_handover,
        commands::post_cancel,
        commands::get_audit,
        commands::put_rules,
        justify::post_justify,
        geo::put_corridor,
        geo::get_corridor,
        geo::list_corridors,
        geo::put_zone,
        geo::get_zone,
        geo::list_zones,
        outbox::list_outbox,
        outbox::retry_outbox,
        offices::list_offices,
        offices::list_registry_changes,
        offices::get_office,
        offices::put_office,
        offices::import_offices,
        devices::put_key,
        devices::list_keys,
        devices::revoke_key,
        devices::put_device,
        devices::refused_events,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi,
    ),
    components(schemas(
        ects_core::TransitDeclaration,
        ects_core::SealEvent,
        ects_core::ReleaseAuthorization,
        ects_core::CustodyHandover,
        ects_core::Cancellation
    ))
)]
pub struct ApiDoc;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _req| {
        ApiError::BadParameter {
            name: "query",
            detail: e.to_string(),
        }
        .into()
    }))
    .app_data(web::PathConfig::default().error_handler(|e, _req| {
        ApiError::BadParameter {
            name: "path",
            detail: e.to_string(),
        }
        .into()
    }))
    .service(messages::post_message_detect)
    .service(messages::post_message)
    .service(messages::post_seal_events)
    .service(messages::get_formats)
    .service(messages::post_translate)
    .service(trips::list_trips)
    .service(trips::get_trip)
    .service(trips::trip_events)
    .service(trips::trip_conflicts)
    .service(trips::list_alerts)
    .service(trips::acknowledge_alert)
    .service(commands::post_release)
    .service(commands::post_handover)
    .service(commands::post_cancel)
    .service(commands::get_audit)
    .service(commands::put_rules)
    .service(justify::post_justify)
    .service(geo::list_corridors)
    .service(geo::put_corridor)
    .service(geo::get_corridor)
    .service(geo::list_zones)
    .service(geo::put_zone)
    .service(geo::get_zone)
    .service(outbox::list_outbox)
    .service(outbox::retry_outbox)
    .service(offices::import_offices)
    .service(offices::list_offices)
    .service(offices::list_registry_changes)
    .service(offices::get_office)
    .service(offices::put_office)
    .service(devices::put_key)
    .service(devices::list_keys)
    .service(devices::revoke_key)
    .service(devices::put_device)
    .service(devices::refused_events)
    .service(ops::healthz)
    .service(ops::readyz)
    .service(ops::metrics)
    .service(ops::openapi)
    .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    // An unknown route, or a known route with a method it does not take.
    Err(ApiError::NotFound(format!(
        "{} {}",
        req.method(),
        req.path()
    )))
}

/// Answers every request with its request id (`x-request-id`), the one its log lines carry.
pub async fn request_id_header(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(ToString::to_string);
    let mut res = next.call(req).await?;
    if let Some(value) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), value);
    }
    Ok(res)
}

/// Counts, times and logs every request by its route pattern (not its path, to bound
/// the metric labels).
pub async fn record_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let res = next.call(req).await?;
    let status = res.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    if let Some(metrics) = metrics {
        metrics.http(&method, &route, status, seconds);
    }
    // The access log line; it runs inside the request span, so it carries request_id.
    tracing::info!(
        http.method = %method,
        http.route = %route,
        http.status = status,
        elapsed_ms = (seconds * 1000.0).round(),
        "request answered"
    );
    Ok(res)
}

/// The OpenAPI document, with each operation's security and roles from the route table.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    policy::document(&mut doc);
    doc
}
