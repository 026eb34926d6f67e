//! Single-threaded timings of every CKKS operation at N = 2^13 … 2^16, optionally interleaved
//! with Microsoft SEAL measured in the same run.
//!
//! ```sh
//! cargo run --release -p blindfold-ckks --example opbench -- \
//!     [--peer PYTHON] [--peer-script PATH] [--rounds R] [--log-n 13,14,15,16] \
//!     [--shapes seal,small] [--rotation-keys auto|1..8] [--json]
//! ```
//!
//! Two shapes per ring:
//!
//! - `seal`: the shapes SEAL is commonly benchmarked with, Δ = 2^40, one 60-bit special
//!   prime: [60, 40, 40], [60, 40 × 7], [60, 40 × 16], [60, 40 × 35] for log_n 13 … 16.
//! - `small`: the small-prime shapes of Blindfold's model compiler, Δ = 2^28: q = [31] + [29] ×
//!   L with 31-bit special primes and key-switching digits of α primes. log_n 13 is
//!   [31, 29 × 5] + one 40-bit prime, α = 1, and log_n 14 is [31, 29 × 7] + 4 × 31, α = 4 (the
//!   `n13-d5-29` and `n14-d7-29` presets); log_n 15 and 16 take the largest L for which some
//!   α fits the 128-bit bound with k = ⌈(bits of the first digit + 1) / 31⌉ special primes
//!   (k ≤ 8), and of those the α with the fewest key rows ⌈(L + 1)/α⌉ · (L + 1 + k) (the
//!   compiler's rule): [31, 29 × 27] + 2 × 31, α = 2 and [31, 29 × 57] + 2 × 31, α = 2.
//!
//! Each round measures every op `reps` times (31/15/7/3 for log_n 13/14/15/16, after one
//! warm-up run) and keeps the median; with `--peer PYTHON` the round then runs
//! `crates/ckks/peers/seal_ops.py --log-n N` with that interpreter (a SEAL build, e.g. the
//! venv from `../shared/peers/setup.sh`), so ours and SEAL alternate A, B, A, B on a noisy
//! machine. Reported per op: the median over rounds, the spread (min–max over rounds), SEAL's
//! figures at the `seal` shape, the speed-up, and the 1-minute load average at the start and
//! end of each ring. Ours runs on one thread (a one-thread rayon pool); each of our rounds runs
//! in a child process (this binary with `--child`), so that its memory is back with the kernel
//! before SEAL starts (at log_n 16 one key is 1.4–1.8 GB and the allocator keeps freed pages);
//! keys are generated on the child's global pool, untimed, in stages.
//!
//! `rotate_hoisted_8` is 8 rotations (steps 1..8) sharing one decomposition; SEAL has no
//! hoisting API, so its `rotate_8` is 8 separate rotations. On a shared machine the 8 Galois
//! keys may not fit (at log_n 16 they take 11–15 GB on each side): `--rotation-keys auto`
//! (the default) makes keys for steps 1..K only, K as large as MemAvailable at the start of
//! the ring allows, and both sides cycle their 8 rotations through them (steps 1..K, 1..K, …):
//! the same work per rotation. The JSON lines say which K was used; `--rotation-keys K` sets
//! it (the child still skips the rotations, saying so, if the keys do not fit when it starts).

use std::error::Error;
use std::process::Command;
use std::time::Instant;

// Every Blindfold binary uses mimalloc: the CKKS operations allocate and free megabyte-sized
// buffers, which glibc hands back to the kernel and page-faults in again on every operation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use blindfold_ckks::{
    Context, Decryptor, Encryptor, Evaluator, KeyGenerator, Parameters, ParametersBuilder, SecretKeyEncryptor,
    security_bound,
};
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const ROTATIONS: i64 = 8;
/// Bits of the small-prime shapes (the model compiler's choices).
const BASE_BITS: u32 = 31;
const PRIME_BITS: u32 = 29;
const HYBRID_SPECIAL_BITS: u32 = 31;
const MAX_SPECIAL: usize = 8;

/// Our ops and the name SEAL's script gives the same work.
const SEAL_NAMES: [(&str, &str); 13] = [
    ("encode", "encode"),
    ("encrypt_pk", "encrypt_pk"),
    ("encrypt_sk", "encrypt_sk"),
    ("decrypt", "decrypt"),
    ("add", "add"),
    ("mul_plain", "mul_plain"),
    ("mul_scalar", ""),
    ("mul", "mul"),
    ("relin", "relin"),
    ("mul_relin", "mul_relin"),
    ("rescale", "rescale"),
    ("rotate", "rotate"),
    ("rotate_hoisted_8", "rotate_8"),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ShapeKind {
    Seal,
    Small,
}

impl ShapeKind {
    fn name(self) -> &'static str {
        match self {
            ShapeKind::Seal => "seal",
            ShapeKind::Small => "small",
        }
    }
}

/// A parameter set to measure at.
struct Shape {
    kind: ShapeKind,
    params: Parameters,
    /// The bit sizes, for the output: "60,40x7 + 60".
    description: String,
}

fn describe(bits: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < bits.len() {
        let run = bits[i..].iter().take_while(|&&b| b == bits[i]).count();
        parts.push(if run == 1 { bits[i].to_string() } else { format!("{}x{run}", bits[i]) });
        i += run;
    }
    parts.join(",")
}

fn shape(kind: ShapeKind, builder: ParametersBuilder, q: &[u32], special: &[u32]) -> Result<Shape> {
    let params = builder.ciphertext_bits(q).special_bits(special).build()?;
    let description = format!("[{}] + [{}]", describe(q), describe(special));
    Ok(Shape { kind, params, description })
}

fn seal_shape(log_n: u32) -> Result<Shape> {
    let forties = match log_n {
        13 => 2,
        14 => 7,
        15 => 16,
        16 => 35,
        _ => return Err(format!("no SEAL shape for log_n {log_n} (13 to 16)").into()),
    };
    let mut q = vec![60];
    q.extend(std::iter::repeat_n(40, forties));
    shape(ShapeKind::Seal, ParametersBuilder::new(log_n).log_scale(40), &q, &[60])
}

fn small_bits(rescale_primes: usize) -> Vec<u32> {
    let mut q = vec![BASE_BITS];
    q.extend(std::iter::repeat_n(PRIME_BITS, rescale_primes));
    q
}

fn small_shape(log_n: u32) -> Result<Shape> {
    let builder = |alpha: usize| ParametersBuilder::new(log_n).log_scale(PRIME_BITS - 1).digit_primes(alpha);
    match log_n {
        13 => return shape(ShapeKind::Small, builder(1), &small_bits(5), &[40]),
        14 => return shape(ShapeKind::Small, builder(4), &small_bits(7), &[HYBRID_SPECIAL_BITS; 4]),
        _ => {}
    }
    let bound = security_bound(log_n).ok_or_else(|| format!("no 128-bit bound for log_n {log_n}"))?;
    // The largest L for which some digit size fits, then the fewest key rows (as the model
    // compiler's choose_parameters orders its candidates).
    for rescale_primes in (1..=(bound / PRIME_BITS) as usize).rev() {
        let q = small_bits(rescale_primes);
        let Some(room) = bound.checked_sub(q.iter().sum()) else { continue };
        let limbs = q.len();
        let mut candidates: Vec<(usize, usize, usize)> = (1..=limbs)
            .filter_map(|alpha| {
                let digit: u32 = q.iter().take(alpha).sum::<u32>() + 1;
                let special = digit.div_ceil(HYBRID_SPECIAL_BITS) as usize;
                let fits = special <= MAX_SPECIAL && special as u32 * HYBRID_SPECIAL_BITS <= room;
                fits.then(|| (limbs.div_ceil(alpha) * (limbs + special), alpha, special))
            })
            .collect();
        candidates.sort_unstable();
        for (_, alpha, special) in candidates {
            if let Ok(found) = shape(ShapeKind::Small, builder(alpha), &q, &vec![HYBRID_SPECIAL_BITS; special]) {
                return Ok(found);
            }
        }
    }
    Err(format!("no small-prime shape fits log_n {log_n}").into())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn median_us(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    median(&mut times)
}

/// Bytes of one key-switching key at the top level (b and a, 8 bytes per coefficient).
fn key_bytes(params: &Parameters) -> u64 {
    let digits = params.digits_at(params.max_level()).len() as u64;
    let rows = (params.moduli().len() + params.special_moduli().len()) as u64;
    digits * rows * params.n() as u64 * 8 * 2
}

/// The most distinct rotation keys (1 to 8) that fit MemAvailable with 3 GiB to spare, for
/// our largest shape and for SEAL at its shape (its memory pool keeps the freed
/// relinearization key and more: it reached 15.5 GB, about K + 3 keys, at log_n 16).
fn rotation_keys_that_fit(shapes: &[Shape], peer: bool) -> Result<usize> {
    let Some(available) = memory_available() else { return Ok(ROTATIONS as usize) };
    let budget = available.saturating_sub(3 << 30);
    let mut keys = ROTATIONS as u64;
    for shape in shapes {
        let bytes = key_bytes(&shape.params);
        keys = keys.min(budget / bytes);
        if peer && shape.kind == ShapeKind::Seal {
            keys = keys.min((budget / bytes).saturating_sub(3));
        }
    }
    if keys == 0 {
        return Err(format!(
            "log_n {}: not even one rotation key fits the {:.1} GB available",
            shapes.first().map_or(0, |shape| shape.params.log_n()),
            available as f64 / 1e9
        )
        .into());
    }
    Ok(keys as usize)
}

/// MemAvailable from /proc/meminfo, in bytes.
fn memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// One round at one shape: the median of `reps` runs of every op, in microseconds. Keys are
/// made on the global pool (untimed) and dropped as soon as their ops are measured.
fn bench_round(
    params: &Parameters,
    reps: usize,
    rotation_keys: usize,
    pool: &rayon::ThreadPool,
) -> Result<Vec<(&'static str, f64)>> {
    let context = Context::new(params.clone())?;
    let keys = KeyGenerator::new(&context);
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

    let mut results = Vec::new();
    let steps: Vec<i64> = (0..ROTATIONS).map(|i| i % rotation_keys as i64 + 1).collect();
    let mut run =
        |name: &'static str, f: &mut (dyn FnMut() + Send)| results.push((name, pool.install(|| median_us(reps, f))));
    run("encode", &mut || drop(context.encode(&values, top, scale)));
    run("encrypt_pk", &mut || drop(pk_encryptor.encrypt(&plaintext)));
    run("encrypt_sk", &mut || drop(sk_encryptor.encrypt_seeded(&plaintext)));
    run("decrypt", &mut || drop(decryptor.decrypt(&a)));
    run("add", &mut || drop(evaluator.add(&a, &b)));
    run("mul_plain", &mut || drop(evaluator.mul_plain(&a, &plaintext)));
    run("mul_scalar", &mut || drop(evaluator.mul_scalar(&a, 0.5, scale)));
    run("mul", &mut || drop(evaluator.mul(&a, &b)));

    let relin = keys.relin_key();
    let relinearized = evaluator.relinearize(&product, &relin)?;
    run("relin", &mut || drop(evaluator.relinearize(&product, &relin)));
    run("mul_relin", &mut || drop(evaluator.mul_relin(&a, &b, &relin)));
    run("rescale", &mut || drop(evaluator.rescale(&relinearized)));
    drop(relin);

    let needed = key_bytes(params) * rotation_keys as u64;
    match memory_available() {
        Some(available) if available < needed + (1 << 30) => {
            eprintln!(
                "log_n {}: skipping rotate and rotate_hoisted_{ROTATIONS}: {rotation_keys} Galois keys need {:.1} GB, {:.1} GB available",
                params.log_n(),
                needed as f64 / 1e9,
                available as f64 / 1e9
            );
        }
        _ => {
            let key_steps: Vec<i64> = (1..=rotation_keys as i64).collect();
            let galois = keys.galois_keys(&key_steps, false);
            run("rotate", &mut || drop(evaluator.rotate(&a, 1, &galois)));
            run("rotate_hoisted_8", &mut || drop(evaluator.rotate_hoisted(&a, &steps, &galois)));
        }
    }
    Ok(results)
}

/// One of our rounds in a child process (`--child LOG_N SHAPE REPS KEYS`): its memory is returned
/// to the kernel when it exits.
fn run_child(log_n: u32, kind: ShapeKind, reps: usize, rotation_keys: usize) -> Result<Vec<(&'static str, f64)>> {
    let exe = std::env::current_exe()?;
    let output = Command::new(&exe)
        .args(["--child", &log_n.to_string(), kind.name(), &reps.to_string(), &rotation_keys.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|error| format!("cannot run {}: {error}", exe.display()))?;
    if !output.status.success() {
        return Err(format!("opbench --child {log_n} {} failed ({})", kind.name(), output.status).into());
    }
    let value: Value = serde_json::from_slice(&output.stdout)?;
    let ops = value.as_object().ok_or("the child printed no JSON object")?;
    SEAL_NAMES
        .iter()
        .filter_map(|&(op, _)| ops.get(op).map(|t| t.as_f64().map(|t| (op, t)).ok_or("a non-numeric time".into())))
        .collect()
}

/// The child: one round at one shape, printed as {op: µs}.
fn child(args: &[String]) -> Result<()> {
    let [log_n, kind, reps, rotation_keys] = args else { return Err("--child LOG_N SHAPE REPS KEYS".into()) };
    let log_n: u32 = log_n.parse()?;
    let shape = match kind.as_str() {
        "seal" => seal_shape(log_n)?,
        "small" => small_shape(log_n)?,
        other => return Err(format!("unknown shape {other}").into()),
    };
    // One thread: the numbers compare with SEAL's single-threaded figures.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let rotation_keys: usize = rotation_keys.parse()?;
    if !(1..=ROTATIONS as usize).contains(&rotation_keys) {
        return Err(format!("{rotation_keys} rotation keys (1 to {ROTATIONS})").into());
    }
    let results = bench_round(&shape.params, reps.parse()?, rotation_keys, &pool)?;
    let object: serde_json::Map<String, Value> = results.into_iter().map(|(op, t)| (op.to_owned(), json!(t))).collect();
    println!("{}", Value::Object(object));
    Ok(())
}

/// Runs SEAL's script for one ring and returns its JSON object.
fn run_peer(python: &str, script: &str, log_n: u32, reps: usize, rotation_keys: usize) -> Result<Value> {
    let output = Command::new(python)
        .arg(script)
        .args(["--log-n", &log_n.to_string(), "--reps", &reps.to_string()])
        .args(["--rotation-keys", &rotation_keys.to_string()])
        .output()
        .map_err(|error| format!("cannot run {python} {script}: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "{python} {script} --log-n {log_n} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    let value: Value = serde_json::from_slice(&output.stdout)?;
    if value["log_n"].as_u64() != Some(u64::from(log_n)) {
        return Err(format!("{script} answered for log_n {} instead of {log_n}", value["log_n"]).into());
    }
    Ok(value)
}

/// Median and (min, max) of one op over rounds.
fn summary(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    let middle = median(&mut sorted);
    Some((middle, sorted[0], sorted[sorted.len() - 1]))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

struct Options {
    json: bool,
    peer: Option<String>,
    script: String,
    rounds: usize,
    rings: Vec<u32>,
    shapes: Vec<ShapeKind>,
    /// Distinct Galois keys for the 8 rotations; `None`: as many as memory allows.
    rotation_keys: Option<usize>,
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        json: false,
        peer: None,
        script: concat!(env!("CARGO_MANIFEST_DIR"), "/peers/seal_ops.py").to_owned(),
        rounds: 3,
        rings: vec![13, 14, 15, 16],
        shapes: vec![ShapeKind::Seal, ShapeKind::Small],
        rotation_keys: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--json" => options.json = true,
            "--peer" => options.peer = Some(value()?),
            "--peer-script" => options.script = value()?,
            "--rounds" => {
                options.rounds = value()?.parse()?;
                if options.rounds == 0 {
                    return Err("--rounds must be at least 1".into());
                }
            }
            "--log-n" => {
                options.rings = value()?.split(',').map(str::parse).collect::<std::result::Result<_, _>>()?;
                if let Some(bad) = options.rings.iter().find(|n| !(13..=16).contains(*n)) {
                    return Err(format!("log_n {bad} is outside 13..=16").into());
                }
            }
            "--rotation-keys" => {
                options.rotation_keys = match value()?.as_str() {
                    "auto" => None,
                    count => match count.parse()? {
                        keys @ 1..=8 => Some(keys),
                        _ => return Err("--rotation-keys takes auto or 1 to 8".into()),
                    },
                }
            }
            "--shapes" => {
                options.shapes = value()?
                    .split(',')
                    .map(|name| match name {
                        "seal" => Ok(ShapeKind::Seal),
                        "small" => Ok(ShapeKind::Small),
                        other => Err(format!("unknown shape {other} (seal, small)")),
                    })
                    .collect::<std::result::Result<_, _>>()?;
            }
            "--help" | "-h" => {
                println!(
                    "opbench [--peer PYTHON] [--peer-script PATH] [--rounds R] [--log-n 13,14,15,16] [--shapes seal,small] [--rotation-keys auto|1..8] [--json]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (see --help)").into()),
        }
    }
    Ok(options)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1..]);
    }
    let options = parse_args()?;
    for &log_n in &options.rings {
        let reps = match log_n {
            13 => 31,
            14 => 15,
            15 => 7,
            _ => 3,
        };
        let shapes: Vec<Shape> = options
            .shapes
            .iter()
            .map(|&kind| match kind {
                ShapeKind::Seal => seal_shape(log_n),
                ShapeKind::Small => small_shape(log_n),
            })
            .collect::<Result<_>>()?;
        let rotation_keys = match options.rotation_keys {
            Some(keys) => keys,
            None => rotation_keys_that_fit(&shapes, options.peer.is_some())?,
        };
        let load_start = load_average();
        // ours[shape][round] = [(op, µs)]; seal[round] = SEAL's JSON. The shapes are built
        // here too, to print them and to fail early.
        let mut ours: Vec<Vec<Vec<(&'static str, f64)>>> = shapes.iter().map(|_| Vec::new()).collect();
        let mut seal: Vec<Value> = Vec::new();
        for round in 0..options.rounds {
            for (shape, rounds) in shapes.iter().zip(&mut ours) {
                rounds.push(run_child(log_n, shape.kind, reps, rotation_keys)?);
                // SEAL right after ours at its shape, A, B, A, B.
                if let (ShapeKind::Seal, Some(python)) = (shape.kind, &options.peer) {
                    seal.push(run_peer(python, &options.script, log_n, reps, rotation_keys)?);
                }
            }
            if !options.json {
                eprintln!("log_n {log_n}: round {}/{} done", round + 1, options.rounds);
            }
        }
        let load_end = load_average();
        let load = json!([load_start, load_end]);
        if !options.json {
            println!(
                "\nlog_n {log_n}: {} rounds × {reps} reps, 1 thread, {rotation_keys} rotation keys, load average {} → {}",
                options.rounds,
                load_start.map_or("?".into(), |l| format!("{l:.2}")),
                load_end.map_or("?".into(), |l| format!("{l:.2}"))
            );
            if let Some(first) = seal.first() {
                println!(
                    "  SEAL: {}, sec level {}{}",
                    first["library"].as_str().unwrap_or("?"),
                    first["sec_level"].as_str().unwrap_or("?"),
                    first["note"].as_str().map(|note| format!(" ({note})")).unwrap_or_default()
                );
            }
        }
        for (shape, rounds) in shapes.iter().zip(&ours) {
            let params = &shape.params;
            let with_peer = shape.kind == ShapeKind::Seal && !seal.is_empty();
            if !options.json {
                println!(
                    "  shape {} {}: {} limbs, {} special, α = {}, log2(Q·P) = {:.1}",
                    shape.kind.name(),
                    shape.description,
                    params.moduli().len(),
                    params.special_moduli().len(),
                    params.digit_primes(),
                    params.log_qp()
                );
                println!(
                    "    {:<18} {:>12} {:>21}{}",
                    "op",
                    "ours µs",
                    "(min–max)",
                    if with_peer { "       SEAL µs             (min–max)        ×" } else { "" }
                );
            }
            for (op, seal_op) in SEAL_NAMES {
                let times: Vec<f64> = rounds
                    .iter()
                    .filter_map(|round| round.iter().find(|(name, _)| *name == op).map(|(_, t)| *t))
                    .collect();
                let Some((ours_median, ours_min, ours_max)) = summary(&times) else { continue };
                let seal_times: Vec<f64> = if with_peer && !seal_op.is_empty() {
                    seal.iter().filter_map(|s| s["ops"][seal_op].as_f64()).collect()
                } else {
                    Vec::new()
                };
                let peer = summary(&seal_times);
                if options.json {
                    let mut line = json!({
                        "op": op,
                        "log_n": log_n,
                        "shape": shape.kind.name(),
                        "primes": shape.description,
                        "limbs": params.moduli().len(),
                        "special_primes": params.special_moduli().len(),
                        "digit_primes": params.digit_primes(),
                        "log_qp": round1(params.log_qp()),
                        "threads": 1,
                        "rounds": rounds.len(),
                        "reps": reps,
                        "median_us": round1(ours_median),
                        "spread_us": [round1(ours_min), round1(ours_max)],
                        "load_avg": load,
                    });
                    if op.starts_with("rotate") {
                        line["rotation_keys"] = json!(rotation_keys);
                    }
                    if let Some((seal_median, seal_min, seal_max)) = peer {
                        line["seal_op"] = json!(seal_op);
                        line["seal_us"] = json!(round1(seal_median));
                        line["seal_spread_us"] = json!([round1(seal_min), round1(seal_max)]);
                        line["speedup"] = json!((seal_median / ours_median * 100.0).round() / 100.0);
                        line["seal_sec_level"] = seal[0]["sec_level"].clone();
                    }
                    println!("{line}");
                } else {
                    let versus = peer
                        .map(|(m, lo, hi)| {
                            format!(" {m:>13.1} {:>21} {:>7.2}×", format!("({lo:.1}–{hi:.1})"), m / ours_median)
                        })
                        .unwrap_or_default();
                    println!(
                        "    {op:<18} {ours_median:>12.1} {:>21}{versus}",
                        format!("({ours_min:.1}–{ours_max:.1})")
                    );
                }
            }
        }
    }
    Ok(())
}
