//! Shared helpers of the blindfold-nn fuzz targets.

/// A small valid ONNX graph with every kind of node the importer reads (a 2-level U-Net:
/// convolutions, squares, a pool, a transposed convolution, a concat).
pub fn valid_model() -> &'static [u8] {
    include_bytes!("../../tests/fixtures/onnx-ops/unet_tiny.onnx")
}

/// `valid` changed as `data` says: its first byte picks flip, cut or append, the next two an
/// offset, the rest the bytes (so the fuzzer explores near-valid files, not only noise).
pub fn mutate(valid: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = valid.to_vec();
    let (Some(&op), Some(&hi), Some(&lo)) = (data.first(), data.get(1), data.get(2)) else { return out };
    let at = (usize::from(hi) << 8 | usize::from(lo)) % out.len().max(1);
    let bytes = &data[3..];
    match op % 3 {
        0 => bytes.iter().enumerate().for_each(|(k, b)| {
            if let Some(slot) = out.get_mut(at + k) {
                *slot ^= b;
            }
        }),
        1 => out.truncate(at),
        _ => out.splice(at..at, bytes.iter().copied()).for_each(drop),
    }
    out
}
