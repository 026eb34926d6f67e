//! Runs networks encrypted end to end, as the client and the worker do: compile, keys for
//! exactly the plan's rotations, pack, encrypt, evaluate, decrypt, unpack.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use blindfold_ckks::{Context, Decryptor, KeyGenerator, SecretKeyEncryptor};
use blindfold_compiler::{Control, LatencyEngine, LatencyPlan, ThroughputEngine, ThroughputPlan};
use blindfold_nn::Network;

/// The latency packing on each input: (encrypted outputs, the plan's summary).
pub fn latency(network: &Network, inputs: &[Vec<f64>]) -> (Vec<Vec<f64>>, String) {
    let plan = LatencyPlan::compile("test", network).unwrap();
    latency_with(plan, inputs)
}

pub fn latency_with(plan: LatencyPlan, inputs: &[Vec<f64>]) -> (Vec<Vec<f64>>, String) {
    let summary = plan.summary();
    let context = Context::new(plan.params().clone()).unwrap();
    let keys = KeyGenerator::new(&context);
    let relin = keys.relin_key();
    let galois = keys.galois_keys_at(&plan.rotation_keys());
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone()).unwrap();
    let decryptor = Decryptor::new(&context, keys.secret_key().clone()).unwrap();
    let engine = LatencyEngine::new(plan, &context).unwrap();
    let plan = engine.plan();
    let outputs = inputs
        .iter()
        .map(|input| {
            let cts = plan
                .pack(input)
                .unwrap()
                .iter()
                .map(|slots| {
                    encryptor.encrypt(&context.encode(slots, plan.input_level(), plan.input_scale()).unwrap()).unwrap()
                })
                .collect();
            let out = engine.evaluate(cts, &relin, &galois, &Control::none()).unwrap();
            assert!(out.iter().all(|ct| ct.level() == 0));
            let slots: Vec<Vec<f64>> = out.iter().map(|ct| decryptor.decrypt_values(ct).unwrap()).collect();
            plan.unpack(&slots).unwrap()
        })
        .collect();
    (outputs, summary)
}

/// The throughput packing on a batch of `inputs`: (encrypted outputs, the plan's summary).
pub fn throughput(network: &Network, inputs: &[Vec<f64>]) -> (Vec<Vec<f64>>, String) {
    let plan = ThroughputPlan::compile("test", network).unwrap();
    let summary = plan.summary();
    let context = Context::new(plan.params().clone()).unwrap();
    let keys = KeyGenerator::new(&context);
    let relin = keys.relin_key();
    let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone()).unwrap();
    let decryptor = Decryptor::new(&context, keys.secret_key().clone()).unwrap();
    let packed = plan.pack(inputs).unwrap();
    let cts = packed
        .iter()
        .map(|slots| {
            encryptor.encrypt(&context.encode(slots, plan.input_level(), plan.input_scale()).unwrap()).unwrap()
        })
        .collect();
    let engine = ThroughputEngine::new(plan, &context).unwrap();
    let out = engine.evaluate(cts, &relin, &Control::none()).unwrap();
    let slots: Vec<Vec<f64>> = out.iter().map(|ct| decryptor.decrypt_values(ct).unwrap()).collect();
    (engine.plan().unpack(&slots, inputs.len()).unwrap(), summary)
}

/// The largest absolute difference.
pub fn max_error(got: &[Vec<f64>], want: &[Vec<f64>]) -> f64 {
    got.iter().zip(want).flat_map(|(g, w)| g.iter().zip(w).map(|(a, b)| (a - b).abs())).fold(0.0, f64::max)
}
