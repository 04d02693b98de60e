//! The office registry: one list of customs offices for the whole gateway. The canonical
//! format and every mapping's `codes = "offices"` check ask it, so that a declaration valid
//! in one format is valid in all. Entries come from the shipped reference data
//! (`mappings/offices/*.csv`, built into the binary) and from customs over HTTP and the CLI
//! (stored in the database). What an unknown office gets is the installation's policy.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{NaiveDate, Utc};
use ects_core::geo::{Zone, ZoneKind};
use ects_core::{CountryCode, OfficeCode, SealAssignment, TransitDeclaration, ZoneId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::problem::{DocumentError, Located};

/// What an office code that is not in the registry gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OfficePolicy {
    /// Refused, with its pointer or document path and line.
    Strict,
    /// Accepted with a note when it is shaped like a UN/LOCODE (a country of ISO 3166 and
    /// three letters or digits 2-9); refused otherwise.
    #[default]
    #[value(name = "known_or_locode")]
    KnownOrLocode,
}

/// What an office does on a transit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfficeRole {
    Departure,
    Transit,
    Destination,
    BorderPost,
}

impl OfficeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OfficeRole::Departure => "departure",
            OfficeRole::Transit => "transit",
            OfficeRole::Destination => "destination",
            OfficeRole::BorderPost => "border_post",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "departure" => Some(OfficeRole::Departure),
            "transit" => Some(OfficeRole::Transit),
            "destination" => Some(OfficeRole::Destination),
            "border_post" => Some(OfficeRole::BorderPost),
            _ => None,
        }
    }
}

/// How the shipped files mark a code of this project (`source` starts with it).
pub const PROJECT_SOURCE: &str = "code of this project";

/// Longest office name kept.
pub const MAX_NAME_CHARS: usize = 120;
/// Longest source note kept.
pub const MAX_SOURCE_CHARS: usize = 200;
/// Most offices in one import.
pub const MAX_IMPORT_OFFICES: usize = 20_000;
/// Most offices with a location in one import: each location is a zone, which every fix
/// is tested against (the gateway holds at most `store::geo::MAX_ZONES` zones in all).
pub const MAX_IMPORT_LOCATED: usize = 1_000;
/// Validity dates accepted.
const EARLIEST_YEAR: i32 = 1950;
const LATEST_YEAR: i32 = 2100;

/// One customs office.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Office {
    #[schema(value_type = String, example = "GTPRQ")]
    pub code: OfficeCode,
    pub name: String,
    #[schema(value_type = String, example = "GT")]
    pub country: CountryCode,
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<OfficeRole>,
    /// A GeoJSON Point with `radius_m` beside `coordinates`, or a Polygon: the office's
    /// zone (registered as zone `office:<code>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub location: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<NaiveDate>,
    /// Whether the code is a UN/LOCODE (`false`: a national office number or another
    /// code, said in `source`).
    pub locode: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Country codes of ISO 3166-1 alpha-2 (officially assigned).
const ISO_3166: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL \
BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK \
DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU \
GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ \
LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY \
MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU \
RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO \
TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// Whether `code` is an ISO 3166-1 alpha-2 country code.
pub fn is_iso_country(code: &str) -> bool {
    code.len() == 2 && ISO_3166.split_ascii_whitespace().any(|c| c == code)
}

/// Whether a code has the shape of a UN/LOCODE: an ISO 3166 country and three letters or
/// digits 2-9 (UNECE Recommendation 16).
pub fn is_locode_shaped(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 5
        && is_iso_country(&code[..2])
        && b[2..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || (b'2'..=b'9').contains(c))
}

fn problem(pointer: &str, detail: impl Into<String>) -> Located {
    Located::pointer(pointer, detail)
}

fn date_in_range(d: NaiveDate) -> bool {
    use chrono::Datelike;
    (EARLIEST_YEAR..=LATEST_YEAR).contains(&d.year())
}

impl Office {
    /// Reads one office of the JSON shape (`PUT /v1/offices/{code}`, imports); every
    /// problem with its pointer under `base`.
    pub fn from_json(value: &Value, base: &str) -> Result<Self, Vec<Located>> {
        let mut problems = Vec::new();
        let Some(map) = value.as_object() else {
            return Err(vec![problem(base, "an office is a JSON object")]);
        };
        const KNOWN: [&str; 9] = [
            "code",
            "name",
            "country",
            "roles",
            "location",
            "valid_from",
            "valid_until",
            "locode",
            "source",
        ];
        for key in map.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
            problems.push(problem(
                &format!("{base}/{key}"),
                format!("unknown field; an office has {}", KNOWN.join(", ")),
            ));
        }
        let text = |key: &str, problems: &mut Vec<Located>| -> Option<String> {
            match map.get(key) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    problems.push(problem(&format!("{base}/{key}"), "must be a string"));
                    None
                }
            }
        };
        let code = text("code", &mut problems);
        let name = text("name", &mut problems);
        let country = text("country", &mut problems);
        let valid_from = text("valid_from", &mut problems);
        let valid_until = text("valid_until", &mut problems);
        let source = text("source", &mut problems);
        let roles: Vec<String> = match map.get("roles") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(_) => {
                problems.push(problem(
                    &format!("{base}/roles"),
                    "must be an array of role names",
                ));
                Vec::new()
            }
        };
        let locode = match map.get("locode") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                problems.push(problem(&format!("{base}/locode"), "must be true or false"));
                None
            }
        };
        let fields = Fields {
            code,
            name,
            country,
            roles,
            location: map.get("location").filter(|v| !v.is_null()).cloned(),
            valid_from,
            valid_until,
            locode,
            source,
        };
        let office = fields.check(base, &mut problems, |field| format!("{base}/{field}"));
        match office {
            Some(o) if problems.is_empty() => Ok(o),
            _ => Err(problems),
        }
    }

    /// The zone this office's location makes, when it has one.
    pub fn zone(&self) -> Option<Result<(Zone, Value), ects_core::geo::GeoError>> {
        let location = self.location.as_ref()?;
        Some(office_zone(&self.code, &self.roles, location))
    }

    /// Whether this is one of the shipped codes of this project (README walk-through,
    /// fixtures, land border posts without a UN/LOCODE): not a UN/LOCODE, and its
    /// `source` says so. Under `strict` such an entry, as shipped, is not a registered
    /// office.
    pub fn is_project_code(&self) -> bool {
        !self.locode
            && self
                .source
                .as_deref()
                .is_some_and(|s| s.starts_with(PROJECT_SOURCE))
    }

    /// The id of the zone its location makes.
    pub fn zone_id(code: &OfficeCode) -> String {
        format!("office:{code}")
    }
}

/// The Feature an office location stands for: the geometry, and the radius beside it.
fn office_zone(
    code: &OfficeCode,
    roles: &[OfficeRole],
    location: &Value,
) -> Result<(Zone, Value), ects_core::geo::GeoError> {
    let relocate = |e: ects_core::geo::GeoError| ects_core::geo::GeoError {
        pointer: match e.pointer.as_str() {
            "/properties/radius_m" => "/location/radius_m".into(),
            p => p.replacen("/geometry", "/location", 1),
        },
        reason: e.reason,
    };
    let mut geometry = location.clone();
    let radius = geometry.as_object_mut().and_then(|m| m.remove("radius_m"));
    let kind = if roles.contains(&OfficeRole::BorderPost) {
        ZoneKind::BorderPost
    } else {
        ZoneKind::CustomsOffice
    };
    let mut properties = json!({"kind": kind, "office_code": code.as_str()});
    if let Some(r) = radius {
        properties["radius_m"] = r;
    }
    let feature = json!({"type": "Feature", "geometry": geometry, "properties": properties});
    let id = ZoneId::parse(Office::zone_id(code)).map_err(|e| ects_core::geo::GeoError {
        pointer: "/code".into(),
        reason: e.to_string(),
    })?;
    let zone = Zone::from_geojson(id, &feature).map_err(relocate)?;
    Ok((zone, feature))
}

/// The fields of an office as read from JSON or CSV, before checking.
struct Fields {
    code: Option<String>,
    name: Option<String>,
    country: Option<String>,
    roles: Vec<String>,
    location: Option<Value>,
    valid_from: Option<String>,
    valid_until: Option<String>,
    locode: Option<bool>,
    source: Option<String>,
}

impl Fields {
    /// Every field checked; `at(field)` says where a field is (a pointer, or a CSV line
    /// and column name).
    fn check(
        self,
        base: &str,
        problems: &mut Vec<Located>,
        at: impl Fn(&str) -> String,
    ) -> Option<Office> {
        let start = problems.len();
        let code = match self.code.as_deref().map(OfficeCode::parse) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                problems.push(problem(&at("code"), e.to_string()));
                None
            }
            None => {
                problems.push(problem(&at("code"), "is missing"));
                None
            }
        };
        let name = match self.name.map(|n| n.trim().to_owned()) {
            Some(n) if n.is_empty() => {
                problems.push(problem(&at("name"), "is empty"));
                None
            }
            Some(n) if n.chars().count() > MAX_NAME_CHARS => {
                problems.push(problem(
                    &at("name"),
                    format!("longer than {MAX_NAME_CHARS} characters"),
                ));
                None
            }
            Some(n) if n.chars().any(char::is_control) => {
                problems.push(problem(&at("name"), "holds a control character"));
                None
            }
            Some(n) => Some(n),
            None => {
                problems.push(problem(&at("name"), "is missing"));
                None
            }
        };
        let country = match self.country.as_deref() {
            Some(c) if is_iso_country(c) => CountryCode::parse(c).ok(),
            Some(c) => {
                problems.push(problem(
                    &at("country"),
                    format!("{c:?} is not an ISO 3166-1 alpha-2 country code"),
                ));
                None
            }
            None => {
                problems.push(problem(&at("country"), "is missing"));
                None
            }
        };
        let mut roles = Vec::new();
        for (i, r) in self.roles.iter().enumerate() {
            match OfficeRole::parse(r) {
                Some(role) if !roles.contains(&role) => roles.push(role),
                Some(_) => {}
                None => problems.push(problem(
                    &format!("{}/{i}", at("roles")),
                    format!(
                        "{r:?} is not a role; roles are departure, transit, destination, border_post"
                    ),
                )),
            }
        }
        roles.sort();
        let date = |field: &str, text: Option<String>, problems: &mut Vec<Located>| match text {
            None => None,
            Some(t) => match NaiveDate::parse_from_str(&t, "%Y-%m-%d") {
                Ok(d) if date_in_range(d) => Some(d),
                Ok(_) => {
                    problems.push(problem(
                        &at(field),
                        format!("{t} is outside the years {EARLIEST_YEAR} to {LATEST_YEAR}"),
                    ));
                    None
                }
                Err(_) => {
                    problems.push(problem(
                        &at(field),
                        format!("{t:?} is not a date YYYY-MM-DD"),
                    ));
                    None
                }
            },
        };
        let valid_from = date("valid_from", self.valid_from, problems);
        let valid_until = date("valid_until", self.valid_until, problems);
        if let (Some(a), Some(b)) = (valid_from, valid_until)
            && b < a
        {
            problems.push(problem(&at("valid_until"), "is before valid_from"));
        }
        let source = match self.source {
            Some(s) if s.chars().count() > MAX_SOURCE_CHARS => {
                problems.push(problem(
                    &at("source"),
                    format!("longer than {MAX_SOURCE_CHARS} characters"),
                ));
                None
            }
            s => s.filter(|s| !s.trim().is_empty()),
        };
        if let (Some(code), Some(location)) = (&code, &self.location)
            && let Err(e) = office_zone(code, &roles, location)
        {
            let pointer = if base.is_empty() {
                e.pointer.clone()
            } else {
                format!("{base}{}", e.pointer)
            };
            problems.push(problem(&pointer, e.reason));
        }
        if problems.len() > start {
            return None;
        }
        let code = code?;
        let locode = self
            .locode
            .unwrap_or_else(|| is_locode_shaped(code.as_str()));
        Some(Office {
            code,
            name: name?,
            country: country?,
            roles,
            location: self.location,
            valid_from,
            valid_until,
            locode,
            source,
        })
    }
}

/// The CSV columns, in order (a header line names them; `lon`/`lat`/`radius_m` make a
/// point location; roles are separated by `|`).
pub const CSV_COLUMNS: [&str; 11] = [
    "code",
    "name",
    "country",
    "roles",
    "lon",
    "lat",
    "radius_m",
    "valid_from",
    "valid_until",
    "locode",
    "source",
];

/// Splits one CSV line (RFC 4180 quoting, no line breaks inside fields).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if at_start => {
                quoted = true;
                at_start = false;
            }
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => {
                quoted = false;
                if !matches!(chars.peek(), None | Some(',')) {
                    return Err("a quoted field must end at a comma".into());
                }
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
            }
            (_, c) => {
                field.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    fields.push(field);
    Ok(fields)
}

/// Reads offices from CSV (the header line first; `#` lines are comments). Problems name
/// the line and column.
pub fn parse_csv(text: &str) -> Result<Vec<Office>, Vec<Located>> {
    let mut problems: Vec<Located> = Vec::new();
    let mut offices = Vec::new();
    let mut header: Option<Vec<String>> = None;
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if problems.len() >= 50 {
            break;
        }
        let at_line = |detail: String| Located {
            pointer: None,
            path: Some(format!("line {line_no}")),
            line: Some(line_no),
            column: Some(1),
            ..Located::pointer("", detail)
        };
        let fields = match csv_fields(line) {
            Ok(f) => f,
            Err(e) => {
                problems.push(at_line(e));
                continue;
            }
        };
        let Some(columns) = &header else {
            let unknown: Vec<&String> = fields
                .iter()
                .filter(|f| !CSV_COLUMNS.contains(&f.as_str()))
                .collect();
            if !unknown.is_empty() || !fields.iter().any(|f| f == "code") {
                problems.push(at_line(format!(
                    "the header line names the columns, of {}",
                    CSV_COLUMNS.join(",")
                )));
                return Err(problems);
            }
            header = Some(fields);
            continue;
        };
        if fields.len() != columns.len() {
            problems.push(at_line(format!(
                "{} fields; the header has {}",
                fields.len(),
                columns.len()
            )));
            continue;
        }
        if offices.len() >= MAX_IMPORT_OFFICES {
            problems.push(at_line(format!(
                "more than {MAX_IMPORT_OFFICES} offices in one file"
            )));
            break;
        }
        let get = |name: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .and_then(|i| fields.get(i))
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let mut local = Vec::new();
        let number = |name: &str, local: &mut Vec<Located>| {
            get(name).and_then(|t| match t.parse::<f64>() {
                Ok(x) if x.is_finite() => Some(x),
                _ => {
                    local.push(problem("", format!("{name}: {t:?} is not a number")));
                    None
                }
            })
        };
        let (lon, lat, radius) = (
            number("lon", &mut local),
            number("lat", &mut local),
            number("radius_m", &mut local),
        );
        let location = match (lon, lat) {
            (Some(lon), Some(lat)) => {
                let mut l = json!({"type": "Point", "coordinates": [lon, lat]});
                if let Some(r) = radius {
                    l["radius_m"] = json!(r);
                }
                Some(l)
            }
            (None, None) if radius.is_none() => None,
            _ => {
                local.push(problem("", "lon, lat and radius_m come together"));
                None
            }
        };
        let locode = match get("locode").as_deref() {
            None => None,
            Some("yes" | "true") => Some(true),
            Some("no" | "false") => Some(false),
            Some(other) => {
                local.push(problem("", format!("locode: {other:?} is not yes or no")));
                None
            }
        };
        let fields = Fields {
            code: get("code"),
            name: get("name"),
            country: get("country"),
            roles: get("roles")
                .map(|r| r.split('|').map(|s| s.trim().to_owned()).collect())
                .unwrap_or_default(),
            location,
            valid_from: get("valid_from"),
            valid_until: get("valid_until"),
            locode,
            source: get("source"),
        };
        let office = fields.check("", &mut local, |field| field.to_owned());
        if local.is_empty() {
            offices.extend(office);
        }
        for p in local {
            // Where a CSV problem is: its line and column name.
            let column = p.pointer.clone().unwrap_or_default();
            let detail = if column.is_empty() {
                p.detail
            } else {
                format!("{column}: {}", p.detail)
            };
            problems.push(at_line(detail));
        }
    }
    if header.is_none() && problems.is_empty() {
        problems.push(Located::line_column(1, 1, "no header line"));
    }
    if problems.is_empty() {
        Ok(offices)
    } else {
        Err(problems)
    }
}

/// Reads offices from JSON: an array of offices, or `{"offices": [...]}`.
pub fn parse_json(value: &Value) -> Result<Vec<Office>, Vec<Located>> {
    let (items, base) = match value {
        Value::Array(items) => (items, ""),
        Value::Object(m) => match m.get("offices") {
            Some(Value::Array(items)) if m.len() == 1 => (items, "/offices"),
            _ => {
                return Err(vec![problem(
                    "",
                    "an office list is an array of offices, or an object with only \"offices\"",
                )]);
            }
        },
        _ => return Err(vec![problem("", "an office list is a JSON array")]),
    };
    if items.len() > MAX_IMPORT_OFFICES {
        return Err(vec![problem(
            base,
            format!(
                "{} offices exceed the limit of {MAX_IMPORT_OFFICES} per import",
                items.len()
            ),
        )]);
    }
    let mut problems = Vec::new();
    let mut offices = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match Office::from_json(item, &format!("{base}/{i}")) {
            Ok(o) => offices.push(o),
            Err(p) => problems.extend(p),
        }
        if problems.len() >= 50 {
            break;
        }
    }
    if problems.is_empty() {
        Ok(offices)
    } else {
        Err(problems)
    }
}

/// A JSON body, or where it stops being JSON.
pub fn json_body(body: &[u8]) -> Result<Value, DocumentError> {
    serde_json::from_slice(body).map_err(|e| {
        DocumentError::malformed(Located::line_column(e.line(), e.column(), e.to_string()))
    })
}

/// An import (`POST /v1/offices/import`, `ects-gateway offices import`): CSV, or JSON;
/// at most [`MAX_IMPORT_OFFICES`] offices, [`MAX_IMPORT_LOCATED`] of them with a location.
pub fn parse_import(body: &[u8], csv: bool) -> Result<Vec<Office>, DocumentError> {
    let offices = parse_import_unchecked(body, csv)?;
    let located = offices.iter().filter(|o| o.location.is_some()).count();
    if located > MAX_IMPORT_LOCATED {
        let first_over = offices
            .iter()
            .filter(|o| o.location.is_some())
            .nth(MAX_IMPORT_LOCATED)
            .map(|o| o.code.as_str().to_owned())
            .unwrap_or_default();
        return Err(DocumentError::Invalid(vec![Located::pointer(
            "",
            format!(
                "{located} offices have a location; at most {MAX_IMPORT_LOCATED} per import (each is a zone): import the rest, from {first_over} on, in another"
            ),
        )]));
    }
    Ok(offices)
}

fn parse_import_unchecked(body: &[u8], csv: bool) -> Result<Vec<Office>, DocumentError> {
    if csv {
        let text = std::str::from_utf8(body).map_err(|e| {
            DocumentError::malformed(Located::pointer(
                "",
                format!("the CSV is not UTF-8 at byte {}", e.valid_up_to()),
            ))
        })?;
        parse_csv(text).map_err(DocumentError::Invalid)
    } else {
        parse_json(&json_body(body)?).map_err(DocumentError::Invalid)
    }
}

/// The shipped reference data, built into the binary (`mappings/offices/`).
pub const SHIPPED: [(&str, &str); 5] = [
    (
        "central-america.csv",
        include_str!("../mappings/offices/central-america.csv"),
    ),
    (
        "east-africa.csv",
        include_str!("../mappings/offices/east-africa.csv"),
    ),
    (
        "south-asia.csv",
        include_str!("../mappings/offices/south-asia.csv"),
    ),
    (
        "asycuda-albania.csv",
        include_str!("../mappings/offices/asycuda-albania.csv"),
    ),
    (
        "hmrc-uk.csv",
        include_str!("../mappings/offices/hmrc-uk.csv"),
    ),
];

/// The shipped offices a policy seeds: under `strict`, not the codes of this project
/// ([`Office::is_project_code`]).
pub fn shipped_for(policy: OfficePolicy) -> Result<Vec<Office>, String> {
    let mut all = shipped()?;
    if policy == OfficePolicy::Strict {
        all.retain(|o| !o.is_project_code());
    }
    Ok(all)
}

/// Every shipped office. A broken shipped file is a build defect, reported with its name.
pub fn shipped() -> Result<Vec<Office>, String> {
    let mut all = Vec::new();
    for (name, text) in SHIPPED {
        let offices = parse_csv(text).map_err(|problems| {
            format!(
                "mappings/offices/{name}: {}",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        all.extend(offices);
    }
    Ok(all)
}

/// What checking offices found: problems refuse the document, notes are told.
#[derive(Debug, Default)]
pub struct Findings {
    pub problems: Vec<Located>,
    pub notes: Vec<Located>,
}

impl Findings {
    fn finish(self) -> Result<Vec<Located>, DocumentError> {
        if self.problems.is_empty() {
            Ok(self.notes)
        } else {
            Err(DocumentError::Invalid(self.problems))
        }
    }
}

/// The registry as the formats see it: a snapshot of every office, swapped whole when
/// customs change it, and the installation's policy.
#[derive(Clone)]
pub struct Offices {
    policy: OfficePolicy,
    entries: Arc<RwLock<Arc<BTreeMap<String, Office>>>>,
    /// The shipped codes of this project, as shipped: left out under `strict`.
    project: Arc<BTreeMap<String, Office>>,
}

impl std::fmt::Debug for Offices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offices")
            .field("policy", &self.policy)
            .field("entries", &self.snapshot().len())
            .finish()
    }
}

impl Offices {
    pub fn new(policy: OfficePolicy, offices: Vec<Office>) -> Self {
        let project = shipped()
            .unwrap_or_default()
            .into_iter()
            .filter(Office::is_project_code)
            .map(|o| (o.code.as_str().to_owned(), o))
            .collect();
        let this = Self {
            policy,
            entries: Arc::default(),
            project: Arc::new(project),
        };
        this.replace(offices);
        this
    }

    /// The shipped reference data alone (the CLI without a database).
    pub fn shipped(policy: OfficePolicy) -> Result<Self, String> {
        Ok(Self::new(policy, shipped()?))
    }

    pub fn policy(&self) -> OfficePolicy {
        self.policy
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Office>> {
        self.entries
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Replaces every entry (after the database changed). Under `strict`, a code of this
    /// project stored as shipped (seeded by an earlier start under `known_or_locode`) is
    /// left out: only one customs registered themselves (any change) counts.
    pub fn replace(&self, offices: Vec<Office>) {
        let strict = self.policy == OfficePolicy::Strict;
        let map: BTreeMap<String, Office> = offices
            .into_iter()
            .filter(|o| !(strict && self.project.get(o.code.as_str()) == Some(o)))
            .map(|o| (o.code.as_str().to_owned(), o))
            .collect();
        let map = Arc::new(map);
        match self.entries.write() {
            Ok(mut g) => *g = map,
            Err(e) => *e.into_inner() = map,
        }
    }

    pub fn get(&self, code: &str) -> Option<Office> {
        self.snapshot().get(code).cloned()
    }

    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One office code checked: a problem refuses the document, a note is told to the
    /// sender.
    pub fn check_code(
        &self,
        code: &OfficeCode,
        declared_country: Option<&CountryCode>,
        role: Option<OfficeRole>,
        on: NaiveDate,
        pointer: &str,
        found: &mut Findings,
    ) {
        let Findings { problems, notes } = found;
        let entries = self.snapshot();
        let Some(office) = entries.get(code.as_str()) else {
            match self.policy {
                OfficePolicy::Strict if self.project.contains_key(code.as_str()) => {
                    problems.push(problem(
                        pointer,
                        format!(
                            "office \"{code}\" is not in the office registry (policy strict): it is a code of this project (README, fixtures), not a registered office; register it (PUT /v1/offices/{code}) to use it"
                        ),
                    ))
                }
                OfficePolicy::Strict => problems.push(problem(
                    pointer,
                    format!("office \"{code}\" is not in the office registry (policy strict)"),
                )),
                OfficePolicy::KnownOrLocode if is_locode_shaped(code.as_str()) => {
                    notes.push(problem(
                        pointer,
                        format!(
                            "office \"{code}\" is not in the office registry; accepted as a UN/LOCODE-shaped code (policy known_or_locode)"
                        ),
                    ))
                }
                OfficePolicy::KnownOrLocode => problems.push(problem(
                    pointer,
                    format!(
                        "office \"{code}\" is not in the office registry, and is not shaped like a UN/LOCODE (a country and three letters or digits 2-9)"
                    ),
                )),
            }
            return;
        };
        let strict = self.policy == OfficePolicy::Strict;
        if office.valid_from.is_some_and(|d| on < d) || office.valid_until.is_some_and(|d| on > d) {
            let told = if strict { &mut *problems } else { &mut *notes };
            told.push(problem(
                pointer,
                format!(
                    "office \"{code}\" ({}) is not valid on {on}: valid {} to {}",
                    office.name,
                    office
                        .valid_from
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "…".into()),
                    office
                        .valid_until
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "…".into()),
                ),
            ));
        }
        if let Some(country) = declared_country {
            // The country is the role's (`.../country` beside `.../code`).
            let at = pointer
                .strip_suffix("/code")
                .map(|p| format!("{p}/country"))
                .unwrap_or_else(|| pointer.to_owned());
            let prefix = code.as_str().get(..2).filter(|p| is_iso_country(p));
            let told = if strict { &mut *problems } else { &mut *notes };
            if *country != office.country {
                told.push(problem(
                    &at,
                    format!(
                        "office \"{code}\" ({}) is in {} by the office registry; the document says {country}",
                        office.name, office.country
                    ),
                ));
            } else if let Some(prefix) = prefix
                && prefix != country.as_str()
            {
                told.push(problem(
                    &at,
                    format!(
                        "office \"{code}\" ({}) has the country prefix {prefix}; the document says {country}",
                        office.name
                    ),
                ));
            }
        }
        if let Some(role) = role
            && !office.roles.is_empty()
            && !office.roles.contains(&role)
        {
            notes.push(problem(
                pointer,
                format!(
                    "office \"{code}\" ({}) is not registered for the role {}",
                    office.name,
                    role.as_str()
                ),
            ));
        }
    }

    /// Every office a declaration names, checked on the declaration's own date
    /// (`declared_at`), or the day it is read when it has none. Pointers are canonical: a
    /// mapped format relocates them to its document.
    pub fn check_declaration(&self, d: &TransitDeclaration) -> Result<Vec<Located>, DocumentError> {
        let on = d.declared_at.unwrap_or_else(Utc::now).date_naive();
        let mut found = Findings::default();
        let mut one = |office: &ects_core::model::Office, role, pointer: String| {
            self.check_code(
                &office.code,
                Some(&office.country),
                Some(role),
                on,
                &format!("{pointer}/code"),
                &mut found,
            )
        };
        one(
            &d.office_of_departure,
            OfficeRole::Departure,
            "/office_of_departure".into(),
        );
        for (i, o) in d.offices_of_transit.iter().enumerate() {
            one(o, OfficeRole::Transit, format!("/offices_of_transit/{i}"));
        }
        one(
            &d.office_of_destination,
            OfficeRole::Destination,
            "/office_of_destination".into(),
        );
        found.finish()
    }

    /// The office a seal assignment names, if any.
    pub fn check_assignment(&self, a: &SealAssignment) -> Result<Vec<Located>, DocumentError> {
        let mut found = Findings::default();
        if let Some(code) = &a.office_of_destination {
            self.check_code(
                code,
                None,
                Some(OfficeRole::Destination),
                a.assigned_at.date_naive(),
                "/office_of_destination",
                &mut found,
            );
        }
        found.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_data_reads() {
        let all = shipped().unwrap();
        assert!(all.len() > 100, "{}", all.len());
        let mut codes: Vec<&str> = all.iter().map(|o| o.code.as_str()).collect();
        codes.sort();
        let before = codes.len();
        codes.dedup();
        assert_eq!(before, codes.len(), "a code is listed twice");
    }

    #[test]
    fn locode_shape() {
        assert!(is_locode_shaped("GTPRQ"));
        assert!(is_locode_shaped("RWKG2"));
        assert!(!is_locode_shaped("RWKG1"), "digits 0 and 1 are not used");
        assert!(!is_locode_shaped("XXPRQ"), "not a country");
        assert!(!is_locode_shaped("INNSA1"));
        assert!(!is_locode_shaped("GTPR"));
    }

    #[test]
    fn csv_problems_name_the_line_and_column() {
        let text = "code,name,country,roles\nGTPRQ,Puerto Quetzal,GT,departure|transit\nGTXXX,x,GTM,departure\nGTYYY,\"a, b\",GT,nowhere\n";
        let problems = parse_csv(text).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].line, Some(3));
        assert!(problems[0].detail.starts_with("country:"), "{problems:?}");
        assert_eq!(problems[1].line, Some(4));
        assert!(problems[1].detail.contains("nowhere"), "{problems:?}");
        let ok = parse_csv("code,name,country,roles\nGTPRQ,\"Puerto \"\"Q\"\"\",GT,\n").unwrap();
        assert_eq!(ok[0].name, "Puerto \"Q\"");
        assert!(ok[0].locode);
    }
}
