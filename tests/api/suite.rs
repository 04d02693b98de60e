//! The suite's own hygiene: what a test leaves behind, and how it waits.

use sqlx::Connection;

use crate::helpers::{Backend, product_mappings_dir, spawn_app, test_settings};

async fn database_exists(name: &str) -> bool {
    let base = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from pg_database where datname = $1")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    n == 1
}

fn database_name(url: &str) -> String {
    let without_query = url.split('?').next().unwrap_or_default();
    without_query
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn each_postgres_test_drops_its_database_when_it_ends_passed_or_failed() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let name = database_name(&app.database_url);
    assert!(name.starts_with("ects_test_"), "{name}");
    assert!(database_exists(&name).await);
    // A second application on it (a restart) keeps it while it runs.
    let second = app.another(test_settings(product_mappings_dir())).await;
    drop(app);
    assert!(
        database_exists(&name).await,
        "dropped under a running application"
    );
    assert_eq!(second.get("/healthz").await.status, 200);
    drop(second);
    assert!(!database_exists(&name).await, "{name} is left behind");

    // A test that fails drops its database too, while it unwinds.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn(async move {
        let app = spawn_app(Backend::Postgres).await.unwrap();
        let _ = tx.send(database_name(&app.database_url));
        panic!("a test that fails");
    });
    assert!(failing.await.is_err());
    let name = rx.await.unwrap();
    assert!(
        !database_exists(&name).await,
        "{name} is left behind by a failing test"
    );
}

#[tokio::test]
#[should_panic(
    expected = "gave up after 0 s waiting for a condition that never holds; last seen: not yet"
)]
async fn a_wait_that_gives_up_says_what_it_waited_for() {
    crate::helpers::wait_until_within(
        "a condition that never holds",
        std::time::Duration::from_millis(100),
        || false,
    )
    .await;
}
