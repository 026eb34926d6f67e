//! Models as data, against the real stack (PostgreSQL, the S3 endpoint, the API, a worker): an
//! operator registers a model the binary has never seen, hospitals pull it and run jobs pinned
//! to the version their keys were made for, a retired version finishes its queued jobs and takes
//! no new ones, and every bad registration is refused with nothing left half registered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use blindfold_nn::metrics::argmax;
use common::{ADMIN, Stack, mnist_images, outcome, s};
use onnx_protobuf::{
    GraphProto, Message as _, ModelProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto, type_proto,
};
use serde_json::{Value, json};
use sha2::Digest as _;

const NAME: &str = "clinic-digits";

/// A model directory the binary does not embed: CryptoNets' network under another name, at
/// `version`.
fn clinic_model(dir: &Path, version: u32) -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-cryptonets");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(source.join("model.onnx"), dir.join("model.onnx")).unwrap();
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(source.join("manifest.json")).unwrap()).unwrap();
    manifest["name"] = json!(NAME);
    manifest["version"] = json!(version);
    manifest["description"] = json!(format!("a clinic's digit reader, version {version}"));
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    dir.to_path_buf()
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(tensor_shape_proto::dimension::Value::DimValue(*d));
        shape.dim.push(dim);
    }
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = 1;
    tensor.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tensor));
    let mut info = ValueInfoProto::new();
    info.name = name.into();
    info.type_ = Some(ty).into();
    info
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = output.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n
}

/// A valid model too deep for any ≥ 128-bit parameter set: 31 dense layers with 30 squares
/// between them (61 levels; N = 2^16 holds at most 58).
fn too_deep_model(dir: &Path) -> PathBuf {
    let mut nodes = vec![node("Flatten", &["x"], "h0")];
    let mut inits = Vec::new();
    for i in 0..31 {
        let mut w = TensorProto::new();
        w.name = format!("w{i}");
        w.data_type = 1;
        let cols = if i == 30 { 2 } else { 4 };
        w.dims = vec![4, cols];
        w.float_data = (0..4 * cols).map(|k| if k % (cols + 1) == 0 { 0.5 } else { 0.0 }).collect();
        inits.push(w);
        let dense = format!("d{i}");
        nodes.push(node("MatMul", &[&format!("h{i}"), &format!("w{i}")], &dense));
        if i < 30 {
            nodes.push(node("Mul", &[&dense, &dense], &format!("h{}", i + 1)));
        }
    }
    let mut graph = GraphProto::new();
    graph.node = nodes;
    graph.initializer = inits;
    graph.input.push(value_info("x", &[1, 1, 2, 2]));
    graph.output.push(value_info("d30", &[1, 2]));
    let mut model = ModelProto::new();
    model.ir_version = 8;
    model.graph = Some(graph).into();
    let onnx = model.write_to_bytes().unwrap();
    let depth = blindfold_nn::onnx::import(&onnx).unwrap().depth();
    assert!(depth > 58, "the fixture must be deeper than N = 2^16 allows: {depth}");
    let manifest = json!({
        "name": "deep-net", "version": 1, "description": "too deep for 128-bit CKKS",
        "input": {"shape": [1, 2, 2], "layout": "CHW", "channel_order": "gray"},
        "preprocessing": {"resize": "stretch", "scale": "pixel / 255", "mean": [0.0], "std": [1.0]},
        "classes": ["a", "b"], "positive_class": null, "multiplicative_depth": depth,
        "metrics": {}, "training": {}
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.onnx"), onnx).unwrap();
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    dir.to_path_buf()
}

/// One HTTP call to the API: (status, JSON body).
fn call(stack: &Stack, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    stack.runtime.block_on(async {
        let mut request = reqwest::Client::new().request(method, format!("{}{path}", stack.api)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

/// PUTs `bytes` to a presigned transfer.
/// PUTs `bytes` through a presigned transfer; the store's status. Content-Length is the body's
/// own (the URL signs the announced one, so another length is refused).
fn put(stack: &Stack, transfer: &Value, bytes: Vec<u8>) -> u16 {
    stack.runtime.block_on(async {
        let mut request = reqwest::Client::new().put(transfer["url"].as_str().unwrap()).body(bytes);
        for header in transfer["headers"].as_array().unwrap() {
            let name = header["name"].as_str().unwrap();
            if !name.eq_ignore_ascii_case("content-length") {
                request = request.header(name, header["value"].as_str().unwrap());
            }
        }
        request.send().await.unwrap().status().as_u16()
    })
}

/// Announces `name@1` with the true digest and sizes of `onnx`, uploads `uploaded` in its place,
/// and completes it: the refusal's (status, code, detail).
fn register_raw(stack: &Stack, manifest: &[u8], onnx: &[u8], uploaded: Vec<u8>) -> (u16, String, String) {
    let name = serde_json::from_slice::<Value>(manifest).unwrap()["name"].as_str().unwrap().to_owned();
    let digest: String = sha2::Sha256::digest(onnx).iter().map(|b| format!("{b:02x}")).collect();
    let announce = json!({"name": name, "version": 1, "onnx_sha256": digest, "onnx_bytes": onnx.len(),
                          "manifest_bytes": manifest.len()});
    let (status, announced) = call(stack, reqwest::Method::POST, "/v1/admin/models", ADMIN, Some(announce));
    assert_eq!(status, 201, "{announced}");
    let stored = put(stack, &announced["uploads"]["onnx"], uploaded.clone());
    if uploaded.len() == onnx.len() {
        assert_eq!(stored, 200);
    } else {
        // The URL signs the announced length: the store refuses another. A store that let it
        // through anyway (or an operator's copy) is still caught at `complete`: put it there.
        assert_eq!(stored, 403, "a PUT of another length than signed");
        stack.runtime.block_on(async {
            let store = blindfold_store::Store::connect(&stack.store).await.unwrap();
            let key = blindfold_store::ObjectKey::model_file(
                &blindfold_store::ModelName::new(name.as_str()).unwrap(),
                1,
                &blindfold_store::ObjectName::new("model.onnx").unwrap(),
            );
            store.put_bytes(&key, uploaded.into()).await.unwrap();
        });
    }
    assert_eq!(put(stack, &announced["uploads"]["manifest"], manifest.to_vec()), 200);
    let (status, refused) =
        call(stack, reqwest::Method::POST, &format!("/v1/admin/models/{name}@1/complete"), ADMIN, None);
    let text = |key: &str| refused[key].as_str().unwrap_or_default().to_owned();
    (status, text("code"), text("detail"))
}

/// The fetched predictions of `out` agree with the plaintext model in `dir` on the first
/// `count` MNIST test images.
fn assert_agrees(out: &Path, dir: &Path, count: usize) {
    let model = blindfold_nn::registry::load_dir(dir).unwrap();
    let images = blindfold_nn::data::mnist(mnist_images().parent().unwrap(), blindfold_nn::data::Split::Test)
        .unwrap()
        .take(count);
    let reference = model.network.forward_batch(&model.manifest.inputs(&images).unwrap()).unwrap();
    let predictions: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let predicted = predictions["images"].as_array().unwrap();
    assert_eq!(predicted.len(), count);
    for (i, (image, expected)) in predicted.iter().zip(&reference).enumerate() {
        assert_eq!(image["class_index"], argmax(expected), "image {i}: {image} vs plaintext {expected:?}");
    }
}

#[test]
fn a_registered_model_runs_pinned_to_its_version_and_retires_cleanly() {
    let stack = Stack::start();
    let (token, _, _) = stack.tenant("st-clare");
    stack.run(&["login", "--api", &stack.api, "--token", &token, "--quiet"]).ok();
    let work = stack.home.path().to_path_buf();
    let images = mnist_images();

    // The binary has never seen the model; the operator registers it.
    let v1 = clinic_model(&work.join("clinic-v1"), 1);
    stack.run(&["model", "show", &format!("{NAME}@1")]).refused(1, "not pulled");
    let added = stack.admin(&["admin", "model", "add", s(&v1), "--json"]).ok().json();
    let model = &added["registered"]["model"];
    assert_eq!((model["name"].as_str(), model["version"].as_u64()), (Some(NAME), Some(1)), "{added}");
    assert_eq!(model["state"], "active");
    let packings: Vec<&str> =
        model["packings"].as_array().unwrap().iter().map(|p| p["packing"].as_str().unwrap()).collect();
    assert_eq!(packings, ["throughput", "latency"]);
    assert!(model["packings"].as_array().unwrap().iter().all(|p| p["security_bits"].as_u64() >= Some(128)));
    // Versions are immutable, and a tenant token registers nothing.
    stack.admin(&["admin", "model", "add", s(&v1)]).refused(3, "model_exists");
    outcome(stack.blindfold().env("BLINDFOLD_API", &stack.api).env("BLINDFOLD_ADMIN_TOKEN", &token).args([
        "admin",
        "model",
        "retire",
        &format!("{NAME}@1"),
    ]))
    .refused(3, "admin token was refused");
    let (status, _) = call(&stack, reqwest::Method::POST, "/v1/admin/models", &token, Some(json!({})));
    assert_eq!(status, 401);

    // A hospital pulls it, makes keys for version 1 and queues a job before any worker runs.
    let catalogue = stack.run(&["model", "list", "--service"]).ok().stdout;
    assert!(catalogue.contains(NAME) && catalogue.contains("mnist-lenet5"), "{catalogue}");
    stack.run(&["model", "pull", NAME]).ok();
    let shown = stack.run(&["model", "show", &format!("{NAME}@1")]).ok().stdout;
    assert!(shown.contains("a clinic's digit reader, version 1"), "{shown}");
    let keys1 = work.join("keys-v1");
    stack.run(&["keygen", "--model", &format!("{NAME}@1"), "--out", s(&keys1), "--quiet"]).ok();
    let submit =
        |keys: &Path, limit: &str| stack.run(&["submit", s(&images), "--limit", limit, "--keys", s(keys), "--json"]);
    let queued = submit(&keys1, "4").ok().json()["jobs"][0]["id"].as_str().unwrap().to_owned();

    // Version 2 arrives; keys for version 1 still run version 1.
    let v2 = clinic_model(&work.join("clinic-v2"), 2);
    stack.admin(&["admin", "model", "add", s(&v2), "--quiet"]).ok();
    let pinned = submit(&keys1, "3").ok().json()["jobs"][0]["id"].as_str().unwrap().to_owned();
    for job in [&queued, &pinned] {
        let status = stack.run(&["status", job, "--json"]).ok().json();
        assert_eq!((status["job"]["model"].as_str(), status["job"]["model_version"].as_u64()), (Some(NAME), Some(1)));
    }

    // Retiring version 1 stops new jobs on it, not the queued ones.
    let retired = stack.admin(&["admin", "model", "retire", &format!("{NAME}@1"), "--json"]).ok().json();
    assert_eq!(retired["model"]["state"], "retired");
    submit(&keys1, "1").refused(3, "model_retired");
    let records = stack.admin(&["admin", "model", "list", "--json"]).ok().json();
    let states: Vec<(u64, &str)> = records["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == NAME)
        .map(|m| (m["version"].as_u64().unwrap(), m["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [(2, "active"), (1, "retired")]);

    stack.start_worker();
    for (job, count) in [(&queued, 4), (&pinned, 3)] {
        stack.run(&["wait", job, "--interval", "0.2"]).ok();
        let out = work.join(format!("{job}.json"));
        stack.run(&["fetch", job, "--keys", s(&keys1), "--out", s(&out), "--quiet"]).ok();
        assert_agrees(&out, &v1, count);
    }

    // The newest version for new keys: pull, keygen, run in one command.
    stack.run(&["model", "pull", NAME]).ok();
    let keys2 = work.join("keys-v2");
    stack.run(&["keygen", "--model", &format!("{NAME}@2"), "--out", s(&keys2), "--quiet"]).ok();
    let out = work.join("v2.json");
    let ran = stack.run(&["run", s(&images), "--limit", "5", "--keys", s(&keys2), "--out", s(&out), "--json"]).ok();
    let job = &ran.json()["jobs"][0];
    assert_eq!((job["state"].as_str(), job["model_version"].as_u64()), (Some("succeeded"), Some(2)), "{job}");
    assert_agrees(&out, &v2, 5);
}

#[test]
fn bad_registrations_are_refused_and_leave_nothing_behind() {
    let stack = Stack::start();
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-cryptonets");
    let onnx = std::fs::read(source.join("model.onnx")).unwrap();
    let work = stack.home.path().to_path_buf();
    let clinic = clinic_model(&work.join("clinic"), 1);
    let manifest = std::fs::read(clinic.join("manifest.json")).unwrap();

    // Corrupted in transit: one flipped byte.
    let mut flipped = onnx.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let (status, code, detail) = register_raw(&stack, &manifest, &onnx, flipped);
    assert_eq!((status, code.as_str()), (422, "model_refused"), "{detail}");
    assert!(detail.contains("corrupt") && detail.contains("SHA-256"), "{detail}");
    // Truncated.
    let (status, code, detail) = register_raw(&stack, &manifest, &onnx, onnx[..onnx.len() - 100].to_vec());
    assert_eq!((status, code.as_str()), (422, "model_refused"), "{detail}");
    assert!(detail.contains("bytes in storage"), "{detail}");
    // An operator Blindfold does not support: the service names the node.
    let cosh = {
        let mut bytes = onnx.clone();
        let at = bytes.windows(6).position(|w| w == b"\x22\x04Conv").expect("a Conv node");
        bytes[at + 2..at + 6].copy_from_slice(b"Cosh");
        bytes
    };
    let (status, code, detail) = register_raw(&stack, &manifest, &cosh, cosh.clone());
    assert_eq!((status, code.as_str()), (422, "model_refused"), "{detail}");
    assert!(detail.contains("Cosh"), "{detail}");
    // The CLI refuses it before uploading anything.
    let local = work.join("cosh");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("model.onnx"), &cosh).unwrap();
    std::fs::write(local.join("manifest.json"), &manifest).unwrap();
    stack.admin(&["admin", "model", "add", s(&local)]).refused(1, "Cosh");
    // Deeper than any 128-bit parameter set allows: refused by the compiler, naming the node.
    let deep = too_deep_model(&work.join("deep"));
    let refused = stack.admin(&["admin", "model", "add", s(&deep)]).refused(3, "model_refused");
    assert!(refused.stderr.contains("128") || refused.stderr.contains("levels"), "{}", refused.stderr);

    // Nothing of any of them is registered or stored, and the good files register afterwards.
    let records = stack.admin(&["admin", "model", "list", "--json"]).ok().json();
    let names: Vec<&str> = records["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&NAME) && !names.contains(&"deep-net"), "{names:?}");
    stack.runtime.block_on(async {
        let store = blindfold_store::Store::connect(&stack.store).await.unwrap();
        for model in [NAME, "deep-net"] {
            let prefix = blindfold_store::Prefix::model(&blindfold_store::ModelName::new(model).unwrap(), 1);
            assert!(store.list(&prefix).await.unwrap().is_empty(), "{model}'s files are still stored");
        }
    });
    stack.admin(&["admin", "model", "add", s(&clinic), "--quiet"]).ok();
}

#[test]
fn admin_migrate_registers_the_built_in_models_once() {
    use secrecy::ExposeSecret as _;
    let stack = Stack::start();
    // A database of its own, which the API has not seeded.
    let db = stack.runtime.block_on(blindfold_testkit::TestDatabase::new()).unwrap();
    let store = &stack.store;
    let migrate = |extra: &[&str]| {
        let mut args = vec![
            "admin",
            "migrate",
            "--s3-endpoint",
            store.endpoint.as_deref().unwrap(),
            "--s3-bucket",
            "blindfold-seed-test",
            "--s3-access-key",
            store.access_key.as_deref().unwrap(),
            "--s3-path-style",
            "--json",
        ];
        args.extend_from_slice(extra);
        outcome(
            stack
                .blindfold()
                .env("DATABASE_URL", db.url())
                .env("BLINDFOLD_S3_SECRET_KEY", store.secret_key.as_ref().unwrap().expose_secret())
                .args(&args),
        )
        .ok()
        .json()
    };
    let schema_only = migrate(&["--no-seed"]);
    assert_eq!(schema_only["registered"], json!([]), "{schema_only}");
    let first = migrate(&[]);
    let mut registered: Vec<&str> =
        first["registered"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    registered.sort_unstable();
    assert_eq!(registered, ["derma-lenet5@1", "mnist-cryptonets@1", "mnist-lenet5@1"], "{first}");
    assert_eq!(migrate(&[])["registered"], json!([]), "a second run registers nothing");
    let active: i64 = stack.runtime.block_on(async {
        let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM models WHERE state = 'active'").fetch_one(&pool).await.unwrap()
    });
    assert_eq!(active, 3);
}
