//! The worker process: connects, then claims and runs jobs until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blindfold_batch::Packing;
use blindfold_evaluate::{BatchEvaluator, CompiledModel};
use blindfold_queue::{Queue, QueueConfig, WakeUp, WorkerId};
use blindfold_store::Store;
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cache::Lru;
use crate::config::Config;
use crate::error::Error;
use crate::telemetry::{self, Metrics};

/// What every job task of one worker shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) id: WorkerId,
    pub(crate) queue: Queue,
    pub(crate) store: Store,
    pub(crate) pool: Arc<rayon::ThreadPool>,
    /// Compiled models by (name, registered version, packing), budgeted in bytes.
    pub(crate) models: Lru<(String, Option<i32>, Packing), CompiledModel>,
    /// Evaluators bound to one tenant's registered key set, budgeted in bytes.
    pub(crate) evaluators: Lru<EvaluatorKey, Arc<BatchEvaluator>>,
    pub(crate) metrics: Metrics,
    /// Bytes one job's evaluation may use ([`Config::memory_budget`], read at start).
    pub(crate) memory_budget: Option<u64>,
}

/// What a cached evaluator was built from. The tenant and the registration (its time and the
/// verified bundle's ETag) are part of it: a key set deleted and registered again, by anyone,
/// under the same id is another entry, never a hit on the old keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct EvaluatorKey {
    pub(crate) tenant: blindfold_batch::Uuid,
    pub(crate) key_set: blindfold_batch::Uuid,
    pub(crate) registered_at: chrono::DateTime<chrono::Utc>,
    pub(crate) bundle_etag: Option<String>,
    pub(crate) model: String,
    pub(crate) model_version: Option<i32>,
    pub(crate) packing: Packing,
}

/// A worker connected to its database and store, its metrics listener up, not yet claiming.
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Shared>,
    ready: Arc<AtomicBool>,
    metrics_addr: SocketAddr,
    stop_listener: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Worker {
    /// Connects to the database (checking its schema is exactly this binary's: workers never
    /// migrate, and their role could not) and the store, builds the thread pool and binds the
    /// metrics listener.
    pub async fn start(config: Config) -> Result<Self, Error> {
        let db = |context: &str| {
            let context = context.to_owned();
            move |source| Error::Database { context, source }
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2 * config.jobs + 2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(config.database_url.expose_secret())
            .await
            .map_err(db("connecting (--database-url / BLINDFOLD_DATABASE_URL)"))?;
        blindfold_queue::check_schema(&pool).await?;
        let queue = Queue::new(pool, QueueConfig { lease: config.lease(), ..QueueConfig::default() });
        let store = Store::connect(&config.store).await?;
        let threads = config.thread_count();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("eval-{i}"))
            .build()
            .map_err(|e| Error::Setup { context: "starting the evaluation threads", detail: e.to_string() })?;
        let id = WorkerId::unique(&config.worker_id.clone().unwrap_or_else(default_name));
        let metrics = Metrics::new()?;
        let ready = Arc::new(AtomicBool::new(false));
        let (stop_listener, listener_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics_addr = telemetry::serve(config.metrics_bind, metrics.clone(), ready.clone(), async {
            let _ = listener_stopped.await;
        })
        .await?;
        let shared = Arc::new(Shared {
            models: Lru::new(config.model_cache_mib.saturating_mul(1 << 20)),
            evaluators: Lru::new(config.key_cache_mib.saturating_mul(1 << 20)),
            memory_budget: config.memory_budget(),
            config,
            id,
            queue,
            store,
            pool: Arc::new(pool),
            metrics,
        });
        tracing::info!(
            worker = %shared.id,
            threads,
            jobs = shared.config.jobs,
            lease_s = shared.config.lease_secs,
            memory_mib = shared.memory_budget.map(|bytes| bytes >> 20),
            metrics = %metrics_addr,
            "worker ready"
        );
        Ok(Self { shared, ready, metrics_addr, stop_listener: Some(stop_listener) })
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// This worker's id in the queue.
    pub fn id(&self) -> &WorkerId {
        &self.shared.id
    }

    /// Claims and runs jobs until `shutdown` resolves; then stops claiming, lets running jobs
    /// finish until the shutdown deadline, cancels and releases those still running (without
    /// spending an attempt), and returns.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let poll = Duration::from_millis(config.poll_ms);
        let mut wake = match WakeUp::listen(config.database_url.expose_secret(), poll).await {
            Ok(wake) => wake,
            Err(error) => {
                tracing::warn!(%error, "LISTEN failed; polling the queue instead");
                WakeUp::polling(poll)
            }
        };
        // Stops with this function: a stopped worker no longer keeps house. The queue's duties
        // only: announced uploads are the API's, out of the worker role's reach.
        let _housekeeper = blindfold_housekeeping::spawn(
            shared.queue.clone(),
            shared.store.clone(),
            config.housekeeping.clone(),
            blindfold_housekeeping::Duties::Queue,
        );
        let (deadline_passed, deadline_seen) = watch::channel(false);
        let mut running: JoinSet<()> = JoinSet::new();
        let slots = config.jobs as usize;
        self.ready.store(true, Ordering::Relaxed);
        tokio::pin!(shutdown);
        let mut claim_backoff = Duration::from_millis(500);
        'serve: loop {
            while running.try_join_next().is_some() {}
            let free = slots.saturating_sub(running.len());
            let mut idle = true;
            if free > 0 {
                match shared.queue.claim(&shared.id, free).await {
                    Ok(claimed) => {
                        claim_backoff = Duration::from_millis(500);
                        idle = claimed.len() < free;
                        for job in claimed {
                            running.spawn(crate::job::run(shared.clone(), job, deadline_seen.clone()));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "claiming failed; trying again");
                        tokio::select! {
                            _ = &mut shutdown => break 'serve,
                            _ = tokio::time::sleep(claim_backoff) => {}
                        }
                        claim_backoff = (claim_backoff * 2).min(Duration::from_secs(15));
                        continue;
                    }
                }
            }
            if !idle {
                continue;
            }
            let full = running.len() >= slots;
            tokio::select! {
                _ = &mut shutdown => break 'serve,
                _ = wake.wait(), if !full => {}
                Some(done) = running.join_next(), if !running.is_empty() => log_join(done),
            }
        }

        self.ready.store(false, Ordering::Relaxed);
        tracing::info!(
            running = running.len(),
            deadline_s = config.shutdown_secs,
            "shutting down: no more claims; running jobs may finish before the deadline"
        );
        let deadline = tokio::time::sleep(config.shutdown_deadline());
        tokio::pin!(deadline);
        while !running.is_empty() {
            tokio::select! {
                Some(done) = running.join_next() => log_join(done),
                _ = &mut deadline => {
                    tracing::info!(running = running.len(), "shutdown deadline passed: cancelling and releasing running jobs");
                    let _ = deadline_passed.send(true);
                    while let Some(done) = running.join_next().await {
                        log_join(done);
                    }
                }
            }
        }
        if let Some(stop) = self.stop_listener.take() {
            let _ = stop.send(());
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        tracing::error!(%error, "a job task failed; the worker carries on");
    }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}/{}", std::process::id())
}

/// Starts a worker with `config` and serves until `shutdown` resolves (see [`Worker::serve`]).
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    Worker::start(config).await?.serve(shutdown).await
}
