//! A registered model compiled for one packing: the single place that dispatches on the packing,
//! so the client (keys, packing, unpacking) and the evaluator agree on the layout.

use blindfold_batch::{Expect, Packing, Uuid};
use blindfold_ckks::{Fingerprint, Parameters};
use blindfold_nn::encrypted::ThroughputPlan;
use blindfold_nn::registry::{self, Model};
use blindfold_nn::{Manifest, Network};

use crate::error::{Error, Result};

/// The execution plan of one packing.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Plan {
    /// Slot i of every ciphertext holds image i (no rotations).
    Throughput(ThroughputPlan),
}

impl Plan {
    /// Compiles `network` (named `model`) for `packing`.
    pub fn compile(model: &str, network: &Network, packing: Packing) -> Result<Self> {
        match packing {
            Packing::Throughput => Ok(Plan::Throughput(ThroughputPlan::compile(model, network)?)),
            Packing::Latency => Err(Error::LatencyNotAvailable),
            other => Err(Error::UnknownPacking(other.to_string())),
        }
    }

    /// The packing.
    pub fn packing(&self) -> Packing {
        match self {
            Plan::Throughput(_) => Packing::Throughput,
        }
    }
    /// The CKKS parameters the plan runs under.
    pub fn params(&self) -> &Parameters {
        match self {
            Plan::Throughput(plan) => plan.params(),
        }
    }
    /// Images one batch holds.
    pub fn batch_capacity(&self) -> usize {
        match self {
            Plan::Throughput(plan) => plan.batch_capacity(),
        }
    }
    /// Input ciphertexts per batch.
    pub fn input_count(&self) -> usize {
        match self {
            Plan::Throughput(plan) => plan.input_count(),
        }
    }
    /// Output ciphertexts per batch.
    pub fn output_count(&self) -> usize {
        match self {
            Plan::Throughput(plan) => plan.output_count(),
        }
    }
    /// The level inputs are encrypted at.
    pub fn input_level(&self) -> usize {
        match self {
            Plan::Throughput(plan) => plan.input_level(),
        }
    }
    /// The scale inputs are encoded at.
    pub fn input_scale(&self) -> f64 {
        match self {
            Plan::Throughput(plan) => plan.input_scale(),
        }
    }
    /// The rotation steps whose Galois keys evaluation needs (none for throughput).
    pub fn rotation_steps(&self) -> Vec<i64> {
        match self {
            Plan::Throughput(plan) => plan.rotation_steps(),
        }
    }
    /// Packs preprocessed images (at most [`batch_capacity`](Self::batch_capacity)) into one
    /// slot vector per input ciphertext.
    pub fn pack<I: AsRef<[f64]>>(&self, images: &[I]) -> Result<Vec<Vec<f64>>> {
        match self {
            Plan::Throughput(plan) => Ok(plan.pack(images)?),
        }
    }
    /// Turns decrypted output slot vectors into logits per image.
    pub fn unpack(&self, outputs: &[Vec<f64>], images: usize) -> Result<Vec<Vec<f64>>> {
        match self {
            Plan::Throughput(plan) => Ok(plan.unpack(outputs, images)?),
        }
    }
}

/// A registered model and its plan for one packing.
#[derive(Debug)]
pub struct CompiledModel {
    model: Model,
    plan: Plan,
}

impl CompiledModel {
    /// Loads the registered model `name` and compiles it for `packing`.
    pub fn load(name: &str, packing: Packing) -> Result<Self> {
        let model = registry::load(name)?;
        let plan = Plan::compile(name, &model.network, packing)?;
        Ok(Self { model, plan })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.model.manifest.name
    }
    /// The model's version, as batch headers carry it.
    pub fn version(&self) -> String {
        self.model.manifest.version.to_string()
    }
    /// The manifest (preprocessing, classes).
    pub fn manifest(&self) -> &Manifest {
        &self.model.manifest
    }
    /// The plaintext network.
    pub fn network(&self) -> &Network {
        &self.model.network
    }
    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    /// The packing.
    pub fn packing(&self) -> Packing {
        self.plan.packing()
    }
    /// The fingerprint of the plan's parameters.
    pub fn fingerprint(&self) -> Fingerprint {
        self.plan.params().fingerprint()
    }
    /// The input tensor shape (channels, height, width), as input batch headers carry it.
    pub fn input_shape(&self) -> Vec<u32> {
        self.model.manifest.input.shape.iter().map(|d| *d as u32).collect()
    }
    /// The output shape (number of classes), as result batch headers carry it.
    pub fn output_shape(&self) -> Vec<u32> {
        vec![self.model.manifest.classes.len() as u32]
    }

    /// What an input batch for this model under `key_set` must say.
    pub fn expect_input(&self, key_set: Uuid) -> Expect {
        Expect::new()
            .model(self.name(), self.version())
            .packing(self.packing())
            .key_set(key_set)
            .shape(self.input_shape())
            .ciphertext_count(self.plan.input_count() as u64)
            .level(self.plan.input_level())
    }

    /// What a result batch for this model under `key_set` must say.
    pub fn expect_result(&self, key_set: Uuid) -> Expect {
        Expect::new()
            .model(self.name(), self.version())
            .packing(self.packing())
            .key_set(key_set)
            .shape(self.output_shape())
            .ciphertext_count(self.plan.output_count() as u64)
    }
}
