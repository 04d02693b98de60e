//! Building and running the application: it binds its own listener (port 0 works) and
//! reports the port, so tests start it as it runs in production.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tracing_actix_web::TracingLogger;

use crate::config::Settings;
use crate::formats::{CommandSigner, Formats, Limits, Signer};
use crate::http::{self, AppState};
use crate::ingest::Ingest;
use crate::mapping::MappingSet;
use crate::metrics::Metrics;
use crate::schemas::Schemas;
use crate::store::Store;
use crate::tracking::Tracking;

pub struct Application {
    port: u16,
    server: Server,
    store: Store,
    tracking: Arc<Tracking>,
    tick_interval: u64,
}

/// The formats: the canonical one and every mapping in `settings.mappings_dir`, compiled.
pub fn formats(settings: &Settings) -> anyhow::Result<Formats> {
    formats_with(settings, schemas()?)
}

fn schemas() -> anyhow::Result<Arc<Schemas>> {
    Ok(Arc::new(
        Schemas::load().context("the embedded JSON Schemas do not compile")?,
    ))
}

fn formats_with(settings: &Settings, schemas: Arc<Schemas>) -> anyhow::Result<Formats> {
    let mappings =
        MappingSet::load(&settings.mappings_dir).context("a mapping file does not compile")?;
    for (format, argv) in &settings.signers {
        let signs = mappings
            .plans
            .iter()
            .any(|p| &p.id == format && p.json.signature.is_some());
        anyhow::ensure!(
            signs,
            "[signers] {format:?}: no mapping of that format has a [json] signature block to sign"
        );
        anyhow::ensure!(
            !argv.is_empty(),
            "[signers] {format:?}: the command is empty"
        );
    }
    anyhow::ensure!(
        settings.signer_timeout_s >= 1,
        "signer_timeout_s must be at least 1 second"
    );
    let signers = settings
        .signers
        .iter()
        .map(|(format, argv)| {
            let signer: Arc<dyn Signer> = Arc::new(CommandSigner {
                argv: argv.clone(),
                timeout: std::time::Duration::from_secs(settings.signer_timeout_s),
            });
            (format.clone(), signer)
        })
        .collect();
    Ok(Formats::new(
        schemas,
        Limits {
            max_events_per_message: settings.max_events_per_message,
        },
        &mappings,
        &signers,
    ))
}

impl Application {
    /// Connects and migrates the database, compiles schemas, binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = Store::connect(&settings.database_url, settings.database_max_connections)
            .await
            .context("cannot open the database")?;
        store
            .migrate()
            .await
            .context("cannot migrate the database")?;
        let schemas = schemas()?;
        let formats = formats_with(&settings, schemas.clone())?;
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let tracking = Arc::new(Tracking::new(store.clone(), settings.rules));
        let tick_interval = settings.tick_interval_s;
        let state = web::Data::new(AppState {
            ingest: Ingest::new(store.clone(), tracking.clone()),
            tracking: tracking.clone(),
            settings: Arc::new(settings),
            store: store.clone(),
            formats,
            schemas,
            metrics: Arc::new(Metrics::default()),
        });
        let server = HttpServer::new(move || {
            App::new()
                // Last wrapped runs first: the logger opens the request span (and its id)
                // before the other two look at it.
                .wrap(from_fn(http::record_metrics))
                .wrap(from_fn(http::request_id_header))
                .wrap(TracingLogger::default())
                .app_data(state.clone())
                .configure(http::configure)
        })
        .listen(listener)?
        .shutdown_timeout(10)
        .run();
        Ok(Self {
            port,
            server,
            store,
            tracking,
            tick_interval,
        })
    }

    /// The tracking service, for driving the clock in tests.
    pub fn tracking(&self) -> Arc<Tracking> {
        self.tracking.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until a shutdown signal (SIGINT, SIGTERM), then drains and closes the pool.
    /// The ticker runs beside the server; whichever ends first ends both.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tracing::info!(port = self.port, "listening");
        let handle = self.server.handle();
        let ticker = run_ticker(self.tracking.clone(), self.tick_interval);
        let result = tokio::select! {
            r = self.server => r.context("the HTTP server stopped with an error"),
            r = ticker => {
                handle.stop(true).await;
                r
            }
        };
        self.store.close().await;
        if let Err(e) = &result {
            tracing::error!(error.cause_chain = ?e, "stopped");
        }
        result
    }
}

/// Ticks every live trip every `interval_s` seconds; with 0, waits forever.
async fn run_ticker(tracking: Arc<Tracking>, interval_s: u64) -> anyhow::Result<()> {
    if interval_s == 0 {
        std::future::pending::<()>().await;
    }
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(interval_s));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match tracking.tick_all(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(changed) => tracing::info!(changed, "tick"),
            // A failed tick (database away) is retried at the next one.
            Err(e) => {
                tracing::warn!(error.cause_chain = %crate::telemetry::error_chain(&e), "tick failed")
            }
        }
    }
}
