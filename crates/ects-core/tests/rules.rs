//! One scenario per rule and per lifecycle step, on a synthetic road: a corridor along
//! latitude 14° from the departure office (lon -91.0) to the destination office (lon -89.0).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use ects_core::engine::Engine;
use ects_core::geo::{Corridor, Zone, ZoneKind, ZoneShape};
use ects_core::spatial::Geography;
use ects_core::trip::{Effect, Input, Rules, RulesOverride, Trip};
use ects_core::*;
use proptest::prelude::*;
use serde_json::json;

const LAT: f64 = 14.0;
const START_LON: f64 = -91.0;
const END_LON: f64 = -89.0;
/// Degrees of longitude a truck at 60 km/h covers in a minute at latitude 14°.
const DEG_PER_MIN: f64 = 1000.0 / 107_900.0;

fn ll(lat: f64, lon: f64) -> LatLon {
    LatLon::new(lat, lon).unwrap()
}

fn circle(id: &str, kind: ZoneKind, office: Option<&str>, lat: f64, lon: f64, r: f64) -> Zone {
    Zone {
        id: ZoneId::parse(id).unwrap(),
        kind,
        office_code: office.map(|o| OfficeCode::parse(o).unwrap()),
        shape: ZoneShape::Circle {
            centre: ll(lat, lon),
            radius_m: r,
        },
    }
}

fn geography() -> Geography {
    geography_with(RulesOverride::default())
}

fn geography_with(rules: RulesOverride) -> Geography {
    let corridor = Corridor {
        id: CorridorId::parse("CA-PQZ-SAL").unwrap(),
        width_m: 2000.0,
        line: (0..=200)
            .map(|i| {
                ll(
                    LAT,
                    START_LON + (END_LON - START_LON) * f64::from(i) / 200.0,
                )
            })
            .collect(),
        office_of_departure: None,
        office_of_destination: None,
        rules,
    };
    Geography::new(
        vec![corridor],
        vec![
            circle(
                "GTPQZ",
                ZoneKind::CustomsOffice,
                Some("GTPQZ"),
                LAT,
                START_LON,
                1000.0,
            ),
            circle(
                "SVSAL",
                ZoneKind::CustomsOffice,
                Some("SVSAL"),
                LAT,
                END_LON,
                1000.0,
            ),
            circle("REST-KM50", ZoneKind::RestArea, None, LAT, -90.5, 300.0),
            circle(
                "BORDER",
                ZoneKind::BorderPost,
                Some("GTPDA"),
                LAT + 0.05,
                -90.0,
                800.0,
            ),
            circle("DEPOT", ZoneKind::ReleasePlace, None, LAT, -89.5, 500.0),
            circle("FIELD", ZoneKind::RestArea, None, LAT + 0.5, -89.5, 500.0),
        ],
    )
}

fn declaration() -> TransitDeclaration {
    serde_json::from_value(json!({
        "declaration_id": "GT-2026-T-000123",
        "issuing_authority": "GT",
        "declared_at": "2026-03-14T07:00:00Z",
        "office_of_departure": {"code": "GTPQZ", "country": "GT"},
        "office_of_destination": {"code": "SVSAL", "country": "SV"},
        "time_limit": "2026-03-14T20:00:00Z",
        "corridor_id": "CA-PQZ-SAL",
        "equipment": [{"id": "MSKU1234565", "seals": [
            {"id": "ES1", "kind": "electronic", "device_id": "D1"},
            {"id": "BS1", "kind": "mechanical"}
        ]}]
    }))
    .unwrap()
}

fn t0() -> DateTime<Utc> {
    "2026-03-14T08:00:00Z".parse().unwrap()
}

/// A trip on the synthetic road, fed event by event.
struct Scenario {
    geo: Geography,
    rules: Rules,
    trip: Trip,
    seq: u64,
    log: Vec<Effect>,
}

impl Scenario {
    fn new() -> Self {
        let trip = Trip::declare(TripId(uuid::Uuid::nil()), &declaration(), t0());
        Self {
            geo: geography(),
            rules: Rules::default(),
            trip,
            seq: 0,
            log: Vec::new(),
        }
    }

    fn at(minutes: f64) -> DateTime<Utc> {
        t0() + Duration::milliseconds((minutes * 60_000.0) as i64)
    }

    fn event_at(
        &mut self,
        minutes: f64,
        kind: &str,
        point: Option<(f64, f64)>,
        speed: Option<f64>,
    ) -> Vec<Effect> {
        self.seq += 1;
        let mut e = json!({"device_id": "D1", "seq": self.seq, "kind": kind,
                           "time": Self::at(minutes).to_rfc3339(), "battery_pct": 90});
        if let Some((lat, lon)) = point {
            e["position"] = json!({"lat": lat, "lon": lon, "fix": "gps"});
            if let Some(s) = speed {
                e["position"]["speed_kmh"] = json!(s);
            }
        }
        let event: SealEvent = serde_json::from_value(e).unwrap();
        self.input(Input::SealEvent(event), Self::at(minutes))
            .unwrap()
    }

    fn input(
        &mut self,
        input: Input,
        now: DateTime<Utc>,
    ) -> Result<Vec<Effect>, ects_core::trip::CommandError> {
        let fx = self.trip.apply(&input, &self.geo, &self.rules, now)?;
        self.log.extend(fx.clone());
        Ok(fx)
    }

    /// A position on the road `minutes` after departure at 60 km/h, `off_m` north of it.
    fn road(minutes: f64, off_m: f64) -> (f64, f64) {
        (
            LAT + off_m / 111_195.0,
            START_LON + 1.5 * DEG_PER_MIN + minutes * DEG_PER_MIN,
        )
    }

    fn drive(&mut self, minutes: f64, off_m: f64) -> Vec<Effect> {
        self.event_at(
            minutes,
            "position",
            Some(Self::road(minutes, off_m)),
            Some(60.0),
        )
    }

    fn tick(&mut self, minutes: f64) -> Vec<Effect> {
        let fx = self.trip.tick(&self.geo, &self.rules, Self::at(minutes));
        self.log.extend(fx.clone());
        fx
    }

    /// Locked at the departure office, then on the road.
    fn armed_and_rolling() -> Self {
        let mut s = Self::new();
        s.event_at(0.0, "locked", Some((LAT, START_LON)), Some(0.0));
        assert_eq!(s.trip.status.state, TripState::Armed);
        // Two fixes outside the office confirm the departure.
        s.drive(0.5, 0.0);
        s.drive(1.0, 0.0);
        assert_eq!(s.trip.status.state, TripState::InTransit);
        s
    }

    fn open(&self, kind: AlertKind) -> Vec<&Alert> {
        self.trip
            .alerts
            .iter()
            .filter(|a| a.kind == kind && a.cleared_at.is_none())
            .collect()
    }

    fn all(&self, kind: AlertKind) -> Vec<&Alert> {
        self.trip.alerts.iter().filter(|a| a.kind == kind).collect()
    }

    fn release(&self, place: &str, from_min: f64, until_min: f64) -> ReleaseAuthorization {
        ReleaseAuthorization {
            release_id: format!("REL-{place}"),
            trip_id: self.trip.status.trip_id,
            authority: self.trip.status.custodian.clone(),
            officer: Officer {
                id: "SV-OF-1".into(),
                name: None,
            },
            place: ZoneId::parse(place).unwrap(),
            valid_from: Self::at(from_min),
            valid_until: Self::at(until_min),
            one_time_code: "739201".into(),
            issued_at: Self::at(from_min - 1.0),
            received_at: None,
        }
    }

    fn handover(
        &self,
        id: &str,
        from: &str,
        to: &str,
        minutes: f64,
        check: SealCheck,
    ) -> CustodyHandover {
        CustodyHandover {
            handover_id: id.into(),
            trip_id: self.trip.status.trip_id,
            from_authority: AuthorityCode::parse(from).unwrap(),
            to_authority: AuthorityCode::parse(to).unwrap(),
            officer: Officer {
                id: format!("{to}-OF-7"),
                name: None,
            },
            place: Some(ZoneId::parse("BORDER").unwrap()),
            time: Self::at(minutes),
            seal_check: check,
            remarks: None,
        }
    }
}

fn states(fx: &[Effect]) -> Vec<TripState> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::StateChanged { to, .. } => Some(*to),
            _ => None,
        })
        .collect()
}

#[test]
fn the_whole_lifecycle_with_remote_release() {
    let mut s = Scenario::new();
    // Locked far from the departure office: not armed.
    s.event_at(0.0, "locked", Some((LAT + 0.2, START_LON)), None);
    assert_eq!(s.trip.status.state, TripState::Declared);
    // Locked at the office: armed.
    let fx = s.event_at(1.0, "locked", Some((LAT, START_LON + 0.001)), Some(0.0));
    assert_eq!(states(&fx), vec![TripState::Armed]);
    assert!(fx.iter().any(|e| matches!(e, Effect::Notify { notification } if notification.kind == NotificationKind::Status)));
    // Out of the office zone: one fix is not enough (GPS noise), two confirm it.
    assert!(states(&s.drive(1.5, 0.0)).is_empty());
    let fx = s.drive(2.0, 0.0);
    assert_eq!(states(&fx), vec![TripState::InTransit]);
    // Along the road (sparse fixes at 60 km/h), into the destination zone: arrived.
    // Fixes every 10 minutes; the last one about 3 km short of the destination office.
    let mut m = 2.0;
    while Scenario::road(m + 10.0, 0.0).1 < END_LON - 0.03 {
        m += 10.0;
        s.drive(m, 0.0);
    }
    assert_eq!(s.trip.status.state, TripState::InTransit);
    let arrive_min = m + 5.0;
    // Two fixes inside the destination office confirm the arrival.
    let first = s.event_at(
        arrive_min - 1.0,
        "position",
        Some((LAT, END_LON - 0.001)),
        Some(5.0),
    );
    assert!(states(&first).is_empty());
    let fx = s.event_at(arrive_min, "position", Some((LAT, END_LON)), Some(5.0));
    assert_eq!(
        states(&fx),
        vec![TripState::Arrived],
        "{:?}",
        s.trip.status.last_position
    );
    assert!(s.open(AlertKind::RouteDeviation).is_empty());
    // The destination custodian authorizes release at the office: an unlock command.
    let release = s.release("SVSAL", arrive_min, arrive_min + 60.0);
    let fx = s
        .input(Input::Release(release), Scenario::at(arrive_min))
        .unwrap();
    let command = fx
        .iter()
        .find_map(|e| match e {
            Effect::SealCommand { command } => Some(command.clone()),
            _ => None,
        })
        .expect("an unlock command");
    assert_eq!(command.device_id.as_str(), "D1");
    assert_eq!(command.one_time_code, "739201");
    // The seal opens inside the office within the window: released, no alert.
    let fx = s.event_at(
        arrive_min + 5.0,
        "unlocked",
        Some((LAT, END_LON)),
        Some(0.0),
    );
    assert_eq!(states(&fx), vec![TripState::Released]);
    assert!(s.all(AlertKind::SealOpened).is_empty());
    // Nothing moves a released trip.
    assert!(
        s.event_at(arrive_min + 10.0, "rope_cut", Some((LAT, END_LON)), None)
            .is_empty()
    );
}

#[test]
fn route_deviation_needs_several_fixes_and_time_and_clears_with_hysteresis() {
    let mut s = Scenario::armed_and_rolling();
    // One stray fix, then back: GPS noise, no alert.
    s.drive(2.0, 3000.0);
    s.drive(3.0, 0.0);
    s.drive(4.0, 0.0);
    assert!(s.all(AlertKind::RouteDeviation).is_empty());
    // Three fixes off the road, but within 60 s: not yet.
    s.drive(5.0, 3000.0);
    s.drive(5.3, 3000.0);
    s.drive(5.6, 3000.0);
    assert!(s.all(AlertKind::RouteDeviation).is_empty());
    // Still off after a minute: raised, with position and evidence.
    let fx = s.drive(6.1, 3000.0);
    assert!(fx.iter().any(
        |e| matches!(e, Effect::AlertRaised { alert } if alert.kind == AlertKind::RouteDeviation)
    ));
    let alert = s.open(AlertKind::RouteDeviation)[0].clone();
    assert_eq!(alert.severity, Severity::High);
    assert!(alert.position.is_some());
    assert!(
        alert.detail.as_ref().unwrap().contains("CA-PQZ-SAL"),
        "{:?}",
        alert.detail
    );
    // One fix back inside is not enough to clear...
    s.drive(7.0, 0.0);
    assert_eq!(s.open(AlertKind::RouteDeviation).len(), 1);
    // ...two are.
    s.drive(8.0, 0.0);
    assert!(s.open(AlertKind::RouteDeviation).is_empty());
    assert_eq!(
        s.all(AlertKind::RouteDeviation)[0].cleared_at,
        Some(Scenario::at(8.0))
    );
}

#[test]
fn a_border_post_off_the_line_is_not_a_deviation() {
    let mut s = Scenario::armed_and_rolling();
    let border = (LAT + 0.05, -90.0);
    for m in [60.0, 61.0, 62.0, 63.0, 64.0] {
        s.event_at(m, "position", Some(border), Some(0.0));
    }
    assert!(s.all(AlertKind::RouteDeviation).is_empty());
    assert!(
        s.all(AlertKind::AbnormalStop).is_empty(),
        "a border post permits stopping"
    );
}

#[test]
fn abnormal_stop_outside_permitted_places() {
    let mut s = Scenario::armed_and_rolling();
    let spot = Scenario::road(10.0, 0.0);
    s.event_at(10.0, "position", Some(spot), Some(0.0));
    s.event_at(20.0, "position", Some(spot), Some(0.0));
    assert!(
        s.all(AlertKind::AbnormalStop).is_empty(),
        "10 minutes is allowed"
    );
    // No further fix: the tick finds the stop too long, dated when it became too long.
    s.tick(26.0);
    let alert = s.open(AlertKind::AbnormalStop)[0].clone();
    assert_eq!(alert.raised_at, Scenario::at(25.0));
    // Moving on clears it.
    s.drive(30.0, 0.0);
    assert!(s.open(AlertKind::AbnormalStop).is_empty());
}

#[test]
fn rest_areas_allow_a_rest_but_not_an_overstay() {
    let mut s = Scenario::armed_and_rolling();
    let rest = (LAT, -90.5);
    s.event_at(40.0, "position", Some(rest), Some(0.0));
    s.event_at(100.0, "position", Some(rest), Some(0.0));
    assert!(
        s.all(AlertKind::AbnormalStop).is_empty(),
        "an hour in a rest area is fine"
    );
    s.event_at(40.0 + 4.0 * 60.0 + 1.0, "position", Some(rest), Some(0.0));
    let alert = s.open(AlertKind::AbnormalStop)[0].clone();
    assert_eq!(alert.raised_at, Scenario::at(40.0 + 240.0));
    assert!(alert.detail.unwrap().contains("rest area"));
}

#[test]
fn reporting_gap_is_raised_on_a_tick_and_cleared_by_the_next_fix() {
    let mut s = Scenario::armed_and_rolling();
    s.drive(10.0, 0.0);
    s.tick(24.0);
    assert!(
        s.all(AlertKind::ReportingGap).is_empty(),
        "14 minutes is within the gap"
    );
    let fx = s.tick(26.0);
    assert!(
        matches!(&fx[0], Effect::AlertRaised { alert } if alert.raised_at == Scenario::at(25.0))
    );
    let id = s.open(AlertKind::ReportingGap)[0].alert_id;
    s.drive(40.0, 0.0);
    let gap = s.all(AlertKind::ReportingGap);
    assert_eq!(gap.len(), 1);
    assert_eq!(gap[0].alert_id, id);
    assert_eq!(gap[0].cleared_at, Some(Scenario::at(40.0)));
}

#[test]
fn a_gap_found_by_the_next_fix_is_the_same_alert_a_tick_would_raise() {
    let mut ticked = Scenario::armed_and_rolling();
    ticked.drive(10.0, 0.0);
    ticked.tick(30.0);
    ticked.drive(40.0, 0.0);
    let mut quiet = Scenario::armed_and_rolling();
    quiet.drive(10.0, 0.0);
    quiet.drive(40.0, 0.0);
    assert_eq!(
        ticked.all(AlertKind::ReportingGap),
        quiet.all(AlertKind::ReportingGap)
    );
    assert_eq!(
        quiet.all(AlertKind::ReportingGap)[0].cleared_at,
        Some(Scenario::at(40.0))
    );
}

#[test]
fn opening_without_a_valid_release_is_seal_opened() {
    // No authorization at all.
    let mut s = Scenario::armed_and_rolling();
    s.event_at(5.0, "opened", Some(Scenario::road(5.0, 0.0)), None);
    let alert = s.open(AlertKind::SealOpened)[0].clone();
    assert!(alert.detail.unwrap().contains("no release authorization"));
    assert_eq!(alert.seal_id.unwrap().as_str(), "ES1");

    // Authorized at the depot, but opened elsewhere.
    let mut s = Scenario::armed_and_rolling();
    let release = s.release("DEPOT", 0.0, 600.0);
    s.input(Input::Release(release), Scenario::at(1.0)).unwrap();
    s.event_at(5.0, "unlocked", Some(Scenario::road(5.0, 0.0)), None);
    assert!(
        s.open(AlertKind::SealOpened)[0]
            .detail
            .as_ref()
            .unwrap()
            .contains("outside the release place")
    );

    // At the depot, but after the window.
    let mut s = Scenario::armed_and_rolling();
    let release = s.release("DEPOT", 0.0, 30.0);
    s.input(Input::Release(release), Scenario::at(1.0)).unwrap();
    s.event_at(200.0, "unlocked", Some((LAT, -89.5)), None);
    assert!(
        s.open(AlertKind::SealOpened)[0]
            .detail
            .as_ref()
            .unwrap()
            .contains("window")
    );
    assert_eq!(s.trip.status.state, TripState::InTransit);

    // At the depot within the window: released, no alert.
    let mut s = Scenario::armed_and_rolling();
    let release = s.release("DEPOT", 0.0, 600.0);
    s.input(Input::Release(release), Scenario::at(1.0)).unwrap();
    s.event_at(200.0, "unlocked", Some((LAT, -89.5)), None);
    assert!(s.all(AlertKind::SealOpened).is_empty());
    assert_eq!(s.trip.status.state, TripState::Released);
}

#[test]
fn every_tamper_kind_raises_a_critical_alert() {
    for kind in [
        "rope_cut",
        "tamper",
        "cover_opened",
        "wrong_password_lockout",
        "illegal_card",
        "lock_jammed",
    ] {
        let mut s = Scenario::armed_and_rolling();
        s.event_at(5.0, kind, Some(Scenario::road(5.0, 0.0)), None);
        let alerts = s.open(AlertKind::SealTamper);
        assert_eq!(alerts.len(), 1, "{kind}");
        assert_eq!(alerts[0].severity, Severity::Critical);
        assert_eq!(
            s.trip.status.equipment[0].seals[0].state,
            SealState::Tampered
        );
    }
}

#[test]
fn overdue_is_dated_at_the_time_limit_and_cleared_on_arrival() {
    let mut s = Scenario::armed_and_rolling();
    s.drive(60.0, 0.0);
    let limit = declaration().time_limit.unwrap();
    s.tick(13.0 * 60.0);
    let alert = s.open(AlertKind::Overdue)[0].clone();
    assert_eq!(alert.raised_at, limit);
    s.event_at(
        13.0 * 60.0 + 4.0,
        "position",
        Some((LAT, END_LON)),
        Some(0.0),
    );
    s.event_at(
        13.0 * 60.0 + 5.0,
        "position",
        Some((LAT, END_LON)),
        Some(0.0),
    );
    assert_eq!(s.trip.status.state, TripState::Arrived);
    assert!(s.open(AlertKind::Overdue).is_empty());
}

#[test]
fn an_impossible_speed_is_a_position_jump() {
    let mut s = Scenario::armed_and_rolling();
    s.drive(10.0, 0.0);
    // 50 km in one minute.
    let fx = s.event_at(
        11.0,
        "position",
        Some((LAT, Scenario::road(10.0, 0.0).1 + 0.46)),
        None,
    );
    assert!(fx.iter().any(
        |e| matches!(e, Effect::AlertRaised { alert } if alert.kind == AlertKind::PositionJump)
    ));
    // A plausible next fix clears it.
    s.event_at(
        12.0,
        "position",
        Some((LAT, Scenario::road(10.0, 0.0).1 + 0.47)),
        None,
    );
    assert!(s.open(AlertKind::PositionJump).is_empty());
    // Jamming reported by the device is the same suspicion.
    s.event_at(13.0, "jamming", None, None);
    assert_eq!(s.open(AlertKind::PositionJump).len(), 1);
}

#[test]
fn custody_passes_at_the_border_with_the_whole_chain() {
    let mut s = Scenario::armed_and_rolling();
    let wrong = s.handover("HO-1", "SV", "GT", 60.0, SealCheck::Intact);
    let err = s
        .input(Input::Handover(wrong), Scenario::at(60.0))
        .unwrap_err();
    assert_eq!(err.field, "from_authority");
    let ok = s.handover("HO-1", "GT", "SV", 60.0, SealCheck::Intact);
    let fx = s
        .input(Input::Handover(ok.clone()), Scenario::at(60.0))
        .unwrap();
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::CustodyChanged { .. }))
    );
    assert_eq!(s.trip.status.custodian.as_str(), "SV");
    // The same handover again changes nothing; another with the same id is refused.
    assert!(
        s.input(Input::Handover(ok), Scenario::at(61.0))
            .unwrap()
            .is_empty()
    );
    let reused = s.handover("HO-1", "SV", "HN", 62.0, SealCheck::Intact);
    assert_eq!(
        s.input(Input::Handover(reused), Scenario::at(62.0))
            .unwrap_err()
            .field,
        "handover_id"
    );
    // A second border: the chain grows; a discrepancy found there is an alert.
    let next = s.handover("HO-2", "SV", "HN", 90.0, SealCheck::Discrepancy);
    s.input(Input::Handover(next), Scenario::at(90.0)).unwrap();
    let chain: Vec<_> = s
        .trip
        .status
        .custody_chain
        .iter()
        .map(|h| h.to_authority.as_str())
        .collect();
    assert_eq!(chain, vec!["SV", "HN"]);
    assert_eq!(s.open(AlertKind::SealTamper).len(), 1);
    // Only the custodian releases now.
    let mut release = s.release("DEPOT", 90.0, 120.0);
    release.authority = AuthorityCode::parse("GT").unwrap();
    assert_eq!(
        s.input(Input::Release(release), Scenario::at(91.0))
            .unwrap_err()
            .field,
        "authority"
    );
}

#[test]
fn release_authorizations_are_checked() {
    let mut s = Scenario::armed_and_rolling();
    let cases = [
        ("NOWHERE", 0.0, 60.0, "place"),
        ("REST-KM50", 0.0, 60.0, "place"),
        ("GTPQZ", 0.0, 60.0, "place"),
        ("DEPOT", 60.0, 0.0, "valid_until"),
        ("DEPOT", 0.0, 73.0 * 60.0, "valid_until"),
    ];
    for (place, from, until, field) in cases {
        let mut r = s.release("DEPOT", from, until);
        r.place = ZoneId::parse(place).unwrap();
        r.release_id = format!("R-{place}-{from}-{until}");
        assert_eq!(
            s.input(Input::Release(r), Scenario::at(1.0))
                .unwrap_err()
                .field,
            field,
            "{place}"
        );
    }
    // Scheduled more than 7 days after it was issued: refused; 7 days exactly is taken.
    let mut far = s.release("DEPOT", 0.0, 60.0);
    far.release_id = "R-FAR".into();
    far.issued_at = far.valid_from - chrono::Duration::days(7) - chrono::Duration::seconds(1);
    assert_eq!(
        s.input(Input::Release(far.clone()), Scenario::at(1.0))
            .unwrap_err()
            .field,
        "valid_from"
    );
    far.release_id = "R-WEEK".into();
    far.issued_at = far.valid_from - chrono::Duration::days(7);
    s.input(Input::Release(far), Scenario::at(1.0)).unwrap();
    let mut short_code = s.release("DEPOT", 0.0, 60.0);
    short_code.one_time_code = "12".into();
    assert_eq!(
        s.input(Input::Release(short_code), Scenario::at(1.0))
            .unwrap_err()
            .field,
        "one_time_code"
    );
}

#[test]
fn cancellation_ends_the_trip_and_keeps_its_tamper_alert() {
    let mut s = Scenario::armed_and_rolling();
    s.event_at(5.0, "rope_cut", None, None);
    let cancel = |authority: &str| Cancellation {
        trip_id: TripId(uuid::Uuid::nil()),
        authority: AuthorityCode::parse(authority).unwrap(),
        officer: Officer {
            id: "GT-OF-1".into(),
            name: None,
        },
        time: Scenario::at(6.0),
        reason: "declaration withdrawn".into(),
    };
    assert_eq!(
        s.input(Input::Cancel(cancel("SV")), Scenario::at(6.0))
            .unwrap_err()
            .field,
        "authority"
    );
    let fx = s
        .input(Input::Cancel(cancel("GT")), Scenario::at(6.0))
        .unwrap();
    assert_eq!(states(&fx), vec![TripState::Cancelled]);
    // The rope cut stays on record, open: a cancellation never closes a tamper alert.
    let open: Vec<AlertKind> = s.trip.status.open_alerts.iter().map(|a| a.kind).collect();
    assert_eq!(open, vec![AlertKind::SealTamper]);
}

#[test]
fn corridor_thresholds_can_be_overridden() {
    let mut s = Scenario::armed_and_rolling();
    // Same road, but this corridor allows only 5 minutes without a fix.
    s.geo = geography_with(RulesOverride {
        max_gap_s: Some(300),
        ..RulesOverride::default()
    });
    s.drive(10.0, 0.0);
    s.tick(16.0);
    assert_eq!(
        s.open(AlertKind::ReportingGap)[0].raised_at,
        Scenario::at(15.0)
    );
}

/// The inputs of a trip with a deviation, a stop and a gap.
fn journey() -> Vec<SealEvent> {
    let mut events = Vec::new();
    let mut seq = 0;
    let mut push = |minutes: f64, kind: &str, point: (f64, f64), speed: f64| {
        seq += 1;
        events.push(
            serde_json::from_value(json!({
                "device_id": "D1", "seq": seq, "kind": kind,
                "time": Scenario::at(minutes).to_rfc3339(),
                "position": {"lat": point.0, "lon": point.1, "fix": "gps", "speed_kmh": speed},
                "battery_pct": 90
            }))
            .unwrap(),
        );
    };
    push(0.0, "locked", (LAT, START_LON), 0.0);
    for m in 1..=10 {
        push(
            f64::from(m),
            "position",
            Scenario::road(f64::from(m), 0.0),
            60.0,
        );
    }
    for m in 11..=14 {
        push(
            f64::from(m),
            "position",
            Scenario::road(f64::from(m), 4000.0),
            60.0,
        );
    }
    for m in 15..=17 {
        push(
            f64::from(m),
            "position",
            Scenario::road(f64::from(m), 0.0),
            60.0,
        );
    }
    for m in [20.0, 30.0, 40.0] {
        push(m, "position", Scenario::road(18.0, 0.0), 0.0);
    }
    push(70.0, "position", Scenario::road(25.0, 0.0), 60.0);
    events
}

fn run(order: &[usize]) -> Trip {
    let events = journey();
    let mut engine = Engine::new(Arc::new(geography()), Rules::default());
    let id = TripId(uuid::Uuid::nil());
    engine.declare(id, declaration(), t0());
    let now = Scenario::at(200.0);
    for &i in order {
        engine
            .apply(id, Input::SealEvent(events[i].clone()), now)
            .unwrap();
    }
    engine.tick(now);
    engine.trip(&id).unwrap().clone()
}

#[test]
fn the_journey_raises_what_it_should() {
    let trip = run(&(0..journey().len()).collect::<Vec<_>>());
    let kinds: Vec<AlertKind> = trip.alerts.iter().map(|a| a.kind).collect();
    assert!(kinds.contains(&AlertKind::RouteDeviation), "{kinds:?}");
    assert!(kinds.contains(&AlertKind::AbnormalStop), "{kinds:?}");
    assert!(kinds.contains(&AlertKind::ReportingGap), "{kinds:?}");
}

/// Live processing, one input at a time, and `Trip::replay` of the same inputs give the
/// same trip, to the byte.
#[test]
fn live_processing_and_replay_agree() {
    let geo = geography();
    let rules = Rules::default();
    let now = Scenario::at(900.0);
    let mut inputs: Vec<Input> = journey().into_iter().map(Input::SealEvent).collect();
    // A second seal reporting at the very same instants, an alarm in the same second as a
    // fix, and a trip that runs past its time limit.
    for (k, e) in journey().into_iter().enumerate() {
        let mut twin = e.clone();
        twin.device_id = DeviceId::parse("D2").unwrap();
        twin.seal_id = None;
        inputs.push(Input::SealEvent(twin));
        if k == 12 {
            let mut alarm = e.clone();
            alarm.seq = Some(1000);
            alarm.kind = SealEventKind::CoverOpened;
            alarm.position = None;
            inputs.push(Input::SealEvent(alarm));
        }
    }
    let mut declaration = declaration();
    declaration.equipment[0].seals.push(Seal {
        id: SealId::parse("ES2").unwrap(),
        kind: SealKind::Electronic,
        device_id: Some(DeviceId::parse("D2").unwrap()),
    });
    declaration.time_limit = Some(Scenario::at(60.0));
    let mut sorted = inputs.clone();
    sorted.sort_by_cached_key(|i| i.sort_key());
    let mut live = Trip::declare(TripId(uuid::Uuid::nil()), &declaration, t0());
    for input in &sorted {
        live.apply(input, &geo, &rules, now).unwrap();
    }
    live.tick(&geo, &rules, now);
    let replayed = Trip::replay(
        TripId(uuid::Uuid::nil()),
        &declaration,
        t0(),
        &RulesOverride::default(),
        &inputs,
        &geo,
        &rules,
        now,
    );
    assert_eq!(
        serde_json::to_string(&live).unwrap(),
        serde_json::to_string(&replayed).unwrap()
    );
    let kinds: Vec<AlertKind> = live.alerts.iter().map(|a| a.kind).collect();
    for k in [
        AlertKind::RouteDeviation,
        AlertKind::SealTamper,
        AlertKind::Overdue,
    ] {
        assert!(kinds.contains(&k), "{k:?} missing from {kinds:?}");
    }
}

#[test]
fn noise_alternating_across_the_corridor_edge_is_not_a_deviation() {
    let mut s = Scenario::armed_and_rolling();
    // Every 30 s: 1,100 m, 900 m, 1,100 m... off the line (1,000 m allowed).
    for k in 0..10 {
        let off = if k % 2 == 0 { 1100.0 } else { 900.0 };
        s.drive(2.0 + f64::from(k) * 0.5, off);
    }
    assert!(s.all(AlertKind::RouteDeviation).is_empty());
}

#[test]
fn one_fix_at_the_destination_is_not_an_arrival_and_leaving_again_resumes_monitoring() {
    let mut s = Scenario::armed_and_rolling();
    let near = Scenario::road(((END_LON - 0.05 - START_LON) / DEG_PER_MIN) - 1.5, 0.0);
    s.event_at(300.0, "position", Some(near), Some(60.0));
    // One fix inside the office zone (noise, or the road passing by): still in transit.
    s.event_at(301.0, "position", Some((LAT, END_LON)), Some(60.0));
    s.event_at(302.0, "position", Some(near), Some(60.0));
    assert_eq!(s.trip.status.state, TripState::InTransit);
    // Two in a row: arrived.
    s.event_at(310.0, "position", Some((LAT, END_LON)), Some(0.0));
    s.event_at(311.0, "position", Some((LAT, END_LON)), Some(0.0));
    assert_eq!(s.trip.status.state, TripState::Arrived);
    // It leaves without a release: back in transit, watched again.
    s.event_at(320.0, "position", Some((LAT + 0.05, END_LON)), Some(60.0));
    s.event_at(321.0, "position", Some((LAT + 0.06, END_LON)), Some(60.0));
    assert_eq!(s.trip.status.state, TripState::InTransit);
}

#[test]
fn a_cell_tower_fix_is_not_a_jump() {
    let mut s = Scenario::armed_and_rolling();
    s.drive(10.0, 0.0);
    let (lat, lon) = Scenario::road(10.5, 3000.0);
    let lbs: SealEvent = serde_json::from_value(json!({
        "device_id": "D1", "seq": 500, "kind": "position", "time": Scenario::at(10.5).to_rfc3339(),
        "position": {"lat": lat, "lon": lon, "fix": "lbs"}
    }))
    .unwrap();
    s.input(Input::SealEvent(lbs), Scenario::at(10.5)).unwrap();
    assert!(s.all(AlertKind::PositionJump).is_empty());
    assert!(s.all(AlertKind::RouteDeviation).is_empty());
    // It still counts as a report: the last position moves.
    assert_eq!(
        s.trip.status.last_position.as_ref().unwrap().time,
        Scenario::at(10.5)
    );
}

#[test]
fn overdue_has_one_id_whether_the_clock_or_an_event_finds_it() {
    let limit_passed = Scenario::at(13.0 * 60.0);
    let mut ticked = Scenario::armed_and_rolling();
    ticked.tick(13.0 * 60.0);
    let mut evented = Scenario::armed_and_rolling();
    evented.event_at(
        13.0 * 60.0,
        "position",
        Some(Scenario::road(30.0, 0.0)),
        Some(0.0),
    );
    let a = ticked.open(AlertKind::Overdue)[0].alert_id;
    let b = evented.open(AlertKind::Overdue)[0].alert_id;
    assert_eq!(a, b);
    assert!(limit_passed > declaration().time_limit.unwrap());
}

#[test]
fn a_lasting_condition_keeps_bounded_evidence() {
    let mut s = Scenario::armed_and_rolling();
    let mut updates = 0;
    for k in 0..200 {
        let fx = s.event_at(2.0 + f64::from(k), "low_battery", None, None);
        updates += fx
            .iter()
            .filter(|e| matches!(e, Effect::AlertUpdated { .. }))
            .count();
    }
    let alert = &s.open(AlertKind::LowBattery)[0];
    assert!(alert.evidence.len() <= 20, "{}", alert.evidence.len());
    assert!(updates < 20, "{updates}");
}

#[test]
fn a_condition_that_recurs_is_a_new_alert() {
    let mut s = Scenario::armed_and_rolling();
    for (start, end) in [(5.0, 9.0), (20.0, 24.0)] {
        let mut m = start;
        while m <= end {
            s.drive(m, 3000.0);
            m += 1.0;
        }
        s.drive(end + 1.0, 0.0);
        s.drive(end + 2.0, 0.0);
    }
    let deviations = s.all(AlertKind::RouteDeviation);
    assert_eq!(deviations.len(), 2);
    assert_ne!(deviations[0].alert_id, deviations[1].alert_id);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Delivered in any order (buffered fixes resent late), the trip ends with the alerts
    /// and state it has when the events come in order.
    #[test]
    fn delivery_order_does_not_change_the_outcome(order in Just((0..journey().len()).collect::<Vec<_>>()).prop_shuffle()) {
        let in_order = run(&(0..journey().len()).collect::<Vec<_>>());
        let shuffled = run(&order);
        prop_assert_eq!(&shuffled.alerts, &in_order.alerts);
        prop_assert_eq!(shuffled.status.state, in_order.status.state);
        prop_assert_eq!(&shuffled.status.last_position, &in_order.status.last_position);
    }
}

#[test]
fn a_clock_alert_that_buffered_fixes_disprove_is_withdrawn() {
    let mut s = Scenario::armed_and_rolling();
    s.drive(10.0, 0.0);
    // The device is in a dead zone; the clock raises a gap dated 10 + 15 minutes.
    s.tick(30.0);
    assert_eq!(s.open(AlertKind::ReportingGap).len(), 1);
    // Its buffered fix from minute 20 arrives: there never was a 15-minute gap.
    let fx = s.drive(20.0, 0.0);
    assert!(fx.iter().any(
        |e| matches!(e, Effect::AlertWithdrawn { alert } if alert.kind == AlertKind::ReportingGap)
    ));
    assert!(s.all(AlertKind::ReportingGap).is_empty());
}

#[test]
fn a_stale_event_does_not_set_the_seal_back() {
    let mut s = Scenario::armed_and_rolling();
    s.event_at(10.0, "rope_cut", None, None);
    // A "locked" from minute 5 arrives after it (no replay here): the seal stays tampered.
    s.event_at(5.0, "locked", None, None);
    assert_eq!(
        s.trip.status.equipment[0].seals[0].state,
        SealState::Tampered
    );
}

#[test]
fn a_device_reporting_an_unknown_seal_number_still_counts() {
    let mut s = Scenario::armed_and_rolling();
    let event: SealEvent = serde_json::from_value(json!({
        "device_id": "D1", "seal_id": "ES-REPLACED", "seq": 999, "kind": "rope_cut",
        "time": Scenario::at(5.0).to_rfc3339()
    }))
    .unwrap();
    s.input(Input::SealEvent(event), Scenario::at(5.0)).unwrap();
    assert_eq!(s.open(AlertKind::SealTamper).len(), 1);
}

fn assignment(reference: &str, minutes: f64, equipment: serde_json::Value) -> SealAssignment {
    serde_json::from_value(json!({
        "reference": reference,
        "assigned_at": Scenario::at(minutes).to_rfc3339(),
        "equipment": equipment,
    }))
    .unwrap()
}

/// A declaration whose seals are listed without their containers (an ASYCUDA SAD) and no
/// e-seal yet: the trip cannot arm until an assignment ties and adds them.
fn untied_declaration() -> TransitDeclaration {
    let mut d = declaration();
    d.equipment = vec![
        serde_json::from_value(json!({"id": "MSKU1234565"})).unwrap(),
        serde_json::from_value(json!({"id": "TGHU8261450"})).unwrap(),
    ];
    d.seals = vec![serde_json::from_value(json!({"id": "BS1", "kind": "mechanical"})).unwrap()];
    d
}

#[test]
fn seal_assignments_tie_and_add_seals_before_departure_only() {
    let mut s = Scenario::new();
    s.trip = Trip::declare(TripId(uuid::Uuid::nil()), &untied_declaration(), t0());
    let ids = |t: &Trip| -> Vec<(String, Vec<String>)> {
        t.status
            .equipment
            .iter()
            .map(|e| {
                (
                    e.id.to_string(),
                    e.seals.iter().map(|s| s.id.to_string()).collect(),
                )
            })
            .collect()
    };
    assert_eq!(ids(&s.trip).last().unwrap().0, UNASSIGNED_EQUIPMENT);

    // The manifest ties the bolt seal; the e-seal record adds the e-seal with its device.
    let manifest = assignment(
        "MANIFEST-1",
        -30.0,
        json!([{"id": "TGHU8261450", "seals": [{"id": "BS1", "kind": "mechanical"}]}]),
    );
    let fx = s
        .input(Input::SealAssignment(manifest.clone()), Scenario::at(-30.0))
        .unwrap();
    assert!(
        matches!(&fx[..], [Effect::SealsAssigned { reference, .. }] if reference == "MANIFEST-1")
    );
    let record = assignment(
        "ES1",
        -20.0,
        json!([{"id": "MSKU1234565", "seals": [
            {"id": "ES1", "kind": "electronic", "device_id": "D1"}]}]),
    );
    s.input(Input::SealAssignment(record.clone()), Scenario::at(-20.0))
        .unwrap();
    assert_eq!(
        ids(&s.trip),
        vec![
            ("MSKU1234565".into(), vec!["ES1".into()]),
            ("TGHU8261450".into(), vec!["BS1".into()]),
        ],
        "the unassigned list is gone once empty"
    );
    // The same assignment again changes nothing.
    assert!(
        s.input(Input::SealAssignment(record), Scenario::at(-19.0))
            .unwrap()
            .is_empty()
    );
    // A seal cannot be on two containers, nor a device on two seals.
    let moved = assignment(
        "MOVE",
        -10.0,
        json!([{"id": "MSKU1234565", "seals": [{"id": "BS1", "kind": "mechanical"}]}]),
    );
    let refused = s
        .input(Input::SealAssignment(moved), Scenario::at(-10.0))
        .unwrap_err();
    assert!(
        refused.reason.contains("already on container TGHU8261450"),
        "{refused}"
    );
    let twin = assignment(
        "TWIN",
        -10.0,
        json!([{"id": "TGHU8261450", "seals": [
            {"id": "ES9", "kind": "electronic", "device_id": "D1"}]}]),
    );
    assert!(
        s.input(Input::SealAssignment(twin), Scenario::at(-10.0))
            .unwrap_err()
            .reason
            .contains("device D1 is already seal ES1")
    );

    // Now the e-seal can arm the trip, and it departs.
    s.event_at(0.0, "locked", Some((LAT, START_LON)), Some(0.0));
    assert_eq!(s.trip.status.state, TripState::Armed);
    s.drive(0.5, 0.0);
    s.drive(1.0, 0.0);
    assert_eq!(s.trip.status.state, TripState::InTransit);
    let late_seal = assignment(
        "LATE",
        2.0,
        json!([{"id": "TGHU8261450", "seals": [{"id": "BS2", "kind": "mechanical"}]}]),
    );
    let before = s.trip.clone();
    let refused = s
        .input(Input::SealAssignment(late_seal), Scenario::at(2.0))
        .unwrap_err();
    assert!(refused.reason.contains("replaced in transit"), "{refused}");
    assert_eq!(s.trip, before, "a refusal changes nothing");

    // A replay from the declaration, inputs in any order, builds the same trip.
    let mut inputs = vec![Input::SealAssignment(manifest)];
    inputs.insert(
        0,
        Input::SealAssignment(assignment(
            "ES1",
            -20.0,
            json!([{"id": "MSKU1234565", "seals": [
                {"id": "ES1", "kind": "electronic", "device_id": "D1"}]}]),
        )),
    );
    let replayed = Trip::replay(
        TripId(uuid::Uuid::nil()),
        &untied_declaration(),
        t0(),
        &RulesOverride::default(),
        &inputs,
        &s.geo,
        &s.rules,
        Scenario::at(-19.0),
    );
    assert_eq!(ids(&replayed), ids(&before));
}

#[test]
fn a_new_container_with_two_seals_is_listed_once_and_one_device_serves_one_seal() {
    let mut s = Scenario::new();
    s.trip = Trip::declare(TripId(uuid::Uuid::nil()), &untied_declaration(), t0());
    let two = assignment(
        "NEW",
        -30.0,
        json!([{"id": "CAIU5550001", "seals": [
            {"id": "BS7", "kind": "mechanical"}, {"id": "BS8", "kind": "mechanical"}]}]),
    );
    s.input(Input::SealAssignment(two), Scenario::at(-30.0))
        .unwrap();
    let new: Vec<_> = s
        .trip
        .status
        .equipment
        .iter()
        .filter(|e| e.id.as_str() == "CAIU5550001")
        .collect();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].seals.len(), 2);
    let clash = assignment(
        "CLASH",
        -20.0,
        json!([{"id": "MSKU1234565", "seals": [
            {"id": "ES7", "kind": "electronic", "device_id": "D7"},
            {"id": "ES8", "kind": "electronic", "device_id": "D7"}]}]),
    );
    let refused = s
        .input(Input::SealAssignment(clash), Scenario::at(-20.0))
        .unwrap_err();
    assert!(
        refused.reason.contains("device D7 is already seal ES7"),
        "{refused}"
    );
}

#[test]
fn thresholds_outside_their_range_are_refused_with_their_pointer() {
    for (value, pointer) in [
        (json!({"max_gap_s": i64::MAX}), "/max_gap_s"),
        (json!({"max_stop_s": 59}), "/max_stop_s"),
        (json!({"low_battery_pct": 101}), "/low_battery_pct"),
        (json!({"zone_fixes": 0}), "/zone_fixes"),
        (json!({"stop_radius_m": -1.0}), "/stop_radius_m"),
        (json!({"max_gap_s": 2.5}), "/max_gap_s"),
        (json!({"max_gap_s": true}), "/max_gap_s"),
        (json!({"no_such_rule": 1}), "/no_such_rule"),
        // The lowered ceilings (and the raised floor of the cap).
        (json!({"max_gap_s": 86_401}), "/max_gap_s"),
        (json!({"deviation_min_s": 7_201}), "/deviation_min_s"),
        (json!({"max_fix_error_m": 5_000.5}), "/max_fix_error_m"),
        (
            json!({"max_alerts_per_window": 1}),
            "/max_alerts_per_window",
        ),
    ] {
        let e = RulesOverride::parse(&value).unwrap_err();
        assert_eq!(e.pointer, pointer, "{value}: {e}");
    }
    let over = RulesOverride::parse(&json!({"max_gap_s": 86_400, "max_stop_s": null,
        "deviation_min_s": 7_200, "max_fix_error_m": 5_000, "max_alerts_per_window": 2}))
    .unwrap();
    assert_eq!(over.max_gap_s, Some(86_400));
    assert_eq!(over.max_alerts_per_window, Some(2));
    assert_eq!(over.max_stop_s, None);
    assert!(Rules::default().check().is_ok());
    for (name, lo, hi) in Rules::RANGES {
        assert!(lo <= hi, "{name}");
    }
}

/// Thresholds stored before their ranges were checked (a trip's own, a corridor's) cannot
/// make the engine panic: every path that adds a threshold to a time is checked.
#[test]
fn thresholds_stored_out_of_range_do_not_panic_the_engine() {
    let huge = RulesOverride {
        max_gap_s: Some(i64::MAX),
        max_stop_s: Some(i64::MAX),
        max_rest_s: Some(i64::MIN),
        deviation_min_s: Some(i64::MAX),
        alert_hold_s: Some(i64::MAX),
        alert_window_s: Some(i64::MIN),
        low_battery_clear_s: Some(i64::MAX),
        stop_speed_kmh: Some(f64::NAN),
        ..RulesOverride::default()
    };
    for on_trip in [true, false] {
        let mut s = Scenario::armed_and_rolling();
        if on_trip {
            s.trip.rules = huge.clone();
        } else {
            s.geo = geography_with(huge.clone());
        }
        s.drive(2.0, 0.0);
        s.event_at(3.0, "position", Some(Scenario::road(3.0, 0.0)), Some(0.0));
        s.event_at(4.0, "position", Some(Scenario::road(3.0, 0.0)), Some(0.0));
        s.event_at(5.0, "position", None, None);
        s.tick(60.0);
        s.tick(60.0 * 24.0 * 365.0 * 100.0);
        let _ = s.trip.next_due(&s.geo, &s.rules);
        // The engine works with the thresholds brought inside their ranges.
        let used = s.trip.rules_for(&s.geo, &s.rules);
        assert!(used.check().is_ok(), "{used:?}");
        assert_eq!(used.max_gap_s, 86_400);
    }
}

/// The review's C6 trigger: a battery flapping 10 % / 90 % raised one alert per low
/// reading (10,000 events, 5,002 alerts). Now it is one alert, held open while it flaps.
#[test]
fn a_flapping_battery_is_one_alert() {
    let mut s = Scenario::armed_and_rolling();
    let mut raised = 0;
    for k in 0..10_000_u32 {
        s.seq += 1;
        let level = if k % 2 == 0 { 10 } else { 90 };
        let event: SealEvent = serde_json::from_value(json!({
            "device_id": "D1", "seq": s.seq, "kind": "position",
            "time": Scenario::at(2.0 + f64::from(k) / 60.0).to_rfc3339(),
            "battery_pct": level}))
        .unwrap();
        let now = Scenario::at(2.0 + f64::from(k) / 60.0);
        raised += s
            .input(Input::SealEvent(event), now)
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Effect::AlertRaised { .. }))
            .count();
    }
    assert_eq!(s.all(AlertKind::LowBattery).len(), 1);
    assert_eq!(raised, 1);
    assert_eq!(s.open(AlertKind::LowBattery).len(), 1);
    // Once the battery reads well for the quiet period, the alert clears.
    s.event_at(2.0 + 10_000.0 / 60.0 + 11.0, "position", None, None);
    assert!(s.open(AlertKind::LowBattery).is_empty());
}

/// Slower flapping (past the quiet period and the hold) raises new alerts, but no more than
/// `max_alerts_per_window` in the window; past it, the latest alert is held open.
#[test]
fn a_slowly_flapping_condition_raises_a_bounded_number_of_alerts() {
    let mut s = Scenario::armed_and_rolling();
    let mut notifications = std::collections::BTreeSet::new();
    for k in 0..200_u32 {
        s.seq += 1;
        let level = if k % 2 == 0 { 10 } else { 90 };
        let minute = 2.0 + f64::from(k) * 11.0;
        let event: SealEvent = serde_json::from_value(json!({
            "device_id": "D1", "seq": s.seq, "kind": "position",
            "time": Scenario::at(minute).to_rfc3339(), "battery_pct": level}))
        .unwrap();
        for e in s
            .input(Input::SealEvent(event), Scenario::at(minute))
            .unwrap()
        {
            if let Effect::Notify { notification } = e {
                notifications.insert(notification.notification_id);
            }
        }
    }
    // 200 readings 11 minutes apart: 100 low ones over about 36 hours.
    let alerts = s.all(AlertKind::LowBattery);
    let max = Rules::default().max_alerts_per_window as usize;
    assert!(alerts.len() <= 2 * max, "{} alerts", alerts.len());
    assert!(
        notifications.len() <= 4 * max + 2,
        "{} notifications",
        notifications.len()
    );
    assert!(
        alerts.len() >= 2,
        "recurrences after the hold are new alerts"
    );
}

/// A recurrence within `alert_hold_s` of the clearing reopens the same alert.
#[test]
fn a_condition_that_recurs_at_once_reopens_its_alert() {
    let mut s = Scenario::armed_and_rolling();
    for (start, end) in [(5.0, 9.0), (13.0, 17.0)] {
        let mut m = start;
        while m <= end {
            s.drive(m, 3000.0);
            m += 1.0;
        }
        s.drive(end + 1.0, 0.0);
        s.drive(end + 2.0, 0.0);
    }
    let deviations = s.all(AlertKind::RouteDeviation);
    assert_eq!(deviations.len(), 1, "{deviations:?}");
    assert!(deviations[0].cleared_at.is_some());
}

/// Thresholds that make the alert debounce show in a few readings: a window of an hour,
/// three raisings in it, the battery clearing at once.
fn tight_debounce(hold_s: i64, max: u32) -> Rules {
    Rules {
        low_battery_clear_s: 0,
        alert_hold_s: hold_s,
        alert_window_s: 3600,
        max_alerts_per_window: max,
        ..Rules::default()
    }
}

fn battery(seq: u64, minute: f64, level: u8) -> SealEvent {
    serde_json::from_value(json!({
        "device_id": "D1", "seq": seq, "kind": "position",
        "time": Scenario::at(minute).to_rfc3339(), "battery_pct": level,
        "position": {"lat": LAT, "lon": START_LON + minute * DEG_PER_MIN, "fix": "gps"}}))
    .unwrap()
}

impl Scenario {
    fn battery_at(&mut self, minute: f64, level: u8) -> Vec<Effect> {
        self.seq += 1;
        let event = battery(self.seq, minute, level);
        self.input(Input::SealEvent(event), Self::at(minute))
            .unwrap()
    }
}

/// Past the cap the alert is held open; once the window has freed, a recurrence is a new
/// alert with its own time and place, raised (and so told to partners), and the held one
/// clears when its condition ended.
#[test]
fn a_recurrence_after_the_cap_is_a_new_raise_once_the_window_frees() {
    let mut s = Scenario::new();
    s.rules = tight_debounce(0, 3);
    for m in [2.0, 4.0, 6.0] {
        s.battery_at(m, 10);
        s.battery_at(m + 1.0, 90);
    }
    // Three raisings in the window: the third alert is held open.
    assert_eq!(s.all(AlertKind::LowBattery).len(), 3);
    assert_eq!(s.open(AlertKind::LowBattery).len(), 1);
    s.battery_at(8.0, 10);
    s.battery_at(9.0, 90);
    assert_eq!(s.all(AlertKind::LowBattery).len(), 3);
    let held = s.open(AlertKind::LowBattery)[0].alert_id;
    // An hour on, the window is free: the recurrence is raised as its own alert.
    let fx = s.battery_at(75.0, 10);
    let raised: Vec<&Alert> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::AlertRaised { alert } => Some(alert),
            _ => None,
        })
        .collect();
    assert_eq!(raised.len(), 1, "{fx:?}");
    assert_ne!(raised[0].alert_id, held);
    assert_eq!(raised[0].raised_at, Scenario::at(75.0));
    let position = raised[0].position.unwrap();
    assert!((position.lon - (START_LON + 75.0 * DEG_PER_MIN)).abs() < 1e-9);
    assert!(fx.iter().any(|e| matches!(e, Effect::Notify { .. })));
    let cleared = s
        .all(AlertKind::LowBattery)
        .into_iter()
        .find(|a| a.alert_id == held)
        .unwrap();
    assert_eq!(cleared.cleared_at, Some(Scenario::at(9.0)));
}

/// The cap counts raisings inside the window only: reopenings of an alert raised long ago
/// do not hold a new alert open.
#[test]
fn the_cap_counts_only_raisings_inside_the_window() {
    let mut s = Scenario::new();
    s.rules = tight_debounce(600, 4);
    // One alert, reopened twice (within the hold), cleared.
    for m in [2.0, 4.0, 6.0] {
        s.battery_at(m, 10);
        s.battery_at(m + 1.0, 90);
    }
    assert_eq!(s.all(AlertKind::LowBattery).len(), 1);
    assert!(s.open(AlertKind::LowBattery).is_empty());
    // Hours later: a new alert, reopened once; two raisings in the window, so it clears.
    s.battery_at(100.0, 10);
    s.battery_at(101.0, 90);
    s.battery_at(102.0, 10);
    s.battery_at(103.0, 90);
    assert_eq!(s.all(AlertKind::LowBattery).len(), 2);
    assert!(
        s.open(AlertKind::LowBattery).is_empty(),
        "{:?}",
        s.open(AlertKind::LowBattery)
    );
}

/// The notification id of an alert's latest raise, as the trip names it.
fn raise_notification(trip: &Trip, alert: &Alert) -> String {
    let n = trip
        .track
        .reopened
        .get(&alert.alert_id.to_string())
        .copied()
        .unwrap_or(0);
    let phase = if n > 0 {
        format!("raised/{n}")
    } else {
        "raised".to_owned()
    };
    uuid::Uuid::new_v5(
        &trip.status.trip_id.0,
        format!("alert/{}/{phase}", alert.alert_id).as_bytes(),
    )
    .to_string()
}

/// The same readings live, in order, and shuffled (late ones replayed and reconciled) give
/// the same alerts, and every raise (a reopening too) is told in both.
#[test]
fn debounced_alerts_are_the_same_live_and_replayed() {
    let events: Vec<SealEvent> = (0..60_u32)
        .map(|k| {
            let minute = 2.0 + f64::from(k) * 4.0;
            // Short dips back (a reopening) and long ones (a new alert), often enough
            // that the cap holds some.
            let level = if [0, 1, 3, 4, 9].contains(&(k % 10)) {
                10
            } else {
                90
            };
            battery(u64::from(k) + 1, minute, level)
        })
        .collect();
    let now = Scenario::at(600.0);
    let run = |order: &[usize]| {
        let mut engine = Engine::new(Arc::new(geography()), tight_debounce(600, 3));
        let id = TripId(uuid::Uuid::nil());
        engine.declare(id, declaration(), t0());
        let mut told = std::collections::BTreeSet::new();
        for &i in order {
            for e in engine
                .apply(id, Input::SealEvent(events[i].clone()), now)
                .unwrap()
            {
                if let Effect::Notify { notification } = e {
                    told.insert(notification.notification_id);
                }
            }
        }
        (engine.trip(&id).unwrap().clone(), told)
    };
    let in_order: Vec<usize> = (0..events.len()).collect();
    let (live, live_told) = run(&in_order);
    // A fixed shuffle: every third reading arrives after the ones that follow it.
    let mut shuffled: Vec<usize> = in_order.iter().copied().filter(|i| i % 3 != 1).collect();
    let late: Vec<usize> = in_order.iter().copied().filter(|i| i % 3 == 1).collect();
    for (k, i) in late.into_iter().enumerate() {
        shuffled.insert((k * 2 + 4).min(shuffled.len()), i);
    }
    let (replayed, replayed_told) = run(&shuffled);
    assert!(live.alerts.len() >= 3, "{:?}", live.alerts);
    assert!(!live.track.reopened.is_empty());
    assert_eq!(
        serde_json::to_value(&live.alerts).unwrap(),
        serde_json::to_value(&replayed.alerts).unwrap()
    );
    assert_eq!(live.track.raisings, replayed.track.raisings);
    assert_eq!(live.track.reopened, replayed.track.reopened);
    for alert in &live.alerts {
        let id = raise_notification(&live, alert);
        assert!(live_told.contains(&id), "live: {alert:?}");
        assert!(replayed_told.contains(&id), "replayed: {alert:?}");
    }
}

#[test]
fn a_release_covers_only_openings_after_it_was_received() {
    // Opened at the depot at minute 200, inside the window; the release reached the
    // gateway at minute 210: the opening stays an alert, in a replay too.
    let mut s = Scenario::armed_and_rolling();
    s.event_at(200.0, "unlocked", Some((LAT, -89.5)), None);
    assert_eq!(s.open(AlertKind::SealOpened).len(), 1);
    let mut release = s.release("DEPOT", 0.0, 600.0);
    release.received_at = Some(Scenario::at(210.0));
    s.input(Input::Release(release.clone()), Scenario::at(210.0))
        .unwrap();
    assert_eq!(s.open(AlertKind::SealOpened).len(), 1);
    let replayed = Trip::replay(
        s.trip.status.trip_id,
        &declaration(),
        t0(),
        &Default::default(),
        &[Input::Release(release)],
        &s.geo,
        &s.rules,
        Scenario::at(220.0),
    );
    // The replay has no event, so no alert: what it lacks, the rebuild keeps.
    let mut rebuilt = replayed;
    rebuilt.keep_tamper_alerts(&s.trip);
    assert_eq!(
        rebuilt
            .alerts
            .iter()
            .filter(|a| a.kind == AlertKind::SealOpened && a.cleared_at.is_none())
            .count(),
        1
    );
    assert!(
        ects_core::trip::reconcile(&s.trip, &rebuilt, Scenario::at(220.0))
            .iter()
            .all(|e| !matches!(e, Effect::AlertWithdrawn { alert } if alert.kind.is_tamper()))
    );
    // An opening after it was received is covered.
    let mut s = Scenario::armed_and_rolling();
    let mut release = s.release("DEPOT", 0.0, 600.0);
    release.received_at = Some(Scenario::at(190.0));
    s.input(Input::Release(release), Scenario::at(190.0))
        .unwrap();
    s.event_at(200.0, "unlocked", Some((LAT, -89.5)), None);
    assert!(s.all(AlertKind::SealOpened).is_empty());
    assert_eq!(s.trip.status.state, TripState::Released);
}

#[test]
fn a_cancellation_keeps_the_tamper_alert_and_the_seals_watched() {
    let mut s = Scenario::armed_and_rolling();
    s.event_at(5.0, "rope_cut", Some(Scenario::road(5.0, 0.0)), None);
    let cancel: ects_core::Cancellation = serde_json::from_value(json!({
        "trip_id": s.trip.status.trip_id, "authority": "GT", "officer": {"id": "GT-1"},
        "time": Scenario::at(10.0).to_rfc3339(), "reason": "x"}))
    .unwrap();
    s.input(Input::Cancel(cancel), Scenario::at(10.0)).unwrap();
    assert_eq!(s.trip.status.state, TripState::Cancelled);
    assert_eq!(s.open(AlertKind::SealTamper).len(), 1);
    s.event_at(20.0, "opened", Some(Scenario::road(20.0, 0.0)), None);
    assert_eq!(s.open(AlertKind::SealOpened).len(), 1);
    // Justified: closed, kept, marked; a second time refused; not a gap alert.
    let id = s.open(AlertKind::SealOpened)[0].alert_id;
    let fx = s
        .trip
        .justify(
            id,
            ects_core::Justification {
                reason: "inspection".into(),
                by: "officer:GT/1".into(),
                at: Scenario::at(30.0),
            },
        )
        .unwrap();
    assert!(matches!(fx[0], Effect::AlertUpdated { .. }));
    assert!(s.open(AlertKind::SealOpened).is_empty());
    assert_eq!(
        s.all(AlertKind::SealOpened)[0]
            .justified
            .as_ref()
            .unwrap()
            .reason,
        "inspection"
    );
    let again = ects_core::Justification {
        reason: "again".into(),
        by: "x".into(),
        at: Scenario::at(31.0),
    };
    assert!(s.trip.justify(id, again).is_err());
}
