//! What the batch files of a compiled model must say: the checks a reader applies before it
//! hands a single ciphertext to the engine.

use blindfold_batch::{Expect, Uuid};
use blindfold_compiler::{CompiledModel, Plan};

/// The batch-header expectations of a [`CompiledModel`] under one key set.
pub trait BatchExpect {
    /// What an input batch for this model under `key_set` must say.
    fn expect_input(&self, key_set: Uuid) -> Expect;
    /// What a result batch for this model under `key_set` must say.
    fn expect_result(&self, key_set: Uuid) -> Expect;
}

impl BatchExpect for CompiledModel {
    fn expect_input(&self, key_set: Uuid) -> Expect {
        let expect = Expect::new()
            .model(self.name(), self.version())
            .packing(self.packing())
            .key_set(key_set)
            .shape(self.input_shape())
            .level(self.plan().input_level());
        match self.plan() {
            Plan::Throughput(plan) => expect.ciphertext_count(plan.input_count() as u64),
            // One ciphertext per image: checked against the header's image count on evaluation.
            Plan::Latency(_) => expect,
        }
    }

    fn expect_result(&self, key_set: Uuid) -> Expect {
        let expect = Expect::new()
            .model(self.name(), self.version())
            .packing(self.packing())
            .key_set(key_set)
            .shape(self.output_shape());
        match self.plan() {
            Plan::Throughput(plan) => expect.ciphertext_count(plan.output_count() as u64),
            Plan::Latency(_) => expect,
        }
    }
}
