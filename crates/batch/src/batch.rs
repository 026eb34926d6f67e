//! Batch files: the writer that streams ciphertexts into checksummed chunks, the raw reader
//! that verifies framing without CKKS parameters, and the typed reader that also loads each
//! ciphertext.

use std::io::{Read, Write};
use std::marker::PhantomData;
use std::sync::Arc;

use blindfold_ckks::{Ciphertext, Context, Fingerprint, SeededCiphertext};

use crate::error::{Error, Result};
use crate::framing::{ContentDigest, Finished, Sink, Source};
use crate::header::{
    self, BatchHeader, BatchKind, DEFAULT_CHUNK_TARGET, Expect, Layout, MAX_CHUNK_PAYLOAD, MAX_CIPHERTEXT_LEN,
};

mod sealed {
    pub trait Sealed {}
    impl Sealed for blindfold_ckks::SeededCiphertext {}
    impl Sealed for blindfold_ckks::Ciphertext {}
}

/// A ciphertext type a batch can hold: [`SeededCiphertext`] in input batches, [`Ciphertext`] in
/// result batches. Sealed: the two containers are the only ones.
pub trait BatchCiphertext: sealed::Sealed + Sized {
    /// The container that holds this type.
    const KIND: BatchKind;
    /// The ciphertext's level.
    fn level(&self) -> usize;
    /// The ciphertext's scale.
    fn scale(&self) -> f64;
    /// Serializes it (the `blindfold-ckks` object format).
    fn to_bytes(&self, context: &Context) -> Vec<u8>;
    /// Loads one.
    fn from_bytes(context: &Context, bytes: &[u8]) -> blindfold_ckks::Result<Self>;
    /// The serialized size at `level`, where the CKKS crate can tell in advance.
    fn serialized_len(context: &Context, level: usize) -> Option<usize>;
}

impl BatchCiphertext for SeededCiphertext {
    const KIND: BatchKind = BatchKind::Input;
    fn level(&self) -> usize {
        SeededCiphertext::level(self)
    }
    fn scale(&self) -> f64 {
        SeededCiphertext::scale(self)
    }
    fn to_bytes(&self, context: &Context) -> Vec<u8> {
        SeededCiphertext::to_bytes(self, context)
    }
    fn from_bytes(context: &Context, bytes: &[u8]) -> blindfold_ckks::Result<Self> {
        SeededCiphertext::from_bytes(context, bytes)
    }
    fn serialized_len(context: &Context, level: usize) -> Option<usize> {
        Some(SeededCiphertext::serialized_len(context, level))
    }
}

impl BatchCiphertext for Ciphertext {
    const KIND: BatchKind = BatchKind::Result;
    fn level(&self) -> usize {
        Ciphertext::level(self)
    }
    fn scale(&self) -> f64 {
        Ciphertext::scale(self)
    }
    fn to_bytes(&self, context: &Context) -> Vec<u8> {
        Ciphertext::to_bytes(self, context)
    }
    fn from_bytes(context: &Context, bytes: &[u8]) -> blindfold_ckks::Result<Self> {
        Ciphertext::from_bytes(context, bytes)
    }
    fn serialized_len(_: &Context, _: usize) -> Option<usize> {
        None
    }
}

fn check_matches_header<C: BatchCiphertext>(header: &BatchHeader, index: u64, ciphertext: &C) -> Result<()> {
    if ciphertext.level() != header.level {
        return Err(Error::CiphertextMismatch {
            index,
            field: "level",
            expected: header.level.to_string(),
            found: ciphertext.level().to_string(),
        });
    }
    if ciphertext.scale().to_bits() != header.scale.to_bits() {
        return Err(Error::CiphertextMismatch {
            index,
            field: "scale",
            expected: format!("2^{:.6}", header.scale.log2()),
            found: format!("2^{:.6}", ciphertext.scale().log2()),
        });
    }
    Ok(())
}

// ---- writer -------------------------------------------------------------------------------

/// Writes a batch file as a stream: the header on the first [`push`](Self::push), each
/// ciphertext straight through into its chunk, and the trailer on [`finish`](Self::finish).
/// Memory use is one serialized ciphertext, whatever the batch size.
///
/// Every ciphertext must have the header's level and scale, and all must serialize to the same
/// size. A validation error leaves the writer usable; an I/O error leaves a partial file that
/// every reader refuses (no trailer). Wrap files in a `BufWriter`.
#[derive(Debug)]
pub struct BatchWriter<W: Write, C: BatchCiphertext> {
    sink: Sink<W>,
    context: Arc<Context>,
    header: BatchHeader,
    chunk_target: u32,
    per_chunk: Option<u32>,
    layout: Option<Layout>,
    pushed: u64,
    kind: PhantomData<fn(C)>,
}

/// Writes input batches (seeded ciphertexts).
pub type InputBatchWriter<W> = BatchWriter<W, SeededCiphertext>;
/// Writes result batches (full ciphertexts).
pub type ResultBatchWriter<W> = BatchWriter<W, Ciphertext>;

impl<W: Write, C: BatchCiphertext> BatchWriter<W, C> {
    /// A writer for a batch described by `header`, made under `context`'s parameters (whose
    /// fingerprint goes into the header). Nothing is written until the first push.
    pub fn new(writer: W, context: &Arc<Context>, header: BatchHeader) -> Result<Self> {
        header.validate()?;
        match (C::KIND, header.origin.is_some()) {
            (BatchKind::Result, false) => {
                return Err(Error::InvalidHeader {
                    field: "origin",
                    reason: "a result batch records the job and input it was computed from".into(),
                });
            }
            (BatchKind::Input, true) => {
                return Err(Error::InvalidHeader { field: "origin", reason: "an input batch has no origin".into() });
            }
            _ => {}
        }
        if header.level > context.max_level() {
            return Err(Error::InvalidHeader {
                field: "level",
                reason: format!("{} is above these parameters' top level {}", header.level, context.max_level()),
            });
        }
        Ok(Self {
            sink: Sink::new(writer),
            context: Arc::clone(context),
            header,
            chunk_target: DEFAULT_CHUNK_TARGET,
            per_chunk: None,
            layout: None,
            pushed: 0,
            kind: PhantomData,
        })
    }

    /// Puts exactly `count` ciphertexts in every chunk but the last (instead of aiming for
    /// about 4 MiB per chunk). Takes effect only before the first push.
    pub fn ciphertexts_per_chunk(mut self, count: u32) -> Self {
        self.per_chunk = Some(count);
        self
    }

    /// The header being written.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Appends one ciphertext.
    pub fn push(&mut self, ciphertext: &C) -> Result<()> {
        let index = self.pushed;
        if index >= self.header.ciphertext_count {
            return Err(Error::Count { declared: self.header.ciphertext_count, pushed: index + 1 });
        }
        check_matches_header(&self.header, index, ciphertext)?;
        let bytes = ciphertext.to_bytes(&self.context);
        let layout = match self.layout {
            Some(layout) => layout,
            None => self.start(bytes.len())?,
        };
        if bytes.len() != layout.ciphertext_len() as usize {
            return Err(Error::CiphertextMismatch {
                index,
                field: "serialized length",
                expected: format!("{} bytes (like ciphertext 0)", layout.ciphertext_len()),
                found: format!("{} bytes", bytes.len()),
            });
        }
        let per = u64::from(layout.ciphertexts_per_chunk());
        let chunk = (index / per) as u32;
        if index.is_multiple_of(per) {
            self.sink.begin_chunk(chunk, layout.chunk_payload_len(chunk) as u32)?;
        }
        self.sink.write(&bytes)?;
        self.pushed += 1;
        if self.pushed.is_multiple_of(per) || self.pushed == self.header.ciphertext_count {
            self.sink.end_chunk()?;
        }
        Ok(())
    }

    /// Fixes the layout from the first ciphertext's size and writes the header.
    fn start(&mut self, ciphertext_len: usize) -> Result<Layout> {
        if ciphertext_len > MAX_CIPHERTEXT_LEN as usize {
            return Err(Error::InvalidHeader {
                field: "ciphertext length",
                reason: format!("{ciphertext_len} bytes is above the limit of {MAX_CIPHERTEXT_LEN}"),
            });
        }
        let len = ciphertext_len as u32;
        let most = (MAX_CHUNK_PAYLOAD / len).max(1);
        let per_chunk = match self.per_chunk {
            Some(0) => {
                return Err(Error::InvalidHeader { field: "ciphertexts per chunk", reason: "zero".into() });
            }
            Some(count) if count > most => {
                return Err(Error::InvalidHeader {
                    field: "ciphertexts per chunk",
                    reason: format!("{count} × {len} bytes is above the chunk limit of {MAX_CHUNK_PAYLOAD} bytes"),
                });
            }
            Some(count) => count,
            None => (self.chunk_target / len).clamp(1, most),
        };
        // A chunk never needs to be larger than the whole batch.
        let per_chunk = u64::from(per_chunk).min(self.header.ciphertext_count) as u32;
        let bytes = header::encode(C::KIND, self.fingerprint(), &self.header, len, per_chunk);
        let layout = Layout::new(bytes.len() as u32, len, per_chunk, self.header.ciphertext_count);
        self.sink.write(&bytes)?;
        self.layout = Some(layout);
        Ok(layout)
    }

    fn fingerprint(&self) -> Fingerprint {
        self.context.params().fingerprint()
    }

    /// Writes the trailer after checking that every declared ciphertext was pushed.
    pub fn finish(self) -> Result<Finished<W>> {
        let Some(layout) = self.layout.filter(|_| self.pushed == self.header.ciphertext_count) else {
            return Err(Error::Count { declared: self.header.ciphertext_count, pushed: self.pushed });
        };
        self.sink.finish(layout.chunk_count(), layout.payload_total())
    }
}

// ---- raw reader ---------------------------------------------------------------------------

/// Reads a batch file without CKKS parameters: checks the header against expectations, every
/// chunk's framing and CRC, the trailer's digest and the end of file, and hands out each
/// ciphertext's bytes. For services that verify an upload without loading ciphertexts; the
/// typed [`BatchReader`] builds on it.
///
/// A chunk is verified in full before any of its ciphertexts is handed out, and the trailer is
/// verified before the ciphertexts of the last chunk are. Memory use is one chunk.
#[derive(Debug)]
pub struct RawBatchReader<R> {
    source: Source<R>,
    kind: BatchKind,
    header: BatchHeader,
    fingerprint: Fingerprint,
    layout: Layout,
    chunk: Vec<u8>,
    next_chunk: u32,
    /// Position in `chunk` of the next ciphertext, and how many are left in it.
    cursor: usize,
    left_in_chunk: u64,
    next_index: u64,
    digest: Option<ContentDigest>,
    failed: bool,
}

impl<R: Read> RawBatchReader<R> {
    /// Reads and validates the header of a batch of `kind`, then checks it against `expect`.
    pub fn open(reader: R, kind: BatchKind, expect: &Expect) -> Result<Self> {
        let mut source = Source::new(reader);
        let decoded = header::decode(&mut source, kind)?;
        expect.check(&decoded.header, decoded.fingerprint)?;
        Ok(Self {
            source,
            kind,
            header: decoded.header,
            fingerprint: decoded.fingerprint,
            layout: decoded.layout,
            chunk: Vec::new(),
            next_chunk: 0,
            cursor: 0,
            left_in_chunk: 0,
            next_index: 0,
            digest: None,
            failed: false,
        })
    }

    /// Input or result batch.
    pub fn kind(&self) -> BatchKind {
        self.kind
    }
    /// The header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }
    /// The parameter fingerprint in the header.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
    /// The body layout (chunk sizes, offsets, the file's exact length).
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// The content digest, once the trailer has been verified.
    pub fn digest(&self) -> Option<ContentDigest> {
        self.digest
    }
    /// How many ciphertexts have been handed out.
    pub fn position(&self) -> u64 {
        self.next_index
    }

    /// The next ciphertext's bytes (checksums verified), or `None` after the last one once the
    /// trailer has been verified.
    pub fn next_bytes(&mut self) -> Result<Option<&[u8]>> {
        if self.failed {
            return Err(Error::Framing {
                place: "batch".into(),
                offset: self.source.offset(),
                reason: "an earlier error stopped this reader".into(),
            });
        }
        if self.left_in_chunk == 0 {
            if self.next_chunk == self.layout.chunk_count() {
                return Ok(None);
            }
            if let Err(e) = self.load_chunk() {
                self.failed = true;
                return Err(e);
            }
        }
        let len = self.layout.ciphertext_len() as usize;
        let start = self.cursor;
        self.cursor += len;
        self.left_in_chunk -= 1;
        self.next_index += 1;
        Ok(self.chunk.get(start..start + len))
    }

    fn load_chunk(&mut self) -> Result<()> {
        let index = self.next_chunk;
        let payload = self.layout.chunk_payload_len(index);
        self.source.read_chunk(&mut self.chunk, index, payload)?;
        self.next_chunk += 1;
        self.cursor = 12;
        self.left_in_chunk = self.layout.ciphertexts_in_chunk(index);
        if self.next_chunk == self.layout.chunk_count() {
            self.digest = Some(self.source.read_trailer(self.layout.chunk_count(), self.layout.payload_total())?);
        }
        Ok(())
    }

    /// Reads to the end, verifying everything; returns the content digest.
    pub fn verify(mut self) -> Result<ContentDigest> {
        while self.next_bytes()?.is_some() {}
        self.digest.ok_or_else(|| Error::Framing {
            place: "trailer".into(),
            offset: self.source.offset(),
            reason: "not reached".into(),
        })
    }
}

// ---- typed reader -------------------------------------------------------------------------

/// Reads a batch file and loads each ciphertext under a CKKS context: everything
/// [`RawBatchReader`] checks, plus the context's fingerprint, the ciphertext size for the
/// header's level, and each ciphertext's level and scale. An iterator of `Result<C>`; a batch
/// is complete and intact only when the iterator ends without an error.
#[derive(Debug)]
pub struct BatchReader<R, C: BatchCiphertext> {
    raw: RawBatchReader<R>,
    context: Arc<Context>,
    failed: bool,
    kind: PhantomData<fn() -> C>,
}

/// Reads input batches (seeded ciphertexts).
pub type InputBatchReader<R> = BatchReader<R, SeededCiphertext>;
/// Reads result batches (full ciphertexts).
pub type ResultBatchReader<R> = BatchReader<R, Ciphertext>;

impl<R: Read, C: BatchCiphertext> BatchReader<R, C> {
    /// Opens a batch of `C`'s kind made under `context`'s parameters and checks `expect`.
    pub fn open(reader: R, context: &Arc<Context>, expect: &Expect) -> Result<Self> {
        let raw = RawBatchReader::open(reader, C::KIND, expect)?;
        let ours = context.params().fingerprint();
        if raw.fingerprint() != ours {
            return Err(Error::FingerprintMismatch {
                object: "batch",
                against: "the context in use",
                expected: ours.short(),
                found: raw.fingerprint().short(),
            });
        }
        let level = raw.header().level;
        if level > context.max_level() {
            return Err(Error::Field {
                offset: 61,
                field: "level",
                reason: format!("{level} is above these parameters' top level {}", context.max_level()),
            });
        }
        let found = raw.layout().ciphertext_len() as usize;
        if let Some(expected) = C::serialized_len(context, level)
            && expected != found
        {
            return Err(Error::Field {
                offset: 88,
                field: "ciphertext length",
                reason: format!(
                    "{found} bytes, but a ciphertext at level {level} under these parameters is {expected}"
                ),
            });
        }
        Ok(Self { raw, context: Arc::clone(context), failed: false, kind: PhantomData })
    }

    /// The header.
    pub fn header(&self) -> &BatchHeader {
        self.raw.header()
    }
    /// The body layout.
    pub fn layout(&self) -> Layout {
        self.raw.layout()
    }
    /// The content digest, once the trailer has been verified.
    pub fn digest(&self) -> Option<ContentDigest> {
        self.raw.digest()
    }

    /// The next ciphertext, or `None` after the last one once the trailer has been verified.
    /// After an error the reader stays stopped.
    pub fn next_ciphertext(&mut self) -> Result<Option<C>> {
        if self.failed {
            return Err(Error::Framing {
                place: "batch".into(),
                offset: self.raw.source.offset(),
                reason: "an earlier error stopped this reader".into(),
            });
        }
        let result = self.read_one();
        self.failed = result.is_err();
        result
    }

    fn read_one(&mut self) -> Result<Option<C>> {
        let index = self.raw.position();
        let offset = self.raw.layout().ciphertext_offset(index);
        let Some(bytes) = self.raw.next_bytes()? else {
            return Ok(None);
        };
        let ciphertext =
            C::from_bytes(&self.context, bytes).map_err(|source| Error::Ciphertext { index, offset, source })?;
        check_matches_header(self.raw.header(), index, &ciphertext)?;
        Ok(Some(ciphertext))
    }
}

impl<R: Read, C: BatchCiphertext> Iterator for BatchReader<R, C> {
    type Item = Result<C>;

    /// Ends (`None`) after the last ciphertext, or after the first error.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        self.next_ciphertext().transpose()
    }
}
