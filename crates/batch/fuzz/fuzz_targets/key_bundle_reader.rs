#![no_main]
//! `KeyBundle::read` on arbitrary input: errors are fine, panics and hangs are not.

use blindfold_batch::{KeyBundle, KeyBundleExpect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = KeyBundle::read(data, &KeyBundleExpect::new());
});
