//! Polynomial stand-ins for the activations standard networks use (ReLU, sigmoid, GELU, …),
//! which CKKS cannot evaluate: a Chebyshev interpolant of a chosen degree on the interval the
//! activation's inputs were observed in. This is what `blindfold model convert` puts in place
//! of each non-polynomial activation; outside its interval an approximation diverges, which is
//! why the interval comes from calibration data and is widened by a margin.

use crate::ir::{MAX_DEGREE, Polynomial};

/// A non-polynomial activation of a standard network, as ONNX names it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Nonlinear {
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x ≥ 0`, else `alpha · x`.
    LeakyRelu {
        /// The negative slope (ONNX default 0.01).
        alpha: f64,
    },
    /// `1 / (1 + e^−x)`.
    Sigmoid,
    /// `tanh x`.
    Tanh,
    /// `x · Φ(x)` with Φ the standard normal CDF (ONNX `Gelu`, `approximate = "none"`).
    Gelu,
    /// `x · sigmoid(x)` (SiLU, swish).
    Silu,
    /// `ln(1 + e^x)`.
    Softplus,
    /// `x · min(max(x + 3, 0), 6) / 6`.
    HardSwish,
}

impl Nonlinear {
    /// The exact value at `x`.
    pub fn eval(&self, x: f64) -> f64 {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        match *self {
            Nonlinear::Relu => x.max(0.0),
            Nonlinear::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            Nonlinear::Sigmoid => sigmoid(x),
            Nonlinear::Tanh => x.tanh(),
            Nonlinear::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Nonlinear::Silu => x * sigmoid(x),
            // ln(1 + e^x) without overflow: x + ln(1 + e^−x) for large x.
            Nonlinear::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
            Nonlinear::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        }
    }

    /// The ONNX operator name.
    pub fn name(&self) -> &'static str {
        match self {
            Nonlinear::Relu => "Relu",
            Nonlinear::LeakyRelu { .. } => "LeakyRelu",
            Nonlinear::Sigmoid => "Sigmoid",
            Nonlinear::Tanh => "Tanh",
            Nonlinear::Gelu => "Gelu",
            Nonlinear::Silu => "Silu",
            Nonlinear::Softplus => "Softplus",
            Nonlinear::HardSwish => "HardSwish",
        }
    }
}

/// A polynomial standing in for a [`Nonlinear`] on an interval, and how close it is there.
#[derive(Debug, Clone, PartialEq)]
pub struct Approximation {
    /// What is approximated.
    pub function: Nonlinear,
    /// The Chebyshev interpolant (its interval is the one asked for).
    pub polynomial: Polynomial,
    /// The largest |polynomial − function| over [`ERROR_SAMPLES`] evenly spaced points of the
    /// interval, ends included.
    pub max_error: f64,
}

/// Points the error of an approximation is measured at.
pub const ERROR_SAMPLES: usize = 4097;

/// Why an approximation cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ApproximationError {
    /// The degree is 0 or above [`MAX_DEGREE`].
    #[error("degree {0} is not in 1..={MAX_DEGREE}")]
    Degree(usize),
    /// The interval is empty, reversed or not finite.
    #[error("interval [{0}, {1}] is not finite with lo < hi")]
    Interval(f64, f64),
}

/// The Chebyshev interpolant of `function` of degree `degree` on `interval`: it equals the
/// function at the `degree + 1` Chebyshev nodes of the first kind, which keeps the error within
/// a small factor (≤ 2 + 2/π·ln(degree + 1)) of the best polynomial of that degree.
pub fn approximate(
    function: Nonlinear,
    degree: usize,
    interval: [f64; 2],
) -> Result<Approximation, ApproximationError> {
    let [lo, hi] = interval;
    if degree == 0 || degree > MAX_DEGREE {
        return Err(ApproximationError::Degree(degree));
    }
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(ApproximationError::Interval(lo, hi));
    }
    let polynomial = Polynomial::interpolate(|x| function.eval(x), degree, interval);
    let max_error = (0..ERROR_SAMPLES)
        .map(|i| {
            let x = lo + (hi - lo) * i as f64 / (ERROR_SAMPLES - 1) as f64;
            (polynomial.eval(x) - function.eval(x)).abs()
        })
        .fold(0.0, f64::max);
    Ok(Approximation { function, polynomial, max_error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Nonlinear; 8] = [
        Nonlinear::Relu,
        Nonlinear::LeakyRelu { alpha: 0.1 },
        Nonlinear::Sigmoid,
        Nonlinear::Tanh,
        Nonlinear::Gelu,
        Nonlinear::Silu,
        Nonlinear::Softplus,
        Nonlinear::HardSwish,
    ];

    #[test]
    fn the_exact_functions_are_the_ones_onnx_defines() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(Nonlinear::Gelu.eval(1.0), 0.841_344_746_068_542_9));
        assert!(close(Nonlinear::Silu.eval(2.0), 2.0 / (1.0 + (-2.0f64).exp())));
        assert!(close(Nonlinear::Softplus.eval(800.0), 800.0), "no overflow");
        assert!(close(Nonlinear::Softplus.eval(0.0), 2f64.ln()));
        assert!(close(Nonlinear::HardSwish.eval(-3.5), 0.0) && close(Nonlinear::HardSwish.eval(1.0), 4.0 / 6.0));
        assert!(close(Nonlinear::LeakyRelu { alpha: 0.1 }.eval(-2.0), -0.2));
    }

    #[test]
    fn smooth_functions_converge_fast_and_relu_slowly() {
        // Smooth activations: the error falls by more than 10× from degree 7 to 31 on [−8, 8]
        // (tanh slowest, its poles at ±iπ/2 being nearest the interval: 0.22 → 2.5e-3); ReLU's
        // kink keeps it near 1 % of the interval.
        for function in [Nonlinear::Sigmoid, Nonlinear::Tanh, Nonlinear::Gelu, Nonlinear::Silu, Nonlinear::Softplus] {
            let low = approximate(function, 7, [-8.0, 8.0]).unwrap().max_error;
            let high = approximate(function, 31, [-8.0, 8.0]).unwrap().max_error;
            assert!(high < 5e-3 && high < low / 10.0, "{function:?}: degree 7 {low}, degree 31 {high}");
        }
        let relu = approximate(Nonlinear::Relu, 31, [-8.0, 8.0]).unwrap().max_error;
        assert!(relu > 0.01 && relu < 0.2, "ReLU degree 31 on [−8, 8]: {relu}");
    }

    #[test]
    fn bad_degrees_and_intervals_are_refused() {
        assert_eq!(approximate(Nonlinear::Relu, 0, [-1.0, 1.0]), Err(ApproximationError::Degree(0)));
        assert_eq!(approximate(Nonlinear::Relu, 64, [-1.0, 1.0]), Err(ApproximationError::Degree(64)));
        assert!(matches!(approximate(Nonlinear::Relu, 3, [1.0, 1.0]), Err(ApproximationError::Interval(..))));
        assert!(matches!(approximate(Nonlinear::Relu, 3, [f64::NAN, 1.0]), Err(ApproximationError::Interval(..))));
    }

    proptest! {
        /// The interpolant meets the function at every Chebyshev node, for any activation,
        /// degree and interval, and its stated error bounds it everywhere sampled.
        #[test]
        fn the_interpolant_passes_through_the_nodes(
            which in 0..ALL.len(), degree in 1usize..=MAX_DEGREE, lo in -20.0f64..0.0, width in 0.1f64..40.0,
        ) {
            let function = ALL[which];
            let interval = [lo, lo + width];
            let approximation = approximate(function, degree, interval).unwrap();
            let n = degree + 1;
            for j in 0..n {
                let t = (std::f64::consts::PI * (j as f64 + 0.5) / n as f64).cos();
                let x = (t * width + 2.0 * lo + width) / 2.0;
                let scale = function.eval(x).abs().max(1.0);
                prop_assert!((approximation.polynomial.eval(x) - function.eval(x)).abs() < 1e-9 * scale * n as f64);
            }
            prop_assert!(approximation.max_error.is_finite());
            prop_assert!(approximation.polynomial.check().is_ok());
        }
    }
}
