//! Confinement and no leaks (issue 15, item 6): a partner acts only on the trips it may
//! see, over HTTP and its AMQP queue, and each refusal is answered exactly as the same
//! request about something that does not exist; one-time unlock codes are kept only as
//! hashes and shown only in the release's answer.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::amqp::{Listener, amqp_url, connect, declaration, publish, suffix};
use crate::helpers::{
    Backend, TestApp, fixture, log_lines_with, product_mappings_dir, spawn_app_with,
};
use crate::tracking::{
    DEPARTURE_LON, DESTINATION_LON, SEAL_1, SEAL_2, Seq, post, register_geometry, road_lon, t,
};
use ects_gateway::partners::PartnerConfig;

fn sha256(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A partner whose API token is `<id>-token`.
fn partner(id: &str, authority: &str, sees: &str, extra: &str) -> PartnerConfig {
    toml::from_str(&format!(
        "id = \"{id}\"\nauthority = \"{authority}\"\nformat = \"ects-json\"\nsees = \"{sees}\"\n\
         api_token_sha256 = \"{}\"\n{extra}",
        sha256(&format!("{id}-token"))
    ))
    .unwrap()
}

#[derive(Debug)]
struct Answer {
    status: u16,
    text: String,
    replayed: bool,
}

async fn send(app: &TestApp, token: Option<&str>, method: &str, path: &str, body: &str) -> Answer {
    let url = format!("{}{path}", app.address);
    let mut request = match method {
        "GET" => app.client.get(url),
        "PUT" => app.client.put(url),
        _ => app.client.post(url),
    };
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if method != "GET" {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    Answer {
        status,
        text: response.text().await.unwrap(),
        replayed,
    }
}

/// An answer with what rightly differs between two requests blanked: the ids the caller
/// asked about, and the id the gateway gave its message.
fn shape(answer: &Answer, asked: &[&str]) -> Value {
    let mut text = answer.text.clone();
    for id in asked {
        text = text.replace(id, "<asked>");
    }
    let mut value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if value.get("message_id").is_some() {
        value["message_id"] = json!("<message>");
    }
    json!({"status": answer.status, "replayed": answer.replayed, "body": value})
}

fn event(device: &str, seal: &str, seq: u64, kind: &str) -> Value {
    json!({"device_id": device, "seal_id": seal, "seq": seq, "kind": kind,
           "time": t(5).to_rfc3339(), "battery_pct": 80,
           "position": {"lat": 14.0, "lon": road_lon(5), "fix": "gps"}})
}

const UNKNOWN_DEVICE: (&str, &str) = ("ES09999999", "869999999999999");
const UNKNOWN_TRIP: &str = "01a1fdea-56ce-7428-ace2-433c7aa63ea3";

async fn a_partner_reaches_only_the_trips_it_may_see(backend: Backend) {
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = vec![
            partner("gt-sat", "GT", "parties", ""),
            partner("mx-sat", "MX", "parties", ""),
            partner("gt-sw", "GT", "filed", ""),
        ];
    })
    .await
    else {
        return;
    };
    let (gt, mx, sw) = (
        Some("gt-sat-token"),
        Some("mx-sat-token"),
        Some("gt-sw-token"),
    );
    register_geometry(&app).await;
    // The operator's GT → SV transit (corridor CA-PQZ-SAL): GT sees it, MX and the single
    // window do not.
    let trip = app.declare_gt_sv().await;
    let fixture_text = String::from_utf8(fixture("ects-json/declaration-gt-sv.json")).unwrap();

    // 1. Filing under another country's authority: 403, the same for a declaration that
    // exists and one that does not, and nothing stored.
    let taken = send(&app, mx, "POST", "/v1/messages/ects-json", &fixture_text).await;
    let (free, _) = declaration(77);
    let free = send(
        &app,
        mx,
        "POST",
        "/v1/messages/ects-json",
        std::str::from_utf8(&free).unwrap(),
    )
    .await;
    assert_eq!(taken.status, 403, "{}", taken.text);
    assert_eq!(
        shape(&taken, &["GT-2026-T-000123"]),
        shape(&free, &["GT-2026-T-000077"])
    );
    assert!(
        taken.text.contains("may not file for authority GT") && !taken.text.contains(&trip),
        "{}",
        taken.text
    );
    assert!(taken.text.contains("/issuing_authority"), "{}", taken.text);
    assert_eq!(app.count("trips").await, 1);

    // 2. A 409 names only what the caller may see. The single window (GT, sees what it
    // filed) resends the operator's bytes, then a variant: the same refusal, neither the
    // trip nor the first differing field.
    let same = send(&app, sw, "POST", "/v1/messages/ects-json", &fixture_text).await;
    let mut changed: Value = serde_json::from_str(&fixture_text).unwrap();
    changed["goods"][0]["packages"] = json!(481);
    let changed = send(
        &app,
        sw,
        "POST",
        "/v1/messages/ects-json",
        &changed.to_string(),
    )
    .await;
    assert_eq!(same.status, 409, "{}", same.text);
    assert!(!same.replayed, "not the operator's answer replayed");
    assert_eq!(shape(&same, &[]), shape(&changed, &[]));
    assert!(
        !same.text.contains(&trip) && !same.text.contains("goods"),
        "{}",
        same.text
    );
    // GT may see the trip: its 409 points at the difference, as before.
    let mut changed: Value = serde_json::from_str(&fixture_text).unwrap();
    changed["goods"][0]["packages"] = json!(481);
    let seen = send(
        &app,
        gt,
        "POST",
        "/v1/messages/ects-json",
        &changed.to_string(),
    )
    .await;
    assert_eq!(seen.status, 409, "{}", seen.text);
    assert!(seen.text.contains("/goods/0/packages"), "{}", seen.text);

    // 3. Events for a device a trip it may not see holds: answered as an unknown device's,
    // and never reaching that trip.
    let events_before = app
        .count_where("seal_events", &format!("trip_id = '{trip}'"))
        .await;
    let audit_before = app
        .count_where("audit_log", &format!("trip_id = '{trip}'"))
        .await;
    let held = |kind: &str| event(SEAL_1.1, SEAL_1.0, 500, kind).to_string();
    let unknown = |kind: &str| event(UNKNOWN_DEVICE.1, UNKNOWN_DEVICE.0, 500, kind).to_string();
    let held_ids = [SEAL_1.1, SEAL_1.0];
    let unknown_ids = [UNKNOWN_DEVICE.1, UNKNOWN_DEVICE.0];
    for (step, held_body, unknown_body) in [
        ("first", held("opened"), unknown("opened")),
        ("resent", held("opened"), unknown("opened")),
        (
            "in another envelope",
            json!({"events": [event(SEAL_1.1, SEAL_1.0, 500, "opened")]}).to_string(),
            json!({"events": [event(UNKNOWN_DEVICE.1, UNKNOWN_DEVICE.0, 500, "opened")]})
                .to_string(),
        ),
        (
            "a conflicting variant",
            held("rope_cut"),
            unknown("rope_cut"),
        ),
    ] {
        let a = send(&app, mx, "POST", "/v1/seal-events", &held_body).await;
        let b = send(&app, mx, "POST", "/v1/seal-events", &unknown_body).await;
        assert_eq!(a.status, 202, "{step}: {}", a.text);
        assert_eq!(
            shape(&a, &held_ids),
            shape(&b, &unknown_ids),
            "{step}: the answers differ"
        );
        assert!(!a.text.contains(&trip), "{step}: {}", a.text);
    }
    // More conflicting variants, past the cap on those kept: still alike.
    for battery in 10..16 {
        let variant = |device: (&str, &str)| {
            let mut e = event(device.1, device.0, 500, "opened");
            e["battery_pct"] = json!(battery);
            e.to_string()
        };
        let a = send(&app, mx, "POST", "/v1/seal-events", &variant(SEAL_1)).await;
        let b = send(
            &app,
            mx,
            "POST",
            "/v1/seal-events",
            &variant(UNKNOWN_DEVICE),
        )
        .await;
        assert_eq!(
            shape(&a, &held_ids),
            shape(&b, &unknown_ids),
            "variant with battery {battery}: the answers differ"
        );
    }
    // The event and its variants kept, as for a stored event: no more than the cap.
    assert_eq!(
        app.count_where("withheld_events", &format!("device_id = '{}'", SEAL_1.1))
            .await,
        1 + ects_gateway::ingest::MAX_CONFLICT_VARIANTS,
    );
    assert_eq!(
        app.count_where("seal_events", &format!("trip_id = '{trip}'"))
            .await,
        events_before
    );
    assert_eq!(
        app.count_where("audit_log", &format!("trip_id = '{trip}'"))
            .await,
        audit_before,
        "nothing reached the trip's chain"
    );
    assert_eq!(
        app.count_where("alerts", &format!("trip_id = '{trip}'"))
            .await,
        0
    );

    // An event a partner sent for a device no trip holds yet is claimed only by a trip
    // that partner may see: MX's stays unmatched when a GT trip takes the device, GT's
    // joins it.
    let (later, seals) = declaration(27);
    let early = |seal: &(String, String), n: u64| {
        json!({"device_id": seal.1, "seal_id": seal.0, "seq": n, "kind": "locked",
               "time": "2026-03-14T08:10:00Z", "position": {"lat": 14.0, "lon": DEPARTURE_LON, "fix": "gps"}})
        .to_string()
    };
    let from_mx = send(&app, mx, "POST", "/v1/seal-events", &early(&seals[0], 1)).await;
    let from_gt = send(&app, gt, "POST", "/v1/seal-events", &early(&seals[1], 1)).await;
    assert!(from_mx.text.contains("\"unmatched\":1"), "{}", from_mx.text);
    assert!(from_gt.text.contains("\"unmatched\":1"), "{}", from_gt.text);
    let later = send(
        &app,
        None,
        "POST",
        "/v1/messages/ects-json",
        std::str::from_utf8(&later).unwrap(),
    )
    .await;
    assert_eq!(later.status, 202, "{}", later.text);
    let later: Value = serde_json::from_str(&later.text).unwrap();
    let later = later["trips"][0].as_str().unwrap().to_owned();
    assert_eq!(
        app.count_where(
            "seal_events",
            &format!("device_id = '{}' and trip_id is null", seals[0].1)
        )
        .await,
        1,
        "MX's event is not claimed by a trip MX may not see"
    );
    assert_eq!(
        app.count_where(
            "seal_events",
            &format!("device_id = '{}' and trip_id = '{later}'", seals[1].1)
        )
        .await,
        1,
        "GT's event joins the GT trip"
    );

    // 4. A resent message's answer names only the caller's trips: the operator's events,
    // resent byte for byte by MX, are not answered with the operator's answer.
    let operators = event(SEAL_2.1, SEAL_2.0, 600, "locked").to_string();
    let first = send(&app, None, "POST", "/v1/seal-events", &operators).await;
    assert!(first.text.contains(&trip), "{}", first.text);
    let again = send(&app, mx, "POST", "/v1/seal-events", &operators).await;
    assert_eq!(again.status, 202, "{}", again.text);
    assert!(
        !again.replayed && !again.text.contains(&trip),
        "{}",
        again.text
    );
    // The same for a declaration: the single window is not told the operator's trip.
    assert!(!same.text.contains(&trip));
    // GT, which may see the trip, gets the first answer.
    let seen = send(&app, gt, "POST", "/v1/seal-events", &operators).await;
    assert!(seen.replayed && seen.text.contains(&trip), "{}", seen.text);
    // And a GT device's event from GT reaches the trip (a cut rope: an alert MX must not
    // see below).
    let own = send(
        &app,
        gt,
        "POST",
        "/v1/seal-events",
        &event(SEAL_1.1, SEAL_1.0, 700, "rope_cut").to_string(),
    )
    .await;
    assert!(own.text.contains(&trip), "{}", own.text);

    // 5. Seal assignments to a trip it may not see: as for a declaration not registered.
    let record = |declaration: &str| {
        json!({"reference": "SA-1", "declaration_id": declaration, "issuing_authority": "GT",
               "assigned_at": "2026-03-14T09:00:00Z",
               "equipment": [{"id": "MSKU1234565", "seals": [
                   {"id": "ES00781299", "kind": "electronic", "device_id": "860000000000099"}]}]})
        .to_string()
    };
    for who in [mx, sw] {
        let a = send(
            &app,
            who,
            "POST",
            "/v1/messages/ects-json",
            &record("GT-2026-T-000123"),
        )
        .await;
        let b = send(
            &app,
            who,
            "POST",
            "/v1/messages/ects-json",
            &record("GT-2026-T-000555"),
        )
        .await;
        assert_eq!(a.status, 409, "{}", a.text);
        assert_eq!(
            shape(&a, &["GT-2026-T-000123"]),
            shape(&b, &["GT-2026-T-000555"])
        );
    }
    // By container only: no trip it may see carries it.
    let manifest = json!({"reference": "M-1", "assigned_at": "2026-03-14T09:00:00Z",
        "equipment": [{"id": "MSKU1234565", "seals": [
            {"id": "ES00781299", "kind": "electronic", "device_id": "860000000000099"}]}]});
    let mut elsewhere = manifest.clone();
    elsewhere["equipment"][0]["id"] = json!("ABCU1111111");
    let a = send(
        &app,
        mx,
        "POST",
        "/v1/messages/ects-json",
        &manifest.to_string(),
    )
    .await;
    let b = send(
        &app,
        mx,
        "POST",
        "/v1/messages/ects-json",
        &elsewhere.to_string(),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.text);
    assert_eq!(shape(&a, &["MSKU1234565"]), shape(&b, &["ABCU1111111"]));
    assert_eq!(
        app.count_where("trip_seals", "seal_id = 'ES00781299'")
            .await,
        0
    );

    // 6. Read routes: a trip it may not see is one that does not exist, on every route.
    for (path, unknown_path) in [
        (
            format!("/v1/trips/{trip}"),
            format!("/v1/trips/{UNKNOWN_TRIP}"),
        ),
        (
            format!("/v1/trips/{trip}/events"),
            format!("/v1/trips/{UNKNOWN_TRIP}/events"),
        ),
        (
            format!("/v1/trips/{trip}/conflicts"),
            format!("/v1/trips/{UNKNOWN_TRIP}/conflicts"),
        ),
        (
            format!("/v1/trips/{trip}/audit"),
            format!("/v1/trips/{UNKNOWN_TRIP}/audit"),
        ),
        (
            format!("/v1/alerts?trip={trip}&status=all"),
            format!("/v1/alerts?trip={UNKNOWN_TRIP}&status=all"),
        ),
        (
            "/v1/corridors/CA-PQZ-SAL".to_owned(),
            "/v1/corridors/CA-NO-SUCH".to_owned(),
        ),
        // A release place on the trip's corridor.
        (
            "/v1/zones/DEPOT".to_owned(),
            "/v1/zones/NO-SUCH-ZONE".to_owned(),
        ),
        (
            "/v1/trips?reference=GT-2026-T-000123".to_owned(),
            "/v1/trips?reference=GT-2026-T-000555".to_owned(),
        ),
    ] {
        for who in [mx, sw] {
            let a = send(&app, who, "GET", &path, "").await;
            let b = send(&app, who, "GET", &unknown_path, "").await;
            assert_eq!(
                shape(&a, &[&trip, "CA-PQZ-SAL", "GT-2026-T-000123", "DEPOT"]),
                shape(
                    &b,
                    &[
                        UNKNOWN_TRIP,
                        "CA-NO-SUCH",
                        "GT-2026-T-000555",
                        "NO-SUCH-ZONE"
                    ]
                ),
                "{path}"
            );
        }
        assert_ne!(
            send(&app, gt, "GET", &path, "").await.text,
            send(&app, gt, "GET", &unknown_path, "").await.text,
            "GT sees {path}"
        );
    }
    let listed = send(&app, mx, "GET", "/v1/corridors", "").await;
    assert_eq!(
        serde_json::from_str::<Value>(&listed.text).unwrap()["corridors"],
        json!([])
    );
    let listed = send(&app, gt, "GET", "/v1/corridors", "").await;
    assert_eq!(
        serde_json::from_str::<Value>(&listed.text).unwrap()["corridors"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "GT lists the corridor of the trip it sees"
    );
    // Zones: an office's zone is reference data (as the office registry); a zone of its
    // own only along a corridor the viewer's trips name. A release place far from any
    // of GT's trips is GT's no more than MX's.
    let far = json!({"type": "Feature",
                     "properties": {"kind": "release_place", "radius_m": 500},
                     "geometry": {"type": "Point", "coordinates": [-99.1, 19.4]}});
    assert_eq!(app.put("/v1/zones/FAR-DEPOT", &far).await.status, 201);
    let kinds = |who| {
        let app = &app;
        async move {
            let listed = send(app, who, "GET", "/v1/zones", "").await;
            assert_eq!(listed.status, 200, "{}", listed.text);
            let mut kinds: Vec<String> =
                serde_json::from_str::<Value>(&listed.text).unwrap()["zones"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|z| z["properties"]["kind"].as_str().unwrap_or("?").to_owned())
                    .collect();
            kinds.sort();
            kinds
        }
    };
    assert_eq!(kinds(mx).await, ["customs_office", "customs_office"]);
    assert_eq!(
        kinds(gt).await,
        ["customs_office", "customs_office", "release_place"]
    );
    assert_eq!(
        app.get("/v1/zones").await.json()["zones"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    assert_eq!(
        send(&app, gt, "GET", "/v1/zones/FAR-DEPOT", "")
            .await
            .status,
        404
    );
    assert_eq!(
        send(&app, gt, "GET", "/v1/zones/GTPQZ", "").await.status,
        200
    );
    assert_eq!(
        send(&app, mx, "GET", "/v1/zones/SVSAL", "").await.status,
        200
    );
    // Paging a scoped list: one at a time, the cursor carries on past what it may not see.
    let first = send(&app, gt, "GET", "/v1/zones?limit=1", "").await;
    let first: Value = serde_json::from_str(&first.text).unwrap();
    let next = first["next"].as_str().expect("a next page").to_owned();
    let rest = send(
        &app,
        gt,
        "GET",
        &format!("/v1/zones?limit=5&after={next}"),
        "",
    )
    .await;
    let rest: Value = serde_json::from_str(&rest.text).unwrap();
    assert_eq!(rest["zones"].as_array().map(Vec::len), Some(2), "{rest}");
    assert_eq!(rest["next"], Value::Null, "{rest}");

    // Offices are reference data, the same for everyone.
    assert_eq!(
        send(&app, mx, "GET", "/v1/offices", "").await.text,
        send(&app, None, "GET", "/v1/offices", "").await.text
    );

    // 7. A single window files, and sees what it filed, but issues no release, handover
    // or cancellation.
    let (filed, _) = declaration(42);
    let filed = send(
        &app,
        sw,
        "POST",
        "/v1/messages/ects-json",
        std::str::from_utf8(&filed).unwrap(),
    )
    .await;
    assert_eq!(filed.status, 202, "{}", filed.text);
    let filed: Value = serde_json::from_str(&filed.text).unwrap();
    let filed = filed["trips"][0].as_str().unwrap().to_owned();
    let release = crate::tracking::release(&filed, "GT", "DEPOT").to_string();
    let handover = json!({"handover_id": "HO-1", "trip_id": filed, "from_authority": "GT",
        "to_authority": "SV", "officer": {"id": "SV-OF-7"}, "time": t(60).to_rfc3339(),
        "seal_check": "intact"})
    .to_string();
    let cancel = json!({"trip_id": filed, "authority": "GT", "officer": {"id": "GT-OF-1"},
        "time": t(10).to_rfc3339(), "reason": "test"})
    .to_string();
    for (what, body) in [
        ("release", &release),
        ("handover", &handover),
        ("cancel", &cancel),
    ] {
        let reply = send(&app, sw, "POST", &format!("/v1/trips/{filed}/{what}"), body).await;
        assert_eq!(reply.status, 403, "{what}: {}", reply.text);
        assert!(reply.text.contains("single window"), "{}", reply.text);
    }
    assert_eq!(
        app.count_where("trip_commands", &format!("trip_id = '{filed}'"))
            .await,
        0
    );
}

mod over_http {
    #[tokio::test]
    async fn sqlite() {
        super::a_partner_reaches_only_the_trips_it_may_see(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::a_partner_reaches_only_the_trips_it_may_see(super::Backend::Postgres).await;
    }
}

/// The same refusals on a partner's AMQP queue: each dead-lettered (or taken) exactly as
/// the same message about something that does not exist.
async fn a_partner_queue_reaches_only_the_trips_it_may_see(backend: Backend) {
    let Some(url) = amqp_url() else { return };
    let s = suffix();
    let id = format!("mx-{s}");
    let queue = format!("ects.test.in.{id}");
    let mut dlq = Listener::on_queue(&url, &format!("{queue}.dlq")).await;
    let partners = vec![partner(
        &id,
        "MX",
        "parties",
        &format!("amqp_in = \"{queue}\"\n"),
    )];
    let Some(app) = crate::amqp::spawn(backend, &url, partners).await else {
        return;
    };
    let trip = app.declare_gt_sv().await;
    let (_conn, channel) = connect(&url).await;
    let fixture_bytes = fixture("ects-json/declaration-gt-sv.json");
    let (free, _) = declaration(78);
    let assignment = |declaration: &str| {
        json!({"reference": "SA-1", "declaration_id": declaration, "issuing_authority": "GT",
               "assigned_at": "2026-03-14T09:00:00Z",
               "equipment": [{"id": "MSKU1234565", "seals": [
                   {"id": "ES00781299", "kind": "electronic", "device_id": "860000000000099"}]}]})
        .to_string()
        .into_bytes()
    };
    publish(&channel, &queue, &fixture_bytes, Some("decl-taken")).await;
    publish(&channel, &queue, &free, Some("decl-free")).await;
    publish(
        &channel,
        &queue,
        &assignment("GT-2026-T-000123"),
        Some("sa-taken"),
    )
    .await;
    publish(
        &channel,
        &queue,
        &assignment("GT-2026-T-000555"),
        Some("sa-free"),
    )
    .await;
    let held = event(SEAL_1.1, SEAL_1.0, 900, "opened").to_string();
    let unknown = event(UNKNOWN_DEVICE.1, UNKNOWN_DEVICE.0, 900, "opened").to_string();
    publish(&channel, &queue, held.as_bytes(), Some("ev-held")).await;
    publish(&channel, &queue, unknown.as_bytes(), Some("ev-unknown")).await;

    dlq.until("four dead letters", |seen| seen.len() >= 4).await;
    let by_id: BTreeMap<&str, &crate::amqp::Received> = dlq
        .seen
        .iter()
        .map(|r| (r.message_id.as_str(), r))
        .collect();
    let said = |id: &str, asked: &str| {
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{id} dead-lettered: {:?}", dlq.seen));
        let mut h = r.headers.clone();
        h.remove("x-ects-transport-message-id");
        let text = serde_json::to_string(&h).unwrap();
        if asked.is_empty() {
            text
        } else {
            text.replace(asked, "<asked>")
        }
    };
    assert_eq!(
        said("decl-taken", "GT-2026-T-000123"),
        said("decl-free", "GT-2026-T-000078")
    );
    assert!(said("decl-taken", "").contains("may not file for authority GT"));
    assert!(said("decl-taken", "").contains("\"x-ects-status\":\"403\""));
    assert_eq!(
        said("sa-taken", "GT-2026-T-000123"),
        said("sa-free", "GT-2026-T-000555")
    );
    assert!(said("sa-taken", "").contains("\"x-ects-status\":\"409\""));
    for r in &dlq.seen {
        assert!(
            !r.headers.values().any(|v| v.contains(&trip)),
            "{:?}",
            r.headers
        );
    }

    // Both events taken (acknowledged) alike; the held one kept apart, never on the trip.
    crate::helpers::eventually("both events stored", || async {
        let n = app
            .count_where(
                "messages",
                "transport_message_id in ('ev-held', 'ev-unknown') and outcome = 'accepted'",
            )
            .await;
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} of 2"))
        }
    })
    .await;
    assert_eq!(
        app.count_where("withheld_events", &format!("partner_id = '{id}'"))
            .await,
        1
    );
    assert_eq!(
        app.count_where("seal_events", &format!("trip_id = '{trip}'"))
            .await,
        0
    );
    let answers: Vec<Value> = {
        use sqlx::Row;
        let rows = sqlx::query(
            "select response_body from messages
             where transport_message_id in ('ev-held', 'ev-unknown') order by transport_message_id",
        )
        .fetch_all(app.store.pool())
        .await
        .unwrap();
        rows.iter()
            .map(|r| {
                let mut v: Value =
                    serde_json::from_str(&r.try_get::<String, _>("response_body").unwrap())
                        .unwrap();
                v["message_id"] = json!("<message>");
                v
            })
            .collect()
    };
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0]["events"]["unmatched"], 1);
}

mod over_amqp {
    #[tokio::test]
    async fn sqlite() {
        super::a_partner_queue_reaches_only_the_trips_it_may_see(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::a_partner_queue_reaches_only_the_trips_it_may_see(super::Backend::Postgres).await;
    }
}

/// Every text column that could hold a code, and how many rows hold it in clear.
async fn clear_copies(app: &TestApp, code: &str) -> Vec<(String, i64)> {
    let mut found = Vec::new();
    for (table, column) in [
        ("messages", "response_body"),
        ("messages", "parsed"),
        ("trip_commands", "input"),
        ("seal_commands", "body"),
        ("trips", "engine"),
        ("trips", "status"),
        ("trip_checkpoints", "engine"),
        ("audit_log", "payload"),
        ("outbox", "canonical"),
        ("alerts", "body"),
    ] {
        let n = app
            .count_where(table, &format!("{column} like '%{code}%'"))
            .await;
        if n > 0 {
            found.push((format!("{table}.{column}"), n));
        }
    }
    found
}

/// An opening at the release depot, a second from now.
fn opened_now(seal: (&str, &str), seq: u64) -> Value {
    json!({"device_id": seal.1, "seal_id": seal.0, "seq": seq, "kind": "unlocked",
           "time": (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339(),
           "battery_pct": 90,
           "position": {"lat": crate::tracking::LAT, "lon": -89.5, "fix": "gps", "speed_kmh": 0.0}})
}

async fn the_unlock_code_is_in_the_release_answer_and_nowhere_else(backend: Backend) {
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        // Takes release notifications: the outbox rows are checked for the code too.
        s.partners = vec![partner(
            "sv-dga",
            "SV",
            "parties",
            "subscribe = [\"release\", \"status\"]\nhttp_push = \"http://127.0.0.1:9/ects\"\n",
        )];
    })
    .await
    else {
        return;
    };
    let mut seq = Seq(0);
    let trip = crate::tracking::rolling(&app, &mut seq).await;
    post(
        &app,
        vec![
            seq.event(SEAL_1, 100, "position", DESTINATION_LON, 0.0),
            seq.event(SEAL_1, 101, "position", DESTINATION_LON, 0.0),
        ],
    )
    .await;
    // A code no other test uses, so that a copy anywhere is this one.
    let code = format!(
        "{}",
        40_000_000 + (uuid::Uuid::new_v4().as_u128() % 50_000_000)
    );
    let mut release = crate::tracking::release(&trip, "GT", "DEPOT");
    release["one_time_code"] = json!(code);
    let reply = app
        .command(&format!("/v1/trips/{trip}/release"), release.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let commands = reply.json()["commands"].as_array().unwrap().clone();
    assert_eq!(commands.len(), 2);
    assert!(commands.iter().all(|c| c["one_time_code"] == json!(code)));
    let hash = ects_core::trip::code_hash(&trip, "REL-DEPOT", &code);

    // Sent again: the same release, recorded once; its answer does not repeat the code.
    let again = app
        .command(&format!("/v1/trips/{trip}/release"), release.to_string())
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert!(!again.text.contains(&code), "{}", again.text);
    // Another code under the same release id conflicts.
    let mut other = release.clone();
    other["one_time_code"] = json!("11112222");
    assert_eq!(
        app.command(&format!("/v1/trips/{trip}/release"), other.to_string())
            .await
            .status,
        409
    );
    // A code in the form codes are kept in is refused.
    let mut kept_form = release.clone();
    kept_form["release_id"] = json!("REL-2");
    kept_form["one_time_code"] = json!(hash);
    let reply = app
        .command(&format!("/v1/trips/{trip}/release"), kept_form.to_string())
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/one_time_code"]);

    // The seals open at the depot within the window: the trip replays on the hashed
    // release (a late event makes it replay) and is released without an alert.
    post(
        &app,
        vec![
            // Opened after the release was received (a release covers only later openings).
            opened_now(SEAL_1, 900),
            opened_now(SEAL_2, 900),
            seq.event(SEAL_1, 4, "position", road_lon(4), 0.0),
        ],
    )
    .await;
    assert_eq!(app.trip(&trip).await["state"], "released");
    assert_eq!(
        app.count_where(
            "alerts",
            &format!("trip_id = '{trip}' and kind = 'seal_opened'")
        )
        .await,
        0
    );

    // The audit API: the hash, never the code; the chain verifies.
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await;
    assert_eq!(audit.status, 200);
    assert!(!audit.text.contains(&code), "the code in /audit");
    // Nor its hash (a short code is found again from it): withheld.
    assert!(!audit.text.contains(&hash), "the code's hash in /audit");
    assert!(audit.text.contains("\"withheld\""), "{}", audit.text);
    assert_eq!(audit.json()["verified"], true, "{}", audit.text);
    // Lists, the trip, the outbox: no code.
    for path in [
        format!("/v1/trips/{trip}"),
        format!("/v1/trips/{trip}/events"),
        format!("/v1/alerts?trip={trip}&status=all"),
        "/v1/outbox".to_owned(),
        "/v1/trips".to_owned(),
    ] {
        let reply = app.get(&path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(!reply.text.contains(&code), "the code in {path}");
    }
    assert!(app.count_where("outbox", "kind = 'release'").await >= 1);
    // The stored rows and the logs.
    assert_eq!(clear_copies(&app, &code).await, vec![]);
    assert!(
        app.count_where("seal_commands", &format!("body like '%{hash}%'"))
            .await
            == 2
    );
    assert_eq!(log_lines_with(&code), Vec::<Value>::new());
}

/// A database written before the codes were hashed: its clear codes become hashes when
/// the migration's conversion runs, and the chain still verifies.
async fn stored_clear_codes_are_converted_and_the_chain_still_verifies(backend: Backend) {
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |_| {}).await else {
        return;
    };
    let trip = app.declare_gt_sv().await;
    let trip_id = ects_core::TripId::parse(&trip).unwrap();
    let code = "58274619";
    let old_release = json!({"input": "release", "body": {
        "release_id": "REL-OLD", "trip_id": trip, "authority": "GT",
        "officer": {"id": "GT-OF-1"}, "place": "DEPOT",
        "valid_from": t(0).to_rfc3339(), "valid_until": t(600).to_rfc3339(),
        "one_time_code": code, "issued_at": t(90).to_rfc3339()}});
    let old_command = json!({"command_id": "c-1", "trip_id": trip, "seal_id": SEAL_1.0,
        "device_id": SEAL_1.1, "command": "unlock", "one_time_code": code,
        "release_id": "REL-OLD", "valid_until": t(600).to_rfc3339()});
    // As the gateway wrote them before: chained with the code in clear.
    {
        let mut tx = app.store.begin_write().await.unwrap();
        ects_gateway::tracking::append_audit(
            &mut tx,
            trip_id,
            vec![
                ects_gateway::tracking::AuditItem::new(
                    "officer:GT/GT-OF-1",
                    "input.release",
                    &old_release,
                ),
                ects_gateway::tracking::AuditItem::new(
                    "engine",
                    "effect.seal_command",
                    &json!({"effect": "seal_command", "command": old_command}),
                ),
            ],
            t(91),
        )
        .await
        .unwrap();
        sqlx::query(
            "insert into trip_commands (trip_id, command_key, kind, command_time, input, received_at)
             values ($1, 'REL-OLD', 'release', $2, $3, $2)",
        )
        .bind(&trip)
        .bind(ects_gateway::store::ts(t(90)))
        .bind(old_release.to_string())
        .execute(&mut **tx)
        .await
        .unwrap();
        sqlx::query(
            "insert into seal_commands (command_id, trip_id, seal_id, device_id, body, created_at)
             values ('c-1', $1, $2, $3, $4, $5)",
        )
        .bind(&trip)
        .bind(SEAL_1.0)
        .bind(SEAL_1.1)
        .bind(old_command.to_string())
        .bind(ects_gateway::store::ts(t(91)))
        .execute(&mut **tx)
        .await
        .unwrap();
        sqlx::query("delete from data_conversions")
            .execute(&mut **tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await;
    assert_eq!(audit.json()["verified"], true);
    // The API withholds codes even before the conversion.
    assert!(!audit.text.contains(code), "the old clear code, before");
    let heads_before: Vec<String> = audit.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["hash"].as_str().unwrap().to_owned())
        .collect();

    app.store.migrate().await.unwrap();

    assert_eq!(clear_copies(&app, code).await, vec![]);
    let hash = ects_core::trip::code_hash(&trip, "REL-OLD", code);
    assert_eq!(
        app.count_where("trip_commands", &format!("input like '%{hash}%'"))
            .await,
        1
    );
    assert_eq!(
        app.count_where("seal_commands", &format!("body like '%{hash}%'"))
            .await,
        1
    );
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await;
    assert_eq!(audit.json()["verified"], true, "{}", audit.text);
    assert!(!audit.text.contains(code));
    let entries = audit.json()["entries"].as_array().unwrap().clone();
    let heads_after: Vec<String> = entries
        .iter()
        .map(|e| e["hash"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(heads_before, heads_after, "every entry keeps its hash");
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.get("redacted").is_some())
            .count(),
        2
    );
    // Ran once: recorded, and a second run changes nothing.
    assert_eq!(app.count("data_conversions").await, 1);
    app.store.migrate().await.unwrap();
    assert_eq!(app.count("data_conversions").await, 1);

    // A redacted payload changed afterwards is still caught.
    sqlx::query(
        "update audit_log set payload = replace(payload, 'GT-OF-1', 'GT-OF-9')
         where redacted_payload_sha256 is not null and action = 'input.release'",
    )
    .execute(app.store.pool())
    .await
    .unwrap();
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await;
    assert_eq!(audit.json()["verified"], false, "{}", audit.text);
    assert!(
        audit.json()["problem"]
            .as_str()
            .unwrap()
            .contains("payload was changed")
    );
}

mod unlock_codes {
    #[tokio::test]
    async fn sqlite() {
        super::the_unlock_code_is_in_the_release_answer_and_nowhere_else(super::Backend::Sqlite)
            .await;
    }

    #[tokio::test]
    async fn postgres() {
        super::the_unlock_code_is_in_the_release_answer_and_nowhere_else(super::Backend::Postgres)
            .await;
    }
}

mod stored_codes {
    #[tokio::test]
    async fn sqlite() {
        super::stored_clear_codes_are_converted_and_the_chain_still_verifies(
            super::Backend::Sqlite,
        )
        .await;
    }

    #[tokio::test]
    async fn postgres() {
        super::stored_clear_codes_are_converted_and_the_chain_still_verifies(
            super::Backend::Postgres,
        )
        .await;
    }
}
