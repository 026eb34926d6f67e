//! What every handler shares: the database pool, the queue, the store, the settings, metrics.

use std::sync::Arc;

use anyhow::Context as _;
use blindfold_queue::{Queue, QueueConfig};
use blindfold_store::Store;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::Config;
use crate::telemetry::Metrics;

/// The shared state of the API.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) queue: Queue,
    pub(crate) store: Store,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Arc<Metrics>,
    /// SHA-256 of the admin token, compared in constant time.
    pub(crate) admin_token_sha256: Option<[u8; 32]>,
    /// Permits for upload verifications ([`Config::max_verifications`]).
    pub(crate) verifications: Arc<tokio::sync::Semaphore>,
    /// The request rate limits and the failed-authentication throttle.
    pub(crate) throttle: Arc<crate::limits::Throttle>,
}

impl AppState {
    /// A permit to verify one upload, or 503 `busy` when this process verifies as many as it
    /// may already.
    pub(crate) fn verification_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, crate::error::ApiError> {
        Arc::clone(&self.verifications).try_acquire_owned().map_err(|_| {
            crate::error::ApiError::busy(format!(
                "this server is verifying {} uploads already; try again in a few seconds",
                self.config.max_verifications
            ))
        })
    }
}

impl AppState {
    /// Connects to PostgreSQL (checking the schema, see [`AppState::new`]) and to the store
    /// (creating the bucket if missing), and registers the built-in models the registry lacks.
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(config.db_max_connections.max(1))
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(config.database_url.expose_secret())
            .await
            .context("connecting to the database")?;
        let store = Store::connect(&config.store).await.context("connecting to object storage")?;
        store.ensure_bucket().await.context("creating the bucket")?;
        Self::new(pool, store, config).await
    }

    /// A state over an existing pool and store. Refuses a database whose schema is not exactly
    /// this binary's (behind, ahead, or a migration failed half-way), naming the migration step
    /// to run; with [`Config::migrate`] it applies pending migrations instead. Then seeds the
    /// registry with the built-in models it lacks, as `blindfold admin migrate` does: data,
    /// not schema, written with the API role's own rights.
    pub async fn new(pool: PgPool, store: Store, config: Config) -> anyhow::Result<Self> {
        if config.migrate {
            blindfold_queue::MIGRATOR.run(&pool).await.context("applying database migrations (--migrate)")?;
        }
        blindfold_queue::check_schema(&pool).await.context(
            "checking the database schema (the API migrates at start only with --migrate, \
             BLINDFOLD_API_MIGRATE=true: for a single process whose database user owns the schema)",
        )?;
        let seeded = crate::registry::seed_builtin_models(&pool, &store).await.context("seeding the model registry")?;
        if !seeded.is_empty() {
            tracing::info!(models = ?seeded, "built-in models registered");
        }
        let admin_token_sha256 =
            config.admin_token.as_ref().map(|token| Sha256::digest(token.expose_secret().as_bytes()).into());
        let verifications = Arc::new(tokio::sync::Semaphore::new(config.max_verifications as usize));
        let throttle = Arc::new(crate::limits::Throttle::new(&config.limits));
        Ok(Self {
            throttle,
            queue: Queue::new(pool.clone(), QueueConfig::default()),
            pool,
            store,
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()?),
            admin_token_sha256,
            verifications,
        })
    }
}
