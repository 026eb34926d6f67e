//! The latency packing end to end: compile, encrypt single real test images, evaluate with
//! rotation keys for exactly the plan's steps, decrypt, compare with the plaintext evaluator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use blindfold_ckks::{Context, Decryptor, KeyGenerator, SecretKeyEncryptor};
use blindfold_compiler::{
    Control, LatencyEngine, LatencyPlan, Packing, ThroughputPlan, break_even_images, choose_packing,
};
use blindfold_nn::data::{self, Split};
use blindfold_nn::metrics::argmax;
use blindfold_nn::registry;

fn data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(dir.join("mnist").is_dir(), "the datasets are expected in {} (see the README)", dir.display());
    dir
}

mod common;

#[test]
fn mnist_cryptonets_single_images_match_the_plaintext_model() {
    single_images_match("mnist-cryptonets", 4);
}

#[test]
fn mnist_lenet5_single_images_match_the_plaintext_model() {
    // Convolutions and pools written in place on the input's grid, hybrid key switching and
    // rotation keys below the top level.
    single_images_match("mnist-lenet5", 2);
}

fn single_images_match(name: &str, count: usize) {
    let model = registry::load(name).unwrap();
    let plan = LatencyPlan::compile(name, &model.network).unwrap();
    println!("{}", plan.summary());
    assert_eq!(plan.params().security_bits(), 128);
    assert_eq!(plan.depth(), model.network.depth());
    let context = Context::new(plan.params().clone()).unwrap();
    let keys = KeyGenerator::new(&context);
    let relin = keys.relin_key();
    let galois = keys.galois_keys_at(&plan.rotation_keys());
    assert_eq!(galois.len(), plan.rotation_steps().len());
    for (step, level) in plan.rotation_keys() {
        assert_eq!(galois.level_of(context.galois_element(step)), Some(level));
    }
    // The plan's estimate of the key bytes is what the keys serialize to (less the header).
    assert_eq!(plan.rotation_key_bytes() + 40 + 4, galois.to_bytes(&context).len());
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone()).unwrap();
    let decryptor = Decryptor::new(&context, keys.secret_key().clone()).unwrap();
    let engine = LatencyEngine::new(plan, &context).unwrap();
    let images = data::mnist(&data_dir().join("mnist"), Split::Test).unwrap().take(count);
    let inputs = model.manifest.inputs(&images).unwrap();
    let mut max_error = 0f64;
    for input in &inputs {
        let slots = engine.plan().pack(input).unwrap();
        let plaintext = context.encode(&slots[0], engine.plan().input_level(), engine.plan().input_scale()).unwrap();
        let ct = encryptor.encrypt(&plaintext).unwrap();
        let out = engine.evaluate(vec![ct], &relin, &galois, &Control::none()).unwrap();
        assert_eq!(out[0].level(), 0);
        let logits = engine.plan().unpack(&[decryptor.decrypt_values(&out[0]).unwrap()]).unwrap();
        let reference = model.network.forward(input).unwrap();
        assert_eq!(argmax(&logits), argmax(&reference), "{logits:?} vs {reference:?}");
        for (a, b) in logits.iter().zip(&reference) {
            max_error = max_error.max((a - b).abs());
        }
    }
    println!("max logit error {max_error:e}");
    assert!(max_error < 0.05, "max logit error {max_error}");
}

#[test]
fn every_model_compiles_with_rotation_steps_inside_the_slots() {
    for name in registry::names() {
        let model = registry::load(name).unwrap();
        let plan = LatencyPlan::compile(name, &model.network).unwrap();
        assert_eq!(plan.params().security_bits(), 128, "{name}");
        assert_eq!(plan.depth(), model.network.depth(), "{name}");
        let steps = plan.rotation_steps();
        assert!(!steps.is_empty());
        assert!(steps.iter().all(|&s| s > 0 && (s as usize) < plan.params().slots()), "{name}: {steps:?}");
    }
}

#[test]
fn the_automatic_choice_is_latency_for_one_image_and_throughput_for_a_batch() {
    for name in registry::names() {
        let model = registry::load(name).unwrap();
        let throughput = ThroughputPlan::compile(name, &model.network).unwrap();
        let latency = LatencyPlan::compile(name, &model.network).unwrap();
        assert_eq!(choose_packing(1, &throughput, &latency), Packing::Latency, "{name}");
        let batch = throughput.batch_capacity();
        assert_eq!(choose_packing(batch, &throughput, &latency), Packing::Throughput, "{name}");
        assert_eq!(choose_packing(10 * batch, &throughput, &latency), Packing::Throughput, "{name}");
        // The break-even is where the choice flips, and it lies well inside the batch: the
        // measured break-evens are 38 to 62 images.
        let even = break_even_images(&throughput, &latency);
        assert!((8..batch / 16).contains(&even), "{name}: break-even {even}");
        assert_eq!(choose_packing(even, &throughput, &latency), Packing::Latency, "{name}");
        assert_eq!(choose_packing(even + 1, &throughput, &latency), Packing::Throughput, "{name}");
    }
}

#[test]
fn a_cancelled_evaluation_stops() {
    use std::sync::atomic::AtomicBool;
    let name = "mnist-cryptonets";
    let model = registry::load(name).unwrap();
    let plan = LatencyPlan::compile(name, &model.network).unwrap();
    let context = Context::new(plan.params().clone()).unwrap();
    let keys = KeyGenerator::new(&context);
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone()).unwrap();
    let slots = plan.pack(&vec![0.5; model.network.input().len()]).unwrap();
    let ct = encryptor.encrypt(&context.encode(&slots[0], plan.input_level(), plan.input_scale()).unwrap()).unwrap();
    // Without keys the first stage would fail; a set flag stops it before.
    let engine = LatencyEngine::new(plan, &context).unwrap();
    let flag = AtomicBool::new(true);
    let error = engine
        .evaluate(vec![ct], &keys.relin_key(), &Default::default(), &Control::none().cancelled_by(&flag))
        .unwrap_err();
    assert!(matches!(error, blindfold_compiler::Error::Cancelled), "{error}");
}

fn run_network(network: &blindfold_nn::Network, input: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut got, summary) = common::latency(network, &[input.to_vec()]);
    println!("{summary}");
    (got.remove(0), network.forward(input).unwrap())
}

#[test]
fn small_dense_layers_of_every_shape_match() {
    use blindfold_nn::{Dense, Layer, Network, Shape};
    for (inputs, outputs) in [(6, 3), (3, 6), (8, 8), (20, 5), (5, 40)] {
        let weights: Vec<f64> = (0..inputs * outputs).map(|k| ((k * 7919) % 13) as f64 / 13.0 - 0.5).collect();
        let bias: Vec<f64> = (0..outputs).map(|k| k as f64 * 0.1).collect();
        let network =
            Network::new(Shape::Vector { len: inputs }, vec![Layer::Dense(Dense { inputs, outputs, weights, bias })])
                .unwrap();
        let input: Vec<f64> = (0..inputs).map(|k| (k as f64 * 0.37).sin()).collect();
        let (got, want) = run_network(&network, &input);
        let error = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(error < 1e-2, "{inputs}->{outputs}: {got:?} vs {want:?}");
    }
}

#[test]
fn a_small_convolution_matches() {
    use blindfold_nn::{Conv2d, Layer, Network, Shape};
    for (stride, padding) in [(1, 0), (2, 1)] {
        let (in_channels, out_channels) = (2, 3);
        let weights: Vec<f64> =
            (0..out_channels * in_channels * 9).map(|k| ((k * 31) % 11) as f64 / 11.0 - 0.5).collect();
        let conv = Conv2d {
            in_channels,
            out_channels,
            kernel: [3, 3],
            stride: [stride, stride],
            padding: [padding; 4],
            groups: 1,
            weights,
            bias: vec![0.1, -0.2, 0.3],
        };
        let network = Network::new(
            Shape::Image { channels: in_channels, height: 7, width: 7 },
            vec![Layer::Conv2d(conv), Layer::Flatten],
        )
        .unwrap();
        let input: Vec<f64> = (0..in_channels * 49).map(|k| (k as f64 * 0.37).sin()).collect();
        let (got, want) = run_network(&network, &input);
        let error = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(error < 1e-2, "stride {stride}: {got:?} vs {want:?}");
    }
}

#[test]
fn a_lenet_shaped_network_matches() {
    // conv → square → pool → conv → square → pool → dense on a small two-channel image: the
    // pools run as unmasked rotation sums and the second convolution mixes channel blocks.
    let network = lenet_shaped();
    let input: Vec<f64> = (0..2 * 14 * 14).map(|k| (k as f64 * 0.37).sin()).collect();
    let (got, want) = run_network(&network, &input);
    let error = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(error < 1e-2, "{got:?} vs {want:?}");
}

#[test]
fn a_plan_over_its_memory_budget_streams_diagonals_and_still_matches() {
    use blindfold_compiler::{CompileOptions, Error};
    let network = lenet_shaped();
    let resident = LatencyPlan::compile("test", &network).unwrap();
    assert_eq!(resident.streamed_stages(), 0);
    // A byte under what the plan needs with every diagonal encoded.
    let budget = resident.peak_memory_bytes() as u64 - 1;
    let options = CompileOptions { memory_budget: Some(budget), ..CompileOptions::default() };
    let streamed = LatencyPlan::compile_with("test", &network, &options).unwrap();
    assert!(streamed.streamed_stages() > 0, "{}", streamed.summary());
    assert!(streamed.peak_memory_bytes() as u64 <= budget);
    assert!(streamed.plaintext_bytes() < resident.plaintext_bytes());
    assert!(streamed.summary().contains("(streamed)"));
    // The same keys serve both plans: streaming changes what the engine holds, not the plan.
    assert_eq!(streamed.rotation_keys(), resident.rotation_keys());
    let input: Vec<f64> = (0..2 * 14 * 14).map(|k| (k as f64 * 0.37).sin()).collect();
    let (mut got, _) = common::latency_with(streamed, std::slice::from_ref(&input));
    let want = network.forward(&input).unwrap();
    let error = got.remove(0).iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(error < 1e-2, "max error {error}");
    // Below what even a fully streamed plan needs, the plan is refused, naming a layer.
    let options = CompileOptions { memory_budget: Some(1 << 20), ..CompileOptions::default() };
    let error = LatencyPlan::compile_with("test", &network, &options).unwrap_err();
    assert!(matches!(error, Error::DoesNotFit { .. }), "{error}");
}

/// conv → square → pool → conv → square → pool → dense on a 2 × 14 × 14 image.
fn lenet_shaped() -> blindfold_nn::Network {
    use blindfold_nn::{AvgPool2d, Conv2d, Dense, Layer, Network, Polynomial, Shape};
    let conv = |i: usize, o: usize| {
        let weights: Vec<f64> = (0..o * i * 9).map(|n| ((n * 31) % 11) as f64 / 11.0 - 0.5).collect();
        let bias = (0..o).map(|x| x as f64 * 0.1).collect();
        Layer::Conv2d(Conv2d {
            in_channels: i,
            out_channels: o,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [0; 4],
            groups: 1,
            weights,
            bias,
        })
    };
    let square = || Layer::Activation(Polynomial::power(vec![0.1, 0.5, 0.3]));
    let pool = || Layer::AvgPool2d(AvgPool2d { kernel: [2, 2], stride: [2, 2] });
    let dense = Dense {
        inputs: 12,
        outputs: 5,
        weights: (0..60).map(|n| ((n * 7) % 5) as f64 / 5.0 - 0.4).collect(),
        bias: vec![0.05; 5],
    };
    Network::new(
        Shape::Image { channels: 2, height: 14, width: 14 },
        vec![conv(2, 4), square(), pool(), conv(4, 3), square(), pool(), Layer::Flatten, Layer::Dense(dense)],
    )
    .unwrap()
}
