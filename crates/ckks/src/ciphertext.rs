//! Ciphertexts, encryption (public-key and seeded secret-key) and decryption.

use std::sync::Arc;

use crate::context::Context;
use crate::encoding::Plaintext;
use crate::keys::{PublicKey, SecretKey};
use crate::poly::RnsPoly;
use crate::sampling::{fresh_seed, gaussian, os_rng, ternary, uniform_from_seed};
use crate::serialize::check_fingerprint;
use crate::{Error, Result};
use zeroize::Zeroizing;

/// A CKKS ciphertext: 2 parts (or 3 after a multiplication without relinearization), each in
/// evaluation form over q_0 … q_level, with the scale of the message it carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Ciphertext {
    pub(crate) parts: Vec<RnsPoly>,
    pub(crate) level: usize,
    pub(crate) scale: f64,
}

impl Ciphertext {
    /// The level (the ciphertext has level + 1 primes).
    pub fn level(&self) -> usize {
        self.level
    }
    /// The scale of the encrypted message.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// Number of parts: 2, or 3 before relinearization.
    pub fn size(&self) -> usize {
        self.parts.len()
    }
    /// Makes this `parts` parts at `level` with `scale`, keeping the allocations: rows that
    /// remain keep stale values, so only for callers that overwrite every row.
    pub(crate) fn reshape(&mut self, n: usize, parts: usize, level: usize, scale: f64) {
        self.parts.resize_with(parts, || RnsPoly::zero(n, level + 1));
        for part in &mut self.parts {
            part.data.resize(n * (level + 1), 0);
        }
        self.level = level;
        self.scale = scale;
    }

    /// Overrides the recorded scale. For callers that know the exact scale better (for
    /// example after folding a constant into weights); changes no ciphertext data.
    pub fn set_scale(&mut self, scale: f64) {
        self.scale = scale;
    }
}

/// A secret-key ciphertext stored as (c0, seed): c1 is expanded from the seed, so it is half the
/// size of a [`Ciphertext`]. What the hospital uploads.
#[derive(Clone, Debug, PartialEq)]
pub struct SeededCiphertext {
    pub(crate) c0: RnsPoly,
    pub(crate) seed: [u8; 32],
    pub(crate) level: usize,
    pub(crate) scale: f64,
}

impl SeededCiphertext {
    /// The level.
    pub fn level(&self) -> usize {
        self.level
    }
    /// The scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// Expands c1 from the seed.
    pub fn expand(&self, context: &Context) -> Ciphertext {
        let c1 = uniform_from_seed(context, &self.seed, &context.basis(self.level + 1, false));
        Ciphertext { parts: vec![self.c0.clone(), c1], level: self.level, scale: self.scale }
    }
}

/// Encrypts with a public key: anyone holding it can encrypt.
#[derive(Debug, Clone)]
pub struct Encryptor {
    context: Arc<Context>,
    key: PublicKey,
}

impl Encryptor {
    /// An encryptor for `key`, which must belong to `context`.
    pub fn new(context: &Arc<Context>, key: PublicKey) -> Result<Self> {
        check_fingerprint(context, key.fingerprint)?;
        Ok(Self { context: context.clone(), key })
    }

    /// (b·u + e0 + m, a·u + e1) with ternary u.
    pub fn encrypt(&self, plaintext: &Plaintext) -> Result<Ciphertext> {
        let ctx = &self.context;
        let limbs = plaintext.level + 1;
        let mut rng = os_rng();
        // The ephemeral secret: with the ciphertext it would reveal the message.
        let u = Zeroizing::new(ctx.poly_from_signed(&ternary(&mut rng, ctx.n), limbs, false));
        let e0 = ctx.poly_from_signed(&gaussian(&mut rng, ctx.n), limbs, false);
        let mut c0 = e0;
        let mut c1 = ctx.poly_from_signed(&gaussian(&mut rng, ctx.n), limbs, false);
        for i in 0..limbs {
            let (m, ntt) = (&ctx.moduli[i], &ctx.ntt[i]);
            ntt.mul_accumulate(c0.limb_mut(i), self.key.b.limb(i), u.limb(i));
            ntt.mul_accumulate(c1.limb_mut(i), self.key.a.limb(i), u.limb(i));
            for (x, &p) in c0.limb_mut(i).iter_mut().zip(plaintext.poly.limb(i)) {
                *x = m.add(*x, p);
            }
        }
        Ok(Ciphertext { parts: vec![c0, c1], level: plaintext.level, scale: plaintext.scale })
    }
}

/// Encrypts with the secret key, producing seeded ciphertexts (half the size).
#[derive(Debug, Clone)]
pub struct SecretKeyEncryptor {
    context: Arc<Context>,
    key: SecretKey,
}

impl SecretKeyEncryptor {
    /// An encryptor for `key`, which must belong to `context`.
    pub fn new(context: &Arc<Context>, key: SecretKey) -> Result<Self> {
        check_fingerprint(context, key.fingerprint)?;
        Ok(Self { context: context.clone(), key })
    }

    /// (-a·s + e + m, seed) with a expanded from a fresh seed.
    pub fn encrypt_seeded(&self, plaintext: &Plaintext) -> Result<SeededCiphertext> {
        let ctx = &self.context;
        let limbs = plaintext.level + 1;
        let seed = fresh_seed();
        let a = uniform_from_seed(ctx, &seed, &ctx.basis(limbs, false));
        let mut rng = os_rng();
        let mut c0 = ctx.poly_from_signed(&gaussian(&mut rng, ctx.n), limbs, false);
        // a·s: with a (public, from the seed) it gives s away; zeroized when dropped.
        let mut product = Zeroizing::new(vec![0u64; ctx.n]);
        for i in 0..limbs {
            let (m, ntt) = (&ctx.moduli[i], &ctx.ntt[i]);
            ntt.mul_into(&mut product, a.limb(i), self.key.poly.limb(i));
            for ((x, &p), &as_) in c0.limb_mut(i).iter_mut().zip(plaintext.poly.limb(i)).zip(product.iter()) {
                *x = m.sub(m.add(*x, p), as_);
            }
        }
        Ok(SeededCiphertext { c0, seed, level: plaintext.level, scale: plaintext.scale })
    }

    /// Encrypts and expands: a full ciphertext made with the secret key.
    pub fn encrypt(&self, plaintext: &Plaintext) -> Result<Ciphertext> {
        Ok(self.encrypt_seeded(plaintext)?.expand(&self.context))
    }
}

/// Decrypts with the secret key.
#[derive(Debug, Clone)]
pub struct Decryptor {
    context: Arc<Context>,
    key: SecretKey,
}

impl Decryptor {
    /// A decryptor for `key`, which must belong to `context`.
    pub fn new(context: &Arc<Context>, key: SecretKey) -> Result<Self> {
        check_fingerprint(context, key.fingerprint)?;
        Ok(Self { context: context.clone(), key })
    }

    /// c0 + c1·s (+ c2·s²).
    pub fn decrypt(&self, ciphertext: &Ciphertext) -> Result<Plaintext> {
        let ctx = &self.context;
        ctx.check_level(ciphertext.level)?;
        if !(2..=3).contains(&ciphertext.parts.len()) {
            return Err(Error::WrongSize { expected: 2, found: ciphertext.parts.len() });
        }
        let limbs = ciphertext.level + 1;
        let mut message = ciphertext.parts[0].prefix(limbs);
        // s², zeroized when dropped.
        let mut square = Zeroizing::new(vec![0u64; ctx.n]);
        for i in 0..limbs {
            let ntt = &ctx.ntt[i];
            let s = self.key.poly.limb(i);
            ntt.mul_accumulate(message.limb_mut(i), ciphertext.parts[1].limb(i), s);
            if let Some(c2) = ciphertext.parts.get(2) {
                ntt.mul_into(&mut square, s, s);
                let c2s = c2.limb(i).to_vec();
                ntt.mul_accumulate(message.limb_mut(i), &c2s, &square);
            }
        }
        Ok(Plaintext { poly: message, level: ciphertext.level, scale: ciphertext.scale })
    }

    /// Decrypts and decodes the real slot values.
    pub fn decrypt_values(&self, ciphertext: &Ciphertext) -> Result<Vec<f64>> {
        self.context.decode(&self.decrypt(ciphertext)?)
    }
}
