//! Lesion outlines drawn over the hospital's own image: the predicted mask (model resolution)
//! is resampled to the picture's size, and its boundary painted in one colour.

use image::{Rgb, RgbImage};

/// The outline colour: a saturated yellow stays visible on skin of any tone and on the red of
/// inflamed lesions.
pub const OUTLINE: Rgb<u8> = Rgb([255, 214, 0]);

/// `mask` (`width`×`height`, row-major, nonzero = lesion) resampled to `to_width`×`to_height`
/// by nearest neighbour: the mask covers the whole image, stretched as the model saw it.
pub fn resample(mask: &[u8], width: usize, height: usize, to_width: usize, to_height: usize) -> Vec<bool> {
    let mut out = Vec::with_capacity(to_width * to_height);
    for y in 0..to_height {
        // Pixel centres: (y + ½)·height/to_height, floored.
        let source_y = ((2 * y + 1) * height / (2 * to_height)).min(height.saturating_sub(1));
        for x in 0..to_width {
            let source_x = ((2 * x + 1) * width / (2 * to_width)).min(width.saturating_sub(1));
            out.push(mask.get(source_y * width + source_x).is_some_and(|p| *p != 0));
        }
    }
    out
}

/// The lesion pixels of `mask` (`width`×`height`) within Chebyshev distance `thickness` of a
/// pixel outside the lesion or of the image's edge: a boundary `thickness` pixels wide, drawn
/// inside the lesion so that it never covers skin the model called healthy.
pub fn outline(mask: &[bool], width: usize, height: usize, thickness: usize) -> Vec<bool> {
    let t = thickness as isize;
    let inside = |x: isize, y: isize| {
        x >= 0 && y >= 0 && (x as usize) < width && (y as usize) < height && mask[y as usize * width + x as usize]
    };
    let mut out = vec![false; width * height];
    for y in 0..height as isize {
        for x in 0..width as isize {
            if !inside(x, y) {
                continue;
            }
            let edge = (-t..=t).any(|dy| (-t..=t).any(|dx| !inside(x + dx, y + dy)));
            out[y as usize * width + x as usize] = edge;
        }
    }
    out
}

/// `picture` with the outline of `mask` (`width`×`height`, the model's resolution) drawn over
/// it, two pixels wide per 256 pixels of the picture's larger side (at least one).
pub fn draw(picture: &RgbImage, mask: &[u8], width: usize, height: usize) -> RgbImage {
    let (w, h) = (picture.width() as usize, picture.height() as usize);
    let thickness = (w.max(h) / 128).max(1);
    let scaled = resample(mask, width, height, w, h);
    let edge = outline(&scaled, w, h, thickness);
    let mut out = picture.clone();
    for (i, on) in edge.iter().enumerate() {
        if *on {
            out.put_pixel((i % w) as u32, (i / w) as u32, OUTLINE);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders a boolean grid as rows of `#` and `.` for readable assertions.
    fn grid(cells: &[bool], width: usize) -> Vec<String> {
        cells.chunks(width).map(|row| row.iter().map(|c| if *c { '#' } else { '.' }).collect()).collect()
    }

    #[test]
    fn the_outline_is_the_lesions_boundary_and_nothing_else() {
        // A 4×4 lesion in an 8×8 image, and a lesion pixel touching the image's edge.
        let mut mask = vec![false; 64];
        for y in 2..6 {
            for x in 2..6 {
                mask[y * 8 + x] = true;
            }
        }
        mask[7 * 8] = true;
        assert_eq!(
            grid(&outline(&mask, 8, 8, 1), 8),
            ["........", "........", "..####..", "..#..#..", "..#..#..", "..####..", "........", "#......."]
        );
        // Two pixels wide: the 4×4 lesion is all boundary.
        let thick = outline(&mask, 8, 8, 2);
        assert_eq!(thick.iter().filter(|p| **p).count(), 16 + 1);
    }

    #[test]
    fn a_mask_is_stretched_over_the_picture_as_the_model_saw_it() {
        // 2×2 mask, lesion top-left, onto a 4×2 picture: the lesion covers its top-left 2×1.
        let scaled = resample(&[1, 0, 0, 0], 2, 2, 4, 2);
        assert_eq!(grid(&scaled, 4), ["##..", "...."]);
        // Drawn over a grey 8×8 picture: outline pixels are yellow, the rest untouched.
        let picture = RgbImage::from_pixel(8, 8, Rgb([90, 90, 90]));
        let mut mask = vec![0u8; 16];
        mask[5] = 1; // (1, 1) of a 4×4 mask → (2..4, 2..4) of the picture.
        let drawn = draw(&picture, &mask, 4, 4);
        let yellow: Vec<(u32, u32)> =
            drawn.enumerate_pixels().filter(|(_, _, p)| **p == OUTLINE).map(|(x, y, _)| (x, y)).collect();
        assert_eq!(yellow, [(2, 2), (3, 2), (2, 3), (3, 3)]);
        assert_eq!(*drawn.get_pixel(0, 0), Rgb([90, 90, 90]));
    }
}
