//! Everything precomputed for one parameter set: NTT plans, reduction constants, rescaling
//! and key-switching constants, Galois permutations, encoder roots.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::arith::{Modulus, ShoupConst};
use crate::ntt::{Ntt, galois_permutation};
use crate::poly::RnsPoly;
use crate::{Error, Parameters, Result};

/// A complex number for the encoder's FFT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Complex {
    pub(crate) re: f64,
    pub(crate) im: f64,
}

impl Complex {
    pub(crate) fn mul(self, other: Complex) -> Complex {
        Complex { re: self.re * other.re - self.im * other.im, im: self.re * other.im + self.im * other.re }
    }
    pub(crate) fn add(self, other: Complex) -> Complex {
        Complex { re: self.re + other.re, im: self.im + other.im }
    }
    pub(crate) fn sub(self, other: Complex) -> Complex {
        Complex { re: self.re - other.re, im: self.im - other.im }
    }
}

/// A parameter set with everything the operations precompute. Cheap to share (`Arc`),
/// `Send + Sync`; every key, plaintext and ciphertext is used with the context it was made with.
#[derive(Debug)]
pub struct Context {
    pub(crate) params: Parameters,
    pub(crate) n: usize,
    /// Ciphertext primes q_0 … q_L, then the special primes p_0 … p_{k-1} (their product is P).
    pub(crate) moduli: Vec<Modulus>,
    pub(crate) ntt: Vec<Ntt>,
    /// rescale_inv[ℓ][i] = q_ℓ^-1 mod q_i, for i < ℓ.
    pub(crate) rescale_inv: Vec<Vec<ShoupConst>>,
    /// P^-1 mod q_i.
    pub(crate) special_inv: Vec<ShoupConst>,
    /// P mod q_i.
    pub(crate) special_mod_q: Vec<u64>,
    /// Out of the special primes into every ciphertext prime (mod-down with k > 1).
    pub(crate) from_special: Conversion,
    /// into_digits[ℓ][j]: out of digit j's primes at level ℓ into every other prime.
    pub(crate) into_digits: Vec<Vec<Conversion>>,
    /// Garner: garner_prefix[j][k] = (q_0 ⋯ q_{k-1}) mod q_j for k < j, and garner_inv[j] = (q_0 ⋯ q_{j-1})^-1 mod q_j.
    pub(crate) garner_prefix: Vec<Vec<u64>>,
    pub(crate) garner_inv: Vec<u64>,
    /// 5^j mod 2N, the slot order.
    pub(crate) rot_group: Vec<usize>,
    /// exp(2πi k / 2N) for k in 0..=2N.
    pub(crate) roots: Vec<Complex>,
    galois: RwLock<HashMap<u64, Arc<[u32]>>>,
}

impl Context {
    /// Precomputes everything for `params`.
    pub fn new(params: Parameters) -> Result<Arc<Self>> {
        let n = params.n();
        let primes: Vec<u64> = params.moduli().iter().chain(params.special_moduli()).copied().collect();
        let moduli: Vec<Modulus> = primes.iter().map(|&q| Modulus::new(q)).collect();
        let ntt = primes
            .iter()
            .map(|&q| {
                Ntt::new(n, q).ok_or(Error::InvalidParameter { name: "primes", reason: format!("no NTT for {q}") })
            })
            .collect::<Result<Vec<_>>>()?;
        let levels = params.moduli().len();
        let rescale_inv = (0..levels)
            .map(|l| (0..l).map(|i| moduli[i].shoup(moduli[i].inv(moduli[i].reduce(primes[l])))).collect())
            .collect();
        let specials: Vec<usize> = (levels..primes.len()).collect();
        let special_mod_q: Vec<u64> = (0..levels)
            .map(|i| specials.iter().fold(1u64, |acc, &p| moduli[i].mul(acc, moduli[i].reduce(primes[p]))))
            .collect();
        let special_inv = (0..levels).map(|i| moduli[i].shoup(moduli[i].inv(special_mod_q[i]))).collect();
        let from_special = Conversion::new(&moduli, &specials);
        let into_digits = (0..levels)
            .map(|level| {
                params
                    .digits_at(level)
                    .into_iter()
                    .map(|digit| Conversion::new(&moduli, &digit.collect::<Vec<_>>()))
                    .collect()
            })
            .collect();
        let garner_prefix: Vec<Vec<u64>> = (0..levels)
            .map(|j| {
                let mut prefix = Vec::with_capacity(j);
                let mut acc = 1u64;
                for &q in primes.iter().take(j) {
                    prefix.push(acc);
                    acc = moduli[j].mul(acc, moduli[j].reduce(q));
                }
                prefix
            })
            .collect();
        let garner_inv = (0..levels)
            .map(|j| {
                let product = primes.iter().take(j).fold(1u64, |acc, &q| moduli[j].mul(acc, moduli[j].reduce(q)));
                moduli[j].inv(product)
            })
            .collect();
        let two_n = 2 * n;
        let mut rot_group = Vec::with_capacity(n / 2);
        let mut power = 1usize;
        for _ in 0..n / 2 {
            rot_group.push(power);
            power = power * 5 % two_n;
        }
        let roots = (0..=two_n)
            .map(|k| {
                let angle = 2.0 * std::f64::consts::PI * k as f64 / two_n as f64;
                Complex { re: angle.cos(), im: angle.sin() }
            })
            .collect();
        Ok(Arc::new(Self {
            params,
            n,
            moduli,
            ntt,
            rescale_inv,
            special_inv,
            special_mod_q,
            from_special,
            into_digits,
            garner_prefix,
            garner_inv,
            rot_group,
            roots,
            galois: RwLock::new(HashMap::new()),
        }))
    }

    /// The parameter set.
    pub fn params(&self) -> &Parameters {
        &self.params
    }

    /// The highest level.
    pub fn max_level(&self) -> usize {
        self.params.max_level()
    }

    /// Number of slots, N/2.
    pub fn slots(&self) -> usize {
        self.n / 2
    }

    /// Index of the first special prime in `moduli` / `ntt` (they follow q_L).
    pub(crate) fn special_index(&self) -> usize {
        self.params.moduli().len()
    }

    /// Indices of the special primes.
    pub(crate) fn specials(&self) -> std::ops::Range<usize> {
        self.special_index()..self.moduli.len()
    }

    /// The Galois element for a left rotation by `step` slots (negative: right).
    pub fn galois_element(&self, step: i64) -> u64 {
        let slots = self.slots() as i64;
        let (mut exponent, two_n) = (step.rem_euclid(slots) as u64, 2 * self.n as u64);
        let (mut base, mut g) = (5u64, 1u64);
        while exponent > 0 {
            if exponent & 1 == 1 {
                g = g * base % two_n;
            }
            base = base * base % two_n;
            exponent >>= 1;
        }
        g
    }

    /// g⁻¹ mod 2N (the odd residues mod 2N form a group of order N).
    pub(crate) fn galois_inverse(&self, g: u64) -> u64 {
        let two_n = 2 * self.n as u64;
        let (mut base, mut exponent, mut result) = (g % two_n, self.n as u64 - 1, 1u64);
        while exponent > 0 {
            if exponent & 1 == 1 {
                result = result * base % two_n;
            }
            base = base * base % two_n;
            exponent >>= 1;
        }
        result
    }

    /// The Galois element of complex conjugation.
    pub fn conjugation_element(&self) -> u64 {
        2 * self.n as u64 - 1
    }

    /// The evaluation-form permutation of X → X^g, cached.
    pub(crate) fn permutation(&self, galois_element: u64) -> Arc<[u32]> {
        if let Some(found) = self.galois.read().ok().and_then(|cache| cache.get(&galois_element).cloned()) {
            return found;
        }
        let perm: Arc<[u32]> = galois_permutation(self.params.log_n(), galois_element).into();
        if let Ok(mut cache) = self.galois.write() {
            cache.insert(galois_element, perm.clone());
        }
        perm
    }

    /// Checks that `level` is in the chain.
    pub(crate) fn check_level(&self, level: usize) -> Result<()> {
        if level > self.max_level() {
            return Err(Error::InvalidLevel { level, min: 0, max: self.max_level() });
        }
        Ok(())
    }

    /// Small signed coefficients to evaluation form over the first `limbs` ciphertext primes,
    /// plus the special prime when `special` is set.
    pub(crate) fn poly_from_signed(&self, coefficients: &[i64], limbs: usize, special: bool) -> RnsPoly {
        let indices = self.basis(limbs, special);
        let mut poly = RnsPoly::zero(self.n, indices.len());
        for (row, &index) in poly.limbs_mut().zip(&indices) {
            let modulus = &self.moduli[index];
            let q = modulus.value as i64;
            for (slot, &c) in row.iter_mut().zip(coefficients) {
                // Secrets and errors are tiny: |c| < q, so one addition reduces them.
                *slot = if c.unsigned_abs() < modulus.value {
                    (c + if c < 0 { q } else { 0 }) as u64
                } else {
                    modulus.reduce_i64(c)
                };
            }
            self.ntt[index].forward(row);
        }
        poly
    }

    /// Indices into `moduli` of a basis: q_0 … q_{limbs-1}, then the special primes if
    /// `special`.
    pub(crate) fn basis(&self, limbs: usize, special: bool) -> Vec<usize> {
        let mut indices: Vec<usize> = (0..limbs).collect();
        if special {
            indices.extend(self.specials());
        }
        indices
    }
}

/// Base conversion out of a set of source primes S = Π s_i. A value x given by its residues
/// x_i has y_i = [x_i · (S/s_i)^-1]_{s_i}, and Σ_i y_i · (S/s_i) = [x]_S + u·S for an integer
/// u in [0, number of sources): the fast (approximate) conversion computes that sum mod t in
/// any other prime t. With the overflow estimate v = round(Σ_i y_i / s_i) (in f64, see
/// [`Conversion::reciprocals`]), Σ_i y_i · (S/s_i) − v·S is exactly the centred representative
/// of x mod S, in (−S/2, S/2] — up to a tie within about 10^-14·S of ±S/2, where it may be the
/// other one of the two.
#[derive(Debug)]
pub(crate) struct Conversion {
    /// Indices of the source primes.
    pub(crate) sources: Vec<usize>,
    /// (S/s_i)^-1 mod s_i, per source.
    pub(crate) inverse: Vec<ShoupConst>,
    /// 1/s_i as f64, per source: Σ_i y_i / s_i = u + [x]_S / S, whose rounding is the overflow
    /// to remove for the centred representative.
    pub(crate) reciprocals: Vec<f64>,
    /// factors[t] = [(S/s_0) mod t, …, (S/s_{last}) mod t, (−S) mod t] for every prime index t:
    /// the weights of the sources, then of the overflow estimate v.
    pub(crate) factors: Vec<Vec<u64>>,
}

impl Conversion {
    fn new(moduli: &[Modulus], sources: &[usize]) -> Self {
        // (S/s_i) mod m, as the product of the other sources.
        let hat = |i: usize, m: &Modulus| {
            sources.iter().filter(|&&j| j != i).fold(1u64, |acc, &j| m.mul(acc, m.reduce(moduli[j].value)))
        };
        let inverse = sources
            .iter()
            .map(|&i| {
                let m = &moduli[i];
                m.shoup(m.inv(hat(i, m)))
            })
            .collect();
        let reciprocals = sources.iter().map(|&i| 1.0 / moduli[i].value as f64).collect();
        let factors = moduli
            .iter()
            .map(|m| {
                let product = sources.iter().fold(1u64, |acc, &j| m.mul(acc, m.reduce(moduli[j].value)));
                sources.iter().map(|&i| hat(i, m)).chain([m.neg(product)]).collect()
            })
            .collect();
        Self { sources: sources.to_vec(), inverse, reciprocals, factors }
    }
}
