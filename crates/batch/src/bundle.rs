//! Evaluation-key bundles: the parameters, the relinearization key and the Galois keys a
//! worker needs, in one checksummed, chunked container with its own magic (`BFKB`).
//!
//! The writer takes a [`RelinKey`] and [`GaloisKeys`]; neither type can hold a secret key, so a
//! bundle with a secret key in it cannot be written through this API. The reader refuses any
//! section that starts with the secret-key magic (`BFSK`) as soon as its first four bytes are
//! read, before loading anything, and never parses a secret key.

use std::io::{Read, Write};
use std::sync::Arc;

use blindfold_ckks::{Context, Fingerprint, GaloisKeys, GaloisKeysLoader, Parameters, RelinKey};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::framing::{
    CHUNK_OVERHEAD, ContentDigest, FORMAT_VERSION, Finished, SECRET_KEY_MAGIC, Sink, Source, TRAILER_LEN,
    describe_magic, le_u16, le_u32, le_u64,
};

/// The bundle's magic.
pub const KEY_BUNDLE_MAGIC: [u8; 4] = *b"BFKB";
/// The bundle header's size.
pub const KEY_BUNDLE_HEADER_LEN: u32 = 96;
/// Smallest and largest chunk payload in a bundle.
pub const KEY_BUNDLE_CHUNK_RANGE: std::ops::RangeInclusive<u32> = 4096..=(64 << 20);
/// The chunk payload a bundle writer uses unless told otherwise.
pub const DEFAULT_KEY_BUNDLE_CHUNK: u32 = 1 << 20;

/// Each section: its name, and the largest size a reader accepts.
const SECTIONS: [(&str, u64); 3] = [("parameters", 4096), ("relinearization key", 1 << 30), ("Galois keys", 1 << 34)];
/// The index of the Galois keys in [`SECTIONS`].
const GALOIS_SECTION: usize = 2;
/// Every section is one `blindfold-ckks` object, which starts with a 40-byte header.
const MIN_SECTION: u64 = 40;
const OBJECT_MAGIC: [u8; 4] = *b"BFCK";

/// What the caller expects of a key bundle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyBundleExpect {
    fingerprint: Option<Fingerprint>,
    key_set: Option<Uuid>,
}

impl KeyBundleExpect {
    /// Expects nothing beyond a well-formed bundle.
    pub fn new() -> Self {
        Self::default()
    }
    /// The parameter fingerprint recorded for the key set.
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }
    /// The key set id.
    pub fn key_set(mut self, key_set: Uuid) -> Self {
        self.key_set = Some(key_set);
        self
    }
}

/// The evaluation keys of one key set, loaded and checked: what a worker evaluates with.
#[derive(Debug)]
pub struct KeyBundle {
    key_set: Uuid,
    context: Arc<Context>,
    relin: RelinKey,
    galois: GaloisKeys,
    digest: ContentDigest,
}

impl KeyBundle {
    /// The key set id.
    pub fn key_set(&self) -> Uuid {
        self.key_set
    }
    /// The parameters the keys were made for.
    pub fn parameters(&self) -> &Parameters {
        self.context.params()
    }
    /// A context for those parameters.
    pub fn context(&self) -> &Arc<Context> {
        &self.context
    }
    /// The relinearization key.
    pub fn relin_key(&self) -> &RelinKey {
        &self.relin
    }
    /// The Galois keys (possibly none, for throughput packing).
    pub fn galois_keys(&self) -> &GaloisKeys {
        &self.galois
    }
    /// The content digest from the trailer.
    pub fn digest(&self) -> ContentDigest {
        self.digest
    }
    /// The parts.
    pub fn into_parts(self) -> (Arc<Context>, RelinKey, GaloisKeys) {
        (self.context, self.relin, self.galois)
    }

    /// Writes a bundle with the default chunk size; see [`KeyBundleWriter`].
    pub fn write<W: Write>(
        writer: W,
        context: &Context,
        key_set: Uuid,
        relin: &RelinKey,
        galois: &GaloisKeys,
    ) -> Result<Finished<W>> {
        KeyBundleWriter::new().write(writer, context, key_set, relin, galois)
    }

    /// Bytes of the bundle [`KeyBundle::write`] writes for a plan's keys under `context`: the
    /// relinearization key, and the Galois keys of `rotation_keys` (steps with the level each
    /// serves, as [`blindfold_ckks::KeyGenerator::galois_keys_at`] takes them). The service
    /// accepts a bundle of exactly this size and no other, so nobody can make it store or
    /// verify more than a plan's keys.
    pub fn file_len(context: &Context, rotation_keys: &[(i64, usize)]) -> u64 {
        let header = BundleHeader {
            fingerprint: context.params().fingerprint(),
            key_set: Uuid::nil(),
            chunk_size: DEFAULT_KEY_BUNDLE_CHUNK,
            lengths: [
                context.params().to_bytes().len() as u64,
                RelinKey::serialized_len(context) as u64,
                GaloisKeys::serialized_len_at(context, rotation_keys) as u64,
            ],
        };
        u64::from(KEY_BUNDLE_HEADER_LEN)
            + header.payload_total()
            + u64::from(header.chunk_count()) * CHUNK_OVERHEAD
            + TRAILER_LEN
    }

    /// Reads and checks a bundle: header, expectations, every chunk, each section's magic
    /// (a secret key is refused), the parameters (re-checked for 128-bit security) against the
    /// header's fingerprint, the keys against the parameters, and the trailer.
    pub fn read<R: Read>(reader: R, expect: &KeyBundleExpect) -> Result<KeyBundle> {
        let mut source = Source::new(reader);
        let header = decode_header(&mut source)?;
        if let Some(expected) = expect.fingerprint
            && expected != header.fingerprint
        {
            return Err(Error::FingerprintMismatch {
                object: "key bundle",
                against: "the key set",
                expected: expected.short(),
                found: header.fingerprint.short(),
            });
        }
        if let Some(expected) = expect.key_set
            && expected != header.key_set
        {
            return Err(Error::Mismatch {
                field: "key set",
                expected: expected.to_string(),
                found: header.key_set.to_string(),
            });
        }
        let mut body = Body::new(&header);
        let mut chunk = Vec::new();
        for index in 0..header.chunk_count() {
            let payload = header.chunk_payload_len(index);
            source.read_chunk(&mut chunk, index, payload)?;
            body.take(&chunk[12..12 + payload as usize])?;
        }
        let digest = source.read_trailer(header.chunk_count(), header.payload_total())?;
        let (context, relin, galois) = body.finish()?;
        Ok(KeyBundle { key_set: header.key_set, context, relin, galois, digest })
    }
}

/// Writes evaluation-key bundles. Each key object is serialized whole by `blindfold-ckks` (its
/// API has no per-key serialization), then streamed out in chunks.
#[derive(Debug, Clone, Copy)]
pub struct KeyBundleWriter {
    chunk_size: u32,
}

impl Default for KeyBundleWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyBundleWriter {
    /// A writer with 1 MiB chunks.
    pub fn new() -> Self {
        Self { chunk_size: DEFAULT_KEY_BUNDLE_CHUNK }
    }

    /// Sets the chunk payload size (4 KiB ..= 64 MiB).
    pub fn chunk_size(mut self, bytes: u32) -> Result<Self> {
        if !KEY_BUNDLE_CHUNK_RANGE.contains(&bytes) {
            return Err(Error::InvalidHeader {
                field: "chunk size",
                reason: format!("{bytes} bytes (4096..=67108864 allowed)"),
            });
        }
        self.chunk_size = bytes;
        Ok(self)
    }

    /// Writes the parameters of `context`, `relin` and `galois` for key set `key_set`.
    pub fn write<W: Write>(
        &self,
        writer: W,
        context: &Context,
        key_set: Uuid,
        relin: &RelinKey,
        galois: &GaloisKeys,
    ) -> Result<Finished<W>> {
        let fingerprint = context.params().fingerprint();
        let sections = [context.params().to_bytes(), relin.to_bytes(context), galois.to_bytes(context)];
        for ((name, limit), bytes) in SECTIONS.iter().zip(&sections) {
            // Every ckks object carries the fingerprint at bytes 8..40.
            if bytes.get(8..40) != Some(&fingerprint.0[..]) {
                return Err(Error::FingerprintMismatch {
                    object: name,
                    against: "the context in use",
                    expected: fingerprint.short(),
                    found: bytes.get(8..16).map(crate::framing::hex).unwrap_or_default(),
                });
            }
            if bytes.len() as u64 > *limit {
                return Err(Error::InvalidHeader {
                    field: name,
                    reason: format!("{} bytes is above the limit of {limit}", bytes.len()),
                });
            }
        }
        let header = BundleHeader {
            fingerprint,
            key_set,
            chunk_size: self.chunk_size,
            lengths: [sections[0].len() as u64, sections[1].len() as u64, sections[2].len() as u64],
        };
        let mut sink = Sink::new(writer);
        sink.write(&header.encode())?;
        let mut index = 0u32;
        let mut pending = sections.iter().flat_map(|s| s.chunks(self.chunk_size as usize)).peekable();
        // Chunks run across section boundaries: gather exactly chunk_size bytes per chunk.
        let mut carry: Option<&[u8]> = None;
        while index < header.chunk_count() {
            let payload = header.chunk_payload_len(index);
            sink.begin_chunk(index, payload as u32)?;
            let mut left = payload as usize;
            while left > 0 {
                let Some(piece) = carry.take().or_else(|| pending.next()) else { break };
                let (now, later) = piece.split_at(piece.len().min(left));
                sink.write(now)?;
                left -= now.len();
                if !later.is_empty() {
                    carry = Some(later);
                }
            }
            sink.end_chunk()?;
            index += 1;
        }
        sink.finish(header.chunk_count(), header.payload_total())
    }
}

// ---- header -------------------------------------------------------------------------------

#[derive(Debug)]
struct BundleHeader {
    fingerprint: Fingerprint,
    key_set: Uuid,
    chunk_size: u32,
    lengths: [u64; 3],
}

impl BundleHeader {
    fn payload_total(&self) -> u64 {
        self.lengths.iter().sum()
    }
    fn chunk_count(&self) -> u32 {
        // Lengths are limit-checked and chunks are at least 4 KiB: at most ~4.3 million chunks.
        self.payload_total().div_ceil(u64::from(self.chunk_size)) as u32
    }
    fn chunk_payload_len(&self, index: u32) -> u64 {
        let size = u64::from(self.chunk_size);
        (self.payload_total() - u64::from(index) * size).min(size)
    }
    /// The file offset of payload byte `position` (counted over all sections).
    fn payload_offset(&self, position: u64) -> u64 {
        let size = u64::from(self.chunk_size);
        u64::from(KEY_BUNDLE_HEADER_LEN) + (position / size) * (size + CHUNK_OVERHEAD) + 12 + position % size
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(KEY_BUNDLE_HEADER_LEN as usize);
        out.extend_from_slice(&KEY_BUNDLE_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&KEY_BUNDLE_HEADER_LEN.to_le_bytes());
        out.extend_from_slice(&self.fingerprint.0);
        out.extend_from_slice(self.key_set.as_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        for len in self.lengths {
            out.extend_from_slice(&len.to_le_bytes());
        }
        out.extend_from_slice(&[0; 4]);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

fn decode_header<R: Read>(source: &mut Source<R>) -> Result<BundleHeader> {
    let mut buf = Vec::with_capacity(KEY_BUNDLE_HEADER_LEN as usize);
    source.read_into(&mut buf, 4, &|| "header".to_owned())?;
    if buf[..4] != KEY_BUNDLE_MAGIC {
        if buf[..4] == SECRET_KEY_MAGIC {
            return Err(Error::SecretKey { place: "file", offset: 0 });
        }
        return Err(Error::NotThisFormat {
            expected: "an evaluation-key bundle (\"BFKB\")",
            found: describe_magic(&buf[..4]),
        });
    }
    let mut rest = Vec::new();
    source.read_into(&mut rest, u64::from(KEY_BUNDLE_HEADER_LEN) - 4, &|| "header".to_owned()).map_err(
        |e| match e {
            Error::Truncated { available, needed, .. } => {
                Error::Truncated { place: "header".into(), offset: 0, needed: needed + 4, available: available + 4 }
            }
            other => other,
        },
    )?;
    buf.extend_from_slice(&rest);
    let version = le_u16(&buf, 4);
    // Versions 1 and 2 lay a bundle out alike.
    if !crate::framing::reads_version(version) {
        return Err(Error::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
    }
    let stored = le_u32(&buf, 92);
    let computed = crc32c::crc32c(&buf[..92]);
    if stored != computed {
        return Err(Error::Checksum { place: "header".into(), offset: 0, stored, computed });
    }
    let field = |offset: u64, field: &'static str, reason: String| Error::Field { offset, field, reason };
    if le_u16(&buf, 6) != 0 || le_u32(&buf, 88) != 0 {
        return Err(field(if le_u16(&buf, 6) != 0 { 6 } else { 88 }, "reserved", "must be zero".into()));
    }
    let header_len = le_u32(&buf, 8);
    if header_len != KEY_BUNDLE_HEADER_LEN {
        return Err(field(8, "header length", format!("{header_len}, expected {KEY_BUNDLE_HEADER_LEN}")));
    }
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(&buf[12..44]);
    let mut key_set = [0u8; 16];
    key_set.copy_from_slice(&buf[44..60]);
    let chunk_size = le_u32(&buf, 60);
    if !KEY_BUNDLE_CHUNK_RANGE.contains(&chunk_size) {
        return Err(field(60, "chunk size", format!("{chunk_size} bytes (4096..=67108864 allowed)")));
    }
    let mut lengths = [0u64; 3];
    for (i, ((name, limit), len)) in SECTIONS.iter().zip(&mut lengths).enumerate() {
        let at = 64 + 8 * i as u64;
        *len = le_u64(&buf, at as usize);
        if *len > *limit {
            return Err(Error::Limit { offset: at, field: name, value: *len, limit: *limit });
        }
        if *len < MIN_SECTION {
            return Err(field(at, name, format!("{len} bytes is shorter than a CKKS object header ({MIN_SECTION})")));
        }
    }
    Ok(BundleHeader { fingerprint: Fingerprint(fingerprint), key_set: Uuid::from_bytes(key_set), chunk_size, lengths })
}

// ---- body ---------------------------------------------------------------------------------

/// Collects verified chunk payloads into the three sections and loads each as it completes.
/// The Galois keys, which are nearly all of a bundle, load one key at a time as their bytes
/// arrive ([`GaloisKeysLoader`]): the reader never holds their serialized form whole.
struct Body<'h> {
    header: &'h BundleHeader,
    section: usize,
    /// The current section's bytes, for the two small sections (and the first four bytes of
    /// the Galois section, for its magic).
    bytes: Vec<u8>,
    /// Bytes of the current section taken so far.
    taken: u64,
    position: u64,
    context: Option<Arc<Context>>,
    relin: Option<RelinKey>,
    galois: Option<GaloisKeys>,
    galois_loader: GaloisKeysLoader,
}

impl<'h> Body<'h> {
    fn new(header: &'h BundleHeader) -> Self {
        Self {
            header,
            section: 0,
            bytes: Vec::new(),
            taken: 0,
            position: 0,
            context: None,
            relin: None,
            galois: None,
            galois_loader: GaloisKeysLoader::new(),
        }
    }

    fn section_start(&self) -> u64 {
        self.header.payload_offset(self.header.lengths[..self.section].iter().sum())
    }

    fn take(&mut self, mut payload: &[u8]) -> Result<()> {
        while !payload.is_empty() && self.section < SECTIONS.len() {
            let len = self.header.lengths[self.section];
            let want = (len - self.taken).min(payload.len() as u64) as usize;
            let (piece, rest) = payload.split_at(want);
            payload = rest;
            let before = self.taken;
            self.taken += want as u64;
            self.position += want as u64;
            let streamed = self.section == GALOIS_SECTION;
            if streamed {
                // Only the magic is kept; the keys go to the loader.
                let magic_part = piece.len().min(4usize.saturating_sub(self.bytes.len()));
                self.bytes.extend_from_slice(&piece[..magic_part]);
            } else {
                self.bytes.extend_from_slice(piece);
            }
            if before < 4 && self.taken >= 4 {
                self.check_magic()?;
            }
            if streamed {
                self.load_galois(piece)?;
            }
            if self.taken == len {
                self.load()?;
                self.bytes = Vec::new();
                self.taken = 0;
                self.section += 1;
            }
        }
        Ok(())
    }

    fn check_magic(&self) -> Result<()> {
        let (name, _) = SECTIONS[self.section];
        let magic = &self.bytes[..4];
        if magic == SECRET_KEY_MAGIC {
            return Err(Error::SecretKey { place: name, offset: self.section_start() });
        }
        if magic != OBJECT_MAGIC {
            return Err(Error::Framing {
                place: name.into(),
                offset: self.section_start(),
                reason: format!("starts with {}, expected a CKKS object (\"BFCK\")", describe_magic(magic)),
            });
        }
        Ok(())
    }

    fn key_error(&self, source: blindfold_ckks::Error) -> Error {
        Error::Key { section: SECTIONS[self.section].0, offset: self.section_start(), source }
    }

    fn load_galois(&mut self, piece: &[u8]) -> Result<()> {
        let Some(context) = &self.context else { return Ok(()) };
        let pushed = self.galois_loader.push(context, piece);
        pushed.map_err(|source| self.key_error(source))
    }

    fn load(&mut self) -> Result<()> {
        match (self.section, &self.context) {
            (0, _) => {
                let params = Parameters::from_bytes(&self.bytes).map_err(|e| self.key_error(e))?;
                if params.fingerprint() != self.header.fingerprint {
                    return Err(Error::FingerprintMismatch {
                        object: "the parameters section",
                        against: "the bundle header",
                        expected: self.header.fingerprint.short(),
                        found: params.fingerprint().short(),
                    });
                }
                self.context = Some(Context::new(params).map_err(|e| self.key_error(e))?);
            }
            (1, Some(context)) => {
                let relin = RelinKey::from_bytes(context, &self.bytes);
                self.relin = Some(relin.map_err(|e| self.key_error(e))?);
            }
            (GALOIS_SECTION, Some(_)) => {
                let galois = std::mem::take(&mut self.galois_loader).finish();
                self.galois = Some(galois.map_err(|e| self.key_error(e))?);
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<(Arc<Context>, RelinKey, GaloisKeys)> {
        match (self.context, self.relin, self.galois) {
            (Some(context), Some(relin), Some(galois)) => Ok((context, relin, galois)),
            _ => Err(Error::Framing {
                place: "key bundle".into(),
                offset: self.header.payload_offset(self.position),
                reason: "the body ended before every section was complete".into(),
            }),
        }
    }
}
