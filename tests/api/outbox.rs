//! The outbox's guarantees under stress: state milestones are never coalesced away, an
//! attempt counts from the moment its row is taken.

use std::time::Duration;

use chrono::Utc;
use ects_gateway::store::outbox::{self, Attempted};
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

    // `status=superseded` lists those, each naming the later message that replaced it
    // (which stands for it); `status=pending` none of them.
    let only_superseded = listed(&app, "partner=late&status=superseded&limit=1000").await;
    assert_eq!(only_superseded.len(), superseded.len());
    for r in &only_superseded {
        assert_eq!(r["status"], "superseded", "{r}");
        let by = r["superseded_by"].as_i64().expect("superseded_by");
        let replacing = rows
            .iter()
            .find(|m| m["seq"] == by)
            .unwrap_or_else(|| panic!("{r} names no message"));
        assert!(by > r["seq"].as_i64().unwrap(), "{r}");
        assert_eq!(replacing["kind"], "status");
        assert!(
            replacing["coalesced"].as_i64().unwrap_or(0) >= 1,
            "{replacing}"
        );
    }
    let pending = listed(&app, "partner=late&status=pending&limit=1000").await;
    assert!(
        pending.iter().all(|r| r["superseded_by"].is_null()),
        "{pending:?}"
    );
    assert_eq!(pending.len(), waiting.len());
    let refused = app.get("/v1/outbox?status=replaced").await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(refused.text.contains("status"), "{}", refused.text);

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

/// An attempt counts when its row is taken: an instance that dies after sending and before
/// writing the result leaves the row counted, and the instance that takes it again after
/// the lease counts another. A row given back untried gives its attempt back; writing a
/// result does not count again.
async fn an_attempt_counts_when_its_row_is_taken(backend: Backend) {
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |_| {}).await else {
        return;
    };
    let trip = "0193f7c2-0000-7000-8000-0000000000cc";
    let ids: Vec<(String, &str)> = (0..2)
        .map(|n| (format!("alert-{n}"), "in_transit"))
        .collect();
    queue_in(&app.store, "p", trip, "alert", &ids).await;
    let attempts = |rows: &[Value]| -> Vec<i64> {
        rows.iter()
            .map(|r| r["attempts"].as_i64().unwrap())
            .collect()
    };
    let now = Utc::now();
    let lease = now + chrono::Duration::seconds(60);
    let taken = outbox::claim(&app.store, None, now, 10, lease, &["http"])
        .await
        .unwrap();
    assert_eq!(taken.iter().map(|r| r.attempts).collect::<Vec<_>>(), [1, 1]);
    assert_eq!(attempts(&listed(&app, "partner=p").await), [1, 1]);

    // The instance dies here, its messages maybe sent. After the lease another takes them.
    let later = lease + chrono::Duration::seconds(1);
    let again = outbox::claim(
        &app.store,
        None,
        later,
        10,
        later + chrono::Duration::seconds(60),
        &["http"],
    )
    .await
    .unwrap();
    assert_eq!(again.iter().map(|r| r.attempts).collect::<Vec<_>>(), [2, 2]);

    // The second is given back untried; the first failed and is tried again later.
    outbox::release(&app.store, &again[1..]).await.unwrap();
    let failed = Attempted::Retry {
        error: "503".into(),
        at: later,
    };
    outbox::record_attempts(&app.store, &[(&again[0], None, &failed)], later)
        .await
        .unwrap();
    let rows = listed(&app, "partner=p").await;
    assert_eq!(attempts(&rows), [2, 1]);
    assert!(rows.iter().all(|r| r["status"] == "pending"), "{rows:?}");
    app.stopper.stop().await;
}

mod attempts_at_claim {
    #[tokio::test]
    async fn sqlite() {
        super::an_attempt_counts_when_its_row_is_taken(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::an_attempt_counts_when_its_row_is_taken(super::Backend::Postgres).await;
    }
}

/// PostgreSQL: a transaction holding one of the rows being recorded, and then wanting
/// another that the recording holds, deadlocks with it. PostgreSQL aborts the recording
/// (its deadlock check fires first: the other waits 30 s before checking); it is tried
/// again once the other is done, and every result is written.
#[tokio::test]
async fn recording_attempts_survives_a_deadlock() {
    let Some(app) = spawn_app_with(Backend::Postgres, product_mappings_dir(), |_| {}).await else {
        return;
    };
    for n in 0..2 {
        let trip = format!("0193f7c2-0000-7000-8000-0000000000d{n}");
        queue_in(
            &app.store,
            "p",
            &trip,
            "alert",
            &[(format!("alert-{n}"), "in_transit")],
        )
        .await;
    }
    let now = Utc::now();
    let rows = outbox::claim(
        &app.store,
        None,
        now,
        10,
        now + chrono::Duration::seconds(60),
        &["http"],
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    let (first, second) = (rows[0].seq.min(rows[1].seq), rows[0].seq.max(rows[1].seq));

    // Another transaction holds the later row.
    let mut other = app.store.pool().begin().await.unwrap();
    sqlx::query("set local deadlock_timeout = '30s'")
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query("select seq from outbox where seq = $1 for update")
        .bind(second)
        .execute(&mut *other)
        .await
        .unwrap();
    let recording = {
        let store = app.store.clone();
        let rows = rows.clone();
        tokio::spawn(async move {
            let sent: Vec<outbox::AttemptRecord<'_>> =
                rows.iter().map(|r| (r, None, &Attempted::Sent)).collect();
            outbox::record_attempts(&store, &sent, Utc::now()).await
        })
    };
    // The recording waits for the later row, holding the earlier one.
    crate::helpers::eventually("the recording to wait for a lock", || async {
        let waiting: i64 = sqlx::Row::get(
            &sqlx::query("select count(*) from pg_locks where not granted")
                .fetch_one(app.store.pool())
                .await
                .unwrap(),
            0,
        );
        if waiting > 0 {
            Ok(())
        } else {
            Err("no lock waited for".to_owned())
        }
    })
    .await;
    // Now the other wants the earlier row: a deadlock, which aborts the recording.
    sqlx::query("select seq from outbox where seq = $1 for update")
        .bind(first)
        .execute(&mut *other)
        .await
        .unwrap();
    other.commit().await.unwrap();
    recording
        .await
        .unwrap()
        .expect("the results are written after the deadlock");
    let listed = listed(&app, "partner=p").await;
    assert!(listed.iter().all(|r| r["status"] == "sent"), "{listed:?}");
    assert_eq!(app.count("outbox_streams").await, 0, "the heads moved on");
    app.stopper.stop().await;
}

/// Stream heads left wrong (a crash, a hand edit): one missing, one on a sent message, one
/// past a waiting message, one of a stream with nothing waiting. A gateway started on the
/// database mends them, and every waiting message reaches the partner, in order.
async fn wrong_stream_heads_are_mended_at_start(backend: Backend) {
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |_| {}).await else {
        return;
    };
    let trip = |n: u32| format!("0193f7c2-0000-7000-8000-0000000000e{n}");
    let ids = |n: u32| -> Vec<(String, &str)> {
        (0..3)
            .map(|k| (format!("e{n}-{k}"), "in_transit"))
            .collect()
    };
    for n in 1..=3 {
        queue_in(&app.store, "late", &trip(n), "alert", &ids(n)).await;
    }
    let seq_of = |rows: &[Value], id: &str| {
        rows.iter()
            .find(|r| r["notification_id"] == id)
            .and_then(|r| r["seq"].as_i64())
            .unwrap()
    };
    let rows = listed(&app, "partner=late").await;
    let pool = app.store.pool();
    let edit = |sql: &'static str, a: String, b: Option<i64>| async move {
        sqlx::query(sql)
            .bind(a)
            .bind(b)
            .execute(pool)
            .await
            .unwrap();
    };
    // Stream 1: its head is gone.
    edit(
        "delete from outbox_streams where trip_id = $1 and $2 is null",
        trip(1),
        None,
    )
    .await;
    // Stream 2: its first message was sent, and the head stayed on it.
    edit(
        "update outbox set status = 'sent' where notification_id = $1 and seq = $2",
        "e2-0".into(),
        Some(seq_of(&rows, "e2-0")),
    )
    .await;
    // Stream 3: the head is past its first two messages.
    edit(
        "update outbox_streams set head_seq = $2 where trip_id = $1",
        trip(3),
        Some(seq_of(&rows, "e3-2")),
    )
    .await;
    // A head of a stream without messages.
    edit(
        "insert into outbox_streams (partner_id, channel, trip_id, head_seq) values ('late', 'http', $1, $2)",
        trip(4),
        Some(999_999),
    )
    .await;
    app.stopper.stop().await;

    let (url, ep) = start_endpoint(Duration::ZERO);
    let mut settings = test_settings(product_mappings_dir());
    settings.partners = vec![partner("late", &url)];
    settings.outbox.poll_ms = 25;
    let second = app.another(settings).await;
    until(
        "every waiting message",
        crate::helpers::wait_limit(),
        || ep.got.lock().unwrap().len() >= 8,
    )
    .await;
    let got = ep.got.lock().unwrap().clone();
    let of = |prefix: &str| -> Vec<&str> {
        got.iter()
            .map(String::as_str)
            .filter(|id| id.starts_with(prefix))
            .collect()
    };
    assert_eq!(of("e1-"), ["e1-0", "e1-1", "e1-2"], "{got:?}");
    assert_eq!(of("e2-"), ["e2-1", "e2-2"], "{got:?}");
    assert_eq!(of("e3-"), ["e3-0", "e3-1", "e3-2"], "{got:?}");
    crate::helpers::eventually("the heads gone with their streams", || async {
        match second.count("outbox_streams").await {
            0 => Ok(()),
            n => Err(format!("{n} heads left")),
        }
    })
    .await;
    second.stopper.stop().await;
}

mod heads_mended {
    #[tokio::test]
    async fn sqlite() {
        super::wrong_stream_heads_are_mended_at_start(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::wrong_stream_heads_are_mended_at_start(super::Backend::Postgres).await;
    }
}

/// An outbox number out of its range stops the gateway at start, naming the key, even in
/// settings built in code rather than loaded from a file.
#[tokio::test]
async fn an_outbox_number_out_of_range_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(product_mappings_dir());
    settings.database_url =
        secrecy::SecretString::from(format!("sqlite://{}/ects.db", dir.path().display()));
    settings.outbox.lease_s = 0;
    let error = match ects_gateway::startup::Application::build(settings).await {
        Ok(_) => panic!("a gateway started with a lease of 0 s"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("outbox.lease_s = 0"), "{error}");
    assert!(error.contains("out of range"), "{error}");
}
