//! The service side of the model registry: what a request's model names, registering a
//! version's files (announce → upload → complete), and seeding the models built into the binary.
//!
//! A version becomes `active` only after its files were read back from storage, hashed,
//! imported and compiled; any refusal removes the row and the files, so nothing is ever half
//! registered. The rows carry the plans' summaries: requests never compile.

use blindfold_queue::models::{self, Announcement};
use blindfold_queue::{ModelRef, ModelState, RegisteredModel};
use blindfold_store::{ModelName, ObjectKey, ObjectName, Prefix, Store};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::catalogue::{ModelInfo, Refused, VerifiedModel, verify_model};
use crate::error::{ApiError, ApiResult};

/// The ONNX file of a version, in storage.
pub const ONNX_FILE: &str = "model.onnx";
/// The manifest of a version, in storage.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// The object keys of a version's two files.
pub fn file_keys(name: &str, version: i32) -> ApiResult<(ObjectKey, ObjectKey)> {
    let model = ModelName::new(name).map_err(|e| ApiError::unprocessable("invalid_model", e.to_string()))?;
    let version = u32::try_from(version).map_err(|_| ApiError::unprocessable("invalid_model", "negative version"))?;
    let file = |name: &str| ObjectName::new(name).map_err(|e| ApiError::internal("building an object key", e));
    Ok((
        ObjectKey::model_file(&model, version, &file(ONNX_FILE)?),
        ObjectKey::model_file(&model, version, &file(MANIFEST_FILE)?),
    ))
}

/// Parses a model reference from a request (`NAME` or `NAME@VERSION`).
pub fn parse_ref(text: &str) -> ApiResult<ModelRef> {
    text.parse().map_err(|e: blindfold_queue::Error| ApiError::unprocessable("invalid_model", e.to_string()))
}

/// What `reference` names, in state active or (pinned) retired; 422 `unknown_model` listing the
/// served names otherwise.
pub async fn resolve(pool: &PgPool, reference: &ModelRef) -> ApiResult<ModelInfo> {
    if let Some(row) = models::resolve(pool, reference).await? {
        return ModelInfo::from_row(&row)
            .ok_or_else(|| ApiError::internal("reading the registry", format!("row {reference} does not parse")));
    }
    let served = models::list(pool, false).await?;
    let mut names: Vec<String> = served.iter().map(|row| row.reference().to_string()).collect();
    names.dedup();
    let detail = match reference.version {
        Some(_) if served.iter().any(|row| row.name == reference.name) => format!(
            "no version {reference} is registered; known models: {}",
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        ),
        _ => format!(
            "unknown model {:?}; known models: {}",
            reference.to_string(),
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        ),
    };
    Err(ApiError::unprocessable("unknown_model", detail))
}

/// [`resolve`], refusing a retired version: what new key sets and jobs may name.
pub async fn serving(pool: &PgPool, reference: &ModelRef) -> ApiResult<ModelInfo> {
    let info = resolve(pool, reference).await?;
    if info.state == ModelState::Retired {
        let newer = models::resolve(pool, &ModelRef { name: info.name.clone(), version: None }).await?;
        return Err(ApiError::unprocessable(
            "model_retired",
            format!(
                "{} is retired: it takes no new key sets or jobs{}",
                info.reference(),
                newer.map(|row| format!("; the active version is {}", row.reference())).unwrap_or_default()
            ),
        ));
    }
    Ok(info)
}

/// Announces a version: records it as `uploading`. Announcing again the same files of a
/// version still uploading answers it again (an interrupted upload resumes with fresh URLs);
/// anything else under an existing version is 409 `model_exists`.
pub async fn announce(pool: &PgPool, announcement: &Announcement) -> ApiResult<RegisteredModel> {
    match models::announce(pool, announcement).await {
        Ok(row) => Ok(row),
        Err(error @ blindfold_queue::Error::ModelVersionExists { .. }) => {
            let version = announcement.model.version.unwrap_or(0);
            if let Some(row) = models::get(pool, &announcement.model.name, version).await?
                && row.state == ModelState::Uploading
                && row.onnx_sha256[..] == announcement.onnx_sha256[..]
                && row.onnx_bytes == announcement.onnx_bytes
                && row.manifest_bytes == announcement.manifest_bytes
            {
                return Ok(row);
            }
            Err(ApiError::conflict("model_exists", error.to_string()))
        }
        Err(blindfold_queue::Error::Invalid { what, reason }) => {
            Err(ApiError::unprocessable("invalid_model", format!("{what}: {reason}")))
        }
        Err(other) => Err(other.into()),
    }
}

/// What completing a version did.
#[derive(Debug)]
pub struct Completed {
    /// The version as the catalogue shows it.
    pub info: ModelInfo,
    /// Why a packing does not compile, if one does not.
    pub refused_packings: Vec<String>,
}

/// Verifies an uploading version's files in storage and activates it. A version already
/// active or retired answers as it is (a repeated `complete`). Files not uploaded yet answer
/// 409 `upload_missing` and change nothing; files that fail verification are refused with 422
/// `model_refused`, and the version and its files are removed.
pub async fn complete(pool: &PgPool, store: &Store, reference: &ModelRef) -> ApiResult<Completed> {
    let version = reference
        .version
        .ok_or_else(|| ApiError::unprocessable("invalid_model", "complete NAME@VERSION, not a bare name"))?;
    let Some(row) = models::get(pool, &reference.name, version).await? else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("no model {reference} has been announced"),
        ));
    };
    if row.state != ModelState::Uploading {
        let info = ModelInfo::from_row(&row)
            .ok_or_else(|| ApiError::internal("reading the registry", format!("row {reference} does not parse")))?;
        return Ok(Completed { info, refused_packings: Vec::new() });
    }
    let (onnx_key, manifest_key) = file_keys(&row.name, row.version)?;
    let mut pins = Vec::with_capacity(2);
    for (key, announced, file) in
        [(&onnx_key, row.onnx_bytes, ONNX_FILE), (&manifest_key, row.manifest_bytes, MANIFEST_FILE)]
    {
        let Some(info) = store.head(key).await? else {
            return Err(ApiError::conflict(
                "upload_missing",
                format!("{file} of {reference} has not been uploaded yet: PUT it to its presigned URL first"),
            ));
        };
        if i64::try_from(info.size).ok() != Some(announced) {
            let reason = format!("{file} has {} bytes in storage, {announced} were announced", info.size);
            return Err(refuse(pool, store, &row, Refused(reason)).await);
        }
        pins.push(info.pinned());
    }
    // Read what was headed and nothing else: the files could be replaced between the HEAD and
    // the GET.
    let onnx = store.get_pinned(&onnx_key, &pins[0]).await?.to_vec();
    let manifest = store.get_pinned(&manifest_key, &pins[1]).await?;
    let digest: [u8; 32] = Sha256::digest(&onnx).into();
    if digest[..] != row.onnx_sha256[..] {
        let reason =
            format!("{ONNX_FILE} is corrupt: its SHA-256 is {}, {} was announced", hex(&digest), row.onnx_sha256_hex());
        return Err(refuse(pool, store, &row, Refused(reason)).await);
    }
    let announced = reference.clone();
    let verified = tokio::task::spawn_blocking(move || verify_model(&announced, onnx, &manifest))
        .await
        .map_err(|e| ApiError::internal("compiling a model", e))?;
    let verified = match verified {
        Ok(verified) => verified,
        Err(refused) => return Err(refuse(pool, store, &row, refused).await),
    };
    activate(pool, &row, verified).await
}

async fn activate(pool: &PgPool, row: &RegisteredModel, verified: VerifiedModel) -> ApiResult<Completed> {
    let plans = serde_json::to_value(&verified.packings).map_err(|e| ApiError::internal("recording plans", e))?;
    let Some(active) = models::activate(pool, &row.name, row.version, &verified.manifest, &plans).await? else {
        return Err(ApiError::conflict(
            "concurrent_update",
            format!("{} was completed or abandoned meanwhile", row.reference()),
        ));
    };
    let info = ModelInfo::from_row(&active)
        .ok_or_else(|| ApiError::internal("reading the registry", format!("row {} does not parse", row.reference())))?;
    tracing::info!(model = %active.reference(), packings = info.packings.len(), "model registered");
    Ok(Completed { info, refused_packings: verified.refused_packings })
}

/// Removes a version that failed verification, files included, and answers why.
async fn refuse(pool: &PgPool, store: &Store, row: &RegisteredModel, refused: Refused) -> ApiError {
    tracing::warn!(model = %row.reference(), reason = %refused, "model refused");
    if let Ok(model) = ModelName::new(row.name.as_str())
        && let Err(error) = store.delete_prefix(&Prefix::model(&model, row.version as u32)).await
    {
        tracing::warn!(%error, "could not delete a refused model's files");
    }
    if let Err(error) = models::abandon(pool, &row.name, row.version).await {
        return ApiError::internal("removing a refused model", error);
    }
    ApiError::unprocessable(
        "model_refused",
        format!("{} was not registered: {}; announce it again with corrected files", row.reference(), refused.0),
    )
}

/// Registers the models built into the binary (the seed set) that the registry lacks: uploads
/// their files, verifies and activates them as any other. A version already registered is left
/// alone (a retired one stays retired); one registered with other bytes is reported, since
/// versions are immutable. Safe to run from several processes at once. Returns what it
/// registered.
pub async fn seed_builtin_models(pool: &PgPool, store: &Store) -> anyhow::Result<Vec<String>> {
    use anyhow::Context as _;
    let mut registered = Vec::new();
    for name in blindfold_nn::registry::names() {
        let model = blindfold_nn::registry::load(name).with_context(|| format!("loading the built-in {name}"))?;
        let manifest_json = blindfold_nn::registry::embedded_manifest(name)
            .with_context(|| format!("the built-in {name} has no manifest"))?;
        let version = i32::try_from(model.manifest.version).context("a built-in version above 2^31")?;
        let reference = ModelRef::pinned(name, version);
        let digest: [u8; 32] = Sha256::digest(&model.onnx).into();
        if let Some(existing) = models::get(pool, name, version).await? {
            if existing.onnx_sha256[..] != digest[..] {
                tracing::warn!(model = %reference, "the built-in model differs from the registered version of the same number; bump its version to register it");
            }
            continue;
        }
        let announcement = Announcement {
            model: reference.clone(),
            onnx_sha256: digest,
            onnx_bytes: model.onnx.len() as i64,
            manifest_bytes: manifest_json.len() as i64,
        };
        let row = match models::announce(pool, &announcement).await {
            Ok(row) => row,
            // Another process is seeding it right now.
            Err(blindfold_queue::Error::ModelVersionExists { .. }) => continue,
            Err(error) => return Err(error).context("announcing a built-in model"),
        };
        let (onnx_key, manifest_key) = file_keys(name, version).map_err(|e| anyhow::anyhow!("{}", e.detail))?;
        store.put_bytes(&onnx_key, model.onnx.to_vec().into()).await.context("uploading a built-in model")?;
        store
            .put_bytes(&manifest_key, manifest_json.as_bytes().to_vec().into())
            .await
            .context("uploading a built-in manifest")?;
        let onnx = model.onnx.to_vec();
        let verified = tokio::task::spawn_blocking(move || verify_model(&reference, onnx, manifest_json.as_bytes()))
            .await
            .context("compiling a built-in model")?;
        match verified {
            Ok(verified) => {
                activate(pool, &row, verified).await.map_err(|e| anyhow::anyhow!("{}", e.detail))?;
                registered.push(row.reference().to_string());
            }
            Err(refused) => {
                let error = refuse(pool, store, &row, refused).await;
                anyhow::bail!("the built-in model {name} does not register: {}", error.detail);
            }
        }
    }
    Ok(registered)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
