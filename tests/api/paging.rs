//! Lists come a page at a time: `limit`, and `after` with the `next` the page before gave.

use serde_json::Value;

use crate::helpers::{Backend, product_mappings_dir, spawn_app_with};
use crate::tracking::{Seq, rolling};

/// Follows `next` from `first` to the end; the items of every page, in order.
async fn all_pages(app: &crate::helpers::TestApp, first: &str, field: &str) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut path = first.to_owned();
    loop {
        let reply = app.get(&path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        let body = reply.json();
        pages.push(body[field].as_array().cloned().unwrap());
        match body["next"].as_str() {
            Some(next) => {
                let sep = if first.contains('?') { '&' } else { '?' };
                path = format!("{first}{sep}after={next}");
            }
            None => break,
        }
        assert!(pages.len() < 1_000, "no end to the pages");
    }
    pages
}

async fn the_audit_trail_and_the_outbox_page(backend: Backend) {
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = vec![
            toml::from_str(
                "id = \"away\"\nauthority = \"GT\"\nformat = \"ects-json\"\n\
                 subscribe = [\"status\"]\nhttp_push = \"http://127.0.0.1:9/ects\"\n",
            )
            .unwrap(),
        ];
        s.outbox.poll_ms = 60_000;
        s.outbox.base_backoff_ms = 600_000;
        s.outbox.max_backoff_ms = 600_000;
    })
    .await
    else {
        return;
    };
    let trip = rolling(&app, &mut Seq(0)).await;
    let whole = app
        .get(&format!("/v1/trips/{trip}/audit?limit=10000"))
        .await
        .json();
    let total = whole["entries"].as_array().unwrap().len();
    assert!(total > 4, "{total} entries");
    assert!(whole["next"].is_null());
    let pages = all_pages(&app, &format!("/v1/trips/{trip}/audit?limit=3"), "entries").await;
    assert_eq!(pages.len(), total.div_ceil(3));
    let seqs: Vec<u64> = pages
        .iter()
        .flatten()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    let page = app
        .get(&format!("/v1/trips/{trip}/audit?limit=3"))
        .await
        .json();
    assert_eq!(
        page["verified"], true,
        "the whole chain is verified on each page"
    );
    // A cursor not ours, and a limit out of range.
    assert_eq!(
        app.get(&format!("/v1/trips/{trip}/audit?after=zz"))
            .await
            .status,
        400
    );
    assert_eq!(
        app.get(&format!("/v1/trips/{trip}/audit?limit=10001"))
            .await
            .status,
        400
    );

    // Seal events, one a page: the same as all at once.
    let whole = app.get(&format!("/v1/trips/{trip}/events")).await.json()["events"].clone();
    let pages = all_pages(&app, &format!("/v1/trips/{trip}/events?limit=1"), "events").await;
    let paged: Vec<Value> = pages.into_iter().flatten().collect();
    assert!(paged.len() >= 4);
    assert_eq!(Value::Array(paged), whole);
    assert_eq!(
        app.get(&format!("/v1/trips/{trip}/events?after=00"))
            .await
            .status,
        400
    );

    // Alerts: a reporting gap, then overdue; one a page, newest first.
    app.tracking.tick_all(crate::tracking::t(26)).await.unwrap();
    app.tracking
        .tick_all(crate::tracking::t(60 * 49))
        .await
        .unwrap();
    let whole = app.get(&format!("/v1/alerts?trip={trip}")).await.json()["alerts"].clone();
    assert!(whole.as_array().unwrap().len() >= 2, "{whole}");
    let pages = all_pages(&app, &format!("/v1/alerts?trip={trip}&limit=1"), "alerts").await;
    assert_eq!(pages.len(), whole.as_array().unwrap().len());
    assert_eq!(Value::Array(pages.into_iter().flatten().collect()), whole);

    // Trips, one a page, most recently updated first.
    let reply = app
        .post_message(crate::helpers::fixture("ects-json/declaration-ke-ug.json"))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let whole = app.get("/v1/trips").await.json()["trips"].clone();
    assert_eq!(whole.as_array().unwrap().len(), 2);
    let pages = all_pages(&app, "/v1/trips?limit=1", "trips").await;
    assert_eq!(pages.len(), 2);
    assert_eq!(Value::Array(pages.into_iter().flatten().collect()), whole);

    // The outbox: two status notifications (armed, in transit) for the partner.
    let pages = all_pages(&app, "/v1/outbox?limit=1", "messages").await;
    let rows: Vec<Value> = pages.into_iter().flatten().collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0]["seq"].as_i64() < rows[1]["seq"].as_i64());
    app.stopper.stop().await;
}

mod audit_and_outbox {
    #[tokio::test]
    async fn sqlite() {
        super::the_audit_trail_and_the_outbox_page(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::the_audit_trail_and_the_outbox_page(super::Backend::Postgres).await;
    }
}
