//! Format adapters: each turns its documents into canonical inputs. Adapters are
//! registered here once; transports look them up by format id.

mod ects_json;

use std::sync::Arc;

use ects_core::{SealEvent, TransitDeclaration};
use serde::Serialize;

use crate::problem::DocumentError;
use crate::schemas::Schemas;

pub use ects_json::{EctsJson, decode_canonical};

/// What a message carries, in canonical form.
#[derive(Debug, Clone)]
pub enum Inbound {
    Declaration(Box<TransitDeclaration>),
    /// The events, and the JSON pointer of their array (`None` for a lone event).
    SealEvents {
        events: Vec<SealEvent>,
        base: Option<&'static str>,
    },
}

/// Limits every adapter enforces on top of the body size.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events_per_message: usize,
}

pub trait Format: Send + Sync {
    /// The public format id (`ects-json`, `wco-dm`, ...).
    fn id(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// Whether a document looks like this format (for `POST /v1/messages`).
    fn detect(&self, body: &[u8]) -> bool;
    /// Reads a document into canonical inputs, or says what is wrong and where.
    fn decode(&self, body: &[u8]) -> Result<Inbound, DocumentError>;
}

/// One format as `ects-gateway formats` and `GET /v1/formats` list it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FormatInfo {
    pub id: &'static str,
    pub description: &'static str,
    pub directions: Vec<&'static str>,
}

#[derive(Clone)]
pub struct Formats {
    adapters: Vec<Arc<dyn Format>>,
}

impl std::fmt::Debug for Formats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.adapters.iter().map(|a| a.id()))
            .finish()
    }
}

impl Formats {
    pub fn new(schemas: Arc<Schemas>, limits: Limits) -> Self {
        Self {
            adapters: vec![Arc::new(EctsJson::new(schemas, limits))],
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<dyn Format>> {
        self.adapters.iter().find(|a| a.id() == id)
    }

    pub fn detect(&self, body: &[u8]) -> Option<&Arc<dyn Format>> {
        self.adapters.iter().find(|a| a.detect(body))
    }

    pub fn ids(&self) -> Vec<&'static str> {
        self.adapters.iter().map(|a| a.id()).collect()
    }

    pub fn list(&self) -> Vec<FormatInfo> {
        self.adapters
            .iter()
            .map(|a| FormatInfo {
                id: a.id(),
                description: a.description(),
                directions: vec!["in", "out"],
            })
            .collect()
    }
}
