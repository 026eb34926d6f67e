//! Offline evaluation: what the worker does, run on the hospital's machine with the evaluation
//! keys only (useful for tests and for sites without the service).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use blindfold_batch::{BatchHeader, BatchKind, InputBatchReader};
use blindfold_compiler::Control;
use blindfold_evaluate::{BatchEvaluator, BatchExpect, CompiledModel};

use crate::encrypt::{names_path, read_names, write_names};
use crate::error::{Error, Result};
use crate::keys::{DESCRIPTOR_FILE, KeySet, read_evaluation_keys};

/// Evaluates the input batch `input` into the result batch `output` with the evaluation keys
/// in `keys_dir`; never reads the secret key (a directory holding only one is refused). With a
/// key-set descriptor the batch must be for its model and key set; without one, the model named
/// in the batch header is used. The names sidecar of the input, if any, is copied beside the
/// output so that `decrypt` finds it. A latency plan over `memory_budget` bytes streams its
/// diagonals (encodes them per image); a plan that does not fit even so is refused before
/// anything is evaluated, naming the layer. Returns the result header.
pub fn evaluate_file(
    keys_dir: &Path,
    input: &Path,
    output: &Path,
    memory_budget: Option<u64>,
    control: &Control<'_>,
) -> Result<BatchHeader> {
    let key_set = if keys_dir.join(DESCRIPTOR_FILE).exists() { Some(KeySet::open(keys_dir)?) } else { None };
    let bundle = read_evaluation_keys(keys_dir, key_set.as_ref())?;
    let file = BufReader::new(File::open(input).map_err(Error::io(input))?);
    let fit = |mut model: CompiledModel| -> Result<CompiledModel> {
        if let Some(budget) = memory_budget {
            model.fit_memory(budget)?;
        }
        Ok(model)
    };
    let evaluator = match &key_set {
        Some(key_set) => {
            let model = fit(key_set.compiled_model_of_batch(input, BatchKind::Input)?)?;
            let evaluator = BatchEvaluator::new(model, bundle)?;
            let expect = evaluator.model().expect_input(key_set.id());
            let reader =
                InputBatchReader::open(file, evaluator.keys().context(), &expect).map_err(Error::batch(input))?;
            (evaluator, reader)
        }
        None => {
            let expect = blindfold_batch::Expect::new().key_set(bundle.key_set());
            let reader = InputBatchReader::open(file, bundle.context(), &expect).map_err(Error::batch(input))?;
            let header = reader.header();
            let model = fit(CompiledModel::load(&header.model, header.packing)?)?;
            (BatchEvaluator::new(model, bundle)?, reader)
        }
    };
    let (evaluator, reader) = evaluator;
    let out = BufWriter::new(File::create(output).map_err(Error::io(output))?);
    let evaluated = match evaluator.evaluate(reader, out, control) {
        Ok(evaluated) => evaluated,
        Err(blindfold_evaluate::Error::Batch(source)) => return Err(Error::batch(input)(source)),
        Err(other) => return Err(other.into()),
    };
    crate::keys::finish_file(evaluated.finished.writer, output)?;
    let names = names_path(input);
    if names.exists() {
        write_names(&names_path(output), &read_names(&names)?)?;
    }
    Ok(evaluated.header)
}
