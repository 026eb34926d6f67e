//! The model registry: the trained models committed under `models/`, embedded in the binary so
//! that every tool works from any directory.

use crate::ir::{Network, Shape};
use crate::manifest::Manifest;
use crate::{Error, Result};

/// A registered model: its manifest, its network and the ONNX file it was imported from.
#[derive(Debug, Clone)]
pub struct Model {
    /// The manifest.
    pub manifest: Manifest,
    /// The imported network.
    pub network: Network,
    /// The committed ONNX file.
    pub onnx: &'static [u8],
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

/// Loads a registered model by name: parses its manifest, imports its ONNX file and checks that
/// the two agree (input shape, number of classes, multiplicative depth).
pub fn load(name: &str) -> Result<Model> {
    let Some((_, onnx, json)) = EMBEDDED.iter().find(|(n, _, _)| *n == name) else {
        return Err(Error::UnknownModel {
            name: name.to_string(),
            known: names().iter().map(|s| s.to_string()).collect(),
        });
    };
    let manifest = Manifest::from_json(json)?;
    let network = crate::onnx::import(onnx)?;
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
    if network.output() != (Shape::Vector { len: manifest.classes.len() }) {
        return Err(err(format!("network output {} for {} classes", network.output(), manifest.classes.len())));
    }
    if network.depth() != manifest.multiplicative_depth {
        return Err(err(format!(
            "network depth {} differs from the manifest's {}",
            network.depth(),
            manifest.multiplicative_depth
        )));
    }
    Ok(Model { manifest, network, onnx })
}

/// Loads every registered model.
pub fn all() -> Result<Vec<Model>> {
    names().into_iter().map(load).collect()
}
