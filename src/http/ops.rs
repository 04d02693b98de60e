//! Liveness, readiness, metrics and the OpenAPI document.

use actix_web::{HttpResponse, get, web};
use serde::Serialize;

use super::AppState;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` when every dependency answers.
    pub status: &'static str,
    /// `ok`, or what went wrong.
    pub database: String,
    /// `ok`, `disabled` while no broker is configured, or what is wrong.
    pub broker: String,
}

/// The process is up.
#[utoipa::path(tag = "operations", responses((status = 200, body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// The database (and, when configured, the broker) can be reached.
#[utoipa::path(tag = "operations", responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let database =
        match tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => format!("unreachable: {}", crate::telemetry::error_chain(&e)),
            Err(_) => "unreachable: no answer within 2 s".to_owned(),
        };
    let broker = match &state.broker {
        Some(b) => b.status(),
        None => "disabled".to_owned(),
    };
    let ready = database == "ok" && (broker == "ok" || broker == "disabled");
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        database,
        broker,
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(tag = "operations", responses((status = 200, content_type = "text/plain", body = String)))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// This document: OpenAPI 3.1, generated from the code.
#[utoipa::path(tag = "operations", responses((status = 200, content_type = "application/json", body = Object)))]
#[get("/openapi.json")]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(super::openapi_document())
}
