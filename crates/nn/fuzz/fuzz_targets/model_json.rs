#![no_main]
//! Networks and manifests from arbitrary JSON: checked on the way in (shapes, arity, names,
//! weights, limits) or refused, never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<blindfold_nn::Network>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = blindfold_nn::Manifest::from_json(text);
    }
});
