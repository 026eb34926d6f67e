//! Housekeeping against a real PostgreSQL and the embedded S3 endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use blindfold_housekeeping::{Duties, Settings, pass, spawn};
use blindfold_queue::{CancelOutcome, JobId, JobState, NewJob, Queue, QueueConfig, TenantId, WorkerId, tenants};
use blindfold_store::{EmbeddedS3, ObjectKey, ObjectName, Prefix, Store, StoreConfig};
use blindfold_testkit::TestDatabase;
use bytes::Bytes;
use secrecy::SecretString;

struct Fixture {
    db: TestDatabase,
    _s3: EmbeddedS3,
    _s3_dir: tempfile::TempDir,
    queue: Queue,
    store: Store,
    tenant: TenantId,
}

async fn fixture(lease: Duration) -> Fixture {
    let db = TestDatabase::new().await.unwrap();
    let s3_dir = tempfile::tempdir().unwrap();
    let secret = SecretString::from("housekeeping-secret-key");
    let s3 = EmbeddedS3::start(s3_dir.path(), 0, "housekeeping", &secret).await.unwrap();
    let store =
        Store::connect(&StoreConfig::for_endpoint(s3.endpoint(), "blindfold", "housekeeping", secret)).await.unwrap();
    store.ensure_bucket().await.unwrap();
    let queue = Queue::new(db.pool().clone(), QueueConfig { lease, ..QueueConfig::default() });
    let tenant = tenants::create_tenant(db.pool(), "st-mary").await.unwrap().id;
    Fixture { db, _s3: s3, _s3_dir: s3_dir, queue, store, tenant }
}

fn key(tenant: TenantId, job: JobId, input: bool, name: &str) -> ObjectKey {
    let tenant = blindfold_store::TenantId::new(tenant.to_string()).unwrap();
    let job = blindfold_store::JobId::new(job.to_string()).unwrap();
    let name = ObjectName::new(name).unwrap();
    if input { ObjectKey::job_input(&tenant, &job, &name) } else { ObjectKey::job_result(&tenant, &job, &name) }
}

fn prefix(tenant: TenantId, job: JobId) -> Prefix {
    Prefix::job(
        &blindfold_store::TenantId::new(tenant.to_string()).unwrap(),
        &blindfold_store::JobId::new(job.to_string()).unwrap(),
    )
}

/// Enqueues a job under a fresh id with its input stored under the job's prefix.
async fn stored_job(f: &Fixture, max_attempts: i32) -> JobId {
    let id = JobId::new_random();
    let input = key(f.tenant, id, true, "batch.bfb");
    f.store.put_bytes(&input, Bytes::from_static(b"input")).await.unwrap();
    let new = NewJob {
        tenant_id: f.tenant,
        idempotency_key: None,
        model: "mnist-cnn".into(),
        model_version: None,
        packing: "throughput".into(),
        key_set_id: None,
        image_count: 1,
        priority: 0,
        input_key: input.as_str().to_owned(),
        max_attempts: Some(max_attempts),
    };
    let mut conn = f.queue.pool().acquire().await.unwrap();
    f.queue.enqueue_as_in(&mut conn, id, new).await.unwrap();
    id
}

#[tokio::test]
async fn the_loop_settles_a_job_whose_worker_died_on_its_last_attempt_and_a_cancelled_one() {
    let f = fixture(Duration::from_secs(1)).await;
    let last = stored_job(&f, 1).await;
    let cancelled = stored_job(&f, 3).await;
    let doomed = WorkerId::unique("doomed");
    assert_eq!(f.queue.claim(&doomed, 2).await.unwrap().len(), 2);
    assert_eq!(f.queue.cancel(f.tenant, cancelled).await.unwrap(), CancelOutcome::Requested);
    // The worker never heartbeats again. Nothing but the housekeeper may settle these jobs.
    let settings = Settings { interval_secs: 1, ..Settings::default() };
    let started = Instant::now();
    let _housekeeper = spawn(f.queue.clone(), f.store.clone(), settings, Duties::All);
    loop {
        let (a, b) = (f.queue.job(last).await.unwrap().unwrap(), f.queue.job(cancelled).await.unwrap().unwrap());
        if a.state != JobState::Running && b.state != JobState::Running {
            assert_eq!((a.state, a.error_code.as_deref()), (JobState::Failed, Some("lease_expired")));
            assert_eq!(b.state, JobState::Cancelled);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the housekeeper never settled {a:?} / {b:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Within the default retention nothing is deleted.
    assert_eq!(f.store.list(&prefix(f.tenant, last)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn retention_deletes_finished_jobs_with_every_object_and_keeps_the_rest() {
    let f = fixture(Duration::from_secs(30)).await;
    let done = stored_job(&f, 3).await;
    let waiting = stored_job(&f, 3).await;
    let worker = WorkerId::unique("w");
    let claimed = f.queue.claim(&worker, 1).await.unwrap().remove(0);
    assert_eq!(claimed.job.id, done);
    // A lost first attempt's orphan and the completing attempt's result.
    let orphan = key(f.tenant, done, false, "result-0.bfrb");
    let result = key(f.tenant, done, false, "result-1.bfrb");
    for object in [&orphan, &result] {
        f.store.put_bytes(object, Bytes::from_static(b"result")).await.unwrap();
    }
    f.queue.complete(&claimed.lease, result.as_str()).await.unwrap();

    let keep = Settings { retention_secs: 3600, ..Settings::default() };
    assert_eq!(pass(&f.queue, &f.store, &keep, Duties::All).await.unwrap().purged, 0);
    assert_eq!(f.store.list(&prefix(f.tenant, done)).await.unwrap().len(), 3);

    let report =
        pass(&f.queue, &f.store, &Settings { retention_secs: 0, ..Settings::default() }, Duties::All).await.unwrap();
    assert_eq!((report.purged, report.objects_deleted), (1, 3), "{report:?}");
    assert!(f.queue.job(done).await.unwrap().is_none());
    assert!(f.store.list(&prefix(f.tenant, done)).await.unwrap().is_empty());
    // The queued job and its input are untouched.
    assert_eq!(f.queue.job(waiting).await.unwrap().unwrap().state, JobState::Queued);
    assert_eq!(f.store.list(&prefix(f.tenant, waiting)).await.unwrap().len(), 1);
}

#[test]
fn settings_read_flags_and_refuse_a_zero_interval() {
    use clap::Parser;
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }
    let cli = Cli::try_parse_from(["x", "--housekeeping-secs", "5", "--retention-secs", "60"]).unwrap();
    assert_eq!(cli.settings, Settings { interval_secs: 5, retention_secs: 60, ..Settings::default() });
    assert_eq!(cli.settings.retention().finished_jobs, Duration::from_secs(60));
    assert!(Cli::try_parse_from(["x", "--housekeeping-secs", "0"]).is_err());
    assert!(Cli::try_parse_from(["x", "--upload-expiry-secs", "5"]).is_err(), "under a minute");
    let defaults = Cli::try_parse_from(["x"]).unwrap().settings;
    assert_eq!(defaults, Settings::default());
}

/// Announces an upload as the API does: a `pending_uploads` row, `age_secs` old.
async fn announce(f: &Fixture, key: &ObjectKey, upload_id: Option<&str>, age_secs: f64) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pending_uploads (id, tenant_id, kind, model, packing, params_fingerprint, object_key, size_bytes, \
         upload_id, created_at) VALUES ($1, $2, 'key_set', 'mnist-cryptonets', 'throughput', 'ab', $3, 6, $4, \
         now() - make_interval(secs => $5))",
    )
    .bind(id)
    .bind(f.tenant)
    .bind(key.as_str())
    .bind(upload_id)
    .bind(age_secs)
    .execute(f.queue.pool())
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn uploads_never_confirmed_expire_with_their_objects_and_multipart_uploads() {
    let f = fixture(Duration::from_secs(30)).await;
    let tenant = blindfold_store::TenantId::new(f.tenant.to_string()).unwrap();
    let keyset = |name: &str| {
        ObjectKey::keyset(
            &tenant,
            &blindfold_store::KeysetId::new(uuid::Uuid::new_v4().to_string()).unwrap(),
            &ObjectName::new(name).unwrap(),
        )
    };
    // A single PUT that was never confirmed, a multipart upload left unfinished, and a fresh one.
    let put = keyset("evaluation.keys");
    f.store.put_bytes(&put, Bytes::from_static(b"bundle")).await.unwrap();
    announce(&f, &put, None, 2.0 * 86_400.0).await;
    let parts = keyset("evaluation.keys");
    let sdk = f.store.sdk();
    let started = sdk.create_multipart_upload().bucket(f.store.bucket()).key(parts.as_str()).send().await.unwrap();
    let upload_id = started.upload_id().unwrap().to_owned();
    announce(&f, &parts, Some(&upload_id), 2.0 * 86_400.0).await;
    let fresh = keyset("evaluation.keys");
    f.store.put_bytes(&fresh, Bytes::from_static(b"bundle")).await.unwrap();
    let kept = announce(&f, &fresh, None, 60.0).await;

    let report = pass(&f.queue, &f.store, &Settings::default(), Duties::All).await.unwrap();
    assert_eq!(report.uploads_expired, 2, "{report:?}");
    let left: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM pending_uploads").fetch_all(f.queue.pool()).await.unwrap();
    assert_eq!(left, vec![kept]);
    assert!(f.store.head(&put).await.unwrap().is_none(), "the unconfirmed object is deleted");
    assert!(f.store.head(&fresh).await.unwrap().is_some(), "a recent upload is kept");
    let part = sdk
        .upload_part()
        .bucket(f.store.bucket())
        .key(parts.as_str())
        .upload_id(&upload_id)
        .part_number(1)
        .body(Bytes::from_static(b"late").into())
        .send()
        .await;
    assert!(part.is_err(), "the multipart upload was aborted");
}

/// Whether a pass failed because the database refused the role (SQLSTATE 42501).
fn refused(error: &blindfold_housekeeping::Error) -> bool {
    matches!(
        error,
        blindfold_housekeeping::Error::Queue(blindfold_queue::Error::Database(sqlx::Error::Database(e)))
            if e.code().as_deref() == Some("42501")
    )
}

#[tokio::test]
async fn the_worker_role_runs_the_queue_duties_and_may_not_expire_uploads() {
    let f = fixture(Duration::from_secs(30)).await;
    let url = f.db.login_in("blindfold_worker").await.unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    let worker_queue = Queue::new(pool, f.queue.config().clone());
    // A job whose worker died on its last attempt, and one that finished long ago.
    let dead = stored_job(&f, 1).await;
    let done = stored_job(&f, 1).await;
    let claimed = worker_queue.claim(&WorkerId::unique("w"), 2).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let finished = claimed.iter().find(|c| c.job.id == done).unwrap();
    let result = key(f.tenant, done, false, "result-1.bfrb");
    f.store.put_bytes(&result, Bytes::from_static(b"result")).await.unwrap();
    worker_queue.complete(&finished.lease, result.as_str()).await.unwrap();
    // The lease ran out (set, not waited for) and the finish is past retention.
    sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(dead)
        .execute(f.db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '1 hour' WHERE id = $1")
        .bind(done)
        .execute(f.db.pool())
        .await
        .unwrap();
    let stale = key(f.tenant, JobId::new_random(), true, "batch.bfb");
    let upload = announce(&f, &stale, None, 2.0 * 86_400.0).await;

    let settings = Settings { retention_secs: 60, ..Settings::default() };
    let report = pass(&worker_queue, &f.store, &settings, Duties::Queue).await.unwrap();
    assert_eq!((report.failed, report.purged, report.uploads_expired), (1, 1, 0), "{report:?}");
    let settled = f.queue.job(dead).await.unwrap().unwrap();
    assert_eq!((settled.state, settled.error_code.as_deref()), (JobState::Failed, Some("lease_expired")));
    assert!(f.queue.job(done).await.unwrap().is_none());
    assert!(f.store.list(&prefix(f.tenant, done)).await.unwrap().is_empty());
    let left: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM pending_uploads").fetch_all(f.db.pool()).await.unwrap();
    assert_eq!(left, vec![upload], "the queue duties leave announced uploads alone");
    // Why a worker runs the queue duties only: the role may not expire the API's uploads.
    let all = pass(&worker_queue, &f.store, &Settings::default(), Duties::All).await.unwrap_err();
    assert!(refused(&all), "{all:?}");
}
