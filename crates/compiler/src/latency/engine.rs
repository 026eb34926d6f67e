//! The latency engine: the plan's stages as executable steps, each linear step holding its
//! encoded diagonals, over a store of values freed after their last reader.

use std::sync::Arc;

use blindfold_ckks::{Ciphertext, Context, Evaluator, GaloisKeys, RelinKey};
use rayon::prelude::*;

use super::linear::{self, EncodedLinear};
use super::{LatencyPlan, Stage, StageOp};
use crate::lower::{JoinKind, ValueId};
use crate::progress::Meter;
use crate::{Control, Error, Result};

/// One executable step: a stage, with its encoded diagonals when it is linear.
#[derive(Debug)]
struct Step {
    stage: usize,
    encoded: Option<EncodedLinear>,
}

/// Runs a [`LatencyPlan`] with its diagonals encoded once. `Send + Sync`.
#[derive(Debug)]
pub struct LatencyEngine {
    plan: LatencyPlan,
    evaluator: Evaluator,
    steps: Vec<Step>,
    last_read: Vec<usize>,
}

impl LatencyEngine {
    /// Encodes every diagonal of `plan` for `context` (which must have the plan's parameters).
    pub fn new(plan: LatencyPlan, context: &Arc<Context>) -> Result<Self> {
        if context.params() != &plan.header.params {
            return Err(Error::Input("the context's parameters differ from the plan's".into()));
        }
        let steps = plan
            .stages
            .iter()
            .enumerate()
            .map(|(index, stage)| {
                let encoded = match &stage.op {
                    StageOp::Linear { linear, .. } => Some(linear::encode(
                        context,
                        linear,
                        stage.header.level_in,
                        (stage.header.level_out, stage.header.scale_out),
                    )?),
                    _ => None,
                };
                Ok(Step { stage: index, encoded })
            })
            .collect::<Result<Vec<_>>>()?;
        let last_read = last_reads(&plan);
        Ok(Self { plan, evaluator: Evaluator::new(context), steps, last_read })
    }

    /// The plan.
    pub fn plan(&self) -> &LatencyPlan {
        &self.plan
    }

    /// Evaluates the network on one encrypted image: its ciphertexts, encrypted at the plan's
    /// input level and scale from the slot vectors of [`LatencyPlan::pack`]. The result's
    /// ciphertexts are at level 0; decrypt them and call [`LatencyPlan::unpack`].
    pub fn evaluate(
        &self,
        input: Vec<Ciphertext>,
        relin: &RelinKey,
        galois: &GaloisKeys,
        control: &Control<'_>,
    ) -> Result<Vec<Ciphertext>> {
        let plan = &self.plan;
        if input.len() != plan.input.cts {
            return Err(Error::Input(format!(
                "{} ciphertexts for one image; the plan packs an image into {}",
                input.len(),
                plan.input.cts
            )));
        }
        if let Some(ct) = input.iter().find(|ct| ct.level() != plan.header.input_level || ct.size() != 2) {
            return Err(Error::Input(format!(
                "the input is a {}-part ciphertext at level {}, the plan takes 2-part ones at level {}",
                ct.size(),
                ct.level(),
                plan.header.input_level
            )));
        }
        let ev = &self.evaluator;
        let mut values: Vec<Option<Vec<Ciphertext>>> = (0..plan.values).map(|_| None).collect();
        values[0] = Some(input);
        let mut meter = Meter::new(control, plan.stages.iter().map(|s| s.header.cost).collect());
        for step in &self.steps {
            let stage = &plan.stages[step.stage];
            meter.start(step.stage, &stage.header.name)?;
            let output = self.run(stage, step.encoded.as_ref(), &values, relin, galois, meter.control())?;
            values[stage.op.writes()] = Some(output);
            for (v, &last) in self.last_read.iter().enumerate() {
                if last == step.stage && v != plan.output_value {
                    values[v] = None;
                }
            }
            meter.finish(step.stage);
        }
        meter.done();
        let output =
            values[plan.output_value].take().ok_or_else(|| Error::Internal("the output was never written".into()))?;
        output.iter().map(|ct| Ok(ev.drop_to_level(ct, 0)?)).collect()
    }

    fn run(
        &self,
        stage: &Stage,
        encoded: Option<&EncodedLinear>,
        values: &[Option<Vec<Ciphertext>>],
        relin: &RelinKey,
        galois: &GaloisKeys,
        control: &Control<'_>,
    ) -> Result<Vec<Ciphertext>> {
        let ev = &self.evaluator;
        let read = |v: ValueId| {
            values[v].as_deref().ok_or_else(|| Error::Internal(format!("value {v} is read after it was freed")))
        };
        match &stage.op {
            StageOp::Linear { input, .. } => {
                let encoded = encoded.ok_or_else(|| Error::Internal("a linear step without its diagonals".into()))?;
                linear::apply(ev, read(*input)?, encoded, galois, control)
            }
            StageOp::Square { input, shift, .. } => read(*input)?
                .par_iter()
                .map(|ct| {
                    let mut squared = ev.square_shifted(ct, *shift)?;
                    ev.relinearize_assign(&mut squared, relin)?;
                    ev.rescale_assign(&mut squared)?;
                    Ok(squared)
                })
                .collect(),
            StageOp::Chebyshev { input, plan, scale, .. } => {
                read(*input)?.par_iter().map(|ct| plan.evaluate(ev, ct, *scale, relin)).collect()
            }
            StageOp::Scale { input, step, .. } => read(*input)?.par_iter().map(|ct| step.apply(ev, ct)).collect(),
            StageOp::Join { kind, inputs, .. } => {
                let aligned = inputs
                    .iter()
                    .map(|(v, align, offset)| read(*v)?.iter().map(|ct| align.apply(ev, ct, *offset)).collect())
                    .collect::<Result<Vec<Vec<Ciphertext>>>>()?;
                Ok(match kind {
                    JoinKind::Concat => aligned.into_iter().flatten().collect(),
                    JoinKind::Add => {
                        let mut branches = aligned.into_iter();
                        let mut sum = branches.next().unwrap_or_default();
                        for branch in branches {
                            for (acc, ct) in sum.iter_mut().zip(&branch) {
                                ev.add_assign(acc, ct)?;
                            }
                        }
                        sum
                    }
                })
            }
        }
    }
}

/// For every value, the index of the last stage that reads it.
fn last_reads(plan: &LatencyPlan) -> Vec<usize> {
    let mut last = vec![0; plan.values];
    for (index, stage) in plan.stages.iter().enumerate() {
        for v in stage.op.reads() {
            last[v] = index;
        }
    }
    last
}

/// Ciphertext bytes alive at each stage of one image: the values still to be read, the
/// stage's output, a linear stage's hoisted babies, decompositions and partial sums, and the
/// diagonals a streamed stage encodes while it runs (on rayon's current pool).
pub(super) fn memory_profile(plan: &LatencyPlan) -> Vec<(usize, usize)> {
    let n = plan.header.params.n();
    let bytes = |(cts, level): (usize, usize)| cts * 2 * (level + 1) * n * 8;
    let last = last_reads(plan);
    let mut live = bytes(plan.sizes[0]);
    let mut profile = Vec::with_capacity(plan.stages.len());
    for (index, stage) in plan.stages.iter().enumerate() {
        let out = bytes(plan.sizes[stage.op.writes()]);
        let babies = match &stage.op {
            StageOp::Linear { linear, .. } => {
                let level = stage.header.level_in;
                let ciphertext = 2 * (level + 1) * n * 8;
                let threads = rayon::current_num_threads();
                // An input's decomposition for hoisting: a polynomial per digit over the
                // level's primes and the special ones.
                let params = &plan.header.params;
                let decomposed = params.digits_at(level).len() * (level + 1 + params.special_moduli().len()) * n * 8;
                linear.baby_steps().iter().map(Vec::len).sum::<usize>() * ciphertext
                    + linear.input_cts.min(threads) * decomposed
                    // Per thread, a giant step's accumulator and its rotation.
                    + threads * 2 * ciphertext
                    + linear.working_bytes(level, n, threads)
            }
            _ => 0,
        };
        profile.push((index, live + out + babies));
        live += out;
        for (v, &l) in last.iter().enumerate() {
            if l == index && v != plan.output_value {
                live -= bytes(plan.sizes[v]).min(live);
            }
        }
    }
    profile
}
