use clap::Parser;
use ects_gateway::cli::{self, Cli};
use ects_gateway::telemetry::{error_chain, get_subscriber, init_subscriber};

#[actix_web::main]
async fn main() {
    let cli = Cli::parse();
    // Logging settings come from flags and environment only, so that a broken
    // configuration file can itself be reported.
    let format = cli
        .config
        .log_format
        .unwrap_or(ects_gateway::config::LogFormat::Pretty);
    let filter = cli
        .config
        .log_filter
        .clone()
        .unwrap_or_else(|| "info".into());
    init_subscriber(get_subscriber(&filter, format, std::io::stdout));
    let code = match cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(e.as_ref()));
            2
        }
    };
    std::process::exit(code);
}
