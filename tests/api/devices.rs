//! Device authentication: signed seal events (Ed25519 and HMAC-SHA256), the policy, key
//! rotation and revocation, replays, and the evidence and alert of a refused event.

use base64::Engine as _;
use ects_core::SealEvent;
use ects_gateway::devices::{Policy, ed25519_public, ed25519_sign, hmac_sign};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, mappings_dir, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    a_good_signature_is_applied_and_marked,
    a_bad_signature_is_refused_alerted_and_kept,
    an_unsigned_event_of_a_keyed_device_is_refused_under_optional,
    a_replayed_signed_seq_is_refused_and_an_identical_resend_is_a_duplicate,
    a_rotated_key_works_until_its_end_and_the_new_one_after,
    an_unknown_key_id_and_a_revoked_key_are_refused,
    hmac_keys_sign_and_their_secret_is_never_shown_or_stored_in_clear,
    a_platform_posts_only_for_its_registered_devices,
    key_requests_are_checked,
    a_refusal_before_the_declaration_alerts_its_trip,
);

const DEVICE: &str = "860000000000001";
const SEED: [u8; 32] = [7; 32];
const OTHER_SEED: [u8; 32] = [9; 32];
const HMAC_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn event(seq: u64, minute: u32, kind: &str) -> Value {
    json!({
        "device_id": DEVICE, "seal_id": "ES00781234", "seq": seq, "kind": kind,
        "time": format!("2026-03-14T10:{minute:02}:00Z"),
        "position": {"lat": 13.9, "lon": -90.5, "fix": "gps"},
        "battery_pct": 80
    })
}

fn sign_with(mut e: Value, key_id: &str, sign: impl Fn(&[u8]) -> String) -> Value {
    e["key_id"] = json!(key_id);
    let parsed: SealEvent = serde_json::from_value(e.clone()).unwrap();
    e["signature"] = json!(sign(&parsed.signed_bytes()));
    e
}

fn ed(e: Value, key_id: &str, seed: &[u8; 32]) -> Value {
    sign_with(e, key_id, |b| ed25519_sign(seed, b).unwrap())
}

async fn put_ed_key(app: &TestApp, key_id: &str, seed: &[u8; 32], from: &str, until: Option<&str>) {
    let reply = app
        .put(
            &format!("/v1/devices/{DEVICE}/keys/{key_id}"),
            &json!({"algorithm": "ed25519", "public_key": ed25519_public(seed).unwrap(),
                    "valid_from": from, "valid_until": until}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
}

async fn post(app: &TestApp, events: Value) -> Value {
    let reply = app.post_events(events.to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    reply.json()
}

async fn alerts(app: &TestApp, trip_id: &str, kind: &str) -> Vec<Value> {
    let reply = app.get(&format!("/v1/alerts?trip={trip_id}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == kind)
        .cloned()
        .collect()
}

async fn a_good_signature_is_applied_and_marked(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    put_ed_key(&app, "k1", &SEED, "2026-01-01T00:00:00Z", None).await;
    let body = post(&app, ed(event(1, 0, "locked"), "k1", &SEED)).await;
    assert_eq!(body["events"]["accepted"], 1, "{body}");
    assert_eq!(body["events"]["refused"], 0, "{body}");
    assert_eq!(
        app.count_where("seal_events", "authenticated = 'key:k1'")
            .await,
        1
    );
    let trip = app.trip(&trip_id).await;
    assert_eq!(trip["equipment"][0]["seals"][0]["state"], "locked");
    assert!(
        alerts(&app, &trip_id, "device_auth_failure")
            .await
            .is_empty()
    );
    let history = app.get(&format!("/v1/trips/{trip_id}/events")).await.json();
    assert_eq!(history["events"][0]["authenticated"], "key:k1", "{history}");
    assert_eq!(history["events"][0]["key_id"], "k1", "{history}");
    // The audit trail names the device by its key.
    let audit = app.get(&format!("/v1/trips/{trip_id}/audit")).await.json();
    assert!(
        audit["entries"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["actor"] == format!("device:{DEVICE}/key:k1"))),
        "{audit}"
    );
    // What the signature does not cover is dropped from a signed event: an accuracy set
    // by a relay never decides whether the fix counts.
    let mut relayed = ed(event(2, 1, "position"), "k1", &SEED);
    relayed["position"]["accuracy_m"] = json!(99999.0);
    relayed["raw"] = json!({"note": "added on the way"});
    let body = post(&app, relayed).await;
    assert_eq!(body["events"]["accepted"], 1, "{body}");
    let history = app.get(&format!("/v1/trips/{trip_id}/events")).await.json();
    let second = history["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["seq"] == 2))
        .cloned()
        .unwrap_or_default();
    assert!(second["position"]["accuracy_m"].is_null(), "{second}");
    assert!(second["raw"].is_null(), "{second}");
    // An unsigned event of a device without a key, under the default (optional): taken,
    // marked unauthenticated.
    let other = json!({"device_id": "860000000000017", "seq": 1, "kind": "locked",
                       "time": "2026-03-14T10:01:00Z"});
    let body = post(&app, other).await;
    assert_eq!(body["events"]["accepted"], 1, "{body}");
    assert_eq!(
        app.count_where("seal_events", "authenticated = 'none'")
            .await,
        1
    );
}

async fn a_bad_signature_is_refused_alerted_and_kept(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    put_ed_key(&app, "k1", &SEED, "2026-01-01T00:00:00Z", None).await;
    // Signed by another key under k1's id; second in a batch whose first event is good.
    let batch = json!([
        ed(event(1, 0, "locked"), "k1", &SEED),
        ed(event(2, 1, "opened"), "k1", &OTHER_SEED),
    ]);
    let body = post(&app, batch).await;
    assert_eq!(body["events"]["accepted"], 1, "{body}");
    assert_eq!(body["events"]["refused"], 1, "{body}");
    assert_eq!(body["refused"][0]["pointer"], "/1", "{body}");
    assert!(
        body["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("bad signature by key k1"),
        "{body}"
    );
    // Never applied: the seal is still locked, no seal_opened; kept as evidence.
    let trip = app.trip(&trip_id).await;
    assert_eq!(trip["equipment"][0]["seals"][0]["state"], "locked");
    assert!(alerts(&app, &trip_id, "seal_opened").await.is_empty());
    assert_eq!(app.count("seal_events").await, 1);
    assert_eq!(app.count("seal_event_refusals").await, 1);
    let raised = alerts(&app, &trip_id, "device_auth_failure").await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert!(
        raised[0]["evidence"][0]
            .as_str()
            .unwrap()
            .starts_with("refused:")
    );
    let kept = app
        .get(&format!("/v1/devices/{DEVICE}/refused-events"))
        .await
        .json();
    assert_eq!(kept["events"][0]["event"]["kind"], "opened", "{kept}");
    assert_eq!(kept["events"][0]["trip_id"], trip_id.as_str(), "{kept}");
    // A late event replays the trip from its stored inputs: the refusal is read back,
    // the alert stays.
    let mut late = event(3, 0, "position");
    late["time"] = json!("2026-03-14T09:59:00Z");
    let body = post(&app, ed(late, "k1", &SEED)).await;
    assert_eq!(body["events"]["accepted"], 1, "{body}");
    let after = alerts(&app, &trip_id, "device_auth_failure").await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["alert_id"], raised[0]["alert_id"]);
    assert!(after[0]["cleared_at"].is_null(), "{after:?}");
}

async fn an_unsigned_event_of_a_keyed_device_is_refused_under_optional(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    put_ed_key(&app, "k1", &SEED, "2026-01-01T00:00:00Z", None).await;
    let body = post(&app, event(1, 0, "locked")).await;
    assert_eq!(body["events"]["refused"], 1, "{body}");
    assert_eq!(body["refused"][0]["pointer"], "", "{body}");
    assert!(
        body["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("must be signed"),
        "{body}"
    );
    assert_eq!(app.count("seal_events").await, 0);
    assert_eq!(alerts(&app, &trip_id, "device_auth_failure").await.len(), 1);
}

async fn a_replayed_signed_seq_is_refused_and_an_identical_resend_is_a_duplicate(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    put_ed_key(&app, "k1", &SEED, "2026-01-01T00:00:00Z", None).await;
    let first = ed(event(5, 0, "locked"), "k1", &SEED);
    let body = post(&app, first.clone()).await;
    assert_eq!(body["events"]["accepted"], 1, "{body}");
    // The identical event again (a retry): the first answer, nothing new.
    let again = app.post_events(first.to_string()).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json(), body);
    // The same seq signed again over other content: a replay, refused and kept. (The
    // unsigned `raw` beside a signed event is dropped, so changing it makes a duplicate.)
    let replayed = ed(event(5, 3, "position"), "k1", &SEED);
    let body = post(&app, json!([event(6, 1, "position"), replayed])).await;
    // The unsigned event beside it is refused too: the device has a key.
    assert_eq!(body["events"]["refused"], 2, "{body}");
    assert_eq!(body["events"]["accepted"], 0, "{body}");
    let replay = body["refused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pointer"] == "/1")
        .unwrap();
    assert!(
        replay["reason"].as_str().unwrap().starts_with("replay"),
        "{body}"
    );
    assert_eq!(app.count("seal_events").await, 1);
    assert_eq!(app.count("seal_event_refusals").await, 2);
    assert_eq!(alerts(&app, &trip_id, "device_auth_failure").await.len(), 1);
    // The evidence, a page at a time.
    let page = app
        .get(&format!("/v1/devices/{DEVICE}/refused-events?limit=1"))
        .await
        .json();
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
    let next = page["next"].as_str().unwrap();
    let rest = app
        .get(&format!(
            "/v1/devices/{DEVICE}/refused-events?limit=1&after={next}"
        ))
        .await
        .json();
    assert_eq!(rest["events"].as_array().unwrap().len(), 1, "{rest}");
    assert_ne!(
        rest["events"][0]["refusal_id"],
        page["events"][0]["refusal_id"]
    );
    assert!(rest["next"].is_null(), "{rest}");
    // A late signed event with an earlier seq is taken (any order, any age).
    let late = ed(event(3, 0, "position"), "k1", &SEED);
    let body = post(&app, late).await;
    assert_eq!(body["events"]["accepted"], 1, "{body}");
}

async fn a_rotated_key_works_until_its_end_and_the_new_one_after(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    // The old key until 10:30, the new one from 10:00: both valid in between.
    put_ed_key(
        &app,
        "old",
        &SEED,
        "2026-01-01T00:00:00Z",
        Some("2026-03-14T10:30:00Z"),
    )
    .await;
    put_ed_key(&app, "new", &OTHER_SEED, "2026-03-14T10:00:00Z", None).await;
    let body = post(
        &app,
        json!([
            ed(event(1, 0, "locked"), "old", &SEED),
            ed(event(2, 10, "position"), "new", &OTHER_SEED),
            // Made before the old key's end, arriving after it: judged at the event's time.
            ed(event(3, 29, "position"), "old", &SEED),
            ed(event(4, 31, "position"), "old", &SEED),
        ]),
    )
    .await;
    assert_eq!(body["events"]["accepted"], 3, "{body}");
    assert_eq!(body["events"]["refused"], 1, "{body}");
    assert_eq!(body["refused"][0]["pointer"], "/3", "{body}");
    assert!(
        body["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not valid at the event's time"),
        "{body}"
    );
    let body = post(&app, ed(event(5, 40, "position"), "new", &OTHER_SEED)).await;
    assert_eq!(body["events"]["accepted"], 1, "{body}");
    assert_eq!(alerts(&app, &trip_id, "device_auth_failure").await.len(), 1);
    let keys = app.get(&format!("/v1/devices/{DEVICE}/keys")).await.json();
    let states: Vec<(&str, &str)> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["key_id"].as_str().unwrap(), k["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, vec![("new", "valid"), ("old", "expired")]);
}

async fn an_unknown_key_id_and_a_revoked_key_are_refused(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    put_ed_key(&app, "k1", &SEED, "2026-01-01T00:00:00Z", None).await;
    let body = post(&app, ed(event(1, 0, "locked"), "k9", &SEED)).await;
    assert_eq!(body["events"]["refused"], 1, "{body}");
    assert!(
        body["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("has no key k9"),
        "{body}"
    );
    let revoked = app
        .send(
            app.client
                .delete(format!("{}/v1/devices/{DEVICE}/keys/k1", app.address)),
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert_eq!(revoked.json()["state"], "revoked");
    // Revocation is judged at receipt: an event dated before it is refused all the same.
    let body = post(&app, ed(event(2, 1, "locked"), "k1", &SEED)).await;
    assert_eq!(body["events"]["refused"], 1, "{body}");
    assert!(
        body["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    // Unsigned, after its only key was revoked: still refused (the device is keyed).
    let body = post(&app, event(3, 2, "locked")).await;
    assert_eq!(body["events"]["refused"], 1, "{body}");
    assert_eq!(app.count("seal_events").await, 0);
    assert_eq!(alerts(&app, &trip_id, "device_auth_failure").await.len(), 1);
    let missing = app
        .send(
            app.client
                .delete(format!("{}/v1/devices/{DEVICE}/keys/nope", app.address)),
        )
        .await;
    assert_eq!(missing.status, 404, "{}", missing.text);
}

async fn hmac_keys_sign_and_their_secret_is_never_shown_or_stored_in_clear(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    let secret_b64 = base64::engine::general_purpose::STANDARD.encode(HMAC_SECRET);
    let reply = app
        .put(
            &format!("/v1/devices/{DEVICE}/keys/h1"),
            &json!({"algorithm": "hmac-sha256", "secret": secret_b64,
                    "valid_from": "2026-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert!(!reply.text.contains(&secret_b64), "{}", reply.text);
    assert!(reply.json().get("public_key").is_none());
    // The same secret again: the same key (200); another secret under h1: 409.
    let same = app
        .put(
            &format!("/v1/devices/{DEVICE}/keys/h1"),
            &json!({"algorithm": "hmac-sha256", "secret": secret_b64,
                    "valid_from": "2026-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(same.status, 200, "{}", same.text);
    let other = app
        .put(
            &format!("/v1/devices/{DEVICE}/keys/h1"),
            &json!({"algorithm": "hmac-sha256",
                    "secret": base64::engine::general_purpose::STANDARD.encode([1u8; 32])}),
        )
        .await;
    assert_eq!(other.status, 409, "{}", other.text);
    let listed = app.get(&format!("/v1/devices/{DEVICE}/keys")).await;
    assert!(!listed.text.contains(&secret_b64), "{}", listed.text);
    use sqlx::Row;
    let stored: String = sqlx::query("select key_material from device_keys")
        .fetch_one(app.store.pool())
        .await
        .unwrap()
        .try_get("key_material")
        .unwrap();
    assert!(!stored.contains(&secret_b64));
    assert!(!stored.contains(std::str::from_utf8(HMAC_SECRET).unwrap()));

    let good = sign_with(event(1, 0, "locked"), "h1", |b| hmac_sign(HMAC_SECRET, b));
    let bad = sign_with(event(2, 1, "opened"), "h1", |b| {
        hmac_sign(b"another secret of 16+", b)
    });
    let body = post(&app, json!([good, bad])).await;
    assert_eq!(body["events"]["accepted"], 1, "{body}");
    assert_eq!(body["events"]["refused"], 1, "{body}");
    assert_eq!(body["refused"][0]["pointer"], "/1", "{body}");
    assert_eq!(
        app.count_where("seal_events", "authenticated = 'key:h1'")
            .await,
        1
    );
    assert_eq!(alerts(&app, &trip_id, "device_auth_failure").await.len(), 1);
}

/// The device platform check, through the store (the principal that names the platform
/// comes with the roles work).
async fn a_platform_posts_only_for_its_registered_devices(app: TestApp) {
    let put = app
        .put(
            &format!("/v1/devices/{DEVICE}"),
            &json!({"platform": "acme"}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let auth = ects_gateway::devices::DeviceAuth::new(Default::default());
    let mut conn = app.store.pool().acquire().await.unwrap();
    let now = chrono::Utc::now();
    let mine: SealEvent = serde_json::from_value(event(1, 0, "locked")).unwrap();
    let mut theirs = mine.clone();
    theirs.device_id = ects_core::DeviceId::parse("860000000000017").unwrap();
    use ects_gateway::devices::Verdict;
    assert_eq!(
        auth.judge(&mut conn, &mine, Some("acme"), now)
            .await
            .unwrap(),
        Verdict::Taken {
            mark: "platform:acme".into(),
            signed: false
        }
    );
    let refused = auth
        .judge(&mut conn, &theirs, Some("acme"), now)
        .await
        .unwrap();
    let Verdict::Refused(why) = refused else {
        panic!("{refused:?}")
    };
    assert!(
        why.contains("not registered to device platform acme"),
        "{why}"
    );
    // Another platform may not post for acme's device; no platform: no restriction here.
    assert!(matches!(
        auth.judge(&mut conn, &mine, Some("other"), now)
            .await
            .unwrap(),
        Verdict::Refused(_)
    ));
    assert!(matches!(
        auth.judge(&mut conn, &theirs, None, now).await.unwrap(),
        Verdict::Taken { .. }
    ));
    // A platform whose policy is required: its devices' unsigned events are refused.
    let mut settings = ects_gateway::devices::DevicesSettings::default();
    settings.platforms.insert(
        "acme".into(),
        ects_gateway::devices::PlatformSettings {
            device_auth: Some(Policy::Required),
        },
    );
    let strict = ects_gateway::devices::DeviceAuth::new(settings);
    assert!(matches!(
        strict
            .judge(&mut conn, &mine, Some("acme"), now)
            .await
            .unwrap(),
        Verdict::Refused(_)
    ));
    assert!(matches!(
        strict.judge(&mut conn, &mine, None, now).await.unwrap(),
        Verdict::Refused(_)
    ));
    assert!(matches!(
        strict.judge(&mut conn, &theirs, None, now).await.unwrap(),
        Verdict::Taken { .. }
    ));
}

async fn key_requests_are_checked(app: TestApp) {
    let path = format!("/v1/devices/{DEVICE}/keys/k1");
    for (body, pointer) in [
        (
            json!({"algorithm": "ed25519", "public_key": "AAAA"}),
            "/public_key",
        ),
        (json!({"algorithm": "ed25519"}), "/public_key"),
        (
            json!({"algorithm": "rsa", "public_key": "AAAA"}),
            "/algorithm",
        ),
        (
            json!({"algorithm": "hmac-sha256", "secret": "AAAA"}),
            "/secret",
        ),
        (
            json!({"algorithm": "ed25519", "public_key": ed25519_public(&SEED).unwrap(),
                   "valid_from": "2026-03-14T10:00:00Z", "valid_until": "2026-03-14T09:00:00Z"}),
            "/valid_until",
        ),
        (
            json!({"algorithm": "ed25519", "public_key": ed25519_public(&SEED).unwrap(),
                   "valid_from": "1900-01-01T00:00:00Z"}),
            "/valid_from",
        ),
        (
            json!({"algorithm": "ed25519", "public_key": ed25519_public(&SEED).unwrap(), "extra": 1}),
            "",
        ),
    ] {
        let reply = app.put(&path, &body).await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.text);
        assert_eq!(reply.content_type(), "application/problem+json");
        assert!(
            reply.text.contains(&format!("\"pointer\":\"{pointer}")),
            "{body}: {}",
            reply.text
        );
    }
    let bad_id = app
        .put(
            &format!("/v1/devices/{DEVICE}/keys/bad%20id"),
            &json!({"algorithm": "ed25519", "public_key": ed25519_public(&SEED).unwrap()}),
        )
        .await;
    assert_eq!(bad_id.status, 400, "{}", bad_id.text);
    assert_eq!(app.count("device_keys").await, 0);
}

/// `device_auth = "required"`: an unsigned event of a device without a key is refused.
#[tokio::test]
async fn missing_signature_under_required_is_refused() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = spawn_app_with(backend, mappings_dir(), |s| {
            s.devices.device_auth = Policy::Required;
        })
        .await
        else {
            continue;
        };
        let trip_id = app.declare_gt_sv().await;
        let body = post(&app, event(1, 0, "locked")).await;
        assert_eq!(body["events"]["refused"], 1, "{body}");
        assert!(
            body["refused"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("required"),
            "{body}"
        );
        assert_eq!(alerts(&app, &trip_id, "device_auth_failure").await.len(), 1);
        // Signed with a registered key: taken.
        put_ed_key(&app, "k1", &SEED, "2026-01-01T00:00:00Z", None).await;
        let body = post(&app, ed(event(2, 1, "locked"), "k1", &SEED)).await;
        assert_eq!(body["events"]["accepted"], 1, "{body}");
    }
}

/// A key added by the CLI against the database of a running gateway counts at once.
#[tokio::test]
async fn a_key_added_by_the_cli_is_picked_up_without_a_restart() {
    let Some(app) = crate::helpers::spawn_app(Backend::Sqlite).await else {
        return;
    };
    app.declare_gt_sv().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ects-gateway"))
        .args([
            "--database-url",
            &app.database_url,
            "device",
            "key",
            "add",
            "--device",
            DEVICE,
            "--ed25519-public",
            &ed25519_public(&SEED).unwrap(),
            "--key-id",
            "cli1",
            "--valid-from",
            "2026-01-01T00:00:00Z",
        ])
        .env_remove("ECTS_CONFIG")
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("key cli1 of device"));
    let body = post(&app, event(1, 0, "locked")).await;
    assert_eq!(body["events"]["refused"], 1, "{body}");
    let body = post(&app, ed(event(2, 1, "locked"), "cli1", &SEED)).await;
    assert_eq!(body["events"]["accepted"], 1, "{body}");
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_ects-gateway"))
        .args(["--database-url", &app.database_url, "device", "key", "list"])
        .env_remove("ECTS_CONFIG")
        .output()
        .expect("the binary runs");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("cli1") && text.contains("ed25519") && text.contains("valid"),
        "{text}"
    );
    let revoke = std::process::Command::new(env!("CARGO_BIN_EXE_ects-gateway"))
        .args([
            "--database-url",
            &app.database_url,
            "device",
            "key",
            "revoke",
            "--device",
            DEVICE,
            "--key-id",
            "cli1",
        ])
        .env_remove("ECTS_CONFIG")
        .output()
        .expect("the binary runs");
    assert!(revoke.status.success());
    let body = post(&app, ed(event(3, 2, "locked"), "cli1", &SEED)).await;
    assert_eq!(body["events"]["refused"], 1, "{body}");
}

async fn a_refusal_before_the_declaration_alerts_its_trip(app: TestApp) {
    put_ed_key(&app, "k1", &SEED, "2026-01-01T00:00:00Z", None).await;
    let body = post(&app, ed(event(1, 0, "opened"), "k1", &OTHER_SEED)).await;
    assert_eq!(body["events"]["refused"], 1, "{body}");
    assert_eq!(
        app.count_where("seal_event_refusals", "trip_id is null")
            .await,
        1
    );
    let trip_id = app.declare_gt_sv().await;
    assert_eq!(
        app.count_where("seal_event_refusals", "trip_id is null")
            .await,
        0
    );
    assert_eq!(alerts(&app, &trip_id, "device_auth_failure").await.len(), 1);
    assert!(alerts(&app, &trip_id, "seal_opened").await.is_empty());
}

/// Over AMQP a refused event is kept and alerted, and the rest of its batch goes on (the
/// message is acknowledged, not dead-lettered).
#[tokio::test]
async fn over_amqp_a_refused_event_is_kept_and_the_batch_goes_on() {
    use crate::amqp::{amqp_url, connect, partner, publish, spawn, suffix};
    let Some(url) = amqp_url() else {
        return;
    };
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let id = format!("dev-{}", suffix());
        let queue = format!("ects.test.in.{id}");
        let partners = vec![partner(&format!(
            "id = \"{id}\"\nauthority = \"GT\"\nformat = \"ects-json\"\namqp_in = \"{queue}\"\n"
        ))];
        let Some(app) = spawn(backend, &url, partners).await else {
            continue;
        };
        let trip_id = app.declare_gt_sv().await;
        put_ed_key(&app, "k1", &SEED, "2026-01-01T00:00:00Z", None).await;
        let (_conn, channel) = connect(&url).await;
        let batch = json!([
            ed(event(1, 0, "locked"), "k1", &SEED),
            ed(event(2, 1, "opened"), "k1", &OTHER_SEED),
            ed(event(3, 2, "position"), "k1", &SEED),
        ]);
        publish(
            &channel,
            &queue,
            batch.to_string().as_bytes(),
            Some(&suffix()),
        )
        .await;
        crate::helpers::eventually("the batch applied", || async {
            let events = app.count("seal_events").await;
            let refused = app.count("seal_event_refusals").await;
            if events == 2 && refused == 1 {
                Ok(())
            } else {
                Err(format!("{events} event(s), {refused} refusal(s)"))
            }
        })
        .await;
        assert_eq!(alerts(&app, &trip_id, "device_auth_failure").await.len(), 1);
        assert!(alerts(&app, &trip_id, "seal_opened").await.is_empty());
        assert_eq!(app.count_where("messages", "outcome = 'rejected'").await, 0);
        app.stopper.stop().await;
    }
}
