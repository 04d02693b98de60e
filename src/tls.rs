//! TLS and mutual TLS on the HTTP listener (`[http.tls]`), and the client certificate of a
//! connection as handlers see it (`req.conn_data::<ClientCertificate>()`).
//!
//! A client certificate is accepted when its chain verifies against `client_ca_files`, or,
//! without a CA, when the SHA-256 of its SubjectPublicKeyInfo is pinned by a partner
//! (`certificate_spki_sha256`) and it is within its validity period. A partner named by
//! subject or SAN needs the first: `ClientCertificate::ca_verified`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::partners::PartnerConfig;

/// Whether the HTTP listener asks for client certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificates: every caller presents a bearer token.
    #[default]
    None,
    /// A client may present one (checked if it does); without one it uses a token.
    Optional,
    /// A connection without a good client certificate is refused in the handshake.
    Required,
}

/// `[http.tls]`: the listener's certificate, and which client certificates it accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM: the server certificate, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM: the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM bundles of the certificate authorities whose client certificates are accepted.
    #[serde(default)]
    pub client_ca_files: Vec<PathBuf>,
    /// PEM certificate revocation lists of those authorities: a client certificate (or an
    /// intermediate) they list is refused in the handshake. A certificate of an authority
    /// with no list here is not checked. Read at start: a new list takes a restart.
    #[serde(default)]
    pub client_crl_files: Vec<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// What a verified client certificate says, for the request's handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// SHA-256 (lowercase hex) of its DER SubjectPublicKeyInfo: survives a renewal with the
    /// same key.
    pub spki_sha256: String,
    /// SHA-256 (lowercase hex) of the whole DER certificate.
    pub sha256: String,
    /// The subject as RFC 4514-like text, e.g. `CN=ke-kra, O=Kenya Revenue Authority, C=KE`.
    pub subject: String,
    pub dns_sans: Vec<String>,
    pub uri_sans: Vec<String>,
    /// Whether its chain verified against a configured CA (else it was accepted by pin).
    pub ca_verified: bool,
}

/// The subject as RFC 4514 text in certificate order (`CN=ke-kra, O=KRA, C=KE`), each
/// value escaped: a CN of `sv-customs, O=DGA, C=SV` is `CN=sv-customs\, O\=DGA\, C\=SV`,
/// never the three attributes it imitates. A value that is not a string reads `#`
/// (matching no configured subject).
fn subject_text(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    name.iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map_or_else(|_| attr.attr_type().to_id_string(), str::to_owned);
                    let value = attr.as_str().map_or_else(|_| "#".to_owned(), escape_value);
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// RFC 4514 section 2.4: `, + " \ < > ; =` escaped, and a leading `#` or space and a
/// trailing space; control characters as `\XX`.
fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

impl ClientCertificate {
    /// Reads a DER certificate; `None` when it does not parse (rustls accepted it, so only
    /// a pinned certificate x509-parser cannot read would get here).
    pub fn from_der(der: &[u8], ca_verified: bool) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut dns_sans = Vec::new();
        let mut uri_sans = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        dns_sans.push((*d).to_owned())
                    }
                    x509_parser::extensions::GeneralName::URI(u) => uri_sans.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        Some(Self {
            spki_sha256: hex::encode(Sha256::digest(cert.public_key().raw)),
            sha256: hex::encode(Sha256::digest(der)),
            subject: subject_text(cert.subject()),
            dns_sans,
            uri_sans,
            ca_verified,
        })
    }
}

impl ClientCertificate {
    /// A certificate the handshake accepted but x509-parser cannot read: kept (so that
    /// the connection is not taken for one without a certificate), naming nobody.
    pub fn unreadable(der: &[u8], ca_verified: bool) -> Self {
        Self {
            spki_sha256: String::new(),
            sha256: hex::encode(Sha256::digest(der)),
            subject: String::new(),
            dns_sans: Vec::new(),
            uri_sans: Vec::new(),
            ca_verified,
        }
    }
}

/// SHA-256 (hex) of a DER certificate's SubjectPublicKeyInfo, and whether it is valid at
/// `now`; `None` when it does not parse.
fn spki_and_validity(der: &[u8], now: UnixTime) -> Option<(String, bool)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let now = i64::try_from(now.as_secs()).ok()?;
    let valid = x509_parser::time::ASN1Time::from_timestamp(now)
        .is_ok_and(|t| cert.validity().is_valid_at(t));
    Some((hex::encode(Sha256::digest(cert.public_key().raw)), valid))
}

/// Accepts a client certificate whose chain verifies against the configured CAs, or whose
/// SPKI is pinned by a partner (and which is within its validity period).
#[derive(Debug)]
struct PartnerVerifier {
    ca: Option<Arc<dyn ClientCertVerifier>>,
    pins: BTreeSet<String>,
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PartnerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.ca.as_ref().map_or(&[], |ca| ca.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let by_ca = match &self.ca {
            Some(ca) => ca.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        };
        if by_ca.is_ok() || self.pins.is_empty() {
            return by_ca;
        }
        match spki_and_validity(end_entity, now) {
            Some((spki, true)) if self.pins.contains(&spki) => Ok(ClientCertVerified::assertion()),
            Some((spki, false)) if self.pins.contains(&spki) => Err(
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
            ),
            _ => by_ca,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The listener's TLS: the server configuration, and what tells a connection's client
/// certificate (the same CA verifier, run again on the certificate the handshake took).
#[derive(Clone)]
pub struct ServerTls {
    pub config: rustls::ServerConfig,
    ca: Option<Arc<dyn ClientCertVerifier>>,
}

fn read_certificates(what: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("{what} {}: cannot read it: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{what} {}: not PEM certificates: {e}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{what} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
        path.display()
    );
    Ok(certs)
}

fn read_crls(
    path: &Path,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>> {
    use rustls::pki_types::CertificateRevocationListDer;
    let what = "http.tls.client_crl_files";
    let pem = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("{what} {}: cannot read it: {e}", path.display()))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{what} {}: not PEM CRLs: {e}", path.display()))?;
    anyhow::ensure!(
        !crls.is_empty(),
        "{what} {}: no PEM CRL (-----BEGIN X509 CRL-----) in it",
        path.display()
    );
    Ok(crls)
}

fn read_private_key(what: &str, path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("{what} {}: cannot read it: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| anyhow::anyhow!("{what} {}: no PEM private key in it: {e}", path.display()))
}

impl ServerTls {
    /// Reads the files and builds the listener's configuration; every failure names the
    /// file and the key.
    pub fn new(settings: &TlsSettings, partners: &[PartnerConfig]) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certificates("http.tls.cert_file", &settings.cert_file)?;
        let key = read_private_key("http.tls.key_file", &settings.key_file)?;
        let ca = if settings.client_ca_files.is_empty() {
            None
        } else {
            let mut roots = RootCertStore::empty();
            for path in &settings.client_ca_files {
                for cert in read_certificates("http.tls.client_ca_files", path)? {
                    roots.add(cert).map_err(|e| {
                        anyhow::anyhow!(
                            "http.tls.client_ca_files {}: not a usable CA certificate: {e}",
                            path.display()
                        )
                    })?;
                }
            }
            let mut crls = Vec::new();
            for path in &settings.client_crl_files {
                crls.extend(read_crls(path)?);
            }
            // Optional at this layer: `PartnerVerifier` decides whether one is mandatory
            // (a pinned certificate is not under any CA).
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .with_crls(crls)
                    .allow_unknown_revocation_status()
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| {
                        anyhow::anyhow!("http.tls.client_ca_files / client_crl_files: {e}")
                    })?;
            Some(verifier)
        };
        let pins: BTreeSet<String> = partners
            .iter()
            .flat_map(|p| p.certificate_spki_sha256.iter())
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
        let builder = match settings.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            auth => {
                anyhow::ensure!(
                    ca.is_some() || !pins.is_empty(),
                    "http.tls.client_auth = {auth:?} needs http.tls.client_ca_files or a \
                     partner's certificate_spki_sha256: no client certificate could be accepted"
                );
                builder.with_client_cert_verifier(Arc::new(PartnerVerifier {
                    ca: ca.clone(),
                    pins,
                    mandatory: auth == ClientAuth::Required,
                    algorithms: provider.signature_verification_algorithms,
                }))
            }
        };
        let config = builder.with_single_cert(certs, key).map_err(|e| {
            anyhow::anyhow!(
                "http.tls.cert_file {} and key_file {}: {e}",
                settings.cert_file.display(),
                settings.key_file.display()
            )
        })?;
        Ok(Self { config, ca })
    }

    /// The client certificate of a connection the handshake accepted, if it presented one.
    pub fn client_certificate(&self, chain: &[CertificateDer<'_>]) -> Option<ClientCertificate> {
        let (end_entity, intermediates) = chain.split_first()?;
        let ca_verified = self.ca.as_ref().is_some_and(|ca| {
            ca.verify_client_cert(end_entity, intermediates, UnixTime::now())
                .is_ok()
        });
        Some(
            ClientCertificate::from_der(end_entity, ca_verified)
                .unwrap_or_else(|| ClientCertificate::unreadable(end_entity, ca_verified)),
        )
    }
}

/// The actix `on_connect` hook: records the connection's client certificate, if any, in its
/// connection data.
pub fn on_connect(
    tls: &ServerTls,
    connection: &dyn std::any::Any,
    data: &mut actix_web::dev::Extensions,
) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    let Some(stream) = connection.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>() else {
        return;
    };
    let (_, session) = stream.get_ref();
    if let Some(chain) = session.peer_certificates()
        && let Some(cert) = tls.client_certificate(chain)
    {
        tracing::debug!(subject = %cert.subject, spki_sha256 = %cert.spki_sha256, ca_verified = cert.ca_verified, "client certificate");
        data.insert(cert);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_read_for_handlers() {
        use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, SanType};
        let mut params = CertificateParams::new(vec!["ke-kra.example".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI("urn:ects:partner:ke-kra".try_into().unwrap()));
        params.distinguished_name.push(DnType::CommonName, "ke-kra");
        params.distinguished_name.push(DnType::CountryName, "KE");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let read = ClientCertificate::from_der(cert.der(), true).unwrap();
        assert_eq!(
            read.spki_sha256,
            hex::encode(Sha256::digest(key.subject_public_key_info()))
        );
        assert_eq!(read.sha256, hex::encode(Sha256::digest(cert.der())));
        assert_eq!(read.subject, "CN=ke-kra, C=KE");
        assert_eq!(
            escape_value("sv-customs, O=DGA, C=SV"),
            "sv-customs\\, O\\=DGA\\, C\\=SV"
        );
        assert_eq!(escape_value(" #a "), "\\ #a\\ ");
        assert_eq!(read.dns_sans, ["ke-kra.example"]);
        assert_eq!(read.uri_sans, ["urn:ects:partner:ke-kra"]);
        assert!(read.ca_verified);
        assert!(ClientCertificate::from_der(b"not DER", true).is_none());
    }
}
