//! Batch files: round trips, and every way a batch can be wrong refused with a precise message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};

use blindfold_batch::{
    BatchHeader, BatchKind, ContentDigest, Error, Expect, InputBatchReader, InputBatchWriter, Origin, Packing,
    RawBatchReader, ResultBatchReader, ResultBatchWriter, Uuid,
};
use blindfold_ckks::{Context, KeyGenerator, ParametersBuilder, SecretKeyEncryptor, SeededCiphertext};
use proptest::prelude::*;

/// A tiny INSECURE parameter set (N = 2^6): small ciphertexts, fast tests.
fn toy(bits: &[u32]) -> Arc<Context> {
    let params = ParametersBuilder::new(6)
        .ciphertext_bits(bits)
        .special_bits(&[40])
        .log_scale(20)
        .build_insecure_for_tests()
        .unwrap();
    Context::new(params).unwrap()
}

struct Setup {
    context: Arc<Context>,
    encryptor: SecretKeyEncryptor,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let context = toy(&[40, 30]);
        let keys = KeyGenerator::new(&context);
        let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone()).unwrap();
        Setup { context, encryptor }
    })
}

/// A number as the error messages print it (`5,242,880`).
fn grouped(n: impl Into<u64>) -> String {
    let digits = n.into().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn key_set() -> Uuid {
    Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)
}

fn header(ciphertext_count: u64, level: usize, scale: f64) -> BatchHeader {
    BatchHeader {
        model: "mnist-cryptonets".into(),
        model_version: "1".into(),
        packing: Packing::Throughput,
        shape: vec![1, 28, 28],
        image_count: 7,
        ciphertext_count,
        level,
        scale,
        key_set: key_set(),
        origin: None,
    }
}

fn seeded(count: usize, seed: u64) -> Vec<SeededCiphertext> {
    let Setup { context, encryptor } = setup();
    (0..count)
        .map(|i| {
            let value = (seed as f64 + i as f64) / 100.0;
            let plaintext = context.encode(&[value, -value], context.max_level(), context.params().scale()).unwrap();
            encryptor.encrypt_seeded(&plaintext).unwrap()
        })
        .collect()
}

/// Writes an input batch of `count` ciphertexts, `per_chunk` to a chunk.
fn input_batch(count: usize, per_chunk: u32) -> (Vec<SeededCiphertext>, Vec<u8>) {
    let context = &setup().context;
    let ciphertexts = seeded(count, 1);
    let header = header(count as u64, context.max_level(), context.params().scale());
    let mut writer = InputBatchWriter::new(Vec::new(), context, header).unwrap().ciphertexts_per_chunk(per_chunk);
    for c in &ciphertexts {
        writer.push(c).unwrap();
    }
    (ciphertexts, writer.finish().unwrap().writer)
}

fn read_all(file: &[u8], expect: &Expect) -> Result<Vec<SeededCiphertext>, Error> {
    InputBatchReader::open(file, &setup().context, expect)?.collect()
}

fn read_error(file: &[u8], expect: &Expect) -> Error {
    read_all(file, expect).expect_err("the batch must be refused")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any count and chunking: what is read back serializes to exactly what was written, the
    /// layout predicts the file size, and the digest read equals the digest written.
    #[test]
    fn input_batches_round_trip(count in 1usize..24, per_chunk in 1u32..9) {
        let context = &setup().context;
        let ciphertexts = seeded(count, count as u64);
        let header = header(count as u64, context.max_level(), context.params().scale());
        let mut writer = InputBatchWriter::new(Vec::new(), context, header.clone())
            .unwrap()
            .ciphertexts_per_chunk(per_chunk);
        for c in &ciphertexts {
            writer.push(c).unwrap();
        }
        let finished = writer.finish().unwrap();
        let file = finished.writer;
        prop_assert_eq!(finished.len, file.len() as u64);

        let mut reader = InputBatchReader::open(&file[..], context, &Expect::new()).unwrap();
        prop_assert_eq!(reader.header(), &header);
        prop_assert_eq!(reader.layout().file_len(), file.len() as u64);
        let mut read = Vec::new();
        while let Some(c) = reader.next_ciphertext().unwrap() {
            read.push(c);
        }
        prop_assert_eq!(reader.digest(), Some(finished.digest));
        prop_assert_eq!(read.len(), count);
        for (a, b) in ciphertexts.iter().zip(&read) {
            prop_assert_eq!(a.to_bytes(context), b.to_bytes(context));
        }
        let raw = RawBatchReader::open(&file[..], BatchKind::Input, &Expect::new()).unwrap();
        prop_assert_eq!(raw.verify().unwrap(), finished.digest);
    }

    /// Result batches hold full ciphertexts; same property.
    #[test]
    fn result_batches_round_trip(count in 1usize..12, per_chunk in 1u32..5) {
        let context = &setup().context;
        let full: Vec<_> = seeded(count, 3).iter().map(|c| c.expand(context)).collect();
        let mut header = header(count as u64, context.max_level(), context.params().scale());
        header.shape = vec![10];
        let origin = Origin { job: Some(Uuid::from_u128(count as u128)), input: ContentDigest([per_chunk as u8; 32]) };
        header.origin = Some(origin);
        let mut writer =
            ResultBatchWriter::new(Vec::new(), context, header).unwrap().ciphertexts_per_chunk(per_chunk);
        for c in &full {
            writer.push(c).unwrap();
        }
        let file = writer.finish().unwrap().writer;
        let reader = ResultBatchReader::open(&file[..], context, &Expect::new()).unwrap();
        prop_assert_eq!(reader.header().origin, Some(origin));
        let read: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(read.len(), count);
        for (a, b) in full.iter().zip(&read) {
            prop_assert_eq!(a.to_bytes(context), b.to_bytes(context));
        }
    }
}

#[test]
fn default_chunking_and_layout_offsets() {
    let (ciphertexts, file) = {
        let context = &setup().context;
        let ciphertexts = seeded(5, 9);
        let header = header(5, context.max_level(), context.params().scale());
        let mut writer = InputBatchWriter::new(Vec::new(), context, header).unwrap();
        for c in &ciphertexts {
            writer.push(c).unwrap();
        }
        (ciphertexts, writer.finish().unwrap().writer)
    };
    let context = &setup().context;
    let reader = InputBatchReader::open(&file[..], context, &Expect::new()).unwrap();
    let layout = reader.layout();
    // Small ciphertexts: the whole batch fits one default (4 MiB) chunk.
    assert_eq!(layout.chunk_count(), 1);
    assert_eq!(layout.ciphertexts_per_chunk(), 5);
    assert_eq!(layout.ciphertext_len() as usize, SeededCiphertext::serialized_len(context, context.max_level()));
    for (i, c) in ciphertexts.iter().enumerate() {
        let at = layout.ciphertext_offset(i as u64) as usize;
        let bytes = c.to_bytes(context);
        assert_eq!(&file[at..at + bytes.len()], &bytes[..], "ciphertext {i} is where the layout says");
    }
}

#[test]
fn expectations_that_hold_pass() {
    let (_, file) = input_batch(3, 2);
    let context = &setup().context;
    let expect = Expect::new()
        .fingerprint(context.params().fingerprint())
        .model("mnist-cryptonets", "1")
        .packing(Packing::Throughput)
        .key_set(key_set())
        .image_count(7)
        .ciphertext_count(3)
        .level(context.max_level())
        .shape(vec![1, 28, 28]);
    assert_eq!(read_all(&file, &expect).unwrap().len(), 3);
}

#[test]
fn a_batch_for_another_model_is_refused() {
    let (_, file) = input_batch(2, 1);
    let error = read_error(&file, &Expect::new().model("derma-lenet5", "1"));
    assert!(matches!(error, Error::Mismatch { field: "model", .. }), "{error:?}");
    assert_eq!(error.to_string(), "header field model: expected derma-lenet5, found mnist-cryptonets");

    let error = read_error(&file, &Expect::new().model("mnist-cryptonets", "2"));
    assert_eq!(error.to_string(), "header field model version: expected 2, found 1");

    let error = read_error(&file, &Expect::new().packing(Packing::Latency));
    assert_eq!(error.to_string(), "header field packing: expected latency, found throughput");

    let error = read_error(&file, &Expect::new().image_count(8));
    assert_eq!(error.to_string(), "header field image count: expected 8, found 7");
}

#[test]
fn a_batch_made_with_other_keys_is_refused() {
    let (_, file) = input_batch(2, 1);
    // Another key set id.
    let other = Uuid::from_u128(7);
    let error = read_error(&file, &Expect::new().key_set(other));
    assert_eq!(
        error.to_string(),
        format!("header field key set: expected {other}, found 01234567-89ab-cdef-0123-456789abcdef")
    );

    // Keys made for other parameters: the key set's fingerprint …
    let other_context = toy(&[40, 30, 30]);
    let ours = setup().context.params().fingerprint();
    let theirs = other_context.params().fingerprint();
    let error = read_error(&file, &Expect::new().fingerprint(theirs));
    assert!(matches!(error, Error::FingerprintMismatch { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("fingerprint: batch made for parameters {}…, the key set is for {}…", ours.short(), theirs.short())
    );
    // … and the context a worker evaluates with.
    let error = InputBatchReader::open(&file[..], &other_context, &Expect::new()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "fingerprint: batch made for parameters {}…, the context in use is for {}…",
            ours.short(),
            theirs.short()
        )
    );
}

#[test]
fn a_truncated_batch_is_refused_where_it_ends() {
    let (_, file) = input_batch(6, 2);
    let context = &setup().context;
    let layout = InputBatchReader::open(&file[..], context, &Expect::new()).unwrap().layout();
    let chunk_len = layout.chunk_payload_len(0) + 16;

    // Cut inside chunk 1.
    let start = layout.chunk_offset(1);
    let cut = start as usize + 100;
    let error = read_error(&file[..cut], &Expect::new());
    assert!(matches!(error, Error::Truncated { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "truncated: chunk 1 at byte {} needs {} bytes but the file ends after 100 of them; \
             the upload or download was cut short",
            grouped(start),
            grouped(chunk_len)
        )
    );

    // Cut exactly between chunks: chunk 2 is missing entirely.
    let error = read_error(&file[..layout.chunk_offset(2) as usize], &Expect::new());
    assert!(matches!(&error, Error::Truncated { place, available: 0, .. } if place == "chunk 2"), "{error:?}");

    // Cut inside the trailer.
    let error = read_error(&file[..file.len() - 10], &Expect::new());
    assert!(
        matches!(&error, Error::Truncated { place, needed: 52, available: 42, .. } if place == "trailer"),
        "{error:?}"
    );

    // Cut inside the header.
    let error = read_error(&file[..50], &Expect::new());
    let header_len = layout.header_len();
    assert_eq!(
        error.to_string(),
        format!(
            "truncated: header at byte 0 needs {} bytes but the file ends after 50 of them; \
             the upload or download was cut short",
            grouped(header_len)
        )
    );

    // An empty file.
    let error = read_error(&[], &Expect::new());
    assert!(matches!(error, Error::Truncated { needed: 4, available: 0, .. }), "{error:?}");
}

#[test]
fn a_flipped_byte_is_caught_at_its_chunk() {
    let (_, file) = input_batch(9, 2);
    let context = &setup().context;
    let layout = InputBatchReader::open(&file[..], context, &Expect::new()).unwrap().layout();
    assert_eq!(layout.chunk_count(), 5);
    for chunk in 0..layout.chunk_count() {
        let start = layout.chunk_offset(chunk);
        let mut bad = file.clone();
        // A byte in the middle of the chunk's payload.
        let at = start as usize + 12 + layout.chunk_payload_len(chunk) as usize / 2;
        bad[at] ^= 0x10;
        let mut reader = InputBatchReader::open(&bad[..], context, &Expect::new()).unwrap();
        // Every ciphertext before the broken chunk is handed out; then the error.
        for _ in 0..u64::from(chunk) * 2 {
            reader.next_ciphertext().unwrap().unwrap();
        }
        let error = reader.next_ciphertext().unwrap_err();
        assert!(
            matches!(&error, Error::Checksum { place, offset, .. } if *place == format!("chunk {chunk}") && *offset == start)
        );
        assert!(
            error
                .to_string()
                .starts_with(&format!("chunk {chunk} at byte {}: checksum mismatch (stored crc32c", grouped(start))),
            "{error}"
        );
        // The reader stays stopped.
        assert!(reader.next().is_none());
    }

    // A flipped byte in the header.
    let mut bad = file.clone();
    bad[70] ^= 1;
    let error = read_error(&bad, &Expect::new());
    assert!(matches!(&error, Error::Checksum { place, offset: 0, .. } if place == "header"), "{error:?}");

    // In the trailer's digest: the CRC of the trailer catches it.
    let mut bad = file.clone();
    let at = file.len() - 20;
    bad[at] ^= 1;
    let error = read_error(&bad, &Expect::new());
    assert!(matches!(&error, Error::Checksum { place, .. } if place == "trailer"), "{error:?}");
}

#[test]
fn chunks_swapped_between_files_are_caught() {
    // Two batches with identical headers but other ciphertexts: a chunk from the second,
    // spliced into the first, has a valid CRC and index; only the content digest catches it.
    let context = &setup().context;
    let write = |seed| {
        let header = header(4, context.max_level(), context.params().scale());
        let mut writer = InputBatchWriter::new(Vec::new(), context, header).unwrap().ciphertexts_per_chunk(2);
        for c in seeded(4, seed) {
            writer.push(&c).unwrap();
        }
        writer.finish().unwrap().writer
    };
    let (first, second) = (write(1), write(2));
    let layout = InputBatchReader::open(&first[..], context, &Expect::new()).unwrap().layout();
    let (a, b) = (layout.chunk_offset(1) as usize, layout.chunk_offset(2) as usize);
    let mut spliced = first.clone();
    spliced[a..b].copy_from_slice(&second[a..b]);
    let error = read_error(&spliced, &Expect::new());
    assert!(matches!(error, Error::Digest { .. }), "{error:?}");
    assert!(error.to_string().contains("content digest mismatch"), "{error}");

    // Chunks in the wrong order: the index field says so.
    let mut swapped = first.clone();
    let chunk_len = b - a;
    let (c0, c1) = (layout.chunk_offset(0) as usize, a);
    swapped[c0..c0 + chunk_len].copy_from_slice(&first[c1..c1 + chunk_len]);
    swapped[c1..c1 + chunk_len].copy_from_slice(&first[c0..c0 + chunk_len]);
    let error = read_error(&swapped, &Expect::new());
    assert_eq!(
        error.to_string(),
        format!(
            "chunk 0 at byte {}: chunk index field is 1, expected 0 (chunks reordered or spliced)",
            grouped(c0 as u64 + 4)
        )
    );
}

#[test]
fn wrong_containers_are_named() {
    let (_, file) = input_batch(2, 1);
    let context = &setup().context;
    let error = ResultBatchReader::open(&file[..], context, &Expect::new()).unwrap_err();
    assert_eq!(error.to_string(), "not a result batch (\"BFRB\"): the file starts with \"BFIB\" (an input batch)");
    // A secret key is named as such and refused.
    let keys = KeyGenerator::new(context);
    let secret = keys.secret_key().to_bytes();
    let error = read_error(&secret, &Expect::new());
    assert!(matches!(error, Error::SecretKey { place: "file", offset: 0 }), "{error:?}");
    assert!(error.to_string().contains("is a secret key"), "{error}");
    // A bare CKKS ciphertext is not a batch.
    let error = read_error(&seeded(1, 0)[0].to_bytes(context), &Expect::new());
    assert!(error.to_string().contains("a single CKKS object"), "{error}");
    // A newer format version.
    let mut newer = file.clone();
    newer[4] = 3;
    assert_eq!(
        read_error(&newer, &Expect::new()).to_string(),
        "format version 3 at byte 4: this build reads versions 1 to 2; use a matching blindfold release"
    );
    // Data after the trailer.
    let mut longer = file.clone();
    longer.push(0);
    assert_eq!(
        read_error(&longer, &Expect::new()).to_string(),
        format!("unexpected data at byte {} after the trailer", grouped(file.len() as u64))
    );
}

#[test]
fn header_limits_are_checked_before_reading_on() {
    let (_, file) = input_batch(2, 1);
    let fix_crc = |bytes: &mut Vec<u8>| {
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let crc = crc32c::crc32c(&bytes[..len - 4]);
        bytes[len - 4..len].copy_from_slice(&crc.to_le_bytes());
    };
    // A header claiming a huge length.
    let mut bad = file.clone();
    bad[8..12].copy_from_slice(&100_000u32.to_le_bytes());
    assert_eq!(
        read_error(&bad, &Expect::new()).to_string(),
        "header field header length at byte 8: 100,000 is above the limit of 4,096"
    );
    // A ciphertext count above the limit, with a valid CRC.
    let mut bad = file.clone();
    bad[80..88].copy_from_slice(&(1u64 << 40).to_le_bytes());
    fix_crc(&mut bad);
    let error = read_error(&bad, &Expect::new());
    assert!(matches!(error, Error::Limit { offset: 80, field: "ciphertext count", .. }), "{error:?}");
    // A chunk that would be larger than the limit.
    let mut bad = file.clone();
    bad[92..96].copy_from_slice(&u32::MAX.to_le_bytes());
    fix_crc(&mut bad);
    let error = read_error(&bad, &Expect::new());
    assert!(matches!(error, Error::Limit { offset: 92, .. }), "{error:?}");
    // A ciphertext length that does not fit the parameters.
    let mut bad = file.clone();
    let len = u32::from_le_bytes(bad[88..92].try_into().unwrap());
    bad[88..92].copy_from_slice(&(len + 1).to_le_bytes());
    fix_crc(&mut bad);
    let error = read_error(&bad, &Expect::new());
    assert!(matches!(error, Error::Field { offset: 88, field: "ciphertext length", .. }), "{error:?}");
    // An unknown packing code.
    let mut bad = file.clone();
    bad[60] = 9;
    fix_crc(&mut bad);
    assert_eq!(
        read_error(&bad, &Expect::new()).to_string(),
        "header field packing at byte 60: code 9 (1 throughput, 2 latency)"
    );
}

#[test]
fn the_writer_refuses_what_the_header_does_not_promise() {
    let context = &setup().context;
    let scale = context.params().scale();
    let ciphertexts = seeded(3, 4);

    // Too many and too few.
    let mut writer = InputBatchWriter::new(Vec::new(), context, header(2, context.max_level(), scale)).unwrap();
    writer.push(&ciphertexts[0]).unwrap();
    writer.push(&ciphertexts[1]).unwrap();
    let error = writer.push(&ciphertexts[2]).unwrap_err();
    assert_eq!(error.to_string(), "the header declares 2 ciphertexts but 3 were pushed");
    let mut writer = InputBatchWriter::new(Vec::new(), context, header(2, context.max_level(), scale)).unwrap();
    writer.push(&ciphertexts[0]).unwrap();
    assert!(matches!(writer.finish(), Err(Error::Count { declared: 2, pushed: 1 })));

    // Another level or scale.
    let mut writer = InputBatchWriter::new(Vec::new(), context, header(2, 0, scale)).unwrap();
    let error = writer.push(&ciphertexts[0]).unwrap_err();
    assert_eq!(error.to_string(), "ciphertext 0: level is 1, the header says 0");
    let mut writer = InputBatchWriter::new(Vec::new(), context, header(2, 1, scale * 2.0)).unwrap();
    let error = writer.push(&ciphertexts[0]).unwrap_err();
    assert!(matches!(error, Error::CiphertextMismatch { index: 0, field: "scale", .. }), "{error:?}");

    // Header fields the format cannot carry.
    let mut bad = header(2, 1, scale);
    bad.model = "mnist cryptonets".into();
    let error = InputBatchWriter::new(Vec::new(), context, bad).unwrap_err();
    assert!(matches!(error, Error::InvalidHeader { field: "model", .. }), "{error:?}");
    let mut bad = header(2, 1, scale);
    bad.shape = vec![];
    assert!(InputBatchWriter::new(Vec::new(), context, bad).is_err());
    let error = InputBatchWriter::new(Vec::new(), context, header(2, 5, scale)).unwrap_err();
    assert!(matches!(error, Error::InvalidHeader { field: "level", .. }), "{error:?}");
}

#[test]
fn a_corrupted_ciphertext_behind_a_recomputed_crc_is_refused_by_the_loader() {
    // Someone rewrote a chunk *and* its CRC (but not the trailer): the loader still checks the
    // ciphertext object, and the trailer's digest catches the rest.
    let (_, file) = input_batch(2, 1);
    let context = &setup().context;
    let layout = InputBatchReader::open(&file[..], context, &Expect::new()).unwrap().layout();
    let start = layout.chunk_offset(1) as usize;
    let end = start + 12 + layout.ciphertext_len() as usize;
    let mut bad = file.clone();
    bad[start + 12] = b'X'; // the ciphertext's own magic
    let crc = crc32c::crc32c(&bad[start..end]);
    bad[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    let error = read_error(&bad, &Expect::new());
    assert!(matches!(error, Error::Digest { .. }), "{error:?}");
}

#[test]
fn a_result_records_its_origin_and_an_input_has_none() {
    let context = &setup().context;
    let scale = context.params().scale();
    let full: Vec<_> = seeded(1, 4).iter().map(|c| c.expand(context)).collect();
    let mut result = header(1, context.max_level(), scale);
    result.shape = vec![10];
    let refused = ResultBatchWriter::new(Vec::new(), context, result.clone()).unwrap_err();
    assert!(refused.to_string().contains("origin"), "{refused}");
    let mut input = header(1, context.max_level(), scale);
    input.origin = Some(Origin { job: None, input: ContentDigest([7; 32]) });
    assert!(InputBatchWriter::new(Vec::new(), context, input).unwrap_err().to_string().contains("no origin"));

    // Evaluated outside the service: no job, written as the nil UUID and read back as none.
    result.origin = Some(Origin { job: None, input: ContentDigest([9; 32]) });
    let mut writer = ResultBatchWriter::new(Vec::new(), context, result).unwrap();
    writer.push(&full[0]).unwrap();
    let file = writer.finish().unwrap().writer;
    let reader = ResultBatchReader::open(&file[..], context, &Expect::new()).unwrap();
    assert_eq!(reader.header().origin, Some(Origin { job: None, input: ContentDigest([9; 32]) }));
}

#[test]
fn a_version_1_result_without_an_origin_is_still_read() {
    let context = &setup().context;
    let full: Vec<_> = seeded(1, 5).iter().map(|c| c.expand(context)).collect();
    let mut result = header(1, context.max_level(), context.params().scale());
    result.shape = vec![10];
    result.origin = Some(Origin { job: Some(Uuid::from_u128(5)), input: ContentDigest([3; 32]) });
    let mut writer = ResultBatchWriter::new(Vec::new(), context, result).unwrap();
    writer.push(&full[0]).unwrap();
    let mut file = writer.finish().unwrap().writer;
    // Rewrite it as version 1 wrote it: no origin, version 1, header length and CRC to match.
    let header_len = u32::from_le_bytes(file[8..12].try_into().unwrap()) as usize;
    let old_len = header_len - 48;
    let mut header = file[..header_len - 4 - 48].to_vec();
    header[4..6].copy_from_slice(&1u16.to_le_bytes());
    header[8..12].copy_from_slice(&(old_len as u32).to_le_bytes());
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    let body = file.split_off(header_len);
    // The trailer's digest covers the header: recompute it as version 1 would have.
    let mut old = header;
    old.extend_from_slice(&body);
    let trailer_at = old.len() - 52;
    let digest = blake3::hash(&old[..trailer_at]);
    old[trailer_at + 16..trailer_at + 48].copy_from_slice(digest.as_bytes());
    let crc = crc32c::crc32c(&old[trailer_at..trailer_at + 48]);
    old[trailer_at + 48..].copy_from_slice(&crc.to_le_bytes());
    let reader = ResultBatchReader::open(&old[..], context, &Expect::new()).unwrap();
    assert_eq!(reader.header().origin, None);
    assert_eq!(reader.collect::<Result<Vec<_>, _>>().unwrap().len(), 1);
}
