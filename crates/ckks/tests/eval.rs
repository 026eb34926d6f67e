//! Every evaluation operation checked against the same operation on plaintext vectors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use blindfold_ckks::{Ciphertext, Error, Preset};
use common::{Setup, max_error, random_values, toy};
use proptest::prelude::*;

fn encrypt(s: &Setup, values: &[f64], level: usize) -> Ciphertext {
    let scale = s.context.params().scale();
    s.encryptor.encrypt(&s.context.encode(values, level, scale).unwrap()).unwrap()
}

fn decrypt(s: &Setup, ct: &Ciphertext) -> Vec<f64> {
    s.decryptor.decrypt_values(ct).unwrap()
}

#[test]
fn encode_decode_error_is_below_2_pow_minus_30_relative() {
    let s = toy();
    let slots = s.context.slots();
    let values = random_values(1, slots, 1.0);
    let pt = s.context.encode(&values, s.context.max_level(), 2f64.powi(40)).unwrap();
    let decoded = s.context.decode(&pt).unwrap();
    let error = max_error(&values, &decoded);
    assert!(error < 2f64.powi(-30), "encode/decode error {error:e}");
    // And at the last level (one prime), too.
    let pt0 = s.context.encode(&values, 0, 2f64.powi(40)).unwrap();
    assert!(max_error(&values, &s.context.decode(&pt0).unwrap()) < 2f64.powi(-30));
}

#[test]
fn encryption_round_trips_for_both_kinds() {
    let s = toy();
    let values = random_values(2, s.context.slots(), 10.0);
    let seeded = encrypt(&s, &values, s.context.max_level());
    assert!(max_error(&values, &decrypt(&s, &seeded)) < 1e-6);
    let encryptor = blindfold_ckks::Encryptor::new(&s.context, s.keys.public_key()).unwrap();
    let pt = s.context.encode(&values, 2, s.context.params().scale()).unwrap();
    let public = encryptor.encrypt(&pt).unwrap();
    assert!(max_error(&values, &decrypt(&s, &public)) < 1e-6);
}

#[test]
fn additions_subtractions_and_negation_match_plaintext() {
    let s = toy();
    let (a, b) = (random_values(3, 100, 5.0), random_values(4, 100, 5.0));
    for level in [s.context.max_level(), 2, 0] {
        let (ca, cb) = (encrypt(&s, &a, level), encrypt(&s, &b, level));
        let e = &s.evaluator;
        let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let diff: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        assert!(max_error(&sum, &decrypt(&s, &e.add(&ca, &cb).unwrap())) < 1e-6);
        assert!(max_error(&diff, &decrypt(&s, &e.sub(&ca, &cb).unwrap())) < 1e-6);
        let neg: Vec<f64> = a.iter().map(|x| -x).collect();
        assert!(max_error(&neg, &decrypt(&s, &e.negate(&ca))) < 1e-6);
        let pb = s.context.encode(&b, level, ca.scale()).unwrap();
        assert!(max_error(&sum, &decrypt(&s, &e.add_plain(&ca, &pb).unwrap())) < 1e-6);
        assert!(max_error(&diff, &decrypt(&s, &e.sub_plain(&ca, &pb).unwrap())) < 1e-6);
        let plus: Vec<f64> = a.iter().map(|x| x + 0.75).collect();
        assert!(max_error(&plus, &decrypt(&s, &e.add_scalar(&ca, 0.75).unwrap())) < 1e-6);
    }
}

#[test]
fn multiplications_match_plaintext_at_several_levels() {
    let s = toy();
    let (a, b) = (random_values(5, 200, 3.0), random_values(6, 200, 3.0));
    let e = &s.evaluator;
    let scale = s.context.params().scale();
    for level in [s.context.max_level(), 2, 1] {
        let (ca, cb) = (encrypt(&s, &a, level), encrypt(&s, &b, level));
        let product: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
        let relin = e.rescale(&e.mul_relin(&ca, &cb, &s.relin).unwrap()).unwrap();
        assert_eq!(relin.level(), level - 1);
        assert!(max_error(&product, &decrypt(&s, &relin)) < 1e-5, "mul_relin at level {level}");
        // The 3-part form decrypts too, and relinearizing later gives the same.
        let three = e.mul(&ca, &cb).unwrap();
        assert_eq!(three.size(), 3);
        assert!(max_error(&product, &decrypt(&s, &e.rescale(&three).unwrap())) < 1e-5);
        let squared: Vec<f64> = a.iter().map(|x| x * x).collect();
        let sq = e.rescale(&e.relinearize(&e.square(&ca).unwrap(), &s.relin).unwrap()).unwrap();
        assert!(max_error(&squared, &decrypt(&s, &sq)) < 1e-5);
        let pb = s.context.encode(&b, level, scale).unwrap();
        let plain = e.rescale(&e.mul_plain(&ca, &pb).unwrap()).unwrap();
        assert!(max_error(&product, &decrypt(&s, &plain)) < 1e-5);
        let by_scalar: Vec<f64> = a.iter().map(|x| x * -1.25).collect();
        let scalar = e.rescale(&e.mul_scalar(&ca, -1.25, scale).unwrap()).unwrap();
        assert!(max_error(&by_scalar, &decrypt(&s, &scalar)) < 1e-5);
        let by_int: Vec<f64> = a.iter().map(|x| x * 3.0).collect();
        let int = e.mul_scalar(&ca, 3.0, 1.0).unwrap();
        assert_eq!(int.level(), level);
        assert!(max_error(&by_int, &decrypt(&s, &int)) < 1e-5);
    }
}

#[test]
fn multiply_rescale_chain_to_the_last_level_reports_precision() {
    let params = Preset::N14Depth7.parameters().unwrap();
    let s = common::setup(params, &[]);
    let e = &s.evaluator;
    let values = random_values(7, s.context.slots(), 1.0);
    let mut expected = values.clone();
    let mut ct = encrypt(&s, &values, s.context.max_level());
    while ct.level() > 0 {
        ct = e.rescale(&e.mul_relin(&ct, &ct, &s.relin).unwrap()).unwrap();
        expected.iter_mut().for_each(|x| *x *= *x);
    }
    let error = max_error(&expected, &decrypt(&s, &ct));
    let bits = -error.log2();
    println!("precision after {} squarings at N=2^14: {bits:.1} bits (max error {error:e})", s.context.max_level());
    assert!(bits > 15.0, "only {bits:.1} bits left");
}

#[test]
fn rotations_and_conjugation_match_plaintext() {
    let s = toy();
    let slots = s.context.slots();
    let values = random_values(8, slots, 2.0);
    let ct = encrypt(&s, &values, 3);
    for step in [1i64, 2, 3, 5, 7, -1, -4, 100, 511] {
        let rotated = s.evaluator.rotate(&ct, step, &s.galois).unwrap();
        let expected: Vec<f64> =
            (0..slots).map(|i| values[(i as i64 + step).rem_euclid(slots as i64) as usize]).collect();
        assert!(max_error(&expected, &decrypt(&s, &rotated)) < 1e-5, "rotation by {step}");
    }
    let conjugated = s.evaluator.conjugate(&ct, &s.galois).unwrap();
    assert!(max_error(&values, &decrypt(&s, &conjugated)) < 1e-5);
    match s.evaluator.rotate(&ct, 6, &s.galois) {
        Err(Error::MissingGaloisKey { .. }) => {}
        other => panic!("rotation without a key: {other:?}"),
    }
}

#[test]
fn hoisted_rotations_equal_single_ones() {
    let s = toy();
    let values = random_values(9, s.context.slots(), 2.0);
    let ct = encrypt(&s, &values, 4);
    let steps = [1i64, 2, 3, 5, 7, -1, -4, 100];
    let hoisted = s.evaluator.rotate_hoisted(&ct, &steps, &s.galois).unwrap();
    for (step, h) in steps.iter().zip(&hoisted) {
        let single = s.evaluator.rotate(&ct, *step, &s.galois).unwrap();
        assert!(max_error(&decrypt(&s, &single), &decrypt(&s, h)) < 1e-6, "step {step}");
    }
}

#[test]
fn mul_plain_accumulate_equals_sum_of_products() {
    let s = toy();
    let e = &s.evaluator;
    let scale = s.context.params().scale();
    let level = 2;
    let (a, b, w, v) = (
        random_values(11, 300, 2.0),
        random_values(12, 300, 2.0),
        random_values(13, 300, 1.0),
        random_values(14, 300, 1.0),
    );
    let (ca, cb) = (encrypt(&s, &a, level), encrypt(&s, &b, level));
    let (pw, pv) = (s.context.encode(&w, level, scale).unwrap(), s.context.encode(&v, level, scale).unwrap());
    let mut acc = e.mul_plain(&ca, &pw).unwrap();
    e.mul_plain_accumulate(&mut acc, &cb, &pv).unwrap();
    let expected: Vec<f64> = (0..300).map(|k| a[k] * w[k] + b[k] * v[k]).collect();
    assert!(max_error(&expected, &decrypt(&s, &e.rescale(&acc).unwrap())) < 1e-5);
    // Scale and level mismatches are refused.
    let unscaled = s.context.encode(&v, level, 1.0).unwrap();
    assert!(matches!(e.mul_plain_accumulate(&mut acc, &cb, &unscaled), Err(Error::ScaleMismatch { .. })));
    let low = s.context.encode(&v, 1, scale).unwrap();
    assert!(matches!(e.mul_plain_accumulate(&mut acc, &cb, &low), Err(Error::LevelMismatch { .. })));
}

#[test]
fn shifted_squares_equal_add_scalar_then_square() {
    // 40/60-bit primes take the scalar path, 29/30-bit ones the vectorized one.
    let small = blindfold_ckks::ParametersBuilder::new(11)
        .ciphertext_bits(&[30, 29, 29])
        .special_bits(&[40])
        .log_scale(28)
        .build_insecure_for_tests()
        .unwrap();
    for s in [toy(), common::setup(small, &[])] {
        let e = &s.evaluator;
        let level = 2;
        let (a, b) = (random_values(21, 500, 1.5), random_values(22, 500, 1.5));
        let (ca, cb) = (encrypt(&s, &a, level), encrypt(&s, &b, level));
        let shift = -0.7319;
        let square = |ct: &Ciphertext| e.square(&e.add_scalar(ct, shift).unwrap()).unwrap();
        let mut sum = e.square_shifted(&ca, shift).unwrap();
        assert_eq!(sum, square(&ca));
        e.add_square_shifted(&mut sum, &cb, shift).unwrap();
        assert_eq!(sum, e.add(&square(&ca), &square(&cb)).unwrap());
        let relinearized = e.rescale(&e.relinearize(&sum, &s.relin).unwrap()).unwrap();
        let expected: Vec<f64> = (0..500).map(|k| (a[k] + shift).powi(2) + (b[k] + shift).powi(2)).collect();
        assert!(max_error(&expected, &decrypt(&s, &relinearized)[..500]) < 1e-3);
        // The accumulator must be a 3-part ciphertext at the square's scale.
        assert!(matches!(e.add_square_shifted(&mut ca.clone(), &cb, shift), Err(Error::ScaleMismatch { .. })));
    }
}

/// Digits of two primes and two special primes, all below 2^31 (the LeNet-5 shape, small).
fn hybrid() -> Setup {
    let params = blindfold_ckks::ParametersBuilder::new(11)
        .ciphertext_bits(&[31, 29, 29, 29, 29])
        .special_bits(&[31, 31])
        .digit_primes(2)
        .log_scale(28)
        .build_insecure_for_tests()
        .unwrap();
    common::setup(params, &[1, 5, -3])
}

#[test]
fn hybrid_key_switching_relinearizes_and_rotates_at_every_level() {
    let s = hybrid();
    let e = &s.evaluator;
    assert_eq!(s.context.params().digits_at(4), vec![0..2, 2..4, 4..5]);
    let scale = s.context.params().scale();
    let (a, b) = (random_values(31, 1024, 1.0), random_values(32, 1024, 1.0));
    for level in 1..=4 {
        let ca = s.encryptor.encrypt(&s.context.encode(&a, level, scale).unwrap()).unwrap();
        let cb = s.encryptor.encrypt(&s.context.encode(&b, level, scale).unwrap()).unwrap();
        let product = e.rescale(&e.mul_relin(&ca, &cb, &s.relin).unwrap()).unwrap();
        let expected: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
        let error = max_error(&expected, &decrypt(&s, &product));
        assert!(error < 1e-3, "level {level}: product error {error}");
        for (step, rotated) in [1i64, 5, -3].into_iter().zip(e.rotate_hoisted(&ca, &[1, 5, -3], &s.galois).unwrap()) {
            let single = e.rotate(&ca, step, &s.galois).unwrap();
            let shifted: Vec<f64> = (0..1024).map(|k| a[(k as i64 + step).rem_euclid(1024) as usize]).collect();
            for ct in [&single, &rotated] {
                let error = max_error(&shifted, &decrypt(&s, ct));
                assert!(error < 1e-3, "level {level}, step {step}: error {error}");
            }
        }
    }
}

#[test]
fn keys_for_a_lower_level_switch_up_to_it_and_refuse_above() {
    for s in [toy(), hybrid()] {
        let e = &s.evaluator;
        let keys = s.keys.galois_keys_at(&[(1, 2), (5, 1), (1, 0)]);
        let element = s.context.galois_element(1);
        assert_eq!(keys.level_of(element), Some(2), "a step listed twice gets the higher level");
        let values = random_values(41, 64, 1.0);
        let scale = s.context.params().scale();
        for level in 0..=2 {
            let ct = s.encryptor.encrypt(&s.context.encode(&values, level, scale).unwrap()).unwrap();
            let rotated = e.rotate(&ct, 1, &keys).unwrap();
            assert!(max_error(&values[1..], &decrypt(&s, &rotated)[..63]) < 1e-3, "level {level}");
        }
        let high = s.encryptor.encrypt(&s.context.encode(&values, 3, scale).unwrap()).unwrap();
        assert!(matches!(e.rotate(&high, 1, &keys), Err(Error::InvalidLevel { level: 3, max: 2, .. })));
        assert!(matches!(e.rotate_hoisted(&high, &[1], &keys), Err(Error::InvalidLevel { level: 3, max: 2, .. })));
    }
}

#[test]
fn mismatches_are_typed_errors() {
    let s = toy();
    let a = encrypt(&s, &[1.0], 3);
    let b = encrypt(&s, &[1.0], 2);
    assert!(matches!(s.evaluator.add(&a, &b), Err(Error::LevelMismatch { left: 3, right: 2 })));
    let squared = s.evaluator.mul_relin(&a, &a, &s.relin).unwrap();
    assert!(matches!(s.evaluator.add(&a, &squared), Err(Error::ScaleMismatch { .. })));
    let dropped = s.evaluator.drop_to_level(&a, 2).unwrap();
    assert!(max_error(&[1.0], &decrypt(&s, &dropped)[..1]) < 1e-6);
    let bottom = encrypt(&s, &[1.0], 0);
    assert!(matches!(s.evaluator.rescale(&bottom), Err(Error::InvalidLevel { .. })));
    assert!(matches!(s.evaluator.relinearize(&a, &s.relin), Err(Error::WrongSize { expected: 3, found: 2 })));
    let too_many = vec![0.0; s.context.slots() + 1];
    assert!(matches!(s.context.encode(&too_many, 0, 1e6), Err(Error::TooManyValues { .. })));
    assert!(matches!(s.context.encode(&[f64::NAN], 0, 1e6), Err(Error::Unencodable { .. })));
    // Keys of another parameter set are refused.
    let other = common::setup(Preset::N13Depth2.parameters().unwrap(), &[]);
    assert!(matches!(s.evaluator.relinearize(&squared, &other.relin), Err(Error::FingerprintMismatch { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    #[test]
    fn random_circuits_match_plaintext(seed in any::<u64>(), step in -20i64..20) {
        let s = toy();
        let slots = s.context.slots();
        let (a, b) = (random_values(seed, slots, 2.0), random_values(seed ^ 0xabc, slots, 2.0));
        let (ca, cb) = (encrypt(&s, &a, 4), encrypt(&s, &b, 4));
        let e = &s.evaluator;
        let keys = s.keys.galois_keys(&[step], false);
        // (a·b + a) rotated by step.
        let prod = e.rescale(&e.mul_relin(&ca, &cb, &s.relin).unwrap()).unwrap();
        let a_low = e.drop_to_level(&ca, 3).unwrap();
        let mut a_low = a_low;
        a_low.set_scale(prod.scale());
        let sum = e.add(&prod, &a_low).unwrap();
        let rotated = e.rotate(&sum, step, &keys).unwrap();
        let expected: Vec<f64> = (0..slots).map(|i| {
            let j = (i as i64 + step).rem_euclid(slots as i64) as usize;
            a[j] * b[j] + a[j]
        }).collect();
        prop_assert!(max_error(&expected, &decrypt(&s, &rotated)) < 1e-4);
    }
}
