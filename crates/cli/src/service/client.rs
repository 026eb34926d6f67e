//! A typed client of the Blindfold HTTP API, and the presigned transfers to object storage.
//!
//! Every failure is a [`ServiceError`] whose message says what to do next; the CLI maps it to
//! exit code 3.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use blindfold_api::{
    AnnounceModel, Catalogue, CompletedPart, CreateJob, CreateKeySet, CreateTenant, CreateToken, Health, JobCreated,
    JobPage, JobResult, JobView, KeySetCreated, KeySetList, KeySetView, ModelAnnounced, ModelDetail, ModelInfo,
    ModelRecord, ModelRecordList, ModelRegistered, Problem, TenantList, TenantView, TokenIssued, Transfer, Upload,
    UploadDone, UploadPart,
};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use uuid::Uuid;

/// Called with the bytes transferred so far (it may go back when a failed part is resent).
pub type OnBytes = Arc<dyn Fn(u64) + Send + Sync>;

/// Attempts per part (or per download) before a transfer gives up.
const TRANSFER_ATTEMPTS: u32 = 6;
/// Parts uploaded at once.
const PARALLEL_PARTS: usize = 4;
/// Body chunk size: the granularity of upload progress.
const CHUNK: usize = 256 * 1024;

/// Why talking to the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No connection (refused, DNS, TLS, timeout).
    #[error(
        "cannot reach the API at {url}: {reason}. Is the service running (`blindfold dev up` starts one on this \
         machine)? Check --api, BLINDFOLD_API or `blindfold login`"
    )]
    Unreachable {
        /// The API's base URL.
        url: String,
        /// What the HTTP client said.
        reason: String,
    },
    /// No API or token configured.
    #[error("{0}")]
    NotConfigured(String),
    /// The config file is unreadable or unsafe.
    #[error("{0}")]
    Config(String),
    /// 401 on a tenant route.
    #[error(
        "the token was refused by {url} ({detail}): run `blindfold login --api {url} --token TOKEN` with a valid token"
    )]
    TokenRefused {
        /// The API's base URL.
        url: String,
        /// The server's reason.
        detail: String,
    },
    /// 401 on an operator route.
    #[error(
        "the admin token was refused by {url} ({detail}): pass the operator token the API was started with \
         (--admin-token or BLINDFOLD_ADMIN_TOKEN)"
    )]
    AdminTokenRefused {
        /// The API's base URL.
        url: String,
        /// The server's reason.
        detail: String,
    },
    /// Any other error answer.
    #[error("{detail} ({status} {code}){hint}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The problem's stable code.
        code: String,
        /// The server's explanation.
        detail: String,
        /// What to do next (empty, or starting with "; ").
        hint: String,
    },
    /// An answer that is not what the API documents.
    #[error("unexpected answer from {url}: {reason}; is {url} a Blindfold API?")]
    Protocol {
        /// The API's base URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// A presigned upload or download failed.
    #[error("{0}")]
    Transfer(String),
}

impl ServiceError {
    /// The API's problem code, when the service answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ServiceError::Api { code, .. } => Some(code),
            ServiceError::TokenRefused { .. } | ServiceError::AdminTokenRefused { .. } => Some("unauthorized"),
            _ => None,
        }
    }

    /// Whether this is a 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ServiceError::Api { status: 404, .. })
    }
}

fn hint(code: &str, status: u16) -> String {
    let hint = match code {
        "unknown_key_set" => "register the keys with `blindfold keys register --keys DIR`",
        "key_set_mismatch" => "make keys for this model and packing with `blindfold keygen --model NAME --out DIR`",
        "result_not_ready" => "wait for the job with `blindfold wait JOB`",
        "already_final" => "the job has finished; see `blindfold status JOB`",
        "not_found" => "list what exists with `blindfold jobs list` or `blindfold keys list`",
        "name_taken" => "pick another name, or issue a token for the existing tenant",
        "busy" => "the service is verifying other uploads; run the command again in a few seconds",
        _ if status >= 500 => "the service failed; its logs say why",
        _ => return String::new(),
    };
    format!("; {hint}")
}

/// Whether the URL's host is this machine: `localhost` or a loopback address.
fn is_loopback(base: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base) else { return false };
    let Some(host) = url.host_str() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A client of one API, authenticated as a tenant or as the operator.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Option<SecretString>,
    admin: bool,
    http: reqwest::Client,
    transfers: reqwest::Client,
}

impl ApiClient {
    /// A client of the API at `base` (`http(s)://host:port`) with a tenant token. A token is
    /// sent over plain `http://` only to this machine (loopback), unless `plain_http` says so.
    pub fn new(base: &str, token: Option<SecretString>, plain_http: bool) -> Result<ApiClient, ServiceError> {
        Self::build(base, token, false, plain_http)
    }

    /// A client of the API's operator routes with the admin token (the same rule for `http://`).
    pub fn admin(base: &str, admin_token: SecretString, plain_http: bool) -> Result<ApiClient, ServiceError> {
        Self::build(base, Some(admin_token), true, plain_http)
    }

    fn build(
        base: &str,
        token: Option<SecretString>,
        admin: bool,
        plain_http: bool,
    ) -> Result<ApiClient, ServiceError> {
        let base = base.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ServiceError::NotConfigured(format!(
                "the API address {base:?} must start with http:// or https://, e.g. http://127.0.0.1:8080"
            )));
        }
        if token.is_some() && !plain_http && base.starts_with("http://") && !is_loopback(&base) {
            return Err(ServiceError::NotConfigured(format!(
                "{base} is plain http:// to another machine: anyone on the way could read the token. Use \
                 https://, or pass --allow-http if this network is trusted"
            )));
        }
        let build = |timeout: Option<Duration>| {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!("blindfold-cli/", env!("CARGO_PKG_VERSION")));
            builder = match timeout {
                Some(timeout) => builder.timeout(timeout),
                None => builder.read_timeout(Duration::from_secs(120)),
            };
            builder.build().map_err(|e| ServiceError::Config(format!("building the HTTP client: {e}")))
        };
        Ok(ApiClient { base, token, admin, http: build(Some(Duration::from_secs(120)))?, transfers: build(None)? })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ServiceError> {
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ServiceError::Protocol { url: self.base.clone(), reason: format!("{path}: {e}") })
    }

    async fn send<B: Serialize>(&self, method: Method, path: &str, body: Option<&B>) -> Result<Bytes, ServiceError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let request_id =
            response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status.is_success() {
            return Ok(bytes);
        }
        let problem: Option<Problem> = serde_json::from_slice(&bytes).ok();
        let (code, detail) = match problem {
            Some(problem) => (problem.code, problem.detail),
            None => ("http_error".to_owned(), format!("{} answered {status} to {path}", self.base)),
        };
        if status == StatusCode::UNAUTHORIZED {
            let url = self.base.clone();
            return Err(if self.admin {
                ServiceError::AdminTokenRefused { url, detail }
            } else {
                ServiceError::TokenRefused { url, detail }
            });
        }
        let mut hint = hint(&code, status.as_u16());
        if status.is_server_error() && !request_id.is_empty() {
            hint.push_str(&format!(" (request id {request_id})"));
        }
        Err(ServiceError::Api { status: status.as_u16(), code, detail, hint })
    }

    fn unreachable(&self, error: &reqwest::Error) -> ServiceError {
        ServiceError::Unreachable { url: self.base.clone(), reason: error_chain(error) }
    }

    /// `GET /readyz`: the service and its database and storage.
    pub async fn ready(&self) -> Result<Health, ServiceError> {
        match self.call::<(), Health>(Method::GET, "/readyz", None).await {
            // 503 carries the failed checks in the same shape.
            Err(ServiceError::Api { status: 503, detail, .. }) => {
                Ok(Health { status: format!("unavailable: {detail}"), checks: Vec::new() })
            }
            other => other,
        }
    }

    /// Checks that the token is accepted (a one-job listing).
    pub async fn check_token(&self) -> Result<(), ServiceError> {
        self.call::<(), JobPage>(Method::GET, "/v1/jobs?limit=1", None).await.map(|_| ())
    }

    /// The model names the service serves.
    pub async fn model_names(&self) -> Result<Vec<String>, ServiceError> {
        let mut names: Vec<String> = self.catalogue().await?.models.into_iter().map(|m| m.name).collect();
        names.dedup();
        Ok(names)
    }

    /// `GET /v1/models`: the active model versions.
    pub async fn catalogue(&self) -> Result<Catalogue, ServiceError> {
        self.call::<(), _>(Method::GET, "/v1/models", None).await
    }

    /// `GET /v1/models/{model}`: one version (`NAME` or `NAME@VERSION`) with signed downloads.
    pub async fn model(&self, model: &str) -> Result<ModelDetail, ServiceError> {
        self.call::<(), _>(Method::GET, &format!("/v1/models/{}", path_segment(model)), None).await
    }

    /// `POST /v1/admin/models`.
    pub async fn announce_model(&self, body: &AnnounceModel) -> Result<ModelAnnounced, ServiceError> {
        self.call(Method::POST, "/v1/admin/models", Some(body)).await
    }

    /// `POST /v1/admin/models/{model}/complete`.
    pub async fn complete_model(&self, model: &str) -> Result<ModelRegistered, ServiceError> {
        self.call::<(), _>(Method::POST, &format!("/v1/admin/models/{}/complete", path_segment(model)), None).await
    }

    /// `POST /v1/admin/models/{model}/retire`.
    pub async fn retire_model(&self, model: &str) -> Result<ModelInfo, ServiceError> {
        self.call::<(), _>(Method::POST, &format!("/v1/admin/models/{}/retire", path_segment(model)), None).await
    }

    /// `GET /v1/admin/models`: every version in every state.
    pub async fn model_records(&self) -> Result<Vec<ModelRecord>, ServiceError> {
        Ok(self.call::<(), ModelRecordList>(Method::GET, "/v1/admin/models", None).await?.models)
    }

    /// `POST /v1/key-sets`.
    pub async fn create_key_set(&self, body: &CreateKeySet) -> Result<KeySetCreated, ServiceError> {
        self.call(Method::POST, "/v1/key-sets", Some(body)).await
    }

    /// `POST /v1/key-sets/{id}/complete`.
    pub async fn complete_key_set(&self, id: Uuid, parts: Vec<CompletedPart>) -> Result<KeySetView, ServiceError> {
        self.call(Method::POST, &format!("/v1/key-sets/{id}/complete"), Some(&UploadDone { parts })).await
    }

    /// `GET /v1/key-sets/{id}`.
    pub async fn key_set(&self, id: Uuid) -> Result<KeySetView, ServiceError> {
        self.call::<(), _>(Method::GET, &format!("/v1/key-sets/{id}"), None).await
    }

    /// `DELETE /v1/key-sets/{id}`.
    pub async fn delete_key_set(&self, id: Uuid) -> Result<(), ServiceError> {
        self.send::<()>(Method::DELETE, &format!("/v1/key-sets/{id}"), None).await.map(|_| ())
    }

    /// `GET /v1/key-sets`.
    pub async fn key_sets(&self) -> Result<Vec<KeySetView>, ServiceError> {
        Ok(self.call::<(), KeySetList>(Method::GET, "/v1/key-sets", None).await?.key_sets)
    }

    /// `POST /v1/jobs`.
    pub async fn create_job(&self, body: &CreateJob) -> Result<JobCreated, ServiceError> {
        self.call(Method::POST, "/v1/jobs", Some(body)).await
    }

    /// `POST /v1/jobs/{id}/submit`.
    pub async fn submit_job(&self, id: Uuid, parts: Vec<CompletedPart>) -> Result<JobView, ServiceError> {
        self.call(Method::POST, &format!("/v1/jobs/{id}/submit"), Some(&UploadDone { parts })).await
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: Uuid) -> Result<JobView, ServiceError> {
        self.call::<(), _>(Method::GET, &format!("/v1/jobs/{id}"), None).await
    }

    /// `GET /v1/jobs`: one page, newest first.
    pub async fn jobs(&self, state: Option<&str>, limit: u32, cursor: Option<&str>) -> Result<JobPage, ServiceError> {
        let mut path = format!("/v1/jobs?limit={limit}");
        if let Some(state) = state {
            path.push_str(&format!("&state={}", query_value(state)));
        }
        if let Some(cursor) = cursor {
            path.push_str(&format!("&cursor={}", query_value(cursor)));
        }
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/jobs/{id}/cancel`.
    pub async fn cancel_job(&self, id: Uuid) -> Result<JobView, ServiceError> {
        self.call::<(), _>(Method::POST, &format!("/v1/jobs/{id}/cancel"), None).await
    }

    /// `GET /v1/jobs/{id}/result`.
    pub async fn job_result(&self, id: Uuid) -> Result<JobResult, ServiceError> {
        self.call::<(), _>(Method::GET, &format!("/v1/jobs/{id}/result"), None).await
    }

    /// `POST /v1/admin/tenants`.
    pub async fn create_tenant(&self, name: &str) -> Result<TenantView, ServiceError> {
        self.call(Method::POST, "/v1/admin/tenants", Some(&CreateTenant { name: name.to_owned() })).await
    }

    /// `GET /v1/admin/tenants`.
    pub async fn tenants(&self) -> Result<Vec<TenantView>, ServiceError> {
        Ok(self.call::<(), TenantList>(Method::GET, "/v1/admin/tenants", None).await?.tenants)
    }

    /// `POST /v1/admin/tenants/{id}/tokens`.
    pub async fn issue_token(&self, tenant: Uuid, label: Option<String>) -> Result<TokenIssued, ServiceError> {
        self.call(Method::POST, &format!("/v1/admin/tenants/{tenant}/tokens"), Some(&CreateToken { label })).await
    }

    /// `DELETE /v1/admin/tokens/{id}`.
    pub async fn revoke_token(&self, token: Uuid) -> Result<(), ServiceError> {
        self.send::<()>(Method::DELETE, &format!("/v1/admin/tokens/{token}"), None).await.map(|_| ())
    }

    /// Uploads the file at `path` as `upload` says: one `PUT`, or its parts
    /// [`PARALLEL_PARTS`] at a time. A part (or the single `PUT`) that meets a network error,
    /// a 5xx, 408 or 429 is sent again with backoff, so an interrupted upload resumes at the
    /// part that failed. Returns the parts to hand back to `complete`/`submit`.
    pub async fn upload(
        &self,
        upload: &Upload,
        path: &Path,
        progress: OnBytes,
    ) -> Result<Vec<CompletedPart>, ServiceError> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| ServiceError::Transfer(format!("reading {}: {e}", path.display())))?
            .len();
        let sent = Arc::new(AtomicU64::new(0));
        match upload {
            Upload::Single { request } => {
                let part = UploadPart { part_number: 1, request: request.clone() };
                self.put_part(path, 0, size, &part, &sent, &progress).await?;
                Ok(Vec::new())
            }
            Upload::Multipart { part_size, parts } => {
                let part_size = (*part_size).max(1);
                let expected = size.div_ceil(part_size).max(1);
                if expected != parts.len() as u64 {
                    return Err(ServiceError::Transfer(format!(
                        "{} has {size} bytes, but the service prepared {} parts of {part_size} bytes",
                        path.display(),
                        parts.len()
                    )));
                }
                let mut done: Vec<CompletedPart> = futures::stream::iter(parts.iter())
                    .map(|part| {
                        let offset = u64::try_from(part.part_number - 1).unwrap_or(0) * part_size;
                        let len = part_size.min(size.saturating_sub(offset));
                        self.put_part(path, offset, len, part, &sent, &progress)
                    })
                    .buffer_unordered(PARALLEL_PARTS)
                    .try_collect()
                    .await?;
                done.sort_by_key(|p| p.part_number);
                Ok(done)
            }
        }
    }

    async fn put_part(
        &self,
        path: &Path,
        offset: u64,
        len: u64,
        part: &UploadPart,
        sent: &Arc<AtomicU64>,
        progress: &OnBytes,
    ) -> Result<CompletedPart, ServiceError> {
        let shown = path.display();
        let io =
            |e: std::io::Error| ServiceError::Transfer(format!("reading part {} of {shown}: {e}", part.part_number));
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
        let mut buffer = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(len).read_to_end(&mut buffer).await.map_err(io)?;
        let body = Bytes::from(buffer);
        let mut attempt = 1;
        loop {
            let this_attempt = Arc::new(AtomicU64::new(0));
            let outcome = self.put_once(&part.request, body.clone(), sent, &this_attempt, progress).await;
            match outcome {
                Ok(e_tag) => return Ok(CompletedPart { part_number: part.part_number, e_tag }),
                Err((error, transient)) => {
                    // What this attempt sent does not count: it is sent again.
                    let back = this_attempt.load(Ordering::Relaxed);
                    let now = sent.fetch_sub(back, Ordering::Relaxed).saturating_sub(back);
                    progress(now);
                    if !transient || attempt >= TRANSFER_ATTEMPTS {
                        return Err(ServiceError::Transfer(format!(
                            "uploading part {} of {shown} failed after {attempt} attempt(s): {error}",
                            part.part_number
                        )));
                    }
                    let backoff = Duration::from_millis((250u64 << attempt).min(8000));
                    tracing::warn!(part = part.part_number, attempt, %error, "upload part failed; sending it again");
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
            }
        }
    }

    /// One `PUT`; on failure, the error and whether it is worth retrying.
    async fn put_once(
        &self,
        request: &Transfer,
        body: Bytes,
        sent: &Arc<AtomicU64>,
        this_attempt: &Arc<AtomicU64>,
        progress: &OnBytes,
    ) -> Result<String, (String, bool)> {
        let len = body.len();
        let chunks: Vec<Bytes> =
            (0..len).step_by(CHUNK).map(|start| body.slice(start..(start + CHUNK).min(len))).collect();
        let (sent, this_attempt, progress) = (sent.clone(), this_attempt.clone(), progress.clone());
        let stream = futures::stream::iter(chunks).map(move |chunk| {
            let n = chunk.len() as u64;
            this_attempt.fetch_add(n, Ordering::Relaxed);
            progress(sent.fetch_add(n, Ordering::Relaxed) + n);
            Ok::<Bytes, std::io::Error>(chunk)
        });
        let mut builder = self.transfers.request(method(&request.method), &request.url);
        // The length the URL signs is sent as the body's own: a body of another length is then
        // refused by the store at once, instead of leaving the request waiting for bytes.
        for header in request.headers.iter().filter(|h| !h.name.eq_ignore_ascii_case("content-length")) {
            builder = builder.header(&header.name, &header.value);
        }
        builder = builder.header(reqwest::header::CONTENT_LENGTH, len);
        let response =
            builder.body(reqwest::Body::wrap_stream(stream)).send().await.map_err(|e| (transfer_error(e), true))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err((
                format!("storage answered {status}: {}", body.chars().take(300).collect::<String>()),
                retryable(status),
            ));
        }
        // A single PUT needs no ETag; a part does, and the store always sends one.
        Ok(response.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned())
    }

    /// Downloads `transfer` into `out` (written to `out.part` and renamed when complete),
    /// starting again after a network error, a 5xx, 408 or 429. Returns the bytes written.
    pub async fn download(&self, transfer: &Transfer, out: &Path, progress: OnBytes) -> Result<u64, ServiceError> {
        let partial = {
            let mut name = out.as_os_str().to_owned();
            name.push(".part");
            std::path::PathBuf::from(name)
        };
        let mut attempt = 1;
        loop {
            match self.download_once(transfer, &partial, &progress).await {
                Ok(bytes) => {
                    tokio::fs::rename(&partial, out).await.map_err(|e| {
                        ServiceError::Transfer(format!("moving {} to {}: {e}", partial.display(), out.display()))
                    })?;
                    return Ok(bytes);
                }
                Err((error, transient)) => {
                    let _ = tokio::fs::remove_file(&partial).await;
                    if !transient || attempt >= TRANSFER_ATTEMPTS {
                        return Err(ServiceError::Transfer(format!(
                            "downloading the result failed after {attempt} attempt(s): {error}"
                        )));
                    }
                    tracing::warn!(attempt, %error, "download failed; starting again");
                    tokio::time::sleep(Duration::from_millis((250u64 << attempt).min(8000))).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn download_once(
        &self,
        transfer: &Transfer,
        partial: &Path,
        progress: &OnBytes,
    ) -> Result<u64, (String, bool)> {
        let mut builder = self.transfers.request(method(&transfer.method), &transfer.url);
        for header in &transfer.headers {
            builder = builder.header(&header.name, &header.value);
        }
        let response = builder.send().await.map_err(|e| (transfer_error(e), true))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err((
                format!("storage answered {status}: {}", body.chars().take(300).collect::<String>()),
                retryable(status),
            ));
        }
        let expected = response.content_length();
        let local = |e: std::io::Error| (format!("writing {}: {e}", partial.display()), false);
        let mut file = tokio::fs::File::create(partial).await.map_err(local)?;
        let mut stream = response.bytes_stream();
        let mut written = 0u64;
        progress(0);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| (transfer_error(e), true))?;
            file.write_all(&chunk).await.map_err(local)?;
            written += chunk.len() as u64;
            progress(written);
        }
        file.sync_all().await.map_err(local)?;
        if let Some(expected) = expected
            && expected != written
        {
            return Err((format!("the download stopped at {written} of {expected} bytes"), true));
        }
        Ok(written)
    }
}

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap_or(Method::PUT)
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
}

/// A storage transfer's error without its URL: a presigned URL carries its signature, which
/// grants access to the object until it expires, and must not reach a terminal or a log.
fn transfer_error(error: reqwest::Error) -> String {
    error_chain(&error.without_url())
}

/// The error with its sources ("error sending request: connection refused"), which reqwest's
/// own message leaves out.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// Percent-encodes a query value (states and cursors are plain ASCII; this keeps `&` and `#` out).
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A model reference as one URL path segment: names are `[a-z0-9._-]` and versions digits, so
/// only `@` needs encoding (some proxies treat it specially).
fn path_segment(model: &str) -> String {
    model.replace('@', "%40")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_goes_over_plain_http_only_to_this_machine() {
        let token = || Some(SecretString::from("token"));
        for local in ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "https://api.example.org"]
        {
            assert!(ApiClient::new(local, token(), false).is_ok(), "{local}");
        }
        let refused = ApiClient::new("http://api.example.org", token(), false).unwrap_err().to_string();
        assert!(refused.contains("--allow-http"), "{refused}");
        assert!(ApiClient::admin("http://10.0.0.5:8080", SecretString::from("admin"), false).is_err());
        assert!(ApiClient::new("http://10.0.0.5:8080", token(), true).is_ok(), "the explicit flag allows it");
        assert!(ApiClient::new("http://api.example.org", None, false).is_ok(), "no token, nothing to leak");
    }

    #[tokio::test]
    async fn a_failed_transfer_never_shows_the_presigned_url() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let url = "http://127.0.0.1:1/bucket/batch?X-Amz-Credential=AKIA&X-Amz-Signature=0123abcd";
        let error = reqwest::Client::new().put(url).send().await.unwrap_err();
        assert!(error.to_string().contains("X-Amz-Signature"), "reqwest's own message names the URL: {error}");
        let shown = transfer_error(error);
        assert!(!shown.contains("X-Amz") && !shown.contains("0123abcd"), "{shown}");
        assert!(!shown.is_empty());
    }
}
