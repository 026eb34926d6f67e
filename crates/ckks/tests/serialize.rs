//! Serialization: round trips, and every kind of bad input refused with the right error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use blindfold_ckks::{
    Ciphertext, Error, GaloisKeys, Parameters, Preset, PublicKey, RelinKey, SecretKey, SeededCiphertext,
};
use common::{max_error, random_values, toy};
use proptest::prelude::*;

#[test]
fn everything_round_trips() {
    let s = toy();
    let ctx = &s.context;
    let values = random_values(11, ctx.slots(), 4.0);
    let pt = ctx.encode(&values, 3, ctx.params().scale()).unwrap();
    let seeded = s.encryptor.encrypt_seeded(&pt).unwrap();
    let seeded_bytes = seeded.to_bytes(ctx);
    assert_eq!(seeded_bytes.len(), SeededCiphertext::serialized_len(ctx, 3));
    let seeded_back = SeededCiphertext::from_bytes(ctx, &seeded_bytes).unwrap();
    assert_eq!(seeded_back, seeded);
    let full = seeded.expand(ctx);
    let full_bytes = full.to_bytes(ctx);
    assert!(seeded_bytes.len() * 2 < full_bytes.len() + 200, "seeded form is not half the size");
    let full_back = Ciphertext::from_bytes(ctx, &full_bytes).unwrap();
    assert_eq!(full_back, full);
    assert!(max_error(&values, &s.decryptor.decrypt_values(&full_back).unwrap()) < 1e-6);

    let pk = s.keys.public_key();
    assert_eq!(PublicKey::from_bytes(ctx, &pk.to_bytes(ctx)).unwrap(), pk);
    assert_eq!(RelinKey::from_bytes(ctx, &s.relin.to_bytes(ctx)).unwrap(), s.relin);
    assert_eq!(GaloisKeys::from_bytes(ctx, &s.galois.to_bytes(ctx)).unwrap(), s.galois);
    let secret = s.keys.secret_key();
    let secret_back = SecretKey::from_bytes(ctx, &secret.to_bytes()).unwrap();
    // A decryptor with the reloaded key decrypts what the original encrypted.
    let decryptor = blindfold_ckks::Decryptor::new(ctx, secret_back).unwrap();
    assert!(max_error(&values, &decryptor.decrypt_values(&full).unwrap()) < 1e-6);

    let params = Preset::N14Depth7.parameters().unwrap();
    assert_eq!(Parameters::from_bytes(&params.to_bytes()).unwrap(), params);
}

#[test]
fn hybrid_sets_and_keys_below_the_top_level_round_trip() {
    let params = blindfold_ckks::ParametersBuilder::new(14)
        .ciphertext_bits(&[31, 29, 29, 29, 29, 29, 29, 29])
        .special_bits(&[31, 31, 31, 31])
        .digit_primes(4)
        .log_scale(28)
        .build()
        .unwrap();
    let back = Parameters::from_bytes(&params.to_bytes()).unwrap();
    assert_eq!(back, params);
    assert_eq!(back.digit_primes(), 4);
    // The digit size is part of the fingerprint.
    let one = blindfold_ckks::ParametersBuilder::new(14)
        .ciphertext_bits(&[31, 29, 29, 29, 29, 29, 29, 29])
        .special_bits(&[31, 31, 31, 31])
        .log_scale(28)
        .build()
        .unwrap();
    assert_ne!(one.fingerprint(), params.fingerprint());
    let s = common::setup(params, &[]);
    let ctx = &s.context;
    // Step 3 twice (the higher level wins), step 0 (the identity: no key), a level above the top.
    let steps = [(3, 7), (5, 2), (9, 0), (3, 1), (0, 4), (-1, 99)];
    let keys = s.keys.galois_keys_at(&steps);
    let bytes = keys.to_bytes(ctx);
    assert_eq!(bytes.len(), GaloisKeys::serialized_len_at(ctx, &steps), "the exact size a bundle must have");
    assert_eq!(s.relin.to_bytes(ctx).len(), RelinKey::serialized_len(ctx));
    assert_eq!(s.keys.galois_keys_at(&[]).to_bytes(ctx).len(), GaloisKeys::serialized_len_at(ctx, &[]));
    let back = GaloisKeys::from_bytes(ctx, &bytes).unwrap();
    assert_eq!(back, keys);
    // Twice two digits of 8 + 4 rows at level 7, one of 3 + 4 at level 2, one of 1 + 4 at level 0.
    let row = (ctx.params().n() * 31).div_ceil(8);
    assert!(bytes.len() <= (4 * 12 + 7 + 5) * row + 300, "{} bytes", bytes.len());
    assert_eq!(RelinKey::from_bytes(ctx, &s.relin.to_bytes(ctx)).unwrap(), s.relin);
}

#[test]
fn version_1_objects_still_load() {
    // Version 1 had no digit size after the parameters and no level in a key.
    let preset = Preset::N13Depth2.parameters().unwrap();
    let mut params = preset.to_bytes();
    params[4] = 1;
    params.pop();
    assert_eq!(Parameters::from_bytes(&params).unwrap(), preset);
    let s = toy();
    let ctx = &s.context;
    let mut relin = s.relin.to_bytes(ctx);
    relin[4] = 1;
    relin.remove(40 + 32);
    assert_eq!(RelinKey::from_bytes(ctx, &relin).unwrap(), s.relin);
}

#[test]
fn bad_inputs_are_refused_with_the_right_error() {
    let s = toy();
    let ctx = &s.context;
    let pt = ctx.encode(&[1.0, 2.0], 2, ctx.params().scale()).unwrap();
    let bytes = s.encryptor.encrypt(&pt).unwrap().to_bytes(ctx);

    // Truncated anywhere.
    for cut in [0, 3, 39, 41, 60, bytes.len() - 1] {
        let error = Ciphertext::from_bytes(ctx, &bytes[..cut]).unwrap_err();
        assert!(matches!(error, Error::Malformed { .. }), "cut {cut}: {error}");
    }
    // Trailing bytes.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(
        matches!(Ciphertext::from_bytes(ctx, &longer), Err(Error::Malformed { reason, .. }) if reason.contains("trailing"))
    );
    // Another parameter set.
    let other = blindfold_ckks::Context::new(Preset::N13Depth2.parameters().unwrap()).unwrap();
    assert!(matches!(Ciphertext::from_bytes(&other, &bytes), Err(Error::FingerprintMismatch { .. })));
    // A residue at or above its prime.
    let mut out_of_range = bytes.clone();
    let first_residue = 40 + 1 + 1 + 8;
    for b in &mut out_of_range[first_residue..first_residue + 8] {
        *b = 0xff;
    }
    assert!(
        matches!(Ciphertext::from_bytes(ctx, &out_of_range), Err(Error::Malformed { ref reason, .. }) if reason.contains("not below")),
        "{:?}",
        Ciphertext::from_bytes(ctx, &out_of_range)
    );
    // A level above the chain, a wrong kind, a wrong version, a bad scale.
    let mut level = bytes.clone();
    level[40] = 99;
    assert!(
        matches!(Ciphertext::from_bytes(ctx, &level), Err(Error::Malformed { reason, .. }) if reason.contains("level 99"))
    );
    let mut kind = bytes.clone();
    kind[6] = 3;
    assert!(
        matches!(Ciphertext::from_bytes(ctx, &kind), Err(Error::Malformed { reason, .. }) if reason.contains("kind"))
    );
    let mut version = bytes.clone();
    version[4] = 9;
    assert!(
        matches!(Ciphertext::from_bytes(ctx, &version), Err(Error::Malformed { reason, .. }) if reason.contains("version"))
    );
    let mut scale = bytes.clone();
    scale[42..50].copy_from_slice(&f64::NAN.to_le_bytes());
    assert!(
        matches!(Ciphertext::from_bytes(ctx, &scale), Err(Error::Malformed { reason, .. }) if reason.contains("scale"))
    );
}

#[test]
fn a_secret_key_is_never_accepted_as_an_evaluation_key() {
    let s = toy();
    let ctx = &s.context;
    let secret = s.keys.secret_key().to_bytes();
    for error in [
        RelinKey::from_bytes(ctx, &secret).unwrap_err(),
        GaloisKeys::from_bytes(ctx, &secret).unwrap_err(),
        PublicKey::from_bytes(ctx, &secret).unwrap_err(),
        Ciphertext::from_bytes(ctx, &secret).unwrap_err(),
    ] {
        assert!(error.to_string().contains("secret key"), "{error}");
    }
    // And the secret key's Debug output says nothing about it.
    assert!(format!("{:?}", s.keys.secret_key()).contains("redacted"));
}

#[test]
fn insecure_parameters_are_refused_on_load() {
    let toy_params = toy().context.params().clone();
    assert!(matches!(
        Parameters::from_bytes(&toy_params.to_bytes()),
        Err(Error::InvalidParameter { .. } | Error::Insecure { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), prefix in any::<bool>()) {
        static SETUP: std::sync::OnceLock<common::Setup> = std::sync::OnceLock::new();
        let s = SETUP.get_or_init(toy);
        let ctx = &s.context;
        let mut input = bytes;
        if prefix {
            // Give the fuzzer a valid header so it gets past the magic.
            let header = s.encryptor.encrypt(&ctx.encode(&[1.0], 0, 1e6).unwrap()).unwrap().to_bytes(ctx);
            let mut with_header = header[..40].to_vec();
            with_header.extend_from_slice(&input);
            input = with_header;
        }
        let _ = Ciphertext::from_bytes(ctx, &input);
        let _ = SeededCiphertext::from_bytes(ctx, &input);
        let _ = PublicKey::from_bytes(ctx, &input);
        let _ = RelinKey::from_bytes(ctx, &input);
        let _ = GaloisKeys::from_bytes(ctx, &input);
        let _ = SecretKey::from_bytes(ctx, &input);
        let _ = Parameters::from_bytes(&input);
    }
}
