//! Time to expand seeded ciphertexts (the worker's first step on an upload): N = 2^13, six
//! 29-bit primes, 784 ciphertexts (one MNIST throughput batch).
//!
//! `cargo run --release -p blindfold-ckks --example expandbench`

use std::time::Instant;

use blindfold_ckks::{Context, KeyGenerator, ParametersBuilder, SecretKeyEncryptor};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let params = ParametersBuilder::new(13).ciphertext_bits(&[29; 6]).special_bits(&[40]).log_scale(28).build()?;
    let context = Context::new(params)?;
    let keys = KeyGenerator::new(&context);
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone())?;
    let seeded = encryptor.encrypt_seeded(&context.encode(&[0.5; 16], 5, 2f64.powi(28))?)?;
    let count = 784;
    let start = Instant::now();
    let expanded: Vec<_> = (0..count).map(|_| seeded.expand(&context)).collect();
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{count} expansions in {seconds:.3} s ({:.1} µs each, {} kept)",
        seconds / count as f64 * 1e6,
        expanded.len()
    );
    drop(expanded);
    let start = Instant::now();
    for _ in 0..count {
        drop(seeded.expand(&context));
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("{count} expansions (reused memory) in {seconds:.3} s ({:.1} µs each)", seconds / count as f64 * 1e6);
    Ok(())
}
