#![no_main]
//! A valid ONNX model with bytes flipped, cut or inserted: imported or refused, never a panic.
//! What imports must be a checked network (its shapes hold: the f64 evaluator runs on it when
//! it is small).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = blindfold_nn_fuzz::mutate(blindfold_nn_fuzz::valid_model(), data);
    if let Ok(network) = blindfold_nn::onnx::import(&file)
        && network.input().len() <= 4096
        && network.parameters() <= 1 << 16
    {
        let output = network.forward(&vec![0.5; network.input().len()]);
        assert!(output.is_ok_and(|y| y.len() == network.output().len()));
    }
});
