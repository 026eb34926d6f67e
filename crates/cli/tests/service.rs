//! The hospital and operator commands against a real service started in this process: a real
//! PostgreSQL (blindfold-testkit), the embedded S3 endpoint and the API on a free port. The
//! `blindfold` binary is run as a hospital would run it, with its own config file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use blindfold_nn::metrics::argmax;
use common::{MODEL, Stack, mnist_images, outcome, s};
use serde_json::Value;

#[test]
fn login_register_submit_status_list_cancel() {
    let stack = Stack::start();
    let (token, token_id, _) = stack.tenant("st-mary");

    // Login checks the token and saves it privately.
    let login = stack.run(&["login", "--api", &stack.api, "--token", &token, "--json"]).ok();
    assert_eq!(login.json()["api"], stack.api.as_str());
    assert!(!login.stdout.contains(&token), "the token is not printed");
    let saved = std::fs::read_to_string(stack.config_file()).unwrap();
    assert!(saved.contains(&stack.api) && saved.contains(&token), "{saved}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(stack.config_file()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    let keys = stack.home.path().join("keys");
    stack.run(&["keygen", "--model", MODEL, "--out", s(&keys), "--quiet"]).ok();
    let descriptor: Value = serde_json::from_slice(&std::fs::read(keys.join("keyset.json")).unwrap()).unwrap();
    let key_set = descriptor["key_set"].as_str().unwrap().to_owned();

    let registered = stack.run(&["keys", "register", "--keys", s(&keys), "--json"]).ok().json();
    assert_eq!(registered["uploaded"], true);
    assert_eq!(registered["key_set"]["id"], key_set.as_str());
    assert_eq!(registered["key_set"]["status"], "ready");
    let record: Value = serde_json::from_slice(&std::fs::read(keys.join("registration.json")).unwrap()).unwrap();
    assert_eq!(
        (record["key_set"].as_str(), record["api"].as_str()),
        (Some(key_set.as_str()), Some(stack.api.as_str()))
    );
    // Registering again uploads nothing.
    let again = stack.run(&["keys", "register", "--keys", s(&keys), "--json"]).ok().json();
    assert_eq!(again["uploaded"], false);

    let listed = stack.run(&["keys", "list", "--json"]).ok().json();
    let ids: Vec<&str> = listed["key_sets"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [key_set.as_str()]);
    let table = stack.run(&["keys", "list"]).ok().stdout;
    assert!(table.starts_with("KEY SET") && table.contains(&key_set) && table.contains("ready"), "{table}");

    // Three MNIST digits, encrypted here and uploaded in presigned parts.
    let submitted = stack
        .run(&["submit", s(&mnist_images()), "--limit", "3", "--model", MODEL, "--keys", s(&keys), "--json"])
        .ok()
        .json();
    let job = submitted["jobs"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(submitted["jobs"].as_array().unwrap().len(), 1);
    assert_eq!((submitted["jobs"][0]["state"].as_str(), submitted["images"].as_u64()), (Some("queued"), Some(3)));
    assert!(submitted["bytes"].as_u64().unwrap() > 5 << 20, "a multipart upload: {submitted}");
    // The image names stay with the keys; the encrypted batch does not stay at all.
    assert!(keys.join("jobs").join(format!("{job}.names.json")).exists());
    let leftovers: Vec<_> = std::fs::read_dir(keys.join("jobs")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    let status = stack.run(&["status", &job, "--json"]).ok().json();
    assert_eq!((status["job"]["state"].as_str(), status["job"]["image_count"].as_u64()), (Some("queued"), Some(3)));
    let text = stack.run(&["status", &job]).ok().stdout;
    assert!(text.contains("queued") && text.contains("3 images") && text.contains("enqueued"), "{text}");
    let overview = stack.run(&["status"]).ok().stdout;
    assert!(overview.contains(&stack.api) && overview.contains(&job), "{overview}");

    let queued = stack.run(&["jobs", "list", "--state", "queued", "--json"]).ok().json();
    assert_eq!(queued["jobs"][0]["id"], job.as_str());
    let table = stack.run(&["jobs", "list"]).ok().stdout;
    assert!(table.starts_with("JOB") && table.contains(&job) && table.contains(MODEL), "{table}");
    assert_eq!(stack.run(&["jobs", "list", "--state", "succeeded"]).ok().stdout.trim(), "no jobs");

    let cancelled = stack.run(&["cancel", &job, "--json"]).ok().json();
    assert_eq!(cancelled["job"]["state"], "cancelled");
    // Waiting on or fetching a cancelled job: exit code 4.
    stack.run(&["wait", &job]).refused(4, "cancelled");
    stack
        .run(&["fetch", &job, "--keys", s(&keys), "--out", s(&stack.home.path().join("p.csv"))])
        .refused(4, "cancelled");
    // Cancelling it again is refused by the service: exit code 3.
    stack.run(&["cancel", &job]).refused(3, "already_final");

    // A revoked token: exit code 3, and the way out.
    stack.admin(&["admin", "token", "revoke", &token_id]).ok();
    stack.run(&["jobs", "list"]).refused(3, "blindfold login");
}

#[test]
fn failures_say_what_to_do_next() {
    let stack = Stack::start();
    let (token, _, _) = stack.tenant("st-anne");

    // Nothing configured.
    stack.run(&["jobs", "list"]).refused(3, "blindfold login --api URL --token TOKEN");
    // The service is down (nothing listens on port 1).
    let down = stack.run(&["jobs", "list", "--api", "http://127.0.0.1:1", "--token", &token]);
    let down = down.refused(3, "cannot reach the API at http://127.0.0.1:1");
    assert!(down.stderr.contains("blindfold dev up"), "{}", down.stderr);
    stack.run(&["login", "--api", "http://127.0.0.1:1", "--token", &token]).refused(3, "cannot reach the API");
    // A wrong token is refused at login, and nothing is saved.
    let wrong = format!("bf_{}", "0".repeat(64));
    stack.run(&["login", "--api", &stack.api, "--token", &wrong]).refused(3, "the token was refused");
    assert!(!stack.config_file().exists());
    // A wrong admin token.
    outcome(
        stack
            .blindfold()
            .env("BLINDFOLD_ADMIN_TOKEN", "not-the-admin-token-0123456789abcdef")
            .args(["admin", "tenant", "create", "x", "--api", &stack.api]),
    )
    .refused(3, "admin token was refused");
    stack.admin(&["admin", "token", "create", "--tenant", "nobody"]).refused(3, "blindfold admin tenant create nobody");
    // Usage errors are clap's: exit code 2.
    stack.run(&["submit"]).refused(2, "--keys");
    stack.run(&["wait", "not-a-uuid"]).refused(2, "invalid");

    stack.run(&["login", "--api", &stack.api, "--token", &token]).ok();
    // An unknown job, with a JSON error for scripts.
    let missing = stack.run(&["status", "00000000-0000-4000-8000-000000000000", "--json"]).refused(3, "not_found");
    let error: Value = serde_json::from_str(missing.stderr.trim()).unwrap();
    assert_eq!((error["code"].as_str(), error["exit_code"].as_u64()), (Some("not_found"), Some(3)));

    // A model the service does not serve: refused before anything is encrypted or uploaded.
    let keys = stack.home.path().join("keys");
    stack.run(&["keygen", "--model", MODEL, "--out", s(&keys), "--quiet"]).ok();
    let unknown = stack
        .run(&["submit", s(&mnist_images()), "--limit", "2", "--model", "no-such-model", "--keys", s(&keys), "--json"])
        .refused(3, "no-such-model");
    let error: Value = serde_json::from_str(unknown.stderr.trim()).unwrap();
    assert_eq!(error["code"], "unknown_model");
    assert!(error["error"].as_str().unwrap().contains(MODEL), "lists the models served: {error}");
    assert!(!keys.join("registration.json").exists(), "nothing was registered");

    // A config file other users can read is refused (it holds the token).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(stack.config_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
        stack.run(&["jobs", "list"]).refused(3, "chmod 600");
    }
}

#[test]
fn a_worker_answers_submit_wait_fetch_and_run_and_a_corrupted_batch_fails() {
    let stack = Stack::start();
    let (token, _, tenant) = stack.tenant("st-luke");
    stack.run(&["login", "--api", &stack.api, "--token", &token, "--quiet"]).ok();
    let keys = stack.home.path().join("keys");
    stack.run(&["keygen", "--model", MODEL, "--out", s(&keys), "--quiet"]).ok();
    let images = mnist_images();

    // A batch damaged in storage after it was verified: the worker reads only the verified
    // object (If-Match on its ETag), so the job fails at once as `object_changed`, exit code 4.
    let submitted = stack.run(&["submit", s(&images), "--limit", "2", "--keys", s(&keys), "--json"]).ok().json();
    let broken = submitted["jobs"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(submitted["registered_keys"], true, "submit registers the keys on first use");
    stack.corrupt_input(&tenant, &broken);
    stack.start_worker();
    stack.run(&["wait", &broken, "--interval", "0.2"]).refused(4, "object_changed");
    let status = stack.run(&["status", &broken, "--json"]).ok().json();
    assert_eq!(
        (status["job"]["state"].as_str(), status["job"]["error"]["code"].as_str()),
        (Some("failed"), Some("object_changed"))
    );
    stack.run(&["fetch", &broken, "--keys", s(&keys)]).refused(4, "failed");

    // submit → wait → fetch, keeping the encrypted result.
    let job = stack.run(&["submit", s(&images), "--limit", "2", "--keys", s(&keys), "--quiet"]).ok().stdout;
    let job = job.trim().to_owned();
    assert_eq!(job.len(), 36, "--quiet prints the job id: {job}");
    let done = stack.run(&["wait", &job, "--interval", "0.2", "--json"]).ok().json();
    assert_eq!(
        (done["job"]["state"].as_str(), done["job"]["progress"]["fraction"].as_f64()),
        (Some("succeeded"), Some(1.0))
    );
    let csv = stack.home.path().join("predictions.csv");
    let raw = stack.home.path().join("result.bfrb");
    let report = stack.home.path().join("fetch-report");
    let fetched = stack
        .run(&["fetch", &job, "--keys", s(&keys), "--out", s(&csv), "--raw", s(&raw), "--report", s(&report), "--json"])
        .ok()
        .json();
    assert_eq!(fetched["images"], 2);
    // The report names the job, and says why it has no pictures: the images came from a
    // dataset file.
    assert_eq!(
        (fetched["report"]["images"].as_u64(), fetched["report"]["without_thumbnail"].as_u64()),
        (Some(2), Some(2))
    );
    let page = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(page.contains(&job) && page.contains("encrypted inference at the service"), "job and timings");
    assert!(page.contains("no picture for dataset entries"), "why there is no thumbnail");
    assert_eq!(fetched["bytes"].as_u64(), Some(std::fs::metadata(&raw).unwrap().len()));
    let rows: Vec<String> = std::fs::read_to_string(&csv).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(rows.len(), 3, "a header and two predictions: {rows:?}");
    assert!(rows[1].contains("t10k-images-idx3-ubyte.gz#0"), "names come back from the keys directory: {rows:?}");

    // Another job of as many images whose stored result is swapped for the first job's: the
    // result records its job and input, so fetch refuses it instead of misnaming its images.
    let second = stack.run(&["submit", s(&images), "--limit", "2", "--keys", s(&keys), "--quiet"]).ok().stdout;
    let second = second.trim().to_owned();
    stack.run(&["wait", &second, "--interval", "0.2"]).ok();
    stack.swap_result(&tenant, &second, &std::fs::read(&raw).unwrap());
    let refused = stack.run(&["fetch", &second, "--keys", s(&keys), "--out", s(&csv)]).refused(1, "not the result");
    assert!(refused.stderr.contains(&format!("computed for job {job}, not job {second}")), "{}", refused.stderr);

    // run: the same in one command, checked against the plaintext model.
    let out = stack.home.path().join("predictions.json");
    let ran = stack
        .run(&[
            "run",
            s(&images),
            "--limit",
            "3",
            "--model",
            MODEL,
            "--keys",
            s(&keys),
            "--out",
            s(&out),
            "--report",
            s(&stack.home.path().join("run-report")),
            "--json",
        ])
        .ok()
        .json();
    assert_eq!((ran["images"].as_u64(), ran["jobs"][0]["state"].as_str()), (Some(3), Some("succeeded")));
    assert_eq!(ran["report"]["images"], 3, "{ran}");
    let model = blindfold_nn::registry::load(MODEL).unwrap();
    let idx = blindfold_nn::data::mnist(images.parent().unwrap(), blindfold_nn::data::Split::Test).unwrap();
    let reference = model.network.forward_batch(&model.manifest.inputs(&idx.clone().take(3)).unwrap()).unwrap();
    let predictions: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let predicted = predictions["images"].as_array().unwrap();
    assert_eq!(predicted.len(), 3);
    for (i, (image, expected)) in predicted.iter().zip(&reference).enumerate() {
        assert_eq!(image["class_index"], argmax(expected), "image {i}: {image} vs plaintext {expected:?}");
    }

    // A latency key set serves both packings: `auto` sends one image alone and 100 as a batch.
    let both = stack.home.path().join("latency-keys");
    stack.run(&["keygen", "--model", MODEL, "--packing", "latency", "--out", s(&both), "--quiet"]).ok();
    let reference = model.network.forward_batch(&model.manifest.inputs(&idx.take(100)).unwrap()).unwrap();
    for (limit, packing) in [(1, "latency"), (100, "throughput")] {
        let out = stack.home.path().join(format!("auto-{limit}.json"));
        let limit_arg = limit.to_string();
        let ran = stack
            .run(&["run", s(&images), "--limit", &limit_arg, "--keys", s(&both), "--out", s(&out), "--json"])
            .ok()
            .json();
        let job = &ran["jobs"][0];
        assert_eq!((job["state"].as_str(), job["packing"].as_str()), (Some("succeeded"), Some(packing)), "{ran}");
        let predictions: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let predicted = predictions["images"].as_array().unwrap();
        assert_eq!(predicted.len(), limit);
        for (i, (image, expected)) in predicted.iter().zip(&reference).enumerate() {
            assert_eq!(image["class_index"], argmax(expected), "{packing} image {i}");
        }
    }
}
