//! Key sets: a tenant's evaluation keys (relinearization and Galois keys; never a secret key).

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use blindfold_batch::{KeyBundle, KeyBundleExpect};
use blindfold_store::{KeysetId, ObjectKey, ObjectName, Prefix};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::uploads::{self, Pending};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::wire::{CreateKeySet, KeySetCreated, KeySetList, KeySetView, UploadDone};

/// Most key sets `GET /v1/key-sets` answers (a tenant keeps a handful).
const MAX_LISTED: i64 = 1000;

/// A registered key set, as the API reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Registered {
    id: Uuid,
    params_fingerprint: String,
    size_bytes: i64,
    model: Option<String>,
    model_version: Option<i32>,
    packing: Option<String>,
    created_at: DateTime<Utc>,
}

/// What a job needs to know of a ready key set.
#[derive(Debug, Clone)]
pub(crate) struct ReadyKeySet {
    pub(crate) params_fingerprint: String,
    pub(crate) model: Option<String>,
    pub(crate) model_version: Option<i32>,
    pub(crate) packing: Option<String>,
}

impl From<Registered> for KeySetView {
    fn from(row: Registered) -> Self {
        KeySetView {
            id: row.id,
            status: "ready".to_owned(),
            model: row.model,
            model_version: row.model_version.and_then(|v| u32::try_from(v).ok()),
            packing: row.packing,
            params_fingerprint: row.params_fingerprint,
            size_bytes: row.size_bytes,
            created_at: row.created_at,
        }
    }
}

fn pending_view(row: &Pending) -> KeySetView {
    KeySetView {
        id: row.id,
        status: "awaiting_upload".to_owned(),
        model: Some(row.model.clone()),
        model_version: row.model_version.and_then(|v| u32::try_from(v).ok()),
        packing: Some(row.packing.clone()),
        params_fingerprint: row.params_fingerprint.clone(),
        size_bytes: row.size_bytes,
        created_at: row.created_at,
    }
}

async fn registered(state: &AppState, tenant: Uuid, id: Uuid) -> ApiResult<Option<Registered>> {
    Ok(sqlx::query_as(
        "SELECT id, params_fingerprint, size_bytes, model, model_version, packing, created_at \
         FROM key_sets WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(&state.pool)
    .await?)
}

/// A tenant's ready key set, for job creation (`None` if unknown, another tenant's or not
/// completed).
pub(crate) async fn ready(state: &AppState, tenant: Uuid, id: Uuid) -> ApiResult<Option<ReadyKeySet>> {
    Ok(registered(state, tenant, id).await?.map(|row| ReadyKeySet {
        params_fingerprint: row.params_fingerprint,
        model: row.model,
        model_version: row.model_version,
        packing: row.packing,
    }))
}

/// Announces a key set: answers its id (the client's own, or a new one to write into the
/// bundle) and a presigned upload. An id that is already announced or registered answers 409.
#[utoipa::path(post, path = "/v1/key-sets", operation_id = "create_key_set", tag = "key-sets", security(("tenant_token" = [])),
    request_body = CreateKeySet,
    responses((status = 201, body = KeySetCreated), (status = 400, body = Problem), (status = 401, body = Problem),
               (status = 409, description = "The id is taken", body = Problem),
               (status = 413, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateKeySet>,
) -> ApiResult<(StatusCode, Json<KeySetCreated>)> {
    let reference = crate::registry::parse_ref(&body.model)?;
    let (model, packing) = super::model_packing(&state, &reference, body.packing.as_deref()).await?;
    let size = uploads::check_size(&state, body.size_bytes)?;
    // A bundle holds exactly the keys the plan needs, so its size is known to the byte: no
    // tenant can make the service store, download and verify more than that.
    if packing.bundle_bytes != 0 && body.size_bytes != packing.bundle_bytes {
        return Err(ApiError::unprocessable(
            "invalid_size",
            format!(
                "a key bundle for {} in the {} packing is exactly {} bytes (the plan's relinearization and \
                 rotation keys), not {}: generate the keys for this model and packing with `blindfold keys`",
                model.reference(),
                packing.packing.name(),
                packing.bundle_bytes,
                body.size_bytes
            ),
        ));
    }
    let id = body.id.unwrap_or_else(Uuid::new_v4);
    let taken = || {
        ApiError::conflict(
            "key_set_exists",
            format!("key set {id} is already announced or registered: GET it, or DELETE an unfinished one first"),
        )
    };
    // Any tenant's: ids are random UUIDs, so a clash is a repeat, never a probe that succeeds.
    let registered: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM key_sets WHERE id = $1").bind(id).fetch_optional(&state.pool).await?;
    if registered.is_some() {
        return Err(taken());
    }
    let announcing = crate::limits::Announcing { bytes: body.size_bytes, job: false };
    crate::limits::check_quotas(&state, tenant.0, announcing).await?;
    let key = ObjectKey::keyset(
        &uploads::store_tenant(tenant.0)?,
        &KeysetId::new(id.to_string()).map_err(|e| ApiError::internal("building an object key", e))?,
        &ObjectName::new("keys.bfkb").map_err(|e| ApiError::internal("building an object key", e))?,
    );
    let (upload, upload_id) = uploads::presign(&state, &key, body.size_bytes).await?;
    let row: Option<Pending> = sqlx::query_as(
        r#"
        INSERT INTO pending_uploads (id, tenant_id, kind, model, packing, params_fingerprint, object_key, size_bytes,
                                     upload_id, model_version)
        VALUES ($1, $2, 'key_set', $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (id) DO NOTHING
        RETURNING *
        "#,
    )
    .bind(id)
    .bind(tenant.0)
    .bind(&model.name)
    .bind(packing.packing.name())
    .bind(&packing.params_fingerprint)
    .bind(key.as_str())
    .bind(size)
    .bind(&upload_id)
    .bind(model.version as i32)
    .fetch_optional(&state.pool)
    .await?;
    let Some(row) = row else {
        if let Some(upload_id) = &upload_id {
            let _ = state.store.abort_upload(&key, upload_id).await;
        }
        return Err(taken());
    };
    tracing::info!(key_set = %id, model = %model.reference(), size, "key set announced");
    Ok((StatusCode::CREATED, Json(KeySetCreated { key_set: pending_view(&row), upload })))
}

/// Verifies the uploaded bundle (its key-set id, the model's parameter fingerprint, every
/// checksum, and that it holds no secret key) and registers the key set. A refused bundle is
/// deleted from storage.
#[utoipa::path(post, path = "/v1/key-sets/{key_set_id}/complete", operation_id = "complete_key_set", tag = "key-sets", security(("tenant_token" = [])),
    params(("key_set_id" = Uuid, Path, description = "The key set")),
    request_body(content = UploadDone, description = "The parts, for a multipart upload; may be empty"),
    responses((status = 200, body = KeySetView), (status = 404, body = Problem), (status = 409, body = Problem),
               (status = 422, description = "The bundle was refused", body = Problem),
               (status = 503, description = "Busy verifying other uploads (`busy`; see Retry-After)", body = Problem)))]
pub async fn complete(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<KeySetView>> {
    let done = super::upload_done(body)?;
    let Some(pending) = uploads::pending(&state, tenant.0, "key_set", id).await? else {
        return match registered(&state, tenant.0, id).await? {
            Some(row) => Ok(Json(row.into())),
            None => Err(ApiError::not_found("key set", id)),
        };
    };
    let _permit = state.verification_permit()?;
    let (key, pin) = uploads::confirm(&state, &pending, &done).await?;
    let expected = uploads::fingerprint(&pending.params_fingerprint)?;
    let file = tempfile::tempfile().map_err(|e| ApiError::internal("creating a temporary file", e))?;
    let mut file = tokio::fs::File::from_std(file);
    state.store.download_pinned(&key, &pin, &mut file).await?;
    let std_file = file.into_std().await;
    let verdict = tokio::task::spawn_blocking(move || {
        use std::io::Seek;
        let mut std_file = std_file;
        std_file.rewind().map_err(|e| e.to_string())?;
        let expect = KeyBundleExpect::new().fingerprint(expected).key_set(id);
        KeyBundle::read(std::io::BufReader::new(std_file), &expect).map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::internal("verifying a key bundle", e))?;
    if let Err(reason) = verdict {
        // Whatever it was (a secret key included), it does not stay in storage.
        state.store.delete(&key).await?;
        tracing::warn!(key_set = %id, "key bundle refused");
        return Err(ApiError::unprocessable("invalid_key_bundle", format!("the key bundle was refused: {reason}")));
    }
    let mut tx = state.pool.begin().await?;
    let removed = sqlx::query("DELETE FROM pending_uploads WHERE id = $1").bind(id).execute(&mut *tx).await?;
    if removed.rows_affected() != 1 {
        return Err(ApiError::conflict("concurrent_update", "the key set was completed or deleted meanwhile"));
    }
    let row: Registered = sqlx::query_as(
        r#"
        INSERT INTO key_sets (id, tenant_id, params_fingerprint, object_key, size_bytes, model, packing, model_version,
                              object_etag)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        RETURNING id, params_fingerprint, size_bytes, model, model_version, packing, created_at
        "#,
    )
    .bind(id)
    .bind(tenant.0)
    .bind(&pending.params_fingerprint)
    .bind(&pending.object_key)
    .bind(pending.size_bytes)
    .bind(&pending.model)
    .bind(&pending.packing)
    .bind(pending.model_version)
    .bind(&pin.e_tag)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(key_set = %id, "key set ready");
    Ok(Json(row.into()))
}

/// A key set (announced or ready).
#[utoipa::path(get, path = "/v1/key-sets/{key_set_id}", operation_id = "get_key_set", tag = "key-sets", security(("tenant_token" = [])),
    params(("key_set_id" = Uuid, Path, description = "The key set")),
    responses((status = 200, body = KeySetView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn get_one(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<KeySetView>> {
    if let Some(row) = registered(&state, tenant.0, id).await? {
        return Ok(Json(row.into()));
    }
    match uploads::pending(&state, tenant.0, "key_set", id).await? {
        Some(row) => Ok(Json(pending_view(&row))),
        None => Err(ApiError::not_found("key set", id)),
    }
}

/// Deletes a key set and its stored keys. Jobs already submitted with it fail as bad input.
#[utoipa::path(delete, path = "/v1/key-sets/{key_set_id}", operation_id = "delete_key_set", tag = "key-sets", security(("tenant_token" = [])),
    params(("key_set_id" = Uuid, Path, description = "The key set")),
    responses((status = 204, description = "Deleted"), (status = 404, body = Problem)))]
pub async fn delete(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let registered =
        blindfold_queue::tenants::delete_key_set(&state.pool, tenant, blindfold_queue::KeySetId(id)).await?;
    let pending: Option<Pending> =
        sqlx::query_as("DELETE FROM pending_uploads WHERE id = $1 AND tenant_id = $2 AND kind = 'key_set' RETURNING *")
            .bind(id)
            .bind(tenant.0)
            .fetch_optional(&state.pool)
            .await?;
    if let Some(Pending { upload_id: Some(upload_id), object_key, .. }) = &pending
        && let Ok(key) = ObjectKey::parse(object_key)
    {
        // Unfinished parts would otherwise stay in the store (and on the bill).
        let _ = state.store.abort_upload(&key, upload_id).await;
    }
    let pending = pending.is_some();
    if !registered && !pending {
        return Err(ApiError::not_found("key set", id));
    }
    let prefix = Prefix::keyset(
        &uploads::store_tenant(tenant.0)?,
        &KeysetId::new(id.to_string()).map_err(|e| ApiError::internal("building an object key", e))?,
    );
    state.store.delete_prefix(&prefix).await?;
    tracing::info!(key_set = %id, "key set deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's key sets (ready and announced), newest first.
#[utoipa::path(get, path = "/v1/key-sets", operation_id = "list_key_sets", tag = "key-sets", security(("tenant_token" = [])),
    responses((status = 200, body = KeySetList), (status = 401, body = Problem)))]
pub async fn list(Caller(tenant): Caller, State(state): State<AppState>) -> ApiResult<Json<KeySetList>> {
    let ready: Vec<Registered> = sqlx::query_as(
        "SELECT id, params_fingerprint, size_bytes, model, model_version, packing, created_at \
         FROM key_sets WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT $2",
    )
    .bind(tenant.0)
    .bind(MAX_LISTED)
    .fetch_all(&state.pool)
    .await?;
    let pending: Vec<Pending> = sqlx::query_as(
        "SELECT * FROM pending_uploads WHERE tenant_id = $1 AND kind = 'key_set' ORDER BY created_at DESC LIMIT $2",
    )
    .bind(tenant.0)
    .bind(MAX_LISTED)
    .fetch_all(&state.pool)
    .await?;
    let mut key_sets: Vec<KeySetView> =
        ready.into_iter().map(KeySetView::from).chain(pending.iter().map(pending_view)).collect();
    key_sets.sort_by_key(|k| std::cmp::Reverse(k.created_at));
    Ok(Json(KeySetList { key_sets }))
}
