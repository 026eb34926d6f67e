//! Throughput of the linear-map kernel on a convolution's shape: 5×5 kernels over a 28×28
//! input with C output channels (position-major rows, as the throughput compiler emits them),
//! 2-part ciphertexts at N = 2^14 with q = [31, 29 × 7] (mnist-lenet5's first layer), streamed
//! in slices of 4·C rows into reused output buffers, as the compiler's segments do.
//!
//! `cargo run --release -p blindfold-ckks --example convbench [-- THREADS CHANNELS]`

use std::time::Instant;

use blindfold_ckks::{Context, KeyGenerator, LinearMap, Preset, SecretKeyEncryptor};
use rayon::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = std::env::args().nth(1).map(|t| t.parse()).transpose()?.unwrap_or(2);
    let channels: usize = std::env::args().nth(2).map(|c| c.parse()).transpose()?.unwrap_or(6);
    let context = Context::new(Preset::N14Depth7Small.parameters()?)?;
    let keys = KeyGenerator::new(&context);
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone())?;
    let evaluator = blindfold_ckks::Evaluator::new(&context);
    let level = context.max_level();
    let (side, kernel) = (28, 5);
    let out_side = side - kernel + 1;
    let template = encryptor.encrypt(&context.encode(&[0.5; 16], level, 2f64.powi(28))?)?;
    let cts = vec![template; side * side];
    let mut rows = Vec::new();
    for y in 0..out_side {
        for x in 0..out_side {
            for c in 0..channels {
                let row: Vec<(usize, f64)> = (0..kernel * kernel)
                    .map(|k| ((y + k / kernel) * side + x + k % kernel, ((c * 31 + k * 17) % 100) as f64 / 100.0 - 0.5))
                    .collect();
                rows.push(row);
            }
        }
    }
    let outputs = rows.len();
    let map = LinearMap::new(&context, cts.len(), &rows, vec![0.0; outputs], level, 2f64.powi(29))?;
    let refs: Vec<_> = cts.iter().collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let slice = 4 * channels;
    // Each worker reuses one output buffer, as the compiler's segments do.
    let run = || -> Result<(), blindfold_ckks::Error> {
        (0..outputs.div_ceil(slice)).into_par_iter().try_for_each_init(Vec::new, |buffer, s| {
            evaluator.apply_linear_rows_into(&map, &refs, s * slice..((s + 1) * slice).min(outputs), buffer)
        })
    };
    pool.install(run)?;
    let start = Instant::now();
    let reps = 2;
    for _ in 0..reps {
        pool.install(run)?;
    }
    let seconds = start.elapsed().as_secs_f64() / reps as f64;
    let element_macs = (map.nonzeros() * 2 * (level + 1) * context.params().n()) as f64;
    println!(
        "{{\"op\": \"conv5x5_{channels}ch\", \"log_n\": 14, \"limbs\": {}, \"threads\": {threads}, \"seconds\": {seconds:.4}, \"gmacs_per_second\": {:.2}}}",
        level + 1,
        element_macs / seconds / 1e9
    );
    Ok(())
}
