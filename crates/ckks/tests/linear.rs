//! Linear maps over many ciphertexts against the same map on plaintext vectors, on primes
//! that take the lazy path (30 bits) and primes that do not (40 and 60 bits).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use blindfold_ckks::{LinearMap, ParametersBuilder};
use common::{max_error, random_values, setup};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn check(bits: &[u32], special: u32, log_scale: u32, parts: usize) {
    // Inputs carry a scale close to the primes, as the compiler arranges. Rescaling the 3-part
    // squares adds a rounding term multiplied by s² (about 2^-11 here), which is why the
    // throughput compiler keeps squares unrescaled until after the next linear layer.
    let params = ParametersBuilder::new(10)
        .ciphertext_bits(bits)
        .special_bits(&[special])
        .log_scale(log_scale)
        .build_insecure_for_tests()
        .unwrap();
    let s = setup(params, &[]);
    let ctx = &s.context;
    let mut level = ctx.max_level();
    let (inputs, outputs) = (40, 7);
    let mut rng = StdRng::seed_from_u64(bits.len() as u64 * 31 + parts as u64);
    let values: Vec<Vec<f64>> = (0..inputs).map(|k| random_values(k as u64, ctx.slots(), 1.0)).collect();
    let scale = 2f64.powi(log_scale as i32);
    let mut cts: Vec<_> =
        values.iter().map(|v| s.encryptor.encrypt(&ctx.encode(v, level, scale).unwrap()).unwrap()).collect();
    if parts == 3 {
        // Squares (3 parts) as inputs, as after an activation without relinearization.
        cts = cts.iter().map(|c| s.evaluator.rescale(&s.evaluator.square(c).unwrap()).unwrap()).collect();
        level -= 1;
    }
    let plain: Vec<Vec<f64>> =
        if parts == 3 { values.iter().map(|v| v.iter().map(|x| x * x).collect()).collect() } else { values.clone() };
    let rows: Vec<Vec<(usize, f64)>> = (0..outputs)
        .map(|_| {
            (0..inputs)
                .filter(|_| rng.random_bool(0.6))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|k| (k, rng.random_range(-1.0..1.0)))
                .collect()
        })
        .collect();
    let bias: Vec<f64> = (0..outputs).map(|_| rng.random_range(-1.0..1.0)).collect();
    let weight_scale = ctx.params().moduli()[level] as f64 / cts[0].scale() * 2f64.powi(22);
    let map = LinearMap::new(ctx, inputs, &rows, bias.clone(), level, weight_scale).unwrap();
    let refs: Vec<_> = cts.iter().collect();
    let out = s.evaluator.apply_linear(&map, &refs).unwrap();
    // Any range of rows gives exactly those outputs, byte for byte.
    for range in [0..outputs, 0..1, 2..5, outputs - 1..outputs, 3..3] {
        let part = s.evaluator.apply_linear_rows(&map, &refs, range.clone()).unwrap();
        assert_eq!(part.len(), range.len());
        for (ct, whole) in part.iter().zip(&out[range]) {
            assert_eq!(ct, whole);
        }
    }
    assert!(s.evaluator.apply_linear_rows(&map, &refs, 0..outputs + 1).is_err());
    for (o, ct) in out.iter().enumerate() {
        assert_eq!(ct.size(), parts);
        // Relinearize before rescaling: rescaling a 3-part ciphertext adds a rounding term
        // multiplied by s², far larger than the 2-part one.
        let ct = if parts == 3 { s.evaluator.relinearize(ct, &s.relin).unwrap() } else { ct.clone() };
        let ct = s.evaluator.rescale(&ct).unwrap();
        let got = s.decryptor.decrypt_values(&ct).unwrap();
        let expected: Vec<f64> =
            (0..ctx.slots()).map(|i| rows[o].iter().map(|&(k, w)| w * plain[k][i]).sum::<f64>() + bias[o]).collect();
        let error = max_error(&expected, &got);
        assert!(error < 1e-2, "output {o} ({bits:?}, {parts} parts): error {error}");
    }
}

#[test]
fn lazy_path_on_30_bit_primes() {
    check(&[30, 30, 30], 40, 29, 2);
    check(&[30, 30, 30], 40, 29, 3);
}

#[test]
fn reducing_path_on_wide_primes() {
    check(&[60, 40, 40], 60, 38, 2);
    check(&[60, 40, 40], 60, 38, 3);
}

#[test]
fn mismatched_inputs_are_refused() {
    let params = ParametersBuilder::new(10)
        .ciphertext_bits(&[30, 30])
        .special_bits(&[40])
        .log_scale(25)
        .build_insecure_for_tests()
        .unwrap();
    let s = setup(params, &[]);
    let ctx = &s.context;
    let a = s.encryptor.encrypt(&ctx.encode(&[1.0], 1, 1e6).unwrap()).unwrap();
    let b = s.encryptor.encrypt(&ctx.encode(&[1.0], 0, 1e6).unwrap()).unwrap();
    let map = LinearMap::new(ctx, 2, &[vec![(0, 1.0), (1, 1.0)]], vec![0.0], 1, 16.0).unwrap();
    assert!(s.evaluator.apply_linear(&map, &[&a, &b]).is_err());
    assert!(s.evaluator.apply_linear(&map, &[&a]).is_err());
    assert!(LinearMap::new(ctx, 2, &[vec![(5, 1.0)]], vec![0.0], 1, 16.0).is_err());
    let _ = random_values;
}
