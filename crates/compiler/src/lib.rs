//! The HE model compiler: compiles a [`Network`](blindfold_nn::Network) to a CKKS execution
//! plan and runs it on ciphertexts. The network IR (`blindfold-nn`) knows nothing of
//! encryption; this crate is where it meets CKKS.
//!
//! Two packings serve two promises. **Throughput** ([`ThroughputPlan`]): slot i of every
//! ciphertext holds image i, one ciphertext per input value, so convolutions and dense layers
//! are plaintext-weight multiply-accumulates over ciphertexts and no rotation keys are needed.
//! The compiler plans levels and scales for every layer, picks the smallest parameter set that
//! fits, lists the evaluation keys, and refuses a model that does not fit, naming the layer.
//! **Latency** ([`LatencyPlan`]): one image in the slots of one ciphertext; every convolution
//! and dense layer is a matrix–vector product by the diagonal method with baby-step giant-step
//! and hoisted rotations, so one image answers in a fraction of a second.
//! [`choose_packing`] picks the cheaper packing for a job's image count ([`break_even_images`]:
//! up to how many images the latency packing wins).

mod cost;
mod elementwise;
mod error;
mod latency;
mod lower;
mod params;
mod plan;
mod poly;
mod progress;
mod stage;
mod throughput;

pub use blindfold_packing::Packing;
pub use error::{Error, Result};
pub use latency::{LatencyEngine, LatencyPlan};
pub use plan::{CompiledModel, LATENCY_BATCH_IMAGES, Plan};
pub use progress::{Control, Progress};
pub use throughput::{ThroughputEngine, ThroughputPlan};

/// How a model is compiled.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CompileOptions {
    /// Refuse a plan whose estimated peak memory (ciphertexts, weights or plaintext
    /// diagonals, keys) exceeds this many bytes, naming the layer where it does; `None`: no
    /// limit. Evaluating tools set it to what the machine has.
    pub memory_budget: Option<u64>,
    /// The largest |output| the model produces on its data, with a margin (a manifest's
    /// `output_bound`): the plan leaves exactly that much room in q_0, so outputs are as
    /// precise as it allows, and a decrypted output beyond it is refused as an overflow.
    /// `None`: 2^8.
    pub output_bound: Option<f64>,
}

/// The cheaper packing for a job of `images` images, from both plans' cost estimates: the
/// throughput packing pays a whole batch per started batch, the latency packing one evaluation
/// per image. Callers that want a packing regardless (a forced choice) simply skip this.
pub fn choose_packing(images: usize, throughput: &ThroughputPlan, latency: &LatencyPlan) -> Packing {
    let batches = images.div_ceil(throughput.batch_capacity().max(1));
    let throughput_cost = batches as f64 * throughput.estimated_cost();
    let latency_cost = images as f64 * latency.estimated_cost() * LATENCY_WALL_FACTOR;
    if latency_cost < throughput_cost { Packing::Latency } else { Packing::Throughput }
}

/// Up to how many images (within one batch) the latency packing answers a job sooner than the
/// throughput packing: the batch's estimated cost over one image's, at most a batch.
pub fn break_even_images(throughput: &ThroughputPlan, latency: &LatencyPlan) -> usize {
    let per_image = latency.estimated_cost() * LATENCY_WALL_FACTOR;
    let batch = throughput.estimated_cost();
    let images = (batch / per_image).ceil() as usize;
    images.saturating_sub(1).min(throughput.batch_capacity())
}

/// Wall time per cost unit of the latency packing against the throughput packing's. A batch
/// keeps every core busy on independent ciphertexts; one image's stages leave cores waiting
/// on each other (a rotation's decomposition before its products, a layer before the next)
/// and stream plaintext diagonals from memory. Measured on the 2-core machine (2026-12-02,
/// `blindfold bench infer`): 1.4 (mnist-cryptonets) to 2.1 (the LeNet-5 models); with 1.8 the
/// estimated break-even is 29, 46 and 71 images against 38, 40 and 62 measured.
const LATENCY_WALL_FACTOR: f64 = 1.8;
