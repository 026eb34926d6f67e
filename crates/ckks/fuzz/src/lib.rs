//! Shared setup for the loader fuzz targets: a small (insecure, test-only) context, so that
//! short inputs can reach every branch of the loaders.

use std::sync::{Arc, OnceLock};

use blindfold_ckks::{Context, ParametersBuilder};

/// N = 2^5 with three small primes: tiny objects, same code paths as production sets.
pub fn context() -> &'static Arc<Context> {
    static CONTEXT: OnceLock<Arc<Context>> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let params = ParametersBuilder::new(5)
            .ciphertext_bits(&[30, 20])
            .special_bits(&[30])
            .log_scale(20)
            .build_insecure_for_tests()
            .unwrap_or_else(|e| panic!("toy parameters: {e}"));
        Context::new(params).unwrap_or_else(|e| panic!("toy context: {e}"))
    })
}
