//! The throughput packing: slot i of every ciphertext holds image i of the batch and each input
//! value is one ciphertext.
//!
//! Compilation lowers the network to three kinds of stage:
//!
//! - **linear**: a convolution or dense layer as a sparse matrix of real weights
//!   ([`LinearMap`]), or a sum pool (weights 1, no rescale: average pooling's 1/k² and every
//!   activation's leading coefficient and constant are folded into the next weighted layer);
//! - **square**: an activation a·x² + b·x + c is a·(x + β)² + γ with β = b/2a, γ = c − b²/4a, so
//!   only the shift β is applied to ciphertexts before squaring; a and γ fold forward;
//! - **settle**: relinearize and rescale what is still pending at the end.
//!
//! Squares are neither relinearized nor rescaled: the next linear layer runs on the 3-part
//! squares at scale S², then relinearizes its (far fewer) outputs and rescales twice. That
//! trades one key switch per activation for one per output of the next layer, and avoids
//! rescaling 3-part ciphertexts, whose rounding term is multiplied by s².
//!
//! Every scale is planned: each weighted layer's weights are encoded at the scale that brings
//! its output back to the target scale T after its rescales, and the last one to T_f, small
//! enough that the logits fit q_0.

use std::sync::Arc;

use blindfold_ckks::{
    Ciphertext, Context, Evaluator, LinearMap, Parameters, ParametersBuilder, RelinKey, security_bound,
};
use rayon::prelude::*;

use crate::cost::Costs;
use crate::{Control, Error, Packing, Progress, Result};
use blindfold_nn::ir::{Layer, Network, Shape};

/// Bits of every ciphertext prime. Small residues are what makes the linear layers fast: the
/// kernel multiplies 32-bit lanes and sums 64 or more products in a 64-bit word before reducing.
pub(super) const PRIME_BITS: u32 = 29;
/// Bits of q_0, the prime the logits are decrypted under: the final scale is q_0 / 2^(1 +
/// LOGIT_HEADROOM_BITS), so its rounding error (about 2^12 in slot units after the last rescale
/// at N = 2^14) decides the logits' precision. Each bit halves the logit error: DermaMNIST's
/// largest error over its test set is 4.1e-2 with 29 bits, 1.9e-2 with 30 and 0.7-0.85e-2 with
/// 31, and its agreement 99.87 %, 99.90-99.95 % and 99.95 %. 31 bits is the most the vector
/// kernels take (32-bit signed lanes); with centred weights the linear layers still sum 8 or
/// more products per reduction on this prime.
const BASE_BITS: u32 = 31;
/// Largest special prime with one-prime digits; smaller when the budget is tight (never below
/// BASE_BITS + 1, so P stays above every q_i).
const SPECIAL_BITS: u32 = 40;
/// Special primes with digits of several primes: base conversions between primes multiply
/// 31-bit residues in 64-bit lanes.
const HYBRID_SPECIAL_BITS: u32 = 31;
/// Intermediate scale: one bit below the primes, so a rescale brings S² back near T.
pub(super) const LOG_TARGET_SCALE: i32 = PRIME_BITS as i32 - 1;
/// Bits of head room above the final scale in q_0 for the logits: |logit| < 2^8 with the sign
/// bit (DermaMNIST's largest test-set logit is 131).
pub(super) const LOGIT_HEADROOM_BITS: i32 = 8;

/// One step of the plan.
#[derive(Debug, Clone)]
struct Stage {
    name: String,
    layer: usize,
    op: StageOp,
    level_in: usize,
    level_out: usize,
    scale_out: f64,
    /// Relative cost, for progress fractions.
    cost: f64,
}

#[derive(Debug, Clone)]
enum StageOp {
    Linear {
        inputs: usize,
        rows: Vec<Vec<(usize, f64)>>,
        bias: Vec<f64>,
        /// Map output j is tensor element order[j] (convolutions run position-major so that the
        /// output channels of one position, which share inputs, are adjacent rows).
        order: Option<Vec<usize>>,
        weight_scale: f64,
        relinearize: bool,
        rescales: usize,
        /// A sum pool (weights 1, no bias): what a streamed segment folds into plain additions.
        pool: bool,
    },
    Square {
        shift: f64,
        relinearize: bool,
        rescales: usize,
    },
    Settle {
        relinearize: bool,
        rescales: usize,
    },
}

/// A compiled throughput plan for one model: parameters, levels and scales of every stage, and
/// the keys evaluation needs. Independent of any key; reused for every batch of the model.
#[derive(Debug, Clone)]
pub struct ThroughputPlan {
    model: String,
    params: Parameters,
    input_len: usize,
    output_len: usize,
    input_level: usize,
    input_scale: f64,
    stages: Vec<Stage>,
    /// Runs of stages evaluated together, one pooled position at a time.
    segments: Vec<Segment>,
    /// The logits are scale · decrypted + shift (a trailing affine map folded out of the circuit).
    output_affine: (f64, f64),
}

/// Convolution → square → sum pool → (settle), streamed: for each pooled position, only the
/// convolution outputs under its window are computed, squared and summed. The layer's full
/// output (k² times the pooled one, and 3-part after the square) is never held, which is what
/// bounds a LeNet batch's memory; the settle (relinearize and rescale) runs on the pooled sums,
/// k² times fewer key switches than on the squares. Stage indices refer to `stages`.
#[derive(Debug, Clone)]
struct Segment {
    /// What progress reports call it.
    name: String,
    conv: usize,
    square: usize,
    settle: Option<usize>,
    pool: usize,
    /// Pooled outputs per position (the channels).
    channels: usize,
    /// Positions (pooled outputs per channel); pooled output c·positions + s.
    positions: usize,
    /// Convolution outputs under one window.
    window: usize,
}

/// What lowering produces before levels and scales are known.
#[derive(Debug)]
pub(super) enum Lowered {
    Weighted {
        layer: usize,
        name: String,
        inputs: usize,
        rows: Vec<Vec<(usize, f64)>>,
        bias: Vec<f64>,
        order: Option<Vec<usize>>,
    },
    SumPool {
        layer: usize,
        name: String,
        inputs: usize,
        rows: Vec<Vec<(usize, f64)>>,
    },
    Square {
        layer: usize,
        name: String,
        shift: f64,
    },
}

impl ThroughputPlan {
    /// Compiles `network` (named `model`) for the throughput packing.
    pub fn compile(model: &str, network: &Network) -> Result<Self> {
        let (lowered, output_affine) = lower(network)?;
        // Levels: every weighted layer rescales once for its weights plus once per square
        // pending before it; a square after a square settles the first one.
        let mut pending = 0usize;
        let mut levels_used = Vec::with_capacity(lowered.len());
        for op in &lowered {
            let used = match op {
                Lowered::Weighted { .. } => {
                    let used = pending + 1;
                    pending = 0;
                    used
                }
                Lowered::SumPool { .. } => 0,
                Lowered::Square { .. } => {
                    let used = pending;
                    pending = 1;
                    used
                }
            };
            levels_used.push(used);
        }
        let depth = levels_used.iter().sum::<usize>() + pending;
        let params = choose_parameters(depth).map_err(|max_depth| {
            // Name the layer at which the cumulative depth passes what the largest set holds.
            let mut total = 0;
            let (index, name) = lowered
                .iter()
                .zip(&levels_used)
                .find_map(|(op, used)| {
                    total += used;
                    (total > max_depth).then(|| op_layer(op))
                })
                .unwrap_or_else(|| lowered.last().map(op_layer).unwrap_or((0, "output".into())));
            Error::DoesNotFit {
                index,
                layer: name,
                reason: format!(
                    "the network needs {depth} levels; the largest 128-bit parameter set with {PRIME_BITS}-bit primes \
                     (N = 2^15) holds {max_depth}, exceeded by {}",
                    depth - max_depth
                ),
            }
        })?;
        plan_scales(model, params, network, lowered, output_affine, depth)
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.model
    }
    /// The packing.
    pub fn packing(&self) -> Packing {
        Packing::Throughput
    }
    /// The parameter set the plan was compiled for.
    pub fn params(&self) -> &Parameters {
        &self.params
    }
    /// Images per batch (one per slot).
    pub fn batch_capacity(&self) -> usize {
        self.params.slots()
    }
    /// Input ciphertexts per batch (values per image).
    pub fn input_count(&self) -> usize {
        self.input_len
    }
    /// Output ciphertexts per batch (logits per image).
    pub fn output_count(&self) -> usize {
        self.output_len
    }
    /// The level inputs are encrypted at.
    pub fn input_level(&self) -> usize {
        self.input_level
    }
    /// The scale inputs are encoded at.
    pub fn input_scale(&self) -> f64 {
        self.input_scale
    }
    /// The multiplicative depth used.
    pub fn depth(&self) -> usize {
        self.input_level
    }
    /// Estimated work of one batch, in multiply-adds of one coefficient (the unit
    /// [`crate::choose_packing`] compares packings in).
    pub fn estimated_cost(&self) -> f64 {
        self.stages.iter().map(|stage| stage.cost).sum::<f64>() * self.params.n() as f64
    }
    /// Evaluation keys needed: relinearization only, no rotations.
    pub fn rotation_steps(&self) -> Vec<i64> {
        Vec::new()
    }

    /// Transposes a batch of images (each `input_count` values) into one slot vector per input
    /// ciphertext: vector k holds value k of every image.
    pub fn pack<I: AsRef<[f64]>>(&self, images: &[I]) -> Result<Vec<Vec<f64>>> {
        if images.is_empty() || images.len() > self.batch_capacity() {
            return Err(Error::Input(format!("{} images for a batch of 1..={}", images.len(), self.batch_capacity())));
        }
        for (i, image) in images.iter().enumerate() {
            if image.as_ref().len() != self.input_len {
                return Err(Error::Input(format!(
                    "image {i} has {} values, the model takes {}",
                    image.as_ref().len(),
                    self.input_len
                )));
            }
        }
        Ok((0..self.input_len).map(|k| images.iter().map(|image| image.as_ref()[k]).collect()).collect())
    }

    /// Turns the decrypted output slot vectors back into logits per image.
    pub fn unpack(&self, outputs: &[Vec<f64>], images: usize) -> Result<Vec<Vec<f64>>> {
        if outputs.len() != self.output_len {
            return Err(Error::Input(format!("{} outputs, the model has {}", outputs.len(), self.output_len)));
        }
        if outputs.iter().any(|o| o.len() < images) {
            return Err(Error::Input(format!("fewer than {images} slots in an output")));
        }
        let (scale, shift) = self.output_affine;
        Ok((0..images).map(|i| outputs.iter().map(|o| scale * o[i] + shift).collect()).collect())
    }

    /// One line per stage: what it does, levels in and out, and the scale after it.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "throughput plan for {}: {}, {} slots, input level {}, scale 2^{:.1}\n",
            self.model,
            crate::parameter_line(&self.params),
            self.batch_capacity(),
            self.input_level,
            self.input_scale.log2()
        );
        for (i, stage) in self.stages.iter().enumerate() {
            let what = match &stage.op {
                StageOp::Linear { rows, weight_scale, relinearize, rescales, .. } => format!(
                    "{} outputs, {} weights at 2^{:.1}{}, rescale ×{rescales}",
                    rows.len(),
                    rows.iter().map(Vec::len).sum::<usize>(),
                    weight_scale.log2(),
                    if *relinearize { ", relinearize" } else { "" }
                ),
                StageOp::Square { shift, .. } => format!("(x + {shift:.4})², kept 3-part"),
                StageOp::Settle { relinearize, rescales } => {
                    format!("settle: relinearize {relinearize}, rescale ×{rescales}")
                }
            };
            out.push_str(&crate::stage_line(
                i,
                stage.layer,
                &stage.name,
                (stage.level_in, stage.level_out),
                stage.scale_out,
                &what,
            ));
        }
        for segment in &self.segments {
            out.push_str(&format!(
                "     stages {}-{} streamed: {} pooled positions × {} channels, {} convolution outputs per window{}\n",
                segment.conv,
                segment.end(),
                segment.positions,
                segment.channels,
                segment.window,
                if segment.settle.is_some() { ", settled after pooling" } else { "" }
            ));
        }
        out
    }
}

/// A plan bound to a context: every weight reduced per prime once, ready to evaluate batches.
#[derive(Debug)]
pub struct ThroughputEngine {
    plan: ThroughputPlan,
    context: Arc<Context>,
    evaluator: Evaluator,
    maps: Vec<Option<LinearMap>>,
    /// One map per plan segment: the convolution's rows in pooled-position order.
    segment_maps: Vec<LinearMap>,
}

impl ThroughputEngine {
    /// Prepares `plan` for `context` (which must use the plan's parameters).
    pub fn new(plan: ThroughputPlan, context: &Arc<Context>) -> Result<Self> {
        if context.params().fingerprint() != plan.params.fingerprint() {
            return Err(Error::Input("the context's parameters are not the plan's".into()));
        }
        let streamed = |index: usize| plan.segments.iter().any(|s| s.conv == index || s.pool == index);
        let maps = plan
            .stages
            .iter()
            .enumerate()
            .map(|(index, stage)| match &stage.op {
                StageOp::Linear { inputs, rows, bias, weight_scale, .. } if !streamed(index) => {
                    LinearMap::new(context, *inputs, rows, bias.clone(), stage.level_in, *weight_scale).map(Some)
                }
                _ => Ok(None),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let segment_maps = plan
            .segments
            .iter()
            .map(|segment| segment_map(&plan.stages, segment, context))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { plan, context: context.clone(), evaluator: Evaluator::new(context), maps, segment_maps })
    }

    /// The plan.
    pub fn plan(&self) -> &ThroughputPlan {
        &self.plan
    }

    /// The context.
    pub fn context(&self) -> &Arc<Context> {
        &self.context
    }

    /// Runs the plan on one batch: `inputs[k]` encrypts value k of every image. Returns one
    /// ciphertext per output at level 0. Uses rayon's current pool.
    pub fn evaluate(
        &self,
        inputs: Vec<Ciphertext>,
        relin: &RelinKey,
        control: &Control<'_>,
    ) -> Result<Vec<Ciphertext>> {
        let plan = &self.plan;
        if inputs.len() != plan.input_len {
            return Err(Error::Input(format!("{} input ciphertexts, the plan takes {}", inputs.len(), plan.input_len)));
        }
        for (k, ct) in inputs.iter().enumerate() {
            if ct.level() != plan.input_level || ct.size() != 2 {
                return Err(Error::Input(format!(
                    "input {k} is at level {} with {} parts; the plan needs level {} with 2",
                    ct.level(),
                    ct.size(),
                    plan.input_level
                )));
            }
        }
        let total_cost: f64 = plan.stages.iter().map(|s| s.cost).sum::<f64>().max(1e-9);
        let mut done = 0.0;
        let mut current = inputs;
        let ev = &self.evaluator;
        let mut index = 0;
        while let Some(stage) = plan.stages.get(index) {
            control.check()?;
            if let Some((segment, map)) =
                plan.segments.iter().zip(&self.segment_maps).find(|(segment, _)| segment.conv == index)
            {
                let cost: f64 = plan.stages[segment.conv..=segment.end()].iter().map(|s| s.cost).sum();
                let progress = |fraction: f64| {
                    control.report(Progress {
                        stage: index,
                        stages: plan.stages.len(),
                        name: &segment.name,
                        fraction: (done + fraction * cost) / total_cost,
                    })
                };
                let _span = tracing::debug_span!("segment", index, name = %stage.name).entered();
                current = self.run_segment(segment, map, current, relin, control, &progress)?;
                done += cost;
                index = segment.end() + 1;
                continue;
            }
            control.report(Progress {
                stage: index,
                stages: plan.stages.len(),
                name: &stage.name,
                fraction: done / total_cost,
            });
            let _span = tracing::debug_span!("stage", index, name = %stage.name).entered();
            current = match (&stage.op, &self.maps[index]) {
                (StageOp::Linear { relinearize, rescales, order, .. }, Some(map)) => {
                    let refs: Vec<&Ciphertext> = current.iter().collect();
                    let outputs = ev.apply_linear(map, &refs)?;
                    drop(refs);
                    drop(current);
                    let outputs = match order {
                        Some(order) => reorder(outputs, order),
                        None => outputs,
                    };
                    settle_all(ev, outputs, *relinearize, *rescales, relin, control)?
                }
                (StageOp::Square { shift, relinearize, rescales }, _) => {
                    let settled = settle_all(ev, current, *relinearize, *rescales, relin, control)?;
                    settled
                        .into_par_iter()
                        .map(|ct| {
                            control.check()?;
                            Ok(ev.square_shifted(&ct, *shift)?)
                        })
                        .collect::<Result<Vec<_>>>()?
                }
                (StageOp::Settle { relinearize, rescales }, _) => {
                    settle_all(ev, current, *relinearize, *rescales, relin, control)?
                }
                (StageOp::Linear { .. }, None) => {
                    return Err(Error::Internal("engine has no map for a linear stage".into()));
                }
            };
            done += stage.cost;
            index += 1;
        }
        control.report(Progress { stage: plan.stages.len(), stages: plan.stages.len(), name: "done", fraction: 1.0 });
        // The download is smallest at level 0.
        current.into_par_iter().map(|ct| Ok(ev.drop_to_level(&ct, 0)?)).collect()
    }
}

impl ThroughputEngine {
    /// Runs one streamed segment: pooled positions in parallel, each computing its window's
    /// convolution outputs for every channel, settling, squaring and summing them.
    fn run_segment(
        &self,
        segment: &Segment,
        map: &LinearMap,
        inputs: Vec<Ciphertext>,
        relin: &RelinKey,
        control: &Control<'_>,
        progress: &(dyn Fn(f64) + Sync),
    ) -> Result<Vec<Ciphertext>> {
        let ev = &self.evaluator;
        let stages = &self.plan.stages;
        let settle_of = |index: usize| match stages[index].op {
            StageOp::Linear { relinearize, rescales, .. }
            | StageOp::Square { relinearize, rescales, .. }
            | StageOp::Settle { relinearize, rescales } => (relinearize, rescales),
        };
        let conv = settle_of(segment.conv);
        let square = settle_of(segment.square);
        let shift = match stages[segment.square].op {
            StageOp::Square { shift, .. } => shift,
            _ => 0.0,
        };
        let last = segment.settle.map_or((false, 0), settle_of);
        let (channels, block) = (segment.channels, segment.channels * segment.window);
        let refs: Vec<&Ciphertext> = inputs.iter().collect();
        let finished = std::sync::atomic::AtomicUsize::new(0);
        progress(0.0);
        let pooled = (0..segment.positions)
            .into_par_iter()
            .map_init(Vec::new, |outputs, position| {
                control.check()?;
                // The convolution's outputs reuse one buffer per worker: no fresh, zeroed
                // allocation per position.
                ev.apply_linear_rows_into(map, &refs, position * block..(position + 1) * block, outputs)?;
                let mut sums: Vec<Option<Ciphertext>> = (0..channels).map(|_| None).collect();
                for (k, ct) in outputs.iter_mut().enumerate() {
                    settle_in_place(ev, ct, conv, relin)?;
                    settle_in_place(ev, ct, square, relin)?;
                    match &mut sums[k % channels] {
                        Some(sum) => ev.add_square_shifted(sum, ct, shift)?,
                        empty => *empty = Some(ev.square_shifted(ct, shift)?),
                    }
                }
                let done = finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if done.is_multiple_of(16) {
                    progress(done as f64 / segment.positions as f64);
                }
                sums.into_iter()
                    .map(|sum| {
                        let sum = sum.ok_or_else(|| Error::Internal("empty pooling window".into()))?;
                        settle(ev, sum, last, relin)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        drop(refs);
        drop(inputs);
        // Pooled output c·positions + s is channel c of position s.
        let mut by_position: Vec<std::vec::IntoIter<Ciphertext>> = pooled.into_iter().map(Vec::into_iter).collect();
        let mut outputs = Vec::with_capacity(channels * segment.positions);
        for _ in 0..channels {
            for position in &mut by_position {
                outputs.push(position.next().ok_or_else(|| Error::Internal("short pooled position".into()))?);
            }
        }
        Ok(outputs)
    }
}

/// Relinearizes (if asked and 3-part) and rescales `rescales` times.
fn settle(ev: &Evaluator, ct: Ciphertext, how: (bool, usize), relin: &RelinKey) -> Result<Ciphertext> {
    let mut ct = ct;
    settle_in_place(ev, &mut ct, how, relin)?;
    Ok(ct)
}

/// [`settle`] in place.
fn settle_in_place(
    ev: &Evaluator,
    ct: &mut Ciphertext,
    (relinearize, rescales): (bool, usize),
    relin: &RelinKey,
) -> Result<()> {
    if relinearize && ct.size() == 3 {
        ev.relinearize_assign(ct, relin)?;
    }
    for _ in 0..rescales {
        ev.rescale_assign(ct)?;
    }
    Ok(())
}

/// The convolution's rows in the order a segment consumes them: for each pooled position, each
/// window element, each channel (so the channels of one position, which share their inputs,
/// stay adjacent).
// The nested index loops spell out the row order, which is the point of this function.
#[allow(clippy::needless_range_loop)]
fn segment_map(stages: &[Stage], segment: &Segment, context: &Context) -> Result<LinearMap> {
    let (StageOp::Linear { inputs, rows, bias, order, weight_scale, .. }, StageOp::Linear { rows: pool_rows, .. }) =
        (&stages[segment.conv].op, &stages[segment.pool].op)
    else {
        return Err(Error::Internal("a segment does not start with a convolution and end with a pool".into()));
    };
    // Tensor index → row of the convolution's map.
    let mut row_of = vec![usize::MAX; rows.len()];
    match order {
        Some(order) => order.iter().enumerate().for_each(|(row, &tensor)| row_of[tensor] = row),
        None => row_of.iter_mut().enumerate().for_each(|(tensor, row)| *row = tensor),
    }
    let mut fused_rows = Vec::with_capacity(segment.positions * segment.window * segment.channels);
    let mut fused_bias = Vec::with_capacity(fused_rows.capacity());
    for position in 0..segment.positions {
        for element in 0..segment.window {
            for channel in 0..segment.channels {
                let tensor = pool_rows[channel * segment.positions + position][element].0;
                let row = *row_of.get(tensor).filter(|&&r| r != usize::MAX).ok_or_else(|| {
                    Error::Internal(format!("pool reads convolution output {tensor}, which does not exist"))
                })?;
                fused_rows.push(rows[row].clone());
                fused_bias.push(bias[row]);
            }
        }
    }
    Ok(LinearMap::new(context, *inputs, &fused_rows, fused_bias, stages[segment.conv].level_in, *weight_scale)?)
}

/// Puts map outputs into tensor order: output j goes to position order[j].
fn reorder(outputs: Vec<Ciphertext>, order: &[usize]) -> Vec<Ciphertext> {
    let mut slots: Vec<Option<Ciphertext>> = (0..outputs.len()).map(|_| None).collect();
    for (ct, &position) in outputs.into_iter().zip(order) {
        slots[position] = Some(ct);
    }
    slots.into_iter().flatten().collect()
}

fn settle_all(
    ev: &Evaluator,
    cts: Vec<Ciphertext>,
    relinearize: bool,
    rescales: usize,
    relin: &RelinKey,
    control: &Control<'_>,
) -> Result<Vec<Ciphertext>> {
    if !relinearize && rescales == 0 {
        return Ok(cts);
    }
    cts.into_par_iter()
        .map(|ct| {
            control.check()?;
            settle(ev, ct, (relinearize, rescales), relin)
        })
        .collect()
}

pub(super) fn op_layer(op: &Lowered) -> (usize, String) {
    match op {
        Lowered::Weighted { layer, name, .. }
        | Lowered::SumPool { layer, name, .. }
        | Lowered::Square { layer, name, .. } => (*layer, name.clone()),
    }
}

/// The smallest 128-bit set with `depth` rescale primes of PRIME_BITS bits plus a BASE_BITS
/// q_0; on failure the largest depth any set holds.
///
/// Key switching (relinearization, rotations) then takes the cheapest digit shape the security
/// bound leaves room for: with one special prime of up to SPECIAL_BITS, a digit is one prime
/// and a key has (L + 1)·(L + 2) rows; with digits of α primes and k special primes of
/// HYBRID_SPECIAL_BITS whose product covers a digit, ⌈(L + 1)/α⌉·(L + 1 + k) rows — the size of
/// every key and the work of every key switch. At N = 2^14 and depth 7 that is α = 4 with four
/// 31-bit special primes: 24 rows instead of 72.
pub(super) fn choose_parameters(depth: usize) -> std::result::Result<Parameters, usize> {
    let mut bits = vec![BASE_BITS];
    bits.extend(std::iter::repeat_n(PRIME_BITS, depth));
    let mut best_depth = 0;
    for log_n in 12..=15u32 {
        let Some(bound) = security_bound(log_n) else { continue };
        let ciphertext_bits: u32 = bits.iter().sum();
        let room = bound.saturating_sub(ciphertext_bits);
        // q_0, P (above every q_i, so at least BASE_BITS + 1) and as many rescale primes as fit.
        best_depth = best_depth.max((bound.saturating_sub(2 * BASE_BITS + 1) / PRIME_BITS) as usize);
        if room < BASE_BITS + 1 {
            continue;
        }
        let limbs = bits.len();
        let mut shapes: Vec<(usize, Vec<u32>, usize)> = vec![(1, vec![room.min(SPECIAL_BITS)], limbs * (limbs + 1))];
        for alpha in 2..=limbs {
            // The largest digit is the first (it holds q_0); its bits, plus one for the
            // special primes falling below their powers of two.
            let digit: u32 = bits.iter().take(alpha).sum::<u32>() + 1;
            let count = digit.div_ceil(HYBRID_SPECIAL_BITS) as usize;
            if count as u32 * HYBRID_SPECIAL_BITS <= room && count <= 8 {
                let rows = limbs.div_ceil(alpha) * (limbs + count);
                shapes.push((alpha, vec![HYBRID_SPECIAL_BITS; count], rows));
            }
        }
        shapes.sort_by_key(|&(alpha, _, rows)| (rows, alpha));
        for (alpha, special, _) in shapes {
            let built = ParametersBuilder::new(log_n)
                .ciphertext_bits(&bits)
                .special_bits(&special)
                .digit_primes(alpha)
                .log_scale(LOG_TARGET_SCALE as u32)
                .build();
            if let Ok(params) = built {
                return Ok(params);
            }
        }
    }
    Err(best_depth)
}

/// Lowers the layer chain to weighted maps, sum pools and squares, folding every scalar factor
/// and constant forward. Returns the ops and the affine map (scale, shift) left on the output.
pub(super) fn lower(network: &Network) -> Result<(Vec<Lowered>, (f64, f64))> {
    let mut ops = Vec::new();
    let (mut factor, mut constant) = (1.0f64, 0.0f64);
    let mut shape = network.input();
    for (index, (layer, &out_shape)) in network.layers().iter().zip(network.shapes()).enumerate() {
        let name = layer.to_string();
        let unsupported =
            |reason: String| Error::Unsupported { index, layer: name.clone(), packing: "throughput", reason };
        match layer {
            Layer::Flatten => {}
            Layer::AvgPool2d(pool) => {
                let rows = pool_rows(pool.kernel, pool.stride, shape, out_shape);
                ops.push(Lowered::SumPool { layer: index, name: name.clone(), inputs: shape.len(), rows });
                factor /= (pool.kernel[0] * pool.kernel[1]) as f64;
            }
            Layer::Conv2d(_) | Layer::Dense(_) => {
                let (rows, bias, order) = weighted_rows(layer, shape, out_shape);
                let rows: Vec<Vec<(usize, f64)>> =
                    rows.into_iter().map(|row| row.into_iter().map(|(k, w)| (k, w * factor)).collect()).collect();
                // The constant every input carries adds constant · Σ_k w_k (before the factor).
                let bias = bias
                    .iter()
                    .zip(&rows)
                    .map(|(b, row)| {
                        b + if factor != 0.0 {
                            constant / factor * row.iter().map(|(_, w)| w).sum::<f64>()
                        } else {
                            0.0
                        }
                    })
                    .collect();
                ops.push(Lowered::Weighted {
                    layer: index,
                    name: name.clone(),
                    inputs: shape.len(),
                    rows,
                    bias,
                    order,
                });
                factor = 1.0;
                constant = 0.0;
            }
            Layer::Activation(poly) => {
                let c = |i: usize| poly.coefficients.get(i).copied().unwrap_or(0.0);
                match poly.degree() {
                    2 => {
                        if factor == 0.0 {
                            return Err(unsupported("its input is identically constant".into()));
                        }
                        // z = factor·u + constant; p(z) = c2 (z + β)² + γ = c2·factor² (u + (constant + β)/factor)² + γ.
                        let beta = c(1) / (2.0 * c(2));
                        let gamma = c(0) - c(1) * c(1) / (4.0 * c(2));
                        ops.push(Lowered::Square {
                            layer: index,
                            name: name.clone(),
                            shift: (constant + beta) / factor,
                        });
                        factor = c(2) * factor * factor;
                        constant = gamma;
                    }
                    0 | 1 => {
                        factor *= c(1);
                        constant = c(1) * constant + c(0);
                    }
                    d => {
                        return Err(unsupported(format!(
                            "degree {d} polynomial; only degree ≤ 2 activations are compiled"
                        )));
                    }
                }
            }
        }
        shape = out_shape;
    }
    Ok((ops, (factor, constant)))
}

/// Walks the lowered ops with (level, scale, parts) and fixes every weight scale.
fn plan_scales(
    model: &str,
    params: Parameters,
    network: &Network,
    lowered: Vec<Lowered>,
    output_affine: (f64, f64),
    depth: usize,
) -> Result<ThroughputPlan> {
    let moduli: Vec<f64> = params.moduli().iter().map(|&q| q as f64).collect();
    let target = 2f64.powi(LOG_TARGET_SCALE);
    let final_target = 2f64.powi(((moduli[0]).log2().floor() as i32) - 1 - LOGIT_HEADROOM_BITS);
    let last_weighted = lowered.iter().rposition(|op| matches!(op, Lowered::Weighted { .. }));
    // For each op: the values it leaves and the next weighted layer's (non-zeros, outputs).
    // Squares followed by a sum pool are settled after the pool, on k² times fewer values.
    let lookahead: Vec<Option<(usize, usize, usize)>> = (0..lowered.len())
        .map(|i| {
            let next_inputs = match (&lowered[i], lowered.get(i + 1)?) {
                (Lowered::Square { .. }, Lowered::SumPool { .. }) | (_, Lowered::Square { .. }) => return None,
                (Lowered::SumPool { rows, .. }, _) => rows.len(),
                (_, Lowered::Weighted { inputs, .. } | Lowered::SumPool { inputs, .. }) => *inputs,
            };
            lowered[i + 1..].iter().find_map(|op| match op {
                Lowered::Weighted { rows, .. } => Some((next_inputs, rows.iter().map(Vec::len).sum(), rows.len())),
                Lowered::Square { .. } => Some((next_inputs, 0, usize::MAX)),
                Lowered::SumPool { .. } => None,
            })
        })
        .collect();
    let (mut level, mut scale, mut parts, mut pending) = (depth, target, 2usize, 0usize);
    // Ciphertexts the last op left (one per value of its output tensor).
    let mut values = network.input().len();
    let mut stages = Vec::with_capacity(lowered.len() + 1);
    for (i, op) in lowered.into_iter().enumerate() {
        let ahead = lookahead[i];
        let op_index = op_layer(&op).0;
        match op {
            Lowered::SumPool { layer, name, inputs, rows } => {
                let cost =
                    rows.iter().map(Vec::len).sum::<usize>() as f64 * Costs::new(&params, level).multiply_add(parts);
                values = rows.len();
                stages.push(Stage {
                    name: format!("sum-pool ({name})"),
                    layer,
                    level_in: level,
                    level_out: level,
                    scale_out: scale,
                    cost,
                    op: StageOp::Linear {
                        inputs,
                        bias: vec![0.0; rows.len()],
                        rows,
                        order: None,
                        weight_scale: 1.0,
                        relinearize: false,
                        rescales: 0,
                        pool: true,
                    },
                });
            }
            Lowered::Weighted { layer, name, inputs, rows, bias, order } => {
                let rescales = pending + 1;
                if level < rescales {
                    return Err(Error::DoesNotFit {
                        index: layer,
                        layer: name,
                        reason: "ran out of levels while planning".into(),
                    });
                }
                let dropped: f64 = (0..rescales).map(|j| moduli[level - j]).product();
                let out_target = if Some(i) == last_weighted { final_target } else { target };
                let weight_scale = out_target * dropped / scale;
                if weight_scale < 1.0 {
                    return Err(Error::DoesNotFit {
                        index: layer,
                        layer: name,
                        reason: format!("weights would be encoded at scale 2^{:.1} < 1", weight_scale.log2()),
                    });
                }
                let relinearize = parts == 3;
                let costs = Costs::new(&params, level);
                let cost = rows.iter().map(Vec::len).sum::<usize>() as f64 * costs.multiply_add(parts)
                    + rows.len() as f64
                        * (if relinearize { costs.key_switch() } else { 0.0 } + rescale_cost(&params, level, rescales));
                values = rows.len();
                stages.push(Stage {
                    name,
                    layer,
                    level_in: level,
                    level_out: level - rescales,
                    scale_out: out_target,
                    cost,
                    op: StageOp::Linear { inputs, rows, bias, order, weight_scale, relinearize, rescales, pool: false },
                });
                level -= rescales;
                scale = out_target;
                parts = 2;
                pending = 0;
            }
            Lowered::Square { layer, name, shift } => {
                let relinearize = parts == 3;
                if level < pending {
                    return Err(Error::DoesNotFit {
                        index: layer,
                        layer: name,
                        reason: "ran out of levels while planning".into(),
                    });
                }
                for j in 0..pending {
                    scale /= moduli[level - j];
                }
                let level_in = level;
                let cost = values as f64
                    * (rescale_cost(&params, level, pending) + Costs::new(&params, level - pending).square());
                level -= pending;
                stages.push(Stage {
                    name: format!("square ({name})"),
                    layer,
                    level_in,
                    level_out: level,
                    scale_out: scale * scale,
                    cost,
                    op: StageOp::Square { shift, relinearize, rescales: pending },
                });
                scale *= scale;
                parts = 3;
                pending = 1;
            }
        }
        // Squares just made (or just pooled) and still 3-part: settle them here if that is
        // cheaper than letting the next layer run on them.
        if parts == 3
            && pending == 1
            && let Some((squares, nonzeros, outputs)) = ahead
            && settle_squares_early(squares, nonzeros, outputs, &params, level)
        {
            // Relinearize and rescale the squares now: the next layer then runs on 2-part
            // ciphertexts one prime shorter, which beats relinearizing its outputs when its
            // fan-in is large.
            scale /= moduli[level];
            stages.push(Stage {
                name: format!("relinearize+rescale ({squares} squares)"),
                layer: op_index,
                level_in: level,
                level_out: level - 1,
                scale_out: scale,
                cost: squares as f64 * (Costs::new(&params, level).key_switch() + rescale_cost(&params, level, 1)),
                op: StageOp::Settle { relinearize: true, rescales: 1 },
            });
            level -= 1;
            parts = 2;
            pending = 0;
        }
    }
    if parts == 3 || pending > 0 {
        let layer = network.layers().len().saturating_sub(1);
        for j in 0..pending {
            scale /= moduli[level - j];
        }
        stages.push(Stage {
            name: "settle".into(),
            layer,
            level_in: level,
            level_out: level - pending,
            scale_out: scale,
            cost: values as f64
                * (if parts == 3 { Costs::new(&params, level).key_switch() } else { 0.0 }
                    + rescale_cost(&params, level, pending)),
            op: StageOp::Settle { relinearize: parts == 3, rescales: pending },
        });
    }
    let segments = find_segments(&stages, network);
    Ok(ThroughputPlan {
        model: model.to_owned(),
        params,
        input_len: network.input().len(),
        output_len: network.output().len(),
        input_level: depth,
        input_scale: target,
        stages,
        segments,
        output_affine,
    })
}

impl Segment {
    /// The segment's last stage.
    fn end(&self) -> usize {
        self.settle.unwrap_or(self.pool)
    }
}

/// Every convolution → square → sum pool → (settle) run whose pool windows all have the same
/// size and whose pool is channel-major: those stream one pooled position at a time.
fn find_segments(stages: &[Stage], network: &Network) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut i = 0;
    while i + 2 < stages.len() {
        let found = (|| {
            let StageOp::Linear { order: Some(_), pool: false, .. } = &stages[i].op else { return None };
            let StageOp::Square { .. } = &stages[i + 1].op else { return None };
            let pool = i + 2;
            let StageOp::Linear { rows, pool: true, .. } = &stages[pool].op else { return None };
            let settle = stages.get(pool + 1).and_then(|s| matches!(s.op, StageOp::Settle { .. }).then_some(pool + 1));
            let Shape::Image { channels, height, width } = *network.shapes().get(stages[pool].layer)? else {
                return None;
            };
            let window = rows.first()?.len();
            let uniform = rows.iter().all(|row| row.len() == window && row.iter().all(|&(_, w)| w == 1.0));
            (uniform && window > 0 && rows.len() == channels * height * width).then(|| Segment {
                name: format!("{} + square + pool", stages[i].name),
                conv: i,
                square: i + 1,
                settle,
                pool,
                channels,
                positions: height * width,
                window,
            })
        })();
        match found {
            Some(segment) => {
                i = segment.end() + 1;
                segments.push(segment);
            }
            None => i += 1,
        }
    }
    segments
}

/// `rescales` rescales of a 2-part ciphertext from `level` down.
fn rescale_cost(params: &Parameters, level: usize, rescales: usize) -> f64 {
    (0..rescales).map(|j| Costs::new(params, level - j).rescale(2)).sum()
}

/// Whether relinearizing and rescaling `squares` 3-part squares at `level` costs less than
/// running the next layer (`nonzeros` weights, `outputs` rows) on 3-part inputs one level
/// higher and relinearizing its outputs instead.
fn settle_squares_early(squares: usize, nonzeros: usize, outputs: usize, params: &Parameters, level: usize) -> bool {
    if outputs == usize::MAX || level == 0 {
        // Another square follows directly: it settles the first one itself.
        return false;
    }
    let (here, below) = (Costs::new(params, level), Costs::new(params, level - 1));
    let delayed =
        nonzeros as f64 * here.multiply_add(3) + outputs as f64 * (here.key_switch() + rescale_cost(params, level, 2));
    let early = squares as f64 * (here.key_switch() + here.rescale(2))
        + nonzeros as f64 * below.multiply_add(2)
        + outputs as f64 * below.rescale(2);
    early < delayed
}

/// Sum-pool rows: each output (c, y, x) sums its k_h × k_w window with weight 1.
fn pool_rows(kernel: [usize; 2], stride: [usize; 2], input: Shape, output: Shape) -> Vec<Vec<(usize, f64)>> {
    let (Shape::Image { channels, height, width }, Shape::Image { height: oh, width: ow, .. }) = (input, output) else {
        return Vec::new();
    };
    let mut rows = Vec::with_capacity(channels * oh * ow);
    for c in 0..channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut row = Vec::with_capacity(kernel[0] * kernel[1]);
                for ky in 0..kernel[0] {
                    for kx in 0..kernel[1] {
                        let (y, x) = (oy * stride[0] + ky, ox * stride[1] + kx);
                        row.push((c * height * width + y * width + x, 1.0));
                    }
                }
                rows.push(row);
            }
        }
    }
    rows
}

/// Rows (output → (input, weight)) and biases of a convolution or dense layer. A convolution's
/// rows come position-major (all output channels of one position together, as they share their
/// inputs), with `order` mapping each row back to its CHW tensor index.
type Rows = (Vec<Vec<(usize, f64)>>, Vec<f64>, Option<Vec<usize>>);

fn weighted_rows(layer: &Layer, input: Shape, output: Shape) -> Rows {
    match (layer, input, output) {
        (Layer::Dense(d), _, _) => {
            let rows =
                (0..d.outputs).map(|o| (0..d.inputs).map(|i| (i, d.weights[o * d.inputs + i])).collect()).collect();
            (rows, d.bias.clone(), None)
        }
        (
            Layer::Conv2d(c),
            Shape::Image { height, width, .. },
            Shape::Image { channels: oc, height: oh, width: ow },
        ) => {
            let (kh, kw) = (c.kernel[0], c.kernel[1]);
            let mut rows = Vec::with_capacity(oc * oh * ow);
            let mut bias = Vec::with_capacity(oc * oh * ow);
            let mut order = Vec::with_capacity(oc * oh * ow);
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..oc {
                        let mut row = Vec::with_capacity(c.in_channels * kh * kw);
                        for i in 0..c.in_channels {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let y = (oy * c.stride[0] + ky) as isize - c.padding[0] as isize;
                                    let x = (ox * c.stride[1] + kx) as isize - c.padding[1] as isize;
                                    if y < 0 || x < 0 || y >= height as isize || x >= width as isize {
                                        continue;
                                    }
                                    let w = c.weights[((o * c.in_channels + i) * kh + ky) * kw + kx];
                                    row.push((i * height * width + y as usize * width + x as usize, w));
                                }
                            }
                        }
                        rows.push(row);
                        bias.push(c.bias[o]);
                        order.push(o * oh * ow + oy * ow + ox);
                    }
                }
            }
            (rows, bias, Some(order))
        }
        _ => (Vec::new(), Vec::new(), None),
    }
}
