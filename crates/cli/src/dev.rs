//! `blindfold dev …`: local stand-ins for production infrastructure, for the demo and for
//! development.

use std::path::PathBuf;

use anyhow::Context;
use blindfold_store::EmbeddedS3;
use secrecy::SecretString;

/// Development helpers.
#[derive(Debug, clap::Subcommand)]
pub enum Dev {
    /// Run the whole service on this machine in the foreground: PostgreSQL (a throwaway cluster,
    /// or DATABASE_URL), the embedded S3 endpoint, the API and worker processes. Creates a
    /// tenant and a token, prints one JSON line (api_url, token, admin_token, database_url,
    /// s3_endpoint, bucket, …), then logs; Ctrl-C stops everything cleanly.
    Up(UpArgs),
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

/// Arguments of `blindfold dev up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Threads per worker (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The API's address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub api_bind: std::net::SocketAddr,
    /// The S3 endpoint's port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub s3_port: u16,
    /// Keep the S3 objects in this directory (default: a temporary one, deleted at exit).
    #[arg(long)]
    pub s3_dir: Option<PathBuf>,
    /// Use this database instead of a throwaway cluster (it is migrated).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The tenant to create (or reuse) and issue a token for.
    #[arg(long, default_value = "dev-hospital")]
    pub tenant: String,
}

/// Runs a `dev` subcommand.
pub fn run(command: Dev, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    runtime.block_on(async {
        match command {
            Dev::S3(args) => s3(args).await,
            Dev::Up(args) => up(args).await,
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

async fn up(args: UpArgs) -> anyhow::Result<()> {
    crate::logs::json();
    if args.workers > 64 {
        anyhow::bail!("--workers {}: at most 64 on one machine", args.workers);
    }
    let options = crate::stack::StackOptions {
        database_url: args.database_url,
        api_bind: args.api_bind,
        s3_port: args.s3_port,
        s3_dir: args.s3_dir,
        workers: crate::stack::Workers::Processes(args.workers),
        worker_threads: args.threads,
        tenant: args.tenant,
        ..Default::default()
    };
    let stack = crate::stack::LocalStack::start(options).await.context("starting the local stack")?;
    println!("{}", serde_json::to_string(&stack.endpoints)?);
    use std::io::Write as _;
    std::io::stdout().flush()?;
    eprintln!(
        "blindfold dev up: API {} with {} worker(s); `blindfold login --api {} --token <token>`; Ctrl-C stops",
        stack.endpoints.api_url, args.workers, stack.endpoints.api_url
    );
    stop_requested().await?;
    eprintln!("stopping: workers, API, S3, database");
    stack.stop().await
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
