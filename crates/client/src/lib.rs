//! The hospital side of Blindfold: key generation, image intake and preprocessing, encryption
//! into batch files, offline evaluation, and decryption into predictions. The only library
//! crate that reads or writes a secret key.
//!
//! ```no_run
//! use blindfold_client::{IntakeOptions, KeySet, PackingChoice, decrypt, encrypt, evaluate_file, read_inputs};
//! use blindfold_compiler::Control;
//! use std::path::{Path, PathBuf};
//!
//! let keys = KeySet::generate(Path::new("keys"), "mnist-cryptonets", PackingChoice::Auto)?;
//! let model = keys.compiled_model()?;
//! let intake = read_inputs(model.manifest(), &[PathBuf::from("scans/")], IntakeOptions::default())?;
//! let batches = encrypt(&keys, &model, &intake, Path::new("job.bfib"), &|_, _| {})?;
//! // … the service (or `evaluate_file`, offline) turns job.bfib into job.bfrb …
//! evaluate_file(keys.dir(), &batches[0].path, Path::new("job.bfrb"), None, &Control::none())?;
//! let predictions = decrypt(&keys, Path::new("job.bfrb"), None)?;
//! predictions.write(Path::new("predictions.csv"))?;
//! # Ok::<(), blindfold_client::Error>(())
//! ```
//!
//! Secret keys live in `KEYS/secret.key` (mode 0600, refused when other users can read it) and
//! in process memory only while encrypting or decrypting (zeroized on drop); nothing here logs
//! them. Image file names stay in `BATCH.names.json` beside each batch and never enter a batch.

mod decrypt;
mod encrypt;
mod error;
mod eval;
mod intake;
mod keys;
mod report;

pub use blindfold_nn::data::Split;
/// The softmax behind [`Prediction::probabilities`], for callers that score their own logits.
pub use blindfold_nn::metrics::softmax;
pub use decrypt::{Mask, Prediction, Predictions, Saved, decrypt, decrypt_job};
pub use encrypt::{EncryptedBatch, Names, encrypt, names_path, part_path, read_names};
pub use error::{Error, FileProblem, FileProblems, Result};
pub use eval::evaluate_file;
pub use intake::{Intake, IntakeOptions, read_inputs};
pub use keys::{
    DESCRIPTOR_FILE, EVALUATION_KEYS_FILE, KeySet, KeySetDescriptor, SECRET_KEY_FILE, read_evaluation_keys,
};
pub use report::{
    OUTLINE, ReportContext, ReportLink, Timing, WrittenReport, draw_outline, outline, resample, write_report,
    write_report_index,
};

use blindfold_batch::Packing;
use blindfold_compiler::{CompiledModel, Plan};

/// The packing asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PackingChoice {
    /// The key set's packing (`keygen --packing` decides; throughput by default, latency for a
    /// model whose throughput batch is beyond any worker: see [`KeySet::generate`]).
    #[default]
    Auto,
    /// One image per slot.
    Throughput,
    /// One image per ciphertext (rotation keys; one image answers quickly).
    Latency,
}

impl PackingChoice {
    /// The packing to encrypt a job of `images` images with under `keys`. A forced packing must
    /// be one the key set [serves](KeySet::serves). `Auto` takes the key set's packing, except
    /// that a latency key set (which also serves the throughput packing) lets the planners'
    /// cost estimates choose: the latency packing for a few images, the throughput packing for
    /// a batch ([`blindfold_compiler::choose_packing`]).
    pub fn resolve(self, keys: &KeySet, images: usize) -> Result<Packing> {
        match self.forced(keys)? {
            Some(packing) => Ok(packing),
            None => Ok(cheaper_model(keys, images)?.packing()),
        }
    }

    /// The key set's model compiled for the packing [`resolve`](Self::resolve) picks.
    pub fn compile(self, keys: &KeySet, images: usize) -> Result<CompiledModel> {
        match self.forced(keys)? {
            Some(packing) => keys.compiled_model_for(packing),
            None => cheaper_model(keys, images),
        }
    }

    /// The packing when the image count cannot change it (checked against the key set), or
    /// `None` when it is for the cost estimates to choose.
    fn forced(self, keys: &KeySet) -> Result<Option<Packing>> {
        let of_keys = keys.descriptor().packing()?;
        let wanted = match self {
            PackingChoice::Auto if of_keys == Packing::Latency => return Ok(None),
            PackingChoice::Auto => of_keys,
            PackingChoice::Throughput => Packing::Throughput,
            PackingChoice::Latency => Packing::Latency,
        };
        if !keys.serves(wanted)? {
            return Err(Error::KeySetMismatch(format!(
                "the key set in {} is for the {of_keys} packing, not {wanted}; make one with `blindfold keygen --packing {wanted}`",
                keys.dir().display()
            )));
        }
        Ok(Some(wanted))
    }
}

/// The model compiled for the cheaper packing for `images` images under a latency key set: the
/// throughput packing only when its plan runs under the key set's parameters too.
fn cheaper_model(keys: &KeySet, images: usize) -> Result<CompiledModel> {
    let latency = keys.compiled_model_for(Packing::Latency)?;
    let Ok(throughput) = keys.compiled_model_for(Packing::Throughput) else {
        return Ok(latency);
    };
    let choice = match (throughput.plan(), latency.plan()) {
        (Plan::Throughput(t), Plan::Latency(l)) => blindfold_compiler::choose_packing(images, t, l),
        _ => Packing::Latency,
    };
    tracing::info!(images, packing = choice.name(), "packing chosen by estimated cost");
    Ok(match choice {
        Packing::Throughput => throughput,
        Packing::Latency => latency,
    })
}

impl std::str::FromStr for PackingChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(PackingChoice::Auto),
            "throughput" => Ok(PackingChoice::Throughput),
            "latency" => Ok(PackingChoice::Latency),
            other => Err(format!("unknown packing '{other}' (auto, throughput or latency)")),
        }
    }
}

impl std::fmt::Display for PackingChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PackingChoice::Auto => "auto",
            PackingChoice::Throughput => "throughput",
            PackingChoice::Latency => "latency",
        })
    }
}
