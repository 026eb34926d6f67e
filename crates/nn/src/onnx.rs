//! ONNX import: turns an exported graph into a [`Network`], or refuses it node by node.
//!
//! The graph is read with the `onnx-protobuf` message types and walked in its (topological)
//! node order. Every ONNX value is tracked symbolically: a constant (initializer or `Constant`
//! node), a polynomial of a network tensor, or a zero-padded network tensor waiting for the
//! convolution that absorbs the padding. Element-wise `Mul`, `Add`, `Sub`, `Div` by a
//! constant, `Neg`, `Pow` and `Identity` on one tensor only grow its polynomial, so any
//! arrangement of them (`x*x`, `Pow(x, 2)`, `a*x*x + b*x + c`, …) becomes one `Activation`
//! node when a structural operator consumes it. `Add`/`Sum` of two different tensors is a
//! residual `Add` node and `Concat` on the channels a `Concat` node, so graphs with skip
//! connections import as they are. BatchNormalization, a per-channel `Mul` and a bias `Add`
//! right after Conv, ConvTranspose, Gemm or MatMul fold into that node when it has no other
//! consumer; `Pad` with zeros folds into the Conv that reads it; `Resize`/`Upsample` by whole
//! factors with nearest-neighbour sampling become `Upsample`. Blindfold's own operator
//! `ai.blindfold::Polynomial` carries activations of any degree up to 63, in the power or the
//! Chebyshev basis, with their input interval (`crates/nn/README.md`, "ONNX import").

use std::collections::HashMap;
use std::path::Path;

use onnx_protobuf::{Message, ModelProto, NodeProto, TensorProto};

use crate::error::Refusal;
use crate::ir::{
    AvgPool2d, Basis, Conv2d, ConvTranspose2d, Dense, Layer, MAX_TENSOR_VALUES, Network, Node, Polynomial, Shape,
    TensorId, Upsample,
};
use crate::{Error, Result};

/// Highest degree an activation built from element-wise ONNX operators may reach (higher
/// degrees come as `ai.blindfold::Polynomial` nodes, in the Chebyshev basis).
pub const MAX_DEGREE: usize = 8;

/// The operator domain of Blindfold's own ONNX operators.
pub const BLINDFOLD_DOMAIN: &str = "ai.blindfold";

/// Imports an ONNX model file.
pub fn import_file(path: &Path) -> Result<Network> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    import(&bytes)
}

/// Imports an ONNX model from its bytes.
pub fn import(bytes: &[u8]) -> Result<Network> {
    let model = ModelProto::parse_from_bytes(bytes).map_err(|e| Error::OnnxDecode(e.to_string()))?;
    let graph = model.graph.as_ref().ok_or_else(|| Error::OnnxDecode("the model has no graph".into()))?;

    // First pass: every operator that can never be imported, so the owner sees all at once.
    let refusals: Vec<Refusal> = graph.node.iter().filter_map(unsupported).collect();
    if !refusals.is_empty() {
        return Err(Error::Refused { refusals });
    }

    let mut im = Importer::default();
    for init in &graph.initializer {
        let t = Tensor::from_proto(init).map_err(|reason| one("initializer", &init.name, reason))?;
        im.values.insert(init.name.clone(), Value::Const(t));
    }
    let input = graph
        .input
        .iter()
        .find(|i| !im.values.contains_key(&i.name))
        .ok_or_else(|| one("graph", "input", "the graph has no input that is not an initializer".into()))?;
    let input_shape = input_shape(input).map_err(|reason| one("graph input", &input.name, reason))?;
    im.shapes.push(input_shape);
    im.values.insert(input.name.clone(), Value::Sym(Sym::of(TensorId::INPUT, &input.name)));
    im.count_uses(graph);

    for node in &graph.node {
        im.node(node).map_err(|reason| one(&node_name(node), &node.op_type, reason))?;
    }

    let [output] = graph.output.as_slice() else {
        return Err(one("graph", "output", format!("has {} outputs; exactly one is supported", graph.output.len())));
    };
    let output = match im.values.get(&output.name).cloned() {
        Some(Value::Sym(sym)) => im.materialize(&sym).map_err(|reason| one("graph output", &output.name, reason))?,
        _ => return Err(one("graph output", &output.name, "does not depend on the input".into())),
    };
    let (nodes, output) = prune(im.nodes, output);
    Network::graph(input_shape, nodes, output)
}

/// Drops the nodes the output does not depend on (an exported graph may compute values nobody
/// reads, and an absorbed Pad or a folded bias leaves none), renumbering the tensors.
fn prune(nodes: Vec<Node>, output: TensorId) -> (Vec<Node>, TensorId) {
    let mut used = vec![false; nodes.len()];
    let mut stack = vec![output];
    while let Some(tensor) = stack.pop() {
        if let Some(n) = tensor.node().filter(|&n| !used[n]) {
            used[n] = true;
            stack.extend(&nodes[n].inputs);
        }
    }
    let mut renumbered = vec![TensorId::INPUT; nodes.len() + 1];
    let mut kept = Vec::new();
    for (index, mut node) in nodes.into_iter().enumerate() {
        if !used[index] {
            continue;
        }
        node.inputs.iter_mut().for_each(|t| *t = renumbered[t.index()]);
        renumbered[index + 1] = TensorId::of_node(kept.len());
        kept.push(node);
    }
    (kept, renumbered[output.index()])
}

fn one(node: &str, op: &str, reason: String) -> Error {
    Error::Refused { refusals: vec![Refusal { node: node.to_string(), op: op.to_string(), reason }] }
}

fn node_name(node: &NodeProto) -> String {
    if !node.name.is_empty() { node.name.clone() } else { node.output.first().cloned().unwrap_or_default() }
}

/// Operators refused whatever their inputs, with the reason and the alternative.
fn unsupported(node: &NodeProto) -> Option<Refusal> {
    let op = node.op_type.as_str();
    if node.domain == BLINDFOLD_DOMAIN {
        return match op {
            "Polynomial" => None,
            _ => Some(Refusal {
                node: node_name(node),
                op: op.to_string(),
                reason: format!("is not an operator of domain {BLINDFOLD_DOMAIN} (it has: Polynomial)"),
            }),
        };
    }
    let reason = match op {
        "Relu" | "LeakyRelu" | "PRelu" | "Elu" | "Selu" | "Celu" | "Gelu" | "Sigmoid" | "HardSigmoid" | "Tanh"
        | "Softplus" | "Softsign" | "HardSwish" | "Mish" | "Exp" | "Log" | "Abs" | "Sign" | "Clip" | "Sqrt"
        | "Reciprocal" | "Erf" => "is not a polynomial; use x^2, a quadratic activation (a*x^2 + b*x + c) or a \
                                   polynomial approximation on its input interval (an ai.blindfold Polynomial node)"
            .to_string(),
        "MaxPool" | "GlobalMaxPool" | "LpPool" | "GlobalLpPool" | "Max" | "Min" => {
            "is not linear (it takes a maximum, which CKKS cannot compute); use AveragePool".to_string()
        }
        "Softmax" | "LogSoftmax" => {
            "is not a polynomial (exponentials and a division); leave it out of the exported model and apply it to the \
             decrypted logits"
                .to_string()
        }
        "ArgMax" | "ArgMin" | "TopK" => "compares values, which CKKS cannot do; take it after decryption".to_string(),
        _ if !node.domain.is_empty() && node.domain != "ai.onnx" => {
            format!("is from operator domain '{}', which is not supported", node.domain)
        }
        "Conv" | "ConvTranspose" | "Gemm" | "MatMul" | "Add" | "Sum" | "Sub" | "Mul" | "Div" | "Neg" | "Pow"
        | "AveragePool" | "GlobalAveragePool" | "Flatten" | "Reshape" | "BatchNormalization" | "Identity"
        | "Dropout" | "Constant" | "Concat" | "Resize" | "Upsample" | "Pad" => {
            return None;
        }
        _ => "is not supported by the HE importer (supported: Conv, ConvTranspose, Gemm, MatMul, Add, Sum, Sub, Mul, \
              Div by a constant, Neg, Pow, AveragePool, GlobalAveragePool, Flatten, Reshape, BatchNormalization, \
              Concat, Resize and Upsample (nearest, whole factors), Pad (zeros), Identity, Dropout, Constant, \
              ai.blindfold Polynomial)"
            .to_string(),
    };
    Some(Refusal { node: node_name(node), op: op.to_string(), reason })
}
/// A constant tensor as f64.
#[derive(Debug, Clone)]
struct Tensor {
    dims: Vec<usize>,
    data: Vec<f64>,
}

impl Tensor {
    fn from_proto(t: &TensorProto) -> Result<Self, String> {
        if !t.external_data.is_empty() {
            return Err("tensor data stored outside the file is not supported".into());
        }
        let dims = t
            .dims
            .iter()
            .map(|d| usize::try_from(*d).map_err(|_| format!("negative dimension {d}")))
            .collect::<Result<Vec<_>, _>>()?;
        let count = dims.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d)).filter(|n| *n <= MAX_TENSOR_VALUES);
        let count = count.ok_or_else(|| format!("tensor of dims {dims:?} exceeds {MAX_TENSOR_VALUES} values"))?;
        let raw = &t.raw_data;
        let data: Vec<f64> = match t.data_type {
            1 if raw.is_empty() => t.float_data.iter().map(|v| f64::from(*v)).collect(),
            1 => le_chunks::<4>(raw).map(|b| f64::from(f32::from_le_bytes(b))).collect(),
            11 if raw.is_empty() => t.double_data.clone(),
            11 => le_chunks::<8>(raw).map(f64::from_le_bytes).collect(),
            7 if raw.is_empty() => t.int64_data.iter().map(|v| *v as f64).collect(),
            7 => le_chunks::<8>(raw).map(|b| i64::from_le_bytes(b) as f64).collect(),
            6 if raw.is_empty() => t.int32_data.iter().map(|v| f64::from(*v)).collect(),
            6 => le_chunks::<4>(raw).map(|b| f64::from(i32::from_le_bytes(b))).collect(),
            other => {
                return Err(format!(
                    "tensor '{}' has data type {other}; float, double, int32 or int64 expected",
                    t.name
                ));
            }
        };
        if data.len() != count {
            return Err(format!("tensor '{}' holds {} values but its dims {dims:?} need {count}", t.name, data.len()));
        }
        Ok(Self { dims, data })
    }

    fn scalar(&self) -> Option<f64> {
        match self.data.as_slice() {
            [v] => Some(*v),
            _ => None,
        }
    }
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| {
        let mut b = [0u8; N];
        b.copy_from_slice(c);
        b
    })
}

fn input_shape(input: &onnx_protobuf::ValueInfoProto) -> Result<Shape, String> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as Dim;
    use onnx_protobuf::type_proto::Value as Type;
    let Some(Type::TensorType(t)) = input.type_.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err("the input is not a tensor".into());
    };
    if t.elem_type != 1 && t.elem_type != 11 {
        return Err(format!("the input has element type {}; float expected", t.elem_type));
    }
    let dims: Vec<Option<usize>> = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(Dim::DimValue(v)) => usize::try_from(*v).ok().filter(|v| *v > 0),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let fixed = |d: &Option<usize>| d.ok_or_else(|| format!("input dims {dims:?} must be fixed except the batch"));
    match dims.as_slice() {
        [_, c, h, w] => Ok(Shape::Image { channels: fixed(c)?, height: fixed(h)?, width: fixed(w)? }),
        [_, len] => Ok(Shape::Vector { len: fixed(len)? }),
        _ => Err(format!("input has dims {dims:?}; (batch, C, H, W) or (batch, features) expected")),
    }
}

/// A polynomial (power basis) of a network tensor; `name` is the ONNX value it was last
/// changed in, which names the activation node it becomes.
#[derive(Debug, Clone, PartialEq)]
struct Sym {
    base: TensorId,
    poly: Vec<f64>,
    name: String,
}

impl Sym {
    fn of(base: TensorId, name: &str) -> Self {
        Self { base, poly: identity(), name: name.to_owned() }
    }

    fn with(&self, poly: Vec<f64>, name: &str) -> Self {
        Self { base: self.base, poly, name: name.to_owned() }
    }
}

#[derive(Debug, Clone)]
enum Value {
    Const(Tensor),
    Sym(Sym),
    /// A tensor zero-padded by (top, left, bottom, right): only a Conv may read it.
    Padded {
        tensor: TensorId,
        pads: [usize; 4],
    },
}

fn identity() -> Vec<f64> {
    vec![0.0, 1.0]
}

fn trim(mut p: Vec<f64>) -> Vec<f64> {
    while p.len() > 1 && p.last() == Some(&0.0) {
        p.pop();
    }
    p
}

/// Refuses a polynomial above [`MAX_DEGREE`] as soon as it appears (repeated squaring would
/// otherwise double its size at every node).
fn bounded(p: Vec<f64>) -> Step<Vec<f64>> {
    if p.len() > MAX_DEGREE + 1 {
        return Err(format!(
            "builds a polynomial of degree {} from element-wise operators (at most {MAX_DEGREE}; higher degrees \
             belong in an ai.blindfold Polynomial node, in the Chebyshev basis)",
            p.len() - 1
        ));
    }
    Ok(p)
}

fn poly_add(a: &[f64], b: &[f64], sign: f64) -> Vec<f64> {
    let mut out = vec![0.0; a.len().max(b.len())];
    for (i, v) in a.iter().enumerate() {
        out[i] += v;
    }
    for (i, v) in b.iter().enumerate() {
        out[i] += sign * v;
    }
    trim(out)
}

fn poly_mul(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; a.len() + b.len() - 1];
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            out[i + j] += x * y;
        }
    }
    trim(out)
}

type Step<T = ()> = std::result::Result<T, String>;

#[derive(Debug, Default)]
struct Importer {
    values: HashMap<String, Value>,
    /// How many node inputs (and graph outputs) read each value, through Identity/Dropout.
    uses: HashMap<String, usize>,
    /// Identity/Dropout outputs → the value they pass on.
    aliases: HashMap<String, String>,
    nodes: Vec<Node>,
    /// Shape of every tensor made so far.
    shapes: Vec<Shape>,
    /// The activation node each ONNX value's polynomial became, so two readers share it.
    materialized: HashMap<String, TensorId>,
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a onnx_protobuf::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<usize>> {
    attr(node, name).map(|a| a.ints.iter().map(|v| usize::try_from(*v).unwrap_or(usize::MAX)).collect())
}

fn attr_string(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

fn pair(v: Option<Vec<usize>>, default: usize, what: &str) -> Step<[usize; 2]> {
    match v.as_deref() {
        None => Ok([default; 2]),
        Some([a, b]) if *a < 1 << 16 && *b < 1 << 16 => Ok([*a, *b]),
        Some(other) => Err(format!("{what} {other:?}: two small values expected")),
    }
}

fn pads4(v: Option<Vec<usize>>) -> Step<[usize; 4]> {
    match v.as_deref() {
        None => Ok([0; 4]),
        // ONNX order: top, left, bottom, right.
        Some([t, l, b, r]) if [t, l, b, r].iter().all(|p| **p < 1 << 16) => Ok([*t, *l, *b, *r]),
        Some(other) => Err(format!("pads {other:?}: four small values expected")),
    }
}

fn no_auto_pad(node: &NodeProto) -> Step {
    let auto_pad = attr_string(node, "auto_pad").unwrap_or_default();
    if !(auto_pad.is_empty() || auto_pad == "NOTSET" || auto_pad == "VALID") {
        return Err(format!("auto_pad {auto_pad} is not supported; export explicit pads"));
    }
    Ok(())
}

impl Importer {
    fn count_uses(&mut self, graph: &onnx_protobuf::GraphProto) {
        for node in &graph.node {
            if matches!(node.op_type.as_str(), "Identity" | "Dropout")
                && let (Some(input), Some(output)) = (node.input.first(), node.output.first())
            {
                self.aliases.insert(output.clone(), input.clone());
            }
        }
        let reads = graph.node.iter().flat_map(|n| n.input.iter()).chain(graph.output.iter().map(|o| &o.name));
        for name in reads.filter(|n| !n.is_empty()).cloned().collect::<Vec<_>>() {
            let root = self.root(&name);
            *self.uses.entry(root).or_insert(0) += 1;
        }
    }

    /// The value an alias chain ends at.
    fn root(&self, name: &str) -> String {
        let mut name = name;
        for _ in 0..self.aliases.len() {
            match self.aliases.get(name) {
                Some(next) => name = next,
                None => break,
            }
        }
        name.to_owned()
    }

    fn get(&self, name: &str) -> Step<&Value> {
        self.values.get(name).ok_or_else(|| format!("input '{name}' is not produced by any earlier node"))
    }

    fn input(&self, node: &NodeProto, i: usize) -> Step<&Value> {
        match node.input.get(i).filter(|n| !n.is_empty()) {
            Some(name) => self.get(name),
            None => Err(format!("missing input {i}")),
        }
    }

    fn optional_constant(&self, node: &NodeProto, i: usize) -> Step<Option<&Tensor>> {
        match node.input.get(i).filter(|n| !n.is_empty()) {
            None => Ok(None),
            Some(_) => self.constant(node, i).map(Some),
        }
    }

    fn constant(&self, node: &NodeProto, i: usize) -> Step<&Tensor> {
        match self.input(node, i)? {
            Value::Const(t) => Ok(t),
            _ => Err(format!("input {i} must be a constant (weights), but it depends on the image")),
        }
    }

    fn set(&mut self, node: &NodeProto, v: Value) -> Step {
        let out = node.output.first().ok_or("the node has no output")?;
        self.values.insert(out.clone(), v);
        Ok(())
    }

    fn output_name(node: &NodeProto) -> String {
        node.output.first().cloned().unwrap_or_default()
    }

    /// Appends a node reading `inputs`, named after the ONNX node (made unique).
    fn push(&mut self, name: &str, layer: Layer, inputs: Vec<TensorId>) -> Step<TensorId> {
        let shapes: Vec<Shape> = inputs.iter().map(|t| self.shapes[t.index()]).collect();
        let shape = layer.output_shape(&shapes)?;
        let mut unique = if name.is_empty() { format!("node{}", self.nodes.len()) } else { name.to_owned() };
        while unique == crate::ir::INPUT_NAME || self.nodes.iter().any(|n| n.name == unique) {
            unique = format!("{unique}'");
        }
        self.nodes.push(Node { name: unique, layer, inputs });
        self.shapes.push(shape);
        Ok(TensorId::of_node(self.nodes.len() - 1))
    }

    /// The network tensor holding `sym`: its base, or an activation node computing its
    /// polynomial (made once per ONNX value).
    fn materialize(&mut self, sym: &Sym) -> Step<TensorId> {
        if sym.poly == identity() {
            return Ok(sym.base);
        }
        if let Some(&t) = self.materialized.get(&sym.name) {
            return Ok(t);
        }
        if sym.poly.len() > MAX_DEGREE + 1 {
            return Err(format!("the activation has degree {} (at most {MAX_DEGREE})", sym.poly.len() - 1));
        }
        let t = self.push(&sym.name, Layer::Activation(Polynomial::power(sym.poly.clone())), vec![sym.base])?;
        self.materialized.insert(sym.name.clone(), t);
        Ok(t)
    }

    /// Input `i` as a network tensor for a structural operator.
    fn tensor(&mut self, node: &NodeProto, i: usize) -> Step<TensorId> {
        match self.input(node, i)?.clone() {
            Value::Sym(sym) => self.materialize(&sym),
            Value::Const(_) => Err(format!("input {i} is a constant; it must depend on the image")),
            Value::Padded { .. } => Err(format!("input {i} comes from a Pad; only a Conv may read a padded tensor")),
        }
    }

    fn shape_of(&self, tensor: TensorId) -> Shape {
        self.shapes[tensor.index()]
    }

    /// The weighted node whose raw output `v` is, when nothing else reads that output (so a
    /// per-channel scale or shift can fold into its weights and bias).
    fn foldable(&self, node: &NodeProto, v: &Value) -> Option<usize> {
        let Value::Sym(sym) = v else { return None };
        let reader = node.input.first().map(|n| self.root(n))?;
        let index = sym.base.node()?;
        (sym.poly == identity() && self.uses.get(&reader) == Some(&1) && self.nodes[index].layer.is_weighted())
            .then_some(index)
    }

    /// Folds `y = scale[o]·y + shift[o]` per output channel into node `at`.
    fn fold_affine(&mut self, at: usize, scale: Option<&[f64]>, shift: Option<&[f64]>) -> Step {
        let outputs = match &self.nodes[at].layer {
            Layer::Conv2d(c) => c.out_channels,
            Layer::ConvTranspose2d(c) => c.out_channels,
            Layer::Dense(d) => d.outputs,
            _ => return Err("internal: fold target is not weighted".into()),
        };
        let s = |o: usize| scale.map_or(1.0, |s| s[o]);
        let t = |o: usize| shift.map_or(0.0, |t| t[o]);
        match &mut self.nodes[at].layer {
            Layer::Conv2d(c) => {
                let per = c.weights.len() / outputs;
                for (o, row) in c.weights.chunks_mut(per).enumerate() {
                    row.iter_mut().for_each(|w| *w *= s(o));
                }
            }
            Layer::ConvTranspose2d(c) => {
                let per_group = c.out_channels / c.groups;
                let per_input = c.in_channels / c.groups;
                let kernel = c.kernel[0] * c.kernel[1];
                for (i, block) in c.weights.chunks_mut(per_group * kernel).enumerate() {
                    for (k, taps) in block.chunks_mut(kernel).enumerate() {
                        let o = (i / per_input) * per_group + k;
                        taps.iter_mut().for_each(|w| *w *= s(o));
                    }
                }
            }
            Layer::Dense(d) => {
                for (o, row) in d.weights.chunks_mut(d.inputs).enumerate() {
                    row.iter_mut().for_each(|w| *w *= s(o));
                }
            }
            _ => {}
        }
        let bias = match &mut self.nodes[at].layer {
            Layer::Conv2d(c) => &mut c.bias,
            Layer::ConvTranspose2d(c) => &mut c.bias,
            Layer::Dense(d) => &mut d.bias,
            _ => return Err("internal: fold target is not weighted".into()),
        };
        for (o, b) in bias.iter_mut().enumerate() {
            *b = *b * s(o) + t(o);
        }
        Ok(())
    }

    /// A constant of one value per output channel of node `at` (C,1,1 for images, C for
    /// vectors), or why not.
    fn per_channel(&self, at: usize, c: &Tensor) -> Step<Vec<f64>> {
        let (n, image) = match self.shapes[at + 1] {
            Shape::Image { channels, .. } => (channels, true),
            Shape::Vector { len } => (len, false),
        };
        // ONNX broadcasts from the last axis: a vector of length C only lines up with the
        // channels of a (N, C) dense output; an image needs (C, 1, 1).
        let fits = match c.dims.as_slice() {
            [m] | [1, m] => *m == n && !image,
            [m, 1, 1] | [1, m, 1, 1] => *m == n && image,
            _ => false,
        };
        if !fits {
            return Err(format!(
                "combines with a constant of dims {:?}, not one value per channel/output ({n})",
                c.dims
            ));
        }
        Ok(c.data.clone())
    }

    fn node(&mut self, node: &NodeProto) -> Step {
        let out = Self::output_name(node);
        match node.op_type.as_str() {
            "Constant" => self.constant_node(node),
            "Identity" | "Dropout" => {
                let v = self.input(node, 0)?.clone();
                self.set(node, v)
            }
            "Mul" => self.mul(node),
            "Add" | "Sum" => self.add(node, 1.0),
            "Sub" => self.add(node, -1.0),
            "Div" => {
                let Value::Const(c) = self.input(node, 1)?.clone() else {
                    return Err("divides by a value that depends on the image, which is not a polynomial".into());
                };
                let d =
                    c.scalar().filter(|d| *d != 0.0).ok_or("divides by a constant that is not one non-zero value")?;
                match self.input(node, 0)?.clone() {
                    Value::Sym(s) => self.set(node, Value::Sym(s.with(s.poly.iter().map(|v| v / d).collect(), &out))),
                    Value::Const(t) => self
                        .set(node, Value::Const(Tensor { dims: t.dims, data: t.data.iter().map(|v| v / d).collect() })),
                    Value::Padded { .. } => Err("divides a padded tensor; only a Conv may read one".into()),
                }
            }
            "Neg" => match self.input(node, 0)?.clone() {
                Value::Sym(s) => self.set(node, Value::Sym(s.with(s.poly.iter().map(|v| -v).collect(), &out))),
                Value::Const(t) => {
                    self.set(node, Value::Const(Tensor { dims: t.dims, data: t.data.iter().map(|v| -v).collect() }))
                }
                Value::Padded { .. } => Err("negates a padded tensor; only a Conv may read one".into()),
            },
            "Pow" => {
                let Value::Sym(s) = self.input(node, 0)?.clone() else {
                    return Err("raises a constant or padded tensor to a power".into());
                };
                let e = self.constant(node, 1)?.scalar().ok_or("the exponent must be one constant")?;
                if e.fract() != 0.0 || !(1.0..=MAX_DEGREE as f64).contains(&e) {
                    return Err(format!("exponent {e} is not a whole number from 1 to {MAX_DEGREE}"));
                }
                let mut p = vec![1.0];
                for _ in 0..e as usize {
                    p = bounded(poly_mul(&p, &s.poly))?;
                }
                self.set(node, Value::Sym(s.with(p, &out)))
            }
            "Conv" => self.conv(node),
            "ConvTranspose" => self.conv_transpose(node),
            "Gemm" => self.gemm(node),
            "MatMul" => self.matmul(node),
            "AveragePool" | "GlobalAveragePool" => self.avg_pool(node),
            "Flatten" => {
                if attr_int(node, "axis", 1) != 1 {
                    return Err("only axis = 1 (keep the batch dimension) is supported".into());
                }
                self.flatten(node)
            }
            "Reshape" => {
                let target = self.constant(node, 1)?.data.clone();
                let input = self.tensor(node, 0)?;
                let len = self.shape_of(input).len() as f64;
                let ok = matches!(target.as_slice(), [b, n] if (*b == -1.0 || *b == 0.0 || *b == 1.0) && (*n == -1.0 || *n == len) && !(*b == -1.0 && *n == -1.0));
                if !ok {
                    return Err(format!("reshapes to {target:?}; only flattening to (batch, {len}) is supported"));
                }
                self.flatten(node)
            }
            "BatchNormalization" => self.batch_norm(node),
            "Concat" => self.concat(node),
            "Resize" | "Upsample" => self.resize(node),
            "Pad" => self.pad(node),
            "Polynomial" if node.domain == BLINDFOLD_DOMAIN => self.polynomial(node),
            other => Err(format!("{other} is not supported")),
        }
    }

    fn flatten(&mut self, node: &NodeProto) -> Step {
        let input = self.tensor(node, 0)?;
        let t = match self.shape_of(input) {
            Shape::Image { .. } => self.push(&node_name(node), Layer::Flatten, vec![input])?,
            Shape::Vector { .. } => input,
        };
        self.set(node, Value::Sym(Sym::of(t, &Self::output_name(node))))
    }

    fn constant_node(&mut self, node: &NodeProto) -> Step {
        let a = node.attribute.first().ok_or("Constant without a value")?;
        let t = match a.name.as_str() {
            "value" => Tensor::from_proto(a.t.as_ref().ok_or("Constant value is not a tensor")?)?,
            "value_float" => Tensor { dims: vec![], data: vec![f64::from(a.f)] },
            "value_floats" => {
                Tensor { dims: vec![a.floats.len()], data: a.floats.iter().map(|v| f64::from(*v)).collect() }
            }
            "value_int" => Tensor { dims: vec![], data: vec![a.i as f64] },
            "value_ints" => Tensor { dims: vec![a.ints.len()], data: a.ints.iter().map(|v| *v as f64).collect() },
            other => return Err(format!("Constant attribute '{other}' is not supported")),
        };
        self.set(node, Value::Const(t))
    }

    fn mul(&mut self, node: &NodeProto) -> Step {
        let out = Self::output_name(node);
        let (a, b) = (self.input(node, 0)?.clone(), self.input(node, 1)?.clone());
        let v = match (a, b) {
            (Value::Sym(x), Value::Sym(y)) => {
                if x.base != y.base {
                    return Err("multiplies two different tensors; only polynomials of one tensor are supported".into());
                }
                Value::Sym(x.with(bounded(poly_mul(&x.poly, &y.poly))?, &out))
            }
            (Value::Sym(s), Value::Const(c)) | (Value::Const(c), Value::Sym(s)) => match c.scalar() {
                Some(k) => Value::Sym(s.with(trim(s.poly.iter().map(|v| v * k).collect()), &out)),
                None => {
                    let v = Value::Sym(s.clone());
                    let at = self.foldable(node, &v).ok_or_else(|| {
                        format!(
                            "multiplies by a constant of dims {:?} that is not right after a Conv, ConvTranspose, \
                             Gemm or MatMul read by nothing else",
                            c.dims
                        )
                    })?;
                    let scale = self.per_channel(at, &c)?;
                    self.fold_affine(at, Some(&scale), None)?;
                    Value::Sym(Sym::of(s.base, &out))
                }
            },
            (Value::Const(x), Value::Const(y)) => Value::Const(const_binary(&x, &y, |p, q| p * q)?),
            _ => return Err("multiplies a padded tensor; only a Conv may read one".into()),
        };
        self.set(node, v)
    }

    fn add(&mut self, node: &NodeProto, sign: f64) -> Step {
        let out = Self::output_name(node);
        if node.input.len() > 2 {
            // Sum of three or more: the tensors' network Add.
            let inputs = (0..node.input.len()).map(|i| self.tensor(node, i)).collect::<Step<Vec<_>>>()?;
            let t = self.push(&node_name(node), Layer::Add, inputs)?;
            return self.set(node, Value::Sym(Sym::of(t, &out)));
        }
        let (a, b) = (self.input(node, 0)?.clone(), self.input(node, 1)?.clone());
        let v = match (a, b) {
            (Value::Sym(x), Value::Sym(y)) if x.base == y.base => {
                Value::Sym(x.with(poly_add(&x.poly, &y.poly, sign), &out))
            }
            (Value::Sym(x), Value::Sym(y)) => {
                // Two different tensors: a residual connection.
                let left = self.materialize(&x)?;
                let right = if sign < 0.0 {
                    let negated = y.with(y.poly.iter().map(|v| -v).collect(), &format!("{out}/negated"));
                    self.materialize(&negated)?
                } else {
                    self.materialize(&y)?
                };
                let t = self.push(&node_name(node), Layer::Add, vec![left, right])?;
                Value::Sym(Sym::of(t, &out))
            }
            (Value::Sym(s), Value::Const(c)) => match c.scalar() {
                Some(k) => Value::Sym(s.with(poly_add(&s.poly, &[k], sign), &out)),
                None => {
                    let v = Value::Sym(s.clone());
                    let at = self.foldable(node, &v).ok_or_else(|| {
                        format!(
                            "adds a constant of dims {:?} that is not right after a Conv, ConvTranspose, Gemm or \
                             MatMul read by nothing else",
                            c.dims
                        )
                    })?;
                    let shift: Vec<f64> = self.per_channel(at, &c)?.iter().map(|v| sign * v).collect();
                    self.fold_affine(at, None, Some(&shift))?;
                    Value::Sym(Sym::of(s.base, &out))
                }
            },
            (Value::Const(c), Value::Sym(s)) => {
                let neg: Vec<f64> = s.poly.iter().map(|v| sign * v).collect();
                match c.scalar() {
                    Some(k) => Value::Sym(s.with(poly_add(&neg, &[k], 1.0), &out)),
                    None if sign > 0.0 => {
                        let probe = NodeProto { input: node.input[1..].to_vec(), ..NodeProto::default() };
                        let at = self.foldable(&probe, &Value::Sym(s.clone())).ok_or_else(|| {
                            format!(
                                "adds a constant of dims {:?} that is not right after a Conv, ConvTranspose, Gemm or \
                                 MatMul read by nothing else",
                                c.dims
                            )
                        })?;
                        let shift = self.per_channel(at, &c)?;
                        self.fold_affine(at, None, Some(&shift))?;
                        Value::Sym(Sym::of(s.base, &out))
                    }
                    None => return Err("subtracts the image-dependent tensor from a non-scalar constant".into()),
                }
            }
            (Value::Const(x), Value::Const(y)) => Value::Const(const_binary(&x, &y, |p, q| p + sign * q)?),
            _ => return Err("adds to a padded tensor; only a Conv may read one".into()),
        };
        self.set(node, v)
    }

    fn dilations_one(node: &NodeProto) -> Step {
        if attr_ints(node, "dilations").is_some_and(|d| d.iter().any(|v| *v != 1)) {
            return Err("dilated convolution is not supported".into());
        }
        Ok(())
    }

    fn bias(&self, node: &NodeProto, outputs: usize) -> Step<Vec<f64>> {
        match self.optional_constant(node, 2)? {
            Some(b) if b.data.len() == outputs => Ok(b.data.clone()),
            Some(b) => Err(format!("bias has {} values for {outputs} output channels", b.data.len())),
            None => Ok(vec![0.0; outputs]),
        }
    }

    fn conv(&mut self, node: &NodeProto) -> Step {
        let w = self.constant(node, 1)?.clone();
        let [out_channels, per_group, kh, kw] = w.dims[..] else {
            return Err(format!("weights have dims {:?}; a 2-D convolution (O, I, kH, kW) expected", w.dims));
        };
        let groups = usize::try_from(attr_int(node, "group", 1)).map_err(|_| "negative group")?;
        Self::dilations_one(node)?;
        no_auto_pad(node)?;
        if let Some(k) = attr_ints(node, "kernel_shape").filter(|k| k.as_slice() != [kh, kw]) {
            return Err(format!("kernel_shape {k:?} disagrees with the weights {kh}x{kw}"));
        }
        let stride = pair(attr_ints(node, "strides"), 1, "strides")?;
        let mut padding = pads4(attr_ints(node, "pads"))?;
        let bias = self.bias(node, out_channels)?;
        let input = match self.input(node, 0)?.clone() {
            Value::Padded { tensor, pads } => {
                padding.iter_mut().zip(pads).for_each(|(p, extra)| *p += extra);
                tensor
            }
            _ => self.tensor(node, 0)?,
        };
        let conv = Conv2d {
            in_channels: per_group.saturating_mul(groups),
            out_channels,
            kernel: [kh, kw],
            stride,
            padding,
            groups,
            weights: w.data,
            bias,
        };
        let t = self.push(&node_name(node), Layer::Conv2d(conv), vec![input])?;
        self.set(node, Value::Sym(Sym::of(t, &Self::output_name(node))))
    }

    fn conv_transpose(&mut self, node: &NodeProto) -> Step {
        let w = self.constant(node, 1)?.clone();
        let [in_channels, per_group, kh, kw] = w.dims[..] else {
            return Err(format!(
                "weights have dims {:?}; a 2-D transposed convolution (I, O, kH, kW) expected",
                w.dims
            ));
        };
        let groups = usize::try_from(attr_int(node, "group", 1)).map_err(|_| "negative group")?;
        Self::dilations_one(node)?;
        no_auto_pad(node)?;
        if attr(node, "output_shape").is_some() {
            return Err("output_shape is not supported; export pads and output_padding instead".into());
        }
        if let Some(k) = attr_ints(node, "kernel_shape").filter(|k| k.as_slice() != [kh, kw]) {
            return Err(format!("kernel_shape {k:?} disagrees with the weights {kh}x{kw}"));
        }
        let out_channels = per_group.saturating_mul(groups);
        let layer = ConvTranspose2d {
            in_channels,
            out_channels,
            kernel: [kh, kw],
            stride: pair(attr_ints(node, "strides"), 1, "strides")?,
            padding: pads4(attr_ints(node, "pads"))?,
            output_padding: pair(attr_ints(node, "output_padding"), 0, "output_padding")?,
            groups,
            weights: w.data,
            bias: self.bias(node, out_channels)?,
        };
        let input = self.tensor(node, 0)?;
        let t = self.push(&node_name(node), Layer::ConvTranspose2d(layer), vec![input])?;
        self.set(node, Value::Sym(Sym::of(t, &Self::output_name(node))))
    }

    fn gemm(&mut self, node: &NodeProto) -> Step {
        if attr_int(node, "transA", 0) != 0 {
            return Err("transA = 1 is not supported".into());
        }
        let alpha = attr(node, "alpha").map_or(1.0, |a| f64::from(a.f));
        let beta = attr(node, "beta").map_or(1.0, |a| f64::from(a.f));
        let b = self.constant(node, 1)?.clone();
        let [r, c] = b.dims[..] else { return Err(format!("B has dims {:?}; a matrix expected", b.dims)) };
        let trans_b = attr_int(node, "transB", 0) != 0;
        let (inputs, outputs) = if trans_b { (c, r) } else { (r, c) };
        let weights: Vec<f64> = if trans_b {
            b.data.iter().map(|v| alpha * v).collect()
        } else {
            (0..outputs)
                .flat_map(|o| (0..inputs).map(move |i| (o, i)))
                .map(|(o, i)| alpha * b.data[i * outputs + o])
                .collect()
        };
        let bias = match self.optional_constant(node, 2)? {
            None => vec![0.0; outputs],
            Some(c) => match c.data.len() {
                1 => vec![beta * c.data[0]; outputs],
                n if n == outputs => c.data.iter().map(|v| beta * v).collect(),
                n => return Err(format!("C has {n} values for {outputs} outputs")),
            },
        };
        let input = self.tensor(node, 0)?;
        let t = self.push(&node_name(node), Layer::Dense(Dense { inputs, outputs, weights, bias }), vec![input])?;
        self.set(node, Value::Sym(Sym::of(t, &Self::output_name(node))))
    }

    fn matmul(&mut self, node: &NodeProto) -> Step {
        let b = self.constant(node, 1)?.clone();
        let [inputs, outputs] = b.dims[..] else { return Err(format!("B has dims {:?}; a matrix expected", b.dims)) };
        let weights =
            (0..outputs).flat_map(|o| (0..inputs).map(move |i| (o, i))).map(|(o, i)| b.data[i * outputs + o]).collect();
        let input = self.tensor(node, 0)?;
        let dense = Dense { inputs, outputs, weights, bias: vec![0.0; outputs] };
        let t = self.push(&node_name(node), Layer::Dense(dense), vec![input])?;
        self.set(node, Value::Sym(Sym::of(t, &Self::output_name(node))))
    }

    fn avg_pool(&mut self, node: &NodeProto) -> Step {
        let input = self.tensor(node, 0)?;
        let (kernel, stride) = if node.op_type == "GlobalAveragePool" {
            let Shape::Image { height, width, .. } = self.shape_of(input) else {
                return Err("input is not an image".into());
            };
            ([height, width], [1, 1])
        } else {
            let kernel = pair(attr_ints(node, "kernel_shape"), 0, "kernel_shape")?;
            let stride = pair(attr_ints(node, "strides"), 1, "strides")?;
            if attr_ints(node, "pads").is_some_and(|p| p.iter().any(|v| *v != 0)) {
                return Err("padded average pooling is not supported; pad the previous convolution instead".into());
            }
            no_auto_pad(node)?;
            if attr_int(node, "ceil_mode", 0) != 0
                && let Shape::Image { height, width, .. } = self.shape_of(input)
            {
                let exact = |n: usize, k: usize, s: usize| n >= k && (n - k).is_multiple_of(s.max(1));
                if !(exact(height, kernel[0], stride[0]) && exact(width, kernel[1], stride[1])) {
                    return Err("ceil_mode = 1 with a partial last window is not supported".into());
                }
            }
            (kernel, stride)
        };
        let t = self.push(&node_name(node), Layer::AvgPool2d(AvgPool2d { kernel, stride }), vec![input])?;
        self.set(node, Value::Sym(Sym::of(t, &Self::output_name(node))))
    }

    fn batch_norm(&mut self, node: &NodeProto) -> Step {
        let x = self.input(node, 0)?.clone();
        let at = self.foldable(node, &x).ok_or(
            "BatchNormalization must directly follow a Conv, ConvTranspose, Gemm or MatMul read by nothing else, to \
             be folded into it",
        )?;
        let eps = attr(node, "epsilon").map_or(1e-5, |a| f64::from(a.f));
        let [gamma, beta, mean, var] = [1, 2, 3, 4].map(|i| self.constant(node, i).map(|t| t.data.clone()));
        let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
        let n = match self.shapes[at + 1] {
            Shape::Image { channels, .. } => channels,
            Shape::Vector { len } => len,
        };
        if [&gamma, &beta, &mean, &var].iter().any(|v| v.len() != n) {
            return Err(format!("statistics do not have one value per channel ({n})"));
        }
        let scale: Vec<f64> = (0..n).map(|o| gamma[o] / (var[o] + eps).sqrt()).collect();
        let shift: Vec<f64> = (0..n).map(|o| beta[o] - mean[o] * scale[o]).collect();
        self.fold_affine(at, Some(&scale), Some(&shift))?;
        let Value::Sym(sym) = x else { return Err("internal: folded a non-tensor".into()) };
        self.set(node, Value::Sym(Sym::of(sym.base, &Self::output_name(node))))
    }

    fn concat(&mut self, node: &NodeProto) -> Step {
        let inputs = (0..node.input.len()).map(|i| self.tensor(node, i)).collect::<Step<Vec<_>>>()?;
        let rank = match inputs.first().map(|&t| self.shape_of(t)) {
            Some(Shape::Image { .. }) => 4,
            _ => 2,
        };
        let axis = attr_int(node, "axis", 1);
        if axis != 1 && axis != 1 - rank {
            return Err(format!("concatenates along axis {axis}; only the channels (axis 1) are supported"));
        }
        let t = self.push(&node_name(node), Layer::Concat, inputs)?;
        self.set(node, Value::Sym(Sym::of(t, &Self::output_name(node))))
    }

    /// `Resize` (opset ≥ 10) and the legacy `Upsample`: nearest-neighbour by whole factors,
    /// with a coordinate mode that maps output pixel Y to input pixel Y / s exactly.
    fn resize(&mut self, node: &NodeProto) -> Step {
        let mode = attr_string(node, "mode").unwrap_or_else(|| "nearest".into());
        if mode != "nearest" {
            return Err(format!("mode {mode} is not supported; only nearest-neighbour up-sampling is"));
        }
        let input = self.tensor(node, 0)?;
        let Shape::Image { channels, height, width } = self.shape_of(input) else {
            return Err("input is not an image".into());
        };
        let (scales, sizes) = if node.op_type == "Upsample" {
            let scales = match attr(node, "scales") {
                Some(a) => a.floats.iter().map(|v| f64::from(*v)).collect(),
                None => self.constant(node, 1)?.data.clone(),
            };
            (scales, Vec::new())
        } else {
            let scales = self.optional_constant(node, 2)?.map(|t| t.data.clone()).unwrap_or_default();
            let sizes = self.optional_constant(node, 3)?.map(|t| t.data.clone()).unwrap_or_default();
            (scales, sizes)
        };
        let factors: [f64; 2] = match (scales.as_slice(), sizes.as_slice()) {
            ([n, c, h, w], []) if *n == 1.0 && *c == 1.0 => [*h, *w],
            ([], [_, c, h, w]) if *c == channels as f64 => [*h / height as f64, *w / width as f64],
            _ => {
                return Err(format!(
                    "scales {scales:?} / sizes {sizes:?}: only (1, 1, s_h, s_w) scales or sizes on the height and width \
                     are supported"
                ));
            }
        };
        let scale = [0, 1].map(|axis| factors[axis] as usize);
        if factors.iter().zip(&scale).any(|(f, s)| *f != *s as f64 || !(1..=64).contains(s)) {
            return Err(format!("scales {factors:?} are not whole factors from 1 to 64"));
        }
        if node.op_type == "Resize" {
            let transform = attr_string(node, "coordinate_transformation_mode").unwrap_or_else(|| "half_pixel".into());
            let rounding = attr_string(node, "nearest_mode").unwrap_or_else(|| "round_prefer_floor".into());
            for (axis, n) in [height, width].into_iter().enumerate() {
                if !replicates(&transform, &rounding, n, scale[axis]) {
                    return Err(format!(
                        "coordinate_transformation_mode {transform} with nearest_mode {rounding} does not repeat each \
                         pixel {} times; use asymmetric with floor",
                        scale[axis]
                    ));
                }
            }
        }
        let t = self.push(&node_name(node), Layer::Upsample(Upsample { scale }), vec![input])?;
        self.set(node, Value::Sym(Sym::of(t, &Self::output_name(node))))
    }

    fn pad(&mut self, node: &NodeProto) -> Step {
        let mode = attr_string(node, "mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(format!("mode {mode} is not supported; only zero padding is"));
        }
        let (pads, value) = match attr_ints(node, "pads") {
            Some(pads) => {
                (pads.iter().map(|&p| p as f64).collect(), attr(node, "value").map_or(0.0, |a| f64::from(a.f)))
            }
            None => {
                let pads = self.constant(node, 1)?.data.clone();
                let value = self.optional_constant(node, 2)?.and_then(Tensor::scalar).unwrap_or(0.0);
                (pads, value)
            }
        };
        if node.input.get(3).is_some_and(|n| !n.is_empty()) {
            return Err("the axes input is not supported; pad all four axes".into());
        }
        if value != 0.0 {
            return Err(format!("pads with {value}; only zeros are supported"));
        }
        let pads: [f64; 8] =
            pads.try_into().map_err(|p: Vec<f64>| format!("{} pads; 8 expected (N, C, H, W)", p.len()))?;
        let [n0, c0, t, l, n1, c1, b, r] = pads;
        if [n0, c0, n1, c1] != [0.0; 4] || [t, l, b, r].iter().any(|p| *p < 0.0 || p.fract() != 0.0 || *p > 65535.0) {
            return Err(format!("pads {pads:?}: only non-negative padding of the height and width is supported"));
        }
        let tensor = self.tensor(node, 0)?;
        self.set(node, Value::Padded { tensor, pads: [t as usize, l as usize, b as usize, r as usize] })
    }

    fn polynomial(&mut self, node: &NodeProto) -> Step {
        let coefficients: Vec<f64> = attr(node, "coefficients")
            .map(|a| a.floats.iter().map(|v| f64::from(*v)).collect())
            .ok_or("has no coefficients attribute")?;
        let basis = match attr_string(node, "basis").as_deref() {
            None | Some("power") => Basis::Power,
            Some("chebyshev") => Basis::Chebyshev,
            Some(other) => return Err(format!("basis {other:?} is not power or chebyshev")),
        };
        let interval = match attr(node, "interval").map(|a| a.floats.as_slice()) {
            None => None,
            Some([lo, hi]) => Some([f64::from(*lo), f64::from(*hi)]),
            Some(other) => return Err(format!("interval has {} values; [lo, hi] expected", other.len())),
        };
        let poly = Polynomial { basis, coefficients, interval };
        poly.check()?;
        let input = self.tensor(node, 0)?;
        let t = self.push(&node_name(node), Layer::Activation(poly), vec![input])?;
        self.set(node, Value::Sym(Sym::of(t, &Self::output_name(node))))
    }
}

/// Whether ONNX Resize's nearest sampling with these modes maps every output index Y of an
/// axis of `n` pixels up-sampled `scale` times to input Y / scale.
fn replicates(transform: &str, rounding: &str, n: usize, scale: usize) -> bool {
    let out = n * scale;
    (0..out).all(|y| {
        let (y, s) = (y as f64, scale as f64);
        let x = match transform {
            "asymmetric" => y / s,
            "half_pixel" => (y + 0.5) / s - 0.5,
            "pytorch_half_pixel" if out > 1 => (y + 0.5) / s - 0.5,
            "pytorch_half_pixel" => 0.0,
            "tf_half_pixel_for_nn" => (y + 0.5) / s,
            "align_corners" if out > 1 => y * (n as f64 - 1.0) / (out as f64 - 1.0),
            "align_corners" => 0.0,
            _ => return false,
        };
        let i = match rounding {
            "floor" => x.floor(),
            "ceil" => x.ceil(),
            "round_prefer_floor" if x.fract().abs() == 0.5 => x.floor(),
            "round_prefer_ceil" if x.fract().abs() == 0.5 => x.ceil(),
            "round_prefer_floor" | "round_prefer_ceil" => x.round(),
            _ => return false,
        };
        i.clamp(0.0, n as f64 - 1.0) as usize == (y as usize) / scale
    })
}

fn const_binary(x: &Tensor, y: &Tensor, f: impl Fn(f64, f64) -> f64) -> Step<Tensor> {
    match (x.scalar(), y.scalar()) {
        (_, Some(k)) => Ok(Tensor { dims: x.dims.clone(), data: x.data.iter().map(|v| f(*v, k)).collect() }),
        (Some(k), _) => Ok(Tensor { dims: y.dims.clone(), data: y.data.iter().map(|v| f(k, *v)).collect() }),
        _ if x.dims == y.dims => {
            Ok(Tensor { dims: x.dims.clone(), data: x.data.iter().zip(&y.data).map(|(a, b)| f(*a, *b)).collect() })
        }
        _ => Err(format!("combines constants of dims {:?} and {:?} (broadcasting is not supported)", x.dims, y.dims)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn polynomial_algebra() {
        assert_eq!(poly_mul(&identity(), &identity()), vec![0.0, 0.0, 1.0]);
        assert_eq!(poly_add(&[0.0, 0.0, 1.0], &[0.0, 1.0], -1.0), vec![0.0, -1.0, 1.0]);
        assert_eq!(trim(vec![1.0, 0.0, 0.0]), vec![1.0]);
    }

    use onnx_protobuf::{GraphProto, TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto, type_proto};

    /// A float tensor's name and shape, as a graph's input or output declares it.
    pub(crate) fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
        let mut shape = TensorShapeProto::new();
        for d in dims {
            let mut dim = tensor_shape_proto::Dimension::new();
            dim.value = Some(tensor_shape_proto::dimension::Value::DimValue(*d));
            shape.dim.push(dim);
        }
        let mut tensor = type_proto::Tensor::new();
        tensor.elem_type = 1;
        tensor.shape = Some(shape).into();
        let mut ty = TypeProto::new();
        ty.value = Some(type_proto::Value::TensorType(tensor));
        let mut v = ValueInfoProto::new();
        v.name = name.into();
        v.type_ = Some(ty).into();
        v
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = output.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        n
    }

    fn matrix(name: &str, rows: usize, cols: usize) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = 1;
        t.dims = vec![rows as i64, cols as i64];
        t.float_data = (0..rows * cols).map(|i| i as f32 * 0.1).collect();
        t
    }

    fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, output: &str) -> Vec<u8> {
        let mut g = GraphProto::new();
        g.node = nodes;
        g.initializer = inits;
        g.input.push(value_info("x", &[1, 4]));
        g.output.push(value_info(output, &[1, 4]));
        let mut m = ModelProto::new();
        m.graph = Some(g).into();
        m.write_to_bytes().unwrap()
    }

    #[test]
    fn repeated_squaring_is_refused_before_it_grows() {
        let mut nodes = vec![node("Mul", &["x", "x"], "s0")];
        for i in 1..40 {
            nodes.push(node("Mul", &[&format!("s{}", i - 1), &format!("s{}", i - 1)], &format!("s{i}")));
        }
        let err = import(&model(nodes, vec![], "s39")).unwrap_err().to_string();
        assert!(err.contains("node 's3'") && err.contains("degree 16"), "{err}");
    }

    #[test]
    fn a_skip_connection_imports_as_an_add_node() {
        let nodes = vec![node("MatMul", &["x", "w"], "y"), node("Add", &["y", "x"], "z")];
        let net = import(&model(nodes, vec![matrix("w", 4, 4)], "z")).unwrap();
        assert!(matches!(net.nodes()[1].layer, Layer::Add), "{}", net.summary());
        assert_eq!(net.nodes()[1].inputs, vec![TensorId::of_node(0), TensorId::INPUT]);
        let y = net.forward(&[1.0, 0.0, 0.0, 0.0]).unwrap();
        assert!((y[0] - 1.0).abs() < 1e-6 && (y[1] - 0.1).abs() < 1e-6, "{y:?}");
    }

    #[test]
    fn a_bias_is_not_folded_into_a_node_that_something_else_reads() {
        let mut bias = matrix("b", 1, 4);
        bias.dims = vec![4];
        let nodes =
            vec![node("MatMul", &["x", "w"], "y"), node("Add", &["y", "b"], "z"), node("Add", &["z", "y"], "s")];
        let err = import(&model(nodes, vec![matrix("w", 4, 4), bias], "s")).unwrap_err().to_string();
        assert!(err.contains("node 'z'") && err.contains("read by nothing else"), "{err}");
    }

    #[test]
    fn resize_modes_that_repeat_pixels_are_recognised() {
        assert!(replicates("asymmetric", "floor", 4, 2));
        assert!(replicates("half_pixel", "round_prefer_floor", 4, 2));
        assert!(replicates("half_pixel", "round_prefer_floor", 5, 3));
        assert!(!replicates("half_pixel", "floor", 5, 3));
        assert!(!replicates("align_corners", "round_prefer_floor", 3, 3));
    }

    #[test]
    fn matmul_add_pow_import_as_dense_and_square() {
        let mut bias = matrix("b", 1, 4);
        bias.dims = vec![4];
        let mut two = TensorProto::new();
        two.name = "two".into();
        two.data_type = 1;
        two.float_data = vec![2.0];
        let nodes =
            vec![node("MatMul", &["x", "w"], "y"), node("Add", &["y", "b"], "z"), node("Pow", &["z", "two"], "p")];
        let net = import(&model(nodes, vec![matrix("w", 4, 4), bias, two], "p")).unwrap();
        assert_eq!(net.nodes().len(), 2);
        let Layer::Dense(d) = &net.nodes()[0].layer else { panic!("{}", net.summary()) };
        assert!((d.bias[3] - 0.3).abs() < 1e-6 && (d.weights[1] - 0.4).abs() < 1e-6, "{d:?}");
        assert_eq!(net.nodes()[1].layer, Layer::Activation(Polynomial::square()));
        let y = net.forward(&[1.0, 0.0, 0.0, 0.0]).unwrap();
        assert!((y[1] - (0.1f64 + 0.1).powi(2)).abs() < 1e-6, "{y:?}");
    }

    #[test]
    fn garbage_is_not_an_onnx_model() {
        assert!(matches!(import(b"\xff\xff\xff not protobuf"), Err(Error::OnnxDecode(_))));
    }
}
