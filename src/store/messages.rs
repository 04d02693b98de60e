//! Raw messages, inbound and outbound, kept as evidence with their outcome and answer.

use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

use super::{StoreError, ts};

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
             unmapped, transport_message_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
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
