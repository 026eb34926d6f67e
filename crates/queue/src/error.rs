//! The queue's errors.

use crate::{JobId, JobState};

/// What can go wrong in a queue operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// PostgreSQL refused or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),

    /// Applying the schema migrations failed.
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// An idempotency key was reused for a different job.
    #[error(
        "idempotency key {key:?} already names job {existing} with different parameters; \
         use a new key for a new job"
    )]
    IdempotencyConflict {
        /// The reused key.
        key: String,
        /// The job the key already names.
        existing: JobId,
    },

    /// A fenced operation was refused: the caller no longer holds the job's lease (the lease
    /// expired and another worker took the job, or the job finished or was cancelled).
    #[error(
        "lease lost on job {job}: attempt {attempt} by worker {worker} no longer holds it \
         (now {state}, attempt {current_attempt}); stop working on it"
    )]
    LeaseLost {
        /// The job.
        job: JobId,
        /// The worker that presented the lease.
        worker: String,
        /// The attempt the lease was for.
        attempt: i32,
        /// The job's state now.
        state: JobState,
        /// The job's attempt now.
        current_attempt: i32,
    },

    /// A model version was announced twice: versions are immutable.
    #[error("model {model} is already registered (versions are immutable: register a new version)")]
    ModelVersionExists {
        /// `NAME@VERSION`.
        model: String,
    },

    /// The job does not exist (or belongs to another tenant).
    #[error("no job {0}")]
    JobNotFound(JobId),

    /// A value read from the database is not one this code knows (a newer schema?).
    #[error("unexpected {what} {value:?} in the database")]
    Unexpected {
        /// What was being read.
        what: &'static str,
        /// The value.
        value: String,
    },

    /// An argument is out of range.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The argument.
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
