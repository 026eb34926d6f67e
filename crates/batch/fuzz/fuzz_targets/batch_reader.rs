#![no_main]
//! The batch readers on arbitrary input: errors are fine, panics and hangs are not. Whatever
//! reads back completely must be written again to the very same bytes (one encoding per batch).

use blindfold_batch::{Expect, InputBatchReader, InputBatchWriter, RawBatchReader, ResultBatchReader};
use blindfold_ckks::SeededCiphertext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let context = blindfold_batch_fuzz::context();
    let _ = RawBatchReader::open(data, blindfold_batch::BatchKind::Input, &Expect::new()).and_then(|r| r.verify());
    if let Ok(reader) = ResultBatchReader::open(data, context, &Expect::new()) {
        let _ = reader.collect::<Result<Vec<_>, _>>();
    }
    let Ok(reader) = InputBatchReader::open(data, context, &Expect::new()) else { return };
    let header = reader.header().clone();
    let per_chunk = reader.layout().ciphertexts_per_chunk();
    let Ok(ciphertexts) = reader.collect::<Result<Vec<SeededCiphertext>, _>>() else { return };
    let mut writer = InputBatchWriter::new(Vec::new(), context, header)
        .unwrap_or_else(|e| panic!("a header that was read must be writable: {e}"))
        .ciphertexts_per_chunk(per_chunk);
    for c in &ciphertexts {
        writer.push(c).unwrap_or_else(|e| panic!("a ciphertext that was read must be writable: {e}"));
    }
    let again = writer.finish().unwrap_or_else(|e| panic!("finish: {e}")).writer;
    assert_eq!(again, data, "a batch that reads must re-encode to the same bytes");
});
