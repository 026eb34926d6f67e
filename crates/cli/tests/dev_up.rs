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

/// The pids of `blindfold worker` processes whose parent is `parent`.
fn worker_children(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after its closing paren.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else { continue };
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let is_worker = cmdline.split(|b| *b == 0).any(|arg| arg == b"worker");
        // A zombie (state Z) is a dead worker not yet reaped.
        let alive = after.split_whitespace().next() != Some("Z");
        if ppid == Some(parent) && is_worker && alive {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn dev_up_restarts_a_worker_that_dies_and_reports_it() {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("blindfold"))
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .args(["dev", "up", "--api-bind", "127.0.0.1:0", "--workers", "1", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let (lines, stderr) = std::sync::mpsc::channel::<String>();
    let reader = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let wait_for_worker = |not: Option<u32>| loop {
        let workers = worker_children(child.id());
        if let Some(pid) = workers.into_iter().find(|pid| Some(*pid) != not) {
            return pid;
        }
        assert!(std::time::Instant::now() < deadline, "no worker process (besides {not:?}) under dev up");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let first = wait_for_worker(None);
    assert!(Command::new("kill").args(["-KILL", &first.to_string()]).status().unwrap().success());
    let reported = loop {
        let line = stderr.recv_timeout(std::time::Duration::from_secs(60)).expect("no restart reported on stderr");
        if line.contains("worker local-0 exited") {
            break line;
        }
    };
    assert!(reported.contains("signal: 9") && reported.contains("restarting it in 1 s (restart 1)"), "{reported}");
    let second = wait_for_worker(Some(first));
    assert_ne!(first, second);
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "dev up exits 0 on SIGTERM: {status:?}");
    assert!(!std::path::Path::new(&format!("/proc/{second}")).exists(), "the restarted worker stopped with dev up");
}
