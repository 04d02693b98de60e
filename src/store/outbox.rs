//! The transactional outbox, trip parties, and inbound transport ids.
//!
//! A notification is written here in the transaction of the state change that caused it,
//! once for each partner and channel that takes it. The dispatcher takes due rows under a
//! lease, in order per stream (partner, channel, trip): a row is due only when no earlier
//! row of its stream is waiting, leased or parked, so a stream never overtakes itself, even
//! with several gateway instances on one database.

use std::collections::{BTreeMap, BTreeSet};

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
    /// Attempts so far, this one included: an attempt is counted when its row is taken,
    /// so a message sent by an instance that died before writing the result still counts.
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
    /// `pending`, `sent`, `failed` (parked after too many failures; see retry), or
    /// `superseded` (a status notification a newer one of its stream replaced before it was
    /// tried: never sent).
    pub status: String,
    /// Times it was taken for delivery (counted when taken, before it is sent).
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// The message that replaced this one, when it is `superseded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<i64>,
    /// How many earlier status notifications of its stream this one stands for.
    #[serde(skip_serializing_if = "is_zero")]
    pub coalesced: i64,
    /// The partner's latest answer to this message (an ICEGATE ACK, a WCO DMS
    /// notification); `null` when none came.
    pub answer: Option<AnswerView>,
}

/// A partner's answer to an outbox message, as `GET /v1/outbox` shows the latest.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AnswerView {
    pub accepted: bool,
    /// Why it was refused, in words (`null` when accepted).
    pub reason: Option<String>,
    /// The refusals, each where the partner put it (at most 50 kept).
    #[schema(value_type = Vec<crate::formats::icegate_ack::AckError>)]
    pub errors: serde_json::Value,
    pub received_at: DateTime<Utc>,
    /// The partner's own reference of its answer: the CSN number (ICEGATE), the
    /// notification's functional reference id (WCO).
    pub reference: Option<String>,
    /// Further ids the partner gave: cargo ids (`PCIN:...`), the declaration's (`MRN:...`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// `icegate-ack` or `wco-dms`.
    pub format: String,
    /// The stored answer (`messages`), as evidence.
    pub message_id: String,
    /// How many answers came for this message; the latest is shown.
    pub answers: i64,
}

/// The outbox row an answer names, as found by its message id.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AnsweredRow {
    pub seq: i64,
    pub message_id: String,
    #[serde(skip)]
    pub partner_id: String,
    pub channel: String,
    pub trip_id: String,
    pub declaration_id: String,
    pub notification_id: String,
    pub kind: String,
}

/// The outbox row with this message id (unique, through its index).
pub async fn row_by_message_id(
    conn: &mut AnyConnection,
    message_id: &str,
) -> Result<Option<AnsweredRow>, StoreError> {
    let row = sqlx::query(
        "select seq, message_id, partner_id, channel, trip_id, declaration_id, notification_id,
             kind
         from outbox where message_id = $1",
    )
    .bind(message_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| AnsweredRow {
        seq: r.get(0),
        message_id: r.get(1),
        partner_id: r.get(2),
        channel: r.get(3),
        trip_id: r.get(4),
        declaration_id: r.get(5),
        notification_id: r.get(6),
        kind: r.get(7),
    }))
}

/// An answer to store, linked to the row it answers and to the stored message holding it.
#[derive(Debug, Clone)]
pub struct NewAnswer<'a> {
    pub outbox_seq: i64,
    pub partner_id: &'a str,
    pub message_id: &'a str,
    pub format: &'a str,
    pub received_at: DateTime<Utc>,
    pub accepted: bool,
    pub reason: Option<&'a str>,
    /// JSON array.
    pub errors: &'a str,
    pub reference: Option<&'a str>,
    /// JSON array.
    pub ids: &'a str,
    pub body_sha256: &'a str,
}

pub async fn insert_answer(conn: &mut AnyConnection, a: &NewAnswer<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "insert into outbox_answers (outbox_seq, partner_id, message_id, format, received_at,
             outcome, reason, errors, reference, ids, body_sha256)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(a.outbox_seq)
    .bind(a.partner_id)
    .bind(a.message_id)
    .bind(a.format)
    .bind(ts(a.received_at))
    .bind(if a.accepted { "accepted" } else { "rejected" })
    .bind(a.reason)
    .bind(a.errors)
    .bind(a.reference)
    .bind(a.ids)
    .bind(a.body_sha256)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn is_zero(n: &i64) -> bool {
    *n == 0
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

/// Removes a trip's trader parties (`declarant:`, `carrier:`), before an amendment's are
/// written.
pub async fn remove_trader_parties(
    conn: &mut AnyConnection,
    trip_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "delete from trip_parties where trip_id = $1
             and (substr(party, 1, 10) = 'declarant:' or substr(party, 1, 8) = 'carrier:')",
    )
    .bind(trip_id)
    .execute(&mut *conn)
    .await?;
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
///
/// When `STATUS_WAITING_CAP` status notifications of its stream already wait untried (never
/// attempted, not leased), a new one supersedes them: the partner is told the trip's latest
/// state once instead of every state it passed through while its queue was long; the new
/// row counts them (`coalesced`). A state milestone (`arrived`, `released`, `cancelled`) is
/// never superseded: the partner gets each one, and only the statuses in between are
/// coalesced. Alerts, releases and handovers are never superseded.
pub async fn enqueue(
    conn: &mut AnyConnection,
    row: &NewOutbox<'_>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let key: StreamKey = (
        row.partner_id.to_owned(),
        row.channel.to_owned(),
        row.trip_id.clone(),
    );
    // On PostgreSQL the stream's head row is locked first: a head moving on concurrently
    // (its message sent) then sees this message once this transaction commits.
    let head = locked_head(conn, &key).await?;
    let facts = Facts::of(row.canonical);
    let inserted = sqlx::query(
        "insert into outbox (message_id, partner_id, channel, trip_id, declaration_id,
             notification_id, kind, format, canonical, status, attempts, next_attempt_at,
             created_at, alert_id, milestone)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $10, $11, $12)
         on conflict (partner_id, channel, notification_id) do nothing
         returning seq",
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
    .bind(facts.alert.as_ref().and_then(|a| a.alert_id.clone()))
    .bind(i64::from(row.kind == "status" && facts.is_milestone()))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(inserted) = inserted else {
        return Ok(false);
    };
    let seq: i64 = inserted.get(0);
    let head_before = head;
    let mut head = head;
    if row.kind == "status"
        && untried_status(conn, &key, head.unwrap_or(seq), seq).await? >= STATUS_WAITING_CAP
    {
        let superseded = sqlx::query(
            "update outbox set superseded_by = $1
             where partner_id = $2 and channel = $3 and trip_id = $4
               and seq >= $5 and seq < $1 and kind = 'status' and status = 'pending'
               and attempts = 0 and superseded_by is null and milestone = 0
               and (lease_until is null or lease_until < $6)
             returning coalesced",
        )
        .bind(seq)
        .bind(&key.0)
        .bind(&key.1)
        .bind(&key.2)
        .bind(head.unwrap_or(seq))
        .bind(ts(now))
        .fetch_all(&mut *conn)
        .await?;
        if !superseded.is_empty() {
            let count = superseded.iter().fold(0_i64, |n, r| {
                n.saturating_add(1).saturating_add(r.get::<i64, _>(0))
            });
            sqlx::query("update outbox set coalesced = $1 where seq = $2")
                .bind(count)
                .bind(seq)
                .execute(&mut *conn)
                .await?;
            // The head may have been one of them.
            if let Some(h) = head {
                head = next_waiting(conn, &key, h).await?;
            }
        }
    }
    match head {
        Some(h) if h != head_before.unwrap_or(h) => set_head(conn, &key, Some(h)).await?,
        _ => {
            // The lower of what is there and this message: two transactions queueing on
            // one new stream at once leave its first message as its head.
            sqlx::query(
                "insert into outbox_streams (partner_id, channel, trip_id, head_seq)
                 values ($1, $2, $3, $4)
                 on conflict (partner_id, channel, trip_id) do update set head_seq =
                     case when excluded.head_seq < outbox_streams.head_seq
                          then excluded.head_seq else outbox_streams.head_seq end",
            )
            .bind(&key.0)
            .bind(&key.1)
            .bind(&key.2)
            .bind(seq)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(true)
}

/// What the outbox keeps beside a notification's canonical text, read from it.
#[derive(Debug, Default, serde::Deserialize)]
struct Facts {
    /// The trip's state (a status notification's new state).
    state: Option<String>,
    alert: Option<AlertFacts>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct AlertFacts {
    alert_id: Option<String>,
}

impl Facts {
    /// Unreadable text (never written by the gateway) has no facts.
    fn of(canonical: &str) -> Self {
        serde_json::from_str(canonical).unwrap_or_default()
    }

    /// A state every partner must be told of, however many statuses pile up.
    fn is_milestone(&self) -> bool {
        matches!(
            self.state.as_deref(),
            Some("arrived" | "released" | "cancelled")
        )
    }
}

/// The notifications (any phase, any recurrence) of an alert: the partners and channels
/// told of it, with their format.
pub async fn told_of_alert(
    conn: &mut AnyConnection,
    trip_id: &str,
    alert_id: &str,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let rows = sqlx::query(
        "select distinct partner_id, channel, format from outbox
         where trip_id = $1 and alert_id = $2 and superseded_by is null
         order by partner_id, channel",
    )
    .bind(trip_id)
    .bind(alert_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Successors taken with each stream head in one claim: a deep stream is worked in runs of
/// this many, in order, while the other streams keep their turn.
const RUN_PER_STREAM: i64 = 50;

/// The stream a row belongs to.
type StreamKey = (String, String, String);

const ROW_COLUMNS: &str = "o.seq, o.message_id, o.partner_id, o.channel, o.trip_id,
    o.declaration_id, o.notification_id, o.kind, o.format, o.canonical, o.body,
    o.content_type, o.attempts, o.status, o.lease_until, o.superseded_by";

/// A row as read for a claim, before its lease is taken.
struct Candidate {
    row: OutboxRow,
    status: String,
    leased_until: Option<String>,
    superseded: bool,
}

fn candidate(r: &sqlx::any::AnyRow) -> Candidate {
    Candidate {
        row: OutboxRow {
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
            lease_token: String::new(),
        },
        status: r.get(13),
        leased_until: r.get(14),
        superseded: r.get::<Option<i64>, _>(15).is_some(),
    }
}

/// The due heads of one partner's streams (or of every partner's), oldest first, and the
/// run of waiting messages behind each: read through `outbox_streams`, never by searching
/// a stream's backlog.
async fn due_runs(
    conn: &mut AnyConnection,
    backend: Backend,
    partner: Option<&str>,
    now: &str,
    limit: u32,
    channels: &[&str],
) -> Result<Vec<Vec<OutboxRow>>, StoreError> {
    // On PostgreSQL a head another instance is taking right now is passed over, not waited
    // for; its lease, once committed, keeps it out of later claims.
    let lock = if backend == Backend::Postgres {
        " for update of o skip locked"
    } else {
        ""
    };
    // `cross join` keeps SQLite's plan on the heads (it would otherwise walk every due
    // message through `outbox_due` and look its stream up).
    let heads = sqlx::query(sqlx::AssertSqlSafe(format!(
        "select {ROW_COLUMNS}
         from outbox_streams s cross join outbox o
         where o.seq = s.head_seq and ($1 is null or s.partner_id = $1)
           and o.status = 'pending' and o.next_attempt_at <= $2
           and (o.lease_until is null or o.lease_until < $2)
           and (o.channel = $3 or o.channel = $4)
         order by s.head_seq
         limit $5{lock}"
    )))
    .bind(partner)
    .bind(now)
    .bind(channels.first().copied().unwrap_or("none"))
    .bind(channels.get(1).copied().unwrap_or("none"))
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut budget = i64::from(limit) - heads.len() as i64;
    let mut runs = Vec::with_capacity(heads.len());
    for head in &heads {
        let head = candidate(head).row;
        let mut run = vec![];
        let take = budget.min(RUN_PER_STREAM);
        if take > 0 {
            // What waits behind the head, through the stream index; the run stops at the
            // first message that is not plainly waiting.
            let rest = sqlx::query(sqlx::AssertSqlSafe(format!(
                "select {ROW_COLUMNS} from outbox o
                 where o.partner_id = $1 and o.channel = $2 and o.trip_id = $3 and o.seq > $4
                   and o.status <> 'sent' and o.superseded_by is null
                 order by o.seq
                 limit $5"
            )))
            .bind(&head.partner_id)
            .bind(&head.channel)
            .bind(&head.trip_id)
            .bind(head.seq)
            .bind(take)
            .fetch_all(&mut *conn)
            .await?;
            for r in &rest {
                let c = candidate(r);
                if c.status != "pending"
                    || c.superseded
                    || c.leased_until.as_deref().is_some_and(|l| l >= now)
                {
                    break;
                }
                run.push(c.row);
            }
            budget -= run.len() as i64;
        }
        run.insert(0, head);
        runs.push(run);
    }
    Ok(runs)
}

/// Takes due messages under a lease until `lease_until`: the head of each stream that is
/// due, with the run behind it, oldest heads first, at most `limit` in all. With `partner`,
/// only that partner's streams (each partner is worked on its own, so a slow one does not
/// hold the others back).
///
/// On SQLite the reading is done outside the process write gate; the gate is held only for
/// the lease update. The update takes a row only if it is still free and waiting, and a
/// stream's run is kept only from its head on without a gap, so a stale read never lets a
/// stream overtake itself.
///
/// Taking a row counts an attempt: whatever happens after (sent, failed, or the instance
/// gone before it wrote the result), the row says it may have gone out. A row given back
/// untried ([`release`]) gives its attempt back.
pub async fn claim(
    store: &Store,
    partner: Option<&str>,
    now: DateTime<Utc>,
    limit: u32,
    lease_until: DateTime<Utc>,
    channels: &[&str],
) -> Result<Vec<OutboxRow>, StoreError> {
    let now_text = ts(now);
    let backend = store.backend();
    let (runs, mut tx) = match backend {
        Backend::Sqlite => {
            let mut conn = store.pool().acquire().await?;
            let runs = due_runs(&mut conn, backend, partner, &now_text, limit, channels).await?;
            drop(conn);
            if runs.is_empty() {
                return Ok(Vec::new());
            }
            (runs, store.begin_write().await?)
        }
        Backend::Postgres => {
            let mut tx = store.begin_write().await?;
            let runs = due_runs(&mut tx, backend, partner, &now_text, limit, channels).await?;
            if runs.is_empty() {
                tx.rollback().await?;
                return Ok(Vec::new());
            }
            (runs, tx)
        }
    };
    let token = uuid::Uuid::now_v7().to_string();
    // The numbers come from the database, so they are safe to write into the statement.
    let seqs: Vec<String> = runs.iter().flatten().map(|r| r.seq.to_string()).collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "update outbox set lease_until = $1, lease_token = $2, attempts = attempts + 1
         where seq in ({}) and status = 'pending' and superseded_by is null
           and (lease_until is null or lease_until < $3)",
        seqs.join(",")
    )))
    .bind(ts(lease_until))
    .bind(&token)
    .bind(&now_text)
    .execute(&mut **tx)
    .await?;
    // With the attempts as they are now (the rows were read before the lease was taken).
    let got: BTreeMap<i64, i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "select seq, attempts from outbox where seq in ({}) and lease_token = $1",
        seqs.join(",")
    )))
    .bind(&token)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
    .collect();
    let mut taken = Vec::new();
    let mut dropped = Vec::new();
    for run in runs {
        // From the head on, as long as each row was ours to take.
        let mut whole = true;
        for row in run {
            if let (true, Some(&attempts)) = (whole, got.get(&row.seq)) {
                taken.push(OutboxRow {
                    lease_token: token.clone(),
                    attempts,
                    ..row
                });
            } else {
                whole = false;
                if got.contains_key(&row.seq) {
                    dropped.push(row.seq.to_string());
                }
            }
        }
    }
    if !dropped.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "update outbox set lease_until = null, lease_token = null, attempts = attempts - 1
             where lease_token = $1 and seq in ({})",
            dropped.join(",")
        )))
        .bind(&token)
        .execute(&mut **tx)
        .await?;
    }
    if taken.is_empty() {
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    tx.commit().await?;
    Ok(taken)
}

/// The partners with a stream waiting: a dispatcher works the ones it has no worker for
/// (a partner removed from the configuration) too.
pub async fn partners_waiting(store: &Store) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query("select distinct partner_id from outbox_streams")
        .fetch_all(store.pool())
        .await?;
    Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
}

/// Moves a stream's head past `sent` (sent just now): to the next message waiting, or
/// away when there is none. On PostgreSQL the head row is locked first and the next
/// message looked for in a later statement, so a message queued by a concurrent
/// transaction (which locks the head row too) is always seen.
async fn advance_head(
    conn: &mut AnyConnection,
    key: &StreamKey,
    sent: i64,
) -> Result<(), StoreError> {
    let head = locked_head(conn, key).await?;
    if head.is_some_and(|h| h > sent) {
        return Ok(());
    }
    let next = next_waiting(conn, key, sent.saturating_add(1)).await?;
    set_head(conn, key, next).await
}

/// Untried status notifications a stream keeps waiting (milestones not counted); one more
/// supersedes them all.
pub const STATUS_WAITING_CAP: i64 = 8;

/// How many untried status notifications wait in a stream before `below` (counted up to the
/// cap only).
async fn untried_status(
    conn: &mut AnyConnection,
    key: &StreamKey,
    from: i64,
    below: i64,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "select count(*) from (
             select 1 from outbox
             where partner_id = $1 and channel = $2 and trip_id = $3 and seq >= $4 and seq < $5
               and kind = 'status' and status = 'pending' and attempts = 0
               and superseded_by is null and milestone = 0
             limit $6) w",
    )
    .bind(&key.0)
    .bind(&key.1)
    .bind(&key.2)
    .bind(from)
    .bind(below)
    .bind(STATUS_WAITING_CAP)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.get(0))
}

/// A stream's head, locked on PostgreSQL until the transaction ends (SQLite has one
/// writer at a time already).
async fn locked_head(conn: &mut AnyConnection, key: &StreamKey) -> Result<Option<i64>, StoreError> {
    let lock = if conn.backend_name() == "PostgreSQL" {
        " for update"
    } else {
        ""
    };
    Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
        "select head_seq from outbox_streams
         where partner_id = $1 and channel = $2 and trip_id = $3{lock}"
    )))
    .bind(&key.0)
    .bind(&key.1)
    .bind(&key.2)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| r.get(0)))
}

/// The stream's first message from `from` on that is not sent nor superseded.
async fn next_waiting(
    conn: &mut AnyConnection,
    key: &StreamKey,
    from: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query(
        "select seq from outbox
         where partner_id = $1 and channel = $2 and trip_id = $3 and seq >= $4
           and status <> 'sent' and superseded_by is null
         order by seq limit 1",
    )
    .bind(&key.0)
    .bind(&key.1)
    .bind(&key.2)
    .bind(from)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| r.get(0)))
}

async fn set_head(
    conn: &mut AnyConnection,
    key: &StreamKey,
    head: Option<i64>,
) -> Result<(), StoreError> {
    match head {
        Some(seq) => {
            sqlx::query(
                "insert into outbox_streams (partner_id, channel, trip_id, head_seq)
                 values ($1, $2, $3, $4)
                 on conflict (partner_id, channel, trip_id) do update set head_seq = excluded.head_seq",
            )
            .bind(&key.0)
            .bind(&key.1)
            .bind(&key.2)
            .bind(seq)
            .execute(&mut *conn)
            .await?;
        }
        None => {
            sqlx::query(
                "delete from outbox_streams where partner_id = $1 and channel = $2 and trip_id = $3",
            )
            .bind(&key.0)
            .bind(&key.1)
            .bind(&key.2)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Mends the stream heads: each stream with a message waiting (not sent, not superseded)
/// gets its earliest as head, and a head of a stream with none is removed. A crash or a
/// hand edit may have left a head missing, on a sent message, or past a waiting one, and
/// such a stream would wait for ever. Run at start; reads only the waiting messages
/// (through `outbox_waiting`). Returns how many heads it mended.
pub async fn repair_heads(store: &Store) -> Result<u64, StoreError> {
    let mut tx = store.begin_write().await?;
    if store.backend() == Backend::Postgres {
        // Another instance queueing or moving a head meanwhile waits for this (each locks
        // the head row it works on first), so what is read here stays true until commit.
        sqlx::query("lock table outbox_streams in exclusive mode")
            .execute(&mut **tx)
            .await?;
    }
    let wrong = sqlx::query(
        "select w.partner_id, w.channel, w.trip_id, w.first_seq from (
             select partner_id, channel, trip_id, min(seq) as first_seq from outbox
             where status <> 'sent' and superseded_by is null
             group by partner_id, channel, trip_id) w
         left join outbox_streams s
             on s.partner_id = w.partner_id and s.channel = w.channel and s.trip_id = w.trip_id
         where s.head_seq is null or s.head_seq <> w.first_seq",
    )
    .fetch_all(&mut **tx)
    .await?;
    for r in &wrong {
        let key: StreamKey = (r.get(0), r.get(1), r.get(2));
        set_head(&mut tx, &key, Some(r.get(3))).await?;
    }
    let stale = sqlx::query(
        "delete from outbox_streams where not exists (
             select 1 from outbox o
             where o.partner_id = outbox_streams.partner_id and o.channel = outbox_streams.channel
               and o.trip_id = outbox_streams.trip_id and o.status <> 'sent'
               and o.superseded_by is null)",
    )
    .execute(&mut **tx)
    .await?;
    tx.commit().await?;
    Ok((wrong.len() as u64).saturating_add(stale.rows_affected()))
}

/// Gives rows back untried (their stream stopped earlier in the batch, or the round ran
/// out of lease), if still ours, with the attempt their taking counted.
pub async fn release(store: &Store, rows: &[OutboxRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin_write().await?;
    for row in rows {
        sqlx::query(
            "update outbox set lease_until = null, lease_token = null, attempts = attempts - 1
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

/// Tries of [`record_attempts`] when PostgreSQL breaks a deadlock or a serialization
/// conflict by aborting its transaction.
const RECORD_TRIES: u32 = 5;
/// The pause before the second try; it doubles (with jitter) up to [`RECORD_MAX_PAUSE_MS`].
const RECORD_FIRST_PAUSE_MS: u64 = 20;
const RECORD_MAX_PAUSE_MS: u64 = 500;

/// Records a wave of attempts in one transaction.
///
/// Rows are locked in the order of their sequence numbers, then the heads of the streams
/// that move on in the order of their keys, so two transactions recording overlapping
/// rows (an instance whose lease ran out, and the one that took over) wait for each other
/// instead of deadlocking. Should PostgreSQL still abort the transaction (deadlock
/// `40P01`, serialization failure `40001`), it is tried again, at most `RECORD_TRIES`
/// times, after a short doubling pause.
pub async fn record_attempts(
    store: &Store,
    attempts: &[AttemptRecord<'_>],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut ordered: Vec<&AttemptRecord<'_>> = attempts.iter().collect();
    ordered.sort_by_key(|(row, _, _)| row.seq);
    let mut pause = RECORD_FIRST_PAUSE_MS;
    let mut tried = 1;
    loop {
        match record_attempts_once(store, &ordered, now).await {
            Err(e) if e.is_aborted_by_conflict() && tried < RECORD_TRIES => {
                tracing::warn!(tried, pause_ms = pause, error.cause_chain = %crate::telemetry::error_chain(&e), "recording outbox attempts conflicted: trying again");
                let half = pause / 2;
                let random = (uuid::Uuid::now_v7().as_u128() & 0xffff) as u64;
                tokio::time::sleep(std::time::Duration::from_millis(
                    half + random % (pause - half + 1),
                ))
                .await;
                pause = pause.saturating_mul(2).min(RECORD_MAX_PAUSE_MS);
                tried += 1;
            }
            done => return done,
        }
    }
}

async fn record_attempts_once(
    store: &Store,
    ordered: &[&AttemptRecord<'_>],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut tx = store.begin_write().await?;
    if store.backend() == Backend::Postgres && !ordered.is_empty() {
        // The numbers come from the database, so they are safe to write into the statement.
        let seqs: Vec<String> = ordered.iter().map(|(r, _, _)| r.seq.to_string()).collect();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "select seq from outbox where seq in ({}) order by seq for update",
            seqs.join(",")
        )))
        .fetch_all(&mut **tx)
        .await?;
    }
    // The streams to move on, each with its rows sent now, in key order.
    let mut moved: BTreeMap<StreamKey, Vec<i64>> = BTreeMap::new();
    for (row, body, result) in ordered {
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
        let done = sqlx::query(
            "update outbox set status = $1,
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
        if status == "sent" && done.rows_affected() == 1 {
            moved
                .entry((
                    row.partner_id.clone(),
                    row.channel.clone(),
                    row.trip_id.clone(),
                ))
                .or_default()
                .push(row.seq);
        }
    }
    for (key, sent) in &moved {
        for seq in sent {
            advance_head(&mut tx, key, *seq).await?;
        }
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
    /// By their latest answer: `accepted`, `rejected`, or `none` (no answer yet).
    pub answer: Option<String>,
    pub limit: i64,
}

pub async fn list(store: &Store, filter: &OutboxFilter) -> Result<Vec<OutboxEntry>, StoreError> {
    // Each row's latest answer through `outbox_answers_by_row`.
    let rows = sqlx::query(
        "select o.seq, o.message_id, o.partner_id, o.channel, o.trip_id, o.declaration_id,
             o.notification_id, o.kind, o.format, o.status, o.attempts, o.next_attempt_at,
             o.last_error, o.created_at, o.sent_at, o.superseded_by, o.coalesced,
             a.outcome, a.reason, a.errors, a.received_at, a.reference, a.ids, a.format,
             a.message_id,
             (select count(*) from outbox_answers c where c.outbox_seq = o.seq)
         from outbox o
         left join outbox_answers a on a.id =
             (select max(l.id) from outbox_answers l where l.outbox_seq = o.seq)
         where ($1 is null
                or ($1 = 'superseded' and o.superseded_by is not null)
                or (o.status = $1 and o.superseded_by is null))
           and ($2 is null or o.partner_id = $2)
           and ($3 is null or o.trip_id = $3) and o.seq > $4
           and ($6 is null or ($6 = 'none' and a.id is null) or a.outcome = $6)
         order by o.seq
         limit $5",
    )
    .bind(filter.status.as_deref())
    .bind(filter.partner_id.as_deref())
    .bind(filter.trip_id.as_deref())
    .bind(filter.after.unwrap_or(0))
    .bind(filter.limit)
    .bind(filter.answer.as_deref())
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(entry).collect()
}

fn entry(r: &sqlx::any::AnyRow) -> Result<OutboxEntry, StoreError> {
    let superseded_by: Option<i64> = r.get(15);
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
        status: match superseded_by {
            Some(_) => "superseded".to_owned(),
            None => r.get(9),
        },
        attempts: r.get(10),
        next_attempt_at: parse_ts(&r.get::<String, _>(11))?,
        last_error: r.get(12),
        created_at: parse_ts(&r.get::<String, _>(13))?,
        sent_at: r
            .get::<Option<String>, _>(14)
            .map(|t| parse_ts(&t))
            .transpose()?,
        superseded_by,
        coalesced: r.get(16),
        answer: answer_view(r)?,
    })
}

fn answer_view(r: &sqlx::any::AnyRow) -> Result<Option<AnswerView>, StoreError> {
    let Some(outcome) = r.get::<Option<String>, _>(17) else {
        return Ok(None);
    };
    let json = |i: usize| -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&r.get::<String, _>(i))
            .map_err(|e| StoreError::Corrupt(format!("a stored answer is not readable: {e}")))
    };
    let ids = match json(22)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Ok(Some(AnswerView {
        accepted: outcome == "accepted",
        reason: r.get(18),
        errors: json(19)?,
        received_at: parse_ts(&r.get::<String, _>(20))?,
        reference: r.get(21),
        ids,
        format: r.get(23),
        message_id: r.get(24),
        answers: r.get(25),
    }))
}

/// Puts a parked row back in line with a fresh set of attempts. `None` if there is no such
/// row; `Some(false)` if it is not parked.
pub async fn retry(
    store: &Store,
    seq: i64,
    now: DateTime<Utc>,
) -> Result<Option<bool>, StoreError> {
    let mut tx = store.begin_write().await?;
    let found =
        sqlx::query("select status, partner_id, channel, trip_id from outbox where seq = $1")
            .bind(seq)
            .fetch_optional(&mut **tx)
            .await?;
    let Some(found) = found else {
        return Ok(None);
    };
    let status: String = found.get(0);
    let key: StreamKey = (found.get(1), found.get(2), found.get(3));
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
    // A parked message is its stream's head already; this only mends a missing head.
    let head = next_waiting(&mut tx, &key, 0).await?;
    set_head(&mut tx, &key, head).await?;
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
