//! `blindfold-worker`: the worker node. Every setting is a flag with an environment variable;
//! see `blindfold-worker --help`.

use anyhow::Context as _;
use clap::Parser;

// CKKS evaluation allocates and frees hundreds of megabytes per layer; see `keep_freed_memory`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells mimalloc never to hand freed memory back to the kernel: returning it makes every new
/// ciphertext page-fault its memory back in, which doubled the time of a CryptoNets batch on a
/// 2-core VM (see the CLI's identical setting). `MIMALLOC_PURGE_DELAY` overrides it.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    /// `mi_option_purge_delay` (option 15 in mimalloc v2 and v3); -1 = never purge.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set takes plain integers and is safe to call at any time.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

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
    keep_freed_memory();
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
