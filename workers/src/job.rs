//! One attempt of one job: keys → download → compute → upload → complete, under a heartbeat.

use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use blindfold_batch::{InputBatchReader, KeyBundle, KeyBundleExpect, Packing};
use blindfold_compiler::{CompileOptions, Control};
use blindfold_evaluate::{BatchEvaluator, BatchExpect, CompiledModel};
use blindfold_queue::{Claimed, Completion, FailOutcome, Heartbeat, JobState, Lease, Progress, models, tenants};
use blindfold_store::{
    JobId as StoreJob, ModelName, ObjectKey, ObjectName, Pinned, StoreError, TenantId as StoreTenant,
};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::io::SyncIoBridge;
use tracing::Instrument;

use crate::error::JobError;
use crate::worker::{EvaluatorKey, Shared};

/// Why a job stopped before finishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The tenant cancelled it (the queue has already marked it cancelled).
    Cancelled,
    /// Another attempt holds it now, or it finished elsewhere.
    Lost,
    /// The worker is shutting down and the deadline passed: give it back.
    Shutdown,
}

/// What the computation and the heartbeat share: the cancellation flag the engine checks
/// between work units, why it was raised, and the progress the next heartbeat reports.
#[derive(Debug)]
struct Watch {
    cancel: AtomicBool,
    why: Mutex<Option<Stop>>,
    progress: Mutex<Progress>,
}

impl Watch {
    fn new() -> Self {
        Self {
            cancel: AtomicBool::new(false),
            why: Mutex::new(None),
            progress: Mutex::new(Progress { fraction: 0.0, stage: Some("starting".into()) }),
        }
    }

    fn stop(&self, why: Stop) {
        self.why.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(why);
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> Option<Stop> {
        if self.cancel.load(Ordering::Relaxed) {
            *self.why.lock().unwrap_or_else(PoisonError::into_inner)
        } else {
            None
        }
    }

    fn report(&self, fraction: f64, stage: &str) {
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        progress.fraction = fraction.clamp(0.0, 1.0) as f32;
        if progress.stage.as_deref() != Some(stage) {
            progress.stage = Some(stage.to_owned());
        }
    }

    fn progress(&self) -> Progress {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn check(&self) -> Result<(), JobError> {
        if self.stopped().is_some() { Err(JobError::Stopped) } else { Ok(()) }
    }
}

/// Seconds spent in each stage of a succeeded attempt.
#[derive(Debug, Default)]
struct Timings {
    keys: f64,
    download: f64,
    compute: f64,
    upload: f64,
}

/// Runs one claimed attempt to its end and tells the queue how it ended. `shutdown` turns true
/// when the worker's shutdown deadline has passed.
pub(crate) async fn run(shared: Arc<Shared>, claimed: Claimed, shutdown: watch::Receiver<bool>) {
    let job = &claimed.job;
    let span = tracing::info_span!(
        "job",
        job = %job.id,
        tenant = %job.tenant_id,
        attempt = claimed.lease.attempt,
        model = %job.model,
        packing = %job.packing,
        images = job.image_count,
    );
    attempt(shared, claimed, shutdown).instrument(span).await;
}

async fn attempt(shared: Arc<Shared>, claimed: Claimed, shutdown: watch::Receiver<bool>) {
    let started = Instant::now();
    let watch = Arc::new(Watch::new());
    let heartbeat = tokio::spawn(heartbeat(shared.clone(), claimed.lease.clone(), watch.clone(), shutdown));
    shared.metrics.running.inc();
    tracing::info!("job claimed");
    let outcome = process(&shared, &claimed, &watch).await;
    let outcome = match outcome {
        Ok((result, timings)) => finish(&shared, &claimed, &watch, result, timings, started).await,
        Err(error) => Err(error),
    };
    heartbeat.abort();
    let label = match outcome {
        Ok(label) => label,
        Err(JobError::Stopped) => stopped(&shared, &claimed.lease, &watch).await,
        Err(JobError::Permanent(failure) | JobError::Transient(failure)) => {
            tracing::warn!(code = %failure.code, kind = ?failure.kind, message = %failure.message, "job attempt failed");
            match retry(
                &shared,
                "recording the failure",
                || shared.queue.fail(&claimed.lease, &failure),
                queue_gives_up,
            )
            .await
            {
                Ok(FailOutcome::Failed) => "failed",
                Ok(FailOutcome::Retrying { run_at }) => {
                    tracing::info!(%run_at, "the queue will retry the job");
                    "retrying"
                }
                Ok(FailOutcome::Cancelled) => "cancelled",
                Err(error) => {
                    tracing::error!(%error, "could not record the failure; the lease will expire and the queue retry it");
                    "lost"
                }
            }
        }
    };
    shared.metrics.running.dec();
    shared.metrics.jobs.with_label_values(&[label]).inc();
}

/// The attempt stopped early: say so to the queue where it needs to hear it.
async fn stopped(shared: &Shared, lease: &Lease, watch: &Watch) -> &'static str {
    match watch.stopped() {
        Some(Stop::Cancelled) => {
            tracing::info!("job cancelled by its tenant; stopped without uploading");
            "cancelled"
        }
        Some(Stop::Lost) | None => {
            tracing::warn!("lease lost; stopped without uploading");
            "lost"
        }
        Some(Stop::Shutdown) => {
            match retry(shared, "releasing the job", || shared.queue.release(lease), queue_gives_up).await {
                Ok(JobState::Cancelled) => "cancelled",
                Ok(_) => {
                    tracing::info!("shutting down: job released to the queue without spending an attempt");
                    "released"
                }
                Err(error) => {
                    tracing::warn!(%error, "could not release the job; its lease will expire instead");
                    "lost"
                }
            }
        }
    }
}

/// Extends the lease every third of it, reporting progress, until the job ends (the task is
/// aborted) or the queue says to stop. Runs on its own task so a long layer never starves it.
async fn heartbeat(shared: Arc<Shared>, lease: Lease, watch: Arc<Watch>, mut shutdown: watch::Receiver<bool>) {
    let mut beat = tokio::time::interval(shared.config.heartbeat_interval());
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let mut shutdown_seen = false;
    loop {
        tokio::select! {
            _ = beat.tick() => {}
            changed = shutdown.changed(), if !shutdown_seen => {
                shutdown_seen = true;
                if changed.is_err() || *shutdown.borrow() {
                    watch.stop(Stop::Shutdown);
                }
                continue;
            }
        }
        match shared.queue.heartbeat(&lease, &watch.progress()).await {
            Ok(Heartbeat::Extended { .. }) => {}
            Ok(Heartbeat::Cancelled) => {
                tracing::info!("the tenant cancelled the job; stopping at the next check");
                watch.stop(Stop::Cancelled);
                return;
            }
            Ok(Heartbeat::Lost) => {
                tracing::warn!("the lease is gone (expired and taken, or finished elsewhere); stopping");
                watch.stop(Stop::Lost);
                return;
            }
            Err(error) => tracing::warn!(%error, "heartbeat failed; trying again at the next beat"),
        }
    }
}

/// Keys, download, compute and upload; returns the result's object key.
async fn process(shared: &Shared, claimed: &Claimed, watch: &Arc<Watch>) -> Result<(ObjectKey, Timings), JobError> {
    let job = &claimed.job;
    let mut timings = Timings::default();
    let key_set = job.key_set_id.ok_or_else(|| {
        JobError::permanent(
            "key_set_missing",
            "the job's key set has been deleted; register the keys again (`blindfold keys register`) and resubmit",
        )
    })?;
    let packing: Packing = job.packing.parse().map_err(|e| {
        JobError::permanent("unknown_packing", format!("the job asks for packing {:?}: {e}", job.packing))
    })?;

    watch.report(0.0, "loading keys");
    let clock = Instant::now();
    let evaluator = evaluator(shared, claimed, key_set, packing, watch).await?;
    timings.keys = stage(shared, "keys", clock);
    watch.check()?;
    hold(shared, watch).await?;

    // The batch streams from storage into the reader, which checks the header against the job
    // before any ciphertext is read and every chunk as it arrives; it is never held whole.
    watch.report(0.02, "downloading");
    let clock = Instant::now();
    let input = Input {
        key: parse_key(&job.input_key, "input")?,
        // Jobs queued before the API kept the input's ETag are read unpinned.
        pin: job
            .input_bytes
            .map(|bytes| Pinned { size: u64::try_from(bytes).unwrap_or(0), e_tag: job.input_etag.clone() }),
    };
    let image_count = u64::try_from(job.image_count).unwrap_or(0);
    let mut tries = 1;
    let mut wait = Duration::from_millis(500);
    let (result, download) = loop {
        match compute(shared, &evaluator, &input, job.id.0, key_set.0, image_count, watch).await {
            Ok(done) => break done,
            Err(Streamed::Failed(error)) => return Err(error),
            Err(Streamed::Storage(error)) => {
                if store_gives_up(&error) || tries >= shared.config.retries {
                    return Err(store_failure("input", &error));
                }
                tracing::warn!(%error, tries, wait_ms = wait.as_millis() as u64, "streaming the input batch failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(8));
                tries += 1;
                watch.check()?;
            }
        }
    };
    timings.download = download;
    timings.compute = clock.elapsed().as_secs_f64();
    shared.metrics.stage_seconds.with_label_values(&["download"]).observe(download);
    stage(shared, "compute", clock);
    watch.check()?;

    // Named by attempt: an attempt that lost its lease unnoticed can never overwrite the result
    // of the attempt that completed.
    watch.report(0.97, "uploading");
    let clock = Instant::now();
    let name = ObjectName::new(format!("result-{}.bfrb", claimed.lease.attempt))
        .map_err(|e| JobError::permanent("bad_job", e.to_string()))?;
    let tenant =
        StoreTenant::new(job.tenant_id.to_string()).map_err(|e| JobError::permanent("bad_job", e.to_string()))?;
    let store_job = StoreJob::new(job.id.to_string()).map_err(|e| JobError::permanent("bad_job", e.to_string()))?;
    let key = ObjectKey::job_result(&tenant, &store_job, &name);
    retry(shared, "uploading the result", || shared.store.upload(&key, Cursor::new(result.clone())), |_| false)
        .await
        .map_err(|e| store_failure("result", &e))?;
    timings.upload = stage(shared, "upload", clock);
    Ok((key, timings))
}

/// The test hook of [`crate::Config::test_hold_file`]: waits while the file exists.
async fn hold(shared: &Shared, watch: &Watch) -> Result<(), JobError> {
    let Some(path) = shared.config.test_hold_file.as_deref() else { return Ok(()) };
    if !path.exists() {
        return Ok(());
    }
    watch.report(0.01, "held");
    tracing::info!(file = %path.display(), "held by the test hook until the file is removed");
    while path.exists() {
        watch.check()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!("released by the test hook");
    Ok(())
}

/// Marks the job succeeded (fenced by the lease) now that its result is stored.
async fn finish(
    shared: &Shared,
    claimed: &Claimed,
    watch: &Watch,
    result: ObjectKey,
    timings: Timings,
    started: Instant,
) -> Result<&'static str, JobError> {
    if watch.stopped().is_some() {
        discard(shared, &result).await;
        return Err(JobError::Stopped);
    }
    let clock = Instant::now();
    let completion = match retry(
        shared,
        "completing the job",
        || shared.queue.complete(&claimed.lease, result.as_str()),
        queue_gives_up,
    )
    .await
    {
        Ok(completion) => completion,
        // Another worker holds the job now (this one stalled past its lease), or it was
        // settled: this attempt's result is an orphan.
        Err(blindfold_queue::Error::LeaseLost { .. }) => Completion::Lost,
        Err(e) => return Err(JobError::transient("database", format!("completing the job: {e}"))),
    };
    stage(shared, "complete", clock);
    match completion {
        Completion::Succeeded => {
            let images = u64::try_from(claimed.job.image_count).unwrap_or(0);
            let rate = if timings.compute > 0.0 { images as f64 / timings.compute } else { 0.0 };
            shared.metrics.images.inc_by(images);
            shared.metrics.images_per_second.set(rate);
            tracing::info!(
                result = %result,
                keys_s = timings.keys,
                download_s = timings.download,
                compute_s = timings.compute,
                upload_s = timings.upload,
                total_s = started.elapsed().as_secs_f64(),
                images_per_second = rate,
                "job succeeded"
            );
            Ok("succeeded")
        }
        Completion::Cancelled => {
            discard(shared, &result).await;
            tracing::info!("the tenant cancelled the job before it completed; result discarded");
            Ok("cancelled")
        }
        Completion::Lost => {
            discard(shared, &result).await;
            tracing::warn!("the lease was lost before completion; result discarded");
            Ok("lost")
        }
    }
}

async fn discard(shared: &Shared, key: &ObjectKey) {
    if let Err(error) = shared.store.delete(key).await {
        tracing::warn!(%error, key = %key, "could not delete a discarded result");
    }
}

/// The evaluator for this key set, model and packing: cached, or built from the key set's
/// bundle in storage and the (cached) compiled model.
async fn evaluator(
    shared: &Shared,
    claimed: &Claimed,
    key_set: blindfold_queue::KeySetId,
    packing: Packing,
    watch: &Watch,
) -> Result<Arc<BatchEvaluator>, JobError> {
    let job = &claimed.job;
    // The database first, the cache second: a key set deleted since it was cached (or never
    // this tenant's) is refused, whatever the cache holds.
    let record = retry(
        shared,
        "reading the key set",
        || tenants::key_set(shared.queue.pool(), job.tenant_id, key_set),
        |_| false,
    )
    .await
    .map_err(|e| JobError::transient("database", format!("reading key set {key_set}: {e}")))?
    .ok_or_else(|| {
        JobError::permanent(
            "key_set_missing",
            format!("key set {key_set} is not registered for this tenant; register the keys again and resubmit"),
        )
    })?;
    let cache_key = EvaluatorKey {
        tenant: job.tenant_id.0,
        key_set: key_set.0,
        registered_at: record.created_at,
        bundle_etag: record.object_etag.clone(),
        model: job.model.clone(),
        model_version: job.model_version,
        packing,
    };
    if let Some(evaluator) = shared.evaluators.get(&cache_key) {
        shared.metrics.cache.with_label_values(&["keys", "hit"]).inc();
        return Ok(evaluator);
    }
    shared.metrics.cache.with_label_values(&["keys", "miss"]).inc();
    let model = model(shared, &job.model, job.model_version, packing).await?;
    let object = parse_key(&record.object_key, "key set")?;
    // The bundle the API verified and nothing else (its ETag and size): one replaced since is
    // refused unread.
    let pin = Pinned { size: u64::try_from(record.size_bytes).unwrap_or(0), e_tag: record.object_etag.clone() };
    let bundle = retry(shared, "downloading the key set", || shared.store.get_pinned(&object, &pin), store_gives_up)
        .await
        .map_err(|e| store_failure("key set", &e))?;
    watch.check()?;
    // What the evaluator holds in memory, not the bundle's size on the wire: keys unpacked to
    // 64-bit coefficients, the engine's encoded weights or diagonals, and the model itself.
    let cost = (model.plan().resident_bytes() + model.resident_bytes()) as u64;
    let expect = KeyBundleExpect::new().key_set(key_set.0).fingerprint(model.fingerprint());
    let built = tokio::task::spawn_blocking(move || {
        let keys = KeyBundle::read(&bundle[..], &expect)?;
        BatchEvaluator::new(model, keys)
    })
    .await
    .map_err(|e| JobError::transient("engine", format!("loading the key set panicked: {e}")))?
    .map_err(|e| match JobError::from_evaluate(e) {
        JobError::Permanent(mut failure) => {
            failure.code = "bad_key_set".into();
            failure.message = format!("key set {key_set}: {}", failure.message);
            JobError::Permanent(failure)
        }
        other => other,
    })?;
    let evaluator = Arc::new(built);
    shared.evaluators.insert(cache_key, evaluator.clone(), cost);
    Ok(evaluator)
}

/// The compiled model a job is pinned to: cached, or read from the registry's storage (its
/// ONNX file checked against the SHA-256 recorded at registration) and compiled. A job from
/// before the registry (no version) names a model built into the binary.
async fn model(shared: &Shared, name: &str, version: Option<i32>, packing: Packing) -> Result<CompiledModel, JobError> {
    let key = (name.to_owned(), version, packing);
    if let Some(model) = shared.models.get(&key) {
        shared.metrics.cache.with_label_values(&["model", "hit"]).inc();
        return Ok(model);
    }
    shared.metrics.cache.with_label_values(&["model", "miss"]).inc();
    let loaded = match version {
        Some(version) => Some(registered_model(shared, name, version).await?),
        None => None,
    };
    let owned = name.to_owned();
    let options = CompileOptions { memory_budget: shared.memory_budget, ..CompileOptions::default() };
    let model = tokio::task::spawn_blocking(move || match loaded {
        Some(model) => CompiledModel::compile(model, packing, &options),
        None => CompiledModel::load_with(&owned, packing, &options),
    })
    .await
    .map_err(|e| JobError::transient("engine", format!("compiling the model panicked: {e}")))?
    .map_err(|e| {
        let code =
            if matches!(e, blindfold_compiler::Error::DoesNotFit { .. }) { "does_not_fit" } else { "unknown_model" };
        JobError::permanent(code, format!("model {name} ({packing} packing): {e}"))
    })?;
    shared.models.insert(key, model.clone(), model.resident_bytes() as u64);
    Ok(model)
}

/// A registered version's two files from storage, checked and imported.
async fn registered_model(
    shared: &Shared,
    name: &str,
    version: i32,
) -> Result<blindfold_nn::registry::Model, JobError> {
    let reference = format!("{name}@{version}");
    let row =
        retry(shared, "reading the model registry", || models::get(shared.queue.pool(), name, version), |_| false)
            .await
            .map_err(|e| JobError::transient("database", format!("reading model {reference}: {e}")))?
            .ok_or_else(|| JobError::permanent("unknown_model", format!("model {reference} is not registered")))?;
    let bad = |e: StoreError| JobError::permanent("bad_job", format!("model {reference}: {e}"));
    let model_name = ModelName::new(name).map_err(bad)?;
    let file = |file: &str| ObjectName::new(file).map(|f| ObjectKey::model_file(&model_name, version as u32, &f));
    let onnx_key = file("model.onnx").map_err(bad)?;
    let manifest_key = file("manifest.json").map_err(bad)?;
    // The registered sizes bind the reads; the SHA-256 below binds the content.
    let onnx_pin = Pinned { size: row.onnx_bytes.max(0) as u64, e_tag: None };
    let manifest_pin = Pinned { size: row.manifest_bytes.max(0) as u64, e_tag: None };
    let onnx = retry(shared, "downloading the model", || shared.store.get_pinned(&onnx_key, &onnx_pin), store_gives_up)
        .await
        .map_err(|e| store_failure("model", &e))?;
    let manifest = retry(
        shared,
        "downloading the manifest",
        || shared.store.get_pinned(&manifest_key, &manifest_pin),
        store_gives_up,
    )
    .await
    .map_err(|e| store_failure("manifest", &e))?;
    let digest: [u8; 32] = Sha256::digest(&onnx).into();
    if digest[..] != row.onnx_sha256[..] {
        // Storage does not hold what was registered: an operator's error or tampering; retrying
        // will not help.
        return Err(JobError::permanent(
            "model_corrupt",
            format!("model {reference}: model.onnx in storage does not match the SHA-256 recorded at registration"),
        ));
    }
    let manifest = String::from_utf8(manifest.to_vec())
        .map_err(|_| JobError::permanent("model_corrupt", format!("model {reference}: manifest.json is not UTF-8")))?;
    tokio::task::spawn_blocking(move || blindfold_nn::registry::from_files(onnx.to_vec(), &manifest))
        .await
        .map_err(|e| JobError::transient("engine", format!("importing the model panicked: {e}")))?
        .map_err(|e| JobError::permanent("model_corrupt", format!("model {reference}: {e}")))
}

/// Why a streamed evaluation failed: the storage stream (worth retrying from the start) or
/// anything else (classified already).
enum Streamed {
    Storage(StoreError),
    Failed(JobError),
}

/// A job's input batch, and what the API verified of it.
struct Input {
    key: ObjectKey,
    pin: Option<Pinned>,
}

/// Streams the input batch from storage into the evaluator on the worker's thread pool. Returns
/// the result batch and the seconds the download took (it overlaps the reading). A panic in the
/// engine becomes a transient failure and the worker carries on.
async fn compute(
    shared: &Shared,
    evaluator: &Arc<BatchEvaluator>,
    input: &Input,
    job: blindfold_batch::Uuid,
    key_set: blindfold_batch::Uuid,
    image_count: u64,
    watch: &Arc<Watch>,
) -> Result<(Bytes, f64), Streamed> {
    let (writer, reader) = tokio::io::duplex(4 << 20);
    let store = shared.store.clone();
    let (key, pin) = (input.key.clone(), input.pin.clone());
    let download = tokio::spawn(async move {
        let clock = Instant::now();
        let received = match &pin {
            Some(pin) => store.download_pinned(&key, pin, writer).await,
            None => store.download(&key, writer, None).await,
        };
        (received, clock.elapsed().as_secs_f64())
    });
    let pool = shared.pool.clone();
    let watch = watch.clone();
    let evaluator = evaluator.clone();
    // The latency packing evaluates one image after another and reports each from 0 to 1
    // ("done" at its end); the job's progress is then over all of them.
    let passes = if evaluator.model().packing() == Packing::Latency { image_count.max(1) as f64 } else { 1.0 };
    let passes_done = AtomicU64::new(0);
    let joined = tokio::task::spawn_blocking(move || {
        let source = std::io::BufReader::with_capacity(1 << 20, SyncIoBridge::new(reader));
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                let control = Control::with_progress(|p| {
                    let done = if p.name == "done" {
                        passes_done.fetch_add(1, Ordering::Relaxed) + 1
                    } else {
                        passes_done.load(Ordering::Relaxed)
                    };
                    let fraction = if p.name == "done" { done as f64 } else { done as f64 + p.fraction };
                    watch.report(0.05 + 0.9 * (fraction / passes).min(1.0), p.name);
                })
                .cancelled_by(&watch.cancel);
                let expect = evaluator.model().expect_input(key_set).image_count(image_count);
                let input = InputBatchReader::open(source, evaluator.keys().context(), &expect)?;
                // The result records this job and the input's digest: the hospital checks both.
                evaluator.evaluate_job(job, input, Vec::new(), &control)
            })
        }))
    })
    .await;
    // A reader that stopped early (bad header, cancel) drops its end: the download then fails
    // with a broken pipe, which says nothing about storage; so the evaluation's error decides,
    // unless the evaluation only failed because the stream broke.
    let (received, download_seconds) = download.await.unwrap_or_else(|e| {
        (Err(StoreError::Io { context: "the download task".into(), source: std::io::Error::other(e.to_string()) }), 0.0)
    });
    let evaluated = match joined {
        Err(error) => Err(JobError::transient("engine", format!("the evaluation task failed: {error}"))),
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(%message, "the engine panicked; the attempt fails and the worker carries on");
            Err(JobError::transient("engine_panic", format!("the evaluation panicked: {message}")))
        }
        Ok(Ok(Err(error))) => Err(JobError::from_evaluate(error)),
        Ok(Ok(Ok(evaluated))) => Ok(Bytes::from(evaluated.finished.writer)),
    };
    match (evaluated, received) {
        // The reader verified the whole batch up to its trailer's digest.
        (Ok(result), _) => Ok((result, download_seconds)),
        // The stream broke before the batch was read whole: a storage failure.
        (Err(JobError::Permanent(_)), Err(error)) if !broken_pipe(&error) => Err(Streamed::Storage(error)),
        (Err(error), _) => Err(Streamed::Failed(error)),
    }
}

/// The reader hung up on the download (it had read all it needed, or stopped early).
fn broken_pipe(error: &StoreError) -> bool {
    matches!(error, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Runs `op` until it succeeds, `gives_up` says the error is final, or the worker's retries are
/// spent, waiting twice as long after each failure (from half a second up to 8 s).
async fn retry<T, E, Fut>(
    shared: &Shared,
    what: &str,
    mut op: impl FnMut() -> Fut,
    gives_up: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut wait = Duration::from_millis(500);
    let mut tries = 1;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(error) if tries >= shared.config.retries || gives_up(&error) => return Err(error),
            Err(error) => {
                tracing::warn!(%error, tries, wait_ms = wait.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(8));
                tries += 1;
            }
        }
    }
}

/// A lost lease stays lost: no point retrying.
fn queue_gives_up(error: &blindfold_queue::Error) -> bool {
    matches!(error, blindfold_queue::Error::LeaseLost { .. })
}

/// A missing object stays missing, and one changed since it was verified stays so: no point
/// retrying.
fn store_gives_up(error: &StoreError) -> bool {
    matches!(error, StoreError::NotFound { .. } | StoreError::InvalidName { .. } | StoreError::ObjectChanged { .. })
}

fn store_failure(what: &str, error: &StoreError) -> JobError {
    match error {
        StoreError::NotFound { key, .. } => JobError::permanent(
            "object_missing",
            format!("the {what} object {key} is not in storage; upload it again and resubmit"),
        ),
        StoreError::ObjectChanged { .. } => JobError::permanent(
            "object_changed",
            format!("the {what} object was replaced after it was verified ({error}); upload it again and resubmit"),
        ),
        _ => JobError::transient("storage", format!("the {what} object: {error}")),
    }
}

fn parse_key(key: &str, what: &str) -> Result<ObjectKey, JobError> {
    ObjectKey::parse(key).map_err(|e| JobError::permanent("bad_job", format!("the job's {what} object key: {e}")))
}

fn stage(shared: &Shared, name: &str, clock: Instant) -> f64 {
    let seconds = clock.elapsed().as_secs_f64();
    shared.metrics.stage_seconds.with_label_values(&[name]).observe(seconds);
    seconds
}
