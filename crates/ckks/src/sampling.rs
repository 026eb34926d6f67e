//! Randomness: ternary secrets, discrete Gaussian errors, and uniform polynomials expanded from
//! 32-byte seeds (so a seeded ciphertext or key can be stored as its seed).

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use zeroize::Zeroizing;

use crate::context::Context;
use crate::poly::RnsPoly;

/// Standard deviation of the error distribution.
pub(crate) const SIGMA: f64 = 3.2;
/// Errors are cut at 6σ.
const TAIL: f64 = 6.0 * SIGMA;

/// A CSPRNG seeded from the operating system.
pub(crate) fn os_rng() -> ChaCha20Rng {
    ChaCha20Rng::from_os_rng()
}

/// A fresh 32-byte seed from the operating system.
pub(crate) fn fresh_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    os_rng().fill_bytes(&mut seed);
    seed
}

/// Uniform ternary coefficients in {-1, 0, 1}: a secret key, or an encryption's ephemeral
/// secret; zeroized when dropped.
pub(crate) fn ternary(rng: &mut impl RngCore, n: usize) -> Zeroizing<Vec<i64>> {
    Zeroizing::new((0..n).map(|_| rng.random_range(0..3i64) - 1).collect())
}

/// Rounded Gaussian coefficients with σ = 3.2, cut at 6σ: an error term, which with its
/// ciphertext or key would give away the secret; zeroized when dropped. Allocated once at its
/// full size, so no reallocation leaves a copy behind.
pub(crate) fn gaussian(rng: &mut impl RngCore, n: usize) -> Zeroizing<Vec<i64>> {
    let mut out = Zeroizing::new(Vec::with_capacity(n));
    while out.len() < n {
        // Box–Muller: two independent normal samples per pair of uniforms.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt() * SIGMA;
        let angle = 2.0 * std::f64::consts::PI * u2;
        for sample in [radius * angle.cos(), radius * angle.sin()] {
            if sample.abs() <= TAIL && out.len() < n {
                out.push(sample.round() as i64);
            }
        }
    }
    out
}

/// A uniformly random polynomial over the given basis, in evaluation form (uniform in either
/// form), expanded deterministically from `seed`.
pub(crate) fn uniform_from_seed(context: &Context, seed: &[u8; 32], basis: &[usize]) -> RnsPoly {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    let mut poly = RnsPoly::zero(context.n, basis.len());
    for (row, &index) in poly.limbs_mut().zip(basis) {
        let q = context.moduli[index].value;
        let mask = u64::MAX >> q.leading_zeros();
        for slot in row.iter_mut() {
            *slot = loop {
                let candidate = rng.next_u64() & mask;
                if candidate < q {
                    break candidate;
                }
            };
        }
    }
    poly
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_has_the_right_spread_and_tail() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let samples = gaussian(&mut rng, 200_000);
        let mean = samples.iter().sum::<i64>() as f64 / samples.len() as f64;
        let var = samples.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / samples.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - SIGMA).abs() < 0.1, "σ {}", var.sqrt());
        assert!(samples.iter().all(|x| (x.abs() as f64) <= TAIL));
    }

    #[test]
    fn ternary_is_balanced() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let samples = ternary(&mut rng, 30_000);
        for v in [-1, 0, 1] {
            let count = samples.iter().filter(|&&x| x == v).count();
            assert!((9_000..11_000).contains(&count), "{v}: {count}");
        }
    }
}
