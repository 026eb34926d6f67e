//! Throughput of the linear-map kernel: a dense 720 → 100 map over 2-part ciphertexts at
//! N = 2^13 with six 30-bit primes (the shape of CryptoNets' first dense layer).
//!
//! `cargo run --release -p blindfold-ckks --example linbench [-- THREADS]`

use std::time::Instant;

use blindfold_ckks::{Context, KeyGenerator, LinearMap, ParametersBuilder, SecretKeyEncryptor};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = std::env::args().nth(1).map(|t| t.parse()).transpose()?.unwrap_or(1);
    let bits: u32 = std::env::args().nth(2).map(|b| b.parse()).transpose()?.unwrap_or(30);
    let params =
        ParametersBuilder::new(13).ciphertext_bits(&[bits; 6]).special_bits(&[37]).log_scale(bits - 1).build()?;
    let context = Context::new(params)?;
    let keys = KeyGenerator::new(&context);
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone())?;
    let evaluator = blindfold_ckks::Evaluator::new(&context);
    let level = context.max_level();
    let (inputs, outputs) = (720, 100);
    let template = encryptor.encrypt(&context.encode(&[0.5; 16], level, 2f64.powi(bits as i32 - 1))?)?;
    let cts = vec![template; inputs];
    let rows: Vec<Vec<(usize, f64)>> = (0..outputs)
        .map(|o| (0..inputs).map(|k| (k, ((o * 31 + k * 17) % 100) as f64 / 100.0 - 0.5)).collect())
        .collect();
    let map = LinearMap::new(&context, inputs, &rows, vec![0.0; outputs], level, 2f64.powi(20))?;
    let refs: Vec<_> = cts.iter().collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let start = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        pool.install(|| evaluator.apply_linear(&map, &refs))?;
    }
    let seconds = start.elapsed().as_secs_f64() / reps as f64;
    let element_macs = (inputs * outputs * 2 * (level + 1) * context.params().n()) as f64;
    println!(
        "{{\"op\": \"linear_720x100\", \"log_n\": 13, \"limbs\": {}, \"threads\": {threads}, \"seconds\": {seconds:.4}, \"gmacs_per_second\": {:.2}}}",
        level + 1,
        element_macs / seconds / 1e9
    );
    Ok(())
}
