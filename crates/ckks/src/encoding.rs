//! Encoding real vectors into plaintext polynomials through the canonical embedding.
//!
//! Slot j holds the evaluation of the message polynomial at ζ^(5^j) (ζ = e^(iπ/N)), so a left
//! rotation by k slots is the automorphism X → X^(5^k) and complex conjugation is X → X^(2N-1).

use crate::context::{Complex, Context};
use crate::poly::RnsPoly;
use crate::{Error, Result};

/// An encoded message: a polynomial in evaluation form at some level, with its scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Plaintext {
    pub(crate) poly: RnsPoly,
    pub(crate) level: usize,
    pub(crate) scale: f64,
}

impl Plaintext {
    /// The level (the plaintext has level + 1 primes).
    pub fn level(&self) -> usize {
        self.level
    }
    /// The scale Δ the values were multiplied by.
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

impl Context {
    /// Encodes up to N/2 real values (missing slots are zero) at `level` and `scale`.
    pub fn encode(&self, values: &[f64], level: usize, scale: f64) -> Result<Plaintext> {
        self.check_level(level)?;
        let slots = self.slots();
        if values.len() > slots {
            return Err(Error::TooManyValues { values: values.len(), slots });
        }
        check_scale(scale)?;
        let mut buffer = vec![Complex { re: 0.0, im: 0.0 }; slots];
        for (slot, &value) in buffer.iter_mut().zip(values) {
            if !value.is_finite() {
                return Err(Error::Unencodable { value, log_scale: scale.log2(), reason: "not a finite number" });
            }
            slot.re = value;
        }
        self.fft_special_inverse(&mut buffer);
        let limit = 2f64.powf(self.params.log_q_at(level) - 1.0);
        let mut coefficients = vec![0i128; self.n];
        for (i, value) in buffer.iter().enumerate() {
            for (index, part) in [(i, value.re), (i + slots, value.im)] {
                let scaled = (part * scale).round();
                if scaled.abs() >= limit || scaled.abs() >= 2f64.powi(120) {
                    return Err(Error::Unencodable {
                        value: values.get(i).copied().unwrap_or(part),
                        log_scale: scale.log2(),
                        reason: "the scaled value does not fit the modulus at this level",
                    });
                }
                coefficients[index] = scaled as i128;
            }
        }
        Ok(Plaintext { poly: self.poly_from_i128(&coefficients, level + 1), level, scale })
    }

    /// Encodes the same value in every slot; cheap (a constant polynomial, no FFT).
    pub fn encode_constant(&self, value: f64, level: usize, scale: f64) -> Result<Plaintext> {
        self.check_level(level)?;
        check_scale(scale)?;
        let scaled = (value * scale).round();
        if !scaled.is_finite() || scaled.abs() >= 2f64.powf(self.params.log_q_at(level) - 1.0).min(2f64.powi(120)) {
            return Err(Error::Unencodable {
                value,
                log_scale: scale.log2(),
                reason: "does not fit the modulus at this level",
            });
        }
        let mut poly = RnsPoly::zero(self.n, level + 1);
        for (i, row) in poly.limbs_mut().enumerate() {
            row.fill(self.moduli[i].reduce_i128(scaled as i128));
        }
        Ok(Plaintext { poly, level, scale })
    }

    /// Decodes the real parts of all N/2 slots.
    pub fn decode(&self, plaintext: &Plaintext) -> Result<Vec<f64>> {
        let coefficients = self.coefficients_f64(&plaintext.poly, plaintext.level)?;
        let slots = self.slots();
        let mut buffer: Vec<Complex> = (0..slots)
            .map(|i| Complex { re: coefficients[i] / plaintext.scale, im: coefficients[i + slots] / plaintext.scale })
            .collect();
        self.fft_special(&mut buffer);
        Ok(buffer.into_iter().map(|c| c.re).collect())
    }

    /// Signed integer coefficients to evaluation form over q_0 … q_{limbs-1}.
    fn poly_from_i128(&self, coefficients: &[i128], limbs: usize) -> RnsPoly {
        let mut poly = RnsPoly::zero(self.n, limbs);
        for (i, row) in poly.limbs_mut().enumerate() {
            let modulus = &self.moduli[i];
            for (slot, &c) in row.iter_mut().zip(coefficients) {
                *slot = match i64::try_from(c) {
                    Ok(small) => modulus.reduce_i64(small),
                    Err(_) => modulus.reduce_i128(c),
                };
            }
            self.ntt[i].forward(row);
        }
        poly
    }

    /// The centred integer coefficients of an evaluation-form polynomial at `level`, as f64
    /// (exact CRT reconstruction by Garner's mixed-radix algorithm).
    pub(crate) fn coefficients_f64(&self, poly: &RnsPoly, level: usize) -> Result<Vec<f64>> {
        if poly.limbs() < level + 1 {
            return Err(Error::InvalidLevel { level, min: 0, max: poly.limbs().saturating_sub(1) });
        }
        let limbs = level + 1;
        let mut rows = poly.prefix(limbs);
        for (i, row) in rows.limbs_mut().enumerate() {
            self.ntt[i].backward(row);
        }
        if limbs == 1 {
            let m = &self.moduli[0];
            return Ok(rows.limb(0).iter().map(|&x| m.center(x) as f64).collect());
        }
        let mut residues = vec![0u64; limbs];
        let mut digits = vec![0u64; limbs];
        Ok((0..self.n)
            .map(|c| {
                for (j, r) in residues.iter_mut().enumerate() {
                    *r = rows.limb(j)[c];
                }
                self.garner(&residues, &mut digits);
                if self.is_above_half(&digits) {
                    for (j, r) in residues.iter_mut().enumerate() {
                        *r = self.moduli[j].neg(*r);
                    }
                    self.garner(&residues, &mut digits);
                    -self.mixed_radix_value(&digits)
                } else {
                    self.mixed_radix_value(&digits)
                }
            })
            .collect())
    }

    fn garner(&self, residues: &[u64], digits: &mut [u64]) {
        for j in 0..residues.len() {
            let m = &self.moduli[j];
            let mut partial = 0u64;
            for (&digit, &prefix) in digits[..j].iter().zip(&self.garner_prefix[j]) {
                partial = m.add(partial, m.mul(m.reduce(digit), prefix));
            }
            digits[j] = m.mul(m.sub(residues[j], partial), self.garner_inv[j]);
        }
    }

    /// Whether the mixed-radix number is above (Q-1)/2, whose digits are (q_k - 1)/2.
    fn is_above_half(&self, digits: &[u64]) -> bool {
        for k in (0..digits.len()).rev() {
            let half = (self.moduli[k].value - 1) / 2;
            if digits[k] != half {
                return digits[k] > half;
            }
        }
        false
    }

    fn mixed_radix_value(&self, digits: &[u64]) -> f64 {
        // Horner's rule from the most significant digit: the leading digits of a small value
        // are zero, so nothing overflows f64 even when Q passes 2^1024 (N = 2^16), where a
        // running weight q_0 ⋯ q_{k-1} became infinite and 0 · ∞ made every slot NaN.
        digits
            .iter()
            .zip(&self.moduli[..digits.len()])
            .rev()
            .fold(0.0, |value, (&d, q)| value * q.value as f64 + d as f64)
    }

    /// Slot values to the coefficient vector's complex halves (inverse canonical embedding).
    fn fft_special_inverse(&self, values: &mut [Complex]) {
        let size = values.len();
        let m = 2 * self.n;
        let mut len = size;
        while len >= 1 {
            let half = len >> 1;
            let quarter_period = len << 2;
            for start in (0..size).step_by(len) {
                for j in 0..half {
                    let index = (quarter_period - self.rot_group[j] % quarter_period) * m / quarter_period;
                    let u = values[start + j].add(values[start + j + half]);
                    let v = values[start + j].sub(values[start + j + half]).mul(self.roots[index]);
                    values[start + j] = u;
                    values[start + j + half] = v;
                }
            }
            len >>= 1;
        }
        bit_reverse(values);
        let inv = 1.0 / size as f64;
        for v in values.iter_mut() {
            v.re *= inv;
            v.im *= inv;
        }
    }

    /// The coefficient vector's complex halves to slot values (canonical embedding).
    fn fft_special(&self, values: &mut [Complex]) {
        let size = values.len();
        let m = 2 * self.n;
        bit_reverse(values);
        let mut len = 2;
        while len <= size {
            let half = len >> 1;
            let quarter_period = len << 2;
            for start in (0..size).step_by(len) {
                for j in 0..half {
                    let index = (self.rot_group[j] % quarter_period) * m / quarter_period;
                    let u = values[start + j];
                    let v = values[start + j + half].mul(self.roots[index]);
                    values[start + j] = u.add(v);
                    values[start + j + half] = u.sub(v);
                }
            }
            len <<= 1;
        }
    }
}

fn check_scale(scale: f64) -> Result<()> {
    if !(scale.is_finite() && scale >= 1.0) {
        return Err(Error::InvalidParameter {
            name: "scale", reason: format!("{scale} must be a finite number ≥ 1")
        });
    }
    Ok(())
}

fn bit_reverse(values: &mut [Complex]) {
    let n = values.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j >= bit && bit > 0 {
            j -= bit;
            bit >>= 1;
        }
        j += bit;
        if i < j {
            values.swap(i, j);
        }
    }
}
