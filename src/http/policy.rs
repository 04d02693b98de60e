//! Who may call what: ONE table of routes × roles, from which requests are authorized
//! (deny by default: a route without a row is refused for every caller), the OpenAPI
//! document states each operation's security, and the tests enumerate.
//!
//! The table says which roles reach a route; the scope says which of its objects a role
//! then sees there (enforced by `Viewer::check`/`parties`: a trip it may not see answers
//! 404, as one that does not exist).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError, web};
use chrono::Utc;
use secrecy::SecretString;

use super::AppState;
use super::error::ApiError;
use super::viewer::{User, Viewer};
use crate::auth::{Refusal, Role};

/// Who reaches a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a credential.
    Public,
    /// `/metrics`: public when `[http] public_metrics` is on, else these roles.
    Metrics(&'static [Role]),
    /// These roles only.
    Roles(&'static [Role]),
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct RoutePolicy {
    pub method: &'static str,
    /// The route's pattern as registered (`/v1/trips/{id}`).
    pub path: &'static str,
    pub access: Access,
    /// What the roles see there, in words (stated in the OpenAPI document).
    pub scope: &'static str,
}

use Role::{
    Admin, DevicePlatform, Integrator, Officer, Operator, Partner, Shipper, SingleWindow,
    Transporter,
};

const READ_TRIP_STATUS: &[Role] = &[
    Admin,
    Operator,
    Officer,
    SingleWindow,
    Shipper,
    Transporter,
    Partner,
];
const READ_TRIP_EVIDENCE: &[Role] = &[Admin, Operator, Officer, Partner];
const COMMAND: &[Role] = &[Officer, Partner];
const ADMIN: &[Role] = &[Admin];
const FILE: &[Role] = &[Admin, SingleWindow, DevicePlatform, Partner];
const REFERENCE: &[Role] = &[Admin, Operator, Officer, SingleWindow, Integrator, Partner];
const EVERY_ROLE: &[Role] = &[
    Admin,
    Operator,
    Officer,
    SingleWindow,
    Shipper,
    Transporter,
    Integrator,
    DevicePlatform,
    Partner,
];

const SCOPE_TRIPS: &str = "admin and operator: every trip; officer: trips its country is party \
                           to; single window and partner: what it filed (a partner authority \
                           also its country's trips); shipper, transporter: its own trips by \
                           declarant or carrier id";
const SCOPE_EVIDENCE: &str = "admin and operator: every trip; officer and partner: trips its \
                              country is party to (and a partner's filings)";
const SCOPE_CORRIDORS: &str = "admin and operator: every corridor; officer and partner: the \
                               corridors the trips it sees name";
const SCOPE_ZONES: &str = "admin and operator: every zone; officer and partner: the zones of \
                           offices (reference data, as the office registry) and the others \
                           that lie on or by a corridor the trips it sees name";
const SCOPE_CUSTODIAN: &str = "an officer or partner of the authority named in the command, \
                               which must be the trip's custodian (issuing authority to \
                               cancel); trips it may not see are 404";

/// Every route of the API. Keep it in the order of `configure`.
pub const ROUTES: &[RoutePolicy] = &[
    RoutePolicy {
        method: "POST",
        path: "/v1/messages",
        access: Access::Roles(FILE),
        scope: "files as its own: a partner or single window under its id",
    },
    RoutePolicy {
        method: "POST",
        path: "/v1/messages/{format}",
        access: Access::Roles(FILE),
        scope: "files as its own: a partner or single window under its id",
    },
    RoutePolicy {
        method: "POST",
        path: "/v1/seal-events",
        access: Access::Roles(&[Admin, DevicePlatform, Partner]),
        scope: "seal events of the devices it serves",
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/formats",
        access: Access::Roles(EVERY_ROLE),
        scope: "reference data",
    },
    RoutePolicy {
        method: "POST",
        path: "/v1/translate",
        access: Access::Roles(&[Admin, Integrator, SingleWindow, Partner]),
        scope: "nothing stored",
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/trips",
        access: Access::Roles(READ_TRIP_STATUS),
        scope: SCOPE_TRIPS,
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/trips/{id}",
        access: Access::Roles(READ_TRIP_STATUS),
        scope: SCOPE_TRIPS,
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/trips/{id}/events",
        access: Access::Roles(READ_TRIP_EVIDENCE),
        scope: SCOPE_EVIDENCE,
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/trips/{id}/conflicts",
        access: Access::Roles(READ_TRIP_EVIDENCE),
        scope: SCOPE_EVIDENCE,
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/alerts",
        access: Access::Roles(READ_TRIP_EVIDENCE),
        scope: SCOPE_EVIDENCE,
    },
    RoutePolicy {
        method: "POST",
        path: "/v1/alerts/{id}/acknowledge",
        access: Access::Roles(&[Admin, Operator]),
        scope: "every trip's alerts",
    },
    RoutePolicy {
        method: "PUT",
        path: "/v1/devices/{device}/keys/{key_id}",
        access: Access::Roles(ADMIN),
        scope: "every device",
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/devices/{device}/keys",
        access: Access::Roles(ADMIN),
        scope: "every device; never a secret",
    },
    RoutePolicy {
        method: "DELETE",
        path: "/v1/devices/{device}/keys/{key_id}",
        access: Access::Roles(ADMIN),
        scope: "every device",
    },
    RoutePolicy {
        method: "PUT",
        path: "/v1/devices/{device}",
        access: Access::Roles(ADMIN),
        scope: "every device",
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/devices/{device}/refused-events",
        access: Access::Roles(&[Admin, Operator]),
        scope: "every device's refused events",
    },
    RoutePolicy {
        method: "POST",
        path: "/v1/alerts/{id}/justify",
        access: Access::Roles(COMMAND),
        scope: SCOPE_CUSTODIAN,
    },
    RoutePolicy {
        method: "POST",
        path: "/v1/trips/{id}/release",
        access: Access::Roles(COMMAND),
        scope: SCOPE_CUSTODIAN,
    },
    RoutePolicy {
        method: "POST",
        path: "/v1/trips/{id}/handover",
        access: Access::Roles(COMMAND),
        scope: SCOPE_CUSTODIAN,
    },
    RoutePolicy {
        method: "POST",
        path: "/v1/trips/{id}/cancel",
        access: Access::Roles(COMMAND),
        scope: SCOPE_CUSTODIAN,
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/trips/{id}/audit",
        access: Access::Roles(READ_TRIP_EVIDENCE),
        scope: SCOPE_EVIDENCE,
    },
    RoutePolicy {
        method: "PUT",
        path: "/v1/trips/{id}/rules",
        access: Access::Roles(ADMIN),
        scope: "every trip",
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/corridors",
        access: Access::Roles(READ_TRIP_EVIDENCE),
        scope: SCOPE_CORRIDORS,
    },
    RoutePolicy {
        method: "PUT",
        path: "/v1/corridors/{id}",
        access: Access::Roles(ADMIN),
        scope: "every corridor",
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/corridors/{id}",
        access: Access::Roles(READ_TRIP_EVIDENCE),
        scope: SCOPE_CORRIDORS,
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/zones",
        access: Access::Roles(READ_TRIP_EVIDENCE),
        scope: SCOPE_ZONES,
    },
    RoutePolicy {
        method: "PUT",
        path: "/v1/zones/{id}",
        access: Access::Roles(ADMIN),
        scope: "every zone",
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/zones/{id}",
        access: Access::Roles(READ_TRIP_EVIDENCE),
        scope: SCOPE_ZONES,
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/outbox",
        access: Access::Roles(&[Admin, Partner]),
        scope: "admin: every message; partner: the messages sent to it",
    },
    RoutePolicy {
        method: "POST",
        path: "/v1/outbox/{seq}/retry",
        access: Access::Roles(ADMIN),
        scope: "every message",
    },
    RoutePolicy {
        method: "POST",
        path: "/v1/offices/import",
        access: Access::Roles(ADMIN),
        scope: "the registry",
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/offices",
        access: Access::Roles(REFERENCE),
        scope: "reference data",
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/registry/changes",
        access: Access::Roles(ADMIN),
        scope: "the registry",
    },
    RoutePolicy {
        method: "GET",
        path: "/v1/offices/{code}",
        access: Access::Roles(REFERENCE),
        scope: "reference data",
    },
    RoutePolicy {
        method: "PUT",
        path: "/v1/offices/{code}",
        access: Access::Roles(ADMIN),
        scope: "the registry",
    },
    RoutePolicy {
        method: "GET",
        path: "/healthz",
        access: Access::Public,
        scope: "",
    },
    RoutePolicy {
        method: "GET",
        path: "/readyz",
        access: Access::Public,
        scope: "",
    },
    RoutePolicy {
        method: "GET",
        path: "/metrics",
        access: Access::Metrics(&[Admin, Operator]),
        scope: "",
    },
    RoutePolicy {
        method: "GET",
        path: "/openapi.json",
        access: Access::Public,
        scope: "",
    },
];

/// The row of a route.
pub fn find(method: &str, path: &str) -> Option<&'static RoutePolicy> {
    ROUTES
        .iter()
        .find(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
}

/// The roles that reach a route (`None`: public).
pub fn roles(rule: &RoutePolicy, public_metrics: bool) -> Option<&'static [Role]> {
    match rule.access {
        Access::Public => None,
        Access::Metrics(_) if public_metrics => None,
        Access::Metrics(roles) | Access::Roles(roles) => Some(roles),
    }
}

/// The principal of a request's credential: `Ok(None)` when it has none.
async fn authenticate(state: &AppState, req: &ServiceRequest) -> Result<Option<Viewer>, ApiError> {
    let Some(header) = req.headers().get(actix_web::http::header::AUTHORIZATION) else {
        // Mutual TLS: a client certificate names a partner, or nobody (401, never anyone
        // else); a bearer token, when both are presented, decides.
        if let Some(cert) = req.conn_data::<crate::tls::ClientCertificate>() {
            return match crate::partners::by_certificate(&state.settings.partners, cert) {
                Some(p) => {
                    let mut partner = p.clone();
                    partner.presented_certificate = Some(cert.sha256.clone());
                    Ok(Some(Viewer::Partner(Box::new(partner))))
                }
                None => Err(ApiError::Unauthorized(
                    "the client certificate is not any partner's".into(),
                )),
            };
        }
        return Ok(None);
    };
    let bad = || ApiError::Unauthorized("the bearer token is not valid".into());
    let token = header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 512)
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be \"Bearer <token>\"".into()))?;
    let token = SecretString::from(token.to_owned());
    if let Some(p) = crate::partners::by_token(&state.settings.partners, &token) {
        return Ok(Some(Viewer::Partner(Box::new(p.clone()))));
    }
    match state.tokens.authenticate(&token, Utc::now()).await? {
        Ok(user) => Ok(Some(Viewer::User(Box::new(User::new(user))))),
        Err(refusal) => {
            // The reason is for the log; the caller is told only that it is not valid.
            let reason = match refusal {
                Refusal::Malformed => "malformed",
                Refusal::Unknown => "unknown",
                Refusal::Expired => "expired",
                Refusal::Revoked => "revoked",
            };
            tracing::info!(reason, "bearer token refused");
            Err(bad())
        }
    }
}

fn refuse(req: ServiceRequest, error: ApiError) -> ServiceResponse<BoxBody> {
    let response = error.error_response();
    req.into_response(response)
}

/// The middleware: finds the route's row, authenticates, checks the role, and hands the
/// principal to the handler (`Viewer` in the request's extensions).
pub async fn authorize(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(refuse(
            req,
            ApiError::Internal("no application state".into()),
        ));
    };
    let pattern = req.match_pattern();
    let rule = pattern
        .as_deref()
        .and_then(|p| find(req.method().as_str(), p));
    let public_metrics = state.settings.http.public_metrics;
    if let Some(rule) = rule
        && roles(rule, public_metrics).is_none()
    {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let viewer = match authenticate(&state, &req).await {
        Ok(Some(viewer)) => viewer,
        Ok(None) => {
            return Ok(refuse(
                req,
                ApiError::Unauthorized(
                    "a credential is required: Authorization: Bearer <token>".into(),
                ),
            ));
        }
        Err(e) => return Ok(refuse(req, e)),
    };
    let Some(rule) = rule else {
        return Ok(match pattern {
            // No such route: the router answers (404).
            None => next.call(req).await?.map_into_boxed_body(),
            // A route of the table, by another method.
            Some(p) if ROUTES.iter().any(|r| r.path == p) => {
                let what = format!("{} {}", req.method(), req.path());
                refuse(req, ApiError::NotFound(what))
            }
            // A route registered without a row: deny by default.
            Some(_) => refuse(
                req,
                ApiError::Forbidden("this route has no access policy: refused to everyone".into()),
            ),
        });
    };
    let allowed = roles(rule, public_metrics).is_some_and(|r| r.contains(&viewer.role()));
    if !allowed {
        let error = ApiError::Forbidden(format!(
            "{} may not {} {}",
            viewer.actor(),
            rule.method,
            rule.path
        ));
        return Ok(refuse(req, error));
    }
    req.extensions_mut().insert(viewer);
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// States each operation's security and roles in the OpenAPI document: the bearer and
/// mutual TLS schemes, and `x-roles` / `x-scope` from the table.
pub fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token (`ects-gateway token create`) or a partner's configured token",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "mutual_tls",
        SecurityScheme::MutualTls {
            description: Some("A partner authority's client certificate".into()),
            deprecated: None,
            extensions: None,
        },
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in [
            ("GET", item.get.as_mut()),
            ("POST", item.post.as_mut()),
            ("PUT", item.put.as_mut()),
            ("DELETE", item.delete.as_mut()),
        ] {
            let Some(op) = op else { continue };
            let Some(rule) = find(method, path) else {
                continue;
            };
            let roles: Vec<&str> = match rule.access {
                Access::Public => vec![],
                Access::Metrics(r) | Access::Roles(r) => r.iter().map(|r| r.as_str()).collect(),
            };
            if rule.access == Access::Public {
                op.security = Some(vec![SecurityRequirement::default()]);
            } else {
                let mut security = vec![
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                    SecurityRequirement::new("mutual_tls", Vec::<String>::new()),
                ];
                if matches!(rule.access, Access::Metrics(_)) {
                    // Public when `[http] public_metrics` is on.
                    security.push(SecurityRequirement::default());
                }
                op.security = Some(security);
            }
            let extensions = op.extensions.get_or_insert_with(Default::default);
            extensions.insert("x-roles".into(), serde_json::json!(roles));
            if !rule.scope.is_empty() {
                extensions.insert("x-scope".into(), serde_json::json!(rule.scope));
            }
        }
    }
}
