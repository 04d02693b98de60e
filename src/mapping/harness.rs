//! The integrator's test harness: `tests/fixtures/<format>/<case>/` holds `input.*`, and
//! `expected.ects.json` (the canonical form it reads as) or `expected.problems.json` (the
//! problems it must be refused with), and optionally `expected.<target>.<ext>` (what it
//! translates to). Every case that reads is also written back and read again: the round
//! trip must keep every mapped field.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::tree;
use crate::formats::{Formats, Inbound, Outbound};

#[derive(Debug)]
pub struct CaseResult {
    pub format: String,
    pub case: String,
    pub failures: Vec<String>,
}

/// Every place two JSON values differ (at most `limit`), as `pointer: a ≠ b`.
pub fn json_differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>, limit: usize) {
    if out.len() >= limit {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = format!("{at}/{k}");
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => json_differences(p, q, &path, out, limit),
                    (Some(p), None) => out.push(format!("{path}: expected {p}, missing")),
                    (None, Some(q)) => out.push(format!("{path}: unexpected {q}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                json_differences(p, q, &format!("{at}/{i}"), out, limit);
            }
            if x.len() != y.len() {
                out.push(format!("{at}: expected {} items, got {}", x.len(), y.len()));
            }
        }
        (Value::Number(p), Value::Number(q)) if p.as_f64() == q.as_f64() => {}
        _ if a == b => {}
        _ => out.push(format!("{at}: expected {a}, got {b}")),
    }
}

/// XML compared as trees: element names (namespace, not prefix), attributes and trimmed
/// text; layout whitespace ignored.
pub fn xml_differences(expected: &[u8], actual: &[u8]) -> Vec<String> {
    let (a, b) = match (tree::parse_xml(expected), tree::parse_xml(actual)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) => return vec![format!("the expected XML does not parse: {e}")],
        (_, Err(e)) => return vec![format!("the output XML does not parse: {e}")],
    };
    fn walk(a: &tree::Node, b: &tree::Node, at: &str, out: &mut Vec<String>) {
        let here = format!("{at}/{}", a.name);
        if a.name != b.name {
            out.push(format!("{at}: expected element {}, got {}", a.name, b.name));
            return;
        }
        if a.text != b.text {
            out.push(format!(
                "{here}: expected text {:?}, got {:?}",
                a.text, b.text
            ));
        }
        let mut aa: Vec<(&str, &str)> = a
            .attrs
            .iter()
            .map(|x| (x.name.as_str(), x.value.as_str()))
            .collect();
        let mut ba: Vec<(&str, &str)> = b
            .attrs
            .iter()
            .map(|x| (x.name.as_str(), x.value.as_str()))
            .collect();
        aa.sort();
        ba.sort();
        if aa != ba {
            out.push(format!("{here}: expected attributes {aa:?}, got {ba:?}"));
        }
        for (i, (x, y)) in a.children.iter().zip(&b.children).enumerate() {
            walk(x, y, &format!("{here}[{i}]"), out);
        }
        if a.children.len() != b.children.len() {
            out.push(format!(
                "{here}: expected {} child elements, got {}",
                a.children.len(),
                b.children.len()
            ));
        }
    }
    let mut out = Vec::new();
    walk(&a, &b, "", &mut out);
    out
}

/// The expected problems no actual one matches. Each expected problem names some of
/// pointer/path/canonical/line and a piece of its detail (`detail_contains`); an actual
/// problem must agree on all it names.
fn unmatched(expected: &[Value], actual: &[crate::problem::Located]) -> Vec<String> {
    let actual: Vec<Value> = actual
        .iter()
        .map(|l| serde_json::to_value(l).unwrap_or_default())
        .collect();
    expected
        .iter()
        .filter(|want| {
            !actual.iter().any(|got| {
                want.as_object().is_some_and(|w| {
                    w.iter().all(|(k, v)| match k.as_str() {
                        "detail_contains" => got["detail"]
                            .as_str()
                            .zip(v.as_str())
                            .is_some_and(|(d, s)| d.contains(s)),
                        _ => &got[k] == v,
                    })
                })
            })
        })
        .map(|want| {
            format!(
                "expected problem {want} not among {}",
                Value::Array(actual.clone())
            )
        })
        .collect()
}

fn find(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn outbound(inbound: &Inbound) -> Outbound<'_> {
    inbound.as_outbound()
}

/// The pseudo-format of cases whose input is a canonical status notification (what the
/// gateway tells partners): they check what each format writes of it.
pub const NOTIFICATION_CASES: &str = "ects-notification";

fn notification_case(formats: &Formats, dir: &Path) -> Vec<String> {
    let Some(input) = find(dir, "input.").into_iter().next() else {
        return vec!["no input.* file".into()];
    };
    let notification: ects_core::StatusNotification = match std::fs::read(&input)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(n) => n,
        Err(e) => return vec![format!("{}: {e}", input.display())],
    };
    let mut failures = Vec::new();
    for target_file in find(dir, "expected.") {
        failures.extend(check_written(
            formats,
            &target_file,
            &Outbound::StatusNotification(&notification),
        ));
    }
    failures
}

/// Checks one `expected.<format>.<ext>` (what writing to that format must give) or
/// `expected.<format>.problems.json` (the refusal it must get) against what the format
/// writes. `expected.ects.json` and `expected.problems.json` concern reading: skipped.
fn check_written(formats: &Formats, target_file: &Path, out: &Outbound<'_>) -> Vec<String> {
    let name = target_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() < 3 || parts[1] == "ects" || parts[1] == "problems" {
        return Vec::new();
    }
    let refusal = parts.len() >= 4 && parts[parts.len() - 2] == "problems";
    let target = parts[1..parts.len() - if refusal { 2 } else { 1 }].join(".");
    let Some(writer) = formats.get(&target) else {
        return vec![format!("{name}: no format {target:?}")];
    };
    let expected = std::fs::read(target_file).unwrap_or_default();
    match (writer.encode(out), refusal) {
        (Ok(_), true) => vec![format!(
            "{name}: writing {target} succeeded; a refusal was expected"
        )],
        (Err(e), true) => {
            let wanted: Vec<Value> = serde_json::from_slice(&expected).unwrap_or_default();
            unmatched(&wanted, &e.into_problems())
                .into_iter()
                .map(|m| format!("{name}: {m}"))
                .collect()
        }
        (Ok(encoded), false) => compare(parts.last().copied(), &expected, &encoded.body)
            .into_iter()
            .map(|d| format!("{name}: {d}"))
            .collect(),
        (Err(e), false) => vec![format!("{name}: writing {target} failed: {e}")],
    }
}

/// The differences between an expected and a written document, by its extension.
fn compare(extension: Option<&str>, expected: &[u8], actual: &[u8]) -> Vec<String> {
    match extension {
        Some("xml") => xml_differences(expected, actual),
        Some("json") => {
            let mut d = Vec::new();
            match (
                serde_json::from_slice::<Value>(expected),
                serde_json::from_slice::<Value>(actual),
            ) {
                (Ok(a), Ok(b)) => json_differences(&a, &b, "", &mut d, 20),
                _ => d.push("not JSON".into()),
            }
            d
        }
        _ => {
            let (a, b) = (
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(actual),
            );
            a.lines()
                .zip(b.lines())
                .enumerate()
                .filter(|(_, (x, y))| x != y)
                .map(|(i, (x, y))| format!("line {}: expected {x:?}, got {y:?}", i + 1))
                .chain(
                    (a.lines().count() != b.lines().count())
                        .then(|| "the line counts differ".into()),
                )
                .collect()
        }
    }
}

fn run_case(formats: &Formats, format: &str, dir: &Path) -> Vec<String> {
    if format == NOTIFICATION_CASES {
        return notification_case(formats, dir);
    }
    let mut failures = Vec::new();
    let Some(adapter) = formats.get(format) else {
        return vec![format!(
            "no format {format:?} is loaded (known: {}); give its mapping files with \
             --mappings DIR (the test-only formats' are in tests/mappings)",
            formats.ids().join(", ")
        )];
    };
    let Some(input) = find(dir, "input.").into_iter().next() else {
        return vec!["no input.* file".into()];
    };
    let body = match std::fs::read(&input) {
        Ok(b) => b,
        Err(e) => return vec![format!("cannot read {}: {e}", input.display())],
    };
    let expected_problems = dir.join("expected.problems.json");
    let decoded = adapter.decode(&body);
    if expected_problems.exists() {
        let expected: Vec<Value> = match std::fs::read(&expected_problems)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(v) => v,
            None => return vec!["expected.problems.json is not a JSON array".into()],
        };
        let actual = match decoded {
            Ok(_) => {
                return vec![
                    "the input was accepted, but expected.problems.json expects it refused".into(),
                ];
            }
            Err(e) => e.into_problems(),
        };
        failures.extend(unmatched(&expected, &actual));
        return failures;
    }
    let decoded = match decoded {
        Ok(d) => d,
        Err(e) => return vec![format!("the input is refused: {e}")],
    };
    let canonical = Value::from(&decoded.inbound);
    let expected_canonical = dir.join("expected.ects.json");
    match std::fs::read(&expected_canonical)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    {
        Some(expected) => {
            let mut diffs = Vec::new();
            json_differences(&expected, &canonical, "", &mut diffs, 20);
            failures.extend(diffs.into_iter().map(|d| format!("canonical {d}")));
        }
        None => failures.push("expected.ects.json is missing or not JSON".into()),
    }
    for target_file in find(dir, "expected.") {
        failures.extend(check_written(
            formats,
            &target_file,
            &outbound(&decoded.inbound),
        ));
    }
    // Round trip: written back in its own format and read again, nothing mapped is lost.
    if adapter
        .messages()
        .contains(&(decoded.inbound.kind(), "out"))
    {
        match adapter.encode(&outbound(&decoded.inbound)) {
            Ok(encoded) => match adapter.decode(&encoded.body) {
                Ok(again) => {
                    let mut diffs = Vec::new();
                    json_differences(&canonical, &Value::from(&again.inbound), "", &mut diffs, 20);
                    failures.extend(diffs.into_iter().map(|d| format!("round trip {d}")));
                }
                Err(e) => failures.push(format!("round trip: its own output is refused: {e}")),
            },
            Err(e) => failures.push(format!("round trip: writing failed: {e}")),
        }
    }
    failures
}

/// The subdirectories of `dir`, sorted.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs every case under `dir` (`dir/<format>/<case>/`).
pub fn run(formats: &Formats, dir: &Path) -> Vec<CaseResult> {
    run_only(formats, dir, None)
}

/// Runs the cases under `dir`, only those of format `only` when given.
pub fn run_only(formats: &Formats, dir: &Path, only: Option<&str>) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for format_dir in subdirs(dir) {
        let format = name_of(&format_dir);
        if only.is_some_and(|f| f != format) {
            continue;
        }
        let cases = subdirs(&format_dir);
        for case in cases {
            if find(&case, "input.").is_empty() {
                continue;
            }
            let failures = run_case(formats, &format, &case);
            results.push(CaseResult {
                format: format.clone(),
                case: name_of(&case),
                failures,
            });
        }
    }
    results
}
