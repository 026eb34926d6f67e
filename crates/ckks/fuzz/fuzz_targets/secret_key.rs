#![no_main]
//! `SecretKey::from_bytes` on arbitrary input: errors are fine, panics and hangs are not.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let context = blindfold_ckks_fuzz::context();
    if let Ok(value) = blindfold_ckks::SecretKey::from_bytes(context, data) {
        // Whatever loads must serialize back to the same bytes.
        assert_eq!(value.to_bytes().as_slice(), data);
    }
});
