#![no_main]
//! The ONNX importer on arbitrary bytes: a network or a refusal, never a panic or a hang.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = blindfold_nn::onnx::import(data);
});
