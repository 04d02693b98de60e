//! Load generator for the AMQP path: partner queue → engine → `ects.out`, publisher
//! confirms on both sides. It starts a gateway in this process (SQLite in a temporary
//! directory, or the PostgreSQL database you name), declares a single window that files on
//! its queue and an authority that subscribes to status changes, then
//!
//! 1. a burst: `--trips` trips (a declaration, then both seals locked at the office: the
//!    trip is armed and one notification goes out) published as fast as the broker takes
//!    them; reported as inbound messages and notifications per second;
//! 2. a steady load: `--rate` trips per second for `--seconds`; reported as the latency
//!    from publishing the locking message to receiving its notification (p50, p99, max).
//!
//! ```text
//! cargo run --release --example amqp_load -- --trips 500 --rate 40 --seconds 20
//! cargo run --release --example amqp_load -- --database-url postgres://postgres@127.0.0.1:5432/bench
//! ```
//! Name a fresh PostgreSQL database: the gateway creates its tables there.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use ects_gateway::config::Settings;
use ects_gateway::startup::Application;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use secrecy::SecretString;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// The broker.
    #[arg(
        long,
        env = "TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// A fresh PostgreSQL database; default: SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Trips in the burst.
    #[arg(long, default_value_t = 500)]
    trips: usize,
    /// Trips per second in the steady phase.
    #[arg(long, default_value_t = 40)]
    rate: u32,
    /// Length of the steady phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Inbound messages handled at once (the partner's `amqp_in_workers`).
    #[arg(long, default_value_t = 1)]
    workers: u16,
}

const LAT: f64 = 14.0;
const DEPARTURE_LON: f64 = -91.0;

fn declaration(n: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ects-json/declaration-gt-sv.json"
    ))
    .expect("the fixture");
    let mut d: Value = serde_json::from_str(&text).expect("JSON");
    d["declaration_id"] = json!(format!("GT-LOAD-{n:08}"));
    for e in 0..2 {
        d["equipment"][e]["seals"][0]["id"] = json!(format!("ES{:08}", 2 * n + e));
        d["equipment"][e]["seals"][0]["device_id"] = json!(format!("87{:013}", 2 * n + e));
        d["equipment"][e]["seals"][1]["id"] = json!(format!("GTB{:07}", 2 * n + e));
    }
    serde_json::to_vec(&d).expect("JSON")
}

fn locking(n: usize) -> Vec<u8> {
    let event = |e: usize| {
        json!({"device_id": format!("87{:013}", 2 * n + e), "seal_id": format!("ES{:08}", 2 * n + e),
               "seq": 1, "kind": "locked", "time": "2026-03-14T08:00:00Z", "battery_pct": 90,
               "position": {"lat": LAT, "lon": DEPARTURE_LON, "fix": "gps"}})
    };
    serde_json::to_vec(&json!([event(0), event(1)])).expect("JSON")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ects_gateway::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/load.db", dir.path().display()));
    let run = uuid::Uuid::now_v7().simple().to_string()[24..].to_owned();
    let sw = format!("load-sw-{run}");
    let sv = format!("load-sv-{run}");
    let queue = format!("ects.load.in.{sw}");
    let partners = format!(
        "[[partners]]\nid = \"{sw}\"\nauthority = \"GT\"\nformat = \"ects-json\"\namqp_in = \"{queue}\"\namqp_in_workers = {workers}\nsees = \"filed\"\n\
         [[partners]]\nid = \"{sv}\"\nauthority = \"SV\"\nformat = \"wco-dm\"\nsubscribe = [\"status\"]\n",
        workers = args.workers
    );
    let mut settings: Settings = toml::from_str(&partners)?;
    settings.listen = "127.0.0.1:0".parse()?;
    settings.database_url = SecretString::from(database_url.clone());
    settings.amqp_url = Some(SecretString::from(args.amqp_url.clone()));
    settings.mappings_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings").into();
    settings.log_filter = "warn".into();
    settings.tick_interval_s = 0;
    settings.amqp.prefetch = 64;
    let app = Application::build(settings).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let stopper = app.stopper();
    tokio::spawn(app.run_until_stopped());

    // The departure office, so that locked seals arm the trip.
    let client = reqwest::Client::new();
    let zone = json!({"type": "Feature", "properties": {"kind": "customs_office", "office_code": "GTPQZ", "radius_m": 1000},
                      "geometry": {"type": "Point", "coordinates": [DEPARTURE_LON, LAT]}});
    let r = client
        .put(format!("{base}/v1/zones/GTPQZ"))
        .json(&zone)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "zone: {}", r.status());
    for _ in 0..200 {
        let ready: Value = client
            .get(format!("{base}/readyz"))
            .send()
            .await?
            .json()
            .await?;
        if ready["broker"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let conn = Connection::connect(&args.amqp_url, ConnectionProperties::default()).await?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let listen = conn.create_channel().await?;
    listen
        .exchange_declare(
            "ects.out".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mine = listen
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    listen
        .queue_bind(
            mine.name().clone(),
            "ects.out".into(),
            format!("{sv}.#").into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = listen
        .basic_consume(
            mine.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    // Arrivals by declaration id, as the notification's header names it.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let id = d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-ects-declaration-id").cloned())
                .map(|v| match v {
                    lapin::types::AMQPValue::LongString(s) => {
                        String::from_utf8_lossy(s.as_bytes()).into_owned()
                    }
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            let _ = arrived_tx.send((id, Instant::now()));
        }
    });
    let publish = |body: Vec<u8>| {
        let publisher = publisher.clone();
        let queue = queue.clone();
        async move {
            publisher
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await
        }
    };

    // 1. The burst.
    let started = Instant::now();
    for n in 0..args.trips {
        publish(declaration(n)).await?;
        publish(locking(n)).await?;
    }
    let published = started.elapsed();
    let mut got = 0;
    while got < args.trips {
        match tokio::time::timeout(Duration::from_secs(60), arrived.recv()).await {
            Ok(Some(_)) => got += 1,
            _ => break,
        }
    }
    let took = started.elapsed();
    println!(
        "burst: {} trips, {} inbound messages published in {:.2} s; {} notifications out after {:.2} s",
        args.trips,
        2 * args.trips,
        published.as_secs_f64(),
        got,
        took.as_secs_f64()
    );
    println!(
        "burst: {:.0} inbound messages/s through the engine, {:.0} notifications/s out",
        (2 * args.trips) as f64 / took.as_secs_f64(),
        got as f64 / took.as_secs_f64()
    );

    // 2. The steady load.
    let mut sent_at: BTreeMap<String, Instant> = BTreeMap::new();
    let mut latencies = Vec::new();
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut tick = tokio::time::interval(interval);
    let total = (u64::from(args.rate) * args.seconds) as usize;
    let first = args.trips;
    for n in first..first + total {
        tick.tick().await;
        publish(declaration(n)).await?;
        sent_at.insert(format!("GT-LOAD-{n:08}"), Instant::now());
        publish(locking(n)).await?;
        while let Ok((id, at)) = arrived.try_recv() {
            if let Some(t0) = sent_at.remove(&id) {
                latencies.push(at - t0);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sent_at.is_empty() && Instant::now() < deadline {
        if let Ok(Some((id, at))) =
            tokio::time::timeout(Duration::from_secs(1), arrived.recv()).await
            && let Some(t0) = sent_at.remove(&id)
        {
            latencies.push(at - t0);
        }
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "steady: {} trips/s ({} messages/s) for {} s: {} notifications, {} missing; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.rate,
        2 * args.rate,
        args.seconds,
        latencies.len(),
        sent_at.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    stopper.stop().await;
    Ok(())
}
