//! The hospital's work with a running service, one function per step, for the commands and for
//! the in-process demo: register a key set, submit an encrypted batch, wait for a job, download
//! and decrypt its result. Cryptography and the batch format stay in `blindfold-client`.
//!
//! Beside the keys, a keys directory gains `registration.json` (which API the key set is
//! registered with) and `jobs/JOB.names.json` (each submitted batch's image names, which never
//! leave this machine; `fetch` puts them back on the predictions).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use blindfold_api::{CompletedPart, CreateJob, CreateKeySet, JobView, KeySetView};
use blindfold_client::{EncryptedBatch, KeySet, Predictions};
use uuid::Uuid;

use super::client::{ApiClient, OnBytes, ServiceError};

/// Registers the model directory `dir` (`model.onnx` and `manifest.json`) with the service, as
/// an operator (`client` holds the admin token): checks that it imports first, announces it,
/// uploads both files, then asks the service to verify, compile and activate it.
/// `on_uploaded` hears `NAME@VERSION` once the files are up (the compile can take a while).
pub async fn register_model(
    client: &ApiClient,
    dir: &Path,
    on_uploaded: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<blindfold_api::ModelRegistered> {
    use sha2::Digest as _;
    // Checked here first: a model that does not import fails before any upload.
    let model =
        blindfold_nn::registry::load_dir(dir).with_context(|| format!("reading the model in {}", dir.display()))?;
    let reference = format!("{}@{}", model.manifest.name, model.manifest.version);
    let onnx_path = dir.join("model.onnx");
    let manifest_path = dir.join("manifest.json");
    let manifest_bytes =
        std::fs::metadata(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?.len();
    let digest = sha2::Sha256::digest(&model.onnx).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let announced = client
        .announce_model(&blindfold_api::AnnounceModel {
            name: model.manifest.name.clone(),
            version: model.manifest.version,
            onnx_sha256: digest,
            onnx_bytes: model.onnx.len() as u64,
            manifest_bytes,
        })
        .await?;
    let quiet: OnBytes = std::sync::Arc::new(|_| {});
    for (transfer, path) in [(&announced.uploads.onnx, &onnx_path), (&announced.uploads.manifest, &manifest_path)] {
        let upload = blindfold_api::Upload::Single { request: transfer.clone() };
        client.upload(&upload, path, quiet.clone()).await.with_context(|| format!("uploading {}", path.display()))?;
    }
    on_uploaded(&reference);
    Ok(client.complete_model(&reference).await?)
}

/// The registration record in a keys directory.
pub const REGISTRATION_FILE: &str = "registration.json";
/// Where a keys directory keeps the names of its submitted batches.
pub const JOBS_DIR: &str = "jobs";
const REGISTRATION_FORMAT: &str = "blindfold-registration/1";

/// A job that ended without a result: failed or cancelled (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("job {id} {}{}{}", if .state == "cancelled" { "was cancelled" } else { .state.as_str() }, reason(.code, .message), next(.state, .id))]
pub struct JobEnded {
    /// The job.
    pub id: Uuid,
    /// `failed` or `cancelled`.
    pub state: String,
    /// The error code, for a failed job.
    pub code: Option<String>,
    /// The error message, for a failed job.
    pub message: Option<String>,
}

fn reason(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(code), Some(message)) => format!(": {message} ({code})"),
        (Some(code), None) => format!(" ({code})"),
        (None, Some(message)) => format!(": {message}"),
        (None, None) => String::new(),
    }
}

fn next(state: &str, id: &Uuid) -> String {
    if state == "failed" {
        format!("; `blindfold status {id}` shows its attempts, and submitting the images again makes a new job")
    } else {
        String::new()
    }
}

impl JobEnded {
    /// `Some` when the job is failed or cancelled.
    pub fn of(job: &JobView) -> Option<JobEnded> {
        matches!(job.state.as_str(), "failed" | "cancelled").then(|| JobEnded {
            id: job.id,
            state: job.state.clone(),
            code: job.error.as_ref().map(|e| e.code.clone()),
            message: job.error.as_ref().and_then(|e| e.message.clone()),
        })
    }
}

/// `registration.json`: the key set is registered with `api`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    /// `blindfold-registration/1`.
    pub format: String,
    /// The API's base URL.
    pub api: String,
    /// The key-set id (the descriptor's, which every batch carries).
    pub key_set: Uuid,
    /// Its model.
    pub model: String,
    /// Its packing.
    pub packing: String,
    /// When it was registered.
    pub registered_at: chrono::DateTime<chrono::Utc>,
}

/// What [`register_keys`] did.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The key set as the service has it.
    pub key_set: KeySetView,
    /// False when the service already had it (nothing was uploaded).
    pub uploaded: bool,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// Registers the key set's evaluation keys with the service under the key set's own id:
/// announce, upload through the presigned transfer, complete (the service verifies the
/// bundle). A key set the service already has is not uploaded again; an unfinished earlier
/// attempt is dropped and redone. Records the registration in the keys directory.
pub async fn register_keys(client: &ApiClient, keys: &KeySet, progress: OnBytes) -> anyhow::Result<Registered> {
    let descriptor = keys.descriptor();
    let id = keys.id();
    let existing = match client.key_set(id).await {
        Ok(view) => Some(view),
        Err(error) if error.is_not_found() => None,
        Err(error) => return Err(error.into()),
    };
    let (key_set, uploaded, bytes) = match existing {
        Some(view) if view.status == "ready" => {
            if view.params_fingerprint != descriptor.fingerprint {
                anyhow::bail!(
                    "the service has key set {id} with parameters {} but {} holds parameters {}; make a new key set",
                    view.params_fingerprint,
                    keys.dir().display(),
                    descriptor.fingerprint
                );
            }
            (view, false, 0)
        }
        other => {
            if other.is_some() {
                // An announcement whose upload never completed (an interrupted register).
                client.delete_key_set(id).await?;
            }
            let bundle = keys.dir().join(blindfold_client::EVALUATION_KEYS_FILE);
            let size = std::fs::metadata(&bundle)
                .with_context(|| {
                    format!("reading {} (make keys with `blindfold keygen --model NAME --out DIR`)", bundle.display())
                })?
                .len();
            let created = client
                .create_key_set(&CreateKeySet {
                    id: Some(id),
                    // Keys fit exactly the version they were made for.
                    model: format!("{}@{}", descriptor.model, descriptor.model_version),
                    packing: Some(descriptor.packing.clone()),
                    size_bytes: size,
                })
                .await?;
            let parts = client.upload(&created.upload, &bundle, progress).await?;
            let view = client.complete_key_set(id, parts).await?;
            (view, true, size)
        }
    };
    write_registration(
        keys,
        &Registration {
            format: REGISTRATION_FORMAT.into(),
            api: client.base().to_owned(),
            key_set: id,
            model: descriptor.model.clone(),
            packing: descriptor.packing.clone(),
            registered_at: key_set.created_at,
        },
    )?;
    tracing::info!(key_set = %id, uploaded, "key set registered");
    Ok(Registered { key_set, uploaded, bytes })
}

fn write_registration(keys: &KeySet, registration: &Registration) -> anyhow::Result<()> {
    let path = keys.dir().join(REGISTRATION_FILE);
    let json = serde_json::to_vec_pretty(registration)?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, json).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))
}

/// The registration record of a keys directory, if any.
pub fn registration(keys: &KeySet) -> anyhow::Result<Option<Registration>> {
    let path = keys.dir().join(REGISTRATION_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Registers the key set unless `registration.json` says this API already has it (and the
/// service confirms). Returns `Some` when it registered now.
pub async fn ensure_registered(
    client: &ApiClient,
    keys: &KeySet,
    progress: OnBytes,
) -> anyhow::Result<Option<Registered>> {
    if let Some(record) = registration(keys)?
        && record.api == client.base()
        && record.key_set == keys.id()
    {
        match client.key_set(keys.id()).await {
            Ok(view) if view.status == "ready" => return Ok(None),
            Ok(_) => {}
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(Some(register_keys(client, keys, progress).await?))
}

/// A private directory inside the keys directory for the batches of one submission (removed
/// when dropped): batches are big, and their names sidecars must stay private.
pub fn work_dir(keys: &KeySet) -> anyhow::Result<tempfile::TempDir> {
    let jobs = jobs_dir(keys)?;
    tempfile::Builder::new()
        .prefix("submit-")
        .tempdir_in(&jobs)
        .with_context(|| format!("creating a directory in {}", jobs.display()))
}

fn jobs_dir(keys: &KeySet) -> anyhow::Result<PathBuf> {
    let jobs = keys.dir().join(JOBS_DIR);
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(&jobs).with_context(|| format!("creating {}", jobs.display()))?;
    Ok(jobs)
}

/// The names sidecar of a submitted job, kept in the keys directory.
pub fn job_names(keys: &KeySet, job: Uuid) -> PathBuf {
    keys.dir().join(JOBS_DIR).join(format!("{job}.names.json"))
}

/// Creates a job for one encrypted batch, uploads it and submits it. The job's idempotency
/// key is the batch's digest, so a repeat after a lost answer names the same job. The names
/// sidecar moves to [`job_names`] before the submit.
pub async fn submit_batch(
    client: &ApiClient,
    keys: &KeySet,
    batch: &EncryptedBatch,
    priority: Option<i64>,
    progress: OnBytes,
) -> anyhow::Result<JobView> {
    let uploaded = upload_batch(client, keys, batch, priority, progress).await?;
    submit_uploaded(client, uploaded).await
}

/// A job whose batch is uploaded but not yet submitted (see [`upload_batch`]).
#[derive(Debug)]
pub struct Uploaded {
    /// The job as created.
    pub job: JobView,
    /// The parts to submit; `None` when the job had already been submitted (an idempotent
    /// repeat).
    parts: Option<Vec<CompletedPart>>,
}

/// The first half of [`submit_batch`]: creates the job and uploads its batch, without
/// submitting it (the benchmark times the hospital's upload apart from the service's work).
pub async fn upload_batch(
    client: &ApiClient,
    keys: &KeySet,
    batch: &EncryptedBatch,
    priority: Option<i64>,
    progress: OnBytes,
) -> anyhow::Result<Uploaded> {
    let descriptor = keys.descriptor();
    let created = client
        .create_job(&CreateJob {
            model: format!("{}@{}", descriptor.model, descriptor.model_version),
            key_set_id: keys.id(),
            image_count: u32::try_from(batch.images).context("too many images in one batch")?,
            size_bytes: batch.bytes,
            packing: Some(batch.packing.to_string()),
            idempotency_key: Some(format!("batch-{}", batch.digest)),
            priority,
        })
        .await?;
    let Some(upload) = created.upload else {
        // Already submitted (an idempotent repeat).
        return Ok(Uploaded { job: created.job, parts: None });
    };
    let id = created.job.id;
    let parts = client.upload(&upload, &batch.path, progress).await?;
    jobs_dir(keys)?;
    let names = job_names(keys, id);
    std::fs::rename(&batch.names_path, &names)
        .with_context(|| format!("moving {} to {}", batch.names_path.display(), names.display()))?;
    Ok(Uploaded { job: created.job, parts: Some(parts) })
}

/// The second half of [`submit_batch`]: submits an uploaded job (the service verifies the
/// batch's header and queues it).
pub async fn submit_uploaded(client: &ApiClient, uploaded: Uploaded) -> anyhow::Result<JobView> {
    match uploaded.parts {
        Some(parts) => Ok(client.submit_job(uploaded.job.id, parts).await?),
        None => Ok(uploaded.job),
    }
}

/// Polls the job every `interval` until it ends, calling `on_update` with each view. A
/// succeeded job is returned; a failed or cancelled one is a [`JobEnded`] error. Up to five
/// polls in a row may fail to reach the API (a restart) before it gives up.
pub async fn wait_job(
    client: &ApiClient,
    id: Uuid,
    interval: Duration,
    on_update: &mut (dyn FnMut(&JobView) + Send),
) -> anyhow::Result<JobView> {
    let mut unreachable = 0;
    loop {
        match client.job(id).await {
            Ok(job) => {
                unreachable = 0;
                on_update(&job);
                if job.state == "succeeded" {
                    return Ok(job);
                }
                if let Some(ended) = JobEnded::of(&job) {
                    return Err(ended.into());
                }
            }
            Err(error @ ServiceError::Unreachable { .. }) => {
                unreachable += 1;
                if unreachable >= 5 {
                    return Err(error.into());
                }
            }
            Err(error) => return Err(error.into()),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Downloads a succeeded job's encrypted result into `out`. A failed or cancelled job is a
/// [`JobEnded`] error. Returns the bytes downloaded.
pub async fn download_result(client: &ApiClient, id: Uuid, out: &Path, progress: OnBytes) -> anyhow::Result<u64> {
    let job = client.job(id).await?;
    if let Some(ended) = JobEnded::of(&job) {
        return Err(ended.into());
    }
    let result = client.job_result(id).await?;
    Ok(client.download(&result.download, out, progress).await?)
}

/// Decrypts a downloaded result with the key set, naming the images from the job's sidecar
/// when this keys directory submitted it.
pub fn decrypt_result(keys: &KeySet, job: Uuid, raw: &Path) -> anyhow::Result<Predictions> {
    let names = job_names(keys, job);
    let names = names.exists().then_some(names.as_path());
    blindfold_client::decrypt_job(keys, raw, names, job).with_context(|| format!("decrypting the result of job {job}"))
}
