//! Pass 1, lowering: the network graph becomes a graph of HE operations on *values* (one
//! per tensor that exists under encryption), with every scalar factor and constant folded
//! where it costs nothing, and the depth of every value counted.
//!
//! - Convolutions, transposed convolutions, dense layers and up-samplings are **weighted**
//!   maps: sparse matrices of real weights (one level).
//! - Average pooling is a **sum pool** (weights 1, no level); its 1/k² is carried forward.
//! - An activation `a·x² + b·x + c` is a **square** `(x + β)²` (one level); `a` and the
//!   constant are carried forward. Degree 0 and 1 are carried forward entirely.
//! - An activation of degree 3 or more is a **Chebyshev** polynomial on [−1, 1]
//!   (⌈log2(d + 1)⌉ levels); the map of its interval onto [−1, 1] folds into the weighted
//!   map before it when that map feeds nothing else, else it is a **scale** (one level).
//! - Flatten is nothing; **add** and **concat** are joins.
//!
//! What is carried forward is an [`Affine`] map per value (true = factor · stored +
//! constant), absorbed by the next weighted map. At a join the branches must agree on it and
//! on their scale: the lowest branch (the one with the most levels used) is the reference,
//! and every other branch, which has levels to spare, is brought to the reference's level,
//! scale and factor by one multiplication by a constant (the *alignment*); branches that meet
//! at the same depth and differ get an explicit scale on all but the first.

use blindfold_nn::{Layer, Network, Polynomial, Shape, TensorId};

use crate::poly::ChebyshevPlan;
use crate::{Error, Result};

/// A value of the lowered graph: 0 is the input, op k writes value k + 1.
pub(crate) type ValueId = usize;

/// A sparse matrix: per output, (input element, weight).
pub(crate) type Rows = Vec<Vec<(usize, f64)>>;

/// The true value of a stored one: `factor · stored + constant`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Affine {
    pub factor: f64,
    pub constant: f64,
}

impl Affine {
    pub(crate) const IDENTITY: Affine = Affine { factor: 1.0, constant: 0.0 };
}

/// How one input of a join is brought to the reference: multiplied by `ratio` and shifted
/// by `offset` (in stored units of the output).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Alignment {
    pub ratio: f64,
    pub offset: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinKind {
    Add,
    Concat,
}

/// What an op computes.
#[derive(Debug, Clone)]
pub(crate) enum OpKind {
    /// `rows · x + bias` by plaintext weights. Convolutions come position-major (the output
    /// channels of one position, which share their inputs, are adjacent rows); `order` maps
    /// row j to tensor element order[j].
    Weighted { rows: Rows, bias: Vec<f64>, order: Option<Vec<usize>> },
    /// A sum of windows with weights 1: additions only.
    SumPool { rows: Rows },
    /// (x + shift)².
    Square { shift: f64 },
    /// A polynomial of its input, which holds values in [−1, 1].
    Chebyshev(Box<ChebyshevPlan>),
    /// factor · x + shift (one multiplication by a constant).
    Scale { factor: f64, shift: f64 },
    /// Sum (add) or concatenation of the inputs, each aligned to `reference` first.
    Join { kind: JoinKind, alignments: Vec<Alignment>, reference: usize },
}

/// One HE operation.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    /// The network node it comes from (messages, geometry).
    pub node: usize,
    /// What summaries call it.
    pub name: String,
    pub kind: OpKind,
    pub inputs: Vec<ValueId>,
}

/// A value: its length, the network tensor it holds (for layouts) and its depth.
#[derive(Debug, Clone)]
pub(crate) struct Value {
    pub len: usize,
    pub tensor: TensorId,
    /// Levels used between the network input and this value.
    pub depth: usize,
    /// Produced at the target scale by an op that chooses its output scale (weighted,
    /// Chebyshev, scale), possibly through sum pools and joins: two such values at one depth
    /// need no alignment.
    pub normalized: bool,
}

/// The lowered graph.
#[derive(Debug, Clone)]
pub(crate) struct Lowered {
    pub values: Vec<Value>,
    pub ops: Vec<Op>,
    pub output: ValueId,
    /// The affine map left on the output, applied after decryption.
    pub output_affine: Affine,
}

impl Lowered {
    /// Levels the whole graph uses.
    pub(crate) fn depth(&self) -> usize {
        self.values[self.output].depth
    }

    /// The ops that read each value, in order.
    pub(crate) fn consumers(&self) -> Vec<Vec<usize>> {
        let mut consumers = vec![Vec::new(); self.values.len()];
        for (k, op) in self.ops.iter().enumerate() {
            for &v in &op.inputs {
                if !consumers[v].contains(&k) {
                    consumers[v].push(k);
                }
            }
        }
        consumers
    }

    /// The op that writes value `v` (none for the input).
    pub(crate) fn producer(&self, v: ValueId) -> Option<&Op> {
        v.checked_sub(1).map(|k| &self.ops[k])
    }
}

/// Lowers `network` (see the module documentation).
pub(crate) fn lower(network: &Network) -> Result<Lowered> {
    let mut lw = Lowerer {
        network,
        values: vec![Value { len: network.input().len(), tensor: TensorId::INPUT, depth: 0, normalized: true }],
        ops: Vec::new(),
        tensors: vec![None; network.nodes().len() + 1],
    };
    lw.tensors[0] = Some((0, Affine::IDENTITY));
    for index in 0..network.nodes().len() {
        lw.node(index)?;
    }
    let (output, output_affine) = lw.tensor(network.output_tensor());
    Ok(Lowered { values: lw.values, ops: lw.ops, output, output_affine })
}

struct Lowerer<'a> {
    network: &'a Network,
    values: Vec<Value>,
    ops: Vec<Op>,
    /// The value (and the affine on it) each network tensor became.
    tensors: Vec<Option<(ValueId, Affine)>>,
}

impl Lowerer<'_> {
    fn tensor(&self, t: TensorId) -> (ValueId, Affine) {
        // Nodes are lowered in order, so every input is there.
        self.tensors[t.index()].unwrap_or((0, Affine::IDENTITY))
    }

    fn push(&mut self, node: usize, name: String, kind: OpKind, inputs: Vec<ValueId>, len: usize) -> ValueId {
        let input_depth = inputs.iter().map(|&v| self.values[v].depth).max().unwrap_or(0);
        let (cost, normalized) = match &kind {
            OpKind::Weighted { .. } | OpKind::Scale { .. } => (1, true),
            OpKind::SumPool { .. } => (0, self.values[inputs[0]].normalized),
            OpKind::Square { .. } => (1, false),
            OpKind::Chebyshev(plan) => (plan.depth(), true),
            OpKind::Join { reference, .. } => (0, self.values[inputs[*reference]].normalized),
        };
        let tensor = TensorId::of_node(node);
        self.ops.push(Op { node, name, kind, inputs });
        self.values.push(Value { len, tensor, depth: input_depth + cost, normalized });
        self.values.len() - 1
    }

    fn unsupported(&self, index: usize, reason: String) -> Error {
        let node = &self.network.nodes()[index];
        Error::Unsupported { node: node.name.clone(), layer: node.layer.to_string(), packing: "any", reason }
    }

    fn node(&mut self, index: usize) -> Result<()> {
        let network = self.network;
        let node = &network.nodes()[index];
        let out_shape = network.shape(TensorId::of_node(index));
        let in_shape = network.shape(node.inputs[0]);
        let (input, affine) = self.tensor(node.inputs[0]);
        let name = format!("{} ({})", node.name, node.layer);
        let lowered = match &node.layer {
            Layer::Flatten => (input, affine),
            Layer::AvgPool2d(pool) => {
                let rows = pool_rows(pool.kernel, pool.stride, in_shape, out_shape);
                let v = self.push(index, name, OpKind::SumPool { rows }, vec![input], out_shape.len());
                let k = (pool.kernel[0] * pool.kernel[1]) as f64;
                (v, Affine { factor: affine.factor / k, constant: affine.constant })
            }
            Layer::Conv2d(_) | Layer::ConvTranspose2d(_) | Layer::Dense(_) | Layer::Upsample(_) => {
                let (rows, bias, order) = weighted_rows(&node.layer, in_shape, out_shape);
                let (rows, bias) = absorb(rows, bias, affine);
                let v = self.push(index, name, OpKind::Weighted { rows, bias, order }, vec![input], out_shape.len());
                (v, Affine::IDENTITY)
            }
            Layer::Activation(poly) => self.activation(index, name, poly, input, affine)?,
            Layer::Add | Layer::Concat => self.join(index, name, out_shape.len())?,
        };
        self.tensors[index + 1] = Some(lowered);
        Ok(())
    }

    fn activation(
        &mut self,
        index: usize,
        name: String,
        poly: &Polynomial,
        input: ValueId,
        affine: Affine,
    ) -> Result<(ValueId, Affine)> {
        let len = self.values[input].len;
        let Affine { factor, constant } = affine;
        let degree = poly.degree();
        if degree <= 2 {
            let power = poly.to_power();
            let c = |i: usize| power.coefficients.get(i).copied().unwrap_or(0.0);
            if degree <= 1 {
                return Ok((input, Affine { factor: c(1) * factor, constant: c(1) * constant + c(0) }));
            }
            if factor == 0.0 {
                return Err(self.unsupported(index, "its input is identically constant".into()));
            }
            // z = factor·u + constant; p(z) = c2 (z + β)² + γ = c2·factor² (u + (constant + β)/factor)² + γ.
            let beta = c(1) / (2.0 * c(2));
            let gamma = c(0) - c(1) * c(1) / (4.0 * c(2));
            let v = self.push(index, name, OpKind::Square { shift: (constant + beta) / factor }, vec![input], len);
            return Ok((v, Affine { factor: c(2) * factor * factor, constant: gamma }));
        }
        let Some(interval) = poly.interval else {
            return Err(self.unsupported(
                index,
                format!(
                    "a degree-{degree} activation needs its input interval: under CKKS it is evaluated in the \
                     Chebyshev basis on that interval (export it as an ai.blindfold Polynomial node with an interval)"
                ),
            ));
        };
        let chebyshev = poly.to_chebyshev(interval);
        // t = (2x − lo − hi)/(hi − lo) with x = factor·u + constant: t = α·u + β.
        let [lo, hi] = interval;
        let alpha = 2.0 * factor / (hi - lo);
        let beta = (2.0 * constant - lo - hi) / (hi - lo);
        let mapped = if (alpha - 1.0).abs() < 1e-15 && beta.abs() < 1e-15 {
            input
        } else if let Some(k) = self.foldable_producer(index, input) {
            let OpKind::Weighted { rows, bias, .. } = &mut self.ops[k].kind else {
                return Err(Error::Internal("a foldable producer is not weighted".into()));
            };
            rows.iter_mut().flatten().for_each(|(_, w)| *w *= alpha);
            bias.iter_mut().for_each(|b| *b = alpha * *b + beta);
            input
        } else if self.fold_into_add(index, input, alpha, beta) {
            input
        } else {
            let scale = OpKind::Scale { factor: alpha, shift: beta };
            self.push(index, format!("{name}: map onto [-1, 1]"), scale, vec![input], len)
        };
        let plan = ChebyshevPlan::new(&chebyshev.coefficients);
        let v = self.push(index, name, OpKind::Chebyshev(Box::new(plan)), vec![mapped], len);
        Ok((v, Affine::IDENTITY))
    }

    /// The op writing `input`, when it is weighted, comes from the network node this
    /// activation reads directly, and nothing else reads that node.
    fn foldable_producer(&self, index: usize, input: ValueId) -> Option<usize> {
        let k = input.checked_sub(1)?;
        let op = &self.ops[k];
        let read = self.network.nodes()[index].inputs[0];
        (matches!(op.kind, OpKind::Weighted { .. })
            && self.values[input].tensor == read
            && self.network.consumers(read).len() == 1)
            .then_some(k)
    }

    /// Folds `t = α·x + β` into the residual add writing `input`, when the activation is its
    /// only reader, its reference branch comes straight from a weighted op nothing else reads
    /// (which takes α and β into its weights and bias) and every other branch is shallower (so
    /// its alignment multiplies anyway and takes α): the map onto [−1, 1] then costs no level.
    fn fold_into_add(&mut self, index: usize, input: ValueId, alpha: f64, beta: f64) -> bool {
        let Some(k) = input.checked_sub(1) else { return false };
        let read = self.network.nodes()[index].inputs[0];
        if self.values[input].tensor != read || self.network.consumers(read).len() != 1 {
            return false;
        }
        let OpKind::Join { kind: JoinKind::Add, reference, .. } = &self.ops[k].kind else { return false };
        let reference = *reference;
        let inputs = self.ops[k].inputs.clone();
        let reference_value = inputs[reference];
        let depth = self.values[reference_value].depth;
        let shallower = inputs.iter().enumerate().all(|(i, &v)| i == reference || self.values[v].depth < depth);
        let Some(p) = reference_value.checked_sub(1) else { return false };
        let producer_tensor = TensorId::of_node(self.ops[p].node);
        let foldable = matches!(self.ops[p].kind, OpKind::Weighted { .. })
            && self.values[reference_value].tensor == producer_tensor
            && self.network.consumers(producer_tensor).len() == 1
            && inputs.iter().filter(|&&v| v == reference_value).count() == 1;
        if !(shallower && foldable) {
            return false;
        }
        if let OpKind::Weighted { rows, bias, .. } = &mut self.ops[p].kind {
            rows.iter_mut().flatten().for_each(|(_, w)| *w *= alpha);
            bias.iter_mut().for_each(|b| *b = alpha * *b + beta);
        }
        if let OpKind::Join { alignments, .. } = &mut self.ops[k].kind {
            for (i, alignment) in alignments.iter_mut().enumerate() {
                if i != reference {
                    alignment.ratio *= alpha;
                }
            }
        }
        true
    }

    /// Add or concat: the branches aligned to a reference (see the module documentation).
    fn join(&mut self, index: usize, name: String, len: usize) -> Result<(ValueId, Affine)> {
        let node = &self.network.nodes()[index];
        let kind = if matches!(node.layer, Layer::Add) { JoinKind::Add } else { JoinKind::Concat };
        let mut inputs: Vec<(ValueId, Affine)> = node.inputs.iter().map(|&t| self.tensor(t)).collect();
        let top = inputs.iter().map(|(v, _)| self.values[*v].depth).max().unwrap_or(0);
        // Branches at the deepest level that differ from the first of them (in factor, or in
        // scale: not both normalized) get an explicit scale, which makes them one level deeper
        // than the rest; the first deepest branch's factor is the output's.
        let first = inputs.iter().position(|(v, _)| self.values[*v].depth == top).unwrap_or(0);
        let reference_factor = inputs[first].1.factor;
        if reference_factor == 0.0 {
            return Err(self.unsupported(index, "an input is identically constant".into()));
        }
        let first_normalized = self.values[inputs[first].0].normalized;
        for i in 0..inputs.len() {
            let (v, affine) = inputs[i];
            let same = affine.factor == reference_factor && first_normalized && self.values[v].normalized;
            if i != first && self.values[v].depth == top && !(same || v == inputs[first].0) {
                let ratio = affine.factor / reference_factor;
                let scale = OpKind::Scale { factor: ratio, shift: 0.0 };
                let scaled = self.push(index, format!("{name}: align input {i}"), scale, vec![v], self.values[v].len);
                inputs[i] = (scaled, Affine { factor: reference_factor, constant: affine.constant });
            }
        }
        let deepest = inputs.iter().map(|(v, _)| self.values[*v].depth).max().unwrap_or(0);
        let reference = inputs.iter().position(|(v, _)| self.values[*v].depth == deepest).unwrap_or(0);
        let (factor, reference_constant) = (inputs[reference].1.factor, inputs[reference].1.constant);
        let alignments = inputs
            .iter()
            .map(|(_, a)| Alignment {
                ratio: a.factor / factor,
                offset: match kind {
                    JoinKind::Add => 0.0,
                    JoinKind::Concat => (a.constant - reference_constant) / factor,
                },
            })
            .collect();
        let constant = match kind {
            JoinKind::Add => inputs.iter().map(|(_, a)| a.constant).sum(),
            JoinKind::Concat => reference_constant,
        };
        let values = inputs.iter().map(|(v, _)| *v).collect();
        let v = self.push(index, name, OpKind::Join { kind, alignments, reference }, values, len);
        Ok((v, Affine { factor, constant }))
    }
}

/// Folds the input's affine map into a weighted map: rows · (f·x + c) + b.
fn absorb(rows: Rows, bias: Vec<f64>, affine: Affine) -> (Rows, Vec<f64>) {
    let Affine { factor, constant } = affine;
    let bias = bias.iter().zip(&rows).map(|(b, row)| b + constant * row.iter().map(|(_, w)| w).sum::<f64>()).collect();
    let rows = rows.into_iter().map(|row| row.into_iter().map(|(k, w)| (k, w * factor)).collect()).collect();
    (rows, bias)
}

/// Sum-pool rows: each output (c, y, x) sums its k_h × k_w window with weight 1.
pub(crate) fn pool_rows(kernel: [usize; 2], stride: [usize; 2], input: Shape, output: Shape) -> Rows {
    let (Shape::Image { channels, height, width }, Shape::Image { height: oh, width: ow, .. }) = (input, output) else {
        return Vec::new();
    };
    let mut rows = Vec::with_capacity(channels * oh * ow);
    for c in 0..channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut row = Vec::with_capacity(kernel[0] * kernel[1]);
                for ky in 0..kernel[0] {
                    for kx in 0..kernel[1] {
                        let (y, x) = (oy * stride[0] + ky, ox * stride[1] + kx);
                        row.push((c * height * width + y * width + x, 1.0));
                    }
                }
                rows.push(row);
            }
        }
    }
    rows
}

/// Rows, biases and row order of a weighted layer.
fn weighted_rows(layer: &Layer, input: Shape, output: Shape) -> (Rows, Vec<f64>, Option<Vec<usize>>) {
    let dims = |s: Shape| match s {
        Shape::Image { channels, height, width } => (channels, height, width),
        Shape::Vector { len } => (len, 1, 1),
    };
    let (_, h, w) = dims(input);
    let (oc, oh, ow) = dims(output);
    match layer {
        Layer::Dense(d) => {
            let rows =
                (0..d.outputs).map(|o| (0..d.inputs).map(|i| (i, d.weights[o * d.inputs + i])).collect()).collect();
            (rows, d.bias.clone(), None)
        }
        Layer::Conv2d(c) => {
            let (kh, kw) = (c.kernel[0], c.kernel[1]);
            let (group_in, group_out) = (c.in_channels / c.groups, c.out_channels / c.groups);
            let mut rows = Vec::with_capacity(oc * oh * ow);
            let mut bias = Vec::with_capacity(oc * oh * ow);
            let mut order = Vec::with_capacity(oc * oh * ow);
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..oc {
                        let first = (o / group_out) * group_in;
                        let mut row = Vec::with_capacity(group_in * kh * kw);
                        for j in 0..group_in {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let y = (oy * c.stride[0] + ky) as isize - c.padding[0] as isize;
                                    let x = (ox * c.stride[1] + kx) as isize - c.padding[1] as isize;
                                    if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                                        continue;
                                    }
                                    let weight = c.weights[((o * group_in + j) * kh + ky) * kw + kx];
                                    row.push(((first + j) * h * w + y as usize * w + x as usize, weight));
                                }
                            }
                        }
                        rows.push(row);
                        bias.push(c.bias[o]);
                        order.push(o * oh * ow + oy * ow + ox);
                    }
                }
            }
            (rows, bias, Some(order))
        }
        Layer::ConvTranspose2d(c) => {
            let (kh, kw) = (c.kernel[0], c.kernel[1]);
            let (group_in, group_out) = (c.in_channels / c.groups, c.out_channels / c.groups);
            let mut rows: Rows = vec![Vec::new(); oc * oh * ow];
            for i in 0..c.in_channels {
                let group = i / group_in;
                for iy in 0..h {
                    for ix in 0..w {
                        for k in 0..group_out {
                            let o = group * group_out + k;
                            for ky in 0..kh {
                                let Some(oy) = (iy * c.stride[0] + ky).checked_sub(c.padding[0]).filter(|&y| y < oh)
                                else {
                                    continue;
                                };
                                for kx in 0..kw {
                                    let Some(ox) =
                                        (ix * c.stride[1] + kx).checked_sub(c.padding[1]).filter(|&x| x < ow)
                                    else {
                                        continue;
                                    };
                                    let weight = c.weights[((i * group_out + k) * kh + ky) * kw + kx];
                                    rows[(o * oh + oy) * ow + ox].push(((i * h + iy) * w + ix, weight));
                                }
                            }
                        }
                    }
                }
            }
            rows.iter_mut().for_each(|row| row.sort_by_key(|&(k, _)| k));
            let bias = (0..oc * oh * ow).map(|e| c.bias[e / (oh * ow)]).collect();
            (rows, bias, None)
        }
        Layer::Upsample(u) => {
            let rows = (0..oc * oh * ow)
                .map(|e| {
                    let (ch, y, x) = (e / (oh * ow), (e / ow) % oh, e % ow);
                    vec![((ch * h + y / u.scale[0]) * w + x / u.scale[1], 1.0)]
                })
                .collect();
            (rows, vec![0.0; oc * oh * ow], None)
        }
        _ => (Vec::new(), Vec::new(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindfold_nn::{Conv2d, Dense, Node};

    fn conv(c: usize) -> Layer {
        Layer::Conv2d(Conv2d {
            in_channels: c,
            out_channels: c,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1; 4],
            groups: 1,
            weights: vec![0.1; c * c * 9],
            bias: vec![0.0; c],
        })
    }

    fn node(name: &str, layer: Layer, inputs: &[usize]) -> Node {
        Node {
            name: name.into(),
            layer,
            inputs: inputs.iter().map(|&i| if i == 0 { TensorId::INPUT } else { TensorId::of_node(i - 1) }).collect(),
        }
    }

    #[test]
    fn a_chain_folds_pool_and_activation_factors_forward() {
        let net = Network::new(
            Shape::Image { channels: 1, height: 4, width: 4 },
            vec![
                conv(1),
                Layer::Activation(Polynomial::power(vec![0.5, 1.0, 0.25])),
                Layer::AvgPool2d(blindfold_nn::AvgPool2d { kernel: [2, 2], stride: [2, 2] }),
                Layer::Flatten,
                Layer::Dense(Dense { inputs: 4, outputs: 1, weights: vec![1.0; 4], bias: vec![0.0] }),
            ],
        )
        .unwrap();
        let lowered = lower(&net).unwrap();
        let kinds: Vec<&str> = lowered
            .ops
            .iter()
            .map(|op| match op.kind {
                OpKind::Weighted { .. } => "weighted",
                OpKind::SumPool { .. } => "pool",
                OpKind::Square { .. } => "square",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["weighted", "square", "pool", "weighted"]);
        // 0.25 (x + 2)² − 0.5 pooled: the dense weights carry 0.25 / 4, its bias 4 · (−0.5).
        let OpKind::Weighted { rows, bias, .. } = &lowered.ops[3].kind else { panic!() };
        assert!((rows[0][0].1 - 0.0625).abs() < 1e-12 && (bias[0] + 2.0).abs() < 1e-12, "{rows:?} {bias:?}");
        assert_eq!(lowered.depth(), 3);
        assert_eq!(lowered.output_affine, Affine::IDENTITY);
    }

    #[test]
    fn a_residual_join_aligns_the_shallow_branch_and_takes_the_deep_one_as_reference() {
        let image = Shape::Image { channels: 2, height: 4, width: 4 };
        let net = Network::graph(
            image,
            vec![
                node("c1", conv(2), &[0]),
                node("sq", Layer::Activation(Polynomial::power(vec![0.0, 0.0, 0.5])), &[1]),
                node("c2", conv(2), &[2]),
                node("sum", Layer::Add, &[3, 2]),
            ],
            TensorId::of_node(3),
        )
        .unwrap();
        let lowered = lower(&net).unwrap();
        let OpKind::Join { alignments, reference, .. } = &lowered.ops.last().unwrap().kind else { panic!() };
        // c2 (depth 3, factor 1) is the reference; the square (depth 2, factor 0.5) is scaled
        // by 0.5 in its alignment.
        assert_eq!(*reference, 0);
        assert_eq!(alignments[1].ratio, 0.5);
        assert_eq!(lowered.depth(), 3);
    }

    #[test]
    fn branches_that_meet_at_one_depth_and_differ_get_a_scale() {
        let image = Shape::Image { channels: 1, height: 4, width: 4 };
        let net = Network::graph(
            image,
            vec![
                node("c1", conv(1), &[0]),
                node("sq", Layer::Activation(Polynomial::square()), &[0]),
                node("both", Layer::Concat, &[1, 2]),
            ],
            TensorId::of_node(2),
        )
        .unwrap();
        let lowered = lower(&net).unwrap();
        assert!(lowered.ops.iter().any(|op| matches!(op.kind, OpKind::Scale { .. })));
        assert_eq!(lowered.depth(), 2);
    }

    #[test]
    fn a_high_degree_activation_folds_its_interval_into_the_convolution() {
        let net = Network::new(
            Shape::Image { channels: 1, height: 4, width: 4 },
            vec![conv(1), Layer::Activation(Polynomial::chebyshev(vec![0.0, 0.5, 0.0, 0.1], [-2.0, 2.0]))],
        )
        .unwrap();
        let lowered = lower(&net).unwrap();
        assert_eq!(lowered.ops.len(), 2);
        let OpKind::Weighted { rows, .. } = &lowered.ops[0].kind else { panic!() };
        assert!((rows[0][0].1 - 0.05).abs() < 1e-12);
        assert_eq!(lowered.depth(), 3);
        let unfoldable = Network::new(
            Shape::Vector { len: 3 },
            vec![Layer::Activation(Polynomial::chebyshev(vec![0.0, 0.5, 0.0, 0.1], [-2.0, 2.0]))],
        )
        .unwrap();
        let lowered = lower(&unfoldable).unwrap();
        assert!(matches!(lowered.ops[0].kind, OpKind::Scale { .. }));
        let no_interval = Network::new(
            Shape::Vector { len: 3 },
            vec![Layer::Activation(Polynomial::power(vec![0.0, 1.0, 0.0, 1.0]))],
        )
        .unwrap();
        let err = lower(&no_interval).unwrap_err().to_string();
        assert!(err.contains("needs its input interval"), "{err}");
    }

    #[test]
    fn a_polynomial_after_a_residual_add_maps_its_interval_through_the_branches() {
        // x → conv → square → conv → add(x) → Chebyshev: the interval map folds into the deep
        // branch's convolution and the skip's alignment, so no scale op costs a level.
        let image = Shape::Image { channels: 1, height: 4, width: 4 };
        let net = Network::graph(
            image,
            vec![
                node("c1", conv(1), &[0]),
                node("sq", Layer::Activation(Polynomial::square()), &[1]),
                node("c2", conv(1), &[2]),
                node("sum", Layer::Add, &[3, 0]),
                node("p", Layer::Activation(Polynomial::chebyshev(vec![0.0, 1.0, 0.0, 0.2], [-2.0, 6.0])), &[4]),
            ],
            TensorId::of_node(4),
        )
        .unwrap();
        let lowered = lower(&net).unwrap();
        assert!(!lowered.ops.iter().any(|op| matches!(op.kind, OpKind::Scale { .. })));
        let OpKind::Join { alignments, reference, .. } = &lowered.ops[3].kind else { panic!() };
        assert_eq!(*reference, 0);
        assert!((alignments[1].ratio - 0.25).abs() < 1e-12, "{alignments:?}");
        // conv, square, conv, then degree 3 (2 levels).
        assert_eq!(lowered.depth(), 5);
        assert_eq!(net.depth(), 5);
    }
}
