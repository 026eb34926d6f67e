//! What both packings' plans share: the header of a plan, the header of each stage, and the
//! lines of a plan summary.

use blindfold_ckks::Parameters;

use crate::lower::Affine;

/// What every stage says about itself, whatever it computes.
#[derive(Debug, Clone)]
pub(crate) struct StageHeader {
    /// The network node it computes (refusals name it).
    pub node: usize,
    /// What summaries and progress reports call it.
    pub name: String,
    /// Level of its (first) input and of its output.
    pub level_in: usize,
    pub level_out: usize,
    /// The scale of its output.
    pub scale_out: f64,
    /// Estimated work, in the cost model's unit per coefficient (progress and packing choice).
    pub cost: f64,
}

/// What every plan says about itself.
#[derive(Debug, Clone)]
pub(crate) struct PlanHeader {
    pub model: String,
    pub params: Parameters,
    /// Values in one image and in one result.
    pub input_len: usize,
    pub output_len: usize,
    /// The level and scale inputs are encrypted at.
    pub input_level: usize,
    pub input_scale: f64,
    /// Outputs are `factor · decrypted + constant`.
    pub output_affine: Affine,
    /// |decrypted| the plan leaves room for in q_0.
    pub output_bound: f64,
}

impl PlanHeader {
    /// The output from decrypted slot values, or an overflow: a value beyond what the plan
    /// left room for in q_0 means the encrypted values left their planned range somewhere
    /// (an input far outside what the model was calibrated on), and the decryption is noise.
    pub(crate) fn output(&self, decrypted: f64) -> crate::Result<f64> {
        let bound = self.output_bound;
        if !decrypted.is_finite() || decrypted.abs() >= bound {
            return Err(crate::Error::Overflow { value: decrypted, bound });
        }
        Ok(self.output_affine.factor * decrypted + self.output_affine.constant)
    }
}

/// One line of a plan summary: stage, levels in and out, scale after, what it does.
pub(crate) fn stage_line(index: usize, header: &StageHeader, what: &str) -> String {
    format!(
        "{index:>3}  {:<48} level {} -> {}  scale 2^{:<6.1} {what}\n",
        header.name,
        header.level_in,
        header.level_out,
        header.scale_out.log2()
    )
}

/// The refusal of a plan whose memory at some stage exceeds `budget`: names the first stage's
/// node and says how much it needs. `profile` is (stage, bytes held while it runs), `fixed`
/// what the plan holds throughout (weights, keys).
pub(crate) fn check_budget(
    profile: &[(usize, usize)],
    fixed: usize,
    budget: u64,
    headers: &[&StageHeader],
    network: &blindfold_nn::Network,
    packing: blindfold_packing::Packing,
) -> crate::Result<()> {
    let peak = profile.iter().map(|(_, b)| b + fixed).max().unwrap_or(fixed);
    let Some(&(stage, bytes)) = profile.iter().find(|(_, b)| (b + fixed) as u64 > budget) else { return Ok(()) };
    let node = &network.nodes()[headers[stage].node];
    Err(crate::Error::DoesNotFit {
        node: node.name.clone(),
        layer: node.layer.to_string(),
        reason: format!(
            "the {packing} plan needs {:.2} GB here ({:.2} GB at its peak) against a memory budget of {:.2} GB",
            (bytes + fixed) as f64 / 1e9,
            peak as f64 / 1e9,
            budget as f64 / 1e9
        ),
    })
}
