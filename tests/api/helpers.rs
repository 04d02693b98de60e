//! `spawn_app`: the real server on a random port with a fresh database, and helpers per
//! endpoint. Each test runs on SQLite and, with `TEST_DATABASE_URL`, on PostgreSQL.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

pub use ects_gateway::auth::Role;
use ects_gateway::config::{LogFormat, Settings};
use ects_gateway::schemas::{Canonical, Schemas};
use ects_gateway::startup::Application;
use ects_gateway::store::Store;
use ects_gateway::telemetry::{get_subscriber, init_subscriber};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::Connection;

/// Every log line of the test process, as JSON (and on stdout too with `TEST_LOG`).
pub static LOGS: LazyLock<std::sync::Mutex<Vec<u8>>> = LazyLock::new(Default::default);

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::env::var("TEST_LOG").is_ok() {
            std::io::stdout().write_all(buf)?;
        }
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static TRACING: LazyLock<()> = LazyLock::new(|| {
    // The HTTP client's TLS provider, as the gateway installs it.
    ects_gateway::install_crypto_provider();
    init_subscriber(get_subscriber("info", LogFormat::Json, || LogWriter));
});

/// The captured log lines that mention `needle`.
pub fn log_lines_with(needle: &str) -> Vec<serde_json::Value> {
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub static SCHEMAS: LazyLock<Schemas> =
    LazyLock::new(|| Schemas::load().expect("the schemas compile"));

/// Limits kept small in tests so that the limit checks are cheap to reach.
pub const TEST_BODY_LIMIT: usize = 256 * 1024;
pub const TEST_MAX_EVENTS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub address: String,
    /// Authenticates as the admin (`admin_token`) unless a request says otherwise.
    pub client: reqwest::Client,
    /// A client without credentials.
    pub anonymous: reqwest::Client,
    pub admin_token: String,
    /// The application's API tokens (to make more, of any role).
    pub tokens: ects_gateway::auth::Tokens,
    /// The token key file, shared with applications started on the same database.
    pub key_file: std::path::PathBuf,
    made_tokens: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    pub store: Store,
    pub tracking: std::sync::Arc<ects_gateway::tracking::Tracking>,
    /// Stops the application gracefully (HTTP drained, outbox round finished).
    pub stopper: ects_gateway::startup::Stopper,
    /// Where its data is, to start another application on it.
    pub database_url: String,
    pub backend: Backend,
    _dir: Option<std::sync::Arc<tempfile::TempDir>>,
    /// The PostgreSQL database of this test, dropped when the last application on it is.
    _database: Option<std::sync::Arc<TestDatabase>>,
}

/// A per-test PostgreSQL database: dropped when the test ends, passed or failed (the
/// guard is dropped while a failing test unwinds too).
pub struct TestDatabase {
    server: String,
    name: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop cannot await, and may run inside the test's runtime: a thread of its own,
        // with a runtime of its own, waited for.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&server)
                    .await
                    .map_err(|e| e.to_string())?;
                // The application may still hold connections: `force` ends them.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "drop database if exists {name} with (force)"
                )))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("dropping test database {} panicked", self.name),
        }
    }
}

/// A fresh PostgreSQL database on the server of `TEST_DATABASE_URL`; `None` when unset
/// (outside CI), so a developer without PostgreSQL still runs the SQLite half.
async fn fresh_postgres_database() -> Option<(String, TestDatabase)> {
    let Ok(base) = std::env::var("TEST_DATABASE_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "TEST_DATABASE_URL must be set in CI: the PostgreSQL half of the suite would not run"
        );
        eprintln!("TEST_DATABASE_URL is not set: skipping the PostgreSQL run of this test");
        return None;
    };
    let name = format!("ects_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("TEST_DATABASE_URL is reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut conn)
        .await
        .expect("can create a test database");
    let (without_query, query) = match base.split_once('?') {
        Some((u, q)) => (u.to_owned(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let server = without_query
        .rsplit_once('/')
        .map(|(server, _db)| server.to_owned())
        .expect("TEST_DATABASE_URL names a database");
    let guard = TestDatabase {
        server: base.clone(),
        name: name.clone(),
    };
    Some((format!("{server}/{name}{query}"), guard))
}

pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with_mappings(backend, mappings_dir()).await
}

/// The shipped formats (`mappings/`), for tests of their documents end to end.
pub fn product_mappings_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"))
}

pub async fn spawn_app_with_mappings(
    backend: Backend,
    mappings: std::path::PathBuf,
) -> Option<TestApp> {
    spawn_app_with(backend, mappings, |_| {}).await
}

/// The settings of a test application (its database is set when it starts).
pub fn test_settings(mappings: std::path::PathBuf) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().expect("an address"),
        database_max_connections: 5,
        max_body_bytes: TEST_BODY_LIMIT,
        max_events_per_message: TEST_MAX_EVENTS,
        // Tests drive the clock themselves through `TestApp::tracking`.
        tick_interval_s: 0,
        mappings_dir: mappings,
        // HMAC device secrets are sealed with a key file: one per test process, never
        // the repository's data/.
        devices: ects_gateway::devices::DevicesSettings {
            secret_key_file: DEVICE_KEY_DIR.path().join("device-secrets.key"),
            ..Default::default()
        },
        ..Settings::default()
    }
}

static DEVICE_KEY_DIR: LazyLock<tempfile::TempDir> =
    LazyLock::new(|| tempfile::tempdir().expect("a temporary directory"));

/// An application with settings adjusted (partners, broker) on a fresh database.
pub async fn spawn_app_with(
    backend: Backend,
    mappings: std::path::PathBuf,
    adjust: impl FnOnce(&mut Settings),
) -> Option<TestApp> {
    LazyLock::force(&TRACING);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (url, database) = match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}/ects.db", dir.path().display());
            (url, None)
        }
        Backend::Postgres => {
            let (url, guard) = fresh_postgres_database().await?;
            (url, Some(std::sync::Arc::new(guard)))
        }
    };
    let mut settings = Settings {
        database_url: SecretString::from(url.clone()),
        ..test_settings(mappings)
    };
    // The token key in the test's own directory (never the repository's data/).
    settings.auth.token_key_file = Some(dir.path().join("token.key"));
    let dir = Some(std::sync::Arc::new(dir));
    adjust(&mut settings);
    Some(start(settings, backend, url, dir, database).await)
}

async fn start(
    mut settings: Settings,
    backend: Backend,
    database_url: String,
    dir: Option<std::sync::Arc<tempfile::TempDir>>,
    database: Option<std::sync::Arc<TestDatabase>>,
) -> TestApp {
    if settings.auth.token_key_file.is_none() {
        let dir = dir.as_ref().expect("a test directory");
        settings.auth.token_key_file = Some(dir.path().join("token.key"));
    }
    let key_file = settings.auth.token_key_file.clone().expect("a key file");
    let app = Application::build(settings)
        .await
        .expect("the application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let store = app.store().clone();
    let tracking = app.tracking();
    let stopper = app.stopper();
    let tokens = app.tokens();
    tokio::spawn(app.run_until_stopped());
    // Named apart: another application on the same database makes its own.
    let admin_name = format!(
        "test-admin-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let admin_token = make_token(&tokens, &admin_name, Role::Admin, None, None).await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {admin_token}")
            .parse()
            .expect("a header value"),
    );
    TestApp {
        address,
        client: reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("a client"),
        anonymous: reqwest::Client::new(),
        admin_token,
        tokens,
        key_file,
        made_tokens: Default::default(),
        store,
        tracking,
        stopper,
        database_url,
        backend,
        _dir: dir,
        _database: database,
    }
}

impl TestApp {
    /// Another application on this one's database (a restart, or a second instance).
    pub async fn another(&self, settings: Settings) -> TestApp {
        let mut settings = Settings {
            database_url: SecretString::from(self.database_url.clone()),
            ..settings
        };
        if settings.auth.token_key_file.is_none() {
            settings.auth.token_key_file = Some(self.key_file.clone());
        }
        start(
            settings,
            self.backend,
            self.database_url.clone(),
            self._dir.clone(),
            self._database.clone(),
        )
        .await
    }
}

/// A token (the secret) of a role, made in the application's database, living a day.
pub async fn make_token(
    tokens: &ects_gateway::auth::Tokens,
    name: &str,
    role: Role,
    authority: Option<&str>,
    party: Option<&str>,
) -> String {
    use secrecy::ExposeSecret;
    let now = chrono::Utc::now();
    let new = ects_gateway::auth::NewToken {
        name: name.to_owned(),
        role,
        authority: authority.map(str::to_owned),
        party: party.map(str::to_owned),
        expires_at: now + chrono::Duration::days(1),
        created_by: "test".into(),
    };
    let (_, token) = tokens.create(&new, now).await.expect("a token is made");
    token.expose_secret().to_owned()
}

impl TestApp {
    /// A token of this role, made once per (role, authority or party) and kept: an
    /// officer's needs its authority (`app.token(Role::Officer, "GT")`), a shipper's or
    /// transporter's its party id; for the others the second argument is a name suffix
    /// (a single window's token is bound to GT).
    pub async fn token(&self, role: Role, scope: &str) -> String {
        let key = format!("{role}/{scope}");
        if let Some(t) = self
            .made_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return t.clone();
        }
        let safe: String = scope
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let unique = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = if safe.is_empty() {
            format!("test-{role}-{unique}")
        } else {
            format!("test-{role}-{safe}-{unique}")
        };
        let (authority, party) = match role {
            Role::Officer => (Some(scope), None),
            // A single window files for its country; the tests' declarations are GT's.
            Role::SingleWindow => (Some("GT"), None),
            Role::Shipper | Role::Transporter => (None, Some(scope)),
            _ => (None, None),
        };
        let token = make_token(&self.tokens, &name, role, authority, party).await;
        self.made_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, token.clone());
        token
    }

    /// POSTs a release, handover or cancellation as an officer of the authority the body
    /// acts for (`authority`, or `from_authority` for a handover; GT when it names none).
    pub async fn command(&self, path: &str, body: impl Into<String>) -> Reply {
        let body: String = body.into();
        let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let authority = value["authority"]
            .as_str()
            .or(value["from_authority"].as_str())
            .unwrap_or("GT")
            .to_owned();
        let token = self.token(Role::Officer, &authority).await;
        self.post_as(&token, path, body).await
    }

    /// A POST with another credential.
    pub async fn post_as(&self, token: &str, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        self.send(
            self.anonymous
                .post(format!("{}{path}", self.address))
                .header("content-type", "application/json")
                .bearer_auth(token)
                .body(body),
        )
        .await
    }
}

#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    if let Some(app) = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await {
                        super::$name(app).await;
                    }
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(app) = $crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await {
                        super::$name(app).await;
                    }
                }
            }
        )*
    };
}

/// The test formats (tests/mappings): a small XML format, a flat file, and the canonical
/// declaration described as a mapping.
pub fn mappings_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mappings"))
}

pub fn fixture(path: &str) -> Vec<u8> {
    repo_file(&format!("tests/fixtures/{path}"))
}

/// A file of the repository (a path from its root); a missing one fails the test with its
/// path. Everything a test reads is inside the repository: official schemas and samples
/// are vendored under `tests/official/`.
pub fn repo_file(path: &str) -> Vec<u8> {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// Where a vendored official file is (`tests/official/<source>/...`).
pub fn official(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/official")
        .join(path)
}

pub fn fixture_json(path: &str) -> Value {
    serde_json::from_slice(&fixture(path)).expect("fixture is JSON")
}

/// Fails the test when the gateway emitted something its own schema refuses.
pub fn assert_valid(kind: Canonical, value: &Value) {
    let problems = SCHEMAS.check(kind, value, "");
    assert!(
        problems.is_empty(),
        "{kind:?} does not validate: {problems:?}\n{value:#}"
    );
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The JSON pointers a problem document names.
    pub fn pointers(&self) -> Vec<String> {
        self.json()["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["pointer"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl TestApp {
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request
            .send()
            .await
            .expect("the request reaches the server");
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            text: response.text().await.expect("a body"),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(format!("{}{path}", self.address)))
            .await
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        self.send(
            self.client
                .post(format!("{}{path}", self.address))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(
            self.client
                .put(format!("{}{path}", self.address))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn post_message(&self, body: impl Into<reqwest::Body>) -> Reply {
        self.post("/v1/messages/ects-json", body).await
    }

    pub async fn post_events(&self, body: impl Into<reqwest::Body>) -> Reply {
        self.post("/v1/seal-events", body).await
    }

    /// Declares the Guatemala → El Salvador fixture and returns its trip id.
    pub async fn declare_gt_sv(&self) -> String {
        let reply = self
            .post_message(fixture("ects-json/declaration-gt-sv.json"))
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        reply.json()["trips"][0]
            .as_str()
            .expect("a trip id")
            .to_owned()
    }

    pub async fn trip(&self, trip_id: &str) -> Value {
        let reply = self.get(&format!("/v1/trips/{trip_id}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let status = reply.json();
        assert_valid(Canonical::TripStatus, &status);
        status
    }

    /// Rows in a table, to prove what was (not) stored.
    pub async fn count(&self, table: &str) -> i64 {
        use sqlx::Row;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "select count(*) as n from {table}"
        )))
        .fetch_one(self.store.pool())
        .await
        .expect("count")
        .try_get("n")
        .expect("a count")
    }

    pub async fn count_where(&self, table: &str, condition: &str) -> i64 {
        self.count(&format!("{table} where {condition}")).await
    }
}

/// How long a test waits for a condition before it gives up: generous, because the suite
/// runs its tests in parallel on machines with two busy cores (`TEST_WAIT_S` overrides).
pub fn wait_limit() -> Duration {
    std::env::var("TEST_WAIT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(180), Duration::from_secs)
}

/// Longest description of the last state a failed wait prints.
const MAX_WAIT_REPORT: usize = 2_000;

/// Polls `check` until it gives a value. Every wait on a condition in the suite goes through
/// here: one bound (`wait_limit`), and on giving up the test fails saying what it waited
/// for and what `check` last reported instead (kept short).
pub async fn eventually<T, Fut>(what: &str, check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<T, String>>,
{
    eventually_within(what, wait_limit(), check).await
}

/// [`eventually`] with a bound of its own.
pub async fn eventually_within<T, Fut>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Fut,
) -> T
where
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() >= limit => {
                let mut last = last;
                if last.len() > MAX_WAIT_REPORT {
                    let mut cut = MAX_WAIT_REPORT;
                    while !last.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    last.truncate(cut);
                    last.push('…');
                }
                panic!(
                    "gave up after {} s waiting for {what}; last seen: {last}",
                    limit.as_secs()
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// [`eventually`] for a condition that needs no I/O.
pub async fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_until_within(what, wait_limit(), done).await
}

pub async fn wait_until_within(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    eventually_within(what, limit, || {
        let result = if done() {
            Ok(())
        } else {
            Err("not yet".to_owned())
        };
        async move { result }
    })
    .await
}
