//! Seals given per bill of lading, not per container (the AWMDS manifest's
//! `Seals_segment`: a number of seals and their marks for the whole bill). A seal
//! assignment mapping reads them into the working field `bills[]`:
//!
//! - `bills[].containers[]`: the containers of the bill (their ids);
//! - `bills[].seal_marks`: the marks, one text, several marks split by `,` `;` or a new
//!   line (a space or `/` may be part of a mark); a mark that is not a seal id is noted,
//!   not tied;
//! - `bills[].seal_count`: the number of seals the bill declares (checked against the
//!   marks: a difference is noted).
//!
//! Before the assignment is checked, `bills` is taken out and each bill's marks are tied to
//! its containers: to its one container when it has one (read as mechanical seals, a
//! carrier's bolt seals, like the per-container seal number); a mark already on one of the
//! bill's containers is that seal. A bill with several containers does not say which mark
//! is on which: those marks are noted and not tied, as are the marks of a bill without
//! containers (break bulk).

use serde_json::{Value, json};

use crate::problem::{DocumentError, Located};

/// More marks than this on one bill refuse the document.
pub const MAX_MARKS_PER_BILL: usize = 64;

/// Moves the seals of `bills[]` onto `equipment[]`; returns notes on what was not tied.
pub fn apply(canonical: &mut Value) -> Result<Vec<Located>, DocumentError> {
    let Some(bills) = canonical.as_object_mut().and_then(|o| o.remove("bills")) else {
        return Ok(Vec::new());
    };
    let Some(bills) = bills.as_array() else {
        return Ok(Vec::new());
    };
    let mut notes = Vec::new();
    let mut problems = Vec::new();
    for (i, bill) in bills.iter().enumerate() {
        let at = format!("/bills/{i}/seal_marks");
        let Some(text) = bill.get("seal_marks").and_then(Value::as_str) else {
            continue;
        };
        // Only list separators: a space or a '/' may be part of one mark ("SL 12345").
        let mut tokens: Vec<&str> = text
            .split([',', ';', '\n', '\r'])
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        let mut unique = std::collections::HashSet::new();
        tokens.retain(|m| unique.insert(*m));
        if tokens.is_empty() {
            continue;
        }
        if tokens.len() > MAX_MARKS_PER_BILL {
            problems.push(Located::pointer(
                at,
                format!(
                    "{} seal marks on one bill of lading exceed the limit of {MAX_MARKS_PER_BILL}",
                    tokens.len()
                ),
            ));
            continue;
        }
        let (marks, bad): (Vec<&str>, Vec<&str>) = tokens
            .into_iter()
            .partition(|m| ects_core::SealId::parse(*m).is_ok());
        for mark in bad {
            notes.push(Located::pointer(
                at.clone(),
                format!(
                    "seal mark {mark:?} is not a seal id (1 to 35 letters, digits, '-', '_', \
                     '.', ':'): not tied"
                ),
            ));
        }
        if marks.is_empty() {
            continue;
        }
        if let Some(count) = bill.get("seal_count").and_then(Value::as_i64)
            && usize::try_from(count).ok() != Some(marks.len())
        {
            notes.push(Located::pointer(
                format!("/bills/{i}/seal_count"),
                format!(
                    "the bill of lading declares {count} seal(s) and marks {}: the marks are read",
                    marks.len()
                ),
            ));
        }
        let containers: Vec<&str> = bill
            .get("containers")
            .and_then(Value::as_array)
            .map(|c| c.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(equipment) = canonical.get_mut("equipment").and_then(Value::as_array_mut) else {
            notes.push(Located::pointer(
                at,
                format!(
                    "seal marks {} name no container: not tied",
                    marks.join(", ")
                ),
            ));
            continue;
        };
        // A mark already on one of the bill's containers is that container's seal.
        let on_containers = |mark: &str, equipment: &[Value]| {
            equipment.iter().any(|e| {
                e.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| containers.contains(&id))
                    && e.get("seals").and_then(Value::as_array).is_some_and(|s| {
                        s.iter()
                            .any(|s| s.get("id").and_then(Value::as_str) == Some(mark))
                    })
            })
        };
        let loose: Vec<&str> = marks
            .iter()
            .copied()
            .filter(|m| !on_containers(m, equipment))
            .collect();
        if loose.is_empty() {
            continue;
        }
        match containers.as_slice() {
            [one] => {
                let Some(entry) = equipment
                    .iter_mut()
                    .find(|e| e.get("id").and_then(Value::as_str) == Some(*one))
                else {
                    continue;
                };
                let Some(entry) = entry.as_object_mut() else {
                    continue;
                };
                let seals = entry.entry("seals").or_insert_with(|| json!([]));
                if let Some(seals) = seals.as_array_mut() {
                    for mark in loose {
                        seals.push(json!({"id": mark, "kind": "mechanical"}));
                    }
                }
            }
            [] => notes.push(Located::pointer(
                at,
                format!(
                    "seal marks {} belong to a bill of lading without containers: not tied",
                    loose.join(", ")
                ),
            )),
            several => notes.push(Located::pointer(
                at,
                format!(
                    "seal marks {} are given for the bill of lading's {} containers ({}), not for one of them: not tied",
                    loose.join(", "),
                    several.len(),
                    several.join(", ")
                ),
            )),
        }
    }
    if !problems.is_empty() {
        return Err(DocumentError::Invalid(problems));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bills_marks_go_to_its_one_container() {
        let mut v = json!({
            "equipment": [{"id": "MSKU1234565"}, {"id": "TGHU4820371", "seals": [{"id": "S1", "kind": "mechanical"}]}],
            "bills": [
                {"containers": ["MSKU1234565"], "seal_marks": "BS100, BS101", "seal_count": 2},
                {"containers": ["TGHU4820371"], "seal_marks": "S1", "seal_count": 1}
            ]
        });
        let notes = apply(&mut v).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert!(v.get("bills").is_none());
        assert_eq!(v["equipment"][0]["seals"][1]["id"], "BS101");
        assert_eq!(v["equipment"][1]["seals"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn marks_of_a_bill_with_several_containers_are_noted_not_tied() {
        let mut v = json!({
            "equipment": [{"id": "A"}, {"id": "B"}],
            "bills": [{"containers": ["A", "B"], "seal_marks": "X1;X2", "seal_count": 3}]
        });
        let notes = apply(&mut v).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(v["equipment"][0].get("seals").is_none());
    }

    #[test]
    fn marks_split_at_list_separators_only_and_a_bad_mark_is_noted() {
        let mut v = json!({
            "equipment": [{"id": "A"}],
            "bills": [{"containers": ["A"], "seal_marks": "SL 12345, BS1;BS2\nBS3/BS4\r\n"}]
        });
        let notes = apply(&mut v).unwrap();
        let seals: Vec<&str> = v["equipment"][0]["seals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(seals, ["BS1", "BS2"]);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].detail.contains("\"SL 12345\" is not a seal id"),
            "{notes:?}"
        );
        assert!(notes[1].detail.contains("\"BS3/BS4\""), "{notes:?}");
    }

    #[test]
    fn too_many_marks_refuse() {
        let marks = (0..=MAX_MARKS_PER_BILL)
            .map(|i| format!("M{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut v = json!({"equipment": [{"id": "A"}], "bills": [{"containers": ["A"], "seal_marks": marks}]});
        assert!(apply(&mut v).is_err());
    }
}
