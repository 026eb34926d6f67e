//! `blindfold worker`: the worker node, the same as the `blindfold-worker` binary (so one
//! binary is enough for `dev up`, `bench fleet` and small deployments).

use anyhow::Context;

/// Runs a worker until SIGTERM or Ctrl-C. Logs are JSON lines on stderr (RUST_LOG, default
/// info).
pub fn run(config: blindfold_worker::Config, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    crate::logs::json();
    runtime.block_on(async {
        let worker = blindfold_worker::Worker::start(config).await.context("starting the worker")?;
        worker.serve(crate::logs::stop_requested()).await.context("serving")
    })
}
