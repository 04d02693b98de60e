//! Building and running the application: it binds its own listener (port 0 works) and
//! reports the port, so tests start it as it runs in production.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tracing_actix_web::TracingLogger;

use tokio::sync::watch;

use crate::amqp::{self, Supervisor};
use crate::config::Settings;
use crate::formats::{CommandSigner, Formats, Limits, Signer};
use crate::http::{self, AppState};
use crate::ingest::Ingest;
use crate::mapping::MappingSet;
use crate::metrics::Metrics;
use crate::offices::Offices;
use crate::outbox::Dispatcher;
use crate::partners::PartnerConfig;
use crate::schemas::Schemas;
use crate::store::Store;
use crate::tracking::Recipients;
use crate::tracking::Tracking;

pub struct Application {
    port: u16,
    server: Server,
    store: Store,
    tracking: Arc<Tracking>,
    tick_interval: u64,
    tls: bool,
    offices: Offices,
    supervisor: Option<Supervisor>,
    dispatcher: Option<Dispatcher>,
    stop: watch::Sender<bool>,
    retention: crate::config::RetentionSettings,
    metrics: Arc<Metrics>,
    tokens: crate::auth::Tokens,
}

/// Stops a running application gracefully: the HTTP server drains, the dispatcher ends its
/// round (so that nothing it has sent stays unrecorded), the broker link closes.
#[derive(Clone)]
pub struct Stopper {
    handle: actix_web::dev::ServerHandle,
    stop: watch::Sender<bool>,
}

impl Stopper {
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        self.handle.stop(true).await;
    }
}

/// Checks the partners against the loaded formats: each speaks a format that exists, in
/// the version it names, and that can write the notifications it subscribes to.
fn check_partners(settings: &Settings, formats: &Formats) -> anyhow::Result<()> {
    for (i, p) in settings.partners.iter().enumerate() {
        let Some(format) = formats.get(&p.format) else {
            anyhow::bail!(
                "partners[{i}] ({:?}): format {:?} is not loaded (known: {})",
                p.id,
                p.format,
                formats.ids().join(", ")
            );
        };
        if let Some(v) = &p.version {
            anyhow::ensure!(
                v == format.version(),
                "partners[{i}] ({:?}): version {v:?} of {} is not the loaded one ({:?})",
                p.id,
                p.format,
                format.version()
            );
        }
        let messages = format.messages();
        if !p.subscribe.is_empty() {
            anyhow::ensure!(
                messages.iter().any(
                    |(m, d)| *m == crate::mapping::MessageKind::StatusNotification
                        && d.contains("out")
                ),
                "partners[{i}] ({:?}): format {} cannot write notifications, so it cannot subscribe",
                p.id,
                p.format
            );
        }
        if p.amqp_in.is_some() {
            anyhow::ensure!(
                messages.iter().any(|(_, d)| d.contains("in")),
                "partners[{i}] ({:?}): format {} reads nothing, so amqp_in has nothing to take",
                p.id,
                p.format
            );
        }
    }
    Ok(())
}

/// The formats: the canonical one and every mapping in `settings.mappings_dir`, compiled.
/// Without a database (the CLI), the office registry is the shipped reference data.
pub fn formats(settings: &Settings) -> anyhow::Result<Formats> {
    let offices = Offices::shipped(settings.offices.policy).map_err(anyhow::Error::msg)?;
    formats_with(settings, schemas()?, &offices)
}

/// The formats of the CLI (`translate`, `validate`, `mapping test`, `formats`). Under
/// `strict`, the registry is the shipped data (without the project's codes) and what was
/// imported into the configured database, when there is one (an SQLite file that exists,
/// or PostgreSQL); nothing else.
pub async fn cli_formats(settings: &Settings) -> anyhow::Result<Formats> {
    use secrecy::ExposeSecret;
    if settings.offices.policy != crate::offices::OfficePolicy::Strict {
        return formats(settings);
    }
    let mut entries: std::collections::BTreeMap<String, crate::offices::Office> =
        crate::offices::shipped_for(settings.offices.policy)
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .map(|o| (o.code.as_str().to_owned(), o))
            .collect();
    let url = settings.database_url.expose_secret();
    let sqlite_file = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or_default().to_owned());
    let has_database = match &sqlite_file {
        Some(path) => std::path::Path::new(path).is_file(),
        None => true,
    };
    if has_database {
        let store = Store::connect(&settings.database_url, 1)
            .await
            .context("cannot open the database for the office registry")?;
        store
            .migrate()
            .await
            .context("cannot migrate the database")?;
        let stored = store
            .all_offices()
            .await
            .context("cannot read the office registry")?;
        store.close().await;
        entries.extend(stored.into_iter().map(|o| (o.code.as_str().to_owned(), o)));
    }
    let offices = Offices::new(settings.offices.policy, entries.into_values().collect());
    formats_with(settings, schemas()?, &offices)
}

/// The formats, checking offices against `offices` (a registry built by the caller).
pub fn formats_with_registry(settings: &Settings, offices: &Offices) -> anyhow::Result<Formats> {
    formats_with(settings, schemas()?, offices)
}

fn schemas() -> anyhow::Result<Arc<Schemas>> {
    Ok(Arc::new(
        Schemas::load().context("the embedded JSON Schemas do not compile")?,
    ))
}

fn formats_with(
    settings: &Settings,
    schemas: Arc<Schemas>,
    offices: &Offices,
) -> anyhow::Result<Formats> {
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
        offices,
    ))
}

impl Application {
    /// Connects and migrates the database, compiles schemas, binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Checked here too: settings built in code (not loaded) reach the dispatcher as is.
        settings.outbox.check(settings.amqp.confirm_timeout_ms)?;
        settings.check_transport_security()?;
        let store = Store::connect(&settings.database_url, settings.database_max_connections)
            .await
            .context("cannot open the database")?;
        store
            .migrate()
            .await
            .context("cannot migrate the database")?;
        let mended = crate::store::outbox::repair_heads(&store)
            .await
            .context("cannot check the outbox's stream heads")?;
        if mended > 0 {
            tracing::warn!(
                mended,
                "outbox stream heads were wrong (a crash or a hand edit): mended"
            );
        }
        let schemas = schemas()?;
        // The shipped offices are merged into the stored registry (none overwritten),
        // then the registry is read whole.
        // Under `strict`, not the codes of this project (README, fixtures).
        let shipped =
            crate::offices::shipped_for(settings.offices.policy).map_err(anyhow::Error::msg)?;
        store
            .merge_offices(&shipped, chrono::Utc::now())
            .await
            .context("cannot seed the office registry")?;
        let offices = Offices::new(
            settings.offices.policy,
            store
                .all_offices()
                .await
                .context("cannot read the office registry")?,
        );
        let formats = formats_with(&settings, schemas.clone(), &offices)?;
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        check_partners(&settings, &formats)?;
        let partners: Arc<[PartnerConfig]> = settings.partners.clone().into();
        let recipients = Recipients {
            partners: partners.clone(),
            amqp: settings.amqp_url.is_some(),
        };
        // Inputs received from now on are judged with these thresholds; a replay judges
        // earlier ones with those of their time.
        crate::tracking::record_installation_rules(&store, &settings.rules)
            .await
            .context("cannot record the installation's rules")?;
        let tracking =
            Arc::new(Tracking::new(store.clone(), settings.rules).with_recipients(recipients));
        let tick_interval = settings.tick_interval_s;
        let metrics = Arc::new(Metrics::default());
        let ingest = Ingest::new(
            store.clone(),
            tracking.clone(),
            crate::decode::DecodePool::new(settings.http.decode_workers),
        )
        .with_device_auth(crate::devices::DeviceAuth::new(settings.devices.clone()));
        let (supervisor, broker) = match &settings.amqp_url {
            Some(url) => {
                let (supervisor, broker) = Supervisor::new(
                    url.clone(),
                    amqp::tls_config(&settings.amqp)?,
                    format!("ects-gateway {}:{port}", hostname()),
                    settings.amqp.clone(),
                    partners.clone(),
                    amqp::Inbound {
                        ingest: ingest.clone(),
                        formats: formats.clone(),
                        store: store.clone(),
                        metrics: metrics.clone(),
                        max_body_bytes: settings.max_body_bytes,
                    },
                );
                (Some(supervisor), Some(broker))
            }
            None => (None, None),
        };
        let dispatcher = if partners.iter().any(|p| !p.subscribe.is_empty()) {
            Some(Dispatcher::new(
                store.clone(),
                formats.clone(),
                &partners,
                broker.clone(),
                &settings.amqp,
                settings.outbox.clone(),
                metrics.clone(),
            )?)
        } else {
            None
        };
        let retention = settings.retention.clone();
        let key_file = settings.auth.key_file(&settings.database_url);
        let tokens =
            crate::auth::Tokens::new(store.clone(), crate::auth::load_or_create_key(&key_file)?);
        let state = web::Data::new(AppState {
            tokens: tokens.clone(),
            ingest,
            tracking: tracking.clone(),
            settings: Arc::new(settings),
            store: store.clone(),
            formats,
            schemas,
            metrics: metrics.clone(),
            broker,
            offices: offices.clone(),
        });
        let http_limits = state.settings.http.clone();
        let tls = match &http_limits.tls {
            Some(t) => Some(Arc::new(crate::tls::ServerTls::new(
                t,
                &state.settings.partners,
            )?)),
            None => None,
        };
        let on_connect_tls = tls.clone();
        let server = HttpServer::new(move || {
            App::new()
                // Last wrapped runs first: the logger opens the request span (and its id)
                // before the other two look at it.
                .wrap(from_fn(http::policy::authorize))
                .wrap(from_fn(http::record_metrics))
                .wrap(from_fn(http::request_id_header))
                .wrap(TracingLogger::default())
                .app_data(state.clone())
                .configure(http::configure)
        })
        .max_connections(http_limits.max_connections.max(1))
        .client_request_timeout(std::time::Duration::from_millis(
            http_limits.client_request_timeout_ms,
        ))
        .client_disconnect_timeout(std::time::Duration::from_millis(
            http_limits.client_disconnect_timeout_ms,
        ))
        .on_connect(move |connection, data| {
            if let Some(tls) = &on_connect_tls {
                crate::tls::on_connect(tls, connection, data);
            }
        });
        let server = match &tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls.config.clone())?,
            None => server.listen(listener)?,
        }
        .shutdown_timeout(10)
        .run();
        let (stop, _) = watch::channel(false);
        Ok(Self {
            port,
            server,
            store,
            tracking,
            tick_interval,
            tls: tls.is_some(),
            offices,
            supervisor,
            dispatcher,
            stop,
            retention,
            metrics,
            tokens,
        })
    }

    /// The API tokens of this application's database.
    pub fn tokens(&self) -> crate::auth::Tokens {
        self.tokens.clone()
    }

    /// Stops this application gracefully once it runs.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            handle: self.server.handle(),
            stop: self.stop.clone(),
        }
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
        tracing::info!(
            port = self.port,
            scheme = if self.tls { "https" } else { "http" },
            "listening"
        );
        let handle = self.server.handle();
        let ticker = run_ticker(
            self.tracking.clone(),
            self.tick_interval,
            self.store.clone(),
            self.offices.clone(),
        );
        // The link stops last, on its own signal: the dispatcher's confirms need it.
        let (link_stopper, mut link_stop) = watch::channel(false);
        let mut link = tokio::spawn(async move {
            match self.supervisor {
                Some(s) => s.run(link_stop).await,
                None => {
                    let _ = link_stop.wait_for(|stop| *stop).await;
                    Ok(())
                }
            }
        });
        let mut stopping = self.stop.subscribe();
        let dispatcher = tokio::spawn({
            let stop = self.stop.subscribe();
            async move {
                match self.dispatcher {
                    Some(d) => d.run(stop).await,
                    None => Ok(()),
                }
            }
        });
        // The sweeper keeps its failures to itself: it is stopped, never waited on.
        let sweeper = tokio::spawn(run_retention_sweeper(
            self.store.clone(),
            self.retention.clone(),
            self.metrics.clone(),
        ));
        let mut server = tokio::spawn(self.server);
        let result = tokio::select! {
            r = &mut server => match r {
                Ok(r) => r.context("the HTTP server stopped with an error"),
                Err(e) => Err(e).context("the HTTP server task failed"),
            },
            r = ticker => r,
            r = &mut link => r.context("the broker link failed").and_then(|r| r),
            _ = async { let _ = stopping.wait_for(|stop| *stop).await; } => Ok(()),
        };
        // In order: the HTTP server drains its requests; the dispatcher finishes its
        // round, so what it sent is recorded as sent; then the broker link closes.
        handle.stop(true).await;
        let wait = std::time::Duration::from_secs(30);
        if !server.is_finished() && tokio::time::timeout(wait, &mut server).await.is_err() {
            server.abort();
        }
        self.stop.send_replace(true);
        sweeper.abort();
        if tokio::time::timeout(wait, dispatcher).await.is_err() {
            tracing::warn!("the outbox dispatcher did not stop within 30 s");
        }
        link_stopper.send_replace(true);
        if !link.is_finished() && tokio::time::timeout(wait, &mut link).await.is_err() {
            link.abort();
        }
        self.store.close().await;
        if let Err(e) = &result {
            tracing::error!(error.cause_chain = ?e, "stopped");
        }
        result
    }
}

/// Ticks every live trip every `interval_s` seconds; with 0, waits forever.
async fn run_ticker(
    tracking: Arc<Tracking>,
    interval_s: u64,
    store: Store,
    offices: Offices,
) -> anyhow::Result<()> {
    if interval_s == 0 {
        std::future::pending::<()>().await;
    }
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(interval_s));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut registry_seen = None;
    loop {
        interval.tick().await;
        // Offices another instance (or `offices import`) changed are read again.
        match store.offices_version().await {
            Ok(v) if registry_seen.as_ref() == Some(&v) => {}
            Ok(v) => match store.all_offices().await {
                Ok(all) => {
                    offices.replace(all);
                    registry_seen = Some(v);
                }
                Err(e) => {
                    tracing::warn!(error.cause_chain = %crate::telemetry::error_chain(&e), "office registry not read")
                }
            },
            Err(e) => {
                tracing::warn!(error.cause_chain = %crate::telemetry::error_chain(&e), "office registry not read")
            }
        }
        // Each tick in its own task: even a panic the per-trip guard missed ends that tick
        // (logged), never the process.
        let ticking = tokio::spawn({
            let tracking = tracking.clone();
            async move { tracking.tick_all(chrono::Utc::now()).await }
        });
        match ticking.await {
            Ok(Ok(0)) => {}
            Ok(Ok(changed)) => tracing::info!(changed, "tick"),
            // A failed tick (database away) is retried at the next one.
            Ok(Err(e)) => {
                tracing::warn!(error.cause_chain = %crate::telemetry::error_chain(&e), "tick failed")
            }
            Err(e) => tracing::error!(error = %e, "tick panicked; the next one goes on"),
        }
    }
}

/// Every `sweep_interval_s` seconds (from start), drops the raw bodies of rejected
/// messages past retention (`[retention]`); with 0, does nothing. A failed or panicking
/// sweep is logged and the next one goes on: retention never stops the gateway.
async fn run_retention_sweeper(
    store: Store,
    retention: crate::config::RetentionSettings,
    metrics: Arc<Metrics>,
) {
    if retention.sweep_interval_s == 0 {
        return;
    }
    let mut interval =
        tokio::time::interval(std::time::Duration::from_secs(retention.sweep_interval_s));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let sweep = tokio::spawn({
            let store = store.clone();
            let days = i64::from(retention.rejected_body_days);
            let max_bytes = retention.rejected_body_max_bytes;
            async move {
                let now = chrono::Utc::now();
                store
                    .purge_rejected_bodies(now - chrono::Duration::days(days), max_bytes, now)
                    .await
            }
        });
        match sweep.await {
            Ok(Ok(purged)) => {
                metrics.rejected_bodies_purged(purged);
                if purged.messages > 0 {
                    tracing::info!(
                        messages = purged.messages,
                        bytes = purged.bytes,
                        "rejected bodies past retention dropped"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error.cause_chain = %crate::telemetry::error_chain(&e), "retention sweep failed; tried again at the next one")
            }
            Err(e) => tracing::error!(error = %e, "retention sweep panicked; the next one goes on"),
        }
    }
}

/// This machine's name, for the broker's list of connections.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The embedded default's first credential: with no live admin token, makes one named
/// `admin` (or `admin-<time>` when that name is spent), writes it to `file` (0600), prints
/// it once on standard output and logs only the file's path. Returns whether it made one.
pub async fn bootstrap_admin(
    tokens: &crate::auth::Tokens,
    file: &std::path::Path,
) -> anyhow::Result<bool> {
    use secrecy::ExposeSecret;
    let now = chrono::Utc::now();
    if tokens.live_admin(now).await? {
        return Ok(false);
    }
    let taken = tokens.list().await?.iter().any(|t| t.name == "admin");
    let new = crate::auth::NewToken {
        name: if taken {
            format!("admin-{}", now.format("%Y%m%d%H%M%S"))
        } else {
            "admin".into()
        },
        role: crate::auth::Role::Admin,
        authority: None,
        party: None,
        expires_at: crate::auth::parse_expiry(None, now)?,
        created_by: "serve".into(),
    };
    let (info, token) = tokens.create(&new, now).await?;
    // A stale file of an expired or revoked token is replaced.
    match std::fs::remove_file(file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot replace {}", file.display())));
        }
    }
    crate::auth::write_private_file(file, format!("{}\n", token.expose_secret()).as_bytes())
        .with_context(|| format!("cannot write the admin token to {}", file.display()))?;
    println!("admin token (shown once, also in {}):", file.display());
    println!("{}", token.expose_secret());
    tracing::warn!(
        name = %info.name,
        path = %file.display(),
        "no live admin token: made one and wrote it to the file"
    );
    Ok(true)
}
