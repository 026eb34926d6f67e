//! Where a tensor's elements sit in the slots of one or more ciphertexts.

use std::collections::BTreeSet;

use blindfold_nn::{Layer, Network, Shape, TensorId};

/// A tensor's layout: element e at global slot `positions[e]` = ciphertext · slots + slot.
/// Within one ciphertext the slot vector repeats with `period` (a power of two dividing the
/// slots); a layout over several ciphertexts does not repeat (period = slots).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    pub cts: usize,
    pub positions: Vec<usize>,
    pub period: usize,
    /// For an image placed on a grid: where a convolution or pool over it can write in place.
    pub grid: Option<Grid>,
}

/// A (C, H, W) tensor on a grid: element (c, y, x) is at `bases[c] + y·row + x·column`,
/// wrapping inside base c's ciphertext.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Grid {
    pub bases: Vec<usize>,
    pub row: usize,
    pub column: usize,
}

impl Layout {
    /// Elements 0..len at slots 0..len, repeated with the next power of two when they fit one
    /// ciphertext, else over ⌈len / slots⌉ ciphertexts.
    pub(crate) fn dense(len: usize, slots: usize) -> Self {
        let period = len.next_power_of_two().max(1);
        if period <= slots {
            return Self { cts: 1, positions: (0..len).collect(), period, grid: None };
        }
        Self { cts: len.div_ceil(slots), positions: (0..len).collect(), period: slots, grid: None }
    }

    /// A (C, H, W) image on a grid: rows a power of two apart, channels in power-of-two blocks,
    /// as many blocks per ciphertext as fit, replicated to fill the slots when one ciphertext
    /// holds them all. None when one channel does not fit a ciphertext.
    pub(crate) fn image(channels: usize, height: usize, width: usize, slots: usize) -> Option<Self> {
        let row = width.next_power_of_two();
        let block = ((height.max(1) - 1) * row + width).next_power_of_two();
        let grid = Grid { bases: blocks(channels, block, slots)?, row, column: 1 };
        Some(grid.layout(height, width, slots, true))
    }

    /// Slot vectors (one per ciphertext) holding `values` in this layout, zero elsewhere.
    pub(crate) fn fill(&self, values: &[f64], slots: usize) -> Vec<Vec<f64>> {
        let mut out = vec![vec![0.0; slots]; self.cts];
        for (&p, &v) in self.positions.iter().zip(values) {
            let (ct, slot) = (p / slots, p % slots);
            for copy in (0..slots).step_by(self.period) {
                out[ct][slot + copy] = v;
            }
        }
        out
    }

    /// The concatenation of `parts`: their ciphertexts one after the other. Images on grids
    /// with the same row and column spacing stay on one grid (the channels' bases in order),
    /// so what reads the concatenation still works in place.
    pub(crate) fn concat(parts: &[&Layout], slots: usize) -> Self {
        let mut positions = Vec::new();
        let mut bases = Vec::new();
        let mut cts = 0;
        for part in parts {
            positions.extend(part.positions.iter().map(|p| p + cts * slots));
            if let Some(grid) = &part.grid {
                bases.extend(grid.bases.iter().map(|b| b + cts * slots));
            }
            cts += part.cts;
        }
        let spacing = |l: &&Layout| l.grid.as_ref().map(|g| (g.row, g.column));
        let same = parts.first().and_then(spacing).filter(|s| parts.iter().all(|p| spacing(p) == Some(*s)));
        let grid = same.map(|(row, column)| Grid { bases, row, column });
        let period = if cts == 1 { parts.first().map_or(slots, |p| p.period) } else { slots };
        Self { cts, positions, period, grid }
    }
}

/// Global bases of `channels` blocks of `block` slots, packed into ciphertexts.
fn blocks(channels: usize, block: usize, slots: usize) -> Option<Vec<usize>> {
    if block > slots {
        return None;
    }
    let per = slots / block;
    Some((0..channels).map(|c| (c / per) * slots + (c % per) * block).collect())
}

impl Grid {
    /// Slot of every element of a (C, H, W) tensor, CHW order.
    pub(crate) fn positions(&self, height: usize, width: usize, slots: usize) -> Vec<usize> {
        let mut positions = Vec::with_capacity(self.bases.len() * height * width);
        for &base in &self.bases {
            let (ct, local) = (base / slots, base % slots);
            for y in 0..height {
                for x in 0..width {
                    positions.push(ct * slots + (local + y * self.row + x * self.column) % slots);
                }
            }
        }
        positions
    }

    /// The layout of a (C, H, W) tensor on this grid. With `repeat` (an input the client
    /// packs), one ciphertext repeats with the span of its blocks; otherwise (an output written
    /// in place) and over several ciphertexts, nothing repeats.
    pub(crate) fn layout(self, height: usize, width: usize, slots: usize, repeat: bool) -> Layout {
        let positions = self.positions(height, width, slots);
        let cts = self.bases.iter().map(|b| b / slots).max().map_or(1, |c| c + 1);
        let period = if cts == 1 && repeat {
            let extent = positions.iter().max().map_or(1, |&p| p + 1);
            extent.next_power_of_two().min(slots)
        } else {
            slots
        };
        Layout { cts, positions, period, grid: Some(self) }
    }
}

/// How a convolution, pool, transposed convolution or up-sampling moves over its input: what
/// placing its output in place needs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Geometry {
    /// A window (convolution, pool): output (y, x) reads from input (y·s − p, x·s − p) on.
    Window {
        stride: [usize; 2],
        /// Top and left padding.
        padding: [usize; 2],
        /// Output channels, height, width.
        output: [usize; 3],
    },
    /// A spread (transposed convolution, up-sampling): input (y, x) writes output (y·s + k − p).
    Spread { stride: [usize; 2], padding: [usize; 2], output: [usize; 3] },
}

impl Geometry {
    /// The geometry of network node `index`, if it is a convolution, pool, transposed
    /// convolution or up-sampling.
    pub(crate) fn of(network: &Network, index: usize) -> Option<Self> {
        let Shape::Image { channels, height, width } = network.shape(TensorId::of_node(index)) else { return None };
        let output = [channels, height, width];
        match &network.nodes().get(index)?.layer {
            Layer::Conv2d(conv) => {
                Some(Geometry::Window { stride: conv.stride, padding: [conv.padding[0], conv.padding[1]], output })
            }
            Layer::AvgPool2d(pool) => Some(Geometry::Window { stride: pool.stride, padding: [0, 0], output }),
            Layer::ConvTranspose2d(conv) => {
                Some(Geometry::Spread { stride: conv.stride, padding: [conv.padding[0], conv.padding[1]], output })
            }
            Layer::Upsample(up) => Some(Geometry::Spread { stride: up.scale, padding: [0, 0], output }),
            _ => None,
        }
    }

    /// Output layouts placed on the input's grid: a window writes output (o, y, x) at the slot
    /// of its window's corner (or of the window's first real pixel, when padded), a spread at
    /// the slot of input (y / s, x / s) on a grid s times finer (when the input grid's rows and
    /// columns divide by s). Channels take the input's bases (same channel count), one
    /// power-of-two block each, or, for a strided window, blocks shared by several channels in
    /// the free slots of each stride cell.
    pub(crate) fn grid_outputs(&self, input: &Grid, slots: usize) -> Vec<Layout> {
        let (stride, padding, [channels, height, width], spread) = match *self {
            Geometry::Window { stride, padding, output } => (stride, padding, output, false),
            Geometry::Spread { stride, padding, output } => (stride, padding, output, true),
        };
        let (row, column) = if spread {
            if !input.row.is_multiple_of(stride[0]) || !input.column.is_multiple_of(stride[1]) {
                return Vec::new();
            }
            (input.row / stride[0], input.column / stride[1])
        } else {
            (input.row * stride[0], input.column * stride[1])
        };
        let mut bases: Vec<Vec<usize>> = Vec::new();
        if channels == input.bases.len() {
            bases.push(input.bases.clone());
        }
        let extent = (height.max(1) - 1) * row + (width.max(1) - 1) * column + 1;
        let block = extent.next_power_of_two();
        if let Some(fresh) = blocks(channels, block, slots) {
            bases.push(fresh);
        }
        if !spread {
            // A strided output leaves the other slots of each stride cell free: up to stride²
            // channels share a block, each shifted within the cell (a lane).
            let lanes: Vec<usize> =
                (0..stride[0]).flat_map(|a| (0..stride[1]).map(move |b| a * input.row + b * input.column)).collect();
            if lanes.len() > 1 {
                let block = (extent + lanes.iter().max().copied().unwrap_or(0)).next_power_of_two();
                if let Some(shared) = blocks(channels.div_ceil(lanes.len()), block, slots) {
                    bases.push((0..channels).map(|o| shared[o / lanes.len()] + lanes[o % lanes.len()]).collect());
                }
            }
        }
        let corner = if spread {
            padding[0] * row + padding[1] * column
        } else {
            padding[0] * input.row + padding[1] * input.column
        };
        let anchors: Vec<usize> = if corner == 0 { vec![0] } else { vec![0, slots - corner % slots] };
        let mut layouts = Vec::new();
        for bases in &bases {
            for &anchor in &anchors {
                let grid = Grid {
                    bases: bases.iter().map(|b| (b / slots) * slots + (b % slots + anchor) % slots).collect(),
                    row,
                    column,
                };
                let layout = grid.layout(height, width, slots, false);
                let distinct = layout.positions.iter().collect::<BTreeSet<_>>().len();
                if distinct == layout.positions.len() {
                    layouts.push(layout);
                }
            }
        }
        layouts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_larger_than_a_ciphertext_spans_several() {
        // 16 channels of 64x64 in 16,384 slots: four 4,096-slot blocks per ciphertext.
        let layout = Layout::image(16, 64, 64, 16384).unwrap();
        assert_eq!((layout.cts, layout.period), (4, 16384));
        assert_eq!(layout.positions[4096 * 5], 16384 + 4096);
        let filled = layout.fill(&vec![1.0; 16 * 4096], 16384);
        assert_eq!(filled.len(), 4);
        assert!(filled.iter().all(|ct| ct.iter().all(|&v| v == 1.0)));
        // A small image repeats to fill one ciphertext.
        let small = Layout::image(1, 28, 28, 8192).unwrap();
        assert_eq!((small.cts, small.period), (1, 1024));
        assert!(Layout::image(1, 256, 256, 16384).is_none());
    }

    #[test]
    fn a_transposed_convolution_writes_on_a_finer_grid_in_place() {
        // A 2x2 image on a grid with rows 8 and columns 2 apart (after a pool): the 4x4 output
        // of a stride-2 spread lands on rows 4 and columns 1 apart, at the same base.
        let input = Grid { bases: vec![0], row: 8, column: 2 };
        let spread = Geometry::Spread { stride: [2, 2], padding: [0, 0], output: [1, 4, 4] };
        let outputs = spread.grid_outputs(&input, 64);
        let grid = outputs[0].grid.as_ref().unwrap();
        assert_eq!((grid.row, grid.column, grid.bases[0]), (4, 1, 0));
        // Not on a grid whose columns are 1 apart.
        assert!(spread.grid_outputs(&Grid { bases: vec![0], row: 8, column: 1 }, 64).is_empty());
    }

    #[test]
    fn concatenation_appends_ciphertexts() {
        let a = Layout::image(2, 4, 4, 64).unwrap();
        let b = Layout::dense(100, 64);
        let both = Layout::concat(&[&a, &b], 64);
        assert_eq!(both.cts, 1 + 2);
        assert_eq!(both.positions[32], 64);
        assert_eq!(both.positions.len(), 132);
    }
}
