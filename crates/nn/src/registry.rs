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
    /// The two files' bytes, as the service's model registry stores them.
    Files,
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

/// The manifest JSON of a model built into the binary, exactly as committed (what the service
/// registers when it seeds the built-in models).
pub fn embedded_manifest(name: &str) -> Option<&'static str> {
    EMBEDDED.iter().find(|(n, _, _)| *n == name).map(|(_, _, json)| *json)
}

/// Where `blindfold model pull` keeps the versions it downloads from the service:
/// `$BLINDFOLD_MODEL_CACHE`, else `$XDG_CACHE_HOME/blindfold/models`, else
/// `$HOME/.cache/blindfold/models`; one directory `NAME/VERSION/` per version. `None` when
/// none of the three is set.
pub fn pulled_models_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("BLINDFOLD_MODEL_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|dir| dir.join("blindfold").join("models")))
        .or_else(|| var("HOME").map(|dir| dir.join(".cache").join("blindfold").join("models")))
}

/// The directory a pulled `name@version` lives in (it may not exist).
pub fn pulled_dir(name: &str, version: u32) -> Option<PathBuf> {
    pulled_models_dir().map(|dir| dir.join(name).join(version.to_string()))
}

/// Loads a model: a registered name; `NAME@VERSION`, the built-in model if it has that version,
/// else the copy `blindfold model pull` keeps ([`pulled_dir`]); a bare name that is not built
/// in, as its newest pulled version; or a directory holding
/// `model.onnx` and `manifest.json` (anything with a path separator, or an existing directory).
/// Parses the manifest, imports the ONNX file and checks that the two agree (input shape,
/// outputs, multiplicative depth).
pub fn load(model: &str) -> Result<Model> {
    if let Some((name, onnx, json)) = EMBEDDED.iter().find(|(n, _, _)| *n == model) {
        return assemble(name, Cow::Borrowed(onnx), json, Source::Embedded);
    }
    let path = Path::new(model);
    if model.contains(std::path::MAIN_SEPARATOR) || model.contains('/') || path.is_dir() {
        return load_dir(path);
    }
    if let Some((name, version)) = model.split_once('@') {
        let unknown = |why: String| Error::UnknownModel { name: format!("{model} ({why})"), known: pulled_names() };
        let version: u32 = version.parse().map_err(|_| unknown("a version is a number".into()))?;
        if let Some((name, onnx, json)) = EMBEDDED.iter().find(|(n, _, _)| *n == name) {
            let built_in = assemble(name, Cow::Borrowed(onnx), json, Source::Embedded)?;
            if built_in.manifest.version == version {
                return Ok(built_in);
            }
        }
        let dir = pulled_dir(name, version).ok_or_else(|| unknown("no cache directory: set HOME".into()))?;
        if !dir.join("manifest.json").is_file() {
            return Err(unknown(format!("not pulled: run `blindfold model pull {name}@{version}`")));
        }
        let pulled = load_dir(&dir)?;
        if pulled.manifest.name != name || pulled.manifest.version != version {
            return Err(Error::Manifest {
                model: model.to_string(),
                reason: format!(
                    "{} holds {}@{}, not {model}",
                    dir.display(),
                    pulled.manifest.name,
                    pulled.manifest.version
                ),
            });
        }
        return Ok(pulled);
    }
    // A bare name neither built in nor a directory: the newest version pulled.
    if let Some(newest) = pulled_versions(model).into_iter().max() {
        return load(&format!("{model}@{newest}"));
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

/// The versions of `name` that `blindfold model pull` has fetched.
fn pulled_versions(name: &str) -> Vec<u32> {
    let Some(dir) = pulled_models_dir() else { return Vec::new() };
    std::fs::read_dir(dir.join(name))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().join("manifest.json").is_file())
        .filter_map(|entry| entry.file_name().to_str().and_then(|v| v.parse().ok()))
        .collect()
}

/// The built-in names and every pulled `NAME@VERSION`, for messages.
fn pulled_names() -> Vec<String> {
    let mut known: Vec<String> = names().iter().map(|s| s.to_string()).collect();
    if let Some(dir) = pulled_models_dir()
        && let Ok(entries) = std::fs::read_dir(&dir)
    {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(versions) = std::fs::read_dir(entry.path()) {
                known.extend(versions.flatten().map(|v| format!("{name}@{}", v.file_name().to_string_lossy())));
            }
        }
    }
    known
}

/// Builds a model from the bytes of its two files (a registered model read from storage, or
/// an upload being verified). `MAX_MODEL_FILE_BYTES` applies as for a directory.
pub fn from_files(onnx: Vec<u8>, manifest_json: &str) -> Result<Model> {
    if onnx.len() as u64 > MAX_MODEL_FILE_BYTES {
        return Err(Error::Manifest {
            model: "(upload)".into(),
            reason: format!("model.onnx has {} bytes (limit {MAX_MODEL_FILE_BYTES})", onnx.len()),
        });
    }
    let manifest = Manifest::from_json(manifest_json)?;
    let name = manifest.name.clone();
    assemble(&name, Cow::Owned(onnx), manifest_json, Source::Files)
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
