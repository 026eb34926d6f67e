//! Polynomial activations of any degree: Chebyshev-basis evaluation by baby-step giant-step
//! Paterson–Stockmeyer, at the optimal depth ⌈log2(d + 1)⌉.
//!
//! A polynomial `p(t) = Σ c_k T_k(t)` on t ∈ [−1, 1] is split recursively as `p = q·T_n + r`
//! with `n = 2^(B−1)` (B the depth budget of `p`), using `T_n·T_j = (T_{n+j} + T_{|n−j|})/2`, until
//! the pieces are *leaves*: linear combinations `Σ c_i T_i` of low-degree powers ("babies"). A
//! leaf multiplies each power by its coefficient without rescaling (the coefficient is encoded
//! at the scale that makes every term's scale the same), and the multiplication by `T_n`
//! rescales the quotient first, as in Lattigo's evaluator: one rescale per level. A leaf is
//! placed at the level its pieces need; the leading part, which is multiplied by every giant
//! step, gets the smallest leaves, so no piece needs more levels than the budget. About 2√d
//! ciphertext products (babies up to 2^⌈B/2⌉, giants `T_2, T_4, …`) instead of d.
//!
//! The powers themselves: `T_{2k} = 2T_k² − 1` and `T_{a+b} = 2T_aT_b − T_{a−b}`. Their scales
//! stay near the primes (the input is first brought to a scale near q by an integer factor,
//! which costs no level), and `T_{a−b}`, always one level higher than the product, is matched
//! to the product's scale by an integer multiplication (relative error below 2^−28).

use std::collections::BTreeSet;

use blindfold_ckks::{Ciphertext, Evaluator, RelinKey};

use crate::{Error, Result};

/// A Chebyshev polynomial on [−1, 1], split for evaluation. Plain data; evaluates any
/// 2-part ciphertext holding values in [−1, 1].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChebyshevPlan {
    coefficients: Vec<f64>,
    depth: usize,
    tree: Piece,
    /// Every power T_i the pieces read (babies and giants), ascending.
    powers: Vec<usize>,
}

/// One piece of the split: a leaf `constant + Σ c_i T_i`, or `quotient·T_n + remainder`.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Leaf { terms: Vec<(usize, f64)>, constant: f64 },
    Split { n: usize, quotient: Box<Piece>, remainder: Box<Piece> },
}

/// ⌈log2(i)⌉ for i ≥ 1: the depth of T_i.
fn power_depth(i: usize) -> usize {
    (usize::BITS - (i.max(1) - 1).leading_zeros()) as usize
}

/// ⌈log2(d + 1)⌉: the depth of a polynomial of degree d.
pub(crate) fn depth_of_degree(d: usize) -> usize {
    power_depth(d + 1)
}

fn degree(c: &[f64]) -> usize {
    c.iter().rposition(|v| *v != 0.0).unwrap_or(0)
}

impl ChebyshevPlan {
    /// Splits `coefficients` (T_0 first). Degrees 0 and 1 are leaves of depth 0 and 1.
    pub(crate) fn new(coefficients: &[f64]) -> Self {
        let d = degree(coefficients);
        let coefficients = coefficients[..=d].to_vec();
        let depth = depth_of_degree(d);
        let babies = 1usize << depth.div_ceil(2);
        let tree = split(&coefficients, depth.saturating_sub(1), babies);
        let mut used = BTreeSet::new();
        tree.collect_powers(&mut used);
        // Every power a needed one is built from.
        let mut stack: Vec<usize> = used.iter().copied().collect();
        while let Some(i) = stack.pop() {
            for needed in prerequisites(i) {
                if used.insert(needed) {
                    stack.push(needed);
                }
            }
        }
        Self { coefficients, depth, tree, powers: used.into_iter().collect() }
    }

    /// Levels the evaluation consumes.
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// The degree.
    pub(crate) fn degree(&self) -> usize {
        self.coefficients.len() - 1
    }

    /// Ciphertext products (each followed by a relinearization): powers other than T_1, and
    /// one per split.
    pub(crate) fn products(&self) -> usize {
        self.powers.iter().filter(|&&i| i > 1).count() + self.tree.splits()
    }

    /// Scalar multiply-adds (one per leaf term).
    pub(crate) fn scalar_terms(&self) -> usize {
        self.tree.terms()
    }

    /// `Σ c_k T_k(t)` in f64, Clenshaw's recurrence: what the plan computes.
    #[cfg(test)]
    pub(crate) fn eval(&self, t: f64) -> f64 {
        let (mut b1, mut b2) = (0.0, 0.0);
        for &c in self.coefficients.iter().skip(1).rev() {
            (b1, b2) = (2.0 * t * b1 - b2 + c, b1);
        }
        t * b1 - b2 + self.coefficients[0]
    }

    /// Evaluates the polynomial on `input` (2-part, values in [−1, 1]) into a ciphertext
    /// `depth` levels lower at exactly `scale`.
    pub(crate) fn evaluate(
        &self,
        ev: &Evaluator,
        input: &Ciphertext,
        scale: f64,
        relin: &RelinKey,
    ) -> Result<Ciphertext> {
        let context = ev.context();
        let level_in = input.level();
        if self.depth == 0 {
            let mut out = ev.mul_scalar(input, 0.0, 1.0)?;
            out.set_scale(scale);
            return Ok(ev.add_scalar(&out, self.coefficients[0])?);
        }
        if level_in < self.depth + 1 {
            return Err(Error::Internal(format!(
                "a polynomial of depth {} evaluated at level {level_in} would end below level 1",
                self.depth
            )));
        }
        let q = |level: usize| context.params().moduli()[level] as f64;
        // T_1 at a scale just under the prime it will be rescaled by: an integer factor, no
        // level (floor, not round: `build_power` can raise a scale by an integer, not lower it).
        let factor = (q(level_in) / input.scale()).floor().max(1.0);
        let mut t1 = ev.mul_scalar(input, factor, 1.0)?;
        t1.set_scale(input.scale() * factor);
        let mut powers: Vec<Option<Ciphertext>> = vec![None; self.powers.last().copied().unwrap_or(1) + 1];
        powers[1] = Some(t1);
        for &i in &self.powers {
            if i > 1 {
                powers[i] = Some(build_power(ev, &powers, i, relin)?);
            }
        }
        let top = level_in - self.depth + 1;
        let result = self.tree.evaluate(ev, &powers, top, scale * q(top), relin)?;
        let mut result = result.ok_or_else(|| Error::Internal("a polynomial plan without terms".into()))?;
        if result.size() == 3 {
            ev.relinearize_assign(&mut result, relin)?;
        }
        ev.rescale_assign(&mut result)?;
        result.set_scale(scale);
        Ok(result)
    }
}

/// The powers T_i is built from.
fn prerequisites(i: usize) -> Vec<usize> {
    if i <= 1 {
        return Vec::new();
    }
    let a = 1 << (power_depth(i) - 1);
    let b = i - a;
    let mut needed = vec![a, b];
    if a > b && a - b >= 1 {
        needed.push(a - b);
    }
    needed.retain(|&k| k >= 1);
    needed
}

/// T_i = 2·T_a·T_b − T_{a−b} (T_0 = 1), relinearized and rescaled.
fn build_power(ev: &Evaluator, powers: &[Option<Ciphertext>], i: usize, relin: &RelinKey) -> Result<Ciphertext> {
    let get = |k: usize| powers[k].as_ref().ok_or_else(|| Error::Internal(format!("power T_{k} missing")));
    let a = 1 << (power_depth(i) - 1);
    let b = i - a;
    let (ta, tb) = (get(a)?, get(b)?);
    let level = ta.level().min(tb.level());
    let ta = ev.drop_to_level(ta, level)?;
    let tb = ev.drop_to_level(tb, level)?;
    let mut product = if a == b { ev.square(&ta)? } else { ev.mul(&ta, &tb)? };
    ev.relinearize_assign(&mut product, relin)?;
    // The factor 2, times the integer f that brings the product's scale just under q_level ·
    // q_{level−1}, so that after the rescale T_i's scale sits just under the next prime again.
    // Without f the scales drift as (s_1/q)^i: T_32 at 1.3× too large a scale left the leaves'
    // coefficients a few bits, and a degree-63 ReLU decrypted to noise.
    let q = |l: usize| ev.context().params().moduli()[l] as f64;
    let f = (q(level) * q(level.saturating_sub(1)) / product.scale()).floor().max(1.0);
    let mut product = ev.mul_scalar(&product, 2.0, f)?;
    let scale = product.scale();
    if a == b {
        product = ev.add_scalar(&product, -1.0)?;
    } else {
        // T_{a−b} is at least one level higher: drop it to the product's level and match the
        // product's scale with an integer factor (the ratio is near the prime, so rounding it
        // changes the value by less than 2^−28 of itself).
        let lower = get(a - b)?;
        let lower = ev.drop_to_level(lower, level)?;
        let factor = (scale / lower.scale()).round();
        if factor < 1.0 {
            return Err(Error::Internal(format!("power T_{i}: scales {scale} and {} do not match", lower.scale())));
        }
        let mut matched = ev.mul_scalar(&lower, factor, 1.0)?;
        matched.set_scale(scale);
        ev.sub_assign(&mut product, &matched)?;
    }
    ev.rescale_assign(&mut product)?;
    Ok(product)
}

/// Splits `c` to be evaluated at relative level `lambda` below the input (pre-rescale).
fn split(c: &[f64], lambda: usize, babies: usize) -> Piece {
    let d = degree(c);
    let leaf = || Piece::Leaf {
        terms: (1..=d).filter(|&i| c[i] != 0.0).map(|i| (i, c[i])).collect(),
        constant: c.first().copied().unwrap_or(0.0),
    };
    if d <= 1 || (d < babies && power_depth(d) <= lambda) {
        return leaf();
    }
    let n = 1 << (depth_of_degree(d) - 1);
    // p = q·T_n + r: q_{j} = 2 c_{n+j} (j ≥ 1), q_0 = c_n; r_{n−j} = c_{n−j} − c_{n+j}.
    let mut quotient = vec![0.0; d - n + 1];
    quotient[0] = c[n];
    for j in 1..=d - n {
        quotient[j] = 2.0 * c[n + j];
    }
    let mut remainder: Vec<f64> = c[..n].to_vec();
    for j in 1..=d - n {
        remainder[n - j] -= c[n + j];
    }
    let remainder = split(&remainder, lambda, babies);
    if degree(&quotient) == 0 {
        // c·T_n joins the remainder's leaf when it is one (T_n sits at depth ≤ lambda).
        if let Piece::Leaf { mut terms, constant } = remainder {
            terms.push((n, quotient[0]));
            return Piece::Leaf { terms, constant };
        }
    }
    Piece::Split { n, quotient: Box::new(split(&quotient, lambda - 1, babies)), remainder: Box::new(remainder) }
}

impl Piece {
    fn collect_powers(&self, used: &mut BTreeSet<usize>) {
        match self {
            Piece::Leaf { terms, .. } => used.extend(terms.iter().map(|(i, _)| *i)),
            Piece::Split { n, quotient, remainder } => {
                used.insert(*n);
                quotient.collect_powers(used);
                remainder.collect_powers(used);
            }
        }
    }

    fn splits(&self) -> usize {
        match self {
            Piece::Leaf { .. } => 0,
            Piece::Split { quotient, remainder, .. } => 1 + quotient.splits() + remainder.splits(),
        }
    }

    fn terms(&self) -> usize {
        match self {
            Piece::Leaf { terms, .. } => terms.len(),
            Piece::Split { quotient, remainder, .. } => quotient.terms() + remainder.terms(),
        }
    }

    /// The piece at `level` with scale `scale`, not yet rescaled (None: a constant only, which
    /// the caller adds).
    fn evaluate(
        &self,
        ev: &Evaluator,
        powers: &[Option<Ciphertext>],
        level: usize,
        scale: f64,
        relin: &RelinKey,
    ) -> Result<Option<Ciphertext>> {
        let get = |k: usize| powers[k].as_ref().ok_or_else(|| Error::Internal(format!("power T_{k} missing")));
        match self {
            Piece::Leaf { terms, constant } => {
                let mut sum: Option<Ciphertext> = None;
                for &(i, c) in terms {
                    let power = ev.drop_to_level(get(i)?, level)?;
                    let mut term = ev.mul_scalar(&power, c, scale / power.scale())?;
                    term.set_scale(scale);
                    match sum.as_mut() {
                        None => sum = Some(term),
                        Some(acc) => ev.add_assign(acc, &term)?,
                    }
                }
                match sum {
                    Some(sum) if *constant != 0.0 => Ok(Some(ev.add_scalar(&sum, *constant)?)),
                    other => Ok(other),
                }
            }
            Piece::Split { n, quotient, remainder } => {
                let context = ev.context();
                let giant = ev.drop_to_level(get(*n)?, level)?;
                let mut product = match quotient.as_ref() {
                    // c·T_n: a scalar term.
                    Piece::Leaf { terms, constant } if terms.is_empty() => {
                        ev.mul_scalar(&giant, *constant, scale / giant.scale())?
                    }
                    _ => {
                        let q_up = context.params().moduli()[level + 1] as f64;
                        let upper = quotient.evaluate(ev, powers, level + 1, scale * q_up / giant.scale(), relin)?;
                        let mut upper = upper.ok_or_else(|| Error::Internal("a quotient without terms".into()))?;
                        if upper.size() == 3 {
                            ev.relinearize_assign(&mut upper, relin)?;
                        }
                        ev.rescale_assign(&mut upper)?;
                        let mut product = ev.mul(&upper, &giant)?;
                        ev.relinearize_assign(&mut product, relin)?;
                        product
                    }
                };
                product.set_scale(scale);
                match remainder.evaluate(ev, powers, level, scale, relin)? {
                    Some(rest) => ev.add_assign(&mut product, &rest)?,
                    None => {
                        if let Piece::Leaf { constant, .. } = remainder.as_ref()
                            && *constant != 0.0
                        {
                            product = ev.add_scalar(&product, *constant)?;
                        }
                    }
                }
                Ok(Some(product))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf_depth_ok(piece: &Piece, lambda: usize) -> bool {
        match piece {
            Piece::Leaf { terms, .. } => terms.iter().all(|(i, _)| power_depth(*i) <= lambda),
            Piece::Split { n, quotient, remainder } => {
                power_depth(*n) <= lambda && leaf_depth_ok(quotient, lambda - 1) && leaf_depth_ok(remainder, lambda)
            }
        }
    }

    #[test]
    fn every_degree_up_to_63_splits_within_the_optimal_depth() {
        for d in 2..=63usize {
            let c: Vec<f64> = (0..=d).map(|k| 1.0 / (k + 1) as f64).collect();
            let plan = ChebyshevPlan::new(&c);
            assert_eq!(plan.depth(), depth_of_degree(d), "degree {d}");
            assert!(leaf_depth_ok(&plan.tree, plan.depth() - 1), "degree {d}: {:?}", plan.tree);
            // About 2√d products, never d.
            let bound = (4.0 * (d as f64).sqrt()).ceil() as usize + 2;
            assert!(plan.products() <= bound, "degree {d}: {} products > {bound}", plan.products());
        }
        assert_eq!(depth_of_degree(3), 2);
        assert_eq!(depth_of_degree(7), 3);
        assert_eq!(depth_of_degree(8), 4);
        assert_eq!(depth_of_degree(63), 6);
    }

    /// The split is exact: evaluating its pieces with f64 Chebyshev polynomials gives p.
    fn eval_piece(piece: &Piece, t: f64) -> f64 {
        let cheb = |k: usize| (k as f64 * t.clamp(-1.0, 1.0).acos()).cos();
        match piece {
            Piece::Leaf { terms, constant } => constant + terms.iter().map(|(i, c)| c * cheb(*i)).sum::<f64>(),
            Piece::Split { n, quotient, remainder } => eval_piece(quotient, t) * cheb(*n) + eval_piece(remainder, t),
        }
    }

    #[test]
    fn the_split_computes_the_polynomial() {
        for d in [3, 5, 7, 12, 31, 63] {
            let c: Vec<f64> = (0..=d).map(|k| ((k * 37 % 11) as f64 - 5.0) / 7.0).collect();
            let plan = ChebyshevPlan::new(&c);
            for step in 0..=20 {
                let t = -1.0 + step as f64 / 10.0;
                let (ours, reference) = (eval_piece(&plan.tree, t), plan.eval(t));
                assert!((ours - reference).abs() < 1e-9, "degree {d} at {t}: {ours} vs {reference}");
            }
        }
    }

    /// The plan under real CKKS against Clenshaw in f64, on t spread over [−1, 1].
    fn encrypted_error(coefficients: &[f64], input_scale: f64) -> f64 {
        use blindfold_ckks::{Context, Decryptor, KeyGenerator, ParametersBuilder, SecretKeyEncryptor};
        let plan = ChebyshevPlan::new(coefficients);
        let params = ParametersBuilder::new(14)
            .ciphertext_bits(&[40, 30, 30, 30, 30, 30, 30, 30, 30])
            .special_bits(&[40])
            .log_scale(30)
            .build()
            .unwrap();
        let context = Context::new(params).unwrap();
        let keys = KeyGenerator::new(&context);
        let relin = keys.relin_key();
        let encryptor = SecretKeyEncryptor::new(&context, keys.secret_key().clone()).unwrap();
        let decryptor = Decryptor::new(&context, keys.secret_key().clone()).unwrap();
        let ev = Evaluator::new(&context);
        let t: Vec<f64> = (0..context.slots()).map(|i| -1.0 + 2.0 * i as f64 / (context.slots() - 1) as f64).collect();
        let level = 8;
        let input = encryptor.encrypt(&context.encode(&t, level, input_scale).unwrap()).unwrap();
        let out = plan.evaluate(&ev, &input, 2f64.powi(30), &relin).unwrap();
        let got = decryptor.decrypt_values(&out).unwrap();
        t.iter().zip(&got).map(|(t, g)| (plan.eval(*t) - g).abs()).fold(0.0, f64::max)
    }

    /// Input scales off the prime by a non-integer ratio (2^29.4 against 30-bit primes left T_1
    /// 1.3× above its prime) once made the powers' scales drift until a degree-63 ReLU decrypted
    /// to noise (error 0.94; 0.04 at degree 31).
    #[test]
    fn high_degree_relu_interpolants_keep_their_precision_at_any_input_scale() {
        for d in [31, 48, 63] {
            let relu =
                blindfold_nn::approximate::approximate(blindfold_nn::approximate::Nonlinear::Relu, d, [-1.0, 1.0])
                    .unwrap();
            for log_scale in [30.0, 29.46, 29.4, 28.0] {
                let error = encrypted_error(&relu.polynomial.coefficients, 2f64.powf(log_scale));
                assert!(error < 1e-3, "degree {d}, input scale 2^{log_scale}: error {error:e}");
            }
        }
    }
}
