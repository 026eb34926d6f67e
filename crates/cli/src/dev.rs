//! `blindfold dev …`: local stand-ins for production infrastructure, for the demo and for
//! development.

use std::path::PathBuf;

use anyhow::Context;
use blindfold_store::EmbeddedS3;
use secrecy::SecretString;

/// Development helpers.
#[derive(Debug, clap::Subcommand)]
pub enum Dev {
    /// Serve an S3-compatible endpoint on 127.0.0.1 (SigV4, data kept in a directory) until
    /// Ctrl-C or SIGTERM. Prints the endpoint URL on the first line of standard output.
    S3(S3Args),
}

/// Arguments of `blindfold dev s3`.
#[derive(Debug, clap::Args)]
pub struct S3Args {
    /// Data directory (buckets are subdirectories); created if missing.
    #[arg(long, env = "BLINDFOLD_DEV_S3_DIR")]
    pub dir: PathBuf,
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 9000)]
    pub port: u16,
    /// Access key clients must sign with.
    #[arg(long, env = "BLINDFOLD_S3_ACCESS_KEY")]
    pub access_key: String,
    /// Secret key clients must sign with.
    #[arg(long, env = "BLINDFOLD_S3_SECRET_KEY", hide_env_values = true)]
    pub secret_key: String,
}

/// Runs a `dev` subcommand.
pub fn run(command: Dev) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        match command {
            Dev::S3(args) => s3(args).await,
        }
    })
}

async fn s3(args: S3Args) -> anyhow::Result<()> {
    let secret = SecretString::from(args.secret_key);
    let server = EmbeddedS3::start(&args.dir, args.port, &args.access_key, &secret)
        .await
        .with_context(|| format!("starting the S3 endpoint on 127.0.0.1:{} over {}", args.port, args.dir.display()))?;
    println!("{}", server.endpoint());
    eprintln!(
        "S3 endpoint {} serving {} (path-style, region us-east-1); Ctrl-C or SIGTERM stops it",
        server.endpoint(),
        args.dir.display()
    );
    stop_requested().await?;
    server.shutdown().await;
    Ok(())
}

/// Ctrl-C (SIGINT) or, under a process manager, SIGTERM.
async fn stop_requested() -> anyhow::Result<()> {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}
