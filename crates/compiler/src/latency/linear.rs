//! The diagonal method over one or more ciphertexts, with baby-step giant-step and hoisted
//! rotations: the one unit every latency layer that moves slots runs through.
//!
//! A matrix from an input layout (ciphertexts i) to an output layout (ciphertexts o) is a set
//! of plaintext diagonals D_{o,i,d}: output ciphertext o is `Σ_i Σ_d D_{o,i,d} ⊙ rot_d(x_i)`.
//! Each weight W[e, f] is placed on one (o, i, d) and one slot s, with s a copy of e's output
//! slot and s + d a copy of f's input slot, preferring diagonals many weights share. With
//! d = g + b, the baby rotations rot_b(x_i) are hoisted (each input ciphertext decomposed
//! once), each giant step sums the babies times diagonals pre-rotated by −g, then rotates the
//! sum by g. Copies of a repeated output are collected by log2 rotate-and-sum steps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use blindfold_ckks::{Ciphertext, Context, Evaluator, GaloisKeys, Plaintext};
use rayon::prelude::*;

use super::layout::Layout;
use crate::cost::Costs;
use crate::lower::Rows;
use crate::{Control, Error, Result};

/// Key of a diagonal: output ciphertext, input ciphertext, rotation step.
pub(crate) type DiagonalKey = (usize, usize, usize);

/// A weighted map (or sum pool) as diagonals between two layouts, with its baby-step size.
#[derive(Debug, Clone)]
pub(crate) struct LinearStage {
    pub outputs: usize,
    pub bias: Vec<f64>,
    pub weight_scale: f64,
    pub rescale: bool,
    pub input_cts: usize,
    pub output: Layout,
    /// The product runs over slots 0..span of each ciphertext, repeated.
    pub span: usize,
    /// Baby-step size B: diagonal d = g·B + b.
    pub baby: usize,
    /// (output ct, input ct, diagonal) → (slot, weight).
    pub entries: BTreeMap<DiagonalKey, Vec<(usize, f64)>>,
    /// Rotate-and-sum steps after the product (collecting copies of a repeated output).
    pub sum_steps: Vec<usize>,
    /// Every weight is 1 and every output reads every diagonal of its ciphertext (a sum pool
    /// in place): the diagonals need no masks, since slots outside the output layout may hold
    /// anything, so the stage is rotations and additions only. (A 0/1 mask cannot be encoded
    /// exactly at scale 1, and a larger scale would cost a level.)
    pub unmasked: bool,
    /// The engine keeps the diagonals as slot vectors (8 bytes a slot) and encodes each one
    /// when a giant step needs it, instead of holding them encoded ((level + 1) · N · 8 bytes,
    /// 2 (level + 1) times more) between images: set when the plan must fit a memory budget.
    pub streamed: bool,
}

impl LinearStage {
    /// Per input ciphertext, its baby steps (0 included when used).
    pub(crate) fn baby_steps(&self) -> Vec<Vec<usize>> {
        let mut babies = vec![BTreeSet::new(); self.input_cts];
        for &(_, i, d) in self.entries.keys() {
            babies[i].insert(d % self.baby);
        }
        babies.into_iter().map(|b| b.into_iter().collect()).collect()
    }

    /// Per output ciphertext, its giant steps (0 included when used).
    pub(crate) fn giant_steps(&self) -> Vec<Vec<usize>> {
        let mut giants = vec![BTreeSet::new(); self.output.cts];
        for &(o, _, d) in self.entries.keys() {
            giants[o].insert(d - d % self.baby);
        }
        giants.into_iter().map(|g| g.into_iter().collect()).collect()
    }

    /// Every rotation step it uses, zero excluded.
    pub(crate) fn steps(&self) -> BTreeSet<usize> {
        self.baby_steps()
            .into_iter()
            .flatten()
            .chain(self.giant_steps().into_iter().flatten())
            .chain(self.sum_steps.iter().copied())
            .filter(|&s| s != 0)
            .collect()
    }

    /// Rotations one image runs: hoisted babies, giants and rotate-and-sum steps.
    pub(crate) fn rotation_counts(&self) -> (usize, usize, usize) {
        let babies = self.baby_steps().iter().map(|b| b.iter().filter(|&&s| s != 0).count()).sum();
        let giants = self.giant_steps().iter().map(|g| g.iter().filter(|&&s| s != 0).count()).sum();
        (babies, giants, self.sum_steps.len() * self.output.cts)
    }

    /// Diagonals that are multiplied (none in an unmasked stage).
    fn masked_diagonals(&self) -> usize {
        if self.unmasked { 0 } else { self.entries.len() }
    }

    /// Bytes the engine holds for the stage between images at input `level`: its diagonals
    /// (encoded, or as slot vectors when streamed) and its biases.
    pub(crate) fn plaintext_bytes(&self, level: usize, n: usize) -> usize {
        let encoded = (level + 1) * n * 8;
        let per_diagonal = if self.streamed { n / 2 * 8 } else { encoded };
        self.masked_diagonals() * per_diagonal + self.output.cts * encoded
    }

    /// Bytes of the stage's own tables as the plan holds them: every weight with its slot (a
    /// B-tree entry per diagonal), the biases and the output layout's positions.
    pub(crate) fn table_bytes(&self) -> usize {
        const ENTRY: usize = size_of::<DiagonalKey>() + size_of::<Vec<(usize, f64)>>() + 16;
        let weights: usize = self.entries.values().map(|v| v.capacity() * size_of::<(usize, f64)>() + ENTRY).sum();
        weights + (self.bias.capacity() + self.output.positions.capacity()) * 8
    }

    /// Bytes of the diagonals a streamed stage encodes while it runs on `threads` threads: one
    /// giant step's terms per thread at most; none when not streamed.
    pub(crate) fn working_bytes(&self, level: usize, n: usize, threads: usize) -> usize {
        if !self.streamed || self.unmasked {
            return 0;
        }
        let mut per_giant: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        for &(o, _, d) in self.entries.keys() {
            *per_giant.entry((o, d - d % self.baby)).or_default() += 1;
        }
        let mut counts: Vec<usize> = per_giant.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts.iter().take(threads.max(1)).sum::<usize>() * (level + 1) * n * 8
    }
}

/// Assigns every weight to one (output ct, input ct, diagonal, slot), preferring diagonals
/// most weights can use.
fn assign_diagonals(
    rows: &Rows,
    input: &Layout,
    output: &Layout,
    span: usize,
    slots: usize,
) -> BTreeMap<DiagonalKey, Vec<(usize, f64)>> {
    let out_copies = span / output.period.min(span);
    let in_copies = span / input.period.min(span);
    let (cts_in, cts_out) = (input.cts, output.cts);
    let candidates = |e: usize, f: usize| {
        let (p, q) = (output.positions[e], input.positions[f]);
        let (o, p0, i, q0) = (p / slots, p % slots, q / slots, q % slots);
        (0..out_copies).flat_map(move |j| {
            let s = p0 + j * output.period;
            (0..in_copies).map(move |k| ((o, i, (q0 + k * input.period + span - s) % span), s))
        })
    };
    let index = |(o, i, d): DiagonalKey| (o * cts_in + i) * span + d;
    let mut frequency = vec![0u32; cts_out * cts_in * span];
    for (e, row) in rows.iter().enumerate() {
        for &(f, w) in row {
            if w != 0.0 {
                for (key, _) in candidates(e, f) {
                    frequency[index(key)] += 1;
                }
            }
        }
    }
    let mut entries: BTreeMap<DiagonalKey, Vec<(usize, f64)>> = BTreeMap::new();
    for (e, row) in rows.iter().enumerate() {
        for &(f, w) in row {
            if w == 0.0 {
                continue;
            }
            let best = candidates(e, f)
                .max_by(|a, b| frequency[index(a.0)].cmp(&frequency[index(b.0)]).then(b.0.2.cmp(&a.0.2)));
            if let Some((key, s)) = best {
                entries.entry(key).or_default().push((s, w));
            }
        }
    }
    entries
}

/// The power-of-two baby-step size minimising the rotations' cost, and that cost.
fn choose_baby(
    entries: &BTreeMap<DiagonalKey, Vec<(usize, f64)>>,
    span: usize,
    cts: (usize, usize),
    costs: Costs,
) -> (usize, f64) {
    let (cts_in, cts_out) = cts;
    let mut best = (1, f64::INFINITY);
    let mut baby = 1;
    while baby <= span {
        let mut babies = vec![BTreeSet::new(); cts_in];
        let mut giants = vec![BTreeSet::new(); cts_out];
        for &(o, i, d) in entries.keys() {
            if d % baby != 0 {
                babies[i].insert(d % baby);
            }
            if d / baby != 0 {
                giants[o].insert(d / baby);
            }
        }
        let hoisting = babies.iter().filter(|b| !b.is_empty()).count() as f64 * costs.decomposition();
        let cost = hoisting
            + babies.iter().map(BTreeSet::len).sum::<usize>() as f64 * costs.hoisted_rotation()
            + giants.iter().map(BTreeSet::len).sum::<usize>() as f64 * costs.key_switch();
        if cost < best.1 {
            best = (baby, cost);
        }
        baby *= 2;
    }
    best
}

/// What a linear stage is asked to compute.
pub(crate) struct LinearRequest<'a> {
    pub rows: &'a Rows,
    pub bias: &'a [f64],
    pub slots: usize,
    pub costs: Costs,
    /// A sum pool: weights 1 at scale 1, no bias.
    pub pool: bool,
}

/// A linear stage computing the request from `input` into `output`, and its cost.
pub(crate) fn plan(request: &LinearRequest<'_>, input: &Layout, output: Layout) -> (LinearStage, f64) {
    let slots = request.slots;
    let span = if input.cts > 1 || output.cts > 1 { slots } else { input.period.max(output.period).min(slots) };
    let entries = assign_diagonals(request.rows, input, &output, span, slots);
    let (baby, rotations) = choose_baby(&entries, span, (input.cts, output.cts), request.costs);
    let sum_steps: Vec<usize> = if output.cts == 1 {
        std::iter::successors(Some(output.period), |s| Some(s * 2)).take_while(|&s| s < span).collect()
    } else {
        Vec::new()
    };
    let unmasked = request.pool && uniform(request.rows, &entries, &output, slots);
    let products = if unmasked { 0.0 } else { entries.len() as f64 * request.costs.product() };
    let cost = rotations + (sum_steps.len() * output.cts) as f64 * request.costs.key_switch() + products;
    let stage = LinearStage {
        outputs: request.rows.len(),
        bias: request.bias.to_vec(),
        weight_scale: 1.0,
        rescale: false,
        input_cts: input.cts,
        output,
        span,
        baby,
        entries,
        sum_steps,
        unmasked,
        streamed: false,
    };
    (stage, cost)
}

/// Whether every weight is 1 and every output reads each diagonal of its ciphertext exactly
/// once: then adding the rotated inputs unmasked computes every output exactly.
fn uniform(rows: &Rows, entries: &BTreeMap<DiagonalKey, Vec<(usize, f64)>>, output: &Layout, slots: usize) -> bool {
    if rows.iter().flatten().any(|&(_, w)| w != 1.0) {
        return false;
    }
    let mut keys_per_ct = vec![0usize; output.cts];
    for &(o, _, _) in entries.keys() {
        keys_per_ct[o] += 1;
    }
    rows.iter().enumerate().all(|(e, row)| row.len() == keys_per_ct[output.positions[e] / slots])
}

/// The cheapest stage for the request over `outputs` (candidate output layouts, in order of
/// preference on a tie).
pub(crate) fn best(request: &LinearRequest<'_>, input: &Layout, outputs: Vec<Layout>) -> Option<(LinearStage, f64)> {
    let mut best: Option<(LinearStage, f64)> = None;
    for output in outputs {
        let (stage, cost) = plan(request, input, output);
        if best.as_ref().is_none_or(|(_, b)| cost < *b) {
            best = Some((stage, cost));
        }
    }
    best
}

/// A linear stage's plaintexts: per output ciphertext, per giant step, its terms.
#[derive(Debug)]
pub(crate) struct EncodedLinear {
    /// Per input ciphertext, its baby steps.
    babies: Vec<Vec<i64>>,
    /// Per output ciphertext: (giant step, terms).
    giants: Vec<Vec<(i64, Vec<Term>)>>,
    sum_steps: Vec<i64>,
    rescale: bool,
    /// One bias plaintext per output ciphertext.
    bias: Vec<Plaintext>,
    /// Level and scale of the diagonals (streamed ones are encoded there when used).
    level: usize,
    weight_scale: f64,
}

/// Input ciphertext, baby (by index), and the diagonal pre-rotated by the giant step.
#[derive(Debug)]
struct Term {
    input: usize,
    baby: usize,
    diagonal: Diagonal,
}

/// A term's diagonal as the engine holds it.
#[derive(Debug)]
enum Diagonal {
    /// None: an unmasked stage adds the baby as it is.
    Unit,
    /// Encoded once, when the engine was built.
    Encoded(Plaintext),
    /// Slot values, encoded each time the term runs ([`LinearStage::streamed`]).
    Streamed(Vec<f64>),
}

/// Encodes a stage's diagonals, pre-rotated by their giant step, at `level` and the weight
/// scale, and its bias at `level_out` and `scale_out`.
pub(crate) fn encode(
    context: &Arc<Context>,
    linear: &LinearStage,
    level: usize,
    (level_out, scale_out): (usize, f64),
) -> Result<EncodedLinear> {
    let slots = context.slots();
    let babies = linear.baby_steps();
    let baby_index: Vec<BTreeMap<usize, usize>> =
        babies.iter().map(|b| b.iter().enumerate().map(|(k, &s)| (s, k)).collect()).collect();
    let giants = linear
        .giant_steps()
        .into_iter()
        .enumerate()
        .map(|(o, steps)| {
            steps
                .into_par_iter()
                .map(|g| {
                    let terms = linear
                        .entries
                        .range((o, 0, 0)..(o + 1, 0, 0))
                        .filter(|((_, _, d), _)| d - d % linear.baby == g)
                        .map(|(&(_, i, d), entries)| {
                            let baby = baby_index[i].get(&(d - g)).copied().ok_or_else(|| {
                                Error::Internal(format!("baby step {} of input {i} is missing", d - g))
                            })?;
                            if linear.unmasked {
                                return Ok(Term { input: i, baby, diagonal: Diagonal::Unit });
                            }
                            // P[q] = D_d[(q − g) mod slots], so that rot_g(P ⊙ rot_b(x)) = D_d ⊙ rot_d(x).
                            let mut rotated = vec![0.0; slots];
                            for &(p, w) in entries {
                                for copy in (0..slots).step_by(linear.span) {
                                    rotated[(p + copy + g) % slots] += w;
                                }
                            }
                            let diagonal = if linear.streamed {
                                Diagonal::Streamed(rotated)
                            } else {
                                Diagonal::Encoded(context.encode(&rotated, level, linear.weight_scale)?)
                            };
                            Ok(Term { input: i, baby, diagonal })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok((g as i64, terms))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let bias = linear
        .output
        .fill(&linear.bias, slots)
        .iter()
        .map(|values| Ok(context.encode(values, level_out, scale_out)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(EncodedLinear {
        babies: babies.into_iter().map(|b| b.into_iter().map(|s| s as i64).collect()).collect(),
        giants,
        sum_steps: linear.sum_steps.iter().map(|&s| s as i64).collect(),
        rescale: linear.rescale,
        bias,
        level,
        weight_scale: linear.weight_scale,
    })
}

/// Runs an encoded stage on the input ciphertexts: hoisted babies per input, giant steps in
/// parallel per output, then rotate-and-sum, rescale and the bias.
pub(crate) fn apply(
    ev: &Evaluator,
    inputs: &[Ciphertext],
    encoded: &EncodedLinear,
    galois: &GaloisKeys,
    control: &Control<'_>,
) -> Result<Vec<Ciphertext>> {
    if inputs.len() != encoded.babies.len() {
        return Err(Error::Internal(format!(
            "a linear stage over {} ciphertexts got {}",
            encoded.babies.len(),
            inputs.len()
        )));
    }
    let babies =
        inputs
            .par_iter()
            .zip(&encoded.babies)
            .map(|(x, steps)| {
                if steps.iter().all(|&s| s == 0) {
                    return Ok(steps.iter().map(|_| x.clone()).collect());
                }
                let decomposed = ev.decompose(x)?;
                steps
                    .par_iter()
                    .map(|&step| {
                        if step == 0 {
                            Ok(x.clone())
                        } else {
                            Ok(ev.rotate_decomposed(x, &decomposed, step, galois)?)
                        }
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<Vec<Ciphertext>>>>()?;
    // Each output ciphertext sums its giant steps as they finish (a parallel reduction), so
    // at most a few partial sums are alive at once, not one per giant step.
    let giant = |(step, terms): &(i64, Vec<Term>)| -> Result<Ciphertext> {
        control.check()?;
        let mut acc: Option<Ciphertext> = None;
        for term in terms {
            let x = &babies[term.input][term.baby];
            let streamed;
            let plaintext = match &term.diagonal {
                Diagonal::Unit => None,
                Diagonal::Encoded(p) => Some(p),
                Diagonal::Streamed(values) => {
                    streamed = ev.context().encode(values, encoded.level, encoded.weight_scale)?;
                    Some(&streamed)
                }
            };
            match (acc.as_mut(), plaintext) {
                (None, Some(p)) => acc = Some(ev.mul_plain(x, p)?),
                (None, None) => acc = Some(x.clone()),
                (Some(acc), Some(p)) => ev.mul_plain_accumulate(acc, x, p)?,
                (Some(acc), None) => ev.add_assign(acc, x)?,
            }
        }
        let acc = acc.ok_or_else(|| Error::Internal("a giant step without terms".into()))?;
        Ok(if *step == 0 { acc } else { ev.rotate(&acc, *step, galois)? })
    };
    let sums = encoded
        .giants
        .par_iter()
        .map(|giants| {
            giants
                .par_iter()
                .map(giant)
                .try_reduce_with(|mut sum, partial| {
                    ev.add_assign(&mut sum, &partial)?;
                    Ok(sum)
                })
                .ok_or_else(|| Error::Internal("an output ciphertext without diagonals".into()))?
        })
        .collect::<Result<Vec<Ciphertext>>>()?;
    drop(babies);
    sums.into_par_iter()
        .zip(&encoded.bias)
        .map(|(mut sum, bias)| {
            // Rotate-and-sum before rescaling: the key-switching noise is then small against
            // the scale.
            for &step in &encoded.sum_steps {
                let rotated = ev.rotate(&sum, step, galois)?;
                ev.add_assign(&mut sum, &rotated)?;
            }
            if encoded.rescale {
                ev.rescale_assign(&mut sum)?;
            }
            Ok(ev.add_plain(&sum, bias)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::layout::Geometry;
    use blindfold_ckks::Preset;

    fn costs() -> Costs {
        let params = Preset::N13Depth5Small.parameters().unwrap_or_else(|e| panic!("{e}"));
        Costs::new(&params, 3)
    }

    /// Rows of a 3×3 convolution with 'same' padding on one h×w channel, weight 1 + tap.
    fn conv_rows(h: usize, w: usize) -> Rows {
        let mut rows = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let mut row = Vec::new();
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (iy, ix) = ((y + ky) as isize - 1, (x + kx) as isize - 1);
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            row.push((iy as usize * w + ix as usize, 1.0 + (ky * 3 + kx) as f64));
                        }
                    }
                }
                rows.push(row);
            }
        }
        rows
    }

    #[test]
    fn a_convolution_in_place_has_one_diagonal_per_kernel_tap() {
        let slots = 4096;
        let input = Layout::image(1, 6, 6, slots).unwrap_or_else(|| panic!("fits"));
        let geometry = Geometry::Window { stride: [1, 1], padding: [1, 1], output: [1, 6, 6] };
        let outputs = geometry.grid_outputs(input.grid.as_ref().unwrap_or_else(|| panic!("grid")), slots);
        let rows = conv_rows(6, 6);
        let bias = vec![0.0; 36];
        let request = LinearRequest { rows: &rows, bias: &bias, slots, costs: costs(), pool: false };
        let (stage, _) = best(&request, &input, outputs).unwrap_or_else(|| panic!("a stage"));
        assert_eq!(stage.entries.len(), 9, "{:?}", stage.entries.keys().collect::<Vec<_>>());
        // Every weight is placed exactly once.
        assert_eq!(stage.entries.values().map(Vec::len).sum::<usize>(), rows.iter().map(Vec::len).sum::<usize>());
        // A dense output needs far more diagonals.
        let (dense, _) = plan(&request, &input, Layout::dense(36, slots));
        assert!(dense.entries.len() > 9);
    }

    #[test]
    fn diagonals_are_kept_per_pair_of_ciphertexts() {
        // The identity from a layout over two ciphertexts onto the same layout: one diagonal
        // (0) for each ciphertext with itself, none across.
        let slots = 64;
        let layout = Layout::dense(100, slots);
        assert_eq!(layout.cts, 2);
        let rows: Rows = (0..100).map(|e| vec![(e, 1.0)]).collect();
        let bias = vec![0.0; 100];
        let request = LinearRequest { rows: &rows, bias: &bias, slots, costs: costs(), pool: false };
        let (stage, _) = plan(&request, &layout, layout.clone());
        assert_eq!(stage.entries.keys().copied().collect::<Vec<_>>(), vec![(0, 0, 0), (1, 1, 0)]);
        // Swapping the two halves: element e moves to the other ciphertext.
        let rows: Rows = (0..100).map(|e| vec![((e + 50) % 100, 1.0)]).collect();
        let request = LinearRequest { rows: &rows, ..request };
        let (stage, _) = plan(&request, &layout, layout.clone());
        assert!(stage.entries.keys().any(|&(o, i, _)| o != i));
    }

    #[test]
    fn a_pool_in_place_runs_unmasked_and_a_pool_on_a_dense_layout_does_not() {
        let slots = 4096;
        let input = Layout::image(2, 4, 4, slots).unwrap_or_else(|| panic!("fits"));
        let rows = crate::lower::pool_rows(
            [2, 2],
            [2, 2],
            blindfold_nn::Shape::Image { channels: 2, height: 4, width: 4 },
            blindfold_nn::Shape::Image { channels: 2, height: 2, width: 2 },
        );
        let bias = vec![0.0; rows.len()];
        let request = LinearRequest { rows: &rows, bias: &bias, slots, costs: costs(), pool: true };
        let grid = input.grid.clone().unwrap_or_else(|| panic!("grid"));
        let geometry = Geometry::Window { stride: [2, 2], padding: [0, 0], output: [2, 2, 2] };
        let (stage, _) = best(&request, &input, geometry.grid_outputs(&grid, slots)).unwrap_or_else(|| panic!("stage"));
        assert!(stage.unmasked && stage.entries.len() == 4, "{:?}", stage.entries.keys().collect::<Vec<_>>());
        let (dense, _) = plan(&request, &Layout::dense(32, slots), Layout::dense(8, slots));
        assert!(!dense.unmasked);
    }
}
