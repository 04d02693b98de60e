//! A mapping file compiled into a plan: paths resolved (namespaces, repetition), code lists
//! looked up, conversions prepared. Decoding walks the document tree along each binding;
//! encoding builds a tree from the canonical form along the same bindings, in file order.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::Value;

use super::spec::{Direction, MapEntry, MappingFile, MessageKind, Syntax, TooLong, ValueKind};
use super::tree::{Attr, Node, Scalar};
use crate::problem::Located;

/// A reason a mapping file does not compile.
pub type CompileError = (usize, String);

/// One step of a document path.
#[derive(Debug, Clone, PartialEq)]
pub struct DocSeg {
    /// Element (Clark name), JSON key, record tag or field number.
    pub name: String,
    pub repeated: bool,
    pub attribute: bool,
    /// `name[1]`: a JSON array that holds exactly one item (read like a single element,
    /// written as an array).
    pub single: bool,
    /// `name[*]`: repeated, and its instances' items of the next repetition are numbered
    /// as one list (a manifest's containers across its bills of lading). Read only.
    pub flatten: bool,
}

/// One step of a canonical path.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonSeg {
    pub key: String,
    pub repeated: bool,
}

#[derive(Debug, Clone)]
pub struct CodeList {
    pub name: String,
    /// canonical → partner.
    pub out: BTreeMap<String, String>,
    /// partner → canonical.
    pub input: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Conversion {
    pub kind: ValueKind,
    pub pattern: Option<String>,
    pub offset: Option<FixedOffset>,
    pub scale: Option<f64>,
    pub decimals: Option<usize>,
    pub codes: Option<Arc<CodeList>>,
    /// A composite key (`alert+seal_tamper+in_transit`): when the list lacks it, the key
    /// without its last part is tried, and so on.
    pub composite: bool,
    /// `codes = "offices"`: an office code, read and written as it is. Its shape is
    /// checked here; whether the office is known is the office registry's question, asked
    /// of the whole declaration (`crate::offices`), the same for every format.
    pub office: bool,
}

/// The code list name that stands for the office registry.
pub const OFFICES: &str = "offices";

#[derive(Debug, Clone)]
pub struct Binding {
    pub line: usize,
    /// Several targets when one document field splits into several canonical fields.
    pub canonical: Vec<Vec<CanonSeg>>,
    pub canonical_text: String,
    pub doc: Vec<DocSeg>,
    pub doc_text: String,
    pub required: bool,
    pub default: Option<String>,
    pub split: Option<String>,
    /// The canonical path has one more repetition than the document: the split makes it.
    pub splits_into_array: bool,
    pub convert: Conversion,
    pub max_length: Option<usize>,
    pub on_too_long: TooLong,
    /// Read only when the field is still absent; never written.
    pub fallback: bool,
    pub first_chars: Option<usize>,
    /// A fallback's constant: set wherever the path exists (e.g. every `Seal` is an
    /// electronic one in this installation).
    pub constant: Option<String>,
    /// The canonical path repeats once more than the document: the first item only.
    pub only_first: bool,
    /// Several canonical fields make one code-list key (`released+late`); written only.
    pub composite: bool,
    /// Written, never read; joins across the canonical repetitions the document lacks.
    pub output_only: bool,
    /// Read only where this document field has this text.
    pub when: Option<(Vec<DocSeg>, String)>,
    /// Read only: another field's text appended after a separator before conversion.
    pub join: Option<(Vec<DocSeg>, String)>,
    /// One canonical value repeated in each instance of the document's group.
    pub in_each: bool,
    /// How many repetitions the document path has.
    pub doc_reps: usize,
}

#[derive(Debug, Clone)]
pub enum Step {
    Bind(Box<Binding>),
    Fixed {
        doc: Vec<DocSeg>,
        value: String,
        with_parent: bool,
        /// JSON: a number or boolean rather than text.
        scalar: Scalar,
    },
    /// The 1-based position of each instance of the innermost repeated group.
    Sequence {
        doc: Vec<DocSeg>,
    },
    /// Written only: how many values a canonical path has (`count`), or their sum
    /// (`total`).
    Aggregate {
        doc: Vec<DocSeg>,
        canonical: Vec<CanonSeg>,
        sum: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub file: String,
    pub id: String,
    pub version: String,
    pub syntax: Syntax,
    pub message: MessageKind,
    pub description: String,
    pub directions: Vec<Direction>,
    pub detect_root: Option<String>,
    pub detect_keys: Vec<String>,
    pub detect_starts_with: Option<String>,
    pub detect_contains: Option<String>,
    /// namespace → prefix, for output.
    pub prefixes: Vec<(String, String)>,
    pub output_root: String,
    pub flat: Option<super::spec::FlatSpec>,
    pub json: JsonPlan,
    pub steps: Vec<Step>,
    /// Output order: each element path (names from the root) ranked by where the mapping
    /// first names it, so that written documents follow the partner's element order.
    pub order: BTreeMap<Vec<String>, usize>,
}

/// A JSON format's own schema and kept parts (`[json]` in the mapping).
#[derive(Debug, Clone, Default)]
pub struct JsonPlan {
    /// The schema file as named in the mapping.
    pub schema_file: Option<String>,
    pub schema: Option<Arc<jsonschema::Validator>>,
    pub schema_error_code: Option<String>,
    pub carry: Vec<String>,
    pub signature: Option<String>,
    pub signature_fields: Vec<String>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn parse_offset(text: &str) -> Option<FixedOffset> {
    if text == "Z" || text == "+00:00" {
        return FixedOffset::east_opt(0);
    }
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = text[1..].split_once(':')?;
    let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
    FixedOffset::east_opt(sign * secs)
}

fn canon_path(text: &str) -> Result<Vec<CanonSeg>, String> {
    text.split('.')
        .map(|seg| {
            let (key, repeated) = match seg.strip_suffix("[]") {
                Some(k) => (k, true),
                None => (seg, false),
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("canonical path {text:?}: bad segment {seg:?}"));
            }
            Ok(CanonSeg {
                key: key.to_owned(),
                repeated,
            })
        })
        .collect()
}

impl Plan {
    /// Compiles a parsed mapping file. `source` is the file's text (for line numbers).
    pub fn compile(
        file: &str,
        source: &str,
        spec: MappingFile,
        codes: &BTreeMap<String, Arc<CodeList>>,
    ) -> Result<Plan, CompileError> {
        let syntax = spec.format.syntax;
        let mut prefixes: BTreeMap<String, String> = spec.xml.namespaces.clone();
        let default_ns = spec.xml.default_namespace.clone();
        let resolve = |name: &str, line: usize| -> Result<String, CompileError> {
            if syntax != Syntax::Xml {
                return Ok(name.to_owned());
            }
            match name.split_once(':') {
                Some((p, local)) => prefixes.get(p).map(|ns| format!("{{{ns}}}{local}")).ok_or((
                    line,
                    format!("namespace prefix {p:?} is not in [xml] namespaces"),
                )),
                None => Ok(match &default_ns {
                    Some(ns) => format!("{{{ns}}}{name}"),
                    None => name.to_owned(),
                }),
            }
        };
        let doc_path = |text: &str, line: usize| -> Result<Vec<DocSeg>, CompileError> {
            let segs: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
            if segs.is_empty() {
                return Err((line, format!("path {text:?} is empty")));
            }
            let last = segs.len() - 1;
            segs.iter()
                .enumerate()
                .map(|(i, seg)| {
                    let (name, attribute) = match seg.strip_prefix('@') {
                        Some(a) if i == last => (a, true),
                        Some(_) => {
                            return Err((
                                line,
                                format!("path {text:?}: an attribute can only end a path"),
                            ));
                        }
                        None => (*seg, false),
                    };
                    let (name, repeated, single, flatten) = match name.strip_suffix("[]") {
                        Some(n) => (n, true, false, false),
                        None => match name.strip_suffix("[1]") {
                            Some(n) => (n, false, true, false),
                            None => match name.strip_suffix("[*]") {
                                Some(n) => (n, false, false, true),
                                None => (name, false, false, false),
                            },
                        },
                    };
                    if flatten && !segs.get(i + 1).is_some_and(|next| next.ends_with("[]")) {
                        return Err((
                            line,
                            format!("path {text:?}: `[*]` must be followed by a repeated segment `[]`, whose items it numbers as one list"),
                        ));
                    }
                    if flatten && spec.format.directions.contains(&Direction::Out) {
                        return Err((
                            line,
                            format!("path {text:?}: `[*]` is read only: use it in a mapping that is only read (directions = [\"in\"])"),
                        ));
                    }
                    if single && syntax != Syntax::Json {
                        return Err((
                            line,
                            format!("path {text:?}: `[1]` (an array of one item) is for JSON"),
                        ));
                    }
                    if attribute && (repeated || single) {
                        return Err((line, format!("path {text:?}: an attribute does not repeat")));
                    }
                    let resolved = if attribute && !name.contains(':') {
                        // Unprefixed attributes are in no namespace.
                        name.to_owned()
                    } else {
                        resolve(name, line)?
                    };
                    Ok(DocSeg {
                        name: resolved,
                        repeated,
                        attribute,
                        single,
                        flatten,
                    })
                })
                .collect()
        };

        let mut steps = Vec::new();
        for entry in &spec.map {
            let line = line_of(source, entry.span().start);
            let e: &MapEntry = entry.get_ref();
            let doc = doc_path(&e.path, line)?;
            match (&e.canonical, &e.value) {
                (None, None) if e.sequence => {
                    if !doc.iter().any(|s| s.repeated) {
                        return Err((
                            line,
                            "`sequence` numbers a repeated group: mark it []".into(),
                        ));
                    }
                    steps.push(Step::Sequence { doc })
                }
                (None, None) if e.count.is_some() || e.total.is_some() => {
                    let (text, sum) = match (&e.count, &e.total) {
                        (Some(c), None) => (c, false),
                        (None, Some(t)) => (t, true),
                        _ => return Err((line, "`count` or `total`, not both".into())),
                    };
                    if doc.iter().any(|s| s.repeated) {
                        return Err((
                            line,
                            "`count` and `total` write one field: no [] in its path".into(),
                        ));
                    }
                    let canonical = canon_path(text).map_err(|r| (line, r))?;
                    steps.push(Step::Aggregate {
                        doc,
                        canonical,
                        sum,
                    })
                }
                (None, Some(value)) => steps.push(Step::Fixed {
                    doc,
                    value: value.clone(),
                    with_parent: e.with_parent,
                    scalar: match e.kind {
                        Some(ValueKind::Integer) => {
                            if value.parse::<i64>().is_err() {
                                return Err((
                                    line,
                                    format!("value {value:?} is not a whole number"),
                                ));
                            }
                            Scalar::Number
                        }
                        Some(ValueKind::Number) => {
                            if value.parse::<serde_json::Number>().is_err() {
                                return Err((
                                    line,
                                    format!("value {value:?} is not a JSON number"),
                                ));
                            }
                            Scalar::Number
                        }
                        Some(ValueKind::Boolean) => {
                            if value != "true" && value != "false" {
                                return Err((
                                    line,
                                    format!("value {value:?} is not true or false"),
                                ));
                            }
                            Scalar::Bool
                        }
                        _ => Scalar::Text,
                    },
                }),
                (Some(_), Some(_)) if !e.fallback => {
                    return Err((
                        line,
                        "`canonical` with `value` is a read-only constant: add `fallback = true`"
                            .into(),
                    ));
                }
                (Some(canonical), constant) => {
                    let targets = canonical.to_vec();
                    let canonical = targets
                        .iter()
                        .map(|t| canon_path(t).map_err(|r| (line, r)))
                        .collect::<Result<Vec<_>, _>>()?;
                    let reps = |c: &Vec<CanonSeg>| c.iter().filter(|s| s.repeated).count();
                    let doc_reps = doc.iter().filter(|s| s.repeated).count();
                    let canon_reps = reps(&canonical[0]);
                    if canonical.iter().any(|c| reps(c) != canon_reps) {
                        return Err((line, "all canonical targets must repeat alike".into()));
                    }
                    if e.in_each && (canon_reps != 0 || doc_reps == 0) {
                        return Err((
                            line,
                            "`in_each` needs a canonical field that does not repeat and a document path that does".into(),
                        ));
                    }
                    let only_first = e.only_first && canon_reps > doc_reps;
                    if e.only_first && !only_first {
                        return Err((
                            line,
                            "`only_first` needs a canonical path that repeats more than the document path".into(),
                        ));
                    }
                    let splits_into_array = (canon_reps == doc_reps + 1
                        || (e.output_only && canon_reps > doc_reps))
                        && !only_first;
                    if splits_into_array && e.split.is_none() {
                        return Err((
                            line,
                            format!(
                                "{} repeats once more than {}: give `split` to make the items from one field",
                                e.canonical_text(),
                                e.path
                            ),
                        ));
                    }
                    if !splits_into_array && !only_first && !e.in_each && canon_reps != doc_reps {
                        return Err((
                            line,
                            format!(
                                "{} repeats {canon_reps} time(s) but {} {doc_reps}: mark the same groups with []",
                                e.canonical_text(),
                                e.path
                            ),
                        ));
                    }
                    let composite = canonical.len() > 1 && e.split.is_none();
                    if composite
                        && (e.codes.is_none() || spec.format.directions.contains(&Direction::In))
                    {
                        return Err((
                            line,
                            "several canonical targets need `split`, or `codes` in a mapping that is only written (a composite key)".into(),
                        ));
                    }
                    // Another field read with this one: its repeated groups must be the
                    // binding's own (the same instance), not others that happen to count
                    // alike.
                    let sibling = |path: &str, what: &str| {
                        let other = doc_path(path, line)?;
                        let shared = other.iter().rposition(|s| s.repeated).map_or(0, |i| i + 1);
                        let same = |a: &DocSeg, b: &DocSeg| {
                            a.name == b.name && a.repeated == b.repeated && a.flatten == b.flatten
                        };
                        if shared > doc.len()
                            || !other[..shared]
                                .iter()
                                .zip(&doc[..shared])
                                .all(|(a, b)| same(a, b))
                        {
                            return Err((
                                line,
                                format!(
                                    "`{what}` path must share the binding's path up to its last []"
                                ),
                            ));
                        }
                        Ok(other)
                    };
                    let when = match &e.when {
                        Some(_) if !e.fallback => {
                            return Err((
                                line,
                                "`when` is for a `fallback` binding (read only)".into(),
                            ));
                        }
                        Some(w) => Some((sibling(&w.path, "when")?, w.equals.clone())),
                        None => None,
                    };
                    let join = match &e.join {
                        Some(_)
                            if spec.format.directions.contains(&Direction::Out) && !e.fallback =>
                        {
                            return Err((
                                line,
                                "`join` is read only: use it in a mapping that is only read (directions = [\"in\"]) or on a `fallback`".into(),
                            ));
                        }
                        Some(j) => Some((sibling(&j.path, "join")?, j.with.clone())),
                        None => None,
                    };
                    if e.first_chars.is_some() && !e.fallback {
                        return Err((
                            line,
                            "`first_chars` is for a `fallback` binding (read only)".into(),
                        ));
                    }
                    let kind = e.kind.unwrap_or(ValueKind::String);
                    if matches!(kind, ValueKind::Datetime | ValueKind::Date) && e.pattern.is_none()
                    {
                        return Err((line, "a datetime or date needs `pattern`".into()));
                    }
                    let offset = match &e.offset {
                        Some(o) => Some(
                            parse_offset(o)
                                .ok_or((line, format!("offset {o:?} is not like +05:30")))?,
                        ),
                        None => None,
                    };
                    let office = e.codes.as_deref() == Some(OFFICES);
                    let code_list = match &e.codes {
                        Some(name) if name == OFFICES => None,
                        Some(name) => Some(codes.get(name).cloned().ok_or((
                            line,
                            format!("code list {name:?} is not in mappings/codes"),
                        ))?),
                        None => None,
                    };
                    steps.push(Step::Bind(Box::new(Binding {
                        line,
                        canonical,
                        canonical_text: targets.join(", "),
                        doc,
                        doc_text: e.path.clone(),
                        required: e.required,
                        default: e.default.clone(),
                        split: e.split.clone(),
                        splits_into_array,
                        convert: Conversion {
                            kind,
                            pattern: e.pattern.clone(),
                            offset,
                            scale: e.scale,
                            decimals: e.decimals,
                            codes: code_list,
                            composite,
                            office,
                        },
                        max_length: e.max_length,
                        on_too_long: e.on_too_long.unwrap_or(TooLong::Refuse),
                        fallback: e.fallback,
                        first_chars: e.first_chars,
                        constant: constant.clone(),
                        only_first,
                        composite,
                        output_only: e.output_only,
                        when,
                        join,
                        in_each: e.in_each,
                        doc_reps,
                    })));
                }
                _ => {
                    return Err((
                        line,
                        "a [[map]] entry has `canonical` (a binding) or `value` (a fixed output), one of them".into(),
                    ));
                }
            }
        }

        let output_root = match syntax {
            Syntax::Xml => {
                let root = spec
                    .xml
                    .root
                    .clone()
                    .or_else(|| spec.detect.root.clone())
                    .ok_or((
                        1,
                        "an XML mapping needs [xml] root or [detect] root".to_owned(),
                    ))?;
                if root.contains(':') {
                    resolve(&root, 1)?
                } else {
                    match &spec.detect.namespace {
                        Some(ns) => format!("{{{ns}}}{root}"),
                        None => resolve(&root, 1)?,
                    }
                }
            }
            _ => String::new(),
        };
        let detect_root = spec
            .detect
            .root
            .as_ref()
            .map(|r| match &spec.detect.namespace {
                Some(ns) => format!("{{{ns}}}{r}"),
                None => r.clone(),
            });
        if syntax == Syntax::Flat && spec.flat.is_none() {
            return Err((1, "a flat mapping needs a [flat] table".into()));
        }
        if let Some(ns) = &default_ns {
            prefixes.insert(String::new(), ns.clone());
        }
        let mut order = BTreeMap::new();
        for step in &steps {
            let doc = match step {
                // A fallback is read only: it says nothing of the written order.
                Step::Bind(b) if b.fallback => continue,
                Step::Bind(b) => &b.doc,
                Step::Fixed { doc, .. } | Step::Sequence { doc } | Step::Aggregate { doc, .. } => {
                    doc
                }
            };
            let mut path = Vec::new();
            for seg in doc.iter().filter(|s| !s.attribute) {
                path.push(seg.name.clone());
                let next = order.len();
                order.entry(path.clone()).or_insert(next);
            }
        }
        Ok(Plan {
            file: file.to_owned(),
            id: spec.format.id,
            version: spec.format.version,
            syntax,
            message: spec.format.message,
            description: spec.format.description,
            directions: spec.format.directions,
            detect_root,
            detect_keys: spec.detect.keys,
            detect_starts_with: spec.detect.starts_with,
            detect_contains: spec.detect.contains,
            prefixes: prefixes.into_iter().map(|(p, ns)| (ns, p)).collect(),
            output_root,
            flat: spec.flat,
            json: JsonPlan {
                schema_file: spec.json.schema,
                schema: None,
                schema_error_code: spec.json.schema_error_code,
                carry: spec.json.carry,
                signature: spec.json.signature,
                signature_fields: spec.json.signature_fields,
            },
            steps,
            order,
        })
    }
}

impl MapEntry {
    fn canonical_text(&self) -> String {
        self.canonical
            .as_ref()
            .map(|c| c.to_vec().join(", "))
            .unwrap_or_default()
    }
}

/// Where a value was found or is written, for problems.
#[derive(Debug, Clone)]
pub struct Place {
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

pub fn problem(place: &Place, canonical: Option<String>, detail: impl Into<String>) -> Located {
    Located {
        pointer: None,
        path: Some(place.path.clone()),
        line: place.line,
        column: place.column,
        canonical,
        code: None,
        detail: detail.into(),
    }
}

fn canonical_pointer(path: &[CanonSeg], indices: &[usize]) -> String {
    let mut out = String::new();
    let mut idx = indices.iter();
    for seg in path {
        out.push('/');
        out.push_str(&seg.key);
        if seg.repeated
            && let Some(i) = idx.next()
        {
            out.push_str(&format!("/{i}"));
        }
    }
    out
}

fn step_display(
    syntax: Syntax,
    parent: &str,
    name: &str,
    index: Option<usize>,
    attribute: bool,
) -> String {
    let local = match name.rsplit_once('}') {
        Some((_, l)) => l,
        None => name,
    };
    match (syntax, attribute, index) {
        (Syntax::Json, _, Some(i)) => format!("{parent}/{local}/{i}"),
        (Syntax::Json, _, None) => format!("{parent}/{local}"),
        (Syntax::Flat, _, Some(i)) => format!("{parent}{local}[{}]", i + 1),
        (Syntax::Flat, _, None) if parent.is_empty() => local.to_owned(),
        (Syntax::Flat, _, None) => format!("{parent}:{local}"),
        (_, true, _) => format!("{parent}/@{local}"),
        (_, false, Some(i)) => format!("{parent}/{local}[{}]", i + 1),
        (_, false, None) => format!("{parent}/{local}"),
    }
}

/// A value found in the document for a binding.
struct Found<'a> {
    indices: Vec<usize>,
    text: &'a str,
    place: Place,
}

/// Collects the values a document path reaches, with the indices of its repetitions.
#[allow(clippy::too_many_arguments)]
fn collect<'a>(
    syntax: Syntax,
    track: bool,
    node: &'a Node,
    segs: &[DocSeg],
    indices: &mut Vec<usize>,
    at: &str,
    found: &mut Vec<Found<'a>>,
    missing: &mut Vec<(Vec<usize>, Place)>,
    problems: &mut Vec<Located>,
) {
    let Some((seg, rest)) = segs.split_first() else {
        node.visited.set(true);
        if let Some(text) = node.text.as_deref() {
            found.push(Found {
                indices: indices.clone(),
                text,
                place: Place {
                    path: if track { at.to_owned() } else { String::new() },
                    line: (node.line > 0).then_some(node.line),
                    column: (node.column > 0).then_some(node.column),
                },
            });
        } else {
            missing.push((indices.clone(), place_of(node, at)));
        }
        return;
    };
    if seg.attribute {
        match node.attrs.iter().find(|a| a.name == seg.name) {
            Some(a) => {
                a.visited.set(true);
                found.push(Found {
                    indices: indices.clone(),
                    text: &a.value,
                    place: Place {
                        path: if track {
                            step_display(syntax, at, &seg.name, None, true)
                        } else {
                            String::new()
                        },
                        line: (node.line > 0).then_some(node.line),
                        column: (node.column > 0).then_some(node.column),
                    },
                });
            }
            None => missing.push((
                indices.clone(),
                place_of(node, &step_display(syntax, at, &seg.name, None, true)),
            )),
        }
        return;
    }
    node.visited.set(true);
    let mut matching = node
        .children
        .iter()
        .filter(|c| c.name == seg.name)
        .peekable();
    if seg.flatten {
        // The next repetition's items across every instance, numbered as one list: each
        // instance's items are shifted by the count of those before it.
        let next = rest.first().map(|s| s.name.as_str());
        let depth = indices.len();
        let mut offset = 0;
        for (k, child) in matching.enumerate() {
            let here = if track {
                step_display(syntax, at, &seg.name, Some(k), false)
            } else {
                String::new()
            };
            let (f0, m0) = (found.len(), missing.len());
            collect(
                syntax, track, child, rest, indices, &here, found, missing, problems,
            );
            for f in &mut found[f0..] {
                if let Some(i) = f.indices.get_mut(depth) {
                    *i += offset;
                }
            }
            for (m, _) in &mut missing[m0..] {
                if let Some(i) = m.get_mut(depth) {
                    *i += offset;
                }
            }
            offset += child
                .children
                .iter()
                .filter(|c| Some(c.name.as_str()) == next)
                .count();
        }
        return;
    }
    if seg.repeated {
        for (k, child) in matching.enumerate() {
            indices.push(k);
            let here = if track {
                step_display(syntax, at, &seg.name, Some(k), false)
            } else {
                String::new()
            };
            collect(
                syntax, track, child, rest, indices, &here, found, missing, problems,
            );
            indices.pop();
        }
    } else {
        match matching.next() {
            None => missing.push((
                indices.clone(),
                place_of(node, &step_display(syntax, at, &seg.name, None, false)),
            )),
            Some(child) => {
                let here = if track {
                    step_display(syntax, at, &seg.name, seg.single.then_some(0), false)
                } else {
                    String::new()
                };
                if let Some(second) = matching.peek() {
                    if seg.single {
                        problems.push(problem(
                            &place_of(second, &step_display(syntax, at, &seg.name, Some(1), false)),
                            None,
                            "holds more than one item: this format carries one per message (send each in its own message)",
                        ));
                    } else {
                        problems.push(problem(
                            &place_of(child, &here),
                            None,
                            "appears more than once where the mapping expects one (mark it [] to repeat)",
                        ));
                    }
                }
                collect(
                    syntax, track, child, rest, indices, &here, found, missing, problems,
                );
            }
        }
    }
}

fn place_of(node: &Node, path: &str) -> Place {
    Place {
        path: path.to_owned(),
        line: (node.line > 0).then_some(node.line),
        column: (node.column > 0).then_some(node.column),
    }
}

/// Sets `value` at a canonical path, creating objects and array items as needed.
fn set_canonical(root: &mut Value, path: &[CanonSeg], indices: &[usize], value: Value) {
    let mut current = root;
    let mut idx = indices.iter();
    for (n, seg) in path.iter().enumerate() {
        let last = n == path.len() - 1;
        if !current.is_object() {
            *current = Value::Object(serde_json::Map::new());
        }
        let Some(map) = current.as_object_mut() else {
            return;
        };
        if seg.repeated {
            let i = idx.next().copied().unwrap_or(0);
            let slot = map
                .entry(seg.key.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if !slot.is_array() {
                *slot = Value::Array(Vec::new());
            }
            let Some(items) = slot.as_array_mut() else {
                return;
            };
            while items.len() <= i {
                items.push(Value::Null);
            }
            if last {
                items[i] = value;
                return;
            }
            current = &mut items[i];
        } else {
            if last {
                map.insert(seg.key.clone(), value);
                return;
            }
            current = map
                .entry(seg.key.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
        }
    }
}

/// Every value at a canonical path, with the indices of its repetitions.
fn get_canonical<'v>(
    value: &'v Value,
    path: &[CanonSeg],
    indices: &mut Vec<usize>,
    out: &mut Vec<(Vec<usize>, &'v Value)>,
) {
    let Some((seg, rest)) = path.split_first() else {
        if !value.is_null() {
            out.push((indices.clone(), value));
        }
        return;
    };
    let Some(next) = value.get(&seg.key) else {
        return;
    };
    if seg.repeated {
        if let Some(items) = next.as_array() {
            for (i, item) in items.iter().enumerate() {
                indices.push(i);
                get_canonical(item, rest, indices, out);
                indices.pop();
            }
        }
    } else {
        get_canonical(next, rest, indices, out);
    }
}

impl Conversion {
    /// Document text → canonical value.
    fn read(&self, text: &str) -> Result<Value, String> {
        let text = match &self.codes {
            Some(list) => list
                .input
                .get(text)
                .cloned()
                .ok_or_else(|| format!("code {text:?} is not in code list {}", list.name))?,
            None if self.office => ects_core::OfficeCode::parse(text)
                .map_err(|e| format!("office code {text:?} is malformed: {e}"))?
                .as_str()
                .to_owned(),
            None => text.to_owned(),
        };
        match self.kind {
            ValueKind::String => Ok(Value::String(text)),
            ValueKind::Integer => text
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("{text:?} is not a whole number")),
            ValueKind::Number => {
                let n: f64 = text
                    .trim()
                    .parse()
                    .map_err(|_| format!("{text:?} is not a number"))?;
                let n = n * self.scale.unwrap_or(1.0);
                serde_json::Number::from_f64(n)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{text:?} is not a finite number"))
            }
            ValueKind::Boolean => match text.trim() {
                "true" | "1" | "Y" | "yes" => Ok(Value::Bool(true)),
                "false" | "0" | "N" | "no" => Ok(Value::Bool(false)),
                other => Err(format!("{other:?} is not a boolean")),
            },
            ValueKind::Datetime | ValueKind::Date => {
                // Alternatives, "a | b": each tried on input; output writes the first.
                let patterns = self.pattern.as_deref().unwrap_or("%Y-%m-%dT%H:%M:%S%:z");
                let t = text.trim();
                let mut failed = Vec::new();
                for p in patterns.split(" | ") {
                    match self.read_time(t, p) {
                        Ok(v) => return Ok(v),
                        Err(e) => failed.push(e),
                    }
                }
                Err(failed.join("; "))
            }
        }
    }

    fn read_time(&self, t: &str, pattern: &str) -> Result<Value, String> {
        let utc: DateTime<Utc> = if let Ok(dt) = DateTime::parse_from_str(t, pattern) {
            dt.with_timezone(&Utc)
        } else {
            let naive = NaiveDateTime::parse_from_str(t, pattern)
                .or_else(|_| {
                    NaiveDate::parse_from_str(t, pattern)
                        .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
                })
                .map_err(|e| format!("{t:?} does not match the pattern {pattern:?}: {e}"))?;
            let offset = self
                .offset
                .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
            naive
                .and_local_timezone(offset)
                .single()
                .ok_or_else(|| format!("{t:?} is not a valid local time"))?
                .with_timezone(&Utc)
        };
        Ok(Value::String(
            utc.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        ))
    }

    /// Canonical value → document text (and its JSON type).
    fn write(&self, value: &Value) -> Result<(String, Scalar), String> {
        let (text, scalar) = match self.kind {
            ValueKind::Datetime | ValueKind::Date => {
                let s = value.as_str().ok_or("a time is text")?;
                let t = DateTime::parse_from_rfc3339(s).map_err(|e| format!("{s:?}: {e}"))?;
                let offset = self
                    .offset
                    .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
                let pattern = self.pattern.as_deref().unwrap_or("%Y-%m-%dT%H:%M:%S%:z");
                let pattern = pattern.split(" | ").next().unwrap_or(pattern);
                (
                    t.with_timezone(&offset).format(pattern).to_string(),
                    Scalar::Text,
                )
            }
            ValueKind::Number => {
                let n = value.as_f64().ok_or("not a number")? / self.scale.unwrap_or(1.0);
                let text = match self.decimals {
                    Some(d) => format!("{n:.d$}"),
                    None => {
                        let v = serde_json::Number::from_f64(n).ok_or("not a finite number")?;
                        v.to_string()
                    }
                };
                (text, Scalar::Number)
            }
            ValueKind::Integer => (
                value.as_i64().ok_or("not a whole number")?.to_string(),
                Scalar::Number,
            ),
            ValueKind::Boolean => (
                value.as_bool().ok_or("not a boolean")?.to_string(),
                Scalar::Bool,
            ),
            ValueKind::String => (
                match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
                Scalar::Text,
            ),
        };
        match &self.codes {
            Some(list) => {
                let mut key = text.as_str();
                loop {
                    if let Some(c) = list.out.get(key) {
                        return Ok((c.clone(), Scalar::Text));
                    }
                    match key.rsplit_once('+') {
                        Some((shorter, _)) if self.composite => key = shorter,
                        _ => {
                            return Err(format!(
                                "code {text:?} has no entry in code list {}",
                                list.name
                            ));
                        }
                    }
                }
            }
            None => Ok((text, scalar)),
        }
    }
}

/// What decoding found.
pub struct Read {
    pub canonical: Value,
    /// canonical pointer → where in the document it came from.
    pub origins: BTreeMap<String, Place>,
    pub problems: Vec<Located>,
    /// What reading left out without refusing (a repeated copy that said otherwise).
    pub notes: Vec<Located>,
}

impl Plan {
    /// Reads the canonical form. With `track`, every value's document place is kept (to
    /// locate problems); without, reading is cheaper, and a caller that meets a problem
    /// reads again with `track`.
    pub fn decode_tree(&self, root: &Node, track: bool) -> Read {
        let mut canonical = Value::Object(serde_json::Map::new());
        let mut origins = BTreeMap::new();
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        let root_display = match self.syntax {
            Syntax::Xml => step_display(self.syntax, "", &root.name, None, false),
            _ => String::new(),
        };
        root.visited.set(true);
        for step in &self.steps {
            let b = match step {
                Step::Bind(b) if b.output_only => continue,
                Step::Bind(b) => b,
                Step::Fixed { doc, .. } | Step::Sequence { doc } | Step::Aggregate { doc, .. } => {
                    // Fixed parts are structure the mapping knows: read, not unmapped.
                    let (mut found, mut missing, mut ignored) =
                        (Vec::new(), Vec::new(), Vec::new());
                    collect(
                        self.syntax,
                        false,
                        root,
                        doc,
                        &mut Vec::new(),
                        &root_display,
                        &mut found,
                        &mut missing,
                        &mut ignored,
                    );
                    continue;
                }
            };
            let mut found = Vec::new();
            let mut missing = Vec::new();
            collect(
                self.syntax,
                track,
                root,
                &b.doc,
                &mut Vec::new(),
                &root_display,
                &mut found,
                &mut missing,
                &mut problems,
            );
            if let Some((cond, equals)) = &b.when {
                let (mut met, mut absent, mut ignored) = (Vec::new(), Vec::new(), Vec::new());
                collect(
                    self.syntax,
                    false,
                    root,
                    cond,
                    &mut Vec::new(),
                    "",
                    &mut met,
                    &mut absent,
                    &mut ignored,
                );
                let reps = met.first().map_or(0, |m| m.indices.len());
                let meeting: std::collections::HashSet<Vec<usize>> = met
                    .iter()
                    .filter(|m| m.text == equals.as_str())
                    .map(|m| m.indices.clone())
                    .collect();
                let holds =
                    |indices: &[usize]| indices.len() >= reps && meeting.contains(&indices[..reps]);
                found.retain(|f| holds(&f.indices));
                missing.retain(|(indices, _)| holds(indices));
            }
            if b.in_each {
                // One value, copied in each instance: the first is read, a copy that says
                // otherwise is noted.
                found.retain(|f| !f.text.trim().is_empty());
                if let Some(first) = found.first() {
                    let mut others: Vec<&str> = found[1..]
                        .iter()
                        .map(|f| f.text.trim())
                        .filter(|t| *t != first.text.trim())
                        .collect();
                    others.dedup();
                    if !others.is_empty() {
                        notes.push(problem(
                            &first.place,
                            Some(canonical_pointer(&b.canonical[0], &[])),
                            format!(
                                "{} is one for the declaration and is read from the first record, {:?}; others name {} and are not kept",
                                b.canonical_text,
                                first.text.trim(),
                                others.join(", ")
                            ),
                        ));
                    }
                    self.put(
                        b,
                        &[],
                        first.text,
                        &first.place,
                        &mut canonical,
                        track.then_some(&mut origins),
                        &mut problems,
                    );
                } else if let Some((_, place)) = missing.first() {
                    match &b.default {
                        Some(default) => self.put(
                            b,
                            &[],
                            default,
                            place,
                            &mut canonical,
                            track.then_some(&mut origins),
                            &mut problems,
                        ),
                        None if b.required => problems.push(problem(
                            place,
                            Some(canonical_pointer(&b.canonical[0], &[])),
                            format!(
                                "is missing (mapped to {}, mapping line {})",
                                b.canonical_text, b.line
                            ),
                        )),
                        None => {}
                    }
                }
                continue;
            }
            // `join`: each value with the other field's text of the same instance.
            let mut joined: Vec<Option<String>> = vec![None; found.len()];
            if let Some((other, with)) = &b.join {
                let (mut texts, mut absent, mut ignored) = (Vec::new(), Vec::new(), Vec::new());
                collect(
                    self.syntax,
                    false,
                    root,
                    other,
                    &mut Vec::new(),
                    "",
                    &mut texts,
                    &mut absent,
                    &mut ignored,
                );
                let reps = texts.first().map_or(0, |t| t.indices.len());
                let by_instance: std::collections::HashMap<&[usize], &str> = texts
                    .iter()
                    .map(|t| (t.indices.as_slice(), t.text))
                    .collect();
                for (slot, f) in joined.iter_mut().zip(&found) {
                    if f.indices.len() >= reps
                        && let Some(text) = by_instance.get(&f.indices[..reps])
                    {
                        *slot = Some(format!("{}{with}{}", f.text, text.trim()));
                    }
                }
            }
            for (indices, place) in missing {
                match &b.default {
                    Some(default) => self.put(
                        b,
                        &indices,
                        default,
                        &place,
                        &mut canonical,
                        track.then_some(&mut origins),
                        &mut problems,
                    ),
                    None if b.required => problems.push(problem(
                        &place,
                        Some(canonical_pointer(&b.canonical[0], &indices)),
                        format!(
                            "is missing (mapped to {}, mapping line {})",
                            b.canonical_text, b.line
                        ),
                    )),
                    None => {}
                }
            }
            for (f, joined) in found.into_iter().zip(joined) {
                self.put(
                    b,
                    &f.indices,
                    joined.as_deref().unwrap_or(f.text),
                    &f.place,
                    &mut canonical,
                    track.then_some(&mut origins),
                    &mut problems,
                );
            }
        }
        // One place may be met by every binding below it (a second item where one is
        // expected): say it once.
        let mut seen = std::collections::HashSet::new();
        problems.retain(|p| seen.insert((p.path.clone(), p.pointer.clone(), p.detail.clone())));
        Read {
            canonical,
            origins,
            problems,
            notes,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        b: &Binding,
        indices: &[usize],
        text: &str,
        place: &Place,
        canonical: &mut Value,
        mut origins: Option<&mut BTreeMap<String, Place>>,
        problems: &mut Vec<Located>,
    ) {
        let text = match b.first_chars {
            Some(n) => match text.char_indices().nth(n) {
                Some((end, _)) => &text[..end],
                None => text,
            },
            None => text,
        };
        // `only_first`: the document's one field is the canonical list's first item (of
        // the first item, when the canonical path repeats twice more: a record's one
        // container and its one seal).
        let first;
        let indices: &[usize] = if b.only_first {
            let extra = b.canonical[0].iter().filter(|s| s.repeated).count() - b.doc_reps;
            first = [indices, &vec![0; extra]].concat();
            &first
        } else {
            indices
        };
        if b.fallback {
            let pointer = canonical_pointer(&b.canonical[0], indices);
            if canonical.pointer(&pointer).is_some_and(|v| !v.is_null()) {
                return;
            }
        }
        let parts: Vec<&str> = match &b.split {
            Some(sep) => text
                .split(sep.as_str())
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect(),
            None => vec![text],
        };
        let constant = b.constant.as_deref();
        let mut assign = |path: &[CanonSeg], idx: Vec<usize>, raw: &str| match b
            .convert
            .read(constant.unwrap_or(raw))
        {
            Ok(v) => {
                set_canonical(canonical, path, &idx, v);
                if let Some(origins) = origins.as_deref_mut() {
                    origins.insert(canonical_pointer(path, &idx), place.clone());
                }
            }
            Err(why) => problems.push(problem(place, Some(canonical_pointer(path, &idx)), why)),
        };
        if b.splits_into_array {
            for (k, part) in parts.iter().enumerate() {
                let mut idx = indices.to_vec();
                idx.push(k);
                assign(&b.canonical[0], idx, part);
            }
        } else if b.canonical.len() > 1 {
            for (path, part) in b.canonical.iter().zip(parts.iter()) {
                assign(path, indices.to_vec(), part);
            }
        } else {
            assign(&b.canonical[0], indices.to_vec(), text);
        }
    }

    /// Builds the document tree for a canonical value; problems are refusals, flags are
    /// notes that did not stop the output.
    pub fn encode_tree(&self, canonical: &Value) -> Result<(Node, Vec<Located>), Vec<Located>> {
        let mut root = Node::new(self.output_root.clone());
        let mut problems = Vec::new();
        let mut flags = Vec::new();
        // `in_each` values, written into each instance once the bindings made them.
        let mut each: Vec<(&[DocSeg], String, Scalar)> = Vec::new();
        for step in &self.steps {
            match step {
                // Written once the bindings have made the elements they go into.
                Step::Fixed { .. } | Step::Sequence { .. } | Step::Aggregate { .. } => {}
                Step::Bind(b) if b.fallback => {}
                Step::Bind(b) => {
                    let mut values: Vec<(Vec<usize>, String, Scalar)> = Vec::new();
                    let mut by_target: Vec<Vec<(Vec<usize>, &Value)>> = Vec::new();
                    for path in &b.canonical {
                        let mut out = Vec::new();
                        get_canonical(canonical, path, &mut Vec::new(), &mut out);
                        by_target.push(out);
                    }
                    let convert = |idx: &[usize],
                                   v: &Value,
                                   problems: &mut Vec<Located>|
                     -> Option<(String, Scalar)> {
                        match b.convert.write(v) {
                            Ok(t) => Some(t),
                            Err(why) => {
                                problems.push(Located {
                                    pointer: None,
                                    path: Some(b.doc_text.clone()),
                                    line: None,
                                    column: None,
                                    canonical: Some(canonical_pointer(&b.canonical[0], idx)),
                                    code: None,
                                    detail: why,
                                });
                                None
                            }
                        }
                    };
                    if b.in_each {
                        // One value, written into each instance below.
                        if let Some((idx, v)) = by_target[0].first()
                            && let Some((text, scalar)) = convert(idx, v, &mut problems)
                        {
                            values.push((idx.clone(), text, scalar));
                        }
                    } else if b.splits_into_array {
                        // Join the last repetition into one field.
                        let mut groups: BTreeMap<Vec<usize>, Vec<String>> = BTreeMap::new();
                        for (idx, v) in &by_target[0] {
                            if let Some((t, _)) = convert(idx, v, &mut problems) {
                                groups
                                    .entry(idx[..b.doc_reps.min(idx.len())].to_vec())
                                    .or_default()
                                    .push(t);
                            }
                        }
                        let sep = b.split.clone().unwrap_or_default();
                        for (idx, parts) in groups {
                            values.push((idx, parts.join(&sep), Scalar::Text));
                        }
                    } else if b.composite {
                        // One code-list key from several fields: text as it is, a true
                        // boolean by its field's name; absent or false fields left out.
                        let mut groups: BTreeMap<Vec<usize>, Vec<String>> = BTreeMap::new();
                        for (path, target) in b.canonical.iter().zip(&by_target) {
                            for (idx, v) in target {
                                let part = match v {
                                    Value::Bool(true) => path.last().map(|s| s.key.clone()),
                                    Value::Bool(false) | Value::Null => None,
                                    Value::String(t) => Some(t.clone()),
                                    other => Some(other.to_string()),
                                };
                                if let Some(part) = part {
                                    groups.entry(idx.clone()).or_default().push(part);
                                }
                            }
                        }
                        for (idx, parts) in groups {
                            if let Some((t, s)) =
                                convert(&idx, &Value::String(parts.join("+")), &mut problems)
                            {
                                values.push((idx, t, s));
                            }
                        }
                    } else if b.canonical.len() > 1 {
                        let mut groups: BTreeMap<Vec<usize>, Vec<Option<String>>> = BTreeMap::new();
                        for (t, target) in by_target.iter().enumerate() {
                            for (idx, v) in target {
                                if let Some((text, _)) = convert(idx, v, &mut problems) {
                                    let slot = groups
                                        .entry(idx.clone())
                                        .or_insert_with(|| vec![None; b.canonical.len()]);
                                    slot[t] = Some(text);
                                }
                            }
                        }
                        let sep = b.split.clone().unwrap_or_default();
                        for (idx, parts) in groups {
                            let joined: Vec<String> = parts.into_iter().flatten().collect();
                            values.push((idx, joined.join(&sep), Scalar::Text));
                        }
                    } else if b.only_first {
                        for (idx, v) in &by_target[0] {
                            let (outer, extra) = idx.split_at(b.doc_reps.min(idx.len()));
                            let beyond: usize = extra.iter().sum();
                            if beyond > 0 {
                                if beyond == 1 {
                                    flags.push(Located {
                                        pointer: None,
                                        path: Some(b.doc_text.clone()),
                                        line: None,
                                        column: None,
                                        canonical: Some(canonical_pointer(&b.canonical[0], idx)),
                                        code: None,
                                        detail: "the document carries only the first; this one and any after it are left out".into(),
                                    });
                                }
                                continue;
                            }
                            if let Some((t, s)) = convert(idx, v, &mut problems) {
                                values.push((outer.to_vec(), t, s));
                            }
                        }
                    } else {
                        for (idx, v) in &by_target[0] {
                            if let Some((t, s)) = convert(idx, v, &mut problems) {
                                values.push((idx.clone(), t, s));
                            }
                        }
                    }
                    let has_repeat = b.doc.iter().any(|s| s.repeated);
                    if values.is_empty() && !has_repeat {
                        match &b.default {
                            Some(d) => values.push((Vec::new(), d.clone(), Scalar::Text)),
                            None if b.required => problems.push(Located {
                                pointer: None,
                                path: Some(b.doc_text.clone()),
                                line: None,
                                column: None,
                                canonical: Some(canonical_pointer(&b.canonical[0], &[])),
                                code: None,
                                detail: format!(
                                    "the document requires it, and {} is absent",
                                    b.canonical_text
                                ),
                            }),
                            None => {}
                        }
                    }
                    for (idx, text, scalar) in values {
                        if let Some(max) = b.max_length
                            && text.chars().count() > max
                        {
                            let located = Located {
                                pointer: None,
                                path: Some(b.doc_text.clone()),
                                line: None,
                                column: None,
                                canonical: Some(canonical_pointer(&b.canonical[0], &idx)),
                                code: None,
                                detail: format!(
                                    "{text:?} is {} characters; the field takes at most {max}",
                                    text.chars().count()
                                ),
                            };
                            match b.on_too_long {
                                TooLong::Refuse => {
                                    problems.push(located);
                                    continue;
                                }
                                TooLong::Flag => flags.push(located),
                            }
                        }
                        if b.in_each {
                            each.push((&b.doc, text, scalar));
                            continue;
                        }
                        let append = b.output_only.then(|| b.split.as_deref().unwrap_or(""));
                        set_value(&mut root, &b.doc, &idx, text, scalar, append);
                    }
                }
            }
        }
        for (doc, text, scalar) in each {
            set_fixed(&mut root, doc, &text, true, scalar);
        }
        for step in &self.steps {
            match step {
                Step::Fixed {
                    doc,
                    value,
                    with_parent,
                    scalar,
                } => set_fixed(&mut root, doc, value, *with_parent, *scalar),
                Step::Sequence { doc } => set_sequence(&mut root, doc),
                Step::Aggregate {
                    doc,
                    canonical: path,
                    sum,
                } => {
                    let mut values = Vec::new();
                    get_canonical(canonical, path, &mut Vec::new(), &mut values);
                    let text = if *sum {
                        if values.is_empty() {
                            continue;
                        }
                        let total: f64 = values.iter().filter_map(|(_, v)| v.as_f64()).sum();
                        // As many decimals as the most precise value: whole counts stay
                        // whole, and 1.1 + 2.2 is 3.3, not 3.3000000000000003.
                        let decimals = values
                            .iter()
                            .map(|(_, v)| {
                                let t = v.to_string();
                                t.split_once('.').map_or(0, |(_, f)| f.len())
                            })
                            .max()
                            .unwrap_or(0)
                            .min(9);
                        format!("{total:.decimals$}")
                    } else {
                        values.len().to_string()
                    };
                    set_value(&mut root, doc, &[], text, Scalar::Number, None);
                }
                Step::Bind(_) => {}
            }
        }
        sort_children(&mut root, &mut Vec::new(), &self.order);
        if problems.is_empty() {
            Ok((root, flags))
        } else {
            Err(problems)
        }
    }
}

/// Puts every element's children in the mapping's order (stable: repeated instances keep
/// theirs; elements the mapping does not name go last).
fn sort_children(node: &mut Node, path: &mut Vec<String>, order: &BTreeMap<Vec<String>, usize>) {
    let rank = |path: &mut Vec<String>, name: &str| {
        path.push(name.to_owned());
        let r = order.get(path.as_slice()).copied().unwrap_or(usize::MAX);
        path.pop();
        r
    };
    let mut ranked: Vec<(usize, Node)> = std::mem::take(&mut node.children)
        .into_iter()
        .map(|c| (rank(path, &c.name), c))
        .collect();
    ranked.sort_by_key(|(r, _)| *r);
    node.children = ranked.into_iter().map(|(_, c)| c).collect();
    for child in &mut node.children {
        path.push(child.name.clone());
        sort_children(child, path, order);
        path.pop();
    }
}

/// Sets an attribute, replacing any of the same name.
fn set_attr(node: &mut Node, name: &str, value: String) {
    node.attrs.retain(|a| a.name != name);
    node.attrs.push(Attr {
        name: name.to_owned(),
        value,
        visited: Default::default(),
    });
}

/// Writes the 1-based position of each instance of the path's last repeated group into
/// its element (`TransportEquipment[]/SequenceNumeric`), where the instance exists.
fn set_sequence(root: &mut Node, doc: &[DocSeg]) {
    let last_repeat = doc.iter().rposition(|s| s.repeated).unwrap_or(0);
    fn walk(node: &mut Node, doc: &[DocSeg], at: usize, last_repeat: usize, number: usize) {
        let Some((seg, rest)) = doc.split_first() else {
            node.text = Some(number.to_string());
            node.scalar = Some(Scalar::Number);
            return;
        };
        if seg.attribute {
            set_attr(node, &seg.name, number.to_string());
            return;
        }
        if at < last_repeat {
            // Above the numbered group: every instance there is, none created.
            for child in node.children.iter_mut().filter(|c| c.name == seg.name) {
                walk(child, rest, at + 1, last_repeat, number);
            }
        } else if at == last_repeat {
            for (k, child) in node
                .children
                .iter_mut()
                .filter(|c| c.name == seg.name)
                .enumerate()
            {
                walk(child, rest, at + 1, last_repeat, k + 1);
            }
        } else {
            walk(child_named(node, seg), rest, at + 1, last_repeat, number);
        }
    }
    walk(root, doc, 0, last_repeat, 0);
}

/// The first child of a non-repeated segment, made if missing; a one-item array stays an
/// array however it was first made.
fn child_named<'n>(node: &'n mut Node, seg: &DocSeg) -> &'n mut Node {
    let position = match node.children.iter().position(|c| c.name == seg.name) {
        Some(p) => p,
        None => {
            node.children.push(Node::new(seg.name.clone()));
            node.children.len() - 1
        }
    };
    let child = &mut node.children[position];
    child.repeated |= seg.single;
    child
}

/// Writes text at a document path, creating the elements (the `k`-th of a repeated one).
fn set_value(
    root: &mut Node,
    doc: &[DocSeg],
    indices: &[usize],
    text: String,
    scalar: Scalar,
    append: Option<&str>,
) {
    let mut node = root;
    let mut idx = indices.iter();
    for seg in doc {
        if seg.attribute {
            match node.attrs.iter_mut().find(|a| a.name == seg.name) {
                Some(a) => a.value = text,
                None => node.attrs.push(Attr {
                    name: seg.name.clone(),
                    value: text,
                    visited: Default::default(),
                }),
            }
            return;
        }
        let want = if seg.repeated {
            idx.next().copied().unwrap_or(0)
        } else {
            0
        };
        let existing: Vec<usize> = node
            .children
            .iter()
            .enumerate()
            .filter(|(_, c)| c.name == seg.name)
            .map(|(i, _)| i)
            .collect();
        let position = if want < existing.len() {
            existing[want]
        } else {
            let insert_at = existing.last().map_or(node.children.len(), |p| p + 1);
            let mut pos = insert_at;
            for _ in existing.len()..=want {
                let mut child = Node::new(seg.name.clone());
                child.repeated = seg.repeated || seg.single;
                node.children.insert(pos, child);
                pos += 1;
            }
            pos - 1
        };
        node = &mut node.children[position];
        node.repeated |= seg.single;
    }
    node.text = match (node.text.take(), append) {
        (Some(before), Some(sep)) if !before.is_empty() => Some(format!("{before}{sep}{text}")),
        _ => Some(text),
    };
    node.scalar = Some(scalar);
}

/// A fixed value: at a plain path, written once; under a repeated group, into each
/// instance that exists.
fn set_fixed(root: &mut Node, doc: &[DocSeg], value: &str, with_parent: bool, scalar: Scalar) {
    fn walk(node: &mut Node, doc: &[DocSeg], value: &str, with_parent: bool, scalar: Scalar) {
        let Some((seg, rest)) = doc.split_first() else {
            node.text = Some(value.to_owned());
            node.scalar = Some(scalar);
            return;
        };
        if seg.attribute {
            set_attr(node, &seg.name, value.to_owned());
            return;
        }
        if seg.repeated {
            for child in node.children.iter_mut().filter(|c| c.name == seg.name) {
                walk(child, rest, value, with_parent, scalar);
            }
        } else {
            // A `with_parent` value only goes into elements that are already there.
            if with_parent && !rest.is_empty() && !node.children.iter().any(|c| c.name == seg.name)
            {
                return;
            }
            walk(child_named(node, seg), rest, value, with_parent, scalar);
        }
    }
    walk(root, doc, value, with_parent, scalar);
}

/// Document leaves no binding read: reported as `unmapped`, never silently dropped.
pub fn unmapped(root: &Node, syntax: Syntax, limit: usize) -> Vec<String> {
    fn all_read(node: &Node) -> bool {
        let leaf_read = !node.children.is_empty() || node.text.is_none() || node.visited.get();
        leaf_read
            && node.attrs.iter().all(|a| {
                a.visited.get()
                    || a.name
                        .starts_with("{http://www.w3.org/2001/XMLSchema-instance}")
            })
            && node.children.iter().all(all_read)
    }
    fn walk(node: &Node, syntax: Syntax, at: &str, out: &mut Vec<String>, limit: usize) {
        if out.len() >= limit || all_read(node) {
            return;
        }
        for a in &node.attrs {
            let ignorable = a
                .name
                .starts_with("{http://www.w3.org/2001/XMLSchema-instance}");
            if !a.visited.get() && !ignorable {
                out.push(step_display(syntax, at, &a.name, None, true));
            }
        }
        if node.children.is_empty() {
            if node.text.is_some() && !node.visited.get() {
                out.push(if at.is_empty() {
                    "/".into()
                } else {
                    at.to_owned()
                });
            }
            return;
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for child in &node.children {
            let many = node
                .children
                .iter()
                .filter(|c| c.name == child.name)
                .count()
                > 1
                || child.repeated;
            let k = counts.entry(&child.name).or_default();
            let here = step_display(syntax, at, &child.name, many.then_some(*k), false);
            *k += 1;
            walk(child, syntax, &here, out, limit);
        }
    }
    let mut out = Vec::new();
    let root_display = match syntax {
        Syntax::Xml => step_display(syntax, "", &root.name, None, false),
        _ => String::new(),
    };
    walk(root, syntax, &root_display, &mut out, limit);
    out
}
