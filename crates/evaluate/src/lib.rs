//! Encrypted inference on batch files with evaluation keys only: what the worker runs, and what
//! `blindfold eval` runs offline.
//!
//! [`CompiledModel`] (from `blindfold-compiler`) is a model compiled for one packing ([`Plan`] is
//! the one place that dispatches on the packing), so the hospital client packs and unpacks with
//! exactly the layout the evaluator computes on; [`BatchExpect`] says what its batch headers
//! must carry. [`BatchEvaluator`] binds it to one key set's evaluation-key
//! bundle and turns an input batch into a result batch, streaming both files;
//! [`evaluate_batch`] does the same for one batch, reading the model from the batch header.
//!
//! ```no_run
//! use blindfold_batch::{InputBatchReader, KeyBundle, KeyBundleExpect, Packing};
//! use blindfold_evaluate::{BatchEvaluator, BatchExpect, CompiledModel};
//! use blindfold_compiler::Control;
//! use std::{fs::File, io::{BufReader, BufWriter}};
//!
//! let keys = KeyBundle::read(BufReader::new(File::open("keys/evaluation.keys")?), &KeyBundleExpect::new())?;
//! let key_set = keys.key_set();
//! let evaluator = BatchEvaluator::new(CompiledModel::load("mnist-cryptonets", Packing::Throughput)?, keys)?;
//! let expect = evaluator.model().expect_input(key_set);
//! let input = InputBatchReader::open(BufReader::new(File::open("batch.bfib")?), evaluator.keys().context(), &expect)?;
//! let done = evaluator.evaluate(input, BufWriter::new(File::create("result.bfrb")?), &Control::none())?;
//! println!("{} images, {} bytes of results", done.header.image_count, done.finished.len);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This crate never sees a secret key: it takes a [`blindfold_batch::KeyBundle`], which cannot
//! hold one.

mod error;
mod evaluate;
mod expect;

pub use blindfold_compiler::{CompiledModel, Plan};
pub use error::{Error, Result};
pub use evaluate::{BatchEvaluator, Evaluated, evaluate_batch};
pub use expect::BatchExpect;
