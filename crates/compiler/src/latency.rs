//! The latency packing: one image in the slots of one ciphertext.
//!
//! Every vector between two layers has a **layout**: the slot each element sits in, repeated
//! with a power-of-two period. The input image is laid out on a grid (rows a power of two
//! apart, channels in power-of-two blocks), replicated to fill the slots, and the compiler
//! keeps that geometry through the network: a convolution or pool writes output (o, y, x) in
//! place, at the grid position of its window's corner, so every weight of one kernel offset and
//! one pair of channel blocks lies on the same diagonal. A 5×5 convolution then has about 25
//! diagonals per block shift instead of hundreds, and rows a power of two apart let
//! baby-step giant-step split them into column babies and row giants. Dense layers collect
//! their outputs at any slot congruent to the output index and finish with log2 rotate-and-sum
//! steps. For each layer the compiler tries the layouts that apply (in place on the grid, a
//! channel block per output channel, or dense) and keeps the cheapest by a cost model of key
//! switches and plaintext products at the layer's level.
//!
//! Lowering is the throughput packing's (average pooling's 1/k² and every activation's leading
//! coefficient and constant fold into the next weighted layer). A sum pool followed by a dense
//! layer is composed into it (one matrix, no extra rotations: the dense layer's diagonals are
//! bounded by its output period); a sum pool followed by a convolution stays a stage of its
//! own (two rotations), since composing them would square the convolution's kernel offsets.
//!
//! The engine computes W·x by the **diagonal method**: y = Σ_d D_d ⊙ rot_d(x) over the nonzero
//! diagonals d only, with baby-step giant-step (d = g + b): the baby rotations rot_b(x) are
//! **hoisted** (c1 decomposed once), each giant step multiplies the babies by plaintext
//! diagonals pre-rotated by −g and encoded once per model, then rotates the sum by g.
//!
//! An activation a·x² + b·x + c is a·(x + β)² + γ: the shift β is added, the ciphertext squared,
//! relinearized and rescaled; a and γ fold into the next layer. Every weighted stage and every
//! activation uses one level; sum pools use none. Slots outside a layout may hold anything
//! (an activation turns zeros into β²): every product reads only the slots of its input layout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use blindfold_ckks::{Ciphertext, Context, Evaluator, GaloisKeys, Parameters, Plaintext, RelinKey};
use rayon::prelude::*;

use crate::cost::Costs;
use crate::throughput::{LOG_TARGET_SCALE, LOGIT_HEADROOM_BITS, Lowered, choose_parameters, lower, op_layer};
use crate::{Control, Error, Packing, Progress, Result};
use blindfold_nn::ir::{Layer, Network, Shape};

/// Where a vector's elements sit in the slots.
#[derive(Debug, Clone, PartialEq)]
struct Layout {
    /// Slot of element e, in 0..period.
    positions: Vec<usize>,
    /// The slot vector repeats with this period (a power of two dividing the slots): element e
    /// is at positions[e] + k·period for every k.
    period: usize,
    /// For an image placed on a grid: where a convolution or pool over it can write in place.
    grid: Option<Grid>,
}

/// A (C, H, W) tensor on a grid: element (c, y, x) is at bases[c] + y·row + x·column (mod the
/// slots).
#[derive(Debug, Clone, PartialEq)]
struct Grid {
    bases: Vec<usize>,
    row: usize,
    column: usize,
}

impl Layout {
    /// Elements 0..len at slots 0..len, repeated with the next power of two.
    fn dense(len: usize) -> Self {
        Self { positions: (0..len).collect(), period: len.next_power_of_two().max(1), grid: None }
    }

    /// A (C, H, W) image on a grid: rows a power of two apart, channels in power-of-two blocks,
    /// repeated to fill the slots. None when it does not fit.
    fn image(channels: usize, height: usize, width: usize, slots: usize) -> Option<Self> {
        let row = width.next_power_of_two();
        let block = ((height.max(1) - 1) * row + width).next_power_of_two();
        let period = (channels * block).next_power_of_two();
        if period > slots {
            return None;
        }
        let bases: Vec<usize> = (0..channels).map(|c| c * block).collect();
        let grid = Grid { bases, row, column: 1 };
        Some(Self { positions: grid.positions(height, width, slots), period, grid: Some(grid) })
    }

    /// The slot vector of `values` in this layout (zero elsewhere).
    fn fill(&self, values: &[f64], slots: usize) -> Vec<f64> {
        let mut out = vec![0.0; slots];
        for copy in (0..slots).step_by(self.period) {
            for (&p, &v) in self.positions.iter().zip(values) {
                out[p + copy] = v;
            }
        }
        out
    }
}

impl Grid {
    /// Slot of every element of a (C, H, W) tensor, CHW order.
    fn positions(&self, height: usize, width: usize, slots: usize) -> Vec<usize> {
        let mut positions = Vec::with_capacity(self.bases.len() * height * width);
        for &base in &self.bases {
            for y in 0..height {
                for x in 0..width {
                    positions.push((base + y * self.row + x * self.column) % slots);
                }
            }
        }
        positions
    }
}

/// How a convolution or pool moves over its input: what placing its output in place needs.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    stride: [usize; 2],
    /// Top and left padding.
    padding: [usize; 2],
    /// Output channels, height, width.
    output: [usize; 3],
}

impl Geometry {
    /// The geometry of layer `index` of `network`, if it is a convolution or pool on images.
    fn of(network: &Network, index: usize) -> Option<Self> {
        let Shape::Image { channels, height, width } = *network.shapes().get(index)? else { return None };
        let output = [channels, height, width];
        match network.layers().get(index)? {
            Layer::Conv2d(conv) => {
                Some(Self { stride: conv.stride, padding: [conv.padding[0], conv.padding[1]], output })
            }
            Layer::AvgPool2d(pool) => Some(Self { stride: pool.stride, padding: [0, 0], output }),
            _ => None,
        }
    }

    /// Output layouts on the input's grid: output (o, y, x) at the slot of its window's corner
    /// (or of the window's first real pixel, when padded), on channel bases that are the
    /// input's (same channel count), one power-of-two block per output channel, or, for a
    /// strided output, blocks shared by several channels in the free slots of each stride cell.
    fn grid_outputs(&self, input: &Grid, slots: usize) -> Vec<Layout> {
        let [channels, height, width] = self.output;
        let (row, column) = (input.row * self.stride[0], input.column * self.stride[1]);
        let mut bases: Vec<Vec<usize>> = Vec::new();
        if channels == input.bases.len() {
            bases.push(input.bases.clone());
        }
        let extent = (height.max(1) - 1) * row + (width.max(1) - 1) * column + 1;
        let block = extent.next_power_of_two();
        if channels * block <= slots {
            bases.push((0..channels).map(|o| o * block).collect());
        }
        // A strided output leaves the other slots of each stride cell free: up to stride²
        // channels share a block, each shifted within the cell (a lane).
        let lanes: Vec<usize> = (0..self.stride[0])
            .flat_map(|a| (0..self.stride[1]).map(move |b| a * input.row + b * input.column))
            .collect();
        if lanes.len() > 1 {
            let block = (extent + lanes.iter().max().copied().unwrap_or(0)).next_power_of_two();
            if channels.div_ceil(lanes.len()) * block <= slots {
                bases.push((0..channels).map(|o| (o / lanes.len()) * block + lanes[o % lanes.len()]).collect());
            }
        }
        let corner = self.padding[0] * input.row + self.padding[1] * input.column;
        let anchors: Vec<usize> = if corner == 0 { vec![0] } else { vec![0, slots - corner % slots] };
        let mut layouts = Vec::new();
        for bases in &bases {
            for &anchor in &anchors {
                let grid = Grid { bases: bases.iter().map(|b| (b + anchor) % slots).collect(), row, column };
                let positions = grid.positions(height, width, slots);
                let distinct = positions.iter().collect::<BTreeSet<_>>().len();
                if distinct == positions.len() {
                    layouts.push(Layout { positions, period: slots, grid: Some(grid) });
                }
            }
        }
        layouts
    }
}

/// One step of the plan.
#[derive(Debug, Clone)]
struct Stage {
    name: String,
    layer: usize,
    op: StageOp,
    level_in: usize,
    level_out: usize,
    scale_out: f64,
    cost: f64,
}

#[derive(Debug, Clone)]
enum StageOp {
    Linear(Box<LinearStage>),
    Square { shift: f64 },
}

/// A weighted layer (or sum pool) as a matrix on the slot vector, with its baby-step
/// giant-step split.
///
/// The product runs over slots 0..span, repeated: z = Σ_d D_d ⊙ rot_d(x) with every D_d
/// periodic with the span; then y = Σ_k rot_{k·p}(z) over the output period p by log2(span /
/// p) rotate-and-sum steps (none when the output is not repeated). Each weight W[o, i] sits on
/// one (slot s, diagonal d) with s a copy of o's output slot and s + d a copy of i's input slot.
#[derive(Debug, Clone)]
struct LinearStage {
    outputs: usize,
    bias: Vec<f64>,
    weight_scale: f64,
    rescale: bool,
    output: Layout,
    span: usize,
    /// Baby-step size B: diagonal d = g·B + b.
    baby: usize,
    /// Diagonal d → (slot s, weight).
    entries: BTreeMap<usize, Vec<(usize, f64)>>,
    /// Rotate-and-sum steps after the product.
    sum_steps: Vec<usize>,
    /// Every weight is 1 (a sum pool): the diagonals need no masks, since slots outside the
    /// output layout may hold anything, so the stage is rotations and additions only. (A 0/1
    /// mask cannot be encoded exactly at scale 1, and a larger scale would cost a level.)
    unmasked: bool,
}

impl LinearStage {
    fn baby_steps(&self) -> Vec<usize> {
        self.entries.keys().map(|d| d % self.baby).collect::<BTreeSet<_>>().into_iter().collect()
    }
    fn giant_steps(&self) -> Vec<usize> {
        self.entries.keys().map(|d| d - d % self.baby).collect::<BTreeSet<_>>().into_iter().collect()
    }
    /// Every rotation step it uses, zero excluded.
    fn steps(&self) -> BTreeSet<usize> {
        self.baby_steps()
            .into_iter()
            .chain(self.giant_steps())
            .chain(self.sum_steps.iter().copied())
            .filter(|&s| s != 0)
            .collect()
    }
}

/// A compiled latency plan for one model: the slot layouts, levels and scales of every stage,
/// the diagonals of every linear layer and the rotation keys they need. Independent of any
/// key; reused for every image of the model.
#[derive(Debug, Clone)]
pub struct LatencyPlan {
    model: String,
    params: Parameters,
    input: Layout,
    input_len: usize,
    output_len: usize,
    input_level: usize,
    input_scale: f64,
    stages: Vec<Stage>,
    output_affine: (f64, f64),
}

impl LatencyPlan {
    /// Compiles `network` (named `model`) for the latency packing.
    pub fn compile(model: &str, network: &Network) -> Result<Self> {
        let (lowered, output_affine) = lower(network)?;
        let ops = compose_pools(lowered, network);
        let depth = ops.iter().filter(|op| !matches!(op, Lowered::SumPool { .. })).count();
        let params = choose_parameters(depth).map_err(|max_depth| {
            let (index, layer) = ops.get(max_depth).or(ops.last()).map(op_layer).unwrap_or((0, "output".into()));
            Error::DoesNotFit {
                index,
                layer,
                reason: format!(
                    "the network needs {depth} levels; the largest 128-bit parameter set holds {max_depth}, \
                     exceeded by {}",
                    depth.saturating_sub(max_depth)
                ),
            }
        })?;
        let slots = params.slots();
        let mut longest = network.input().len();
        for op in &ops {
            if let Lowered::Weighted { rows, inputs, .. } | Lowered::SumPool { rows, inputs, .. } = op {
                longest = longest.max(rows.len()).max(*inputs);
            }
        }
        if longest.next_power_of_two() > slots {
            let (index, layer) = ops.first().map(op_layer).unwrap_or((0, "input".into()));
            return Err(Error::Unsupported {
                index,
                layer,
                packing: "latency",
                reason: format!("a vector of {longest} values does not fit one ciphertext of {slots} slots"),
            });
        }
        // The client packs the input, so its layout is free: try the grid and the dense one.
        let mut inputs = vec![Layout::dense(network.input().len())];
        if let Shape::Image { channels, height, width } = network.input() {
            inputs.extend(Layout::image(channels, height, width, slots));
        }
        let mut best: Option<LatencyPlan> = None;
        for input in inputs {
            let plan = plan_stages(model, &params, network, &ops, output_affine, depth, input)?;
            if best.as_ref().is_none_or(|b| plan.estimated_cost() < b.estimated_cost()) {
                best = Some(plan);
            }
        }
        best.ok_or_else(|| Error::Internal("no input layout".into()))
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.model
    }
    /// The packing.
    pub fn packing(&self) -> Packing {
        Packing::Latency
    }
    /// The parameter set the plan was compiled for.
    pub fn params(&self) -> &Parameters {
        &self.params
    }
    /// The level the input is encrypted at.
    pub fn input_level(&self) -> usize {
        self.input_level
    }
    /// The scale the input is encoded at.
    pub fn input_scale(&self) -> f64 {
        self.input_scale
    }
    /// The multiplicative depth used.
    pub fn depth(&self) -> usize {
        self.input_level
    }
    /// The input's slot period: the client's image is repeated with it.
    pub fn period(&self) -> usize {
        self.input.period
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
            if let StageOp::Linear(linear) = &stage.op {
                for step in linear.steps() {
                    let level = keys.entry(step).or_insert(stage.level_in);
                    *level = (*level).max(stage.level_in);
                }
            }
        }
        keys.into_iter().map(|(step, level)| (step as i64, level)).collect()
    }

    /// Bytes of the serialized rotation keys [`LatencyPlan::rotation_keys`] asks for: per key,
    /// one polynomial per digit at its level, over its ciphertext primes and the special ones.
    pub fn rotation_key_bytes(&self) -> usize {
        let params = &self.params;
        let row = |q: u64| (params.n() * (64 - q.leading_zeros()) as usize).div_ceil(8);
        let specials: usize = params.special_moduli().iter().map(|&p| row(p)).sum();
        self.rotation_keys()
            .into_iter()
            .map(|(_, level)| {
                let primes: usize = params.moduli()[..=level].iter().map(|&q| row(q)).sum();
                // Galois element, seed, level and digit count, then the b_j.
                8 + 32 + 2 + params.digits_at(level).len() * (primes + specials)
            })
            .sum()
    }

    /// Estimated work of one image, in multiply-adds of one coefficient (the unit of
    /// [`crate::choose_packing`]).
    pub fn estimated_cost(&self) -> f64 {
        self.stages.iter().map(|stage| stage.cost).sum::<f64>() * self.params.n() as f64
    }

    /// Bytes the engine holds in pre-encoded plaintext diagonals.
    pub fn plaintext_bytes(&self) -> usize {
        self.stages
            .iter()
            .map(|stage| match &stage.op {
                StageOp::Linear(linear) => (linear.entries.len() + 1) * (stage.level_in + 1) * self.params.n() * 8,
                StageOp::Square { .. } => 0,
            })
            .sum()
    }

    /// The slot vector of one image in the plan's input layout.
    pub fn pack(&self, image: &[f64]) -> Result<Vec<f64>> {
        if image.len() != self.input_len {
            return Err(Error::Input(format!(
                "the image has {} values, the model takes {}",
                image.len(),
                self.input_len
            )));
        }
        Ok(self.input.fill(image, self.params.slots()))
    }

    /// The logits from the decrypted output slot vector.
    pub fn unpack(&self, slots: &[f64]) -> Result<Vec<f64>> {
        let positions = match self.stages.iter().rev().find_map(|stage| match &stage.op {
            StageOp::Linear(linear) => Some(&linear.output.positions),
            StageOp::Square { .. } => None,
        }) {
            Some(positions) => positions.clone(),
            None => self.input.positions.clone(),
        };
        let (scale, shift) = self.output_affine;
        positions
            .iter()
            .take(self.output_len)
            .map(|&p| {
                slots
                    .get(p)
                    .map(|v| scale * v + shift)
                    .ok_or_else(|| Error::Input(format!("{} slots decrypted, the output needs slot {p}", slots.len())))
            })
            .collect()
    }

    /// One line per stage: what it does, levels, scale, diagonals and rotations.
    pub fn summary(&self) -> String {
        let keys = self.rotation_keys();
        let mut out = format!(
            "latency plan for {}: {}, input period {} in {} slots{}, input level {}, scale 2^{:.1}, {} rotation keys \
             ({:.1} MB), {:.0} MB of plaintext diagonals\n",
            self.model,
            crate::parameter_line(&self.params),
            self.input.period,
            self.params.slots(),
            match &self.input.grid {
                Some(grid) => format!(" (grid: rows {} apart)", grid.row),
                None => String::new(),
            },
            self.input_level,
            self.input_scale.log2(),
            keys.len(),
            self.rotation_key_bytes() as f64 / 1e6,
            self.plaintext_bytes() as f64 / 1e6,
        );
        for (i, stage) in self.stages.iter().enumerate() {
            let what = match &stage.op {
                StageOp::Linear(linear) => format!(
                    "{} outputs ({}), {} diagonals, B = {}: {} baby (hoisted) + {} giant + {} sum rotations, \
                     weights at 2^{:.1}",
                    linear.outputs,
                    match &linear.output.grid {
                        Some(grid) => format!("grid, rows {} apart", grid.row),
                        None => format!("period {}", linear.output.period),
                    },
                    linear.entries.len(),
                    linear.baby,
                    linear.baby_steps().iter().filter(|&&s| s != 0).count(),
                    linear.giant_steps().iter().filter(|&&s| s != 0).count(),
                    linear.sum_steps.len(),
                    linear.weight_scale.log2()
                ),
                StageOp::Square { shift } => format!("(x + {shift:.4})², relinearize, rescale"),
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
        out
    }
}

/// Runs a [`LatencyPlan`] with its diagonals encoded once. `Send + Sync`.
#[derive(Debug)]
pub struct LatencyEngine {
    plan: LatencyPlan,
    evaluator: Evaluator,
    linear: Vec<Option<EncodedLinear>>,
}

/// A linear stage's plaintexts: per giant step, its terms.
#[derive(Debug)]
struct EncodedLinear {
    baby_steps: Vec<i64>,
    giants: Vec<(i64, Vec<Term>)>,
    sum_steps: Vec<i64>,
    rescale: bool,
    bias: Plaintext,
}

/// A baby (by index) times its diagonal pre-rotated by the giant step; no diagonal in an
/// unmasked stage (the baby is added as it is).
type Term = (usize, Option<Plaintext>);

impl LatencyEngine {
    /// Encodes every diagonal of `plan` for `context` (which must have the plan's parameters).
    pub fn new(plan: LatencyPlan, context: &Arc<Context>) -> Result<Self> {
        if context.params() != &plan.params {
            return Err(Error::Input("the context's parameters differ from the plan's".into()));
        }
        let slots = context.slots();
        let linear = plan
            .stages
            .iter()
            .map(|stage| match &stage.op {
                StageOp::Linear(linear) => encode_linear(context, linear, stage, slots).map(Some),
                StageOp::Square { .. } => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { plan, evaluator: Evaluator::new(context), linear })
    }

    /// The plan.
    pub fn plan(&self) -> &LatencyPlan {
        &self.plan
    }

    /// Evaluates the network on one encrypted image (encrypted at the plan's input level and
    /// scale, packed with [`LatencyPlan::pack`]). The result is at level 0; decrypt it and call
    /// [`LatencyPlan::unpack`].
    pub fn evaluate(
        &self,
        input: Ciphertext,
        relin: &RelinKey,
        galois: &GaloisKeys,
        control: &Control<'_>,
    ) -> Result<Ciphertext> {
        let plan = &self.plan;
        if input.level() != plan.input_level || input.size() != 2 {
            return Err(Error::Input(format!(
                "the input is a {}-part ciphertext at level {}, the plan takes a 2-part one at level {}",
                input.size(),
                input.level(),
                plan.input_level
            )));
        }
        let ev = &self.evaluator;
        let total: f64 = plan.stages.iter().map(|s| s.cost).sum::<f64>().max(f64::MIN_POSITIVE);
        let mut done = 0.0;
        let mut current = input;
        for (index, (stage, encoded)) in plan.stages.iter().zip(&self.linear).enumerate() {
            control.check()?;
            control.report(Progress {
                stage: index,
                stages: plan.stages.len(),
                name: &stage.name,
                fraction: done / total,
            });
            current = match (&stage.op, encoded) {
                (StageOp::Linear(_), Some(encoded)) => apply_linear(ev, &current, encoded, galois, control)?,
                (StageOp::Square { shift }, _) => {
                    let mut squared = ev.square_shifted(&current, *shift)?;
                    ev.relinearize_assign(&mut squared, relin)?;
                    ev.rescale_assign(&mut squared)?;
                    squared
                }
                (StageOp::Linear(_), None) => {
                    return Err(Error::Internal("engine has no diagonals for a stage".into()));
                }
            };
            done += stage.cost;
        }
        control.report(Progress { stage: plan.stages.len(), stages: plan.stages.len(), name: "done", fraction: 1.0 });
        Ok(ev.drop_to_level(&current, 0)?)
    }
}

/// Σ_g rot_g(Σ_b P_{g,b} ⊙ rot_b(x)) with hoisted baby steps and giant steps in parallel; then
/// rotate-and-sum, rescale and the bias.
fn apply_linear(
    ev: &Evaluator,
    x: &Ciphertext,
    encoded: &EncodedLinear,
    galois: &GaloisKeys,
    control: &Control<'_>,
) -> Result<Ciphertext> {
    let babies = if encoded.baby_steps.iter().any(|&step| step != 0) {
        let decomposed = ev.decompose(x)?;
        encoded
            .baby_steps
            .par_iter()
            .map(
                |&step| {
                    if step == 0 { Ok(x.clone()) } else { Ok(ev.rotate_decomposed(x, &decomposed, step, galois)?) }
                },
            )
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![x.clone()]
    };
    let partials = encoded
        .giants
        .par_iter()
        .map(|(step, terms)| {
            control.check()?;
            let mut terms_iter = terms.iter();
            let Some((first, plaintext)) = terms_iter.next() else {
                return Ok(None);
            };
            let mut acc = match plaintext {
                Some(plaintext) => ev.mul_plain(&babies[*first], plaintext)?,
                None => babies[*first].clone(),
            };
            for (baby, plaintext) in terms_iter {
                match plaintext {
                    Some(plaintext) => ev.mul_plain_accumulate(&mut acc, &babies[*baby], plaintext)?,
                    None => ev.add_assign(&mut acc, &babies[*baby])?,
                }
            }
            Ok(Some(if *step == 0 { acc } else { ev.rotate(&acc, *step, galois)? }))
        })
        .collect::<Result<Vec<_>>>()?;
    drop(babies);
    let mut sum: Option<Ciphertext> = None;
    for partial in partials.into_iter().flatten() {
        match sum.as_mut() {
            None => sum = Some(partial),
            Some(acc) => ev.add_assign(acc, &partial)?,
        }
    }
    let mut sum = sum.ok_or_else(|| Error::Internal("a linear stage has no diagonals".into()))?;
    // Rotate-and-sum before rescaling: the key-switching noise is then small against the scale.
    for &step in &encoded.sum_steps {
        let rotated = ev.rotate(&sum, step, galois)?;
        ev.add_assign(&mut sum, &rotated)?;
    }
    if encoded.rescale {
        ev.rescale_assign(&mut sum)?;
    }
    Ok(ev.add_plain(&sum, &encoded.bias)?)
}

/// Encodes a linear stage's diagonals, pre-rotated by their giant step, at the stage's input
/// level and weight scale, and its bias at the output level and scale.
fn encode_linear(context: &Arc<Context>, linear: &LinearStage, stage: &Stage, slots: usize) -> Result<EncodedLinear> {
    let baby_steps = linear.baby_steps();
    let baby_index: BTreeMap<usize, usize> = baby_steps.iter().enumerate().map(|(k, &b)| (b, k)).collect();
    let giants = linear.giant_steps();
    let level = stage.level_in;
    let encoded = giants
        .par_iter()
        .map(|&g| {
            let terms = linear
                .entries
                .range(g..g + linear.baby)
                .map(|(&d, entries)| {
                    let baby = baby_index.get(&(d - g)).copied().unwrap_or(0);
                    if linear.unmasked {
                        return Ok((baby, None));
                    }
                    // P[q] = D_d[(q - g) mod slots], so that rot_g(P ⊙ rot_b(x)) = D_d ⊙ rot_d(x).
                    let mut rotated = vec![0.0; slots];
                    for &(p, w) in entries {
                        for copy in (0..slots).step_by(linear.span) {
                            rotated[(p + copy + g) % slots] += w;
                        }
                    }
                    Ok((baby, Some(context.encode(&rotated, level, linear.weight_scale)?)))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((g as i64, terms))
        })
        .collect::<Result<Vec<_>>>()?;
    let bias = context.encode(&linear.output.fill(&linear.bias, slots), stage.level_out, stage.scale_out)?;
    Ok(EncodedLinear {
        baby_steps: baby_steps.into_iter().map(|b| b as i64).collect(),
        giants: encoded,
        sum_steps: linear.sum_steps.iter().map(|&s| s as i64).collect(),
        rescale: linear.rescale,
        bias,
    })
}

/// Replaces each sum pool followed by a dense layer with their product (one matrix); a sum
/// pool before a convolution stays a stage of its own.
fn compose_pools(lowered: Vec<Lowered>, network: &Network) -> Vec<Lowered> {
    let mut out: Vec<Lowered> = Vec::with_capacity(lowered.len());
    for op in lowered {
        let op = match op {
            Lowered::Weighted { layer, name, inputs, rows, bias, order } => {
                let bias = match &order {
                    Some(order) => {
                        let mut sorted = vec![0.0; bias.len()];
                        for (&b, &position) in bias.iter().zip(order) {
                            if let Some(slot) = sorted.get_mut(position) {
                                *slot = b;
                            }
                        }
                        sorted
                    }
                    None => bias,
                };
                let rows = in_tensor_order(rows, order);
                let dense = matches!(network.layers().get(layer), Some(Layer::Dense(_)));
                match out.last() {
                    Some(Lowered::SumPool { rows: pool, inputs: pool_inputs, name: pool_name, .. }) if dense => {
                        let composed = rows
                            .iter()
                            .map(|row| {
                                let mut sum: BTreeMap<usize, f64> = BTreeMap::new();
                                for &(k, w) in row {
                                    for &(i, v) in pool.get(k).map(Vec::as_slice).unwrap_or(&[]) {
                                        *sum.entry(i).or_insert(0.0) += w * v;
                                    }
                                }
                                sum.into_iter().collect()
                            })
                            .collect();
                        let (name, inputs) = (format!("{pool_name} + {name}"), *pool_inputs);
                        out.pop();
                        Lowered::Weighted { layer, name, inputs, rows: composed, bias, order: None }
                    }
                    _ => Lowered::Weighted { layer, name, inputs, rows, bias, order: None },
                }
            }
            other => other,
        };
        out.push(op);
    }
    out
}

/// Rows indexed by tensor position (undoing a convolution's position-major order).
fn in_tensor_order(rows: Vec<Vec<(usize, f64)>>, order: Option<Vec<usize>>) -> Vec<Vec<(usize, f64)>> {
    let Some(order) = order else { return rows };
    let mut sorted: Vec<Vec<(usize, f64)>> = vec![Vec::new(); rows.len()];
    for (row, &position) in rows.into_iter().zip(&order) {
        if let Some(slot) = sorted.get_mut(position) {
            *slot = row;
        }
    }
    sorted
}

/// Assigns every weight W[o, i] to one (slot s, diagonal d) with s a copy of o's output slot in
/// 0..span and s + d a copy of i's input slot, preferring the diagonals most weights can use;
/// returns diagonal → (slot, weight).
fn assign_diagonals(
    rows: &[Vec<(usize, f64)>],
    input: &Layout,
    output: &Layout,
    span: usize,
) -> BTreeMap<usize, Vec<(usize, f64)>> {
    let out_copies = span / output.period;
    let in_copies = span / input.period;
    let candidates = |o: usize, i: usize| {
        let (p0, q0) = (output.positions[o], input.positions[i]);
        (0..out_copies).flat_map(move |j| {
            let s = p0 + j * output.period;
            (0..in_copies).map(move |k| ((q0 + k * input.period + span - s) % span, s))
        })
    };
    let mut frequency = vec![0u32; span];
    for (o, row) in rows.iter().enumerate() {
        for &(i, w) in row {
            if w != 0.0 {
                for (d, _) in candidates(o, i) {
                    frequency[d] += 1;
                }
            }
        }
    }
    let mut entries: BTreeMap<usize, Vec<(usize, f64)>> = BTreeMap::new();
    for (o, row) in rows.iter().enumerate() {
        for &(i, w) in row {
            if w == 0.0 {
                continue;
            }
            let best = candidates(o, i).max_by(|a, b| frequency[a.0].cmp(&frequency[b.0]).then(b.0.cmp(&a.0)));
            if let Some((d, s)) = best {
                entries.entry(d).or_default().push((s, w));
            }
        }
    }
    entries
}

/// The power-of-two baby-step size minimising the rotations' cost, and that cost.
fn choose_baby(diagonals: &[usize], span: usize, costs: Costs) -> (usize, f64) {
    let mut best = (1, f64::INFINITY);
    let mut baby = 1;
    while baby <= span {
        let babies = diagonals.iter().map(|d| d % baby).filter(|&b| b != 0).collect::<BTreeSet<_>>().len();
        let giants = diagonals.iter().map(|d| d / baby).filter(|&g| g != 0).collect::<BTreeSet<_>>().len();
        let hoisting = if babies > 0 { costs.decomposition() } else { 0.0 };
        let cost = hoisting + babies as f64 * costs.hoisted_rotation() + giants as f64 * costs.key_switch();
        if cost < best.1 {
            best = (baby, cost);
        }
        baby *= 2;
    }
    best
}

/// A linear stage computing `rows` from `input` into `output`, and its cost. A `pool` (weights
/// 1 at scale 1, no bias) needs no masks.
fn linear_stage(
    rows: &[Vec<(usize, f64)>],
    bias: &[f64],
    input: &Layout,
    output: Layout,
    (slots, costs, pool): (usize, Costs, bool),
) -> (LinearStage, f64) {
    let span = input.period.max(output.period).min(slots);
    let entries = assign_diagonals(rows, input, &output, span);
    let diagonals: Vec<usize> = entries.keys().copied().collect();
    let (baby, rotations) = choose_baby(&diagonals, span, costs);
    let sum_steps: Vec<usize> =
        std::iter::successors(Some(output.period), |s| Some(s * 2)).take_while(|&s| s < span).collect();
    let unmasked = pool && rows.iter().flatten().all(|&(_, w)| w == 1.0);
    let products = if unmasked { 0.0 } else { diagonals.len() as f64 * costs.product() };
    let cost = rotations + sum_steps.len() as f64 * costs.key_switch() + products;
    let stage = LinearStage {
        outputs: rows.len(),
        bias: bias.to_vec(),
        weight_scale: 1.0,
        rescale: false,
        output,
        span,
        baby,
        entries,
        sum_steps,
        unmasked,
    };
    (stage, cost)
}

/// The cheapest stage for `rows` over the layouts its output can take: in place on the input's
/// grid (convolutions and pools), or dense.
fn best_linear_stage(
    rows: &[Vec<(usize, f64)>],
    bias: &[f64],
    input: &Layout,
    geometry: Option<Geometry>,
    how: (usize, Costs, bool),
) -> (LinearStage, f64) {
    let slots = how.0;
    let mut outputs = vec![Layout::dense(rows.len())];
    if let (Some(geometry), Some(grid)) = (geometry, &input.grid) {
        outputs.extend(geometry.grid_outputs(grid, slots));
    }
    let mut best: Option<(LinearStage, f64)> = None;
    for output in outputs {
        let (stage, cost) = linear_stage(rows, bias, input, output, how);
        if best.as_ref().is_none_or(|(_, b)| cost < *b) {
            best = Some((stage, cost));
        }
    }
    match best {
        Some(best) => best,
        None => linear_stage(rows, bias, input, Layout::dense(rows.len()), how),
    }
}

/// Walks the ops from `input` with (level, scale, layout), fixing every weight scale, layout
/// and baby-step size.
#[allow(clippy::too_many_arguments)]
fn plan_stages(
    model: &str,
    params: &Parameters,
    network: &Network,
    ops: &[Lowered],
    output_affine: (f64, f64),
    depth: usize,
    input: Layout,
) -> Result<LatencyPlan> {
    let moduli: Vec<f64> = params.moduli().iter().map(|&q| q as f64).collect();
    let slots = params.slots();
    let target = 2f64.powi(LOG_TARGET_SCALE);
    let final_target = 2f64.powi(((moduli[0]).log2().floor() as i32) - 1 - LOGIT_HEADROOM_BITS);
    let last_weighted = ops.iter().rposition(|op| matches!(op, Lowered::Weighted { .. }));
    let (mut level, mut scale) = (depth, target);
    let mut layout = input.clone();
    let mut stages = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let (layer, name) = op_layer(op);
        let costs = Costs::new(params, level);
        let (op, level_out, scale_out, cost) = match op {
            Lowered::Weighted { rows, bias, .. } => {
                if level == 0 {
                    return Err(Error::DoesNotFit { index: layer, layer: name, reason: "ran out of levels".into() });
                }
                let out_target = if Some(i) == last_weighted { final_target } else { target };
                let weight_scale = out_target * moduli[level] / scale;
                if weight_scale < 1.0 {
                    return Err(Error::DoesNotFit {
                        index: layer,
                        layer: name,
                        reason: format!("weights would be encoded at scale 2^{:.1} < 1", weight_scale.log2()),
                    });
                }
                let (mut linear, cost) =
                    best_linear_stage(rows, bias, &layout, Geometry::of(network, layer), (slots, costs, false));
                linear.weight_scale = weight_scale;
                linear.rescale = true;
                layout = linear.output.clone();
                // Exactly what the evaluator computes: (scale · weight scale) / q_level.
                (
                    StageOp::Linear(Box::new(linear)),
                    level - 1,
                    scale * weight_scale / moduli[level],
                    cost + costs.rescale(2),
                )
            }
            Lowered::SumPool { rows, .. } => {
                // Weights 1 at scale 1: no level.
                let bias = vec![0.0; rows.len()];
                let (linear, cost) =
                    best_linear_stage(rows, &bias, &layout, Geometry::of(network, layer), (slots, costs, true));
                layout = linear.output.clone();
                (StageOp::Linear(Box::new(linear)), level, scale, cost)
            }
            Lowered::Square { shift, .. } => {
                if level == 0 {
                    return Err(Error::DoesNotFit { index: layer, layer: name, reason: "ran out of levels".into() });
                }
                let squared = scale * scale / moduli[level];
                (
                    StageOp::Square { shift: *shift },
                    level - 1,
                    squared,
                    costs.square() + costs.key_switch() + costs.rescale(2),
                )
            }
        };
        stages.push(Stage { name, layer, op, level_in: level, level_out, scale_out, cost });
        level = level_out;
        scale = scale_out;
    }
    Ok(LatencyPlan {
        model: model.to_owned(),
        params: params.clone(),
        input,
        input_len: network.input().len(),
        output_len: network.output().len(),
        input_level: depth,
        input_scale: target,
        stages,
        output_affine,
    })
}
