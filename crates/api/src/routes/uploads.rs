//! Announced uploads (`pending_uploads`): presigning, and confirming that what the client
//! uploaded is there, complete and of the announced size.

use blindfold_ckks::Fingerprint;
use blindfold_store::{ObjectKey, Pinned, TenantId as StoreTenant};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::wire::{Upload, UploadDone};

/// A row of `pending_uploads`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Pending {
    pub id: Uuid,
    pub model: String,
    pub model_version: Option<i32>,
    pub packing: String,
    pub params_fingerprint: String,
    pub key_set_id: Option<Uuid>,
    pub image_count: Option<i32>,
    pub priority: i16,
    pub idempotency_key: Option<String>,
    pub object_key: String,
    pub size_bytes: i64,
    pub upload_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A tenant's pending upload of `kind` (`None` if unknown or another tenant's).
pub async fn pending(state: &AppState, tenant: Uuid, kind: &str, id: Uuid) -> ApiResult<Option<Pending>> {
    Ok(sqlx::query_as("SELECT * FROM pending_uploads WHERE id = $1 AND tenant_id = $2 AND kind = $3")
        .bind(id)
        .bind(tenant)
        .bind(kind)
        .fetch_optional(&state.pool)
        .await?)
}

/// The store's name for a tenant.
pub fn store_tenant(tenant: Uuid) -> ApiResult<StoreTenant> {
    StoreTenant::new(tenant.to_string()).map_err(|e| ApiError::internal("building an object key", e))
}

/// Checks a declared upload size.
pub fn check_size(state: &AppState, size: u64) -> ApiResult<i64> {
    let max = state.config.max_upload_bytes;
    if size == 0 || size > max {
        return Err(ApiError::unprocessable(
            "invalid_size",
            format!("size_bytes must be between 1 and {max} (the server's upload limit), not {size}"),
        ));
    }
    i64::try_from(size).map_err(|_| ApiError::unprocessable("invalid_size", "size_bytes is too large"))
}

/// A presigned upload of `size` bytes to `key`: one `PUT` up to one part, multipart above,
/// every request with its length signed. Returns the store's multipart upload id when there is
/// one.
pub async fn presign(state: &AppState, key: &ObjectKey, size: u64) -> ApiResult<(Upload, Option<String>)> {
    let expiry = state.config.upload_expiry(size);
    if size <= state.store.part_size() as u64 {
        let request = state.store.presign_put(key, size, expiry).await?;
        Ok((Upload::Single { request: request.into() }, None))
    } else {
        let upload = state.store.presign_multipart(key, size, expiry).await?;
        let id = upload.upload_id.clone();
        Ok((upload.into(), Some(id)))
    }
}

/// Finishes a multipart upload (if it was one) and checks the object is there with the
/// announced size. Returns the object as it is now: verify it through the pin and record the
/// pin, so that what was verified is what everyone reads.
pub async fn confirm(state: &AppState, pending: &Pending, done: &UploadDone) -> ApiResult<(ObjectKey, Pinned)> {
    let key = ObjectKey::parse(&pending.object_key).map_err(|e| ApiError::internal("reading an object key", e))?;
    if let Some(upload_id) = &pending.upload_id {
        if done.parts.is_empty() {
            return Err(ApiError::unprocessable(
                "parts_required",
                "this was a multipart upload: send the parts (part_number and e_tag of each PUT)",
            ));
        }
        let parts: Vec<_> = done.parts.iter().cloned().map(Into::into).collect();
        if let Err(error) = state.store.complete_presigned(&key, upload_id, &parts).await {
            return Err(ApiError::unprocessable(
                "upload_incomplete",
                format!("the store refused to complete the multipart upload: {error}"),
            ));
        }
        sqlx::query("UPDATE pending_uploads SET upload_id = NULL WHERE id = $1")
            .bind(pending.id)
            .execute(&state.pool)
            .await?;
    }
    let Some(info) = state.store.head(&key).await? else {
        return Err(ApiError::conflict(
            "upload_missing",
            "nothing has been uploaded yet: PUT the file to the presigned URL first",
        ));
    };
    if i64::try_from(info.size).ok() != Some(pending.size_bytes) {
        return Err(ApiError::unprocessable(
            "size_mismatch",
            format!("the uploaded object has {} bytes, {} were announced", info.size, pending.size_bytes),
        ));
    }
    Ok((key, info.pinned()))
}

/// Parses a hex fingerprint as stored.
pub fn fingerprint(hex: &str) -> ApiResult<Fingerprint> {
    let bad = || ApiError::internal("reading a fingerprint", hex);
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(Fingerprint(bytes))
}
