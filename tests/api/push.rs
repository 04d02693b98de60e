//! HTTP push through the outbox: a partner endpoint that fails for a while gets each
//! notification once it recovers, in order; one it refuses is parked, holds its trip's
//! later messages back, and goes out when an operator retries it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::Value;

use crate::helpers::{Backend, TestApp, product_mappings_dir, spawn_app_with};
use crate::tracking::{DESTINATION_LON, SEAL_1, Seq, post, release, road_lon, rolling, t};

/// What the partner's endpoint does with the next request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// 503 for this many more requests, then 200.
    FailThen(u32),
    /// 400: the partner refuses the document.
    Refuse,
}

#[derive(Debug, Clone)]
struct Hit {
    status: u16,
    idempotency_key: String,
    kind: String,
    body: Value,
}

#[derive(Clone)]
struct Endpoint {
    mode: Arc<Mutex<Mode>>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

async fn receive(req: HttpRequest, body: web::Bytes, ep: web::Data<Endpoint>) -> HttpResponse {
    let mut mode = ep.mode.lock().unwrap();
    let status = match *mode {
        Mode::FailThen(0) => 200,
        Mode::FailThen(n) => {
            *mode = Mode::FailThen(n - 1);
            503
        }
        Mode::Refuse => 400,
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    ep.hits.lock().unwrap().push(Hit {
        status,
        idempotency_key: header("idempotency-key"),
        kind: header("x-ects-kind"),
        body: serde_json::from_slice(&body).unwrap_or_default(),
    });
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .body(if status == 400 { "unknown office" } else { "" })
}

fn start_endpoint(mode: Mode) -> (String, Endpoint) {
    let ep = Endpoint {
        mode: Arc::new(Mutex::new(mode)),
        hits: Arc::default(),
    };
    let data = web::Data::new(ep.clone());
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
    (url, ep)
}

fn delivered(ep: &Endpoint) -> Vec<Hit> {
    ep.hits
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.status == 200)
        .cloned()
        .collect()
}

async fn until(what: &str, done: impl FnMut() -> bool) {
    crate::helpers::wait_until(what, done).await
}

async fn outbox(app: &TestApp, query: &str) -> Vec<Value> {
    let reply = app.get(&format!("/v1/outbox?{query}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["messages"].as_array().cloned().unwrap()
}

async fn a_partner_endpoint_gets_each_notification_once_in_order(backend: Backend) {
    let (url, ep) = start_endpoint(Mode::FailThen(2));
    let partner: ects_gateway::partners::PartnerConfig = toml::from_str(&format!(
        "id = \"gt-push\"\nauthority = \"GT\"\nformat = \"ects-json\"\n\
         subscribe = [\"status\", \"release\"]\nhttp_push = \"{url}\"\n"
    ))
    .unwrap();
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = vec![partner];
        s.outbox.poll_ms = 25;
        s.outbox.base_backoff_ms = 50;
        s.outbox.max_backoff_ms = 200;
        s.outbox.max_attempts = 5;
    })
    .await
    else {
        return;
    };
    // No broker configured: the readiness says so and does not wait for one.
    assert_eq!(app.get("/readyz").await.json()["broker"], "disabled");

    // Armed, then in transit: the endpoint fails twice, then takes both, in order.
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    until("two deliveries", || delivered(&ep).len() >= 2).await;
    let rows = all_sent(&app, 2).await;
    let hits = ep.hits.lock().unwrap().clone();
    let states: Vec<&str> = hits
        .iter()
        .map(|h| h.body["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        hits.iter().map(|h| h.status).collect::<Vec<_>>(),
        [503, 503, 200, 200],
        "{hits:?}"
    );
    assert_eq!(states, ["armed", "armed", "armed", "in_transit"]);
    assert!(rows.iter().all(|r| r["channel"] == "http"));
    assert_eq!(rows[0]["attempts"], 3);
    assert_eq!(rows[1]["attempts"], 1);
    assert_eq!(
        hits[2].idempotency_key,
        rows[0]["message_id"].as_str().unwrap()
    );
    assert_eq!(
        hits[0].idempotency_key, hits[2].idempotency_key,
        "the same key each time"
    );

    // The partner now refuses documents: the arrival is parked at once (a 400 won't change
    // by sending it again), and the release after it waits behind it.
    *ep.mode.lock().unwrap() = Mode::Refuse;
    post(
        &app,
        vec![
            seq.event(SEAL_1, 100, "position", DESTINATION_LON, 0.0),
            seq.event(SEAL_1, 101, "position", DESTINATION_LON, 0.0),
        ],
    )
    .await;
    let parked = crate::helpers::eventually("a parked message", || async {
        let failed = outbox(&app, "status=failed").await;
        failed
            .first()
            .cloned()
            .ok_or_else(|| "nothing parked".to_owned())
    })
    .await;
    assert_eq!(parked["attempts"], 1);
    let error = parked["last_error"].as_str().unwrap();
    assert!(
        error.contains("400") && error.contains("unknown office"),
        "{error}"
    );
    let reply = app
        .command(
            &format!("/v1/trips/{trip}/release"),
            release(&trip, "GT", "SVSAL").to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending = outbox(&app, "status=pending").await;
    assert_eq!(pending.len(), 1, "the release waits: {pending:?}");
    assert_eq!(pending[0]["kind"], "release");
    assert_eq!(
        pending[0]["attempts"], 0,
        "not tried while the stream is parked"
    );

    // A retry of something not parked, or of nothing, is refused.
    let sent_seq = rows[0]["seq"].as_i64().unwrap();
    assert_eq!(
        app.post(&format!("/v1/outbox/{sent_seq}/retry"), "")
            .await
            .status,
        409
    );
    assert_eq!(app.post("/v1/outbox/999999/retry", "").await.status, 404);

    // The partner is fixed; the operator retries: the arrival, then the release.
    *ep.mode.lock().unwrap() = Mode::FailThen(0);
    let seq_no = parked["seq"].as_i64().unwrap();
    let reply = app.post(&format!("/v1/outbox/{seq_no}/retry"), "").await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    until("four deliveries", || delivered(&ep).len() >= 4).await;
    let got = delivered(&ep);
    assert_eq!(got[2].body["state"], "arrived");
    assert_eq!(got[3].kind, "release");
    all_sent(&app, 4).await;
}

/// Waits until the partner's `n` messages are all recorded as sent (the record follows the
/// endpoint's answer).
async fn all_sent(app: &TestApp, n: usize) -> Vec<Value> {
    crate::helpers::eventually(&format!("{n} messages sent"), || async {
        let rows = outbox(app, "partner=gt-push").await;
        if rows.len() == n && rows.iter().all(|r| r["status"] == "sent") {
            Ok(rows)
        } else {
            Err(not_sent(&rows, Some(n)))
        }
    })
    .await
}

/// What a failed "all sent" wait says: how many rows there are, and each row that is not
/// sent, one a line, instead of every row on one line.
pub(crate) fn not_sent(rows: &[Value], expected: Option<usize>) -> String {
    let waiting: Vec<&Value> = rows.iter().filter(|r| r["status"] != "sent").collect();
    let mut text = format!(
        "not all sent: {} rows{}, {} not sent",
        rows.len(),
        expected
            .map(|n| format!(" (expected {n})"))
            .unwrap_or_default(),
        waiting.len()
    );
    for r in waiting.iter().take(20) {
        text.push_str(&format!(
            "\n  seq {} {} {} {} trip {} {}: {} after {} attempts{}",
            r["seq"],
            r["partner_id"].as_str().unwrap_or_default(),
            r["channel"].as_str().unwrap_or_default(),
            r["kind"].as_str().unwrap_or_default(),
            r["trip_id"].as_str().unwrap_or_default(),
            r["notification_id"].as_str().unwrap_or_default(),
            r["status"].as_str().unwrap_or_default(),
            r["attempts"],
            r["last_error"]
                .as_str()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        ));
    }
    if waiting.len() > 20 {
        text.push_str(&format!("\n  ... and {} more", waiting.len() - 20));
    }
    text
}

mod over_http {
    #[tokio::test]
    async fn sqlite() {
        super::a_partner_endpoint_gets_each_notification_once_in_order(super::Backend::Sqlite)
            .await;
    }

    #[tokio::test]
    async fn postgres() {
        super::a_partner_endpoint_gets_each_notification_once_in_order(super::Backend::Postgres)
            .await;
    }
}

/// A partner told of an alert is told when a replay withdraws it (late buffered data shows
/// the condition never held); a partner never told of it is not. With `recurrence`, the
/// partner was told only of a recurrence of the alert (`alert/{id}/raised/1`).
async fn a_withdrawn_alert_is_notified_to_whoever_was_told(backend: Backend, recurrence: bool) {
    let (url, ep) = start_endpoint(Mode::FailThen(0));
    let partner: ects_gateway::partners::PartnerConfig = toml::from_str(&format!(
        "id = \"gt-push\"\nauthority = \"GT\"\nformat = \"ects-json\"\n\
         subscribe = [\"alert\"]\nhttp_push = \"{url}\"\n"
    ))
    .unwrap();
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = vec![partner];
        s.outbox.poll_ms = 25;
    })
    .await
    else {
        return;
    };
    let mut seq = Seq(0);
    let trip = rolling(&app, &mut seq).await;
    post(
        &app,
        vec![seq.event(SEAL_1, 10, "position", road_lon(10), 0.0)],
    )
    .await;
    assert_eq!(app.tracking.tick_all(t(26)).await.unwrap(), 1);
    until("the gap alert", || {
        delivered(&ep)
            .iter()
            .any(|h| h.body["alert"]["kind"] == "reporting_gap")
    })
    .await;
    if recurrence {
        // What the partner was told becomes the alert's first recurrence (the id the engine
        // gives a reopened alert's notification), as if it had been told of that only.
        let alert_id = delivered(&ep)[0].body["alert"]["alert_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let trip_uuid: uuid::Uuid = trip.as_str().parse().unwrap();
        let id = |name: String| uuid::Uuid::new_v5(&trip_uuid, name.as_bytes()).to_string();
        let changed = sqlx::query(
            "update outbox set notification_id = $1 where notification_id = $2 and trip_id = $3",
        )
        .bind(id(format!("alert/{alert_id}/raised/1")))
        .bind(id(format!("alert/{alert_id}/raised")))
        .bind(trip.as_str())
        .execute(app.store.pool())
        .await
        .unwrap();
        assert_eq!(changed.rows_affected(), 1);
        if backend == Backend::Sqlite {
            // Found through an index, not by scanning the outbox.
            let plan: Vec<String> = sqlx::query(
                "explain query plan select distinct partner_id, channel, format from outbox
                 where trip_id = 'x' and alert_id = 'y' and superseded_by is null",
            )
            .fetch_all(app.store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| sqlx::Row::get::<String, _>(r, 3))
            .collect();
            assert!(
                plan.iter()
                    .any(|p| p.contains("USING INDEX outbox_by_trip_alert")),
                "{plan:?}"
            );
        }
    }
    // The buffered fix from minute 20: there was no gap.
    post(
        &app,
        vec![seq.event(SEAL_1, 20, "position", road_lon(20), 0.0)],
    )
    .await;
    until("the withdrawal", || delivered(&ep).len() >= 2).await;
    let got = delivered(&ep);
    let raised = &got[0].body["alert"];
    let withdrawn = &got[1];
    assert_eq!(withdrawn.kind, "alert");
    assert_eq!(withdrawn.body["trip_id"], trip.as_str());
    assert_eq!(withdrawn.body["alert"]["alert_id"], raised["alert_id"]);
    assert!(
        withdrawn.body["alert"]["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("withdrawn:")),
        "{}",
        withdrawn.body
    );
    assert!(withdrawn.body["alert"]["cleared_at"].is_string());
    assert_ne!(withdrawn.idempotency_key, got[0].idempotency_key);
}

mod alert_withdrawn {
    #[tokio::test]
    async fn sqlite() {
        super::a_withdrawn_alert_is_notified_to_whoever_was_told(super::Backend::Sqlite, false)
            .await;
    }

    #[tokio::test]
    async fn postgres() {
        super::a_withdrawn_alert_is_notified_to_whoever_was_told(super::Backend::Postgres, false)
            .await;
    }
}

mod recurring_alert_withdrawn {
    #[tokio::test]
    async fn sqlite() {
        super::a_withdrawn_alert_is_notified_to_whoever_was_told(super::Backend::Sqlite, true)
            .await;
    }

    #[tokio::test]
    async fn postgres() {
        super::a_withdrawn_alert_is_notified_to_whoever_was_told(super::Backend::Postgres, true)
            .await;
    }
}
