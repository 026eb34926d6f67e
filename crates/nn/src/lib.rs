//! HE-friendly neural networks: the model IR, ONNX import, the plaintext reference evaluator,
//! dataset readers and the registry of trained models.
//!
//! A [`Network`] is a chain of layers CKKS can evaluate — convolutions and dense layers by
//! plaintext weights, average pooling, polynomial activations, flatten — with shapes checked
//! when it is built and the multiplicative depth of each layer known ([`Network::levels`]).
//! This crate knows nothing of encryption: the encrypted evaluator compiles this IR.
//!
//! ```
//! use blindfold_nn::{Layer, Network, Polynomial, Shape, Dense};
//!
//! let net = Network::new(
//!     Shape::Vector { len: 2 },
//!     vec![
//!         Layer::Dense(Dense { inputs: 2, outputs: 1, weights: vec![1.0, -1.0], bias: vec![0.5] }),
//!         Layer::Activation(Polynomial::square()),
//!     ],
//! )?;
//! assert_eq!(net.forward(&[3.0, 1.0])?, vec![6.25]);
//! assert_eq!(net.depth(), 2);
//!
//! let model = blindfold_nn::registry::load("mnist-cryptonets")?;
//! assert_eq!(model.network.depth(), 5);
//! # Ok::<(), blindfold_nn::Error>(())
//! ```

pub mod approximate;
pub mod convert;
pub mod data;
mod error;
mod eval;
pub mod ir;
pub mod manifest;
pub mod metrics;
pub mod onnx;
pub mod registry;

pub use error::{Error, Refusal, Result};
pub use ir::{
    AvgPool2d, Basis, Conv2d, ConvTranspose2d, Dense, Layer, Network, Node, Polynomial, Shape, TensorId, Upsample,
};
pub use manifest::{Manifest, OperatingPoint, Task, open_image};
