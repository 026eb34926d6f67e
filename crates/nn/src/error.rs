//! The crate's error type.

use std::path::PathBuf;

/// What went wrong, with the facts needed to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node does not fit the graph: its inputs' shapes, its weights or its place.
    #[error("node {node} ({layer}): {reason}")]
    Shape {
        /// The node's name.
        node: String,
        /// The node's layer and parameters.
        layer: String,
        /// What does not fit.
        reason: String,
    },
    /// The ONNX file could not be decoded as an ONNX model.
    #[error("not an ONNX model: {0}")]
    OnnxDecode(String),
    /// The ONNX graph uses operators or patterns that cannot be evaluated under CKKS.
    #[error("the model cannot be evaluated under homomorphic encryption:\n{}", refusals.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n"))]
    Refused {
        /// One entry per offending node.
        refusals: Vec<Refusal>,
    },
    /// An input tensor has the wrong number of values.
    #[error("input has {actual} values but the network expects {expected} ({shape})")]
    InputSize {
        /// Values the network's input shape holds.
        expected: usize,
        /// Values given.
        actual: usize,
        /// The network's input shape.
        shape: String,
    },
    /// A dataset or image file is malformed or exceeds a limit.
    #[error("{path}: {reason}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A manifest is malformed or disagrees with its network.
    #[error("manifest of {model}: {reason}")]
    Manifest {
        /// The model's name.
        model: String,
        /// What is wrong.
        reason: String,
    },
    /// A broken internal invariant: a bug in Blindfold, not a problem with the input.
    #[error("internal error: {0}")]
    Invariant(String),
    /// No model of that name is registered.
    #[error("no model named '{name}'; known models: {} (or give a directory holding model.onnx and manifest.json)", known.join(", "))]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The registered names.
        known: Vec<String>,
    },
}

/// Why one ONNX node cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The node's name (or its first output when it has no name).
    pub node: String,
    /// The node's operator type.
    pub op: String,
    /// Why it is refused and what to use instead.
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node '{}': {} {}", self.node, self.op, self.reason)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
