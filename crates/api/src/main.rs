//! `blindfold-api`: the Blindfold HTTP API server. Every setting is a flag with an environment
//! variable; see `blindfold-api --help`.

use anyhow::Context as _;
use clap::Parser;

/// The Blindfold HTTP API: tenants, tokens, key sets, jobs, presigned transfers, the model
/// catalogue, health, metrics and the OpenAPI document. Logs are JSON lines on stderr
/// (RUST_LOG filters them, default info).
#[derive(Debug, Parser)]
#[command(name = "blindfold-api", version)]
struct Cli {
    #[command(flatten)]
    config: blindfold_api::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let (_addr, server) = blindfold_api::Application::build(cli.config).await.context("starting the API")?;
    server.await
}
