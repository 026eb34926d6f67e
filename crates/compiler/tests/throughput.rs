//! The throughput packing end to end: compile each model, encrypt real test images, evaluate,
//! decrypt, and compare with the plaintext evaluator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use blindfold_ckks::{Context, Decryptor, KeyGenerator, SecretKeyEncryptor};
use blindfold_compiler::{Control, ThroughputEngine, ThroughputPlan};
use blindfold_nn::data::{self, Split};
use blindfold_nn::metrics::argmax;
use blindfold_nn::registry;

fn data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(dir.join("mnist").is_dir(), "the datasets are expected in {} (see the README)", dir.display());
    dir
}

/// Encrypts `inputs`, evaluates, decrypts; returns (agreeing images, max logit error).
fn run(name: &str, inputs: &[Vec<f64>]) -> (usize, f64) {
    let model = registry::load(name).unwrap();
    let plan = ThroughputPlan::compile(name, &model.network).unwrap();
    println!("{}", plan.summary());
    let context = Context::new(plan.params().clone()).unwrap();
    let keys = KeyGenerator::new(&context);
    let relin = keys.relin_key();
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone()).unwrap();
    let decryptor = Decryptor::new(&context, keys.secret_key().clone()).unwrap();
    let packed = plan.pack(inputs).unwrap();
    let cts: Vec<_> = packed
        .iter()
        .map(|slots| {
            encryptor.encrypt(&context.encode(slots, plan.input_level(), plan.input_scale()).unwrap()).unwrap()
        })
        .collect();
    let engine = ThroughputEngine::new(plan, &context).unwrap();
    let outputs = engine.evaluate(cts, &relin, &Control::none()).unwrap();
    assert!(outputs.iter().all(|ct| ct.level() == 0), "results are not at the lowest level");
    let decrypted: Vec<Vec<f64>> = outputs.iter().map(|ct| decryptor.decrypt_values(ct).unwrap()).collect();
    let logits = engine.plan().unpack(&decrypted, inputs.len()).unwrap();
    let reference = model.network.forward_batch(inputs).unwrap();
    let mut agree = 0;
    let mut max_error = 0f64;
    for (enc, plain) in logits.iter().zip(&reference) {
        agree += usize::from(argmax(enc) == argmax(plain));
        for (a, b) in enc.iter().zip(plain) {
            max_error = max_error.max((a - b).abs());
        }
    }
    println!("{name}: {agree}/{} argmax agree, max logit error {max_error:e}", inputs.len());
    (agree, max_error)
}

#[test]
fn mnist_cryptonets_matches_the_plaintext_model() {
    let model = registry::load("mnist-cryptonets").unwrap();
    let images = data::mnist(&data_dir().join("mnist"), Split::Test).unwrap().take(300);
    let inputs = model.manifest.inputs(&images).unwrap();
    let (agree, max_error) = run("mnist-cryptonets", &inputs);
    assert!(agree >= 299, "only {agree}/300 agree");
    assert!(max_error < 0.05, "max logit error {max_error}");
}

#[test]
fn mnist_lenet5_streams_its_convolutions_and_matches_the_plaintext_model() {
    // A few hundred images at the smallest set that fits (N = 2^14): the convolution → square →
    // pool runs are evaluated one pooled position at a time.
    let model = registry::load("mnist-lenet5").unwrap();
    let plan = ThroughputPlan::compile("mnist-lenet5", &model.network).unwrap();
    assert_eq!(plan.summary().matches("streamed").count(), 2, "{}", plan.summary());
    let images = data::mnist(&data_dir().join("mnist"), Split::Test).unwrap().take(200);
    let inputs = model.manifest.inputs(&images).unwrap();
    let (agree, max_error) = run("mnist-lenet5", &inputs);
    assert!(agree >= 200, "only {agree}/200 agree");
    assert!(max_error < 0.05, "max logit error {max_error}");
}

#[test]
fn a_streamed_segment_matches_the_plaintext_network() {
    use blindfold_nn::{AvgPool2d, Conv2d, Dense, Layer, Network, Polynomial, Shape};
    // Three input channels and overlapping windows of a 3×3 kernel: every convolution output
    // under a pooled position has its own inputs and weights.
    let weights = |count: usize, seed: usize| -> Vec<f64> {
        (0..count).map(|i| (((i * 37 + seed * 11) % 19) as f64 - 9.0) / 20.0).collect()
    };
    let layers = vec![
        Layer::Conv2d(Conv2d {
            in_channels: 3,
            out_channels: 5,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [0, 0, 0, 0],
            groups: 1,
            weights: weights(5 * 3 * 9, 1),
            bias: weights(5, 2),
        }),
        Layer::Activation(Polynomial::power(vec![0.1, 0.5, 0.25])),
        Layer::AvgPool2d(AvgPool2d { kernel: [2, 2], stride: [2, 2] }),
        Layer::Flatten,
        Layer::Dense(Dense { inputs: 5 * 2 * 2, outputs: 3, weights: weights(60, 3), bias: weights(3, 4) }),
    ];
    let network = Network::new(Shape::Image { channels: 3, height: 6, width: 6 }, layers).unwrap();
    let plan = ThroughputPlan::compile("tiny", &network).unwrap();
    assert!(plan.summary().contains("streamed: 4 pooled positions × 5 channels"), "{}", plan.summary());
    let context = Context::new(plan.params().clone()).unwrap();
    let keys = KeyGenerator::new(&context);
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone()).unwrap();
    let decryptor = Decryptor::new(&context, keys.secret_key().clone()).unwrap();
    let inputs: Vec<Vec<f64>> =
        (0..64).map(|i| (0..108).map(|k| (((i * 13 + k * 7) % 23) as f64 - 11.0) / 11.0).collect()).collect();
    let cts: Vec<_> = plan
        .pack(&inputs)
        .unwrap()
        .iter()
        .map(|slots| {
            encryptor.encrypt(&context.encode(slots, plan.input_level(), plan.input_scale()).unwrap()).unwrap()
        })
        .collect();
    let engine = ThroughputEngine::new(plan, &context).unwrap();
    let outputs = engine.evaluate(cts, &keys.relin_key(), &Control::none()).unwrap();
    let decrypted: Vec<Vec<f64>> = outputs.iter().map(|ct| decryptor.decrypt_values(ct).unwrap()).collect();
    let logits = engine.plan().unpack(&decrypted, inputs.len()).unwrap();
    let reference = network.forward_batch(&inputs).unwrap();
    for (enc, plain) in logits.iter().zip(&reference) {
        for (a, b) in enc.iter().zip(plain) {
            assert!((a - b).abs() < 1e-2, "{a} vs {b}");
        }
    }
}

#[test]
fn every_model_compiles_to_a_128_bit_plan_with_relinearization_only() {
    for name in registry::names() {
        let model = registry::load(name).unwrap();
        let plan = ThroughputPlan::compile(name, &model.network).unwrap();
        assert_eq!(plan.params().security_bits(), 128);
        assert!(plan.rotation_steps().is_empty());
        assert_eq!(plan.depth(), model.network.depth(), "{name}");
        assert_eq!(plan.input_count(), model.network.input().len());
        // The compiler's choice is one of the named presets.
        let preset = if name == "mnist-cryptonets" {
            blindfold_ckks::Preset::N13Depth5Small
        } else {
            blindfold_ckks::Preset::N14Depth7Small
        };
        assert_eq!(plan.params(), &preset.parameters().unwrap(), "{name}");
    }
}

#[test]
fn a_model_too_deep_for_any_set_is_refused_naming_the_layer() {
    use blindfold_nn::{Dense, Layer, Network, Polynomial, Shape};
    let mut layers = Vec::new();
    // 61 levels: more than N = 2^16 holds with 29-bit primes.
    for _ in 0..30 {
        layers.push(Layer::Dense(Dense { inputs: 4, outputs: 4, weights: vec![0.1; 16], bias: vec![0.0; 4] }));
        layers.push(Layer::Activation(Polynomial::square()));
    }
    layers.push(Layer::Dense(Dense { inputs: 4, outputs: 2, weights: vec![0.1; 8], bias: vec![0.0; 2] }));
    let network = Network::new(Shape::Vector { len: 4 }, layers).unwrap();
    let error = ThroughputPlan::compile("deep", &network).unwrap_err().to_string();
    assert!(error.contains("does not fit") && error.contains("levels") && error.contains("N = 2^16"), "{error}");
    // The node at which the depth passes what the largest set holds.
    assert!(error.contains("node 5") || error.contains("node 5"), "{error}");
}
