//! Prometheus metrics, one registry per application (tests run several in one process).

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ingest::{Answer, IngestError};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    format: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboxLabels {
    channel: String,
    result: String,
}

type DurationFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Mutex<Registry>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: DurationFamily,
    messages_in: Family<MessageLabels, Counter>,
    outbox_attempts: Family<OutboxLabels, Counter>,
    rejected_bodies_purged: Counter,
    rejected_body_bytes_purged: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ects");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration: DurationFamily = Family::new_with_constructor(duration_histogram);
        let messages_in = Family::<MessageLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            http_duration.clone(),
        );
        registry.register(
            "messages_in",
            "Inbound messages by format and outcome (accepted, duplicate, rejected, failed)",
            messages_in.clone(),
        );
        let outbox_attempts = Family::<OutboxLabels, Counter>::default();
        registry.register(
            "outbox_attempts",
            "Outbound deliveries tried, by channel and result (sent, retry, parked)",
            outbox_attempts.clone(),
        );
        let rejected_bodies_purged = Counter::default();
        registry.register(
            "rejected_bodies_purged",
            "Rejected messages whose raw body the retention sweeper dropped (the record stays)",
            rejected_bodies_purged.clone(),
        );
        let rejected_body_bytes_purged = Counter::default();
        registry.register(
            "rejected_body_bytes_purged",
            "Bytes of rejected messages' raw bodies the retention sweeper dropped",
            rejected_body_bytes_purged.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            rejected_bodies_purged,
            rejected_body_bytes_purged,
            http_requests,
            http_duration,
            messages_in,
            outbox_attempts,
        }
    }
}

impl Metrics {
    pub fn http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    pub fn message_in(&self, format: &str, result: &Result<Answer, IngestError>) {
        let outcome = match result {
            Ok(a) if a.replayed => "duplicate",
            Ok(_) => "accepted",
            Err(
                IngestError::Document(_)
                | IngestError::Conflict(_)
                | IngestError::Forbidden(_)
                | IngestError::NotFound(_),
            ) => "rejected",
            Err(IngestError::Store(_) | IngestError::Pool(_)) => "failed",
        };
        self.messages_in
            .get_or_create(&MessageLabels {
                format: format.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn outbox_attempt(&self, channel: &str, result: &crate::store::outbox::Attempted) {
        use crate::store::outbox::Attempted;
        let result = match result {
            Attempted::Sent => "sent",
            Attempted::Retry { .. } => "retry",
            Attempted::Parked { .. } => "parked",
        };
        self.outbox_attempts
            .get_or_create(&OutboxLabels {
                channel: channel.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn rejected_bodies_purged(&self, purged: crate::store::Purged) {
        self.rejected_bodies_purged.inc_by(purged.messages);
        self.rejected_body_bytes_purged.inc_by(purged.bytes);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
