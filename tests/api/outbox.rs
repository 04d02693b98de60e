//! The outbox's guarantees under stress: state milestones are never coalesced away.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Backend, product_mappings_dir, spawn_app_with, test_settings};
use crate::outbox_load::{partner, queue_in, start_endpoint, until};

/// The messages `GET /v1/outbox` lists with this query.
async fn listed(app: &crate::helpers::TestApp, query: &str) -> Vec<Value> {
    app.get(&format!("/v1/outbox?{query}")).await.json()["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Statuses pile up in a stream (nobody delivers them) with an `arrived`, a `released` and
/// a `cancelled` among them: the statuses in between collapse, each milestone stays and
/// reaches the partner, in order, once the partner is served.
async fn state_milestones_are_never_coalesced(backend: Backend) {
    // No partner configured yet: nothing is tried while the statuses pile up.
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |_| {}).await else {
        return;
    };
    let trip = "0193f7c2-0000-7000-8000-0000000000bb";
    let state = |n: usize| match n {
        2 => "arrived",
        15 => "released",
        27 => "cancelled",
        _ => "in_transit",
    };
    let ids: Vec<(String, &str)> = (0..30).map(|n| (format!("status-{n}"), state(n))).collect();
    for one in &ids {
        queue_in(
            &app.store,
            "late",
            trip,
            "status",
            std::slice::from_ref(one),
        )
        .await;
    }
    let rows = listed(&app, "partner=late&limit=1000").await;
    let status_of = |id: &str| {
        rows.iter()
            .find(|r| r["notification_id"] == id)
            .map(|r| r["status"].as_str().unwrap_or_default().to_owned())
    };
    for milestone in ["status-2", "status-15", "status-27"] {
        assert_eq!(
            status_of(milestone).as_deref(),
            Some("pending"),
            "{milestone} was coalesced away"
        );
    }
    let superseded: Vec<&Value> = rows
        .iter()
        .filter(|r| r["status"] == "superseded")
        .collect();
    assert!(
        superseded.len() >= 15,
        "only {} superseded",
        superseded.len()
    );
    let waiting: Vec<String> = rows
        .iter()
        .filter(|r| r["status"] == "pending")
        .map(|r| r["notification_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(waiting.last().map(String::as_str), Some("status-29"));

    // The partner comes: it gets what waits, milestones included, in order.
    app.stopper.stop().await;
    let (url, ep) = start_endpoint(Duration::ZERO);
    let mut settings = test_settings(product_mappings_dir());
    settings.partners = vec![partner("late", &url)];
    settings.outbox.poll_ms = 25;
    let second = app.another(settings).await;
    until("every waiting status", crate::helpers::wait_limit(), || {
        ep.got.lock().unwrap().len() >= waiting.len()
    })
    .await;
    assert_eq!(*ep.got.lock().unwrap(), waiting);
    second.stopper.stop().await;
}

mod milestones {
    #[tokio::test]
    async fn sqlite() {
        super::state_milestones_are_never_coalesced(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::state_milestones_are_never_coalesced(super::Backend::Postgres).await;
    }
}
