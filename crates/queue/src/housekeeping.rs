//! The queue's side of housekeeping: settling jobs whose worker vanished where no claim will
//! take them, and finding and deleting finished jobs past retention. The loop that calls these
//! (and deletes the purged jobs' objects from storage) is `blindfold-housekeeping`'s.

use std::time::Duration;

use crate::{JobId, Queue, Result, TenantId};

/// How long finished jobs (and their audit trails) are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Finished jobs older than this (by `finished_at`) are deleted with their events.
    pub finished_jobs: Duration,
    /// Jobs looked at per statement, so retention never holds many locks at once.
    pub batch: i64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self { finished_jobs: Duration::from_secs(30 * 24 * 3600), batch: 1000 }
    }
}

/// Jobs settled by [`Queue::settle_expired`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Jobs failed because their lease expired on the last attempt.
    pub failed: u64,
    /// Jobs cancelled because their lease expired with a cancel request pending.
    pub cancelled: u64,
}

/// A finished job past retention, with what names its stored objects. Its objects go first,
/// then its row ([`Queue::purge`]), so a failed deletion leaves the row to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredJob {
    pub id: JobId,
    pub tenant_id: TenantId,
    /// The input batch's object key, as enqueued.
    pub input_key: String,
    /// The result's object key, for a job that succeeded.
    pub result_key: Option<String>,
}

/// An announced upload (key set or job) never confirmed within the expiry: its row is gone,
/// and what was uploaded under `object_key` (an object, or an unfinished multipart upload)
/// must go too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredUpload {
    pub id: uuid::Uuid,
    pub tenant_id: TenantId,
    pub object_key: String,
    /// The store's multipart upload id, when the upload was presigned in parts.
    pub upload_id: Option<String>,
}

impl Queue {
    /// Deletes up to `limit` announced uploads older than `older_than` and returns them, so
    /// the caller can delete their objects and abort their multipart uploads. Deleting the row
    /// first means a `complete` or `submit` racing with expiry either wins (and the upload is
    /// not returned) or finds the upload gone; never half of each.
    pub async fn expire_uploads(&self, older_than: Duration, limit: i64) -> Result<Vec<ExpiredUpload>> {
        let rows: Vec<(uuid::Uuid, TenantId, String, Option<String>)> = sqlx::query_as(
            r#"
            DELETE FROM pending_uploads
            WHERE id IN (
                SELECT id FROM pending_uploads
                WHERE created_at < now() - make_interval(secs => $1)
                ORDER BY created_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            )
            RETURNING id, tenant_id, object_key, upload_id
            "#,
        )
        .bind(older_than.as_secs_f64())
        .bind(limit.max(1))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, tenant_id, object_key, upload_id)| ExpiredUpload { id, tenant_id, object_key, upload_id })
            .collect())
    }

    /// Settles running jobs whose lease expired and that no claim will take: those on their
    /// last attempt fail (`lease_expired`), those with a cancel request are cancelled.
    pub async fn settle_expired(&self) -> Result<Settled> {
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
        Ok(Settled { failed: count("failed"), cancelled: count("cancelled") })
    }

    /// Up to `retention.batch` finished jobs older than the policy allows, oldest first.
    /// Nothing is locked or deleted: finished jobs never change, and concurrent callers that
    /// find the same jobs delete the same objects and rows, which is harmless.
    pub async fn expired_finished(&self, retention: &RetentionPolicy) -> Result<Vec<ExpiredJob>> {
        let rows: Vec<(JobId, TenantId, String, Option<String>)> = sqlx::query_as(
            r#"
            SELECT id, tenant_id, input_key, result_key FROM jobs
            WHERE finished_at IS NOT NULL AND finished_at < now() - make_interval(secs => $1)
            ORDER BY finished_at
            LIMIT $2
            "#,
        )
        .bind(retention.finished_jobs.as_secs_f64())
        .bind(retention.batch.max(1))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, tenant_id, input_key, result_key)| ExpiredJob { id, tenant_id, input_key, result_key })
            .collect())
    }

    /// Deletes these jobs, if finished, with their events. Returns how many were deleted.
    pub async fn purge(&self, jobs: &[JobId]) -> Result<u64> {
        let ids: Vec<uuid::Uuid> = jobs.iter().map(|id| id.0).collect();
        let deleted = sqlx::query("DELETE FROM jobs WHERE id = ANY($1) AND finished_at IS NOT NULL")
            .bind(ids)
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(deleted)
    }
}
