//! The files that cross the boundary between the hospital and the service: ciphertext batches
//! (inputs the hospital uploads, results the worker writes back) and evaluation-key bundles.
//!
//! Both are versioned binary containers with a checksummed header and a body streamed in
//! chunks, each with its own CRC-32C, closed by a trailer with the BLAKE3 digest of everything
//! before it. Writers and readers hold one chunk at most, so a multi-gigabyte batch never sits
//! in memory, and a torn or corrupted file is refused at the chunk where it breaks, with an
//! error that names the byte offset, the field, and what was expected. `FORMAT.md` in this
//! crate is the byte-level specification. The crate does no network I/O and never parses a
//! secret key: key bundles are built from types that cannot hold one, and a section that
//! starts with the secret-key magic is refused unread.
//!
//! ```
//! use blindfold_batch::{BatchHeader, Expect, InputBatchReader, InputBatchWriter, Packing, Uuid};
//! use blindfold_ckks::{Context, KeyGenerator, Preset, SecretKeyEncryptor};
//!
//! let context = Context::new(Preset::N13Depth2.parameters()?)?;
//! let keys = KeyGenerator::new(&context);
//! let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone())?;
//! let (level, scale) = (context.max_level(), context.params().scale());
//! let key_set = Uuid::new_v4();
//!
//! let header = BatchHeader {
//!     model: "mnist-cryptonets".into(),
//!     model_version: "1".into(),
//!     packing: Packing::Throughput,
//!     shape: vec![1, 28, 28],
//!     image_count: 3,
//!     ciphertext_count: 2,
//!     level,
//!     scale,
//!     key_set,
//!     origin: None,
//! };
//! let mut writer = InputBatchWriter::new(Vec::new(), &context, header)?;
//! for pixel in [0.25, 0.5] {
//!     let plaintext = context.encode(&[pixel, pixel, pixel], level, scale)?;
//!     writer.push(&encryptor.encrypt_seeded(&plaintext)?)?;
//! }
//! let file = writer.finish()?.writer;
//!
//! let expect = Expect::new().model("mnist-cryptonets", "1").key_set(key_set).image_count(3);
//! let reader = InputBatchReader::open(&file[..], &context, &expect)?;
//! let ciphertexts = reader.collect::<Result<Vec<_>, _>>()?;
//! assert_eq!(ciphertexts.len(), 2);
//!
//! // A batch for another model is refused before any ciphertext is read.
//! let other = Expect::new().model("derma-lenet5", "1");
//! let error = InputBatchReader::open(&file[..], &context, &other).unwrap_err();
//! assert_eq!(error.to_string(), "header field model: expected derma-lenet5, found mnist-cryptonets");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod batch;
mod bundle;
mod error;
mod framing;
mod header;

pub use batch::{
    BatchCiphertext, BatchReader, BatchWriter, InputBatchReader, InputBatchWriter, RawBatchReader, ResultBatchReader,
    ResultBatchWriter,
};
pub use bundle::{
    DEFAULT_KEY_BUNDLE_CHUNK, KEY_BUNDLE_CHUNK_RANGE, KEY_BUNDLE_HEADER_LEN, KEY_BUNDLE_MAGIC, KeyBundle,
    KeyBundleExpect, KeyBundleWriter,
};
pub use error::{Error, Result};
pub use framing::{ContentDigest, FORMAT_VERSION, Finished, OLDEST_READ_VERSION};
pub use header::{
    BatchHeader, BatchKind, DEFAULT_CHUNK_TARGET, Expect, Layout, MAX_CHUNK_PAYLOAD, MAX_CIPHERTEXT_LEN,
    MAX_CIPHERTEXTS, MAX_HEADER_LEN, MAX_IMAGES, MAX_NAME_LEN, MAX_RANK, Origin, Packing,
};

/// Re-exported so callers name key-set ids with the same type.
pub use uuid::Uuid;
