//! Encryption of preprocessed images into input batch files, and the names sidecar that maps
//! batch positions back to file names on the hospital's side.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use blindfold_batch::{BatchHeader, InputBatchWriter, Packing, Uuid};
use blindfold_ckks::{Context, SecretKeyEncryptor, SeededCiphertext};
use blindfold_evaluate::CompiledModel;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::intake::Intake;
use crate::keys::{KeySet, create_file};

/// Ciphertexts encrypted in parallel before they are written in order.
const GROUP: usize = 64;
const NAMES_FORMAT: &str = "blindfold-names/1";

/// One batch file written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncryptedBatch {
    /// The batch file.
    pub path: PathBuf,
    /// Its names sidecar (client-side only: never upload it).
    pub names_path: PathBuf,
    /// Images in it.
    pub images: usize,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its content digest (BLAKE3, hex).
    pub digest: String,
    /// Its packing (the job must be created with it).
    #[serde(serialize_with = "packing_name")]
    pub packing: Packing,
}

fn packing_name<S: serde::Serializer>(packing: &Packing, serializer: S) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_str(packing.name())
}

/// The names sidecar `FILE.names.json`: position → the image's original name.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Names {
    /// `blindfold-names/1`.
    pub format: String,
    /// The model of the batch.
    pub model: String,
    /// The key set of the batch.
    pub key_set: Uuid,
    /// The input batch's content digest.
    pub batch_digest: String,
    /// Image names in batch order.
    pub images: Vec<String>,
}

/// The path of the names sidecar of a batch file.
pub fn names_path(batch: &Path) -> PathBuf {
    let mut name = batch.as_os_str().to_owned();
    name.push(".names.json");
    PathBuf::from(name)
}

/// The file of batch `part` of a split job: part 0 is `out` itself, part k is `out` with `.k`
/// before its extension (`job.bfib`, `job.1.bfib`, `job.2.bfib`, …; `job`, `job.1`, …).
pub fn part_path(out: &Path, part: usize) -> PathBuf {
    if part == 0 {
        return out.to_path_buf();
    }
    match (out.file_stem(), out.extension()) {
        (Some(stem), Some(ext)) => {
            out.with_file_name(format!("{}.{part}.{}", stem.to_string_lossy(), ext.to_string_lossy()))
        }
        _ => {
            let mut name = out.as_os_str().to_owned();
            name.push(format!(".{part}"));
            PathBuf::from(name)
        }
    }
}

/// Reads a names sidecar.
pub fn read_names(path: &Path) -> Result<Names> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let names: Names = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid { path: path.to_path_buf(), reason: format!("not a names file: {e}") })?;
    if names.format != NAMES_FORMAT {
        return Err(Error::Invalid {
            path: path.to_path_buf(),
            reason: format!("format {:?}; this build reads {NAMES_FORMAT:?}", names.format),
        });
    }
    Ok(names)
}

/// Encrypts `intake` for `model` with the key set's secret key into input batch files at `out`
/// (split into [`part_path`]s of at most one batch capacity each), each with a names sidecar.
/// Ciphertexts are encoded and encrypted in parallel (rayon's current pool) and streamed to the
/// file; `progress(done, total)` is called as ciphertexts are written.
pub fn encrypt(
    keys: &KeySet,
    model: &CompiledModel,
    intake: &Intake,
    out: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<EncryptedBatch>> {
    if intake.is_empty() {
        return Err(Error::NoImages("nothing to encrypt".into()));
    }
    check_model(keys, model)?;
    let plan = model.plan();
    let context = Context::new(plan.params().clone())?;
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key(&context)?)?;
    let capacity = plan.batch_capacity();
    let parts = intake.len().div_ceil(capacity);
    let total = intake.inputs.chunks(capacity).map(|images| plan.input_ciphertexts(images.len())).sum::<usize>() as u64;
    let (level, scale) = (plan.input_level(), plan.input_scale());
    let mut done = 0u64;
    let mut written = Vec::with_capacity(parts);
    for (part, (inputs, names)) in intake.inputs.chunks(capacity).zip(intake.names.chunks(capacity)).enumerate() {
        let path = part_path(out, part);
        let header = BatchHeader {
            model: model.name().into(),
            model_version: model.version(),
            packing: model.packing(),
            shape: model.input_shape(),
            image_count: inputs.len() as u64,
            ciphertext_count: plan.input_ciphertexts(inputs.len()) as u64,
            level,
            scale,
            key_set: keys.id(),
            origin: None,
        };
        let slots = plan.pack(inputs)?;
        let file = File::create(&path).map_err(Error::io(&path))?;
        let mut writer = InputBatchWriter::new(BufWriter::new(file), &context, header).map_err(Error::batch(&path))?;
        for group in slots.chunks(GROUP) {
            let ciphertexts = group
                .par_iter()
                .map(|values| Ok(encryptor.encrypt_seeded(&context.encode(values, level, scale)?)?))
                .collect::<Result<Vec<SeededCiphertext>>>()?;
            for ciphertext in &ciphertexts {
                writer.push(ciphertext).map_err(Error::batch(&path))?;
            }
            done += group.len() as u64;
            progress(done, total);
        }
        let finished = writer.finish().map_err(Error::batch(&path))?;
        crate::keys::finish_file(finished.writer, &path)?;
        let names_path = names_path(&path);
        write_names(
            &names_path,
            &Names {
                format: NAMES_FORMAT.into(),
                model: model.name().into(),
                key_set: keys.id(),
                batch_digest: finished.digest.to_string(),
                images: names.to_vec(),
            },
        )?;
        written.push(EncryptedBatch {
            path,
            names_path,
            images: inputs.len(),
            bytes: finished.len,
            digest: finished.digest.to_string(),
            packing: model.packing(),
        });
    }
    tracing::info!(images = intake.len(), batches = written.len(), model = model.name(), "images encrypted");
    Ok(written)
}

/// Writes a names sidecar with mode 0600 (file names can identify patients).
pub(crate) fn write_names(path: &Path, names: &Names) -> Result<()> {
    let json = serde_json::to_vec_pretty(names)
        .map_err(|e| Error::Invalid { path: path.to_path_buf(), reason: format!("cannot serialize: {e}") })?;
    if path.exists() {
        std::fs::remove_file(path).map_err(Error::io(path))?;
    }
    let mut file = create_file(path, 0o600)?;
    file.write_all(&json).map_err(Error::io(path))
}

pub(crate) fn check_model(keys: &KeySet, model: &CompiledModel) -> Result<()> {
    let descriptor = keys.descriptor();
    if descriptor.model != model.name() || !keys.serves(model.packing())? {
        return Err(Error::KeySetMismatch(format!(
            "the key set in {} is for {} ({} packing), not {} ({} packing); make one with \
             `blindfold keygen --model {} --out DIR`",
            keys.dir().display(),
            descriptor.model,
            descriptor.packing,
            model.name(),
            model.packing(),
            model.name()
        )));
    }
    if model.fingerprint().to_string() != descriptor.fingerprint {
        return Err(Error::KeySetMismatch(format!(
            "the key set in {} was made for other parameters than {} compiles to; make a new key set",
            keys.dir().display(),
            model.name()
        )));
    }
    Ok(())
}
