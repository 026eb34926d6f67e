//! Keys: the secret key (zeroized, never printed), the public key, and key-switching keys for
//! relinearization and rotations (hybrid key switching with one special prime P).

use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Result;
use crate::context::Context;
use crate::params::Fingerprint;
use crate::poly::RnsPoly;
use crate::sampling::{fresh_seed, gaussian, os_rng, ternary, uniform_from_seed};

/// The secret key s: uniform ternary. Only the data owner ever holds it.
///
/// Zeroized on drop; `Debug` prints nothing of it; it has its own serialized format that no
/// evaluation-key loader accepts.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey {
    /// The ternary coefficients.
    pub(crate) coefficients: Vec<i8>,
    /// s in evaluation form over every prime, special included.
    pub(crate) poly: RnsPoly,
    #[zeroize(skip)]
    pub(crate) fingerprint: Fingerprint,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(<redacted>, params {})", self.fingerprint.short())
    }
}

impl SecretKey {
    /// Samples a fresh secret key.
    pub fn generate(context: &Context) -> Self {
        let mut rng = os_rng();
        let coefficients: Vec<i8> = ternary(&mut rng, context.n).into_iter().map(|c| c as i8).collect();
        Self::from_coefficients(context, coefficients)
    }

    pub(crate) fn from_coefficients(context: &Context, coefficients: Vec<i8>) -> Self {
        let wide: Vec<i64> = coefficients.iter().map(|&c| c as i64).collect();
        let poly = context.poly_from_signed(&wide, context.max_level() + 1, true);
        Self { coefficients, poly, fingerprint: context.params.fingerprint() }
    }

    /// The parameter fingerprint it was made for.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// The public key (b, a) = (-a·s + e, a) over q_0 … q_L.
#[derive(Clone, Debug, PartialEq)]
pub struct PublicKey {
    pub(crate) b: RnsPoly,
    pub(crate) a: RnsPoly,
    pub(crate) fingerprint: Fingerprint,
}

/// A key that switches a ciphertext component from a key s' to s: for each digit j (one per
/// ciphertext prime), (b_j, a_j) = (-a_j·s + e_j + P·[s']_{q_j}·δ_j, a_j) over q_0 … q_L, P.
/// The a_j are expanded from one 32-byte seed, so a serialized key stores only the b_j.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySwitchKey {
    pub(crate) seed: [u8; 32],
    pub(crate) b: Vec<RnsPoly>,
    pub(crate) a: Vec<RnsPoly>,
}

/// The relinearization key: switches from s² to s.
#[derive(Clone, Debug, PartialEq)]
pub struct RelinKey {
    pub(crate) key: KeySwitchKey,
    pub(crate) fingerprint: Fingerprint,
}

/// Galois keys for a chosen set of rotations (and optionally conjugation), by Galois element.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GaloisKeys {
    pub(crate) keys: BTreeMap<u64, KeySwitchKey>,
    pub(crate) fingerprint: Option<Fingerprint>,
}

impl GaloisKeys {
    /// The Galois elements covered.
    pub fn elements(&self) -> Vec<u64> {
        self.keys.keys().copied().collect()
    }
    /// Whether the key for Galois element `g` is present.
    pub fn contains(&self, g: u64) -> bool {
        self.keys.contains_key(&g)
    }
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Makes every key from one secret key.
#[derive(Debug)]
pub struct KeyGenerator {
    context: Arc<Context>,
    secret: SecretKey,
}

impl KeyGenerator {
    /// A generator with a fresh secret key.
    pub fn new(context: &Arc<Context>) -> Self {
        Self { secret: SecretKey::generate(context), context: context.clone() }
    }

    /// A generator for an existing secret key.
    pub fn from_secret(context: &Arc<Context>, secret: SecretKey) -> Result<Self> {
        crate::serialize::check_fingerprint(context, secret.fingerprint)?;
        Ok(Self { context: context.clone(), secret })
    }

    /// The secret key.
    pub fn secret_key(&self) -> &SecretKey {
        &self.secret
    }

    /// A public key for encryption by anyone.
    pub fn public_key(&self) -> PublicKey {
        let ctx = &self.context;
        let limbs = ctx.max_level() + 1;
        let basis = ctx.basis(limbs, false);
        let a = uniform_from_seed(ctx, &fresh_seed(), &basis);
        let mut rng = os_rng();
        let e = ctx.poly_from_signed(&gaussian(&mut rng, ctx.n), limbs, false);
        let mut b = RnsPoly::zero(ctx.n, limbs);
        for (i, &index) in basis.iter().enumerate() {
            let m = &ctx.moduli[index];
            let (s, ai, ei) = (self.secret.poly.limb(i), a.limb(i), e.limb(i));
            for (k, out) in b.limb_mut(i).iter_mut().enumerate() {
                *out = m.sub(ei[k], m.mul(ai[k], s[k]));
            }
        }
        PublicKey { b, a, fingerprint: ctx.params.fingerprint() }
    }

    /// The relinearization key.
    pub fn relin_key(&self) -> RelinKey {
        let ctx = &self.context;
        let mut square = self.secret.poly.clone();
        for (i, row) in square.limbs_mut().enumerate() {
            let m = &ctx.moduli[i];
            for x in row.iter_mut() {
                *x = m.mul(*x, *x);
            }
        }
        let key = self.switch_key(&square, &self.secret.poly);
        square.zeroize();
        RelinKey { key, fingerprint: ctx.params.fingerprint() }
    }

    /// Galois keys for left rotations by `steps` (negative: right) and, if asked, conjugation.
    pub fn galois_keys(&self, steps: &[i64], conjugation: bool) -> GaloisKeys {
        let ctx = &self.context;
        let mut elements: Vec<u64> = steps.iter().map(|&s| ctx.galois_element(s)).filter(|&g| g != 1).collect();
        if conjugation {
            elements.push(ctx.conjugation_element());
        }
        elements.sort_unstable();
        elements.dedup();
        let keys = elements
            .into_iter()
            .map(|g| {
                // The key switches s to σ⁻¹(s) rather than σ(s) to s: the evaluator then
                // key-switches c1 unpermuted and applies σ to the (small) result, which lets
                // hoisted rotations share c1's decomposition without permuting every digit.
                let perm = ctx.permutation(ctx.galois_inverse(g));
                let mut rotated = self.secret.poly.clone();
                for (row, source) in rotated.limbs_mut().zip(self.secret.poly.limbs_iter()) {
                    for (out, &k) in row.iter_mut().zip(perm.iter()) {
                        *out = source[k as usize];
                    }
                }
                let key = self.switch_key(&self.secret.poly, &rotated);
                rotated.zeroize();
                (g, key)
            })
            .collect();
        GaloisKeys { keys, fingerprint: Some(ctx.params.fingerprint()) }
    }

    /// A key switching from `source` to `under` (both in evaluation form over every prime):
    /// digit j is (-a_j·under + e_j + P·[source]_{q_j}·δ_j, a_j).
    fn switch_key(&self, source: &RnsPoly, under: &RnsPoly) -> KeySwitchKey {
        let ctx = &self.context;
        let limbs = ctx.max_level() + 1;
        let basis = ctx.basis(limbs, true);
        let seed = fresh_seed();
        let a = expand_switch_key_a(ctx, &seed);
        let mut rng = os_rng();
        let b = a
            .iter()
            .enumerate()
            .map(|(digit, a_j)| {
                let e = ctx.poly_from_signed(&gaussian(&mut rng, ctx.n), limbs, true);
                let mut b_j = RnsPoly::zero(ctx.n, basis.len());
                for (i, &index) in basis.iter().enumerate() {
                    let m = &ctx.moduli[index];
                    let (s, ai, ei) = (under.limb(i), a_j.limb(i), e.limb(i));
                    let row = b_j.limb_mut(i);
                    for k in 0..ctx.n {
                        row[k] = m.sub(ei[k], m.mul(ai[k], s[k]));
                    }
                    if i == digit {
                        let p = m.shoup(ctx.special_mod_q[i]);
                        let t = source.limb(i);
                        for k in 0..ctx.n {
                            row[k] = m.add(row[k], m.mul_shoup(t[k], p));
                        }
                    }
                }
                b_j
            })
            .collect();
        KeySwitchKey { seed, b, a }
    }
}

/// The a_j of a key-switching key, from its seed: one per digit, over q_0 … q_L, P.
pub(crate) fn expand_switch_key_a(context: &Context, seed: &[u8; 32]) -> Vec<RnsPoly> {
    let basis = context.basis(context.max_level() + 1, true);
    (0..=context.max_level())
        .map(|digit| {
            let digit_seed = blake3::keyed_hash(seed, &(digit as u64).to_le_bytes());
            uniform_from_seed(context, digit_seed.as_bytes(), &basis)
        })
        .collect()
}
