//! The latency packing: one image in the slots of one ciphertext.
//!
//! The image (and every activation after it) is a vector laid out in slots 0..len, zero-padded
//! to a power-of-two **period** (the longest vector of the network) and repeated to fill every
//! slot, so a rotation of the whole slot vector by d is a cyclic rotation of the vector by d.
//!
//! Lowering is the throughput packing's (average pooling's 1/k² and every activation's leading
//! coefficient and constant fold into the next weighted layer); a sum pool is composed into the
//! weighted layer after it, so each convolution or dense layer (with its pooling) becomes one
//! sparse matrix W. The engine computes W·x by the **diagonal method**: y = Σ_d diag_d ⊙ rot_d(x)
//! over the nonzero diagonals d only, with baby-step giant-step (d = g + b): the baby rotations
//! rot_b(x) are **hoisted** (c1 decomposed once), each giant step multiplies the babies by
//! plaintext diagonals pre-rotated by −g and encoded once per model, then rotates the sum by g.
//! The baby-step size B is chosen per layer to minimise the rotation cost.
//!
//! An activation a·x² + b·x + c is a·(x + β)² + γ: the shift β is added, the ciphertext squared,
//! relinearized and rescaled; a and γ fold into the next layer. Every stage uses one level.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use blindfold_ckks::{Ciphertext, Context, Evaluator, GaloisKeys, Parameters, Plaintext, RelinKey, security_bound};
use rayon::prelude::*;

use super::throughput::{LOG_TARGET_SCALE, LOGIT_HEADROOM_BITS, Lowered, choose_parameters, lower, op_layer};
use super::{Control, Error, Packing, Progress, Result};
use crate::ir::Network;

/// Relative cost of a hoisted baby-step rotation against a full rotation (one inner product
/// and one mod-down against a decomposition, inner product and mod-down).
const HOISTED_ROTATION_COST: f64 = 0.4;
/// Cost of one key switch at level ℓ, in coefficient multiply-adds per coefficient per prime
/// (the unit of the throughput plan's estimates).
const KEY_SWITCH_COST: f64 = 40.0;

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

/// A weighted layer as a matrix on the slot vector, with its baby-step giant-step split.
///
/// The input is periodic with period `p_in` (or block-rotated, for the network input); the
/// product runs over all slots: z = Σ_d D_d ⊙ rot_d(x), then y = Σ_k rot_{k·p_out}(z) by
/// log2(slots / p_out) rotate-and-sum steps, which leaves y periodic with `p_out`. Each weight
/// W[o, i] is assigned to one (position p ≡ o mod p_out, diagonal d) with x[i] at slot p + d.
#[derive(Debug, Clone)]
struct LinearStage {
    outputs: usize,
    bias: Vec<f64>,
    weight_scale: f64,
    rescale: bool,
    p_out: usize,
    /// The product runs over slots 0..span (repeated): max(p_in, p_out), or every slot for a
    /// block-rotated input. Rotate-and-sum adds span / p_out copies.
    span: usize,
    /// Baby-step size B: diagonal d = g·B + b.
    baby: usize,
    /// Diagonal d → (slot p, weight).
    entries: BTreeMap<usize, Vec<(usize, f64)>>,
    /// Rotate-and-sum steps after the product.
    sum_steps: Vec<usize>,
}

impl LinearStage {
    fn baby_steps(&self) -> Vec<usize> {
        self.entries.keys().map(|d| d % self.baby).collect::<BTreeSet<_>>().into_iter().collect()
    }
    fn giant_steps(&self) -> Vec<usize> {
        self.entries.keys().map(|d| d - d % self.baby).collect::<BTreeSet<_>>().into_iter().collect()
    }
}

/// A compiled latency plan for one model: the slot layout, levels and scales of every stage,
/// the diagonals of every linear layer and the rotation keys they need. Independent of any
/// key; reused for every image of the model.
#[derive(Debug, Clone)]
pub struct LatencyPlan {
    model: String,
    params: Parameters,
    period: usize,
    input_len: usize,
    output_len: usize,
    input_level: usize,
    input_scale: f64,
    stages: Vec<Stage>,
    output_affine: (f64, f64),
    /// Whether the input is block-rotated (block k of p_in slots holds x rotated by k·p_in/r).
    rotated_input: bool,
}

impl LatencyPlan {
    /// Compiles `network` (named `model`) for the latency packing.
    pub fn compile(model: &str, network: &Network) -> Result<Self> {
        let (lowered, output_affine) = lower(network)?;
        let ops = compose_pools(lowered);
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
        let period = network.input().len().next_power_of_two();
        if longest.next_power_of_two() > slots {
            let (index, layer) = ops.first().map(op_layer).unwrap_or((0, "input".into()));
            return Err(Error::Unsupported {
                index,
                layer,
                packing: "latency",
                reason: format!("a vector of {longest} values does not fit one ciphertext of {slots} slots"),
            });
        }
        plan_stages(model, params, network, ops, output_affine, depth, period)
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
    /// The slot period: every vector is repeated with this period.
    pub fn period(&self) -> usize {
        self.period
    }

    /// Every rotation step the plan uses (left rotations, in 0..slots), ascending: generate
    /// Galois keys for exactly these.
    pub fn rotation_steps(&self) -> Vec<i64> {
        let mut steps = BTreeSet::new();
        for stage in &self.stages {
            if let StageOp::Linear(linear) = &stage.op {
                steps.extend(
                    linear
                        .baby_steps()
                        .into_iter()
                        .chain(linear.giant_steps())
                        .chain(linear.sum_steps.iter().copied())
                        .filter(|&s| s != 0),
                );
            }
        }
        steps.into_iter().map(|s| s as i64).collect()
    }

    /// Estimated work of one image, in multiply-adds of one coefficient (the unit of
    /// [`super::choose_packing`]).
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

    /// The slot vector of one image: the values, zero-padded to the period, repeated.
    pub fn pack(&self, image: &[f64]) -> Result<Vec<f64>> {
        if image.len() != self.input_len {
            return Err(Error::Input(format!(
                "the image has {} values, the model takes {}",
                image.len(),
                self.input_len
            )));
        }
        Ok(input_layout(image, self.period, self.params.slots(), self.rotated_input))
    }

    /// The logits from the decrypted output slot vector.
    pub fn unpack(&self, slots: &[f64]) -> Result<Vec<f64>> {
        let values = slots.get(..self.output_len).ok_or_else(|| {
            Error::Input(format!("{} slots decrypted, the model has {} outputs", slots.len(), self.output_len))
        })?;
        let (scale, shift) = self.output_affine;
        Ok(values.iter().map(|v| scale * v + shift).collect())
    }

    /// One line per stage: what it does, levels, scale, diagonals and rotations.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "latency plan for {}: N = 2^{}, {} primes + P ({:.0} bits, bound {}), period {} in {} slots, input level {}, \
             scale 2^{:.1}, {} rotation keys, {:.0} MB of plaintext diagonals\n",
            self.model,
            self.params.log_n(),
            self.params.moduli().len(),
            self.params.log_qp(),
            security_bound(self.params.log_n()).unwrap_or(0),
            self.period,
            self.params.slots(),
            self.input_level,
            self.input_scale.log2(),
            self.rotation_steps().len(),
            self.plaintext_bytes() as f64 / 1e6,
        );
        for (i, stage) in self.stages.iter().enumerate() {
            let what = match &stage.op {
                StageOp::Linear(linear) => format!(
                    "{} outputs (period {}), {} diagonals, B = {}: {} baby (hoisted) + {} giant + {} sum rotations, \
                     weights at 2^{:.1}",
                    linear.outputs,
                    linear.p_out,
                    linear.entries.len(),
                    linear.baby,
                    linear.baby_steps().iter().filter(|&&s| s != 0).count(),
                    linear.giant_steps().iter().filter(|&&s| s != 0).count(),
                    linear.sum_steps.len(),
                    linear.weight_scale.log2()
                ),
                StageOp::Square { shift } => format!("(x + {shift:.4})², relinearize, rescale"),
            };
            out.push_str(&super::stage_line(
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

/// A linear stage's plaintexts: per giant step, its (baby index, pre-rotated diagonal) terms.
#[derive(Debug)]
struct EncodedLinear {
    baby_steps: Vec<i64>,
    giants: Vec<(i64, Vec<(usize, Plaintext)>)>,
    sum_steps: Vec<i64>,
    rescale: bool,
    bias: Plaintext,
}

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
                    let shifted = if *shift != 0.0 { ev.add_scalar(&current, *shift)? } else { current };
                    ev.rescale(&ev.relinearize(&ev.square(&shifted)?, relin)?)?
                }
                (StageOp::Linear(_), None) => return Err(Error::Input("engine has no diagonals for a stage".into())),
            };
            done += stage.cost;
        }
        control.report(Progress { stage: plan.stages.len(), stages: plan.stages.len(), name: "done", fraction: 1.0 });
        Ok(ev.drop_to_level(&current, 0)?)
    }
}

/// Σ_g rot_g(Σ_b P_{g,b} ⊙ rot_b(x)) with hoisted baby steps and giant steps in parallel; then
/// rescale, rotate-and-sum, and the bias.
fn apply_linear(
    ev: &Evaluator,
    x: &Ciphertext,
    encoded: &EncodedLinear,
    galois: &GaloisKeys,
    control: &Control<'_>,
) -> Result<Ciphertext> {
    let decomposed = ev.decompose(x)?;
    let babies = encoded
        .baby_steps
        .par_iter()
        .map(|&step| if step == 0 { Ok(x.clone()) } else { Ok(ev.rotate_decomposed(x, &decomposed, step, galois)?) })
        .collect::<Result<Vec<_>>>()?;
    drop(decomposed);
    let partials = encoded
        .giants
        .par_iter()
        .map(|(step, terms)| {
            control.check()?;
            let mut terms_iter = terms.iter();
            let Some((first, plaintext)) = terms_iter.next() else {
                return Ok(None);
            };
            let mut acc = ev.mul_plain(&babies[*first], plaintext)?;
            for (baby, plaintext) in terms_iter {
                ev.mul_plain_accumulate(&mut acc, &babies[*baby], plaintext)?;
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
    let mut sum = sum.ok_or_else(|| Error::Input("a linear stage has no diagonals".into()))?;
    // Rotate-and-sum before rescaling: the key-switching noise is then small against the scale.
    for &step in &encoded.sum_steps {
        let rotated = ev.rotate(&sum, step, galois)?;
        ev.add_assign(&mut sum, &rotated)?;
    }
    if encoded.rescale {
        sum = ev.rescale(&sum)?;
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
                    // P[q] = D_d[(q - g) mod slots], so that rot_g(P ⊙ rot_b(x)) = D_d ⊙ rot_d(x).
                    let mut rotated = vec![0.0; slots];
                    for &(p, w) in entries {
                        for copy in (0..slots).step_by(linear.span) {
                            rotated[(p + copy + g) % slots] += w;
                        }
                    }
                    let baby = baby_index.get(&(d - g)).copied().unwrap_or(0);
                    Ok((baby, context.encode(&rotated, level, linear.weight_scale)?))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((g as i64, terms))
        })
        .collect::<Result<Vec<_>>>()?;
    let bias = context.encode(&tile(&linear.bias, linear.p_out, slots), stage.level_out, stage.scale_out)?;
    Ok(EncodedLinear {
        baby_steps: baby_steps.into_iter().map(|b| b as i64).collect(),
        giants: encoded,
        sum_steps: linear.sum_steps.iter().map(|&s| s as i64).collect(),
        rescale: linear.rescale,
        bias,
    })
}

/// `values` zero-padded to `period` and repeated over `slots`.
fn tile(values: &[f64], period: usize, slots: usize) -> Vec<f64> {
    (0..slots).map(|q| values.get(q % period).copied().unwrap_or(0.0)).collect()
}

/// The input slot vector: `values` padded to `period` and repeated, each block of `period`
/// slots rotated by k·period/r when `rotated` (r blocks).
fn input_layout(values: &[f64], period: usize, slots: usize, rotated: bool) -> Vec<f64> {
    let shift = if rotated { period / (slots / period).max(1) } else { 0 };
    (0..slots)
        .map(|q| {
            let (block, t) = (q / period, q % period);
            values.get((t + block * shift) % period).copied().unwrap_or(0.0)
        })
        .collect()
}

/// Replaces each sum pool followed by a weighted layer with their product (one matrix).
fn compose_pools(lowered: Vec<Lowered>) -> Vec<Lowered> {
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
                if let Some(Lowered::SumPool { rows: pool, inputs: pool_inputs, name: pool_name, .. }) =
                    out.last().filter(|last| matches!(last, Lowered::SumPool { .. }))
                {
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
                } else {
                    Lowered::Weighted { layer, name, inputs, rows, bias, order: None }
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

/// Where the input layout holds x[i]: every slot of the period-`p_in` repetition, or, block-rotated,
/// one slot per block.
fn input_positions(i: usize, p_in: usize, span: usize, rotated: bool) -> Vec<usize> {
    let blocks = span / p_in;
    let shift = if rotated { p_in / blocks.max(1) } else { 0 };
    (0..blocks).map(|k| k * p_in + (i + p_in - (k * shift) % p_in) % p_in).collect()
}

/// Assigns every weight W[o, i] to one (slot p ≡ o mod p_out, diagonal d) with x[i] at slot
/// p + d, preferring the diagonals most pairs can use; returns diagonal → (slot, weight).
fn assign_diagonals(
    rows: &[Vec<(usize, f64)>],
    p_in: usize,
    p_out: usize,
    slots: usize,
    rotated: bool,
) -> BTreeMap<usize, Vec<(usize, f64)>> {
    let span = if rotated { slots } else { p_in.max(p_out) };
    let copies = span / p_out;
    let positions: Vec<Vec<usize>> = (0..p_in).map(|i| input_positions(i, p_in, span, rotated)).collect();
    let candidates = |o: usize, i: usize| {
        let qs = positions.get(i).map(Vec::as_slice).unwrap_or(&[]);
        (0..copies).flat_map(move |k| {
            let p = o + k * p_out;
            qs.iter().map(move |&q| ((q + span - p) % span, p))
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
            if let Some((d, p)) = best {
                entries.entry(d).or_default().push((p, w));
            }
        }
    }
    entries
}

/// The power-of-two baby-step size minimising (hoisted baby rotations, full giant rotations).
fn choose_baby(diagonals: &[usize], slots: usize) -> (usize, f64) {
    let mut best = (1, f64::INFINITY);
    let mut baby = 1;
    while baby <= slots {
        let babies = diagonals.iter().map(|d| d % baby).filter(|&b| b != 0).collect::<BTreeSet<_>>().len();
        let giants = diagonals.iter().map(|d| d / baby).filter(|&g| g != 0).collect::<BTreeSet<_>>().len();
        let cost = HOISTED_ROTATION_COST * babies as f64 + giants as f64;
        if cost < best.1 {
            best = (baby, cost);
        }
        baby *= 2;
    }
    best
}

/// A linear stage for `rows` from period `p_in`, and its cost in rotations and products.
fn linear_stage(
    rows: Vec<Vec<(usize, f64)>>,
    bias: Vec<f64>,
    p_in: usize,
    slots: usize,
    rotated: bool,
) -> (LinearStage, f64) {
    let outputs = rows.len();
    let p_out = outputs.next_power_of_two();
    let entries = assign_diagonals(&rows, p_in, p_out, slots, rotated);
    let diagonals: Vec<usize> = entries.keys().copied().collect();
    let (baby, rotations) = choose_baby(&diagonals, slots);
    let span = if rotated { slots } else { p_in.max(p_out) };
    let sum_steps: Vec<usize> = std::iter::successors(Some(p_out), |s| Some(s * 2)).take_while(|&s| s < span).collect();
    let cost = 2.0 * diagonals.len() as f64 + KEY_SWITCH_COST * (rotations + sum_steps.len() as f64);
    let stage = LinearStage { outputs, bias, weight_scale: 1.0, rescale: false, p_out, span, baby, entries, sum_steps };
    (stage, cost)
}

/// Walks the ops with (level, scale), fixing every weight scale and baby-step size.
#[allow(clippy::too_many_arguments)]
fn plan_stages(
    model: &str,
    params: Parameters,
    network: &Network,
    ops: Vec<Lowered>,
    output_affine: (f64, f64),
    depth: usize,
    period: usize,
) -> Result<LatencyPlan> {
    let moduli: Vec<f64> = params.moduli().iter().map(|&q| q as f64).collect();
    let slots = params.slots();
    let target = 2f64.powi(LOG_TARGET_SCALE);
    let final_target = 2f64.powi(((moduli[0]).log2().floor() as i32) - 1 - LOGIT_HEADROOM_BITS);
    let last_weighted = ops.iter().rposition(|op| matches!(op, Lowered::Weighted { .. }));
    let (mut level, mut scale, mut p_in) = (depth, target, period);
    let mut rotated_input = false;
    let mut stages = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        let limbs = (level + 1) as f64;
        let (layer, name) = op_layer(&op);
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
                let (mut linear, mut cost) = linear_stage(rows.clone(), bias.clone(), p_in, slots, false);
                if stages.is_empty() && slots / p_in > 1 {
                    // The client packs the input: try the block-rotated layout too.
                    let (rotated, rotated_cost) = linear_stage(rows, bias, p_in, slots, true);
                    if rotated_cost < cost {
                        (linear, cost, rotated_input) = (rotated, rotated_cost, true);
                    }
                }
                linear.weight_scale = weight_scale;
                linear.rescale = true;
                p_in = linear.p_out;
                // Exactly what the evaluator computes: (scale · weight scale) / q_level.
                (StageOp::Linear(Box::new(linear)), level - 1, scale * weight_scale / moduli[level], cost * limbs)
            }
            Lowered::SumPool { rows, .. } => {
                // A sum pool not followed by a weighted layer: weights 1 at scale 1, no level.
                let bias = vec![0.0; rows.len()];
                let (linear, cost) = linear_stage(rows, bias, p_in, slots, false);
                p_in = linear.p_out;
                (StageOp::Linear(Box::new(linear)), level, scale, cost * limbs)
            }
            Lowered::Square { shift, .. } => {
                if level == 0 {
                    return Err(Error::DoesNotFit { index: layer, layer: name, reason: "ran out of levels".into() });
                }
                let squared = scale * scale / moduli[level];
                (StageOp::Square { shift }, level - 1, squared, (KEY_SWITCH_COST + 8.0) * limbs)
            }
        };
        stages.push(Stage { name, layer, op, level_in: level, level_out, scale_out, cost });
        level = level_out;
        scale = scale_out;
    }
    Ok(LatencyPlan {
        model: model.to_owned(),
        params,
        period,
        input_len: network.input().len(),
        output_len: network.output().len(),
        input_level: depth,
        input_scale: target,
        stages,
        output_affine,
        rotated_input,
    })
}
