//! Tenants, their API tokens and their key sets: the small records the API needs.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;

use crate::{KeySetId, Result, TenantId, TokenId};

/// Prefix of every API token, so leaked tokens are recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "bft_";

/// A hospital.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct Tenant {
    /// The tenant.
    pub id: TenantId,
    /// Its unique name.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A freshly issued API token: the only time the secret exists outside the caller's hands.
/// Its `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The token's record.
    pub id: TokenId,
    /// The secret, `bft_` and 64 hex digits (256 random bits). Only its SHA-256 is stored.
    pub secret: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// A tenant's evaluation keys, stored as an object.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct KeySet {
    /// The key set.
    pub id: KeySetId,
    /// Whose keys.
    pub tenant_id: TenantId,
    /// The CKKS parameter set the keys belong to (compared with the model's).
    pub params_fingerprint: String,
    /// Where the keys are in object storage.
    pub object_key: String,
    /// Their size.
    pub size_bytes: i64,
    /// The bundle's ETag when the API verified it (`None` for key sets registered before ETags
    /// were kept): read it with `If-Match`.
    #[sqlx(default)]
    pub object_etag: Option<String>,
    /// When they were registered.
    pub created_at: DateTime<Utc>,
}

/// Creates a tenant.
pub async fn create_tenant(db: impl PgExecutor<'_>, name: &str) -> Result<Tenant> {
    Ok(sqlx::query_as("INSERT INTO tenants (id, name) VALUES ($1, $2) RETURNING *")
        .bind(TenantId::new_random())
        .bind(name)
        .fetch_one(db)
        .await?)
}

/// A tenant by name.
pub async fn tenant_by_name(db: impl PgExecutor<'_>, name: &str) -> Result<Option<Tenant>> {
    Ok(sqlx::query_as("SELECT * FROM tenants WHERE name = $1").bind(name).fetch_optional(db).await?)
}

/// Issues a new random API token for `tenant`; only its SHA-256 is stored.
pub async fn issue_token(db: impl PgExecutor<'_>, tenant: TenantId, label: &str) -> Result<IssuedToken> {
    let random: [u8; 32] = rand::random();
    let secret = format!("{TOKEN_PREFIX}{}", hex(&random));
    let id = TokenId::new_random();
    sqlx::query("INSERT INTO api_tokens (id, tenant_id, token_sha256, label) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(tenant)
        .bind(token_hash(&secret).as_slice())
        .bind(label)
        .execute(db)
        .await?;
    Ok(IssuedToken { id, secret })
}

/// The tenant an unrevoked token belongs to.
pub async fn tenant_for_token(db: impl PgExecutor<'_>, secret: &str) -> Result<Option<TenantId>> {
    Ok(sqlx::query_scalar("SELECT tenant_id FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL")
        .bind(token_hash(secret).as_slice())
        .fetch_optional(db)
        .await?)
}

/// Revokes a token; returns false if it was unknown or already revoked.
pub async fn revoke_token(db: impl PgExecutor<'_>, token: TokenId) -> Result<bool> {
    let revoked = sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(token)
        .execute(db)
        .await?
        .rows_affected();
    Ok(revoked == 1)
}

/// Registers a tenant's key set.
pub async fn insert_key_set(
    db: impl PgExecutor<'_>,
    tenant: TenantId,
    params_fingerprint: &str,
    object_key: &str,
    size_bytes: i64,
) -> Result<KeySet> {
    Ok(sqlx::query_as(
        r#"
        INSERT INTO key_sets (id, tenant_id, params_fingerprint, object_key, size_bytes)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING *
        "#,
    )
    .bind(KeySetId::new_random())
    .bind(tenant)
    .bind(params_fingerprint)
    .bind(object_key)
    .bind(size_bytes)
    .fetch_one(db)
    .await?)
}

/// A tenant's key set (`None` if unknown or another tenant's).
pub async fn key_set(db: impl PgExecutor<'_>, tenant: TenantId, id: KeySetId) -> Result<Option<KeySet>> {
    Ok(sqlx::query_as("SELECT * FROM key_sets WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(tenant)
        .fetch_optional(db)
        .await?)
}

/// Deletes a tenant's key set; returns false if it was unknown. Jobs that named it keep
/// running with `key_set_id` unset (their worker fails them as bad input).
pub async fn delete_key_set(db: impl PgExecutor<'_>, tenant: TenantId, id: KeySetId) -> Result<bool> {
    let deleted = sqlx::query("DELETE FROM key_sets WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(tenant)
        .execute(db)
        .await?
        .rows_affected();
    Ok(deleted == 1)
}

/// SHA-256 of a token's text.
fn token_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}
