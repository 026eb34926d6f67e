#![no_main]
//! A valid batch with bytes flipped, cut or appended: any change must be refused, and the
//! unchanged file must read back.

use blindfold_batch::{Expect, InputBatchReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let valid = blindfold_batch_fuzz::valid_batch();
    let file = blindfold_batch_fuzz::mutate(valid, data);
    let context = blindfold_batch_fuzz::context();
    let result = InputBatchReader::open(&file[..], context, &Expect::new())
        .and_then(|reader| reader.collect::<Result<Vec<_>, _>>());
    if file == valid {
        assert_eq!(result.map(|c| c.len()).ok(), Some(5), "the valid batch must read");
    } else {
        assert!(result.is_err(), "a changed batch was accepted");
    }
});
