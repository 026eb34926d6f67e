//! The throughput packing: slot i of every ciphertext holds image i of the batch and each
//! value of a tensor is one ciphertext.
//!
//! The plan walks the lowered graph with, for every value, its level, scale, number of parts
//! and pending rescales:
//!
//! - **linear**: a weighted map ([`LinearMap`]) or a sum pool, as plaintext-weight
//!   multiply-accumulates over ciphertexts;
//! - **square**: `(x + β)²`, neither relinearized nor rescaled: the next weighted map runs on
//!   the 3-part squares at scale S², then relinearizes its (far fewer) outputs and rescales
//!   twice; a cost model decides when relinearizing the squares first is cheaper (after a sum
//!   pool, on the pooled values);
//! - **settle**: relinearize and rescale what is pending, before anything that needs settled
//!   inputs (a polynomial, a scale, a join, a value read twice);
//! - **polynomial**, **scale** and **join**: the slot-wise steps of `poly` and `elementwise`,
//!   on every ciphertext of the value.
//!
//! Every weighted map's weights are encoded at the scale that brings its output to the target
//! T after its rescales (the output's, small enough for q_0, for the last one). Convolution →
//! square → sum pool runs are *segments*, evaluated one pooled position at a time
//! ([`segment`]), which is what bounds a LeNet batch's memory.

mod engine;
mod segment;

pub use engine::ThroughputEngine;

use blindfold_ckks::{LinearMap, Parameters};
use blindfold_nn::Network;

use crate::cost::Costs;
use crate::elementwise::{Align, ScaleStep};
use crate::lower::{JoinKind, Lowered, OpKind, Rows, ValueId, lower};
use crate::params::{OutputRoom, choose_parameters, parameter_line, target_scale};
use crate::poly::ChebyshevPlan;
use crate::stage::{PlanHeader, StageHeader, check_budget, stage_line};
use crate::{CompileOptions, Error, Packing, Result};

use segment::Segment;

/// One step of the plan.
#[derive(Debug, Clone)]
struct Stage {
    header: StageHeader,
    op: StageOp,
    /// Parts of the ciphertexts it writes (3 for unrelinearized squares).
    parts: usize,
}

#[derive(Debug, Clone)]
enum StageOp {
    Linear {
        input: ValueId,
        output: ValueId,
        /// Ciphertexts the map reads.
        inputs: usize,
        rows: Rows,
        bias: Vec<f64>,
        /// Map output j is tensor element order[j].
        order: Option<Vec<usize>>,
        weight_scale: f64,
        relinearize: bool,
        rescales: usize,
        /// A sum pool (weights 1, no bias): what a streamed segment folds into additions.
        pool: bool,
    },
    Square {
        input: ValueId,
        output: ValueId,
        shift: f64,
        relinearize: bool,
        rescales: usize,
    },
    /// Relinearize and rescale `value` in place.
    Settle {
        value: ValueId,
        relinearize: bool,
        rescales: usize,
    },
    Chebyshev {
        input: ValueId,
        output: ValueId,
        plan: Box<ChebyshevPlan>,
        scale: f64,
    },
    Scale {
        input: ValueId,
        output: ValueId,
        step: ScaleStep,
    },
    Join {
        kind: JoinKind,
        /// Per branch: the value, its alignment and its offset.
        inputs: Vec<(ValueId, Align, f64)>,
        output: ValueId,
    },
}

impl StageOp {
    /// The values it reads.
    fn reads(&self) -> Vec<ValueId> {
        match self {
            StageOp::Linear { input, .. }
            | StageOp::Square { input, .. }
            | StageOp::Chebyshev { input, .. }
            | StageOp::Scale { input, .. } => vec![*input],
            StageOp::Settle { value, .. } => vec![*value],
            StageOp::Join { inputs, .. } => inputs.iter().map(|(v, _, _)| *v).collect(),
        }
    }

    /// The value it writes.
    fn writes(&self) -> ValueId {
        match self {
            StageOp::Linear { output, .. }
            | StageOp::Square { output, .. }
            | StageOp::Chebyshev { output, .. }
            | StageOp::Scale { output, .. }
            | StageOp::Join { output, .. } => *output,
            StageOp::Settle { value, .. } => *value,
        }
    }
}

/// Where a value stands in the walk.
#[derive(Debug, Clone, Copy)]
struct ValueState {
    level: usize,
    scale: f64,
    /// 3 after a square, until relinearized.
    parts: usize,
    /// Rescales owed (a square's), paid by the next weighted map or a settle.
    pending: usize,
    /// Ciphertexts in the value.
    len: usize,
}

/// A compiled throughput plan for one model: parameters, levels and scales of every stage, and
/// the keys evaluation needs. Independent of any key; reused for every batch of the model.
#[derive(Debug, Clone)]
pub struct ThroughputPlan {
    header: PlanHeader,
    stages: Vec<Stage>,
    /// Runs of stages evaluated together, one pooled position at a time.
    segments: Vec<Segment>,
    /// Values of the lowered graph (0: the input).
    values: usize,
    /// Ciphertexts in each value.
    lens: Vec<usize>,
    output: ValueId,
}

impl ThroughputPlan {
    /// Compiles `network` (named `model`) for the throughput packing.
    pub fn compile(model: &str, network: &Network) -> Result<Self> {
        Self::compile_with(model, network, &CompileOptions::default())
    }

    /// [`ThroughputPlan::compile`] with options (a memory budget).
    pub fn compile_with(model: &str, network: &Network, options: &CompileOptions) -> Result<Self> {
        let lowered = lower(network)?;
        let depth = lowered.depth();
        let params = choose_parameters(depth, 12).map_err(|most| too_deep(network, &lowered, most))?;
        let room = output_room(network, options)?;
        let plan = walk(model, params, network, &lowered, room)?;
        if let Some(budget) = options.memory_budget {
            plan.check_memory(network, budget)?;
        }
        Ok(plan)
    }

    /// Refuses the plan when its estimated memory exceeds `budget` bytes at some stage,
    /// naming that stage's node of `network` (the network it was compiled from).
    pub fn check_memory(&self, network: &Network, budget: u64) -> Result<()> {
        let headers: Vec<&StageHeader> = self.stages.iter().map(|s| &s.header).collect();
        let keys = crate::latency::switching_key_memory(&self.header.params, self.header.params.max_level());
        check_budget(&engine::memory_profile(self), keys, budget, &headers, network, Packing::Throughput)
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.header.model
    }
    /// The packing.
    pub fn packing(&self) -> Packing {
        Packing::Throughput
    }
    /// The parameter set the plan was compiled for.
    pub fn params(&self) -> &Parameters {
        &self.header.params
    }
    /// Images per batch (one per slot).
    pub fn batch_capacity(&self) -> usize {
        self.header.params.slots()
    }
    /// Input ciphertexts per batch (values per image).
    pub fn input_count(&self) -> usize {
        self.header.input_len
    }
    /// Output ciphertexts per batch (outputs per image).
    pub fn output_count(&self) -> usize {
        self.header.output_len
    }
    /// The level inputs are encrypted at.
    pub fn input_level(&self) -> usize {
        self.header.input_level
    }
    /// The scale inputs are encoded at.
    pub fn input_scale(&self) -> f64 {
        self.header.input_scale
    }
    /// The multiplicative depth used.
    pub fn depth(&self) -> usize {
        self.header.input_level
    }
    /// Estimated work of one batch, in multiply-adds of one coefficient (the unit
    /// [`crate::choose_packing`] compares packings in).
    pub fn estimated_cost(&self) -> f64 {
        self.stages.iter().map(|stage| stage.header.cost).sum::<f64>() * self.header.params.n() as f64
    }
    /// Evaluation keys needed: relinearization only, no rotations.
    pub fn rotation_steps(&self) -> Vec<i64> {
        Vec::new()
    }

    /// Bytes of the evaluation keys: one relinearization key (per digit, a polynomial over the
    /// top level's primes and the special ones).
    pub fn key_bytes(&self) -> usize {
        let params = &self.header.params;
        let top = params.max_level();
        crate::latency::switching_key_bytes(params, top)
    }

    /// Bytes of the weights the engine holds, reduced per prime at each linear stage's level.
    pub fn weight_bytes(&self) -> usize {
        self.stages
            .iter()
            .map(|stage| match &stage.op {
                StageOp::Linear { rows, .. } => {
                    rows.iter().map(Vec::len).sum::<usize>() * (stage.header.level_in + 1) * 8
                }
                _ => 0,
            })
            .sum()
    }

    /// Bytes an evaluator of this plan holds between batches: the relinearization key as held in
    /// memory and the weights reduced per prime (what a cache of evaluators budgets).
    pub fn resident_bytes(&self) -> usize {
        crate::latency::switching_key_memory(&self.header.params, self.header.params.max_level()) + self.weight_bytes()
    }

    /// Estimated peak memory of one batch, in bytes: the ciphertexts alive at the busiest
    /// stage (inputs, outputs and every value a later stage still reads), the weights reduced
    /// per prime, and the buffers of a streamed segment.
    pub fn peak_memory_bytes(&self) -> usize {
        let keys = crate::latency::switching_key_memory(&self.header.params, self.header.params.max_level());
        engine::memory_profile(self).iter().map(|(_, bytes)| *bytes).max().unwrap_or(0) + keys
    }

    /// Transposes a batch of images (each `input_count` values) into one slot vector per input
    /// ciphertext: vector k holds value k of every image.
    pub fn pack<I: AsRef<[f64]>>(&self, images: &[I]) -> Result<Vec<Vec<f64>>> {
        let input_len = self.header.input_len;
        if images.is_empty() || images.len() > self.batch_capacity() {
            return Err(Error::Input(format!("{} images for a batch of 1..={}", images.len(), self.batch_capacity())));
        }
        for (i, image) in images.iter().enumerate() {
            if image.as_ref().len() != input_len {
                return Err(Error::Input(format!(
                    "image {i} has {} values, the model takes {input_len}",
                    image.as_ref().len()
                )));
            }
        }
        Ok((0..input_len).map(|k| images.iter().map(|image| image.as_ref()[k]).collect()).collect())
    }

    /// Turns the decrypted output slot vectors back into outputs per image, refusing any that
    /// overflowed (see [`Error::Overflow`]).
    pub fn unpack(&self, outputs: &[Vec<f64>], images: usize) -> Result<Vec<Vec<f64>>> {
        if outputs.len() != self.header.output_len {
            return Err(Error::Input(format!("{} outputs, the model has {}", outputs.len(), self.header.output_len)));
        }
        if outputs.iter().any(|o| o.len() < images) {
            return Err(Error::Input(format!("fewer than {images} slots in an output")));
        }
        (0..images).map(|i| outputs.iter().map(|o| self.header.output(o[i])).collect()).collect()
    }

    /// One line per stage: what it does, levels in and out, and the scale after it.
    pub fn summary(&self) -> String {
        let params = &self.header.params;
        let mut out = format!(
            "throughput plan for {}: {}, {} slots, input level {}, scale 2^{:.1}, relinearization key {:.1} MB, \
             peak memory {:.2} GB per batch\n",
            self.header.model,
            parameter_line(params),
            self.batch_capacity(),
            self.header.input_level,
            self.header.input_scale.log2(),
            self.key_bytes() as f64 / 1e6,
            self.peak_memory_bytes() as f64 / 1e9,
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
                StageOp::Settle { relinearize, rescales, .. } => {
                    format!("settle: relinearize {relinearize}, rescale ×{rescales}")
                }
                StageOp::Chebyshev { plan, .. } => format!(
                    "Chebyshev degree {}: {} products, {} scalar terms",
                    plan.degree(),
                    plan.products(),
                    plan.scalar_terms()
                ),
                StageOp::Scale { step, .. } => format!("× {:.4} + {:.4}, rescale", step.factor, step.shift),
                StageOp::Join { kind, inputs, .. } => format!(
                    "{} of {} branches, {} aligned by a constant",
                    match kind {
                        JoinKind::Add => "sum",
                        JoinKind::Concat => "concatenation",
                    },
                    inputs.len(),
                    inputs.iter().filter(|(_, align, _)| align.multiplies()).count()
                ),
            };
            out.push_str(&stage_line(i, &stage.header, &what));
        }
        for segment in &self.segments {
            out.push_str(&segment.summary_line());
        }
        out
    }
}

/// The room for the outputs `options` ask for, or the refusal naming the output node.
pub(crate) fn output_room(network: &Network, options: &CompileOptions) -> Result<OutputRoom> {
    OutputRoom::for_bound(options.output_bound).map_err(|reason| {
        let index = network.output_tensor().node().unwrap_or(0);
        let (node, layer) = network
            .nodes()
            .get(index)
            .map_or(("input".to_owned(), "input".to_owned()), |n| (n.name.clone(), n.layer.to_string()));
        Error::DoesNotFit { node, layer, reason }
    })
}

/// The refusal of a network deeper than any parameter set: names the node at which the depth
/// passes what the largest set holds.
pub(crate) fn too_deep(network: &Network, lowered: &Lowered, most: usize) -> Error {
    let depth = lowered.depth();
    let at = lowered
        .ops
        .iter()
        .enumerate()
        .find(|(k, _)| lowered.values[k + 1].depth > most)
        .map_or(network.nodes().len().saturating_sub(1), |(_, op)| op.node);
    let node = &network.nodes()[at];
    Error::DoesNotFit {
        node: node.name.clone(),
        layer: node.layer.to_string(),
        reason: format!(
            "the network needs {depth} levels; the largest 128-bit parameter set with {}-bit primes (N = 2^16) \
             holds {most}, exceeded by {}",
            crate::params::PRIME_BITS,
            depth - most
        ),
    }
}

/// Walks the lowered graph with every value's (level, scale, parts, pending) and fixes every
/// weight scale, settle and alignment.
fn walk(
    model: &str,
    params: Parameters,
    network: &Network,
    lowered: &Lowered,
    room: OutputRoom,
) -> Result<ThroughputPlan> {
    let moduli = params.moduli().to_vec();
    let q = |level: usize| moduli[level] as f64;
    let target = target_scale();
    let depth = lowered.depth();
    let consumers = lowered.consumers();
    let scale_of = |v: ValueId| if v == lowered.output { room.scale(&params) } else { target };
    let node_error = |k: usize, reason: String| {
        let node = &network.nodes()[lowered.ops[k].node];
        Error::DoesNotFit { node: node.name.clone(), layer: node.layer.to_string(), reason }
    };

    let mut states: Vec<Option<ValueState>> = vec![None; lowered.values.len()];
    states[0] = Some(ValueState { level: depth, scale: target, parts: 2, pending: 0, len: lowered.values[0].len });
    let mut stages: Vec<Stage> = Vec::new();
    let state = |states: &[Option<ValueState>], v: ValueId| {
        states[v].ok_or_else(|| Error::Internal(format!("value {v} is read before it is written")))
    };
    let settle =
        |states: &mut Vec<Option<ValueState>>, stages: &mut Vec<Stage>, v: ValueId, name: &str| -> Result<()> {
            let st = state(states, v)?;
            if st.parts == 2 && st.pending == 0 {
                return Ok(());
            }
            if st.level < st.pending {
                return Err(Error::Internal(format!("settling {name} below level 0")));
            }
            let scale = (0..st.pending).fold(st.scale, |s, j| s / q(st.level - j));
            let cost = st.len as f64
                * (if st.parts == 3 { Costs::new(&params, st.level).key_switch() } else { 0.0 }
                    + rescale_cost(&params, st.level, st.pending));
            stages.push(Stage {
                parts: 2,
                header: StageHeader {
                    node: lowered.producer(v).map_or(0, |op| op.node),
                    name: format!("settle {name}"),
                    level_in: st.level,
                    level_out: st.level - st.pending,
                    scale_out: scale,
                    cost,
                },
                op: StageOp::Settle { value: v, relinearize: st.parts == 3, rescales: st.pending },
            });
            states[v] = Some(ValueState { level: st.level - st.pending, scale, parts: 2, pending: 0, len: st.len });
            Ok(())
        };

    for (k, op) in lowered.ops.iter().enumerate() {
        let out = k + 1;
        let len = lowered.values[out].len;
        let name = op.name.clone();
        let (header, stage_op, out_state) = match &op.kind {
            OpKind::Weighted { rows, bias, order } => {
                let input = op.inputs[0];
                let st = state(&states, input)?;
                let rescales = st.pending + 1;
                if st.level < rescales {
                    return Err(node_error(k, "ran out of levels while planning".into()));
                }
                let dropped: f64 = (0..rescales).map(|j| q(st.level - j)).product();
                let out_scale = scale_of(out);
                let weight_scale = out_scale * dropped / st.scale;
                if weight_scale < 1.0 {
                    return Err(node_error(
                        k,
                        format!("weights would be encoded at scale 2^{:.1} < 1", weight_scale.log2()),
                    ));
                }
                let relinearize = st.parts == 3;
                let costs = Costs::new(&params, st.level);
                let cost = rows.iter().map(Vec::len).sum::<usize>() as f64 * costs.multiply_add(st.parts)
                    + rows.len() as f64
                        * (if relinearize { costs.key_switch() } else { 0.0 }
                            + rescale_cost(&params, st.level, rescales));
                let level_out = st.level - rescales;
                (
                    StageHeader { node: op.node, name, level_in: st.level, level_out, scale_out: out_scale, cost },
                    StageOp::Linear {
                        input,
                        output: out,
                        inputs: st.len,
                        rows: rows.clone(),
                        bias: bias.clone(),
                        order: order.clone(),
                        weight_scale,
                        relinearize,
                        rescales,
                        pool: false,
                    },
                    ValueState { level: level_out, scale: out_scale, parts: 2, pending: 0, len },
                )
            }
            OpKind::SumPool { rows } => {
                let input = op.inputs[0];
                let st = state(&states, input)?;
                let cost = rows.iter().map(Vec::len).sum::<usize>() as f64
                    * Costs::new(&params, st.level).multiply_add(st.parts);
                (
                    StageHeader {
                        node: op.node,
                        name: format!("sum-pool {name}"),
                        level_in: st.level,
                        level_out: st.level,
                        scale_out: st.scale,
                        cost,
                    },
                    StageOp::Linear {
                        input,
                        output: out,
                        inputs: st.len,
                        bias: vec![0.0; rows.len()],
                        rows: rows.clone(),
                        order: None,
                        weight_scale: 1.0,
                        relinearize: false,
                        rescales: 0,
                        pool: true,
                    },
                    ValueState { len, ..st },
                )
            }
            OpKind::Square { shift } => {
                let input = op.inputs[0];
                let st = state(&states, input)?;
                if st.level < st.pending {
                    return Err(node_error(k, "ran out of levels while planning".into()));
                }
                let settled = (0..st.pending).fold(st.scale, |s, j| s / q(st.level - j));
                let level = st.level - st.pending;
                let cost =
                    len as f64 * (rescale_cost(&params, st.level, st.pending) + Costs::new(&params, level).square());
                (
                    StageHeader {
                        node: op.node,
                        name: format!("square {name}"),
                        level_in: st.level,
                        level_out: level,
                        scale_out: settled * settled,
                        cost,
                    },
                    StageOp::Square {
                        input,
                        output: out,
                        shift: *shift,
                        relinearize: st.parts == 3,
                        rescales: st.pending,
                    },
                    ValueState { level, scale: settled * settled, parts: 3, pending: 1, len },
                )
            }
            OpKind::Chebyshev(plan) => {
                let input = op.inputs[0];
                settle(&mut states, &mut stages, input, &lowered_name(lowered, input))?;
                let st = state(&states, input)?;
                if st.level < plan.depth() + 1 {
                    return Err(node_error(k, "ran out of levels while planning".into()));
                }
                let scale = scale_of(out);
                let level_out = st.level - plan.depth();
                let costs = Costs::new(&params, st.level);
                let cost =
                    len as f64 * plan.products() as f64 * (costs.square() + costs.key_switch() + costs.rescale(2))
                        + len as f64 * plan.scalar_terms() as f64 * costs.product();
                (
                    StageHeader { node: op.node, name, level_in: st.level, level_out, scale_out: scale, cost },
                    StageOp::Chebyshev { input, output: out, plan: plan.clone(), scale },
                    ValueState { level: level_out, scale, parts: 2, pending: 0, len },
                )
            }
            OpKind::Scale { factor, shift } => {
                let input = op.inputs[0];
                settle(&mut states, &mut stages, input, &lowered_name(lowered, input))?;
                let st = state(&states, input)?;
                if st.level == 0 {
                    return Err(node_error(k, "ran out of levels while planning".into()));
                }
                let scale = scale_of(out);
                let step = ScaleStep::plan(*factor, *shift, st.level, st.scale, scale, &moduli);
                let cost = len as f64 * Costs::new(&params, st.level).rescale(2);
                (
                    StageHeader {
                        node: op.node,
                        name,
                        level_in: st.level,
                        level_out: st.level - 1,
                        scale_out: scale,
                        cost,
                    },
                    StageOp::Scale { input, output: out, step },
                    ValueState { level: st.level - 1, scale, parts: 2, pending: 0, len },
                )
            }
            OpKind::Join { kind, alignments, reference } => {
                for &v in &op.inputs {
                    settle(&mut states, &mut stages, v, &lowered_name(lowered, v))?;
                }
                let reference_state = state(&states, op.inputs[*reference])?;
                let at = (reference_state.level, reference_state.scale);
                let mut inputs = Vec::new();
                let mut cost = 0.0;
                let mut top = at.0;
                for (&v, &alignment) in op.inputs.iter().zip(alignments) {
                    let st = state(&states, v)?;
                    let (align, offset) = Align::plan((st.level, st.scale), at, alignment, &moduli)?;
                    if align.multiplies() {
                        cost += st.len as f64 * Costs::new(&params, at.0 + 1).rescale(2);
                    }
                    top = top.max(st.level);
                    inputs.push((v, align, offset));
                }
                (
                    StageHeader { node: op.node, name, level_in: top, level_out: at.0, scale_out: at.1, cost },
                    StageOp::Join { kind: *kind, inputs, output: out },
                    ValueState { level: at.0, scale: at.1, parts: 2, pending: 0, len },
                )
            }
        };
        stages.push(Stage { header, op: stage_op, parts: out_state.parts });
        states[out] = Some(out_state);
        // Squares just made (or just pooled) and still 3-part: settle them now when a reader
        // needs settled values, or when that is cheaper than letting the next map run on them.
        if out_state.parts == 3 && out_state.pending == 1 {
            let readers = &consumers[out];
            let early = match readers.as_slice() {
                [reader] => match &lowered.ops[*reader].kind {
                    OpKind::Weighted { rows, .. } => {
                        settle_squares_early(len, rows.iter().map(Vec::len).sum(), rows.len(), &params, out_state.level)
                    }
                    // A pool sums first (decided on its output); a square settles its input.
                    OpKind::SumPool { .. } | OpKind::Square { .. } => false,
                    _ => true,
                },
                // The output, or a value read twice: settle once for all readers.
                _ => true,
            };
            if early {
                settle(&mut states, &mut stages, out, &lowered_name(lowered, out))?;
            }
        }
    }
    settle(&mut states, &mut stages, lowered.output, "output")?;
    let segments = segment::find(&stages, &consumers, network, lowered);
    let header = PlanHeader {
        model: model.to_owned(),
        params,
        input_len: network.input().len(),
        output_len: network.output().len(),
        input_level: depth,
        input_scale: target,
        output_affine: lowered.output_affine,
        output_bound: room.bound(),
    };
    let lens = lowered.values.iter().map(|v| v.len).collect();
    Ok(ThroughputPlan { header, stages, segments, values: lowered.values.len(), lens, output: lowered.output })
}

fn lowered_name(lowered: &Lowered, v: ValueId) -> String {
    lowered.producer(v).map_or_else(|| "input".to_owned(), |op| op.name.clone())
}

/// `rescales` rescales of a 2-part ciphertext from `level` down.
fn rescale_cost(params: &Parameters, level: usize, rescales: usize) -> f64 {
    (0..rescales).map(|j| Costs::new(params, level - j).rescale(2)).sum()
}

/// Whether relinearizing and rescaling `squares` 3-part squares at `level` costs less than
/// running the next map (`nonzeros` weights, `outputs` rows) on 3-part inputs one level
/// higher and relinearizing its outputs instead.
fn settle_squares_early(squares: usize, nonzeros: usize, outputs: usize, params: &Parameters, level: usize) -> bool {
    if level == 0 {
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

/// Builds a stage's weight map for `context`.
fn linear_map(context: &blindfold_ckks::Context, stage: &Stage) -> Result<Option<LinearMap>> {
    match &stage.op {
        StageOp::Linear { inputs, rows, bias, weight_scale, .. } => {
            Ok(Some(LinearMap::new(context, *inputs, rows, bias.clone(), stage.header.level_in, *weight_scale)?))
        }
        _ => Ok(None),
    }
}
