//! Latency-packing benchmark: `cargo run --release -p blindfold-nn --example latency_bench -- MODEL [IMAGES] [RUNS]`.
//! Encrypts single test images, evaluates each alone, and prints one JSON object: the median
//! single-image latency over RUNS runs, evaluation-key bytes, and argmax agreement and largest
//! logit error against the plaintext evaluator over IMAGES images.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use blindfold_ckks::{Context, Decryptor, KeyGenerator, SecretKeyEncryptor};
use blindfold_compiler::{Control, LatencyEngine, LatencyPlan};
use blindfold_nn::data::{self, Split};
use blindfold_nn::registry;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map(String::as_str).unwrap_or("mnist-cryptonets");
    let images: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let runs: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(9);
    let model = registry::load(name)?;
    let plan = LatencyPlan::compile(name, &model.network)?;
    eprintln!("{}", plan.summary());
    let data_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    let set = if name.starts_with("derma") {
        data::dermamnist(&data_dir.join("dermamnist/dermamnist.npz"), Split::Test)?
    } else {
        data::mnist(&data_dir.join("mnist"), Split::Test)?
    };
    let inputs = model.manifest.inputs(&set.take(images.max(1)))?;
    let context = Context::new(plan.params().clone())?;
    let keys = KeyGenerator::new(&context);
    let relin = keys.relin_key();
    let galois = keys.galois_keys_at(&plan.rotation_keys());
    let eval_key_bytes = relin.to_bytes(&context).len() + galois.to_bytes(&context).len();
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone())?;
    let decryptor = Decryptor::new(&context, keys.secret_key().clone())?;
    let (level, scale) = (plan.input_level(), plan.input_scale());
    let setup = Instant::now();
    let engine = LatencyEngine::new(plan, &context)?;
    eprintln!("engine setup {:.2} s", setup.elapsed().as_secs_f64());
    let encrypt = |input: &[f64]| -> anyhow::Result<_> {
        let slots = engine.plan().pack(input)?;
        Ok(encryptor.encrypt_seeded(&context.encode(&slots, level, scale)?)?)
    };
    let first = inputs.first().context("no images")?;
    let upload_bytes_per_image = encrypt(first)?.to_bytes(&context).len();
    let mut times = Vec::with_capacity(runs);
    let mut result_bytes_per_image = 0;
    for _ in 0..runs {
        let ct = encrypt(first)?.expand(&context);
        let start = Instant::now();
        let out = engine.evaluate(ct, &relin, &galois, &Control::none())?;
        times.push(start.elapsed().as_secs_f64());
        result_bytes_per_image = out.to_bytes(&context).len();
    }
    times.sort_by(f64::total_cmp);
    let latency_seconds = times[times.len() / 2];
    let (mut agree, mut max_logit_error) = (0usize, 0f64);
    for input in &inputs {
        let out = engine.evaluate(encrypt(input)?.expand(&context), &relin, &galois, &Control::none())?;
        let logits = engine.plan().unpack(&decryptor.decrypt_values(&out)?)?;
        let reference = model.network.forward(input)?;
        agree += usize::from(argmax(&logits) == argmax(&reference));
        for (a, b) in logits.iter().zip(&reference) {
            max_logit_error = max_logit_error.max((a - b).abs());
        }
    }
    let params = engine.plan().params();
    let report = serde_json::json!({
        "model": name,
        "packing": "latency",
        "images": inputs.len(),
        "threads": rayon::current_num_threads(),
        "log_n": params.log_n(),
        "log_qp": params.log_qp(),
        "security_bits": params.security_bits(),
        "latency_seconds": latency_seconds,
        "latency_runs": times,
        "eval_key_bytes": eval_key_bytes,
        "rotation_keys": galois.len(),
        "plaintext_bytes": engine.plan().plaintext_bytes(),
        "agreement": agree as f64 / inputs.len() as f64,
        "max_logit_error": max_logit_error,
        "peak_rss_bytes": peak_rss_bytes(),
        "upload_bytes_per_image": upload_bytes_per_image,
        "result_bytes_per_image": result_bytes_per_image,
    });
    println!("{report}");
    Ok(())
}

fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0)
}

/// VmHWM from /proc/self/status (Linux), in bytes.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
