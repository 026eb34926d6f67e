//! `--report DIR`: the clinician's page after decryption, checked in a real browser (headless
//! Chromium from disk): every picture and bar rendered, the operating point marked, the
//! outlines drawn, and not one network request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod browser;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn ok(args: &[&str]) -> String {
    let out = Command::cargo_bin("blindfold").unwrap().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// keygen (latency) → encrypt `images` → eval → decrypt with `extra` arguments; returns the
/// decrypt command's JSON.
fn decrypt_with_report(dir: &Path, model: &str, images: &[PathBuf], extra: &[&str]) -> serde_json::Value {
    let keys = dir.join("keys");
    ok(&["keygen", "--model", model, "--packing", "latency", "--out", s(&keys), "--quiet"]);
    let (batch, result) = (dir.join("job.bfib"), dir.join("job.bfrb"));
    let mut encrypt = vec!["encrypt", "--keys", s(&keys), "--out", s(&batch), "--force", "--quiet"];
    encrypt.extend(images.iter().map(|p| s(p)));
    ok(&encrypt);
    ok(&["eval", "--keys", s(&keys), "--in", s(&batch), "--out", s(&result), "--quiet"]);
    let mut decrypt = vec!["decrypt", "--keys", s(&keys), "--in", s(&result), "--json"];
    decrypt.extend(extra);
    serde_json::from_str(&ok(&decrypt)).unwrap()
}

/// A lesion classifier's report: four images (two 64×64 lesions, a 28×28 one and a small grey
/// one, which is far from the colour model's input), each with its class probabilities and the
/// melanoma probability against the manifest's operating point.
#[test]
fn a_classifier_report_shows_every_image_with_its_risk_and_loads_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let lesions = root().join("samples/lesions");
    let grey = dir.join("grey-scan.png");
    let lesion = image::open(lesions.join("ISIC_0024346.png")).unwrap();
    lesion.grayscale().resize_exact(12, 12, image::imageops::FilterType::Triangle).save(&grey).unwrap();
    let images = vec![
        lesions.join("ISIC_0024317.png"),
        lesions.join("ISIC_0024331.png"),
        root().join("samples/dermamnist/test-00000.png"),
        grey.clone(),
    ];
    let report = dir.join("report");
    let predictions = dir.join("predictions.json");
    let out = decrypt_with_report(dir, "derma-lenet5", &images, &["--out", s(&predictions), "--report", s(&report)]);

    let manifest = blindfold_nn::registry::load("derma-lenet5").unwrap().manifest;
    let point = manifest.operating_point.clone().expect("derma-lenet5 records its operating point");
    let melanoma = manifest.positive_class.unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&predictions).unwrap()).unwrap();
    let probabilities: Vec<f64> = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["probabilities"][melanoma].as_f64().unwrap())
        .collect();
    // Review: at or above the operating point, or far from the input (the grey one, the last).
    let expected_review = probabilities.iter().enumerate().filter(|(k, p)| **p >= point.threshold || *k == 3).count();
    assert_eq!(out["report"]["images"], 4, "{out}");
    assert_eq!(out["report"]["needs_review"], expected_review, "{out}");
    assert_eq!(out["report"]["without_thumbnail"], 0, "{out}");

    let index = report.join("index.html");
    let html = std::fs::read_to_string(&index).unwrap();
    // Self-contained: no URL to fetch anything from, and a policy that forbids it.
    assert!(html.contains("Content-Security-Policy") && html.contains("default-src 'none'"));
    for forbidden in ["http://", "https://", "src=\"file:", "<link", "@import", "url("] {
        assert!(!html.contains(forbidden), "the page holds {forbidden:?}");
    }
    assert_eq!(html.matches("src=\"data:image/jpeg;base64,").count(), 4, "one thumbnail per image");
    assert_eq!(html.matches("class=\"marker\"").count(), 4, "the operating point on each melanoma bar");
    assert!(html.contains(&format!("{:.3}", point.threshold)), "the threshold is stated");
    assert!(html.contains("Far from the model&#39;s input") || html.contains("Far from the model's input"));
    assert!(html.contains("a grayscale image for a colour model"), "why the grey scan is marked");
    assert!(html.contains("derma-lenet5") && html.contains("version 1") && html.contains("-bit (CKKS)"));
    // Highest risk first: the summary's rows follow the melanoma probability, descending.
    let mut order: Vec<usize> = (0..4).collect();
    order.sort_by(|a, b| probabilities[*b].total_cmp(&probabilities[*a]).then(a.cmp(b)));
    let rows: Vec<usize> = html
        .match_indices("<a href=\"#image-")
        .map(|(at, _)| html[at + 16..].split('"').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(rows, order, "summary rows in order of risk");
    // Patient data: the folder and its files are the owner's only.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&report).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&index).unwrap().permissions().mode() & 0o777, 0o600);

    // 4 thumbnails; per image 7 class bars and the melanoma bar.
    browser::assert_renders(&index, 4, 4 * (7 + 1));
}
