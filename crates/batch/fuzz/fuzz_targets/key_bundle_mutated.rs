#![no_main]
//! A valid key bundle with bytes flipped, cut or appended: any change must be refused, and the
//! unchanged file must load.

use blindfold_batch::{KeyBundle, KeyBundleExpect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let valid = blindfold_batch_fuzz::valid_bundle();
    let file = blindfold_batch_fuzz::mutate(valid, data);
    let result = KeyBundle::read(&file[..], &KeyBundleExpect::new());
    if file == valid {
        assert!(result.is_ok(), "the valid bundle must load: {:?}", result.err());
    } else {
        assert!(result.is_err(), "a changed bundle was accepted");
    }
});
