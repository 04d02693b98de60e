//! Who may call what: every route × every role × (no credential, expired, revoked, wrong
//! authority). The expectations are written here by hand, apart from the route table in
//! `src/http/policy.rs`, so that a change to either without the other fails; and every
//! route the code registers must have a row in the table and an operation in the OpenAPI
//! document.

use std::collections::{BTreeMap, BTreeSet};

use ects_gateway::http::policy::ROUTES;
use serde_json::Value;

use crate::helpers::{Backend, Role, TestApp, make_token, spawn_app_with};

const PARTNER_TOKEN: &str = "gt-customs-partner-token";

/// Who reaches each route, by hand. `public`: no credential needed. Names: admin,
/// operator, officer, single-window, shipper, transporter, integrator, device-platform,
/// partner.
const EXPECTED: &[(&str, &str, &str)] = &[
    (
        "POST",
        "/v1/messages",
        "admin single-window device-platform partner",
    ),
    (
        "POST",
        "/v1/messages/{format}",
        "admin single-window device-platform partner",
    ),
    ("POST", "/v1/seal-events", "admin device-platform partner"),
    (
        "GET",
        "/v1/formats",
        "admin operator officer single-window shipper transporter integrator device-platform partner",
    ),
    (
        "POST",
        "/v1/translate",
        "admin integrator single-window partner",
    ),
    (
        "GET",
        "/v1/trips",
        "admin operator officer single-window shipper transporter partner",
    ),
    (
        "GET",
        "/v1/trips/{id}",
        "admin operator officer single-window shipper transporter partner",
    ),
    (
        "GET",
        "/v1/trips/{id}/events",
        "admin operator officer partner",
    ),
    (
        "GET",
        "/v1/trips/{id}/conflicts",
        "admin operator officer partner",
    ),
    ("GET", "/v1/alerts", "admin operator officer partner"),
    ("POST", "/v1/alerts/{id}/acknowledge", "admin operator"),
    ("POST", "/v1/alerts/{id}/justify", "officer partner"),
    ("PUT", "/v1/devices/{device}/keys/{key_id}", "admin"),
    ("GET", "/v1/devices/{device}/keys", "admin"),
    ("DELETE", "/v1/devices/{device}/keys/{key_id}", "admin"),
    ("PUT", "/v1/devices/{device}", "admin"),
    (
        "GET",
        "/v1/devices/{device}/refused-events",
        "admin operator",
    ),
    ("POST", "/v1/trips/{id}/release", "officer partner"),
    ("POST", "/v1/trips/{id}/handover", "officer partner"),
    ("POST", "/v1/trips/{id}/cancel", "officer partner"),
    (
        "GET",
        "/v1/trips/{id}/audit",
        "admin operator officer partner",
    ),
    ("PUT", "/v1/trips/{id}/rules", "admin"),
    ("GET", "/v1/corridors", "admin operator officer partner"),
    ("PUT", "/v1/corridors/{id}", "admin"),
    (
        "GET",
        "/v1/corridors/{id}",
        "admin operator officer partner",
    ),
    ("GET", "/v1/zones", "admin operator officer partner"),
    ("PUT", "/v1/zones/{id}", "admin"),
    ("GET", "/v1/zones/{id}", "admin operator officer partner"),
    ("GET", "/v1/outbox", "admin partner"),
    ("POST", "/v1/outbox/{seq}/retry", "admin"),
    ("POST", "/v1/offices/import", "admin"),
    (
        "GET",
        "/v1/offices",
        "admin operator officer single-window integrator partner",
    ),
    ("GET", "/v1/registry/changes", "admin"),
    (
        "GET",
        "/v1/offices/{code}",
        "admin operator officer single-window integrator partner",
    ),
    ("PUT", "/v1/offices/{code}", "admin"),
    ("GET", "/healthz", "public"),
    ("GET", "/readyz", "public"),
    // Not public by default (`[http] public_metrics`).
    ("GET", "/metrics", "admin operator"),
    ("GET", "/openapi.json", "public"),
];

/// The principals of the matrix: a name and its token.
struct Principals {
    by_name: Vec<(&'static str, String)>,
    /// An officer of an authority that is no party to the trip.
    foreign_officer: String,
    expired: String,
    revoked: String,
}

async fn principals(app: &TestApp) -> Principals {
    let mut by_name = vec![("admin", app.admin_token.clone())];
    for (name, role, scope) in [
        ("operator", Role::Operator, ""),
        ("officer", Role::Officer, "GT"),
        ("single-window", Role::SingleWindow, ""),
        ("shipper", Role::Shipper, "DECL-1"),
        ("transporter", Role::Transporter, "CARRIER-1"),
        ("integrator", Role::Integrator, ""),
        ("device-platform", Role::DevicePlatform, ""),
    ] {
        by_name.push((name, app.token(role, scope).await));
    }
    by_name.push(("partner", PARTNER_TOKEN.to_owned()));
    let foreign_officer = app.token(Role::Officer, "MX").await;
    // An admin token that expired a minute ago, and one revoked.
    let expired = {
        use secrecy::ExposeSecret;
        let now = chrono::Utc::now();
        let new = ects_gateway::auth::NewToken {
            name: "expired-admin".into(),
            role: Role::Admin,
            authority: None,
            party: None,
            expires_at: now - chrono::Duration::minutes(1),
            created_by: "test".into(),
        };
        let (_, token) = app
            .tokens
            .create(&new, now - chrono::Duration::hours(1))
            .await
            .expect("a token");
        token.expose_secret().to_owned()
    };
    let revoked = make_token(&app.tokens, "revoked-admin", Role::Admin, None, None).await;
    assert!(
        app.tokens
            .revoke("revoked-admin", chrono::Utc::now())
            .await
            .expect("revoked")
    );
    Principals {
        by_name,
        foreign_officer,
        expired,
        revoked,
    }
}

fn concrete(path: &str, trip: &str) -> String {
    path.replace("{id}", trip)
        .replace("{format}", "ects-json")
        .replace("{seq}", "999999")
        .replace("{code}", "GTPQZ")
        .replace("{device}", "860000000000001")
        .replace("{key_id}", "k-access")
}

/// One request; bodies are `{}`, which no mutating route accepts, so nothing changes.
async fn call(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let url = format!("{}{path}", app.address);
    let mut request = match method {
        "GET" => app.anonymous.get(url),
        "POST" => app.anonymous.post(url).body("{}"),
        "PUT" => app.anonymous.put(url).body("{}"),
        "DELETE" => app.anonymous.delete(url),
        other => panic!("no method {other} in the matrix"),
    }
    .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let reply = app.send(request).await;
    let challenge = reply
        .headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if reply.status == 401 {
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer"),
            "{method} {path}: 401 without WWW-Authenticate: Bearer"
        );
    }
    let body = serde_json::from_str(&reply.text).unwrap_or(Value::Null);
    (reply.status, body)
}

async fn every_route_by_every_principal(backend: Backend) {
    let Some(app) = spawn_app_with(backend, crate::helpers::mappings_dir(), |s| {
        s.partners = vec![
            toml::from_str(&format!(
                "id = \"gt-customs\"\nauthority = \"GT\"\nformat = \"ects-json\"\n\
                 api_token_sha256 = \"{}\"\n",
                {
                    use sha2::Digest;
                    hex::encode(sha2::Sha256::digest(PARTNER_TOKEN.as_bytes()))
                }
            ))
            .expect("a partner"),
        ];
    })
    .await
    else {
        return;
    };
    let trip = app.declare_gt_sv().await;
    let who = principals(&app).await;
    let expected: BTreeMap<(&str, &str), BTreeSet<&str>> = EXPECTED
        .iter()
        .map(|(m, p, roles)| ((*m, *p), roles.split_whitespace().collect()))
        .collect();

    // The table and the expectations name the same routes.
    let table: BTreeSet<(&str, &str)> = ROUTES.iter().map(|r| (r.method, r.path)).collect();
    let written: BTreeSet<(&str, &str)> = expected.keys().copied().collect();
    assert_eq!(
        table, written,
        "the route table and this test's routes differ"
    );

    let mut failures = Vec::new();
    for ((method, pattern), allowed) in &expected {
        let path = concrete(pattern, &trip);
        let public = allowed.contains("public");
        let trip_scoped = pattern.starts_with("/v1/trips/{id}");

        // No credential, an expired and a revoked one: 401, unless public.
        for (label, token) in [
            ("no credential", None),
            ("expired", Some(who.expired.as_str())),
            ("revoked", Some(who.revoked.as_str())),
        ] {
            let (status, _) = call(&app, method, &path, token).await;
            let ok = if public {
                status != 401 && status != 403
            } else {
                status == 401
            };
            if !ok {
                failures.push(format!("{method} {path} {label}: {status}"));
            }
        }

        for (name, token) in &who.by_name {
            let (status, body) = call(&app, method, &path, Some(token)).await;
            let ok = if public || allowed.contains(name) {
                status != 401 && status != 403
            } else {
                status == 403
            };
            if !ok {
                failures.push(format!("{method} {path} as {name}: {status} {body}"));
            }
        }

        // An officer of an authority no party to the trip: 404 on the trip's routes, as for
        // a trip that does not exist; elsewhere as any officer.
        let (status, body) = call(&app, method, &path, Some(&who.foreign_officer)).await;
        let ok = if !allowed.contains("officer") && !public {
            status == 403
        } else if trip_scoped {
            status == 404
        } else {
            status != 401 && status != 403
        };
        if !ok {
            failures.push(format!("{method} {path} as officer of MX: {status} {body}"));
        }
        if trip_scoped && status == 404 {
            let missing = "01a1fdea-56ce-7428-ace2-433c7aa63ea3";
            let (s, other) = call(
                &app,
                method,
                &concrete(pattern, missing),
                Some(&who.foreign_officer),
            )
            .await;
            let hide = |v: &Value| v.to_string().replace(&trip, "T").replace(missing, "T");
            if s != 404 || hide(&body) != hide(&other) {
                failures.push(format!(
                    "{method} {path}: the refusal differs from a missing trip's: {body} / {other}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A path no route has: 401 without a credential, 404 with one.
    assert_eq!(call(&app, "GET", "/v1/nothing-here", None).await.0, 401);
    assert_eq!(
        call(&app, "GET", "/v1/nothing-here", Some(&app.admin_token))
            .await
            .0,
        404
    );

    // The foreign officer's lists show nothing of the trip.
    let (status, list) = call(&app, "GET", "/v1/trips", Some(&who.foreign_officer)).await;
    assert_eq!(status, 200);
    assert_eq!(list["trips"], serde_json::json!([]), "{list}");
}

mod matrix {
    #[tokio::test]
    async fn sqlite() {
        super::every_route_by_every_principal(crate::helpers::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::every_route_by_every_principal(crate::helpers::Backend::Postgres).await;
    }
}

/// Every route the code registers (`#[get("...")]` and the like in src/http) has a row in
/// the table and an operation in the OpenAPI document, and the document has no other.
#[tokio::test]
async fn every_registered_route_has_a_policy_and_an_operation() {
    let mut registered = BTreeSet::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    for entry in std::fs::read_dir(&dir).expect("src/http") {
        let path = entry.expect("an entry").path();
        let text = std::fs::read_to_string(&path).expect("a source file");
        for line in text.lines() {
            let line = line.trim();
            for method in ["get", "post", "put", "delete", "patch"] {
                if let Some(rest) = line.strip_prefix(&format!("#[{method}(\"")) {
                    let route = rest.split('"').next().expect("a path").to_owned();
                    registered.insert((method.to_uppercase(), route));
                }
            }
        }
    }
    assert!(registered.len() > 20, "found {registered:?}");
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    let doc = serde_json::to_value(ects_gateway::http::openapi_document()).expect("JSON");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "delete", "patch"] {
            if let Some(op) = item.get(method) {
                documented.insert((method.to_uppercase(), path.clone()));
                // Each operation states its security and roles.
                assert!(op.get("security").is_some(), "{method} {path}: no security");
                assert!(op.get("x-roles").is_some(), "{method} {path}: no x-roles");
            }
        }
    }
    assert_eq!(registered, table, "registered routes vs the route table");
    assert_eq!(
        documented, table,
        "documented operations vs the route table"
    );
}

/// Every audit entry names its principal: the admin who filed the declaration, the officer
/// who cancelled (as authenticated, not as typed), the operator who acknowledged; and the
/// registry's record of changes names the admin.
async fn the_audit_trail_names_each_principal(app: TestApp) {
    let trip = app.declare_gt_sv().await;
    let officer = app.token(Role::Officer, "GT").await;
    let cancel = serde_json::json!({"trip_id": trip, "authority": "GT",
        "officer": {"id": "SOMEONE-ELSE", "name": "Typed name"},
        "time": chrono::Utc::now().to_rfc3339(), "reason": "withdrawn by the declarant"});
    // Anonymous and the admin may not; the GT officer may.
    let path = format!("/v1/trips/{trip}/cancel");
    let anonymous = app
        .send(
            app.anonymous
                .post(format!("{}{path}", app.address))
                .body(cancel.to_string()),
        )
        .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(app.post(&path, cancel.to_string()).await.status, 403);
    let reply = app.post_as(&officer, &path, cancel.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    // An alert to acknowledge: none is raised by a cancellation, so an unknown one is 404,
    // and a comment over 1000 characters is refused where it is.
    let operator = app.token(Role::Operator, "").await;
    let long = serde_json::json!({"comment": "x".repeat(1001)});
    let reply = app
        .post_as(
            &operator,
            "/v1/alerts/no-such-alert/acknowledge",
            long.to_string(),
        )
        .await;
    assert!(reply.status == 404 || reply.status == 422, "{}", reply.text);

    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    let audit = audit.json();
    let entries = audit["entries"].as_array().expect("entries");
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(seqs, sorted, "oldest first");
    let actor_of = |action: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action)
            .map(|e| e["actor"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no {action} in {audit:#}"))
    };
    let declared_by = actor_of("input.declaration");
    assert!(
        declared_by.starts_with("user:test-admin-") && declared_by.ends_with("/admin"),
        "{declared_by}"
    );
    let cancelled_by = actor_of("input.cancel");
    assert!(
        cancelled_by.starts_with("user:test-officer-GT-") && cancelled_by.ends_with("/officer/GT"),
        "{cancelled_by}"
    );
    let cancel_entry = entries
        .iter()
        .find(|e| e["action"] == "input.cancel")
        .expect("the cancellation");
    let officer_id = cancel_entry["payload"]["body"]["officer"]["id"]
        .as_str()
        .unwrap_or_default();
    assert!(
        cancelled_by.starts_with(&format!("user:{officer_id}/")),
        "the officer as authenticated, not as typed: {cancel_entry}"
    );
    for e in entries {
        let actor = e["actor"].as_str().unwrap_or_default();
        assert!(
            actor.starts_with("user:")
                || actor.starts_with("partner:")
                || actor.starts_with("device:")
                || actor == "engine"
                || actor == "clock",
            "an entry without a principal: {e}"
        );
    }

    // The registry's record names the admin who changed it.
    let zone = serde_json::json!({"type": "Feature", "properties": {"kind": "depot", "name": "Test depot"},
        "geometry": {"type": "Polygon", "coordinates": [[[-90.6, 14.6], [-90.5, 14.6], [-90.5, 14.7], [-90.6, 14.6]]]}});
    let put = app.put("/v1/zones/TESTDEPOT", &zone).await;
    if put.status == 200 || put.status == 201 {
        let changes = app.get("/v1/registry/changes").await.json();
        let last = changes["changes"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["subject_id"] == "TESTDEPOT"))
            .cloned()
            .unwrap_or_default();
        let actor = last["actor"].as_str().unwrap_or_default();
        assert!(actor.starts_with("user:test-admin-"), "{changes:#}");
    }
}

/// An acknowledgement is recorded in the trip's chain with the operator who made it.
async fn an_operator_acknowledges_an_alert_in_the_audit_chain(app: TestApp) {
    use sqlx::Row;
    let trip = app.declare_gt_sv().await;
    // A trip past its time limit raises `overdue` on the clock's tick.
    app.tracking
        .tick_all(chrono::Utc::now() + chrono::Duration::days(400))
        .await
        .expect("a tick");
    let row = sqlx::query("select alert_id from alerts where trip_id = $1")
        .bind(&trip)
        .fetch_optional(app.store.pool())
        .await
        .expect("a query");
    let Some(row) = row else {
        panic!("no alert raised for {trip} by a tick 400 days on");
    };
    let alert: String = row.try_get("alert_id").expect("an id");
    let operator = app.token(Role::Operator, "").await;
    let path = format!("/v1/alerts/{alert}/acknowledge");
    let shipper = app.token(Role::Shipper, "DECL-9").await;
    assert_eq!(app.post_as(&shipper, &path, "{}").await.status, 403);
    let reply = app
        .post_as(
            &operator,
            &path,
            r#"{"comment": "driver called: tyre change"}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let audit = app.get(&format!("/v1/trips/{trip}/audit")).await.json();
    let entry = audit["entries"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["action"] == "input.alert_acknowledged"))
        .cloned()
        .unwrap_or_else(|| panic!("no acknowledgement in {audit:#}"));
    assert!(
        entry["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("user:test-operator-") && a.ends_with("/operator")),
        "{entry}"
    );
    assert_eq!(entry["payload"]["comment"], "driver called: tyre change");
    assert_eq!(audit["verified"], true);
    // The clock's own effects name the clock.
    assert!(
        audit["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["actor"] == "clock")),
        "{audit:#}"
    );
    let too_long = serde_json::json!({"comment": "é".repeat(1001)});
    let reply = app.post_as(&operator, &path, too_long.to_string()).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.pointers(), vec!["/comment"]);
}

/// A single window sees what it filed (by reference), another one nothing; a transporter
/// sees the trips of its carrier id and a shipper those of its declarant id, without
/// their events or alerts.
async fn single_windows_and_transporters_see_their_own(app: TestApp) {
    let window = app.token(Role::SingleWindow, "a").await;
    let other_window = app.token(Role::SingleWindow, "b").await;
    let mut declaration: serde_json::Value =
        serde_json::from_slice(&crate::helpers::fixture("ects-json/declaration-gt-sv.json"))
            .expect("the fixture is JSON");
    declaration["declarant"] =
        serde_json::json!({"id": "GT-NIT-4471882", "name": "Exportadora del Atlántico"});
    let filed = app
        .post_as(&window, "/v1/messages/ects-json", declaration.to_string())
        .await;
    assert_eq!(filed.status, 202, "{}", filed.text);
    let trip = filed.json()["trips"][0]
        .as_str()
        .expect("a trip")
        .to_owned();
    let by_reference = "/v1/trips?reference=GT-2026-T-000123";
    let get = |token: String, path: String| {
        let app = &app;
        async move {
            app.send(
                app.anonymous
                    .get(format!("{}{path}", app.address))
                    .bearer_auth(token),
            )
            .await
        }
    };
    let mine = get(window.clone(), by_reference.into()).await.json();
    assert_eq!(mine["trips"].as_array().map(Vec::len), Some(1), "{mine}");
    let theirs = get(other_window.clone(), by_reference.into()).await.json();
    assert_eq!(theirs["trips"], serde_json::json!([]), "{theirs}");
    assert_eq!(
        get(other_window, format!("/v1/trips/{trip}")).await.status,
        404
    );

    let carrier = app.token(Role::Transporter, "GT-TR-0042").await;
    assert_eq!(
        get(carrier.clone(), format!("/v1/trips/{trip}"))
            .await
            .status,
        200
    );
    assert_eq!(
        get(carrier.clone(), format!("/v1/trips/{trip}/events"))
            .await
            .status,
        403
    );
    // A cut rope: the operator side sees the alert; the carrier's status carries none
    // (status without alert evidence), nor does the single window's.
    let cut = serde_json::json!({"device_id": "860000000000001", "seq": 9100,
        "time": chrono::Utc::now().to_rfc3339(), "kind": "rope_cut",
        "position": {"lat": 13.95, "lon": -90.40}});
    assert_eq!(app.post_events(cut.to_string()).await.status, 202);
    let admin_view = app.trip(&trip).await;
    assert!(
        admin_view["open_alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["kind"] == "seal_tamper")),
        "{admin_view}"
    );
    let carrier_view = get(carrier.clone(), format!("/v1/trips/{trip}"))
        .await
        .json();
    assert_eq!(
        carrier_view["open_alerts"],
        serde_json::json!([]),
        "{carrier_view}"
    );
    let window_view = get(window.clone(), by_reference.into()).await.json();
    assert_eq!(
        window_view["trips"][0]["open_alerts"],
        serde_json::json!([]),
        "{window_view}"
    );
    let stranger = app.token(Role::Transporter, "XX-TR-1").await;
    assert_eq!(get(stranger, format!("/v1/trips/{trip}")).await.status, 404);

    let shipper = app.token(Role::Shipper, "GT-NIT-4471882").await;
    let shipper_view = get(shipper.clone(), format!("/v1/trips/{trip}")).await;
    assert_eq!(shipper_view.status, 200, "{}", shipper_view.text);
    assert_eq!(
        shipper_view.json()["open_alerts"],
        serde_json::json!([]),
        "{}",
        shipper_view.text
    );
    let listed = get(shipper.clone(), "/v1/trips".into()).await.json();
    assert_eq!(
        listed["trips"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(
        get(shipper, format!("/v1/trips/{trip}/audit")).await.status,
        403
    );
    // The carrier's id is not a declarant's: a shipper token under it sees nothing.
    let wrong_party = app.token(Role::Shipper, "GT-TR-0042").await;
    assert_eq!(
        get(wrong_party, format!("/v1/trips/{trip}")).await.status,
        404
    );
}

/// `token list` shows when a token was last used (noted at most once a minute).
async fn a_tokens_last_use_is_noted(app: TestApp) {
    let used =
        crate::helpers::make_token(&app.tokens, "used-once", Role::Operator, None, None).await;
    crate::helpers::make_token(&app.tokens, "never-used", Role::Operator, None, None).await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let reply = app
        .send(
            app.anonymous
                .get(format!("{}/v1/trips", app.address))
                .bearer_auth(&used),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // Noted off the request's path: soon after.
    let listed = crate::helpers::eventually("the token's use noted", || async {
        let listed = app.tokens.list().await.expect("the tokens");
        let used = listed
            .iter()
            .find(|t| t.name == "used-once")
            .and_then(|t| t.last_used_at);
        match used {
            Some(at) if at >= before => Ok(listed),
            other => Err(format!("last_used_at {other:?}")),
        }
    })
    .await;
    let never = listed
        .iter()
        .find(|t| t.name == "never-used")
        .expect("listed");
    assert_eq!(never.last_used_at, None);
}

crate::on_both_backends!(
    a_tokens_last_use_is_noted,
    the_audit_trail_names_each_principal,
    single_windows_and_transporters_see_their_own,
    an_operator_acknowledges_an_alert_in_the_audit_chain
);
