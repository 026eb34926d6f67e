//! `blindfold model …`: the registered HE-friendly models, their plaintext evaluation on the
//! test split, and validation of a model owner's ONNX export.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use blindfold_compiler as encrypted;
use blindfold_nn::data::{self, Split};
use blindfold_nn::{Manifest, Network, OperatingPoint, metrics, onnx, registry};
use serde_json::json;
use tokio::runtime::Runtime;

use crate::service::Connection;
use crate::terminal::{Output, Table, format_bytes};

/// The `model` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Model {
    /// List the models built into this binary and those pulled from a service; with
    /// `--service`, the versions the service serves.
    List {
        /// List what the service serves (`GET /v1/models`) instead.
        #[arg(long)]
        service: bool,
    },
    /// Show a model's manifest, its graph, and its throughput and latency plans (levels,
    /// scales, layouts, keys, estimated memory); with `--service`, what the service registered.
    Show {
        /// Model name (see `blindfold model list`), `NAME@VERSION` (built in or pulled) or a model
        /// directory (`model.onnx` + `manifest.json`).
        name: String,
        /// Show the service's registration of NAME or NAME@VERSION instead (plans, fingerprints).
        #[arg(long)]
        service: bool,
    },
    /// Download a model version from the service into the local model cache
    /// (`$BLINDFOLD_MODEL_CACHE`, else `~/.cache/blindfold/models`), checking its SHA-256, so that
    /// `keygen --model NAME@VERSION` and the commands after it use exactly that version.
    Pull {
        /// `NAME` (its newest active version) or `NAME@VERSION`.
        model: String,
    },
    /// Evaluate a model in plaintext on its dataset's test split.
    Eval {
        /// Model name (see `blindfold model list`) or a model directory.
        #[arg(long)]
        model: String,
        /// The data directory holding `mnist/` and `dermamnist/` [default: `$BLINDFOLD_DATA`, else
        /// the first `shared/data` found from the current directory upwards].
        #[arg(long, env = "BLINDFOLD_DATA")]
        data: Option<PathBuf>,
        /// Evaluate only the first N images.
        #[arg(long)]
        limit: Option<usize>,
        /// The sensitivity the printed operating point is chosen for: the positive-class
        /// probability threshold that flags this share of the validation split's positives
        /// (the manifest's `operating_point`, which reports mark).
        #[arg(long, default_value_t = 0.9)]
        sensitivity: f64,
    },
    /// Convert a standard network (ReLU, sigmoid, GELU, … and max pooling) into a model
    /// Blindfold serves: each activation becomes a Chebyshev approximation on the input range
    /// measured on calibration images; prints the accuracy before and after, how often test
    /// inputs left the approximated ranges, the depth and the parameters the compiler picks.
    Convert(crate::convert::ConvertArgs),
    /// Validate an ONNX file: print its IR and multiplicative depth, or why it is refused; with
    /// --json, the IR as JSON (with weights).
    Import {
        /// The ONNX file.
        file: PathBuf,
    },
}

/// Runs a `model` subcommand; `--service` and `pull` ask the API `connection` names.
pub fn run(command: Model, output: Output, connection: &Connection, runtime: &Runtime) -> anyhow::Result<()> {
    match command {
        Model::List { service: false } => list(),
        Model::List { service: true } => list_service(connection, runtime),
        Model::Show { name, service: false } => show(&name),
        Model::Show { name, service: true } => show_service(&name, connection, runtime),
        Model::Pull { model } => pull(&model, connection, runtime),
        Model::Eval { model, data, limit, sensitivity } => eval(&model, data, limit, sensitivity, output.json),
        Model::Import { file } => import(&file, output.json),
        Model::Convert(args) => crate::convert::run(&args, output),
    }
}

fn list() -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for m in registry::all()? {
        let acc =
            m.manifest.metrics["test"]["accuracy"].as_f64().map_or("-".to_string(), |a| format!("{:.2} %", a * 100.0));
        rows.push(vec![
            m.manifest.name.clone(),
            m.network.input().to_string(),
            m.manifest.classes.len().to_string(),
            m.network.depth().to_string(),
            acc,
            m.manifest.description.clone(),
        ]);
    }
    let headers = ["NAME", "INPUT", "CLASSES", "DEPTH", "TEST ACC", "DESCRIPTION"];
    println!("{}", Table::new(&headers).right(&[2, 3, 4]).rows(rows));
    // Versions pulled from a service: NAME@VERSION for keygen.
    if let Some(dir) = registry::pulled_models_dir()
        && let Ok(names) = std::fs::read_dir(&dir)
    {
        let mut pulled: Vec<String> = names
            .flatten()
            .flat_map(|name| {
                let model = name.file_name().to_string_lossy().into_owned();
                std::fs::read_dir(name.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|v| v.path().join("manifest.json").is_file())
                    .map(move |v| format!("{model}@{}", v.file_name().to_string_lossy()))
            })
            .collect();
        pulled.sort();
        if !pulled.is_empty() {
            println!("\npulled into {}: {}", dir.display(), pulled.join(", "));
        }
    }
    Ok(())
}

fn list_service(connection: &Connection, runtime: &Runtime) -> anyhow::Result<()> {
    let client = connection.client()?;
    let catalogue = runtime.block_on(client.catalogue())?;
    let rows = catalogue.models.iter().map(|m| {
        let packings: Vec<&str> = m.packings.iter().map(|p| p.packing.name()).collect();
        vec![
            m.name.clone(),
            m.version.to_string(),
            m.task.to_string(),
            m.input_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x"),
            packings.join(", "),
            m.description.clone(),
        ]
    });
    let headers = ["NAME", "VERSION", "TASK", "INPUT", "PACKINGS", "DESCRIPTION"];
    println!("{}", Table::new(&headers).right(&[1]).rows(rows));
    Ok(())
}

fn show_service(model: &str, connection: &Connection, runtime: &Runtime) -> anyhow::Result<()> {
    let client = connection.client()?;
    let detail = runtime.block_on(client.model(model))?;
    let m = &detail.model;
    println!("{}@{} ({}): {}", m.name, m.version, m.state, m.description);
    println!("task: {}; input {:?}; classes: {}", m.task, m.input_shape, m.classes.join(", "));
    println!("model.onnx sha256: {}", m.onnx_sha256);
    for p in &m.packings {
        println!(
            "{:<10} N = 2^{}, {}-bit, {} levels, {} image(s) per batch, {} rotation keys ({}), peak memory {}, \
             parameters {} ({})",
            p.packing.name(),
            p.log_n,
            p.security_bits,
            p.depth,
            p.images_per_batch,
            p.rotation_steps.len(),
            format_bytes(p.key_bytes),
            format_bytes(p.peak_memory_bytes),
            p.parameter_preset,
            &p.params_fingerprint[..16.min(p.params_fingerprint.len())],
        );
    }
    Ok(())
}

/// Downloads a version's two files into the model cache, checked against the SHA-256 the
/// service recorded and imported before they replace anything.
fn pull(model: &str, connection: &Connection, runtime: &Runtime) -> anyhow::Result<()> {
    let client = connection.client()?;
    let detail = runtime.block_on(client.model(model))?;
    let (name, version) = (detail.model.name.clone(), detail.model.version);
    let Some(target) = registry::pulled_dir(&name, version) else {
        bail!("no model cache directory: set BLINDFOLD_MODEL_CACHE or HOME")
    };
    let parent = target.parent().context("the model cache directory has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging =
        tempfile::tempdir_in(parent).with_context(|| format!("creating a directory in {}", parent.display()))?;
    let quiet: crate::service::OnBytes = std::sync::Arc::new(|_| {});
    runtime.block_on(client.download(&detail.files.onnx, &staging.path().join("model.onnx"), quiet.clone()))?;
    runtime.block_on(client.download(&detail.files.manifest, &staging.path().join("manifest.json"), quiet))?;
    let onnx = std::fs::read(staging.path().join("model.onnx")).context("reading the downloaded model.onnx")?;
    let digest: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&onnx).iter().map(|b| format!("{b:02x}")).collect()
    };
    if digest != detail.model.onnx_sha256 {
        bail!(
            "the downloaded model.onnx of {name}@{version} is corrupt: SHA-256 {digest}, the service registered {}",
            detail.model.onnx_sha256
        );
    }
    let loaded = registry::load_dir(staging.path()).with_context(|| format!("checking {name}@{version}"))?;
    if loaded.manifest.name != name || loaded.manifest.version != version {
        bail!("the service sent {}@{} for {name}@{version}", loaded.manifest.name, loaded.manifest.version);
    }
    if target.exists() {
        std::fs::remove_dir_all(&target).with_context(|| format!("replacing {}", target.display()))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, &target).with_context(|| format!("moving the model into {}", target.display()))?;
    println!(
        "{name}@{version} pulled into {} (sha256 {}); make keys with `blindfold keygen --model {name}@{version} --out DIR`",
        target.display(),
        &digest[..16]
    );
    Ok(())
}

fn show(name: &str) -> anyhow::Result<()> {
    let m = registry::load(name)?;
    let man = &m.manifest;
    println!("{} (version {}): {}", man.name, man.version, man.description);
    println!("input: {:?} {} {}", man.input.shape, man.input.layout, man.input.channel_order);
    println!(
        "preprocessing: {}; {}; mean {:?}, std {:?}",
        man.preprocessing.resize, man.preprocessing.scale, man.preprocessing.mean, man.preprocessing.std
    );
    println!("classes: {}", man.classes.join(", "));
    println!("test metrics (onnxruntime, at training): {}", man.metrics["test"]);
    println!("training: {}", man.training["command"].as_str().unwrap_or("-"));
    println!("onnx: {} bytes\n", m.onnx.len());
    print!("{}", m.network.summary());
    // The encrypted plans: what each packing costs in levels, keys and parameters.
    let options = encrypted::CompileOptions { output_bound: m.manifest.output_bound, ..Default::default() };
    let throughput = encrypted::ThroughputPlan::compile_with(&m.manifest.name, &m.network, &options);
    let latency = encrypted::LatencyPlan::compile_with(&m.manifest.name, &m.network, &options);
    for summary in [throughput.as_ref().map(|p| p.summary()), latency.as_ref().map(|p| p.summary())] {
        match summary {
            Ok(summary) => print!("\n{summary}"),
            Err(e) => println!("\nnot compiled: {e}"),
        }
    }
    if let (Ok(throughput), Ok(latency)) = (&throughput, &latency) {
        println!(
            "\nautomatic packing choice (estimated): latency for jobs of up to {} images, throughput above",
            encrypted::break_even_images(throughput, latency)
        );
    }
    Ok(())
}

/// `$BLINDFOLD_DATA` / `--data`, else the first `shared/data` from the current directory up.
pub(crate) fn data_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.canonicalize().unwrap_or(dir));
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    for dir in cwd.ancestors() {
        for candidate in [dir.join("shared/data"), dir.join("../shared/data")] {
            if candidate.join("mnist").is_dir() || candidate.join("dermamnist").is_dir() {
                return Ok(candidate.canonicalize().unwrap_or(candidate));
            }
        }
    }
    bail!(
        "no data directory found: pass --data DIR or set BLINDFOLD_DATA (the directory holding mnist/ and dermamnist/)"
    )
}

/// The test split of the data set the model's manifest names.
pub(crate) fn load_test_split(manifest: &Manifest, dir: &Path) -> anyhow::Result<data::Images> {
    let Some(dataset) = manifest.dataset() else {
        bail!("the manifest of {} names no data set (its \"dataset\" field)", manifest.name)
    };
    data::dataset(dir, dataset, Split::Test).with_context(|| format!("reading the {dataset} test split"))
}

fn eval(
    name: &str,
    data: Option<PathBuf>,
    limit: Option<usize>,
    sensitivity: f64,
    as_json: bool,
) -> anyhow::Result<()> {
    let m = registry::load(name)?;
    let dir = data_dir(data)?;
    if let blindfold_nn::Task::Segmentation { threshold } = m.manifest.task {
        return eval_segmentation(&m, name, &dir, threshold, limit, as_json);
    }
    let mut images = load_test_split(&m.manifest, &dir)?;
    if let Some(n) = limit {
        images = images.take(n);
    }
    let start = Instant::now();
    let inputs = m.manifest.inputs(&images)?;
    let logits = m.network.forward_batch(&inputs)?;
    let seconds = start.elapsed().as_secs_f64();
    let classes = &m.manifest.classes;
    let met = metrics::evaluate(&logits, &images.labels, classes.len(), m.manifest.positive_class);
    let recall: serde_json::Map<String, serde_json::Value> =
        classes.iter().zip(&met.per_class_recall).map(|(c, r)| (c.clone(), json!(r))).collect();
    let mut out = json!({
        "model": name,
        "data": dir.display().to_string(),
        "split": "test",
        "images": met.images,
        "accuracy": met.accuracy,
        "balanced_accuracy": met.balanced_accuracy,
        "per_class_recall": recall,
        "seconds": seconds,
    });
    if let (Some(p), Some(auc)) = (m.manifest.positive_class, met.positive_auc) {
        let class = classes[p].split_whitespace().next().unwrap_or("positive").to_lowercase();
        out[format!("{class}_vs_rest_auc")] = json!(auc);
        let scores: Vec<f64> = logits.iter().map(|l| metrics::softmax(l)[p]).collect();
        out["operating_point"] =
            json!(operating_point(&m.manifest, &m.network, &dir, p, sensitivity, &scores, &images.labels)?);
    }
    if as_json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// The positive-class probability threshold for `sensitivity` on the validation split, and
/// what it gives on the test `scores`; `None` for a data set without a validation split.
pub(crate) fn operating_point(
    manifest: &Manifest,
    network: &Network,
    dir: &Path,
    positive: usize,
    sensitivity: f64,
    scores: &[f64],
    labels: &[u8],
) -> anyhow::Result<Option<OperatingPoint>> {
    let Some(dataset) = manifest.dataset() else { return Ok(None) };
    let Ok(val) = data::dataset(dir, dataset, Split::Val) else { return Ok(None) };
    let logits = network.forward_batch(&manifest.inputs(&val)?)?;
    let val_scores: Vec<f64> = logits.iter().map(|l| metrics::softmax(l)[positive]).collect();
    let is_positive = |labels: &[u8]| labels.iter().map(|l| usize::from(*l) == positive).collect::<Vec<_>>();
    let Some(threshold) = metrics::threshold_for_sensitivity(&val_scores, &is_positive(&val.labels), sensitivity)
    else {
        bail!("no positive image in the validation split, or --sensitivity {sensitivity} is not in (0, 1]")
    };
    let test = metrics::screening(scores, &is_positive(labels), threshold);
    Ok(Some(OperatingPoint {
        threshold,
        target_sensitivity: sensitivity,
        chosen_on: "val".into(),
        test_sensitivity: test.sensitivity,
        test_specificity: test.specificity,
    }))
}

/// Dice, IoU and pixel accuracy on the test split of the manifest's segmentation set, and on
/// PH² (an outside test set) when that set is `lesion-seg`.
fn eval_segmentation(
    m: &registry::Model,
    name: &str,
    dir: &Path,
    threshold: f64,
    limit: Option<usize>,
    as_json: bool,
) -> anyhow::Result<()> {
    let Some(dataset) = m.manifest.dataset() else {
        bail!("the manifest of {name} names no data set (its \"dataset\" field)")
    };
    let mut sets = vec![dataset.to_owned()];
    if dataset == "lesion-seg" {
        sets.push("ph2".to_owned());
    }
    let start = Instant::now();
    let mut results = serde_json::Map::new();
    for set in &sets {
        let mut truth = data::segmentation(dir, set, Split::Test).with_context(|| format!("reading {set}"))?;
        if let Some(n) = limit {
            truth = truth.take(n);
        }
        let logits = m.network.forward_batch(&m.manifest.inputs(&truth.images)?)?;
        let scores = metrics::segmentation(&logits, &truth.masks, threshold);
        results.insert(if set == "lesion-seg" { "ham_test".into() } else { set.clone() }, json!(scores));
    }
    let out = json!({
        "model": name,
        "data": dir.display().to_string(),
        "threshold": threshold,
        "scores": results,
        "seconds": start.elapsed().as_secs_f64(),
    });
    if as_json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn import(file: &Path, as_json: bool) -> anyhow::Result<()> {
    let net = onnx::import_file(file).with_context(|| format!("importing {}", file.display()))?;
    if as_json {
        println!("{}", serde_json::to_string(&net)?);
    } else {
        println!("{}: accepted", file.display());
        print!("{}", net.summary());
    }
    Ok(())
}
