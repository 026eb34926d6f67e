//! The committed models: registry, evaluator against onnxruntime, manifests against the data.
//!
//! The fixtures (`tests/fixtures/<model>.json`) hold the first test images' pixels and the
//! logits onnxruntime computed for them when the model was trained. The dataset tests read
//! `../shared/data` beside the repository (see its README).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use blindfold_nn::data::{self, Split};
use blindfold_nn::{Layer, Shape, metrics, registry};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(dir.join("mnist").is_dir(), "the datasets are expected in {} (see the README)", dir.display());
    dir
}

#[test]
fn registry_holds_the_three_models_with_their_depths() {
    assert_eq!(registry::names(), ["mnist-cryptonets", "mnist-lenet5", "derma-lenet5"]);
    let depths: Vec<usize> = registry::all().unwrap().iter().map(|m| m.network.depth()).collect();
    assert_eq!(depths, [5, 7, 7]);
    let cryptonets = registry::load("mnist-cryptonets").unwrap();
    assert_eq!(
        cryptonets.network.shape(blindfold_nn::TensorId::of_node(0)),
        Shape::Image { channels: 5, height: 13, width: 13 }
    );
    assert!(cryptonets.network.nodes().iter().all(|n| !matches!(n.layer, Layer::AvgPool2d(_))));
    let err = registry::load("resnet").unwrap_err().to_string();
    assert!(err.contains("no model named 'resnet'") && err.contains("mnist-lenet5"), "{err}");
}

/// The built-in models, then the HE model directories `models/train/train.py` wrote a fixture
/// for (models as data: loaded by path).
fn trained_models() -> Vec<(String, registry::Model)> {
    let dirs = ["derma64"].map(|name| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models").join(name);
        (name.to_owned(), registry::load(dir.to_str().unwrap()).unwrap())
    });
    registry::names().iter().map(|name| (name.to_string(), registry::load(name).unwrap())).chain(dirs).collect()
}

#[test]
fn evaluator_matches_onnxruntime_on_every_model() {
    for (name, model) in trained_models() {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap()).unwrap();
        let images = json["images"].as_array().unwrap();
        assert!(images.len() >= 20, "{name}: fixture has {} images", images.len());
        let mut worst: f64 = 0.0;
        for (i, img) in images.iter().enumerate() {
            let pixels: Vec<u8> = img["pixels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
            let reference: Vec<f64> = img["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let ours = model.network.forward(&model.manifest.normalise(&pixels)).unwrap();
            for (a, b) in ours.iter().zip(&reference) {
                let err = (a - b).abs() / b.abs().max(1.0);
                worst = worst.max(err);
                assert!(err <= 1e-4, "{name} image {i}: ours {a}, onnxruntime {b}");
            }
            assert_eq!(ours.len(), reference.len());
        }
        eprintln!("{name}: worst relative difference to onnxruntime {worst:.2e}");
    }
}

/// The whole test split through the f64 evaluator gives the accuracy onnxruntime measured at
/// training time (f32 against f64 may flip a near-tie, hence one image of slack).
#[test]
fn test_split_accuracy_matches_the_manifest() {
    let dir = data_dir();
    for (name, model) in trained_models() {
        let dataset = model.manifest.dataset().unwrap_or_else(|| panic!("{name}'s manifest names no data set"));
        let images = data::dataset(&dir, dataset, Split::Test).unwrap();
        let logits = model.network.forward_batch(&model.manifest.inputs(&images).unwrap()).unwrap();
        let m = metrics::evaluate(&logits, &images.labels, model.manifest.classes.len(), model.manifest.positive_class);
        let recorded = model.manifest.metrics["test"]["accuracy"].as_f64().unwrap();
        assert!(
            (m.accuracy - recorded).abs() <= 1.0 / images.len() as f64 + 1e-12,
            "{name}: {} vs {recorded}",
            m.accuracy
        );
        if let Some(auc) = m.positive_auc {
            let recorded = model.manifest.metrics["test"]["melanoma_auc"].as_f64().unwrap();
            assert!((auc - recorded).abs() < 1e-3, "{name}: AUC {auc} vs {recorded}");
        }
    }
}

#[test]
fn mnist_reader_matches_the_published_counts() {
    let dir = data_dir().join("mnist");
    let test = data::mnist(&dir, Split::Test).unwrap();
    assert_eq!((test.len(), test.channels, test.height, test.width), (10_000, 1, 28, 28));
    let mut counts = [0usize; 10];
    for l in &test.labels {
        counts[usize::from(*l)] += 1;
    }
    assert_eq!(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    let train = data::mnist(&dir, Split::Train).unwrap();
    assert_eq!(train.len(), 60_000);
    assert_eq!(&train.labels[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    let mean = train.pixels.iter().map(|p| f64::from(*p)).sum::<f64>() / train.pixels.len() as f64 / 255.0;
    assert!((mean - 0.130660).abs() < 1e-5, "{mean}");
    assert!(data::mnist(&dir, Split::Val).is_err());
}

#[test]
fn dermamnist_reader_matches_the_published_counts() {
    let npz = data_dir().join("dermamnist/dermamnist.npz");
    for (split, n, counts) in
        [(Split::Test, 2005, [66, 103, 220, 23, 223, 1341, 29]), (Split::Val, 1003, [33, 52, 110, 12, 111, 671, 14])]
    {
        let images = data::dermamnist(&npz, split).unwrap();
        assert_eq!((images.len(), images.channels, images.height, images.width), (n, 3, 28, 28));
        let mut c = [0usize; 7];
        for l in &images.labels {
            c[usize::from(*l)] += 1;
        }
        assert_eq!(c, counts);
    }
    let err = data::npz_array(&npz, "nope").unwrap_err().to_string();
    assert!(err.contains("no array 'nope'"), "{err}");
}

#[test]
fn image_files_go_through_the_manifest_preprocessing() {
    let model = registry::load("derma-lenet5").unwrap();
    let npz = data_dir().join("dermamnist/dermamnist.npz");
    let images = data::dermamnist(&npz, Split::Test).unwrap().take(1);
    let chw = images.image(0).unwrap();
    // The same pixels as an RGB PNG of the input size give exactly the dataset's input.
    let plane = 28 * 28;
    let hwc: Vec<u8> = (0..plane).flat_map(|p| (0..3).map(move |c| chw[c * plane + p])).collect();
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("lesion.png");
    image::RgbImage::from_raw(28, 28, hwc).unwrap().save(&png).unwrap();
    assert_eq!(model.manifest.load_image(&png).unwrap(), model.manifest.normalise(chw));

    // A larger JPEG is stretched to 28x28 and turned into a gray input for the MNIST model.
    let mnist = registry::load("mnist-lenet5").unwrap();
    let jpg = dir.path().join("big.jpg");
    image::RgbImage::from_fn(300, 200, |x, _| image::Rgb([if x > 150 { 255 } else { 0 }; 3])).save(&jpg).unwrap();
    let input = mnist.manifest.load_image(&jpg).unwrap();
    assert_eq!(input.len(), 784);
    let (dark, bright) = ((0.0 - 0.1307) / 0.3081, (1.0 - 0.1307) / 0.3081);
    assert!((input[28 * 14 + 2] - dark).abs() < 0.05 && (input[28 * 14 + 25] - bright).abs() < 0.05);
    assert_eq!(mnist.network.forward(&input).unwrap().len(), 10);

    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let err = mnist.manifest.load_image(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.png") && err.contains("not a readable PNG or JPEG"), "{err}");
}

#[test]
fn images_far_from_the_model_input_are_refused_unless_forced() {
    let mnist = registry::load("mnist-lenet5").unwrap();
    let lesions = registry::load("derma-lenet5").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let save = |name: &str, image: image::DynamicImage| {
        let path = dir.path().join(name);
        image.save(&path).unwrap();
        path
    };
    let colour =
        save("colour.png", image::RgbImage::from_fn(28, 28, |x, y| image::Rgb([x as u8 * 9, 40, y as u8 * 9])).into());
    let grey = save("grey.png", image::GrayImage::from_fn(28, 28, |x, _| image::Luma([x as u8 * 9])).into());
    let strip = save("strip.png", image::GrayImage::from_fn(200, 20, |x, _| image::Luma([x as u8])).into());
    // Grey stored as RGB (a JPEG of a scan) is still grey.
    let grey_rgb =
        save("grey-rgb.png", image::DynamicImage::ImageLuma8(image::open(&grey).unwrap().to_luma8()).to_rgb8().into());

    let refused = |model: &registry::Model, path: &std::path::Path| {
        model.manifest.load_checked_image(path, false).unwrap_err().to_string()
    };
    let err = refused(&mnist, &colour);
    assert!(err.contains("a colour image for a grayscale model") && err.contains("--force"), "{err}");
    let err = refused(&lesions, &grey);
    assert!(err.contains("a grayscale image for a colour model"), "{err}");
    let err = refused(&mnist, &strip);
    assert!(err.contains("more than twice as wide"), "{err}");
    for path in [&grey, &grey_rgb] {
        assert!(mnist.manifest.load_checked_image(path, false).is_ok(), "{}", path.display());
    }
    assert!(lesions.manifest.load_checked_image(&colour, false).is_ok());
    // Forced, each is taken as before.
    for path in [&colour, &strip] {
        assert_eq!(mnist.manifest.load_checked_image(path, true).unwrap(), mnist.manifest.load_image(path).unwrap());
    }
}
