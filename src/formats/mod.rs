//! Format adapters: each turns its documents into canonical inputs and canonical outputs
//! into its documents. The canonical `ects-json` is code; every other format is a mapping
//! file compiled at start-up (`crate::mapping`). Transports look adapters up by id.

mod ects_json;
pub mod icegate_ack;
mod sign;

use std::collections::BTreeMap;
use std::sync::Arc;

use ects_core::{SealAssignment, SealEvent, StatusNotification, TransitDeclaration, TripStatus};
use serde::Serialize;

use crate::mapping::{MappingSet, MessageKind};
use crate::problem::{DocumentError, Located};
use crate::schemas::Schemas;

pub use sign::{CommandSigner, Signer};

pub use ects_json::{
    EctsJson, check_assignment, check_command_times, check_declaration, check_event_times,
    decode_canonical, deserialize_at,
};

/// What a message carries, in canonical form.
#[derive(Debug, Clone)]
pub enum Inbound {
    Declaration(Box<TransitDeclaration>),
    /// The events, and the JSON pointer of their array (`None` for a lone event).
    SealEvents {
        events: Vec<SealEvent>,
        base: Option<&'static str>,
    },
    /// Seals tied to declared trips' containers.
    SealAssignment(Box<SealAssignment>),
}

impl Inbound {
    /// The same data, to be written.
    pub fn as_outbound(&self) -> Outbound<'_> {
        match self {
            Inbound::Declaration(d) => Outbound::Declaration(d),
            Inbound::SealEvents { events, .. } => Outbound::SealEvents(events),
            Inbound::SealAssignment(a) => Outbound::SealAssignment(a),
        }
    }

    pub fn kind(&self) -> MessageKind {
        match self {
            Inbound::Declaration(_) => MessageKind::Declaration,
            Inbound::SealEvents { .. } => MessageKind::SealEvents,
            Inbound::SealAssignment(_) => MessageKind::SealAssignment,
        }
    }
}

/// A decoded document, with the parts of it no binding read.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub inbound: Inbound,
    pub unmapped: Vec<String>,
    /// What reading changed or left open without refusing (e.g. seals not tied to a
    /// container).
    pub notes: Vec<Located>,
    /// What a declaration message asks for (ICES message type F, A or D).
    pub function: MessageFunction,
}

/// What a declaration message asks for. A mapping reads it into the working field
/// `message_function` (ICES 1.5: message type F, A, D); other formats send originals.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageFunction {
    /// A new declaration (ICES F, final): registered once, the same again changes nothing.
    #[default]
    Original,
    /// A new version of a registered declaration (ICES A), before the trip departs.
    Amendment,
    /// The declaration withdrawn (ICES D): its trip is cancelled.
    Deletion,
}

impl MessageFunction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Amendment => "amendment",
            Self::Deletion => "deletion",
        }
    }
}

/// Something to write in a partner's format.
#[derive(Debug, Clone, Copy)]
pub enum Outbound<'a> {
    Declaration(&'a TransitDeclaration),
    SealEvents(&'a [SealEvent]),
    SealAssignment(&'a SealAssignment),
    TripStatus(&'a TripStatus),
    StatusNotification(&'a StatusNotification),
    /// A notification as the outbox sends it: with our reference, which a partner's
    /// answer names (`crate::answers`); written as the canonical field `reference`.
    Answerable(&'a StatusNotification, &'a str),
}

impl Outbound<'_> {
    pub fn kind(&self) -> MessageKind {
        match self {
            Outbound::Declaration(_) => MessageKind::Declaration,
            Outbound::SealEvents(_) => MessageKind::SealEvents,
            Outbound::SealAssignment(_) => MessageKind::SealAssignment,
            Outbound::TripStatus(_) => MessageKind::TripStatus,
            Outbound::StatusNotification(_) | Outbound::Answerable(..) => {
                MessageKind::StatusNotification
            }
        }
    }

    /// The canonical JSON of it.
    pub fn canonical(&self) -> serde_json::Value {
        match self {
            Outbound::Declaration(d) => serde_json::to_value(d),
            Outbound::SealEvents(e) => serde_json::to_value(serde_json::json!({ "events": e })),
            Outbound::SealAssignment(a) => serde_json::to_value(a),
            Outbound::TripStatus(t) => serde_json::to_value(t),
            Outbound::StatusNotification(n) => serde_json::to_value(n),
            Outbound::Answerable(n, reference) => serde_json::to_value(n).map(|mut v| {
                if let Some(o) = v.as_object_mut() {
                    o.insert("reference".into(), (*reference).into());
                }
                v
            }),
        }
        .unwrap_or_default()
    }
}

impl From<&Inbound> for serde_json::Value {
    fn from(inbound: &Inbound) -> Self {
        match inbound {
            Inbound::Declaration(d) => Outbound::Declaration(d).canonical(),
            Inbound::SealEvents { events, .. } => Outbound::SealEvents(events).canonical(),
            Inbound::SealAssignment(a) => Outbound::SealAssignment(a).canonical(),
        }
    }
}

/// A written document, with notes (e.g. a value flagged too long for its field).
#[derive(Debug, Clone)]
pub struct Encoded {
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub flags: Vec<Located>,
}

pub trait Format: Send + Sync {
    /// The public format id (`ects-json`, `wco-dm`, ...).
    fn id(&self) -> &str;
    fn version(&self) -> &str;
    fn description(&self) -> &str;
    /// The messages it reads (`in`) and writes (`out`).
    fn messages(&self) -> Vec<(MessageKind, &'static str)>;
    /// Whether a document looks like this format (for `POST /v1/messages`).
    fn detect(&self, body: &[u8]) -> bool;
    /// The same, with what was already read of the document (its top-level JSON keys),
    /// so that detection across every format parses it once.
    fn detect_sniffed(&self, sniff: &Sniff<'_>) -> bool {
        self.detect(sniff.body)
    }
    /// Reads a document into canonical inputs, or says what is wrong and where.
    fn decode(&self, body: &[u8]) -> Result<Decoded, DocumentError>;
    /// Writes canonical data as a document of this format, signed where the format's
    /// partner requires it and a signer is configured.
    fn encode(&self, out: &Outbound<'_>) -> Result<Encoded, DocumentError>;
    /// The same, never signed: for previews (translate), which anyone allowed to call
    /// them could otherwise use to have arbitrary content signed.
    fn encode_unsigned(&self, out: &Outbound<'_>) -> Result<Encoded, DocumentError> {
        self.encode(out)
    }
}

/// One format as `ects-gateway formats` and `GET /v1/formats` list it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FormatInfo {
    pub id: String,
    pub version: String,
    pub description: String,
    /// `declaration:in`, `trip_status:out`, ...
    pub messages: Vec<String>,
}

/// Limits every adapter enforces on top of the body size.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events_per_message: usize,
}

#[derive(Clone)]
pub struct Formats {
    adapters: Vec<Arc<dyn Format>>,
}

impl std::fmt::Debug for Formats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.adapters.iter().map(|a| a.id().to_owned()))
            .finish()
    }
}

impl Formats {
    /// The canonical format and every mapped one.
    pub fn new(
        schemas: Arc<Schemas>,
        limits: Limits,
        mappings: &MappingSet,
        signers: &BTreeMap<String, Arc<dyn Signer>>,
        offices: &crate::offices::Offices,
    ) -> Self {
        let mut adapters: Vec<Arc<dyn Format>> = vec![Arc::new(EctsJson::new(
            schemas.clone(),
            limits,
            offices.clone(),
        ))];
        for format in mappings.formats(schemas, limits, signers, offices) {
            adapters.push(Arc::new(format));
        }
        Self { adapters }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<dyn Format>> {
        self.adapters.iter().find(|a| a.id() == id)
    }

    /// The first format that recognises the document; mapped formats are asked first, the
    /// canonical JSON (which takes any JSON object) last.
    pub fn detect(&self, body: &[u8]) -> Option<&Arc<dyn Format>> {
        let sniff = Sniff::new(body);
        self.adapters
            .iter()
            .skip(1)
            .find(|a| a.detect_sniffed(&sniff))
            .or_else(|| self.adapters.first().filter(|a| a.detect_sniffed(&sniff)))
    }

    pub fn ids(&self) -> Vec<String> {
        self.adapters.iter().map(|a| a.id().to_owned()).collect()
    }

    pub fn list(&self) -> Vec<FormatInfo> {
        self.adapters
            .iter()
            .map(|a| FormatInfo {
                id: a.id().to_owned(),
                version: a.version().to_owned(),
                description: a.description().to_owned(),
                messages: a
                    .messages()
                    .into_iter()
                    .map(|(m, d)| format!("{}:{d}", m.as_str()))
                    .collect(),
            })
            .collect()
    }
}

/// A document being detected, and what has been read of it so far: its top-level JSON
/// keys are parsed at most once, whatever the number of JSON mappings asking.
pub struct Sniff<'a> {
    pub body: &'a [u8],
    json_keys: std::sync::OnceLock<Option<std::collections::BTreeSet<String>>>,
}

impl<'a> Sniff<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Self {
            body,
            json_keys: std::sync::OnceLock::new(),
        }
    }

    /// The keys of the document's top-level JSON object; `None` when it is not one.
    pub fn json_keys(&self) -> Option<&std::collections::BTreeSet<String>> {
        self.json_keys
            .get_or_init(|| {
                serde_json::from_slice::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(
                    self.body,
                )
                .ok()
                .map(|m| m.into_keys().collect())
            })
            .as_ref()
    }
}
