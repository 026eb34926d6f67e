//! `blindfold model …`: the registered HE-friendly models, their plaintext evaluation on the
//! test split, and validation of a model owner's ONNX export.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use blindfold_compiler as encrypted;
use blindfold_nn::data::{self, Split};
use blindfold_nn::{metrics, onnx, registry};
use serde_json::json;

/// The `model` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Model {
    /// List the registered models.
    List,
    /// Show a model's manifest, its graph, and its throughput and latency plans (levels,
    /// scales, layouts, keys, estimated memory).
    Show {
        /// Model name (see `blindfold model list`) or a model directory (`model.onnx` +
        /// `manifest.json`).
        name: String,
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
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate an ONNX file: print its IR and multiplicative depth, or why it is refused.
    Import {
        /// The ONNX file.
        file: PathBuf,
        /// Print the IR as JSON (with weights) instead of the summary.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `model` subcommand.
pub fn run(command: Model) -> anyhow::Result<()> {
    match command {
        Model::List => list(),
        Model::Show { name } => show(&name),
        Model::Eval { model, data, limit, json } => eval(&model, data, limit, json),
        Model::Import { file, json } => import(&file, json),
    }
}

fn list() -> anyhow::Result<()> {
    println!("{:<18} {:<8} {:>7} {:>6} {:>9}  description", "name", "input", "classes", "depth", "test acc");
    for m in registry::all()? {
        let acc =
            m.manifest.metrics["test"]["accuracy"].as_f64().map_or("-".to_string(), |a| format!("{:.2} %", a * 100.0));
        println!(
            "{:<18} {:<8} {:>7} {:>6} {:>9}  {}",
            m.manifest.name,
            m.network.input().to_string(),
            m.manifest.classes.len(),
            m.network.depth(),
            acc,
            m.manifest.description
        );
    }
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
fn data_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
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
pub(crate) fn load_test_split(manifest: &blindfold_nn::Manifest, dir: &Path) -> anyhow::Result<data::Images> {
    let Some(dataset) = manifest.dataset() else {
        bail!("the manifest of {} names no data set (its \"dataset\" field)", manifest.name)
    };
    data::dataset(dir, dataset, Split::Test).with_context(|| format!("reading the {dataset} test split"))
}

fn eval(name: &str, data: Option<PathBuf>, limit: Option<usize>, as_json: bool) -> anyhow::Result<()> {
    let m = registry::load(name)?;
    if let blindfold_nn::Task::Segmentation { .. } = m.manifest.task {
        bail!("{name} is a segmentation model; `model eval` reports classification metrics (accuracy, recall, AUC)");
    }
    let dir = data_dir(data)?;
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
    }
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
