//! TLS and mutual TLS on the HTTP listener, with real handshakes and certificates made
//! here by rcgen: a partner's certificate under the configured CA names it (by subject or
//! SAN), a pinned self-signed one names its partner without a CA, a certificate of a wrong
//! CA or an expired one is refused in the handshake, and `required` refuses a connection
//! without one while `optional` falls back to the bearer token.

use std::path::PathBuf;

use ects_gateway::partners::PartnerConfig;
use ects_gateway::tls::{ClientAuth, TlsSettings};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, TestApp, fixture, product_mappings_dir, spawn_app_with};

/// A certificate authority of the test.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a CA key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("a CA certificate"),
        }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate with this serial number, and a CRL of this CA that revokes it.
    pub(crate) fn revoked_leaf(&self, cn: &str, serial: u64) -> (Leaf, String) {
        let (mut params, key) = leaf_params(cn, &[], false);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a leaf certificate");
        let now = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970");
        let day = std::time::Duration::from_secs(86_400);
        let crl = rcgen::CertificateRevocationListParams {
            this_update: now - day,
            next_update: now + 30 * day,
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(serial),
                revocation_time: now - day,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("a CRL");
        (Leaf::new(cert, key), crl.pem().expect("CRL PEM"))
    }

    /// A leaf certificate it signs: `cn`, `sans` (DNS names or IP addresses), valid from
    /// a year ago to a year ahead unless `expired`.
    pub(crate) fn leaf(&self, cn: &str, sans: &[&str], expired: bool) -> Leaf {
        let (params, key) = leaf_params(cn, sans, expired);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a leaf certificate");
        Leaf::new(cert, key)
    }
}

fn leaf_params(cn: &str, sans: &[&str], expired: bool) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(
        sans.iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<String>>(),
    )
    .expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let now = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(secs);
    if expired {
        params.not_before = now - std::time::Duration::from_secs(3 * 365 * 86_400);
        params.not_after = now - std::time::Duration::from_secs(365 * 86_400);
    } else {
        params.not_before = now - std::time::Duration::from_secs(365 * 86_400);
        params.not_after = now + std::time::Duration::from_secs(365 * 86_400);
    }
    (params, KeyPair::generate().expect("a leaf key"))
}

/// A certificate with its key, and the SHA-256 of its SubjectPublicKeyInfo.
pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) spki_sha256: String,
    /// SHA-256 of the whole DER certificate.
    pub(crate) cert_sha256: String,
}

impl Leaf {
    fn new(cert: rcgen::Certificate, key: KeyPair) -> Self {
        use rcgen::PublicKeyData;
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            spki_sha256: hex::encode(Sha256::digest(key.subject_public_key_info())),
            cert_sha256: hex::encode(Sha256::digest(cert.der())),
        }
    }

    /// A self-signed certificate (no CA), for pinning.
    pub(crate) fn self_signed(cn: &str, expired: bool) -> Self {
        let (params, key) = leaf_params(cn, &[], expired);
        let cert = params.self_signed(&key).expect("a self-signed certificate");
        Self::new(cert, key)
    }

    pub(crate) fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert_pem, self.key_pem).as_bytes())
            .expect("a client identity")
    }
}

/// The server's certificate and the client CA, written where the gateway reads them.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) server_ca: Ca,
    pub(crate) client_ca: Ca,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let server_ca = Ca::new("ECTS test server CA");
        let client_ca = Ca::new("ECTS test partner CA");
        let server = server_ca.leaf("localhost", &["localhost", "127.0.0.1"], false);
        std::fs::write(dir.path().join("server.pem"), &server.cert_pem).expect("written");
        std::fs::write(dir.path().join("server.key"), &server.key_pem).expect("written");
        std::fs::write(dir.path().join("clients-ca.pem"), client_ca.pem()).expect("written");
        Self {
            dir,
            server_ca,
            client_ca,
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn settings(&self, client_auth: ClientAuth) -> TlsSettings {
        TlsSettings {
            cert_file: self.path("server.pem"),
            key_file: self.path("server.key"),
            client_ca_files: vec![self.path("clients-ca.pem")],
            client_crl_files: Vec::new(),
            client_auth,
        }
    }

    /// A client trusting only the server's CA, presenting `identity` if given.
    pub(crate) fn client(&self, identity: Option<&Leaf>) -> reqwest::Client {
        ects_gateway::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([
                reqwest::Certificate::from_pem(self.server_ca.pem().as_bytes()).expect("CA"),
            ])
            .timeout(std::time::Duration::from_secs(10));
        if let Some(leaf) = identity {
            builder = builder.identity(leaf.identity());
        }
        builder.build().expect("a TLS client")
    }
}

pub(crate) fn https(app: &TestApp) -> String {
    app.address.replace("http://127.0.0.1", "https://localhost")
}

fn sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn partner(toml: &str) -> PartnerConfig {
    toml::from_str(toml).expect("a partner entry")
}

async fn trip_ids(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Vec<String>) {
    let mut request = client.get(format!("{url}/v1/trips"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let reply = request.send().await.expect("a TLS request");
    let status = reply.status().as_u16();
    let body: Value = reply.json().await.unwrap_or(Value::Null);
    let mut ids: Vec<String> = body["trips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["trip_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    (status, ids)
}

async fn post_declaration(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Vec<u8>,
) -> String {
    let reply = client
        .post(format!("{url}/v1/messages/ects-json"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("a TLS request");
    let status = reply.status().as_u16();
    let body: Value = reply.json().await.expect("JSON");
    assert_eq!(status, 202, "{body}");
    body["trips"][0].as_str().expect("a trip id").to_owned()
}

/// The refusal of a handshake: the request fails without an HTTP answer, on the server's
/// TLS alert (`UnknownCA`, `CertificateExpired`, `CertificateRequired`).
fn assert_refused(result: Result<reqwest::Response, reqwest::Error>, alert: &str, what: &str) {
    match result {
        Ok(reply) => panic!("{what}: answered {} instead of refusing", reply.status()),
        Err(e) => {
            let mut chain = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                chain.push_str(&format!(": {s}"));
                source = s.source();
            }
            assert!(
                chain.contains(&format!("received fatal alert: {alert}")),
                "{what}: {chain}"
            );
        }
    }
}

async fn partners_are_named_by_their_certificates(backend: Backend) {
    let pki = Pki::new();
    let sv = pki
        .client_ca
        .leaf("sv-customs", &["sv.customs.example"], false);
    let mx = Leaf::self_signed("mx-customs", false);
    let mx_expired = Leaf::self_signed("mx-customs", true);
    let unpinned = Leaf::self_signed("mx-customs", false);
    let stranger = pki.client_ca.leaf("nobody", &["nobody.example"], false);
    let expired = pki
        .client_ca
        .leaf("sv-customs", &["sv.customs.example"], true);
    let wrong_ca = Ca::new("Not our CA").leaf("sv-customs", &["sv.customs.example"], false);
    let gt = pki
        .client_ca
        .leaf("gt-customs", &["gt.customs.example"], false);
    let partners = vec![
        partner(
            "id = \"gt-customs\"\nauthority = \"GT\"\nformat = \"ects-json\"\n\
             certificate_san = \"gt.customs.example\"\n",
        ),
        // Named under the CA, by SAN.
        partner(
            "id = \"sv-customs\"\nauthority = \"SV\"\nformat = \"ects-json\"\n\
             certificate_san = \"sv.customs.example\"\n",
        ),
        // Pinned, self-signed.
        partner(&format!(
            "id = \"mx-customs\"\nauthority = \"MX\"\nformat = \"ects-json\"\n\
             certificate_spki_sha256 = [\"{}\", \"{}\"]\n",
            mx.spki_sha256.to_uppercase(),
            mx_expired.spki_sha256
        )),
        partner(&format!(
            "id = \"gt-window\"\nauthority = \"GT\"\nformat = \"ects-json\"\nsees = \"filed\"\n\
             api_token_sha256 = \"{}\"\n",
            sha256("gt-window-token")
        )),
        partner(&format!(
            "id = \"ke-kra\"\nauthority = \"KE-KRA\"\nformat = \"ects-json\"\n\
             api_token_sha256 = \"{}\"\n",
            sha256("ke-kra-token")
        )),
    ];
    let tls = pki.settings(ClientAuth::Optional);
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = partners;
        s.http.tls = Some(tls);
    })
    .await
    else {
        return;
    };
    let url = https(&app);
    // Plain HTTP on a TLS port gets no answer.
    assert!(
        app.client
            .get(format!("{}/healthz", app.address))
            .send()
            .await
            .is_err()
    );

    // No certificate under `optional`: the bearer token.
    let anonymous = pki.client(None);
    let gt_sv = post_declaration(
        &anonymous,
        &url,
        "gt-window-token",
        fixture("ects-json/declaration-gt-sv.json"),
    )
    .await;
    let ke_ug = post_declaration(
        &anonymous,
        &url,
        "ke-kra-token",
        fixture("ects-json/declaration-ke-ug.json"),
    )
    .await;
    assert_ne!(gt_sv, ke_ug);
    assert_eq!(
        trip_ids(&anonymous, &url, Some("gt-window-token")).await,
        (200, vec![gt_sv.clone()])
    );

    // SV's certificate (under the CA, named by SAN): its own trips only.
    let as_sv = pki.client(Some(&sv));
    assert_eq!(
        trip_ids(&as_sv, &url, None).await,
        (200, vec![gt_sv.clone()])
    );
    let reply = as_sv
        .get(format!("{url}/v1/trips/{ke_ug}"))
        .send()
        .await
        .expect("answered");
    assert_eq!(
        reply.status(),
        404,
        "another authority's trip does not exist for SV"
    );
    // MX's pinned self-signed certificate: a partner, party to neither.
    assert_eq!(
        trip_ids(&pki.client(Some(&mx)), &url, None).await,
        (200, vec![])
    );
    // A good chain that names no partner: 401, never the operator.
    let (status, _) = trip_ids(&pki.client(Some(&stranger)), &url, None).await;
    assert_eq!(status, 401);
    // Refused in the handshake: another CA, an expired certificate.
    for (what, leaf, alert) in [
        ("a wrong CA", &wrong_ca, "UnknownCA"),
        ("an expired certificate", &expired, "CertificateExpired"),
        (
            "an expired pinned certificate",
            &mx_expired,
            "CertificateExpired",
        ),
        (
            "a self-signed certificate not pinned",
            &unpinned,
            "UnknownCA",
        ),
    ] {
        let result = pki
            .client(Some(leaf))
            .get(format!("{url}/v1/trips"))
            .send()
            .await;
        assert_refused(result, alert, what);
    }
    // The listener still serves after the refusals.
    assert_eq!(trip_ids(&as_sv, &url, None).await.0, 200);

    // GT's system, by its certificate, cancels the trip in GT's custody: the audit trail
    // names the partner and the certificate it presented.
    let as_gt = pki.client(Some(&gt));
    let cancel = serde_json::json!({"trip_id": gt_sv, "authority": "GT",
        "officer": {"id": "GT-OF-9"}, "time": chrono::Utc::now().to_rfc3339(),
        "reason": "withdrawn by the declarant"});
    let reply = as_gt
        .post(format!("{url}/v1/trips/{gt_sv}/cancel"))
        .header("content-type", "application/json")
        .body(cancel.to_string())
        .send()
        .await
        .expect("answered");
    assert_eq!(reply.status(), 200, "{:?}", reply.text().await);
    let audit: Value = as_gt
        .get(format!("{url}/v1/trips/{gt_sv}/audit"))
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    let cancelled = audit["entries"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["action"] == "input.cancel"))
        .unwrap_or_else(|| panic!("no cancellation in {audit:#}"))
        .clone();
    assert_eq!(
        cancelled["actor"],
        format!("partner:gt-customs/cert:{}", gt.cert_sha256)
    );
}

async fn required_client_auth_refuses_a_connection_without_certificate(backend: Backend) {
    let pki = Pki::new();
    let sv = pki.client_ca.leaf("sv-customs", &[], false);
    // One attribute whose value imitates three: not the partner whose subject it mimics.
    let spoof = pki.client_ca.leaf("mx-customs, O=SAT, C=MX", &[], false);
    let partners = vec![
        partner(
            "id = \"sv-customs\"\nauthority = \"SV\"\nformat = \"ects-json\"\n\
             certificate_subject = \"CN=sv-customs\"\n",
        ),
        partner(
            "id = \"mx-customs\"\nauthority = \"MX\"\nformat = \"ects-json\"\n\
             certificate_subject = \"CN=mx-customs, O=SAT, C=MX\"\n",
        ),
    ];
    let tls = pki.settings(ClientAuth::Required);
    let Some(app) = spawn_app_with(backend, product_mappings_dir(), |s| {
        s.partners = partners;
        s.http.tls = Some(tls);
    })
    .await
    else {
        return;
    };
    let url = https(&app);
    let result = pki
        .client(None)
        .get(format!("{url}/v1/trips"))
        .bearer_auth("whatever")
        .send()
        .await;
    assert_refused(
        result,
        "CertificateRequired",
        "no client certificate under `required`",
    );
    // Named by subject under the CA.
    assert_eq!(
        trip_ids(&pki.client(Some(&sv)), &url, None).await,
        (200, vec![])
    );
    assert_eq!(trip_ids(&pki.client(Some(&spoof)), &url, None).await.0, 401);
}

mod partners_are_named_by_their_certificates {
    #[tokio::test]
    async fn sqlite() {
        super::partners_are_named_by_their_certificates(crate::helpers::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::partners_are_named_by_their_certificates(crate::helpers::Backend::Postgres).await;
    }
}

#[tokio::test]
async fn required_client_auth_refuses_a_connection_without_certificate_sqlite() {
    required_client_auth_refuses_a_connection_without_certificate(Backend::Sqlite).await;
}

/// A client certificate its authority revoked (`client_crl_files`) is refused in the
/// handshake; one the list does not name still connects.
#[tokio::test]
async fn a_revoked_client_certificate_is_refused_in_the_handshake() {
    let pki = Pki::new();
    let (revoked, crl) = pki.client_ca.revoked_leaf("sv-customs", 4242);
    let good = pki.client_ca.leaf("sv-customs", &[], false);
    std::fs::write(pki.path("clients.crl.pem"), crl).expect("written");
    let mut tls = pki.settings(ClientAuth::Required);
    tls.client_crl_files = vec![pki.path("clients.crl.pem")];
    let partners = vec![partner(
        "id = \"sv-customs\"\nauthority = \"SV\"\nformat = \"ects-json\"\n\
         certificate_subject = \"CN=sv-customs\"\n",
    )];
    let Some(app) = spawn_app_with(Backend::Sqlite, product_mappings_dir(), |s| {
        s.partners = partners;
        s.http.tls = Some(tls);
    })
    .await
    else {
        return;
    };
    let url = https(&app);
    let result = pki
        .client(Some(&revoked))
        .get(format!("{url}/v1/trips"))
        .send()
        .await;
    assert_refused(result, "CertificateRevoked", "a revoked certificate");
    assert_eq!(
        trip_ids(&pki.client(Some(&good)), &url, None).await,
        (200, vec![])
    );
}

/// Bad TLS settings stop the gateway at start, naming the key and the file.
#[tokio::test]
async fn bad_tls_files_stop_the_gateway_from_starting() {
    let pki = Pki::new();
    std::fs::write(pki.path("garbage.pem"), "not a certificate").expect("written");
    type Spoil = fn(&mut TlsSettings);
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "http.tls.cert_file",
            (|t: &mut TlsSettings| t.cert_file = PathBuf::from("/nonexistent/server.pem")),
        ),
        (
            "http.tls.cert_file",
            (|t: &mut TlsSettings| t.cert_file = t.cert_file.with_file_name("garbage.pem")),
        ),
        (
            "http.tls.key_file",
            (|t: &mut TlsSettings| t.key_file = t.key_file.with_file_name("garbage.pem")),
        ),
        (
            "http.tls.client_ca_files",
            (|t: &mut TlsSettings| {
                t.client_ca_files = vec![t.cert_file.with_file_name("garbage.pem")]
            }),
        ),
        (
            "needs http.tls.client_ca_files",
            (|t: &mut TlsSettings| t.client_ca_files.clear()),
        ),
        (
            "http.tls.client_crl_files",
            (|t: &mut TlsSettings| {
                t.client_crl_files = vec![t.cert_file.with_file_name("garbage.pem")]
            }),
        ),
        (
            "http.tls.client_crl_files",
            (|t: &mut TlsSettings| {
                t.client_crl_files = vec![PathBuf::from("/nonexistent/clients.crl.pem")]
            }),
        ),
        (
            // The key of another certificate.
            "key_file",
            (|t: &mut TlsSettings| t.key_file = t.key_file.with_file_name("other.key")),
        ),
    ];
    let other = pki.server_ca.leaf("other", &["localhost"], false);
    std::fs::write(pki.path("other.key"), &other.key_pem).expect("written");
    for (expected, spoil) in cases {
        let mut tls = pki.settings(ClientAuth::Optional);
        spoil(&mut tls);
        let Some(error) = start_error(tls).await else {
            panic!("{expected}: the gateway started");
        };
        assert!(error.contains(expected), "{expected}: {error}");
    }
}

async fn start_error(tls: TlsSettings) -> Option<String> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let settings = ects_gateway::config::Settings {
        database_url: secrecy::SecretString::from(format!(
            "sqlite://{}/ects.db",
            dir.path().display()
        )),
        http: ects_gateway::config::HttpSettings {
            tls: Some(tls),
            ..Default::default()
        },
        ..crate::helpers::test_settings(product_mappings_dir())
    };
    match ects_gateway::startup::Application::build(settings).await {
        Ok(_) => None,
        Err(e) => Some(format!("{e:#}")),
    }
}
