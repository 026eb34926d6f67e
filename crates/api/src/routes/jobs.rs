//! Jobs: announce (id + presigned upload), submit (header verified, then queued), watch, list,
//! cancel, and fetch the encrypted result.

use std::str::FromStr;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use blindfold_batch::{BatchKind, Expect, Packing, RawBatchReader};
use blindfold_queue::{CancelOutcome, Job, JobId, KeySetId, NewJob};
use blindfold_store::{JobId as StoreJob, ObjectKey, ObjectName, Pinned, Prefix};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::uploads::{self, Pending};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::limits::Announcing;
use crate::state::AppState;
use crate::wire::{
    CreateJob, JobCreated, JobDurations, JobError, JobPage, JobProgress, JobResult, JobTransition, JobView, ListJobs,
    UploadDone,
};

const STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];
/// Largest priority a tenant may give (priority orders only its own jobs).
const MAX_PRIORITY: i64 = 100;
/// Bytes fetched to read a batch header (the header is at most 4 KiB).
const HEADER_PROBE: u64 = 4096;

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

fn job_view(job: &Job) -> JobView {
    let now = Utc::now();
    let queued_until = job.started_at.or(job.finished_at).unwrap_or(now);
    JobView {
        id: job.id.0,
        state: job.state.as_str().to_owned(),
        model: job.model.clone(),
        model_version: job.model_version.and_then(|v| u32::try_from(v).ok()),
        packing: job.packing.clone(),
        key_set_id: job.key_set_id.map(|id| id.0),
        image_count: job.image_count,
        priority: job.priority,
        idempotency_key: job.idempotency_key.clone(),
        attempt: job.attempt,
        max_attempts: Some(job.max_attempts),
        progress: JobProgress { fraction: job.progress, stage: job.stage.clone() },
        cancel_requested: job.cancel_requested,
        error: job.error_code.as_ref().map(|code| JobError { code: code.clone(), message: job.error_message.clone() }),
        created_at: job.created_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
        durations: JobDurations {
            queued_seconds: Some(seconds(job.created_at, queued_until)),
            running_seconds: job.started_at.map(|started| seconds(started, job.finished_at.unwrap_or(now))),
        },
        history: Vec::new(),
    }
}

fn pending_view(row: &Pending, state: &str) -> JobView {
    JobView {
        id: row.id,
        state: state.to_owned(),
        model: row.model.clone(),
        model_version: row.model_version.and_then(|v| u32::try_from(v).ok()),
        packing: row.packing.clone(),
        key_set_id: row.key_set_id,
        image_count: row.image_count.unwrap_or(0),
        priority: row.priority,
        idempotency_key: row.idempotency_key.clone(),
        attempt: 0,
        max_attempts: None,
        progress: JobProgress { fraction: 0.0, stage: None },
        cancel_requested: false,
        error: None,
        created_at: row.created_at,
        started_at: None,
        finished_at: None,
        durations: JobDurations { queued_seconds: None, running_seconds: None },
        history: Vec::new(),
    }
}

fn job_key(tenant: Uuid, job: Uuid) -> ApiResult<ObjectKey> {
    Ok(ObjectKey::job_input(
        &uploads::store_tenant(tenant)?,
        &StoreJob::new(job.to_string()).map_err(|e| ApiError::internal("building an object key", e))?,
        &ObjectName::new("batch.bfib").map_err(|e| ApiError::internal("building an object key", e))?,
    ))
}

/// Announces a job: checks the model, packing, key set and limits, and answers the job id
/// and a presigned upload for its batch. With an `idempotency_key`, a repeat answers the same
/// job (200) and a different request under the same key answers 409.
#[utoipa::path(post, path = "/v1/jobs", operation_id = "create_job", tag = "jobs", security(("tenant_token" = [])),
    request_body = CreateJob,
    responses((status = 201, description = "Announced", body = JobCreated),
               (status = 200, description = "An idempotent repeat", body = JobCreated),
               (status = 400, body = Problem), (status = 401, body = Problem), (status = 409, body = Problem),
               (status = 413, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateJob>,
) -> ApiResult<(StatusCode, Json<JobCreated>)> {
    let mut reference = crate::registry::parse_ref(&body.model)?;
    let max_images = state.config.max_images;
    if body.image_count == 0 {
        return Err(ApiError::unprocessable("invalid_image_count", "image_count must be at least 1"));
    }
    if body.image_count > max_images {
        return Err(ApiError::unprocessable(
            "too_many_images",
            format!("image_count {} is above this server's limit of {max_images} images per job", body.image_count),
        ));
    }
    let priority = body.priority.unwrap_or(0);
    if !(0..=MAX_PRIORITY).contains(&priority) {
        return Err(ApiError::unprocessable(
            "invalid_priority",
            format!("priority must be between 0 and {MAX_PRIORITY}, not {priority}"),
        ));
    }
    let priority = priority as i16;
    // PostgreSQL's text cannot hold NUL; no other control character belongs in a key either.
    if let Some(key) = &body.idempotency_key
        && (key.is_empty() || key.chars().count() > 200 || key.chars().any(char::is_control))
    {
        return Err(ApiError::unprocessable(
            "invalid_idempotency_key",
            "an idempotency key is 1 to 200 characters, none of them control characters",
        ));
    }
    let size = uploads::check_size(&state, body.size_bytes)?;
    let image_count = body.image_count as i32;

    let Some(key_set) = super::key_sets::ready(&state, tenant.0, body.key_set_id).await? else {
        return Err(ApiError::unprocessable(
            "unknown_key_set",
            format!("no ready key set {} (create it and complete its upload first)", body.key_set_id),
        ));
    };
    // A bare name means the version the keys were made for: keys fit one version only.
    if reference.version.is_none() && key_set.model.as_deref() == Some(reference.name.as_str()) {
        reference.version = key_set.model_version;
    }
    let (model, packing) = super::model_packing(&state, &reference, body.packing.as_deref()).await?;
    fits_the_fleet(&state, &model, &packing)?;
    let fingerprint = &key_set.params_fingerprint;
    if *fingerprint != packing.params_fingerprint
        || key_set.model.as_deref().is_some_and(|m| m != model.name)
        || key_set.model_version.is_some_and(|v| v != model.version as i32)
        || key_set.packing.as_deref().is_some_and(|p| !key_set_serves(p, packing.packing))
    {
        let made_for = match (&key_set.model, key_set.model_version) {
            (Some(name), Some(version)) => format!("{name}@{version}"),
            (Some(name), None) => name.clone(),
            (None, _) => "another model".to_owned(),
        };
        return Err(ApiError::unprocessable(
            "key_set_mismatch",
            format!(
                "key set {} was made for {made_for} ({} packing, parameters {}), not for {} with {} packing (parameters {})",
                body.key_set_id,
                key_set.packing.as_deref().unwrap_or("?"),
                &fingerprint[..16.min(fingerprint.len())],
                model.reference(),
                packing.packing,
                &packing.params_fingerprint[..16],
            ),
        ));
    }
    let model_version = model.version as i32;

    // Idempotent repeats.
    if let Some(key) = &body.idempotency_key {
        let same = |m: &str, v: Option<i32>, p: &str, ks: Option<Uuid>, n: i32, prio: i16| {
            m == model.name
                && v == Some(model_version)
                && p == packing.packing.name()
                && ks == Some(body.key_set_id)
                && n == image_count
                && prio == priority
        };
        let submitted: Option<Job> = sqlx::query_as("SELECT * FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2")
            .bind(tenant.0)
            .bind(key)
            .fetch_optional(&state.pool)
            .await?;
        if let Some(job) = submitted {
            if !same(
                &job.model,
                job.model_version,
                &job.packing,
                job.key_set_id.map(|k| k.0),
                job.image_count,
                job.priority,
            ) {
                return Err(idempotency_conflict(key, job.id.0));
            }
            return Ok((StatusCode::OK, Json(JobCreated { job: job_view(&job), upload: None })));
        }
        let announced: Option<Pending> = sqlx::query_as(
            "SELECT * FROM pending_uploads WHERE tenant_id = $1 AND idempotency_key = $2 AND kind = 'job'",
        )
        .bind(tenant.0)
        .bind(key)
        .fetch_optional(&state.pool)
        .await?;
        if let Some(row) = announced {
            if !same(
                &row.model,
                row.model_version,
                &row.packing,
                row.key_set_id,
                row.image_count.unwrap_or(0),
                row.priority,
            ) || row.size_bytes != size
            {
                return Err(idempotency_conflict(key, row.id));
            }
            let object =
                ObjectKey::parse(&row.object_key).map_err(|e| ApiError::internal("reading an object key", e))?;
            let (upload, upload_id) = uploads::presign(&state, &object, body.size_bytes).await?;
            if let Some(old) = &row.upload_id {
                let _ = state.store.abort_upload(&object, old).await;
            }
            sqlx::query("UPDATE pending_uploads SET upload_id = $2 WHERE id = $1")
                .bind(row.id)
                .bind(upload_id)
                .execute(&state.pool)
                .await?;
            return Ok((
                StatusCode::OK,
                Json(JobCreated { job: pending_view(&row, "awaiting_upload"), upload: Some(upload) }),
            ));
        }
    }

    crate::limits::check_quotas(&state, tenant.0, Announcing { bytes: body.size_bytes, job: true }).await?;
    let id = Uuid::new_v4();
    let object = job_key(tenant.0, id)?;
    let (upload, upload_id) = uploads::presign(&state, &object, body.size_bytes).await?;
    let inserted: Option<Pending> = sqlx::query_as(
        r#"
        INSERT INTO pending_uploads (id, tenant_id, kind, model, packing, params_fingerprint, key_set_id,
                                     image_count, priority, idempotency_key, object_key, size_bytes, upload_id,
                                     model_version)
        VALUES ($1, $2, 'job', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
        ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING *
        "#,
    )
    .bind(id)
    .bind(tenant.0)
    .bind(&model.name)
    .bind(packing.packing.name())
    .bind(&packing.params_fingerprint)
    .bind(body.key_set_id)
    .bind(image_count)
    .bind(priority)
    .bind(&body.idempotency_key)
    .bind(object.as_str())
    .bind(size)
    .bind(upload_id)
    .bind(model_version)
    .fetch_optional(&state.pool)
    .await?;
    let Some(row) = inserted else {
        return Err(ApiError::conflict(
            "concurrent_request",
            "another request with this idempotency key is being handled; retry it",
        ));
    };
    tracing::info!(job = %id, model = %model.reference(), images = image_count, "job announced");
    Ok((StatusCode::CREATED, Json(JobCreated { job: pending_view(&row, "awaiting_upload"), upload: Some(upload) })))
}

fn idempotency_conflict(key: &str, existing: Uuid) -> ApiError {
    ApiError::conflict(
        "idempotency_conflict",
        format!("idempotency key {key:?} already names job {existing} with different parameters; use a new key"),
    )
}

/// Verifies the uploaded batch against the job (model and version, parameter fingerprint,
/// packing, key set, image count, exact file size) and queues the job. Submitting a queued
/// job again answers it unchanged.
#[utoipa::path(post, path = "/v1/jobs/{job_id}/submit", operation_id = "submit_job", tag = "jobs", security(("tenant_token" = [])),
    params(("job_id" = Uuid, Path, description = "The job")),
    request_body(content = UploadDone, description = "The parts, for a multipart upload; may be empty"),
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem),
               (status = 422, description = "The batch does not match the job", body = Problem)))]
pub async fn submit(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<JobView>> {
    let done = super::upload_done(body)?;
    let Some(row) = uploads::pending(&state, tenant.0, "job", id).await? else {
        return match state.queue.tenant_job(tenant, JobId(id)).await? {
            Some(job) => Ok(Json(job_view(&job))),
            None => Err(ApiError::not_found("job", id)),
        };
    };
    let (object, pin) = uploads::confirm(&state, &row, &done).await?;
    verify_header(&state, &row, &object, &pin).await?;

    let key_set = row.key_set_id.ok_or_else(|| ApiError::internal("submitting", "a pending job without key set"))?;
    let mut tx = state.pool.begin().await?;
    let removed = sqlx::query("DELETE FROM pending_uploads WHERE id = $1").bind(id).execute(&mut *tx).await?;
    if removed.rows_affected() != 1 {
        return Err(ApiError::conflict("concurrent_update", "the job was submitted or cancelled meanwhile"));
    }
    let enqueued = state
        .queue
        .enqueue_as_in(
            &mut tx,
            JobId(id),
            NewJob {
                tenant_id: tenant,
                idempotency_key: row.idempotency_key.clone(),
                model: row.model.clone(),
                model_version: row.model_version,
                packing: row.packing.clone(),
                key_set_id: Some(KeySetId(key_set)),
                image_count: row.image_count.unwrap_or(0),
                priority: row.priority,
                input_key: row.object_key.clone(),
                max_attempts: None,
            },
        )
        .await?;
    let mut job = enqueued.job;
    if enqueued.created {
        let bytes = i64::try_from(pin.size).map_err(|e| ApiError::internal("recording the input's size", e))?;
        job = state.queue.pin_input(&mut tx, job.id, bytes, pin.e_tag.as_deref()).await?.unwrap_or(job);
    }
    tx.commit().await?;
    tracing::info!(job = %job.id.0, "job queued");
    Ok(Json(job_view(&job)))
}

async fn verify_header(state: &AppState, row: &Pending, object: &ObjectKey, pin: &Pinned) -> ApiResult<()> {
    let size = u64::try_from(row.size_bytes).unwrap_or(0);
    let head = state.store.get_range_pinned(object, 0..size.min(HEADER_PROBE), pin).await?;
    // Rows from before the registry name the built-in model's version.
    let version = match row.model_version {
        Some(version) => version.to_string(),
        None => blindfold_nn::registry::load(&row.model).map(|m| m.manifest.version.to_string()).unwrap_or_default(),
    };
    let packing =
        Packing::from_str(&row.packing).map_err(|_| ApiError::internal("reading a job's packing", &row.packing))?;
    let mut expect = Expect::new()
        .model(row.model.clone(), version)
        .packing(packing)
        .fingerprint(uploads::fingerprint(&row.params_fingerprint)?)
        .image_count(u64::try_from(row.image_count.unwrap_or(0)).unwrap_or(0));
    if let Some(key_set) = row.key_set_id {
        expect = expect.key_set(key_set);
    }
    let reader = RawBatchReader::open(&head[..], BatchKind::Input, &expect).map_err(|error| {
        ApiError::unprocessable("batch_mismatch", format!("the uploaded batch does not match the job: {error}"))
    })?;
    let expected_len = reader.layout().file_len();
    if expected_len != size {
        return Err(ApiError::unprocessable(
            "batch_mismatch",
            format!("the uploaded batch is {size} bytes but its header describes a file of {expected_len} bytes"),
        ));
    }
    Ok(())
}

/// A job: state, attempts, progress with stage, timestamps, time per phase, every state change
/// with the time spent before it, error.
#[utoipa::path(get, path = "/v1/jobs/{job_id}", operation_id = "get_job", tag = "jobs", security(("tenant_token" = [])),
    params(("job_id" = Uuid, Path, description = "The job")),
    responses((status = 200, body = JobView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn get_one(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<JobView>> {
    if let Some(job) = state.queue.tenant_job(tenant, JobId(id)).await? {
        let mut view = job_view(&job);
        let events = state.queue.events(job.id).await?;
        let mut previous: Option<DateTime<Utc>> = None;
        for event in events {
            view.history.push(JobTransition {
                at: event.at,
                from_state: event.from_state,
                to_state: event.to_state,
                attempt: event.attempt,
                reason: event.reason,
                seconds_since_previous: previous.map(|before| seconds(before, event.at)),
            });
            previous = Some(event.at);
        }
        return Ok(Json(view));
    }
    match uploads::pending(&state, tenant.0, "job", id).await? {
        Some(row) => Ok(Json(pending_view(&row, "awaiting_upload"))),
        None => Err(ApiError::not_found("job", id)),
    }
}

#[derive(sqlx::FromRow)]
struct Listed {
    seq: i64,
    #[sqlx(flatten)]
    job: Job,
}

/// The caller's submitted jobs, newest first, in pages (keyset pagination: a page never
/// repeats or skips a job while new jobs arrive).
#[utoipa::path(get, path = "/v1/jobs", operation_id = "list_jobs", tag = "jobs", security(("tenant_token" = [])),
    params(ListJobs),
    responses((status = 200, body = JobPage), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn list(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListJobs>,
) -> ApiResult<Json<JobPage>> {
    if let Some(wanted) = &query.state
        && !STATES.contains(&wanted.as_str())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("unknown state {wanted:?}; one of {}", STATES.join(", ")),
        ));
    }
    let max = state.config.max_page.max(1);
    let limit = query.limit.unwrap_or(50.min(max));
    if limit == 0 || limit > max {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("limit must be 1 to {max}")));
    }
    let before: Option<i64> = match &query.cursor {
        None => None,
        Some(cursor) => Some(
            cursor
                .strip_prefix("s")
                .and_then(|seq| seq.parse().ok())
                .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "malformed cursor"))?,
        ),
    };
    let rows: Vec<Listed> = sqlx::query_as(
        r#"
        SELECT * FROM jobs
        WHERE tenant_id = $1 AND ($2::text IS NULL OR state = $2) AND ($3::bigint IS NULL OR seq < $3)
        ORDER BY seq DESC
        LIMIT $4
        "#,
    )
    .bind(tenant.0)
    .bind(&query.state)
    .bind(before)
    .bind(i64::from(limit) + 1)
    .fetch_all(&state.pool)
    .await?;
    let more = rows.len() > limit as usize;
    let page: Vec<&Listed> = rows.iter().take(limit as usize).collect();
    let next_cursor = if more { page.last().map(|row| format!("s{}", row.seq)) } else { None };
    Ok(Json(JobPage { jobs: page.iter().map(|row| job_view(&row.job)).collect(), next_cursor }))
}

/// Cancels a job: a queued one at once, a running one when its worker next reports; an
/// announced, unsubmitted one is dropped with its upload. A finished job answers 409.
#[utoipa::path(post, path = "/v1/jobs/{job_id}/cancel", operation_id = "cancel_job", tag = "jobs", security(("tenant_token" = [])),
    params(("job_id" = Uuid, Path, description = "The job")),
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn cancel(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<JobView>> {
    match state.queue.cancel(tenant, JobId(id)).await {
        Ok(CancelOutcome::AlreadyFinal(final_state)) => Err(ApiError::conflict(
            "already_final",
            format!("job {id} already {} and cannot be cancelled", final_state.as_str()),
        )),
        Ok(_) => {
            let job = state.queue.tenant_job(tenant, JobId(id)).await?.ok_or_else(|| ApiError::not_found("job", id))?;
            Ok(Json(job_view(&job)))
        }
        Err(blindfold_queue::Error::JobNotFound(_)) => {
            let Some(row) = uploads::pending(&state, tenant.0, "job", id).await? else {
                return Err(ApiError::not_found("job", id));
            };
            sqlx::query("DELETE FROM pending_uploads WHERE id = $1").bind(id).execute(&state.pool).await?;
            let object =
                ObjectKey::parse(&row.object_key).map_err(|e| ApiError::internal("reading an object key", e))?;
            if let Some(upload_id) = &row.upload_id {
                let _ = state.store.abort_upload(&object, upload_id).await;
            }
            let prefix = Prefix::job(
                &uploads::store_tenant(tenant.0)?,
                &StoreJob::new(id.to_string()).map_err(|e| ApiError::internal("building an object key", e))?,
            );
            state.store.delete_prefix(&prefix).await?;
            Ok(Json(pending_view(&row, "cancelled")))
        }
        Err(other) => Err(other.into()),
    }
}

/// A presigned `GET` of the encrypted result, once the job succeeded (409 before).
#[utoipa::path(get, path = "/v1/jobs/{job_id}/result", operation_id = "get_job_result", tag = "jobs", security(("tenant_token" = [])),
    params(("job_id" = Uuid, Path, description = "The job")),
    responses((status = 200, body = JobResult), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn result(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<JobResult>> {
    let Some(job) = state.queue.tenant_job(tenant, JobId(id)).await? else {
        return match uploads::pending(&state, tenant.0, "job", id).await? {
            Some(_) => Err(ApiError::conflict("result_not_ready", format!("job {id} has not been submitted"))),
            None => Err(ApiError::not_found("job", id)),
        };
    };
    let Some(result_key) = job.result_key.as_deref().filter(|_| job.state == blindfold_queue::JobState::Succeeded)
    else {
        return Err(ApiError::conflict(
            "result_not_ready",
            format!("job {id} is {}; a result exists once it has succeeded", job.state.as_str()),
        ));
    };
    let key = ObjectKey::parse(result_key).map_err(|e| ApiError::internal("reading a result key", e))?;
    // Defence in depth: the worker must have written inside the tenant's prefix.
    if key.tenant().map(|t| t.as_str().to_owned()) != Some(tenant.0.to_string()) {
        return Err(ApiError::internal("reading a result key", "result outside the tenant's prefix"));
    }
    let download = state.store.presign_get(&key, state.config.presign_expiry()).await?;
    Ok(Json(JobResult { job_id: id, download: download.into() }))
}

/// Refuses a job no worker of the fleet could hold ([`crate::Config::fleet_memory_mib`]):
/// accepted, it would be killed for memory on every attempt.
fn fits_the_fleet(
    state: &AppState,
    model: &crate::catalogue::ModelInfo,
    packing: &crate::catalogue::PackingInfo,
) -> ApiResult<()> {
    let Some(limit) = state.config.fleet_memory_mib.map(|mib| mib << 20) else { return Ok(()) };
    let needs = packing.required_memory_bytes();
    if needs <= limit {
        return Ok(());
    }
    let gib = |bytes: u64| {
        if bytes >= 1 << 30 {
            format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
        } else {
            format!("{:.0} MiB", (bytes as f64 / f64::from(1u32 << 20)).ceil())
        }
    };
    let alternative = model
        .packings
        .iter()
        .filter(|other| other.packing != packing.packing && other.required_memory_bytes() <= limit)
        .map(|other| format!("; the {} packing needs {} and fits", other.packing, gib(other.required_memory_bytes())))
        .next()
        .unwrap_or_default();
    Err(ApiError::unprocessable(
        "does_not_fit",
        format!(
            "{} in the {} packing needs about {} per worker (the plan's peak estimate), but this \
             fleet's workers give a job {}{alternative}",
            model.reference(),
            packing.packing,
            gib(needs),
            gib(limit),
        ),
    ))
}

/// Whether a key set registered for `key_set_packing` can evaluate a job in `job_packing`: its
/// own packing, and a latency key set also the throughput packing (same parameters, checked by
/// fingerprint; its relinearization key is all a throughput batch needs), which lets a client
/// choose per job by image count.
fn key_set_serves(key_set_packing: &str, job_packing: Packing) -> bool {
    key_set_packing.parse::<Packing>().is_ok_and(|packing| packing.serves(job_packing))
}

#[cfg(test)]
mod tests {
    use super::{Packing, key_set_serves};

    #[test]
    fn a_latency_key_set_also_serves_throughput_jobs_but_not_the_reverse() {
        assert!(key_set_serves("throughput", Packing::Throughput));
        assert!(key_set_serves("latency", Packing::Latency));
        assert!(key_set_serves("latency", Packing::Throughput));
        assert!(!key_set_serves("throughput", Packing::Latency));
        assert!(!key_set_serves("sideways", Packing::Throughput));
    }
}
