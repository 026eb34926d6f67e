//! ONNX import: turns an exported graph into a [`Network`], or refuses it node by node.
//!
//! The graph is read with the `onnx-protobuf` message types. Import walks the nodes in their
//! (topological) order and tracks every tensor symbolically: a constant (initializer or
//! `Constant` node), or a polynomial of the current chain tensor. Element-wise `Mul`, `Add`,
//! `Sub`, `Div` by a constant, `Neg`, `Pow` and `Identity` only grow that polynomial, so any
//! arrangement of them (`x*x`, `Pow(x, 2)`, `a*x*x + b*x + c`, …) becomes one `Activation`
//! layer when a structural operator (Conv, Gemm, MatMul, AveragePool, Flatten, Reshape)
//! consumes it. BatchNormalization and a bias `Add` right after Conv/Gemm/MatMul fold into that
//! layer. Branches (a tensor feeding two structural operators, or two different tensors
//! combined) are refused: the IR is a chain.

use std::collections::HashMap;
use std::path::Path;

use onnx_protobuf::{Message, ModelProto, NodeProto, TensorProto};

use crate::error::Refusal;
use crate::ir::{AvgPool2d, Conv2d, Dense, Layer, MAX_TENSOR_VALUES, Network, Polynomial, Shape};
use crate::{Error, Result};

/// Highest polynomial degree an activation may reach.
pub const MAX_DEGREE: usize = 8;

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
    im.shape = input_shape(input).map_err(|reason| one("graph input", &input.name, reason))?;
    im.input = im.shape;
    im.values.insert(input.name.clone(), Value::Sym(Sym { head: 0, poly: identity() }));

    for node in &graph.node {
        im.node(node).map_err(|reason| one(&node_name(node), &node.op_type, reason))?;
    }

    let [output] = graph.output.as_slice() else {
        return Err(one("graph", "output", format!("has {} outputs; exactly one is supported", graph.output.len())));
    };
    match im.values.get(&output.name).cloned() {
        Some(Value::Sym(sym)) => im.take(&sym).map_err(|reason| one("graph output", &output.name, reason))?,
        _ => return Err(one("graph output", &output.name, "does not depend on the input".into())),
    }
    Network::new(im.input, im.layers)
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
    let reason = match op {
        "Relu" | "LeakyRelu" | "PRelu" | "Elu" | "Selu" | "Celu" | "Gelu" | "Sigmoid" | "HardSigmoid" | "Tanh"
        | "Softplus" | "Softsign" | "HardSwish" | "Mish" | "Exp" | "Log" | "Abs" | "Sign" | "Clip" | "Sqrt"
        | "Reciprocal" | "Erf" => {
            "is not a polynomial; use x^2 or a quadratic activation (a*x^2 + b*x + c)".to_string()
        }
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
        "Conv" | "Gemm" | "MatMul" | "Add" | "Sub" | "Mul" | "Div" | "Neg" | "Pow" | "AveragePool"
        | "GlobalAveragePool" | "Flatten" | "Reshape" | "BatchNormalization" | "Identity" | "Dropout" | "Constant" => {
            return None;
        }
        _ => "is not supported by the HE importer (supported: Conv, Gemm, MatMul, Add, Sub, Mul, Div by a constant, \
              Neg, Pow, AveragePool, GlobalAveragePool, Flatten, Reshape, BatchNormalization, Identity, Dropout, \
              Constant)"
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

/// A polynomial of the chain tensor as it was at version `head`.
#[derive(Debug, Clone)]
struct Sym {
    head: usize,
    poly: Vec<f64>,
}

#[derive(Debug, Clone)]
enum Value {
    Const(Tensor),
    Sym(Sym),
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
        return Err(format!("builds a polynomial of degree {} (at most {MAX_DEGREE} is supported)", p.len() - 1));
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

#[derive(Debug)]
struct Importer {
    values: HashMap<String, Value>,
    layers: Vec<Layer>,
    input: Shape,
    /// Shape of the chain tensor.
    shape: Shape,
    /// Version of the chain tensor; bumped by every layer pushed or folded into.
    head: usize,
    /// Whether a structural operator already consumed the current version.
    consumed: bool,
}

impl Default for Importer {
    fn default() -> Self {
        let shape = Shape::Vector { len: 1 };
        Self { values: HashMap::new(), layers: Vec::new(), input: shape, shape, head: 0, consumed: false }
    }
}

type Step<T = ()> = std::result::Result<T, String>;

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a onnx_protobuf::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<usize>> {
    attr(node, name).map(|a| a.ints.iter().map(|v| usize::try_from(*v).unwrap_or(usize::MAX)).collect())
}

fn pair(v: Option<Vec<usize>>, default: usize, what: &str) -> Step<[usize; 2]> {
    match v.as_deref() {
        None => Ok([default; 2]),
        Some([a, b]) if *a < 1 << 16 && *b < 1 << 16 => Ok([*a, *b]),
        Some(other) => Err(format!("{what} {other:?}: two small values expected")),
    }
}

impl Importer {
    fn get(&self, name: &str) -> Step<&Value> {
        self.values.get(name).ok_or_else(|| format!("input '{name}' is not produced by any earlier node"))
    }

    fn input(&self, node: &NodeProto, i: usize) -> Step<&Value> {
        match node.input.get(i).filter(|n| !n.is_empty()) {
            Some(name) => self.get(name),
            None => Err(format!("missing input {i}")),
        }
    }

    fn constant(&self, node: &NodeProto, i: usize) -> Step<&Tensor> {
        match self.input(node, i)? {
            Value::Const(t) => Ok(t),
            Value::Sym(_) => Err(format!("input {i} must be a constant (weights), but it depends on the image")),
        }
    }

    fn set(&mut self, node: &NodeProto, v: Value) -> Step {
        let out = node.output.first().ok_or("the node has no output")?;
        self.values.insert(out.clone(), v);
        Ok(())
    }

    fn check_head(&self, sym: &Sym) -> Step {
        if sym.head != self.head {
            return Err(
                "uses an earlier tensor of the chain again (a branch or skip connection); the model must be a \
                        single chain of layers"
                    .into(),
            );
        }
        Ok(())
    }

    /// Consumes `sym` as the input of a structural layer: its polynomial becomes an Activation.
    fn take(&mut self, sym: &Sym) -> Step {
        self.check_head(sym)?;
        if self.consumed {
            return Err("the tensor feeds two layers (a branch); the model must be a single chain of layers".into());
        }
        if sym.poly != identity() {
            if sym.poly.len() > MAX_DEGREE + 1 {
                return Err(format!("the activation has degree {} (at most {MAX_DEGREE})", sym.poly.len() - 1));
            }
            self.push(Layer::Activation(Polynomial { coefficients: sym.poly.clone() }))?;
        }
        self.consumed = true;
        Ok(())
    }

    fn push(&mut self, layer: Layer) -> Step {
        self.shape = layer.output_shape(self.shape)?;
        self.layers.push(layer);
        self.head += 1;
        self.consumed = false;
        Ok(())
    }

    /// The chain tensor as input of a structural layer, materialising any pending polynomial.
    fn chain_input(&mut self, node: &NodeProto) -> Step {
        match self.input(node, 0)?.clone() {
            Value::Sym(sym) => self.take(&sym),
            Value::Const(_) => Err("input 0 is a constant; it must depend on the image".into()),
        }
    }

    fn output_chain(&mut self, node: &NodeProto) -> Step {
        let head = self.head;
        self.set(node, Value::Sym(Sym { head, poly: identity() }))
    }

    /// The last layer, when `v` is its raw output (so a bias or batch norm can fold into it).
    fn foldable(&self, v: &Value) -> Option<usize> {
        match v {
            Value::Sym(s) if s.head == self.head && !self.consumed && s.poly == identity() => {
                match self.layers.last() {
                    Some(Layer::Conv2d(_) | Layer::Dense(_)) => Some(self.layers.len() - 1),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Adds a per-channel (Conv) or per-output (Dense) vector to the last layer's bias.
    fn fold_bias(&mut self, at: usize, c: &Tensor, sign: f64) -> Step {
        let is_conv = matches!(self.layers[at], Layer::Conv2d(_));
        let bias = match &mut self.layers[at] {
            Layer::Conv2d(conv) => &mut conv.bias,
            Layer::Dense(d) => &mut d.bias,
            _ => return Err("internal: fold target is not linear".into()),
        };
        let n = bias.len();
        let per_output = match c.dims.as_slice() {
            // ONNX broadcasts from the last axis: a vector of length C only lines up with the
            // channels of a (N, C) dense output; a convolution needs (C, 1, 1).
            [m] | [1, m] if *m == n && !is_conv => true,
            [m, 1, 1] | [1, m, 1, 1] if *m == n && is_conv => true,
            _ => false,
        };
        if !per_output {
            return Err(format!(
                "adds a constant of dims {:?}, which is not one value per channel/output ({n})",
                c.dims
            ));
        }
        for (b, v) in bias.iter_mut().zip(&c.data) {
            *b += sign * v;
        }
        self.head += 1;
        self.output_chain_after_fold()
    }

    fn output_chain_after_fold(&mut self) -> Step {
        self.consumed = false;
        Ok(())
    }

    fn node(&mut self, node: &NodeProto) -> Step {
        match node.op_type.as_str() {
            "Constant" => self.constant_node(node),
            "Identity" | "Dropout" => {
                let v = self.input(node, 0)?.clone();
                self.set(node, v)
            }
            "Mul" => self.mul(node),
            "Add" => self.add(node, 1.0),
            "Sub" => self.add(node, -1.0),
            "Div" => {
                let Value::Const(c) = self.input(node, 1)?.clone() else {
                    return Err("divides by a value that depends on the image, which is not a polynomial".into());
                };
                let d =
                    c.scalar().filter(|d| *d != 0.0).ok_or("divides by a constant that is not one non-zero value")?;
                match self.input(node, 0)?.clone() {
                    Value::Sym(s) => {
                        self.set(node, Value::Sym(Sym { head: s.head, poly: s.poly.iter().map(|v| v / d).collect() }))
                    }
                    Value::Const(t) => self
                        .set(node, Value::Const(Tensor { dims: t.dims, data: t.data.iter().map(|v| v / d).collect() })),
                }
            }
            "Neg" => match self.input(node, 0)?.clone() {
                Value::Sym(s) => {
                    self.set(node, Value::Sym(Sym { head: s.head, poly: s.poly.iter().map(|v| -v).collect() }))
                }
                Value::Const(t) => {
                    self.set(node, Value::Const(Tensor { dims: t.dims, data: t.data.iter().map(|v| -v).collect() }))
                }
            },
            "Pow" => {
                let Value::Sym(s) = self.input(node, 0)?.clone() else {
                    return Err("raises a constant to a power".into());
                };
                let e = self.constant(node, 1)?.scalar().ok_or("the exponent must be one constant")?;
                if e.fract() != 0.0 || !(1.0..=MAX_DEGREE as f64).contains(&e) {
                    return Err(format!("exponent {e} is not a whole number from 1 to {MAX_DEGREE}"));
                }
                let mut p = vec![1.0];
                for _ in 0..e as usize {
                    p = bounded(poly_mul(&p, &s.poly))?;
                }
                self.set(node, Value::Sym(Sym { head: s.head, poly: p }))
            }
            "Conv" => self.conv(node),
            "Gemm" => self.gemm(node),
            "MatMul" => self.matmul(node),
            "AveragePool" | "GlobalAveragePool" => self.avg_pool(node),
            "Flatten" => {
                if attr_int(node, "axis", 1) != 1 {
                    return Err("only axis = 1 (keep the batch dimension) is supported".into());
                }
                self.chain_input(node)?;
                if matches!(self.shape, Shape::Image { .. }) {
                    self.push(Layer::Flatten)?;
                }
                self.output_chain(node)
            }
            "Reshape" => {
                let target = self.constant(node, 1)?.data.clone();
                let len = self.shape.len() as f64;
                let ok = matches!(target.as_slice(), [b, n] if (*b == -1.0 || *b == 0.0 || *b == 1.0) && (*n == -1.0 || *n == len) && !(*b == -1.0 && *n == -1.0));
                if !ok {
                    return Err(format!("reshapes to {target:?}; only flattening to (batch, {len}) is supported"));
                }
                self.chain_input(node)?;
                if matches!(self.shape, Shape::Image { .. }) {
                    self.push(Layer::Flatten)?;
                }
                self.output_chain(node)
            }
            "BatchNormalization" => self.batch_norm(node),
            other => Err(format!("{other} is not supported")),
        }
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
        let (a, b) = (self.input(node, 0)?.clone(), self.input(node, 1)?.clone());
        let v = match (a, b) {
            (Value::Sym(x), Value::Sym(y)) => {
                if x.head != y.head {
                    return Err(
                        "multiplies two different tensors of the chain; only polynomials of one tensor are supported"
                            .into(),
                    );
                }
                self.check_head(&x)?;
                Value::Sym(Sym { head: x.head, poly: bounded(poly_mul(&x.poly, &y.poly))? })
            }
            (Value::Sym(s), Value::Const(c)) | (Value::Const(c), Value::Sym(s)) => {
                let k = c.scalar().ok_or_else(|| {
                    format!("multiplies by a constant of dims {:?}; only a single scalar factor is supported", c.dims)
                })?;
                Value::Sym(Sym { head: s.head, poly: trim(s.poly.iter().map(|v| v * k).collect()) })
            }
            (Value::Const(x), Value::Const(y)) => Value::Const(const_binary(&x, &y, |p, q| p * q)?),
        };
        self.set(node, v)
    }

    fn add(&mut self, node: &NodeProto, sign: f64) -> Step {
        let (a, b) = (self.input(node, 0)?.clone(), self.input(node, 1)?.clone());
        let v = match (a, b) {
            (Value::Sym(x), Value::Sym(y)) => {
                if x.head != y.head {
                    return Err(
                        "adds two different tensors of the chain (a skip connection); the model must be a single chain"
                            .into(),
                    );
                }
                Value::Sym(Sym { head: x.head, poly: poly_add(&x.poly, &y.poly, sign) })
            }
            (Value::Sym(s), Value::Const(c)) => match c.scalar() {
                Some(k) => Value::Sym(Sym { head: s.head, poly: poly_add(&s.poly, &[k], sign) }),
                None => {
                    let at = self.foldable(&Value::Sym(s)).ok_or_else(|| {
                        format!("adds a constant of dims {:?} that is not right after a Conv, Gemm or MatMul", c.dims)
                    })?;
                    self.fold_bias(at, &c, sign)?;
                    Value::Sym(Sym { head: self.head, poly: identity() })
                }
            },
            (Value::Const(c), Value::Sym(s)) => {
                let neg: Vec<f64> = s.poly.iter().map(|v| sign * v).collect();
                match c.scalar() {
                    Some(k) => Value::Sym(Sym { head: s.head, poly: poly_add(&neg, &[k], 1.0) }),
                    None if sign > 0.0 => {
                        let at = self.foldable(&Value::Sym(s)).ok_or_else(|| {
                            format!(
                                "adds a constant of dims {:?} that is not right after a Conv, Gemm or MatMul",
                                c.dims
                            )
                        })?;
                        self.fold_bias(at, &c, 1.0)?;
                        Value::Sym(Sym { head: self.head, poly: identity() })
                    }
                    None => return Err("subtracts the image-dependent tensor from a non-scalar constant".into()),
                }
            }
            (Value::Const(x), Value::Const(y)) => Value::Const(const_binary(&x, &y, |p, q| p + sign * q)?),
        };
        self.set(node, v)
    }

    fn conv(&mut self, node: &NodeProto) -> Step {
        let w = self.constant(node, 1)?.clone();
        let b = match node.input.get(2).filter(|n| !n.is_empty()) {
            Some(_) => Some(self.constant(node, 2)?.clone()),
            None => None,
        };
        let [out_channels, in_channels, kh, kw] = w.dims[..] else {
            return Err(format!("weights have dims {:?}; a 2-D convolution (O, I, kH, kW) expected", w.dims));
        };
        if attr_int(node, "group", 1) != 1 {
            return Err("grouped or depthwise convolution (group != 1) is not supported".into());
        }
        if attr_ints(node, "dilations").is_some_and(|d| d.iter().any(|v| *v != 1)) {
            return Err("dilated convolution is not supported".into());
        }
        let auto_pad = attr(node, "auto_pad").map(|a| String::from_utf8_lossy(&a.s).into_owned()).unwrap_or_default();
        if !(auto_pad.is_empty() || auto_pad == "NOTSET" || auto_pad == "VALID") {
            return Err(format!("auto_pad {auto_pad} is not supported; export explicit pads"));
        }
        if let Some(k) = attr_ints(node, "kernel_shape").filter(|k| k.as_slice() != [kh, kw]) {
            return Err(format!("kernel_shape {k:?} disagrees with the weights {kh}x{kw}"));
        }
        let stride = pair(attr_ints(node, "strides"), 1, "strides")?;
        let padding = match attr_ints(node, "pads").as_deref() {
            None => [0; 4],
            // ONNX order: top, left, bottom, right.
            Some([t, l, b, r]) if [t, l, b, r].iter().all(|p| **p < 1 << 16) => [*t, *l, *b, *r],
            Some(other) => return Err(format!("pads {other:?}: four small values expected")),
        };
        let bias = match b {
            Some(b) if b.data.len() == out_channels => b.data,
            Some(b) => return Err(format!("bias has {} values for {out_channels} output channels", b.data.len())),
            None => vec![0.0; out_channels],
        };
        self.chain_input(node)?;
        self.push(Layer::Conv2d(Conv2d {
            in_channels,
            out_channels,
            kernel: [kh, kw],
            stride,
            padding,
            weights: w.data,
            bias,
        }))?;
        self.output_chain(node)
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
        let bias = match node.input.get(2).filter(|n| !n.is_empty()) {
            None => vec![0.0; outputs],
            Some(_) => {
                let c = self.constant(node, 2)?;
                match c.data.len() {
                    1 => vec![beta * c.data[0]; outputs],
                    n if n == outputs => c.data.iter().map(|v| beta * v).collect(),
                    n => return Err(format!("C has {n} values for {outputs} outputs")),
                }
            }
        };
        self.chain_input(node)?;
        self.push(Layer::Dense(Dense { inputs, outputs, weights, bias }))?;
        self.output_chain(node)
    }

    fn matmul(&mut self, node: &NodeProto) -> Step {
        let b = self.constant(node, 1)?.clone();
        let [inputs, outputs] = b.dims[..] else { return Err(format!("B has dims {:?}; a matrix expected", b.dims)) };
        let weights =
            (0..outputs).flat_map(|o| (0..inputs).map(move |i| (o, i))).map(|(o, i)| b.data[i * outputs + o]).collect();
        self.chain_input(node)?;
        self.push(Layer::Dense(Dense { inputs, outputs, weights, bias: vec![0.0; outputs] }))?;
        self.output_chain(node)
    }

    fn avg_pool(&mut self, node: &NodeProto) -> Step {
        self.chain_input(node)?;
        let (kernel, stride) = if node.op_type == "GlobalAveragePool" {
            let Shape::Image { height, width, .. } = self.shape else { return Err("input is not an image".into()) };
            ([height, width], [1, 1])
        } else {
            let kernel = pair(attr_ints(node, "kernel_shape"), 0, "kernel_shape")?;
            let stride = pair(attr_ints(node, "strides"), 1, "strides")?;
            if attr_ints(node, "pads").is_some_and(|p| p.iter().any(|v| *v != 0)) {
                return Err("padded average pooling is not supported; pad the previous convolution instead".into());
            }
            let auto_pad =
                attr(node, "auto_pad").map(|a| String::from_utf8_lossy(&a.s).into_owned()).unwrap_or_default();
            if !(auto_pad.is_empty() || auto_pad == "NOTSET" || auto_pad == "VALID") {
                return Err(format!("auto_pad {auto_pad} is not supported"));
            }
            if attr_int(node, "ceil_mode", 0) != 0
                && let Shape::Image { height, width, .. } = self.shape
            {
                let exact = |n: usize, k: usize, s: usize| n >= k && (n - k).is_multiple_of(s.max(1));
                if !(exact(height, kernel[0], stride[0]) && exact(width, kernel[1], stride[1])) {
                    return Err("ceil_mode = 1 with a partial last window is not supported".into());
                }
            }
            (kernel, stride)
        };
        self.push(Layer::AvgPool2d(AvgPool2d { kernel, stride }))?;
        self.output_chain(node)
    }

    fn batch_norm(&mut self, node: &NodeProto) -> Step {
        let x = self.input(node, 0)?.clone();
        let at =
            self.foldable(&x).ok_or("BatchNormalization must directly follow a Conv, Gemm or MatMul to be folded")?;
        let eps = attr(node, "epsilon").map_or(1e-5, |a| f64::from(a.f));
        let [gamma, beta, mean, var] = [1, 2, 3, 4].map(|i| self.constant(node, i).map(|t| t.data.clone()));
        let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
        let (weights, bias, per) = match &mut self.layers[at] {
            Layer::Conv2d(c) => {
                let per = c.in_channels * c.kernel[0] * c.kernel[1];
                (&mut c.weights, &mut c.bias, per)
            }
            Layer::Dense(d) => (&mut d.weights, &mut d.bias, d.inputs),
            _ => return Err("internal: fold target is not linear".into()),
        };
        let n = bias.len();
        if [&gamma, &beta, &mean, &var].iter().any(|v| v.len() != n) {
            return Err(format!("statistics do not have one value per channel ({n})"));
        }
        for o in 0..n {
            let scale = gamma[o] / (var[o] + eps).sqrt();
            for w in &mut weights[o * per..(o + 1) * per] {
                *w *= scale;
            }
            bias[o] = (bias[o] - mean[o]) * scale + beta[o];
        }
        self.head += 1;
        self.consumed = false;
        self.output_chain(node)
    }
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
mod tests {
    use super::*;

    #[test]
    fn polynomial_algebra() {
        assert_eq!(poly_mul(&identity(), &identity()), vec![0.0, 0.0, 1.0]);
        assert_eq!(poly_add(&[0.0, 0.0, 1.0], &[0.0, 1.0], -1.0), vec![0.0, -1.0, 1.0]);
        assert_eq!(trim(vec![1.0, 0.0, 0.0]), vec![1.0]);
    }

    use onnx_protobuf::{GraphProto, TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto, type_proto};

    fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
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
    fn skip_connections_are_refused() {
        let nodes = vec![node("MatMul", &["x", "w"], "y"), node("Add", &["y", "x"], "z")];
        let err = import(&model(nodes, vec![matrix("w", 4, 4)], "z")).unwrap_err().to_string();
        assert!(err.contains("node 'z'") && err.contains("single chain"), "{err}");
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
        assert_eq!(net.layers().len(), 2);
        let Layer::Dense(d) = &net.layers()[0] else { panic!("{}", net.summary()) };
        assert!((d.bias[3] - 0.3).abs() < 1e-6 && (d.weights[1] - 0.4).abs() < 1e-6, "{d:?}");
        assert_eq!(net.layers()[1], Layer::Activation(Polynomial::square()));
        let y = net.forward(&[1.0, 0.0, 0.0, 0.0]).unwrap();
        assert!((y[1] - (0.1f64 + 0.1).powi(2)).abs() < 1e-6, "{y:?}");
    }

    #[test]
    fn garbage_is_not_an_onnx_model() {
        assert!(matches!(import(b"\xff\xff\xff not protobuf"), Err(Error::OnnxDecode(_))));
    }
}
