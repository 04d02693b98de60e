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
    /// List the formats this build reads and writes.
    Formats,
    /// Check a document against a format; exit status 1 when it is not valid.
    Validate {
        /// Format id, e.g. ects-json.
        #[arg(long)]
        format: String,
        /// The document; `-` for standard input.
        file: PathBuf,
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
                    "{:<14} {:<7} {}",
                    f.id,
                    f.directions.join("+"),
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
                Ok(Inbound::Declaration(d)) => {
                    println!(
                        "{}: valid transit declaration {} of {}",
                        file.display(),
                        d.declaration_id,
                        d.issuing_authority
                    );
                    Ok(0)
                }
                Ok(Inbound::SealEvents { events, .. }) => {
                    println!("{}: valid, {} seal event(s)", file.display(), events.len());
                    Ok(0)
                }
                Err(e) => {
                    let problems = match e {
                        DocumentError::Malformed(l) => vec![l],
                        DocumentError::Invalid(list) => list,
                    };
                    for p in problems {
                        eprintln!("{}: {p}", file.display());
                    }
                    Ok(1)
                }
            }
        }
    }
}
