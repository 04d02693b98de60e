//! One-time unlock codes are kept only as hashes (`ects_core::trip::code_hash`). Rows
//! written before that (migration 0020) held them in clear: this converts them once, in
//! one transaction, right after the migrations run.
//!
//! The JSON that carried a code is rewritten with every object that has `trip_id`,
//! `release_id` and a clear `one_time_code` given the code's hash instead: release inputs
//! kept for replay, unlock commands, the engine's trip and its checkpoints, and audit
//! payloads. An audit entry keeps its chained `payload_sha256` and `hash` (the chain, and
//! any head hash published elsewhere, still hold); the hash of its payload as it now reads
//! goes to `redacted_payload_sha256`, which verification checks in its place.

use serde_json::Value;
use sqlx::Row;

use super::{Store, StoreError};

const CONVERSION: &str = "0020_unlock_code_hashes";

/// What the conversion changed, by table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Converted {
    pub trip_commands: usize,
    pub seal_commands: usize,
    pub trips: usize,
    pub checkpoints: usize,
    pub audit_entries: usize,
}

/// Replaces every clear code in `value`; whether one was.
fn hash_codes(value: &mut Value) -> bool {
    match value {
        Value::Object(map) => {
            let mut changed = false;
            let ids = (
                map.get("trip_id").and_then(Value::as_str),
                map.get("release_id").and_then(Value::as_str),
                map.get("one_time_code").and_then(Value::as_str),
            );
            if let (Some(trip), Some(release), Some(code)) = ids
                && !ects_core::trip::code_is_hashed(code)
            {
                let hashed = ects_core::trip::code_hash(trip, release, code);
                map.insert("one_time_code".into(), Value::String(hashed));
                changed = true;
            }
            for v in map.values_mut() {
                changed |= hash_codes(v);
            }
            changed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, v| hash_codes(v) | changed),
        _ => false,
    }
}

/// The text with its clear codes hashed, when it had any. Serialised as the gateway
/// serialises (serde_json, keys in the order read).
fn converted(text: &str) -> Option<String> {
    if !text.contains("one_time_code") {
        return None;
    }
    let mut value: Value = serde_json::from_str(text).ok()?;
    hash_codes(&mut value).then(|| value.to_string())
}

/// Runs the conversion unless it ran already.
pub async fn convert_clear_codes(store: &Store) -> Result<Option<Converted>, StoreError> {
    let mut tx = store.begin_write().await?;
    let done = sqlx::query("select 1 as done from data_conversions where name = $1")
        .bind(CONVERSION)
        .fetch_optional(&mut **tx)
        .await?;
    if done.is_some() {
        tx.rollback().await?;
        return Ok(None);
    }
    let mut counts = Converted::default();
    let like = "%one_time_code%";

    let rows =
        sqlx::query("select trip_id, command_key, input from trip_commands where input like $1")
            .bind(like)
            .fetch_all(&mut **tx)
            .await?;
    for r in rows {
        if let Some(text) = converted(&r.try_get::<String, _>("input")?) {
            sqlx::query(
                "update trip_commands set input = $1 where trip_id = $2 and command_key = $3",
            )
            .bind(text)
            .bind(r.try_get::<String, _>("trip_id")?)
            .bind(r.try_get::<String, _>("command_key")?)
            .execute(&mut **tx)
            .await?;
            counts.trip_commands += 1;
        }
    }

    let rows = sqlx::query("select command_id, body from seal_commands where body like $1")
        .bind(like)
        .fetch_all(&mut **tx)
        .await?;
    for r in rows {
        if let Some(text) = converted(&r.try_get::<String, _>("body")?) {
            sqlx::query("update seal_commands set body = $1 where command_id = $2")
                .bind(text)
                .bind(r.try_get::<String, _>("command_id")?)
                .execute(&mut **tx)
                .await?;
            counts.seal_commands += 1;
        }
    }

    let rows = sqlx::query("select trip_id, engine from trips where engine like $1")
        .bind(like)
        .fetch_all(&mut **tx)
        .await?;
    for r in rows {
        if let Some(text) = converted(&r.try_get::<String, _>("engine")?) {
            sqlx::query("update trips set engine = $1 where trip_id = $2")
                .bind(text)
                .bind(r.try_get::<String, _>("trip_id")?)
                .execute(&mut **tx)
                .await?;
            counts.trips += 1;
        }
    }

    let rows =
        sqlx::query("select trip_id, taken_at, engine from trip_checkpoints where engine like $1")
            .bind(like)
            .fetch_all(&mut **tx)
            .await?;
    for r in rows {
        if let Some(text) = converted(&r.try_get::<String, _>("engine")?) {
            sqlx::query(
                "update trip_checkpoints set engine = $1 where trip_id = $2 and taken_at = $3",
            )
            .bind(text)
            .bind(r.try_get::<String, _>("trip_id")?)
            .bind(r.try_get::<String, _>("taken_at")?)
            .execute(&mut **tx)
            .await?;
            counts.checkpoints += 1;
        }
    }

    let rows = sqlx::query("select trip_id, seq, payload from audit_log where payload like $1")
        .bind(like)
        .fetch_all(&mut **tx)
        .await?;
    for r in rows {
        if let Some(text) = converted(&r.try_get::<String, _>("payload")?) {
            let sha = ects_core::audit::sha256_hex(text.as_bytes());
            sqlx::query(
                "update audit_log set payload = $1, redacted_payload_sha256 = $2
                 where trip_id = $3 and seq = $4",
            )
            .bind(text)
            .bind(sha)
            .bind(r.try_get::<String, _>("trip_id")?)
            .bind(r.try_get::<i64, _>("seq")?)
            .execute(&mut **tx)
            .await?;
            counts.audit_entries += 1;
        }
    }

    // Two instances starting at once may both convert (the conversion is idempotent);
    // the second record is then already there.
    sqlx::query(
        "insert into data_conversions (name, done_at) values ($1, $2)
         on conflict (name) do nothing",
    )
    .bind(CONVERSION)
    .bind(super::ts(chrono::Utc::now()))
    .execute(&mut **tx)
    .await?;
    tx.commit().await?;
    tracing::info!(
        trip_commands = counts.trip_commands,
        seal_commands = counts.seal_commands,
        trips = counts.trips,
        checkpoints = counts.checkpoints,
        audit_entries = counts.audit_entries,
        "stored one-time codes replaced by their hashes"
    );
    Ok(Some(counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_codes_are_hashed_once_and_withheld_ones_left() {
        let text = r#"{"input":"release","body":{"release_id":"R1","trip_id":"T","one_time_code":"739201"}}"#;
        let out = converted(text).unwrap();
        assert!(!out.contains("739201"), "{out}");
        assert!(out.contains(&ects_core::trip::code_hash("T", "R1", "739201")));
        assert_eq!(converted(&out), None);
        let withheld =
            r#"{"release":{"release_id":"R1","trip_id":"T","one_time_code":"withheld"}}"#;
        assert_eq!(converted(withheld), None);
    }
}
