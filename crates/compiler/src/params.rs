//! Pass 2, parameter choice: the smallest 128-bit ring whose prime chain holds the lowered
//! graph's depth, with the key-switching digit shape that makes keys smallest.

use blindfold_ckks::{Parameters, ParametersBuilder, security_bound};

/// Bits of every rescale prime. Small residues are what makes the linear layers fast: the
/// kernel multiplies 32-bit lanes and sums 64 or more products in a 64-bit word before reducing.
pub(crate) const PRIME_BITS: u32 = 29;
/// Bits of q_0, the prime the results are decrypted under: the final scale is q_0 / 2^(1 +
/// OUTPUT_HEADROOM_BITS), so its rounding error (about 2^12 in slot units after the last
/// rescale at N = 2^14) decides the outputs' precision. Each bit halves the error:
/// DermaMNIST's largest logit error over its test set is 4.1e-2 with 29 bits, 1.9e-2 with 30
/// and 0.7-0.85e-2 with 31, and its agreement 99.87 %, 99.90-99.95 % and 99.95 %. 31 bits is
/// the most the vector kernels take (32-bit signed lanes); with centred weights the linear
/// layers still sum 8 or more products per reduction on this prime.
pub(crate) const BASE_BITS: u32 = 31;
/// Largest special prime with one-prime digits; smaller when the budget is tight (never below
/// BASE_BITS + 1, so P stays above every q_i).
const SPECIAL_BITS: u32 = 40;
/// Special primes with digits of several primes: base conversions between primes multiply
/// 31-bit residues in 64-bit lanes.
const HYBRID_SPECIAL_BITS: u32 = 31;
/// Intermediate scale: one bit below the primes, so a rescale brings S² back near T.
pub(crate) const LOG_TARGET_SCALE: i32 = PRIME_BITS as i32 - 1;
/// Most bits of head room above the final scale in q_0 for the outputs, and the default:
/// |output| < 2^8 with the sign bit (DermaMNIST's largest test-set logit is 131). A model that
/// states a smaller bound on its outputs gets a larger final scale, each bit halving the
/// outputs' rounding error.
pub(crate) const OUTPUT_HEADROOM_BITS: i32 = 8;
/// Ring degrees the compiler chooses from: 2^12 to 2^16, the sizes with a 128-bit bound
/// (2^16: log2(Q·P) ≤ 1,747 from OpenFHE's table for HEStd_128_classic with a ternary secret).
const LOG_N: std::ops::RangeInclusive<u32> = 12..=16;

/// The target scale of intermediate values, T.
pub(crate) fn target_scale() -> f64 {
    2f64.powi(LOG_TARGET_SCALE)
}

/// Room for the outputs in q_0: |output| < 2^bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OutputRoom {
    pub bits: i32,
}

impl OutputRoom {
    /// The room for outputs bounded by `bound` (the default, 2^8, when none is given), or why
    /// q_0 cannot hold them.
    pub(crate) fn for_bound(bound: Option<f64>) -> Result<Self, String> {
        let Some(bound) = bound else { return Ok(Self { bits: OUTPUT_HEADROOM_BITS }) };
        if !(bound.is_finite() && bound > 0.0) {
            return Err(format!("the output bound {bound} is not a positive number"));
        }
        let bits = bound.log2().ceil().max(1.0) as i32;
        if bits > OUTPUT_HEADROOM_BITS {
            return Err(format!(
                "outputs up to {bound} need {bits} bits of room in q_0 ({BASE_BITS} bits); at most {OUTPUT_HEADROOM_BITS} \
                 leave the outputs enough precision: scale the last layer down"
            ));
        }
        Ok(Self { bits })
    }

    /// The scale of the network's output: low enough in q_0 for |output| < 2^bits.
    pub(crate) fn scale(self, params: &Parameters) -> f64 {
        let q0 = params.moduli()[0] as f64;
        2f64.powi((q0.log2().floor() as i32) - 1 - self.bits)
    }

    /// The bound on |output|; a decrypted value beyond it means an overflow.
    pub(crate) fn bound(self) -> f64 {
        2f64.powi(self.bits)
    }
}

/// The smallest 128-bit set with `depth` rescale primes of PRIME_BITS bits plus a BASE_BITS
/// q_0, on a ring of at least 2^`min_log_n`; on failure the largest depth any set holds.
///
/// Key switching (relinearization, rotations) then takes the cheapest digit shape the security
/// bound leaves room for: with one special prime of up to SPECIAL_BITS, a digit is one prime
/// and a key has (L + 1)·(L + 2) rows; with digits of α primes and k special primes of
/// HYBRID_SPECIAL_BITS whose product covers a digit, ⌈(L + 1)/α⌉·(L + 1 + k) rows — the size of
/// every key and the work of every key switch. At N = 2^14 and depth 7 that is α = 4 with four
/// 31-bit special primes: 24 rows instead of 72.
pub(crate) fn choose_parameters(depth: usize, min_log_n: u32) -> Result<Parameters, usize> {
    // q_0, P (above every q_i, so at least BASE_BITS + 1) and as many rescale primes as fit.
    let best_depth = LOG_N
        .filter_map(security_bound)
        .map(|bound| (bound.saturating_sub(2 * BASE_BITS + 1) / PRIME_BITS) as usize)
        .max()
        .unwrap_or(0);
    if depth > best_depth {
        return Err(best_depth);
    }
    let mut bits = vec![BASE_BITS];
    bits.extend(std::iter::repeat_n(PRIME_BITS, depth));
    for log_n in LOG_N.filter(|&n| n >= min_log_n) {
        let Some(bound) = security_bound(log_n) else { continue };
        let ciphertext_bits: u32 = bits.iter().sum();
        let room = bound.saturating_sub(ciphertext_bits);
        if room < BASE_BITS + 1 {
            continue;
        }
        let limbs = bits.len();
        let mut shapes: Vec<(usize, Vec<u32>, usize)> = vec![(1, vec![room.min(SPECIAL_BITS)], limbs * (limbs + 1))];
        for alpha in 2..=limbs {
            // The largest digit is the first (it holds q_0); its bits, plus one for the
            // special primes falling below their powers of two.
            let digit: u32 = bits.iter().take(alpha).sum::<u32>() + 1;
            let count = digit.div_ceil(HYBRID_SPECIAL_BITS) as usize;
            if count as u32 * HYBRID_SPECIAL_BITS <= room && count <= 8 {
                let rows = limbs.div_ceil(alpha) * (limbs + count);
                shapes.push((alpha, vec![HYBRID_SPECIAL_BITS; count], rows));
            }
        }
        shapes.sort_by_key(|&(alpha, _, rows)| (rows, alpha));
        for (alpha, special, _) in shapes {
            let built = ParametersBuilder::new(log_n)
                .ciphertext_bits(&bits)
                .special_bits(&special)
                .digit_primes(alpha)
                .log_scale(LOG_TARGET_SCALE as u32)
                .build();
            if let Ok(params) = built {
                return Ok(params);
            }
        }
    }
    Err(best_depth)
}

/// A parameter set in a plan summary: ring degree, primes, digits, log2(Q·P) against its bound.
pub(crate) fn parameter_line(params: &Parameters) -> String {
    let special = params.special_moduli().len();
    format!(
        "N = 2^{}, {} primes + {} special{} ({:.0} bits, bound {})",
        params.log_n(),
        params.moduli().len(),
        special,
        match params.digit_primes() {
            1 => String::new(),
            alpha => format!(", key-switching digits of {alpha} primes"),
        },
        params.log_qp(),
        security_bound(params.log_n()).unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_ring_that_holds_the_depth_is_chosen() {
        let ring = |depth| choose_parameters(depth, 12).map(|p| p.log_n());
        assert_eq!(ring(1), Ok(12));
        assert_eq!(ring(5), Ok(13));
        assert_eq!(ring(7), Ok(14));
        assert_eq!(ring(15), Ok(15));
        assert_eq!(ring(24), Ok(15));
        assert_eq!(ring(30), Ok(16));
        for depth in [1, 7, 24, 40] {
            let params = choose_parameters(depth, 12).unwrap();
            assert_eq!(params.security_bits(), 128);
            assert!(params.log_qp() <= f64::from(security_bound(params.log_n()).unwrap()));
            assert_eq!(params.max_level(), depth);
        }
        // A ring may be asked to be larger (the slots a layout needs).
        assert_eq!(choose_parameters(1, 14).map(|p| p.log_n()), Ok(14));
        let most = choose_parameters(usize::MAX / 64, 12).unwrap_err();
        assert!((50..60).contains(&most), "{most}");
        assert!(choose_parameters(most, 12).is_ok());
    }
}
