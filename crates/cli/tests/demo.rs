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
fn the_demo_refuses_an_unknown_model() {
    let output = Command::cargo_bin("blindfold").unwrap().args(["demo", "--model", "no-such-model"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown model") && stderr.contains("mnist-cryptonets"), "{stderr}");
}
