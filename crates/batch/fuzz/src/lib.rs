//! Shared setup for the batch and key-bundle fuzz targets: a tiny (insecure, test-only) context
//! for batches, a small secure one for key bundles (bundles re-check security on load), one
//! valid file of each kind, and a mutator that turns fuzz input into byte flips and cuts.

use std::sync::{Arc, OnceLock};

use blindfold_batch::{BatchHeader, InputBatchWriter, KeyBundleWriter, Packing, Uuid};
use blindfold_ckks::{Context, KeyGenerator, ParametersBuilder, SecretKeyEncryptor};

/// N = 2^5 with two small primes: tiny ciphertexts, same code paths as production sets.
pub fn context() -> &'static Arc<Context> {
    static CONTEXT: OnceLock<Arc<Context>> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let params = ParametersBuilder::new(5)
            .ciphertext_bits(&[30, 20])
            .special_bits(&[30])
            .log_scale(20)
            .build_insecure_for_tests()
            .unwrap_or_else(|e| panic!("toy parameters: {e}"));
        Context::new(params).unwrap_or_else(|e| panic!("toy context: {e}"))
    })
}

/// The header of the valid batch.
pub fn header() -> BatchHeader {
    BatchHeader {
        model: "mnist-cryptonets".into(),
        model_version: "1".into(),
        packing: Packing::Throughput,
        shape: vec![1, 28, 28],
        image_count: 3,
        ciphertext_count: 5,
        level: 1,
        scale: 2f64.powi(20),
        key_set: Uuid::from_u128(42),
        origin: None,
    }
}

/// A valid input batch of five ciphertexts, two per chunk.
pub fn valid_batch() -> &'static [u8] {
    static BATCH: OnceLock<Vec<u8>> = OnceLock::new();
    BATCH.get_or_init(|| {
        let context = context();
        let keys = KeyGenerator::new(context);
        let encryptor = SecretKeyEncryptor::new(context, keys.secret_key().clone())
            .unwrap_or_else(|e| panic!("encryptor: {e}"));
        let mut writer = InputBatchWriter::new(Vec::new(), context, header())
            .unwrap_or_else(|e| panic!("writer: {e}"))
            .ciphertexts_per_chunk(2);
        for i in 0..5 {
            let plaintext = context
                .encode(&[i as f64 / 10.0], 1, 2f64.powi(20))
                .unwrap_or_else(|e| panic!("encode: {e}"));
            let ciphertext = encryptor.encrypt_seeded(&plaintext).unwrap_or_else(|e| panic!("encrypt: {e}"));
            writer.push(&ciphertext).unwrap_or_else(|e| panic!("push: {e}"));
        }
        writer.finish().unwrap_or_else(|e| panic!("finish: {e}")).writer
    })
}

/// A valid key bundle (the smallest secure set, N = 2^12) with 4 KiB chunks.
pub fn valid_bundle() -> &'static [u8] {
    static BUNDLE: OnceLock<Vec<u8>> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let params = ParametersBuilder::new(12)
            .ciphertext_bits(&[36, 30])
            .special_bits(&[40])
            .log_scale(25)
            .build()
            .unwrap_or_else(|e| panic!("parameters: {e}"));
        let context = Context::new(params).unwrap_or_else(|e| panic!("context: {e}"));
        let keys = KeyGenerator::new(&context);
        KeyBundleWriter::new()
            .chunk_size(4096)
            .and_then(|w| w.write(Vec::new(), &context, Uuid::from_u128(42), &keys.relin_key(), &keys.galois_keys(&[1], false)))
            .unwrap_or_else(|e| panic!("bundle: {e}"))
            .writer
    })
}

/// Applies fuzz input to a valid file: byte 0 bit 0 asks for a cut at the u32 in bytes 1..5
/// (modulo the length + 1), bit 1 for one extra byte at the end; then every 5 bytes are a u32
/// offset (modulo the length) and a byte to XOR there.
pub fn mutate(valid: &[u8], data: &[u8]) -> Vec<u8> {
    let mut file = valid.to_vec();
    let Some((&mode, rest)) = data.split_first() else { return file };
    let (cut, rest) = match rest.split_first_chunk::<4>() {
        Some((cut, rest)) => (u32::from_le_bytes(*cut) as usize, rest),
        None => (usize::MAX, rest),
    };
    for pair in rest.chunks_exact(5) {
        let offset = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]) as usize % file.len();
        file[offset] ^= pair[4];
    }
    if mode & 1 == 1 && cut != usize::MAX {
        file.truncate(cut % (file.len() + 1));
    }
    if mode & 2 == 2 {
        file.push(mode);
    }
    file
}
