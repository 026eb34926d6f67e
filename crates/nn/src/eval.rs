//! The plaintext reference evaluator: f64 arithmetic, one image at a time, rayon over images.
//!
//! Every encrypted result is checked against this.

use rayon::prelude::*;

use crate::ir::{AvgPool2d, Conv2d, ConvTranspose2d, Dense, Layer, Network, Shape, TensorId, Upsample};
use crate::{Error, Result};

/// Computes node `index` from its inputs (values and shapes) and its output shape instead of
/// its layer, or declines with `None`.
pub(crate) type NodeOverride<'a> = dyn Fn(usize, &[(&[f64], Shape)], Shape) -> Option<Vec<f64>> + Sync + 'a;

impl Network {
    /// Evaluates the network on one image given in the input shape's CHW order.
    pub fn forward(&self, input: &[f64]) -> Result<Vec<f64>> {
        let mut values = self.forward_all(input)?;
        Ok(values.swap_remove(self.output_tensor().index()))
    }

    /// Every tensor of the network on one image, indexed by [`TensorId::index`]: what the
    /// compiler measures activation ranges and tests intermediate results with.
    pub fn forward_all(&self, input: &[f64]) -> Result<Vec<Vec<f64>>> {
        self.forward_all_with(input, &|_, _, _| None)
    }

    /// [`Network::forward_all`], where `replace(node, inputs, output shape)` may compute a
    /// node instead of its layer: how model conversion evaluates the original network, whose
    /// activations and max pooling the IR stands in for.
    pub(crate) fn forward_all_with(&self, input: &[f64], replace: &NodeOverride<'_>) -> Result<Vec<Vec<f64>>> {
        if input.len() != self.input().len() {
            return Err(Error::InputSize {
                expected: self.input().len(),
                actual: input.len(),
                shape: self.input().to_string(),
            });
        }
        let mut values: Vec<Vec<f64>> = Vec::with_capacity(self.nodes().len() + 1);
        values.push(input.to_vec());
        for (index, node) in self.nodes().iter().enumerate() {
            let inputs: Vec<(&[f64], Shape)> =
                node.inputs.iter().map(|&t| (values[t.index()].as_slice(), self.shape(t))).collect();
            let output = self.shape(TensorId::of_node(index));
            let value = replace(index, &inputs, output).unwrap_or_else(|| apply(&node.layer, &inputs, output));
            values.push(value);
        }
        Ok(values)
    }

    /// Evaluates the network on many images in parallel; results keep the input order.
    pub fn forward_batch<I: AsRef<[f64]> + Sync>(&self, inputs: &[I]) -> Result<Vec<Vec<f64>>> {
        inputs.par_iter().map(|x| self.forward(x.as_ref())).collect()
    }
}

/// Shapes were checked when the network was built, so indexing stays in bounds.
fn apply(layer: &Layer, inputs: &[(&[f64], Shape)], output: Shape) -> Vec<f64> {
    let (x, input) = inputs[0];
    match layer {
        Layer::Conv2d(c) => conv2d(c, x, input, output),
        Layer::ConvTranspose2d(c) => conv_transpose2d(c, x, input, output),
        Layer::AvgPool2d(p) => avg_pool(p, x, input, output),
        Layer::Upsample(u) => upsample(u, x, input, output),
        Layer::Dense(d) => dense(d, x),
        Layer::Activation(p) => x.iter().map(|v| p.eval(*v)).collect(),
        Layer::Flatten => x.to_vec(),
        Layer::Add => {
            let mut sum = x.to_vec();
            for (other, _) in &inputs[1..] {
                sum.iter_mut().zip(*other).for_each(|(s, v)| *s += v);
            }
            sum
        }
        // CHW order: concatenating channels is concatenating the flat tensors.
        Layer::Concat => inputs.iter().flat_map(|(values, _)| values.iter().copied()).collect(),
    }
}

fn dims(shape: Shape) -> (usize, usize, usize) {
    match shape {
        Shape::Image { channels, height, width } => (channels, height, width),
        Shape::Vector { len } => (len, 1, 1),
    }
}

fn conv2d(c: &Conv2d, x: &[f64], input: Shape, output: Shape) -> Vec<f64> {
    let (_, h, w) = dims(input);
    let (cout, oh, ow) = dims(output);
    let [kh, kw] = c.kernel;
    let [sh, sw] = c.stride;
    let (pt, pl) = (c.padding[0], c.padding[1]);
    let (group_in, group_out) = (c.in_channels / c.groups, c.out_channels / c.groups);
    let mut y = vec![0.0; cout * oh * ow];
    for o in 0..cout {
        let first = (o / group_out) * group_in;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = c.bias[o];
                for j in 0..group_in {
                    let i = first + j;
                    for ky in 0..kh {
                        // Row in the unpadded input; padding rows contribute zero.
                        let Some(iy) = (oy * sh + ky).checked_sub(pt).filter(|r| *r < h) else { continue };
                        for kx in 0..kw {
                            let Some(ix) = (ox * sw + kx).checked_sub(pl).filter(|c| *c < w) else { continue };
                            acc += c.weights[((o * group_in + j) * kh + ky) * kw + kx] * x[(i * h + iy) * w + ix];
                        }
                    }
                }
                y[(o * oh + oy) * ow + ox] = acc;
            }
        }
    }
    y
}

fn conv_transpose2d(c: &ConvTranspose2d, x: &[f64], input: Shape, output: Shape) -> Vec<f64> {
    let (cin, h, w) = dims(input);
    let (cout, oh, ow) = dims(output);
    let [kh, kw] = c.kernel;
    let [sh, sw] = c.stride;
    let (pt, pl) = (c.padding[0], c.padding[1]);
    let (group_in, group_out) = (c.in_channels / c.groups, c.out_channels / c.groups);
    let mut y = vec![0.0; cout * oh * ow];
    for o in 0..cout {
        y[o * oh * ow..(o + 1) * oh * ow].iter_mut().for_each(|v| *v = c.bias[o]);
    }
    for i in 0..cin {
        let group = i / group_in;
        for iy in 0..h {
            for ix in 0..w {
                let v = x[(i * h + iy) * w + ix];
                for k in 0..group_out {
                    let o = group * group_out + k;
                    for ky in 0..kh {
                        let Some(oy) = (iy * sh + ky).checked_sub(pt).filter(|r| *r < oh) else { continue };
                        for kx in 0..kw {
                            let Some(ox) = (ix * sw + kx).checked_sub(pl).filter(|c| *c < ow) else { continue };
                            y[(o * oh + oy) * ow + ox] += c.weights[((i * group_out + k) * kh + ky) * kw + kx] * v;
                        }
                    }
                }
            }
        }
    }
    y
}

fn avg_pool(p: &AvgPool2d, x: &[f64], input: Shape, output: Shape) -> Vec<f64> {
    let (_, h, w) = dims(input);
    let (ch, oh, ow) = dims(output);
    let [kh, kw] = p.kernel;
    let scale = 1.0 / (kh * kw) as f64;
    let mut y = vec![0.0; ch * oh * ow];
    for c in 0..ch {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0.0;
                for ky in 0..kh {
                    for kx in 0..kw {
                        acc += x[(c * h + oy * p.stride[0] + ky) * w + ox * p.stride[1] + kx];
                    }
                }
                y[(c * oh + oy) * ow + ox] = acc * scale;
            }
        }
    }
    y
}

fn upsample(u: &Upsample, x: &[f64], input: Shape, output: Shape) -> Vec<f64> {
    let (_, h, w) = dims(input);
    let (ch, oh, ow) = dims(output);
    let mut y = Vec::with_capacity(ch * oh * ow);
    for c in 0..ch {
        for oy in 0..oh {
            for ox in 0..ow {
                y.push(x[(c * h + oy / u.scale[0]) * w + ox / u.scale[1]]);
            }
        }
    }
    y
}

fn dense(d: &Dense, x: &[f64]) -> Vec<f64> {
    d.weights
        .chunks_exact(d.inputs)
        .zip(&d.bias)
        .map(|(row, b)| b + row.iter().zip(x).map(|(w, v)| w * v).sum::<f64>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Node, Polynomial};

    #[test]
    fn conv_with_padding_and_stride_matches_hand_computation() {
        // 1x3x3 input 1..9, 2x2 kernel of ones, stride 2, padding 1 on every side -> 1x2x2.
        let net = Network::new(
            Shape::Image { channels: 1, height: 3, width: 3 },
            vec![Layer::Conv2d(Conv2d {
                in_channels: 1,
                out_channels: 1,
                kernel: [2, 2],
                stride: [2, 2],
                padding: [1, 1, 1, 1],
                groups: 1,
                weights: vec![1.0; 4],
                bias: vec![0.5],
            })],
        )
        .unwrap();
        let x: Vec<f64> = (1..=9).map(f64::from).collect();
        // Windows: {1}, {2,3}, {4,7}, {5,6,8,9}.
        assert_eq!(net.forward(&x).unwrap(), vec![1.5, 5.5, 11.5, 28.5]);
    }

    #[test]
    fn pool_dense_activation() {
        let net = Network::new(
            Shape::Image { channels: 1, height: 2, width: 2 },
            vec![
                Layer::AvgPool2d(AvgPool2d { kernel: [2, 2], stride: [2, 2] }),
                Layer::Flatten,
                Layer::Dense(Dense { inputs: 1, outputs: 2, weights: vec![2.0, -1.0], bias: vec![0.0, 1.0] }),
                Layer::Activation(Polynomial::power(vec![1.0, 0.0, 1.0])),
            ],
        )
        .unwrap();
        // mean 2.5 -> [5, -1.5] -> 1 + x^2 -> [26, 3.25]
        assert_eq!(net.forward(&[1.0, 2.0, 3.0, 4.0]).unwrap(), vec![26.0, 3.25]);
        let batch = net.forward_batch(&[vec![0.0; 4], vec![1.0; 4]]).unwrap();
        assert_eq!(batch, vec![vec![1.0, 2.0], vec![5.0, 1.0]]);
        assert!(matches!(net.forward(&[1.0]), Err(Error::InputSize { expected: 4, actual: 1, .. })));
    }

    #[test]
    fn transposed_convolution_scatters_each_pixel_over_its_kernel() {
        // 1x2x2 input, kernel 2x2 of [1, 2; 3, 4], stride 2: each pixel becomes its own 2x2 block.
        let up = Layer::ConvTranspose2d(ConvTranspose2d {
            in_channels: 1,
            out_channels: 1,
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0; 4],
            output_padding: [0; 2],
            groups: 1,
            weights: vec![1.0, 2.0, 3.0, 4.0],
            bias: vec![0.0],
        });
        let net = Network::new(Shape::Image { channels: 1, height: 2, width: 2 }, vec![up]).unwrap();
        let y = net.forward(&[1.0, 10.0, 100.0, 1000.0]).unwrap();
        assert_eq!(&y[..4], &[1.0, 2.0, 10.0, 20.0]);
        assert_eq!(&y[12..], &[300.0, 400.0, 3000.0, 4000.0]);
    }

    #[test]
    fn residual_add_concat_and_upsample() {
        let image = Shape::Image { channels: 1, height: 1, width: 2 };
        let node = |name: &str, layer, inputs: &[usize]| Node {
            name: name.into(),
            layer,
            inputs: inputs.iter().map(|&i| if i == 0 { TensorId::INPUT } else { TensorId::of_node(i - 1) }).collect(),
        };
        let net = Network::graph(
            image,
            vec![
                node("sq", Layer::Activation(Polynomial::square()), &[0]),
                node("sum", Layer::Add, &[1, 0]),
                node("both", Layer::Concat, &[0, 2]),
                node("up", Layer::Upsample(Upsample { scale: [1, 2] }), &[3]),
            ],
            TensorId::of_node(3),
        )
        .unwrap();
        // x = [2, 3]: sum = [6, 12]; concat = [2, 3 | 6, 12]; upsample columns twice.
        assert_eq!(net.forward(&[2.0, 3.0]).unwrap(), vec![2.0, 2.0, 3.0, 3.0, 6.0, 6.0, 12.0, 12.0]);
    }
}
