//! Housekeeping: settling jobs whose worker vanished on their last attempt, and retention.

use std::time::Duration;

use crate::{Queue, Result};

/// How long finished jobs (and their audit trails) are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Finished jobs older than this (by `finished_at`) are deleted with their events.
    pub finished_jobs: Duration,
    /// Rows deleted per statement, so retention never holds many locks at once.
    pub batch: i64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self { finished_jobs: Duration::from_secs(30 * 24 * 3600), batch: 1000 }
    }
}

/// What a housekeeping pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Housekeeping {
    /// Jobs failed because their lease expired on the last attempt.
    pub failed: u64,
    /// Jobs cancelled because their lease expired with a cancel request pending.
    pub cancelled: u64,
    /// Finished jobs deleted by retention.
    pub purged: u64,
}

impl Queue {
    /// One housekeeping pass: [`Queue::settle_expired`] then [`Queue::purge_finished`].
    /// Run it every few seconds from one place (any API or worker process may; it is safe to
    /// run concurrently).
    pub async fn housekeeping(&self, retention: &RetentionPolicy) -> Result<Housekeeping> {
        let (failed, cancelled) = self.settle_expired().await?;
        let purged = self.purge_finished(retention).await?;
        Ok(Housekeeping { failed, cancelled, purged })
    }

    /// Settles running jobs whose lease expired and that no claim will take: those on their
    /// last attempt fail (`lease_expired`), those with a cancel request are cancelled.
    /// Returns (failed, cancelled).
    pub async fn settle_expired(&self) -> Result<(u64, u64)> {
        let counts: Vec<(String, i64)> = sqlx::query_as(
            r#"
            WITH dead AS (
                SELECT id FROM jobs
                WHERE state = 'running' AND lease_expires_at <= now()
                  AND (cancel_requested OR attempt >= max_attempts)
                FOR UPDATE SKIP LOCKED
            ),
            settled AS (
                UPDATE jobs j
                SET state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'failed' END,
                    error_code = CASE WHEN j.cancel_requested THEN j.error_code ELSE 'lease_expired' END,
                    error_message = CASE WHEN j.cancel_requested THEN j.error_message
                        ELSE 'the worker stopped heartbeating during the last attempt' END,
                    cancel_requested = false,
                    lease_expires_at = NULL,
                    finished_at = now()
                FROM dead
                WHERE j.id = dead.id
                RETURNING j.id, j.state, j.attempt, j.worker_id
            ),
            logged AS (
                INSERT INTO job_events (job_id, from_state, to_state, attempt, worker_id, reason, detail)
                SELECT id, 'running', state, attempt, worker_id, 'lease_expired',
                       'worker ' || worker_id || ' stopped heartbeating'
                FROM settled
            )
            SELECT state, count(*) FROM settled GROUP BY state
            "#,
        )
        .fetch_all(self.pool())
        .await?;
        let count =
            |state: &str| counts.iter().filter(|(s, _)| s == state).map(|(_, n)| u64::try_from(*n).unwrap_or(0)).sum();
        Ok((count("failed"), count("cancelled")))
    }

    /// Deletes finished jobs older than the policy allows, with their events, in batches.
    /// Returns how many jobs were deleted.
    pub async fn purge_finished(&self, retention: &RetentionPolicy) -> Result<u64> {
        let mut purged = 0;
        loop {
            let deleted = sqlx::query(
                r#"
                DELETE FROM jobs
                WHERE id IN (
                    SELECT id FROM jobs
                    WHERE finished_at IS NOT NULL AND finished_at < now() - make_interval(secs => $1)
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED
                )
                "#,
            )
            .bind(retention.finished_jobs.as_secs_f64())
            .bind(retention.batch.max(1))
            .execute(self.pool())
            .await?
            .rows_affected();
            purged += deleted;
            if deleted < u64::try_from(retention.batch.max(1)).unwrap_or(1) {
                return Ok(purged);
            }
        }
    }
}
