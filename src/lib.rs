//! ECTS Gateway: the adapter server around the `ects-core` tracking engine.

pub mod cli;
pub mod config;
pub mod formats;
pub mod http;
pub mod ingest;
pub mod mapping;
pub mod metrics;
pub mod problem;
pub mod schemas;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tracking;
pub mod translate;
