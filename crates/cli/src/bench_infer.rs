//! `blindfold bench infer`: encrypted inference on a batch, timed, checked against the
//! plaintext model, and sized (bytes up and down per image, peak memory).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context as _, bail};
use blindfold_ckks::{Context, Decryptor, KeyGenerator, SecretKeyEncryptor, SeededCiphertext};
use blindfold_compiler::{
    CompileOptions, Control, LatencyEngine, LatencyPlan, Packing, ThroughputEngine, ThroughputPlan,
};
use blindfold_nn::Task;
use blindfold_nn::data::Split;
use blindfold_nn::metrics::argmax;
use blindfold_nn::registry;
use clap::Args;
use rayon::prelude::*;

use crate::terminal::{format_bytes, format_mean_bytes};

/// Options of `bench infer`.
#[derive(Debug, Args)]
pub struct InferBench {
    /// Model: a registered name (see `blindfold model list`) or a model directory
    /// (`model.onnx` + `manifest.json`).
    #[arg(long)]
    model: String,
    /// Packing to measure.
    #[arg(long, default_value = "throughput")]
    packing: Packing,
    /// Images: the batch size for throughput (default: the plan's full batch, one per slot);
    /// for latency, how many single images are checked against the plaintext model (default 100).
    #[arg(long)]
    images: Option<usize>,
    /// Timed runs. Latency: single-image runs, the median is reported [default: 9]. Throughput:
    /// whole batches [default: 2]; the first runs on memory the process never touched (every
    /// page faulted in and zeroed by the kernel), later ones on memory freed by the previous
    /// batch, as a worker does from its second job on: `batch_seconds` is the median of the
    /// later runs and `cold_batch_seconds` the first.
    #[arg(long)]
    runs: Option<usize>,
    /// Skip the first N test images: with --images, covers a test set larger than one batch
    /// (MNIST's 10,000 in two runs: --images 8192, then --offset 8192 --images 1808).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Dataset directory with `mnist/` and `dermamnist/` (default: ../shared/data, then
    /// ./shared/data); test-split images of the manifest's data set are reused cyclically to
    /// fill the batch.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Memory the plan may use (bytes, or with a K/M/G suffix) [default: the memory available
    /// on this machine]. A latency plan over it streams its diagonals (encodes them per image)
    /// until it fits; a plan that does not fit even so is refused, naming the layer.
    #[arg(long, value_parser = crate::memory::parse_bytes)]
    memory_budget: Option<u64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// What `bench infer` measured.
#[derive(Debug, serde::Serialize)]
struct InferReport {
    model: String,
    packing: &'static str,
    /// `classification` or `segmentation`: what `agreement` counts.
    task: &'static str,
    /// Levels the plan uses.
    depth: usize,
    images: usize,
    threads: usize,
    log_n: u32,
    log_qp: f64,
    security_bits: u32,
    batch_seconds: f64,
    images_per_second: f64,
    peak_rss_bytes: u64,
    /// The plan's own estimate of its peak memory (one batch, or one image).
    estimated_peak_bytes: usize,
    /// Evaluation keys (relinearization and, for latency, rotation keys), as serialized.
    #[serde(rename = "eval_key_bytes")]
    key_bytes: usize,
    upload_bytes_per_image: f64,
    result_bytes_per_image: f64,
    /// Classification: the fraction of images whose predicted class matches the plaintext
    /// model's. Segmentation: the fraction of pixels whose thresholded prediction matches.
    agreement: f64,
    /// Largest absolute difference of an output from the plaintext model's.
    max_logit_error: f64,
    /// Segmentation: the same as `agreement` (pixels on the same side of the threshold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pixel_agreement: Option<f64>,
    /// Segmentation with ground-truth masks (lesion-seg, ph2): Dice of the plaintext model's
    /// masks over the images evaluated, and of the decrypted ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    dice_plaintext: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dice_encrypted: Option<f64>,
    keygen_seconds: f64,
    encrypt_seconds: f64,
    /// Decryption and decoding: the whole batch (throughput) or one image (latency).
    decrypt_seconds: f64,
    /// Throughput: expanding the seeded uploads (part of batch_seconds, the worker's work).
    #[serde(skip_serializing_if = "Option::is_none")]
    expand_seconds: Option<f64>,
    /// Throughput: the first batch, on memory the process had not used before.
    #[serde(skip_serializing_if = "Option::is_none")]
    cold_batch_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_seconds: Option<f64>,
    /// Latency: the bytes of the plaintext diagonals the engine holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext_bytes: Option<usize>,
    /// Latency: linear stages whose diagonals are encoded per image to fit the memory budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    streamed_stages: Option<usize>,
    /// Latency: ciphertexts per image in and out.
    #[serde(skip_serializing_if = "Option::is_none")]
    ciphertexts_per_image: Option<[usize; 2]>,
    layers: Vec<LayerTime>,
}

#[derive(Debug, serde::Serialize)]
struct LayerTime {
    stage: String,
    seconds: f64,
}

/// Runs the benchmark and prints its report.
pub fn run(options: &InferBench, output: crate::terminal::Output) -> anyhow::Result<()> {
    let threads = options.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let budget = options.memory_budget.or_else(crate::memory::available);
    let compile = CompileOptions { memory_budget: budget, output_bound: None };
    let report = pool.install(|| match options.packing {
        Packing::Throughput => throughput(options, threads, &compile),
        Packing::Latency => latency(options, threads, &compile),
    })?;
    if output.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} ({}), {} images on {} threads at N = 2^{} ({:.0}-bit Q·P, {}-bit security): {:.2} s per batch, \
             {:.0} images/s; agreement {:.4}, max logit error {:.2e}; upload {} and result {} per image; \
             peak RSS {}",
            report.model,
            report.packing,
            report.images,
            report.threads,
            report.log_n,
            report.log_qp,
            report.security_bits,
            report.batch_seconds,
            report.images_per_second,
            report.agreement,
            report.max_logit_error,
            format_mean_bytes(report.upload_bytes_per_image),
            format_mean_bytes(report.result_bytes_per_image),
            format_bytes(report.peak_rss_bytes)
        );
        if let Some(cold) = report.cold_batch_seconds {
            println!(
                "  first (cold) batch {cold:.2} s; expanding the uploads {:.2} s of each batch",
                report.expand_seconds.unwrap_or(0.0)
            );
        }
        println!(
            "  depth {}, evaluation keys {}, estimated peak memory {}",
            report.depth,
            format_bytes(report.key_bytes as u64),
            format_bytes(report.estimated_peak_bytes as u64)
        );
        if let Some(latency) = report.latency_seconds {
            println!("  latency {latency:.3} s per image (median)");
        }
        for layer in &report.layers {
            println!("  {:<60} {:>8.3} s", layer.stage, layer.seconds);
        }
    }
    Ok(())
}

fn throughput(options: &InferBench, threads: usize, compile: &CompileOptions) -> anyhow::Result<InferReport> {
    let model = registry::load(&options.model)?;
    let compile = CompileOptions { output_bound: model.manifest.output_bound, ..*compile };
    let plan = ThroughputPlan::compile_with(&model.manifest.name, &model.network, &compile)?;
    let (estimated_peak_bytes, key_bytes, depth) = (plan.peak_memory_bytes(), plan.key_bytes(), plan.depth());
    let images = options.images.unwrap_or(plan.batch_capacity());
    if images == 0 || images > plan.batch_capacity() {
        bail!("--images must be between 1 and the batch capacity {}", plan.batch_capacity());
    }
    let inputs = test_inputs(&model, options.data.as_deref(), options.offset, images)?;

    let context = Context::new(plan.params().clone())?;
    let started = Instant::now();
    let keys = KeyGenerator::new(&context);
    let relin = keys.relin_key();
    let keygen_seconds = started.elapsed().as_secs_f64();

    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone())?;
    let started = Instant::now();
    let packed = plan.pack(&inputs)?;
    let (level, scale) = (plan.input_level(), plan.input_scale());
    let seeded = packed
        .par_iter()
        .map(|slots| Ok(encryptor.encrypt_seeded(&context.encode(slots, level, scale)?)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let upload_bytes = seeded.len() * SeededCiphertext::serialized_len(&context, level);
    // The worker expands the seeds; that is part of its work, so it is timed with the batch.
    let encrypt_seconds = started.elapsed().as_secs_f64();

    let engine = ThroughputEngine::new(plan, &context)?;
    let clock = StageClock::default();
    let control = clock.control();
    let runs = options.runs.unwrap_or(2).max(1);
    let (mut times, mut expand_seconds, mut outputs, mut finished) = (Vec::new(), 0.0, Vec::new(), Instant::now());
    let mut seeded = Some(seeded);
    for run in 0..runs {
        clock.reset();
        drop(std::mem::take(&mut outputs));
        let started = Instant::now();
        let uploads = seeded.as_ref().context("the uploads were dropped")?;
        let ciphertexts = uploads.par_iter().map(|s| s.expand(&context)).collect();
        if run + 1 == runs {
            // As the worker does: the uploads are gone once expanded.
            seeded = None;
        }
        expand_seconds = started.elapsed().as_secs_f64();
        outputs = engine.evaluate(ciphertexts, &relin, &control)?;
        finished = Instant::now();
        times.push(finished.duration_since(started).as_secs_f64());
        tracing::info!(run, seconds = times[run], "batch");
    }
    let cold_batch_seconds = times[0];
    let mut warm = times[1.min(times.len() - 1)..].to_vec();
    warm.sort_by(f64::total_cmp);
    let batch_seconds = warm[warm.len() / 2];
    let result_bytes: usize = outputs.iter().map(|ct| ct.to_bytes(&context).len()).sum();
    drop(control);

    let started = Instant::now();
    let decryptor = Decryptor::new(&context, keys.secret_key().clone())?;
    let decrypted = outputs.par_iter().map(|ct| decryptor.decrypt_values(ct)).collect::<Result<Vec<_>, _>>()?;
    let logits = engine.plan().unpack(&decrypted, images)?;
    let decrypt_seconds = started.elapsed().as_secs_f64();

    let reference = model.network.forward_batch(&inputs)?;
    let (agreement, max_logit_error) = compare(&model.manifest.task, &logits, &reference);
    let quality = segmentation_quality(&model, options, images, &logits, &reference, agreement)?;
    let params = engine.plan().params();
    let layers = clock.stage_times(finished);
    Ok(InferReport {
        model: model.manifest.name.clone(),
        packing: Packing::Throughput.name(),
        task: task_name(&model.manifest.task),
        depth,
        estimated_peak_bytes,
        key_bytes,
        images,
        threads,
        log_n: params.log_n(),
        log_qp: params.log_qp(),
        security_bits: params.security_bits(),
        batch_seconds,
        images_per_second: images as f64 / batch_seconds,
        peak_rss_bytes: peak_rss_bytes(),
        upload_bytes_per_image: upload_bytes as f64 / images as f64,
        result_bytes_per_image: result_bytes as f64 / images as f64,
        agreement,
        max_logit_error,
        pixel_agreement: quality.pixel_agreement,
        dice_plaintext: quality.dice_plaintext,
        dice_encrypted: quality.dice_encrypted,
        keygen_seconds,
        encrypt_seconds,
        decrypt_seconds,
        expand_seconds: Some(expand_seconds),
        cold_batch_seconds: Some(cold_batch_seconds),
        latency_seconds: None,
        plaintext_bytes: None,
        streamed_stages: None,
        ciphertexts_per_image: None,
        layers,
    })
}

fn latency(options: &InferBench, threads: usize, compile: &CompileOptions) -> anyhow::Result<InferReport> {
    let model = registry::load(&options.model)?;
    let compile = CompileOptions { output_bound: model.manifest.output_bound, ..*compile };
    let plan = LatencyPlan::compile_with(&model.manifest.name, &model.network, &compile)?;
    let (estimated_peak_bytes, depth, plaintext_bytes, streamed_stages) =
        (plan.peak_memory_bytes(), plan.depth(), plan.plaintext_bytes(), plan.streamed_stages());
    let ciphertexts_per_image = [plan.input_ciphertexts(), plan.output_ciphertexts()];
    let images = options.images.unwrap_or(100).max(1);
    let inputs = test_inputs(&model, options.data.as_deref(), options.offset, images)?;
    let context = Context::new(plan.params().clone())?;
    let started = Instant::now();
    let keys = KeyGenerator::new(&context);
    let relin = keys.relin_key();
    let galois = keys.galois_keys_at(&plan.rotation_keys());
    let keygen_seconds = started.elapsed().as_secs_f64();
    let key_bytes = relin.to_bytes(&context).len() + galois.to_bytes(&context).len();
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone())?;
    let decryptor = Decryptor::new(&context, keys.secret_key().clone())?;
    let (level, scale) = (plan.input_level(), plan.input_scale());
    let engine = LatencyEngine::new(plan, &context)?;
    let encrypt = |input: &[f64]| -> anyhow::Result<Vec<SeededCiphertext>> {
        engine
            .plan()
            .pack(input)?
            .iter()
            .map(|slots| Ok(encryptor.encrypt_seeded(&context.encode(slots, level, scale)?)?))
            .collect()
    };
    let expand = |seeded: &[SeededCiphertext]| seeded.iter().map(|s| s.expand(&context)).collect::<Vec<_>>();
    let started = Instant::now();
    let first = encrypt(&inputs[0])?;
    let encrypt_seconds = started.elapsed().as_secs_f64();
    let upload_bytes: usize = first.iter().map(|s| s.to_bytes(&context).len()).sum();

    let clock = StageClock::default();
    let control = clock.control();
    let runs = options.runs.unwrap_or(9).max(1);
    let mut times = Vec::with_capacity(runs);
    let mut result_bytes = 0;
    let mut finished = Instant::now();
    for _ in 0..runs {
        clock.reset();
        let ciphertexts = expand(&first);
        let started = Instant::now();
        let output = engine.evaluate(ciphertexts, &relin, &galois, &control)?;
        finished = Instant::now();
        times.push(finished.duration_since(started).as_secs_f64());
        result_bytes = output.iter().map(|ct| ct.to_bytes(&context).len()).sum();
    }
    drop(control);
    times.sort_by(f64::total_cmp);
    let latency_seconds = times[times.len() / 2];

    let started = Instant::now();
    let mut logits = Vec::with_capacity(inputs.len());
    let mut decrypt_seconds = 0.0;
    for input in &inputs {
        let output = engine.evaluate(expand(&encrypt(input)?), &relin, &galois, &Control::none())?;
        let decrypting = Instant::now();
        let slots = output.iter().map(|ct| decryptor.decrypt_values(ct)).collect::<Result<Vec<_>, _>>()?;
        logits.push(engine.plan().unpack(&slots)?);
        decrypt_seconds = decrypting.elapsed().as_secs_f64();
    }
    let batch_seconds = started.elapsed().as_secs_f64();
    let reference = model.network.forward_batch(&inputs)?;
    let (agreement, max_logit_error) = compare(&model.manifest.task, &logits, &reference);
    let quality = segmentation_quality(&model, options, images, &logits, &reference, agreement)?;
    let params = engine.plan().params();
    let layers = clock.stage_times(finished);
    Ok(InferReport {
        model: model.manifest.name.clone(),
        packing: Packing::Latency.name(),
        task: task_name(&model.manifest.task),
        depth,
        estimated_peak_bytes,
        key_bytes,
        images,
        threads,
        log_n: params.log_n(),
        log_qp: params.log_qp(),
        security_bits: params.security_bits(),
        batch_seconds,
        images_per_second: images as f64 / batch_seconds,
        peak_rss_bytes: peak_rss_bytes(),
        upload_bytes_per_image: upload_bytes as f64,
        result_bytes_per_image: result_bytes as f64,
        agreement,
        max_logit_error,
        pixel_agreement: quality.pixel_agreement,
        dice_plaintext: quality.dice_plaintext,
        dice_encrypted: quality.dice_encrypted,
        keygen_seconds,
        encrypt_seconds,
        decrypt_seconds,
        expand_seconds: None,
        cold_batch_seconds: None,
        latency_seconds: Some(latency_seconds),
        plaintext_bytes: Some(plaintext_bytes),
        streamed_stages: Some(streamed_stages),
        ciphertexts_per_image: Some(ciphertexts_per_image),
        layers,
    })
}

/// When each stage started, recorded from the engine's progress reports.
#[derive(Debug, Default)]
struct StageClock {
    marks: Mutex<Vec<(String, Instant)>>,
}

impl StageClock {
    /// A `Control` that records the start of every stage here.
    fn control(&self) -> Control<'_> {
        Control::with_progress(|progress| {
            // A stage reports several times as it goes; only its start is a mark.
            if let Ok(mut marks) = self.marks.lock()
                && marks.last().is_none_or(|(name, _)| name != progress.name)
            {
                marks.push((progress.name.to_owned(), Instant::now()));
            }
        })
    }

    /// Forgets the marks (before another timed run).
    fn reset(&self) {
        if let Ok(mut marks) = self.marks.lock() {
            marks.clear();
        }
    }

    /// Seconds per stage (each stage ends where the next begins, the last at `finished`).
    fn stage_times(self, finished: Instant) -> Vec<LayerTime> {
        let marks = self.marks.into_inner().unwrap_or_default();
        marks
            .iter()
            .enumerate()
            .filter(|(_, (name, _))| name != "done")
            .map(|(i, (name, at))| {
                let end = marks.get(i + 1).map_or(finished, |(_, next)| *next);
                LayerTime { stage: name.clone(), seconds: end.duration_since(*at).as_secs_f64() }
            })
            .collect()
    }
}

/// What a segmentation model's run says about mask quality (all `None` for classification).
#[derive(Debug, Default)]
struct Quality {
    pixel_agreement: Option<f64>,
    dice_plaintext: Option<f64>,
    dice_encrypted: Option<f64>,
}

/// Dice of the plaintext and decrypted masks against the ground truth of the images evaluated
/// (the same cyclic selection as [`test_inputs`]), when the model segments and its data set has
/// masks.
fn segmentation_quality(
    model: &registry::Model,
    options: &InferBench,
    count: usize,
    encrypted: &[Vec<f64>],
    reference: &[Vec<f64>],
    agreement: f64,
) -> anyhow::Result<Quality> {
    let Task::Segmentation { threshold } = model.manifest.task else {
        return Ok(Quality::default());
    };
    let mut quality = Quality { pixel_agreement: Some(agreement), ..Quality::default() };
    let Some(dataset) = model.manifest.dataset().filter(|d| matches!(*d, "lesion-seg" | "ph2")) else {
        return Ok(quality);
    };
    let truth = blindfold_nn::data::segmentation(&data_dir(options.data.as_deref())?, dataset, Split::Test)?;
    let plane = truth.images.height * truth.images.width;
    let available = truth.images.len();
    let masks: Vec<u8> = (0..count.min(encrypted.len()))
        .flat_map(|i| truth.mask((options.offset + i) % available.max(1)).unwrap_or(&[]).iter().copied())
        .collect();
    if masks.len() != encrypted.len() * plane {
        return Ok(quality);
    }
    quality.dice_plaintext = Some(blindfold_nn::metrics::segmentation(reference, &masks, threshold).dice);
    quality.dice_encrypted = Some(blindfold_nn::metrics::segmentation(encrypted, &masks, threshold).dice);
    Ok(quality)
}

/// `count` preprocessed test images of the model's dataset from `offset` on, reused cyclically.
fn test_inputs(
    model: &registry::Model,
    data: Option<&Path>,
    offset: usize,
    count: usize,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let dir = data_dir(data)?;
    let images = crate::model::load_test_split(&model.manifest, &dir)?;
    let inputs = model.manifest.inputs(&images)?;
    if inputs.is_empty() {
        bail!("no test images in {}", dir.display());
    }
    if offset >= inputs.len() {
        bail!("--offset {offset} is past the {} test images", inputs.len());
    }
    Ok(inputs.iter().cycle().skip(offset).take(count).cloned().collect())
}

fn data_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    ["../shared/data", "shared/data", "../../shared/data"]
        .iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("mnist").is_dir())
        .context("no dataset directory found (looked for ../shared/data and ./shared/data); pass --data DIR")
}

fn task_name(task: &Task) -> &'static str {
    match task {
        Task::Classification => "classification",
        Task::Segmentation { .. } => "segmentation",
    }
}

/// (agreement, largest absolute output difference). Classification: the fraction of images
/// whose argmax agrees; segmentation: the fraction of pixels on the same side of the
/// threshold (a logit at or above logit(threshold)).
fn compare(task: &Task, encrypted: &[Vec<f64>], reference: &[Vec<f64>]) -> (f64, f64) {
    let agreement = match task {
        Task::Classification => {
            let agree = encrypted.iter().zip(reference).filter(|(e, r)| argmax(e) == argmax(r)).count();
            agree as f64 / encrypted.len().max(1) as f64
        }
        Task::Segmentation { threshold } => {
            let cut = (threshold / (1.0 - threshold)).ln();
            let pixels = encrypted.iter().map(Vec::len).sum::<usize>().max(1);
            let agree = encrypted
                .iter()
                .zip(reference)
                .flat_map(|(e, r)| e.iter().zip(r))
                .filter(|(a, b)| (**a >= cut) == (**b >= cut))
                .count();
            agree as f64 / pixels as f64
        }
    };
    let max_error = encrypted
        .iter()
        .zip(reference)
        .flat_map(|(e, r)| e.iter().zip(r).map(|(a, b)| (a - b).abs()))
        .fold(0.0, f64::max);
    (agreement, max_error)
}

/// The process's peak resident set (VmHWM), 0 where /proc is not available.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let kb = line.strip_prefix("VmHWM:")?.trim().trim_end_matches("kB").trim();
                kb.parse::<u64>().ok()
            })
        })
        .map_or(0, |kb| kb * 1024)
}
