//! Declarations, trips, the seals that route events to them, seal events and alerts.

use chrono::{DateTime, Utc};
use ects_core::trip::{ConflictingEvent, RefusedEvent, Trip};
use ects_core::{
    Alert, Equipment, Seal, SealEvent, TransitDeclaration, TripId, TripState, TripStatus,
};
use sqlx::{AnyConnection, Row};

use super::{Backend, Store, StoreError, from_json, to_json, ts};

/// A stored declaration's trip, the message that brought it, and its canonical form.
#[derive(Debug, Clone)]
pub struct TripRow {
    pub trip_id: String,
    pub message_id: String,
    pub canonical: String,
}

pub async fn find_declaration(
    conn: &mut AnyConnection,
    declaration: &TransitDeclaration,
) -> Result<Option<TripRow>, StoreError> {
    find_declaration_by(
        conn,
        declaration.issuing_authority.as_str(),
        declaration.declaration_id.as_str(),
    )
    .await
}

pub async fn find_declaration_by(
    conn: &mut AnyConnection,
    issuing_authority: &str,
    declaration_id: &str,
) -> Result<Option<TripRow>, StoreError> {
    let row = sqlx::query(
        "select trip_id, message_id, canonical from declarations
         where issuing_authority = $1 and declaration_id = $2",
    )
    .bind(issuing_authority)
    .bind(declaration_id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(TripRow {
            trip_id: r.try_get("trip_id")?,
            message_id: r.try_get("message_id")?,
            canonical: r.try_get("canonical")?,
        })
    })
    .transpose()
}

/// Stores a new trip for a declaration, with the seals that route events to it.
pub async fn insert_declared_trip(
    conn: &mut AnyConnection,
    declaration: &TransitDeclaration,
    canonical: &str,
    trip: &Trip,
    message_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let s = &trip.status;
    sqlx::query(
        "insert into trips (trip_id, issuing_authority, declaration_id, state, custodian,
             corridor_id, status, engine, version, created_at, updated_at, next_due_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $9, $10)",
    )
    .bind(s.trip_id.to_string())
    .bind(s.issuing_authority.as_str())
    .bind(s.declaration_id.as_str())
    .bind(s.state.as_str())
    .bind(s.custodian.as_str())
    .bind(s.corridor_id.as_ref().map(|c| c.as_str()))
    .bind(to_json(s))
    .bind(to_json(trip))
    .bind(ts(now))
    // A declared trip can only come due by its time limit.
    .bind(declaration.time_limit.map(ts))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "insert into declarations (issuing_authority, declaration_id, trip_id, message_id,
             canonical, declared_at, received_at)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(declaration.issuing_authority.as_str())
    .bind(declaration.declaration_id.as_str())
    .bind(s.trip_id.to_string())
    .bind(message_id)
    .bind(canonical)
    .bind(declaration.declared_at.map(ts))
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    for seal in declaration.seals() {
        sqlx::query("insert into trip_seals (trip_id, seal_id, device_id) values ($1, $2, $3)")
            .bind(s.trip_id.to_string())
            .bind(seal.id.as_str())
            .bind(seal.device_id.as_ref().map(|d| d.as_str()))
            .execute(&mut *conn)
            .await?;
    }
    for equipment in &declaration.equipment {
        add_trip_equipment(conn, &s.trip_id.to_string(), equipment.id.as_str()).await?;
    }
    Ok(())
}

async fn add_trip_equipment(
    conn: &mut AnyConnection,
    trip_id: &str,
    equipment_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into trip_equipment (trip_id, equipment_id) values ($1, $2)
         on conflict (trip_id, equipment_id) do nothing",
    )
    .bind(trip_id)
    .bind(equipment_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Seals a seal assignment tied to a trip's containers: they route events to it from now
/// on (a seal already listed keeps its row, gaining a device it lacked).
pub async fn add_trip_seals(
    conn: &mut AnyConnection,
    trip_id: TripId,
    equipment: &[&Equipment],
) -> Result<(), StoreError> {
    let trip_id = trip_id.to_string();
    for e in equipment {
        add_trip_equipment(conn, &trip_id, e.id.as_str()).await?;
        for seal in &e.seals {
            sqlx::query(
                "insert into trip_seals (trip_id, seal_id, device_id) values ($1, $2, $3)
                 on conflict (trip_id, seal_id)
                 do update set device_id = coalesce(trip_seals.device_id, excluded.device_id)",
            )
            .bind(&trip_id)
            .bind(seal.id.as_str())
            .bind(seal.device_id.as_ref().map(|d| d.as_str()))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Whether another live trip (not released or cancelled) holds this seal or its device.
/// The one check of "one device, one live trip", for declarations, amendments and seal
/// assignments alike: the caller holds the seals' locks ([`lock_seal_devices`]), so two
/// writers naming one device are checked one after the other. Its answer says only
/// yes or no: which trip holds it is not the caller's to know.
pub async fn held_by_another_live_trip(
    conn: &mut AnyConnection,
    seal: &Seal,
    except_trip: &str,
    taker_country: Option<&str>,
) -> Result<bool, StoreError> {
    // A cancelled trip still watching the seal lets it go only to a trip of the same
    // country's customs (a re-declaration), not to anyone's decoy declaration.
    let taker_country = match taker_country {
        Some(c) => c.to_owned(),
        None => sqlx::query("select issuing_authority from trips where trip_id = $1")
            .bind(except_trip)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.try_get::<String, _>("issuing_authority"))
            .transpose()?
            .unwrap_or_default()
            .chars()
            .take(2)
            .collect(),
    };
    let row = sqlx::query(
        "select 1 as held from trip_seals s join trips t on t.trip_id = s.trip_id
         where (s.seal_id = $1 or s.device_id = $2) and s.trip_id <> $3
           and (t.state not in ('released', 'cancelled')
                or (t.state = 'cancelled' and s.released_at is null
                    and substr(t.issuing_authority, 1, 2) <> $4))
         limit 1",
    )
    .bind(seal.id.as_str())
    .bind(seal.device_id.as_ref().map(|d| d.as_str()))
    .bind(except_trip)
    .bind(taker_country)
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

/// What a refusal says of a seal another live trip holds: the seal and device the sender
/// named, nothing of the trip that holds them (its id, declaration or authority).
pub fn held_elsewhere(seal: &Seal) -> String {
    let what = match &seal.device_id {
        Some(device) => format!("seal {} or its device {device}", seal.id),
        None => format!("seal {}", seal.id),
    };
    format!(
        "{what} is held by another live trip: a seal or device serves one live trip at a \
         time, until that trip is released or cancelled"
    )
}

/// A trip takes these seals: a cancelled trip still watching one of them (or its device)
/// lets it go, so that its events go to the new trip.
pub async fn release_from_cancelled(
    conn: &mut AnyConnection,
    seals: &[&Seal],
    taker: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for seal in seals {
        sqlx::query(
            "update trip_seals set released_at = $1
             where (seal_id = $2 or device_id = $3) and trip_id <> $4 and released_at is null
               and trip_id in (select trip_id from trips where state = 'cancelled')",
        )
        .bind(ts(now))
        .bind(seal.id.as_str())
        .bind(seal.device_id.as_ref().map(|d| d.as_str()))
        .bind(taker)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The trips not yet arrived, released or cancelled that carry a container, newest first.
pub async fn live_trips_with_equipment(
    conn: &mut AnyConnection,
    equipment_id: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "select t.trip_id from trip_equipment e join trips t on t.trip_id = e.trip_id
         where e.equipment_id = $1 and t.state not in ('arrived', 'released', 'cancelled')
         order by t.created_at desc",
    )
    .bind(equipment_id)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| Ok(r.try_get("trip_id")?)).collect()
}

/// The engine state of a trip and the version it was read at. On PostgreSQL the row stays
/// locked until the transaction ends, so concurrent messages for one trip apply in turn
/// (SQLite writers are serialised already). `no key update`, not `update`: rows that
/// reference the trip (events, audit entries) take key-share locks on it, which `for
/// update` would deadlock against.
pub async fn load_trip(
    conn: &mut AnyConnection,
    backend: Backend,
    trip_id: &str,
) -> Result<Option<(Trip, i64)>, StoreError> {
    let sql = match backend {
        Backend::Postgres => {
            "select engine, version from trips where trip_id = $1 for no key update"
        }
        Backend::Sqlite => "select engine, version from trips where trip_id = $1",
    };
    let row = sqlx::query(sql).bind(trip_id).fetch_optional(conn).await?;
    row.map(|r| {
        let engine: String = r.try_get("engine")?;
        let version: i64 = r.try_get("version")?;
        Ok((from_json::<Trip>("trip engine state", &engine)?, version))
    })
    .transpose()
}

/// Writes a trip back if nobody else has since it was read; `false` when somebody has.
pub async fn update_trip(
    conn: &mut AnyConnection,
    trip: &Trip,
    read_version: i64,
    next_due: Option<DateTime<Utc>>,
) -> Result<bool, StoreError> {
    let s = &trip.status;
    let done = sqlx::query(
        "update trips set state = $1, custodian = $2, status = $3, engine = $4,
             version = version + 1, updated_at = $5, next_due_at = $8
         where trip_id = $6 and version = $7",
    )
    .bind(s.state.as_str())
    .bind(s.custodian.as_str())
    .bind(to_json(s))
    .bind(to_json(trip))
    .bind(ts(s.updated_at))
    .bind(s.trip_id.to_string())
    .bind(read_version)
    .bind(next_due.map(ts))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// On PostgreSQL, serialises work on one device across transactions until commit: a
/// declaration claiming a device's early events and a message routing that device's
/// events must not miss each other (SQLite writers are serialised already).
pub async fn lock_device(
    conn: &mut AnyConnection,
    backend: Backend,
    device: &str,
) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("select pg_advisory_xact_lock(hashtext($1))::text as locked")
            .bind(device)
            .fetch_one(conn)
            .await?;
    }
    Ok(())
}

/// Locks the devices of these seals, each once and in order (so that two writers lock
/// them alike and cannot deadlock on each other).
pub fn lock_seal_devices<'a, 'c>(
    conn: &'c mut AnyConnection,
    backend: Backend,
    seals: impl Iterator<Item = &'a Seal>,
) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
    // The devices are collected before the future starts, so that it holds no iterator
    // (whose closures would keep it from being Send for every lifetime).
    // Devices by their id (as the events path locks them), seals by theirs: a seal
    // without a device is held alike.
    let mut devices: Vec<String> = seals
        .flat_map(|s| {
            std::iter::once(format!("seal:{}", s.id.as_str()))
                .chain(s.device_id.as_ref().map(|d| d.as_str().to_owned()))
        })
        .collect();
    devices.sort_unstable();
    devices.dedup();
    async move {
        for device in devices {
            lock_device(conn, backend, &device).await?;
        }
        Ok(())
    }
}

/// The live trip that carries this seal (by seal id) or device, newest first; else a
/// cancelled trip whose seals are still watched (not yet released at an approved place nor
/// taken by another trip).
pub async fn trip_for_event(
    conn: &mut AnyConnection,
    event: &SealEvent,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(
        "select t.trip_id from trip_seals s join trips t on t.trip_id = s.trip_id
         where (s.device_id = $2 or (s.seal_id = $1 and s.device_id is null))
           and (t.state not in ('released', 'cancelled')
                or (t.state = 'cancelled' and s.released_at is null))
         order by case when t.state = 'cancelled' then 1 else 0 end, t.created_at desc
         limit 1",
    )
    .bind(event.seal_id.as_ref().map(|s| s.as_str()))
    .bind(event.device_id.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| r.try_get("trip_id")).transpose()?)
}

/// Events stored without a trip (no live trip carried their seal yet) that belong to this
/// newly declared trip: its seals or devices, from six hours before the declaration on (an
/// older one belongs to an earlier use of the seal). They are assigned to the trip and
/// returned in event-time order.
pub async fn claim_unmatched_events(
    conn: &mut AnyConnection,
    declaration: &TransitDeclaration,
    trip_id: &str,
) -> Result<Claimed, StoreError> {
    let declared = declaration.declared_at.unwrap_or_else(chrono::Utc::now);
    let seals: Vec<&Seal> = declaration.seals().collect();
    let since = declared
        .checked_sub_signed(chrono::Duration::hours(6))
        .unwrap_or(declared);
    claim_unmatched_for(conn, &seals, since, trip_id).await
}

/// What a trip claimed of the events stored without one.
#[derive(Debug, Default)]
pub struct Claimed {
    /// In event-time order.
    pub events: Vec<SealEvent>,
    /// The conflicting variants kept of those events: they move with them.
    pub conflicts: Vec<ConflictingEvent>,
    /// The events of these devices device authentication refused while no trip carried
    /// them: they raise `device_auth_failure` on the trip now.
    pub refusals: Vec<RefusedEvent>,
}

impl Claimed {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.conflicts.is_empty() && self.refusals.is_empty()
    }

    /// Everything claimed, as inputs for the trip.
    pub fn inputs(&self) -> Vec<ects_core::trip::Input> {
        use ects_core::trip::Input;
        self.events
            .iter()
            .cloned()
            .map(Input::SealEvent)
            .chain(self.conflicts.iter().cloned().map(Input::ConflictingEvent))
            .chain(self.refusals.iter().cloned().map(Input::RefusedEvent))
            .collect()
    }
}

/// Events stored without a trip, from `since` on, of these seals or their devices: they
/// are assigned to the trip and returned in event-time order, with the conflicting
/// variants kept of them (assigned to the trip too).
pub async fn claim_unmatched_for(
    conn: &mut AnyConnection,
    seals: &[&Seal],
    since: DateTime<Utc>,
    trip_id: &str,
) -> Result<Claimed, StoreError> {
    let since = ts(since);
    let mut claimed = Vec::new();
    let mut conflicts = Vec::new();
    let mut refusals = Vec::new();
    for seal in seals {
        if let Some(device) = &seal.device_id {
            for r in sqlx::query(
                "select refusal_id, reason, canonical from seal_event_refusals
                 where trip_id is null and event_time >= $1 and device_id = $2",
            )
            .bind(&since)
            .bind(device.as_str())
            .fetch_all(&mut *conn)
            .await?
            {
                let refusal_id: String = r.try_get("refusal_id")?;
                sqlx::query(
                    "update seal_event_refusals set trip_id = $1
                     where refusal_id = $2 and trip_id is null",
                )
                .bind(trip_id)
                .bind(&refusal_id)
                .execute(&mut *conn)
                .await?;
                refusals.push(RefusedEvent {
                    event: from_json("refused event", &r.try_get::<String, _>("canonical")?)?,
                    reason: r.try_get("reason")?,
                    refusal_id,
                });
            }
        }
        // A seal with a device takes only that device's events (an event naming the seal
        // from another device is not the seal's); a seal without one, events naming it.
        const BY_DEVICE: &str = "select e.event_key, e.canonical from seal_events e
             where e.trip_id is null and e.event_time >= $1 and e.device_id = $2
               and (e.sent_by_parties is null or exists (
                   select 1 from trip_parties tp where tp.trip_id = $3
                      and e.sent_by_parties like '%,' || replace(replace(replace(
                          tp.party, '!', '!!'), '%', '!%'), '_', '!_') || ',%' escape '!'))";
        const BY_SEAL: &str = "select e.event_key, e.canonical from seal_events e
             where e.trip_id is null and e.event_time >= $1 and e.seal_id = $2
               and (e.sent_by_parties is null or exists (
                   select 1 from trip_parties tp where tp.trip_id = $3
                      and e.sent_by_parties like '%,' || replace(replace(replace(
                          tp.party, '!', '!!'), '%', '!%'), '_', '!_') || ',%' escape '!'))";
        // A seal with a device takes only that device's events (an event naming the seal
        // from another device is not the seal's); a seal without one, events naming it.
        // An event a partner sent is claimed only by a trip that partner may see (a party
        // matched exactly: its `%` and `_` escaped).
        let (sql, key) = match &seal.device_id {
            Some(device) => (BY_DEVICE, device.as_str()),
            None => (BY_SEAL, seal.id.as_str()),
        };
        let rows = sqlx::query(sql)
            .bind(&since)
            .bind(key)
            .bind(trip_id)
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
            let key: String = row.try_get("event_key")?;
            sqlx::query(
                "update seal_events set trip_id = $1 where event_key = $2 and trip_id is null",
            )
            .bind(trip_id)
            .bind(&key)
            .execute(&mut *conn)
            .await?;
            for c in sqlx::query(
                "select conflict_id, canonical from seal_event_conflicts
                 where conflicts_with = $1 and trip_id is null",
            )
            .bind(&key)
            .fetch_all(&mut *conn)
            .await?
            {
                let conflict_id: String = c.try_get("conflict_id")?;
                sqlx::query(
                    "update seal_event_conflicts set trip_id = $1
                     where conflict_id = $2 and trip_id is null",
                )
                .bind(trip_id)
                .bind(&conflict_id)
                .execute(&mut *conn)
                .await?;
                conflicts.push(ConflictingEvent {
                    event: from_json("conflicting event", &c.try_get::<String, _>("canonical")?)?,
                    conflicts_with: key.clone(),
                    conflict_id,
                });
            }
            claimed.push(from_json::<SealEvent>(
                "seal event",
                &row.try_get::<String, _>("canonical")?,
            )?);
        }
    }
    claimed.sort_by_key(|e| e.time);
    claimed.dedup_by(|a, b| a == b);
    Ok(Claimed {
        events: claimed,
        conflicts,
        refusals,
    })
}

/// The sequence number as stored (a signed 64-bit integer): one above [`ects_core::MAX_SEQ`]
/// is refused where events are parsed, and never stored as a negative number.
pub(crate) fn seq_column(event: &SealEvent) -> Result<Option<i64>, StoreError> {
    event
        .seq
        .map(|s| {
            i64::try_from(s).map_err(|_| {
                StoreError::Corrupt(format!(
                    "seq {s} is above {}: it should have been refused",
                    ects_core::MAX_SEQ
                ))
            })
        })
        .transpose()
}

/// A stored seal event: its canonical form, the message that brought it, its key.
#[derive(Debug, Clone)]
pub struct FoundEvent {
    pub canonical: String,
    pub message_id: String,
    pub event_key: String,
    /// How it was authenticated (`key:<id>`, `platform:<name>`, `none`; null before
    /// device authentication existed).
    pub authenticated: Option<String>,
}

/// An event already stored under the same identity or the same device and sequence.
pub async fn find_event(
    conn: &mut AnyConnection,
    key: &str,
    event: &SealEvent,
) -> Result<Option<FoundEvent>, StoreError> {
    let row = sqlx::query(
        "select canonical, message_id, event_key, authenticated from seal_events
         where event_key = $1 or (device_id = $2 and seq = $3) limit 1",
    )
    .bind(key)
    .bind(event.device_id.as_str())
    .bind(seq_column(event)?)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(FoundEvent {
            canonical: r.try_get("canonical")?,
            message_id: r.try_get("message_id")?,
            event_key: r.try_get("event_key")?,
            authenticated: r.try_get("authenticated")?,
        })
    })
    .transpose()
}

/// A seal event that contradicts a stored one, kept as evidence. `false` when the same
/// conflicting event (same key and content) is stored already.
#[allow(clippy::too_many_arguments)]
pub async fn insert_event_conflict(
    conn: &mut AnyConnection,
    conflict_id: &str,
    key: &str,
    conflicts_with: &str,
    event: &SealEvent,
    canonical: &str,
    trip_id: Option<&str>,
    message_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "insert into seal_event_conflicts (conflict_id, event_key, conflicts_with, device_id,
             seq, event_time, trip_id, message_id, canonical, received_at, geometry_version,
             rules_version)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, (select version from geometry_version where id = 1),
             (select coalesce(max(version), 0) from trip_rules_versions where trip_id = $7))
         on conflict (conflict_id) do nothing",
    )
    .bind(conflict_id)
    .bind(key)
    .bind(conflicts_with)
    .bind(event.device_id.as_str())
    .bind(seq_column(event)?)
    .bind(ts(event.time))
    .bind(trip_id)
    .bind(message_id)
    .bind(canonical)
    .bind(ts(now))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How many conflicting variants of the stored event `conflicts_with` are kept.
pub async fn conflict_variants(
    conn: &mut AnyConnection,
    conflicts_with: &str,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query("select count(*) as n from seal_event_conflicts where conflicts_with = $1")
            .bind(conflicts_with)
            .fetch_one(conn)
            .await?
            .try_get("n")?,
    )
}

/// Whether this very conflicting variant is kept already.
pub async fn conflict_kept(
    conn: &mut AnyConnection,
    conflict_id: &str,
) -> Result<bool, StoreError> {
    Ok(
        sqlx::query("select 1 from seal_event_conflicts where conflict_id = $1")
            .bind(conflict_id)
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

/// Counts a conflicting variant of a stored event that was not kept (past the cap).
pub async fn count_dropped_conflict(
    conn: &mut AnyConnection,
    event_key: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "update seal_events set conflicts_dropped = conflicts_dropped + 1 where event_key = $1",
    )
    .bind(event_key)
    .execute(conn)
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub async fn insert_event(
    conn: &mut AnyConnection,
    key: &str,
    event: &SealEvent,
    canonical: &str,
    trip_id: Option<&str>,
    message_id: &str,
    now: DateTime<Utc>,
    authenticated: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into seal_events (event_key, device_id, seq, seal_id, kind, event_time, trip_id,
             message_id, canonical, received_at, authenticated, geometry_version, rules_version)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, (select version from geometry_version where id = 1),
             (select coalesce(max(version), 0) from trip_rules_versions where trip_id = $7))",
    )
    .bind(key)
    .bind(event.device_id.as_str())
    .bind(seq_column(event)?)
    .bind(event.seal_id.as_ref().map(|s| s.as_str()))
    .bind(event.kind.as_str())
    .bind(ts(event.time))
    .bind(trip_id)
    .bind(message_id)
    .bind(canonical)
    .bind(ts(now))
    .bind(authenticated)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn upsert_alert(
    conn: &mut AnyConnection,
    alert: &Alert,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into alerts (alert_id, trip_id, kind, severity, raised_at, cleared_at, body, updated_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         on conflict (alert_id) do update set
             cleared_at = excluded.cleared_at, body = excluded.body, updated_at = excluded.updated_at,
             withdrawn_at = null",
    )
    .bind(alert.alert_id.to_string())
    .bind(alert.trip_id.to_string())
    .bind(alert.kind.as_str())
    .bind(to_json(&alert.severity).trim_matches('"').to_owned())
    .bind(ts(alert.raised_at))
    .bind(alert.cleared_at.map(ts))
    .bind(to_json(alert))
    .bind(ts(now))
    .execute(conn)
    .await?;
    Ok(())
}

/// A stored seal event with when and how it arrived.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredEvent {
    #[serde(flatten)]
    pub event: serde_json::Value,
    pub received_at: String,
    pub message_id: String,
    /// How the event was authenticated: `key:<key id>`, `platform:<name>` (a device
    /// platform posted it; both, comma-separated), or `none`; absent for events stored
    /// before device authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authenticated: Option<String>,
    /// Conflicting variants kept of this event (listed by `GET /v1/trips/{id}/conflicts`);
    /// absent when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub conflicts: i64,
    /// Conflicting variants past the cap, counted only.
    #[serde(skip_serializing_if = "is_zero")]
    pub conflicts_dropped: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A conflicting variant of a stored event, as kept: evidence that one of the two is not
/// genuine.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct StoredConflict {
    pub conflict_id: String,
    /// The key of the stored event it contradicts.
    pub conflicts_with: String,
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
    pub received_at: String,
    pub message_id: String,
    /// Who sent it: the sender of its message, and over what.
    pub sender: String,
    pub transport: String,
}

#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub trip_id: Option<TripId>,
    /// `Some(true)` open only, `Some(false)` cleared only.
    pub open: Option<bool>,
    pub kind: Option<String>,
    /// Only trips with one of these parties (a partner's view); `None`: all.
    pub parties: Option<Vec<String>>,
    /// Only alerts after this one in the list's order: (raised_at, alert_id).
    pub after: Option<(String, String)>,
    pub limit: i64,
}

impl Store {
    pub async fn trip_status(&self, trip_id: TripId) -> Result<Option<TripStatus>, StoreError> {
        let row = sqlx::query("select status from trips where trip_id = $1")
            .bind(trip_id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| from_json("trip status", &r.try_get::<String, _>("status")?))
            .transpose()
    }

    pub async fn trips_by_reference(
        &self,
        declaration_id: &str,
        issuing_authority: Option<&str>,
        state: Option<TripState>,
        parties: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<TripStatus>, StoreError> {
        // Filtered and limited in the query: a reference with many trips is never read whole.
        let (all, p1, p2) = party_filter(parties);
        let rows = sqlx::query(
            "select status from trips t
             where declaration_id = $1 and ($2 is null or issuing_authority = $2)
               and ($3 is null or state = $3)
               and ($4 = 1 or exists (select 1 from trip_parties p
                                      where p.trip_id = t.trip_id and (p.party = $5 or p.party = $6)))
             order by created_at limit $7",
        )
        .bind(declaration_id)
        .bind(issuing_authority)
        .bind(state.map(|s| s.as_str()))
        .bind(all)
        .bind(p1)
        .bind(p2)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| from_json("trip status", &r.try_get::<String, _>("status")?))
            .collect()
    }

    /// The most recently updated trips, after `after` (the cursor keys of the last one
    /// shown: updated_at, trip_id), each with its cursor keys.
    pub async fn list_trips(
        &self,
        state: Option<TripState>,
        parties: Option<&[String]>,
        after: Option<(String, String)>,
        limit: i64,
    ) -> Result<Vec<(TripStatus, (String, String))>, StoreError> {
        let (all, p1, p2) = party_filter(parties);
        let rows = sqlx::query(
            "select status, updated_at, trip_id from trips t where ($1 is null or state = $1)
               and ($3 = 1 or exists (select 1 from trip_parties p
                                      where p.trip_id = t.trip_id and (p.party = $4 or p.party = $5)))
               and ($6 is null or updated_at < $6 or (updated_at = $6 and trip_id > $7))
             order by updated_at desc, trip_id limit $2",
        )
        .bind(state.map(|s| s.as_str()))
        .bind(limit)
        .bind(all)
        .bind(p1)
        .bind(p2)
        .bind(after.as_ref().map(|a| a.0.clone()))
        .bind(after.as_ref().map(|a| a.1.clone()).unwrap_or_default())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    from_json("trip status", &r.try_get::<String, _>("status")?)?,
                    (r.try_get("updated_at")?, r.try_get("trip_id")?),
                ))
            })
            .collect()
    }

    /// A trip's seal events in event-time order.
    /// A trip's seal events in event-time order, after `after` (the cursor keys of the
    /// last one shown: event time, seq, key), with the cursor keys of each.
    pub async fn events_of_trip(
        &self,
        trip_id: TripId,
        after: Option<(String, i64, String)>,
        limit: i64,
    ) -> Result<Vec<(StoredEvent, (String, i64, String))>, StoreError> {
        let rows = sqlx::query(
            "select canonical, received_at, message_id, event_time, coalesce(seq, -1) as seq_key,
                 event_key, conflicts_dropped, authenticated,
                 (select count(*) from seal_event_conflicts c
                  where c.conflicts_with = seal_events.event_key) as conflicts
             from seal_events
             where trip_id = $1
               and ($3 is null or event_time > $3
                    or (event_time = $3 and (coalesce(seq, -1) > $4
                        or (coalesce(seq, -1) = $4 and event_key > $5))))
             order by event_time, coalesce(seq, -1), event_key limit $2",
        )
        .bind(trip_id.to_string())
        .bind(limit)
        .bind(after.as_ref().map(|a| a.0.clone()))
        .bind(after.as_ref().map_or(0, |a| a.1))
        .bind(after.as_ref().map(|a| a.2.clone()).unwrap_or_default())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let key = (
                    r.try_get::<String, _>("event_time")?,
                    r.try_get::<i64, _>("seq_key")?,
                    r.try_get::<String, _>("event_key")?,
                );
                Ok((
                    StoredEvent {
                        event: from_json("seal event", &r.try_get::<String, _>("canonical")?)?,
                        received_at: r.try_get("received_at")?,
                        message_id: r.try_get("message_id")?,
                        authenticated: r.try_get("authenticated")?,
                        conflicts: r.try_get("conflicts")?,
                        conflicts_dropped: r.try_get("conflicts_dropped")?,
                    },
                    key,
                ))
            })
            .collect()
    }

    /// A trip's kept conflicting events, in event-time order, after `after` (event time,
    /// conflict id), with their keys for the next page's cursor.
    pub async fn conflicts_of_trip(
        &self,
        trip_id: TripId,
        after: Option<(String, String)>,
        limit: i64,
    ) -> Result<Vec<(StoredConflict, (String, String))>, StoreError> {
        let rows = sqlx::query(
            "select c.conflict_id, c.conflicts_with, c.canonical, c.received_at, c.message_id,
                 c.event_time, m.source, m.transport
             from seal_event_conflicts c join messages m on m.message_id = c.message_id
             where c.trip_id = $1
               and ($3 is null or c.event_time > $3
                    or (c.event_time = $3 and c.conflict_id > $4))
             order by c.event_time, c.conflict_id limit $2",
        )
        .bind(trip_id.to_string())
        .bind(limit)
        .bind(after.as_ref().map(|a| a.0.clone()))
        .bind(after.as_ref().map(|a| a.1.clone()).unwrap_or_default())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let conflict_id: String = r.try_get("conflict_id")?;
                let key = (r.try_get::<String, _>("event_time")?, conflict_id.clone());
                Ok((
                    StoredConflict {
                        conflict_id,
                        conflicts_with: r.try_get("conflicts_with")?,
                        event: from_json(
                            "conflicting event",
                            &r.try_get::<String, _>("canonical")?,
                        )?,
                        received_at: r.try_get("received_at")?,
                        message_id: r.try_get("message_id")?,
                        sender: r.try_get("source")?,
                        transport: r.try_get("transport")?,
                    },
                    key,
                ))
            })
            .collect()
    }

    pub async fn alerts(&self, filter: &AlertFilter) -> Result<Vec<Alert>, StoreError> {
        let open = filter.open.map(|o| if o { 1_i64 } else { 0 });
        let (all, p1, p2) = party_filter(filter.parties.as_deref());
        let rows = sqlx::query(
            "select body from alerts a
             where withdrawn_at is null and ($1 is null or trip_id = $1)
               and ($2 is null or ($2 = 1 and cleared_at is null) or ($2 = 0 and cleared_at is not null))
               and ($3 is null or kind = $3)
               and ($5 = 1 or exists (select 1 from trip_parties p
                                      where p.trip_id = a.trip_id and (p.party = $6 or p.party = $7)))
               and ($8 is null or raised_at < $8 or (raised_at = $8 and alert_id > $9))
             order by raised_at desc, alert_id limit $4",
        )
        .bind(filter.trip_id.map(|t| t.to_string()))
        .bind(open)
        .bind(filter.kind.as_deref())
        .bind(filter.limit)
        .bind(all)
        .bind(p1)
        .bind(p2)
        .bind(filter.after.as_ref().map(|a| a.0.clone()))
        .bind(filter.after.as_ref().map(|a| a.1.clone()).unwrap_or_default())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| from_json("alert", &r.try_get::<String, _>("body")?))
            .collect()
    }
}

/// A viewer's parties as query parameters: (all trips?, first party, second party). A
/// partner matches at most two: its filings and its country.
fn party_filter(parties: Option<&[String]>) -> (i64, String, String) {
    match parties {
        None => (1, String::new(), String::new()),
        Some(p) => (
            0,
            p.first().cloned().unwrap_or_default(),
            p.get(1).cloned().unwrap_or_default(),
        ),
    }
}

/// Keeps one version of a declaration as evidence (version 1 when first registered).
pub async fn insert_declaration_version(
    conn: &mut AnyConnection,
    declaration: &TransitDeclaration,
    version: i64,
    trip_id: &str,
    message_id: &str,
    canonical: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into declaration_versions (issuing_authority, declaration_id, version, trip_id,
             message_id, canonical, received_at)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(declaration.issuing_authority.as_str())
    .bind(declaration.declaration_id.as_str())
    .bind(version)
    .bind(trip_id)
    .bind(message_id)
    .bind(canonical)
    .bind(ts(now))
    .execute(conn)
    .await?;
    Ok(())
}

/// The number of the newest stored version of a declaration (0 when none is).
pub async fn latest_declaration_version(
    conn: &mut AnyConnection,
    declaration: &TransitDeclaration,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "select coalesce(max(version), 0) as v from declaration_versions
         where issuing_authority = $1 and declaration_id = $2",
    )
    .bind(declaration.issuing_authority.as_str())
    .bind(declaration.declaration_id.as_str())
    .fetch_one(conn)
    .await?;
    Ok(row.try_get("v")?)
}

/// Makes a new version the declaration a trip is built from.
pub async fn replace_declaration(
    conn: &mut AnyConnection,
    trip_id: &str,
    declaration: &TransitDeclaration,
    canonical: &str,
    message_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "update declarations set canonical = $1, message_id = $2, declared_at = $3
         where trip_id = $4",
    )
    .bind(canonical)
    .bind(message_id)
    .bind(declaration.declared_at.map(ts))
    .bind(trip_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("update trips set corridor_id = $1 where trip_id = $2")
        .bind(declaration.corridor_id.as_ref().map(|c| c.as_str()))
        .bind(trip_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Routes exactly these seals and containers to the trip (after an amendment changed
/// them): rows of seals and containers it no longer carries go.
pub async fn set_trip_routing(
    conn: &mut AnyConnection,
    status: &TripStatus,
) -> Result<(), StoreError> {
    let trip_id = status.trip_id.to_string();
    sqlx::query("delete from trip_seals where trip_id = $1")
        .bind(&trip_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("delete from trip_equipment where trip_id = $1")
        .bind(&trip_id)
        .execute(&mut *conn)
        .await?;
    for e in &status.equipment {
        if e.id.as_str() != ects_core::model::UNASSIGNED_EQUIPMENT {
            add_trip_equipment(conn, &trip_id, e.id.as_str()).await?;
        }
        for seal in &e.seals {
            sqlx::query(
                "insert into trip_seals (trip_id, seal_id, device_id) values ($1, $2, $3)
                 on conflict (trip_id, seal_id) do nothing",
            )
            .bind(&trip_id)
            .bind(seal.id.as_str())
            .bind(seal.device_id.as_ref().map(|d| d.as_str()))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}
