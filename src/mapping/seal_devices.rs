//! Seal kinds and device ids through formats whose seal has only a number (WCO DM's
//! `Seal/ID`, ASYCUDA's `Seals/Identity`). A mapping binds the working field
//! `seal_devices[]` (`code`, `text`) to a statement of its own (WCO: an
//! `AdditionalInformation` with `StatementCode` [`STATEMENT`]; ASYCUDA: our
//! `Transit/Seals/Seal_device` element); one statement per seal, its text
//! `<seal id> <kind> [<device id>]` (ids hold no spaces).
//!
//! On output the gateway fills `seal_devices` from every seal of the declaration; on input
//! each statement is put back on the seal of that id (where the document has it), and
//! `seal_devices` is taken out before the declaration is checked. A seal no statement
//! names keeps what the mapping read (mechanical, without a device: a partner's seal
//! number says nothing about a tracking device).

use serde_json::{Value, json};

use crate::problem::{DocumentError, Located};

/// The statement code that marks a seal's kind and device.
pub const STATEMENT: &str = "ECTS-SEAL-DEVICE";
/// The working field.
pub const FIELD: &str = "seal_devices";

/// Adds `seal_devices` to a canonical declaration about to be written.
pub fn add_for_output(canonical: &mut Value) {
    let mut items = Vec::new();
    let mut one = |seal: &Value| {
        let (Some(id), Some(kind)) = (
            seal.get("id").and_then(Value::as_str),
            seal.get("kind").and_then(Value::as_str),
        ) else {
            return;
        };
        let text = match seal.get("device_id").and_then(Value::as_str) {
            Some(device) => format!("{id} {kind} {device}"),
            None => format!("{id} {kind}"),
        };
        items.push(json!({"code": STATEMENT, "text": text}));
    };
    for e in canonical
        .get("equipment")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        e.get("seals")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .for_each(&mut one);
    }
    canonical
        .get("seals")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .for_each(&mut one);
    if !items.is_empty()
        && let Some(map) = canonical.as_object_mut()
    {
        map.insert(FIELD.into(), Value::Array(items));
    }
}

/// Takes `seal_devices` out of a canonical declaration just read and puts each statement
/// on its seal; returns notes (a statement naming no seal of the document).
pub fn apply(canonical: &mut Value) -> Result<Vec<Located>, DocumentError> {
    let Some(items) = canonical.as_object_mut().and_then(|o| o.remove(FIELD)) else {
        return Ok(Vec::new());
    };
    let items = match items {
        Value::Array(items) => items,
        _ => return Ok(Vec::new()),
    };
    let mut notes = Vec::new();
    let mut problems = Vec::new();
    for (i, item) in items.iter().enumerate() {
        // Another statement of the same group (a partner's own additional information).
        if item
            .get("code")
            .and_then(Value::as_str)
            .is_some_and(|c| c != STATEMENT)
        {
            continue;
        }
        let at = format!("/{FIELD}/{i}/text");
        let Some(text) = item.get("text").and_then(Value::as_str) else {
            continue;
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let (id, kind, device) = match parts.as_slice() {
            [id, "electronic", device] => (*id, "electronic", Some(*device)),
            [id, "mechanical"] => (*id, "mechanical", None),
            _ => {
                problems.push(Located::pointer(
                    &at,
                    format!(
                        "{text:?} is not \"<seal id> electronic <device id>\" or \"<seal id> mechanical\""
                    ),
                ));
                continue;
            }
        };
        let mut found = false;
        let mut set = |seal: &mut Value| {
            if seal.get("id").and_then(Value::as_str) == Some(id) {
                found = true;
                seal["kind"] = json!(kind);
                match device {
                    Some(d) => seal["device_id"] = json!(d),
                    None => {
                        if let Some(m) = seal.as_object_mut() {
                            m.remove("device_id");
                        }
                    }
                }
            }
        };
        if let Some(equipment) = canonical.get_mut("equipment").and_then(Value::as_array_mut) {
            for e in equipment {
                if let Some(seals) = e.get_mut("seals").and_then(Value::as_array_mut) {
                    seals.iter_mut().for_each(&mut set);
                }
            }
        }
        if let Some(seals) = canonical.get_mut("seals").and_then(Value::as_array_mut) {
            seals.iter_mut().for_each(&mut set);
        }
        if !found {
            notes.push(Located::pointer(
                &at,
                format!("seal {id} is not in the document: its {STATEMENT} statement is not kept"),
            ));
        }
    }
    if problems.is_empty() {
        Ok(notes)
    } else {
        Err(DocumentError::Invalid(problems))
    }
}
