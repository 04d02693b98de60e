//! Partner systems: who they are (an authority, a single window), the format they speak,
//! how messages reach them (an AMQP queue they publish to, the `ects.out` exchange, an HTTP
//! endpoint), which notifications they take and which trips they may see.
//!
//! What a partner may see is decided from a trip's *parties*, kept beside the trip: the
//! countries of its issuing authority, offices and itinerary, and the partner that filed
//! its declaration (`filer:<id>`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use ects_core::{AuthorityCode, NotificationKind, TransitDeclaration};
use serde::Deserialize;

/// Which trips a partner may see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sees {
    /// An authority: the trips its country is party to (issuing authority, office of
    /// departure, transit or destination, itinerary), and those it filed.
    #[default]
    Parties,
    /// A single window: only the declarations it filed.
    Filed,
}

/// Client settings for a partner's HTTP endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpPush {
    /// PEM file with our client certificate and its private key, for endpoints that ask
    /// for mutual TLS.
    pub client_identity: Option<PathBuf>,
    /// PEM file of certificate authorities to trust for this endpoint, besides the
    /// system's.
    pub ca_certificates: Option<PathBuf>,
    /// A bearer token sent in `Authorization`.
    pub bearer_token: Option<secrecy::SecretString>,
}

/// One `[[partners]]` entry of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    /// Lowercase letters, digits and `-`: used in queue names and routing keys.
    pub id: String,
    /// A country (`KE`) or an agency of one (`KE-KRA`); its first two letters are the
    /// country whose transits it may see.
    pub authority: AuthorityCode,
    /// The format it sends and receives (a format id of `GET /v1/formats`).
    pub format: String,
    /// The format version it speaks; checked against the mapping at start-up.
    #[serde(default)]
    pub version: Option<String>,
    /// The durable queue the gateway consumes its messages from; rejects go to
    /// `<amqp_in>.dlq`.
    #[serde(default)]
    pub amqp_in: Option<String>,
    /// Messages of its queue handled at once. 1 (the default) keeps the queue's order,
    /// which declarations, amendments and seal assignments need; a seal-event feed may
    /// take more, the engine ordering events by their time.
    #[serde(default = "one")]
    pub amqp_in_workers: u16,
    /// Notification kinds it takes: `status`, `alert`, `release`, `handover`.
    #[serde(default)]
    pub subscribe: Vec<NotificationKind>,
    /// Whether subscribed notifications are published to the exchange (routing key
    /// `<id>.<format>.<kind>`); on by default when AMQP is configured.
    #[serde(default = "yes")]
    pub amqp_out: bool,
    /// An HTTP endpoint notifications are also POSTed to.
    #[serde(default)]
    pub http_push: Option<String>,
    #[serde(default)]
    pub http: HttpPush,
    #[serde(default)]
    pub sees: Sees,
    /// SHA-256 (hex) of the bearer token this partner presents on the HTTP API: its
    /// requests then see only what its sharing rules allow, and what it posts is filed
    /// as its own. The token itself is never in the configuration.
    #[serde(default)]
    pub api_token_sha256: Option<String>,
    /// Not configuration: on a request, the SHA-256 of the client certificate this partner
    /// presented, so the audit trail names it (`partner:<id>/cert:<sha256>`).
    #[serde(skip)]
    pub presented_certificate: Option<String>,
    /// SHA-256 (hex) of the SubjectPublicKeyInfo of client certificates that are this
    /// partner's on the HTTP listener (pins): accepted under a configured CA or, pinned,
    /// self-signed. Several allow a key rollover.
    #[serde(default)]
    pub certificate_spki_sha256: Vec<String>,
    /// The exact subject of its client certificate under a configured CA
    /// (`[http.tls] client_ca_files`), as the gateway prints it, e.g.
    /// `CN=ke-kra, O=Kenya Revenue Authority, C=KE`.
    #[serde(default)]
    pub certificate_subject: Option<String>,
    /// A DNS or URI subject alternative name of its client certificate under a configured CA.
    #[serde(default)]
    pub certificate_san: Option<String>,
    /// The broker user that publishes to its inbound queue: a message there whose AMQP
    /// `user_id` property is not this one is dead-lettered (403). RabbitMQ refuses a
    /// `user_id` other than the publishing connection's own, so it cannot be forged.
    #[serde(default)]
    pub amqp_user_id: Option<String>,
}

fn yes() -> bool {
    true
}

fn one() -> u16 {
    1
}

impl PartnerConfig {
    /// The country whose transits this partner may see.
    pub fn country(&self) -> &str {
        &self.authority.as_str()[..2]
    }

    /// The dead-letter queue of its inbound queue.
    pub fn dead_letter_queue(&self) -> Option<String> {
        self.amqp_in.as_ref().map(|q| format!("{q}.dlq"))
    }

    /// Whether it may see a trip with these parties.
    pub fn may_see<'a>(&self, mut parties: impl Iterator<Item = &'a str>) -> bool {
        let filer = format!("filer:{}", self.id);
        parties.any(|p| p == filer || (self.sees == Sees::Parties && p == self.country()))
    }

    /// The parties this partner matches: a trip is visible if it has one of them.
    pub fn visible_parties(&self) -> Vec<String> {
        let mut parties = vec![format!("filer:{}", self.id)];
        if self.sees == Sees::Parties {
            parties.push(self.country().to_owned());
        }
        parties
    }

    pub fn takes(&self, kind: NotificationKind) -> bool {
        self.subscribe.contains(&kind)
    }
}

/// The parties of a declared trip: the countries it concerns, and who filed it.
pub fn parties_of(declaration: &TransitDeclaration, filer: Option<&str>) -> BTreeSet<String> {
    let mut parties: BTreeSet<String> = [
        &declaration.issuing_authority.as_str()[..2],
        declaration.office_of_departure.country.as_str(),
        declaration.office_of_destination.country.as_str(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    parties.extend(
        declaration
            .offices_of_transit
            .iter()
            .map(|o| o.country.as_str().to_owned()),
    );
    parties.extend(declaration.itinerary.iter().map(|c| c.as_str().to_owned()));
    if let Some(filer) = filer {
        parties.insert(format!("filer:{filer}"));
    }
    // A shipper's token sees the trips its declarant id lodged; a transporter's the trips
    // its carrier id is on.
    if let Some(declarant) = &declaration.declarant {
        parties.insert(format!("declarant:{}", declarant.id));
    }
    if let Some(carrier) = &declaration.carrier {
        parties.insert(format!("carrier:{}", carrier.id));
    }
    parties
}

/// Checks the partner list on its own; that formats exist is checked once they are loaded.
pub fn check(partners: &[PartnerConfig]) -> Result<(), String> {
    let mut ids = BTreeSet::new();
    let mut queues = BTreeSet::new();
    let mut pins = BTreeSet::new();
    let mut subjects = BTreeSet::new();
    let mut sans = BTreeSet::new();
    for (i, p) in partners.iter().enumerate() {
        let at = format!("partners[{i}] ({:?})", p.id);
        if p.id.is_empty()
            || p.id.len() > 32
            || !p
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "{at}: id must be 1 to 32 lowercase letters, digits or '-'"
            ));
        }
        if !ids.insert(p.id.as_str()) {
            return Err(format!("{at}: id is used by an earlier partner"));
        }
        if !p.authority.as_str()[..2]
            .bytes()
            .all(|b| b.is_ascii_uppercase())
        {
            return Err(format!(
                "{at}: authority must start with a two-letter country code"
            ));
        }
        if let Some(q) = &p.amqp_in {
            if q.is_empty() || q.len() > 200 || q.starts_with("amq.") {
                return Err(format!(
                    "{at}: amqp_in must be 1 to 200 characters and not start with 'amq.'"
                ));
            }
            if !queues.insert(q.as_str()) {
                return Err(format!("{at}: amqp_in {q:?} is another partner's queue"));
            }
        }
        if p.amqp_in_workers == 0 || p.amqp_in_workers > 256 {
            return Err(format!("{at}: amqp_in_workers must be 1 to 256"));
        }
        if let Some(url) = &p.http_push
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(format!(
                "{at}: http_push must be an http:// or https:// URL"
            ));
        }
        if let Some(h) = &p.api_token_sha256
            && !(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!(
                "{at}: api_token_sha256 must be 64 hexadecimal digits (sha256sum of the token)"
            ));
        }
        for pin in &p.certificate_spki_sha256 {
            if !(pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit())) {
                return Err(format!(
                    "{at}: certificate_spki_sha256 entries must be 64 hexadecimal digits \
                     (SHA-256 of the certificate's DER SubjectPublicKeyInfo)"
                ));
            }
            if !pins.insert(pin.to_ascii_lowercase()) {
                return Err(format!(
                    "{at}: certificate_spki_sha256 {pin} is pinned twice (by this or an \
                     earlier partner)"
                ));
            }
        }
        for (key, value, seen) in [
            ("certificate_subject", &p.certificate_subject, &mut subjects),
            ("certificate_san", &p.certificate_san, &mut sans),
        ] {
            if let Some(v) = value {
                if v.trim().is_empty() || v.len() > 1_024 || v.chars().any(char::is_control) {
                    return Err(format!(
                        "{at}: {key} must be 1 to 1024 characters without control characters"
                    ));
                }
                if !seen.insert(v.as_str()) {
                    return Err(format!("{at}: {key} {v:?} names an earlier partner too"));
                }
            }
        }
        if let Some(u) = &p.amqp_user_id
            && (u.is_empty() || u.len() > 255 || u.chars().any(char::is_control))
        {
            return Err(format!(
                "{at}: amqp_user_id must be 1 to 255 characters without control characters"
            ));
        }
        let mut kinds = BTreeSet::new();
        for k in &p.subscribe {
            if !kinds.insert(format!("{k:?}")) {
                return Err(format!("{at}: subscribe lists {k:?} twice"));
            }
        }
    }
    Ok(())
}

/// The partner whose API token this is.
pub fn by_token<'a>(
    partners: &'a [PartnerConfig],
    token: &secrecy::SecretString,
) -> Option<&'a PartnerConfig> {
    use secrecy::ExposeSecret;
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(token.expose_secret().as_bytes());
    // Every configured hash is compared, each in constant time.
    let mut found = None;
    for p in partners {
        let Some(configured) = p
            .api_token_sha256
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
        else {
            continue;
        };
        #[allow(deprecated)]
        let equal =
            ring::constant_time::verify_slices_are_equal(&configured, hash.as_slice()).is_ok();
        if equal && found.is_none() {
            found = Some(p);
        }
    }
    found
}

/// The partner whose client certificate this is: by pinned SPKI, or, for a certificate
/// whose chain a configured CA verified, by exact subject or by a DNS or URI SAN.
pub fn by_certificate<'a>(
    partners: &'a [PartnerConfig],
    cert: &crate::tls::ClientCertificate,
) -> Option<&'a PartnerConfig> {
    let pinned = partners.iter().find(|p| {
        p.certificate_spki_sha256
            .iter()
            .any(|pin| pin.eq_ignore_ascii_case(&cert.spki_sha256))
    });
    if pinned.is_some() || !cert.ca_verified {
        return pinned;
    }
    partners.iter().find(|p| {
        p.certificate_subject.as_deref() == Some(cert.subject.as_str())
            || p.certificate_san
                .as_deref()
                .is_some_and(|san| cert.dns_sans.iter().chain(&cert.uri_sans).any(|s| s == san))
    })
}

/// The kind's name in routing keys and the outbox.
pub fn kind_name(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::Status => "status",
        NotificationKind::Alert => "alert",
        NotificationKind::Release => "release",
        NotificationKind::Handover => "handover",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner(toml: &str) -> PartnerConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn an_authority_sees_its_country_and_a_single_window_what_it_filed() {
        let kra = partner("id = \"ke-kra\"\nauthority = \"KE-KRA\"\nformat = \"wco-dm\"\n");
        let sw =
            partner("id = \"sw\"\nauthority = \"UG\"\nformat = \"ects-json\"\nsees = \"filed\"\n");
        let parties = ["KE", "UG", "filer:other"];
        assert!(kra.may_see(parties.into_iter()));
        assert!(!sw.may_see(parties.into_iter()));
        assert!(sw.may_see(["RW", "filer:sw"].into_iter()));
        assert!(!kra.may_see(["RW", "filer:sw"].into_iter()));
        assert_eq!(kra.visible_parties(), ["filer:ke-kra", "KE"]);
    }

    #[test]
    fn bad_partner_lists_name_the_partner() {
        let p = |id: &str| {
            partner(&format!(
                "id = \"{id}\"\nauthority = \"KE\"\nformat = \"wco-dm\"\namqp_in = \"q\"\n"
            ))
        };
        let e = check(&[p("Bad Id")]).unwrap_err();
        assert!(e.contains("partners[0]") && e.contains("lowercase"), "{e}");
        let e = check(&[p("a"), p("a")]).unwrap_err();
        assert!(e.contains("partners[1]") && e.contains("earlier"), "{e}");
        let e = check(&[p("a"), p("b")]).unwrap_err();
        assert!(e.contains("another partner's queue"), "{e}");
        assert!(
            toml::from_str::<PartnerConfig>(
                "id = \"a\"\nauthority = \"KE\"\nformat = \"x\"\nsubscribe = [\"nope\"]\n"
            )
            .is_err()
        );
    }

    fn by_cert(id: &str, extra: &str) -> PartnerConfig {
        partner(&format!(
            "id = \"{id}\"\nauthority = \"KE\"\nformat = \"wco-dm\"\n{extra}\n"
        ))
    }

    #[test]
    fn certificate_identities_are_checked_and_found() {
        let pin = "ab".repeat(32);
        let e = check(&[by_cert("a", "certificate_spki_sha256 = [\"abc\"]")]).unwrap_err();
        assert!(e.contains("64 hexadecimal"), "{e}");
        let pinned = by_cert("a", &format!("certificate_spki_sha256 = [\"{pin}\"]"));
        let twice = by_cert(
            "b",
            &format!("certificate_spki_sha256 = [\"{}\"]", pin.to_uppercase()),
        );
        let e = check(&[pinned.clone(), twice]).unwrap_err();
        assert!(
            e.contains("partners[1]") && e.contains("pinned twice"),
            "{e}"
        );
        let named = by_cert(
            "c",
            "certificate_subject = \"CN=c\"\ncertificate_san = \"c.example\"",
        );
        let e = check(&[
            named.clone(),
            by_cert("d", "certificate_subject = \"CN=c\""),
        ])
        .unwrap_err();
        assert!(e.contains("names an earlier partner"), "{e}");
        let e = check(&[by_cert("d", "amqp_user_id = \"\"")]).unwrap_err();
        assert!(e.contains("amqp_user_id"), "{e}");
        let partners = [pinned, named];
        assert!(check(&partners).is_ok());

        let cert =
            |spki: &str, subject: &str, san: &str, ca_verified| crate::tls::ClientCertificate {
                spki_sha256: spki.into(),
                sha256: "00".repeat(32),
                subject: subject.into(),
                dns_sans: vec![san.into()],
                uri_sans: vec![],
                ca_verified,
            };
        let id = |c| by_certificate(&partners, &c).map(|p| p.id.clone());
        assert_eq!(id(cert(&pin, "CN=x", "x", false)).as_deref(), Some("a"));
        assert_eq!(
            id(cert(&"cd".repeat(32), "CN=c", "x", true)).as_deref(),
            Some("c")
        );
        assert_eq!(
            id(cert(&"cd".repeat(32), "CN=x", "c.example", true)).as_deref(),
            Some("c")
        );
        // A name counts only under a CA; an unknown certificate is nobody.
        assert_eq!(id(cert(&"cd".repeat(32), "CN=c", "c.example", false)), None);
        assert_eq!(id(cert(&"cd".repeat(32), "CN=x", "x", true)), None);
        assert_eq!(
            id(crate::tls::ClientCertificate::unreadable(b"?", true)),
            None
        );
    }
}
