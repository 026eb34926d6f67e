//! Decryption of result batches into predictions, and their CSV and JSON forms.

use std::fs::File;
use std::io::{BufReader, Write as _};
use std::path::{Path, PathBuf};

use blindfold_batch::{BatchKind, ResultBatchReader, Uuid};
use blindfold_ckks::{Context, Decryptor};
use blindfold_evaluate::BatchExpect;
use rayon::prelude::*;

use crate::encrypt::{names_path, read_names};
use crate::error::{Error, Result};
use crate::keys::KeySet;

/// The prediction for one image.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// Position in the batch.
    pub position: usize,
    /// The image's original name (`#position` when the names sidecar is not there).
    pub file: String,
    /// The predicted class's name.
    pub class: String,
    /// The predicted class's index.
    pub class_index: usize,
    /// Softmax probabilities, in class order.
    pub probabilities: Vec<f64>,
    /// The raw logits, in class order.
    pub logits: Vec<f64>,
}

/// The predictions of one result batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Predictions {
    /// The model.
    pub model: String,
    /// The key set.
    pub key_set: Uuid,
    /// The class names, in logit order.
    pub classes: Vec<String>,
    /// One per image, in batch order.
    pub images: Vec<Prediction>,
}

/// Decrypts the result batch `result` with the key set's secret key. Image names come from
/// `names` if given, else from `RESULT.names.json` if it exists, else are `#position`.
pub fn decrypt(keys: &KeySet, result: &Path, names: Option<&Path>) -> Result<Predictions> {
    let model = keys.compiled_model_of_batch(result, BatchKind::Result)?;
    if let blindfold_nn::Task::Segmentation { .. } = model.manifest().task {
        return Err(Error::KeySetMismatch(format!(
            "{} is a segmentation model: `decrypt` writes class predictions, and this build does not write \
             masks yet; its outputs can be measured with `blindfold bench infer --model …`",
            model.name()
        )));
    }
    let plan = model.plan();
    let context = Context::new(plan.params().clone())?;
    let file = File::open(result).map_err(Error::io(result))?;
    let reader = ResultBatchReader::open(BufReader::new(file), &context, &model.expect_result(keys.id()))
        .map_err(Error::batch(result))?;
    let images = reader.header().image_count as usize;
    let ciphertexts = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(Error::batch(result))?;

    let names = image_names(keys, result, names, images)?;
    let decryptor = Decryptor::new(&context, keys.secret_key(&context)?)?;
    let decrypted =
        ciphertexts.par_iter().map(|ct| decryptor.decrypt_values(ct)).collect::<std::result::Result<Vec<_>, _>>()?;
    drop(decryptor);
    let logits = plan.unpack(&decrypted, images)?;
    let classes = model.manifest().classes.clone();
    let images = logits
        .into_iter()
        .zip(names)
        .enumerate()
        .map(|(position, (logits, file))| {
            let class_index = argmax(&logits);
            Prediction {
                position,
                file,
                class: classes.get(class_index).cloned().unwrap_or_default(),
                class_index,
                probabilities: softmax(&logits),
                logits,
            }
        })
        .collect();
    Ok(Predictions { model: model.name().into(), key_set: keys.id(), classes, images })
}

fn image_names(keys: &KeySet, result: &Path, given: Option<&Path>, images: usize) -> Result<Vec<String>> {
    let path: PathBuf = match given {
        Some(path) => path.to_path_buf(),
        None => {
            let beside = names_path(result);
            if !beside.exists() {
                return Ok((0..images).map(|i| format!("#{i}")).collect());
            }
            beside
        }
    };
    let names = read_names(&path)?;
    if names.key_set != keys.id() || names.model != keys.descriptor().model {
        return Err(Error::Invalid {
            path,
            reason: format!(
                "names for a batch of {} under key set {}, but the result is {} under key set {}",
                names.model,
                names.key_set,
                keys.descriptor().model,
                keys.id()
            ),
        });
    }
    if names.images.len() != images {
        return Err(Error::Invalid {
            path,
            reason: format!(
                "{} names for a result of {images} images; is it the sidecar of another batch?",
                names.images.len()
            ),
        });
    }
    Ok(names.images)
}

fn argmax(values: &[f64]) -> usize {
    values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

impl Predictions {
    /// CSV: `position,file,class,probability,p_<class>…,logit_<class>…`, one row per image.
    pub fn to_csv(&self) -> String {
        let mut header = vec!["position".to_string(), "file".into(), "class".into(), "probability".into()];
        header.extend(self.classes.iter().map(|c| format!("p_{c}")));
        header.extend(self.classes.iter().map(|c| format!("logit_{c}")));
        let mut out = csv_row(header.iter().map(String::as_str));
        for image in &self.images {
            let mut row = vec![
                image.position.to_string(),
                image.file.clone(),
                image.class.clone(),
                format!("{:.6}", image.probabilities.get(image.class_index).copied().unwrap_or(0.0)),
            ];
            row.extend(image.probabilities.iter().map(|p| format!("{p:.6}")));
            row.extend(image.logits.iter().map(|l| format!("{l:.6}")));
            out.push_str(&csv_row(row.iter().map(String::as_str)));
        }
        out
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Writes the predictions to `path` as CSV (`.csv`) or JSON (`.json`).
    pub fn write(&self, path: &Path) -> Result<()> {
        let extension = path.extension().map(|e| e.to_string_lossy().to_lowercase());
        let text = match extension.as_deref() {
            Some("csv") => self.to_csv(),
            Some("json") => self.to_json(),
            _ => return Err(Error::OutputFormat { path: path.to_path_buf() }),
        };
        let mut file = File::create(path).map_err(Error::io(path))?;
        file.write_all(text.as_bytes()).map_err(Error::io(path))
    }
}

/// One RFC 4180 row: fields with a comma, quote or line break are quoted.
fn csv_row<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    let mut row =
        fields
            .map(|f| {
                if f.contains([',', '"', '\n', '\r']) {
                    format!("\"{}\"", f.replace('"', "\"\""))
                } else {
                    f.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(",");
    row.push_str("\r\n");
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_the_order() {
        let p = softmax(&[1000.0, 999.0, -5.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p[0] > p[1] && p[1] > p[2]);
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_row(["a", "b,c", "say \"hi\""].into_iter()), "a,\"b,c\",\"say \"\"hi\"\"\"\r\n");
    }
}
