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

/// A list page refuses a bad `limit` and a cursor it did not give, naming the parameter.
async fn refuses_bad_paging(app: &crate::helpers::TestApp, path: &str, max: i64) {
    let sep = if path.contains('?') { '&' } else { '?' };
    for (query, name) in [
        ("after=zz".to_owned(), "after"),
        // Hex, and JSON, but not a cursor of any list here (five keys).
        (
            format!("after={}", hex::encode(br#"["a","b","c","d","e"]"#)),
            "after",
        ),
        ("limit=0".to_owned(), "limit"),
        (format!("limit={}", max + 1), "limit"),
    ] {
        let reply = app.get(&format!("{path}{sep}{query}")).await;
        assert_eq!(reply.status, 400, "{path} {query}: {}", reply.text);
        let detail = reply.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            detail.starts_with(&format!("parameter {name}:")),
            "{path} {query}: {detail}"
        );
    }
    assert_eq!(
        app.get(&format!("{path}{sep}limit={max}")).await.status,
        200,
        "{path}: the largest limit is taken"
    );
}

/// The ids of a list's items, by the field that holds each one's id.
fn ids(items: &[Value], id: impl Fn(&Value) -> String) -> Vec<String> {
    items.iter().map(id).collect()
}

async fn every_remaining_list_pages(backend: Backend) {
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |_| {}).await else {
        return;
    };
    // Seven corridors and seven zones, put in no particular order.
    for i in [3, 6, 0, 5, 1, 4, 2] {
        let corridor = serde_json::json!({
            "type": "Feature",
            "properties": {"width_m": 1000 + i, "name": format!("c{i}")},
            "geometry": {"type": "LineString", "coordinates": [[-90.7, 13.9], [-90.6, 14.0 + f64::from(i) / 100.0]]}
        });
        let reply = app.put(&format!("/v1/corridors/C-{i}"), &corridor).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        let zone = serde_json::json!({
            "type": "Feature",
            "properties": {"kind": "rest_area", "radius_m": 100 + i},
            "geometry": {"type": "Point", "coordinates": [-90.6, 14.0 + f64::from(i) / 100.0]}
        });
        let reply = app.put(&format!("/v1/zones/rest-{i}"), &zone).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let width = |c: &Value| c["properties"]["width_m"].to_string();
    let radius = |z: &Value| z["properties"]["radius_m"].to_string();
    for (path, field, id, max) in [
        (
            "/v1/corridors",
            "corridors",
            &width as &dyn Fn(&Value) -> String,
            1_000,
        ),
        ("/v1/zones", "zones", &radius, 1_000),
    ] {
        let whole = app.get(&format!("{path}?limit={max}")).await.json()[field]
            .as_array()
            .cloned()
            .unwrap();
        assert!(whole.len() >= 7, "{path}: {}", whole.len());
        assert_eq!(
            app.get(path).await.json()[field].as_array().unwrap().len(),
            whole.len()
        );
        for size in [1, 2, 3, 7] {
            let pages = all_pages(&app, &format!("{path}?limit={size}"), field).await;
            assert_eq!(pages.len(), whole.len().div_ceil(size), "{path} by {size}");
            assert!(pages.iter().all(|p| p.len() <= size));
            let seen: Vec<Value> = pages.into_iter().flatten().collect();
            // Every item once, in the order of the whole list.
            assert_eq!(ids(&seen, id), ids(&whole, id), "{path} by {size}");
        }
        refuses_bad_paging(&app, path, max).await;
    }

    // Offices: the shipped registry of one country.
    let code = |o: &Value| o["code"].as_str().unwrap().to_owned();
    let whole = app.get("/v1/offices?country=GT&limit=1000").await.json()["offices"]
        .as_array()
        .cloned()
        .unwrap();
    assert!(whole.len() > 3, "{}", whole.len());
    let pages = all_pages(&app, "/v1/offices?country=GT&limit=2", "offices").await;
    assert_eq!(pages.len(), whole.len().div_ceil(2));
    let seen = ids(&pages.into_iter().flatten().collect::<Vec<_>>(), code);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "in code order, each once");
    assert_eq!(seen, ids(&whole, code));
    refuses_bad_paging(&app, "/v1/offices?country=GT", 1_000).await;

    // The lists paged before: the same refusals.
    refuses_bad_paging(&app, "/v1/trips", 10_000).await;
    refuses_bad_paging(&app, "/v1/alerts", 10_000).await;
    refuses_bad_paging(&app, "/v1/outbox", 1_000).await;
    app.stopper.stop().await;
}

mod every_remaining_list {
    #[tokio::test]
    async fn sqlite() {
        super::every_remaining_list_pages(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::every_remaining_list_pages(super::Backend::Postgres).await;
    }
}
