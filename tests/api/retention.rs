//! Retention of rejected messages' raw bodies (`[retention]`): past it the body goes, the
//! record of the attempt stays; accepted messages keep theirs.

use chrono::{Duration, Utc};
use sqlx::Row;

use crate::helpers::{Backend, TestApp, eventually, mappings_dir, spawn_app_with};

/// One stored inbound message, as the sweeper leaves it.
#[derive(Debug)]
struct Stored {
    message_id: String,
    source: String,
    outcome: String,
    body: Vec<u8>,
    body_sha256: String,
    body_bytes: i64,
    problem: Option<String>,
    body_purged_at: Option<String>,
}

async fn stored(app: &TestApp) -> Vec<Stored> {
    sqlx::query(
        "select message_id, source, outcome, body, body_sha256, body_bytes, problem, body_purged_at
         from messages order by received_at, message_id",
    )
    .fetch_all(app.store.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| Stored {
        message_id: r.try_get("message_id").unwrap(),
        source: r.try_get("source").unwrap(),
        outcome: r.try_get("outcome").unwrap(),
        body: r.try_get("body").unwrap(),
        body_sha256: r.try_get("body_sha256").unwrap(),
        body_bytes: r.try_get("body_bytes").unwrap(),
        problem: r.try_get("problem").unwrap(),
        body_purged_at: r.try_get("body_purged_at").unwrap(),
    })
    .collect()
}

/// Sets where a message was received (and from whom), as if it came then.
async fn backdate(app: &TestApp, message_id: &str, days: i64, source: &str) {
    sqlx::query("update messages set received_at = $1, source = $2 where message_id = $3")
        .bind(ects_gateway::store::ts(Utc::now() - Duration::days(days)))
        .bind(source)
        .bind(message_id)
        .execute(app.store.pool())
        .await
        .unwrap();
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A document the gateway refuses (422), `n` bytes of padding making it distinct.
fn refused(n: usize) -> Vec<u8> {
    format!("{{\"padding\": \"{}\"}}", "x".repeat(n)).into_bytes()
}

async fn spawn(backend: Backend, sweep_interval_s: u64) -> Option<TestApp> {
    spawn_app_with(backend, mappings_dir(), |s| {
        s.retention.sweep_interval_s = sweep_interval_s;
        s.retention.rejected_body_days = 30;
    })
    .await
}

async fn old_rejected_bodies_go_the_rest_stay(backend: Backend) {
    let Some(app) = spawn(backend, 0).await else {
        return;
    };
    let old = refused(100);
    let young = refused(200);
    for body in [&old, &young] {
        let reply = app.post_message(body.clone()).await;
        assert!(reply.status == 400 || reply.status == 422, "{}", reply.text);
    }
    app.declare_gt_sv().await;
    let before = stored(&app).await;
    assert_eq!(before.len(), 3, "{before:?}");
    let (old_id, young_id, accepted_id) = (
        before[0].message_id.clone(),
        before[1].message_id.clone(),
        before[2].message_id.clone(),
    );
    assert_eq!(before[0].body, old);
    assert_eq!(before[0].body_bytes, old.len() as i64);
    assert_eq!(before[2].outcome, "accepted");
    // The old rejected one and the accepted one are 40 days old; the young one 29.
    backdate(&app, &old_id, 40, "http").await;
    backdate(&app, &young_id, 29, "http").await;
    backdate(&app, &accepted_id, 41, "http").await;

    let now = Utc::now();
    let purged = app
        .store
        .purge_rejected_bodies(now - Duration::days(30), u64::MAX, now)
        .await
        .unwrap();
    assert_eq!(purged.messages, 1);
    assert_eq!(purged.bytes, old.len() as u64);

    let after = stored(&app).await;
    assert_eq!(after.len(), 3, "no record goes");
    let by_id = |id: &str| after.iter().find(|m| m.message_id == id).unwrap();
    let gone = by_id(&old_id);
    assert!(gone.body.is_empty(), "the old rejected body is dropped");
    assert_eq!(
        gone.body_purged_at.as_deref(),
        Some(&*ects_gateway::store::ts(now))
    );
    assert_eq!(gone.body_sha256, sha256(&old), "its hash stays");
    assert_eq!(gone.body_bytes, old.len() as i64, "its size stays");
    assert_eq!(gone.outcome, "rejected");
    assert_eq!(gone.source, "http");
    assert!(
        gone.problem.as_deref().is_some_and(|p| !p.is_empty()),
        "its reason stays"
    );
    let kept = by_id(&young_id);
    assert_eq!(kept.body, young, "a younger rejected body stays");
    assert!(kept.body_purged_at.is_none());
    let evidence = by_id(&accepted_id);
    assert_eq!(
        evidence.body,
        crate::helpers::fixture("ects-json/declaration-gt-sv.json"),
        "an accepted body stays, however old"
    );
    assert!(evidence.body_purged_at.is_none());

    // A second sweep finds nothing more.
    let again = app
        .store
        .purge_rejected_bodies(now - Duration::days(30), u64::MAX, now)
        .await
        .unwrap();
    assert_eq!(again.messages, 0);

    // A resent copy of the purged document is refused again, and kept whole.
    let reply = app.post_message(old.clone()).await;
    assert!(reply.status == 400 || reply.status == 422, "{}", reply.text);
    assert_eq!(
        app.count_where(
            "messages",
            &format!(
                "body_sha256 = '{}' and body_purged_at is null",
                sha256(&old)
            )
        )
        .await,
        1
    );
    app.stopper.stop().await;
}

async fn each_sender_keeps_its_newest_bodies_up_to_the_cap(backend: Backend) {
    let Some(app) = spawn(backend, 0).await else {
        return;
    };
    // Sender a: three bodies, oldest first; sender b: one, the oldest of all.
    let bodies: Vec<Vec<u8>> = (0..4).map(|i| refused(1_000 + i)).collect();
    for body in &bodies {
        let reply = app.post_message(body.clone()).await;
        assert!(reply.status == 400 || reply.status == 422, "{}", reply.text);
    }
    let rows = stored(&app).await;
    assert_eq!(rows.len(), 4);
    backdate(&app, &rows[0].message_id, 4, "b").await;
    backdate(&app, &rows[1].message_id, 3, "a").await;
    backdate(&app, &rows[2].message_id, 2, "a").await;
    backdate(&app, &rows[3].message_id, 1, "a").await;
    // Room for two bodies per sender: a's oldest goes; b's one stays, however old.
    let cap = (bodies[2].len() + bodies[3].len()) as u64;
    let now = Utc::now();
    let purged = app
        .store
        .purge_rejected_bodies(now - Duration::days(30), cap, now)
        .await
        .unwrap();
    assert_eq!(purged.messages, 1);
    assert_eq!(purged.bytes, bodies[1].len() as u64);
    let after = stored(&app).await;
    let held: Vec<(String, bool)> = after
        .iter()
        .map(|m| (m.source.clone(), m.body_purged_at.is_none()))
        .collect();
    assert_eq!(
        held,
        [
            ("b".to_owned(), true),
            ("a".to_owned(), false),
            ("a".to_owned(), true),
            ("a".to_owned(), true)
        ]
    );
    for (row, body) in after.iter().zip(&bodies) {
        if row.body_purged_at.is_none() {
            assert_eq!(&row.body, body);
        } else {
            assert!(row.body.is_empty());
        }
    }
    // One byte less: a keeps only its newest.
    let purged = app
        .store
        .purge_rejected_bodies(now - Duration::days(30), cap - 1, now)
        .await
        .unwrap();
    assert_eq!(purged.messages, 1);
    assert_eq!(
        app.count_where("messages", "body_purged_at is null").await,
        2
    );
    app.stopper.stop().await;
}

async fn the_sweeper_runs_by_itself_and_counts(backend: Backend) {
    let Some(app) = spawn(backend, 1).await else {
        return;
    };
    let body = refused(64);
    let reply = app.post_message(body.clone()).await;
    assert!(reply.status == 400 || reply.status == 422, "{}", reply.text);
    let id = stored(&app).await[0].message_id.clone();
    backdate(&app, &id, 31, "http").await;
    eventually("the sweeper drops the old rejected body", || async {
        match app
            .count_where("messages", "body_purged_at is not null")
            .await
        {
            1 => Ok(()),
            n => Err(format!("{n} purged")),
        }
    })
    .await;
    // The counters follow the commit: waited for too.
    let metrics = eventually("the sweep is counted", || async {
        let text = app.get("/metrics").await.text;
        if text.contains("\nects_rejected_bodies_purged_total 1\n") {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    assert!(
        metrics.contains(&format!(
            "\nects_rejected_body_bytes_purged_total {}\n",
            body.len()
        )),
        "{metrics}"
    );
    app.stopper.stop().await;
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(super::Backend::Sqlite).await;
                }

                #[tokio::test]
                async fn postgres() {
                    super::$name(super::Backend::Postgres).await;
                }
            }
        )*
    };
}

on_both!(
    old_rejected_bodies_go_the_rest_stay,
    each_sender_keeps_its_newest_bodies_up_to_the_cap,
    the_sweeper_runs_by_itself_and_counts,
);
