//! RNS-CKKS homomorphic encryption in pure Rust: the cryptographic core of Blindfold.
//!
//! Parameters are checked against the HomomorphicEncryption.org 128-bit table when built;
//! polynomials stay in NTT (evaluation) form between operations; key switching is hybrid
//! (digits of several primes, several special primes), with keys that may stop below the top
//! level; rotations can be hoisted; every serialized object carries the parameter fingerprint.
//! The crate does no I/O and knows nothing of networks or images.
//!
//! ```
//! use blindfold_ckks::{Context, Decryptor, Evaluator, KeyGenerator, Preset, SecretKeyEncryptor};
//!
//! let context = Context::new(Preset::N13Depth2.parameters()?)?;
//! let keys = KeyGenerator::new(&context);
//! let relin = keys.relin_key();
//! let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone())?;
//! let decryptor = Decryptor::new(&context, keys.secret_key().clone())?;
//! let evaluator = Evaluator::new(&context);
//!
//! let scale = context.params().scale();
//! let x = encryptor.encrypt(&context.encode(&[1.5, -2.0, 3.0], context.max_level(), scale)?)?;
//! let squared = evaluator.rescale(&evaluator.mul_relin(&x, &x, &relin)?)?;
//! let values = decryptor.decrypt_values(&squared)?;
//! assert!((values[0] - 2.25).abs() < 1e-6 && (values[1] - 4.0).abs() < 1e-6);
//! # Ok::<(), blindfold_ckks::Error>(())
//! ```

mod arith;
mod ciphertext;
mod context;
mod encoding;
mod error;
mod eval;
mod keys;
mod linear;
mod ntt;
mod params;
mod poly;
mod sampling;
mod serialize;

pub use ciphertext::{Ciphertext, Decryptor, Encryptor, SecretKeyEncryptor, SeededCiphertext};
pub use context::Context;
pub use encoding::Plaintext;
pub use error::{Error, Result};
pub use eval::{Decomposed, Evaluator};
pub use keys::{GaloisKeys, KeyGenerator, KeySwitchKey, PublicKey, RelinKey, SecretKey};
pub use linear::LinearMap;
pub use params::{Fingerprint, Parameters, ParametersBuilder, Preset, SECURITY_BOUNDS_128, security_bound};
pub use serialize::GaloisKeysLoader;
