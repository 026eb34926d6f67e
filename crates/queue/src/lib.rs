//! The PostgreSQL job queue: each job goes to exactly one live worker at a time under a lease,
//! fairly across tenants, with fenced completion, classified failures with retries, and an
//! append-only audit trail. It also keeps the small records the API needs: tenants, API
//! tokens (hashed), key sets and the model registry's rows. It knows nothing about cryptography.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool, tenant: blindfold_queue::TenantId) -> blindfold_queue::Result<()> {
//! use blindfold_queue::{NewJob, Progress, Queue, QueueConfig, WorkerId};
//!
//! blindfold_queue::MIGRATOR.run(&pool).await?;
//! let queue = Queue::new(pool, QueueConfig::default());
//! queue
//!     .enqueue(NewJob {
//!         tenant_id: tenant,
//!         idempotency_key: Some("scan-2291".into()),
//!         model: "mnist-cnn".into(),
//!         model_version: None,
//!         packing: "throughput".into(),
//!         key_set_id: None,
//!         image_count: 1000,
//!         priority: 0,
//!         input_key: "batches/2291.bfb".into(),
//!         max_attempts: None,
//!     })
//!     .await?;
//!
//! let worker = WorkerId::unique("worker-0");
//! for claimed in queue.claim(&worker, 1).await? {
//!     queue.heartbeat(&claimed.lease, &Progress { fraction: 0.5, stage: Some("layer 3".into()) }).await?;
//!     queue.complete(&claimed.lease, "results/2291.bfb").await?;
//! }
//! # Ok(()) }
//! ```
//!
//! The state machine, the fairness rule and the lease rules are in the crate README.

mod error;
mod housekeeping;
mod ids;
mod job;
pub mod models;
mod queue;
mod schema;
pub mod tenants;
mod wake;

pub use error::{Error, Result};
pub use housekeeping::{ExpiredJob, ExpiredUpload, RetentionPolicy, Settled};
pub use ids::{JobId, KeySetId, TenantId, TokenId, WorkerId};
pub use job::{
    CancelOutcome, Claimed, Enqueued, FailOutcome, Failure, FailureKind, Heartbeat, Job, JobEvent, JobState, Lease,
    NewJob, Progress,
};
pub use models::{ModelRef, ModelState, RegisteredModel};
pub use queue::{Completion, JOBS_CHANNEL, Queue, QueueConfig, RetryPolicy};
pub use schema::{SchemaError, check_schema};
pub use wake::{Wake, WakeUp};

/// The service database's migrations (`migrations/` at the repository root), embedded. Only the
/// migration step runs them (it owns the schema); the services call [`check_schema`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");
