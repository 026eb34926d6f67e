//! A registered model compiled for one packing: the single place that dispatches on the packing,
//! so the client (keys, packing, unpacking) and the evaluator agree on the layout.

use blindfold_ckks::{Fingerprint, Parameters};
use blindfold_nn::registry::{self, Model};
use blindfold_nn::{Manifest, Network};
use blindfold_packing::Packing;

use crate::{CompileOptions, LatencyPlan, Result, ThroughputPlan};

/// Images per batch file in the latency packing (each is one ciphertext, evaluated in turn).
pub const LATENCY_BATCH_IMAGES: usize = 64;

/// The execution plan of one packing.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Slot i of every ciphertext holds image i (no rotations).
    Throughput(ThroughputPlan),
    /// One image per ciphertext (rotations; one image answers quickly).
    Latency(LatencyPlan),
}

impl Plan {
    /// Compiles `network` (named `model`) for `packing`.
    pub fn compile(model: &str, network: &Network, packing: Packing) -> Result<Self> {
        Self::compile_with(model, network, packing, &CompileOptions::default())
    }

    /// [`Plan::compile`] with options (a memory budget).
    pub fn compile_with(model: &str, network: &Network, packing: Packing, options: &CompileOptions) -> Result<Self> {
        match packing {
            Packing::Throughput => Ok(Plan::Throughput(ThroughputPlan::compile_with(model, network, options)?)),
            Packing::Latency => Ok(Plan::Latency(LatencyPlan::compile_with(model, network, options)?)),
        }
    }

    /// Estimated peak memory of evaluating one batch (throughput) or one image (latency).
    pub fn peak_memory_bytes(&self) -> usize {
        match self {
            Plan::Throughput(plan) => plan.peak_memory_bytes(),
            Plan::Latency(plan) => plan.peak_memory_bytes(),
        }
    }

    /// Refuses the plan when its estimated memory exceeds `budget` bytes, naming the layer of
    /// `network` (the one it was compiled from) where it does.
    pub fn check_memory(&self, network: &Network, budget: u64) -> Result<()> {
        match self {
            Plan::Throughput(plan) => plan.check_memory(network, budget),
            Plan::Latency(plan) => plan.check_memory(network, budget),
        }
    }

    /// Fits the plan into `budget` bytes where it can (a latency plan streams diagonals) and
    /// refuses it otherwise, naming the layer of `network` (the one it was compiled from).
    pub fn fit_memory(&mut self, network: &Network, budget: u64) -> Result<()> {
        match self {
            Plan::Throughput(plan) => plan.check_memory(network, budget),
            Plan::Latency(plan) => plan.fit_memory(network, budget),
        }
    }

    /// Bytes an evaluator of the plan holds between jobs: keys as held in memory and encoded
    /// weights or diagonals.
    pub fn resident_bytes(&self) -> usize {
        match self {
            Plan::Throughput(plan) => plan.resident_bytes(),
            Plan::Latency(plan) => plan.resident_bytes(),
        }
    }

    /// Bytes of the evaluation keys the plan needs.
    pub fn key_bytes(&self) -> usize {
        match self {
            Plan::Throughput(plan) => plan.key_bytes(),
            Plan::Latency(plan) => plan.key_bytes(),
        }
    }

    /// The plan's summary (stages, levels, scales, keys, memory).
    pub fn summary(&self) -> String {
        match self {
            Plan::Throughput(plan) => plan.summary(),
            Plan::Latency(plan) => plan.summary(),
        }
    }

    /// The packing.
    pub fn packing(&self) -> Packing {
        match self {
            Plan::Throughput(_) => Packing::Throughput,
            Plan::Latency(_) => Packing::Latency,
        }
    }
    /// The CKKS parameters the plan runs under.
    pub fn params(&self) -> &Parameters {
        match self {
            Plan::Throughput(plan) => plan.params(),
            Plan::Latency(plan) => plan.params(),
        }
    }
    /// Images one batch holds.
    pub fn batch_capacity(&self) -> usize {
        match self {
            Plan::Throughput(plan) => plan.batch_capacity(),
            Plan::Latency(_) => LATENCY_BATCH_IMAGES,
        }
    }
    /// Input ciphertexts in a batch of `images` images: one per input value (throughput),
    /// the plan's ciphertexts per image, image after image (latency).
    pub fn input_ciphertexts(&self, images: usize) -> usize {
        match self {
            Plan::Throughput(plan) => plan.input_count(),
            Plan::Latency(plan) => images * plan.input_ciphertexts(),
        }
    }
    /// Result ciphertexts for a batch of `images` images: one per output value (throughput),
    /// the plan's ciphertexts per image, image after image (latency).
    pub fn output_ciphertexts(&self, images: usize) -> usize {
        match self {
            Plan::Throughput(plan) => plan.output_count(),
            Plan::Latency(plan) => images * plan.output_ciphertexts(),
        }
    }
    /// Images in a batch of `ciphertexts` input ciphertexts, if that is a whole number of
    /// images (latency); `None` for the throughput packing, whose count does not tell.
    pub fn images_in(&self, ciphertexts: usize) -> Option<usize> {
        match self {
            Plan::Throughput(_) => None,
            Plan::Latency(plan) => {
                ciphertexts.is_multiple_of(plan.input_ciphertexts()).then(|| ciphertexts / plan.input_ciphertexts())
            }
        }
    }
    /// The level inputs are encrypted at.
    pub fn input_level(&self) -> usize {
        match self {
            Plan::Throughput(plan) => plan.input_level(),
            Plan::Latency(plan) => plan.input_level(),
        }
    }
    /// The scale inputs are encoded at.
    pub fn input_scale(&self) -> f64 {
        match self {
            Plan::Throughput(plan) => plan.input_scale(),
            Plan::Latency(plan) => plan.input_scale(),
        }
    }
    /// The rotation steps whose Galois keys evaluation needs (none for throughput).
    pub fn rotation_steps(&self) -> Vec<i64> {
        self.rotation_keys().into_iter().map(|(step, _)| step).collect()
    }
    /// Each rotation step with the highest ciphertext level its key must switch: generate the
    /// keys with `KeyGenerator::galois_keys_at` (none for throughput).
    pub fn rotation_keys(&self) -> Vec<(i64, usize)> {
        match self {
            Plan::Throughput(_) => Vec::new(),
            Plan::Latency(plan) => plan.rotation_keys(),
        }
    }
    /// Packs preprocessed images (at most [`batch_capacity`](Self::batch_capacity)) into one
    /// slot vector per input ciphertext.
    pub fn pack<I: AsRef<[f64]>>(&self, images: &[I]) -> Result<Vec<Vec<f64>>> {
        match self {
            Plan::Throughput(plan) => plan.pack(images),
            Plan::Latency(plan) => {
                let mut slots = Vec::with_capacity(images.len() * plan.input_ciphertexts());
                for image in images {
                    slots.extend(plan.pack(image.as_ref())?);
                }
                Ok(slots)
            }
        }
    }
    /// [`Plan::unpack`] image by image: the outer error is a batch that does not fit the plan,
    /// the inner one an image whose outputs left the planned range ([`crate::Error::Overflow`]),
    /// so one image out of range does not hide the others.
    pub fn unpack_each(&self, outputs: &[Vec<f64>], images: usize) -> Result<Vec<Result<Vec<f64>>>> {
        match self {
            Plan::Throughput(plan) => Ok((0..images)
                .map(|i| {
                    let column: Vec<Vec<f64>> = outputs.iter().map(|o| o.get(i..=i).unwrap_or(&[]).to_vec()).collect();
                    plan.unpack(&column, 1).map(|mut one| one.pop().unwrap_or_default())
                })
                .collect()),
            Plan::Latency(plan) => {
                let per = plan.output_ciphertexts();
                if outputs.len() < images * per {
                    return Err(crate::Error::Input(format!(
                        "{} result ciphertexts for {images} images of {per} each",
                        outputs.len()
                    )));
                }
                Ok(outputs.chunks(per).take(images).map(|cts| plan.unpack(cts)).collect())
            }
        }
    }

    /// Turns decrypted output slot vectors into outputs per image, refusing any that
    /// overflowed ([`crate::Error::Overflow`]).
    pub fn unpack(&self, outputs: &[Vec<f64>], images: usize) -> Result<Vec<Vec<f64>>> {
        match self {
            Plan::Throughput(plan) => plan.unpack(outputs, images),
            Plan::Latency(_) => self.unpack_each(outputs, images)?.into_iter().collect(),
        }
    }
}

/// A registered model and its plan for one packing. Cloning copies the weights (a worker caches
/// one per model and packing and clones it into each evaluator it builds).
#[derive(Debug, Clone)]
pub struct CompiledModel {
    model: Model,
    plan: Plan,
}

impl CompiledModel {
    /// Loads the model `name` (a registered name or a model directory) and compiles it for
    /// `packing`.
    pub fn load(name: &str, packing: Packing) -> Result<Self> {
        Self::load_with(name, packing, &CompileOptions::default())
    }

    /// [`CompiledModel::load`] with options (a memory budget).
    pub fn load_with(name: &str, packing: Packing, options: &CompileOptions) -> Result<Self> {
        Self::compile(registry::load(name)?, packing, options)
    }

    /// Compiles a model already loaded (from files, or from the service's registry) for
    /// `packing`; the manifest's `output_bound` applies unless `options` sets one.
    pub fn compile(model: Model, packing: Packing, options: &CompileOptions) -> Result<Self> {
        let options = CompileOptions { output_bound: options.output_bound.or(model.manifest.output_bound), ..*options };
        let plan = Plan::compile_with(&model.manifest.name, &model.network, packing, &options)?;
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
    /// The output shape (classes, or 1 × H × W for segmentation), as result batch headers
    /// carry it.
    pub fn output_shape(&self) -> Vec<u32> {
        match self.model.manifest.output_shape() {
            blindfold_nn::Shape::Vector { len } => vec![len as u32],
            blindfold_nn::Shape::Image { channels, height, width } => {
                vec![channels as u32, height as u32, width as u32]
            }
        }
    }
    /// Refuses the model when its plan's estimated memory exceeds `budget` bytes, naming the
    /// layer where it does.
    pub fn check_memory(&self, budget: u64) -> Result<()> {
        self.plan.check_memory(&self.model.network, budget)
    }
    /// Fits the plan into `budget` bytes where it can (see [`Plan::fit_memory`]), refusing the
    /// model, naming the layer, where it cannot.
    pub fn fit_memory(&mut self, budget: u64) -> Result<()> {
        self.plan.fit_memory(&self.model.network, budget)
    }
    /// Bytes the compiled model holds in memory, for a cache budgeted in bytes: the ONNX file
    /// and the network's weights as f64 (the plan's own tables are small beside them; the
    /// engine's encoded weights belong to the evaluator, which is budgeted separately).
    pub fn resident_bytes(&self) -> usize {
        self.model.onnx.len() + self.model.network.parameters() * size_of::<f64>()
    }
    /// Where the model came from (embedded, or a directory).
    pub fn source(&self) -> &registry::Source {
        &self.model.source
    }
}
