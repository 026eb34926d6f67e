//! Health, readiness and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::wire::{Health, HealthCheck};

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".to_owned(), checks: Vec::new() })
}

/// The database and the bucket are reachable.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready", body = Health),
    (status = 503, description = "A dependency is unreachable", body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let database = match sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool).await {
        Ok(_) => "ok".to_owned(),
        Err(error) => format!("unreachable: {error}"),
    };
    let storage = match state.store.sdk().head_bucket().bucket(state.store.bucket()).send().await {
        Ok(_) => "ok".to_owned(),
        Err(error) => format!("unreachable: {}", aws_error(&error)),
    };
    let ready = database == "ok" && storage == "ok";
    let checks = vec![
        HealthCheck { name: "database".to_owned(), status: database },
        HealthCheck { name: "object_storage".to_owned(), status: storage },
    ];
    let status = if ready { "ok" } else { "unavailable" };
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(Health { status: status.to_owned(), checks }))
}

fn aws_error(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Prometheus metrics (text format): HTTP requests and latency by route, jobs by state, mean
/// queue wait and run time. Served on the metrics listener only (`--metrics-bind`), not part of
/// the public API or its OpenAPI document.
pub async fn metrics(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let text = state.metrics.render(&state.pool).await.map_err(|e| ApiError::internal("reading job metrics", e))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
