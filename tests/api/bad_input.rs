//! Every kind of bad input gets its status and a problem document that points at the
//! field, and nothing already stored changes.

use serde_json::{Value, json};

use crate::helpers::{TEST_BODY_LIMIT, TEST_MAX_EVENTS, TestApp, fixture, fixture_json};
use crate::on_both_backends;

on_both_backends!(bad_input_is_refused_with_its_location_and_changes_nothing);

struct Case {
    name: &'static str,
    path: &'static str,
    body: Vec<u8>,
    status: u16,
    /// The pointer the problem must name (`None`: a line and column instead).
    pointer: Option<&'static str>,
}

fn declaration_with(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut d = fixture_json("ects-json/declaration-ke-ug.json");
    change(&mut d);
    d.to_string().into_bytes()
}

fn cases() -> Vec<Case> {
    let event = |lat: f64| {
        json!({"device_id": "860000000000001", "seq": 99, "time": "2026-03-14T10:00:00Z",
               "kind": "position", "position": {"lat": lat, "lon": -90.5}})
    };
    vec![
        Case {
            name: "malformed JSON",
            path: "/v1/messages/ects-json",
            body: b"{\"declaration_id\": \"GT-1\",\n  \"issuing_authority\": }".to_vec(),
            status: 400,
            pointer: None,
        },
        Case {
            name: "missing seal id",
            path: "/v1/messages/ects-json",
            body: fixture("ects-json/invalid/declaration-missing-seal-id.json"),
            status: 422,
            pointer: Some("/equipment/0/seals/0"),
        },
        Case {
            name: "wrong type",
            path: "/v1/messages/ects-json",
            body: fixture("ects-json/invalid/declaration-wrong-type.json"),
            status: 422,
            pointer: Some("/equipment"),
        },
        Case {
            name: "bad country code",
            path: "/v1/messages/ects-json",
            body: fixture("ects-json/invalid/declaration-bad-country.json"),
            status: 422,
            pointer: Some("/office_of_departure/country"),
        },
        Case {
            name: "seal id too long",
            path: "/v1/messages/ects-json",
            body: declaration_with(|d| d["equipment"][0]["seals"][0]["id"] = "S".repeat(36).into()),
            status: 422,
            pointer: Some("/equipment/0/seals/0/id"),
        },
        Case {
            name: "unknown field",
            path: "/v1/messages/ects-json",
            body: declaration_with(|d| d["colour"] = "red".into()),
            status: 422,
            pointer: Some(""),
        },
        Case {
            name: "time limit before declaration",
            path: "/v1/messages/ects-json",
            body: declaration_with(|d| d["time_limit"] = "2000-01-01T00:00:00Z".into()),
            status: 422,
            pointer: Some("/time_limit"),
        },
        Case {
            name: "latitude 91",
            path: "/v1/seal-events",
            body: fixture("ects-json/invalid/event-lat-91.json"),
            status: 422,
            pointer: Some("/position/lat"),
        },
        Case {
            name: "latitude 91 inside a batch",
            path: "/v1/seal-events",
            body: json!([event(13.0), event(91.0)]).to_string().into_bytes(),
            status: 422,
            pointer: Some("/1/position/lat"),
        },
        Case {
            name: "an event from a clock years ahead",
            path: "/v1/seal-events",
            body: json!({"device_id": "860000000000001", "seq": 98, "time": "2046-03-14T10:00:00Z",
                         "kind": "position"})
            .to_string()
            .into_bytes(),
            status: 422,
            pointer: Some("/time"),
        },
        Case {
            name: "an event from before 2000",
            path: "/v1/seal-events",
            body: json!([event(13.0), {"device_id": "860000000000001", "seq": 97,
                         "time": "1980-01-06T00:00:00Z", "kind": "position"}])
            .to_string()
            .into_bytes(),
            status: 422,
            pointer: Some("/1/time"),
        },
        Case {
            name: "a batch object with more than events",
            path: "/v1/seal-events",
            body: json!({"events": [event(13.0)], "sender": "acme"})
                .to_string()
                .into_bytes(),
            status: 422,
            pointer: Some("/sender"),
        },
        Case {
            name: "unknown event kind",
            path: "/v1/seal-events",
            body: fixture("ects-json/invalid/event-unknown-kind.json"),
            status: 422,
            pointer: Some("/kind"),
        },
        Case {
            name: "event without identity",
            path: "/v1/seal-events",
            body: fixture("ects-json/invalid/event-no-identity.json"),
            status: 422,
            pointer: Some(""),
        },
        Case {
            name: "too many events",
            path: "/v1/seal-events",
            body: Value::Array(vec![event(13.0); TEST_MAX_EVENTS + 1])
                .to_string()
                .into_bytes(),
            status: 422,
            pointer: Some(""),
        },
        Case {
            name: "a declaration sent as seal events",
            path: "/v1/seal-events",
            body: fixture("ects-json/declaration-ke-ug.json"),
            status: 422,
            pointer: Some("/declaration_id"),
        },
        Case {
            name: "neither a declaration nor events",
            path: "/v1/messages/ects-json",
            body: b"{\"hello\": 1}".to_vec(),
            status: 422,
            pointer: Some(""),
        },
        Case {
            name: "nesting deeper than the parser allows",
            path: "/v1/seal-events",
            body: format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            status: 400,
            pointer: None,
        },
        Case {
            name: "a document no format recognises",
            path: "/v1/messages",
            body: b"<?xml version=\"1.0\"?><Declaration/>".to_vec(),
            status: 422,
            pointer: Some(""),
        },
        Case {
            name: "empty body",
            path: "/v1/messages/ects-json",
            body: Vec::new(),
            status: 400,
            pointer: Some(""),
        },
        Case {
            name: "oversized body",
            path: "/v1/messages/ects-json",
            body: vec![b' '; TEST_BODY_LIMIT + 1],
            status: 413,
            pointer: None,
        },
    ]
}

async fn bad_input_is_refused_with_its_location_and_changes_nothing(app: TestApp) {
    let trip_id = app.declare_gt_sv().await;
    let batch = fixture("ects-json/events-gt-sv.json");
    assert_eq!(app.post_events(batch).await.status, 202);
    let trip_before = app.trip(&trip_id).await;
    let events_before = app.count("seal_events").await;

    let cases = cases();
    for case in &cases {
        let reply = app.post(case.path, case.body.clone()).await;
        assert_eq!(reply.status, case.status, "{}: {}", case.name, reply.text);
        assert_eq!(
            reply.content_type(),
            "application/problem+json",
            "{}",
            case.name
        );
        let problem = reply.json();
        assert_eq!(problem["status"], case.status, "{}", case.name);
        assert!(problem["title"].is_string() && problem["detail"].is_string());
        match case.pointer {
            Some(pointer) => assert!(
                reply.pointers().iter().any(|p| p == pointer),
                "{}: expected pointer {pointer:?} in {}",
                case.name,
                reply.text
            ),
            None if case.status == 400 => {
                assert!(
                    problem["errors"][0]["line"].is_number(),
                    "{}: {}",
                    case.name,
                    reply.text
                );
                assert!(problem["errors"][0]["column"].is_number());
            }
            None => {}
        }
    }

    assert_eq!(app.trip(&trip_id).await, trip_before);
    assert_eq!(app.count("seal_events").await, events_before);
    assert_eq!(app.count("trips").await, 1);
    // Refused documents that arrived whole are kept as evidence with their problem
    // (the oversized one never arrived whole).
    let received_whole = cases
        .iter()
        .filter(|c| c.status != 413 && !c.body.is_empty())
        .count() as i64;
    assert_eq!(
        app.count_where("messages", "outcome = 'rejected' and problem is not null")
            .await,
        received_whole
    );
}
