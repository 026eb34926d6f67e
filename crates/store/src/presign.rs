//! Presigned URLs: the service signs, a client without storage credentials sends plain HTTP.
//!
//! Single objects use [`Store::presign_put`] / [`Store::presign_get`]. Large batches use a
//! presigned multipart upload: the service calls [`Store::presign_multipart`] (it creates the
//! upload and signs one URL per part), the client uploads the parts with [`upload_file`] and
//! returns the ETags, and the service calls [`Store::complete_presigned`].

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::client::{MAX_PARTS, Store};
use crate::error::{Result, StoreError};
use crate::layout::ObjectKey;

/// A signed HTTP request: send `method` to `url` with `headers`, before `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresignedRequest {
    /// HTTP method (`PUT`, `GET`).
    pub method: String,
    /// The URL with the SigV4 query string.
    pub url: String,
    /// Headers that were signed and must be sent as they are.
    pub headers: Vec<(String, String)>,
    /// When the signature stops being accepted.
    pub expires_at: SystemTime,
}

/// A multipart upload prepared for a client without credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresignedUpload {
    /// The object key (for the record; the URLs already name it).
    pub key: String,
    /// The store's upload id, needed to complete or abort.
    pub upload_id: String,
    /// Total size the client announced.
    pub size: u64,
    /// Bytes per part (the last part may be shorter).
    pub part_size: u64,
    /// One signed `PUT` per part, part numbers 1, 2, ….
    pub parts: Vec<PresignedPart>,
}

/// The signed request for one part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresignedPart {
    /// Part number, from 1.
    pub part_number: i32,
    /// The signed `PUT`.
    pub request: PresignedRequest,
}

/// A part the client uploaded: its number and the ETag the store answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedPart {
    /// Part number, from 1.
    pub part_number: i32,
    /// The `ETag` response header of the part's `PUT`.
    pub e_tag: String,
}

fn presigning(expires_in: Duration) -> Result<PresigningConfig> {
    PresigningConfig::expires_in(expires_in)
        .map_err(|e| StoreError::Config(format!("presigned URL expiry {expires_in:?}: {e}")))
}

fn convert(req: &aws_sdk_s3::presigning::PresignedRequest, expires_in: Duration) -> PresignedRequest {
    PresignedRequest {
        method: req.method().to_owned(),
        url: req.uri().to_owned(),
        headers: req.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
        expires_at: SystemTime::now() + expires_in,
    }
}

impl Store {
    /// A presigned `PUT` of the whole object, of exactly `size` bytes (up to 5 GiB; use
    /// [`Store::presign_multipart`] beyond a few hundred MB). The length is signed
    /// (`Content-Length` is among the signed headers), so the URL cannot store anything of
    /// another size.
    pub async fn presign_put(&self, key: &ObjectKey, size: u64, expires_in: Duration) -> Result<PresignedRequest> {
        let length = i64::try_from(size).map_err(|_| StoreError::Config(format!("{size} bytes is too large")))?;
        let req = self
            .sdk()
            .put_object()
            .bucket(self.bucket())
            .key(key.as_str())
            .content_length(length)
            .presigned(presigning(expires_in)?)
            .await
            .map_err(|e| StoreError::s3("PutObject (presign)", key.as_str(), e))?;
        Ok(convert(&req, expires_in))
    }

    /// A presigned `GET` of the whole object.
    pub async fn presign_get(&self, key: &ObjectKey, expires_in: Duration) -> Result<PresignedRequest> {
        let req = self
            .sdk()
            .get_object()
            .bucket(self.bucket())
            .key(key.as_str())
            .presigned(presigning(expires_in)?)
            .await
            .map_err(|e| StoreError::s3("GetObject (presign)", key.as_str(), e))?;
        Ok(convert(&req, expires_in))
    }

    /// Creates a multipart upload for an object of `size` bytes and signs one `PUT` per part of
    /// this store's part size, each with its length signed. The client needs no credentials;
    /// the URLs expire after `expires_in`.
    pub async fn presign_multipart(&self, key: &ObjectKey, size: u64, expires_in: Duration) -> Result<PresignedUpload> {
        let part_size = self.part_size() as u64;
        let count = size.div_ceil(part_size).max(1);
        if count > MAX_PARTS {
            return Err(StoreError::Config(format!(
                "{size} bytes need {count} parts of {part_size} bytes, more than S3's {MAX_PARTS}; raise the part size"
            )));
        }
        let config = presigning(expires_in)?;
        let created = self
            .sdk()
            .create_multipart_upload()
            .bucket(self.bucket())
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| StoreError::s3("CreateMultipartUpload", key.as_str(), e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        if upload_id.is_empty() {
            return Err(StoreError::S3 {
                operation: "CreateMultipartUpload",
                key: key.to_string(),
                message: "the store returned no upload id".to_owned(),
            });
        }
        let mut parts = Vec::new();
        for part_number in 1..=i32::try_from(count).unwrap_or(i32::MAX) {
            let start = (part_number as u64 - 1) * part_size;
            let length = (size - start).min(part_size) as i64;
            let req = self
                .sdk()
                .upload_part()
                .bucket(self.bucket())
                .key(key.as_str())
                .upload_id(&upload_id)
                .part_number(part_number)
                .content_length(length)
                .presigned(config.clone())
                .await
                .map_err(|e| StoreError::s3("UploadPart (presign)", key.as_str(), e))?;
            parts.push(PresignedPart { part_number, request: convert(&req, expires_in) });
        }
        Ok(PresignedUpload { key: key.to_string(), upload_id, size, part_size, parts })
    }

    /// Completes a presigned multipart upload with the parts the client reports.
    pub async fn complete_presigned(&self, key: &ObjectKey, upload_id: &str, parts: &[UploadedPart]) -> Result<()> {
        let mut completed: Vec<CompletedPart> =
            parts.iter().map(|p| CompletedPart::builder().part_number(p.part_number).e_tag(&p.e_tag).build()).collect();
        completed.sort_by_key(|p| p.part_number());
        self.sdk()
            .complete_multipart_upload()
            .bucket(self.bucket())
            .key(key.as_str())
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .send()
            .await
            .map_err(|e| StoreError::s3("CompleteMultipartUpload", key.as_str(), e))?;
        Ok(())
    }
}

/// Attempts per part in [`upload_file`] (connection errors and 5xx/429 are retried).
const PART_ATTEMPTS: u32 = 5;

fn transient(err: &StoreError) -> bool {
    match err {
        StoreError::Http(e) => e.is_connect() || e.is_timeout() || e.is_request() || e.is_body(),
        StoreError::PresignedHttp { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}

fn request(http: &reqwest::Client, req: &PresignedRequest) -> Result<reqwest::RequestBuilder> {
    let method = reqwest::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| StoreError::Config(format!("presigned request has method {:?}", req.method)))?;
    let mut builder = http.request(method, &req.url);
    // Content-Length is signed, but reqwest sets it from the body: sent from here as well, a
    // body of another length would leave the request waiting for bytes that never come,
    // where the store should refuse the signature at once.
    for (name, value) in req.headers.iter().filter(|(name, _)| !name.eq_ignore_ascii_case("content-length")) {
        builder = builder.header(name, value);
    }
    Ok(builder)
}

async fn check(resp: reqwest::Response, method: &'static str, part: i32) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    Err(StoreError::PresignedHttp { method, part, status: status.as_u16(), body: body.chars().take(500).collect() })
}

/// Sends `body` with a presigned `PUT` (client side, no credentials).
pub async fn put_presigned(http: &reqwest::Client, req: &PresignedRequest, body: Bytes) -> Result<()> {
    let resp = request(http, req)?.body(body).send().await?;
    check(resp, "PUT", 0).await?;
    Ok(())
}

/// Fetches an object with a presigned `GET` (client side, no credentials).
pub async fn get_presigned(http: &reqwest::Client, req: &PresignedRequest) -> Result<Bytes> {
    let resp = request(http, req)?.send().await?;
    Ok(check(resp, "GET", 0).await?.bytes().await?)
}

/// Uploads the file at `path` through the presigned part URLs of `upload`, `parallel` parts at
/// a time, each read from disk when it is sent (memory about `parallel × part_size`); a part
/// that meets a connection error, a 5xx or a 429 is sent again, up to 5 attempts. Returns
/// the parts to hand back to the service for [`Store::complete_presigned`].
pub async fn upload_file(
    http: &reqwest::Client,
    path: &Path,
    upload: &PresignedUpload,
    parallel: usize,
) -> Result<Vec<UploadedPart>> {
    let shown = path.display().to_string();
    let size = tokio::fs::metadata(path).await.map_err(|e| StoreError::io(format!("reading {shown}"), e))?.len();
    let expected = size.div_ceil(upload.part_size).max(1);
    if size != upload.size || expected != upload.parts.len() as u64 {
        return Err(StoreError::Config(format!(
            "{shown} has {size} bytes, but the upload was prepared for {} bytes in {} parts of {}",
            upload.size,
            upload.parts.len(),
            upload.part_size
        )));
    }
    let mut parts: Vec<UploadedPart> = futures::stream::iter(upload.parts.iter())
        .map(|part| upload_one(http, path, &shown, upload.part_size, size, part))
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await?;
    parts.sort_by_key(|p| p.part_number);
    Ok(parts)
}

async fn upload_one(
    http: &reqwest::Client,
    path: &Path,
    shown: &str,
    part_size: u64,
    size: u64,
    part: &PresignedPart,
) -> Result<UploadedPart> {
    let index = u64::try_from(part.part_number - 1)
        .map_err(|_| StoreError::Config(format!("part number {} is not positive", part.part_number)))?;
    let offset = index * part_size;
    let len = part_size.min(size.saturating_sub(offset));
    let io = |e| StoreError::io(format!("reading part {} of {shown}", part.part_number), e);
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(len).read_to_end(&mut buf).await.map_err(io)?;
    let body = Bytes::from(buf);
    let mut attempt = 1;
    let resp = loop {
        let outcome = match request(http, &part.request)?.body(body.clone()).send().await {
            Ok(resp) => check(resp, "PUT", part.part_number).await,
            Err(err) => Err(err.into()),
        };
        match outcome {
            Ok(resp) => break resp,
            Err(err) if attempt < PART_ATTEMPTS && transient(&err) => {
                let backoff = Duration::from_millis(250 << attempt);
                tracing::warn!(part = part.part_number, attempt, error = %err, ?backoff, "part upload failed; retrying");
                tokio::time::sleep(backoff).await;
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    };
    let e_tag = resp
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| StoreError::PresignedHttp {
            method: "PUT",
            part: part.part_number,
            status: resp.status().as_u16(),
            body: "the response has no ETag header".to_owned(),
        })?
        .to_owned();
    Ok(UploadedPart { part_number: part.part_number, e_tag })
}
