//! Shared helpers for the CKKS integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use blindfold_ckks::{
    Context, Decryptor, Evaluator, GaloisKeys, KeyGenerator, ParametersBuilder, RelinKey, SecretKeyEncryptor,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

pub struct Setup {
    pub context: Arc<Context>,
    pub keys: KeyGenerator,
    pub relin: RelinKey,
    pub galois: GaloisKeys,
    pub encryptor: SecretKeyEncryptor,
    pub decryptor: Decryptor,
    pub evaluator: Evaluator,
}

/// A small, fast, INSECURE set (N = 2^11) with 4 levels of 40-bit primes.
pub fn toy() -> Setup {
    let params = ParametersBuilder::new(11)
        .ciphertext_bits(&[60, 40, 40, 40, 40])
        .special_bits(&[60])
        .log_scale(40)
        .build_insecure_for_tests()
        .unwrap();
    setup(params, &[1, 2, 3, 5, 7, -1, -4, 100, 511])
}

pub fn setup(params: blindfold_ckks::Parameters, steps: &[i64]) -> Setup {
    let context = Context::new(params).unwrap();
    let keys = KeyGenerator::new(&context);
    let relin = keys.relin_key();
    let galois = keys.galois_keys(steps, true);
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone()).unwrap();
    let decryptor = Decryptor::new(&context, keys.secret_key().clone()).unwrap();
    let evaluator = Evaluator::new(&context);
    Setup { context, keys, relin, galois, encryptor, decryptor, evaluator }
}

pub fn random_values(seed: u64, count: usize, magnitude: f64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count).map(|_| rng.random_range(-magnitude..magnitude)).collect()
}

pub fn max_error(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}
