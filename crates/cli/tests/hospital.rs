//! `blindfold keygen → encrypt → eval → decrypt` end to end with the real binary, the embedded
//! mnist-cryptonets model and the shared MNIST data, checked against the plaintext model; and
//! the refusals, each with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod browser;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use blindfold_nn::metrics::argmax;
use blindfold_nn::registry;

const MODEL: &str = "mnist-cryptonets";

fn blindfold() -> Command {
    let mut command = Command::cargo_bin("blindfold").unwrap();
    command.env("RUST_BACKTRACE", "0");
    command
}

/// Runs the command, asserts success and returns stdout.
fn ok(args: &[&str]) -> String {
    let out = blindfold().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the command, asserts failure and returns stderr.
fn refused(args: &[&str]) -> String {
    let out = blindfold().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded but should have been refused");
    String::from_utf8(out.stderr).unwrap()
}

fn mnist_images() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    let file = dir.join("t10k-images-idx3-ubyte.gz");
    assert!(file.exists(), "MNIST test images not found at {}", file.display());
    file
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Writes MNIST test digits 100.. as PNG and JPEG files of different sizes and colour types.
fn write_images(dir: &Path) -> Vec<PathBuf> {
    let images = blindfold_nn::data::mnist(mnist_images().parent().unwrap(), blindfold_nn::data::Split::Test).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let mut paths = Vec::new();
    for (k, (w, h, name)) in
        [(28, 28, "a-28.png"), (56, 56, "b-56.png"), (90, 70, "c-90x70.jpg"), (200, 200, "d-200.jpg")]
            .into_iter()
            .enumerate()
    {
        let digit = image::GrayImage::from_raw(28, 28, images.image(100 + k).unwrap().to_vec()).unwrap();
        let resized = image::imageops::resize(&digit, w, h, image::imageops::FilterType::Triangle);
        let path = dir.join(name);
        if name.ends_with(".jpg") {
            image::DynamicImage::ImageLuma8(resized).to_rgb8().save(&path).unwrap();
        } else {
            resized.save(&path).unwrap();
        }
        paths.push(path);
    }
    paths
}

#[test]
fn encrypted_predictions_match_the_plaintext_model_and_bad_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = dir.join("keys");
    let folder = dir.join("scans");
    let files = write_images(&folder);
    let batch = dir.join("job.bfib");
    let result = dir.join("job.bfrb");

    let out = ok(&["keygen", "--model", MODEL, "--out", s(&keys), "--json"]);
    let keygen: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(keygen["model"], MODEL);
    assert_eq!(keygen["packing"], "throughput");
    let out = ok(&[
        "encrypt",
        "--keys",
        s(&keys),
        "--model",
        MODEL,
        s(&folder),
        s(&mnist_images()),
        "--limit",
        "7",
        "--out",
        s(&batch),
        "--json",
    ]);
    let encrypt: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(encrypt["images"], 7);
    assert_eq!(encrypt["batches"].as_array().unwrap().len(), 1);
    // File names stay out of the batch.
    let bytes = std::fs::read(&batch).unwrap();
    assert!(!bytes.windows(8).any(|w| w == b"a-28.png"));
    ok(&["eval", "--keys", s(&keys), "--in", s(&batch), "--out", s(&result), "--quiet"]);
    let predictions_path = dir.join("predictions.json");
    ok(&["decrypt", "--keys", s(&keys), "--in", s(&result), "--out", s(&predictions_path)]);

    // The plaintext model on the same images.
    let model = registry::load(MODEL).unwrap();
    let mut inputs: Vec<Vec<f64>> = files.iter().map(|f| model.manifest.load_image(f).unwrap()).collect();
    let idx = blindfold_nn::data::mnist(mnist_images().parent().unwrap(), blindfold_nn::data::Split::Test).unwrap();
    inputs.extend(model.manifest.inputs(&idx.take(3)).unwrap());
    let reference = model.network.forward_batch(&inputs).unwrap();

    let predictions: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&predictions_path).unwrap()).unwrap();
    let images = predictions["images"].as_array().unwrap();
    assert_eq!(images.len(), 7);
    for (i, (image, expected)) in images.iter().zip(&reference).enumerate() {
        let logits: Vec<f64> = serde_json::from_value(image["logits"].clone()).unwrap();
        let max_error = logits.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(max_error < 0.05, "image {i}: logits {logits:?} vs plaintext {expected:?}");
        assert_eq!(image["class_index"], argmax(expected), "image {i}");
        assert_eq!(image["class"], model.manifest.classes[argmax(expected)]);
        let p: Vec<f64> = serde_json::from_value(image["probabilities"].clone()).unwrap();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
    let names: Vec<&str> = images.iter().map(|i| i["file"].as_str().unwrap()).collect();
    assert!(names[0].ends_with("scans/a-28.png") && names[3].ends_with("scans/d-200.jpg"), "{names:?}");
    assert!(names[4].ends_with("t10k-images-idx3-ubyte.gz#0") && names[6].ends_with("#2"), "{names:?}");

    // CSV: a header and one row per image.
    let csv_path = dir.join("predictions.csv");
    ok(&["decrypt", "--keys", s(&keys), "--in", s(&result), "--out", s(&csv_path), "--quiet"]);
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert_eq!(csv.lines().count(), 8);
    assert!(csv.starts_with("position,file,class,probability,p_0,"), "{csv}");

    // The result records the input it came from: decrypted under the names of another batch of
    // as many images (the same images, encrypted again), it is refused, not misattributed.
    let other = dir.join("other.bfib");
    ok(&["encrypt", "--keys", s(&keys), s(&folder), s(&mnist_images()), "--limit", "7", "--out", s(&other), "--quiet"]);
    let other_names = dir.join("other.bfib.names.json");
    let err = refused(&[
        "decrypt",
        "--keys",
        s(&keys),
        "--in",
        s(&result),
        "--names",
        s(&other_names),
        "--out",
        s(&dir.join("x.csv")),
    ]);
    assert!(err.contains("not the result of these images") && err.contains("stale or swapped"), "{err}");
    // And a result evaluated outside the service is no job's result.
    let opened = blindfold_client::KeySet::open(&keys).unwrap();
    let job = uuid::Uuid::new_v4();
    let err = blindfold_client::decrypt_job(&opened, &result, None, job).unwrap_err().to_string();
    assert!(err.contains(&format!("it records no job, so it cannot be job {job}'s result")), "{err}");

    // The worker's situation: the evaluation-key bundle alone, model taken from the batch
    // header. Evaluation is deterministic, so the result is byte for byte the same.
    let worker = dir.join("worker");
    std::fs::create_dir(&worker).unwrap();
    std::fs::copy(keys.join("evaluation.keys"), worker.join("evaluation.keys")).unwrap();
    let worker_result = dir.join("worker.bfrb");
    ok(&["eval", "--keys", s(&worker), "--in", s(&batch), "--out", s(&worker_result), "--quiet"]);
    assert!(std::fs::read(&worker_result).unwrap() == std::fs::read(&result).unwrap(), "results differ");

    // A truncated batch.
    let cut = dir.join("cut.bfib");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = refused(&["eval", "--keys", s(&keys), "--in", s(&cut), "--out", s(&dir.join("x.bfrb"))]);
    assert!(err.contains("truncated: chunk") && err.contains("the file is incomplete"), "{err}");

    // A flipped byte in the middle.
    let flipped = dir.join("flipped.bfib");
    let mut copy = bytes.clone();
    let middle = copy.len() / 2;
    copy[middle] ^= 0x40;
    std::fs::write(&flipped, &copy).unwrap();
    let err = refused(&["eval", "--keys", s(&keys), "--in", s(&flipped), "--out", s(&dir.join("x.bfrb"))]);
    assert!(err.contains("checksum mismatch") && err.contains("corrupted"), "{err}");

    // A batch made with other keys (same model): refused by eval and by decrypt.
    let other_keys = dir.join("other-keys");
    ok(&["keygen", "--model", MODEL, "--out", s(&other_keys), "--quiet"]);
    let err = refused(&["eval", "--keys", s(&other_keys), "--in", s(&batch), "--out", s(&dir.join("x.bfrb"))]);
    assert!(err.contains("header field key set: expected") && err.contains("made with another key set"), "{err}");
    let err = refused(&["decrypt", "--keys", s(&other_keys), "--in", s(&result), "--out", s(&dir.join("x.csv"))]);
    assert!(err.contains("header field key set: expected"), "{err}");

    // A batch for another model.
    let lenet_keys = dir.join("lenet-keys");
    ok(&["keygen", "--model", "mnist-lenet5", "--out", s(&lenet_keys), "--quiet"]);
    let err = refused(&["eval", "--keys", s(&lenet_keys), "--in", s(&batch), "--out", s(&dir.join("x.bfrb"))]);
    assert!(err.contains("header field model: expected mnist-lenet5, found mnist-cryptonets"), "{err}");

    // A result batch given to eval, an input batch given to decrypt.
    let err = refused(&["eval", "--keys", s(&keys), "--in", s(&result), "--out", s(&dir.join("x.bfrb"))]);
    assert!(err.contains("result batch"), "{err}");
    let err = refused(&["decrypt", "--keys", s(&keys), "--in", s(&batch), "--out", s(&dir.join("x.csv"))]);
    assert!(err.contains("input batch"), "{err}");

    // A group-readable secret key is refused by decrypt (and encrypt), with the fix.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let secret = keys.join("secret.key");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = refused(&["decrypt", "--keys", s(&keys), "--in", s(&result), "--out", s(&dir.join("x.csv"))]);
        assert!(err.contains(&format!("Fix its permissions with `chmod 600 {}`", secret.display())), "{err}");
        assert!(err.contains("mode 0640"), "{err}");
        let err = refused(&["encrypt", "--keys", s(&keys), s(&folder), "--out", s(&dir.join("y.bfib"))]);
        assert!(err.contains("chmod 600"), "{err}");
    }
}

#[test]
fn keys_directories_that_eval_must_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = dir.join("keys");
    ok(&["keygen", "--model", MODEL, "--out", s(&keys), "--quiet"]);
    let batch = dir.join("missing.bfib");

    // keygen never overwrites a key set.
    let err = refused(&["keygen", "--model", MODEL, "--out", s(&keys)]);
    assert!(err.contains("already holds a key set"), "{err}");

    // Only the secret key: eval refuses without reading it.
    let only_secret = dir.join("only-secret");
    std::fs::create_dir(&only_secret).unwrap();
    std::fs::copy(keys.join("secret.key"), only_secret.join("secret.key")).unwrap();
    let err = refused(&["eval", "--keys", s(&only_secret), "--in", s(&batch), "--out", s(&dir.join("x.bfrb"))]);
    assert!(err.contains("holds a secret key but no evaluation keys"), "{err}");

    // The secret key offered as the evaluation-key bundle.
    let swapped = dir.join("swapped");
    std::fs::create_dir(&swapped).unwrap();
    std::fs::copy(keys.join("keyset.json"), swapped.join("keyset.json")).unwrap();
    std::fs::copy(keys.join("secret.key"), swapped.join("evaluation.keys")).unwrap();
    let err = refused(&["eval", "--keys", s(&swapped), "--in", s(&batch), "--out", s(&dir.join("x.bfrb"))]);
    assert!(err.contains("is a secret key (magic \"BFSK\")"), "{err}");
}

#[test]
fn every_unusable_input_file_is_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = dir.join("keys");
    ok(&["keygen", "--model", MODEL, "--out", s(&keys), "--quiet"]);
    let folder = dir.join("scans");
    write_images(&folder);
    std::fs::write(folder.join("notes.txt"), "not an image").unwrap();
    std::fs::write(folder.join("broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    std::fs::write(folder.join(".hidden"), "skipped").unwrap();
    let err = refused(&[
        "encrypt",
        "--keys",
        s(&keys),
        s(&folder),
        s(&dir.join("nowhere.png")),
        "--out",
        s(&dir.join("job.bfib")),
    ]);
    assert!(err.contains("3 input file(s) cannot be used"), "{err}");
    for name in ["notes.txt", "broken.png", "nowhere.png"] {
        assert!(err.contains(name), "{name} not listed: {err}");
    }
    assert!(!err.contains(".hidden"), "{err}");
    assert!(!dir.join("job.bfib").exists());
}

#[test]
fn the_latency_packing_round_trips_single_images() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = dir.join("keys");
    let batch = dir.join("one.bfib");
    let result = dir.join("one.bfrb");
    let predictions_path = dir.join("predictions.json");

    let out = ok(&["keygen", "--model", MODEL, "--packing", "latency", "--out", s(&keys), "--json"]);
    let keygen: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(keygen["packing"], "latency");
    ok(&["encrypt", "--keys", s(&keys), s(&mnist_images()), "--limit", "2", "--out", s(&batch), "--quiet"]);
    ok(&["eval", "--keys", s(&keys), "--in", s(&batch), "--out", s(&result), "--quiet"]);
    ok(&["decrypt", "--keys", s(&keys), "--in", s(&result), "--out", s(&predictions_path)]);

    let model = registry::load(MODEL).unwrap();
    let idx = blindfold_nn::data::mnist(mnist_images().parent().unwrap(), blindfold_nn::data::Split::Test).unwrap();
    let reference = model.network.forward_batch(&model.manifest.inputs(&idx.take(2)).unwrap()).unwrap();
    let predictions: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&predictions_path).unwrap()).unwrap();
    let images = predictions["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for (i, (image, expected)) in images.iter().zip(&reference).enumerate() {
        let logits: Vec<f64> = serde_json::from_value(image["logits"].clone()).unwrap();
        let max_error = logits.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(max_error < 0.05, "image {i}: logits {logits:?} vs plaintext {expected:?}");
        assert_eq!(image["class_index"], argmax(expected), "image {i}");
    }
    // A throughput key set cannot encrypt for the latency packing, and says how to fix it.
    let throughput_keys = dir.join("throughput-keys");
    ok(&["keygen", "--model", MODEL, "--out", s(&throughput_keys), "--quiet"]);
    let error = refused(&[
        "encrypt",
        "--keys",
        s(&throughput_keys),
        "--packing",
        "latency",
        s(&mnist_images()),
        "--limit",
        "1",
        "--out",
        s(&dir.join("x.bfib")),
    ]);
    assert!(error.contains("keygen --packing latency"), "{error}");
}

/// A model read from a directory (a copy of mnist-cryptonets under another name): keygen
/// remembers the directory, and encrypt, eval and decrypt use the same files; `model show`
/// takes the directory too.
#[test]
fn a_model_directory_serves_keygen_encrypt_eval_and_decrypt() {
    let tmp = tempfile::tempdir().unwrap();
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let model_dir = tmp.path().join("my-digits");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::copy(models.join(MODEL).join("model.onnx"), model_dir.join("model.onnx")).unwrap();
    let manifest = std::fs::read_to_string(models.join(MODEL).join("manifest.json")).unwrap();
    let manifest = manifest.replacen(&format!("\"name\": \"{MODEL}\""), "\"name\": \"my-digits\"", 1);
    std::fs::write(model_dir.join("manifest.json"), manifest).unwrap();

    let shown = ok(&["model", "show", s(&model_dir)]);
    assert!(shown.contains("my-digits") && shown.contains("throughput plan for my-digits"), "{shown}");

    let keys = tmp.path().join("keys");
    let out = ok(&["keygen", "--model", s(&model_dir), "--out", s(&keys), "--json"]);
    let keygen: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(keygen["model"], "my-digits");
    let (batch, result, predictions) =
        (tmp.path().join("job.bfib"), tmp.path().join("job.bfrb"), tmp.path().join("predictions.json"));
    ok(&["encrypt", "--keys", s(&keys), s(&mnist_images()), "--limit", "5", "--out", s(&batch), "--quiet"]);
    ok(&["eval", "--keys", s(&keys), "--in", s(&batch), "--out", s(&result), "--quiet"]);
    ok(&["decrypt", "--keys", s(&keys), "--in", s(&result), "--out", s(&predictions)]);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&predictions).unwrap()).unwrap();
    assert_eq!(json["model"], "my-digits");
    let images = blindfold_nn::data::mnist(mnist_images().parent().unwrap(), blindfold_nn::data::Split::Test).unwrap();
    let model = registry::load(s(&model_dir)).unwrap();
    let inputs = model.manifest.inputs(&images.take(5)).unwrap();
    for (prediction, input) in json["images"].as_array().unwrap().iter().zip(&inputs) {
        assert_eq!(
            prediction["class_index"].as_u64().unwrap() as usize,
            argmax(&model.network.forward(input).unwrap())
        );
    }

    // A budget the plan cannot meet is refused before anything is evaluated, naming a layer.
    let err = refused(&["eval", "--keys", s(&keys), "--in", s(&batch), "--out", s(&result), "--memory-budget", "1M"]);
    assert!(err.contains("memory budget") && err.contains("node "), "{err}");
}

/// A segmentation model end to end on the sample lesions: decrypt writes one mask PNG per image
/// and a CSV of lesion areas, each mask equals the plaintext model's thresholded output, and
/// `--masks` adds the Dice against the ground truth.
#[test]
fn a_segmentation_model_decrypts_into_masks_with_areas_and_dice() {
    let tmp = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model_dir = root.join("models/synthetic/unet-shape");
    let lesions = root.join("samples/lesions");
    let images: Vec<PathBuf> = ["ISIC_0024317.png", "ISIC_0024331.png"].iter().map(|f| lesions.join(f)).collect();
    let keys = tmp.path().join("keys");
    ok(&["keygen", "--model", s(&model_dir), "--packing", "latency", "--out", s(&keys), "--quiet"]);
    let (batch, result) = (tmp.path().join("job.bfib"), tmp.path().join("job.bfrb"));
    let mut encrypt = vec!["encrypt", "--keys", s(&keys), "--out", s(&batch), "--quiet"];
    encrypt.extend(images.iter().map(|p| s(p)));
    ok(&encrypt);
    ok(&["eval", "--keys", s(&keys), "--in", s(&batch), "--out", s(&result), "--quiet"]);
    let csv = tmp.path().join("areas.csv");
    let report_dir = tmp.path().join("report");
    let out = ok(&[
        "decrypt",
        "--keys",
        s(&keys),
        "--in",
        s(&result),
        "--out",
        s(&csv),
        "--masks",
        s(&lesions.join("masks")),
        "--report",
        s(&report_dir),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["saved"]["masks"], 2, "{report}");
    let mean_dice = report["saved"]["mean_dice"].as_f64().unwrap();

    let model = registry::load(s(&model_dir)).unwrap();
    let blindfold_nn::Task::Segmentation { threshold } = model.manifest.task else { panic!("a segmentation model") };
    let cut = blindfold_nn::metrics::logit_threshold(threshold);
    let rows: Vec<String> = std::fs::read_to_string(&csv).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(rows[0], "position,file,status,lesion_pixels,lesion_fraction,dice");
    assert_eq!(report["overflowed"], 0);
    let mut dice_sum = 0.0;
    for (k, image) in images.iter().enumerate() {
        // The decrypted mask is the plaintext model's, pixel for pixel.
        let input = model.manifest.load_image(image).unwrap();
        let logits = model.network.forward(&input).unwrap();
        let stem = image.file_stem().unwrap().to_str().unwrap();
        let png = tmp.path().join("areas-masks").join(format!("{k:04}-{stem}.png"));
        let mask = image::open(&png).unwrap().to_luma8();
        assert_eq!(mask.dimensions(), (64, 64));
        // CKKS is approximate: a pixel may land on the other side of the threshold only if its
        // plaintext logit is within the encrypted outputs' error of it (measured ≤ 2·10⁻³).
        for (pixel, (got, logit)) in mask.as_raw().iter().zip(&logits).enumerate() {
            let expected = if *logit >= cut { 255 } else { 0 };
            assert!(
                *got == expected || (logit - cut).abs() < 0.05,
                "image {k} pixel {pixel}: {got} where the plaintext logit is {logit}"
            );
        }
        // The CSV row: its area and its Dice against the ground truth.
        let fields: Vec<&str> = rows[k + 1].split(',').collect();
        assert_eq!(fields[2], "ok");
        let lesion: usize = fields[3].parse().unwrap();
        assert_eq!(lesion, mask.as_raw().iter().filter(|p| **p == 255).count(), "{}", rows[k + 1]);
        assert!((fields[4].parse::<f64>().unwrap() - lesion as f64 / 4096.0).abs() < 1e-6);
        let truth = image::open(lesions.join("masks").join(format!("{stem}.png"))).unwrap().to_luma8();
        let predicted: Vec<bool> = mask.as_raw().iter().map(|p| *p == 255).collect();
        let truth: Vec<u8> = truth.as_raw().iter().map(|p| u8::from(*p > 127)).collect();
        let dice = blindfold_nn::metrics::dice(&predicted, &truth);
        assert!((fields[5].parse::<f64>().unwrap() - dice).abs() < 1e-6, "{}", rows[k + 1]);
        dice_sum += dice;
    }
    assert!((mean_dice - dice_sum / 2.0).abs() < 1e-9);

    // The report: each lesion's outline over its original, on the page and as PNGs beside it.
    assert_eq!((report["report"]["masks"].as_u64(), report["report"]["overlays"].as_u64()), (Some(2), Some(2)));
    for (k, image) in images.iter().enumerate() {
        let stem = format!("{k:04}-{}", image.file_stem().unwrap().to_str().unwrap());
        let mask = image::open(report_dir.join("masks").join(format!("{stem}.png"))).unwrap().to_luma8();
        assert_eq!(mask, image::open(tmp.path().join("areas-masks").join(format!("{stem}.png"))).unwrap().to_luma8());
        let original = image::open(image).unwrap().to_rgb8();
        let overlay = image::open(report_dir.join("overlays").join(format!("{stem}.png"))).unwrap().to_rgb8();
        let pixels: Vec<u8> = mask.as_raw().iter().map(|p| u8::from(*p > 0)).collect();
        // A 64×64 original is shown as it is, with exactly this mask's outline on it.
        assert_eq!(overlay, blindfold_client::draw_outline(&original, &pixels, 64, 64));
        let outlined = overlay.pixels().filter(|p| **p == blindfold_client::OUTLINE).count();
        assert!(outlined > 0 || pixels.iter().all(|p| *p == 0), "image {k}: a found lesion is outlined");
    }
    let index = report_dir.join("index.html");
    let html = std::fs::read_to_string(&index).unwrap();
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 2, "one overlay per image");
    assert!(
        html.contains("Dice against the ground truth") && html.contains("Mean Dice") && html.contains("Lesion area: ")
    );
    // In a browser: 2 overlays, no bars, no request.
    browser::assert_renders(&index, 2, 0);
}

#[test]
fn keygen_picks_the_latency_packing_for_a_model_whose_batch_no_worker_holds() {
    // lesion-unet's throughput batch (16,384 images of 64 × 64 × 3) is planned at about
    // 600 GiB; the automatic choice makes latency keys for it and stays with throughput for
    // a digit model.
    let tmp = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let packing_of = |model: &str, out: &Path| {
        let json: serde_json::Value =
            serde_json::from_str(&ok(&["keygen", "--model", model, "--out", s(out), "--json"]))
                .unwrap_or_else(|e| panic!("keygen --json: {e}"));
        json["packing"].as_str().unwrap().to_owned()
    };
    assert_eq!(packing_of(s(&root.join("models/lesion-unet")), &tmp.path().join("unet")), "latency");
    assert_eq!(packing_of(MODEL, &tmp.path().join("digits")), "throughput");
}

#[test]
fn an_image_far_from_the_model_input_is_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = dir.join("keys");
    ok(&["keygen", "--model", MODEL, "--out", s(&keys), "--quiet"]);
    let photo = dir.join("photo.png");
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, 90, (y * 5) as u8])).save(&photo).unwrap();
    let batch = dir.join("photo.bfib");
    let err = refused(&["encrypt", "--keys", s(&keys), s(&photo), "--out", s(&batch)]);
    assert!(err.contains("photo.png") && err.contains("a colour image for a grayscale model"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert!(!batch.exists());
    ok(&["encrypt", "--keys", s(&keys), s(&photo), "--out", s(&batch), "--force", "--quiet"]);
    assert!(batch.exists());
}
