//! The throughput engine: the plan's stages as a list of executable steps, each holding what
//! it runs with (a weight map, a segment's fused map), over a store of values freed after
//! their last reader.

use std::sync::Arc;

use blindfold_ckks::{Ciphertext, Context, Evaluator, LinearMap, RelinKey};
use rayon::prelude::*;

use super::segment::{self, settle_in_place, settling};
use super::{Stage, StageOp, ThroughputPlan, linear_map};
use crate::lower::{JoinKind, ValueId};
use crate::progress::Meter;
use crate::{Control, Error, Result};

/// One executable step.
#[derive(Debug)]
enum Step {
    /// A stage that needs no prepared data, or a weighted map with its map.
    Stage { stage: usize, map: Option<LinearMap> },
    /// Segment `segment` (stages conv..=end) with its fused map.
    Segment { segment: usize, map: LinearMap },
}

/// A plan bound to a context: every weight reduced per prime once, ready to evaluate batches.
/// `Send + Sync`.
#[derive(Debug)]
pub struct ThroughputEngine {
    plan: ThroughputPlan,
    context: Arc<Context>,
    evaluator: Evaluator,
    steps: Vec<Step>,
    /// For every value, the last step that reads it (values are freed after it).
    last_read: Vec<usize>,
}

impl ThroughputEngine {
    /// Prepares `plan` for `context` (which must use the plan's parameters).
    pub fn new(plan: ThroughputPlan, context: &Arc<Context>) -> Result<Self> {
        if context.params().fingerprint() != plan.header.params.fingerprint() {
            return Err(Error::Input("the context's parameters are not the plan's".into()));
        }
        let mut steps = Vec::new();
        let mut index = 0;
        while index < plan.stages.len() {
            if let Some((s, segment)) = plan.segments.iter().enumerate().find(|(_, seg)| seg.conv == index) {
                steps.push(Step::Segment { segment: s, map: segment::map(&plan.stages, segment, context)? });
                index = segment.end() + 1;
            } else {
                steps.push(Step::Stage { stage: index, map: linear_map(context, &plan.stages[index])? });
                index += 1;
            }
        }
        let last_read = last_reads(&plan, &steps);
        Ok(Self { plan, context: context.clone(), evaluator: Evaluator::new(context), steps, last_read })
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
        let header = &plan.header;
        if inputs.len() != header.input_len {
            return Err(Error::Input(format!(
                "{} input ciphertexts, the plan takes {}",
                inputs.len(),
                header.input_len
            )));
        }
        if let Some((k, ct)) =
            inputs.iter().enumerate().find(|(_, ct)| ct.level() != header.input_level || ct.size() != 2)
        {
            return Err(Error::Input(format!(
                "input {k} is at level {} with {} parts; the plan needs level {} with 2",
                ct.level(),
                ct.size(),
                header.input_level
            )));
        }
        let ev = &self.evaluator;
        let mut values: Vec<Option<Vec<Ciphertext>>> = (0..plan.values).map(|_| None).collect();
        values[0] = Some(inputs);
        let mut meter = Meter::new(control, plan.stages.iter().map(|s| s.header.cost).collect());
        for (index, step) in self.steps.iter().enumerate() {
            match step {
                Step::Segment { segment, map } => {
                    let segment = &plan.segments[*segment];
                    meter.start(segment.conv, &segment.name)?;
                    let _span = tracing::debug_span!("segment", name = %segment.name).entered();
                    let StageOp::Linear { input, .. } = plan.stages[segment.conv].op else {
                        return Err(Error::Internal("a segment does not start with a map".into()));
                    };
                    let output = plan.stages[segment.end()].op.writes();
                    let inputs = read(&values, input)?;
                    let progress = |fraction: f64| meter.within(segment.conv, &segment.name, fraction);
                    let pooled = segment::run(ev, &plan.stages, segment, map, inputs, relin, control, &progress)?;
                    values[output] = Some(pooled);
                    for stage in segment.conv..=segment.end() {
                        meter.finish(stage);
                    }
                }
                Step::Stage { stage, map } => {
                    let stage_index = *stage;
                    let stage = &plan.stages[stage_index];
                    meter.start(stage_index, &stage.header.name)?;
                    let _span = tracing::debug_span!("stage", index = stage_index, name = %stage.header.name).entered();
                    self.run_stage(stage, map.as_ref(), index, &mut values, relin, meter.control())?;
                    meter.finish(stage_index);
                }
            }
            for (v, &last) in self.last_read.iter().enumerate() {
                if last == index && v != plan.output {
                    values[v] = None;
                }
            }
        }
        meter.done();
        let outputs =
            values[plan.output].take().ok_or_else(|| Error::Internal("the output was never written".into()))?;
        // The download is smallest at level 0.
        outputs.into_par_iter().map(|ct| Ok(ev.drop_to_level(&ct, 0)?)).collect()
    }

    fn run_stage(
        &self,
        stage: &Stage,
        map: Option<&LinearMap>,
        step: usize,
        values: &mut [Option<Vec<Ciphertext>>],
        relin: &RelinKey,
        control: &Control<'_>,
    ) -> Result<()> {
        let ev = &self.evaluator;
        let each = |cts: Vec<Ciphertext>, f: &(dyn Fn(Ciphertext) -> Result<Ciphertext> + Sync)| {
            cts.into_par_iter()
                .map(|ct| {
                    control.check()?;
                    f(ct)
                })
                .collect::<Result<Vec<_>>>()
        };
        let settle_how = settling(&stage.op);
        let output = match &stage.op {
            StageOp::Linear { input, order, .. } => {
                let map = map.ok_or_else(|| Error::Internal("a map stage without its map".into()))?;
                let outputs = {
                    let refs: Vec<&Ciphertext> = read(values, *input)?.iter().collect();
                    ev.apply_linear(map, &refs)?
                };
                // The input is usually read only here: free it before settling the outputs.
                if self.last_read[*input] == step && *input != self.plan.output {
                    values[*input] = None;
                }
                let outputs = match order {
                    Some(order) => reorder(outputs, order),
                    None => outputs,
                };
                each(outputs, &|mut ct| {
                    settle_in_place(ev, &mut ct, settle_how, relin)?;
                    Ok(ct)
                })?
            }
            StageOp::Square { input, shift, .. } => {
                let cts = read(values, *input)?.to_vec();
                each(cts, &|mut ct| {
                    settle_in_place(ev, &mut ct, settle_how, relin)?;
                    Ok(ev.square_shifted(&ct, *shift)?)
                })?
            }
            StageOp::Settle { value, .. } => {
                let cts = values[*value].take().ok_or_else(|| Error::Internal(format!("value {value} is missing")))?;
                each(cts, &|mut ct| {
                    settle_in_place(ev, &mut ct, settle_how, relin)?;
                    Ok(ct)
                })?
            }
            StageOp::Chebyshev { input, plan, scale, .. } => read(values, *input)?
                .par_iter()
                .map(|ct| plan.evaluate(ev, ct, *scale, relin))
                .collect::<Result<_>>()?,
            StageOp::Scale { input, step, .. } => {
                read(values, *input)?.par_iter().map(|ct| step.apply(ev, ct)).collect::<Result<_>>()?
            }
            StageOp::Join { kind, inputs, .. } => {
                let aligned = inputs
                    .iter()
                    .map(|(v, align, offset)| {
                        read(values, *v)?.par_iter().map(|ct| align.apply(ev, ct, *offset)).collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<Vec<_>>>()?;
                match kind {
                    JoinKind::Concat => aligned.into_iter().flatten().collect(),
                    JoinKind::Add => {
                        let mut branches = aligned.into_iter();
                        let mut sum = branches.next().unwrap_or_default();
                        for branch in branches {
                            sum.par_iter_mut().zip(branch).try_for_each(|(acc, ct)| ev.add_assign(acc, &ct))?;
                        }
                        sum
                    }
                }
            }
        };
        values[stage.op.writes()] = Some(output);
        Ok(())
    }
}

fn read(values: &[Option<Vec<Ciphertext>>], v: ValueId) -> Result<&[Ciphertext]> {
    values[v].as_deref().ok_or_else(|| Error::Internal(format!("value {v} is read after it was freed")))
}

/// Puts map outputs into tensor order: output j goes to position order[j].
fn reorder(outputs: Vec<Ciphertext>, order: &[usize]) -> Vec<Ciphertext> {
    let mut slots: Vec<Option<Ciphertext>> = (0..outputs.len()).map(|_| None).collect();
    for (ct, &position) in outputs.into_iter().zip(order) {
        slots[position] = Some(ct);
    }
    slots.into_iter().flatten().collect()
}

/// The stages a step runs.
fn step_stages(plan: &ThroughputPlan, step: &Step) -> std::ops::RangeInclusive<usize> {
    match step {
        Step::Stage { stage, .. } => *stage..=*stage,
        Step::Segment { segment, .. } => {
            let segment = &plan.segments[*segment];
            segment.conv..=segment.end()
        }
    }
}

/// For every value, the index of the last step that reads it (0 for values never read).
fn last_reads(plan: &ThroughputPlan, steps: &[Step]) -> Vec<usize> {
    let mut last = vec![0; plan.values];
    for (index, step) in steps.iter().enumerate() {
        for stage in step_stages(plan, step) {
            for v in plan.stages[stage].op.reads() {
                last[v] = index;
            }
        }
    }
    last
}

/// The estimate behind [`ThroughputPlan::peak_memory_bytes`]: replays the steps' allocations
/// (a value is freed after its last reader, as the engine does). Per step: its first stage and
/// the bytes of ciphertexts and weights held while it runs.
pub(super) fn memory_profile(plan: &ThroughputPlan) -> Vec<(usize, usize)> {
    let n = plan.header.params.n();
    let bytes = |v: ValueId, parts: usize, level: usize| plan.lens[v] * parts * (level + 1) * n * 8;
    let mut steps: Vec<std::ops::RangeInclusive<usize>> = Vec::new();
    let mut index = 0;
    while index < plan.stages.len() {
        let end = plan.segments.iter().find(|s| s.conv == index).map_or(index, |s| s.end());
        steps.push(index..=end);
        index = end + 1;
    }
    let mut last = vec![0usize; plan.values];
    for (s, range) in steps.iter().enumerate() {
        for stage in range.clone() {
            for v in plan.stages[stage].op.reads() {
                last[v] = s;
            }
        }
    }
    let threads = rayon::current_num_threads().max(1);
    let mut size = vec![0usize; plan.values];
    size[0] = bytes(0, 2, plan.header.input_level);
    let (mut live, mut weights) = (size[0], 0usize);
    let mut profile = Vec::with_capacity(steps.len());
    for (s, range) in steps.iter().enumerate() {
        let mut buffers = 0;
        for stage in range.clone() {
            let stage = &plan.stages[stage];
            if let StageOp::Linear { rows, .. } = &stage.op {
                weights += rows.iter().map(Vec::len).sum::<usize>() * (stage.header.level_in + 1) * 8;
            }
        }
        if let Some(segment) = plan.segments.iter().find(|seg| seg.conv == *range.start()) {
            // Each worker holds one window's convolution outputs, squared: 3 parts.
            let level = plan.stages[segment.conv].header.level_out;
            buffers = threads * segment.channels * segment.window * 3 * (level + 1) * n * 8;
        }
        let end = &plan.stages[*range.end()];
        let out = end.op.writes();
        let out_bytes = bytes(out, end.parts, end.header.level_out);
        if range.start() == range.end() && matches!(end.op, StageOp::Settle { .. }) {
            live -= size[out].min(live);
        }
        profile.push((*range.start(), live + out_bytes + buffers + weights));
        live += out_bytes;
        size[out] = out_bytes;
        for (v, &l) in last.iter().enumerate() {
            if l == s && v != plan.output {
                live -= size[v].min(live);
                size[v] = 0;
            }
        }
    }
    profile
}
