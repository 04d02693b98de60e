//! The outbox under load: a stream with a deep backlog is worked in order without stopping
//! the gateway's other writes, a slow partner does not hold back a fast one, and status
//! notifications that pile up in one stream collapse into the latest.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use chrono::Utc;
use ects_gateway::store::Store;
use ects_gateway::store::outbox::{self, NewOutbox};
use serde_json::{Value, json};

use crate::helpers::{Backend, product_mappings_dir, spawn_app_with};

/// A partner endpoint that answers 200 after `delay`, recording the notification ids in
/// the order they came.
#[derive(Clone, Default)]
pub(crate) struct Endpoint {
    delay: Duration,
    pub(crate) got: Arc<Mutex<Vec<String>>>,
}

async fn receive(req: HttpRequest, ep: web::Data<Endpoint>) -> HttpResponse {
    tokio::time::sleep(ep.delay).await;
    let id = req
        .headers()
        .get("x-ects-notification-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ep.got.lock().unwrap().push(id);
    HttpResponse::Ok().finish()
}

pub(crate) fn start_endpoint(delay: Duration) -> (String, Endpoint) {
    let ep = Endpoint {
        delay,
        got: Arc::default(),
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

pub(crate) fn partner(id: &str, url: &str) -> ects_gateway::partners::PartnerConfig {
    toml::from_str(&format!(
        "id = \"{id}\"\nauthority = \"GT\"\nformat = \"ects-json\"\n\
         subscribe = [\"status\", \"alert\"]\nhttp_push = \"{url}\"\n"
    ))
    .unwrap()
}

const TRIP: &str = "0193f7c2-0000-7000-8000-000000000001";

/// A notification the dispatcher can write in `ects-json`, the trip in `state`.
pub(crate) fn note(id: &str, trip: &str, kind: &str, state: &str) -> String {
    json!({"notification_id": id, "kind": kind, "trip_id": trip,
           "declaration_id": "GT-2026-T-000123", "issuing_authority": "GT",
           "state": state, "time": "2026-03-14T09:00:00Z"})
    .to_string()
}

/// Queues `ids` for `partner` over HTTP on `trip`, in one transaction, as the gateway does.
pub(crate) async fn queue(
    store: &Store,
    partner: &str,
    trip: &str,
    kind: &'static str,
    ids: &[String],
) {
    let states: Vec<(String, &str)> = ids.iter().map(|id| (id.clone(), "in_transit")).collect();
    queue_in(store, partner, trip, kind, &states).await;
}

/// Queues notifications of `(id, trip state)` as [`queue`] does.
pub(crate) async fn queue_in(
    store: &Store,
    partner: &str,
    trip: &str,
    kind: &'static str,
    ids: &[(String, &str)],
) {
    let mut tx = store.begin_write().await.unwrap();
    for (id, state) in ids {
        outbox::enqueue(
            &mut tx,
            &NewOutbox {
                message_id: format!("{partner}/{id}"),
                partner_id: partner,
                channel: "http",
                trip_id: trip.to_owned(),
                declaration_id: "GT-2026-T-000123",
                notification_id: id,
                kind,
                format: "ects-json",
                canonical: &note(id, trip, kind, state),
            },
            Utc::now(),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

pub(crate) async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The numbers in `bulk-N` ids, as received.
fn numbers(ids: &[String]) -> Vec<u64> {
    ids.iter()
        .filter_map(|id| id.strip_prefix("bulk-")?.parse().ok())
        .collect()
}

const BACKLOG: usize = 20_000;

async fn a_deep_backlog_does_not_stop_other_writes(backend: Backend) {
    let (url, ep) = start_endpoint(Duration::ZERO);
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = vec![partner("gt-deep", &url)];
        s.outbox.poll_ms = 25;
    })
    .await
    else {
        return;
    };
    let ids: Vec<String> = (0..BACKLOG).map(|n| format!("bulk-{n}")).collect();
    queue(&app.store, "gt-deep", TRIP, "alert", &ids).await;
    until(
        "the dispatcher to start on the backlog",
        Duration::from_secs(60),
        || ep.got.lock().unwrap().len() >= 100,
    )
    .await;

    // An unrelated write while the dispatcher works the backlog: answered at once (before
    // the fix, each claim searched the whole stream while holding the write gate).
    let started = Instant::now();
    let trip = app.declare_gt_sv().await;
    let took = started.elapsed();
    let sent_then = ep.got.lock().unwrap().len();
    assert!(
        sent_then < BACKLOG,
        "the backlog was gone before the write: nothing shown"
    );
    assert!(
        took < Duration::from_secs(10),
        "a declaration took {took:?} while the outbox worked a backlog of {BACKLOG}"
    );
    assert_eq!(app.trip(&trip).await["state"], "declared");

    // The dispatcher goes on, in order.
    until("more of the backlog", Duration::from_secs(60), || {
        ep.got.lock().unwrap().len() >= sent_then + 500
    })
    .await;
    let got = numbers(&ep.got.lock().unwrap());
    let out_of_order = got.windows(2).find(|w| w[0] >= w[1]);
    assert!(
        out_of_order.is_none(),
        "the stream overtook itself at {out_of_order:?}"
    );
    assert_eq!(got.first(), Some(&0));
    app.stopper.stop().await;
}

mod deep_backlog {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::a_deep_backlog_does_not_stop_other_writes(super::Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_deep_backlog_does_not_stop_other_writes(super::Backend::Postgres).await;
    }
}

async fn a_slow_partner_does_not_hold_back_a_fast_one(backend: Backend) {
    let (slow_url, slow) = start_endpoint(Duration::from_secs(2));
    let (fast_url, fast) = start_endpoint(Duration::ZERO);
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = vec![partner("slow", &slow_url), partner("fast", &fast_url)];
        s.outbox.poll_ms = 25;
        s.outbox.batch = 4;
    })
    .await
    else {
        return;
    };
    // The slow partner's messages come first, in many streams; the fast one's after them.
    for n in 0..12 {
        let trip = format!("0193f7c2-0000-7000-8000-{n:012}");
        queue(&app.store, "slow", &trip, "alert", &[format!("slow-{n}")]).await;
    }
    let fast_ids: Vec<String> = (0..6).map(|n| format!("fast-{n}")).collect();
    queue(&app.store, "fast", TRIP, "alert", &fast_ids).await;
    let started = Instant::now();
    until(
        "the fast partner's six messages",
        Duration::from_secs(20),
        || fast.got.lock().unwrap().len() == 6,
    )
    .await;
    let took = started.elapsed();
    let slow_done = slow.got.lock().unwrap().len();
    // Before the fix the fast partner waited for the slow one's rounds (2 s each, 4
    // messages a round): about 6 s.
    assert!(
        took < Duration::from_millis(1_500),
        "the fast partner took {took:?}; the slow one had {slow_done} of 12 by then"
    );
    assert!(slow_done < 12, "the slow partner was not slow");
    assert_eq!(*fast.got.lock().unwrap(), fast_ids, "in order");
    app.stopper.stop().await;
}

mod slow_partner {
    #[tokio::test]
    async fn sqlite() {
        super::a_slow_partner_does_not_hold_back_a_fast_one(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::a_slow_partner_does_not_hold_back_a_fast_one(super::Backend::Postgres).await;
    }
}

async fn status_notifications_piling_up_collapse_into_the_latest(backend: Backend) {
    // A partner whose endpoint is not there: nothing is sent while the statuses pile up.
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = vec![partner("away", "http://127.0.0.1:9/ects")];
        s.outbox.poll_ms = 60_000;
        s.outbox.base_backoff_ms = 600_000;
        s.outbox.max_backoff_ms = 600_000;
    })
    .await
    else {
        return;
    };
    let statuses: Vec<String> = (0..30).map(|n| format!("status-{n}")).collect();
    let alerts: Vec<String> = (0..30).map(|n| format!("alert-{n}")).collect();
    let trip = "0193f7c2-0000-7000-8000-0000000000aa";
    for (s, a) in statuses.iter().zip(&alerts) {
        queue(&app.store, "away", trip, "status", std::slice::from_ref(s)).await;
        queue(&app.store, "away", trip, "alert", std::slice::from_ref(a)).await;
    }
    let rows: Vec<Value> = app.get("/v1/outbox?partner=away&limit=1000").await.json()["messages"]
        .as_array()
        .cloned()
        .unwrap();
    let waiting_status: Vec<&Value> = rows
        .iter()
        .filter(|r| r["kind"] == "status" && r["status"] == "pending")
        .collect();
    let waiting_alerts = rows
        .iter()
        .filter(|r| r["kind"] == "alert" && r["status"] == "pending")
        .count();
    // The first status may be under way (tried once); the untried ones never exceed the cap.
    assert!(
        waiting_status.len() <= outbox::STATUS_WAITING_CAP as usize + 1,
        "{} statuses wait",
        waiting_status.len()
    );
    assert_eq!(waiting_alerts, 30, "alerts are never superseded");
    let last = rows
        .iter()
        .find(|r| r["notification_id"] == "status-29")
        .expect("the latest status");
    assert_eq!(last["status"], "pending", "{last}");
    let superseded = rows.iter().filter(|r| r["status"] == "superseded").count();
    let counted: i64 = rows
        .iter()
        .filter_map(|r| r["coalesced"].as_i64())
        .max()
        .unwrap_or(0);
    assert!(superseded >= 20, "only {superseded} superseded");
    assert!(counted >= 1, "the latest counts what it stands for");
    app.stopper.stop().await;
}

mod status_coalescing {
    #[tokio::test]
    async fn sqlite() {
        super::status_notifications_piling_up_collapse_into_the_latest(super::Backend::Sqlite)
            .await;
    }

    #[tokio::test]
    async fn postgres() {
        super::status_notifications_piling_up_collapse_into_the_latest(super::Backend::Postgres)
            .await;
    }
}

/// Prints how long a claim takes at several backlog depths (run with `--ignored
/// --nocapture`); no timing is asserted.
#[tokio::test]
#[ignore]
async fn claim_time_by_backlog_depth() {
    for depth in [1_000usize, 10_000, 20_000] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/ects.db", dir.path().display());
        let store = Store::connect(&secrecy::SecretString::from(url), 4)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let ids: Vec<String> = (0..depth).map(|n| format!("bulk-{n}")).collect();
        queue(&store, "gt-deep", TRIP, "alert", &ids).await;
        let now = Utc::now();
        let lease = now + chrono::Duration::seconds(60);
        let started = Instant::now();
        let first = outbox::claim(&store, None, now, 200, lease, &["http"])
            .await
            .unwrap();
        let first_took = started.elapsed();
        // Now the head is leased: the next claim finds nothing due in this stream.
        let started = Instant::now();
        let second = outbox::claim(&store, None, now, 200, lease, &["http"])
            .await
            .unwrap();
        let second_took = started.elapsed();
        println!(
            "depth {depth}: claim of {} took {first_took:?}; claim behind a leased head ({} taken) took {second_took:?}",
            first.len(),
            second.len()
        );
    }
}

/// Prints how long `POST /v1/messages` detection takes on a 1 MB JSON document with the
/// shipped mappings, next to what it cost before (one full parse per JSON mapping); run
/// with `--ignored --nocapture`. No timing is asserted.
#[tokio::test]
#[ignore]
async fn detection_time_on_a_large_json_document() {
    let settings = crate::helpers::test_settings(product_mappings_dir());
    let formats = ects_gateway::startup::formats(&settings).unwrap();
    let items: Vec<Value> = (0..12_000)
        .map(|n| json!({"seq": n, "note": "x".repeat(60)}))
        .collect();
    let body = serde_json::to_vec(&json!({"declaration_id": "D", "items": items})).unwrap();
    let json_mappings = std::fs::read_dir(product_mappings_dir())
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter(|f| {
            std::fs::read_to_string(f.path())
                .is_ok_and(|t| t.contains("syntax = \"json\"") && t.contains("keys = "))
        })
        .count();
    let started = Instant::now();
    let found = formats.detect(&body).map(|f| f.id().to_owned());
    let now = started.elapsed();
    let started = Instant::now();
    for _ in 0..json_mappings {
        let _ = serde_json::from_slice::<Value>(&body);
    }
    let before = started.elapsed();
    println!(
        "{} bytes, {json_mappings} JSON mappings: detection {now:?} (found {found:?}); one full parse per JSON mapping, as before: {before:?}",
        body.len()
    );
}
