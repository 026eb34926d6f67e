//! Models: the catalogue and one version's files for tenants; announcing, completing,
//! retiring and listing versions for operators.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use blindfold_queue::ModelRef;
use blindfold_queue::models::{self, Announcement};

use crate::auth::{Caller, Operator};
use crate::catalogue::{Catalogue, ModelInfo};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::registry::{self, MAX_MANIFEST_BYTES};
use crate::state::AppState;
use crate::wire::{
    AnnounceModel, ModelAnnounced, ModelDetail, ModelFiles, ModelRecord, ModelRecordList, ModelRegistered,
};

/// The model catalogue: every active model version with its input shape, classes, packings,
/// parameter sets and the evaluation keys each needs. Public.
#[utoipa::path(get, path = "/v1/models", operation_id = "list_models", tag = "models",
    responses((status = 200, description = "The catalogue", body = Catalogue)))]
pub async fn catalogue(State(state): State<AppState>) -> ApiResult<Json<Catalogue>> {
    let rows = models::list(&state.pool, false).await?;
    Ok(Json(Catalogue { models: rows.iter().filter_map(ModelInfo::from_row).collect() }))
}

/// One model version (`NAME` for the newest active one, or `NAME@VERSION`, retired ones
/// included): its plans, fingerprints, manifest and signed downloads of its two files, which
/// the client needs to pack images and read results.
#[utoipa::path(get, path = "/v1/models/{model}", operation_id = "get_model", tag = "models", security(("tenant_token" = [])),
    params(("model" = String, Path, description = "NAME or NAME@VERSION",
        pattern = r"^[a-z0-9][a-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?$")),
    responses((status = 200, body = ModelDetail), (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn detail(
    _: Caller,
    State(state): State<AppState>,
    ApiPath(model): ApiPath<String>,
) -> ApiResult<Json<ModelDetail>> {
    let reference = registry::parse_ref(&model)?;
    let info = registry::resolve(&state.pool, &reference).await?;
    let row = models::get(&state.pool, &info.name, info.version as i32)
        .await?
        .ok_or_else(|| ApiError::internal("reading the registry", "a resolved version vanished"))?;
    let (onnx, manifest) = registry::file_keys(&info.name, info.version as i32)?;
    let expiry = state.config.presign_expiry();
    let files = ModelFiles {
        onnx: state.store.presign_get(&onnx, expiry).await?.into(),
        manifest: state.store.presign_get(&manifest, expiry).await?.into(),
    };
    Ok(Json(ModelDetail { model: info, manifest: row.manifest.unwrap_or_default(), files }))
}

/// Announces a model version: records it as `uploading` and answers one presigned `PUT` per
/// file. The version must be new (409 `model_exists` otherwise: versions are immutable).
#[utoipa::path(post, path = "/v1/admin/models", operation_id = "announce_model", tag = "admin", security(("admin_token" = [])),
    request_body = AnnounceModel,
    responses((status = 201, body = ModelAnnounced), (status = 401, body = Problem),
              (status = 409, description = "The version exists", body = Problem), (status = 422, body = Problem)))]
pub async fn announce(
    _: Operator,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AnnounceModel>,
) -> ApiResult<(StatusCode, Json<ModelAnnounced>)> {
    let version = i32::try_from(body.version)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| ApiError::unprocessable("invalid_model", "a version is a number from 1 to 2^31 - 1"))?;
    let reference = ModelRef::pinned(body.name.clone(), version);
    let onnx_sha256 = parse_sha256(&body.onnx_sha256)?;
    let max_onnx = blindfold_nn::registry::MAX_MODEL_FILE_BYTES.min(state.config.max_upload_bytes);
    if body.onnx_bytes == 0 || body.onnx_bytes > max_onnx {
        return Err(ApiError::unprocessable(
            "invalid_size",
            format!("onnx_bytes must be between 1 and {max_onnx}, not {}", body.onnx_bytes),
        ));
    }
    if body.manifest_bytes == 0 || body.manifest_bytes > MAX_MANIFEST_BYTES {
        return Err(ApiError::unprocessable(
            "invalid_size",
            format!("manifest_bytes must be between 1 and {MAX_MANIFEST_BYTES}, not {}", body.manifest_bytes),
        ));
    }
    let announcement = Announcement {
        model: reference.clone(),
        onnx_sha256,
        onnx_bytes: body.onnx_bytes as i64,
        manifest_bytes: body.manifest_bytes as i64,
    };
    // Checked before the row exists, so a bad name leaves nothing behind.
    let (onnx, manifest) = registry::file_keys(&reference.name, version)?;
    let row = registry::announce(&state.pool, &announcement).await?;
    let expiry = state.config.presign_expiry();
    let uploads = ModelFiles {
        onnx: state.store.presign_put(&onnx, body.onnx_bytes, expiry).await?.into(),
        manifest: state.store.presign_put(&manifest, body.manifest_bytes, expiry).await?.into(),
    };
    tracing::info!(model = %reference, bytes = body.onnx_bytes, "model announced");
    Ok((
        StatusCode::CREATED,
        Json(ModelAnnounced { model: row.reference().to_string(), state: row.state.to_string(), uploads }),
    ))
}

/// Verifies an announced version's uploaded files (sizes, the ONNX file's SHA-256, the
/// manifest against the network and the announcement), compiles both plans on ≥ 128-bit
/// parameters, and activates the version. A refusal names the file, node or layer at fault and
/// removes the version and its files, so it can be announced again.
#[utoipa::path(post, path = "/v1/admin/models/{model}/complete", operation_id = "complete_model", tag = "admin", security(("admin_token" = [])),
    params(("model" = String, Path, description = "NAME@VERSION",
        pattern = r"^[a-z0-9][a-z0-9._-]{0,63}@[1-9][0-9]{0,8}$")),
    responses((status = 200, body = ModelRegistered), (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "A file is not uploaded yet", body = Problem),
              (status = 422, description = "Refused; nothing was registered", body = Problem),
              (status = 503, description = "Busy verifying other uploads (`busy`; see Retry-After)", body = Problem)))]
pub async fn complete(
    _: Operator,
    State(state): State<AppState>,
    ApiPath(model): ApiPath<String>,
) -> ApiResult<Json<ModelRegistered>> {
    let reference = registry::parse_ref(&model)?;
    let _permit = state.verification_permit()?;
    let completed = registry::complete(&state.pool, &state.store, &reference).await?;
    Ok(Json(ModelRegistered { model: completed.info, refused_packings: completed.refused_packings }))
}

/// Retires a version: it takes no new key sets or jobs, while those queued or running finish.
/// Retiring a retired version answers it unchanged.
#[utoipa::path(post, path = "/v1/admin/models/{model}/retire", operation_id = "retire_model", tag = "admin", security(("admin_token" = [])),
    params(("model" = String, Path, description = "NAME@VERSION",
        pattern = r"^[a-z0-9][a-z0-9._-]{0,63}@[1-9][0-9]{0,8}$")),
    responses((status = 200, body = ModelInfo), (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
pub async fn retire(
    _: Operator,
    State(state): State<AppState>,
    ApiPath(model): ApiPath<String>,
) -> ApiResult<Json<ModelInfo>> {
    let reference = registry::parse_ref(&model)?;
    let Some(version) = reference.version else {
        return Err(ApiError::unprocessable("invalid_model", "retire NAME@VERSION: one version, not a bare name"));
    };
    let Some(row) = models::retire(&state.pool, &reference.name, version).await? else {
        return Err(ApiError::not_found("registered model", &reference));
    };
    tracing::info!(model = %reference, "model retired");
    ModelInfo::from_row(&row)
        .map(Json)
        .ok_or_else(|| ApiError::internal("reading the registry", format!("row {reference} does not parse")))
}

/// Every version in every state (uploading, active, retired).
#[utoipa::path(get, path = "/v1/admin/models", operation_id = "list_model_versions", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = ModelRecordList), (status = 401, body = Problem)))]
pub async fn list_all(_: Operator, State(state): State<AppState>) -> ApiResult<Json<ModelRecordList>> {
    let rows = models::list(&state.pool, true).await?;
    let models = rows
        .iter()
        .map(|row| {
            let fingerprints = ModelInfo::from_row(row)
                .map(|info| info.packings.iter().map(|p| format!("{}:{}", p.packing, p.params_fingerprint)).collect())
                .unwrap_or_default();
            ModelRecord {
                name: row.name.clone(),
                version: row.version as u32,
                state: row.state.to_string(),
                onnx_sha256: row.onnx_sha256_hex(),
                onnx_bytes: row.onnx_bytes as u64,
                params_fingerprints: fingerprints,
                created_at: row.created_at,
                activated_at: row.activated_at,
                retired_at: row.retired_at,
            }
        })
        .collect();
    Ok(Json(ModelRecordList { models }))
}

fn parse_sha256(text: &str) -> ApiResult<[u8; 32]> {
    let bad = || ApiError::unprocessable("invalid_sha256", "onnx_sha256 is 64 hexadecimal digits");
    if text.len() != 64 || !text.is_ascii() {
        return Err(bad());
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(bytes)
}
