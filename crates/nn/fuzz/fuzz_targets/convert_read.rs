#![no_main]
//! `model convert`'s reader on a valid ONNX model with bytes flipped, cut or inserted: a probe
//! network or a refusal, never a panic. What it reads must evaluate and calibrate when small.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = blindfold_nn_fuzz::mutate(blindfold_nn_fuzz::valid_model(), data);
    for replace_maxpool in [false, true] {
        if let Ok(standard) = blindfold_nn::convert::StandardNetwork::read(&file, replace_maxpool)
            && standard.input().len() <= 4096
        {
            let image = vec![0.5; standard.input().len()];
            let _ = standard.calibrate(std::slice::from_ref(&image));
        }
    }
});
