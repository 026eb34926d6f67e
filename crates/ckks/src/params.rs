//! Parameter sets: ring degree, prime chain, special prime, scale — and the security check.

use std::fmt;

use crate::arith::is_prime;
use crate::{Error, Result};

/// Largest log2(Q·P) for 128-bit security with a uniform ternary secret and σ = 3.2
/// (HomomorphicEncryption.org security standard), by log2 N.
pub const SECURITY_BOUNDS_128: [(u32, u32); 5] = [(12, 109), (13, 218), (14, 438), (15, 881), (16, 1747)];

/// Bit sizes allowed for a prime: large enough for an NTT-friendly prime to exist below 2^bits,
/// small enough that sums of two residues never overflow a 64-bit word.
const PRIME_BITS: std::ops::RangeInclusive<u32> = 20..=60;

/// The 128-bit bound on log2(Q·P) for ring degree 2^log_n, if the standard tabulates it.
pub fn security_bound(log_n: u32) -> Option<u32> {
    SECURITY_BOUNDS_128.iter().find(|(n, _)| *n == log_n).map(|(_, bound)| *bound)
}

/// A stable 32-byte hash of (N, primes, special primes, scale) that every serialized object
/// carries, so that nothing made under one parameter set is used under another.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The first 8 bytes in hex, for messages.
    pub fn short(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

/// A complete, validated CKKS parameter set.
///
/// Built only through [`ParametersBuilder::build`], which refuses anything below 128-bit
/// security, or (in tests) through the explicitly insecure constructor.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameters {
    log_n: u32,
    moduli: Vec<u64>,
    special: Vec<u64>,
    log_scale: u32,
    /// Ciphertext primes per key-switching digit (α).
    digit_primes: usize,
    secure: bool,
    fingerprint: Fingerprint,
}

impl Parameters {
    /// log2 of the ring degree N.
    pub fn log_n(&self) -> u32 {
        self.log_n
    }
    /// The ring degree N.
    pub fn n(&self) -> usize {
        1 << self.log_n
    }
    /// Number of complex (here: real) slots, N/2.
    pub fn slots(&self) -> usize {
        self.n() / 2
    }
    /// The ciphertext primes q_0 … q_L.
    pub fn moduli(&self) -> &[u64] {
        &self.moduli
    }
    /// The special primes whose product P is used only inside key switching.
    pub fn special_moduli(&self) -> &[u64] {
        &self.special
    }
    /// Ciphertext primes per key-switching digit (α): a key has one digit per α primes, so a
    /// larger α means fewer, larger digits — smaller keys and cheaper key switches — and needs
    /// a larger P (at least every digit's product).
    pub fn digit_primes(&self) -> usize {
        self.digit_primes
    }
    /// The digits of a ciphertext at `level`: consecutive ranges of α prime indices covering
    /// 0..=level (the last one possibly shorter).
    pub fn digits_at(&self, level: usize) -> Vec<std::ops::Range<usize>> {
        (0..=level).step_by(self.digit_primes).map(|start| start..(start + self.digit_primes).min(level + 1)).collect()
    }
    /// The highest level L (a fresh ciphertext has L + 1 primes).
    pub fn max_level(&self) -> usize {
        self.moduli.len() - 1
    }
    /// log2 of the default scale Δ.
    pub fn log_scale(&self) -> u32 {
        self.log_scale
    }
    /// The default scale Δ = 2^log_scale.
    pub fn scale(&self) -> f64 {
        2f64.powi(self.log_scale as i32)
    }
    /// log2(Q·P): the number the security bound is about.
    pub fn log_qp(&self) -> f64 {
        self.moduli.iter().chain(&self.special).map(|&q| (q as f64).log2()).sum()
    }
    /// log2 of Q at a level (the primes a ciphertext at that level still has).
    pub fn log_q_at(&self, level: usize) -> f64 {
        self.moduli.iter().take(level + 1).map(|&q| (q as f64).log2()).sum()
    }
    /// Security level claimed: 128 when the set passes the bound, 0 for test-only sets.
    pub fn security_bits(&self) -> u32 {
        if self.secure { 128 } else { 0 }
    }
    /// The parameter fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub(crate) fn from_parts(
        log_n: u32,
        moduli: Vec<u64>,
        special: Vec<u64>,
        log_scale: u32,
        digit_primes: usize,
        secure: bool,
    ) -> Result<Self> {
        validate_shape(log_n, &moduli, &special, log_scale, digit_primes, secure)?;
        if secure {
            check_security(log_n, &moduli, &special)?;
        }
        let fingerprint = fingerprint(log_n, &moduli, &special, log_scale, digit_primes);
        Ok(Self { log_n, moduli, special, log_scale, digit_primes, secure, fingerprint })
    }
}

/// Builds a [`Parameters`] from bit sizes; primes are generated deterministically.
///
/// ```
/// use blindfold_ckks::ParametersBuilder;
/// let params = ParametersBuilder::new(14).ciphertext_bits(&[60, 40, 40, 40]).special_bits(&[60]).log_scale(40).build()?;
/// assert_eq!(params.moduli().len(), 4);
/// assert!(ParametersBuilder::new(13).ciphertext_bits(&[60; 4]).special_bits(&[60]).build().is_err());
/// # Ok::<(), blindfold_ckks::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ParametersBuilder {
    log_n: u32,
    ciphertext_bits: Vec<u32>,
    special_bits: Vec<u32>,
    log_scale: u32,
    digit_primes: usize,
}

impl ParametersBuilder {
    /// Starts a parameter set of ring degree 2^log_n.
    pub fn new(log_n: u32) -> Self {
        Self { log_n, ciphertext_bits: Vec::new(), special_bits: vec![60], log_scale: 40, digit_primes: 1 }
    }
    /// Bit sizes of q_0 … q_L (q_0 first: it holds the final result, so make it larger than Δ).
    pub fn ciphertext_bits(mut self, bits: &[u32]) -> Self {
        self.ciphertext_bits = bits.to_vec();
        self
    }
    /// Bit sizes of the special primes (1 to 8): their product P must be at least every
    /// key-switching digit (with one prime per digit: at least every q_i). With more than one
    /// special prime or digit prime, every prime must be below 2^31.
    pub fn special_bits(mut self, bits: &[u32]) -> Self {
        self.special_bits = bits.to_vec();
        self
    }
    /// Ciphertext primes per key-switching digit (α, default 1).
    pub fn digit_primes(mut self, primes: usize) -> Self {
        self.digit_primes = primes;
        self
    }
    /// log2 of the default scale Δ.
    pub fn log_scale(mut self, log_scale: u32) -> Self {
        self.log_scale = log_scale;
        self
    }

    /// Generates the primes and checks the set, refusing it below 128-bit security.
    pub fn build(self) -> Result<Parameters> {
        if security_bound(self.log_n).is_none() {
            return Err(Error::InvalidParameter {
                name: "log_n",
                reason: format!("{} is outside 12..=16, the range with a 128-bit security bound", self.log_n),
            });
        }
        self.build_with(true)
    }

    /// Builds a set WITHOUT the security check, for fast tests only.
    ///
    /// Compiled only for this crate's tests and under the `insecure-test-params` feature, which
    /// no service crate enables; the resulting [`Parameters::security_bits`] is 0.
    #[cfg(any(test, feature = "insecure-test-params"))]
    pub fn build_insecure_for_tests(self) -> Result<Parameters> {
        self.build_with(false)
    }

    fn build_with(self, secure: bool) -> Result<Parameters> {
        for &bits in self.ciphertext_bits.iter().chain(&self.special_bits) {
            if !PRIME_BITS.contains(&bits) {
                return Err(Error::InvalidParameter {
                    name: "prime bits",
                    reason: format!("{bits} is outside {}..={}", PRIME_BITS.start(), PRIME_BITS.end()),
                });
            }
        }
        if self.log_n > 17 || self.log_n < 4 {
            return Err(Error::InvalidParameter { name: "log_n", reason: format!("{} is outside 4..=17", self.log_n) });
        }
        if secure {
            // Fail on the bit budget before spending time on prime search.
            let approx: u32 = self.ciphertext_bits.iter().chain(&self.special_bits).sum();
            if let Some(bound) = security_bound(self.log_n).filter(|&bound| approx > bound + 1) {
                return Err(Error::Insecure {
                    log_n: self.log_n,
                    log_qp: approx as f64,
                    bound,
                    excess: approx as f64 - bound as f64,
                });
            }
        }
        let mut taken = Vec::new();
        let mut generate = |bits: &[u32]| -> Result<Vec<u64>> {
            bits.iter()
                .map(|&b| {
                    let prime = ntt_prime_below(b, self.log_n, &taken).ok_or_else(|| Error::InvalidParameter {
                        name: "prime bits",
                        reason: format!("no unused {b}-bit prime ≡ 1 mod 2N for N = 2^{}", self.log_n),
                    })?;
                    taken.push(prime);
                    Ok(prime)
                })
                .collect()
        };
        // Special primes first: with equal bit sizes P then gets the larger prime, as the
        // key-switching noise bound wants P ≥ every q_i.
        let special = generate(&self.special_bits)?;
        let moduli = generate(&self.ciphertext_bits)?;
        Parameters::from_parts(self.log_n, moduli, special, self.log_scale, self.digit_primes, secure)
    }
}

/// Named parameter sets. Each passes the 128-bit check; the crate README lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Preset {
    /// N = 2^13, q = [60, 40, 40], P = 60, Δ = 2^40: depth 2 (the common SEAL benchmark shape).
    N13Depth2,
    /// N = 2^14, q = [60, 40 × 7], P = 60, Δ = 2^40: depth 7 (the common SEAL benchmark shape).
    N14Depth7,
    /// N = 2^13, q = [31, 29 × 5], P = 40, Δ = 2^28: depth 5 with 29-bit rescale primes, the
    /// shape the model compiler picks for mnist-cryptonets (small residues leave room for many
    /// lazy multiply-adds per 64-bit word in the linear layers; the 31-bit q_0 gives the logits
    /// two more bits of precision than a 29-bit one).
    N13Depth5Small,
    /// N = 2^14, q = [31, 29 × 7], P = 4 × 31, key-switching digits of 4 primes, Δ = 2^28:
    /// depth 7 with 29-bit rescale primes, the shape of the LeNet-5 models (two digits: keys of
    /// 24 rows instead of 72).
    N14Depth7Small,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 4] = [Preset::N13Depth2, Preset::N14Depth7, Preset::N13Depth5Small, Preset::N14Depth7Small];

    /// A stable name (`n13-d2`, `n14-d7`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::N13Depth2 => "n13-d2",
            Preset::N14Depth7 => "n14-d7",
            Preset::N13Depth5Small => "n13-d5-29",
            Preset::N14Depth7Small => "n14-d7-29",
        }
    }

    /// The preset with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The builder for this preset.
    pub fn builder(self) -> ParametersBuilder {
        match self {
            Preset::N13Depth2 => {
                ParametersBuilder::new(13).ciphertext_bits(&[60, 40, 40]).special_bits(&[60]).log_scale(40)
            }
            Preset::N14Depth7 => ParametersBuilder::new(14)
                .ciphertext_bits(&[60, 40, 40, 40, 40, 40, 40, 40])
                .special_bits(&[60])
                .log_scale(40),
            Preset::N13Depth5Small => {
                ParametersBuilder::new(13).ciphertext_bits(&[31, 29, 29, 29, 29, 29]).special_bits(&[40]).log_scale(28)
            }
            Preset::N14Depth7Small => ParametersBuilder::new(14)
                .ciphertext_bits(&[31, 29, 29, 29, 29, 29, 29, 29])
                .special_bits(&[31, 31, 31, 31])
                .digit_primes(4)
                .log_scale(28),
        }
    }

    /// The parameters (always passes the security check).
    pub fn parameters(self) -> Result<Parameters> {
        self.builder().build()
    }
}

fn validate_shape(
    log_n: u32,
    moduli: &[u64],
    special: &[u64],
    log_scale: u32,
    digit_primes: usize,
    secure: bool,
) -> Result<()> {
    let bad = |name, reason: String| Err(Error::InvalidParameter { name, reason });
    if !(4..=17).contains(&log_n) || (secure && security_bound(log_n).is_none()) {
        return bad("log_n", format!("{log_n} is not supported"));
    }
    if moduli.is_empty() {
        return bad("ciphertext primes", "at least one is needed".into());
    }
    if special.is_empty() || special.len() > 8 {
        return bad("special primes", format!("1 to 8 are supported, got {}", special.len()));
    }
    if digit_primes == 0 || digit_primes > moduli.len() {
        return bad("digit primes", format!("{digit_primes} is outside 1..={}", moduli.len()));
    }
    let two_n = 2u64 << log_n;
    let mut all: Vec<u64> = moduli.iter().chain(special).copied().collect();
    for &q in &all {
        if q >= 1 << 61 || q % two_n != 1 || !is_prime(q) {
            return bad("primes", format!("{q} is not a prime ≡ 1 mod 2N below 2^61"));
        }
    }
    all.sort_unstable();
    if all.windows(2).any(|w| w[0] == w[1]) {
        return bad("primes", "primes must be distinct".into());
    }
    // Several primes per digit or special primes: key switching converts between bases with
    // 32-bit arithmetic.
    if (digit_primes > 1 || special.len() > 1) && all.iter().any(|&q| q >= 1 << 31) {
        return bad("primes", "with several digit or special primes, every prime must be below 2^31".into());
    }
    let p_log: f64 = special.iter().map(|&p| (p as f64).log2()).sum();
    for digit in moduli.chunks(digit_primes) {
        // Key-switching noise is about (digit / P)·N·σ: P at least every digit keeps it small.
        let fits = match (product(digit), product(special)) {
            (Some(d), Some(p)) => p >= d,
            _ => p_log >= digit.iter().map(|&q| (q as f64).log2()).sum::<f64>(),
        };
        if !fits {
            let reason = if digit_primes == 1 && special.len() == 1 {
                "the special prime must be at least as large as every ciphertext prime".to_owned()
            } else {
                format!("the special primes' product must be at least every digit of {digit_primes} ciphertext primes")
            };
            return bad("special primes", reason);
        }
    }
    if log_scale < 10 || (log_scale as f64) >= (moduli[0] as f64).log2() {
        return bad("log_scale", format!("{log_scale} must be at least 10 and below the bit size of q_0"));
    }
    Ok(())
}

/// The product of `primes`, if it fits 128 bits.
fn product(primes: &[u64]) -> Option<u128> {
    primes.iter().try_fold(1u128, |acc, &q| acc.checked_mul(q as u128))
}

fn check_security(log_n: u32, moduli: &[u64], special: &[u64]) -> Result<()> {
    let bound = security_bound(log_n).ok_or(Error::InvalidParameter { name: "log_n", reason: format!("{log_n}") })?;
    let log_qp: f64 = moduli.iter().chain(special).map(|&q| (q as f64).log2()).sum();
    if log_qp > bound as f64 {
        return Err(Error::Insecure { log_n, log_qp, bound, excess: log_qp - bound as f64 });
    }
    Ok(())
}

/// The largest prime p < 2^bits with p ≡ 1 mod 2N that is not in `taken`.
fn ntt_prime_below(bits: u32, log_n: u32, taken: &[u64]) -> Option<u64> {
    let two_n = 2u64 << log_n;
    let top = 1u64 << bits;
    let mut candidate = (top - 1) / two_n * two_n + 1;
    while candidate > top / 2 {
        if !taken.contains(&candidate) && is_prime(candidate) {
            return Some(candidate);
        }
        candidate -= two_n;
    }
    None
}

fn fingerprint(log_n: u32, moduli: &[u64], special: &[u64], log_scale: u32, digit_primes: usize) -> Fingerprint {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"blindfold-ckks parameters v1");
    hasher.update(&log_n.to_le_bytes());
    hasher.update(&(moduli.len() as u32).to_le_bytes());
    for q in moduli {
        hasher.update(&q.to_le_bytes());
    }
    hasher.update(&(special.len() as u32).to_le_bytes());
    for p in special {
        hasher.update(&p.to_le_bytes());
    }
    hasher.update(&log_scale.to_le_bytes());
    // One prime per digit was the only shape before digits had a size: those sets keep their
    // fingerprints.
    if digit_primes != 1 {
        hasher.update(b"digit primes");
        hasher.update(&(digit_primes as u32).to_le_bytes());
    }
    Fingerprint(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_128_bit_secure() {
        for preset in Preset::ALL {
            let params = preset.parameters().unwrap();
            let bound = security_bound(params.log_n()).unwrap() as f64;
            assert!(params.log_qp() <= bound, "{}: {} > {}", preset.name(), params.log_qp(), bound);
            assert_eq!(params.security_bits(), 128);
            assert_eq!(Preset::from_name(preset.name()), Some(preset));
        }
    }

    #[test]
    fn one_bit_over_the_bound_is_refused_with_the_excess() {
        // N = 2^14 allows 438 bits: 58 + 8·40 + 60 = 438 passes, 439 does not.
        let forty = [40; 8];
        let with_q0 = |bits: u32| [&[bits][..], &forty[..]].concat();
        assert!(ParametersBuilder::new(14).ciphertext_bits(&with_q0(58)).special_bits(&[60]).build().is_ok());
        match ParametersBuilder::new(14).ciphertext_bits(&with_q0(59)).special_bits(&[60]).build() {
            Err(error @ Error::Insecure { bound: 438, excess, .. }) => {
                assert!(excess > 0.0 && excess <= 1.0, "{excess}");
                assert!(error.to_string().contains("exceeds the 128-bit bound of 438 bits"), "{error}");
            }
            other => panic!("expected an insecure refusal, got {other:?}"),
        }
    }

    #[test]
    fn primes_are_distinct_ntt_friendly_and_deterministic() {
        let a = Preset::N14Depth7.parameters().unwrap();
        let b = Preset::N14Depth7.parameters().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mut all: Vec<u64> = a.moduli().iter().chain(a.special_moduli()).copied().collect();
        for q in &all {
            assert_eq!(q % (2 * a.n() as u64), 1);
            assert!(is_prime(*q));
        }
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), a.moduli().len() + a.special_moduli().len());
        assert_ne!(a.fingerprint(), Preset::N13Depth2.parameters().unwrap().fingerprint());
    }

    #[test]
    fn test_only_sets_are_marked_insecure() {
        let toy = ParametersBuilder::new(10)
            .ciphertext_bits(&[50, 40])
            .special_bits(&[50])
            .build_insecure_for_tests()
            .unwrap();
        assert_eq!(toy.security_bits(), 0);
        assert!(ParametersBuilder::new(10).ciphertext_bits(&[50, 40]).special_bits(&[50]).build().is_err());
    }
}
