//! `blindfold demo` end to end with a small image count: a throwaway PostgreSQL, the embedded S3
//! endpoint, the API and a worker, every step of the hospital's path, checked against the
//! plaintext model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;

#[test]
fn the_demo_runs_end_to_end_and_agrees_with_the_plaintext_model() {
    let output = Command::cargo_bin("blindfold")
        .unwrap()
        .env_remove("DATABASE_URL")
        .args(["demo", "--model", "mnist-cryptonets", "--images", "4", "--json"])
        .timeout(std::time::Duration::from_secs(600))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stderr}");
    let reports: Vec<serde_json::Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let packings: Vec<&str> = reports.iter().map(|r| r["packing"].as_str().unwrap()).collect();
    assert_eq!(packings, ["throughput", "latency"]);
    for report in &reports {
        assert_eq!(report["model"], "mnist-cryptonets");
        assert_eq!(report["images"], 4);
        assert_eq!(report["agreement"], 1.0, "{report}");
        assert!(report["security_bits"].as_u64().unwrap() >= 128, "{report}");
        assert!(report["bytes_up_per_image"].as_f64().unwrap() > 0.0);
        assert!(report["bytes_down_per_image"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn the_demo_registers_models_as_data_and_they_agree() {
    // lesion-unet and derma64 are not built in: the demo registers them with the service, then
    // segments one sample lesion encrypted and scores the mask against its ground truth, and
    // classifies one 64×64 sample lesion.
    let output = Command::cargo_bin("blindfold")
        .unwrap()
        .env_remove("DATABASE_URL")
        .args(["demo", "--model", "lesion-unet,derma64", "--images", "1", "--json"])
        .timeout(std::time::Duration::from_secs(900))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stderr}");
    assert!(stderr.contains("lesion-unet registered with the service as data"), "{stderr}");
    assert!(stderr.contains("skipping lesion-unet / throughput"), "{stderr}");
    assert!(stderr.contains("derma64 registered with the service as data"), "{stderr}");
    let reports: Vec<serde_json::Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    // derma64's throughput batch (75 GB) runs only on a machine that has that much.
    let classifier = reports.iter().find(|r| r["model"] == "derma64" && r["packing"] == "latency").unwrap();
    assert_eq!(classifier["task"], "classification", "{classifier}");
    assert_eq!(classifier["agreement"], 1.0, "{classifier}");
    assert!(classifier["security_bits"].as_u64().unwrap() >= 128, "{classifier}");
    let report = &reports[0];
    assert_eq!((report["model"].as_str(), report["packing"].as_str()), (Some("lesion-unet"), Some("latency")));
    assert_eq!(report["task"], "segmentation");
    assert_eq!(report["images"], 1);
    // Every mask pixel as the plaintext model has it, and a real lesion outline (the first
    // sample's encrypted Dice is 0.94).
    assert!(report["agreement"].as_f64().unwrap() >= 0.999, "{report}");
    assert!(report["accuracy"].as_f64().unwrap() > 0.8, "{report}");
}

#[test]
fn the_demo_refuses_an_unknown_model() {
    let output = Command::cargo_bin("blindfold").unwrap().args(["demo", "--model", "no-such-model"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown model") && stderr.contains("mnist-cryptonets"), "{stderr}");
    assert!(stderr.contains("lesion-unet"), "{stderr}");
}
