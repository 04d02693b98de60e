//! What the merged trust pieces owe each other: a device platform posts only its own
//! devices' events (marked as its), never declarations; a single window's token is
//! confined to what it filed, like a single-window partner.

use serde_json::{Value, json};

use crate::helpers::{TestApp, fixture, make_token};
use crate::tracking::{SEAL_1, SEAL_2};
use ects_gateway::auth::Role;

fn event(seal: (&str, &str), seq: u64) -> Value {
    json!({"device_id": seal.1, "seal_id": seal.0, "seq": seq, "kind": "position",
           "time": chrono::Utc::now().to_rfc3339(), "battery_pct": 90,
           "position": {"lat": 13.93, "lon": -90.78, "fix": "gps", "speed_kmh": 0.0}})
}

async fn a_device_platform_posts_only_its_devices_events(app: TestApp) {
    let trip = app.declare_gt_sv().await;
    let platform = make_token(&app.tokens, "acme-feed", Role::DevicePlatform, None, None).await;
    // SEAL_1's device is registered to the platform, SEAL_2's is not.
    let reply = app
        .put(
            &format!("/v1/devices/{}", SEAL_1.1),
            &json!({"platform": "acme-feed"}),
        )
        .await;
    assert!(reply.status < 300, "{}", reply.text);

    let reply = app
        .post_as(
            &platform,
            "/v1/seal-events",
            json!([event(SEAL_1, 7001), event(SEAL_2, 7001)]).to_string(),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let answer = reply.json();
    assert_eq!(answer["events"]["accepted"], 1, "{answer}");
    assert_eq!(answer["events"]["refused"], 1, "{answer}");
    assert_eq!(answer["refused"][0]["pointer"], "/1", "{answer}");

    let events = app.get(&format!("/v1/trips/{trip}/events")).await.json();
    let list = events["events"].as_array().cloned().unwrap_or_default();
    let ours: Vec<&Value> = list.iter().filter(|e| e["seq"] == 7001).collect();
    assert_eq!(
        ours.len(),
        1,
        "only the registered device's event: {events}"
    );
    assert_eq!(ours[0]["device_id"], SEAL_1.1);
    assert_eq!(ours[0]["authenticated"], "platform:acme-feed", "{events}");
    // Unsigned, the event is its poster's in the audit trail (the device id only claimed).
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await.json();
    let entry = audit["entries"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|e| e["action"] == "input.seal_event" && e["payload"]["seq"] == 7001)
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["actor"], "user:acme-feed/device-platform", "{audit}");

    // Another device alone: refused and kept, but on no trip: no alert there, no trip named.
    let alerts_before = app.count("alerts").await;
    let reply = app
        .post_as(
            &platform,
            "/v1/seal-events",
            json!([event(SEAL_2, 7002)]).to_string(),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["events"]["refused"], 1, "{}", reply.text);
    assert!(!reply.text.contains(&trip), "{}", reply.text);
    assert_eq!(app.count("alerts").await, alerts_before);

    // A declaration from a device platform: 403, and nothing filed.
    let trips_before = app.count("trips").await;
    let reply = app
        .post_as(
            &platform,
            "/v1/messages/ects-json",
            fixture("ects-json/declaration-gt-sv.json"),
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert_eq!(app.count("trips").await, trips_before);
}

async fn a_single_window_token_reaches_only_what_it_filed(app: TestApp) {
    // A trip someone else filed.
    let other = app.declare_gt_sv().await;
    let sw = app.token(Role::SingleWindow, "gt-sw").await;
    // It may not read it: 404, as a trip that does not exist.
    let seen = app
        .send(
            app.anonymous
                .get(format!("{}/v1/trips/{other}", app.address))
                .bearer_auth(&sw),
        )
        .await;
    assert_eq!(seen.status, 404, "{}", seen.text);
    // Its events for a device that trip holds never reach it: answered as an unknown
    // device's (unmatched), the trip unchanged.
    let before = app.get(&format!("/v1/trips/{other}/events")).await.json();
    let reply = app
        .post_as(
            &sw,
            "/v1/seal-events",
            json!([event(SEAL_1, 7101)]).to_string(),
        )
        .await;
    // A single window does not post seal events at all (403) or, if it may, they are
    // withheld: either way they do not reach the trip.
    assert!(
        reply.status == 403 || reply.json()["events"]["unmatched"] == 1,
        "{}",
        reply.text
    );
    // Nor through /v1/messages.
    let reply = app
        .post_as(
            &sw,
            "/v1/messages/ects-json",
            json!([event(SEAL_1, 7102)]).to_string(),
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    let after = app.get(&format!("/v1/trips/{other}/events")).await.json();
    assert_eq!(before["events"], after["events"]);
    // A seal assignment to that trip's declaration: as for a declaration not registered.
    let assignment = json!({
        "reference": "SW-ASSIGN-1",
        "declaration_id": "GT-2026-T-000123",
        "issuing_authority": "GT",
        "assigned_at": chrono::Utc::now().to_rfc3339(),
        "equipment": [{"id": "MSCU1234565", "seals": [
            {"id": "ES00999999", "kind": "electronic", "device_id": "869999999999999"}]}]
    });
    let unknown = json!({
        "reference": "SW-ASSIGN-2",
        "declaration_id": "GT-2026-T-999999",
        "issuing_authority": "GT",
        "assigned_at": chrono::Utc::now().to_rfc3339(),
        "equipment": [{"id": "MSCU1234565", "seals": [
            {"id": "ES00999998", "kind": "electronic", "device_id": "869999999999998"}]}]
    });
    let a = app
        .post_as(&sw, "/v1/messages", assignment.to_string())
        .await;
    let b = app.post_as(&sw, "/v1/messages", unknown.to_string()).await;
    assert_eq!(a.status, b.status, "{} / {}", a.text, b.text);
    assert_ne!(a.status / 100, 2, "{}", a.text);

    // A single window bound to GT (`token create --role single-window --authority GT`)
    // files for GT, not for KE.
    let gt_sw = make_token(
        &app.tokens,
        "gt-window-1",
        Role::SingleWindow,
        Some("GT"),
        None,
    )
    .await;
    let reply = app
        .post_as(
            &gt_sw,
            "/v1/messages/ects-json",
            fixture("ects-json/declaration-ke-ug.json"),
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert_eq!(
        reply.pointers(),
        vec!["/issuing_authority"],
        "{}",
        reply.text
    );
    let mine = app
        .post_as(
            &gt_sw,
            "/v1/messages/ects-json",
            fixture("ects-json/declaration-gt-sv.json").to_vec(),
        )
        .await;
    // The GT declaration exists already (filed by the admin): the single window may not
    // see that trip, so it is told only that the id is taken.
    assert_eq!(mine.status, 409, "{}", mine.text);
    assert!(!mine.text.contains(&other), "{}", mine.text);
}

crate::on_both_backends!(
    a_device_platform_posts_only_its_devices_events,
    a_single_window_token_reaches_only_what_it_filed
);

/// Two agencies of one country are not one authority; custody passes only to a party.
async fn agencies_and_handovers_stay_within_the_trips_authorities(app: TestApp) {
    let reply = app
        .post_message(fixture("ects-json/declaration-ke-ug.json"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let trip = reply.json()["trips"][0].as_str().unwrap().to_owned();
    let now = chrono::Utc::now().to_rfc3339();
    let cancel = json!({"trip_id": trip, "authority": "KE-KRA", "officer": {"id": "x"},
                        "time": now, "reason": "withdrawn"});
    let kpa = app.token(Role::Officer, "KE-KPA").await;
    let reply = app
        .post_as(
            &kpa,
            &format!("/v1/trips/{trip}/cancel"),
            cancel.to_string(),
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    let kra = app.token(Role::Officer, "KE-KRA").await;
    let handover = json!({"handover_id": "HO-MX", "trip_id": trip, "from_authority": "KE-KRA",
                          "to_authority": "MX", "officer": {"id": "x"}, "time": now,
                          "seal_check": "intact"});
    let reply = app
        .post_as(
            &kra,
            &format!("/v1/trips/{trip}/handover"),
            handover.to_string(),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/to_authority"], "{}", reply.text);
    assert_eq!(app.trip(&trip).await["custodian"], "KE-KRA");
}

crate::on_both_backends!(agencies_and_handovers_stay_within_the_trips_authorities);

/// A cancelled trip's seals are still watched; another country's declaration may not take
/// them (a decoy would capture the seal's events), a re-declaration by the same country's
/// customs may.
async fn a_cancelled_trips_seals_go_only_to_its_own_countrys_next_trip(app: TestApp) {
    let trip = app.declare_gt_sv().await;
    let cancel = json!({"trip_id": trip, "authority": "GT", "officer": {"id": "x"},
                        "time": chrono::Utc::now().to_rfc3339(), "reason": "withdrawn"});
    let reply = app
        .command(&format!("/v1/trips/{trip}/cancel"), cancel.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let mut decoy: Value =
        serde_json::from_slice(&fixture("ects-json/declaration-gt-sv.json")).expect("the fixture");
    decoy["declaration_id"] = json!("HN-DECOY-1");
    decoy["issuing_authority"] = json!("HN");
    let reply = app.post_message(decoy.to_string()).await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert!(!reply.text.contains(&trip), "{}", reply.text);
    let mut again = decoy.clone();
    again["declaration_id"] = json!("GT-2026-T-000124");
    again["issuing_authority"] = json!("GT");
    let reply = app.post_message(again.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
}

crate::on_both_backends!(a_cancelled_trips_seals_go_only_to_its_own_countrys_next_trip);
