//! The model catalogue, read from the registry (`models` table): every served model version
//! with, per packing, the CKKS parameter set its compiled plan needs (and so the fingerprint a
//! key set and a batch must carry) and the rotation (Galois) keys it needs.
//!
//! Registering a version verifies its two files and compiles both plans once
//! ([`verify_model`]); the rows then carry the plans' summaries, so answering a request never
//! compiles anything.

use blindfold_ckks::{Parameters, Preset};
use blindfold_compiler::{LatencyPlan, Packing, ThroughputPlan};
use blindfold_nn::Manifest;
use blindfold_queue::{ModelRef, ModelState, RegisteredModel};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One packing a model can run with: the summary of its compiled plan.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PackingInfo {
    /// `throughput` or `latency`.
    #[schema(value_type = String, example = "throughput")]
    pub packing: Packing,
    /// The parameter preset name (`n13-d2`, …) or `custom`.
    pub parameter_preset: String,
    /// The parameter fingerprint (hex) key sets and batches must carry.
    pub params_fingerprint: String,
    /// log2 of the ring degree.
    pub log_n: u32,
    /// Security of the parameter set in bits (never below 128).
    #[serde(default)]
    pub security_bits: u32,
    /// Levels the plan uses.
    #[serde(default)]
    pub depth: usize,
    /// Images per batch (throughput) or 1 (latency).
    pub images_per_batch: usize,
    /// Rotation steps the evaluation keys must cover (Galois keys needed).
    pub rotation_steps: Vec<i64>,
    /// A relinearization key is always needed.
    pub relinearization_key: bool,
    /// Serialized size of the evaluation keys, in bytes.
    #[serde(default)]
    pub key_bytes: u64,
    /// The exact size of a key bundle for this packing (the evaluation keys in their
    /// container), in bytes: `POST /v1/key-sets` accepts no other. 0 on rows registered
    /// before this field existed (then only the server's upload limit applies).
    #[serde(default)]
    pub bundle_bytes: u64,
    /// The plan's estimate of a worker's peak memory for one batch (or one image), in bytes.
    #[serde(default)]
    pub peak_memory_bytes: u64,
    /// The least memory a worker needs for this packing, in bytes: `peak_memory_bytes` for the
    /// throughput packing; for the latency packing the peak with every diagonal streamed
    /// (slower, far smaller), which a worker with less memory falls back to. 0 on rows
    /// registered before this field existed (read it as `peak_memory_bytes`).
    #[serde(default)]
    pub min_memory_bytes: u64,
}

impl PackingInfo {
    /// The least memory a worker needs to run a job in this packing, in bytes.
    pub fn required_memory_bytes(&self) -> u64 {
        if self.min_memory_bytes == 0 { self.peak_memory_bytes } else { self.min_memory_bytes }
    }
}

/// One model version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelInfo {
    /// Registry name.
    pub name: String,
    /// The version (the manifest's).
    pub version: u32,
    /// `active` or `retired`.
    #[schema(value_type = String, example = "active")]
    pub state: ModelState,
    /// What it does.
    pub description: String,
    /// `classification` or `segmentation`.
    pub task: String,
    /// Input shape (channels, height, width).
    pub input_shape: Vec<usize>,
    /// Class labels, in output order.
    pub classes: Vec<String>,
    /// SHA-256 of `model.onnx` (hex): what the worker and `model pull` check.
    pub onnx_sha256: String,
    /// The packings it supports.
    pub packings: Vec<PackingInfo>,
}

/// The catalogue.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Catalogue {
    /// Every model version served, by name then newest first.
    pub models: Vec<ModelInfo>,
}

impl ModelInfo {
    /// The catalogue entry of a verified registry row (`None` for one still uploading).
    pub fn from_row(row: &RegisteredModel) -> Option<Self> {
        let manifest: Manifest = serde_json::from_value(row.manifest.clone()?).ok()?;
        let packings: Vec<PackingInfo> = serde_json::from_value(row.plans.clone()?).ok()?;
        Some(Self {
            name: row.name.clone(),
            version: u32::try_from(row.version).ok()?,
            state: row.state,
            description: manifest.description.clone(),
            task: task_name(&manifest),
            input_shape: manifest.input.shape.to_vec(),
            classes: manifest.classes.clone(),
            onnx_sha256: row.onnx_sha256_hex(),
            packings,
        })
    }

    /// The model's plan for a packing, if it compiles for it.
    pub fn packing(&self, packing: Packing) -> Option<&PackingInfo> {
        self.packings.iter().find(|info| info.packing == packing)
    }

    /// `NAME@VERSION`.
    pub fn reference(&self) -> ModelRef {
        ModelRef::pinned(self.name.clone(), self.version as i32)
    }
}

fn task_name(manifest: &Manifest) -> String {
    serde_json::to_value(&manifest.task)
        .ok()
        .and_then(|task| task["kind"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "classification".to_owned())
}

/// Why a model's files were refused; every message names the file, node or layer at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A model whose files agree with each other and with its announcement, compiled.
#[derive(Debug, Clone)]
pub struct VerifiedModel {
    /// The manifest, as stored in the registry.
    pub manifest: serde_json::Value,
    /// One summary per packing that compiles.
    pub packings: Vec<PackingInfo>,
    /// Why the other packings do not compile (a model needs at least one).
    pub refused_packings: Vec<String>,
}

/// Checks a model's files (the ONNX file imports, the manifest parses and agrees with the
/// network and with the announced name and version) and compiles both plans on ≥ 128-bit
/// parameters. CPU-bound (compiling a large model takes seconds): call from a blocking thread.
pub fn verify_model(model: &ModelRef, onnx: Vec<u8>, manifest: &[u8]) -> Result<VerifiedModel, Refused> {
    let json = std::str::from_utf8(manifest).map_err(|_| Refused("manifest.json is not UTF-8".into()))?;
    let parsed = Manifest::from_json(json).map_err(|e| Refused(format!("manifest.json: {e}")))?;
    if parsed.name != model.name || Some(parsed.version as i32) != model.version {
        return Err(Refused(format!(
            "manifest.json describes {}@{}, but {model} was announced",
            parsed.name, parsed.version
        )));
    }
    let loaded = blindfold_nn::registry::from_files(onnx, json).map_err(|e| Refused(format!("{model}: {e}")))?;
    let mut packings = Vec::new();
    let mut refused_packings = Vec::new();
    match ThroughputPlan::compile(&model.name, &loaded.network) {
        Ok(plan) => packings.push(packing_info(
            Packing::Throughput,
            plan.params(),
            PlanFigures {
                depth: plan.depth(),
                images: plan.batch_capacity(),
                rotation_steps: plan.rotation_steps(),
                rotation_keys: Vec::new(),
                key_bytes: plan.key_bytes(),
                peak_memory_bytes: plan.peak_memory_bytes(),
                min_memory_bytes: plan.peak_memory_bytes(),
            },
        )),
        Err(error) => refused_packings.push(format!("throughput packing: {error}")),
    }
    match LatencyPlan::compile(&model.name, &loaded.network) {
        Ok(plan) => packings.push(packing_info(
            Packing::Latency,
            plan.params(),
            PlanFigures {
                depth: plan.depth(),
                images: 1,
                rotation_steps: plan.rotation_steps(),
                rotation_keys: plan.rotation_keys(),
                key_bytes: plan.key_bytes(),
                peak_memory_bytes: plan.peak_memory_bytes(),
                min_memory_bytes: plan.smallest_peak_memory_bytes(),
            },
        )),
        Err(error) => refused_packings.push(format!("latency packing: {error}")),
    }
    let packings = packings.into_iter().collect::<Result<Vec<_>, _>>()?;
    if packings.is_empty() {
        return Err(Refused(format!("{model} compiles in no packing: {}", refused_packings.join("; "))));
    }
    let manifest = serde_json::to_value(&parsed).map_err(|e| Refused(format!("manifest.json: {e}")))?;
    Ok(VerifiedModel { manifest, packings, refused_packings })
}

/// What a compiled plan tells the catalogue besides its parameters.
struct PlanFigures {
    depth: usize,
    images: usize,
    rotation_steps: Vec<i64>,
    /// The Galois keys the client generates: steps with the level each serves.
    rotation_keys: Vec<(i64, usize)>,
    key_bytes: usize,
    peak_memory_bytes: usize,
    min_memory_bytes: usize,
}

fn packing_info(packing: Packing, params: &Parameters, figures: PlanFigures) -> Result<PackingInfo, Refused> {
    let fingerprint = params.fingerprint();
    let context = blindfold_ckks::Context::new(params.clone())
        .map_err(|e| Refused(format!("{} packing: its parameters: {e}", packing.name())))?;
    let bundle_bytes = blindfold_batch::KeyBundle::file_len(&context, &figures.rotation_keys);
    let preset = Preset::ALL
        .into_iter()
        .find(|preset| preset.parameters().is_ok_and(|p| p.fingerprint() == fingerprint))
        .map_or("custom", Preset::name);
    Ok(PackingInfo {
        packing,
        parameter_preset: preset.to_owned(),
        params_fingerprint: fingerprint.to_string(),
        log_n: params.log_n(),
        security_bits: params.security_bits(),
        depth: figures.depth,
        images_per_batch: figures.images,
        rotation_steps: figures.rotation_steps,
        relinearization_key: true,
        key_bytes: figures.key_bytes as u64,
        peak_memory_bytes: figures.peak_memory_bytes as u64,
        min_memory_bytes: figures.min_memory_bytes as u64,
        bundle_bytes,
    })
}
