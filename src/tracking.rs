//! The tracking engine wired to storage: inputs are applied to a trip inside the caller's
//! write transaction, and the trip, its alerts, unlock commands and audit entries are
//! written in that same transaction. Late seal events rebuild the trip by replaying every
//! stored input in event-time order; what changed is stored as effects.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use ects_core::audit::AuditEntry;
use ects_core::geo::{Corridor, Zone};
use ects_core::spatial::Geography;
use ects_core::trip::{
    CommandError, ConflictingEvent, Effect, Input, RefusedEvent, Rules, RulesOverride, Trip,
    reconcile,
};
use ects_core::{
    CorridorId, SealEvent, StatusNotification, TransitDeclaration, TripId, TripStatus, ZoneId,
};
use serde::Serialize;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::partners::{PartnerConfig, kind_name};
use crate::store::outbox::{self, NewOutbox};
use crate::store::{self, Store, StoreError, Tx, ts};

/// Corridors and zones as every trip sees them, reloaded when another request (or another
/// gateway instance) has changed them.
#[derive(Debug)]
pub struct GeographyCache {
    current: RwLock<(i64, Arc<Geography>)>,
    /// Past versions a replay judged inputs with, newest first, at most [`PAST_KEPT`].
    past: std::sync::Mutex<std::collections::VecDeque<(i64, Arc<Geography>)>>,
}

/// Past geographies kept in memory: a replay walks its inputs in time order, so their
/// versions mostly rise and a few suffice.
const PAST_KEPT: usize = 4;

impl Default for GeographyCache {
    fn default() -> Self {
        Self {
            current: RwLock::new((-1, Arc::new(Geography::default()))),
            past: Default::default(),
        }
    }
}

impl GeographyCache {
    /// The geography at a geometry version, from the history (cached, a few versions).
    pub async fn at(
        &self,
        conn: &mut AnyConnection,
        version: i64,
    ) -> Result<Arc<Geography>, StoreError> {
        {
            let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
            if guard.0 == version {
                return Ok(guard.1.clone());
            }
        }
        {
            let past = self.past.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, g)) = past.iter().find(|(v, _)| *v == version) {
                return Ok(g.clone());
            }
        }
        let geography = Arc::new(load_geography(conn, Some(version)).await?);
        let mut past = self.past.lock().unwrap_or_else(|p| p.into_inner());
        past.push_front((version, geography.clone()));
        past.truncate(PAST_KEPT);
        Ok(geography)
    }

    pub async fn get(&self, conn: &mut AnyConnection) -> Result<Arc<Geography>, StoreError> {
        let version: i64 = sqlx::query("select version from geometry_version where id = 1")
            .fetch_one(&mut *conn)
            .await?
            .try_get("version")?;
        {
            let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
            if guard.0 == version {
                return Ok(guard.1.clone());
            }
        }
        let geography = Arc::new(load_geography(conn, None).await?);
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        *guard = (version, geography.clone());
        tracing::info!(
            version,
            corridors = geography.corridor_count(),
            zones = geography.zones.len(),
            "geometry loaded"
        );
        Ok(geography)
    }
}

/// Corridors and zones as they are (`version` `None`), or as they were at a geometry
/// version (from their history).
async fn load_geography(
    conn: &mut AnyConnection,
    version: Option<i64>,
) -> Result<Geography, StoreError> {
    const AT: &str = "select h.feature_id as id, h.feature from geometry_history h
         where h.kind = $1 and h.version = (select max(o.version) from geometry_history o
             where o.kind = h.kind and o.feature_id = h.feature_id and o.version <= $2)";
    let rows = |kind: &'static str, now: &'static str| match version {
        None => sqlx::query(now),
        Some(v) => sqlx::query(AT).bind(kind).bind(v),
    };
    let mut corridors = Vec::new();
    for row in rows(
        "corridor",
        "select corridor_id as id, feature from corridors",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let id: String = row.try_get("id")?;
        let feature: serde_json::Value =
            serde_json::from_str(&row.try_get::<String, _>("feature")?)
                .map_err(|e| StoreError::Corrupt(format!("corridor {id}: {e}")))?;
        let id = CorridorId::parse(id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // Stored features passed the same check when they were registered (their
        // thresholds are brought inside today's ranges where used); one stored before
        // today's geometry limits and over them is left out (and said), not fatal to every
        // write.
        match Corridor::from_stored_geojson(id.clone(), &feature) {
            Ok(c) => corridors.push(c),
            Err(e) => {
                tracing::error!(corridor = %id, error = %e, "a stored corridor is over today's limits: left out; register it again")
            }
        }
    }
    let mut zones = Vec::new();
    for row in rows("zone", "select zone_id as id, feature from zones")
        .fetch_all(&mut *conn)
        .await?
    {
        let id: String = row.try_get("id")?;
        let feature: serde_json::Value =
            serde_json::from_str(&row.try_get::<String, _>("feature")?)
                .map_err(|e| StoreError::Corrupt(format!("zone {id}: {e}")))?;
        let id = ZoneId::parse(id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        match Zone::from_geojson(id.clone(), &feature) {
            Ok(z) => zones.push(z),
            Err(e) => {
                tracing::error!(zone = %id, error = %e, "a stored zone is over today's limits: left out; register it again")
            }
        }
    }
    Ok(Geography::new(corridors, zones))
}

/// The geometry and rules versions an input was received under (`None`: stored before
/// they were kept, judged with today's).
type Judged = (Option<i64>, Option<i64>);

/// A trip's own thresholds at a rules version; `None` when not kept (version 0 of a trip
/// whose rules never changed: its rules now).
async fn trip_rules_version(
    conn: &mut AnyConnection,
    trip_id: &str,
    version: i64,
) -> Result<Option<RulesOverride>, StoreError> {
    let row =
        sqlx::query("select rules from trip_rules_versions where trip_id = $1 and version = $2")
            .bind(trip_id)
            .bind(version)
            .fetch_optional(conn)
            .await?;
    row.map(|r| {
        serde_json::from_str(&r.try_get::<String, _>("rules")?)
            .map_err(|e| StoreError::Corrupt(format!("rules of trip {trip_id}: {e}")))
    })
    .transpose()
}

/// The installation's thresholds (`[rules]` of the configuration) are versioned with the
/// geometry: when a gateway starts with other `[rules]` than the last recorded, they are
/// kept in `geometry_history` (kind `rules`) at a new geometry version, so inputs received
/// from then on are judged with them and a replay judges those before with the ones of
/// then. Returns whether they changed.
pub async fn record_installation_rules(store: &Store, rules: &Rules) -> Result<bool, StoreError> {
    let text = serde_json::to_string(rules).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut tx = store.begin_geometry_write().await?;
    let latest: Option<String> = sqlx::query(
        "select feature from geometry_history where kind = 'rules' and feature_id = $1
         order by version desc limit 1",
    )
    .bind(INSTALLATION_RULES)
    .fetch_optional(&mut **tx)
    .await?
    .map(|r| r.try_get("feature"))
    .transpose()?;
    if latest.as_deref() == Some(text.as_str()) {
        tx.rollback().await?;
        return Ok(false);
    }
    bump_geometry_version(&mut tx, "rules", INSTALLATION_RULES, &text).await?;
    tx.commit().await?;
    tracing::info!(
        first = latest.is_none(),
        "installation rules recorded at a new geometry version"
    );
    Ok(true)
}

/// The `feature_id` of the installation's rules in `geometry_history`.
const INSTALLATION_RULES: &str = "installation";

/// The installation's thresholds at a geometry version: the last recorded at or before it,
/// else the first recorded (inputs from before they were kept), else `None`.
async fn installation_rules_at(
    conn: &mut AnyConnection,
    version: i64,
) -> Result<Option<Rules>, StoreError> {
    let row = sqlx::query(
        "select feature from geometry_history where kind = 'rules' and feature_id = $1
         order by case when version <= $2 then 0 else 1 end,
                  case when version <= $2 then -version else version end
         limit 1",
    )
    .bind(INSTALLATION_RULES)
    .bind(version)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        serde_json::from_str::<Rules>(&r.try_get::<String, _>("feature")?)
            .map(|r| r.clamped())
            .map_err(|e| StoreError::Corrupt(format!("installation rules: {e}")))
    })
    .transpose()
}

/// Marks a corridor or zone as changed, inside the transaction that writes it, and keeps
/// the feature at the new version (a replay judges an input with the geometry of then).
pub async fn bump_geometry_version(
    conn: &mut AnyConnection,
    kind: &str,
    id: &str,
    feature: &str,
) -> Result<(), StoreError> {
    if conn.backend_name() == "PostgreSQL" {
        // Waits for the writes that pinned the version before (`Store::begin_write`).
        sqlx::query("select pg_advisory_xact_lock($1, $2)::text")
            .bind(crate::store::GEOMETRY_LOCK.0)
            .bind(crate::store::GEOMETRY_LOCK.1)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("update geometry_version set version = version + 1 where id = 1")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "insert into geometry_history (kind, feature_id, version, feature)
         values ($1, $2, (select version from geometry_version where id = 1), $3)",
    )
    .bind(kind)
    .bind(id)
    .bind(feature)
    .execute(conn)
    .await?;
    Ok(())
}

/// An audit entry to append: who, what, and the payload (canonical JSON).
pub struct AuditItem {
    pub actor: String,
    pub action: String,
    pub payload: String,
}

impl AuditItem {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        payload: &impl Serialize,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            payload: serde_json::to_string(payload).unwrap_or_default(),
        }
    }
}

fn effect_action(effect: &Effect) -> &'static str {
    match effect {
        Effect::StateChanged { .. } => "effect.state_changed",
        Effect::AlertRaised { .. } => "effect.alert_raised",
        Effect::AlertUpdated { .. } => "effect.alert_updated",
        Effect::AlertCleared { .. } => "effect.alert_cleared",
        Effect::AlertWithdrawn { .. } => "effect.alert_withdrawn",
        Effect::CustodyChanged { .. } => "effect.custody_changed",
        Effect::ReleaseAccepted { .. } => "effect.release_accepted",
        Effect::SealCommand { .. } => "effect.seal_command",
        Effect::Notify { .. } => "effect.notify",
        Effect::SealsAssigned { .. } => "effect.seals_assigned",
    }
}

/// Appends entries to a trip's chain (the trip row is locked, so the chain grows in order).
pub async fn append_audit(
    conn: &mut AnyConnection,
    trip_id: TripId,
    items: Vec<AuditItem>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let last = sqlx::query(
        "select seq, entry_time, actor, action, payload_sha256, prev_hash, hash from audit_log
         where trip_id = $1 order by seq desc limit 1",
    )
    .bind(trip_id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| row_to_entry(&r))
    .transpose()?;
    let mut prev = last;
    for item in items {
        let entry = AuditEntry::next(
            prev.as_ref(),
            now,
            item.actor,
            item.action,
            item.payload.as_bytes(),
        );
        sqlx::query(
            "insert into audit_log (trip_id, seq, entry_time, actor, action, payload, payload_sha256, prev_hash, hash)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(trip_id.to_string())
        .bind(entry.seq as i64)
        .bind(ts(entry.time))
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&item.payload)
        .bind(&entry.payload_sha256)
        .bind(&entry.prev_hash)
        .bind(&entry.hash)
        .execute(&mut *conn)
        .await?;
        prev = Some(entry);
    }
    Ok(())
}

fn row_to_entry(r: &sqlx::any::AnyRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        seq: r.try_get::<i64, _>("seq")? as u64,
        time: store::parse_ts(&r.try_get::<String, _>("entry_time")?)?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        payload_sha256: r.try_get("payload_sha256")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// A page of a trip's audit chain with its payloads, and whether the whole chain
/// verifies.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditTrail {
    pub trip_id: TripId,
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<serde_json::Value>,
    /// `true` when every entry of the whole chain (not only this page) links to the one
    /// before and every payload matches its hash.
    pub verified: bool,
    /// Where the chain is broken, when it is.
    pub problem: Option<String>,
    /// The `after` of the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Entries read at a time when the whole chain is checked.
const VERIFY_CHUNK: i64 = 1_000;

async fn audit_rows(
    store: &Store,
    trip_id: TripId,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
    Ok(sqlx::query(
        "select seq, entry_time, actor, action, payload, payload_sha256, prev_hash, hash,
                redacted_payload_sha256
         from audit_log where trip_id = $1 and seq > $2 order by seq limit $3",
    )
    .bind(trip_id.to_string())
    .bind(after_seq)
    .bind(limit)
    .fetch_all(store.pool())
    .await?)
}

/// Checks a trip's whole chain a chunk at a time, so that a long one is never held in
/// memory at once.
pub async fn verify_trail(
    store: &Store,
    trip_id: TripId,
) -> Result<Result<(), String>, StoreError> {
    let mut prev_hash = ects_core::audit::GENESIS.to_owned();
    let mut after = 0_i64;
    let mut next_seq = 1_u64;
    loop {
        let rows = audit_rows(store, trip_id, after, VERIFY_CHUNK).await?;
        let Some(last) = rows.last() else {
            return Ok(Ok(()));
        };
        after = last.try_get("seq")?;
        let mut entries = Vec::with_capacity(rows.len());
        // The first entry whose payload no longer hashes to what was recorded for it: the
        // chained hash, or for a payload whose one-time code was replaced by its hash
        // (migration 0020), the hash recorded then.
        let mut bad_payload = None;
        for r in &rows {
            let entry = row_to_entry(r)?;
            let payload: String = r.try_get("payload")?;
            let redacted: Option<String> = r.try_get("redacted_payload_sha256")?;
            let expected = redacted.as_deref().unwrap_or(&entry.payload_sha256);
            if bad_payload.is_none() && ects_core::audit::sha256_hex(payload.as_bytes()) != expected
            {
                bad_payload = Some(entry.seq);
            }
            entries.push(entry);
        }
        let chain = ects_core::audit::verify_from(&entries, None, next_seq, &prev_hash);
        match (chain, bad_payload) {
            (Err(e), Some(seq)) if seq < e.seq => {
                return Ok(Err(format!("audit entry {seq}: its payload was changed")));
            }
            (Err(e), _) => return Ok(Err(e.to_string())),
            (Ok(_), Some(seq)) => {
                return Ok(Err(format!("audit entry {seq}: its payload was changed")));
            }
            (Ok(hash), None) => prev_hash = hash,
        }
        next_seq = next_seq.saturating_add(rows.len() as u64);
        if (rows.len() as i64) < VERIFY_CHUNK {
            return Ok(Ok(()));
        }
    }
}

/// Replaces every `one_time_code` in a payload by `"withheld"`; whether it found one.
fn withhold_codes(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            let mut found = false;
            for (key, v) in map.iter_mut() {
                if key == "one_time_code" {
                    *v = serde_json::Value::String("withheld".into());
                    found = true;
                } else {
                    found |= withhold_codes(v);
                }
            }
            found
        }
        serde_json::Value::Array(items) => {
            let mut found = false;
            for v in items {
                found |= withhold_codes(v);
            }
            found
        }
        _ => false,
    }
}

/// A page of a trip's audit chain: up to `limit` entries after sequence `after_seq`.
pub async fn audit_trail(
    store: &Store,
    trip_id: TripId,
    after_seq: i64,
    limit: i64,
) -> Result<AuditTrail, StoreError> {
    let mut rows = audit_rows(store, trip_id, after_seq, limit.saturating_add(1)).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let mut shown = Vec::with_capacity(rows.len());
    let mut last_seq = None;
    for r in &rows {
        let entry = row_to_entry(r)?;
        let payload: String = r.try_get("payload")?;
        let mut value = serde_json::to_value(&entry).unwrap_or_default();
        let mut shown_payload: serde_json::Value =
            serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload.clone()));
        // Even hashed, a short one-time code is found again by trying every code against
        // its hash (the trip and release ids are beside it): the audit API never shows it.
        if withhold_codes(&mut shown_payload) {
            // The payload shown is not the one hashed (`payload_sha256`).
            value["payload_withheld"] = serde_json::Value::Bool(true);
        }
        value["payload"] = shown_payload;
        if r.try_get::<Option<String>, _>("redacted_payload_sha256")?
            .is_some()
        {
            value["redacted"] = serde_json::Value::String(
                "the one-time code in this payload was replaced by its hash (migration 0020); \
                 payload_sha256 is the hash of the payload as first written"
                    .into(),
            );
        }
        shown.push(value);
        last_seq = Some(entry.seq);
    }
    let result = verify_trail(store, trip_id).await?;
    Ok(AuditTrail {
        trip_id,
        entries: shown,
        verified: result.is_ok(),
        problem: result.err(),
        next: if more {
            last_seq.map(|s| crate::cursor::encode(&[s.to_string()]))
        } else {
            None
        },
    })
}

/// Stores what the engine returned: alerts, unlock commands, and notifications for the
/// partners that take them (the outbox); the audit entries are added by the caller with
/// the inputs.
async fn store_effects(
    conn: &mut AnyConnection,
    recipients: &Recipients,
    effects: &[Effect],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let notes: Vec<&StatusNotification> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Notify { notification } => Some(notification.as_ref()),
            _ => None,
        })
        .collect();
    recipients.enqueue(&mut *conn, &notes, now).await?;
    for effect in effects {
        match effect {
            Effect::AlertRaised { alert }
            | Effect::AlertUpdated { alert }
            | Effect::AlertCleared { alert } => {
                store::upsert_alert(&mut *conn, alert, now).await?;
            }
            // A tamper alert is never withdrawn (rebuilds keep it: `keep_tamper_alerts`);
            // should one ever come here, it is kept and said.
            Effect::AlertWithdrawn { alert } if alert.kind.is_tamper() => {
                tracing::error!(alert_id = %alert.alert_id, "a tamper alert was to be withdrawn: kept");
            }
            Effect::AlertWithdrawn { alert } => {
                sqlx::query("update alerts set withdrawn_at = $1 where alert_id = $2")
                    .bind(ts(now))
                    .bind(alert.alert_id.to_string())
                    .execute(&mut *conn)
                    .await?;
                recipients.withdraw(&mut *conn, alert, now).await?;
            }
            Effect::SealCommand { command } => {
                sqlx::query(
                    "insert into seal_commands (command_id, trip_id, seal_id, device_id, body, created_at)
                     values ($1, $2, $3, $4, $5, $6) on conflict (command_id) do nothing",
                )
                .bind(&command.command_id)
                .bind(command.trip_id.to_string())
                .bind(command.seal_id.as_str())
                .bind(command.device_id.as_str())
                // The device channel keeps the code's hash: the clear code is only in
                // the release's answer.
                .bind(serde_json::to_string(&command.code_hashed()).unwrap_or_default())
                .bind(ts(now))
                .execute(&mut *conn)
                .await?;
            }
            Effect::StateChanged { from, to, .. } => {
                tracing::info!(from = from.as_str(), to = to.as_str(), "trip state changed");
            }
            Effect::CustodyChanged { .. }
            | Effect::ReleaseAccepted { .. }
            | Effect::SealsAssigned { .. }
            | Effect::Notify { .. } => {}
        }
    }
    Ok(())
}

/// Who is told of what: the partners, and whether the broker is there to publish to.
#[derive(Debug, Clone, Default)]
pub struct Recipients {
    pub partners: Arc<[PartnerConfig]>,
    pub amqp: bool,
}

impl Recipients {
    /// The channels a partner takes notifications on.
    fn channels(&self, p: &PartnerConfig) -> impl Iterator<Item = &'static str> {
        let amqp = (self.amqp && p.amqp_out).then_some("amqp");
        let http = p.http_push.is_some().then_some("http");
        amqp.into_iter().chain(http)
    }

    /// Writes each notification to the outbox once for every partner and channel that
    /// takes its kind and may see its trip.
    async fn enqueue(
        &self,
        conn: &mut AnyConnection,
        notes: &[&StatusNotification],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if notes.is_empty() || self.partners.iter().all(|p| p.subscribe.is_empty()) {
            return Ok(());
        }
        let mut parties: Option<(TripId, Vec<String>)> = None;
        for note in notes {
            let trip_id = note.trip_id.to_string();
            if parties.as_ref().is_none_or(|(t, _)| *t != note.trip_id) {
                parties = Some((note.trip_id, outbox::trip_parties(conn, &trip_id).await?));
            }
            let trip_parties = parties
                .as_ref()
                .map(|(_, p)| p.as_slice())
                .unwrap_or_default();
            let kind = kind_name(note.kind);
            let canonical = serde_json::to_string(note).unwrap_or_default();
            for partner in self.partners.iter() {
                if !partner.takes(note.kind)
                    || !partner.may_see(trip_parties.iter().map(String::as_str))
                {
                    continue;
                }
                for channel in self.channels(partner) {
                    let key = format!("{}/{channel}/{}", partner.id, note.notification_id);
                    outbox::enqueue(
                        conn,
                        &NewOutbox {
                            message_id: Uuid::new_v5(&OUTBOX_NAMESPACE, key.as_bytes()).to_string(),
                            partner_id: &partner.id,
                            channel,
                            trip_id: trip_id.clone(),
                            declaration_id: note.declaration_id.as_str(),
                            notification_id: &note.notification_id,
                            kind,
                            format: &partner.format,
                            canonical: &canonical,
                        },
                        now,
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

/// Runs the engine's work on one trip, catching a panic there: it is logged and stays that
/// trip's problem (`None`), never the process's nor the other trips'. The engine is not
/// meant to panic (thresholds are range-checked, its arithmetic checked); this is the
/// bulkhead if it ever does.
fn guarded<T>(trip_id: &str, what: &str, work: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(done) => Some(done),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(trip_id, what, panic = %why, "the engine failed on this trip: skipped");
            None
        }
    }
}

/// The audit entry of a seal event (or a conflicting one) taken in; `suffix` `.late` for
/// one that came after later ones.
fn event_audit(input: &Input, suffix: &str, poster: Option<&str>) -> AuditItem {
    // A signed event is the device's by its key; an unsigned one is its poster's (a user,
    // partner or device platform), the device id only claimed in it.
    let unsigned = |device: &str| match poster {
        Some(p) => p.to_owned(),
        None => format!("device:{device}/unsigned"),
    };
    match input {
        Input::ConflictingEvent(c) => AuditItem::new(
            unsigned(c.event.device_id.as_str()),
            format!("input.seal_event.conflicting{suffix}"),
            c,
        ),
        Input::SealEvent(e) => AuditItem::new(
            match &e.key_id {
                Some(key) if e.signature.is_some() => format!("device:{}/key:{key}", e.device_id),
                _ => unsigned(e.device_id.as_str()),
            },
            format!("input.seal_event{suffix}"),
            e,
        ),
        Input::RefusedEvent(r) => AuditItem::new(
            unsigned(r.event.device_id.as_str()),
            format!("input.seal_event.refused{suffix}"),
            r,
        ),
        other => AuditItem::new("engine", format!("input{suffix}"), &*other.codes_hashed()),
    }
}

/// How long a trip whose tick failed for good (the engine panicked on it, or its stored
/// data cannot be read) waits before the ticker looks at it again: the same work fails
/// the same way, and retrying it at every tick would only flood the log. A passing
/// failure (the database busy or unreachable) is retried at the next tick.
pub const FAILED_TICK_RETRY_S: i64 = 3600;

impl Recipients {
    /// Tells each partner and channel that was told of an alert (a notification of it is
    /// queued or sent) that the alert is withdrawn: a replay showed the condition never
    /// held. The notification is an `alert` one carrying the alert with `cleared_at` set to
    /// the withdrawal and `detail` starting with `withdrawn:`.
    async fn withdraw(
        &self,
        conn: &mut AnyConnection,
        alert: &ects_core::Alert,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let trip = alert.trip_id;
        // Every notification of this alert: raised, cleared, and each recurrence
        // (`alert/{id}/raised/{n}`), found by the alert's id kept with each row.
        let rows =
            outbox::told_of_alert(conn, &trip.to_string(), &alert.alert_id.to_string()).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let status: Option<String> = sqlx::query("select status from trips where trip_id = $1")
            .bind(trip.to_string())
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.get(0));
        let Some(status) = status else {
            return Ok(());
        };
        let status: ects_core::TripStatus = serde_json::from_str(&status)
            .map_err(|e| StoreError::Corrupt(format!("trip status: {e}")))?;
        let notification_id = Uuid::new_v5(
            &trip.0,
            format!("alert/{}/withdrawn", alert.alert_id).as_bytes(),
        )
        .to_string();
        let note = StatusNotification {
            notification_id: notification_id.clone(),
            kind: ects_core::NotificationKind::Alert,
            trip_id: trip,
            declaration_id: status.declaration_id.clone(),
            issuing_authority: status.issuing_authority.clone(),
            state: status.state,
            time: now,
            previous_state: None,
            alert: Some(ects_core::Alert {
                cleared_at: Some(now),
                detail: Some(format!(
                    "withdrawn: the trip's inputs, replayed, show no {} at {}",
                    alert.kind.as_str(),
                    alert.raised_at.to_rfc3339()
                )),
                ..alert.clone()
            }),
            release: None,
            handover: None,
            position: alert.position,
            late: false,
        };
        let canonical = serde_json::to_string(&note).unwrap_or_default();
        for (partner, channel, format) in &rows {
            let channel: &'static str = if channel == "amqp" { "amqp" } else { "http" };
            let key = format!("{partner}/{channel}/{notification_id}");
            outbox::enqueue(
                conn,
                &NewOutbox {
                    message_id: Uuid::new_v5(&OUTBOX_NAMESPACE, key.as_bytes()).to_string(),
                    partner_id: partner,
                    channel,
                    trip_id: trip.to_string(),
                    declaration_id: status.declaration_id.as_str(),
                    notification_id: &notification_id,
                    kind: "alert",
                    format,
                    canonical: &canonical,
                },
                now,
            )
            .await?;
        }
        Ok(())
    }
}

/// Namespace of outbox message ids (UUID v5 of partner, channel and notification).
const OUTBOX_NAMESPACE: Uuid = Uuid::from_u128(0x6563_7473_2d6f_7574_626f_782d_6d73_6700);

/// A trip command the engine refused, or a storage failure.
#[derive(Debug, thiserror::Error)]
pub enum CommandFailure {
    #[error("no trip {0}")]
    NoTrip(TripId),
    #[error(transparent)]
    Refused(CommandError),
    #[error("{field}: {reason}")]
    Conflict { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CommandFailure {
    fn from(e: sqlx::Error) -> Self {
        CommandFailure::Store(e.into())
    }
}

/// A command applied inside a transaction: the trip after it, what it caused, and whether
/// it had been applied already (then nothing was written).
#[derive(Debug)]
pub struct Applied {
    pub trip: TripStatus,
    pub effects: Vec<Effect>,
    pub repeated: bool,
    /// Events kept as unmatched that new seals brought to the trip.
    pub events_claimed: usize,
}

/// What a command did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CommandOutcome {
    pub trip: TripStatus,
    /// Unlock commands for the seals, to be delivered by the device platform.
    #[schema(value_type = Vec<Object>)]
    pub commands: Vec<ects_core::trip::SealCommand>,
}

#[derive(Debug)]
pub struct Tracking {
    store: Store,
    rules: Rules,
    geography: GeographyCache,
    recipients: Recipients,
}

impl Tracking {
    pub fn new(store: Store, rules: Rules) -> Self {
        Self {
            store,
            rules,
            geography: GeographyCache::default(),
            recipients: Recipients::default(),
        }
    }

    /// Notifications go to these partners, through the outbox.
    pub fn with_recipients(self, recipients: Recipients) -> Self {
        Self { recipients, ..self }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub async fn geography(&self, conn: &mut AnyConnection) -> Result<Arc<Geography>, StoreError> {
        self.geography.get(conn).await
    }

    /// Re-indexes changed geometry now, on a connection of its own, so that the next write
    /// does not do it inside its transaction (called after a geometry change commits).
    pub async fn refresh_geography(&self) -> Result<(), StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        self.geography.get(&mut conn).await.map(|_| ())
    }

    /// Applies newly stored seal events to one trip. Events no earlier than what the trip
    /// has seen are applied one by one; otherwise the trip is rebuilt from all its stored
    /// inputs (the new events are stored already) and the difference is the effect.
    pub async fn apply_events(
        &self,
        tx: &mut Tx,
        trip_id: &str,
        events: &[&SealEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<Effect>, StoreError> {
        let inputs: Vec<Input> = events
            .iter()
            .map(|e| Input::SealEvent((*e).clone()))
            .collect();
        self.apply_inputs(tx, trip_id, &inputs, now, None).await
    }

    /// [`Tracking::apply_events`] for seal events and conflicting events (stored already).
    /// `poster`: who posted them (the audit actor of an unsigned event), when known.
    pub async fn apply_inputs(
        &self,
        tx: &mut Tx,
        trip_id: &str,
        events: &[Input],
        now: DateTime<Utc>,
        poster: Option<&str>,
    ) -> Result<Vec<Effect>, StoreError> {
        let geo = self.geography(tx).await?;
        let Some((mut trip, version)) = store::load_trip(tx, self.store.backend(), trip_id).await?
        else {
            return Ok(Vec::new());
        };
        // Applied in the order a replay applies them: a batch that lists a later event
        // first must not leave the trip other than its replay would.
        let mut sorted: Vec<&Input> = events.iter().collect();
        sorted.sort_by_cached_key(|i| i.sort_key());
        // Only seal events before the watermark need the replay: a conflicting event never
        // changes the seal's state or the track, so it is applied as it comes (a device
        // flooding variants of an old event must not make the trip replay each time).
        // A trip the engine failed on before is rebuilt from its stored inputs first.
        let marked = rebuild_marker(tx, trip_id).await?;
        let late = marked.is_some()
            || events.iter().any(|e| {
                matches!(e, Input::SealEvent(_))
                    && trip.track.watermark.is_some_and(|w| e.time() < w)
            });
        // Checkpoints at or after the earliest new input no longer hold.
        let earliest = events.iter().map(|e| e.time()).min();
        if let Some(earliest) = earliest {
            drop_checkpoints_from(tx, trip.status.trip_id, earliest).await?;
        }
        let mut audit = Vec::new();
        let effects = if late {
            let before = trip.clone();
            let since = earliest.into_iter().chain(marked).min().unwrap_or(now);
            let rebuilt = match self.rebuild(tx, &trip, since, &geo, now).await {
                Ok(Some(rebuilt)) => rebuilt,
                // The engine failed, or an input of this trip cannot be read: the trip's
                // problem alone. The events are stored; it is rebuilt later.
                Ok(None) | Err(StoreError::Corrupt(_)) => {
                    mark_for_rebuild(tx, trip_id, since, now).await?;
                    return Ok(Vec::new());
                }
                Err(e) => return Err(e),
            };
            clear_rebuild_marker(tx, trip_id).await?;
            trip = rebuilt;
            trip.keep_tamper_alerts(&before);
            for e in events {
                audit.push(event_audit(e, ".late", poster));
            }
            reconcile(&before, &trip, now)
        } else {
            for e in events {
                audit.push(event_audit(e, "", poster));
            }
            let mut effects = Vec::new();
            let applied = guarded(trip_id, "seal events", || {
                for e in &sorted {
                    // Seal events are never refused; only commands are.
                    let fx = trip.apply(e, &geo, &self.rules, now).unwrap_or_default();
                    effects.extend(fx);
                }
            });
            if applied.is_none() {
                // Nothing of the half-applied trip is kept: the events are stored, and the
                // next input or tick rebuilds the trip from its stored inputs.
                mark_for_rebuild(tx, trip_id, earliest.unwrap_or(now), now).await?;
                return Ok(Vec::new());
            }
            maybe_checkpoint(tx, &trip).await?;
            effects
        };
        if !store::update_trip(tx, &trip, version, trip.next_due(&geo, &self.rules)).await? {
            return Err(StoreError::Contention);
        }
        if !trip.track.released_after_cancel.is_empty() {
            release_watched_seals(tx, &trip, now).await?;
        }
        store_effects(tx, &self.recipients, &effects, now).await?;
        audit.extend(
            effects
                .iter()
                .map(|e| AuditItem::new("engine", effect_action(e), &*e.codes_hashed())),
        );
        append_audit(tx, trip.status.trip_id, audit, now).await?;
        Ok(effects)
    }

    /// The trip as its stored inputs make it, in event-time order: from the last
    /// checkpoint before `since` (the earliest input that arrived late), else from the
    /// declaration.
    async fn rebuild(
        &self,
        conn: &mut AnyConnection,
        trip: &Trip,
        since: DateTime<Utc>,
        geo: &Geography,
        now: DateTime<Utc>,
    ) -> Result<Option<Trip>, StoreError> {
        let trip_id = trip.status.trip_id.to_string();
        drop_checkpoints_from(conn, trip.status.trip_id, since).await?;
        let checkpoint = sqlx::query(
            "select taken_at, engine from trip_checkpoints where trip_id = $1
             order by taken_at desc limit 1",
        )
        .bind(&trip_id)
        .fetch_optional(&mut *conn)
        .await?;
        let (after, base): (String, Option<Trip>) = match checkpoint {
            Some(row) => {
                let engine: String = row.try_get("engine")?;
                let base: Trip = serde_json::from_str(&engine).map_err(|e| {
                    StoreError::Corrupt(format!("checkpoint of trip {trip_id}: {e}"))
                })?;
                (row.try_get("taken_at")?, Some(base))
            }
            None => (String::new(), None),
        };
        // Each input with the geometry and rules versions it was received under.
        let mut inputs: Vec<(Input, Judged)> = Vec::new();
        let judged = |row: &sqlx::any::AnyRow| -> Result<Judged, StoreError> {
            Ok((
                row.try_get("geometry_version")?,
                row.try_get("rules_version")?,
            ))
        };
        for row in sqlx::query(
            "select canonical, geometry_version, rules_version from seal_events
             where trip_id = $1 and event_time > $2",
        )
        .bind(&trip_id)
        .bind(&after)
        .fetch_all(&mut *conn)
        .await?
        {
            let event: SealEvent = serde_json::from_str(&row.try_get::<String, _>("canonical")?)
                .map_err(|e| StoreError::Corrupt(format!("seal event of trip {trip_id}: {e}")))?;
            inputs.push((Input::SealEvent(event), judged(&row)?));
        }
        for row in sqlx::query(
            "select canonical, conflicts_with, conflict_id, geometry_version, rules_version
             from seal_event_conflicts where trip_id = $1 and event_time > $2",
        )
        .bind(&trip_id)
        .bind(&after)
        .fetch_all(&mut *conn)
        .await?
        {
            let event: SealEvent = serde_json::from_str(&row.try_get::<String, _>("canonical")?)
                .map_err(|e| StoreError::Corrupt(format!("seal event of trip {trip_id}: {e}")))?;
            let input = Input::ConflictingEvent(ConflictingEvent {
                event,
                conflicts_with: row.try_get("conflicts_with")?,
                conflict_id: row.try_get("conflict_id")?,
            });
            inputs.push((input, judged(&row)?));
        }
        for row in sqlx::query(
            "select canonical, reason, refusal_id, geometry_version, rules_version
             from seal_event_refusals where trip_id = $1 and event_time > $2",
        )
        .bind(&trip_id)
        .bind(&after)
        .fetch_all(&mut *conn)
        .await?
        {
            let event: SealEvent = serde_json::from_str(&row.try_get::<String, _>("canonical")?)
                .map_err(|e| {
                    StoreError::Corrupt(format!("refused event of trip {trip_id}: {e}"))
                })?;
            let input = Input::RefusedEvent(RefusedEvent {
                event,
                reason: row.try_get("reason")?,
                refusal_id: row.try_get("refusal_id")?,
            });
            inputs.push((input, judged(&row)?));
        }
        for row in sqlx::query(
            "select input, received_at, geometry_version, rules_version from trip_commands
             where trip_id = $1 and command_time > $2",
        )
        .bind(&trip_id)
        .bind(&after)
        .fetch_all(&mut *conn)
        .await?
        {
            let mut input: Input = serde_json::from_str(&row.try_get::<String, _>("input")?)
                .map_err(|e| StoreError::Corrupt(format!("command of trip {trip_id}: {e}")))?;
            // A release covers openings from when it was received, in a replay as live.
            if let Input::Release(r) = &mut input {
                r.received_at = Some(store::parse_ts(&row.try_get::<String, _>("received_at")?)?);
            }
            inputs.push((input, judged(&row)?));
        }
        let mut rebuilt = match base {
            Some(base) => base,
            None => {
                let declaration: TransitDeclaration = {
                    let row = sqlx::query("select canonical from declarations where trip_id = $1")
                        .bind(&trip_id)
                        .fetch_one(&mut *conn)
                        .await?;
                    serde_json::from_str(&row.try_get::<String, _>("canonical")?).map_err(|e| {
                        StoreError::Corrupt(format!("declaration of trip {trip_id}: {e}"))
                    })?
                };
                let Some(declared) = guarded(&trip_id, "replay", || {
                    Trip::declare(trip.status.trip_id, &declaration, trip.status.created_at)
                }) else {
                    return Ok(None);
                };
                declared
            }
        };
        // In event-time order (as `Trip::replay`), each run of inputs received under the same
        // versions judged with those; the closing tick with today's.
        inputs.sort_by_cached_key(|(i, _)| i.sort_key());
        let mut rules_at: Vec<(i64, RulesOverride)> = Vec::new();
        let mut installation_at: Vec<(i64, Rules)> = Vec::new();
        for run in inputs.chunk_by(|a, b| a.1 == b.1) {
            let (geometry_version, rules_version) = run[0].1;
            let loaded;
            let run_geo: &Geography = match geometry_version {
                Some(v) => {
                    loaded = self.geography.at(conn, v).await?;
                    &loaded
                }
                None => geo,
            };
            // Inputs stored before versions were kept (no version): the first rules
            // recorded, i.e. those of the first start that kept them.
            let v = geometry_version.unwrap_or(-1);
            let run_installation = match installation_at.iter().find(|(n, _)| *n == v) {
                Some((_, r)) => *r,
                None => {
                    let r = installation_rules_at(conn, v).await?.unwrap_or(self.rules);
                    installation_at.push((v, r));
                    r
                }
            };
            let run_rules = match rules_version {
                None => trip.rules.clone(),
                Some(v) => match rules_at.iter().find(|(n, _)| *n == v) {
                    Some((_, r)) => r.clone(),
                    None => {
                        let r = trip_rules_version(conn, &trip_id, v).await?;
                        let r = r.unwrap_or_else(|| trip.rules.clone());
                        rules_at.push((v, r.clone()));
                        r
                    }
                },
            };
            let applied = guarded(&trip_id, "replay", || {
                rebuilt.rules = run_rules;
                for (input, _) in run {
                    let _ = rebuilt.apply(input, run_geo, &run_installation, now);
                }
            });
            if applied.is_none() {
                return Ok(None);
            }
        }
        rebuilt.rules = trip.rules.clone();
        Ok(guarded(&trip_id, "replay", || {
            rebuilt.tick(geo, &self.rules, now);
            rebuilt
        }))
    }

    /// A release authorization, handover or cancellation for a trip. The same command sent
    /// again changes nothing and answers the trip as it is.
    #[tracing::instrument(skip_all, fields(trip_id = %trip_id))]
    pub async fn command(
        &self,
        trip_id: TripId,
        input: Input,
        actor: String,
        now: DateTime<Utc>,
    ) -> Result<CommandOutcome, CommandFailure> {
        for attempt in 1..=5 {
            let mut tx = self.store.begin_write().await?;
            match self.command_in(&mut tx, trip_id, &input, &actor, now).await {
                Ok(applied) => {
                    if applied.repeated {
                        tx.rollback().await?;
                    } else {
                        tx.commit().await?;
                    }
                    let commands = applied
                        .effects
                        .into_iter()
                        .filter_map(|e| match e {
                            Effect::SealCommand { command } => Some(command),
                            _ => None,
                        })
                        .collect();
                    return Ok(CommandOutcome {
                        trip: applied.trip,
                        commands,
                    });
                }
                Err(CommandFailure::Store(StoreError::Contention)) => {
                    tx.rollback().await?;
                    tracing::debug!(attempt, "trip changed meanwhile, trying the command again");
                }
                Err(e) => {
                    tx.rollback().await?;
                    return Err(e);
                }
            }
        }
        Err(CommandFailure::Store(StoreError::Contention))
    }

    /// Applies a command to a trip inside the caller's transaction: stored for replay,
    /// its effects and audit entries written. A seal assignment also routes the new seals'
    /// events to the trip, claiming those that came before it. `Contention` when another
    /// writer changed the trip meanwhile (the caller runs it again).
    pub async fn command_in(
        &self,
        tx: &mut Tx,
        trip_id: TripId,
        input: &Input,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Applied, CommandFailure> {
        let (kind, key) = match input {
            Input::Release(r) => ("release", r.release_id.clone()),
            Input::Handover(h) => ("handover", h.handover_id.clone()),
            Input::Cancel(_) => ("cancel", "cancel".to_owned()),
            Input::SealAssignment(a) => ("seal_assignment", format!("seals:{}", a.reference)),
            Input::SealEvent(_) | Input::ConflictingEvent(_) | Input::RefusedEvent(_) => {
                ("seal_event", String::new())
            }
        };
        // Stored for replay with its one-time code hashed (a release sent again with the
        // same code compares equal), as sent (a release's `received_at` is the row's own
        // column); applied with the time it was received.
        let mut received = input.clone();
        if let Input::Release(r) = &mut received {
            r.received_at = None;
        }
        let text = serde_json::to_string(&*received.codes_hashed()).unwrap_or_default();
        if let Input::Release(r) = &mut received {
            r.received_at = Some(now);
        }
        let input = &received;
        // Devices before the trip row, in order, as the events path locks them: a message
        // routing their events waits for this one, or is seen by it.
        if let Input::SealAssignment(a) = input {
            let seals = a.equipment.iter().flat_map(|e| e.seals.iter());
            store::lock_seal_devices(tx, self.store.backend(), seals).await?;
        }
        let geo = self.geography(tx).await?;
        let Some((mut trip, version)) =
            store::load_trip(tx, self.store.backend(), &trip_id.to_string()).await?
        else {
            return Err(CommandFailure::NoTrip(trip_id));
        };
        let existing =
            sqlx::query("select input from trip_commands where trip_id = $1 and command_key = $2")
                .bind(trip_id.to_string())
                .bind(&key)
                .fetch_optional(&mut ***tx)
                .await?;
        if let Some(row) = existing {
            let stored: String = row.try_get("input")?;
            if stored == text {
                return Ok(Applied {
                    trip: trip.status,
                    effects: Vec::new(),
                    repeated: true,
                    events_claimed: 0,
                });
            }
            let field = match kind {
                "release" => "release_id",
                "handover" => "handover_id",
                "seal_assignment" => "reference",
                _ => "trip_id",
            };
            return Err(CommandFailure::Conflict {
                field,
                reason: format!("{kind} {key} is already recorded with different content"),
            });
        }
        // A command dated before events the trip has already seen takes its place in
        // event-time order, as a late event does: checked here, then replayed.
        // A trip marked for a rebuild is rebuilt with it, from its mark on.
        let marked = rebuild_marker(tx, &trip_id.to_string()).await?;
        let late = marked.is_some() || trip.track.watermark.is_some_and(|w| input.time() < w);
        let before = late.then(|| trip.clone());
        let mut effects = guarded(&trip_id.to_string(), "command", || {
            trip.apply(input, &geo, &self.rules, now)
        })
        .ok_or_else(|| {
            CommandFailure::Store(StoreError::Corrupt(format!(
                "the engine failed applying a command to trip {trip_id}"
            )))
        })?
        .map_err(CommandFailure::Refused)?;
        sqlx::query(
            "insert into trip_commands (trip_id, command_key, kind, command_time, input, received_at,
                 geometry_version, rules_version)
             values ($1, $2, $3, $4, $5, $6, (select version from geometry_version where id = 1),
                 (select coalesce(max(version), 0) from trip_rules_versions where trip_id = $1))",
        )
        .bind(trip_id.to_string())
        .bind(&key)
        .bind(kind)
        .bind(ts(input.time()))
        .bind(&text)
        .bind(ts(now))
        .execute(&mut ***tx)
        .await?;
        drop_checkpoints_from(tx, trip_id, input.time()).await?;
        if let Some(before) = before {
            let since = marked.map_or(input.time(), |m| m.min(input.time()));
            let Some(rebuilt) = self.rebuild(tx, &before, since, &geo, now).await? else {
                return Err(CommandFailure::Store(StoreError::Corrupt(format!(
                    "the engine failed replaying trip {trip_id}"
                ))));
            };
            clear_rebuild_marker(tx, &trip_id.to_string()).await?;
            // What the command itself produced (acceptance, unlock commands, custody,
            // seals, notices) stands; the trip's state and alerts are the replay's.
            effects.retain(|e| match e {
                Effect::ReleaseAccepted { .. }
                | Effect::SealCommand { .. }
                | Effect::CustodyChanged { .. }
                | Effect::SealsAssigned { .. } => true,
                // The notices of the command itself; those of state and alerts come from
                // the replay's reconciliation below.
                Effect::Notify { notification } => matches!(
                    notification.kind,
                    ects_core::NotificationKind::Release | ects_core::NotificationKind::Handover
                ),
                _ => false,
            });
            let mut rebuilt = rebuilt;
            rebuilt.keep_tamper_alerts(&before);
            effects.extend(reconcile(&before, &rebuilt, now));
            trip = rebuilt;
        }
        // What the seals assignment changed, as the trip now stands: a late assignment that
        // its replay refused (the trip had departed by then) changed nothing.
        for effect in &mut effects {
            if let Effect::SealsAssigned { equipment, .. } = effect {
                for e in equipment.iter_mut() {
                    e.seals.retain(|seal| {
                        trip.status
                            .equipment
                            .iter()
                            .any(|t| t.id == e.id && t.seals.iter().any(|s| s.id == seal.id))
                    });
                }
                equipment.retain(|e| !e.seals.is_empty());
            }
        }
        effects.retain(
            |e| !matches!(e, Effect::SealsAssigned { equipment, .. } if equipment.is_empty()),
        );
        if !store::update_trip(tx, &trip, version, trip.next_due(&geo, &self.rules)).await? {
            return Err(CommandFailure::Store(StoreError::Contention));
        }
        store_effects(tx, &self.recipients, &effects, now).await?;
        let mut audit = vec![AuditItem::new(
            actor,
            format!("input.{kind}"),
            &*input.codes_hashed(),
        )];
        audit.extend(
            effects
                .iter()
                .map(|e| AuditItem::new("engine", effect_action(e), &*e.codes_hashed())),
        );
        append_audit(tx, trip_id, audit, now).await?;
        // New seals route their devices' events here from now on; events they sent
        // before (kept as unmatched) join the trip.
        let gained: Vec<&ects_core::Equipment> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::SealsAssigned { equipment, .. } => Some(equipment),
                _ => None,
            })
            .flatten()
            .collect();
        let mut events_claimed = 0;
        if !gained.is_empty() {
            let seals: Vec<&ects_core::Seal> = gained.iter().flat_map(|e| e.seals.iter()).collect();
            store::add_trip_seals(tx, trip_id, &gained).await?;
            store::release_from_cancelled(tx, &seals, &trip_id.to_string(), now).await?;
            // From the assignment's time on: an event before it finds no seal in a replay,
            // which applies the assignment at its time.
            let since = input.time();
            let early = store::claim_unmatched_for(tx, &seals, since, &trip_id.to_string()).await?;
            events_claimed = early.events.len();
            if !early.is_empty() {
                effects.extend(
                    self.apply_inputs(tx, &trip_id.to_string(), &early.inputs(), now, None)
                        .await?,
                );
                if let Some((t, _)) =
                    store::load_trip(tx, self.store.backend(), &trip_id.to_string()).await?
                {
                    trip = t;
                }
            }
        }
        Ok(Applied {
            trip: trip.status,
            effects,
            repeated: false,
            events_claimed,
        })
    }

    /// Sets a trip's own thresholds (they win over its corridor's and the defaults), from
    /// its next input on.
    pub async fn set_trip_rules(
        &self,
        trip_id: TripId,
        rules: RulesOverride,
        actor: String,
        now: DateTime<Utc>,
    ) -> Result<TripStatus, CommandFailure> {
        let mut tx = self.store.begin_write().await?;
        let Some((mut trip, version)) =
            store::load_trip(&mut tx, self.store.backend(), &trip_id.to_string()).await?
        else {
            return Err(CommandFailure::NoTrip(trip_id));
        };
        if trip.rules == rules {
            tx.rollback().await?;
            return Ok(trip.status);
        }
        // Versioned: inputs received from now on are judged with these, those before with
        // the ones they were received under (version 0: the trip's before its first change).
        let id = trip_id.to_string();
        let last: i64 = sqlx::query(
            "select coalesce(max(version), -1) as n from trip_rules_versions where trip_id = $1",
        )
        .bind(&id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
        let mut versions = vec![(last + 1, &rules)];
        if last < 0 {
            versions.insert(0, (0, &trip.rules));
            versions[1].0 = 1;
        }
        for (n, r) in versions {
            sqlx::query(
                "insert into trip_rules_versions (trip_id, version, rules, set_at)
                 values ($1, $2, $3, $4)",
            )
            .bind(&id)
            .bind(n)
            .bind(serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            .bind(ts(now))
            .execute(&mut **tx)
            .await?;
        }
        trip.rules = rules.clone();
        let geo = self.geography(&mut tx).await?;
        if !store::update_trip(&mut tx, &trip, version, trip.next_due(&geo, &self.rules)).await? {
            return Err(CommandFailure::Store(StoreError::Contention));
        }
        append_audit(
            &mut tx,
            trip_id,
            vec![AuditItem::new(actor, "input.rules", &rules)],
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(trip.status)
    }

    /// Records that someone acknowledged an alert (with an optional comment) in its trip's
    /// audit chain. `None` when there is no such alert.
    pub async fn acknowledge_alert(
        &self,
        alert_id: &str,
        comment: Option<&str>,
        actor: String,
        now: DateTime<Utc>,
    ) -> Result<Option<TripId>, StoreError> {
        let mut tx = self.store.begin_write().await?;
        let row = sqlx::query("select trip_id, kind from alerts where alert_id = $1")
            .bind(alert_id)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let trip_text: String = row.try_get("trip_id")?;
        let kind: String = row.try_get("kind")?;
        let trip_id = TripId::parse(&trip_text)
            .map_err(|_| StoreError::Corrupt(format!("trip id {trip_text}")))?;
        // The trip row is locked so the chain grows in order.
        if store::load_trip(&mut tx, self.store.backend(), &trip_text)
            .await?
            .is_none()
        {
            tx.rollback().await?;
            return Ok(None);
        }
        append_audit(
            &mut tx,
            trip_id,
            vec![AuditItem::new(
                actor,
                "input.alert_acknowledged",
                &serde_json::json!({
                    "alert_id": alert_id,
                    "kind": kind,
                    "comment": comment,
                }),
            )],
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(trip_id))
    }

    /// Marks a tamper alert of a trip justified, after the fact: the alert stays (closed,
    /// with the reason and the actor), the act is in the trip's audit chain, and partners
    /// told of alerts are told of it. `Refused` for an alert that is not a tamper one or is
    /// justified already; `NoTrip` when the trip does not exist.
    pub async fn justify(
        &self,
        trip_id: TripId,
        alert_id: ects_core::AlertId,
        reason: String,
        actor: String,
        now: DateTime<Utc>,
    ) -> Result<ects_core::Alert, CommandFailure> {
        for attempt in 1..=5 {
            let mut tx = self.store.begin_write().await?;
            let Some((mut trip, version)) =
                store::load_trip(&mut tx, self.store.backend(), &trip_id.to_string()).await?
            else {
                tx.rollback().await?;
                return Err(CommandFailure::NoTrip(trip_id));
            };
            let justification = ects_core::Justification {
                reason: reason.clone(),
                by: actor.clone(),
                at: now,
            };
            let effects = match trip.justify(alert_id, justification) {
                Ok(fx) => fx,
                Err(e) => {
                    tx.rollback().await?;
                    return Err(CommandFailure::Refused(e));
                }
            };
            let geo = self.geography(&mut tx).await?;
            if !store::update_trip(&mut tx, &trip, version, trip.next_due(&geo, &self.rules))
                .await?
            {
                tx.rollback().await?;
                tracing::debug!(attempt, "trip changed meanwhile, justifying again");
                continue;
            }
            store_effects(&mut tx, &self.recipients, &effects, now).await?;
            let mut audit = vec![AuditItem::new(
                actor.clone(),
                "input.alert_justified",
                &serde_json::json!({"alert_id": alert_id, "reason": reason}),
            )];
            audit.extend(
                effects
                    .iter()
                    .map(|e| AuditItem::new("engine", effect_action(e), e)),
            );
            append_audit(&mut tx, trip_id, audit, now).await?;
            tx.commit().await?;
            let alert = effects
                .into_iter()
                .find_map(|e| match e {
                    Effect::AlertUpdated { alert } => Some(alert),
                    _ => None,
                })
                .ok_or_else(|| StoreError::Corrupt("justification without its alert".into()))?;
            return Ok(alert);
        }
        Err(CommandFailure::Store(StoreError::Contention))
    }

    /// The clock for every live trip: raises gaps, overdue trips and long stops on time.
    /// Returns how many trips changed.
    pub async fn tick_all(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        // Only trips with something due (or not yet computed, from before the column).
        let ids: Vec<String> = sqlx::query(
            "select trip_id from trips
             where state in ('declared', 'armed', 'in_transit', 'arrived')
               and (next_due_at is null or next_due_at <= $1)
             order by next_due_at, trip_id",
        )
        .bind(ts(now))
        .fetch_all(self.store.pool())
        .await?
        .iter()
        .map(|r| r.try_get("trip_id"))
        .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Ok(0);
        }
        // One look at the geometry per tick, not per trip.
        let geo = {
            let mut conn = self.store.pool().acquire().await?;
            self.geography(&mut conn).await?
        };
        let mut changed = 0;
        // Each trip on its own: one that fails is logged and skipped, the others go on.
        for id in ids {
            match self.tick_one(&id, &geo, now).await {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(
                        trip_id = %id,
                        error.cause_chain = %crate::telemetry::error_chain(&e),
                        "tick of this trip failed: skipped"
                    );
                    if matches!(e, StoreError::Corrupt(_)) {
                        self.postpone_tick(&id, now).await?;
                    }
                }
            }
        }
        Ok(changed)
    }

    /// A trip whose tick failed for good is looked at again [`FAILED_TICK_RETRY_S`] later,
    /// not at every tick (in a transaction of its own: the failed one is gone).
    async fn postpone_tick(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.store.begin_write().await?;
        sqlx::query("update trips set next_due_at = $1 where trip_id = $2")
            .bind(ts(
                ects_core::trip::after(now, FAILED_TICK_RETRY_S).unwrap_or(now)
            ))
            .bind(id)
            .execute(&mut **tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A trip the engine failed on, rebuilt by the ticker from its stored inputs; if that
    /// fails again, it stays marked and is looked at again [`FAILED_TICK_RETRY_S`] later.
    async fn rebuild_marked(
        &self,
        mut tx: Tx,
        before: Trip,
        version: i64,
        since: DateTime<Utc>,
        geo: &Geography,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let id = before.status.trip_id.to_string();
        let rebuilt = match self.rebuild(&mut tx, &before, since, geo, now).await {
            Ok(Some(rebuilt)) => rebuilt,
            Ok(None) | Err(StoreError::Corrupt(_)) => {
                tx.rollback().await?;
                self.postpone_tick(&id, now).await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let mut rebuilt = rebuilt;
        rebuilt.keep_tamper_alerts(&before);
        let effects = reconcile(&before, &rebuilt, now);
        if !store::update_trip(
            &mut tx,
            &rebuilt,
            version,
            rebuilt.next_due(geo, &self.rules),
        )
        .await?
        {
            tx.rollback().await?;
            return Ok(false);
        }
        clear_rebuild_marker(&mut tx, &id).await?;
        store_effects(&mut tx, &self.recipients, &effects, now).await?;
        let audit = effects
            .iter()
            .map(|e| AuditItem::new("engine", effect_action(e), &*e.codes_hashed()))
            .collect();
        append_audit(&mut tx, rebuilt.status.trip_id, audit, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The clock for one trip; `true` when it changed.
    async fn tick_one(
        &self,
        id: &str,
        geo: &Geography,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.store.begin_write().await?;
        let Some((mut trip, version)) = store::load_trip(&mut tx, self.store.backend(), id).await?
        else {
            return Ok(false);
        };
        if let Some(since) = rebuild_marker(&mut tx, id).await? {
            return self
                .rebuild_marked(tx, trip, version, since, geo, now)
                .await;
        }
        let ticked = guarded(id, "tick", || {
            let effects = trip.tick(geo, &self.rules, now);
            (effects, trip.next_due(geo, &self.rules))
        });
        let Some((effects, next_due)) = ticked else {
            tx.rollback().await?;
            self.postpone_tick(id, now).await?;
            return Ok(false);
        };
        if effects.is_empty() {
            // Nothing raised (due this very instant, or never computed): keep the due
            // time true, so the trip is not picked again for nothing.
            sqlx::query("update trips set next_due_at = $1 where trip_id = $2")
                .bind(next_due.map(ts))
                .bind(id)
                .execute(&mut **tx)
                .await?;
            tx.commit().await?;
            return Ok(false);
        }
        if !store::update_trip(&mut tx, &trip, version, next_due).await? {
            // Someone else changed it; the next tick will look again.
            tx.rollback().await?;
            return Ok(false);
        }
        store_effects(&mut tx, &self.recipients, &effects, now).await?;
        let audit = effects
            .iter()
            // The gateway's clock raised these, not any input.
            .map(|e| AuditItem::new("clock", effect_action(e), &*e.codes_hashed()))
            .collect();
        append_audit(&mut tx, trip.status.trip_id, audit, now).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// A cancelled trip's seals opened under a release stop routing their events to it.
async fn release_watched_seals(
    conn: &mut AnyConnection,
    trip: &Trip,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for seal in &trip.track.released_after_cancel {
        sqlx::query(
            "update trip_seals set released_at = $1
             where trip_id = $2 and seal_id = $3 and released_at is null",
        )
        .bind(ts(now))
        .bind(trip.status.trip_id.to_string())
        .bind(seal)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// When the engine failed on this trip's live inputs (stored already), the earliest of
/// them: the trip must be rebuilt from its stored inputs before anything else is applied.
async fn rebuild_marker(
    conn: &mut AnyConnection,
    trip_id: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let marker: Option<String> = sqlx::query("select rebuild_from from trips where trip_id = $1")
        .bind(trip_id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get("rebuild_from"))
        .transpose()?
        .flatten();
    marker.map(|m| store::parse_ts(&m)).transpose()
}

/// Marks the trip for a rebuild from `since` (kept if an earlier mark stands); the ticker
/// takes it at its next run, so it is rebuilt even if no input comes.
async fn mark_for_rebuild(
    conn: &mut AnyConnection,
    trip_id: &str,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let since = match rebuild_marker(conn, trip_id).await? {
        Some(earlier) if earlier < since => earlier,
        _ => since,
    };
    sqlx::query("update trips set rebuild_from = $1, next_due_at = $2 where trip_id = $3")
        .bind(ts(since))
        .bind(ts(now))
        .bind(trip_id)
        .execute(conn)
        .await?;
    tracing::warn!(trip_id, since = %since, "the trip is marked for a rebuild from its stored inputs");
    Ok(())
}

async fn clear_rebuild_marker(conn: &mut AnyConnection, trip_id: &str) -> Result<(), StoreError> {
    sqlx::query(
        "update trips set rebuild_from = null where trip_id = $1 and rebuild_from is not null",
    )
    .bind(trip_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Checkpoints at or after `since` miss an input at `since`: they are dropped.
async fn drop_checkpoints_from(
    conn: &mut AnyConnection,
    trip_id: TripId,
    since: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("delete from trip_checkpoints where trip_id = $1 and taken_at >= $2")
        .bind(trip_id.to_string())
        .bind(ts(since))
        .execute(conn)
        .await?;
    Ok(())
}

/// Event time between two checkpoints of a trip.
const CHECKPOINT_EVERY_H: i64 = 1;

/// After inputs applied in order, keeps the trip as a checkpoint when the last one is an
/// hour of event time old or more.
async fn maybe_checkpoint(conn: &mut AnyConnection, trip: &Trip) -> Result<(), StoreError> {
    let Some(at) = trip.track.watermark else {
        return Ok(());
    };
    let last: Option<String> =
        sqlx::query("select max(taken_at) as last from trip_checkpoints where trip_id = $1")
            .bind(trip.status.trip_id.to_string())
            .fetch_one(&mut *conn)
            .await?
            .try_get("last")?;
    let due = match last {
        Some(last) => ects_core::trip::after(store::parse_ts(&last)?, CHECKPOINT_EVERY_H * 3600)
            .is_none_or(|next| next <= at),
        None => true,
    };
    if due {
        sqlx::query(
            "insert into trip_checkpoints (trip_id, taken_at, engine) values ($1, $2, $3)
             on conflict (trip_id, taken_at) do nothing",
        )
        .bind(trip.status.trip_id.to_string())
        .bind(ts(at))
        .bind(serde_json::to_string(trip).unwrap_or_default())
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// A new version of a trip's declaration (an ICES amendment), to apply before departure.
pub struct Amendment<'a> {
    pub declaration: &'a TransitDeclaration,
    /// The version in force until now, when it reads.
    pub previous: Option<&'a TransitDeclaration>,
    /// Its canonical JSON, as stored.
    pub canonical: &'a str,
    /// The message that brought it (stored already).
    pub message_id: &'a str,
    pub version: i64,
    /// What changed: `[{"pointer", "old", "new"}]`, for the audit entry.
    pub changes: serde_json::Value,
}

impl Tracking {
    /// Makes a new version of the declaration the one the trip is built from, inside the
    /// caller's transaction: only while the trip has not departed (declared or armed). The
    /// trip is rebuilt from the new version and every input it has had; its seals and
    /// containers route events from now on (earlier events of new seals, kept as unmatched,
    /// join it); the audit entry says what changed, old and new. `Refused` after
    /// departure; `Conflict` when a new seal is on another live trip.
    pub async fn amend_in(
        &self,
        tx: &mut Tx,
        trip_id: TripId,
        amendment: &Amendment<'_>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Applied, CommandFailure> {
        let declaration = amendment.declaration;
        // The devices of both versions, in one ordered pass: a message routing events of
        // a seal the amendment removes or adds waits for it, or is seen by it.
        let previous = amendment.previous.into_iter().flat_map(|d| d.seals());
        store::lock_seal_devices(
            tx,
            self.store.backend(),
            declaration.seals().chain(previous),
        )
        .await?;
        let geo = self.geography(tx).await?;
        let id = trip_id.to_string();
        let Some((trip, version)) = store::load_trip(tx, self.store.backend(), &id).await? else {
            return Err(CommandFailure::NoTrip(trip_id));
        };
        if !matches!(
            trip.status.state,
            ects_core::TripState::Declared | ects_core::TripState::Armed
        ) {
            return Err(CommandFailure::Refused(CommandError {
                field: "state",
                reason: format!(
                    "trip {trip_id} is {}: a declaration is amended only before departure \
                     (while its trip is declared or armed); the version in force stays",
                    trip.status.state.as_str()
                ),
            }));
        }
        // A seal reported opened or tampered with stays the trip's business: an amendment
        // (a new seal number after a cut rope) must not make its alert go away.
        if let Some(alert) = trip.status.open_alerts.iter().find(|a| {
            matches!(
                a.kind,
                ects_core::AlertKind::SealOpened | ects_core::AlertKind::SealTamper
            )
        }) {
            return Err(CommandFailure::Refused(CommandError {
                field: "open_alerts",
                reason: format!(
                    "trip {trip_id} has an open {} alert ({}): a declaration is not amended \
                     while a seal alert is open; close the alert first (the version in force \
                     stays)",
                    alert.kind.as_str(),
                    alert.alert_id
                ),
            }));
        }
        // One device, one live trip (the same check as a declaration's, saying nothing of
        // the trip that holds it).
        for seal in declaration.seals() {
            if store::held_by_another_live_trip(tx, seal, &id, None).await? {
                return Err(CommandFailure::Conflict {
                    field: "equipment",
                    reason: store::held_elsewhere(seal),
                });
            }
        }
        store::replace_declaration(
            tx,
            &id,
            declaration,
            amendment.canonical,
            amendment.message_id,
        )
        .await?;
        let claimed = store::claim_unmatched_events(tx, declaration, &id).await?;
        // Every input again, on the new version (no checkpoint holds: they were taken on
        // the old one).
        let Some(mut rebuilt) = self
            .rebuild(tx, &trip, DateTime::<Utc>::UNIX_EPOCH, &geo, now)
            .await?
        else {
            return Err(CommandFailure::Store(StoreError::Corrupt(format!(
                "the engine failed replaying trip {id} on the amended declaration"
            ))));
        };
        rebuilt.keep_tamper_alerts(&trip);
        let effects = reconcile(&trip, &rebuilt, now);
        // Alerts are never withdrawn by an amendment (the caller's transaction is rolled
        // back on this refusal).
        if let Some(alert) = effects.iter().find_map(|e| match e {
            Effect::AlertWithdrawn { alert } => Some(alert),
            _ => None,
        }) {
            return Err(CommandFailure::Refused(CommandError {
                field: "open_alerts",
                reason: format!(
                    "the amendment would withdraw {} alert {} of trip {trip_id}: an amendment \
                     never withdraws an alert; the version in force stays",
                    alert.kind.as_str(),
                    alert.alert_id
                ),
            }));
        }
        if !store::update_trip(tx, &rebuilt, version, rebuilt.next_due(&geo, &self.rules)).await? {
            return Err(CommandFailure::Store(StoreError::Contention));
        }
        store::set_trip_routing(tx, &rebuilt.status).await?;
        let seals: Vec<&ects_core::Seal> = declaration.seals().collect();
        store::release_from_cancelled(tx, &seals, &id, now).await?;
        store_effects(tx, &self.recipients, &effects, now).await?;
        let mut audit = vec![AuditItem::new(
            actor,
            "input.declaration_amendment",
            &serde_json::json!({
                "version": amendment.version,
                "message_id": amendment.message_id,
                "changes": amendment.changes,
                "declaration": declaration,
            }),
        )];
        audit.extend(
            effects
                .iter()
                .map(|e| AuditItem::new("engine", effect_action(e), &*e.codes_hashed())),
        );
        append_audit(tx, trip_id, audit, now).await?;
        Ok(Applied {
            trip: rebuilt.status,
            effects,
            repeated: false,
            events_claimed: claimed.events.len(),
        })
    }
}
