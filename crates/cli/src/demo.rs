//! `blindfold demo`: the whole product on this machine with nothing to configure. Brings up the
//! stack in-process (a throwaway PostgreSQL, the embedded S3 endpoint, the API, a worker), then
//! plays a hospital end to end for each model and packing: keygen, key registration, encrypt,
//! upload, queue, worker, download, decrypt; and checks the predictions against the labels and
//! against the plaintext model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use blindfold_client::{
    IntakeOptions, KeySet, PackingChoice, Predictions, ReportContext, ReportLink, Timing, read_inputs,
};
use blindfold_nn::data::{self, Split};
use secrecy::SecretString;

use crate::service::client::{ApiClient, OnBytes};
use crate::service::flows;

/// One of [`DATA_MODELS`]: the files of `models/NAME`, embedded.
macro_rules! data_model {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/", $name, "/model.onnx")),
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/", $name, "/manifest.json")),
        )
    };
}
use crate::stack::{LocalStack, StackOptions, Workers};
use crate::terminal::{Table, format_bytes, format_mean_bytes};

/// The images embedded from `samples/` at build time: (data set, file name, bytes).
const SAMPLES: &[(&str, &str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/samples.rs"));

/// The agreement with the plaintext model below which the demo fails.
const MIN_AGREEMENT: f64 = 0.999;

/// Models the binary does not build in: the demo registers each with the service as data, as an
/// operator would (`blindfold admin model add models/NAME`), and makes the hospital's keys from
/// its directory. (name, `model.onnx`, `manifest.json`).
const DATA_MODELS: [(&str, &[u8], &[u8]); 3] =
    [data_model!("lesion-unet"), data_model!("derma64"), data_model!("derma64-relu-he")];

/// The data models the demo runs unless `--model` names others (derma64-relu-he, 5 s and
/// 12 GB per image, only when asked).
const DEFAULT_DATA_MODELS: [&str; 2] = ["lesion-unet", "derma64"];

/// Options of `blindfold demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Models to run, comma-separated (default: every built-in model, then lesion-unet and
    /// derma64, which the demo registers with the service as data and runs in the latency
    /// packing; derma64-relu-he, also data, runs when named).
    #[arg(long = "model", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Packings to run, comma-separated (default: throughput,latency).
    #[arg(long = "packing", value_delimiter = ',', value_parser = ["throughput", "latency"])]
    pub packings: Vec<String>,
    /// Images per run (default: the 32 embedded samples; the 8 sample lesions for
    /// lesion-unet).
    #[arg(long)]
    pub images: Option<usize>,
    /// Read the full test sets from this directory (`../shared/data`: `mnist/`,
    /// `dermamnist/`, `lesion-seg/`) instead of the embedded samples; use with --images.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run the LeNet-5 models in the throughput packing even when this machine's available
    /// memory is below what one 8,192-image batch needs (about 5 GB for mnist-lenet5 and 15 GB
    /// for derma-lenet5, estimated from the plan); by default such runs are skipped with a note.
    #[arg(long)]
    pub all: bool,
    /// Threads of the worker (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Use this PostgreSQL database instead of a throwaway cluster (it is migrated).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Also write a report per model and packing, to open in a browser: DIR/index.html links
    /// DIR/MODEL-PACKING/index.html, each with the sample images, their predictions and
    /// probabilities, and for lesion-unet the mask outlines and Dice against the sample masks
    /// (see `blindfold decrypt --report`).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

/// One model and packing, end to end.
#[derive(Debug, Clone, serde::Serialize)]
struct RunReport {
    model: String,
    packing: String,
    images: usize,
    /// `classification` or `segmentation`.
    task: &'static str,
    /// Classification: the fraction of images whose prediction matches the label.
    /// Segmentation: the mean Dice of the encrypted masks against the ground-truth masks.
    accuracy: f64,
    /// Classification: the fraction of images whose encrypted prediction matches the
    /// plaintext model's. Segmentation: the fraction of mask pixels that do.
    agreement: f64,
    keygen_seconds: f64,
    register_seconds: f64,
    encrypt_seconds: f64,
    upload_seconds: f64,
    queued_seconds: f64,
    compute_seconds: f64,
    download_seconds: f64,
    decrypt_seconds: f64,
    total_seconds: f64,
    /// Encrypted input uploaded per image.
    bytes_up_per_image: f64,
    /// Encrypted result downloaded per image.
    bytes_down_per_image: f64,
    /// Evaluation keys registered once per key set.
    evaluation_key_bytes: u64,
    /// Security level of the CKKS parameters (HomomorphicEncryption.org bound).
    security_bits: u32,
    /// CKKS ring degree.
    ring_degree: usize,
}

/// Runs the demo; with `--json` (`output`), one JSON object per model and packing instead of
/// the table.
pub fn run(args: DemoArgs, output: crate::terminal::Output, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let reports = runtime.block_on(demo(&args))?;
    if output.json {
        for report in &reports {
            println!("{}", serde_json::to_string(report)?);
        }
    } else {
        print_table(&reports);
    }
    let failing: Vec<_> = reports.iter().filter(|r| r.agreement < MIN_AGREEMENT).collect();
    if !failing.is_empty() {
        for report in failing {
            eprintln!(
                "FAIL {} / {}: agreement with the plaintext model {:.2}% < {:.1}%",
                report.model,
                report.packing,
                100.0 * report.agreement,
                100.0 * MIN_AGREEMENT
            );
        }
        bail!("the encrypted predictions disagree with the plaintext model");
    }
    Ok(())
}

async fn demo(args: &DemoArgs) -> anyhow::Result<Vec<RunReport>> {
    let work = tempfile::Builder::new().prefix("blindfold-demo-").tempdir().context("creating a work directory")?;
    let samples = write_samples(work.path())?;
    let models = work.path().join("models");
    for (name, onnx, manifest) in DATA_MODELS {
        let dir = models.join(name);
        std::fs::create_dir_all(&dir).context("creating the model directory")?;
        std::fs::write(dir.join("model.onnx"), onnx).with_context(|| format!("writing {name}/model.onnx"))?;
        std::fs::write(dir.join("manifest.json"), manifest).with_context(|| format!("writing {name}/manifest.json"))?;
    }
    let plan = plan_runs(args, &models)?;
    let started = Instant::now();
    eprintln!("starting the stack: PostgreSQL, S3 endpoint, API, worker …");
    let stack = LocalStack::start(StackOptions {
        database_url: args.database_url.clone(),
        workers: Workers::InProcess(1),
        worker_threads: args.threads,
        tenant: "demo-hospital".to_owned(),
        ..Default::default()
    })
    .await
    .context("starting the local stack")?;
    eprintln!("stack up in {:.1} s at {}", started.elapsed().as_secs_f64(), stack.endpoints.api_url);
    let client =
        ApiClient::new(&stack.endpoints.api_url, Some(SecretString::from(stack.endpoints.token.clone())), false)?;
    let mut reports = Vec::new();
    let mut outcome = Ok(());
    let operator =
        ApiClient::new(&stack.endpoints.api_url, Some(SecretString::from(stack.endpoints.admin_token.clone())), false)?;
    for (name, _, _) in DATA_MODELS {
        if !plan.iter().any(|(model, _, _)| model == name) {
            continue;
        }
        let clock = Instant::now();
        if let Err(error) = flows::register_model(&operator, &models.join(name), &|_| {}).await {
            stack.stop().await?;
            return Err(error.context(format!("registering {name} with the service")));
        }
        eprintln!("── {name} registered with the service as data in {:.1} s", clock.elapsed().as_secs_f64());
    }
    for (model, packing, images) in &plan {
        eprintln!("── {model} / {packing}: {images} images");
        let source = source_of(model, &models);
        let run = Run { model_name: model, source: &source, packing, count: *images };
        match one_run(&client, work.path(), &samples, args.data.as_deref(), &run, args.report.as_deref()).await {
            Ok(report) => reports.push(report),
            Err(error) => {
                outcome = Err(error.context(format!("{model} / {packing}")));
                break;
            }
        }
    }
    stack.stop().await?;
    outcome?;
    if let Some(dir) = &args.report {
        let links: Vec<ReportLink> = reports
            .iter()
            .map(|r| ReportLink {
                title: format!("{} / {} packing", r.model, r.packing),
                href: format!("{}/index.html", report_folder(&r.model, &r.packing)),
                note: format!(
                    "{} images; {} {:.1} %; agreement with the plaintext model {:.2} %",
                    r.images,
                    if r.task == "segmentation" { "mean Dice" } else { "accuracy" },
                    r.accuracy * 100.0,
                    r.agreement * 100.0
                ),
            })
            .collect();
        let index = blindfold_client::write_report_index(dir, "Blindfold demo", &links)
            .with_context(|| format!("writing the report index in {}", dir.display()))?;
        eprintln!("report: {}", index.display());
    }
    eprintln!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(reports)
}

/// What keygen and the registry load `model` from: a built-in name, or a data model's
/// directory under `models`.
fn source_of(model: &str, models: &Path) -> String {
    if is_data_model(model) { models.join(model).to_string_lossy().into_owned() } else { model.to_owned() }
}

fn is_data_model(model: &str) -> bool {
    DATA_MODELS.iter().any(|(name, _, _)| *name == model)
}

/// (model, packing, images) to run, in order. `models` holds the [`DATA_MODELS`] directories.
fn plan_runs(args: &DemoArgs, models_dir: &Path) -> anyhow::Result<Vec<(String, String, usize)>> {
    let mut known = blindfold_nn::registry::names();
    known.extend(DATA_MODELS.iter().map(|(name, _, _)| *name));
    let models: Vec<String> = if args.models.is_empty() {
        blindfold_nn::registry::names().into_iter().chain(DEFAULT_DATA_MODELS).map(str::to_owned).collect()
    } else {
        for model in &args.models {
            if !known.contains(&model.as_str()) {
                bail!("unknown model {model:?}; the demo runs these models: {known:?}");
            }
        }
        args.models.clone()
    };
    let packings = if args.packings.is_empty() {
        vec!["throughput".to_owned(), "latency".to_owned()]
    } else {
        args.packings.clone()
    };
    let mut plan = Vec::new();
    let available = crate::memory::available();
    let sample_lesions = SAMPLES.iter().filter(|(set, name, _)| *set == "lesions" && name.ends_with(".png")).count();
    for model in &models {
        let heavy = !model.contains("cryptonets");
        let data_model = is_data_model(model);
        let source = source_of(model, models_dir);
        let segmentation =
            matches!(blindfold_nn::registry::load(&source)?.manifest.task, blindfold_nn::Task::Segmentation { .. });
        for packing in &packings {
            let explicit = !args.models.is_empty() && !args.packings.is_empty();
            // The 64 × 64 models' throughput batches (8,192 or 16,384 images, every activation
            // value a ciphertext: 75 GB for derma64) are beyond any machine the demo runs on:
            // only an explicit choice runs them.
            if heavy && packing == "throughput" && (!args.all || data_model) && !explicit {
                let needed = throughput_memory(&source)?;
                if available.is_none_or(|available| available < needed) {
                    let anyway = if data_model { "" } else { "--all (or " };
                    eprintln!(
                        "skipping {model} / throughput: one batch needs about {} and this machine has {} \
                         available; {anyway}--model {model} --packing throughput{} runs it anyway",
                        format_bytes(needed),
                        available.map_or("an unknown amount".to_owned(), format_bytes),
                        if anyway.is_empty() { "" } else { ")" }
                    );
                    continue;
                }
            }
            let samples = if segmentation { sample_lesions } else { 32 };
            plan.push((model.clone(), packing.clone(), args.images.unwrap_or(samples).max(1)));
        }
    }
    if plan.is_empty() {
        bail!("nothing to run: pick models and packings (or --all)");
    }
    Ok(plan)
}

/// Peak memory of the demo while it runs one throughput batch of `model` (a registered name or
/// a model directory), estimated from its
/// plan: the expanded input ciphertexts (2 parts at the input level), plus the hospital's
/// encrypted upload, the first layer's outputs and the working set — three times the inputs
/// (measured: 4.1–5.1 GB for mnist-lenet5 and 9.0–11.7 GB for derma-lenet5 in `bench infer`,
/// 9.8 GB for the whole demo process with derma-lenet5).
fn throughput_memory(model: &str) -> anyhow::Result<u64> {
    let network = blindfold_nn::registry::load(model)?.network;
    let plan = blindfold_compiler::ThroughputPlan::compile(model, &network)?;
    let input_bytes = plan.input_count() * 2 * (plan.input_level() + 1) * plan.params().n() * 8;
    Ok(input_bytes as u64 * 3)
}

/// Writes the embedded samples into `dir/samples/{mnist,dermamnist,dermamnist64,lesions}`.
fn write_samples(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("samples");
    for (set, name, bytes) in SAMPLES {
        let folder = root.join(set);
        std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
        std::fs::write(folder.join(name), bytes).with_context(|| format!("writing {name}"))?;
    }
    Ok(root)
}

/// What the demo scores the encrypted predictions against.
enum Truth {
    /// A class per image.
    Labels(Vec<usize>),
    /// Ground-truth mask PNGs named after the images (`Predictions::score_masks`).
    MaskFiles(PathBuf),
    /// An H×W mask per image, 1 = lesion.
    Masks(Vec<Vec<u8>>),
}

/// The images for `model` and what they truly show: `count` embedded samples (cycled), or the
/// first `count` test images of the full set in `data`.
fn inputs_for(
    model: &blindfold_evaluate::CompiledModel,
    samples: &Path,
    data: Option<&Path>,
    count: usize,
) -> anyhow::Result<(blindfold_client::Intake, Truth)> {
    let manifest = model.manifest();
    let segmentation = matches!(manifest.task, blindfold_nn::Task::Segmentation { .. });
    if let Some(dir) = data {
        if segmentation {
            let set = data::segmentation(dir, manifest.dataset.as_deref().unwrap_or("lesion-seg"), Split::Test)?;
            let count = count.min(set.images.len());
            let images = set.images.take(count);
            let inputs = manifest.inputs(&images)?;
            let pixels = images.height * images.width;
            let masks = set.masks.chunks(pixels).take(count).map(<[u8]>::to_vec).collect();
            let names = (0..inputs.len()).map(|i| format!("test#{i}")).collect();
            return Ok((blindfold_client::Intake { names, inputs }, Truth::Masks(masks)));
        }
        let images = crate::model::load_test_split(manifest, dir)?;
        let count = count.min(images.len());
        let images = images.take(count);
        let inputs = manifest.inputs(&images)?;
        let names = (0..inputs.len()).map(|i| format!("test#{i}")).collect();
        let labels = images.labels.iter().map(|&l| usize::from(l)).collect();
        return Ok((blindfold_client::Intake { names, inputs }, Truth::Labels(labels)));
    }
    // The sample folder of the manifest's data set (samples/README.md).
    let folder = samples.join(match manifest.dataset.as_deref() {
        _ if segmentation => "lesions",
        Some("dermamnist_64") => "dermamnist64",
        Some(set) if set.starts_with("dermamnist") => "dermamnist",
        _ => "mnist",
    });
    let labels_csv = std::fs::read_to_string(folder.join("labels.csv")).context("reading the sample labels")?;
    let mut labels = HashMap::new();
    let mut files = Vec::new();
    for line in labels_csv.lines().skip(1) {
        let mut fields = line.split(',');
        let (Some(file), Some(label)) = (fields.next(), fields.next()) else { continue };
        if !segmentation {
            labels.insert(file.to_owned(), label.trim().parse::<usize>().context("a sample label")?);
        }
        files.push(folder.join(file));
    }
    let paths: Vec<PathBuf> = files.iter().cycle().take(count).cloned().collect();
    let intake = read_inputs(manifest, &paths, IntakeOptions::default())?;
    if segmentation {
        return Ok((intake, Truth::MaskFiles(folder.join("masks"))));
    }
    let labels = paths
        .iter()
        .map(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| labels.get(n).copied()).unwrap_or(usize::MAX))
        .collect();
    Ok((intake, Truth::Labels(labels)))
}

/// (accuracy, agreement) of one run's predictions (see [`RunReport`]), against the truth and
/// against the plaintext model's outputs `reference`.
fn score(
    model: &blindfold_evaluate::CompiledModel,
    predictions: &mut Predictions,
    truth: &Truth,
    reference: &[Vec<f64>],
) -> anyhow::Result<(f64, f64)> {
    let images = predictions.images.len();
    if images != reference.len() {
        bail!("{images} predictions for {} images", reference.len());
    }
    let blindfold_nn::Task::Segmentation { threshold } = model.manifest().task else {
        let Truth::Labels(labels) = truth else { bail!("a classification run scored against masks") };
        let plain = reference.iter().map(|logits| blindfold_nn::metrics::argmax(logits));
        let agree = predictions.images.iter().zip(plain).filter(|(p, plain)| p.class_index == *plain).count();
        let correct = predictions.images.iter().zip(labels).filter(|(p, label)| p.class_index == **label).count();
        return Ok((correct as f64 / images as f64, agree as f64 / images as f64));
    };
    let cut = blindfold_nn::metrics::logit_threshold(threshold);
    let (mut equal, mut pixels) = (0usize, 0usize);
    for (prediction, logits) in predictions.images.iter().zip(reference) {
        pixels += logits.len();
        // An image whose outputs overflowed has no mask: every pixel counts as disagreeing.
        if let Some(mask) = &prediction.mask {
            equal += mask.pixels.iter().zip(logits).filter(|(p, l)| (**p == 1) == (**l >= cut)).count();
        }
    }
    let dice = match truth {
        Truth::MaskFiles(dir) => predictions.score_masks(dir)?.unwrap_or(0.0),
        Truth::Masks(masks) => {
            let scores: Vec<f64> = predictions
                .images
                .iter()
                .zip(masks)
                .map(|(p, truth)| match &p.mask {
                    Some(mask) => {
                        let predicted: Vec<bool> = mask.pixels.iter().map(|&v| v == 1).collect();
                        blindfold_nn::metrics::dice(&predicted, truth)
                    }
                    None => 0.0,
                })
                .collect();
            scores.iter().sum::<f64>() / scores.len().max(1) as f64
        }
        Truth::Labels(_) => bail!("a segmentation run scored against labels"),
    };
    Ok((dice, equal as f64 / pixels.max(1) as f64))
}

/// One model and packing of the demo.
struct Run<'a> {
    model_name: &'a str,
    /// The model's registered name or its directory.
    source: &'a str,
    packing: &'a str,
    /// Images.
    count: usize,
}

/// The folder of a run's report under `demo --report DIR`.
fn report_folder(model: &str, packing: &str) -> String {
    format!("{model}-{packing}")
}

/// One model and packing end to end, with its report in `report/MODEL-PACKING` when asked.
async fn one_run(
    client: &ApiClient,
    work: &Path,
    samples: &Path,
    data: Option<&Path>,
    run: &Run<'_>,
    report: Option<&Path>,
) -> anyhow::Result<RunReport> {
    let Run { model_name, source, packing, count } = *run;
    let started = Instant::now();
    let quiet: OnBytes = Arc::new(|_| {});
    let dir = work.join(format!("keys-{model_name}-{packing}"));
    let choice = if packing == "latency" { PackingChoice::Latency } else { PackingChoice::Throughput };

    let clock = Instant::now();
    let name = source.to_owned();
    let keys_dir = dir.clone();
    let keys = tokio::task::spawn_blocking(move || KeySet::generate(&keys_dir, &name, choice)).await??;
    let keygen_seconds = clock.elapsed().as_secs_f64();
    let model = keys.compiled_model()?;
    let params = model.plan().params().clone();
    step("keygen", keygen_seconds);

    let clock = Instant::now();
    let registered = flows::register_keys(client, &keys, quiet.clone()).await?;
    let register_seconds = clock.elapsed().as_secs_f64();
    step(&format!("register {} of evaluation keys", format_bytes(registered.bytes)), register_seconds);

    let (intake, truth) = inputs_for(&model, samples, data, count)?;
    let clock = Instant::now();
    let out = dir.join("jobs-out");
    std::fs::create_dir_all(&out)?;
    let (batches, model, intake) = tokio::task::spawn_blocking({
        let keys = keys.clone();
        let path = out.join("demo.bfib");
        move || -> anyhow::Result<_> {
            let batches = blindfold_client::encrypt(&keys, &model, &intake, &path, &|_, _| {})?;
            Ok((batches, model, intake))
        }
    })
    .await??;
    let encrypt_seconds = clock.elapsed().as_secs_f64();
    step("encrypt", encrypt_seconds);

    let clock = Instant::now();
    let mut jobs = Vec::new();
    for batch in &batches {
        jobs.push(flows::submit_batch(client, &keys, batch, None, quiet.clone()).await?.id);
    }
    let upload_seconds = clock.elapsed().as_secs_f64();
    let bytes_up: u64 = batches.iter().map(|b| b.bytes).sum();
    step(&format!("upload {} and submit {} job(s)", format_bytes(bytes_up), jobs.len()), upload_seconds);

    let (mut queued_seconds, mut compute_seconds) = (0.0, 0.0);
    for id in &jobs {
        let done = flows::wait_job(client, *id, Duration::from_millis(50), &mut |_| {}).await?;
        queued_seconds += done.durations.queued_seconds.unwrap_or(0.0);
        compute_seconds += done.durations.running_seconds.unwrap_or(0.0);
    }
    step("queued", queued_seconds);
    step("compute (worker: keys, download, evaluate, upload)", compute_seconds);

    let clock = Instant::now();
    let mut raws = Vec::new();
    let mut bytes_down = 0;
    for id in &jobs {
        let raw = out.join(format!("{id}.bfrb"));
        bytes_down += flows::download_result(client, *id, &raw, quiet.clone()).await?;
        raws.push((*id, raw));
    }
    let download_seconds = clock.elapsed().as_secs_f64();
    step("download", download_seconds);

    let clock = Instant::now();
    let (mut predictions, keys) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut all: Option<Predictions> = None;
        for (id, raw) in &raws {
            let predictions = flows::decrypt_result(&keys, *id, raw)?;
            match all.as_mut() {
                None => all = Some(predictions),
                Some(all) => all.images.extend(predictions.images),
            }
        }
        Ok((all.context("no result was decrypted")?, keys))
    })
    .await??;
    let decrypt_seconds = clock.elapsed().as_secs_f64();
    step("decrypt", decrypt_seconds);
    drop(keys);

    let reference = model.network().forward_batch(&intake.inputs)?;
    let (accuracy, agreement) = score(&model, &mut predictions, &truth, &reference)?;
    if let Some(dir) = report {
        let stage = |stage: &str, seconds: f64| Timing { stage: stage.into(), seconds };
        let context = ReportContext {
            jobs: jobs.clone(),
            timings: vec![
                stage("key generation", keygen_seconds),
                stage("register evaluation keys", register_seconds),
                stage("encrypt", encrypt_seconds),
                stage("upload", upload_seconds),
                stage("queued at the service", queued_seconds),
                stage("encrypted inference at the service", compute_seconds),
                stage("download", download_seconds),
                stage("decrypt", decrypt_seconds),
            ],
        };
        let folder = dir.join(report_folder(model_name, packing));
        let written = blindfold_client::write_report(&predictions, &context, &folder)
            .with_context(|| format!("writing the report to {}", folder.display()))?;
        eprintln!(
            "   report: {} ({} of {} need review)",
            written.index.display(),
            written.needs_review,
            written.images
        );
    }
    let images = reference.len();
    Ok(RunReport {
        model: model_name.to_owned(),
        packing: packing.to_owned(),
        task: predictions.task,
        images,
        accuracy,
        agreement,
        keygen_seconds,
        register_seconds,
        encrypt_seconds,
        upload_seconds,
        queued_seconds,
        compute_seconds,
        download_seconds,
        decrypt_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        bytes_up_per_image: bytes_up as f64 / images as f64,
        bytes_down_per_image: bytes_down as f64 / images as f64,
        evaluation_key_bytes: registered.bytes,
        security_bits: params.security_bits(),
        ring_degree: params.n(),
    })
}

fn step(what: &str, seconds: f64) {
    eprintln!("   {what}: {seconds:.2} s");
}

fn print_table(reports: &[RunReport]) {
    let headers = [
        "MODEL",
        "PACKING",
        "IMAGES",
        "ACCURACY",
        "AGREEMENT",
        "KEYGEN",
        "ENCRYPT",
        "UPLOAD",
        "QUEUED",
        "COMPUTE",
        "DOWNLOAD",
        "DECRYPT",
        "UP/IMAGE",
        "DOWN/IMAGE",
        "SECURITY",
    ];
    let rows = reports.iter().map(|r| {
        let seconds = |s: f64| format!("{s:.2}s");
        vec![
            r.model.clone(),
            r.packing.clone(),
            r.images.to_string(),
            format!("{:.1}%", 100.0 * r.accuracy),
            format!("{:.1}%", 100.0 * r.agreement),
            seconds(r.keygen_seconds),
            seconds(r.encrypt_seconds),
            seconds(r.upload_seconds),
            seconds(r.queued_seconds),
            seconds(r.compute_seconds),
            seconds(r.download_seconds),
            seconds(r.decrypt_seconds),
            format_mean_bytes(r.bytes_up_per_image),
            format_mean_bytes(r.bytes_down_per_image),
            format!("{} bit", r.security_bits),
        ]
    });
    println!("{}", Table::new(&headers).right(&(2..headers.len()).collect::<Vec<_>>()).rows(rows));
    println!(
        "agreement: encrypted vs plaintext predictions of the same model (must be ≥ {:.1}%); compute: the worker's \
         running time (keys, download, evaluation, upload); up/down: encrypted bytes per image",
        100.0 * MIN_AGREEMENT
    );
    if reports.iter().any(|r| r.task == "segmentation") {
        println!(
            "segmentation: accuracy is the mean Dice of the encrypted masks against the ground-truth masks, agreement \
             the share of mask pixels equal to the plaintext model's"
        );
    }
}
