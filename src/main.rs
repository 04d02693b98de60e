use clap::Parser;
use ects_gateway::cli::{self, Cli};
use ects_gateway::telemetry::{error_chain, get_subscriber, init_subscriber};

#[actix_web::main]
async fn main() {
    let cli = Cli::parse();
    ects_gateway::install_crypto_provider();
    // Configuration first, so that its log settings apply; a broken file is reported on
    // standard error with its name and line.
    let settings = match cli.config.load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    init_subscriber(get_subscriber(
        &settings.log_filter,
        settings.log_format,
        std::io::stdout,
    ));
    let code = match cli::run(cli.command, settings).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(e.as_ref()));
            2
        }
    };
    std::process::exit(code);
}
