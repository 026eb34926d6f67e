//! Keys: the secret key (zeroized, never printed), the public key, and key-switching keys for
//! relinearization and rotations (hybrid key switching: digits of α ciphertext primes, special
//! primes with product P; a key may stop at a level below the top, for ciphertexts no higher).

use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

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
        let coefficients: Vec<i8> = ternary(&mut rng, context.n).iter().map(|&c| c as i8).collect();
        Self::from_coefficients(context, coefficients)
    }

    pub(crate) fn from_coefficients(context: &Context, coefficients: Vec<i8>) -> Self {
        let wide: Zeroizing<Vec<i64>> = Zeroizing::new(coefficients.iter().map(|&c| c as i64).collect());
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

/// A key that switches a ciphertext component from a key s' to s, for ciphertexts up to
/// `level`: for each digit j (α consecutive ciphertext primes D_j),
/// (b_j, a_j) = (-a_j·s + e_j + P·s'·[q ∈ D_j], a_j) over q_0 … q_level and the special
/// primes. The a_j are expanded from one 32-byte seed, so a serialized key stores only the b_j.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySwitchKey {
    pub(crate) seed: [u8; 32],
    pub(crate) level: usize,
    pub(crate) b: Vec<RnsPoly>,
    pub(crate) a: Vec<RnsPoly>,
}

impl KeySwitchKey {
    /// The highest ciphertext level this key switches.
    pub fn level(&self) -> usize {
        self.level
    }
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
    /// The highest level the key for Galois element `g` switches, if present.
    pub fn level_of(&self, g: u64) -> Option<usize> {
        self.keys.get(&g).map(KeySwitchKey::level)
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
        let key = self.switch_key(&square, &self.secret.poly, ctx.max_level());
        square.zeroize();
        RelinKey { key, fingerprint: ctx.params.fingerprint() }
    }

    /// Galois keys for left rotations by `steps` (negative: right) and, if asked, conjugation,
    /// for ciphertexts at every level.
    pub fn galois_keys(&self, steps: &[i64], conjugation: bool) -> GaloisKeys {
        let ctx = &self.context;
        let top = ctx.max_level();
        let mut elements: Vec<(u64, usize)> = steps.iter().map(|&s| (ctx.galois_element(s), top)).collect();
        if conjugation {
            elements.push((ctx.conjugation_element(), top));
        }
        self.galois_keys_for(elements)
    }

    /// Galois keys for left rotations by each step, each for ciphertexts up to its level only:
    /// a key for level ℓ has ℓ + 1 ciphertext primes instead of L + 1 (and fewer digits), so a
    /// plan that rotates late in the network needs far fewer bytes of keys. A step listed
    /// twice gets the higher level.
    pub fn galois_keys_at(&self, steps: &[(i64, usize)]) -> GaloisKeys {
        let ctx = &self.context;
        let top = ctx.max_level();
        self.galois_keys_for(steps.iter().map(|&(s, level)| (ctx.galois_element(s), level.min(top))).collect())
    }

    fn galois_keys_for(&self, elements: Vec<(u64, usize)>) -> GaloisKeys {
        let ctx = &self.context;
        let keys = galois_levels(elements)
            .into_iter()
            .map(|(g, level)| {
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
                let key = self.switch_key(&self.secret.poly, &rotated, level);
                rotated.zeroize();
                (g, key)
            })
            .collect();
        GaloisKeys { keys, fingerprint: Some(ctx.params.fingerprint()) }
    }

    /// A key switching from `source` to `under` (both in evaluation form over every prime)
    /// for ciphertexts up to `level`: digit j is (-a_j·under + e_j + P·source·[q ∈ D_j], a_j).
    fn switch_key(&self, source: &RnsPoly, under: &RnsPoly, level: usize) -> KeySwitchKey {
        let ctx = &self.context;
        let basis = ctx.basis(level + 1, true);
        let seed = fresh_seed();
        let a = expand_switch_key_a(ctx, &seed, level);
        let mut rng = os_rng();
        let b = a
            .iter()
            .zip(ctx.params.digits_at(level))
            .map(|(a_j, digit)| {
                let e = ctx.poly_from_signed(&gaussian(&mut rng, ctx.n), level + 1, true);
                let mut b_j = RnsPoly::zero(ctx.n, basis.len());
                for (row_index, &index) in basis.iter().enumerate() {
                    let m = &ctx.moduli[index];
                    // The secret's rows span every prime: its row for prime `index` is `index`.
                    let (s, ai, ei) = (under.limb(index), a_j.limb(row_index), e.limb(row_index));
                    let row = b_j.limb_mut(row_index);
                    for k in 0..ctx.n {
                        row[k] = m.sub(ei[k], m.mul(ai[k], s[k]));
                    }
                    if digit.contains(&index) {
                        let p = m.shoup(ctx.special_mod_q[index]);
                        let t = source.limb(index);
                        for k in 0..ctx.n {
                            row[k] = m.add(row[k], m.mul_shoup(t[k], p));
                        }
                    }
                }
                b_j
            })
            .collect();
        KeySwitchKey { seed, level, b, a }
    }
}

/// The a_j of a key-switching key for ciphertexts up to `level`, from its seed: one per digit,
/// over q_0 … q_level and the special primes.
pub(crate) fn expand_switch_key_a(context: &Context, seed: &[u8; 32], level: usize) -> Vec<RnsPoly> {
    let basis = context.basis(level + 1, true);
    (0..context.params.digits_at(level).len())
        .map(|digit| {
            let digit_seed = blake3::keyed_hash(seed, &(digit as u64).to_le_bytes());
            uniform_from_seed(context, digit_seed.as_bytes(), &basis)
        })
        .collect()
}

/// The Galois keys [`KeyGenerator::galois_keys_at`] makes of `elements`: one per element other
/// than the identity, at the highest level it was asked for.
pub(crate) fn galois_levels(elements: impl IntoIterator<Item = (u64, usize)>) -> BTreeMap<u64, usize> {
    let mut levels: BTreeMap<u64, usize> = BTreeMap::new();
    for (g, level) in elements.into_iter().filter(|&(g, _)| g != 1) {
        let entry = levels.entry(g).or_insert(level);
        *entry = (*entry).max(level);
    }
    levels
}
