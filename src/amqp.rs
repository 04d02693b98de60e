//! RabbitMQ (lapin): one durable inbound queue per partner, consumed with manual acks and a
//! prefetch; the `ects.out` topic exchange the outbox dispatcher publishes to with
//! publisher confirms. A message is acknowledged only once what it did is committed, or
//! once it is safely in its dead-letter queue. The link is supervised: when the broker goes
//! away the gateway reconnects with backoff and resumes; unacknowledged messages come back
//! from the broker and are recognised by their id, so none takes effect twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::AmqpSettings;
use crate::formats::Formats;
use crate::ingest::{Ingest, IngestError, Source};
use crate::metrics::Metrics;
use crate::partners::PartnerConfig;
use crate::problem::Located;
use crate::store::{Store, outbox};

/// What the rest of the gateway sees of the broker link.
#[derive(Debug, Clone, Default)]
pub enum Link {
    /// Not connected yet, or reconnecting; the last error if there was one.
    #[default]
    Down,
    Failed(String),
    /// Connected: the channel notifications are published on (confirms on).
    Up(Channel),
}

/// The broker link, shared with the dispatcher and `/readyz`.
#[derive(Debug, Clone)]
pub struct Broker {
    link: watch::Receiver<Link>,
}

impl Broker {
    /// The publishing channel while connected.
    pub fn publisher(&self) -> Option<Channel> {
        match &*self.link.borrow() {
            Link::Up(channel) if channel.status().connected() => Some(channel.clone()),
            _ => None,
        }
    }

    /// `ok`, or why not.
    pub fn status(&self) -> String {
        match &*self.link.borrow() {
            Link::Up(channel) if channel.status().connected() => "ok".into(),
            Link::Up(_) => "reconnecting: the channel closed".into(),
            Link::Down => "connecting".into(),
            Link::Failed(e) => format!("unreachable: {e}"),
        }
    }
}

/// What consuming needs.
#[derive(Clone)]
pub struct Inbound {
    pub ingest: Ingest,
    pub formats: Formats,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
}

/// The TLS of an `amqps://` link from `[amqp]`: `ca_file` added to the system's roots, and
/// the client certificate and key. Read and checked at start, each failure naming its key.
pub fn tls_config(settings: &AmqpSettings) -> anyhow::Result<OwnedTLSConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("amqp.{key} {}: cannot read it: {e}", path.display()))
    };
    let certificates = |key: &str, path: &std::path::Path, pem: &[u8]| {
        let n = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                anyhow::anyhow!("amqp.{key} {}: not PEM certificates: {e}", path.display())
            })?
            .len();
        anyhow::ensure!(
            n > 0,
            "amqp.{key} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        );
        Ok(())
    };
    let cert_chain =
        match &settings.ca_file {
            Some(path) => {
                let pem = read("ca_file", path)?;
                certificates("ca_file", path, &pem)?;
                Some(String::from_utf8(pem).map_err(|_| {
                    anyhow::anyhow!("amqp.ca_file {}: not PEM text", path.display())
                })?)
            }
            None => None,
        };
    let identity = match (&settings.client_cert_file, &settings.client_key_file) {
        (Some(cert), Some(key)) => {
            let pem = read("client_cert_file", cert)?;
            certificates("client_cert_file", cert, &pem)?;
            let key_pem = read("client_key_file", key)?;
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                anyhow::anyhow!(
                    "amqp.client_key_file {}: no PEM private key in it: {e}",
                    key.display()
                )
            })?;
            Some(OwnedIdentity::PKCS8 { pem, key: key_pem })
        }
        (None, None) => None,
        _ => anyhow::bail!(
            "amqp.client_cert_file and amqp.client_key_file go together: set both or neither"
        ),
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Runs the broker link: connect, declare, consume, and again after any loss.
pub struct Supervisor {
    url: SecretString,
    tls: OwnedTLSConfig,
    name: String,
    settings: AmqpSettings,
    partners: Arc<[PartnerConfig]>,
    inbound: Inbound,
    link: watch::Sender<Link>,
}

impl Supervisor {
    /// `name` is the connection's name as the broker lists it.
    pub fn new(
        url: SecretString,
        tls: OwnedTLSConfig,
        name: String,
        settings: AmqpSettings,
        partners: Arc<[PartnerConfig]>,
        inbound: Inbound,
    ) -> (Self, Broker) {
        let (link, receiver) = watch::channel(Link::Down);
        (
            Self {
                url,
                tls,
                name,
                settings,
                partners,
                inbound,
                link,
            },
            Broker { link: receiver },
        )
    }

    /// Runs until `stop` turns true: a lost link is reconnected with exponential backoff
    /// and jitter. On stop the connection is closed, so that the broker hands messages not
    /// yet acknowledged to another consumer at once.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let min = Duration::from_millis(self.settings.reconnect_min_ms.max(10));
        let max = Duration::from_millis(self.settings.reconnect_max_ms.max(10)).max(min);
        let mut pause = min;
        loop {
            let started = std::time::Instant::now();
            let error = match self.session(&mut stop).await {
                Ok(()) if *stop.borrow() => return Ok(()),
                Ok(()) => "the connection closed".to_owned(),
                Err(e) => crate::telemetry::error_chain(e.as_ref()),
            };
            tracing::warn!(error = %error, "AMQP link lost; reconnecting");
            self.link.send_replace(Link::Failed(error));
            // A link that held for a while starts the backoff again.
            if started.elapsed() > Duration::from_secs(30) {
                pause = min;
            }
            tokio::select! {
                _ = tokio::time::sleep(crate::outbox::jittered(pause)) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
            pause = (pause * 2).min(max);
        }
    }

    /// One connection's life: returns when it is lost.
    async fn session(&self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
        let properties =
            ConnectionProperties::default().with_connection_name(self.name.clone().into());
        let conn = Connection::connect_with_config(
            self.url.expose_secret(),
            properties,
            self.tls.clone(),
            lapin::runtime::default_runtime()?,
        )
        .await?;
        let mut events = conn.events_listener();
        let setup = conn.create_channel().await?;
        setup
            .exchange_declare(
                self.settings.exchange.clone().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        for p in self.partners.iter() {
            if let (Some(queue), Some(dlq)) = (&p.amqp_in, p.dead_letter_queue()) {
                // A queue read in order has one active consumer at a time, across every
                // gateway instance: the others stand by and take over if it goes.
                let mut arguments = FieldTable::default();
                if p.amqp_in_workers == 1 {
                    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
                }
                for (q, arguments) in [(queue, arguments), (&dlq, FieldTable::default())] {
                    setup
                        .queue_declare(q.clone().into(), QueueDeclareOptions::durable(), arguments)
                        .await?;
                }
            }
        }
        let publisher = conn.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut consumers = tokio::task::JoinSet::new();
        for p in self.partners.iter().filter(|p| p.amqp_in.is_some()) {
            let channel = conn.create_channel().await?;
            // At least as many messages in hand as are handled at once.
            let prefetch = self.settings.prefetch.max(p.amqp_in_workers);
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let queue = p.amqp_in.clone().unwrap_or_default();
            let consumer = channel
                .basic_consume(
                    queue.clone().into(),
                    format!("{}/{}", self.name, p.id).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let worker = Consumer {
                channel,
                partner: p.clone(),
                inbound: self.inbound.clone(),
                retry_delay: Duration::from_millis(self.settings.retry_delay_ms),
            };
            consumers.spawn(worker.run(consumer));
        }
        tracing::info!(consumers = consumers.len(), "AMQP link up");
        self.link.send_replace(Link::Up(publisher.clone()));
        let mut check = tokio::time::interval(Duration::from_secs(1));
        let result = loop {
            tokio::select! {
                Some(event) = events.next() => {
                    if let lapin::Event::Error(e) = event {
                        break Err(e.into());
                    }
                }
                Some(done) = consumers.join_next() => {
                    break match done {
                        Ok(Ok(())) => Err(anyhow::anyhow!("a consumer was cancelled by the broker")),
                        Ok(Err(e)) => Err(e.into()),
                        Err(e) => Err(e.into()),
                    };
                }
                _ = check.tick() => {
                    if !conn.status().connected() || !publisher.status().connected() {
                        break Ok(());
                    }
                }
                _ = stop.wait_for(|s| *s) => break Ok(()),
            }
        };
        self.link.send_replace(Link::Down);
        consumers.abort_all();
        let _ = conn.close(200, "reconnecting".into()).await;
        result
    }
}

/// One partner's inbound queue.
struct Consumer {
    channel: Channel,
    partner: PartnerConfig,
    inbound: Inbound,
    retry_delay: Duration,
}

/// What became of one attempt at a message.
enum Step {
    /// Acknowledged: applied, repeated, or dead-lettered.
    Done,
    /// Not applied for a passing reason (the database away): try again.
    Retry(String),
}

/// Why a message went to the dead-letter queue.
struct Rejection {
    status: u16,
    problems: Vec<Located>,
}

impl Consumer {
    /// Takes the queue's messages one at a time, in order; or, with `amqp_in_workers`
    /// above 1, that many at once (for feeds whose order the engine restores by event
    /// time, such as seal events).
    async fn run(self, mut consumer: lapin::Consumer) -> Result<(), lapin::Error> {
        let workers = usize::from(self.partner.amqp_in_workers.max(1));
        let this = Arc::new(self);
        let mut running = tokio::task::JoinSet::new();
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            while running.len() >= workers {
                if let Some(done) = running.join_next().await {
                    flatten(done)?;
                }
            }
            let worker = this.clone();
            // Boxed as Send here, where its lifetimes are concrete (a spawned future's
            // Send check cannot see through some of them).
            let handled: std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<(), lapin::Error>> + Send>,
            > = Box::pin(async move { worker.process(delivery).await });
            running.spawn(handled);
            while let Some(done) = running.try_join_next() {
                flatten(done)?;
            }
        }
        while let Some(done) = running.join_next().await {
            flatten(done)?;
        }
        Ok(())
    }

    /// Takes one message in, trying again in place (not handing it back to the broker,
    /// which would let the messages behind it overtake it) while the failure is passing.
    async fn process(&self, delivery: lapin::message::Delivery) -> Result<(), lapin::Error> {
        let mut pause = self.retry_delay;
        loop {
            match self.handle(&delivery).await? {
                Step::Done => return Ok(()),
                Step::Retry(why) => {
                    tracing::warn!(partner = %self.partner.id, error = %why, retry_in_ms = pause.as_millis() as u64, "message not applied yet; trying again");
                    tokio::time::sleep(crate::outbox::jittered(pause)).await;
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Takes one message in. Errors are the channel's own (the link is then rebuilt);
    /// everything else ends in an ack (applied, repeated, or dead-lettered) or, for a
    /// passing failure, a nack that hands it back to the broker.
    async fn handle(&self, delivery: &lapin::message::Delivery) -> Result<Step, lapin::Error> {
        let body = &delivery.data;
        let transport_id = match delivery.properties.message_id() {
            Some(id) if !id.as_str().is_empty() => id.as_str().to_owned(),
            _ => format!("sha256:{}", hex::encode(Sha256::digest(body))),
        };
        let partner = &self.partner;
        // The queue is bound to the partner's broker user: RabbitMQ checks `user_id`
        // against the publishing connection's user, so a message with another (or none)
        // was not published by the partner.
        if let Some(expected) = &partner.amqp_user_id
            && delivery.properties.user_id().as_ref().map(|u| u.as_str()) != Some(expected)
        {
            let rejection = Rejection {
                status: 403,
                problems: vec![Located::pointer(
                    "",
                    "the message's AMQP user_id property is not the broker user of this \
                     queue's partner: only that partner may publish here, with user_id set"
                        .to_owned(),
                )],
            };
            return self.dead_letter(delivery, &transport_id, &rejection).await;
        }
        let Some(format) = self.inbound.formats.get(&partner.format).cloned() else {
            // Checked at start-up; a message cannot be read without its format.
            return Ok(Step::Retry("the partner's format is unknown".into()));
        };
        if body.len() > self.inbound.max_body_bytes {
            let rejection = Rejection {
                status: 413,
                problems: vec![Located::pointer(
                    "",
                    format!(
                        "the message is {} bytes, over the limit of {} bytes",
                        body.len(),
                        self.inbound.max_body_bytes
                    ),
                )],
            };
            return self.dead_letter(delivery, &transport_id, &rejection).await;
        }
        let sha256 = hex::encode(Sha256::digest(body));
        match outbox::prior_inbound(&self.inbound.store, &partner.id, &transport_id).await {
            Err(e) => return Ok(Step::Retry(crate::telemetry::error_chain(&e))),
            Ok(Some(prior)) if prior.body_sha256 != sha256 => {
                // The id names another message: applying this one under it would make the
                // id mean two things, and ignoring it would lose it.
                let rejection = Rejection {
                    status: 409,
                    problems: vec![Located::pointer(
                        "",
                        format!(
                            "message id {transport_id:?} was already used by this partner for \
                             a different message (received {}); send this one under its own id",
                            prior.received_at
                        ),
                    )],
                };
                return self.dead_letter(delivery, &transport_id, &rejection).await;
            }
            Ok(Some(_)) => {
                tracing::info!(partner = %partner.id, transport_id, "redelivered message already applied");
                return delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map(|_| Step::Done);
            }
            // Never seen, or rejected before (a conflict may have cleared): read it now.
            Ok(None) => {}
        }
        let content_type = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str().to_owned());
        let scope = crate::ingest::Scope::of_partner(partner);
        let source = Source {
            transport: "amqp",
            sender: &partner.id,
            content_type: content_type.as_deref(),
            message_id: Some(&transport_id),
            partner: Some(&partner.id),
            authority: Some(&partner.authority),
            scope: Some(&scope),
            platform: None,
        };
        // A partner's answer to what the outbox sent it (an ICEGATE ACK, a WCO DMS
        // notification) comes on the same queue as its filings.
        // Told apart on the decode pool, like the decoding itself.
        let body_bytes = actix_web::web::Bytes::copy_from_slice(body);
        let detected = {
            let job_body = body_bytes.clone();
            self.inbound
                .ingest
                .decode_pool()
                .run(move || crate::answers::detect(&job_body))
                .await
        };
        let (format_id, result) = match detected {
            Err(e) => (format.id(), Err(IngestError::from(e))),
            Ok(Some(answer)) => (
                answer.id(),
                self.inbound
                    .ingest
                    .answer(answer, body, source, Utc::now())
                    .await,
            ),
            Ok(None) => (
                format.id(),
                self.inbound
                    .ingest
                    .ingest(format.clone(), body_bytes, source, Utc::now())
                    .await,
            ),
        };
        self.inbound.metrics.message_in(format_id, &result);
        match result {
            Ok(_) => delivery
                .ack(BasicAckOptions::default())
                .await
                .map(|_| Step::Done),
            Err(IngestError::Document(e)) => {
                let status = match e {
                    crate::problem::DocumentError::Malformed(_) => 400,
                    crate::problem::DocumentError::Invalid(_) => 422,
                };
                let rejection = Rejection {
                    status,
                    problems: e.into_problems(),
                };
                self.dead_letter(delivery, &transport_id, &rejection).await
            }
            Err(IngestError::Conflict(located)) => {
                let rejection = Rejection {
                    status: 409,
                    problems: vec![located],
                };
                self.dead_letter(delivery, &transport_id, &rejection).await
            }
            Err(IngestError::Forbidden(located)) => {
                let rejection = Rejection {
                    status: 403,
                    problems: vec![located],
                };
                self.dead_letter(delivery, &transport_id, &rejection).await
            }
            Err(IngestError::NotFound(located)) => {
                let rejection = Rejection {
                    status: 404,
                    problems: vec![located],
                };
                self.dead_letter(delivery, &transport_id, &rejection).await
            }
            // Stored data the gateway cannot read will not heal by waiting.
            Err(IngestError::Store(e @ crate::store::StoreError::Corrupt(_))) => {
                let rejection = Rejection {
                    status: 500,
                    problems: vec![Located::pointer("", crate::telemetry::error_chain(&e))],
                };
                self.dead_letter(delivery, &transport_id, &rejection).await
            }
            // A decoder that panicked will panic again: kept aside, not retried.
            Err(IngestError::Pool(e)) => {
                let rejection = Rejection {
                    status: 500,
                    problems: vec![Located::pointer("", crate::telemetry::error_chain(&e))],
                };
                self.dead_letter(delivery, &transport_id, &rejection).await
            }
            Err(IngestError::Store(e)) => Ok(Step::Retry(crate::telemetry::error_chain(&e))),
        }
    }

    /// Publishes the message, body untouched, to the dead-letter queue with why in its
    /// headers; acknowledges it once the broker has confirmed the copy.
    async fn dead_letter(
        &self,
        delivery: &lapin::message::Delivery,
        transport_id: &str,
        rejection: &Rejection,
    ) -> Result<Step, lapin::Error> {
        let partner = &self.partner;
        let dlq = partner.dead_letter_queue().unwrap_or_default();
        let first = rejection.problems.first();
        let reason = if rejection.problems.is_empty() {
            "rejected".to_owned()
        } else {
            rejection
                .problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        let location = first
            .map(|l| {
                let mut at = l
                    .pointer
                    .clone()
                    .or_else(|| l.path.clone())
                    .unwrap_or_default();
                if let (Some(line), Some(column)) = (l.line, l.column) {
                    if !at.is_empty() {
                        at.push(' ');
                    }
                    at.push_str(&format!("line {line}, column {column}"));
                }
                at
            })
            .unwrap_or_default();
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let text = |s: String| AMQPValue::LongString(LongString::from(s));
        headers.insert("x-ects-reason".into(), text(reason.clone()));
        headers.insert("x-ects-location".into(), text(location));
        headers.insert(
            "x-ects-problems".into(),
            text(serde_json::to_string(&rejection.problems).unwrap_or_default()),
        );
        headers.insert("x-ects-partner".into(), text(partner.id.clone()));
        headers.insert("x-ects-format".into(), text(partner.format.clone()));
        headers.insert(
            "x-ects-status".into(),
            AMQPValue::LongInt(i32::from(rejection.status)),
        );
        headers.insert(
            "x-ects-transport-message-id".into(),
            text(transport_id.to_owned()),
        );
        headers.insert(
            "x-ects-queue".into(),
            text(partner.amqp_in.clone().unwrap_or_default()),
        );
        let mut properties = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        if delivery.properties.message_id().is_none() {
            properties = properties.with_message_id(short(transport_id));
        }
        tracing::info!(partner = %partner.id, dlq, status = rejection.status, reason, "message dead-lettered");
        let published = self
            .channel
            .basic_publish(
                "".into(),
                dlq.into(),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await?;
        // A confirm can be lost with its connection: waited for a bounded time.
        match tokio::time::timeout(Duration::from_secs(30), published).await {
            Ok(Ok(Confirmation::Ack(_) | Confirmation::NotRequested)) => delivery
                .ack(BasicAckOptions::default())
                .await
                .map(|_| Step::Done),
            Ok(Ok(Confirmation::Nack(_))) => Ok(Step::Retry(
                "the broker refused the dead-letter copy".into(),
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(Step::Retry(
                "no confirm of the dead-letter copy within 30 s".into(),
            )),
        }
    }
}

fn flatten(
    done: Result<Result<(), lapin::Error>, tokio::task::JoinError>,
) -> Result<(), lapin::Error> {
    match done {
        Ok(result) => result,
        // A handler that panicked left its message unacknowledged: the link is rebuilt,
        // so that the broker hands it back (in order) instead of holding it.
        Err(e) => {
            tracing::error!(error = %e, "an inbound message handler stopped");
            Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                lapin::ChannelState::Error,
                "an inbound message handler stopped",
            )))
        }
    }
}

/// A short string of AMQP (at most 255 bytes), cut at a character boundary.
pub fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&s[..end])
}
