//! The batch header: what a batch is (kind, parameters, model, packing, shape, counts, level,
//! scale, key set), how its body is laid out, and the caller's expectations checked against it.

use std::fmt;
use std::io::Read;

use blindfold_ckks::Fingerprint;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::framing::{
    CHUNK_OVERHEAD, ContentDigest, FORMAT_VERSION, SECRET_KEY_MAGIC, Source, TRAILER_LEN, describe_magic, le_u16,
    le_u32, le_u64, reads_version,
};

/// Largest header a reader accepts (a real one is at most 311 bytes).
pub const MAX_HEADER_LEN: u32 = 4096;
/// Most ciphertexts in one batch.
pub const MAX_CIPHERTEXTS: u64 = 1 << 24;
/// Most images in one batch.
pub const MAX_IMAGES: u64 = 1 << 24;
/// Largest serialized ciphertext (N = 2^16 with 60 primes of 60 bits, full form, is ≈ 59 MiB).
pub const MAX_CIPHERTEXT_LEN: u32 = 1 << 28;
/// Largest chunk payload; also the most memory a reader holds for one chunk.
pub const MAX_CHUNK_PAYLOAD: u32 = 1 << 28;
/// The chunk payload a writer aims for unless told otherwise.
pub const DEFAULT_CHUNK_TARGET: u32 = 4 << 20;
/// Longest model name or version, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Most tensor dimensions.
pub const MAX_RANK: usize = 8;

/// Bytes before the variable part of the header.
const FIXED_LEN: usize = 96;
/// Bytes of a result's origin (job id, input digest), after the shape (version 2).
const ORIGIN_LEN: usize = 16 + 32;

/// Which of the two batch containers a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchKind {
    /// Seeded ciphertexts the hospital uploads (magic `BFIB`).
    Input,
    /// Full ciphertexts the worker writes back, usually at the lowest level (magic `BFRB`).
    Result,
}

impl BatchKind {
    /// The four-byte magic that opens the file.
    pub fn magic(self) -> [u8; 4] {
        match self {
            BatchKind::Input => *b"BFIB",
            BatchKind::Result => *b"BFRB",
        }
    }

    fn described(self) -> &'static str {
        match self {
            BatchKind::Input => "an input batch (\"BFIB\")",
            BatchKind::Result => "a result batch (\"BFRB\")",
        }
    }
}

/// How images are laid out in ciphertexts: the one packing vocabulary of every crate.
pub use blindfold_packing::Packing;

/// What a batch holds. The writer takes one; the reader returns the one in the file.
///
/// The mapping from batch positions to the hospital's file names is deliberately *not* here:
/// file names can identify patients, and batches go to the service. The client keeps it beside
/// the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchHeader {
    /// The model's name (1–64 printable ASCII characters, no spaces).
    pub model: String,
    /// The model's version (same rule).
    pub model_version: String,
    /// How images are packed.
    pub packing: Packing,
    /// The tensor shape the ciphertexts carry (inputs: one image, e.g. `[1, 28, 28]`; results:
    /// the output, e.g. `[10]`); 1–8 dimensions, each at least 1.
    pub shape: Vec<u32>,
    /// How many images the batch covers (1 ..= 2^24).
    pub image_count: u64,
    /// How many ciphertexts the body holds (1 ..= 2^24).
    pub ciphertext_count: u64,
    /// The level of every ciphertext.
    pub level: usize,
    /// The scale of every ciphertext (bit-for-bit).
    pub scale: f64,
    /// The key set the ciphertexts were made with (inputs) or for (results).
    pub key_set: Uuid,
    /// Results: the input and the job they were computed from, so the hospital can refuse a
    /// stale or swapped result. Every result written from format version 2 has one; inputs and
    /// version-1 results have none.
    pub origin: Option<Origin>,
}

/// What a result batch was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The job it was computed for; `None` when evaluated outside the service (`blindfold
    /// eval`), written as the nil UUID.
    pub job: Option<Uuid>,
    /// The input batch's content digest (the BLAKE3 of its trailer, which the hospital's names
    /// sidecar records at encryption).
    pub input: ContentDigest,
}

impl BatchHeader {
    /// Checks every field against the format's rules.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, reason: String| Err(Error::InvalidHeader { field, reason });
        check_name("model", &self.model).or_else(|reason| invalid("model", reason))?;
        check_name("model version", &self.model_version).or_else(|reason| invalid("model version", reason))?;
        if self.shape.is_empty() || self.shape.len() > MAX_RANK {
            return invalid("shape", format!("{} dimensions (1..={MAX_RANK} allowed)", self.shape.len()));
        }
        if self.shape.contains(&0) {
            return invalid("shape", format!("{:?} has a zero dimension", self.shape));
        }
        if !(1..=MAX_IMAGES).contains(&self.image_count) {
            return invalid("image count", format!("{} (1..={MAX_IMAGES} allowed)", self.image_count));
        }
        if !(1..=MAX_CIPHERTEXTS).contains(&self.ciphertext_count) {
            return invalid("ciphertext count", format!("{} (1..={MAX_CIPHERTEXTS} allowed)", self.ciphertext_count));
        }
        if self.level > 63 {
            return invalid("level", format!("{} (0..=63 allowed)", self.level));
        }
        if !(self.scale.is_finite() && self.scale >= 1.0) {
            return invalid("scale", format!("{} is not a finite number ≥ 1", self.scale));
        }
        Ok(())
    }
}

fn check_name(what: &str, name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("{what} is {} bytes long (1..={MAX_NAME_LEN} allowed)", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("{name:?} contains {c:?}; only printable ASCII without spaces is allowed"));
    }
    Ok(())
}

/// How a batch body is laid out: fixed-size ciphertexts in chunks of a fixed count (the last
/// chunk holds the rest). Every offset in the file follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    header_len: u32,
    ciphertext_len: u32,
    ciphertexts_per_chunk: u32,
    ciphertext_count: u64,
}

impl Layout {
    pub(crate) fn new(header_len: u32, ciphertext_len: u32, ciphertexts_per_chunk: u32, ciphertext_count: u64) -> Self {
        Self { header_len, ciphertext_len, ciphertexts_per_chunk, ciphertext_count }
    }

    /// The header's size in bytes.
    pub fn header_len(&self) -> u32 {
        self.header_len
    }
    /// The size of every serialized ciphertext.
    pub fn ciphertext_len(&self) -> u32 {
        self.ciphertext_len
    }
    /// Ciphertexts in every chunk but the last.
    pub fn ciphertexts_per_chunk(&self) -> u32 {
        self.ciphertexts_per_chunk
    }
    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        // Both at most 2^24 and per-chunk ≥ 1, so the quotient fits.
        self.ciphertext_count.div_ceil(u64::from(self.ciphertexts_per_chunk)) as u32
    }
    /// Ciphertexts in chunk `index`.
    pub fn ciphertexts_in_chunk(&self, index: u32) -> u64 {
        let per = u64::from(self.ciphertexts_per_chunk);
        (self.ciphertext_count - u64::from(index) * per).min(per)
    }
    /// Payload bytes of chunk `index`.
    pub fn chunk_payload_len(&self, index: u32) -> u64 {
        self.ciphertexts_in_chunk(index) * u64::from(self.ciphertext_len)
    }
    /// Where chunk `index` starts.
    pub fn chunk_offset(&self, index: u32) -> u64 {
        let full = u64::from(self.ciphertexts_per_chunk) * u64::from(self.ciphertext_len) + CHUNK_OVERHEAD;
        u64::from(self.header_len) + u64::from(index) * full
    }
    /// Where ciphertext `index` starts (for ranged reads).
    pub fn ciphertext_offset(&self, index: u64) -> u64 {
        let per = u64::from(self.ciphertexts_per_chunk);
        let chunk = (index / per) as u32;
        self.chunk_offset(chunk) + 12 + (index % per) * u64::from(self.ciphertext_len)
    }
    /// The payload bytes of all chunks together (what the trailer records).
    pub fn payload_total(&self) -> u64 {
        self.ciphertext_count * u64::from(self.ciphertext_len)
    }
    /// The exact size of the whole file.
    pub fn file_len(&self) -> u64 {
        u64::from(self.header_len) + self.payload_total() + u64::from(self.chunk_count()) * CHUNK_OVERHEAD + TRAILER_LEN
    }
}

/// What the caller expects of a batch; every field that is set is checked when the batch is
/// opened, before any ciphertext is read.
///
/// ```
/// use blindfold_batch::{Expect, Packing};
/// let expect = Expect::new().model("mnist-cryptonets", "1").packing(Packing::Throughput).image_count(64);
/// # let _ = expect;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expect {
    fingerprint: Option<Fingerprint>,
    model: Option<(String, String)>,
    packing: Option<Packing>,
    key_set: Option<Uuid>,
    image_count: Option<u64>,
    ciphertext_count: Option<u64>,
    level: Option<usize>,
    shape: Option<Vec<u32>>,
}

impl Expect {
    /// Expects nothing beyond a well-formed file.
    pub fn new() -> Self {
        Self::default()
    }
    /// The parameter fingerprint (typed readers always check their context's as well).
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }
    /// The model name and version.
    pub fn model(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.model = Some((name.into(), version.into()));
        self
    }
    /// The packing.
    pub fn packing(mut self, packing: Packing) -> Self {
        self.packing = Some(packing);
        self
    }
    /// The key set.
    pub fn key_set(mut self, key_set: Uuid) -> Self {
        self.key_set = Some(key_set);
        self
    }
    /// The number of images.
    pub fn image_count(mut self, count: u64) -> Self {
        self.image_count = Some(count);
        self
    }
    /// The number of ciphertexts.
    pub fn ciphertext_count(mut self, count: u64) -> Self {
        self.ciphertext_count = Some(count);
        self
    }
    /// The level of the ciphertexts.
    pub fn level(mut self, level: usize) -> Self {
        self.level = Some(level);
        self
    }
    /// The tensor shape.
    pub fn shape(mut self, shape: Vec<u32>) -> Self {
        self.shape = Some(shape);
        self
    }

    /// Checks a header against every expectation that is set.
    pub(crate) fn check(&self, header: &BatchHeader, fingerprint: Fingerprint) -> Result<()> {
        fn mismatch<T: fmt::Display>(field: &'static str, expected: T, found: T) -> Error {
            Error::Mismatch { field, expected: expected.to_string(), found: found.to_string() }
        }
        if let Some(expected) = self.fingerprint
            && expected != fingerprint
        {
            return Err(Error::FingerprintMismatch {
                object: "batch",
                against: "the key set",
                expected: expected.short(),
                found: fingerprint.short(),
            });
        }
        if let Some((name, version)) = &self.model {
            if *name != header.model {
                return Err(mismatch("model", name, &header.model));
            }
            if *version != header.model_version {
                return Err(mismatch("model version", version, &header.model_version));
            }
        }
        if let Some(key_set) = self.key_set
            && key_set != header.key_set
        {
            return Err(mismatch("key set", key_set, header.key_set));
        }
        if let Some(packing) = self.packing
            && packing != header.packing
        {
            return Err(mismatch("packing", packing, header.packing));
        }
        if let Some(count) = self.image_count
            && count != header.image_count
        {
            return Err(mismatch("image count", count, header.image_count));
        }
        if let Some(count) = self.ciphertext_count
            && count != header.ciphertext_count
        {
            return Err(mismatch("ciphertext count", count, header.ciphertext_count));
        }
        if let Some(level) = self.level
            && level != header.level
        {
            return Err(mismatch("level", level, header.level));
        }
        if let Some(shape) = &self.shape
            && *shape != header.shape
        {
            return Err(mismatch("shape", format!("{shape:?}"), format!("{:?}", header.shape)));
        }
        Ok(())
    }
}

// ---- encoding -----------------------------------------------------------------------------

/// Serializes the header (already validated) with its layout fields and CRC.
pub(crate) fn encode(
    kind: BatchKind,
    fingerprint: Fingerprint,
    header: &BatchHeader,
    ciphertext_len: u32,
    per_chunk: u32,
) -> Vec<u8> {
    let origin = header.origin.filter(|_| kind == BatchKind::Result);
    let len = FIXED_LEN
        + 1
        + header.model.len()
        + 1
        + header.model_version.len()
        + 1
        + 4 * header.shape.len()
        + origin.map_or(0, |_| ORIGIN_LEN)
        + 4;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&kind.magic());
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&fingerprint.0);
    out.extend_from_slice(header.key_set.as_bytes());
    out.push(header.packing.code());
    out.push(header.level as u8);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&header.scale.to_le_bytes());
    out.extend_from_slice(&header.image_count.to_le_bytes());
    out.extend_from_slice(&header.ciphertext_count.to_le_bytes());
    out.extend_from_slice(&ciphertext_len.to_le_bytes());
    out.extend_from_slice(&per_chunk.to_le_bytes());
    for name in [&header.model, &header.model_version] {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    out.push(header.shape.len() as u8);
    for dim in &header.shape {
        out.extend_from_slice(&dim.to_le_bytes());
    }
    if let Some(origin) = origin {
        out.extend_from_slice(origin.job.unwrap_or(Uuid::nil()).as_bytes());
        out.extend_from_slice(&origin.input.0);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A header as read from a file.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) header: BatchHeader,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) layout: Layout,
}

/// Reads and validates a batch header of `kind`: magic, version, length, CRC, then every field.
pub(crate) fn decode<R: Read>(source: &mut Source<R>, kind: BatchKind) -> Result<Decoded> {
    let place = || "header".to_owned();
    let mut buf = Vec::with_capacity(MAX_HEADER_LEN as usize);
    // The magic alone first, so that a short file of another kind is still named correctly.
    source.read_into(&mut buf, 4, &|| "header".to_owned())?;
    if buf[..4] != kind.magic() {
        if buf[..4] == SECRET_KEY_MAGIC {
            return Err(Error::SecretKey { place: "file", offset: 0 });
        }
        return Err(Error::NotThisFormat { expected: kind.described(), found: describe_magic(&buf[..4]) });
    }
    let mut fixed = Vec::with_capacity(8);
    source.read_into(&mut fixed, 8, &place)?;
    buf.extend_from_slice(&fixed);
    let version = le_u16(&buf, 4);
    if !reads_version(version) {
        return Err(Error::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
    }
    let field =
        |offset: usize, field: &'static str, reason: String| Error::Field { offset: offset as u64, field, reason };
    if le_u16(&buf, 6) != 0 {
        return Err(field(6, "reserved", "must be zero".into()));
    }
    let header_len = le_u32(&buf, 8);
    if header_len > MAX_HEADER_LEN {
        return Err(Error::Limit {
            offset: 8,
            field: "header length",
            value: header_len.into(),
            limit: MAX_HEADER_LEN.into(),
        });
    }
    let minimum = (FIXED_LEN + 2 + 2 + 1 + 4 + 4) as u32;
    if header_len < minimum {
        return Err(field(
            8,
            "header length",
            format!("{header_len} is below the smallest possible header ({minimum})"),
        ));
    }
    let mut rest = Vec::new();
    source.read_into(&mut rest, u64::from(header_len) - 12, &|| "header".to_owned()).map_err(|e| match e {
        Error::Truncated { available, .. } => {
            Error::Truncated { place: place(), offset: 0, needed: header_len.into(), available: available + 12 }
        }
        other => other,
    })?;
    buf.extend_from_slice(&rest);
    let crc_at = buf.len() - 4;
    let stored = le_u32(&buf, crc_at);
    let computed = crc32c::crc32c(&buf[..crc_at]);
    if stored != computed {
        return Err(Error::Checksum { place: place(), offset: 0, stored, computed });
    }

    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(&buf[12..44]);
    let mut key_set = [0u8; 16];
    key_set.copy_from_slice(&buf[44..60]);
    let packing = Packing::from_code(buf[60])
        .ok_or_else(|| field(60, "packing", format!("code {} (1 throughput, 2 latency)", buf[60])))?;
    let level = buf[61] as usize;
    if level > 63 {
        return Err(field(61, "level", format!("{level} (0..=63 allowed)")));
    }
    if le_u16(&buf, 62) != 0 {
        return Err(field(62, "reserved", "must be zero".into()));
    }
    let scale = f64::from_le_bytes(buf[64..72].try_into().unwrap_or_default());
    if !(scale.is_finite() && scale >= 1.0) {
        return Err(field(64, "scale", format!("{scale} is not a finite number ≥ 1")));
    }
    let image_count = le_u64(&buf, 72);
    if image_count > MAX_IMAGES {
        return Err(Error::Limit { offset: 72, field: "image count", value: image_count, limit: MAX_IMAGES });
    }
    if image_count == 0 {
        return Err(field(72, "image count", "zero images".into()));
    }
    let ciphertext_count = le_u64(&buf, 80);
    if ciphertext_count > MAX_CIPHERTEXTS {
        return Err(Error::Limit {
            offset: 80,
            field: "ciphertext count",
            value: ciphertext_count,
            limit: MAX_CIPHERTEXTS,
        });
    }
    if ciphertext_count == 0 {
        return Err(field(80, "ciphertext count", "zero ciphertexts".into()));
    }
    let ciphertext_len = le_u32(&buf, 88);
    if ciphertext_len > MAX_CIPHERTEXT_LEN {
        return Err(Error::Limit {
            offset: 88,
            field: "ciphertext length",
            value: ciphertext_len.into(),
            limit: MAX_CIPHERTEXT_LEN.into(),
        });
    }
    if ciphertext_len == 0 {
        return Err(field(88, "ciphertext length", "zero bytes".into()));
    }
    let per_chunk = le_u32(&buf, 92);
    if per_chunk == 0 {
        return Err(field(92, "ciphertexts per chunk", "zero".into()));
    }
    let chunk_payload = u64::from(per_chunk) * u64::from(ciphertext_len);
    if chunk_payload > u64::from(MAX_CHUNK_PAYLOAD) {
        return Err(Error::Limit {
            offset: 92,
            field: "chunk payload (ciphertexts per chunk × ciphertext length)",
            value: chunk_payload,
            limit: MAX_CHUNK_PAYLOAD.into(),
        });
    }

    // Variable part; `crc_at` bounds it.
    let mut at = FIXED_LEN;
    let mut names = Vec::with_capacity(2);
    for name_field in ["model", "model version"] {
        let len = *buf.get(at).filter(|_| at < crc_at).ok_or_else(|| field(at, name_field, "missing".into()))? as usize;
        if len == 0 || len > MAX_NAME_LEN || at + 1 + len > crc_at {
            return Err(field(at, name_field, format!("length {len} (1..={MAX_NAME_LEN}, within the header)")));
        }
        let text = std::str::from_utf8(&buf[at + 1..at + 1 + len])
            .map_err(|_| field(at + 1, name_field, "not UTF-8".into()))?
            .to_owned();
        check_name(name_field, &text).map_err(|reason| field(at + 1, name_field, reason))?;
        names.push(text);
        at += 1 + len;
    }
    if at >= crc_at {
        return Err(field(at, "shape", "missing".into()));
    }
    let rank = buf[at] as usize;
    if rank == 0 || rank > MAX_RANK || at + 1 + 4 * rank > crc_at {
        return Err(field(at, "shape", format!("rank {rank} (1..={MAX_RANK}, within the header)")));
    }
    let shape: Vec<u32> = (0..rank).map(|i| le_u32(&buf, at + 1 + 4 * i)).collect();
    if shape.contains(&0) {
        return Err(field(at + 1, "shape", format!("{shape:?} has a zero dimension")));
    }
    at += 1 + 4 * rank;
    let origin = if kind == BatchKind::Result && version >= 2 {
        if at + ORIGIN_LEN > crc_at {
            return Err(field(at, "origin", "missing (a version-2 result records its job and input)".into()));
        }
        let job = Uuid::from_slice(&buf[at..at + 16]).unwrap_or_default();
        let mut input = [0u8; 32];
        input.copy_from_slice(&buf[at + 16..at + ORIGIN_LEN]);
        at += ORIGIN_LEN;
        Some(Origin { job: (!job.is_nil()).then_some(job), input: ContentDigest(input) })
    } else {
        None
    };
    if at != crc_at {
        return Err(field(
            8,
            "header length",
            format!("{header_len}, but the fields end at byte {at} ({} bytes unaccounted for)", crc_at - at),
        ));
    }
    let model_version = names.pop().unwrap_or_default();
    let model = names.pop().unwrap_or_default();
    let header = BatchHeader {
        model,
        model_version,
        packing,
        shape,
        image_count,
        ciphertext_count,
        level,
        scale,
        key_set: Uuid::from_bytes(key_set),
        origin,
    };
    let layout = Layout::new(header_len, ciphertext_len, per_chunk, ciphertext_count);
    Ok(Decoded { header, fingerprint: Fingerprint(fingerprint), layout })
}
