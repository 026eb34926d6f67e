//! The API over HTTP against a real PostgreSQL and the embedded S3 endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeSet, HashSet};

use blindfold_queue::{Progress, Queue, QueueConfig, WorkerId};
use blindfold_store::{JobId as StoreJob, ObjectKey, ObjectName, TenantId as StoreTenant};
use blindfold_testkit::TestDatabase;
use bytes::Bytes;
use common::{ADMIN, MODEL, bundle_len, bundle_with_secret_key, crypto, start, start_on, start_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// Plays the worker, logged in as the worker role: claims the next job, reports progress,
/// uploads a result, completes.
async fn work_one(api: &common::Api, tenant: Uuid, expected: Uuid, result: &[u8]) {
    let url = api.db.login_in("blindfold_worker").await.unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let queue = Queue::new(pool, QueueConfig::default());
    let worker = WorkerId::unique("test-worker");
    let claimed = queue.claim(&worker, 1).await.unwrap().pop().expect("a job to claim");
    assert_eq!(claimed.job.id.0, expected);
    queue.heartbeat(&claimed.lease, &Progress { fraction: 0.5, stage: Some("layer 2".into()) }).await.unwrap();
    let key = ObjectKey::job_result(
        &StoreTenant::new(tenant.to_string()).unwrap(),
        &StoreJob::new(expected.to_string()).unwrap(),
        &ObjectName::new("result.bfrb").unwrap(),
    );
    api.store.put_bytes(&key, Bytes::copy_from_slice(result)).await.unwrap();
    queue.complete(&claimed.lease, key.as_str()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn full_lifecycle_over_http() {
    let api = start().await;
    assert_eq!(api.call(Method::GET, "/healthz", None, None).await.status, StatusCode::OK);
    let ready = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);

    let models = api.call(Method::GET, "/v1/models", None, None).await;
    let model = models.body["models"].as_array().unwrap().iter().find(|m| m["name"] == MODEL).unwrap().clone();
    assert_eq!(model["input_shape"], json!([1, 28, 28]));
    assert_eq!(model["classes"].as_array().unwrap().len(), 10);
    let throughput = model["packings"].as_array().unwrap().iter().find(|p| p["packing"] == "throughput").unwrap();
    assert_eq!(throughput["params_fingerprint"], crypto().context.params().fingerprint().to_string());

    let (tenant, token, _) = api.tenant("st-mary").await;
    let key_set = api.ready_key_set(&token).await;
    let shown = api.call(Method::GET, &format!("/v1/key-sets/{key_set}"), Some(&token), None).await;
    assert_eq!(shown.body["status"], "ready");
    assert_eq!(shown.body["model"], MODEL);

    let (job, upload, batch) = api.announce_job(&token, key_set, 3, json!({"priority": 5})).await;
    let announced = api.call(Method::GET, &format!("/v1/jobs/{job}"), Some(&token), None).await;
    assert_eq!(announced.body["state"], "awaiting_upload");
    // Submitting before uploading is refused.
    let early = api.call(Method::POST, &format!("/v1/jobs/{job}/submit"), Some(&token), None).await;
    assert_eq!((early.status, early.code()), (StatusCode::CONFLICT, "upload_missing"));

    let parts = api.upload(&upload, &batch).await;
    let submitted =
        api.call(Method::POST, &format!("/v1/jobs/{job}/submit"), Some(&token), Some(json!({"parts": parts}))).await;
    assert_eq!(submitted.status, StatusCode::OK, "{:?}", submitted.body);
    assert_eq!(submitted.body["state"], "queued");
    assert_eq!(submitted.body["id"], job.to_string());
    assert_eq!(submitted.body["priority"], 5);
    // Submitting again answers the same job.
    let again = api.call(Method::POST, &format!("/v1/jobs/{job}/submit"), Some(&token), None).await;
    assert_eq!((again.status, again.body["id"].clone()), (StatusCode::OK, json!(job.to_string())));

    let not_yet = api.call(Method::GET, &format!("/v1/jobs/{job}/result"), Some(&token), None).await;
    assert_eq!((not_yet.status, not_yet.code()), (StatusCode::CONFLICT, "result_not_ready"));

    let result = b"encrypted result bytes".to_vec();
    work_one(&api, tenant, job, &result).await;

    let done = api.call(Method::GET, &format!("/v1/jobs/{job}"), Some(&token), None).await;
    assert_eq!(done.body["state"], "succeeded", "{:?}", done.body);
    assert_eq!(done.body["attempt"], 1);
    assert_eq!(done.body["progress"]["stage"], "layer 2");
    assert!(done.body["finished_at"].is_string());
    assert!(done.body["durations"]["running_seconds"].as_f64().unwrap() >= 0.0);
    assert!(done.body["error"].is_null());
    let history: Vec<(Value, Value)> =
        done.body["history"].as_array().unwrap().iter().map(|t| (t["to_state"].clone(), t["reason"].clone())).collect();
    assert_eq!(
        history,
        vec![
            (json!("queued"), json!("enqueued")),
            (json!("running"), json!("claimed")),
            (json!("succeeded"), json!("succeeded"))
        ]
    );
    assert!(done.body["history"][2]["seconds_since_previous"].as_f64().unwrap() >= 0.0);

    let fetched = api.call(Method::GET, &format!("/v1/jobs/{job}/result"), Some(&token), None).await;
    assert_eq!(fetched.status, StatusCode::OK, "{:?}", fetched.body);
    let url = fetched.body["download"]["url"].as_str().unwrap();
    let bytes = api.http.get(url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), result.as_slice());

    let listed = api.call(Method::GET, "/v1/jobs?state=succeeded", Some(&token), None).await;
    assert_eq!(listed.body["jobs"].as_array().unwrap().len(), 1);

    let finished_cancel = api.call(Method::POST, &format!("/v1/jobs/{job}/cancel"), Some(&token), None).await;
    assert_eq!((finished_cancel.status, finished_cancel.code()), (StatusCode::CONFLICT, "already_final"));

    // Metrics are on their own listener; the public port does not serve them.
    let public = api.http.get(format!("{}/metrics", api.base)).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let metrics = api.http.get(&api.metrics).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("blindfold_jobs{state=\"succeeded\"} 1"), "{metrics}");
    assert!(metrics.contains("blindfold_http_requests_total{method=\"POST\",route=\"/v1/jobs/{job_id}/submit\""));
    assert!(metrics.contains("blindfold_http_request_duration_seconds_bucket"));
    assert!(metrics.contains("blindfold_job_duration_seconds{phase=\"run\",statistic=\"0.99\"}"), "{metrics}");
    assert!(!metrics.contains(&token), "tokens never appear in metrics");

    // Deleting the key set removes it.
    let deleted = api.call(Method::DELETE, &format!("/v1/key-sets/{key_set}"), Some(&token), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = api.call(Method::GET, &format!("/v1/key-sets/{key_set}"), Some(&token), None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_queued_and_announced_jobs() {
    let api = start().await;
    let (_, token, _) = api.tenant("st-anne").await;
    let key_set = api.ready_key_set(&token).await;
    let queued = api.queued_job(&token, key_set).await;
    let cancelled = api.call(Method::POST, &format!("/v1/jobs/{queued}/cancel"), Some(&token), None).await;
    assert_eq!((cancelled.status, cancelled.body["state"].clone()), (StatusCode::OK, json!("cancelled")));
    let (announced, _, _) = api.announce_job(&token, key_set, 2, json!({})).await;
    let dropped = api.call(Method::POST, &format!("/v1/jobs/{announced}/cancel"), Some(&token), None).await;
    assert_eq!(dropped.body["state"], "cancelled");
    let gone = api.call(Method::GET, &format!("/v1/jobs/{announced}"), Some(&token), None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_cannot_see_each_others_anything() {
    let api = start().await;
    let (tenant_a, a, _) = api.tenant("hospital-a").await;
    let (_, b, _) = api.tenant("hospital-b").await;
    let key_set = api.ready_key_set(&a).await;
    let succeeded = api.queued_job(&a, key_set).await;
    work_one(&api, tenant_a, succeeded, b"result").await;
    let queued = api.queued_job(&a, key_set).await;
    let (announced, _, _) = api.announce_job(&a, key_set, 3, json!({})).await;
    let (pending_key_set, _) = {
        let created = api
            .call(Method::POST, "/v1/key-sets", Some(&a), Some(json!({"model": MODEL, "size_bytes": bundle_len()})))
            .await;
        (created.body["key_set"]["id"].as_str().unwrap().parse::<Uuid>().unwrap(), ())
    };
    let missing = Uuid::new_v4();

    // Every endpoint, with A's ids and with an id nobody has: the same 404.
    let key_set_routes = |id: Uuid| {
        vec![
            (Method::GET, format!("/v1/key-sets/{id}")),
            (Method::POST, format!("/v1/key-sets/{id}/complete")),
            (Method::DELETE, format!("/v1/key-sets/{id}")),
        ]
    };
    let job_routes = |id: Uuid| {
        vec![
            (Method::GET, format!("/v1/jobs/{id}")),
            (Method::POST, format!("/v1/jobs/{id}/submit")),
            (Method::GET, format!("/v1/jobs/{id}/result")),
            (Method::POST, format!("/v1/jobs/{id}/cancel")),
        ]
    };
    let mut cases = Vec::new();
    for id in [key_set, pending_key_set] {
        cases.extend(key_set_routes(id).into_iter().zip(key_set_routes(missing)).map(|(x, y)| (id, x, y)));
    }
    for id in [succeeded, queued, announced] {
        cases.extend(job_routes(id).into_iter().zip(job_routes(missing)).map(|(x, y)| (id, x, y)));
    }
    for (id, (method, path), (missing_method, missing_path)) in cases {
        let theirs = api.call(method.clone(), &path, Some(&b), None).await;
        let nobodys = api.call(missing_method, &missing_path, Some(&b), None).await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{method} {path}: {:?}", theirs.body);
        assert_eq!(theirs.code(), nobodys.code(), "{method} {path}");
        assert_eq!(
            theirs.detail().replace(&id.to_string(), "ID"),
            nobodys.detail().replace(&missing.to_string(), "ID")
        );
        assert_eq!(theirs.content_type, "application/problem+json");
    }
    // B cannot build on A's key set either, and sees none of A's jobs.
    let borrow = api
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&b),
            Some(json!({"model": MODEL, "key_set_id": key_set, "image_count": 1, "size_bytes": 100})),
        )
        .await;
    assert_eq!((borrow.status, borrow.code()), (StatusCode::UNPROCESSABLE_ENTITY, "unknown_key_set"));
    let listed = api.call(Method::GET, "/v1/jobs", Some(&b), None).await;
    assert_eq!(listed.body["jobs"], json!([]));
    // And A still has everything.
    let still = api.call(Method::GET, &format!("/v1/jobs/{queued}"), Some(&a), None).await;
    assert_eq!(still.body["state"], "queued");
    let result = api.call(Method::GET, &format!("/v1/jobs/{succeeded}/result"), Some(&a), None).await;
    assert_eq!(result.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_malformed_unknown_and_revoked() {
    let api = start().await;
    let (tenant, token, token_id) = api.tenant("st-luke").await;
    assert_eq!(api.call(Method::GET, "/v1/jobs", Some(&token), None).await.status, StatusCode::OK);

    let unknown = format!("bft_{}", "0".repeat(64));
    for bad in [None, Some("abc"), Some("bft_xyz"), Some(unknown.as_str()), Some(ADMIN)] {
        let reply = api.call(Method::GET, "/v1/jobs", bad, None).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{bad:?}");
        assert_eq!(reply.content_type, "application/problem+json");
    }
    let basic =
        api.http.get(format!("{}/v1/jobs", api.base)).header("authorization", "Basic eDp5").send().await.unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);

    // Tenant tokens are not admin tokens, and a wrong admin token is refused.
    let as_admin = api.call(Method::POST, "/v1/admin/tenants", Some(&token), Some(json!({"name": "x"}))).await;
    assert_eq!(as_admin.status, StatusCode::UNAUTHORIZED);
    let wrong = api
        .call(
            Method::POST,
            "/v1/admin/tenants",
            Some("admin-token-for-tests-0123456789abcdeX"),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let revoked =
        api.call(Method::DELETE, &format!("/v1/admin/tenants/{tenant}/tokens/{token_id}"), Some(ADMIN), None).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let after = api.call(Method::GET, "/v1/jobs", Some(&token), None).await;
    assert_eq!((after.status, after.detail()), (StatusCode::UNAUTHORIZED, "unknown or revoked token"));
    let twice =
        api.call(Method::DELETE, &format!("/v1/admin/tenants/{tenant}/tokens/{token_id}"), Some(ADMIN), None).await;
    assert_eq!(twice.status, StatusCode::NOT_FOUND);
    let duplicate = api.call(Method::POST, "/v1/admin/tenants", Some(ADMIN), Some(json!({"name": "st-luke"}))).await;
    assert_eq!((duplicate.status, duplicate.code()), (StatusCode::CONFLICT, "name_taken"));
    let nul = api.call(Method::POST, "/v1/admin/tenants", Some(ADMIN), Some(json!({"name": "st\u{0}luke"}))).await;
    assert_eq!((nul.status, nul.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_name"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_clear_4xx() {
    let api = start().await;
    let (tenant, token, _) = api.tenant("st-paul").await;
    let key_set = api.ready_key_set(&token).await;
    let job = |extra: Value| {
        let mut body = json!({"model": MODEL, "key_set_id": key_set, "image_count": 3, "size_bytes": 1000});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let cases: Vec<(Value, StatusCode, &str, &str)> = vec![
        (job(json!({"model": "resnet-1000"})), StatusCode::UNPROCESSABLE_ENTITY, "unknown_model", "known models"),
        (job(json!({"packing": "zigzag"})), StatusCode::UNPROCESSABLE_ENTITY, "unknown_packing", "zigzag"),
        (job(json!({"image_count": 1001})), StatusCode::UNPROCESSABLE_ENTITY, "too_many_images", "limit of 1000"),
        (job(json!({"image_count": 0})), StatusCode::UNPROCESSABLE_ENTITY, "invalid_image_count", "at least 1"),
        (job(json!({"priority": -1})), StatusCode::UNPROCESSABLE_ENTITY, "invalid_priority", "between 0 and 100"),
        (job(json!({"size_bytes": 0})), StatusCode::UNPROCESSABLE_ENTITY, "invalid_size", "size_bytes"),
        (job(json!({"colour": "red"})), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", "colour"),
        (job(json!({"key_set_id": "not-a-uuid"})), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", "key_set_id"),
        // PostgreSQL's text cannot hold NUL: refused before it reaches the database (a 500 before).
        (
            job(json!({"idempotency_key": "a\u{0}b"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_idempotency_key",
            "control characters",
        ),
        (job(json!({"image_count": 2.5})), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", "whole number"),
        (
            job(json!({"key_set_id": Uuid::new_v4()})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_key_set",
            "no ready key set",
        ),
    ];
    for (body, status, code, words) in cases {
        let reply = api.call(Method::POST, "/v1/jobs", Some(&token), Some(body.clone())).await;
        assert_eq!((reply.status, reply.code()), (status, code), "{body}: {:?}", reply.body);
        assert!(reply.detail().contains(words), "{code}: {}", reply.detail());
        assert_eq!(reply.content_type, "application/problem+json");
    }

    let malformed = api.raw(Method::POST, "/v1/jobs", &token, b"{\"model\": ".to_vec()).await;
    assert_eq!((malformed.status, malformed.code()), (StatusCode::BAD_REQUEST, "malformed_json"));
    let oversize = api.raw(Method::POST, "/v1/jobs", &token, vec![b' '; 64 * 1024]).await;
    assert_eq!((oversize.status, oversize.code()), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
    assert_eq!(oversize.connection, "close", "the unread body makes the connection unusable");
    let bad_id = api.call(Method::GET, "/v1/jobs/12345", Some(&token), None).await;
    assert_eq!((bad_id.status, bad_id.code()), (StatusCode::BAD_REQUEST, "invalid_id"));
    let bad_state = api.call(Method::GET, "/v1/jobs?state=sleeping", Some(&token), None).await;
    assert_eq!((bad_state.status, bad_state.code()), (StatusCode::BAD_REQUEST, "invalid_query"));
    let bad_cursor = api.call(Method::GET, "/v1/jobs?cursor=zzz", Some(&token), None).await;
    assert_eq!(bad_cursor.status, StatusCode::BAD_REQUEST);
    let bad_limit = api.call(Method::GET, "/v1/jobs?limit=-3", Some(&token), None).await;
    assert_eq!(bad_limit.status, StatusCode::BAD_REQUEST);

    // A batch whose header does not match the job: made for 2 images, announced as 3.
    let batch = crypto().batch(key_set, 2, MODEL);
    let created = api
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&token),
            Some(json!({"model": MODEL, "key_set_id": key_set, "image_count": 3, "size_bytes": batch.len()})),
        )
        .await;
    let id = created.body["job"]["id"].as_str().unwrap().to_owned();
    api.upload(&created.body["upload"], &batch).await;
    let refused = api.call(Method::POST, &format!("/v1/jobs/{id}/submit"), Some(&token), None).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::UNPROCESSABLE_ENTITY, "batch_mismatch"));
    assert!(refused.detail().contains("image count"), "{}", refused.detail());
    // A batch for another key set.
    let other = crypto().batch(Uuid::new_v4(), 3, MODEL);
    api.upload(&created.body["upload"], &other).await;
    let refused = api.call(Method::POST, &format!("/v1/jobs/{id}/submit"), Some(&token), None).await;
    assert!(refused.detail().contains("key set"), "{}", refused.detail());
    // An upload of the wrong size: the URL signs the length, so the store refuses it.
    let upload: blindfold_api::Upload = serde_json::from_value(created.body["upload"].clone()).unwrap();
    let blindfold_api::Upload::Single { request } = upload else { panic!("a small batch is one PUT") };
    let mut put = api.http.put(&request.url).body(&b"short"[..]);
    for header in request.headers.iter().filter(|h| !h.name.eq_ignore_ascii_case("content-length")) {
        put = put.header(&header.name, &header.value);
    }
    assert_eq!(put.send().await.unwrap().status(), StatusCode::FORBIDDEN);
    // A store that let it through anyway (or an operator's copy) is still caught at submit.
    let job = StoreJob::new(id.clone()).unwrap();
    let tenant_dir = blindfold_store::Prefix::tenant(&StoreTenant::new(tenant.to_string()).unwrap());
    let input = api.store.list(&tenant_dir).await.unwrap().into_iter().find(|o| o.key.as_str().contains(job.as_str()));
    api.store.put_bytes(&input.unwrap().key, Bytes::from_static(b"short")).await.unwrap();
    let refused = api.call(Method::POST, &format!("/v1/jobs/{id}/submit"), Some(&token), None).await;
    assert_eq!(refused.code(), "size_mismatch");
    // Still announced: nothing was queued.
    let still = api.call(Method::GET, &format!("/v1/jobs/{id}"), Some(&token), None).await;
    assert_eq!(still.body["state"], "awaiting_upload");

    // A key bundle written for another key set is refused and removed from storage.
    let size = crypto().bundle(Uuid::nil()).len();
    let created =
        api.call(Method::POST, "/v1/key-sets", Some(&token), Some(json!({"model": MODEL, "size_bytes": size}))).await;
    let ks = created.body["key_set"]["id"].as_str().unwrap().to_owned();
    api.upload(&created.body["upload"], &crypto().bundle(Uuid::new_v4())).await;
    let refused = api.call(Method::POST, &format!("/v1/key-sets/{ks}/complete"), Some(&token), None).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_key_bundle"));
    assert!(refused.detail().contains("key set"), "{}", refused.detail());
    let again = api.call(Method::POST, &format!("/v1/key-sets/{ks}/complete"), Some(&token), None).await;
    assert_eq!(again.code(), "upload_missing", "the refused bundle was deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn job_creation_is_idempotent() {
    let api = start().await;
    let (_, token, _) = api.tenant("st-john").await;
    let key_set = api.ready_key_set(&token).await;
    let (first, upload, batch) = api.announce_job(&token, key_set, 3, json!({"idempotency_key": "scan-1"})).await;
    let body = json!({"model": MODEL, "key_set_id": key_set, "image_count": 3, "size_bytes": batch.len(),
                      "idempotency_key": "scan-1"});
    let repeat = api.call(Method::POST, "/v1/jobs", Some(&token), Some(body.clone())).await;
    assert_eq!(repeat.status, StatusCode::OK);
    assert_eq!(repeat.body["job"]["id"], first.to_string());
    assert!(repeat.body["upload"].is_object());
    let mut different = body.clone();
    different["image_count"] = json!(4);
    let conflict = api.call(Method::POST, "/v1/jobs", Some(&token), Some(different)).await;
    assert_eq!((conflict.status, conflict.code()), (StatusCode::CONFLICT, "idempotency_conflict"));

    let parts = api.upload(&upload, &batch).await;
    let submitted =
        api.call(Method::POST, &format!("/v1/jobs/{first}/submit"), Some(&token), Some(json!({"parts": parts}))).await;
    assert_eq!(submitted.body["state"], "queued");
    let after = api.call(Method::POST, "/v1/jobs", Some(&token), Some(body)).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.body["job"]["id"], first.to_string());
    assert_eq!(after.body["job"]["state"], "queued");
    assert!(after.body["upload"].is_null());
    let listed = api.call(Method::GET, "/v1/jobs", Some(&token), None).await;
    assert_eq!(listed.body["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn pagination_is_stable_while_jobs_arrive() {
    let api = start().await;
    let (_, token, _) = api.tenant("st-mark").await;
    let key_set = api.ready_key_set(&token).await;
    let mut first_five = Vec::new();
    for _ in 0..5 {
        first_five.push(api.queued_job(&token, key_set).await);
    }
    let page = |cursor: Option<String>| {
        let api = &api;
        let token = token.clone();
        async move {
            let path = match cursor {
                Some(cursor) => format!("/v1/jobs?limit=2&cursor={cursor}"),
                None => "/v1/jobs?limit=2".to_owned(),
            };
            let reply = api.call(Method::GET, &path, Some(&token), None).await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            let ids: Vec<Uuid> = reply.body["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().parse().unwrap())
                .collect();
            (ids, reply.body["next_cursor"].as_str().map(str::to_owned))
        }
    };
    let (mut seen, mut cursor) = page(None).await;
    // Newest first.
    assert_eq!(seen, vec![first_five[4], first_five[3]]);
    // New jobs arrive between pages: they do not shift the pages being read.
    for _ in 0..3 {
        api.queued_job(&token, key_set).await;
    }
    while let Some(next) = cursor {
        let (ids, following) = page(Some(next)).await;
        seen.extend(ids);
        cursor = following;
    }
    let expected: Vec<Uuid> = first_five.iter().rev().copied().collect();
    assert_eq!(seen, expected, "every job once, in order, none of the newcomers");
    let (newest, _) = page(None).await;
    assert!(newest.iter().all(|id| !first_five.contains(id)));
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_lists_every_route() {
    let api = start_with(|config| config.admin_token = None).await;
    let doc = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc.body["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(operation["responses"].is_object(), "{method} {path} documents its responses");
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let routes: BTreeSet<String> = [
        "POST /v1/key-sets",
        "GET /v1/key-sets",
        "GET /v1/key-sets/{key_set_id}",
        "DELETE /v1/key-sets/{key_set_id}",
        "POST /v1/key-sets/{key_set_id}/complete",
        "POST /v1/jobs",
        "GET /v1/jobs",
        "GET /v1/jobs/{job_id}",
        "POST /v1/jobs/{job_id}/submit",
        "POST /v1/jobs/{job_id}/cancel",
        "GET /v1/jobs/{job_id}/result",
        "GET /v1/models",
        "GET /v1/models/{model}",
        "POST /v1/admin/models",
        "GET /v1/admin/models",
        "POST /v1/admin/models/{model}/complete",
        "POST /v1/admin/models/{model}/retire",
        "POST /v1/admin/tenants",
        "GET /v1/admin/tenants",
        "POST /v1/admin/tenants/{tenant_id}/tokens",
        "DELETE /v1/admin/tenants/{tenant_id}/tokens/{token_id}",
        "DELETE /v1/admin/tokens/{token_id}",
        "GET /healthz",
        "GET /readyz",
        "GET /openapi.json",
    ]
    .iter()
    .map(|route| (*route).to_owned())
    .collect();
    assert_eq!(documented, routes);
    // Every documented route is served: none answers 404/405 for want of a route.
    let id = Uuid::new_v4();
    for route in &routes {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{key_set_id}", &id.to_string())
            .replace("{job_id}", &id.to_string())
            .replace("{tenant_id}", &id.to_string())
            .replace("{token_id}", &id.to_string());
        let reply = api.call(method.parse().unwrap(), &path, None, None).await;
        assert_ne!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{route}");
        if reply.status == StatusCode::NOT_FOUND {
            assert_eq!(reply.code(), "not_found", "{route} is routed");
        }
    }
    let nowhere = api.call(Method::GET, "/v1/nowhere", None, None).await;
    assert_eq!((nowhere.status, nowhere.code()), (StatusCode::NOT_FOUND, "no_route"));
    let wrong_method = api.call(Method::PUT, "/v1/models", None, None).await;
    assert_eq!((wrong_method.status, wrong_method.code()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    // Schemas referenced by operations exist.
    let text = doc.body.to_string();
    let schemas: HashSet<&str> =
        doc.body["components"]["schemas"].as_object().unwrap().keys().map(String::as_str).collect();
    for reference in text.split("#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(schemas.contains(name), "schema {name} is defined");
    }
    // Without an admin token configured, admin routes refuse everyone.
    let refused = api
        .call(
            Method::POST,
            "/v1/admin/tenants",
            Some("anything-at-all-0123456789abcdef-xyz"),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_bundle_holding_a_secret_key_is_refused_and_deleted() {
    let api = start().await;
    let (tenant, token, _) = api.tenant("st-jude").await;
    let probe = bundle_with_secret_key(Uuid::nil());
    let created = api
        .call(Method::POST, "/v1/key-sets", Some(&token), Some(json!({"model": MODEL, "size_bytes": probe.len()})))
        .await;
    let id: Uuid = created.body["key_set"]["id"].as_str().unwrap().parse().unwrap();
    let parts = api.upload(&created.body["upload"], &bundle_with_secret_key(id)).await;
    let refused = api
        .call(Method::POST, &format!("/v1/key-sets/{id}/complete"), Some(&token), Some(json!({"parts": parts})))
        .await;
    assert_eq!((refused.status, refused.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_key_bundle"));
    assert!(refused.detail().contains("is a secret key"), "{}", refused.detail());
    let shown = api.call(Method::GET, &format!("/v1/key-sets/{id}"), Some(&token), None).await;
    assert_eq!(shown.body["status"], "awaiting_upload", "never registered");
    let prefix = blindfold_store::Prefix::tenant(&StoreTenant::new(tenant.to_string()).unwrap());
    assert!(api.store.list(&prefix).await.unwrap().is_empty(), "the secret key does not stay in storage");
    let again = api.call(Method::POST, &format!("/v1/key-sets/{id}/complete"), Some(&token), None).await;
    assert_eq!(again.code(), "upload_missing", "the secret key does not stay in storage");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_batches_upload_in_presigned_parts() {
    let api = start().await;
    let (_, token, _) = api.tenant("st-clare").await;
    let key_set = api.ready_key_set(&token).await;
    // Over one 5 MiB part: a multipart upload.
    let mut ciphertexts = 2;
    let batch = loop {
        let batch = crypto().batch_of(key_set, 3, MODEL, ciphertexts);
        if batch.len() > 6 << 20 {
            break batch;
        }
        ciphertexts = ciphertexts * 6 * (1 << 20) / batch.len() as u64 + 1;
    };
    let created = api
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&token),
            Some(json!({"model": MODEL, "key_set_id": key_set, "image_count": 3, "size_bytes": batch.len()})),
        )
        .await;
    assert_eq!(created.body["upload"]["kind"], "multipart", "{:?}", created.body);
    let id = created.body["job"]["id"].as_str().unwrap().to_owned();
    let parts = api.upload(&created.body["upload"], &batch).await;
    assert_eq!(parts.len(), 2);
    let without = api.call(Method::POST, &format!("/v1/jobs/{id}/submit"), Some(&token), None).await;
    assert_eq!((without.status, without.code()), (StatusCode::UNPROCESSABLE_ENTITY, "parts_required"));
    let submitted =
        api.call(Method::POST, &format!("/v1/jobs/{id}/submit"), Some(&token), Some(json!({"parts": parts}))).await;
    assert_eq!(submitted.status, StatusCode::OK, "{:?}", submitted.body);
    assert_eq!(submitted.body["state"], "queued");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_chosen_key_set_ids_listings_and_revocation_by_id() {
    let api = start().await;
    let (_, a, _) = api.tenant("hospital-a").await;
    let (_, b, b_token_id) = api.tenant("hospital-b").await;
    let bundle_len = crypto().bundle(Uuid::nil()).len();

    // The client's own id (already inside its bundle) is the key set's id.
    let mine = Uuid::new_v4();
    let announce = |token: String, id: Uuid| {
        let api = &api;
        async move {
            api.call(
                Method::POST,
                "/v1/key-sets",
                Some(&token),
                Some(json!({"id": id, "model": MODEL, "size_bytes": bundle_len})),
            )
            .await
        }
    };
    let created = announce(a.clone(), mine).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["key_set"]["id"], mine.to_string());
    let parts = api.upload(&created.body["upload"], &crypto().bundle(mine)).await;
    let done =
        api.call(Method::POST, &format!("/v1/key-sets/{mine}/complete"), Some(&a), Some(json!({"parts": parts}))).await;
    assert_eq!((done.status, done.body["status"].clone()), (StatusCode::OK, json!("ready")), "{:?}", done.body);
    // The same id again, by its owner or anyone else: taken.
    for token in [&a, &b] {
        let again = announce(token.clone(), mine).await;
        assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "key_set_exists"));
    }
    // An announced-only id is taken as well.
    let pending = Uuid::new_v4();
    assert_eq!(announce(a.clone(), pending).await.status, StatusCode::CREATED);
    assert_eq!(announce(a.clone(), pending).await.code(), "key_set_exists");

    let listed = api.call(Method::GET, "/v1/key-sets", Some(&a), None).await;
    assert_eq!(listed.status, StatusCode::OK);
    let states: Vec<(Value, Value)> =
        listed.body["key_sets"].as_array().unwrap().iter().map(|k| (k["id"].clone(), k["status"].clone())).collect();
    assert_eq!(
        states,
        vec![(json!(pending.to_string()), json!("awaiting_upload")), (json!(mine.to_string()), json!("ready"))]
    );
    let theirs = api.call(Method::GET, "/v1/key-sets", Some(&b), None).await;
    assert_eq!(theirs.body["key_sets"], json!([]));

    let tenants = api.call(Method::GET, "/v1/admin/tenants", Some(ADMIN), None).await;
    let names: Vec<&str> =
        tenants.body["tenants"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hospital-a", "hospital-b"]);
    assert_eq!(api.call(Method::GET, "/v1/admin/tenants", Some(&a), None).await.status, StatusCode::UNAUTHORIZED);

    let revoked = api.call(Method::DELETE, &format!("/v1/admin/tokens/{b_token_id}"), Some(ADMIN), None).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(api.call(Method::GET, "/v1/key-sets", Some(&b), None).await.status, StatusCode::UNAUTHORIZED);
    let twice = api.call(Method::DELETE, &format!("/v1/admin/tokens/{b_token_id}"), Some(ADMIN), None).await;
    assert_eq!(twice.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_no_worker_of_the_fleet_could_hold_is_refused_with_both_figures() {
    let api = start_with(|config| config.fleet_memory_mib = Some(1)).await;
    let (_, token, _) = api.tenant("st-kilda").await;
    let key_set = api.ready_key_set(&token).await;
    let batch = crypto().batch(key_set, 2, MODEL);
    let body = json!({"model": MODEL, "key_set_id": key_set, "image_count": 2, "size_bytes": batch.len()});
    let refused = api.call(Method::POST, "/v1/jobs", Some(&token), Some(body)).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "does_not_fit"),
        "{:?}",
        refused.body
    );
    let detail = refused.detail();
    assert!(detail.contains("throughput packing needs about") && detail.contains("give a job 1 MiB"), "{detail}");
    let listed = api.call(Method::GET, "/v1/jobs", Some(&token), None).await;
    assert!(listed.body["jobs"].as_array().unwrap().is_empty(), "nothing was announced");
}

/// What the property-based tester found: answers the document did not list. Every route is
/// called as a tester would call it: without a token, with a malformed id, with malformed JSON,
/// with a body that is not JSON, and each answer's status must be documented for that route.
#[tokio::test(flavor = "multi_thread")]
async fn every_status_a_route_answers_is_in_the_openapi_document() {
    let api = start().await;
    let (_, token, _) = api.tenant("st-contract").await;
    let doc = api.call(Method::GET, "/openapi.json", None, None).await.body;
    let mut undocumented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let documented: BTreeSet<u16> =
                operation["responses"].as_object().unwrap().keys().filter_map(|k| k.parse().ok()).collect();
            let admin = path.starts_with("/v1/admin");
            let secret = if admin { ADMIN } else { token.as_str() };
            let with_ids = |id: &str| {
                ["{key_set_id}", "{job_id}", "{tenant_id}", "{token_id}"]
                    .iter()
                    .fold(path.replace("{model}", "mnist-cryptonets"), |p, name| p.replace(name, id))
            };
            let good = with_ids(&Uuid::new_v4().to_string());
            let mut tries: Vec<(String, reqwest::RequestBuilder)> = Vec::new();
            let method: Method = method.to_uppercase().parse().unwrap();
            let request = |path: &str| api.http.request(method.clone(), format!("{}{path}", api.base));
            tries.push(("no token".into(), request(&good)));
            tries.push(("a valid call".into(), request(&good).bearer_auth(secret).json(&json!({}))));
            if path.contains("_id}") {
                tries.push(("a malformed id".into(), request(&with_ids("not-a-uuid")).bearer_auth(secret)));
            }
            if method == Method::POST {
                let malformed = request(&good).bearer_auth(secret).header("content-type", "application/json").body("{");
                tries.push(("malformed JSON".into(), malformed));
                let text = request(&good).bearer_auth(secret).header("content-type", "text/plain").body("hello");
                tries.push(("a body that is not JSON".into(), text));
            }
            for (what, request) in tries {
                let status = request.send().await.unwrap().status().as_u16();
                if status >= 500 || !documented.contains(&status) {
                    undocumented.push(format!("{} {path} with {what}: {status} (documented: {documented:?})", method));
                }
            }
        }
    }
    assert!(undocumented.is_empty(), "answers missing from the document:\n{}", undocumented.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn verifications_past_the_bound_answer_busy_and_leave_the_upload_pending() {
    // No permit at all: every verification is past the bound.
    let api = start_with(|config| config.max_verifications = 0).await;
    let (_, token, _) = api.tenant("st-busy").await;
    let probe = crypto().bundle(Uuid::nil());
    let created = api
        .call(Method::POST, "/v1/key-sets", Some(&token), Some(json!({"model": MODEL, "size_bytes": probe.len()})))
        .await;
    let id: Uuid = created.body["key_set"]["id"].as_str().unwrap().parse().unwrap();
    let parts = api.upload(&created.body["upload"], &crypto().bundle(id)).await;
    let response = api
        .http
        .post(format!("{}/v1/key-sets/{id}/complete", api.base))
        .bearer_auth(&token)
        .json(&json!({"parts": parts}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "5");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "busy", "{problem}");
    let shown = api.call(Method::GET, &format!("/v1/key-sets/{id}"), Some(&token), None).await;
    assert_eq!(shown.body["status"], "awaiting_upload", "nothing was verified or lost: it can be completed later");
    let refused = api.call(Method::POST, "/v1/admin/models/mnist-cryptonets@1/complete", Some(ADMIN), None).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::SERVICE_UNAVAILABLE, "busy"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_bundle_is_announced_at_its_plans_exact_size_or_not_at_all() {
    let api = start().await;
    let (_, token, _) = api.tenant("st-exact").await;
    let exact = bundle_len();
    for wrong in [exact - 1, exact + 1, 1 << 29] {
        let refused = api
            .call(Method::POST, "/v1/key-sets", Some(&token), Some(json!({"model": MODEL, "size_bytes": wrong})))
            .await;
        assert_eq!((refused.status, refused.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_size"), "{wrong}");
        assert!(refused.detail().contains(&format!("exactly {exact} bytes")), "{}", refused.detail());
    }
    let created =
        api.call(Method::POST, "/v1/key-sets", Some(&token), Some(json!({"model": MODEL, "size_bytes": exact}))).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verified_bundle_swapped_through_its_still_valid_url_is_not_what_readers_get() {
    let api = start().await;
    let (_, token, _) = api.tenant("st-swap").await;
    let created = api
        .call(Method::POST, "/v1/key-sets", Some(&token), Some(json!({"model": MODEL, "size_bytes": bundle_len()})))
        .await;
    let id: Uuid = created.body["key_set"]["id"].as_str().unwrap().parse().unwrap();
    let genuine = crypto().bundle(id);
    api.upload(&created.body["upload"], &genuine).await;
    let done = api.call(Method::POST, &format!("/v1/key-sets/{id}/complete"), Some(&token), None).await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);

    // The URL is still valid. It stores nothing of another size: the length is signed.
    let upload: blindfold_api::Upload = serde_json::from_value(created.body["upload"].clone()).unwrap();
    let blindfold_api::Upload::Single { request } = upload else { panic!("a bundle this small is one PUT") };
    let put = |body: Vec<u8>, honest_length: bool| {
        let mut put = api.http.put(&request.url).body(body);
        for header in request.headers.iter().filter(|h| honest_length || h.name != "content-length") {
            put = put.header(&header.name, &header.value);
        }
        put.send()
    };
    let mut longer = genuine.clone();
    longer.extend_from_slice(&[0; 4096]);
    // The store refuses on the signed headers alone. It may answer 403 and hang up before the
    // client has written the whole body, so a broken pipe is a refusal too; what must hold is
    // that the stored object did not change.
    match put(longer, false).await {
        Ok(response) => assert_eq!(response.status(), StatusCode::FORBIDDEN, "another length is refused"),
        Err(err) => assert!(err.is_request() && err.status().is_none(), "not a refusal: {err:?}"),
    }
    let key_of = |object_key: &str| ObjectKey::parse(object_key).unwrap();
    let (stored_key,): (String,) = sqlx::query_as("SELECT object_key FROM key_sets WHERE id = $1")
        .bind(id)
        .fetch_one(api.db.pool())
        .await
        .unwrap();
    assert_eq!(api.store.get_bytes(&key_of(&stored_key)).await.unwrap().as_ref(), genuine.as_slice(), "unchanged");
    // One of the same size goes through, but what was verified is bound by its ETag.
    let mut swapped = genuine.clone();
    let middle = swapped.len() / 2;
    swapped[middle] ^= 0xff;
    assert!(put(swapped, true).await.unwrap().status().is_success());
    let (object_key, size, e_tag): (String, i64, Option<String>) =
        sqlx::query_as("SELECT object_key, size_bytes, object_etag FROM key_sets WHERE id = $1")
            .bind(id)
            .fetch_one(api.db.pool())
            .await
            .unwrap();
    assert!(e_tag.is_some(), "the verified bundle's ETag is recorded");
    let key = key_of(&object_key);
    let pin = blindfold_store::Pinned { size: size as u64, e_tag };
    let err = api.store.get_pinned(&key, &pin).await.unwrap_err();
    assert!(matches!(err, blindfold_store::StoreError::ObjectChanged { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tenant_is_held_to_its_quotas() {
    let exact = bundle_len() as u64;
    let api = start_with(|config| {
        config.limits.tenant_max_pending_uploads = 2;
        config.limits.tenant_max_active_jobs = 1;
        config.limits.tenant_max_stored_bytes = 3 * exact + exact / 2;
    })
    .await;
    let announce = |token: String| {
        let api = &api;
        async move {
            api.call(Method::POST, "/v1/key-sets", Some(&token), Some(json!({"model": MODEL, "size_bytes": exact})))
                .await
        }
    };
    // Announced uploads: two, not three.
    let (_, a, _) = api.tenant("quota-a").await;
    assert_eq!(announce(a.clone()).await.status, StatusCode::CREATED);
    assert_eq!(announce(a.clone()).await.status, StatusCode::CREATED);
    let refused = announce(a.clone()).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"));
    assert!(refused.detail().contains("announced uploads: 2 now, 2 allowed"), "{}", refused.detail());
    // Another tenant is not affected.
    let (_, b, _) = api.tenant("quota-b").await;
    let key_set = api.ready_key_set(&b).await;
    // Unfinished jobs: one.
    let (_, _, _) = api.announce_job(&b, key_set, 1, json!({})).await;
    let batch = crypto().batch(key_set, 1, MODEL);
    let body = json!({"model": MODEL, "key_set_id": key_set, "image_count": 1, "size_bytes": batch.len()});
    let refused = api.call(Method::POST, "/v1/jobs", Some(&b), Some(body)).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"));
    assert!(refused.detail().contains("unfinished jobs"), "{}", refused.detail());
    // Stored bytes: a ready key set and an announced one count; a fourth bundle does not fit.
    let (_, c, _) = api.tenant("quota-c").await;
    api.ready_key_set(&c).await;
    api.ready_key_set(&c).await;
    assert_eq!(announce(c.clone()).await.status, StatusCode::CREATED);
    let refused = announce(c.clone()).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"));
    assert!(refused.detail().contains("stored bytes"), "{}", refused.detail());
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_answers_429_with_retry_after() {
    // Per minute, so that no machine is slow enough to refill a bucket between two requests.
    let api = start_with(|config| {
        config.limits.rate_per_minute = 1;
        config.limits.rate_burst = 4;
        config.limits.auth_failures_per_minute = 1;
    })
    .await;
    // Two tenants: four requests with the admin token, its whole burst.
    let (_, token, _) = api.tenant("st-throttled").await;
    let (_, other, _) = api.tenant("st-other").await;
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.push(api.call(Method::GET, "/v1/key-sets", Some(&token), None).await);
    }
    assert!(replies[..4].iter().all(|r| r.status == StatusCode::OK), "the burst passes");
    assert_eq!((replies[4].status, replies[4].code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    let retry = replies[4].retry_after.expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    // Health probes are never throttled.
    assert_eq!(api.call(Method::GET, "/healthz", None, None).await.status, StatusCode::OK);

    // Failed authentications from one address (each guess its own credential, so the rate
    // limit is not what stops them): both answered 401, the second is past the minute's one,
    // and then the address waits, whatever it sends (another tenant's valid token included).
    for attempt in 0..2 {
        let guess = format!("{}{:064x}", blindfold_queue::tenants::TOKEN_PREFIX, attempt);
        let reply = api.call(Method::GET, "/v1/jobs", Some(&guess), None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let blocked = api.call(Method::GET, "/v1/key-sets", Some(&other), None).await;
    assert_eq!((blocked.status, blocked.code()), (StatusCode::TOO_MANY_REQUESTS, "too_many_failed_authentications"));
    assert!(blocked.retry_after.is_some());
}

/// A database with no schema at all (nothing migrated) and its owner's URL.
async fn unmigrated_database() -> (TestDatabase, String) {
    let db = TestDatabase::new().await.unwrap();
    sqlx::query("DROP SCHEMA public CASCADE").execute(db.pool()).await.unwrap();
    sqlx::query("CREATE SCHEMA public").execute(db.pool()).await.unwrap();
    let owner = db.url().to_owned();
    (db, owner)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_a_database_that_is_not_migrated_unless_told_to_migrate() {
    let (db, owner) = unmigrated_database().await;
    let Err(refused) = start_on(db, owner, |_| {}).await else { panic!("the API must not start") };
    let message = format!("{refused:#}");
    assert!(message.contains("blindfold admin migrate") && message.contains("--migrate"), "{message}");

    // The single-process opt-in migrates (its user owns the schema) and serves.
    let (db, owner) = unmigrated_database().await;
    let api = start_on(db, owner, |config| config.migrate = true).await.unwrap();
    let models = api.call(Method::GET, "/v1/models", None, None).await;
    assert_eq!(models.status, StatusCode::OK, "{:?}", models.body);
    assert!(!models.body["models"].as_array().unwrap().is_empty(), "the built-in models are registered");
}
