//! The one error type of the crate: every variant carries the facts needed to act on it.

/// What went wrong in a CKKS operation, a parameter choice or a serialized object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The parameters would be below 128-bit security.
    #[error(
        "insecure parameters: log2(Q·P) = {log_qp:.1} bits exceeds the 128-bit bound of {bound} bits \
         for N = 2^{log_n} by {excess:.1} bits (HomomorphicEncryption.org, ternary secret, σ = 3.2)"
    )]
    Insecure {
        /// log2 of the ring degree.
        log_n: u32,
        /// log2 of the product of all primes.
        log_qp: f64,
        /// The largest allowed log2(Q·P).
        bound: u32,
        /// By how many bits the bound is exceeded.
        excess: f64,
    },
    /// A parameter is outside what the crate supports.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter {
        /// Which parameter.
        name: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// Two operands live at different levels.
    #[error("level mismatch: {left} vs {right} (drop the higher one with drop_to_level first)")]
    LevelMismatch {
        /// Level of the first operand.
        left: usize,
        /// Level of the second operand.
        right: usize,
    },
    /// Two operands carry different scales.
    #[error("scale mismatch: 2^{left:.3} vs 2^{right:.3}")]
    ScaleMismatch {
        /// log2 of the first operand's scale.
        left: f64,
        /// log2 of the second operand's scale.
        right: f64,
    },
    /// A level outside the chain, or an operation that needs a level that is not there.
    #[error("invalid level {level}: must be between {min} and {max}")]
    InvalidLevel {
        /// The level asked for.
        level: usize,
        /// The lowest allowed.
        min: usize,
        /// The highest allowed.
        max: usize,
    },
    /// The operation needs a ciphertext of a given number of parts.
    #[error("ciphertext has {found} parts, the operation needs {expected}")]
    WrongSize {
        /// Parts needed.
        expected: usize,
        /// Parts present.
        found: usize,
    },
    /// More values than slots.
    #[error("{values} values do not fit in {slots} slots")]
    TooManyValues {
        /// Values given.
        values: usize,
        /// Slots available.
        slots: usize,
    },
    /// A value that cannot be encoded (NaN, infinite, or too large for the modulus).
    #[error("cannot encode value {value} at scale 2^{log_scale:.1}: {reason}")]
    Unencodable {
        /// The value.
        value: f64,
        /// log2 of the scale.
        log_scale: f64,
        /// Why.
        reason: &'static str,
    },
    /// No key for this rotation (or conjugation) was generated.
    #[error("no Galois key for {what}; generate keys for the rotation steps the plan uses")]
    MissingGaloisKey {
        /// Which rotation.
        what: String,
    },
    /// An object made under other parameters.
    #[error("parameter fingerprint mismatch: object has {found}, context has {expected}")]
    FingerprintMismatch {
        /// Hex prefix of the context's fingerprint.
        expected: String,
        /// Hex prefix of the object's fingerprint.
        found: String,
    },
    /// A serialized object is malformed.
    #[error("malformed {object} at byte {offset}: {reason}")]
    Malformed {
        /// What was being read.
        object: &'static str,
        /// Where the problem is.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A thread pool could not be built.
    #[error("thread pool: {0}")]
    ThreadPool(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
