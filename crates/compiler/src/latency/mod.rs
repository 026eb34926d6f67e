//! The latency packing: one image in the slots of one or a few ciphertexts.
//!
//! Every value has a **layout** ([`layout`]): the slot of each element, over one or more
//! ciphertexts, repeated with a power-of-two period inside one. The input image is laid out on
//! a grid (rows a power of two apart, channels in power-of-two blocks, as many blocks per
//! ciphertext as fit), and the compiler keeps that geometry through the network: a
//! convolution or pool writes output (o, y, x) in place at the grid position of its window's
//! corner, a transposed convolution or up-sampling on a grid s times finer at its input
//! pixel's position, so every weight of one kernel offset and one pair of channel blocks lies
//! on the same diagonal. Dense layers collect their outputs at any slot congruent to the
//! output index and finish with rotate-and-sum steps. For each layer the compiler tries the
//! layouts that apply (in place on the grid, a block per output channel, stride-cell lanes, a
//! fresh grid, dense, or the layout of the branch it joins) and keeps the cheapest by a cost
//! model of key switches and plaintext products at the layer's level.
//!
//! Lowering (`lower`) is shared with the throughput packing. A sum pool followed by a dense
//! layer is composed into it (one matrix); before a convolution it stays a stage of its own
//! (rotations only). Each linear stage runs by the diagonal method ([`linear`]); an activation
//! `a·x² + b·x + c` is `a·(x + β)² + γ`: the shift β is added, the ciphertexts squared,
//! relinearized and rescaled. Polynomials, scales and join alignments are the slot-wise steps
//! shared with the throughput packing. Slots outside a layout may hold anything bounded: every
//! masked product reads only the slots of its input layout.

mod engine;
mod layout;
mod linear;

pub use engine::LatencyEngine;

use std::collections::BTreeMap;

use blindfold_ckks::Parameters;
use blindfold_nn::{Layer, Network, Shape};

use crate::cost::Costs;
use crate::elementwise::{Align, ScaleStep};
use crate::lower::{JoinKind, Lowered, Op, OpKind, Rows, ValueId, lower};
use crate::params::{OutputRoom, choose_parameters, parameter_line, target_scale};
use crate::poly::ChebyshevPlan;
use crate::stage::{PlanHeader, StageHeader, check_budget, stage_line};
use crate::throughput::{output_room, too_deep};
use crate::{CompileOptions, Error, Packing, Result};

use layout::{Geometry, Layout};
use linear::{LinearRequest, LinearStage};

/// One step of the plan.
#[derive(Debug, Clone)]
struct Stage {
    header: StageHeader,
    op: StageOp,
}

#[derive(Debug, Clone)]
enum StageOp {
    Linear { input: ValueId, output: ValueId, linear: Box<LinearStage> },
    Square { input: ValueId, output: ValueId, shift: f64 },
    Chebyshev { input: ValueId, output: ValueId, plan: Box<ChebyshevPlan>, scale: f64 },
    Scale { input: ValueId, output: ValueId, step: ScaleStep },
    Join { kind: JoinKind, inputs: Vec<(ValueId, Align, f64)>, output: ValueId },
}

impl StageOp {
    fn reads(&self) -> Vec<ValueId> {
        match self {
            StageOp::Linear { input, .. }
            | StageOp::Square { input, .. }
            | StageOp::Chebyshev { input, .. }
            | StageOp::Scale { input, .. } => vec![*input],
            StageOp::Join { inputs, .. } => inputs.iter().map(|(v, _, _)| *v).collect(),
        }
    }

    fn writes(&self) -> ValueId {
        match self {
            StageOp::Linear { output, .. }
            | StageOp::Square { output, .. }
            | StageOp::Chebyshev { output, .. }
            | StageOp::Scale { output, .. }
            | StageOp::Join { output, .. } => *output,
        }
    }
}

/// Where a value stands in the walk.
#[derive(Debug, Clone)]
struct ValueState {
    level: usize,
    scale: f64,
    layout: Layout,
}

/// A compiled latency plan for one model: the slot layouts, levels and scales of every stage,
/// the diagonals of every linear stage and the rotation keys they need. Independent of any
/// key; reused for every image of the model.
#[derive(Debug, Clone)]
pub struct LatencyPlan {
    header: PlanHeader,
    input: Layout,
    output: Layout,
    stages: Vec<Stage>,
    values: usize,
    /// Ciphertexts and level of each value (for memory estimates).
    sizes: Vec<(usize, usize)>,
    output_value: ValueId,
}

impl LatencyPlan {
    /// Compiles `network` (named `model`) for the latency packing.
    pub fn compile(model: &str, network: &Network) -> Result<Self> {
        Self::compile_with(model, network, &CompileOptions::default())
    }

    /// [`LatencyPlan::compile`] with options (a memory budget).
    pub fn compile_with(model: &str, network: &Network, options: &CompileOptions) -> Result<Self> {
        let mut plan = Self::plan(model, network, output_room(network, options)?)?;
        if let Some(budget) = options.memory_budget {
            plan.fit_memory(network, budget)?;
        }
        Ok(plan)
    }

    /// Streams diagonals until the plan's estimated peak memory fits `budget` bytes, and
    /// refuses it, naming the layer of `network` (the one it was compiled from), when it does
    /// not fit even so.
    pub fn fit_memory(&mut self, network: &Network, budget: u64) -> Result<()> {
        self.stream_to_fit(budget);
        self.check_memory(network, budget)
    }

    /// Refuses the plan when its estimated memory exceeds `budget` bytes at some stage,
    /// naming that stage's node of `network` (the network it was compiled from).
    pub fn check_memory(&self, network: &Network, budget: u64) -> Result<()> {
        let headers: Vec<&StageHeader> = self.stages.iter().map(|s| &s.header).collect();
        check_budget(&engine::memory_profile(self), self.resident_bytes(), budget, &headers, network, Packing::Latency)
    }

    /// Streams diagonals ([`linear::LinearStage::streamed`]), the largest stages first, until
    /// the estimated peak memory fits `budget` or every stage streams. Streaming trades memory
    /// for time: each streamed diagonal is encoded again for every image.
    fn stream_to_fit(&mut self, budget: u64) {
        let n = self.header.params.n();
        while self.peak_memory_bytes() as u64 > budget {
            let largest = self
                .stages
                .iter_mut()
                .filter_map(|stage| match &mut stage.op {
                    StageOp::Linear { linear, .. } if !linear.streamed && !linear.unmasked => {
                        Some((linear.plaintext_bytes(stage.header.level_in, n), linear))
                    }
                    _ => None,
                })
                .max_by_key(|(bytes, _)| *bytes);
            match largest {
                Some((_, linear)) => linear.streamed = true,
                None => return,
            }
        }
    }

    /// Linear stages whose diagonals stream (encoded per image, not held).
    pub fn streamed_stages(&self) -> usize {
        self.stages
            .iter()
            .filter(|stage| matches!(&stage.op, StageOp::Linear { linear, .. } if linear.streamed))
            .count()
    }

    fn plan(model: &str, network: &Network, room: OutputRoom) -> Result<Self> {
        let lowered = compose_pools(lower(network)?, network);
        let depth = lowered.depth();
        let params = choose_parameters(depth, 12).map_err(|most| too_deep(network, &lowered, most))?;
        let slots = params.slots();
        // The client packs the input, so its layout is free: try the grid and the dense one.
        let mut inputs = vec![Layout::dense(network.input().len(), slots)];
        if let Shape::Image { channels, height, width } = network.input() {
            inputs.extend(Layout::image(channels, height, width, slots));
        }
        let mut best: Option<LatencyPlan> = None;
        let mut refusal = None;
        for input in inputs {
            match walk(model, &params, network, &lowered, input, room) {
                Ok(plan) if best.as_ref().is_none_or(|b| plan.estimated_cost() < b.estimated_cost()) => {
                    best = Some(plan);
                }
                Ok(_) => {}
                Err(error) => refusal = Some(error),
            }
        }
        match (best, refusal) {
            (Some(plan), _) => Ok(plan),
            (None, Some(refusal)) => Err(refusal),
            (None, None) => Err(Error::Internal("no input layout".into())),
        }
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.header.model
    }
    /// The packing.
    pub fn packing(&self) -> Packing {
        Packing::Latency
    }
    /// The parameter set the plan was compiled for.
    pub fn params(&self) -> &Parameters {
        &self.header.params
    }
    /// The level the input is encrypted at.
    pub fn input_level(&self) -> usize {
        self.header.input_level
    }
    /// The scale the input is encoded at.
    pub fn input_scale(&self) -> f64 {
        self.header.input_scale
    }
    /// The multiplicative depth used.
    pub fn depth(&self) -> usize {
        self.header.input_level
    }
    /// The input's slot period inside one ciphertext: the client's image is repeated with it.
    pub fn period(&self) -> usize {
        self.input.period
    }
    /// Ciphertexts one image is packed into.
    pub fn input_ciphertexts(&self) -> usize {
        self.input.cts
    }
    /// Ciphertexts one image's result comes back in.
    pub fn output_ciphertexts(&self) -> usize {
        self.output.cts
    }

    /// Every rotation step the plan uses (left rotations, in 0..slots), ascending: generate
    /// Galois keys for exactly these.
    pub fn rotation_steps(&self) -> Vec<i64> {
        self.rotation_keys().into_iter().map(|(step, _)| step).collect()
    }

    /// Every rotation step with the highest level it is used at, by step: a key needs no
    /// primes above its level.
    pub fn rotation_keys(&self) -> Vec<(i64, usize)> {
        let mut keys: BTreeMap<usize, usize> = BTreeMap::new();
        for stage in &self.stages {
            if let StageOp::Linear { linear, .. } = &stage.op {
                for step in linear.steps() {
                    let level = keys.entry(step).or_insert(stage.header.level_in);
                    *level = (*level).max(stage.header.level_in);
                }
            }
        }
        keys.into_iter().map(|(step, level)| (step as i64, level)).collect()
    }

    /// Bytes of the serialized rotation keys [`LatencyPlan::rotation_keys`] asks for: per key,
    /// one polynomial per digit at its level, over its ciphertext primes and the special ones.
    pub fn rotation_key_bytes(&self) -> usize {
        self.rotation_keys().into_iter().map(|(_, level)| switching_key_bytes(&self.header.params, level)).sum()
    }

    /// Bytes of every evaluation key: the rotation keys and the relinearization key.
    pub fn key_bytes(&self) -> usize {
        self.rotation_key_bytes() + switching_key_bytes(&self.header.params, self.header.params.max_level())
    }

    /// Bytes the evaluation keys take in memory (both polynomials of every digit, 8 bytes a
    /// coefficient: about four times their serialized size).
    pub fn key_memory_bytes(&self) -> usize {
        let params = &self.header.params;
        self.rotation_keys().into_iter().map(|(_, level)| switching_key_memory(params, level)).sum::<usize>()
            + switching_key_memory(params, params.max_level())
    }

    /// Estimated work of one image, in multiply-adds of one coefficient (the unit of
    /// [`crate::choose_packing`]).
    pub fn estimated_cost(&self) -> f64 {
        self.stages.iter().map(|stage| stage.header.cost).sum::<f64>() * self.header.params.n() as f64
    }

    /// Bytes the engine holds in plaintext diagonals between images: pre-encoded ones, and the
    /// slot vectors of streamed ones.
    pub fn plaintext_bytes(&self) -> usize {
        let n = self.header.params.n();
        self.stages
            .iter()
            .map(|stage| match &stage.op {
                StageOp::Linear { linear, .. } => linear.plaintext_bytes(stage.header.level_in, n),
                _ => 0,
            })
            .sum()
    }

    /// Bytes of the plan's own tables (every weight with its slot, layouts): what it holds
    /// before any engine encodes it, and keeps beside the engine's diagonals.
    pub fn table_bytes(&self) -> usize {
        let layouts = (self.input.positions.capacity() + self.output.positions.capacity()) * 8;
        layouts
            + self
                .stages
                .iter()
                .map(|stage| match &stage.op {
                    StageOp::Linear { linear, .. } => linear.table_bytes(),
                    _ => 0,
                })
                .sum::<usize>()
    }

    /// Bytes an evaluator of this plan holds between images: the evaluation keys as held in
    /// memory, the plaintext diagonals and the plan's tables (what a cache of evaluators
    /// budgets).
    pub fn resident_bytes(&self) -> usize {
        self.key_memory_bytes() + self.plaintext_bytes() + self.table_bytes()
    }

    /// Estimated peak memory of the engine evaluating one image, in bytes: what it holds
    /// between images ([`LatencyPlan::resident_bytes`]), plus the ciphertexts alive at the
    /// busiest stage (values a later stage still reads, and a linear stage's hoisted babies).
    pub fn peak_memory_bytes(&self) -> usize {
        let ciphertexts = engine::memory_profile(self).iter().map(|(_, bytes)| *bytes).max().unwrap_or(0);
        ciphertexts + self.resident_bytes()
    }

    /// The least memory this plan can run in, in bytes: its estimated peak with every linear
    /// stage streamed (what [`LatencyPlan::fit_memory`] falls back to under a tight budget).
    /// A worker that gives a job less refuses it with [`crate::Error::DoesNotFit`].
    pub fn smallest_peak_memory_bytes(&self) -> usize {
        let mut streamed = self.clone();
        streamed.stream_to_fit(0);
        streamed.peak_memory_bytes()
    }

    /// The slot vectors (one per input ciphertext) of one image in the plan's input layout.
    pub fn pack(&self, image: &[f64]) -> Result<Vec<Vec<f64>>> {
        if image.len() != self.header.input_len {
            return Err(Error::Input(format!(
                "the image has {} values, the model takes {}",
                image.len(),
                self.header.input_len
            )));
        }
        Ok(self.input.fill(image, self.header.params.slots()))
    }

    /// The outputs from the decrypted slot vectors of one image's result ciphertexts, refusing
    /// any that overflowed (see [`Error::Overflow`]).
    pub fn unpack(&self, cts: &[Vec<f64>]) -> Result<Vec<f64>> {
        let slots = self.header.params.slots();
        self.output
            .positions
            .iter()
            .take(self.header.output_len)
            .map(|&p| {
                let value = cts.get(p / slots).and_then(|ct| ct.get(p % slots)).ok_or_else(|| {
                    Error::Input(format!("{} ciphertexts decrypted, the output needs slot {p}", cts.len()))
                })?;
                self.header.output(*value)
            })
            .collect()
    }

    /// One line per stage: what it does, levels, scale, diagonals and rotations.
    pub fn summary(&self) -> String {
        let keys = self.rotation_keys();
        let mut out = format!(
            "latency plan for {}: {}, input {} ciphertext(s), period {} in {} slots{}, input level {}, scale 2^{:.1}, \
             {} rotation keys ({:.1} MB), {:.0} MB of plaintext diagonals{}, peak memory {:.2} GB\n",
            self.header.model,
            parameter_line(&self.header.params),
            self.input.cts,
            self.input.period,
            self.header.params.slots(),
            match &self.input.grid {
                Some(grid) => format!(" (grid: rows {} apart)", grid.row),
                None => String::new(),
            },
            self.header.input_level,
            self.header.input_scale.log2(),
            keys.len(),
            self.rotation_key_bytes() as f64 / 1e6,
            self.plaintext_bytes() as f64 / 1e6,
            match self.streamed_stages() {
                0 => String::new(),
                k => format!(" ({k} stages streamed to fit the memory budget)"),
            },
            self.peak_memory_bytes() as f64 / 1e9,
        );
        for (i, stage) in self.stages.iter().enumerate() {
            let what = match &stage.op {
                StageOp::Linear { linear, .. } => {
                    let (babies, giants, sums) = linear.rotation_counts();
                    format!(
                        "{} outputs ({}{}), {} diagonals{}, B = {}: {babies} baby (hoisted) + {giants} giant + {sums} sum \
                         rotations, weights at 2^{:.1}",
                        linear.outputs,
                        match &linear.output.grid {
                            Some(grid) => format!("grid, rows {} apart", grid.row),
                            None => format!("period {}", linear.output.period),
                        },
                        if linear.output.cts > 1 {
                            format!(", {} ciphertexts", linear.output.cts)
                        } else {
                            String::new()
                        },
                        linear.entries.len(),
                        if linear.streamed { " (streamed)" } else { "" },
                        linear.baby,
                        linear.weight_scale.log2()
                    )
                }
                StageOp::Square { shift, .. } => format!("(x + {shift:.4})², relinearize, rescale"),
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
        out
    }
}

/// Bytes of a serialized key-switching key (relinearization or one rotation) for ciphertexts
/// up to `level`: one polynomial per digit over the level's primes and the special ones.
pub(crate) fn switching_key_bytes(params: &Parameters, level: usize) -> usize {
    let row = |q: u64| (params.n() * (64 - q.leading_zeros()) as usize).div_ceil(8);
    let specials: usize = params.special_moduli().iter().map(|&p| row(p)).sum();
    let primes: usize = params.moduli()[..=level].iter().map(|&q| row(q)).sum();
    // Galois element, seed, level and digit count, then the b_j.
    8 + 32 + 2 + params.digits_at(level).len() * (primes + specials)
}

/// Bytes a key-switching key for ciphertexts up to `level` takes in memory: per digit, two
/// polynomials over the level's primes and the special ones.
pub(crate) fn switching_key_memory(params: &Parameters, level: usize) -> usize {
    params.digits_at(level).len() * 2 * (level + 1 + params.special_moduli().len()) * params.n() * 8
}

/// Replaces each sum pool read only by a dense layer with their product (one matrix); a sum
/// pool before a convolution stays a stage of its own.
fn compose_pools(mut lowered: Lowered, network: &Network) -> Lowered {
    let consumers = lowered.consumers();
    let mut removed = vec![false; lowered.ops.len()];
    for k in 0..lowered.ops.len() {
        let op = &lowered.ops[k];
        let (OpKind::Weighted { .. }, [input]) = (&op.kind, op.inputs.as_slice()) else { continue };
        let dense = matches!(network.nodes()[op.node].layer, Layer::Dense(_));
        let Some(p) = input.checked_sub(1) else { continue };
        let OpKind::SumPool { rows: pool } = &lowered.ops[p].kind else { continue };
        if !dense || consumers[*input].len() != 1 || *input == lowered.output {
            continue;
        }
        let pool = pool.clone();
        let pool_input = lowered.ops[p].inputs[0];
        let pool_name = lowered.ops[p].name.clone();
        let op = &mut lowered.ops[k];
        let OpKind::Weighted { rows, order, .. } = &mut op.kind else { continue };
        let composed: Rows = in_tensor_order(std::mem::take(rows), order.take())
            .iter()
            .map(|row| {
                let mut sum: BTreeMap<usize, f64> = BTreeMap::new();
                for &(j, w) in row {
                    for &(i, v) in pool.get(j).map(Vec::as_slice).unwrap_or(&[]) {
                        *sum.entry(i).or_insert(0.0) += w * v;
                    }
                }
                sum.into_iter().collect()
            })
            .collect();
        *rows = composed;
        op.inputs = vec![pool_input];
        op.name = format!("{pool_name} + {}", op.name);
        removed[p] = true;
    }
    remove_ops(lowered, &removed)
}

/// The lowered graph without the `removed` ops (whose values nothing reads any more).
fn remove_ops(lowered: Lowered, removed: &[bool]) -> Lowered {
    let mut renumber: Vec<ValueId> = vec![0; lowered.values.len()];
    let mut values = vec![lowered.values[0].clone()];
    let mut ops: Vec<Op> = Vec::new();
    for (k, mut op) in lowered.ops.into_iter().enumerate() {
        if removed[k] {
            continue;
        }
        op.inputs.iter_mut().for_each(|v| *v = renumber[*v]);
        ops.push(op);
        values.push(lowered.values[k + 1].clone());
        renumber[k + 1] = values.len() - 1;
    }
    Lowered { values, ops, output: renumber[lowered.output], output_affine: lowered.output_affine }
}

/// Rows indexed by tensor position (undoing a convolution's position-major order).
fn in_tensor_order(rows: Rows, order: Option<Vec<usize>>) -> Rows {
    let Some(order) = order else { return rows };
    let mut sorted: Rows = vec![Vec::new(); rows.len()];
    for (row, &position) in rows.into_iter().zip(&order) {
        if let Some(slot) = sorted.get_mut(position) {
            *slot = row;
        }
    }
    sorted
}

/// Walks the lowered graph from `input` with every value's (level, scale, layout), fixing
/// every weight scale, layout, baby-step size and alignment.
fn walk(
    model: &str,
    params: &Parameters,
    network: &Network,
    lowered: &Lowered,
    input: Layout,
    room: OutputRoom,
) -> Result<LatencyPlan> {
    let moduli = params.moduli().to_vec();
    let slots = params.slots();
    let target = target_scale();
    let depth = lowered.depth();
    let consumers = lowered.consumers();
    let scale_of = |v: ValueId| if v == lowered.output { room.scale(params) } else { target };
    let node_error = |op: &Op, reason: String| {
        let node = &network.nodes()[op.node];
        Error::DoesNotFit { node: node.name.clone(), layer: node.layer.to_string(), reason }
    };
    let mut states: Vec<Option<ValueState>> = vec![None; lowered.values.len()];
    states[0] = Some(ValueState { level: depth, scale: target, layout: input.clone() });
    let mut stages = Vec::with_capacity(lowered.ops.len());
    let state = |states: &[Option<ValueState>], v: ValueId| {
        states[v].clone().ok_or_else(|| Error::Internal(format!("value {v} is read before it is written")))
    };
    for (k, op) in lowered.ops.iter().enumerate() {
        let out = k + 1;
        let first = state(&states, op.inputs[0])?;
        let costs = Costs::new(params, first.level);
        let cts = first.layout.cts as f64;
        let name = op.name.clone();
        let (header, stage_op, out_state) = match &op.kind {
            OpKind::Weighted { .. } | OpKind::SumPool { .. } => {
                let (rows, bias, pool) = match &op.kind {
                    OpKind::Weighted { rows, bias, order } => {
                        (in_tensor_order(rows.clone(), order.clone()), tensor_bias(bias, order), false)
                    }
                    OpKind::SumPool { rows } => (rows.clone(), vec![0.0; rows.len()], true),
                    _ => return Err(Error::Internal("a linear op of another kind".into())),
                };
                if !pool && first.level == 0 {
                    return Err(node_error(op, "ran out of levels".into()));
                }
                // Candidate layouts: dense, in place on the input's grid, a fresh grid, and the
                // layout of a branch this value joins (so the join needs no repacking).
                let out_shape = network.shape(lowered.values[out].tensor);
                let mut candidates = vec![Layout::dense(rows.len(), slots)];
                if let (Some(geometry), Some(grid)) = (Geometry::of(network, op.node), &first.layout.grid) {
                    candidates.extend(geometry.grid_outputs(grid, slots));
                }
                if let Shape::Image { channels, height, width } = out_shape
                    && !pool
                {
                    candidates.extend(Layout::image(channels, height, width, slots).map(|mut l| {
                        l.period = slots;
                        l
                    }));
                }
                // A sum pool runs unmasked, in place on a grid; so does what feeds one.
                if (pool || feeds_pool(lowered, &consumers, out)) && candidates.iter().any(|l| l.grid.is_some()) {
                    candidates.retain(|layout| layout.grid.is_some());
                }
                let partner = join_partner(lowered, &consumers, &states, out);
                let request = LinearRequest { rows: &rows, bias: &bias, slots, costs, pool };
                let (mut linear, cost) = match partner.filter(|l| l.positions.len() == rows.len()) {
                    Some(layout) => linear::plan(&request, &first.layout, layout),
                    None => linear::best(&request, &first.layout, candidates).ok_or_else(|| Error::Unsupported {
                        node: network.nodes()[op.node].name.clone(),
                        layer: network.nodes()[op.node].layer.to_string(),
                        packing: "latency",
                        reason: "no slot layout for its output".into(),
                    })?,
                };
                if pool && !linear.unmasked {
                    let node = &network.nodes()[op.node];
                    return Err(Error::Unsupported {
                        node: node.name.clone(),
                        layer: node.layer.to_string(),
                        packing: "latency",
                        reason: "average pooling needs its input on a grid, to sum windows in place".into(),
                    });
                }
                if pool {
                    let layout = linear.output.clone();
                    (
                        StageHeader {
                            node: op.node,
                            name,
                            level_in: first.level,
                            level_out: first.level,
                            scale_out: first.scale,
                            cost,
                        },
                        StageOp::Linear { input: op.inputs[0], output: out, linear: Box::new(linear) },
                        ValueState { level: first.level, scale: first.scale, layout },
                    )
                } else {
                    let out_scale = scale_of(out);
                    let weight_scale = out_scale * moduli[first.level] as f64 / first.scale;
                    if weight_scale < 1.0 {
                        return Err(node_error(
                            op,
                            format!("weights would be encoded at scale 2^{:.1} < 1", weight_scale.log2()),
                        ));
                    }
                    linear.weight_scale = weight_scale;
                    linear.rescale = true;
                    let layout = linear.output.clone();
                    let cost = cost + linear.output.cts as f64 * costs.rescale(2);
                    // Exactly what the evaluator computes: (scale · weight scale) / q_level.
                    let scale = first.scale * weight_scale / moduli[first.level] as f64;
                    (
                        StageHeader {
                            node: op.node,
                            name,
                            level_in: first.level,
                            level_out: first.level - 1,
                            scale_out: scale,
                            cost,
                        },
                        StageOp::Linear { input: op.inputs[0], output: out, linear: Box::new(linear) },
                        ValueState { level: first.level - 1, scale, layout },
                    )
                }
            }
            OpKind::Square { shift } => {
                if first.level == 0 {
                    return Err(node_error(op, "ran out of levels".into()));
                }
                let squared = first.scale * first.scale / moduli[first.level] as f64;
                let cost = cts * (costs.square() + costs.key_switch() + costs.rescale(2));
                (
                    StageHeader {
                        node: op.node,
                        name,
                        level_in: first.level,
                        level_out: first.level - 1,
                        scale_out: squared,
                        cost,
                    },
                    StageOp::Square { input: op.inputs[0], output: out, shift: *shift },
                    ValueState { level: first.level - 1, scale: squared, layout: first.layout.clone() },
                )
            }
            OpKind::Chebyshev(plan) => {
                if first.level < plan.depth() + 1 {
                    return Err(node_error(op, "ran out of levels".into()));
                }
                let scale = scale_of(out);
                let level_out = first.level - plan.depth();
                let cost = cts * plan.products() as f64 * (costs.square() + costs.key_switch() + costs.rescale(2))
                    + cts * plan.scalar_terms() as f64 * costs.product();
                (
                    StageHeader { node: op.node, name, level_in: first.level, level_out, scale_out: scale, cost },
                    StageOp::Chebyshev { input: op.inputs[0], output: out, plan: plan.clone(), scale },
                    ValueState { level: level_out, scale, layout: first.layout.clone() },
                )
            }
            OpKind::Scale { factor, shift } => {
                if first.level == 0 {
                    return Err(node_error(op, "ran out of levels".into()));
                }
                let scale = scale_of(out);
                let step = ScaleStep::plan(*factor, *shift, first.level, first.scale, scale, &moduli);
                (
                    StageHeader {
                        node: op.node,
                        name,
                        level_in: first.level,
                        level_out: first.level - 1,
                        scale_out: scale,
                        cost: cts * costs.rescale(2),
                    },
                    StageOp::Scale { input: op.inputs[0], output: out, step },
                    ValueState { level: first.level - 1, scale, layout: first.layout.clone() },
                )
            }
            OpKind::Join { kind, alignments, reference } => {
                let reference_state = state(&states, op.inputs[*reference])?;
                let at = (reference_state.level, reference_state.scale);
                let mut inputs = Vec::new();
                let mut layouts = Vec::new();
                let (mut cost, mut top) = (0.0, at.0);
                for (&v, &alignment) in op.inputs.iter().zip(alignments) {
                    let st = state(&states, v)?;
                    if *kind == JoinKind::Add && st.layout.positions != reference_state.layout.positions {
                        let node = &network.nodes()[op.node];
                        return Err(Error::Unsupported {
                            node: node.name.clone(),
                            layer: node.layer.to_string(),
                            packing: "latency",
                            reason: "the branches it adds reach it in different slot layouts".into(),
                        });
                    }
                    let (align, offset) = Align::plan((st.level, st.scale), at, alignment, &moduli)?;
                    if align.multiplies() {
                        cost += st.layout.cts as f64 * Costs::new(params, at.0 + 1).rescale(2);
                    }
                    top = top.max(st.level);
                    layouts.push(st.layout.clone());
                    inputs.push((v, align, offset));
                }
                let layout = match kind {
                    JoinKind::Add => reference_state.layout.clone(),
                    JoinKind::Concat => Layout::concat(&layouts.iter().collect::<Vec<_>>(), slots),
                };
                (
                    StageHeader { node: op.node, name, level_in: top, level_out: at.0, scale_out: at.1, cost },
                    StageOp::Join { kind: *kind, inputs, output: out },
                    ValueState { level: at.0, scale: at.1, layout },
                )
            }
        };
        stages.push(Stage { header, op: stage_op });
        states[out] = Some(out_state);
    }
    let output = state(&states, lowered.output)?.layout;
    let sizes = states.iter().map(|s| s.as_ref().map_or((0, 0), |s| (s.layout.cts, s.level))).collect();
    let header = PlanHeader {
        model: model.to_owned(),
        params: params.clone(),
        input_len: network.input().len(),
        output_len: network.output().len(),
        input_level: depth,
        input_scale: target,
        output_affine: lowered.output_affine,
        output_bound: room.bound(),
    };
    Ok(LatencyPlan { header, input, output, stages, values: lowered.values.len(), sizes, output_value: lowered.output })
}

/// A weighted map's bias in tensor order.
fn tensor_bias(bias: &[f64], order: &Option<Vec<usize>>) -> Vec<f64> {
    match order {
        Some(order) => {
            let mut sorted = vec![0.0; bias.len()];
            for (&b, &position) in bias.iter().zip(order) {
                if let Some(slot) = sorted.get_mut(position) {
                    *slot = b;
                }
            }
            sorted
        }
        None => bias.to_vec(),
    }
}

/// Whether `v` reaches a sum pool directly or through slot-wise ops (which keep its layout).
fn feeds_pool(lowered: &Lowered, consumers: &[Vec<usize>], v: ValueId) -> bool {
    consumers[v].iter().any(|&reader| match lowered.ops[reader].kind {
        OpKind::SumPool { .. } => true,
        OpKind::Square { .. } | OpKind::Chebyshev(_) | OpKind::Scale { .. } => {
            feeds_pool(lowered, consumers, reader + 1)
        }
        _ => false,
    })
}

/// When `v`'s only reader is an add whose other branch is already laid out: that layout.
fn join_partner(
    lowered: &Lowered,
    consumers: &[Vec<usize>],
    states: &[Option<ValueState>],
    v: ValueId,
) -> Option<Layout> {
    let [reader] = consumers[v].as_slice() else { return None };
    let op = &lowered.ops[*reader];
    let OpKind::Join { kind: JoinKind::Add, .. } = op.kind else { return None };
    op.inputs.iter().filter(|&&u| u != v).find_map(|&u| states[u].as_ref().map(|s| s.layout.clone()))
}
