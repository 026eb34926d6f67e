//! The packing a job runs in: forced, or chosen by image count under a latency key set (which
//! serves both packings), and the batches of either packing evaluated and decrypted with it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use blindfold_batch::Packing;
use blindfold_client::{Error, IntakeOptions, KeySet, PackingChoice, decrypt, encrypt, evaluate_file, read_inputs};
use blindfold_compiler::Control;
use blindfold_nn::metrics::argmax;

const MODEL: &str = "mnist-cryptonets";

/// Four of the embedded sample digits.
fn samples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../samples/mnist");
    (0..4).map(|i| dir.join(format!("t10k-{i:05}.png"))).collect()
}

#[test]
fn auto_follows_a_throughput_key_set_and_a_forced_latency_packing_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = KeySet::generate(&tmp.path().join("keys"), MODEL, PackingChoice::Throughput).unwrap();
    assert_eq!(PackingChoice::Auto.resolve(&keys, 1).unwrap(), Packing::Throughput);
    assert_eq!(PackingChoice::Throughput.resolve(&keys, 1).unwrap(), Packing::Throughput);
    assert!(!keys.serves(Packing::Latency).unwrap());
    let refused = PackingChoice::Latency.resolve(&keys, 1).unwrap_err();
    assert!(matches!(refused, Error::KeySetMismatch(_)), "{refused}");
    assert!(matches!(keys.compiled_model_for(Packing::Latency), Err(Error::KeySetMismatch(_))));
}

#[test]
fn a_latency_key_set_chooses_by_image_count_and_evaluates_both_packings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let keys = KeySet::generate(&dir, MODEL, PackingChoice::Latency).unwrap();
    assert!(keys.serves(Packing::Throughput).unwrap() && keys.serves(Packing::Latency).unwrap());
    // One image answers alone; a full batch (4,096 slots) goes in one ciphertext set.
    assert_eq!(PackingChoice::Auto.resolve(&keys, 1).unwrap(), Packing::Latency);
    assert_eq!(PackingChoice::Auto.resolve(&keys, 4096).unwrap(), Packing::Throughput);
    assert_eq!(PackingChoice::Throughput.resolve(&keys, 1).unwrap(), Packing::Throughput);

    let manifest = keys.compiled_model().unwrap().manifest().clone();
    let intake = read_inputs(&manifest, &samples(), IntakeOptions::default()).unwrap();
    let network = blindfold_nn::registry::load(MODEL).unwrap().network;
    let expected: Vec<usize> = intake.inputs.iter().map(|x| argmax(&network.forward(x).unwrap())).collect();
    for packing in [Packing::Throughput, Packing::Latency] {
        let model = keys.compiled_model_for(packing).unwrap();
        let out = tmp.path().join(format!("{packing}.bfib"));
        let batches = encrypt(&keys, &model, &intake, &out, &|_, _| {}).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].packing, packing);
        let result = tmp.path().join(format!("{packing}.bfrb"));
        let header = evaluate_file(&dir, &batches[0].path, &result, None, &Control::none()).unwrap();
        assert_eq!(header.packing, packing);
        let predictions = decrypt(&keys, &result, None).unwrap();
        let found: Vec<usize> = predictions.images.iter().map(|p| p.class_index).collect();
        assert_eq!(found, expected, "{packing}");
    }
}
