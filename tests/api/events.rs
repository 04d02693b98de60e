use ects_gateway::schemas::Canonical;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_valid, fixture};
use crate::on_both_backends;

on_both_backends!(
    events_arm_the_trip_and_move_it,
    resent_events_are_stored_once,
    a_conflicting_event_is_kept_as_evidence_and_the_rest_applied,
    tampering_raises_an_alert,
    events_for_no_trip_are_kept_as_unmatched,
    concurrent_batches_for_one_trip_are_all_applied,
    events_before_their_declaration_join_the_trip,
    event_ids_are_scoped_to_their_device,
    whole_number_floats_count_as_integers,
    declaration_bytes_replayed_to_the_events_endpoint_are_refused,
    a_declaration_and_its_first_events_arriving_together_meet,
);

fn event(device: &str, seq: u64, minute: u32, kind: &str) -> Value {
    json!({
        "device_id": device, "seq": seq, "kind": kind,
        "time": format!("2026-03-14T10:{minute:02}:00Z"),
        "position": {"lat": 13.9, "lon": -90.5, "fix": "gps"},
        "battery_pct": 80
    })
}

const DEVICE_1: &str = "860000000000001";

async fn events_arm_the_trip_and_move_it(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    let reply = app
        .post_events(fixture("ects-json/events-gt-sv.json"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["trips"], json!([trip_id]));
    assert_eq!(body["events"]["accepted"], 8);
    assert_eq!(body["events"]["duplicates"], 0);

    let trip = app.trip(&trip_id).await;
    // Both e-seals locked: armed; then more than a kilometre from where it was armed (no
    // zone is registered for the office of departure here): in transit.
    assert_eq!(trip["state"], "in_transit");
    assert_eq!(trip["equipment"][0]["seals"][0]["state"], "locked");
    // The newest valid fix, not the device's repeated last-known position.
    let events: Vec<Value> =
        serde_json::from_slice(&fixture("ects-json/events-gt-sv.json")).unwrap();
    let newest_valid = events
        .iter()
        .filter(|e| e["position"].is_object() && e["position"]["fix"] != "last_known")
        .max_by_key(|e| e["time"].as_str().unwrap().to_owned())
        .unwrap();
    assert_eq!(trip["last_position"]["time"], newest_valid["time"]);
    assert_eq!(
        trip["last_position"]["lat"],
        newest_valid["position"]["lat"]
    );

    let history = app.get(&format!("/v1/trips/{trip_id}/events")).await;
    assert_eq!(history.status, 200);
    let history = history.json();
    let times: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["time"].as_str().unwrap())
        .collect();
    assert_eq!(times.len(), 8);
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in event-time order: {times:?}"
    );
    for e in history["events"].as_array().unwrap() {
        let mut e = e.clone();
        let obj = e.as_object_mut().unwrap();
        assert!(obj.remove("received_at").is_some());
        assert!(obj.remove("message_id").is_some());
        // Unsigned, from a device without a key, under the default policy (optional).
        assert_eq!(obj.remove("authenticated"), Some(json!("none")));
        assert_valid(Canonical::SealEvent, &e);
    }
}

async fn resent_events_are_stored_once(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    let batch = json!([
        event(DEVICE_1, 1, 0, "locked"),
        event(DEVICE_1, 2, 1, "position")
    ]);
    let first = app.post_events(batch.to_string()).await;
    assert_eq!(first.status, 202, "{}", first.text);

    let again = app.post_events(batch.to_string()).await;
    assert_eq!(again.text, first.text);
    assert_eq!(again.headers["idempotent-replayed"], "true");

    // The same events in other bytes, in another envelope: still the first answer.
    let wrapped = json!({"events": batch});
    let wrapped = app.post_events(wrapped.to_string()).await;
    assert_eq!(wrapped.text, first.text, "{}", wrapped.text);

    // One old, one new: only the new one is applied.
    let mixed = json!([
        event(DEVICE_1, 2, 1, "position"),
        event(DEVICE_1, 3, 2, "position")
    ]);
    let mixed = app.post_events(mixed.to_string()).await;
    assert_eq!(mixed.status, 202);
    assert_eq!(mixed.json()["events"]["accepted"], 1);
    assert_eq!(mixed.json()["events"]["duplicates"], 1);

    // Identified by event_id instead of seq: a resend with the same id is a duplicate.
    let with_id = json!({"event_id": "evt-A", "device_id": DEVICE_1, "time": "2026-03-14T10:05:00Z", "kind": "position"});
    assert_eq!(
        app.post_events(with_id.to_string()).await.json()["events"]["accepted"],
        1
    );
    let again = app.post_events(with_id.to_string()).await;
    assert_eq!(again.headers["idempotent-replayed"], "true");

    assert_eq!(app.count("seal_events").await, 4);
    let history = app.get(&format!("/v1/trips/{trip_id}/events")).await.json();
    assert_eq!(history["events"].as_array().unwrap().len(), 4);
}

async fn a_conflicting_event_is_kept_as_evidence_and_the_rest_applied(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    app.post_events(json!([event(DEVICE_1, 1, 0, "locked")]).to_string())
        .await;
    let stored = app.count("seal_events").await;

    // seq 1 again, but now it says "opened": not a resend, a contradiction. It is kept as
    // evidence (not applied to the seal) and the rest of the batch is applied.
    let batch = json!([
        event(DEVICE_1, 2, 1, "position"),
        event(DEVICE_1, 1, 0, "opened")
    ]);
    let reply = app.post_events(batch.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let answer = reply.json();
    assert_eq!(answer["conflicts"][0]["pointer"], "/1", "{answer}");
    assert_eq!(answer["events"]["accepted"], 1, "{answer}");
    assert_eq!(app.count("seal_events").await, stored + 1);
    assert_eq!(app.count("seal_event_conflicts").await, 1);
    let status = app.trip(&trip_id).await;
    assert_eq!(status["equipment"][0]["seals"][0]["state"], "locked");
    let alerts = app
        .get(&format!("/v1/alerts?trip={trip_id}&kind=event_conflict"))
        .await
        .json();
    assert_eq!(alerts["alerts"].as_array().unwrap().len(), 1, "{alerts}");
}

async fn tampering_raises_an_alert(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    let batch = json!([
        event(DEVICE_1, 1, 0, "locked"),
        event("860000000000017", 1, 0, "locked"),
        event(DEVICE_1, 2, 10, "rope_cut"),
        event(DEVICE_1, 3, 11, "rope_cut"),
    ]);
    let reply = app.post_events(batch.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["events"]["alerts_raised"], 1);

    let trip = app.trip(&trip_id).await;
    assert_eq!(trip["open_alerts"].as_array().unwrap().len(), 1);
    assert_eq!(trip["open_alerts"][0]["kind"], "seal_tamper");
    assert_eq!(trip["equipment"][0]["seals"][0]["state"], "tampered");

    let alerts = app
        .get(&format!("/v1/alerts?trip={trip_id}&status=open"))
        .await;
    assert_eq!(alerts.status, 200, "{}", alerts.text);
    let alerts = alerts.json();
    let list = alerts["alerts"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_valid(Canonical::Alert, &list[0]);
    assert_eq!(list[0]["severity"], "critical");
    assert_eq!(
        list[0]["evidence"],
        json!([format!("{DEVICE_1}:2"), format!("{DEVICE_1}:3")])
    );
    assert_eq!(list[0]["cleared_at"], Value::Null);

    let cleared = app.get("/v1/alerts?status=cleared").await.json();
    assert_eq!(cleared["alerts"], json!([]));
    let by_kind = app.get("/v1/alerts?kind=low_battery").await.json();
    assert_eq!(by_kind["alerts"], json!([]));
}

async fn events_for_no_trip_are_kept_as_unmatched(app: TestApp) {
    let reply = app
        .post_events(json!([event("999999999999999", 1, 0, "position")]).to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["events"]["unmatched"], 1);
    assert_eq!(reply.json()["trips"], json!([]));
    assert_eq!(app.count_where("seal_events", "trip_id is null").await, 1);
}

async fn concurrent_batches_for_one_trip_are_all_applied(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    // Enough writers at once on one trip that, without row locks or a write queue, some
    // would exhaust their retries or overwrite each other's trip state.
    let batches = 24;
    let per_batch = 2;
    let mut tasks = Vec::new();
    for b in 0..batches {
        let client = app.client.clone();
        let url = format!("{}/v1/seal-events", app.address);
        // Every event is an alarm on the same seal: each one changes the trip.
        let events: Vec<Value> = (0..per_batch)
            .map(|i| {
                let n = b * per_batch + i;
                event(DEVICE_1, (n + 1) as u64, n as u32, "rope_cut")
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .body(Value::Array(events).to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 202);
    }
    let history = app
        .get(&format!("/v1/trips/{trip_id}/events?limit=1000"))
        .await
        .json();
    assert_eq!(
        history["events"].as_array().unwrap().len(),
        batches * per_batch
    );
    let alerts = app
        .get(&format!("/v1/alerts?trip={trip_id}&kind=seal_tamper"))
        .await
        .json();
    let list = alerts["alerts"].as_array().unwrap();
    assert_eq!(list.len(), 1, "one open tamper alert per seal");
    // Evidence is bounded (a lasting condition must not grow without end)...
    assert_eq!(list[0]["evidence"].as_array().unwrap().len(), 20);
    // ...so the audit chain is the witness: every event applied once, in one unbroken
    // chain (a lost or doubled trip update would show as a count off or a fork).
    let audit = app.get(&format!("/v1/trips/{trip_id}/audit")).await.json();
    assert_eq!(audit["verified"], true);
    let applied = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("input.seal_event"))
        })
        .count();
    assert_eq!(applied, batches * per_batch);
}

async fn events_before_their_declaration_join_the_trip(app: TestApp) {
    // The seal locks and reports before the declaration reaches the gateway.
    let early = json!([
        event(DEVICE_1, 1, 0, "locked"),
        event("860000000000017", 1, 0, "locked")
    ]);
    let reply = app.post_events(early.to_string()).await;
    assert_eq!(reply.json()["events"]["unmatched"], 2);
    let trip_id = app.declare_gt_sv().await;
    let trip = app.trip(&trip_id).await;
    assert_eq!(trip["equipment"][0]["seals"][0]["state"], "locked");
    assert_eq!(trip["state"], "armed");
    assert_eq!(app.count_where("seal_events", "trip_id is null").await, 0);
    // Sending them again is a duplicate, and changes nothing.
    let again = app.post_events(early.to_string()).await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(app.trip(&trip_id).await["state"], "armed");
}

async fn event_ids_are_scoped_to_their_device(app: TestApp) {
    let a = json!({"event_id": "1001", "device_id": "DEV-A", "time": "2026-03-14T10:00:00Z", "kind": "position"});
    let b = json!({"event_id": "1001", "device_id": "DEV-B", "time": "2026-03-14T10:00:00Z", "kind": "position"});
    assert_eq!(app.post_events(a.to_string()).await.status, 202);
    let reply = app.post_events(b.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert!(reply.headers.get("idempotent-replayed").is_none());
    // A seq-only event and an event_id that looks like its derived key do not collide.
    let c =
        json!({"seq": 7, "device_id": "DEV-C", "time": "2026-03-14T10:00:00Z", "kind": "position"});
    let z = json!({"event_id": "DEV-C:7", "device_id": "DEV-Z", "time": "2026-03-14T10:00:00Z", "kind": "position"});
    assert_eq!(app.post_events(c.to_string()).await.status, 202);
    assert_eq!(app.post_events(z.to_string()).await.status, 202);
    assert_eq!(app.count("seal_events").await, 4);
}

async fn whole_number_floats_count_as_integers(app: TestApp) {
    let e = json!({"device_id": "DEV-A", "seq": 1.0, "time": "2026-03-14T10:00:00Z",
                   "kind": "position", "battery_pct": 80.0,
                   "position": {"lat": 14, "lon": -90.5, "heading": 90.0}});
    let reply = app.post_events(e.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
}

async fn declaration_bytes_replayed_to_the_events_endpoint_are_refused(app: TestApp) {
    let body = fixture("ects-json/declaration-ke-ug.json");
    assert_eq!(app.post_message(body.clone()).await.status, 202);
    let reply = app.post_events(body).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/declaration_id"]);
}

async fn a_declaration_and_its_first_events_arriving_together_meet(app: TestApp) {
    let template = crate::helpers::fixture_json("ects-json/declaration-ke-ug.json");
    let mut tasks = Vec::new();
    for k in 0..20 {
        let mut declaration = template.clone();
        declaration["declaration_id"] = format!("KE-RACE-{k}").into();
        declaration["equipment"][0]["seals"][0]["id"] = format!("RACE{k}").into();
        declaration["equipment"][0]["seals"][0]["device_id"] = format!("RACE-DEV-{k}").into();
        let locked = json!({"device_id": format!("RACE-DEV-{k}"), "seq": 1, "kind": "locked",
                            "time": "2026-04-02T06:40:00Z"});
        for (path, body) in [
            ("/v1/messages/ects-json", declaration.to_string()),
            ("/v1/seal-events", locked.to_string()),
        ] {
            let client = app.client.clone();
            let url = format!("{}{path}", app.address);
            tasks.push(tokio::spawn(async move {
                client
                    .post(url)
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 202);
    }
    // Whichever came first, every event found its trip.
    assert_eq!(app.count_where("seal_events", "trip_id is null").await, 0);
    assert_eq!(
        app.count_where("trips", "state = 'declared'").await,
        0,
        "every trip armed"
    );
}
