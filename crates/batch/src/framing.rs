//! What both containers share: the counting, hashing byte source and sink, the chunk framing
//! (tag, index, payload length, payload, CRC-32C) and the trailer (chunk count, payload total,
//! BLAKE3 content digest, CRC-32C). `FORMAT.md` is the byte-level description.

use std::io::{ErrorKind, Read, Write};

use crate::error::{Error, Result};

/// The format version every container is written in. Version 2 added the origin of result
/// batches (`crates/batch/FORMAT.md`).
pub const FORMAT_VERSION: u16 = 2;
/// The oldest version still read (its files differ only in what version 2 added).
pub const OLDEST_READ_VERSION: u16 = 1;

/// Whether this build reads files of `version`.
pub(crate) fn reads_version(version: u16) -> bool {
    (OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version)
}

/// Tag opening every chunk.
pub(crate) const CHUNK_TAG: [u8; 4] = *b"BFCH";
/// Tag opening the trailer.
pub(crate) const TRAILER_TAG: [u8; 4] = *b"BFTR";
/// Chunk framing bytes: tag, index, payload length before the payload; CRC after it.
pub(crate) const CHUNK_OVERHEAD: u64 = 16;
/// Trailer size: tag, chunk count, payload total, digest, CRC.
pub(crate) const TRAILER_LEN: u64 = 52;
/// The magic of a serialized secret key (from `blindfold-ckks`), refused wherever it appears.
pub(crate) const SECRET_KEY_MAGIC: [u8; 4] = *b"BFSK";

/// Describes a file's first four bytes for an error message.
pub(crate) fn describe_magic(magic: &[u8]) -> String {
    let known = match magic {
        b"BFIB" => " (an input batch)",
        b"BFRB" => " (a result batch)",
        b"BFKB" => " (an evaluation-key bundle)",
        b"BFSK" => " (a secret key)",
        b"BFCK" => " (a single CKKS object, not a container)",
        _ => "",
    };
    if magic.iter().all(|b| b.is_ascii_graphic()) {
        format!("{:?}{known}", String::from_utf8_lossy(magic))
    } else {
        format!("bytes {}{known}", hex(magic))
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Little-endian field readers over a slice whose length was checked by the caller's framing.
pub(crate) fn le_u16(bytes: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&bytes[at..at + 2]);
    u16::from_le_bytes(b)
}
pub(crate) fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}
pub(crate) fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

// ---- writing ------------------------------------------------------------------------------

/// A writer that counts bytes, feeds everything into the content digest, and keeps the CRC of
/// the chunk being written.
#[derive(Debug)]
pub(crate) struct Sink<W> {
    inner: W,
    offset: u64,
    digest: blake3::Hasher,
    crc: u32,
}

impl<W: Write> Sink<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self { inner, offset: 0, digest: blake3::Hasher::new(), crc: 0 }
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.write_all(bytes).map_err(|source| Error::Io { offset: self.offset, source })?;
        self.digest.update(bytes);
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Writes a chunk's opening fields and starts its CRC.
    pub(crate) fn begin_chunk(&mut self, index: u32, payload_len: u32) -> Result<()> {
        self.crc = 0;
        let mut head = [0u8; 12];
        head[..4].copy_from_slice(&CHUNK_TAG);
        head[4..8].copy_from_slice(&index.to_le_bytes());
        head[8..].copy_from_slice(&payload_len.to_le_bytes());
        self.write(&head)
    }

    /// Writes the CRC of everything since `begin_chunk`.
    pub(crate) fn end_chunk(&mut self) -> Result<()> {
        let crc = self.crc;
        self.write(&crc.to_le_bytes())
    }

    /// Writes the trailer and flushes; returns the inner writer and the content digest.
    pub(crate) fn finish(mut self, chunk_count: u32, payload_total: u64) -> Result<Finished<W>> {
        let digest = *self.digest.finalize().as_bytes();
        let mut trailer = Vec::with_capacity(TRAILER_LEN as usize);
        trailer.extend_from_slice(&TRAILER_TAG);
        trailer.extend_from_slice(&chunk_count.to_le_bytes());
        trailer.extend_from_slice(&payload_total.to_le_bytes());
        trailer.extend_from_slice(&digest);
        let crc = crc32c::crc32c(&trailer);
        trailer.extend_from_slice(&crc.to_le_bytes());
        self.write(&trailer)?;
        self.inner.flush().map_err(|source| Error::Io { offset: self.offset, source })?;
        Ok(Finished { writer: self.inner, digest: ContentDigest(digest), len: self.offset })
    }
}

// ---- reading ------------------------------------------------------------------------------

/// A reader that counts bytes and feeds everything into the content digest.
#[derive(Debug)]
pub(crate) struct Source<R> {
    inner: R,
    offset: u64,
    digest: blake3::Hasher,
}

impl<R: Read> Source<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner, offset: 0, digest: blake3::Hasher::new() }
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads exactly `len` bytes into `buf` (replacing its contents). The buffer grows only as
    /// data arrives, so a length read from a hostile file cannot allocate more than the file
    /// holds. `place` names the part for the truncation error.
    pub(crate) fn read_into(&mut self, buf: &mut Vec<u8>, len: u64, place: &dyn Fn() -> String) -> Result<()> {
        let start = self.offset;
        buf.clear();
        let mut limited = (&mut self.inner).take(len);
        loop {
            match limited.read_to_end(buf) {
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => return Err(Error::Io { offset: start + buf.len() as u64, source }),
            }
        }
        self.offset += buf.len() as u64;
        self.digest.update(buf);
        if (buf.len() as u64) < len {
            return Err(Error::Truncated { place: place(), offset: start, needed: len, available: buf.len() as u64 });
        }
        Ok(())
    }

    /// Reads one chunk of exactly `payload_len` payload bytes into `buf` and checks its framing
    /// and CRC; on success `buf[12..12 + payload_len]` is the payload.
    pub(crate) fn read_chunk(&mut self, buf: &mut Vec<u8>, index: u32, payload_len: u64) -> Result<()> {
        let start = self.offset;
        let place = || format!("chunk {index}");
        self.read_into(buf, payload_len + CHUNK_OVERHEAD, &place)?;
        if buf[..4] != CHUNK_TAG {
            let reason = if buf[..4] == TRAILER_TAG {
                format!("found the trailer where chunk {index} should start: chunks are missing")
            } else {
                format!("chunk tag is {}, expected \"BFCH\"", describe_magic(&buf[..4]))
            };
            return Err(Error::Framing { place: place(), offset: start, reason });
        }
        let found_index = le_u32(buf, 4);
        if found_index != index {
            return Err(Error::Framing {
                place: place(),
                offset: start + 4,
                reason: format!("chunk index field is {found_index}, expected {index} (chunks reordered or spliced)"),
            });
        }
        let found_len = le_u32(buf, 8);
        if u64::from(found_len) != payload_len {
            return Err(Error::Framing {
                place: place(),
                offset: start + 8,
                reason: format!("payload length field is {found_len}, expected {payload_len}"),
            });
        }
        let body_end = buf.len() - 4;
        let stored = le_u32(buf, body_end);
        let computed = crc32c::crc32c(&buf[..body_end]);
        if stored != computed {
            return Err(Error::Checksum { place: place(), offset: start, stored, computed });
        }
        Ok(())
    }

    /// Reads and checks the trailer, then that nothing follows it; returns the content digest.
    pub(crate) fn read_trailer(&mut self, chunk_count: u32, payload_total: u64) -> Result<ContentDigest> {
        let computed_digest = *self.digest.finalize().as_bytes();
        let start = self.offset;
        let place = || "trailer".to_owned();
        let mut buf = Vec::with_capacity(TRAILER_LEN as usize);
        self.read_into(&mut buf, TRAILER_LEN, &place)?;
        let framing = |at: u64, reason: String| Error::Framing { place: place(), offset: start + at, reason };
        if buf[..4] != TRAILER_TAG {
            let reason = if buf[..4] == CHUNK_TAG {
                "found another chunk where the trailer should start: more chunks than the header declares".to_owned()
            } else {
                format!("trailer tag is {}, expected \"BFTR\"", describe_magic(&buf[..4]))
            };
            return Err(framing(0, reason));
        }
        let stored = le_u32(&buf, 48);
        let computed = crc32c::crc32c(&buf[..48]);
        if stored != computed {
            return Err(Error::Checksum { place: place(), offset: start, stored, computed });
        }
        let found_chunks = le_u32(&buf, 4);
        if found_chunks != chunk_count {
            return Err(framing(4, format!("chunk count is {found_chunks}, the header implies {chunk_count}")));
        }
        let found_total = le_u64(&buf, 8);
        if found_total != payload_total {
            return Err(framing(8, format!("payload total is {found_total}, the header implies {payload_total}")));
        }
        if buf[16..48] != computed_digest {
            return Err(Error::Digest {
                offset: start,
                stored: hex(&buf[16..24]),
                computed: hex(&computed_digest[..8]),
            });
        }
        let end = self.offset;
        let mut probe = [0u8; 1];
        loop {
            match self.inner.read(&mut probe) {
                Ok(0) => return Ok(ContentDigest(computed_digest)),
                Ok(_) => return Err(Error::TrailingBytes { offset: end }),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => return Err(Error::Io { offset: end, source }),
            }
        }
    }
}

/// The BLAKE3-256 digest of everything in a file before its trailer (header and chunks), as
/// stored in the trailer: a content id a client can record and a worker can compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentDigest(pub [u8; 32]);

impl std::fmt::Display for ContentDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl std::fmt::Debug for ContentDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentDigest({})", hex(&self.0[..8]))
    }
}

/// What a writer hands back when it is finished.
#[derive(Debug)]
pub struct Finished<W> {
    /// The writer, flushed.
    pub writer: W,
    /// The content digest written into the trailer.
    pub digest: ContentDigest,
    /// The file's size in bytes.
    pub len: u64,
}
