//! The clinician's report: a self-contained static page (`DIR/index.html`) of decrypted
//! predictions, written on the hospital's machine and nowhere else. For each image it shows a
//! thumbnail of the hospital's own file, the predicted class and every class's probability,
//! the positive class's probability against the manifest's operating point, and for
//! segmentation the lesion's outline over the image with its area. Mask and overlay PNGs go
//! beside it for other tools. The page loads nothing from the network: every picture is a
//! `data:` URI, the script and style are inline, and a Content-Security-Policy forbids
//! anything else.

mod html;
mod overlay;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use blindfold_batch::Uuid;
use blindfold_nn::{Manifest, OperatingPoint, Task};
use image::{DynamicImage, RgbImage};

use crate::decrypt::{Prediction, Predictions, create_private, file_stem};
use crate::error::{Error, Result};

pub use overlay::{OUTLINE, draw as draw_outline, outline, resample};

/// Thumbnails fit in this many pixels a side (larger originals are shrunk, smaller ones kept).
const THUMBNAIL_SIDE: u32 = 160;
/// Overlays fit in this many pixels a side: enough to see the outline against the lesion.
const OVERLAY_SIDE: u32 = 256;
/// An original smaller than 1/`UPSCALE_LIMIT` of the model's input on a side was enlarged that
/// much or more before the network saw it, so the report marks it.
const UPSCALE_LIMIT: usize = 2;

/// One stage of the work behind a report, and how long it took.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Timing {
    /// What was done: `encrypt and upload`, `encrypted inference at the service`, `decrypt`, …
    pub stage: String,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// What the report says about the run besides the predictions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportContext {
    /// The service's jobs whose results these are (none for an offline `decrypt`).
    pub jobs: Vec<Uuid>,
    /// The stages and their times, in order.
    pub timings: Vec<Timing>,
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WrittenReport {
    /// `DIR/index.html`.
    pub index: PathBuf,
    /// Images shown.
    pub images: usize,
    /// Images flagged for review: at or above the operating point, far from the model's input,
    /// or without a result (outputs outside the planned range).
    pub needs_review: usize,
    /// Images whose original file could not be read for a thumbnail (the page says why).
    pub without_thumbnail: usize,
    /// Mask PNGs written to `DIR/masks/` (segmentation).
    pub masks: usize,
    /// Overlay PNGs written to `DIR/overlays/` (segmentation, images with a thumbnail).
    pub overlays: usize,
}

/// A report linked from an index page ([`write_report_index`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportLink {
    /// What the report is of.
    pub title: String,
    /// Its `index.html`, relative to the index page.
    pub href: String,
    /// One line on what it found.
    pub note: String,
}

/// One image as the report shows it.
struct Entry<'a> {
    prediction: &'a Prediction,
    /// `data:` URI of the thumbnail, or of the overlay for segmentation.
    picture: Option<String>,
    /// Why there is no picture.
    no_picture: Option<String>,
    /// The original's width and height.
    original: Option<(u32, u32)>,
    /// Why the original is far from the model's input.
    far: Option<String>,
    /// The positive class's probability (classification with a positive class).
    positive: Option<f64>,
    needs_review: bool,
}

impl Entry<'_> {
    /// The value the summary is sorted by at first, highest first: the positive class's
    /// probability, else the lesion's share of the image, else the prediction's uncertainty.
    fn risk(&self) -> f64 {
        if self.prediction.overflow.is_some() {
            return f64::INFINITY;
        }
        if let Some(p) = self.positive {
            return p;
        }
        if let Some(mask) = &self.prediction.mask {
            return mask.lesion_fraction;
        }
        1.0 - self.prediction.probabilities.get(self.prediction.class_index).copied().unwrap_or(0.0)
    }
}

/// Writes the report of `predictions` into `dir` (created, mode 0700; its files 0600: they
/// hold patient images). Thumbnails come from the files the images were encrypted from, by
/// the names in the predictions; an image whose file is gone, or that came from a dataset
/// file, is listed without one. Call it after [`Predictions::save`] so that masks scored
/// against ground truth show their Dice.
pub fn write_report(predictions: &Predictions, context: &ReportContext, dir: &Path) -> Result<WrittenReport> {
    create_private_dir(dir)?;
    let manifest = &predictions.manifest;
    let segmentation = matches!(manifest.task, Task::Segmentation { .. });
    let point = manifest.operating_point.as_ref().zip(manifest.positive_class);
    // The same mask PNGs `Predictions::save` writes beside the predictions, for other tools.
    let masks = predictions.write_masks(&dir.join("masks"))?.len();
    let mut overlays = 0;
    let mut entries = Vec::with_capacity(predictions.images.len());
    for prediction in &predictions.images {
        let stem = format!("{:04}-{}", prediction.position, file_stem(&prediction.file));
        let original = open_original(&prediction.file);
        let (picture, no_picture, dimensions, far) = match &original {
            Ok(image) => {
                let far = far_from_input(manifest, image);
                let picture = match &prediction.mask {
                    Some(mask) => {
                        let shown = fit(image, OVERLAY_SIDE).to_rgb8();
                        let drawn = overlay::draw(&shown, &mask.pixels, mask.width, mask.height);
                        let png = encode_png(&DynamicImage::ImageRgb8(drawn), &dir.join("overlays"), &stem)?;
                        overlays += 1;
                        data_uri("image/png", &png)
                    }
                    None => data_uri("image/jpeg", &encode_jpeg(&fit(image, THUMBNAIL_SIDE).to_rgb8(), dir)?),
                };
                (Some(picture), None, Some((image.width(), image.height())), far)
            }
            Err(why) => (None, Some(why.clone()), None, None),
        };
        let positive = manifest.positive_class.and_then(|p| prediction.probabilities.get(p).copied());
        let above = point.zip(positive).is_some_and(|((point, _), p)| p >= point.threshold);
        let needs_review = above || far.is_some() || prediction.overflow.is_some();
        entries.push(Entry { prediction, picture, no_picture, original: dimensions, far, positive, needs_review });
    }
    // Highest risk first; the page re-sorts on any column.
    entries.sort_by(|a, b| b.risk().total_cmp(&a.risk()).then(a.prediction.position.cmp(&b.prediction.position)));
    let page = html::page(&html::Page {
        predictions,
        context,
        entries: &entries,
        point,
        segmentation,
        generated: chrono::Utc::now(),
    });
    let index = dir.join("index.html");
    std::io::Write::write_all(&mut create_private(&index)?, page.as_bytes()).map_err(Error::io(&index))?;
    Ok(WrittenReport {
        index,
        images: entries.len(),
        needs_review: entries.iter().filter(|e| e.needs_review).count(),
        without_thumbnail: entries.iter().filter(|e| e.picture.is_none()).count(),
        masks,
        overlays,
    })
}

/// Writes `dir/index.html`, a page titled `title` that links several reports (the demo's, one
/// per model and packing). Returns its path.
pub fn write_report_index(dir: &Path, title: &str, links: &[ReportLink]) -> Result<PathBuf> {
    create_private_dir(dir)?;
    let index = dir.join("index.html");
    let page = html::index(title, links, chrono::Utc::now());
    std::io::Write::write_all(&mut create_private(&index)?, page.as_bytes()).map_err(Error::io(&index))?;
    Ok(index)
}

/// The hospital's original image named `file`, or why it cannot be shown.
fn open_original(file: &str) -> std::result::Result<DynamicImage, String> {
    if file.starts_with('#') {
        return Err("the batch's names file was not beside the result, so the original is unknown".into());
    }
    if let Some((dataset, _)) = file.rsplit_once('#')
        && Path::new(dataset).is_file()
    {
        return Err(format!("an image of the dataset file {dataset} (no picture for dataset entries)"));
    }
    blindfold_nn::open_image(Path::new(file)).map_err(|e| match e {
        blindfold_nn::Error::Io { source, .. } => format!("the original {file} cannot be read: {source}"),
        other => other.to_string(),
    })
}

/// Why `image` is far from the model's input: what intake refuses without `--force`, or an
/// original so small that the network saw it enlarged more than [`UPSCALE_LIMIT`] times.
fn far_from_input(manifest: &Manifest, image: &DynamicImage) -> Option<String> {
    if let Some(reason) = manifest.mismatch(image) {
        return Some(reason);
    }
    let [_, h, w] = manifest.input.shape;
    let (width, height) = (image.width() as usize, image.height() as usize);
    (width * UPSCALE_LIMIT < w || height * UPSCALE_LIMIT < h)
        .then(|| format!("it is {width}×{height}, enlarged more than {UPSCALE_LIMIT}× to the model's input ({w}×{h})"))
}

/// `image` shrunk to fit `side` pixels a side, keeping its aspect ratio; smaller ones as they are.
fn fit(image: &DynamicImage, side: u32) -> DynamicImage {
    if image.width() <= side && image.height() <= side {
        return image.clone();
    }
    image.resize(side, side, image::imageops::FilterType::Triangle)
}

fn encode_jpeg(image: &RgbImage, dir: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
        .encode_image(image)
        .map_err(|e| Error::Invalid { path: dir.to_path_buf(), reason: format!("encoding a thumbnail: {e}") })?;
    Ok(bytes)
}

/// Encodes `image` as PNG, writes it to `dir/STEM.png` (mode 0600) and returns the bytes.
fn encode_png(image: &DynamicImage, dir: &Path, stem: &str) -> Result<Vec<u8>> {
    create_private_dir(dir)?;
    let path = dir.join(format!("{stem}.png"));
    let mut bytes = Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| Error::Invalid { path: path.clone(), reason: format!("encoding a PNG: {e}") })?;
    let bytes = bytes.into_inner();
    std::io::Write::write_all(&mut create_private(&path)?, &bytes).map_err(Error::io(&path))?;
    Ok(bytes)
}

fn data_uri(media_type: &str, bytes: &[u8]) -> String {
    format!("data:{media_type};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Creates `dir` and its parents; `dir` itself only its owner may enter.
fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(Error::io(dir))?;
    }
    Ok(())
}

/// How an operating point is described on the page.
fn describe_point(point: &OperatingPoint, class: &str) -> String {
    format!(
        "{class} probability ≥ {:.3}: chosen for {:.0} % sensitivity on the {} split; on test, sensitivity {:.1} %, specificity {:.1} %",
        point.threshold,
        point.target_sensitivity * 100.0,
        point.chosen_on,
        point.test_sensitivity * 100.0,
        point.test_specificity * 100.0
    )
}
