//! Snapshots of every plan summary: the three registered models and the two synthetic graph
//! shapes, in both packings. A change in costs, levels, scales, layouts or keys shows as a
//! diff in review (`cargo insta review`, or set INSTA_UPDATE=always and read `git diff`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use blindfold_compiler::{CompileOptions, LatencyPlan, ThroughputPlan};
use blindfold_nn::registry;

fn models() -> Vec<String> {
    let synthetic = ["unet-shape", "resnet-shape"]
        .map(|name| format!("{}/../../models/synthetic/{name}", env!("CARGO_MANIFEST_DIR")));
    registry::names().into_iter().map(str::to_owned).chain(synthetic).collect()
}

/// Summaries as a 2-thread worker sees them (a streamed segment's buffers scale with threads).
fn with_two_threads<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(f)
}

#[test]
fn plan_summaries() {
    for model in models() {
        let loaded = registry::load(&model).unwrap();
        let name = loaded.manifest.name.clone();
        let options = CompileOptions { output_bound: loaded.manifest.output_bound, ..Default::default() };
        let (throughput, latency) = with_two_threads(|| {
            (
                ThroughputPlan::compile_with(&name, &loaded.network, &options).unwrap().summary(),
                LatencyPlan::compile_with(&name, &loaded.network, &options).unwrap().summary(),
            )
        });
        insta::assert_snapshot!(format!("{name}-throughput"), throughput);
        insta::assert_snapshot!(format!("{name}-latency"), latency);
    }
}
