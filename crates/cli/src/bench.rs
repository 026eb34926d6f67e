//! `blindfold bench …`: benchmarks that print what they measured and how.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use blindfold_queue::{NewJob, Queue, QueueConfig, TenantId, WorkerId, tenants};
use clap::{Args, Subcommand};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// The job queue: enqueue no-op jobs, then claim and complete them with concurrent workers,
    /// against a fresh database on the test server (DATABASE_URL's, or a throwaway cluster).
    Queue(QueueBench),
    /// Encrypted inference: one batch through a model, timed and checked against the
    /// plaintext model.
    Infer(crate::bench_infer::InferBench),
    /// The whole service path on this machine (upload, queue, worker processes, download) next
    /// to the pure computation of the same batch: end-to-end images per second and the
    /// service's overhead.
    Fleet(crate::bench_fleet::FleetBench),
}

/// Options of `bench queue`.
#[derive(Debug, Args)]
pub struct QueueBench {
    /// Jobs to enqueue and run.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Concurrent workers (each claims, then completes, in a loop).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Tenants the jobs are spread over (exercises the fairness ranking).
    #[arg(long, default_value_t = 4)]
    tenants: usize,
    /// Jobs per claim; each claimed batch is completed in one statement.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

/// What `bench queue` measured.
#[derive(Debug, serde::Serialize)]
struct QueueReport {
    jobs: usize,
    workers: usize,
    enqueue_per_second: f64,
    claim_complete_per_second: f64,
    p99_claim_ms: f64,
    tenants: usize,
    claim_batch: usize,
}

/// Runs a benchmark; with `--json` (`output`), its report as one JSON object.
pub fn run(command: Bench, output: crate::terminal::Output, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    match command {
        Bench::Infer(options) => crate::bench_infer::run(&options, output),
        Bench::Fleet(options) => crate::bench_fleet::run(&options, output, runtime),
        Bench::Queue(options) => {
            let report = runtime.block_on(bench_queue(&options))?;
            if output.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} jobs, {} workers, {} tenants, claims of {}: enqueue {:.0}/s, claim+complete {:.0}/s, \
                     p99 claim {:.2} ms",
                    report.jobs,
                    report.workers,
                    report.tenants,
                    report.claim_batch,
                    report.enqueue_per_second,
                    report.claim_complete_per_second,
                    report.p99_claim_ms
                );
            }
            Ok(())
        }
    }
}

async fn bench_queue(options: &QueueBench) -> anyhow::Result<QueueReport> {
    anyhow::ensure!(
        options.jobs > 0 && options.workers > 0 && options.tenants > 0 && options.batch > 0,
        "all counts must be positive"
    );
    let db = blindfold_testkit::TestDatabase::new().await.context("starting the benchmark database")?;
    let queue = Queue::new(db.pool().clone(), QueueConfig::default());
    let mut tenant_ids = Vec::new();
    for t in 0..options.tenants {
        tenant_ids.push(tenants::create_tenant(queue.pool(), &format!("bench-{t}")).await?.id);
    }

    // Enqueue: every worker submits its share in transactions of 500 jobs.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..options.workers {
        let queue = queue.clone();
        let share: Vec<NewJob> = (w..options.jobs)
            .step_by(options.workers)
            .map(|i| no_op_job(tenant_ids[i % tenant_ids.len()], i))
            .collect();
        tasks.push(tokio::spawn(async move {
            for chunk in share.chunks(500) {
                queue.enqueue_many(chunk).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let enqueue_seconds = started.elapsed().as_secs_f64();

    // Claim + complete until every job is done.
    let completed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..options.workers {
        let (queue, completed) = (queue.clone(), completed.clone());
        let (jobs, batch) = (options.jobs, options.batch);
        tasks.push(tokio::spawn(async move {
            let worker = WorkerId::unique(&format!("bench-{w}"));
            let mut claim_latencies = Vec::new();
            while completed.load(Ordering::Relaxed) < jobs {
                let claim_started = Instant::now();
                let claimed = queue.claim(&worker, batch).await?;
                claim_latencies.push(claim_started.elapsed());
                if claimed.is_empty() {
                    // The rest is held by other workers (or skipped under contention).
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let done: Vec<_> = claimed.into_iter().map(|c| (c.lease, format!("out/{}", c.job.id))).collect();
                let outcomes = queue.complete_many(&done).await?;
                let succeeded = outcomes.iter().filter(|o| **o == blindfold_queue::Completion::Succeeded).count();
                anyhow::ensure!(
                    succeeded == done.len(),
                    "{} of {} completions refused",
                    done.len() - succeeded,
                    done.len()
                );
                completed.fetch_add(succeeded, Ordering::Relaxed);
            }
            anyhow::Ok(claim_latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let run_seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let p99 = latencies.get(latencies.len().saturating_mul(99) / 100).or(latencies.last()).copied().unwrap_or_default();

    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state <> 'succeeded'").fetch_one(queue.pool()).await?;
    anyhow::ensure!(left == 0, "{left} jobs did not succeed");
    Ok(QueueReport {
        jobs: options.jobs,
        workers: options.workers,
        enqueue_per_second: options.jobs as f64 / enqueue_seconds,
        claim_complete_per_second: options.jobs as f64 / run_seconds,
        p99_claim_ms: p99.as_secs_f64() * 1000.0,
        tenants: options.tenants,
        claim_batch: options.batch,
    })
}

fn no_op_job(tenant: TenantId, index: usize) -> NewJob {
    NewJob {
        tenant_id: tenant,
        idempotency_key: Some(format!("bench-{index}")),
        model: "no-op".into(),
        model_version: None,
        packing: "throughput".into(),
        key_set_id: None,
        image_count: 1,
        priority: 0,
        input_key: format!("bench/{index}"),
        max_attempts: None,
    }
}
