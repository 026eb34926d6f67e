//! The queue against a real PostgreSQL (DATABASE_URL's server or a throwaway cluster).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blindfold_queue::{
    CancelOutcome, Completion, Error, FailOutcome, Failure, Heartbeat, Job, JobEvent, JobId, JobState, NewJob,
    Progress, Queue, QueueConfig, RetentionPolicy, RetryPolicy, TenantId, Wake, WakeUp, WorkerId, tenants,
};
use blindfold_testkit::TestDatabase;
use chrono::{DateTime, Utc};

async fn setup(config: QueueConfig) -> (TestDatabase, Queue) {
    let db = TestDatabase::new().await.expect("test database");
    let queue = Queue::new(db.pool().clone(), config);
    (db, queue)
}

async fn tenant(queue: &Queue, name: &str) -> TenantId {
    tenants::create_tenant(queue.pool(), name).await.unwrap().id
}

fn job(tenant: TenantId, input: &str) -> NewJob {
    NewJob {
        tenant_id: tenant,
        idempotency_key: None,
        model: "mnist-cnn".into(),
        model_version: None,
        packing: "throughput".into(),
        key_set_id: None,
        image_count: 16,
        priority: 0,
        input_key: input.into(),
        max_attempts: None,
    }
}

async fn enqueue_n(queue: &Queue, tenant: TenantId, n: usize, prefix: &str) -> Vec<JobId> {
    let jobs: Vec<NewJob> = (0..n).map(|i| job(tenant, &format!("{prefix}/{i}"))).collect();
    let mut ids = Vec::new();
    for chunk in jobs.chunks(500) {
        ids.extend(queue.enqueue_many(chunk).await.unwrap().into_iter().map(|e| e.job.id));
    }
    ids
}

async fn db_now(queue: &Queue) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now()").fetch_one(queue.pool()).await.unwrap()
}

/// (from, to, reason) of a job's trail.
async fn trail(queue: &Queue, job: JobId) -> Vec<(Option<String>, String, String)> {
    queue.events(job).await.unwrap().into_iter().map(|e| (e.from_state, e.to_state, e.reason)).collect()
}

fn step(from: Option<&str>, to: &str, reason: &str) -> (Option<String>, String, String) {
    (from.map(str::to_owned), to.to_owned(), reason.to_owned())
}

/// The trail is a chain from nothing to the job's current state and attempt.
fn assert_trail_is_consistent(job: &Job, events: &[JobEvent]) {
    let mut state: Option<&str> = None;
    for event in events {
        assert_eq!(event.from_state.as_deref(), state, "job {} trail {events:?}", job.id);
        state = Some(&event.to_state);
    }
    assert_eq!(state, Some(job.state.as_str()), "job {} trail {events:?}", job.id);
    assert_eq!(events.last().unwrap().attempt, job.attempt, "job {} trail {events:?}", job.id);
}

/// Who ran each (job, attempt).
type Runs = HashMap<(JobId, i32), Vec<WorkerId>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_claimers_run_every_job_exactly_once_per_attempt() {
    let config =
        QueueConfig { retry: RetryPolicy { base: Duration::ZERO, max: Duration::ZERO }, ..QueueConfig::default() };
    let (_db, queue) = setup(config).await;
    let tenants = [tenant(&queue, "a").await, tenant(&queue, "b").await, tenant(&queue, "c").await];
    let mut ids = Vec::new();
    for (index, tenant) in tenants.iter().enumerate() {
        let count = [1200, 600, 200][index];
        ids.extend(enqueue_n(&queue, *tenant, count, &format!("t{index}")).await);
    }
    assert_eq!(ids.len(), 2000);

    // Every (job, attempt) run, by whom. Jobs whose input ends in 0 fail transiently on their
    // first attempt and must run again as attempt 2.
    let runs: Arc<Mutex<Runs>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let queue = queue.clone();
        let runs = runs.clone();
        tasks.push(tokio::spawn(async move {
            let worker = WorkerId::unique(&format!("w{w}"));
            let mut idle_rounds = 0;
            loop {
                let claimed = queue.claim(&worker, 16).await.unwrap();
                if claimed.is_empty() {
                    let open: i64 =
                        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")
                            .fetch_one(queue.pool())
                            .await
                            .unwrap();
                    if open == 0 {
                        return;
                    }
                    idle_rounds += 1;
                    assert!(idle_rounds < 10_000, "claimers found nothing while {open} jobs were open");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let mut done = Vec::new();
                for c in claimed {
                    assert_eq!(c.job.state, JobState::Running);
                    runs.lock().unwrap().entry((c.job.id, c.lease.attempt)).or_default().push(worker.clone());
                    if c.job.input_key.ends_with('0') && c.lease.attempt == 1 {
                        let outcome = queue.fail(&c.lease, &Failure::transient("flaky", "try again")).await.unwrap();
                        assert!(matches!(outcome, FailOutcome::Retrying { .. }), "{outcome:?}");
                    } else {
                        done.push((c.lease, format!("out/{}", c.job.id)));
                    }
                }
                for outcome in queue.complete_many(&done).await.unwrap() {
                    assert_eq!(outcome, Completion::Succeeded);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let runs = std::mem::take(&mut *runs.lock().unwrap());
    for ((job, attempt), workers) in runs.iter() {
        assert_eq!(workers.len(), 1, "job {job} attempt {attempt} ran {} times", workers.len());
    }
    let all: Vec<Job> = sqlx::query_as("SELECT * FROM jobs").fetch_all(queue.pool()).await.unwrap();
    assert_eq!(all.len(), 2000);
    for job in &all {
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        let expected_attempts = if job.input_key.ends_with('0') { 2 } else { 1 };
        assert_eq!(job.attempt, expected_attempts, "{job:?}");
        for attempt in 1..=expected_attempts {
            assert!(runs.contains_key(&(job.id, attempt)), "job {} attempt {attempt} never ran", job.id);
        }
        assert_eq!(job.result_key.as_deref(), Some(format!("out/{}", job.id).as_str()));
        assert!(job.error_code.is_none() && job.lease_expires_at.is_none() && job.finished_at.is_some());
    }
    assert_eq!(runs.len(), 2000 + 200);

    // The audit trail of every job is a consistent chain ending in its state.
    let events: Vec<JobEvent> =
        sqlx::query_as("SELECT * FROM job_events ORDER BY id").fetch_all(queue.pool()).await.unwrap();
    let mut by_job: HashMap<JobId, Vec<JobEvent>> = HashMap::new();
    for event in events {
        by_job.entry(event.job_id).or_default().push(event);
    }
    for job in &all {
        let events = &by_job[&job.id];
        assert_trail_is_consistent(job, events);
        assert_eq!(events.len(), if job.attempt == 2 { 5 } else { 3 });
    }
}

#[tokio::test]
async fn a_silent_worker_loses_its_job_and_its_late_complete_is_refused() {
    let config = QueueConfig { lease: Duration::from_secs(1), ..QueueConfig::default() };
    let (_db, queue) = setup(config).await;
    let t = tenant(&queue, "hospital").await;
    let id = queue.enqueue(job(t, "in/1")).await.unwrap().job.id;

    let silent = WorkerId::unique("silent");
    let first = queue.claim(&silent, 4).await.unwrap().pop().unwrap();
    assert_eq!((first.job.id, first.lease.attempt), (id, 1));
    // A heartbeat moves the lease forward.
    let before = queue.job(id).await.unwrap().unwrap().lease_expires_at.unwrap();
    let Heartbeat::Extended { lease_expires_at } =
        queue.heartbeat(&first.lease, &Progress { fraction: 0.25, stage: Some("layer 1".into()) }).await.unwrap()
    else {
        panic!("heartbeat refused")
    };
    assert!(lease_expires_at >= before);
    let stored = queue.job(id).await.unwrap().unwrap();
    assert_eq!((stored.progress, stored.stage.as_deref()), (0.25, Some("layer 1")));

    // The silent worker stops heartbeating; another worker gets the job once the lease is over.
    let rescuer = WorkerId::unique("rescuer");
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        if let Some(claimed) = queue.claim(&rescuer, 4).await.unwrap().pop() {
            break claimed;
        }
        assert!(Instant::now() < deadline, "the expired lease was never reclaimed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((second.job.id, second.lease.attempt), (id, 2));
    assert_eq!(second.job.worker_id.as_ref(), Some(&rescuer));
    assert_eq!(second.job.progress, 0.0, "progress restarts with the attempt");

    // The silent worker wakes up: everything it tries is refused.
    let refused = queue.complete(&first.lease, "out/stale").await.unwrap_err();
    assert!(
        matches!(refused, Error::LeaseLost { attempt: 1, current_attempt: 2, state: JobState::Running, .. }),
        "{refused:?}"
    );
    let progress = Progress { fraction: 0.9, stage: None };
    assert_eq!(queue.heartbeat(&first.lease, &progress).await.unwrap(), Heartbeat::Lost);
    assert!(matches!(queue.fail(&first.lease, &Failure::transient("x", "y")).await, Err(Error::LeaseLost { .. })));
    assert!(matches!(queue.release(&first.lease).await, Err(Error::LeaseLost { .. })));

    assert_eq!(queue.complete(&second.lease, "out/1").await.unwrap(), Completion::Succeeded);
    let done = queue.job(id).await.unwrap().unwrap();
    assert_eq!((done.state, done.result_key.as_deref()), (JobState::Succeeded, Some("out/1")));
    // A completed job's lease is gone too.
    assert!(matches!(queue.complete(&second.lease, "again").await, Err(Error::LeaseLost { .. })));

    assert_eq!(
        trail(&queue, id).await,
        vec![
            step(None, "queued", "enqueued"),
            step(Some("queued"), "running", "claimed"),
            step(Some("running"), "running", "lease_expired"),
            step(Some("running"), "succeeded", "succeeded"),
        ]
    );
    let events = queue.events(id).await.unwrap();
    assert_eq!(events[1].worker_id.as_deref(), Some(silent.0.as_str()));
    assert_eq!(events[2].worker_id.as_deref(), Some(rescuer.0.as_str()));
    assert!(events[2].detail.as_deref().unwrap().contains(&silent.0));
}

#[tokio::test]
async fn a_worker_dying_on_the_last_attempt_fails_the_job_and_a_cancelled_one_is_cancelled() {
    let config = QueueConfig { lease: Duration::from_secs(1), ..QueueConfig::default() };
    let (_db, queue) = setup(config).await;
    let t = tenant(&queue, "hospital").await;
    let last = queue.enqueue(NewJob { max_attempts: Some(1), ..job(t, "in/last") }).await.unwrap().job.id;
    let cancelled = queue.enqueue(job(t, "in/cancelled")).await.unwrap().job.id;
    let worker = WorkerId::unique("doomed");
    assert_eq!(queue.claim(&worker, 2).await.unwrap().len(), 2);
    assert_eq!(queue.cancel(t, cancelled).await.unwrap(), CancelOutcome::Requested);

    // Neither may be claimed again; housekeeping settles both once the lease runs out.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut failed, mut cancelled_count) = (0, 0);
    while failed + cancelled_count < 2 {
        assert!(queue.claim(&WorkerId::unique("other"), 4).await.unwrap().is_empty());
        let settled = queue.settle_expired().await.unwrap();
        (failed, cancelled_count) = (failed + settled.failed, cancelled_count + settled.cancelled);
        assert!(Instant::now() < deadline, "expired leases were never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((failed, cancelled_count), (1, 1));
    let last = queue.job(last).await.unwrap().unwrap();
    assert_eq!((last.state, last.error_code.as_deref()), (JobState::Failed, Some("lease_expired")));
    assert_eq!(queue.job(cancelled).await.unwrap().unwrap().state, JobState::Cancelled);
    assert_eq!(
        trail(&queue, last.id).await,
        vec![
            step(None, "queued", "enqueued"),
            step(Some("queued"), "running", "claimed"),
            step(Some("running"), "failed", "lease_expired"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_enqueue_returns_the_same_job() {
    let (_db, queue) = setup(QueueConfig::default()).await;
    let a = tenant(&queue, "a").await;
    let b = tenant(&queue, "b").await;
    let keyed = NewJob { idempotency_key: Some("scan-42".into()), ..job(a, "in/42") };

    let first = queue.enqueue(keyed.clone()).await.unwrap();
    let again = queue.enqueue(keyed.clone()).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(first.job, again.job);

    // The same key with other parameters is a mistake, not a retry.
    let conflict = queue.enqueue(NewJob { input_key: "in/other".into(), ..keyed.clone() }).await.unwrap_err();
    assert!(matches!(conflict, Error::IdempotencyConflict { existing, .. } if existing == first.job.id));
    // Keys are per tenant.
    let other_tenant = queue.enqueue(NewJob { tenant_id: b, ..keyed.clone() }).await.unwrap();
    assert!(other_tenant.created && other_tenant.job.id != first.job.id);

    // Racing submissions of a new key: one job.
    let racing = NewJob { idempotency_key: Some("scan-43".into()), ..job(a, "in/43") };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (queue, racing) = (queue.clone(), racing.clone());
        tasks.push(tokio::spawn(async move { queue.enqueue(racing).await.unwrap() }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| r.created).count(), 1);
    assert_eq!(results.iter().map(|r| r.job.id).collect::<HashSet<_>>().len(), 1);

    // A batch repeating a key holds one job for it, in the caller's order.
    let batch = vec![keyed.clone(), job(a, "in/fresh"), keyed];
    let enqueued = queue.enqueue_many(&batch).await.unwrap();
    assert_eq!(enqueued.iter().map(|e| e.created).collect::<Vec<_>>(), [false, true, false]);
    assert_eq!((enqueued[0].job.id, enqueued[2].job.id), (first.job.id, first.job.id));
    assert_eq!(enqueued[1].job.input_key, "in/fresh");

    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(queue.pool()).await.unwrap();
    assert_eq!(jobs, 4);
    assert_eq!(trail(&queue, first.job.id).await, vec![step(None, "queued", "enqueued")]);
}

#[tokio::test]
async fn a_batch_claim_shares_the_workers_between_tenants() {
    let (_db, queue) = setup(QueueConfig::default()).await;
    let big = tenant(&queue, "big").await;
    let small = tenant(&queue, "small").await;
    enqueue_n(&queue, big, 1000, "big").await;
    enqueue_n(&queue, small, 10, "small").await;
    let worker = WorkerId::unique("w");
    let count =
        |claimed: &[blindfold_queue::Claimed], t: TenantId| claimed.iter().filter(|c| c.job.tenant_id == t).count();

    // Nothing running: half each. 4 + 4 running: half each again. Then the small tenant's last
    // two, even though the big tenant's backlog is older.
    let first = queue.claim(&worker, 8).await.unwrap();
    assert_eq!((count(&first, big), count(&first, small)), (4, 4));
    let second = queue.claim(&worker, 8).await.unwrap();
    assert_eq!((count(&second, big), count(&second, small)), (4, 4));
    let third = queue.claim(&worker, 8).await.unwrap();
    assert_eq!((count(&third, big), count(&third, small)), (6, 2));

    // Within a tenant: priority, then age.
    let urgent = queue.enqueue(NewJob { priority: 5, ..job(big, "big/urgent") }).await.unwrap().job.id;
    let fourth = queue.claim(&worker, 1).await.unwrap();
    assert_eq!(fourth[0].job.id, urgent);
    let mut big_inputs: Vec<usize> = [first, second, third]
        .iter()
        .flatten()
        .filter(|c| c.job.tenant_id == big)
        .map(|c| c.job.input_key.trim_start_matches("big/").parse().unwrap())
        .collect();
    big_inputs.sort_unstable();
    assert_eq!(big_inputs, (0..14).collect::<Vec<_>>(), "the big tenant's oldest jobs go first");

    // Running now: big 15, small 10. New small jobs go before the big tenant's backlog.
    enqueue_n(&queue, small, 3, "small-late").await;
    let fifth = queue.claim(&worker, 3).await.unwrap();
    assert_eq!((count(&fifth, big), count(&fifth, small)), (0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_tenant_starts_long_before_a_large_backlog_drains() {
    let (_db, queue) = setup(QueueConfig::default()).await;
    let big = tenant(&queue, "big").await;
    let small = tenant(&queue, "small").await;
    enqueue_n(&queue, big, 1000, "big").await;
    let small_jobs: HashSet<JobId> = enqueue_n(&queue, small, 10, "small").await.into_iter().collect();

    // Four workers, one short job at a time, until the small tenant is done.
    let mut tasks = Vec::new();
    for w in 0..4 {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let worker = WorkerId::unique(&format!("w{w}"));
            for _ in 0..300 {
                let Some(c) = queue.claim(&worker, 1).await.unwrap().pop() else { break };
                tokio::time::sleep(Duration::from_millis(1)).await;
                queue.complete(&c.lease, "out").await.unwrap();
                let small_left: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM jobs j JOIN tenants t ON t.id = j.tenant_id \
                     WHERE t.name = 'small' AND j.state <> 'succeeded'",
                )
                .fetch_one(queue.pool())
                .await
                .unwrap();
                if small_left == 0 {
                    break;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // The order in which jobs started, from the audit trail.
    let started: Vec<JobId> = sqlx::query_scalar("SELECT job_id FROM job_events WHERE reason = 'claimed' ORDER BY id")
        .fetch_all(queue.pool())
        .await
        .unwrap();
    let last_small = started.iter().rposition(|id| small_jobs.contains(id)).expect("small jobs started");
    assert_eq!(started.iter().filter(|id| small_jobs.contains(id)).count(), 10);
    assert!(last_small < 100, "the small tenant's last job started only as job {last_small} of the backlog");
}

#[tokio::test]
async fn cancel_queued_and_running_jobs() {
    let (_db, queue) = setup(QueueConfig::default()).await;
    let t = tenant(&queue, "hospital").await;
    let other = tenant(&queue, "other").await;
    let queued = queue.enqueue(NewJob { priority: -1, ..job(t, "in/queued") }).await.unwrap().job.id;
    let running = queue.enqueue(job(t, "in/running")).await.unwrap().job.id;
    let completing = queue.enqueue(job(t, "in/completing")).await.unwrap().job.id;
    let worker = WorkerId::unique("w");
    let claimed = queue.claim(&worker, 2).await.unwrap();
    let lease = |id: JobId| claimed.iter().find(|c| c.job.id == id).unwrap().lease.clone();

    // Queued: cancelled at once, never claimed.
    assert!(matches!(queue.cancel(other, queued).await, Err(Error::JobNotFound(_))));
    assert_eq!(queue.cancel(t, queued).await.unwrap(), CancelOutcome::Cancelled);
    let job_row = queue.job(queued).await.unwrap().unwrap();
    assert!(job_row.state == JobState::Cancelled && job_row.finished_at.is_some());
    assert!(queue.claim(&worker, 5).await.unwrap().is_empty());
    assert_eq!(queue.cancel(t, queued).await.unwrap(), CancelOutcome::AlreadyFinal(JobState::Cancelled));

    // Running: marked; the worker learns at its next heartbeat, and the job is cancelled.
    assert_eq!(queue.cancel(t, running).await.unwrap(), CancelOutcome::Requested);
    assert_eq!(queue.cancel(t, running).await.unwrap(), CancelOutcome::Requested);
    assert_eq!(queue.job(running).await.unwrap().unwrap().state, JobState::Running);
    let progress = Progress { fraction: 0.5, stage: None };
    assert_eq!(queue.heartbeat(&lease(running), &progress).await.unwrap(), Heartbeat::Cancelled);
    assert_eq!(queue.job(running).await.unwrap().unwrap().state, JobState::Cancelled);
    assert_eq!(queue.heartbeat(&lease(running), &progress).await.unwrap(), Heartbeat::Lost);
    assert!(matches!(
        queue.complete(&lease(running), "out").await,
        Err(Error::LeaseLost { state: JobState::Cancelled, .. })
    ));

    // A worker finishing before its next heartbeat: the cancel still wins.
    assert_eq!(queue.cancel(t, completing).await.unwrap(), CancelOutcome::Requested);
    assert_eq!(queue.complete(&lease(completing), "out").await.unwrap(), Completion::Cancelled);
    let job_row = queue.job(completing).await.unwrap().unwrap();
    assert_eq!((job_row.state, job_row.result_key), (JobState::Cancelled, None));

    assert_eq!(
        trail(&queue, queued).await,
        vec![step(None, "queued", "enqueued"), step(Some("queued"), "cancelled", "cancelled")]
    );
    assert_eq!(
        trail(&queue, running).await,
        vec![
            step(None, "queued", "enqueued"),
            step(Some("queued"), "running", "claimed"),
            step(Some("running"), "running", "cancel_requested"),
            step(Some("running"), "cancelled", "cancel_acknowledged"),
        ]
    );
}

#[tokio::test]
async fn transient_failures_back_off_exponentially_then_fail_with_the_last_error() {
    let retry = RetryPolicy { base: Duration::from_secs(10), max: Duration::from_secs(3600) };
    let (_db, queue) = setup(QueueConfig { retry, ..QueueConfig::default() }).await;
    let t = tenant(&queue, "hospital").await;
    let id = queue.enqueue(NewJob { max_attempts: Some(3), ..job(t, "in/1") }).await.unwrap().job.id;
    let worker = WorkerId::unique("w");

    for attempt in 1..=3 {
        let claimed = queue.claim(&worker, 1).await.unwrap().pop().expect("the job is due");
        assert_eq!(claimed.lease.attempt, attempt);
        let before = db_now(&queue).await;
        let failure = Failure::transient(format!("timeout_{attempt}"), format!("storage timed out ({attempt})"));
        let outcome = queue.fail(&claimed.lease, &failure).await.unwrap();
        let after = db_now(&queue).await;
        if attempt == 3 {
            assert_eq!(outcome, FailOutcome::Failed);
            break;
        }
        let FailOutcome::Retrying { run_at } = outcome else { panic!("{outcome:?}") };
        // Backoff: half to all of 10 s · 2^(attempt − 1).
        let ceiling = chrono::Duration::seconds(10 << (attempt - 1));
        assert!(run_at >= before + ceiling / 2 && run_at <= after + ceiling, "attempt {attempt}: {run_at}");
        let job_row = queue.job(id).await.unwrap().unwrap();
        assert_eq!((job_row.state, job_row.error_code.as_deref()), (JobState::Queued, Some(failure.code.as_str())));
        // Not due yet.
        assert!(queue.claim(&worker, 1).await.unwrap().is_empty());
        // Let the time pass.
        sqlx::query("UPDATE jobs SET run_at = now() WHERE id = $1").bind(id).execute(queue.pool()).await.unwrap();
    }
    let failed = queue.job(id).await.unwrap().unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.attempt, 3);
    assert_eq!(failed.error_code.as_deref(), Some("timeout_3"));
    assert_eq!(failed.error_message.as_deref(), Some("storage timed out (3)"));
    assert!(failed.finished_at.is_some() && failed.lease_expires_at.is_none());
    assert!(queue.claim(&worker, 1).await.unwrap().is_empty());
    let attempts: Vec<i32> = queue.events(id).await.unwrap().iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [0, 1, 1, 2, 2, 3, 3]);
    assert_eq!(
        trail(&queue, id).await,
        vec![
            step(None, "queued", "enqueued"),
            step(Some("queued"), "running", "claimed"),
            step(Some("running"), "queued", "retry"),
            step(Some("queued"), "running", "claimed"),
            step(Some("running"), "queued", "retry"),
            step(Some("queued"), "running", "claimed"),
            step(Some("running"), "failed", "attempts_exhausted"),
        ]
    );
}

#[tokio::test]
async fn a_permanent_failure_is_final_and_release_spends_no_attempt() {
    let (_db, queue) = setup(QueueConfig::default()).await;
    let t = tenant(&queue, "hospital").await;
    let id = queue.enqueue(job(t, "in/1")).await.unwrap().job.id;
    let worker = WorkerId::unique("w");

    let first = queue.claim(&worker, 1).await.unwrap().pop().unwrap();
    assert_eq!(queue.release(&first.lease).await.unwrap(), JobState::Queued);
    let released = queue.job(id).await.unwrap().unwrap();
    assert_eq!((released.state, released.attempt), (JobState::Queued, 0));

    let second = queue.claim(&WorkerId::unique("w2"), 1).await.unwrap().pop().unwrap();
    assert_eq!(second.lease.attempt, 1);
    let outcome =
        queue.fail(&second.lease, &Failure::permanent("bad_input", "batch has 3 images, header says 4")).await;
    assert_eq!(outcome.unwrap(), FailOutcome::Failed);
    let failed = queue.job(id).await.unwrap().unwrap();
    assert_eq!((failed.state, failed.attempt), (JobState::Failed, 1));
    assert_eq!(failed.error_message.as_deref(), Some("batch has 3 images, header says 4"));
    assert_eq!(
        trail(&queue, id).await,
        vec![
            step(None, "queued", "enqueued"),
            step(Some("queued"), "running", "claimed"),
            step(Some("running"), "queued", "released"),
            step(Some("queued"), "running", "claimed"),
            step(Some("running"), "failed", "failed_permanent"),
        ]
    );
}

#[tokio::test]
async fn the_database_refuses_impossible_rows_and_edits_to_the_trail() {
    let (_db, queue) = setup(QueueConfig::default()).await;
    let t = tenant(&queue, "hospital").await;
    let id = queue.enqueue(job(t, "in/1")).await.unwrap().job.id;
    for bad in [
        "UPDATE jobs SET state = 'succeeded', result_key = 'x' WHERE id = $1", // no finished_at
        "UPDATE jobs SET finished_at = now() WHERE id = $1",                   // queued yet finished
        "UPDATE jobs SET state = 'running' WHERE id = $1",                     // no lease
        "UPDATE jobs SET state = 'failed', finished_at = now() WHERE id = $1", // no error
        "UPDATE jobs SET cancel_requested = true WHERE id = $1",               // not running
        "UPDATE jobs SET progress = 1.5 WHERE id = $1",
    ] {
        let refused = sqlx::query(bad).bind(id).execute(queue.pool()).await;
        assert!(refused.is_err(), "{bad} was accepted");
    }
    let edit =
        sqlx::query("UPDATE job_events SET reason = 'forged' WHERE job_id = $1").bind(id).execute(queue.pool()).await;
    assert!(edit.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test]
async fn idle_workers_are_woken_by_enqueue() {
    let db = TestDatabase::new().await.expect("test database");
    let queue = Queue::new(db.pool().clone(), QueueConfig::default());
    let t = tenant(&queue, "hospital").await;
    let mut wake = WakeUp::listen(db.url(), Duration::from_secs(120)).await.unwrap();
    let waiting = tokio::spawn(async move { wake.wait().await });
    // Give the waiter a moment to start waiting; a notification sent earlier is buffered anyway.
    tokio::time::sleep(Duration::from_millis(50)).await;
    queue.enqueue(job(t, "in/1")).await.unwrap();
    assert_eq!(waiting.await.unwrap(), Wake::Notified);

    let mut polling = WakeUp::polling(Duration::from_millis(10));
    assert_eq!(polling.wait().await, Wake::Poll);
}

#[tokio::test]
async fn retention_deletes_old_finished_jobs_with_their_trails() {
    let (_db, queue) = setup(QueueConfig::default()).await;
    let t = tenant(&queue, "hospital").await;
    enqueue_n(&queue, t, 7, "in").await;
    let worker = WorkerId::unique("w");
    let claimed = queue.claim(&worker, 5).await.unwrap();
    let done: Vec<_> = claimed.iter().map(|c| (c.lease.clone(), "out".to_owned())).collect();
    queue.complete_many(&done).await.unwrap();

    let keep_all = RetentionPolicy { finished_jobs: Duration::from_secs(3600), batch: 2 };
    assert!(queue.expired_finished(&keep_all).await.unwrap().is_empty());
    let keep_none = RetentionPolicy { finished_jobs: Duration::ZERO, batch: 2 };
    let mut purged = 0;
    loop {
        let expired = queue.expired_finished(&keep_none).await.unwrap();
        assert!(expired.len() <= 2, "one batch at a time");
        if expired.is_empty() {
            break;
        }
        assert!(expired.iter().all(|job| job.tenant_id == t && job.result_key.as_deref() == Some("out")));
        let ids: Vec<_> = expired.iter().map(|job| job.id).collect();
        purged += queue.purge(&ids).await.unwrap();
        // A second purge of the same jobs (a concurrent housekeeper) deletes nothing more.
        assert_eq!(queue.purge(&ids).await.unwrap(), 0);
    }
    assert_eq!(purged, 5);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT state FROM jobs ORDER BY seq").fetch_all(queue.pool()).await.unwrap();
    assert_eq!(left, ["queued", "queued"]);
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events e WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.job_id)",
    )
    .fetch_one(queue.pool())
    .await
    .unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events").fetch_one(queue.pool()).await.unwrap();
    assert_eq!((orphans, events), (0, 2));
}

#[tokio::test]
async fn tenants_tokens_and_key_sets() {
    let db = TestDatabase::new().await.expect("test database");
    let pool = db.pool();
    let a = tenants::create_tenant(pool, "st-mary").await.unwrap();
    let b = tenants::create_tenant(pool, "royal-free").await.unwrap();
    assert!(tenants::create_tenant(pool, "st-mary").await.is_err(), "names are unique");
    assert_eq!(tenants::tenant_by_name(pool, "st-mary").await.unwrap(), Some(a.clone()));

    let token = tenants::issue_token(pool, a.id, "uploader").await.unwrap();
    assert!(token.secret.starts_with(tenants::TOKEN_PREFIX) && token.secret.len() == 4 + 64);
    assert!(!format!("{token:?}").contains(&token.secret));
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_sha256 FROM api_tokens").fetch_one(pool).await.unwrap();
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&token.secret[4..]));
    assert_eq!(tenants::tenant_for_token(pool, &token.secret).await.unwrap(), Some(a.id));
    assert_eq!(tenants::tenant_for_token(pool, "bft_0000").await.unwrap(), None);
    assert!(tenants::revoke_token(pool, token.id).await.unwrap());
    assert!(!tenants::revoke_token(pool, token.id).await.unwrap());
    assert_eq!(tenants::tenant_for_token(pool, &token.secret).await.unwrap(), None);

    let keys = tenants::insert_key_set(pool, a.id, "ckks-n8192-l5-s40", "keys/a/1", 12_345).await.unwrap();
    assert_eq!(tenants::key_set(pool, a.id, keys.id).await.unwrap(), Some(keys.clone()));
    assert_eq!(tenants::key_set(pool, b.id, keys.id).await.unwrap(), None, "another tenant's keys");
    assert!(!tenants::delete_key_set(pool, b.id, keys.id).await.unwrap());
    assert!(tenants::delete_key_set(pool, a.id, keys.id).await.unwrap());
    assert_eq!(tenants::key_set(pool, a.id, keys.id).await.unwrap(), None);
}
