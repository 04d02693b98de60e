//! Who is asking. A partner presents its API token (`Authorization: Bearer ...`) and sees
//! only the trips its sharing rules allow; a request without a token is the operator's,
//! who sees everything (until people's roles and mutual TLS land, the operator's network
//! is what guards that door).

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpRequest, web};

use super::AppState;
use super::error::ApiError;
use crate::partners::{self, PartnerConfig};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone)]
pub enum Viewer {
    Operator,
    Partner(Box<PartnerConfig>),
}

impl Viewer {
    /// The trip parties this viewer matches; `None`: every trip.
    pub fn parties(&self) -> Option<Vec<String>> {
        match self {
            Viewer::Operator => None,
            Viewer::Partner(p) => Some(p.visible_parties()),
        }
    }

    pub fn partner_id(&self) -> Option<&str> {
        match self {
            Viewer::Operator => None,
            Viewer::Partner(p) => Some(&p.id),
        }
    }

    /// Who made a change, as the registry's record of changes names it: `operator`, or
    /// `partner:<id>`.
    pub fn actor(&self) -> String {
        match self {
            Viewer::Operator => "operator".into(),
            Viewer::Partner(p) => format!("partner:{}", p.id),
        }
    }

    /// Only the operator may do this (geography, thresholds, delivery retries): partners
    /// act through their own systems and the messages they send.
    pub fn operator_only(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Viewer::Operator => Ok(()),
            Viewer::Partner(p) => Err(ApiError::Forbidden(format!(
                "partner {} may not {what}: that is the operator's",
                p.id
            ))),
        }
    }

    /// Whether this viewer may see the trip.
    pub async fn sees(&self, store: &Store, trip_id: &str) -> Result<bool, StoreError> {
        match self.parties() {
            None => Ok(true),
            Some(parties) => crate::store::outbox::trip_has_party(store, trip_id, &parties).await,
        }
    }

    /// A trip this viewer may not see is answered as one that does not exist.
    pub async fn check(&self, store: &Store, trip_id: &str) -> Result<(), ApiError> {
        if self.sees(store, trip_id).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("trip {trip_id}")))
        }
    }
}

impl FromRequest for Viewer {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let Some(header) = req.headers().get(actix_web::http::header::AUTHORIZATION) else {
            // Mutual TLS: a client certificate names a partner, or nobody (never the operator).
            if let Some(cert) = req.conn_data::<crate::tls::ClientCertificate>() {
                return ready(by_certificate(req, cert));
            }
            return ready(Ok(Viewer::Operator));
        };
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(ApiError::Unauthorized("no state".into())));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        ready(match token {
            None => Err(ApiError::Unauthorized(
                "Authorization must be \"Bearer <partner API token>\"".into(),
            )),
            Some(token) => match partners::by_token(&state.settings.partners, token) {
                Some(p) => Ok(Viewer::Partner(Box::new(p.clone()))),
                None => Err(ApiError::Unauthorized(
                    "the bearer token is not any partner's API token".into(),
                )),
            },
        })
    }
}

/// The partner a verified client certificate names; 401 when it names none.
fn by_certificate(
    req: &HttpRequest,
    cert: &crate::tls::ClientCertificate,
) -> Result<Viewer, ApiError> {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Err(ApiError::Unauthorized("no state".into()));
    };
    match partners::by_certificate(&state.settings.partners, cert) {
        Some(p) => Ok(Viewer::Partner(Box::new(p.clone()))),
        None => Err(ApiError::Unauthorized(
            "the client certificate is not any partner's".into(),
        )),
    }
}
