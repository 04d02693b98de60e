//! Principals' credentials: roles and API tokens.
//!
//! A token is `ects_<id>_<secret>`: 8 random bytes of lookup id and 32 random bytes of
//! secret from the OS random source, hex. Only HMAC-SHA256(secret) under the server's token
//! key is stored. A keyed hash rather than a slow KDF: the secret has 256 bits of entropy,
//! so there is nothing to slow a guesser down against, and a keyed hash keeps each request's
//! check to microseconds; the key (a file of its own, 0600) means a copy of the database
//! alone yields no way to test guesses. Verification is ring's constant-time `hmac::verify`.
//! Tokens are read from the database on every request, so `token revoke` and expiry take
//! effect at once on every running instance.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use sqlx::Row;

use crate::store::{Store, StoreError, parse_ts, ts};

/// What a principal may do; the route table (`http::policy`) says where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Admin,
    Operator,
    Officer,
    SingleWindow,
    Shipper,
    Transporter,
    Integrator,
    DevicePlatform,
    /// A configured partner system (`[[partners]]`, its token or certificate); not a role
    /// a token can be given.
    Partner,
}

impl Role {
    /// The roles a token can be given, by their command-line names.
    pub const TOKEN_ROLES: [Role; 8] = [
        Role::Admin,
        Role::Operator,
        Role::Officer,
        Role::SingleWindow,
        Role::Shipper,
        Role::Transporter,
        Role::Integrator,
        Role::DevicePlatform,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Officer => "officer",
            Role::SingleWindow => "single-window",
            Role::Shipper => "shipper",
            Role::Transporter => "transporter",
            Role::Integrator => "integrator",
            Role::DevicePlatform => "device-platform",
            Role::Partner => "partner",
        }
    }

    /// A token role by its command-line name.
    pub fn parse(text: &str) -> Option<Role> {
        Self::TOKEN_ROLES.into_iter().find(|r| r.as_str() == text)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest a token may live.
pub const MAX_LIFETIME_DAYS: i64 = 5 * 366;
/// A token's life when none is asked for.
pub const DEFAULT_LIFETIME_DAYS: i64 = 365;
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
const KEY_BYTES: usize = 32;
const PREFIX: &str = "ects_";

/// A stored token, as `token list` shows it (never its secret or hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub authority: Option<String>,
    pub party: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it last authenticated a request, to the minute ([`LAST_USED_EVERY_S`]).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A token's `last_used_at` is written at most this often: a write a minute per token in
/// use, not one a request.
pub const LAST_USED_EVERY_S: i64 = 60;

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl TokenInfo {
    pub fn live_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// What `token create` asks for, checked.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    pub authority: Option<String>,
    pub party: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("a token named {0:?} already exists (revoked or expired ones keep their name)")]
    NameTaken(String),
    #[error("no token named {0:?}")]
    NoSuchName(String),
    #[error("token key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("random source: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for TokenError {
    fn from(e: sqlx::Error) -> Self {
        TokenError::Store(e.into())
    }
}

/// A name: 1 to 64 of `a-z A-Z 0-9 . _ -`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), TokenError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(TokenError::Invalid(format!(
            "name {:?}: 1 to 64 characters of a-z, A-Z, 0-9, '.', '_', '-', starting with a \
             letter or digit",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// An authority as partners have it: `KE`, `KE-KRA` (a country code, then an agency).
pub fn check_authority(authority: &str) -> Result<(), TokenError> {
    let country_ok = authority
        .get(..2)
        .is_some_and(|c| c.chars().all(|c| c.is_ascii_uppercase()));
    // Two letters alone, or followed by '-' and a non-empty agency (not `KE-`, not `KEA`).
    let agency_ok = match authority.get(2..) {
        Some("") => true,
        Some(rest) => rest.strip_prefix('-').is_some_and(|a| {
            !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        }),
        None => false,
    };
    if country_ok && agency_ok && ects_core::AuthorityCode::parse(authority).is_ok() {
        Ok(())
    } else {
        Err(TokenError::Invalid(format!(
            "authority {:?}: a two-letter country code, optionally followed by an agency \
             (KE, KE-KRA), at most 16 characters of A-Z, 0-9, '-'",
            authority.chars().take(40).collect::<String>()
        )))
    }
}

/// When a token expires: an RFC 3339 time, or `<n>d` days from now; within 5 years.
pub fn parse_expiry(text: Option<&str>, now: DateTime<Utc>) -> Result<DateTime<Utc>, TokenError> {
    let at = match text {
        None => now + Duration::days(DEFAULT_LIFETIME_DAYS),
        Some(t) => {
            if let Some(days) = t.strip_suffix('d') {
                let days: i64 = days.parse().map_err(|_| {
                    TokenError::Invalid(format!("--expires {t:?}: not a number of days"))
                })?;
                if !(1..=MAX_LIFETIME_DAYS).contains(&days) {
                    return Err(TokenError::Invalid(format!(
                        "--expires {t}: 1 to {MAX_LIFETIME_DAYS} days"
                    )));
                }
                now + Duration::days(days)
            } else {
                DateTime::parse_from_rfc3339(t)
                    .map_err(|e| {
                        TokenError::Invalid(format!(
                            "--expires {:?}: neither an RFC 3339 time nor <n>d: {e}",
                            t.chars().take(40).collect::<String>()
                        ))
                    })?
                    .with_timezone(&Utc)
            }
        }
    };
    if at <= now {
        return Err(TokenError::Invalid(
            "--expires must be in the future".into(),
        ));
    }
    if at > now + Duration::days(MAX_LIFETIME_DAYS) {
        return Err(TokenError::Invalid(format!(
            "--expires must be within {MAX_LIFETIME_DAYS} days (5 years)"
        )));
    }
    Ok(at)
}

impl NewToken {
    /// Checks the combination: an officer and a single window need an authority, a
    /// shipper or transporter a party; the others take neither.
    pub fn check(&self) -> Result<(), TokenError> {
        check_name(&self.name)?;
        if self.role == Role::Partner {
            return Err(TokenError::Invalid(
                "partners are configured in [[partners]], not given tokens".into(),
            ));
        }
        match (&self.authority, self.role) {
            (None, Role::Officer | Role::SingleWindow) => {
                return Err(TokenError::Invalid(format!(
                    "a {} token needs --authority (KE, KE-KRA){}",
                    self.role,
                    if self.role == Role::SingleWindow {
                        ": the country it files declarations for"
                    } else {
                        ""
                    }
                )));
            }
            // A single window is bound to its country: it files only for it.
            (Some(a), Role::Officer | Role::SingleWindow) => check_authority(a)?,
            (Some(_), role) => {
                return Err(TokenError::Invalid(format!(
                    "--authority is for officer and single-window tokens, not {role}"
                )));
            }
            (None, _) => {}
        }
        match (&self.party, self.role) {
            (None, Role::Shipper | Role::Transporter) => {
                return Err(TokenError::Invalid(format!(
                    "a {} token needs --party (its {} id)",
                    self.role,
                    if self.role == Role::Shipper {
                        "declarant"
                    } else {
                        "carrier"
                    }
                )));
            }
            (Some(p), Role::Shipper | Role::Transporter) => {
                let ok = (1..=64).contains(&p.len())
                    && p.chars().all(|c| c.is_ascii_graphic() && c != ':');
                if !ok {
                    return Err(TokenError::Invalid(format!(
                        "--party {:?}: 1 to 64 printable ASCII characters, no ':' or spaces",
                        p.chars().take(80).collect::<String>()
                    )));
                }
            }
            (Some(_), role) => {
                return Err(TokenError::Invalid(format!(
                    "--party is for shipper and transporter tokens, not {role}"
                )));
            }
            (None, _) => {}
        }
        Ok(())
    }
}

/// The tokens of one database under one key.
#[derive(Clone)]
pub struct Tokens {
    store: Store,
    key: Arc<hmac::Key>,
    rng: SystemRandom,
    /// When this process last tried to note each token's use: at most one attempt a
    /// minute per token, done off the request's path, whether or not it succeeded.
    noted: Arc<std::sync::Mutex<std::collections::HashMap<String, DateTime<Utc>>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

/// The token key file by default: beside the SQLite file, else `data/token.key`.
pub fn default_key_file(database_url: &SecretString) -> PathBuf {
    default_data_dir(database_url).join("token.key")
}

/// Where the embedded default keeps its files: the SQLite file's directory, else `data/`.
pub fn default_data_dir(database_url: &SecretString) -> PathBuf {
    let url = database_url.expose_secret();
    if url.starts_with("sqlite:") {
        let rest = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        let path = rest.split('?').next().unwrap_or_default();
        if !path.is_empty()
            && path != ":memory:"
            && let Some(dir) = Path::new(path).parent()
        {
            return if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir.to_owned()
            };
        }
    }
    PathBuf::from("data")
}

/// Writes a new file readable by its owner only; fails if it exists.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Reads the key file, creating it (0600, 32 random bytes, hex) on first need.
pub fn load_or_create_key(path: &Path) -> Result<hmac::Key, TokenError> {
    let key_error = |source| TokenError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    if !path.exists() {
        let mut bytes = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| TokenError::Random("the OS random source failed".into()))?;
        match write_private_file(path, hex::encode(bytes).as_bytes()) {
            Ok(()) => tracing::info!(path = %path.display(), "created the API token key"),
            // Another instance made it at the same time: read theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(key_error(e)),
        }
    }
    let text = std::fs::read_to_string(path).map_err(key_error)?;
    let bytes = hex::decode(text.trim())
        .ok()
        .filter(|b| b.len() >= KEY_BYTES)
        .ok_or_else(|| {
            key_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not at least 32 bytes of hex",
            ))
        })?;
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

/// A token presented on a request, found live.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub authority: Option<String>,
    pub party: Option<String>,
}

/// Why a presented token is not accepted; the answer is the same 401 for all of them, the
/// reason goes to the log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    Unknown,
    Expired,
    Revoked,
}

impl Tokens {
    pub fn new(store: Store, key: hmac::Key) -> Self {
        Self {
            store,
            key: Arc::new(key),
            rng: SystemRandom::new(),
            noted: Default::default(),
        }
    }

    fn random_hex(&self, n: usize) -> Result<String, TokenError> {
        let mut bytes = vec![0u8; n];
        self.rng
            .fill(&mut bytes)
            .map_err(|_| TokenError::Random("the OS random source failed".into()))?;
        Ok(hex::encode(bytes))
    }

    /// Stores a new token and returns it: the only time its secret exists outside the
    /// caller's hands.
    pub async fn create(
        &self,
        new: &NewToken,
        now: DateTime<Utc>,
    ) -> Result<(TokenInfo, SecretString), TokenError> {
        new.check()?;
        let id = self.random_hex(ID_BYTES)?;
        let secret = SecretString::from(self.random_hex(SECRET_BYTES)?);
        let tag = hmac::sign(&self.key, secret.expose_secret().as_bytes());
        let mut tx = self.store.begin_write().await?;
        let taken = sqlx::query("select 1 from api_tokens where name = $1")
            .bind(&new.name)
            .fetch_optional(&mut **tx)
            .await?
            .is_some();
        if taken {
            tx.rollback().await?;
            return Err(TokenError::NameTaken(new.name.clone()));
        }
        sqlx::query(
            "insert into api_tokens (id, name, role, authority, party, key_hash, created_at,
                                     created_by, expires_at)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(&new.name)
        .bind(new.role.as_str())
        .bind(new.authority.clone())
        .bind(new.party.clone())
        .bind(hex::encode(tag.as_ref()))
        .bind(ts(now))
        .bind(&new.created_by)
        .bind(ts(new.expires_at))
        .execute(&mut **tx)
        .await?;
        tx.commit().await?;
        let token = SecretString::from(format!("{PREFIX}{id}_{}", secret.expose_secret()));
        Ok((
            TokenInfo {
                id,
                name: new.name.clone(),
                role: new.role,
                authority: new.authority.clone(),
                party: new.party.clone(),
                created_at: now,
                created_by: new.created_by.clone(),
                expires_at: new.expires_at,
                revoked_at: None,
                last_used_at: None,
            },
            token,
        ))
    }

    pub async fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let rows = sqlx::query(
            "select id, name, role, authority, party, created_at, created_by, expires_at,
                    revoked_at, last_used_at
             from api_tokens order by name",
        )
        .fetch_all(self.store.pool())
        .await?;
        rows.iter().map(info_of).collect()
    }

    /// Revokes a token by name; revoking a revoked one is a no-op. Returns whether it was
    /// live before.
    pub async fn revoke(&self, name: &str, now: DateTime<Utc>) -> Result<bool, TokenError> {
        check_name(name)?;
        let mut tx = self.store.begin_write().await?;
        let row = sqlx::query("select revoked_at from api_tokens where name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(TokenError::NoSuchName(name.to_owned()));
        };
        let revoked: Option<String> = row.try_get("revoked_at")?;
        if revoked.is_some() {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("update api_tokens set revoked_at = $1 where name = $2")
            .bind(ts(now))
            .bind(name)
            .execute(&mut **tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Whether a live admin token exists.
    pub async fn live_admin(&self, now: DateTime<Utc>) -> Result<bool, TokenError> {
        Ok(self
            .list()
            .await?
            .iter()
            .any(|t| t.role == Role::Admin && t.live_at(now)))
    }

    /// The principal of a presented token, or why not.
    pub async fn authenticate(
        &self,
        token: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<Result<Authenticated, Refusal>, StoreError> {
        let Some((id, secret)) = token
            .expose_secret()
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .filter(|(id, secret)| {
                id.len() == 2 * ID_BYTES
                    && secret.len() == 2 * SECRET_BYTES
                    && id.bytes().all(|b| b.is_ascii_hexdigit())
            })
        else {
            return Ok(Err(Refusal::Malformed));
        };
        let row = sqlx::query(
            "select id, name, role, authority, party, key_hash, created_at, created_by,
                    expires_at, revoked_at, last_used_at
             from api_tokens where id = $1",
        )
        .bind(id)
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else {
            return Ok(Err(Refusal::Unknown));
        };
        let hash: String = row.try_get("key_hash")?;
        let Ok(tag) = hex::decode(&hash) else {
            return Err(StoreError::Corrupt(format!("api token {id}: key hash")));
        };
        if hmac::verify(&self.key, secret.as_bytes(), &tag).is_err() {
            return Ok(Err(Refusal::Unknown));
        }
        let info = info_of(&row).map_err(|e| match e {
            TokenError::Store(s) => s,
            other => StoreError::Corrupt(other.to_string()),
        })?;
        if info.revoked_at.is_some() {
            return Ok(Err(Refusal::Revoked));
        }
        if info.expires_at <= now {
            return Ok(Err(Refusal::Expired));
        }
        let stale = |at: Option<DateTime<Utc>>| {
            at.is_none_or(|at| (now - at).num_seconds() >= LAST_USED_EVERY_S)
        };
        if stale(info.last_used_at) {
            let due = {
                let mut noted = self.noted.lock().unwrap_or_else(|p| p.into_inner());
                let due = stale(noted.get(&info.id).copied());
                if due {
                    if noted.len() >= 100_000 {
                        noted.clear();
                    }
                    noted.insert(info.id.clone(), now);
                }
                due
            };
            if due {
                // Off the request's path: a request never waits for the write lock, and
                // is never refused because its token's use could not be noted.
                let tokens = self.clone();
                let (id, name) = (info.id.clone(), info.name.clone());
                tokio::spawn(async move {
                    if let Err(e) = tokens.note_use(&id, now).await {
                        tracing::warn!(token = %name, error = %e, "token use not recorded");
                    }
                });
            }
        }
        Ok(Ok(Authenticated {
            id: info.id,
            name: info.name,
            role: info.role,
            authority: info.authority,
            party: info.party,
        }))
    }
}

impl Tokens {
    async fn note_use(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.store.begin_write().await?;
        sqlx::query("update api_tokens set last_used_at = $1 where id = $2")
            .bind(ts(now))
            .bind(id)
            .execute(&mut **tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn info_of(row: &sqlx::any::AnyRow) -> Result<TokenInfo, TokenError> {
    let role: String = row.try_get("role")?;
    let revoked: Option<String> = row.try_get("revoked_at")?;
    Ok(TokenInfo {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("api token role {role:?}")))?,
        authority: row.try_get("authority")?,
        party: row.try_get("party")?,
        created_at: parse_ts(&row.try_get::<String, _>("created_at")?)?,
        created_by: row.try_get("created_by")?,
        expires_at: parse_ts(&row.try_get::<String, _>("expires_at")?)?,
        revoked_at: revoked.as_deref().map(parse_ts).transpose()?,
        last_used_at: row
            .try_get::<Option<String>, _>("last_used_at")?
            .as_deref()
            .map(parse_ts)
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_by_their_command_line_names() {
        for role in Role::TOKEN_ROLES {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("partner"), None);
        assert_eq!(Role::parse("Admin"), None);
    }

    #[test]
    fn names_authorities_and_expiries_are_checked() {
        assert!(check_name("alice.officer-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_authority("KE-KRA").is_ok());
        assert!(check_authority("GT").is_ok());
        assert!(check_authority("ke").is_err());
        assert!(check_authority("1E").is_err());
        assert!(check_authority("KE-").is_err());
        assert!(check_authority("KEA").is_err());
        assert!(check_authority("aé").is_err());
        assert!(check_authority("é").is_err());
        let now = Utc::now();
        assert!(parse_expiry(Some("30d"), now).is_ok());
        assert!(parse_expiry(Some("0d"), now).is_err());
        assert!(parse_expiry(Some("2000-01-01T00:00:00Z"), now).is_err());
        assert!(parse_expiry(Some("9999-01-01T00:00:00Z"), now).is_err());
        assert!(parse_expiry(Some("soon"), now).is_err());
        assert_eq!(
            parse_expiry(None, now).ok(),
            Some(now + Duration::days(DEFAULT_LIFETIME_DAYS))
        );
    }

    #[test]
    fn roles_take_the_binding_they_need_and_no_other() {
        let new = |role, authority: Option<&str>, party: Option<&str>| NewToken {
            name: "t".into(),
            role,
            authority: authority.map(str::to_owned),
            party: party.map(str::to_owned),
            expires_at: Utc::now() + Duration::days(1),
            created_by: "test".into(),
        };
        assert!(new(Role::Officer, Some("GT"), None).check().is_ok());
        assert!(new(Role::SingleWindow, Some("GT"), None).check().is_ok());
        assert!(new(Role::Shipper, None, Some("GT-NIT-1")).check().is_ok());
        assert!(
            new(Role::Transporter, None, Some("GT-TR-1"))
                .check()
                .is_ok()
        );
        assert!(new(Role::Operator, None, None).check().is_ok());
        for refused in [
            new(Role::Officer, None, None),
            // A single window files for one country: unbound, it would file for any.
            new(Role::SingleWindow, None, None),
            new(Role::Shipper, None, None),
            new(Role::Shipper, None, Some("a:b")),
            new(Role::Operator, Some("GT"), None),
            new(Role::Integrator, None, Some("X")),
            new(Role::Partner, None, None),
        ] {
            assert!(refused.check().is_err(), "{:?}", refused.role);
        }
    }
}
