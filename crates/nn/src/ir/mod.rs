//! The model IR: a network is a directed acyclic graph of nodes over named tensors, with
//! shapes checked at construction and the multiplicative depth each node costs under CKKS
//! estimated.
//!
//! Tensor 0 is the network's input (one image, no batch dimension); node k writes tensor k + 1
//! and reads only tensors written before it, so the node order is a topological order.

mod layer;
mod polynomial;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use layer::{AvgPool2d, Conv2d, ConvTranspose2d, Dense, Layer, Upsample};
pub use polynomial::{Basis, MAX_DEGREE, Polynomial};

use crate::{Error, Result};

/// Largest number of values any tensor in a network may hold (input, weights or activations).
pub const MAX_TENSOR_VALUES: usize = 1 << 26;

/// Largest number of nodes in a network.
pub const MAX_NODES: usize = 4096;

/// The name of the input tensor in serialized networks and summaries.
pub const INPUT_NAME: &str = "input";

/// The shape of one tensor (one image; no batch dimension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shape {
    /// Feature maps in channel-major (CHW) order.
    Image {
        /// Number of channels (feature maps).
        channels: usize,
        /// Rows.
        height: usize,
        /// Columns.
        width: usize,
    },
    /// A flat vector.
    Vector {
        /// Number of values.
        len: usize,
    },
}

impl Shape {
    /// Number of values in a tensor of this shape.
    pub fn len(&self) -> usize {
        match *self {
            Shape::Image { channels, height, width } => channels.saturating_mul(height).saturating_mul(width),
            Shape::Vector { len } => len,
        }
    }

    /// Whether the shape holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Image { channels, height, width } => write!(f, "{channels}x{height}x{width}"),
            Shape::Vector { len } => write!(f, "{len}"),
        }
    }
}

/// A tensor of a network: its input, or the output of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(usize);

impl TensorId {
    /// The network's input.
    pub const INPUT: TensorId = TensorId(0);

    /// The output of node `index`.
    pub fn of_node(index: usize) -> Self {
        TensorId(index + 1)
    }

    /// The node that writes this tensor (none for the input).
    pub fn node(self) -> Option<usize> {
        self.0.checked_sub(1)
    }

    /// A dense index over all tensors (the input is 0).
    pub fn index(self) -> usize {
        self.0
    }
}

/// One step of a network: a layer applied to earlier tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Unique name (an ONNX node's name, or its position in a chain): what messages cite.
    pub name: String,
    /// What it computes.
    pub layer: Layer,
    /// The tensors it reads, in order.
    pub inputs: Vec<TensorId>,
}

/// A network: an input shape and a graph of nodes, one of whose tensors is the output.
///
/// Built only through [`Network::new`] (a chain) or [`Network::graph`] (also when
/// deserialized), so the graph is acyclic, every node is used and every shape fits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NetworkSpec", into = "NetworkSpec")]
pub struct Network {
    input: Shape,
    nodes: Vec<Node>,
    /// Shape of every tensor, indexed by [`TensorId::index`].
    shapes: Vec<Shape>,
    output: TensorId,
}

/// The serialized form of a [`Network`] (checked on the way in): tensors are named by the
/// node that writes them, the input by [`INPUT_NAME`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The input shape.
    pub input: Shape,
    /// The nodes in a topological order.
    pub nodes: Vec<NodeSpec>,
    /// The name of the output tensor.
    pub output: String,
}

/// A serialized node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The node's name.
    pub name: String,
    /// The names of the tensors it reads.
    pub inputs: Vec<String>,
    /// The layer.
    pub layer: Layer,
}

impl TryFrom<NetworkSpec> for Network {
    type Error = Error;
    fn try_from(spec: NetworkSpec) -> Result<Self> {
        let mut ids: HashMap<String, TensorId> = HashMap::from([(INPUT_NAME.to_owned(), TensorId::INPUT)]);
        let mut nodes = Vec::with_capacity(spec.nodes.len());
        for (index, node) in spec.nodes.into_iter().enumerate() {
            let inputs = node
                .inputs
                .iter()
                .map(|name| {
                    ids.get(name).copied().ok_or_else(|| Error::Shape {
                        node: node.name.clone(),
                        layer: node.layer.to_string(),
                        reason: format!("reads '{name}', which no earlier node writes"),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            ids.insert(node.name.clone(), TensorId::of_node(index));
            nodes.push(Node { name: node.name, layer: node.layer, inputs });
        }
        let output = *ids.get(&spec.output).ok_or_else(|| Error::Shape {
            node: spec.output.clone(),
            layer: "output".into(),
            reason: "the output names no tensor".into(),
        })?;
        Network::graph(spec.input, nodes, output)
    }
}

impl From<Network> for NetworkSpec {
    fn from(n: Network) -> Self {
        let output = n.tensor_name(n.output).to_owned();
        let nodes = n
            .nodes
            .iter()
            .map(|node| NodeSpec {
                name: node.name.clone(),
                inputs: node.inputs.iter().map(|&t| n.tensor_name(t).to_owned()).collect(),
                layer: node.layer.clone(),
            })
            .collect();
        NetworkSpec { input: n.input, nodes, output }
    }
}

impl Network {
    /// A chain: each layer reads the one before; nodes are named by their position.
    pub fn new(input: Shape, layers: Vec<Layer>) -> Result<Self> {
        let nodes: Vec<Node> = layers
            .into_iter()
            .enumerate()
            .map(|(index, layer)| Node {
                name: index.to_string(),
                layer,
                inputs: vec![if index == 0 { TensorId::INPUT } else { TensorId::of_node(index - 1) }],
            })
            .collect();
        let output = nodes.len().checked_sub(1).map_or(TensorId::INPUT, TensorId::of_node);
        Self::graph(input, nodes, output)
    }

    /// A graph: checks that every node reads only earlier tensors, takes as many as its layer
    /// needs, fits their shapes, has finite weights and a unique name, and that every node
    /// contributes to `output`.
    pub fn graph(input: Shape, nodes: Vec<Node>, output: TensorId) -> Result<Self> {
        let fail = |node: &Node, reason: String| Error::Shape {
            node: node.name.clone(),
            layer: node.layer.to_string(),
            reason,
        };
        if input.is_empty() || input.len() > MAX_TENSOR_VALUES {
            return Err(Error::Shape {
                node: INPUT_NAME.into(),
                layer: "input".into(),
                reason: format!("input shape {input} is empty or exceeds {MAX_TENSOR_VALUES} values"),
            });
        }
        if nodes.len() > MAX_NODES {
            return Err(Error::Shape {
                node: INPUT_NAME.into(),
                layer: "graph".into(),
                reason: format!("{} nodes (at most {MAX_NODES})", nodes.len()),
            });
        }
        let mut shapes = Vec::with_capacity(nodes.len() + 1);
        shapes.push(input);
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (index, node) in nodes.iter().enumerate() {
            if node.name.is_empty() || node.name == INPUT_NAME || names.insert(&node.name, index).is_some() {
                return Err(fail(node, "its name is empty, 'input' or used by another node".into()));
            }
            if let Some(late) = node.inputs.iter().find(|t| t.index() > index) {
                return Err(fail(node, format!("reads tensor {} which is not written before it", late.index())));
            }
            if node.layer.parameters().any(|w| !w.is_finite()) {
                return Err(fail(node, "has a weight that is not finite".into()));
            }
            let inputs: Vec<Shape> = node.inputs.iter().map(|t| shapes[t.index()]).collect();
            let shape = node.layer.output_shape(&inputs).map_err(|reason| fail(node, reason))?;
            shapes.push(shape);
        }
        if output.index() >= shapes.len() {
            return Err(Error::Shape {
                node: "output".into(),
                layer: "output".into(),
                reason: format!("the output is tensor {}, but the network has {}", output.index(), shapes.len()),
            });
        }
        let network = Self { input, nodes, shapes, output };
        let used = network.contributes();
        if let Some(dead) = network.nodes.iter().enumerate().find(|(i, _)| !used[*i]) {
            return Err(fail(dead.1, "its output never reaches the network's output".into()));
        }
        Ok(network)
    }

    /// Which nodes the output depends on.
    fn contributes(&self) -> Vec<bool> {
        let mut used = vec![false; self.nodes.len()];
        let mut stack = vec![self.output];
        while let Some(tensor) = stack.pop() {
            if let Some(node) = tensor.node().filter(|&n| !used[n]) {
                used[node] = true;
                stack.extend(&self.nodes[node].inputs);
            }
        }
        used
    }

    /// The input shape (one image).
    pub fn input(&self) -> Shape {
        self.input
    }

    /// The output shape.
    pub fn output(&self) -> Shape {
        self.shapes[self.output.index()]
    }

    /// The output tensor.
    pub fn output_tensor(&self) -> TensorId {
        self.output
    }

    /// The nodes in a topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The shape of a tensor.
    pub fn shape(&self, tensor: TensorId) -> Shape {
        self.shapes[tensor.index()]
    }

    /// The name of a tensor: its node's, or [`INPUT_NAME`].
    pub fn tensor_name(&self, tensor: TensorId) -> &str {
        tensor.node().map_or(INPUT_NAME, |n| self.nodes[n].name.as_str())
    }

    /// The nodes that read `tensor`, in order.
    pub fn consumers(&self, tensor: TensorId) -> Vec<usize> {
        self.nodes.iter().enumerate().filter(|(_, node)| node.inputs.contains(&tensor)).map(|(i, _)| i).collect()
    }

    /// Whether every node reads exactly the one before it (the input for the first).
    pub fn is_chain(&self) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .all(|(i, node)| node.inputs == [if i == 0 { TensorId::INPUT } else { TensorId::of_node(i - 1) }])
            && self.output == TensorId::of_node(self.nodes.len().saturating_sub(1))
    }

    /// The estimated multiplicative depth (levels) of each node under CKKS. The compiler's plan
    /// is exact; this is the IR's own count, used to describe models and check manifests.
    ///
    /// - Conv2d, ConvTranspose2d and Dense multiply by plaintext weights: 1 level.
    /// - Flatten, Add, Concat and Upsample: 0.
    /// - AvgPool2d is a sum times 1/(kh·kw): 0 when its consumers (through pools, flattens
    ///   and up-samplings) are weighted or joins (the factor folds into their weights or their
    ///   alignment), else 1.
    /// - Activation of degree 2, `a x² + b x + c = a (x + b/2a)² + c'`: 1 level when it reads a
    ///   weighted node directly (the shift folds into its bias) and a weighted node follows (the
    ///   factor and constant fold into its weights), or when it is exactly `x²`; otherwise 2.
    ///   Degree 1 or 0: 0 when a weighted node follows, else 1. Degree d ≥ 3 (Chebyshev basis,
    ///   baby-step giant-step): ⌈log2(d + 1)⌉, plus 1 when it reads neither a weighted node
    ///   nor a residual add directly (mapping its interval onto [−1, 1] then costs a
    ///   multiplication).
    pub fn levels(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .map(|i| match &self.nodes[i].layer {
                Layer::Conv2d(_) | Layer::ConvTranspose2d(_) | Layer::Dense(_) => 1,
                Layer::Flatten | Layer::Add | Layer::Concat | Layer::Upsample(_) => 0,
                Layer::AvgPool2d(_) => usize::from(!self.weighted_after(i)),
                Layer::Activation(p) => match p.degree() {
                    0 | 1 => usize::from(!self.weighted_after(i)),
                    2 if p.to_power() == Polynomial::square()
                        || (self.weighted_before(i) && self.weighted_after(i)) =>
                    {
                        1
                    }
                    2 => 2,
                    d => {
                        (usize::BITS - d.leading_zeros()) as usize
                            + usize::from(!self.weighted_before(i) && !self.reads_residual_add(i))
                    }
                },
            })
            .collect()
    }

    /// Whether every path from node `i`'s output reaches a weighted node (or a join, whose
    /// alignment takes the factor) through pools, flattens and up-samplings only.
    fn weighted_after(&self, i: usize) -> bool {
        let consumers = self.consumers(TensorId::of_node(i));
        !consumers.is_empty()
            && consumers.iter().all(|&c| match &self.nodes[c].layer {
                layer if layer.is_weighted() => true,
                Layer::Add | Layer::Concat => true,
                Layer::Flatten | Layer::AvgPool2d(_) | Layer::Upsample(_) => self.weighted_after(c),
                _ => false,
            })
    }

    /// Whether node `i` is the only reader of a residual add (whose branches can take a scalar
    /// map before they are added).
    fn reads_residual_add(&self, i: usize) -> bool {
        let tensor = self.nodes[i].inputs[0];
        tensor.node().is_some_and(|n| matches!(self.nodes[n].layer, Layer::Add)) && self.consumers(tensor).len() == 1
    }

    /// Whether node `i` reads a weighted node (through flattens) whose only consumer it is.
    fn weighted_before(&self, i: usize) -> bool {
        let mut tensor = self.nodes[i].inputs[0];
        while let Some(node) = tensor.node() {
            if self.consumers(tensor).len() != 1 {
                return false;
            }
            match &self.nodes[node].layer {
                layer if layer.is_weighted() => return true,
                Layer::Flatten => tensor = self.nodes[node].inputs[0],
                _ => return false,
            }
        }
        false
    }

    /// The estimated multiplicative depth of the whole network: the most levels on any path
    /// from the input to the output.
    pub fn depth(&self) -> usize {
        let levels = self.levels();
        let mut depth = vec![0usize; self.shapes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            depth[i + 1] = node.inputs.iter().map(|t| depth[t.index()]).max().unwrap_or(0) + levels[i];
        }
        depth[self.output.index()]
    }

    /// A human-readable table: one line per node with its inputs, output shape and levels.
    pub fn summary(&self) -> String {
        let mut out = format!("input {}\n", self.input);
        let chain = self.is_chain();
        for (i, ((node, shape), levels)) in self.nodes.iter().zip(&self.shapes[1..]).zip(self.levels()).enumerate() {
            let reads = if chain {
                String::new()
            } else {
                let names: Vec<&str> = node.inputs.iter().map(|&t| self.tensor_name(t)).collect();
                format!("{} <- {}  ", node.name, names.join(", "))
            };
            out.push_str(&format!("{i:>3}  {reads}{:<52} -> {shape:<10} {levels} level(s)\n", node.layer.to_string()));
        }
        out.push_str(&format!(
            "output {}, multiplicative depth {}, {} parameters\n",
            self.output(),
            self.depth(),
            self.parameters()
        ));
        out
    }

    /// Number of trainable values (weights, biases and polynomial coefficients).
    pub fn parameters(&self) -> usize {
        self.nodes.iter().map(|n| n.layer.parameters().count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Layer {
        Layer::Conv2d(Conv2d {
            in_channels: cin,
            out_channels: cout,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [pad; 4],
            groups: 1,
            weights: vec![0.1; cout * cin * k * k],
            bias: vec![0.0; cout],
        })
    }

    fn dense(i: usize, o: usize) -> Layer {
        Layer::Dense(Dense { inputs: i, outputs: o, weights: vec![0.01; i * o], bias: vec![0.0; o] })
    }

    fn quad() -> Layer {
        Layer::Activation(Polynomial::power(vec![0.0, 1.0, 0.1]))
    }

    fn node(name: &str, layer: Layer, inputs: &[usize]) -> Node {
        Node { name: name.into(), layer, inputs: inputs.iter().map(|&i| TensorId(i)).collect() }
    }

    #[test]
    fn cryptonets_shapes_and_depth() {
        let net = Network::new(
            Shape::Image { channels: 1, height: 28, width: 28 },
            vec![conv(1, 5, 5, 2, 1), quad(), Layer::Flatten, dense(845, 100), quad(), dense(100, 10)],
        )
        .unwrap();
        assert_eq!(net.shape(TensorId::of_node(0)), Shape::Image { channels: 5, height: 13, width: 13 });
        assert_eq!(net.output(), Shape::Vector { len: 10 });
        assert_eq!(net.levels(), vec![1, 1, 0, 1, 1, 1]);
        assert_eq!(net.depth(), 5);
        assert!(net.is_chain());
    }

    #[test]
    fn lenet_pools_fold_into_next_layer() {
        let pool = || Layer::AvgPool2d(AvgPool2d { kernel: [2, 2], stride: [2, 2] });
        let net = Network::new(
            Shape::Image { channels: 1, height: 28, width: 28 },
            vec![
                conv(1, 6, 5, 1, 0),
                quad(),
                pool(),
                conv(6, 16, 5, 1, 0),
                quad(),
                pool(),
                Layer::Flatten,
                dense(256, 120),
                quad(),
                dense(120, 10),
            ],
        )
        .unwrap();
        assert_eq!(net.shape(TensorId::of_node(5)), Shape::Image { channels: 16, height: 4, width: 4 });
        assert_eq!(net.depth(), 7);
    }

    #[test]
    fn trailing_quadratic_and_pool_cost_extra() {
        let net = Network::new(
            Shape::Image { channels: 1, height: 8, width: 8 },
            vec![conv(1, 2, 3, 1, 0), quad(), Layer::AvgPool2d(AvgPool2d { kernel: [2, 2], stride: [2, 2] })],
        )
        .unwrap();
        assert_eq!(net.levels(), vec![1, 2, 1]);
    }

    #[test]
    fn a_residual_block_takes_the_deeper_branch() {
        let image = Shape::Image { channels: 2, height: 6, width: 6 };
        let net = Network::graph(
            image,
            vec![
                node("c1", conv(2, 2, 3, 1, 1), &[0]),
                node("a1", quad(), &[1]),
                node("c2", conv(2, 2, 3, 1, 1), &[2]),
                node("sum", Layer::Add, &[3, 0]),
            ],
            TensorId(4),
        )
        .unwrap();
        assert_eq!(net.output(), image);
        assert_eq!(net.depth(), 3);
        assert!(!net.is_chain());
        let err = Network::graph(image, vec![node("sum", Layer::Add, &[0])], TensorId(1)).unwrap_err().to_string();
        assert!(err.contains("node sum (add)") && err.contains("two or more inputs"), "{err}");
    }

    #[test]
    fn a_u_net_step_concatenates_and_transposes() {
        let net = Network::graph(
            Shape::Image { channels: 2, height: 8, width: 8 },
            vec![
                node("down", Layer::AvgPool2d(AvgPool2d { kernel: [2, 2], stride: [2, 2] }), &[0]),
                node(
                    "up",
                    Layer::ConvTranspose2d(ConvTranspose2d {
                        in_channels: 2,
                        out_channels: 3,
                        kernel: [2, 2],
                        stride: [2, 2],
                        padding: [0; 4],
                        output_padding: [0; 2],
                        groups: 1,
                        weights: vec![0.5; 2 * 3 * 4],
                        bias: vec![0.0; 3],
                    }),
                    &[1],
                ),
                node("skip", Layer::Concat, &[2, 0]),
                node("wide", Layer::Upsample(Upsample { scale: [2, 2] }), &[3]),
            ],
            TensorId(4),
        )
        .unwrap();
        assert_eq!(net.shape(TensorId(2)), Shape::Image { channels: 3, height: 8, width: 8 });
        assert_eq!(net.output(), Shape::Image { channels: 5, height: 16, width: 16 });
    }

    #[test]
    fn graphs_with_cycles_dead_nodes_or_duplicate_names_are_refused() {
        let v = Shape::Vector { len: 4 };
        let late = Network::graph(v, vec![node("a", dense(4, 4), &[1])], TensorId(1)).unwrap_err().to_string();
        assert!(late.contains("not written before it"), "{late}");
        let dead = Network::graph(v, vec![node("a", dense(4, 4), &[0]), node("b", dense(4, 4), &[0])], TensorId(2))
            .unwrap_err()
            .to_string();
        assert!(dead.contains("node a") && dead.contains("never reaches"), "{dead}");
        let twice = Network::graph(v, vec![node("a", dense(4, 4), &[0]), node("a", dense(4, 4), &[1])], TensorId(2))
            .unwrap_err()
            .to_string();
        assert!(twice.contains("used by another node"), "{twice}");
    }

    #[test]
    fn shape_mismatches_are_refused_with_the_node() {
        let input = Shape::Image { channels: 1, height: 28, width: 28 };
        let err = Network::new(input, vec![conv(3, 5, 5, 1, 0)]).unwrap_err().to_string();
        assert!(err.contains("node 0") && err.contains("expects 3 input channels"), "{err}");
        let err = Network::new(input, vec![dense(784, 10)]).unwrap_err().to_string();
        assert!(err.contains("add a Flatten"), "{err}");
        let err = Network::new(input, vec![Layer::Flatten, dense(785, 10)]).unwrap_err().to_string();
        assert!(err.contains("node 1") && err.contains("expects 785 inputs, got 784"), "{err}");
        let err = Network::new(input, vec![conv(1, 1, 29, 1, 0)]).unwrap_err().to_string();
        assert!(err.contains("larger than the padded input"), "{err}");
        let mut bad = conv(1, 1, 3, 1, 0);
        if let Layer::Conv2d(c) = &mut bad {
            c.weights.pop();
        }
        assert!(Network::new(input, vec![bad]).is_err());
    }

    #[test]
    fn depthwise_convolutions_check_their_groups() {
        let input = Shape::Image { channels: 4, height: 6, width: 6 };
        let depthwise = |groups: usize, weights: usize| {
            Layer::Conv2d(Conv2d {
                in_channels: 4,
                out_channels: 4,
                kernel: [3, 3],
                stride: [1, 1],
                padding: [1; 4],
                groups,
                weights: vec![0.1; weights],
                bias: vec![0.0; 4],
            })
        };
        assert!(Network::new(input, vec![depthwise(4, 4 * 9)]).is_ok());
        assert!(Network::new(input, vec![depthwise(4, 4 * 4 * 9)]).is_err());
        assert!(Network::new(input, vec![depthwise(3, 4 * 9)]).is_err());
    }

    #[test]
    fn serde_round_trip_rechecks_shapes() {
        let net = Network::graph(
            Shape::Vector { len: 4 },
            vec![
                node("d", dense(4, 3), &[0]),
                node("sq", Layer::Activation(Polynomial::square()), &[1]),
                node("sum", Layer::Add, &[1, 2]),
            ],
            TensorId(3),
        )
        .unwrap();
        let json = serde_json::to_string(&net).unwrap();
        assert!(json.contains("\"inputs\":[\"d\",\"sq\"]"), "{json}");
        let back: Network = serde_json::from_str(&json).unwrap();
        assert_eq!(back, net);
        let broken = json.replace("\"inputs\":4", "\"inputs\":5");
        assert!(serde_json::from_str::<Network>(&broken).is_err());
    }
}
