//! A trip's status in every format that writes status notifications, over HTTP: the
//! document a subscribed partner was pushed for the same moment, valid against the
//! official schema where there is one; 406 for a format that cannot say a status.

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::Value;

use crate::helpers::{Backend, TestApp, product_mappings_dir, spawn_app_with, wait_until};
use crate::mapping::xmllint;
use crate::tracking::{SEAL_1, Seq, post, road_lon, rolling};

/// The formats shipped with a status notification mapping, and the official schema of
/// each where one exists.
const STATUS_FORMATS: [(&str, Option<&str>); 4] = [
    ("wco-dm", Some("notification/RES_envelope.xsd")),
    ("duca-t", None),
    ("asycuda", None),
    ("icegate-csn", None),
];

#[derive(Debug, Clone)]
struct Pushed {
    format: String,
    kind: String,
    content_type: String,
    message_id: String,
    body: Vec<u8>,
}

type Received = Arc<Mutex<Vec<Pushed>>>;

async fn receive(req: HttpRequest, body: web::Bytes, got: web::Data<Received>) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    got.lock().unwrap().push(Pushed {
        format: header("x-ects-format"),
        kind: header("x-ects-kind"),
        content_type: header("content-type"),
        message_id: header("x-ects-message-id"),
        body: body.to_vec(),
    });
    HttpResponse::Ok().finish()
}

fn start_endpoint() -> (String, Received) {
    let got: Received = Arc::default();
    let data = web::Data::new(got.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/ects", web::post().to(receive))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("a port");
    let url = format!("http://{}/ects", server.addrs()[0]);
    tokio::spawn(server.run());
    (url, got)
}

/// The last status notification pushed in `format`.
fn last_status(got: &Received, format: &str) -> Option<Pushed> {
    got.lock()
        .unwrap()
        .iter()
        .rev()
        .find(|p| p.format == format && p.kind == "status")
        .cloned()
}

async fn get_with(app: &TestApp, path: &str, accept: &str) -> crate::helpers::Reply {
    let response = app
        .client
        .get(format!("{}{path}", app.address))
        .header("accept", accept)
        .send()
        .await
        .expect("the request reaches the server");
    crate::helpers::Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await.expect("a body"),
    }
}

async fn a_trip_status_reads_in_every_format_as_its_partners_were_told(backend: Backend) {
    let (url, got) = start_endpoint();
    let partners: Vec<ects_gateway::partners::PartnerConfig> = STATUS_FORMATS
        .iter()
        .map(|(format, _)| {
            toml::from_str(&format!(
                "id = \"gt-{format}\"\nauthority = \"GT\"\nformat = \"{format}\"\n\
                 subscribe = [\"status\"]\nhttp_push = \"{url}\"\n"
            ))
            .unwrap()
        })
        .collect();
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = partners;
        s.outbox.poll_ms = 25;
    })
    .await
    else {
        return;
    };
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    // Later fixes change the position, not the state: the status stays the one pushed.
    post(
        &app,
        vec![seq.event(SEAL_1, 4, "position", road_lon(4), 0.0)],
    )
    .await;
    wait_until(
        "an in_transit notification pushed in every status format",
        || {
            STATUS_FORMATS.iter().all(|(format, _)| {
                got.lock()
                    .unwrap()
                    .iter()
                    .filter(|p| p.format == *format && p.kind == "status")
                    .count()
                    >= 2
            })
        },
    )
    .await;

    for (format, schema) in STATUS_FORMATS {
        let mut pushed = last_status(&got, format).unwrap();
        // What the outbox sent carries its reference for the partner's answer (WCO, ICEGATE:
        // `crate::answers`), on a line of its own; the status read here has none.
        let reference = pushed.message_id.replace('-', "");
        let text = String::from_utf8(pushed.body.clone()).unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let kept: String = lines
            .iter()
            .filter(|l| !l.contains(&reference))
            .copied()
            .collect();
        assert_eq!(
            lines.len() - kept.split_inclusive('\n').count(),
            usize::from(matches!(format, "wco-dm" | "icegate-csn")),
            "{format}: the reference {reference} where the format has a place for it\n{text}"
        );
        pushed.body = kept.into_bytes();
        let reply = app.get(&format!("/v1/trips/{trip}?format={format}")).await;
        assert_eq!(reply.status, 200, "{format}: {}", reply.text);
        assert_eq!(
            reply.text.as_bytes(),
            pushed.body.as_slice(),
            "{format}: the status differs from the notification pushed\n{}\n{}",
            reply.text,
            String::from_utf8_lossy(&pushed.body)
        );
        assert_eq!(reply.content_type(), pushed.content_type, "{format}");
        if let Some(schema) = schema {
            xmllint(schema, reply.text.as_bytes())
                .unwrap_or_else(|e| panic!("{format}: {e}\n{}", reply.text));
        }
        // The same by reference.
        let by_reference = app
            .get(&format!(
                "/v1/trips?reference=GT-2026-T-000123&format={format}"
            ))
            .await;
        assert_eq!(by_reference.status, 200, "{}", by_reference.text);
        assert_eq!(by_reference.text, reply.text, "{format}");
        // Negotiated: a format parameter, or the format's media type.
        let media = if pushed.content_type.contains("json") {
            "json"
        } else {
            "xml"
        };
        for accept in [
            format!("application/{media}; format={format}"),
            format!("application/vnd.ects.{format}+{media}"),
            format!("application/json;q=0.2, application/{media};format={format}"),
        ] {
            let negotiated = get_with(&app, &format!("/v1/trips/{trip}"), &accept).await;
            assert_eq!(negotiated.status, 200, "{accept}: {}", negotiated.text);
            assert_eq!(negotiated.text, reply.text, "{accept}");
        }
    }
    assert!(
        last_status(&got, "wco-dm")
            .map(|p| String::from_utf8_lossy(&p.body).contains("TRN"))
            .unwrap_or_default()
    );
    // Canonical JSON stays the default.
    let canonical = get_with(&app, &format!("/v1/trips/{trip}"), "application/json").await;
    assert_eq!(canonical.status, 200);
    assert_eq!(canonical.json()["state"], "in_transit");
    assert_eq!(
        app.get(&format!("/v1/trips/{trip}?format=ects-json"))
            .await
            .json()["trip_id"],
        trip.as_str()
    );

    // Formats that cannot say a status: 406, and the formats that can.
    for format in ["icegate-flat", "cbic-eseal"] {
        let reply = app.get(&format!("/v1/trips/{trip}?format={format}")).await;
        assert_eq!(reply.status, 406, "{format}: {}", reply.text);
        assert_not_acceptable(&reply);
    }
    let reply = get_with(&app, &format!("/v1/trips/{trip}"), "application/xml").await;
    assert_eq!(reply.status, 406, "{}", reply.text);
    assert_not_acceptable(&reply);
    let reply = get_with(
        &app,
        &format!("/v1/trips/{trip}"),
        "application/vnd.ects.edifact+xml",
    )
    .await;
    assert_eq!(reply.status, 406, "{}", reply.text);
    assert_not_acceptable(&reply);
    // A format that has a status mapping, but no code for this state: 406 with the reason.
    let declared = app
        .post(
            "/v1/messages/ects-json",
            serde_json::to_vec(&{
                let mut d = crate::helpers::fixture_json("ects-json/declaration-gt-sv.json");
                d["declaration_id"] = "GT-2026-T-000124".into();
                // Seals of its own: one device serves one live trip at a time.
                d["equipment"] = serde_json::json!([{"id": "MSKU9000124", "seals": [
                    {"id": "ES00990124", "kind": "electronic", "device_id": "869000000000124"}]}]);
                d
            })
            .unwrap(),
        )
        .await;
    assert_eq!(declared.status, 202, "{}", declared.text);
    let declared = declared.json()["trips"][0].as_str().unwrap().to_owned();
    let reply = app
        .get(&format!("/v1/trips/{declared}?format=icegate-csn"))
        .await;
    assert_eq!(reply.status, 406, "{}", reply.text);
    assert_not_acceptable(&reply);
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap()
            .contains("declared")
    );
    // ...while WCO says "registered", validly.
    let reply = app
        .get(&format!("/v1/trips/{declared}?format=wco-dm"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.text.contains("REG"), "{}", reply.text);
    xmllint("notification/RES_envelope.xsd", reply.text.as_bytes()).unwrap();
}

fn assert_not_acceptable(reply: &crate::helpers::Reply) {
    assert_eq!(reply.content_type(), "application/problem+json");
    let problem = reply.json();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("not-acceptable"),
        "{problem}"
    );
    assert_ne!(problem["title"], "The document is not valid");
    let formats: Vec<&str> = problem["formats"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for (format, _) in STATUS_FORMATS {
        assert!(formats.contains(&format), "{problem}");
    }
    assert!(formats.contains(&"ects-json"), "{problem}");
    assert!(!formats.contains(&"icegate-flat"), "{problem}");
}

mod over_http {
    #[tokio::test]
    async fn sqlite() {
        super::a_trip_status_reads_in_every_format_as_its_partners_were_told(
            super::Backend::Sqlite,
        )
        .await;
    }

    #[tokio::test]
    async fn postgres() {
        super::a_trip_status_reads_in_every_format_as_its_partners_were_told(
            super::Backend::Postgres,
        )
        .await;
    }
}
