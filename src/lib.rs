//! ECTS Gateway: the adapter server around the `ects-core` tracking engine.

pub mod amqp;
pub mod answers;
pub mod auth;
pub mod cli;
pub mod config;
pub mod cursor;
pub mod decode;
pub mod devices;
pub mod formats;
pub mod http;
pub mod ingest;
pub mod mapping;
pub mod metrics;
pub mod offices;
pub mod outbox;
pub mod partners;
pub mod problem;
pub mod schemas;
pub mod startup;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tracking;
pub mod translate;

/// Makes ring the process's TLS crypto provider (reqwest is built without one). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
