//! `blindfold dev up`: the stack comes up, prints its endpoints as one JSON line, serves, and
//! stops cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn dev_up_prints_working_endpoints_and_stops_cleanly() {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("blindfold"))
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .args(["dev", "up", "--api-bind", "127.0.0.1:0", "--workers", "1", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let endpoints: serde_json::Value = serde_json::from_str(&line).unwrap();
    for key in ["api_url", "token", "admin_token", "database_url", "s3_endpoint", "bucket"] {
        assert!(endpoints[key].as_str().is_some_and(|v| !v.is_empty()), "{key} missing in {line}");
    }
    let api = endpoints["api_url"].as_str().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (ready, models) = runtime.block_on(async {
        let client = reqwest::Client::new();
        let ready = client.get(format!("{api}/readyz")).send().await.unwrap().status();
        let models = client
            .get(format!("{api}/v1/models"))
            .bearer_auth(endpoints["token"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .status();
        (ready, models)
    });
    assert!(ready.is_success(), "readyz: {ready}");
    assert!(models.is_success(), "the printed token works: {models}");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "dev up exits 0 on SIGTERM: {status:?}");
}
