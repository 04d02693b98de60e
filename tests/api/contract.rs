//! The schemas and the Rust types agree: every fixture validates and deserialises, every
//! invalid fixture is refused by the schema, and what the gateway emits validates (the
//! HTTP tests check each trip status, alert and event they receive).

use ects_core::{SealEvent, TransitDeclaration};
use ects_gateway::schemas::{Canonical, FILES};
use serde_json::Value;

use crate::helpers::{SCHEMAS, fixture_json};

fn fixtures(dir: &str) -> Vec<(String, Value)> {
    let full = format!("{}/tests/fixtures/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<_> = std::fs::read_dir(&full)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let value = fixture_json(&format!("{dir}/{name}"));
            (name, value)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_valid_fixture_validates_and_deserialises() {
    let all = fixtures("ects-json");
    assert!(all.len() >= 3);
    for (name, value) in all {
        if name.starts_with("declaration") {
            assert!(
                SCHEMAS
                    .check(Canonical::TransitDeclaration, &value, "")
                    .is_empty(),
                "{name}"
            );
            let d: TransitDeclaration = serde_json::from_value(value.clone()).unwrap();
            // And back: what we would emit is what came in.
            assert_eq!(
                serde_json::to_value(&d).unwrap(),
                value,
                "{name} round trip"
            );
        } else {
            assert!(
                SCHEMAS
                    .check(Canonical::SealEventBatch, &value, "")
                    .is_empty(),
                "{name}"
            );
            let events: Vec<SealEvent> = serde_json::from_value(value.clone()).unwrap();
            for (i, e) in events.iter().enumerate() {
                let emitted = serde_json::to_value(e).unwrap();
                assert!(
                    SCHEMAS.check(Canonical::SealEvent, &emitted, "").is_empty(),
                    "{name} #{i}"
                );
            }
        }
    }
}

#[test]
fn every_invalid_fixture_is_refused_by_its_schema() {
    let all = fixtures("ects-json/invalid");
    assert!(all.len() >= 6);
    for (name, value) in all {
        let kind = if name.starts_with("declaration") {
            Canonical::TransitDeclaration
        } else {
            Canonical::SealEvent
        };
        assert!(
            !SCHEMAS.check(kind, &value, "").is_empty(),
            "{name} passed its schema"
        );
    }
}

#[test]
fn every_schema_is_draft_2020_12_with_its_own_id() {
    for (file, text) in FILES {
        let schema: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{file}"
        );
        assert_eq!(
            schema["$id"],
            format!("{}{file}", ects_gateway::schemas::BASE),
            "{file}"
        );
    }
}

/// The messages not yet emitted over HTTP (they come with release, handover and outbound
/// delivery) still serialise to what their schemas promise.
#[test]
fn the_other_canonical_messages_serialise_to_their_schemas() {
    use ects_core::*;
    let trip_id = TripId(uuid::Uuid::nil());
    let t = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let officer = Officer {
        id: "GT-OF-17".into(),
        name: Some("A. Officer".into()),
    };
    let release = ReleaseAuthorization {
        release_id: "REL-1".into(),
        trip_id,
        authority: AuthorityCode::parse("SV").unwrap(),
        officer: officer.clone(),
        place: ZoneId::parse("SVSAL-release").unwrap(),
        valid_from: t("2026-03-15T08:00:00Z"),
        valid_until: t("2026-03-15T10:00:00Z"),
        one_time_code: "739201".into(),
        issued_at: t("2026-03-15T07:55:00Z"),
        received_at: None,
    };
    let handover = CustodyHandover {
        handover_id: "HO-1".into(),
        trip_id,
        from_authority: AuthorityCode::parse("GT").unwrap(),
        to_authority: AuthorityCode::parse("SV").unwrap(),
        officer,
        place: Some(ZoneId::parse("GTPDA").unwrap()),
        time: t("2026-03-14T15:00:00Z"),
        seal_check: SealCheck::Intact,
        remarks: None,
    };
    let alert = Alert {
        alert_id: AlertId(uuid::Uuid::nil()),
        trip_id,
        kind: AlertKind::SealTamper,
        severity: Severity::Critical,
        raised_at: t("2026-03-14T12:00:00Z"),
        cleared_at: None,
        position: Some(LatLon::new(14.0, -90.5).unwrap()),
        evidence: vec!["e1".into()],
        seal_id: Some(SealId::parse("ES00781234").unwrap()),
        detail: None,
        justified: None,
    };
    let notification = StatusNotification {
        notification_id: "N-1".into(),
        kind: NotificationKind::Handover,
        trip_id,
        declaration_id: DeclarationId::parse("GT-2026-T-000123").unwrap(),
        issuing_authority: AuthorityCode::parse("GT").unwrap(),
        state: TripState::InTransit,
        time: t("2026-03-14T15:00:00Z"),
        previous_state: Some(TripState::Armed),
        alert: Some(alert.clone()),
        release: Some(release.clone()),
        handover: Some(handover.clone()),
        position: Some(LatLon::new(14.0, -90.5).unwrap()),
        late: true,
    };
    for (kind, value) in [
        (
            Canonical::ReleaseAuthorization,
            serde_json::to_value(&release).unwrap(),
        ),
        (
            Canonical::CustodyHandover,
            serde_json::to_value(&handover).unwrap(),
        ),
        (Canonical::Alert, serde_json::to_value(&alert).unwrap()),
        (
            Canonical::StatusNotification,
            serde_json::to_value(&notification).unwrap(),
        ),
    ] {
        let problems = SCHEMAS.check(kind, &value, "");
        assert!(problems.is_empty(), "{kind:?}: {problems:?}");
    }
    // And the inputs among them read back through serde.
    let back: ReleaseAuthorization =
        serde_json::from_value(serde_json::to_value(&release).unwrap()).unwrap();
    assert_eq!(back, release);
}
