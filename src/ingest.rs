//! Taking a message in: keep the raw bytes, decode, apply the engine, and commit the
//! message, the state change and the alerts in one transaction. A message resent byte for
//! byte, or whose every item is already stored, gets the answer the first one got.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use std::sync::Arc;

use ects_core::trip::{ConflictingEvent, Effect, Input, RefusedEvent, Trip};
use ects_core::{
    AuthorityCode, DeclarationId, EquipmentId, SealAssignment, SealEvent, TransitDeclaration,
    TripId,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use actix_web::web::Bytes;

use crate::answers::AnswerFormat;
use crate::devices::Verdict;
use crate::formats::{Decoded, Format, Formats, Inbound, MessageFunction};
use crate::problem::{DocumentError, Located};
use crate::store::{self, MessageRecord, Outcome, Store, StoreError, Tx};
use crate::tracking::{AuditItem, CommandFailure, Tracking, append_audit};

/// Where a message came from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// `http`, `amqp`, `cli`.
    pub transport: &'a str,
    /// Who sent it: a partner id, or the transport's own name when unauthenticated.
    pub sender: &'a str,
    pub content_type: Option<&'a str>,
    /// The transport's own id of the message (AMQP `message_id`, else the body's hash):
    /// a redelivery under it is recognised.
    pub message_id: Option<&'a str>,
    /// The partner it came from, when the transport knows it (its AMQP queue).
    pub partner: Option<&'a str>,
    /// That partner's configured authority: it may amend or delete its authority's
    /// declarations, besides those it filed.
    pub authority: Option<&'a AuthorityCode>,
    /// The partner whose sharing rules bound what the message may reach: it files only
    /// under its own country, and its events, amendments and seal assignments reach only
    /// trips it may see (the others are answered as if they did not exist). `None`: the
    /// operator's side, which reaches every trip.
    pub scope: Option<&'a Scope>,
    /// The device platform that posted it (a device-platform principal's name): it may
    /// post events only for devices registered to it, and each is marked as its.
    pub platform: Option<&'a str>,
}

/// What a confined sender may reach: a partner (its sharing rules), or a single window's
/// token (what it filed).
#[derive(Debug, Clone)]
pub struct Scope {
    /// The partner id, or the single window's filer id (`token:<name>`).
    pub id: String,
    /// The country it may file declarations for; `None`: none.
    pub country: Option<String>,
    /// The trip parties it sees.
    pub parties: Vec<String>,
    /// Whether it may post seal events (a partner's feed may; a single window may not).
    pub posts_events: bool,
    /// What it is, as refusals name it: "partner", "single window".
    pub what: &'static str,
}

impl Scope {
    pub fn of_partner(p: &crate::partners::PartnerConfig) -> Self {
        Self {
            id: p.id.clone(),
            country: Some(p.country().to_owned()),
            parties: p.visible_parties(),
            posts_events: true,
            what: "partner",
        }
    }

    /// Whether it sees a trip with these parties.
    pub fn may_see<'a>(&self, mut parties: impl Iterator<Item = &'a str>) -> bool {
        parties.any(|p| self.parties.iter().any(|q| q == p))
    }

    fn country(&self) -> Option<&str> {
        self.country.as_deref()
    }

    fn visible_parties(&self) -> &[String] {
        &self.parties
    }
}

impl Source<'_> {
    /// Whether the sender may see this trip.
    async fn sees(
        &self,
        conn: &mut sqlx::AnyConnection,
        trip_id: &str,
    ) -> Result<bool, StoreError> {
        match self.scope {
            None => Ok(true),
            Some(p) => {
                let parties = store::outbox::trip_parties(conn, trip_id).await?;
                Ok(p.may_see(parties.iter().map(String::as_str)))
            }
        }
    }

    /// Whether the sender may see every trip a stored answer names: a resent message is
    /// answered with the first answer only then.
    async fn sees_answer(
        &self,
        conn: &mut sqlx::AnyConnection,
        body: &str,
    ) -> Result<bool, StoreError> {
        if self.scope.is_none() {
            return Ok(true);
        }
        let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let mut trips: Vec<String> = value
            .get("trips")
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        if let Some(t) = value
            .pointer("/declaration/trip_id")
            .and_then(|t| t.as_str())
        {
            trips.push(t.to_owned());
        }
        for trip in trips {
            if !self.sees(conn, &trip).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeclarationRef {
    pub declaration_id: DeclarationId,
    pub issuing_authority: AuthorityCode,
    pub trip_id: TripId,
    /// An amendment or a deletion (absent for a new declaration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<MessageFunction>,
    /// The declaration's version an amendment made (the first registered is 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventCounts {
    /// Stored and applied to their trip.
    pub accepted: usize,
    /// Already stored from an earlier message: ignored.
    pub duplicates: usize,
    /// Stored, but no live trip carries the seal or device yet.
    pub unmatched: usize,
    /// Alerts raised by these events.
    pub alerts_raised: usize,
    /// Stored as evidence only: each contradicts a stored event (listed in `conflicts`).
    #[serde(default)]
    pub conflicting: usize,
    /// Refused by device authentication: kept as evidence, not applied (listed in
    /// `refused`).
    #[serde(default)]
    pub refused: usize,
}

/// An event of the message refused by device authentication. It is kept as evidence with
/// the reason and raises `device_auth_failure` on the trip its device serves; the rest of
/// the message is applied.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventRefusalNote {
    /// The event's place in the message.
    pub pointer: String,
    pub reason: String,
}

/// An event of the message that contradicts a stored one (same `event_id`, or same device
/// and `seq`, other content). It is kept as evidence and raises `event_conflict`; the rest
/// of the message is applied.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventConflictNote {
    /// The event's place in the message.
    pub pointer: String,
    /// The stored event it contradicts.
    pub conflicts_with: String,
    pub detail: String,
}

/// The answer to an ingested message (HTTP 202).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngestResponse {
    pub message_id: String,
    pub format: String,
    /// Trips the message created or changed.
    pub trips: Vec<TripId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declaration: Option<DeclarationRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<AssignmentOutcome>,
    /// Events that contradict stored ones: kept as evidence, not applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<EventConflictNote>,
    /// Events refused by device authentication: kept as evidence, not applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<EventRefusalNote>,
}

impl Source<'_> {
    /// Who sent it, as the audit trail names them: the authenticated user
    /// (`user:<token name>/<role>...`), the partner (`partner:<id>`), else the transport.
    pub fn actor(&self) -> String {
        if self.sender.starts_with("user:") {
            self.sender.to_owned()
        } else if let Some(partner) = self.partner {
            format!("partner:{partner}")
        } else {
            format!("{}:{}", self.transport, self.sender)
        }
    }
}

/// The answer to a partner's answer (HTTP 202): what it was taken as, and the outbox
/// message it answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AnswerReceipt {
    /// The stored answer.
    pub message_id: String,
    /// `icegate-ack` or `wco-dms`.
    pub format: String,
    /// The outbox message it answers (as `GET /v1/outbox` lists it).
    pub answered: store::outbox::AnsweredRow,
    pub accepted: bool,
    pub reason: Option<String>,
    pub errors: Vec<crate::formats::icegate_ack::AckError>,
    /// The partner's own reference (CSN number, WCO functional reference id).
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

/// What a seal assignment did to each trip it reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssignmentOutcome {
    pub reference: String,
    pub trips: Vec<AssignedTrip>,
    /// Containers no single live trip carries (a manifest lists every container on board).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedEquipment>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssignedTrip {
    pub trip_id: TripId,
    pub declaration_id: DeclarationId,
    pub issuing_authority: AuthorityCode,
    pub containers: Vec<EquipmentId>,
    /// Seals tied to a container here (new to the trip, or moved from its unassigned list).
    pub seals_assigned: usize,
    /// Earlier events of the new seals, kept until now as unmatched, that joined the trip.
    pub events_claimed: usize,
    /// The same reference was already applied to this trip with this content.
    pub already_recorded: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkippedEquipment {
    pub equipment_id: EquipmentId,
    pub reason: String,
}

/// What the transport sends back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// The answer first given to an earlier, identical message.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// The message contradicts what is already stored under the same identity.
    #[error("conflict: {0}")]
    Conflict(Located),
    /// The sender may not do this to what is stored (another filer's declaration).
    #[error("forbidden: {0}")]
    Forbidden(Located),
    /// The message names something the sender has no part in, or that does not exist (an
    /// answer to a message never sent to it): said alike, so nothing leaks.
    #[error("not found: {0}")]
    NotFound(Located),
    #[error("storage failed")]
    Store(#[from] StoreError),
    /// The decode job did not finish (it panicked): a bug, not the sender's fault.
    #[error("the decode pool failed")]
    Pool(#[from] crate::decode::DecodeFailed),
}

/// Each seal of a declaration with where the document names it.
fn seal_pointers(d: &TransitDeclaration) -> Vec<(String, &ects_core::Seal)> {
    let placed = d.equipment.iter().enumerate().flat_map(|(e, equipment)| {
        equipment
            .seals
            .iter()
            .enumerate()
            .map(move |(s, seal)| (format!("/equipment/{e}/seals/{s}"), seal))
    });
    let loose = d
        .seals
        .iter()
        .enumerate()
        .map(|(s, seal)| (format!("/seals/{s}"), seal));
    placed.chain(loose).collect()
}

/// A declaration opens a trip only if it names something sealed: a seal, or a container
/// whose seals a seal assignment (an e-seal record, a manifest) will tie to it later.
fn trackable(decoded: Decoded) -> Result<Decoded, DocumentError> {
    if let Inbound::Declaration(d) = &decoded.inbound
        && d.seals().next().is_none()
        && d.equipment.is_empty()
    {
        return Err(DocumentError::Invalid(vec![Located::pointer(
            "/equipment",
            "the declaration names no seal and no container, so there is nothing to track; \
             send it once the goods are sealed",
        )]));
    }
    Ok(decoded)
}

/// Why one attempt did not commit.
enum Attempt {
    Failed(IngestError),
    /// Another writer changed a trip we read; run the whole message again.
    Retry,
}

impl From<StoreError> for Attempt {
    fn from(e: StoreError) -> Self {
        if e.is_retryable() {
            Attempt::Retry
        } else {
            Attempt::Failed(IngestError::Store(e))
        }
    }
}

impl From<sqlx::Error> for Attempt {
    fn from(e: sqlx::Error) -> Self {
        Attempt::from(StoreError::from(e))
    }
}

const MAX_ATTEMPTS: usize = 5;

#[derive(Debug, Clone)]
pub struct Ingest {
    store: Store,
    tracking: Arc<Tracking>,
    decode: crate::decode::DecodePool,
    devices: Arc<crate::devices::DeviceAuth>,
}

struct Message<'a> {
    id: String,
    format: &'a str,
    body: &'a [u8],
    sha256: String,
    source: Source<'a>,
    now: DateTime<Utc>,
    /// Document paths no binding read (mapped formats).
    unmapped: Option<String>,
}

impl Message<'_> {
    fn record(&self, outcome: Outcome) -> MessageRecord<'_> {
        MessageRecord {
            message_id: self.id.clone(),
            direction: "in",
            format: self.format,
            transport: self.source.transport,
            source: self.source.sender,
            content_type: self.source.content_type,
            received_at: self.now,
            body: self.body,
            body_sha256: &self.sha256,
            parsed: None,
            outcome,
            problem: None,
            response_status: None,
            response_body: None,
            unmapped: self.unmapped.clone(),
            transport_message_id: self.source.message_id,
        }
    }
}

fn canonical<T: Serialize>(value: &T) -> String {
    // Our model types always serialise.
    serde_json::to_string(value).unwrap_or_default()
}

impl Ingest {
    pub fn new(store: Store, tracking: Arc<Tracking>, decode: crate::decode::DecodePool) -> Self {
        Self {
            store,
            tracking,
            decode,
            devices: Arc::new(crate::devices::DeviceAuth::new(Default::default())),
        }
    }

    /// Device authentication as configured (the default: `optional`).
    pub fn with_device_auth(mut self, devices: crate::devices::DeviceAuth) -> Self {
        self.devices = Arc::new(devices);
        self
    }

    /// The bounded pool documents are decoded on.
    pub fn decode_pool(&self) -> &crate::decode::DecodePool {
        &self.decode
    }

    /// Takes a message in a known format. The body is hashed and decoded in one job on
    /// the decode pool, off the async workers.
    #[tracing::instrument(skip_all, fields(format = format.id(), message_id))]
    pub async fn ingest(
        &self,
        format: Arc<dyn Format>,
        body: Bytes,
        source: Source<'_>,
        now: DateTime<Utc>,
    ) -> Result<Answer, IngestError> {
        let format_id = format.id().to_owned();
        let job_body = body.clone();
        let (sha256, decoded) = self
            .decode
            .run(move || {
                let sha256 = hex::encode(Sha256::digest(&job_body));
                (sha256, format.decode(&job_body).and_then(trackable))
            })
            .await?;
        self.apply(&format_id, &body, sha256, decoded, source, now)
            .await
    }

    /// Takes a message whose format is detected from the document: detection and decoding
    /// run as one job on the decode pool. The format id that read it (`unknown` when none
    /// did: the document is kept as rejected evidence) comes with the result.
    #[tracing::instrument(skip_all, fields(format = tracing::field::Empty, message_id))]
    pub async fn ingest_detected(
        &self,
        formats: &Formats,
        body: Bytes,
        source: Source<'_>,
        now: DateTime<Utc>,
    ) -> (String, Result<Answer, IngestError>) {
        let job_formats = formats.clone();
        let job_body = body.clone();
        let job = self
            .decode
            .run(move || {
                let sha256 = hex::encode(Sha256::digest(&job_body));
                let decoded = job_formats.detect(&job_body).cloned().map(|format| {
                    let decoded = format.decode(&job_body).and_then(trackable);
                    (format.id().to_owned(), decoded)
                });
                (sha256, decoded)
            })
            .await;
        let (sha256, decoded) = match job {
            Ok(done) => done,
            Err(e) => return ("unknown".into(), Err(e.into())),
        };
        let Some((format_id, decoded)) = decoded else {
            let problem = DocumentError::Invalid(vec![Located::pointer(
                "",
                format!(
                    "no registered format recognises this document (known: {})",
                    formats.ids().join(", ")
                ),
            )]);
            let recorded = self
                .record_unrecognised(&body, sha256, source, now, &problem)
                .await;
            return (
                "unknown".into(),
                recorded.and(Err(IngestError::Document(problem))),
            );
        };
        tracing::Span::current().record("format", format_id.as_str());
        let result = self
            .apply(&format_id, &body, sha256, decoded, source, now)
            .await;
        (format_id, result)
    }

    /// Stores a decoded (or refused) message and applies it.
    async fn apply(
        &self,
        format_id: &str,
        body: &[u8],
        sha256: String,
        decoded: Result<Decoded, DocumentError>,
        source: Source<'_>,
        now: DateTime<Utc>,
    ) -> Result<Answer, IngestError> {
        let message = Message {
            id: Uuid::now_v7().to_string(),
            format: format_id,
            body,
            sha256,
            source,
            now,
            unmapped: None,
        };
        tracing::Span::current().record("message_id", message.id.as_str());

        // Decoded first, so that a document the endpoint does not take is refused even if
        // the same bytes were once accepted elsewhere.
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                self.record_rejected(&message, &problem_json(&e)).await?;
                return Err(e.into());
            }
        };
        if source.platform.is_some() && !matches!(decoded.inbound, Inbound::SealEvents { .. }) {
            // A device platform posts its devices' events, nothing else.
            let located = Located::pointer(
                "",
                "a device platform may post seal events only, not declarations or seal \
                 assignments",
            );
            self.record_rejected(&message, &serde_json::json!([located]).to_string())
                .await?;
            return Err(IngestError::Forbidden(located));
        }
        if let (Inbound::SealEvents { .. }, Some(p)) = (&decoded.inbound, source.scope)
            && !p.posts_events
        {
            // A single window files declarations and seal assignments; a seal's events are
            // the device's (or its platform's, or a customs partner's feed).
            let located = Located::pointer("", "a single window may not post seal events");
            self.record_rejected(&message, &serde_json::json!([located]).to_string())
                .await?;
            return Err(IngestError::Forbidden(located));
        }
        if let (Inbound::Declaration(d), Some(p)) = (&decoded.inbound, source.scope)
            && p.country() != d.issuing_authority.as_str().get(..2)
        {
            // Said before anything is looked up: the refusal is the same whether or not
            // that authority has such a declaration. A confined sender bound to no
            // country (a single window's token made before `--authority` was required)
            // files for none.
            let located = Located::pointer(
                "/issuing_authority",
                format!(
                    "{} {} may not file for authority {}",
                    p.what, p.id, d.issuing_authority
                ),
            );
            self.record_rejected(&message, &serde_json::json!([located]).to_string())
                .await?;
            return Err(IngestError::Forbidden(located));
        }
        if let Some(answer) = self.replay_identical(&message).await? {
            return Ok(answer);
        }
        let message = Message {
            unmapped: (!decoded.unmapped.is_empty())
                .then(|| serde_json::to_string(&decoded.unmapped).unwrap_or_default()),
            ..message
        };
        let inbound = decoded.inbound;
        let function = decoded.function;
        for attempt in 1..=MAX_ATTEMPTS {
            let result = match &inbound {
                Inbound::Declaration(d) => match function {
                    MessageFunction::Original => self.declare(&message, d).await,
                    MessageFunction::Amendment => self.amend(&message, d).await,
                    MessageFunction::Deletion => self.delete(&message, d).await,
                },
                Inbound::SealEvents { events, base } => self.events(&message, events, *base).await,
                Inbound::SealAssignment(a) => self.assign(&message, a).await,
            };
            match result {
                Ok(answer) => return Ok(answer),
                Err(Attempt::Retry) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(attempt, "write conflict, trying the message again");
                    // A short, growing pause lets the other writer finish.
                    let pause = 5 * (1 << attempt) + jitter_ms(&message.sha256, attempt);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Err(Attempt::Retry) => return Err(IngestError::Store(StoreError::Contention)),
                Err(Attempt::Failed(IngestError::Conflict(located))) => {
                    self.record_rejected(&message, &serde_json::json!([located]).to_string())
                        .await?;
                    return Err(IngestError::Conflict(located));
                }
                Err(Attempt::Failed(IngestError::Forbidden(located))) => {
                    self.record_rejected(&message, &serde_json::json!([located]).to_string())
                        .await?;
                    return Err(IngestError::Forbidden(located));
                }
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Takes a partner's answer to something the outbox sent it (an ICEGATE ACK, a WCO DMS
    /// notification): stored as a message and linked to the outbox row it names, which
    /// must have gone to this partner. An answer that cannot be read, comes from no
    /// partner, or names no message sent to this partner is kept as a rejected message and
    /// refused (422, 403, 404); a row answered several times keeps every answer.
    #[tracing::instrument(skip_all, fields(format = format.id(), message_id))]
    pub async fn answer(
        &self,
        format: AnswerFormat,
        body: &[u8],
        source: Source<'_>,
        now: DateTime<Utc>,
    ) -> Result<Answer, IngestError> {
        let message = Message {
            id: Uuid::now_v7().to_string(),
            format: format.id(),
            body,
            sha256: hex::encode(Sha256::digest(body)),
            source,
            now,
            unmapped: None,
        };
        tracing::Span::current().record("message_id", message.id.as_str());
        let parsed = {
            let job_body = body.to_vec();
            self.decode
                .run(move || crate::answers::parse(format, &job_body))
                .await?
        };
        let read = match parsed {
            Ok(read) => read,
            Err(e) => {
                self.record_rejected(&message, &problem_json(&e)).await?;
                return Err(e.into());
            }
        };
        let refuse = |located: Located| serde_json::json!([located]).to_string();
        let Some(partner) = source.partner else {
            let located = Located::pointer(
                "",
                "an answer is taken from the partner the message was sent to: send it with that partner's credentials",
            );
            self.record_rejected(&message, &refuse(located.clone()))
                .await?;
            return Err(IngestError::Forbidden(located));
        };
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(StoreError::from)?;
        let row = match crate::answers::message_id_of(&read.answers) {
            Some(id) => store::outbox::row_by_message_id(&mut conn, &id).await?,
            None => None,
        };
        drop(conn);
        let Some(row) = row.filter(|r| r.partner_id == partner) else {
            let located = Located::pointer(
                format.reference_at(),
                format!(
                    "no message the gateway sent to partner {partner} has reference {:?}; the answer is kept, not applied",
                    read.answers
                ),
            );
            self.record_rejected(&message, &refuse(located.clone()))
                .await?;
            return Err(IngestError::NotFound(located));
        };
        let receipt = AnswerReceipt {
            message_id: message.id.clone(),
            format: format.id().to_owned(),
            answered: row.clone(),
            accepted: read.accepted,
            reason: read.reason.clone(),
            errors: read.errors.clone(),
            reference: read.reference.clone(),
            ids: read.ids.clone(),
        };
        let body = canonical(&receipt);
        let errors = canonical(&read.errors);
        let ids = canonical(&read.ids);
        let mut tx = self.store.begin_write().await?;
        let mut record = message.record(Outcome::Accepted);
        record.parsed = Some(canonical(&read));
        record.response_status = Some(202);
        record.response_body = Some(body.clone());
        store::insert_message(&mut tx, &record).await?;
        store::outbox::insert_answer(
            &mut tx,
            &store::outbox::NewAnswer {
                outbox_seq: row.seq,
                partner_id: partner,
                message_id: &message.id,
                format: format.id(),
                received_at: now,
                accepted: read.accepted,
                reason: read.reason.as_deref(),
                errors: &errors,
                reference: read.reference.as_deref(),
                ids: &ids,
                body_sha256: &message.sha256,
            },
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        tracing::info!(
            partner,
            seq = row.seq,
            accepted = read.accepted,
            "answer stored"
        );
        Ok(Answer {
            status: 202,
            body,
            replayed: false,
        })
    }

    /// Keeps, as evidence, a document that no format recognised.
    async fn record_unrecognised(
        &self,
        body: &[u8],
        sha256: String,
        source: Source<'_>,
        now: DateTime<Utc>,
        problem: &DocumentError,
    ) -> Result<(), IngestError> {
        let message = Message {
            id: Uuid::now_v7().to_string(),
            format: "unknown",
            body,
            sha256,
            source,
            now,
            unmapped: None,
        };
        Ok(self
            .record_rejected(&message, &problem_json(problem))
            .await?)
    }

    async fn replay_identical(&self, message: &Message<'_>) -> Result<Option<Answer>, IngestError> {
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(StoreError::from)?;
        let Some((status, body)) =
            store::accepted_response_for_body(&mut conn, message.format, &message.sha256).await?
        else {
            return Ok(None);
        };
        // The first answer names trips; another sender that may not see them has its
        // message taken as its own (and answered as that is).
        if !message.source.sees_answer(&mut conn, &body).await? {
            return Ok(None);
        }
        drop(conn);
        self.record_duplicate(message, status, &body).await?;
        Ok(Some(Answer {
            status,
            body,
            replayed: true,
        }))
    }

    async fn record_duplicate(
        &self,
        message: &Message<'_>,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        let mut record = message.record(Outcome::Duplicate);
        record.response_status = Some(status);
        record.response_body = Some(body.to_owned());
        self.record(&record).await
    }

    /// One evidence row in its own write transaction (through SQLite's write gate).
    async fn record(&self, record: &MessageRecord<'_>) -> Result<(), StoreError> {
        let mut tx = self.store.begin_write().await?;
        store::insert_message(&mut tx, record).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_rejected(
        &self,
        message: &Message<'_>,
        problem: &str,
    ) -> Result<(), StoreError> {
        let mut record = message.record(Outcome::Rejected);
        record.problem = Some(problem.to_owned());
        self.record(&record).await
    }

    async fn finish(
        mut tx: Tx,
        message: &Message<'_>,
        response: &IngestResponse,
    ) -> Result<Answer, Attempt> {
        let body = canonical(response);
        store::set_response(&mut tx, &message.id, 202, &body).await?;
        tx.commit().await?;
        Ok(Answer {
            status: 202,
            body,
            replayed: false,
        })
    }

    /// The same answer as the message that first stored these items, recorded as a
    /// duplicate of it.
    async fn replay_of(
        &self,
        tx: Tx,
        message: &Message<'_>,
        original: &str,
    ) -> Result<Answer, Attempt> {
        let mut tx = tx;
        let Some((status, body)) = store::response_of_message(&mut tx, original).await? else {
            return Err(Attempt::Failed(IngestError::Store(StoreError::Corrupt(
                format!("message {original} has no stored answer"),
            ))));
        };
        let mut record = message.record(Outcome::Duplicate);
        record.response_status = Some(status);
        record.response_body = Some(body.clone());
        store::insert_message(&mut tx, &record).await?;
        tx.commit().await?;
        Ok(Answer {
            status,
            body,
            replayed: true,
        })
    }

    async fn declare(
        &self,
        message: &Message<'_>,
        declaration: &TransitDeclaration,
    ) -> Result<Answer, Attempt> {
        let mut tx = self.store.begin_write().await?;
        // The seals and devices first, in order: a declaration naming one that another
        // declaration (or a message routing its events) is taking waits for it, and then
        // sees it. Held until commit.
        store::lock_seal_devices(&mut tx, self.store.backend(), declaration.seals()).await?;
        let existing = store::find_declaration(&mut tx, declaration).await?;
        // A document without a date (an unregistered SAD) is dated when first received.
        let mut dated;
        let declaration = match declaration.declared_at {
            Some(_) => declaration,
            None => {
                dated = declaration.clone();
                dated.declared_at = Some(
                    existing
                        .as_ref()
                        .and_then(|e| serde_json::from_str::<TransitDeclaration>(&e.canonical).ok())
                        .and_then(|d| d.declared_at)
                        .unwrap_or(message.now),
                );
                &dated
            }
        };
        let text = canonical(declaration);
        if let Some(existing) = existing {
            if !message.source.sees(&mut tx, &existing.trip_id).await? {
                // Registered under this authority by a filer whose trip the sender may not
                // see: that the id is taken is all it learns (not the trip, not the
                // content), whatever it sent.
                tx.rollback().await?;
                return Err(Attempt::Failed(IngestError::Conflict(Located::pointer(
                    "/declaration_id",
                    format!(
                        "declaration {} of {} is already registered by another filer: file \
                         under another declaration_id",
                        declaration.declaration_id, declaration.issuing_authority
                    ),
                ))));
            }
            if existing.canonical == text {
                return self.replay_of(tx, message, &existing.message_id).await;
            }
            // Roll back now (not on drop) so the write lock is free for the rejection record.
            tx.rollback().await?;
            let stored: serde_json::Value =
                serde_json::from_str(&existing.canonical).unwrap_or_default();
            let now_sent = serde_json::to_value(declaration).unwrap_or_default();
            let at = first_difference(&stored, &now_sent, String::new())
                .unwrap_or_else(|| "/declaration_id".into());
            return Err(Attempt::Failed(IngestError::Conflict(Located::pointer(
                at,
                format!(
                    "declaration {} of {} is already registered, and differs here",
                    declaration.declaration_id, declaration.issuing_authority
                ),
            ))));
        }
        // One device, one live trip: a seal or device another live trip holds is refused,
        // saying nothing of that trip.
        for (pointer, seal) in seal_pointers(declaration) {
            if store::held_by_another_live_trip(
                &mut tx,
                seal,
                "",
                declaration.issuing_authority.as_str().get(..2),
            )
            .await?
            {
                tx.rollback().await?;
                return Err(Attempt::Failed(IngestError::Conflict(Located::pointer(
                    pointer,
                    store::held_elsewhere(seal),
                ))));
            }
        }
        let trip_id = TripId(Uuid::now_v7());
        let trip = Trip::declare(trip_id, declaration, message.now);
        let mut record = message.record(Outcome::Accepted);
        record.parsed = Some(text.clone());
        store::insert_message(&mut tx, &record).await?;
        store::insert_declared_trip(&mut tx, declaration, &text, &trip, &message.id, message.now)
            .await?;
        store::insert_declaration_version(
            &mut tx,
            declaration,
            1,
            &trip_id.to_string(),
            &message.id,
            &text,
            message.now,
        )
        .await?;
        store::outbox::insert_parties(
            &mut tx,
            &trip_id.to_string(),
            &crate::partners::parties_of(declaration, message.source.partner),
        )
        .await?;
        let actor = message.source.actor();
        append_audit(
            &mut tx,
            trip_id,
            vec![AuditItem::new(actor, "input.declaration", declaration)],
            message.now,
        )
        .await?;
        // A cancelled trip still watching one of these seals lets it go to this one.
        let seals: Vec<&ects_core::Seal> = declaration.seals().collect();
        store::release_from_cancelled(&mut tx, &seals, &trip_id.to_string(), message.now).await?;
        // Seals often report before their declaration reaches us: those events were kept
        // as unmatched and now join the trip (the devices were locked first, so a message
        // routing their events waited for this declaration, or is seen by it).
        let early =
            store::claim_unmatched_events(&mut tx, declaration, &trip_id.to_string()).await?;
        if !early.is_empty() {
            // Their conflicting variants come with them, as evidence on this trip.
            self.tracking
                .apply_inputs(
                    &mut tx,
                    &trip_id.to_string(),
                    &early.inputs(),
                    message.now,
                    None,
                )
                .await?;
        }
        let response = IngestResponse {
            message_id: message.id.clone(),
            format: message.format.to_owned(),
            trips: vec![trip_id],
            declaration: Some(DeclarationRef {
                declaration_id: declaration.declaration_id.clone(),
                issuing_authority: declaration.issuing_authority.clone(),
                trip_id,
                function: None,
                version: None,
            }),
            events: None,
            assignment: None,
            conflicts: Vec::new(),
            refused: Vec::new(),
        };
        Self::finish(tx, message, &response).await
    }

    /// The registered declaration an amendment or a deletion names, with its trip, if the
    /// sender may change it (see [`may_change`]); a refusal naming /declaration_id when
    /// there is none.
    async fn target(
        &self,
        tx: &mut Tx,
        message: &Message<'_>,
        declaration: &TransitDeclaration,
        function: MessageFunction,
    ) -> Result<(store::TripRow, TripId), Attempt> {
        // Not wrong in itself, only early (as for a seal assignment): a conflict with what
        // is stored, which may clear. A declaration whose trip the sender may not see is
        // answered alike.
        let not_registered = || {
            Attempt::Failed(IngestError::Conflict(Located::pointer(
                "/declaration_id",
                format!(
                    "declaration {} of {} is not yet registered: send the {} again once the \
                     declaration is in",
                    declaration.declaration_id,
                    declaration.issuing_authority,
                    function.as_str()
                ),
            )))
        };
        let Some(existing) = store::find_declaration(tx, declaration).await? else {
            return Err(not_registered());
        };
        if !message.source.sees(tx, &existing.trip_id).await? {
            return Err(not_registered());
        }
        let trip_id = TripId::parse(&existing.trip_id).map_err(|_| {
            Attempt::Failed(IngestError::Store(StoreError::Corrupt(format!(
                "trip id {}",
                existing.trip_id
            ))))
        })?;
        let parties = store::outbox::trip_parties(tx, &existing.trip_id).await?;
        may_change(&message.source, &parties, declaration, function).map_err(|reason| {
            Attempt::Failed(IngestError::Forbidden(Located::pointer("", reason)))
        })?;
        Ok((existing, trip_id))
    }

    /// A new version of a registered declaration (ICES message type A): before the trip
    /// departs, the trip is rebuilt on it and every version is kept; after, it is refused
    /// (409) and the version in force stays.
    async fn amend(
        &self,
        message: &Message<'_>,
        declaration: &TransitDeclaration,
    ) -> Result<Answer, Attempt> {
        let mut tx = self.store.begin_write().await?;
        let (existing, trip_id) = match self
            .target(&mut tx, message, declaration, MessageFunction::Amendment)
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tx.rollback().await?;
                return Err(e);
            }
        };
        let stored: serde_json::Value =
            serde_json::from_str(&existing.canonical).unwrap_or_default();
        let mut amended = declaration.clone();
        if amended.declared_at.is_none() {
            // Undated (an unregistered document): the version in force keeps its date.
            amended.declared_at = serde_json::from_value::<TransitDeclaration>(stored.clone())
                .ok()
                .and_then(|d| d.declared_at)
                .or(Some(message.now));
        }
        let text = canonical(&amended);
        if text == existing.canonical {
            // Nothing to change: the answer of the message that made this version.
            return self.replay_of(tx, message, &existing.message_id).await;
        }
        let version = store::latest_declaration_version(&mut tx, &amended)
            .await?
            .max(1)
            .checked_add(1)
            .ok_or_else(|| {
                Attempt::Failed(IngestError::Store(StoreError::Corrupt(
                    "declaration version overflow".into(),
                )))
            })?;
        if version > MAX_DECLARATION_VERSIONS {
            tx.rollback().await?;
            return Err(Attempt::Failed(IngestError::Conflict(Located::pointer(
                "",
                format!(
                    "declaration {} of {} has {MAX_DECLARATION_VERSIONS} versions, the most \
                     taken: the version in force stays; file a new declaration (or cancel \
                     the trip) instead of amending it again",
                    amended.declaration_id, amended.issuing_authority
                ),
            ))));
        }
        let mut record = message.record(Outcome::Accepted);
        record.parsed = Some(text.clone());
        store::insert_message(&mut tx, &record).await?;
        let mut changes = Vec::new();
        differences(
            &stored,
            &serde_json::to_value(&amended).unwrap_or_default(),
            String::new(),
            &mut changes,
        );
        let actor = message.source.actor();
        let previous = serde_json::from_value::<TransitDeclaration>(stored.clone()).ok();
        let amendment = crate::tracking::Amendment {
            declaration: &amended,
            previous: previous.as_ref(),
            canonical: &text,
            message_id: &message.id,
            version,
            changes: serde_json::Value::Array(changes),
        };
        let applied = self
            .tracking
            .amend_in(&mut tx, trip_id, &amendment, &actor, message.now)
            .await;
        if let Err(e) = applied {
            return Err(Self::command_failed(tx, trip_id, e).await);
        }
        store::insert_declaration_version(
            &mut tx,
            &amended,
            version,
            &trip_id.to_string(),
            &message.id,
            &text,
            message.now,
        )
        .await?;
        // The traders of the new version replace those of the old one (a replaced
        // declarant or carrier loses the trip's status); the countries of both versions
        // stay parties (the record of what they were told), and so does the filer.
        store::outbox::remove_trader_parties(&mut tx, &trip_id.to_string()).await?;
        store::outbox::insert_parties(
            &mut tx,
            &trip_id.to_string(),
            &crate::partners::parties_of(&amended, None),
        )
        .await?;
        let response = IngestResponse {
            message_id: message.id.clone(),
            format: message.format.to_owned(),
            trips: vec![trip_id],
            declaration: Some(DeclarationRef {
                declaration_id: amended.declaration_id.clone(),
                issuing_authority: amended.issuing_authority.clone(),
                trip_id,
                function: Some(MessageFunction::Amendment),
                version: Some(version),
            }),
            events: None,
            assignment: None,
            conflicts: Vec::new(),
            refused: Vec::new(),
        };
        Self::finish(tx, message, &response).await
    }

    /// The declaration withdrawn (ICES message type D): its trip is cancelled as
    /// `POST /v1/trips/{id}/cancel` cancels it (open alerts closed), in the audit chain.
    async fn delete(
        &self,
        message: &Message<'_>,
        declaration: &TransitDeclaration,
    ) -> Result<Answer, Attempt> {
        let mut tx = self.store.begin_write().await?;
        let (existing, trip_id) = match self
            .target(&mut tx, message, declaration, MessageFunction::Deletion)
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tx.rollback().await?;
                return Err(e);
            }
        };
        let state = store::load_trip(&mut tx, self.store.backend(), &existing.trip_id)
            .await?
            .map(|(t, _)| t.status.state);
        let refusal = match state {
            Some(ects_core::TripState::Released) => Some(format!(
                "trip {trip_id} is released: there is no transit left to delete"
            )),
            Some(s @ (ects_core::TripState::InTransit | ects_core::TripState::Arrived)) => {
                Some(format!(
                    "trip {trip_id} is {}: a declaration is deleted only before departure (while \
                 its trip is declared or armed); customs cancel a moving trip with \
                 POST /v1/trips/{trip_id}/cancel",
                    s.as_str()
                ))
            }
            _ => None,
        };
        if let Some(reason) = refusal {
            tx.rollback().await?;
            return Err(Attempt::Failed(IngestError::Conflict(Located::pointer(
                "", reason,
            ))));
        }
        let mut record = message.record(Outcome::Accepted);
        record.parsed = Some(canonical(declaration));
        store::insert_message(&mut tx, &record).await?;
        // A trip cancelled already (an earlier deletion or a cancel) stays as it is.
        if state != Some(ects_core::TripState::Cancelled) {
            let actor = message.source.actor();
            let cancel = ects_core::Cancellation {
                trip_id,
                authority: declaration.issuing_authority.clone(),
                officer: ects_core::Officer {
                    id: actor.clone(),
                    name: None,
                },
                time: message.now,
                reason: format!(
                    "declaration deleted by its issuing authority: {} message {} (message type D)",
                    message.format, message.id
                ),
            };
            let applied = self
                .tracking
                .command_in(
                    &mut tx,
                    trip_id,
                    &Input::Cancel(cancel),
                    &actor,
                    message.now,
                )
                .await;
            if let Err(e) = applied {
                return Err(Self::command_failed(tx, trip_id, e).await);
            }
        }
        let response = IngestResponse {
            message_id: message.id.clone(),
            format: message.format.to_owned(),
            trips: vec![trip_id],
            declaration: Some(DeclarationRef {
                declaration_id: declaration.declaration_id.clone(),
                issuing_authority: declaration.issuing_authority.clone(),
                trip_id,
                function: Some(MessageFunction::Deletion),
                version: None,
            }),
            events: None,
            assignment: None,
            conflicts: Vec::new(),
            refused: Vec::new(),
        };
        Self::finish(tx, message, &response).await
    }

    /// A trip command that did not apply, as the answer to the message that asked for it.
    async fn command_failed(tx: Tx, trip_id: TripId, e: CommandFailure) -> Attempt {
        let refusal = match e {
            CommandFailure::Store(StoreError::Contention) => return Attempt::Retry,
            CommandFailure::Store(e) => return e.into(),
            CommandFailure::NoTrip(id) => {
                return Attempt::Failed(IngestError::Store(StoreError::Corrupt(format!(
                    "declaration of trip {id} without its trip"
                ))));
            }
            CommandFailure::Refused(e) => Located::pointer("", e.reason),
            CommandFailure::Conflict { field, reason } => {
                Located::pointer(format!("/{field}"), format!("trip {trip_id}: {reason}"))
            }
        };
        // Rolled back now (not on drop) so the write lock is free for the rejection record.
        if let Err(e) = tx.rollback().await {
            return e.into();
        }
        Attempt::Failed(IngestError::Conflict(refusal))
    }

    /// Ties seals to the containers of the declaration the assignment names, or of the live
    /// trips that carry its containers; all trips or none.
    async fn assign(
        &self,
        message: &Message<'_>,
        assignment: &SealAssignment,
    ) -> Result<Answer, Attempt> {
        let refuse = |pointer: String, detail: String| {
            Attempt::Failed(IngestError::Document(DocumentError::Invalid(vec![
                Located::pointer(pointer, detail),
            ])))
        };
        let mut tx = self.store.begin_write().await?;
        let mut targets: BTreeMap<String, Vec<ects_core::Equipment>> = BTreeMap::new();
        let mut skipped = Vec::new();
        if let (Some(id), Some(authority)) =
            (&assignment.declaration_id, &assignment.issuing_authority)
        {
            let found =
                store::find_declaration_by(&mut tx, authority.as_str(), id.as_str()).await?;
            // One whose trip the sender may not see is answered as one not registered.
            let found = match found {
                Some(row) if message.source.sees(&mut tx, &row.trip_id).await? => Some(row),
                _ => None,
            };
            let Some(row) = found else {
                tx.rollback().await?;
                return Err(Attempt::Failed(IngestError::Conflict(Located::pointer(
                    "/declaration_id",
                    format!(
                        "declaration {id} of {authority} is not yet registered: send the seal \
                         assignment again once the declaration is in"
                    ),
                ))));
            };
            targets.insert(row.trip_id, assignment.equipment.clone());
        } else {
            for equipment in &assignment.equipment {
                let mut trips =
                    store::live_trips_with_equipment(&mut tx, equipment.id.as_str()).await?;
                // Trips the sender may not see do not carry the container, as far as it
                // is told.
                let mut seen = Vec::with_capacity(trips.len());
                for trip in trips {
                    if message.source.sees(&mut tx, &trip).await? {
                        seen.push(trip);
                    }
                }
                trips = seen;
                match trips.as_slice() {
                    [] => skipped.push(SkippedEquipment {
                        equipment_id: equipment.id.clone(),
                        reason: "no live trip carries this container".into(),
                    }),
                    [one] => targets
                        .entry(one.clone())
                        .or_default()
                        .push(equipment.clone()),
                    several => skipped.push(SkippedEquipment {
                        equipment_id: equipment.id.clone(),
                        reason: format!(
                            "{} live trips carry this container ({}): an assignment naming the declaration decides",
                            several.len(),
                            several.join(", ")
                        ),
                    }),
                }
            }
            if targets.is_empty() {
                tx.rollback().await?;
                return Err(refuse(
                    "/equipment".into(),
                    format!(
                        "no seal could be tied: {}",
                        skipped
                            .iter()
                            .map(|s| format!("{} ({})", s.equipment_id, s.reason))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                ));
            }
        }
        let mut record = message.record(Outcome::Accepted);
        record.parsed = Some(canonical(assignment));
        store::insert_message(&mut tx, &record).await?;
        let actor = message.source.actor();
        let mut outcome = AssignmentOutcome {
            reference: assignment.reference.clone(),
            trips: Vec::new(),
            skipped,
        };
        // The seals' locks first (in order, all targets at once): a declaration or another
        // assignment naming one of them is checked after this one, or before it.
        store::lock_seal_devices(
            &mut tx,
            self.store.backend(),
            targets.values().flatten().flat_map(|e| e.seals.iter()),
        )
        .await?;
        for (trip, equipment) in targets {
            // A seal or device another live trip holds would not report here: its events
            // route to that trip.
            // Collected first: an iterator held across the awaits below would keep this
            // future from being Send for every lifetime (the AMQP consumer spawns it).
            let sealed: Vec<(&ects_core::Equipment, &ects_core::Seal)> = equipment
                .iter()
                .flat_map(|e| e.seals.iter().map(move |s| (e, s)))
                .collect();
            for (e, seal) in sealed {
                if store::held_by_another_live_trip(&mut tx, seal, &trip, None).await? {
                    tx.rollback().await?;
                    return Err(Attempt::Failed(IngestError::Conflict(Located::pointer(
                        "/equipment",
                        format!("{} (container {})", store::held_elsewhere(seal), e.id),
                    ))));
                }
            }
            let trip_id = TripId::parse(&trip).map_err(|_| {
                Attempt::Failed(IngestError::Store(StoreError::Corrupt(format!(
                    "trip id {trip}"
                ))))
            })?;
            let containers = equipment.iter().map(|e| e.id.clone()).collect();
            let input = Input::SealAssignment(SealAssignment {
                equipment,
                ..assignment.clone()
            });
            let applied = match self
                .tracking
                .command_in(&mut tx, trip_id, &input, &actor, message.now)
                .await
            {
                Ok(applied) => applied,
                Err(CommandFailure::Store(StoreError::Contention)) => return Err(Attempt::Retry),
                Err(CommandFailure::Store(e)) => return Err(e.into()),
                Err(CommandFailure::NoTrip(id)) => {
                    return Err(Attempt::Failed(IngestError::Store(StoreError::Corrupt(
                        format!("declaration of trip {id} without its trip"),
                    ))));
                }
                Err(CommandFailure::Refused(e)) => {
                    tx.rollback().await?;
                    return Err(Attempt::Failed(IngestError::Conflict(Located::pointer(
                        "/equipment",
                        format!("trip {trip_id}: {}", e.reason),
                    ))));
                }
                Err(CommandFailure::Conflict { field, reason }) => {
                    tx.rollback().await?;
                    return Err(Attempt::Failed(IngestError::Conflict(Located::pointer(
                        format!("/{field}"),
                        format!("trip {trip_id}: {reason}"),
                    ))));
                }
            };
            let seals_assigned = applied
                .effects
                .iter()
                .map(|e| match e {
                    Effect::SealsAssigned { equipment, .. } => {
                        equipment.iter().map(|e| e.seals.len()).sum()
                    }
                    _ => 0,
                })
                .sum();
            outcome.trips.push(AssignedTrip {
                trip_id,
                declaration_id: applied.trip.declaration_id.clone(),
                issuing_authority: applied.trip.issuing_authority.clone(),
                containers,
                seals_assigned,
                events_claimed: applied.events_claimed,
                already_recorded: applied.repeated,
            });
        }
        let response = IngestResponse {
            message_id: message.id.clone(),
            format: message.format.to_owned(),
            trips: outcome.trips.iter().map(|t| t.trip_id).collect(),
            declaration: None,
            events: None,
            assignment: Some(outcome),
            conflicts: Vec::new(),
            refused: Vec::new(),
        };
        Self::finish(tx, message, &response).await
    }

    async fn events(
        &self,
        message: &Message<'_>,
        events: &[SealEvent],
        base: Option<&'static str>,
    ) -> Result<Answer, Attempt> {
        let mut tx = self.store.begin_write().await?;
        let mut record = message.record(Outcome::Accepted);
        record.parsed = Some(canonical(&events));
        store::insert_message(&mut tx, &record).await?;
        // What a signature does not cover is not believed of a signed event: a relay could
        // set `accuracy_m` (which decides whether a fix is precise enough for the rules) or
        // `raw` on a genuine event. Dropped before anything is judged (the message as
        // received is kept above).
        let unsigned_parts =
            |e: &SealEvent| e.raw.is_some() || e.position.is_some_and(|p| p.accuracy_m.is_some());
        let stripped: Vec<SealEvent>;
        let events: &[SealEvent] = if events
            .iter()
            .any(|e| e.signature.is_some() && unsigned_parts(e))
        {
            stripped = events
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    if e.signature.is_some() {
                        e.raw = None;
                        if let Some(p) = e.position.as_mut() {
                            p.accuracy_m = None;
                        }
                    }
                    e
                })
                .collect();
            &stripped
        } else {
            events
        };

        // Applied in event-time order; the sort is stable, so equal times keep their order.
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_cached_key(|&i| (events[i].time, ects_core::trip::event_order(&events[i])));

        // First store every new event with its trip, then apply them trip by trip: a late
        // event's replay then reads it back with the others.
        let mut per_trip: BTreeMap<String, Vec<&SealEvent>> = BTreeMap::new();
        let mut touched: Vec<TripId> = Vec::new();
        let mut counts = EventCounts::default();
        let mut earlier_messages = BTreeSet::new();
        let mut conflicts: Vec<EventConflictNote> = Vec::new();
        let mut per_trip_conflicts: BTreeMap<String, Vec<ConflictingEvent>> = BTreeMap::new();
        let mut refused: Vec<EventRefusalNote> = Vec::new();
        let mut per_trip_refused: BTreeMap<String, Vec<RefusedEvent>> = BTreeMap::new();
        // Each device's keys and platform, read once (the device is locked meanwhile).
        let mut device_facts: BTreeMap<String, crate::devices::DeviceFacts> = BTreeMap::new();
        // Devices locked in this transaction (once each).
        let mut locked = BTreeSet::new();
        // Whether the sender may see a trip, asked once per trip of the message.
        let mut visible: BTreeMap<String, bool> = BTreeMap::new();
        for i in order {
            let event = &events[i];
            let pointer = match base {
                Some(b) => format!("{b}/{i}"),
                None => String::new(),
            };
            let Some(key) = event_key(event) else {
                return Err(Attempt::Failed(IngestError::Document(
                    DocumentError::Invalid(vec![Located::pointer(
                        pointer,
                        "a seal event needs event_id or seq",
                    )]),
                )));
            };
            let text = canonical(event);
            let found = store::find_event(&mut tx, &key, event).await?;
            if let Some(partner) = message.source.scope {
                if locked.insert(event.device_id.as_str()) {
                    store::lock_device(&mut tx, self.store.backend(), event.device_id.as_str())
                        .await?;
                }
                // A device held by a trip the partner may not see (or an event stored on
                // such a trip) is, to this partner, a device no trip holds: its event is
                // kept apart and answered as an unknown device's would be.
                let held_by = match &found {
                    Some(f) => event_trip(&mut tx, &f.event_key).await?,
                    None => store::trip_for_event(&mut tx, event).await?,
                };
                let hidden = match held_by {
                    Some(t) => !sees_cached(&message.source, &mut tx, &mut visible, &t).await?,
                    None => false,
                };
                // Device authentication first, as for any device: an event it refuses is
                // refused (kept as evidence on no trip) whoever holds the device, so the
                // answer depends on the device's keys, not on the trip.
                let refused_anyway = hidden && {
                    let facts =
                        facts_of(&mut device_facts, &mut tx, event.device_id.as_str()).await?;
                    matches!(
                        self.devices.judge_with(
                            facts,
                            event,
                            message.source.platform,
                            message.now
                        )?,
                        Verdict::Refused(_)
                    )
                };
                if hidden && !refused_anyway {
                    withhold(
                        &mut tx,
                        message,
                        partner,
                        &key,
                        event,
                        &text,
                        &pointer,
                        &mut counts,
                        &mut conflicts,
                        &mut earlier_messages,
                    )
                    .await?;
                    continue;
                }
            }
            if let Some(found) = &found
                && found.canonical == text
            {
                counts.duplicates += 1;
                earlier_messages.insert(found.message_id.clone());
                continue;
            }
            if locked.insert(event.device_id.as_str()) {
                store::lock_device(&mut tx, self.store.backend(), event.device_id.as_str()).await?;
            }
            let mut trip_id = store::trip_for_event(&mut tx, event).await?;
            if let Some(t) = &trip_id
                && !sees_cached(&message.source, &mut tx, &mut visible, t).await?
            {
                // Never reaches a trip the sender may not see (a conflicting variant of an
                // event stored without a trip stays without one).
                trip_id = None;
            }
            // Device authentication: a refused event is kept as evidence and raises
            // device_auth_failure; it is never applied, nor does it take its seq.
            let facts = facts_of(&mut device_facts, &mut tx, event.device_id.as_str()).await?;
            let verdict =
                self.devices
                    .judge_with(facts, event, message.source.platform, message.now)?;
            let replay = match (&verdict, &found) {
                (Verdict::Taken { signed: true, .. }, Some(found))
                    if found
                        .authenticated
                        .as_deref()
                        .is_some_and(|a| a.starts_with("key:")) =>
                {
                    Some(format!(
                        "replay: device {} seq {} was taken already by signed event {}",
                        event.device_id,
                        event.seq.map_or("-".into(), |s| s.to_string()),
                        found.event_key
                    ))
                }
                _ => None,
            };
            let reason = match (&verdict, replay) {
                (_, Some(replay)) => Some(replay),
                (Verdict::Refused(why), None) => Some(why.clone()),
                (Verdict::Taken { .. }, None) => None,
            };
            // An event its poster may not speak for (a device platform posting another's
            // device) is the poster's act, not the device's: kept, but on no trip, raising
            // nothing there and naming no trip in the answer.
            let foreign = crate::devices::platform_may_post(
                message.source.platform,
                event.device_id.as_str(),
                facts.registered.as_deref(),
            )
            .is_err();
            let trip_id = if foreign { None } else { trip_id };
            if let Some(reason) = reason {
                let refusal_id = hex::encode(Sha256::digest(
                    format!("{key}\u{0}{text}\u{0}{reason}").as_bytes(),
                ));
                let stored = store::devices::insert_refusal(
                    &mut tx,
                    &refusal_id,
                    event,
                    &reason,
                    &text,
                    trip_id.as_deref(),
                    &message.id,
                    message.now,
                )
                .await?;
                counts.refused += 1;
                refused.push(EventRefusalNote {
                    pointer: pointer.clone(),
                    reason: reason.clone(),
                });
                if stored && let Some(id) = trip_id {
                    per_trip_refused.entry(id).or_default().push(RefusedEvent {
                        event: event.clone(),
                        reason,
                        refusal_id,
                    });
                }
                continue;
            }
            let authenticated = match verdict {
                Verdict::Taken { mark, .. } => mark,
                Verdict::Refused(_) => String::new(),
            };
            if let Some(found) = found {
                // Same identity, other content: one of the two is not genuine. Kept as
                // evidence beside the stored one; the rest of the message goes on.
                let conflict_id =
                    hex::encode(Sha256::digest(format!("{key}\u{0}{text}").as_bytes()));
                if store::conflict_variants(&mut tx, &found.event_key).await?
                    >= MAX_CONFLICT_VARIANTS
                {
                    if store::conflict_kept(&mut tx, &conflict_id).await? {
                        counts.duplicates += 1;
                        continue;
                    }
                    // Enough variants are kept to show the event is contested; the rest
                    // are counted on the stored event, not kept, not applied.
                    store::count_dropped_conflict(&mut tx, &found.event_key).await?;
                    counts.conflicting += 1;
                    conflicts.push(EventConflictNote::dropped(&pointer, &key, &found.event_key));
                    continue;
                }
                let stored = store::insert_event_conflict(
                    &mut tx,
                    &conflict_id,
                    &key,
                    &found.event_key,
                    event,
                    &text,
                    trip_id.as_deref(),
                    &message.id,
                    message.now,
                )
                .await?;
                if !stored {
                    // This very conflicting event was kept already.
                    counts.duplicates += 1;
                    continue;
                }
                counts.conflicting += 1;
                conflicts.push(EventConflictNote::kept(
                    &pointer,
                    &key,
                    event,
                    &found.event_key,
                ));
                if let Some(id) = trip_id {
                    per_trip_conflicts
                        .entry(id)
                        .or_default()
                        .push(ConflictingEvent {
                            event: event.clone(),
                            conflicts_with: found.event_key,
                            conflict_id,
                        });
                }
                continue;
            }
            match &trip_id {
                Some(id) => {
                    counts.accepted += 1;
                    per_trip.entry(id.clone()).or_default().push(event);
                }
                None => counts.unmatched += 1,
            }
            store::insert_event(
                &mut tx,
                &key,
                event,
                &text,
                trip_id.as_deref(),
                &message.id,
                message.now,
                &authenticated,
            )
            .await?;
            if let (None, Some(p)) = (&trip_id, message.source.scope) {
                // Claimed later only by a trip this partner may see.
                let parties = format!(",{},", p.visible_parties().join(","));
                sqlx::query("update seal_events set sent_by_parties = $1 where event_key = $2")
                    .bind(parties)
                    .bind(&key)
                    .execute(&mut **tx)
                    .await?;
            }
        }

        if counts.accepted + counts.unmatched + counts.conflicting + counts.refused == 0
            && earlier_messages.len() == 1
        {
            let original = earlier_messages.pop_first().unwrap_or_default();
            let same_items: i64 = sqlx::query(
                "select (select count(*) from seal_events where message_id = $1)
                      + (select count(*) from withheld_events where message_id = $1) as n",
            )
            .bind(&original)
            .fetch_one(&mut **tx)
            .await?
            .try_get("n")?;
            // The first answer only if it names no trip this sender may not see.
            let visible = match store::response_of_message(&mut tx, &original).await? {
                Some((_, body)) => message.source.sees_answer(&mut tx, &body).await?,
                None => true,
            };
            if visible && usize::try_from(same_items).ok() == Some(events.len()) {
                // Undo this attempt's message row; the replay records its own.
                tx.rollback().await?;
                let tx = self.store.begin_write().await?;
                return self.replay_of(tx, message, &original).await;
            }
        }

        let trips: BTreeSet<String> = per_trip
            .keys()
            .chain(per_trip_conflicts.keys())
            .chain(per_trip_refused.keys())
            .cloned()
            .collect();
        for trip_id in &trips {
            let mut inputs: Vec<Input> = per_trip
                .get(trip_id)
                .into_iter()
                .flatten()
                .map(|e| Input::SealEvent((*e).clone()))
                .collect();
            inputs.extend(
                per_trip_conflicts
                    .remove(trip_id)
                    .into_iter()
                    .flatten()
                    .map(Input::ConflictingEvent),
            );
            inputs.extend(
                per_trip_refused
                    .remove(trip_id)
                    .into_iter()
                    .flatten()
                    .map(Input::RefusedEvent),
            );
            let effects = self
                .tracking
                .apply_inputs(
                    &mut tx,
                    trip_id,
                    &inputs,
                    message.now,
                    Some(&message.source.actor()),
                )
                .await?;
            counts.alerts_raised += effects
                .iter()
                .filter(|e| matches!(e, Effect::AlertRaised { .. }))
                .count();
            if let Ok(id) = TripId::parse(trip_id) {
                touched.push(id);
            }
        }
        let response = IngestResponse {
            message_id: message.id.clone(),
            format: message.format.to_owned(),
            trips: touched,
            declaration: None,
            events: Some(counts),
            assignment: None,
            conflicts,
            refused,
        };
        Self::finish(tx, message, &response).await
    }
}

/// [`Source::sees`], remembered for the rest of the message.
async fn sees_cached(
    source: &Source<'_>,
    tx: &mut Tx,
    cache: &mut BTreeMap<String, bool>,
    trip_id: &str,
) -> Result<bool, StoreError> {
    if let Some(seen) = cache.get(trip_id) {
        return Ok(*seen);
    }
    let seen = source.sees(tx, trip_id).await?;
    cache.insert(trip_id.to_owned(), seen);
    Ok(seen)
}

/// The trip a stored event was applied to.
async fn event_trip(tx: &mut Tx, event_key: &str) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("select trip_id from seal_events where event_key = $1")
        .bind(event_key)
        .fetch_optional(&mut ***tx)
        .await?;
    Ok(row.and_then(|r| r.try_get::<Option<String>, _>("trip_id").ok().flatten()))
}

// One wording for a stored and a withheld event's conflicts: the answers must not differ.
impl EventConflictNote {
    /// A conflicting variant kept as evidence.
    fn kept(pointer: &str, key: &str, event: &SealEvent, stored: &str) -> Self {
        Self {
            pointer: pointer.to_owned(),
            conflicts_with: stored.to_owned(),
            detail: format!(
                "seal event {key} (device {} seq {}) contradicts stored event {stored}: kept as evidence, not applied; alert event_conflict",
                event.device_id,
                event.seq.map_or("-".into(), |s| s.to_string()),
            ),
        }
    }

    /// A conflicting variant past the cap: counted, not kept.
    fn dropped(pointer: &str, key: &str, stored: &str) -> Self {
        Self {
            pointer: pointer.to_owned(),
            conflicts_with: stored.to_owned(),
            detail: format!(
                "seal event {key} contradicts stored event {stored}, which has \
                 {MAX_CONFLICT_VARIANTS} conflicting variants kept already: \
                 counted (conflicts_dropped), not kept"
            ),
        }
    }
}

/// A device's keys and platform, read once per message (the device is locked meanwhile).
async fn facts_of<'c>(
    cache: &'c mut BTreeMap<String, crate::devices::DeviceFacts>,
    conn: &mut sqlx::AnyConnection,
    device: &str,
) -> Result<&'c mut crate::devices::DeviceFacts, StoreError> {
    Ok(match cache.entry(device.to_owned()) {
        std::collections::btree_map::Entry::Occupied(known) => known.into_mut(),
        std::collections::btree_map::Entry::Vacant(new) => {
            new.insert(crate::devices::DeviceFacts::load(conn, device).await?)
        }
    })
}

/// Keeps apart an event a partner sent for a device a trip it may not see holds, and
/// counts it as the events of a device no trip holds are counted: unmatched the first
/// time, a duplicate when sent again, conflicting when its key comes with other content.
#[allow(clippy::too_many_arguments)]
async fn withhold(
    tx: &mut Tx,
    message: &Message<'_>,
    partner: &Scope,
    key: &str,
    event: &SealEvent,
    text: &str,
    pointer: &str,
    counts: &mut EventCounts,
    conflicts: &mut Vec<EventConflictNote>,
    earlier_messages: &mut BTreeSet<String>,
) -> Result<(), StoreError> {
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    let seq = store::seq_column(event)?;
    // By key, or by device and seq, as `store::find_event` matches a stored event.
    let rows = sqlx::query(
        "select content_sha256, message_id, event_key from withheld_events
         where partner_id = $1 and (event_key = $2 or (device_id = $3 and seq = $4))
         order by received_at, message_id",
    )
    .bind(&partner.id)
    .bind(key)
    .bind(event.device_id.as_str())
    .bind(seq)
    .fetch_all(&mut ***tx)
    .await?;
    // The first kept is the "stored" one the others conflict with.
    let first_key: String = match rows.first() {
        Some(r) => r.try_get("event_key")?,
        None => key.to_owned(),
    };
    let mut first = true;
    for r in &rows {
        if r.try_get::<String, _>("content_sha256")? == sha {
            counts.duplicates += 1;
            if first {
                earlier_messages.insert(r.try_get("message_id")?);
            }
            return Ok(());
        }
        first = false;
    }
    // As for a device no trip holds: past the cap, a variant is counted, not kept (the
    // answer must not tell the two apart, and the table must not grow without bound).
    if rows.len() as i64 > MAX_CONFLICT_VARIANTS {
        counts.conflicting += 1;
        conflicts.push(EventConflictNote::dropped(pointer, key, &first_key));
        return Ok(());
    }
    sqlx::query(
        "insert into withheld_events (partner_id, event_key, content_sha256, device_id,
             canonical, message_id, received_at, seq)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         on conflict (partner_id, event_key, content_sha256) do nothing",
    )
    .bind(&partner.id)
    .bind(key)
    .bind(&sha)
    .bind(event.device_id.as_str())
    .bind(text)
    .bind(&message.id)
    .bind(store::ts(message.now))
    .bind(seq)
    .execute(&mut ***tx)
    .await?;
    if rows.is_empty() {
        counts.unmatched += 1;
    } else {
        counts.conflicting += 1;
        conflicts.push(EventConflictNote::kept(pointer, key, event, &first_key));
    }
    Ok(())
}

/// The key a seal event is stored under: the sender's event id or the sequence number,
/// each within its device (two devices may number their events alike).
fn event_key(event: &SealEvent) -> Option<String> {
    match (&event.event_id, event.seq) {
        // The device's length says where it ends: both parts may hold ':'.
        (Some(id), _) => Some(format!(
            "eid:{}:{}:{id}",
            event.device_id.as_str().chars().count(),
            event.device_id
        )),
        (None, Some(seq)) => Some(format!("seq:{}:{seq}", event.device_id)),
        (None, None) => None,
    }
}

/// The JSON pointer of the first place two documents differ.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let path = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, path),
                    _ => Some(path),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, format!("{at}/{i}")))
            .or_else(|| (x.len() != y.len()).then(|| format!("{at}/{}", x.len().min(y.len())))),
        _ => (a != b).then_some(at),
    }
}

/// Who may amend or delete a registered declaration: the partner that filed it
/// (`filer:<id>` among its trip's parties), or a partner whose configured authority is the
/// declaration's issuing authority. A sender without a partner (HTTP without an API token:
/// the operator's side) only a declaration no partner filed, as a plain declaration (F)
/// from it would have made.
fn may_change(
    source: &Source<'_>,
    parties: &[String],
    declaration: &TransitDeclaration,
    function: MessageFunction,
) -> Result<(), String> {
    let filer = parties.iter().find_map(|p| p.strip_prefix("filer:"));
    let allowed = match source.partner {
        Some(partner) => {
            filer == Some(partner) || source.authority == Some(&declaration.issuing_authority)
        }
        None => filer.is_none(),
    };
    if allowed {
        return Ok(());
    }
    let who = source.partner.map_or_else(
        || "a sender without a partner's API token".to_owned(),
        |p| format!("partner {p}"),
    );
    let filed = filer.map_or_else(String::new, |f| format!(" (filed by partner {f})"));
    Err(format!(
        "{who} may not send this {} of declaration {} of {}{filed}: only the partner that filed \
         it or its issuing authority may",
        function.as_str(),
        declaration.declaration_id,
        declaration.issuing_authority
    ))
}

/// The most versions a declaration has (the first and 49 amendments): each amendment
/// replays the trip and is kept, so there is a bound.
pub const MAX_DECLARATION_VERSIONS: i64 = 50;

/// Conflicting variants kept per stored event (`seal_event_conflicts`); more are counted
/// in `seal_events.conflicts_dropped`.
pub const MAX_CONFLICT_VARIANTS: i64 = 5;

/// The most changes one amendment's audit entry lists (the rest are in its version).
const MAX_CHANGES: usize = 200;

/// Every place two documents differ, as `{"pointer", "old", "new"}` (`null` where a side
/// has nothing), in document order.
fn differences(
    a: &serde_json::Value,
    b: &serde_json::Value,
    at: String,
    out: &mut Vec<serde_json::Value>,
) {
    use serde_json::Value;
    if out.len() >= MAX_CHANGES {
        return;
    }
    fn one(out: &mut Vec<Value>, at: String, old: Option<&Value>, new: Option<&Value>) {
        if out.len() < MAX_CHANGES {
            out.push(serde_json::json!({
                "pointer": at,
                "old": old.cloned().unwrap_or(Value::Null),
                "new": new.cloned().unwrap_or(Value::Null),
            }));
        }
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => differences(p, q, path, out),
                    (p, q) => one(out, path, p, q),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let path = format!("{at}/{i}");
                match (x.get(i), y.get(i)) {
                    (Some(p), Some(q)) => differences(p, q, path, out),
                    (p, q) => one(out, path, p, q),
                }
            }
        }
        _ if a != b => one(out, at, Some(a), Some(b)),
        _ => {}
    }
}

/// 0..10 ms, different per message and attempt, so that retrying writers spread out.
fn jitter_ms(sha256: &str, attempt: usize) -> u64 {
    let byte = sha256
        .as_bytes()
        .get(attempt % 32)
        .copied()
        .unwrap_or_default();
    u64::from(byte) % 10
}

fn problem_json(e: &DocumentError) -> String {
    let located = e.clone().into_problems();
    serde_json::to_string(&located).unwrap_or_default()
}
