//! Operator routes: tenants and their tokens, authorised by the admin token.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use blindfold_queue::tenants;
use blindfold_queue::{TenantId, TokenId};
use uuid::Uuid;

use crate::auth::Operator;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::wire::{CreateTenant, CreateToken, TenantList, TenantView, TokenIssued};

/// Creates a tenant (a hospital).
#[utoipa::path(post, path = "/v1/admin/tenants", tag = "admin", security(("admin_token" = [])),
    request_body = CreateTenant,
    responses((status = 201, body = TenantView), (status = 401, body = Problem),
              (status = 409, description = "Name taken", body = Problem), (status = 422, body = Problem)))]
pub async fn create_tenant(
    _: Operator,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateTenant>,
) -> ApiResult<(StatusCode, Json<TenantView>)> {
    let name = body.name.trim();
    // PostgreSQL's text cannot hold NUL, and a name reaches operators' terminals verbatim.
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_name",
            "a tenant name is 1 to 200 characters, none of them control characters",
        ));
    }
    if tenants::tenant_by_name(&state.pool, name).await?.is_some() {
        return Err(ApiError::conflict("name_taken", format!("a tenant named {name:?} exists")));
    }
    let tenant = tenants::create_tenant(&state.pool, name).await?;
    tracing::info!(tenant = %tenant.id.0, "tenant created");
    Ok((StatusCode::CREATED, Json(TenantView { id: tenant.id.0, name: tenant.name, created_at: tenant.created_at })))
}

/// Issues an API token for a tenant. The token is in this answer only; the service keeps its
/// SHA-256.
#[utoipa::path(post, path = "/v1/admin/tenants/{tenant_id}/tokens", tag = "admin", security(("admin_token" = [])),
    params(("tenant_id" = Uuid, Path, description = "The tenant")),
    request_body = CreateToken,
    responses((status = 201, body = TokenIssued), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn issue_token(
    _: Operator,
    State(state): State<AppState>,
    ApiPath(tenant_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<TokenIssued>)> {
    let exists: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1").bind(tenant_id).fetch_optional(&state.pool).await?;
    if exists.is_none() {
        return Err(ApiError::not_found("tenant", tenant_id));
    }
    let label = body.label.unwrap_or_default();
    if label.chars().count() > 200 || label.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_label",
            "a token label is at most 200 characters, none of them control characters",
        ));
    }
    let issued = tenants::issue_token(&state.pool, TenantId(tenant_id), &label).await?;
    tracing::info!(tenant = %tenant_id, token_id = %issued.id.0, "token issued");
    Ok((StatusCode::CREATED, Json(TokenIssued { id: issued.id.0, tenant_id, token: issued.secret })))
}

/// Revokes a tenant's token; requests with it answer 401 from now on.
#[utoipa::path(delete, path = "/v1/admin/tenants/{tenant_id}/tokens/{token_id}", tag = "admin",
    security(("admin_token" = [])),
    params(("tenant_id" = Uuid, Path, description = "The tenant"), ("token_id" = Uuid, Path, description = "The token")),
    responses((status = 204, description = "Revoked"), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_token(
    _: Operator,
    State(state): State<AppState>,
    ApiPath((tenant_id, token_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    let belongs: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM api_tokens WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL")
            .bind(token_id)
            .bind(tenant_id)
            .fetch_optional(&state.pool)
            .await?;
    if belongs.is_none() || !tenants::revoke_token(&state.pool, TokenId(token_id)).await? {
        return Err(ApiError::not_found("active token", token_id));
    }
    tracing::info!(tenant = %tenant_id, token_id = %token_id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Every tenant, oldest first (operators look tenants up by name).
#[utoipa::path(get, path = "/v1/admin/tenants", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = TenantList), (status = 401, body = Problem)))]
pub async fn list_tenants(_: Operator, State(state): State<AppState>) -> ApiResult<Json<TenantList>> {
    let rows: Vec<(Uuid, String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT id, name, created_at FROM tenants ORDER BY created_at, name")
            .fetch_all(&state.pool)
            .await?;
    let tenants = rows.into_iter().map(|(id, name, created_at)| TenantView { id, name, created_at }).collect();
    Ok(Json(TenantList { tenants }))
}

/// Revokes a token by its id alone (whichever tenant it belongs to).
#[utoipa::path(delete, path = "/v1/admin/tokens/{token_id}", tag = "admin", security(("admin_token" = [])),
    params(("token_id" = Uuid, Path, description = "The token")),
    responses((status = 204, description = "Revoked"), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_token_by_id(
    _: Operator,
    State(state): State<AppState>,
    ApiPath(token_id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    if !tenants::revoke_token(&state.pool, TokenId(token_id)).await? {
        return Err(ApiError::not_found("active token", token_id));
    }
    tracing::info!(token_id = %token_id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
