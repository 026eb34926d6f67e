//! Jobs, their states, leases and the audit trail's events.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, JobId, KeySetId, TenantId, WorkerId};

/// Where a job is in its life. See the crate README for the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker (or for its retry time, `run_at`).
    Queued,
    /// Leased to a worker.
    Running,
    /// Done; the result is at `result_key`. Final.
    Succeeded,
    /// Failed permanently or ran out of attempts; `error_code`/`error_message` say why. Final.
    Failed,
    /// Cancelled by the tenant. Final.
    Cancelled,
}

impl JobState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job will never change again.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        Ok(match text {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            other => return Err(Error::Unexpected { what: "job state", value: other.to_owned() }),
        })
    }
}

impl TryFrom<String> for JobState {
    type Error = Error;
    fn try_from(text: String) -> Result<Self, Error> {
        text.parse()
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct Job {
    /// The job.
    pub id: JobId,
    /// Whose job it is.
    pub tenant_id: TenantId,
    /// The tenant's key for idempotent submission, if it gave one.
    pub idempotency_key: Option<String>,
    /// The model to evaluate.
    pub model: String,
    /// The registered version of `model` the job is pinned to (`None`: a job from before the
    /// registry, naming a model built into the binary).
    pub model_version: Option<i32>,
    /// How the images are packed into ciphertexts (`throughput` or `latency`).
    pub packing: String,
    /// The tenant's evaluation keys (gone if the key set was deleted).
    pub key_set_id: Option<KeySetId>,
    /// Images in the batch.
    pub image_count: i32,
    /// Higher runs first within the tenant.
    pub priority: i16,
    /// Object key of the input ciphertext batch.
    pub input_key: String,
    /// The input's size when the API verified it ([`Queue::pin_input`]; `None` before).
    #[sqlx(default)]
    pub input_bytes: Option<i64>,
    /// The input's ETag when the API verified it: read it with `If-Match`.
    #[sqlx(default)]
    pub input_etag: Option<String>,
    /// Object key of the result, once succeeded.
    pub result_key: Option<String>,
    /// Where the job is in its life.
    #[sqlx(try_from = "String")]
    pub state: JobState,
    /// Fraction done of the current attempt, 0 to 1.
    pub progress: f32,
    /// What the worker is doing now (free text).
    pub stage: Option<String>,
    /// Attempts started so far (the running attempt while running).
    pub attempt: i32,
    /// Attempts allowed before the job fails for good.
    pub max_attempts: i32,
    /// Not claimed before this time (retry backoff).
    pub run_at: DateTime<Utc>,
    /// While running: the lease's end unless the worker heartbeats.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The worker running (or last to run) the job.
    pub worker_id: Option<WorkerId>,
    /// The tenant asked to cancel the running job; its worker learns at its next heartbeat.
    pub cancel_requested: bool,
    /// The last failure's code (kept on retry, cleared on success).
    pub error_code: Option<String>,
    /// The last failure's message.
    pub error_message: Option<String>,
    /// When the job was enqueued.
    pub created_at: DateTime<Utc>,
    /// When the first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the job reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
}

impl Job {
    /// The lease of a running job.
    pub fn lease(&self) -> Option<Lease> {
        let worker = self.worker_id.clone()?;
        (self.state == JobState::Running).then_some(Lease { job: self.id, worker, attempt: self.attempt })
    }
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    /// Whose job it is.
    pub tenant_id: TenantId,
    /// Makes the enqueue idempotent: the same key returns the same job.
    pub idempotency_key: Option<String>,
    /// The model to evaluate.
    pub model: String,
    /// The registered version it is pinned to (`None`: the model built into the binary).
    pub model_version: Option<i32>,
    /// How the images are packed (`throughput` or `latency`).
    pub packing: String,
    /// The tenant's evaluation keys.
    pub key_set_id: Option<KeySetId>,
    /// Images in the batch.
    pub image_count: i32,
    /// Higher runs first within the tenant.
    pub priority: i16,
    /// Object key of the input batch.
    pub input_key: String,
    /// Attempts allowed; `None` takes the queue's default.
    pub max_attempts: Option<i32>,
}

/// What enqueue did.
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueued {
    /// The job (the existing one when the idempotency key was seen before).
    pub job: Job,
    /// False when the idempotency key named an existing job.
    pub created: bool,
}

/// The right to work on one attempt of a job. Every fenced operation takes it; it is refused
/// once another worker (or another attempt) holds the job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The job.
    pub job: JobId,
    /// The worker holding it.
    pub worker: WorkerId,
    /// The attempt it is for: the fencing token.
    pub attempt: i32,
}

/// A job handed to a worker, with its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The lease to present to heartbeat/complete/fail/release.
    pub lease: Lease,
    /// The job as claimed.
    pub job: Job,
}

/// How a failure should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// Bad input (malformed batch, unknown model, wrong keys): retrying cannot help; the job
    /// fails at once.
    Permanent,
    /// Infrastructure trouble (storage timeout, out of memory): retry with backoff while
    /// attempts remain.
    Transient,
}

/// A worker's report of a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Permanent or transient.
    pub kind: FailureKind,
    /// A short machine-readable code (`bad_input`, `storage_timeout`, …).
    pub code: String,
    /// What happened, for the tenant and the operator.
    pub message: String,
}

impl Failure {
    /// A failure retrying cannot fix.
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Permanent, code: code.into(), message: message.into() }
    }

    /// A failure worth retrying.
    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Transient, code: code.into(), message: message.into() }
    }
}

/// What became of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Queued again; not claimed before `run_at`.
    Retrying {
        /// When the next attempt may start.
        run_at: DateTime<Utc>,
    },
    /// Failed for good (permanent failure, or the last attempt).
    Failed,
    /// A cancel request was pending; the job is cancelled instead.
    Cancelled,
}

/// Progress reported with a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Fraction done, 0 to 1.
    pub fraction: f32,
    /// What the worker is doing (`downloading`, `layer 3/7`, …).
    pub stage: Option<String>,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lease was extended; keep working.
    Extended {
        /// The lease's new end.
        lease_expires_at: DateTime<Utc>,
    },
    /// The tenant cancelled the job; it is now cancelled. Stop working on it.
    Cancelled,
    /// The lease is gone (expired and taken by another worker, or the job finished). Stop and
    /// discard the work.
    Lost,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was queued and is now cancelled.
    Cancelled,
    /// The job is running; its worker will stop at its next heartbeat.
    Requested,
    /// The job had already finished in this state; nothing changed.
    AlreadyFinal(JobState),
}

/// One entry of a job's audit trail.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct JobEvent {
    /// Position in the trail (increasing).
    pub id: i64,
    /// The job.
    pub job_id: JobId,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The state before; `None` for the enqueue.
    pub from_state: Option<String>,
    /// The state after.
    pub to_state: String,
    /// The job's attempt after the change.
    pub attempt: i32,
    /// The worker involved, if any.
    pub worker_id: Option<String>,
    /// Why (`enqueued`, `claimed`, `lease_expired`, `succeeded`, `retry`, …).
    pub reason: String,
    /// Details (an error message, the previous worker).
    pub detail: Option<String>,
}
