//! The outbox dispatcher: takes due notifications (leased, in order per stream of partner,
//! channel and trip), writes each in its partner's format once, and delivers it to the
//! `ects.out` exchange (publisher confirms, `mandatory`: a message no queue takes is not
//! counted as delivered) or to the partner's HTTP endpoint. A failure is tried again after
//! an exponential, jittered pause; after `max_attempts` the message is parked (`failed`)
//! and its stream waits until someone retries it. A row is marked sent only on the
//! broker's confirm or the endpoint's 2xx; nothing is deleted.
//!
//! Deliveries go out in waves: the first waiting message of every stream, then the second
//! of the streams whose first went through, and so on, so that streams overtake each other
//! but never themselves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use ects_core::StatusNotification;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation};
use uuid::Uuid;

use crate::amqp::{Broker, short};
use crate::config::OutboxSettings;
use crate::formats::{Formats, Outbound};
use crate::metrics::Metrics;
use crate::partners::PartnerConfig;
use crate::store::Store;
use crate::store::outbox::{self, Attempted, OutboxRow};

/// A pause with jitter: between half of it and all of it.
pub fn jittered(pause: Duration) -> Duration {
    let random = (Uuid::now_v7().as_u128() & 0xffff_ffff) as u64;
    let ms = pause.as_millis() as u64;
    let half = ms / 2;
    Duration::from_millis(half + random % (ms - half + 1))
}

pub struct Dispatcher {
    store: Store,
    formats: Formats,
    partners: BTreeMap<String, PartnerConfig>,
    http: BTreeMap<String, reqwest::Client>,
    broker: Option<Broker>,
    exchange: String,
    confirm_timeout: Duration,
    settings: OutboxSettings,
    metrics: Arc<Metrics>,
}

/// One written message, ready to go.
pub(crate) struct Written {
    pub(crate) body: Vec<u8>,
    pub(crate) content_type: String,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        formats: Formats,
        partners: &[PartnerConfig],
        broker: Option<Broker>,
        amqp: &crate::config::AmqpSettings,
        settings: OutboxSettings,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut http = BTreeMap::new();
        for p in partners.iter().filter(|p| p.http_push.is_some()) {
            http.insert(p.id.clone(), http_client(p, &settings)?);
        }
        Ok(Self {
            store,
            formats,
            partners: partners.iter().map(|p| (p.id.clone(), p.clone())).collect(),
            http,
            broker,
            exchange: amqp.exchange.clone(),
            confirm_timeout: Duration::from_millis(amqp.confirm_timeout_ms.max(1)),
            settings,
            metrics,
        })
    }

    /// Delivers until `stop` turns true, between rounds; wakes on each commit, else every
    /// `poll_ms`. Each partner is worked by its own loop (and the partners no longer
    /// configured by one more), so a slow endpoint holds back only its own partner.
    pub async fn run(self, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
        let this = Arc::new(self);
        let committed = this.store.committed();
        let (wake, woken) = tokio::sync::watch::channel(0_u64);
        let fan_out = {
            let mut stop = stop.clone();
            async move {
                while !*stop.borrow() {
                    tokio::select! {
                        _ = committed.notified() => wake.send_modify(|n| *n = n.wrapping_add(1)),
                        changed = stop.changed() => if changed.is_err() { break },
                    }
                }
            }
        };
        let mut workers: Vec<Worker> = this.partners.keys().cloned().map(Worker::Partner).collect();
        workers.push(Worker::Unconfigured);
        let loops = workers
            .into_iter()
            .map(|w| this.clone().work_loop(w, woken.clone(), stop.clone()));
        let (_, results) =
            futures_util::future::join(fan_out, futures_util::future::join_all(loops)).await;
        results.into_iter().collect()
    }

    async fn work_loop(
        self: Arc<Self>,
        worker: Worker,
        mut woken: tokio::sync::watch::Receiver<u64>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let poll = Duration::from_millis(self.settings.poll_ms.max(10));
        while !*stop.borrow() {
            let done = match &worker {
                Worker::Partner(id) => self.round(Some(id)).await,
                Worker::Unconfigured => self.unconfigured_round().await,
            };
            let pause = match done {
                Ok(0) => poll,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error.cause_chain = %crate::telemetry::error_chain(e.as_ref()), "outbox round failed");
                    poll
                }
            };
            tokio::select! {
                _ = woken.changed() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
        Ok(())
    }

    /// A round for each partner with messages waiting that is not configured (any more):
    /// its messages are tried, and parked with the reason.
    async fn unconfigured_round(&self) -> anyhow::Result<usize> {
        let waiting = outbox::partners_waiting(&self.store)
            .await
            .context("cannot list the partners with messages waiting")?;
        let mut taken = 0;
        for id in waiting.iter().filter(|id| !self.partners.contains_key(*id)) {
            taken += self.round(Some(id)).await?;
        }
        Ok(taken)
    }

    /// One batch of one partner's messages (of every partner's with `None`): returns how
    /// many messages it took.
    pub async fn round(&self, partner: Option<&str>) -> anyhow::Result<usize> {
        let now = Utc::now();
        let publisher = self.broker.as_ref().and_then(Broker::publisher);
        // While the broker is away its messages wait, without spending their attempts.
        let channels: &[&str] = if publisher.is_some() {
            &["amqp", "http"]
        } else {
            &["http"]
        };
        let lease = now + chrono::Duration::seconds(self.settings.lease_s as i64);
        let rows = outbox::claim(
            &self.store,
            partner,
            now,
            self.settings.batch,
            lease,
            channels,
        )
        .await
        .context("cannot take due outbox messages")?;
        let taken = rows.len();
        if taken == 0 {
            return Ok(0);
        }
        // Streams in the order of their first row; rows in order within each.
        let mut streams: Vec<Vec<OutboxRow>> = Vec::new();
        let mut index: BTreeMap<(String, String, String), usize> = BTreeMap::new();
        for row in rows {
            let key = (
                row.partner_id.clone(),
                row.channel.clone(),
                row.trip_id.clone(),
            );
            match index.get(&key) {
                Some(&i) => streams[i].push(row),
                None => {
                    index.insert(key, streams.len());
                    streams.push(vec![row]);
                }
            }
        }
        let mut streams: Vec<std::collections::VecDeque<OutboxRow>> =
            streams.into_iter().map(Into::into).collect();
        let started = std::time::Instant::now();
        let lease_half = Duration::from_secs(self.settings.lease_s) / 2;
        loop {
            // Rows not reached while the lease is good go back for the next round, so that
            // no row is delivered after another instance may have taken it over.
            if started.elapsed() > lease_half {
                let rest: Vec<OutboxRow> = streams.iter_mut().flat_map(|s| s.drain(..)).collect();
                outbox::release(&self.store, &rest).await?;
                break;
            }
            let wave: Vec<OutboxRow> = streams.iter_mut().filter_map(|s| s.pop_front()).collect();
            if wave.is_empty() {
                break;
            }
            let outcomes = self.deliver(&wave, publisher.as_ref()).await;
            let now = Utc::now();
            let mut results = Vec::with_capacity(wave.len());
            for (row, (written, result)) in wave.iter().zip(outcomes) {
                self.metrics.outbox_attempt(&row.channel, &result);
                if !matches!(result, Attempted::Sent) {
                    // Its stream stops here for this round.
                    if let Some(stream) = streams.iter_mut().find(|s| {
                        s.front().is_some_and(|next| {
                            next.partner_id == row.partner_id
                                && next.channel == row.channel
                                && next.trip_id == row.trip_id
                        })
                    }) {
                        let held: Vec<OutboxRow> = stream.drain(..).collect();
                        outbox::release(&self.store, &held).await?;
                    }
                    tracing::warn!(partner = %row.partner_id, channel = %row.channel, seq = row.seq, ?result, "outbox delivery failed");
                }
                results.push((row, written, result));
            }
            let records: Vec<_> = results
                .iter()
                .map(|(row, w, result)| {
                    let body = w
                        .as_ref()
                        .map(|w| (w.body.as_slice(), w.content_type.as_str()));
                    (*row, body, result)
                })
                .collect();
            outbox::record_attempts(&self.store, &records, now).await?;
        }
        Ok(taken)
    }

    /// Writes and delivers one wave; one outcome per row, in order.
    async fn deliver(
        &self,
        wave: &[OutboxRow],
        publisher: Option<&lapin::Channel>,
    ) -> Vec<(Option<Written>, Attempted)> {
        let written = self.write_all(wave).await;
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let mut pending = Vec::with_capacity(wave.len());
        // Every AMQP message of the wave is published before any confirm is awaited.
        for (row, w) in wave.iter().zip(&written) {
            let Ok(w) = w else {
                pending.push(Pending::Done);
                continue;
            };
            pending.push(match row.channel.as_str() {
                "amqp" => match publisher {
                    Some(channel) => {
                        match tokio::time::timeout_at(deadline, self.publish(channel, row, w)).await
                        {
                            Ok(Ok(confirm)) => Pending::Confirm(confirm),
                            Ok(Err(e)) => Pending::Failed(format!("publishing failed: {e}")),
                            Err(_) => Pending::Failed("publishing did not finish in time".into()),
                        }
                    }
                    None => Pending::Failed("the broker is not connected".into()),
                },
                _ => Pending::Http,
            });
        }
        let mut http = Vec::new();
        for (i, (row, p)) in wave.iter().zip(&pending).enumerate() {
            if matches!(p, Pending::Http)
                && let Ok(w) = &written[i]
            {
                http.push(self.push(row, w));
            }
        }
        let mut http = futures_util::future::join_all(http).await.into_iter();
        // Confirms first. A message no queue took comes back as a return, which lapin hands
        // to whichever confirm completes next: returns are matched by message id.
        let mut confirmed: Vec<Option<Result<(), String>>> = Vec::with_capacity(wave.len());
        let mut returned = std::collections::BTreeSet::new();
        let mut pending: Vec<Pending> = pending;
        for p in pending.iter_mut() {
            let taken = match p {
                Pending::Confirm(_) => std::mem::replace(p, Pending::Confirmed),
                _ => Pending::Done,
            };
            let Pending::Confirm(confirm) = taken else {
                confirmed.push(None);
                continue;
            };
            let outcome = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(ret))) | Ok(Ok(Confirmation::Nack(ret)))
                    if ret.is_some() =>
                {
                    if let Some(id) = ret.as_ref().and_then(|r| r.properties.message_id().clone()) {
                        returned.insert(id.as_str().to_owned());
                    }
                    Ok(())
                }
                Ok(Ok(Confirmation::Ack(_))) | Ok(Ok(Confirmation::NotRequested)) => Ok(()),
                Ok(Ok(Confirmation::Nack(_))) => {
                    Err("the broker refused the message (nack)".to_owned())
                }
                Ok(Err(e)) => Err(format!("no confirm from the broker: {e}")),
                Err(_) => Err(format!(
                    "no confirm from the broker within {} ms",
                    self.confirm_timeout.as_millis()
                )),
            };
            confirmed.push(Some(outcome));
        }
        let mut out = Vec::with_capacity(wave.len());
        for (((row, w), p), c) in wave.iter().zip(written).zip(pending).zip(confirmed) {
            let failure = match (p, &w) {
                (_, Err(e)) => Some(Failure::Permanent(e.clone())),
                (Pending::Failed(e), _) => Some(Failure::Passing(e)),
                (Pending::Confirmed, _) => match c {
                    Some(Err(e)) => Some(Failure::Passing(e)),
                    _ if returned.contains(&row.message_id) => Some(Failure::Passing(format!(
                        "no queue is bound to routing key {} on exchange {}",
                        self.routing_key(row),
                        self.exchange
                    ))),
                    _ => None,
                },
                (Pending::Http, _) => http.next().flatten(),
                (Pending::Done | Pending::Confirm(_), _) => None,
            };
            let result = match failure {
                None => Attempted::Sent,
                Some(Failure::Permanent(error)) => Attempted::Parked { error },
                Some(Failure::Passing(error)) => {
                    // Counted when the row was taken: this one included.
                    let attempts = row.attempts.max(1);
                    if attempts >= i64::from(self.settings.max_attempts) {
                        Attempted::Parked {
                            error: format!("{error} (gave up after {attempts} attempts)"),
                        }
                    } else {
                        let base = self.settings.base_backoff_ms.max(1);
                        let pause = base
                            .saturating_mul(1 << ((attempts - 1).clamp(0, 30) as u32))
                            .min(self.settings.max_backoff_ms.max(base));
                        let pause = jittered(Duration::from_millis(pause));
                        Attempted::Retry {
                            error,
                            at: Utc::now()
                                + chrono::Duration::milliseconds(pause.as_millis() as i64),
                        }
                    }
                }
            };
            out.push((w.ok(), result));
        }
        out
    }

    /// Each row in its partner's format: the body kept from an earlier attempt, or written
    /// now (off the async threads: a signer is a child process).
    async fn write_all(&self, wave: &[OutboxRow]) -> Vec<Result<Written, String>> {
        let jobs: Vec<(Option<Written>, String, String, String)> = wave
            .iter()
            .map(|row| {
                let kept = row.body.clone().map(|body| Written {
                    body,
                    content_type: row
                        .content_type
                        .clone()
                        .unwrap_or_else(|| "application/octet-stream".into()),
                });
                (
                    kept,
                    row.format.clone(),
                    row.canonical.clone(),
                    crate::answers::reference_of(&row.message_id),
                )
            })
            .collect();
        let formats = self.formats.clone();
        let task = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .map(|(kept, format, canonical, reference)| match kept {
                    Some(w) => Ok(w),
                    None => write(&formats, &format, &canonical, Some(&reference)),
                })
                .collect::<Vec<_>>()
        });
        match task.await {
            Ok(written) => written,
            Err(e) => wave
                .iter()
                .map(|_| Err(format!("writing stopped: {e}")))
                .collect(),
        }
    }

    fn routing_key(&self, row: &OutboxRow) -> String {
        format!("{}.{}.{}", row.partner_id, row.format, row.kind)
    }

    async fn publish(
        &self,
        channel: &lapin::Channel,
        row: &OutboxRow,
        w: &Written,
    ) -> Result<lapin::PublisherConfirm, lapin::Error> {
        let text = |s: &str| AMQPValue::LongString(LongString::from(s.to_owned()));
        let mut headers = FieldTable::default();
        headers.insert("x-ects-trip-id".into(), text(&row.trip_id));
        headers.insert("x-ects-declaration-id".into(), text(&row.declaration_id));
        headers.insert("x-ects-message-id".into(), text(&row.message_id));
        headers.insert("x-ects-notification-id".into(), text(&row.notification_id));
        headers.insert("x-ects-kind".into(), text(&row.kind));
        headers.insert("x-ects-format".into(), text(&row.format));
        headers.insert("x-ects-partner".into(), text(&row.partner_id));
        let properties = BasicProperties::default()
            .with_message_id(short(&row.message_id))
            .with_content_type(short(&w.content_type))
            .with_delivery_mode(2)
            .with_timestamp(Utc::now().timestamp().max(0) as u64)
            .with_app_id("ects-gateway".into())
            .with_headers(headers);
        channel
            .basic_publish(
                self.exchange.clone().into(),
                self.routing_key(row).into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &w.body,
                properties,
            )
            .await
    }

    /// POSTs one message to its partner's endpoint: `None` when it took it.
    async fn push(&self, row: &OutboxRow, w: &Written) -> Option<Failure> {
        let (Some(partner), Some(client)) = (
            self.partners.get(&row.partner_id),
            self.http.get(&row.partner_id),
        ) else {
            return Some(Failure::Passing(format!(
                "partner {} has no http_push endpoint configured any more",
                row.partner_id
            )));
        };
        let url = partner.http_push.clone().unwrap_or_default();
        let mut request = client
            .post(&url)
            .header("content-type", &w.content_type)
            .header("idempotency-key", &row.message_id)
            .header("x-ects-message-id", &row.message_id)
            .header("x-ects-trip-id", &row.trip_id)
            .header("x-ects-declaration-id", &row.declaration_id)
            .header("x-ects-notification-id", &row.notification_id)
            .header("x-ects-kind", &row.kind)
            .header("x-ects-format", &row.format)
            .body(w.body.clone());
        if let Some(token) = &partner.http.bearer_token {
            use secrecy::ExposeSecret;
            request = request.bearer_auth(token.expose_secret());
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let text: String = text.chars().take(300).collect();
                let error = format!("{url} answered {status}: {text}");
                // The partner refuses this message as it is: sending it again won't help.
                // Not so for a timeout, a rate limit, or what is usually our configuration
                // (credentials, address), which someone will fix.
                use reqwest::StatusCode as S;
                if status.is_client_error()
                    && ![
                        S::REQUEST_TIMEOUT,
                        S::TOO_MANY_REQUESTS,
                        S::UNAUTHORIZED,
                        S::FORBIDDEN,
                        S::NOT_FOUND,
                    ]
                    .contains(&status)
                {
                    Some(Failure::Permanent(error))
                } else {
                    Some(Failure::Passing(error))
                }
            }
            Err(e) => Some(Failure::Passing(format!(
                "{url}: {}",
                crate::telemetry::error_chain(&e)
            ))),
        }
    }
}

/// What one dispatcher loop works on.
enum Worker {
    Partner(String),
    /// Partners with messages waiting that the configuration no longer names.
    Unconfigured,
}

enum Pending {
    Done,
    Failed(String),
    Confirm(lapin::PublisherConfirm),
    /// Its confirm has been awaited.
    Confirmed,
    Http,
}

enum Failure {
    /// Worth trying again later.
    Passing(String),
    /// Will fail the same way again: parked at once.
    Permanent(String),
}

/// A stored notification (canonical JSON) in a partner's format; also what
/// `GET /v1/trips/{id}?format=G` answers (`crate::status`).
/// With `reference` (an outbox row's, `crate::answers::reference_of`), the document carries
/// it for the partner's answer to name.
pub(crate) fn write(
    formats: &Formats,
    format: &str,
    canonical: &str,
    reference: Option<&str>,
) -> Result<Written, String> {
    let note: StatusNotification = serde_json::from_str(canonical)
        .map_err(|e| format!("the stored notification is not readable: {e}"))?;
    let writer = formats
        .get(format)
        .ok_or_else(|| format!("format {format:?} is not loaded"))?;
    let out = match reference {
        Some(r) => Outbound::Answerable(&note, r),
        None => Outbound::StatusNotification(&note),
    };
    let encoded = writer
        .encode(&out)
        .map_err(|e| format!("cannot be written as {format}: {e}"))?;
    Ok(Written {
        body: encoded.body,
        content_type: encoded.content_type.to_owned(),
    })
}

/// A client for one partner's endpoint: timeouts, and its client certificate and
/// certificate authorities when configured (mutual TLS).
fn http_client(p: &PartnerConfig, settings: &OutboxSettings) -> anyhow::Result<reqwest::Client> {
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(settings.http_timeout_s))
        .connect_timeout(Duration::from_secs(settings.http_timeout_s.min(10)))
        .user_agent(concat!("ects-gateway/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &p.http.client_identity {
        let pem = std::fs::read(path)
            .with_context(|| format!("partner {}: cannot read {}", p.id, path.display()))?;
        let identity = reqwest::Identity::from_pem(&pem).with_context(|| {
            format!(
                "partner {}: {} holds no certificate and private key",
                p.id,
                path.display()
            )
        })?;
        builder = builder.identity(identity);
    }
    if let Some(path) = &p.http.ca_certificates {
        let pem = std::fs::read(path)
            .with_context(|| format!("partner {}: cannot read {}", p.id, path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("partner {}: {} holds no certificate", p.id, path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .with_context(|| format!("partner {}: cannot build its HTTP client", p.id))
}
