//! Least privilege: the database roles the API and the workers log in through (migration
//! `*_roles.sql`), and the schema check both run at start. Each test logs in as a fresh LOGIN
//! user in one of the group roles, as a deployment does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blindfold_queue::{
    Completion, FailOutcome, Failure, Heartbeat, JobId, JobState, NewJob, Progress, Queue, QueueConfig, SchemaError,
    TenantId, WorkerId, check_schema, models, tenants,
};
use blindfold_testkit::TestDatabase;
use sqlx::PgPool;

async fn login(db: &TestDatabase, group: &str) -> PgPool {
    let url = db.login_in(group).await.unwrap();
    sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap()
}

fn job(tenant: TenantId, input: &str) -> NewJob {
    NewJob {
        tenant_id: tenant,
        idempotency_key: None,
        model: "mnist-cnn".into(),
        model_version: None,
        packing: "throughput".into(),
        key_set_id: None,
        image_count: 1,
        priority: 0,
        input_key: input.into(),
        max_attempts: Some(2),
    }
}

/// Runs `statement` and returns its SQLSTATE (`None` when it succeeded).
async fn sqlstate(pool: &PgPool, statement: &str) -> Option<String> {
    match sqlx::query(statement).execute(pool).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(error)) => error.code().map(|code| code.into_owned()),
        Err(error) => panic!("{statement}: {error}"),
    }
}

const INSUFFICIENT_PRIVILEGE: Option<&str> = Some("42501");

#[tokio::test]
async fn the_worker_role_runs_every_worker_transition_of_the_queue() {
    let db = TestDatabase::new().await.unwrap();
    let owner = Queue::new(db.pool().clone(), QueueConfig::default());
    let tenant = tenants::create_tenant(db.pool(), "st-mary").await.unwrap().id;
    let ids: Vec<JobId> = owner
        .enqueue_many(&[job(tenant, "a"), job(tenant, "b"), job(tenant, "c")])
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job.id)
        .collect();
    let queue = Queue::new(login(&db, "blindfold_worker").await, QueueConfig::default());
    check_schema(queue.pool()).await.unwrap();

    let worker = WorkerId::unique("restricted");
    let claimed = queue.claim(&worker, 3).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let lease = |id: JobId| claimed.iter().find(|c| c.job.id == id).unwrap().lease.clone();
    let progress = Progress { fraction: 0.5, stage: Some("layer 2".into()) };
    assert!(matches!(queue.heartbeat(&lease(ids[0]), &progress).await.unwrap(), Heartbeat::Extended { .. }));
    assert_eq!(queue.complete(&lease(ids[0]), "result-1.bfrb").await.unwrap(), Completion::Succeeded);
    let retry = queue.fail(&lease(ids[1]), &Failure::transient("storage", "timed out")).await.unwrap();
    assert!(matches!(retry, FailOutcome::Retrying { .. }), "{retry:?}");
    assert_eq!(queue.release(&lease(ids[2])).await.unwrap(), JobState::Queued);
    // A cancel (the API's) reaches the worker at its next heartbeat.
    let again = queue.claim(&worker, 1).await.unwrap().remove(0);
    owner.cancel(tenant, again.job.id).await.unwrap();
    assert_eq!(queue.heartbeat(&again.lease, &progress).await.unwrap(), Heartbeat::Cancelled);
    // The queue's housekeeping: settling and retention (the finish moved back, not waited for).
    queue.settle_expired().await.unwrap();
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '1 hour' WHERE id = $1")
        .bind(ids[0])
        .execute(db.pool())
        .await
        .unwrap();
    let retention = blindfold_queue::RetentionPolicy { finished_jobs: std::time::Duration::from_secs(60), batch: 10 };
    let expired = queue.expired_finished(&retention).await.unwrap();
    let expired: Vec<JobId> = expired.into_iter().map(|job| job.id).collect();
    assert_eq!(expired, vec![ids[0]]);
    assert_eq!(queue.purge(&[ids[0]]).await.unwrap(), 1);
    // What a job's attempt reads: its key set and its model version.
    tenants::key_set(queue.pool(), tenant, blindfold_queue::KeySetId::new_random()).await.unwrap();
    models::get(queue.pool(), "mnist-cnn", 1).await.unwrap();
    assert_eq!(owner.job(ids[0]).await.unwrap(), None);
}

#[tokio::test]
async fn the_worker_role_is_refused_everything_else() {
    let db = TestDatabase::new().await.unwrap();
    let tenant = tenants::create_tenant(db.pool(), "st-mary").await.unwrap().id;
    tenants::issue_token(db.pool(), tenant, "radiology").await.unwrap();
    let queue = Queue::new(db.pool().clone(), QueueConfig::default());
    queue.enqueue(job(tenant, "a")).await.unwrap();
    let worker = login(&db, "blindfold_worker").await;
    for statement in [
        "SELECT * FROM api_tokens",
        "SELECT name FROM tenants",
        "UPDATE tenants SET name = 'x'",
        "DELETE FROM tenants",
        "UPDATE key_sets SET object_key = 'x'",
        "DELETE FROM key_sets",
        "SELECT * FROM pending_uploads",
        "DELETE FROM pending_uploads",
        "UPDATE models SET state = 'retired'",
        // A job's own columns: its tenant, its input, its model.
        "UPDATE jobs SET input_key = 'tenants/other/jobs/x/input/batch.bfib'",
        "UPDATE jobs SET tenant_id = tenant_id",
        "INSERT INTO jobs (id, tenant_id, model, packing, image_count, input_key, max_attempts) \
         SELECT gen_random_uuid(), id, 'm', 'throughput', 1, 'x', 1 FROM tenants",
        // The audit trail is append-only, for every role.
        "UPDATE job_events SET reason = 'x'",
        "DELETE FROM job_events",
        "ALTER TABLE jobs ADD COLUMN intruder int",
        "DELETE FROM _sqlx_migrations",
    ] {
        let code = sqlstate(&worker, statement).await;
        assert_eq!(code.as_deref(), INSUFFICIENT_PRIVILEGE, "{statement}");
    }
}

#[tokio::test]
async fn the_api_role_does_what_the_api_does_and_cannot_change_the_schema() {
    let db = TestDatabase::new().await.unwrap();
    let api = login(&db, "blindfold_api").await;
    check_schema(&api).await.unwrap();
    let tenant = tenants::create_tenant(&api, "st-mary").await.unwrap();
    let token = tenants::issue_token(&api, tenant.id, "radiology").await.unwrap();
    assert_eq!(tenants::tenant_for_token(&api, &token.secret).await.unwrap(), Some(tenant.id));
    assert!(tenants::revoke_token(&api, token.id).await.unwrap());
    let keys = tenants::insert_key_set(&api, tenant.id, "fp", "tenants/t/keysets/k/evaluation.keys", 1).await.unwrap();
    let queue = Queue::new(api.clone(), QueueConfig::default());
    let mut conn = api.acquire().await.unwrap();
    let enqueued = queue.enqueue_as_in(&mut conn, JobId::new_random(), job(tenant.id, "a")).await.unwrap();
    drop(conn);
    queue.cancel(tenant.id, enqueued.job.id).await.unwrap();
    assert_eq!(queue.events(enqueued.job.id).await.unwrap().len(), 2);
    assert!(tenants::delete_key_set(&api, tenant.id, keys.id).await.unwrap());
    for statement in [
        "INSERT INTO pending_uploads (id, tenant_id, kind, model, packing, params_fingerprint, object_key, size_bytes) \
         SELECT gen_random_uuid(), id, 'key_set', 'm', 'throughput', 'fp', 'k', 1 FROM tenants",
        "UPDATE pending_uploads SET upload_id = NULL",
        "DELETE FROM pending_uploads",
        "DELETE FROM jobs WHERE finished_at IS NOT NULL",
    ] {
        assert_eq!(sqlstate(&api, statement).await, None, "{statement}");
    }
    for statement in [
        "UPDATE job_events SET reason = 'x'",
        "DELETE FROM job_events",
        "DELETE FROM tenants",
        "ALTER TABLE jobs ADD COLUMN intruder int",
        "DELETE FROM _sqlx_migrations",
    ] {
        assert_eq!(sqlstate(&api, statement).await.as_deref(), INSUFFICIENT_PRIVILEGE, "{statement}");
    }
}

#[tokio::test]
async fn the_schema_check_tells_current_behind_ahead_dirty_and_modified_apart() {
    let db = TestDatabase::new().await.unwrap();
    let pool = db.pool();
    check_schema(pool).await.unwrap();
    let latest: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations").fetch_one(pool).await.unwrap();
    let set = |statement: &'static str| async move {
        sqlx::query(statement).bind(latest).execute(pool).await.unwrap();
    };

    set("UPDATE _sqlx_migrations SET success = false WHERE version = $1").await;
    let dirty = check_schema(pool).await.unwrap_err();
    assert!(matches!(dirty, SchemaError::Dirty { version } if version == latest), "{dirty}");
    set("UPDATE _sqlx_migrations SET success = true WHERE version = $1").await;

    set("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = $1").await;
    let modified = check_schema(pool).await.unwrap_err();
    assert!(matches!(modified, SchemaError::Modified { version } if version == latest), "{modified}");

    set("DELETE FROM _sqlx_migrations WHERE version = $1").await;
    let behind = check_schema(pool).await.unwrap_err();
    assert!(matches!(&behind, SchemaError::Behind { missing } if missing == &[latest]), "{behind}");
    assert!(behind.to_string().contains("blindfold admin migrate"), "{behind}");

    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'from the future', true, '\\x00', 0)",
    )
    .bind(latest + 1)
    .execute(pool)
    .await
    .unwrap();
    let ahead = check_schema(pool).await.unwrap_err();
    assert!(matches!(&ahead, SchemaError::Ahead { unknown } if unknown == &[latest + 1]), "{ahead}");

    sqlx::query("DROP TABLE _sqlx_migrations").execute(pool).await.unwrap();
    let empty = check_schema(pool).await.unwrap_err();
    assert!(matches!(empty, SchemaError::Empty), "{empty}");
    assert!(empty.to_string().contains("blindfold admin migrate"), "{empty}");
}
