//! Versioned binary formats for parameters, ciphertexts (full and seeded), public keys,
//! relinearization keys, Galois keys, and — under a different magic — secret keys.
//!
//! Every object starts with a 40-byte header: magic (`BFCK`, or `BFSK` for a secret key),
//! format version (u16 LE), object kind (u8), a zero byte, and the 32-byte parameter
//! fingerprint. Residues are bit-packed with exactly ⌈log2 q_i⌉ bits each (LSB first), which
//! is what makes a ciphertext of 30-bit primes half the size of one stored in 64-bit words.
//! Loaders check the fingerprint, every length and level before allocating, and every residue
//! against its prime; any violation is an [`Error::Malformed`] naming the object and offset.
//! `FORMAT.md` next to this crate describes the layout byte by byte.

use std::collections::BTreeMap;

use crate::ciphertext::{Ciphertext, SeededCiphertext};
use crate::context::Context;
use crate::keys::{GaloisKeys, KeySwitchKey, PublicKey, RelinKey, SecretKey, expand_switch_key_a};
use crate::params::{Fingerprint, Parameters};
use crate::poly::RnsPoly;
use crate::{Error, Result};
use zeroize::Zeroizing;

const MAGIC: [u8; 4] = *b"BFCK";
const SECRET_MAGIC: [u8; 4] = *b"BFSK";
/// Version 2 added the digit size to parameters and the level to key-switching keys; version 1
/// objects (one prime per digit, keys at the top level) still load.
const VERSION: u16 = 2;
const HEADER_LEN: usize = 40;

/// What a serialized object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Parameters = 1,
    Ciphertext = 2,
    SeededCiphertext = 3,
    PublicKey = 4,
    RelinKey = 5,
    GaloisKeys = 6,
    SecretKey = 7,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Parameters => "parameters",
            Kind::Ciphertext => "ciphertext",
            Kind::SeededCiphertext => "seeded ciphertext",
            Kind::PublicKey => "public key",
            Kind::RelinKey => "relinearization key",
            Kind::GaloisKeys => "Galois keys",
            Kind::SecretKey => "secret key",
        }
    }
}

/// Refuses an object made for another parameter set.
pub(crate) fn check_fingerprint(context: &Context, found: Fingerprint) -> Result<()> {
    let expected = context.params.fingerprint();
    if expected != found {
        return Err(Error::FingerprintMismatch { expected: expected.short(), found: found.short() });
    }
    Ok(())
}

// ---- public API ---------------------------------------------------------------------------

impl Parameters {
    /// Serializes the parameter set.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::Parameters, self.fingerprint());
        w.u8(self.log_n() as u8);
        w.u8(self.moduli().len() as u8);
        self.moduli().iter().for_each(|&q| w.u64(q));
        w.u8(self.special_moduli().len() as u8);
        self.special_moduli().iter().for_each(|&p| w.u64(p));
        w.u8(self.log_scale() as u8);
        w.u8(self.digit_primes() as u8);
        w.finish()
    }

    /// Loads a parameter set, re-running every check (security included) and comparing the
    /// recomputed fingerprint with the stored one.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (mut r, fingerprint) = Reader::open(bytes, Kind::Parameters, MAGIC)?;
        let log_n = r.u8()? as u32;
        let count = r.u8()? as usize;
        if count == 0 || count > 64 {
            return Err(r.error(format!("{count} ciphertext primes (1..=64 allowed)")));
        }
        let moduli = (0..count).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
        let special_count = r.u8()? as usize;
        if special_count > 8 {
            return Err(r.error(format!("{special_count} special primes (at most 8)")));
        }
        let special = (0..special_count).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
        let log_scale = r.u8()? as u32;
        let digit_primes = if r.version >= 2 { r.u8()? as usize } else { 1 };
        r.end()?;
        let params = Parameters::from_parts(log_n, moduli, special, log_scale, digit_primes, true)?;
        if params.fingerprint() != fingerprint {
            return Err(Error::FingerprintMismatch {
                expected: params.fingerprint().short(),
                found: fingerprint.short(),
            });
        }
        Ok(params)
    }
}

impl Ciphertext {
    /// Serializes the ciphertext.
    pub fn to_bytes(&self, context: &Context) -> Vec<u8> {
        let mut w = Writer::new(Kind::Ciphertext, context.params.fingerprint());
        w.u8(self.level as u8);
        w.u8(self.parts.len() as u8);
        w.f64(self.scale);
        for part in &self.parts {
            w.poly(context, part, &context.basis(self.level + 1, false));
        }
        w.finish()
    }

    /// Loads a ciphertext made under `context`'s parameters.
    pub fn from_bytes(context: &Context, bytes: &[u8]) -> Result<Self> {
        let (mut r, fingerprint) = Reader::open(bytes, Kind::Ciphertext, MAGIC)?;
        check_fingerprint(context, fingerprint)?;
        let level = r.level(context)?;
        let size = r.u8()? as usize;
        if !(2..=3).contains(&size) {
            return Err(r.error(format!("{size} parts (2 or 3 allowed)")));
        }
        let scale = r.scale()?;
        let basis = context.basis(level + 1, false);
        let parts = (0..size).map(|_| r.poly(context, &basis)).collect::<Result<Vec<_>>>()?;
        r.end()?;
        Ok(Ciphertext { parts, level, scale })
    }
}

impl SeededCiphertext {
    /// Serializes (c0, seed): half the size of the full ciphertext.
    pub fn to_bytes(&self, context: &Context) -> Vec<u8> {
        let mut w = Writer::new(Kind::SeededCiphertext, context.params.fingerprint());
        w.u8(self.level as u8);
        w.f64(self.scale);
        w.bytes(&self.seed);
        w.poly(context, &self.c0, &context.basis(self.level + 1, false));
        w.finish()
    }

    /// Loads a seeded ciphertext made under `context`'s parameters.
    pub fn from_bytes(context: &Context, bytes: &[u8]) -> Result<Self> {
        let (mut r, fingerprint) = Reader::open(bytes, Kind::SeededCiphertext, MAGIC)?;
        check_fingerprint(context, fingerprint)?;
        let level = r.level(context)?;
        let scale = r.scale()?;
        let seed = r.seed()?;
        let c0 = r.poly(context, &context.basis(level + 1, false))?;
        r.end()?;
        Ok(SeededCiphertext { c0, seed, level, scale })
    }

    /// The serialized size in bytes at `level` (for planning uploads).
    pub fn serialized_len(context: &Context, level: usize) -> usize {
        HEADER_LEN + 1 + 8 + 32 + packed_poly_len(context, &context.basis(level + 1, false))
    }
}

impl PublicKey {
    /// Serializes the public key.
    pub fn to_bytes(&self, context: &Context) -> Vec<u8> {
        let mut w = Writer::new(Kind::PublicKey, self.fingerprint);
        let basis = context.basis(context.max_level() + 1, false);
        w.poly(context, &self.b, &basis);
        w.poly(context, &self.a, &basis);
        w.finish()
    }

    /// Loads a public key made under `context`'s parameters.
    pub fn from_bytes(context: &Context, bytes: &[u8]) -> Result<Self> {
        let (mut r, fingerprint) = Reader::open(bytes, Kind::PublicKey, MAGIC)?;
        check_fingerprint(context, fingerprint)?;
        let basis = context.basis(context.max_level() + 1, false);
        let b = r.poly(context, &basis)?;
        let a = r.poly(context, &basis)?;
        r.end()?;
        Ok(PublicKey { b, a, fingerprint })
    }
}

impl RelinKey {
    /// Serializes the key (the b_j and the seed of the a_j).
    pub fn to_bytes(&self, context: &Context) -> Vec<u8> {
        let mut w = Writer::new(Kind::RelinKey, self.fingerprint);
        w.switch_key(context, &self.key);
        w.finish()
    }

    /// Bytes of [`RelinKey::to_bytes`] for the key [`crate::KeyGenerator::relin_key`] makes under
    /// `context` (it serves every level).
    pub fn serialized_len(context: &Context) -> usize {
        HEADER_LEN + switch_key_len(context, context.max_level())
    }

    /// Loads a relinearization key made under `context`'s parameters.
    pub fn from_bytes(context: &Context, bytes: &[u8]) -> Result<Self> {
        let (mut r, fingerprint) = Reader::open(bytes, Kind::RelinKey, MAGIC)?;
        check_fingerprint(context, fingerprint)?;
        let key = r.switch_key(context)?;
        r.end()?;
        Ok(RelinKey { key, fingerprint })
    }
}

impl GaloisKeys {
    /// Serializes the keys.
    pub fn to_bytes(&self, context: &Context) -> Vec<u8> {
        let mut w = Writer::new(Kind::GaloisKeys, context.params.fingerprint());
        w.u32(self.keys.len() as u32);
        for (&g, key) in &self.keys {
            w.u64(g);
            w.switch_key(context, key);
        }
        w.finish()
    }

    /// Bytes of [`GaloisKeys::to_bytes`] for the keys [`crate::KeyGenerator::galois_keys_at`]
    /// makes of `steps` under `context`: what a key bundle for a plan must hold, to the byte.
    pub fn serialized_len_at(context: &Context, steps: &[(i64, usize)]) -> usize {
        let top = context.max_level();
        let levels =
            crate::keys::galois_levels(steps.iter().map(|&(s, level)| (context.galois_element(s), level.min(top))));
        HEADER_LEN + 4 + levels.values().map(|&level| 8 + switch_key_len(context, level)).sum::<usize>()
    }

    /// Loads Galois keys made under `context`'s parameters.
    pub fn from_bytes(context: &Context, bytes: &[u8]) -> Result<Self> {
        let mut loader = GaloisKeysLoader::new();
        loader.push(context, bytes)?;
        loader.finish()
    }
}

/// Loads serialized Galois keys one key at a time from bytes that arrive in pieces (a key
/// bundle streamed from storage): it holds the keys loaded so far and at most one key's bytes,
/// never the whole serialized object beside them. [`GaloisKeys::from_bytes`] is this loader
/// fed at once.
#[derive(Debug, Default)]
pub struct GaloisKeysLoader {
    /// Bytes received and not parsed yet (less than one key, or one header).
    pending: Vec<u8>,
    /// The object offset of `pending[0]`, for errors.
    consumed: usize,
    header: Option<GaloisHeader>,
    keys: BTreeMap<u64, KeySwitchKey>,
}

#[derive(Debug, Clone, Copy)]
struct GaloisHeader {
    version: u16,
    fingerprint: Fingerprint,
    count: usize,
}

impl GaloisKeysLoader {
    /// A loader expecting the object's first byte.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next bytes of the object and loads every key they complete. `context` must be
    /// the same on every call.
    pub fn push(&mut self, context: &Context, bytes: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        let parsed = loop {
            let rest = &self.pending[at..];
            let need = match self.next_len(context, rest) {
                Ok(Some(need)) if need <= rest.len() => need,
                Ok(_) => break Ok(()),
                Err(error) => break Err(error),
            };
            if let Err(error) = self.parse(context, at, need) {
                break Err(error);
            }
            at += need;
        };
        self.pending.drain(..at);
        self.consumed += at;
        parsed
    }

    /// The keys, once every byte of the object has been pushed.
    pub fn finish(self) -> Result<GaloisKeys> {
        let truncated = |reason: String| Error::Malformed {
            object: Kind::GaloisKeys.name(),
            offset: self.consumed + self.pending.len(),
            reason,
        };
        let Some(header) = self.header else {
            return Err(truncated(format!(
                "truncated: {} bytes of a {}-byte header",
                self.pending.len(),
                HEADER_LEN + 4
            )));
        };
        if self.keys.len() < header.count || !self.pending.is_empty() {
            return Err(truncated(format!(
                "truncated: {} of {} keys, and {} bytes of the next",
                self.keys.len(),
                header.count,
                self.pending.len()
            )));
        }
        Ok(GaloisKeys { keys: self.keys, fingerprint: Some(header.fingerprint) })
    }

    /// Bytes the next item (the header, or the next key) takes, if `rest` tells already.
    fn next_len(&self, context: &Context, rest: &[u8]) -> Result<Option<usize>> {
        let Some(header) = self.header else { return Ok(Some(HEADER_LEN + 4)) };
        if self.keys.len() == header.count {
            if rest.is_empty() {
                return Ok(None);
            }
            let offset = self.consumed + (self.pending.len() - rest.len());
            return Err(Error::Malformed {
                object: Kind::GaloisKeys.name(),
                offset,
                reason: format!("unexpected bytes after the {} keys", header.count),
            });
        }
        // Galois element and seed, then (version 2) the level, then the digit count.
        let prefix = 8 + 32 + usize::from(header.version >= 2);
        let Some(&level) = rest.get(prefix - 1).filter(|_| header.version >= 2) else {
            return Ok(if header.version >= 2 {
                None
            } else {
                Some(prefix + 1 + switch_key_body_len(context, context.max_level()))
            });
        };
        // An impossible level is reported by the parse, on this key's own bytes.
        let level = usize::from(level).min(context.max_level());
        Ok(Some(prefix + 1 + switch_key_body_len(context, level)))
    }

    fn parse(&mut self, context: &Context, at: usize, len: usize) -> Result<()> {
        let bytes = &self.pending[at..at + len];
        let base = self.consumed + at;
        let Some(header) = self.header else {
            let (mut r, fingerprint) = Reader::open(bytes, Kind::GaloisKeys, MAGIC)?;
            check_fingerprint(context, fingerprint)?;
            let count = r.u32()? as usize;
            if count > context.n {
                return Err(r.error(format!("{count} keys, more than the ring's {} Galois elements", context.n)));
            }
            self.header = Some(GaloisHeader { version: r.version, fingerprint, count });
            return Ok(());
        };
        let mut r = Reader { bytes, offset: 0, base, object: Kind::GaloisKeys.name(), version: header.version };
        let two_n = 2 * context.n as u64;
        let g = r.u64()?;
        if g % 2 == 0 || g >= two_n || g == 1 {
            return Err(r.error(format!("Galois element {g} is not an odd number in 3..2N")));
        }
        let key = r.switch_key(context)?;
        r.end()?;
        if self.keys.insert(g, key).is_some() {
            return Err(Reader { offset: 0, ..r }.error(format!("Galois element {g} appears twice")));
        }
        Ok(())
    }
}

impl SecretKey {
    /// Serializes the secret key under its own magic (`BFSK`), 2 bits per coefficient. The
    /// bytes are the key: they come back zeroizing, and are built in one allocation of their
    /// final size, so no reallocation leaves a copy behind.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let packed_len = self.coefficients.len().div_ceil(4);
        let mut w = Writer::with_magic(SECRET_MAGIC, Kind::SecretKey, self.fingerprint);
        w.out.reserve_exact(4 + packed_len);
        w.u32(self.coefficients.len() as u32);
        let mut packed = Zeroizing::new(vec![0u8; packed_len]);
        for (i, &c) in self.coefficients.iter().enumerate() {
            packed[i / 4] |= ((c + 1) as u8) << (2 * (i % 4));
        }
        w.bytes(&packed);
        Zeroizing::new(w.finish())
    }

    /// Loads a secret key for `context`.
    pub fn from_bytes(context: &Context, bytes: &[u8]) -> Result<Self> {
        let (mut r, fingerprint) = Reader::open(bytes, Kind::SecretKey, SECRET_MAGIC)?;
        check_fingerprint(context, fingerprint)?;
        let n = r.u32()? as usize;
        if n != context.n {
            return Err(r.error(format!("{n} coefficients, expected {}", context.n)));
        }
        let packed = r.take(n.div_ceil(4))?;
        // Allocated once at its final size (no reallocation copies); the key owns and zeroizes it.
        let mut coefficients = Vec::with_capacity(n);
        for i in 0..n {
            let code = (packed[i / 4] >> (2 * (i % 4))) & 3;
            if code == 3 {
                return Err(r.error(format!("coefficient {i} is not ternary")));
            }
            coefficients.push(code as i8 - 1);
        }
        r.end()?;
        Ok(SecretKey::from_coefficients(context, coefficients))
    }
}

// ---- writer and reader --------------------------------------------------------------------

/// Bytes of a serialized key-switching key for ciphertexts up to `level`: seed, level, digit
/// count, and one packed polynomial per digit over the level's primes and the special ones.
fn switch_key_len(context: &Context, level: usize) -> usize {
    32 + 1 + 1 + switch_key_body_len(context, level)
}

/// Bytes of a key-switching key's polynomials (what follows the digit count).
fn switch_key_body_len(context: &Context, level: usize) -> usize {
    context.params.digits_at(level).len() * packed_poly_len(context, &context.basis(level + 1, true))
}

fn packed_poly_len(context: &Context, basis: &[usize]) -> usize {
    basis.iter().map(|&i| (context.n * bits_of(context.moduli[i].value)).div_ceil(8)).sum()
}

fn bits_of(q: u64) -> usize {
    (64 - q.leading_zeros()) as usize
}

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn new(kind: Kind, fingerprint: Fingerprint) -> Self {
        Self::with_magic(MAGIC, kind, fingerprint)
    }

    fn with_magic(magic: [u8; 4], kind: Kind, fingerprint: Fingerprint) -> Self {
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(&magic);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(kind as u8);
        out.push(0);
        out.extend_from_slice(&fingerprint.0);
        Self { out }
    }

    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.out.extend_from_slice(v);
    }

    fn poly(&mut self, context: &Context, poly: &RnsPoly, basis: &[usize]) {
        for (row, &index) in poly.limbs_iter().zip(basis) {
            let bits = bits_of(context.moduli[index].value);
            let start = self.out.len();
            self.out.resize(start + (row.len() * bits).div_ceil(8), 0);
            let target = &mut self.out[start..];
            let (mut acc, mut filled, mut pos) = (0u128, 0usize, 0usize);
            for &x in row {
                acc |= (x as u128) << filled;
                filled += bits;
                while filled >= 8 {
                    target[pos] = acc as u8;
                    acc >>= 8;
                    filled -= 8;
                    pos += 1;
                }
            }
            if filled > 0 {
                target[pos] = acc as u8;
            }
        }
    }

    fn switch_key(&mut self, context: &Context, key: &KeySwitchKey) {
        self.bytes(&key.seed);
        self.u8(key.level as u8);
        self.u8(key.b.len() as u8);
        let basis = context.basis(key.level + 1, true);
        for b in &key.b {
            self.poly(context, b, &basis);
        }
    }

    fn finish(self) -> Vec<u8> {
        self.out
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    /// The object offset of `bytes[0]` (a piece of an object loaded piecewise), for errors.
    base: usize,
    object: &'static str,
    version: u16,
}

impl<'a> Reader<'a> {
    fn open(bytes: &'a [u8], kind: Kind, magic: [u8; 4]) -> Result<(Self, Fingerprint)> {
        let mut r = Reader { bytes, offset: 0, base: 0, object: kind.name(), version: VERSION };
        let found_magic = r.take(4)?;
        if found_magic != magic {
            let reason = if found_magic == SECRET_MAGIC {
                "this is a secret key, which is never accepted here".to_owned()
            } else {
                format!(
                    "magic {:?}, expected {:?}",
                    String::from_utf8_lossy(found_magic),
                    String::from_utf8_lossy(&magic)
                )
            };
            return Err(Error::Malformed { object: kind.name(), offset: 0, reason });
        }
        let version = u16::from_le_bytes([r.u8()?, r.u8()?]);
        if !(1..=VERSION).contains(&version) {
            return Err(r.error(format!("format version {version}, this build reads versions 1 to {VERSION}")));
        }
        r.version = version;
        let found_kind = r.u8()?;
        if found_kind != kind as u8 {
            return Err(r.error(format!("object kind {found_kind}, expected {} ({})", kind as u8, kind.name())));
        }
        if r.u8()? != 0 {
            return Err(r.error("reserved byte is not zero".into()));
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(r.take(32)?);
        Ok((r, Fingerprint(fingerprint)))
    }

    fn error(&self, reason: String) -> Error {
        Error::Malformed { object: self.object, offset: self.base + self.offset, reason }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        if len > self.remaining() {
            return Err(self.error(format!("truncated: {len} bytes needed, {} left", self.remaining())));
        }
        let slice = &self.bytes[self.offset..self.offset + len];
        self.offset += len;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn seed(&mut self) -> Result<[u8; 32]> {
        let mut seed = [0u8; 32];
        seed.copy_from_slice(self.take(32)?);
        Ok(seed)
    }

    fn level(&mut self, context: &Context) -> Result<usize> {
        let level = self.u8()? as usize;
        if level > context.max_level() {
            return Err(self.error(format!("level {level} above the chain's top level {}", context.max_level())));
        }
        Ok(level)
    }

    fn scale(&mut self) -> Result<f64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        let scale = f64::from_le_bytes(b);
        if !(scale.is_finite() && scale >= 1.0 && scale < 2f64.powi(1000)) {
            return Err(self.error(format!("scale {scale} is not a finite number ≥ 1")));
        }
        Ok(scale)
    }

    fn poly(&mut self, context: &Context, basis: &[usize]) -> Result<RnsPoly> {
        let needed = packed_poly_len(context, basis);
        if needed > self.remaining() {
            return Err(self.error(format!("truncated: a polynomial needs {needed} bytes, {} left", self.remaining())));
        }
        let mut poly = RnsPoly::zero(context.n, basis.len());
        for (limb, &index) in basis.iter().enumerate() {
            let q = context.moduli[index].value;
            let bits = bits_of(q);
            let start = self.offset;
            let source = self.take((context.n * bits).div_ceil(8))?;
            let mask = (1u128 << bits) - 1;
            let (mut acc, mut filled, mut pos) = (0u128, 0usize, 0usize);
            for (k, out) in poly.limb_mut(limb).iter_mut().enumerate() {
                while filled < bits {
                    acc |= (source[pos] as u128) << filled;
                    pos += 1;
                    filled += 8;
                }
                let value = (acc & mask) as u64;
                acc >>= bits;
                filled -= bits;
                if value >= q {
                    return Err(Error::Malformed {
                        object: self.object,
                        offset: start + k * bits / 8,
                        reason: format!("residue {value} of prime #{limb} is not below {q}"),
                    });
                }
                *out = value;
            }
            if acc != 0 {
                // Canonical encoding: the padding bits of a row's last byte are zero.
                return Err(Error::Malformed {
                    object: self.object,
                    offset: self.offset - 1,
                    reason: format!("non-zero padding bits after prime #{limb}"),
                });
            }
        }
        Ok(poly)
    }

    fn switch_key(&mut self, context: &Context) -> Result<KeySwitchKey> {
        let seed = self.seed()?;
        let level = if self.version >= 2 { self.level(context)? } else { context.max_level() };
        let digits = self.u8()? as usize;
        let expected = context.params.digits_at(level).len();
        if digits != expected {
            return Err(self.error(format!("{digits} key digits, expected {expected} at level {level}")));
        }
        let basis = context.basis(level + 1, true);
        let b = (0..digits).map(|_| self.poly(context, &basis)).collect::<Result<Vec<_>>>()?;
        Ok(KeySwitchKey { seed, level, b, a: expand_switch_key_a(context, &seed, level) })
    }

    fn end(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.error(format!("{} unexpected trailing bytes", self.remaining())));
        }
        Ok(())
    }
}
