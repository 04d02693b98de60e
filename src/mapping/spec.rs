//! The mapping file format (TOML), as written by integrators. `mappings/README.md`
//! documents it with examples; `compile` turns it into a plan.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    pub format: FormatSpec,
    #[serde(default)]
    pub detect: DetectSpec,
    #[serde(default)]
    pub xml: XmlSpec,
    #[serde(default)]
    pub flat: Option<FlatSpec>,
    #[serde(default)]
    pub json: JsonSpec,
    /// Bindings and fixed values, in the order of the partner's document.
    #[serde(default)]
    pub map: Vec<Spanned<MapEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatSpec {
    /// The public format id, e.g. `wco-dm`.
    pub id: String,
    pub version: String,
    pub syntax: Syntax,
    /// The canonical message this file maps: `declaration`, `seal_events`, `trip_status`.
    pub message: MessageKind,
    #[serde(default)]
    pub description: String,
    /// `in`, `out` or both (default).
    #[serde(default = "both")]
    pub directions: Vec<Direction>,
}

fn both() -> Vec<Direction> {
    vec![Direction::In, Direction::Out]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Syntax {
    Xml,
    Json,
    Flat,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Declaration,
    SealEvents,
    /// Seals tied to declared trips' containers (read only).
    SealAssignment,
    TripStatus,
    /// What the gateway tells a partner: a state change, an alert, a release or a
    /// custody handover (written only).
    StatusNotification,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Declaration => "declaration",
            MessageKind::SealEvents => "seal_events",
            MessageKind::SealAssignment => "seal_assignment",
            MessageKind::TripStatus => "trip_status",
            MessageKind::StatusNotification => "status_notification",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

/// How to recognise a document of this mapping.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectSpec {
    /// XML: the root element's local name...
    pub root: Option<String>,
    /// ...and its namespace (none if absent).
    pub namespace: Option<String>,
    /// JSON: top-level keys that must all be present.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Flat: the text the document starts with...
    pub starts_with: Option<String>,
    /// ...and a text it holds (a segment tag that tells two messages apart).
    pub contains: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmlSpec {
    /// Prefixes used in this file's paths, and written on output.
    #[serde(default)]
    pub namespaces: BTreeMap<String, String>,
    /// The namespace of unprefixed path segments (and the output's default namespace).
    pub default_namespace: Option<String>,
    /// Output root element, e.g. `t:TransitDeclaration` (default: `detect.root`).
    pub root: Option<String>,
}

/// JSON documents: the partner's own schema, and parts kept but not mapped.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonSpec {
    /// The partner's JSON Schema (a file next to the mapping, or relative to the mappings
    /// directory): every document read is checked against it before mapping, and every
    /// document written after.
    pub schema: Option<String>,
    /// The code put on each schema problem, as the partner's own replies do (`ERR100`).
    pub schema_error_code: Option<String>,
    /// Top-level keys kept with the raw message but not mapped (a signature block): never
    /// reported as unmapped, never written from canonical data.
    #[serde(default)]
    pub carry: Vec<String>,
    /// The top-level key where a signer puts its signature on output (`digSign`). Without
    /// a configured signer it is written with empty values and the answer says so.
    pub signature: Option<String>,
    /// The fields of the signature block, written empty when nothing signs.
    #[serde(default)]
    pub signature_fields: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlatSpec {
    /// Between fields: one byte, e.g. 29 (0x1D, ICES) or 124 (`|`).
    pub field_separator: u8,
    /// The field that holds each record's tag (1-based; default 1).
    #[serde(default = "one")]
    pub tag_field: usize,
    /// Header and trailer record tags, and which of their fields carry the control
    /// number that must match.
    pub header: Option<String>,
    pub trailer: Option<String>,
    pub header_control_field: Option<usize>,
    pub trailer_control_field: Option<usize>,
    /// A record whose tag starts with this names the segment (table) of the records that
    /// follow, e.g. `<TABLE>`.
    pub segment_prefix: Option<String>,
    /// How many fields each record of a tag or segment has (`CONTAINER = 12`): a record
    /// with another count is refused (a delimiter missing or extra), and written records
    /// are padded with empty fields to it.
    #[serde(default)]
    pub fields: BTreeMap<String, usize>,
    /// Records separate by LF; CRLF is accepted on input. Output uses this (`\n` or `\r\n`).
    #[serde(default = "lf")]
    pub record_separator: String,
}

fn one() -> usize {
    1
}

fn lf() -> String {
    "\n".into()
}

/// One `[[map]]` entry: a binding (`canonical` with `path`) or a fixed output value
/// (`path` with `value`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapEntry {
    /// Canonical field (`equipment[].seals[].id`), or several fields one document field
    /// splits into (`["vehicle.plate", "vehicle.trailer_plate"]` with `split`).
    pub canonical: Option<OneOrMany>,
    /// Document path: XML `t:Containers/t:Container[]/t:Number` or `.../@attr`, JSON
    /// `master/items[]/id` (`items[1]`: an array that holds exactly one item), flat
    /// `CONTAINER[]/3`.
    pub path: String,
    /// For a fixed entry: the text written on output.
    pub value: Option<String>,
    #[serde(default)]
    pub required: bool,
    /// Used when the field is absent (on input, and on output when the canonical is).
    pub default: Option<String>,
    /// `string` (default), `integer`, `number`, `boolean`, `datetime`, `date`.
    #[serde(rename = "type")]
    pub kind: Option<ValueKind>,
    /// chrono pattern for `datetime`/`date`, e.g. `%Y%m%d%H%M`.
    pub pattern: Option<String>,
    /// The document's UTC offset for times without one, e.g. `+05:30`.
    pub offset: Option<String>,
    /// `number`: document value × scale = canonical value (e.g. 0.001 for grams to kg).
    pub scale: Option<f64>,
    /// `number` on output: decimal places.
    pub decimals: Option<usize>,
    /// A code list of `mappings/codes/` (canonical code ↔ partner code).
    pub codes: Option<String>,
    /// Separator for split (input) and join (output).
    pub split: Option<String>,
    /// Longest text the document field takes (checked on output).
    pub max_length: Option<usize>,
    /// What to do with a longer text: `refuse` (default) or `flag`. Never truncated.
    pub on_too_long: Option<TooLong>,
    /// An alternative source, read only when the canonical field is still absent; never
    /// written (e.g. a country taken from an office code's first two letters).
    #[serde(default)]
    pub fallback: bool,
    /// On input, keep only the first N characters (with `fallback`).
    pub first_chars: Option<usize>,
    /// The canonical field repeats but the document has one field: it carries the first
    /// item (more items are flagged on output).
    #[serde(default)]
    pub only_first: bool,
    /// The 1-based position of a repeated group (`TransportEquipment[]/SequenceNumeric`),
    /// written on output and known on input. No `canonical`, no `value`.
    #[serde(default)]
    pub sequence: bool,
    /// A fixed value written only where its parent element exists (made by a binding).
    #[serde(default)]
    pub with_parent: bool,
    /// Written, never read: with `split`, every value under the document's repetition is
    /// joined into one field, appended to what another `output_only` binding wrote there
    /// (all the seals of all containers into one SAD field).
    #[serde(default)]
    pub output_only: bool,
    /// A fallback read only where another document field has a given text:
    /// `when = { path = "Eqmt[]/SealType", equals = "ESEAL" }`.
    pub when: Option<When>,
    /// Read only: the text of another document field is appended (after `with`, default a
    /// space) before conversion: a date and a time kept in two fields,
    /// `join = { path = "sealingTime" }` with `pattern = "%Y-%m-%d %H:%M"`.
    pub join: Option<Join>,
    /// The document repeats this field in every instance of a group (each container
    /// record names the truck); the canonical field is one: written into each instance,
    /// read from the first (instances that say otherwise are noted, not kept).
    #[serde(default)]
    pub in_each: bool,
    /// Written only: how many values a canonical path has (`equipment[].id`).
    pub count: Option<String>,
    /// Written only: the sum of a canonical path's numbers (`goods[].packages`).
    pub total: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    pub path: String,
    #[serde(default = "space")]
    pub with: String,
}

fn space() -> String {
    " ".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    pub path: String,
    pub equals: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    String,
    Integer,
    Number,
    Boolean,
    Datetime,
    Date,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TooLong {
    Refuse,
    Flag,
}

/// A code list file in `mappings/codes/`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeListFile {
    #[serde(default)]
    pub description: String,
    /// canonical code = partner code.
    pub codes: BTreeMap<String, String>,
    /// Partner codes read on input beyond the reverse of `codes` (several partner codes
    /// for one canonical code).
    #[serde(default)]
    pub input: BTreeMap<String, String>,
}
