//! Measures what the container adds to a realistic batch: an MNIST throughput batch (one seeded
//! ciphertext per pixel, 784 ciphertexts) under the N = 2^13 depth-2 preset, written to a file
//! and read back through the typed reader.
//!
//! `cargo run --release -p blindfold-batch --example overhead`

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::time::Instant;

use blindfold_batch::{BatchHeader, Expect, InputBatchReader, InputBatchWriter, Packing, Uuid};
use blindfold_ckks::{Context, KeyGenerator, Preset, SecretKeyEncryptor, SeededCiphertext};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let context = Context::new(Preset::N13Depth2.parameters()?)?;
    let keys = KeyGenerator::new(&context);
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone())?;
    let (level, scale) = (context.max_level(), context.params().scale());
    let count = 784u64;
    let header = BatchHeader {
        model: "mnist-cryptonets".into(),
        model_version: "1".into(),
        packing: Packing::Throughput,
        shape: vec![1, 28, 28],
        image_count: context.slots() as u64,
        ciphertext_count: count,
        level,
        scale,
        key_set: Uuid::new_v4(),
        origin: None,
    };
    // One ciphertext, pushed 784 times: the container does not care, and encryption time is
    // not what is measured here.
    let plaintext = context.encode(&vec![0.5; context.slots()], level, scale)?;
    let ciphertext = encryptor.encrypt_seeded(&plaintext)?;

    let dir = std::env::temp_dir().join(format!("blindfold-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("batch.bfib");
    let started = Instant::now();
    let mut writer = InputBatchWriter::new(BufWriter::new(File::create(&path)?), &context, header)?;
    for _ in 0..count {
        writer.push(&ciphertext)?;
    }
    let finished = writer.finish()?;
    let write_time = started.elapsed();

    let started = Instant::now();
    let reader = InputBatchReader::open(BufReader::new(File::open(&path)?), &context, &Expect::new())?;
    let layout = reader.layout();
    let mut read = 0u64;
    for c in reader {
        c?;
        read += 1;
    }
    let read_time = started.elapsed();
    std::fs::remove_dir_all(&dir)?;

    let raw = count * SeededCiphertext::serialized_len(&context, level) as u64;
    let overhead = finished.len - raw;
    println!("preset n13-d2, {count} seeded ciphertexts at level {level} (one MNIST throughput batch)");
    println!("ciphertext            {} bytes", layout.ciphertext_len());
    println!("raw ciphertext bytes  {raw}");
    println!(
        "file                  {} bytes: header {} + {} chunks × 16 + trailer 52",
        finished.len,
        layout.header_len(),
        layout.chunk_count()
    );
    println!(
        "container overhead    {overhead} bytes ({:.5} % of the ciphertexts)",
        overhead as f64 * 100.0 / raw as f64
    );
    println!(
        "ciphertexts per chunk {} (chunk payload {} bytes)",
        layout.ciphertexts_per_chunk(),
        layout.chunk_payload_len(0)
    );
    let mib = finished.len as f64 / (1 << 20) as f64;
    println!(
        "write (serialize + CRC + BLAKE3 + file)  {:.0} ms, {:.0} MiB/s",
        write_time.as_secs_f64() * 1e3,
        mib / write_time.as_secs_f64()
    );
    println!(
        "read (file + CRC + BLAKE3 + ckks load)   {:.0} ms, {:.0} MiB/s, {read} ciphertexts",
        read_time.as_secs_f64() * 1e3,
        mib / read_time.as_secs_f64()
    );
    Ok(())
}
