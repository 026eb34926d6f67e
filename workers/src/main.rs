//! `blindfold-worker`: the worker node. Every setting is a flag with an environment variable;
//! see `blindfold-worker --help`.

use anyhow::Context as _;
use clap::Parser;

// CKKS evaluation allocates and frees hundreds of megabytes per layer; see
// `blindfold_worker::keep_freed_memory`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Blindfold worker: claims jobs from the queue, evaluates their encrypted batches on every
/// core, writes the encrypted results to object storage. Stops cleanly on SIGTERM or Ctrl-C
/// (running jobs get --shutdown-secs, then are given back to the queue). Logs are JSON lines on
/// stderr (RUST_LOG filters them, default info).
#[derive(Debug, Parser)]
#[command(name = "blindfold-worker", version)]
struct Cli {
    #[command(flatten)]
    config: blindfold_worker::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    blindfold_worker::keep_freed_memory();
    json_logs();
    let cli = Cli::parse();
    let worker = blindfold_worker::Worker::start(cli.config).await.context("starting the worker")?;
    worker.serve(shutdown_signal()).await.context("serving")?;
    Ok(())
}

fn json_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGTERM (the orchestrator scaling in) or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the worker");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
