//! Storage behind sqlx's `Any` driver: SQLite (embedded default) or PostgreSQL, one set of
//! portable SQL. Each backend has its own migrations, embedded in the binary.

pub mod codes;
pub mod devices;
mod geo;
mod messages;
mod offices;
pub mod outbox;
mod trips;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

pub use geo::{FeatureRow, MAX_ZONES};
pub use messages::{MessageRecord, Outcome, Purged};
pub(crate) use messages::{
    accepted_response_for_body, insert_message, response_of_message, set_response,
};
pub use offices::{ImportCounts, RegistryChange};
pub use trips::{AlertFilter, StoredConflict, StoredEvent, TripRow};
pub(crate) use trips::{
    add_trip_seals, claim_unmatched_events, claim_unmatched_for, find_declaration,
    find_declaration_by, find_event, held_by_another_live_trip, held_elsewhere,
    insert_declared_trip, insert_event, live_trips_with_equipment, load_trip, lock_device,
    lock_seal_devices, release_from_cancelled, trip_for_event, update_trip, upsert_alert,
};
pub(crate) use trips::{
    conflict_kept, conflict_variants, count_dropped_conflict, insert_event_conflict, seq_column,
};
// Declaration versions (amendments).
pub(crate) use trips::{
    insert_declaration_version, latest_declaration_version, replace_declaration, set_trip_routing,
};

/// A write transaction. On SQLite it also holds the process's write gate, so writers
/// queue in order here instead of spinning on SQLite's busy handler.
pub struct Tx {
    tx: Transaction<'static, Any>,
    _gate: Option<OwnedMutexGuard<()>>,
    committed: Arc<Notify>,
}

impl std::ops::Deref for Tx {
    type Target = Transaction<'static, Any>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl Tx {
    /// Commits, then wakes whoever waits for new work (the outbox dispatcher).
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await?;
        self.committed.notify_one();
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the database directory {path}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    /// Other writers kept winning; the caller may try again shortly.
    #[error("the database is busy with concurrent writes to the same trip")]
    Contention,
    /// The write would take a table over its limit (the number of zones): nothing written.
    #[error("{pointer}: {detail}")]
    OverLimit { pointer: String, detail: String },
}

impl StoreError {
    /// A conflict another writer caused (unique key taken, version moved on, SQLite busy):
    /// the whole transaction may be tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => {
                e.is_unique_violation()
                    || matches!(e.code().as_deref(), Some("40001" | "40P01" | "5" | "517"))
            }
            _ => false,
        }
    }

    /// PostgreSQL aborted the transaction to break a deadlock (`40P01`) or a serialization
    /// conflict (`40001`): nothing of it was written, and it may be tried again as is.
    pub fn is_aborted_by_conflict(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40001" | "40P01"))
            }
            _ => false,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer at a time; this gate makes them wait their turn in order.
    write_gate: Option<Arc<Mutex<()>>>,
    /// Told after each write commits.
    committed: Arc<Notify>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

/// Fixed-width RFC 3339 UTC, so stored times sort as text.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn parse_ts(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("time {text:?}: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising our own model types to a String cannot fail: no maps with non-string
    // keys, no failing Serialize impls.
    serde_json::to_string(value).unwrap_or_default()
}

impl Store {
    /// Connects, creating a SQLite file (and its directory) on first run.
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = url.expose_secret();
        let (backend, url) = if url.starts_with("sqlite:") {
            (Backend::Sqlite, prepare_sqlite_url(url)?)
        } else {
            (Backend::Postgres, url.to_owned())
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        if backend == Backend::Sqlite {
            // WAL lets readers go on while one writer commits; the mode is kept in the file.
            sqlx::query("pragma journal_mode = wal")
                .execute(&pool)
                .await?;
        }
        let write_gate = (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(())));
        Ok(Self {
            pool,
            backend,
            write_gate,
            committed: Arc::new(Notify::new()),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        // Stored clear one-time codes become hashes (migration 0020), once.
        codes::convert_clear_codes(self).await?;
        Ok(())
    }

    /// For readiness: the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    /// A transaction that will write. SQLite takes the write lock at once (`begin
    /// immediate`) so that a transaction never fails at commit for having read first; a
    /// second process on the same file still waits on the busy timeout.
    ///
    /// On PostgreSQL it first pins the geometry version (a shared advisory lock, which a
    /// geometry change takes exclusively, [`GEOMETRY_LOCK`]): an input stored in it records
    /// the version it is judged with, and no corridor, zone or rules change can commit
    /// between the two. Writes that change the geometry use [`Store::begin_geometry_write`].
    pub async fn begin_write(&self) -> Result<Tx, StoreError> {
        let mut tx = self.begin_geometry_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("select pg_advisory_xact_lock_shared($1, $2)::text")
                .bind(GEOMETRY_LOCK.0)
                .bind(GEOMETRY_LOCK.1)
                .execute(&mut **tx)
                .await?;
        }
        Ok(tx)
    }

    /// A write transaction that may bump the geometry version (corridors, zones, offices'
    /// zones, the installation's rules): it does not pin it, so two of them never wait on
    /// each other's pin.
    pub async fn begin_geometry_write(&self) -> Result<Tx, StoreError> {
        let gate = match &self.write_gate {
            Some(gate) => Some(gate.clone().lock_owned().await),
            None => None,
        };
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("begin immediate").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Tx {
            tx,
            _gate: gate,
            committed: self.committed.clone(),
        })
    }

    /// Notified after a write transaction commits: new work may be waiting.
    pub fn committed(&self) -> Arc<Notify> {
        self.committed.clone()
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The PostgreSQL advisory lock (two-key space, apart from the devices' one-key locks)
/// that pins the geometry version: shared by every write, exclusive for a change of it.
pub const GEOMETRY_LOCK: (i32, i32) = (0x4543_5453, 1);

/// `sqlite://data/ects.db` → creates `data/` and asks sqlx to create the file if missing.
fn prepare_sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = rest.split('?').next().unwrap_or_default();
    if !path.is_empty()
        && path != ":memory:"
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    if url.contains("mode=") {
        Ok(url.to_owned())
    } else if url.contains('?') {
        Ok(format!("{url}&mode=rwc"))
    } else {
        Ok(format!("{url}?mode=rwc"))
    }
}
