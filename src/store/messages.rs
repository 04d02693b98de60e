//! Raw messages, inbound and outbound, kept as evidence with their outcome and answer.

use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

use super::{Store, StoreError, ts};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One message as it crossed the boundary.
#[derive(Debug, Clone)]
pub struct MessageRecord<'a> {
    pub message_id: String,
    pub direction: &'static str,
    pub format: &'a str,
    pub transport: &'a str,
    pub source: &'a str,
    pub content_type: Option<&'a str>,
    pub received_at: DateTime<Utc>,
    pub body: &'a [u8],
    pub body_sha256: &'a str,
    pub parsed: Option<String>,
    pub outcome: Outcome,
    pub problem: Option<String>,
    pub response_status: Option<u16>,
    pub response_body: Option<String>,
    pub unmapped: Option<String>,
    /// The transport's own id of the message (AMQP `message_id`, else the body's hash).
    pub transport_message_id: Option<&'a str>,
}

pub async fn insert_message(
    conn: &mut AnyConnection,
    m: &MessageRecord<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into messages (message_id, direction, format, transport, source, content_type,
             received_at, body, body_sha256, parsed, outcome, problem, response_status, response_body,
             unmapped, transport_message_id, body_bytes)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(&m.message_id)
    .bind(m.direction)
    .bind(m.format)
    .bind(m.transport)
    .bind(m.source)
    .bind(m.content_type)
    .bind(ts(m.received_at))
    .bind(m.body)
    .bind(m.body_sha256)
    .bind(m.parsed.as_deref())
    .bind(m.outcome.as_str())
    .bind(m.problem.as_deref())
    .bind(m.response_status.map(i64::from))
    .bind(m.response_body.as_deref())
    .bind(m.unmapped.as_deref())
    .bind(m.transport_message_id)
    .bind(i64::try_from(m.body.len()).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_response(
    conn: &mut AnyConnection,
    message_id: &str,
    status: u16,
    body: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "update messages set response_status = $1, response_body = $2 where message_id = $3",
    )
    .bind(i64::from(status))
    .bind(body)
    .bind(message_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The answer given to an accepted inbound message with exactly these bytes, if any.
pub async fn accepted_response_for_body(
    conn: &mut AnyConnection,
    format: &str,
    body_sha256: &str,
) -> Result<Option<(u16, String)>, StoreError> {
    let row = sqlx::query(
        "select response_status, response_body from messages
         where direction = 'in' and format = $1 and body_sha256 = $2 and outcome = 'accepted'
           and response_body is not null
         order by received_at limit 1",
    )
    .bind(format)
    .bind(body_sha256)
    .fetch_optional(conn)
    .await?;
    response_of(row)
}

/// The answer given to one message.
pub async fn response_of_message(
    conn: &mut AnyConnection,
    message_id: &str,
) -> Result<Option<(u16, String)>, StoreError> {
    let row = sqlx::query(
        "select response_status, response_body from messages
         where message_id = $1 and response_body is not null",
    )
    .bind(message_id)
    .fetch_optional(conn)
    .await?;
    response_of(row)
}

fn response_of(row: Option<sqlx::any::AnyRow>) -> Result<Option<(u16, String)>, StoreError> {
    let Some(row) = row else { return Ok(None) };
    let status: i64 = row.try_get("response_status")?;
    let body: String = row.try_get("response_body")?;
    let status = u16::try_from(status)
        .map_err(|_| StoreError::Corrupt(format!("response status {status}")))?;
    Ok(Some((status, body)))
}

/// What one sweep of rejected bodies did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Rejected messages whose body was dropped.
    pub messages: u64,
    /// Bytes of body dropped.
    pub bytes: u64,
}

/// Rejected messages whose body goes at most at once, in one short write transaction.
const PURGE_BATCH: i64 = 500;

/// Ids and sizes of held rejected bodies, as a sweep's query selects them.
fn held(rows: &[sqlx::any::AnyRow]) -> Result<Vec<(String, i64)>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<String, _>("message_id")?,
                r.try_get::<Option<i64>, _>("body_bytes")?.unwrap_or(0),
            ))
        })
        .collect()
}

impl Store {
    /// Drops the raw body of rejected inbound messages received before `older_than`, and of
    /// the oldest ones of each sender past `max_bytes_per_source` of held rejected bodies.
    /// The record stays: sender, time, reason, SHA-256, size, and `body_purged_at = now`.
    /// Accepted (and duplicate) messages are never touched.
    pub async fn purge_rejected_bodies(
        &self,
        older_than: DateTime<Utc>,
        max_bytes_per_source: u64,
        now: DateTime<Utc>,
    ) -> Result<Purged, StoreError> {
        let mut purged = Purged::default();
        // By age: the oldest first, a batch at a time, through the partial index.
        loop {
            let rows = sqlx::query(
                "select message_id, body_bytes from messages
                 where outcome = 'rejected' and body_purged_at is null and received_at < $1
                 order by received_at limit $2",
            )
            .bind(ts(older_than))
            .bind(PURGE_BATCH)
            .fetch_all(self.pool())
            .await?;
            let batch = held(&rows)?;
            let done = (batch.len() as i64) < PURGE_BATCH;
            self.purge_batch(&batch, now, &mut purged).await?;
            if done {
                break;
            }
        }
        // By size: within each sender, the newest bodies are kept up to the cap (counted
        // from the newest back); the older ones go.
        let cap = i64::try_from(max_bytes_per_source).unwrap_or(i64::MAX);
        loop {
            let rows = sqlx::query(
                "select message_id, body_bytes from (
                     select message_id, body_bytes, received_at,
                            sum(coalesce(body_bytes, 0)) over (
                                partition by source order by received_at desc, message_id desc
                                rows between unbounded preceding and current row) as newer_total
                     from messages
                     where outcome = 'rejected' and body_purged_at is null
                 ) held
                 where newer_total > $1
                 order by received_at limit $2",
            )
            .bind(cap)
            .bind(PURGE_BATCH)
            .fetch_all(self.pool())
            .await?;
            let batch = held(&rows)?;
            let done = (batch.len() as i64) < PURGE_BATCH;
            self.purge_batch(&batch, now, &mut purged).await?;
            if done {
                break;
            }
        }
        Ok(purged)
    }

    async fn purge_batch(
        &self,
        batch: &[(String, i64)],
        now: DateTime<Utc>,
        purged: &mut Purged,
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let at = ts(now);
        for (id, bytes) in batch {
            // `outcome` and `body_purged_at` again: only a rejected body still held goes,
            // whatever changed since it was selected (another instance's sweep).
            let done = sqlx::query(
                "update messages set body = $1, body_purged_at = $2
                 where message_id = $3 and outcome = 'rejected' and body_purged_at is null",
            )
            .bind(&[][..] as &[u8])
            .bind(&at)
            .bind(id)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 1 {
                purged.messages += 1;
                purged.bytes += u64::try_from(*bytes).unwrap_or(0);
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
