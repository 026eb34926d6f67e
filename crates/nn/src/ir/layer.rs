//! The operations a network node can apply, with their shape rules.

use serde::{Deserialize, Serialize};

use super::{MAX_TENSOR_VALUES, Polynomial, Shape};

/// A 2-D convolution by plaintext weights (dilation 1), with zero padding. Channels are split
/// into `groups` independent groups: 1 for an ordinary convolution, `in_channels` (with
/// `out_channels` a multiple of it) for a depthwise one.
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
    /// Channel groups (1 when absent).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub groups: usize,
    /// Weights in (out, in / groups, kh, kw) order.
    pub weights: Vec<f64>,
    /// One bias per output channel.
    pub bias: Vec<f64>,
}

/// A transposed ("fractionally strided") 2-D convolution, the U-Net's up-sampling: input pixel
/// (y, x) adds `w[i, o, ky, kx] · x[i, y, x]` to output pixel (y·s + ky − pad_top,
/// x·s + kx − pad_left). Output size `(H − 1)·s − pad_top − pad_bottom + k + output_padding`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvTranspose2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Rows and columns removed from the output: top, left, bottom, right.
    pub padding: [usize; 4],
    /// Rows and columns added at the bottom and right of the output.
    #[serde(default)]
    pub output_padding: [usize; 2],
    /// Channel groups (1 when absent).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub groups: usize,
    /// Weights in (in, out / groups, kh, kw) order (ONNX's and PyTorch's).
    pub weights: Vec<f64>,
    /// One bias per output channel.
    pub bias: Vec<f64>,
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

/// Average pooling without padding (a linear map: a sum times 1/(kh·kw)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvgPool2d {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
}

/// Nearest-neighbour up-sampling by whole factors: output (c, Y, X) is input (c, Y / s_h,
/// X / s_w).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upsample {
    /// Vertical and horizontal factor, each at least 1.
    pub scale: [usize; 2],
}

/// A dense (fully connected) layer by plaintext weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dense {
    /// Input length.
    pub inputs: usize,
    /// Output length.
    pub outputs: usize,
    /// Weights, row-major (outputs × inputs): output `o` is `Σ_i weights[o·inputs + i]·x[i] + bias[o]`.
    pub weights: Vec<f64>,
    /// One bias per output.
    pub bias: Vec<f64>,
}

/// What a node computes from its input tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Layer {
    /// A convolution (one input).
    Conv2d(Conv2d),
    /// A transposed convolution (one input).
    ConvTranspose2d(ConvTranspose2d),
    /// Average pooling (one input).
    AvgPool2d(AvgPool2d),
    /// Nearest-neighbour up-sampling (one input).
    Upsample(Upsample),
    /// A dense layer (one input, a vector).
    Dense(Dense),
    /// An element-wise polynomial (one input).
    Activation(Polynomial),
    /// Image to vector in CHW order (one input).
    Flatten,
    /// The element-wise sum of two or more tensors of one shape (a residual connection).
    Add,
    /// Two or more images of one height and width stacked along the channels, in input order
    /// (a U-Net's skip connection); or vectors joined end to end.
    Concat,
}

impl Layer {
    /// How many inputs the layer takes: exactly one, or (`None`) two or more.
    pub fn arity(&self) -> Option<usize> {
        match self {
            Layer::Add | Layer::Concat => None,
            _ => Some(1),
        }
    }

    /// The layer's output shape for `inputs`, or why they do not fit.
    pub fn output_shape(&self, inputs: &[Shape]) -> Result<Shape, String> {
        match self.arity() {
            Some(n) if inputs.len() != n => return Err(format!("takes {n} input(s), got {}", inputs.len())),
            None if inputs.len() < 2 => return Err(format!("takes two or more inputs, got {}", inputs.len())),
            _ => {}
        }
        let input = inputs[0];
        let out = match (self, input) {
            (Layer::Conv2d(c), Shape::Image { channels, height, width }) => {
                check_window(c.kernel, c.stride)?;
                check_groups(c.groups, c.in_channels, c.out_channels)?;
                if channels != c.in_channels {
                    return Err(format!("expects {} input channels, got {input}", c.in_channels));
                }
                let per = (c.in_channels / c.groups).saturating_mul(c.kernel[0]).saturating_mul(c.kernel[1]);
                check_weights(&c.weights, &c.bias, c.out_channels.saturating_mul(per), c.out_channels)?;
                let h = height.saturating_add(c.padding[0]).saturating_add(c.padding[2]);
                let w = width.saturating_add(c.padding[1]).saturating_add(c.padding[3]);
                if h < c.kernel[0] || w < c.kernel[1] {
                    return Err(format!(
                        "kernel {}x{} is larger than the padded input {h}x{w}",
                        c.kernel[0], c.kernel[1]
                    ));
                }
                if c.kernel.iter().chain(&c.stride).chain(&c.padding).any(|&v| v > MAX_TENSOR_VALUES) {
                    return Err("kernel, stride or padding out of range".into());
                }
                Shape::Image {
                    channels: c.out_channels,
                    height: (h - c.kernel[0]) / c.stride[0] + 1,
                    width: (w - c.kernel[1]) / c.stride[1] + 1,
                }
            }
            (Layer::ConvTranspose2d(c), Shape::Image { channels, height, width }) => {
                check_window(c.kernel, c.stride)?;
                check_groups(c.groups, c.in_channels, c.out_channels)?;
                if channels != c.in_channels {
                    return Err(format!("expects {} input channels, got {input}", c.in_channels));
                }
                if c.output_padding[0] >= c.stride[0] || c.output_padding[1] >= c.stride[1] {
                    return Err(format!(
                        "output padding {:?} must be below the stride {:?}",
                        c.output_padding, c.stride
                    ));
                }
                let per = (c.out_channels / c.groups).saturating_mul(c.kernel[0]).saturating_mul(c.kernel[1]);
                check_weights(&c.weights, &c.bias, c.in_channels.saturating_mul(per), c.out_channels)?;
                let size = |n: usize, axis: usize| {
                    n.saturating_sub(1)
                        .saturating_mul(c.stride[axis])
                        .saturating_add(c.kernel[axis])
                        .saturating_add(c.output_padding[axis])
                        .checked_sub(c.padding[axis].saturating_add(c.padding[axis + 2]))
                        .filter(|&s| s > 0)
                };
                let (Some(height), Some(width)) = (size(height, 0), size(width, 1)) else {
                    return Err(format!("padding {:?} removes the whole output", c.padding));
                };
                Shape::Image { channels: c.out_channels, height, width }
            }
            (Layer::AvgPool2d(p), Shape::Image { channels, height, width }) => {
                check_window(p.kernel, p.stride)?;
                if height < p.kernel[0] || width < p.kernel[1] {
                    return Err(format!("window {}x{} is larger than the input {input}", p.kernel[0], p.kernel[1]));
                }
                Shape::Image {
                    channels,
                    height: (height - p.kernel[0]) / p.stride[0] + 1,
                    width: (width - p.kernel[1]) / p.stride[1] + 1,
                }
            }
            (Layer::Upsample(u), Shape::Image { channels, height, width }) => {
                if u.scale.contains(&0) || u.scale.iter().any(|&s| s > 64) {
                    return Err(format!("scale {:?} must be whole factors from 1 to 64", u.scale));
                }
                Shape::Image {
                    channels,
                    height: height.saturating_mul(u.scale[0]),
                    width: width.saturating_mul(u.scale[1]),
                }
            }
            (Layer::Dense(d), Shape::Vector { len }) => {
                if len != d.inputs {
                    return Err(format!("expects {} inputs, got {len}", d.inputs));
                }
                check_weights(&d.weights, &d.bias, d.inputs.saturating_mul(d.outputs), d.outputs)?;
                Shape::Vector { len: d.outputs }
            }
            (Layer::Activation(p), shape) => {
                p.check()?;
                shape
            }
            (Layer::Flatten, shape) => Shape::Vector { len: shape.len() },
            (Layer::Add, shape) => {
                if let Some(other) = inputs.iter().find(|s| **s != shape) {
                    return Err(format!("adds tensors of different shapes ({shape} and {other})"));
                }
                shape
            }
            (Layer::Concat, Shape::Image { height, width, .. }) => {
                let mut channels = 0usize;
                for s in inputs {
                    match *s {
                        Shape::Image { channels: c, height: h, width: w } if (h, w) == (height, width) => {
                            channels = channels.saturating_add(c);
                        }
                        other => {
                            return Err(format!(
                                "concatenates channels of images {height}x{width} and {other}; heights and widths must agree"
                            ));
                        }
                    }
                }
                Shape::Image { channels, height, width }
            }
            (Layer::Concat, Shape::Vector { .. }) => {
                let mut len = 0usize;
                for s in inputs {
                    match *s {
                        Shape::Vector { len: l } => len = len.saturating_add(l),
                        other => return Err(format!("joins a vector and an image {other}")),
                    }
                }
                Shape::Vector { len }
            }
            (
                Layer::Conv2d(_) | Layer::ConvTranspose2d(_) | Layer::AvgPool2d(_) | Layer::Upsample(_),
                Shape::Vector { .. },
            ) => {
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

    /// The layer's trainable values: weights, biases and polynomial coefficients.
    pub fn parameters(&self) -> impl Iterator<Item = f64> + '_ {
        let (weights, bias): (&[f64], &[f64]) = match self {
            Layer::Conv2d(c) => (&c.weights, &c.bias),
            Layer::ConvTranspose2d(c) => (&c.weights, &c.bias),
            Layer::Dense(d) => (&d.weights, &d.bias),
            Layer::Activation(p) => (&p.coefficients, &[]),
            Layer::AvgPool2d(_) | Layer::Upsample(_) | Layer::Flatten | Layer::Add | Layer::Concat => (&[], &[]),
        };
        weights.iter().chain(bias).copied()
    }

    /// Whether it multiplies by plaintext weights (a convolution or a dense layer): what the
    /// compiler folds scalar factors and constants into.
    pub fn is_weighted(&self) -> bool {
        matches!(self, Layer::Conv2d(_) | Layer::ConvTranspose2d(_) | Layer::Dense(_))
    }
}

fn check_window(kernel: [usize; 2], stride: [usize; 2]) -> Result<(), String> {
    if kernel.contains(&0) || stride.contains(&0) {
        return Err("kernel and stride must be at least 1".into());
    }
    Ok(())
}

fn check_groups(groups: usize, inputs: usize, outputs: usize) -> Result<(), String> {
    if groups == 0 || !inputs.is_multiple_of(groups) || !outputs.is_multiple_of(groups) {
        return Err(format!("{groups} groups do not divide {inputs} input and {outputs} output channels"));
    }
    Ok(())
}

fn check_weights(weights: &[f64], bias: &[f64], expect: usize, outputs: usize) -> Result<(), String> {
    if weights.len() != expect || bias.len() != outputs {
        return Err(format!(
            "has {} weights and {} biases, expected {expect} and {outputs}",
            weights.len(),
            bias.len()
        ));
    }
    Ok(())
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [k, s] = ["kernel", "stride"];
        match self {
            Layer::Conv2d(c) => {
                write!(
                    f,
                    "conv2d {}->{} {k} {}x{} {s} {}x{} padding {},{},{},{}",
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
                )?;
                if c.groups != 1 {
                    write!(f, " groups {}", c.groups)?;
                }
                Ok(())
            }
            Layer::ConvTranspose2d(c) => {
                write!(
                    f,
                    "conv_transpose2d {}->{} {k} {}x{} {s} {}x{}",
                    c.in_channels, c.out_channels, c.kernel[0], c.kernel[1], c.stride[0], c.stride[1]
                )?;
                if c.padding != [0; 4] || c.output_padding != [0; 2] {
                    write!(
                        f,
                        " padding {},{},{},{} output padding {},{}",
                        c.padding[0],
                        c.padding[1],
                        c.padding[2],
                        c.padding[3],
                        c.output_padding[0],
                        c.output_padding[1]
                    )?;
                }
                if c.groups != 1 {
                    write!(f, " groups {}", c.groups)?;
                }
                Ok(())
            }
            Layer::AvgPool2d(p) => {
                write!(f, "avgpool2d {k} {}x{} {s} {}x{}", p.kernel[0], p.kernel[1], p.stride[0], p.stride[1])
            }
            Layer::Upsample(u) => write!(f, "upsample nearest {}x{}", u.scale[0], u.scale[1]),
            Layer::Dense(d) => write!(f, "dense {}->{}", d.inputs, d.outputs),
            Layer::Activation(p) => write!(f, "activation {p}"),
            Layer::Flatten => write!(f, "flatten"),
            Layer::Add => write!(f, "add"),
            Layer::Concat => write!(f, "concat"),
        }
    }
}
