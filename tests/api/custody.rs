//! One device, one live trip; commands in time; a release never covers an opening that had
//! already happened, and covering one after the fact is a justification of its own
//! (issue 15, items 4 and 5).

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::helpers::{Backend, Reply, TestApp, fixture_json, product_mappings_dir, spawn_app_with};
use crate::on_both_backends;
use crate::tracking::{DESTINATION_LON, SEAL_1, SEAL_2, Seq, post, rolling};

on_both_backends!(
    a_declaration_naming_a_device_of_another_live_trip_is_refused_naming_nothing_of_it,
    a_seal_assignment_taking_a_held_seal_is_refused_alike,
    a_device_is_free_again_once_its_trip_is_released,
    a_cancelled_trips_seals_are_still_watched_and_its_tamper_alert_stays,
    a_release_never_withdraws_an_opening_it_came_after_and_a_replay_neither,
    a_tamper_alert_is_justified_as_an_act_of_its_own,
    historical_declarations_and_late_events_are_still_taken,
    two_declarations_racing_for_one_device_one_wins,
);

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn at(offset_s: i64) -> String {
    (now() + Duration::seconds(offset_s)).to_rfc3339()
}

/// A release given now, its window from a minute ago.
fn release_now(trip: &str, id: &str, authority: &str, place: &str) -> Value {
    json!({"release_id": id, "trip_id": trip, "authority": authority,
           "officer": {"id": format!("{authority}-OF-1")}, "place": place,
           "valid_from": at(-60), "valid_until": at(3600 * 10),
           "one_time_code": "739201", "issued_at": at(0)})
}

fn cancel_now(trip: &str) -> Value {
    json!({"trip_id": trip, "authority": "GT", "officer": {"id": "GT-OF-1"},
           "time": at(0), "reason": "withdrawn by the declarant"})
}

/// The GT → SV fixture under another declaration id, its first seal replaced by
/// `seal` (id, device).
fn decoy(declaration_id: &str, seal: (&str, Option<&str>)) -> Value {
    let mut d = fixture_json("ects-json/declaration-gt-sv.json");
    d["declaration_id"] = json!(declaration_id);
    let mut s = json!({"id": seal.0, "kind": "mechanical"});
    if let Some(device) = seal.1 {
        s = json!({"id": seal.0, "kind": "electronic", "device_id": device});
    }
    // The fixture's other seals are replaced too, so that only `seal` can collide.
    d["equipment"] = json!([
        {"id": "MSKU9000001", "seals": [s, {"id": format!("X{}", &declaration_id[declaration_id.len() - 6..]), "kind": "mechanical"}]},
    ]);
    d
}

/// The top-level members of a problem document and its type: two refusals that reveal
/// the same are alike in these.
fn shape(reply: &Reply) -> (u16, Vec<String>, Value, Value) {
    let body = reply.json();
    let mut keys: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    (
        reply.status,
        keys,
        body["type"].clone(),
        body["title"].clone(),
    )
}

/// What the answer to a refused message must not contain: anything of the trip that
/// holds the device.
fn assert_reveals_nothing_of(reply: &Reply, trip: &str, secrets: &[&str]) {
    for secret in std::iter::once(trip).chain(secrets.iter().copied()) {
        assert!(
            !reply.text.contains(secret),
            "the refusal names {secret}: {}",
            reply.text
        );
    }
}

/// A 409 for something that does not exist: a seal assignment naming a declaration
/// nobody registered.
async fn refusal_for_nothing(app: &TestApp) -> Reply {
    let assignment = json!({"reference": "NOTHING", "declaration_id": "GT-2026-T-999999",
        "issuing_authority": "GT", "assigned_at": at(0),
        "equipment": [{"id": "MSKU9999997", "seals": [
            {"id": "ES09999999", "kind": "electronic", "device_id": "869999999999999"}]}]});
    let reply = app.post_message(assignment.to_string()).await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    reply
}

async fn events_of(app: &TestApp, trip: &str) -> usize {
    let reply = app.get(&format!("/v1/trips/{trip}/events")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["events"].as_array().unwrap().len()
}

async fn alerts(app: &TestApp, trip: &str, query: &str) -> Vec<Value> {
    let reply = app.get(&format!("/v1/alerts?trip={trip}&{query}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["alerts"].as_array().unwrap().clone()
}

fn event_now(seal: (&str, &str), seq: u64, kind: &str, offset_s: i64) -> Value {
    json!({"device_id": seal.1, "seal_id": seal.0, "seq": seq, "kind": kind,
           "time": at(offset_s), "battery_pct": 90,
           "position": {"lat": crate::tracking::LAT, "lon": DESTINATION_LON, "fix": "gps", "speed_kmh": 0.0}})
}

async fn a_declaration_naming_a_device_of_another_live_trip_is_refused_naming_nothing_of_it(
    app: TestApp,
) {
    let held = app.declare_gt_sv().await;
    let nothing = refusal_for_nothing(&app).await;

    // Another declaration naming the live trip's device under a seal id of its own, and
    // one naming its mechanical seal: both refused where the document names them.
    for (body, pointer) in [
        (
            decoy("GT-2026-T-DECOY1", ("ES00990001", Some(SEAL_1.1))),
            "/equipment/0/seals/0",
        ),
        (
            decoy("GT-2026-T-DECOY2", ("GTB4471205", None)),
            "/equipment/0/seals/0",
        ),
    ] {
        let reply = app.post_message(body.to_string()).await;
        assert_eq!(reply.status, 409, "{}", reply.text);
        assert_eq!(reply.pointers(), vec![pointer], "{}", reply.text);
        assert!(reply.text.contains("another live trip"), "{}", reply.text);
        assert_reveals_nothing_of(&reply, &held, &["GT-2026-T-000123", "MSKU1234565"]);
        assert_eq!(
            shape(&reply),
            shape(&nothing),
            "{} / {}",
            reply.text,
            nothing.text
        );
    }
    assert_eq!(app.count("trips").await, 1);

    // The device's events still go to the trip that holds it.
    let reply = app
        .post_events(json!([event_now(SEAL_1, 1, "position", 0)]).to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["trips"], json!([held]));

    // Cancelled, the trip lets its devices go: the declaration is taken, and the
    // device's events go to the new trip.
    let reply = app
        .command(
            &format!("/v1/trips/{held}/cancel"),
            cancel_now(&held).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = app
        .post_message(decoy("GT-2026-T-DECOY1", ("ES00990001", Some(SEAL_1.1))).to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let taker = reply.json()["trips"][0].as_str().unwrap().to_owned();
    let before = events_of(&app, &held).await;
    let reply = app
        .post_events(json!([event_now(("ES00990001", SEAL_1.1), 2, "position", 0)]).to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["trips"], json!([taker]));
    assert_eq!(events_of(&app, &held).await, before);
}

async fn a_seal_assignment_taking_a_held_seal_is_refused_alike(app: TestApp) {
    let held = app.declare_gt_sv().await;
    let nothing = refusal_for_nothing(&app).await;
    let mut other = decoy("GT-2026-T-000124", ("ES00990002", Some("869000000000002")));
    other["equipment"][0]["id"] = json!("MSKU9000002");
    let reply = app.post_message(other.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);

    // A seal assignment tying the held device to the other trip's container.
    let assignment = json!({"reference": "TAKE", "declaration_id": "GT-2026-T-000124",
        "issuing_authority": "GT", "assigned_at": at(0),
        "equipment": [{"id": "MSKU9000002", "seals": [
            {"id": "ES00990003", "kind": "electronic", "device_id": SEAL_2.1}]}]});
    let reply = app.post_message(assignment.to_string()).await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert!(reply.text.contains("another live trip"), "{}", reply.text);
    assert_reveals_nothing_of(&reply, &held, &["GT-2026-T-000123", "MSKU1234565"]);
    assert_eq!(shape(&reply), shape(&nothing));
}

/// An ICES amendment (a new version of a Bill of Entry) naming a seal another live trip
/// holds: 409, naming nothing of it, like the one for a declaration nobody registered.
async fn an_amendment_taking_a_held_seal_is_refused_naming_nothing(backend: Backend) {
    use crate::icegate::message_types::{Be, post_be};
    let Some(app) = crate::helpers::spawn_app_with_mappings(backend, product_mappings_dir()).await
    else {
        return;
    };
    let reply = post_be(&app, &Be::default()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let mut holder = decoy("GT-2026-T-HOLD01", ("ES00781299", Some("869000000000299")));
    holder["equipment"][0]["id"] = json!("MSKU9000299");
    let reply = app.post_message(holder.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let held = reply.json()["trips"][0].as_str().unwrap().to_owned();
    let nothing = post_be(
        &app,
        &Be {
            kind: 'A',
            job: "9999",
            control: "000130",
            ..Be::default()
        },
    )
    .await;
    assert_eq!(nothing.status, 409, "{}", nothing.text);
    let reply = post_be(
        &app,
        &Be {
            kind: 'A',
            control: "000131",
            seal_2: "ES00781299",
            ..Be::default()
        },
    )
    .await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert!(reply.text.contains("another live trip"), "{}", reply.text);
    assert_reveals_nothing_of(&reply, &held, &["GT-2026-T-HOLD01", "MSKU9000299"]);
    assert_eq!(shape(&reply), shape(&nothing));
    assert_eq!(
        app.count_where("declaration_versions", "declaration_id = '4571'")
            .await,
        1
    );
}

async fn a_device_is_free_again_once_its_trip_is_released(app: TestApp) {
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
    let taken = decoy("GT-2026-T-NEXT01", ("ES00990011", Some(SEAL_1.1)));
    assert_eq!(app.post_message(taken.to_string()).await.status, 409);
    let reply = app
        .command(
            &format!("/v1/trips/{trip}/release"),
            release_now(&trip, "REL-1", "GT", "SVSAL").to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    post(
        &app,
        vec![
            event_now(SEAL_1, 200, "unlocked", 0),
            event_now(SEAL_2, 201, "unlocked", 0),
        ],
    )
    .await;
    assert_eq!(app.trip(&trip).await["state"], "released");
    assert!(
        alerts(&app, &trip, "status=open&kind=seal_opened")
            .await
            .is_empty()
    );
    let reply = app.post_message(taken.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
}

async fn a_cancelled_trips_seals_are_still_watched_and_its_tamper_alert_stays(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    post(
        &app,
        vec![seq.event(SEAL_1, 5, "rope_cut", crate::tracking::road_lon(5), 0.0)],
    )
    .await;
    assert_eq!(
        alerts(&app, &trip, "status=open&kind=seal_tamper")
            .await
            .len(),
        1
    );
    let reply = app
        .command(
            &format!("/v1/trips/{trip}/cancel"),
            cancel_now(&trip).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["trip"]["state"], "cancelled");
    // Cancelling does not close the tamper alert.
    assert_eq!(
        alerts(&app, &trip, "status=open&kind=seal_tamper")
            .await
            .len(),
        1
    );

    // The other seal opens after the cancellation: still this trip's, an alert.
    let reply = app
        .post_events(json!([event_now(SEAL_2, 300, "opened", 0)]).to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["trips"], json!([trip]), "{}", reply.text);
    assert_eq!(reply.json()["events"]["unmatched"], 0, "{}", reply.text);
    let opened = alerts(&app, &trip, "status=open&kind=seal_opened").await;
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert!(
        opened[0]["detail"].as_str().unwrap().contains("cancelled"),
        "{opened:?}"
    );
    assert_eq!(
        app.count_where("alerts", "withdrawn_at is not null").await,
        0
    );

    // Reassigned to a new trip, the seal's events go there.
    let reply = app
        .post_message(decoy("GT-2026-T-REUSE1", ("ES00990021", Some(SEAL_2.1))).to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let taker = reply.json()["trips"][0].as_str().unwrap().to_owned();
    let reply = app
        .post_events(json!([event_now(("ES00990021", SEAL_2.1), 301, "opened", 0)]).to_string())
        .await;
    assert_eq!(reply.json()["trips"], json!([taker]), "{}", reply.text);
    assert_eq!(
        alerts(&app, &trip, "status=all&kind=seal_opened")
            .await
            .len(),
        1
    );
}

/// Openings at the release place a few minutes before the release reached the gateway,
/// inside its window: the release does not cover them, now or in a replay.
async fn a_release_never_withdraws_an_opening_it_came_after_and_a_replay_neither(app: TestApp) {
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
    post(
        &app,
        vec![
            event_now(SEAL_1, 200, "unlocked", -300),
            event_now(SEAL_2, 201, "unlocked", -300),
        ],
    )
    .await;
    assert_eq!(
        alerts(&app, &trip, "status=open&kind=seal_opened")
            .await
            .len(),
        2
    );
    // Dated ten minutes back (inside the skew), its window covering the openings.
    let mut backdated = release_now(&trip, "REL-LATE", "GT", "SVSAL");
    backdated["issued_at"] = json!(at(-600));
    backdated["valid_from"] = json!(at(-600));
    let reply = app
        .command(&format!("/v1/trips/{trip}/release"), backdated.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        alerts(&app, &trip, "status=open&kind=seal_opened")
            .await
            .len(),
        2
    );
    assert_eq!(
        app.count_where("alerts", "withdrawn_at is not null").await,
        0
    );
    // A late event before everything makes the trip replay: the alerts stay.
    post(
        &app,
        vec![seq.event(SEAL_1, 50, "position", crate::tracking::road_lon(50), 0.0)],
    )
    .await;
    assert_eq!(
        alerts(&app, &trip, "status=open&kind=seal_opened")
            .await
            .len(),
        2
    );
    assert_eq!(
        app.count_where("alerts", "withdrawn_at is not null").await,
        0
    );
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await.json();
    assert!(
        !audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "effect.alert_withdrawn"),
        "{audit:#}"
    );
    // An opening after the release was received, in its window and place, is covered.
    let reply = app
        .post_events(json!([event_now(SEAL_1, 202, "opened", 5)]).to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let open = alerts(&app, &trip, "status=open&kind=seal_opened").await;
    assert_eq!(
        open.len(),
        2,
        "no new alert for the covered opening: {open:?}"
    );
}

async fn a_tamper_alert_is_justified_as_an_act_of_its_own(app: TestApp) {
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    post(
        &app,
        vec![seq.event(SEAL_1, 10, "opened", crate::tracking::road_lon(10), 0.0)],
    )
    .await;
    let open = alerts(&app, &trip, "status=open&kind=seal_opened").await;
    assert_eq!(open.len(), 1);
    let id = open[0]["alert_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/alerts/{id}/justify");

    // A reason is 1 to 2000 characters.
    for body in [
        json!({"reason": ""}),
        json!({"reason": "   "}),
        json!({"reason": "x".repeat(2001)}),
        json!({"reason": "ok", "extra": 1}),
    ] {
        let reply = app.command(&path, body.to_string()).await;
        assert_eq!(reply.status, 422, "{}", reply.text);
        assert_eq!(reply.pointers(), vec!["/reason"], "{}", reply.text);
    }
    let unknown = "01a1fdea-56ce-7428-ace2-433c7aa63ea3";
    let reply = app
        .command(
            &format!("/v1/alerts/{unknown}/justify"),
            json!({"reason": "x"}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 404, "{}", reply.text);

    let reason = "Opened by the GT inspection team at km 9 under order 2026/117";
    let reply = app
        .command(&path, json!({"reason": reason}).to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let alert = reply.json();
    assert_eq!(alert["justified"]["reason"], reason);
    // The officer as authenticated (a GT officer's token: GT is the custodian).
    let by = alert["justified"]["by"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        by.starts_with("user:") && by.ends_with("/officer/GT"),
        "{by}"
    );
    assert!(!alert["cleared_at"].is_null());
    // Kept, closed, listed, never withdrawn.
    assert!(
        alerts(&app, &trip, "status=open&kind=seal_opened")
            .await
            .is_empty()
    );
    let all = alerts(&app, &trip, "status=all&kind=seal_opened").await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["justified"]["reason"], reason);
    assert_eq!(
        app.count_where("alerts", "withdrawn_at is not null").await,
        0
    );
    // Once only.
    let reply = app
        .command(&path, json!({"reason": "again"}).to_string())
        .await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    // In the audit chain, with its actor; the chain verifies.
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await.json();
    assert_eq!(audit["verified"], true);
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "input.alert_justified")
        .expect("the justification in the audit chain")
        .clone();
    assert_eq!(entry["actor"], by.as_str());
    assert_eq!(entry["payload"]["reason"], reason);
    assert_eq!(entry["payload"]["alert_id"], id.as_str());
    // A replay (a late event) keeps the justification.
    post(
        &app,
        vec![seq.event(SEAL_1, 4, "position", crate::tracking::road_lon(4), 0.0)],
    )
    .await;
    let all = alerts(&app, &trip, "status=all&kind=seal_opened").await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["justified"]["reason"], reason);
    assert!(!all[0]["cleared_at"].is_null());
    // Only tamper alerts are justified.
    app.tracking.tick_all(Utc::now()).await.expect("a tick");
    let overdue = alerts(&app, &trip, "status=open&kind=overdue").await;
    assert_eq!(overdue.len(), 1, "{overdue:?}");
    let reply = app
        .command(
            &format!(
                "/v1/alerts/{}/justify",
                overdue[0]["alert_id"].as_str().unwrap()
            ),
            json!({"reason": "late"}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 409, "{}", reply.text);
}

async fn historical_declarations_and_late_events_are_still_taken(app: TestApp) {
    let mut d = decoy("GT-2019-T-000001", ("ES00990031", Some("869000000000031")));
    d["declared_at"] = json!("2019-06-01T08:00:00Z");
    d["time_limit"] = json!("2019-06-03T08:00:00Z");
    let reply = app.post_message(d.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let trip = reply.json()["trips"][0].as_str().unwrap().to_owned();
    // A blind-area batch from that time is taken too.
    let reply = app
        .post_events(
            json!([{"device_id": "869000000000031", "seal_id": "ES00990031", "seq": 1,
                    "kind": "locked", "time": "2019-06-01T09:00:00Z"}])
            .to_string(),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["trips"], json!([trip]));
    app.tracking.tick_all(Utc::now()).await.expect("a tick");
    assert_eq!(
        alerts(&app, &trip, "status=open&kind=overdue").await.len(),
        1
    );
}

async fn two_declarations_racing_for_one_device_one_wins(app: TestApp) {
    // Five races, each for a device of its own: in each, one wins and the other is
    // refused (without the seals' locks, PostgreSQL lets both in now and then).
    for k in 0..5 {
        let device = format!("86900000000004{k}");
        let a = decoy(
            &format!("GT-2026-T-RACE{k}A"),
            ("ES00990041", Some(&device)),
        );
        let b = decoy(
            &format!("GT-2026-T-RACE{k}B"),
            ("ES00990042", Some(&device)),
        );
        let (a, b) = (
            a.to_string()
                .replace("ES00990041", &format!("ES0099{k}041")),
            b.to_string()
                .replace("ES00990042", &format!("ES0099{k}042")),
        );
        let (x, y) = tokio::join!(app.post_message(a), app.post_message(b));
        let mut statuses = [x.status, y.status];
        statuses.sort();
        assert_eq!(statuses, [202, 409], "race {k}: {} / {}", x.text, y.text);
    }
    assert_eq!(app.count("trips").await, 5);
}

/// Commands dated outside now ± `[tracking] command_skew_s` are refused with the pointer.
async fn commands_outside_the_skew_are_refused_both_ways(backend: Backend) {
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.tracking.command_skew_s = 60;
    })
    .await
    else {
        return;
    };
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    let handover = |time: String| {
        json!({"handover_id": "HO-S", "trip_id": trip, "from_authority": "GT",
               "to_authority": "SV", "officer": {"id": "SV-OF-7"}, "time": time,
               "seal_check": "intact"})
    };
    let mut cases = Vec::new();
    for (offset, word) in [(-120, "behind"), (120, "ahead")] {
        let mut r = release_now(&trip, "REL-S", "GT", "DEPOT");
        r["issued_at"] = json!(at(offset));
        r["valid_from"] = json!(at(0));
        cases.push(("release", r, "/issued_at", word));
        let mut r = release_now(&trip, "REL-S", "GT", "DEPOT");
        r["valid_from"] = json!(at(offset));
        cases.push(("release", r, "/valid_from", word));
        cases.push(("handover", handover(at(offset)), "/time", word));
        let mut c = cancel_now(&trip);
        c["time"] = json!(at(offset));
        cases.push(("cancel", c, "/time", word));
    }
    for (path, body, pointer, word) in cases {
        let reply = app
            .command(&format!("/v1/trips/{trip}/{path}"), body.to_string())
            .await;
        assert_eq!(reply.status, 422, "{path} {body}: {}", reply.text);
        assert_eq!(reply.pointers(), vec![pointer], "{}", reply.text);
        assert!(
            reply.text.contains(&format!("60 seconds {word}")),
            "{}",
            reply.text
        );
    }
    assert_eq!(app.count("trip_commands").await, 0);
    // Inside the skew either way: taken.
    let reply = app
        .command(
            &format!("/v1/trips/{trip}/handover"),
            handover(at(-30)).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let mut r = release_now(&trip, "REL-OK", "SV", "DEPOT");
    r["issued_at"] = json!(at(30));
    r["valid_from"] = json!(at(-30));
    let reply = app
        .command(&format!("/v1/trips/{trip}/release"), r.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // The setting's range.
    let mut settings = ects_gateway::config::Settings::default();
    for (skew, ok) in [
        (9, false),
        (10, true),
        (900, true),
        (3600, true),
        (3601, false),
    ] {
        settings.tracking.command_skew_s = skew;
        assert_eq!(settings.check().is_ok(), ok, "command_skew_s = {skew}");
    }
}

/// Over AMQP: a partner's decoy declaration and seal assignment are dead-lettered with a
/// 409 that says no more than the one for a declaration that does not exist.
async fn refusals_over_amqp_reveal_nothing(backend: Backend) {
    use crate::amqp::{Listener, amqp_url, connect, partner, publish, spawn, suffix};
    let Some(url) = amqp_url() else { return };
    let id = format!("sw-{}", suffix());
    let queue = format!("ects.test.in.{id}");
    let partners = vec![partner(&format!(
        "id = \"{id}\"\nauthority = \"GT\"\nformat = \"ects-json\"\namqp_in = \"{queue}\"\n"
    ))];
    let mut dlq = Listener::on_queue(&url, &format!("{queue}.dlq")).await;
    let Some(app) = spawn(backend, &url, partners).await else {
        return;
    };
    let held = app.declare_gt_sv().await;
    let (_conn, channel) = connect(&url).await;
    let decoy_body = decoy("GT-2026-T-AMQP01", ("ES00990051", Some(SEAL_1.1))).to_string();
    let assignment = json!({"reference": "TAKE-AMQP", "equipment": [{"id": "MSKU1234565",
        "seals": [{"id": "ES00990052", "kind": "electronic", "device_id": SEAL_2.1}]}],
        "declaration_id": "GT-2026-T-AMQP02", "issuing_authority": "GT", "assigned_at": at(0)})
    .to_string();
    let mut other = decoy("GT-2026-T-AMQP02", ("ES00990053", Some("869000000000053")));
    other["equipment"][0]["id"] = json!("MSKU9000053");
    publish(
        &channel,
        &queue,
        other.to_string().as_bytes(),
        Some("other"),
    )
    .await;
    crate::helpers::eventually("the other declaration", || async {
        if app.count("trips").await == 2 {
            Ok(())
        } else {
            Err("waiting".to_owned())
        }
    })
    .await;
    let nothing = json!({"reference": "NOTHING", "declaration_id": "GT-2026-T-999999",
        "issuing_authority": "GT", "assigned_at": at(0),
        "equipment": [{"id": "MSKU9999997", "seals": [
            {"id": "ES09999999", "kind": "electronic", "device_id": "869999999999999"}]}]})
    .to_string();
    publish(&channel, &queue, decoy_body.as_bytes(), Some("decoy")).await;
    publish(&channel, &queue, assignment.as_bytes(), Some("take")).await;
    publish(&channel, &queue, nothing.as_bytes(), Some("nothing")).await;
    dlq.until("three dead letters", |seen| seen.len() >= 3)
        .await;
    let by_id = |m: &str| {
        dlq.seen
            .iter()
            .find(|r| r.message_id == m)
            .unwrap_or_else(|| panic!("{m} dead-lettered: {:?}", dlq.seen))
    };
    let nothing = by_id("nothing");
    for m in ["decoy", "take"] {
        let dead = by_id(m);
        assert_eq!(dead.headers["x-ects-status"], "409", "{:?}", dead.headers);
        let reason = &dead.headers["x-ects-reason"];
        assert!(reason.contains("another live trip"), "{reason}");
        for secret in [held.as_str(), "GT-2026-T-000123"] {
            assert!(!reason.contains(secret), "{m} names {secret}: {reason}");
        }
        let keys = |r: &crate::amqp::Received| r.headers.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(dead), keys(nothing));
    }
    assert_eq!(app.count("trips").await, 2);
}

/// Partners that take alerts are told of a justification: an `alert` notification whose
/// alert carries it, under its own notification id.
async fn a_justification_is_notified(backend: Backend) {
    let partner: ects_gateway::partners::PartnerConfig = toml::from_str(
        "id = \"gt-alerts\"\nauthority = \"GT\"\nformat = \"ects-json\"\n\
         subscribe = [\"alert\"]\nhttp_push = \"http://127.0.0.1:9/alerts\"\n",
    )
    .unwrap();
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = vec![partner];
        s.outbox.poll_ms = 60_000;
    })
    .await
    else {
        return;
    };
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    post(
        &app,
        vec![seq.event(SEAL_1, 10, "opened", crate::tracking::road_lon(10), 0.0)],
    )
    .await;
    let open = alerts(&app, &trip, "status=open&kind=seal_opened").await;
    let id = open[0]["alert_id"].as_str().unwrap().to_owned();
    let told = "kind = 'alert' and canonical like '%\"justified\"%'";
    assert_eq!(app.count_where("outbox", told).await, 0);
    let reply = app
        .command(
            &format!("/v1/alerts/{id}/justify"),
            json!({"reason": "customs inspection"}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(app.count_where("outbox", told).await, 1);
    assert_eq!(
        app.count_where("outbox", "canonical like '%customs inspection%'")
            .await,
        1
    );
    // What partners get validates against the gateway's own schema, and so does the
    // alert the justification answered.
    use sqlx::Row;
    let canonical: String = sqlx::query(
        "select canonical from outbox where kind = 'alert' and canonical like '%\"justified\"%'",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap()
    .get("canonical");
    let note: Value = serde_json::from_str(&canonical).unwrap();
    assert_eq!(note["alert"]["justified"]["reason"], "customs inspection");
    crate::helpers::assert_valid(ects_gateway::schemas::Canonical::StatusNotification, &note);
    crate::helpers::assert_valid(ects_gateway::schemas::Canonical::Alert, &reply.json());
}

mod with_settings {
    macro_rules! both {
        ($($name:ident),* $(,)?) => {
            $(
                mod $name {
                    #[tokio::test]
                    async fn sqlite() {
                        super::super::$name(super::super::Backend::Sqlite).await;
                    }

                    #[tokio::test]
                    async fn postgres() {
                        super::super::$name(super::super::Backend::Postgres).await;
                    }
                }
            )*
        };
    }

    both!(
        commands_outside_the_skew_are_refused_both_ways,
        an_amendment_taking_a_held_seal_is_refused_naming_nothing,
        a_justification_is_notified,
        refusals_over_amqp_reveal_nothing,
    );
}
