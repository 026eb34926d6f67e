//! The router: every route is registered together with its OpenAPI operation, so the document
//! and the routes cannot drift apart.

mod admin;
mod jobs;
mod key_sets;
mod models;
mod ops;
mod uploads;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::get;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;
use crate::telemetry;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(title = "Blindfold API", description = "Private medical-image inference under CKKS: key sets, jobs, presigned transfers."),
    modifiers(&BearerAuth),
    tags((name = "key-sets"), (name = "jobs"), (name = "models"), (name = "admin"), (name = "ops"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("tenant_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        components.add_security_scheme("admin_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(key_sets::create, key_sets::list))
        .routes(routes!(key_sets::get_one, key_sets::delete))
        .routes(routes!(key_sets::complete))
        .routes(routes!(jobs::create, jobs::list))
        .routes(routes!(jobs::get_one))
        .routes(routes!(jobs::submit))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::result))
        .routes(routes!(models::catalogue))
        .routes(routes!(models::detail))
        .routes(routes!(models::announce, models::list_all))
        .routes(routes!(models::complete))
        .routes(routes!(models::retire))
        .routes(routes!(admin::create_tenant, admin::list_tenants))
        .routes(routes!(admin::issue_token))
        .routes(routes!(admin::revoke_token))
        .routes(routes!(admin::revoke_token_by_id))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
}

/// The router of the metrics listener: `/metrics` only (never on the public port).
pub(crate) fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(ops::metrics)).with_state(state)
}

/// The OpenAPI document of every route (`GET /openapi.json` serves it).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api_router().split_for_parts();
    document_common_answers(&mut doc);
    add_openapi_path(&mut doc);
    doc
}

/// Adds the answers every route of a kind gives, which the extractors (not the handlers)
/// produce, so no handler's annotation can forget them: 401 on every route that needs a token,
/// 400 `invalid_id` on every route with a path parameter, and on every route with a JSON body
/// 400 `malformed_json`/`invalid_body`, 413 `body_too_large` and 415 (not JSON).
fn document_common_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::content::ContentBuilder;
    use utoipa::openapi::response::ResponseBuilder;
    use utoipa::openapi::{Ref, RefOr};
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                )
                .build(),
        )
    };
    for (path, item) in &mut doc.paths.paths {
        let operations = [&mut item.get, &mut item.post, &mut item.delete, &mut item.put, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            let answers = &mut operation.responses.responses;
            if operation.security.as_ref().is_some_and(|security| !security.is_empty()) {
                answers.entry("401".to_owned()).or_insert_with(|| problem("No valid token (`unauthorized`)"));
            }
            answers.entry("429".to_owned()).or_insert_with(|| {
                problem(
                    "Throttled, with `Retry-After` (`rate_limited`, `too_many_failed_authentications`), or a \
                     tenant quota reached (`quota_exceeded`)",
                )
            });
            if path.contains('{') {
                answers.entry("400".to_owned()).or_insert_with(|| problem("A malformed path parameter (`invalid_id`)"));
            }
            if operation.request_body.is_some() {
                answers.entry("400".to_owned()).or_insert_with(|| {
                    problem("A body that is not the schema's JSON (`malformed_json`, `invalid_body`)")
                });
                answers
                    .entry("413".to_owned())
                    .or_insert_with(|| problem("A body over the size limit (`body_too_large`)"));
                answers.entry("415".to_owned()).or_insert_with(|| problem("A body that is not `application/json`"));
            }
        }
    }
}

fn add_openapi_path(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::response::ResponseBuilder;
    let operation = OperationBuilder::new()
        .operation_id(Some("openapi"))
        .tag("ops")
        .summary(Some("This OpenAPI document"))
        .response("200", ResponseBuilder::new().description("The OpenAPI 3.1 document").build())
        .build();
    doc.paths.paths.insert("/openapi.json".to_owned(), PathItem::new(HttpMethod::Get, operation));
}

/// The application with its middleware.
pub fn router(state: AppState) -> Router {
    let (router, mut doc) = api_router().split_for_parts();
    document_common_answers(&mut doc);
    add_openapi_path(&mut doc);
    let doc = std::sync::Arc::new(doc);
    let max_body = state.config.max_body_bytes;
    router
        .route("/openapi.json", get(move || async move { axum::Json((*doc).clone()) }))
        .fallback(|| async {
            crate::error::ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "no_route",
                "no such route; see /openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            crate::error::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method; see /openapi.json",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::limits::throttle))
        .layer(axum::middleware::from_fn_with_state(state.clone(), telemetry::track))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(300)))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    // The path only: ids, never query strings or headers (tokens live there).
                    tracing::info_span!(
                        "request",
                        request_id = %id,
                        method = %request.method(),
                        path = %request.uri().path(),
                        tenant = tracing::field::Empty,
                    )
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// The model version and packing a request names (`throughput` by default), from the
/// registry; a retired version is refused.
async fn model_packing(
    state: &AppState,
    model: &blindfold_queue::ModelRef,
    packing: Option<&str>,
) -> crate::error::ApiResult<(crate::catalogue::ModelInfo, crate::catalogue::PackingInfo)> {
    use crate::error::ApiError;
    let info = crate::registry::serving(&state.pool, model).await?;
    let name = packing.unwrap_or("throughput");
    let Some(packing_info) = name.parse().ok().and_then(|packing| info.packing(packing)).cloned() else {
        let known: Vec<&str> = info.packings.iter().map(|p| p.packing.name()).collect();
        return Err(ApiError::unprocessable(
            "unknown_packing",
            format!("model {} has no packing {name:?}; it supports: {}", info.reference(), known.join(", ")),
        ));
    };
    Ok((info, packing_info))
}

/// The optional body of `complete`/`submit`: empty, or `{"parts": [...]}`.
fn upload_done(
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> crate::error::ApiResult<crate::wire::UploadDone> {
    use crate::error::ApiError;
    let body = body.map_err(|rejection| ApiError::new(rejection.status(), "body_too_large", rejection.body_text()))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(crate::wire::UploadDone::default());
    }
    serde_json::from_slice(&body).map_err(|error| {
        ApiError::new(axum::http::StatusCode::BAD_REQUEST, "malformed_json", format!("malformed JSON body: {error}"))
    })
}
