//! The transactional outbox, trip parties, and inbound transport ids.
//!
//! A notification is written here in the transaction of the state change that caused it,
//! once for each partner and channel that takes it. The dispatcher takes due rows under a
//! lease, in order per stream (partner, channel, trip): a row is due only when no earlier
//! row of its stream is waiting, leased or parked, so a stream never overtakes itself, even
//! with several gateway instances on one database.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::{Backend, Store, StoreError, parse_ts, ts};

/// A notification to deliver to one partner over one channel.
#[derive(Debug, Clone)]
pub struct NewOutbox<'a> {
    pub message_id: String,
    pub partner_id: &'a str,
    pub channel: &'static str,
    pub trip_id: String,
    pub declaration_id: &'a str,
    pub notification_id: &'a str,
    pub kind: &'static str,
    pub format: &'a str,
    pub canonical: &'a str,
}

/// A row as the dispatcher takes it.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub seq: i64,
    pub message_id: String,
    pub partner_id: String,
    pub channel: String,
    pub trip_id: String,
    pub declaration_id: String,
    pub notification_id: String,
    pub kind: String,
    pub format: String,
    pub canonical: String,
    /// Written in the partner's format at the first attempt, and sent as is afterwards.
    pub body: Option<Vec<u8>>,
    pub content_type: Option<String>,
    pub attempts: i64,
    /// The lease this row was taken under; results are written only under it.
    pub lease_token: String,
}

/// A row as `GET /v1/outbox` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutboxEntry {
    pub seq: i64,
    pub message_id: String,
    pub partner_id: String,
    /// `amqp` (the `ects.out` exchange) or `http` (the partner's endpoint).
    pub channel: String,
    pub trip_id: String,
    pub declaration_id: String,
    pub notification_id: String,
    /// `status`, `alert`, `release`, `handover`.
    pub kind: String,
    pub format: String,
    /// `pending`, `sent`, or `failed` (parked after too many failures; see retry).
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
}

pub async fn insert_parties(
    conn: &mut AnyConnection,
    trip_id: &str,
    parties: &BTreeSet<String>,
) -> Result<(), StoreError> {
    for party in parties {
        sqlx::query(
            "insert into trip_parties (trip_id, party) values ($1, $2) on conflict do nothing",
        )
        .bind(trip_id)
        .bind(party)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub async fn trip_parties(
    conn: &mut AnyConnection,
    trip_id: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query("select party from trip_parties where trip_id = $1")
        .bind(trip_id)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
}

/// Whether the trip has one of these parties.
pub async fn trip_has_party(
    store: &Store,
    trip_id: &str,
    parties: &[String],
) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "select 1 from trip_parties where trip_id = $1 and (party = $2 or party = $3) limit 1",
    )
    .bind(trip_id)
    .bind(parties.first().map(String::as_str).unwrap_or(""))
    .bind(parties.get(1).map(String::as_str).unwrap_or(""))
    .fetch_optional(store.pool())
    .await?;
    Ok(row.is_some())
}

/// Adds a notification unless this partner and channel already have it (a replay of the
/// trip that yields the same notification again).
pub async fn enqueue(
    conn: &mut AnyConnection,
    row: &NewOutbox<'_>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "insert into outbox (message_id, partner_id, channel, trip_id, declaration_id,
             notification_id, kind, format, canonical, status, attempts, next_attempt_at,
             created_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $10)
         on conflict (partner_id, channel, notification_id) do nothing",
    )
    .bind(&row.message_id)
    .bind(row.partner_id)
    .bind(row.channel)
    .bind(&row.trip_id)
    .bind(row.declaration_id)
    .bind(row.notification_id)
    .bind(row.kind)
    .bind(row.format)
    .bind(row.canonical)
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A fixed key for PostgreSQL's advisory lock that serialises taking rows.
const CLAIM_LOCK: i64 = 0x4543_5453_4f42; // "ECTSOB"

/// Takes up to `limit` due rows, in order, and leases them until `lease_until`.
pub async fn claim(
    store: &Store,
    now: DateTime<Utc>,
    limit: u32,
    lease_until: DateTime<Utc>,
    channels: &[&str],
) -> Result<Vec<OutboxRow>, StoreError> {
    let mut tx = store.begin_write().await?;
    if store.backend() == Backend::Postgres {
        // Claims are serialised, so a claim always sees the leases of the one before and
        // no stream is taken twice at once.
        sqlx::query("select pg_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    let now_text = ts(now);
    let rows = sqlx::query(
        "select seq, message_id, partner_id, channel, trip_id, declaration_id, notification_id,
             kind, format, canonical, body, content_type, attempts
         from outbox o
         where o.status = 'pending' and o.next_attempt_at <= $1
           and (o.lease_until is null or o.lease_until < $1)
           and (o.channel = $3 or o.channel = $4)
           and not exists (
             select 1 from outbox p
             where p.partner_id = o.partner_id and p.channel = o.channel
               and p.trip_id = o.trip_id and p.seq < o.seq
               and (p.status = 'failed'
                    or (p.status = 'pending'
                        and (p.next_attempt_at > $1
                             or (p.lease_until is not null and p.lease_until >= $1)))))
         order by o.seq
         limit $2",
    )
    .bind(&now_text)
    .bind(i64::from(limit))
    .bind(channels.first().copied().unwrap_or("none"))
    .bind(channels.get(1).copied().unwrap_or("none"))
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        // Nothing written: no commit, so nobody is woken for nothing.
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    let token = uuid::Uuid::now_v7().to_string();
    let rows: Vec<OutboxRow> = rows
        .iter()
        .map(|r| OutboxRow {
            seq: r.get(0),
            message_id: r.get(1),
            partner_id: r.get(2),
            channel: r.get(3),
            trip_id: r.get(4),
            declaration_id: r.get(5),
            notification_id: r.get(6),
            kind: r.get(7),
            format: r.get(8),
            canonical: r.get(9),
            body: r.get(10),
            content_type: r.get(11),
            attempts: r.get(12),
            lease_token: token.clone(),
        })
        .collect();
    // The numbers come from the database, so they are safe to write into the statement.
    let seqs: Vec<String> = rows.iter().map(|r| r.seq.to_string()).collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "update outbox set lease_until = $1, lease_token = $2 where seq in ({})",
        seqs.join(",")
    )))
    .bind(ts(lease_until))
    .bind(&token)
    .execute(&mut **tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Gives rows back untried (their stream stopped earlier in the batch), if still ours.
pub async fn release(store: &Store, rows: &[OutboxRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin_write().await?;
    for row in rows {
        sqlx::query(
            "update outbox set lease_until = null, lease_token = null
             where seq = $1 and lease_token = $2",
        )
        .bind(row.seq)
        .bind(&row.lease_token)
        .execute(&mut **tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What became of one attempt.
#[derive(Debug, Clone)]
pub enum Attempted {
    Sent,
    /// Try again at this time.
    Retry {
        error: String,
        at: DateTime<Utc>,
    },
    /// Parked until someone retries it.
    Parked {
        error: String,
    },
}

/// One attempt: the row, the body written for it (kept if the row had none), the result.
pub type AttemptRecord<'a> = (&'a OutboxRow, Option<(&'a [u8], &'a str)>, &'a Attempted);

/// Records a wave of attempts in one transaction.
pub async fn record_attempts(
    store: &Store,
    attempts: &[AttemptRecord<'_>],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut tx = store.begin_write().await?;
    for (row, body, result) in attempts {
        // Only under the lease the row was taken with: an instance whose lease ran out
        // (and was taken over) does not overwrite the new holder's result.
        if row.body.is_none()
            && let Some((body, content_type)) = body
        {
            sqlx::query(
                "update outbox set body = $1, content_type = $2 where seq = $3 and lease_token = $4",
            )
            .bind(*body)
            .bind(*content_type)
            .bind(row.seq)
            .bind(&row.lease_token)
            .execute(&mut **tx)
            .await?;
        }
        let (status, error, next) = match result {
            Attempted::Sent => ("sent", None, now),
            Attempted::Retry { error, at } => ("pending", Some(error.as_str()), *at),
            Attempted::Parked { error } => ("failed", Some(error.as_str()), now),
        };
        sqlx::query(
            "update outbox set status = $1, attempts = attempts + 1,
                 last_error = coalesce($2, last_error), next_attempt_at = $3, lease_until = null,
                 lease_token = null, sent_at = $4
             where seq = $5 and lease_token = $6",
        )
        .bind(status)
        .bind(error)
        .bind(ts(next))
        .bind((status == "sent").then(|| ts(now)))
        .bind(row.seq)
        .bind(&row.lease_token)
        .execute(&mut **tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Filters of `GET /v1/outbox`.
#[derive(Debug, Clone, Default)]
pub struct OutboxFilter {
    pub status: Option<String>,
    pub partner_id: Option<String>,
    pub trip_id: Option<String>,
    /// Only rows after this sequence number (paging).
    pub after: Option<i64>,
    pub limit: i64,
}

pub async fn list(store: &Store, filter: &OutboxFilter) -> Result<Vec<OutboxEntry>, StoreError> {
    let rows = sqlx::query(
        "select seq, message_id, partner_id, channel, trip_id, declaration_id, notification_id,
             kind, format, status, attempts, next_attempt_at, last_error, created_at, sent_at
         from outbox
         where ($1 is null or status = $1) and ($2 is null or partner_id = $2)
           and ($3 is null or trip_id = $3) and seq > $4
         order by seq
         limit $5",
    )
    .bind(filter.status.as_deref())
    .bind(filter.partner_id.as_deref())
    .bind(filter.trip_id.as_deref())
    .bind(filter.after.unwrap_or(0))
    .bind(filter.limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(entry).collect()
}

fn entry(r: &sqlx::any::AnyRow) -> Result<OutboxEntry, StoreError> {
    Ok(OutboxEntry {
        seq: r.get(0),
        message_id: r.get(1),
        partner_id: r.get(2),
        channel: r.get(3),
        trip_id: r.get(4),
        declaration_id: r.get(5),
        notification_id: r.get(6),
        kind: r.get(7),
        format: r.get(8),
        status: r.get(9),
        attempts: r.get(10),
        next_attempt_at: parse_ts(&r.get::<String, _>(11))?,
        last_error: r.get(12),
        created_at: parse_ts(&r.get::<String, _>(13))?,
        sent_at: r
            .get::<Option<String>, _>(14)
            .map(|t| parse_ts(&t))
            .transpose()?,
    })
}

/// Puts a parked row back in line with a fresh set of attempts. `None` if there is no such
/// row; `Some(false)` if it is not parked.
pub async fn retry(
    store: &Store,
    seq: i64,
    now: DateTime<Utc>,
) -> Result<Option<bool>, StoreError> {
    let mut tx = store.begin_write().await?;
    let status: Option<String> = sqlx::query("select status from outbox where seq = $1")
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.get(0));
    let Some(status) = status else {
        return Ok(None);
    };
    if status != "failed" {
        return Ok(Some(false));
    }
    sqlx::query(
        "update outbox set status = 'pending', attempts = 0, next_attempt_at = $1,
             lease_until = null, lease_token = null
         where seq = $2",
    )
    .bind(ts(now))
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    tx.commit().await?;
    Ok(Some(true))
}

/// The message this sender had applied under the same transport id, if any.
#[derive(Debug, Clone)]
pub struct PriorInbound {
    pub body_sha256: String,
    pub received_at: String,
}

pub async fn prior_inbound(
    store: &Store,
    sender: &str,
    transport_message_id: &str,
) -> Result<Option<PriorInbound>, StoreError> {
    let row = sqlx::query(
        "select body_sha256, received_at from messages
         where source = $1 and transport_message_id = $2 and outcome = 'accepted'
         limit 1",
    )
    .bind(sender)
    .bind(transport_message_id)
    .fetch_optional(store.pool())
    .await?;
    Ok(row.map(|r| PriorInbound {
        body_sha256: r.get(0),
        received_at: r.get(1),
    }))
}
