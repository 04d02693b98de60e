//! The tracking engine through the gateway: geometry, lifecycle, commands, late events,
//! the clock, and the audit trail.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::on_both_backends;

on_both_backends!(
    a_trip_goes_from_declaration_to_release_over_http,
    release_and_handover_commands_are_checked,
    late_buffered_fixes_are_replayed_in_event_time_order,
    the_clock_raises_gaps_and_late_fixes_withdraw_them,
    a_tampered_audit_trail_does_not_verify,
    a_trip_can_have_its_own_thresholds,
    a_release_entered_after_the_opening_it_covers_is_applied_in_time_order,
    late_data_replayed_from_a_checkpoint_gives_what_order_would_have,
);

pub(crate) const LAT: f64 = 14.0;
pub(crate) const DEPARTURE_LON: f64 = -91.0;
pub(crate) const DESTINATION_LON: f64 = -89.0;
pub(crate) const SEAL_1: (&str, &str) = ("ES00781234", "860000000000001");
pub(crate) const SEAL_2: (&str, &str) = ("ES00781235", "860000000000017");

pub(crate) fn t(minutes: i64) -> DateTime<Utc> {
    "2026-03-14T08:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(minutes)
}

/// Offices as circles, the corridor along latitude 14° between them, a release depot.
pub(crate) async fn register_geometry(app: &TestApp) {
    let circle = |kind: &str, office: Option<&str>, lon: f64, r: f64| {
        let mut properties = json!({"kind": kind, "radius_m": r});
        if let Some(o) = office {
            properties["office_code"] = o.into();
        }
        json!({"type": "Feature", "properties": properties,
               "geometry": {"type": "Point", "coordinates": [lon, LAT]}})
    };
    for (id, zone) in [
        (
            "GTPQZ",
            circle("customs_office", Some("GTPQZ"), DEPARTURE_LON, 1000.0),
        ),
        (
            "SVSAL",
            circle("customs_office", Some("SVSAL"), DESTINATION_LON, 1000.0),
        ),
        ("DEPOT", circle("release_place", None, -89.5, 500.0)),
    ] {
        let reply = app.put(&format!("/v1/zones/{id}"), &zone).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let line: Vec<Value> = (0..=100)
        .map(|i| {
            json!([
                DEPARTURE_LON + (DESTINATION_LON - DEPARTURE_LON) * f64::from(i) / 100.0,
                LAT
            ])
        })
        .collect();
    let corridor = json!({"type": "Feature", "properties": {"width_m": 2000},
                          "geometry": {"type": "LineString", "coordinates": line}});
    assert_eq!(
        app.put("/v1/corridors/CA-PQZ-SAL", &corridor).await.status,
        201
    );
}

pub(crate) struct Seq(pub(crate) u64);

impl Seq {
    pub(crate) fn event(
        &mut self,
        seal: (&str, &str),
        minute: i64,
        kind: &str,
        lon: f64,
        off_m: f64,
    ) -> Value {
        self.0 += 1;
        json!({"device_id": seal.1, "seal_id": seal.0, "seq": self.0, "kind": kind,
               "time": t(minute).to_rfc3339(), "battery_pct": 90,
               "position": {"lat": LAT + off_m / 111_195.0, "lon": lon, "fix": "gps", "speed_kmh": 60.0}})
    }
}

/// On the road `minute` minutes after leaving the office centre at about 60 km/h.
pub(crate) fn road_lon(minute: i64) -> f64 {
    DEPARTURE_LON + minute as f64 * 0.00927
}

pub(crate) async fn post(app: &TestApp, events: Vec<Value>) -> Value {
    let reply = app.post_events(Value::Array(events).to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    reply.json()
}

/// Declared, both seals locked at the office, and out on the road.
pub(crate) async fn rolling(app: &TestApp, seq: &mut Seq) -> String {
    register_geometry(app).await;
    let trip = app.declare_gt_sv().await;
    post(
        app,
        vec![
            seq.event(SEAL_1, 0, "locked", DEPARTURE_LON, 0.0),
            seq.event(SEAL_2, 0, "locked", DEPARTURE_LON, 0.0),
            seq.event(SEAL_1, 2, "position", road_lon(2), 0.0),
            seq.event(SEAL_1, 3, "position", road_lon(3), 0.0),
        ],
    )
    .await;
    assert_eq!(app.trip(&trip).await["state"], "in_transit");
    trip
}

/// A release given now (a command is dated when it is given: `[tracking]
/// command_skew_s`), its window from a minute ago for ten hours.
pub(crate) fn release(trip: &str, authority: &str, place: &str) -> Value {
    let now = Utc::now();
    json!({"release_id": format!("REL-{place}"), "trip_id": trip, "authority": authority,
           "officer": {"id": format!("{authority}-OF-1")}, "place": place,
           "valid_from": (now - Duration::minutes(1)).to_rfc3339(),
           "valid_until": (now + Duration::hours(10)).to_rfc3339(),
           "one_time_code": "739201", "issued_at": now.to_rfc3339()})
}

/// A seal event at the destination office, `offset_s` seconds from now: after a release
/// given now (a release covers only what happens once it is received).
pub(crate) fn event_now(seal: (&str, &str), seq: u64, kind: &str, offset_s: i64) -> Value {
    json!({"device_id": seal.1, "seal_id": seal.0, "seq": seq, "kind": kind,
           "time": (Utc::now() + Duration::seconds(offset_s)).to_rfc3339(), "battery_pct": 90,
           "position": {"lat": LAT, "lon": DESTINATION_LON, "fix": "gps", "speed_kmh": 0.0}})
}

/// A handover given now (`minute`, the trip's time of it, is not its date: a command is
/// dated when it is given).
fn handover(trip: &str, id: &str, from: &str, to: &str, _minute: i64) -> Value {
    json!({"handover_id": id, "trip_id": trip, "from_authority": from, "to_authority": to,
           "officer": {"id": format!("{to}-OF-7"), "name": "Border officer"},
           "time": Utc::now().to_rfc3339(), "seal_check": "intact"})
}

async fn open_alerts(app: &TestApp, trip: &str, kind: &str) -> Vec<Value> {
    let reply = app
        .get(&format!("/v1/alerts?trip={trip}&status=open&kind={kind}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["alerts"].as_array().unwrap().clone()
}

async fn a_trip_goes_from_declaration_to_release_over_http(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;

    // At the border, custody passes from Guatemala to El Salvador.
    let reply = app
        .command(
            &format!("/v1/trips/{trip}/handover"),
            handover(&trip, "HO-1", "GT", "SV", 60).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["trip"]["custodian"], "SV");

    // Into the destination office (two fixes confirm it): arrived.
    post(
        &app,
        vec![
            seq.event(SEAL_1, 100, "position", DESTINATION_LON, 0.0),
            seq.event(SEAL_1, 101, "position", DESTINATION_LON, 0.0),
        ],
    )
    .await;
    let status = app.trip(&trip).await;
    assert_eq!(status["state"], "arrived");
    assert_eq!(status["custody_chain"][0]["to_authority"], "SV");

    // El Salvador authorizes release at its office: one unlock command per e-seal.
    let reply = app
        .command(
            &format!("/v1/trips/{trip}/release"),
            release(&trip, "SV", "SVSAL").to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let commands = reply.json()["commands"].as_array().unwrap().clone();
    assert_eq!(commands.len(), 2);
    assert_eq!(commands[0]["one_time_code"], "739201");
    assert_eq!(app.count("seal_commands").await, 2);

    // Both seals open inside the office within the window: released, no seal_opened.
    post(
        &app,
        vec![
            event_now(SEAL_1, 110, "unlocked", 1),
            event_now(SEAL_2, 111, "unlocked", 1),
        ],
    )
    .await;
    assert_eq!(app.trip(&trip).await["state"], "released");
    assert!(open_alerts(&app, &trip, "seal_opened").await.is_empty());

    // The audit trail holds every input and effect, and verifies.
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await;
    assert_eq!(audit.status, 200);
    let audit = audit.json();
    assert_eq!(audit["verified"], true, "{audit:#}");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for wanted in [
        "input.declaration",
        "input.seal_event",
        "input.handover",
        "input.release",
        "effect.state_changed",
        "effect.custody_changed",
        "effect.seal_command",
        "effect.notify",
    ] {
        assert!(
            actions.contains(&wanted),
            "{wanted} missing from {actions:?}"
        );
    }
    assert_eq!(audit["entries"][0]["seq"], 1);
    assert_eq!(
        audit["entries"][0]["payload"]["declaration_id"],
        "GT-2026-T-000123"
    );
}

async fn release_and_handover_commands_are_checked(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    let path = format!("/v1/trips/{trip}/release");

    let unknown = "01a1fdea-56ce-7428-ace2-433c7aa63ea3";
    let reply = app
        .command(
            &format!("/v1/trips/{unknown}/release"),
            release(unknown, "GT", "DEPOT").to_string(),
        )
        .await;
    assert_eq!(reply.status, 404);

    let cases: Vec<(Value, u16, &str)> = vec![
        (release(unknown, "GT", "DEPOT"), 422, "/trip_id"),
        (release(&trip, "SV", "DEPOT"), 409, "/authority"),
        (release(&trip, "GT", "NOWHERE"), 422, "/place"),
        (release(&trip, "GT", "GTPQZ"), 422, "/place"),
        (json!({"release_id": "R"}), 422, ""),
    ];
    for (body, status, pointer) in cases {
        let reply = app.command(&path, body.to_string()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        assert_eq!(reply.content_type(), "application/problem+json");
        assert!(
            reply.pointers().iter().any(|p| p == pointer),
            "{pointer} in {}",
            reply.text
        );
    }
    assert_eq!(app.command(&path, "{".to_owned()).await.status, 400);

    // Accepted once; the same again is harmless; the same id with other content is not.
    let ok = release(&trip, "GT", "DEPOT");
    assert_eq!(app.command(&path, ok.to_string()).await.status, 200);
    let again = app.command(&path, ok.to_string()).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["commands"], json!([]));
    let mut changed = ok.clone();
    changed["one_time_code"] = "999999".into();
    let reply = app.command(&path, changed.to_string()).await;
    assert_eq!(reply.status, 409);
    assert_eq!(reply.pointers(), vec!["/release_id"]);
    assert_eq!(app.count("trip_commands").await, 1);

    // Handover from someone who does not hold custody.
    let reply = app
        .command(
            &format!("/v1/trips/{trip}/handover"),
            handover(&trip, "HO-1", "SV", "GT", 30).to_string(),
        )
        .await;
    assert_eq!(reply.status, 409);
    assert_eq!(reply.pointers(), vec!["/from_authority"]);
    assert_eq!(app.trip(&trip).await["custodian"], "GT");
}

async fn late_buffered_fixes_are_replayed_in_event_time_order(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    // Live fixes at minutes 4 and 20 are on the road.
    post(
        &app,
        vec![
            seq.event(SEAL_1, 4, "position", road_lon(4), 0.0),
            seq.event(SEAL_1, 20, "position", road_lon(20), 0.0),
        ],
    )
    .await;
    assert!(open_alerts(&app, &trip, "route_deviation").await.is_empty());
    // The seal's buffer arrives late: between minutes 5 and 9 the truck was 1.5 to 2.5 km
    // off the corridor (1 km either side allowed). Replayed in order, that is a deviation,
    // cleared once back on the road.
    let offsets = [
        (5, 1500.0),
        (6, 2500.0),
        (7, 2500.0),
        (8, 2500.0),
        (9, 1500.0),
        (10, 0.0),
        (11, 0.0),
    ];
    let buffered: Vec<Value> = offsets
        .iter()
        .map(|&(m, off)| seq.event(SEAL_1, m, "position", road_lon(m), off))
        .collect();
    let reply = post(&app, buffered).await;
    // The replay also ticks at the wall clock, which finds this March trip overdue.
    assert!(
        reply["events"]["alerts_raised"].as_u64().unwrap() >= 1,
        "{reply}"
    );
    let alerts = app
        .get(&format!("/v1/alerts?trip={trip}&kind=route_deviation"))
        .await
        .json();
    let alert = &alerts["alerts"][0];
    assert_eq!(alert["raised_at"], t(7).to_rfc3339().replace("+00:00", "Z"));
    assert_eq!(
        alert["cleared_at"],
        t(11).to_rfc3339().replace("+00:00", "Z")
    );
    let jumps = app
        .get(&format!("/v1/alerts?trip={trip}&kind=position_jump"))
        .await
        .json();
    assert_eq!(jumps["alerts"], json!([]));
    // The newest fix is still the live one from minute 20.
    let status = app.trip(&trip).await;
    assert_eq!(
        status["last_position"]["time"],
        t(20).to_rfc3339().replace("+00:00", "Z")
    );
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await.json();
    assert_eq!(audit["verified"], true);
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "input.seal_event.late")
    );
}

async fn the_clock_raises_gaps_and_late_fixes_withdraw_them(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    post(
        &app,
        vec![seq.event(SEAL_1, 10, "position", road_lon(10), 0.0)],
    )
    .await;
    // 14 minutes without a fix: nothing; 16: a reporting gap dated at 15.
    assert_eq!(app.tracking.tick_all(t(24)).await.unwrap(), 0);
    assert_eq!(app.tracking.tick_all(t(26)).await.unwrap(), 1);
    let gap = open_alerts(&app, &trip, "reporting_gap").await;
    assert_eq!(gap.len(), 1);
    assert_eq!(
        gap[0]["raised_at"],
        t(25).to_rfc3339().replace("+00:00", "Z")
    );
    // The device's buffered fix from minute 20 arrives: there was no 15-minute gap.
    post(
        &app,
        vec![seq.event(SEAL_1, 20, "position", road_lon(20), 0.0)],
    )
    .await;
    assert!(open_alerts(&app, &trip, "reporting_gap").await.is_empty());
    let all = app
        .get(&format!(
            "/v1/alerts?trip={trip}&kind=reporting_gap&status=all"
        ))
        .await
        .json();
    assert_eq!(all["alerts"], json!([]), "a withdrawn alert is not listed");
    assert_eq!(
        app.count_where("alerts", "withdrawn_at is not null").await,
        1,
        "but kept"
    );
    // Past the time limit, the clock raises overdue.
    app.tracking.tick_all(t(60 * 49)).await.unwrap();
    assert_eq!(open_alerts(&app, &trip, "overdue").await.len(), 1);
}

async fn a_tampered_audit_trail_does_not_verify(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    assert_eq!(
        app.get(&format!("/v1/trips/{trip}/audit")).await.json()["verified"],
        true
    );
    sqlx::query("update audit_log set actor = 'someone-else' where trip_id = $1 and seq = 2")
        .bind(&trip)
        .execute(app.store.pool())
        .await
        .unwrap();
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await.json();
    assert_eq!(audit["verified"], false);
    assert!(
        audit["problem"].as_str().unwrap().contains("entry 2"),
        "{}",
        audit["problem"]
    );
}

async fn a_trip_can_have_its_own_thresholds(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    let path = format!("/v1/trips/{trip}/rules");
    for (body, pointer) in [
        (json!({"max_gap_s": -5}), "/max_gap_s"),
        (json!({"low_battery_pct": 150}), "/low_battery_pct"),
        (json!({"max_gap_z": 300}), ""),
    ] {
        let reply = app.put(&path, &body).await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.text);
        assert!(
            reply.pointers().iter().any(|p| p.starts_with(pointer)),
            "{}",
            reply.text
        );
    }
    let reply = app.put(&path, &json!({"max_gap_s": 300})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // Five minutes without a fix is now a gap on this trip.
    post(
        &app,
        vec![seq.event(SEAL_1, 10, "position", road_lon(10), 0.0)],
    )
    .await;
    app.tracking.tick_all(t(16)).await.unwrap();
    let gap = open_alerts(&app, &trip, "reporting_gap").await;
    assert_eq!(gap.len(), 1);
    assert_eq!(
        gap[0]["raised_at"],
        t(15).to_rfc3339().replace("+00:00", "Z")
    );
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await.json();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "input.rules")
    );
}

async fn a_release_entered_after_the_opening_it_covers_is_applied_in_time_order(app: TestApp) {
    // Once, a release typed in after the opening and dated before it replayed the trip and
    // withdrew the openings' alerts. A command is now dated when it is given (within
    // `[tracking] command_skew_s`), and a release never covers an opening that had already
    // happened when it arrived: the alerts stay, and are justified as an act of their own
    // (`custody.rs`).
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    post(
        &app,
        vec![
            seq.event(SEAL_1, 100, "position", DESTINATION_LON, 0.0),
            seq.event(SEAL_1, 101, "position", DESTINATION_LON, 0.0),
        ],
    )
    .await;
    assert_eq!(app.trip(&trip).await["state"], "arrived");
    post(
        &app,
        vec![
            seq.event(SEAL_1, 110, "unlocked", DESTINATION_LON, 0.0),
            seq.event(SEAL_2, 110, "unlocked", DESTINATION_LON, 0.0),
        ],
    )
    .await;
    assert_eq!(open_alerts(&app, &trip, "seal_opened").await.len(), 2);
    let mut late = release(&trip, "GT", "SVSAL");
    late["valid_from"] = t(100).to_rfc3339().into();
    late["issued_at"] = t(105).to_rfc3339().into();
    let reply = app
        .command(&format!("/v1/trips/{trip}/release"), late.to_string())
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(
        reply.pointers(),
        vec!["/issued_at", "/valid_from"],
        "{}",
        reply.text
    );
    // Given now, its window open since minute 100: the openings it came after stay.
    late["issued_at"] = Utc::now().to_rfc3339().into();
    late["valid_from"] = Utc::now().to_rfc3339().into();
    let reply = app
        .command(&format!("/v1/trips/{trip}/release"), late.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(open_alerts(&app, &trip, "seal_opened").await.len(), 2);
    assert_eq!(
        app.count_where("alerts", "withdrawn_at is not null").await,
        0
    );
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await.json();
    assert_eq!(audit["verified"], true);
}

async fn late_data_replayed_from_a_checkpoint_gives_what_order_would_have(app: TestApp) {
    // Four hours of fixes every ten minutes; later, the seal's buffer for 2h05-2h15 shows
    // a detour. Replayed from the last checkpoint before it, the outcome must equal what
    // the events in order give.
    let mut seq = Seq(0);
    let live: Vec<Value> = std::iter::once(seq.event(SEAL_1, 0, "locked", DEPARTURE_LON, 0.0))
        .chain(std::iter::once(seq.event(
            SEAL_2,
            0,
            "locked",
            DEPARTURE_LON,
            0.0,
        )))
        .chain((1..=24).map(|k| seq.event(SEAL_1, k * 10, "position", road_lon(k * 10), 0.0)))
        .collect();
    let buffered: Vec<Value> = [
        (125, 1500.0),
        (127, 2500.0),
        (129, 2500.0),
        (131, 1500.0),
        (133, 0.0),
        (135, 0.0),
    ]
    .iter()
    .map(|&(m, off)| seq.event(SEAL_1, m, "position", road_lon(m), off))
    .collect();

    register_geometry(&app).await;
    let trip = app.declare_gt_sv().await;
    // As devices send: a few events a message.
    for chunk in live.chunks(3) {
        post(&app, chunk.to_vec()).await;
    }
    let checkpoints = app.count("trip_checkpoints").await;
    assert!(checkpoints >= 3, "{checkpoints} checkpoints for four hours");
    post(&app, buffered.clone()).await;
    // Those at or after the late data were dropped; earlier ones kept.
    assert!(app.count("trip_checkpoints").await < checkpoints);

    let ordered = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite)
        .await
        .unwrap();
    register_geometry(&ordered).await;
    let ordered_trip = ordered.declare_gt_sv().await;
    let mut all = live;
    all.extend(buffered);
    all.sort_by_key(|e| e["time"].as_str().unwrap().to_owned());
    post(&ordered, all).await;

    // A replay ends with the clock at its now; give the in-order gateway the same tick.
    let now = chrono::Utc::now();
    app.tracking.tick_all(now).await.unwrap();
    ordered.tracking.tick_all(now).await.unwrap();
    let strip = |alerts: Value| -> Vec<(Value, Value, Value)> {
        alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["kind"].clone(),
                    a["raised_at"].clone(),
                    a["cleared_at"].clone(),
                )
            })
            .collect()
    };
    let a = strip(
        app.get(&format!("/v1/alerts?trip={trip}&status=all"))
            .await
            .json(),
    );
    let b = strip(
        ordered
            .get(&format!("/v1/alerts?trip={ordered_trip}&status=all"))
            .await
            .json(),
    );
    assert_eq!(a, b);
    assert!(a.iter().any(|(k, _, _)| k == "route_deviation"), "{a:?}");
    let (x, y) = (app.trip(&trip).await, ordered.trip(&ordered_trip).await);
    assert_eq!(x["state"], y["state"]);
    assert_eq!(x["last_position"], y["last_position"]);
    assert_eq!(x["equipment"], y["equipment"]);
}
