//! AMQP over TLS against the local RabbitMQ's TLS listener (`.ci/rabbitmq-tls.sh` makes it
//! with a test CA and exports `TEST_AMQPS_URL`, `TEST_AMQPS_CA` and a client certificate):
//! the gateway links with `amqps://`, trusting the CA and presenting the certificate; a
//! partner publishes over TLS into its queue; a message without the partner's broker user
//! in `user_id` is dead-lettered (403), one with it is applied.

use std::path::PathBuf;
use std::time::Duration;

use ects_gateway::partners::PartnerConfig;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use secrecy::SecretString;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::amqp::{suffix, wait_ready};
use crate::helpers::{Backend, eventually, fixture, product_mappings_dir, spawn_app_with};

const HOW: &str = "run `eval \"$(.ci/rabbitmq-tls.sh)\"` (as root, once per machine: it gives \
                   the local RabbitMQ a TLS listener on 5671 with a test CA and prints \
                   TEST_AMQPS_URL, TEST_AMQPS_CA, TEST_AMQPS_CLIENT_CERT and \
                   TEST_AMQPS_CLIENT_KEY), or run .ci/run";

struct Broker {
    url: String,
    ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
}

/// The TLS broker of the test machine. Unset, the test fails with how to set it, in CI
/// or wherever a broker is configured (`TEST_AMQP_URL`); only a machine without any broker
/// skips it, like the other AMQP tests.
fn broker() -> Option<Broker> {
    let url = std::env::var("TEST_AMQPS_URL").ok();
    let ca = std::env::var("TEST_AMQPS_CA").ok();
    match (url, ca) {
        (Some(url), Some(ca)) => Some(Broker {
            url,
            ca: ca.into(),
            client: match (
                std::env::var("TEST_AMQPS_CLIENT_CERT"),
                std::env::var("TEST_AMQPS_CLIENT_KEY"),
            ) {
                (Ok(cert), Ok(key)) => Some((cert.into(), key.into())),
                _ => None,
            },
        }),
        _ if std::env::var("CI").is_ok() || std::env::var("TEST_AMQP_URL").is_ok() => {
            panic!("TEST_AMQPS_URL and TEST_AMQPS_CA must be set for the AMQP-over-TLS test: {HOW}")
        }
        _ => {
            eprintln!("no broker configured (TEST_AMQP_URL, TEST_AMQPS_URL): skipping; {HOW}");
            None
        }
    }
}

/// The broker user of a URL (`amqps://user:pass@host...`).
fn user_of(url: &str) -> String {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(credentials, _)| credentials.split(':').next())
        .expect("TEST_AMQPS_URL names a user")
        .to_owned()
}

async fn connect(broker: &Broker) -> (Connection, Channel) {
    let tls = OwnedTLSConfig {
        identity: broker
            .client
            .as_ref()
            .map(|(cert, key)| OwnedIdentity::PKCS8 {
                pem: std::fs::read(cert).expect("TEST_AMQPS_CLIENT_CERT is readable"),
                key: std::fs::read(key).expect("TEST_AMQPS_CLIENT_KEY is readable"),
            }),
        cert_chain: Some(std::fs::read_to_string(&broker.ca).expect("TEST_AMQPS_CA is readable")),
    };
    let conn = Connection::connect_with_config(
        &broker.url,
        ConnectionProperties::default(),
        tls,
        lapin::runtime::default_runtime().expect("a runtime"),
    )
    .await
    .expect("the TLS broker is reachable with the test CA");
    let channel = conn.create_channel().await.expect("a channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (conn, channel)
}

async fn publish(channel: &Channel, queue: &str, body: &[u8], id: &str, user_id: Option<&str>) {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(id.into());
    if let Some(user) = user_id {
        properties = properties.with_user_id(user.into());
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

fn partner(toml: &str) -> PartnerConfig {
    toml::from_str(toml).expect("a partner entry")
}

async fn a_partner_publishes_over_tls_bound_to_its_broker_user(backend: Backend, external: bool) {
    let Some(broker) = broker() else {
        return;
    };
    let user = user_of(&broker.url);
    // The gateway logs in with its client certificate alone (SASL EXTERNAL: the broker
    // user is the certificate's CN), or with user and password beside it.
    let gateway_url = if external {
        match std::env::var("TEST_AMQPS_EXTERNAL_URL") {
            Ok(url) => url,
            Err(_) if std::env::var("CI").is_ok() => {
                panic!("TEST_AMQPS_EXTERNAL_URL must be set for the certificate-login test: {HOW}")
            }
            Err(_) => return,
        }
    } else {
        broker.url.clone()
    };
    assert!(
        !external || broker.client.is_some(),
        "certificate login needs TEST_AMQPS_CLIENT_CERT and TEST_AMQPS_CLIENT_KEY"
    );
    let id = format!("gt-{}", suffix());
    let queue = format!("ects.test.in.{id}");
    let token = format!("{id}-token");
    let window = partner(&format!(
        "id = \"{id}\"\nauthority = \"GT\"\nformat = \"ects-json\"\namqp_in = \"{queue}\"\n\
         sees = \"filed\"\namqp_user_id = \"{user}\"\napi_token_sha256 = \"{}\"\n",
        hex::encode(Sha256::digest(token.as_bytes()))
    ));
    let ca = broker.ca.clone();
    let client = broker.client.clone();
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.amqp_url = Some(SecretString::from(gateway_url));
        s.amqp.ca_file = Some(ca);
        if let Some((cert, key)) = client {
            s.amqp.client_cert_file = Some(cert);
            s.amqp.client_key_file = Some(key);
        }
        s.amqp.reconnect_min_ms = 100;
        s.amqp.reconnect_max_ms = 1_000;
        s.partners = vec![window];
    })
    .await
    else {
        return;
    };
    wait_ready(&app).await;
    let (_conn, channel) = connect(&broker).await;

    // Without user_id: not provably the partner's, so dead-lettered with 403.
    let body = fixture("ects-json/declaration-gt-sv.json");
    publish(&channel, &queue, &body, &format!("{id}-1"), None).await;
    let dlq = format!("{queue}.dlq");
    let dead = eventually("the dead-lettered message", || async {
        match channel
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
        {
            Ok(Some(message)) => Ok(message.delivery),
            Ok(None) => Err("the dead-letter queue is empty".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert_eq!(dead.data, body, "the body untouched");
    let headers = dead.properties.headers().clone().unwrap_or_default();
    let status = headers.inner().get("x-ects-status");
    assert!(
        matches!(status, Some(AMQPValue::LongInt(403))),
        "{status:?}"
    );
    let trips = || async {
        let reply = app
            .client
            .get(format!("{}/v1/trips", app.address))
            .bearer_auth(&token)
            .send()
            .await
            .expect("answered");
        assert_eq!(reply.status(), 200);
        let list: Value = reply.json().await.expect("JSON");
        list["trips"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(trips().await, 0, "the refused message filed nothing");

    // With the connection's own user (RabbitMQ refuses any other): applied.
    publish(&channel, &queue, &body, &format!("{id}-2"), Some(&user)).await;
    eventually("the declaration filed over amqps", || async {
        match trips().await {
            1 => Ok(()),
            n => Err(format!("{n} trips")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.stopper.stop().await;
}

#[tokio::test]
async fn a_partner_publishes_over_tls_bound_to_its_broker_user_sqlite() {
    a_partner_publishes_over_tls_bound_to_its_broker_user(Backend::Sqlite, false).await;
}

#[tokio::test]
async fn the_gateway_logs_in_to_the_broker_by_its_certificate_sqlite() {
    a_partner_publishes_over_tls_bound_to_its_broker_user(Backend::Sqlite, true).await;
}

/// A TLS file of the broker link the gateway cannot use is refused (at start), naming the key.
#[tokio::test]
async fn bad_amqps_files_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("garbage.pem"), "no PEM here").expect("written");
    let good_ca = crate::tls::Pki::new();
    for (expected, adjust) in [
        (
            "amqp.ca_file",
            Box::new(|s: &mut ects_gateway::config::AmqpSettings| {
                s.ca_file = Some("/nonexistent/ca.pem".into())
            }) as Box<dyn Fn(&mut ects_gateway::config::AmqpSettings)>,
        ),
        (
            "amqp.ca_file",
            Box::new(|s: &mut ects_gateway::config::AmqpSettings| {
                s.ca_file = Some(
                    s.ca_file
                        .clone()
                        .unwrap_or_default()
                        .with_file_name("garbage.pem"),
                )
            }),
        ),
        (
            "amqp.client_key_file",
            Box::new(|s: &mut ects_gateway::config::AmqpSettings| {
                let garbage = s
                    .ca_file
                    .clone()
                    .unwrap_or_default()
                    .with_file_name("garbage.pem");
                s.ca_file = None;
                s.client_cert_file = Some(garbage.with_file_name("server.pem"));
                s.client_key_file = Some(garbage);
            }),
        ),
    ] {
        let mut amqp = ects_gateway::config::AmqpSettings {
            ca_file: Some(dir.path().join("ca.pem")),
            ..Default::default()
        };
        adjust(&mut amqp);
        // The server files of the TLS tests stand in for a client certificate.
        if let Some(cert) = &amqp.client_cert_file {
            let copy = dir.path().join(cert.file_name().expect("a name"));
            std::fs::copy(good_ca.path("server.pem"), &copy).expect("copied");
        }
        let error = ects_gateway::amqp::tls_config(&amqp)
            .map(|_| ())
            .expect_err(expected);
        assert!(error.to_string().contains(expected), "{expected}: {error}");
    }
}
