//! The negacyclic NTT, the only module that touches `tfhe-ntt`.
//!
//! `tfhe-ntt` is BSD-3-Clause-Clear licensed, which grants no patent rights; keeping every use
//! behind this small interface means it can be swapped for another NTT without touching the
//! scheme. Its forward transform leaves values in bit-reversed order: slot `j` holds the
//! evaluation at ψ^(2·bitrev(j)+1), which [`galois_permutation`] relies on.

use tfhe_ntt::prime64::Plan;

/// An NTT for one prime modulus and ring degree.
#[derive(Debug, Clone)]
pub(crate) struct Ntt {
    plan: Plan,
}

impl Ntt {
    /// `None` when the prime has no 2N-th root of unity (it is not ≡ 1 mod 2N).
    pub(crate) fn new(n: usize, modulus: u64) -> Option<Self> {
        Plan::try_new(n, modulus).map(|plan| Self { plan })
    }

    /// Coefficients (reduced) to evaluations, in place.
    #[inline]
    pub(crate) fn forward(&self, values: &mut [u64]) {
        self.plan.fwd(values);
    }

    /// Evaluations to coefficients, in place, normalised (the exact inverse of `forward`).
    #[inline]
    pub(crate) fn backward(&self, values: &mut [u64]) {
        self.plan.inv(values);
        self.plan.normalize(values);
    }

    /// acc += a·b pointwise (all reduced).
    #[inline]
    pub(crate) fn mul_accumulate(&self, acc: &mut [u64], a: &[u64], b: &[u64]) {
        self.plan.mul_accumulate(acc, a, b);
    }

    /// out = a·b pointwise.
    #[inline]
    pub(crate) fn mul_into(&self, out: &mut [u64], a: &[u64], b: &[u64]) {
        out.fill(0);
        self.plan.mul_accumulate(out, a, b);
    }
}

/// For the automorphism X → X^g (g odd) applied to a polynomial in evaluation form:
/// `out[j] = in[perm[j]]`.
pub(crate) fn galois_permutation(log_n: u32, galois_element: u64) -> Vec<u32> {
    let n = 1usize << log_n;
    let two_n = 2 * n as u64;
    let bitrev = |x: usize| (x.reverse_bits() >> (usize::BITS - log_n)) & (n - 1);
    (0..n)
        .map(|j| {
            let exponent = 2 * bitrev(j) as u64 + 1;
            let image = (exponent * (galois_element % two_n)) % two_n;
            bitrev(((image - 1) / 2) as usize) as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::Modulus;
    use proptest::prelude::*;

    const Q: u64 = 1099510054913; // 40-bit, ≡ 1 mod 2^15

    fn negacyclic_schoolbook(m: &Modulus, a: &[u64], b: &[u64]) -> Vec<u64> {
        let n = a.len();
        let mut out = vec![0u64; n];
        for (i, &x) in a.iter().enumerate() {
            for (j, &y) in b.iter().enumerate() {
                let p = m.mul(x, y);
                let k = i + j;
                if k < n { out[k] = m.add(out[k], p) } else { out[k - n] = m.sub(out[k - n], p) }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn ntt_product_is_negacyclic_convolution(seed in any::<u64>(), log_n in 4u32..8) {
            let n = 1 << log_n;
            let m = Modulus::new(Q);
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; m.reduce(state) };
            let a: Vec<u64> = (0..n).map(|_| next()).collect();
            let b: Vec<u64> = (0..n).map(|_| next()).collect();
            let ntt = Ntt::new(n, Q).unwrap();
            let (mut fa, mut fb, mut prod) = (a.clone(), b.clone(), vec![0; n]);
            ntt.forward(&mut fa);
            ntt.forward(&mut fb);
            ntt.mul_into(&mut prod, &fa, &fb);
            ntt.backward(&mut prod);
            prop_assert_eq!(prod, negacyclic_schoolbook(&m, &a, &b));
            ntt.backward(&mut fa);
            prop_assert_eq!(fa, a);
        }

        #[test]
        fn permutation_in_evaluation_form_is_the_automorphism(seed in any::<u64>(), g_index in 0u64..64) {
            let log_n = 6;
            let n = 1usize << log_n;
            let g = (2 * g_index + 1) % (2 * n as u64);
            let m = Modulus::new(Q);
            let mut state = seed | 1;
            let a: Vec<u64> = (0..n).map(|_| { state ^= state << 13; state ^= state >> 7; state ^= state << 17; m.reduce(state) }).collect();
            // a(X^g) by coefficients: X^i → ±X^(i·g mod n).
            let mut expected = vec![0u64; n];
            for (i, &c) in a.iter().enumerate() {
                let k = (i as u64 * g) % (2 * n as u64);
                if k < n as u64 { expected[k as usize] = c } else { expected[k as usize - n] = m.neg(c) }
            }
            let ntt = Ntt::new(n, Q).unwrap();
            let mut fa = a.clone();
            ntt.forward(&mut fa);
            let perm = galois_permutation(log_n, g);
            let mut permuted: Vec<u64> = perm.iter().map(|&k| fa[k as usize]).collect();
            ntt.backward(&mut permuted);
            prop_assert_eq!(permuted, expected);
        }
    }
}
