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
    /// The model needs more levels, slots or memory than any 128-bit parameter set (or the
    /// memory budget) offers.
    #[error("node {node} ({layer}) does not fit: {reason}")]
    DoesNotFit {
        /// The node's name.
        node: String,
        /// The node's layer.
        layer: String,
        /// By how much, and what would fit.
        reason: String,
    },
    /// A node this packing cannot evaluate.
    #[error("node {node} ({layer}) is not supported in the {packing} packing: {reason}")]
    Unsupported {
        /// The node's name.
        node: String,
        /// The node's layer.
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
    /// A decrypted output is beyond the range the plan left room for: the encrypted values
    /// left their planned range (an input far from what the model was calibrated on), so the
    /// result is noise and must not be used.
    #[error(
        "a decrypted output ({value:.3e}) exceeds the planned bound ±{bound}: the encrypted values overflowed; \
         check that the input image is like the model's training data"
    )]
    Overflow {
        /// The decrypted value (before the plan's output map).
        value: f64,
        /// The bound.
        bound: f64,
    },
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
