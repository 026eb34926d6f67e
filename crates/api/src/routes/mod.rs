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
    complete_document(&mut doc);
    doc
}

/// What the annotations leave out of the document: the answers the extractors give, the
/// media type of error answers, the links between operations and `/openapi.json` itself.
fn complete_document(doc: &mut utoipa::openapi::OpenApi) {
    document_common_answers(doc);
    label_problems(doc);
    add_links(doc);
    add_openapi_path(doc);
}

/// Adds the answers every route of a kind gives, which the extractors (not the handlers)
/// produce, so no handler's annotation can forget them: 401 on every route that needs a token,
/// 400 `invalid_id` on every route with a path parameter, and on every route with a JSON body
/// 400 `malformed_json`, 422 `invalid_body` (JSON of the wrong shape), 413 `body_too_large` and
/// 415 (not JSON).
fn document_common_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::content::ContentBuilder;
    use utoipa::openapi::response::ResponseBuilder;
    use utoipa::openapi::{Ref, RefOr};
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(PROBLEM_JSON, ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build())
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
                answers
                    .entry("400".to_owned())
                    .or_insert_with(|| problem("A body that is not JSON (`malformed_json`)"));
                answers.entry("422".to_owned()).or_insert_with(|| {
                    problem("JSON that does not fit the schema (`invalid_body`), or values the service refuses")
                });
                answers
                    .entry("413".to_owned())
                    .or_insert_with(|| problem("A body over the size limit (`body_too_large`)"));
                answers.entry("415".to_owned()).or_insert_with(|| problem("A body that is not `application/json`"));
            }
        }
    }
}

/// The media type of every error answer ([`crate::error::ApiError`]).
const PROBLEM_JSON: &str = "application/problem+json";

/// Error answers are `application/problem+json` (RFC 7807); an annotation's `body = Problem`
/// says `application/json`, which a client or tester checking content types would take at its
/// word, so every `Problem` answer is relabelled here rather than in each annotation.
fn label_problems(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    let problem = utoipa::openapi::Ref::from_schema_name("Problem").ref_location;
    for item in doc.paths.paths.values_mut() {
        let operations = [&mut item.get, &mut item.post, &mut item.delete, &mut item.put, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            for answer in operation.responses.responses.values_mut() {
                let RefOr::T(answer) = answer else { continue };
                let is_problem = answer.content.get("application/json").is_some_and(|content| {
                    matches!(&content.schema, Some(RefOr::Ref(reference)) if reference.ref_location == problem)
                });
                if is_problem && let Some(content) = answer.content.shift_remove("application/json") {
                    answer.content.insert(PROBLEM_JSON.to_owned(), content);
                }
            }
        }
    }
}

/// A link from an operation's answers to an operation they make possible.
struct Link {
    /// The operation whose answers carry the link.
    from: &'static str,
    /// The statuses of those answers.
    answers: &'static [&'static str],
    /// The link's name in the document.
    name: &'static str,
    /// The target operation.
    to: &'static str,
    /// The target's parameters, as runtime expressions (`$response.body#/…`).
    parameters: &'static [(&'static str, &'static str)],
}

/// What each created (or submitted, or registered) resource leads to, so that a client
/// generator or a stateful tester can chain the calls: create a key set, then get, complete or
/// delete it, and so on. `routes::tests` checks that every operation answering 201 has links,
/// and that every link names an operation, exactly its path parameters and a field the answer
/// has.
const LINKS: &[Link] = &[
    Link {
        from: "create_key_set",
        answers: &["201"],
        name: "GetKeySet",
        to: "get_key_set",
        parameters: &[("key_set_id", "$response.body#/key_set/id")],
    },
    Link {
        from: "create_key_set",
        answers: &["201"],
        name: "CompleteKeySet",
        to: "complete_key_set",
        parameters: &[("key_set_id", "$response.body#/key_set/id")],
    },
    Link {
        from: "create_key_set",
        answers: &["201"],
        name: "DeleteKeySet",
        to: "delete_key_set",
        parameters: &[("key_set_id", "$response.body#/key_set/id")],
    },
    Link {
        from: "create_job",
        answers: &["201", "200"],
        name: "GetJob",
        to: "get_job",
        parameters: &[("job_id", "$response.body#/job/id")],
    },
    Link {
        from: "create_job",
        answers: &["201", "200"],
        name: "SubmitJob",
        to: "submit_job",
        parameters: &[("job_id", "$response.body#/job/id")],
    },
    Link {
        from: "create_job",
        answers: &["201", "200"],
        name: "CancelJob",
        to: "cancel_job",
        parameters: &[("job_id", "$response.body#/job/id")],
    },
    Link {
        from: "create_job",
        answers: &["201", "200"],
        name: "GetJobResult",
        to: "get_job_result",
        parameters: &[("job_id", "$response.body#/job/id")],
    },
    Link {
        from: "submit_job",
        answers: &["200"],
        name: "GetJob",
        to: "get_job",
        parameters: &[("job_id", "$response.body#/id")],
    },
    Link {
        from: "create_tenant",
        answers: &["201"],
        name: "IssueToken",
        to: "issue_token",
        parameters: &[("tenant_id", "$response.body#/id")],
    },
    Link {
        from: "issue_token",
        answers: &["201"],
        name: "RevokeToken",
        to: "revoke_token",
        parameters: &[("tenant_id", "$response.body#/tenant_id"), ("token_id", "$response.body#/id")],
    },
    Link {
        from: "issue_token",
        answers: &["201"],
        name: "RevokeTokenById",
        to: "revoke_token_by_id",
        parameters: &[("token_id", "$response.body#/id")],
    },
    Link {
        from: "announce_model",
        answers: &["201"],
        name: "CompleteModel",
        to: "complete_model",
        parameters: &[("model", "$response.body#/model")],
    },
    Link {
        from: "announce_model",
        answers: &["201"],
        name: "RetireModel",
        to: "retire_model",
        parameters: &[("model", "$response.body#/model")],
    },
    Link {
        from: "complete_model",
        answers: &["200"],
        name: "GetModel",
        to: "get_model",
        parameters: &[("model", "$response.body#/model/name")],
    },
];

fn add_links(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::extensions::Extensions;
    use utoipa::openapi::link::LinkBuilder;
    for item in doc.paths.paths.values_mut() {
        let operations = [&mut item.get, &mut item.post, &mut item.delete, &mut item.put, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            let Some(id) = operation.operation_id.clone() else { continue };
            for (link, status) in
                LINKS.iter().filter(|link| link.from == id).flat_map(|link| link.answers.iter().map(move |s| (link, s)))
            {
                let Link { name, to, parameters, .. } = link;
                // A link from an answer the operation does not give is left out, and fails
                // `every_link_in_links_is_in_the_document`.
                let Some(RefOr::T(answer)) = operation.responses.responses.get_mut(*status) else { continue };
                // utoipa 5.5 writes a link's `operation_id` field under that name, not as the
                // specification's `operationId`, so no tool would follow it; the name is given
                // as a flattened extension field instead (`Extensions::from_iter` keeps the key
                // as it is), and the builder's own field stays empty, which leaves it out.
                let link = parameters
                    .iter()
                    .fold(LinkBuilder::new(), |link, (parameter, value)| link.parameter(*parameter, *value))
                    .extensions(Some(Extensions::from_iter([("operationId", *to)])))
                    .build();
                answer.links.insert((*name).to_owned(), RefOr::T(link));
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
    complete_document(&mut doc);
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
    // As the JSON routes answer (`ApiJson`): 400 for what is not JSON, 422 for JSON of the
    // wrong shape.
    serde_json::from_slice(&body).map_err(|error| {
        if error.is_data() {
            ApiError::unprocessable("invalid_body", format!("the body does not fit the schema: {error}"))
        } else {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("malformed JSON body: {error}"),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    fn document() -> Value {
        serde_json::to_value(super::openapi()).expect("the document serializes")
    }

    /// Every operation: (path, method, operation).
    fn operations(doc: &Value) -> Vec<(&str, &str, &Value)> {
        let paths = doc["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .expect("a path item")
                    .iter()
                    .map(move |(method, op)| (path.as_str(), method.as_str(), op))
            })
            .collect()
    }

    /// The schema `schema` names, following `$ref`s into the components.
    fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
        while let Some(reference) = schema["$ref"].as_str() {
            let name = reference.strip_prefix("#/components/schemas/").expect("a local schema reference");
            schema = &doc["components"]["schemas"][name];
            assert!(!schema.is_null(), "{reference} names no schema");
        }
        schema
    }

    /// The schema of the field a JSON pointer names in a body of `schema`, looking into every
    /// alternative of `oneOf`/`anyOf`/`allOf` (how optional and tagged types are written).
    fn field<'a>(doc: &'a Value, schema: &'a Value, pointer: &str) -> Option<&'a Value> {
        let mut candidates = vec![resolve(doc, schema)];
        for token in pointer.split('/').skip(1) {
            let mut next = Vec::new();
            while let Some(schema) = candidates.pop() {
                for key in ["oneOf", "anyOf", "allOf"] {
                    if let Some(alternatives) = schema[key].as_array() {
                        candidates.extend(alternatives.iter().map(|alternative| resolve(doc, alternative)));
                    }
                }
                let inner =
                    if token.parse::<usize>().is_ok() { &schema["items"] } else { &schema["properties"][token] };
                if !inner.is_null() {
                    next.push(resolve(doc, inner));
                }
            }
            candidates = next;
        }
        candidates.pop()
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = document();
        let mut seen = BTreeMap::new();
        for (path, method, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            if let Some(other) = seen.insert(id.to_owned(), format!("{method} {path}")) {
                panic!("operationId {id} names both {other} and {method} {path}");
            }
        }
    }

    /// Links are what lets a stateful tester (or a generated client) chain calls: each must
    /// name an operation that exists, give exactly that operation's path parameters, and take
    /// them from fields the answer has.
    #[test]
    fn every_created_resource_links_to_operations_that_exist() {
        let doc = document();
        let by_id: BTreeMap<&str, &Value> =
            operations(&doc).into_iter().map(|(_, _, op)| (op["operationId"].as_str().unwrap(), op)).collect();
        let mut checked = 0;
        for (path, method, op) in operations(&doc) {
            for (status, answer) in op["responses"].as_object().unwrap() {
                let links = answer["links"].as_object();
                if status == "201" {
                    assert!(
                        links.is_some_and(|l| !l.is_empty()),
                        "{method} {path} creates something but links nowhere"
                    );
                }
                for (name, link) in links.into_iter().flatten() {
                    let target_id = link["operationId"].as_str().unwrap();
                    let target = by_id.get(target_id).unwrap_or_else(|| panic!("link {name} names no operation"));
                    let wanted: BTreeSet<&str> = target["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect();
                    let given: BTreeSet<&str> =
                        link["parameters"].as_object().unwrap().keys().map(String::as_str).collect();
                    assert_eq!(given, wanted, "link {name} of {method} {path} to {target_id}");
                    let body = &answer["content"]["application/json"]["schema"];
                    for expression in link["parameters"].as_object().unwrap().values() {
                        let pointer = expression.as_str().unwrap().strip_prefix("$response.body#").unwrap();
                        let found = field(&doc, body, pointer);
                        assert!(found.is_some(), "link {name} of {method} {path}: the answer has no {pointer}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= super::LINKS.iter().map(|link| link.answers.len()).sum::<usize>());
    }

    #[test]
    fn every_link_in_links_is_in_the_document() {
        let doc = document();
        for (super::Link { from, name, to, .. }, status) in
            super::LINKS.iter().flat_map(|link| link.answers.iter().map(move |status| (link, status)))
        {
            let answer = operations(&doc)
                .into_iter()
                .find(|(_, _, op)| op["operationId"] == *from)
                .map(|(_, _, op)| &op["responses"][*status])
                .unwrap_or_else(|| panic!("LINKS names operation {from}, which does not exist"));
            assert_eq!(answer["links"][*name]["operationId"], *to, "{from} answers {status} with link {name}");
        }
    }

    #[test]
    fn error_answers_are_problem_documents() {
        let doc = document();
        for (path, method, op) in operations(&doc) {
            for (status, answer) in op["responses"].as_object().unwrap() {
                let content = answer["content"].as_object();
                let json = content.and_then(|c| c.get("application/json")).map(|c| &c["schema"]);
                assert!(
                    json.is_none_or(|schema| schema["$ref"] != "#/components/schemas/Problem"),
                    "{method} {path} {status}: a Problem is application/problem+json"
                );
                if status.starts_with('4') {
                    assert!(
                        content.is_some_and(|c| c.contains_key(super::PROBLEM_JSON)),
                        "{method} {path} {status} is not documented as a problem document"
                    );
                }
            }
        }
    }

    /// The constraints the handlers enforce are in the schemas (what the property-based tester
    /// found missing): a spot check of each kind.
    #[test]
    fn request_schemas_carry_the_constraints_the_handlers_enforce() {
        let doc = document();
        let schema = |name: &str| &doc["components"]["schemas"][name]["properties"];
        let job = schema("CreateJob");
        assert_eq!(
            (job["priority"]["minimum"].as_f64(), job["priority"]["maximum"].as_f64()),
            (Some(0.0), Some(100.0))
        );
        assert_eq!(job["image_count"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(
            (job["idempotency_key"]["minLength"].as_u64(), job["idempotency_key"]["maxLength"].as_u64()),
            (Some(1), Some(200))
        );
        assert_eq!(job["size_bytes"]["minimum"].as_f64(), Some(1.0));
        assert!(job["model"]["pattern"].is_string());
        assert_eq!(job["key_set_id"]["format"], "uuid");
        let key_set = schema("CreateKeySet");
        assert_eq!(key_set["size_bytes"]["minimum"].as_f64(), Some(1.0));
        let packings = &doc["components"]["schemas"]["PackingName"]["enum"];
        assert_eq!(packings, &serde_json::json!(["throughput", "latency"]));
        let model = schema("AnnounceModel");
        assert_eq!(model["onnx_sha256"]["pattern"], "^[0-9a-fA-F]{64}$");
        assert_eq!(model["manifest_bytes"]["maximum"].as_f64(), Some((crate::registry::MAX_MANIFEST_BYTES) as f64));
        assert_eq!(
            model["onnx_bytes"]["maximum"].as_f64(),
            Some(blindfold_nn::registry::MAX_MODEL_FILE_BYTES as f64),
            "the schema's bound is the registry's"
        );
    }
}
