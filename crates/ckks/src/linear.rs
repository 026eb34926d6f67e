//! Linear maps with plaintext weights over many ciphertexts: the multiply-accumulate engine of
//! the throughput packing, where every convolution and dense layer is a sparse matrix of real
//! weights applied to a vector of ciphertexts (one per input value).
//!
//! Weights are reduced to residues once per map ([`LinearMap::new`]) and stored per *block*:
//! up to eight consecutive rows with the same columns (a convolution's output channels at one
//! position), transposed so one term's weights for every row of the block are adjacent. The
//! product runs per (part, prime) over tiles of coefficients sized so every input's tile stays
//! in L2 while all blocks of the range pass over it; within a tile, the kernel holds one chunk
//! of 16 coefficients of every row of a block in registers for all of the block's terms, so
//! each term costs one input load and one broadcast weight per row, and nothing is stored
//! until the chunk is done. Products are summed lazily in 64-bit words and reduced only when
//! the next product could overflow: weights are stored as centred residues, so a signed
//! product is far below q² (every 64 or more terms for 29-bit primes, 8 or more for a 31-bit
//! one, depending on the largest weight).
//! The AVX-512 kernel is written with intrinsics; other CPUs get a portable version of the
//! same loop.

use rayon::prelude::*;

use crate::ciphertext::Ciphertext;
use crate::context::Context;
use crate::eval::Evaluator;
use crate::poly::RnsPoly;
use crate::{Error, Result};

/// Bytes of input tiles one unit of work aims to keep in a core's L2 cache (2 MB here), so the
/// row blocks of a range reuse each input tile from L2 instead of memory.
const L2_BUDGET: usize = 1 << 20;

/// Rows accumulated together in registers: one term's input chunk is loaded once and multiplied
/// by up to this many weights.
const MAX_BLOCK: usize = 8;

/// A sparse real matrix (rows = outputs) with a bias per output, prepared for ciphertexts at
/// one level: each weight is rounded to an integer at `weight_scale` and reduced per prime.
#[derive(Debug, Clone)]
pub struct LinearMap {
    inputs: usize,
    outputs: usize,
    level: usize,
    weight_scale: f64,
    nonzeros: usize,
    /// Runs of at most MAX_BLOCK consecutive rows with the same columns (a convolution's output
    /// channels at one position, or a slice of a dense layer), in row order.
    blocks: Vec<RowBlock>,
    /// The columns of every block, one after the other.
    columns: Vec<u32>,
    /// weights[limb]: each block's weights term-major ([term][row]), at its `weights` offset,
    /// as centred residues in (−q/2, q/2): real weights are small against the primes, so
    /// signed products leave room for many lazy sums.
    weights: Vec<Vec<i64>>,
    /// lazy[limb]: how many products can be summed in an i64 before a reduction.
    lazy: Vec<usize>,
    bias: Vec<f64>,
}

/// Consecutive rows sharing their columns, computed together.
#[derive(Debug, Clone)]
struct RowBlock {
    rows: std::ops::Range<usize>,
    columns: std::ops::Range<usize>,
    weights: usize,
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
        let mut encoded: Vec<Vec<(u32, i64)>> = Vec::with_capacity(rows.len());
        for row in rows {
            let mut terms = Vec::with_capacity(row.len());
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
                terms.push((input as u32, value as i64));
            }
            encoded.push(terms);
        }
        // Rows with the same columns are adjacent in the maps the compiler builds (a
        // convolution's channels at one position); each run is cut into blocks of MAX_BLOCK.
        let mut blocks: Vec<RowBlock> = Vec::new();
        let mut columns: Vec<u32> = Vec::new();
        let mut scaled: Vec<i64> = Vec::new();
        let mut row = 0;
        while row < encoded.len() {
            let shared: Vec<u32> = encoded[row].iter().map(|&(c, _)| c).collect();
            let mut end = row + 1;
            while end < encoded.len()
                && end - row < MAX_BLOCK
                && encoded[end].len() == shared.len()
                && encoded[end].iter().zip(&shared).all(|(&(c, _), &s)| c == s)
            {
                end += 1;
            }
            let first_column = columns.len();
            let weights = scaled.len();
            for (term, &column) in shared.iter().enumerate() {
                // A term that is zero in every row of the block costs nothing.
                if encoded[row..end].iter().any(|terms| terms[term].1 != 0) {
                    columns.push(column);
                    scaled.extend(encoded[row..end].iter().map(|terms| terms[term].1));
                }
            }
            blocks.push(RowBlock { rows: row..end, columns: first_column..columns.len(), weights });
            row = end;
        }
        let weights: Vec<Vec<i64>> = (0..=level)
            .map(|l| {
                let m = &context.moduli[l];
                scaled.iter().map(|&v| m.center(m.reduce_i64(v))).collect()
            })
            .collect();
        let lazy = weights
            .iter()
            .zip(&context.moduli)
            .map(|(limb, m)| {
                // |sum| stays below 2^63 with a reduced start (< q) and products below (q−1)·max|w|.
                let largest = limb.iter().map(|w| w.unsigned_abs()).max().unwrap_or(0).max(1) as u128;
                ((i64::MAX as u64 - m.value) as u128 / ((m.value - 1) as u128 * largest)).min(1 << 20) as usize
            })
            .collect();
        let nonzeros = encoded.iter().flatten().filter(|(_, value)| *value != 0).count();
        Ok(Self { inputs, outputs: rows.len(), level, weight_scale, nonzeros, blocks, columns, weights, lazy, bias })
    }

    /// Number of outputs.
    pub fn outputs(&self) -> usize {
        self.outputs
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
        self.nonzeros
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
        let mut outputs = Vec::new();
        self.apply_linear_rows_into(map, inputs, rows, &mut outputs)?;
        Ok(outputs)
    }

    /// [`Evaluator::apply_linear_rows`] into `outputs`, reusing the memory of the ciphertexts
    /// already there (resized to `rows.len()`, each overwritten whole). A caller streaming a
    /// layer through the same buffers never pays for fresh, zeroed allocations.
    pub fn apply_linear_rows_into(
        &self,
        map: &LinearMap,
        inputs: &[&Ciphertext],
        rows: std::ops::Range<usize>,
        outputs: &mut Vec<Ciphertext>,
    ) -> Result<()> {
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
        let (n, limbs) = (ctx.n, level + 1);
        let out_scale = scale * map.weight_scale;
        let results = outputs;
        results.truncate(rows.len());
        for result in results.iter_mut() {
            result.reshape(n, parts, level, out_scale);
        }
        results.resize_with(rows.len(), || Ciphertext {
            parts: (0..parts).map(|_| RnsPoly::zero(n, limbs)).collect(),
            level,
            scale: out_scale,
        });
        // One unit of work per (part, prime): the rows it writes in every output.
        let mut units: Vec<Vec<&mut [u64]>> = (0..parts * limbs).map(|_| Vec::with_capacity(rows.len())).collect();
        for result in results.iter_mut() {
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
        let blocks: Vec<&RowBlock> =
            map.blocks.iter().filter(|b| b.rows.start < range.end && b.rows.end > range.start).collect();
        // The distinct inputs the range reads decide how many coefficients a tile can hold.
        let mut read = vec![false; map.inputs];
        for block in &blocks {
            for &column in &map.columns[block.columns.clone()] {
                read[column as usize] = true;
            }
        }
        let distinct = read.iter().filter(|&&r| r).count().max(1);
        let tile = largest_power_of_two_at_most(L2_BUDGET / (8 * distinct)).max(64).min(n);
        units.into_par_iter().enumerate().for_each(|(unit, mut outputs)| {
            let (p, l) = (unit / limbs, unit % limbs);
            let work = Unit {
                map,
                blocks: &blocks,
                range: range.clone(),
                weights: &map.weights[l],
                lazy: map.lazy[l],
                modulus: &ctx.moduli[l],
                sources: inputs.iter().map(|x| x.parts[p].limb(l)).collect(),
                bias: (p == 0).then(|| &bias_residues[l][..]),
                n,
                tile,
            };
            multiply_accumulate(&work, &mut outputs);
        });
        Ok(())
    }
}

fn largest_power_of_two_at_most(x: usize) -> usize {
    if x == 0 { 1 } else { 1 << x.ilog2() }
}

/// One (part, prime) of a linear map over a range of rows: what the kernels read.
struct Unit<'a> {
    map: &'a LinearMap,
    /// The blocks with a row in `range`.
    blocks: &'a [&'a RowBlock],
    range: std::ops::Range<usize>,
    /// The map's weights modulo this prime, centred.
    weights: &'a [i64],
    /// Products summed between reductions on this prime.
    lazy: usize,
    modulus: &'a crate::arith::Modulus,
    /// This part and prime of every input.
    sources: Vec<&'a [u64]>,
    /// Bias residues of the rows in `range` (part 0 only).
    bias: Option<&'a [u64]>,
    n: usize,
    /// Coefficients per tile: every block of the range runs over one tile before the next, so
    /// the tile of each input is read from memory once.
    tile: usize,
}

impl Unit<'_> {
    /// The output index of `row`, if it is in the range.
    fn output(&self, row: usize) -> Option<usize> {
        self.range.contains(&row).then(|| row - self.range.start)
    }
}

/// Output row r − range.start = Σ weight · input row (+ bias) for every row r of the range.
#[allow(unsafe_code)]
fn multiply_accumulate(unit: &Unit<'_>, outputs: &mut [&mut [u64]]) {
    let (q, lazy) = (unit.modulus.value, unit.lazy);
    // The vector kernels multiply 32-bit signed lanes: residues must be positive as i32.
    if lazy < 2 || q >= 1 << 31 || !unit.n.is_multiple_of(16) {
        return multiply_accumulate_scalar(unit, outputs);
    }
    #[cfg(target_arch = "x86_64")]
    if !portable_only() {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
            // SAFETY: the CPU supports AVX-512F and AVX-512DQ, checked just above.
            return unsafe { multiply_accumulate_avx512(unit, outputs, lazy) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { multiply_accumulate_avx2(unit, outputs, lazy) };
        }
    }
    multiply_accumulate_vector::<8>(unit, outputs, lazy)
}

/// Whether this crate's tests forced the portable kernel (so they can check it against the
/// vector one on a machine that has AVX-512).
#[cfg(not(test))]
fn portable_only() -> bool {
    false
}

#[cfg(test)]
fn portable_only() -> bool {
    tests::PORTABLE.load(std::sync::atomic::Ordering::Relaxed)
}

/// 16 coefficients per chunk in two zmm registers per row: 8 rows take 16 of AVX-512's 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn multiply_accumulate_avx512(unit: &Unit<'_>, outputs: &mut [&mut [u64]], lazy: usize) {
    for tile_start in (0..unit.n).step_by(unit.tile) {
        let tile = tile_start..(tile_start + unit.tile).min(unit.n);
        for block in unit.blocks {
            let run = Chunks { unit, block, init: block_bias(unit, block), tile: tile.clone(), lazy };
            match block.rows.len() {
                1 => avx512::accumulate::<1>(&run, outputs),
                2 => avx512::accumulate::<2>(&run, outputs),
                3 => avx512::accumulate::<3>(&run, outputs),
                4 => avx512::accumulate::<4>(&run, outputs),
                5 => avx512::accumulate::<5>(&run, outputs),
                6 => avx512::accumulate::<6>(&run, outputs),
                7 => avx512::accumulate::<7>(&run, outputs),
                _ => avx512::accumulate::<8>(&run, outputs),
            }
        }
    }
}

/// The AVX-512 block kernel, written with intrinsics: the compiler does not keep a generic
/// accumulator array in registers by itself.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Chunks;

    /// Coefficients per chunk.
    const C: usize = 16;
    const PREFETCH: usize = 2;

    /// v mod q in [0, q) for signed 64-bit lanes, q < 2^31 (see `reduce_signed`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn reduce(v: __m512i, q: __m512i, inverse: __m512d) -> __m512i {
        let shift = _mm512_set1_pd(super::ROUNDING_SHIFT);
        let rounded = _mm512_add_pd(_mm512_mul_pd(_mm512_cvtepi64_pd(v), inverse), shift);
        let estimate = _mm512_sub_epi64(_mm512_castpd_si512(rounded), _mm512_castpd_si512(shift));
        let r = _mm512_sub_epi64(v, _mm512_mullo_epi64(estimate, q));
        let r = _mm512_min_epu64(r, _mm512_add_epi64(r, q));
        _mm512_min_epu64(r, _mm512_sub_epi64(r, q))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) fn accumulate<const R: usize>(run: &Chunks<'_>, outputs: &mut [&mut [u64]]) {
        let unit = run.unit;
        let modulus = unit.modulus.value;
        let q = _mm512_set1_epi64(modulus as i64);
        let inverse = _mm512_set1_pd(1.0 / modulus as f64);
        let columns = &unit.map.columns[run.block.columns.clone()];
        let weights = &unit.weights[run.block.weights..run.block.weights + R * columns.len()];
        for offset in run.tile.clone().step_by(C) {
            let mut acc = [[_mm512_setzero_si512(); 2]; R];
            for (row, &init) in acc.iter_mut().zip(&run.init) {
                *row = [_mm512_set1_epi64(init as i64); 2];
            }
            let mut pending = 0;
            for (&column, w) in columns.iter().zip(weights.chunks_exact(R)) {
                let Some(x) = unit.sources[column as usize].get(offset..).and_then(|s| s.first_chunk::<C>()) else {
                    continue;
                };
                // SAFETY: `x` is 16 initialised u64s; unaligned loads.
                let (x0, x1) =
                    unsafe { (_mm512_loadu_epi64(x.as_ptr().cast()), _mm512_loadu_epi64(x.as_ptr().add(8).cast())) };
                if PREFETCH > 0 {
                    let ahead = x.as_ptr().wrapping_add(PREFETCH * C);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(8).cast());
                }
                for (row, &w) in acc.iter_mut().zip(w) {
                    let w = _mm512_set1_epi64(w);
                    row[0] = _mm512_add_epi64(row[0], _mm512_mul_epi32(x0, w));
                    row[1] = _mm512_add_epi64(row[1], _mm512_mul_epi32(x1, w));
                }
                pending += 1;
                if pending == run.lazy {
                    for row in acc.iter_mut() {
                        row[0] = reduce(row[0], q, inverse);
                        row[1] = reduce(row[1], q, inverse);
                    }
                    pending = 0;
                }
            }
            for (row, acc) in run.block.rows.clone().zip(&acc) {
                let Some(i) = unit.output(row) else { continue };
                let Some(out) = outputs[i].get_mut(offset..).and_then(|s| s.first_chunk_mut::<C>()) else {
                    continue;
                };
                let (low, high) = (reduce(acc[0], q, inverse), reduce(acc[1], q, inverse));
                // SAFETY: `out` is 16 u64s; unaligned stores.
                unsafe {
                    _mm512_storeu_epi64(out.as_mut_ptr().cast(), low);
                    _mm512_storeu_epi64(out.as_mut_ptr().add(8).cast(), high);
                }
            }
        }
    }
}

/// 8 coefficients per chunk: 8 rows × 2 ymm accumulators in AVX2's 16 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn multiply_accumulate_avx2(unit: &Unit<'_>, outputs: &mut [&mut [u64]], lazy: usize) {
    multiply_accumulate_vector::<8>(unit, outputs, lazy)
}

/// Tiles, then blocks, then chunks of C coefficients whose accumulators (one per row of the
/// block) live in registers for all of the block's terms: each term loads one input chunk and
/// one weight per row, and nothing is stored until the chunk is done. Residues are below 2^32,
/// so each product is one 32×32→64 multiply (vpmuludq).
#[inline(always)]
fn multiply_accumulate_vector<const C: usize>(unit: &Unit<'_>, outputs: &mut [&mut [u64]], lazy: usize) {
    for tile_start in (0..unit.n).step_by(unit.tile) {
        let tile = tile_start..(tile_start + unit.tile).min(unit.n);
        for block in unit.blocks {
            let run = Chunks { unit, block, init: block_bias(unit, block), tile: tile.clone(), lazy };
            match block.rows.len() {
                1 => run.accumulate::<1, C>(outputs),
                2 => run.accumulate::<2, C>(outputs),
                3 => run.accumulate::<3, C>(outputs),
                4 => run.accumulate::<4, C>(outputs),
                5 => run.accumulate::<5, C>(outputs),
                6 => run.accumulate::<6, C>(outputs),
                7 => run.accumulate::<7, C>(outputs),
                _ => run.accumulate::<8, C>(outputs),
            }
        }
    }
}

/// The bias residue of each row of `block` (zero outside the range or past part 0).
fn block_bias(unit: &Unit<'_>, block: &RowBlock) -> [u64; MAX_BLOCK] {
    let mut init = [0u64; MAX_BLOCK];
    if let Some(bias) = unit.bias {
        for (slot, row) in block.rows.clone().enumerate() {
            if let Some(i) = unit.output(row) {
                init[slot] = bias[i];
            }
        }
    }
    init
}

/// One block over one tile.
struct Chunks<'a> {
    unit: &'a Unit<'a>,
    block: &'a RowBlock,
    init: [u64; MAX_BLOCK],
    tile: std::ops::Range<usize>,
    lazy: usize,
}

impl Chunks<'_> {
    #[inline(always)]
    fn accumulate<const R: usize, const C: usize>(&self, outputs: &mut [&mut [u64]]) {
        let unit = self.unit;
        let q = unit.modulus.value;
        let columns = &unit.map.columns[self.block.columns.clone()];
        let weights = &unit.weights[self.block.weights..self.block.weights + R * columns.len()];
        for offset in self.tile.clone().step_by(C) {
            let mut acc = [[0i64; C]; R];
            for (row, &init) in acc.iter_mut().zip(&self.init) {
                *row = [init as i64; C];
            }
            let mut pending = 0;
            for (&column, w) in columns.iter().zip(weights.chunks_exact(R)) {
                let Some(x) = unit.sources[column as usize].get(offset..).and_then(|s| s.first_chunk::<C>()) else {
                    continue;
                };
                let Some(w) = w.first_chunk::<R>() else { continue };
                // Constant trip counts: fully unrolled, the accumulators stay in registers.
                for r in 0..R {
                    let w = w[r] as i32 as i64;
                    for v in 0..C {
                        acc[r][v] = acc[r][v].wrapping_add((x[v] as i32 as i64) * w);
                    }
                }
                pending += 1;
                if pending == self.lazy {
                    for row in acc.iter_mut() {
                        row.iter_mut().for_each(|v| *v = reduce_signed(*v, q) as i64);
                    }
                    pending = 0;
                }
            }
            for (row, acc) in self.block.rows.clone().zip(&acc) {
                if let Some(i) = unit.output(row) {
                    for (out, &v) in outputs[i][offset..offset + C].iter_mut().zip(acc) {
                        *out = reduce_signed(v, q);
                    }
                }
            }
        }
    }
}

/// The kernel for primes whose products leave no room for lazy sums (over 31 bits): one
/// reduction per product. Only test and benchmark presets have such primes.
fn multiply_accumulate_scalar(unit: &Unit<'_>, outputs: &mut [&mut [u64]]) {
    let m = unit.modulus;
    for block in unit.blocks {
        let columns = &unit.map.columns[block.columns.clone()];
        let count = block.rows.len();
        for (slot, row) in block.rows.clone().enumerate() {
            let Some(i) = unit.output(row) else { continue };
            let out = &mut *outputs[i];
            out.fill(unit.bias.map_or(0, |b| b[i]));
            for (term, &column) in columns.iter().enumerate() {
                let w = m.reduce_i64(unit.weights[block.weights + term * count + slot]);
                let x = unit.sources[column as usize];
                out.iter_mut().zip(x).for_each(|(a, &xi)| *a = m.add(*a, m.mul(xi, w)));
            }
        }
    }
}

/// 1.5 · 2^52: added to an f64 of magnitude below 2^51, it leaves that value rounded to an
/// integer in the low mantissa bits, two's complement, read back by an integer subtraction
/// (a vectorizable f64 → i64 conversion).
const ROUNDING_SHIFT: f64 = 6_755_399_441_055_744.0;

/// A lazily accumulated signed word reduced into [0, q), for 2^14 < q < 2^31: the quotient
/// is estimated in f64 (within one), and two branch-free steps finish.
#[inline(always)]
fn reduce_signed(v: i64, q: u64) -> u64 {
    let estimate =
        ((v as f64) * (1.0 / q as f64) + ROUNDING_SHIFT).to_bits().wrapping_sub(ROUNDING_SHIFT.to_bits()) as i64;
    let r = v.wrapping_sub(estimate.wrapping_mul(q as i64)) as u64;
    // r is in (−q, q) as a two's-complement word.
    let r = r.min(r.wrapping_add(q));
    r.min(r.wrapping_sub(q))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyGenerator, ParametersBuilder, SecretKeyEncryptor};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Forces the portable kernel. Both kernels are exact, so other tests running meanwhile
    /// get the same results whichever they use.
    pub(super) static PORTABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    #[test]
    fn portable_and_vector_kernels_agree_on_every_block_size() {
        let params = ParametersBuilder::new(10)
            .ciphertext_bits(&[30, 29, 29])
            .special_bits(&[40])
            .log_scale(28)
            .build_insecure_for_tests()
            .unwrap();
        let context = Context::new(params).unwrap();
        let keys = KeyGenerator::new(&context);
        let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone()).unwrap();
        let evaluator = Evaluator::new(&context);
        let mut rng = StdRng::seed_from_u64(7);
        let level = context.max_level();
        let inputs: Vec<Ciphertext> = (0..30)
            .map(|k| {
                let values: Vec<f64> = (0..16).map(|i| ((k * 16 + i) % 7) as f64 / 7.0).collect();
                encryptor.encrypt(&context.encode(&values, level, 2f64.powi(28)).unwrap()).unwrap()
            })
            .collect();
        // Runs of 1..=9 rows sharing their columns (a run of 9 is cut into 8 + 1), with 1..=90
        // terms: 90 passes the 30-bit prime's lazy limit several times.
        let mut rows: Vec<Vec<(usize, f64)>> = Vec::new();
        for run in 1..=9 {
            let terms = [1, 17, 90][run % 3];
            let columns: Vec<usize> = (0..terms).map(|t| (t * 7 + run) % inputs.len()).collect();
            for _ in 0..run {
                rows.push(columns.iter().map(|&c| (c, rng.random_range(-1.0..1.0))).collect());
            }
        }
        let bias: Vec<f64> = (0..rows.len()).map(|_| rng.random_range(-1.0..1.0)).collect();
        let map = LinearMap::new(&context, inputs.len(), &rows, bias, level, 2f64.powi(20)).unwrap();
        let refs: Vec<&Ciphertext> = inputs.iter().collect();
        let vector = evaluator.apply_linear(&map, &refs).unwrap();
        PORTABLE.store(true, std::sync::atomic::Ordering::Relaxed);
        let portable = evaluator.apply_linear(&map, &refs);
        PORTABLE.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(portable.unwrap(), vector);
        // A range that starts and ends inside blocks gives the same rows.
        let mut reused = vector[..2].to_vec();
        evaluator.apply_linear_rows_into(&map, &refs, 3..17, &mut reused).unwrap();
        assert_eq!(reused, vector[3..17]);
    }

    proptest! {
        #[test]
        fn signed_reduction_is_exact(values in proptest::collection::vec(any::<i64>(), 1..64), k in 0usize..4) {
            let q = [536_813_569u64, 1_073_692_673, 268_369_921, 2_147_352_577][k];
            let extremes = [i64::MAX, i64::MAX - 1, i64::MIN + 1, 0, -1, 1, q as i64 - 1, q as i64, -(q as i64)];
            for &v in values.iter().chain(&extremes) {
                prop_assert_eq!(reduce_signed(v, q) as i128, (v as i128).rem_euclid(q as i128));
            }
        }
    }
}
