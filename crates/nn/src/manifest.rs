//! A model's manifest: what its input means, how to preprocess an image, what its outputs are,
//! how it was trained and how well it did.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::Images;
use crate::ir::Shape;
use crate::{Error, Result};

/// Largest image file accepted by [`Manifest::load_image`] (bytes).
pub const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;
/// Largest decoded image accepted (pixels per side).
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// The manifest committed next to each `model.onnx` (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Registry name, e.g. `mnist-cryptonets`.
    pub name: String,
    /// Version of this model under its name.
    pub version: u32,
    /// One line on what the network is.
    pub description: String,
    /// The network's input.
    pub input: Input,
    /// How an image becomes the input tensor.
    pub preprocessing: Preprocessing,
    /// Class names, in output order.
    pub classes: Vec<String>,
    /// The class scored for the one-vs-rest AUC (melanoma for skin lesions), if any.
    pub positive_class: Option<usize>,
    /// The multiplicative depth under CKKS, as [`crate::Network::depth`] computes it.
    pub multiplicative_depth: usize,
    /// What the outputs mean (classification when absent).
    #[serde(default)]
    pub task: Task,
    /// The data set whose test split `model eval` and `bench infer` use: `mnist`,
    /// `dermamnist`, `dermamnist_64` or `lesion-seg`. Absent: the model has no evaluation set
    /// (the tools that need one say so); the name is never read for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// The largest |output| the model produces on its data, with a margin: the encrypted
    /// plan leaves that much room for the outputs (each bit it need not leave makes them twice
    /// as precise), and refuses a decrypted output beyond it as an overflow. Absent: 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bound: Option<f64>,
    /// The screening threshold on the positive class's probability (melanoma for skin lesions):
    /// an image at or above it needs a clinician's review. Reports mark it on the probability
    /// bar and filter on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_point: Option<OperatingPoint>,
    /// The trained coefficients of each quadratic activation (informational).
    #[serde(default)]
    pub activations: Vec<serde_json::Value>,
    /// Plaintext metrics measured at training time with onnxruntime.
    pub metrics: serde_json::Value,
    /// How the model was trained.
    pub training: serde_json::Value,
}

/// What a model's outputs mean.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// One logit per class (`classes`); the prediction is the largest.
    #[default]
    Classification,
    /// One logit per pixel of the input's height and width; a pixel belongs to the object
    /// when its probability (the logit's sigmoid) reaches `threshold`.
    Segmentation {
        /// Probability threshold, in (0, 1).
        threshold: f64,
    },
}

/// A threshold on the positive class's softmax probability, chosen on the validation split
/// for a target sensitivity (`blindfold model eval` prints it), with what it gave on test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    /// Probability in (0, 1) at or above which an image is flagged.
    pub threshold: f64,
    /// The sensitivity the threshold was chosen for, on `chosen_on`.
    pub target_sensitivity: f64,
    /// The split the threshold was chosen on (`val`).
    pub chosen_on: String,
    /// Sensitivity on the test split at this threshold.
    pub test_sensitivity: f64,
    /// Specificity on the test split at this threshold.
    pub test_specificity: f64,
}

/// The input tensor of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// `[channels, height, width]`.
    pub shape: [usize; 3],
    /// Always `CHW`.
    pub layout: String,
    /// `gray` or `RGB`.
    pub channel_order: String,
}

/// The preprocessing rule: stretch to the input size, scale to [0, 1], normalise per channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// How an image of another size is resized (stretched, bicubic).
    pub resize: String,
    /// The pixel scaling (`pixel / 255`).
    pub scale: String,
    /// Per-channel mean subtracted after scaling.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: Vec<f64>,
}

impl Manifest {
    /// Parses a manifest and checks it is self-consistent.
    pub fn from_json(json: &str) -> Result<Self> {
        let m: Manifest =
            serde_json::from_str(json).map_err(|e| Error::Manifest { model: "?".into(), reason: e.to_string() })?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<()> {
        let err = |reason: String| Error::Manifest { model: self.name.clone(), reason };
        let [c, h, w] = self.input.shape;
        if !(c == 1 || c == 3) || h == 0 || w == 0 || h > 4096 || w > 4096 {
            return Err(err(format!("input shape {:?} is not 1 or 3 channels of a sane size", self.input.shape)));
        }
        let p = &self.preprocessing;
        if p.mean.len() != c || p.std.len() != c || p.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return Err(err(format!("needs {c} means and {c} positive standard deviations")));
        }
        if self.classes.is_empty() || self.positive_class.is_some_and(|p| p >= self.classes.len()) {
            return Err(err("classes are empty or the positive class is out of range".into()));
        }
        if self.output_bound.is_some_and(|b| !(b.is_finite() && b > 0.0)) {
            return Err(err("output_bound is not a positive number".into()));
        }
        if let Some(point) = &self.operating_point {
            if self.positive_class.is_none() {
                return Err(err("an operating point needs a positive class".into()));
            }
            let threshold = point.threshold > 0.0 && point.threshold < 1.0;
            let sensitivity = point.target_sensitivity > 0.0 && point.target_sensitivity <= 1.0;
            if !(threshold && sensitivity) {
                return Err(err(format!(
                    "operating point threshold {} or sensitivity {} is not a probability",
                    point.threshold, point.target_sensitivity
                )));
            }
        }
        if let Task::Segmentation { threshold } = self.task
            && !(threshold > 0.0 && threshold < 1.0)
        {
            return Err(err(format!("segmentation threshold {threshold} is not in (0, 1)")));
        }
        Ok(())
    }

    /// The output shape the task implies: one value per class, or one per input pixel.
    pub fn output_shape(&self) -> Shape {
        match self.task {
            Task::Classification => Shape::Vector { len: self.classes.len() },
            Task::Segmentation { .. } => {
                let [_, height, width] = self.input.shape;
                Shape::Image { channels: 1, height, width }
            }
        }
    }

    /// The data set whose test split the model is evaluated on (see [`Manifest::dataset`]).
    pub fn dataset(&self) -> Option<&str> {
        self.dataset.as_deref()
    }

    /// The input shape as the IR names it.
    pub fn input_shape(&self) -> Shape {
        let [channels, height, width] = self.input.shape;
        Shape::Image { channels, height, width }
    }

    /// Scales and normalises CHW `u8` pixels of the input size into the network's input.
    pub fn normalise(&self, pixels: &[u8]) -> Vec<f64> {
        let [c, h, w] = self.input.shape;
        let plane = h * w;
        pixels
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ch = (i / plane).min(c - 1);
                (f64::from(*p) / 255.0 - self.preprocessing.mean[ch]) / self.preprocessing.std[ch]
            })
            .collect()
    }

    /// The network inputs for a whole dataset split, checking that it matches the input shape.
    pub fn inputs(&self, images: &Images) -> Result<Vec<Vec<f64>>> {
        if [images.channels, images.height, images.width] != self.input.shape {
            return Err(Error::Manifest {
                model: self.name.clone(),
                reason: format!(
                    "images are {}x{}x{} but the model takes {:?}",
                    images.channels, images.height, images.width, self.input.shape
                ),
            });
        }
        Ok(images.pixels.chunks_exact(images.image_len()).map(|px| self.normalise(px)).collect())
    }

    /// Decodes a PNG or JPEG image of any size, converts it to the model's channels, stretches
    /// it to the input size with a bicubic (Catmull-Rom) filter and normalises it.
    /// Takes any image; [`Manifest::load_checked_image`] refuses one far from the model's input.
    pub fn load_image(&self, path: &Path) -> Result<Vec<f64>> {
        self.load_checked_image(path, true)
    }

    /// [`Manifest::load_image`], refusing an image far from what the model takes
    /// ([`Manifest::mismatch`]) unless `allow_mismatch`: a colour photograph given to a
    /// grayscale digit model, a grayscale scan to a colour lesion model, or a strip stretched
    /// more than twice to the model's aspect ratio would get a confident, meaningless answer.
    pub fn load_checked_image(&self, path: &Path, allow_mismatch: bool) -> Result<Vec<f64>> {
        let data_err = |reason: String| Error::Data { path: path.to_path_buf(), reason };
        let img = open_image(path)?;
        if !allow_mismatch && let Some(reason) = self.mismatch(&img) {
            return Err(data_err(format!("{reason}; pass --force to use it anyway")));
        }
        Ok(self.preprocess(&img))
    }

    /// Why `img` is far from the model's input, if it is: colour against a grayscale model (more
    /// than 1 % of pixels with channels over 24 levels apart), grayscale against a colour model,
    /// or an aspect ratio more than twice the model's either way.
    pub fn mismatch(&self, img: &image::DynamicImage) -> Option<String> {
        let [c, h, w] = self.input.shape;
        let (width, height) = (img.width().max(1), img.height().max(1));
        let stretch = (f64::from(width) / f64::from(height)) / (w as f64 / h as f64);
        if !(0.5..=2.0).contains(&stretch) {
            return Some(format!(
                "its aspect ratio ({width}×{height}) is more than twice as {} as the model's input ({w}×{h})",
                if stretch > 1.0 { "wide" } else { "tall" }
            ));
        }
        let rgb = img.to_rgb8();
        let pixels = rgb.pixels().len().max(1);
        let coloured = rgb
            .pixels()
            .filter(|p| {
                let [r, g, b] = p.0;
                r.abs_diff(g).max(g.abs_diff(b)).max(r.abs_diff(b)) > 24
            })
            .count();
        let colour = coloured * 100 > pixels;
        match (c, colour) {
            (1, true) => Some(format!(
                "a colour image for a grayscale model ({}% of its pixels are coloured)",
                coloured * 100 / pixels
            )),
            (3, false) => Some("a grayscale image for a colour model".to_owned()),
            _ => None,
        }
    }

    /// Preprocesses a decoded image (see [`Manifest::load_image`]).
    pub fn preprocess(&self, img: &image::DynamicImage) -> Vec<f64> {
        let [c, h, w] = self.input.shape;
        let filter = image::imageops::FilterType::CatmullRom;
        let (w32, h32) = (w as u32, h as u32);
        let pixels: Vec<u8> = if c == 1 {
            let g = img.to_luma8();
            let g = if g.dimensions() == (w32, h32) { g } else { image::imageops::resize(&g, w32, h32, filter) };
            g.into_raw()
        } else {
            let rgb = img.to_rgb8();
            let rgb =
                if rgb.dimensions() == (w32, h32) { rgb } else { image::imageops::resize(&rgb, w32, h32, filter) };
            let hwc = rgb.into_raw();
            let plane = h * w;
            let mut chw = vec![0u8; 3 * plane];
            for (p, px) in hwc.chunks_exact(3).enumerate() {
                for ch in 0..3 {
                    chw[ch * plane + p] = px[ch];
                }
            }
            chw
        };
        self.normalise(&pixels)
    }
}

/// Decodes a PNG or JPEG file with the limits every image file is read under (at most
/// [`MAX_IMAGE_SIDE`] pixels a side), so that a hostile file cannot exhaust memory wherever it
/// is opened: intake, and the thumbnails of a report.
pub fn open_image(path: &Path) -> Result<image::DynamicImage> {
    let data_err = |reason: String| Error::Data { path: path.to_path_buf(), reason };
    let meta = std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        return Err(data_err(format!("image file is {} bytes (limit {MAX_IMAGE_FILE_BYTES})", meta.len())));
    }
    let mut reader = image::ImageReader::open(path)
        .map_err(|source| Error::Io { path: path.to_path_buf(), source })?
        .with_guessed_format()
        .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    reader.decode().map_err(|e| data_err(format!("not a readable PNG or JPEG image: {e}")))
}
