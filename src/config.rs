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
        if let Some(p) = self.office_policy {
            settings.offices.policy = p;
        }
        if let Some(url) = &self.amqp_url {
            settings.amqp_url = Some(SecretString::from(url.clone()));
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
        if let Some(url) = &self.amqp_url
            && !url.expose_secret().starts_with("amqp://")
        {
            // This build's AMQP client has no TLS: the gateway talks to its own broker
            // cluster over its own network.
            return Err(ConfigError::Invalid(
                "amqp_url must start with amqp:// (amqps:// is not supported by this build)".into(),
            ));
        }
        if self.amqp.prefetch == 0 {
            return Err(ConfigError::Invalid("amqp.prefetch must be above 0".into()));
        }
        let o = &self.outbox;
        if o.max_attempts == 0 || o.batch == 0 || o.lease_s == 0 || o.http_timeout_s == 0 {
            return Err(ConfigError::Invalid(
                "outbox.max_attempts, batch, lease_s and http_timeout_s must be above 0".into(),
            ));
        }
        crate::partners::check(&self.partners).map_err(ConfigError::Invalid)?;
        self.rules
            .check()
            .map_err(|e| ConfigError::Invalid(format!("rules{}: {}", e.pointer, e.reason)))?;
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
        let msg = args("amqps://broker:5671").load().unwrap_err().to_string();
        assert!(msg.contains("amqps:// is not supported"), "{msg}");
        assert!(args("http://broker").load().is_err());
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
