//! AMQP end to end against the real RabbitMQ of `TEST_AMQP_URL`: partners publish to their
//! inbound queues, notifications come out of `ects.out` in each subscriber's format, bad
//! messages land in the dead-letter queue, and the link survives the broker closing it
//! and the gateway restarting, with every message applied once and every notification
//! delivered.
//!
//! Each test uses partner ids of its own, so tests running at once on one broker do not
//! see each other's messages.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ects_gateway::config::Settings;
use ects_gateway::partners::PartnerConfig;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, TEST_BODY_LIMIT, TestApp, fixture, product_mappings_dir, spawn_app_with, test_settings,
};
use crate::tracking::{DEPARTURE_LON, DESTINATION_LON, LAT, register_geometry, road_lon, t};

/// The broker of the test machine; `None` (skip) outside CI when unset.
pub(crate) fn amqp_url() -> Option<String> {
    match std::env::var("TEST_AMQP_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "TEST_AMQP_URL must be set in CI: the AMQP tests would not run"
            );
            eprintln!("TEST_AMQP_URL is not set: skipping this AMQP test");
            None
        }
    }
}

pub(crate) fn suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()[24..].to_owned()
}

pub(crate) fn partner(toml: &str) -> PartnerConfig {
    toml::from_str(toml).expect("a partner entry")
}

/// A single window that files declarations on its queue and hears of them in ects-json;
/// an authority on the itinerary (SV, WCO); an authority that is not (MX).
struct Parties {
    sw: String,
    sv: String,
    mx: String,
}

impl Parties {
    fn new() -> Self {
        let s = suffix();
        Self {
            sw: format!("sw-{s}"),
            sv: format!("sv-{s}"),
            mx: format!("mx-{s}"),
        }
    }

    fn inbound_queue(&self) -> String {
        format!("ects.test.in.{}", self.sw)
    }

    fn partners(&self) -> Vec<PartnerConfig> {
        vec![
            partner(&format!(
                "id = \"{}\"\nauthority = \"GT\"\nformat = \"ects-json\"\namqp_in = \"{}\"\n\
                 sees = \"filed\"\nsubscribe = [\"status\"]\n",
                self.sw,
                self.inbound_queue()
            )),
            partner(&format!(
                "id = \"{}\"\nauthority = \"SV\"\nformat = \"wco-dm\"\nsubscribe = [\"status\", \"alert\"]\n",
                self.sv
            )),
            partner(&format!(
                "id = \"{}\"\nauthority = \"MX\"\nformat = \"ects-json\"\nsubscribe = [\"status\"]\n",
                self.mx
            )),
        ]
    }
}

fn configure(settings: &mut Settings, url: &str, partners: Vec<PartnerConfig>) {
    settings.amqp_url = Some(SecretString::from(url.to_owned()));
    settings.partners = partners;
    settings.outbox.poll_ms = 50;
    settings.outbox.base_backoff_ms = 100;
    settings.outbox.max_backoff_ms = 1_000;
    settings.amqp.retry_delay_ms = 200;
    settings.amqp.reconnect_min_ms = 100;
    settings.amqp.reconnect_max_ms = 1_000;
    settings.amqp.confirm_timeout_ms = 2_000;
}

pub(crate) async fn spawn(
    backend: Backend,
    url: &str,
    partners: Vec<PartnerConfig>,
) -> Option<TestApp> {
    let app = spawn_app_with(backend, product_mappings_dir(), |s| {
        configure(s, url, partners)
    })
    .await?;
    wait_ready(&app).await;
    Some(app)
}

/// Until `/readyz` reports the broker linked.
pub(crate) async fn wait_ready(app: &TestApp) {
    crate::helpers::eventually("the broker link (/readyz)", || async {
        let reply = app.get("/readyz").await;
        if reply.status == 200 && reply.json()["broker"] == "ok" {
            Ok(())
        } else {
            Err(reply.text)
        }
    })
    .await
}

pub(crate) async fn connect(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("the test broker is reachable");
    let channel = conn.create_channel().await.expect("a channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (conn, channel)
}

pub(crate) async fn publish(channel: &Channel, queue: &str, body: &[u8], message_id: Option<&str>) {
    // The gateway has declared the queue (the tests publish once it is ready).
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if let Some(id) = message_id {
        properties = properties.with_message_id(id.into());
    }
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("published")
        .await
        .expect("confirmed");
    assert!(confirm.is_ack(), "the broker took the message");
}

/// One message as a partner's queue receives it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) routing_key: String,
    pub(crate) message_id: String,
    pub(crate) content_type: String,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) body: Vec<u8>,
}

fn header_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongInt(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// A queue of the test's own, bound to `ects.out` (or a named queue), read without acks.
pub(crate) struct Listener {
    _conn: Connection,
    consumer: lapin::Consumer,
    pub(crate) seen: Vec<Received>,
}

impl Listener {
    pub(crate) async fn on_exchange(url: &str, keys: &[String]) -> Self {
        let (conn, channel) = connect(url).await;
        channel
            .exchange_declare(
                "ects.out".into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the exchange");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("a queue of our own");
        for key in keys {
            channel
                .queue_bind(
                    queue.name().clone(),
                    "ects.out".into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bound");
        }
        Self::consume(conn, channel, queue.name().as_str()).await
    }

    pub(crate) async fn on_queue(url: &str, queue: &str) -> Self {
        let (conn, channel) = connect(url).await;
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .expect("the queue");
        Self::consume(conn, channel, queue).await
    }

    async fn consume(conn: Connection, channel: Channel, queue: &str) -> Self {
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consuming");
        Self {
            _conn: conn,
            consumer,
            seen: Vec::new(),
        }
    }

    /// Reads until `done` holds for what was seen; gives up (failing the test, saying
    /// `what`) after the suite's wait limit.
    pub(crate) async fn until(&mut self, what: &str, done: impl Fn(&[Received]) -> bool) {
        if !self.read_for(crate::helpers::wait_limit(), done).await {
            panic!(
                "gave up after {} s waiting for {what}; {} message(s) seen",
                crate::helpers::wait_limit().as_secs(),
                self.seen.len()
            );
        }
    }

    /// Reads for `within` or until `done` holds; whether it does.
    async fn read_for(&mut self, within: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match tokio::time::timeout(left, self.consumer.next()).await {
                Ok(Some(Ok(d))) => self.seen.push(Received {
                    routing_key: d.routing_key.as_str().to_owned(),
                    message_id: d
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|m| m.as_str().to_owned())
                        .unwrap_or_default(),
                    content_type: d
                        .properties
                        .content_type()
                        .as_ref()
                        .map(|m| m.as_str().to_owned())
                        .unwrap_or_default(),
                    headers: d
                        .properties
                        .headers()
                        .as_ref()
                        .map(|h| {
                            h.inner()
                                .iter()
                                .map(|(k, v)| (k.as_str().to_owned(), header_text(v)))
                                .collect()
                        })
                        .unwrap_or_default(),
                    body: d.data,
                }),
                Ok(Some(Err(e))) => panic!("the test's consumer failed: {e}"),
                Ok(None) => panic!("the test's consumer was cancelled"),
                Err(_) => return false,
            }
        }
        true
    }

    pub(crate) fn for_partner(&self, partner: &str) -> Vec<&Received> {
        self.seen
            .iter()
            .filter(|r| r.routing_key.starts_with(&format!("{partner}.")))
            .collect()
    }
}

/// The GT → SV fixture as declaration `n`: its own id, seals and devices.
pub(crate) fn declaration(n: usize) -> (Vec<u8>, [(String, String); 2]) {
    let mut d: Value =
        serde_json::from_slice(&fixture("ects-json/declaration-gt-sv.json")).expect("the fixture");
    d["declaration_id"] = json!(format!("GT-2026-T-{n:06}"));
    let seals = [
        (
            format!("ES{:08}", 10_000 + 2 * n),
            format!("86{:013}", 2 * n + 1),
        ),
        (
            format!("ES{:08}", 10_001 + 2 * n),
            format!("86{:013}", 2 * n + 2),
        ),
    ];
    for (e, (seal, device)) in seals.iter().enumerate() {
        d["equipment"][e]["seals"][0]["id"] = json!(seal);
        d["equipment"][e]["seals"][0]["device_id"] = json!(device);
        d["equipment"][e]["seals"][1]["id"] = json!(format!("GTB{:07}", 2 * n + e));
    }
    (serde_json::to_vec(&d).unwrap(), seals)
}

fn event(seal: &(String, String), seq: u64, minute: i64, kind: &str, lon: f64) -> Value {
    json!({"device_id": seal.1, "seal_id": seal.0, "seq": seq, "kind": kind,
           "time": t(minute).to_rfc3339(), "battery_pct": 90,
           "position": {"lat": LAT, "lon": lon, "fix": "gps", "speed_kmh": 60.0}})
}

/// Locked at the office and out on the road (armed, then in transit); then into the
/// destination office (arrived): three status changes.
fn journey(seals: &[(String, String); 2]) -> [Vec<u8>; 2] {
    let out = json!([
        event(&seals[0], 1, 0, "locked", DEPARTURE_LON),
        event(&seals[1], 1, 0, "locked", DEPARTURE_LON),
        event(&seals[0], 2, 2, "position", road_lon(2)),
        event(&seals[0], 3, 3, "position", road_lon(3)),
    ]);
    let arrive = json!([
        event(&seals[0], 4, 100, "position", DESTINATION_LON),
        event(&seals[0], 5, 101, "position", DESTINATION_LON),
    ]);
    [
        out.to_string().into_bytes(),
        arrive.to_string().into_bytes(),
    ]
}

async fn trips_of(app: &TestApp, declaration_id: &str) -> Vec<Value> {
    let reply = app
        .get(&format!("/v1/trips?reference={declaration_id}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["trips"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `count(condition)` reaches `n`.
async fn wait_count(app: &TestApp, table: &str, condition: &str, n: i64) {
    let what = format!("{n} row(s) of {table} where {condition}");
    crate::helpers::eventually(&what, || async {
        let got = app.count_where(table, condition).await;
        if got >= n {
            Ok(())
        } else {
            Err(format!("{got} row(s)"))
        }
    })
    .await
}

fn statuses<'a>(received: &[&'a Received]) -> Vec<&'a Received> {
    received
        .iter()
        .copied()
        .filter(|r| r.routing_key.ends_with(".status"))
        .collect()
}

async fn a_declaration_on_a_partner_queue_opens_a_trip_and_its_news_go_out(backend: Backend) {
    let Some(url) = amqp_url() else { return };
    let parties = Parties::new();
    let mut listener = Listener::on_exchange(
        &url,
        &[
            format!("{}.#", parties.sw),
            format!("{}.#", parties.sv),
            format!("{}.#", parties.mx),
        ],
    )
    .await;
    let Some(app) = spawn(backend, &url, parties.partners()).await else {
        return;
    };
    register_geometry(&app).await;
    let (_conn, channel) = connect(&url).await;
    let queue = parties.inbound_queue();
    let (body, seals) = declaration(1);
    publish(&channel, &queue, &body, Some("decl-1")).await;
    let [out, arrive] = journey(&seals);
    publish(&channel, &queue, &out, Some("journey-1a")).await;
    publish(&channel, &queue, &arrive, Some("journey-1b")).await;

    // Three status changes, to the filer in ects-json and to SV (on the itinerary) in
    // WCO; nothing to MX, which is not party to this transit.
    listener
        .until("three status changes to each subscriber", |seen| {
            let n = |p: &str| {
                seen.iter()
                    .filter(|r| r.routing_key == format!("{p}.status"))
                    .count()
            };
            n(&format!("{}.ects-json", parties.sw)) >= 3
                && n(&format!("{}.wco-dm", parties.sv)) >= 3
        })
        .await;
    let trips = trips_of(&app, "GT-2026-T-000001").await;
    assert_eq!(trips.len(), 1, "one trip: {trips:?}");
    let trip_id = trips[0]["trip_id"].as_str().unwrap().to_owned();
    assert_eq!(trips[0]["state"], "arrived");

    let filer = listener.for_partner(&parties.sw);
    let mut once = BTreeSet::new();
    let states: Vec<String> = statuses(&filer)
        .iter()
        .filter(|r| once.insert(r.message_id.clone()))
        .map(|r| {
            let note: Value = serde_json::from_slice(&r.body).expect("ects-json");
            note["state"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(states, ["armed", "in_transit", "arrived"], "in order");
    // (A message whose confirm was lost may come twice, under the same id.)
    let mut once = BTreeSet::new();
    let sv: Vec<&Received> = statuses(&listener.for_partner(&parties.sv))
        .into_iter()
        .filter(|r| once.insert(r.message_id.clone()))
        .collect();
    assert_eq!(sv.len(), 3, "{sv:?}");
    for r in &sv {
        assert_eq!(r.routing_key, format!("{}.wco-dm.status", parties.sv));
        assert!(r.content_type.contains("xml"), "{}", r.content_type);
        assert!(r.body.starts_with(b"<"), "WCO XML");
        assert_eq!(r.headers["x-ects-trip-id"], trip_id);
        assert_eq!(r.headers["x-ects-declaration-id"], "GT-2026-T-000001");
        assert_eq!(r.headers["x-ects-message-id"], r.message_id);
    }
    let ids: BTreeSet<&str> = sv.iter().map(|r| r.message_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "each notification has its own message id");

    // The same declaration again under the same message id, then under none (its body's
    // hash): neither takes effect again. A last message shows the consumer went past them.
    publish(&channel, &queue, &body, Some("decl-1")).await;
    publish(&channel, &queue, &body, None).await;
    let (other, _) = declaration(2);
    publish(&channel, &queue, &other, Some("decl-2")).await;
    wait_count(
        &app,
        "messages",
        "transport_message_id = 'decl-2' and outcome = 'accepted'",
        1,
    )
    .await;
    assert_eq!(
        app.count_where(
            "messages",
            "transport_message_id = 'decl-1' and outcome = 'accepted'"
        )
        .await,
        1
    );
    assert_eq!(trips_of(&app, "GT-2026-T-000001").await.len(), 1);

    // The outbox shows what went out, sent; nothing for MX.
    let reply = app
        .get(&format!("/v1/outbox?partner={}&status=sent", parties.sv))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let sent = reply.json()["messages"].as_array().cloned().unwrap();
    assert!(sent.len() >= 3, "{sent:?}");
    assert!(sent.iter().all(|m| m["channel"] == "amqp"));
    let reply = app.get(&format!("/v1/outbox?partner={}", parties.mx)).await;
    assert_eq!(reply.json()["messages"], json!([]));
    listener
        .read_for(Duration::from_millis(300), |_| false)
        .await;
    assert!(listener.for_partner(&parties.mx).is_empty());
    assert_eq!(
        app.get("/v1/outbox?status=nope").await.status,
        400,
        "an unknown status is a bad parameter"
    );
}

async fn bad_messages_go_to_the_dead_letter_queue_and_the_consumer_goes_on(backend: Backend) {
    let Some(url) = amqp_url() else { return };
    let parties = Parties::new();
    let queue = parties.inbound_queue();
    let mut dlq = Listener::on_queue(&url, &format!("{queue}.dlq")).await;
    let Some(app) = spawn(backend, &url, parties.partners()).await else {
        return;
    };
    let (_conn, channel) = connect(&url).await;

    let garbage = b"\x00\x01 this is not JSON".to_vec();
    let mut invalid: Value =
        serde_json::from_slice(&fixture("ects-json/declaration-gt-sv.json")).unwrap();
    invalid["office_of_departure"]
        .as_object_mut()
        .unwrap()
        .remove("country");
    let invalid = serde_json::to_vec(&invalid).unwrap();
    let mut oversized = b"{\"declaration_id\": \"".to_vec();
    oversized.extend(std::iter::repeat_n(b'A', TEST_BODY_LIMIT));
    oversized.extend(b"\"}");
    publish(&channel, &queue, &garbage, Some("bad-garbage")).await;
    publish(&channel, &queue, &invalid, Some("bad-schema")).await;
    publish(&channel, &queue, &oversized, Some("bad-size")).await;
    let (good, _) = declaration(7);
    publish(&channel, &queue, &good, Some("good")).await;

    dlq.until("three dead letters", |seen| seen.len() >= 3)
        .await;
    let by_id: BTreeMap<&str, &Received> = dlq
        .seen
        .iter()
        .map(|r| (r.message_id.as_str(), r))
        .collect();
    assert_eq!(dlq.seen.len(), 3, "{:?}", dlq.seen);
    for (id, body, status) in [
        ("bad-garbage", &garbage, "400"),
        ("bad-schema", &invalid, "422"),
        ("bad-size", &oversized, "413"),
    ] {
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{id} dead-lettered"));
        assert_eq!(&r.body, body, "{id}: the body untouched");
        assert_eq!(r.headers["x-ects-partner"], parties.sw);
        assert_eq!(r.headers["x-ects-status"], status, "{id}");
        assert!(!r.headers["x-ects-reason"].is_empty(), "{id}");
        assert_eq!(r.headers["x-ects-queue"], queue);
    }
    let schema = by_id["bad-schema"];
    assert_eq!(
        schema.headers["x-ects-location"], "/office_of_departure",
        "{:?}",
        schema.headers
    );
    assert!(
        schema.headers["x-ects-reason"].contains("country"),
        "{}",
        schema.headers["x-ects-reason"]
    );
    assert!(by_id["bad-size"].headers["x-ects-reason"].contains("over the limit"));

    // The consumer went on: the good declaration after them opened its trip.
    wait_count(
        &app,
        "messages",
        "transport_message_id = 'good' and outcome = 'accepted'",
        1,
    )
    .await;
    assert_eq!(trips_of(&app, "GT-2026-T-000007").await.len(), 1);
    // The rejected ones are kept as evidence, with their problem.
    assert_eq!(
        app.count_where(
            "messages",
            "transport_message_id in ('bad-garbage', 'bad-schema') and outcome = 'rejected'"
        )
        .await,
        2
    );

    // A batch whose one event contradicts a stored one is taken, not dead-lettered: the
    // rest is applied, the conflicting one kept as evidence (issue 14).
    let (_, seals) = declaration(7);
    let first = json!([event(&seals[0], 1, 0, "locked", DEPARTURE_LON)]).to_string();
    publish(&channel, &queue, first.as_bytes(), Some("events-1")).await;
    let accepted = |id: &str| format!("transport_message_id = '{id}' and outcome = 'accepted'");
    wait_count(&app, "messages", &accepted("events-1"), 1).await;
    let second = json!([
        event(&seals[1], 1, 0, "locked", DEPARTURE_LON),
        event(&seals[0], 1, 5, "rope_cut", DEPARTURE_LON)
    ])
    .to_string();
    publish(&channel, &queue, second.as_bytes(), Some("events-2")).await;
    wait_count(&app, "messages", &accepted("events-2"), 1).await;
    assert_eq!(app.count("seal_event_conflicts").await, 1);
    assert_eq!(
        app.count_where("seal_events", &format!("device_id = '{}'", seals[1].1))
            .await,
        1
    );
    dlq.read_for(Duration::from_secs(2), |seen| seen.len() > 3)
        .await;
    assert_eq!(dlq.seen.len(), 3, "{:?}", dlq.seen);
}

/// An Indian custom house files Bills of Entry on its queue in ICES 1.5 flat files: F opens
/// the trip, A amends it before departure, D cancels it; an A after departure goes to the
/// dead-letter queue with the reason (409).
async fn ices_amendments_and_deletions_on_a_partner_queue(backend: Backend) {
    use crate::icegate::message_types::{Be, bill_of_entry, departed};
    let Some(url) = amqp_url() else { return };
    let id = format!("in-{}", suffix());
    let queue = format!("ects.test.in.{id}");
    let other = format!("np-{}", suffix());
    let other_queue = format!("ects.test.np.{other}");
    let partners = vec![
        partner(&format!(
            "id = \"{id}\"\nauthority = \"IN\"\nformat = \"icegate-flat\"\namqp_in = \"{queue}\"\n"
        )),
        partner(&format!(
            "id = \"{other}\"\nauthority = \"NP\"\nformat = \"icegate-flat\"\namqp_in = \"{other_queue}\"\n"
        )),
    ];
    let mut dlq = Listener::on_queue(&url, &format!("{queue}.dlq")).await;
    let mut other_dlq = Listener::on_queue(&url, &format!("{other_queue}.dlq")).await;
    let Some(app) = spawn(backend, &url, partners).await else {
        return;
    };
    let (_conn, channel) = connect(&url).await;
    let accepted = |m: &str| format!("transport_message_id = '{m}' and outcome = 'accepted'");

    publish(
        &channel,
        &queue,
        &bill_of_entry(&Be::default()),
        Some("be-f"),
    )
    .await;
    wait_count(&app, "messages", &accepted("be-f"), 1).await;
    let amendment = Be {
        kind: 'A',
        control: "000124",
        seal_2: "ES00781299",
        truck: "TN01AB9999",
        ..Be::default()
    };
    publish(&channel, &queue, &bill_of_entry(&amendment), Some("be-a")).await;
    wait_count(&app, "messages", &accepted("be-a"), 1).await;
    let trips = trips_of(&app, "4571").await;
    assert_eq!(trips.len(), 1, "{trips:?}");
    assert_eq!(trips[0]["equipment"][1]["seals"][0]["id"], "ES00781299");
    assert_eq!(
        app.count_where("declaration_versions", "declaration_id = '4571'")
            .await,
        2
    );

    // After departure: dead-lettered with the reason, the trip unchanged.
    let trip = departed(&app, "4580").await;
    let late = Be {
        kind: 'A',
        job: "4580",
        ..Be::default()
    };
    let late_body = bill_of_entry(&late);
    publish(&channel, &queue, &late_body, Some("be-late-a")).await;
    dlq.until("the late amendment in the dead-letter queue", |seen| {
        !seen.is_empty()
    })
    .await;
    assert_eq!(
        dlq.seen.len(),
        1,
        "waited for the late amendment in the dead-letter queue: {:?}",
        dlq.seen
    );
    let dead = &dlq.seen[0];
    assert_eq!(dead.message_id, "be-late-a");
    assert_eq!(dead.body, late_body, "the body untouched");
    assert_eq!(dead.headers["x-ects-status"], "409");
    assert!(
        dead.headers["x-ects-reason"].contains("amended only before departure"),
        "{:?}",
        dead.headers
    );
    assert_eq!(app.trip(&trip).await["state"], "in_transit");

    // Another country's partner may not amend or delete what this one filed: 403.
    for (kind, message_id) in [('A', "np-a"), ('D', "np-d")] {
        let body = bill_of_entry(&Be {
            kind,
            control: "000126",
            ..Be::default()
        });
        publish(&channel, &other_queue, &body, Some(message_id)).await;
    }
    other_dlq
        .until(
            "two dead-lettered amendments or deletions from another partner",
            |seen| seen.len() >= 2,
        )
        .await;
    assert_eq!(other_dlq.seen.len(), 2, "{:?}", other_dlq.seen);
    for dead in &other_dlq.seen {
        assert_eq!(dead.headers["x-ects-status"], "403", "{:?}", dead.headers);
        assert!(
            dead.headers["x-ects-reason"].contains(&format!("partner {other} may not")),
            "{:?}",
            dead.headers
        );
    }
    let trips = trips_of(&app, "4571").await;
    assert_eq!(trips[0]["state"], "declared");
    assert_eq!(trips[0]["equipment"][1]["seals"][0]["id"], "ES00781299");

    let deletion = Be {
        kind: 'D',
        control: "000125",
        ..amendment
    };
    publish(&channel, &queue, &bill_of_entry(&deletion), Some("be-d")).await;
    wait_count(&app, "messages", &accepted("be-d"), 1).await;
    assert_eq!(trips_of(&app, "4571").await[0]["state"], "cancelled");
}

/// Closes the gateway's broker connection from the broker's side, as an operator (or a
/// broker restart) would.
fn close_gateway_connection(port: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let wanted = format!(":{port}\"");
    let pids: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ects-gateway") && l.contains(&wanted))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        !pids.is_empty(),
        "the gateway's connection is listed:\n{text}"
    );
    for pid in pids {
        let status = std::process::Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "closed by the test"])
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success(), "close_connection {pid}");
    }
}

async fn the_link_and_the_gateway_restart_mid_stream_and_nothing_is_lost_or_doubled(
    backend: Backend,
) {
    let Some(url) = amqp_url() else { return };
    const TRIPS: usize = 12;
    let parties = Parties::new();
    let mut listener = Listener::on_exchange(
        &url,
        &[format!("{}.#", parties.sw), format!("{}.#", parties.sv)],
    )
    .await;
    let Some(first) = spawn(backend, &url, parties.partners()).await else {
        return;
    };
    register_geometry(&first).await;
    let (_conn, channel) = connect(&url).await;
    let queue = parties.inbound_queue();
    for n in 0..TRIPS {
        let (body, seals) = declaration(100 + n);
        let [out, arrive] = journey(&seals);
        publish(&channel, &queue, &body, Some(&format!("d-{n}"))).await;
        publish(&channel, &queue, &out, Some(&format!("o-{n}"))).await;
        publish(&channel, &queue, &arrive, Some(&format!("a-{n}"))).await;
    }
    let expected = 3 * TRIPS; // status notifications per subscriber
    let port = first.address.rsplit(':').next().unwrap().to_owned();

    // A quarter in (of both subscribers' messages): the broker drops the gateway's
    // connection.
    listener
        .until("a quarter of the notifications", |seen| {
            seen.len() >= expected / 2
        })
        .await;
    close_gateway_connection(&port);
    // Over half: the gateway stops (gracefully) and another starts on the same database.
    listener
        .until("half of the notifications", |seen| seen.len() >= expected)
        .await;
    first.stopper.stop().await;
    let mut settings = test_settings(product_mappings_dir());
    configure(&mut settings, &url, parties.partners());
    let second = first.another(settings).await;
    wait_ready(&second).await;
    listener
        .until("every notification, once each", |seen| {
            let distinct: BTreeSet<&str> = seen
                .iter()
                .filter(|r| r.routing_key.ends_with(".status"))
                .map(|r| r.message_id.as_str())
                .collect();
            distinct.len() >= 2 * expected
        })
        .await;

    // Every inbound message took effect once: one trip per declaration, each arrived,
    // each message accepted once.
    for n in 0..TRIPS {
        let trips = trips_of(&second, &format!("GT-2026-T-{:06}", 100 + n)).await;
        assert_eq!(trips.len(), 1, "declaration {n}");
        assert_eq!(trips[0]["state"], "arrived", "trip {n}");
    }
    assert_eq!(
        second
            .count_where("messages", "direction = 'in' and outcome = 'accepted'")
            .await,
        3 * TRIPS as i64,
        "every inbound message accepted once"
    );

    // Every notification reached each subscriber, in order per trip. One sent again is
    // only one whose broker confirm was lost with the connection (it was tried again),
    // and it carries the same message id, so the partner takes it once.
    // (A row is recorded as sent just after its confirm: waited for.)
    let outbox = crate::helpers::eventually("every outbox row sent", || async {
        let rows = second.get("/v1/outbox?limit=1000").await.json()["messages"]
            .as_array()
            .cloned()
            .unwrap();
        if rows.iter().all(|m| m["status"] == "sent") {
            Ok(rows)
        } else {
            Err(crate::push::not_sent(&rows, None))
        }
    })
    .await;
    for partner in [&parties.sw, &parties.sv] {
        let got = statuses(&listener.for_partner(partner));
        let mut first_seen: Vec<&Received> = Vec::new();
        let mut ids = BTreeSet::new();
        let mut again = Vec::new();
        for r in &got {
            if ids.insert(r.message_id.as_str()) {
                first_seen.push(r);
            } else {
                again.push(r.message_id.clone());
            }
        }
        assert_eq!(first_seen.len(), expected, "{partner}: every notification");
        eprintln!(
            "{partner}: {} deliveries of {expected} notifications ({} again)",
            got.len(),
            again.len()
        );
        // An attempt is counted when its row is taken, before it is sent: a message is
        // delivered at most as many times as it was attempted, whatever died in between.
        for id in &again {
            let row = outbox
                .iter()
                .find(|m| m["message_id"] == id.as_str())
                .expect("an outbox row");
            let deliveries = 1 + again.iter().filter(|a| *a == id).count() as i64;
            assert!(
                row["attempts"].as_i64().unwrap() >= deliveries,
                "{partner}: {id} was delivered {deliveries} times in fewer attempts: {row}"
            );
        }
        let mut by_trip: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in first_seen {
            by_trip
                .entry(r.headers["x-ects-trip-id"].clone())
                .or_default()
                .push(r.headers["x-ects-notification-id"].clone());
        }
        assert_eq!(by_trip.len(), TRIPS);
        if partner == &parties.sw {
            // ects-json bodies say the state: in order for every trip.
            let states: BTreeSet<Vec<String>> = got
                .iter()
                .fold(BTreeMap::<String, Vec<String>>::new(), |mut acc, r| {
                    let note: Value = serde_json::from_slice(&r.body).unwrap();
                    let list = acc.entry(r.headers["x-ects-trip-id"].clone()).or_default();
                    let state = note["state"].as_str().unwrap().to_owned();
                    if list.last() != Some(&state) {
                        list.push(state);
                    }
                    acc
                })
                .into_values()
                .collect();
            assert_eq!(
                states,
                BTreeSet::from([vec![
                    "armed".to_owned(),
                    "in_transit".to_owned(),
                    "arrived".to_owned()
                ]])
            );
        }
    }
    second.stopper.stop().await;
}

mod over_amqp {
    use super::*;

    macro_rules! both {
        ($($name:ident),* $(,)?) => {
            $(
                mod $name {
                    #[tokio::test]
                    async fn sqlite() {
                        super::super::$name(super::super::Backend::Sqlite).await;
                    }

                    #[tokio::test]
                    async fn postgres() {
                        super::super::$name(super::super::Backend::Postgres).await;
                    }
                }
            )*
        };
    }

    both!(
        a_declaration_on_a_partner_queue_opens_a_trip_and_its_news_go_out,
        the_link_and_the_gateway_restart_mid_stream_and_nothing_is_lost_or_doubled,
    );

    both!(ices_amendments_and_deletions_on_a_partner_queue);

    #[tokio::test]
    async fn bad_messages_are_dead_lettered() {
        bad_messages_go_to_the_dead_letter_queue_and_the_consumer_goes_on(Backend::Sqlite).await;
    }
}
