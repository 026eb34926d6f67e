//! Why a model cannot be compiled, or an evaluation cannot run.
//!
//! The variants keep three causes apart, because the worker treats them differently: the
//! *model* does not fit or uses what a packing cannot evaluate (refuse the model), the *input*
//! given to a plan or engine is wrong (refuse the batch), or an *internal* invariant of the
//! compiler broke (a bug: report it; retrying the same job cannot help).

/// Why a model cannot be planned or evaluated encrypted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model needs more levels (or bits) than any 128-bit parameter set offers.
    #[error("layer {index} ({layer}) does not fit: {reason}")]
    DoesNotFit {
        /// Index of the layer (node) in the network.
        index: usize,
        /// The layer.
        layer: String,
        /// By how much, and what would fit.
        reason: String,
    },
    /// A layer this packing cannot evaluate.
    #[error("layer {index} ({layer}) is not supported in the {packing} packing: {reason}")]
    Unsupported {
        /// Index of the layer (node).
        index: usize,
        /// The layer.
        layer: String,
        /// The packing.
        packing: &'static str,
        /// Why.
        reason: String,
    },
    /// Bad input to a plan or an engine: images, slot vectors or ciphertexts that do not match
    /// what the plan was compiled for.
    #[error("input mismatch: {0}")]
    Input(String),
    /// An invariant of the compiler or an engine broke: a bug, not bad input.
    #[error("internal error in the model compiler (please report it): {0}")]
    Internal(String),
    /// The caller cancelled the evaluation.
    #[error("cancelled")]
    Cancelled,
    /// The model could not be loaded.
    #[error(transparent)]
    Model(#[from] blindfold_nn::Error),
    /// A CKKS operation failed.
    #[error(transparent)]
    Ckks(#[from] blindfold_ckks::Error),
}

/// The compiler's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
