//! Typed configuration, layered: built-in defaults, then the TOML file (`--config`), then
//! `ECTS_*` environment variables, then command-line flags. Clap reads flags and their
//! environment variables; this module lays them over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ects_core::trip::Rules;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object a line, for log shippers.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Everything the gateway needs to run. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP server listens on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `sqlite://path` (embedded default) or `postgres://...`. May hold a password.
    pub database_url: SecretString,
    pub database_max_connections: u32,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most seal events accepted in one message.
    pub max_events_per_message: usize,
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `ects_gateway=debug,info`.
    pub log_filter: String,
    /// Default thresholds of the tracking rules.
    pub rules: Rules,
    /// How often every live trip is checked for gaps, overdue arrival and long stops, in
    /// seconds; 0 turns the ticker off (tests drive it themselves).
    pub tick_interval_s: u64,
    /// The mapping files (one per partner format and message) and `codes/`.
    pub mappings_dir: PathBuf,
    /// Signers by format id: a command that reads an unsigned document on standard input
    /// and writes it signed (ICEGATE `digSign`) on standard output, e.g.
    /// `icegate-csn = ["/opt/icegate/sign", "--key", "/etc/ects/dsc.pem"]`.
    pub signers: std::collections::BTreeMap<String, Vec<String>>,
    /// Longest a signer may take, in seconds.
    pub signer_timeout_s: u64,
    /// The RabbitMQ broker (`amqp://user:pass@host:5672/%2f`); none turns AMQP off.
    pub amqp_url: Option<SecretString>,
    pub amqp: AmqpSettings,
    pub outbox: OutboxSettings,
    pub http: HttpSettings,
    /// The partner systems: what they send, what they receive, what they may see.
    pub partners: Vec<crate::partners::PartnerConfig>,
    /// The office registry: what an office not in it gets.
    pub offices: OfficesSettings,
    /// How long the raw bodies of rejected messages are kept.
    pub retention: RetentionSettings,
    /// API tokens: where their key and the first admin token are kept.
    pub auth: AuthSettings,
    /// How commands are judged in time.
    pub tracking: TrackingSettings,
    /// Device authentication: policy, per platform, and the key file of HMAC secrets.
    pub devices: crate::devices::DevicesSettings,
}

/// `[auth]`: the API tokens' server key and the embedded default's first admin token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The key API tokens are hashed under (HMAC-SHA256), made (0600) on first need.
    /// Default: `token.key` beside the SQLite file, else `data/token.key`. Every instance
    /// sharing a PostgreSQL database must use the same file.
    pub token_key_file: Option<PathBuf>,
    /// Where `serve` writes the admin token it makes when there is no live one (0600).
    /// Default: `admin-token` beside the key file.
    pub admin_token_file: Option<PathBuf>,
}

impl AuthSettings {
    pub fn key_file(&self, database_url: &SecretString) -> PathBuf {
        self.token_key_file
            .clone()
            .unwrap_or_else(|| crate::auth::default_key_file(database_url))
    }

    pub fn admin_file(&self, database_url: &SecretString) -> PathBuf {
        self.admin_token_file.clone().unwrap_or_else(|| {
            self.key_file(database_url)
                .parent()
                .map_or_else(|| PathBuf::from("admin-token"), |d| d.join("admin-token"))
        })
    }
}

/// `[tracking]`: commands in time.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackingSettings {
    /// How far a command's `issued_at` (a handover's or cancellation's `time`, a release's
    /// `issued_at`) may be from the gateway's clock either way, and how far before it a
    /// release's `valid_from` may start, in seconds (`COMMAND_SKEW_S`; default 900).
    pub command_skew_s: u64,
}

impl TrackingSettings {
    pub const COMMAND_SKEW_S: std::ops::RangeInclusive<u64> = 10..=3_600;

    fn check(&self) -> Result<(), ConfigError> {
        if Self::COMMAND_SKEW_S.contains(&self.command_skew_s) {
            Ok(())
        } else {
            Err(ConfigError::Invalid(format!(
                "tracking.command_skew_s = {} is outside {}..={}",
                self.command_skew_s,
                Self::COMMAND_SKEW_S.start(),
                Self::COMMAND_SKEW_S.end()
            )))
        }
    }
}

impl Default for TrackingSettings {
    fn default() -> Self {
        Self {
            command_skew_s: 900,
        }
    }
}

/// `[retention]`: how long the raw body of a message the gateway refused is kept. The
/// record of the attempt (sender, time, reason, SHA-256, size) is kept for good; accepted
/// messages are evidence of trips and are never purged.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days a rejected message's body is kept, `RETENTION_DAYS`.
    pub rejected_body_days: u32,
    /// Most bytes of rejected bodies kept per sender (`source`); past it the oldest go
    /// first, whatever their age. `RETENTION_MAX_BYTES`.
    pub rejected_body_max_bytes: u64,
    /// How often the sweeper looks, in seconds; 0 turns it off. `RETENTION_SWEEP_S`.
    pub sweep_interval_s: u64,
}

impl RetentionSettings {
    pub const RETENTION_DAYS: std::ops::RangeInclusive<u32> = 1..=3_650;
    pub const RETENTION_MAX_BYTES: std::ops::RangeInclusive<u64> = 1..=(1 << 40);
    pub const RETENTION_SWEEP_S: std::ops::RangeInclusive<u64> = 0..=86_400;

    fn check(&self) -> Result<(), ConfigError> {
        fn within<T: PartialOrd + std::fmt::Display>(
            key: &str,
            value: T,
            range: std::ops::RangeInclusive<T>,
        ) -> Result<(), ConfigError> {
            if range.contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::Invalid(format!(
                    "retention.{key} = {value} is outside {}..={}",
                    range.start(),
                    range.end()
                )))
            }
        }
        within(
            "rejected_body_days",
            self.rejected_body_days,
            Self::RETENTION_DAYS,
        )?;
        within(
            "rejected_body_max_bytes",
            self.rejected_body_max_bytes,
            Self::RETENTION_MAX_BYTES,
        )?;
        within(
            "sweep_interval_s",
            self.sweep_interval_s,
            Self::RETENTION_SWEEP_S,
        )
    }
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            rejected_body_days: 30,
            rejected_body_max_bytes: 256 * 1024 * 1024,
            sweep_interval_s: 600,
        }
    }
}

/// `[offices]`: the office registry's policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfficesSettings {
    /// `strict`: an office not in the registry is refused. `known_or_locode` (default): a
    /// UN/LOCODE-shaped code not in it is accepted with a note.
    pub policy: crate::offices::OfficePolicy,
}

/// How the gateway uses its broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    /// Unacknowledged messages the broker may hand each inbound consumer at once.
    pub prefetch: u16,
    /// The topic exchange notifications are published to.
    pub exchange: String,
    /// Pause before a message that failed for a passing reason (database away) is handed
    /// back to the broker, in milliseconds.
    pub retry_delay_ms: u64,
    /// First and longest pause between reconnection attempts, in milliseconds.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Longest wait for the broker to confirm a published message, in milliseconds; a
    /// message left unconfirmed (the connection dropped) is tried again.
    pub confirm_timeout_ms: u64,
    /// PEM bundle of the certificate authorities trusted for an `amqps://` broker, besides
    /// the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (then its intermediates) and private key presented to an
    /// `amqps://` broker: for `?auth_mechanism=external` or beside user and password.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            prefetch: 32,
            exchange: "ects.out".into(),
            retry_delay_ms: 1_000,
            reconnect_min_ms: 200,
            reconnect_max_ms: 30_000,
            confirm_timeout_ms: 10_000,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

/// How long the HTTP server waits for slow clients, and how many it serves at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Longest a request body may take to arrive, in seconds; then 408.
    pub body_timeout_s: u64,
    /// Slowest a request body may arrive, in bytes a second, after `body_grace_s`; a body
    /// that falls behind gets 408.
    pub min_body_bytes_per_s: u64,
    pub body_grace_s: u64,
    /// Connections served at once per worker; more wait in the listen backlog.
    pub max_connections: usize,
    /// Longest the request head (line and headers) may take to arrive, in milliseconds.
    pub client_request_timeout_ms: u64,
    /// Longest a closing connection may take to shut down, in milliseconds.
    pub client_disconnect_timeout_ms: u64,
    /// Documents decoded at once (HTTP and AMQP), each on the blocking pool, off the
    /// async workers; 1 to 1024, default the number of CPUs.
    pub decode_workers: usize,
    /// Whether `/metrics` is served without a credential (default: no; admin and
    /// operator tokens read it).
    pub public_metrics: bool,
    /// TLS, and mutual TLS, on the listener. Without it the listener speaks plain HTTP,
    /// which is refused on a non-loopback address unless `allow_plain_http` is set.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Plain HTTP on a non-loopback address (behind a proxy that terminates TLS).
    pub allow_plain_http: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            body_timeout_s: 60,
            min_body_bytes_per_s: 1_024,
            body_grace_s: 5,
            max_connections: 2_048,
            client_request_timeout_ms: 5_000,
            client_disconnect_timeout_ms: 5_000,
            decode_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            public_metrics: false,
            tls: None,
            allow_plain_http: false,
        }
    }
}

/// The outbox dispatcher: how often it looks, how hard it tries.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxSettings {
    /// Failed attempts after which a message is parked (`failed`) until retried by hand.
    pub max_attempts: u32,
    /// Pause after the first failure; it doubles with each further one (with jitter), up
    /// to `max_backoff_ms`.
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// How long the dispatcher waits for new messages when it found none, in milliseconds.
    pub poll_ms: u64,
    /// Messages taken per round.
    pub batch: u32,
    /// How long a taken message is reserved for the instance that took it, in seconds; an
    /// instance that dies holding it gives it up after this.
    pub lease_s: u64,
    /// Longest an HTTP push may take, in seconds.
    pub http_timeout_s: u64,
}

impl OutboxSettings {
    /// Each number within its documented range (README, Configuration), the error naming
    /// the key. The lease must outlast the longest delivery twice over (`http_timeout_s`,
    /// and `[amqp] confirm_timeout_ms`): a round stops taking new waves at half the lease,
    /// and a delivery begun then must end before another instance may take the message.
    pub fn check(&self, confirm_timeout_ms: u64) -> Result<(), ConfigError> {
        fn within(
            key: &str,
            value: u64,
            range: std::ops::RangeInclusive<u64>,
            unit: &str,
        ) -> Result<(), ConfigError> {
            if range.contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::Invalid(format!(
                    "outbox.{key} = {value} is out of range: {} to {}{unit}",
                    range.start(),
                    range.end()
                )))
            }
        }
        within("max_attempts", u64::from(self.max_attempts), 1..=1_000, "")?;
        within(
            "base_backoff_ms",
            self.base_backoff_ms,
            1..=3_600_000,
            " ms",
        )?;
        within(
            "max_backoff_ms",
            self.max_backoff_ms,
            self.base_backoff_ms..=86_400_000,
            " ms (at least base_backoff_ms, at most a day)",
        )?;
        within("poll_ms", self.poll_ms, 10..=600_000, " ms")?;
        within("batch", u64::from(self.batch), 1..=10_000, "")?;
        within("http_timeout_s", self.http_timeout_s, 1..=600, " s")?;
        let longest_delivery_s = self.http_timeout_s.max(confirm_timeout_ms.div_ceil(1_000));
        within(
            "lease_s",
            self.lease_s,
            (2 * longest_delivery_s).max(5)..=86_400,
            " s (at least 5 and twice the longer of http_timeout_s and amqp.confirm_timeout_ms)",
        )?;
        Ok(())
    }
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            base_backoff_ms: 500,
            max_backoff_ms: 300_000,
            poll_ms: 250,
            batch: 200,
            lease_s: 60,
            http_timeout_s: 15,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: SecretString::from("sqlite://data/ects.db"),
            database_max_connections: 8,
            max_body_bytes: 10 * 1024 * 1024,
            max_events_per_message: 10_000,
            log_format: LogFormat::Pretty,
            log_filter: "info".into(),
            rules: Rules::default(),
            tick_interval_s: 30,
            mappings_dir: PathBuf::from("mappings"),
            signers: Default::default(),
            signer_timeout_s: 10,
            amqp_url: None,
            amqp: AmqpSettings::default(),
            outbox: OutboxSettings::default(),
            http: HttpSettings::default(),
            partners: Vec::new(),
            offices: OfficesSettings::default(),
            retention: RetentionSettings::default(),
            auth: AuthSettings::default(),
            tracking: TrackingSettings::default(),
            devices: Default::default(),
        }
    }
}

/// The options shared by every command that touches configuration. Each flag also reads
/// its `ECTS_*` environment variable; a flag given on the command line wins over it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "ECTS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, env = "ECTS_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,
    /// Database URL (default sqlite://data/ects.db).
    #[arg(long, env = "ECTS_DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Largest request body in bytes (default 10 MiB).
    #[arg(long, env = "ECTS_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<usize>,
    /// Log format (default pretty).
    #[arg(long, env = "ECTS_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Directory of mapping files (default ./mappings).
    #[arg(long = "mappings", env = "ECTS_MAPPINGS", global = true)]
    pub mappings_dir: Option<PathBuf>,
    /// Log filter (default info), e.g. `ects_gateway=debug,info`.
    #[arg(long = "log", alias = "log-filter", env = "ECTS_LOG", global = true)]
    pub log_filter: Option<String>,
    /// RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f (default: AMQP off).
    #[arg(long, env = "ECTS_AMQP_URL", global = true, hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// The API tokens' key file (default: `[auth] token_key_file`, else `token.key`
    /// beside the SQLite file, else `data/token.key`).
    #[arg(long, env = "ECTS_TOKEN_KEY_FILE", global = true)]
    pub token_key_file: Option<PathBuf>,
    /// Plain HTTP on a non-loopback `--listen` (a proxy in front terminates TLS); default
    /// `[http] allow_plain_http`.
    #[arg(long, env = "ECTS_ALLOW_PLAIN_HTTP", global = true, num_args = 0..=1, default_missing_value = "true")]
    pub allow_plain_http: Option<bool>,
    /// Office policy, `strict` or `known_or_locode` (default: `[offices] policy`).
    #[arg(long = "policy", env = "ECTS_OFFICE_POLICY", global = true, value_enum)]
    pub office_policy: Option<crate::offices::OfficePolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

impl ConfigArgs {
    /// Defaults, then the file, then environment and flags (clap has already merged those).
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let mut settings = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        if let Some(listen) = self.listen {
            settings.listen = listen;
        }
        if let Some(url) = &self.database_url {
            settings.database_url = SecretString::from(url.clone());
        }
        if let Some(n) = self.max_body_bytes {
            settings.max_body_bytes = n;
        }
        if let Some(f) = self.log_format {
            settings.log_format = f;
        }
        if let Some(f) = &self.log_filter {
            settings.log_filter = f.clone();
        }
        if let Some(d) = &self.mappings_dir {
            settings.mappings_dir = d.clone();
        }
        if let Some(f) = &self.token_key_file {
            settings.auth.token_key_file = Some(f.clone());
        }
        if let Some(p) = self.office_policy {
            settings.offices.policy = p;
        }
        if let Some(url) = &self.amqp_url {
            settings.amqp_url = Some(SecretString::from(url.clone()));
        }
        if let Some(allow) = self.allow_plain_http {
            settings.http.allow_plain_http = allow;
        }
        settings.check()?;
        Ok(settings)
    }
}

impl Settings {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        // toml's message already names the line and column and shows the offending text.
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        self.tracking.check()?;
        let url = self.database_url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return Err(ConfigError::Invalid(
                "database_url must start with sqlite: or postgres:".into(),
            ));
        }
        if self.database_max_connections == 0 {
            return Err(ConfigError::Invalid(
                "database_max_connections must be at least 1".into(),
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max_body_bytes must be above 0".into(),
            ));
        }
        if self.max_events_per_message == 0 {
            return Err(ConfigError::Invalid(
                "max_events_per_message must be above 0".into(),
            ));
        }
        self.check_transport_security()?;
        if self.amqp.prefetch == 0 {
            return Err(ConfigError::Invalid("amqp.prefetch must be above 0".into()));
        }
        self.outbox.check(self.amqp.confirm_timeout_ms)?;
        crate::partners::check(&self.partners).map_err(ConfigError::Invalid)?;
        self.retention.check()?;
        if !(1..=1_024).contains(&self.http.decode_workers) {
            return Err(ConfigError::Invalid(format!(
                "http.decode_workers = {} is outside 1..=1024",
                self.http.decode_workers
            )));
        }
        self.rules
            .check()
            .map_err(|e| ConfigError::Invalid(format!("rules{}: {}", e.pointer, e.reason)))?;
        Ok(())
    }
}

impl Settings {
    /// TLS on the listener and the broker link: plain HTTP only on loopback unless allowed
    /// explicitly; `amqps://` settings only with an `amqps://` URL; partners named by
    /// certificate only where a certificate can name them.
    pub fn check_transport_security(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.http.tls.is_none() && !self.listen.ip().is_loopback() && !self.http.allow_plain_http
        {
            return invalid(format!(
                "listen = {} is not a loopback address and [http.tls] is not configured: \
                 configure [http.tls] cert_file and key_file, or set [http] allow_plain_http = \
                 true when a proxy in front terminates TLS",
                self.listen
            ));
        }
        let tls = self.http.tls.as_ref();
        if let Some(tls) = tls
            && tls.client_auth == crate::tls::ClientAuth::None
            && !tls.client_ca_files.is_empty()
        {
            return invalid(
                "http.tls.client_ca_files is set but http.tls.client_auth = \"none\": set \
                 client_auth to \"optional\" or \"required\""
                    .into(),
            );
        }
        if let Some(tls) = tls
            && tls.client_ca_files.is_empty()
            && !tls.client_crl_files.is_empty()
        {
            return invalid(
                "http.tls.client_crl_files is set without http.tls.client_ca_files: a \
                 revocation list applies to the certificates of a configured authority"
                    .into(),
            );
        }
        let asks_certificates = tls.is_some_and(|t| t.client_auth != crate::tls::ClientAuth::None);
        let has_ca = tls.is_some_and(|t| !t.client_ca_files.is_empty());
        for (i, p) in self.partners.iter().enumerate() {
            let at = format!("partners[{i}] ({:?})", p.id);
            let by_name = p.certificate_subject.is_some() || p.certificate_san.is_some();
            if (by_name || !p.certificate_spki_sha256.is_empty()) && !asks_certificates {
                return invalid(format!(
                    "{at}: is identified by certificate but the listener asks for none: set \
                     [http.tls] client_auth = \"optional\" or \"required\""
                ));
            }
            if by_name && !has_ca {
                return invalid(format!(
                    "{at}: certificate_subject and certificate_san need [http.tls] \
                     client_ca_files (a name means something only under a CA); pin a \
                     self-signed certificate with certificate_spki_sha256"
                ));
            }
        }
        if let Some(url) = &self.amqp_url {
            let url = url.expose_secret();
            let tls = url.starts_with("amqps://");
            if !(tls || url.starts_with("amqp://")) {
                return invalid("amqp_url must start with amqp:// or amqps://".into());
            }
            let has_tls_files = self.amqp.ca_file.is_some()
                || self.amqp.client_cert_file.is_some()
                || self.amqp.client_key_file.is_some();
            if has_tls_files && !tls {
                return invalid(
                    "amqp.ca_file, client_cert_file and client_key_file are for an \
                     amqps:// broker, and amqp_url is amqp://"
                        .into(),
                );
            }
        }
        if self.amqp.client_cert_file.is_some() != self.amqp.client_key_file.is_some() {
            return invalid(
                "amqp.client_cert_file and amqp.client_key_file go together: set both or neither"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ects.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nmax_body_bytes = 1000\n[rules]\nlow_battery_pct = 10\nlow_battery_hysteresis_pct = 2\n",
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(path),
            max_body_bytes: Some(2000),
            ..Default::default()
        };
        let s = args.load().unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.max_body_bytes, 2000);
        assert_eq!(s.rules.low_battery_pct, 10);
        assert_eq!(s.database_url.expose_secret(), "sqlite://data/ects.db");
    }

    #[test]
    fn a_broker_url_is_checked() {
        let args = |url: &str| ConfigArgs {
            amqp_url: Some(url.into()),
            ..Default::default()
        };
        assert!(args("amqp://guest:guest@127.0.0.1:5672/%2f").load().is_ok());
        assert!(
            args("amqps://guest:guest@localhost:5671/%2f")
                .load()
                .is_ok()
        );
        let msg = args("http://broker").load().unwrap_err().to_string();
        assert!(msg.contains("amqp:// or amqps://"), "{msg}");
        let mut s = Settings {
            amqp_url: Some(SecretString::from("amqp://broker")),
            ..Default::default()
        };
        s.amqp.ca_file = Some("ca.pem".into());
        let msg = s.check().unwrap_err().to_string();
        assert!(msg.contains("amqp.ca_file"), "{msg}");
        s.amqp_url = Some(SecretString::from("amqps://broker"));
        assert!(s.check().is_ok());
        s.amqp.client_cert_file = Some("client.pem".into());
        let msg = s.check().unwrap_err().to_string();
        assert!(msg.contains("go together"), "{msg}");
    }

    #[test]
    fn plain_http_only_on_loopback_unless_allowed() {
        let at = |listen: &str| ConfigArgs {
            listen: Some(listen.parse().unwrap()),
            ..Default::default()
        };
        assert!(at("127.0.0.1:8080").load().is_ok());
        assert!(at("[::1]:8080").load().is_ok());
        for listen in ["0.0.0.0:8080", "[::]:8080", "192.0.2.10:8080"] {
            let msg = at(listen).load().unwrap_err().to_string();
            assert!(
                msg.contains("[http.tls]") && msg.contains("allow_plain_http"),
                "{msg}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ects.toml");
        std::fs::write(&path, "[http]\nallow_plain_http = true\n").unwrap();
        let allowed = ConfigArgs {
            config: Some(path.clone()),
            ..at("0.0.0.0:8080")
        };
        assert!(allowed.load().is_ok());
        let by_flag = ConfigArgs {
            allow_plain_http: Some(true),
            ..at("0.0.0.0:8080")
        };
        assert!(by_flag.load().is_ok());
        // TLS configured: any address (the files are read when the listener is built).
        std::fs::write(
            &path,
            "[http.tls]\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\n",
        )
        .unwrap();
        let s = ConfigArgs {
            config: Some(path.clone()),
            ..at("0.0.0.0:8443")
        }
        .load()
        .unwrap();
        let tls = s.http.tls.unwrap();
        assert_eq!(tls.client_auth, crate::tls::ClientAuth::None);
        // A partner named by certificate needs the listener to ask for one, and a name a CA.
        let partner = "[[partners]]\nid = \"ke\"\nauthority = \"KE\"\nformat = \"wco-dm\"\n";
        for (tls, extra, expected) in [
            ("", "certificate_san = \"ke.example\"", "asks for none"),
            (
                "client_auth = \"optional\"\n",
                "certificate_subject = \"CN=ke\"",
                "need [http.tls] client_ca_files",
            ),
            (
                "client_ca_files = [\"ca.pem\"]\n",
                "",
                "client_ca_files is set but http.tls.client_auth",
            ),
        ] {
            std::fs::write(
                &path,
                format!(
                    "[http.tls]\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\n{tls}{partner}{extra}\n"
                ),
            )
            .unwrap();
            let msg = ConfigArgs {
                config: Some(path.clone()),
                ..Default::default()
            }
            .load()
            .unwrap_err()
            .to_string();
            assert!(msg.contains(expected), "{expected}: {msg}");
        }
    }

    #[test]
    fn outbox_numbers_out_of_range_are_refused_by_name() {
        assert!(Settings::default().check().is_ok());
        type Spoil = fn(&mut OutboxSettings);
        let cases: [(&str, Spoil); 9] = [
            ("outbox.max_attempts", |o| o.max_attempts = 0),
            ("outbox.base_backoff_ms", |o| o.base_backoff_ms = 0),
            ("outbox.max_backoff_ms", |o| o.max_backoff_ms = 100),
            ("outbox.max_backoff_ms", |o| o.max_backoff_ms = 86_400_001),
            ("outbox.poll_ms", |o| o.poll_ms = 1),
            ("outbox.batch", |o| o.batch = 20_000),
            ("outbox.http_timeout_s", |o| o.http_timeout_s = 0),
            ("outbox.lease_s", |o| o.lease_s = 0),
            // A lease shorter than twice the longest push.
            ("outbox.lease_s", |o| o.lease_s = 20),
        ];
        for (key, spoil) in cases {
            let mut settings = Settings::default();
            spoil(&mut settings.outbox);
            let msg = settings.check().unwrap_err().to_string();
            assert!(msg.contains(&format!("{key} = ")), "{key}: {msg}");
            assert!(msg.contains("out of range"), "{key}: {msg}");
        }
        // The lease against the broker's confirm timeout too.
        let mut settings = Settings::default();
        settings.amqp.confirm_timeout_ms = 40_000;
        let msg = settings.check().unwrap_err().to_string();
        assert!(msg.contains("outbox.lease_s = 60"), "{msg}");
    }

    #[test]
    fn retention_is_checked_at_start_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ects.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            ConfigArgs {
                config: Some(path.clone()),
                ..Default::default()
            }
            .load()
        };
        let s =
            load("[retention]\nrejected_body_days = 7\nrejected_body_max_bytes = 1000\n").unwrap();
        assert_eq!(s.retention.rejected_body_days, 7);
        assert_eq!(s.retention.rejected_body_max_bytes, 1000);
        assert_eq!(s.retention.sweep_interval_s, 600);
        for (text, key) in [
            (
                "rejected_body_days = 0",
                "retention.rejected_body_days = 0 is outside 1..=3650",
            ),
            (
                "rejected_body_days = 3651",
                "retention.rejected_body_days = 3651",
            ),
            (
                "rejected_body_max_bytes = 0",
                "retention.rejected_body_max_bytes = 0",
            ),
            (
                "sweep_interval_s = 86401",
                "retention.sweep_interval_s = 86401",
            ),
        ] {
            let msg = load(&format!("[retention]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
        let msg = load("[retention]\nrejected_body_days = -1\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("rejected_body_days"), "{msg}");
    }

    #[test]
    fn a_bad_file_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ects.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nmax_body_bytez = 1\n").unwrap();
        let args = ConfigArgs {
            config: Some(path),
            ..Default::default()
        };
        let msg = args.load().unwrap_err().to_string();
        assert!(msg.contains("ects.toml"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("max_body_bytez"), "{msg}");
    }
}
