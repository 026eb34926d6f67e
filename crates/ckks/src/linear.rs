//! Linear maps with plaintext weights over many ciphertexts: the multiply-accumulate engine of
//! the throughput packing, where every convolution and dense layer is a sparse matrix of real
//! weights applied to a vector of ciphertexts (one per input value).
//!
//! Weights are reduced to residues once per map ([`LinearMap::new`]). The product runs per
//! (part, prime) over tiles of coefficients, so one tile of every input stays in cache while
//! all outputs accumulate; products are summed lazily in 64-bit words and reduced only when
//! the next product could overflow (every 16 terms for 30-bit primes), and the inner loop is
//! compiled for the CPU's widest vector unit at run time.

use rayon::prelude::*;

use crate::ciphertext::Ciphertext;
use crate::context::Context;
use crate::eval::Evaluator;
use crate::poly::RnsPoly;
use crate::{Error, Result};

/// Coefficients per tile: one tile of a few hundred inputs fits in a core's L2 cache.
const TILE: usize = 1024;

/// A sparse real matrix (rows = outputs) with a bias per output, prepared for ciphertexts at
/// one level: each weight is rounded to an integer at `weight_scale` and reduced per prime.
#[derive(Debug, Clone)]
pub struct LinearMap {
    inputs: usize,
    level: usize,
    weight_scale: f64,
    row_start: Vec<usize>,
    columns: Vec<u32>,
    /// residues[limb][entry]
    residues: Vec<Vec<u64>>,
    bias: Vec<f64>,
    /// Runs of consecutive rows with the same columns (a convolution's output channels at one
    /// position, or a whole dense layer): their inputs are loaded once for several rows.
    groups: Vec<std::ops::Range<usize>>,
}

impl LinearMap {
    /// Prepares `rows` (for each output, its (input index, weight) terms) and `bias` for inputs
    /// at `level`; weights are encoded as round(w · weight_scale).
    pub fn new(
        context: &Context,
        inputs: usize,
        rows: &[Vec<(usize, f64)>],
        bias: Vec<f64>,
        level: usize,
        weight_scale: f64,
    ) -> Result<Self> {
        context.check_level(level)?;
        if bias.len() != rows.len() {
            return Err(Error::InvalidParameter {
                name: "bias",
                reason: format!("{} biases for {} outputs", bias.len(), rows.len()),
            });
        }
        if !(weight_scale.is_finite() && weight_scale >= 1.0) {
            return Err(Error::InvalidParameter { name: "weight_scale", reason: format!("{weight_scale}") });
        }
        let limit = 2f64.powi(62);
        let mut row_start = Vec::with_capacity(rows.len() + 1);
        let mut columns = Vec::new();
        let mut scaled = Vec::new();
        row_start.push(0);
        for row in rows {
            for &(input, weight) in row {
                if input >= inputs {
                    return Err(Error::InvalidParameter {
                        name: "linear map",
                        reason: format!("input {input} of {inputs}"),
                    });
                }
                let value = (weight * weight_scale).round();
                if !value.is_finite() || value.abs() >= limit {
                    return Err(Error::Unencodable {
                        value: weight,
                        log_scale: weight_scale.log2(),
                        reason: "weight too large",
                    });
                }
                if value != 0.0 {
                    columns.push(input as u32);
                    scaled.push(value as i64);
                }
            }
            row_start.push(columns.len());
        }
        let residues = (0..=level).map(|l| scaled.iter().map(|&v| context.moduli[l].reduce_i64(v)).collect()).collect();
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        for row in 0..rows.len() {
            let same = groups.last().is_some_and(|g| {
                let cols = |r: usize| &columns[row_start[r]..row_start[r + 1]];
                cols(g.start) == cols(row)
            });
            match groups.last_mut() {
                Some(g) if same => g.end = row + 1,
                _ => groups.push(row..row + 1),
            }
        }
        Ok(Self { inputs, level, weight_scale, row_start, columns, residues, bias, groups })
    }

    /// Number of outputs.
    pub fn outputs(&self) -> usize {
        self.row_start.len() - 1
    }
    /// Number of inputs.
    pub fn inputs(&self) -> usize {
        self.inputs
    }
    /// The level the inputs must be at.
    pub fn level(&self) -> usize {
        self.level
    }
    /// The scale the weights were encoded at.
    pub fn weight_scale(&self) -> f64 {
        self.weight_scale
    }
    /// Number of non-zero weights.
    pub fn nonzeros(&self) -> usize {
        self.columns.len()
    }
}

impl Evaluator {
    /// y_o = Σ_k W[o][k]·x_k + bias_o for every output o. All inputs must share the map's
    /// level, one scale S and one size (2 or 3 parts); outputs have scale S · weight_scale and
    /// the same size, at the same level (rescale them next).
    pub fn apply_linear(&self, map: &LinearMap, inputs: &[&Ciphertext]) -> Result<Vec<Ciphertext>> {
        self.apply_linear_rows(map, inputs, 0..map.outputs())
    }

    /// [`Evaluator::apply_linear`] for the outputs in `rows` only (returned in order): lets a
    /// caller stream a large layer in pieces so its outputs are never all held at once.
    pub fn apply_linear_rows(
        &self,
        map: &LinearMap,
        inputs: &[&Ciphertext],
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<Ciphertext>> {
        let ctx = self.context();
        if rows.start > rows.end || rows.end > map.outputs() {
            return Err(Error::InvalidParameter {
                name: "rows",
                reason: format!("{rows:?} of a map with {} outputs", map.outputs()),
            });
        }
        if inputs.len() != map.inputs {
            return Err(Error::InvalidParameter {
                name: "inputs",
                reason: format!("{} ciphertexts for a map of {}", inputs.len(), map.inputs),
            });
        }
        let first = inputs.first().ok_or(Error::InvalidParameter { name: "inputs", reason: "none".into() })?;
        let (scale, parts, level) = (first.scale, first.parts.len(), first.level);
        if level != map.level {
            return Err(Error::LevelMismatch { left: level, right: map.level });
        }
        for x in inputs {
            if x.level != level {
                return Err(Error::LevelMismatch { left: x.level, right: level });
            }
            if x.parts.len() != parts {
                return Err(Error::WrongSize { expected: parts, found: x.parts.len() });
            }
            if ((x.scale - scale) / scale).abs() > 1e-9 {
                return Err(Error::ScaleMismatch { left: x.scale.log2(), right: scale.log2() });
            }
        }
        let (n, limbs, outputs) = (ctx.n, level + 1, rows.len());
        let out_scale = scale * map.weight_scale;
        let mut results: Vec<Ciphertext> = (0..outputs)
            .map(|_| Ciphertext { parts: vec![RnsPoly::zero(n, limbs); parts], level, scale: out_scale })
            .collect();
        // One unit of work per (part, prime): the rows it writes in every output.
        let mut units: Vec<Vec<&mut [u64]>> = (0..parts * limbs).map(|_| Vec::with_capacity(outputs)).collect();
        for result in &mut results {
            for (p, part) in result.parts.iter_mut().enumerate() {
                for (l, row) in part.limbs_mut().enumerate() {
                    units[p * limbs + l].push(row);
                }
            }
        }
        let bias_residues: Vec<Vec<u64>> = (0..limbs)
            .map(|l| {
                map.bias[rows.clone()]
                    .iter()
                    .map(|&b| ctx.moduli[l].reduce_i128((b * out_scale).round() as i128))
                    .collect()
            })
            .collect();
        let range = rows;
        units.into_par_iter().enumerate().for_each(|(unit, mut outputs)| {
            let (p, l) = (unit / limbs, unit % limbs);
            let m = &ctx.moduli[l];
            let sources: Vec<&[u64]> = inputs.iter().map(|x| x.parts[p].limb(l)).collect();
            let bias = (p == 0).then(|| &bias_residues[l][..]);
            multiply_accumulate(map, range.clone(), &map.residues[l], m, &sources, &mut outputs, bias, n);
        });
        Ok(results)
    }
}

/// Rows accumulated together while one input tile is in registers.
const ROW_BLOCK: usize = 4;

/// The kernel for one (part, prime): output row r − range.start = Σ weight · input row (+ bias
/// indexed the same way) for every row r in `range`.
#[allow(clippy::too_many_arguments)]
fn multiply_accumulate(
    map: &LinearMap,
    range: std::ops::Range<usize>,
    weights: &[u64],
    m: &crate::arith::Modulus,
    sources: &[&[u64]],
    outputs: &mut [&mut [u64]],
    bias: Option<&[u64]>,
    n: usize,
) {
    let q = m.value;
    // How many products of two residues fit in a u64 on top of a reduced value.
    let lazy = ((u64::MAX - q) as u128 / ((q - 1) as u128 * (q - 1) as u128)).max(1) as usize;
    let mut acc = vec![0u64; ROW_BLOCK * TILE];
    debug_assert!(lazy < 2 || q < 1 << 32, "the vector reduction needs q < 2^32");
    for start in (0..n).step_by(TILE) {
        let end = (start + TILE).min(n);
        let width = end - start;
        let groups = map.groups.iter().filter_map(|g| {
            let clipped = g.start.max(range.start)..g.end.min(range.end);
            (!clipped.is_empty()).then_some(clipped)
        });
        for group in groups {
            for block_start in group.clone().step_by(ROW_BLOCK) {
                let rows = block_start..(block_start + ROW_BLOCK).min(group.end);
                let count = rows.len();
                for (slot, row) in rows.clone().enumerate() {
                    acc[slot * TILE..slot * TILE + width].fill(bias.map_or(0, |b| b[row - range.start]));
                }
                let first = map.row_start[block_start];
                let terms = map.row_start[block_start + 1] - first;
                let mut pending = 0;
                for term in 0..terms {
                    let x = &sources[map.columns[first + term] as usize][start..end];
                    let mut w = [0u64; ROW_BLOCK];
                    for (slot, row) in rows.clone().enumerate() {
                        w[slot] = weights[map.row_start[row] + term];
                    }
                    if lazy >= 2 {
                        mac_block(&mut acc, x, &w, count);
                        pending += 1;
                        if pending == lazy {
                            reduce_block(&mut acc[..count * TILE], q);
                            pending = 0;
                        }
                    } else {
                        for slot in 0..count {
                            let a = &mut acc[slot * TILE..slot * TILE + width];
                            a.iter_mut().zip(x).for_each(|(a, &xi)| *a = m.add(*a, m.mul(xi, w[slot])));
                        }
                    }
                }
                if lazy >= 2 {
                    reduce_block(&mut acc[..count * TILE], q);
                }
                for (slot, row) in rows.enumerate() {
                    outputs[row - range.start][start..end].copy_from_slice(&acc[slot * TILE..slot * TILE + width]);
                }
            }
        }
    }
}

/// Reduces lazily accumulated words (any u64) modulo q < 2^32, vectorized: the quotient is
/// estimated in f64 (off by at most one for q < 2^32) and corrected with two branch-free steps.
#[inline]
#[allow(unsafe_code)]
fn reduce_block(values: &mut [u64], q: u64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
            // SAFETY: the CPU supports AVX-512F and AVX-512DQ, checked just above.
            return unsafe { reduce_block_avx512(values, q) };
        }
    }
    reduce_block_portable(values, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn reduce_block_avx512(values: &mut [u64], q: u64) {
    reduce_block_portable(values, q)
}

#[inline(always)]
fn reduce_block_portable(values: &mut [u64], q: u64) {
    let inverse = 1.0 / q as f64;
    for v in values.iter_mut() {
        let estimate = (*v as f64 * inverse) as u64;
        let r = v.wrapping_sub(estimate.wrapping_mul(q));
        // r is in [-q, 2q) as a two's-complement word.
        let r = r.min(r.wrapping_add(q));
        *v = r.min(r.wrapping_sub(q));
    }
}

/// acc[r] += x · w[r] for the first `count` rows, without reduction, compiled for the widest
/// vector unit the CPU has.
#[inline]
#[allow(unsafe_code)]
fn mac_block(acc: &mut [u64], x: &[u64], w: &[u64; ROW_BLOCK], count: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { mac_block_avx512(acc, x, w, count) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { mac_block_avx2(acc, x, w, count) };
        }
    }
    mac_block_portable(acc, x, w, count)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn mac_block_avx512(acc: &mut [u64], x: &[u64], w: &[u64; ROW_BLOCK], count: usize) {
    mac_block_portable(acc, x, w, count)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn mac_block_avx2(acc: &mut [u64], x: &[u64], w: &[u64; ROW_BLOCK], count: usize) {
    mac_block_portable(acc, x, w, count)
}

/// The loop itself, inlined into each target-feature wrapper so each gets its own vector code.
/// Residues are below 2^32 on this path, so a 32×32→64 multiply (vpmuludq) is exact and
/// cheaper than a full 64-bit one.
#[inline(always)]
fn mac_block_portable(acc: &mut [u64], x: &[u64], w: &[u64; ROW_BLOCK], count: usize) {
    let width = x.len();
    let (a0, rest) = acc.split_at_mut(TILE);
    let (a1, rest) = rest.split_at_mut(TILE);
    let (a2, a3) = rest.split_at_mut(TILE);
    let w: [u64; ROW_BLOCK] = w.map(|v| v as u32 as u64);
    if count == ROW_BLOCK {
        let rows = a0[..width].iter_mut().zip(&mut a1[..width]).zip(&mut a2[..width]).zip(&mut a3[..width]);
        for ((((a0, a1), a2), a3), &xi) in rows.zip(x) {
            let xi = xi as u32 as u64;
            *a0 = a0.wrapping_add(xi * w[0]);
            *a1 = a1.wrapping_add(xi * w[1]);
            *a2 = a2.wrapping_add(xi * w[2]);
            *a3 = a3.wrapping_add(xi * w[3]);
        }
    } else {
        for (slot, a) in [a0, a1, a2, a3].into_iter().enumerate().take(count) {
            for (a, &xi) in a[..width].iter_mut().zip(x) {
                *a = a.wrapping_add((xi as u32 as u64) * w[slot]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn vector_reduction_is_exact(values in proptest::collection::vec(any::<u64>(), 1..64), k in 0usize..3) {
            let q = [536_813_569u64, 1_073_692_673, 268_369_921][k];
            let mut reduced = values.clone();
            reduce_block(&mut reduced, q);
            let extremes = [u64::MAX, u64::MAX - 1, 0, q - 1, q, 2 * q, (u64::MAX / q) * q, (u64::MAX / q) * q - 1];
            let mut edge = extremes.to_vec();
            reduce_block(&mut edge, q);
            for (r, v) in reduced.iter().zip(&values).chain(edge.iter().zip(&extremes)) {
                prop_assert_eq!(*r, v % q);
            }
        }
    }
}
