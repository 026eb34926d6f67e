//! `blindfold model convert` end to end: the ReLU twin of derma-lenet5 (`models/derma-relu`,
//! trained by `models/train/train.py --model derma-relu`) becomes a model directory that keygen,
//! encrypt, eval and decrypt serve, keeping its plaintext accuracy. And the 64×64 lesion models
//! (`models/derma64`, distilled, and `models/derma64-relu-he`, converted): their operating
//! points and an encrypted round trip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn blindfold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blindfold")).args(args).env("RUST_BACKTRACE", "0").output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = blindfold(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_relu_network_converts_keeps_its_accuracy_and_runs_encrypted() {
    let tmp = tempfile::tempdir().unwrap();
    let standard = repo().join("models/derma-relu/model.onnx");
    let data = repo().join("../shared/data");
    let out = tmp.path().join("derma-relu-he");
    let args = [
        "model",
        "convert",
        s(&standard),
        "--out",
        s(&out),
        "--calibrate",
        s(&data),
        "--labels",
        s(&data),
        "--degree",
        "31",
        "--calibration-images",
        "2000",
        "--limit",
        "400",
        "--json",
    ];
    let report: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let functions: Vec<&str> =
        report["activations"].as_array().unwrap().iter().map(|a| a["function"].as_str().unwrap()).collect();
    assert_eq!(functions, ["Relu"; 3], "{report}");
    assert_eq!(report["replaced_maxpools"].as_array().map(Vec::len), Some(0), "{report}");
    assert_eq!(report["out_of_range"]["images"], 400, "{report}");
    let (before, after) = (report["accuracy_before"].as_f64().unwrap(), report["accuracy_after"].as_f64().unwrap());
    // The ReLU original is a working classifier, and conversion costs it little (the target is
    // ≤ 1.2 points on the full test split; this is the first 400 images).
    assert!(before > 0.6, "{report}");
    assert!(before - after < 0.02, "accuracy {before} → {after}: {report}");
    // Degree 31: five levels per activation, one per linear layer.
    assert_eq!(report["multiplicative_depth"], 4 + 3 * 5, "{report}");
    // A model directory is not overwritten.
    let again = blindfold(&args);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already holds a model"));

    let shown = ok(&["model", "show", s(&out)]);
    assert!(shown.contains("derma-relu-he") && shown.contains("chebyshev degree 31"), "{shown}");
    // The original's operating point does not carry over: it is placed again on the converted
    // model's own probabilities.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["operating_point"]["target_sensitivity"], 0.9, "{manifest}");
    assert_eq!(manifest["operating_point"]["chosen_on"], "val", "{manifest}");

    // The shipped conversion (`models/derma-relu-he`, the same command on all the data) is a
    // model like any other: its encrypted predictions equal its plaintext ones.
    encrypted_equals_plaintext(&repo().join("models/derma-relu-he"), "samples/dermamnist/test-00000.png", tmp.path());
}

/// keygen (latency), encrypt `image`, eval, decrypt: the logits equal the plaintext model's.
fn encrypted_equals_plaintext(model_dir: &Path, image: &str, tmp: &Path) {
    let keys = tmp.join("keys");
    let _ = std::fs::remove_dir_all(&keys);
    ok(&["keygen", "--model", s(model_dir), "--packing", "latency", "--out", s(&keys), "--quiet"]);
    let image = repo().join(image);
    let (batch, result, predictions) = (tmp.join("job.bfib"), tmp.join("job.bfrb"), tmp.join("predictions.json"));
    ok(&["encrypt", "--keys", s(&keys), s(&image), "--out", s(&batch), "--quiet"]);
    ok(&["eval", "--keys", s(&keys), "--in", s(&batch), "--out", s(&result), "--quiet"]);
    ok(&["decrypt", "--keys", s(&keys), "--in", s(&result), "--out", s(&predictions), "--quiet"]);
    let decrypted: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&predictions).unwrap()).unwrap();
    let logits: Vec<f64> = serde_json::from_value(decrypted["images"][0]["logits"].clone()).unwrap();
    let model = blindfold_nn::registry::load(s(model_dir)).unwrap();
    let plain = model.network.forward(&model.manifest.load_image(&image).unwrap()).unwrap();
    let error = logits.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(error < 0.05, "{}: encrypted {logits:?} vs plaintext {plain:?}", model_dir.display());
    assert_eq!(blindfold_nn::metrics::argmax(&logits), blindfold_nn::metrics::argmax(&plain));
}

/// The operating point `model eval` places on the validation split is the one `train.py`
/// recorded (onnxruntime in f32 there, the f64 reference here), and derma64 runs encrypted.
#[test]
fn the_64px_lesion_models_carry_their_operating_points_and_run_encrypted() {
    let data = repo().join("../shared/data");
    for name in ["derma64", "derma64-relu-he"] {
        let dir = repo().join("models").join(name);
        let eval: serde_json::Value =
            serde_json::from_str(&ok(&["model", "eval", "--model", s(&dir), "--data", s(&data), "--json"])).unwrap();
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        let (ours, recorded) = (&eval["operating_point"], &manifest["operating_point"]);
        let threshold = ours["threshold"].as_f64().unwrap();
        assert!((threshold - recorded["threshold"].as_f64().unwrap()).abs() < 1e-4, "{name}: {ours} vs {recorded}");
        assert!(
            (ours["test_specificity"].as_f64().unwrap() - recorded["test_specificity"].as_f64().unwrap()).abs() < 2e-3
        );
        assert_eq!(eval["images"], 2005, "{name}: {eval}");
    }
    let tmp = tempfile::tempdir().unwrap();
    encrypted_equals_plaintext(&repo().join("models/derma64"), "samples/dermamnist64/test-00004.png", tmp.path());
}
