//! The Blindfold worker node: claims jobs from the PostgreSQL queue, evaluates their ciphertext
//! batches on every core and writes the encrypted results back to object storage.
//!
//! One attempt of a job goes: claim (under a lease) → evaluation keys (cached by key set,
//! bounded by bytes) and compiled model (cached) → download the input batch → evaluate it with
//! rayon, header and checksums verified against the job → upload the result (named by attempt)
//! → complete, fenced by the lease. A heartbeat task extends the lease every third of it and
//! reports progress; when the queue answers that the job was cancelled or the lease lost, the
//! computation stops at its next check and nothing is uploaded.
//!
//! Failures are classified: bad input (malformed batch, wrong key set, unknown model, missing
//! object) fails the job for good with a precise message; storage and database trouble is
//! retried in place with backoff, then reported as transient so the queue retries the job; a
//! panic in the engine fails the attempt as transient and the worker carries on. On shutdown
//! the worker stops claiming, lets the running job finish until a deadline, then cancels it and
//! releases it to the queue without spending an attempt.
//!
//! ```no_run
//! use blindfold_store::StoreConfig;
//! use blindfold_worker::Config;
//!
//! # async fn example(store: StoreConfig) -> Result<(), blindfold_worker::Error> {
//! let config = Config::new("postgres://postgres@127.0.0.1/blindfold", store);
//! blindfold_worker::run(config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod cache;
mod config;
mod error;
mod job;
mod telemetry;
mod worker;

pub use config::Config;
pub use error::Error;
pub use worker::{Worker, run};

/// Tells mimalloc (the global allocator of the binaries that evaluate: `blindfold-worker` and
/// `blindfold`) never to hand freed memory back to the kernel. Each layer of a throughput batch
/// frees and allocates hundreds of megabytes; returning them makes every new ciphertext
/// page-fault its memory back in (zeroed by the kernel), which took half the time of a
/// CryptoNets batch on a 2-core VM: 2.94 s per batch without this, 1.57 s with it (`blindfold
/// bench infer --model mnist-cryptonets`, `MIMALLOC_PURGE_DELAY=-1`). The environment variable
/// `MIMALLOC_PURGE_DELAY` overrides it. Has no effect unless mimalloc is the allocator.
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    /// `mi_option_purge_delay` (option 15 in mimalloc v2 and v3); -1 = never purge.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set takes plain integers and is safe to call at any time; the option
        // is read on each purge decision.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}
