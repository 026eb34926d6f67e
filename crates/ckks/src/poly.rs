//! RNS polynomials: one row of N residues per prime, kept in evaluation (NTT) form.

use zeroize::Zeroize;

/// A polynomial in RNS form: `limbs` rows of `n` residues, row i modulo the i-th prime of the
/// basis it lives in (q_0 … q_ℓ, optionally followed by the special prime P).
#[derive(Clone, PartialEq, Eq, Zeroize)]
pub(crate) struct RnsPoly {
    pub(crate) data: Vec<u64>,
    pub(crate) n: usize,
}

impl std::fmt::Debug for RnsPoly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print residues: they may be secret key material.
        write!(f, "RnsPoly {{ n: {}, limbs: {} }}", self.n, self.limbs())
    }
}

impl RnsPoly {
    pub(crate) fn zero(n: usize, limbs: usize) -> Self {
        Self { data: vec![0; n * limbs], n }
    }

    pub(crate) fn limbs(&self) -> usize {
        self.data.len() / self.n
    }

    pub(crate) fn limb(&self, i: usize) -> &[u64] {
        &self.data[i * self.n..(i + 1) * self.n]
    }

    pub(crate) fn limb_mut(&mut self, i: usize) -> &mut [u64] {
        &mut self.data[i * self.n..(i + 1) * self.n]
    }

    pub(crate) fn limbs_mut(&mut self) -> std::slice::ChunksExactMut<'_, u64> {
        self.data.chunks_exact_mut(self.n)
    }

    pub(crate) fn limbs_iter(&self) -> std::slice::ChunksExact<'_, u64> {
        self.data.chunks_exact(self.n)
    }

    /// Keeps the first `limbs` rows.
    pub(crate) fn truncate(&mut self, limbs: usize) {
        self.data.truncate(limbs * self.n);
    }

    /// A copy of the first `limbs` rows.
    pub(crate) fn prefix(&self, limbs: usize) -> Self {
        Self { data: self.data[..limbs * self.n].to_vec(), n: self.n }
    }
}
