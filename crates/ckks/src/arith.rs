//! Word-size modular arithmetic for one RNS prime: the scalar helpers every hot loop uses.
//!
//! All moduli are primes below 2^61, so a sum of two reduced values never overflows a `u64`
//! and `min(x, x - q)` (wrapping) is a branch-free conditional subtraction.

/// One prime modulus with its precomputed reduction constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Modulus {
    /// The prime.
    pub(crate) value: u64,
    /// floor(2^64 / q), for Barrett reduction of one word.
    ratio64: u64,
    /// floor(2^128 / q) as (high, low) words, for Barrett reduction of a product.
    ratio128: (u64, u64),
}

impl Modulus {
    pub(crate) fn new(value: u64) -> Self {
        debug_assert!(value > 2 && value < (1 << 61) && value % 2 == 1);
        // For odd q, floor((2^128 - 1) / q) == floor(2^128 / q).
        let full = u128::MAX / value as u128;
        Self { value, ratio64: ((1u128 << 64) / value as u128) as u64, ratio128: ((full >> 64) as u64, full as u64) }
    }

    /// x mod q for any 64-bit x.
    #[inline(always)]
    pub(crate) fn reduce(&self, x: u64) -> u64 {
        let quotient = ((x as u128 * self.ratio64 as u128) >> 64) as u64;
        let r = x.wrapping_sub(quotient.wrapping_mul(self.value));
        r.min(r.wrapping_sub(self.value))
    }

    /// x mod q for a 128-bit x (Barrett with floor(2^128 / q)).
    #[inline(always)]
    pub(crate) fn reduce_u128(&self, x: u128) -> u64 {
        const LOW: u128 = u64::MAX as u128;
        let (x_hi, x_lo) = ((x >> 64) as u64 as u128, x as u64 as u128);
        let (r_hi, r_lo) = (self.ratio128.0 as u128, self.ratio128.1 as u128);
        // floor(x · ratio / 2^128) from the four partial products; it undershoots floor(x / q) by
        // at most one, so one conditional subtraction finishes the job.
        let p1 = x_lo * r_hi;
        let p2 = x_hi * r_lo;
        let middle = ((x_lo * r_lo) >> 64) + (p1 & LOW) + (p2 & LOW);
        let quotient = (x_hi * r_hi) + (p1 >> 64) + (p2 >> 64) + (middle >> 64);
        let r = (x as u64).wrapping_sub((quotient as u64).wrapping_mul(self.value));
        r.min(r.wrapping_sub(self.value))
    }

    /// a·b mod q.
    #[inline(always)]
    pub(crate) fn mul(&self, a: u64, b: u64) -> u64 {
        self.reduce_u128(a as u128 * b as u128)
    }

    /// a + b mod q for reduced inputs.
    #[inline(always)]
    pub(crate) fn add(&self, a: u64, b: u64) -> u64 {
        let s = a + b;
        s.min(s.wrapping_sub(self.value))
    }

    /// a - b mod q for reduced inputs.
    #[inline(always)]
    pub(crate) fn sub(&self, a: u64, b: u64) -> u64 {
        let d = a.wrapping_sub(b);
        d.min(d.wrapping_add(self.value))
    }

    /// -a mod q for a reduced input.
    #[inline(always)]
    pub(crate) fn neg(&self, a: u64) -> u64 {
        let d = self.value - a;
        d.min(d.wrapping_sub(self.value))
    }

    /// a^e mod q.
    pub(crate) fn pow(&self, mut base: u64, mut exponent: u64) -> u64 {
        let mut result = 1 % self.value;
        base = self.reduce(base);
        while exponent > 0 {
            if exponent & 1 == 1 {
                result = self.mul(result, base);
            }
            base = self.mul(base, base);
            exponent >>= 1;
        }
        result
    }

    /// a^-1 mod q (q prime, a not a multiple of q).
    pub(crate) fn inv(&self, a: u64) -> u64 {
        self.pow(a, self.value - 2)
    }

    /// A signed integer reduced into [0, q).
    #[inline(always)]
    pub(crate) fn reduce_i64(&self, x: i64) -> u64 {
        let r = self.reduce(x.unsigned_abs());
        if x < 0 { self.neg(r) } else { r }
    }

    /// A signed 128-bit integer reduced into [0, q).
    pub(crate) fn reduce_i128(&self, x: i128) -> u64 {
        let r = self.reduce_u128(x.unsigned_abs());
        if x < 0 { self.neg(r) } else { r }
    }

    /// The representative of x in (-q/2, q/2].
    #[inline(always)]
    pub(crate) fn center(&self, x: u64) -> i64 {
        if x > self.value / 2 { x as i64 - self.value as i64 } else { x as i64 }
    }

    /// A constant prepared for repeated multiplication (Shoup).
    pub(crate) fn shoup(&self, w: u64) -> ShoupConst {
        ShoupConst { value: w, quotient: (((w as u128) << 64) / self.value as u128) as u64 }
    }

    /// a·w mod q with a precomputed Shoup constant; a must be reduced.
    #[inline(always)]
    pub(crate) fn mul_shoup(&self, a: u64, w: ShoupConst) -> u64 {
        let q = ((a as u128 * w.quotient as u128) >> 64) as u64;
        let r = a.wrapping_mul(w.value).wrapping_sub(q.wrapping_mul(self.value));
        r.min(r.wrapping_sub(self.value))
    }
}

/// A multiplier with its Shoup quotient floor(w·2^64 / q).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShoupConst {
    pub(crate) value: u64,
    quotient: u64,
}

impl ShoupConst {
    /// floor(value · 2^32 / q): the constant of the 32-bit Shoup product, for q < 2^32.
    #[inline(always)]
    pub(crate) fn quotient32(&self) -> u64 {
        self.quotient >> 32
    }
}

/// x / q rounded to the nearest integer, from `inverse` = 1/q, for x < 2^64 and 2^14 < q < 2^32:
/// within one of the true quotient, so x − estimate·q lies in [−q, 2q) and two branch-free
/// steps finish the reduction. The 2^52 trick turns the f64 into an integer without a
/// saturating conversion, so loops using it vectorize (a plain `as u64` does not).
#[inline(always)]
pub(crate) fn quotient_estimate(x: u64, inverse: f64) -> u64 {
    const SHIFT: f64 = 4_503_599_627_370_496.0; // 2^52
    ((x as f64) * inverse + SHIFT).to_bits().wrapping_sub(SHIFT.to_bits())
}

/// x mod q for any x < 2^64 and 2^14 < q < 2^32, from `inverse` = 1/q: the quotient estimate
/// and two branch-free corrections. Vectorizes.
#[inline(always)]
pub(crate) fn reduce_estimated(x: u64, q: u64, inverse: f64) -> u64 {
    let r = x.wrapping_sub(quotient_estimate(x, inverse).wrapping_mul(q));
    // r is in [-q, 2q) as a two's-complement word.
    let r = r.min(r.wrapping_add(q));
    r.min(r.wrapping_sub(q))
}

/// Deterministic Miller–Rabin for 64-bit integers.
pub(crate) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for p in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let (mut d, mut s) = (n - 1, 0);
    while d.is_multiple_of(2) {
        d /= 2;
        s += 1;
    }
    let mulmod = |a: u64, b: u64| ((a as u128 * b as u128) % n as u128) as u64;
    let powmod = |mut b: u64, mut e: u64| {
        let mut r = 1u64;
        while e > 0 {
            if e & 1 == 1 {
                r = mulmod(r, b);
            }
            b = mulmod(b, b);
            e >>= 1;
        }
        r
    };
    'witness: for a in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        let mut x = powmod(a, d);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mulmod(x, x);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PRIMES: [u64; 3] = [1152921504606584833, 1099510054913, 65537];

    proptest! {
        #[test]
        fn barrett_matches_u128_remainder(a in any::<u64>(), b in any::<u64>(), k in 0usize..3) {
            let m = Modulus::new(PRIMES[k]);
            let q = m.value;
            prop_assert_eq!(m.reduce(a), a % q);
            prop_assert_eq!(m.reduce_u128(a as u128 * b as u128), ((a as u128 * b as u128) % q as u128) as u64);
            prop_assert_eq!(m.reduce_u128(u128::MAX - a as u128), ((u128::MAX - a as u128) % q as u128) as u64);
            let (x, y) = (a % q, b % q);
            prop_assert_eq!(m.mul(x, y), ((x as u128 * y as u128) % q as u128) as u64);
            prop_assert_eq!(m.mul_shoup(x, m.shoup(y)), m.mul(x, y));
            prop_assert_eq!(m.add(x, y), ((x as u128 + y as u128) % q as u128) as u64);
            prop_assert_eq!(m.add(m.sub(x, y), y), x);
            prop_assert_eq!(m.add(m.neg(x), x), 0);
            prop_assert_eq!(m.reduce_i64(-(x as i64 >> 1)), m.neg(x >> 1));
        }

        #[test]
        fn quotient_estimate_is_within_one(x in any::<u64>(), q in (1u64 << 14)..(1u64 << 32)) {
            let q = q | 1;
            let estimate = quotient_estimate(x, 1.0 / q as f64) as i128;
            let exact = (x / q) as i128;
            prop_assert!((estimate - exact).abs() <= 1, "{x} / {q}: {estimate} vs {exact}");
            for edge in [u64::MAX, u64::MAX - q, 0, q - 1, q, x] {
                let estimate = quotient_estimate(edge, 1.0 / q as f64) as i128;
                prop_assert!((estimate - (edge / q) as i128).abs() <= 1);
                prop_assert_eq!(reduce_estimated(edge, q, 1.0 / q as f64), edge % q);
            }
        }

        #[test]
        fn inverse_is_inverse(a in 1u64..u64::MAX) {
            let m = Modulus::new(PRIMES[0]);
            let a = m.reduce(a).max(1);
            prop_assert_eq!(m.mul(a, m.inv(a)), 1);
        }
    }

    #[test]
    fn primality() {
        assert!(is_prime(PRIMES[0]) && is_prime(PRIMES[1]) && is_prime(65537));
        assert!(!is_prime(561) && !is_prime(1) && !is_prime(3215031751));
    }
}
