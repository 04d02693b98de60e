//! A trip's state machine: a pure function of its declaration and the inputs applied to it
//! (seal events, release authorizations, custody handovers, a cancellation, clock ticks),
//! each with its time; `now` is always passed in. What it returns (effects) is what the
//! gateway stores and delivers.
//!
//! Lifecycle: `declared → armed` when every electronic seal reports locked at the office of
//! departure; `→ in_transit` on leaving the departure office; `→ arrived` on entering the
//! destination office; `→ released` when the seals open under a valid release
//! authorization at its place and within its window; `cancelled` by the issuing authority.
//!
//! Rules: `route_deviation`, `abnormal_stop`, `reporting_gap`, `seal_opened`,
//! `seal_tamper`, `low_battery`, `overdue`, `position_jump`. Each alert carries its kind,
//! severity, time, position and the events that caused it, and is cleared when the
//! condition ends. Late events are handled by [`Trip::replay`] and [`reconcile`].

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::geo::ZoneKind;
use crate::ids::{AlertId, DeviceId, SealId, TripId};
use crate::model::{
    Alert, AlertKind, Cancellation, CustodyHandover, Equipment, EquipmentStatus, LastPosition,
    LatLon, NotificationKind, ReleaseAuthorization, SealAssignment, SealCheck, SealEvent,
    SealEventKind, SealKind, SealState, SealStatus, Severity, StatusNotification,
    TransitDeclaration, TripState, TripStatus, UNASSIGNED_EQUIPMENT,
};
use crate::spatial::{CorridorIndex, Geography, distance_m};

pub type Timestamp = DateTime<Utc>;

macro_rules! rules {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $default:expr, $lo:literal ..= $hi:literal,)*) => {
        /// Thresholds of the rules. Defaults suit road transit; a corridor may override any
        /// of them (`properties.rules` of its GeoJSON), and a trip may override them again.
        /// Every threshold has a range ([`Rules::RANGES`]): a value outside it is refused
        /// where it is read ([`RulesOverride::parse`], [`Rules::check`]), and one stored
        /// before the ranges existed is brought inside it when used ([`Rules::clamped`]).
        #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Rules {
            $($(#[$doc])* pub $name: $ty,)*
        }

        impl Default for Rules {
            fn default() -> Self {
                Self { $($name: $default,)* }
            }
        }

        /// Some thresholds, to lay over [`Rules`].
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct RulesOverride {
            $(#[serde(skip_serializing_if = "Option::is_none")] pub $name: Option<$ty>,)*
        }

        impl Rules {
            /// Each threshold's name and its accepted range, inclusive (the documented
            /// limits).
            pub const RANGES: &'static [(&'static str, f64, f64)] =
                &[$((stringify!($name), $lo as f64, $hi as f64),)*];

            pub fn with(mut self, over: &RulesOverride) -> Self {
                $(if let Some(v) = over.$name { self.$name = v; })*
                self
            }

            /// Every threshold brought inside its range: what the engine works with, so
            /// that a value stored before the ranges were checked cannot break it.
            pub fn clamped(mut self) -> Self {
                $(self.$name = Threshold::clamp_to(self.$name, $lo as $ty, $hi as $ty);)*
                self
            }

            /// The first threshold outside its range, with its JSON pointer.
            pub fn check(&self) -> Result<(), RuleError> {
                $(Threshold::check(self.$name, stringify!($name), $lo as $ty, $hi as $ty)?;)*
                Ok(())
            }
        }

        impl RulesOverride {
            /// Reads thresholds from JSON (an object of threshold names and numbers, `null`
            /// for "not set"), each checked against its range; the error names the JSON
            /// pointer of the first wrong one.
            pub fn parse(value: &serde_json::Value) -> Result<Self, RuleError> {
                let Some(map) = value.as_object() else {
                    return Err(RuleError {
                        pointer: String::new(),
                        reason: "thresholds are a JSON object of names and numbers".into(),
                    });
                };
                let mut over = Self::default();
                for (key, v) in map {
                    if v.is_null() {
                        continue;
                    }
                    match key.as_str() {
                        $(stringify!($name) => {
                            over.$name = Some(Threshold::read(v, stringify!($name), $lo as $ty, $hi as $ty)?);
                        })*
                        other => {
                            return Err(RuleError {
                                pointer: format!("/{}", other.replace('~', "~0").replace('/', "~1")),
                                reason: format!(
                                    "unknown threshold; known: {}",
                                    [$(stringify!($name)),*].join(", ")
                                ),
                            });
                        }
                    }
                }
                Ok(over)
            }

            /// The first threshold set outside its range, with its JSON pointer.
            pub fn check(&self) -> Result<(), RuleError> {
                $(if let Some(v) = self.$name {
                    Threshold::check(v, stringify!($name), $lo as $ty, $hi as $ty)?;
                })*
                Ok(())
            }
        }
    };
}

/// A threshold outside its range, or not a number: where (a JSON pointer relative to the
/// thresholds object) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pointer}: {reason}")]
pub struct RuleError {
    pub pointer: String,
    pub reason: String,
}

/// A number type a threshold may have.
trait Threshold: Copy + PartialOrd + std::fmt::Display + Sized {
    fn from_json(v: &serde_json::Value) -> Result<Self, Option<String>>;
    fn clamp_to(self, lo: Self, hi: Self) -> Self;

    fn check(self, name: &str, lo: Self, hi: Self) -> Result<(), RuleError> {
        if self >= lo && self <= hi {
            Ok(())
        } else {
            Err(RuleError {
                pointer: format!("/{name}"),
                reason: format!("{self} is outside the range {lo} to {hi}"),
            })
        }
    }

    fn read(v: &serde_json::Value, name: &str, lo: Self, hi: Self) -> Result<Self, RuleError> {
        match Self::from_json(v) {
            Ok(n) => n.check(name, lo, hi).map(|()| n),
            Err(why) => Err(RuleError {
                pointer: format!("/{name}"),
                reason: why.unwrap_or_else(|| format!("must be a number from {lo} to {hi}")),
            }),
        }
    }
}

macro_rules! whole_threshold {
    ($($ty:ty),*) => {$(
        impl Threshold for $ty {
            fn from_json(v: &serde_json::Value) -> Result<Self, Option<String>> {
                let n: i128 = match (v.as_i64(), v.as_u64()) {
                    (Some(n), _) => i128::from(n),
                    (None, Some(n)) => i128::from(n),
                    _ if v.is_number() => {
                        return Err(Some(format!("{v} is not a whole number")));
                    }
                    _ => return Err(None),
                };
                <$ty>::try_from(n).map_err(|_| {
                    Some(format!(
                        "{n} is outside the range {} to {}",
                        <$ty>::MIN,
                        <$ty>::MAX
                    ))
                })
            }

            fn clamp_to(self, lo: Self, hi: Self) -> Self {
                self.clamp(lo, hi)
            }
        }
    )*};
}
whole_threshold!(u8, u32, i64);

impl Threshold for f64 {
    fn from_json(v: &serde_json::Value) -> Result<Self, Option<String>> {
        v.as_f64().filter(|n| n.is_finite()).ok_or(None)
    }

    fn clamp_to(self, lo: Self, hi: Self) -> Self {
        if self.is_nan() {
            lo
        } else {
            self.clamp(lo, hi)
        }
    }
}

rules! {
    /// At or below this battery level `low_battery` is raised.
    low_battery_pct: u8 = 20, 0..=100,
    /// It clears only this many points above the threshold (no flapping)...
    low_battery_hysteresis_pct: u8 = 5, 0..=50,
    /// ...and only when no low reading came for this many seconds: a battery flapping
    /// between low and full keeps one alert open.
    low_battery_clear_s: i64 = 600, 0..=86_400,
    /// Consecutive fixes outside the corridor before `route_deviation`...
    deviation_min_fixes: u32 = 3, 1..=1000,
    /// ...and for at least this many seconds (GPS noise makes single fixes stray).
    /// At most 2 h: a truck off its corridor longer than that unreported is no tracking.
    deviation_min_s: i64 = 60, 0..=7_200,
    /// Consecutive fixes back inside before the deviation clears.
    deviation_clear_fixes: u32 = 2, 1..=1000,
    /// At or below this speed a fix counts as stopped.
    stop_speed_kmh: f64 = 5.0, 0..=50,
    /// A stop holds while the fixes stay within this distance of where it began.
    stop_radius_m: f64 = 200.0, 1..=10_000,
    /// A stop outside rest areas and offices longer than this is `abnormal_stop`.
    max_stop_s: i64 = 900, 60..=604_800,
    /// A rest area may be used this long.
    max_rest_s: i64 = 4 * 3600, 60..=604_800,
    /// No valid fix for longer than this is `reporting_gap`.
    /// At most 24 h: a trip silent for a day must be noticed.
    max_gap_s: i64 = 900, 10..=86_400,
    /// Faster than this between two fixes is `position_jump`...
    max_speed_kmh: f64 = 160.0, 1..=2000,
    /// ...when the fixes are at least this far apart (jitter on short hops is not a jump).
    jump_min_distance_m: f64 = 2000.0, 0..=1_000_000,
    /// Where no zone is registered for the office of departure, leaving this radius around
    /// the arming position counts as departure.
    departure_radius_m: f64 = 1000.0, 1..=100_000,
    /// Consecutive fixes that confirm leaving the departure office, entering the
    /// destination office, or leaving it again (GPS noise near an office is common).
    zone_fixes: u32 = 2, 1..=100,
    /// A fix that says it may be off by more than this is left out of the movement rules.
    /// At most 5 km: a coarser fix (a cell tower's) cannot place a truck on a corridor.
    max_fix_error_m: f64 = 500.0, 1..=5_000,
    /// A condition that recurs within this many seconds of its alert clearing reopens
    /// that alert instead of raising a new one.
    alert_hold_s: i64 = 600, 0..=86_400,
    /// The window over which `max_alerts_per_window` counts, in seconds.
    alert_window_s: i64 = 86_400, 60..=604_800,
    /// At most this many raisings (new alerts and reopenings) of one kind for one seal (or
    /// for the trip) within `alert_window_s`; past it, the alert stays open (its clearing is
    /// held) and recurrences add to it.
    /// At least 2: with 1, the first alert could never clear.
    max_alerts_per_window: u32 = 10, 2..=1000,
}

/// A valid fix the rules remember.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    pub lat: f64,
    pub lon: f64,
    pub time: Timestamp,
    pub evidence: String,
    /// Precise enough for the movement rules.
    #[serde(default = "yes")]
    pub precise: bool,
}

fn yes() -> bool {
    true
}

impl Fix {
    fn point(&self) -> LatLon {
        LatLon {
            lat: self.lat,
            lon: self.lon,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopAnchor {
    pub lat: f64,
    pub lon: f64,
    pub since: Timestamp,
    /// Where the truck stands, if in a zone that permits stopping.
    pub zone: Option<ZoneKind>,
    pub evidence: String,
}

/// What the rules remember between inputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Track {
    /// The latest event time applied; an event before it is late.
    pub watermark: Option<Timestamp>,
    pub last_fix: Option<Fix>,
    pub armed_at: Option<Fix>,
    pub outside_fixes: u32,
    pub outside_since: Option<Timestamp>,
    pub inside_fixes: u32,
    pub stop: Option<StopAnchor>,
    /// Consecutive precise fixes agreeing on a zone transition (departure, arrival).
    #[serde(default)]
    pub zone_fixes: u32,
    /// Per seal, the time of its latest low battery reading: `low_battery` clears only
    /// after `low_battery_clear_s` without one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub battery_low_at: BTreeMap<String, Timestamp>,
    /// Per alert id, how many times it was reopened (its condition recurred within
    /// `alert_hold_s` of clearing): each reopening is notified as its own raise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reopened: BTreeMap<String, u32>,
    /// Per alert kind and seal (`{kind}/{seal}`, `-` for the trip), the times of its
    /// raisings (new alerts and reopenings, never clearings) still inside
    /// `alert_window_s`, at most `max_alerts_per_window` of them: what the cap counts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub raisings: BTreeMap<String, Vec<Timestamp>>,
    /// Per alert id, since when its condition has ended while its clearing is held (the
    /// cap of raisings in the window was reached).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<String, Timestamp>,
    /// Seals of a cancelled trip opened under a release (at an approved place, in its
    /// window): no longer watched for this trip.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub released_after_cancel: std::collections::BTreeSet<String>,
}

/// How recurring alerts are held together (from [`Rules`]): see [`Trip::raise`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Debounce {
    hold_s: i64,
    window_s: i64,
    max: u32,
}

impl Debounce {
    fn of(rules: &Rules) -> Self {
        Self {
            hold_s: rules.alert_hold_s,
            window_s: rules.alert_window_s,
            max: rules.max_alerts_per_window,
        }
    }
}

impl Default for Debounce {
    fn default() -> Self {
        Self::of(&Rules::default())
    }
}

/// A command for a seal, delivered by the device platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealCommand {
    pub command_id: String,
    pub trip_id: TripId,
    pub seal_id: SealId,
    pub device_id: DeviceId,
    /// `unlock`: open with the one-time code inside the release place and window.
    pub command: String,
    pub one_time_code: String,
    pub release_id: String,
    pub valid_until: Timestamp,
}

/// What applying an input changed; the gateway persists and delivers these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    StateChanged {
        from: TripState,
        to: TripState,
        at: Timestamp,
    },
    AlertRaised {
        alert: Alert,
    },
    AlertUpdated {
        alert: Alert,
    },
    AlertCleared {
        alert: Alert,
    },
    /// Late events showed the alert would not have been raised had they come in order.
    AlertWithdrawn {
        alert: Alert,
    },
    CustodyChanged {
        handover: CustodyHandover,
    },
    ReleaseAccepted {
        release: ReleaseAuthorization,
    },
    SealCommand {
        command: SealCommand,
    },
    Notify {
        notification: Box<StatusNotification>,
    },
    /// A seal assignment changed the trip's seals: each container with the seals it
    /// gained (tied from the unassigned ones, or new).
    SealsAssigned {
        reference: String,
        equipment: Vec<Equipment>,
        at: Timestamp,
    },
}

/// One input to a trip, as stored for replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", content = "body", rename_all = "snake_case")]
pub enum Input {
    SealEvent(SealEvent),
    Release(ReleaseAuthorization),
    Handover(CustodyHandover),
    Cancel(Cancellation),
    SealAssignment(SealAssignment),
    /// A seal event that contradicts a stored one: kept as evidence, never applied to the
    /// seal's state or the trip's track. It raises `event_conflict`, and its alarm (a tamper,
    /// an opening) is raised as well: a genuine alarm must not be silenced by a forged event
    /// that took its sequence number first.
    ConflictingEvent(ConflictingEvent),
    /// A seal event that failed device authentication: kept as evidence, never applied;
    /// it raises `device_auth_failure` and nothing else (its alarm is not believed).
    RefusedEvent(RefusedEvent),
}

/// A seal event refused by device authentication, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedEvent {
    pub event: SealEvent,
    pub reason: String,
    /// Its id as evidence (a hash of its content and reason).
    pub refusal_id: String,
}

impl RefusedEvent {
    /// How the refused event is named in alert evidence.
    pub fn evidence(&self) -> String {
        let short: String = self.refusal_id.chars().take(16).collect();
        format!("refused:{short}")
    }
}

/// A seal event that contradicts a stored one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictingEvent {
    pub event: SealEvent,
    /// The key of the stored event it contradicts.
    pub conflicts_with: String,
    /// Its own id as evidence (a hash of its key and content).
    pub conflict_id: String,
}

impl ConflictingEvent {
    /// How the conflicting event is named in alert evidence: not its identity, which the
    /// stored event holds.
    pub fn evidence(&self) -> String {
        let short: String = self.conflict_id.chars().take(16).collect();
        format!("conflict:{short}")
    }
}

impl Input {
    pub fn time(&self) -> Timestamp {
        match self {
            Input::SealEvent(e) => e.time,
            Input::Release(r) => r.issued_at,
            Input::Handover(h) => h.time,
            Input::Cancel(c) => c.time,
            Input::SealAssignment(a) => a.assigned_at,
            Input::ConflictingEvent(c) => c.event.time,
            Input::RefusedEvent(r) => r.event.time,
        }
    }

    /// The order inputs are applied in: event time, then seal assignments (a seal is known
    /// before it reports), other commands, and events at the same instant, then identity,
    /// so every replay applies them alike.
    pub fn sort_key(&self) -> (Timestamp, u8, String) {
        match self {
            Input::SealAssignment(a) => (a.assigned_at, 0, a.reference.clone()),
            Input::Release(r) => (r.issued_at, 1, r.release_id.clone()),
            Input::Handover(h) => (h.time, 2, h.handover_id.clone()),
            Input::Cancel(c) => (c.time, 3, String::new()),
            Input::SealEvent(e) => (e.time, 4, event_order(e)),
            Input::ConflictingEvent(c) => (c.event.time, 5, c.conflict_id.clone()),
            Input::RefusedEvent(r) => (r.event.time, 6, r.refusal_id.clone()),
        }
    }
}

/// A command the trip refuses, with the field that makes it wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct CommandError {
    pub field: &'static str,
    pub reason: String,
}

fn refuse(field: &'static str, reason: impl Into<String>) -> CommandError {
    CommandError {
        field,
        reason: reason.into(),
    }
}

/// The order of seal events at the same instant: by device, then sequence (as a number),
/// then positions before alarms; the same order live and in a replay.
pub fn event_order(event: &SealEvent) -> String {
    let rank = match event.kind {
        SealEventKind::Position => 0,
        SealEventKind::Locked => 1,
        _ => 2,
    };
    format!(
        "{}\u{0}{:020}\u{0}{rank}\u{0}{}",
        event.device_id,
        event.seq.unwrap_or(0),
        event.event_id.as_ref().map_or("", |i| i.as_str())
    )
}

/// A command sent again under its id: the same one changes nothing, another is refused.
fn repeated<T: PartialEq>(
    earlier: Option<&T>,
    now: &T,
    field: &'static str,
) -> Option<Result<(), CommandError>> {
    earlier.map(|same| {
        if same == now {
            Ok(())
        } else {
            Err(refuse(field, "already used for another command"))
        }
    })
}

/// How an event is named in alert evidence: its identity, else device and time.
pub fn evidence_of(event: &SealEvent) -> String {
    event
        .identity()
        .unwrap_or_else(|| format!("{}@{}", event.device_id, event.time.to_rfc3339()))
}

/// `t` plus `seconds`, or `None` when that is no time chrono can hold (never with thresholds
/// in their ranges; a value stored before they were checked must not panic the engine).
pub fn after(t: Timestamp, seconds: i64) -> Option<Timestamp> {
    Duration::try_seconds(seconds).and_then(|d| t.checked_add_signed(d))
}

/// Most events kept as an alert's evidence.
const MAX_EVIDENCE: usize = 20;

/// Longest release window accepted.
const MAX_RELEASE_WINDOW_H: i64 = 72;

/// How far ahead of its issue a release may be scheduled: its `valid_from` is at most this
/// many days after its `issued_at` (a release months ahead is a standing unlock permission,
/// not a release).
pub const MAX_RELEASE_SCHEDULE_DAYS: i64 = 7;

/// A trip with its alert history and what the rules remember.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    pub status: TripStatus,
    pub alerts: Vec<Alert>,
    #[serde(default)]
    pub track: Track,
    #[serde(default)]
    pub releases: Vec<ReleaseAuthorization>,
    /// Thresholds set for this trip alone; they win over the corridor's.
    #[serde(default)]
    pub rules: RulesOverride,
    /// The alert debounce in force for the input being applied (set from the rules).
    #[serde(skip)]
    debounce: Debounce,
}

impl Trip {
    /// A new trip for a declaration, in state `declared`, in the issuing authority's custody.
    pub fn declare(trip_id: TripId, declaration: &TransitDeclaration, now: Timestamp) -> Self {
        let status = |seals: &[crate::model::Seal]| -> Vec<SealStatus> {
            seals
                .iter()
                .map(|s| SealStatus {
                    id: s.id.clone(),
                    kind: s.kind,
                    device_id: s.device_id.clone(),
                    state: SealState::Unknown,
                    battery_pct: None,
                    last_event_at: None,
                })
                .collect()
        };
        let mut equipment: Vec<EquipmentStatus> = declaration
            .equipment
            .iter()
            .map(|e| EquipmentStatus {
                id: e.id.clone(),
                seals: status(&e.seals),
            })
            .collect();
        if !declaration.seals.is_empty() {
            equipment.push(EquipmentStatus {
                id: crate::ids::EquipmentId::parse(crate::model::UNASSIGNED_EQUIPMENT)
                    .expect("a valid equipment id"),
                seals: status(&declaration.seals),
            });
        }
        Self {
            status: TripStatus {
                trip_id,
                declaration_id: declaration.declaration_id.clone(),
                issuing_authority: declaration.issuing_authority.clone(),
                state: TripState::Declared,
                custodian: declaration.issuing_authority.clone(),
                corridor_id: declaration.corridor_id.clone(),
                office_of_departure: declaration.office_of_departure.code.clone(),
                office_of_destination: declaration.office_of_destination.code.clone(),
                time_limit: declaration.time_limit,
                equipment,
                last_position: None,
                open_alerts: Vec::new(),
                custody_chain: Vec::new(),
                created_at: now,
                updated_at: now,
            },
            alerts: Vec::new(),
            track: Track::default(),
            releases: Vec::new(),
            rules: RulesOverride::default(),
            debounce: Debounce::default(),
        }
    }

    /// Builds the trip from its declaration and every input, in order, as if they had
    /// arrived in order; ends with a tick at `now`. Commands the trip would refuse at their
    /// place in the order are skipped. `trip_rules` are the trip's own thresholds.
    #[allow(clippy::too_many_arguments)]
    pub fn replay(
        trip_id: TripId,
        declaration: &TransitDeclaration,
        created_at: Timestamp,
        trip_rules: &RulesOverride,
        inputs: &[Input],
        geo: &Geography,
        rules: &Rules,
        now: Timestamp,
    ) -> Self {
        let mut ordered: Vec<&Input> = inputs.iter().collect();
        ordered.sort_by_cached_key(|i| i.sort_key());
        let mut trip = Trip::declare(trip_id, declaration, created_at);
        trip.rules = trip_rules.clone();
        for input in ordered {
            let _ = trip.apply(input, geo, rules, now);
        }
        trip.tick(geo, rules, now);
        trip
    }

    /// Continues a trip from a checkpoint (its state after every input up to some time)
    /// with the inputs after it, in order, and a tick at `now`: the same trip
    /// [`Trip::replay`] builds from the declaration.
    pub fn resume(
        mut checkpoint: Trip,
        inputs: &[Input],
        geo: &Geography,
        rules: &Rules,
        now: Timestamp,
    ) -> Self {
        let mut ordered: Vec<&Input> = inputs.iter().collect();
        ordered.sort_by_cached_key(|i| i.sort_key());
        for input in ordered {
            let _ = checkpoint.apply(input, geo, rules, now);
        }
        checkpoint.tick(geo, rules, now);
        checkpoint
    }

    /// When the clock next has something to check: the reporting gap, a stop's limit, the
    /// time limit. `None` when nothing can come due.
    pub fn next_due(&self, geo: &Geography, rules: &Rules) -> Option<Timestamp> {
        let rules = self.rules_for(geo, rules);
        let state = self.status.state;
        let mut due: Vec<Timestamp> = Vec::new();
        if let Some(limit) = self.status.time_limit
            && !matches!(
                state,
                TripState::Arrived | TripState::Released | TripState::Cancelled
            )
            && !self.has_open(AlertKind::Overdue)
        {
            due.push(limit);
        }
        if matches!(state, TripState::Armed | TripState::InTransit)
            && !self.has_open(AlertKind::ReportingGap)
        {
            let since = self
                .track
                .last_fix
                .as_ref()
                .map(|f| f.time)
                .or(self.track.armed_at.as_ref().map(|a| a.time))
                .or(self.track.watermark);
            if let Some(due_at) = since.and_then(|since| after(since, rules.max_gap_s)) {
                due.push(due_at);
            }
        }
        if state == TripState::InTransit
            && !self.has_open(AlertKind::AbnormalStop)
            && let Some(anchor) = &self.track.stop
        {
            match anchor.zone {
                Some(ZoneKind::CustomsOffice | ZoneKind::BorderPost) => {}
                Some(_) => due.extend(after(anchor.since, rules.max_rest_s)),
                None => due.extend(after(anchor.since, rules.max_stop_s)),
            }
        }
        due.into_iter().min()
    }

    fn has_open(&self, kind: AlertKind) -> bool {
        self.alerts
            .iter()
            .any(|a| a.kind == kind && a.cleared_at.is_none())
    }

    /// Whether this trip's seals include the event's seal (by seal id, else by device).
    pub fn has_seal_for(&self, event: &SealEvent) -> bool {
        self.find_seal(event).is_some()
    }

    /// Whether an event comes before what was already applied (it needs a replay).
    pub fn is_late(&self, event: &SealEvent) -> bool {
        self.track.watermark.is_some_and(|w| event.time < w)
    }

    /// The event's seal: by seal id, else by device. A device that reports a seal id this
    /// trip does not know is still this trip's device (the seal may have been replaced or
    /// its number mistyped): its events count, tamper alarms above all.
    fn find_seal(&self, event: &SealEvent) -> Option<(usize, usize)> {
        let position = |test: &dyn Fn(&SealStatus) -> bool| {
            self.status
                .equipment
                .iter()
                .enumerate()
                .find_map(|(e, equipment)| equipment.seals.iter().position(test).map(|s| (e, s)))
        };
        // A seal with a device is that device's: an event of another device naming it is
        // not the seal's (it would let any device speak for any seal).
        position(&|seal| seal.device_id.as_ref() == Some(&event.device_id)).or_else(|| {
            event
                .seal_id
                .as_ref()
                .and_then(|id| position(&|seal| &seal.id == id && seal.device_id.is_none()))
        })
    }

    /// The thresholds in force: the defaults, laid over by the trip's corridor, laid over
    /// by the trip's own.
    pub fn rules_for(&self, geo: &Geography, rules: &Rules) -> Rules {
        let base = match self.corridor(geo) {
            Some(c) => rules.with(&c.rules),
            None => *rules,
        };
        base.with(&self.rules).clamped()
    }

    fn corridor<'g>(&self, geo: &'g Geography) -> Option<&'g CorridorIndex> {
        geo.corridor_for(
            self.status.corridor_id.as_ref(),
            &self.status.office_of_departure,
            &self.status.office_of_destination,
        )
        .map(|c| c.as_ref())
    }

    /// Applies one input. Events for a seal the trip does not carry, and anything after a
    /// final state, change nothing; a command the trip refuses is an error.
    pub fn apply(
        &mut self,
        input: &Input,
        geo: &Geography,
        rules: &Rules,
        now: Timestamp,
    ) -> Result<Vec<Effect>, CommandError> {
        let rules = self.rules_for(geo, rules);
        self.debounce = Debounce::of(&rules);
        let mut fx = Vec::new();
        match input {
            Input::SealEvent(event) => self.on_event(event, geo, &rules, &mut fx),
            Input::Release(release) => self.on_release(release, geo, &mut fx)?,
            Input::Handover(handover) => self.on_handover(handover, &mut fx)?,
            Input::Cancel(cancel) => self.on_cancel(cancel, &mut fx)?,
            Input::SealAssignment(assignment) => self.on_assignment(assignment, &mut fx)?,
            Input::ConflictingEvent(conflict) => self.on_conflict(conflict, geo, &mut fx),
            Input::RefusedEvent(refused) => self.on_refused(refused, &mut fx),
        }
        self.finish(fx, now)
    }

    /// Applies the clock: raises what time alone raises (reporting gap, overdue, a stop
    /// that has gone on too long).
    pub fn tick(&mut self, geo: &Geography, rules: &Rules, now: Timestamp) -> Vec<Effect> {
        let rules = self.rules_for(geo, rules);
        self.debounce = Debounce::of(&rules);
        let mut fx = Vec::new();
        if !self.status.state.is_final() {
            self.check_overdue(now, &mut fx);
            self.check_gap(now, &rules, &mut fx);
            self.check_stop_duration(now, &rules, &mut fx);
        }
        if fx.is_empty() {
            return fx;
        }
        self.finish(fx, now).unwrap_or_default()
    }

    fn finish(&mut self, mut fx: Vec<Effect>, now: Timestamp) -> Result<Vec<Effect>, CommandError> {
        self.status.open_alerts = self
            .alerts
            .iter()
            .filter(|a| a.cleared_at.is_none())
            .map(Alert::as_ref)
            .collect();
        if !fx.is_empty() {
            self.status.updated_at = now;
            let notes: Vec<Effect> = fx
                .iter()
                .filter_map(|e| self.notification_for(e))
                .map(|notification| Effect::Notify {
                    notification: Box::new(notification),
                })
                .collect();
            fx.extend(notes);
        }
        Ok(fx)
    }

    fn notification_for(&self, effect: &Effect) -> Option<StatusNotification> {
        let s = &self.status;
        let base = |kind: NotificationKind, name: String, time: Timestamp| StatusNotification {
            notification_id: Uuid::new_v5(&s.trip_id.0, name.as_bytes()).to_string(),
            kind,
            trip_id: s.trip_id,
            declaration_id: s.declaration_id.clone(),
            issuing_authority: s.issuing_authority.clone(),
            state: s.state,
            time,
            previous_state: None,
            alert: None,
            release: None,
            handover: None,
            position: s.last_position.as_ref().map(|p| LatLon {
                lat: p.lat,
                lon: p.lon,
            }),
            late: false,
        };
        match effect {
            Effect::StateChanged { from, to, at } => Some(StatusNotification {
                previous_state: Some(*from),
                state: *to,
                // Late: the time limit had passed when the goods arrived (an overdue alert
                // was raised, or the arrival itself came after the limit).
                late: matches!(to, TripState::Arrived | TripState::Released)
                    && (self
                        .alerts
                        .iter()
                        .any(|a| a.kind == crate::model::AlertKind::Overdue)
                        || (*to == TripState::Arrived
                            && s.time_limit.is_some_and(|limit| *at > limit))),
                ..base(
                    NotificationKind::Status,
                    format!("status/{}/{}", to.as_str(), at.to_rfc3339()),
                    *at,
                )
            }),
            Effect::AlertRaised { alert } | Effect::AlertCleared { alert } => {
                let phase = if alert.cleared_at.is_some() {
                    "cleared"
                } else {
                    "raised"
                };
                // A reopened alert is told again: each reopening its own notification.
                let phase = match self.track.reopened.get(&alert.alert_id.to_string()) {
                    Some(n) if *n > 0 => format!("{phase}/{n}"),
                    _ => phase.to_owned(),
                };
                Some(StatusNotification {
                    alert: Some(alert.clone()),
                    position: alert.position,
                    ..base(
                        NotificationKind::Alert,
                        format!("alert/{}/{phase}", alert.alert_id),
                        alert.cleared_at.unwrap_or(alert.raised_at),
                    )
                })
            }
            Effect::ReleaseAccepted { release } => Some(StatusNotification {
                // The unlock code is for the seals, not for the partners told of it.
                release: Some(ReleaseAuthorization {
                    one_time_code: WITHHELD.into(),
                    received_at: None,
                    ..release.clone()
                }),
                ..base(
                    NotificationKind::Release,
                    format!("release/{}", release.release_id),
                    release.issued_at,
                )
            }),
            Effect::CustodyChanged { handover } => Some(StatusNotification {
                handover: Some(handover.clone()),
                ..base(
                    NotificationKind::Handover,
                    format!("handover/{}", handover.handover_id),
                    handover.time,
                )
            }),
            _ => None,
        }
    }

    fn on_event(
        &mut self,
        event: &SealEvent,
        geo: &Geography,
        rules: &Rules,
        fx: &mut Vec<Effect>,
    ) {
        if self.status.state == TripState::Cancelled {
            self.on_event_cancelled(event, geo, fx);
            return;
        }
        if self.status.state.is_final() {
            return;
        }
        let Some((e, s)) = self.find_seal(event) else {
            return;
        };
        let evidence = evidence_of(event);
        let seal_id = self.status.equipment[e].seals[s].id.clone();
        // An older event than the seal's latest (applied without replay) does not set the
        // seal's state, battery or arming back in time; its alarms still count.
        let newest = {
            let seal = &mut self.status.equipment[e].seals[s];
            let newest = seal.last_event_at.is_none_or(|t| event.time >= t);
            if newest {
                seal.last_event_at = Some(event.time);
                if event.battery_pct.is_some() {
                    seal.battery_pct = event.battery_pct;
                }
            }
            newest
        };
        if self.track.watermark.is_none_or(|w| event.time > w) {
            self.track.watermark = Some(event.time);
        }

        self.check_overdue(event.time, fx);
        let fix = event
            .position
            .filter(|p| p.is_valid_fix())
            .map(|p| (p.point(), p.speed_kmh, p.is_precise(rules.max_fix_error_m)));
        if let Some((point, speed, precise)) = fix {
            self.on_fix(event, point, speed, precise, &evidence, geo, rules, fx);
        }
        let point = fix
            .map(|(p, _, _)| p)
            .or_else(|| self.track.last_fix.as_ref().map(Fix::point));

        match event.kind {
            SealEventKind::Locked if newest => {
                self.status.equipment[e].seals[s].state = SealState::Locked;
                let at_departure = match point {
                    Some(p) => self.at_departure(geo, p),
                    // Without a position, only a trip with no departure zone can arm.
                    None => !geo.zones.has_office(&self.status.office_of_departure),
                };
                if self.status.state == TripState::Declared
                    && at_departure
                    && self.all_electronic_seals(|st| st == SealState::Locked)
                {
                    self.track.armed_at = point.map(|p| Fix {
                        lat: p.lat,
                        lon: p.lon,
                        time: event.time,
                        evidence: evidence.clone(),
                        precise: true,
                    });
                    self.change_state(TripState::Armed, event.time, fx);
                }
            }
            SealEventKind::Unlocked | SealEventKind::Opened => {
                let new_state = if event.kind == SealEventKind::Opened {
                    SealState::Opened
                } else {
                    SealState::Unlocked
                };
                if newest {
                    self.status.equipment[e].seals[s].state = new_state;
                }
                if matches!(
                    self.status.state,
                    TripState::Armed | TripState::InTransit | TripState::Arrived
                ) {
                    match self.release_covering(geo, event.time, point) {
                        Ok(_) => {
                            if self.all_electronic_seals(|st| {
                                matches!(st, SealState::Unlocked | SealState::Opened)
                            }) {
                                self.close_open_alert(
                                    AlertKind::Overdue,
                                    None,
                                    event.time,
                                    &evidence,
                                    fx,
                                );
                                self.change_state(TripState::Released, event.time, fx);
                            }
                        }
                        Err(why) => self.raise(
                            fx,
                            AlertKind::SealOpened,
                            Severity::High,
                            Some(&seal_id),
                            &evidence,
                            event.time,
                            point,
                            format!("seal {seal_id} reported {}: {why}", event.kind.as_str()),
                        ),
                    }
                }
            }
            kind if kind.is_tamper() => self.tampered(
                fx,
                (e, s),
                newest,
                &evidence,
                event.time,
                point,
                format!("seal {seal_id} reported {}", kind.as_str()),
            ),
            SealEventKind::Jamming => self.raise(
                fx,
                AlertKind::PositionJump,
                Severity::High,
                None,
                &evidence,
                event.time,
                point,
                "the device reported GNSS jamming: positions cannot be trusted".into(),
            ),
            _ => {}
        }

        let battery_low = event.kind == SealEventKind::LowBattery
            || event
                .battery_pct
                .is_some_and(|b| b <= rules.low_battery_pct);
        let recovered = event.battery_pct.is_some_and(|b| {
            u16::from(b)
                > u16::from(rules.low_battery_pct) + u16::from(rules.low_battery_hysteresis_pct)
        });
        if battery_low {
            let last_low = self
                .track
                .battery_low_at
                .entry(seal_id.to_string())
                .or_insert(event.time);
            *last_low = (*last_low).max(event.time);
            let level = event
                .battery_pct
                .map_or("a low level".to_owned(), |b| format!("{b}%"));
            self.raise(
                fx,
                AlertKind::LowBattery,
                Severity::Medium,
                Some(&seal_id),
                &evidence,
                event.time,
                point,
                format!("seal {seal_id} battery at {level}"),
            );
        } else if recovered
            && self
                .track
                .battery_low_at
                .get(seal_id.as_str())
                .is_none_or(|low| {
                    after(*low, rules.low_battery_clear_s).is_some_and(|quiet| event.time >= quiet)
                })
        {
            // A battery flapping between low and full keeps its one alert open.
            self.close_open_alert(
                AlertKind::LowBattery,
                Some(&seal_id),
                event.time,
                &evidence,
                fx,
            );
        }
    }

    /// A seal event for a cancelled trip: its seals are still watched (until released at
    /// an approved place or taken by another trip, which then gets their events). An
    /// opening no release covers, or a tampering, is an alert; the rest changes nothing.
    fn on_event_cancelled(&mut self, event: &SealEvent, geo: &Geography, fx: &mut Vec<Effect>) {
        let Some((e, s)) = self.find_seal(event) else {
            return;
        };
        let evidence = evidence_of(event);
        let seal_id = self.status.equipment[e].seals[s].id.clone();
        let newest = {
            let seal = &mut self.status.equipment[e].seals[s];
            let newest = seal.last_event_at.is_none_or(|t| event.time >= t);
            if newest {
                seal.last_event_at = Some(event.time);
            }
            newest
        };
        if self.track.watermark.is_none_or(|w| event.time > w) {
            self.track.watermark = Some(event.time);
        }
        let point = event
            .position
            .filter(|p| p.is_valid_fix())
            .map(|p| p.point())
            .or_else(|| self.track.last_fix.as_ref().map(Fix::point));
        match event.kind {
            SealEventKind::Unlocked | SealEventKind::Opened => {
                if newest {
                    self.status.equipment[e].seals[s].state = if event.kind == SealEventKind::Opened
                    {
                        SealState::Opened
                    } else {
                        SealState::Unlocked
                    };
                }
                let covered = self.release_covering(geo, event.time, point).map(|_| ());
                if covered.is_ok() {
                    self.track.released_after_cancel.insert(seal_id.to_string());
                }
                if let Err(why) = covered {
                    self.raise(
                        fx,
                        AlertKind::SealOpened,
                        Severity::High,
                        Some(&seal_id),
                        &evidence,
                        event.time,
                        point,
                        format!(
                            "seal {seal_id} reported {} after the trip was cancelled: {why}",
                            event.kind.as_str()
                        ),
                    );
                }
            }
            SealEventKind::Locked if newest => {
                self.status.equipment[e].seals[s].state = SealState::Locked;
            }
            kind if kind.is_tamper() => self.tampered(
                fx,
                (e, s),
                newest,
                &evidence,
                event.time,
                point,
                format!(
                    "seal {seal_id} reported {} after the trip was cancelled",
                    kind.as_str()
                ),
            ),
            _ => {}
        }
    }

    /// Keeps what a rebuild must not take away: a tamper alert the trip had (raised for an
    /// opening or tampering, and told) stays, as it was, if the replay did not raise it
    /// again, and stays open if it was; a justification stays with its alert. Called on the
    /// rebuilt trip with the trip as it stood before the rebuild.
    pub fn keep_tamper_alerts(&mut self, before: &Trip) {
        for old in before.alerts.iter().filter(|a| a.kind.is_tamper()) {
            if !self.alerts.iter().any(|a| a.alert_id == old.alert_id) {
                // The replay saw the same incident from an earlier event (a late one): its
                // alert has another id. It keeps the id it was told under (updated with
                // the earlier time and evidence), never a withdrawal and a new raise.
                let same_incident = self.alerts.iter().position(|a| {
                    a.kind == old.kind
                        && a.seal_id == old.seal_id
                        && !before.alerts.iter().any(|b| b.alert_id == a.alert_id)
                        && a.evidence.iter().any(|e| old.evidence.contains(e))
                });
                match same_incident {
                    Some(i) => {
                        let renamed = self.alerts[i].alert_id.to_string();
                        self.alerts[i].alert_id = old.alert_id;
                        let kept = old.alert_id.to_string();
                        if let Some(n) = self.track.reopened.remove(&renamed) {
                            self.track.reopened.insert(kept.clone(), n);
                        }
                        if let Some(t) = self.track.held.remove(&renamed) {
                            self.track.held.insert(kept, t);
                        }
                    }
                    None => {
                        self.alerts.push(old.clone());
                        continue;
                    }
                }
            }
            match self.alerts.iter_mut().find(|a| a.alert_id == old.alert_id) {
                None => self.alerts.push(old.clone()),
                Some(new) => {
                    if old.justified.is_some() {
                        new.justified = old.justified.clone();
                        new.cleared_at = old.cleared_at;
                    } else if old.cleared_at.is_none() {
                        new.cleared_at = None;
                    }
                    for e in &old.evidence {
                        if new.evidence.len() < MAX_EVIDENCE && !new.evidence.contains(e) {
                            new.evidence.push(e.clone());
                        }
                    }
                }
            }
        }
        self.refresh_open_alerts();
    }

    fn refresh_open_alerts(&mut self) {
        self.status.open_alerts = self
            .alerts
            .iter()
            .filter(|a| a.cleared_at.is_none())
            .map(Alert::as_ref)
            .collect();
    }

    /// Marks a tamper alert justified (and closes it if open): the alert stays, with the
    /// reason and who gave it; partners that were told of alerts are told of this too
    /// (an `alert` notification `alert/{id}/justified`).
    pub fn justify(
        &mut self,
        alert_id: crate::AlertId,
        justification: crate::Justification,
    ) -> Result<Vec<Effect>, CommandError> {
        let at = justification.at;
        let Some(alert) = self.alerts.iter_mut().find(|a| a.alert_id == alert_id) else {
            return Err(refuse("alert_id", "no such alert on this trip"));
        };
        if !alert.kind.is_tamper() {
            return Err(refuse(
                "alert_id",
                format!(
                    "a {} alert is not justified: only seal_opened and seal_tamper alerts are",
                    alert.kind.as_str()
                ),
            ));
        }
        if alert.justified.is_some() {
            return Err(refuse("alert_id", "the alert is justified already"));
        }
        if alert.cleared_at.is_none() {
            alert.cleared_at = Some(at);
        }
        alert.justified = Some(justification);
        let alert = alert.clone();
        self.track.held.remove(&alert.alert_id.to_string());
        self.refresh_open_alerts();
        self.status.updated_at = at;
        let note = StatusNotification {
            notification_id: Uuid::new_v5(
                &self.status.trip_id.0,
                format!("alert/{}/justified", alert.alert_id).as_bytes(),
            )
            .to_string(),
            kind: NotificationKind::Alert,
            trip_id: self.status.trip_id,
            declaration_id: self.status.declaration_id.clone(),
            issuing_authority: self.status.issuing_authority.clone(),
            state: self.status.state,
            time: at,
            previous_state: None,
            alert: Some(alert.clone()),
            release: None,
            handover: None,
            position: alert.position,
            late: false,
        };
        Ok(vec![
            Effect::AlertUpdated { alert },
            Effect::Notify {
                notification: Box::new(note),
            },
        ])
    }

    /// An event refused by device authentication: `device_auth_failure` on the seal its
    /// device (or seal id) names, or on the trip; nothing else of it is believed.
    fn on_refused(&mut self, refused: &RefusedEvent, fx: &mut Vec<Effect>) {
        if self.status.state.is_final() {
            return;
        }
        let event = &refused.event;
        let seal_id = self
            .find_seal(event)
            .map(|(e, s)| self.status.equipment[e].seals[s].id.clone());
        let point = self.track.last_fix.as_ref().map(Fix::point);
        self.raise(
            fx,
            AlertKind::DeviceAuthFailure,
            Severity::High,
            seal_id.as_ref(),
            &refused.evidence(),
            event.time,
            point,
            format!(
                "device {} sent {} ({}) that failed authentication: {}; kept as evidence, not applied",
                event.device_id,
                event.kind.as_str(),
                evidence_of(event),
                refused.reason
            ),
        );
    }

    /// A conflicting event: `event_conflict` on its seal, and its alarm if it carries one;
    /// the seal's state, battery and the track stay as the stored events made them.
    fn on_conflict(&mut self, conflict: &ConflictingEvent, geo: &Geography, fx: &mut Vec<Effect>) {
        if self.status.state.is_final() {
            return;
        }
        let event = &conflict.event;
        let Some((e, s)) = self.find_seal(event) else {
            return;
        };
        let seal_id = self.status.equipment[e].seals[s].id.clone();
        let evidence = conflict.evidence();
        let point = event
            .position
            .filter(|p| p.is_valid_fix())
            .map(|p| p.point())
            .or_else(|| self.track.last_fix.as_ref().map(Fix::point));
        self.raise(
            fx,
            AlertKind::EventConflict,
            Severity::High,
            Some(&seal_id),
            &evidence,
            event.time,
            point,
            format!(
                "device {} sent {} ({}) that contradicts stored event {}: one of the two is not genuine",
                event.device_id,
                event.kind.as_str(),
                evidence_of(event),
                conflict.conflicts_with
            ),
        );
        let watched = matches!(
            self.status.state,
            TripState::Armed | TripState::InTransit | TripState::Arrived
        );
        if event.kind.is_tamper() {
            self.raise(
                fx,
                AlertKind::SealTamper,
                Severity::Critical,
                Some(&seal_id),
                &evidence,
                event.time,
                point,
                format!(
                    "seal {seal_id} reported {} (in an event that conflicts with a stored one)",
                    event.kind.as_str()
                ),
            );
        } else if watched
            && matches!(event.kind, SealEventKind::Opened | SealEventKind::Unlocked)
            && let Err(why) = self.release_covering(geo, event.time, point)
        {
            self.raise(
                fx,
                AlertKind::SealOpened,
                Severity::High,
                Some(&seal_id),
                &evidence,
                event.time,
                point,
                format!(
                    "seal {seal_id} reported {} (in an event that conflicts with a stored one): {why}",
                    event.kind.as_str()
                ),
            );
        }
    }

    /// Rules that need a position: gap, jump, departure and arrival, corridor, stops.
    #[allow(clippy::too_many_arguments)]
    fn on_fix(
        &mut self,
        event: &SealEvent,
        point: LatLon,
        speed: Option<f64>,
        precise: bool,
        evidence: &str,
        geo: &Geography,
        rules: &Rules,
        fx: &mut Vec<Effect>,
    ) {
        let watched = matches!(self.status.state, TripState::Armed | TripState::InTransit);
        let newest = self
            .track
            .last_fix
            .as_ref()
            .is_none_or(|last| event.time > last.time);
        if !newest {
            // An equal-time or older fix (replays put late ones in order before they get
            // here) adds nothing to the movement rules.
            return;
        }
        // Only what the rules need of the last fix: no clone of its evidence per event.
        if let Some((last_point, last_time)) =
            self.track.last_fix.as_ref().map(|f| (f.point(), f.time))
        {
            if watched {
                // A fix arriving after a gap: the gap is raised (if a tick did not already)
                // and cleared now.
                self.check_gap(event.time, rules, fx);
            }
            let dt = (event.time - last_time).num_milliseconds() as f64 / 1000.0;
            let d = distance_m(last_point, point);
            let last_precise = self.track.last_fix.as_ref().is_some_and(|f| f.precise);
            if !(precise && last_precise) {
                // A coarse fix is kilometres off by nature: no speed can be read from it.
            } else if d >= rules.jump_min_distance_m
                && dt > 0.0
                && d / dt * 3.6 > rules.max_speed_kmh
            {
                self.raise(
                    fx,
                    AlertKind::PositionJump,
                    Severity::High,
                    None,
                    evidence,
                    event.time,
                    Some(point),
                    format!(
                        "{:.1} km in {:.0} s ({:.0} km/h) since {}",
                        d / 1000.0,
                        dt,
                        d / dt * 3.6,
                        self.track
                            .last_fix
                            .as_ref()
                            .map_or("", |f| f.evidence.as_str())
                    ),
                );
            } else {
                self.close_open_alert(AlertKind::PositionJump, None, event.time, evidence, fx);
            }
        }
        self.close_open_alert(AlertKind::ReportingGap, None, event.time, evidence, fx);
        self.track.last_fix = Some(Fix {
            lat: point.lat,
            lon: point.lon,
            time: event.time,
            evidence: evidence.to_owned(),
            precise,
        });
        self.status.last_position = Some(LastPosition {
            lat: point.lat,
            lon: point.lon,
            time: event.time,
            speed_kmh: speed,
            device_id: Some(event.device_id.clone()),
        });

        if !precise {
            return;
        }
        // Zone transitions need `zone_fixes` precise fixes in a row that agree.
        let at_destination = geo
            .zones
            .in_office(&self.status.office_of_destination, point);
        let moving_on = match self.status.state {
            TripState::Armed => {
                !self.at_departure(geo, point) || self.left_arming_radius(geo, point, rules)
            }
            TripState::InTransit => at_destination,
            // Left the destination office again without a release.
            TripState::Arrived => !at_destination,
            _ => false,
        };
        self.track.zone_fixes = if moving_on {
            self.track.zone_fixes + 1
        } else {
            0
        };
        if self.track.zone_fixes >= rules.zone_fixes {
            self.track.zone_fixes = 0;
            match self.status.state {
                TripState::Armed | TripState::Arrived => {
                    self.change_state(TripState::InTransit, event.time, fx)
                }
                TripState::InTransit => {
                    self.settle_open_alert(
                        AlertKind::RouteDeviation,
                        None,
                        event.time,
                        evidence,
                        fx,
                    );
                    self.settle_open_alert(AlertKind::AbnormalStop, None, event.time, evidence, fx);
                    self.settle_open_alert(AlertKind::Overdue, None, event.time, evidence, fx);
                    self.change_state(TripState::Arrived, event.time, fx);
                }
                _ => {}
            }
        }
        if self.status.state == TripState::InTransit {
            self.check_corridor(geo, point, event.time, evidence, rules, fx);
            // Waiting at the office before leaving is not a stop; in transit it is.
            self.check_stop(geo, point, speed, event.time, evidence, rules, fx);
        }
    }

    /// Inside the departure office's zone; where none is registered, anywhere counts.
    fn at_departure(&self, geo: &Geography, p: LatLon) -> bool {
        let office = &self.status.office_of_departure;
        !geo.zones.has_office(office) || geo.zones.in_office(office, p)
    }

    fn left_arming_radius(&self, geo: &Geography, p: LatLon, rules: &Rules) -> bool {
        !geo.zones.has_office(&self.status.office_of_departure)
            && self
                .track
                .armed_at
                .as_ref()
                .is_some_and(|a| distance_m(a.point(), p) > rules.departure_radius_m)
    }

    #[allow(clippy::too_many_arguments)]
    fn check_corridor(
        &mut self,
        geo: &Geography,
        p: LatLon,
        time: Timestamp,
        evidence: &str,
        rules: &Rules,
        fx: &mut Vec<Effect>,
    ) {
        let Some(corridor) = self.corridor(geo) else {
            return;
        };
        // Offices and border posts may lie off the line; being in one is not a deviation.
        let inside = corridor.contains(p)
            || geo
                .zones
                .containing(p)
                .any(|z| matches!(z.kind, ZoneKind::CustomsOffice | ZoneKind::BorderPost));
        let t = &mut self.track;
        if inside {
            // Any fix inside breaks a run of outside fixes; clearing an open deviation
            // takes `deviation_clear_fixes` in a row.
            t.outside_fixes = 0;
            t.outside_since = None;
            t.inside_fixes += 1;
            if t.inside_fixes >= rules.deviation_clear_fixes {
                self.close_open_alert(AlertKind::RouteDeviation, None, time, evidence, fx);
            }
            return;
        }
        t.inside_fixes = 0;
        t.outside_fixes += 1;
        let since = *t.outside_since.get_or_insert(time);
        if t.outside_fixes >= rules.deviation_min_fixes
            && (time - since).num_seconds() >= rules.deviation_min_s
        {
            let off = corridor
                .distance_within(p, 100_000.0)
                .map_or("over 100 km".to_owned(), |d| format!("{:.0} m", d));
            let half = corridor.half_width_m();
            let id = corridor.id.clone();
            self.raise(
                fx,
                AlertKind::RouteDeviation,
                Severity::High,
                None,
                evidence,
                time,
                Some(p),
                format!("{off} from corridor {id} (allowed {half:.0} m)"),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_stop(
        &mut self,
        geo: &Geography,
        p: LatLon,
        speed: Option<f64>,
        time: Timestamp,
        evidence: &str,
        rules: &Rules,
        fx: &mut Vec<Effect>,
    ) {
        let slow = speed.is_none_or(|s| s <= rules.stop_speed_kmh);
        let still = self.track.stop.as_ref().is_some_and(|a| {
            slow && distance_m(
                LatLon {
                    lat: a.lat,
                    lon: a.lon,
                },
                p,
            ) <= rules.stop_radius_m
        });
        if still {
            self.check_stop_duration(time, rules, fx);
            return;
        }
        if self.track.stop.take().is_some() {
            self.close_open_alert(AlertKind::AbnormalStop, None, time, evidence, fx);
        }
        if slow {
            self.track.stop = Some(StopAnchor {
                lat: p.lat,
                lon: p.lon,
                since: time,
                zone: geo.zones.stop_allowed(p),
                evidence: evidence.to_owned(),
            });
        }
    }

    /// The stop (if any) has lasted longer than its place allows by `now`.
    fn check_stop_duration(&mut self, now: Timestamp, rules: &Rules, fx: &mut Vec<Effect>) {
        if self.status.state != TripState::InTransit {
            return;
        }
        let Some((zone, since)) = self.track.stop.as_ref().map(|a| (a.zone, a.since)) else {
            return;
        };
        let limit = match zone {
            Some(ZoneKind::CustomsOffice | ZoneKind::BorderPost) => return,
            Some(_) => rules.max_rest_s,
            None => rules.max_stop_s,
        };
        let Some(due) = after(since, limit) else {
            return;
        };
        if now > due {
            let Some(anchor) = self.track.stop.clone() else {
                return;
            };
            let place = if anchor.zone.is_some() {
                "in a rest area"
            } else {
                "outside permitted stops"
            };
            self.raise(
                fx,
                AlertKind::AbnormalStop,
                Severity::High,
                None,
                &anchor.evidence,
                due,
                Some(LatLon {
                    lat: anchor.lat,
                    lon: anchor.lon,
                }),
                format!(
                    "stopped {place} since {} (allowed {limit} s)",
                    anchor.since.to_rfc3339()
                ),
            );
        }
    }

    /// No valid fix for longer than allowed by `now`: raised at the moment the gap began
    /// to exceed the limit, whether a tick or the next event finds it.
    fn check_gap(&mut self, now: Timestamp, rules: &Rules, fx: &mut Vec<Effect>) {
        if !matches!(self.status.state, TripState::Armed | TripState::InTransit) {
            return;
        }
        let since = match (&self.track.last_fix, &self.track.armed_at) {
            (Some(f), _) => f.time,
            (None, Some(a)) => a.time,
            (None, None) => match self.track.watermark {
                Some(w) => w,
                None => return,
            },
        };
        let Some(due) = after(since, rules.max_gap_s) else {
            return;
        };
        if now > due {
            let (evidence, point) = match (&self.track.last_fix, &self.track.armed_at) {
                (Some(f), _) => (f.evidence.clone(), Some(f.point())),
                (None, Some(a)) => (a.evidence.clone(), Some(a.point())),
                (None, None) => ("watermark".to_owned(), None),
            };
            self.raise(
                fx,
                AlertKind::ReportingGap,
                Severity::Medium,
                None,
                &evidence,
                due,
                point,
                format!("no valid fix since {}", since.to_rfc3339()),
            );
        }
    }

    /// The time limit has passed before arrival.
    fn check_overdue(&mut self, now: Timestamp, fx: &mut Vec<Effect>) {
        let Some(limit) = self.status.time_limit else {
            return;
        };
        if now <= limit
            || matches!(
                self.status.state,
                TripState::Arrived | TripState::Released | TripState::Cancelled
            )
        {
            return;
        }
        let point = self.track.last_fix.as_ref().map(Fix::point);
        // The same evidence whoever finds it (a tick or an event), so the id is stable.
        self.raise(
            fx,
            AlertKind::Overdue,
            Severity::High,
            None,
            "time_limit",
            limit,
            point,
            format!("time limit {} passed before arrival", limit.to_rfc3339()),
        );
    }

    /// The release authorization that makes an opening at `time` and `point` lawful, or
    /// why none does.
    fn release_covering(
        &self,
        geo: &Geography,
        time: Timestamp,
        point: Option<LatLon>,
    ) -> Result<&ReleaseAuthorization, String> {
        if self.releases.is_empty() {
            return Err("no release authorization".into());
        }
        let in_window: Vec<_> = self
            .releases
            .iter()
            .filter(|r| r.valid_from <= time && time <= r.valid_until)
            .collect();
        if in_window.is_empty() {
            return Err("outside the window of every release authorization".into());
        }
        // A release covers what happens once it is given, never an opening that had
        // already happened when it reached the gateway (that one is justified, as its own
        // act, or stays an alert), whatever its dates say.
        let in_window: Vec<_> = in_window
            .into_iter()
            .filter(|r| time >= r.received_at.unwrap_or(r.issued_at))
            .collect();
        if in_window.is_empty() {
            return Err(
                "before the release authorization of that window reached the gateway".into(),
            );
        }
        let Some(p) = point else {
            return Err("no position to prove the seal is at the release place".into());
        };
        in_window
            .into_iter()
            .find(|r| geo.zones.zone_contains(&r.place, p))
            .ok_or_else(|| "outside the release place".into())
    }

    /// A command must name this trip, and the trip must still be open.
    fn check_target(&self, trip_id: TripId, what: &str) -> Result<(), CommandError> {
        if trip_id != self.status.trip_id {
            return Err(refuse("trip_id", format!("the {what} names another trip")));
        }
        if self.status.state.is_final() {
            return Err(refuse(
                "trip_id",
                format!("the trip is {}", self.status.state.as_str()),
            ));
        }
        Ok(())
    }

    fn on_release(
        &mut self,
        release: &ReleaseAuthorization,
        geo: &Geography,
        fx: &mut Vec<Effect>,
    ) -> Result<(), CommandError> {
        // A cancelled trip's seals are still watched until they are released at an
        // approved place: a release is still taken then.
        if self.status.state == TripState::Cancelled {
            if release.trip_id != self.status.trip_id {
                return Err(refuse("trip_id", "the release names another trip"));
            }
        } else {
            self.check_target(release.trip_id, "release")?;
        }
        let earlier = self
            .releases
            .iter()
            .find(|r| r.release_id == release.release_id);
        // Releases are kept with their code hashed: a release sent again with the same
        // code is the same release.
        let kept = release_code_hashed(release);
        if let Some(repeat) = repeated(earlier, &kept, "release_id") {
            return repeat;
        }
        let s = &self.status;
        if release.authority != s.custodian {
            return Err(refuse(
                "authority",
                format!("only the current custodian {} may release", s.custodian),
            ));
        }
        let zone = geo
            .zones
            .get(&release.place)
            .ok_or_else(|| refuse("place", format!("no zone {} is registered", release.place)))?;
        let approved = zone.kind == ZoneKind::ReleasePlace
            || (zone.kind == ZoneKind::CustomsOffice
                && zone.office_code.as_ref() == Some(&s.office_of_destination));
        if !approved {
            return Err(refuse(
                "place",
                format!(
                    "zone {} is neither a release place nor the destination office",
                    release.place
                ),
            ));
        }
        if release.valid_until <= release.valid_from {
            return Err(refuse("valid_until", "must be after valid_from"));
        }
        if release.valid_from.signed_duration_since(release.issued_at)
            > Duration::days(MAX_RELEASE_SCHEDULE_DAYS)
        {
            return Err(refuse(
                "valid_from",
                format!(
                    "a release is scheduled at most {MAX_RELEASE_SCHEDULE_DAYS} days after \
                     its issued_at"
                ),
            ));
        }
        if release
            .valid_until
            .signed_duration_since(release.valid_from)
            > Duration::hours(MAX_RELEASE_WINDOW_H)
        {
            return Err(refuse(
                "valid_until",
                format!("a release window is at most {MAX_RELEASE_WINDOW_H} hours"),
            ));
        }
        let code_len = release.one_time_code.chars().count();
        // A stored release read back for a replay carries its code's hash.
        if !(4..=32).contains(&code_len) && !code_is_hashed(&release.one_time_code) {
            return Err(refuse("one_time_code", "must have 4 to 32 characters"));
        }
        self.releases.push(kept);
        fx.push(Effect::ReleaseAccepted {
            release: release.clone(),
        });
        let commands: Vec<SealCommand> = self
            .status
            .equipment
            .iter()
            .flat_map(|e| e.seals.iter())
            .filter(|seal| seal.kind == SealKind::Electronic)
            .filter_map(|seal| {
                let device_id = seal.device_id.clone()?;
                let name = format!("unlock/{}/{}", release.release_id, seal.id);
                Some(SealCommand {
                    command_id: Uuid::new_v5(&self.status.trip_id.0, name.as_bytes()).to_string(),
                    trip_id: self.status.trip_id,
                    seal_id: seal.id.clone(),
                    device_id,
                    command: "unlock".into(),
                    one_time_code: release.one_time_code.clone(),
                    release_id: release.release_id.clone(),
                    valid_until: release.valid_until,
                })
            })
            .collect();
        fx.extend(
            commands
                .into_iter()
                .map(|command| Effect::SealCommand { command }),
        );
        Ok(())
    }

    fn on_handover(
        &mut self,
        handover: &CustodyHandover,
        fx: &mut Vec<Effect>,
    ) -> Result<(), CommandError> {
        self.check_target(handover.trip_id, "handover")?;
        let earlier = self
            .status
            .custody_chain
            .iter()
            .find(|h| h.handover_id == handover.handover_id);
        if let Some(repeat) = repeated(earlier, handover, "handover_id") {
            return repeat;
        }
        let s = &self.status;
        if handover.from_authority != s.custodian {
            return Err(refuse(
                "from_authority",
                format!("the trip is in the custody of {}", s.custodian),
            ));
        }
        if handover.to_authority == handover.from_authority {
            return Err(refuse(
                "to_authority",
                "custody passes to another authority",
            ));
        }
        self.status.custodian = handover.to_authority.clone();
        self.status.custody_chain.push(handover.clone());
        fx.push(Effect::CustodyChanged {
            handover: handover.clone(),
        });
        if handover.seal_check == SealCheck::Discrepancy {
            let point = self.track.last_fix.as_ref().map(Fix::point);
            self.raise(
                fx,
                AlertKind::SealTamper,
                Severity::Critical,
                None,
                &format!("handover:{}", handover.handover_id),
                handover.time,
                point,
                format!(
                    "seal check at handover {} → {} found a discrepancy",
                    handover.from_authority, handover.to_authority
                ),
            );
        }
        Ok(())
    }

    /// Ties seals to the trip's containers. A seal the trip lists as unassigned moves to
    /// its container, whatever the state; a seal the trip does not know yet, or a
    /// container it does not carry, joins only before departure (afterwards a new seal is
    /// a replacement, which an officer records at a handover). A seal already on another
    /// container, or a device already on another seal, is refused.
    fn on_assignment(
        &mut self,
        assignment: &SealAssignment,
        fx: &mut Vec<Effect>,
    ) -> Result<(), CommandError> {
        let state = self.status.state;
        if state.is_final() || state == TripState::Arrived {
            return Err(refuse(
                "equipment",
                format!(
                    "the trip is {}: its seals can no longer change",
                    state.as_str()
                ),
            ));
        }
        let before_departure = matches!(state, TripState::Declared | TripState::Armed);
        // Worked on a copy: a refusal part-way leaves the trip as it was.
        let mut equipment = self.status.equipment.clone();
        let mut changed: Vec<Equipment> = Vec::new();
        for wanted in &assignment.equipment {
            if wanted.id.as_str() == UNASSIGNED_EQUIPMENT {
                return Err(refuse(
                    "equipment",
                    format!("{UNASSIGNED_EQUIPMENT} is not a container"),
                ));
            }
            let mut gained = Vec::new();
            for seal in &wanted.seals {
                let found = equipment.iter().enumerate().find_map(|(e, eq)| {
                    eq.seals
                        .iter()
                        .position(|s| s.id == seal.id)
                        .map(|s| (e, s))
                });
                let status = match found {
                    Some((e, _)) if equipment[e].id == wanted.id => continue,
                    Some((e, s)) if equipment[e].id.as_str() == UNASSIGNED_EQUIPMENT => {
                        let mut status = equipment[e].seals.remove(s);
                        if status.device_id.is_none() {
                            status.device_id = seal.device_id.clone();
                        }
                        status
                    }
                    Some((e, _)) => {
                        return Err(refuse(
                            "equipment",
                            format!(
                                "seal {} is already on container {}",
                                seal.id, equipment[e].id
                            ),
                        ));
                    }
                    None if !before_departure => {
                        return Err(refuse(
                            "equipment",
                            format!(
                                "seal {} is new and the trip is {}: a seal replaced in transit is recorded by an officer at a handover",
                                seal.id,
                                state.as_str()
                            ),
                        ));
                    }
                    None => SealStatus {
                        id: seal.id.clone(),
                        kind: seal.kind,
                        device_id: seal.device_id.clone(),
                        state: SealState::Unknown,
                        battery_pct: None,
                        last_event_at: None,
                    },
                };
                if let Some(device) = &status.device_id
                    && let Some(other) = equipment
                        .iter()
                        .flat_map(|e| e.seals.iter())
                        .find(|s| s.device_id.as_ref() == Some(device) && s.id != status.id)
                {
                    return Err(refuse(
                        "equipment",
                        format!("device {device} is already seal {}", other.id),
                    ));
                }
                let target = match equipment.iter().position(|e| e.id == wanted.id) {
                    Some(i) => i,
                    None => {
                        if !before_departure {
                            return Err(refuse(
                                "equipment",
                                format!(
                                    "container {} is not on this trip, which is {}",
                                    wanted.id,
                                    state.as_str()
                                ),
                            ));
                        }
                        equipment.push(EquipmentStatus {
                            id: wanted.id.clone(),
                            seals: Vec::new(),
                        });
                        equipment.len() - 1
                    }
                };
                gained.push(crate::model::Seal {
                    id: status.id.clone(),
                    kind: status.kind,
                    device_id: status.device_id.clone(),
                });
                equipment[target].seals.push(status);
            }
            if !gained.is_empty() {
                changed.push(Equipment {
                    id: wanted.id.clone(),
                    seals: gained,
                });
            }
        }
        equipment.retain(|e| e.id.as_str() != UNASSIGNED_EQUIPMENT || !e.seals.is_empty());
        self.status.equipment = equipment;
        if !changed.is_empty() {
            fx.push(Effect::SealsAssigned {
                reference: assignment.reference.clone(),
                equipment: changed,
                at: assignment.assigned_at,
            });
        }
        Ok(())
    }

    fn on_cancel(
        &mut self,
        cancel: &Cancellation,
        fx: &mut Vec<Effect>,
    ) -> Result<(), CommandError> {
        self.check_target(cancel.trip_id, "cancellation")?;
        if cancel.authority != self.status.issuing_authority {
            return Err(refuse(
                "authority",
                format!(
                    "only the issuing authority {} may cancel",
                    self.status.issuing_authority
                ),
            ));
        }
        let open: Vec<(AlertKind, Option<SealId>)> = self
            .alerts
            .iter()
            // An opening or tampering stays on record, open: cancelling the trip does not
            // make it go away (it is justified, as its own act, or stays).
            .filter(|a| a.cleared_at.is_none() && !a.kind.is_tamper())
            .map(|a| (a.kind, a.seal_id.clone()))
            .collect();
        for (kind, seal) in open {
            self.settle_open_alert(kind, seal.as_ref(), cancel.time, "cancelled", fx);
        }
        self.change_state(TripState::Cancelled, cancel.time, fx);
        Ok(())
    }

    fn all_electronic_seals(&self, test: impl Fn(SealState) -> bool) -> bool {
        let mut electronic = self
            .status
            .equipment
            .iter()
            .flat_map(|e| e.seals.iter())
            .filter(|s| s.kind == SealKind::Electronic)
            .peekable();
        electronic.peek().is_some() && electronic.all(|s| test(s.state))
    }

    fn change_state(&mut self, to: TripState, at: Timestamp, fx: &mut Vec<Effect>) {
        let from = self.status.state;
        if from != to {
            self.status.state = to;
            fx.push(Effect::StateChanged { from, to, at });
        }
    }

    fn open_alert_mut(&mut self, kind: AlertKind, seal_id: Option<&SealId>) -> Option<&mut Alert> {
        self.alerts
            .iter_mut()
            .find(|a| a.kind == kind && a.cleared_at.is_none() && a.seal_id.as_ref() == seal_id)
    }

    /// Clears the open alert of this rule (and seal) because its condition ended, unless
    /// it has been raised `max_alerts_per_window` times within `alert_window_s`: then its
    /// clearing is held (it stays open, so a flapping condition cannot raise and clear
    /// without end) until a later end of the condition finds the window freed, or the
    /// condition recurs once it is (a new, notified alert: see [`Trip::raise`]).
    fn close_open_alert(
        &mut self,
        kind: AlertKind,
        seal_id: Option<&SealId>,
        at: Timestamp,
        evidence: &str,
        fx: &mut Vec<Effect>,
    ) {
        let Some(open) = self
            .alerts
            .iter()
            .find(|a| a.kind == kind && a.cleared_at.is_none() && a.seal_id.as_ref() == seal_id)
            .map(|a| a.alert_id.to_string())
        else {
            return;
        };
        if self.raisings_in_window(kind, seal_id, at) >= self.debounce.max {
            self.track.held.entry(open).or_insert(at);
            return;
        }
        self.settle_open_alert(kind, seal_id, at, evidence, fx);
    }

    fn raising_key(kind: AlertKind, seal_id: Option<&SealId>) -> String {
        format!("{}/{}", kind.as_str(), seal_id.map_or("-", |s| s.as_str()))
    }

    /// When a raising at this moment leaves the window.
    fn window_start(&self, at: Timestamp) -> Timestamp {
        Duration::try_seconds(self.debounce.window_s)
            .and_then(|w| at.checked_sub_signed(w))
            .unwrap_or(at)
    }

    /// How many times alerts of this rule (and seal) were raised (new or reopened) in the
    /// window before `at`. Clearings do not count.
    fn raisings_in_window(&self, kind: AlertKind, seal_id: Option<&SealId>, at: Timestamp) -> u32 {
        let since = self.window_start(at);
        self.track
            .raisings
            .get(&Self::raising_key(kind, seal_id))
            .map_or(0, |times| {
                u32::try_from(times.iter().filter(|t| **t > since).count()).unwrap_or(u32::MAX)
            })
    }

    /// Counts a raising at `at`; the times that left the window are dropped, and no more
    /// are kept than the cap needs.
    fn count_raising(&mut self, kind: AlertKind, seal_id: Option<&SealId>, at: Timestamp) {
        let since = self.window_start(at);
        let keep = usize::try_from(self.debounce.max).unwrap_or(usize::MAX);
        let times = self
            .track
            .raisings
            .entry(Self::raising_key(kind, seal_id))
            .or_default();
        times.retain(|t| *t > since);
        times.push(at);
        times.sort();
        if times.len() > keep {
            let extra = times.len() - keep;
            times.drain(..extra);
        }
    }

    /// Clears the open alert of this rule (and seal) whatever its recurrences: the trip
    /// arrived, was released or cancelled.
    fn settle_open_alert(
        &mut self,
        kind: AlertKind,
        seal_id: Option<&SealId>,
        at: Timestamp,
        evidence: &str,
        fx: &mut Vec<Effect>,
    ) {
        let Some(index) = self.alerts.iter().position(|a| {
            a.kind == kind && a.cleared_at.is_none() && a.seal_id.as_ref() == seal_id
        }) else {
            return;
        };
        self.track
            .held
            .remove(&self.alerts[index].alert_id.to_string());
        let alert = &mut self.alerts[index];
        if at < alert.raised_at {
            // Raised by the clock (a gap, a stop, the time limit) for a moment the condition
            // did not reach: buffered data now shows it never was.
            let alert = self.alerts.remove(index);
            fx.push(Effect::AlertWithdrawn { alert });
            return;
        }
        alert.cleared_at = Some(at);
        if !alert.evidence.iter().any(|e| e == evidence) {
            alert.evidence.push(evidence.to_owned());
        }
        fx.push(Effect::AlertCleared {
            alert: alert.clone(),
        });
    }

    /// A seal (equipment `e`, seal `s`) reported tampering: its state, if this is its newest
    /// event, and a critical `seal_tamper` alert.
    #[allow(clippy::too_many_arguments)]
    fn tampered(
        &mut self,
        fx: &mut Vec<Effect>,
        (e, s): (usize, usize),
        newest: bool,
        evidence: &str,
        at: Timestamp,
        point: Option<LatLon>,
        detail: String,
    ) {
        if newest {
            self.status.equipment[e].seals[s].state = SealState::Tampered;
        }
        let seal_id = self.status.equipment[e].seals[s].id.clone();
        self.raise(
            fx,
            AlertKind::SealTamper,
            Severity::Critical,
            Some(&seal_id),
            evidence,
            at,
            point,
            detail,
        );
    }

    /// One open alert per rule (and seal, for seal rules): a repeat adds its event to the
    /// evidence. The id derives from the trip, rule, seal and first evidence, so a replay
    /// gives the same ids.
    #[allow(clippy::too_many_arguments)]
    fn raise(
        &mut self,
        fx: &mut Vec<Effect>,
        kind: AlertKind,
        severity: Severity,
        seal_id: Option<&SealId>,
        evidence: &str,
        at: Timestamp,
        point: Option<LatLon>,
        detail: String,
    ) {
        let window_full = self.raisings_in_window(kind, seal_id, at) >= self.debounce.max;
        let held = self
            .open_alert_mut(kind, seal_id)
            .map(|a| a.alert_id.to_string())
            .and_then(|id| self.track.held.get(&id).copied().map(|since| (id, since)));
        if let Some((id, ended)) = held {
            if window_full {
                // Still past the cap: the held alert takes the recurrence in.
                self.track.held.remove(&id);
            } else {
                // The window has freed since its condition ended: the held alert clears
                // at that end, and the recurrence is an alert of its own, with its own
                // time and place, told to partners like any other.
                self.settle_open_alert(kind, seal_id, ended, evidence, fx);
                self.raise_new(fx, kind, severity, seal_id, evidence, at, point, detail);
                return;
            }
        }
        if let Some(alert) = self.open_alert_mut(kind, seal_id) {
            // Evidence is the events that raised and sustained it, up to a bound: a
            // condition that lasts days must not grow the alert with every report.
            if alert.evidence.len() < MAX_EVIDENCE && !alert.evidence.iter().any(|e| e == evidence)
            {
                alert.evidence.push(evidence.to_owned());
                fx.push(Effect::AlertUpdated {
                    alert: alert.clone(),
                });
            }
            return;
        }
        // A recurrence soon after the alert cleared, or past the cap of raisings in the
        // window, reopens the latest alert of this rule (and seal) rather than a new one.
        let latest = self
            .alerts
            .iter()
            .rposition(|a| a.kind == kind && a.seal_id.as_ref() == seal_id);
        if let Some(i) = latest {
            // A new reporting gap is its own incident (its time is when that gap passed the
            // limit): only the cap holds gaps together.
            let soon = kind != AlertKind::ReportingGap
                && self.alerts[i].cleared_at.is_some_and(|cleared| {
                    cleared <= at
                        && after(cleared, self.debounce.hold_s).is_some_and(|until| at <= until)
                });
            // A justified alert is closed for good: a new opening is an alert of its own.
            if (soon || window_full) && self.alerts[i].justified.is_none() {
                self.count_raising(kind, seal_id, at);
                let count = self
                    .track
                    .reopened
                    .entry(self.alerts[i].alert_id.to_string())
                    .or_insert(0);
                *count = count.saturating_add(1);
                let alert = &mut self.alerts[i];
                alert.cleared_at = None;
                if alert.evidence.len() < MAX_EVIDENCE
                    && !alert.evidence.iter().any(|e| e == evidence)
                {
                    alert.evidence.push(evidence.to_owned());
                }
                fx.push(Effect::AlertRaised {
                    alert: alert.clone(),
                });
                return;
            }
        }
        self.raise_new(fx, kind, severity, seal_id, evidence, at, point, detail);
    }

    /// A new alert of this rule (and seal), counted as a raising.
    #[allow(clippy::too_many_arguments)]
    fn raise_new(
        &mut self,
        fx: &mut Vec<Effect>,
        kind: AlertKind,
        severity: Severity,
        seal_id: Option<&SealId>,
        evidence: &str,
        at: Timestamp,
        point: Option<LatLon>,
        detail: String,
    ) {
        let trip_id = self.status.trip_id;
        self.count_raising(kind, seal_id, at);
        let seal = seal_id.map_or("-", |s| s.as_str());
        // The same condition may recur after it cleared: each occurrence its own id.
        let occurrence = self
            .alerts
            .iter()
            .filter(|a| a.kind == kind && a.seal_id.as_ref() == seal_id)
            .count();
        let name = format!("{}/{seal}/{evidence}/{occurrence}", kind.as_str());
        let alert = Alert {
            alert_id: AlertId(Uuid::new_v5(&trip_id.0, name.as_bytes())),
            trip_id,
            kind,
            severity,
            raised_at: at,
            cleared_at: None,
            position: point,
            evidence: vec![evidence.to_owned()],
            seal_id: seal_id.cloned(),
            detail: Some(detail),
            justified: None,
        };
        self.alerts.push(alert.clone());
        fx.push(Effect::AlertRaised { alert });
    }
}

/// What a notification says in place of a release's one-time code.
pub const WITHHELD: &str = "withheld";

/// Where a one-time unlock code is kept, it is kept as its hash: `sha256:` and 64 hex
/// digits over the trip, the release and the code (length-prefixed, domain-separated).
/// The clear code lives only in the release's answer to the officer who issued it.
pub const CODE_HASH_PREFIX: &str = "sha256:";

/// The hash a one-time code is kept as.
pub fn code_hash(trip_id: &str, release_id: &str, code: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in ["ects-one-time-code-v1", trip_id, release_id, code] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(CODE_HASH_PREFIX.len() + 64);
    out.push_str(CODE_HASH_PREFIX);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether a code is already a hash (or withheld): a stored input read back for a replay.
pub fn code_is_hashed(code: &str) -> bool {
    code == WITHHELD
        || (code.len() == CODE_HASH_PREFIX.len() + 64
            && code.starts_with(CODE_HASH_PREFIX)
            && code[CODE_HASH_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn hashed(trip_id: TripId, release_id: &str, code: &str) -> String {
    if code_is_hashed(code) {
        code.to_owned()
    } else {
        code_hash(&trip_id.to_string(), release_id, code)
    }
}

impl SealCommand {
    /// This command as it is stored and audited: its code replaced by the code's hash.
    pub fn code_hashed(&self) -> Self {
        Self {
            one_time_code: hashed(self.trip_id, &self.release_id, &self.one_time_code),
            ..self.clone()
        }
    }
}

/// A release as it is stored and audited: its code replaced by the code's hash.
pub fn release_code_hashed(release: &ReleaseAuthorization) -> ReleaseAuthorization {
    ReleaseAuthorization {
        one_time_code: hashed(release.trip_id, &release.release_id, &release.one_time_code),
        ..release.clone()
    }
}

impl Input {
    /// This input as it is stored for replay and audited: no one-time code in clear.
    pub fn codes_hashed(&self) -> std::borrow::Cow<'_, Input> {
        match self {
            Input::Release(r) => std::borrow::Cow::Owned(Input::Release(release_code_hashed(r))),
            other => std::borrow::Cow::Borrowed(other),
        }
    }
}

impl Effect {
    /// This effect as it is stored and audited: no one-time code in clear.
    pub fn codes_hashed(&self) -> std::borrow::Cow<'_, Effect> {
        match self {
            Effect::SealCommand { command } => std::borrow::Cow::Owned(Effect::SealCommand {
                command: command.code_hashed(),
            }),
            Effect::ReleaseAccepted { release } => {
                std::borrow::Cow::Owned(Effect::ReleaseAccepted {
                    release: release_code_hashed(release),
                })
            }
            other => std::borrow::Cow::Borrowed(other),
        }
    }
}

/// What changed between a trip as it was and as a replay rebuilt it: the effects a late
/// event causes.
pub fn reconcile(old: &Trip, new: &Trip, now: Timestamp) -> Vec<Effect> {
    let mut fx = Vec::new();
    if old.status.state != new.status.state {
        fx.push(Effect::StateChanged {
            from: old.status.state,
            to: new.status.state,
            at: now,
        });
    }
    let reopenings = |trip: &Trip, alert: &Alert| {
        trip.track
            .reopened
            .get(&alert.alert_id.to_string())
            .copied()
            .unwrap_or(0)
    };
    for alert in &new.alerts {
        let before = old.alerts.iter().find(|a| a.alert_id == alert.alert_id);
        // Reopened since (cleared → open, or cleared and open again in between): a raise,
        // notified as the live path notifies it (`alert/{id}/raised/{n}`).
        if let Some(before) = before
            && reopenings(new, alert) > reopenings(old, before)
        {
            fx.push(Effect::AlertRaised {
                alert: Alert {
                    cleared_at: None,
                    ..alert.clone()
                },
            });
            if alert.cleared_at.is_some() {
                fx.push(Effect::AlertCleared {
                    alert: alert.clone(),
                });
            }
            continue;
        }
        match before {
            // Raised and, in the replay, cleared already: both told, as live.
            None if alert.cleared_at.is_some() => {
                fx.push(Effect::AlertRaised {
                    alert: Alert {
                        cleared_at: None,
                        ..alert.clone()
                    },
                });
                fx.push(Effect::AlertCleared {
                    alert: alert.clone(),
                });
            }
            None => fx.push(Effect::AlertRaised {
                alert: alert.clone(),
            }),
            Some(before) if before == alert => {}
            Some(before) if before.cleared_at.is_some() && alert.cleared_at.is_none() => {
                fx.push(Effect::AlertRaised {
                    alert: alert.clone(),
                });
            }
            Some(before) if before.cleared_at.is_none() && alert.cleared_at.is_some() => {
                fx.push(Effect::AlertCleared {
                    alert: alert.clone(),
                });
            }
            Some(_) => fx.push(Effect::AlertUpdated {
                alert: alert.clone(),
            }),
        }
    }
    for alert in &old.alerts {
        if !new.alerts.iter().any(|a| a.alert_id == alert.alert_id) {
            fx.push(Effect::AlertWithdrawn {
                alert: alert.clone(),
            });
        }
    }
    // What subscribed partners are told of it, as the trip now stands.
    let notes: Vec<Effect> = fx
        .iter()
        .filter_map(|e| new.notification_for(e))
        .map(|notification| Effect::Notify {
            notification: Box::new(notification),
        })
        .collect();
    fx.extend(notes);
    fx
}

#[cfg(test)]
mod code_hash_tests {
    use super::*;

    #[test]
    fn a_code_is_kept_as_its_hash_once() {
        let h = code_hash("T", "R", "739201");
        assert!(h.starts_with(CODE_HASH_PREFIX) && h.len() == CODE_HASH_PREFIX.len() + 64);
        assert!(code_is_hashed(&h) && code_is_hashed(WITHHELD));
        assert!(!code_is_hashed("739201") && !code_is_hashed("sha256:xyz"));
        // Another trip, release or code: another hash; the parts cannot be shifted.
        assert_ne!(h, code_hash("T", "R", "739202"));
        assert_ne!(code_hash("T", "R1", "2"), code_hash("T", "R", "12"));
        let kept = hashed(TripId(Uuid::nil()), "R", &h);
        assert_eq!(kept, h, "a hash is not hashed again");
    }
}
