//! `blindfold model convert`: a standard network (ReLU, sigmoid, GELU, max pooling, softmax)
//! into a model directory Blindfold serves, with the accuracy it keeps. The conversion itself
//! is `blindfold_nn::convert`; this module reads the data, reports and writes the files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use blindfold_compiler as encrypted;
use blindfold_nn::convert::{ConvertOptions, StandardNetwork, out_of_range};
use blindfold_nn::data::{self, Split};
use blindfold_nn::{Manifest, metrics, registry};
use serde_json::json;

use crate::terminal::{Output, report};

/// Options of `blindfold model convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The ONNX file of a network with standard activations (Relu, LeakyRelu, Sigmoid, Tanh,
    /// Gelu, x·Sigmoid(x), Softplus, HardSwish).
    pub file: PathBuf,
    /// The model directory to write (`model.onnx`, `manifest.json`); must not hold a model.
    #[arg(long)]
    pub out: PathBuf,
    /// The data directory holding the manifest's data set [default: `$BLINDFOLD_DATA`, else the
    /// first `shared/data` from the current directory upwards]: activation ranges are measured
    /// on its train split.
    #[arg(long, env = "BLINDFOLD_DATA", value_name = "DATA")]
    pub calibrate: Option<PathBuf>,
    /// The data directory whose labelled test split measures accuracy before and after, and
    /// whose validation split places the operating point [default: the --calibrate directory].
    #[arg(long, value_name = "DATA")]
    pub labels: Option<PathBuf>,
    /// The manifest of the network (input, preprocessing, classes, data set) [default:
    /// manifest.json beside FILE].
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// The converted model's name [default: the manifest's name with `-he` appended].
    #[arg(long)]
    pub name: Option<String>,
    /// Degree of each Chebyshev approximation (1–63; each costs ⌈log2(degree + 1)⌉ levels). 31
    /// kept derma-relu within 1.2 points whatever the calibration set; 15 did not
    /// (models/README.md).
    #[arg(long, default_value_t = 31)]
    pub degree: usize,
    /// Each observed activation range is widened by this fraction of its width on both sides.
    #[arg(long, default_value_t = 0.1)]
    pub margin: f64,
    /// Replace max pooling with average pooling of the same window (refused otherwise).
    #[arg(long)]
    pub replace_maxpool: bool,
    /// Train images whose activation ranges are measured.
    #[arg(long, default_value_t = 2000)]
    pub calibration_images: usize,
    /// Measure accuracy on at most N test images [default: all].
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Runs `model convert`.
pub fn run(args: &ConvertArgs, output: Output) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.out.join("model.onnx").exists() || args.out.join("manifest.json").exists() {
        bail!("{} already holds a model; choose another --out", args.out.display());
    }
    let manifest_path = match &args.manifest {
        Some(path) => path.clone(),
        None => args.file.with_file_name("manifest.json"),
    };
    let manifest_json = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading the manifest {} (give one with --manifest)", manifest_path.display()))?;
    let manifest = Manifest::from_json(&manifest_json)?;
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let standard = StandardNetwork::read(&bytes, args.replace_maxpool)
        .with_context(|| format!("reading {} for conversion", args.file.display()))?;
    if standard.input() != manifest.input_shape() {
        bail!("the network takes {} but the manifest says {:?}", standard.input(), manifest.input.shape);
    }
    let Some(dataset) = manifest.dataset() else {
        bail!("the manifest {} names no data set (its \"dataset\" field)", manifest_path.display())
    };
    let dir = crate::model::data_dir(args.calibrate.clone())?;
    let train =
        data::dataset(&dir, dataset, Split::Train).with_context(|| format!("reading the {dataset} train split"))?;
    let calibration = manifest.inputs(&train.take(args.calibration_images))?;
    let labelled = match &args.labels {
        Some(labels) => labels.clone(),
        None => dir.clone(),
    };
    let mut test = crate::model::load_test_split(&manifest, &labelled)?;
    if let Some(n) = args.limit {
        test = test.take(n);
    }
    let inputs = manifest.inputs(&test)?;

    let ranges = standard.calibrate(&calibration)?;
    let options = ConvertOptions { degree: args.degree, margin: args.margin, replace_maxpool: args.replace_maxpool };
    let conversion = standard.convert(&ranges, options)?;
    let classes = manifest.classes.len();
    let before = metrics::evaluate(&standard.forward_batch(&inputs)?, &test.labels, classes, manifest.positive_class);
    let after_logits = conversion.network.forward_batch(&inputs)?;
    let after = metrics::evaluate(&after_logits, &test.labels, classes, manifest.positive_class);
    let outside = out_of_range(&conversion.network, &inputs)?;
    let depth = conversion.network.depth();

    let mut converted = manifest.clone();
    converted.name = args.name.clone().unwrap_or_else(|| format!("{}-he", manifest.name));
    converted.description = format!(
        "{} — converted: {} activation(s) as Chebyshev polynomials of degree {}{}",
        manifest.description,
        conversion.activations.len(),
        args.degree,
        if conversion.replaced_maxpools.is_empty() { "" } else { ", max pooling as average pooling" }
    );
    converted.multiplicative_depth = depth;
    // The original's threshold belongs to the original's probabilities: place it again.
    converted.operating_point = match manifest.positive_class {
        Some(positive) => {
            let sensitivity = manifest.operating_point.as_ref().map_or(0.9, |p| p.target_sensitivity);
            let scores: Vec<f64> = after_logits.iter().map(|l| metrics::softmax(l)[positive]).collect();
            crate::model::operating_point(
                &converted,
                &conversion.network,
                &labelled,
                positive,
                sensitivity,
                &scores,
                &test.labels,
            )?
        }
        None => None,
    };
    converted.activations = Vec::new();
    converted.metrics = json!({
        "test": {"images": after.images, "accuracy": after.accuracy, "balanced_accuracy": after.balanced_accuracy,
                 "positive_auc": after.positive_auc, "evaluator": "blindfold reference (f64)"},
        "test_before_conversion": {"accuracy": before.accuracy, "balanced_accuracy": before.balanced_accuracy,
                                   "positive_auc": before.positive_auc},
        "out_of_range": outside,
    });
    converted.training = json!({
        "converted_from": args.file.display().to_string(),
        "original": manifest.training,
        "degree": args.degree,
        "margin": args.margin,
        "calibration_images": calibration.len(),
        "activations": conversion.activations,
        "replaced_maxpools": conversion.replaced_maxpools,
        "dropped_softmax": conversion.dropped_softmax,
    });
    write_model(&args.out, &conversion.onnx, &converted)?;
    // What the registry and the compiler make of the files just written.
    let model = registry::load(&args.out.display().to_string())
        .with_context(|| format!("loading the converted model from {}", args.out.display()))?;
    let compile = encrypted::CompileOptions { output_bound: model.manifest.output_bound, ..Default::default() };
    let plan = encrypted::LatencyPlan::compile_with(&model.manifest.name, &model.network, &compile);
    let parameters = match &plan {
        Ok(plan) => plan.summary().lines().next().unwrap_or_default().to_owned(),
        Err(e) => format!("not compiled: {e}"),
    };

    report(
        output,
        json!({
            "command": "model convert", "model": converted.name, "out": args.out,
            "activations": conversion.activations, "replaced_maxpools": conversion.replaced_maxpools,
            "dropped_softmax": conversion.dropped_softmax, "degree": args.degree, "margin": args.margin,
            "accuracy_before": before.accuracy, "accuracy_after": after.accuracy,
            "balanced_accuracy_before": before.balanced_accuracy, "balanced_accuracy_after": after.balanced_accuracy,
            "auc_before": before.positive_auc, "auc_after": after.positive_auc,
            "test_images": after.images, "out_of_range": outside, "multiplicative_depth": depth,
            "latency_plan": parameters, "seconds": started.elapsed().as_secs_f64(),
        }),
        || {
            let mut text = format!(
                "{} written to {}\n  accuracy on {} test images: {:.2} % before, {:.2} % after ({:+.2} points)\n",
                converted.name,
                args.out.display(),
                after.images,
                before.accuracy * 100.0,
                after.accuracy * 100.0,
                (after.accuracy - before.accuracy) * 100.0
            );
            for a in &conversion.activations {
                text.push_str(&format!(
                    "  {} ({}): inputs seen in [{:.3}, {:.3}], approximated on [{:.3}, {:.3}], max error {:.2e}\n",
                    a.node, a.function, a.observed[0], a.observed[1], a.interval[0], a.interval[1], a.max_error
                ));
            }
            text.push_str(&format!(
                "  outside the intervals on test: {} of {} images, {} of {} activation inputs\n  multiplicative depth {depth}; {parameters}",
                outside.images_outside, outside.images, outside.values_outside, outside.values
            ));
            text
        },
    )
}

fn write_model(dir: &Path, onnx: &[u8], manifest: &Manifest) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("model.onnx"), onnx).with_context(|| format!("writing {}/model.onnx", dir.display()))?;
    let json = serde_json::to_string_pretty(manifest)?;
    std::fs::write(dir.join("manifest.json"), json + "\n")
        .with_context(|| format!("writing {}/manifest.json", dir.display()))
}
