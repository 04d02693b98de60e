//! The command line: `serve`, `migrate`, `formats`, `validate`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{ConfigArgs, Settings};
use crate::formats::Inbound;
use crate::problem::DocumentError;
use crate::startup::{self, Application};
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(
    name = "ects-gateway",
    version,
    about = "Customs transit cargo-tracking gateway"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (HTTP API) until stopped.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// List the formats: ids, versions, the messages each reads (in) and writes (out).
    Formats,
    /// Check a document against a format; exit status 1 when it is not valid.
    Validate {
        /// Format id, e.g. ects-json.
        #[arg(long)]
        format: String,
        /// The document; `-` for standard input.
        file: PathBuf,
        /// List every unmapped part of the document (by default: how many, and a few).
        #[arg(long)]
        unmapped: bool,
    },
    /// Translate a document from one format to another (nothing is stored); the result on
    /// standard output, problems and unmapped parts on standard error.
    Translate {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// The document; `-` (default) for standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// List every unmapped part of the input (by default: how many, and a few).
        #[arg(long)]
        unmapped: bool,
    },
    /// Mapping tools for integrators.
    Mapping {
        #[command(subcommand)]
        command: MappingCommand,
    },
    /// The office registry.
    Offices {
        #[command(subcommand)]
        command: OfficesCommand,
    },
    /// API tokens of people and platforms (against the database of `serve`; a running
    /// gateway sees changes at once).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Devices: their keys and their platform (a running gateway sees changes at once).
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed alone on the last line of standard output, once: only
    /// its keyed hash is kept.
    Create {
        /// admin, operator, officer, single-window, shipper, transporter, integrator,
        /// device-platform.
        #[arg(long)]
        role: String,
        /// Who or what it is for: 1 to 64 of a-z A-Z 0-9 . _ -, unique.
        #[arg(long)]
        name: String,
        /// An officer's authority (KE, KE-KRA); required for officers.
        #[arg(long)]
        authority: Option<String>,
        /// A shipper's declarant id or a transporter's carrier id; required for those.
        #[arg(long)]
        party: Option<String>,
        /// An RFC 3339 time or `<n>d` (days); within 5 years; default 365d.
        #[arg(long)]
        expires: Option<String>,
    },
    /// The tokens (never their secrets): name, role, authority or party, expiry, state.
    List,
    /// Revoke a token by name, at once.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// A device's keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Registers a device to a device platform: events a device-platform principal of that
    /// name posts are taken for it (and for the platform's other devices only).
    Register {
        #[arg(long)]
        device: String,
        #[arg(long)]
        platform: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Registers a key: Ed25519 public key (preferred) or HMAC-SHA256 secret. From then
    /// on the device's unsigned events are refused.
    Add {
        #[arg(long)]
        device: String,
        /// The Ed25519 public key, base64 (32 bytes).
        #[arg(
            long,
            conflicts_with = "hmac_secret_file",
            required_unless_present = "hmac_secret_file"
        )]
        ed25519_public: Option<String>,
        /// A file holding the HMAC-SHA256 secret in base64 (16 to 64 bytes); stored sealed
        /// under `[devices] secret_key_file`, never shown again.
        #[arg(long)]
        hmac_secret_file: Option<PathBuf>,
        /// Default: derived from the public key (Ed25519), random (HMAC).
        #[arg(long)]
        key_id: Option<String>,
        /// RFC 3339; default now.
        #[arg(long)]
        valid_from: Option<chrono::DateTime<chrono::Utc>>,
        /// RFC 3339; default none (valid until revoked).
        #[arg(long)]
        valid_until: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Lists keys (never a secret): device, key id, algorithm, state, validity.
    List {
        #[arg(long)]
        device: Option<String>,
    },
    /// Revokes a key from now on.
    Revoke {
        #[arg(long)]
        device: String,
        #[arg(long)]
        key_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OfficesCommand {
    /// Register or replace the offices of a file in the database, all or none: CSV
    /// (`*.csv`, the columns of mappings/offices/*.csv) or JSON (an array of offices, or
    /// {"offices": [...]}). Problems are printed with their line or pointer (exit status 1).
    Import {
        /// The file; `-` for standard input (JSON).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum MappingCommand {
    /// Run the fixture cases (`DIR/<format>/<case>/`: input.*, expected.ects.json or
    /// expected.problems.json, expected.<target>.<ext>) and the round trips; print a diff
    /// for each mismatch and the counts last; exit status 1 if any case fails.
    Test {
        /// Default: tests/formats, the shipped formats' cases (for the shipped mappings).
        /// The test-only formats: `--mappings tests/mappings mapping test tests/fixtures`.
        #[arg(default_value = "tests/formats")]
        dir: PathBuf,
        /// Only the cases of this format (`DIR/<format>/`).
        #[arg(long)]
        format: Option<String>,
    },
}

/// Largest document `validate` reads.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

fn read_input(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut body)
            .context("cannot read standard input")?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("cannot open {}", path.display()))?
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut body)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    anyhow::ensure!(
        body.len() as u64 <= MAX_FILE_BYTES,
        "{} is larger than {MAX_FILE_BYTES} bytes",
        path.display()
    );
    Ok(body)
}

/// Runs a command with its loaded settings; the exit status is 0 on success, 1 for an
/// invalid document.
pub async fn run(command: Command, settings: Settings) -> anyhow::Result<i32> {
    match command {
        Command::Serve => {
            let admin_file = settings.auth.admin_file(&settings.database_url);
            let app = Application::build(settings).await?;
            startup::bootstrap_admin(&app.tokens(), &admin_file).await?;
            app.run_until_stopped().await?;
            Ok(0)
        }
        Command::Migrate => {
            let store = Store::connect(&settings.database_url, 1).await?;
            store.migrate().await?;
            store.close().await;
            println!("migrations applied");
            Ok(0)
        }
        Command::Formats => {
            let formats = startup::cli_formats(&settings).await?;
            for f in formats.list() {
                println!(
                    "{:<14} {:<8} {:<60} {}",
                    f.id,
                    f.version,
                    f.messages.join(" "),
                    f.description
                );
            }
            Ok(0)
        }
        Command::Validate {
            format,
            file,
            unmapped,
        } => {
            let formats = startup::cli_formats(&settings).await?;
            let adapter = formats.get(&format).with_context(|| {
                format!(
                    "unknown format {format:?}; known: {}",
                    formats.ids().join(", ")
                )
            })?;
            let body = read_input(&file)?;
            match adapter.decode(&body) {
                Ok(decoded) => {
                    match &decoded.inbound {
                        Inbound::Declaration(d) => println!(
                            "{}: valid transit declaration {} of {}",
                            file.display(),
                            d.declaration_id,
                            d.issuing_authority
                        ),
                        Inbound::SealEvents { events, .. } => {
                            println!("{}: valid, {} seal event(s)", file.display(), events.len())
                        }
                        Inbound::SealAssignment(a) => println!(
                            "{}: valid seal assignment {}, {} container(s)",
                            file.display(),
                            a.reference,
                            a.equipment.len()
                        ),
                    }
                    print_unmapped(&file, &decoded.unmapped, unmapped);
                    Ok(0)
                }
                Err(e) => {
                    print_problems(&file, e);
                    Ok(1)
                }
            }
        }
        Command::Translate {
            from,
            to,
            file,
            unmapped,
        } => {
            let formats = startup::cli_formats(&settings).await?;
            let body = read_input(&file)?;
            match crate::translate::translate(&formats, &from, &to, &body) {
                Ok(t) => {
                    print!("{}", t.output);
                    print_unmapped(&file, &t.unmapped, unmapped);
                    for p in &t.problems {
                        eprintln!("{}: note: {p}", file.display());
                    }
                    Ok(0)
                }
                Err(crate::translate::TranslateError::Decode { error, .. })
                | Err(crate::translate::TranslateError::Encode { error, .. }) => {
                    print_problems(&file, error);
                    Ok(1)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Offices {
            command: OfficesCommand::Import { file },
        } => {
            let body = read_input(&file)?;
            let csv = file
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("csv"));
            let list = match crate::offices::parse_import(&body, csv) {
                Ok(list) => list,
                Err(e) => {
                    print_problems(&file, e);
                    return Ok(1);
                }
            };
            let store = Store::connect(&settings.database_url, 1).await?;
            store.migrate().await?;
            let counts = store
                .import_offices(&list, chrono::Utc::now(), "cli")
                .await?;
            store.close().await;
            println!(
                "{}: {} office(s) created, {} replaced",
                file.display(),
                counts.created,
                counts.replaced
            );
            Ok(0)
        }
        Command::Token { command } => token(command, &settings).await,
        Command::Device { command } => device(command, &settings).await,
        Command::Mapping {
            command: MappingCommand::Test { dir, format },
        } => {
            anyhow::ensure!(
                dir.is_dir(),
                "{} is not a directory of fixture cases (DIR/<format>/<case>/); run from the \
                 repository's root or name the directory",
                dir.display()
            );
            let formats = startup::cli_formats(&settings).await?;
            let results = crate::mapping::harness::run_only(&formats, &dir, format.as_deref());
            anyhow::ensure!(
                !results.is_empty(),
                "no fixture case under {}{}",
                dir.display(),
                format
                    .as_deref()
                    .map(|f| format!(" for format {f:?}"))
                    .unwrap_or_default()
            );
            let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
            for r in &results {
                if r.failures.is_empty() {
                    println!("ok    {}/{}", r.format, r.case);
                } else {
                    println!("FAIL  {}/{}", r.format, r.case);
                    for f in &r.failures {
                        println!("        {f}");
                    }
                }
            }
            println!(
                "mapping cases: {} passed, {failed} failed",
                results.len() - failed
            );
            Ok(if failed == 0 { 0 } else { 1 })
        }
    }
}

async fn device(command: DeviceCommand, settings: &Settings) -> anyhow::Result<i32> {
    use crate::devices::{KeyInfo, KeyMaterial, NewKey};
    use base64::Engine as _;
    use ects_core::{DeviceId, KeyId};
    let store = Store::connect(&settings.database_url, 1).await?;
    store.migrate().await?;
    let now = chrono::Utc::now();
    let device_id =
        |text: &str| DeviceId::parse(text).map_err(|e| anyhow::anyhow!("--device: {e}"));
    let result = match command {
        DeviceCommand::Register { device, platform } => {
            let device = device_id(&device)?;
            crate::devices::check_platform_name(&platform)
                .map_err(|e| anyhow::anyhow!("--platform: {e}"))?;
            crate::store::devices::register_device(&store, device.as_str(), Some(&platform), now)
                .await?;
            println!("device {device} registered to platform {platform}");
            Ok(0)
        }
        DeviceCommand::Key {
            command:
                KeyCommand::Add {
                    device,
                    ed25519_public,
                    hmac_secret_file,
                    key_id,
                    valid_from,
                    valid_until,
                },
        } => {
            let material = match (ed25519_public, hmac_secret_file) {
                (Some(key), None) => KeyMaterial::Ed25519Public(key),
                (None, Some(file)) => {
                    let text = read_small(&file)?;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "{}: not base64 (RFC 4648, with padding)",
                                file.display()
                            )
                        })?;
                    KeyMaterial::HmacSecret(secrecy::SecretBox::new(Box::new(bytes)))
                }
                _ => anyhow::bail!("give --ed25519-public or --hmac-secret-file"),
            };
            let new = NewKey {
                device_id: device_id(&device)?,
                key_id: key_id
                    .map(KeyId::parse)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--key-id: {e}"))?,
                material,
                valid_from,
                valid_until,
                created_by: "cli".into(),
            };
            let (outcome, info) = crate::devices::add_key(&store, &settings.devices, new, now)
                .await
                .map_err(|e| match e {
                    crate::devices::AddKeyError::Invalid { field, reason } => {
                        let flag = match field {
                            "public_key" => "ed25519-public",
                            "secret" => "hmac-secret-file",
                            other => &other.replace('_', "-"),
                        };
                        anyhow::anyhow!("--{flag}: {reason}")
                    }
                    other => other.into(),
                })?;
            let what = match outcome {
                crate::store::devices::PutKey::Created => "added",
                _ => "updated",
            };
            println!(
                "key {} of device {} {what} ({}, {})",
                info.key_id,
                info.device_id,
                info.algorithm.as_str(),
                info.state
            );
            Ok(0)
        }
        DeviceCommand::Key {
            command: KeyCommand::List { device },
        } => {
            let device = device.as_deref().map(device_id).transpose()?;
            let mut after: Option<(String, String)> = None;
            loop {
                let page = crate::store::devices::list_keys(
                    &store,
                    device.as_ref().map(|d| d.as_str()),
                    after.as_ref().map(|(d, k)| (d.as_str(), k.as_str())),
                    500,
                )
                .await?;
                for k in &page {
                    let info = KeyInfo::of(k, now);
                    println!(
                        "{:<20} {:<20} {:<12} {:<14} {} .. {}{}",
                        info.device_id,
                        info.key_id,
                        info.algorithm.as_str(),
                        info.state,
                        crate::store::ts(info.valid_from),
                        info.valid_until
                            .map(crate::store::ts)
                            .unwrap_or_else(|| "-".into()),
                        info.revoked_at
                            .map(|r| format!(" revoked {}", crate::store::ts(r)))
                            .unwrap_or_default()
                    );
                }
                match page.last() {
                    Some(k) if page.len() == 500 => {
                        after = Some((k.device_id.clone(), k.key_id.clone()))
                    }
                    _ => break,
                }
            }
            Ok(0)
        }
        DeviceCommand::Key {
            command: KeyCommand::Revoke { device, key_id },
        } => {
            let device = device_id(&device)?;
            let key_id = KeyId::parse(key_id).map_err(|e| anyhow::anyhow!("--key-id: {e}"))?;
            match crate::store::devices::revoke_key(&store, device.as_str(), key_id.as_str(), now)
                .await?
            {
                Some(true) => {
                    println!("key {key_id} of device {device} revoked");
                    Ok(0)
                }
                Some(false) => {
                    println!("key {key_id} of device {device} was revoked already");
                    Ok(0)
                }
                None => {
                    eprintln!("device {device} has no key {key_id}");
                    Ok(1)
                }
            }
        }
    };
    store.close().await;
    result
}

/// A small file (a secret): at most 1 KiB.
fn read_small(path: &std::path::Path) -> anyhow::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(1025)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {} as text", path.display()))?;
    anyhow::ensure!(
        text.len() <= 1024,
        "{} is larger than 1 KiB",
        path.display()
    );
    Ok(text)
}

/// How many unmapped parts are listed without `--unmapped`.
const UNMAPPED_SHOWN: usize = 5;

/// The parts of a document no binding read: all of them on request, else how many and a
/// few (an ordinary WCO DEC has dozens: parties, valuation, and so on).
fn print_unmapped(file: &std::path::Path, parts: &[String], all: bool) {
    if all || parts.len() <= UNMAPPED_SHOWN {
        for part in parts {
            eprintln!("{}: unmapped {part}", file.display());
        }
        return;
    }
    eprintln!(
        "{}: {} parts not mapped (not carried to the canonical form), e.g. {}; all of them \
         with --unmapped",
        file.display(),
        parts.len(),
        parts[..UNMAPPED_SHOWN].join(", ")
    );
}

fn print_problems(file: &std::path::Path, e: DocumentError) {
    for p in e.into_problems() {
        eprintln!("{}: {p}", file.display());
    }
}

async fn token(command: TokenCommand, settings: &Settings) -> anyhow::Result<i32> {
    use secrecy::ExposeSecret;
    let store = Store::connect(&settings.database_url, 1).await?;
    store.migrate().await?;
    let key = crate::auth::load_or_create_key(&settings.auth.key_file(&settings.database_url))?;
    let tokens = crate::auth::Tokens::new(store.clone(), key);
    let now = chrono::Utc::now();
    let result = match command {
        TokenCommand::Create {
            role,
            name,
            authority,
            party,
            expires,
        } => {
            let role = crate::auth::Role::parse(&role).with_context(|| {
                format!(
                    "--role {:?}: one of {}",
                    role.chars().take(40).collect::<String>(),
                    crate::auth::Role::TOKEN_ROLES
                        .map(|r| r.as_str())
                        .join(", ")
                )
            })?;
            let new = crate::auth::NewToken {
                name,
                role,
                authority,
                party,
                expires_at: crate::auth::parse_expiry(expires.as_deref(), now)?,
                created_by: "cli".into(),
            };
            let (info, token) = tokens.create(&new, now).await?;
            println!(
                "token {} ({}{}) expires {}; it is shown once, on the next line:",
                info.name,
                info.role,
                info.authority
                    .as_deref()
                    .or(info.party.as_deref())
                    .map(|x| format!(" {x}"))
                    .unwrap_or_default(),
                info.expires_at.to_rfc3339()
            );
            println!("{}", token.expose_secret());
            0
        }
        TokenCommand::List => {
            println!(
                "{:<24} {:<16} {:<16} {:<26} {:<26} state",
                "name", "role", "authority/party", "expires", "last used"
            );
            for t in tokens.list().await? {
                let state = match t.revoked_at {
                    Some(at) => format!("revoked {}", at.to_rfc3339()),
                    None if t.expires_at <= now => "expired".into(),
                    None => "live".into(),
                };
                println!(
                    "{:<24} {:<16} {:<16} {:<26} {:<26} {state}",
                    t.name,
                    t.role.as_str(),
                    t.authority.as_deref().or(t.party.as_deref()).unwrap_or("-"),
                    t.expires_at.to_rfc3339(),
                    t.last_used_at
                        .map_or_else(|| "-".to_owned(), |at| at.to_rfc3339()),
                );
            }
            0
        }
        TokenCommand::Revoke { name } => {
            if tokens.revoke(&name, now).await? {
                println!("token {name} revoked");
            } else {
                println!("token {name} was already revoked");
            }
            0
        }
    };
    store.close().await;
    Ok(result)
}
