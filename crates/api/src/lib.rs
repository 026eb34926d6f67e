//! The Blindfold HTTP API: how hospitals register evaluation keys, create and submit jobs,
//! watch them and fetch their (encrypted) results through presigned URLs, and how operators
//! manage tenants, tokens and the model registry. It never holds storage credentials out to clients, never sees a
//! secret key or a plaintext, and scopes every query to the caller's tenant.
//!
//! ```no_run
//! # async fn run(config: blindfold_api::Config) -> anyhow::Result<()> {
//! let serving = blindfold_api::Application::build(config).await?;
//! println!("listening on http://{}, metrics on http://{}/metrics", serving.addr, serving.metrics_addr);
//! serving.server.await?;
//! # Ok(()) }
//! ```
//!
//! Routes, auth and error codes are in the crate README; `GET /openapi.json` is the contract.

mod auth;
mod catalogue;
mod error;
mod extract;
mod limits;
mod registry;
mod routes;
mod state;
mod telemetry;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::SecretString;

pub use catalogue::{Catalogue, ModelInfo, PackingInfo, Refused, VerifiedModel, verify_model};
pub use error::{ApiError, Problem};
pub use limits::Limits;
pub use registry::seed_builtin_models;
pub use routes::openapi;
pub use state::AppState;
pub use wire::*;

/// Installs the JSON log format the binary uses (one JSON object per line, with the request
/// span's fields: request id, method, path, tenant), filtered by `RUST_LOG` (default `info`).
pub fn json_logs<W>(writer: W) -> Result<(), tracing_subscriber::util::TryInitError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format =
        tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(false).with_writer(writer);
    tracing_subscriber::registry().with(filter).with(format).try_init()
}

/// The API server's settings: every flag also reads an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// PostgreSQL URL of the service database, as a member of the `blindfold_api` role. At start
    /// the schema must be current (`blindfold admin migrate`, the Kubernetes migrate Job):
    /// otherwise the API refuses to start.
    #[arg(long, env = "BLINDFOLD_DATABASE_URL", value_parser = parse_secret, hide_env_values = true)]
    pub database_url: SecretString,

    /// Apply pending migrations at start instead of refusing to start on an old schema: for a
    /// single-process setup whose database user owns the schema. In a deployment, migrations
    /// run in the migration step only, with credentials the API does not hold.
    #[arg(
        long,
        env = "BLINDFOLD_API_MIGRATE",
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub migrate: bool,

    /// Largest number of database connections.
    #[arg(long, env = "BLINDFOLD_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "BLINDFOLD_API_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Address of `/metrics` (Prometheus), a listener of its own so that the public port never
    /// serves it (it aggregates over the whole jobs table). Port 0 picks a free port.
    #[arg(long, env = "BLINDFOLD_API_METRICS_BIND", default_value = "127.0.0.1:9465")]
    pub metrics_bind: SocketAddr,

    /// Operator token for `/v1/admin/*` (at least 32 characters). Without it the admin routes
    /// answer 401.
    #[arg(long, env = "BLINDFOLD_ADMIN_TOKEN", value_parser = parse_admin_token, hide_env_values = true)]
    pub admin_token: Option<SecretString>,

    /// Largest JSON request body, in bytes (uploads go to object storage, not here).
    #[arg(long, env = "BLINDFOLD_API_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Largest number of images in one job.
    #[arg(long, env = "BLINDFOLD_API_MAX_IMAGES", default_value_t = 100_000)]
    pub max_images: u32,

    /// Largest declared upload (batch or key bundle), in bytes.
    #[arg(long, env = "BLINDFOLD_API_MAX_UPLOAD_BYTES", default_value_t = 64 << 30)]
    pub max_upload_bytes: u64,

    /// Uploads verified at once by this process (key bundles read whole from storage, model
    /// files imported and compiled): each takes up to a bundle's size of temporary disk and
    /// seconds of CPU, so a tenant completing many uploads at once cannot exhaust the pod.
    /// Past the bound, `complete` answers 503 `busy` with `Retry-After`.
    #[arg(long, env = "BLINDFOLD_API_MAX_VERIFICATIONS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_verifications: u32,

    /// How long presigned URLs stay valid, in seconds. An upload URL gets one more second per
    /// 8 MiB announced, so that a multi-gigabyte multipart upload on a slow link can finish.
    /// Short, because a URL cannot be revoked: what the API verified is bound by its ETag
    /// anyway, so an upload URL used again after `complete`/`submit` changes nothing a worker
    /// reads, but it should not stay usable for long.
    #[arg(long, env = "BLINDFOLD_API_PRESIGN_SECS", default_value_t = 900)]
    pub presign_secs: u64,

    /// Memory each worker of the fleet gives one job, in MiB: the workers'
    /// `BLINDFOLD_WORKER_MEMORY_MIB` (or their container limit divided by their
    /// `BLINDFOLD_WORKER_JOBS`). A job whose plan needs more, even with every diagonal streamed,
    /// would be killed for memory on every attempt, so `POST /v1/jobs` refuses it (422
    /// `does_not_fit`) with both figures. Unset: no check.
    #[arg(long, env = "BLINDFOLD_FLEET_MEMORY_MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub fleet_memory_mib: Option<u64>,

    /// Largest page of `GET /v1/jobs`.
    #[arg(long, env = "BLINDFOLD_API_MAX_PAGE", default_value_t = 200)]
    pub max_page: u32,

    /// Object storage.
    #[command(flatten)]
    pub store: blindfold_store::StoreConfig,

    /// Rate limits and tenant quotas.
    #[command(flatten)]
    pub limits: Limits,

    /// Housekeeping, which every API process runs beside serving.
    #[command(flatten)]
    pub housekeeping: blindfold_housekeeping::Settings,
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    if value.is_empty() {
        return Err("empty".to_owned());
    }
    Ok(SecretString::from(value))
}

fn parse_admin_token(value: &str) -> Result<SecretString, String> {
    if value.len() < 32 {
        return Err("the admin token must be at least 32 characters".to_owned());
    }
    Ok(SecretString::from(value))
}

impl Config {
    /// How long presigned download URLs stay valid.
    pub fn presign_expiry(&self) -> Duration {
        Duration::from_secs(self.presign_secs.clamp(1, MAX_PRESIGN_SECS))
    }

    /// How long the presigned URLs of an upload of `size` bytes stay valid:
    /// [`Config::presign_expiry`] plus one second per 8 MiB (S3's limit is 7 days).
    pub fn upload_expiry(&self, size: u64) -> Duration {
        Duration::from_secs(self.presign_secs.saturating_add(size >> 23).clamp(1, MAX_PRESIGN_SECS))
    }
}

/// S3's longest presigned URL validity (SigV4), in seconds.
const MAX_PRESIGN_SECS: u64 = 7 * 24 * 3600;

/// The API server, built and bound, ready to run.
#[derive(Debug)]
pub struct Application;

/// A bound API: its addresses, and the future that serves both listeners until shutdown.
#[derive(Debug)]
pub struct Serving<F> {
    /// The public listener (the API and the health probes).
    pub addr: SocketAddr,
    /// The `/metrics` listener.
    pub metrics_addr: SocketAddr,
    /// Serves until it fails or the shutdown future resolves.
    pub server: F,
}

impl Application {
    /// Connects to the database (checking its schema is current, or migrating it with
    /// [`Config::migrate`]) and the store (creating the bucket if missing), registers the
    /// built-in models the registry lacks, binds `config.bind` and `config.metrics_bind`
    /// and returns them with the server future, which runs until it fails or the process gets
    /// Ctrl-C/SIGTERM.
    pub async fn build(
        config: Config,
    ) -> anyhow::Result<Serving<impl Future<Output = anyhow::Result<()>> + Send + 'static>> {
        let state = AppState::connect(config.clone()).await?;
        Self::serve(state, config.bind, shutdown_signal()).await
    }

    /// As [`Application::build`] with a prepared state and a shutdown future of the caller's.
    /// The housekeeping loop runs for as long as the server does.
    pub async fn serve(
        state: AppState,
        bind: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Serving<impl Future<Output = anyhow::Result<()>> + Send + 'static>> {
        let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| format!("binding {bind}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let metrics_bind = state.config.metrics_bind;
        let metrics_listener = tokio::net::TcpListener::bind(metrics_bind)
            .await
            .with_context(|| format!("binding the metrics address {metrics_bind}"))?;
        let metrics_addr = metrics_listener.local_addr().context("reading the bound metrics address")?;
        let housekeeper = blindfold_housekeeping::spawn(
            state.queue.clone(),
            state.store.clone(),
            state.config.housekeeping.clone(),
            blindfold_housekeeping::Duties::All,
        );
        let pruner = limits::spawn_pruner(&state);
        let metrics_app = routes::metrics_router(state.clone());
        // Stops with the server (aborted below); a scrape in flight then is simply cut.
        let metrics = tokio::spawn(async move { axum::serve(metrics_listener, metrics_app).await });
        // The peer's address feeds the failed-authentication throttle.
        let app = routes::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let server = async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("serving HTTP");
            metrics.abort();
            pruner.abort();
            drop(housekeeper);
            served
        };
        tracing::info!(%addr, %metrics_addr, "API listening");
        Ok(Serving { addr, metrics_addr, server })
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
