//! Formats described as data. A mapping file in `mappings/` describes one message of one
//! partner format (see `mappings/README.md`); at start-up every file is compiled into a
//! plan, and a broken file stops start-up with its name, line and reason.

mod bill_seals;
pub mod harness;
mod plan;
pub mod seal_devices;
pub mod spec;
pub(crate) mod tree;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

pub use plan::{CodeList, Plan};
pub use spec::{Direction, MessageKind, Syntax};

use crate::formats::{Decoded, Encoded, Format, Inbound, Limits, Outbound, Signer};
use crate::problem::{DocumentError, Located};
use crate::schemas::{Canonical, Schemas};
use plan::Place;
use tree::Node;

/// Most unmapped parts reported for one document.
const MAX_UNMAPPED: usize = 200;
/// Most partner-schema problems reported for one document.
const MAX_SCHEMA_PROBLEMS: usize = 100;

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct MappingError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// A partner's own JSON Schema, next to the mapping file or relative to the mappings
/// directory. Formats (`date`, ...) are not checked: partners' validators differ on them.
fn partner_schema(
    dir: &Path,
    mapping: &Path,
    name: &str,
    file: &str,
) -> Result<jsonschema::Validator, MappingError> {
    let error = |reason: String| MappingError {
        file: file.to_owned(),
        line: 0,
        reason,
    };
    let candidates = [mapping.parent().map(|p| p.join(name)), Some(dir.join(name))];
    let path = candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| error(format!("[json] schema {name:?} is not a file")))?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| error(format!("cannot read schema {}: {e}", path.display())))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| error(format!("schema {}: {e}", path.display())))?;
    jsonschema::options()
        .should_validate_formats(false)
        .build(&value)
        .map_err(|e| error(format!("schema {}: {e}", path.display())))
}

/// Problems of a document against its partner's schema: the JSON pointer, the partner's
/// error code and the violated keyword with the validator's message.
pub fn schema_problems(json: &plan::JsonPlan, value: &Value, limit: usize) -> Vec<Located> {
    let Some(validator) = &json.schema else {
        return Vec::new();
    };
    validator
        .iter_errors(value)
        .take(limit)
        .map(|e| {
            let mut located = Located::pointer(
                e.instance_path().to_string(),
                format!("{}: {e}", schema_keyword(&e)),
            );
            located.code = json.schema_error_code.clone();
            located
        })
        .collect()
}

/// The keyword a violation broke (`minLength`, `required`), as schema replies name it.
pub fn schema_keyword(e: &jsonschema::ValidationError<'_>) -> String {
    e.schema_path()
        .to_string()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Every compiled mapping, grouped by format id.
#[derive(Debug, Default, Clone)]
pub struct MappingSet {
    pub plans: Vec<Arc<Plan>>,
}

fn toml_line(source: &str, e: &toml::de::Error) -> usize {
    e.span()
        .map(|s| {
            source.as_bytes()[..s.start.min(source.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        })
        .unwrap_or(1)
}

fn read(path: &Path) -> Result<String, MappingError> {
    std::fs::read_to_string(path).map_err(|e| MappingError {
        file: path.display().to_string(),
        line: 0,
        reason: format!("cannot read: {e}"),
    })
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "codes") {
                continue;
            }
            toml_files(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "toml") {
            out.push(path);
        }
    }
    Ok(())
}

impl MappingSet {
    /// Loads `dir/codes/*.toml` and every other `*.toml` below `dir`. A missing directory is
    /// an empty set (only the canonical format is served).
    pub fn load(dir: &Path) -> Result<Self, MappingError> {
        if !dir.exists() {
            return Ok(Self::default());
        }
        let mut codes = BTreeMap::new();
        let codes_dir = dir.join("codes");
        if codes_dir.is_dir() {
            let mut files = Vec::new();
            toml_files(&codes_dir, &mut files).map_err(|e| MappingError {
                file: codes_dir.display().to_string(),
                line: 0,
                reason: e.to_string(),
            })?;
            for path in files {
                let source = read(&path)?;
                let file = path.display().to_string();
                let spec: spec::CodeListFile =
                    toml::from_str(&source).map_err(|e| MappingError {
                        line: toml_line(&source, &e),
                        file: file.clone(),
                        reason: e.message().to_owned(),
                    })?;
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut input: BTreeMap<String, String> = BTreeMap::new();
                for (ours, theirs) in &spec.codes {
                    if let Some(other) = input.insert(theirs.clone(), ours.clone())
                        && !spec.input.contains_key(theirs)
                    {
                        return Err(MappingError {
                            file,
                            line: 0,
                            reason: format!(
                                "partner code {theirs:?} stands for both {other:?} and {ours:?}; say which one it reads as in [input]"
                            ),
                        });
                    }
                }
                input.extend(spec.input.clone());
                codes.insert(
                    name.clone(),
                    Arc::new(CodeList {
                        name,
                        out: spec.codes,
                        input,
                    }),
                );
            }
        }
        let mut files = Vec::new();
        toml_files(dir, &mut files).map_err(|e| MappingError {
            file: dir.display().to_string(),
            line: 0,
            reason: e.to_string(),
        })?;
        let mut plans = Vec::new();
        for path in files {
            let source = read(&path)?;
            let file = path.display().to_string();
            let parsed: spec::MappingFile = toml::from_str(&source).map_err(|e| MappingError {
                line: toml_line(&source, &e),
                file: file.clone(),
                reason: e.message().to_owned(),
            })?;
            let mut plan =
                Plan::compile(&file, &source, parsed, &codes).map_err(|(line, reason)| {
                    MappingError {
                        file: file.clone(),
                        line,
                        reason,
                    }
                })?;
            if let Some(name) = plan.json.schema_file.clone() {
                plan.json.schema = Some(Arc::new(partner_schema(dir, &path, &name, &file)?));
            }
            if plan.id == "ects-json" {
                return Err(MappingError {
                    file,
                    line: 1,
                    reason: "ects-json is the canonical format; give this mapping another id"
                        .into(),
                });
            }
            plans.push(Arc::new(plan));
        }
        Ok(Self { plans })
    }

    /// One adapter per format id, holding all its messages' plans.
    pub fn formats(
        &self,
        schemas: Arc<Schemas>,
        limits: Limits,
        signers: &BTreeMap<String, Arc<dyn Signer>>,
        offices: &crate::offices::Offices,
    ) -> Vec<MappedFormat> {
        let mut by_id: BTreeMap<String, Vec<Arc<Plan>>> = BTreeMap::new();
        for plan in &self.plans {
            by_id.entry(plan.id.clone()).or_default().push(plan.clone());
        }
        by_id
            .into_values()
            .map(|plans| MappedFormat {
                signer: signers.get(&plans[0].id).cloned(),
                plans,
                schemas: schemas.clone(),
                limits,
                offices: offices.clone(),
            })
            .collect()
    }
}

/// A partner format served by its mapping files.
pub struct MappedFormat {
    plans: Vec<Arc<Plan>>,
    schemas: Arc<Schemas>,
    limits: Limits,
    /// Signs written documents whose mapping names a `[json] signature` block.
    signer: Option<Arc<dyn Signer>>,
    /// Every office a document names is checked here, as for every other format.
    offices: crate::offices::Offices,
}

impl MappedFormat {
    fn first(&self) -> &Plan {
        &self.plans[0]
    }

    fn reads(&self, plan: &Plan) -> bool {
        plan.directions.contains(&Direction::In)
    }

    fn plan_matches(plan: &Plan, body: &[u8]) -> bool {
        Self::plan_matches_sniffed(plan, &crate::formats::Sniff::new(body))
    }

    fn plan_matches_sniffed(plan: &Plan, sniff: &crate::formats::Sniff<'_>) -> bool {
        let body = sniff.body;
        match plan.syntax {
            Syntax::Xml => match (&plan.detect_root, tree::xml_root_name(body)) {
                (Some(want), Some(root)) => *want == root,
                _ => false,
            },
            Syntax::Json => {
                !plan.detect_keys.is_empty()
                    && sniff
                        .json_keys()
                        .is_some_and(|keys| plan.detect_keys.iter().all(|k| keys.contains(k)))
            }
            Syntax::Flat => {
                plan.detect_starts_with
                    .as_ref()
                    .is_some_and(|s| body.starts_with(s.as_bytes()))
                    && plan
                        .detect_contains
                        .as_ref()
                        .is_none_or(|c| body.windows(c.len().max(1)).any(|w| w == c.as_bytes()))
            }
        }
    }

    fn parse(plan: &Plan, body: &[u8]) -> Result<Node, DocumentError> {
        match plan.syntax {
            Syntax::Xml => tree::parse_xml(body),
            Syntax::Json if plan.json.schema.is_some() || !plan.json.carry.is_empty() => {
                let value = tree::json_value(body)?;
                // The partner's schema first: its problems are what the partner's own
                // system would answer.
                let problems = schema_problems(&plan.json, &value, MAX_SCHEMA_PROBLEMS);
                if !problems.is_empty() {
                    return Err(DocumentError::Invalid(problems));
                }
                let root = tree::from_json(&value, "");
                for child in root
                    .children
                    .iter()
                    .filter(|c| plan.json.carry.contains(&c.name))
                {
                    // Kept with the raw message, not mapped: not "unmapped" either.
                    tree::mark_read(child);
                }
                Ok(root)
            }
            Syntax::Json => tree::parse_json(body),
            Syntax::Flat => flat::parse(plan, body),
        }
    }

    /// A written JSON document: its signature block (signed, or empty and flagged when no
    /// signer is configured), then checked against the partner's schema. A document that
    /// breaks the schema is refused, never sent.
    fn finish_json(
        &self,
        plan: &Plan,
        mut value: Value,
        flags: &mut Vec<Located>,
        sign: bool,
    ) -> Result<Vec<u8>, DocumentError> {
        let refuse = |pointer: String, detail: String| {
            DocumentError::Invalid(vec![Located::pointer(pointer, detail)])
        };
        let signer = self.signer.as_ref().filter(|_| sign);
        if let (Some(key), Value::Object(map)) = (&plan.json.signature, &mut value) {
            map.remove(key);
            if signer.is_none() {
                let block = plan
                    .json
                    .signature_fields
                    .iter()
                    .map(|f| (f.clone(), Value::String(String::new())))
                    .collect();
                map.insert(key.clone(), Value::Object(block));
                flags.push(Located::pointer(
                    format!("/{key}"),
                    if self.signer.is_some() {
                        format!("not signed: a translation is a preview and is never signed, so the {key} block is empty")
                    } else {
                        format!(
                            "not signed: no signer is configured for {} ([signers] in the configuration), so the {key} block is empty",
                            plan.id
                        )
                    },
                ));
            }
        }
        let schema = plan.json.schema_file.clone().unwrap_or_default();
        let check = |value: &Value| {
            let problems = schema_problems(&plan.json, value, MAX_SCHEMA_PROBLEMS);
            if problems.is_empty() {
                return Ok(());
            }
            Err(DocumentError::Invalid(
                problems
                    .into_iter()
                    .map(|mut p| {
                        p.detail = format!("the written document breaks {schema}: {}", p.detail);
                        p
                    })
                    .collect(),
            ))
        };
        if let (Some(key), Some(_), Value::Object(map)) =
            (&plan.json.signature, signer, &mut value.clone())
        {
            // Nothing that breaks the schema reaches the signer: checked first with an
            // empty block in its place.
            let block = plan
                .json
                .signature_fields
                .iter()
                .map(|f| (f.clone(), Value::String(String::new())))
                .collect();
            map.insert(key.clone(), Value::Object(block));
            check(&Value::Object(map.clone()))?;
        }
        let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
        if let (Some(key), Some(signer)) = (&plan.json.signature, signer) {
            let signed = signer
                .sign(&body)
                .map_err(|why| refuse(format!("/{key}"), format!("signing failed: {why}")))?;
            let mut returned: Value = serde_json::from_slice(&signed).map_err(|e| {
                refuse(
                    String::new(),
                    format!("the signer's output is not JSON: {e}"),
                )
            })?;
            let block = returned
                .as_object_mut()
                .and_then(|m| m.remove(key))
                .filter(Value::is_object)
                .ok_or_else(|| {
                    refuse(
                        format!("/{key}"),
                        format!("the signer's output has no {key} object"),
                    )
                })?;
            if returned != value {
                return Err(refuse(
                    String::new(),
                    format!("the signer changed the document beyond its {key} block"),
                ));
            }
            if let Value::Object(map) = &mut value {
                map.insert(key.clone(), block);
            }
            body = signed;
        }
        check(&value)?;
        Ok(body)
    }

    /// The canonical problems located in the document where a binding read the field.
    fn locate(problems: Vec<Located>, origins: &BTreeMap<String, Place>) -> Vec<Located> {
        problems
            .into_iter()
            .map(|mut p| {
                let canonical = p.pointer.take().unwrap_or_default();
                // The field itself, or the nearest enclosing one the document gave.
                let mut probe = canonical.clone();
                let place = loop {
                    if let Some(place) = origins.get(&probe) {
                        break Some(place);
                    }
                    match probe.rsplit_once('/') {
                        Some((parent, _)) if !parent.is_empty() => probe = parent.to_owned(),
                        _ => break None,
                    }
                };
                if let Some(place) = place {
                    p.path = Some(place.path.clone());
                    p.line = place.line;
                    p.column = place.column;
                }
                p.canonical = Some(canonical);
                p
            })
            .collect()
    }
}

impl Format for MappedFormat {
    fn id(&self) -> &str {
        &self.first().id
    }

    fn version(&self) -> &str {
        &self.first().version
    }

    fn description(&self) -> &str {
        &self.first().description
    }

    fn messages(&self) -> Vec<(MessageKind, &'static str)> {
        let mut out = Vec::new();
        for plan in &self.plans {
            for d in &plan.directions {
                out.push((plan.message, if *d == Direction::In { "in" } else { "out" }));
            }
        }
        out
    }

    fn detect(&self, body: &[u8]) -> bool {
        self.detect_sniffed(&crate::formats::Sniff::new(body))
    }

    fn detect_sniffed(&self, sniff: &crate::formats::Sniff<'_>) -> bool {
        self.plans
            .iter()
            .any(|p| self.reads(p) && Self::plan_matches_sniffed(p, sniff))
    }

    fn decode(&self, body: &[u8]) -> Result<Decoded, DocumentError> {
        let readers: Vec<&Arc<Plan>> = self.plans.iter().filter(|p| self.reads(p)).collect();
        let plan = match readers.as_slice() {
            [] => {
                return Err(DocumentError::Invalid(vec![Located::pointer(
                    "",
                    format!(
                        "format {} is only written by this gateway, not read",
                        self.id()
                    ),
                )]));
            }
            [only] => only,
            several => several
                .iter()
                .find(|p| Self::plan_matches(p, body))
                .ok_or_else(|| {
                    DocumentError::Invalid(vec![Located::pointer(
                        "",
                        format!(
                            "no message of format {} recognises this document",
                            self.id()
                        ),
                    )])
                })?,
        };
        let root = Self::parse(plan, body)?;
        if plan.syntax == Syntax::Xml
            && let Some(want) = &plan.detect_root
            && *want != root.name
        {
            return Err(DocumentError::Invalid(vec![Located {
                pointer: None,
                path: Some("/".into()),
                line: Some(root.line),
                column: Some(root.column),
                canonical: None,
                code: None,
                detail: root_mismatch(&root.name, want),
            }]));
        }
        let read = plan.decode_tree(&root, false);
        if !read.problems.is_empty() {
            // Read again, keeping every place, so that each problem names it.
            return Err(DocumentError::Invalid(
                plan.decode_tree(&root, true).problems,
            ));
        }
        let unmapped = plan::unmapped(&root, plan.syntax, MAX_UNMAPPED);
        let (inbound, notes) = match self.to_inbound(plan, &read.canonical, &read.origins) {
            Ok(inbound) => inbound,
            Err(_) => {
                let tracked = plan.decode_tree(&root, true);
                return Err(self
                    .to_inbound(plan, &tracked.canonical, &tracked.origins)
                    .err()
                    .unwrap_or_else(|| {
                        DocumentError::Invalid(vec![Located::pointer(
                            "",
                            "the document is not valid",
                        )])
                    }));
            }
        };
        let notes = if notes.is_empty() {
            notes
        } else {
            // Locate the notes in the document: read again with places kept.
            let tracked = plan.decode_tree(&root, true);
            self.to_inbound(plan, &tracked.canonical, &tracked.origins)
                .map(|(_, n)| n)
                .unwrap_or(notes)
        };
        let mut notes = notes;
        if !read.notes.is_empty() {
            // Read again with places kept, so that each note names its place.
            notes.extend(plan.decode_tree(&root, true).notes);
        }
        let function = message_function(&read.canonical, &read.origins)?;
        Ok(Decoded {
            inbound,
            unmapped,
            notes,
            function,
        })
    }

    fn encode(&self, out: &Outbound<'_>) -> Result<Encoded, DocumentError> {
        self.write(out, true)
    }

    fn encode_unsigned(&self, out: &Outbound<'_>) -> Result<Encoded, DocumentError> {
        self.write(out, false)
    }
}

impl MappedFormat {
    /// Writes a document; `sign` runs the configured signer, if any.
    fn write(&self, out: &Outbound<'_>, sign: bool) -> Result<Encoded, DocumentError> {
        let kind = out.kind();
        let plan = self
            .plans
            .iter()
            .find(|p| p.message == kind && p.directions.contains(&Direction::Out))
            .ok_or_else(|| {
                DocumentError::Invalid(vec![Located::pointer(
                    "",
                    format!(
                        "format {} has no mapping that writes a {}",
                        self.id(),
                        kind.as_str()
                    ),
                )])
            })?;
        let mut canonical = out.canonical();
        let carries_devices = plan.steps.iter().any(|s| {
            matches!(s, plan::Step::Bind(b) if b.canonical_text.starts_with(seal_devices::FIELD))
        });
        if carries_devices && matches!(out, Outbound::Declaration(_)) {
            seal_devices::add_for_output(&mut canonical);
        }
        let (root, mut flags) = plan
            .encode_tree(&canonical)
            .map_err(DocumentError::Invalid)?;
        if let Outbound::Declaration(_) = out {
            flags.extend(not_carried(plan, &out.canonical()));
        }
        // Seals not tied to equipment must not vanish silently where a format has no
        // place for them (a WCO DEC puts seals only under their container).
        if let Outbound::Declaration(d) = out
            && !d.seals.is_empty()
            && !plan.steps.iter().any(|s| {
                matches!(s, plan::Step::Bind(b) if !b.fallback && b.canonical_text.starts_with("seals[]"))
            })
        {
            flags.push(Located::pointer(
                "/seals",
                format!(
                    "{} seal(s) not tied to a container are not written: {} has no place for them ({})",
                    d.seals.len(),
                    self.id(),
                    d.seals.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let (body, content_type) = match plan.syntax {
            Syntax::Xml => (
                tree::to_xml(&root, &plan.prefixes).into_bytes(),
                "application/xml",
            ),
            Syntax::Json => (
                self.finish_json(plan, tree::to_json(&root), &mut flags, sign)?,
                "application/json",
            ),
            Syntax::Flat => (flat::write(plan, &root).into_bytes(), "text/plain"),
        };
        Ok(Encoded {
            body,
            content_type,
            flags,
        })
    }
}

impl MappedFormat {
    /// One canonical message: its schema, the type, then the rules across its fields
    /// (`check`, which may put it in shape and return notes); problems and notes point at
    /// the document.
    fn read_checked<T: serde::de::DeserializeOwned>(
        &self,
        kind: Canonical,
        canonical: &Value,
        origins: &BTreeMap<String, Place>,
        check: fn(&mut T) -> Result<Vec<Located>, DocumentError>,
    ) -> Result<(T, Vec<Located>), DocumentError> {
        let problems = self.schemas.check(kind, canonical, "");
        if !problems.is_empty() {
            return Err(DocumentError::Invalid(Self::locate(problems, origins)));
        }
        let mut value: T =
            crate::formats::deserialize_at(canonical, "").map_err(|e| relocate(e, origins))?;
        let notes = check(&mut value).map_err(|e| relocate(e, origins))?;
        Ok((value, Self::locate(notes, origins)))
    }

    /// The canonical value a mapping produced, checked against the canonical schema and
    /// read into the model; problems point at the document where the field came from.
    fn to_inbound(
        &self,
        plan: &Plan,
        canonical: &Value,
        origins: &BTreeMap<String, Place>,
    ) -> Result<(Inbound, Vec<Located>), DocumentError> {
        match plan.message {
            MessageKind::Declaration => {
                // What the message asks for is not part of the declaration.
                let mut canonical = canonical.clone();
                if let Some(o) = canonical.as_object_mut() {
                    o.remove(MESSAGE_FUNCTION);
                }
                // Seal kinds and devices carried as statements go back on their seals.
                let device_notes =
                    seal_devices::apply(&mut canonical).map_err(|e| relocate(e, origins))?;
                let (declaration, mut notes) = self.read_checked(
                    Canonical::TransitDeclaration,
                    &canonical,
                    origins,
                    crate::formats::check_declaration,
                )?;
                notes.extend(Self::locate(device_notes, origins));
                let office_notes = self
                    .offices
                    .check_declaration(&declaration)
                    .map_err(|e| relocate(e, origins))?;
                notes.extend(Self::locate(office_notes, origins));
                Ok((Inbound::Declaration(Box::new(declaration)), notes))
            }
            MessageKind::SealEvents => {
                let items = canonical
                    .get("events")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if items.is_empty() {
                    return Err(DocumentError::Invalid(vec![Located::pointer(
                        "",
                        "the document holds no seal event",
                    )]));
                }
                if items.len() > self.limits.max_events_per_message {
                    return Err(DocumentError::Invalid(vec![Located::pointer(
                        "",
                        format!(
                            "{} events exceed the limit of {}",
                            items.len(),
                            self.limits.max_events_per_message
                        ),
                    )]));
                }
                let mut events = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let base = format!("/events/{i}");
                    let problems = self.schemas.check(Canonical::SealEvent, item, &base);
                    if !problems.is_empty() {
                        return Err(DocumentError::Invalid(Self::locate(problems, origins)));
                    }
                    let event: ects_core::SealEvent = crate::formats::deserialize_at(item, &base)
                        .map_err(|e| relocate(e, origins))?;
                    events.push(event);
                }
                crate::formats::check_event_times(&events, Some("/events"), chrono::Utc::now())
                    .map_err(|e| relocate(e, origins))?;
                Ok((Inbound::SealEvents { events, base: None }, Vec::new()))
            }
            MessageKind::SealAssignment => {
                // Seals given per bill of lading join their container first.
                let mut canonical = canonical.clone();
                let bill_notes =
                    bill_seals::apply(&mut canonical).map_err(|e| relocate(e, origins))?;
                let (assignment, mut notes) = self.read_checked(
                    Canonical::SealAssignment,
                    &canonical,
                    origins,
                    crate::formats::check_assignment,
                )?;
                notes.extend(Self::locate(bill_notes, origins));
                let office_notes = self
                    .offices
                    .check_assignment(&assignment)
                    .map_err(|e| relocate(e, origins))?;
                notes.extend(Self::locate(office_notes, origins));
                Ok((Inbound::SealAssignment(Box::new(assignment)), notes))
            }
            MessageKind::TripStatus | MessageKind::StatusNotification => {
                Err(DocumentError::Invalid(vec![Located::pointer(
                    "",
                    format!("a {} is only written, not read", plan.message.as_str()),
                )]))
            }
        }
    }
}

/// The working field a declaration mapping reads the message's function into (ICES
/// message type: `codes/icegate-message-function.toml`).
const MESSAGE_FUNCTION: &str = "message_function";

/// What a declaration message asks for: an original when the mapping does not say.
fn message_function(
    canonical: &Value,
    origins: &BTreeMap<String, Place>,
) -> Result<crate::formats::MessageFunction, DocumentError> {
    match canonical.get(MESSAGE_FUNCTION) {
        None | Some(Value::Null) => Ok(Default::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
            relocate(
                DocumentError::Invalid(vec![Located::pointer(
                    format!("/{MESSAGE_FUNCTION}"),
                    format!(
                        "message function {v} is not original, amendment or deletion (check the mapping's code list)"
                    ),
                )]),
                origins,
            )
        }),
    }
}

/// An element name (`{namespace}local` or `local`) in words, namespace shown.
fn element_in_words(name: &str) -> String {
    match name.strip_prefix('{').and_then(|rest| rest.split_once('}')) {
        Some((ns, local)) => format!("{local} in namespace {ns}"),
        None => format!("{name} in no namespace"),
    }
}

/// Why a document's root is not the one a mapping reads, with both namespaces.
fn root_mismatch(found: &str, want: &str) -> String {
    let local = |n: &str| n.rsplit('}').next().unwrap_or(n).to_owned();
    let mut detail = format!(
        "the root element is {}; the mapping reads {}",
        element_in_words(found),
        element_in_words(want)
    );
    if local(found) == local(want) {
        detail.push_str(" (same name, another namespace");
        match want.strip_prefix('{').and_then(|r| r.split_once('}')) {
            Some((ns, _)) if !found.starts_with('{') => {
                detail.push_str(&format!(": declare xmlns=\"{ns}\" on it)"));
            }
            _ => detail.push(')'),
        }
    }
    detail
}

fn relocate(e: DocumentError, origins: &BTreeMap<String, Place>) -> DocumentError {
    match e {
        DocumentError::Invalid(list) => DocumentError::Invalid(MappedFormat::locate(list, origins)),
        other => other,
    }
}

/// Flat files: records by line, fields by a separator byte.
mod flat {
    use super::*;

    pub fn parse(plan: &Plan, body: &[u8]) -> Result<Node, DocumentError> {
        let Some(spec) = &plan.flat else {
            return Err(DocumentError::malformed(Located::pointer(
                "",
                "the mapping has no [flat] table",
            )));
        };
        let text = std::str::from_utf8(body).map_err(|e| {
            DocumentError::malformed(Located::pointer(
                "",
                format!("the file is not UTF-8 at byte {}", e.valid_up_to()),
            ))
        })?;
        let sep = spec.field_separator as char;
        let mut root = Node::new("");
        let mut segment: Option<String> = None;
        let mut header_control = None;
        let mut trailer_control = None;
        let mut wrong_width = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (n, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            if root.children.len() >= tree::MAX_NODES {
                return Err(DocumentError::malformed(Located::line_column(
                    n + 1,
                    1,
                    "too many records",
                )));
            }
            let fields: Vec<&str> = line.split(sep).collect();
            let tag = fields
                .get(spec.tag_field.saturating_sub(1))
                .copied()
                .unwrap_or_default();
            if let Some(prefix) = &spec.segment_prefix
                && let Some(name) = tag.strip_prefix(prefix.as_str())
            {
                // `<contain>` (an IGM section) names segment `contain`.
                segment = Some(name.strip_suffix('>').unwrap_or(name).to_owned());
                continue;
            }
            let is_header = spec.header.as_deref() == Some(tag);
            let is_trailer = spec.trailer.as_deref() == Some(tag);
            if fields.len() < 2 && !is_header && !is_trailer {
                return Err(DocumentError::malformed(Located {
                    pointer: None,
                    path: Some(format!("line {}", n + 1)),
                    line: Some(n + 1),
                    column: Some(1),
                    canonical: None,
                    code: None,
                    detail: format!(
                        "a record without the field separator byte 0x{:02X}",
                        spec.field_separator
                    ),
                }));
            }
            if is_header && let Some(f) = spec.header_control_field {
                header_control = fields.get(f - 1).map(|s| s.to_string());
            }
            if is_trailer && let Some(f) = spec.trailer_control_field {
                trailer_control = Some((fields.get(f - 1).map(|s| s.to_string()), n + 1));
            }
            let name = if is_header || is_trailer {
                tag.to_owned()
            } else {
                segment.clone().unwrap_or_else(|| tag.to_owned())
            };
            let nth = {
                let count = seen.entry(name.clone()).or_default();
                *count += 1;
                *count
            };
            if let Some(&want) = spec.fields.get(&name)
                && fields.len() != want
                && wrong_width.len() < MAX_SCHEMA_PROBLEMS
            {
                wrong_width.push(Located {
                    pointer: None,
                    path: Some(format!("{name}[{nth}]")),
                    line: Some(n + 1),
                    column: Some(1),
                    canonical: None,
                    code: None,
                    detail: format!(
                        "has {} fields; a {name} record has {want} (a field separator 0x{:02X} {})",
                        fields.len(),
                        spec.field_separator,
                        if fields.len() < want {
                            "is missing"
                        } else {
                            "too many"
                        }
                    ),
                });
            }
            let mut record = Node::new(name);
            record.repeated = true;
            record.line = n + 1;
            record.column = 1;
            for (i, f) in fields.iter().enumerate() {
                let mut field = Node::new((i + 1).to_string());
                field.line = n + 1;
                field.column = 1;
                if !f.is_empty() {
                    field.text = Some((*f).to_owned());
                }
                // The tag field is structure, not content.
                if i + 1 == spec.tag_field && !(is_header || is_trailer) && segment.is_none() {
                    field.visited.set(true);
                }
                record.children.push(field);
            }
            root.children.push(record);
        }
        if let Some(header) = &spec.header
            && root.children.first().is_none_or(|r| &r.name != header)
        {
            return Err(DocumentError::malformed(Located::line_column(
                1,
                1,
                format!(
                    "the file must start with a {} header record",
                    spec.header.as_deref().unwrap_or_default()
                ),
            )));
        }
        if !wrong_width.is_empty() {
            return Err(DocumentError::Invalid(wrong_width));
        }
        if let (Some(h), Some((t, line))) = (&header_control, &trailer_control)
            && Some(h) != t.as_ref()
        {
            return Err(DocumentError::Invalid(vec![Located {
                pointer: None,
                path: Some(format!(
                    "{}:{}",
                    spec.trailer.as_deref().unwrap_or("trailer"),
                    spec.trailer_control_field.unwrap_or(0)
                )),
                line: Some(*line),
                column: Some(1),
                canonical: None,
                code: None,
                detail: format!(
                    "control number {:?} does not match the header's {h:?}",
                    t.as_deref().unwrap_or_default()
                ),
            }]));
        }
        Ok(root)
    }

    pub fn write(plan: &Plan, root: &Node) -> String {
        let Some(spec) = &plan.flat else {
            return String::new();
        };
        let sep = (spec.field_separator as char).to_string();
        let mut header = Vec::new();
        let mut body = Vec::new();
        let mut trailer = Vec::new();
        let mut last_segment: Option<&str> = None;
        for record in &root.children {
            let width = record
                .children
                .iter()
                .filter_map(|f| f.name.parse::<usize>().ok())
                .max()
                .unwrap_or(0);
            let padded = spec.fields.get(&record.name).copied().unwrap_or(0);
            let mut fields = vec![String::new(); width.max(spec.tag_field).max(padded)];
            for f in &record.children {
                if let Ok(i) = f.name.parse::<usize>()
                    && i >= 1
                {
                    fields[i - 1] = f.text.clone().unwrap_or_default();
                }
            }
            let is_header = spec.header.as_deref() == Some(record.name.as_str());
            let is_trailer = spec.trailer.as_deref() == Some(record.name.as_str());
            if (is_header || is_trailer || spec.segment_prefix.is_none())
                && fields[spec.tag_field - 1].is_empty()
            {
                fields[spec.tag_field - 1] = record.name.clone();
            }
            let line = fields.join(&sep);
            if is_header {
                header.push(line);
            } else if is_trailer {
                trailer.push(line);
            } else {
                if let Some(prefix) = &spec.segment_prefix
                    && last_segment != Some(record.name.as_str())
                {
                    body.push(format!("{prefix}{}", record.name));
                    last_segment = Some(record.name.as_str());
                }
                body.push(line);
            }
        }
        let mut lines = header;
        lines.extend(body);
        lines.extend(trailer);
        let mut out = lines.join(&spec.record_separator);
        out.push_str(&spec.record_separator);
        out
    }
}

/// The fields of a declaration a mapping has no place for, each flagged `not_carried`
/// (driver, corridor, ...): a document written in that format loses them, and the answer
/// says so rather than losing them silently. One flag per canonical field, at the first
/// pointer it has.
fn not_carried(plan: &plan::Plan, canonical: &Value) -> Vec<Located> {
    fn leaves(value: &Value, at: String, path: String, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(m) => m.iter().for_each(|(k, v)| {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(v, format!("{at}/{k}"), p, out)
            }),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, v)| leaves(v, format!("{at}/{i}"), format!("{path}[]"), out)),
            _ => out.push((at, path)),
        }
    }
    let mut all = Vec::new();
    leaves(canonical, String::new(), String::new(), &mut all);
    let written: Vec<String> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            // A fallback reads it back from what is written (a country from an office code).
            plan::Step::Bind(b) => Some(b.canonical_text.clone()),
            _ => None,
        })
        .collect();
    let carried = |path: &str| {
        // Seal kinds and devices travel in the statements of `seal_devices`.
        let devices = written.iter().any(|w| w.starts_with(seal_devices::FIELD))
            && (path.ends_with("seals[].kind") || path.ends_with("seals[].device_id"));
        devices
            || written.iter().any(|w| {
                w == path
                    || w.trim_matches(|c| c == '[' || c == ']' || c == '"')
                        .split(',')
                        .any(|one| one.trim().trim_matches('"') == path)
            })
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut flags = Vec::new();
    for (pointer, path) in all {
        if path == "seals[].id" || carried(&path) || !seen.insert(path.clone()) {
            continue;
        }
        flags.push(Located::pointer(
            pointer,
            format!("not_carried: {} has no place for {path}", plan.id),
        ));
    }
    flags
}
