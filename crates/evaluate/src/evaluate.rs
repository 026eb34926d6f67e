//! Evaluating an input batch into a result batch with evaluation keys only.

use std::io::{Read, Write};

use blindfold_batch::{BatchHeader, Finished, InputBatchReader, KeyBundle, Origin, ResultBatchWriter, Uuid};
use blindfold_ckks::Ciphertext;
use blindfold_compiler::{CompiledModel, Control, LatencyEngine, Plan, ThroughputEngine};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// A model compiled for one packing and bound to one key set's evaluation keys: the weights
/// are encoded once, so a worker keeps one per (model, packing, key set) and evaluates many
/// batches with it.
#[derive(Debug)]
pub struct BatchEvaluator {
    model: CompiledModel,
    keys: KeyBundle,
    engine: Engine,
}

#[derive(Debug)]
enum Engine {
    Throughput(ThroughputEngine),
    Latency(LatencyEngine),
}

/// What one evaluation wrote.
#[derive(Debug)]
pub struct Evaluated<W> {
    /// The result batch's header.
    pub header: BatchHeader,
    /// The writer, its content digest and the bytes written.
    pub finished: Finished<W>,
}

impl BatchEvaluator {
    /// Binds `model` to the evaluation keys in `keys`, checking that they were made for the
    /// plan's parameters and hold every key the plan needs.
    pub fn new(model: CompiledModel, keys: KeyBundle) -> Result<Self> {
        let ours = model.fingerprint();
        let theirs = keys.parameters().fingerprint();
        if ours != theirs {
            return Err(Error::Mismatch {
                what: "parameters",
                detail: format!(
                    "the evaluation keys are for parameters {}, but {} in the {} packing runs under {}; \
                     use the key set made for this model (`blindfold keygen --model {}`)",
                    theirs.short(),
                    model.name(),
                    model.packing(),
                    ours.short(),
                    model.name()
                ),
            });
        }
        let context = keys.context();
        for (step, level) in model.plan().rotation_keys() {
            let element = context.galois_element(step);
            match keys.galois_keys().level_of(element) {
                None => {
                    return Err(Error::Mismatch {
                        what: "evaluation keys",
                        detail: format!("the bundle has no rotation key for step {step}, which the plan needs"),
                    });
                }
                Some(found) if found < level => {
                    return Err(Error::Mismatch {
                        what: "evaluation keys",
                        detail: format!(
                            "the bundle's rotation key for step {step} switches ciphertexts up to level {found}; \
                             the plan rotates by it at level {level}"
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        let engine = match model.plan() {
            Plan::Throughput(plan) => Engine::Throughput(ThroughputEngine::new(plan.clone(), context)?),
            Plan::Latency(plan) => Engine::Latency(LatencyEngine::new(plan.clone(), context)?),
        };
        Ok(Self { model, keys, engine })
    }

    /// The compiled model.
    pub fn model(&self) -> &CompiledModel {
        &self.model
    }

    /// The evaluation keys.
    pub fn keys(&self) -> &KeyBundle {
        &self.keys
    }

    /// Evaluates one input batch and streams the result batch into `output`. The batch must be
    /// for this model, packing and key set (opened with [`crate::BatchExpect::expect_input`] these
    /// are checked before any ciphertext is read; they are checked again here). Uses rayon's
    /// current pool; `control` reports progress and can cancel.
    ///
    /// The result records the input's content digest and no job ([`BatchEvaluator::evaluate_job`]
    /// for the service).
    pub fn evaluate<R: Read, W: Write>(
        &self,
        input: InputBatchReader<R>,
        output: W,
        control: &Control<'_>,
    ) -> Result<Evaluated<W>> {
        self.evaluate_for(None, input, output, control)
    }

    /// [`BatchEvaluator::evaluate`] for a job of the service: the result records the job's id
    /// beside the input's digest, so the hospital can refuse a result that is not its job's.
    pub fn evaluate_job<R: Read, W: Write>(
        &self,
        job: Uuid,
        input: InputBatchReader<R>,
        output: W,
        control: &Control<'_>,
    ) -> Result<Evaluated<W>> {
        self.evaluate_for(Some(job), input, output, control)
    }

    fn evaluate_for<R: Read, W: Write>(
        &self,
        job: Option<Uuid>,
        mut input: InputBatchReader<R>,
        output: W,
        control: &Control<'_>,
    ) -> Result<Evaluated<W>> {
        let header = input.header().clone();
        self.check_header(&header)?;
        let context = self.keys.context();
        let mut seeded = Vec::with_capacity(self.model.plan().input_ciphertexts(header.image_count as usize));
        while let Some(ciphertext) = input.next_ciphertext()? {
            seeded.push(ciphertext);
        }
        // Read to its end, so the trailer (and with it the digest) has been verified.
        let input_digest = input.digest().ok_or_else(|| Error::Mismatch {
            what: "input",
            detail: "the input batch ended before its trailer".into(),
        })?;
        let ciphertexts: Vec<Ciphertext> = seeded.par_iter().map(|s| s.expand(context)).collect();
        drop(seeded);
        let outputs = match &self.engine {
            Engine::Throughput(engine) => engine.evaluate(ciphertexts, self.keys.relin_key(), control)?,
            // One image (its ciphertexts) after the other, each using every core in turn.
            Engine::Latency(engine) => {
                let per = engine.plan().input_ciphertexts();
                let mut outputs = Vec::new();
                let mut ciphertexts = ciphertexts.into_iter();
                loop {
                    let image: Vec<Ciphertext> = ciphertexts.by_ref().take(per).collect();
                    if image.is_empty() {
                        break;
                    }
                    let keys = (self.keys.relin_key(), self.keys.galois_keys());
                    outputs.extend(engine.evaluate(image, keys.0, keys.1, control)?);
                }
                outputs
            }
        };
        let first = outputs.first().ok_or_else(|| Error::Mismatch {
            what: "plan",
            detail: "the evaluation produced no output ciphertexts".into(),
        })?;
        let result = BatchHeader {
            model: header.model.clone(),
            model_version: header.model_version.clone(),
            packing: header.packing,
            shape: self.model.output_shape(),
            image_count: header.image_count,
            ciphertext_count: outputs.len() as u64,
            level: first.level(),
            scale: first.scale(),
            key_set: header.key_set,
            origin: Some(Origin { job, input: input_digest }),
        };
        let mut writer = ResultBatchWriter::new(output, context, result.clone())?;
        for ciphertext in &outputs {
            writer.push(ciphertext)?;
        }
        let finished = writer.finish()?;
        tracing::info!(
            model = %result.model,
            images = result.image_count,
            outputs = result.ciphertext_count,
            bytes = finished.len,
            "batch evaluated"
        );
        Ok(Evaluated { header: result, finished })
    }

    fn check_header(&self, header: &BatchHeader) -> Result<()> {
        let model = &self.model;
        let mismatch = |what, detail| Err(Error::Mismatch { what, detail });
        if header.model != model.name() || header.model_version != model.version() {
            return mismatch(
                "model",
                format!(
                    "the batch is for {} version {}, this evaluator runs {} version {}",
                    header.model,
                    header.model_version,
                    model.name(),
                    model.version()
                ),
            );
        }
        if header.packing != model.packing() {
            return mismatch(
                "packing",
                format!("the batch uses the {} packing, this evaluator the {}", header.packing, model.packing()),
            );
        }
        if header.key_set != self.keys.key_set() {
            return mismatch(
                "key set",
                format!(
                    "the batch was encrypted under key set {}, these evaluation keys are key set {}; \
                     evaluate it with the keys it was made with",
                    header.key_set,
                    self.keys.key_set()
                ),
            );
        }
        if header.shape != model.input_shape() {
            return mismatch(
                "shape",
                format!("the batch holds {:?} tensors, the model takes {:?}", header.shape, model.input_shape()),
            );
        }
        let expected = model.plan().input_ciphertexts(header.image_count as usize) as u64;
        if header.ciphertext_count != expected {
            return mismatch(
                "ciphertext count",
                format!(
                    "{} ciphertexts for {} images; the plan needs {expected}",
                    header.ciphertext_count, header.image_count
                ),
            );
        }
        let capacity = model.plan().batch_capacity() as u64;
        if header.image_count > capacity {
            return mismatch(
                "image count",
                format!("{} images, but one {} batch holds at most {capacity}", header.image_count, model.packing()),
            );
        }
        Ok(())
    }
}

/// Evaluates one input batch with evaluation keys only: loads the model the batch header names,
/// compiles it for the header's packing, binds it to `keys` and writes the result batch to
/// `output`. For many batches of one model, keep a [`BatchEvaluator`] instead (compiling and
/// encoding the weights is done once there).
pub fn evaluate_batch<R: Read, W: Write>(
    keys: KeyBundle,
    input: InputBatchReader<R>,
    output: W,
    control: &Control<'_>,
) -> Result<Evaluated<W>> {
    let header = input.header();
    let model = CompiledModel::load(&header.model, header.packing)?;
    BatchEvaluator::new(model, keys)?.evaluate(input, output, control)
}
