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
    one_conflicting_event_does_not_lose_a_genuine_batch,
    event_keys_cannot_collide_and_old_keys_still_match,
    a_flapping_battery_raises_one_alert,
    a_release_scheduled_more_than_a_week_ahead_is_refused,
    a_trip_whose_tick_fails_for_good_is_looked_at_again_an_hour_later,
    conflicting_variants_are_capped_and_replay_nothing,
    a_trip_whose_rebuild_fails_is_marked_and_rebuilt_later_alone,
    conflicts_show_on_the_trip_as_evidence,
    conflicts_of_unmatched_events_move_with_them_to_the_trip,
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
        reply.text.contains("86400"),
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
        (json!({"max_gap_s": 86_401}), "/max_gap_s"),
        (json!({"deviation_min_s": 7_201}), "/deviation_min_s"),
        (json!({"max_fix_error_m": 5_001}), "/max_fix_error_m"),
        (
            json!({"max_alerts_per_window": 1}),
            "/max_alerts_per_window",
        ),
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
            &json!({"max_gap_s": 86_400, "max_stop_s": 60, "deviation_min_s": 7_200,
                    "max_fix_error_m": 5_000, "max_alerts_per_window": 2}),
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
    // The other time of each release is now (a command is dated when it is given).
    let past = chrono::Utc::now().to_rfc3339();
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
            .command(&format!("/v1/trips/{trip}/{path}"), body.to_string())
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
        .command(
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

fn fix(device: &str, seal: &str, seq: u64, minute: i64, kind: &str, off_m: f64) -> Value {
    json!({"device_id": device, "seal_id": seal, "seq": seq, "kind": kind,
           "time": t(minute).to_rfc3339(), "battery_pct": 90,
           "position": {"lat": LAT + off_m / 111_195.0, "lon": road_lon(minute),
                        "fix": "gps", "speed_kmh": 60.0}})
}

async fn alerts_of(app: &TestApp, trip: &str, kind: &str) -> Vec<Value> {
    let reply = app
        .get(&format!("/v1/alerts?trip={trip}&kind={kind}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["alerts"].as_array().unwrap().clone()
}

/// The review's C4 scenario: 57 forged benign fixes took seal 1's sequence numbers first;
/// the genuine batch (5 fixes of seal 2 and seal 1's rope cut under a taken seq) was refused
/// whole with 409 and lost.
async fn one_conflicting_event_does_not_lose_a_genuine_batch(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    let (s1, d1) = SEAL_1;
    let (s2, d2) = SEAL_2;
    let forged: Vec<Value> = (0..57)
        .map(|k| fix(d1, s1, 103 + k, 4 + k as i64 / 6, "position", 0.0))
        .collect();
    // The test limit is 50 events a message: two messages.
    let first = post(&app, forged[..50].to_vec()).await;
    let second = post(&app, forged[50..].to_vec()).await;
    assert_eq!(first["events"]["accepted"], 50, "{first}");
    assert_eq!(second["events"]["accepted"], 7, "{second}");

    // A genuine opening, alone, under a taken seq, off the corridor.
    let opened = fix(d1, s1, 110, 20, "opened", 30_000.0);
    let reply = app.post_events(opened.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let answer = reply.json();
    assert_eq!(answer["events"]["conflicting"], 1, "{answer}");
    assert_eq!(answer["conflicts"][0]["pointer"], "", "{answer}");

    let mut genuine: Vec<Value> = (0..5)
        .map(|k| fix(d2, s2, 500 + k, 21 + k as i64, "position", 0.0))
        .collect();
    genuine.push(fix(d1, s1, 120, 25, "rope_cut", 0.0));
    let reply = app
        .post_events(Value::Array(genuine.clone()).to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let answer = reply.json();
    assert_eq!(answer["events"]["accepted"], 5, "{answer}");
    assert_eq!(answer["events"]["conflicting"], 1, "{answer}");
    let conflicts = answer["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{answer}");
    assert_eq!(conflicts[0]["pointer"], "/5", "{answer}");
    assert!(
        conflicts[0]["conflicts_with"]
            .as_str()
            .unwrap()
            .contains(":120"),
        "{answer}"
    );

    // The good fixes are stored and applied; both conflicting events are kept as evidence.
    assert_eq!(
        app.count_where("seal_events", &format!("device_id = '{d2}' and seq >= 500"))
            .await,
        5
    );
    assert_eq!(app.count("seal_event_conflicts").await, 2);
    assert_eq!(
        app.trip(&trip).await["last_position"]["time"],
        t(25).to_rfc3339().replace("+00:00", "Z")
    );
    // The rope cut and the opening alert; one event_conflict alert for the seal holds both.
    assert_eq!(alerts_of(&app, &trip, "seal_tamper").await.len(), 1);
    assert_eq!(alerts_of(&app, &trip, "seal_opened").await.len(), 1);
    let conflict = alerts_of(&app, &trip, "event_conflict").await;
    assert_eq!(conflict.len(), 1, "{conflict:?}");
    assert_eq!(conflict[0]["seal_id"], s1);
    assert_eq!(conflict[0]["evidence"].as_array().unwrap().len(), 2);
    crate::helpers::assert_valid(ects_gateway::schemas::Canonical::Alert, &conflict[0]);
    // Not applied to the seal's state: the stored events made it.
    let status = app.trip(&trip).await;
    let seal = status["equipment"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["seals"].as_array().unwrap())
        .find(|s| s["id"] == s1)
        .unwrap()
        .clone();
    assert_eq!(seal["state"], "locked", "{seal}");

    // The same batch again changes nothing more.
    let reply = app.post_events(Value::Array(genuine).to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(app.count("seal_event_conflicts").await, 2);
    assert_eq!(alerts_of(&app, &trip, "event_conflict").await.len(), 1);

    // A late event replays the trip from its stored inputs: the same alerts stand.
    post(&app, vec![fix(d2, s2, 499, 20, "position", 0.0)]).await;
    assert_eq!(alerts_of(&app, &trip, "event_conflict").await.len(), 1);
    assert_eq!(alerts_of(&app, &trip, "seal_tamper").await.len(), 1);
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await.json();
    assert_eq!(audit["verified"], true);
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "input.seal_event.conflicting")
    );
}

async fn event_keys_cannot_collide_and_old_keys_still_match(app: TestApp) {
    use sqlx::Row;
    let event = |device: &str, id: &str| {
        json!({"event_id": id, "device_id": device, "kind": "position",
               "time": t(1).to_rfc3339(),
               "position": {"lat": LAT, "lon": DEPARTURE_LON, "fix": "gps"}})
    };
    // Device A:B with id C, and device A with id B:C: two events, not one.
    let reply = app
        .post_events(json!([event("A:B", "C"), event("A", "B:C")]).to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let answer = reply.json();
    assert_eq!(answer["events"]["unmatched"], 2, "{answer}");
    assert_eq!(answer["events"]["conflicting"], 0, "{answer}");
    assert_eq!(app.count("seal_events").await, 2);

    // A row stored under the old key form is rewritten by the migration, and the same
    // event sent again is still recognised as the same.
    let message: String = sqlx::query("select message_id from seal_events limit 1")
        .fetch_one(app.store.pool())
        .await
        .unwrap()
        .try_get("message_id")
        .unwrap();
    let old = event("X:1", "2:3");
    sqlx::query(
        "insert into seal_events (event_key, device_id, seq, seal_id, kind, event_time,
             trip_id, message_id, canonical, received_at)
         values ('id:X:1:2:3', 'X:1', null, null, 'position', $1, null, $2, $3, $1)",
    )
    .bind(t(1).to_rfc3339())
    .bind(&message)
    .bind(
        serde_json::to_string(
            &serde_json::from_value::<ects_core::SealEvent>(old.clone()).unwrap(),
        )
        .unwrap(),
    )
    .execute(app.store.pool())
    .await
    .unwrap();
    let migration = include_str!("../../migrations/sqlite/0007_event_keys_and_conflicts.sql");
    let statements: String = migration
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let update = statements
        .split(';')
        .find(|s| s.contains("update seal_events"))
        .unwrap()
        .to_owned();
    sqlx::query(sqlx::AssertSqlSafe(update))
        .execute(app.store.pool())
        .await
        .unwrap();
    let keys: Vec<String> = sqlx::query("select event_key from seal_events order by event_key")
        .fetch_all(app.store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("event_key").unwrap())
        .collect();
    assert_eq!(keys, vec!["eid:1:A:B:C", "eid:3:A:B:C", "eid:3:X:1:2:3"]);
    let reply = app.post_events(old.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["events"]["duplicates"], 1, "{}", reply.text);
    assert_eq!(app.count("seal_events").await, 3);
}

/// The review's C6 trigger, over HTTP: battery readings flapping 10 % / 90 %.
async fn a_flapping_battery_raises_one_alert(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    let (s1, d1) = SEAL_1;
    let mut n = 0_u64;
    for message in 0..20 {
        let batch: Vec<Value> = (0..50)
            .map(|k| {
                n += 1;
                json!({"device_id": d1, "seal_id": s1, "seq": 1000 + n, "kind": "position",
                       "time": (t(4) + chrono::Duration::seconds(n as i64)).to_rfc3339(),
                       "battery_pct": if k % 2 == 0 { 10 } else { 90 }})
            })
            .collect();
        let reply = post(&app, batch).await;
        assert_eq!(
            reply["events"]["accepted"], 50,
            "message {message}: {reply}"
        );
    }
    let alerts = alerts_of(&app, &trip, "low_battery").await;
    assert_eq!(alerts.len(), 1, "{} low_battery alerts", alerts.len());
    assert_eq!(app.count_where("alerts", "kind = 'low_battery'").await, 1);
}

/// A release's `valid_from` lies within now ± `[tracking] command_skew_s`, as its
/// `issued_at` does: it is not scheduled a week ahead (nor, in the engine, more than 7 days
/// after its `issued_at`).
async fn a_release_scheduled_more_than_a_week_ahead_is_refused(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    let now = chrono::Utc::now();
    let release = |id: &str, from: chrono::DateTime<chrono::Utc>| {
        json!({"release_id": id, "trip_id": trip, "authority": "GT",
               "officer": {"id": "GT-OF-1"}, "place": "DEPOT",
               "valid_from": from.to_rfc3339(),
               "valid_until": (from + chrono::Duration::hours(1)).to_rfc3339(),
               "one_time_code": "739201", "issued_at": now.to_rfc3339()})
    };
    let reply = app
        .command(
            &format!("/v1/trips/{trip}/release"),
            release("REL-FAR", now + chrono::Duration::days(8)).to_string(),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/valid_from"], "{}", reply.text);
    assert!(
        reply.text.contains("ahead of the gateway"),
        "{}",
        reply.text
    );
    assert_eq!(app.count("trip_commands").await, 0);
    let reply = app
        .command(
            &format!("/v1/trips/{trip}/release"),
            release("REL-NOW", now).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// A trip whose stored state cannot be read fails its tick the same way every time: it is
/// looked at again `FAILED_TICK_RETRY_S` later (as the README says), not at every tick,
/// and the other trips go on.
async fn a_trip_whose_tick_fails_for_good_is_looked_at_again_an_hour_later(app: TestApp) {
    use ects_gateway::store::parse_ts;
    use ects_gateway::tracking::FAILED_TICK_RETRY_S;
    use sqlx::Row;
    let mut seq = Seq(0);
    let broken = rolling(&app, &mut seq).await;
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
    sqlx::query("update trips set engine = '{not json', next_due_at = null where trip_id = $1")
        .bind(&broken)
        .execute(app.store.pool())
        .await
        .unwrap();
    app.tracking.tick_all(t(60)).await.unwrap();
    let due: Option<String> = sqlx::query("select next_due_at from trips where trip_id = $1")
        .bind(&broken)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
        .try_get("next_due_at")
        .unwrap();
    let due =
        parse_ts(&due.expect("the failed trip is given a time to be looked at again")).unwrap();
    assert_eq!(due, t(60) + chrono::Duration::seconds(FAILED_TICK_RETRY_S));
    let gaps = app
        .get(&format!(
            "/v1/alerts?trip={healthy}&status=open&kind=reporting_gap"
        ))
        .await
        .json();
    assert_eq!(gaps["alerts"].as_array().unwrap().len(), 1, "{gaps}");
}

/// A device sending variant after variant of one old event: five are kept as evidence, the
/// rest counted on the stored event (`conflicts_dropped`); none makes the trip replay.
async fn conflicting_variants_are_capped_and_replay_nothing(app: TestApp) {
    use sqlx::Row;
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    let (s1, d1) = SEAL_1;
    // Seal 1's stored seq 3 (minute 2, before the trip's latest event at minute 3), seven
    // times with other content.
    for k in 1..=7 {
        let variant = json!({"device_id": d1, "seal_id": s1, "seq": 3, "kind": "position",
            "time": t(2).to_rfc3339(), "battery_pct": 90,
            "position": {"lat": LAT + f64::from(k) * 0.001, "lon": road_lon(2), "fix": "gps"}});
        let reply = app.post_events(variant.to_string()).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        assert_eq!(reply.json()["events"]["conflicting"], 1, "{}", reply.text);
        if k > 5 {
            assert!(reply.text.contains("not kept"), "{}", reply.text);
        }
    }
    assert_eq!(app.count("seal_event_conflicts").await, 5);
    let dropped: i64 =
        sqlx::query("select conflicts_dropped from seal_events where device_id = $1 and seq = 3")
            .bind(d1)
            .fetch_one(app.store.pool())
            .await
            .unwrap()
            .try_get("conflicts_dropped")
            .unwrap();
    assert_eq!(dropped, 2);
    let conflict = alerts_of(&app, &trip, "event_conflict").await;
    assert_eq!(conflict.len(), 1, "{conflict:?}");
    assert_eq!(conflict[0]["evidence"].as_array().unwrap().len(), 5);
    // Taken in as they came, never by a replay of the trip.
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await.json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "input.seal_event.conflicting")
            .count(),
        5,
        "{actions:?}"
    );
    assert!(!actions.iter().any(|a| a.ends_with(".late")), "{actions:?}");
    // The same variant again is a duplicate, not one more dropped.
    let again = json!({"device_id": d1, "seal_id": s1, "seq": 3, "kind": "position",
        "time": t(2).to_rfc3339(), "battery_pct": 90,
        "position": {"lat": LAT + 0.001, "lon": road_lon(2), "fix": "gps"}});
    let reply = app.post_events(again.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(app.count("seal_event_conflicts").await, 5);
}

async fn rebuild_mark(app: &TestApp, trip: &str) -> Option<String> {
    use sqlx::Row;
    sqlx::query("select rebuild_from from trips where trip_id = $1")
        .bind(trip)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
        .try_get("rebuild_from")
        .unwrap()
}

/// A trip whose rebuild fails (one of its stored events cannot be read) is that trip's
/// problem: the message is taken, the other trip's events applied, the failed trip marked;
/// once its inputs read again, the ticker rebuilds it and the mark goes.
async fn a_trip_whose_rebuild_fails_is_marked_and_rebuilt_later_alone(app: TestApp) {
    use sqlx::Row;
    let mut seq = Seq(0);
    let broken = rolling(&app, &mut seq).await;
    let healthy = declare_second_trip(&app).await;
    post(
        &app,
        vec![
            seq.event(SEAL_B, 0, "locked", DEPARTURE_LON, 0.0),
            seq.event(SEAL_B, 2, "position", road_lon(2), 0.0),
        ],
    )
    .await;
    let (_, d1) = SEAL_1;
    let row = sqlx::query(
        "select event_key, canonical from seal_events where device_id = $1 and seq = 3",
    )
    .bind(d1)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    let key: String = row.try_get("event_key").unwrap();
    let canonical: String = row.try_get("canonical").unwrap();
    sqlx::query("update seal_events set canonical = '{not json' where event_key = $1")
        .bind(&key)
        .execute(app.store.pool())
        .await
        .unwrap();
    // A late event for the broken trip (it must replay) and one for the healthy trip.
    let reply = post(
        &app,
        vec![
            seq.event(SEAL_1, 1, "position", road_lon(1), 0.0),
            seq.event(SEAL_B, 4, "position", road_lon(4), 0.0),
        ],
    )
    .await;
    assert_eq!(reply["events"]["accepted"], 2, "{reply}");
    assert_eq!(
        app.trip(&healthy).await["last_position"]["time"],
        t(4).to_rfc3339().replace("+00:00", "Z")
    );
    assert!(rebuild_mark(&app, &broken).await.is_some());
    // Still broken: the next input and the ticker leave it marked, the others go on.
    post(
        &app,
        vec![seq.event(SEAL_1, 5, "position", road_lon(5), 0.0)],
    )
    .await;
    let now = chrono::Utc::now();
    app.tracking.tick_all(now).await.unwrap();
    assert!(rebuild_mark(&app, &broken).await.is_some());
    assert_eq!(
        app.trip(&broken).await["last_position"]["time"],
        t(3).to_rfc3339().replace("+00:00", "Z")
    );
    // Readable again: the ticker (an hour later, as for any trip that failed) rebuilds
    // it with every stored input.
    sqlx::query("update seal_events set canonical = $1 where event_key = $2")
        .bind(&canonical)
        .bind(&key)
        .execute(app.store.pool())
        .await
        .unwrap();
    app.tracking
        .tick_all(now + chrono::Duration::seconds(ects_gateway::tracking::FAILED_TICK_RETRY_S))
        .await
        .unwrap();
    assert!(rebuild_mark(&app, &broken).await.is_none());
    assert_eq!(
        app.trip(&broken).await["last_position"]["time"],
        t(5).to_rfc3339().replace("+00:00", "Z")
    );
}

/// The conflicting variants of a trip's events are evidence: its events say which have
/// some, and `GET /v1/trips/{id}/conflicts` lists them, paged, with when they came and
/// who sent them.
async fn conflicts_show_on_the_trip_as_evidence(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    let (s1, d1) = SEAL_1;
    for k in 1..=3 {
        let variant = json!({"device_id": d1, "seal_id": s1, "seq": 3, "kind": "position",
            "time": t(2).to_rfc3339(), "battery_pct": 90,
            "position": {"lat": LAT + f64::from(k) * 0.001, "lon": road_lon(2), "fix": "gps"}});
        let reply = app.post_events(variant.to_string()).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    let events = app.get(&format!("/v1/trips/{trip}/events")).await.json();
    let events = events["events"].as_array().unwrap();
    let marked: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("conflicts").is_some())
        .collect();
    assert_eq!(marked.len(), 1, "{events:?}");
    assert_eq!(marked[0]["seq"], 3);
    assert_eq!(marked[0]["conflicts"], 3);
    assert!(marked[0].get("conflicts_dropped").is_none());

    let mut seen = Vec::new();
    let mut path = format!("/v1/trips/{trip}/conflicts?limit=2");
    loop {
        let reply = app.get(&path).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let page = reply.json();
        for c in page["conflicts"].as_array().unwrap() {
            assert!(c["conflicts_with"].as_str().unwrap().ends_with(":3"), "{c}");
            assert_eq!(c["event"]["seq"], 3, "{c}");
            assert!(c["received_at"].as_str().is_some(), "{c}");
            assert!(!c["sender"].as_str().unwrap().is_empty(), "{c}");
            assert!(!c["transport"].as_str().unwrap().is_empty(), "{c}");
            seen.push(c["conflict_id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/trips/{trip}/conflicts?limit=2&after={next}"),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{seen:?}");
    assert_eq!(seen.len(), 3, "{seen:?}");
    let reply = app
        .get(&format!("/v1/trips/{trip}/conflicts?after=zz"))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
}

/// A device reporting before its declaration: its events wait unmatched, and so do the
/// conflicting variants of them. The declaration claims both: the conflicts show on the trip.
async fn conflicts_of_unmatched_events_move_with_them_to_the_trip(app: TestApp) {
    crate::tracking::register_geometry(&app).await;
    let (s1, d1) = SEAL_1;
    let early = |lat_off: f64| {
        json!({"device_id": d1, "seal_id": s1, "seq": 7, "kind": "position",
            "time": t(0).to_rfc3339(), "battery_pct": 90,
            "position": {"lat": LAT + lat_off, "lon": DEPARTURE_LON, "fix": "gps"}})
    };
    let reply = app.post_events(early(0.0).to_string()).await;
    assert_eq!(reply.json()["events"]["unmatched"], 1, "{}", reply.text);
    let reply = app.post_events(early(0.001).to_string()).await;
    assert_eq!(reply.json()["events"]["conflicting"], 1, "{}", reply.text);

    let trip = app.declare_gt_sv().await;
    let conflicts = app.get(&format!("/v1/trips/{trip}/conflicts")).await.json();
    let conflicts = conflicts["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0]["event"]["seq"], 7);
    let events = app.get(&format!("/v1/trips/{trip}/events")).await.json();
    assert_eq!(events["events"][0]["conflicts"], 1, "{events}");
    assert_eq!(alerts_of(&app, &trip, "event_conflict").await.len(), 1);
    assert_eq!(
        app.count_where("seal_event_conflicts", "trip_id is null")
            .await,
        0
    );
}
