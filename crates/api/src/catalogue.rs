//! The model catalogue: every registered model with, per packing, the CKKS parameter set its
//! compiled plan needs (and so the fingerprint a key set and a batch must carry) and the
//! rotation (Galois) keys it needs. Compiled once per process.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use blindfold_ckks::{Parameters, Preset};
use blindfold_compiler::{LatencyPlan, Packing, ThroughputPlan};
use serde::Serialize;
use utoipa::ToSchema;

/// One packing a model can run with.
#[derive(Debug, Clone, Serialize, ToSchema)]
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
    /// Images per batch (throughput) or 1 (latency).
    pub images_per_batch: usize,
    /// Rotation steps the evaluation keys must cover (Galois keys needed).
    pub rotation_steps: Vec<i64>,
    /// A relinearization key is always needed.
    pub relinearization_key: bool,
}

/// One model.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelInfo {
    /// Registry name.
    pub name: String,
    /// Manifest version.
    pub version: u32,
    /// What it does.
    pub description: String,
    /// Input shape (channels, height, width).
    pub input_shape: Vec<usize>,
    /// Class labels, in output order.
    pub classes: Vec<String>,
    /// The packings it supports.
    pub packings: Vec<PackingInfo>,
}

/// The catalogue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Catalogue {
    /// Every model.
    pub models: Vec<ModelInfo>,
}

static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();

impl Catalogue {
    /// The process-wide catalogue, compiled on first use (call from a blocking thread).
    pub fn get() -> &'static Catalogue {
        CATALOGUE.get_or_init(Catalogue::compile)
    }

    fn compile() -> Catalogue {
        let mut models = Vec::new();
        for name in blindfold_nn::registry::names() {
            let model = match blindfold_nn::registry::load(name) {
                Ok(model) => model,
                Err(error) => {
                    tracing::warn!(model = name, %error, "model left out of the catalogue");
                    continue;
                }
            };
            let mut packings = Vec::new();
            match ThroughputPlan::compile(name, &model.network) {
                Ok(plan) => packings.push(packing_info(
                    Packing::Throughput,
                    plan.params(),
                    plan.batch_capacity(),
                    plan.rotation_steps(),
                )),
                Err(error) => tracing::warn!(model = name, %error, "no throughput plan"),
            }
            match LatencyPlan::compile(name, &model.network) {
                Ok(plan) => packings.push(packing_info(Packing::Latency, plan.params(), 1, plan.rotation_steps())),
                Err(error) => tracing::warn!(model = name, %error, "no latency plan"),
            }
            models.push(ModelInfo {
                name: model.manifest.name.clone(),
                version: model.manifest.version,
                description: model.manifest.description.clone(),
                input_shape: model.manifest.input.shape.to_vec(),
                classes: model.manifest.classes.clone(),
                packings,
            });
        }
        Catalogue { models }
    }

    /// A model by name.
    pub fn model(&self, name: &str) -> Option<&ModelInfo> {
        self.models.iter().find(|model| model.name == name)
    }

    /// The names, for messages.
    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|model| model.name.as_str()).collect()
    }

    /// Model name → version, for batch header checks.
    pub fn versions(&self) -> BTreeMap<&str, u32> {
        self.models.iter().map(|model| (model.name.as_str(), model.version)).collect()
    }
}

impl ModelInfo {
    /// The model's plan for a packing, if it compiles for it.
    pub fn packing(&self, packing: Packing) -> Option<&PackingInfo> {
        self.packings.iter().find(|info| info.packing == packing)
    }
}

fn packing_info(packing: Packing, params: &Parameters, images: usize, rotation_steps: Vec<i64>) -> PackingInfo {
    let fingerprint = params.fingerprint();
    let preset = Preset::ALL
        .into_iter()
        .find(|preset| preset.parameters().is_ok_and(|p| p.fingerprint() == fingerprint))
        .map_or("custom", Preset::name);
    PackingInfo {
        packing,
        parameter_preset: preset.to_owned(),
        params_fingerprint: fingerprint.to_string(),
        log_n: params.log_n(),
        images_per_batch: images,
        rotation_steps,
        relinearization_key: true,
    }
}
