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
use crate::formats::{Formats, Limits};
use crate::http::{self, AppState};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::schemas::Schemas;
use crate::store::Store;

pub struct Application {
    port: u16,
    server: Server,
    store: Store,
}

/// The formats with their schemas and limits, as every command that reads documents needs.
pub fn formats(settings: &Settings) -> anyhow::Result<Formats> {
    let schemas = Arc::new(Schemas::load().context("the embedded JSON Schemas do not compile")?);
    Ok(Formats::new(
        schemas,
        Limits {
            max_events_per_message: settings.max_events_per_message,
        },
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
        let formats = formats(&settings)?;
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState {
            ingest: Ingest::new(store.clone(), settings.rules.clone()),
            settings: Arc::new(settings),
            store: store.clone(),
            formats,
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
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until a shutdown signal (SIGINT, SIGTERM), then drains and closes the pool.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tracing::info!(port = self.port, "listening");
        let result = self.server.await;
        self.store.close().await;
        result.context("the HTTP server stopped with an error")
    }
}
