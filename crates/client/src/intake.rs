//! Image intake: files, directories and dataset files into the model's preprocessed inputs,
//! with the name of every image kept (client-side only).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use blindfold_nn::Manifest;
use blindfold_nn::data::{self, Images, Split};
use rayon::prelude::*;

use crate::error::{Error, FileProblem, FileProblems, Result};

/// Largest decompressed IDX file read.
const MAX_IDX_BYTES: u64 = 1 << 30;

/// How inputs are read.
#[derive(Debug, Clone, Copy)]
pub struct IntakeOptions {
    /// The split read from a DermaMNIST `.npz`.
    pub split: Split,
    /// Read at most this many images in all (in input order).
    pub limit: Option<usize>,
    /// Take image files far from the model's input (colour against grayscale, an aspect ratio
    /// more than twice off) instead of listing them as problems (`--force`).
    pub force: bool,
}

impl Default for IntakeOptions {
    fn default() -> Self {
        Self { split: Split::Test, limit: None, force: false }
    }
}

/// Preprocessed images and their names, in batch order.
#[derive(Debug, Clone, Default)]
pub struct Intake {
    /// Where each image came from: the file path, or `dataset-file#index`.
    pub names: Vec<String>,
    /// The network inputs, as the manifest preprocesses them.
    pub inputs: Vec<Vec<f64>>,
}

impl Intake {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }
}

enum Item {
    Image(PathBuf),
    Dataset(PathBuf, DatasetKind),
}

#[derive(Clone, Copy)]
enum DatasetKind {
    Idx,
    Npz,
}

/// Reads `paths` for the model `manifest` describes. Each path is a PNG/JPEG file of any size,
/// a directory (its non-hidden files, in name order, not recursing), an MNIST IDX images file
/// (`*-ubyte` or `*-ubyte.gz`, `*.idx`, `*.idx.gz`) or a DermaMNIST `.npz` (`options.split`).
/// Images are decoded and preprocessed in parallel. Every unusable file is reported, all of them
/// in one [`Error::Inputs`].
pub fn read_inputs(manifest: &Manifest, paths: &[PathBuf], options: IntakeOptions) -> Result<Intake> {
    let mut problems = Vec::new();
    let mut items = Vec::new();
    for path in paths {
        if path.is_dir() {
            match list_dir(path) {
                Ok(files) => items.extend(files.into_iter().map(Item::Image)),
                Err(reason) => problems.push(FileProblem { path: path.clone(), reason }),
            }
        } else if !path.exists() {
            problems.push(FileProblem { path: path.clone(), reason: "no such file or directory".into() });
        } else if let Some(kind) = dataset_kind(path) {
            items.push(Item::Dataset(path.clone(), kind));
        } else {
            items.push(Item::Image(path.clone()));
        }
    }

    let mut intake = Intake::default();
    let mut remaining = options.limit.unwrap_or(usize::MAX);
    let mut pending: Vec<PathBuf> = Vec::new();
    for item in items {
        if remaining == 0 {
            break;
        }
        match item {
            Item::Image(path) => {
                pending.push(path);
                remaining -= 1;
            }
            Item::Dataset(path, kind) => {
                load_images(manifest, std::mem::take(&mut pending), options.force, &mut intake, &mut problems);
                match read_dataset(manifest, &path, kind, options.split, remaining) {
                    Ok(inputs) => {
                        remaining -= inputs.len();
                        let file = path.display().to_string();
                        intake.names.extend((0..inputs.len()).map(|i| format!("{file}#{i}")));
                        intake.inputs.extend(inputs);
                    }
                    Err(reason) => problems.push(FileProblem { path, reason }),
                }
            }
        }
    }
    load_images(manifest, pending, options.force, &mut intake, &mut problems);
    if !problems.is_empty() {
        return Err(Error::Inputs { problems: FileProblems(problems) });
    }
    if intake.is_empty() {
        let given = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(Error::NoImages(given));
    }
    Ok(intake)
}

fn list_dir(dir: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list the directory: {e}"))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list the directory: {e}"))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let is_file = entry.file_type().map(|t| t.is_file() || t.is_symlink()).unwrap_or(false);
        if !hidden && is_file {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

fn dataset_kind(path: &Path) -> Option<DatasetKind> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    if name.ends_with(".npz") {
        Some(DatasetKind::Npz)
    } else if name.ends_with("-ubyte")
        || name.ends_with("-ubyte.gz")
        || name.ends_with(".idx")
        || name.ends_with(".idx.gz")
    {
        Some(DatasetKind::Idx)
    } else {
        None
    }
}

/// Decodes and preprocesses `paths` in parallel, appending images in order and every failure
/// to `problems`.
fn load_images(
    manifest: &Manifest,
    paths: Vec<PathBuf>,
    force: bool,
    intake: &mut Intake,
    problems: &mut Vec<FileProblem>,
) {
    let loaded: Vec<_> = paths.into_par_iter().map(|path| (manifest.load_checked_image(&path, force), path)).collect();
    for (result, path) in loaded {
        match result {
            Ok(input) => {
                intake.names.push(path.display().to_string());
                intake.inputs.push(input);
            }
            Err(error) => problems.push(FileProblem { path, reason: describe(&error) }),
        }
    }
}

/// The reason without the path (the problem list prints the path).
fn describe(error: &blindfold_nn::Error) -> String {
    match error {
        blindfold_nn::Error::Data { reason, .. } => reason.clone(),
        blindfold_nn::Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

fn read_dataset(
    manifest: &Manifest,
    path: &Path,
    kind: DatasetKind,
    split: Split,
    limit: usize,
) -> std::result::Result<Vec<Vec<f64>>, String> {
    let images = match kind {
        DatasetKind::Npz => data::dermamnist(path, split).map_err(|e| describe(&e))?,
        DatasetKind::Idx => read_idx(path)?,
    };
    let images = images.take(limit);
    manifest.inputs(&images).map_err(|e| describe(&e))
}

fn read_idx(path: &Path) -> std::result::Result<Images, String> {
    let raw = std::fs::read(path).map_err(|e| e.to_string())?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("not a valid gzip file: {e}"))?;
        if out.len() as u64 > MAX_IDX_BYTES {
            return Err(format!("decompresses to more than {MAX_IDX_BYTES} bytes"));
        }
        out
    } else {
        raw
    };
    let (count, height, width, pixels) = data::parse_idx_images(&bytes, path).map_err(|e| describe(&e))?;
    Ok(Images { channels: 1, height, width, pixels, labels: vec![0; count] })
}
