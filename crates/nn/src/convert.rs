//! Conversion of a standard network into one Blindfold can evaluate under CKKS
//! (`blindfold model convert`): each non-polynomial activation becomes a Chebyshev
//! approximation on the input range observed on calibration images, widened by a margin;
//! max pooling becomes average pooling when asked; a final softmax is dropped (the client
//! applies it to the decrypted logits).
//!
//! The work is done on the ONNX graph itself, so the converted file keeps every other node as
//! it was: a *probe* copy replaces each activation with an identity `ai.blindfold::Polynomial`
//! node of the same name, imports into the IR, and is evaluated with the exact activation at
//! those nodes (the original network) to measure their input ranges. The converted file is
//! the probe with the fitted polynomials written in, imported again with the strict importer.

use std::collections::HashMap;

use onnx_protobuf::{AttributeProto, Message, ModelProto, NodeProto, OperatorSetIdProto, attribute_proto};
use rayon::prelude::*;

use crate::approximate::{Approximation, Nonlinear, approximate};
use crate::ir::{Layer, Network, Shape, TensorId};
use crate::onnx::BLINDFOLD_DOMAIN;
use crate::{Error, Result};

/// How a network is converted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvertOptions {
    /// Degree of every Chebyshev approximation (each costs ⌈log2(degree + 1)⌉ levels; 31 by
    /// default, measured in `models/README.md`).
    pub degree: usize,
    /// The observed input range of an activation is widened by this fraction of its width on
    /// each side: inputs of unseen images go a little beyond what calibration saw, and an
    /// approximation diverges quickly outside its interval.
    pub margin: f64,
    /// Replace `MaxPool` (and `GlobalMaxPool`) with average pooling of the same window;
    /// otherwise such a network is refused.
    pub replace_maxpool: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self { degree: 31, margin: 0.1, replace_maxpool: false }
    }
}

/// What the probe put in place of an original node.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Replaced {
    Activation(Nonlinear),
    MaxPool,
}

/// A standard network read for conversion: the probe graph and its IR, where each replaced
/// node is known by index.
#[derive(Debug, Clone)]
pub struct StandardNetwork {
    probe: ModelProto,
    network: Network,
    /// IR node index → what it stands for.
    replaced: HashMap<usize, Replaced>,
    /// IR node index → its ONNX node name, for the activations (in IR order).
    activations: Vec<(usize, String)>,
    maxpools: Vec<String>,
    dropped_softmax: Option<String>,
}

/// One converted activation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConvertedActivation {
    /// The ONNX node.
    pub node: String,
    /// The ONNX operator it replaced (`Relu`, `Silu` for a `Sigmoid`·`Mul` pair, …).
    pub function: &'static str,
    /// The smallest and largest input seen on the calibration images.
    pub observed: [f64; 2],
    /// The interval the approximation covers: `observed` widened by the margin.
    pub interval: [f64; 2],
    /// Its largest error on the interval (see [`Approximation::max_error`]).
    pub max_error: f64,
}

/// A converted network.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The converted ONNX model (`ai.blindfold::Polynomial` nodes in the Chebyshev basis).
    pub onnx: Vec<u8>,
    /// It, imported by the strict importer: what the compiler and the reference evaluator see.
    pub network: Network,
    /// Every activation replaced, in graph order.
    pub activations: Vec<ConvertedActivation>,
    /// The `MaxPool` nodes made average pooling.
    pub replaced_maxpools: Vec<String>,
    /// The final `Softmax` dropped, if there was one.
    pub dropped_softmax: Option<String>,
}

/// How often a converted network's activations saw inputs outside their intervals, where the
/// approximations no longer hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct OutOfRange {
    /// Images evaluated.
    pub images: usize,
    /// Images with at least one activation input outside its interval.
    pub images_outside: usize,
    /// Activation inputs evaluated, over all images.
    pub values: u64,
    /// Of those, how many fell outside their interval.
    pub values_outside: u64,
}

fn refused(node: &str, op: &str, reason: impl Into<String>) -> Error {
    Error::Refused { refusals: vec![crate::Refusal { node: node.into(), op: op.into(), reason: reason.into() }] }
}

fn node_name(node: &NodeProto) -> String {
    if !node.name.is_empty() { node.name.clone() } else { node.output.first().cloned().unwrap_or_default() }
}

fn floats(name: &str, values: &[f64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = attribute_proto::AttributeType::FLOATS.into();
    a.floats = values.iter().map(|v| *v as f32).collect();
    a
}

fn string(name: &str, value: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = attribute_proto::AttributeType::STRING.into();
    a.s = value.as_bytes().to_vec();
    a
}

/// An identity `ai.blindfold::Polynomial` node reading `input`, named `name`, writing `output`.
fn placeholder(name: &str, input: &str, output: &str) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = "Polynomial".into();
    n.domain = BLINDFOLD_DOMAIN.into();
    n.name = name.into();
    n.input = vec![input.into()];
    n.output = vec![output.into()];
    n.attribute = vec![floats("coefficients", &[0.0, 1.0])];
    n
}

/// The activation an ONNX node computes, if it is one conversion replaces.
fn nonlinear(node: &NodeProto) -> Result<Option<Nonlinear>> {
    let float = |name: &str, default: f32| node.attribute.iter().find(|a| a.name == name).map_or(default, |a| a.f);
    Ok(Some(match node.op_type.as_str() {
        "Relu" => Nonlinear::Relu,
        "LeakyRelu" => Nonlinear::LeakyRelu { alpha: f64::from(float("alpha", 0.01)) },
        "Sigmoid" => Nonlinear::Sigmoid,
        "Tanh" => Nonlinear::Tanh,
        "Softplus" => Nonlinear::Softplus,
        "HardSwish" => Nonlinear::HardSwish,
        "Gelu" => {
            let approximate = node.attribute.iter().find(|a| a.name == "approximate").map(|a| a.s.clone());
            if approximate.is_some_and(|s| s != b"none") {
                return Err(refused(
                    &node_name(node),
                    "Gelu",
                    "only the exact (erf) GELU is converted, not approximate = tanh",
                ));
            }
            Nonlinear::Gelu
        }
        _ => return Ok(None),
    }))
}

impl StandardNetwork {
    /// Reads an ONNX model with standard activations. Refuses max pooling unless
    /// `replace_maxpool`, and anything the HE importer refuses besides what conversion replaces.
    pub fn read(bytes: &[u8], replace_maxpool: bool) -> Result<Self> {
        let mut probe = ModelProto::parse_from_bytes(bytes).map_err(|e| Error::OnnxDecode(e.to_string()))?;
        let graph = probe.graph.as_mut().ok_or_else(|| Error::OnnxDecode("the model has no graph".into()))?;
        let mut kinds: HashMap<String, Replaced> = HashMap::new();
        let mut maxpools = Vec::new();
        // Every reader of each value, to spot x·sigmoid(x) and a softmax at the end.
        let mut readers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for input in &node.input {
                readers.entry(input.clone()).or_default().push(i);
            }
        }
        let mut dropped_softmax = None;
        if let [output] = graph.output.as_slice()
            && let Some(last) = graph.node.iter().position(|n| n.output.first() == Some(&output.name))
            && matches!(graph.node[last].op_type.as_str(), "Softmax" | "LogSoftmax")
        {
            let softmax = graph.node.remove(last);
            graph.output[0].name = softmax.input[0].clone();
            dropped_softmax = Some(node_name(&softmax));
        }
        let mut removed = vec![false; graph.node.len()];
        let mut nodes = Vec::with_capacity(graph.node.len());
        for i in 0..graph.node.len() {
            if removed[i] {
                continue;
            }
            let node = graph.node[i].clone();
            let name = node_name(&node);
            // SiLU as PyTorch exports it: s = Sigmoid(x), y = Mul(x, s), s read by nothing else.
            if node.op_type == "Sigmoid"
                && let Some(&[mul]) = readers.get(&node.output[0]).map(Vec::as_slice)
                && graph.node[mul].op_type == "Mul"
                && graph.node[mul].input.contains(&node.input[0])
                && graph.node[mul].input.contains(&node.output[0])
            {
                removed[mul] = true;
                let mul_node = &graph.node[mul];
                let mul_name = node_name(mul_node);
                kinds.insert(mul_name.clone(), Replaced::Activation(Nonlinear::Silu));
                nodes.push(placeholder(&mul_name, &node.input[0], &mul_node.output[0]));
                continue;
            }
            if let Some(function) = nonlinear(&node)? {
                kinds.insert(name.clone(), Replaced::Activation(function));
                nodes.push(placeholder(&name, &node.input[0], &node.output[0]));
                continue;
            }
            if matches!(node.op_type.as_str(), "MaxPool" | "GlobalMaxPool") {
                if !replace_maxpool {
                    return Err(refused(
                        &name,
                        &node.op_type,
                        "takes a maximum; pass --replace-maxpool to use average pooling",
                    ));
                }
                let mut pool = node.clone();
                pool.op_type = if node.op_type == "MaxPool" { "AveragePool" } else { "GlobalAveragePool" }.into();
                // Attributes AveragePool does not have.
                pool.attribute.retain(|a| !matches!(a.name.as_str(), "storage_order" | "dilations"));
                if pool.attribute.iter().any(|a| a.name == "pads" && a.ints.iter().any(|p| *p != 0)) {
                    return Err(refused(
                        &name,
                        "MaxPool",
                        "padded max pooling has no average-pooling twin; pad the convolution before it",
                    ));
                }
                kinds.insert(name.clone(), Replaced::MaxPool);
                maxpools.push(name);
                nodes.push(pool);
                continue;
            }
            nodes.push(node);
        }
        graph.node = nodes;
        if !probe.opset_import.iter().any(|o| o.domain == BLINDFOLD_DOMAIN) {
            let mut opset = OperatorSetIdProto::new();
            opset.domain = BLINDFOLD_DOMAIN.into();
            opset.version = 1;
            probe.opset_import.push(opset);
        }
        let bytes = probe.write_to_bytes().map_err(|e| Error::OnnxDecode(e.to_string()))?;
        let network = crate::onnx::import(&bytes)?;
        let mut replaced = HashMap::new();
        let mut activations = Vec::new();
        for (index, node) in network.nodes().iter().enumerate() {
            if let Some(kind) = kinds.get(&node.name) {
                replaced.insert(index, *kind);
                if matches!(kind, Replaced::Activation(_)) {
                    activations.push((index, node.name.clone()));
                }
            }
        }
        Ok(Self { probe, network, replaced, activations, maxpools, dropped_softmax })
    }

    /// The network's input shape.
    pub fn input(&self) -> Shape {
        self.network.input()
    }

    /// The activations conversion replaces.
    pub fn activations(&self) -> usize {
        self.activations.len()
    }

    /// Every tensor of the original network on one image (exact activations, max pooling).
    fn forward_all(&self, input: &[f64]) -> Result<Vec<Vec<f64>>> {
        self.network.forward_all_with(input, &|index, inputs, output| match self.replaced.get(&index)? {
            Replaced::Activation(function) => Some(inputs[0].0.iter().map(|x| function.eval(*x)).collect()),
            Replaced::MaxPool => {
                let Layer::AvgPool2d(pool) = &self.network.nodes()[index].layer else { return None };
                Some(max_pool(pool.kernel, pool.stride, inputs[0].0, inputs[0].1, output))
            }
        })
    }

    /// The original network's outputs for each image (logits: a dropped softmax is not applied).
    pub fn forward_batch(&self, inputs: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
        inputs
            .par_iter()
            .map(|x| {
                let mut all = self.forward_all(x)?;
                Ok(all.swap_remove(self.network.output_tensor().index()))
            })
            .collect()
    }

    /// The smallest and largest input of each activation over `inputs`, in graph order.
    pub fn calibrate(&self, inputs: &[Vec<f64>]) -> Result<Vec<[f64; 2]>> {
        let empty = vec![[f64::INFINITY, f64::NEG_INFINITY]; self.activations.len()];
        let per_image: Vec<Vec<[f64; 2]>> = inputs
            .par_iter()
            .map(|x| {
                let all = self.forward_all(x)?;
                Ok(self
                    .activations
                    .iter()
                    .map(|(index, _)| {
                        let input = self.network.nodes()[*index].inputs[0];
                        all[input.index()]
                            .iter()
                            .fold([f64::INFINITY, f64::NEG_INFINITY], |[lo, hi], v| [lo.min(*v), hi.max(*v)])
                    })
                    .collect())
            })
            .collect::<Result<_>>()?;
        Ok(per_image
            .into_iter()
            .fold(empty, |acc, image| acc.iter().zip(&image).map(|(a, b)| [a[0].min(b[0]), a[1].max(b[1])]).collect()))
    }

    /// The converted network: each activation approximated on its calibrated range `ranges`
    /// (from [`StandardNetwork::calibrate`]) widened by the margin.
    pub fn convert(&self, ranges: &[[f64; 2]], options: ConvertOptions) -> Result<Conversion> {
        if ranges.len() != self.activations.len() {
            return Err(Error::Invariant(format!(
                "{} ranges for {} activations",
                ranges.len(),
                self.activations.len()
            )));
        }
        let mut model = self.probe.clone();
        let graph = model.graph.as_mut().ok_or_else(|| Error::OnnxDecode("the model has no graph".into()))?;
        let mut activations = Vec::new();
        for ((index, name), observed) in self.activations.iter().zip(ranges) {
            let Some(Replaced::Activation(function)) = self.replaced.get(index) else { continue };
            let [lo, hi] = *observed;
            if !(lo.is_finite() && hi.is_finite()) {
                return Err(refused(name, function.name(), "saw no finite input on the calibration images"));
            }
            // A constant input (a dead channel) still needs an interval of some width.
            let width = (hi - lo).max(1e-3 * lo.abs().max(hi.abs()).max(1.0));
            let interval = [lo - options.margin * width, hi + options.margin * width];
            let Approximation { polynomial, max_error, .. } = approximate(*function, options.degree, interval)
                .map_err(|e| refused(name, function.name(), e.to_string()))?;
            let node = graph
                .node
                .iter_mut()
                .find(|n| node_name(n) == *name)
                .ok_or_else(|| Error::Invariant(format!("the probe has no node {name}")))?;
            node.attribute = vec![
                floats("coefficients", &polynomial.coefficients),
                string("basis", "chebyshev"),
                floats("interval", &interval),
            ];
            activations.push(ConvertedActivation {
                node: name.clone(),
                function: function.name(),
                observed: *observed,
                interval,
                max_error,
            });
        }
        let onnx = model.write_to_bytes().map_err(|e| Error::OnnxDecode(e.to_string()))?;
        let network = crate::onnx::import(&onnx)?;
        Ok(Conversion {
            onnx,
            network,
            activations,
            replaced_maxpools: self.maxpools.clone(),
            dropped_softmax: self.dropped_softmax.clone(),
        })
    }
}

/// How often `network`'s Chebyshev activations see inputs outside their intervals on `inputs`.
pub fn out_of_range(network: &Network, inputs: &[Vec<f64>]) -> Result<OutOfRange> {
    let bounded: Vec<(TensorId, [f64; 2])> = network
        .nodes()
        .iter()
        .filter_map(|node| match &node.layer {
            Layer::Activation(p) => p.interval.map(|interval| (node.inputs[0], interval)),
            _ => None,
        })
        .collect();
    inputs
        .par_iter()
        .map(|x| {
            let all = network.forward_all(x)?;
            let (mut values, mut outside) = (0u64, 0u64);
            for (tensor, [lo, hi]) in &bounded {
                let t = &all[tensor.index()];
                values += t.len() as u64;
                outside += t.iter().filter(|v| !(lo..=hi).contains(v)).count() as u64;
            }
            Ok(OutOfRange { images: 1, images_outside: usize::from(outside > 0), values, values_outside: outside })
        })
        .try_reduce(OutOfRange::default, |a, b| {
            Ok(OutOfRange {
                images: a.images + b.images,
                images_outside: a.images_outside + b.images_outside,
                values: a.values + b.values,
                values_outside: a.values_outside + b.values_outside,
            })
        })
}

/// Max pooling without padding (what the probe's average pooling stands for).
fn max_pool(kernel: [usize; 2], stride: [usize; 2], x: &[f64], input: Shape, output: Shape) -> Vec<f64> {
    let (Shape::Image { height: h, width: w, .. }, Shape::Image { channels, height: oh, width: ow }) = (input, output)
    else {
        return x.to_vec();
    };
    let mut y = Vec::with_capacity(channels * oh * ow);
    for c in 0..channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f64::NEG_INFINITY;
                for ky in 0..kernel[0] {
                    for kx in 0..kernel[1] {
                        let (iy, ix) = (oy * stride[0] + ky, ox * stride[1] + kx);
                        if iy < h && ix < w {
                            m = m.max(x[(c * h + iy) * w + ix]);
                        }
                    }
                }
                y.push(m);
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::tests::value_info;
    use onnx_protobuf::{GraphProto, TensorProto};

    fn ints(name: &str, values: &[i64]) -> AttributeProto {
        let mut a = AttributeProto::new();
        a.name = name.into();
        a.type_ = attribute_proto::AttributeType::INTS.into();
        a.ints = values.to_vec();
        a
    }

    fn node(op: &str, inputs: &[&str], output: &str, attributes: Vec<AttributeProto>) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = output.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        n.attribute = attributes;
        n
    }

    /// A tensor of `dims` with deterministic values in about [−0.5, 0.5].
    fn tensor(name: &str, dims: &[i64], seed: u32) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = 1;
        t.dims = dims.to_vec();
        let n: i64 = dims.iter().product();
        t.float_data = (0..n as u32).map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5).collect();
        t
    }

    /// Conv 3×3 (1 → 2 channels, padded) → `activation` → [pool 2×2] → Flatten → Gemm (→ 3) →
    /// Softmax, on a 1×4×4 image. `activation` is an op type, or "Silu" for Sigmoid·Mul.
    fn standard(activation: &str, pool: Option<&str>) -> Vec<u8> {
        let mut nodes = vec![node(
            "Conv",
            &["x", "w", "b"],
            "conv",
            vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
        )];
        if activation == "Silu" {
            nodes.push(node("Sigmoid", &["conv"], "sig", vec![]));
            nodes.push(node("Mul", &["conv", "sig"], "act", vec![]));
        } else {
            nodes.push(node(activation, &["conv"], "act", vec![]));
        }
        let mut features = 32;
        let mut last = "act";
        if let Some(op) = pool {
            nodes.push(node(op, &["act"], "pool", vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])]));
            features = 8;
            last = "pool";
        }
        nodes.push(node("Flatten", &[last], "flat", vec![]));
        nodes.push(node("Gemm", &["flat", "fc", "fb"], "logits", vec![]));
        nodes.push(node("Softmax", &["logits"], "probabilities", vec![]));
        let mut g = GraphProto::new();
        g.node = nodes;
        g.initializer = vec![
            tensor("w", &[2, 1, 3, 3], 1),
            tensor("b", &[2], 2),
            {
                let mut fc = tensor("fc", &[features, 3], 3);
                fc.dims = vec![features, 3];
                fc
            },
            tensor("fb", &[3], 4),
        ];
        g.input.push(value_info("x", &[1, 1, 4, 4]));
        g.output.push(value_info("probabilities", &[1, 3]));
        let mut m = ModelProto::new();
        m.graph = Some(g).into();
        m.write_to_bytes().unwrap()
    }

    fn images(count: usize, scale: f64) -> Vec<Vec<f64>> {
        (0..count).map(|k| (0..16).map(|i| scale * (((k * 31 + i * 17) % 23) as f64 / 11.0 - 1.0)).collect()).collect()
    }

    #[test]
    fn relu_becomes_a_chebyshev_polynomial_and_the_logits_stay_close() {
        let standard = StandardNetwork::read(&standard("Relu", None), false).unwrap();
        assert_eq!(standard.activations(), 1);
        let calibration = images(64, 1.0);
        let ranges = standard.calibrate(&calibration).unwrap();
        let conversion = standard.convert(&ranges, ConvertOptions { degree: 31, ..Default::default() }).unwrap();
        assert_eq!(conversion.dropped_softmax.as_deref(), Some("probabilities"));
        let [activation] = conversion.activations.as_slice() else { panic!("{:?}", conversion.activations) };
        assert_eq!((activation.node.as_str(), activation.function), ("act", "Relu"));
        assert!(activation.interval[0] < activation.observed[0] && activation.interval[1] > activation.observed[1]);
        // The converted file imports with the strict importer: no ReLU, no softmax left.
        assert!(conversion.network.nodes().iter().any(|n| matches!(&n.layer, Layer::Activation(p) if p.degree() > 2)));
        let original = standard.forward_batch(&calibration).unwrap();
        let converted = conversion.network.forward_batch(&calibration).unwrap();
        let worst =
            original.iter().flatten().zip(converted.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 0.1, "largest logit difference {worst}");
        // Seen inputs stay inside the widened intervals; inputs five times larger do not.
        let inside = out_of_range(&conversion.network, &calibration).unwrap();
        assert_eq!((inside.images, inside.values_outside), (64, 0));
        let outside = out_of_range(&conversion.network, &images(8, 5.0)).unwrap();
        assert!(outside.images_outside > 0 && outside.values_outside > 0, "{outside:?}");
    }

    #[test]
    fn max_pooling_is_refused_unless_replaced_and_evaluated_exactly_before() {
        let err = StandardNetwork::read(&standard("Relu", Some("MaxPool")), false).unwrap_err().to_string();
        assert!(err.contains("--replace-maxpool"), "{err}");
        let standard = StandardNetwork::read(&standard("Relu", Some("MaxPool")), true).unwrap();
        let ranges = standard.calibrate(&images(16, 1.0)).unwrap();
        let conversion = standard.convert(&ranges, ConvertOptions::default()).unwrap();
        assert_eq!(conversion.replaced_maxpools, ["pool"]);
        let model = ModelProto::parse_from_bytes(&conversion.onnx).unwrap();
        let ops: Vec<&str> = model.graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Conv", "Polynomial", "AveragePool", "Flatten", "Gemm"]);
        // The original is evaluated with max pooling: it differs from the converted network's
        // average pooling by more than the approximation could explain.
        let image = &images(1, 1.0)[0];
        let all = standard.forward_all(image).unwrap();
        let pooled = &all[3];
        let activated = &all[2];
        for c in 0..2 {
            let window = [0, 1, 4, 5].map(|i| activated[c * 16 + i]);
            assert_eq!(pooled[c * 4], window.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        }
    }

    #[test]
    fn x_times_sigmoid_of_x_converts_as_one_silu() {
        let standard = StandardNetwork::read(&standard("Silu", None), false).unwrap();
        let ranges = standard.calibrate(&images(16, 1.0)).unwrap();
        let conversion = standard.convert(&ranges, ConvertOptions::default()).unwrap();
        let functions: Vec<&str> = conversion.activations.iter().map(|a| a.function).collect();
        assert_eq!(functions, ["Silu"]);
        let original = standard.forward_batch(&images(4, 1.0)).unwrap();
        let converted = conversion.network.forward_batch(&images(4, 1.0)).unwrap();
        for (a, b) in original.iter().flatten().zip(converted.iter().flatten()) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }
}
