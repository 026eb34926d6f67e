//! Slot-wise steps both engines apply to every ciphertext of a value alike: a scale by a
//! constant, and the alignment of a join's branch to its reference (level, scale, factor).

use blindfold_ckks::{Ciphertext, Evaluator};

use crate::lower::Alignment;
use crate::{Error, Result};

/// `factor · x + shift`, rescaled once, at exactly `scale` (the constant is encoded at the
/// scale that lands the product there; its rounding is below 2^−28 of it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ScaleStep {
    pub factor: f64,
    pub shift: f64,
    /// The scale the factor is encoded at.
    pub encoding: f64,
    /// The output scale.
    pub scale: f64,
}

impl ScaleStep {
    /// The step taking `(level, scale_in)` one level down to `scale_out`.
    pub(crate) fn plan(factor: f64, shift: f64, level: usize, scale_in: f64, scale_out: f64, moduli: &[u64]) -> Self {
        Self { factor, shift, encoding: scale_out * moduli[level] as f64 / scale_in, scale: scale_out }
    }

    pub(crate) fn apply(&self, ev: &Evaluator, x: &Ciphertext) -> Result<Ciphertext> {
        let mut out = ev.mul_scalar(x, self.factor, self.encoding)?;
        ev.rescale_assign(&mut out)?;
        out.set_scale(self.scale);
        if self.shift != 0.0 { Ok(ev.add_scalar(&out, self.shift)?) } else { Ok(out) }
    }
}

/// How one branch of a join reaches the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Align {
    /// Already at the reference's level and scale.
    Keep,
    /// Same scale, more primes: drop them.
    Drop { level: usize },
    /// Drop to `level`, then scale (one level down to the reference's).
    Scale { level: usize, step: ScaleStep },
}

impl Align {
    /// The alignment of a branch at `(level, scale)` to the reference at `(ref_level,
    /// ref_scale)`, multiplying by `alignment.ratio` and adding its offset.
    pub(crate) fn plan(
        (level, scale): (usize, f64),
        (ref_level, ref_scale): (usize, f64),
        alignment: Alignment,
        moduli: &[u64],
    ) -> Result<(Align, f64)> {
        let same_scale = ((scale - ref_scale) / ref_scale).abs() < 1e-9;
        let align = if alignment.ratio == 1.0 && same_scale {
            if level == ref_level { Align::Keep } else { Align::Drop { level: ref_level } }
        } else if level > ref_level {
            let step = ScaleStep::plan(alignment.ratio, 0.0, ref_level + 1, scale, ref_scale, moduli);
            Align::Scale { level: ref_level + 1, step }
        } else {
            return Err(Error::Internal(format!(
                "a join branch at level {level} (scale 2^{:.2}, ratio {}) cannot be aligned to level {ref_level} \
                 (scale 2^{:.2}) without a level",
                scale.log2(),
                alignment.ratio,
                ref_scale.log2()
            )));
        };
        Ok((align, alignment.offset))
    }

    /// Whether it multiplies (what the cost model counts).
    pub(crate) fn multiplies(&self) -> bool {
        matches!(self, Align::Scale { .. })
    }

    pub(crate) fn apply(&self, ev: &Evaluator, x: &Ciphertext, offset: f64) -> Result<Ciphertext> {
        let out = match self {
            Align::Keep => x.clone(),
            Align::Drop { level } => ev.drop_to_level(x, *level)?,
            Align::Scale { level, step } => step.apply(ev, &ev.drop_to_level(x, *level)?)?,
        };
        if offset != 0.0 { Ok(ev.add_scalar(&out, offset)?) } else { Ok(out) }
    }
}
