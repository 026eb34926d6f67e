//! The store's error type.

/// What went wrong talking to object storage, with the facts needed to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An identifier or object name that would not stay inside its tenant's prefix.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// Which kind of name (tenant id, job id, object name, …).
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A key found in the bucket that does not follow the Blindfold object layout.
    #[error("object key {key:?} does not follow the tenants/{{tenant}}/… layout")]
    ForeignKey {
        /// The key as stored.
        key: String,
    },
    /// The configuration cannot produce a working client.
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// The object does not exist.
    #[error("object {key:?} not found in bucket {bucket:?}")]
    NotFound {
        /// The bucket asked.
        bucket: String,
        /// The key asked.
        key: String,
    },
    /// An S3 request failed after the SDK's retries.
    #[error("S3 {operation} of {key:?} failed: {message}")]
    S3 {
        /// The S3 operation (`PutObject`, `UploadPart`, …).
        operation: &'static str,
        /// The object key, or the prefix/bucket for bucket-level operations.
        key: String,
        /// The SDK's error with its full cause chain.
        message: String,
    },
    /// An object read as it was verified ([`crate::Pinned`]) is no longer that object: another
    /// ETag or size. It was replaced since (a presigned `PUT` still valid), and is not read.
    #[error("object {key} changed since it was verified: {reason}")]
    ObjectChanged {
        /// The object.
        key: String,
        /// What differs.
        reason: String,
    },
    /// The bytes read back do not match the checksum recorded when they were written.
    #[error("checksum mismatch for {key:?}: expected CRC32C {expected:08x}, got {actual:08x} over {size} bytes")]
    ChecksumMismatch {
        /// The object key.
        key: String,
        /// The CRC32C recorded at upload.
        expected: u32,
        /// The CRC32C of the bytes received.
        actual: u32,
        /// How many bytes were received.
        size: u64,
    },
    /// A presigned request was answered with an error status.
    #[error("presigned {method} of part {part} failed with HTTP {status}: {body}")]
    PresignedHttp {
        /// HTTP method used.
        method: &'static str,
        /// Part number (0 for a single-object request).
        part: i32,
        /// Status code returned.
        status: u16,
        /// The start of the response body (the S3 error document).
        body: String,
    },
    /// An HTTP client error on a presigned request (connection, TLS, …).
    #[error("presigned request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// Reading the source or writing the destination failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being read or written.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded endpoint could not start.
    #[error("embedded S3 endpoint: {0}")]
    Embedded(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    pub(crate) fn s3<E>(operation: &'static str, key: &str, err: E) -> Self
    where
        E: std::error::Error + 'static,
    {
        Self::S3 { operation, key: key.to_owned(), message: aws_sdk_s3::error::DisplayErrorContext(err).to_string() }
    }
}

/// The crate's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
