//! Bearer-token authentication: tenants (tokens stored as SHA-256 by the queue crate) and the
//! operator (one admin token from the settings).
//!
//! A tenant token is looked up by its SHA-256, so the lookup's timing depends on the hash, not
//! on how much of a guessed token is right. The admin token's hash is compared with
//! [`subtle::ConstantTimeEq`]. Tokens are never logged.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use blindfold_queue::TenantId;
use blindfold_queue::tenants::{self, TOKEN_PREFIX};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated tenant.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub TenantId);

/// An authenticated operator.
#[derive(Debug, Clone, Copy)]
pub struct Operator;

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be \"Bearer <token>\""))?
        .trim();
    if token.is_empty() || token.len() > 256 {
        return Err(ApiError::unauthorized("malformed bearer token"));
    }
    Ok(token)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let well_formed = token
            .strip_prefix(TOKEN_PREFIX)
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if !well_formed {
            return Err(ApiError::unauthorized("malformed bearer token"));
        }
        match tenants::tenant_for_token(&state.pool, token).await? {
            Some(tenant) => {
                tracing::Span::current().record("tenant", tracing::field::display(tenant.0));
                Ok(Caller(tenant))
            }
            None => Err(ApiError::unauthorized("unknown or revoked token")),
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let Some(expected) = state.admin_token_sha256 else {
            return Err(ApiError::unauthorized("no admin token is configured on this server"));
        };
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if bool::from(presented.ct_eq(&expected)) {
            Ok(Operator)
        } else {
            Err(ApiError::unauthorized("wrong admin token"))
        }
    }
}
