//! The model IR: a straight chain of layers over one image, with shapes checked at construction
//! and the multiplicative depth each layer costs under CKKS.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Largest number of values any tensor in a network may hold (input, weights or activations).
pub const MAX_TENSOR_VALUES: usize = 1 << 26;

/// The shape of the tensor between two layers (one image; no batch dimension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// A 2-D convolution by plaintext weights (groups = 1, dilation = 1), with zero padding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Zero padding: top, left, bottom, right.
    pub padding: [usize; 4],
    /// Weights in (out, in, kh, kw) order.
    pub weights: Vec<f64>,
    /// One bias per output channel.
    pub bias: Vec<f64>,
}

/// Average pooling without padding (a linear map: a sum times 1/(kh*kw)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvgPool2d {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
}

/// A dense (fully connected) layer by plaintext weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dense {
    /// Input length.
    pub inputs: usize,
    /// Output length.
    pub outputs: usize,
    /// Weights, row-major (outputs x inputs): output `o` is `sum_i weights[o * inputs + i] * x[i] + bias[o]`.
    pub weights: Vec<f64>,
    /// One bias per output.
    pub bias: Vec<f64>,
}

/// An element-wise polynomial activation `c0 + c1 x + c2 x^2 + …`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Polynomial {
    /// Coefficients, lowest degree first. Trailing zeros are trimmed on import.
    pub coefficients: Vec<f64>,
}

impl Polynomial {
    /// `x^2`.
    pub fn square() -> Self {
        Self { coefficients: vec![0.0, 0.0, 1.0] }
    }

    /// The degree (0 for a constant).
    pub fn degree(&self) -> usize {
        self.coefficients.iter().rposition(|c| *c != 0.0).unwrap_or(0)
    }

    /// The value at `x` (Horner).
    pub fn eval(&self, x: f64) -> f64 {
        self.coefficients.iter().rev().fold(0.0, |acc, c| acc * x + c)
    }
}

impl std::fmt::Display for Polynomial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut terms = Vec::new();
        for (power, c) in self.coefficients.iter().enumerate().rev() {
            if *c == 0.0 {
                continue;
            }
            terms.push(match power {
                0 => format!("{c:.4}"),
                1 => format!("{c:.4}*x"),
                _ => format!("{c:.4}*x^{power}"),
            });
        }
        if terms.is_empty() { write!(f, "0") } else { write!(f, "{}", terms.join(" + ")) }
    }
}

/// One layer of a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Layer {
    /// A convolution.
    Conv2d(Conv2d),
    /// Average pooling.
    AvgPool2d(AvgPool2d),
    /// A dense layer.
    Dense(Dense),
    /// An element-wise polynomial.
    Activation(Polynomial),
    /// Image to vector in CHW order.
    Flatten,
}

impl Layer {
    /// The layer's output shape for `input`, or why the input does not fit.
    pub fn output_shape(&self, input: Shape) -> std::result::Result<Shape, String> {
        let out = match (self, input) {
            (Layer::Conv2d(c), Shape::Image { channels, height, width }) => {
                if c.kernel.contains(&0) || c.stride.contains(&0) {
                    return Err("kernel and stride must be at least 1".into());
                }
                if channels != c.in_channels {
                    return Err(format!("expects {} input channels, got {input}", c.in_channels));
                }
                let expect = c.out_channels.saturating_mul(c.in_channels).saturating_mul(c.kernel[0] * c.kernel[1]);
                if c.weights.len() != expect || c.bias.len() != c.out_channels {
                    return Err(format!(
                        "has {} weights and {} biases, expected {expect} and {}",
                        c.weights.len(),
                        c.bias.len(),
                        c.out_channels
                    ));
                }
                let h = height.saturating_add(c.padding[0]).saturating_add(c.padding[2]);
                let w = width.saturating_add(c.padding[1]).saturating_add(c.padding[3]);
                if h < c.kernel[0] || w < c.kernel[1] {
                    return Err(format!(
                        "kernel {}x{} is larger than the padded input {h}x{w}",
                        c.kernel[0], c.kernel[1]
                    ));
                }
                Shape::Image {
                    channels: c.out_channels,
                    height: (h - c.kernel[0]) / c.stride[0] + 1,
                    width: (w - c.kernel[1]) / c.stride[1] + 1,
                }
            }
            (Layer::AvgPool2d(p), Shape::Image { channels, height, width }) => {
                if p.kernel.contains(&0) || p.stride.contains(&0) {
                    return Err("kernel and stride must be at least 1".into());
                }
                if height < p.kernel[0] || width < p.kernel[1] {
                    return Err(format!("window {}x{} is larger than the input {input}", p.kernel[0], p.kernel[1]));
                }
                Shape::Image {
                    channels,
                    height: (height - p.kernel[0]) / p.stride[0] + 1,
                    width: (width - p.kernel[1]) / p.stride[1] + 1,
                }
            }
            (Layer::Dense(d), Shape::Vector { len }) => {
                if len != d.inputs {
                    return Err(format!("expects {} inputs, got {len}", d.inputs));
                }
                if d.weights.len() != d.inputs.saturating_mul(d.outputs) || d.bias.len() != d.outputs {
                    return Err(format!(
                        "has {} weights and {} biases, expected {} and {}",
                        d.weights.len(),
                        d.bias.len(),
                        d.inputs.saturating_mul(d.outputs),
                        d.outputs
                    ));
                }
                Shape::Vector { len: d.outputs }
            }
            (Layer::Activation(p), shape) => {
                if p.coefficients.is_empty() {
                    return Err("polynomial has no coefficients".into());
                }
                shape
            }
            (Layer::Flatten, shape) => Shape::Vector { len: shape.len() },
            (Layer::Conv2d(_) | Layer::AvgPool2d(_), Shape::Vector { .. }) => {
                return Err(format!("needs an image (CxHxW) input, got a vector of {}", input.len()));
            }
            (Layer::Dense(_), Shape::Image { .. }) => {
                return Err(format!("needs a vector input, got an image {input}; add a Flatten before it"));
            }
        };
        if out.is_empty() || out.len() > MAX_TENSOR_VALUES {
            return Err(format!("output shape {out} is empty or exceeds {MAX_TENSOR_VALUES} values"));
        }
        Ok(out)
    }

    fn weights(&self) -> &[f64] {
        match self {
            Layer::Conv2d(c) => &c.weights,
            Layer::Dense(d) => &d.weights,
            Layer::Activation(p) => &p.coefficients,
            Layer::AvgPool2d(_) | Layer::Flatten => &[],
        }
    }

    fn biases(&self) -> &[f64] {
        match self {
            Layer::Conv2d(c) => &c.bias,
            Layer::Dense(d) => &d.bias,
            _ => &[],
        }
    }

    fn is_linear_by_weights(&self) -> bool {
        matches!(self, Layer::Conv2d(_) | Layer::Dense(_))
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layer::Conv2d(c) => write!(
                f,
                "conv2d {}->{} kernel {}x{} stride {}x{} padding {},{},{},{}",
                c.in_channels,
                c.out_channels,
                c.kernel[0],
                c.kernel[1],
                c.stride[0],
                c.stride[1],
                c.padding[0],
                c.padding[1],
                c.padding[2],
                c.padding[3]
            ),
            Layer::AvgPool2d(p) => {
                write!(f, "avgpool2d kernel {}x{} stride {}x{}", p.kernel[0], p.kernel[1], p.stride[0], p.stride[1])
            }
            Layer::Dense(d) => write!(f, "dense {}->{}", d.inputs, d.outputs),
            Layer::Activation(p) => write!(f, "activation {p}"),
            Layer::Flatten => write!(f, "flatten"),
        }
    }
}

/// A network: an input shape and a chain of layers, each fed by the one before.
///
/// Built only through [`Network::new`] (also when deserialized), so the shapes always fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NetworkSpec", into = "NetworkSpec")]
pub struct Network {
    input: Shape,
    layers: Vec<Layer>,
    shapes: Vec<Shape>,
}

/// The serialized form of a [`Network`] (checked on the way in).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The input shape.
    pub input: Shape,
    /// The layers in order.
    pub layers: Vec<Layer>,
}

impl TryFrom<NetworkSpec> for Network {
    type Error = Error;
    fn try_from(spec: NetworkSpec) -> Result<Self> {
        Network::new(spec.input, spec.layers)
    }
}

impl From<Network> for NetworkSpec {
    fn from(n: Network) -> Self {
        NetworkSpec { input: n.input, layers: n.layers }
    }
}

impl Network {
    /// Checks every layer against the shape it receives and that every weight is finite.
    pub fn new(input: Shape, layers: Vec<Layer>) -> Result<Self> {
        if input.is_empty() || input.len() > MAX_TENSOR_VALUES {
            return Err(Error::Shape {
                index: 0,
                layer: "input".into(),
                reason: format!("input shape {input} is empty or exceeds {MAX_TENSOR_VALUES} values"),
            });
        }
        let mut shapes = Vec::with_capacity(layers.len());
        let mut shape = input;
        for (index, layer) in layers.iter().enumerate() {
            if layer.weights().iter().chain(layer.biases()).any(|w| !w.is_finite()) {
                return Err(Error::Shape {
                    index,
                    layer: layer.to_string(),
                    reason: "has a weight that is not finite".into(),
                });
            }
            shape =
                layer.output_shape(shape).map_err(|reason| Error::Shape { index, layer: layer.to_string(), reason })?;
            shapes.push(shape);
        }
        Ok(Self { input, layers, shapes })
    }

    /// The input shape (one image).
    pub fn input(&self) -> Shape {
        self.input
    }

    /// The output shape.
    pub fn output(&self) -> Shape {
        self.shapes.last().copied().unwrap_or(self.input)
    }

    /// The layers in order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The output shape of each layer.
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    /// The multiplicative depth (levels) each layer consumes under CKKS.
    ///
    /// - Conv2d and Dense multiply by plaintext weights: 1 level.
    /// - Flatten: 0.
    /// - AvgPool2d is a sum times 1/(kh*kw): 0 when a Conv2d or Dense follows (the factor folds
    ///   into its weights), else 1.
    /// - Activation of degree 2, `a x^2 + b x + c = a (x + b/2a)^2 + (c - b^2/4a)`: 1 level when a
    ///   Conv2d/Dense comes directly before (the shift folds into its bias) and one follows (the
    ///   factor and constant fold into its weights and bias), or when it is exactly `x^2`;
    ///   otherwise 2. Degree 1 or 0: 0 when a Conv2d/Dense follows, else 1. Degree d > 2:
    ///   ceil(log2 d) + 1.
    pub fn levels(&self) -> Vec<usize> {
        let n = self.layers.len();
        let linear_after = |i: usize| {
            self.layers[i + 1..]
                .iter()
                .find(|l| !matches!(l, Layer::Flatten | Layer::AvgPool2d(_)))
                .is_some_and(Layer::is_linear_by_weights)
        };
        let linear_before = |i: usize| {
            self.layers[..i]
                .iter()
                .rev()
                .find(|l| !matches!(l, Layer::Flatten))
                .is_some_and(Layer::is_linear_by_weights)
        };
        (0..n)
            .map(|i| match &self.layers[i] {
                Layer::Conv2d(_) | Layer::Dense(_) => 1,
                Layer::Flatten => 0,
                Layer::AvgPool2d(_) => usize::from(!linear_after(i)),
                Layer::Activation(p) => match p.degree() {
                    0 | 1 => usize::from(!linear_after(i)),
                    2 if *p == Polynomial::square() || (linear_before(i) && linear_after(i)) => 1,
                    2 => 2,
                    d => (usize::BITS - (d - 1).leading_zeros()) as usize + 1,
                },
            })
            .collect()
    }

    /// The multiplicative depth of the whole network (the sum of [`Network::levels`]).
    pub fn depth(&self) -> usize {
        self.levels().iter().sum()
    }

    /// A human-readable table: one line per layer with its output shape and levels.
    pub fn summary(&self) -> String {
        let mut out = format!("input {}\n", self.input);
        for (i, ((layer, shape), levels)) in self.layers.iter().zip(&self.shapes).zip(self.levels()).enumerate() {
            out.push_str(&format!("{i:>3}  {layer:<52} -> {shape:<10} {levels} level(s)\n"));
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
        self.layers.iter().map(|l| l.weights().len() + l.biases().len()).sum()
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
            weights: vec![0.1; cout * cin * k * k],
            bias: vec![0.0; cout],
        })
    }

    fn dense(i: usize, o: usize) -> Layer {
        Layer::Dense(Dense { inputs: i, outputs: o, weights: vec![0.01; i * o], bias: vec![0.0; o] })
    }

    fn quad() -> Layer {
        Layer::Activation(Polynomial { coefficients: vec![0.0, 1.0, 0.1] })
    }

    #[test]
    fn cryptonets_shapes_and_depth() {
        let net = Network::new(
            Shape::Image { channels: 1, height: 28, width: 28 },
            vec![conv(1, 5, 5, 2, 1), quad(), Layer::Flatten, dense(845, 100), quad(), dense(100, 10)],
        )
        .unwrap();
        assert_eq!(net.shapes()[0], Shape::Image { channels: 5, height: 13, width: 13 });
        assert_eq!(net.output(), Shape::Vector { len: 10 });
        assert_eq!(net.levels(), vec![1, 1, 0, 1, 1, 1]);
        assert_eq!(net.depth(), 5);
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
        assert_eq!(net.shapes()[5], Shape::Image { channels: 16, height: 4, width: 4 });
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
    fn shape_mismatches_are_refused_with_the_layer() {
        let input = Shape::Image { channels: 1, height: 28, width: 28 };
        let err = Network::new(input, vec![conv(3, 5, 5, 1, 0)]).unwrap_err().to_string();
        assert!(err.contains("layer 0") && err.contains("expects 3 input channels"), "{err}");
        let err = Network::new(input, vec![dense(784, 10)]).unwrap_err().to_string();
        assert!(err.contains("add a Flatten"), "{err}");
        let err = Network::new(input, vec![Layer::Flatten, dense(785, 10)]).unwrap_err().to_string();
        assert!(err.contains("layer 1") && err.contains("expects 785 inputs, got 784"), "{err}");
        let err = Network::new(input, vec![conv(1, 1, 29, 1, 0)]).unwrap_err().to_string();
        assert!(err.contains("larger than the padded input"), "{err}");
        let mut bad = conv(1, 1, 3, 1, 0);
        if let Layer::Conv2d(c) = &mut bad {
            c.weights.pop();
        }
        assert!(Network::new(input, vec![bad]).is_err());
    }

    #[test]
    fn serde_round_trip_rechecks_shapes() {
        let net =
            Network::new(Shape::Vector { len: 4 }, vec![dense(4, 3), Layer::Activation(Polynomial::square())]).unwrap();
        let json = serde_json::to_string(&net).unwrap();
        let back: Network = serde_json::from_str(&json).unwrap();
        assert_eq!(back, net);
        let broken = json.replace("\"inputs\":4", "\"inputs\":5");
        assert!(serde_json::from_str::<Network>(&broken).is_err());
    }

    #[test]
    fn polynomial_degree_and_eval() {
        let p = Polynomial { coefficients: vec![1.0, -2.0, 0.5, 0.0] };
        assert_eq!(p.degree(), 2);
        assert_eq!(p.eval(2.0), 1.0 - 4.0 + 2.0);
    }
}
