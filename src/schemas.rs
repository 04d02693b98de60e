//! The canonical JSON Schemas (`schemas/`), embedded in the binary and compiled once.
//! Inbound `ects-json` documents are validated against them before they are deserialised.

use jsonschema::{Registry, Validator};
use serde_json::Value;

use crate::problem::Located;

/// Base of every schema's `$id`.
pub const BASE: &str = "https://schemas.ects-gateway.org/v1/";

/// (file name, text) of every schema, in dependency order.
pub const FILES: &[(&str, &str)] = &[
    (
        "common.schema.json",
        include_str!("../schemas/common.schema.json"),
    ),
    (
        "transit-declaration.schema.json",
        include_str!("../schemas/transit-declaration.schema.json"),
    ),
    (
        "seal-event.schema.json",
        include_str!("../schemas/seal-event.schema.json"),
    ),
    (
        "seal-event-batch.schema.json",
        include_str!("../schemas/seal-event-batch.schema.json"),
    ),
    (
        "trip-status.schema.json",
        include_str!("../schemas/trip-status.schema.json"),
    ),
    (
        "alert.schema.json",
        include_str!("../schemas/alert.schema.json"),
    ),
    (
        "release-authorization.schema.json",
        include_str!("../schemas/release-authorization.schema.json"),
    ),
    (
        "custody-handover.schema.json",
        include_str!("../schemas/custody-handover.schema.json"),
    ),
    (
        "status-notification.schema.json",
        include_str!("../schemas/status-notification.schema.json"),
    ),
    (
        "cancellation.schema.json",
        include_str!("../schemas/cancellation.schema.json"),
    ),
    (
        "seal-assignment.schema.json",
        include_str!("../schemas/seal-assignment.schema.json"),
    ),
];

/// The canonical messages that have a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canonical {
    TransitDeclaration,
    SealEvent,
    SealEventBatch,
    TripStatus,
    Alert,
    ReleaseAuthorization,
    CustodyHandover,
    StatusNotification,
    Cancellation,
    SealAssignment,
}

impl Canonical {
    pub const ALL: [Canonical; 10] = [
        Canonical::TransitDeclaration,
        Canonical::SealEvent,
        Canonical::SealEventBatch,
        Canonical::TripStatus,
        Canonical::Alert,
        Canonical::ReleaseAuthorization,
        Canonical::CustodyHandover,
        Canonical::StatusNotification,
        Canonical::Cancellation,
        Canonical::SealAssignment,
    ];

    pub fn file(self) -> &'static str {
        match self {
            Canonical::TransitDeclaration => "transit-declaration.schema.json",
            Canonical::SealEvent => "seal-event.schema.json",
            Canonical::SealEventBatch => "seal-event-batch.schema.json",
            Canonical::TripStatus => "trip-status.schema.json",
            Canonical::Alert => "alert.schema.json",
            Canonical::ReleaseAuthorization => "release-authorization.schema.json",
            Canonical::CustodyHandover => "custody-handover.schema.json",
            Canonical::StatusNotification => "status-notification.schema.json",
            Canonical::Cancellation => "cancellation.schema.json",
            Canonical::SealAssignment => "seal-assignment.schema.json",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("schema {file}: {reason}")]
pub struct SchemaError {
    pub file: &'static str,
    pub reason: String,
}

/// Compiled validators, one per canonical message.
pub struct Schemas {
    validators: Vec<(Canonical, Validator)>,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schemas").finish_non_exhaustive()
    }
}

/// How many schema violations one answer lists at most.
const MAX_REPORTED: usize = 20;

impl Schemas {
    pub fn load() -> Result<Self, SchemaError> {
        let mut documents = Vec::with_capacity(FILES.len());
        for (file, text) in FILES {
            let value: Value = serde_json::from_str(text).map_err(|e| SchemaError {
                file,
                reason: e.to_string(),
            })?;
            documents.push((*file, value));
        }
        let mut builder = Registry::new();
        for (file, value) in &documents {
            builder = builder
                .add(format!("{BASE}{file}"), value.clone())
                .map_err(|e| SchemaError {
                    file,
                    reason: e.to_string(),
                })?;
        }
        let registry = builder.prepare().map_err(|e| SchemaError {
            file: "registry",
            reason: e.to_string(),
        })?;
        let mut validators = Vec::new();
        for kind in Canonical::ALL {
            let file = kind.file();
            let value = documents
                .iter()
                .find(|(f, _)| *f == file)
                .map(|(_, v)| v)
                .ok_or_else(|| SchemaError {
                    file,
                    reason: "not embedded".into(),
                })?;
            let validator = jsonschema::options()
                .with_registry(&registry)
                .should_validate_formats(true)
                .build(value)
                .map_err(|e| SchemaError {
                    file,
                    reason: e.to_string(),
                })?;
            validators.push((kind, validator));
        }
        Ok(Self { validators })
    }

    fn validator(&self, kind: Canonical) -> &Validator {
        // `load` builds one validator for every kind in `Canonical::ALL`.
        &self
            .validators
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("a validator for every canonical kind")
            .1
    }

    /// The violations of `value`, each with the JSON pointer of the offending part
    /// (prefixed with `base`, the pointer of `value` inside the whole document).
    pub fn check(&self, kind: Canonical, value: &Value, base: &str) -> Vec<Located> {
        self.validator(kind)
            .iter_errors(value)
            .take(MAX_REPORTED)
            .map(|e| Located::pointer(format!("{base}{}", e.instance_path()), describe(&e)))
            .collect()
    }
}

/// The validator's message, except for `anyOf`/`oneOf`, whose message quotes the whole
/// instance: say instead what each allowed form missed.
fn describe(e: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as Kind;
    let (Kind::AnyOf { context } | Kind::OneOfNotValid { context }) = e.kind() else {
        return e.to_string();
    };
    let forms: Vec<String> = context
        .iter()
        .enumerate()
        .filter_map(|(i, errors)| {
            errors.first().map(|first| {
                let at = first.instance_path().to_string();
                if at.is_empty() || at == e.instance_path().to_string() {
                    format!("({}) {first}", i + 1)
                } else {
                    format!("({}) {at}: {first}", i + 1)
                }
            })
        })
        .collect();
    format!("matches none of the allowed forms: {}", forms.join("; "))
}
