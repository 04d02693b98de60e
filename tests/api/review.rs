//! Findings of the hostile review of 2026-12-08 (a helper attacking the trust changes),
//! each reproduced and asserting the fixed behaviour: a filer's corridor does not widen
//! its map, an amendment's new declarant replaces the old, a hidden-held device answers as
//! an unknown one, a trader's status carries no evidence.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, fixture, product_mappings_dir, spawn_app_with};
use crate::tracking::register_geometry;
use ects_gateway::auth::Role;
use ects_gateway::partners::PartnerConfig;

fn sha256(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn partner(id: &str, authority: &str, sees: &str) -> PartnerConfig {
    toml::from_str(&format!(
        "id = \"{id}\"\nauthority = \"{authority}\"\nformat = \"ects-json\"\nsees = \"{sees}\"\n\
         api_token_sha256 = \"{}\"\n",
        sha256(&format!("{id}-token"))
    ))
    .unwrap()
}

async fn send(app: &TestApp, token: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let url = format!("{}{path}", app.address);
    let mut request = match method {
        "GET" => app.anonymous.get(url),
        _ => app.anonymous.post(url),
    };
    request = request.header("authorization", format!("Bearer {token}"));
    if method != "GET" {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn gt_declaration(n: usize, corridor: &str) -> Value {
    let mut d: Value =
        serde_json::from_slice(&fixture("ects-json/declaration-gt-sv.json")).expect("fixture");
    d["declaration_id"] = json!(format!("GT-2026-T-{n:06}"));
    d["corridor_id"] = json!(corridor);
    for e in 0..2 {
        d["equipment"][e]["seals"][0]["id"] = json!(format!("ES{:08}", 50_000 + 2 * n + e));
        d["equipment"][e]["seals"][0]["device_id"] = json!(format!("87{:013}", 2 * n + e + 1));
        d["equipment"][e]["seals"][1]["id"] = json!(format!("GTB{:07}", 9_000 + 2 * n + e));
    }
    d
}

/// A-1 (review of 2026-12-08): a declaration names its corridor as free text, so filing
/// one must not widen what its filer sees of the map. A "filed"-only partner names the
/// operator's corridor (and a guessed one) in declarations of its own: it still sees
/// neither that corridor nor the release place beside it, and a registered id answers as
/// an unregistered one does.
async fn a_filer_names_any_corridor_and_then_sees_it_and_its_zones(backend: Backend) {
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = vec![partner("gt-sw", "GT", "filed")];
    })
    .await
    else {
        return;
    };
    register_geometry(&app).await;
    let _operators_trip = app.declare_gt_sv().await;
    let sw = "gt-sw-token";
    assert_eq!(
        send(&app, sw, "GET", "/v1/corridors/CA-PQZ-SAL", "")
            .await
            .0,
        404
    );
    assert_eq!(send(&app, sw, "GET", "/v1/zones/DEPOT", "").await.0, 404);

    for (n, corridor) in [(301, "CA-PQZ-SAL"), (302, "CA-GUESSED")] {
        let (status, text) = send(
            &app,
            sw,
            "POST",
            "/v1/messages/ects-json",
            &gt_declaration(n, corridor).to_string(),
        )
        .await;
        assert_eq!(status, 202, "{text}");
    }
    let known = send(&app, sw, "GET", "/v1/corridors/CA-PQZ-SAL", "").await;
    let guessed = send(&app, sw, "GET", "/v1/corridors/CA-GUESSED", "").await;
    assert_eq!(known.0, 404, "{}", known.1);
    assert_eq!(
        known.1.replace("CA-PQZ-SAL", "<id>"),
        guessed.1.replace("CA-GUESSED", "<id>")
    );
    assert_eq!(send(&app, sw, "GET", "/v1/zones/DEPOT", "").await.0, 404);
    let (_, listed) = send(&app, sw, "GET", "/v1/corridors", "").await;
    assert!(listed.contains("\"corridors\":[]"), "{listed}");
}

mod a_filer_names_any_corridor {
    #[tokio::test]
    async fn sqlite() {
        super::a_filer_names_any_corridor_and_then_sees_it_and_its_zones(
            crate::helpers::Backend::Sqlite,
        )
        .await;
    }
}

/// A-2b: an amendment that replaces the declarant (a mapping that carries both
/// `declarant.id` and `message_function`, as an installation may load): the new
/// declarant's shipper token sees the trip, the old one no longer does.
async fn an_amendment_replacing_the_declarant_leaves_the_old_one_access(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    copy(&product_mappings_dir(), &dir.path().join("m"));
    copy(
        &root.join("tests/review-mappings/amendable-json.toml"),
        &dir.path().join("m/amendable-json.toml"),
    );
    let Some(app) = spawn_app_with(backend, dir.path().join("m"), |_| {}).await else {
        return;
    };
    let mut d = gt_declaration(501, "CA-PQZ-SAL");
    d["declarant"] = json!({"id": "GT-NIT-OLD"});
    d["message_function"] = json!("F");
    let reply = app.post("/v1/messages/amendable-json", d.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let trip = reply.json()["trips"][0].as_str().unwrap().to_owned();
    d["declarant"] = json!({"id": "GT-NIT-NEW"});
    d["message_function"] = json!("A");
    let reply = app.post("/v1/messages/amendable-json", d.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(
        reply.json()["declaration"]["function"],
        "amendment",
        "{}",
        reply.text
    );
    let status = app.get(&format!("/v1/trips/{trip}")).await;
    assert_eq!(status.status, 200);
    for (party, expected) in [("GT-NIT-OLD", 404), ("GT-NIT-NEW", 200)] {
        let token = app.token(Role::Shipper, party).await;
        let seen = app
            .send(
                app.anonymous
                    .get(format!("{}/v1/trips/{trip}", app.address))
                    .bearer_auth(&token),
            )
            .await;
        assert_eq!(seen.status, expected, "{party}: {}", seen.text);
    }
}

mod an_amendment_replacing_the_declarant {
    #[tokio::test]
    async fn sqlite() {
        super::an_amendment_replacing_the_declarant_leaves_the_old_one_access(
            crate::helpers::Backend::Sqlite,
        )
        .await;
    }
}

fn seal_event(device: &str, seal: &str, seq: u64) -> Value {
    json!({"device_id": device, "seal_id": seal, "seq": seq, "kind": "position",
           "time": crate::tracking::t(5).to_rfc3339(), "battery_pct": 80,
           "position": {"lat": 14.0, "lon": crate::tracking::road_lon(5), "fix": "gps"}})
}

/// a partner must not tell a device held by a trip it may not see from a device no
/// trip holds by the answer's counts (both fixed: authentication runs first, and withheld
/// events are matched by key or device and seq). (1) A signed event with a key the device does not have:
/// refused for an unheld device (device authentication runs), unmatched for a hidden-held
/// one (withheld before authentication). (2) An event with an event_id, then the same seq
/// without it: conflicting for an unheld device (find_event matches device+seq), unmatched
/// for a hidden-held one (withheld events are matched by key only).
async fn a_partner_tells_hidden_held_devices_apart(backend: Backend) {
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = vec![partner("mx-sat", "MX", "parties")];
    })
    .await
    else {
        return;
    };
    register_geometry(&app).await;
    let _trip = app.declare_gt_sv().await; // holds device 860000000000001
    let mx = "mx-sat-token";
    let held = ("ES00781234", "860000000000001");
    let unknown = ("ES09999999", "869999999999999");
    let counts = |text: &str| {
        let v: Value = serde_json::from_str(text).unwrap();
        v["events"].clone()
    };

    // (1) a bogus signature.
    let signed = |d: (&str, &str)| {
        let mut e = seal_event(d.1, d.0, 700);
        e["key_id"] = json!("k1");
        e["signature"] = json!(base64_64());
        json!([e]).to_string()
    };
    let (s1, a) = send(&app, mx, "POST", "/v1/seal-events", &signed(held)).await;
    let (s2, b) = send(&app, mx, "POST", "/v1/seal-events", &signed(unknown)).await;
    assert_eq!((s1, s2), (202, 202), "{a}\n{b}");
    assert_eq!(counts(&b)["refused"], 1, "{b}");
    assert_eq!(
        counts(&a),
        counts(&b),
        "hidden-held and unknown answer alike"
    );

    // (2) event_id, then the same seq without it.
    let with_id = |d: (&str, &str)| {
        let mut e = seal_event(d.1, d.0, 800);
        e["event_id"] = json!("evt-800");
        json!([e]).to_string()
    };
    let without = |d: (&str, &str)| json!([seal_event(d.1, d.0, 800)]).to_string();
    send(&app, mx, "POST", "/v1/seal-events", &with_id(held)).await;
    send(&app, mx, "POST", "/v1/seal-events", &with_id(unknown)).await;
    let (_, a) = send(&app, mx, "POST", "/v1/seal-events", &without(held)).await;
    let (_, b) = send(&app, mx, "POST", "/v1/seal-events", &without(unknown)).await;
    assert_eq!(counts(&b)["conflicting"], 1, "{b}");
    assert_eq!(counts(&a), counts(&b), "{a}\n{b}");
}

fn base64_64() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([7u8; 64])
}

mod a_partner_tells_hidden_held_devices_apart {
    #[tokio::test]
    async fn sqlite() {
        super::a_partner_tells_hidden_held_devices_apart(crate::helpers::Backend::Sqlite).await;
    }
}

/// "status without alert evidence" for a transporter (or shipper): no open alerts,
/// no seal reading `opened`, no custody chain with its seal check, remarks and officer.
async fn a_transporter_reads_alert_evidence_in_the_status(app: TestApp) {
    use crate::tracking::{SEAL_1, Seq, post, road_lon, rolling};
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    post(
        &app,
        vec![seq.event(SEAL_1, 20, "opened", road_lon(20), 0.0)],
    )
    .await;
    let reply = app
        .command(
            &format!("/v1/trips/{trip}/handover"),
            json!({"handover_id": "HO-X", "trip_id": trip, "from_authority": "GT",
                   "to_authority": "SV", "officer": {"id": "x", "name": "Ana Pérez"},
                   "time": chrono::Utc::now().to_rfc3339(), "seal_check": "discrepancy",
                   "remarks": "seal ES00781234 cut; suspected diversion, referred to investigation"})
            .to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let transporter = app.token(Role::Transporter, "GT-TR-0042").await;
    let seen = app
        .send(
            app.anonymous
                .get(format!("{}/v1/trips/{trip}", app.address))
                .bearer_auth(&transporter),
        )
        .await;
    assert_eq!(seen.status, 200, "{}", seen.text);
    let v = seen.json();
    assert_eq!(v["open_alerts"], json!([]));
    assert_eq!(v["custody_chain"], json!([]));
    assert_eq!(v["custodian"], "SV", "the custodian stays");
    for evidence in ["\"opened\"", "discrepancy", "suspected diversion", "Ana P"] {
        assert!(!seen.text.contains(evidence), "{evidence}: {}", seen.text);
    }
    // The authorities still see it all.
    let full = app.trip(&trip).await.to_string();
    assert!(
        full.contains("discrepancy") && full.contains("\"opened\""),
        "{full}"
    );
}

crate::on_both_backends!(a_transporter_reads_alert_evidence_in_the_status);
