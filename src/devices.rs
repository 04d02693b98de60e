//! Device authentication: each device's keys (Ed25519 public keys, HMAC-SHA256 secrets
//! sealed under the server's key file), the policy, and the judgement of one seal event.
//!
//! A signed event is judged with the key its `key_id` names: the key's validity window at
//! the event's time (a blind-area batch signed before a rotation ended still verifies when
//! it arrives hours later), its revocation at receipt (a revoked key is presumed stolen, and
//! a thief can date an event as he likes: nothing it signs is taken after the revocation).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use ects_core::SealEvent;
use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use crate::store::StoreError;
use crate::store::devices::{StoredKey, device_platform, keys_of};

/// `device_auth`: what an unsigned event of a device without a key gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Every event must be signed by a key of its device.
    Required,
    /// Unsigned events of devices without a key are taken (marked unauthenticated).
    #[default]
    Optional,
    /// As optional; signed events are still verified.
    Off,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Optional => "optional",
            Self::Off => "off",
        }
    }
}

/// `[devices]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesSettings {
    /// The installation's policy (`optional` by default).
    pub device_auth: Policy,
    /// Per device platform: `[devices.platforms.NAME] device_auth = "required"`.
    pub platforms: std::collections::BTreeMap<String, PlatformSettings>,
    /// The 32-byte key HMAC device secrets are sealed with (ChaCha20-Poly1305); created,
    /// mode 0600, when the first HMAC key is added. Serve and the CLI must name the same.
    pub secret_key_file: PathBuf,
}

impl Default for DevicesSettings {
    fn default() -> Self {
        Self {
            device_auth: Policy::Optional,
            platforms: Default::default(),
            secret_key_file: PathBuf::from("data/device-secrets.key"),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformSettings {
    /// This platform's devices' policy; the installation's when absent.
    pub device_auth: Option<Policy>,
}

impl DevicesSettings {
    /// The policy for events of a device on this platform.
    pub fn policy_for(&self, platform: Option<&str>) -> Policy {
        platform
            .and_then(|p| self.platforms.get(p))
            .and_then(|p| p.device_auth)
            .unwrap_or(self.device_auth)
    }
}

/// `ed25519` or `hmac-sha256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Algorithm {
    #[serde(rename = "ed25519")]
    Ed25519,
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519",
            Self::HmacSha256 => "hmac-sha256",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "ed25519" => Some(Self::Ed25519),
            "hmac-sha256" => Some(Self::HmacSha256),
            _ => None,
        }
    }
}

/// Shortest and longest HMAC secret accepted, in bytes.
pub const HMAC_SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=64;

/// An Ed25519 public key from its base64 (32 bytes).
pub fn parse_ed25519_public(text: &str) -> Result<[u8; 32], String> {
    if text.len() > 64 {
        return Err("an Ed25519 public key is 44 characters of base64".into());
    }
    let bytes = B64
        .decode(text.trim())
        .map_err(|_| "not base64 (RFC 4648, with padding)".to_owned())?;
    let key = <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("an Ed25519 public key is 32 bytes, not {}", bytes.len()))?;
    // Points of small order (and their non-canonical encodings): a signature can be made
    // for them without any private key (R the identity, S zero).
    if SMALL_ORDER_POINTS
        .iter()
        .any(|weak| hex::encode(key) == *weak)
    {
        return Err("a point of small order, not a usable Ed25519 public key".into());
    }
    Ok(key)
}

/// The encodings of Ed25519's points of small order (as libsodium's blocklist has them).
const SMALL_ORDER_POINTS: [&str; 14] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "0100000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
];

/// An HMAC secret's bytes, checked for length.
pub fn check_hmac_secret(secret: &[u8]) -> Result<(), String> {
    if HMAC_SECRET_BYTES.contains(&secret.len()) {
        Ok(())
    } else {
        Err(format!(
            "an HMAC-SHA256 secret is {} to {} bytes, not {}",
            HMAC_SECRET_BYTES.start(),
            HMAC_SECRET_BYTES.end(),
            secret.len()
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("cannot read or create the device secret key file {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the device secret key file {0} is not 32 bytes")]
    Length(String),
    #[error("a stored device secret cannot be opened with the device secret key file")]
    Open,
    #[error("no random bytes")]
    Random,
}

/// The server key that seals HMAC device secrets.
#[derive(Clone)]
pub struct SecretKey(Arc<aead::LessSafeKey>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// Reads the key file, creating it (32 random bytes, mode 0600) when `create` and it
    /// does not exist.
    pub fn load(path: &Path, create: bool) -> Result<Self, SecretKeyError> {
        let io = |source| SecretKeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => {
                let mut fresh = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut fresh)
                    .map_err(|_| SecretKeyError::Random)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                write_private(path, &fresh).map_err(io)?;
                fresh.to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        let key = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &bytes)
            .map_err(|_| SecretKeyError::Length(path.display().to_string()))?;
        Ok(Self(Arc::new(aead::LessSafeKey::new(key))))
    }

    /// base64(nonce || ciphertext || tag), bound to the device and key id.
    pub fn seal(
        &self,
        device_id: &str,
        key_id: &str,
        secret: &[u8],
    ) -> Result<String, SecretKeyError> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretKeyError::Random)?;
        let mut data = secret.to_vec();
        let aad = format!("{device_id}\u{0}{key_id}");
        self.0
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad.as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretKeyError::Open)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(B64.encode(out))
    }

    pub fn open(
        &self,
        device_id: &str,
        key_id: &str,
        sealed: &str,
    ) -> Result<Vec<u8>, SecretKeyError> {
        let bytes = B64.decode(sealed).map_err(|_| SecretKeyError::Open)?;
        if bytes.len() < aead::NONCE_LEN {
            return Err(SecretKeyError::Open);
        }
        let (nonce, data) = bytes.split_at(aead::NONCE_LEN);
        let nonce =
            aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretKeyError::Open)?;
        let mut data = data.to_vec();
        let aad = format!("{device_id}\u{0}{key_id}");
        let plain = self
            .0
            .open_in_place(nonce, aead::Aad::from(aad.as_bytes()), &mut data)
            .map_err(|_| SecretKeyError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Whether `signature` (base64) is the key's signature of `message`.
pub fn verify(algorithm: Algorithm, key: &[u8], message: &[u8], signature: &str) -> bool {
    let Ok(signature) = B64.decode(signature) else {
        return false;
    };
    match algorithm {
        Algorithm::Ed25519 => {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
                .verify(message, &signature)
                .is_ok()
        }
        // ring compares the tag in constant time.
        Algorithm::HmacSha256 => ring::hmac::verify(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            message,
            &signature,
        )
        .is_ok(),
    }
}

/// Signs with an HMAC secret: base64 of the tag (for tests and vendors' tools).
pub fn hmac_sign(secret: &[u8], message: &[u8]) -> String {
    B64.encode(ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        message,
    ))
}

/// Signs with an Ed25519 private key given by its 32-byte seed.
pub fn ed25519_sign(seed: &[u8; 32], message: &[u8]) -> Option<String> {
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
    Some(B64.encode(pair.sign(message).as_ref()))
}

/// The public key (base64) of an Ed25519 seed.
pub fn ed25519_public(seed: &[u8; 32]) -> Option<String> {
    use ring::signature::KeyPair as _;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
    Some(B64.encode(pair.public_key().as_ref()))
}

/// May this device platform post events of this device? `platform` is the posting
/// principal's platform name (`None`: not a device platform, no restriction here);
/// `registered` the platform the device is registered to (`None`: not registered).
pub fn platform_may_post(
    platform: Option<&str>,
    device_id: &str,
    registered: Option<&str>,
) -> Result<(), String> {
    match platform {
        None => Ok(()),
        Some(p) if registered == Some(p) => Ok(()),
        // Said alike whether the device is unknown or another platform's.
        Some(p) => Err(format!(
            "device {device_id} is not registered to device platform {p}"
        )),
    }
}

/// A device platform's name: 1 to 64 of `A-Z a-z 0-9 - _ . :`.
pub fn check_platform_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err("a platform name is 1 to 64 characters of A-Z a-z 0-9 - _ . :".into())
    }
}

/// The judgement of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Taken; how it was authenticated, as stored: `key:<id>`, `platform:<name>`,
    /// `key:<id>,platform:<name>`, or `none`.
    Taken { mark: String, signed: bool },
    /// Refused, and why.
    Refused(String),
}

/// What judging a device's events needs to know of it, read once per message.
#[derive(Debug, Clone)]
pub struct DeviceFacts {
    /// The platform it is registered to.
    pub registered: Option<String>,
    /// All its keys, revoked and expired ones too.
    pub keys: Vec<StoredKey>,
}

impl DeviceFacts {
    pub async fn load(conn: &mut AnyConnection, device_id: &str) -> Result<Self, StoreError> {
        Ok(Self {
            registered: device_platform(&mut *conn, device_id).await?.flatten(),
            keys: keys_of(&mut *conn, device_id).await?,
        })
    }
}

/// Device authentication as configured.
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    settings: DevicesSettings,
    /// The sealing key, once read (the CLI may create its file while the gateway runs).
    secret_key: Arc<std::sync::Mutex<Option<SecretKey>>>,
}

impl DeviceAuth {
    pub fn new(settings: DevicesSettings) -> Self {
        Self {
            settings,
            secret_key: Default::default(),
        }
    }

    fn secret_key(&self) -> Result<SecretKey, SecretKeyError> {
        let mut held = self
            .secret_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(key) = held.as_ref() {
            return Ok(key.clone());
        }
        let key = SecretKey::load(&self.settings.secret_key_file, false)?;
        *held = Some(key.clone());
        Ok(key)
    }

    pub fn settings(&self) -> &DevicesSettings {
        &self.settings
    }

    /// Judges one event against the device's keys as stored now (a key added by the CLI
    /// counts from the next event on, without a restart). `platform`: the device platform
    /// that posted it, if a device platform did.
    pub async fn judge(
        &self,
        conn: &mut AnyConnection,
        event: &SealEvent,
        platform: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        let facts = DeviceFacts::load(conn, event.device_id.as_str()).await?;
        self.judge_with(&facts, event, platform, now)
    }

    /// Judges one event against its device's facts as read in this transaction (one read
    /// per device and message, not per event).
    pub fn judge_with(
        &self,
        facts: &DeviceFacts,
        event: &SealEvent,
        platform: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        let device = event.device_id.as_str();
        let registered = &facts.registered;
        if let Err(why) = platform_may_post(platform, device, registered.as_deref()) {
            return Ok(Verdict::Refused(why));
        }
        let via = platform.map(|p| format!("platform:{p}"));
        let keys = &facts.keys;
        if event.key_id.is_some() || event.signature.is_some() {
            let verdict = self.judge_signed(event, keys, now)?;
            return Ok(match verdict {
                Ok(key_id) => Verdict::Taken {
                    mark: match via {
                        Some(v) => format!("key:{key_id},{v}"),
                        None => format!("key:{key_id}"),
                    },
                    signed: true,
                },
                Err(why) => Verdict::Refused(why),
            });
        }
        if !keys.is_empty() {
            return Ok(Verdict::Refused(format!(
                "device {device} has a key: its events must be signed (key_id and signature)"
            )));
        }
        let policy = self.settings.policy_for(platform.or(registered.as_deref()));
        if policy == Policy::Required {
            return Ok(Verdict::Refused(
                "unsigned event: device_auth is required".to_owned(),
            ));
        }
        Ok(Verdict::Taken {
            mark: via.unwrap_or_else(|| "none".to_owned()),
            signed: false,
        })
    }

    /// The key id that verified the event, or why none did.
    fn judge_signed(
        &self,
        event: &SealEvent,
        keys: &[StoredKey],
        now: DateTime<Utc>,
    ) -> Result<Result<String, String>, StoreError> {
        let (Some(key_id), Some(signature), Some(_)) = (&event.key_id, &event.signature, event.seq)
        else {
            return Ok(Err(
                "a signed event needs key_id, signature and seq".to_owned()
            ));
        };
        let key_id = key_id.as_str();
        let Some(key) = keys.iter().find(|k| k.key_id == key_id) else {
            return Ok(Err(format!(
                "device {} has no key {key_id}",
                event.device_id
            )));
        };
        if let Some(revoked) = key.revoked_at
            && revoked <= now
        {
            return Ok(Err(format!(
                "key {key_id} was revoked at {}",
                crate::store::ts(revoked)
            )));
        }
        let within = key.valid_from <= event.time && key.valid_until.is_none_or(|u| event.time < u);
        if !within {
            return Ok(Err(format!(
                "key {key_id} is not valid at the event's time {} (valid from {}{})",
                crate::store::ts(event.time),
                crate::store::ts(key.valid_from),
                key.valid_until
                    .map(|u| format!(" until {}", crate::store::ts(u)))
                    .unwrap_or_default()
            )));
        }
        let Some(algorithm) = Algorithm::parse(&key.algorithm) else {
            return Err(StoreError::Corrupt(format!(
                "device key {key_id} has algorithm {:?}",
                key.algorithm
            )));
        };
        let material = match algorithm {
            Algorithm::Ed25519 => parse_ed25519_public(&key.key_material)
                .map(|k| k.to_vec())
                .map_err(|e| StoreError::Corrupt(format!("device key {key_id}: {e}")))?,
            Algorithm::HmacSha256 => self
                .secret_key()
                .and_then(|k| k.open(&key.device_id, &key.key_id, &key.key_material))
                .map_err(|e| StoreError::Corrupt(format!("device key {key_id}: {e}")))?,
        };
        if verify(
            algorithm,
            &material,
            &event.signed_bytes(),
            signature.as_str(),
        ) {
            Ok(Ok(key_id.to_owned()))
        } else {
            Ok(Err(format!("bad signature by key {key_id}")))
        }
    }
}

/// A key to register: an Ed25519 public key (base64) or an HMAC secret.
pub enum KeyMaterial {
    Ed25519Public(String),
    HmacSecret(secrecy::SecretBox<Vec<u8>>),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ed25519Public(k) => write!(f, "Ed25519Public({k})"),
            Self::HmacSecret(_) => f.write_str("HmacSecret(..)"),
        }
    }
}

#[derive(Debug)]
pub struct NewKey {
    pub device_id: ects_core::DeviceId,
    /// Default: for Ed25519 the first 16 hex digits of the public key's SHA-256, for
    /// HMAC 16 random hex digits.
    pub key_id: Option<ects_core::KeyId>,
    pub material: KeyMaterial,
    /// Default: now.
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    pub created_by: String,
}

/// A key as shown (API and CLI): never a secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub device_id: String,
    pub key_id: String,
    pub algorithm: Algorithm,
    /// The Ed25519 public key (base64); absent for an HMAC key, whose secret is never shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    pub valid_from: DateTime<Utc>,
    pub valid_until: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// `valid`, `not_yet_valid`, `expired` or `revoked`, as of the answer.
    pub state: &'static str,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

impl KeyInfo {
    pub fn of(key: &StoredKey, now: DateTime<Utc>) -> Self {
        let algorithm = Algorithm::parse(&key.algorithm).unwrap_or(Algorithm::Ed25519);
        let state = if key.revoked_at.is_some_and(|r| r <= now) {
            "revoked"
        } else if now < key.valid_from {
            "not_yet_valid"
        } else if key.valid_until.is_some_and(|u| u <= now) {
            "expired"
        } else {
            "valid"
        };
        Self {
            device_id: key.device_id.clone(),
            key_id: key.key_id.clone(),
            algorithm,
            public_key: (algorithm == Algorithm::Ed25519).then(|| key.key_material.clone()),
            valid_from: key.valid_from,
            valid_until: key.valid_until,
            revoked_at: key.revoked_at,
            state,
            created_at: key.created_at,
            created_by: key.created_by.clone(),
        }
    }
}

/// Why a key was not registered: the field and the reason.
#[derive(Debug, thiserror::Error)]
pub enum AddKeyError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(
        "key {0} of this device is registered already with other key material (or revoked): a key id names one key for good; rotate under a new key id"
    )]
    Conflict(String),
    #[error(transparent)]
    SecretKey(#[from] SecretKeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Registers a key (the device with it, if new), or sets the validity window of the same
/// key registered already.
pub async fn add_key(
    store: &crate::store::Store,
    settings: &DevicesSettings,
    new: NewKey,
    now: DateTime<Utc>,
) -> Result<(crate::store::devices::PutKey, KeyInfo), AddKeyError> {
    use secrecy::ExposeSecret;
    let invalid = |field, reason: String| AddKeyError::Invalid { field, reason };
    let valid_from = new.valid_from.unwrap_or(now);
    let in_range = |t: DateTime<Utc>| (2000..=2199).contains(&chrono::Datelike::year(&t));
    if !in_range(valid_from) {
        return Err(invalid(
            "valid_from",
            "must lie in the years 2000 to 2199".into(),
        ));
    }
    if new.valid_until.is_some_and(|u| !in_range(u)) {
        return Err(invalid(
            "valid_until",
            "must lie in the years 2000 to 2199".into(),
        ));
    }
    if let Some(until) = new.valid_until
        && until <= valid_from
    {
        return Err(invalid(
            "valid_until",
            "must be after valid_from".to_owned(),
        ));
    }
    let device = new.device_id.as_str().to_owned();
    let (algorithm, key_id, material, secret) = match &new.material {
        KeyMaterial::Ed25519Public(text) => {
            let key = parse_ed25519_public(text).map_err(|e| invalid("public_key", e))?;
            let key_id = match &new.key_id {
                Some(k) => k.as_str().to_owned(),
                None => {
                    use sha2::Digest;
                    hex::encode(&sha2::Sha256::digest(key)[..8])
                }
            };
            (Algorithm::Ed25519, key_id, B64.encode(key), None)
        }
        KeyMaterial::HmacSecret(secret) => {
            let secret = secret.expose_secret();
            check_hmac_secret(secret).map_err(|e| invalid("secret", e))?;
            let key_id = match &new.key_id {
                Some(k) => k.as_str().to_owned(),
                None => {
                    let mut bytes = [0u8; 8];
                    SystemRandom::new()
                        .fill(&mut bytes)
                        .map_err(|_| SecretKeyError::Random)?;
                    hex::encode(bytes)
                }
            };
            let sealer = SecretKey::load(&settings.secret_key_file, true)?;
            let sealed = sealer.seal(&device, &key_id, secret)?;
            (
                Algorithm::HmacSha256,
                key_id,
                sealed,
                Some((sealer, secret.clone())),
            )
        }
    };
    let stored = StoredKey {
        device_id: device.clone(),
        key_id: key_id.clone(),
        algorithm: algorithm.as_str().to_owned(),
        key_material: material.clone(),
        valid_from,
        valid_until: new.valid_until,
        revoked_at: None,
        created_at: now,
        created_by: new.created_by.clone(),
    };
    let outcome = crate::store::devices::put_key(store, &stored, |old| match &secret {
        None => old.key_material == material,
        Some((sealer, secret)) => sealer
            .open(&old.device_id, &old.key_id, &old.key_material)
            // Compared as digests: the time taken says nothing of the secret.
            .is_ok_and(|s| {
                use sha2::Digest;
                sha2::Sha256::digest(&s) == sha2::Sha256::digest(secret)
            }),
    })
    .await?;
    if outcome == crate::store::devices::PutKey::Conflict {
        return Err(AddKeyError::Conflict(key_id));
    }
    let shown = crate::store::devices::keys_of(
        &mut *store.pool().acquire().await.map_err(StoreError::from)?,
        &device,
    )
    .await?
    .into_iter()
    .find(|k| k.key_id == key_id)
    .unwrap_or(stored);
    Ok((outcome, KeyInfo::of(&shown, now)))
}

/// The test vector in `schemas/device-signature-test-vector.json`.
#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = include_str!("../schemas/device-signature-test-vector.json");

    #[test]
    fn small_order_public_keys_are_refused() {
        for weak in SMALL_ORDER_POINTS {
            let b64 = B64.encode(hex::decode(weak).unwrap());
            assert!(parse_ed25519_public(&b64).is_err(), "{weak}");
        }
        let good = ed25519_public(&[7; 32]).unwrap();
        assert!(parse_ed25519_public(&good).is_ok());
    }

    #[test]
    fn the_published_test_vector_holds() {
        let v: serde_json::Value = serde_json::from_str(VECTOR).unwrap();
        let event: SealEvent = serde_json::from_value(v["event"].clone()).unwrap();
        let bytes = event.signed_bytes();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            v["signed_bytes"].as_str().unwrap()
        );
        // Ed25519: the seed gives the public key, the signature is deterministic.
        let seed: [u8; 32] = hex::decode(v["ed25519"]["private_seed_hex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let public = v["ed25519"]["public_key_base64"].as_str().unwrap();
        assert_eq!(ed25519_public(&seed).unwrap(), public);
        let signature = v["ed25519"]["signature_base64"].as_str().unwrap();
        assert_eq!(ed25519_sign(&seed, &bytes).unwrap(), signature);
        let key = parse_ed25519_public(public).unwrap();
        assert!(verify(Algorithm::Ed25519, &key, &bytes, signature));
        assert_eq!(event.signature.as_ref().unwrap().as_str(), signature);
        // One byte changed: refused.
        let mut other = bytes.clone();
        other[20] ^= 1;
        assert!(!verify(Algorithm::Ed25519, &key, &other, signature));
        // HMAC-SHA256.
        let secret = hex::decode(v["hmac_sha256"]["secret_hex"].as_str().unwrap()).unwrap();
        let mut hmac_event = event.clone();
        hmac_event.key_id =
            Some(ects_core::KeyId::parse(v["hmac_sha256"]["key_id"].as_str().unwrap()).unwrap());
        let hmac_bytes = hmac_event.signed_bytes();
        assert_eq!(
            String::from_utf8(hmac_bytes.clone()).unwrap(),
            v["hmac_sha256"]["signed_bytes"].as_str().unwrap()
        );
        let tag = v["hmac_sha256"]["signature_base64"].as_str().unwrap();
        assert_eq!(hmac_sign(&secret, &hmac_bytes), tag);
        assert!(verify(Algorithm::HmacSha256, &secret, &hmac_bytes, tag));
        assert!(!verify(Algorithm::HmacSha256, &secret, &bytes, tag));
    }

    #[test]
    fn sealed_secrets_open_only_for_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = SecretKey::load(&path, true).unwrap();
        let sealed = key.seal("D1", "k1", b"0123456789abcdef").unwrap();
        assert!(!sealed.contains("0123456789abcdef"));
        assert_eq!(key.open("D1", "k1", &sealed).unwrap(), b"0123456789abcdef");
        assert!(key.open("D1", "k2", &sealed).is_err());
        let again = SecretKey::load(&path, false).unwrap();
        assert_eq!(
            again.open("D1", "k1", &sealed).unwrap(),
            b"0123456789abcdef"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_platform_posts_only_for_its_devices() {
        assert!(platform_may_post(None, "D1", None).is_ok());
        assert!(platform_may_post(Some("acme"), "D1", Some("acme")).is_ok());
        let other = platform_may_post(Some("acme"), "D1", Some("other")).unwrap_err();
        let unknown = platform_may_post(Some("acme"), "D1", None).unwrap_err();
        // Nothing tells an unknown device from another platform's.
        assert_eq!(other, unknown);
    }

    #[test]
    fn policy_per_platform_falls_back_to_the_installation() {
        let mut s = DevicesSettings::default();
        s.platforms.insert(
            "strict".into(),
            PlatformSettings {
                device_auth: Some(Policy::Required),
            },
        );
        s.platforms
            .insert("plain".into(), PlatformSettings::default());
        assert_eq!(s.policy_for(None), Policy::Optional);
        assert_eq!(s.policy_for(Some("strict")), Policy::Required);
        assert_eq!(s.policy_for(Some("plain")), Policy::Optional);
        assert_eq!(s.policy_for(Some("unknown")), Policy::Optional);
    }
}
