//! Devices, their keys, and the seal events device authentication refused.

use chrono::{DateTime, Utc};
use ects_core::SealEvent;
use sqlx::{AnyConnection, Row};

use super::{Store, StoreError, parse_ts, ts};

/// A device key as stored: the key material is a public key (Ed25519) or a sealed secret
/// (HMAC), never a secret in clear.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub device_id: String,
    pub key_id: String,
    pub algorithm: String,
    pub key_material: String,
    pub valid_from: DateTime<Utc>,
    pub valid_until: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

fn key_of(row: &sqlx::any::AnyRow) -> Result<StoredKey, StoreError> {
    let opt_ts = |name: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
        row.try_get::<Option<String>, _>(name)?
            .map(|t| parse_ts(&t))
            .transpose()
    };
    Ok(StoredKey {
        device_id: row.try_get("device_id")?,
        key_id: row.try_get("key_id")?,
        algorithm: row.try_get("algorithm")?,
        key_material: row.try_get("key_material")?,
        valid_from: parse_ts(&row.try_get::<String, _>("valid_from")?)?,
        valid_until: opt_ts("valid_until")?,
        revoked_at: opt_ts("revoked_at")?,
        created_at: parse_ts(&row.try_get::<String, _>("created_at")?)?,
        created_by: row.try_get("created_by")?,
    })
}

/// Every key of a device, revoked and expired ones too (a device that ever had a key must
/// sign from then on).
pub async fn keys_of(
    conn: &mut AnyConnection,
    device_id: &str,
) -> Result<Vec<StoredKey>, StoreError> {
    sqlx::query(
        "select device_id, key_id, algorithm, key_material, valid_from, valid_until,
             revoked_at, created_at, created_by
         from device_keys where device_id = $1 order by key_id",
    )
    .bind(device_id)
    .fetch_all(conn)
    .await?
    .iter()
    .map(key_of)
    .collect()
}

/// The platform a device is registered to: `None` for a device not registered,
/// `Some(None)` for one registered to no platform.
pub async fn device_platform(
    conn: &mut AnyConnection,
    device_id: &str,
) -> Result<Option<Option<String>>, StoreError> {
    Ok(
        sqlx::query("select platform from devices where device_id = $1")
            .bind(device_id)
            .fetch_optional(conn)
            .await?
            .map(|r| r.try_get::<Option<String>, _>("platform"))
            .transpose()?,
    )
}

/// What putting a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutKey {
    Created,
    /// The same key was registered already; its validity window is now the one given.
    Updated,
    /// The key id names another key (or a revoked one): a key id is never reused.
    Conflict,
}

/// Registers a key, the device with it (without a platform) if new. `same_material`
/// tells whether a stored key's material is the one given (HMAC secrets are sealed with
/// a fresh nonce each time, so only the caller can compare them).
pub async fn put_key(
    store: &Store,
    key: &StoredKey,
    same_material: impl Fn(&StoredKey) -> bool,
) -> Result<PutKey, StoreError> {
    let mut tx = store.begin_write().await?;
    sqlx::query(
        "insert into devices (device_id, platform, created_at) values ($1, null, $2)
         on conflict (device_id) do nothing",
    )
    .bind(&key.device_id)
    .bind(ts(key.created_at))
    .execute(&mut **tx)
    .await?;
    let existing = sqlx::query(
        "select device_id, key_id, algorithm, key_material, valid_from, valid_until,
             revoked_at, created_at, created_by
         from device_keys where device_id = $1 and key_id = $2",
    )
    .bind(&key.device_id)
    .bind(&key.key_id)
    .fetch_optional(&mut **tx)
    .await?
    .map(|r| key_of(&r))
    .transpose()?;
    let outcome = match existing {
        Some(old)
            if old.algorithm != key.algorithm
                || old.revoked_at.is_some()
                || !same_material(&old) =>
        {
            PutKey::Conflict
        }
        Some(_) => {
            sqlx::query(
                "update device_keys set valid_from = $1, valid_until = $2
                 where device_id = $3 and key_id = $4",
            )
            .bind(ts(key.valid_from))
            .bind(key.valid_until.map(ts))
            .bind(&key.device_id)
            .bind(&key.key_id)
            .execute(&mut **tx)
            .await?;
            PutKey::Updated
        }
        None => {
            sqlx::query(
                "insert into device_keys (device_id, key_id, algorithm, key_material, valid_from,
                     valid_until, revoked_at, created_at, created_by)
                 values ($1, $2, $3, $4, $5, $6, null, $7, $8)",
            )
            .bind(&key.device_id)
            .bind(&key.key_id)
            .bind(&key.algorithm)
            .bind(&key.key_material)
            .bind(ts(key.valid_from))
            .bind(key.valid_until.map(ts))
            .bind(ts(key.created_at))
            .bind(&key.created_by)
            .execute(&mut **tx)
            .await?;
            PutKey::Created
        }
    };
    if outcome == PutKey::Conflict {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(outcome)
}

/// Keys of one device, or of all, in (device, key id) order after the cursor's key.
pub async fn list_keys(
    store: &Store,
    device_id: Option<&str>,
    after: Option<(&str, &str)>,
    limit: i64,
) -> Result<Vec<StoredKey>, StoreError> {
    let (after_device, after_key) = after.unwrap_or(("", ""));
    sqlx::query(
        "select device_id, key_id, algorithm, key_material, valid_from, valid_until,
             revoked_at, created_at, created_by
         from device_keys
         where ($1 = '' or device_id = $1)
           and (device_id > $2 or (device_id = $2 and key_id > $3))
         order by device_id, key_id limit $4",
    )
    .bind(device_id.unwrap_or(""))
    .bind(after_device)
    .bind(after_key)
    .bind(limit)
    .fetch_all(store.pool())
    .await?
    .iter()
    .map(key_of)
    .collect()
}

/// Revokes a key from `now` on. `None`: no such key; `Some(false)`: revoked already.
pub async fn revoke_key(
    store: &Store,
    device_id: &str,
    key_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<bool>, StoreError> {
    let mut tx = store.begin_write().await?;
    let found =
        sqlx::query("select revoked_at from device_keys where device_id = $1 and key_id = $2")
            .bind(device_id)
            .bind(key_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some(row) = found else {
        tx.rollback().await?;
        return Ok(None);
    };
    if row.try_get::<Option<String>, _>("revoked_at")?.is_some() {
        tx.rollback().await?;
        return Ok(Some(false));
    }
    sqlx::query("update device_keys set revoked_at = $1 where device_id = $2 and key_id = $3")
        .bind(ts(now))
        .bind(device_id)
        .bind(key_id)
        .execute(&mut **tx)
        .await?;
    tx.commit().await?;
    Ok(Some(true))
}

/// Registers a device to a platform (or to none), replacing its earlier platform.
pub async fn register_device(
    store: &Store,
    device_id: &str,
    platform: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut tx = store.begin_write().await?;
    sqlx::query(
        "insert into devices (device_id, platform, created_at) values ($1, $2, $3)
         on conflict (device_id) do update set platform = excluded.platform",
    )
    .bind(device_id)
    .bind(platform)
    .bind(ts(now))
    .execute(&mut **tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A refused event, kept as evidence. `false` when the same refusal is stored already.
#[allow(clippy::too_many_arguments)]
pub async fn insert_refusal(
    conn: &mut AnyConnection,
    refusal_id: &str,
    event: &SealEvent,
    reason: &str,
    canonical: &str,
    trip_id: Option<&str>,
    message_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let seq = event.seq.and_then(|s| i64::try_from(s).ok());
    let done = sqlx::query(
        "insert into seal_event_refusals (refusal_id, device_id, seq, key_id, event_time, reason,
             trip_id, message_id, canonical, received_at, geometry_version, rules_version)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, (select version from geometry_version where id = 1),
             (select coalesce(max(version), 0) from trip_rules_versions where trip_id = $7))
         on conflict (refusal_id) do nothing",
    )
    .bind(refusal_id)
    .bind(event.device_id.as_str())
    .bind(seq)
    .bind(event.key_id.as_ref().map(|k| k.as_str()))
    .bind(ts(event.time))
    .bind(reason)
    .bind(trip_id)
    .bind(message_id)
    .bind(canonical)
    .bind(ts(now))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A refused event as kept.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct StoredRefusal {
    pub refusal_id: String,
    pub device_id: String,
    pub reason: String,
    pub trip_id: Option<String>,
    pub message_id: String,
    pub received_at: String,
    /// The event as sent (canonical form).
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

/// The refused events of a device, oldest first (at most `limit`), after the cursor's
/// (received_at, refusal_id).
pub async fn refusals_of(
    store: &Store,
    device_id: &str,
    after: Option<(&str, &str)>,
    limit: i64,
) -> Result<Vec<StoredRefusal>, StoreError> {
    let (after_at, after_id) = after.unwrap_or(("", ""));
    sqlx::query(
        "select refusal_id, device_id, reason, trip_id, message_id, received_at, canonical
         from seal_event_refusals
         where device_id = $1
           and (received_at > $3 or (received_at = $3 and refusal_id > $4))
         order by received_at, refusal_id limit $2",
    )
    .bind(device_id)
    .bind(limit)
    .bind(after_at)
    .bind(after_id)
    .fetch_all(store.pool())
    .await?
    .iter()
    .map(|r| {
        Ok(StoredRefusal {
            refusal_id: r.try_get("refusal_id")?,
            device_id: r.try_get("device_id")?,
            reason: r.try_get("reason")?,
            trip_id: r.try_get("trip_id")?,
            message_id: r.try_get("message_id")?,
            received_at: r.try_get("received_at")?,
            event: serde_json::from_str(&r.try_get::<String, _>("canonical")?)
                .map_err(|e| StoreError::Corrupt(format!("refused event: {e}")))?,
        })
    })
    .collect()
}

/// How a stored event was authenticated (`None`: no such event, or stored before).
pub async fn authentication_of(
    store: &Store,
    device_id: &str,
    seq: i64,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query("select authenticated from seal_events where device_id = $1 and seq = $2")
            .bind(device_id)
            .bind(seq)
            .fetch_optional(store.pool())
            .await?
            .and_then(|r| {
                r.try_get::<Option<String>, _>("authenticated")
                    .ok()
                    .flatten()
            }),
    )
}
