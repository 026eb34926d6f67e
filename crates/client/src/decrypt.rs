//! Decryption of result batches into predictions (classes, or lesion masks for segmentation
//! models), their CSV and JSON forms, mask PNGs and Dice against ground-truth masks.

use std::fs::File;
use std::io::{BufReader, Write as _};
use std::path::{Path, PathBuf};

use blindfold_batch::{BatchKind, ResultBatchReader, Uuid};
use blindfold_ckks::{Context, Decryptor};
use blindfold_evaluate::BatchExpect;
use blindfold_nn::metrics::{argmax, softmax};
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
    /// The raw logits, in class order (empty for segmentation: the mask stands for them).
    pub logits: Vec<f64>,
    /// Segmentation: the predicted mask and its area.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<Mask>,
    /// Why this image has no result: its outputs left the range the plan left room for (an
    /// input unlike the model's training data), so what decrypted is not the model's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overflow: Option<String>,
}

/// A predicted lesion mask: the pixels whose logit is at least the manifest threshold's.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Mask {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Lesion pixels.
    pub lesion_pixels: usize,
    /// Lesion pixels over all pixels.
    pub lesion_fraction: f64,
    /// Dice against the ground-truth mask, once [`Predictions::score_masks`] found one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dice: Option<f64>,
    /// 1 = lesion, row-major (written as PNG by [`Predictions::write_masks`], not in JSON).
    #[serde(skip)]
    pub pixels: Vec<u8>,
}

/// The predictions of one result batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Predictions {
    /// The model.
    pub model: String,
    /// The model's version under its name.
    pub model_version: u32,
    /// The estimated security of the key set's parameters (bits; never below 128).
    pub security_bits: u32,
    /// The model's manifest: classes, task, operating point, input (what a report needs).
    #[serde(skip)]
    pub manifest: blindfold_nn::Manifest,
    /// The key set.
    pub key_set: Uuid,
    /// The class names, in logit order.
    pub classes: Vec<String>,
    /// `classification` or `segmentation`.
    pub task: &'static str,
    /// One per image, in batch order.
    pub images: Vec<Prediction>,
}

/// Decrypts the result batch `result` with the key set's secret key. Image names come from
/// `names` if given, else from `RESULT.names.json` if it exists, else are `#position`.
///
/// A result records the digest of the input it was computed from; with a names sidecar, that
/// digest must be the sidecar's batch digest ([`Error::NotThisResult`] otherwise), so a stale or
/// swapped result never decrypts under another batch's file names.
pub fn decrypt(keys: &KeySet, result: &Path, names: Option<&Path>) -> Result<Predictions> {
    decrypt_checked(keys, result, names, None)
}

/// [`decrypt`] for the result of the service's job `job`: the result must also record that job.
pub fn decrypt_job(keys: &KeySet, result: &Path, names: Option<&Path>, job: Uuid) -> Result<Predictions> {
    decrypt_checked(keys, result, names, Some(job))
}

fn decrypt_checked(keys: &KeySet, result: &Path, names: Option<&Path>, job: Option<Uuid>) -> Result<Predictions> {
    let model = keys.compiled_model_of_batch(result, BatchKind::Result)?;
    let plan = model.plan();
    let context = Context::new(plan.params().clone())?;
    let file = File::open(result).map_err(Error::io(result))?;
    let reader = ResultBatchReader::open(BufReader::new(file), &context, &model.expect_result(keys.id()))
        .map_err(Error::batch(result))?;
    let images = reader.header().image_count as usize;
    let origin = reader.header().origin;
    let not_this = |reason: String| Error::NotThisResult { path: result.to_path_buf(), reason };
    if let Some(job) = job {
        match origin.and_then(|origin| origin.job) {
            Some(recorded) if recorded == job => {}
            Some(recorded) => {
                return Err(not_this(format!("it was computed for job {recorded}, not job {job}")));
            }
            None => return Err(not_this(format!("it records no job, so it cannot be job {job}'s result"))),
        }
    }
    let ciphertexts = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(Error::batch(result))?;

    let names = image_names(keys, result, names, images, origin.map(|origin| origin.input))?;
    let decryptor = Decryptor::new(&context, keys.secret_key(&context)?)?;
    let decrypted =
        ciphertexts.par_iter().map(|ct| decryptor.decrypt_values(ct)).collect::<std::result::Result<Vec<_>, _>>()?;
    drop(decryptor);
    let logits = plan.unpack_each(&decrypted, images)?;
    let classes = model.manifest().classes.clone();
    // An image whose outputs overflowed gets no result, and says why; the others are unaffected.
    let mut checked = Vec::with_capacity(logits.len());
    for (position, (outputs, file)) in logits.into_iter().zip(names).enumerate() {
        match outputs {
            Ok(outputs) => checked.push((position, file, Ok(outputs))),
            Err(error @ blindfold_compiler::Error::Overflow { .. }) => {
                tracing::warn!(position, "an image's outputs left the planned range");
                checked.push((position, file, Err(error.to_string())));
            }
            Err(other) => return Err(other.into()),
        }
    }
    let flagged = |position: usize, file: String, why: String| Prediction {
        position,
        file,
        class: "overflow".into(),
        class_index: usize::MAX,
        probabilities: Vec::new(),
        logits: Vec::new(),
        mask: None,
        overflow: Some(why),
    };
    let (task, images) = if let blindfold_nn::Task::Segmentation { threshold } = model.manifest().task {
        let [_, height, width] = model.manifest().input.shape;
        let images = checked
            .into_iter()
            .map(|(position, file, outputs)| match outputs {
                Ok(logits) => segmented(position, file, &logits, height, width, threshold),
                Err(why) => flagged(position, file, why),
            })
            .collect();
        ("segmentation", images)
    } else {
        let images = checked
            .into_iter()
            .map(|(position, file, outputs)| match outputs {
                Ok(logits) => {
                    let class_index = argmax(&logits);
                    Prediction {
                        position,
                        file,
                        class: classes.get(class_index).cloned().unwrap_or_default(),
                        class_index,
                        probabilities: softmax(&logits),
                        logits,
                        mask: None,
                        overflow: None,
                    }
                }
                Err(why) => flagged(position, file, why),
            })
            .collect();
        ("classification", images)
    };
    Ok(Predictions {
        model: model.name().into(),
        model_version: model.manifest().version,
        security_bits: plan.params().security_bits(),
        manifest: model.manifest().clone(),
        key_set: keys.id(),
        classes,
        task,
        images,
    })
}

/// One image's mask from its per-pixel logits.
fn segmented(position: usize, file: String, logits: &[f64], height: usize, width: usize, threshold: f64) -> Prediction {
    let cut = blindfold_nn::metrics::logit_threshold(threshold);
    let pixels: Vec<u8> = logits.iter().map(|l| u8::from(*l >= cut)).collect();
    let lesion_pixels = pixels.iter().filter(|p| **p == 1).count();
    let lesion_fraction = lesion_pixels as f64 / pixels.len().max(1) as f64;
    let found = lesion_pixels > 0;
    Prediction {
        position,
        file,
        class: if found { "lesion" } else { "no lesion" }.into(),
        class_index: usize::from(!found),
        probabilities: Vec::new(),
        logits: Vec::new(),
        mask: Some(Mask { height, width, lesion_pixels, lesion_fraction, dice: None, pixels }),
        overflow: None,
    }
}

/// The image names of the sidecar that belongs to `result`, checked against the input digest
/// the result records (`input`; `None` for a result of format version 1, which records none).
fn image_names(
    keys: &KeySet,
    result: &Path,
    given: Option<&Path>,
    images: usize,
    input: Option<blindfold_batch::ContentDigest>,
) -> Result<Vec<String>> {
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
    let not_this = |reason: String| Error::NotThisResult { path: result.to_path_buf(), reason };
    match input {
        Some(input) if input.to_string() == names.batch_digest => {}
        Some(input) => {
            return Err(not_this(format!(
                "it was computed from the input batch with digest {}…, but {} names the images of batch {}… \
                 (a stale or swapped result: fetch the job's result again)",
                &input.to_string()[..16],
                path.display(),
                &names.batch_digest[..names.batch_digest.len().min(16)]
            )));
        }
        None => {
            return Err(not_this(format!(
                "it records no input digest (written before batch format version 2), so it cannot be matched \
                 with the names in {}; move that file away to decrypt it with positions only",
                path.display()
            )));
        }
    }
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

impl Predictions {
    /// CSV, one row per image. Classification: `position,file,class,probability,p_<class>…,
    /// logit_<class>…` (class `overflow` and no numbers for an image whose outputs left the
    /// planned range). Segmentation: `position,file,status,lesion_pixels,lesion_fraction,dice`
    /// (status `ok` or `overflow`; `dice` empty without a ground-truth mask).
    pub fn to_csv(&self) -> String {
        if self.task == "segmentation" {
            let header = ["position", "file", "status", "lesion_pixels", "lesion_fraction", "dice"];
            let mut out = csv_row(header.into_iter());
            for image in &self.images {
                let mask = image.mask.as_ref();
                let row = [
                    image.position.to_string(),
                    image.file.clone(),
                    if image.overflow.is_some() { "overflow" } else { "ok" }.to_owned(),
                    mask.map_or(String::new(), |m| m.lesion_pixels.to_string()),
                    mask.map_or(String::new(), |m| format!("{:.6}", m.lesion_fraction)),
                    mask.and_then(|m| m.dice).map_or(String::new(), |d| format!("{d:.6}")),
                ];
                out.push_str(&csv_row(row.iter().map(String::as_str)));
            }
            return out;
        }
        let mut header = vec!["position".to_string(), "file".into(), "class".into(), "probability".into()];
        header.extend(self.classes.iter().map(|c| format!("p_{c}")));
        header.extend(self.classes.iter().map(|c| format!("logit_{c}")));
        let mut out = csv_row(header.iter().map(String::as_str));
        for image in &self.images {
            let mut row = vec![
                image.position.to_string(),
                image.file.clone(),
                image.class.clone(),
                image.probabilities.get(image.class_index).map_or(String::new(), |p| format!("{p:.6}")),
            ];
            if image.overflow.is_some() {
                // No numbers for an image without a result, but every column.
                row.extend(std::iter::repeat_n(String::new(), 2 * self.classes.len()));
            } else {
                row.extend(image.probabilities.iter().map(|p| format!("{p:.6}")));
                row.extend(image.logits.iter().map(|l| format!("{l:.6}")));
            }
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
        let mut file = create_private(path)?;
        file.write_all(text.as_bytes()).map_err(Error::io(path))
    }
}

/// Creates (or truncates) a file only its owner may read: predictions and masks are patient
/// data. An existing file's wider permissions are narrowed too.
pub(crate) fn create_private(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        let file = options.open(path).map_err(Error::io(path))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(Error::io(path))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path).map_err(Error::io(path))
}

/// What [`Predictions::save`] wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Saved {
    /// The predictions file.
    pub predictions: PathBuf,
    /// Segmentation: the directory of mask PNGs, and how many it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masks_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masks: Option<usize>,
    /// Mean Dice over the images that had a ground-truth mask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_dice: Option<f64>,
}

impl Predictions {
    /// The images whose outputs left the planned range (no result, see [`Prediction::overflow`]).
    pub fn overflowed(&self) -> usize {
        self.images.iter().filter(|p| p.overflow.is_some()).count()
    }

    /// What `decrypt`, `fetch` and `run` write: scores the masks against `truth` when given,
    /// then the predictions to `out` (CSV or JSON), and for a segmentation model one PNG per
    /// mask in `OUT_STEM-masks/` beside it.
    pub fn save(&mut self, out: &Path, truth: Option<&Path>) -> Result<Saved> {
        let mean_dice = match truth {
            Some(dir) if self.task == "segmentation" => self.score_masks(dir)?,
            Some(dir) => {
                return Err(Error::Invalid {
                    path: dir.to_path_buf(),
                    reason: format!("{} is a classification model: ground-truth masks do not apply", self.model),
                });
            }
            None => None,
        };
        self.write(out)?;
        if self.task != "segmentation" {
            return Ok(Saved { predictions: out.to_path_buf(), masks_dir: None, masks: None, mean_dice });
        }
        let stem = out.file_stem().map_or_else(|| "predictions".into(), |s| s.to_string_lossy().into_owned());
        let dir = out.with_file_name(format!("{stem}-masks"));
        let written = self.write_masks(&dir)?;
        Ok(Saved { predictions: out.to_path_buf(), masks_dir: Some(dir), masks: Some(written.len()), mean_dice })
    }

    /// Writes one greyscale PNG per predicted mask into `dir` (created): lesion 255, skin 0,
    /// named `POSITION-NAME.png` after the image. Returns the paths written (none for a
    /// classification model).
    pub fn write_masks(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for image in &self.images {
            let Some(mask) = &image.mask else { continue };
            if written.is_empty() {
                std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
            }
            let path = dir.join(format!("{:04}-{}.png", image.position, file_stem(&image.file)));
            let pixels: Vec<u8> = mask.pixels.iter().map(|p| p * 255).collect();
            let png = image::GrayImage::from_raw(mask.width as u32, mask.height as u32, pixels)
                .ok_or_else(|| Error::Invalid { path: path.clone(), reason: "mask size mismatch".into() })?;
            let file = std::io::BufWriter::new(create_private(&path)?);
            png.write_with_encoder(image::codecs::png::PngEncoder::new(file))
                .map_err(|e| Error::Invalid { path: path.clone(), reason: e.to_string() })?;
            written.push(path);
        }
        Ok(written)
    }

    /// Scores each predicted mask against its ground truth in `dir`: for the image `NAME.ext`, the
    /// first of `NAME.png`, `NAME_segmentation.png` and `NAME_mask.png` there (any size: resized
    /// to the mask's with nearest-neighbour sampling, lesion where grey > 127). Sets each mask's
    /// `dice` and returns the mean Dice over the images that had one (`None` if none had).
    pub fn score_masks(&mut self, dir: &Path) -> Result<Option<f64>> {
        let mut scored = Vec::new();
        for image in &mut self.images {
            let Some(mask) = &mut image.mask else { continue };
            let stem = file_stem(&image.file);
            let Some(path) = ["", "_segmentation", "_mask"]
                .iter()
                .map(|suffix| dir.join(format!("{stem}{suffix}.png")))
                .find(|path| path.is_file())
            else {
                continue;
            };
            let truth = image::open(&path)
                .map_err(|e| Error::Invalid { path: path.clone(), reason: format!("not a readable mask: {e}") })?
                .to_luma8();
            let truth = image::imageops::resize(
                &truth,
                mask.width as u32,
                mask.height as u32,
                image::imageops::FilterType::Nearest,
            );
            let truth: Vec<u8> = truth.pixels().map(|p| u8::from(p.0[0] > 127)).collect();
            let predicted: Vec<bool> = mask.pixels.iter().map(|p| *p == 1).collect();
            let dice = blindfold_nn::metrics::dice(&predicted, &truth);
            mask.dice = Some(dice);
            scored.push(dice);
        }
        Ok((!scored.is_empty()).then(|| scored.iter().sum::<f64>() / scored.len() as f64))
    }
}

/// The name of an image without directories, archive positions or extension, made safe for a
/// file name (`scans/ISIC_1.jpg` → `ISIC_1`, `test.npz#3` → `test_3`).
pub(crate) fn file_stem(file: &str) -> String {
    let base = file.rsplit(['/', '\\']).next().unwrap_or(file);
    let (name, position) = match base.split_once('#') {
        Some((name, position)) => (name, Some(position)),
        None => (base, None),
    };
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    let mut out: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') { c } else { '_' }).collect();
    if let Some(position) = position {
        out.push('_');
        out.push_str(position);
    }
    if out.is_empty() { "image".into() } else { out }
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

    /// A manifest of a `side`×`side` RGB model with the task `task` (JSON).
    fn test_manifest(task: &str, side: usize) -> blindfold_nn::Manifest {
        blindfold_nn::Manifest::from_json(&format!(
            r#"{{"name": "m", "version": 1, "description": "test", "input": {{"shape": [3, {side}, {side}],
              "layout": "CHW", "channel_order": "RGB"}}, "preprocessing": {{"resize": "stretch",
              "scale": "pixel / 255", "mean": [0, 0, 0], "std": [1, 1, 1]}}, "classes": ["lesion"],
              "positive_class": null, "multiplicative_depth": 1, "task": {task}, "metrics": {{}},
              "training": {{}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn image_names_become_safe_file_stems() {
        assert_eq!(file_stem("scans/ISIC_1.jpg"), "ISIC_1");
        assert_eq!(file_stem("../data/test.npz#3"), "test_3");
        assert_eq!(file_stem("a b/c d.png"), "c_d");
        assert_eq!(file_stem("#7"), "_7");
    }

    #[test]
    fn masks_count_their_area_and_score_against_ground_truth() {
        let dir = tempfile::tempdir().unwrap();
        // Logits of a 2×2 image: lesion at (0,0) and (0,1).
        let mut predictions = Predictions {
            model: "m".into(),
            model_version: 1,
            security_bits: 128,
            manifest: test_manifest(r#"{"kind": "segmentation", "threshold": 0.5}"#, 2),
            key_set: Uuid::nil(),
            classes: vec!["lesion".into()],
            task: "segmentation",
            images: vec![segmented(0, "scans/a.jpg".into(), &[2.0, 0.5, -1.0, -3.0], 2, 2, 0.5)],
        };
        let mask = predictions.images[0].mask.clone().unwrap();
        assert_eq!((mask.lesion_pixels, mask.lesion_fraction), (2, 0.5));
        // Ground truth at 4×4 (resized to 2×2): the top-left quarter only.
        let mut truth = image::GrayImage::new(4, 4);
        for (x, y) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            truth.put_pixel(x, y, image::Luma([255]));
        }
        truth.save(dir.path().join("a_segmentation.png")).unwrap();
        let mean = predictions.score_masks(dir.path()).unwrap().unwrap();
        assert!((mean - 2.0 / 3.0).abs() < 1e-12, "{mean}");
        let written = predictions.write_masks(&dir.path().join("out")).unwrap();
        assert_eq!(written.len(), 1);
        let png = image::open(&written[0]).unwrap().to_luma8();
        assert_eq!(png.as_raw(), &vec![255, 255, 0, 0]);
        // Patient data: only the owner may read what is written, even over a wider file.
        let csv_path = dir.path().join("predictions.csv");
        std::fs::write(&csv_path, "old").unwrap();
        std::fs::set_permissions(&csv_path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        predictions.write(&csv_path).unwrap();
        for path in [&written[0], &csv_path] {
            let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions());
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        let csv = predictions.to_csv();
        assert!(
            csv.starts_with(
                "position,file,status,lesion_pixels,lesion_fraction,dice\r\n0,scans/a.jpg,ok,2,0.500000,0.666667"
            ),
            "{csv}"
        );
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_row(["a", "b,c", "say \"hi\""].into_iter()), "a,\"b,c\",\"say \"\"hi\"\"\"\r\n");
    }
}
