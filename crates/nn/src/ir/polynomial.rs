//! Element-wise polynomial activations, in the power or the Chebyshev basis.

use serde::{Deserialize, Serialize};

/// Highest degree an activation polynomial may have: a Chebyshev approximation of degree 63
/// costs 6 levels under CKKS (⌈log2(d + 1)⌉).
pub const MAX_DEGREE: usize = 63;

/// The basis a polynomial's coefficients are in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// `c0 + c1 x + c2 x² + …`.
    #[default]
    Power,
    /// `c0 T0(t) + c1 T1(t) + …` with `T_k` the Chebyshev polynomials of the first kind and
    /// `t = (2x − lo − hi)/(hi − lo)` mapping the polynomial's interval onto [−1, 1]: the
    /// numerically stable basis for approximations of high degree.
    Chebyshev,
}

/// An element-wise polynomial activation.
///
/// The interval is the range of inputs the polynomial is meant for (an approximation of ReLU
/// is only close to ReLU there). The Chebyshev basis needs it; under CKKS every polynomial of
/// degree 3 or more is evaluated in the Chebyshev basis on it, so it is needed there too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Polynomial {
    /// The basis of `coefficients`.
    #[serde(default, skip_serializing_if = "is_power")]
    pub basis: Basis,
    /// Coefficients, lowest degree first.
    pub coefficients: Vec<f64>,
    /// `[lo, hi]`, lo < hi: where the inputs are expected to lie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<[f64; 2]>,
}

fn is_power(basis: &Basis) -> bool {
    *basis == Basis::Power
}

impl Polynomial {
    /// `x²`.
    pub fn square() -> Self {
        Self::power(vec![0.0, 0.0, 1.0])
    }

    /// `c0 + c1 x + …`, valid for any input.
    pub fn power(coefficients: Vec<f64>) -> Self {
        Self { basis: Basis::Power, coefficients, interval: None }
    }

    /// `Σ c_k T_k(t)` on `interval` (see [`Basis::Chebyshev`]).
    pub fn chebyshev(coefficients: Vec<f64>, interval: [f64; 2]) -> Self {
        Self { basis: Basis::Chebyshev, coefficients, interval: Some(interval) }
    }

    /// The degree: the highest power (or Chebyshev index) with a non-zero coefficient; 0 for a
    /// constant.
    pub fn degree(&self) -> usize {
        self.coefficients.iter().rposition(|c| *c != 0.0).unwrap_or(0)
    }

    /// The value at `x`: Horner's rule in the power basis, Clenshaw's in the Chebyshev basis.
    pub fn eval(&self, x: f64) -> f64 {
        match (self.basis, self.interval) {
            (Basis::Chebyshev, Some(interval)) => clenshaw(&self.coefficients, to_unit(x, interval)),
            _ => self.coefficients.iter().rev().fold(0.0, |acc, c| acc * x + c),
        }
    }

    /// Why the polynomial cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.coefficients.is_empty() {
            return Err("polynomial has no coefficients".into());
        }
        if self.coefficients.iter().any(|c| !c.is_finite()) {
            return Err("polynomial has a coefficient that is not finite".into());
        }
        if self.degree() > MAX_DEGREE {
            return Err(format!("polynomial of degree {} (at most {MAX_DEGREE})", self.degree()));
        }
        match (self.basis, self.interval) {
            (Basis::Chebyshev, None) => Err("a Chebyshev polynomial needs its interval [lo, hi]".into()),
            (_, Some([lo, hi])) if !(lo.is_finite() && hi.is_finite() && lo < hi) => {
                Err(format!("interval [{lo}, {hi}] is not finite with lo < hi"))
            }
            _ => Ok(()),
        }
    }

    /// The same polynomial in the power basis (exact up to rounding; for low degrees, where
    /// the power basis is well conditioned).
    pub fn to_power(&self) -> Polynomial {
        let coefficients = match (self.basis, self.interval) {
            (Basis::Chebyshev, Some([lo, hi])) => {
                // Σ c_k T_k(t) with t = a x + b.
                let (a, b) = (2.0 / (hi - lo), -(lo + hi) / (hi - lo));
                let t = [b, a];
                let (mut previous, mut current) = (vec![1.0], t.to_vec());
                let mut sum = scaled(&previous, self.coefficients.first().copied().unwrap_or(0.0));
                for (k, &c) in self.coefficients.iter().enumerate().skip(1) {
                    if k > 1 {
                        // T_k = 2 t T_{k−1} − T_{k−2}.
                        let next = sub(&scaled(&mul(&t, &current), 2.0), &previous);
                        previous = std::mem::replace(&mut current, next);
                    }
                    sum = add(&sum, &scaled(&current, c));
                }
                sum
            }
            _ => self.coefficients.clone(),
        };
        Polynomial { basis: Basis::Power, coefficients: trimmed(coefficients), interval: self.interval }
    }

    /// The same polynomial in the Chebyshev basis on `interval`.
    ///
    /// By interpolation at `degree + 1` Chebyshev nodes, which is exact for a polynomial of
    /// that degree and well conditioned at any degree. (The detour through the power basis it
    /// replaces turned a degree-63 ReLU interpolant into coefficients of 10^6 that cancel, and
    /// its encrypted evaluation into noise.)
    pub fn to_chebyshev(&self, interval: [f64; 2]) -> Polynomial {
        if self.basis == Basis::Chebyshev && self.interval == Some(interval) {
            return self.clone();
        }
        Polynomial::interpolate(|x| self.eval(x), self.degree(), interval)
    }

    /// `Σ c_k T_k` of degree `degree` interpolating `f` at the Chebyshev nodes of the first
    /// kind of `interval` (a discrete cosine transform of the samples).
    pub fn interpolate(f: impl Fn(f64) -> f64, degree: usize, interval: [f64; 2]) -> Polynomial {
        let [lo, hi] = interval;
        let n = degree + 1;
        let angle = |j: usize| std::f64::consts::PI * (j as f64 + 0.5) / n as f64;
        let samples: Vec<f64> = (0..n).map(|j| f((angle(j).cos() * (hi - lo) + lo + hi) / 2.0)).collect();
        let coefficients = (0..n)
            .map(|k| {
                let sum: f64 = samples.iter().enumerate().map(|(j, y)| y * (k as f64 * angle(j)).cos()).sum();
                sum * if k == 0 { 1.0 } else { 2.0 } / n as f64
            })
            .collect();
        Polynomial::chebyshev(coefficients, interval)
    }
}

impl std::fmt::Display for Polynomial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let (Basis::Chebyshev, Some([lo, hi])) = (self.basis, self.interval) {
            return write!(f, "chebyshev degree {} on [{lo:.3}, {hi:.3}]", self.degree());
        }
        let mut terms = Vec::new();
        for (power, c) in self.coefficients.iter().enumerate().rev() {
            if *c == 0.0 {
                continue;
            }
            terms.push(match power {
                0 => format!("{c:.4}"),
                1 => format!("{c:.4}*x"),
                _ => format!("{c:.4}*x^{power}"),
            });
        }
        if terms.is_empty() { write!(f, "0") } else { write!(f, "{}", terms.join(" + ")) }
    }
}

/// `x` mapped from `[lo, hi]` onto [−1, 1].
pub(crate) fn to_unit(x: f64, [lo, hi]: [f64; 2]) -> f64 {
    (2.0 * x - lo - hi) / (hi - lo)
}

/// Σ c_k T_k(t) by Clenshaw's recurrence.
fn clenshaw(coefficients: &[f64], t: f64) -> f64 {
    let (mut b1, mut b2) = (0.0, 0.0);
    for &c in coefficients.iter().skip(1).rev() {
        (b1, b2) = (2.0 * t * b1 - b2 + c, b1);
    }
    t * b1 - b2 + coefficients.first().copied().unwrap_or(0.0)
}

fn trimmed(mut p: Vec<f64>) -> Vec<f64> {
    while p.len() > 1 && p.last() == Some(&0.0) {
        p.pop();
    }
    p
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; a.len().max(b.len())];
    for (i, v) in a.iter().enumerate() {
        out[i] += v;
    }
    for (i, v) in b.iter().enumerate() {
        out[i] += v;
    }
    out
}

fn sub(a: &[f64], b: &[f64]) -> Vec<f64> {
    add(a, &scaled(b, -1.0))
}

fn scaled(a: &[f64], k: f64) -> Vec<f64> {
    a.iter().map(|v| v * k).collect()
}

fn mul(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; a.len() + b.len() - 1];
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            out[i + j] += x * y;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn degree_and_eval_in_the_power_basis() {
        let p = Polynomial::power(vec![1.0, -2.0, 0.5, 0.0]);
        assert_eq!(p.degree(), 2);
        assert_eq!(p.eval(2.0), 1.0 - 4.0 + 2.0);
    }

    #[test]
    fn chebyshev_evaluation_is_on_the_interval() {
        // T_2(t) = 2t² − 1 on [0, 4]: x = 3 is t = 0.5, T_2 = −0.5.
        let p = Polynomial::chebyshev(vec![0.0, 0.0, 1.0], [0.0, 4.0]);
        assert!((p.eval(3.0) + 0.5).abs() < 1e-12);
        assert!(p.check().is_ok());
        assert!(Polynomial { interval: None, ..p.clone() }.check().is_err());
        assert!(Polynomial { interval: Some([1.0, 1.0]), ..p }.check().is_err());
    }

    proptest! {
        /// Degree 63 on its own interval comes back unchanged, and on a narrower one keeps its
        /// values with coefficients of the function's size. (A wider one is ill conditioned by
        /// nature at this degree: T_63 grows like 10^36 at twice its interval.)
        #[test]
        fn high_degree_chebyshev_polynomials_move_between_intervals_intact(
            coefficients in prop::collection::vec(-1.0f64..1.0, 64),
            lo in -8.0f64..-1.0,
            hi in 1.0f64..8.0,
            at in 0.0f64..1.0,
        ) {
            // Decaying as an interpolant's do (|c_k| ≤ 1/(k + 1)²).
            let coefficients: Vec<f64> =
                coefficients.iter().enumerate().map(|(k, c)| c / ((k + 1) * (k + 1)) as f64).collect();
            let p = Polynomial::chebyshev(coefficients, [lo, hi]);
            prop_assert_eq!(&p.to_chebyshev([lo, hi]), &p);
            let quarter = (hi - lo) / 4.0;
            let (lo, hi) = (lo + quarter, hi - quarter);
            let narrower = p.to_chebyshev([lo, hi]);
            let x = lo + at * (hi - lo);
            prop_assert!((narrower.eval(x) - p.eval(x)).abs() < 1e-9, "{} vs {}", narrower.eval(x), p.eval(x));
            prop_assert!(narrower.coefficients.iter().map(|c| c.abs()).sum::<f64>() < 10.0);
        }

        #[test]
        fn basis_conversions_keep_the_values(
            coefficients in prop::collection::vec(-1.0f64..1.0, 1..12),
            lo in -4.0f64..0.0,
            width in 0.5f64..6.0,
            at in 0.0f64..1.0,
        ) {
            let interval = [lo, lo + width];
            let x = lo + at * width;
            let cheb = Polynomial::chebyshev(coefficients, interval);
            let power = cheb.to_power();
            let back = power.to_chebyshev(interval);
            let scale = cheb.coefficients.iter().map(|c| c.abs()).sum::<f64>().max(1.0);
            prop_assert!((cheb.eval(x) - power.eval(x)).abs() < 1e-6 * scale * (1.0 + x.abs()).powi(12));
            prop_assert!((cheb.eval(x) - back.eval(x)).abs() < 1e-6 * scale * (1.0 + x.abs()).powi(12));
        }
    }
}
