//! `ects-json`: the canonical JSON itself. Documents are checked against the JSON Schemas
//! first (every violation with its JSON pointer), then deserialised into the model.

use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use ects_core::{SealAssignment, SealEvent, TransitDeclaration};
use serde_json::Value;

use super::{Decoded, Encoded, Format, Inbound, Limits, Outbound};
use crate::mapping::MessageKind;
use crate::problem::{DocumentError, Located};
use crate::schemas::{Canonical, Schemas};

pub struct EctsJson {
    schemas: Arc<Schemas>,
    limits: Limits,
    offices: crate::offices::Offices,
}

impl EctsJson {
    pub fn new(schemas: Arc<Schemas>, limits: Limits, offices: crate::offices::Offices) -> Self {
        Self {
            schemas,
            limits,
            offices,
        }
    }
}

/// Which canonical message a JSON document is, from its shape.
enum Shape<'a> {
    Declaration,
    Assignment,
    Event,
    /// The events and the pointer of their array.
    Batch(&'a [Value], &'static str),
}

fn shape(value: &Value) -> Result<Shape<'_>, DocumentError> {
    match value {
        Value::Array(items) => Ok(Shape::Batch(items, "")),
        Value::Object(map) if map.contains_key("assigned_at") => Ok(Shape::Assignment),
        Value::Object(map) if map.contains_key("declaration_id") => Ok(Shape::Declaration),
        Value::Object(map) => match map.get("events") {
            Some(Value::Array(_)) if map.len() > 1 => {
                let extra = map
                    .keys()
                    .find(|k| *k != "events")
                    .cloned()
                    .unwrap_or_default();
                Err(DocumentError::Invalid(vec![Located::pointer(
                    format!("/{extra}"),
                    "a batch object holds only \"events\"",
                )]))
            }
            Some(Value::Array(items)) => Ok(Shape::Batch(items, "/events")),
            Some(_) => Err(DocumentError::Invalid(vec![Located::pointer(
                "/events",
                "must be an array of seal events",
            )])),
            None if map.contains_key("device_id") || map.contains_key("kind") => Ok(Shape::Event),
            None => Err(DocumentError::Invalid(vec![Located::pointer(
                "",
                "not a canonical message: a transit declaration has declaration_id, a seal \
                 assignment has assigned_at, a seal event has device_id and kind, a batch is \
                 an array or has events",
            )])),
        },
        _ => Err(DocumentError::Invalid(vec![Located::pointer(
            "",
            "a canonical message is a JSON object or an array of seal events",
        )])),
    }
}

/// JSON Schema's `integer` admits `1.0`; serde's integers do not. Whole-number floats
/// become integers before deserialising (a float field still reads an integer).
fn whole_numbers_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

/// Deserialises an already schema-checked value; a remaining problem (a rule the schema
/// cannot say) still comes back with its pointer.
fn from_value<T: serde::de::DeserializeOwned>(
    value: &Value,
    base: &str,
) -> Result<T, DocumentError> {
    let mut value = value.clone();
    whole_numbers_as_integers(&mut value);
    deserialize_at(&value, base)
}

/// Deserialises a canonical value; a problem comes back with its JSON pointer.
pub fn deserialize_at<T: serde::de::DeserializeOwned>(
    value: &Value,
    base: &str,
) -> Result<T, DocumentError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let pointer = if path == "." {
            base.to_owned()
        } else {
            let mut p = base.to_owned();
            for part in path.split('.') {
                // serde_path_to_error writes `equipment[0].seals[1]`.
                for piece in part.split('[') {
                    let piece = piece.trim_end_matches(']');
                    if !piece.is_empty() {
                        p.push('/');
                        p.push_str(&piece.replace('~', "~0").replace('/', "~1"));
                    }
                }
            }
            p
        };
        DocumentError::Invalid(vec![Located::pointer(pointer, e.into_inner().to_string())])
    })
}

/// Reads one canonical message of a known kind: JSON, then its schema, then the type.
pub fn decode_canonical<T: serde::de::DeserializeOwned>(
    schemas: &Schemas,
    kind: Canonical,
    body: &[u8],
) -> Result<T, DocumentError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| DocumentError::malformed(Located::json_syntax(body, &e)))?;
    let problems = schemas.check(kind, &value, "");
    if !problems.is_empty() {
        return Err(DocumentError::Invalid(problems));
    }
    from_value(&value, "")
}

impl EctsJson {
    fn checked(&self, kind: Canonical, value: &Value, base: &str) -> Result<(), DocumentError> {
        let problems = self.schemas.check(kind, value, base);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DocumentError::Invalid(problems))
        }
    }

    fn events(&self, items: &[Value], base: &str) -> Result<Vec<SealEvent>, DocumentError> {
        if items.is_empty() {
            return Err(DocumentError::Invalid(vec![Located::pointer(
                base,
                "a batch holds at least one seal event",
            )]));
        }
        if items.len() > self.limits.max_events_per_message {
            return Err(DocumentError::Invalid(vec![Located::pointer(
                base,
                format!(
                    "{} events exceed the limit of {} per message",
                    items.len(),
                    self.limits.max_events_per_message
                ),
            )]));
        }
        let mut problems = Vec::new();
        for (i, item) in items.iter().enumerate() {
            problems.extend(
                self.schemas
                    .check(Canonical::SealEvent, item, &format!("{base}/{i}")),
            );
            if problems.len() >= 20 {
                break;
            }
        }
        if !problems.is_empty() {
            return Err(DocumentError::Invalid(problems));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| from_value(item, &format!("{base}/{i}")))
            .collect()
    }
}

impl Format for EctsJson {
    fn id(&self) -> &str {
        "ects-json"
    }

    fn version(&self) -> &str {
        "1"
    }

    fn description(&self) -> &str {
        "Canonical ECTS JSON: transit declarations, seal events, trip status (schemas/)"
    }

    fn messages(&self) -> Vec<(MessageKind, &'static str)> {
        vec![
            (MessageKind::Declaration, "in"),
            (MessageKind::Declaration, "out"),
            (MessageKind::SealEvents, "in"),
            (MessageKind::SealEvents, "out"),
            (MessageKind::SealAssignment, "in"),
            (MessageKind::SealAssignment, "out"),
            (MessageKind::TripStatus, "out"),
            (MessageKind::StatusNotification, "out"),
        ]
    }

    fn encode(&self, out: &Outbound<'_>) -> Result<Encoded, DocumentError> {
        let value = match out {
            Outbound::SealEvents(events) => serde_json::to_value(events).unwrap_or_default(),
            other => other.canonical(),
        };
        Ok(Encoded {
            body: serde_json::to_vec_pretty(&value).unwrap_or_default(),
            content_type: "application/json",
            flags: Vec::new(),
        })
    }

    fn detect(&self, body: &[u8]) -> bool {
        matches!(
            body.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        )
    }

    fn decode(&self, body: &[u8]) -> Result<Decoded, DocumentError> {
        self.decode_inbound(body).map(|(inbound, notes)| Decoded {
            inbound,
            unmapped: Vec::new(),
            notes,
            function: Default::default(),
        })
    }
}

impl EctsJson {
    fn decode_inbound(&self, body: &[u8]) -> Result<(Inbound, Vec<Located>), DocumentError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| DocumentError::malformed(Located::json_syntax(body, &e)))?;
        match shape(&value)? {
            Shape::Declaration => {
                self.checked(Canonical::TransitDeclaration, &value, "")?;
                let mut declaration: TransitDeclaration = from_value(&value, "")?;
                let mut notes = check_declaration(&mut declaration)?;
                notes.extend(self.offices.check_declaration(&declaration)?);
                Ok((Inbound::Declaration(Box::new(declaration)), notes))
            }
            Shape::Assignment => {
                self.checked(Canonical::SealAssignment, &value, "")?;
                let mut assignment: SealAssignment = from_value(&value, "")?;
                let mut notes = check_assignment(&mut assignment)?;
                notes.extend(self.offices.check_assignment(&assignment)?);
                Ok((Inbound::SealAssignment(Box::new(assignment)), notes))
            }
            Shape::Event => {
                self.checked(Canonical::SealEvent, &value, "")?;
                let events = vec![from_value(&value, "")?];
                check_event_times(&events, None, Utc::now())?;
                Ok((Inbound::SealEvents { events, base: None }, Vec::new()))
            }
            Shape::Batch(items, base) => {
                let events = self.events(items, base)?;
                check_event_times(&events, Some(base), Utc::now())?;
                Ok((
                    Inbound::SealEvents {
                        events,
                        base: Some(base),
                    },
                    Vec::new(),
                ))
            }
        }
    }
}

/// Earliest event or declaration time accepted: older is a device clock fault.
const EARLIEST_YEAR: i32 = 2000;
/// How far ahead of our clock an event may be: device clocks drift a little; more is a
/// clock or time-zone fault, and a future time would freeze the trip's latest state.
const MAX_CLOCK_AHEAD_MIN: i64 = 15;

fn time_problem(t: DateTime<Utc>, latest: Option<DateTime<Utc>>) -> Option<String> {
    if t.year() < EARLIEST_YEAR || t.year() > 9999 {
        return Some(format!("{t} is outside the years {EARLIEST_YEAR} to 9999"));
    }
    match latest {
        Some(latest) if t > latest => Some(format!(
            "{} is more than {MAX_CLOCK_AHEAD_MIN} minutes ahead of the gateway's clock",
            t.to_rfc3339()
        )),
        _ => None,
    }
}

/// Event times must be plausible: a time far in the future would freeze the trip's
/// "latest" state for good.
pub fn check_event_times(
    events: &[SealEvent],
    base: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), DocumentError> {
    let latest = now + chrono::Duration::minutes(MAX_CLOCK_AHEAD_MIN);
    let problems: Vec<Located> = events
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            let pointer = match base {
                Some(b) => format!("{b}/{i}/time"),
                None => "/time".into(),
            };
            let seq = e.seq.filter(|s| *s > ects_core::MAX_SEQ).map(|s| {
                Located::pointer(
                    pointer.replace("/time", "/seq"),
                    format!("{s} is above the largest seq, {}", ects_core::MAX_SEQ),
                )
            });
            let time = time_problem(e.time, Some(latest)).map(|p| Located::pointer(pointer, p));
            seq.into_iter().chain(time)
        })
        .take(20)
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DocumentError::Invalid(problems))
    }
}

/// A command's times must lie within the gateway's clock ± `skew_s` (`[tracking]
/// command_skew_s`): a release's `issued_at` and `valid_from`, a handover's or
/// cancellation's `time`. Dated back, a command would take its place before events already
/// judged and rewrite them in a replay; dated ahead, it would hold the trip's state until
/// real time caught up. `valid_until` is a window's end, bounded by `valid_from` (at most
/// 72 hours later). A seal assignment (a message, which may be historical) is bounded
/// ahead only, by the events' skew.
pub fn check_command_times(
    input: &ects_core::trip::Input,
    now: DateTime<Utc>,
    skew_s: u64,
) -> Result<(), DocumentError> {
    use ects_core::trip::Input;
    let skew = chrono::Duration::seconds(i64::try_from(skew_s).unwrap_or(i64::MAX / 1_000));
    let (earliest, latest) = (now - skew, now + skew);
    let event_latest = now + chrono::Duration::minutes(MAX_CLOCK_AHEAD_MIN);
    // Each time with its pointer and the bounds it must keep (`None`: none that side).
    type Dated<'a> = (
        &'a str,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let times: Vec<Dated> = match input {
        Input::Release(r) => vec![
            ("/issued_at", r.issued_at, Some(earliest), Some(latest)),
            ("/valid_from", r.valid_from, Some(earliest), Some(latest)),
            ("/valid_until", r.valid_until, None, None),
        ],
        Input::Handover(h) => vec![("/time", h.time, Some(earliest), Some(latest))],
        Input::Cancel(c) => vec![("/time", c.time, Some(earliest), Some(latest))],
        Input::SealAssignment(a) => vec![("/assigned_at", a.assigned_at, None, Some(event_latest))],
        _ => Vec::new(),
    };
    let problems: Vec<Located> = times
        .into_iter()
        .filter_map(|(pointer, t, earliest, latest)| {
            let problem = match (earliest, latest) {
                (Some(e), _) if t < e => Some(format!(
                    "{} is more than {skew_s} seconds behind the gateway's clock (a command \
                     is dated when it is given: [tracking] command_skew_s)",
                    t.to_rfc3339()
                )),
                (_, Some(l)) if t > l && input_is_command(input) => Some(format!(
                    "{} is more than {skew_s} seconds ahead of the gateway's clock (a command \
                     is dated when it is given: [tracking] command_skew_s)",
                    t.to_rfc3339()
                )),
                (_, l) => time_problem(t, l),
            };
            problem.map(|p| Located::pointer(pointer, p))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DocumentError::Invalid(problems))
    }
}

fn input_is_command(input: &ects_core::trip::Input) -> bool {
    use ects_core::trip::Input;
    matches!(
        input,
        Input::Release(_) | Input::Handover(_) | Input::Cancel(_)
    )
}

/// Rules across fields that the schema does not state. The declaration is first put in
/// its canonical shape (`TransitDeclaration::normalise`); what that changed or left open
/// comes back as notes for the sender.
pub fn check_declaration(d: &mut TransitDeclaration) -> Result<Vec<Located>, DocumentError> {
    let notes = d
        .normalise()
        .into_iter()
        .map(|n| {
            Located::pointer(
                if d.seals.is_empty() {
                    "/equipment"
                } else {
                    "/seals"
                },
                n,
            )
        })
        .collect();
    let mut problems = Vec::new();
    for (pointer, t) in [
        ("/declared_at", d.declared_at),
        ("/time_limit", d.time_limit),
    ] {
        if let Some(problem) = t.and_then(|t| time_problem(t, None)) {
            problems.push(Located::pointer(pointer, problem));
        }
    }
    let mut seen = std::collections::HashSet::new();
    let placed = d.equipment.iter().enumerate().flat_map(|(e, equipment)| {
        equipment
            .seals
            .iter()
            .enumerate()
            .map(move |(s, seal)| (format!("/equipment/{e}/seals/{s}/id"), seal))
    });
    let loose = d
        .seals
        .iter()
        .enumerate()
        .map(|(s, seal)| (format!("/seals/{s}/id"), seal));
    for (pointer, seal) in placed.chain(loose) {
        if !seen.insert(seal.id.as_str()) {
            problems.push(Located::pointer(
                pointer,
                format!("seal {} appears twice in the declaration", seal.id),
            ));
        }
    }
    if let Some(limit) = d.time_limit
        && let Some(declared) = d.declared_at
        && limit <= declared
    {
        problems.push(Located::pointer(
            "/time_limit",
            "the time limit must be after declared_at",
        ));
    }
    if problems.is_empty() {
        Ok(notes)
    } else {
        Err(DocumentError::Invalid(problems))
    }
}

/// Rules across the fields of a seal assignment that the schema does not state. A
/// container listed more than once (a manifest lists it under each bill of lading) is
/// merged; containers without a seal are left out, with a note.
pub fn check_assignment(a: &mut SealAssignment) -> Result<Vec<Located>, DocumentError> {
    let mut problems = Vec::new();
    if let Some(problem) = time_problem(
        a.assigned_at,
        Some(Utc::now() + chrono::Duration::minutes(MAX_CLOCK_AHEAD_MIN)),
    ) {
        problems.push(Located::pointer("/assigned_at", problem));
    }
    // Where each seal was first seen: its container and pointer.
    let mut seen: std::collections::HashMap<String, (String, String)> = Default::default();
    let mut merged: Vec<ects_core::Equipment> = Vec::with_capacity(a.equipment.len());
    for (e, equipment) in std::mem::take(&mut a.equipment).into_iter().enumerate() {
        for (s, seal) in equipment.seals.iter().enumerate() {
            let pointer = format!("/equipment/{e}/seals/{s}/id");
            match seen.get(seal.id.as_str()) {
                Some((container, first)) if *container != equipment.id.as_str() => {
                    problems.push(Located::pointer(
                        pointer,
                        format!(
                            "seal {} is also on container {container} ({first})",
                            seal.id
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    seen.insert(
                        seal.id.to_string(),
                        (equipment.id.to_string(), pointer.clone()),
                    );
                }
            }
        }
        match merged.iter_mut().find(|m| m.id == equipment.id) {
            Some(m) => {
                for seal in equipment.seals {
                    if !m.seals.iter().any(|s| s.id == seal.id) {
                        m.seals.push(seal);
                    }
                }
            }
            None => merged.push(equipment),
        }
    }
    let bare: Vec<String> = merged
        .iter()
        .filter(|e| e.seals.is_empty())
        .map(|e| e.id.to_string())
        .collect();
    merged.retain(|e| !e.seals.is_empty());
    a.equipment = merged;
    if a.equipment.is_empty() && problems.is_empty() {
        problems.push(Located::pointer(
            "/equipment",
            "the document ties no seal to any container",
        ));
    }
    if !problems.is_empty() {
        return Err(DocumentError::Invalid(problems));
    }
    let mut notes = Vec::new();
    if !bare.is_empty() {
        notes.push(Located::pointer(
            "/equipment",
            format!(
                "{} container(s) without a seal left out: {}",
                bare.len(),
                bare.join(", ")
            ),
        ));
    }
    Ok(notes)
}
