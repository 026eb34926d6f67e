//! The local scale test: a supervisor applies the KEDA rule of `infra/k8s/base` (its query and
//! target, read from the manifest) to the real queue, starting worker processes as the queue
//! grows and stopping them with SIGTERM as it drains, as the HorizontalPodAutoscaler would.
//! No job may be lost or run twice along the way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use blindfold_queue::{JobId, JobState};
use common::{Stack, WorkerProcess, batches, event_reasons};

/// The scaling rule as deployed: the ScaledObject's query and target.
struct Rule {
    query: String,
    target: f64,
}

impl Rule {
    fn from_manifest() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/k8s/base/worker-scaledobject.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let value = |key: &str| {
            let line = text.lines().map(str::trim).find(|l| l.starts_with(&format!("{key}:"))).unwrap();
            line[key.len() + 1..].trim().trim_matches('"').to_owned()
        };
        Self { query: value("query"), target: value("targetQueryValue").parse().unwrap() }
    }

    /// Desired workers: ceil(metric / target), within the bounds.
    async fn desired(&self, stack: &Stack, max: usize) -> usize {
        let metric: i64 = sqlx::query_scalar(&self.query).fetch_one(stack.db.pool()).await.unwrap();
        ((metric as f64 / self.target).ceil() as usize).min(max)
    }
}

/// Starts and stops workers like the HPA: scale out at once; scale in one worker at a time once
/// the desired count has stayed lower for the stabilisation window.
struct Supervisor<'a> {
    stack: &'a Stack,
    rule: Rule,
    max: usize,
    window: Duration,
    workers: Vec<WorkerProcess>,
    leaving: Vec<WorkerProcess>,
    started: usize,
    peak: usize,
    lower_since: Option<Instant>,
}

impl Supervisor<'_> {
    async fn step(&mut self) {
        self.leaving.retain_mut(|worker| match worker.exited() {
            Some(status) => {
                assert!(status.success(), "worker {} exited with {status:?}", worker.name);
                false
            }
            None => true,
        });
        let desired = self.rule.desired(self.stack, self.max).await;
        if desired > self.workers.len() {
            self.lower_since = None;
            while self.workers.len() < desired {
                self.started += 1;
                let name = format!("scaled-{}", self.started);
                self.workers.push(self.stack.worker(&name, &[("BLINDFOLD_WORKER_SHUTDOWN_SECS", "1")]));
            }
            self.peak = self.peak.max(self.workers.len());
        } else if desired < self.workers.len() {
            let since = *self.lower_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.window {
                let mut worker = self.workers.pop().unwrap();
                worker.signal_terminate();
                self.leaving.push(worker);
                self.lower_since = None;
            }
        } else {
            self.lower_since = None;
        }
    }

    /// Steps until every job is final and every worker gone.
    async fn drain(&mut self, ids: &[JobId]) {
        let start = Instant::now();
        loop {
            self.step().await;
            let mut all_final = true;
            for id in ids {
                all_final &= self.stack.job(*id).await.state.is_final();
            }
            if all_final && self.workers.is_empty() && self.leaving.is_empty() {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(300), "not drained:\n{}", self.stack.log_tail());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_applying_the_keda_rule_scales_workers_out_and_in_without_losing_or_doubling_jobs() {
    let _serial = common::SERIAL.lock().await;
    let stack = Stack::start().await;
    let rule = Rule::from_manifest();
    assert!(rule.query.contains("jobs"), "query read from the manifest: {}", rule.query);
    // Three at most on a 2-core machine (the manifest allows more; the rule is the same).
    let mut supervisor = Supervisor {
        stack: &stack,
        rule,
        max: 3,
        window: Duration::from_secs(2),
        workers: Vec::new(),
        leaving: Vec::new(),
        started: 0,
        peak: 0,
        lower_since: None,
    };
    supervisor.step().await;
    assert_eq!(supervisor.workers.len(), 0, "an empty queue needs no worker");

    let inputs = batches(8, 2);
    let mut first_wave = Vec::new();
    for batch in &inputs[..6] {
        first_wave.push(stack.submit(batch, 2).await);
    }
    supervisor.drain(&first_wave).await;
    assert_eq!(supervisor.peak, 3, "six queued jobs scale out to the maximum");

    let mut second_wave = Vec::new();
    for batch in &inputs[6..] {
        second_wave.push(stack.submit(batch, 2).await);
    }
    supervisor.drain(&second_wave).await;
    assert!(supervisor.started > 3, "the second wave scaled out from zero again");

    for id in first_wave.iter().chain(&second_wave) {
        let job = stack.job(*id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{}", stack.log_tail());
        let reasons = event_reasons(&stack.queue, *id).await;
        assert_eq!(reasons.iter().filter(|r| *r == "succeeded").count(), 1, "{reasons:?}");
        let expired = reasons.iter().filter(|r| *r == "lease_expired").count() as i32;
        assert_eq!(job.attempt, 1 + expired, "only a lost lease may spend an attempt: {reasons:?}");
        assert_eq!(stack.result_objects(*id).await.len(), 1, "one result object per job");
    }
}
