//! Shared test setup: a fresh embedded S3 endpoint in a temporary directory and a `Store`
//! connected to it through aws-sdk-s3, signatures included.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use blindfold_store::{EmbeddedS3, JobId, ObjectKey, ObjectName, Store, StoreConfig, TenantId};
use rand::{RngCore, SeedableRng, rngs::StdRng};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

pub const ACCESS_KEY: &str = "blindfold-test-ak";
pub const SECRET_KEY: &str = "blindfold-test-secret-key-0123456789";
pub const BUCKET: &str = "blindfold-test";
pub const MIB: usize = 1 << 20;

pub struct Harness {
    pub s3: EmbeddedS3,
    pub store: Store,
    pub config: StoreConfig,
    pub dir: tempfile::TempDir,
}

pub fn secret() -> SecretString {
    SecretString::from(SECRET_KEY)
}

pub fn config_for(endpoint: String) -> StoreConfig {
    let mut config = StoreConfig::for_endpoint(endpoint, BUCKET, ACCESS_KEY, secret());
    config.part_size_mib = 5;
    config.initial_backoff_ms = 100;
    config.max_attempts = 10;
    config
}

pub async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let s3 = EmbeddedS3::start(dir.path().join("data"), 0, ACCESS_KEY, &secret()).await.unwrap();
    let config = config_for(s3.endpoint());
    let store = Store::connect(&config).await.unwrap();
    store.ensure_bucket().await.unwrap();
    Harness { s3, store, config, dir }
}

pub fn tenant() -> TenantId {
    TenantId::new("st-mary").unwrap()
}

pub fn input_key(job: &str, name: &str) -> ObjectKey {
    ObjectKey::job_input(&tenant(), &JobId::new(job).unwrap(), &ObjectName::new(name).unwrap())
}

/// Deterministic pseudo-random bytes.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Files the embedded endpoint keeps for unfinished multipart uploads.
pub fn leftover_uploads(data_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(data_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".upload"))
        .collect()
}

/// An `AsyncRead` of `len` seeded pseudo-random bytes, generated on the fly (never held whole)
/// and hashed as they are read.
pub struct RandomReader {
    rng: StdRng,
    remaining: u64,
    pub produced: u64,
    pub sha: Sha256,
    /// Called once when `produced` first reaches this many bytes.
    pub trigger: Option<(u64, tokio::sync::oneshot::Sender<()>)>,
    /// After the trigger fired, produce nothing more until this resolves.
    pub resume: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl RandomReader {
    pub fn new(seed: u64, len: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            remaining: len,
            produced: 0,
            sha: Sha256::new(),
            trigger: None,
            resume: None,
        }
    }
}

impl AsyncRead for RandomReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.trigger.is_none()
            && let Some(resume) = self.resume.as_mut()
        {
            if Pin::new(resume).poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.resume = None;
        }
        let n = (buf.remaining() as u64).min(self.remaining).min(256 * 1024) as usize;
        if n == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut chunk = vec![0u8; n];
        self.rng.fill_bytes(&mut chunk);
        self.sha.update(&chunk);
        buf.put_slice(&chunk);
        self.remaining -= n as u64;
        self.produced += n as u64;
        let fire = matches!(&self.trigger, Some((at, _)) if self.produced >= *at);
        if fire && let Some((_, tx)) = self.trigger.take() {
            let _ = tx.send(());
        }
        Poll::Ready(Ok(()))
    }
}

/// An `AsyncWrite` that only hashes and counts what it is given.
#[derive(Default)]
pub struct HashingWriter {
    pub sha: Sha256,
    pub written: u64,
}

impl tokio::io::AsyncWrite for HashingWriter {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.sha.update(buf);
        self.written += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
