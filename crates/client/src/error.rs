//! The client's errors: each names the file, what is wrong, and what to do next.

use std::fmt;
use std::path::PathBuf;

/// One input file that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// The file as given (or as found in a given directory).
    pub path: PathBuf,
    /// Why it cannot be used.
    pub reason: String,
}

/// The list of every unusable input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblems(pub Vec<FileProblem>);

impl fmt::Display for FileProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.0 {
            write!(f, "\n  {}: {}", problem.path.display(), problem.reason)?;
        }
        Ok(())
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error (in the message; not chained, so it is printed once).
        error: std::io::Error,
    },
    /// The secret key file can be read by other users.
    #[error(
        "secret key file {} is accessible by other users (mode {mode:04o}); refusing to use it. \
         Fix its permissions with `chmod 600 {}`",
        path.display(), path.display()
    )]
    SecretKeyPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A keys directory lacks a file.
    #[error("{}: {what} is missing; {hint}", path.display())]
    MissingFile {
        /// The file that should be there.
        path: PathBuf,
        /// What it is.
        what: &'static str,
        /// What to do.
        hint: String,
    },
    /// Evaluation was asked of a directory that holds only a secret key.
    #[error(
        "{} holds a secret key but no evaluation keys ({}); evaluation uses the evaluation-key \
         bundle only and never reads a secret key. Point --keys at the directory `blindfold keygen` wrote",
        dir.display(), bundle.display()
    )]
    OnlySecretKey {
        /// The keys directory.
        dir: PathBuf,
        /// Where the bundle should be.
        bundle: PathBuf,
    },
    /// `keygen` would overwrite an existing key set.
    #[error("{} already holds a key set ({}); choose another --out directory or delete that one first", dir.display(), file.display())]
    KeysExist {
        /// The directory.
        dir: PathBuf,
        /// The file found there.
        file: PathBuf,
    },
    /// A result that is not the one asked for: computed from another input batch than the
    /// names sidecar's, or for another job. Decrypting it would name its images wrongly.
    #[error("{}: not the result of these images: {reason}", path.display())]
    NotThisResult {
        /// The result file.
        path: PathBuf,
        /// Which record disagrees, with both values.
        reason: String,
    },
    /// A client-side JSON file (key-set descriptor, names sidecar) is malformed or disagrees.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key set and the request disagree (model, packing).
    #[error("{0}")]
    KeySetMismatch(String),
    /// Some input files cannot be used; all of them are listed.
    #[error("{} input file(s) cannot be used:{problems}", problems.0.len())]
    Inputs {
        /// Every unusable file.
        problems: FileProblems,
    },
    /// No image was found in the inputs.
    #[error(
        "no images found in the inputs ({0}); give PNG/JPEG files, directories of them, an MNIST IDX images file or a DermaMNIST .npz"
    )]
    NoImages(String),
    /// The output file extension names no known format.
    #[error("{}: unknown output format; use a .csv or .json file name", path.display())]
    OutputFormat {
        /// The file.
        path: PathBuf,
    },
    /// A batch or key-bundle file was refused.
    #[error("{}: {error}{hint}", path.display())]
    Batch {
        /// The file.
        path: PathBuf,
        /// What the format layer found (in the message; not chained, so it is printed once).
        error: Box<blindfold_batch::Error>,
        /// What to do about it (may be empty).
        hint: String,
    },
    /// Compiling the model or evaluating a batch failed.
    #[error(transparent)]
    Evaluate(#[from] blindfold_evaluate::Error),
    /// The model cannot be compiled, or its plan refused the images or results given to it.
    #[error(transparent)]
    Compile(#[from] blindfold_compiler::Error),
    /// A model or dataset could not be loaded.
    #[error(transparent)]
    Model(#[from] blindfold_nn::Error),
    /// A CKKS operation failed.
    #[error(transparent)]
    Ckks(#[from] blindfold_ckks::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |error| Error::Io { path, error }
    }

    /// A batch-format error on `path`, with a hint for the mistakes people make.
    pub(crate) fn batch(path: impl Into<PathBuf>) -> impl FnOnce(blindfold_batch::Error) -> Error {
        let path = path.into();
        move |source| {
            let hint = match &source {
                blindfold_batch::Error::Mismatch { field: "key set", .. } => {
                    "; the batch was made with another key set: use the --keys directory it was encrypted with"
                }
                blindfold_batch::Error::Mismatch { field: "model", .. } => {
                    "; the batch is for another model than this key set: use that model's key set"
                }
                blindfold_batch::Error::FingerprintMismatch { .. } => {
                    "; the batch and the keys were made for different parameters: use the key set it was made with"
                }
                blindfold_batch::Error::Truncated { .. } => "; the file is incomplete: copy or download it again",
                blindfold_batch::Error::Checksum { .. } => "; copy or download it again",
                _ => "",
            };
            Error::Batch { path, error: Box::new(source), hint: hint.to_string() }
        }
    }
}

/// The client's result type.
pub type Result<T> = std::result::Result<T, Error>;
