//! The model registry: the trained models committed under `models/`, embedded in the binary so
//! that every tool works from any directory, and models read from a directory holding the same
//! two files (`model.onnx`, `manifest.json`).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::ir::{Network, Shape};
use crate::manifest::Manifest;
use crate::{Error, Result};

/// Largest `model.onnx` read from a directory.
pub const MAX_MODEL_FILE_BYTES: u64 = 256 << 20;

/// A model: its manifest, its network and the ONNX file it was imported from.
#[derive(Debug, Clone)]
pub struct Model {
    /// The manifest.
    pub manifest: Manifest,
    /// The imported network.
    pub network: Network,
    /// The ONNX file.
    pub onnx: Cow<'static, [u8]>,
    /// Where it came from.
    pub source: Source,
}

/// Where a model was loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Embedded in the binary (`models/NAME`).
    Embedded,
    /// A directory with `model.onnx` and `manifest.json` (canonical path).
    Directory(PathBuf),
}

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        &[$(($name,
             include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/", $name, "/model.onnx")).as_slice(),
             include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/", $name, "/manifest.json")))),*]
    };
}

/// (name, ONNX bytes, manifest JSON) of every committed model.
const EMBEDDED: &[(&str, &[u8], &str)] = embedded!("mnist-cryptonets", "mnist-lenet5", "derma-lenet5");

/// The names of the registered models.
pub fn names() -> Vec<&'static str> {
    EMBEDDED.iter().map(|(name, _, _)| *name).collect()
}

/// Loads a model: a registered name, or a directory holding `model.onnx` and `manifest.json`
/// (anything with a path separator, or an existing directory). Parses the manifest, imports
/// the ONNX file and checks that the two agree (input shape, outputs, multiplicative depth).
pub fn load(model: &str) -> Result<Model> {
    if let Some((name, onnx, json)) = EMBEDDED.iter().find(|(n, _, _)| *n == model) {
        return assemble(name, Cow::Borrowed(onnx), json, Source::Embedded);
    }
    let path = Path::new(model);
    if model.contains(std::path::MAIN_SEPARATOR) || model.contains('/') || path.is_dir() {
        return load_dir(path);
    }
    Err(Error::UnknownModel { name: model.to_string(), known: names().iter().map(|s| s.to_string()).collect() })
}

/// Loads the model in `dir` (`model.onnx` and `manifest.json`).
pub fn load_dir(dir: &Path) -> Result<Model> {
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    let dir = dir.canonicalize().map_err(io(dir.to_path_buf()))?;
    let (onnx_path, manifest_path) = (dir.join("model.onnx"), dir.join("manifest.json"));
    let size = std::fs::metadata(&onnx_path).map_err(io(onnx_path.clone()))?.len();
    if size > MAX_MODEL_FILE_BYTES {
        return Err(Error::Data { path: onnx_path, reason: format!("{size} bytes (limit {MAX_MODEL_FILE_BYTES})") });
    }
    let onnx = std::fs::read(&onnx_path).map_err(io(onnx_path.clone()))?;
    let json = std::fs::read_to_string(&manifest_path).map_err(io(manifest_path.clone()))?;
    let manifest = Manifest::from_json(&json).map_err(|e| match e {
        Error::Manifest { reason, .. } => Error::Data { path: manifest_path.clone(), reason },
        other => other,
    })?;
    let name = manifest.name.clone();
    assemble(&name, Cow::Owned(onnx), &json, Source::Directory(dir))
}

fn assemble(name: &str, onnx: Cow<'static, [u8]>, json: &str, source: Source) -> Result<Model> {
    let manifest = Manifest::from_json(json)?;
    let network = crate::onnx::import(&onnx)?;
    let err = |reason: String| Error::Manifest { model: name.to_string(), reason };
    if manifest.name != name {
        return Err(err(format!("manifest names the model '{}'", manifest.name)));
    }
    if network.input() != manifest.input_shape() {
        return Err(err(format!(
            "network input {} differs from the manifest's {:?}",
            network.input(),
            manifest.input.shape
        )));
    }
    let expected = manifest.output_shape();
    let fits = network.output() == expected
        || matches!(expected, Shape::Image { .. }) && network.output() == (Shape::Vector { len: expected.len() });
    if !fits {
        return Err(err(format!("network output {} where the manifest's task needs {expected}", network.output())));
    }
    if network.depth() != manifest.multiplicative_depth {
        return Err(err(format!(
            "network depth {} differs from the manifest's {}",
            network.depth(),
            manifest.multiplicative_depth
        )));
    }
    Ok(Model { manifest, network, onnx, source })
}

/// Loads every registered model.
pub fn all() -> Result<Vec<Model>> {
    names().into_iter().map(load).collect()
}
