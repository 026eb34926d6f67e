//! Single-threaded timings of every CKKS operation, one JSON object per line.
//!
//! `cargo run --release -p blindfold-ckks --example opbench -- --json [--seal SEAL.json]`
//!
//! Shapes: log_n 13 with q = [60, 40, 40] + P = 60, and log_n 14 with q = [60, 40 × 7] + P = 60
//! (Δ = 2^40), the shapes Microsoft SEAL is commonly benchmarked with. With `--seal`, the output
//! of `../shared/peers/seal_ops.py` measured in the same session is read and every op SEAL
//! also measures gets `seal_us` and `speedup` fields.

use std::time::Instant;

// Every Blindfold binary uses mimalloc: the CKKS operations allocate and free megabyte-sized
// buffers, which glibc hands back to the kernel and page-faults in again on every operation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use blindfold_ckks::{Context, Decryptor, Encryptor, Evaluator, KeyGenerator, ParametersBuilder, SecretKeyEncryptor};

fn median_us(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn bench(log_n: u32, bits: &[u32], reps: usize) -> Result<Vec<(&'static str, f64)>, blindfold_ckks::Error> {
    let params = ParametersBuilder::new(log_n).ciphertext_bits(bits).special_bits(&[60]).log_scale(40).build()?;
    let context = Context::new(params)?;
    let keys = KeyGenerator::new(&context);
    let relin = keys.relin_key();
    let steps: Vec<i64> = (1..=8).collect();
    let galois = keys.galois_keys(&steps, false);
    let pk_encryptor = Encryptor::new(&context, keys.public_key())?;
    let sk_encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone())?;
    let decryptor = Decryptor::new(&context, keys.secret_key().clone())?;
    let evaluator = Evaluator::new(&context);
    let top = context.max_level();
    let scale = context.params().scale();
    let values: Vec<f64> = (0..context.slots()).map(|i| ((i * 7919) % 1000) as f64 / 1000.0 - 0.5).collect();
    let plaintext = context.encode(&values, top, scale)?;
    let a = sk_encryptor.encrypt(&plaintext)?;
    let b = sk_encryptor.encrypt(&plaintext)?;
    let product = evaluator.mul(&a, &b)?;
    let relinearized = evaluator.relinearize(&product, &relin)?;

    let mut results = Vec::new();
    let mut run = |name: &'static str, f: &mut dyn FnMut()| results.push((name, median_us(reps, f)));
    run("encode", &mut || drop(context.encode(&values, top, scale)));
    run("encrypt_pk", &mut || drop(pk_encryptor.encrypt(&plaintext)));
    run("encrypt_sk", &mut || drop(sk_encryptor.encrypt_seeded(&plaintext)));
    run("decrypt", &mut || drop(decryptor.decrypt(&a)));
    run("add", &mut || drop(evaluator.add(&a, &b)));
    run("mul_plain", &mut || drop(evaluator.mul_plain(&a, &plaintext)));
    run("mul_scalar", &mut || drop(evaluator.mul_scalar(&a, 0.5, scale)));
    run("mul", &mut || drop(evaluator.mul(&a, &b)));
    run("relin", &mut || drop(evaluator.relinearize(&product, &relin)));
    run("mul_relin", &mut || drop(evaluator.mul_relin(&a, &b, &relin)));
    run("rescale", &mut || drop(evaluator.rescale(&relinearized)));
    run("rotate", &mut || drop(evaluator.rotate(&a, 1, &galois)));
    run("rotate_hoisted_8", &mut || drop(evaluator.rotate_hoisted(&a, &steps, &galois)));
    Ok(results)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let seal: Option<serde_json::Value> = match args.iter().position(|a| a == "--seal") {
        Some(i) => {
            let path = args.get(i + 1).ok_or("--seal needs a file (the output of seal_ops.py)")?;
            Some(serde_json::from_str(&std::fs::read_to_string(path)?)?)
        }
        None => None,
    };
    // One thread: the numbers compare with SEAL's single-threaded figures.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let shapes: [(u32, Vec<u32>, usize); 2] =
        [(13, vec![60, 40, 40], 31), (14, vec![60, 40, 40, 40, 40, 40, 40, 40], 15)];
    for (log_n, bits, reps) in shapes {
        let results = pool.install(|| bench(log_n, &bits, reps))?;
        for (op, median) in results {
            let seal_us = seal.as_ref().and_then(|s| s[log_n.to_string()][op].as_f64());
            if json {
                let mut line = serde_json::json!({
                    "op": op, "log_n": log_n, "limbs": bits.len(), "threads": 1, "median_us": (median * 10.0).round() / 10.0,
                });
                if let Some(seal_us) = seal_us {
                    line["seal_us"] = serde_json::json!((seal_us * 10.0).round() / 10.0);
                    line["speedup"] = serde_json::json!((seal_us / median * 100.0).round() / 100.0);
                }
                println!("{line}");
            } else {
                let versus = seal_us.map(|s| format!("  SEAL {s:>10.1} µs  {:>5.2}×", s / median)).unwrap_or_default();
                println!("log_n {log_n:>2}  limbs {:>2}  {op:<18} {median:>10.1} µs{versus}", bits.len());
            }
        }
    }
    Ok(())
}
