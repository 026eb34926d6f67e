//! The cost model both packings plan with, in one unit so that [`crate::choose_packing`] can
//! compare a throughput batch with single latency images.
//!
//! The unit is one multiply-accumulate of one coefficient in the register-blocked linear kernel
//! (the throughput packing's convolutions); plan costs are per coefficient and
//! `estimated_cost` multiplies by N. The other operations are priced against it from what they
//! measure on the 2-core AVX-512 machine: an NTT of one row about 2.3 ns per coefficient
//! against 0.1 ns, and an element-wise multiply-add (a plaintext diagonal times a ciphertext, a
//! key's inner product, a square) about 5.5 times cheaper than an NTT: it streams its operands
//! from memory instead of reusing them from registers.

use blindfold_ckks::Parameters;

/// One NTT of one row, per coefficient. At 10 (the old kernel's ratio) mnist-cryptonets settled
/// its 845 squares before the dense layer; at 20 it runs the dense layer on them 3-part and
/// relinearizes its 100 outputs: 1.90 → 1.60 s per batch.
const NTT: f64 = 20.0;

/// One element-wise multiply-add of one coefficient: calibrated so that a key switch at
/// N = 2^14 with 8 primes and one-prime digits costs about 40 plaintext-diagonal products, as
/// measured.
const ELEMENTWISE: f64 = NTT / 5.5;

/// Prices of the operations at one level of one parameter set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Costs {
    level: usize,
    digits: usize,
    special: usize,
}

impl Costs {
    pub(crate) fn new(params: &Parameters, level: usize) -> Self {
        Self { level, digits: params.digits_at(level).len(), special: params.special_moduli().len() }
    }

    fn limbs(&self) -> f64 {
        (self.level + 1) as f64
    }

    /// Rows of the extended basis a key switch works in: the level's primes and P.
    fn rows(&self) -> usize {
        self.level + 1 + self.special
    }

    /// Decomposing a polynomial for key switching: per digit, an NTT for every prime of the
    /// extended basis (the inverse NTTs of the level's primes are about as many again, counted
    /// in the same term).
    pub(crate) fn decomposition(&self) -> f64 {
        NTT * (self.digits * self.rows()) as f64
    }

    /// A rotation whose decomposition is shared (hoisted): the inner product with the key (2
    /// polynomials, every digit, every row) and the mod-down back through P (two polynomials).
    pub(crate) fn hoisted_rotation(&self) -> f64 {
        NTT * (2 * self.rows()) as f64 + ELEMENTWISE * (2 * self.digits * self.rows()) as f64
    }

    /// A key switch on its own: a rotation, or relinearizing one 3-part ciphertext.
    pub(crate) fn key_switch(&self) -> f64 {
        self.decomposition() + self.hoisted_rotation()
    }

    /// One plaintext diagonal times a 2-part ciphertext, accumulated (element-wise).
    pub(crate) fn product(&self) -> f64 {
        ELEMENTWISE * 2.0 * self.limbs()
    }

    /// (x + β)² of a 2-part ciphertext, into 3 parts.
    pub(crate) fn square(&self) -> f64 {
        ELEMENTWISE * 3.0 * self.limbs()
    }

    /// Dropping the top prime of a `parts`-part ciphertext: an inverse NTT of the dropped row and
    /// a forward NTT for each remaining one, per part.
    pub(crate) fn rescale(&self, parts: usize) -> f64 {
        NTT * parts as f64 * self.limbs()
    }

    /// One weight of the blocked linear kernel applied to a `parts`-part ciphertext.
    pub(crate) fn multiply_add(&self, parts: usize) -> f64 {
        parts as f64 * self.limbs()
    }
}
