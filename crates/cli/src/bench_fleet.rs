//! `blindfold bench fleet`: the whole service path on this machine — upload, queue, worker
//! processes, download — against the pure computation of the same batch, to measure what the
//! service adds on top of the cryptography.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use blindfold_batch::InputBatchReader;
use blindfold_client::{KeySet, PackingChoice};
use blindfold_compiler::Control;
use blindfold_evaluate::{BatchEvaluator, BatchExpect};
use clap::Args;
use secrecy::SecretString;

use crate::service::client::{ApiClient, OnBytes};
use crate::service::flows;
use crate::stack::{LocalStack, StackOptions, Workers};
use crate::terminal::format_mean_bytes;

/// Options of `bench fleet`.
#[derive(Debug, Args)]
pub struct FleetBench {
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Jobs, each one batch of --images images (plus one untimed warm-up job per worker, which
    /// loads the keys and compiles the model).
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Images per job.
    #[arg(long, default_value_t = 4096)]
    images: usize,
    /// Model name.
    #[arg(long, default_value = "mnist-cryptonets")]
    model: String,
    /// Packing.
    #[arg(long, default_value = "throughput", value_parser = ["throughput", "latency"])]
    packing: String,
    /// Jobs each worker runs at once: 2 overlaps one job's transfers with another's compute.
    #[arg(long, default_value_t = 1)]
    worker_jobs: u32,
    /// Threads per worker (default: the cores divided among the workers).
    #[arg(long)]
    threads: Option<usize>,
    /// Dataset directory with `mnist/` and `dermamnist/` (default: ../shared/data).
    #[arg(long)]
    data: Option<PathBuf>,
}

/// What `bench fleet` measured.
#[derive(Debug, serde::Serialize)]
struct FleetReport {
    model: String,
    packing: String,
    workers: usize,
    jobs_per_worker: u32,
    threads_per_worker: usize,
    jobs: usize,
    images_per_job: usize,
    /// One batch evaluated in this process on every core, from its bytes to the result's
    /// bytes: what `bench infer` measures, the floor for the service.
    compute_seconds_per_job: f64,
    compute_images_per_second: f64,
    /// From the first upload to the last result downloaded.
    end_to_end_seconds: f64,
    end_to_end_images_per_second: f64,
    /// From the first submit (batches uploaded) to the last result downloaded: queue, worker
    /// download, compute, worker upload, completion, result download.
    service_seconds: f64,
    service_images_per_second: f64,
    /// Service time over the pure compute of the same jobs, minus one.
    service_overhead: f64,
    /// The hospital's upload of every batch through the presigned transfers.
    upload_seconds: f64,
    bytes_up_per_image: f64,
    bytes_down_per_image: f64,
    /// Mean of the jobs' queued and running times as the API reports them.
    mean_queued_seconds: f64,
    mean_running_seconds: f64,
    /// The workers' own stage timings, mean per timed job (from their logs).
    worker_stages: WorkerStages,
}

/// Mean seconds per timed job of each worker stage.
#[derive(Debug, Default, serde::Serialize)]
struct WorkerStages {
    download: f64,
    compute: f64,
    upload: f64,
    jobs: usize,
}

/// Runs the benchmark.
pub fn run(
    options: &FleetBench,
    output: crate::terminal::Output,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    if options.workers == 0 || options.jobs == 0 || options.images == 0 {
        anyhow::bail!("--workers, --jobs and --images must be at least 1");
    }
    let report = runtime.block_on(fleet(options))?;
    if output.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} / {}: {} jobs × {} images on {} worker(s) × {} threads\n\
             compute (in-process, all cores): {:.2} s per job = {:.0} images/s\n\
             end to end (upload, queue, workers, download): {:.2} s = {:.0} images/s\n\
             service (submit to last download): {:.2} s = {:.0} images/s, overhead {:.1} % of compute\n\
             hospital upload {:.2} s; mean queued {:.2} s, running {:.2} s per job\n\
             bytes per image: {} up, {} down\n\
             worker stages per job: download {:.2} s, compute {:.2} s, upload {:.2} s",
            report.model,
            report.packing,
            report.jobs,
            report.images_per_job,
            report.workers,
            report.threads_per_worker,
            report.compute_seconds_per_job,
            report.compute_images_per_second,
            report.end_to_end_seconds,
            report.end_to_end_images_per_second,
            report.service_seconds,
            report.service_images_per_second,
            100.0 * report.service_overhead,
            report.upload_seconds,
            report.mean_queued_seconds,
            report.mean_running_seconds,
            format_mean_bytes(report.bytes_up_per_image),
            format_mean_bytes(report.bytes_down_per_image),
            report.worker_stages.download,
            report.worker_stages.compute,
            report.worker_stages.upload,
        );
    }
    Ok(())
}

async fn fleet(options: &FleetBench) -> anyhow::Result<FleetReport> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = options.threads.unwrap_or((cores / options.workers).max(1));
    let work = tempfile::Builder::new().prefix("blindfold-bench-fleet-").tempdir()?;
    let quiet: OnBytes = Arc::new(|_| {});

    eprintln!("keygen, {} encrypted batches of {} images …", options.jobs + options.workers, options.images);
    let choice = if options.packing == "latency" { PackingChoice::Latency } else { PackingChoice::Throughput };
    let keys = KeySet::generate(&work.path().join("keys"), &options.model, choice)?;
    let model = keys.compiled_model()?;
    let images = test_images(&model, options.data.as_deref(), options.images)?;
    let mut batches = Vec::new();
    for index in 0..options.jobs + options.workers {
        // Distinct batches (one image rotated per job), so no two jobs share an idempotency key.
        let mut inputs = images.clone();
        let shift = index % inputs.len();
        inputs.rotate_left(shift);
        let intake = blindfold_client::Intake { names: (0..inputs.len()).map(|i| format!("#{i}")).collect(), inputs };
        let path = work.path().join(format!("job{index}.bfib"));
        let written = blindfold_client::encrypt(&keys, &model, &intake, &path, &|_, _| {})?;
        anyhow::ensure!(written.len() == 1, "{} images do not fit one batch of this packing", options.images);
        batches.extend(written);
    }

    eprintln!("pure compute of one batch in this process on {cores} threads …");
    let compute = {
        let evaluator = BatchEvaluator::new(model.clone(), keys.evaluation_keys()?)?;
        let bytes = std::fs::read(&batches[0].path)?;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(cores).build()?;
        let expect = evaluator.model().expect_input(keys.id());
        // Once to warm up (page-in, allocator), then timed.
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            let clock = Instant::now();
            pool.install(|| -> anyhow::Result<()> {
                let input = InputBatchReader::open(&bytes[..], evaluator.keys().context(), &expect)?;
                evaluator.evaluate(input, Vec::new(), &Control::none())?;
                Ok(())
            })?;
            best = best.min(clock.elapsed().as_secs_f64());
        }
        best
    };

    eprintln!("starting the stack with {} worker process(es) …", options.workers);
    let stack = LocalStack::start(StackOptions {
        workers: Workers::Processes(options.workers),
        worker_threads: Some(threads),
        worker_jobs: options.worker_jobs,
        worker_logs: Some(work.path().to_path_buf()),
        tenant: "bench".to_owned(),
        ..Default::default()
    })
    .await?;
    let client =
        ApiClient::new(&stack.endpoints.api_url, Some(SecretString::from(stack.endpoints.token.clone())), false)?;
    flows::register_keys(&client, &keys, quiet.clone()).await?;

    // Warm-up: one job per worker (keys fetched, model compiled, evaluator cached).
    let (warmup, timed) = batches.split_at(options.workers);
    let mut warm = Vec::new();
    for batch in warmup {
        warm.push(flows::submit_batch(&client, &keys, batch, None, quiet.clone()).await?.id);
    }
    for id in warm {
        flows::wait_job(&client, id, Duration::from_millis(20), &mut |_| {}).await?;
    }

    eprintln!("timed run: {} jobs …", options.jobs);
    // The hospital's upload happens on its own machine and network; it is timed on its own,
    // and the service's time runs from the first submit to the last result downloaded.
    let started = Instant::now();
    let mut uploaded = Vec::new();
    for batch in timed {
        uploaded.push(flows::upload_batch(&client, &keys, batch, None, quiet.clone()).await?);
    }
    let upload_seconds = started.elapsed().as_secs_f64();
    let service_started = Instant::now();
    let mut ids = Vec::new();
    for job in uploaded {
        ids.push(flows::submit_uploaded(&client, job).await?.id);
    }
    let (mut queued, mut running, mut bytes_down) = (0.0, 0.0, 0u64);
    for id in &ids {
        let done = flows::wait_job(&client, *id, Duration::from_millis(20), &mut |_| {}).await?;
        queued += done.durations.queued_seconds.unwrap_or(0.0);
        running += done.durations.running_seconds.unwrap_or(0.0);
        let raw = work.path().join(format!("{id}.bfrb"));
        bytes_down += flows::download_result(&client, *id, &raw, quiet.clone()).await?;
    }
    let service_seconds = service_started.elapsed().as_secs_f64();
    let end_to_end = started.elapsed().as_secs_f64();
    stack.stop().await?;
    let worker_stages = worker_stages(work.path(), &ids);

    let jobs = options.jobs as f64;
    let total_images = jobs * options.images as f64;
    Ok(FleetReport {
        model: options.model.clone(),
        packing: options.packing.clone(),
        workers: options.workers,
        jobs_per_worker: options.worker_jobs,
        threads_per_worker: threads,
        jobs: options.jobs,
        images_per_job: options.images,
        compute_seconds_per_job: compute,
        compute_images_per_second: options.images as f64 / compute,
        end_to_end_seconds: end_to_end,
        end_to_end_images_per_second: total_images / end_to_end,
        service_seconds,
        service_images_per_second: total_images / service_seconds,
        service_overhead: service_seconds / (jobs * compute) - 1.0,
        upload_seconds,
        bytes_up_per_image: timed.iter().map(|b| b.bytes).sum::<u64>() as f64 / total_images,
        bytes_down_per_image: bytes_down as f64 / total_images,
        mean_queued_seconds: queued / jobs,
        mean_running_seconds: running / jobs,
        worker_stages,
    })
}

/// Reads the workers' "job succeeded" log lines of the timed jobs.
fn worker_stages(dir: &std::path::Path, ids: &[uuid::Uuid]) -> WorkerStages {
    let mut stages = WorkerStages::default();
    let entries = std::fs::read_dir(dir).map(|e| e.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default();
    for path in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "log")) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
            let fields = &line["fields"];
            let timed = line["span"]["job"].as_str().is_some_and(|job| ids.iter().any(|id| id.to_string() == job));
            if fields["message"] == "job succeeded" && timed {
                stages.download += fields["download_s"].as_f64().unwrap_or(0.0);
                stages.compute += fields["compute_s"].as_f64().unwrap_or(0.0);
                stages.upload += fields["upload_s"].as_f64().unwrap_or(0.0);
                stages.jobs += 1;
            }
        }
    }
    if stages.jobs > 0 {
        let n = stages.jobs as f64;
        stages.download /= n;
        stages.compute /= n;
        stages.upload /= n;
    }
    stages
}

/// `count` test images for the model (the test split, reused cyclically).
fn test_images(
    model: &blindfold_evaluate::CompiledModel,
    data: Option<&std::path::Path>,
    count: usize,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let dir = match data {
        Some(dir) => dir.to_path_buf(),
        None => ["../shared/data", "shared/data", "../../shared/data"]
            .iter()
            .map(PathBuf::from)
            .find(|dir| dir.join("mnist").is_dir())
            .context("no dataset directory found (looked for ../shared/data); pass --data DIR")?,
    };
    let images = crate::model::load_test_split(model.manifest(), &dir)?;
    let inputs = model.manifest().inputs(&images)?;
    anyhow::ensure!(!inputs.is_empty(), "no test images in {}", dir.display());
    Ok(inputs.iter().cycle().take(count).cloned().collect())
}
