//! The worker as a fleet of real processes against a real PostgreSQL and the embedded S3
//! endpoint: exactly-once results, crashes, shutdowns, bad input, storage outages, cancels.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use blindfold_queue::{CancelOutcome, JobState};
use common::{Stack, batches, event_reasons, expected_result};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_run_thirty_jobs_exactly_once_with_the_reference_results() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start().await;
    let inputs = batches(30, 1);
    let _workers: Vec<_> = (0..3).map(|i| stack.worker(&format!("fleet-{i}"), &[])).collect();
    let mut ids = Vec::new();
    for batch in &inputs {
        ids.push(stack.submit(batch, 1).await);
    }
    let expected: Vec<Vec<u8>> = inputs.iter().zip(&ids).map(|(batch, id)| expected_result(batch, *id)).collect();
    for (id, expected) in ids.iter().zip(&expected) {
        let job = stack.wait_final(*id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", stack.log_tail());
        assert_eq!(job.attempt, 1, "an undisturbed job runs once: {job:?}");
        let reasons = event_reasons(&stack.queue, *id).await;
        assert_eq!(reasons.iter().filter(|r| *r == "succeeded").count(), 1, "{reasons:?}");
        assert_eq!(reasons.iter().filter(|r| *r == "claimed").count(), 1, "{reasons:?}");
        assert_eq!(&stack.result_bytes(&job).await, expected, "job {id}: result differs from the reference");
        assert_eq!(stack.result_objects(*id).await.len(), 1);
    }
    // All three workers took part (each claims at most one job at a time).
    let workers: std::collections::HashSet<String> = {
        let mut names = std::collections::HashSet::new();
        for id in &ids {
            let job = stack.job(*id).await;
            names.insert(job.worker_id.unwrap().0.split('/').next().unwrap().to_owned());
        }
        names
    };
    assert!(workers.len() >= 2, "jobs were spread over {workers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_is_killed_is_finished_by_another_once() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start().await;
    let input = batches(1, 1).remove(0);
    let gate = stack.gate("doomed");
    let mut first = stack.worker("doomed", &[gate.env()]);
    let id = stack.submit(&input, 1).await;
    let expected = expected_result(&input, id);
    let running = stack.wait_held(id).await;
    assert!(running.worker_id.as_ref().unwrap().0.starts_with("doomed/"));
    first.kill();
    let _second = stack.worker("survivor", &[]);
    let job = stack.wait_final(id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", stack.log_tail());
    assert!(job.worker_id.as_ref().unwrap().0.starts_with("survivor/"), "{job:?}");
    assert_eq!(job.attempt, 2, "the killed attempt counts; the survivor's is the second");
    let reasons = event_reasons(&stack.queue, id).await;
    assert_eq!(reasons.iter().filter(|r| *r == "succeeded").count(), 1, "{reasons:?}");
    assert_eq!(stack.result_bytes(&job).await, expected);
    assert_eq!(
        stack.result_objects(id).await,
        vec![job.result_key.clone().unwrap()],
        "the killed attempt uploaded nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_releases_it_without_spending_an_attempt() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start().await;
    let input = batches(1, 1).remove(0);
    // A deadline of zero: the running job is cancelled at once and given back.
    let gate = stack.gate("leaving");
    let mut leaving = stack.worker("leaving", &[("BLINDFOLD_WORKER_SHUTDOWN_SECS", "0"), gate.env()]);
    let id = stack.submit(&input, 1).await;
    let expected = expected_result(&input, id);
    stack.wait_held(id).await;
    let status = leaving.terminate();
    assert!(status.success(), "the worker exits 0 after SIGTERM: {status:?}\n{}", stack.log_tail());
    let released = stack.job(id).await;
    assert_eq!(released.state, JobState::Queued, "{released:?}");
    assert_eq!(released.attempt, 0, "releasing gives the attempt back");
    assert!(event_reasons(&stack.queue, id).await.contains(&"released".to_owned()));
    assert!(stack.result_objects(id).await.is_empty(), "a released attempt uploads nothing");

    let _staying = stack.worker("staying", &[]);
    let job = stack.wait_final(id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", stack.log_tail());
    assert_eq!(job.attempt, 1);
    assert_eq!(stack.result_bytes(&job).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_input_fails_precisely_and_the_worker_carries_on() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start().await;
    let mut inputs = batches(2, 1);
    let good = inputs.pop().unwrap();
    let mut bad = inputs.pop().unwrap().to_vec();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x40;
    let _worker = stack.worker("careful", &[]);
    let bad_id = stack.submit(&bytes::Bytes::from(bad), 1).await;
    let good_id = stack.submit(&good, 1).await;

    let failed = stack.wait_final(bad_id).await;
    assert_eq!(failed.state, JobState::Failed, "{failed:?}");
    assert_eq!(failed.attempt, 1, "bad input is not retried");
    assert_eq!(failed.error_code.as_deref(), Some("bad_input"));
    let message = failed.error_message.unwrap();
    assert!(message.contains("checksum") || message.contains("CRC"), "precise message: {message}");

    let done = stack.wait_final(good_id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}\n{}", stack.log_tail());
    assert_eq!(stack.result_bytes(&done).await, expected_result(&good, good_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_rides_out_a_storage_outage() {
    let _serial = common::SERIAL.lock().await;
    let mut stack = Stack::start().await;
    let input = batches(1, 1).remove(0);
    let id = stack.submit(&input, 1).await;
    stack.stop_storage().await;
    let _worker = stack.worker("patient", &[]);
    // The worker claims the job and fails to fetch the keys while storage is down.
    stack.wait_for(id, Duration::from_secs(60), |job| job.state == JobState::Running).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.restart_storage().await;
    let job = stack.wait_final(id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", stack.log_tail());
    assert_eq!(job.attempt, 1, "retried in place, not through the queue");
    assert_eq!(stack.result_bytes(&job).await, expected_result(&input, id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_stream_breaks_is_streamed_again_in_place() {
    let _serial = common::SERIAL.lock().await;
    let mut stack = Stack::start().await;
    let mut inputs = batches(2, 1);
    let second = inputs.pop().unwrap();
    let first = inputs.pop().unwrap();
    let worker = stack.worker("streaming", &[]);
    // The first job caches the key set, so the outage hits the input stream itself.
    let warm = stack.submit(&first, 1).await;
    assert_eq!(stack.wait_final(warm).await.state, JobState::Succeeded);
    let (id, key) = stack.upload(&second).await;
    stack.stop_storage().await;
    stack.enqueue(id, &key, 1).await;
    stack.wait_for(id, Duration::from_secs(60), |job| job.state == JobState::Running).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.restart_storage().await;
    let job = stack.wait_final(id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", stack.log_tail());
    assert_eq!(job.attempt, 1, "retried in place, not through the queue");
    assert_eq!(stack.result_bytes(&job).await, expected_result(&second, id));
    let retried =
        worker.log_lines().iter().any(|line| line["fields"]["message"] == "streaming the input batch failed; retrying");
    assert!(retried, "the outage hit the input stream:\n{}", stack.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_running_stops_within_a_heartbeat() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start().await;
    let input = batches(1, 1).remove(0);
    // A 3 s lease: heartbeats every second.
    let gate = stack.gate("obedient");
    let worker = stack.worker("obedient", &[("BLINDFOLD_WORKER_LEASE_SECS", "3"), gate.env()]);
    let metrics = format!("http://{}/metrics", worker.metrics_addr());
    let id = stack.submit(&input, 1).await;
    stack.wait_held(id).await;
    let asked = Instant::now();
    assert_eq!(stack.queue.cancel(stack.tenant, id).await.unwrap(), CancelOutcome::Requested);
    let job = stack.wait_final(id).await;
    assert_eq!(job.state, JobState::Cancelled);
    // The worker's own account: the attempt ended as cancelled and nothing is running.
    let client = reqwest::Client::new();
    loop {
        let page = client.get(&metrics).send().await.unwrap().text().await.unwrap();
        if page.contains("blindfold_worker_jobs_total{outcome=\"cancelled\"} 1") {
            assert!(page.contains("blindfold_worker_running_jobs 0"), "{page}");
            break;
        }
        assert!(asked.elapsed() < Duration::from_secs(60), "the worker never stopped:\n{page}\n{}", stack.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped_after = asked.elapsed();
    eprintln!("cancel observed and computation stopped {stopped_after:?} after the request");
    assert!(stack.result_objects(id).await.is_empty(), "a cancelled job uploads nothing");
    let health = client.get(format!("http://{}/healthz", worker.metrics_addr())).send().await.unwrap();
    assert!(health.status().is_success());
}

/// The lease the test workers run with (`BLINDFOLD_WORKER_LEASE_SECS` in `Stack::worker`).
const LEASE: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_on_the_last_attempt_fails_the_job_and_a_resubmission_succeeds() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start().await;
    let input = batches(1, 1).remove(0);
    let gate = stack.gate("last");
    let mut doomed = stack.worker("last", &[gate.env()]);
    let (id, key) = stack.upload(&input).await;
    stack.enqueue_attempts(id, &key, 1, Some(1)).await;
    stack.wait_held(id).await;
    doomed.kill();
    let killed = Instant::now();
    // No claim takes a job on its last attempt; only housekeeping, which every worker runs,
    // settles it. This worker has nothing else to do.
    let interval = Duration::from_secs(1);
    let keeper = stack.worker("keeper", &[("BLINDFOLD_HOUSEKEEPING_SECS", "1")]);
    // The guarantee counts from the later of the lease's end and the moment some process keeps
    // house; the keeper's own start-up (however long it takes here) is not part of it.
    let keeping = loop {
        let started = keeper.log_lines().iter().any(|line| line["fields"]["message"] == "housekeeping started");
        if started {
            break Instant::now();
        }
        assert!(killed.elapsed() < Duration::from_secs(120), "the keeper never started\n{}", stack.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failed = stack.wait_final(id).await;
    let settled = Instant::now();
    assert_eq!(failed.state, JobState::Failed, "{failed:?}\n{}", stack.log_tail());
    assert_eq!(failed.error_code.as_deref(), Some("lease_expired"), "{failed:?}");
    assert_eq!(failed.attempt, 1);
    let due = (killed + LEASE).max(keeping);
    let late = settled.saturating_duration_since(due);
    eprintln!(
        "settled {:?} after the kill, {late:?} after it was due (lease {LEASE:?}, interval {interval:?})",
        settled - killed
    );
    // One jittered interval, plus the pass itself and this test's 50 ms polling.
    assert!(late <= interval.mul_f64(1.2) + Duration::from_secs(2), "settled {late:?} after it was due");
    assert!(event_reasons(&stack.queue, id).await.contains(&"lease_expired".to_owned()));

    // The hospital submits the same batch again, and it runs.
    let (again, key) = stack.upload(&input).await;
    stack.enqueue_attempts(again, &key, 1, Some(1)).await;
    let job = stack.wait_final(again).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", stack.log_tail());
    assert_eq!(stack.result_bytes(&job).await, expected_result(&input, again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_to_a_job_whose_worker_died_ends_it_cancelled() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start().await;
    let input = batches(1, 1).remove(0);
    let gate = stack.gate("vanishing");
    let mut doomed = stack.worker("vanishing", &[gate.env()]);
    let id = stack.submit(&input, 1).await;
    stack.wait_held(id).await;
    // Killed first, so no heartbeat of the dead worker can acknowledge the cancel: only
    // housekeeping can.
    doomed.kill();
    assert_eq!(stack.queue.cancel(stack.tenant, id).await.unwrap(), CancelOutcome::Requested);
    let _keeper = stack.worker("keeper", &[("BLINDFOLD_HOUSEKEEPING_SECS", "1")]);
    let job = stack.wait_final(id).await;
    assert_eq!(job.state, JobState::Cancelled, "{job:?}\n{}", stack.log_tail());
    assert_eq!(job.attempt, 1, "a cancelled job is not run again");
    assert!(stack.result_objects(id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_mid_run_loses_no_job_and_runs_none_twice() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start_on_own_cluster().await;
    let inputs = batches(6, 1);
    // Two workers, each holding the job it claimed at the gate: the restart lands while both
    // run, four more wait in the queue.
    let gate = stack.gate("restart");
    let _workers: Vec<_> = (0..2).map(|i| stack.worker(&format!("steady-{i}"), &[gate.env()])).collect();
    let mut ids = Vec::new();
    for batch in &inputs {
        ids.push(stack.submit(batch, 1).await);
    }
    let mut held = 0;
    let started = Instant::now();
    while held < 2 {
        held = 0;
        for id in &ids {
            let job = stack.job(*id).await;
            held += usize::from(job.state == JobState::Running && job.stage.as_deref() == Some("held"));
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the workers never held two jobs\n{}", stack.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.restart_database().await;
    gate.open();
    let expected: Vec<Vec<u8>> = inputs.iter().zip(&ids).map(|(batch, id)| expected_result(batch, *id)).collect();
    for (id, expected) in ids.iter().zip(&expected) {
        let job = stack.wait_final(*id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", stack.log_tail());
        let reasons = event_reasons(&stack.queue, *id).await;
        assert_eq!(reasons.iter().filter(|r| *r == "succeeded").count(), 1, "{reasons:?}");
        assert_eq!(reasons.iter().filter(|r| *r == "claimed").count(), 1, "ran once: {reasons:?}");
        assert_eq!(&stack.result_bytes(&job).await, expected, "job {id}");
        assert_eq!(stack.result_objects(*id).await.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_second_storage_outage_fails_no_job() {
    let _serial = common::SERIAL.lock().await;
    let mut stack = Stack::start().await;
    let inputs = batches(3, 1);
    let mut ids = Vec::new();
    for batch in &inputs {
        ids.push(stack.submit(batch, 1).await);
    }
    stack.stop_storage().await;
    let _worker = stack.worker("enduring", &[]);
    stack.wait_for(ids[0], Duration::from_secs(60), |job| job.state == JobState::Running).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    stack.restart_storage().await;
    for (id, batch) in ids.iter().zip(&inputs) {
        let job = stack.wait_final(*id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", stack.log_tail());
        assert_eq!(stack.result_bytes(&job).await, expected_result(batch, *id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_bundle_replaced_after_verification_is_refused_unread() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start().await;
    let object = stack.key_set_object();
    let verified = stack.store.get_bytes(&object).await.unwrap().to_vec();
    let _worker = stack.worker("wary", &[]);
    // The tenant PUTs again through its still-valid URL: the verified bundle plus 8 MiB, then
    // one of the very same size (only the ETag tells it apart).
    let mut bigger = verified.clone();
    bigger.extend(std::iter::repeat_n(0u8, 8 << 20));
    let mut same_size = verified.clone();
    let middle = same_size.len() / 2;
    same_size[middle] ^= 0x55;
    for swapped in [bigger, same_size] {
        stack.store.put_bytes(&object, swapped.into()).await.unwrap();
        let id = stack.submit(&batches(1, 1).remove(0), 1).await;
        let job = stack.wait_final(id).await;
        assert_eq!(job.state, JobState::Failed, "{job:?}\n{}", stack.log_tail());
        assert_eq!((job.attempt, job.error_code.as_deref()), (1, Some("object_changed")), "{job:?}");
        let message = job.error_message.unwrap_or_default();
        assert!(message.contains("replaced after it was verified"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_batch_replaced_after_verification_is_refused() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start().await;
    let mut inputs = batches(2, 1);
    let (id, key) = stack.upload(&inputs[0]).await;
    stack.enqueue(id, &key, 1).await;
    // Another batch of the very same size put over the verified one before a worker reads it.
    let other = inputs.remove(1);
    assert_eq!(other.len(), inputs[0].len());
    stack.store.put_bytes(&key, other).await.unwrap();
    let _worker = stack.worker("wary", &[]);
    let job = stack.wait_final(id).await;
    assert_eq!(job.state, JobState::Failed, "{job:?}\n{}", stack.log_tail());
    assert_eq!((job.attempt, job.error_code.as_deref()), (1, Some("object_changed")), "{job:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_the_worker_role_runs_a_job_and_only_the_queue_duties() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start().await;
    // An announced upload long expired: the API's to forget, never the worker's.
    sqlx::query(
        "INSERT INTO pending_uploads (id, tenant_id, kind, model, packing, params_fingerprint, object_key, size_bytes, \
         created_at) VALUES (gen_random_uuid(), $1, 'key_set', 'm', 'latency', 'fp', 'k', 1, now() - interval '30 days')",
    )
    .bind(stack.tenant)
    .execute(stack.db.pool())
    .await
    .unwrap();
    let input = batches(1, 1).remove(0);
    let worker = stack.worker("restricted", &[("BLINDFOLD_HOUSEKEEPING_SECS", "1")]);
    let id = stack.submit(&input, 1).await;
    let job = stack.wait_final(id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", stack.log_tail());
    assert_eq!(stack.result_bytes(&job).await, expected_result(&input, id));
    // Passes ran (the first at start, then every second) and none was refused.
    let lines = worker.log_lines();
    let started = lines.iter().find(|line| line["fields"]["message"] == "housekeeping started").unwrap();
    assert_eq!(started["fields"]["duties"], "queue", "{started}");
    let refused =
        |message: &str| message.starts_with("housekeeping pass failed") || message.starts_with("claiming failed");
    let failed: Vec<_> = lines.iter().filter(|line| line["fields"]["message"].as_str().is_some_and(refused)).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let uploads: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pending_uploads").fetch_one(stack.db.pool()).await.unwrap();
    assert_eq!(uploads, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_to_start_on_a_schema_it_was_not_built_for() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start().await;
    let latest: i64 =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations").fetch_one(stack.db.pool()).await.unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1").bind(latest).execute(stack.db.pool()).await.unwrap();
    let config = blindfold_worker::Config::new(stack.worker_url.clone(), common::store_config(&stack.endpoint()));
    let refused = blindfold_worker::Worker::start(config).await.expect_err("the worker must not start");
    let message = refused.to_string();
    assert!(matches!(refused, blindfold_worker::Error::Schema(_)), "{message}");
    assert!(message.contains("behind") && message.contains("blindfold admin migrate"), "{message}");
}
