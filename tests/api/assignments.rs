//! Seal assignments: seals tied to a declared trip's containers after its declaration (an
//! e-seal record naming the declaration, a manifest naming only containers).

use serde_json::{Value, json};

use crate::helpers::{
    Backend, TestApp, fixture_json, product_mappings_dir, spawn_app_with_mappings,
};
use crate::on_both_backends;

on_both_backends!(
    an_e_seal_record_seals_a_declared_container_and_claims_its_early_events,
    a_manifest_ties_untied_seals_to_the_trips_that_carry_the_containers,
    assignments_for_nothing_known_are_refused_with_nothing_stored,
);

/// The GT → SV declaration with its containers but no seal yet.
fn unsealed_declaration() -> Value {
    let mut d = fixture_json("ects-json/declaration-gt-sv.json");
    for e in d["equipment"].as_array_mut().unwrap() {
        e.as_object_mut().unwrap().remove("seals");
    }
    d
}

fn record(reference: &str, container: &str, seal: &str, device: &str) -> Value {
    json!({
        "reference": reference,
        "declaration_id": "GT-2026-T-000123",
        "issuing_authority": "GT",
        "assigned_at": "2026-03-14T09:00:00Z",
        "equipment": [{"id": container, "seals": [
            {"id": seal, "kind": "electronic", "device_id": device}]}],
        "vehicle": {"plate": "C123BBB"},
        "sealed_by": "0412345678"
    })
}

async fn an_e_seal_record_seals_a_declared_container_and_claims_its_early_events(app: TestApp) {
    let reply = app.post_message(unsealed_declaration().to_string()).await;
    assert_eq!(
        reply.status, 202,
        "a declaration with containers waits for its seals: {}",
        reply.text
    );
    let trip_id = reply.json()["trips"][0].as_str().unwrap().to_owned();
    assert_eq!(app.trip(&trip_id).await["equipment"][0]["seals"], json!([]));

    // The seal locks before its record reaches us: kept as unmatched.
    let locked = json!({"device_id": "860000000000001", "seq": 1, "kind": "locked",
        "time": "2026-03-14T09:05:00Z", "position": {"lat": 13.92, "lon": -90.78, "fix": "gps"}});
    let reply = app.post_events(locked.to_string()).await;
    assert_eq!(reply.json()["events"]["unmatched"], 1, "{}", reply.text);

    let reply = app
        .post_message(
            record("ES00781234", "MSKU1234565", "ES00781234", "860000000000001").to_string(),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["trips"], json!([trip_id]));
    let assigned = &body["assignment"]["trips"][0];
    assert_eq!(assigned["declaration_id"], "GT-2026-T-000123");
    assert_eq!(assigned["seals_assigned"], 1);
    assert_eq!(assigned["events_claimed"], 1);
    assert_eq!(assigned["already_recorded"], false);

    let trip = app.trip(&trip_id).await;
    let seal = &trip["equipment"][0]["seals"][0];
    assert_eq!(seal["id"], "ES00781234");
    assert_eq!(
        seal["state"], "locked",
        "the early event was applied: {trip}"
    );
    // From now on the device's events route to the trip.
    let next = json!({"device_id": "860000000000001", "seq": 2, "kind": "position",
        "time": "2026-03-14T09:10:00Z", "position": {"lat": 13.92, "lon": -90.78, "fix": "gps"}});
    assert_eq!(
        app.post_events(next.to_string()).await.json()["events"]["accepted"],
        1
    );

    // The audit chain records the record and what it changed.
    let audit = app.get(&format!("/v1/trips/{trip_id}/audit")).await.json();
    assert_eq!(audit["verified"], true);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"input.seal_assignment"), "{actions:?}");
    assert!(actions.contains(&"effect.seals_assigned"), "{actions:?}");

    // The same record again (other bytes) changes nothing; other content under the same
    // reference is a conflict, and a seal already on another container too.
    let mut again = record("ES00781234", "MSKU1234565", "ES00781234", "860000000000001");
    again["sealed_by"] = json!("0412345678");
    let reply = app
        .post_message(serde_json::to_string_pretty(&again).unwrap())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(
        reply.json()["assignment"]["trips"][0]["already_recorded"],
        true
    );
    let reply = app
        .post_message(
            record("ES00781234", "MSKU1234565", "ES00781234", "860000000000099").to_string(),
        )
        .await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert!(reply.text.contains("already recorded"), "{}", reply.text);
    let reply = app
        .post_message(record("OTHER", "TGHU4820371", "ES00781234", "860000000000001").to_string())
        .await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert!(
        reply.text.contains("already on container MSKU1234565"),
        "{}",
        reply.text
    );
    // A seal another live trip holds is refused too: its events would route there.
    let mut other = unsealed_declaration();
    other["declaration_id"] = json!("GT-2026-T-000124");
    assert_eq!(app.post_message(other.to_string()).await.status, 202);
    let mut taken = record("TAKEN", "MSKU1234565", "ES00781234", "860000000000001");
    taken["declaration_id"] = json!("GT-2026-T-000124");
    let reply = app.post_message(taken.to_string()).await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    // Said without naming the trip that holds it.
    assert!(reply.text.contains("another live trip"), "{}", reply.text);
    assert!(!reply.text.contains(&trip_id.to_string()), "{}", reply.text);
    assert_eq!(
        app.count_where("trip_commands", "kind = 'seal_assignment'")
            .await,
        1
    );
}

async fn a_manifest_ties_untied_seals_to_the_trips_that_carry_the_containers(app: TestApp) {
    // An ASYCUDA-style declaration: seals listed apart from the two containers.
    let mut d = fixture_json("ects-json/declaration-gt-sv.json");
    let seals: Vec<Value> = d["equipment"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .flat_map(|e| {
            e.as_object_mut()
                .unwrap()
                .remove("seals")
                .unwrap()
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    d["seals"] = json!(seals);
    let reply = app.post_message(d.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let trip_id = reply.json()["trips"][0].as_str().unwrap().to_owned();
    let trip = app.trip(&trip_id).await;
    assert_eq!(trip["equipment"][2]["id"], "UNASSIGNED");

    let manifest = json!({
        "reference": "AWMDS-TIA01-2026-0042",
        "assigned_at": "2026-03-14T08:30:00Z",
        "equipment": [
            {"id": "MSKU1234565", "seals": [
                {"id": "ES00781234", "kind": "electronic", "device_id": "860000000000001"},
                {"id": "GTB4471205", "kind": "mechanical"}]},
            {"id": "TGHU4820371", "seals": [
                {"id": "ES00781235", "kind": "electronic", "device_id": "860000000000017"},
                {"id": "GTB4471206", "kind": "mechanical"}]},
            {"id": "ABCU1111111", "seals": [{"id": "XX1", "kind": "mechanical"}]}
        ]
    });
    let reply = app.post_message(manifest.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let outcome = &reply.json()["assignment"];
    assert_eq!(outcome["trips"][0]["trip_id"], trip_id.as_str());
    assert_eq!(outcome["trips"][0]["seals_assigned"], 4);
    assert_eq!(outcome["skipped"][0]["equipment_id"], "ABCU1111111");

    let trip = app.trip(&trip_id).await;
    let equipment = trip["equipment"].as_array().unwrap();
    assert_eq!(equipment.len(), 2, "the unassigned list is gone: {trip}");
    assert_eq!(equipment[1]["id"], "TGHU4820371");
    assert_eq!(equipment[1]["seals"][0]["id"], "ES00781235");
}

async fn assignments_for_nothing_known_are_refused_with_nothing_stored(app: TestApp) {
    let reply = app
        .post_message(record("ES1", "MSKU1234565", "ES00781234", "860000000000001").to_string())
        .await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/declaration_id"]);
    assert!(
        reply
            .text
            .contains("declaration GT-2026-T-000123 of GT is not yet registered: send the seal assignment again once the declaration is in"),
        "{}",
        reply.text
    );

    let manifest = json!({"reference": "M1", "assigned_at": "2026-03-14T08:30:00Z",
        "equipment": [{"id": "ABCU1111111", "seals": [{"id": "XX1", "kind": "mechanical"}]}]});
    let reply = app.post_message(manifest.to_string()).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert!(
        reply
            .text
            .contains("ABCU1111111 (no live trip carries this container)"),
        "{}",
        reply.text
    );

    // A seal on two containers, and a declaration with nothing sealed, are refused too.
    let twice = json!({"reference": "M2", "assigned_at": "2026-03-14T08:30:00Z",
        "equipment": [{"id": "ABCU1111111", "seals": [{"id": "XX1", "kind": "mechanical"}]},
                      {"id": "ABCU2222222", "seals": [{"id": "XX1", "kind": "mechanical"}]}]});
    let reply = app.post_message(twice.to_string()).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/equipment/1/seals/0/id"]);
    let mut bare = unsealed_declaration();
    bare.as_object_mut().unwrap().remove("equipment");
    let reply = app.post_message(bare.to_string()).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert!(
        reply.text.contains("no seal and no container"),
        "{}",
        reply.text
    );

    assert_eq!(app.count("trips").await, 0);
    assert_eq!(app.count("trip_commands").await, 0);
    assert_eq!(app.count_where("messages", "outcome = 'accepted'").await, 0);
}

/// The shipped formats end to end: an ASYCUDA SAD that lists its e-seals apart from its
/// containers, then the AWMDS manifest that ties them; an Indian shipping bill's trip,
/// then the exporter's CBIC e-seal record.
async fn shipped_manifest_and_e_seal_record(backend: Backend) {
    let Some(app) = spawn_app_with_mappings(backend, product_mappings_dir()).await else {
        return;
    };
    let sad = crate::helpers::repo_file("tests/formats/asycuda/transit-two-containers/input.xml");
    let reply = app.post("/v1/messages", sad).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let sad_trip = reply.json()["trips"][0].as_str().unwrap().to_owned();
    assert_eq!(
        app.trip(&sad_trip).await["equipment"][2]["id"],
        "UNASSIGNED"
    );

    let manifest = r#"<Awmds>
  <General_segment><General_segment_id>
    <Customs_office_code>UGMLB</Customs_office_code><Voyage_number>2025-104</Voyage_number>
    <Date_of_departure>2025-03-13</Date_of_departure></General_segment_id></General_segment>
  <Bol_segment><Bol_id><Bol_reference>MLB250104</Bol_reference></Bol_id>
    <ctn_segment><Ctn_reference>MSKU1234565</Ctn_reference><Seal_number>ES-00781234</Seal_number></ctn_segment>
  </Bol_segment>
  <Bol_segment><Bol_id><Bol_reference>MLB250105</Bol_reference></Bol_id>
    <ctn_segment><Ctn_reference>TGHU8261450</Ctn_reference><Seal_number>ES-00781235</Seal_number></ctn_segment>
    <ctn_segment><Ctn_reference>CAIU5550001</Ctn_reference><Seal_number>BS1</Seal_number></ctn_segment>
  </Bol_segment>
</Awmds>"#;
    let reply = app.post("/v1/messages", manifest).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["format"], "asycuda");
    assert_eq!(body["assignment"]["reference"], "2025-104@UGMLB");
    assert_eq!(body["assignment"]["trips"][0]["seals_assigned"], 2);
    assert_eq!(
        body["assignment"]["skipped"][0]["equipment_id"],
        "CAIU5550001"
    );
    let trip = app.trip(&sad_trip).await;
    assert_eq!(trip["equipment"].as_array().unwrap().len(), 2, "{trip}");
    let seal = &trip["equipment"][1]["seals"][0];
    assert_eq!(seal["id"], "ES-00781235");
    // The SAD's kind and device stay (a partner's SAD names no device: mechanical, none):
    // the manifest only ties the seal.
    assert_eq!(seal["kind"], "mechanical");
    assert_eq!(seal.get("device_id"), None);

    let mut bill = unsealed_declaration();
    bill["declaration_id"] = json!("4537880");
    bill["issuing_authority"] = json!("IN");
    bill["declared_at"] = json!("2025-03-12T06:00:00Z");
    bill["time_limit"] = json!("2025-03-20T06:00:00Z");
    let reply = app.post("/v1/messages/ects-json", bill.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let bill_trip = reply.json()["trips"][0].as_str().unwrap().to_owned();
    let record =
        crate::helpers::repo_file("tests/formats/cbic-eseal/nhava-sheva-export/input.json");
    let reply = app.post("/v1/messages", record).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["format"], "cbic-eseal");
    assert_eq!(reply.json()["trips"], json!([bill_trip]));
    let trip = app.trip(&bill_trip).await;
    assert_eq!(trip["equipment"][0]["seals"][0]["id"], "ES00781234");
    assert_eq!(trip["equipment"][0]["seals"][0]["device_id"], "ES00781234");

    // An Indian IGM's container section seals a transit declared without them.
    let mut transit: Value = serde_json::from_slice(&crate::helpers::repo_file(
        "tests/formats/ects-json/in-nsa-tkd-two-containers/input.json",
    ))
    .unwrap();
    for e in transit["equipment"].as_array_mut().unwrap() {
        e.as_object_mut().unwrap().remove("seals");
    }
    let reply = app
        .post("/v1/messages/ects-json", transit.to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let transit_trip = reply.json()["trips"][0].as_str().unwrap().to_owned();
    let igm = crate::helpers::repo_file("tests/formats/icegate-flat/igm-containers/input.txt");
    let reply = app.post("/v1/messages", igm).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["format"], "icegate-flat");
    assert_eq!(reply.json()["assignment"]["trips"][0]["seals_assigned"], 2);
    let trip = app.trip(&transit_trip).await;
    assert_eq!(
        trip["equipment"][1]["seals"][0]["id"], "MLIN104568",
        "{trip}"
    );
}

#[tokio::test]
async fn shipped_manifest_and_e_seal_record_sqlite() {
    shipped_manifest_and_e_seal_record(Backend::Sqlite).await;
}

#[tokio::test]
async fn shipped_manifest_and_e_seal_record_postgres() {
    shipped_manifest_and_e_seal_record(Backend::Postgres).await;
}

/// The AWMDS `Seals_segment`: a bill of lading's seal marks sealed onto its one container
/// (fixture `tests/formats/asycuda/manifest-bill-seals`), on the trip that carries it.
async fn a_manifests_bill_seals_reach_the_trip(backend: Backend) {
    let Some(app) = spawn_app_with_mappings(backend, product_mappings_dir()).await else {
        return;
    };
    let reply = app.post_message(unsealed_declaration().to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let trip = reply.json()["trips"][0].as_str().unwrap().to_owned();
    let manifest = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/formats/asycuda/manifest-bill-seals/input.xml"
    ))
    .unwrap();
    let reply = app.post("/v1/messages", manifest).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["assignment"]["trips"][0]["seals_assigned"], 4);
    let status = app.trip(&trip).await;
    let seals = |i: usize| -> Vec<String> {
        status["equipment"][i]["seals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(status["equipment"][0]["id"], "MSKU1234565");
    assert_eq!(seals(0), vec!["BS100411", "BS100412"]);
    assert_eq!(status["equipment"][1]["id"], "TGHU4820371");
    assert_eq!(seals(1), vec!["ES00781235", "BS100413"]);
}

#[tokio::test]
async fn a_manifests_bill_seals_reach_the_trip_sqlite() {
    a_manifests_bill_seals_reach_the_trip(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_manifests_bill_seals_reach_the_trip_postgres() {
    a_manifests_bill_seals_reach_the_trip(Backend::Postgres).await;
}
