//! The queue: enqueue, claim, heartbeat, complete, fail, release, cancel.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    CancelOutcome, Claimed, Enqueued, Error, FailOutcome, Failure, FailureKind, Heartbeat, Job, JobEvent, JobId,
    JobState, Lease, NewJob, Progress, Result, TenantId, WorkerId,
};

/// The channel enqueue (and release) notify, so idle workers wake up at once.
pub const JOBS_CHANNEL: &str = "blindfold_jobs";

/// How the queue behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// How long a claim or heartbeat holds a job. A worker that does not heartbeat within it
    /// loses the job to the next claimer. Heartbeat at a third of it or more often.
    pub lease: Duration,
    /// Attempts a job gets unless its [`NewJob::max_attempts`] says otherwise.
    pub default_max_attempts: i32,
    /// Backoff between attempts after a transient failure.
    pub retry: RetryPolicy,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { lease: Duration::from_secs(30), default_max_attempts: 3, retry: RetryPolicy::default() }
    }
}

/// Exponential backoff with jitter: before attempt `k + 1` the job waits a random time between
/// half and all of `min(base · 2^(k−1), max)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay after the first failed attempt (before jitter).
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { base: Duration::from_secs(5), max: Duration::from_secs(600) }
    }
}

impl RetryPolicy {
    /// The delay before jitter after failed attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: i32) -> Duration {
        let doublings = u32::try_from(attempt.saturating_sub(1)).unwrap_or(0).min(30);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// The jittered delay after failed attempt `attempt`: uniform in `[ceiling/2, ceiling]`.
    pub fn delay(&self, attempt: i32) -> Duration {
        let ceiling = self.ceiling(attempt);
        ceiling.mul_f64(0.5 + 0.5 * rand::random::<f64>())
    }
}

/// What completing a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The job succeeded.
    Succeeded,
    /// A cancel request was pending; the job is cancelled and the result discarded.
    Cancelled,
    /// The lease was no longer held; nothing changed. Discard the result.
    Lost,
}

/// The job queue over one PostgreSQL database (migrated with [`crate::MIGRATOR`]).
#[derive(Debug, Clone)]
pub struct Queue {
    pool: PgPool,
    config: QueueConfig,
}

impl Queue {
    /// A queue over `pool` with `config`.
    pub fn new(pool: PgPool, config: QueueConfig) -> Self {
        Self { pool, config }
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Enqueues one job in its own transaction. See [`Queue::enqueue_many_in`].
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        let mut enqueued = self.enqueue_many(std::slice::from_ref(&job)).await?;
        enqueued.pop().ok_or(Error::Unexpected { what: "enqueue result", value: "none".into() })
    }

    /// Enqueues jobs in one transaction. See [`Queue::enqueue_many_in`].
    pub async fn enqueue_many(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
        let mut tx = self.pool.begin().await?;
        let enqueued = self.enqueue_many_in(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(enqueued)
    }

    /// Enqueues jobs inside the caller's transaction, so a job exists exactly when the
    /// caller's other writes do; workers are notified when it commits.
    ///
    /// Idempotent per `(tenant, idempotency_key)`: a key seen before returns the existing job
    /// (`created: false`), or [`Error::IdempotencyConflict`] if its parameters differ. The
    /// result is in the order of `jobs`.
    pub async fn enqueue_many_in(&self, conn: &mut PgConnection, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
        let ids: Vec<Uuid> = jobs.iter().map(|_| Uuid::new_v4()).collect();
        self.enqueue_with_ids_in(conn, &ids, jobs).await
    }

    /// Enqueues one job under an id the caller chose (the API announces a job's id before its
    /// input is uploaded), inside the caller's transaction; otherwise as
    /// [`Queue::enqueue_many_in`], idempotency included (an existing job keeps its own id).
    pub async fn enqueue_as_in(&self, conn: &mut PgConnection, id: JobId, job: NewJob) -> Result<Enqueued> {
        let mut enqueued = self.enqueue_with_ids_in(conn, &[id.0], std::slice::from_ref(&job)).await?;
        enqueued.pop().ok_or(Error::Unexpected { what: "enqueue result", value: "none".into() })
    }

    /// Records what the API verified of a queued job's input (its size and ETag), inside the
    /// transaction that enqueued it, so the worker reads that object and no other. Returns the
    /// job as updated; a job that is not queued any more is left as it is.
    pub async fn pin_input(
        &self,
        conn: &mut PgConnection,
        id: JobId,
        bytes: i64,
        e_tag: Option<&str>,
    ) -> Result<Option<Job>> {
        Ok(sqlx::query_as(
            "UPDATE jobs SET input_bytes = $2, input_etag = $3 WHERE id = $1 AND state = 'queued' RETURNING *",
        )
        .bind(id)
        .bind(bytes)
        .bind(e_tag)
        .fetch_optional(&mut *conn)
        .await?)
    }

    async fn enqueue_with_ids_in(
        &self,
        conn: &mut PgConnection,
        ids: &[Uuid],
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut max_attempts = Vec::with_capacity(jobs.len());
        for job in jobs {
            let attempts = job.max_attempts.unwrap_or(self.config.default_max_attempts);
            if attempts < 1 {
                return Err(Error::Invalid { what: "max_attempts", reason: format!("{attempts} is below 1") });
            }
            max_attempts.push(attempts);
        }
        let inserted: Vec<Job> = sqlx::query_as(
            r#"
            WITH input AS (
                SELECT *
                FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::uuid[],
                            $7::int4[], $8::int2[], $9::text[], $10::int4[], $11::int4[])
                     WITH ORDINALITY
                     AS i(id, tenant_id, idempotency_key, model, packing, key_set_id,
                          image_count, priority, input_key, max_attempts, model_version, ord)
            ),
            inserted AS (
                INSERT INTO jobs (id, tenant_id, idempotency_key, model, packing, key_set_id,
                                  image_count, priority, input_key, max_attempts, model_version)
                SELECT id, tenant_id, idempotency_key, model, packing, key_set_id,
                       image_count, priority, input_key, max_attempts, model_version
                FROM input
                ORDER BY ord
                ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                RETURNING *
            ),
            logged AS (
                INSERT INTO job_events (job_id, from_state, to_state, attempt, reason)
                SELECT id, NULL, 'queued', 0, 'enqueued' FROM inserted
            )
            SELECT * FROM inserted
            "#,
        )
        .bind(ids)
        .bind(jobs.iter().map(|job| job.tenant_id.0).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.idempotency_key.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.model.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.packing.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.key_set_id.map(|id| id.0)).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.image_count).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.priority).collect::<Vec<_>>())
        .bind(jobs.iter().map(|job| job.input_key.clone()).collect::<Vec<_>>())
        .bind(&max_attempts)
        .bind(jobs.iter().map(|job| job.model_version).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;

        let mut by_id: std::collections::HashMap<Uuid, Job> = inserted.into_iter().map(|job| (job.id.0, job)).collect();
        let created_count = by_id.len();
        let mut result = Vec::with_capacity(jobs.len());
        for (id, new) in ids.iter().zip(jobs) {
            if let Some(job) = by_id.remove(id) {
                result.push(Enqueued { job, created: true });
                continue;
            }
            // Not inserted: the idempotency key names an existing job.
            let key = new.idempotency_key.clone().unwrap_or_default();
            let existing: Job = sqlx::query_as("SELECT * FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2")
                .bind(new.tenant_id)
                .bind(&key)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| Error::Unexpected { what: "missing idempotent job for key", value: key.clone() })?;
            let same = existing.model == new.model
                && existing.packing == new.packing
                && existing.key_set_id == new.key_set_id
                && existing.image_count == new.image_count
                && existing.priority == new.priority
                && existing.input_key == new.input_key;
            if !same {
                return Err(Error::IdempotencyConflict { key, existing: existing.id });
            }
            result.push(Enqueued { job: existing, created: false });
        }
        if created_count > 0 {
            // Delivered when the transaction commits; dropped if it rolls back.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(JOBS_CHANNEL)
                .bind(created_count.to_string())
                .execute(&mut *conn)
                .await?;
        }
        Ok(result)
    }

    /// Claims up to `max` jobs for `worker` in one statement, fairly across tenants.
    ///
    /// Candidates are queued jobs whose `run_at` has come and running jobs whose lease expired
    /// (not cancelled, attempts left). Each tenant's candidates are ranked by priority then
    /// age (expired leases first); a candidate's place is its tenant's running-job count plus
    /// its rank, so the tenant with the fewest running jobs goes first and a batch is spread
    /// round-robin. Ties between tenants are broken at random, so tenants with equally many
    /// running jobs take turns (in expectation) however old their backlogs are. Each claimed
    /// job becomes running under `worker` with attempt + 1 and a fresh lease.
    ///
    /// Rows other claimers hold are skipped (`FOR UPDATE SKIP LOCKED`): each tenant's first
    /// `max` unlocked candidates are locked, ranked, and the best `max` overall are taken; the
    /// rest are unlocked when the statement ends (a concurrent claimer may skip them for that
    /// moment, which costs order, never correctness).
    pub async fn claim(&self, worker: &WorkerId, max: usize) -> Result<Vec<Claimed>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let max = i64::try_from(max).map_err(|_| Error::Invalid { what: "claim size", reason: "too large".into() })?;
        let jobs: Vec<Job> = sqlx::query_as(
            r#"
            WITH running AS (
                SELECT tenant_id, count(*) AS jobs
                FROM jobs
                WHERE state = 'running'
                GROUP BY tenant_id
            ),
            queued AS (
                SELECT c.*, row_number() OVER (PARTITION BY c.tenant_id ORDER BY c.priority DESC, c.seq) AS rank
                FROM tenants t
                CROSS JOIN LATERAL (
                    SELECT j.id, j.tenant_id, j.priority, j.seq,
                           j.state AS previous_state, j.worker_id AS previous_worker
                    FROM jobs j
                    WHERE j.tenant_id = t.id AND j.state = 'queued' AND j.run_at <= now()
                    ORDER BY j.priority DESC, j.seq
                    LIMIT $1
                    FOR UPDATE SKIP LOCKED
                ) c
            ),
            expired AS (
                SELECT j.id, j.tenant_id, j.state AS previous_state, j.worker_id AS previous_worker
                FROM jobs j
                WHERE j.state = 'running' AND j.lease_expires_at <= now()
                  AND NOT j.cancel_requested AND j.attempt < j.max_attempts
                ORDER BY j.lease_expires_at
                LIMIT $1
                FOR UPDATE SKIP LOCKED
            ),
            picked AS (
                SELECT c.id, c.previous_state, c.previous_worker
                FROM (
                    SELECT id, tenant_id, rank, previous_state, previous_worker FROM queued
                    UNION ALL
                    SELECT id, tenant_id, 0, previous_state, previous_worker FROM expired
                ) c
                LEFT JOIN running r ON r.tenant_id = c.tenant_id
                ORDER BY coalesce(r.jobs, 0) + c.rank, random()
                LIMIT $1
            ),
            claimed AS (
                UPDATE jobs j
                SET state = 'running',
                    attempt = j.attempt + 1,
                    worker_id = $2,
                    lease_expires_at = now() + make_interval(secs => $3),
                    started_at = coalesce(j.started_at, now()),
                    progress = 0,
                    stage = NULL
                FROM picked p
                WHERE j.id = p.id
                RETURNING j.*, p.previous_state, p.previous_worker
            ),
            logged AS (
                INSERT INTO job_events (job_id, from_state, to_state, attempt, worker_id, reason, detail)
                SELECT id, previous_state, 'running', attempt, worker_id,
                       CASE WHEN previous_state = 'running' THEN 'lease_expired' ELSE 'claimed' END,
                       CASE WHEN previous_state = 'running'
                            THEN 'worker ' || previous_worker || ' stopped heartbeating' END
                FROM claimed
            )
            SELECT * FROM claimed
            "#,
        )
        .bind(max)
        .bind(&worker.0)
        .bind(self.config.lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(jobs
            .into_iter()
            .map(|job| Claimed { lease: Lease { job: job.id, worker: worker.clone(), attempt: job.attempt }, job })
            .collect())
    }

    /// Extends the lease and records progress, if `lease` still holds the job.
    ///
    /// Returns [`Heartbeat::Cancelled`] (and cancels the job) when the tenant asked to cancel
    /// it, and [`Heartbeat::Lost`] when another attempt holds the job or it has finished: the
    /// worker must stop in both cases. A heartbeat after the lease ran out still succeeds if
    /// nobody has claimed the job since (the attempt number is the fencing token).
    pub async fn heartbeat(&self, lease: &Lease, progress: &Progress) -> Result<Heartbeat> {
        if !(0.0..=1.0).contains(&progress.fraction) {
            return Err(Error::Invalid { what: "progress", reason: format!("{} is not in [0, 1]", progress.fraction) });
        }
        // The common case in one statement.
        let extended: Option<DateTime<Utc>> = sqlx::query_scalar(
            r#"
            UPDATE jobs
            SET lease_expires_at = now() + make_interval(secs => $4), progress = $5, stage = $6
            WHERE id = $1 AND state = 'running' AND worker_id = $2 AND attempt = $3 AND NOT cancel_requested
            RETURNING lease_expires_at
            "#,
        )
        .bind(lease.job)
        .bind(&lease.worker.0)
        .bind(lease.attempt)
        .bind(self.config.lease.as_secs_f64())
        .bind(progress.fraction)
        .bind(&progress.stage)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(lease_expires_at) = extended {
            return Ok(Heartbeat::Extended { lease_expires_at });
        }
        let mut tx = self.pool.begin().await?;
        let Some(job) = lock_leased(&mut tx, lease).await? else {
            return Ok(Heartbeat::Lost);
        };
        if !job.cancel_requested {
            // Cannot happen while we hold the row lock, but do not guess.
            return Err(Error::Unexpected { what: "heartbeat race on job", value: job.id.to_string() });
        }
        acknowledge_cancel(&mut tx, &job, "cancel_acknowledged", Some("at heartbeat")).await?;
        tx.commit().await?;
        Ok(Heartbeat::Cancelled)
    }

    /// Marks the job succeeded with its result, if `lease` still holds it.
    ///
    /// Returns [`Error::LeaseLost`] when it does not (the result must be discarded), and
    /// [`Completion::Cancelled`] when a cancel request was pending.
    pub async fn complete(&self, lease: &Lease, result_key: &str) -> Result<Completion> {
        let outcome = self.complete_many(&[(lease.clone(), result_key.to_owned())]).await?;
        match outcome.first() {
            Some(Completion::Lost) | None => Err(self.lease_lost(lease).await),
            Some(other) => Ok(*other),
        }
    }

    /// Completes many jobs in one statement (a worker finishing a batch of small jobs).
    /// Each lease is fenced separately; the result is in the order of `done`.
    pub async fn complete_many(&self, done: &[(Lease, String)]) -> Result<Vec<Completion>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let finished: Vec<(JobId, String)> = sqlx::query_as(
            r#"
            WITH input AS (
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::text[])
                    AS i(id, worker_id, attempt, result_key)
            ),
            target AS (
                SELECT j.id, j.cancel_requested, i.result_key
                FROM jobs j
                JOIN input i ON i.id = j.id AND i.worker_id = j.worker_id AND i.attempt = j.attempt
                WHERE j.state = 'running'
                ORDER BY j.id
                FOR UPDATE OF j
            ),
            done AS (
                UPDATE jobs j
                SET state = CASE WHEN t.cancel_requested THEN 'cancelled' ELSE 'succeeded' END,
                    result_key = CASE WHEN t.cancel_requested THEN NULL ELSE t.result_key END,
                    progress = CASE WHEN t.cancel_requested THEN j.progress ELSE 1 END,
                    error_code = CASE WHEN t.cancel_requested THEN j.error_code END,
                    error_message = CASE WHEN t.cancel_requested THEN j.error_message END,
                    cancel_requested = false,
                    lease_expires_at = NULL,
                    finished_at = now()
                FROM target t
                WHERE j.id = t.id
                RETURNING j.id, j.state, j.attempt, j.worker_id
            ),
            logged AS (
                INSERT INTO job_events (job_id, from_state, to_state, attempt, worker_id, reason, detail)
                SELECT id, 'running', state, attempt, worker_id,
                       CASE WHEN state = 'cancelled' THEN 'cancel_acknowledged' ELSE 'succeeded' END,
                       CASE WHEN state = 'cancelled' THEN 'at completion; result discarded' END
                FROM done
            )
            SELECT id, state FROM done
            "#,
        )
        .bind(done.iter().map(|(lease, _)| lease.job.0).collect::<Vec<_>>())
        .bind(done.iter().map(|(lease, _)| lease.worker.0.clone()).collect::<Vec<_>>())
        .bind(done.iter().map(|(lease, _)| lease.attempt).collect::<Vec<_>>())
        .bind(done.iter().map(|(_, key)| key.clone()).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        let finished: std::collections::HashMap<JobId, String> = finished.into_iter().collect();
        Ok(done
            .iter()
            .map(|(lease, _)| match finished.get(&lease.job).map(String::as_str) {
                Some("succeeded") => Completion::Succeeded,
                Some(_) => Completion::Cancelled,
                None => Completion::Lost,
            })
            .collect())
    }

    /// Records a failed attempt, if `lease` still holds the job.
    ///
    /// A permanent failure, or a transient one on the last attempt, fails the job with the
    /// failure's code and message. A transient failure with attempts left queues the job again
    /// after the [`RetryPolicy`] backoff. A pending cancel request wins over both.
    pub async fn fail(&self, lease: &Lease, failure: &Failure) -> Result<FailOutcome> {
        let mut tx = self.pool.begin().await?;
        let Some(job) = lock_leased(&mut tx, lease).await? else {
            drop(tx);
            return Err(self.lease_lost(lease).await);
        };
        let detail = format!("{}: {}", failure.code, failure.message);
        if job.cancel_requested {
            acknowledge_cancel(&mut tx, &job, "cancel_acknowledged", Some(&detail)).await?;
            tx.commit().await?;
            return Ok(FailOutcome::Cancelled);
        }
        let last_attempt = job.attempt >= job.max_attempts;
        let outcome = if failure.kind == FailureKind::Permanent || last_attempt {
            sqlx::query(
                r#"
                UPDATE jobs
                SET state = 'failed', error_code = $2, error_message = $3,
                    lease_expires_at = NULL, finished_at = now()
                WHERE id = $1
                "#,
            )
            .bind(job.id)
            .bind(&failure.code)
            .bind(&failure.message)
            .execute(&mut *tx)
            .await?;
            let reason = if failure.kind == FailureKind::Permanent { "failed_permanent" } else { "attempts_exhausted" };
            record_event(&mut tx, &job, JobState::Failed, job.attempt, reason, Some(&detail)).await?;
            FailOutcome::Failed
        } else {
            let delay = self.config.retry.delay(job.attempt);
            let run_at: DateTime<Utc> = sqlx::query_scalar(
                r#"
                UPDATE jobs
                SET state = 'queued', error_code = $2, error_message = $3, lease_expires_at = NULL,
                    run_at = now() + make_interval(secs => $4), progress = 0, stage = NULL
                WHERE id = $1
                RETURNING run_at
                "#,
            )
            .bind(job.id)
            .bind(&failure.code)
            .bind(&failure.message)
            .bind(delay.as_secs_f64())
            .fetch_one(&mut *tx)
            .await?;
            let detail = format!("{detail}; retry after {:.3} s", delay.as_secs_f64());
            record_event(&mut tx, &job, JobState::Queued, job.attempt, "retry", Some(&detail)).await?;
            FailOutcome::Retrying { run_at }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Gives the job back without spending an attempt (a worker shutting down). It is queued
    /// again at once and idle workers are woken. Returns the job's new state: queued, or
    /// cancelled when a cancel request was pending.
    pub async fn release(&self, lease: &Lease) -> Result<JobState> {
        let mut tx = self.pool.begin().await?;
        let Some(job) = lock_leased(&mut tx, lease).await? else {
            drop(tx);
            return Err(self.lease_lost(lease).await);
        };
        if job.cancel_requested {
            acknowledge_cancel(&mut tx, &job, "cancel_acknowledged", Some("at release")).await?;
            tx.commit().await?;
            return Ok(JobState::Cancelled);
        }
        sqlx::query(
            r#"
            UPDATE jobs
            SET state = 'queued', attempt = attempt - 1, lease_expires_at = NULL, run_at = now(),
                progress = 0, stage = NULL
            WHERE id = $1
            "#,
        )
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
        record_event(&mut tx, &job, JobState::Queued, job.attempt - 1, "released", Some("worker shutting down"))
            .await?;
        sqlx::query("SELECT pg_notify($1, '1')").bind(JOBS_CHANNEL).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(JobState::Queued)
    }

    /// Cancels a tenant's job: a queued job at once, a running one at its worker's next
    /// heartbeat (or completion). Finished jobs are left alone.
    pub async fn cancel(&self, tenant: TenantId, job: JobId) -> Result<CancelOutcome> {
        let mut tx = self.pool.begin().await?;
        let current: Job = sqlx::query_as("SELECT * FROM jobs WHERE id = $1 AND tenant_id = $2 FOR UPDATE")
            .bind(job)
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(Error::JobNotFound(job))?;
        let outcome = match current.state {
            JobState::Queued => {
                sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE id = $1")
                    .bind(job)
                    .execute(&mut *tx)
                    .await?;
                record_event(&mut tx, &current, JobState::Cancelled, current.attempt, "cancelled", None).await?;
                CancelOutcome::Cancelled
            }
            JobState::Running if current.cancel_requested => CancelOutcome::Requested,
            JobState::Running => {
                sqlx::query("UPDATE jobs SET cancel_requested = true WHERE id = $1")
                    .bind(job)
                    .execute(&mut *tx)
                    .await?;
                record_event(&mut tx, &current, JobState::Running, current.attempt, "cancel_requested", None).await?;
                CancelOutcome::Requested
            }
            state => CancelOutcome::AlreadyFinal(state),
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// A job by id.
    pub async fn job(&self, job: JobId) -> Result<Option<Job>> {
        Ok(sqlx::query_as("SELECT * FROM jobs WHERE id = $1").bind(job).fetch_optional(&self.pool).await?)
    }

    /// A tenant's job by id (`None` if it is another tenant's).
    pub async fn tenant_job(&self, tenant: TenantId, job: JobId) -> Result<Option<Job>> {
        Ok(sqlx::query_as("SELECT * FROM jobs WHERE id = $1 AND tenant_id = $2")
            .bind(job)
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A job's audit trail, oldest first.
    pub async fn events(&self, job: JobId) -> Result<Vec<JobEvent>> {
        Ok(sqlx::query_as("SELECT * FROM job_events WHERE job_id = $1 ORDER BY id")
            .bind(job)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The error for a refused fenced operation, saying where the job is now.
    async fn lease_lost(&self, lease: &Lease) -> Error {
        match self.job(lease.job).await {
            Ok(Some(job)) => Error::LeaseLost {
                job: lease.job,
                worker: lease.worker.0.clone(),
                attempt: lease.attempt,
                state: job.state,
                current_attempt: job.attempt,
            },
            Ok(None) => Error::JobNotFound(lease.job),
            Err(error) => error,
        }
    }
}

/// Locks the job if `lease` still holds it.
async fn lock_leased(conn: &mut PgConnection, lease: &Lease) -> Result<Option<Job>> {
    Ok(sqlx::query_as(
        "SELECT * FROM jobs WHERE id = $1 AND state = 'running' AND worker_id = $2 AND attempt = $3 FOR UPDATE",
    )
    .bind(lease.job)
    .bind(&lease.worker.0)
    .bind(lease.attempt)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Moves a running job with a pending cancel request to cancelled.
async fn acknowledge_cancel(conn: &mut PgConnection, job: &Job, reason: &str, detail: Option<&str>) -> Result<()> {
    sqlx::query(
        r#"
        UPDATE jobs
        SET state = 'cancelled', cancel_requested = false, lease_expires_at = NULL, finished_at = now()
        WHERE id = $1
        "#,
    )
    .bind(job.id)
    .execute(&mut *conn)
    .await?;
    record_event(conn, job, JobState::Cancelled, job.attempt, reason, detail).await
}

/// Appends to the audit trail: `job` (as it was before) moved to `to`.
async fn record_event(
    conn: &mut PgConnection,
    job: &Job,
    to: JobState,
    attempt: i32,
    reason: &str,
    detail: Option<&str>,
) -> Result<()> {
    sqlx::query(
        r#"
        INSERT INTO job_events (job_id, from_state, to_state, attempt, worker_id, reason, detail)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        "#,
    )
    .bind(job.id)
    .bind(job.state.as_str())
    .bind(to.as_str())
    .bind(attempt)
    .bind(job.worker_id.as_ref().map(|worker| worker.0.as_str()))
    .bind(reason)
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let policy = RetryPolicy { base: Duration::from_secs(2), max: Duration::from_secs(60) };
        assert_eq!(policy.ceiling(1), Duration::from_secs(2));
        assert_eq!(policy.ceiling(2), Duration::from_secs(4));
        assert_eq!(policy.ceiling(5), Duration::from_secs(32));
        assert_eq!(policy.ceiling(6), Duration::from_secs(60));
        assert_eq!(policy.ceiling(1000), Duration::from_secs(60));
        for attempt in 1..8 {
            for _ in 0..100 {
                let delay = policy.delay(attempt);
                assert!(delay >= policy.ceiling(attempt) / 2 && delay <= policy.ceiling(attempt), "{delay:?}");
            }
        }
    }
}
