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
    /// for each mismatch; exit status 1 if any case fails.
    Test {
        /// Default: tests/fixtures.
        #[arg(default_value = "tests/fixtures")]
        dir: PathBuf,
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
            let app = Application::build(settings).await?;
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
            let formats = startup::formats(&settings)?;
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
        Command::Validate { format, file } => {
            let formats = startup::formats(&settings)?;
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
                    for part in &decoded.unmapped {
                        eprintln!("{}: unmapped {part}", file.display());
                    }
                    Ok(0)
                }
                Err(e) => {
                    print_problems(&file, e);
                    Ok(1)
                }
            }
        }
        Command::Translate { from, to, file } => {
            let formats = startup::formats(&settings)?;
            let body = read_input(&file)?;
            match crate::translate::translate(&formats, &from, &to, &body) {
                Ok(t) => {
                    print!("{}", t.output);
                    for part in &t.unmapped {
                        eprintln!("{}: unmapped {part}", file.display());
                    }
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
            let counts = store.import_offices(&list, chrono::Utc::now()).await?;
            store.close().await;
            println!(
                "{}: {} office(s) created, {} replaced",
                file.display(),
                counts.created,
                counts.replaced
            );
            Ok(0)
        }
        Command::Mapping {
            command: MappingCommand::Test { dir },
        } => {
            let formats = startup::formats(&settings)?;
            let results = crate::mapping::harness::run(&formats, &dir);
            anyhow::ensure!(
                !results.is_empty(),
                "no fixture case under {}",
                dir.display()
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

fn print_problems(file: &std::path::Path, e: DocumentError) {
    for p in e.into_problems() {
        eprintln!("{}: {p}", file.display());
    }
}
