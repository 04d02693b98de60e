//! Devices over HTTP (admin): their keys, their platform, and the events device
//! authentication refused. A secret is taken, never given back.

use actix_web::{HttpRequest, HttpResponse, delete, get, put, web};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ects_core::{DeviceId, KeyId};
use serde::Deserialize;

use super::AppState;
use super::body::read_limited;
use super::error::ApiError;
use super::viewer::Viewer;
use crate::devices::{AddKeyError, Algorithm, KeyInfo, KeyMaterial, NewKey};
use crate::problem::{DocumentError, Located};
use crate::store::devices::PutKey;

/// Largest body of a key or device registration, in bytes.
const MAX_BODY_BYTES: usize = 4 * 1024;
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;

fn invalid(pointer: &str, reason: impl Into<String>) -> ApiError {
    ApiError::Document(DocumentError::Invalid(vec![Located::pointer(
        pointer,
        reason.into(),
    )]))
}

fn bad(name: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::BadParameter {
        name,
        detail: detail.into(),
    }
}

fn device_of(text: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(text).map_err(|e| bad("device", e.to_string()))
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let pointer = format!(
            "/{}",
            e.path()
                .iter()
                .map(|s| s.to_string())
                .filter(|s| s != ".")
                .collect::<Vec<_>>()
                .join("/")
        );
        let pointer = if pointer == "/" {
            String::new()
        } else {
            pointer
        };
        invalid(&pointer, e.inner().to_string())
    })
}

/// A device key to register. Ed25519: `public_key`; HMAC-SHA256: `secret`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub algorithm: Algorithm,
    /// The Ed25519 public key, base64 (32 bytes).
    #[serde(default)]
    pub public_key: Option<String>,
    /// The HMAC-SHA256 secret, base64 (16 to 64 bytes). Stored sealed; never shown.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub secret: Option<secrecy::SecretString>,
    /// Default: now.
    #[serde(default)]
    pub valid_from: Option<DateTime<Utc>>,
    #[serde(default)]
    pub valid_until: Option<DateTime<Utc>>,
}

/// Registers a key of a device (the device too, if new), or sets the validity window of
/// the same key registered already. A key id names one key for good: other material under
/// it is 409. Once a device has a key, its unsigned events are refused.
#[utoipa::path(
    tag = "devices",
    params(("device" = String, Path), ("key_id" = String, Path)),
    request_body(content = KeyRequest),
    responses(
        (status = 201, body = KeyInfo), (status = 200, body = KeyInfo),
        (status = 403, description = "Not the operator", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key id names another key", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 413, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 422, body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[put("/v1/devices/{device}/keys/{key_id}")]
pub async fn put_key(
    state: web::Data<AppState>,
    viewer: Viewer,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    viewer.operator_only("register device keys")?;
    let (device, key_id) = path.into_inner();
    let device = device_of(&device)?;
    let key_id = KeyId::parse(key_id).map_err(|e| bad("key_id", e.to_string()))?;
    let body = read_limited(&req, payload, MAX_BODY_BYTES).await?;
    let request: KeyRequest = json_body(&body)?;
    let material = match (request.algorithm, request.public_key, request.secret) {
        (Algorithm::Ed25519, Some(key), None) => KeyMaterial::Ed25519Public(key),
        (Algorithm::HmacSha256, None, Some(secret)) => {
            use secrecy::ExposeSecret;
            let text = secret.expose_secret();
            if text.len() > 128 {
                return Err(invalid("/secret", "longer than 128 characters"));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| invalid("/secret", "not base64 (RFC 4648, with padding)"))?;
            KeyMaterial::HmacSecret(secrecy::SecretBox::new(Box::new(bytes)))
        }
        (Algorithm::Ed25519, _, _) => {
            return Err(invalid(
                "/public_key",
                "an ed25519 key has public_key (base64) and no secret",
            ));
        }
        (Algorithm::HmacSha256, _, _) => {
            return Err(invalid(
                "/secret",
                "an hmac-sha256 key has secret (base64) and no public_key",
            ));
        }
    };
    let new = NewKey {
        device_id: device,
        key_id: Some(key_id),
        material,
        valid_from: request.valid_from,
        valid_until: request.valid_until,
        created_by: viewer.actor(),
    };
    let (outcome, info) =
        crate::devices::add_key(&state.store, &state.settings.devices, new, Utc::now())
            .await
            .map_err(|e| match e {
                AddKeyError::Invalid { field, reason } => invalid(&format!("/{field}"), reason),
                AddKeyError::Conflict(k) => ApiError::Conflict(Box::new(Located::pointer(
                    "",
                    AddKeyError::Conflict(k).to_string(),
                ))),
                AddKeyError::Store(s) => s.into(),
                AddKeyError::SecretKey(s) => ApiError::Internal(Box::new(s)),
            })?;
    tracing::info!(device = %info.device_id, key_id = %info.key_id, ?outcome, "device key put");
    let mut response = if outcome == PutKey::Created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(info))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// 1 to 1000 (default 100).
    pub limit: Option<i64>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

fn limit_of(limit: Option<i64>) -> Result<i64, ApiError> {
    super::trips::limit_within(limit, DEFAULT_LIMIT, MAX_LIMIT)
}

/// A device's keys (revoked and expired ones too), without any secret.
#[utoipa::path(
    tag = "devices",
    params(("device" = String, Path), ListQuery),
    responses((status = 200, body = KeyList), (status = 403, body = crate::problem::Problem, content_type = "application/problem+json"))
)]
#[get("/v1/devices/{device}/keys")]
pub async fn list_keys(
    state: web::Data<AppState>,
    viewer: Viewer,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    viewer.operator_only("read device keys")?;
    let device = device_of(&path)?;
    let limit = limit_of(query.limit)?;
    let after = match &query.after {
        Some(c) => Some(crate::cursor::decode(c, 2).map_err(|e| bad("after", e))?),
        None => None,
    };
    let keys = crate::store::devices::list_keys(
        &state.store,
        Some(device.as_str()),
        after.as_ref().map(|a| (a[0].as_str(), a[1].as_str())),
        limit + 1,
    )
    .await?;
    let now = Utc::now();
    let more = keys.len() as i64 > limit;
    let keys: Vec<KeyInfo> = keys
        .iter()
        .take(limit as usize)
        .map(|k| KeyInfo::of(k, now))
        .collect();
    let next = more
        .then(|| keys.last())
        .flatten()
        .map(|k| crate::cursor::encode(&[k.device_id.clone(), k.key_id.clone()]));
    Ok(HttpResponse::Ok().json(KeyList { keys, next }))
}

/// Revokes a key from now on: nothing it signs is taken after this, whatever time the
/// event claims. The device still counts as keyed (its unsigned events stay refused).
#[utoipa::path(
    tag = "devices",
    params(("device" = String, Path), ("key_id" = String, Path)),
    responses(
        (status = 200, body = KeyInfo),
        (status = 403, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/v1/devices/{device}/keys/{key_id}")]
pub async fn revoke_key(
    state: web::Data<AppState>,
    viewer: Viewer,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    viewer.operator_only("revoke device keys")?;
    let (device, key_id) = path.into_inner();
    let device = device_of(&device)?;
    let key_id = KeyId::parse(key_id).map_err(|e| bad("key_id", e.to_string()))?;
    let now = Utc::now();
    let done =
        crate::store::devices::revoke_key(&state.store, device.as_str(), key_id.as_str(), now)
            .await?;
    if done.is_none() {
        return Err(ApiError::NotFound(format!(
            "key {key_id} of device {device}"
        )));
    }
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(crate::store::StoreError::from)?;
    let key = crate::store::devices::keys_of(&mut conn, device.as_str())
        .await?
        .into_iter()
        .find(|k| k.key_id == key_id.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("key {key_id} of device {device}")))?;
    tracing::info!(device = %device, key_id = %key_id, "device key revoked");
    Ok(HttpResponse::Ok().json(KeyInfo::of(&key, now)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    /// The device platform that may post this device's events (a device-platform
    /// principal of that name); null: none.
    pub platform: Option<String>,
}

/// Registers a device to a device platform (or to none).
#[utoipa::path(
    tag = "devices",
    params(("device" = String, Path)),
    request_body(content = DeviceRequest),
    responses((status = 200), (status = 403, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 422, body = crate::problem::Problem, content_type = "application/problem+json"))
)]
#[put("/v1/devices/{device}")]
pub async fn put_device(
    state: web::Data<AppState>,
    viewer: Viewer,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    viewer.operator_only("register devices")?;
    let device = device_of(&path)?;
    let body = read_limited(&req, payload, MAX_BODY_BYTES).await?;
    let request: DeviceRequest = json_body(&body)?;
    if let Some(p) = &request.platform {
        crate::devices::check_platform_name(p).map_err(|e| invalid("/platform", e))?;
    }
    crate::store::devices::register_device(
        &state.store,
        device.as_str(),
        request.platform.as_deref(),
        Utc::now(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "device_id": device.as_str(),
        "platform": request.platform,
    })))
}

/// The events of a device that device authentication refused, each with its reason,
/// oldest first: the evidence of `device_auth_failure`.
#[utoipa::path(
    tag = "devices",
    params(("device" = String, Path), ListQuery),
    responses((status = 200), (status = 403, body = crate::problem::Problem, content_type = "application/problem+json"))
)]
#[get("/v1/devices/{device}/refused-events")]
pub async fn refused_events(
    state: web::Data<AppState>,
    _viewer: Viewer,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let device = device_of(&path)?;
    let limit = limit_of(query.limit)?;
    let after = match &query.after {
        Some(c) => Some(crate::cursor::decode(c, 2).map_err(|e| bad("after", e))?),
        None => None,
    };
    let mut events = crate::store::devices::refusals_of(
        &state.store,
        device.as_str(),
        after.as_ref().map(|a| (a[0].as_str(), a[1].as_str())),
        limit + 1,
    )
    .await?;
    let more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    let next = more
        .then(|| events.last())
        .flatten()
        .map(|r| crate::cursor::encode(&[r.received_at.clone(), r.refusal_id.clone()]));
    Ok(HttpResponse::Ok().json(serde_json::json!({ "events": events, "next": next })))
}
