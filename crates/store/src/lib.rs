//! Object storage for Blindfold: ciphertext batches, evaluation keys and results in any
//! S3-compatible store (AWS S3, MinIO, Ceph RGW, Garage) through aws-sdk-s3, plus an embedded
//! S3 endpoint for the demo and the tests. It knows nothing about cryptography: it moves bytes
//! under keys of one documented layout ([`layout`]).
//!
//! - [`Store`]: streaming multipart upload from any `AsyncRead` (bounded memory, parts in
//!   parallel, aborted on failure), streaming download to any `AsyncWrite` verified by CRC32C,
//!   ranged reads, listing, head, delete.
//! - [`presign`]: presigned `PUT`/`GET` and presigned multipart uploads, so a hospital uploads a
//!   multi-gigabyte batch with plain HTTP and no storage credentials.
//! - [`EmbeddedS3`]: `s3s` + `s3s-fs` over hyper on 127.0.0.1, SigV4-authenticated.
//!
//! ```no_run
//! # async fn demo() -> blindfold_store::Result<()> {
//! use blindfold_store::{EmbeddedS3, JobId, ObjectKey, ObjectName, Store, StoreConfig, TenantId};
//! use secrecy::SecretString;
//!
//! let secret = SecretString::from("dev-secret-key");
//! let s3 = EmbeddedS3::start("/tmp/blindfold-s3", 0, "dev-access-key", &secret).await?;
//! let store = Store::connect(&StoreConfig::for_endpoint(s3.endpoint(), "blindfold", "dev-access-key", secret)).await?;
//! store.ensure_bucket().await?;
//!
//! let key = ObjectKey::job_input(&TenantId::new("st-mary")?, &JobId::new("job-1")?, &ObjectName::new("batch.bin")?);
//! let file = tokio::fs::File::open("batch.bin").await.map_err(|e| blindfold_store::StoreError::Config(e.to_string()))?;
//! let receipt = store.upload(&key, file).await?;
//! let mut copy = Vec::new();
//! store.download(&key, &mut copy, Some(receipt.crc32c)).await?;
//! s3.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod client;
mod config;
mod embedded;
mod error;
pub mod layout;
pub mod presign;

pub use client::{DownloadReceipt, MAX_PARTS, MIN_PART_SIZE, ObjectInfo, Pinned, Store, UploadReceipt};
pub use config::StoreConfig;
pub use embedded::EmbeddedS3;
pub use error::{Result, StoreError};
pub use layout::{JobId, KeysetId, ModelName, ObjectKey, ObjectName, Prefix, TenantId};
pub use presign::{PresignedPart, PresignedRequest, PresignedUpload, UploadedPart};
