//! Evaluation-key bundles: round trips, a second encoder written from FORMAT.md, and the
//! refusals (secret key, other parameters, other key set, corruption, truncation).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};

use blindfold_batch::{Error, KeyBundle, KeyBundleExpect, KeyBundleWriter, Uuid};
use blindfold_ckks::{Context, GaloisKeys, KeyGenerator, ParametersBuilder, RelinKey};

/// The smallest *secure* set (N = 2^12, log2 QP ≈ 106 ≤ 109): a bundle's parameters are
/// re-checked for 128-bit security when loaded, so test-only sets cannot travel in one.
struct Setup {
    context: Arc<Context>,
    keys: KeyGenerator,
    relin: RelinKey,
    galois: GaloisKeys,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let params =
            ParametersBuilder::new(12).ciphertext_bits(&[36, 30]).special_bits(&[40]).log_scale(25).build().unwrap();
        let context = Context::new(params).unwrap();
        let keys = KeyGenerator::new(&context);
        let relin = keys.relin_key();
        let galois = keys.galois_keys(&[1, 2, -1], false);
        Setup { context, keys, relin, galois }
    })
}

fn key_set() -> Uuid {
    Uuid::from_u128(0xfeed)
}

fn bundle(chunk_size: u32) -> Vec<u8> {
    let Setup { context, relin, galois, .. } = setup();
    KeyBundleWriter::new()
        .chunk_size(chunk_size)
        .unwrap()
        .write(Vec::new(), context, key_set(), relin, galois)
        .unwrap()
        .writer
}

/// A second encoder, written from FORMAT.md alone: header, chunks over the concatenated
/// sections, trailer. Lets tests put anything in a section with valid checksums.
fn encode(fingerprint: [u8; 32], key_set: Uuid, chunk_size: u32, sections: [&[u8]; 3]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"BFKB");
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&96u32.to_le_bytes());
    out.extend_from_slice(&fingerprint);
    out.extend_from_slice(key_set.as_bytes());
    out.extend_from_slice(&chunk_size.to_le_bytes());
    for s in sections {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let payload: Vec<u8> = sections.concat();
    let chunks: Vec<&[u8]> = payload.chunks(chunk_size as usize).collect();
    for (index, chunk) in chunks.iter().enumerate() {
        let start = out.len();
        out.extend_from_slice(b"BFCH");
        out.extend_from_slice(&(index as u32).to_le_bytes());
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        out.extend_from_slice(chunk);
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    let digest = blake3::hash(&out);
    let start = out.len();
    out.extend_from_slice(b"BFTR");
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(digest.as_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn sections() -> [Vec<u8>; 3] {
    let Setup { context, relin, galois, .. } = setup();
    [context.params().to_bytes(), relin.to_bytes(context), galois.to_bytes(context)]
}

fn fingerprint() -> [u8; 32] {
    setup().context.params().fingerprint().0
}

#[test]
fn bundles_round_trip_at_any_chunk_size() {
    let Setup { context, relin, galois, .. } = setup();
    for chunk_size in [4096, 5000, 65_536, 1 << 20] {
        let finished = KeyBundleWriter::new()
            .chunk_size(chunk_size)
            .unwrap()
            .write(Vec::new(), context, key_set(), relin, galois)
            .unwrap();
        let file = finished.writer;
        let expect = KeyBundleExpect::new().fingerprint(context.params().fingerprint()).key_set(key_set());
        let bundle = KeyBundle::read(&file[..], &expect).unwrap();
        assert_eq!(bundle.key_set(), key_set());
        assert_eq!(bundle.parameters(), context.params());
        assert_eq!(bundle.relin_key(), relin);
        assert_eq!(bundle.galois_keys(), galois);
        assert_eq!(bundle.digest(), finished.digest);
    }
}

#[test]
fn a_plans_bundle_size_is_known_to_the_byte_before_the_keys_exist() {
    let Setup { context, keys, .. } = setup();
    let top = context.max_level();
    assert_eq!(KeyBundle::file_len(context, &[(1, top), (2, top), (-1, top)]), bundle(1 << 20).len() as u64);
    // Keys at lower levels, a repeated step, and none at all.
    for steps in [vec![(1, 0), (3, 1), (1, 1)], vec![]] {
        let galois = keys.galois_keys_at(&steps);
        let file = KeyBundle::write(Vec::new(), context, key_set(), &setup().relin, &galois).unwrap().writer;
        assert_eq!(KeyBundle::file_len(context, &steps), file.len() as u64, "{steps:?}");
    }
}

#[test]
fn the_format_document_is_enough_to_write_a_bundle() {
    // The independent encoder produces the very same bytes as the library.
    let [p, r, g] = sections();
    assert_eq!(encode(fingerprint(), key_set(), 4096, [&p, &r, &g]), bundle(4096));
}

#[test]
fn empty_galois_keys_are_allowed() {
    let Setup { context, relin, .. } = setup();
    let file = KeyBundle::write(Vec::new(), context, key_set(), relin, &GaloisKeys::default()).unwrap().writer;
    let bundle = KeyBundle::read(&file[..], &KeyBundleExpect::new()).unwrap();
    assert!(bundle.galois_keys().is_empty());
}

#[test]
fn a_bundle_with_a_secret_key_spliced_in_is_refused() {
    let secret = setup().keys.secret_key().to_bytes();
    let [p, r, g] = sections();
    // In place of the relinearization key, with every checksum valid.
    let file = encode(fingerprint(), key_set(), 4096, [&p, &secret, &g]);
    let error = KeyBundle::read(&file[..], &KeyBundleExpect::new()).unwrap_err();
    let offset = 96 + 12 + p.len() as u64; // header, chunk 0's framing, the parameters
    assert!(
        matches!(error, Error::SecretKey { place: "relinearization key", offset: at } if at == offset),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "refused: the relinearization key at byte {offset} is a secret key (magic \"BFSK\"); secret keys never \
             leave the hospital and are never accepted here — upload the evaluation-key bundle instead"
        )
    );
    // In place of the Galois keys, starting in a later chunk.
    let file = encode(fingerprint(), key_set(), 4096, [&p, &r, &secret]);
    let error = KeyBundle::read(&file[..], &KeyBundleExpect::new()).unwrap_err();
    assert!(matches!(error, Error::SecretKey { place: "Galois keys", .. }), "{error:?}");
    // In place of the parameters.
    let file = encode(fingerprint(), key_set(), 4096, [&secret, &r, &g]);
    let error = KeyBundle::read(&file[..], &KeyBundleExpect::new()).unwrap_err();
    assert!(matches!(error, Error::SecretKey { place: "parameters", offset: 108 }), "{error:?}");
    // Spliced over the real bytes without fixing checksums: the chunk CRC catches it first.
    let mut file = bundle(4096);
    let at = 96 + 12 + p.len();
    file[at..at + secret.len()].copy_from_slice(&secret);
    let error = KeyBundle::read(&file[..], &KeyBundleExpect::new()).unwrap_err();
    assert!(matches!(&error, Error::Checksum { place, offset: 96, .. } if place == "chunk 0"), "{error:?}");
    // A bare secret key file offered as a bundle.
    let error = KeyBundle::read(&secret[..], &KeyBundleExpect::new()).unwrap_err();
    assert!(matches!(error, Error::SecretKey { place: "file", offset: 0 }), "{error:?}");
}

#[test]
fn a_bundle_for_other_parameters_or_another_key_set_is_refused() {
    let file = bundle(4096);
    let other =
        ParametersBuilder::new(12).ciphertext_bits(&[36, 31]).special_bits(&[40]).log_scale(25).build().unwrap();
    let error = KeyBundle::read(&file[..], &KeyBundleExpect::new().fingerprint(other.fingerprint())).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "fingerprint: key bundle made for parameters {}…, the key set is for {}…",
            setup().context.params().fingerprint().short(),
            other.fingerprint().short()
        )
    );
    let error = KeyBundle::read(&file[..], &KeyBundleExpect::new().key_set(Uuid::from_u128(1))).unwrap_err();
    assert_eq!(
        error.to_string(),
        "header field key set: expected 00000000-0000-0000-0000-000000000001, found 00000000-0000-0000-0000-00000000feed"
    );
    // Keys made under other parameters than the ones in the bundle: the CKKS loader refuses.
    let other_context = Context::new(other).unwrap();
    let other_relin = KeyGenerator::new(&other_context).relin_key();
    let [p, _, g] = sections();
    let file = encode(fingerprint(), key_set(), 4096, [&p, &other_relin.to_bytes(&other_context), &g]);
    let error = KeyBundle::read(&file[..], &KeyBundleExpect::new()).unwrap_err();
    assert!(matches!(error, Error::Key { section: "relinearization key", .. }), "{error:?}");
    assert!(error.to_string().contains("fingerprint mismatch"), "{error}");
    // A header fingerprint that does not match the parameters it carries.
    let file = encode([7; 32], key_set(), 4096, [&p, &sections()[1], &g]);
    let error = KeyBundle::read(&file[..], &KeyBundleExpect::new()).unwrap_err();
    assert!(matches!(error, Error::FingerprintMismatch { against: "the bundle header", .. }), "{error:?}");
    // The writer refuses keys made for another context.
    let Setup { context, galois, .. } = setup();
    let error = KeyBundle::write(Vec::new(), context, key_set(), &other_relin, galois).unwrap_err();
    assert!(matches!(error, Error::FingerprintMismatch { object: "relinearization key", .. }), "{error:?}");
}

#[test]
fn a_truncated_or_corrupted_bundle_is_refused() {
    let file = bundle(4096);
    let error = KeyBundle::read(&file[..file.len() / 2], &KeyBundleExpect::new()).unwrap_err();
    assert!(matches!(error, Error::Truncated { .. }), "{error:?}");
    assert!(error.to_string().starts_with("truncated: chunk "), "{error}");
    let error = KeyBundle::read(&file[..60], &KeyBundleExpect::new()).unwrap_err();
    assert!(matches!(error, Error::Truncated { needed: 96, available: 60, .. }), "{error:?}");

    let mut bad = file.clone();
    let middle = file.len() / 2;
    bad[middle] ^= 0x40;
    let error = KeyBundle::read(&bad[..], &KeyBundleExpect::new()).unwrap_err();
    let chunk = (middle - 96) / (4096 + 16);
    assert!(
        matches!(&error, Error::Checksum { place, offset, .. }
            if *place == format!("chunk {chunk}") && *offset == (96 + chunk * (4096 + 16)) as u64),
        "{error:?}"
    );
    // A batch file is not a bundle.
    let error = KeyBundle::read(&b"BFIB\x01\x00"[..], &KeyBundleExpect::new()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "not an evaluation-key bundle (\"BFKB\"): the file starts with \"BFIB\" (an input batch)"
    );
    // Section lengths above the limits are refused from the header.
    let [p, r, g] = sections();
    let mut bad = encode(fingerprint(), key_set(), 4096, [&p, &r, &g]);
    bad[80..88].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let crc = crc32c::crc32c(&bad[..92]);
    bad[92..96].copy_from_slice(&crc.to_le_bytes());
    let error = KeyBundle::read(&bad[..], &KeyBundleExpect::new()).unwrap_err();
    assert!(matches!(error, Error::Limit { offset: 80, field: "Galois keys", .. }), "{error:?}");
}

#[test]
fn chunk_sizes_outside_the_range_are_refused() {
    assert!(KeyBundleWriter::new().chunk_size(1000).is_err());
    assert!(KeyBundleWriter::new().chunk_size(128 << 20).is_err());
}
