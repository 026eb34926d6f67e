//! Dataset readers: MNIST IDX (gzip), DermaMNIST `.npz`, and single image files (PNG/JPEG).
//!
//! Every reader returns [`Images`]: raw `u8` pixels in CHW order plus labels, and checks its
//! header against the file's real size before allocating anything.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Largest decompressed dataset member read into memory (bytes).
pub const MAX_DATA_BYTES: u64 = 1 << 30;

/// A set of same-sized images with one label each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// Channels per image (1 grey, 3 RGB).
    pub channels: usize,
    /// Rows per image.
    pub height: usize,
    /// Columns per image.
    pub width: usize,
    /// All pixels, image after image, each in CHW order.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl Images {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i` (CHW), if it exists.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let n = self.image_len();
        self.pixels.get(i * n..(i + 1) * n)
    }

    /// The first `n` images (all if fewer).
    pub fn take(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.pixels.truncate(n * self.image_len());
        self
    }
}

/// A split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training images.
    Train,
    /// The validation images (DermaMNIST only).
    Val,
    /// The test images.
    Test,
}

fn data_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Data { path: path.to_path_buf(), reason: reason.into() }
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// Reads a gzip file whole, refusing more than [`MAX_DATA_BYTES`] of output.
fn gunzip(path: &Path) -> Result<Vec<u8>> {
    let raw = read_all(path)?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .take(MAX_DATA_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| data_err(path, format!("not a valid gzip file: {e}")))?;
    if out.len() as u64 > MAX_DATA_BYTES {
        return Err(data_err(path, format!("decompresses to more than {MAX_DATA_BYTES} bytes")));
    }
    Ok(out)
}

fn be_u32(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// Parses an IDX image file (magic 2051): count, rows, columns, then `u8` pixels.
pub fn parse_idx_images(bytes: &[u8], path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let header = |i| be_u32(bytes, i).ok_or_else(|| data_err(path, "truncated IDX header"));
    if header(0)? != 2051 {
        return Err(data_err(path, format!("IDX magic {} is not 2051 (images)", header(0)?)));
    }
    let (n, rows, cols) = (header(4)?, header(8)?, header(12)?);
    let size = n.checked_mul(rows).and_then(|v| v.checked_mul(cols));
    if size != Some(bytes.len() - 16) {
        return Err(data_err(
            path,
            format!("header says {n}x{rows}x{cols} pixels but {} bytes follow", bytes.len() - 16),
        ));
    }
    Ok((n, rows, cols, bytes[16..].to_vec()))
}

/// Parses an IDX label file (magic 2049): count, then `u8` labels.
pub fn parse_idx_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let header = |i| be_u32(bytes, i).ok_or_else(|| data_err(path, "truncated IDX header"));
    if header(0)? != 2049 {
        return Err(data_err(path, format!("IDX magic {} is not 2049 (labels)", header(0)?)));
    }
    let n = header(4)?;
    if n != bytes.len() - 8 {
        return Err(data_err(path, format!("header says {n} labels but {} bytes follow", bytes.len() - 8)));
    }
    Ok(bytes[8..].to_vec())
}

/// Reads MNIST from `dir` (the directory holding the four `*-idx?-ubyte.gz` files).
pub fn mnist(dir: &Path, split: Split) -> Result<Images> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
        Split::Val => return Err(data_err(dir, "MNIST has no validation split")),
    };
    let img_path = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
    let lbl_path = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    let (n, height, width, pixels) = parse_idx_images(&gunzip(&img_path)?, &img_path)?;
    let labels = parse_idx_labels(&gunzip(&lbl_path)?, &lbl_path)?;
    if labels.len() != n {
        return Err(data_err(&lbl_path, format!("{} labels for {n} images", labels.len())));
    }
    if let Some(bad) = labels.iter().find(|l| **l > 9) {
        return Err(data_err(&lbl_path, format!("label {bad} is not a digit")));
    }
    Ok(Images { channels: 1, height, width, pixels, labels })
}

/// A `u8` array from a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyU8 {
    /// The array's shape.
    pub shape: Vec<usize>,
    /// The values in C order.
    pub data: Vec<u8>,
}

/// Parses a `.npy` file holding a C-ordered `u8` array (format versions 1–3).
pub fn parse_npy_u8(bytes: &[u8], path: &Path) -> Result<NpyU8> {
    if bytes.get(..6) != Some(b"\x93NUMPY".as_slice()) {
        return Err(data_err(path, "not a .npy array (bad magic)"));
    }
    let (header_len, start) = match bytes.get(6) {
        Some(1) => (bytes.get(8..10).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize), 10),
        Some(2 | 3) => (bytes.get(8..12).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize), 12),
        v => return Err(data_err(path, format!(".npy format version {v:?} is not supported"))),
    };
    let header_len = header_len.filter(|l| *l <= 1 << 16).ok_or_else(|| data_err(path, "bad .npy header length"))?;
    let header = bytes.get(start..start + header_len).ok_or_else(|| data_err(path, "truncated .npy header"))?;
    let header = std::str::from_utf8(header).map_err(|_| data_err(path, ".npy header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr").ok_or_else(|| data_err(path, ".npy header has no descr"))?;
    if !(descr.starts_with("'|u1'") || descr.starts_with("'<u1'") || descr.starts_with("'>u1'")) {
        return Err(data_err(path, format!("array type {} is not uint8", descr.split(',').next().unwrap_or(descr))));
    }
    if !field("fortran_order").is_some_and(|v| v.starts_with("False")) {
        return Err(data_err(path, "Fortran-ordered arrays are not supported"));
    }
    let shape_text = field("shape").and_then(|s| s.strip_prefix('(')).and_then(|s| s.split(')').next());
    let shape_text = shape_text.ok_or_else(|| data_err(path, ".npy header has no shape"))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| data_err(path, format!("bad .npy dimension '{s}'"))))
        .collect::<Result<Vec<_>>>()?;
    let count = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
    let data = &bytes[start + header_len..];
    if count != Some(data.len()) {
        return Err(data_err(path, format!("shape {shape:?} does not match the {} data bytes", data.len())));
    }
    Ok(NpyU8 { shape, data: data.to_vec() })
}

/// Reads one `u8` array member (`key.npy`) from a `.npz` file.
pub fn npz_array(path: &Path, key: &str) -> Result<NpyU8> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| data_err(path, format!("not a .npz (zip) file: {e}")))?;
    let name = format!("{key}.npy");
    let member = zip.by_name(&name).map_err(|e| data_err(path, format!("no array '{key}': {e}")))?;
    if member.size() > MAX_DATA_BYTES {
        return Err(data_err(path, format!("array '{key}' is {} bytes (limit {MAX_DATA_BYTES})", member.size())));
    }
    let mut bytes = Vec::with_capacity(member.size() as usize);
    member
        .take(MAX_DATA_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| data_err(path, format!("array '{key}' cannot be read: {e}")))?;
    let member_path = PathBuf::from(format!("{}:{name}", path.display()));
    parse_npy_u8(&bytes, &member_path)
}

/// Reads a split of DermaMNIST from its `.npz` file (`(N, H, W, 3)` images, `(N, 1)` labels).
pub fn dermamnist(npz: &Path, split: Split) -> Result<Images> {
    let key = match split {
        Split::Train => "train",
        Split::Val => "val",
        Split::Test => "test",
    };
    let mut images = rgb_images(npz, &format!("{key}_images"))?;
    let labels = npz_array(npz, &format!("{key}_labels"))?;
    let n = images.pixels.len() / images.image_len().max(1);
    if labels.shape != [n, 1] && labels.shape != [n] {
        return Err(data_err(npz, format!("{key}_labels has shape {:?} for {n} images", labels.shape)));
    }
    if let Some(bad) = labels.data.iter().find(|l| **l > 6) {
        return Err(data_err(npz, format!("label {bad} is not one of the 7 classes")));
    }
    images.labels = labels.data;
    Ok(images)
}

/// The (N, H, W, 3) RGB array `key` of `npz`, as CHW images with no labels yet.
fn rgb_images(npz: &Path, key: &str) -> Result<Images> {
    let array = npz_array(npz, key)?;
    let [_, height, width, 3] = array.shape[..] else {
        return Err(data_err(npz, format!("{key} has shape {:?}; (N, H, W, 3) expected", array.shape)));
    };
    if height == 0 || width == 0 {
        return Err(data_err(npz, format!("{key} has shape {:?}: images of zero height or width", array.shape)));
    }
    let plane = height * width;
    let mut pixels = vec![0u8; array.data.len()];
    for (i, hwc) in array.data.chunks_exact(plane * 3).enumerate() {
        let chw = &mut pixels[i * plane * 3..(i + 1) * plane * 3];
        for (p, rgb) in hwc.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * plane + p] = rgb[c];
            }
        }
    }
    Ok(Images { channels: 3, height, width, pixels, labels: Vec::new() })
}

/// Lesion images with their ground-truth masks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segmentations {
    /// The images (every label 0: segmentation has no class per image).
    pub images: Images,
    /// One H×W mask per image, row-major, image after image: 1 = lesion, 0 = skin.
    pub masks: Vec<u8>,
}

impl Segmentations {
    /// The mask of image `i`, if it exists.
    pub fn mask(&self, i: usize) -> Option<&[u8]> {
        let n = self.images.height * self.images.width;
        self.masks.get(i * n..(i + 1) * n)
    }

    /// The first `n` images and masks (all if fewer).
    pub fn take(mut self, n: usize) -> Self {
        self.images = self.images.take(n);
        self.masks.truncate(self.images.len() * self.images.height * self.images.width);
        self
    }
}

/// A segmentation set: `lesion-seg` (HAM10000 at 64×64, `lesion-seg/lesion_seg_64.npz`, train
/// and test splits) or `ph2` (PH², `lesion-seg/ph2_64.npz`, one split: every image, whatever
/// `split` says), under the data directory `dir`.
pub fn segmentation(dir: &Path, name: &str, split: Split) -> Result<Segmentations> {
    let (npz, images_key, masks_key) = match (name, split) {
        ("lesion-seg", Split::Train) => (dir.join("lesion-seg/lesion_seg_64.npz"), "train_images", "train_masks"),
        ("lesion-seg", Split::Test) => (dir.join("lesion-seg/lesion_seg_64.npz"), "test_images", "test_masks"),
        ("lesion-seg", Split::Val) => {
            return Err(data_err(dir, "lesion-seg has a train and a test split, no validation split"));
        }
        ("ph2", _) => (dir.join("lesion-seg/ph2_64.npz"), "images", "masks"),
        (other, _) => {
            return Err(data_err(dir, format!("no segmentation set '{other}'; known: lesion-seg, ph2")));
        }
    };
    let mut images = rgb_images(&npz, images_key)?;
    let masks = npz_array(&npz, masks_key)?;
    let n = images.pixels.len() / images.image_len().max(1);
    if masks.shape != [n, images.height, images.width] {
        return Err(data_err(&npz, format!("{masks_key} has shape {:?} for {n} images", masks.shape)));
    }
    if let Some(bad) = masks.data.iter().find(|v| **v > 1) {
        return Err(data_err(&npz, format!("mask value {bad} is not 0 or 1")));
    }
    images.labels = vec![0; n];
    Ok(Segmentations { images, masks: masks.data })
}

/// The data sets a manifest may name (its `dataset`), with where each lives under a data
/// directory (`../shared/data`).
pub const DATASETS: [(&str, &str); 5] = [
    ("mnist", "mnist/"),
    ("dermamnist", "dermamnist/dermamnist.npz"),
    ("dermamnist_64", "dermamnist/dermamnist_64.npz"),
    ("lesion-seg", "lesion-seg/lesion_seg_64.npz"),
    ("ph2", "lesion-seg/ph2_64.npz"),
];

/// A split of the data set `name` (one of [`DATASETS`]) under the data directory `dir`.
pub fn dataset(dir: &Path, name: &str, split: Split) -> Result<Images> {
    match name {
        "mnist" => mnist(&dir.join("mnist"), split),
        "dermamnist" => dermamnist(&dir.join("dermamnist/dermamnist.npz"), split),
        "dermamnist_64" => dermamnist(&dir.join("dermamnist/dermamnist_64.npz"), split),
        "lesion-seg" | "ph2" => segmentation(dir, name, split).map(|set| set.images),
        other => Err(data_err(
            dir,
            format!(
                "no data set '{other}'; known: {}",
                DATASETS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(16) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn npy_u8_parses_and_checks_size() {
        let p = Path::new("x.npy");
        let a =
            parse_npy_u8(&npy("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }", &[1, 2, 3, 4, 5, 6]), p)
                .unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
        let one = parse_npy_u8(&npy("{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }", &[7, 8]), p).unwrap();
        assert_eq!(one.shape, vec![2]);
        let short = npy("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }", &[1, 2]);
        assert!(parse_npy_u8(&short, p).unwrap_err().to_string().contains("does not match"));
        let float = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", &[0; 4]);
        assert!(parse_npy_u8(&float, p).unwrap_err().to_string().contains("not uint8"));
        let fortran = npy("{'descr': '|u1', 'fortran_order': True, 'shape': (1,), }", &[0]);
        assert!(parse_npy_u8(&fortran, p).is_err());
        assert!(parse_npy_u8(b"PK\x03\x04", p).is_err());
    }

    #[test]
    fn idx_checks_magic_and_size() {
        let p = Path::new("x.idx");
        let mut img = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1];
        img.extend_from_slice(&[9, 8, 7, 6]);
        assert_eq!(parse_idx_images(&img, p).unwrap(), (2, 2, 1, vec![9, 8, 7, 6]));
        img.pop();
        assert!(parse_idx_images(&img, p).unwrap_err().to_string().contains("but 3 bytes follow"));
        let lbl = [0, 0, 8, 1, 0, 0, 0, 2, 5, 0];
        assert_eq!(parse_idx_labels(&lbl, p).unwrap(), vec![5, 0]);
        assert!(parse_idx_labels(&lbl[..9], p).is_err());
        assert!(parse_idx_images(&lbl, p).unwrap_err().to_string().contains("not 2051"));
        assert!(parse_idx_images(&[0, 0], p).is_err());
    }

    #[test]
    fn dermamnist_refuses_images_of_zero_height_or_width() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.npz");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("train_images.npy", stored).unwrap();
        zip.write_all(&npy("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 0, 28, 3), }", &[])).unwrap();
        zip.start_file("train_labels.npy", stored).unwrap();
        zip.write_all(&npy("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 1), }", &[0, 1])).unwrap();
        zip.finish().unwrap();
        let error = dermamnist(&path, Split::Train).unwrap_err().to_string();
        assert!(error.contains("zero height or width"), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn idx_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse_idx_images(&bytes, Path::new("p"));
            let _ = parse_idx_labels(&bytes, Path::new("p"));
            let _ = parse_npy_u8(&bytes, Path::new("p"));
        }
    }
}
