//! The errors of compiling a model and evaluating a batch.

/// Why a model cannot be compiled or a batch cannot be evaluated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The batch, the keys and the model disagree.
    #[error("{what}: {detail}")]
    Mismatch {
        /// What disagrees (`key set`, `model version`, `parameters`, …).
        what: &'static str,
        /// The facts, and what to do.
        detail: String,
    },
    /// The batch file or the key bundle is malformed or not what was expected.
    #[error(transparent)]
    Batch(#[from] blindfold_batch::Error),
    /// The model cannot be loaded or planned, or the evaluation failed or was cancelled.
    #[error(transparent)]
    Plan(#[from] blindfold_compiler::Error),
    /// A CKKS operation failed.
    #[error(transparent)]
    Ckks(#[from] blindfold_ckks::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
