//! `blindfold model …` end to end: the real binary, the embedded models, the shared data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn blindfold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blindfold")).args(args).env("RUST_BACKTRACE", "0").output().unwrap()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn list_and_show_work_from_any_directory() {
    let out = Command::new(env!("CARGO_BIN_EXE_blindfold")).args(["model", "list"]).current_dir("/").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for name in ["mnist-cryptonets", "mnist-lenet5", "derma-lenet5"] {
        assert!(text.contains(name), "{text}");
    }
    let out = blindfold(&["model", "show", "mnist-cryptonets"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("multiplicative depth 5") && text.contains("5x13x13"), "{text}");
    let out = blindfold(&["model", "show", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("no model named 'nope'"));
}

#[test]
fn import_refuses_relu_maxpool_softmax_and_accepts_patterns() {
    let fixtures = repo().join("crates/nn/tests/fixtures");
    let out = blindfold(&["model", "import", fixtures.join("refused.onnx").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("Relu is not a polynomial") && err.contains("MaxPool") && err.contains("Softmax"), "{err}");
    let out = blindfold(&["model", "import", fixtures.join("patterns.onnx").to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().contains("multiplicative depth 7"));
}

#[test]
fn eval_prints_json_metrics() {
    let data = repo().join("../shared/data");
    let out = blindfold(&[
        "model",
        "eval",
        "--model",
        "derma-lenet5",
        "--data",
        data.to_str().unwrap(),
        "--limit",
        "300",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "derma-lenet5");
    assert_eq!(v["images"], 300);
    let acc = v["accuracy"].as_f64().unwrap();
    assert!(acc > 0.5 && acc <= 1.0, "{v}");
    assert!(v["melanoma_vs_rest_auc"].as_f64().unwrap() > 0.5, "{v}");
    assert_eq!(v["per_class_recall"].as_object().unwrap().len(), 7);
}
