//! The HTTP wire types (JSON bodies). Only this crate and the CLI know them.

use blindfold_store::{PresignedRequest, PresignedUpload, UploadedPart};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Integer fields of request bodies, read as JSON Schema reads the document's `integer`: any
/// number without a fractional part, so `3.0` too (JSON Schema 2020-12 validation, §6.1.1:
/// "integer" matches a number with a zero fractional part). serde takes only `3`, which
/// refused bodies the document promised to take.
mod whole_number {
    use serde::de::{Deserialize, Deserializer, Error};

    fn read<'de, D: Deserializer<'de>, T: TryFrom<i128>>(deserializer: D) -> Result<T, D::Error> {
        let number = serde_json::Number::deserialize(deserializer)?;
        let whole = if let Some(value) = number.as_i64() {
            Some(i128::from(value))
        } else if let Some(value) = number.as_u64() {
            Some(i128::from(value))
        } else {
            // Within ±2^64 an f64 converts to i128 exactly; outside it no field's type fits.
            number
                .as_f64()
                .filter(|value| value.fract() == 0.0 && value.abs() < 18_446_744_073_709_551_616.0)
                .map(|value| value as i128)
        };
        let whole =
            whole.ok_or_else(|| D::Error::custom(format!("invalid value: {number}, expected a whole number")))?;
        T::try_from(whole).map_err(|_| D::Error::custom(format!("invalid value: {number} is out of range")))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<i128>>(deserializer: D) -> Result<T, D::Error> {
        read(deserializer)
    }

    /// For an optional field (with `#[serde(default)]`): `null` is `None`.
    pub(super) fn option<'de, D: Deserializer<'de>, T: TryFrom<i128>>(deserializer: D) -> Result<Option<T>, D::Error> {
        #[derive(serde::Deserialize)]
        struct Whole<T: TryFrom<i128>>(#[serde(deserialize_with = "read")] T);
        Ok(Option::<Whole<T>>::deserialize(deserializer)?.map(|Whole(value)| value))
    }
}

/// A packing's name as requests spell it. Bodies carry it as a string (an unknown one is
/// answered 422 `unknown_packing`, naming the model's packings), so this type only gives the
/// document its enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PackingName {
    /// Many images per ciphertext: best throughput per batch.
    Throughput,
    /// One image at a time: lowest latency.
    Latency,
}

/// A job's state, as `JobView.state` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStateName {
    /// Announced, its batch not yet submitted.
    AwaitingUpload,
    /// Waiting for a worker.
    Queued,
    /// A worker holds it.
    Running,
    /// The result is ready.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// The states of a submitted job: what `GET /v1/jobs?state=` filters on (announced jobs are not
/// listed) and what a job's history records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubmittedJobState {
    /// Waiting for a worker.
    Queued,
    /// A worker holds it.
    Running,
    /// The result is ready.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// A signed HTTP request the client sends to object storage, without credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Transfer {
    /// `PUT` or `GET`.
    pub method: String,
    /// The URL, signature included.
    pub url: String,
    /// Headers that were signed and must be sent as they are.
    pub headers: Vec<TransferHeader>,
    /// When the signature stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// One header of a [`Transfer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransferHeader {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

impl From<PresignedRequest> for Transfer {
    fn from(request: PresignedRequest) -> Self {
        Self {
            method: request.method,
            url: request.url,
            headers: request.headers.into_iter().map(|(name, value)| TransferHeader { name, value }).collect(),
            expires_at: DateTime::<Utc>::from(request.expires_at),
        }
    }
}

/// Where to upload: one `PUT`, or (large objects) one `PUT` per part whose `ETag`s are sent
/// back with `complete`/`submit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Upload {
    /// One `PUT` of the whole object.
    Single {
        /// The request.
        request: Transfer,
    },
    /// A multipart upload: part `i` is bytes `[(i-1)·part_size, i·part_size)`.
    Multipart {
        /// Bytes per part (the last may be shorter).
        part_size: u64,
        /// One request per part.
        parts: Vec<UploadPart>,
    },
}

/// One part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UploadPart {
    /// Part number, from 1.
    #[schema(minimum = 1, maximum = 10000)]
    pub part_number: i32,
    /// The signed `PUT`.
    pub request: Transfer,
}

impl From<PresignedUpload> for Upload {
    fn from(upload: PresignedUpload) -> Self {
        Upload::Multipart {
            part_size: upload.part_size,
            parts: upload
                .parts
                .into_iter()
                .map(|part| UploadPart { part_number: part.part_number, request: part.request.into() })
                .collect(),
        }
    }
}

/// A part the client uploaded (multipart uploads only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CompletedPart {
    /// Part number, from 1 (S3 allows up to 10,000 parts).
    #[schema(minimum = 1, maximum = 10000)]
    #[serde(deserialize_with = "whole_number::deserialize")]
    pub part_number: i32,
    /// The `ETag` response header of the part's `PUT`.
    pub e_tag: String,
}

impl From<CompletedPart> for UploadedPart {
    fn from(part: CompletedPart) -> Self {
        UploadedPart { part_number: part.part_number, e_tag: part.e_tag }
    }
}

/// Body of `complete`/`submit`: the parts of a multipart upload (omit for a single `PUT`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UploadDone {
    /// The uploaded parts, for a multipart upload.
    #[serde(default)]
    pub parts: Vec<CompletedPart>,
}

/// `POST /v1/key-sets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeySet {
    /// The key-set id the client already wrote into its bundle and batches (`blindfold keygen`
    /// picks a random one); without it the service picks one, to be written into the bundle.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// The model the keys are for (`GET /v1/models`): `NAME` (its newest active version) or
    /// `NAME@VERSION`.
    #[schema(
        pattern = r"^[a-z0-9][a-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?$",
        max_length = 74,
        example = "mnist-cryptonets"
    )]
    pub model: String,
    /// `throughput` (default) or `latency`; the model must support it (`GET /v1/models`).
    #[serde(default)]
    #[schema(value_type = Option<PackingName>)]
    pub packing: Option<String>,
    /// Exact size of the key bundle in bytes: at most the server's upload limit
    /// (`BLINDFOLD_API_MAX_UPLOAD_BYTES`, 64 GiB by default; 422 `invalid_size` above it).
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    #[serde(deserialize_with = "whole_number::deserialize")]
    pub size_bytes: u64,
}

/// A key set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeySetView {
    /// Its id (written into the key bundle).
    pub id: Uuid,
    /// `awaiting_upload` until `complete` verified the bundle, then `ready`.
    #[schema(pattern = "^(awaiting_upload|ready)$")]
    pub status: String,
    /// The model.
    pub model: Option<String>,
    /// The model version the keys are pinned to (absent for key sets from before the registry).
    #[serde(default)]
    pub model_version: Option<u32>,
    /// The packing.
    pub packing: Option<String>,
    /// The parameter fingerprint the bundle must carry (hex).
    pub params_fingerprint: String,
    /// Bundle size in bytes.
    pub size_bytes: i64,
    /// When it was announced or registered.
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/key-sets` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeySetCreated {
    /// The key set.
    pub key_set: KeySetView,
    /// Where to upload the bundle.
    pub upload: Upload,
}

/// `GET /v1/key-sets` answer: the caller's key sets, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeySetList {
    /// Ready and announced key sets.
    pub key_sets: Vec<KeySetView>,
}

/// `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// The model: `NAME@VERSION`, or `NAME` for the version the key set is pinned to (its
    /// newest active version for a key set from before the registry).
    #[schema(
        pattern = r"^[a-z0-9][a-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?$",
        max_length = 74,
        example = "mnist-cryptonets"
    )]
    pub model: String,
    /// A ready key set of the caller's for this model and packing.
    pub key_set_id: Uuid,
    /// Images in the batch: at most the server's limit (`BLINDFOLD_API_MAX_IMAGES`, 100,000 by
    /// default; 422 `too_many_images` above it).
    #[schema(minimum = 1, maximum = 2147483647)]
    #[serde(deserialize_with = "whole_number::deserialize")]
    pub image_count: u32,
    /// Exact size of the batch file in bytes: at most the server's upload limit
    /// (`BLINDFOLD_API_MAX_UPLOAD_BYTES`, 64 GiB by default; 422 `invalid_size` above it).
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    #[serde(deserialize_with = "whole_number::deserialize")]
    pub size_bytes: u64,
    /// `throughput` (default) or `latency`; the model must support it (`GET /v1/models`).
    #[serde(default)]
    #[schema(value_type = Option<PackingName>)]
    pub packing: Option<String>,
    /// Makes creation idempotent per tenant: the same key answers the same job. 1 to 200
    /// characters, no control characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    pub idempotency_key: Option<String>,
    /// 0 (default) to 100; orders only the caller's own jobs.
    #[serde(default, deserialize_with = "whole_number::option")]
    #[schema(minimum = 0, maximum = 100)]
    pub priority: Option<i64>,
}

/// `POST /v1/jobs` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobCreated {
    /// The job.
    pub job: JobView,
    /// Where to upload the batch; absent when an idempotent repeat names a submitted job.
    pub upload: Option<Upload>,
}

/// A job's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobProgress {
    /// 0 to 1.
    #[schema(minimum = 0, maximum = 1)]
    pub fraction: f32,
    /// The stage the worker reported last.
    pub stage: Option<String>,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobError {
    /// Stable code.
    pub code: String,
    /// Message.
    pub message: Option<String>,
}

/// How long a job spent in each phase so far, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobDurations {
    /// Submitted to first started (or now).
    pub queued_seconds: Option<f64>,
    /// Started to finished (or now).
    pub running_seconds: Option<f64>,
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// Its id.
    pub id: Uuid,
    /// `awaiting_upload` (created, not submitted), `queued`, `running`, `succeeded`, `failed`,
    /// `cancelled`.
    #[schema(value_type = JobStateName)]
    pub state: String,
    /// Model.
    pub model: String,
    /// The model version the job is pinned to (absent for jobs from before the registry).
    #[serde(default)]
    pub model_version: Option<u32>,
    /// Packing.
    pub packing: String,
    /// Key set.
    pub key_set_id: Option<Uuid>,
    /// Images.
    pub image_count: i32,
    /// Priority.
    pub priority: i16,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// The attempt running or last run (0 before the first).
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: Option<i32>,
    /// Progress.
    pub progress: JobProgress,
    /// A cancel was requested and the worker has not stopped yet.
    pub cancel_requested: bool,
    /// Why it failed.
    pub error: Option<JobError>,
    /// Created (for submitted jobs: submitted).
    pub created_at: DateTime<Utc>,
    /// First started.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Time per phase.
    pub durations: JobDurations,
    /// Every state change so far, oldest first (from the audit trail; `GET /v1/jobs/{id}`
    /// only): with the time spent in the state before, this gives the duration of each phase
    /// of each attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<JobTransition>,
}

/// One state change of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobTransition {
    /// When.
    pub at: DateTime<Utc>,
    /// The state before (absent for the submission).
    #[schema(value_type = Option<SubmittedJobState>)]
    pub from_state: Option<String>,
    /// The state after.
    #[schema(value_type = SubmittedJobState)]
    pub to_state: String,
    /// The attempt after the change.
    pub attempt: i32,
    /// Why: `enqueued`, `claimed`, `lease_expired`, `retry`, `succeeded`, `failed_permanent`, …
    pub reason: String,
    /// Seconds spent since the previous change (absent for the first).
    pub seconds_since_previous: Option<f64>,
}

/// `GET /v1/jobs` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListJobs {
    /// Only jobs in this state.
    #[param(value_type = Option<SubmittedJobState>)]
    pub state: Option<String>,
    /// Page size: 50 by default, at most the server's limit (`BLINDFOLD_API_MAX_PAGE`, 200 by
    /// default; 400 `invalid_query` above it).
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^s[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    /// The jobs.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/jobs/{id}/result` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobResult {
    /// The job.
    pub job_id: Uuid,
    /// A signed `GET` of the encrypted result batch.
    pub download: Transfer,
}

/// `POST /v1/admin/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Unique name, 1–200 characters once leading and trailing white space is trimmed, no
    /// control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/admin/tenants` answer, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantList {
    /// The tenants.
    pub tenants: Vec<TenantView>,
}

/// `POST /v1/admin/tenants/{id}/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A label for the operator (never secret), at most 200 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    pub label: Option<String>,
}

/// A freshly issued token: `token` is shown this once and stored only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenIssued {
    /// The token's id (for revocation).
    pub id: Uuid,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The secret bearer token.
    pub token: String,
}

/// `GET /healthz`, `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Per dependency: `ok` or what failed.
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
}

/// One readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthCheck {
    /// `database` or `object_storage`.
    pub name: String,
    /// `ok` or the failure.
    pub status: String,
}

/// `POST /v1/admin/models`: announces a model version, whose two files are then uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnnounceModel {
    /// Registry name (`[a-z0-9][a-z0-9._-]{0,63}`); must equal the manifest's.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub name: String,
    /// Version; must equal the manifest's. Versions are immutable: one that exists is refused.
    #[schema(minimum = 1, maximum = 2147483647)]
    #[serde(deserialize_with = "whole_number::deserialize")]
    pub version: u32,
    /// SHA-256 of `model.onnx`, in hex.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub onnx_sha256: String,
    /// Exact size of `model.onnx` in bytes: at most the smaller of 256 MiB (the largest model
    /// file the registry takes) and the server's upload limit.
    #[schema(minimum = 1, maximum = 268435456)]
    #[serde(deserialize_with = "whole_number::deserialize")]
    pub onnx_bytes: u64,
    /// Exact size of `manifest.json` in bytes, at most 1 MiB.
    #[schema(minimum = 1, maximum = 1048576)]
    #[serde(deserialize_with = "whole_number::deserialize")]
    pub manifest_bytes: u64,
}

/// The two files of a model version: where to upload them (announce) or download them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelFiles {
    /// `model.onnx`.
    pub onnx: Transfer,
    /// `manifest.json`.
    pub manifest: Transfer,
}

/// `POST /v1/admin/models` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelAnnounced {
    /// `NAME@VERSION`.
    pub model: String,
    /// `uploading`: complete it once both files are uploaded.
    pub state: String,
    /// One `PUT` per file.
    pub uploads: ModelFiles,
}

/// `POST /v1/admin/models/{model}/complete` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelRegistered {
    /// The registered version, as the catalogue shows it.
    pub model: crate::catalogue::ModelInfo,
    /// Why a packing is missing from `model.packings`, if one is.
    pub refused_packings: Vec<String>,
}

/// `GET /v1/models/{model}` answer: what a client needs to pack and unpack for the model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelDetail {
    /// The version, its plans and fingerprints.
    pub model: crate::catalogue::ModelInfo,
    /// The manifest (preprocessing, classes, metrics).
    #[schema(value_type = Object)]
    pub manifest: serde_json::Value,
    /// Signed downloads of `model.onnx` and `manifest.json`.
    pub files: ModelFiles,
}

/// One registry row, for operators: any state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelRecord {
    /// Name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// `uploading`, `active` or `retired`.
    pub state: String,
    /// SHA-256 of `model.onnx` (hex).
    pub onnx_sha256: String,
    /// Size of `model.onnx`.
    pub onnx_bytes: u64,
    /// Parameter fingerprints, one per packing that compiles (`packing:hex`).
    pub params_fingerprints: Vec<String>,
    /// When it was announced.
    pub created_at: DateTime<Utc>,
    /// When it became active.
    pub activated_at: Option<DateTime<Utc>>,
    /// When it was retired.
    pub retired_at: Option<DateTime<Utc>>,
}

/// `GET /v1/admin/models` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelRecordList {
    /// Every version in every state, by name then newest first.
    pub models: Vec<ModelRecord>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{CreateJob, UploadDone};

    fn job(fields: serde_json::Value) -> Result<CreateJob, serde_json::Error> {
        let mut body = json!({"model": "m", "key_set_id": uuid::Uuid::nil(), "image_count": 2, "size_bytes": 10});
        body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        serde_json::from_value(body)
    }

    #[test]
    fn integer_fields_take_whole_numbers_written_as_json_schema_allows() {
        let parsed = job(json!({"image_count": 3.0, "size_bytes": 1e3, "priority": 7.0})).unwrap();
        assert_eq!((parsed.image_count, parsed.size_bytes, parsed.priority), (3, 1000, Some(7)));
        assert_eq!(job(json!({"priority": null})).unwrap().priority, None);
        assert_eq!(job(json!({})).unwrap().priority, None);
        let done: UploadDone = serde_json::from_value(json!({"parts": [{"part_number": 2.0, "e_tag": "x"}]})).unwrap();
        assert_eq!(done.parts[0].part_number, 2);
    }

    #[test]
    fn integer_fields_refuse_fractions_and_values_their_type_cannot_hold() {
        for fields in [
            json!({"image_count": 2.5}),
            json!({"image_count": -1}),
            json!({"image_count": 4294967296_u64}),
            json!({"size_bytes": 1e300}),
            json!({"priority": "1"}),
            json!({"priority": 0.5}),
        ] {
            assert!(job(fields.clone()).is_err(), "{fields} was taken");
        }
    }
}
