//! What can stop a worker, and how a job's failure is classified.

use blindfold_queue::Failure;

/// Why the worker could not start or keep serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database is unreachable or refused a query.
    #[error("database: {context}: {source}")]
    Database {
        /// What the worker was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database's schema is not the one this worker was built for (not migrated, behind,
    /// ahead, or a migration failed). Workers never migrate: the migration step does.
    #[error("refusing to start: {0}")]
    Schema(#[from] blindfold_queue::SchemaError),
    /// The object store cannot be reached or configured.
    #[error("object storage: {0}")]
    Store(#[from] blindfold_store::StoreError),
    /// The thread pool, the metrics listener or another local resource failed.
    #[error("{context}: {detail}")]
    Setup {
        /// What the worker was setting up.
        context: &'static str,
        /// What went wrong.
        detail: String,
    },
}

/// How one attempt of a job ended badly.
#[derive(Debug)]
pub(crate) enum JobError {
    /// The input, the keys or the job record cannot work: retrying cannot help.
    Permanent(Failure),
    /// Infrastructure trouble that outlasted the retries in place: the queue retries later.
    Transient(Failure),
    /// The lease was lost, the job cancelled or the worker is shutting down: stop, upload
    /// nothing; what to tell the queue depends on why (see `Stop`).
    Stopped,
}

impl JobError {
    pub(crate) fn permanent(code: &str, message: impl Into<String>) -> Self {
        Self::Permanent(Failure::permanent(code, message))
    }

    pub(crate) fn transient(code: &str, message: impl Into<String>) -> Self {
        Self::Transient(Failure::transient(code, message))
    }

    /// Classifies an evaluation error: malformed or mismatched input is permanent, a
    /// cancellation means stop, anything else (an internal failure of the engine) is worth
    /// another attempt.
    pub(crate) fn from_evaluate(error: blindfold_evaluate::Error) -> Self {
        use blindfold_compiler::Error as Compiler;
        use blindfold_evaluate::Error as E;
        match error {
            E::Plan(Compiler::Cancelled) => Self::Stopped,
            // The batch is read from memory: even an I/O error means a truncated object.
            E::Batch(_) | E::Plan(Compiler::Input(_)) => Self::permanent("bad_input", error.to_string()),
            E::Mismatch { .. } => Self::permanent("mismatch", error.to_string()),
            E::Plan(Compiler::Model(_)) => Self::permanent("unknown_model", error.to_string()),
            E::Plan(Compiler::DoesNotFit { .. } | Compiler::Unsupported { .. }) => {
                Self::permanent("unsupported_model", error.to_string())
            }
            // A broken invariant is a bug: the same job would hit it again.
            E::Plan(Compiler::Internal(_)) => Self::permanent("internal", error.to_string()),
            _ => Self::transient("engine", error.to_string()),
        }
    }
}
