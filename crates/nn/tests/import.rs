//! The ONNX importer against files exported by PyTorch (`models/train/train.py --fixtures-only`)
//! and the plaintext evaluator against onnxruntime's outputs for them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use blindfold_nn::{Basis, Error, Layer, Shape, onnx};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// `|a - b| <= tol * max(1, |b|)`: onnxruntime computes in f32, we in f64.
fn assert_close(ours: &[f64], reference: &[f64], tol: f64, what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!((a - b).abs() <= tol * b.abs().max(1.0), "{what}[{i}]: ours {a}, onnxruntime {b}");
    }
}

#[test]
fn relu_maxpool_and_softmax_are_refused_each_with_a_reason() {
    let err = onnx::import_file(&fixture("refused.onnx")).unwrap_err();
    let Error::Refused { refusals } = &err else { panic!("expected a refusal, got {err}") };
    let ops: Vec<&str> = refusals.iter().map(|r| r.op.as_str()).collect();
    assert_eq!(ops, ["Relu", "MaxPool", "Softmax"], "{err}");
    let text = err.to_string();
    assert!(text.contains("Relu is not a polynomial; use x^2, a quadratic activation"), "{text}");
    assert!(text.contains("MaxPool is not linear") && text.contains("use AveragePool"), "{text}");
    assert!(text.contains("Softmax is not a polynomial") && text.contains("decrypted logits"), "{text}");
    // Each message names its node.
    for r in refusals {
        assert!(!r.node.is_empty() && text.contains(&format!("node '{}'", r.node)), "{text}");
    }
}

#[test]
fn batch_norm_pow_polynomials_reshape_and_matmul_add_import_and_match_onnxruntime() {
    let net = onnx::import_file(&fixture("patterns.onnx")).unwrap();
    assert_eq!(net.input(), Shape::Image { channels: 2, height: 8, width: 8 });
    let kinds: Vec<String> =
        net.nodes().iter().map(|n| n.layer.to_string().split(' ').next().unwrap().to_string()).collect();
    // BatchNormalization folded into the first conv; the MatMul's bias Add folded into its dense.
    assert_eq!(
        kinds,
        ["conv2d", "activation", "avgpool2d", "conv2d", "activation", "flatten", "dense", "activation", "dense"],
        "{}",
        net.summary()
    );
    let Layer::Activation(square) = &net.nodes()[1].layer else { panic!() };
    assert_eq!(square.coefficients, vec![0.0, 0.0, 1.0]);
    let Layer::Activation(poly) = &net.nodes()[4].layer else { panic!() };
    assert_eq!(poly.coefficients, vec![0.125, -0.5, 0.25]);
    // conv 1, x^2 1, pool 0, conv 1, quadratic 1, flatten 0, dense 1, quadratic 1, dense 1.
    assert_eq!(net.depth(), 7);

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("patterns.json")).unwrap()).unwrap();
    let inputs = json["inputs"].as_array().unwrap();
    let logits = json["logits"].as_array().unwrap();
    for (i, (x, y)) in inputs.iter().zip(logits).enumerate() {
        let x: Vec<f64> = x.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let y: Vec<f64> = y.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_close(&net.forward(&x).unwrap(), &y, 1e-4, &format!("patterns input {i}"));
    }
}

#[test]
fn truncated_file_is_not_an_onnx_model() {
    let bytes = std::fs::read(fixture("patterns.onnx")).unwrap();
    let err = onnx::import(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(err, Error::OnnxDecode(_) | Error::Refused { .. }), "{err}");
}

/// Every fixture of `tests/fixtures/onnx-ops` (one per operator or graph pattern, see its
/// README): imported, evaluated in f64, compared with onnxruntime's output (or the generator's
/// numpy reference for the custom ai.blindfold Polynomial operator).
#[test]
fn every_operator_fixture_imports_and_matches_its_reference() {
    let dir = fixture("onnx-ops");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = json["name"].as_str().unwrap().to_string();
        let net = onnx::import_file(&path.with_extension("onnx")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let floats =
            |key: &str| -> Vec<f64> { json[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
        let dims = |key: &str| -> Vec<usize> {
            json[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect()
        };
        let shape = |d: Vec<usize>| match d.as_slice() {
            [c, h, w] => Shape::Image { channels: *c, height: *h, width: *w },
            [n] => Shape::Vector { len: *n },
            other => panic!("{name}: shape {other:?}"),
        };
        assert_eq!(net.input(), shape(dims("input_shape")), "{name}");
        assert_eq!(net.output(), shape(dims("output_shape")), "{name}");
        let y = net.forward(&floats("input")).unwrap();
        assert_close(&y, &floats("output"), 1e-4, &name);
        checked.push((name, net));
    }
    let layers = |name: &str| -> Vec<String> {
        let (_, net) = checked.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no fixture {name}"));
        net.nodes().iter().map(|n| n.layer.to_string().split(' ').next().unwrap().to_string()).collect()
    };
    assert_eq!(checked.len(), 13, "fixtures");
    // Pad folded into the convolution; Resize and Upsample became up-samplings.
    assert_eq!(layers("pad_conv"), ["conv2d"]);
    assert_eq!(layers("resize_nearest"), ["conv2d", "upsample"]);
    assert_eq!(layers("upsample_nearest"), ["conv2d", "upsample"]);
    assert_eq!(layers("residual_add"), ["conv2d", "activation", "conv2d", "add"]);
    assert!(layers("unet_tiny").contains(&"concat".to_string()));
    assert!(layers("conv_transpose_k3s2").contains(&"conv_transpose2d".to_string()));
    let (_, poly) = checked.iter().find(|(n, _)| n == "polynomial_op").unwrap();
    let Layer::Activation(p) = &poly.nodes()[1].layer else { panic!("{}", poly.summary()) };
    assert_eq!((p.basis, p.degree()), (Basis::Chebyshev, 7));
}

#[test]
fn the_custom_polynomial_operator_is_checked() {
    let bytes = std::fs::read(fixture("onnx-ops/polynomial_op.onnx")).unwrap();
    // Rename the basis to something unknown: refused, naming the node.
    let broken = String::from_utf8_lossy(&bytes).replace("chebyshev", "chebyshov").into_bytes();
    if broken.len() == bytes.len() {
        let err = onnx::import(&broken).unwrap_err().to_string();
        assert!(err.contains("Polynomial") && err.contains("chebyshov"), "{err}");
    }
}
