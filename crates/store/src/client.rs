//! The S3 client: connection, streaming multipart upload, streaming and ranged download,
//! listing, head and delete, all on [`ObjectKey`]s of the Blindfold layout.

use std::ops::Range;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls;
use bytes::{Bytes, BytesMut};
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::config::StoreConfig;
use crate::error::{Result, StoreError};
use crate::layout::{ObjectKey, Prefix};

/// S3 allows at most this many parts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;

/// A handle on the Blindfold bucket. Cheap to clone (the SDK client is shared).
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
    bucket: String,
    part_size: usize,
    parts_in_flight: usize,
    checksums: bool,
}

/// What an upload stored: keep `crc32c` (for example in the job row) and pass it to
/// [`Store::download`] to verify the bytes end to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReceipt {
    /// Object size in bytes.
    pub size: u64,
    /// CRC32C of the whole object, computed while streaming it up.
    pub crc32c: u32,
    /// Number of parts (1 for a single `PutObject`).
    pub parts: u32,
    /// The ETag the store returned.
    pub e_tag: Option<String>,
}

/// What a download received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadReceipt {
    /// Bytes written to the destination.
    pub size: u64,
    /// CRC32C of those bytes.
    pub crc32c: u32,
}

/// One object as listed or headed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: ObjectKey,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag, if the store returned one.
    pub e_tag: Option<String>,
}

impl ObjectInfo {
    /// The object as it is now, to verify and then read back unchanged.
    pub fn pinned(&self) -> Pinned {
        Pinned { size: self.size, e_tag: self.e_tag.clone() }
    }
}

/// An object as it was when it was verified: its exact size and, when the store gave one, its
/// ETag. Reads through [`Store::get_pinned`], [`Store::get_range_pinned`] and
/// [`Store::download_pinned`] send `If-Match` and refuse anything else
/// ([`StoreError::ObjectChanged`]), so a presigned `PUT` that is still valid cannot swap what was
/// verified for something else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// Size in bytes at verification.
    pub size: u64,
    /// ETag at verification (`None`: the store gave none, and only the size is checked).
    pub e_tag: Option<String>,
}

/// The S3 wire form of a CRC32C (base64 of the big-endian value).
pub(crate) fn crc32c_header(crc: u32) -> String {
    aws_smithy_types::base64::encode(crc.to_be_bytes())
}

impl Store {
    /// Connects with `config`: static credentials when given, else the AWS credential chain.
    /// Uses rustls (ring) for HTTPS, the SDK's standard retry mode with exponential backoff and
    /// jitter, and the configured connect and per-attempt timeouts. Sends no request.
    pub async fn connect(config: &StoreConfig) -> Result<Self> {
        if config.bucket.is_empty() {
            return Err(StoreError::Config("the bucket name is empty".to_owned()));
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let region = Region::new(config.region.clone());
        let retry = RetryConfig::standard()
            .with_max_attempts(config.max_attempts.max(1))
            .with_initial_backoff(config.initial_backoff());
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
            .operation_attempt_timeout(Duration::from_secs(config.attempt_timeout_secs))
            .build();

        let mut builder = match (&config.access_key, &config.secret_key) {
            (Some(access_key), Some(secret_key)) => {
                aws_sdk_s3::config::Builder::new().behavior_version(BehaviorVersion::latest()).credentials_provider(
                    Credentials::new(access_key, secret_key.expose_secret(), None, None, "blindfold-static"),
                )
            }
            (None, None) => {
                let shared = aws_config::defaults(BehaviorVersion::latest())
                    .http_client(http.clone())
                    .region(region.clone())
                    .load()
                    .await;
                aws_sdk_s3::config::Builder::from(&shared)
            }
            _ => {
                return Err(StoreError::Config(
                    "give both the access key and the secret key, or neither (AWS credential chain)".to_owned(),
                ));
            }
        };
        builder = builder
            .http_client(http)
            .region(region)
            .retry_config(retry)
            .timeout_config(timeouts)
            .force_path_style(config.path_style)
            .request_checksum_calculation(if config.checksums {
                RequestChecksumCalculation::WhenSupported
            } else {
                RequestChecksumCalculation::WhenRequired
            });
        if let Some(endpoint) = &config.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(StoreError::Config(format!("endpoint {endpoint:?} is not an http:// or https:// URL")));
            }
            builder = builder.endpoint_url(endpoint.trim_end_matches('/'));
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            part_size: config.part_size(),
            parts_in_flight: usize::try_from(config.parts_in_flight.max(1)).unwrap_or(4),
            checksums: config.checksums,
        })
    }

    /// Changes the multipart part size (at least 5 MiB) and the number of parts in flight.
    #[must_use]
    pub fn with_transfer(mut self, part_size: usize, parts_in_flight: usize) -> Self {
        self.part_size = part_size.max(MIN_PART_SIZE);
        self.parts_in_flight = parts_in_flight.max(1);
        self
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The multipart part size in bytes.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// The underlying SDK client, for operations this crate does not wrap.
    pub fn sdk(&self) -> &Client {
        &self.client
    }

    /// Creates the bucket unless it exists (demo and tests; production buckets are provisioned).
    pub async fn ensure_bucket(&self) -> Result<()> {
        if self.client.head_bucket().bucket(&self.bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()) =>
            {
                Ok(())
            }
            Err(err) => Err(StoreError::s3("CreateBucket", &self.bucket, err)),
        }
    }

    /// Stores `body` with one `PutObject`, its CRC32C checked by the store.
    pub async fn put_bytes(&self, key: &ObjectKey, body: Bytes) -> Result<UploadReceipt> {
        let size = body.len() as u64;
        let crc = crc32c::crc32c(&body);
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .set_checksum_crc32_c(self.checksums.then(|| crc32c_header(crc)))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| StoreError::s3("PutObject", key.as_str(), e))?;
        Ok(UploadReceipt { size, crc32c: crc, parts: 1, e_tag: out.e_tag })
    }

    /// Streams `reader` to `key`: one `PutObject` if it fits in one part, else a multipart upload
    /// with the configured part size and up to `parts_in_flight` parts uploading at once while the
    /// next part is read. Memory use is bounded by about `(parts_in_flight + 1) × part_size`.
    /// Every part carries its CRC32C; the receipt holds the whole object's. On any failure the
    /// multipart upload is aborted, so no orphan parts are left behind.
    pub async fn upload<R>(&self, key: &ObjectKey, mut reader: R) -> Result<UploadReceipt>
    where
        R: AsyncRead + Unpin,
    {
        let first = read_part(&mut reader, self.part_size, key).await?;
        if first.len() < self.part_size {
            return self.put_bytes(key, first).await;
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .set_checksum_algorithm(self.checksums.then_some(ChecksumAlgorithm::Crc32C))
            .send()
            .await
            .map_err(|e| StoreError::s3("CreateMultipartUpload", key.as_str(), e))?;
        let upload_id = created.upload_id().ok_or_else(|| StoreError::S3 {
            operation: "CreateMultipartUpload",
            key: key.to_string(),
            message: "the store returned no upload id".to_owned(),
        })?;
        match self.upload_parts(key, upload_id, first, &mut reader).await {
            Ok(receipt) => Ok(receipt),
            Err(err) => {
                tracing::warn!(key = %key, upload_id, error = %err, "multipart upload failed; aborting it");
                if let Err(abort) = self.abort_upload(key, upload_id).await {
                    tracing::error!(key = %key, upload_id, error = %abort, "could not abort the multipart upload");
                }
                Err(err)
            }
        }
    }

    async fn upload_parts<R>(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        first: Bytes,
        reader: &mut R,
    ) -> Result<UploadReceipt>
    where
        R: AsyncRead + Unpin,
    {
        let mut in_flight: JoinSet<Result<CompletedPart>> = JoinSet::new();
        let mut completed = Vec::new();
        let (mut size, mut crc, mut part_number) = (0u64, 0u32, 0i32);
        let mut next = first;
        while !next.is_empty() {
            part_number += 1;
            if u64::try_from(part_number).unwrap_or(u64::MAX) > MAX_PARTS {
                return Err(StoreError::Config(format!(
                    "object {key} needs more than {MAX_PARTS} parts of {} bytes; raise the part size",
                    self.part_size
                )));
            }
            size += next.len() as u64;
            crc = crc32c::crc32c_append(crc, &next);
            while in_flight.len() >= self.parts_in_flight {
                completed.push(join_part(&mut in_flight, key).await?);
            }
            in_flight.spawn(upload_part(
                self.client.clone(),
                self.bucket.clone(),
                key.to_string(),
                upload_id.to_owned(),
                part_number,
                next,
                self.checksums,
            ));
            next = read_part(reader, self.part_size, key).await?;
        }
        while !in_flight.is_empty() {
            completed.push(join_part(&mut in_flight, key).await?);
        }
        completed.sort_by_key(|p| p.part_number());
        let parts = u32::try_from(completed.len()).unwrap_or(u32::MAX);
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .send()
            .await
            .map_err(|e| StoreError::s3("CompleteMultipartUpload", key.as_str(), e))?;
        Ok(UploadReceipt { size, crc32c: crc, parts, e_tag: out.e_tag })
    }

    /// Aborts a multipart upload, deleting the parts uploaded so far.
    pub async fn abort_upload(&self, key: &ObjectKey, upload_id: &str) -> Result<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| StoreError::s3("AbortMultipartUpload", key.as_str(), e))?;
        Ok(())
    }

    /// Streams the object into `writer`, chunk by chunk, never holding it whole. With
    /// `expected_crc32c` (from the [`UploadReceipt`]) the bytes are verified end to end; the SDK
    /// also validates any full-object checksum the store returns.
    pub async fn download<W>(&self, key: &ObjectKey, writer: W, expected_crc32c: Option<u32>) -> Result<DownloadReceipt>
    where
        W: AsyncWrite + Unpin,
    {
        let out = self.get_object(key, None).await?;
        let receipt = self.stream_body(key, out, writer, None).await?;
        if let Some(expected) = expected_crc32c
            && expected != receipt.crc32c
        {
            return Err(StoreError::ChecksumMismatch {
                key: key.to_string(),
                expected,
                actual: receipt.crc32c,
                size: receipt.size,
            });
        }
        Ok(receipt)
    }

    /// Streams a `GET`'s body into `writer`, stopping with [`StoreError::ObjectChanged`] past
    /// `at_most` bytes.
    async fn stream_body<W>(
        &self,
        key: &ObjectKey,
        out: aws_sdk_s3::operation::get_object::GetObjectOutput,
        mut writer: W,
        at_most: Option<u64>,
    ) -> Result<DownloadReceipt>
    where
        W: AsyncWrite + Unpin,
    {
        let mut body = out.body;
        let (mut size, mut crc) = (0u64, 0u32);
        while let Some(chunk) = body.try_next().await.map_err(|e| StoreError::s3("GetObject", key.as_str(), e))? {
            size += chunk.len() as u64;
            if let Some(limit) = at_most.filter(|limit| size > *limit) {
                return Err(StoreError::ObjectChanged {
                    key: key.to_string(),
                    reason: format!("it sent more than the {limit} bytes it had when it was verified"),
                });
            }
            crc = crc32c::crc32c_append(crc, &chunk);
            writer.write_all(&chunk).await.map_err(|e| StoreError::io(format!("writing {key}"), e))?;
        }
        writer.flush().await.map_err(|e| StoreError::io(format!("writing {key}"), e))?;
        Ok(DownloadReceipt { size, crc32c: crc })
    }

    /// A whole-object `GET` (checksum validation on), before its body is read; with `pin`, the
    /// store must still hold the pinned version (`If-Match`) at the pinned size.
    async fn get_object(
        &self,
        key: &ObjectKey,
        pin: Option<&Pinned>,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .checksum_mode(ChecksumMode::Enabled)
            .set_if_match(pin.and_then(|p| p.e_tag.clone()))
            .send()
            .await
            .map_err(|e| self.get_error(key, e))?;
        if let Some(pin) = pin {
            let size = out.content_length().and_then(|len| u64::try_from(len).ok());
            if size != Some(pin.size) {
                return Err(StoreError::ObjectChanged {
                    key: key.to_string(),
                    reason: format!("it has {} bytes, {} when it was verified", describe_size(size), pin.size),
                });
            }
        }
        Ok(out)
    }

    /// Reads an object into memory, exactly as it was verified: same ETag and size, never more
    /// than [`Pinned::size`] bytes held ([`StoreError::ObjectChanged`] otherwise). For key
    /// bundles and model files, which readers load whole.
    pub async fn get_pinned(&self, key: &ObjectKey, pin: &Pinned) -> Result<Bytes> {
        let out = self.get_object(key, Some(pin)).await?;
        let mut buf = Vec::with_capacity(usize::try_from(pin.size).unwrap_or(0));
        let mut body = out.body;
        while let Some(chunk) = body.try_next().await.map_err(|e| StoreError::s3("GetObject", key.as_str(), e))? {
            if (buf.len() + chunk.len()) as u64 > pin.size {
                return Err(StoreError::ObjectChanged {
                    key: key.to_string(),
                    reason: format!("it sent more than the {} bytes it had when it was verified", pin.size),
                });
            }
            buf.extend_from_slice(&chunk);
        }
        if buf.len() as u64 != pin.size {
            return Err(StoreError::ObjectChanged {
                key: key.to_string(),
                reason: format!("it sent {} bytes, {} when it was verified", buf.len(), pin.size),
            });
        }
        Ok(Bytes::from(buf))
    }

    /// As [`Store::download`] for an object read as it was verified (see [`Pinned`]): the
    /// stream stops at the pinned size.
    pub async fn download_pinned<W>(&self, key: &ObjectKey, pin: &Pinned, writer: W) -> Result<DownloadReceipt>
    where
        W: AsyncWrite + Unpin,
    {
        let out = self.get_object(key, Some(pin)).await?;
        let receipt = self.stream_body(key, out, writer, Some(pin.size)).await?;
        if receipt.size != pin.size {
            return Err(StoreError::ObjectChanged {
                key: key.to_string(),
                reason: format!("it sent {} bytes, {} when it was verified", receipt.size, pin.size),
            });
        }
        Ok(receipt)
    }

    /// Reads a whole (small) object into memory.
    pub async fn get_bytes(&self, key: &ObjectKey) -> Result<Bytes> {
        let mut buf = Vec::new();
        self.download(key, &mut buf, None).await?;
        Ok(Bytes::from(buf))
    }

    /// Reads bytes `range.start..range.end` of the object (HTTP `Range`); the range is clipped
    /// to the object's end as S3 does.
    pub async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes> {
        self.range(key, range, None).await
    }

    /// As [`Store::get_range`], of the version that was verified (`If-Match`; see [`Pinned`]).
    pub async fn get_range_pinned(&self, key: &ObjectKey, range: Range<u64>, pin: &Pinned) -> Result<Bytes> {
        if range.end > pin.size {
            return Err(StoreError::ObjectChanged {
                key: key.to_string(),
                reason: format!("bytes up to {} asked of an object verified at {} bytes", range.end, pin.size),
            });
        }
        self.range(key, range, Some(pin)).await
    }

    async fn range(&self, key: &ObjectKey, range: Range<u64>, pin: Option<&Pinned>) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_if_match(pin.and_then(|p| p.e_tag.clone()))
            .send()
            .await
            .map_err(|e| self.get_error(key, e))?;
        let mut buf = BytesMut::new();
        let mut body = out.body;
        while let Some(chunk) = body.try_next().await.map_err(|e| StoreError::s3("GetObject", key.as_str(), e))? {
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// Size and ETag of an object, or `None` if it does not exist.
    pub async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>> {
        match self.client.head_object().bucket(&self.bucket).key(key.as_str()).send().await {
            Ok(out) => Ok(Some(ObjectInfo {
                key: key.clone(),
                size: u64::try_from(out.content_length.unwrap_or(0)).unwrap_or(0),
                e_tag: out.e_tag,
            })),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(err) => Err(StoreError::s3("HeadObject", key.as_str(), err)),
        }
    }

    /// Every object under `prefix`, in key order (all pages).
    pub async fn list(&self, prefix: &Prefix) -> Result<Vec<ObjectInfo>> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix.as_str())
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| StoreError::s3("ListObjectsV2", prefix.as_str(), e))?;
            for object in out.contents() {
                let Some(key) = object.key() else { continue };
                objects.push(ObjectInfo {
                    key: ObjectKey::parse(key)?,
                    size: u64::try_from(object.size().unwrap_or(0)).unwrap_or(0),
                    e_tag: object.e_tag().map(str::to_owned),
                });
            }
            match out.next_continuation_token {
                Some(next) if out.is_truncated == Some(true) => token = Some(next),
                _ => break,
            }
        }
        objects.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
        Ok(objects)
    }

    /// Deletes an object (succeeds if it was already gone).
    pub async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| StoreError::s3("DeleteObject", key.as_str(), e))?;
        Ok(())
    }

    /// Deletes every object under `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &Prefix) -> Result<usize> {
        let objects = self.list(prefix).await?;
        for object in &objects {
            self.delete(&object.key).await?;
        }
        Ok(objects.len())
    }

    fn get_error(
        &self,
        key: &ObjectKey,
        err: aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::get_object::GetObjectError>,
    ) -> StoreError {
        if err.as_service_error().is_some_and(|e| e.is_no_such_key()) {
            StoreError::NotFound { bucket: self.bucket.clone(), key: key.to_string() }
        } else if err.raw_response().is_some_and(|r| r.status().as_u16() == 412) {
            StoreError::ObjectChanged {
                key: key.to_string(),
                reason: "its ETag is not the one it had when it was verified (HTTP 412)".to_owned(),
            }
        } else {
            StoreError::s3("GetObject", key.as_str(), err)
        }
    }
}

fn describe_size(size: Option<u64>) -> String {
    size.map_or_else(|| "an unknown number of".to_owned(), |s| s.to_string())
}

/// Reads up to `part_size` bytes (fewer only at the end of the stream).
async fn read_part<R>(reader: &mut R, part_size: usize, key: &ObjectKey) -> Result<Bytes>
where
    R: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(part_size);
    while buf.len() < part_size {
        let want = (part_size - buf.len()) as u64;
        let n = (&mut *reader)
            .take(want)
            .read_buf(&mut buf)
            .await
            .map_err(|e| StoreError::io(format!("reading the data for {key}"), e))?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

async fn upload_part(
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    part_number: i32,
    body: Bytes,
    checksums: bool,
) -> Result<CompletedPart> {
    let crc = checksums.then(|| crc32c_header(crc32c::crc32c(&body)));
    let out = client
        .upload_part()
        .bucket(bucket)
        .key(&key)
        .upload_id(upload_id)
        .part_number(part_number)
        .set_checksum_crc32_c(crc.clone())
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| StoreError::s3("UploadPart", &key, e))?;
    tracing::debug!(key, part_number, "part uploaded");
    Ok(CompletedPart::builder()
        .part_number(part_number)
        .set_e_tag(out.e_tag)
        .set_checksum_crc32_c(out.checksum_crc32_c.or(crc))
        .build())
}

async fn join_part(set: &mut JoinSet<Result<CompletedPart>>, key: &ObjectKey) -> Result<CompletedPart> {
    match set.join_next().await {
        Some(Ok(part)) => part,
        Some(Err(join)) => Err(StoreError::S3 {
            operation: "UploadPart",
            key: key.to_string(),
            message: format!("the part task failed: {join}"),
        }),
        None => Err(StoreError::S3 {
            operation: "UploadPart",
            key: key.to_string(),
            message: "no part in flight".to_owned(),
        }),
    }
}
