//! How the caller watches and stops an evaluation, and the one progress meter both engines
//! report through.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

/// Progress of one evaluation: which stage, and how far through the whole plan.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Index of the stage running now.
    pub stage: usize,
    /// Number of stages.
    pub stages: usize,
    /// A short name ("conv2d 1->5", "square", …).
    pub name: &'a str,
    /// Fraction of the whole evaluation done, 0 to 1.
    pub fraction: f64,
}

/// How the caller watches and stops an evaluation: a progress callback and a cancellation flag
/// checked between work units.
pub struct Control<'a> {
    progress: Box<dyn Fn(Progress<'_>) + Send + Sync + 'a>,
    cancel: Option<&'a AtomicBool>,
}

impl std::fmt::Debug for Control<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("cancellable", &self.cancel.is_some()).finish()
    }
}

impl<'a> Control<'a> {
    /// No progress reports, no cancellation.
    pub fn none() -> Self {
        Self { progress: Box::new(|_| {}), cancel: None }
    }

    /// Reports progress to `callback`.
    pub fn with_progress(callback: impl Fn(Progress<'_>) + Send + Sync + 'a) -> Self {
        Self { progress: Box::new(callback), cancel: None }
    }

    /// Also stops at the next check once `flag` is set.
    pub fn cancelled_by(mut self, flag: &'a AtomicBool) -> Self {
        self.cancel = Some(flag);
        self
    }

    pub(crate) fn report(&self, progress: Progress<'_>) {
        (self.progress)(progress);
    }

    /// `Err(Cancelled)` once the flag is set: called between work units.
    pub(crate) fn check(&self) -> Result<()> {
        match self.cancel {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(Error::Cancelled),
            _ => Ok(()),
        }
    }
}

/// Walks a plan's stages, weighting each by its estimated cost, so that the fraction reported
/// is a fraction of the work, not of the stage count.
pub(crate) struct Meter<'c, 'a> {
    control: &'c Control<'a>,
    costs: Vec<f64>,
    total: f64,
    done: f64,
}

impl<'c, 'a> Meter<'c, 'a> {
    pub(crate) fn new(control: &'c Control<'a>, costs: Vec<f64>) -> Self {
        let total = costs.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        Self { control, costs, total, done: 0.0 }
    }

    /// Stage `index` starts: checks for cancellation and reports.
    pub(crate) fn start(&self, index: usize, name: &str) -> Result<()> {
        self.control.check()?;
        self.within(index, name, 0.0);
        Ok(())
    }

    /// `fraction` of stage `index` is done.
    pub(crate) fn within(&self, index: usize, name: &str, fraction: f64) {
        let cost = self.costs.get(index).copied().unwrap_or(0.0);
        self.control.report(Progress {
            stage: index,
            stages: self.costs.len(),
            name,
            fraction: ((self.done + fraction * cost) / self.total).min(1.0),
        });
    }

    /// Stage `index` is done.
    pub(crate) fn finish(&mut self, index: usize) {
        self.done += self.costs.get(index).copied().unwrap_or(0.0);
    }

    /// The whole evaluation is done.
    pub(crate) fn done(&self) {
        let stages = self.costs.len();
        self.control.report(Progress { stage: stages, stages, name: "done", fraction: 1.0 });
    }

    pub(crate) fn control(&self) -> &Control<'a> {
        self.control
    }
}
