//! Homomorphic evaluation: arithmetic, rescaling, relinearization, rotations (single and
//! hoisted) and conjugation, with level and scale checks on every operation.

use std::sync::Arc;

use rayon::prelude::*;

use crate::arith::reduce_estimated;
use crate::ciphertext::Ciphertext;
use crate::context::Context;
use crate::encoding::Plaintext;
use crate::keys::{GaloisKeys, KeySwitchKey, RelinKey};
use crate::poly::RnsPoly;
use crate::serialize::check_fingerprint;
use crate::{Error, Result};

/// Scales closer than this (relative) are treated as equal: rescaling by primes that are not
/// exactly 2^k leaves scales that differ in the last bits.
const SCALE_TOLERANCE: f64 = 1e-9;

/// Evaluates operations on ciphertexts of one context. Cheap to clone; `Send + Sync`.
///
/// Heavy operations (key switching, rescaling) spread their per-prime work over rayon's
/// current pool; callers that already run many ciphertexts in parallel get no extra threads.
#[derive(Debug, Clone)]
pub struct Evaluator {
    context: Arc<Context>,
}

/// A ciphertext's c1 decomposed once for several rotations (hoisting): per digit, the digit
/// lifted to every prime of the level plus P, in evaluation form.
#[derive(Debug, Clone)]
pub struct Decomposed {
    digits: Vec<RnsPoly>,
    level: usize,
}

impl Evaluator {
    /// An evaluator for `context`.
    pub fn new(context: &Arc<Context>) -> Self {
        Self { context: context.clone() }
    }

    /// The context.
    pub fn context(&self) -> &Arc<Context> {
        &self.context
    }

    // ---- addition and friends -------------------------------------------------------------

    /// a + b.
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.add_assign(&mut out, b)?;
        Ok(out)
    }

    /// a += b.
    pub fn add_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        self.combine(a, b, |m, x, y| m.add(x, y))
    }

    /// a - b.
    pub fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.sub_assign(&mut out, b)?;
        Ok(out)
    }

    /// a -= b.
    pub fn sub_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        self.combine(a, b, |m, x, y| m.sub(x, y))
    }

    /// -a.
    pub fn negate(&self, a: &Ciphertext) -> Ciphertext {
        let mut out = a.clone();
        for part in &mut out.parts {
            for (i, row) in part.limbs_mut().enumerate() {
                let m = &self.context.moduli[i];
                row.iter_mut().for_each(|x| *x = m.neg(*x));
            }
        }
        out
    }

    /// a + plaintext (same level and scale).
    pub fn add_plain(&self, a: &Ciphertext, plaintext: &Plaintext) -> Result<Ciphertext> {
        self.plain_op(a, plaintext, |m, x, y| m.add(x, y))
    }

    /// a - plaintext (same level and scale).
    pub fn sub_plain(&self, a: &Ciphertext, plaintext: &Plaintext) -> Result<Ciphertext> {
        self.plain_op(a, plaintext, |m, x, y| m.sub(x, y))
    }

    /// a + c in every slot (c is encoded at a's scale).
    pub fn add_scalar(&self, a: &Ciphertext, value: f64) -> Result<Ciphertext> {
        let constant = self.context.encode_constant(value, a.level, a.scale)?;
        self.add_plain(a, &constant)
    }

    // ---- multiplication -------------------------------------------------------------------

    /// a · plaintext; the scale becomes the product of the scales.
    pub fn mul_plain(&self, a: &Ciphertext, plaintext: &Plaintext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.mul_plain_assign(&mut out, plaintext)?;
        Ok(out)
    }

    /// a ·= plaintext.
    pub fn mul_plain_assign(&self, a: &mut Ciphertext, plaintext: &Plaintext) -> Result<()> {
        check_levels(a.level, plaintext.level)?;
        let mut product = vec![0u64; self.context.n];
        for part in &mut a.parts {
            for (i, row) in part.limbs_mut().enumerate() {
                self.context.ntt[i].mul_into(&mut product, row, plaintext.poly.limb(i));
                row.copy_from_slice(&product);
            }
        }
        a.scale *= plaintext.scale;
        Ok(())
    }

    /// acc += a · plaintext, without a temporary: the multiply-accumulate of diagonal-method
    /// matrix products. `acc` must have a's level and the scale a.scale · plaintext.scale.
    pub fn mul_plain_accumulate(&self, acc: &mut Ciphertext, a: &Ciphertext, plaintext: &Plaintext) -> Result<()> {
        check_levels(a.level, plaintext.level)?;
        check_levels(acc.level, a.level)?;
        check_scales(acc.scale, a.scale * plaintext.scale)?;
        if acc.size() != a.size() {
            return Err(Error::WrongSize { expected: acc.size(), found: a.size() });
        }
        let ctx = &self.context;
        let n = ctx.n;
        for (out, part) in acc.parts.iter_mut().zip(&a.parts) {
            out.data.par_chunks_mut(n).enumerate().take(a.level + 1).for_each(|(i, row)| {
                ctx.ntt[i].mul_accumulate(row, part.limb(i), plaintext.poly.limb(i));
            });
        }
        Ok(())
    }

    /// a · c for a real c encoded at `scale` (the result's scale is a.scale · scale). Use an
    /// integer c with scale 1 to multiply without spending a level.
    pub fn mul_scalar(&self, a: &Ciphertext, value: f64, scale: f64) -> Result<Ciphertext> {
        let scaled = (value * scale).round();
        let limit = 2f64.powf(self.context.params.log_q_at(a.level) - 1.0).min(2f64.powi(120));
        if !scaled.is_finite() || scaled.abs() >= limit {
            return Err(Error::Unencodable { value, log_scale: scale.log2(), reason: "does not fit the modulus" });
        }
        let mut out = a.clone();
        for part in &mut out.parts {
            for (i, row) in part.limbs_mut().enumerate() {
                let m = &self.context.moduli[i];
                let w = m.shoup(m.reduce_i128(scaled as i128));
                row.iter_mut().for_each(|x| *x = m.mul_shoup(*x, w));
            }
        }
        out.scale *= scale;
        Ok(out)
    }

    /// a · b without relinearization: a 3-part ciphertext under (1, s, s²). Relinearize
    /// later (after adding several products) to pay for one key switch instead of many.
    pub fn mul(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        check_levels(a.level, b.level)?;
        if a.size() != 2 || b.size() != 2 {
            return Err(Error::WrongSize { expected: 2, found: a.size().max(b.size()) });
        }
        let ctx = &self.context;
        let (n, limbs) = (ctx.n, a.level + 1);
        let mut parts = vec![RnsPoly::zero(n, limbs), RnsPoly::zero(n, limbs), RnsPoly::zero(n, limbs)];
        let [d0, d1, d2] = &mut parts[..] else { unreachable!("three parts were just allocated") };
        d0.data.par_chunks_mut(n).zip(d1.data.par_chunks_mut(n)).zip(d2.data.par_chunks_mut(n)).enumerate().for_each(
            |(i, ((r0, r1), r2))| {
                let ntt = &ctx.ntt[i];
                let (a0, a1, b0, b1) = (a.parts[0].limb(i), a.parts[1].limb(i), b.parts[0].limb(i), b.parts[1].limb(i));
                ntt.mul_accumulate(r0, a0, b0);
                ntt.mul_accumulate(r1, a0, b1);
                ntt.mul_accumulate(r1, a1, b0);
                ntt.mul_accumulate(r2, a1, b1);
            },
        );
        Ok(Ciphertext { parts, level: a.level, scale: a.scale * b.scale })
    }

    /// a², without relinearization (cheaper than `mul(a, a)`).
    pub fn square(&self, a: &Ciphertext) -> Result<Ciphertext> {
        if a.size() != 2 {
            return Err(Error::WrongSize { expected: 2, found: a.size() });
        }
        let ctx = &self.context;
        let (n, limbs) = (ctx.n, a.level + 1);
        let mut parts = vec![RnsPoly::zero(n, limbs), RnsPoly::zero(n, limbs), RnsPoly::zero(n, limbs)];
        let [d0, d1, d2] = &mut parts[..] else { unreachable!("three parts were just allocated") };
        d0.data.par_chunks_mut(n).zip(d1.data.par_chunks_mut(n)).zip(d2.data.par_chunks_mut(n)).enumerate().for_each(
            |(i, ((r0, r1), r2))| {
                let (ntt, m) = (&ctx.ntt[i], &ctx.moduli[i]);
                let (a0, a1) = (a.parts[0].limb(i), a.parts[1].limb(i));
                ntt.mul_accumulate(r0, a0, a0);
                ntt.mul_accumulate(r1, a0, a1);
                r1.iter_mut().for_each(|x| *x = m.add(*x, *x));
                ntt.mul_accumulate(r2, a1, a1);
            },
        );
        Ok(Ciphertext { parts, level: a.level, scale: a.scale * a.scale })
    }

    /// (a + c)² for a real constant c (encoded at a's scale), without relinearization: an
    /// activation a·(x + β)² of the throughput packing in one pass over `a`, with no shifted
    /// copy. The result has a's level and scale a.scale².
    pub fn square_shifted(&self, a: &Ciphertext, shift: f64) -> Result<Ciphertext> {
        let n = self.context.n;
        let mut out = Ciphertext {
            parts: (0..3).map(|_| RnsPoly::zero(n, a.level + 1)).collect(),
            level: a.level,
            scale: a.scale * a.scale,
        };
        self.square_shifted_pass(&mut out, a, shift, false)?;
        Ok(out)
    }

    /// acc += (a + c)², as [`Evaluator::square_shifted`] but summed into `acc` (a sum pool
    /// of activations) in the same pass. `acc` must be 3-part at a's level and scale a.scale².
    pub fn add_square_shifted(&self, acc: &mut Ciphertext, a: &Ciphertext, shift: f64) -> Result<()> {
        check_levels(acc.level, a.level)?;
        check_scales(acc.scale, a.scale * a.scale)?;
        if acc.size() != 3 {
            return Err(Error::WrongSize { expected: 3, found: acc.size() });
        }
        self.square_shifted_pass(acc, a, shift, true)
    }

    fn square_shifted_pass(&self, out: &mut Ciphertext, a: &Ciphertext, shift: f64, accumulate: bool) -> Result<()> {
        if a.size() != 2 {
            return Err(Error::WrongSize { expected: 2, found: a.size() });
        }
        let ctx = &self.context;
        let constant = ctx.encode_constant(shift, a.level, a.scale)?;
        let n = ctx.n;
        let [d0, d1, d2] = &mut out.parts[..] else {
            return Err(Error::WrongSize { expected: 3, found: out.parts.len() });
        };
        d0.data.par_chunks_mut(n).zip(d1.data.par_chunks_mut(n)).zip(d2.data.par_chunks_mut(n)).enumerate().for_each(
            |(i, ((r0, r1), r2))| {
                let (m, c) = (&ctx.moduli[i], constant.poly.limb(i)[0]);
                let (a0, a1) = (a.parts[0].limb(i), a.parts[1].limb(i));
                if m.value < 1 << 32 {
                    square_shifted_rows(SquareRows { out: [r0, r1, r2], a0, a1, q: m.value, c, accumulate });
                    return;
                }
                for k in 0..n {
                    let x0 = m.add(a0[k], c);
                    let (s0, s1, s2) = (m.mul(x0, x0), m.mul(m.add(x0, x0), a1[k]), m.mul(a1[k], a1[k]));
                    if accumulate {
                        (r0[k], r1[k], r2[k]) = (m.add(r0[k], s0), m.add(r1[k], s1), m.add(r2[k], s2));
                    } else {
                        (r0[k], r1[k], r2[k]) = (s0, s1, s2);
                    }
                }
            },
        );
        Ok(())
    }

    /// Turns a 3-part ciphertext back into 2 parts with the relinearization key.
    pub fn relinearize(&self, a: &Ciphertext, key: &RelinKey) -> Result<Ciphertext> {
        let (k0, k1) = self.relinearization_terms(a, key)?;
        let mut out =
            Ciphertext { parts: vec![a.parts[0].clone(), a.parts[1].clone()], level: a.level, scale: a.scale };
        self.add_polys(&mut out.parts[0], &k0, a.level);
        self.add_polys(&mut out.parts[1], &k1, a.level);
        Ok(out)
    }

    /// [`Evaluator::relinearize`] in place, without copying the first two parts.
    pub fn relinearize_assign(&self, a: &mut Ciphertext, key: &RelinKey) -> Result<()> {
        let (k0, k1) = self.relinearization_terms(a, key)?;
        a.parts.truncate(2);
        self.add_polys(&mut a.parts[0], &k0, a.level);
        self.add_polys(&mut a.parts[1], &k1, a.level);
        Ok(())
    }

    /// The key switch of a's third part: what relinearization adds to its first two.
    fn relinearization_terms(&self, a: &Ciphertext, key: &RelinKey) -> Result<(RnsPoly, RnsPoly)> {
        check_fingerprint(&self.context, key.fingerprint)?;
        if a.size() != 3 {
            return Err(Error::WrongSize { expected: 3, found: a.size() });
        }
        self.key_switch(&a.parts[2], a.level, &key.key)
    }

    /// a · b, relinearized.
    pub fn mul_relin(&self, a: &Ciphertext, b: &Ciphertext, key: &RelinKey) -> Result<Ciphertext> {
        self.relinearize(&self.mul(a, b)?, key)
    }

    // ---- levels ---------------------------------------------------------------------------

    /// Divides by the last prime q_ℓ (rounding), dropping one level and dividing the scale by q_ℓ.
    pub fn rescale(&self, a: &Ciphertext) -> Result<Ciphertext> {
        if a.level == 0 {
            return Err(Error::InvalidLevel { level: 0, min: 1, max: self.context.max_level() });
        }
        let ctx = &self.context;
        let last = a.level;
        let parts = a
            .parts
            .iter()
            .map(|part| {
                let mut out = part.prefix(last);
                divide_by_last(ctx, &mut out, part.limb(last).to_vec(), last, &ctx.rescale_inv[last]);
                out
            })
            .collect();
        Ok(Ciphertext { parts, level: last - 1, scale: a.scale / q_last_value(ctx, last) })
    }

    /// [`Evaluator::rescale`] in place: no copy of the remaining primes, which is most of a
    /// rescale's memory traffic when ciphertexts are streamed through once.
    pub fn rescale_assign(&self, a: &mut Ciphertext) -> Result<()> {
        if a.level == 0 {
            return Err(Error::InvalidLevel { level: 0, min: 1, max: self.context.max_level() });
        }
        let ctx = &self.context;
        let last = a.level;
        for part in &mut a.parts {
            let dropped = part.limb(last).to_vec();
            part.truncate(last);
            divide_by_last(ctx, part, dropped, last, &ctx.rescale_inv[last]);
        }
        a.level = last - 1;
        a.scale /= q_last_value(ctx, last);
        Ok(())
    }

    /// Drops primes down to `level` without changing the message or the scale.
    pub fn drop_to_level(&self, a: &Ciphertext, level: usize) -> Result<Ciphertext> {
        if level > a.level {
            return Err(Error::InvalidLevel { level, min: 0, max: a.level });
        }
        let mut out = a.clone();
        for part in &mut out.parts {
            part.truncate(level + 1);
        }
        out.level = level;
        Ok(out)
    }

    /// A plaintext dropped to `level` (for operations with lower-level ciphertexts).
    pub fn drop_plain_to_level(&self, plaintext: &Plaintext, level: usize) -> Result<Plaintext> {
        if level > plaintext.level {
            return Err(Error::InvalidLevel { level, min: 0, max: plaintext.level });
        }
        Ok(Plaintext { poly: plaintext.poly.prefix(level + 1), level, scale: plaintext.scale })
    }

    // ---- rotations ------------------------------------------------------------------------

    /// Rotates the slots left by `step` (negative: right).
    pub fn rotate(&self, a: &Ciphertext, step: i64, keys: &GaloisKeys) -> Result<Ciphertext> {
        let g = self.context.galois_element(step);
        if g == 1 {
            return Ok(a.clone());
        }
        self.apply_galois(a, g, keys, &format!("rotation by {step}"))
    }

    /// Complex conjugation of the slots (the identity on real values, up to noise).
    pub fn conjugate(&self, a: &Ciphertext, keys: &GaloisKeys) -> Result<Ciphertext> {
        self.apply_galois(a, self.context.conjugation_element(), keys, "conjugation")
    }

    /// Decomposes c1 once so that [`Evaluator::rotate_hoisted`] can rotate many times cheaply.
    pub fn decompose(&self, a: &Ciphertext) -> Result<Decomposed> {
        if a.size() != 2 {
            return Err(Error::WrongSize { expected: 2, found: a.size() });
        }
        Ok(Decomposed { digits: self.lift_digits(&a.parts[1], a.level), level: a.level })
    }

    /// Rotations of `a` by each of `steps`, sharing one decomposition of c1.
    pub fn rotate_hoisted(&self, a: &Ciphertext, steps: &[i64], keys: &GaloisKeys) -> Result<Vec<Ciphertext>> {
        let decomposed = self.decompose(a)?;
        steps.iter().map(|&step| self.rotate_decomposed(a, &decomposed, step, keys)).collect()
    }

    /// One rotation of `a` using its precomputed decomposition.
    pub fn rotate_decomposed(
        &self,
        a: &Ciphertext,
        decomposed: &Decomposed,
        step: i64,
        keys: &GaloisKeys,
    ) -> Result<Ciphertext> {
        if decomposed.level != a.level {
            return Err(Error::LevelMismatch { left: a.level, right: decomposed.level });
        }
        let g = self.context.galois_element(step);
        if g == 1 {
            return Ok(a.clone());
        }
        let key = self.galois_key(keys, g, &format!("rotation by {step}"))?;
        let switched = self.inner_product(&decomposed.digits, a.level, key)?;
        Ok(self.finish_galois(a, switched, g))
    }

    fn apply_galois(&self, a: &Ciphertext, g: u64, keys: &GaloisKeys, what: &str) -> Result<Ciphertext> {
        if a.size() != 2 {
            return Err(Error::WrongSize { expected: 2, found: a.size() });
        }
        let key = self.galois_key(keys, g, what)?;
        let switched = self.key_switch(&a.parts[1], a.level, key)?;
        Ok(self.finish_galois(a, switched, g))
    }

    /// With (u0, u1) = KS_{s→σ⁻¹(s)}(c1): σ(c0 + u0) + σ(u1)·s ≈ σ(c0 + c1·s) = σ(m).
    fn finish_galois(&self, a: &Ciphertext, (mut u0, u1): (RnsPoly, RnsPoly), g: u64) -> Ciphertext {
        let perm = self.context.permutation(g);
        self.add_polys(&mut u0, &a.parts[0], a.level);
        Ciphertext { parts: vec![permute(&u0, &perm), permute(&u1, &perm)], level: a.level, scale: a.scale }
    }

    fn galois_key<'k>(&self, keys: &'k GaloisKeys, g: u64, what: &str) -> Result<&'k KeySwitchKey> {
        if let Some(fingerprint) = keys.fingerprint {
            check_fingerprint(&self.context, fingerprint)?;
        }
        keys.keys.get(&g).ok_or_else(|| Error::MissingGaloisKey { what: what.to_owned() })
    }

    // ---- key switching --------------------------------------------------------------------

    /// Switches polynomial `d` (under the key's source) to the secret key: returns (k0, k1)
    /// over q_0 … q_level with k0 + k1·s ≈ d·s'.
    ///
    /// Each digit is lifted into one scratch row per target prime and consumed at once, so the
    /// working set is (level + 1) coefficient rows instead of every lifted digit.
    fn key_switch(&self, d: &RnsPoly, level: usize, key: &KeySwitchKey) -> Result<(RnsPoly, RnsPoly)> {
        check_key_level(key, level)?;
        let ctx = &self.context;
        let n = ctx.n;
        let digits = ctx.params.digits_at(level);
        let scaled = self.digit_sources(d, level);
        let basis = ctx.basis(level + 1, true);
        let mut acc0 = RnsPoly::zero(n, basis.len());
        let mut acc1 = RnsPoly::zero(n, basis.len());
        acc0.data.par_chunks_mut(n).zip(acc1.data.par_chunks_mut(n)).zip(basis.par_iter()).for_each(
            |((r0, r1), &t)| {
                let ntt = &ctx.ntt[t];
                let key_row = key_row(ctx, key, t);
                let mut scratch = vec![0u64; n];
                for (j, digit) in digits.iter().enumerate() {
                    let lifted = if digit.contains(&t) {
                        d.limb(t)
                    } else {
                        self.lift_into(&scaled, level, j, t, &mut scratch);
                        &scratch[..]
                    };
                    ntt.mul_accumulate(r0, lifted, key.b[j].limb(key_row));
                    ntt.mul_accumulate(r1, lifted, key.a[j].limb(key_row));
                }
            },
        );
        Ok((self.mod_down(acc0, level), self.mod_down(acc1, level)))
    }

    /// The rows of `d` at `level` in coefficient form, each multiplied by its digit's
    /// (D_j / q_i)^-1 mod q_i (by 1 for one-prime digits): what every lift starts from.
    fn digit_sources(&self, d: &RnsPoly, level: usize) -> RnsPoly {
        let ctx = &self.context;
        let n = ctx.n;
        let alpha = ctx.params.digit_primes();
        let mut scaled = d.prefix(level + 1);
        scaled.data.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            ctx.ntt[i].backward(row);
            if alpha > 1 {
                let w = ctx.into_digits[level][i / alpha].inverse[i % alpha];
                scale_row(row, ctx.moduli[i].value, w.value, w.quotient32());
            }
        });
        scaled
    }

    /// Digit j of a ciphertext at `level` (from [`Evaluator::digit_sources`]) in prime `t`,
    /// evaluation form, into `out`: the centred representative of d mod D_j, in
    /// (−D_j/2, D_j/2], reduced mod q_t.
    fn lift_into(&self, scaled: &RnsPoly, level: usize, j: usize, t: usize, out: &mut [u64]) {
        let ctx = &self.context;
        let conversion = &ctx.into_digits[level][j];
        if let [source] = conversion.sources[..] {
            centre_row(out, scaled.limb(source), ctx.moduli[source].value, &ctx.moduli[t]);
        } else {
            let rows: Vec<&[u64]> = conversion.sources.iter().map(|&i| scaled.limb(i)).collect();
            convert_row(out, &rows, &conversion.factors[t], &conversion.reciprocals, ctx.moduli[t].value);
        }
        ctx.ntt[t].forward(out);
    }

    /// Each digit of `d` lifted to every prime of the level and the special primes.
    fn lift_digits(&self, d: &RnsPoly, level: usize) -> Vec<RnsPoly> {
        let ctx = &self.context;
        let n = ctx.n;
        let basis = ctx.basis(level + 1, true);
        let scaled = self.digit_sources(d, level);
        ctx.params
            .digits_at(level)
            .into_par_iter()
            .enumerate()
            .map(|(j, digit)| {
                let mut lifted = RnsPoly::zero(n, basis.len());
                lifted.data.par_chunks_mut(n).zip(basis.par_iter()).for_each(|(row, &t)| {
                    if digit.contains(&t) {
                        row.copy_from_slice(d.limb(t));
                    } else {
                        self.lift_into(&scaled, level, j, t, row);
                    }
                });
                lifted
            })
            .collect()
    }

    /// Σ_j digit_j · key_j over q_0 … q_level and the special primes, then divided by P.
    fn inner_product(&self, digits: &[RnsPoly], level: usize, key: &KeySwitchKey) -> Result<(RnsPoly, RnsPoly)> {
        check_key_level(key, level)?;
        let ctx = &self.context;
        let n = ctx.n;
        let basis = ctx.basis(level + 1, true);
        let mut acc0 = RnsPoly::zero(n, basis.len());
        let mut acc1 = RnsPoly::zero(n, basis.len());
        acc0.data.par_chunks_mut(n).zip(acc1.data.par_chunks_mut(n)).zip(basis.par_iter().enumerate()).for_each(
            |((r0, r1), (row, &t))| {
                let ntt = &ctx.ntt[t];
                let key_row = key_row(ctx, key, t);
                for (j, digit) in digits.iter().enumerate() {
                    ntt.mul_accumulate(r0, digit.limb(row), key.b[j].limb(key_row));
                    ntt.mul_accumulate(r1, digit.limb(row), key.a[j].limb(key_row));
                }
            },
        );
        Ok((self.mod_down(acc0, level), self.mod_down(acc1, level)))
    }

    /// From q_0 … q_level and the special primes down to q_0 … q_level: (x − [x]_P) / P with
    /// the centred remainder [x]_P ∈ (−P/2, P/2], i.e. x/P rounded to the nearest integer.
    ///
    /// One special prime centres its row directly. Several convert [x]_P to each q_i by fast
    /// base conversion, which alone gives [x]_P + u·P for some u in [0, k) (k special primes);
    /// the f64 estimate v = round(Σ_j y_j / p_j) (see [`crate::context::Conversion`]) is
    /// subtracted with it, so the converted value is exactly the centred remainder (up to a
    /// tie within about 10^-14·P of ±P/2): no bias, whatever k.
    fn mod_down(&self, mut extended: RnsPoly, level: usize) -> RnsPoly {
        let ctx = &self.context;
        let n = ctx.n;
        let specials = ctx.specials();
        if specials.len() == 1 {
            let dropped = extended.limb(level + 1).to_vec();
            extended.truncate(level + 1);
            divide_by_last(ctx, &mut extended, dropped, specials.start, &ctx.special_inv);
            return extended;
        }
        let conversion = &ctx.from_special;
        let mut scaled: Vec<Vec<u64>> = (0..specials.len()).map(|j| extended.limb(level + 1 + j).to_vec()).collect();
        scaled.par_iter_mut().zip(specials.clone()).enumerate().for_each(|(j, (row, p))| {
            ctx.ntt[p].backward(row);
            let w = conversion.inverse[j];
            scale_row(row, ctx.moduli[p].value, w.value, w.quotient32());
        });
        let sources: Vec<&[u64]> = scaled.iter().map(Vec::as_slice).collect();
        extended.truncate(level + 1);
        extended.data.par_chunks_mut(n).enumerate().for_each_init(
            || vec![0u64; n],
            |correction, (i, row)| {
                let q = ctx.moduli[i].value;
                convert_row(correction, &sources, &conversion.factors[i], &conversion.reciprocals, q);
                ctx.ntt[i].forward(correction);
                let inv = ctx.special_inv[i];
                subtract_and_scale(row, correction, q, inv.value, inv.quotient32());
            },
        );
        extended
    }

    // ---- helpers --------------------------------------------------------------------------

    fn combine(
        &self,
        a: &mut Ciphertext,
        b: &Ciphertext,
        op: impl Fn(&crate::arith::Modulus, u64, u64) -> u64,
    ) -> Result<()> {
        check_levels(a.level, b.level)?;
        check_scales(a.scale, b.scale)?;
        while a.parts.len() < b.parts.len() {
            a.parts.push(RnsPoly::zero(self.context.n, a.level + 1));
        }
        for (pa, pb) in a.parts.iter_mut().zip(&b.parts) {
            for (i, (ra, rb)) in pa.limbs_mut().zip(pb.limbs_iter()).enumerate() {
                let m = &self.context.moduli[i];
                ra.iter_mut().zip(rb).for_each(|(x, &y)| *x = op(m, *x, y));
            }
        }
        Ok(())
    }

    fn plain_op(
        &self,
        a: &Ciphertext,
        plaintext: &Plaintext,
        op: impl Fn(&crate::arith::Modulus, u64, u64) -> u64,
    ) -> Result<Ciphertext> {
        check_levels(a.level, plaintext.level)?;
        check_scales(a.scale, plaintext.scale)?;
        let mut out = a.clone();
        for (i, row) in out.parts[0].limbs_mut().enumerate() {
            let m = &self.context.moduli[i];
            row.iter_mut().zip(plaintext.poly.limb(i)).for_each(|(x, &y)| *x = op(m, *x, y));
        }
        Ok(out)
    }

    fn add_polys(&self, a: &mut RnsPoly, b: &RnsPoly, level: usize) {
        for i in 0..=level {
            let m = &self.context.moduli[i];
            a.limb_mut(i).iter_mut().zip(b.limb(i)).for_each(|(x, &y)| *x = m.add(*x, y));
        }
    }
}

/// Row of a key-switching key holding prime `t`: the key spans q_0 … q_{key level}, then the
/// special primes.
fn key_row(ctx: &Context, key: &KeySwitchKey, t: usize) -> usize {
    let first_special = ctx.special_index();
    if t >= first_special { key.level + 1 + (t - first_special) } else { t }
}

/// Refuses a key made for ciphertexts below `level`.
fn check_key_level(key: &KeySwitchKey, level: usize) -> Result<()> {
    if level > key.level {
        return Err(Error::InvalidLevel { level, min: 0, max: key.level });
    }
    Ok(())
}

/// A base conversion's row for one target prime q < 2^32 (see [`crate::context::Conversion`]):
/// out[k] = Σ_i y_i[k]·factors[i] − v[k]·S mod q with v[k] = round(Σ_i y_i[k] · reciprocals[i]),
/// i.e. the centred representative of the source value reduced mod q, for residues y_i and
/// factors below 2^31 (`factors` ends with −S mod q, the weight of v).
///
/// Up to 8 sources (every special-prime set, every digit of up to 8 primes) one pass computes
/// each coefficient in registers: the f64 overflow estimate, then the 64-bit sum, reduced
/// after every four products. Vectorizes.
#[allow(unsafe_code)]
fn convert_row(out: &mut [u64], sources: &[&[u64]], factors: &[u64], reciprocals: &[f64], q: u64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
            // SAFETY: the CPU supports AVX-512F and AVX-512DQ, checked just above.
            return unsafe { convert_row_avx512(out, sources, factors, reciprocals, q) };
        }
    }
    convert_row_portable(out, sources, factors, reciprocals, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn convert_row_avx512(out: &mut [u64], sources: &[&[u64]], factors: &[u64], reciprocals: &[f64], q: u64) {
    convert_row_portable(out, sources, factors, reciprocals, q)
}

#[inline(always)]
fn convert_row_portable(out: &mut [u64], sources: &[&[u64]], factors: &[u64], reciprocals: &[f64], q: u64) {
    debug_assert_eq!(factors.len(), sources.len() + 1);
    debug_assert_eq!(reciprocals.len(), sources.len());
    match sources.len() {
        1 => convert_fixed::<1>(out, sources, factors, reciprocals, q),
        2 => convert_fixed::<2>(out, sources, factors, reciprocals, q),
        3 => convert_fixed::<3>(out, sources, factors, reciprocals, q),
        4 => convert_fixed::<4>(out, sources, factors, reciprocals, q),
        5 => convert_fixed::<5>(out, sources, factors, reciprocals, q),
        6 => convert_fixed::<6>(out, sources, factors, reciprocals, q),
        7 => convert_fixed::<7>(out, sources, factors, reciprocals, q),
        8 => convert_fixed::<8>(out, sources, factors, reciprocals, q),
        _ => convert_in_passes(out, sources, factors, reciprocals, q),
    }
}

/// 2^52: adding it to a non-negative f64 below 2^51 rounds it to an integer in the low bits.
const ROUNDING_SHIFT: f64 = 4_503_599_627_370_496.0;

/// [`convert_row`] for S sources, one pass.
#[inline(always)]
fn convert_fixed<const S: usize>(out: &mut [u64], sources: &[&[u64]], factors: &[u64], reciprocals: &[f64], q: u64) {
    let n = out.len();
    let sources: [&[u64]; S] = std::array::from_fn(|i| &sources[i][..n]);
    let weights: [u64; S] = std::array::from_fn(|i| factors[i] as u32 as u64);
    let reciprocals: [f64; S] = std::array::from_fn(|i| reciprocals[i]);
    let minus_product = factors[S] as u32 as u64;
    let inverse = 1.0 / q as f64;
    for (k, o) in out.iter_mut().enumerate() {
        let y: [u64; S] = std::array::from_fn(|i| sources[i][k]);
        let mut sum = 0f64;
        for i in 0..S {
            sum += y[i] as f64 * reciprocals[i];
        }
        let v = (sum + ROUNDING_SHIFT).to_bits().wrapping_sub(ROUNDING_SHIFT.to_bits());
        // Residues and weights are below 2^31, so each product is at most (2^31 − 1)^2 and four
        // of them (2^64 − 2^34 + 4) fit a u64 on top of v·(−S mod q) < 2^34 or of a reduced
        // partial sum < 2^31.
        let mut acc = (v as u32 as u64) * minus_product;
        for i in 0..S {
            acc += (y[i] as u32 as u64) * weights[i];
            if i % 4 == 3 && i + 1 < S {
                acc = reduce_estimated(acc, q, inverse);
            }
        }
        *o = reduce_estimated(acc, q, inverse);
    }
}

/// [`convert_row`] for more than 8 sources (digits of many small primes): the overflow
/// estimate as a row of its own, then the sum three sources at a time over `out`.
fn convert_in_passes(out: &mut [u64], sources: &[&[u64]], factors: &[u64], reciprocals: &[f64], q: u64) {
    let n = out.len();
    let mut overflow = vec![0f64; n];
    for (source, &reciprocal) in sources.iter().zip(reciprocals) {
        for (sum, &y) in overflow.iter_mut().zip(&source[..n]) {
            *sum += y as f64 * reciprocal;
        }
    }
    let inverse = 1.0 / q as f64;
    let minus_product = factors[sources.len()] as u32 as u64;
    for (o, &sum) in out.iter_mut().zip(&overflow) {
        let v = (sum + ROUNDING_SHIFT).to_bits().wrapping_sub(ROUNDING_SHIFT.to_bits());
        *o = reduce_estimated(v * minus_product, q, inverse);
    }
    for (group, weights) in sources.chunks(3).zip(factors.chunks(3)) {
        for (k, o) in out.iter_mut().enumerate() {
            let mut acc = *o;
            for (source, &w) in group.iter().zip(weights) {
                acc += (source[k] as u32 as u64) * (w as u32 as u64);
            }
            *o = reduce_estimated(acc, q, inverse);
        }
    }
}

/// row[k] = row[k] · w mod q < 2^32 with the 32-bit Shoup constant w32 (see
/// `subtract_and_scale`).
#[allow(unsafe_code)]
fn scale_row(row: &mut [u64], q: u64, w: u64, w32: u64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { scale_row_avx512(row, q, w, w32) };
        }
    }
    scale_row_portable(row, q, w, w32)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn scale_row_avx512(row: &mut [u64], q: u64, w: u64, w32: u64) {
    scale_row_portable(row, q, w, w32)
}

#[inline(always)]
fn scale_row_portable(row: &mut [u64], q: u64, w: u64, w32: u64) {
    for x in row.iter_mut() {
        let d = *x;
        let estimate = (d * w32) >> 32;
        let r = (d * w).wrapping_sub(estimate * q);
        *x = r.min(r.wrapping_sub(q));
    }
}

/// `poly` (rows q_0 … q_k) together with `last_row` (mod prime `last`, evaluation form) is
/// one polynomial x; replaces `poly` by (x - [x]_last) / last, rounding, given last^-1 mod q_i.
fn divide_by_last(
    ctx: &Context,
    poly: &mut RnsPoly,
    mut dropped: Vec<u64>,
    last: usize,
    inverses: &[crate::arith::ShoupConst],
) {
    ctx.ntt[last].backward(&mut dropped);
    let q_last = ctx.moduli[last].value;
    // One scratch row per worker rather than one allocation per prime.
    poly.data.par_chunks_mut(ctx.n).enumerate().for_each_init(
        || vec![0u64; ctx.n],
        |correction, (i, row)| {
            let m = &ctx.moduli[i];
            centre_row(correction, &dropped, q_last, m);
            ctx.ntt[i].forward(correction);
            let inv = inverses[i];
            if m.value < 1 << 32 {
                // Every ciphertext prime of the compiled models: a vectorized path.
                subtract_and_scale(row, correction, m.value, inv.value, inv.quotient32());
                return;
            }
            for (x, &c) in row.iter_mut().zip(correction.iter()) {
                *x = m.mul_shoup(m.sub(*x, c), inv);
            }
        },
    );
}

/// out[k] = the centred representative of x[k] mod `from` (in (−from/2, from/2], x[k] < from)
/// reduced mod `to`: x[k] mod `to`, plus −from mod `to` when x[k] is above from/2.
/// Branch-free; vectorizes (the quotient of the reduction is estimated in f64 for `to` < 2^32).
#[allow(unsafe_code)]
fn centre_row(out: &mut [u64], x: &[u64], from: u64, to: &crate::arith::Modulus) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
            // SAFETY: the CPU supports AVX-512F and AVX-512DQ, checked just above.
            return unsafe { centre_row_avx512(out, x, from, to) };
        }
    }
    centre_row_portable(out, x, from, to)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn centre_row_avx512(out: &mut [u64], x: &[u64], from: u64, to: &crate::arith::Modulus) {
    centre_row_portable(out, x, from, to)
}

#[inline(always)]
fn centre_row_portable(out: &mut [u64], x: &[u64], from: u64, to: &crate::arith::Modulus) {
    let (q, half) = (to.value, from / 2);
    let shift = to.neg(to.reduce(from));
    // r = x mod q, then r + shift (mod q) above half: r + shift < 2q.
    let centred = |x: u64, r: u64| {
        let s = r + if x > half { shift } else { 0 };
        s.min(s.wrapping_sub(q))
    };
    if from <= q {
        out.iter_mut().zip(x).for_each(|(o, &x)| *o = centred(x, x));
    } else if from <= 2 * q {
        out.iter_mut().zip(x).for_each(|(o, &x)| *o = centred(x, x.min(x.wrapping_sub(q))));
    } else if q < 1 << 32 {
        let inverse = 1.0 / q as f64;
        out.iter_mut().zip(x).for_each(|(o, &x)| *o = centred(x, reduce_estimated(x, q, inverse)));
    } else {
        out.iter_mut().zip(x).for_each(|(o, &x)| *o = centred(x, to.reduce(x)));
    }
}

/// row[k] = (row[k] − correction[k]) · w mod q < 2^32, with the 32-bit Shoup constant w32 =
/// floor(w · 2^32 / q): every product fits 64 bits, so this vectorizes (vpmuludq).
#[allow(unsafe_code)]
fn subtract_and_scale(row: &mut [u64], correction: &[u64], q: u64, w: u64, w32: u64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { subtract_and_scale_avx512(row, correction, q, w, w32) };
        }
    }
    subtract_and_scale_portable(row, correction, q, w, w32)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn subtract_and_scale_avx512(row: &mut [u64], correction: &[u64], q: u64, w: u64, w32: u64) {
    subtract_and_scale_portable(row, correction, q, w, w32)
}

#[inline(always)]
fn subtract_and_scale_portable(row: &mut [u64], correction: &[u64], q: u64, w: u64, w32: u64) {
    for (x, &c) in row.iter_mut().zip(correction) {
        let d = x.wrapping_sub(c);
        let d = d.min(d.wrapping_add(q));
        // d, w < 2^32: both products fit; the quotient estimate is low by at most one.
        let estimate = (d * w32) >> 32;
        let r = (d * w).wrapping_sub(estimate * q);
        *x = r.min(r.wrapping_sub(q));
    }
}

/// One prime of a shifted square: (a0 + c, a1)² into `out`, added to it when `accumulate`.
struct SquareRows<'a> {
    out: [&'a mut [u64]; 3],
    a0: &'a [u64],
    a1: &'a [u64],
    q: u64,
    c: u64,
    accumulate: bool,
}

/// [`SquareRows`] for q < 2^32: every product of two residues fits 64 bits, and the
/// f64-estimated reduction vectorizes.
#[allow(unsafe_code)]
fn square_shifted_rows(rows: SquareRows<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
            // SAFETY: the CPU supports AVX-512F and AVX-512DQ, checked just above.
            return unsafe { square_shifted_rows_avx512(rows) };
        }
    }
    square_shifted_rows_portable(rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn square_shifted_rows_avx512(rows: SquareRows<'_>) {
    square_shifted_rows_portable(rows)
}

#[inline(always)]
fn square_shifted_rows_portable(rows: SquareRows<'_>) {
    let SquareRows { out: [r0, r1, r2], a0, a1, q, c, accumulate } = rows;
    let inverse = 1.0 / q as f64;
    let reduce = |x: u64| reduce_estimated(x, q, inverse);
    let keep = if accumulate { u64::MAX } else { 0 };
    let rows = r0.iter_mut().zip(r1.iter_mut()).zip(r2.iter_mut()).zip(a0.iter().zip(a1));
    for (((o0, o1), o2), (&x0, &x1)) in rows {
        let x0 = x0 + c;
        let x0 = (x0.min(x0.wrapping_sub(q)) as u32) as u64;
        let x1 = (x1 as u32) as u64;
        // 2·x0·x1 < 2^65 would overflow: double after reducing.
        let cross = reduce(x0 * x1);
        *o0 = reduce((*o0 & keep) + x0 * x0);
        *o1 = reduce((*o1 & keep) + cross + cross);
        *o2 = reduce((*o2 & keep) + x1 * x1);
    }
}

fn permute(poly: &RnsPoly, perm: &[u32]) -> RnsPoly {
    let mut out = RnsPoly::zero(poly.n, poly.limbs());
    for (row, source) in out.limbs_mut().zip(poly.limbs_iter()) {
        for (x, &k) in row.iter_mut().zip(perm) {
            *x = source[k as usize];
        }
    }
    out
}

fn q_last_value(ctx: &Context, level: usize) -> f64 {
    ctx.moduli[level].value as f64
}

fn check_levels(left: usize, right: usize) -> Result<()> {
    if left != right {
        return Err(Error::LevelMismatch { left, right });
    }
    Ok(())
}

fn check_scales(left: f64, right: f64) -> Result<()> {
    if ((left - right) / left).abs() > SCALE_TOLERANCE {
        return Err(Error::ScaleMismatch { left: left.log2(), right: right.log2() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParametersBuilder;
    use crate::arith::Modulus;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// An integer in [0, Π radices) by its mixed-radix digits a_j ∈ [0, radix_j):
    /// Σ_j a_j · Π_{l<j} radix_l, so its residues need no big integers and comparisons are
    /// lexicographic from the top digit.
    struct MixedRadix<'a> {
        radices: &'a [u64],
        digits: Vec<u64>,
    }

    impl<'a> MixedRadix<'a> {
        fn random(radices: &'a [u64], rng: &mut StdRng) -> Self {
            Self { radices, digits: radices.iter().map(|&p| rng.random_range(0..p)).collect() }
        }

        /// (Π radices − 1)/2 + offset, offset ∈ {0, 1}: the two values next to the half.
        fn half(radices: &'a [u64], offset: u64) -> Self {
            let mut digits: Vec<u64> = radices.iter().map(|&p| (p - 1) / 2).collect();
            digits[0] += offset;
            Self { radices, digits }
        }

        fn with_digits(radices: &'a [u64], digits: Vec<u64>) -> Self {
            Self { radices, digits }
        }

        /// The value mod m.
        fn residue(&self, m: &Modulus) -> u64 {
            let (mut value, mut weight) = (0u64, 1u64);
            for (&a, &p) in self.digits.iter().zip(self.radices) {
                value = m.add(value, m.mul(m.reduce(a), weight));
                weight = m.mul(weight, m.reduce(p));
            }
            value
        }

        /// Whether the value is above (Π radices − 1)/2, i.e. its centred representative is
        /// the value minus the product.
        fn above_half(&self) -> bool {
            let half = self.radices.iter().rev().map(|&p| (p - 1) / 2);
            self.digits.iter().rev().copied().cmp(half) == std::cmp::Ordering::Greater
        }

        /// The representatives mod m: (the centred one, the other one of the two next to it).
        fn centred_residues(&self, m: &Modulus) -> (u64, u64) {
            let product = self.radices.iter().fold(1u64, |acc, &p| m.mul(acc, m.reduce(p)));
            let (r, shifted) = (self.residue(m), m.sub(self.residue(m), product));
            if self.above_half() { (shifted, r) } else { (r, shifted) }
        }

        /// Within 2^-40 of the half: where the f64 overflow estimate may pick either
        /// representative.
        fn is_tie(&self) -> bool {
            let ratio = self.digits.iter().zip(self.radices).rev().fold((0.0, 1.0), |(sum, scale), (&a, &p)| {
                let scale = scale / p as f64;
                (sum + a as f64 * scale, scale)
            });
            (ratio.0 - 0.5f64).abs() < 2f64.powi(-40)
        }
    }

    fn context(log_n: u32, ciphertext: &[u32], special: &[u32], alpha: usize) -> Arc<Context> {
        let params = ParametersBuilder::new(log_n)
            .ciphertext_bits(ciphertext)
            .special_bits(special)
            .digit_primes(alpha)
            .log_scale(12)
            .build_insecure_for_tests()
            .unwrap();
        Context::new(params).unwrap()
    }

    /// Coefficient rows (one per prime index in `primes`) to an evaluation-form polynomial.
    fn to_evaluation(ctx: &Context, rows: &[Vec<u64>], primes: &[usize]) -> RnsPoly {
        let mut poly = RnsPoly::zero(ctx.n, rows.len());
        for ((out, row), &p) in poly.limbs_mut().zip(rows).zip(primes) {
            out.copy_from_slice(row);
            ctx.ntt[p].forward(out);
        }
        poly
    }

    /// mod_down(y·P + r) for r ∈ [0, P) must be y + [r > P/2]: x/P rounded, exactly, with any
    /// number of special primes, at the top level and below it; only where r is within
    /// 2^-40·P of P/2 may it be the other neighbour.
    #[test]
    fn mod_down_is_x_over_p_rounded_for_one_to_eight_special_primes() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut cases: Vec<(Vec<u32>, Vec<u32>)> = vec![(vec![60, 40, 40], vec![60]), (vec![31, 29, 29, 29], vec![31])];
        cases.extend((2..=8).map(|k| (vec![31, 29, 29, 29, 30], vec![31; k])));
        for (ciphertext, special) in cases {
            let ctx = context(6, &ciphertext, &special, 1);
            let evaluator = Evaluator::new(&ctx);
            let n = ctx.n;
            let special_primes: Vec<u64> = ctx.specials().map(|p| ctx.moduli[p].value).collect();
            for level in [ctx.max_level(), 1] {
                let primes = ctx.basis(level + 1, true);
                let mut rows = vec![vec![0u64; n]; primes.len()];
                let mut expected = vec![vec![0u64; n]; level + 1];
                let mut ties = vec![false; n];
                for k in 0..n {
                    let r = match k {
                        0 => MixedRadix::half(&special_primes, 0),
                        1 => MixedRadix::half(&special_primes, 1),
                        2 => MixedRadix::with_digits(&special_primes, vec![0; special_primes.len()]),
                        3 => MixedRadix::with_digits(&special_primes, special_primes.iter().map(|p| p - 1).collect()),
                        _ => MixedRadix::random(&special_primes, &mut rng),
                    };
                    ties[k] = r.is_tie();
                    for (row, &p) in rows.iter_mut().zip(&primes) {
                        let m = &ctx.moduli[p];
                        row[k] = r.residue(m);
                        if p <= level {
                            let y = rng.random_range(0..m.value);
                            row[k] = m.add(row[k], m.mul(y, ctx.special_mod_q[p]));
                            expected[p][k] = if r.above_half() { m.add(y, 1) } else { y };
                        }
                    }
                }
                assert!(!ties[2..].iter().any(|&t| t), "only the values next to P/2 may be ties");
                let mut out = evaluator.mod_down(to_evaluation(&ctx, &rows, &primes), level);
                assert_eq!(out.limbs(), level + 1);
                for (i, row) in out.limbs_mut().enumerate() {
                    let m = &ctx.moduli[i];
                    ctx.ntt[i].backward(row);
                    for k in 0..n {
                        let ok = row[k] == expected[i][k]
                            || (ties[k] && (row[k] == m.add(expected[i][k], 1) || row[k] == m.sub(expected[i][k], 1)));
                        assert!(ok, "{ciphertext:?} + {special:?}, level {level}, prime {i}, coefficient {k}");
                    }
                }
            }
        }
    }

    /// Every lift of a digit is its centred representative, in (−D_j/2, D_j/2], whatever the
    /// digit's size (one to five primes, the last digit of a level possibly shorter) and the
    /// relative sizes of source and target primes.
    #[test]
    fn digits_are_lifted_as_centred_representatives() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut cases: Vec<(Vec<u32>, Vec<u32>, usize)> =
            vec![(vec![60, 40, 40], vec![60], 1), (vec![31, 29, 29, 29, 29], vec![40], 1)];
        cases.extend((1..=5).map(|alpha| (vec![31, 29, 29, 29, 29, 29, 29], vec![31; alpha], alpha)));
        // Digits of 8 primes (the largest one-pass conversion) and of 10 (the multi-pass one).
        cases.push((vec![31, 29, 29, 29, 29, 29, 29, 29, 29], vec![31; 8], 8));
        cases.push((vec![20; 12], vec![31; 8], 10));
        for (ciphertext, special, alpha) in cases {
            let ctx = context(6, &ciphertext, &special, alpha);
            let evaluator = Evaluator::new(&ctx);
            let n = ctx.n;
            for level in [ctx.max_level(), (ctx.max_level() - 1).min(4)] {
                let digits = ctx.params.digits_at(level);
                // Per digit and coefficient: the digit's value by its mixed-radix digits.
                let radices: Vec<Vec<u64>> =
                    digits.iter().map(|digit| digit.clone().map(|i| ctx.moduli[i].value).collect()).collect();
                let values: Vec<Vec<MixedRadix>> = radices
                    .iter()
                    .map(|radices| {
                        (0..n)
                            .map(|k| match k {
                                0 => MixedRadix::half(radices, 0),
                                1 => MixedRadix::half(radices, 1),
                                2 => MixedRadix::with_digits(radices, radices.iter().map(|p| p - 1).collect()),
                                _ => MixedRadix::random(radices, &mut rng),
                            })
                            .collect()
                    })
                    .collect();
                let mut rows = vec![vec![0u64; n]; level + 1];
                for (digit, values) in digits.iter().zip(&values) {
                    for i in digit.clone() {
                        rows[i] = values.iter().map(|v| v.residue(&ctx.moduli[i])).collect();
                    }
                }
                let primes: Vec<usize> = (0..=level).collect();
                let d = to_evaluation(&ctx, &rows, &primes);
                let sources = evaluator.digit_sources(&d, level);
                let mut lifted = vec![0u64; n];
                for (j, digit) in digits.iter().enumerate() {
                    for t in ctx.basis(level + 1, true).into_iter().filter(|t| !digit.contains(t)) {
                        let m = &ctx.moduli[t];
                        evaluator.lift_into(&sources, level, j, t, &mut lifted);
                        ctx.ntt[t].backward(&mut lifted);
                        for (k, value) in values[j].iter().enumerate() {
                            let (centred, other) = value.centred_residues(m);
                            let ok = lifted[k] == centred || (value.is_tie() && lifted[k] == other);
                            assert!(
                                ok,
                                "{ciphertext:?} + {special:?}, α = {alpha}, level {level}, digit {j}, prime {t}, coefficient {k}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Key switching at N = 2^14 in the `n14-d7-29` preset (four 31-bit special primes, digits
    /// of 4 primes): a rotation by one of random values in [−1, 1] and a relinearization
    /// without rescale, whose error polynomial (relinearized − unrelinearized: it decrypts to
    /// k0 + k1·s − c2·s²) is read coefficient by coefficient.
    ///
    /// Without bias that error is −r0 − r1·s + Σ_j lift_j·e_j / P per coefficient, with r0, r1
    /// the rounding errors of the division by P, uniform in (−1/2, 1/2) and centred: its
    /// standard deviation is about √(N·(2/3)/12) ≈ 30 (r1·s; the centred lifts' noise adds
    /// under 2) and its mean over the N coefficients about 0.24 (r1·s again: each r1 coefficient
    /// weighs on every coefficient's sum). A rounding offset c (the former floor, c ≈ −k/2 = −2)
    /// adds c to the mean and c·(1 + X + ⋯ + X^(N−1))·s to the spread; measured before the fix:
    /// means up to ±280 and standard deviations of 77–276 over 30 keys; after: |mean| ≤ 0.92
    /// (root mean square 0.23) and 29.5–30.8 over 200 keys.
    ///
    /// The rotation's slot error is dominated by products of two independent, roughly Gaussian
    /// slot values (r1(ζ)·s(ζ), lift_j(ζ)·e_j(ζ)/P), whose largest value over the 8,192 slots is
    /// 10–24 times the median (200 keys; 13 typically; a tail of the Gumbel kind: 40 is, by
    /// extrapolation, under 10^-6 likely). A constant offset in the coefficients is amplified
    /// up to 2N/π at the slots whose root is near 1, and an uncentred lift (in [0, α·D_j))
    /// does the same to the key noise: the worst slot was 119–1,388 times the median with the
    /// floor and the uncentred lifts, 18–151 times with the uncentred lifts alone (30 keys
    /// each). The median itself halved (about 1.0e-5 before, 5.1e-6 after).
    #[test]
    fn n14_d7_29_key_switching_has_no_bias() {
        use crate::{Decryptor, KeyGenerator, Preset, SecretKeyEncryptor};
        const WORST_OVER_MEDIAN: f64 = 40.0;
        const MEDIAN: f64 = 8e-6;
        const MEAN: f64 = 2.0;
        const SPREAD: f64 = 32.0;
        let ctx = Context::new(Preset::N14Depth7Small.parameters().unwrap()).unwrap();
        assert_eq!((ctx.params().special_moduli().len(), ctx.params().digit_primes()), (4, 4));
        let keys = KeyGenerator::new(&ctx);
        let galois = keys.galois_keys(&[1], false);
        let relin = keys.relin_key();
        let encryptor = SecretKeyEncryptor::new(&ctx, keys.secret_key().clone()).unwrap();
        let decryptor = Decryptor::new(&ctx, keys.secret_key().clone()).unwrap();
        let evaluator = Evaluator::new(&ctx);
        let (slots, top, scale) = (ctx.slots(), ctx.max_level(), ctx.params().scale());
        let mut rng = StdRng::seed_from_u64(14);
        let mut random = || (0..slots).map(|_| rng.random_range(-1.0..=1.0)).collect::<Vec<f64>>();
        let (a, b) = (random(), random());
        let encrypt = |values: &[f64]| encryptor.encrypt(&ctx.encode(values, top, scale).unwrap()).unwrap();
        let (ca, cb) = (encrypt(&a), encrypt(&b));

        let rotated = decryptor.decrypt_values(&evaluator.rotate(&ca, 1, &galois).unwrap()).unwrap();
        let mut errors: Vec<f64> = (0..slots).map(|k| (rotated[k] - a[(k + 1) % slots]).abs()).collect();
        errors.sort_by(f64::total_cmp);
        let (worst, median) = (errors[slots - 1], errors[slots / 2]);
        assert!(
            worst <= WORST_OVER_MEDIAN * median,
            "worst slot {worst:e} = {} × the median {median:e}",
            worst / median
        );
        assert!(median <= MEDIAN, "median slot error {median:e}");

        let product = evaluator.mul(&ca, &cb).unwrap();
        let difference = evaluator.sub(&evaluator.relinearize(&product, &relin).unwrap(), &product).unwrap();
        let plaintext = decryptor.decrypt(&difference).unwrap();
        let coefficients = ctx.coefficients_f64(&plaintext.poly, plaintext.level).unwrap();
        let n = coefficients.len() as f64;
        let mean = coefficients.iter().sum::<f64>() / n;
        let spread = (coefficients.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() <= MEAN, "relinearization error: mean coefficient {mean}");
        assert!(spread <= SPREAD, "relinearization error: standard deviation {spread}");
    }
}
