//! What a hostile review of the engine and ingest found (issue 14): thresholds that broke
//! the clock, future-dated commands, sequence numbers that do not fit, event keys that
//! collide, conflicting events that lost a batch, and a flapping battery.

use serde_json::{Value, json};

use crate::helpers::{TestApp, fixture_json};
use crate::on_both_backends;
use crate::tracking::{DEPARTURE_LON, LAT, SEAL_1, SEAL_2, Seq, post, road_lon, rolling, t};

on_both_backends!(
    thresholds_out_of_range_are_refused_with_their_pointer,
    a_trip_with_bad_stored_thresholds_stops_no_other_trip,
    commands_dated_ahead_of_the_clock_are_refused_with_their_pointer,
    a_seq_that_does_not_fit_is_refused_and_the_largest_is_stored_as_sent,
);

const I64_MAX: i64 = i64::MAX;

/// The corridor of `register_geometry`, with these thresholds.
fn corridor_with_rules(rules: Value) -> Value {
    let line: Vec<Value> = (0..=10)
        .map(|i| json!([DEPARTURE_LON + 0.2 * f64::from(i), LAT]))
        .collect();
    json!({"type": "Feature", "properties": {"width_m": 2000, "rules": rules},
           "geometry": {"type": "LineString", "coordinates": line}})
}

async fn thresholds_out_of_range_are_refused_with_their_pointer(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    // The review's requests, word for word.
    let reply = app
        .put(
            &format!("/v1/trips/{trip}/rules"),
            &json!({"max_gap_s": I64_MAX}),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/max_gap_s"], "{}", reply.text);
    assert!(
        reply.text.contains("604800"),
        "names the range: {}",
        reply.text
    );
    let reply = app
        .put(
            "/v1/corridors/CA-PQZ-SAL",
            &corridor_with_rules(json!({"max_gap_s": I64_MAX})),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(
        reply.pointers(),
        vec!["/properties/rules/max_gap_s"],
        "{}",
        reply.text
    );
    for (rules, pointer) in [
        (json!({"max_stop_s": 0}), "/max_stop_s"),
        (json!({"max_rest_s": I64_MAX}), "/max_rest_s"),
        (json!({"deviation_min_s": -1}), "/deviation_min_s"),
        (json!({"max_speed_kmh": 1e300}), "/max_speed_kmh"),
        (json!({"zone_fixes": 4_294_967_296_u64}), "/zone_fixes"),
        (json!({"max_gap_s": 1.5}), "/max_gap_s"),
        (json!({"max_gap_s": "900"}), "/max_gap_s"),
    ] {
        let reply = app.put(&format!("/v1/trips/{trip}/rules"), &rules).await;
        assert_eq!(reply.status, 422, "{rules}: {}", reply.text);
        assert_eq!(reply.pointers(), vec![pointer], "{rules}: {}", reply.text);
        let reply = app
            .put(
                "/v1/corridors/CA-PQZ-SAL",
                &corridor_with_rules(rules.clone()),
            )
            .await;
        assert_eq!(reply.status, 422, "{rules}: {}", reply.text);
        assert_eq!(
            reply.pointers(),
            vec![format!("/properties/rules{pointer}")],
            "{rules}: {}",
            reply.text
        );
    }
    // The limits themselves are accepted.
    let reply = app
        .put(
            &format!("/v1/trips/{trip}/rules"),
            &json!({"max_gap_s": 604_800, "max_stop_s": 60}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // Nothing broke: the trip still takes events.
    post(
        &app,
        vec![seq.event(SEAL_1, 4, "position", road_lon(4), 0.0)],
    )
    .await;
}

/// A second trip on the same corridor, with its own seals.
pub(crate) async fn declare_second_trip(app: &TestApp) -> String {
    let mut declaration = fixture_json("ects-json/declaration-gt-sv.json");
    declaration["declaration_id"] = json!("GT-2026-T-000999");
    declaration["equipment"] = json!([{"id": "MSKU1234565", "seals": [
        {"id": "ES00990001", "kind": "electronic", "device_id": "860000000000990"}]}]);
    let reply = app.post_message(declaration.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    reply.json()["trips"][0].as_str().unwrap().to_owned()
}

pub(crate) const SEAL_B: (&str, &str) = ("ES00990001", "860000000000990");

async fn a_trip_with_bad_stored_thresholds_stops_no_other_trip(app: TestApp) {
    use sqlx::Row;
    let mut seq = Seq(0);
    let poisoned = rolling(&app, &mut seq).await;
    let healthy = declare_second_trip(&app).await;
    post(
        &app,
        vec![
            seq.event(SEAL_B, 0, "locked", DEPARTURE_LON, 0.0),
            seq.event(SEAL_B, 2, "position", road_lon(2), 0.0),
            seq.event(SEAL_B, 3, "position", road_lon(3), 0.0),
        ],
    )
    .await;
    assert_eq!(app.trip(&healthy).await["state"], "in_transit");

    // Thresholds stored before they were range-checked: in the trip's engine state, and
    // in its corridor.
    let engine: String = sqlx::query("select engine from trips where trip_id = $1")
        .bind(&poisoned)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
        .try_get("engine")
        .unwrap();
    let mut engine: Value = serde_json::from_str(&engine).unwrap();
    engine["rules"] = json!({"max_gap_s": I64_MAX, "max_stop_s": I64_MAX});
    sqlx::query("update trips set engine = $1, next_due_at = null where trip_id = $2")
        .bind(engine.to_string())
        .bind(&poisoned)
        .execute(app.store.pool())
        .await
        .unwrap();
    let mut corridor: Value = serde_json::from_str(
        &sqlx::query("select feature from corridors where corridor_id = 'CA-PQZ-SAL'")
            .fetch_one(app.store.pool())
            .await
            .unwrap()
            .try_get::<String, _>("feature")
            .unwrap(),
    )
    .unwrap();
    corridor["properties"]["rules"] = json!({"max_rest_s": I64_MAX});
    sqlx::query("update corridors set feature = $1 where corridor_id = 'CA-PQZ-SAL'")
        .bind(corridor.to_string())
        .execute(app.store.pool())
        .await
        .unwrap();
    sqlx::query("update geometry_version set version = version + 1 where id = 1")
        .execute(app.store.pool())
        .await
        .unwrap();

    // The clock goes on for every trip: the healthy one gets its reporting gap.
    app.tracking.tick_all(t(60)).await.unwrap();
    let gaps = app
        .get(&format!(
            "/v1/alerts?trip={healthy}&status=open&kind=reporting_gap"
        ))
        .await
        .json();
    assert_eq!(gaps["alerts"].as_array().unwrap().len(), 1, "{gaps}");
    // Events are still taken, for both trips, and the ticker goes on after them.
    let reply = post(
        &app,
        vec![
            seq.event(SEAL_1, 61, "position", road_lon(61), 0.0),
            seq.event(SEAL_2, 61, "rope_cut", road_lon(61), 0.0),
            seq.event(SEAL_B, 61, "position", road_lon(61), 0.0),
        ],
    )
    .await;
    assert_eq!(reply["events"]["accepted"], 3, "{reply}");
    assert_eq!(
        app.trip(&poisoned).await["last_position"]["time"],
        t(61).to_rfc3339().replace("+00:00", "Z")
    );
    let tamper = app
        .get(&format!(
            "/v1/alerts?trip={poisoned}&status=open&kind=seal_tamper"
        ))
        .await
        .json();
    assert_eq!(tamper["alerts"].as_array().unwrap().len(), 1, "{tamper}");
    app.tracking.tick_all(t(60 * 24 * 30)).await.unwrap();
    // A late event makes the poisoned trip replay from its stored inputs: no panic either.
    let reply = post(
        &app,
        vec![seq.event(SEAL_1, 30, "position", road_lon(30), 0.0)],
    )
    .await;
    assert_eq!(reply["events"]["accepted"], 1, "{reply}");
}

async fn commands_dated_ahead_of_the_clock_are_refused_with_their_pointer(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    let ahead = (chrono::Utc::now() + chrono::Duration::minutes(20)).to_rfc3339();
    let past = t(60).to_rfc3339();
    let release = |issued: &str, from: &str| {
        json!({"release_id": "REL-F", "trip_id": trip, "authority": "GT",
               "officer": {"id": "GT-OF-1"}, "place": "DEPOT",
               "valid_from": from, "valid_until": t(600).to_rfc3339(),
               "one_time_code": "739201", "issued_at": issued})
    };
    let handover = |time: &str| {
        json!({"handover_id": "HO-F", "trip_id": trip, "from_authority": "GT",
               "to_authority": "SV", "officer": {"id": "SV-OF-7"}, "time": time,
               "seal_check": "intact"})
    };
    let cancel = |time: &str| {
        json!({"trip_id": trip, "authority": "GT", "officer": {"id": "GT-OF-1"},
               "time": time, "reason": "withdrawn"})
    };
    for (path, body, pointer) in [
        ("release", release(&ahead, &past), "/issued_at"),
        ("release", release(&past, &ahead), "/valid_from"),
        ("handover", handover(&ahead), "/time"),
        ("cancel", cancel(&ahead), "/time"),
    ] {
        let reply = app
            .post(&format!("/v1/trips/{trip}/{path}"), body.to_string())
            .await;
        assert_eq!(reply.status, 422, "{path} {body}: {}", reply.text);
        assert_eq!(reply.pointers(), vec![pointer], "{}", reply.text);
        assert!(
            reply.text.contains("ahead of the gateway"),
            "{}",
            reply.text
        );
    }
    let assignment = json!({"reference": "FUTURE", "declaration_id": "GT-2026-T-000123",
        "issuing_authority": "GT", "assigned_at": ahead,
        "equipment": [{"id": "MSKU1234565", "seals": [
            {"id": "ES00990077", "kind": "electronic", "device_id": "860000000000077"}]}]});
    let reply = app.post_message(assignment.to_string()).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/assigned_at"], "{}", reply.text);
    // Nothing was recorded, and commands dated now are taken.
    assert_eq!(app.count("trip_commands").await, 0);
    let reply = app
        .post(
            &format!("/v1/trips/{trip}/handover"),
            handover(&chrono::Utc::now().to_rfc3339()).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

async fn a_seq_that_does_not_fit_is_refused_and_the_largest_is_stored_as_sent(app: TestApp) {
    use sqlx::Row;
    let event = |seq: u64| {
        json!({"device_id": "D-SEQ", "seq": seq, "kind": "position",
               "time": t(1).to_rfc3339(),
               "position": {"lat": LAT, "lon": DEPARTURE_LON, "fix": "gps"}})
    };
    for body in [event(u64::MAX), event(1 << 63)] {
        let reply = app.post_events(body.to_string()).await;
        assert_eq!(reply.status, 422, "{}", reply.text);
        assert_eq!(reply.pointers(), vec!["/seq"], "{}", reply.text);
        assert!(reply.text.contains("9223372036854775807"), "{}", reply.text);
        // In a batch, and in a mapped format's path alike.
        let reply = app.post_events(json!([event(1), body]).to_string()).await;
        assert_eq!(reply.status, 422, "{}", reply.text);
        assert_eq!(reply.pointers(), vec!["/1/seq"], "{}", reply.text);
    }
    let reply = app.post_events(event(i64::MAX as u64).to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let stored: i64 = sqlx::query("select seq from seal_events where device_id = 'D-SEQ'")
        .fetch_one(app.store.pool())
        .await
        .unwrap()
        .try_get("seq")
        .unwrap();
    assert_eq!(stored, i64::MAX);
}
