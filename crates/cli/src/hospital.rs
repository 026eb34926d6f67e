//! The hospital's offline commands: `keygen`, `encrypt`, `eval`, `decrypt`. No service needed;
//! the work is in `blindfold-client`, this module parses options and reports progress (drawn
//! with [`crate::terminal`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use blindfold_client::{IntakeOptions, KeySet, PackingChoice, ReportContext, Split, Timing, WrittenReport};
use blindfold_compiler::Control;
use serde_json::json;

use crate::terminal::{Output, bar, format_bytes, report, spinner};

/// The hospital commands, flattened into the top level (`blindfold keygen …`).
#[derive(Debug, clap::Subcommand)]
pub enum Hospital {
    /// Make a key set for a model: secret key (mode 0600), evaluation-key bundle, descriptor.
    Keygen {
        /// Model: a registered name (see `blindfold model list`) or a model directory
        /// (`model.onnx` + `manifest.json`), which the key set remembers.
        #[arg(long)]
        model: String,
        /// The keys directory to create (must not hold a key set).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        packing: PackingArg,
    },
    /// Encrypt images into input batch files (a job over one batch capacity is split: job.bfib, job.1.bfib, …),
    /// each with a FILE.names.json sidecar that stays here.
    Encrypt {
        /// The keys directory from `blindfold keygen`.
        #[arg(long)]
        keys: PathBuf,
        /// Model name or directory; must be the key set's [default: the key set's model].
        #[arg(long)]
        model: Option<String>,
        /// PNG/JPEG files of any size, directories of them, an MNIST IDX images file
        /// (`*-ubyte.gz`) or a DermaMNIST `.npz`.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The batch file to write.
        #[arg(long)]
        out: PathBuf,
        /// Split read from a `.npz` dataset: train, val or test.
        #[arg(long, default_value = "test", value_parser = parse_split)]
        split: Split,
        /// Encrypt at most N images (in input order).
        #[arg(long)]
        limit: Option<usize>,
        /// Use image files far from the model's input (a colour image for a grayscale model,
        /// a grayscale one for a colour model, an aspect ratio more than twice off), which are
        /// otherwise refused: the model would answer them confidently and wrongly.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        packing: PackingArg,
    },
    /// Evaluate an input batch with the evaluation keys only (what the service's workers run).
    Eval {
        /// The keys directory (only its evaluation keys and descriptor are read).
        #[arg(long)]
        keys: PathBuf,
        /// The input batch file.
        #[arg(long = "in")]
        input: PathBuf,
        /// The result batch file to write.
        #[arg(long)]
        out: PathBuf,
        /// Memory the model's plan may use (bytes, or with a K/M/G suffix) [default: the
        /// memory available on this machine]. A latency plan over it streams its diagonals
        /// (encodes them per image); one that does not fit even so is refused, naming the layer.
        #[arg(long, value_parser = crate::memory::parse_bytes)]
        memory_budget: Option<u64>,
    },
    /// Decrypt a result batch into predictions (CSV or JSON, by the output file's extension).
    Decrypt {
        /// The keys directory the batch was encrypted with.
        #[arg(long)]
        keys: PathBuf,
        /// The result batch file.
        #[arg(long = "in")]
        input: PathBuf,
        /// predictions.csv or predictions.json.
        #[arg(long)]
        out: PathBuf,
        /// The names sidecar [default: IN.names.json when it exists, else positions].
        #[arg(long)]
        names: Option<PathBuf>,
        /// Segmentation: ground-truth masks (`NAME.png`, `NAME_segmentation.png` or
        /// `NAME_mask.png` for the image `NAME.ext`); adds each mask's Dice and the mean.
        #[arg(long)]
        masks: Option<PathBuf>,
        #[command(flatten)]
        report: ReportArg,
    },
}

/// `--report DIR`, for the commands that decrypt.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArg {
    /// Also write a report to open in a browser: DIR/index.html (self-contained; it loads
    /// nothing from the network) with each image's thumbnail from the original file, its
    /// prediction and class probabilities, the risk against the model's operating point, and
    /// for segmentation the lesion outline and area; mask and overlay PNGs in DIR/masks and
    /// DIR/overlays. Sortable by risk, filterable to the images that need review.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

/// `--packing`.
#[derive(Debug, clap::Args)]
pub struct PackingArg {
    /// auto, throughput or latency. auto: for keygen, the throughput packing unless one batch of
    /// the model would need more than 64 GiB (lesion-unet: 600 GiB), then latency; otherwise the
    /// key set's packing, except that a latency key set (which also serves the throughput
    /// packing) picks the cheaper one for the image count.
    #[arg(long, default_value = "auto")]
    pub packing: PackingChoice,
}

pub(crate) fn parse_split(s: &str) -> Result<Split, String> {
    match s {
        "train" => Ok(Split::Train),
        "val" => Ok(Split::Val),
        "test" => Ok(Split::Test),
        other => Err(format!("unknown split '{other}' (train, val or test)")),
    }
}

/// Runs a hospital command.
pub fn run(command: Hospital, output: Output) -> anyhow::Result<()> {
    match command {
        Hospital::Keygen { model, out, packing } => keygen(&model, &out, packing.packing, output),
        Hospital::Encrypt { keys, model, inputs, out, split, limit, force, packing } => {
            let intake = IntakeOptions { split, limit, force };
            encrypt(&keys, model.as_deref(), &inputs, &out, intake, packing.packing, output)
        }
        Hospital::Eval { keys, input, out, memory_budget } => {
            eval(&keys, &input, &out, memory_budget.or_else(crate::memory::available), output)
        }
        Hospital::Decrypt { keys, input, out, names, masks, report } => {
            decrypt(&keys, &input, &out, names.as_deref(), masks.as_deref(), report.report.as_deref(), output)
        }
    }
}

fn keygen(model: &str, out: &Path, packing: PackingChoice, output: Output) -> anyhow::Result<()> {
    let started = Instant::now();
    let spinner = spinner(output, format!("generating keys for {model}"));
    let keys = KeySet::generate(out, model, packing);
    spinner.finish_and_clear();
    let keys = keys.with_context(|| format!("making a key set for {model} in {}", out.display()))?;
    let d = keys.descriptor();
    report(
        output,
        json!({
            "command": "keygen",
            "keys": out,
            "key_set": d.key_set,
            "model": d.model,
            "packing": d.packing,
            "fingerprint": d.fingerprint,
            "seconds": started.elapsed().as_secs_f64(),
        }),
        || {
            format!(
                "key set {} for {} ({} packing) in {}: secret key {} (mode 0600, keep it here), evaluation keys {}",
                d.key_set,
                d.model,
                d.packing,
                out.display(),
                out.join(blindfold_client::SECRET_KEY_FILE).display(),
                out.join(blindfold_client::EVALUATION_KEYS_FILE).display()
            )
        },
    )
}

fn encrypt(
    keys_dir: &Path,
    model: Option<&str>,
    inputs: &[PathBuf],
    out: &Path,
    options: IntakeOptions,
    packing: PackingChoice,
    output: Output,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let keys = KeySet::open(keys_dir)?;
    if let Some(model) = model
        && model != keys.descriptor().model
        && blindfold_nn::registry::load(model).map(|m| m.manifest.name).ok().as_deref()
            != Some(&keys.descriptor().model)
    {
        anyhow::bail!(
            "the key set in {} is for {}, not {model}; make one with `blindfold keygen --model {model} --out DIR`",
            keys_dir.display(),
            keys.descriptor().model
        );
    }
    let spinner = spinner(output, "reading and preprocessing images".into());
    let intake = keys.compiled_model().and_then(|m| blindfold_client::read_inputs(m.manifest(), inputs, options));
    spinner.finish_and_clear();
    let intake = intake?;
    let compiled = packing.compile(&keys, intake.len())?;
    let bar = bar(output, 0, "encrypting");
    let batches = blindfold_client::encrypt(&keys, &compiled, &intake, out, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let batches = batches?;
    report(
        output,
        json!({
            "command": "encrypt",
            "model": compiled.name(),
            "packing": compiled.packing().name(),
            "key_set": keys.id(),
            "images": intake.len(),
            "batches": batches,
            "seconds": started.elapsed().as_secs_f64(),
        }),
        || {
            let mut text = format!(
                "encrypted {} images for {} ({} packing) in {:.1} s:",
                intake.len(),
                compiled.name(),
                compiled.packing(),
                started.elapsed().as_secs_f64()
            );
            for batch in &batches {
                text.push_str(&format!(
                    "\n  {} ({} images, {}); names in {} (keep it here, do not upload)",
                    batch.path.display(),
                    batch.images,
                    format_bytes(batch.bytes),
                    batch.names_path.display()
                ));
            }
            text
        },
    )
}

fn eval(keys: &Path, input: &Path, out: &Path, memory_budget: Option<u64>, output: Output) -> anyhow::Result<()> {
    let started = Instant::now();
    let bar = bar(output, 1000, "evaluating");
    let control = Control::with_progress(|progress| {
        bar.set_position((progress.fraction * 1000.0) as u64);
        bar.set_message(progress.name.to_string());
    });
    let header = blindfold_client::evaluate_file(keys, input, out, memory_budget, &control);
    drop(control);
    bar.finish_and_clear();
    let header = header.with_context(|| format!("evaluating {}", input.display()))?;
    report(
        output,
        json!({
            "command": "eval",
            "model": header.model,
            "key_set": header.key_set,
            "images": header.image_count,
            "result": out,
            "seconds": started.elapsed().as_secs_f64(),
        }),
        || {
            format!(
                "evaluated {} images of {} in {:.1} s; result batch {}",
                header.image_count,
                header.model,
                started.elapsed().as_secs_f64(),
                out.display()
            )
        },
    )
}

fn decrypt(
    keys_dir: &Path,
    input: &Path,
    out: &Path,
    names: Option<&Path>,
    truth: Option<&Path>,
    report_dir: Option<&Path>,
    output: Output,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let keys = KeySet::open(keys_dir)?;
    let spinner = spinner(output, "decrypting".into());
    let predictions = blindfold_client::decrypt(&keys, input, names);
    spinner.finish_and_clear();
    let mut predictions = predictions.with_context(|| format!("decrypting {}", input.display()))?;
    let saved = predictions.save(out, truth)?;
    let context = ReportContext {
        jobs: Vec::new(),
        timings: vec![Timing { stage: "decrypt".into(), seconds: started.elapsed().as_secs_f64() }],
    };
    let written = write_report(&predictions, &context, report_dir, output)?;
    report(
        output,
        json!({
            "command": "decrypt",
            "model": predictions.model,
            "images": predictions.images.len(),
            "predictions": out,
            "saved": saved,
            "report": written,
            "overflowed": predictions.overflowed(),
            "seconds": started.elapsed().as_secs_f64(),
        }),
        || saved_text(&predictions, &saved, written.as_ref()),
    )
}

/// Writes the report of `predictions` into `dir` when one was asked for (`--report`).
pub(crate) fn write_report(
    predictions: &blindfold_client::Predictions,
    context: &ReportContext,
    dir: Option<&Path>,
    output: Output,
) -> anyhow::Result<Option<WrittenReport>> {
    let Some(dir) = dir else { return Ok(None) };
    let spinner = spinner(output, format!("writing the report to {}", dir.display()));
    let written = blindfold_client::write_report(predictions, context, dir);
    spinner.finish_and_clear();
    Ok(Some(written.with_context(|| format!("writing the report to {}", dir.display()))?))
}

/// What a command that decrypted says it wrote.
pub(crate) fn saved_text(
    predictions: &blindfold_client::Predictions,
    saved: &blindfold_client::Saved,
    written: Option<&WrittenReport>,
) -> String {
    let mut text = format!(
        "{} predictions of {} written to {}",
        predictions.images.len(),
        predictions.model,
        saved.predictions.display()
    );
    if let (Some(dir), Some(count)) = (&saved.masks_dir, saved.masks) {
        text.push_str(&format!("; {count} mask PNGs in {}", dir.display()));
    }
    if let Some(dice) = saved.mean_dice {
        text.push_str(&format!("; mean Dice against the ground truth {dice:.4}"));
    }
    if let Some(written) = written {
        text.push_str(&format!(
            "\nreport: {} ({} of {} images need review{})",
            written.index.display(),
            written.needs_review,
            written.images,
            if written.without_thumbnail > 0 {
                format!("; {} without a picture: their original files were not found", written.without_thumbnail)
            } else {
                String::new()
            }
        ));
    }
    let overflowed = predictions.overflowed();
    if overflowed > 0 {
        text.push_str(&format!(
            "\nwarning: {overflowed} image(s) left the output range the model planned for (inputs unlike its \
             training data): marked `overflow`, with no result"
        ));
    }
    text
}
