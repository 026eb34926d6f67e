//! Key sets on disk: file modes, the descriptor, and the bundles a keys directory must refuse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use blindfold_client::{Error, KeySet, PackingChoice, part_path, read_evaluation_keys};

const MODEL: &str = "mnist-cryptonets";

/// A key bundle written from `crates/batch/FORMAT.md`, with any bytes in its three sections
/// and every checksum valid.
fn encode_bundle(fingerprint: [u8; 32], key_set: uuid::Uuid, sections: [&[u8]; 3]) -> Vec<u8> {
    let chunk_size = 1u32 << 20;
    let mut out = Vec::new();
    out.extend_from_slice(b"BFKB");
    out.extend_from_slice(&1u16.to_le_bytes());
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

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_writes_a_private_secret_key_a_bundle_and_a_descriptor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let keys = KeySet::generate(&dir, MODEL, PackingChoice::Auto).unwrap();
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("secret.key")), 0o600);
    }
    let opened = KeySet::open(&dir).unwrap();
    assert_eq!(opened.descriptor(), keys.descriptor());
    let d = keys.descriptor();
    assert_eq!((d.model.as_str(), d.packing.as_str(), d.rotation_steps.len()), (MODEL, "throughput", 0));
    let model = keys.compiled_model().unwrap();
    assert_eq!(d.fingerprint, model.fingerprint().to_string());
    let bundle = keys.evaluation_keys().unwrap();
    assert_eq!(bundle.key_set(), keys.id());
    assert!(bundle.galois_keys().is_empty(), "throughput needs no rotation keys");
    // The descriptor holds nothing secret: no key bytes, just these fields.
    let json = std::fs::read_to_string(dir.join("keyset.json")).unwrap();
    assert!(json.len() < 1000, "{json}");
}

#[test]
fn a_bundle_with_the_secret_key_spliced_in_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let keys = KeySet::generate(&dir, MODEL, PackingChoice::Auto).unwrap();
    let bundle = keys.evaluation_keys().unwrap();
    let context = bundle.context();
    let params = context.params().to_bytes();
    let galois = bundle.galois_keys().to_bytes(context);
    let secret = std::fs::read(dir.join("secret.key")).unwrap();
    let spliced = encode_bundle(context.params().fingerprint().0, keys.id(), [&params, &secret, &galois]);
    std::fs::write(dir.join("evaluation.keys"), spliced).unwrap();
    let error = keys.evaluation_keys().unwrap_err();
    assert!(
        matches!(&error, Error::Batch { error, .. }
            if matches!(**error, blindfold_batch::Error::SecretKey { place: "relinearization key", .. })),
        "{error:?}"
    );
    assert!(error.to_string().contains("is a secret key (magic \"BFSK\"); secret keys never leave the hospital"));
}

#[test]
fn only_a_secret_key_is_not_enough_to_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    KeySet::generate(&dir, MODEL, PackingChoice::Auto).unwrap();
    std::fs::remove_file(dir.join("evaluation.keys")).unwrap();
    let error = read_evaluation_keys(&dir, None).unwrap_err();
    assert!(matches!(error, Error::OnlySecretKey { .. }), "{error:?}");
}

#[test]
fn split_jobs_are_numbered_before_the_extension() {
    assert_eq!(part_path(Path::new("out/job.bfib"), 0), Path::new("out/job.bfib"));
    assert_eq!(part_path(Path::new("out/job.bfib"), 2), Path::new("out/job.2.bfib"));
    assert_eq!(part_path(Path::new("job"), 1), Path::new("job.1"));
}
