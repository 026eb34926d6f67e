#![no_main]
//! `Parameters::from_bytes` on arbitrary input: errors are fine, panics and hangs are not.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(params) = blindfold_ckks::Parameters::from_bytes(data) {
        assert_eq!(params.to_bytes(), data);
    }
});
