//! Streamed segments: convolution → square → sum pool (→ settle), evaluated one pooled
//! position at a time. For each pooled position only the convolution outputs under its window
//! are computed, squared and summed; the layer's full output (k² times the pooled one, and
//! 3-part after the square) is never held, which is what bounds a LeNet batch's memory. The
//! settle (relinearize and rescale) runs on the pooled sums, k² times fewer key switches than
//! on the squares.

use blindfold_ckks::{Ciphertext, Context, Evaluator, LinearMap, RelinKey};
use blindfold_nn::{Network, Shape};
use rayon::prelude::*;

use super::{Stage, StageOp};
use crate::lower::{Lowered, ValueId};
use crate::{Control, Error, Result};

/// A run of stages evaluated together. Stage indices refer to the plan's stages.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    /// What progress reports call it.
    pub name: String,
    pub conv: usize,
    pub square: usize,
    pub pool: usize,
    pub settle: Option<usize>,
    /// Pooled outputs per position (the channels).
    pub channels: usize,
    /// Positions (pooled outputs per channel); pooled output c·positions + s.
    pub positions: usize,
    /// Convolution outputs under one window.
    pub window: usize,
}

impl Segment {
    /// The segment's last stage.
    pub fn end(&self) -> usize {
        self.settle.unwrap_or(self.pool)
    }

    pub fn summary_line(&self) -> String {
        format!(
            "     stages {}-{} streamed: {} pooled positions × {} channels, {} convolution outputs per window{}\n",
            self.conv,
            self.end(),
            self.positions,
            self.channels,
            self.window,
            if self.settle.is_some() { ", settled after pooling" } else { "" }
        )
    }
}

/// Every convolution → square → sum pool → (settle) run whose intermediate values feed only
/// the next stage, whose pool windows all have the same size and whose pool is channel-major.
pub(super) fn find(stages: &[Stage], consumers: &[Vec<usize>], network: &Network, lowered: &Lowered) -> Vec<Segment> {
    let only = |v: ValueId| consumers[v].len() == 1 && v != lowered.output;
    let mut segments = Vec::new();
    let mut i = 0;
    while i + 2 < stages.len() {
        let found = (|| {
            let StageOp::Linear { order: Some(_), pool: false, output: conv_out, .. } = &stages[i].op else {
                return None;
            };
            let StageOp::Square { input, output: squared, .. } = &stages[i + 1].op else { return None };
            let pool = i + 2;
            let StageOp::Linear { rows, pool: true, input: pooled_in, output: pooled, .. } = &stages[pool].op else {
                return None;
            };
            if input != conv_out || pooled_in != squared || !only(*conv_out) || !only(*squared) {
                return None;
            }
            let settle = stages.get(pool + 1).and_then(|s| match s.op {
                StageOp::Settle { value, .. } if value == *pooled => Some(pool + 1),
                _ => None,
            });
            let Shape::Image { channels, height, width } = network.shape(lowered.values[*pooled].tensor) else {
                return None;
            };
            let window = rows.first()?.len();
            let uniform = rows.iter().all(|row| row.len() == window && row.iter().all(|&(_, w)| w == 1.0));
            (uniform && window > 0 && rows.len() == channels * height * width).then(|| Segment {
                name: format!("{} + square + pool", stages[i].header.name),
                conv: i,
                square: i + 1,
                pool,
                settle,
                channels,
                positions: height * width,
                window,
            })
        })();
        match found {
            Some(segment) => {
                i = segment.end() + 1;
                segments.push(segment);
            }
            None => i += 1,
        }
    }
    segments
}

/// The convolution's rows in the order a segment consumes them: for each pooled position, each
/// window element, each channel (so the channels of one position, which share their inputs,
/// stay adjacent).
// The nested index loops spell out the row order, which is the point of this function.
#[allow(clippy::needless_range_loop)]
pub(super) fn map(stages: &[Stage], segment: &Segment, context: &Context) -> Result<LinearMap> {
    let (StageOp::Linear { inputs, rows, bias, order, weight_scale, .. }, StageOp::Linear { rows: pool_rows, .. }) =
        (&stages[segment.conv].op, &stages[segment.pool].op)
    else {
        return Err(Error::Internal("a segment does not start with a convolution and end with a pool".into()));
    };
    // Tensor index → row of the convolution's map.
    let mut row_of = vec![usize::MAX; rows.len()];
    match order {
        Some(order) => order.iter().enumerate().for_each(|(row, &tensor)| row_of[tensor] = row),
        None => row_of.iter_mut().enumerate().for_each(|(tensor, row)| *row = tensor),
    }
    let mut fused_rows = Vec::with_capacity(segment.positions * segment.window * segment.channels);
    let mut fused_bias = Vec::with_capacity(fused_rows.capacity());
    for position in 0..segment.positions {
        for element in 0..segment.window {
            for channel in 0..segment.channels {
                let tensor = pool_rows[channel * segment.positions + position][element].0;
                let row = *row_of.get(tensor).filter(|&&r| r != usize::MAX).ok_or_else(|| {
                    Error::Internal(format!("pool reads convolution output {tensor}, which does not exist"))
                })?;
                fused_rows.push(rows[row].clone());
                fused_bias.push(bias[row]);
            }
        }
    }
    Ok(LinearMap::new(context, *inputs, &fused_rows, fused_bias, stages[segment.conv].header.level_in, *weight_scale)?)
}

/// Relinearization and rescales a stage owes its output.
pub(super) fn settling(op: &StageOp) -> (bool, usize) {
    match *op {
        StageOp::Linear { relinearize, rescales, .. }
        | StageOp::Square { relinearize, rescales, .. }
        | StageOp::Settle { relinearize, rescales, .. } => (relinearize, rescales),
        _ => (false, 0),
    }
}

/// Relinearizes (if asked and 3-part) and rescales `rescales` times.
pub(super) fn settle_in_place(
    ev: &Evaluator,
    ct: &mut Ciphertext,
    (relinearize, rescales): (bool, usize),
    relin: &RelinKey,
) -> Result<()> {
    if relinearize && ct.size() == 3 {
        ev.relinearize_assign(ct, relin)?;
    }
    for _ in 0..rescales {
        ev.rescale_assign(ct)?;
    }
    Ok(())
}

/// Runs one segment: pooled positions in parallel, each computing its window's convolution
/// outputs for every channel, settling, squaring and summing them.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    ev: &Evaluator,
    stages: &[Stage],
    segment: &Segment,
    map: &LinearMap,
    inputs: &[Ciphertext],
    relin: &RelinKey,
    control: &Control<'_>,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<Vec<Ciphertext>> {
    let conv = settling(&stages[segment.conv].op);
    let square = settling(&stages[segment.square].op);
    let shift = match stages[segment.square].op {
        StageOp::Square { shift, .. } => shift,
        _ => 0.0,
    };
    let last = segment.settle.map_or((false, 0), |s| settling(&stages[s].op));
    let (channels, block) = (segment.channels, segment.channels * segment.window);
    let refs: Vec<&Ciphertext> = inputs.iter().collect();
    let finished = std::sync::atomic::AtomicUsize::new(0);
    progress(0.0);
    let pooled = (0..segment.positions)
        .into_par_iter()
        .map_init(Vec::new, |outputs, position| {
            control.check()?;
            // The convolution's outputs reuse one buffer per worker: no fresh, zeroed
            // allocation per position.
            ev.apply_linear_rows_into(map, &refs, position * block..(position + 1) * block, outputs)?;
            let mut sums: Vec<Option<Ciphertext>> = (0..channels).map(|_| None).collect();
            for (k, ct) in outputs.iter_mut().enumerate() {
                settle_in_place(ev, ct, conv, relin)?;
                settle_in_place(ev, ct, square, relin)?;
                match &mut sums[k % channels] {
                    Some(sum) => ev.add_square_shifted(sum, ct, shift)?,
                    empty => *empty = Some(ev.square_shifted(ct, shift)?),
                }
            }
            let done = finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if done.is_multiple_of(16) {
                progress(done as f64 / segment.positions as f64);
            }
            sums.into_iter()
                .map(|sum| {
                    let mut sum = sum.ok_or_else(|| Error::Internal("empty pooling window".into()))?;
                    settle_in_place(ev, &mut sum, last, relin)?;
                    Ok(sum)
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    // Pooled output c·positions + s is channel c of position s.
    let mut by_position: Vec<std::vec::IntoIter<Ciphertext>> = pooled.into_iter().map(Vec::into_iter).collect();
    let mut outputs = Vec::with_capacity(channels * segment.positions);
    for _ in 0..channels {
        for position in &mut by_position {
            outputs.push(position.next().ok_or_else(|| Error::Internal("short pooled position".into()))?);
        }
    }
    Ok(outputs)
}
