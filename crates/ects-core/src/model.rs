//! The canonical model: what every format adapter translates to and from. Field names are
//! the public contract (`schemas/` holds the JSON Schemas partners code against).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{
    AlertId, AuthorityCode, CorridorId, CountryCode, DeclarationId, DeviceId, EquipmentId, EventId,
    EventSignature, KeyId, OfficeCode, SealId, TripId, ZoneId,
};

/// Time as exchanged: RFC 3339, normalised to UTC.
pub type Timestamp = DateTime<Utc>;

/// A customs office as named in a declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Office {
    pub code: OfficeCode,
    pub country: CountryCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Carrier {
    /// The authorized (bonded) carrier's id with the authority.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The declarant: the trader (or its customs broker) who lodged the declaration. A
/// shipper's token sees the trips whose declarant id is its party.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Declarant {
    /// The declarant's id with the customs authority (TIN, EORI, trader code).
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Driver {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Vehicle {
    /// Tractor (truck) registration plate.
    pub plate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<CountryCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailer_plate: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SealKind {
    /// A GPS e-seal that reports events; carries a `device_id`.
    Electronic,
    /// A mechanical or bolt seal: checked by officers, reports nothing.
    Mechanical,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Seal {
    pub id: SealId,
    pub kind: SealKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
}

/// A container (or other sealed transport equipment) and its seals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Equipment {
    pub id: EquipmentId,
    #[serde(default)]
    pub seals: Vec<Seal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GoodsItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gross_mass_kg: Option<f64>,
}

/// A transit declaration (DUCA-T, T1, ICEGATE transit line, WCO DEC...) in canonical form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TransitDeclaration {
    pub declaration_id: DeclarationId,
    pub issuing_authority: AuthorityCode,
    /// When the customs system dated it. A document without a date (an ASYCUDA SAD not
    /// yet registered) leaves it out; the gateway then records when it received it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_at: Option<DateTime<Utc>>,
    pub office_of_departure: Office,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offices_of_transit: Vec<Office>,
    pub office_of_destination: Office,
    /// Countries crossed, in order, departure country first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub itinerary: Vec<CountryCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corridor_id: Option<CorridorId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declarant: Option<Declarant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<Carrier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle: Option<Vehicle>,
    #[serde(default)]
    pub equipment: Vec<Equipment>,
    /// Seals the document names without tying them to equipment (an ASYCUDA SAD lists
    /// them in one field). `normalise` ties them to the only container, if there is one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seals: Vec<Seal>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub goods: Vec<GoodsItem>,
}

/// The equipment id under which a trip lists seals not tied to any equipment.
pub const UNASSIGNED_EQUIPMENT: &str = "UNASSIGNED";

impl TransitDeclaration {
    /// Every seal: on equipment, then those not tied to any.
    pub fn seals(&self) -> impl Iterator<Item = &Seal> {
        self.equipment
            .iter()
            .flat_map(|e| e.seals.iter())
            .chain(self.seals.iter())
    }

    /// Puts the declaration in its one canonical shape: equipment listed more than once
    /// (a SAD repeats a container for each goods item) is merged, and seals not tied to
    /// equipment are tied to the only container when there is exactly one. Returns a note
    /// for each thing changed or left open, for the sender.
    pub fn normalise(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let mut merged: Vec<Equipment> = Vec::with_capacity(self.equipment.len());
        for e in std::mem::take(&mut self.equipment) {
            match merged.iter_mut().find(|m| m.id == e.id) {
                Some(m) => {
                    for seal in e.seals {
                        if !m.seals.iter().any(|s| s.id == seal.id) {
                            m.seals.push(seal);
                        }
                    }
                }
                None => merged.push(e),
            }
        }
        self.equipment = merged;
        // A seal listed both on its equipment and among the untied ones is tied.
        let tied: std::collections::HashSet<SealId> = self
            .equipment
            .iter()
            .flat_map(|e| e.seals.iter().map(|s| s.id.clone()))
            .collect();
        self.seals.retain(|s| !tied.contains(&s.id));
        if !self.seals.is_empty() {
            if let [only] = self.equipment.as_mut_slice() {
                notes.push(format!(
                    "{} seal(s) not tied to equipment were tied to {}, the only container",
                    self.seals.len(),
                    only.id
                ));
                only.seals.append(&mut self.seals);
            } else {
                notes.push(format!(
                    "{} seal(s) are not tied to any equipment ({}): the trip lists them under {}",
                    self.seals.len(),
                    self.seals
                        .iter()
                        .map(|s| s.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    UNASSIGNED_EQUIPMENT
                ));
            }
        }
        notes
    }
}

/// A WGS84 point, checked on the way in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "RawLatLon")]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatLon {
    lat: f64,
    lon: f64,
}

impl LatLon {
    pub fn new(lat: f64, lon: f64) -> Result<Self, String> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(format!("latitude {lat} is outside -90..=90"));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(format!("longitude {lon} is outside -180..=180"));
        }
        Ok(Self { lat, lon })
    }
}

impl TryFrom<RawLatLon> for LatLon {
    type Error = String;
    fn try_from(raw: RawLatLon) -> Result<Self, String> {
        Self::new(raw.lat, raw.lon)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FixKind {
    Gps,
    /// Cell-tower (LBS) location: coarse.
    Lbs,
    Wifi,
    /// The device had no fix and repeated its last known position.
    LastKnown,
}

impl FixKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gps => "gps",
            Self::Lbs => "lbs",
            Self::Wifi => "wifi",
            Self::LastKnown => "last_known",
        }
    }
}

/// A position fix reported by a seal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "RawPosition")]
pub struct Position {
    pub lat: f64,
    pub lon: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed_kmh: Option<f64>,
    /// Degrees clockwise from north, 0..360.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heading: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<FixKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPosition {
    lat: f64,
    lon: f64,
    #[serde(default)]
    speed_kmh: Option<f64>,
    #[serde(default)]
    heading: Option<u16>,
    #[serde(default)]
    fix: Option<FixKind>,
    #[serde(default)]
    accuracy_m: Option<f64>,
}

impl TryFrom<RawPosition> for Position {
    type Error = String;
    fn try_from(raw: RawPosition) -> Result<Self, String> {
        let point = LatLon::new(raw.lat, raw.lon)?;
        if let Some(speed) = raw.speed_kmh
            && (!speed.is_finite() || !(0.0..=1000.0).contains(&speed))
        {
            return Err(format!("speed_kmh {speed} is outside 0..=1000"));
        }
        if let Some(heading) = raw.heading
            && heading >= 360
        {
            return Err(format!("heading {heading} is outside 0..360"));
        }
        if let Some(acc) = raw.accuracy_m
            && (!acc.is_finite() || acc < 0.0)
        {
            return Err(format!("accuracy_m {acc} is negative"));
        }
        Ok(Self {
            lat: point.lat,
            lon: point.lon,
            speed_kmh: raw.speed_kmh,
            heading: raw.heading,
            fix: raw.fix,
            accuracy_m: raw.accuracy_m,
        })
    }
}

impl Position {
    pub fn point(&self) -> LatLon {
        LatLon {
            lat: self.lat,
            lon: self.lon,
        }
    }

    /// A fix the rules may trust for where the seal is.
    pub fn is_valid_fix(&self) -> bool {
        !matches!(self.fix, Some(FixKind::LastKnown))
    }

    /// Precise enough for the movement rules (corridor, stops, jumps, zones): satellite
    /// fixes, and none whose own accuracy is worse than `max_error_m`. Cell-tower and wifi
    /// fixes are kilometres off; they show where the seal roughly is and that it reports.
    pub fn is_precise(&self, max_error_m: f64) -> bool {
        !matches!(
            self.fix,
            Some(FixKind::Lbs | FixKind::Wifi | FixKind::LastKnown)
        ) && self.accuracy_m.is_none_or(|a| a <= max_error_m)
    }
}

/// What a seal reported. Vendor codes stay in `SealEvent::raw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SealEventKind {
    Position,
    Locked,
    Unlocked,
    Opened,
    RopeCut,
    Tamper,
    CoverOpened,
    WrongPasswordLockout,
    IllegalCard,
    LockJammed,
    LowBattery,
    Jamming,
}

impl SealEventKind {
    /// Kinds that mean someone interfered with the seal.
    pub fn is_tamper(self) -> bool {
        matches!(
            self,
            Self::RopeCut
                | Self::Tamper
                | Self::CoverOpened
                | Self::WrongPasswordLockout
                | Self::IllegalCard
                | Self::LockJammed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Position => "position",
            Self::Locked => "locked",
            Self::Unlocked => "unlocked",
            Self::Opened => "opened",
            Self::RopeCut => "rope_cut",
            Self::Tamper => "tamper",
            Self::CoverOpened => "cover_opened",
            Self::WrongPasswordLockout => "wrong_password_lockout",
            Self::IllegalCard => "illegal_card",
            Self::LockJammed => "lock_jammed",
            Self::LowBattery => "low_battery",
            Self::Jamming => "jamming",
        }
    }
}

/// The largest sequence number a seal event may carry: stores keep it as a signed 64-bit
/// integer, so anything above is refused at parse time rather than stored wrong.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// One report from an e-seal. A sender identifies it by `event_id`, or by `device_id` and
/// `seq`; at least one of the two must be present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SealEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventId>,
    pub device_id: DeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_id: Option<SealId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub time: DateTime<Utc>,
    pub kind: SealEventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<u8>,
    /// The vendor's own codes, kept as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub raw: Option<serde_json::Map<String, serde_json::Value>>,
    /// The device key that signed the event (see [`SealEvent::signed_bytes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    /// Base64 of the signature over [`SealEvent::signed_bytes`] by the key `key_id` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<EventSignature>,
}

impl SealEvent {
    /// The exact bytes a device signs (format `ects-seal-event/1`): UTF-8 lines, each
    /// ending in `\n`, in this fixed order, a field the event lacks written empty:
    ///
    /// ```text
    /// ects-seal-event/1
    /// device_id=<device_id>
    /// seq=<seq, decimal>
    /// event_id=<event_id>
    /// seal_id=<seal_id>
    /// time=<RFC 3339 in UTC with `Z`; fraction of a second only if not zero, as 3, 6 or 9 digits>
    /// kind=<kind>
    /// lat=<7 decimals>
    /// lon=<7 decimals>
    /// speed_kmh=<1 decimal>
    /// heading=<integer>
    /// fix=<fix>
    /// battery_pct=<integer>
    /// key_id=<key_id>
    /// ```
    ///
    /// Numbers are written from the event as received (`{:.7}` rounds like C's `%.7f`),
    /// so a proxy that re-encodes the JSON does not break the signature. `raw` (vendor
    /// codes) and `accuracy_m` are not signed.
    pub fn signed_bytes(&self) -> Vec<u8> {
        use std::fmt::Write;
        fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
            v.map(|v| v.to_string()).unwrap_or_default()
        }
        let p = self.position.as_ref();
        let mut out = String::from("ects-seal-event/1\n");
        let lines: [(&str, String); 13] = [
            ("device_id", self.device_id.as_str().to_owned()),
            ("seq", opt(self.seq)),
            ("event_id", opt(self.event_id.as_ref().map(EventId::as_str))),
            ("seal_id", opt(self.seal_id.as_ref().map(SealId::as_str))),
            (
                "time",
                self.time
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ),
            ("kind", self.kind.as_str().to_owned()),
            ("lat", opt(p.map(|p| format!("{:.7}", p.lat)))),
            ("lon", opt(p.map(|p| format!("{:.7}", p.lon)))),
            (
                "speed_kmh",
                opt(p.and_then(|p| p.speed_kmh).map(|s| format!("{s:.1}"))),
            ),
            ("heading", opt(p.and_then(|p| p.heading))),
            ("fix", opt(p.and_then(|p| p.fix).map(FixKind::as_str))),
            ("battery_pct", opt(self.battery_pct)),
            ("key_id", opt(self.key_id.as_ref().map(KeyId::as_str))),
        ];
        for (name, value) in lines {
            let _ = writeln!(out, "{name}={value}");
        }
        out.into_bytes()
    }

    /// The identity used for de-duplication: the sender's `event_id`, else `device_id:seq`.
    /// `None` when the event carries neither (the schema refuses such an event).
    pub fn identity(&self) -> Option<String> {
        match (&self.event_id, self.seq) {
            (Some(id), _) => Some(id.as_str().to_owned()),
            (None, Some(seq)) => Some(format!("{}:{seq}", self.device_id)),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TripState {
    Declared,
    Armed,
    InTransit,
    Arrived,
    Released,
    Cancelled,
}

impl TripState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Declared => "declared",
            Self::Armed => "armed",
            Self::InTransit => "in_transit",
            Self::Arrived => "arrived",
            Self::Released => "released",
            Self::Cancelled => "cancelled",
        }
    }

    /// A trip in a final state no longer takes seal events.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Released | Self::Cancelled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SealState {
    /// Declared, not heard from yet.
    Unknown,
    Locked,
    Unlocked,
    Opened,
    Tampered,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SealStatus {
    pub id: SealId,
    pub kind: SealKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    pub state: SealState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EquipmentStatus {
    pub id: EquipmentId,
    pub seals: Vec<SealStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LastPosition {
    pub lat: f64,
    pub lon: f64,
    pub time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_kmh: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    RouteDeviation,
    AbnormalStop,
    ReportingGap,
    SealOpened,
    SealTamper,
    LowBattery,
    Overdue,
    PositionJump,
    /// An event contradicts a stored one (same identity, or same device and seq, other
    /// content): one of the two is not genuine. The later one is kept as evidence.
    EventConflict,
    /// A seal event failed device authentication (unsigned from a device with a key, a
    /// bad signature, an unknown or revoked key, a replayed seq, a device its platform
    /// does not hold): kept as evidence, never applied.
    DeviceAuthFailure,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RouteDeviation => "route_deviation",
            Self::AbnormalStop => "abnormal_stop",
            Self::ReportingGap => "reporting_gap",
            Self::SealOpened => "seal_opened",
            Self::SealTamper => "seal_tamper",
            Self::LowBattery => "low_battery",
            Self::Overdue => "overdue",
            Self::PositionJump => "position_jump",
            Self::EventConflict => "event_conflict",
            Self::DeviceAuthFailure => "device_auth_failure",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// The short form of an alert inside a trip status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertRef {
    pub alert_id: AlertId,
    pub kind: AlertKind,
    pub severity: Severity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    pub alert_id: AlertId,
    pub trip_id: TripId,
    pub kind: AlertKind,
    pub severity: Severity,
    pub raised_at: DateTime<Utc>,
    pub cleared_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<LatLon>,
    /// Identities of the seal events that caused it.
    pub evidence: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_id: Option<SealId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A supervisor's account of a tamper alert after the fact (`POST
    /// /v1/alerts/{id}/justify`): the alert stays, marked, never withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justified: Option<Justification>,
}

/// Why an alert raised for a seal opening (or other tampering) was lawful after all, who
/// said so and when. Recorded as its own act, in the audit chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Justification {
    /// 1 to 2000 characters.
    pub reason: String,
    /// The principal that justified it, as the audit chain names it.
    pub by: String,
    pub at: DateTime<Utc>,
}

impl AlertKind {
    /// Alerts that record a seal opened or tampered with: no later input withdraws or
    /// clears them silently; only their own justification (or their condition ending, as
    /// the engine says) settles them.
    pub fn is_tamper(self) -> bool {
        matches!(self, Self::SealOpened | Self::SealTamper)
    }
}

impl Alert {
    pub fn as_ref(&self) -> AlertRef {
        AlertRef {
            alert_id: self.alert_id,
            kind: self.kind,
            severity: self.severity,
        }
    }
}

/// A customs officer, as named in releases and handovers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Officer {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Permission to open the seals of a trip at an approved place within a time window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReleaseAuthorization {
    pub release_id: String,
    pub trip_id: TripId,
    pub authority: AuthorityCode,
    pub officer: Officer,
    /// A zone of kind `release_place` or the destination office's zone.
    pub place: ZoneId,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    /// Sent to the seal with the unlock command; single use.
    pub one_time_code: String,
    pub issued_at: DateTime<Utc>,
    /// When the gateway received it (set by the gateway, never by the sender; not part of
    /// the canonical document): a release covers only openings from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(read_only))]
    pub received_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SealCheck {
    Intact,
    Discrepancy,
    NotChecked,
}

/// Custody of a trip passing from one authority to the next, usually at a border post.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CustodyHandover {
    pub handover_id: String,
    pub trip_id: TripId,
    pub from_authority: AuthorityCode,
    pub to_authority: AuthorityCode,
    pub officer: Officer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<ZoneId>,
    pub time: DateTime<Utc>,
    pub seal_check: SealCheck,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remarks: Option<String>,
}

/// What the API returns for a trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TripStatus {
    pub trip_id: TripId,
    pub declaration_id: DeclarationId,
    pub issuing_authority: AuthorityCode,
    pub state: TripState,
    pub custodian: AuthorityCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corridor_id: Option<CorridorId>,
    pub office_of_departure: OfficeCode,
    pub office_of_destination: OfficeCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<DateTime<Utc>>,
    pub equipment: Vec<EquipmentStatus>,
    pub last_position: Option<LastPosition>,
    pub open_alerts: Vec<AlertRef>,
    pub custody_chain: Vec<CustodyHandover>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    Status,
    Alert,
    Release,
    Handover,
}

/// What the gateway tells a subscribed partner; each adapter renders it in its format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusNotification {
    pub notification_id: String,
    pub kind: NotificationKind,
    pub trip_id: TripId,
    pub declaration_id: DeclarationId,
    pub issuing_authority: AuthorityCode,
    pub state: TripState,
    pub time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_state: Option<TripState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<Alert>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseAuthorization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<CustodyHandover>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<LatLon>,
    /// Arrived (or released after arriving) after the time limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

/// The issuing authority withdraws a transit: the trip ends without release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Cancellation {
    pub trip_id: TripId,
    pub authority: AuthorityCode,
    pub officer: Officer,
    pub time: DateTime<Utc>,
    pub reason: String,
}

/// Seals tied to a trip's containers after its declaration: an exporter's e-seal record
/// (CBIC), a cargo manifest's container-to-seal link (ASYCUDA AWMDS). It names the
/// declaration it updates, or only containers (a manifest does not know the transit
/// declaration): the gateway then finds the live trips that carry them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SealAssignment {
    /// The update's own reference (the e-seal record, the manifest): the same reference
    /// sent again for a trip changes nothing.
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declaration_id: Option<DeclarationId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuing_authority: Option<AuthorityCode>,
    /// When the seals were fixed (or the manifest dated).
    pub assigned_at: DateTime<Utc>,
    /// The containers and the seals now on them.
    pub equipment: Vec<Equipment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle: Option<Vehicle>,
    /// Who fixed the seals: the exporter's code (IEC), a sealing party's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_by: Option<String>,
    /// The customs office the sealed goods go to, when the record names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub office_of_destination: Option<OfficeCode>,
}
