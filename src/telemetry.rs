//! Logging: a `tracing` subscriber writing JSON lines or a human format. Every HTTP request
//! runs in a span carrying its `request_id`, so each line logged while serving it names it.

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt};

use crate::config::LogFormat;

/// Builds the subscriber; `sink` is stdout in the binary and a sink or stdout in tests.
pub fn get_subscriber<W>(
    filter: &str,
    format: LogFormat,
    sink: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = Registry::default().with(filter);
    match format {
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    // The whole list, so the request span's request_id is on every line.
                    .with_current_span(false)
                    .with_span_list(true)
                    .with_writer(sink),
            ),
        ),
        LogFormat::Pretty => {
            Box::new(registry.with(tracing_subscriber::fmt::layer().with_writer(sink)))
        }
    }
}

/// Installs the subscriber for the whole process. A second call is a no-op.
pub fn init_subscriber(subscriber: Box<dyn Subscriber + Send + Sync>) {
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Formats an error with its chain of causes, one per line, for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut current = e.source();
    while let Some(cause) = current {
        out.push_str("\n  caused by: ");
        out.push_str(&cause.to_string());
        current = cause.source();
    }
    out
}
