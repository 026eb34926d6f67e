//! The owner of the service's background duties. On an interval it settles running jobs whose
//! worker stopped heartbeating where no claim will take them (the last attempt fails with
//! `lease_expired`, a pending cancel is acknowledged), forgets announced uploads never confirmed
//! (deleting their objects, aborting their multipart uploads), and deletes finished jobs past
//! retention together with their stored objects (input, results of every attempt).
//!
//! Every worker process and every API process runs one ([`spawn`]), so the duty has an owner
//! whenever any part of the service runs; concurrent passes are safe (settling locks with
//! `SKIP LOCKED`, deletions are idempotent). Each process runs the [`Duties`] its database role
//! may do: a worker the queue's, the API all of them (announced uploads are the API's table,
//! which the worker role cannot touch).
//!
//! ```no_run
//! # async fn example(queue: blindfold_queue::Queue, store: blindfold_store::Store) {
//! use blindfold_housekeeping::Duties;
//! let settings = blindfold_housekeeping::Settings::default();
//! let _housekeeper = blindfold_housekeeping::spawn(queue, store, settings, Duties::All);
//! // ... serve; dropping the handle stops the loop.
//! # }
//! ```

use std::time::Duration;

use blindfold_queue::{ExpiredJob, ExpiredUpload, Queue, RetentionPolicy};
use blindfold_store::{ObjectKey, Prefix, Store, StoreError};

/// How often housekeeping runs and how long finished jobs are kept. Flattened into the
/// worker's and the API's settings, so both read the same flags and variables.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Settings {
    /// Seconds between housekeeping passes (each one jittered by up to a fifth, so processes
    /// do not run in step). A job whose worker died on its last attempt ends `failed`
    /// (`lease_expired`) at most one lease plus this long after the worker's last heartbeat.
    #[arg(long = "housekeeping-secs", env = "BLINDFOLD_HOUSEKEEPING_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval_secs: u64,

    /// Seconds a finished job (succeeded, failed or cancelled) is kept, with its audit trail,
    /// its input batch and its results; then all of it is deleted. Default: 30 days.
    #[arg(long = "retention-secs", env = "BLINDFOLD_RETENTION_SECS", default_value_t = 30 * 24 * 3600)]
    pub retention_secs: u64,

    /// Seconds an announced upload (a key set or a job whose `complete`/`submit` never came)
    /// is kept; then it is forgotten, its object deleted and its multipart upload aborted, so
    /// abandoned uploads hold no storage. Default: 24 hours.
    #[arg(long = "upload-expiry-secs", env = "BLINDFOLD_UPLOAD_EXPIRY_SECS", default_value_t = 24 * 3600,
          value_parser = clap::value_parser!(u64).range(60..))]
    pub upload_expiry_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self { interval_secs: 15, retention_secs: 30 * 24 * 3600, upload_expiry_secs: 24 * 3600 }
    }
}

impl Settings {
    /// The time between passes, before jitter.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs.max(1))
    }

    /// The retention policy these settings describe.
    pub fn retention(&self) -> RetentionPolicy {
        RetentionPolicy { finished_jobs: Duration::from_secs(self.retention_secs), ..RetentionPolicy::default() }
    }
}

/// Which duties a process's passes run. Every pass of every kind settles expired leases and
/// deletes finished jobs past retention; only [`Duties::All`] also expires announced uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duties {
    /// The queue's duties: settling expired leases, retention of finished jobs and their
    /// objects. What a worker runs: its database role may change jobs but not the API's
    /// announced uploads (`pending_uploads`), and its bucket policy covers job objects only.
    Queue,
    /// The queue's duties and expiring announced uploads never confirmed (their rows, objects
    /// and multipart uploads). What the API runs.
    All,
}

impl Duties {
    /// Whether passes expire unconfirmed uploads.
    pub fn expires_uploads(self) -> bool {
        self == Self::All
    }

    fn name(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::All => "all",
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Jobs failed because their worker died on the last attempt.
    pub failed: u64,
    /// Jobs cancelled because their worker died with a cancel request pending.
    pub cancelled: u64,
    /// Finished jobs deleted by retention.
    pub purged: u64,
    /// Stored objects deleted with them.
    pub objects_deleted: u64,
    /// Announced uploads that expired unconfirmed (their objects and multipart uploads went too).
    pub uploads_expired: u64,
}

impl Report {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Why a pass stopped early. The next pass starts over, so nothing is lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("housekeeping in the database: {0}")]
    Queue(#[from] blindfold_queue::Error),
    #[error("deleting the objects of finished job {job}: {source}")]
    Store {
        job: blindfold_queue::JobId,
        #[source]
        source: StoreError,
    },
}

/// One pass: settle expired leases, expire unconfirmed uploads (with [`Duties::All`]), then
/// delete finished jobs past retention, batch by batch, each job's objects before its row (a
/// failed deletion keeps the row for the next pass).
pub async fn pass(queue: &Queue, store: &Store, settings: &Settings, duties: Duties) -> Result<Report, Error> {
    let retention = &settings.retention();
    let settled = queue.settle_expired().await?;
    let mut report = Report { failed: settled.failed, cancelled: settled.cancelled, ..Report::default() };
    if duties.expires_uploads() {
        report.uploads_expired = expire_uploads(queue, store, settings).await?;
    }
    loop {
        let expired = queue.expired_finished(retention).await?;
        let full_batch = expired.len() as i64 >= retention.batch.max(1);
        if expired.is_empty() {
            break;
        }
        for job in &expired {
            report.objects_deleted += delete_objects(store, job).await?;
        }
        let ids: Vec<_> = expired.iter().map(|job| job.id).collect();
        report.purged += queue.purge(&ids).await?;
        if !full_batch {
            break;
        }
    }
    Ok(report)
}

/// Forgets announced uploads past the expiry, batch by batch; returns how many.
async fn expire_uploads(queue: &Queue, store: &Store, settings: &Settings) -> Result<u64, Error> {
    let batch = settings.retention().batch.max(1);
    let mut count = 0;
    loop {
        let expired = queue.expire_uploads(Duration::from_secs(settings.upload_expiry_secs), batch).await?;
        for upload in &expired {
            forget_upload(store, upload).await;
        }
        count += expired.len() as u64;
        if (expired.len() as i64) < batch {
            return Ok(count);
        }
    }
}

/// Deletes everything under the job's prefix, and its input and result objects wherever the
/// job named them, as long as they lie in the job's own tenant (a job row never gets to delete
/// another tenant's object or a model file).
async fn delete_objects(store: &Store, job: &ExpiredJob) -> Result<u64, Error> {
    let failed = |source| Error::Store { job: job.id, source };
    let tenant = blindfold_store::TenantId::new(job.tenant_id.to_string()).map_err(failed)?;
    let store_job = blindfold_store::JobId::new(job.id.to_string()).map_err(failed)?;
    let prefix = Prefix::job(&tenant, &store_job);
    let mut deleted = store.delete_prefix(&prefix).await.map_err(failed)? as u64;
    for key in std::iter::once(job.input_key.as_str()).chain(job.result_key.as_deref()) {
        let Ok(key) = ObjectKey::parse(key) else { continue };
        if key.tenant() != Some(&tenant) || key.as_str().starts_with(prefix.as_str()) {
            continue;
        }
        if store.head(&key).await.map_err(failed)?.is_some() {
            store.delete(&key).await.map_err(failed)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Aborts an expired upload's multipart upload and deletes its object. Its row is already
/// gone, so a failure is logged rather than retried: the object lies under a key no row names.
async fn forget_upload(store: &Store, upload: &ExpiredUpload) {
    let Ok(key) = ObjectKey::parse(&upload.object_key) else {
        tracing::warn!(upload = %upload.id, key = %upload.object_key, "an expired upload names a key outside the layout");
        return;
    };
    if key.tenant().map(ToString::to_string) != Some(upload.tenant_id.to_string()) {
        tracing::warn!(upload = %upload.id, "an expired upload names another tenant's key; left alone");
        return;
    }
    if let Some(upload_id) = &upload.upload_id
        && let Err(error) = store.abort_upload(&key, upload_id).await
    {
        tracing::warn!(%error, upload = %upload.id, "could not abort an expired multipart upload");
    }
    if let Err(error) = store.delete(&key).await {
        tracing::warn!(%error, upload = %upload.id, "could not delete an expired upload's object");
    }
}

/// A running housekeeping loop; dropping it stops the loop.
#[derive(Debug)]
pub struct Housekeeper {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Housekeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the loop on the current tokio runtime: a first pass at once, then one every
/// interval (jittered), each running `duties`. A failed pass is logged and retried at the next
/// interval; passes that changed something are logged at info.
pub fn spawn(queue: Queue, store: Store, settings: Settings, duties: Duties) -> Housekeeper {
    let task = tokio::spawn(async move {
        tracing::info!(
            duties = duties.name(),
            interval_s = settings.interval_secs,
            retention_s = settings.retention_secs,
            upload_expiry_s = settings.upload_expiry_secs,
            "housekeeping started"
        );
        loop {
            match pass(&queue, &store, &settings, duties).await {
                Ok(report) if report.is_empty() => {}
                Ok(report) => tracing::info!(
                    failed = report.failed,
                    cancelled = report.cancelled,
                    purged = report.purged,
                    objects_deleted = report.objects_deleted,
                    uploads_expired = report.uploads_expired,
                    "housekeeping pass"
                ),
                Err(error) => tracing::warn!(%error, "housekeeping pass failed; trying again next interval"),
            }
            let jitter = 0.8 + 0.4 * rand::random::<f64>();
            tokio::time::sleep(settings.interval().mul_f64(jitter)).await;
        }
    });
    Housekeeper { task }
}
