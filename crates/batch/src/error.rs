//! The crate's one error type. Every variant says what is wrong and where: the byte offset in
//! the file, the field or chunk, and expected versus found.

use std::fmt;

/// What went wrong writing or reading a batch file or a key bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying reader or writer failed.
    #[error("I/O error at byte {}: {source}", Grouped(*.offset))]
    Io {
        /// Position in the file when the error happened.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not the kind of container that was asked for.
    #[error("not {expected}: the file starts with {found}")]
    NotThisFormat {
        /// What was expected, with its magic (`an input batch ("BFIB")`).
        expected: &'static str,
        /// What the first bytes say instead.
        found: String,
    },
    /// A secret key where only public material is allowed.
    #[error(
        "refused: the {place} at byte {} is a secret key (magic \"BFSK\"); secret keys never leave \
         the hospital and are never accepted here — upload the evaluation-key bundle instead",
        Grouped(*.offset)
    )]
    SecretKey {
        /// Which part of the file holds it.
        place: &'static str,
        /// Where it starts.
        offset: u64,
    },
    /// A format version this build does not read.
    #[error(
        "format version {found} at byte 4: this build reads versions {} to {supported}; use a matching blindfold release",
        crate::framing::OLDEST_READ_VERSION
    )]
    UnsupportedVersion {
        /// The version in the file.
        found: u16,
        /// The version this build reads and writes.
        supported: u16,
    },
    /// A field holds a value the format does not allow.
    #[error("header field {field} at byte {}: {reason}", Grouped(*.offset))]
    Field {
        /// Where the field is.
        offset: u64,
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A field is above one of the format's limits (checked before anything is allocated).
    #[error("header field {field} at byte {}: {} is above the limit of {}", Grouped(*.offset), Grouped(*.value), Grouped(*.limit))]
    Limit {
        /// Where the field is.
        offset: u64,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The largest value allowed.
        limit: u64,
    },
    /// A CRC-32C did not match: the bytes of `place` were changed after writing.
    #[error(
        "{place} at byte {}: checksum mismatch (stored crc32c {stored:08x}, computed {computed:08x}); \
         the file is corrupted",
        Grouped(*.offset)
    )]
    Checksum {
        /// `header`, `chunk 17` or `trailer`.
        place: String,
        /// Where that part starts.
        offset: u64,
        /// The checksum in the file.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// The file ends before a part the header promises.
    #[error(
        "truncated: {place} at byte {} needs {} bytes but the file ends after {} of them; \
         the upload or download was cut short",
        Grouped(*.offset), Grouped(*.needed), Grouped(*.available)
    )]
    Truncated {
        /// `header`, `chunk 3` or `trailer`.
        place: String,
        /// Where that part starts.
        offset: u64,
        /// Its size.
        needed: u64,
        /// How many of its bytes are there.
        available: u64,
    },
    /// The chunk or trailer framing is wrong (tag, index or length).
    #[error("{place} at byte {}: {reason}", Grouped(*.offset))]
    Framing {
        /// `chunk 3` or `trailer`.
        place: String,
        /// Where the offending field is.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The header is well formed but not what the caller expected.
    #[error("header field {field}: expected {expected}, found {found}")]
    Mismatch {
        /// Which field.
        field: &'static str,
        /// What the caller expected.
        expected: String,
        /// What the file says.
        found: String,
    },
    /// The file was made for another CKKS parameter set.
    #[error("fingerprint: {object} made for parameters {found}…, {against} is for {expected}…")]
    FingerprintMismatch {
        /// `batch` or `key bundle`.
        object: &'static str,
        /// What the expectation came from (`the key set`, `this context`).
        against: &'static str,
        /// Hex prefix of the expected fingerprint.
        expected: String,
        /// Hex prefix of the file's fingerprint.
        found: String,
    },
    /// The BLAKE3 digest in the trailer does not match the bytes before it.
    #[error(
        "trailer at byte {}: content digest mismatch (stored blake3 {stored}…, computed {computed}…); \
         the file is corrupted or was spliced from two files",
        Grouped(*.offset)
    )]
    Digest {
        /// Where the trailer starts.
        offset: u64,
        /// Hex prefix of the stored digest.
        stored: String,
        /// Hex prefix of the computed digest.
        computed: String,
    },
    /// Bytes after the trailer.
    #[error("unexpected data at byte {} after the trailer", Grouped(*.offset))]
    TrailingBytes {
        /// Where the extra data starts.
        offset: u64,
    },
    /// A ciphertext inside a verified chunk was refused by the CKKS loader.
    #[error("ciphertext {index} at byte {}: {source}", Grouped(*.offset))]
    Ciphertext {
        /// Its position in the batch (0-based).
        index: u64,
        /// Where it starts.
        offset: u64,
        /// Why the loader refused it.
        source: blindfold_ckks::Error,
    },
    /// A ciphertext does not match the header (level, scale or size).
    #[error("ciphertext {index}: {field} is {found}, the header says {expected}")]
    CiphertextMismatch {
        /// Its position in the batch (0-based).
        index: u64,
        /// `level`, `scale` or `serialized length`.
        field: &'static str,
        /// What the header says.
        expected: String,
        /// What the ciphertext has.
        found: String,
    },
    /// A key-bundle section was refused by the CKKS loader.
    #[error("key bundle {section} at byte {}: {source}", Grouped(*.offset))]
    Key {
        /// `parameters`, `relinearization key` or `Galois keys`.
        section: &'static str,
        /// Where the section starts.
        offset: u64,
        /// Why the loader refused it.
        source: blindfold_ckks::Error,
    },
    /// The writer was given a header field the format cannot carry.
    #[error("invalid header field {field}: {reason}")]
    InvalidHeader {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The writer got a different number of ciphertexts than its header declares.
    #[error("the header declares {declared} ciphertexts but {pushed} were pushed")]
    Count {
        /// The header's ciphertext count.
        declared: u64,
        /// How many were pushed (or were being pushed when it went over).
        pushed: u64,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// A number with thousands separators (`5,242,880`), for messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grouped(pub(crate) u64);

impl fmt::Display for Grouped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Grouped;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(Grouped(0).to_string(), "0");
        assert_eq!(Grouped(999).to_string(), "999");
        assert_eq!(Grouped(1000).to_string(), "1,000");
        assert_eq!(Grouped(5_242_880).to_string(), "5,242,880");
        assert_eq!(Grouped(u64::MAX).to_string(), "18,446,744,073,709,551,615");
    }
}
